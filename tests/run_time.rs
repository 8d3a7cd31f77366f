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

/// Compiles model `name` of `tests/dynamic_models/` once (no input value; the run-time dims its
/// meta names) and runs every input set, each compared with onnxruntime's outputs; returns
/// the outputs.
fn matches_onnxruntime_on_every_set(name: &str) -> Vec<Vec<kiln_tests::Out>> {
    let m = kiln_tests::load_dynamic(name).unwrap();
    let opts = kiln::CompileOptions { dims: m.dims.clone(), ..Default::default() };
    let art = kiln::Compiler::new(opts).compile_path(&m.model).unwrap();
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

/// A classifier exported by PyTorch with a dynamic batch (`x.view(x.size(0), -1)` in it:
/// Shape, Gather, Concat, Reshape), compiled once with `--dim batch=1..8`: it matches
/// onnxruntime at batch 1, 3 and 8.
#[test]
fn cnn_with_a_run_time_batch_matches_onnxruntime_at_every_batch() {
    let batches: Vec<usize> = matches_onnxruntime_on_every_set("cnn_batch").iter().map(|got| got[0].1[0]).collect();
    assert_eq!(batches, vec![1, 3, 8]);
}

/// A BERT-style encoder layer exported by PyTorch with a dynamic batch, compiled once with
/// `--dim batch=1..8`: it matches onnxruntime at batch 1, 4 and 8 (sequences with padding
/// masked), and its arena is the one an artifact pinned to the bound plans.
#[test]
fn encoder_with_a_run_time_batch_matches_onnxruntime_and_plans_memory_at_the_bound() {
    let batches: Vec<usize> = matches_onnxruntime_on_every_set("encoder_batch").iter().map(|got| got[0].1[0]).collect();
    assert_eq!(batches, vec![1, 4, 8]);
    let m = kiln_tests::load_dynamic("encoder_batch").unwrap();
    let compile = |opts: kiln::CompileOptions| kiln::Compiler::new(opts).compile_path(&m.model).unwrap();
    let dynamic = compile(kiln::CompileOptions { dims: m.dims.clone(), ..Default::default() });
    let mut pinned = kiln::CompileOptions::default();
    pinned.input_shapes.insert("ids".into(), vec![8, 32]);
    pinned.input_shapes.insert("mask".into(), vec![8, 32]);
    let pinned = compile(pinned);
    assert_eq!(dynamic.manifest.arena_bytes, pinned.manifest.arena_bytes);
    let sym = &dynamic.manifest.symbols;
    assert_eq!((sym.len(), sym[0].name.as_str(), sym[0].lo, sym[0].hi), (1, "batch", 1, 8));
    assert_eq!(dynamic.manifest.inputs[0].dim_slots, vec![0, -1]);
}

/// A two-layer BERT-style encoder exported by PyTorch with a dynamic batch and sequence,
/// compiled once with `--dim batch=1..8 --dim seq=1..512`: it matches onnxruntime at (1, 7),
/// (1, 128), (4, 384) and (8, 512) (padding masked), its arena is the one an artifact pinned
/// to the bounds plans, and its inputs' and output's sequence axis is a run-time dim.
#[test]
fn encoder_with_a_run_time_batch_and_sequence_matches_onnxruntime_and_plans_memory_at_the_bounds() {
    let shapes: Vec<Vec<usize>> =
        matches_onnxruntime_on_every_set("encoder_seq").iter().map(|got| got[0].1[..2].to_vec()).collect();
    assert_eq!(shapes, vec![vec![1, 7], vec![1, 128], vec![4, 384], vec![8, 512]]);
    let m = kiln_tests::load_dynamic("encoder_seq").unwrap();
    let compile = |opts: kiln::CompileOptions| kiln::Compiler::new(opts).compile_path(&m.model).unwrap();
    let dynamic = compile(kiln::CompileOptions { dims: m.dims.clone(), ..Default::default() });
    let mut pinned = kiln::CompileOptions::default();
    pinned.input_shapes.insert("ids".into(), vec![8, 512]);
    pinned.input_shapes.insert("mask".into(), vec![8, 512]);
    let pinned = compile(pinned);
    assert_eq!(dynamic.manifest.arena_bytes, pinned.manifest.arena_bytes);
    let names: Vec<&str> = dynamic.manifest.symbols.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["batch", "seq"]);
    assert_eq!(dynamic.manifest.inputs[0].dim_slots, vec![0, 1]);
    assert_eq!(dynamic.manifest.outputs[0].dim_slots, vec![0, 1, -1]);
    assert_eq!(dynamic.manifest.outputs[1].dim_slots, vec![0, -1]);
}

