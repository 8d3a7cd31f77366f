//! The `ai.onnx.ml` ops Binarizer, ArrayFeatureExtractor and TreeEnsemble (every tree
//! unrolled into branch conditions), and TfIdfVectorizer (n-gram counts over integer tokens;
//! in the default domain), as compositions of existing HIR ops.

use kiln_ir::{BinaryOp as B, CmpOp, DType, Op, ReduceOp, ValueId};

use super::builders::{bin, cmp, konst_as, last_axis, reshape, scalar, tmp, un};
use super::{invalid, unsupported, NodeCx, OpResult};

/// TfIdfVectorizer over integer tokens (`pool_int64s`), as ONNX's reference counts: an
/// n-gram of the pool matches at start `s` with skip distance `d` when the tokens at
/// `s, s+d, …` equal it; unigrams count once (d = 1), longer n-grams for every
/// `d ∈ 1..=max_skip_count+1`. Each count goes to its `ngram_indexes` slot, then TF, IDF or
/// TFIDF weighting.
pub(super) fn tfidf_vectorizer(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    if cx.attrs.has("pool_strings") {
        return unsupported("string n-grams (pool_strings)");
    }
    let xt = cx.ty(x);
    if !xt.dtype.is_int() || xt.rank() == 0 || xt.rank() > 2 {
        return invalid(format!("input must be a 1-D or 2-D integer tensor, got {xt}"));
    }
    let min_n = cx.attrs.int_or("min_gram_length", 1)?.max(1) as usize;
    let max_n = cx.attrs.int_or("max_gram_length", 1)?.max(0) as usize;
    let max_skip = cx.attrs.int_or("max_skip_count", 0)?.max(0) as usize;
    let mode = cx.attrs.string("mode")?.unwrap_or_else(|| "TF".into());
    let pool: Vec<i64> = cx.attrs.ints("pool_int64s")?.unwrap_or_default().to_vec();
    let counts: Vec<i64> = cx.attrs.ints("ngram_counts")?.unwrap_or_default().to_vec();
    let indexes: Vec<i64> = cx.attrs.ints("ngram_indexes")?.unwrap_or_default().to_vec();
    let weights: Vec<f32> = cx.attrs.floats("weights")?.unwrap_or_default().to_vec();
    let out_size = indexes.iter().copied().max().map_or(0, |m| m.max(-1) + 1) as usize;
    // The pool's n-grams: (tokens, output slot), in pool order.
    let mut grams: Vec<(Vec<i64>, usize)> = Vec::new();
    let mut id = 0usize;
    for (i, &start) in counts.iter().enumerate() {
        let n = i + 1;
        let end = counts.get(i + 1).copied().unwrap_or(pool.len() as i64);
        if start < 0 || end < start || end as usize > pool.len() {
            return invalid("ngram_counts do not index pool_int64s");
        }
        for g in pool[start as usize..end as usize].chunks_exact(n) {
            let Some(&slot) = indexes.get(id) else {
                return invalid("ngram_indexes has fewer entries than the pool has n-grams");
            };
            if n >= min_n && n <= max_n {
                grams.push((g.to_vec(), slot as usize));
            }
            id += 1;
        }
    }
    let c = *xt.shape.last().expect("rank checked");
    let row: Vec<usize> = xt.shape[..xt.rank() - 1].to_vec();
    let xi = if xt.dtype == DType::I64 { x } else { tmp(cx, Op::cast(DType::I64), &[x], "tokens")? };
    // Per output slot, the count terms.
    let mut per_slot: Vec<Vec<ValueId>> = vec![Vec::new(); out_size];
    for (g, slot) in &grams {
        let n = g.len();
        let dists: Vec<usize> = if n == 1 { vec![1] } else { (1..=max_skip + 1).collect() };
        for d in dists {
            let span = (n - 1) * d;
            if span >= c {
                continue;
            }
            let m = c - span;
            let mut all: Option<ValueId> = None;
            for (k, &tok) in g.iter().enumerate() {
                let part = last_axis(cx, xi, k * d, 1, m)?;
                let t = scalar(cx, DType::I64, tok as f64);
                let eq = cmp(cx, CmpOp::Equal, part, t)?;
                all = Some(match all {
                    Some(a) => bin(cx, B::And, a, eq)?,
                    None => eq,
                });
            }
            let hits = tmp(cx, Op::cast(DType::F32), &[all.expect("n >= 1")], "hits")?;
            let axis = row.len();
            let sum = tmp(cx, Op::Reduce { op: ReduceOp::Sum, axes: vec![axis], keepdims: true }, &[hits], "count")?;
            per_slot[*slot].push(sum);
        }
    }
    let mut col_shape = row.clone();
    col_shape.push(1);
    let zeros = konst_as(cx, DType::F32, col_shape.clone(), &vec![0.0; col_shape.iter().product()]);
    let mut cols = Vec::with_capacity(out_size);
    for (i, terms) in per_slot.into_iter().enumerate() {
        let mut acc = zeros;
        for t in terms {
            acc = if acc == zeros { t } else { bin(cx, B::Add, acc, t)? };
        }
        let w = weights.get(i).copied();
        acc = match mode.as_str() {
            "TF" => acc,
            "IDF" | "TFIDF" => {
                let present = if mode == "IDF" {
                    let z = scalar(cx, DType::F32, 0.0);
                    let p = cmp(cx, CmpOp::Greater, acc, z)?;
                    tmp(cx, Op::cast(DType::F32), &[p], "present")?
                } else {
                    acc
                };
                match w {
                    Some(w) => {
                        let w = scalar(cx, DType::F32, f64::from(w));
                        bin(cx, B::Mul, present, w)?
                    }
                    None => present,
                }
            }
            m => return invalid(format!("attribute `mode` = {m:?} is not TF, IDF or TFIDF")),
        };
        cols.push(acc);
    }
    let axis = row.len();
    let y = if cols.is_empty() {
        let mut s = row.clone();
        s.push(0);
        konst_as(cx, DType::F32, s, &[])
    } else if cols.len() == 1 {
        cols[0]
    } else {
        tmp(cx, Op::Concat { axis }, &cols, "tfidf")?
    };
    Ok(vec![cx.emit_out(Op::Identity, &[y], 0)?])
}

