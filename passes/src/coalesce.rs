//! `coalesce-dims` (LIR): adjacent dims of a kernel's domain that every operand and the
//! output walk as one run are merged into one dim.
//!
//! Two adjacent parallel dims `d, d + 1` merge when the output's stride along `d` is its
//! stride along `d + 1` times the extent of `d + 1`, and every load either indexes them as
//! the bare variables `i_d, i_{d+1}` at consecutive positions of its operand's view, whose
//! strides and extents satisfy the same rule, or does not use them at all; two adjacent
//! reduction dims merge on the same condition for the loads. A variable used any other way
//! (in index arithmetic: a window's `oh·s + kh`; as a value) keeps its dim. The merged
//! kernel computes exactly what the original did, over the same elements in the same order.
//!
//! Why: an image's rows are short (56 pixels: three vectors and a masked tail), and a
//! kernel over `[n, c, h, w]` ran a task, a row setup and a masked tail per row; over
//! `[n, c, h·w]` it runs long vector rows (InstanceNormalization's last pass over 96×56×56
//! took 5,376 tasks of 56 elements). A reduction over `(h, w)` becomes one inner loop.

use kiln_ir::lir::{Expr, Instr, Kernel, Program, View};

/// Merges the mergeable adjacent dims of every kernel of `p`. Returns the number of merges.
///
/// A dim that walks a run-time axis of an operand (see `crate::rows`) does not merge into
/// the dim outside it: the run's elements along the merged dim would not be its first ones.
pub fn coalesce_dims(p: &mut Program) -> usize {
    let mut merged = 0;
    for i in 0..p.instrs.len() {
        let Instr::Kernel(k) = &p.instrs[i] else { continue };
        let mut k = k.clone();
        'again: loop {
            let run_time = crate::rows::run_time_dims(p, &k);
            for d in (0..k.domain.len().saturating_sub(1)).rev() {
                if run_time[d + 1] {
                    continue;
                }
                if let Some(m) = merge(&k, d) {
                    k = m;
                    merged += 1;
                    continue 'again;
                }
            }
            break;
        }
        p.instrs[i] = Instr::Kernel(k);
    }
    merged
}

/// Whether `e` is the bare variable `i_d`.
fn is_var(e: &Expr, d: usize) -> bool {
    matches!(e, Expr::Var(v) if *v == d)
}

/// Whether `e` mentions `i_d` or `i_{d+1}` anywhere.
fn mentions(e: &Expr, d: usize) -> bool {
    let mut m = false;
    e.visit(&mut |x| m |= is_var(x, d) || is_var(x, d + 1));
    m
}

/// Where each operand's loads index the pair `(i_d, i_{d+1})`: `Some(Some(j))` at view
/// positions `j, j + 1` in every load of it, `Some(None)` in none; `None` for an operand no
/// load reads. Returns `None` where a load or any other use of the pair does not merge.
fn pair_positions(k: &Kernel, d: usize) -> Option<Vec<Option<Option<usize>>>> {
    let mut at: Vec<Option<Option<usize>>> = vec![None; k.inputs.len()];
    let mut ok = true;
    fn walk(e: &Expr, d: usize, at: &mut [Option<Option<usize>>], ok: &mut bool) {
        match e {
            Expr::Load { operand, index, .. } => {
                let pos = |v: usize| index.iter().enumerate().filter(|(_, x)| is_var(x, v)).map(|(j, _)| j).collect();
                let (p0, p1): (Vec<usize>, Vec<usize>) = (pos(d), pos(d + 1));
                let this = match (&p0[..], &p1[..]) {
                    ([], []) => None,
                    ([j], [j1]) if *j1 == j + 1 => Some(*j),
                    _ => {
                        *ok = false;
                        return;
                    }
                };
                match at[*operand] {
                    None => at[*operand] = Some(this),
                    Some(prev) if prev != this => *ok = false,
                    _ => {}
                }
                for x in index.iter().filter(|x| !is_var(x, d) && !is_var(x, d + 1)) {
                    if mentions(x, d) && !matches!(x, Expr::Load { .. }) {
                        *ok = false;
                    }
                    walk(x, d, at, ok);
                }
            }
            Expr::Var(_) => *ok &= !is_var(e, d) && !is_var(e, d + 1),
            Expr::Const(_) | Expr::Acc => {}
            Expr::Unary(_, a) | Expr::Cast(_, _, _, a) => walk(a, d, at, ok),
            Expr::Binary(_, a, b) | Expr::Cmp(_, a, b) => {
                walk(a, d, at, ok);
                walk(b, d, at, ok);
            }
            Expr::Select(c, a, b) => {
                walk(c, d, at, ok);
                walk(a, d, at, ok);
                walk(b, d, at, ok);
            }
        }
    }
    walk(&k.body, d, &mut at, &mut ok);
    if let Some(f) = k.reduction.as_ref().and_then(|r| r.finalize.as_ref()) {
        walk(f, d, &mut at, &mut ok);
    }
    ok.then_some(at)
}