/// A GPT-2-style decoder exported by PyTorch with a key/value cache whose past length is a
/// dynamic axis (`present = cat(past, new)`, one longer), compiled once with `--dim
/// past=0..63`: it matches onnxruntime at past 0, 9 and 63, and stepped token by token (the
/// prompt, then its own greedy picks, each step's present fed back as the next past) it
/// generates the 32 tokens onnxruntime generated.
#[test]
fn a_decoder_with_a_key_value_cache_generates_onnxruntimes_tokens_from_one_artifact() {
    let presents: Vec<usize> = matches_onnxruntime_on_every_set("gpt_decode").iter().map(|got| got[1].1[2]).collect();
    assert_eq!(presents, vec![1, 10, 64]);
    let m = kiln_tests::load_dynamic("gpt_decode").unwrap();
    let art = kiln::Compiler::new(kiln::CompileOptions { dims: m.dims.clone(), ..Default::default() })
        .compile_path(&m.model)
        .unwrap();
    let names: Vec<(&str, u64, u64)> = art.manifest.symbols.iter().map(|s| (s.name.as_str(), s.lo, s.hi)).collect();
    assert_eq!(names, vec![("past", 0, 63), ("past+1", 1, 64)]);
    assert_eq!(art.manifest.symbols[1].base, Some(0));
    assert_eq!(art.manifest.outputs[1].dim_slots, vec![-1, -1, 1, -1]);
    let s = kiln::Session::from_bytes(&art.bytes(), &kiln::SessionOptions::default()).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(m.model.with_file_name("meta.json")).unwrap()).unwrap();
    let ints =
        |v: &serde_json::Value| -> Vec<i64> { v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect() };
    let (prompt, want) = (ints(&meta["greedy"]["prompt"]), ints(&meta["greedy"]["tokens"]));
    let mut cache: Vec<(Vec<usize>, Vec<f32>)> = vec![(vec![1, 4, 0, 16], vec![]); 4];
    let mut tokens = Vec::new();
    for pos in 0..prompt.len() + want.len() - 1 {
        let tok = [if pos < prompt.len() { prompt[pos] } else { *tokens.last().unwrap() }];
        let at = [pos as i64];
        let mut inputs = vec![kiln::TensorRef::i64(&[1, 1], &tok), kiln::TensorRef::i64(&[1, 1], &at)];
        inputs.extend(cache.iter().map(|(shape, data)| kiln::TensorRef::f32(shape, data)));
        let outs = s.run(&inputs).unwrap();
        cache = outs[1..].iter().map(|t| (t.shape.clone(), t.to_f32().unwrap())).collect();
        assert_eq!(cache[0].0, vec![1, 4, pos + 1, 16]);
        if pos + 1 >= prompt.len() {
            let logits = outs[0].to_f32().unwrap();
            let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap();
            tokens.push(best as i64);
        }
    }
    assert_eq!(tokens, want, "greedy tokens against onnxruntime's");

    // A cache past its bound, and caches of two lengths, are refused naming the input and the
    // dim (the present's derived length is never given by the caller).
    let run = |pasts: [usize; 4]| -> String {
        let data: Vec<Vec<f32>> = pasts.iter().map(|&p| vec![0.5; 4 * p * 16]).collect();
        let shapes: Vec<[usize; 4]> = pasts.iter().map(|&p| [1, 4, p, 16]).collect();
        let (tok, at) = ([1i64], [0i64]);
        let mut inputs = vec![kiln::TensorRef::i64(&[1, 1], &tok), kiln::TensorRef::i64(&[1, 1], &at)];
        inputs.extend(shapes.iter().zip(&data).map(|(s, d)| kiln::TensorRef::f32(s, d)));
        s.run(&inputs).map(|_| String::new()).unwrap_or_else(|e| e.to_string())
    };
    assert_eq!(run([63; 4]), "", "the bound itself runs");
    let e = run([64; 4]);
    assert!(e.contains("`past_key_0`") && e.contains("`past`") && e.contains("0..=63"), "{e}");
    let e = run([5, 5, 6, 5]);
    assert!(e.contains("`past_key_1`") && e.contains("is 6") && e.contains("`past_key_0` gives `past` = 5"), "{e}");
}

