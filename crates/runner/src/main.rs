//! `kiln-run`: runs a `.kiln` artifact with the runtime alone (no compiler, no LLVM), GPU
//! partitions included, for machines that only run models (the GPU check).
//!
//! ```text
//! kiln-run MODEL.kiln [--input NAME=FILE.npy]... [--random] [--expect FILE.npy]... [--rtol R]
//!          [--atol A] [--iters N] [--threads N]
//! ```
//!
//! Inputs not given are an error, unless `--random` fills them (uniform in [-1, 1) for
//! floats, 0 for integers, deterministic). With `--expect` (one per output, in order) each output is
//! compared with numpy's rule (|got − want| ≤ atol + rtol·|want|) and the run fails on a
//! mismatch. With `--iters N` the model runs N more times and the median time is printed.
//! Every line it prints is `key=value` or `output <name>: …`, for scripts.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use kiln_runtime::{DType, Session, SessionOptions, Tensor, TensorRef};

struct Host {
    dtype: DType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Reads a `.npy` file into little-endian element bytes.
fn read_npy(path: &Path) -> Result<Host, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| format!("{}: {e}", path.display()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let ty = match npy.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        d => return Err(format!("{}: unsupported dtype {d:?}", path.display())),
    };
    macro_rules! le {
        ($t:ty, $code:expr) => {{
            let v: Vec<$t> = npy.into_vec().map_err(|e| format!("{}: {e}", path.display()))?;
            (v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(), $code)
        }};
    }
    let (data, dtype) = match ty.trim_start_matches(['<', '|', '=']) {
        "f4" => le!(f32, DType::F32),
        "f8" => le!(f64, DType::F64),
        "i8" => le!(i64, DType::I64),
        "i4" => le!(i32, DType::I32),
        "i1" => le!(i8, DType::I8),
        "u1" => le!(u8, DType::U8),
        "b1" => {
            let v: Vec<bool> = npy.into_vec().map_err(|e| format!("{}: {e}", path.display()))?;
            (v.into_iter().map(u8::from).collect(), DType::Bool)
        }
        other => return Err(format!("{}: unsupported dtype {other}", path.display())),
    };
    Ok(Host { dtype, shape, data })
}

/// A deterministic input: floats uniform in [-1, 1) (a xorshift stream seeded by the input's
/// position), integers and booleans 0.
fn random_input(spec: &kiln_runtime::abi::manifest::TensorSpec, seed: u64) -> Result<Host, String> {
    let dtype = DType::from_i32(spec.dtype).ok_or_else(|| format!("input `{}`: unknown dtype", spec.name))?;
    let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
    let n: usize = shape.iter().product();
    let data = match dtype {
        DType::F32 => {
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (seed + 1);
            (0..n)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((x >> 40) as f32 / (1u64 << 23) as f32 - 1.0).to_le_bytes()
                })
                .collect()
        }
        d => vec![0u8; n * d.size()],
    };
    Ok(Host { dtype, shape, data })
}

/// The elements as f64 (for comparisons).
fn values(dtype: DType, data: &[u8]) -> Result<Vec<f64>, String> {
    let w = dtype.size();
    let f = |c: &[u8]| -> Option<f64> {
        Some(match dtype {
            DType::F32 => f32::from_le_bytes(c.try_into().ok()?) as f64,
            DType::F64 => f64::from_le_bytes(c.try_into().ok()?),
            DType::I64 => i64::from_le_bytes(c.try_into().ok()?) as f64,
            DType::I32 => i32::from_le_bytes(c.try_into().ok()?) as f64,
            DType::I8 => c[0] as i8 as f64,
            DType::U8 | DType::Bool => c[0] as f64,
            _ => return None,
        })
    };
    data.chunks_exact(w).map(|c| f(c).ok_or_else(|| format!("cannot compare dtype {}", dtype.name()))).collect()
}

