//! The run-time dims against ONNX's own answers: every node test that passes with its inputs
//! fed at run time, and whose run-time inputs share one leading size `n`, is compiled again
//! with that axis a run-time dim (`N`, bounds `1..=n + 2`, so that a run gives fewer rows
//! than the artifact is planned for) and run on its inputs; then again with their last axis
//! a run-time dim instead, where they share its size and have at least two axes (an inner
//! axis: the buffers are laid out at the bound's strides and a run uses the first indices of
//! each row). Each must match ONNX's expected outputs, or be refused at compile time with an
//! error (a node that would mix rows, the dim used as data): never a wrong answer, a panic or
//! a failed run. Each artifact must also refuse, with the error that says why, inputs above
//! the bound, with no rows, and inputs that disagree on the dim.

use std::collections::BTreeMap;

use kiln_onnx::proto::tensor_shape_proto::dimension::Value as DimValue;
use prost::Message;

/// What one case gave: ran and matched, refused at compile time, or a failure (why).
enum Outcome {
    Matched,
    Refused(String),
    Failed(String),
    Skipped,
}

/// Which axis of the inputs becomes the run-time dim.
#[derive(Clone, Copy)]
enum Axis {
    Leading,
    /// The last, of inputs with at least two axes.
    Last,
}

impl Axis {
    fn of(self, rank: usize) -> Option<usize> {
        match self {
            Axis::Leading => (rank >= 1).then_some(0),
            Axis::Last => (rank >= 2).then(|| rank - 1),
        }
    }
}

/// The case's model with axis `axis` of every run-time input named `N`, and that axis's
/// size, when all of them share one (at least 1).
fn with_dim(case: &kiln_tests::Case, axis: Axis) -> Option<(Vec<u8>, usize)> {
    if !case.value_inputs.is_empty() || case.inputs.is_empty() {
        return None;
    }
    let size = |t: &kiln_ir::Tensor| axis.of(t.shape().len()).map(|a| t.shape()[a]);
    let n = size(&case.inputs[0].1)?;
    if n == 0 || case.inputs.iter().any(|(_, t, _)| size(t) != Some(n)) {
        return None;
    }
    let names: Vec<&str> = case.inputs.iter().map(|(name, _, _)| name.as_str()).collect();
    let bytes = std::fs::read(&case.model).ok()?;
    let mut m = kiln_onnx::decode_model(bytes.into()).ok()?;
    let g = m.graph.as_mut()?;
    for vi in g.input.iter_mut().filter(|vi| names.contains(&vi.name())) {
        let Some(kiln_onnx::proto::type_proto::Value::TensorType(t)) =
            vi.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            return None;
        };
        let dims = &mut t.shape.as_mut()?.dim;
        let a = axis.of(dims.len())?;
        dims[a].value = Some(DimValue::DimParam("N".into()));
    }
    Some((m.encode_to_vec(), n))
}

