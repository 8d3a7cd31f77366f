//! Target-independent simplification: constant folding, dead-code elimination, common
//! subexpression elimination, Identity removal, BatchNorm folded into the preceding Conv,
//! Reshapes after matrix products sunk past their elementwise consumers.

use std::collections::{HashMap, HashSet};

use kiln_ir::{Data, Graph, Op, Tensor, ValueDef, ValueId};

use crate::PassError;

/// Largest constant (in bytes) that folding may create; bigger results stay computed at run
/// time so that a small model cannot blow up into a huge artifact.
const FOLD_LIMIT_BYTES: usize = 64 << 20;

/// Evaluates every node whose operands are all constants, with the op's reference evaluation.
pub fn fold_constants(g: &mut Graph) -> Result<bool, PassError> {
    let mut changed = false;
    for nid in g.order().to_vec() {
        let node = g.node(nid).clone();
        // A loop runs whole, at run time (its body's constant parts fold on their own).
        if matches!(node.op, Op::Unsupported { .. } | Op::LoopBegin | Op::LoopEnd { .. }) {
            continue;
        }
        let Some(ins) = node.inputs.iter().map(|&v| g.const_of(v)).collect::<Option<Vec<&Tensor>>>() else {
            continue;
        };
        if node.outputs.iter().map(|&v| g.ty(v).bytes()).sum::<usize>() > FOLD_LIMIT_BYTES {
            continue;
        }
        let outs = match kiln_ir::ops::eval(&node.op, &ins) {
            Ok(outs) => outs,
            // A node of a run-time case that fails on its constants fails only if that case
            // is taken (an If's other branch): it stays computed at run time.
            Err(_) if !node.guard.is_empty() => continue,
            Err(message) => {
                return Err(PassError::Failed {
                    pass: "fold-constants".into(),
                    message: format!("evaluating node `{}` ({}): {message}", node.name, node.op.name()),
                })
            }
        };
        for (&v, t) in node.outputs.iter().zip(outs) {
            g.make_const(v, t);
        }
        changed = true;
    }
    Ok(changed)
}

/// Removes nodes whose results are unused.
pub fn dce(g: &mut Graph) -> Result<bool, PassError> {
    let mut live: HashSet<ValueId> = g.outputs.iter().copied().chain(g.shape_values()).collect();
    let mut keep = Vec::new();
    for &nid in g.order().iter().rev() {
        let node = g.node(nid);
        if node.outputs.iter().any(|v| live.contains(v)) {
            live.extend(node.inputs.iter().copied());
            keep.push(nid);
        }
    }
    keep.reverse();
    let changed = keep.len() != g.order().len();
    g.set_order(keep);
    Ok(changed)
}

/// Replaces Identity nodes (and Reshapes to the same shape) by their operand, except where
/// that would make one value two graph outputs or a graph input an output.
pub fn remove_identity(g: &mut Graph) -> Result<bool, PassError> {
    let mut changed = false;
    for nid in g.order().to_vec() {
        let node = g.node(nid).clone();
        let trivial = match &node.op {
            Op::Identity => true,
            Op::Reshape { shape } => *shape == g.ty(node.inputs[0]).shape,
            _ => false,
        };
        if !trivial {
            continue;
        }
        let (src, dst) = (node.inputs[0], node.outputs[0]);
        let src_is_boundary =
            g.outputs.contains(&src) || matches!(g.value(src).def, ValueDef::Input(_) | ValueDef::Const(_));
        if g.outputs.contains(&dst) && src_is_boundary {
            continue;
        }
        if g.outputs.contains(&dst) {
            // Keep the output's name on the surviving value.
            let name = g.value(dst).name.clone();
            g.value_mut(src).name = name;
        }
        g.replace_uses(dst, src);
        g.remove_node(nid);
        changed = true;
    }
    Ok(changed)
}

fn op_key(g: &Graph, op: &Op, inputs: &[ValueId]) -> String {
    // Constants compare by content so that duplicated initializers merge too.
    let ins: Vec<String> = inputs
        .iter()
        .map(|&v| match g.const_of(v) {
            Some(t) if t.data.len() <= 64 => format!("c{:?}{:?}", t.ty, &t.data[..]),
            _ => format!("v{}", v.0),
        })
        .collect();
    format!("{op:?}|{}", ins.join(","))
}

