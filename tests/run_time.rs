//! Decisions made at run time, through `kiln compile` once and `kiln run` on that artifact
//! with different inputs: an `If` on data runs only the branch taken (branches of different
//! shapes; a branch out of range for the input fails only when taken, as onnxruntime does),
//! and reduction axes given at run time. Expected values are derived by hand from
//! x = [[0, 1, 2], [3, 4, 5]]; `outputs.json` reports each run's shape; a value the model is
//! not defined for is a one-line error and status 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kiln(args: &[&str]) -> Output {
    Command::new(kiln_tests::kiln_bin()).args(args).current_dir(repo()).output().expect("run kiln")
}

/// Writes an `.npy` file of `T` elements.
fn npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) {
    use npyz::WriterBuilder;
    let f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = npyz::WriteOptions::<T>::new().default_dtype().shape(shape).writer(f).begin_nd().unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

/// A scratch directory with `x.npy` = [[0, 1, 2], [3, 4, 5]] and the fixture compiled once.
struct Case {
    dir: tempfile::TempDir,
    artifact: String,
}

impl Case {
    fn new(fixture: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        npy(&dir.path().join("x.npy"), &[2, 3], &[0f32, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let artifact = dir.path().join("m.kiln").to_str().unwrap().to_string();
        let out = kiln(&["compile", &format!("tests/fixtures/{fixture}.onnx"), "-o", &artifact]);
        assert!(out.status.success(), "compile {fixture}: {}", String::from_utf8_lossy(&out.stderr));
        Case { dir, artifact }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// Runs the artifact with `x` and one more input: the output `y`'s shape and values, or
    /// the one-line error (status 1).
    fn run(&self, input: &str, file: &str) -> Result<(Vec<u64>, Vec<f32>), String> {
        let out_dir = self.path(&format!("out_{file}"));
        let x = format!("x={}", self.path("x.npy"));
        let other = format!("{input}={}", self.path(file));
        let out = kiln(&["run", &self.artifact, "--input", &x, "--input", &other, "--output-dir", &out_dir]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            assert_eq!(out.status.code(), Some(1), "a failed run exits with 1 (101 is a panic): {stderr}");
            assert_eq!(stderr.lines().count(), 1, "a one-line error: {stderr}");
            return Err(stderr);
        }
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(Path::new(&out_dir).join("outputs.json")).unwrap()).unwrap();
        let shape: Vec<u64> =
            json["outputs"][0]["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        let bytes = std::fs::read(Path::new(&out_dir).join("y.npy")).unwrap();
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        assert_eq!(npy.shape(), &shape[..], "the .npy file's shape is the reported one");
        Ok((shape, npy.into_vec::<f32>().unwrap()))
    }
}

#[test]
fn if_on_data_runs_the_branch_taken_whose_shape_differs() {
    let c = Case::new("if_shapes");
    npy(&c.dir.path().join("yes.npy"), &[], &[true]);
    npy(&c.dir.path().join("no.npy"), &[], &[false]);
    // then: the row sums; else: x flattened.
    assert_eq!(c.run("cond", "yes.npy").unwrap(), (vec![2], vec![3.0, 12.0]));
    assert_eq!(c.run("cond", "no.npy").unwrap(), (vec![6], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
}

#[test]
fn a_branch_out_of_range_fails_only_when_taken() {
    let c = Case::new("if_out_of_range");
    npy(&c.dir.path().join("yes.npy"), &[], &[true]);
    npy(&c.dir.path().join("no.npy"), &[], &[false]);
    assert_eq!(c.run("cond", "no.npy").unwrap(), (vec![6], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
    let e = c.run("cond", "yes.npy").unwrap_err();
    assert!(e.contains("row_5") && e.contains("Gather") && e.contains("[-2, 2)"), "{e}");
}

#[test]
fn reduction_axes_given_at_run_time() {
    let c = Case::new("reduce_axes");
    for (file, axes) in [("a0.npy", 0i64), ("a1.npy", 1), ("am1.npy", -1), ("a2.npy", 2), ("am3.npy", -3)] {
        npy(&c.dir.path().join(file), &[1], &[axes]);
    }
    assert_eq!(c.run("axes", "a0.npy").unwrap(), (vec![3], vec![3.0, 5.0, 7.0]));
    assert_eq!(c.run("axes", "a1.npy").unwrap(), (vec![2], vec![3.0, 12.0]));
    assert_eq!(c.run("axes", "am1.npy").unwrap(), (vec![2], vec![3.0, 12.0]));
    for bad in ["a2.npy", "am3.npy"] {
        let e = c.run("axes", bad).unwrap_err();
        assert!(e.contains("`sum` (ReduceSum)") && e.contains("axes") && e.contains("not defined for"), "{e}");
    }
}

/// Compiles model `name` of `tests/dynamic_models/` once (no input value) and runs every input
/// set, each compared with onnxruntime's outputs; returns the outputs.
fn matches_onnxruntime_on_every_set(name: &str) -> Vec<Vec<kiln_tests::Out>> {
    let m = kiln_tests::load_dynamic(name).unwrap();
    let art = kiln::Compiler::new(kiln::CompileOptions::default()).compile_path(&m.model).unwrap();
    let s = kiln::Session::from_bytes(&art.bytes(), &kiln::SessionOptions::default()).unwrap();
    let mut all = Vec::new();
    for (inputs, want) in &m.sets {
        let refs: Vec<kiln::TensorRef> = inputs
            .iter()
            .map(|(_, t)| kiln::TensorRef { dtype: t.dtype().code(), shape: t.shape(), data: &t.data })
            .collect();
        let got: Vec<kiln_tests::Out> = s.run(&refs).unwrap().into_iter().map(|t| (t.dtype, t.shape, t.data)).collect();
        kiln_tests::compare(&got, want, kiln_tests::EXPORTED_RTOL, kiln_tests::EXPORTED_ATOL)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        all.push(got);
    }
    all
}

/// A detector exported with NonMaxSuppression in its graph, the kept boxes and scores
/// gathered by the selected indices: compiled once, it matches onnxruntime on three images
/// that keep 34 boxes, 40 (the most per class) and none.
#[test]
fn detector_with_non_max_suppression_matches_onnxruntime_on_every_image() {
    let counts: Vec<usize> = matches_onnxruntime_on_every_set("detector_nms").iter().map(|got| got[2].1[0]).collect();
    assert_eq!(counts, vec![34, 40, 0], "the images keep different numbers of boxes");
}

/// A loop whose trip count is an input (exported by TorchScript), compiled once: it matches
/// onnxruntime after 0, 3 and 17 iterations.
#[test]
fn loop_with_a_trip_count_given_at_run_time_matches_onnxruntime() {
    matches_onnxruntime_on_every_set("loop_decay");
}

/// A size that comes from data with no bound of its own (Range's length): without
/// `--max-elements` the compile names the input and both options; with it, one artifact runs
/// any length up to the bound (the output's shape reported) and refuses a longer one, or a
/// zero step, with a one-line error naming the node and the option.
#[test]
fn range_length_bounded_by_max_elements() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("range.kiln").to_str().unwrap().to_string();
    let out = kiln(&["compile", "tests/fixtures/range.onnx", "-o", &artifact]);
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("`range` (Range") && e.contains("--freeze-input") && e.contains("--max-elements"), "{e}");
    let out = kiln(&["compile", "tests/fixtures/range.onnx", "-o", &artifact, "--max-elements", "100"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = |start: f32, limit: f32, delta: f32| -> Result<(Vec<u64>, Vec<f32>), String> {
        let tag = format!("{start}_{limit}_{delta}");
        let mut args = vec!["run".to_string(), artifact.clone()];
        for (name, v) in [("start", start), ("limit", limit), ("delta", delta)] {
            let p = dir.path().join(format!("{name}_{tag}.npy"));
            npy(&p, &[], &[v]);
            args.extend(["--input".to_string(), format!("{name}={}", p.display())]);
        }
        let out_dir = dir.path().join(format!("out_{tag}"));
        args.extend(["--output-dir".to_string(), out_dir.to_str().unwrap().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = kiln(&args);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!((out.status.code(), stderr.lines().count()), (Some(1), 1), "{stderr}");
            return Err(stderr);
        }
        let bytes = std::fs::read(out_dir.join("y.npy")).unwrap();
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        Ok((npy.shape().to_vec(), npy.into_vec::<f32>().unwrap()))
    };
    assert_eq!(run(1.0, 4.0, 1.0).unwrap(), (vec![3], vec![1.0, 2.0, 3.0]));
    assert_eq!(run(10.0, 0.0, -2.5).unwrap(), (vec![4], vec![10.0, 7.5, 5.0, 2.5]));
    assert_eq!(run(3.0, 1.0, 1.0).unwrap(), (vec![0], vec![]));
    let e = run(0.0, 1000.0, 1.0).unwrap_err();
    assert!(e.contains("`range` (Range)") && e.contains("--max-elements"), "{e}");
    assert!(run(0.0, 1.0, 0.0).is_err(), "a zero step");
}