fn run_case(name: &str, dir: &std::path::Path, axis: Axis) -> Outcome {
    let Ok(case) = kiln_tests::node_case(name, kiln_tests::cached_index()) else { return Outcome::Skipped };
    let Some((model, n)) = with_dim(&case, axis) else { return Outcome::Skipped };
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, model).unwrap();
    let mut opts = kiln::CompileOptions {
        max_elements: Some(kiln_tests::CONFORMANCE_MAX_ELEMENTS),
        kernel_cache: kiln::KernelCache::disabled(),
        ..Default::default()
    };
    opts.dims.insert("N".into(), (1, n + 2));
    let art = match kiln::Compiler::new(opts).compile_path(&path) {
        Ok(a) => a,
        Err(e) => return Outcome::Refused(kiln::error_chain(&e)),
    };
    let s = match kiln::Session::from_bytes(&art.bytes(), &kiln::SessionOptions { threads: 1, ..Default::default() }) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("loading: {e}")),
    };
    let refs: Vec<kiln::TensorRef> = case
        .inputs
        .iter()
        .map(|(_, t, _)| kiln::TensorRef { dtype: t.dtype().code(), shape: t.shape(), data: &t.data })
        .collect();
    let got: Vec<kiln_tests::Out> = match s.run(&refs) {
        Ok(outs) => outs.into_iter().map(|t| (t.dtype, t.shape, t.data)).collect(),
        Err(e) => return Outcome::Failed(format!("running: {e}")),
    };
    if let Err(e) = kiln_tests::compare(&got, &case.expected, case.rtol, case.atol) {
        return Outcome::Failed(e);
    }
    // Sizes the artifact must refuse, each with its own error: above the bound, zero rows
    // (below it), and (with two inputs or more) inputs that disagree on N.
    let resized = |rows: &[usize]| -> Vec<kiln_ir::Tensor> {
        case.inputs
            .iter()
            .zip(rows)
            .map(|((_, t, _), &r)| {
                let mut shape = t.shape().to_vec();
                let a = axis.of(shape.len()).expect("checked");
                shape[a] = r;
                let bytes = shape.iter().product::<usize>() * t.dtype().size();
                let data: Vec<u8> = t.data.iter().copied().cycle().take(bytes).collect();
                kiln_ir::Tensor::from_bytes(kiln_ir::TensorType::new(t.dtype(), shape), data.into()).unwrap()
            })
            .collect()
    };
    let k = case.inputs.len();
    let mut bad = vec![(vec![n + 3; k], "outside its bounds"), (vec![0; k], "outside its bounds")];
    if k >= 2 {
        let mut rows = vec![n; k];
        rows[k - 1] = n + 1;
        bad.push((rows, "but input"));
    }
    for (rows, want) in bad {
        let ins = resized(&rows);
        let refs: Vec<kiln::TensorRef> =
            ins.iter().map(|t| kiln::TensorRef { dtype: t.dtype().code(), shape: t.shape(), data: &t.data }).collect();
        match s.run(&refs) {
            Err(e) if e.to_string().contains(want) => {}
            Err(e) => return Outcome::Failed(format!("rows {rows:?}: the error `{e}` does not say `{want}`")),
            Ok(_) => return Outcome::Failed(format!("rows {rows:?} (bounds 1..={}) ran", n + 2)),
        }
    }
    Outcome::Matched
}

#[test]
fn node_tests_with_a_run_time_leading_dim_match_or_are_refused() {
    sweep(Axis::Leading, "leading", 500);
}

#[test]
fn node_tests_with_a_run_time_last_dim_match_or_are_refused() {
    sweep(Axis::Last, "last", 300);
}

/// Runs every case with `axis` a run-time dim: at least `least` must match, none fail.
fn sweep(axis: Axis, what: &str, least: usize) {
    let names: Vec<&str> = kiln_tests::listed_cases(include_str!("conformance/manifest.txt")).collect();
    let dir = tempfile::tempdir().unwrap();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(BTreeMap::new());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|sc| {
        for _ in 0..workers {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&name) = names.get(i) else { break };
                let outcome = std::panic::catch_unwind(|| run_case(name, dir.path(), axis))
                    .unwrap_or_else(|_| Outcome::Failed("panicked".into()));
                results.lock().unwrap().insert(name, outcome);
            });
        }
    });
    let results = results.into_inner().unwrap();
    let (mut matched, mut refused, mut failed) = (0, 0, Vec::new());
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for (name, o) in &results {
        match o {
            Outcome::Matched => matched += 1,
            Outcome::Refused(e) => {
                refused += 1;
                // The kind of refusal: its text after the node's name.
                let kind = e.split("): ").nth(1).unwrap_or(e).chars().take(60).collect::<String>();
                *reasons.entry(kind).or_default() += 1;
            }
            Outcome::Failed(e) => failed.push(format!("{name}: {e}")),
            Outcome::Skipped => {}
        }
    }
    eprintln!("{matched} node tests run with a run-time {what} dim and match; {refused} refused at compile time");
    let mut top: Vec<_> = reasons.into_iter().collect();
    top.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
    for (kind, count) in top.iter().take(12) {
        eprintln!("  {count:4} {kind}");
    }
    assert!(matched > least, "only {matched} node tests ran with a run-time {what} dim");
    assert!(failed.is_empty(), "{} wrong or failed:\n{}", failed.len(), failed.join("\n"));
}