/// Whether positions `j, j + 1` of `v` are one run over extents `(e0, e1)`.
fn one_run(v: &View, j: usize, (e0, e1): (usize, usize)) -> bool {
    v.extents[j] == e0 && v.extents[j + 1] == e1 && v.strides[j] == v.strides[j + 1] * e1 as i64
}

/// `v` with positions `j, j + 1` as one.
fn merged_view(v: &View, j: usize) -> View {
    let mut m = v.clone();
    m.extents[j] *= m.extents[j + 1];
    m.strides[j] = m.strides[j + 1];
    m.extents.remove(j + 1);
    m.strides.remove(j + 1);
    m
}

/// `k` with adjacent parallel dims merged until its parallel domain is `target`, if they
/// merge so (every dim of `target` the product of a run of `k`'s). Fusion uses it to give an
/// elementwise consumer over `[n, c, h, w]` the domain `[n, c, h·w]` of its producer.
pub(crate) fn coalesce_to(k: &Kernel, target: &[usize]) -> Option<Kernel> {
    let mut k = k.clone();
    for (d, &t) in target.iter().enumerate() {
        while d < k.n_par && k.domain[d] < t {
            k = merge(&k, d).filter(|m| m.n_par < k.n_par)?;
        }
        if k.domain.get(d) != Some(&t) {
            return None;
        }
    }
    (k.n_par == target.len()).then_some(k)
}

/// `k` with dims `d` and `d + 1` merged, if they merge.
fn merge(k: &Kernel, d: usize) -> Option<Kernel> {
    let np = k.n_par;
    let parallel = d + 1 < np;
    if !parallel && d < np {
        return None;
    }
    let ext = (k.domain[d], k.domain[d + 1]);
    if parallel && !one_run(&k.output, d, ext) {
        return None;
    }
    let at = pair_positions(k, d)?;
    for (v, a) in k.inputs.iter().zip(&at) {
        if let Some(Some(j)) = a {
            if !one_run(v, *j, ext) {
                return None;
            }
        }
    }
    let mut m = k.clone();
    for (v, a) in m.inputs.iter_mut().zip(&at) {
        if let Some(Some(j)) = a {
            *v = merged_view(v, *j);
        }
    }
    if parallel {
        m.output = merged_view(&k.output, d);
        m.n_par -= 1;
    }
    m.domain[d] *= m.domain[d + 1];
    m.domain.remove(d + 1);
    let mut rewrite = |e: Expr| match e {
        Expr::Var(v) if v > d + 1 => Expr::Var(v - 1),
        Expr::Load { operand, mut index, pad } => {
            if let Some(Some(j)) = at[operand] {
                index.remove(j + 1);
            }
            Expr::Load { operand, index, pad }
        }
        e => e,
    };
    m.body = k.body.clone().map(&mut rewrite);
    if let Some(r) = &mut m.reduction {
        r.finalize = r.finalize.take().map(|f| f.map(&mut rewrite));
    }
    Some(m)
}
