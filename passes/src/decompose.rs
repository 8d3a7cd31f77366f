//! The `decompose` step: expands the HIR ops that stay whole through the graph passes (so
//! that passes and templates see them as one node) into the simpler ops they are made of,
//! for a backend that does not lower them whole ([`Backend::decomposes`]). It runs on each
//! partition, just before fusion, with the partition's backend.
//!
//! | op | becomes |
//! | --- | --- |
//! | `layer_norm` | `mean = reduce_mean(x)`, `d = x - mean`, `var = reduce_mean(d·d)`, `d · reciprocal(sqrt(var + ε)) · scale (+ bias)` |
//! | `rms_norm` | `x / sqrt(reduce_mean(x·x) + ε) · scale` |
//!
//! An expansion computes what the op's reference evaluation computes, op for op.

use kiln_ir::{BinaryOp as B, Graph, NodeId, Op, ReduceOp, Tensor, UnaryOp as U, ValueId};

use crate::pipeline::{Backend, Context};
use crate::PassError;

/// Whether `op` is one that this step can expand.
pub fn expandable(op: &Op) -> bool {
    matches!(op, Op::LayerNorm { .. } | Op::RmsNorm { .. })
}

/// Expands every node whose op the context's backend does not lower whole. Returns whether
/// any was expanded.
pub fn decompose(g: &mut Graph, cx: &Context) -> Result<bool, PassError> {
    decompose_for(g, cx.backend)
}

