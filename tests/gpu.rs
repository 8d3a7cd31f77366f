//! GPU runs through the runtime-only runner `kiln-run` (built with the runtime's `cuda`
//! feature; `cargo build --release -p kiln-runner`). The GPU tests run where the build finds
//! an NVIDIA device (`/dev/nvidia0`) or `KILN_GPU_TESTS=1` is set (see build.rs); elsewhere
//! they are reported as ignored, with the reason. `scripts/gpu-check.sh` packs the same
//! models for a GPU machine that has no Rust or LLVM. On a machine without a GPU, the
//! runner's refusal to load a GPU artifact is checked instead (it must say why).

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::Compiler;

fn runner() -> PathBuf {
    let bin = kiln_tests::kiln_bin().with_file_name("kiln-run");
    assert!(bin.exists(), "{} missing: build it with `cargo build --release -p kiln-runner`", bin.display());
    bin
}

/// Compiles tests/models/`name` for `target` into `dir`, runs it with `kiln-run` on its
/// inputs and checks its outputs against onnxruntime's; gives the runner's output.
fn run_with_runner(name: &str, target: &str, dir: &Path) -> std::process::Output {
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
    cmd.output().unwrap()
}

/// Runs `name` compiled for `target` and requires it to match onnxruntime.
fn matches_onnxruntime(name: &str, target: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_runner(name, target, dir.path());
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} on {target}: {stdout}{stderr}");
    assert!(stdout.contains(" ok") && !stdout.contains("MISMATCH"), "{name}: {stdout}");
    eprintln!("{name} on {target}:\n{stdout}");
}

#[test]
#[cfg_attr(
    not(kiln_gpu),
    ignore = "needs an NVIDIA GPU (none found at build time); runs with KILN_GPU_TESTS=1 or scripts/gpu-check.sh"
)]
fn bert_encoder_on_the_gpu_matches_onnxruntime() {
    matches_onnxruntime("bert_torch", "cuda");
}

#[test]
#[cfg_attr(
    not(kiln_gpu),
    ignore = "needs an NVIDIA GPU (none found at build time); runs with KILN_GPU_TESTS=1 or scripts/gpu-check.sh"
)]
fn resnet_split_between_gpu_and_cpu_matches_onnxruntime() {
    matches_onnxruntime("resnet50_torch", "cuda,cpu");
}

/// Where there is no GPU, the runner refuses a GPU artifact with a message that says so
/// (no CUDA driver, or no usable GPU), rather than failing obscurely.
#[test]
#[cfg_attr(kiln_gpu, ignore = "a GPU is present: the GPU tests run instead")]
fn without_a_gpu_the_runner_says_why_it_cannot_run_a_gpu_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_runner("bert_torch", "cuda", dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a GPU artifact ran without a GPU: {}", String::from_utf8_lossy(&out.stdout));
    assert!(
        stderr.contains("no CUDA driver") || stderr.contains("no usable GPU"),
        "the runner's refusal does not say why: {stderr}"
    );
    eprintln!("no GPU here; the runner says: {}", stderr.trim());
}

#[test]
fn the_cpu_only_runner_runs_cpu_artifacts() {
    // The runner itself works here: a CPU artifact runs and matches.
    matches_onnxruntime("gpt2_torch", "cpu");
}

#[test]
fn the_runner_refuses_an_input_name_the_model_does_not_have() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let artifact = dir.path().join("mlp.kiln");
    Compiler::new(kiln::CompileOptions::default())
        .compile_path(repo.join("examples/mlp/model.onnx"))
        .unwrap()
        .save(&artifact)
        .unwrap();
    let x = repo.join("examples/mlp/input.npy");
    let out = Command::new(runner())
        .arg(&artifact)
        .arg("--input")
        .arg(format!("x={}", x.display()))
        .arg("--input")
        .arg(format!("bogus={}", x.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`bogus`") && stderr.contains("no input"), "{stderr}");
}