/// `ai.onnx.ml` Binarizer: `x > threshold ? 1 : 0` in x's type.
pub(super) fn binarizer(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let d = cx.ty(x).dtype;
    let th = scalar(cx, d, f64::from(cx.attrs.float_or("threshold", 0.0)?));
    let gt = cmp(cx, CmpOp::Greater, x, th)?;
    Ok(vec![cx.emit_out(Op::cast(d), &[gt], 0)?])
}

/// `ai.onnx.ml` ArrayFeatureExtractor: elements of the last axis picked by `Y`'s indices.
pub(super) fn array_feature_extractor(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, idx) = (cx.input(0)?, cx.input(1)?);
    let r = cx.rank(x);
    if r == 0 {
        return invalid("X must have at least one dimension");
    }
    let n: usize = cx.shape(idx).iter().product();
    let flat = reshape(cx, idx, vec![n])?;
    Ok(vec![cx.emit_out(Op::Gather { axis: r - 1 }, &[x, flat], 0)?])
}

/// A tree node's branch condition on one feature column (`[N, 1]` bool).
fn tree_predicate(
    cx: &mut NodeCx,
    col: ValueId,
    mode: i64,
    split: f64,
    members: &[f64],
    nan_true: bool,
) -> OpResult<ValueId> {
    let d = cx.ty(col).dtype;
    let k = |cx: &mut NodeCx, v: f64| scalar(cx, d, v);
    let c = match mode {
        0..=4 => {
            let s = k(cx, split);
            let op =
                [CmpOp::LessOrEqual, CmpOp::Less, CmpOp::GreaterOrEqual, CmpOp::Greater, CmpOp::Equal][mode as usize];
            cmp(cx, op, col, s)?
        }
        5 => {
            let s = k(cx, split);
            let eq = cmp(cx, CmpOp::Equal, col, s)?;
            tmp(cx, Op::Unary(kiln_ir::UnaryOp::Not), &[eq], "neq")?
        }
        6 => {
            let mut any: Option<ValueId> = None;
            for &m in members {
                let s = k(cx, m);
                let eq = cmp(cx, CmpOp::Equal, col, s)?;
                any = Some(match any {
                    Some(a) => bin(cx, B::Or, a, eq)?,
                    None => eq,
                });
            }
            match any {
                Some(a) => a,
                None => {
                    let z = k(cx, 0.0);
                    let f = cmp(cx, CmpOp::Less, z, z)?; // false
                    tmp(cx, Op::Expand { shape: cx.shape(col) }, &[f], "none")?
                }
            }
        }
        m => return invalid(format!("node mode {m} is not 0..=6")),
    };
    if !nan_true {
        return Ok(c);
    }
    let nan = tmp(cx, Op::IsNaN, &[col], "missing")?;
    bin(cx, B::Or, c, nan)
}

