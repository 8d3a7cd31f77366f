//! The `kiln` command-line contract that other tools and scripts drive: file names and
//! `outputs.json` of `kiln run`, the last lines of `inspect --memory` and `bench`, `--emit`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kiln(args: &[&str]) -> Output {
    let out = Command::new(kiln_tests::kiln_bin()).args(args).current_dir(repo()).output().expect("run kiln");
    assert!(out.status.success(), "kiln {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The value of `key=` on the last line of `text`.
fn last_line_value(text: &str, key: &str) -> f64 {
    let last = text.lines().last().unwrap_or_default();
    let v = last.strip_prefix(&format!("{key}=")).unwrap_or_else(|| panic!("last line is not {key}=…: {text}"));
    v.parse().unwrap_or_else(|e| panic!("{v}: {e}"))
}

#[test]
fn run_writes_sanitized_npy_files_and_outputs_json() {
    let d = tempfile::tempdir().unwrap();
    let x = d.path().join("x.npy");
    {
        use npyz::WriterBuilder;
        let f = std::io::BufWriter::new(std::fs::File::create(&x).unwrap());
        let mut w = npyz::WriteOptions::<f32>::new().default_dtype().shape(&[2, 3]).writer(f).begin_nd().unwrap();
        w.extend([1.0f32, -2.0, 0.5, 0.0, 3.0, -1.0]).unwrap();
        w.finish().unwrap();
    }
    let out = d.path().join("out");
    kiln(&[
        "run",
        "tests/fixtures/odd_names.onnx",
        "--input",
        &format!("in put={}", x.display()),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    let listing: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("outputs.json")).unwrap()).unwrap();
    let outs = listing["outputs"].as_array().unwrap();
    assert_eq!(outs.len(), 2);
    assert_eq!(outs[0]["name"], "probs/out:0");
    assert_eq!(outs[0]["file"], "probs_out_0.npy");
    assert_eq!(outs[0]["dtype"], "f32");
    assert_eq!(outs[0]["shape"], serde_json::json!([2, 3]));
    assert_eq!(outs[1]["name"], "mask out");
    assert_eq!(outs[1]["file"], "mask_out.npy");
    assert_eq!(outs[1]["dtype"], "bool");
    let mask: Vec<bool> =
        npyz::NpyFile::new(&std::fs::read(out.join("mask_out.npy")).unwrap()[..]).unwrap().into_vec().unwrap();
    assert_eq!(mask, [true, false, true, false, true, false]);
    let probs: Vec<f32> =
        npyz::NpyFile::new(&std::fs::read(out.join("probs_out_0.npy")).unwrap()[..]).unwrap().into_vec().unwrap();
    // Row 0: softmax of [1, -2, 0.5] worked out by hand: e^x / Σ e^x.
    let e = [1f32.exp(), (-2f32).exp(), 0.5f32.exp()];
    let sum: f32 = e.iter().sum();
    for (p, q) in probs[..3].iter().zip(e.iter().map(|v| v / sum)) {
        assert!((p - q).abs() < 1e-6, "{probs:?}");
    }
}

#[test]
fn compile_then_run_the_artifact() {
    let d = tempfile::tempdir().unwrap();
    let art = d.path().join("mlp.kiln");
    kiln(&["compile", "examples/mlp/model.onnx", "-o", art.to_str().unwrap(), "--target", "cpu"]);
    let out = d.path().join("out");
    let o = kiln(&[
        "run",
        art.to_str().unwrap(),
        "--input",
        "x=examples/mlp/input.npy",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(stdout(&o).starts_with("y: f32 [1, 4] = ["), "{}", stdout(&o));
    assert!(out.join("y.npy").exists() && out.join("outputs.json").exists());
}

#[test]
fn inspect_memory_ends_with_the_ratio() {
    let o = kiln(&["inspect", "examples/mlp/model.onnx", "--memory"]);
    let text = stdout(&o);
    assert!(text.contains("arena_bytes=") && text.contains("lower_bound_bytes="), "{text}");
    assert!(last_line_value(&text, "memory_ratio") >= 1.0);
}

#[test]
fn bench_ends_with_the_median() {
    let o = kiln(&["bench", "examples/mlp/model.onnx", "--iters", "5", "--threads", "1"]);
    let text = stdout(&o);
    assert!(text.contains("p10_ms=") && text.contains("p90_ms="), "{text}");
    assert!(last_line_value(&text, "median_ms") > 0.0);
}

/// `bench --serve`: a line of times per count read, in order, until the input ends; a line
/// that is not a count is an error naming it.
#[test]
fn bench_serves_counts_from_stdin() {
    use std::io::Write;
    use std::process::Stdio;
    let serve = |input: &str| {
        let mut child = Command::new(kiln_tests::kiln_bin())
            .args(["bench", "examples/mlp/model.onnx", "--threads", "1", "--serve"])
            .current_dir(repo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kiln");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let o = serve("3\n1\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let counts: Vec<usize> = stdout(&o)
        .lines()
        .map(|l| {
            let times = l.strip_prefix("times_ms=").unwrap_or_else(|| panic!("not a times line: {l}"));
            times.split(',').map(|t| assert!(t.parse::<f64>().unwrap() > 0.0)).count()
        })
        .collect();
    assert_eq!(counts, [3, 1]);
    let o = serve("2\nmany\n");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("`many`"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn every_emit_form_prints() {
    for (form, marker) in
        [("hir", "graph \"mlp\""), ("lir", "program \"mlp\""), ("llvm", "@kiln_entry("), ("asm", "kiln_entry:")]
    {
        let o = kiln(&["compile", "examples/mlp/model.onnx", "--emit", form]);
        assert!(stdout(&o).contains(marker), "--emit {form}: {}", stdout(&o));
    }
    let o = kiln(&["inspect", "examples/mlp/model.onnx", "--after", "import"]);
    assert!(!stdout(&o).contains("fused"), "nothing is fused right after import");
    let o = kiln(&["inspect", "examples/mlp/model.onnx", "--after", "fuse"]);
    assert!(stdout(&o).contains("fused"));
}

/// `--after` takes every step of the pipeline, LIR ones too: right after `lower` nothing is
/// placed in the arena yet; after `pack-weights` the program is the one that is compiled.
#[test]
fn inspect_stops_after_any_step_of_the_pipeline() {
    let mlp = "examples/mlp/model.onnx";
    let lowered = stdout(&kiln(&["inspect", mlp, "--after", "lower", "--emit", "lir"]));
    assert!(lowered.starts_with("program \"mlp\" arena=0 {") && !lowered.contains(" at="), "{lowered}");
    let packed = stdout(&kiln(&["inspect", mlp, "--after", "prepack", "--emit", "lir"]));
    assert!(packed.contains("panels"), "prepack packs the GEMM weights into panels: {packed}");
    let last = stdout(&kiln(&["inspect", mlp, "--after", "pack-weights", "--emit", "lir"]));
    assert_eq!(last, stdout(&kiln(&["inspect", mlp, "--emit", "lir"])));
    for (after, emit, want) in [("prepack", "hir", "stops in LIR"), ("fuse", "lir", "stops in HIR")] {
        let o = Command::new(kiln_tests::kiln_bin())
            .args(["inspect", mlp, "--after", after, "--emit", emit])
            .current_dir(repo())
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && e.contains(want), "--after {after} --emit {emit}: {e}");
    }
}

/// Issue #2: the light ResNet-50's arena is within 5% of the lower bound.
#[test]
fn resnet50_memory_ratio() {
    let model = kiln_tests::data_root().join("light/resnet50/model.onnx");
    let o = kiln(&["inspect", model.to_str().unwrap(), "--memory"]);
    let ratio = last_line_value(&stdout(&o), "memory_ratio");
    println!("{}", stdout(&o));
    assert!(ratio <= 1.05, "memory_ratio={ratio}");
}

/// A sequence input is read from a `SequenceProto` .pb (its length and element shapes are
/// compiled in); a sequence output is one .npy per element, `NAME[i]`, listed in order.
#[test]
fn run_reads_sequence_inputs_and_writes_one_npy_per_element() {
    let case = kiln_tests::data_root().join("node/test_sequence_insert_at_front");
    let data = case.join("test_data_set_0");
    let d = tempfile::tempdir().unwrap();
    let input = |name: &str, i: usize| format!("{name}={}", data.join(format!("input_{i}.pb")).display());
    kiln(&[
        "run",
        case.join("model.onnx").to_str().unwrap(),
        "--input",
        &input("sequence", 0),
        "--input",
        &input("tensor", 1),
        "--input",
        &input("position", 2),
        // An insert position decides the sequence's layout: compiled in, as the user asks.
        "--freeze-input",
        &input("position", 2),
        "--output-dir",
        d.path().to_str().unwrap(),
    ]);
    let listing: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("outputs.json")).unwrap()).unwrap();
    let outs = listing["outputs"].as_array().unwrap();
    let names: Vec<&str> = outs.iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["output_sequence[0]", "output_sequence[1]", "output_sequence[2]", "output_sequence[3]"]);
    assert_eq!(outs[0]["file"], "output_sequence_0_.npy");
    // Inserted at position 0: the first element is the tensor input.
    let tensor = kiln::read_tensor_proto(&std::fs::read(data.join("input_1.pb")).unwrap()).unwrap();
    let first: Vec<i64> = npyz::NpyFile::new(&std::fs::read(d.path().join("output_sequence_0_.npy")).unwrap()[..])
        .unwrap()
        .into_vec()
        .unwrap();
    assert_eq!(first, tensor.to_i64_vec());
}

/// Outputs numpy cannot hold (bfloat16, int4) are written as TensorProto `.pb` files with
/// their exact type; `--output-format pb` writes every output so. Compared with ONNX's
/// expected outputs, bit for bit.
#[test]
fn outputs_numpy_cannot_hold_are_written_as_tensor_protos() {
    for (case, format, ext) in [
        ("test_cast_FLOAT_to_BFLOAT16", "auto", "pb"),
        ("test_cast_FLOAT_to_INT4", "auto", "pb"),
        ("test_cast_FLOAT_to_FLOAT16", "auto", "npy"),
        ("test_cast_FLOAT_to_FLOAT16", "pb", "pb"),
    ] {
        let dir = kiln_tests::data_root().join("node").join(case);
        let data = dir.join("test_data_set_0");
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let input = kiln::read_tensor_proto(&std::fs::read(data.join("input_0.pb")).unwrap()).unwrap();
        let dims: Vec<String> = input.shape().iter().map(|d| d.to_string()).collect();
        kiln(&[
            "run",
            dir.join("model.onnx").to_str().unwrap(),
            "--input-shape",
            &format!("input={}", dims.join("x")),
            "--input",
            &format!("input={}", data.join("input_0.pb").display()),
            "--output-dir",
            out.to_str().unwrap(),
            "--output-format",
            format,
        ]);
        let listing: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("outputs.json")).unwrap()).unwrap();
        let file = listing["outputs"][0]["file"].as_str().unwrap().to_string();
        assert!(file.ends_with(&format!(".{ext}")), "{case} --output-format {format}: {file}");
        if ext == "pb" {
            let got = kiln::read_tensor_proto(&std::fs::read(out.join(&file)).unwrap()).unwrap();
            let want = kiln::read_tensor_proto(&std::fs::read(data.join("output_0.pb")).unwrap()).unwrap();
            assert_eq!(got.dtype(), want.dtype(), "{case}");
            assert_eq!(got.shape(), want.shape(), "{case}");
            assert_eq!(got.data, want.data, "{case}: values differ");
        }
    }
}

/// `inspect --precisions`: each kernel and its precision, the counts last. Under `--precision
/// bf16` the MLP's two products read bf16 weights, under `int8` they are integer products; by
/// default none is; `--precision f16` is refused in one line (not supported yet).
#[test]
fn inspect_precisions_lists_each_kernel() {
    let m = "examples/mlp/model.onnx";
    let bf16 = stdout(&kiln(&["inspect", m, "--precision", "bf16", "--precisions"]));
    assert_eq!(bf16.lines().filter(|l| l.ends_with(": bf16 weights")).count(), 2, "{bf16}");
    assert_eq!(bf16.lines().last(), Some("bf16_kernels=2 int8_kernels=0 f32_kernels=0"), "{bf16}");
    let f32 = stdout(&kiln(&["inspect", m, "--precisions"]));
    assert_eq!(f32.lines().last(), Some("bf16_kernels=0 int8_kernels=0 f32_kernels=2"), "{f32}");
    if std::is_x86_feature_detected!("avx2") {
        let int8 = stdout(&kiln(&["inspect", m, "--precision", "int8", "--precisions"]));
        assert_eq!(int8.lines().filter(|l| l.ends_with(": int8 (i32 sums)")).count(), 2, "{int8}");
    }
    let out = Command::new(kiln_tests::kiln_bin())
        .args(["inspect", m, "--precision", "f16", "--precisions"])
        .current_dir(repo())
        .output()
        .expect("run kiln");
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!((out.status.code(), e.lines().count()), (Some(1), 1), "{e}");
    assert!(e.contains("--precision f16 is not supported yet"), "{e}");
}

/// `bench --profile`: a Chrome trace (checked against `docs/chrome-trace.schema.json`, the
/// trace event format Perfetto reads) whose kernel events name the model's own nodes with
/// their op types, every matrix product among them, once per event per run, and whose
/// kernel times add up to the run's time; and the table by op type and by kernel.
#[test]
fn bench_profile_is_a_chrome_trace_of_the_models_nodes() {
    use prost::Message;
    let d = tempfile::tempdir().unwrap();
    let trace_path = d.path().join("trace.json");
    let m = "tests/models/bert_torch";
    let input = |i: usize, name: &str| format!("{name}=tests/models/bert_torch/input_{i}.npy");
    let o = kiln(&[
        "bench",
        &format!("{m}/model.onnx"),
        "--dim",
        "batch=2",
        "--input",
        &input(0, "input_ids"),
        "--input",
        &input(1, "attention_mask"),
        "--input",
        &input(2, "token_type_ids"),
        "--iters",
        "9",
        "--threads",
        "1",
        "--profile",
        trace_path.to_str().unwrap(),
    ]);
    let text = stdout(&o);
    for heading in ["op type", "kernel", "MatMul", "GFLOP/s"] {
        assert!(text.contains(heading), "no `{heading}` in the table: {text}");
    }

    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace_path).unwrap()).unwrap();
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("docs/chrome-trace.schema.json")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema is valid");
    let errors: Vec<String> = validator.iter_errors(&trace).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "the trace does not follow the schema: {errors:?}");

    let model =
        kiln_onnx::proto::ModelProto::decode(&std::fs::read(repo().join(m).join("model.onnx")).unwrap()[..]).unwrap();
    let graph = model.graph.unwrap();
    let ops: std::collections::HashMap<&str, &str> =
        graph.node.iter().map(|n| (n.name.as_deref().unwrap_or(""), n.op_type.as_deref().unwrap_or(""))).collect();
    let events = trace["traceEvents"].as_array().unwrap();
    let runs: Vec<&serde_json::Value> = events.iter().filter(|e| e["cat"] == "run").collect();
    assert_eq!(runs.len(), 9, "one run event per timed run");
    let kernels: Vec<&serde_json::Value> = events.iter().filter(|e| e["args"]["kind"].is_string()).collect();
    let mut products = std::collections::BTreeSet::new();
    for k in &kernels {
        let (nodes, kinds) = (k["args"]["nodes"].as_array().unwrap(), k["args"]["ops"].as_array().unwrap());
        assert_eq!(nodes.len(), kinds.len(), "{k}");
        for (n, op) in nodes.iter().zip(kinds) {
            let n = n.as_str().unwrap();
            assert_eq!(ops.get(n).copied(), op.as_str(), "kernel {} names node `{n}` with the wrong op", k["name"]);
            if op == "MatMul" {
                products.insert(n.to_string());
            }
        }
    }
    let all_products: std::collections::BTreeSet<String> =
        ops.iter().filter(|(_, &op)| op == "MatMul").map(|(n, _)| n.to_string()).collect();
    assert_eq!(products, all_products, "every MatMul of the model is in some kernel");

    // Per run: each event once, and the kernels' times within the run's.
    let mut shares = Vec::new();
    for r in &runs {
        let (t0, dur) = (r["ts"].as_f64().unwrap(), r["dur"].as_f64().unwrap());
        let inside: Vec<&&serde_json::Value> = kernels
            .iter()
            .filter(|k| k["ts"].as_f64().unwrap() >= t0 && k["ts"].as_f64().unwrap() <= t0 + dur)
            .collect();
        let mut ids: Vec<u64> = inside.iter().map(|k| k["args"]["event"].as_u64().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>(), "each event once a run");
        let sum: f64 = inside.iter().map(|k| k["dur"].as_f64().unwrap()).sum();
        assert!(sum <= dur * 1.0001, "kernels {sum} µs in a run of {dur} µs");
        shares.push(sum / dur);
    }
    shares.sort_by(f64::total_cmp);
    // A run of this small model is a few hundred microseconds, of which the input checks and
    // the hand-off to the pool take a few; BERT-base's kernels add up to 99.9% of its run.
    assert!(shares[shares.len() / 2] > 0.85, "the kernels take {shares:?} of their runs");
}

