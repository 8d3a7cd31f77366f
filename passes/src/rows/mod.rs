//! Run-time leading dims: which values carry one, and which kernels run only over its rows.
//!
//! A graph compiled with `--dim batch=1..8` is built at the bound (8). An input whose leading
//! axis is `batch` holds 8 rows of which a run gives the first `n`; every value computed
//! from it row by row (row `r` of the result depends only on row `r` of its operands)
//! carries the dim on its leading axis too, and a run computes and reads only its first `n`
//! rows. Memory is planned once, at the bound.
//!
//! * [`analyze`] (HIR, before lowering) finds the values whose leading axis carries a
//!   symbol, and refuses a node that would mix rows (a reduction over the leading axis, a
//!   transpose that moves it, a reshape that merges it) with an error naming the node and
//!   the dim.
//! * [`clamp`] (LIR, the last step) marks each kernel that reads such rows with the run-time
//!   extent of its domain's dim 0 ([`kiln_ir::lir::Clamp`]): the entry function then runs
//!   only the tasks over those rows. A reduction over every element (a check kernel that
//!   counts bad indices) is masked to the rows instead; any other form is an error.

use std::collections::HashMap;

use kiln_ir::lir::{Program, RowDim};
use kiln_ir::{Graph, Op, ValueDef, ValueId};

mod axes;
mod lir;
pub use axes::{compare_axes, AxisDims};
pub use lir::{clamp, mark, touches_rows};
pub(crate) use lir::{concat_runs, run_extent, run_time_dims};

use crate::PassError;

/// The symbol (index in `g.symbols`) on the leading axis of each value that carries one.
///
/// `seeds`: constants that carry one too (from [`compare`]). `strict`: an operand without
/// the dim but with as many rows as the bound is an error (the graph as imported, where
/// [`compare`] has marked every constant computed from the dim); otherwise it is taken to
/// be such a constant, folded since (the graph as lowered).
pub fn analyze(g: &Graph, seeds: &HashMap<ValueId, usize>, strict: bool) -> Result<HashMap<ValueId, usize>, PassError> {
    let mut rows: HashMap<ValueId, usize> = seeds.clone();
    if g.symbols.is_empty() {
        return Ok(rows);
    }
    for (&i, axes) in &g.input_syms {
        let v = g.inputs[i];
        for (a, s) in axes.iter().enumerate() {
            let Some(s) = *s else { continue };
            if a != 0 {
                return Err(PassError::RunTimeDim {
                    node: g.value(v).name.clone(),
                    op: "input".into(),
                    message: format!(
                        "the run-time dim `{}` is its axis {a}: only a leading axis can be sized at run time \
                         yet; pin it with --input-shape",
                        g.symbols[s].name
                    ),
                });
            }
            rows.insert(v, s);
        }
    }
    for &nid in g.order() {
        let node = g.node(nid);
        let syms: Vec<usize> = node.inputs.iter().filter_map(|v| rows.get(v).copied()).collect();
        let Some(&s) = syms.first() else { continue };
        let err = |message: String| PassError::RunTimeDim {
            node: node.name.clone(),
            op: node.op.name().into(),
            message: format!("the run-time dim `{}` {message}", g.symbols[s].name),
        };
        if let Some(&t) = syms.iter().find(|&&t| t != s) {
            return Err(err(format!("meets the run-time dim `{}`: they must be one symbol", g.symbols[t].name)));
        }
        let bound = g.symbols[s].hi;
        row_parallel(g, node, &rows, bound, if strict { None } else { Some(bound) }).map_err(err)?;
        for &o in &node.outputs {
            rows.insert(o, s);
        }
    }
    for &o in &g.outputs {
        if let Some(&s) = rows.get(&o) {
            let lead = g.ty(o).shape[0];
            if lead != g.symbols[s].hi {
                return Err(PassError::RunTimeDim {
                    node: g.value(o).name.clone(),
                    op: "output".into(),
                    message: format!(
                        "its leading axis is {lead} at the bound, the run-time dim `{}` times {}: a graph output must \
                         keep the dim as its own axis",
                        g.symbols[s].name,
                        lead / g.symbols[s].hi.max(1)
                    ),
                });
            }
        }
    }
    for (i, r) in g.output_shapes.keys().map(|&i| (i, g.outputs[i])) {
        if rows.contains_key(&r) {
            return Err(PassError::RunTimeDim {
                node: g.value(g.outputs[i]).name.clone(),
                op: "output".into(),
                message: "its shape is decided by data and by a run-time dim: not supported yet".into(),
            });
        }
    }
    Ok(rows)
}

