//! Bad input gets a one-line error naming what and where, and a non-zero exit from `kiln`,
//! never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `kiln ARGS`, asserts failure with exactly one `error: …` line and no panic, and
/// returns that line.
fn fails(args: &[&str]) -> String {
    let out = Command::new(kiln_tests::kiln_bin()).args(args).current_dir(repo()).output().expect("run kiln");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kiln {args:?} succeeded; stderr: {stderr}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "kiln {args:?}: exit status {:?} (101 is a panic); stderr: {stderr}",
        out.status.code()
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "kiln {args:?}: expected a one-line error, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "kiln {args:?}: {stderr}");
    lines[0].to_string()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write_npy_f32(path: &Path, shape: &[u64], data: &[f32]) {
    use npyz::WriterBuilder;
    let f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = npyz::WriteOptions::<f32>::new().default_dtype().shape(shape).writer(f).begin_nd().unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

fn write_npy_i64(path: &Path, shape: &[u64], data: &[i64]) {
    use npyz::WriterBuilder;
    let f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = npyz::WriteOptions::<i64>::new().default_dtype().shape(shape).writer(f).begin_nd().unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

const MLP: &str = "examples/mlp/model.onnx";
const X: &str = "x=examples/mlp/input.npy";

#[test]
fn truncated_model() {
    let d = tmp();
    let bytes = std::fs::read(repo().join(MLP)).unwrap();
    let p = d.path().join("cut.onnx");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = fails(&["run", p.to_str().unwrap(), "--input", X, "--output-dir", d.path().to_str().unwrap()]);
    assert!(e.contains("cannot decode ONNX model"), "{e}");
}

#[test]
fn unknown_ops_are_all_listed() {
    let d = tmp();
    let e = fails(&["compile", "tests/fixtures/unknown_ops.onnx", "-o", d.path().join("m.kiln").to_str().unwrap()]);
    assert!(e.contains("FancyOp") && e.contains("fancy_1"), "{e}");
    assert!(e.contains("Mystery") && e.contains("com.example") && e.contains("mystery_7"), "{e}");
}

#[test]
fn unpinned_symbolic_dim_names_input_dim_and_option() {
    let d = tmp();
    let e = fails(&["compile", "tests/fixtures/symbolic.onnx", "-o", d.path().join("m.kiln").to_str().unwrap()]);
    assert!(e.contains("`x`") && e.contains("N") && e.contains("--input-shape"), "{e}");
}

#[test]
fn wrong_input_shape() {
    let d = tmp();
    let p = d.path().join("x.npy");
    write_npy_f32(&p, &[2, 8], &[0.5; 16]);
    let e = fails(&["run", MLP, "--input", &format!("x={}", p.display()), "--output-dir", d.path().to_str().unwrap()]);
    assert!(e.contains("input `x`") && e.contains("shape"), "{e}");
}

#[test]
fn wrong_input_dtype() {
    let d = tmp();
    let p = d.path().join("x.npy");
    write_npy_i64(&p, &[1, 8], &[1; 8]);
    let e = fails(&["run", MLP, "--input", &format!("x={}", p.display()), "--output-dir", d.path().to_str().unwrap()]);
    assert!(e.contains("input `x`") && e.contains("dtype"), "{e}");
}

#[test]
fn missing_input() {
    let d = tmp();
    let e = fails(&["run", MLP, "--output-dir", d.path().to_str().unwrap()]);
    assert!(e.contains("missing input `x`"), "{e}");
}

#[test]
fn missing_model_file() {
    let d = tmp();
    let e = fails(&["run", "no/such/model.onnx", "--input", X, "--output-dir", d.path().to_str().unwrap()]);
    assert!(e.contains("no/such/model.onnx"), "{e}");
}

/// Compiles the example MLP into `dir/m.kiln`.
fn compile_mlp(dir: &Path) -> PathBuf {
    let art = dir.join("m.kiln");
    let out = Command::new(kiln_tests::kiln_bin())
        .args(["compile", MLP, "-o", art.to_str().unwrap()])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    art
}

#[test]
fn corrupted_artifact() {
    let d = tmp();
    let art = compile_mlp(d.path());
    let mut bytes = std::fs::read(&art).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x5a;
    std::fs::write(&art, &bytes).unwrap();
    let e = fails(&["run", art.to_str().unwrap(), "--input", X, "--output-dir", d.path().to_str().unwrap()]);
    assert!(e.contains("checksum") && e.contains("damaged"), "{e}");
    std::fs::write(&art, &bytes[..n / 3]).unwrap();
    let e = fails(&["run", art.to_str().unwrap(), "--input", X, "--output-dir", d.path().to_str().unwrap()]);
    assert!(e.contains("truncated") || e.contains("outside"), "{e}");
    std::fs::write(&art, b"definitely not an artifact").unwrap();
    let e = fails(&["run", art.to_str().unwrap(), "--input", X, "--output-dir", d.path().to_str().unwrap()]);
    assert!(e.contains("not a Kiln artifact"), "{e}");
}

#[test]
fn example_runs_and_matches_onnxruntime() {
    let d = tmp();
    let out = Command::new(kiln_tests::kiln_bin())
        .args(["run", MLP, "--input", X, "--output-dir", d.path().to_str().unwrap()])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("outputs.json")).unwrap()).unwrap();
    let o = &listing["outputs"][0];
    assert_eq!(o["name"], "y");
    assert_eq!(o["dtype"], "f32");
    assert_eq!(o["shape"], serde_json::json!([1, 4]));
    let read =
        |p: PathBuf| -> Vec<f32> { npyz::NpyFile::new(&std::fs::read(p).unwrap()[..]).unwrap().into_vec().unwrap() };
    let got = read(d.path().join(o["file"].as_str().unwrap()));
    let want = read(repo().join("examples/mlp/expected.npy"));
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5 + 1e-4 * b.abs(), "got {got:?}, onnxruntime {want:?}");
    }
}

