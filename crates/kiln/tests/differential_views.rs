//! Copies that only move data (Transpose, Slice, Gather at one constant index) read in place
//! by their readers, or written in place by their producer: whole networks against the
//! reference evaluation (seeded), with the copies that must be gone checked in the LIR.
mod common;

use common::*;
use kiln::ir::lir::{Instr, Kernel, Program};
use kiln::ir::op::BinaryOp;
use kiln::ir::{DType, Op, Tensor};

fn kernels(p: &Program) -> impl Iterator<Item = &Kernel> {
    p.instrs.iter().filter_map(|i| match i {
        Instr::Kernel(k) => Some(k),
        _ => None,
    })
}

/// Multi-head attention as PyTorch exports it: one Q/K/V projection split by a reshape, a
/// transpose and three selects, heads moved in front, and the heads' products moved back
/// behind the tokens for the output projection. The scaled Q and K^T are computed straight
/// from the projection, and the product of the heads is written in the order the output
/// projection reads; the result matches the reference.
#[test]
fn attention_reads_the_projection_in_place() {
    let mut r = Rng(41);
    for (t, h, d, idx) in [(7, 2, 8, [0, 1, 2]), (13, 3, 5, [-3, -2, -1]), (1, 4, 4, [0, 1, 2])] {
        let c = h * d;
        let mut net = RefNet::new("attention");
        let x = net.input("x", r.tensor(DType::F32, &[t, c]));
        let w = net.constant("w", Tensor::f32(vec![c, 3 * c], r.f32s(3 * c * c, -0.3, 0.3)));
        let wo = net.constant("wo", Tensor::f32(vec![c, c], r.f32s(c * c, -0.3, 0.3)));
        let qkv = net.node(Op::MatMul, &[x, w], "qkv");
        let v4 = net.node(Op::Reshape { shape: vec![t, 3, h, d] }, &[qkv], "split");
        let heads = net.node(Op::Transpose { perm: vec![1, 2, 0, 3] }, &[v4], "heads");
        let [q, k, v] = idx.map(|i| {
            let at = net.constant(&format!("at{i}"), Tensor::i64(vec![], vec![i]));
            net.node(Op::Gather { axis: 0 }, &[heads, at], &format!("select{i}"))
        });
        let scale = net.constant("scale", Tensor::scalar_f32(0.5));
        let q = net.node(Op::Binary(BinaryOp::Mul), &[q, scale], "q_scaled");
        let kt = net.node(Op::Transpose { perm: vec![0, 2, 1] }, &[k], "kt");
        let kt = net.node(Op::Binary(BinaryOp::Mul), &[kt, scale], "k_scaled");
        let s = net.node(Op::MatMul, &[q, kt], "scores");
        let p = net.node(Op::Softmax { axis: 2 }, &[s], "softmax");
        let o = net.node(Op::MatMul, &[p, v], "context");
        let o = net.node(Op::Transpose { perm: vec![1, 0, 2] }, &[o], "tokens_first");
        let o = net.node(Op::Reshape { shape: vec![t, c] }, &[o], "merge");
        let y = net.node(Op::MatMul, &[o, wo], "out");
        let prog = net.lowered(&[y]);
        let text = kiln::ir::lir::print(&prog);
        // The scaled Q and K^T read the projection's buffer; no head transpose is a kernel
        // of its own; the heads' product writes the token-major order itself.
        let qkv_buf = kernel_ending(&prog, "qkv").output.buffer;
        for scaled in ["q_scaled", "k_scaled"] {
            assert_eq!(kernel_ending(&prog, scaled).inputs[0].buffer, qkv_buf, "{text}");
        }
        assert!(kernels(&prog).all(|k| !k.name.ends_with("heads")), "{text}");
        assert!(kernel_ending(&prog, "context+tokens_first").reduction.is_some(), "{text}");
        net.check(&[y], 1e-4);
    }
}

