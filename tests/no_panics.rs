//! Every ONNX node test that Kiln does not pass goes through `kiln run` too: each must end
//! with success or a clean failure (exit status 1 and an `error:` line), never a panic
//! (status 101), a signal (an abort or a crash) or a hang (a time limit per case).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longer than any compile of a node test takes; a case past it is a hang.
const LIMIT: Duration = Duration::from_secs(300);

fn start(name: &str) -> Option<Child> {
    let dir = kiln_tests::data_root().join("node").join(name);
    let out = tempfile::tempdir().ok()?.keep();
    let mut cmd = Command::new(kiln_tests::kiln_bin());
    cmd.arg("run").arg(dir.join("model.onnx")).arg("--output-dir").arg(&out);
    let data = dir.join("test_data_set_0");
    // Inputs by position: the model's graph inputs that are not initializers, in order.
    let bytes = std::fs::read(dir.join("model.onnx")).ok()?;
    let m = kiln_onnx::decode_model(bytes.into()).ok()?;
    let g = m.graph?;
    let inits: std::collections::HashSet<String> = g.initializer.iter().filter_map(|t| t.name.clone()).collect();
    let names = g.input.iter().filter_map(|i| i.name.clone()).filter(|n| !n.is_empty() && !inits.contains(n));
    for (i, n) in names.enumerate() {
        let p = data.join(format!("input_{i}.pb"));
        // Pin the input's shape when the file reads as a tensor (as `run_cli` does).
        if let Some(t) = std::fs::read(&p).ok().and_then(|b| kiln::read_tensor_proto(&b).ok()) {
            let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
            cmd.arg("--input-shape").arg(format!("{n}={}", dims.join("x")));
        }
        cmd.arg("--input").arg(format!("{n}={}", p.display()));
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd.spawn().ok()
}

#[test]
fn no_node_test_panics_aborts_or_hangs() {
    // The cases that pass run in the conformance suites (those of frozen.txt through `kiln run`
    // on the .onnx model, as here).
    let passing = kiln_tests::passing_cases();
    let index = kiln_tests::index();
    let names: Vec<String> = index["node"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .filter(|n| !passing.contains(n.as_str()))
        .collect();
    assert!(!names.is_empty());
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut queue = names.iter();
    let mut running: Vec<(String, Child, Instant)> = Vec::new();
    let mut bad = Vec::new();
    let mut clean_errors = 0usize;
    loop {
        while running.len() < workers {
            let Some(n) = queue.next() else { break };
            match start(n) {
                Some(c) => running.push((n.clone(), c, Instant::now())),
                None => bad.push(format!("{n}: could not start kiln")),
            }
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        let mut i = 0;
        while i < running.len() {
            let (name, child, t0) = &mut running[i];
            match child.try_wait() {
                Ok(Some(status)) => {
                    let mut stderr = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut stderr);
                    }
                    match status.code() {
                        Some(0) => {}
                        Some(1) if stderr.lines().any(|l| l.starts_with("error: ")) => clean_errors += 1,
                        Some(c) => bad.push(format!("{name}: exit status {c}: {}", stderr.trim())),
                        None => bad.push(format!("{name}: killed by a signal: {}", stderr.trim())),
                    }
                    running.swap_remove(i);
                }
                Ok(None) if t0.elapsed() > LIMIT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bad.push(format!("{name}: still running after {LIMIT:?}"));
                    running.swap_remove(i);
                }
                Ok(None) => i += 1,
                Err(e) => {
                    bad.push(format!("{name}: {e}"));
                    running.swap_remove(i);
                }
            }
        }
    }
    println!("{} node tests that do not pass: {clean_errors} clean errors", names.len());
    assert!(bad.is_empty(), "{} cases did not end cleanly:\n{}", bad.len(), bad.join("\n"));
}
