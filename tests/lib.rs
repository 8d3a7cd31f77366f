//! Shared helpers of Kiln's integration suites: locating the generated test data, loading
//! an ONNX test case (model + `test_data_set_0`), running it through the library or the
//! `kiln` binary, and comparing with ONNX's tolerance rule.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::{CompileOptions, Compiler, OnnxValue, Session, SessionOptions, TensorRef, ValueKind, ValueSpec};
use kiln_ir::{Data, Tensor};

/// The ops issue #2 covers: a node test is in scope when its graph uses only these.
pub const SCOPE_OPS: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Sum",
    "Max",
    "Min",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Log",
    "Neg",
    "Abs",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "Tanh",
    "Erf",
    "Clip",
    "MatMul",
    "Gemm",
    "Conv",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "BatchNormalization",
    "LRN",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "Flatten",
    "Reshape",
    "Transpose",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "Squeeze",
    "Unsqueeze",
    "Expand",
    "Shape",
    "ConstantOfShape",
    "Constant",
    "Cast",
    "Equal",
    "Where",
    "Identity",
    "Dropout",
];
/// The tensor dtypes (ONNX names) issue #2 covers.
pub const SCOPE_DTYPES: &[&str] = &["FLOAT", "INT64", "INT32", "BOOL"];

/// The cases a conformance list names (`conformance/*.txt`): the first tab-separated field
/// of each line, comments and blank lines skipped.
pub fn listed_cases(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split('\t').next().unwrap_or("").trim())
}

/// `manifest.txt`'s cases (every input fed at run time) and `frozen.txt`'s (inputs compiled
/// in): every node test Kiln passes.
pub fn passing_cases() -> std::collections::HashSet<&'static str> {
    listed_cases(include_str!("conformance/manifest.txt"))
        .chain(listed_cases(include_str!("conformance/frozen.txt")))
        .collect()
}

/// Whether node test `name`'s model has a graph input that is not an initializer: a case
/// without one has constant outputs, and is counted apart from those whose inputs are fed at
/// run time (`conformance/no_inputs.txt`).
pub fn has_runtime_inputs(name: &str) -> bool {
    let path = data_root().join("node").join(name).join("model.onnx");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let m = kiln_onnx::decode_model(bytes.into()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let g = m.graph.unwrap_or_default();
    let inits: std::collections::HashSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    g.input.iter().any(|i| !i.name().is_empty() && !inits.contains(i.name()))
}

/// Root of the generated test data (see `scripts/gen_testdata.py`).
pub fn data_root() -> PathBuf {
    let root = std::env::var_os("KILN_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kiln-testdata/onnx-1.23.2"));
    assert!(
        root.join("index.json").exists(),
        "test data missing at {}: run `bash scripts/setup.sh && .venv/bin/python scripts/gen_testdata.py` (scripts/test.sh does both)",
        root.display()
    );
    root
}