/// Device targets: a bad list, a cap nothing fits in, PTX without a GPU, a split model as a
/// static library; and an artifact with GPU partitions on a runtime without GPU support.
#[test]
fn device_targets_are_checked() {
    let d = tmp();
    let out = d.path().join("m.kiln");
    let out = out.to_str().unwrap();
    let mlp = "examples/mlp/model.onnx";
    let e = fails(&["compile", mlp, "--target", "cuda,tpu", "-o", out]);
    assert!(e.contains("unknown device `tpu`"), "{e}");
    let e = fails(&["compile", mlp, "--target", "cpu:mem=12", "-o", out]);
    assert!(e.contains("fits on no device") && e.contains("cpu:mem=12B (device 0) would need"), "{e}");
    let e = fails(&["compile", mlp, "--emit", "ptx", "-o", out]);
    assert!(e.contains("target `cpu`: no partition runs on a GPU"), "{e}");
    let e = fails(&["compile", mlp, "--target", "cuda", "--emit", "staticlib", "-o", out]);
    assert!(e.contains("a model split across devices is written as a .kiln artifact"), "{e}");
    let e = fails(&["inspect", mlp, "--dot", out]);
    assert!(e.contains("--dot goes with --partitions"), "{e}");
    // Machine code of a program stopped before its memory plan: an error, not a panic.
    let e = fails(&["inspect", mlp, "--after", "prepack", "--emit", "asm"]);
    assert!(e.contains("has no offset") && e.contains("--after pack-weights"), "{e}");
    // `kiln` itself has no GPU runtime: it names the partition and the target list.
    let o = Command::new(kiln_tests::kiln_bin())
        .args(["compile", mlp, "--target", "cuda", "-o", out])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let input = repo().join("examples/mlp/input.npy");
    let e =
        fails(&["run", out, "--input", &format!("x={}", input.display()), "--output-dir", d.path().to_str().unwrap()]);
    assert!(e.contains("partition 0 runs on device `cuda`") && e.contains("built without the `cuda` feature"), "{e}");
}

#[test]
fn an_input_name_the_model_does_not_have_is_refused() {
    let d = tmp();
    let out = d.path().to_str().unwrap();
    let e = fails(&["run", MLP, "--input", X, "--input", "bogus=/nonexistent.npy", "--output-dir", out]);
    assert!(e.contains("`bogus`") && e.contains("no input") && e.contains("x"), "{e}");
    // The same through an artifact.
    let art = compile_mlp(d.path());
    let e =
        fails(&["run", art.to_str().unwrap(), "--input", X, "--input", "bogus=/nonexistent.npy", "--output-dir", out]);
    assert!(e.contains("`bogus`") && e.contains("no input"), "{e}");
}

