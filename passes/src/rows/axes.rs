//! Run-time dims on any axis: what a second import of the model says about them.
//!
//! The model is imported at its bounds and once more per symbol with that symbol at another
//! size. The graphs must be the same but for the axes the symbol sizes: each value's shape
//! may differ only on axes whose extent is `per` times the symbol (`[b, s, h]` and `[b, s·h]`
//! alike) or `per` times the symbol plus a constant (a key/value cache's present, one longer
//! than its past: a derived symbol, [`kiln_ir::DimSymbol::from`], checked on a third import),
//! a reshape's, expand's or slice's target only there, and a constant only by growing
//! along such axes with the same leading block (a range up to the size, a mask of it). What
//! is compiled at the bound, its buffers laid out at the bound shape, then holds for every
//! size where each kernel reads only the first indices of those axes (checked on the LIR,
//! [`super::lir`]).

use std::collections::{BTreeMap, HashMap};

use kiln_ir::{DimSymbol, Graph, Op, Tensor, ValueId};

use crate::PassError;

/// Per axis: the symbol sizing it and how many of its indices make one of the symbol.
type Axes = Vec<Option<(usize, usize)>>;

/// Per axis, as found: the symbol, how many indices make one of it, and the constant added
/// to it (the axis is `per · (symbol + offset)` long).
type Found = Vec<Option<(usize, usize, i64)>>;

/// What [`compare_axes`] found.
#[derive(Debug, Default)]
pub struct AxisDims {
    /// The run-time axes of every value (and constant) that has one.
    pub values: HashMap<ValueId, Axes>,
    /// The symbol on each axis of the graph outputs that have one ([`Graph::output_syms`]).
    pub outputs: BTreeMap<usize, Vec<Option<usize>>>,
    /// The symbols derived from the graph's (an axis sized with an offset), numbered after
    /// them: the caller appends them to [`Graph::symbols`].
    pub derived: Vec<DimSymbol>,
}

impl AxisDims {
    /// Whether every run-time axis is a leading one (the row analysis, [`super::analyze`],
    /// can follow them) and none is derived.
    pub fn leading_only(&self) -> bool {
        self.derived.is_empty() && self.values.values().all(|a| a.iter().skip(1).all(Option::is_none))
    }
    /// The symbols some axis derives from with an offset: their sizes must be checked on one
    /// more import ([`compare_axes`] with it), as two sizes fit any line.
    pub fn offset_bases(&self) -> Vec<usize> {
        let mut b: Vec<usize> = self.derived.iter().filter_map(|d| d.from.map(|(s, _)| s)).collect();
        b.dedup();
        b
    }
    /// The constants whose leading axis grows with a dim (a mask of its size, a range up to
    /// it): the seeds of [`super::analyze`].
    pub fn seeds(&self, g: &Graph) -> HashMap<ValueId, usize> {
        self.values
            .iter()
            .filter(|(v, _)| g.const_of(**v).is_some())
            .filter_map(|(&v, a)| a.first().copied().flatten().map(|(s, _)| (v, s)))
            .collect()
    }
}

/// Checks `hi` (the graph at its bounds) against each `(symbol, graph)` of `alts` (the model
/// with that symbol at another size), as the module says.
pub fn compare_axes(hi: &Graph, alts: &[(usize, &Graph)]) -> Result<AxisDims, PassError> {
    let mut found: HashMap<ValueId, Found> = HashMap::new();
    for &(s, alt) in alts {
        compare_one(hi, s, alt, &mut found)?;
    }
    // Each (symbol, offset) with an offset becomes a derived symbol, in that order (a value
    // with such an axis, the first, names it in an error).
    let mut first: BTreeMap<(usize, i64), ValueId> = BTreeMap::new();
    for (&v, a) in &found {
        for &(s, _, c) in a.iter().flatten().filter(|x| x.2 != 0) {
            first.entry((s, c)).and_modify(|w| *w = (*w).min(v)).or_insert(v);
        }
    }
    let mut derived: Vec<DimSymbol> = Vec::new();
    let mut index: BTreeMap<(usize, i64), usize> = BTreeMap::new();
    for ((s, c), v) in first {
        let base = &hi.symbols[s];
        let lo = base.lo as i64 + c;
        if lo < 0 {
            return Err(PassError::RunTimeDim {
                node: hi.value(v).name.clone(),
                op: "value".into(),
                message: format!(
                    "an axis is `{}` {c:+}, below 0 at its lower bound {}: raise the bound",
                    base.name, base.lo
                ),
            });
        }
        index.insert((s, c), hi.symbols.len() + derived.len());
        derived.push(DimSymbol {
            name: format!("{}{c:+}", base.name),
            lo: lo as usize,
            hi: (base.hi as i64 + c) as usize,
            from: Some((s, c)),
        });
    }
    let axes: HashMap<ValueId, Axes> = found
        .into_iter()
        .map(|(v, a)| {
            let a =
                a.into_iter().map(|x| x.map(|(s, per, c)| (if c == 0 { s } else { index[&(s, c)] }, per))).collect();
            (v, a)
        })
        .collect();
    let mut outs = BTreeMap::new();
    for (i, &o) in hi.outputs.iter().enumerate() {
        let Some(a) = axes.get(&o) else { continue };
        let mut syms = Vec::with_capacity(a.len());
        for &x in a {
            match x {
                Some((s, 1)) => syms.push(Some(s)),
                Some((s, per)) => {
                    return Err(PassError::RunTimeDim {
                        node: hi.value(o).name.clone(),
                        op: "output".into(),
                        message: format!(
                            "an axis is {per} times the run-time dim `{}`: a graph output must keep the dim as its \
                             own axis",
                            hi.symbols.iter().chain(&derived).nth(s).map_or("?", |d| d.name.as_str())
                        ),
                    })
                }
                None => syms.push(None),
            }
        }
        if syms.iter().any(Option::is_some) {
            outs.insert(i, syms);
        }
    }
    Ok(AxisDims { values: axes, outputs: outs, derived })
}