/// The parsed `index.json`.
pub fn index() -> serde_json::Value {
    let p = data_root().join("index.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("index.json readable")).expect("index.json is JSON")
}

/// One test case: a model, its inputs and expected outputs.
pub struct Case {
    pub name: String,
    pub model: PathBuf,
    /// The inputs as the compiled model takes them (a sequence input flattened into its
    /// elements `<name>[i]`), each with the file it comes from.
    pub inputs: Vec<(String, Tensor, PathBuf)>,
    /// The sequence and optional inputs: name, what they hold, file.
    pub value_inputs: Vec<(String, ValueSpec, PathBuf)>,
    /// The expected outputs as the compiled model gives them (sequences flattened).
    pub expected: Vec<Tensor>,
    pub rtol: f64,
    pub atol: f64,
}

/// Reads a `TensorProto`, `SequenceProto` or `OptionalProto` file, as `kind` says.
fn read_pb(p: &Path, kind: ValueKind) -> Result<OnnxValue, String> {
    // Name the file by its last components only, so messages do not depend on the checkout.
    let short: PathBuf = p.components().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect();
    let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", short.display()))?;
    kiln::decode_value(&bytes, kind).map_err(|e| format!("{}: {e}", short.display()))
}

/// Loads `<dir>/model.onnx` and `<dir>/test_data_set_0/{input,output}_<i>.pb`.
pub fn load_case(dir: &Path, rtol: f64, atol: f64) -> Result<Case, String> {
    let model = dir.join("model.onnx");
    let bytes = std::fs::read(&model).map_err(|e| format!("{}: {e}", model.display()))?;
    let m = kiln_onnx::decode_model(bytes.into()).map_err(|e| e.to_string())?;
    let graph = m.graph.ok_or("model has no graph")?;
    let inits: std::collections::HashSet<String> = graph.initializer.iter().filter_map(|t| t.name.clone()).collect();
    let names: Vec<(String, ValueKind)> = graph
        .input
        .iter()
        .filter(|i| !i.name().is_empty() && !inits.contains(i.name()))
        .map(|i| (i.name().to_string(), ValueKind::of(i.r#type.as_ref())))
        .collect();
    let data = dir.join("test_data_set_0");
    let mut inputs = Vec::new();
    let mut value_inputs = Vec::new();
    for (i, (n, kind)) in names.iter().enumerate() {
        let p = data.join(format!("input_{i}.pb"));
        let v = read_pb(&p, *kind)?;
        if *kind != ValueKind::Tensor {
            value_inputs.push((n.clone(), v.spec(), p.clone()));
        }
        inputs.extend(v.flatten(n).into_iter().map(|(n, t)| (n, t, p.clone())));
    }
    let mut expected = Vec::new();
    for i in 0.. {
        let p = data.join(format!("output_{i}.pb"));
        if !p.exists() {
            break;
        }
        let kind = ValueKind::of(graph.output.get(i).and_then(|o| o.r#type.as_ref()));
        expected.extend(read_pb(&p, kind)?.flatten("").into_iter().map(|(_, t)| t));
    }
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    Ok(Case { name, model, inputs, value_inputs, expected, rtol, atol })
}

/// A node test by name, with its tolerance from the index.
pub fn node_case(name: &str, index: &serde_json::Value) -> Result<Case, String> {
    let entry = index["node"].as_array().unwrap().iter().find(|e| e["name"] == name).ok_or("not in index.json")?;
    load_case(
        &data_root().join("node").join(name),
        entry["rtol"].as_f64().unwrap_or(1e-3),
        entry["atol"].as_f64().unwrap_or(1e-7),
    )
}

impl Case {
    /// Whether compiled-model input `name` is (part of) a sequence or optional input.
    fn is_value_input_part(&self, name: &str) -> bool {
        self.value_inputs
            .iter()
            .any(|(n, _, _)| name == n || name.strip_prefix(n.as_str()).is_some_and(|r| r.starts_with('[')))
    }
}

/// Every exporter, light and generated test model, by name (`exported/NAME`, `light/NAME`,
/// `models/NAME`), sorted: the models the identity and text round-trip checks cover.
pub fn every_test_model() -> Vec<(String, Case)> {
    let mut cases: Vec<(String, Case)> = Vec::new();
    for dir in std::fs::read_dir(model_dir("")).expect("tests/models").flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        cases.push((format!("exported/{name}"), load_exported(&name).expect("exported model")));
    }
    for suite in ["light", "models"] {
        for dir in std::fs::read_dir(data_root().join(suite)).expect("generated test data").flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            let (rtol, atol) = tolerance(&dir.path());
            cases.push((format!("{suite}/{name}"), load_case(&dir.path(), rtol, atol).expect("case")));
        }
    }
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}

/// The options a case compiles with: its inputs' shapes pinned, the HIR verified after each pass.
/// The bound the conformance cases are compiled with for sizes that come from data with no
/// bound of their own (`--max-elements`): one value for every case, never a case's own.
pub const CONFORMANCE_MAX_ELEMENTS: usize = 1 << 16;

pub fn compile_options(case: &Case) -> CompileOptions {
    let mut o = CompileOptions { verify: true, max_elements: Some(CONFORMANCE_MAX_ELEMENTS), ..Default::default() };
    for (n, t, _) in &case.inputs {
        if !case.is_value_input_part(n) {
            o.input_shapes.insert(n.clone(), t.shape().to_vec());
        }
    }
    for (n, spec, _) in &case.value_inputs {
        o.value_inputs.insert(n.clone(), spec.clone());
    }
    o
}

/// Output as (dtype code, shape, bytes).
pub type Out = (kiln::DTypeCode, Vec<usize>, Vec<u8>);

/// The parsed `index.json`, read once per test binary.
pub fn cached_index() -> &'static serde_json::Value {
    static I: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    I.get_or_init(index)
}

/// Runs node test `name` with `runner` (the library or the CLI: [`run_lib`], [`run_cli`],
/// which compile without the test's input values and feed every input at run time) and
/// compares with ONNX's expected outputs; panics with the reason on failure.
pub fn check_node(name: &str, runner: Runner) {
    let case = node_case(name, cached_index()).unwrap_or_else(|e| panic!("{name}: loading: {e}"));
    let got = runner(&case).unwrap_or_else(|e| panic!("{name} (every input fed at run time): {e}"));
    compare(&got, &case.expected, case.rtol, case.atol)
        .unwrap_or_else(|e| panic!("{name} (every input fed at run time): {e}"));
}

/// A case of `frozen.txt`, which passes only with inputs compiled in: it must still fail with
/// every input fed at run time through `runner` (else it belongs in `manifest.txt`, counted
/// in the headline), and pass through `frozen` (inputs that must be static compiled in).
pub fn check_node_frozen(name: &str, runner: Runner, frozen: Runner) {
    let case = node_case(name, cached_index()).unwrap_or_else(|e| panic!("{name}: loading: {e}"));
    if runner(&case).and_then(|got| compare(&got, &case.expected, case.rtol, case.atol)).is_ok() {
        panic!(
            "{name} now passes with every input fed at run time: move it from frozen.txt to manifest.txt \
             (cargo run --release -p kiln-tests --bin conformance-sweep)"
        );
    }
    let got = frozen(&case).unwrap_or_else(|e| panic!("{name} (inputs compiled in): {e}"));
    compare(&got, &case.expected, case.rtol, case.atol).unwrap_or_else(|e| panic!("{name} (inputs compiled in): {e}"));
}

/// Runs a case and gives its outputs, or why it could not.
pub type Runner = fn(&Case) -> Result<Vec<Out>, String>;

/// Compiles a case through the library API without any input's value, and runs it with
/// every input fed at run time (the count comparable with onnxruntime's). A model that needs
/// an input's value at compile time fails here.
pub fn run_lib(case: &Case) -> Result<Vec<Out>, String> {
    run_lib_on(case, CompileOptions::default())
}

/// [`run_lib`] with `base`'s target, devices (`--target`) and precision.
pub fn run_lib_on(case: &Case, base: CompileOptions) -> Result<Vec<Out>, String> {
    run_lib_with(case, base, false)
}

/// Compiles and runs a case through the library API, with the inputs that must be static
/// (shape-like operands given as graph inputs) frozen to the case's values, as `kiln run`
/// on an `.onnx` model does: the "frozen" count, reported apart.
pub fn run_lib_frozen(case: &Case) -> Result<Vec<Out>, String> {
    run_lib_with(case, CompileOptions::default(), true)
}

/// Compiles a case, freezing (with `freeze`) the inputs the compiler asks for as constants
/// (from the case's values, as `--freeze-input` would) until it compiles: the artifact and
/// the options it was compiled with.
fn compile_case(case: &Case, base: CompileOptions, freeze: bool) -> Result<(kiln::Artifact, CompileOptions), String> {
    let mut opts = compile_options(case);
    opts.target = base.target;
    opts.devices = base.devices;
    opts.precision = base.precision;
    if freeze {
        // No bound on sizes from data, whose inputs are compiled in instead.
        opts.max_elements = None;
    }
    loop {
        match Compiler::new(opts.clone()).compile_path(&case.model) {
            Ok(a) => return Ok((a, opts)),
            Err(e) if freeze => {
                let need: Vec<String> =
                    e.inputs_to_freeze().iter().filter(|n| !opts.frozen_inputs.contains_key(*n)).cloned().collect();
                let values: Option<Vec<(String, Tensor)>> = need
                    .iter()
                    .map(|n| case.inputs.iter().find(|(m, _, _)| m == n).map(|(m, t, _)| (m.clone(), t.clone())))
                    .collect();
                match values {
                    Some(v) if !v.is_empty() => opts.frozen_inputs.extend(v),
                    _ => return Err(error_chain(&e)),
                }
            }
            Err(e) => return Err(error_chain(&e)),
        }
    }
}

fn run_lib_with(case: &Case, base: CompileOptions, freeze: bool) -> Result<Vec<Out>, String> {
    let (art, opts) = compile_case(case, base, freeze)?;
    let s = Session::from_bytes(&art.bytes(), &SessionOptions::default()).map_err(|e| e.to_string())?;
    let refs: Vec<TensorRef> = case
        .inputs
        .iter()
        .filter(|(n, _, _)| !opts.frozen_inputs.contains_key(n))
        .map(|(_, t, _)| TensorRef { dtype: t.dtype().code(), shape: t.shape(), data: &t.data })
        .collect();
    if refs.len() != s.inputs().len() {
        return Err(format!("the artifact takes {} inputs, the case has {}", s.inputs().len(), refs.len()));
    }
    let outs = s.run(&refs).map_err(|e| e.to_string())?;
    Ok(outs.into_iter().map(|t| (t.dtype, t.shape, t.data)).collect())
}

/// The `kiln` binary built next to this test (`cargo build -p kiln-cli` first), or `$KILN_BIN`.
pub fn kiln_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test exe path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("kiln");
    assert!(bin.exists(), "{} missing: build it with `cargo build -p kiln-cli` (same profile)", bin.display());
    bin
}

/// Runs a case through the real binary as a user would who feeds every input at run time:
/// `kiln compile` (input shapes pinned, sequence and optional inputs described by
/// `--input-value`) with no input's value, then `kiln run` on the artifact with every input
/// (a sequence's elements as `NAME[i]`), outputs as TensorProto `.pb` files.
pub fn run_cli(case: &Case) -> Result<Vec<Out>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let artifact = dir.path().join("model.kiln");
    let mut compile = Command::new(kiln_bin());
    compile.arg("compile").arg(&case.model).arg("-o").arg(&artifact);
    compile.arg("--max-elements").arg(CONFORMANCE_MAX_ELEMENTS.to_string());
    for (n, _, p) in &case.value_inputs {
        compile.arg("--input-value").arg(format!("{n}={}", p.display()));
    }
    for (n, t, _) in case.inputs.iter().filter(|(n, _, _)| !case.is_value_input_part(n)) {
        compile.arg("--input-shape").arg(format!("{n}={}", dims(t)));
    }
    let out = compile.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("kiln compile: {}", clean_failure(&out)));
    }
    let mut cmd = Command::new(kiln_bin());
    cmd.arg("run").arg(&artifact);
    for (i, (n, t, p)) in case.inputs.iter().enumerate() {
        if case.is_value_input_part(n) {
            // An element of a sequence (or an optional's tensor): its own TensorProto file.
            let f = dir.path().join(format!("element_{i}.pb"));
            std::fs::write(&f, kiln::write_tensor_proto(t, n)).map_err(|e| e.to_string())?;
            cmd.arg("--input").arg(format!("{n}={}", f.display()));
        } else {
            cmd.arg("--input").arg(format!("{n}={}", p.display()));
        }
    }
    cli_outputs(cmd, &dir.path().join("out"))
}

