//! Physical layouts: which values are stored channels-last, and the loop order of a kernel
//! (parallel dims by decreasing output stride).

use super::*;

/// The physical layout of a node's output. Convolutions write channels-last (NHWC): their
/// kernels are then matrix products over output pixels × output channels with the channels
/// contiguous (the register-blocked GEMM schedule of the CPU backend), and their input is read
/// along contiguous channels too. Elementwise ops, pooling, inference BatchNorm and the copies
/// between convolutions (Slice, Concat, a Gather along one axis) keep the layout of a
/// channels-last input, so that a chain of convolutions never changes layout; any
/// other consumer reads the NHWC value through its strides (one transposing kernel where a
/// region ends), and a Reshape/BitCast of one first copies it to row-major. Graph outputs are
/// always row-major.
pub(super) fn choose_layout(op: &Op, ins: &[(Loc, &TensorType)], out: &TensorType) -> bool {
    // (An integer convolution's i32 sums, and its i16 operand, are channels-last too.)
    if out.shape.len() != 4 || !matches!(out.dtype, DType::F32 | DType::I32 | DType::I16) {
        return false;
    }
    match op {
        // A depthwise convolution of a row-major input stays row-major: each output channel
        // reads one input channel, so its loop runs along the image rows of both.
        // A pointwise one of a row-major input is a plain product W·X over the pixels and
        // writes row-major too (see `pointwise_on_row_major`).
        Op::Conv { group, .. } => {
            (!depthwise(*group, &ins[1].1.shape) || ins[0].0.channels_last) && !pointwise_on_row_major(op, ins)
        }
        // A transposed convolution's last step is an interleaving copy, which writes either layout.
        Op::ConvTranspose { .. } => true,
        Op::MaxPool { .. } | Op::AveragePool { .. } | Op::BatchNorm { .. } | Op::Slice { .. } => ins[0].0.channels_last,
        // A copy along one axis (a nearest Resize is a Gather per spatial axis): a chain of
        // convolutions through it keeps its layout.
        Op::Gather { .. } => ins[0].0.channels_last && ins[0].1.shape.len() == 4,
        // A U-Net's or a detector's neck: the skip connection joins the up-sampled features.
        Op::Concat { .. } => ins.iter().any(|(l, _)| l.channels_last),
        op if op.is_elementwise() || matches!(op, Op::Identity) => {
            ins.iter().any(|(l, t)| l.channels_last && t.shape == out.shape)
        }
        _ => false,
    }
}

/// Whether `op` is a 1×1 convolution of stride 1 without pads, dilation or groups, of a
/// row-major f32 input: `Y[n, co, p] = Σ W[co, ci]·X[n, ci, p]` over the pixels `p`, a
/// matrix product whose B (the input) and C (the output) are both contiguous along the
/// pixels, so it runs as one in row-major with no transposing copy on either side (the
/// channels-last form read the input across channels and needed a transposing copy of its
/// whole result for a row-major consumer: two thirds of a lone MobileNetV2 expansion's
/// time).
pub(super) fn pointwise_on_row_major(op: &Op, ins: &[(Loc, &TensorType)]) -> bool {
    let Op::Conv { window, group: 1 } = op else { return false };
    let (loc, x) = &ins[0];
    window.kernel == [1, 1]
        && window.strides == [1, 1]
        && window.pads == [0; 4]
        && window.dilations == [1, 1]
        && !loc.channels_last
        && x.shape.len() == 4
        && x.dtype == DType::F32
}

/// Whether `op` is a grouped convolution (not depthwise) of a row-major f32 input, which,
/// where its result is a graph output, computes it row-major directly
/// ([`super::Lowerer::lower_conv`]).
pub(super) fn row_major_conv(op: &Op, ins: &[(Loc, &TensorType)]) -> bool {
    let Op::Conv { group, .. } = op else { return false };
    let (loc, x) = &ins[0];
    *group > 1
        && !depthwise(*group, &ins[1].1.shape)
        && !loc.channels_last
        && x.shape.len() == 4
        && x.dtype == DType::F32
}

/// Whether a convolution of `group` groups with weights of `weights` shape is depthwise (one
/// input channel per output channel group).
pub(super) fn depthwise(group: usize, weights: &[usize]) -> bool {
    group > 1 && weights.get(1) == Some(&1)
}

