//! Models from real exporters (torch.onnx.export with and without dynamo, spox, onnxscript) with random weights,
//! committed under `tests/models/<name>/` by `scripts/export_models.py`: `model.onnx`,
//! `input_<i>.npy`, onnxruntime's `output_<i>.npy` and `meta.json`. Each test compiles the
//! model with Kiln, pinning every input's shape to that of its `.npy` (several models
//! export their batch dim as dynamic), runs it and compares with onnxruntime.

use std::path::Path;

use kiln_ir::Tensor;
use kiln_tests::{load_exported as load, Case};

fn check(name: &str) {
    check_with(name, kiln_tests::run_lib);
}

fn check_with(name: &str, runner: fn(&Case) -> Result<Vec<kiln_tests::Out>, String>) {
    let case = load(name).unwrap_or_else(|e| panic!("{name}: loading: {e}"));
    let got = runner(&case).unwrap_or_else(|e| panic!("{name}: {e}"));
    kiln_tests::compare(&got, &case.expected, case.rtol, case.atol).unwrap_or_else(|e| panic!("{name}: {e}"));
    // The worst errors, for `--nocapture` runs (compare has checked dtype and shape).
    for (i, ((_, _, bytes), want)) in got.iter().zip(&case.expected).enumerate() {
        let g = Tensor::from_bytes(want.ty.clone(), bytes.clone().into()).expect("checked by compare");
        let (mut abs, mut rel) = (0f64, 0f64);
        for (a, b) in g.to_f64_vec().into_iter().zip(want.to_f64_vec()) {
            abs = abs.max((a - b).abs());
            rel = rel.max((a - b).abs() / b.abs().max(1e-6));
        }
        eprintln!("{name}: output {i} {:?}: max abs err {abs:.3e}, max rel err {rel:.3e}", want.shape());
    }
}

macro_rules! exporter_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            check(stringify!($name));
        }
    )*};
}

kiln_tests::with_exported_models!(exporter_tests!());

/// `kiln run` with `--input-shape` pinning the dynamic dims (batch and sequence) and `.npy`
/// inputs, int64 token ids included (needs the `kiln` binary: `cargo build -p kiln-cli`).
mod cli {
    #[test]
    fn gpt2_torch_legacy() {
        super::check_with("gpt2_torch_legacy", kiln_tests::run_cli);
    }

    #[test]
    fn bert_torch() {
        super::check_with("bert_torch", kiln_tests::run_cli);
    }
}

/// `--precision bf16` (products' weights rounded to bf16): every exported model's outputs stay
/// within 1% of the largest output of onnxruntime's f32 ones (the tolerance stated for bf16:
/// OpenVINO's own bf16 mode differs from f32 by 0.5–1.1% of the largest output on the
/// full-size models), and are not the f32 outputs (the mode took effect).
/// The exported model `name` compiled at `precision`: every output within `bound` (a
/// fraction) of its largest f32 value in onnxruntime's f32 outputs, and not all of them
/// within 1e-6 of it (the reduced precision took effect).
fn check_precision(name: &str, precision: kiln::Precision, bound: f64) {
    use kiln_ir::Tensor;
    let case = kiln_tests::load_exported(name).unwrap_or_else(|e| panic!("{name}: loading: {e}"));
    let opts = kiln::CompileOptions { precision, ..Default::default() };
    let got = kiln_tests::run_lib_on(&case, opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut exact = true;
    let p = precision.name();
    for (i, ((_, _, bytes), want)) in got.iter().zip(&case.expected).enumerate() {
        let g = Tensor::from_bytes(want.ty.clone(), bytes.clone().into()).expect("same type");
        let w = want.to_f64_vec();
        let scale = w.iter().fold(0f64, |m, x| m.max(x.abs()));
        let worst = g.to_f64_vec().iter().zip(&w).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "{name} {p}: output {i}: max abs err {worst:.3e} of largest {scale:.3e} ({:.3}%)",
            100.0 * worst / scale
        );
        assert!(worst <= bound * scale, "{name} {p}: output {i}: {worst} off, over {}% of {scale}", 100.0 * bound);
        exact &= worst <= 1e-6 * scale;
    }
    assert!(!exact, "{name}: {p} outputs equal f32's: the precision took no effect");
}

/// A module `$m` of tests, one per exported model `$name`, of [`check_precision`] at
/// `$precision` within `$bound`.
macro_rules! precision_tests {
    ($m:ident, $precision:expr, $bound:expr, [$($name:ident),* $(,)?]) => {
        mod $m {
            $(
                #[test]
                fn $name() {
                    super::check_precision(stringify!($name), $precision, $bound);
                }
            )*
        }
    };
}