/// An artifact compiled with an input frozen (a Reshape's target shape) runs when given that
/// same value again, and refuses another value rather than silently using the old one.
#[test]
fn a_value_for_a_frozen_input_must_be_the_frozen_one() {
    let d = tmp();
    let case = kiln_tests::data_root().join("node/test_reshape_reordered_all_dims");
    let (model, data) = (case.join("model.onnx"), case.join("test_data_set_0"));
    let shape = data.join("input_1.pb");
    let art = d.path().join("reshape.kiln");
    let o = Command::new(kiln_tests::kiln_bin())
        .arg("compile")
        .arg(&model)
        .args(["-o", art.to_str().unwrap(), "--freeze-input", &format!("shape={}", shape.display())])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let data_in = format!("data={}", data.join("input_0.pb").display());
    let out = d.path().join("out");
    let same = Command::new(kiln_tests::kiln_bin())
        .arg("run")
        .arg(&art)
        .args(["--input", &data_in, "--input", &format!("shape={}", shape.display())])
        .args(["--output-dir", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(same.status.success(), "the frozen value itself is refused: {}", String::from_utf8_lossy(&same.stderr));
    let frozen = kiln::read_tensor_proto(&std::fs::read(&shape).unwrap()).unwrap();
    let mut other: Vec<i64> = frozen.to_i64_vec();
    other.reverse();
    assert_ne!(other, frozen.to_i64_vec());
    let p = d.path().join("other_shape.npy");
    write_npy_i64(&p, &[other.len() as u64], &other);
    let (other_in, out) = (format!("shape={}", p.display()), out.to_str().unwrap());
    let e = fails(&["run", art.to_str().unwrap(), "--input", &data_in, "--input", &other_in, "--output-dir", out]);
    assert!(e.contains("`shape`") && e.contains("frozen"), "{e}");
    // `kiln run` on the .onnx model, told to freeze one value and given another: refused too.
    let freeze = format!("shape={}", shape.display());
    let model = model.to_str().unwrap();
    let e = fails(&[
        "run",
        model,
        "--freeze-input",
        &freeze,
        "--input",
        &data_in,
        "--input",
        &other_in,
        "--output-dir",
        out,
    ]);
    assert!(e.contains("`shape`") && e.contains("frozen"), "{e}");
}

/// A compiled artifact takes a sequence input element by element; given the whole
/// SequenceProto, `kiln run` says so.
#[test]
fn a_whole_sequence_for_an_artifact_names_its_element_inputs() {
    let d = tmp();
    let case = kiln_tests::data_root().join("node/test_identity_sequence");
    let seq = case.join("test_data_set_0/input_0.pb");
    let art = d.path().join("seq.kiln");
    let o = Command::new(kiln_tests::kiln_bin())
        .arg("compile")
        .arg(case.join("model.onnx"))
        .args(["-o", art.to_str().unwrap(), "--input-value", &format!("x={}", seq.display())])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let given = format!("x={}", seq.display());
    let e = fails(&["run", art.to_str().unwrap(), "--input", &given, "--output-dir", d.path().to_str().unwrap()]);
    assert!(e.contains("`x`") && e.contains("x[0]"), "{e}");
}

/// An artifact compiled with a CPU feature this CPU lacks (AVX-512 on a Zen 3, say) is refused
/// at load, naming the feature, instead of dying of SIGILL mid-run. On a CPU with every
/// feature tried, the same artifact must load and run (no false refusal).
#[test]
fn an_artifact_for_features_this_cpu_lacks_is_refused_naming_them() {
    #[cfg(target_arch = "x86_64")]
    let lacking = {
        use std::arch::is_x86_feature_detected as has;
        [("avx512f", has!("avx512f")), ("avx512bf16", has!("avx512bf16")), ("avx512fp16", has!("avx512fp16"))]
            .into_iter()
            .find(|(_, present)| !present)
            .map(|(f, _)| f)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let lacking: Option<&str> = None;
    let mut opts = kiln::CompileOptions::default();
    // The host's own features, plus the one it lacks (LLVM compiles for it all the same).
    if let Some(f) = lacking {
        opts.target.features = format!("{},+{f}", opts.target.features);
    }
    let art = kiln::Compiler::new(opts).compile_path(repo().join("examples/mlp/model.onnx")).unwrap();
    let loaded = kiln::Session::from_bytes(&art.bytes(), &kiln::SessionOptions::default());
    match lacking {
        Some(f) => {
            let e = loaded.err().expect("refused").to_string();
            assert!(e.contains(f) && e.contains("this CPU lacks"), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        None => {
            let s = loaded.unwrap();
            let x = vec![0.5f32; 8];
            assert_eq!(s.run(&[kiln::TensorRef::f32(&[1, 8], &x)]).unwrap().len(), 1);
        }
    }
}
