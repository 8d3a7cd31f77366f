//! Target-independent simplification: constant folding, dead-code elimination, common
//! subexpression elimination, Identity removal, BatchNorm folded into the preceding Conv.

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
        if matches!(node.op, Op::Unsupported { .. }) {
            continue;
        }
        let Some(ins) = node.inputs.iter().map(|&v| g.const_of(v)).collect::<Option<Vec<&Tensor>>>() else {
            continue;
        };
        if node.outputs.iter().map(|&v| g.ty(v).bytes()).sum::<usize>() > FOLD_LIMIT_BYTES {
            continue;
        }
        let outs = kiln_ir::eval::eval(&node.op, &ins).map_err(|message| PassError::Failed {
            pass: "fold-constants".into(),
            message: format!("evaluating node `{}` ({}): {message}", node.name, node.op.name()),
        })?;
        for (&v, t) in node.outputs.iter().zip(outs) {
            g.make_const(v, t);
        }
        changed = true;
    }
    Ok(changed)
}

/// Removes nodes whose results are unused.
pub fn dce(g: &mut Graph) -> Result<bool, PassError> {
    let mut live: HashSet<ValueId> = g.outputs.iter().copied().collect();
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
        let key = op_key(g, &node.op, &node.inputs);
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

/// Folds an inference BatchNorm whose input is a Conv (used only by it) with constant weights
/// and constant BN parameters into the Conv's weights and bias.
pub fn fold_batchnorm(g: &mut Graph) -> Result<bool, PassError> {
    let mut changed = false;
    let uses = g.use_counts();
    for nid in g.order().to_vec() {
        let bn = g.node(nid).clone();
        let Op::BatchNorm { epsilon } = bn.op else {
            continue;
        };
        let x = bn.inputs[0];
        let ValueDef::Node(conv_id, _) = g.value(x).def else {
            continue;
        };
        let conv = g.node(conv_id).clone();
        if !matches!(conv.op, Op::Conv { .. }) || uses.get(&x) != Some(&1) || g.outputs.contains(&x) {
            continue;
        }
        let params: Option<Vec<Vec<f32>>> = bn.inputs[1..].iter().map(|&v| g.const_of(v).and_then(f32s)).collect();
        let Some(p) = params else { continue };
        let Some(w) = g.const_of(conv.inputs[1]).and_then(f32s) else {
            continue;
        };
        let bias = match conv.inputs.get(2) {
            Some(&b) => match g.const_of(b).and_then(f32s) {
                Some(b) => b,
                None => continue,
            },
            None => vec![0.0; p[0].len()],
        };
        let (scale, shift, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
        let o = scale.len();
        let per = w.len() / o;
        let mut nw = w.clone();
        let mut nb = vec![0f32; o];
        for c in 0..o {
            let s = (scale[c] as f64 / (var[c] as f64 + epsilon as f64).sqrt()) as f32;
            for x in &mut nw[c * per..(c + 1) * per] {
                *x *= s;
            }
            nb[c] = ((bias[c] as f64 - mean[c] as f64) * s as f64 + shift[c] as f64) as f32;
        }
        let wshape = g.ty(conv.inputs[1]).shape.clone();
        let base = if conv.name.is_empty() { g.value(x).name.clone() } else { conv.name.clone() };
        let wv = g.add_const(format!("{base}.folded_w"), Tensor::f32(wshape, nw));
        let bv = g.add_const(format!("{base}.folded_b"), Tensor::f32(vec![o], nb));
        let y = bn.outputs[0];
        // Rebuild the conv after the BN's position so its result can take the BN's place.
        let name = g.value(y).name.clone();
        let new = g
            .add_node(conv.op.clone(), &[conv.inputs[0], wv, bv], conv.name.clone(), &[name])
            .map_err(|e| PassError::Failed { pass: "fold-batchnorm".into(), message: e.to_string() })?[0];
        // Place the new node where the BN was.
        let mut order: Vec<_> = g.order().to_vec();
        let new_id = order.pop().expect("just added");
        let pos = order.iter().position(|&n| n == nid).expect("bn scheduled");
        order[pos] = new_id;
        order.retain(|&n| n != conv_id);
        g.set_order(order);
        g.replace_uses(y, new);
        changed = true;
    }
    Ok(changed)
}