/// Compares an output with its expected value; returns (max abs error, max rel error, ok).
fn compare(got: &Tensor, want: &Host, rtol: f64, atol: f64) -> Result<(f64, f64, bool), String> {
    if got.shape != want.shape {
        return Err(format!("shape {:?}, expected {:?}", got.shape, want.shape));
    }
    let (g, w) = (values(got.dtype, &got.data)?, values(want.dtype, &want.data)?);
    let (mut abs, mut rel, mut ok) = (0f64, 0f64, true);
    for (a, b) in g.iter().zip(&w) {
        if a.is_nan() && b.is_nan() {
            continue;
        }
        let d = (a - b).abs();
        abs = abs.max(d);
        rel = rel.max(d / b.abs().max(1e-12));
        ok &= d <= atol + rtol * b.abs();
    }
    Ok((abs, rel, ok))
}

fn run() -> Result<bool, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut model = None;
    let (mut inputs, mut expect) = (Vec::new(), Vec::new());
    let (mut rtol, mut atol, mut iters, mut threads) = (1e-3, 1e-4, 0usize, 0usize);
    let mut random = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--input" => inputs.push(val()?),
            "--expect" => expect.push(val()?),
            "--rtol" => rtol = val()?.parse().map_err(|e| format!("--rtol: {e}"))?,
            "--atol" => atol = val()?.parse().map_err(|e| format!("--atol: {e}"))?,
            "--iters" => iters = val()?.parse().map_err(|e| format!("--iters: {e}"))?,
            "--threads" => threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--random" => random = true,
            "-h" | "--help" => {
                println!("usage: kiln-run MODEL.kiln [--input NAME=FILE.npy]... [--expect FILE.npy]... [--rtol R] [--atol A] [--iters N] [--threads N]");
                return Ok(true);
            }
            other if model.is_none() && !other.starts_with('-') => model = Some(other.to_string()),
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    let model = model.ok_or("no model given (kiln-run MODEL.kiln ...)")?;
    let start = Instant::now();
    let s = Session::load_with(&model, &SessionOptions { threads, ..Default::default() })
        .map_err(|e| format!("loading {model}: {e}"))?;
    println!("load_ms={:.1}", start.elapsed().as_secs_f64() * 1e3);
    let mut given = std::collections::HashMap::new();
    for i in &inputs {
        let (name, file) = i.split_once('=').ok_or_else(|| format!("--input `{i}`: expected NAME=FILE.npy"))?;
        let host = read_npy(Path::new(file))?;
        // Every name is an input the compiled code takes, or one frozen at compile time given
        // its frozen value: a misspelled name or a new value must not be silently ignored.
        if s.input_index(name).map_err(|e| format!("--input `{name}`: {e}"))?.is_none() {
            let value = TensorRef { dtype: host.dtype, shape: &host.shape, data: &host.data };
            s.check_frozen(name, value).map_err(|e| format!("--input `{name}`: {e}"))?;
        }
        given.insert(name.to_string(), host);
    }
    for (i, spec) in s.inputs().iter().enumerate() {
        if random && !given.contains_key(&spec.name) {
            given.insert(spec.name.clone(), random_input(spec, i as u64)?);
        }
    }
    let hosts: Vec<&Host> = s
        .inputs()
        .iter()
        .map(|spec| {
            given.get(&spec.name).ok_or_else(|| format!("missing input `{}` (--input NAME=FILE.npy)", spec.name))
        })
        .collect::<Result<_, _>>()?;
    let refs: Vec<TensorRef> =
        hosts.iter().map(|h| TensorRef { dtype: h.dtype, shape: &h.shape, data: &h.data }).collect();
    let outs = s.run(&refs).map_err(|e| format!("running: {e}"))?;
    let mut all_ok = true;
    for (k, t) in outs.iter().enumerate() {
        match expect.get(k) {
            Some(file) => {
                let want = read_npy(Path::new(file))?;
                let (abs, rel, ok) = compare(t, &want, rtol, atol).map_err(|e| format!("output `{}`: {e}", t.name))?;
                all_ok &= ok;
                let verdict = if ok { "ok" } else { "MISMATCH" };
                println!("output {}: {:?} max_abs_err={abs:.3e} max_rel_err={rel:.3e} {verdict}", t.name, t.shape);
            }
            None => println!("output {}: {:?} (not compared)", t.name, t.shape),
        }
    }
    if iters > 0 {
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            s.run(&refs).map_err(|e| format!("running: {e}"))?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!("median_ms={:.4}", times[times.len() / 2]);
        println!("best_ms={:.4}", times[0]);
    }
    Ok(all_ok)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