/// `ai.onnx.ml` TreeEnsemble (opset 5): every tree is unrolled into the conjunction of branch
/// conditions on the path to each leaf; a row's leaf indicator times the leaf weight is
/// summed per target (SUM or AVERAGE aggregation; no, softmax or logistic post-transform).
pub(super) fn tree_ensemble(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let xt = cx.ty(x);
    if xt.rank() != 2 || !matches!(xt.dtype, DType::F32 | DType::F64) {
        return unsupported(format!("TreeEnsemble on {xt} (a float32/float64 matrix)"));
    }
    let d = xt.dtype;
    let ints = |cx: &NodeCx, n: &str| -> OpResult<Vec<i64>> {
        match cx.attrs.ints(n)? {
            Some(v) => Ok(v.to_vec()),
            None => invalid(format!("attribute `{n}` is missing")),
        }
    };
    let tensor = |cx: &mut NodeCx, n: &str| -> OpResult<Option<Vec<f64>>> {
        let Some(t) = cx.attrs.tensor(n)? else { return Ok(None) };
        let t = crate::data::decode_tensor(t, n, cx.ext).map_err(|e| super::OpError::Invalid(e.to_string()))?;
        Ok(Some(t.to_f64_vec()))
    };
    let feature = ints(cx, "nodes_featureids")?;
    let (t_ids, f_ids) = (ints(cx, "nodes_truenodeids")?, ints(cx, "nodes_falsenodeids")?);
    let (t_leaf, f_leaf) = (ints(cx, "nodes_trueleafs")?, ints(cx, "nodes_falseleafs")?);
    let (leaf_target, roots) = (ints(cx, "leaf_targetids")?, ints(cx, "tree_roots")?);
    let nan_true = cx.attrs.ints("nodes_missing_value_tracks_true")?.map(<[i64]>::to_vec).unwrap_or_default();
    let Some(splits) = tensor(cx, "nodes_splits")? else { return invalid("attribute `nodes_splits` is missing") };
    let Some(modes) = tensor(cx, "nodes_modes")? else { return invalid("attribute `nodes_modes` is missing") };
    let Some(weights) = tensor(cx, "leaf_weights")? else { return invalid("attribute `leaf_weights` is missing") };
    let members = tensor(cx, "membership_values")?.unwrap_or_default();
    let n_targets = cx.attrs.int_or("n_targets", 1)?.max(1) as usize;
    let agg = cx.attrs.int_or("aggregate_function", 1)?;
    if !matches!(agg, 0 | 1) {
        return unsupported(format!("aggregate_function {agg} (SUM and AVERAGE are supported)"));
    }
    let n_nodes = feature.len();
    let ok = [&t_ids, &f_ids, &t_leaf, &f_leaf].iter().all(|v| v.len() == n_nodes)
        && splits.len() == n_nodes
        && modes.len() == n_nodes
        && weights.len() == leaf_target.len();
    if !ok {
        return invalid("the nodes_* attributes (or leaf_*) have different lengths");
    }
    let (rows, nf) = (xt.shape[0], xt.shape[1]);
    // Per target, (weight, indicator) terms.
    let mut terms: Vec<Vec<(f64, Option<ValueId>)>> = vec![Vec::new(); n_targets];
    let mut member_pos = 0usize;
    let add_leaf = |terms: &mut Vec<Vec<(f64, Option<ValueId>)>>, leaf: i64, path: Option<ValueId>| -> OpResult<()> {
        let l = usize::try_from(leaf)
            .ok()
            .filter(|&l| l < weights.len())
            .ok_or_else(|| super::OpError::Invalid("leaf index out of range".into()))?;
        let t = usize::try_from(leaf_target[l])
            .ok()
            .filter(|&t| t < n_targets)
            .ok_or_else(|| super::OpError::Invalid("leaf target out of range".into()))?;
        terms[t].push((weights[l], path));
        Ok(())
    };
    for &root in &roots {
        let r = usize::try_from(root)
            .ok()
            .filter(|&r| r < n_nodes)
            .ok_or_else(|| super::OpError::Invalid("tree root out of range".into()))?;
        if t_leaf[r] != 0 && f_leaf[r] != 0 && t_ids[r] == f_ids[r] {
            add_leaf(&mut terms, t_ids[r], None)?;
            continue;
        }
        // Depth-first, true branch first (the order membership sets are listed in).
        let mut stack: Vec<(usize, Option<ValueId>, usize)> = vec![(r, None, 0)];
        while let Some((i, path, depth)) = stack.pop() {
            if depth > n_nodes {
                return invalid("the trees have a cycle");
            }
            let f = usize::try_from(feature[i])
                .ok()
                .filter(|&f| f < nf)
                .ok_or_else(|| super::OpError::Invalid("feature id out of range".into()))?;
            let col = last_axis(cx, x, f, 1, 1)?;
            let mode = modes[i] as i64;
            let set: Vec<f64> = if mode == 6 {
                let start = member_pos;
                while member_pos < members.len() && !members[member_pos].is_nan() {
                    member_pos += 1;
                }
                let s = members[start..member_pos].to_vec();
                member_pos += 1;
                s
            } else {
                Vec::new()
            };
            let c = tree_predicate(cx, col, mode, splits[i], &set, nan_true.get(i).copied().unwrap_or(0) != 0)?;
            let nc = tmp(cx, Op::Unary(kiln_ir::UnaryOp::Not), &[c], "else")?;
            let branch = |cx: &mut NodeCx, cond: ValueId| -> OpResult<ValueId> {
                match path {
                    Some(p) => bin(cx, B::And, p, cond),
                    None => Ok(cond),
                }
            };
            let (pt, pf) = (branch(cx, c)?, branch(cx, nc)?);
            // Push the false branch first so the true branch is visited first.
            let mut next = Vec::new();
            for (leaf, id, p) in [(t_leaf[i], t_ids[i], pt), (f_leaf[i], f_ids[i], pf)] {
                if leaf != 0 {
                    add_leaf(&mut terms, id, Some(p))?;
                } else {
                    let j = usize::try_from(id)
                        .ok()
                        .filter(|&j| j < n_nodes)
                        .ok_or_else(|| super::OpError::Invalid("node id out of range".into()))?;
                    next.push((j, Some(p), depth + 1));
                }
            }
            stack.extend(next.into_iter().rev());
        }
    }
    let scale = if agg == 0 { 1.0 / roots.len().max(1) as f64 } else { 1.0 };
    let mut cols = Vec::with_capacity(n_targets);
    for t in terms {
        let mut acc: Option<ValueId> = None;
        let mut constant = 0.0;
        for (w, ind) in t {
            match ind {
                None => constant += w * scale,
                Some(ind) => {
                    let f = tmp(cx, Op::cast(d), &[ind], "hit")?;
                    let k = scalar(cx, d, w * scale);
                    let v = bin(cx, B::Mul, f, k)?;
                    acc = Some(match acc {
                        Some(a) => bin(cx, B::Add, a, v)?,
                        None => v,
                    });
                }
            }
        }
        let base = konst_as(cx, d, vec![rows, 1], &vec![constant; rows]);
        cols.push(match acc {
            Some(a) => bin(cx, B::Add, a, base)?,
            None => base,
        });
    }
    let y = if cols.len() == 1 { cols[0] } else { tmp(cx, Op::Concat { axis: 1 }, &cols, "targets")? };
    let y = match cx.attrs.int_or("post_transform", 0)? {
        0 => y,
        1 => tmp(cx, Op::Softmax { axis: 1 }, &[y], "softmax")?,
        2 => un(cx, kiln_ir::UnaryOp::Sigmoid, y)?,
        p => return unsupported(format!("post_transform {p} (NONE, SOFTMAX and LOGISTIC are supported)")),
    };
    Ok(vec![cx.emit_out(Op::Identity, &[y], 0)?])
}
