//! `split-reductions` (LIR): a long reduction whose kernel has few outputs is computed in
//! two kernels, partial results over `T` equal parts of the reduction and then their
//! combination, so that its work is shared along the reduction itself.
//!
//! A kernel `out[p] = fin(reduce_r body(p, r))` with one reduction dim of extent `R = T·L`
//! becomes
//!
//! ```text
//! part[t, p] = reduce_{r' < L} body(p, t·L + r')       (parallel over t and p)
//! out[p]     = fin(reduce_{t < T} part[t, p])
//! ```
//!
//! with the same combination (add, max or min) and initial value; only the order of the
//! combination changes (`f32` sums differ in their rounding, as any reordering does).
//!
//! Why: a global average pool or a squeeze-and-excitation mean over a channels-last image
//! reduces over every pixel for each of few channels. Shared by channels, each thread read
//! its channels from every pixel, half of which the other core had just written (and left
//! in its own cache): on a 2-core Xeon, EfficientNet-B0's means took as long at 2 threads
//! as at 1, and the scaling multiply that reads the image next, in place, waited on each
//! line the other core still shared (3× slower at 2 threads than at 1). Split along the
//! pixels, each thread reduces the rows it wrote.

use kiln_ir::lir::{BufferKind, Combine, Expr, Instr, Kernel, Program, Reduction, View};
use kiln_ir::DType;

/// Reductions at least this long may be split.
const MIN_LEN: usize = 128;
/// Parts at most (a power of two).
const MAX_PARTS: usize = 16;
/// Elements a part reduces at least.
const MIN_PART: usize = 32;
/// Tasks (outputs, counted in rows of 16 along the innermost output dim) below which a
/// reduction across its outputs is split ([`across`]).
const FEW_TASKS: usize = 64;

/// Splits every long reduction of few outputs in `p`. Returns the number split.
pub fn split_reductions(p: &mut Program) -> usize {
    let mut split = 0;
    let mut i = 0;
    while i < p.instrs.len() {
        let found = match &p.instrs[i] {
            // Kept whole over run-time rows: its dim 0 stays the rows (see rows.rs).
            Instr::Kernel(k) if crate::rows::touches_rows(p, k) => None,
            Instr::Kernel(k) => parts(k).map(|t| (k.clone(), t)),
            _ => None,
        };
        let Some((k, t)) = found else {
            i += 1;
            continue;
        };
        let (first, second) = split_kernel(p, &k, t);
        p.instrs[i] = Instr::Kernel(first);
        p.instrs.insert(i + 1, Instr::Kernel(second));
        split += 1;
        i += 2;
    }
    split
}

/// How many parts `k`'s reduction is split into, if it is: the most (a power of two up to
/// [`MAX_PARTS`]) that divide its extent into parts of [`MIN_PART`] elements or more.
fn parts(k: &Kernel) -> Option<usize> {
    let r = k.reduction.as_ref()?;
    let np = k.n_par;
    if k.domain.len() != np + 1 || !matches!(r.combine, Combine::Add | Combine::Max | Combine::Min) {
        return None;
    }
    let ops: Vec<DType> = k.inputs.iter().map(|v| v.dtype).collect();
    if k.body.dtype(&ops, None) != DType::F32 || k.output.dtype != DType::F32 {
        return None;
    }
    let len = k.domain[np];
    let tasks = match np {
        0 => 1,
        _ => k.domain[..np - 1].iter().product::<usize>() * k.domain[np - 1].div_ceil(16),
    };
    if len < MIN_LEN || tasks >= FEW_TASKS || (np > 0 && !across(k)) {
        return None;
    }
    let t =
        (1..=MAX_PARTS.ilog2()).rev().map(|e| 1usize << e).find(|&t| len.is_multiple_of(t) && len / t >= MIN_PART)?;
    Some(t)
}

/// Whether `k` reduces across its outputs: some operand steps further along the reduction
/// than along the innermost output dim (a mean over the pixels of a channels-last image,
/// whose channels are the outputs), so that sharing the outputs among threads gives each a
/// column through all of the operand. A row reduction (contiguous along the reduction, one
/// row per output) is shared by rows already.
fn across(k: &Kernel) -> bool {
    let np = k.n_par;
    (0..k.inputs.len()).any(|op| {
        crate::lower::var_strides(k, op).is_some_and(|st| match (st[np - 1], st[np]) {
            (Some(inner), Some(red)) => inner != 0 && red.abs() > inner.abs(),
            _ => false,
        })
    })
}

/// The two kernels of `k` split into `t` parts, and the buffer of the partial results
/// (added to `p`).
fn split_kernel(p: &mut Program, k: &Kernel, t: usize) -> (Kernel, Kernel) {
    let np = k.n_par;
    let len = k.domain[np] / t;
    let red = k.reduction.as_ref().expect("a reduction");
    let mut part_shape = vec![t];
    part_shape.extend_from_slice(&k.domain[..np]);
    let elems: usize = part_shape.iter().product();
    let buf = p.add_buffer(BufferKind::Activation, elems * DType::F32.size(), format!("{}.parts", k.name));
    let part = View::dense(buf, DType::F32, &part_shape);

    // Parts: the part index first, the output's dims after it, the reduction within a part.
    let mut domain = part_shape.clone();
    domain.push(len);
    let body = k.body.clone().map(&mut |e| match e {
        Expr::Var(d) if d < np => Expr::Var(d + 1),
        Expr::Var(d) if d == np => Expr::add(Expr::mul(Expr::Var(0), Expr::i64(len as i64)), Expr::Var(np + 1)),
        e => e,
    });
    let mut first = Kernel {
        name: format!("{}.parts", k.name),
        domain,
        n_par: np + 1,
        inputs: k.inputs.clone(),
        output: part.clone(),
        body,
        reduction: Some(Reduction { combine: red.combine, init: red.init, finalize: None }),
        origin: k.origin.clone(),
    };
    crate::fuse::compact(&mut first);

    // The combination of the parts, then the kernel's own finalizer (whose loads shift by
    // the one operand in front).
    let mut domain = k.domain[..np].to_vec();
    domain.push(t);
    let mut inputs = vec![part];
    inputs.extend(k.inputs.iter().cloned());
    let index = std::iter::once(Expr::Var(np)).chain((0..np).map(Expr::Var)).collect();
    let finalize = red.finalize.clone().map(|f| crate::fuse::shift_operands(f, 1));
    let mut second = Kernel {
        name: k.name.clone(),
        domain,
        n_par: np,
        inputs,
        output: k.output.clone(),
        body: Expr::load(0, index),
        reduction: Some(Reduction { combine: red.combine, init: red.init, finalize }),
        origin: k.origin.clone(),
    };
    crate::fuse::compact(&mut second);
    (first, second)
}