/// Runs a case through `kiln run` on the `.onnx` model with `--freeze-input` for each input
/// the compiler needs as a constant, with the case's value (the "frozen" count).
pub fn run_cli_frozen(case: &Case) -> Result<Vec<Out>, String> {
    // The inputs to freeze: those the compiler asks for (`kiln run` freezes none by itself).
    let (_, opts) = compile_case(case, CompileOptions::default(), true)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(kiln_bin());
    cmd.arg("run").arg(&case.model);
    for (n, _, p) in &case.value_inputs {
        cmd.arg("--input").arg(format!("{n}={}", p.display()));
    }
    for (n, t, p) in case.inputs.iter().filter(|(n, _, _)| !case.is_value_input_part(n)) {
        cmd.arg("--input-shape").arg(format!("{n}={}", dims(t)));
        if opts.frozen_inputs.contains_key(n) {
            cmd.arg("--freeze-input").arg(format!("{n}={}", p.display()));
        }
        cmd.arg("--input").arg(format!("{n}={}", p.display()));
    }
    cli_outputs(cmd, &dir.path().join("out"))
}

/// The error line of a `kiln` command that failed as it should (status 1); a panic (101), a
/// signal or any other status fails the calling test at once, even where a failure was
/// expected.
fn clean_failure(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(1), "kiln did not fail cleanly ({}): {stderr}", out.status);
    stderr
}