/// Orders a kernel's parallel dims by decreasing output stride, so that the innermost loop
/// runs along contiguous output (a channels-last output: channels innermost). Row-major
/// kernels are left as they are.
///
/// Then, for a kernel without reduction that reads an operand across the innermost dim (a
/// transpose: NHWC to NCHW, reading channels while writing pixels), the outer dim along
/// which that operand is contiguous becomes the last outer dim, so that consecutive rows
/// read the same cache lines: a 32-channel 112×112 NHWC→NCHW copy read every line 32
/// times from L2 otherwise (once per channel, a whole image apart), and took 4× longer.
pub(super) fn order_loops(k: &mut Kernel) {
    // A reduction already running along contiguous output keeps its order: a row-major
    // convolution's `[n, oh, co, ow]`, whose output channels must stay next to the pixels
    // of a row for the GEMM schedule (rows: channels; columns: pixels).
    let contiguous_reduction = k.reduction.is_some() && k.n_par > 0 && k.output.strides[k.n_par - 1] == 1;
    if let Some(perm) = stride_order(&k.output.strides[..k.n_par]).filter(|_| !contiguous_reduction) {
        permute_parallel(k, &perm);
    }
    let mut np = k.n_par;
    if k.reduction.is_some() || np < 3 || k.output.strides[np - 1] != 1 {
        return;
    }
    // A row of a few elements that continues the next dim's in the output, across an
    // operand contiguous along another dim (the interleave of a 3-D transposed convolution's
    // phases: `(qx, rx)`, 2 elements a row): the two become one row, its index divided and
    // taken modulo for the loads, and the operand's dim moves next to it below.
    let contiguous_elsewhere = |k: &Kernel| {
        (0..k.inputs.len()).any(|op| {
            var_strides(k, op).is_some_and(|st| st[np - 1] != Some(0) && (0..np - 2).any(|e| st[e] == Some(1)))
        })
    };
    if k.domain[np - 1] <= 4 && k.output.strides[np - 2] == k.domain[np - 1] as i64 && contiguous_elsewhere(k) {
        merge_inner(k);
        np -= 1;
        if np < 3 {
            return;
        }
    }
    for op in 0..k.inputs.len() {
        let Some(st) = var_strides(k, op) else { continue };
        if matches!(st[np - 1], Some(-1..=1)) {
            continue;
        }
        // A row of a few elements (an RGB image's channels, made innermost by the NHWC
        // copy of its NCHW input): the operand's contiguous dim becomes the innermost loop
        // instead, long rows of contiguous reads rather than a task per pixel.
        if k.domain[np - 1] <= 4 {
            if let Some(e) = (0..np - 1).rev().find(|&e| st[e] == Some(1) && k.domain[e] > 4) {
                let mut perm: Vec<usize> = (0..np).filter(|&d| d != e).collect();
                perm.push(e);
                permute_parallel(k, &perm);
                return;
            }
        }
        if let Some(e) = (0..np - 2).rev().find(|&e| st[e] == Some(1) && k.domain[e] > 1) {
            let mut perm: Vec<usize> = (0..np).filter(|&d| d != e && d != np - 1).collect();
            perm.push(e);
            perm.push(np - 1);
            permute_parallel(k, &perm);
            return;
        }
    }
}

/// Merges a kernel's two innermost parallel dims (no reduction; the output contiguous
/// across them) into one, indexed by its quotient and remainder by the last's extent.
fn merge_inner(k: &mut Kernel) {
    let np = k.n_par;
    let inner = k.domain[np - 1] as i64;
    k.domain[np - 2] *= k.domain[np - 1];
    k.domain.pop();
    k.n_par -= 1;
    k.output.extents[np - 2] *= k.output.extents[np - 1];
    k.output.extents.pop();
    k.output.strides[np - 2] = k.output.strides[np - 1];
    k.output.strides.pop();
    k.body = std::mem::replace(&mut k.body, Expr::Acc).map(&mut |e| match e {
        Expr::Var(d) if d == np - 2 => Expr::div(Expr::Var(np - 2), Expr::i64(inner)),
        Expr::Var(d) if d == np - 1 => Expr::bin(BinaryOp::Mod { fmod: false }, Expr::Var(np - 2), Expr::i64(inner)),
        e => e,
    });
}

/// `Some(Some(d))` for `var d ± c`, `Some(None)` for a constant, else `None`.
fn var_offset(e: &Expr) -> Option<Option<usize>> {
    use kiln_ir::op::BinaryOp as B;
    match e {
        Expr::Var(d) => Some(Some(*d)),
        Expr::Const(_) => Some(None),
        Expr::Binary(B::Add | B::Sub, a, c) if matches!(**c, Expr::Const(_)) => var_offset(a),
        _ => None,
    }
}

