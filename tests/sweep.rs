//! Runs every ONNX node test through the library and rewrites the conformance manifest:
//! `tests/conformance/manifest.txt` (passing cases) and `ignored.txt` (every other case, with
//! its reason). Prints the counts, in scope of issue #2 and overall.
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
    let results: Mutex<BTreeMap<String, Result<(), String>>> = Mutex::new(BTreeMap::new());
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
                    let got = kiln_tests::run_lib(&case)?;
                    kiln_tests::compare(&got, &case.expected, case.rtol, case.atol)
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
    let (mut in_scope, mut in_scope_pass, mut pass) = (0, 0, 0);
    let mut manifest = String::from("# ONNX node tests that pass (regenerate with the conformance-sweep binary)\n");
    let mut ignored = String::from("# ONNX node tests that do not pass, with the reason (name<TAB>reason)\n");
    let mut failing_in_scope = Vec::new();
    for e in &entries {
        let name = e["name"].as_str().unwrap();
        let scope = kiln_tests::out_of_scope(e);
        let r = &results[name];
        if scope.is_none() {
            in_scope += 1;
        }
        match (r, &scope) {
            (Ok(()), _) => {
                pass += 1;
                if scope.is_none() {
                    in_scope_pass += 1;
                }
                manifest.push_str(name);
                manifest.push('\n');
            }
            (Err(err), Some(_)) => {
                let short: String = err.replace(['\n', '\t'], " ").chars().take(160).collect();
                if filter.is_some() {
                    println!("fail {name}: {short}");
                }
                ignored.push_str(&format!("{name}\t{short}\n"));
            }
            (Err(err), None) => {
                let short: String = err.replace(['\n', '\t'], " ").chars().take(160).collect();
                failing_in_scope.push(format!("{name}: {short}"));
                ignored.push_str(&format!("{name}\tfails: {short}\n"));
            }
        }
    }
    for f in &failing_in_scope {
        println!("FAIL {f}");
    }
    if filter.is_none() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance");
        std::fs::write(dir.join("manifest.txt"), manifest).unwrap();
        std::fs::write(dir.join("ignored.txt"), ignored).unwrap();
    }
    println!("node tests: {} total, {pass} pass", entries.len());
    println!(
        "in scope of issue #2 (its ops; f32/i64/i32/bool tensors): {in_scope}, {in_scope_pass} pass, {} fail",
        in_scope - in_scope_pass
    );
}