fn dims(t: &Tensor) -> String {
    t.shape().iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

/// Runs `kiln run` writing TensorProto outputs into `dir`, and reads back `outputs.json` and
/// the `.pb` files, each with its exact element type.
fn cli_outputs(mut cmd: Command, dir: &Path) -> Result<Vec<Out>, String> {
    cmd.arg("--output-dir").arg(dir).args(["--output-format", "pb"]);
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("kiln run: {}", clean_failure(&out)));
    }
    let listing: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("outputs.json")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    listing["outputs"]
        .as_array()
        .ok_or("outputs.json has no outputs list")?
        .iter()
        .map(|o| {
            let file = o["file"].as_str().unwrap_or_default();
            let bytes = std::fs::read(dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
            let t = kiln::read_tensor_proto(&bytes).map_err(|e| format!("{file}: {e}"))?;
            Ok((t.dtype().code(), t.shape().to_vec(), t.data.to_vec()))
        })
        .collect()
}

/// Reads a `.npy` file (messages name it relative to `tests/`).
fn read_npy(p: &Path) -> Result<Tensor, String> {
    let short = p.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(p).display().to_string();
    let bytes = std::fs::read(p).map_err(|e| format!("{short}: {e}"))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| format!("{short}: {e}"))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let ts = match npy.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        d => return Err(format!("{short}: unexpected dtype {d:?}")),
    };
    macro_rules! read {
        ($v:ident) => {
            Data::$v(npy.into_vec().map_err(|e| format!("{short}: {e}"))?)
        };
    }
    let data = match ts.trim_start_matches(['<', '|']) {
        "f4" => read!(F32),
        "f8" => read!(F64),
        "f2" => read!(F16),
        "i1" => read!(I8),
        "u1" => read!(U8),
        "i2" => read!(I16),
        "u2" => read!(U16),
        "i4" => read!(I32),
        "u4" => read!(U32),
        "i8" => read!(I64),
        "u8" => read!(U64),
        "b1" => read!(Bool),
        other => return Err(format!("{short}: unexpected npy dtype {other}")),
    };
    Ok(Tensor::from_data(shape, data))
}

