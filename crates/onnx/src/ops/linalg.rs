//! Linear algebra: MatMul and Gemm (HIR ops), Einsum (a batched MatMul when it has that
//! form, broadcasting otherwise) and Det (the Leibniz formula for small matrices).

use super::builders::{bin, konst_as, last_axis, reshape, scalar, tmp};
use super::{invalid, unsupported, NodeCx, OpError, OpResult};
use kiln_ir::{BinaryOp as B, DType, Op, ReduceOp, ValueId};

/// Parses one Einsum term into labels: letters as their code, the dims an ellipsis covers
/// as `ELLIPSIS + k` (right-aligned over `ell` ellipsis dims, for broadcasting).
const ELLIPSIS: u32 = 1 << 16;

fn einsum_term(term: &str, rank: Option<usize>, ell: usize) -> Result<Vec<u32>, String> {
    let letters = term.replace("...", "");
    if letters.chars().any(|c| !c.is_ascii_alphabetic()) {
        return Err(format!("term {term:?} has a character that is not a letter"));
    }
    let has_ell = term.contains("...");
    let n_ell = match (has_ell, rank) {
        (false, _) => 0,
        (true, Some(r)) => r.checked_sub(letters.len()).ok_or_else(|| format!("term {term:?} exceeds rank {r}"))?,
        (true, None) => ell,
    };
    let mut out = Vec::new();
    let (before, after) = term.split_once("...").unwrap_or((term, ""));
    out.extend(before.chars().map(|c| c as u32));
    if has_ell {
        out.extend((ell - n_ell..ell).map(|k| ELLIPSIS + k as u32));
    }
    out.extend(after.chars().map(|c| c as u32));
    if let Some(r) = rank {
        if out.len() != r {
            return Err(format!("term {term:?} does not match an operand of rank {r}"));
        }
    }
    Ok(out)
}

