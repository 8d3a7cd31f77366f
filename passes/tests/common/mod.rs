//! Helpers shared by the pass tests.

use std::collections::HashMap;

use kiln_ir::{Graph, Tensor, ValueDef, ValueId};

/// Evaluates a graph with the reference evaluator.
pub fn run(g: &Graph, inputs: &[Tensor]) -> Vec<Tensor> {
    let mut vals: HashMap<ValueId, Tensor> = HashMap::new();
    for (&v, t) in g.inputs.iter().zip(inputs) {
        vals.insert(v, t.clone());
    }
    let get = |vals: &HashMap<ValueId, Tensor>, v: ValueId| match &g.value(v).def {
        ValueDef::Const(t) => t.clone(),
        _ => vals[&v].clone(),
    };
    for &n in g.order() {
        let node = g.node(n);
        let ins: Vec<Tensor> = node.inputs.iter().map(|&v| get(&vals, v)).collect();
        let refs: Vec<&Tensor> = ins.iter().collect();
        for (&o, t) in node.outputs.iter().zip(kiln_ir::ops::eval(&node.op, &refs).unwrap()) {
            vals.insert(o, t);
        }
    }
    g.outputs.iter().map(|&v| get(&vals, v)).collect()
}

/// A tensor of small varied values (`((7i mod 11) − 5)·scale`).
pub fn ramp(shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::f32(shape.to_vec(), (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * scale).collect())
}