/// ONNX's rule: same count, dtype and shape; floats as numpy's `isclose(got, want, rtol,
/// atol, equal_nan=True)` (|got − want| ≤ atol + rtol·|want|, NaN equals NaN, an infinity
/// only equals itself), bfloat16 with rtol at least 2⁻⁶; integers and booleans exactly.
pub fn compare(got: &[Out], want: &[Tensor], rtol: f64, atol: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} outputs, expected {}", got.len(), want.len()));
    }
    for (i, ((dt, shape, bytes), w)) in got.iter().zip(want).enumerate() {
        if *dt != w.dtype().code() {
            return Err(format!("output {i}: dtype {}, expected {}", dt.name(), w.dtype()));
        }
        if shape[..] != *w.shape() {
            return Err(format!("output {i}: shape {shape:?}, expected {:?}", w.shape()));
        }
        let g = Tensor::from_bytes(w.ty.clone(), bytes.clone().into()).map_err(|e| format!("output {i}: {e}"))?;
        let (gv, wv) = (g.to_f64_vec(), w.to_f64_vec());
        let float = w.dtype().is_float();
        let rtol = if w.dtype() == kiln_ir::DType::BF16 { rtol.max(1.0 / 64.0) } else { rtol };
        let mut worst: Option<(usize, f64, f64)> = None;
        let mut bad = 0usize;
        for (k, (&a, &b)) in gv.iter().zip(&wv).enumerate() {
            let ok = if float { isclose(a, b, rtol, atol) } else { a == b };
            if !ok {
                bad += 1;
                // How far apart two elements are; a NaN against a number is as far as can be.
                let gap = |x: f64, y: f64| {
                    if x == y || (x.is_nan() && y.is_nan()) {
                        0.0
                    } else {
                        let d = (x - y).abs();
                        if d.is_nan() {
                            f64::INFINITY
                        } else {
                            d
                        }
                    }
                };
                if worst.is_none_or(|(_, x, y)| gap(a, b) > gap(x, y)) {
                    worst = Some((k, a, b));
                }
            }
        }
        if let Some((k, a, b)) = worst {
            return Err(format!(
                "output {i}: {bad} of {} elements differ; worst at {k}: got {a}, expected {b}",
                gv.len()
            ));
        }
    }
    Ok(())
}