/// [`decompose`] for one backend.
pub fn decompose_for(g: &mut Graph, backend: &dyn Backend) -> Result<bool, PassError> {
    let mut changed = false;
    for nid in g.order().to_vec() {
        let op = g.node(nid).op.clone();
        if expandable(&op) && backend.decomposes(&op) {
            expand(g, nid, &op)?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Adds nodes to a graph on behalf of the node being expanded: named after it, scheduled
/// in its place.
struct Expansion<'g> {
    g: &'g mut Graph,
    name: String,
    added: Vec<NodeId>,
}

impl Expansion<'_> {
    fn add(&mut self, op: Op, inputs: &[ValueId], tag: &str) -> Result<ValueId, PassError> {
        let name = format!("{}/{tag}", self.name);
        let outs = self
            .g
            .add_node(op, inputs, name, &[])
            .map_err(|e| PassError::Failed { pass: "decompose".into(), message: e.to_string() })?;
        self.added.push(*self.g.order().last().expect("just added"));
        Ok(outs[0])
    }

    fn bin(&mut self, op: B, a: ValueId, b: ValueId, tag: &str) -> Result<ValueId, PassError> {
        self.add(Op::Binary(op), &[a, b], tag)
    }

    fn un(&mut self, op: U, a: ValueId, tag: &str) -> Result<ValueId, PassError> {
        self.add(Op::Unary(op), &[a], tag)
    }

    /// The f32 scalar constant `epsilon`.
    fn epsilon(&mut self, epsilon: f32) -> ValueId {
        self.g.add_const(format!("{}/epsilon", self.name), Tensor::f32(vec![], vec![epsilon]))
    }
}

/// Replaces node `nid` (one result) by its expansion.
fn expand(g: &mut Graph, nid: NodeId, op: &Op) -> Result<(), PassError> {
    let node = g.node(nid).clone();
    let old = node.outputs[0];
    // The expansion runs where the node ran (in its run-time cases).
    g.guard = node.guard.clone();
    let mut e = Expansion { g, name: node.name.clone(), added: Vec::new() };
    let new = match *op {
        Op::LayerNorm { axis, epsilon } => {
            let x = node.inputs[0];
            let axes: Vec<usize> = (axis..e.g.ty(x).rank()).collect();
            let mean = e.add(Op::Reduce { op: ReduceOp::Mean, axes: axes.clone(), keepdims: true }, &[x], "mean")?;
            let d = e.bin(B::Sub, x, mean, "centered")?;
            let d2 = e.bin(B::Mul, d, d, "squared")?;
            let var = e.add(Op::Reduce { op: ReduceOp::Mean, axes, keepdims: true }, &[d2], "var")?;
            let eps = e.epsilon(epsilon);
            let ve = e.bin(B::Add, var, eps, "var_eps")?;
            let sd = e.un(U::Sqrt, ve, "std")?;
            let inv = e.un(U::Reciprocal, sd, "inv_std")?;
            let n = e.bin(B::Mul, d, inv, "normalized")?;
            let y = e.bin(B::Mul, n, node.inputs[1], "scaled")?;
            match node.inputs.get(2) {
                Some(&bias) => e.bin(B::Add, y, bias, "biased")?,
                None => y,
            }
        }
        Op::RmsNorm { axis, epsilon } => {
            let x = node.inputs[0];
            let axes: Vec<usize> = (axis..e.g.ty(x).rank()).collect();
            let x2 = e.bin(B::Mul, x, x, "squared")?;
            let ms = e.add(Op::Reduce { op: ReduceOp::Mean, axes, keepdims: true }, &[x2], "mean_square")?;
            let eps = e.epsilon(epsilon);
            let mse = e.bin(B::Add, ms, eps, "mean_square_eps")?;
            let rms = e.un(U::Sqrt, mse, "rms")?;
            let n = e.bin(B::Div, x, rms, "normalized")?;
            e.bin(B::Mul, n, node.inputs[1], "scaled")?
        }
        _ => unreachable!("only expandable ops are expanded"),
    };
    let added = std::mem::take(&mut e.added);
    g.guard.clear();
    // The expansion's last value takes the op's name, so graph outputs keep theirs.
    let name = g.value(old).name.clone();
    g.value_mut(new).name = name;
    g.set_fused(new, g.is_fused(old));
    let order: Vec<NodeId> = g
        .order()
        .iter()
        .filter(|n| !added.contains(n))
        .flat_map(|&n| if n == nid { added.clone() } else { vec![n] })
        .collect();
    g.set_order(order);
    g.replace_uses(old, new);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Plain;

    const LN: &str = r#"graph "ln" {
  input %0 "x": f32[2,4]
  const %1 "scale": f32[4] = [1.0, 2.0, 0.5, 1.0]
  const %2 "bias": f32[4] = [0.0, 1.0, -1.0, 0.25]
  %3 "y": f32[2,4] = layer_norm(%0, %1, %2) {axis=1, epsilon=1e-5} # "ln"
  %4 "z": f32[2,4] = relu(%3)
  output %4
}"#;

    /// The expansion computes what the op's reference evaluation computes, bit for bit.
    #[test]
    fn layer_norm_expands_into_what_it_evaluates_to() {
        let whole = kiln_ir::text::parse(LN).unwrap();
        let mut g = whole.clone();
        assert!(decompose_for(&mut g, &Plain).unwrap());
        kiln_ir::verify::verify(&g).unwrap();
        let text = kiln_ir::text::print(&g);
        assert!(!text.contains("layer_norm") && text.contains("reduce_mean"), "{text}");
        assert!(text.contains("\"y\": f32[2,4] = add("), "the last value keeps the op's name:\n{text}");
        let x = Tensor::f32(vec![2, 4], vec![1.0, -2.0, 3.5, 0.25, 8.0, 8.5, 7.0, 9.25]);
        let run = |g: &Graph| {
            let mut vals: std::collections::HashMap<ValueId, Tensor> = [(g.inputs[0], x.clone())].into();
            for &n in g.order() {
                let node = g.node(n);
                let ins: Vec<Tensor> = node
                    .inputs
                    .iter()
                    .map(|v| vals.get(v).cloned().or_else(|| g.const_of(*v).cloned()).unwrap())
                    .collect();
                let refs: Vec<&Tensor> = ins.iter().collect();
                let out = kiln_ir::ops::eval(&node.op, &refs).unwrap().remove(0);
                vals.insert(node.outputs[0], out);
            }
            vals.remove(&g.outputs[0]).unwrap()
        };
        assert_eq!(run(&g).data, run(&whole).data);
    }

    /// RmsNorm too, in a graph where it feeds a graph output directly.
    #[test]
    fn rms_norm_expands_and_keeps_the_output_name() {
        let mut g = kiln_ir::text::parse(
            r#"graph "rms" {
  input %0 "x": f32[3,5]
  const %1 "scale": f32[5] = [1.0, 2.0, 0.5, 1.0, -1.0]
  %2 "y": f32[3,5] = rms_norm(%0, %1) {axis=1, epsilon=1e-6}
  output %2
}"#,
        )
        .unwrap();
        assert!(decompose_for(&mut g, &Plain).unwrap());
        kiln_ir::verify::verify(&g).unwrap();
        let text = kiln_ir::text::print(&g);
        assert!(!text.contains("rms_norm") && text.contains("\"y\": f32[3,5] = mul("), "{text}");
        assert_eq!(g.value(g.outputs[0]).name, "y");
    }

    /// A backend that lowers the op whole keeps it.
    #[test]
    fn a_backend_may_keep_an_op_whole() {
        struct Keeps;
        impl Backend for Keeps {
            fn decomposes(&self, _: &Op) -> bool {
                false
            }
        }
        let mut g = kiln_ir::text::parse(LN).unwrap();
        assert!(!decompose_for(&mut g, &Keeps).unwrap());
        assert!(kiln_ir::text::print(&g).contains("layer_norm"));
    }
}