/// Whether `node`, some of whose operands carry a run-time leading dim, computes each row of
/// its results from the same row of those operands (and from whole operands that do not
/// carry it): `Err` says why not.
fn row_parallel(
    g: &Graph,
    node: &kiln_ir::Node,
    rows: &HashMap<ValueId, usize>,
    bound: usize,
    folded: Option<usize>,
) -> Result<(), String> {
    let dynamic = |v: &ValueId| rows.contains_key(v);
    let shape = |v: ValueId| g.ty(v).shape.clone();
    let out = shape(node.outputs[0]);
    let x = shape(node.inputs[0]);
    // Operands without the dim broadcast along the leading axis (rank below the result's, or
    // one row), those with it have the result's rank.
    let broadcast_ok = || -> Result<(), String> {
        for &v in &node.inputs {
            let s = shape(v);
            if dynamic(&v) {
                if s.len() != out.len() || s.first() != out.first() {
                    return Err(format!(
                        "reaches operand `{}` of shape {s:?}, not aligned with the result's rows",
                        g.value(v).name
                    ));
                }
            } else if s.len() == out.len()
                && s.first().is_some_and(|&d| d != 1 && !(folded.is_some() && Some(&d) == out.first()))
            {
                return Err(format!(
                    "meets `{}` of shape {s:?}, whose {} rows are fixed: the model would need exactly that many",
                    g.value(v).name,
                    s[0]
                ));
            }
        }
        Ok(())
    };
    let only_first = || -> Result<(), String> {
        match node.inputs.iter().skip(1).find(|v| dynamic(v)) {
            Some(v) => Err(format!("reaches operand `{}`, which is read whole for every row", g.value(*v).name)),
            None => Ok(()),
        }
    };
    let not_axis0 = |axis: usize, what: &str| -> Result<(), String> {
        if axis == 0 {
            Err(format!("is the axis {what}"))
        } else {
            Ok(())
        }
    };
    match &node.op {
        Op::Binary(_) | Op::Compare(_) | Op::Unary(_) | Op::Where | Op::Cast { .. } | Op::IsNaN | Op::IsInf { .. } => {
            broadcast_ok()
        }
        Op::Identity => Ok(()),
        Op::BitCast { .. } | Op::Reshape { .. } => {
            // Rows stay whole when both leading axes are a multiple of the bound (`[n, s, h]`
            // to `[n·s, h]` and back): row r is the same bytes in both.
            let whole = |s: &[usize]| s.first().is_some_and(|&d| d.is_multiple_of(bound) && d > 0);
            if !whole(&x) || !whole(&out) {
                return Err(format!("is merged with other axes or split by a reshape of {x:?} to {out:?}"));
            }
            Ok(())
        }
        Op::MatMul => {
            let (a, b) = (&node.inputs[0], &node.inputs[1]);
            if dynamic(b) && (shape(*b).len() < 3 || shape(*b).len() != out.len()) {
                return Err("is the contracted or column axis of a matrix product's right operand".into());
            }
            if dynamic(a) && shape(*a).len() != out.len() {
                return Err("is the contracted axis of a matrix product's left operand".into());
            }
            for v in [a, b] {
                let s = shape(*v);
                if !dynamic(v)
                    && s.len() == out.len()
                    && s.len() >= 3
                    && s[0] != 1
                    && !(folded.is_some() && s[0] == out[0])
                {
                    return Err(format!("meets `{}` of shape {s:?}, whose batch is fixed", g.value(*v).name));
                }
            }
            Ok(())
        }
        Op::Gemm { trans_a, .. } => {
            if *trans_a {
                return Err("is the contracted axis of a transposed Gemm operand".into());
            }
            only_first()?;
            match node.inputs.get(2) {
                Some(c)
                    if !dynamic(c)
                        && shape(*c).len() == 2
                        && shape(*c)[0] != 1
                        && !(folded.is_some() && Some(&shape(*c)[0]) == out.first()) =>
                {
                    Err(format!("meets the bias `{}` of shape {:?}, whose rows are fixed", g.value(*c).name, shape(*c)))
                }
                _ => Ok(()),
            }
        }
        Op::Conv { .. }
        | Op::ConvTranspose { .. }
        | Op::MaxPool { .. }
        | Op::MaxPoolIndices { .. }
        | Op::AveragePool { .. }
        | Op::BatchNorm { .. }
        | Op::Lrn { .. } => only_first(),
        Op::LayerNorm { axis, .. } | Op::RmsNorm { axis, .. } => {
            not_axis0(*axis, "normalized over")?;
            only_first()
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => not_axis0(*axis, "of a softmax"),
        Op::Reduce { axes, .. } => {
            if axes.contains(&0) {
                return Err("is reduced over".into());
            }
            only_first()
        }
        Op::ArgReduce { axis, .. } | Op::TopKIndices { axis, .. } => not_axis0(*axis, "searched along"),
        Op::Transpose { perm } => {
            if perm.first() == Some(&0) {
                Ok(())
            } else {
                Err(format!("is moved by transpose {perm:?}"))
            }
        }
        Op::Concat { axis } => {
            not_axis0(*axis, "of a concatenation")?;
            broadcast_ok()
        }
        Op::Slice { starts, steps, out_shape } => {
            if starts.first() == Some(&0) && steps.first() == Some(&1) && out_shape.first() == x.first() {
                Ok(())
            } else {
                Err("is sliced".into())
            }
        }
        Op::Gather { axis } => {
            let (data, idx) = (&node.inputs[0], &node.inputs[1]);
            if dynamic(data) && *axis == 0 {
                return Err("is gathered along".into());
            }
            if dynamic(idx) && (*axis != 0 || dynamic(data) || shape(*idx).is_empty()) {
                return Err("is in indices that gather along an inner axis".into());
            }
            Ok(())
        }
        Op::GatherElements { axis } => {
            not_axis0(*axis, "gathered along")?;
            broadcast_ok()
        }
        Op::Expand { shape: to } => {
            if dynamic(&node.inputs[0]) && x.len() == to.len() && x.first() == to.first() {
                Ok(())
            } else {
                Err(format!("is broadcast by an expand of {x:?} to {to:?}"))
            }
        }
        op => Err(format!("reaches {}, which does not keep rows apart", op.name())),
    }
}

/// Whether a graph has a run-time dim on an axis other than a leading one (an input's or an
/// output's): its buffers' marks then come from the LIR walk ([`mark`]), not from
/// [`analyze`].
pub fn inner_dims(g: &Graph) -> bool {
    g.axis_dims
        || !g.output_syms.is_empty()
        || g.input_syms.values().any(|axes| axes.iter().skip(1).any(Option::is_some))
}

/// The marks of a buffer holding a value of `shape` (at its bounds) whose axes carry the
/// symbols `axes` (slot = symbol index).
pub(crate) fn axis_marks(shape: &[usize], dtype: kiln_ir::DType, axes: &[Option<usize>]) -> Vec<RowDim> {
    let mut marks = Vec::new();
    for (a, s) in axes.iter().enumerate() {
        if let Some(s) = *s {
            let stride = shape[a + 1..].iter().product::<usize>() * dtype.size();
            marks.push(RowDim { slot: s as u32, bound: shape[a] as u64, stride: stride as u64 });
        }
    }
    marks
}

/// The leading-axis rows mark of the buffer holding each value that carries a run-time dim
/// (after lowering: `loc` gives each value's buffer).
pub(crate) fn mark_buffers(
    p: &mut Program,
    g: &Graph,
    rows: &HashMap<ValueId, usize>,
    buffer_of: impl Fn(ValueId) -> Option<kiln_ir::lir::BufferId>,
) {
    let mut marked: Vec<(ValueId, usize)> = rows.iter().map(|(&v, &s)| (v, s)).collect();
    marked.sort();
    for (v, s) in marked {
        if matches!(g.value(v).def, ValueDef::Const(_)) {
            continue;
        }
        if let Some(b) = buffer_of(v) {
            let bytes = p.buffers[b.0 as usize].bytes as u64;
            p.buffers[b.0 as usize].rows = vec![RowDim::leading(s as u32, g.symbols[s].hi as u64, bytes)];
        }
    }
}