/// The axes on which `a` (at the bound `h1` of symbol `s`) differs from `b` (at `h2`), each
/// as `(axis, per, offset)`: `per · (s + offset)` long; `None` if they differ otherwise.
fn differing(a: &[usize], b: &[usize], h1: usize, h2: usize) -> Option<Vec<(usize, usize, i64)>> {
    if a.len() != b.len() || h1 == h2 {
        return None;
    }
    let mut out = Vec::new();
    for (d, (&x, &y)) in a.iter().zip(b).enumerate() {
        if x == y {
            continue;
        }
        let (dx, dh) = (x as i64 - y as i64, h1 as i64 - h2 as i64);
        if dx % dh != 0 || dx / dh <= 0 {
            return None;
        }
        let per = dx / dh;
        let off = x as i64 - per * h1 as i64;
        if off % per != 0 {
            return None;
        }
        out.push((d, per as usize, off / per));
    }
    Some(out)
}

/// Whether the smaller of `t1`, `t2` (differing on `axes`) is the leading block of the larger.
fn leading_block(t1: &Tensor, t2: &Tensor) -> bool {
    let (big, small) = if t1.data.len() >= t2.data.len() { (t1, t2) } else { (t2, t1) };
    let (bs, ss) = (&big.ty.shape, &small.ty.shape);
    if big.ty.dtype != small.ty.dtype || bs.len() != ss.len() || bs.iter().zip(ss).any(|(b, s)| s > b) {
        return false;
    }
    let es = big.ty.dtype.size();
    let n: usize = ss.iter().product();
    if n == 0 {
        return true;
    }
    if es == 0 || big.data.len() < bs.iter().product::<usize>() * es || small.data.len() < n * es {
        return false;
    }
    // Row-major strides of the larger, in elements.
    let mut strides = vec![1usize; bs.len()];
    for d in (0..bs.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * bs[d + 1];
    }
    let mut idx = vec![0usize; ss.len()];
    for k in 0..n {
        let at: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        if big.data[at * es..(at + 1) * es] != small.data[k * es..(k + 1) * es] {
            return false;
        }
        for d in (0..ss.len()).rev() {
            idx[d] += 1;
            if idx[d] < ss[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    true
}

/// An op with the entries of its target shape on `axes` set to 0 (a reshape's, expand's or
/// slice's: they follow the size).
fn without(op: &Op, axes: &[(usize, usize, i64)]) -> Op {
    let mut op = op.clone();
    if let Op::Reshape { shape } | Op::Expand { shape } | Op::Slice { out_shape: shape, .. } = &mut op {
        for &(d, _, _) in axes {
            if let Some(x) = shape.get_mut(d) {
                *x = 0;
            }
        }
    }
    op
}

fn compare_one(hi: &Graph, s: usize, alt: &Graph, axes: &mut HashMap<ValueId, Found>) -> Result<(), PassError> {
    let name = &hi.symbols[s].name;
    let (h1, h2) = (hi.symbols[s].hi, alt.symbols[s].hi);
    let err = |node: &str, op: &str, message: String| PassError::RunTimeDim {
        node: node.to_string(),
        op: op.to_string(),
        message: format!("the run-time dim `{name}` {message}"),
    };
    let structure =
        || err(&hi.name, "graph", "changes the model's nodes when it changes: pin it with --input-shape".into());
    if hi.order().len() != alt.order().len()
        || hi.inputs.len() != alt.inputs.len()
        || hi.outputs.len() != alt.outputs.len()
    {
        return Err(structure());
    }
    let mut record = |v: ValueId, diff: &[(usize, usize, i64)], rank: usize| -> Result<(), String> {
        if diff.is_empty() {
            return Ok(());
        }
        let a = axes.entry(v).or_insert_with(|| vec![None; rank]);
        for &(d, per, c) in diff {
            match a[d] {
                Some((t, _, _)) if t != s => {
                    return Err(format!("axis {d} of `{}` is sized by two run-time dims", hi.value(v).name))
                }
                Some(was) if was != (s, per, c) => {
                    return Err(format!("changes axis {d} of `{}` other than in proportion to it", hi.value(v).name))
                }
                _ => {}
            }
            a[d] = Some((s, per, c));
        }
        Ok(())
    };
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for (&v1, &v2) in hi.inputs.iter().zip(&alt.inputs) {
        let (t1, t2) = (hi.ty(v1), alt.ty(v2));
        let diff = differing(&t1.shape, &t2.shape, h1, h2).ok_or_else(structure)?;
        record(v1, &diff, t1.shape.len()).map_err(|m| err(&hi.value(v1).name, "input", m))?;
        map.insert(v1, v2);
    }
    for (&n1, &n2) in hi.order().iter().zip(alt.order()) {
        let (a, b) = (hi.node(n1), alt.node(n2));
        if a.inputs.len() != b.inputs.len() || a.outputs.len() != b.outputs.len() || a.op.name() != b.op.name() {
            return Err(structure());
        }
        let node_err = |message: String| err(&a.name, a.op.name(), message);
        for (&v1, &v2) in a.inputs.iter().zip(&b.inputs) {
            if let Some(&m) = map.get(&v1) {
                if m != v2 {
                    return Err(structure());
                }
                continue;
            }
            let (Some(t1), Some(t2)) = (hi.const_of(v1), alt.const_of(v2)) else { return Err(structure()) };
            if t1 != t2 {
                let grows = differing(&t1.ty.shape, &t2.ty.shape, h1, h2).filter(|d| !d.is_empty());
                match grows {
                    Some(diff) if leading_block(t1, t2) => {
                        record(v1, &diff, t1.ty.shape.len()).map_err(node_err)?;
                    }
                    _ => {
                        return Err(node_err(format!(
                            "is used as data: `{}` is computed from its size; pin it with --input-shape",
                            hi.value(v1).name
                        )))
                    }
                }
            }
            map.insert(v1, v2);
        }
        let mut out_diff = Vec::new();
        for (&o1, &o2) in a.outputs.iter().zip(&b.outputs) {
            let (t1, t2) = (hi.ty(o1), alt.ty(o2));
            let diff = differing(&t1.shape, &t2.shape, h1, h2).filter(|_| t1.dtype == t2.dtype);
            let Some(diff) = diff else {
                return Err(node_err(format!(
                    "sizes an axis of `{}` ({:?} at the bound, {:?} at {h2}) other than as a multiple of it",
                    hi.value(o1).name,
                    t1.shape,
                    t2.shape
                )));
            };
            record(o1, &diff, t1.shape.len()).map_err(node_err)?;
            if out_diff.is_empty() {
                out_diff = diff;
            }
            map.insert(o1, o2);
        }
        if without(&a.op, &out_diff) != without(&b.op, &out_diff) {
            return Err(node_err("sets the node's attributes: pin it with --input-shape".into()));
        }
    }
    // A graph output that folded to a constant must not depend on the dim (a Shape, a Size,
    // an EyeLike of the input): it would be the bound's value at every size.
    for (&o1, &o2) in hi.outputs.iter().zip(&alt.outputs) {
        match (hi.const_of(o1), alt.const_of(o2)) {
            (Some(t1), Some(t2)) if t1 != t2 => {
                return Err(err(
                    &hi.value(o1).name,
                    "output",
                    "gives the output's value, which folds to a constant computed from its size: pin it with \
                     --input-shape"
                        .into(),
                ))
            }
            (Some(_), Some(_)) => {}
            _ if map.get(&o1).is_some_and(|&m| m != o2) => return Err(structure()),
            _ => {}
        }
    }
    Ok(())
}