/// numpy's `isclose(a, b, rtol, atol, equal_nan=True)`: NaN only equals NaN, an infinity only
/// equals the same infinity, anything else is close when |a − b| ≤ atol + rtol·|b|.
pub fn isclose(a: f64, b: f64, rtol: f64, atol: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= atol + rtol * b.abs()
}

/// The error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    kiln::error_chain(e)
}

/// Whether a node test is within issue #2's scope, and why not.
pub fn out_of_scope(entry: &serde_json::Value) -> Option<String> {
    if entry["random_output"].as_bool() == Some(true) {
        return Some("expected output is random".into());
    }
    for io in entry["inputs"].as_array().into_iter().flatten().chain(entry["outputs"].as_array().into_iter().flatten())
    {
        if io["kind"] != "tensor" {
            return Some(format!("{} values are not supported", io["kind"].as_str().unwrap_or("non-tensor")));
        }
        let dt = io["dtype"].as_str().unwrap_or("?");
        if !SCOPE_DTYPES.contains(&dt) {
            return Some(format!("dtype {dt} is not supported"));
        }
    }
    let mut missing: Vec<String> = Vec::new();
    for op in entry["ops"].as_array().into_iter().flatten() {
        let (d, t) = (op["domain"].as_str().unwrap_or(""), op["op_type"].as_str().unwrap_or("?"));
        if (!d.is_empty() && d != "ai.onnx") || !SCOPE_OPS.contains(&t) {
            let n = if d.is_empty() { t.to_string() } else { format!("{d}.{t}") };
            if !missing.contains(&n) {
                missing.push(n);
            }
        }
    }
    if !missing.is_empty() {
        return Some(format!("op {} outside issue #2's op set", missing.join(", ")));
    }
    None
}

