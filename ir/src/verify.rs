//! The HIR verifier. Invariants checked:
//!
//! 1. every operand of a scheduled node is a graph input, a constant, or a result of a node
//!    scheduled earlier (SSA, topological schedule);
//! 2. every node's result types equal what its typing rule infers from its operands;
//! 3. no scheduled node is a placeholder (`Op::Unsupported`);
//! 4. every graph output is defined (input, constant, or scheduled result);
//! 5. a node is scheduled at most once.

use std::collections::HashSet;

use crate::infer::infer;
use crate::{Graph, Op, ValueDef, ValueId};

pub fn verify(g: &Graph) -> Result<(), String> {
    let mut defined: HashSet<ValueId> = g.inputs.iter().copied().collect();
    let mut scheduled = HashSet::new();
    let is_avail = |defined: &HashSet<ValueId>, v: ValueId| defined.contains(&v) || g.const_of(v).is_some();
    for &n in g.order() {
        let node = g.node(n);
        if !scheduled.insert(n) {
            return Err(format!("node `{}` is scheduled twice", node.name));
        }
        if let Op::Unsupported { op_type, .. } = &node.op {
            return Err(format!("node `{}` is an unsupported op {op_type}", node.name));
        }
        for &v in &node.inputs {
            if !is_avail(&defined, v) {
                return Err(format!("node `{}` uses {v} (`{}`) before it is defined", node.name, g.value(v).name));
            }
        }
        let tys: Vec<_> = node.inputs.iter().map(|&v| g.ty(v)).collect();
        let want = infer(&node.op, &tys).map_err(|e| format!("node `{}` ({}): {e}", node.name, node.op.name()))?;
        let have: Vec<_> = node.outputs.iter().map(|&v| g.ty(v).clone()).collect();
        if want != have {
            return Err(format!(
                "node `{}` ({}): result types {have:?} differ from inferred {want:?}",
                node.name,
                node.op.name()
            ));
        }
        for (k, &v) in node.outputs.iter().enumerate() {
            if g.value(v).def != ValueDef::Node(n, k) {
                return Err(format!("node `{}` result {k} has a wrong definition", node.name));
            }
            defined.insert(v);
        }
    }
    for &v in &g.outputs {
        if !is_avail(&defined, v) {
            return Err(format!("graph output `{}` is not defined", g.value(v).name));
        }
    }
    Ok(())
}