/// The same encoder through `kiln run`: a sequence past its bound, none, and inputs whose
/// sequences differ are each a one-line error naming the input, the dim and its bounds or
/// the other input.
#[test]
fn a_run_time_sequence_outside_its_bounds_or_disagreeing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("m.kiln").to_str().unwrap().to_string();
    let model = "tests/dynamic_models/encoder_seq/model.onnx";
    let out = kiln(&["compile", model, "--dim", "batch=1..8", "--dim", "seq=1..512", "-o", &artifact]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (name, n) in [("ids", 7u64), ("mask", 7), ("ids600", 600), ("mask600", 600), ("ids0", 0), ("mask0", 0)] {
        npy(&dir.path().join(format!("{name}.npy")), &[1, n], &vec![1i64; n as usize]);
    }
    npy(&dir.path().join("mask8.npy"), &[1, 8], &[1i64; 8]);
    let run = |ids: &str, mask: &str| {
        let args = [
            "run".to_string(),
            artifact.clone(),
            "--input".into(),
            format!("ids={}", dir.path().join(ids).display()),
            "--input".into(),
            format!("mask={}", dir.path().join(mask).display()),
            "--output-dir".into(),
            dir.path().join("out").display().to_string(),
        ];
        let out = kiln(&args.iter().map(String::as_str).collect::<Vec<_>>());
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(run("ids.npy", "mask.npy").0, Some(0));
    for (ids, mask, want) in [
        ("ids600.npy", "mask600.npy", ["input `ids`", "`seq`", "1..=512"]),
        ("ids0.npy", "mask0.npy", ["input `ids`", "`seq`", "1..=512"]),
        ("ids.npy", "mask8.npy", ["input `mask`", "`seq`", "input `ids`"]),
    ] {
        let (code, e) = run(ids, mask);
        assert_eq!((code, e.lines().count()), (Some(1), 1), "{ids} {mask}: {e}");
        assert!(want.iter().all(|w| e.contains(w)), "{ids} {mask}: {e}");
    }
}

/// The decoder through `kiln run`, compiled with `--dim past=0..63`: an empty cache runs (the
/// first token), a cache past its bound and caches of two lengths are one-line errors with
/// status 1.
#[test]
fn a_decoder_cache_outside_its_bounds_or_disagreeing_is_refused_by_kiln_run() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("d.kiln").to_str().unwrap().to_string();
    let model = "tests/dynamic_models/gpt_decode/model.onnx";
    let out = kiln(&["compile", model, "--dim", "past=0..63", "-o", &artifact]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    npy(&dir.path().join("tok.npy"), &[1, 1], &[3i64]);
    for p in [0u64, 5, 6, 64] {
        npy(&dir.path().join(format!("kv{p}.npy")), &[1, 4, p, 16], &vec![0.25f32; 64 * p as usize]);
    }
    let run = |pasts: [u64; 4]| {
        let mut inputs = vec![("input_ids", "tok.npy".to_string()), ("position_ids", "tok.npy".to_string())];
        for (name, p) in ["past_key_0", "past_value_0", "past_key_1", "past_value_1"].into_iter().zip(pasts) {
            inputs.push((name, format!("kv{p}.npy")));
        }
        let mut args = vec!["run".to_string(), artifact.clone(), "--output-dir".into()];
        args.push(dir.path().join("out").display().to_string());
        for (name, file) in inputs {
            args.extend(["--input".to_string(), format!("{name}={}", dir.path().join(file).display())]);
        }
        let out = kiln(&args.iter().map(String::as_str).collect::<Vec<_>>());
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(run([0; 4]).0, Some(0), "an empty cache is the first step");
    for (pasts, want) in [
        ([64; 4], ["input `past_key_0`", "`past`", "0..=63"]),
        ([5, 5, 5, 6], ["input `past_value_1`", "is 6", "input `past_key_0`"]),
    ] {
        let (code, e) = run(pasts);
        assert_eq!((code, e.lines().count()), (Some(1), 1), "{pasts:?}: {e}");
        assert!(want.iter().all(|w| e.contains(w)), "{pasts:?}: {e}");
    }
}

/// Runs `artifact` with each `(input, file)`; the output `y`, or the one-line error (status 1).
fn run_inputs(dir: &Path, artifact: &str, inputs: &[(&str, &str)], tag: &str) -> Result<(Vec<u64>, Vec<f32>), String> {
    let out_dir = dir.join(format!("out_{tag}")).to_str().unwrap().to_string();
    let mut args = vec!["run".to_string(), artifact.to_string(), "--output-dir".into(), out_dir.clone()];
    for (name, file) in inputs {
        args.extend(["--input".to_string(), format!("{name}={}", dir.join(file).display())]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = kiln(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        assert_eq!((out.status.code(), stderr.lines().count()), (Some(1), 1), "a one-line error, status 1: {stderr}");
        return Err(stderr);
    }
    let bytes = std::fs::read(Path::new(&out_dir).join("y.npy")).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    Ok((npy.shape().to_vec(), npy.into_vec::<f32>().unwrap()))
}

/// Relu over x [N, 4] compiled once with `--dim N=1..4`: any N in the bounds runs (values by
/// hand), one outside them, or a wrong fixed dim or rank, is a one-line error naming the
/// input, the dim and its bounds, never a panic or an access past the buffers.
#[test]
fn a_run_time_batch_runs_every_size_in_its_bounds_and_refuses_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("m.kiln").to_str().unwrap().to_string();
    let out = kiln(&["compile", "tests/fixtures/symbolic.onnx", "--dim", "N=1..4", "-o", &artifact]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for n in 0..=6u64 {
        let x: Vec<f32> = (0..n * 4).map(|i| i as f32 - 5.0).collect();
        npy(&dir.path().join(format!("x{n}.npy")), &[n, 4], &x);
        let got = run_inputs(dir.path(), &artifact, &[("x", &format!("x{n}.npy"))], &n.to_string());
        if (1..=4).contains(&n) {
            let want: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
            assert_eq!(got.unwrap(), (vec![n, 4], want), "N = {n}");
        } else {
            let e = got.unwrap_err();
            assert!(e.contains("input `x`") && e.contains("`N`") && e.contains("1..=4"), "N = {n}: {e}");
        }
    }
    // A fixed dim that differs, and another rank.
    npy(&dir.path().join("wide.npy"), &[2, 5], &[0f32; 10]);
    npy(&dir.path().join("flat.npy"), &[8], &[0f32; 8]);
    for f in ["wide.npy", "flat.npy"] {
        let e = run_inputs(dir.path(), &artifact, &[("x", f)], f).unwrap_err();
        assert!(e.contains("input `x`") && e.contains("N=1..=4, 4"), "{e}");
    }
}

/// Two inputs sharing the symbolic N: sizes that differ are refused, naming both inputs and
/// the dim.
#[test]
fn inputs_that_disagree_on_a_run_time_dim_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("m.kiln").to_str().unwrap().to_string();
    let out = kiln(&["compile", "tests/fixtures/batch_pair.onnx", "--dim", "N=1..8", "-o", &artifact]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    npy(&dir.path().join("a.npy"), &[2, 3], &[1f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
    npy(&dir.path().join("b.npy"), &[2, 3], &[10f32; 6]);
    npy(&dir.path().join("b3.npy"), &[3, 3], &[10f32; 9]);
    let ok = run_inputs(dir.path(), &artifact, &[("a", "a.npy"), ("b", "b.npy")], "ok").unwrap();
    assert_eq!(ok, (vec![2, 3], vec![11.0, 12.0, 13.0, 14.0, 15.0, 16.0]));
    let e = run_inputs(dir.path(), &artifact, &[("a", "a.npy"), ("b", "b3.npy")], "bad").unwrap_err();
    assert!(e.contains("input `b`") && e.contains("`N`") && e.contains("input `a`"), "{e}");
}

/// A sum over the run-time batch (x [N, 3] summed over N) adds the rows a run gives, at every
/// N in the bounds (values by hand).
#[test]
fn a_reduction_over_a_run_time_batch_sums_the_rows_of_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("m.kiln").to_str().unwrap().to_string();
    let out = kiln(&["compile", "tests/fixtures/batch_mixing.onnx", "--dim", "N=1..8", "-o", &artifact]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for n in 1..=8u64 {
        // Row r is [r, 10·r, 100·r]: the sums are n(n−1)/2 times 1, 10 and 100.
        let x: Vec<f32> = (0..n).flat_map(|r| [r as f32, 10.0 * r as f32, 100.0 * r as f32]).collect();
        npy(&dir.path().join(format!("x{n}.npy")), &[n, 3], &x);
        let got = run_inputs(dir.path(), &artifact, &[("x", &format!("x{n}.npy"))], &n.to_string()).unwrap();
        let t = (n * (n - 1) / 2) as f32;
        assert_eq!(got, (vec![1, 3], vec![t, 10.0 * t, 100.0 * t]), "N = {n}");
    }
}

/// What cannot vary at run time is refused at compile time with one line naming the node and
/// the dim: its size used as a value, a --dim the model does not have.
#[test]
fn run_time_dims_that_cannot_vary_are_refused_at_compile_time() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("m.kiln").to_str().unwrap().to_string();
    for (fixture, dim, want) in [
        ("batch_as_data", "N=1..8", ["`scale_by_batch`", "`N`", "used as data"]),
        ("batch_pair", "M=1..8", ["--dim `M=1..8`", "`N`", "no input has a dim named"]),
        ("batch_pair", "N=3..2", ["--dim `N=3..2`", "lower bound 3", "upper bound 2"]),
    ] {
        let out = kiln(&["compile", &format!("tests/fixtures/{fixture}.onnx"), "--dim", dim, "-o", &artifact]);
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!((out.status.code(), e.lines().count()), (Some(1), 1), "{fixture}: {e}");
        assert!(want.iter().all(|w| e.contains(w)), "{fixture}: {e}");
    }
}
