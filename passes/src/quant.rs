//! Integer products read their operands narrow.
//!
//! An i32 MatMul whose operands are 8-bit integers shifted by their zero points (what
//! MatMulInteger, QLinearMatMul and the integer half of a dynamically quantized model import
//! as: `Cast(i32, x) - zero_point`) computes exactly from i16 operands. [`narrow_int_products`]
//! gives such a product `MatMul(Cast(i32, Cast(i16, a)), B)` when B is a constant whose values
//! fit i16 and `a`'s range, followed through casts, shifts and constants, does too: the i16
//! value is what A's producer writes ([`crate::fuse`] keeps it materialized and fuses the
//! widening into the product), and a backend multiplies pairs of i16 into i32 sums
//! (`vpmaddwd`) instead of running an i32 reduction. The graph computes the same values.

use kiln_ir::{BinaryOp, DType, Graph, Op, ValueDef, ValueId};

use crate::PassError;

/// The least and greatest value `v` can take, where its producers bound it: integer constants,
/// widening casts of integers, sums and differences of bounded values.
pub fn int_bounds(g: &Graph, v: ValueId) -> Option<(i64, i64)> {
    let ty = g.ty(v);
    if let Some(t) = g.const_of(v) {
        if !ty.dtype.is_int() || t.numel() == 0 {
            return None;
        }
        let xs = t.to_i64_vec();
        return Some((*xs.iter().min()?, *xs.iter().max()?));
    }
    let ValueDef::Node(n, _) = g.value(v).def else { return dtype_bounds(ty.dtype) };
    let node = g.node(n);
    match node.op {
        Op::Cast { to, .. } => {
            let from = g.ty(node.inputs[0]).dtype;
            let inner = int_bounds(g, node.inputs[0]).or_else(|| dtype_bounds(from))?;
            let (lo, hi) = dtype_bounds(to)?;
            (inner.0 >= lo && inner.1 <= hi).then_some(inner)
        }
        Op::Binary(op @ (BinaryOp::Add | BinaryOp::Sub)) => {
            let (a, b) = (int_bounds(g, node.inputs[0])?, int_bounds(g, node.inputs[1])?);
            let r = if op == BinaryOp::Add {
                (a.0.checked_add(b.0)?, a.1.checked_add(b.1)?)
            } else {
                (a.0.checked_sub(b.1)?, a.1.checked_sub(b.0)?)
            };
            let (lo, hi) = dtype_bounds(ty.dtype)?;
            (r.0 >= lo && r.1 <= hi).then_some(r)
        }
        _ => dtype_bounds(ty.dtype).filter(|_| ty.dtype.size() <= 2),
    }
}

/// The range of an integer type of at most 32 bits.
fn dtype_bounds(d: DType) -> Option<(i64, i64)> {
    Some(match d {
        DType::U8 => (0, u8::MAX as i64),
        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
        DType::U16 => (0, u16::MAX as i64),
        DType::I16 => (i16::MIN as i64, i16::MAX as i64),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        _ => return None,
    })
}

fn fits_i16(b: Option<(i64, i64)>) -> bool {
    b.is_some_and(|(lo, hi)| lo >= i16::MIN as i64 && hi <= i16::MAX as i64)
}

/// Whether `v` is an i32 value read as i16 widened: `Cast(i32, x)` of an i16 `x`.
pub fn widened_i16(g: &Graph, v: ValueId) -> bool {
    let ValueDef::Node(n, _) = g.value(v).def else { return false };
    let node = g.node(n);
    matches!(node.op, Op::Cast { to: DType::I32, .. }) && g.ty(node.inputs[0]).dtype == DType::I16
}

/// Whether node `n` is an i32 matrix product (both operands at least 2-D).
pub fn int_product(g: &Graph, n: &kiln_ir::Node) -> bool {
    matches!(n.op, Op::MatMul)
        && g.ty(n.outputs[0]).dtype == DType::I32
        && n.inputs.iter().all(|&v| g.ty(v).rank() >= 2)
}