/// Per-test tolerances of the model suites (`tolerance.json`, or ONNX's defaults).
pub fn tolerance(dir: &Path) -> (f64, f64) {
    let t: HashMap<String, f64> = std::fs::read_to_string(dir.join("tolerance.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    (t.get("rtol").copied().unwrap_or(1e-3), t.get("atol").copied().unwrap_or(1e-7))
}

/// Tolerance of the exported models against onnxruntime.
pub const EXPORTED_RTOL: f64 = 1e-3;
pub const EXPORTED_ATOL: f64 = 1e-4;

/// `tests/models/<name>`.
pub fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name)
}

/// Invokes `$mac!($($lead)* name, …)` with every exported model in `tests/models/`: the one
/// list that the exporter, PTX and folder-completeness tests share.
#[macro_export]
macro_rules! with_exported_models {
    ($mac:ident ! ($($lead:tt)*)) => {
        $mac! {
            $($lead)*
            resnet50_torch,
            mobilenetv2_torch,
            bert_torch,
            gpt2_torch,
            yolo_torch,
            lstm_speech_torch,
            bert_torch_legacy,
            gpt2_torch_legacy,
            lstm_speech_torch_legacy,
            yolo_torch_legacy,
            convattn_spox,
            gru_tagger_spox,
            lstm_speech_onnxscript,
        }
    };
}

/// A model committed under `tests/models/<name>/` (see `exporters.rs`): its inputs and
/// onnxruntime's outputs in `meta.json`'s order.
pub fn load_exported(name: &str) -> Result<Case, String> {
    let dir = model_dir(name);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).map_err(|e| format!("meta.json: {e}"))?)
            .map_err(|e| format!("meta.json: {e}"))?;
    let mut inputs = Vec::new();
    for i in meta["inputs"].as_array().ok_or("meta.json: no inputs")? {
        let p = dir.join(i["file"].as_str().ok_or("meta.json: input without file")?);
        let n = i["name"].as_str().ok_or("meta.json: input without name")?.to_string();
        inputs.push((n, read_npy(&p)?, p));
    }
    let mut expected = Vec::new();
    for o in meta["outputs"].as_array().ok_or("meta.json: no outputs")? {
        expected.push(read_npy(&dir.join(o["file"].as_str().ok_or("meta.json: output without file")?))?);
    }
    Ok(Case {
        name: name.to_string(),
        model: dir.join("model.onnx"),
        inputs,
        value_inputs: Vec::new(),
        expected,
        rtol: EXPORTED_RTOL,
        atol: EXPORTED_ATOL,
    })
}

/// A model of `tests/dynamic_models/<name>/` (shapes decided at run time, written by
/// `scripts/export_models.py`): the model and, per input set, its inputs (name and value)
/// and onnxruntime's outputs.
pub struct DynamicModel {
    pub model: PathBuf,
    pub sets: Vec<InputSet>,
    /// The run-time dims it is compiled with (`"dims": {"batch": [1, 8]}` in its meta).
    pub dims: std::collections::BTreeMap<String, (usize, usize)>,
}

/// One input set of a [`DynamicModel`]: its inputs (name, value) and onnxruntime's outputs.
pub type InputSet = (Vec<(String, Tensor)>, Vec<Tensor>);

pub fn load_dynamic(name: &str) -> Result<DynamicModel, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dynamic_models").join(name);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).map_err(|e| format!("meta.json: {e}"))?)
            .map_err(|e| format!("meta.json: {e}"))?;
    let mut sets = Vec::new();
    for set in meta["sets"].as_array().ok_or("meta.json: no sets")? {
        let file = |v: &serde_json::Value| -> Result<Tensor, String> {
            read_npy(&dir.join(v["file"].as_str().ok_or("meta.json: a tensor without file")?))
        };
        let mut inputs = Vec::new();
        for i in set["inputs"].as_array().ok_or("meta.json: a set without inputs")? {
            inputs.push((i["name"].as_str().ok_or("meta.json: an input without name")?.to_string(), file(i)?));
        }
        let outputs = set["outputs"].as_array().ok_or("meta.json: a set without outputs")?.iter().map(file);
        sets.push((inputs, outputs.collect::<Result<_, _>>()?));
    }
    let mut dims = std::collections::BTreeMap::new();
    for (name, b) in meta["dims"].as_object().into_iter().flatten() {
        let bound = |i: usize| b[i].as_u64().map(|v| v as usize).ok_or("meta.json: a dim without bounds");
        dims.insert(name.clone(), (bound(0)?, bound(1)?));
    }
    Ok(DynamicModel { model: dir.join("model.onnx"), sets, dims })
}