/// Einsum by broadcasting: each operand's repeated labels reduced to their diagonal (a mask
/// and a sum), its axes put in one global label order with unit dims for labels it lacks,
/// the operands multiplied, the labels missing from the output summed, and the result
/// transposed to the output's order.
pub(super) fn einsum(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let xs = cx.all_inputs()?;
    let Some(eq) = cx.attrs.string("equation")? else {
        return invalid("attribute `equation` is missing");
    };
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != xs.len() || xs.is_empty() {
        return invalid(format!("equation {eq:?} has {} terms for {} inputs", terms.len(), xs.len()));
    }
    let dtype = cx.ty(xs[0]).dtype;
    if dtype == DType::Bool || xs.iter().any(|&x| cx.ty(x).dtype != dtype) {
        return invalid("Einsum needs numeric inputs of one dtype");
    }
    let ell = terms
        .iter()
        .zip(&xs)
        .filter(|(t, _)| t.contains("..."))
        .map(|(t, &x)| cx.rank(x).saturating_sub(t.replace("...", "").len()))
        .max()
        .unwrap_or(0);
    let mut labels = Vec::new();
    let mut sizes: std::collections::BTreeMap<u32, usize> = std::collections::BTreeMap::new();
    for (t, &x) in terms.iter().zip(&xs) {
        let l = einsum_term(t, Some(cx.rank(x)), ell).map_err(OpError::Invalid)?;
        for (&c, &d) in l.iter().zip(&cx.shape(x)) {
            let e = sizes.entry(c).or_insert(d);
            if *e == 1 {
                *e = d;
            } else if d != 1 && *e != d {
                return invalid(format!("label sizes differ in {eq:?}: {e} and {d}"));
            }
        }
        labels.push(l);
    }
    let out_labels: Vec<u32> = match &rhs {
        Some(r) => einsum_term(r, None, ell).map_err(OpError::Invalid)?,
        None => {
            let mut o: Vec<u32> = (0..ell as u32).map(|k| ELLIPSIS + k).collect();
            let mut once: Vec<u32> = sizes
                .keys()
                .copied()
                .filter(|&c| c < ELLIPSIS && labels.iter().flatten().filter(|&&l| l == c).count() == 1)
                .collect();
            once.sort_unstable();
            o.extend(once);
            o
        }
    };
    if out_labels.iter().any(|c| !sizes.contains_key(c)) {
        return invalid(format!("output of {eq:?} has a label no input has"));
    }
    if let Some(y) = einsum_matmul(cx, &xs, &labels, &out_labels, &sizes)? {
        return Ok(vec![y]);
    }
    // Global order: output labels first, then the summed ones.
    let mut order = out_labels.clone();
    order.extend(sizes.keys().copied().filter(|c| !out_labels.contains(c)));
    let full: Vec<usize> = order.iter().map(|c| sizes[c]).collect();
    if crate::data::checked_numel(&full).is_none_or(|n| n > 1 << 28) {
        return unsupported(format!("Einsum {eq:?} over {full:?} is too large to broadcast"));
    }
    let mut prod: Option<ValueId> = None;
    for (mut l, &x0) in labels.into_iter().zip(&xs) {
        let mut x = x0;
        // Diagonals of repeated labels.
        while let Some((p, q)) = (0..l.len()).find_map(|p| (p + 1..l.len()).find(|&q| l[q] == l[p]).map(|q| (p, q))) {
            let s = cx.shape(x);
            let n = s[p];
            let mut ms = vec![1; s.len()];
            ms[p] = n;
            ms[q] = n;
            let eye: Vec<f64> = (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
            // The mask's unit dims between p and q need the mask laid out in full rank.
            let eye = konst_as(cx, dtype, vec![n, n], &eye);
            let eye = reshape(cx, eye, ms)?;
            let m = bin(cx, B::Mul, x, eye)?;
            x = tmp(cx, Op::Reduce { op: ReduceOp::Sum, axes: vec![q], keepdims: false }, &[m], "diag")?;
            l.remove(q);
        }
        // Transpose to the global order, then unit dims for missing labels.
        let mut perm: Vec<usize> = (0..l.len()).collect();
        perm.sort_by_key(|&i| order.iter().position(|&c| c == l[i]));
        if perm.iter().enumerate().any(|(i, &p)| i != p) {
            x = tmp(cx, Op::Transpose { perm: perm.clone() }, &[x], "align")?;
        }
        let s = cx.shape(x);
        let shape: Vec<usize> =
            order.iter().map(|c| perm.iter().position(|&i| l[i] == *c).map_or(1, |k| s[k])).collect();
        x = reshape(cx, x, shape)?;
        prod = Some(match prod {
            None => x,
            Some(p) => bin(cx, B::Mul, p, x)?,
        });
    }
    let p = prod.ok_or_else(|| OpError::Invalid("no operands".into()))?;
    let summed: Vec<usize> = (out_labels.len()..order.len()).collect();
    let expand = |cx: &mut NodeCx, v: ValueId| -> OpResult<ValueId> {
        let target: Vec<usize> = full[..out_labels.len()].to_vec();
        if cx.shape(v) == target {
            Ok(v)
        } else {
            tmp(cx, Op::Expand { shape: target }, &[v], "broadcast")
        }
    };
    let r = if summed.is_empty() {
        p
    } else {
        tmp(cx, Op::Reduce { op: ReduceOp::Sum, axes: summed, keepdims: false }, &[p], "contract")?
    };
    let r = expand(cx, r)?;
    Ok(vec![cx.emit_out(Op::Identity, &[r], 0)?])
}

/// Two operands without repeated or one-sided summed labels, and with equal dims for the
/// shared ones: a batched MatMul `[batch, free_a, k] @ [batch, k, free_b]` between
/// transposes and reshapes (no broadcast intermediate). `None` when the equation does not
/// have that form.
fn einsum_matmul(
    cx: &mut NodeCx,
    xs: &[ValueId],
    labels: &[Vec<u32>],
    out: &[u32],
    sizes: &std::collections::BTreeMap<u32, usize>,
) -> OpResult<Option<ValueId>> {
    let ([a, b], [la, lb]) = (xs, labels) else {
        return Ok(None);
    };
    let distinct = |l: &[u32]| l.iter().enumerate().all(|(i, c)| !l[..i].contains(c));
    if !distinct(la) || !distinct(lb) || !distinct(out) {
        return Ok(None);
    }
    // Every label's dims must agree exactly (no size-1 broadcasting here).
    let dim = |l: &[u32], x: &[usize], c: u32| l.iter().position(|&d| d == c).map(|i| x[i]);
    let (sa, sb) = (cx.shape(*a), cx.shape(*b));
    for &c in la.iter().chain(lb) {
        if dim(la, &sa, c).unwrap_or(sizes[&c]) != sizes[&c] || dim(lb, &sb, c).unwrap_or(sizes[&c]) != sizes[&c] {
            return Ok(None);
        }
    }
    let (in_a, in_b, in_o) = (|c: &u32| la.contains(c), |c: &u32| lb.contains(c), |c: &u32| out.contains(c));
    if la.iter().chain(lb).any(|c| !(in_o(c) || (in_a(c) && in_b(c)))) {
        return Ok(None); // a label summed within one operand
    }
    let batch: Vec<u32> = out.iter().copied().filter(|c| in_a(c) && in_b(c)).collect();
    let free_a: Vec<u32> = la.iter().copied().filter(|c| in_o(c) && !in_b(c)).collect();
    let free_b: Vec<u32> = lb.iter().copied().filter(|c| in_o(c) && !in_a(c)).collect();
    let contr: Vec<u32> = la.iter().copied().filter(|c| !in_o(c)).collect();
    let prod = |ls: &[u32]| ls.iter().map(|c| sizes[c]).product::<usize>();
    let arrange = |cx: &mut NodeCx, x: ValueId, l: &[u32], order: &[u32], shape: Vec<usize>| {
        let perm: Vec<usize> = order.iter().map(|c| l.iter().position(|d| d == c).unwrap_or(0)).collect();
        let t = if perm.iter().enumerate().all(|(i, &p)| i == p) {
            x
        } else {
            tmp(cx, Op::Transpose { perm }, &[x], "einsum")?
        };
        reshape(cx, t, shape)
    };
    let (nb, nfa, nfb, nk) = (prod(&batch), prod(&free_a), prod(&free_b), prod(&contr));
    let oa: Vec<u32> = batch.iter().chain(&free_a).chain(&contr).copied().collect();
    let ob: Vec<u32> = batch.iter().chain(&contr).chain(&free_b).copied().collect();
    let a3 = arrange(cx, *a, la, &oa, vec![nb, nfa, nk])?;
    let b3 = arrange(cx, *b, lb, &ob, vec![nb, nk, nfb])?;
    let m = tmp(cx, Op::MatMul, &[a3, b3], "einsum")?;
    let mid: Vec<u32> = batch.iter().chain(&free_a).chain(&free_b).copied().collect();
    let ms: Vec<usize> = mid.iter().map(|c| sizes[c]).collect();
    let m = reshape(cx, m, ms)?;
    let perm: Vec<usize> = out.iter().map(|c| mid.iter().position(|d| d == c).unwrap_or(0)).collect();
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return Ok(Some(cx.emit_out(Op::Identity, &[m], 0)?));
    }
    Ok(Some(cx.emit_out(Op::Transpose { perm }, &[m], 0)?))
}