/// Narrows the variable operand of every i32 product with a constant B to i16 where both
/// fit (see the module doc). Returns whether the graph changed.
pub fn narrow_int_products(g: &mut Graph) -> Result<bool, PassError> {
    let mut changed = false;
    let mut narrowed: std::collections::HashMap<ValueId, ValueId> = Default::default();
    for nid in g.order().to_vec() {
        let node = g.node(nid).clone();
        if !int_product(g, &node) {
            continue;
        }
        let (a, b) = (node.inputs[0], node.inputs[1]);
        if g.const_of(a).is_some() || g.const_of(b).is_none() || widened_i16(g, a) {
            continue;
        }
        if !fits_i16(int_bounds(g, a)) || !fits_i16(int_bounds(g, b)) {
            continue;
        }
        let name = g.value(a).name.clone();
        g.guard = node.guard.clone();
        let add = |g: &mut Graph, to: DType, x: ValueId, tag: &str| {
            g.add_node(Op::cast(to), &[x], format!("{name}/{tag}"), &[format!("{name}.{tag}")])
                .map(|v| v[0])
                .map_err(|e| PassError::Failed { pass: "narrow-int-products".into(), message: e.to_string() })
        };
        // One i16 value per operand (the query, key and value products of a layer read the
        // same activation), one widening per product (each fuses into its product).
        let narrow = match narrowed.get(&a) {
            Some(&n) => Ok(n),
            None => add(g, DType::I16, a, "i16"),
        };
        let wide = narrow.and_then(|n| add(g, DType::I32, n, "widened").map(|w| (n, w)));
        g.guard.clear();
        let (narrow, wide) = wide?;
        let fresh = narrowed.insert(a, narrow).is_none();
        // The casts go right before the product.
        let ValueDef::Node(wn, _) = g.value(wide).def else { unreachable!("just added") };
        let ValueDef::Node(nn, _) = g.value(narrow).def else { unreachable!("just added") };
        let new: Vec<kiln_ir::NodeId> = if fresh { vec![nn, wn] } else { vec![wn] };
        let mut order: Vec<kiln_ir::NodeId> = g.order().iter().copied().filter(|m| !new.contains(m)).collect();
        let at = order.iter().position(|&m| m == nid).expect("scheduled");
        order.splice(at..at, new);
        g.set_order(order);
        g.node_mut(nid).inputs[0] = wide;
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::{Data, Tensor, TensorType};

    /// `MatMul(Cast(i32, x) - zp, w)` for a u8 input and i32 weights.
    fn graph(weights: Vec<i32>) -> (Graph, ValueId) {
        let mut g = Graph::new("q");
        let x = g.add_input("x", TensorType::new(DType::U8, vec![3, 4]));
        let zp = g.add_const("zp", Tensor::from_data(vec![], Data::I32(vec![128])));
        let w = g.add_const("w", Tensor::from_data(vec![4, 2], Data::I32(weights)));
        let xi = g.add_node(Op::cast(DType::I32), &[x], "c", &["xi".into()]).unwrap()[0];
        let xs = g.add_node(Op::Binary(BinaryOp::Sub), &[xi, zp], "s", &["xs".into()]).unwrap()[0];
        let y = g.add_node(Op::MatMul, &[xs, w], "m", &["y".into()]).unwrap()[0];
        g.outputs.push(y);
        (g, y)
    }

    #[test]
    fn a_shifted_u8_operand_is_read_as_i16() {
        let (mut g, y) = graph(vec![-128, 127, 0, 5, 1, 2, 3, 4]);
        assert!(narrow_int_products(&mut g).unwrap());
        let ValueDef::Node(m, _) = g.value(y).def else { panic!() };
        let a = g.node(m).inputs[0];
        assert!(widened_i16(&g, a));
        assert_eq!(int_bounds(&g, a), Some((-128, 127)));
        // Once is enough.
        assert!(!narrow_int_products(&mut g).unwrap());
    }

    #[test]
    fn weights_past_i16_leave_the_product_alone() {
        let (mut g, _) = graph(vec![40000, 0, 0, 0, 0, 0, 0, 0]);
        assert!(!narrow_int_products(&mut g).unwrap());
    }
}