/// NVIDIA's PTX assembler: `$KILN_PTXAS`, or the one the PyPI package `nvidia-cuda-nvcc-cu12`
/// puts in the repository's venv (`scripts/setup.sh` installs it).
pub fn ptxas() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_PTXAS") {
        return PathBuf::from(p);
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|dirs| {
        dirs.filter_map(|d| d.ok())
            .map(|d| d.path().join("site-packages/nvidia/cuda_nvcc/bin/ptxas"))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!("ptxas not found under {}: run `bash scripts/setup.sh` (or set KILN_PTXAS)", lib.display())
    })
}

/// Assembles PTX text with `ptxas` for `arch` (`sm_80`, `sm_90`): Ok, or ptxas's messages.
pub fn assemble_ptx(ptx: &str, arch: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let src = dir.path().join("module.ptx");
    std::fs::write(&src, ptx).map_err(|e| e.to_string())?;
    let out = Command::new(ptxas())
        .arg(format!("-arch={arch}"))
        .arg(&src)
        .arg("-o")
        .arg(dir.path().join("module.cubin"))
        .output()
        .map_err(|e| format!("running ptxas: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ptxas -arch={arch}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(t: &Tensor) -> Out {
        (t.dtype().code(), t.shape().to_vec(), t.data.to_vec())
    }

    #[test]
    fn infinities_and_nans_compare_as_numpy_isclose_does() {
        let inf = f64::INFINITY;
        assert!(isclose(inf, inf, 1e-3, 1e-7));
        assert!(!isclose(1e30, inf, 1e-3, 1e-7), "a finite value is not close to +inf");
        assert!(!isclose(-inf, inf, 1e-3, 1e-7), "-inf is not close to +inf");
        assert!(!isclose(inf, 1.0, 1e-3, 1e-7));
        assert!(isclose(f64::NAN, f64::NAN, 1e-3, 1e-7), "equal_nan");
        assert!(!isclose(f64::NAN, 1.0, 1e-3, 1e-7) && !isclose(1.0, f64::NAN, 1e-3, 1e-7));
        // |1.0005 - 1| = 5e-4 <= 1e-7 + 1e-3 * 1; |1.002 - 1| is not.
        assert!(isclose(1.0005, 1.0, 1e-3, 1e-7) && !isclose(1.002, 1.0, 1e-3, 1e-7));
        let want = Tensor::from_data(vec![2], Data::F32(vec![f32::INFINITY, 1.0]));
        let got = Tensor::from_data(vec![2], Data::F32(vec![f32::MAX, 1.0]));
        assert!(compare(&[out(&got)], std::slice::from_ref(&want), 1e-3, 1e-7).is_err());
        assert!(compare(&[out(&want)], std::slice::from_ref(&want), 1e-3, 1e-7).is_ok());
    }

    #[test]
    fn integers_compare_exactly_and_dtypes_must_match() {
        let want = Tensor::from_data(vec![1], Data::I64(vec![100_000]));
        let near = Tensor::from_data(vec![1], Data::I64(vec![100_001]));
        // Within rtol 1e-3 of 100000, but integers are exact.
        assert!(compare(&[out(&near)], std::slice::from_ref(&want), 1e-3, 1e-7).is_err());
        let as_i32 = Tensor::from_data(vec![1], Data::I32(vec![100_000]));
        let e = compare(&[out(&as_i32)], std::slice::from_ref(&want), 1e-3, 1e-7).unwrap_err();
        assert!(e.contains("dtype"), "{e}");
    }
}