// `--precision bf16`: within 1% of the largest f32 output.
precision_tests!(bf16, kiln::Precision::Bf16, 0.01, [resnet50_torch, mobilenetv2_torch, bert_torch, gpt2_torch]);

// `--precision int8` (the transformers' linear layers quantized dynamically): within 3% of
// the largest f32 output.
precision_tests!(int8, kiln::Precision::Int8, 0.03, [bert_torch, gpt2_torch]);

/// Every committed model folder has a test above (and the other way round).
#[test]
fn every_committed_model_has_a_test() {
    let mut dirs: Vec<String> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
        .expect("tests/models readable")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("model.onnx").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    macro_rules! names {
        ($($name:ident),* $(,)?) => { vec![$(stringify!($name)),*] };
    }
    let mut listed: Vec<&str> = kiln_tests::with_exported_models!(names!());
    listed.sort();
    assert_eq!(dirs, listed);
}

/// A model whose batch dim was exported as dynamic does not compile unpinned.
#[test]
fn dynamic_batch_needs_pinning() {
    let case = load("resnet50_torch").unwrap();
    let err = kiln::Compiler::new(kiln::CompileOptions::default()).compile_path(&case.model).err();
    assert!(err.is_some(), "resnet50_torch compiled with its batch dim unpinned");
}

/// The models exported with a dynamic batch, compiled once with `--dim batch=1..8` (other
/// symbolic dims pinned to their inputs'): each matches onnxruntime at its inputs' own batch,
/// and at twice it (its inputs repeated; the outputs then repeat too, each sample being
/// computed alone). A model that moves the batch to an inner axis (a time-major LSTM) is
/// refused at compile time, naming the node and the dim.
mod run_time_batch {
    use kiln_ir::Tensor;

    /// A model, its batch symbol and the symbols pinned to its inputs' sizes.
    type Batched = (&'static str, &'static str, &'static [(&'static str, usize)]);

    const MODELS: &[Batched] = &[
        ("bert_torch", "batch", &[]),
        ("bert_torch_legacy", "batch", &[("seq", 16)]),
        ("convattn_spox", "N", &[]),
        ("gpt2_torch_legacy", "batch", &[("seq", 28)]),
        ("resnet50_torch", "batch", &[]),
        ("yolo_torch_legacy", "batch", &[]),
    ];

    /// `t` repeated `times` along its leading axis.
    fn repeat(t: &Tensor, times: usize) -> Tensor {
        let mut shape = t.shape().to_vec();
        shape[0] *= times;
        Tensor::from_bytes(kiln_ir::TensorType::new(t.dtype(), shape), t.data.repeat(times).into()).unwrap()
    }

    #[test]
    fn exported_models_run_every_batch_from_one_artifact() {
        for &(name, sym, pinned) in MODELS {
            let case = kiln_tests::load_exported(name).unwrap();
            let mut opts = kiln::CompileOptions::default();
            opts.dims.insert(sym.into(), (1, 8));
            for &(p, n) in pinned {
                opts.dims.insert(p.into(), (n, n));
            }
            let art = kiln::Compiler::new(opts).compile_path(&case.model).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(art.manifest.symbols.len(), 1, "{name}: one run-time dim");
            let s = kiln::Session::from_bytes(&art.bytes(), &Default::default()).unwrap();
            for times in [1, 2] {
                let ins: Vec<Tensor> = case.inputs.iter().map(|(_, t, _)| repeat(t, times)).collect();
                let refs: Vec<kiln::TensorRef> = ins
                    .iter()
                    .map(|t| kiln::TensorRef { dtype: t.dtype().code(), shape: t.shape(), data: &t.data })
                    .collect();
                let got: Vec<kiln_tests::Out> = s
                    .run(&refs)
                    .unwrap_or_else(|e| panic!("{name} x{times}: {e}"))
                    .into_iter()
                    .map(|t| (t.dtype, t.shape, t.data))
                    .collect();
                let want: Vec<Tensor> = case.expected.iter().map(|t| repeat(t, times)).collect();
                kiln_tests::compare(&got, &want, case.rtol, case.atol)
                    .unwrap_or_else(|e| panic!("{name} x{times}: {e}"));
            }
        }
    }

    /// A time-major LSTM (the batch an inner axis of its recurrence, whose state slices
    /// follow the batch's size) is refused with one line naming the node and the dim.
    #[test]
    fn a_time_major_lstm_with_a_run_time_batch_is_refused() {
        let case = kiln_tests::load_exported("lstm_speech_torch").unwrap();
        let mut opts = kiln::CompileOptions::default();
        opts.dims.insert("batch".into(), (1, 8));
        let e = match kiln::Compiler::new(opts).compile_path(&case.model) {
            Ok(_) => panic!("a time-major LSTM compiled with a run-time batch"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("`batch`") && e.contains("LSTM") && e.lines().count() == 1, "{e}");
    }
}