/// `inspect --html`: the page renders in headless Chromium (Debian's `chromium`, which
/// scripts/setup.sh installs) with no script error and no console error, its data naming the
/// model's kernels, the nodes fused into them and the arena's buffers, and the profile's
/// times when given one.
#[test]
fn inspect_html_renders_in_headless_chromium() {
    let d = tempfile::tempdir().unwrap();
    let (page, trace) = (d.path().join("page.html"), d.path().join("trace.json"));
    let model = "tests/models/resnet50_torch/model.onnx";
    let pin = ["--dim", "batch=1"];
    kiln(
        &[&["bench", model, "--iters", "2", "--threads", "1", "--profile", trace.to_str().unwrap()][..], &pin].concat(),
    );
    kiln(
        &[&["inspect", model, "--html", page.to_str().unwrap(), "--profile", trace.to_str().unwrap()][..], &pin]
            .concat(),
    );
    let html = std::fs::read_to_string(&page).unwrap();
    let marker = "<script id=\"data\" type=\"application/json\">";
    let start = html.find(marker).expect("the data block") + marker.len();
    let data: serde_json::Value = serde_json::from_str(&html[start..start + html[start..].find("</script>").unwrap()])
        .expect("the data block is JSON");
    let kernels = data["kernels"].as_array().unwrap();
    assert!(kernels.iter().any(|k| k["ops"].as_array().unwrap().iter().any(|o| o == "Conv")), "{data}");
    assert!(kernels.iter().any(|k| k["nodes"].as_array().unwrap().len() > 1), "no fused kernel");
    assert!(kernels.iter().all(|k| k["time_us"].as_f64().is_some()), "every kernel has its measured time");
    assert!(kernels.iter().any(|k| k["layout"] == "NHWC"), "channels-last marked");
    assert!(!data["buffers"].as_array().unwrap().is_empty(), "the memory plan's buffers");
    // The SVG namespace is the one URL in it: the page loads nothing from the network.
    assert!(!html.replace("http://www.w3.org/2000/svg", "").contains("http"), "a URL in the page");

    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", "--dump-dom"])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium (scripts/setup.sh installs Debian's chromium package)");
    let (dom, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "chromium failed: {log}");
    assert!(dom.contains("data-rendered=\"ok\""), "the script did not finish: {log}");
    assert!(!dom.contains("data-errors"), "script errors: {dom}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught")).collect();
    assert!(console.is_empty(), "console errors: {console:?}");
    assert!(dom.matches("<rect").count() > kernels.len(), "a box per kernel and per buffer");
}