/// Merges nodes with the same op and operands.
pub fn cse(g: &mut Graph) -> Result<bool, PassError> {
    let mut seen: HashMap<String, Vec<ValueId>> = HashMap::new();
    let mut changed = false;
    for nid in g.order().to_vec() {
        let node = g.node(nid).clone();
        if matches!(node.op, Op::Unsupported { .. }) {
            continue;
        }
        let key = format!("{}|{:?}", op_key(g, &node.op, &node.inputs), node.guard);
        match seen.get(&key) {
            Some(prev) if node.outputs.iter().all(|v| !g.outputs.contains(v)) => {
                for (&old, &new) in node.outputs.iter().zip(prev) {
                    g.replace_uses(old, new);
                }
                g.remove_node(nid);
                changed = true;
            }
            _ => {
                seen.insert(key, node.outputs.clone());
            }
        }
    }
    Ok(changed)
}

fn f32s(t: &Tensor) -> Option<Vec<f32>> {
    match t.data() {
        Data::F32(v) => Some(v),
        _ => None,
    }
}

/// Folds an inference BatchNorm whose input is a Conv or a Gemm (used only by it) with
/// constant weights and constant BN parameters into that op's weights and bias.
pub fn fold_batchnorm(g: &mut Graph) -> Result<bool, PassError> {
    let mut changed = false;
    let uses = g.use_counts();
    for nid in g.order().to_vec() {
        let bn = g.node(nid).clone();
        let Op::BatchNorm { epsilon } = bn.op else {
            continue;
        };
        let x = bn.inputs[0];
        let ValueDef::Node(prod_id, _) = g.value(x).def else {
            continue;
        };
        let prod = g.node(prod_id).clone();
        if uses.get(&x) != Some(&1) || g.outputs.contains(&x) {
            continue;
        }
        let params: Option<Vec<Vec<f32>>> = bn.inputs[1..].iter().map(|&v| g.const_of(v).and_then(f32s)).collect();
        let Some(p) = params else { continue };
        // y = (x - mean) * s + shift, with s = scale / sqrt(var + eps), per channel.
        let (scale, shift, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
        let s: Vec<f64> = scale.iter().zip(var).map(|(&a, &v)| a as f64 / (v as f64 + epsilon as f64).sqrt()).collect();
        let base = if prod.name.is_empty() { g.value(x).name.clone() } else { prod.name.clone() };
        let rewritten = match &prod.op {
            Op::Conv { .. } => fold_into_conv(g, &prod, &s, mean, shift, &base),
            Op::Gemm { alpha, beta, trans_a, trans_b } => {
                fold_into_gemm(g, &prod, (*alpha, *beta, *trans_a, *trans_b), &s, mean, shift, &base)
            }
            _ => None,
        };
        let Some((op, inputs)) = rewritten else { continue };
        let y = bn.outputs[0];
        // Rebuild the producer at the BN's position so its result takes the BN's place.
        let name = g.value(y).name.clone();
        g.guard = bn.guard.clone();
        let new = g.add_node(op, &inputs, prod.name.clone(), &[name]);
        g.guard.clear();
        let new = new.map_err(|e| PassError::Failed { pass: "fold-batchnorm".into(), message: e.to_string() })?[0];
        let mut order: Vec<_> = g.order().to_vec();
        let new_id = order.pop().expect("just added");
        let pos = order.iter().position(|&n| n == nid).expect("bn scheduled");
        order[pos] = new_id;
        order.retain(|&n| n != prod_id);
        g.set_order(order);
        g.replace_uses(y, new);
        changed = true;
    }
    Ok(changed)
}

/// Conv: weights of output channel c times s[c]; bias (b - mean)·s + shift.
fn fold_into_conv(
    g: &mut Graph,
    conv: &kiln_ir::Node,
    s: &[f64],
    mean: &[f32],
    shift: &[f32],
    base: &str,
) -> Option<(Op, Vec<ValueId>)> {
    let w = g.const_of(conv.inputs[1]).and_then(f32s)?;
    let o = s.len();
    let bias = match conv.inputs.get(2) {
        Some(&b) => g.const_of(b).and_then(f32s)?,
        None => vec![0.0; o],
    };
    let per = w.len() / o;
    let mut nw = w;
    let mut nb = vec![0f32; o];
    for c in 0..o {
        for x in &mut nw[c * per..(c + 1) * per] {
            *x = (*x as f64 * s[c]) as f32;
        }
        nb[c] = ((bias[c] as f64 - mean[c] as f64) * s[c] + shift[c] as f64) as f32;
    }
    let wshape = g.ty(conv.inputs[1]).shape.clone();
    let wv = g.add_const(format!("{base}.folded_w"), Tensor::f32(wshape, nw));
    let bv = g.add_const(format!("{base}.folded_b"), Tensor::f32(vec![o], nb));
    Some((conv.op.clone(), vec![conv.inputs[0], wv, bv]))
}

/// Gemm (BN over its output columns n): B's column n times s[n]; the new C is
/// `(beta·C − mean)·s + shift`, broadcast over the columns, with beta 1.
fn fold_into_gemm(
    g: &mut Graph,
    gemm: &kiln_ir::Node,
    (alpha, beta, trans_a, trans_b): (f32, f32, bool, bool),
    s: &[f64],
    mean: &[f32],
    shift: &[f32],
    base: &str,
) -> Option<(Op, Vec<ValueId>)> {
    let b = g.const_of(gemm.inputs[1]).and_then(f32s)?;
    let bshape = g.ty(gemm.inputs[1]).shape.clone();
    let n = s.len();
    let mut nb = b;
    for (i, x) in nb.iter_mut().enumerate() {
        let col = if trans_b { i / bshape[1] } else { i % bshape[1] };
        *x = (*x as f64 * s[col]) as f32;
    }
    let m = g.ty(gemm.outputs[0]).shape[0];
    // C as given, broadcast to [rows, n] with rows 1 unless C varies along M.
    let (c, cshape) = match gemm.inputs.get(2) {
        Some(&cv) => (g.const_of(cv).and_then(f32s)?, g.ty(cv).shape.clone()),
        None => (vec![0.0], vec![]),
    };
    let rows = if cshape.len() == 2 && cshape[0] == m && m != 1 { m } else { 1 };
    let at = |r: usize, col: usize| -> f64 {
        let (cr, cc) = match cshape.len() {
            0 => (0, 0),
            1 => (0, if cshape[0] == 1 { 0 } else { col }),
            _ => (if cshape[0] == 1 { 0 } else { r }, if cshape[1] == 1 { 0 } else { col }),
        };
        let width = if cshape.len() == 2 { cshape[1] } else { 1 };
        c[if cshape.len() == 1 { cc } else { cr * width + cc }] as f64
    };
    let mut nc = Vec::with_capacity(rows * n);
    for r in 0..rows {
        for col in 0..n {
            nc.push(((beta as f64 * at(r, col) - mean[col] as f64) * s[col] + shift[col] as f64) as f32);
        }
    }
    let bv = g.add_const(format!("{base}.folded_b"), Tensor::f32(bshape, nb));
    let cv = g.add_const(format!("{base}.folded_c"), Tensor::f32(vec![rows, n], nc));
    Some((Op::Gemm { alpha, beta: 1.0, trans_a, trans_b }, vec![gemm.inputs[0], bv, cv]))
}

/// `shape` without its leading 1s.
fn squeeze_leading(shape: &[usize]) -> &[usize] {
    let lead = shape.iter().take_while(|&&d| d == 1).count();
    &shape[lead..]
}

/// Moves a Reshape that only adds or removes leading 1s after a matrix product (GPT-2's
/// `addmm` → `view` → GELU) past the elementwise ops that read it, when their other operands
/// are scalars: those ops then run on the product's own shape and can fuse into its epilogue,
/// and the reshape moves to where the region's values leave it. Chains of reshapes collapse
/// into one, and reshapes to the same shape disappear.
pub fn sink_reshapes(g: &mut Graph) -> Result<bool, PassError> {
    let mut changed = false;
    for nid in g.order().to_vec() {
        if !g.order().contains(&nid) {
            continue;
        }
        let node = g.node(nid).clone();
        let Op::Reshape { .. } = node.op else { continue };
        let (x, r) = (node.inputs[0], node.outputs[0]);
        let (xs, rs) = (g.ty(x).shape.clone(), g.ty(r).shape.clone());
        let product = matches!(g.value(x).def, ValueDef::Node(p, _)
            if matches!(g.node(p).op, Op::Gemm { .. } | Op::MatMul));
        if !product || xs == rs || squeeze_leading(&xs) != squeeze_leading(&rs) {
            continue;
        }
        // The region: elementwise ops of r's shape whose operands are region values or
        // scalars of rank at most x's (so that broadcasting keeps x's rank).
        let users = g.users();
        let mut vals: HashSet<ValueId> = HashSet::from([r]);
        let mut region: Vec<kiln_ir::NodeId> = Vec::new();
        for &n in g.order() {
            let c = g.node(n);
            if region.contains(&n) || !c.op.is_elementwise() || c.outputs.len() != 1 || g.ty(c.outputs[0]).shape != rs {
                continue;
            }
            let ins_ok = c
                .inputs
                .iter()
                .all(|&v| vals.contains(&v) || (g.ty(v).numel() == 1 && g.ty(v).shape.len() <= xs.len()));
            if ins_ok && c.inputs.iter().any(|v| vals.contains(v)) {
                region.push(n);
                vals.insert(c.outputs[0]);
            }
        }
        if region.is_empty() {
            continue;
        }
        // Region values read outside it (r's own such uses keep the reshape).
        let exits: Vec<ValueId> = {
            let outside = |v: ValueId| {
                g.outputs.contains(&v) || users.get(&v).is_some_and(|us| us.iter().any(|(u, _)| !region.contains(u)))
            };
            region.iter().map(|&n| g.node(n).outputs[0]).filter(|&v| outside(v)).collect()
        };
        for &n in &region {
            for v in &mut g.node_mut(n).inputs {
                if *v == r {
                    *v = x;
                }
            }
            let out = g.node(n).outputs[0];
            g.value_mut(out).ty.shape = xs.clone();
        }
        for e in exits {
            let name = g.value(e).name.clone();
            let ValueDef::Node(p, _) = g.value(e).def else { unreachable!("a region value") };
            g.guard = g.node(p).guard.clone();
            let back = g.add_node(
                Op::Reshape { shape: rs.clone() },
                &[e],
                format!("{name}/reshape"),
                &[format!("{name}.reshaped")],
            );
            g.guard.clear();
            let back = back.map_err(|e| PassError::Failed { pass: "sink-reshapes".into(), message: e.to_string() })?[0];
            // The new node goes right after e's producer; e's outside uses read it.
            let ValueDef::Node(bn, _) = g.value(back).def else { unreachable!("just added") };
            let mut order: Vec<kiln_ir::NodeId> = g.order().iter().copied().filter(|&m| m != bn).collect();
            let at = order.iter().position(|&m| m == p).expect("scheduled") + 1;
            order.insert(at, bn);
            g.set_order(order);
            for m in g.order().to_vec() {
                if m == bn || region.contains(&m) {
                    continue;
                }
                for v in &mut g.node_mut(m).inputs {
                    if *v == e {
                        *v = back;
                    }
                }
            }
            if g.outputs.contains(&e) {
                for o in &mut g.outputs {
                    if *o == e {
                        *o = back;
                    }
                }
                // The output keeps its name; the region's value is renamed apart from it.
                g.value_mut(e).name = format!("{name}.flat");
                g.value_mut(back).name = name;
            }
        }
        changed = true;
    }
    // reshape(reshape(a)) reads a directly.
    for nid in g.order().to_vec() {
        let node = g.node(nid).clone();
        let Op::Reshape { .. } = node.op else { continue };
        let ValueDef::Node(p, _) = g.value(node.inputs[0]).def else { continue };
        if let Op::Reshape { .. } = g.node(p).op {
            let inner = g.node(p).inputs[0];
            g.node_mut(nid).inputs[0] = inner;
            changed = true;
        }
    }
    Ok(remove_identity(g)? | changed)
}