/// Det of the trailing square matrices by the Leibniz formula (sum over permutations), for
/// n ≤ 5 (120 products).
pub(super) fn det(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let t = cx.ty(x);
    if t.dtype != DType::F32 || t.rank() < 2 {
        return unsupported(format!("Det of {t} (float32 matrices)"));
    }
    let r = t.rank();
    let n = t.shape[r - 1];
    if t.shape[r - 2] != n {
        return invalid(format!("Det needs square matrices, got {t}"));
    }
    if n > 5 {
        return unsupported(format!("Det of {n}×{n} matrices (at most 5×5)"));
    }
    let batch: Vec<usize> = t.shape[..r - 2].to_vec();
    let mut flat_shape = batch.clone();
    flat_shape.push(n * n);
    let flat = reshape(cx, x, flat_shape)?;
    let mut elems = Vec::with_capacity(n * n);
    for i in 0..n * n {
        elems.push(last_axis(cx, flat, i, 1, 1)?);
    }
    let mut perm: Vec<usize> = (0..n).collect();
    let mut total: Option<ValueId> = None;
    loop {
        // The permutation's sign from its inversion count.
        let inversions =
            (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))).filter(|&(i, j)| perm[i] > perm[j]).count();
        let mut prod = elems[perm[0]];
        for (i, &p) in perm.iter().enumerate().skip(1) {
            prod = bin(cx, B::Mul, prod, elems[i * n + p])?;
        }
        total = Some(match total {
            None if inversions % 2 == 0 => prod,
            None => {
                let m = scalar(cx, DType::F32, -1.0);
                bin(cx, B::Mul, m, prod)?
            }
            Some(acc) => bin(cx, if inversions % 2 == 0 { B::Add } else { B::Sub }, acc, prod)?,
        });
        if !next_permutation(&mut perm) {
            break;
        }
    }
    let y = reshape(cx, total.expect("n >= 1"), batch)?;
    Ok(vec![cx.emit_out(Op::Identity, &[y], 0)?])
}

/// The next permutation in lexicographic order; false after the last.
fn next_permutation(p: &mut [usize]) -> bool {
    let Some(i) = (1..p.len()).rev().find(|&i| p[i - 1] < p[i]) else {
        return false;
    };
    let j = (i..p.len()).rev().find(|&j| p[j] > p[i - 1]).expect("exists");
    p.swap(i - 1, j);
    p[i..].reverse();
    true
}

pub(super) fn matmul(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    Ok(vec![cx.emit_out(Op::MatMul, &[a, b], 0)?])
}

pub(super) fn gemm(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let alpha = cx.attrs.float_or("alpha", 1.0)?;
    let beta = cx.attrs.float_or("beta", 1.0)?;
    let trans_a = cx.attrs.int_or("transA", 0)? != 0;
    let trans_b = cx.attrs.int_or("transB", 0)? != 0;
    let mut ins = vec![cx.input(0)?, cx.input(1)?];
    ins.extend(cx.opt_input(2));
    Ok(vec![cx.emit_out(Op::Gemm { alpha, beta, trans_a, trans_b }, &ins, 0)?])
}