/// An operand's stride along each domain var, when every load of it has the same indices:
/// `None` for a var that an index other than a variable plus or minus a constant reads
/// (an interleave's `o / 2`).
pub(crate) fn var_strides(k: &Kernel, op: usize) -> Option<Vec<Option<i64>>> {
    let mut out: Option<Vec<Option<i64>>> = None;
    let mut ok = true;
    let mut note = |e: &Expr| {
        let Expr::Load { operand, index, .. } = e else { return };
        if *operand != op {
            return;
        }
        let mut st = vec![Some(0i64); k.domain.len()];
        for (ix, &s) in index.iter().zip(&k.inputs[op].strides) {
            match var_offset(ix) {
                Some(Some(d)) => st[d] = st[d].map(|t| t + s),
                Some(None) => {}
                None => ix.visit(&mut |x| {
                    if let Expr::Var(d) = x {
                        st[*d] = None;
                    }
                }),
            }
        }
        match &out {
            Some(prev) if *prev != st => ok = false,
            _ => out = Some(st),
        }
    };
    k.body.visit(&mut note);
    if let Some(f) = k.reduction.as_ref().and_then(|r| r.finalize.as_ref()) {
        f.visit(&mut note);
    }
    out.filter(|_| ok)
}

/// The dims sorted by decreasing stride (stable), unless they already are.
pub(crate) fn stride_order(strides: &[i64]) -> Option<Vec<usize>> {
    if strides.len() < 2 || strides.windows(2).all(|w| w[0] >= w[1]) {
        return None;
    }
    let mut perm: Vec<usize> = (0..strides.len()).collect();
    perm.sort_by_key(|&d| std::cmp::Reverse(strides[d]));
    Some(perm)
}

/// Reorders a kernel's parallel dims (new dim `i` is old dim `perm[i]`), then writes every
/// load whose index is a list of distinct variables with its view dims in variable order, so
/// that a load of a value in the kernel's own loop order has the identity index (what fusion
/// and in-place reuse look for).
pub(crate) fn permute_parallel(k: &mut Kernel, perm: &[usize]) {
    let np = k.n_par;
    debug_assert_eq!(perm.len(), np);
    // Old variable d becomes variable inv[d].
    let mut inv: Vec<usize> = (0..k.domain.len()).collect();
    for (new, &old) in perm.iter().enumerate() {
        inv[old] = new;
    }
    let mut domain: Vec<usize> = perm.iter().map(|&d| k.domain[d]).collect();
    domain.extend_from_slice(&k.domain[np..]);
    k.domain = domain;
    let o = &mut k.output;
    o.extents = perm.iter().map(|&d| o.extents[d]).collect();
    o.strides = perm.iter().map(|&d| o.strides[d]).collect();
    let rename = |e: Expr| match e {
        Expr::Var(d) => Expr::Var(inv[d]),
        e => e,
    };
    k.body = std::mem::replace(&mut k.body, Expr::Acc).map(&mut { rename });
    if let Some(r) = &mut k.reduction {
        r.finalize = r.finalize.take().map(|e| e.map(&mut { rename }));
    }
    // Operand views are shared by every load of the operand: only operands all of whose
    // loads have the same pure-variable index are rewritten.
    let mut idx: Vec<Option<Option<Vec<usize>>>> = vec![None; k.inputs.len()];
    let mut note = |e: &Expr| {
        if let Expr::Load { operand, index, .. } = e {
            let vs: Option<Vec<usize>> =
                index.iter().map(|ix| if let Expr::Var(d) = ix { Some(*d) } else { None }).collect();
            let vs = vs.filter(|v| {
                let mut s = v.clone();
                s.sort_unstable();
                s.dedup();
                s.len() == v.len()
            });
            let slot = &mut idx[*operand];
            *slot = match slot.take() {
                None => Some(vs),
                Some(prev) => Some(if prev == vs { prev } else { None }),
            };
        }
    };
    k.body.visit(&mut note);
    if let Some(f) = k.reduction.as_ref().and_then(|r| r.finalize.as_ref()) {
        f.visit(&mut note);
    }
    let mut order: Vec<Option<Vec<usize>>> = vec![None; k.inputs.len()];
    for (op, vs) in idx.into_iter().enumerate() {
        let Some(Some(vs)) = vs else { continue };
        let mut pos: Vec<usize> = (0..vs.len()).collect();
        pos.sort_by_key(|&p| vs[p]);
        if pos.iter().enumerate().any(|(i, &p)| i != p) {
            let v = &mut k.inputs[op];
            v.extents = pos.iter().map(|&p| v.extents[p]).collect();
            v.strides = pos.iter().map(|&p| v.strides[p]).collect();
            order[op] = Some(pos.iter().map(|&p| vs[p]).collect());
        }
    }
    let reindex = |e: Expr| match e {
        Expr::Load { operand, pad, .. } if order[operand].is_some() => Expr::Load {
            operand,
            index: order[operand].as_ref().expect("checked").iter().map(|&d| Expr::Var(d)).collect(),
            pad,
        },
        e => e,
    };
    k.body = std::mem::replace(&mut k.body, Expr::Acc).map(&mut { reindex });
    if let Some(r) = &mut k.reduction {
        r.finalize = r.finalize.take().map(|e| e.map(&mut { reindex }));
    }
}
