//! `kiln`: the command-line compiler.
//!
//! * `kiln compile MODEL.onnx -o OUT [--target cpu|TRIPLE] [--cpu CPU] [--input-shape NAME=DIMS]...
//!   [--input-value NAME=FILE.pb]... [--emit kiln|object|staticlib|header|hir|lir|llvm|asm] [--name C_NAME]`
//! * `kiln run MODEL [--input-shape NAME=DIMS]... --input NAME=FILE... --output-dir DIR`
//! * `kiln inspect MODEL [--input-shape ...] [--after PASS] [--memory] [--emit ...]
//!   [--target DEVICES --partitions [--dot FILE]]`
//! * `kiln bench MODEL [--input-shape ...] [--input NAME=FILE]... [--threads N] [--iters N]`
//!
//! Errors print one line, `error: <cause>: <cause>…`, and exit with status 1.

mod progress;
mod tensors;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use kiln::{CompileOptions, Compiler, Session, SessionOptions};

use tensors::HostTensor;

#[derive(Parser)]
#[command(name = "kiln", version, about = "Compile ONNX models to native code and run them")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone, Default)]
struct ShapeArgs {
    /// Pin an input's shape, e.g. `images=1x3x224x224` (repeatable).
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    input_shape: Vec<String>,
    /// Replace an input by the value in FILE (.npy or .pb) at compile time, e.g. an input
    /// that gives a Reshape's target shape (repeatable).
    #[arg(long = "freeze-input", value_name = "NAME=FILE")]
    freeze_input: Vec<String>,
    /// Compile a sequence or optional input for the value in FILE (an ONNX SequenceProto or
    /// OptionalProto .pb): its length and element types and shapes, or whether it is present.
    /// The compiled model takes its elements as inputs `NAME[0]`, `NAME[1]`, … (repeatable).
    #[arg(long = "input-value", value_name = "NAME=FILE")]
    input_value: Vec<String>,
    /// The most elements of an output whose size comes from data with no bound of its own
    /// (Pad's pads, Range's limits, Expand's shape, … given as inputs): compiled for at most
    /// N elements, the run failing beyond them. Without it such inputs must be known at
    /// compile time.
    #[arg(long = "max-elements", value_name = "N")]
    max_elements: Option<usize>,
    /// Let a symbolic input dim of the model (by its name in the model, e.g. `batch` or
    /// `seq`) vary at run time between LO and HI: one artifact for every size, its memory
    /// planned at HI (repeatable).
    #[arg(long = "dim", value_name = "NAME=LO..HI")]
    dim: Vec<String>,
    /// The precision of matrix products and convolutions: `f32` (default), `bf16` (their
    /// weights rounded to bf16, widened to f32 as they are loaded; the rest in f32), or `int8`
    /// (products with constant 2-D weights quantized dynamically: weights per column,
    /// activations per row, summed in i32; the rest in f32).
    #[arg(long = "precision", value_name = "f32|bf16|int8")]
    precision: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compile an ONNX model into a .kiln artifact (or print an IR with --emit).
    Compile {
        model: PathBuf,
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// `cpu` (this machine), an LLVM target triple (e.g. `aarch64-unknown-linux-gnu`), or
        /// a list of devices to split the model across, in order of preference, each with an
        /// optional memory cap: `cpu:mem=64MiB,cpu:mem=64MiB`.
        #[arg(long, default_value = "cpu")]
        target: String,
        /// The CPU to compile for (LLVM's name: `generic`, `cortex-a72`, `x86-64-v3`, …);
        /// default: this machine's for `cpu`, `generic` for a triple.
        #[arg(long)]
        cpu: Option<String>,
        #[command(flatten)]
        shapes: ShapeArgs,
        /// What to write: `kiln` (the artifact the runtime loads), `object` (a relocatable
        /// object), `staticlib` (a `.a`) or `header` (its C header); or a text form (`hir`,
        /// `lir`, `llvm`, `asm`, or `ptx`: the GPU partitions' PTX), to `-o` or printed.
        #[arg(long, default_value = "kiln", value_parser = ["kiln", "object", "staticlib", "header", "hir", "lir", "llvm", "asm", "ptx"])]
        emit: String,
        /// The C name of an object, static library or header's symbols (`<name>_run`, …);
        /// default: the model file's name.
        #[arg(long)]
        name: Option<String>,
        /// Print how long each phase took (import, optimize, lower, codegen, write).
        #[arg(long)]
        timings: bool,
        /// Put the weights in a file of their own next to the artifact (`OUT.weights`,
        /// mapped by the runtime) instead of inside it.
        #[arg(long)]
        external_weights: bool,
        /// LLVM's optimization level for the kernels (0 to 3).
        #[arg(short = 'O', long = "opt-level", default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=3))]
        opt_level: u8,
        /// Threads compiling kernels (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Run a model (.onnx, compiled in memory, or .kiln) on inputs from .npy or .pb files.
    Run {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        /// An input, `NAME=FILE` with FILE a .npy or an ONNX TensorProto .pb; a sequence or
        /// optional input of an .onnx model takes a SequenceProto / OptionalProto .pb
        /// (repeatable). A sequence output is written as one .npy per element (`NAME[i]`).
        #[arg(long = "input", value_name = "NAME=FILE")]
        inputs: Vec<String>,
        #[arg(long = "output-dir")]
        output_dir: PathBuf,
        /// How to write each output: `npy`, `pb` (an ONNX TensorProto, with the output's exact
        /// element type), or `auto`: `.npy` unless numpy has no such type (bfloat16, the
        /// float8 and float4 types, the 4- and 2-bit integers), `.pb` for those.
        #[arg(long = "output-format", default_value = "auto", value_parser = ["auto", "npy", "pb"])]
        output_format: String,
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Write a profile of the run(s) to FILE: Chrome trace events (open it in Perfetto
        /// or chrome://tracing), one per kernel run, naming the model's nodes fused into it,
        /// with its bytes moved and FLOPs.
        #[arg(long, value_name = "FILE")]
        profile: Option<PathBuf>,
    },
    /// Print the IR after a pass, or the memory plan.
    Inspect {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        /// Stop after this step of the pipeline: `import`, or any pass, HIR or LIR (an unknown
        /// name lists them); an LIR step prints with `--emit lir`, `llvm` or `asm`.
        #[arg(long)]
        after: Option<String>,
        /// Print the arena size, its lower bound and their ratio.
        #[arg(long)]
        memory: bool,
        /// The devices to split the model across, as for `kiln compile --target`.
        #[arg(long, default_value = "cpu")]
        target: String,
        /// Print how `--target` splits the model: devices, partitions, transfers, and a last
        /// line `partitions=<n>`.
        #[arg(long)]
        partitions: bool,
        /// With `--partitions`, also write the partition graph to FILE (Graphviz dot).
        #[arg(long, value_name = "FILE")]
        dot: Option<PathBuf>,
        #[arg(long, value_parser = ["hir", "lir", "llvm", "asm"], default_value = "hir")]
        emit: String,
        /// Print each kernel with the precision it computes in under `--precision` (`bf16
        /// weights`: a product or convolution whose weights are bf16 panels; `f32`: the rest),
        /// and a last line `bf16_kernels=<n> f32_kernels=<m>`.
        #[arg(long)]
        precisions: bool,
        /// Write a self-contained page (no network) picturing the compiled model to FILE: its
        /// kernels as a graph, each with the nodes fused into it, its estimated cost and
        /// layout (and partition, with a `--target` list), and the memory plan as buffers
        /// over time against arena offsets.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// With `--html`: a profile of the same model (`kiln bench --profile`) whose kernel
        /// times the page shows.
        #[arg(long, value_name = "FILE", requires = "html")]
        profile: Option<PathBuf>,
    },
    /// Measure latency: warm-up, then median/p10/p90 over --iters runs.
    Bench {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        #[arg(long = "input", value_name = "NAME=FILE")]
        inputs: Vec<String>,
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// After the warm-up, read a count per line from standard input, run the model that
        /// many times and print the times as one line, `times_ms=<t1>,<t2>,…`, until the
        /// input ends: a driver can interleave Kiln run by run with other runtimes on the
        /// same machine (benches/peers/run.py does). --iters is not used.
        #[arg(long)]
        serve: bool,
        /// Write a profile of the timed runs (not the warm-up) to FILE: Chrome trace events (open it in Perfetto
        /// or chrome://tracing), one per kernel run, naming the model's nodes fused into it,
        /// with its bytes moved and FLOPs, and
        /// print the time by op type and by kernel.
        #[arg(long, value_name = "FILE")]
        profile: Option<PathBuf>,
    },
    /// Serve a repository of compiled models (`NAME/VERSION/model.kiln`) over the Open
    /// Inference Protocol (KServe v2: HTTP/REST and gRPC), with dynamic batching and
    /// Prometheus metrics; the runtime-only `kiln-serve` binary does the same.
    Serve {
        #[command(flatten)]
        args: kiln_serve::ServeArgs,
    },
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn options(shapes: &ShapeArgs, target: &str, model: &Path) -> Res<CompileOptions> {
    let mut o = CompileOptions::default();
    let values = parse_inputs(&shapes.input_value)?;
    if !values.is_empty() {
        o.value_inputs = structured_inputs(model, &values, true)?.specs;
    }
    o.set_target(target)?;
    for s in &shapes.input_shape {
        let (name, dims) = kiln::parse_input_shape(s)?;
        o.input_shapes.insert(name, dims);
    }
    o.max_elements = shapes.max_elements;
    o.progress = progress::for_terminal();
    if let Some(p) = &shapes.precision {
        o.precision = kiln::Precision::parse(p)?;
    }
    for d in &shapes.dim {
        let (name, bounds) = kiln::parse_dim_spec(d)?;
        o.dims.insert(name, bounds);
    }
    for (name, path) in parse_inputs(&shapes.freeze_input)? {
        let t = tensors::read_ir(&path).map_err(|e| format!("--freeze-input `{name}` from {}: {e}", path.display()))?;
        o.frozen_inputs.insert(name, t);
    }
    Ok(o)
}

fn is_onnx(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "onnx")
}

/// Loads a `.kiln` file, or compiles an `.onnx` file in memory with the options given (it
/// compiles no input's value in unless told to with `--freeze-input`).
fn session(model: &Path, shapes: &ShapeArgs, so: &SessionOptions, structured: &Structured) -> Res<Session> {
    if !is_onnx(model) {
        let given = !shapes.input_shape.is_empty()
            || !shapes.freeze_input.is_empty()
            || !shapes.input_value.is_empty()
            || !shapes.dim.is_empty()
            || shapes.precision.is_some();
        if given || shapes.max_elements.is_some() {
            return Err("--input-shape, --freeze-input, --input-value, --dim, --max-elements and --precision apply \
                        to .onnx models; a .kiln artifact is fixed at compile time"
                .into());
        }
        return Ok(Session::load_with(model, so)?);
    }
    let mut opts = options(shapes, "cpu", model)?;
    opts.value_inputs.extend(structured.specs.clone());
    let art = Compiler::new(opts).compile_path(model);
    progress::done();
    let art = art?;
    Ok(Session::from_bytes(&art.bytes(), so)?)
}

fn parse_inputs(specs: &[String]) -> Res<HashMap<String, PathBuf>> {
    let mut m = HashMap::new();
    for s in specs {
        let (name, file) = s.rsplit_once('=').ok_or_else(|| format!("--input `{s}`: expected NAME=FILE"))?;
        if m.insert(name.to_string(), PathBuf::from(file)).is_some() {
            return Err(format!("input `{name}` given twice").into());
        }
    }
    Ok(m)
}

/// The sequence and optional inputs of an `.onnx` model among the given files: what each
/// holds (compiled in), and the tensors the compiled model takes for them (`NAME[i]`).
#[derive(Default)]
struct Structured {
    specs: HashMap<String, kiln::ValueSpec>,
    tensors: HashMap<String, (kiln::ir::Tensor, PathBuf)>,
}

/// `all`: every file names a sequence or optional input (`--input-value`); otherwise files
/// naming tensor inputs are skipped (and the model is only read when a .pb is among them).
fn structured_inputs(model: &Path, files: &HashMap<String, PathBuf>, all: bool) -> Res<Structured> {
    let mut out = Structured::default();
    let any_pb = files.values().any(|p| p.extension().is_some_and(|e| e == "pb"));
    if !is_onnx(model) || !(any_pb || all) {
        return Ok(out);
    }
    let kinds = kiln::input_kinds(model)?;
    let mut names: Vec<&String> = files.keys().collect();
    names.sort();
    for name in names {
        let kind = kinds.get(name).copied().unwrap_or(kiln::ValueKind::Tensor);
        if kind == kiln::ValueKind::Tensor {
            if all {
                return Err(format!(
                    "--input-value `{name}`: the model has no sequence or optional input of that name"
                )
                .into());
            }
            continue;
        }
        let p = &files[name];
        let what = if kind == kiln::ValueKind::Sequence { "SequenceProto" } else { "OptionalProto" };
        if p.extension().is_none_or(|e| e != "pb") {
            return Err(format!(
                "input `{name}` from {}: the input is a sequence or optional; give it as an ONNX {what} .pb file",
                p.display()
            )
            .into());
        }
        let bytes = std::fs::read(p).map_err(|e| format!("input `{name}` from {}: {e}", p.display()))?;
        let v = kiln::decode_value(&bytes, kind)
            .map_err(|e| format!("input `{name}` from {} (an ONNX {what}): {e}", p.display()))?;
        for (n, t) in v.flatten(name) {
            out.tensors.insert(n, (t, p.clone()));
        }
        out.specs.insert(name.clone(), v.spec());
    }
    Ok(out)
}

/// Checks every given input name against the session ([`Session::input_index`]): an input
/// the compiled code takes, a sequence or optional input of an `.onnx` model, or an input
/// frozen at compile time given its frozen value ([`Session::check_frozen`]).
fn check_given(s: &Session, files: &HashMap<String, PathBuf>, structured: &Structured) -> Res<()> {
    let mut names: Vec<&String> = files.keys().collect();
    names.sort();
    for name in names.into_iter().filter(|n| !structured.specs.contains_key(*n)) {
        let path = &files[name];
        let at = |e: &dyn std::fmt::Display| format!("--input `{name}` from {}: {e}", path.display());
        match s.input_index(name) {
            Ok(Some(_)) => {}
            Ok(None) => {
                let value = tensors::read(path).map_err(|e| at(&e))?;
                s.check_frozen(name, value.as_ref()).map_err(|e| at(&e))?;
            }
            Err(e) => {
                // A sequence input of a compiled artifact takes its elements one by one.
                let elements = format!("{name}[");
                let hint = if s.inputs().iter().any(|i| i.name.starts_with(&elements)) {
                    format!(
                        "; this artifact takes the sequence `{name}` element by element: --input '{name}[0]=FILE' …"
                    )
                } else {
                    String::new()
                };
                return Err(format!("{}{hint}", at(&e)).into());
            }
        }
    }
    Ok(())
}

/// The session's inputs in order, read from the given files (or random where `random`).
fn gather_inputs(
    s: &Session,
    files: &HashMap<String, PathBuf>,
    structured: &Structured,
    random: bool,
) -> Res<Vec<HostTensor>> {
    check_given(s, files, structured)?;
    s.inputs()
        .iter()
        .enumerate()
        .map(|(i, spec)| match (structured.tensors.get(&spec.name), files.get(&spec.name)) {
            (Some((t, _)), _) => Ok(tensors::host(t)),
            (None, Some(p)) => {
                tensors::read(p).map_err(|e| format!("input `{}` from {}: {e}", spec.name, p.display()).into())
            }
            (None, None) if random => Ok(tensors::random(spec, i as u64)),
            (None, None) => {
                Err(format!("missing input `{}` (give it with --input {}=FILE.npy)", spec.name, spec.name).into())
            }
        })
        .collect()
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
}

fn cmd_run(
    model: &Path,
    shapes: &ShapeArgs,
    inputs: &[String],
    dir: &Path,
    format: &str,
    threads: usize,
    profile: Option<&Path>,
) -> Res<()> {
    let files = parse_inputs(inputs)?;
    let structured = structured_inputs(model, &files, false)?;
    let s = session(model, shapes, &SessionOptions { threads, profile: profile.is_some() }, &structured)?;
    let ins = gather_inputs(&s, &files, &structured, false)?;
    let refs: Vec<_> = ins.iter().map(|t| t.as_ref()).collect();
    let outs = s.run(&refs)?;
    if let (Some(path), Some(p)) = (profile, s.end_profiling()) {
        write_profile(&p, path)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut listing = Vec::new();
    let mut used = std::collections::HashSet::new();
    for t in &outs {
        let ext = match format {
            "npy" => "npy",
            "pb" => "pb",
            _ if tensors::npy_holds(t.dtype) => "npy",
            _ => "pb",
        };
        let mut file = format!("{}.{ext}", sanitize(&t.name));
        let mut n = 1;
        while !used.insert(file.clone()) {
            file = format!("{}_{n}.{ext}", sanitize(&t.name));
            n += 1;
        }
        if ext == "pb" {
            tensors::write_pb(&dir.join(&file), t)?;
        } else {
            tensors::write_npy(&dir.join(&file), t)?;
        }
        listing.push(serde_json::json!({"name": t.name, "file": file, "dtype": t.dtype.name(), "shape": t.shape}));
    }
    let json = serde_json::to_string_pretty(&serde_json::json!({ "outputs": listing }))?;
    std::fs::write(dir.join("outputs.json"), json + "\n").map_err(|e| format!("writing outputs.json: {e}"))?;
    for (t, entry) in outs.iter().zip(&listing) {
        let file = dir.join(entry["file"].as_str().unwrap_or_default());
        println!("{}: {} {:?} = {} -> {}", t.name, t.dtype.name(), t.shape, tensors::preview(t, 8), file.display());
    }
    Ok(())
}

/// The bytes of a slice of words (8-byte aligned, so right for any element type).
fn bytes_of_mut(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: the same memory, as bytes: u8 has alignment 1 and no invalid values, and the
    // borrow of `v` is carried over.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 8) }
}

fn cmd_bench(
    model: &Path,
    shapes: &ShapeArgs,
    inputs: &[String],
    threads: usize,
    iters: usize,
    serve: bool,
    profile: Option<&Path>,
) -> Res<()> {
    let files = parse_inputs(inputs)?;
    let structured = structured_inputs(model, &files, false)?;
    let s = session(model, shapes, &SessionOptions { threads, profile: profile.is_some() }, &structured)?;
    let ins = gather_inputs(&s, &files, &structured, true)?;
    let refs: Vec<_> = ins.iter().map(|t| t.as_ref()).collect();
    // Output buffers allocated once and reused, as a serving loop would: what is timed is the
    // model, not the allocator (a fresh buffer per run can cost a page fault per 4 KiB).
    let mut bufs: Vec<Vec<u64>> = s.outputs().iter().map(|o| vec![0u64; o.byte_len().div_ceil(8)]).collect();
    let mut outs: Vec<&mut [u8]> =
        bufs.iter_mut().zip(s.outputs()).map(|(b, o)| &mut bytes_of_mut(b)[..o.byte_len()]).collect();
    let mut run = || s.run_into(&refs, &mut outs);
    let warm = Instant::now();
    while warm.elapsed().as_millis() < 300 {
        run()?;
    }
    // The warm-up's runs are not profiled.
    let _ = s.end_profiling();
    if serve {
        use std::io::{BufRead, Write};
        let mut out = std::io::stdout().lock();
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            let n: usize =
                line.trim().parse().map_err(|_| format!("--serve: expected a count per line, got `{line}`"))?;
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                run()?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let times: Vec<String> = times.iter().map(|t| format!("{t:.4}")).collect();
            writeln!(out, "times_ms={}", times.join(","))?;
            out.flush()?;
        }
        if let (Some(path), Some(p)) = (profile, s.end_profiling()) {
            write_profile(&p, path)?;
        }
        return Ok(());
    }
    let mut times = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!("iterations: {}", times.len());
    println!("p10_ms={:.4}", q(0.1));
    println!("p90_ms={:.4}", q(0.9));
    println!("median_ms={:.4}", q(0.5));
    if let (Some(path), Some(p)) = (profile, s.end_profiling()) {
        write_profile(&p, path)?;
        print!("\n{}", p.table(25));
    }
    Ok(())
}

/// Writes a profile's Chrome trace events to `path`.
fn write_profile(p: &kiln::Profile, path: &Path) -> Res<()> {
    p.write_chrome_trace(path).map_err(|e| format!("writing the profile {}: {e}", path.display()))?;
    eprintln!(
        "wrote {} ({} run(s); open it in Perfetto, ui.perfetto.dev, or chrome://tracing)",
        path.display(),
        p.runs.len()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn cmd_inspect(
    model: &Path,
    shapes: &ShapeArgs,
    after: Option<&str>,
    memory: bool,
    emit: &str,
    target: &str,
    partitions: bool,
    dot: Option<&Path>,
) -> Res<()> {
    let c = Compiler::new(options(shapes, target, model)?);
    if dot.is_some() && !partitions {
        return Err("--dot goes with --partitions".into());
    }
    if partitions {
        let mut g = c.import_path(model)?;
        let plan = if c.opts.devices.is_empty() {
            let mut one = c.opts.clone();
            one.devices = vec![kiln::Device::cpu()];
            Compiler::new(one).plan(&mut g)?
        } else {
            c.plan(&mut g)?
        };
        if let Some(path) = dot {
            std::fs::write(path, plan.dot(&g)).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        print!("{}", plan.text(&g));
        return Ok(());
    }
    if memory {
        let mut g = c.import_path(model)?;
        c.optimize(&mut g, None)?;
        let (_, r, weights) = c.lower(&g)?;
        println!("arena_bytes={}", r.arena_bytes);
        println!("lower_bound_bytes={}", r.lower_bound);
        println!("activation_buffers={}", r.buffers);
        println!("in_place={}", r.in_place);
        println!("weight_bytes={}", weights.len);
        println!("memory_ratio={:.4}", r.ratio());
        return Ok(());
    }
    print!("{}", c.emit(model, emit, after)?);
    Ok(())
}

/// `kiln inspect --html`: the page of [`kiln::report`], for the whole model lowered for the
/// CPU, its kernels marked with the partition their nodes fall in under a `--target` list.
fn cmd_html(model: &Path, shapes: &ShapeArgs, target: &str, out: &Path, profile: Option<&Path>) -> Res<()> {
    let c = Compiler::new(options(shapes, target, model)?);
    let mut partition_of = HashMap::new();
    let mut devices = Vec::new();
    if c.opts.devices.len() > 1 {
        let mut g = c.import_path(model)?;
        let plan = c.plan(&mut g)?;
        for (i, p) in plan.partitions.iter().enumerate() {
            for &n in &p.nodes {
                if let Some(o) = g.origin_of(&g.node(n).name) {
                    partition_of.insert(o.node, i);
                }
            }
        }
        devices = plan.partitions.iter().map(|p| plan.devices[p.device].kind.name().to_string()).collect();
    }
    let mut one = c.opts.clone();
    one.devices.clear();
    let c = Compiler::new(one);
    let mut g = c.import_path(model)?;
    c.optimize(&mut g, None)?;
    let (p, _, weights) = c.lower(&g)?;
    let measured = match profile {
        Some(path) => {
            let text = std::fs::read(path).map_err(|e| format!("reading the profile {}: {e}", path.display()))?;
            let trace: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| format!("the profile {} is not a Chrome trace: {e}", path.display()))?;
            kiln::report::measured_times(&trace)
        }
        None => HashMap::new(),
    };
    let data = kiln::report::report_data(&p, weights.len, &partition_of, &devices, &measured);
    std::fs::write(out, kiln::report::html_page(&data)).map_err(|e| format!("writing {}: {e}", out.display()))?;
    eprintln!("wrote {} ({} kernels)", out.display(), data["kernels"].as_array().map_or(0, |k| k.len()));
    Ok(())
}

/// `kiln inspect --precisions`: each kernel of the lowered program and its precision.
fn cmd_precisions(model: &Path, shapes: &ShapeArgs, target: &str) -> Res<()> {
    let c = Compiler::new(options(shapes, target, model)?);
    let mut g = c.import_path(model)?;
    c.optimize(&mut g, None)?;
    let (p, _, _) = c.lower(&g)?;
    let (mut bf16, mut int8, mut f32) = (0, 0, 0);
    for ins in &p.instrs {
        let kiln::ir::lir::Instr::Kernel(k) = ins else { continue };
        // Constant operands of the weights' panels: bf16, or i16 pairs (an integer product).
        let packed = |d: kiln::ir::DType| {
            k.inputs
                .iter()
                .any(|v| v.dtype == d && matches!(p.buffer(v.buffer).kind, kiln::ir::lir::BufferKind::Constant(_)))
        };
        let integer = k.reduction.as_ref().is_some_and(|r| r.init == kiln::ir::lir::Scalar::I32(0));
        if packed(kiln::ir::DType::BF16) {
            bf16 += 1;
            println!("{}: bf16 weights", k.name);
        } else if integer && packed(kiln::ir::DType::I16) {
            int8 += 1;
            println!("{}: int8 (i32 sums)", k.name);
        } else {
            f32 += 1;
            println!("{}: f32", k.name);
        }
    }
    println!("bf16_kernels={bf16} int8_kernels={int8} f32_kernels={f32}");
    Ok(())
}

/// Writes a text form to `out` (or prints it). PTX comes one module per GPU partition: the
/// first goes to `out`, partition `i`'s next to it as `<out stem>.p<i>.ptx`.
fn emit_text(c: &Compiler, model: &Path, what: &str, out: Option<&Path>) -> Res<()> {
    let write = |path: &Path, text: &str| -> Res<()> {
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {} ({} bytes)", path.display(), text.len());
        Ok(())
    };
    if what != "ptx" {
        let text = c.emit(model, what, None)?;
        return match out {
            Some(path) => write(path, &text),
            None => {
                print!("{text}");
                Ok(())
            }
        };
    }
    let modules = c.emit_ptx(model)?;
    let Some(out) = out else {
        for (i, text) in &modules {
            println!("// partition {i}\n{text}");
        }
        return Ok(());
    };
    for (k, (i, text)) in modules.iter().enumerate() {
        if k == 0 {
            write(out, text)?;
        } else {
            let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            write(&out.with_file_name(format!("{stem}.p{i}.ptx")), text)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // Output piped into a command that stops reading (`kiln compile … --emit ptx | head`)
    // ends the process quietly, as for other Unix tools, instead of a panic in `print!`.
    #[cfg(unix)]
    // SAFETY: restores the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let res = match &cli.cmd {
        Cmd::Compile {
            model,
            output,
            target,
            cpu,
            shapes,
            emit,
            name,
            timings,
            external_weights,
            opt_level,
            threads,
        } => (|| -> Res<()> {
            let mut opts = options(shapes, "cpu", model)?;
            opts.external_weights = *external_weights;
            opts.target.opt_level = *opt_level;
            opts.threads = *threads;
            opts.set_target_cpu(target, cpu.as_deref())?;
            let c = Compiler::new(opts);
            let Some(kind) = kiln::ArtifactKind::parse(emit) else {
                return emit_text(&c, model, emit, output.as_deref());
            };
            let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let ext = match kind {
                kiln::ArtifactKind::Kiln => "kiln".to_string(),
                kiln::ArtifactKind::Object => "o".to_string(),
                kiln::ArtifactKind::Staticlib => "a".to_string(),
                kiln::ArtifactKind::Header => "h".to_string(),
            };
            let out = output.clone().unwrap_or_else(|| model.with_extension(ext));
            let done = c.compile_file_as(model, &out, kind, name.as_deref().unwrap_or(&stem));
            progress::done();
            let done = done?;
            if *timings {
                for (phase, t) in &done.timings {
                    eprintln!("{phase:>9} {:8.1} ms", t.as_secs_f64() * 1e3);
                }
            }
            let what = if done.up_to_date { "up to date:" } else { "wrote" };
            eprintln!("{what} {} ({} bytes, arena {} bytes)", out.display(), done.file_len, done.manifest.arena_bytes);
            Ok(())
        })(),
        Cmd::Run { model, shapes, inputs, output_dir, output_format, threads, profile } => {
            cmd_run(model, shapes, inputs, output_dir, output_format, *threads, profile.as_deref())
        }
        Cmd::Inspect { model, shapes, after, memory, emit, target, partitions, dot, precisions, html, profile } => {
            if let Some(out) = html {
                cmd_html(model, shapes, target, out, profile.as_deref())
            } else if *precisions {
                cmd_precisions(model, shapes, target)
            } else {
                cmd_inspect(model, shapes, after.as_deref(), *memory, emit, target, *partitions, dot.as_deref())
            }
        }
        Cmd::Bench { model, shapes, inputs, threads, iters, serve, profile } => {
            cmd_bench(model, shapes, inputs, *threads, *iters, *serve, profile.as_deref())
        }
        Cmd::Serve { args } => kiln_serve::run(args.clone()),
    };
    progress::done();
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", kiln::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
