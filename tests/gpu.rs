//! GPU runs through the runtime-only runner `kiln-run` (built with the runtime's `cuda`
//! feature; `cargo build --release -p kiln-runner`). Where there is no CUDA driver or no GPU
//! (CI), each test checks that loading says so clearly, then skips the GPU part, loudly.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::Compiler;

fn runner() -> PathBuf {
    let bin = kiln_tests::kiln_bin().with_file_name("kiln-run");
    assert!(bin.exists(), "{} missing: build it with `cargo build --release -p kiln-runner`", bin.display());
    bin
}

/// Compiles tests/models/`name` for `target` into `dir`, runs it with `kiln-run` on its
/// inputs against onnxruntime's outputs, and returns whether it ran (false: no GPU here).
fn run_on_gpu(name: &str, target: &str, dir: &Path) -> bool {
    let case = kiln_tests::load_exported(name).unwrap();
    let mut opts = kiln_tests::compile_options(&case);
    opts.set_target(target).unwrap();
    let artifact = dir.join(format!("{name}.kiln"));
    Compiler::new(opts).compile_path(&case.model).unwrap().save(&artifact).unwrap();
    let mut cmd = Command::new(runner());
    cmd.arg(&artifact);
    for (n, _, file) in &case.inputs {
        cmd.arg("--input").arg(format!("{n}={}", file.display()));
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kiln_tests::model_dir(name).join("meta.json")).unwrap()).unwrap();
    for o in meta["outputs"].as_array().unwrap() {
        cmd.arg("--expect").arg(kiln_tests::model_dir(name).join(o["file"].as_str().unwrap()));
    }
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if stderr.contains("no CUDA driver") || stderr.contains("no usable GPU") {
        assert!(!out.status.success());
        eprintln!("SKIPPED the GPU run of {name} ({target}): no GPU here: {}", stderr.trim());
        return false;
    }
    assert!(out.status.success(), "{name}: {stdout}{stderr}");
    assert!(stdout.contains(" ok") && !stdout.contains("MISMATCH"), "{name}: {stdout}");
    eprintln!("{name} on {target}:\n{stdout}");
    true
}

#[test]
fn bert_encoder_on_the_gpu_matches_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    run_on_gpu("bert_torch", "cuda", dir.path());
}

#[test]
fn resnet_split_between_gpu_and_cpu_matches_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    run_on_gpu("resnet50_torch", "cuda,cpu", dir.path());
}

#[test]
fn the_cpu_only_runner_runs_cpu_artifacts() {
    // The runner itself works here: a CPU artifact runs and matches.
    let dir = tempfile::tempdir().unwrap();
    assert!(run_on_gpu("gpt2_torch", "cpu", dir.path()));
}