/// Chains of slices (with steps and offsets), transposes and constant gathers, read by
/// elementwise ops, reductions, products and concats through reshapes, on odd shapes: the
/// copies whose readers can compose the view are gone, the others stay, and every output
/// matches the reference.
#[test]
fn copies_through_views() {
    let mut r = Rng(43);
    for case in 0..12 {
        let (a, b, c) = (r.range(2, 6), r.range(3, 7), r.range(2, 9));
        let mut net = RefNet::new("views");
        let x = net.input("x", r.tensor(DType::F32, &[a, b, c]));
        // A slice with a step and an offset, then a transpose, then a reshape that merges
        // two dims (which a reader cannot always compose).
        let (b0, bs) = (r.range(0, 1), r.range(1, 2));
        let bn = (b - b0).div_ceil(bs);
        let s = net.node(
            Op::Slice { starts: vec![0, b0 as i64, 1], steps: vec![1, bs as i64, 1], out_shape: vec![a, bn, c - 1] },
            &[x],
            "slice",
        );
        let t = net.node(Op::Transpose { perm: vec![2, 0, 1] }, &[s], "transpose");
        let at = net.constant("at", Tensor::i64(vec![], vec![-1 - (case % 2) as i64]));
        let g = net.node(Op::Gather { axis: 1 }, &[t, at], "select");
        let e = net.node(Op::Unary(kiln::ir::op::UnaryOp::Exp), &[g], "exp");
        let m = net.node(Op::Reshape { shape: vec![(c - 1) * a, bn] }, &[t], "merge");
        let y = net.node(Op::Unary(kiln::ir::op::UnaryOp::Tanh), &[m], "tanh");
        let sum = net.node(Op::Reduce { op: kiln::ir::op::ReduceOp::Sum, axes: vec![1], keepdims: false }, &[t], "sum");
        let w = net.constant("w", Tensor::f32(vec![bn, 3], r.f32s(bn * 3, -0.5, 0.5)));
        let prod = net.node(Op::MatMul, &[t, w], "product");
        let cat = net.node(Op::Concat { axis: 2 }, &[t, prod], "cat");
        let outs = [e, y, sum, cat];
        let prog = net.lowered(&outs);
        // Nothing reads the selected row through a copy of its own.
        let text = kiln::ir::lir::print(&prog);
        assert!(kernels(&prog).all(|k| !k.name.ends_with("select")), "{text}");
        net.check(&outs, 1e-4);
    }
}

/// A reflect pad as the importer writes it: a Gather of rows by constant indices, then slices
/// of columns (forward and reversed) joined by a Concat. The slices look the rows up
/// themselves and write the output in one pass, on odd shapes with a batch; the result
/// matches the reference.
#[test]
fn row_gathers_are_looked_up_by_their_slices() {
    let mut r = Rng(47);
    for (n, c, h, w, p) in [(2, 3, 7, 9, 2), (1, 5, 11, 6, 3), (3, 1, 4, 17, 1)] {
        let mut net = RefNet::new("reflect");
        let x = net.input("x", r.tensor(DType::F32, &[n, c, h, w]));
        let rows: Vec<i64> = (0..h + 2 * p)
            .map(|i| (i as i64 - p as i64).abs())
            .map(|i| if i >= h as i64 { 2 * (h as i64 - 1) - i } else { i })
            .collect();
        let at = net.constant("rows", Tensor::i64(vec![rows.len()], rows));
        let g = net.node(Op::Gather { axis: 2 }, &[x, at], "rows");
        let hp = h + 2 * p;
        let slice = |net: &mut RefNet, start: usize, step: i64, len: usize, name: &str| {
            let op = Op::Slice {
                starts: vec![0, 0, 0, start as i64],
                steps: vec![1, 1, 1, step],
                out_shape: vec![n, c, hp, len],
            };
            net.node(op, &[g], name)
        };
        let left = slice(&mut net, p, -1, p, "left");
        let mid = slice(&mut net, 0, 1, w, "middle");
        let right = slice(&mut net, w - 2, -1, p, "right");
        let y = net.node(Op::Concat { axis: 3 }, &[left, mid, right], "pad");
        let prog = net.lowered(&[y]);
        let text = kiln::ir::lir::print(&prog);
        assert!(kernels(&prog).all(|k| !k.name.ends_with("rows")), "{text}");
        assert_eq!(kernels(&prog).count(), 3, "{text}");
        net.check(&[y], 0.0);
    }
}
