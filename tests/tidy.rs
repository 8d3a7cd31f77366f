//! Architecture invariants, checked as tests.

use std::process::Command;

/// The runtime never links LLVM or any compiler crate: a deployed program carries only the
/// runtime and an artifact.
#[test]
fn runtime_depends_on_neither_llvm_nor_the_compiler() {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "-p", "kiln-runtime", "-e", "normal,build", "--prefix", "none", "--offline"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("kiln-abi"), "unexpected cargo tree output: {tree}");
    let banned = ["inkwell", "llvm-sys", "kiln-ir", "kiln-onnx", "kiln-passes", "kiln-backend", "kiln v", "cudarc"];
    for line in tree.lines() {
        for b in banned {
            assert!(
                !line.starts_with(b),
                "kiln-runtime depends on `{line}`; the runtime must not link LLVM or the compiler"
            );
        }
    }
}

/// `ir/` knows nothing of ONNX, LLVM or the runtime.
#[test]
fn ir_depends_on_neither_onnx_nor_llvm() {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "-p", "kiln-ir", "-e", "normal", "--prefix", "none", "--offline"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    for b in ["inkwell", "llvm-sys", "kiln-onnx", "kiln-runtime", "libloading"] {
        assert!(!tree.lines().any(|l| l.starts_with(b)), "kiln-ir depends on {b}");
    }
}

/// Compiling the same model twice gives byte-identical artifacts.
#[test]
fn compilation_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut outs = Vec::new();
    for model in ["examples/mlp/model.onnx", "tests/fixtures/symbolic.onnx"] {
        for i in 0..2 {
            let p = dir.path().join(format!("m{i}.kiln"));
            let mut cmd = Command::new(kiln_tests::kiln_bin());
            cmd.args(["compile", model, "-o", p.to_str().unwrap(), "--input-shape", "x=3x4"]).current_dir(repo);
            if model.contains("mlp") {
                cmd.args(["--input-shape", "x=1x8"]);
            }
            let o = cmd.output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            outs.push(std::fs::read(&p).unwrap());
        }
        assert_eq!(outs[outs.len() - 2], outs[outs.len() - 1], "{model}: two compilations differ");
    }
}

/// Splitting across devices is deterministic too: GPU code, partitions and slots.
#[test]
fn partitioned_compilation_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let shapes = ["input_ids=2x24", "attention_mask=2x24", "token_type_ids=2x24"];
    for target in ["cuda,cpu", "cpu:mem=512KiB,cpu:mem=512KiB"] {
        let mut outs = Vec::new();
        for i in 0..2 {
            let p = dir.path().join(format!("b{i}.kiln"));
            let mut cmd = Command::new(kiln_tests::kiln_bin());
            cmd.args(["compile", "tests/models/bert_torch/model.onnx", "-o", p.to_str().unwrap(), "--target", target]);
            for s in shapes {
                cmd.args(["--input-shape", s]);
            }
            let o = cmd.current_dir(repo).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            outs.push(std::fs::read(&p).unwrap());
        }
        assert_eq!(outs[0], outs[1], "{target}: two compilations differ");
    }
}
