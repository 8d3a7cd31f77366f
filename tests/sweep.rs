//! Runs every ONNX node test through the library and rewrites the conformance lists:
//! `tests/conformance/manifest.txt` (cases that pass compiled without their inputs' values,
//! every input fed at run time: the headline count), `frozen.txt` (cases that pass only with
//! inputs compiled in, with why they need it) and `ignored.txt` (every other case, with its
//! reason). Prints the counts, in scope of issue #2 and overall.
//!
//! `cargo run --release -p kiln-tests --bin conformance-sweep [-- FILTER]`: with a filter (a
//! substring of test names) it only reports, printing every failing case and its reason.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

fn main() {
    let filter = std::env::args().nth(1);
    let index = kiln_tests::index();
    let entries: Vec<&serde_json::Value> = index["node"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| filter.as_deref().is_none_or(|f| e["name"].as_str().unwrap().contains(f)))
        .collect();
    // Ok(None): passes with every input fed at run time; Ok(Some(why)): only with inputs
    // compiled in, `why` being the run-time failure; Err: fails both ways.
    type Outcome = Result<Option<String>, String>;
    let results: Mutex<BTreeMap<String, Outcome>> = Mutex::new(BTreeMap::new());
    let next = AtomicUsize::new(0);
    // Quiet the default panic printing: failures are collected and summarized.
    std::panic::set_hook(Box::new(|_| {}));
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(e) = entries.get(i) else { break };
                let name = e["name"].as_str().unwrap().to_string();
                let r = std::panic::catch_unwind(|| {
                    let case = kiln_tests::node_case(&name, &index)?;
                    let run_time = kiln_tests::run_lib(&case)
                        .and_then(|got| kiln_tests::compare(&got, &case.expected, case.rtol, case.atol));
                    let Err(why) = run_time else { return Ok(None) };
                    let got = kiln_tests::run_lib_frozen(&case)?;
                    kiln_tests::compare(&got, &case.expected, case.rtol, case.atol)?;
                    Ok(Some(why))
                })
                .unwrap_or_else(|p| {
                    let msg =
                        p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                    Err(format!("panic: {}", msg.unwrap_or_default()))
                });
                results.lock().unwrap().insert(name, r);
            });
        }
    });
    let results = results.into_inner().unwrap();
    let (mut in_scope, mut in_scope_pass, mut pass, mut frozen_pass) = (0, 0, 0, 0);
    let mut manifest = String::new();
    let (mut no_inputs, mut constant) = (String::new(), 0);
    let mut frozen = String::new();
    let mut ignored = String::from("# ONNX node tests that do not pass, with the reason (name<TAB>reason)\n");
    let mut failing_in_scope = Vec::new();
    for e in &entries {
        let name = e["name"].as_str().unwrap();
        let scope = kiln_tests::out_of_scope(e);
        let r = &results[name];
        if scope.is_none() {
            in_scope += 1;
        }
        let short = |err: &str| -> String { err.replace(['\n', '\t'], " ").chars().take(160).collect() };
        match (r, &scope) {
            (Ok(why), _) => {
                if scope.is_none() {
                    in_scope_pass += 1;
                }
                match why {
                    None => {
                        pass += 1;
                        manifest.push_str(name);
                        manifest.push('\n');
                        if !kiln_tests::has_runtime_inputs(name) {
                            constant += 1;
                            no_inputs.push_str(name);
                            no_inputs.push('\n');
                        }
                    }
                    Some(why) => {
                        frozen_pass += 1;
                        frozen.push_str(&format!("{name}\t{}\n", short(why)));
                    }
                }
            }
            (Err(err), Some(_)) => {
                if filter.is_some() {
                    println!("fail {name}: {}", short(err));
                }
                ignored.push_str(&format!("{name}\t{}\n", short(err)));
            }
            (Err(err), None) => {
                failing_in_scope.push(format!("{name}: {}", short(err)));
                ignored.push_str(&format!("{name}\tfails: {}\n", short(err)));
            }
        }
    }
    for f in &failing_in_scope {
        println!("FAIL {f}");
    }
    let total = entries.len();
    if filter.is_none() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance");
        let manifest = format!(
            "# ONNX node tests that pass compiled without their inputs' values, every input fed at run\n\
             # time: {} of {total} (the count to compare with onnxruntime's), and {constant} with no inputs\n\
             # (no_inputs.txt). Cases that pass only with inputs compiled in are in frozen.txt.\n\
             # Regenerate with the conformance-sweep binary.\n{manifest}",
            pass - constant
        );
        let no_inputs = format!(
            "# Cases of manifest.txt whose model has no inputs: their outputs are constants, counted\n\
             # apart from those whose inputs are fed at run time ({constant}).\n{no_inputs}"
        );
        std::fs::write(dir.join("no_inputs.txt"), no_inputs).unwrap();
        let frozen = format!(
            "# ONNX node tests that pass only with inputs compiled in ({frozen_pass} of {total}; reported\n\
             # apart): name<TAB>why, with every input fed at run time, the case does not pass.\n{frozen}"
        );
        std::fs::write(dir.join("manifest.txt"), manifest).unwrap();
        std::fs::write(dir.join("frozen.txt"), frozen).unwrap();
        std::fs::write(dir.join("ignored.txt"), ignored).unwrap();
    }
    println!(
        "node tests: {total} total; {} pass with every input fed at run time, {constant} with no inputs, \
         {frozen_pass} more only with inputs compiled in",
        pass - constant
    );
    println!(
        "in scope of issue #2 (its ops; f32/i64/i32/bool tensors): {in_scope}, {in_scope_pass} pass, {} fail",
        in_scope - in_scope_pass
    );
}
