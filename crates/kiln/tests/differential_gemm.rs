//! Differential tests of the CPU backend's register-blocked GEMM: edge tiles, K slices,
//! prepacked weights and fused epilogues, against the reference evaluation.

mod common;

use common::*;
use kiln::ir::op::{BinaryOp, UnaryOp};
use kiln::ir::{DType, Data, Graph, Op, Tensor};
use kiln::{CompileOptions, Compiler, Session, SessionOptions, TensorRef};

/// Shapes around the CPU backend's register-blocked GEMM: edges in M, N and K (not multiples
/// of the tile), several K slices and M/N blocks, M = 1, transposed and batched operands,
/// constant and run-time B.
#[test]
fn blocked_gemm_odd_shapes() {
    let mut r = Rng(44);
    for (m, k, n) in [(1, 7, 5), (1, 300, 70), (5, 33, 17), (7, 260, 33), (16, 64, 48), (17, 129, 31), (100, 300, 270)]
    {
        for const_b in [false, true] {
            let a = r.tensor(DType::F32, &[m, k]);
            let b = r.tensor(DType::F32, &[k, n]);
            check_with(Op::MatMul, &[a, b], &[false, const_b], 1e-4);
        }
    }
    // Batched, with a broadcast batch dimension on either side.
    for (ba, bb) in [(vec![3], vec![3]), (vec![2, 1], vec![3]), (vec![1], vec![2, 4])] {
        let (m, k, n) = (r.range(1, 20), r.range(1, 40), r.range(1, 40));
        let mut sa = ba.clone();
        sa.extend([m, k]);
        let mut sb = bb.clone();
        sb.extend([k, n]);
        for const_b in [false, true] {
            let ins = [r.tensor(DType::F32, &sa), r.tensor(DType::F32, &sb)];
            check_with(Op::MatMul, &ins, &[false, const_b], 1e-4);
        }
    }
    // Transposed operands, with alpha/beta and a bias (a finalizer).
    for (ta, tb) in [(false, true), (true, false), (true, true)] {
        for (m, k, n) in [(1, 19, 37), (13, 70, 35), (50, 280, 20)] {
            let a = if ta { vec![k, m] } else { vec![m, k] };
            let b = if tb { vec![n, k] } else { vec![k, n] };
            let op = Op::Gemm { alpha: 0.5, beta: 1.5, trans_a: ta, trans_b: tb };
            let ins = [r.tensor(DType::F32, &a), r.tensor(DType::F32, &b), r.tensor(DType::F32, &[n])];
            check_with(op.clone(), &ins, &[false, true, true], 1e-4);
            check_with(op, &ins, &[false, false, false], 1e-4);
        }
    }
}

/// A constant B is packed into panels at compile time (the LIR names the packed constant),
/// for many rows and for one (a GEMV then streams each panel contiguously), and the result
/// still matches the reference.
#[test]
fn blocked_gemm_prepacks_constant_b() {
    let mut r = Rng(46);
    for (m, k, n) in [(40, 70, 45), (1, 70, 45)] {
        let (x, w) = (r.tensor(DType::F32, &[m, k]), r.tensor(DType::F32, &[k, n]));
        let mut g = Graph::new("prepack");
        let xi = g.add_input("x", x.ty.clone());
        let wi = g.add_const("w", w.clone());
        g.outputs = g.add_node(Op::MatMul, &[xi, wi], "mm", &[]).unwrap();
        let prog = lowered(&g);
        let text = kiln::ir::lir::print(&prog);
        assert!(text.contains(".panels"), "B of {m}x{k}x{n} should be packed at compile time:\n{text}");
        check_with(Op::MatMul, &[x, w], &[false, true], 1e-4);
    }
}

/// `--precision bf16`: constant weights are packed as bf16 panels and widened as they are
/// loaded; products match the reference on the weights rounded to bf16, at M = 1, at edges in
/// M, N and K (K not a multiple of anything), batched, with a bias, and in a convolution.
#[test]
fn bf16_weights_match_the_reference_on_rounded_weights() {
    let mut r = Rng(48);
    for (m, k, n) in [(1, 7, 5), (1, 300, 70), (5, 33, 17), (17, 129, 31), (100, 300, 270)] {
        let (x, w) = (r.tensor(DType::F32, &[m, k]), r.tensor(DType::F32, &[k, n]));
        let lir = check_bf16(Op::MatMul, &[x, w], &[false, true], 1e-4);
        assert!(lir.contains("<bf16"), "{m}x{k}x{n}: the weights should be bf16 panels:\n{lir}");
    }
    let ins = [r.tensor(DType::F32, &[3, 9, 20]), r.tensor(DType::F32, &[20, 11])];
    check_bf16(Op::MatMul, &ins, &[false, true], 1e-4);
    let op = Op::Gemm { alpha: 0.5, beta: 1.5, trans_a: false, trans_b: true };
    let ins = [r.tensor(DType::F32, &[13, 70]), r.tensor(DType::F32, &[35, 70]), r.tensor(DType::F32, &[35])];
    check_bf16(op, &ins, &[false, true, true], 1e-4);
    // A 3x3 convolution of stride 2 with padding (a product over its taps; a stride-1 one
    // would go through Winograd, whose transformed weights are what is rounded), 16 channels
    // in and out.
    let op = Op::Conv {
        window: kiln::ir::op::Window { kernel: [3, 3], strides: [2, 2], pads: [1, 1, 1, 1], dilations: [1, 1] },
        group: 1,
    };
    let ins =
        [r.tensor(DType::F32, &[1, 16, 9, 11]), r.tensor(DType::F32, &[16, 16, 3, 3]), r.tensor(DType::F32, &[16])];
    check_bf16(op, &ins, &[false, true, true], 1e-4);
    // A run-time B stays f32: the reference is the plain product.
    let ins = [r.tensor(DType::F32, &[4, 10]), r.tensor(DType::F32, &[10, 6])];
    check_bf16(Op::MatMul, &ins, &[false, false], 1e-4);
}

/// A step of an epilogue: an op on earlier values, or a scalar constant.
enum Step<V> {
    Op(Op, Vec<V>),
    Const(f32),
}

/// Epilogue `kind` after `h = x·w + b`: ReLU, a GELU (`h·½·(1 + erf(h/√2))`, which reads h
/// twice), tanh, the sigmoid, exp.
fn epilogue<V: Clone>(kind: usize, h: V, f: &mut dyn FnMut(Step<V>) -> V) -> V {
    let mut un = |u: UnaryOp, x: V| f(Step::Op(Op::Unary(u), vec![x]));
    match kind {
        0 => un(UnaryOp::Relu, h),
        1 => {
            let s2 = f(Step::Const(std::f32::consts::SQRT_2));
            let t = f(Step::Op(Op::Binary(BinaryOp::Div), vec![h.clone(), s2]));
            let e = f(Step::Op(Op::Unary(UnaryOp::Erf), vec![t]));
            let one = f(Step::Const(1.0));
            let a = f(Step::Op(Op::Binary(BinaryOp::Add), vec![e, one]));
            let m = f(Step::Op(Op::Binary(BinaryOp::Mul), vec![h, a]));
            let half = f(Step::Const(0.5));
            f(Step::Op(Op::Binary(BinaryOp::Mul), vec![m, half]))
        }
        2 => un(UnaryOp::Tanh, h),
        3 => un(UnaryOp::Sigmoid, h),
        _ => un(UnaryOp::Exp, h),
    }
}

/// MatMul + bias + an activation fuse into one kernel (the blocked GEMM, the activation
/// computed on its accumulator vectors: ReLU, and GELU, tanh, sigmoid and exp through the
/// vector forms of the inline approximations) and match the reference, for constant and
/// run-time B, full and edge tiles.
#[test]
fn blocked_gemm_fused_epilogue() {
    let mut r = Rng(45);
    let shapes = [(1, 40, 37, true), (9, 33, 70, false), (70, 260, 45, true), (31, 17, 300, false)];
    for kind in 0..5 {
        for (m, k, n, const_b) in shapes {
            let x = r.tensor(DType::F32, &[m, k]);
            let w = r.tensor(DType::F32, &[k, n]);
            let bias = r.tensor(DType::F32, &[n]);
            let ev = |op: &Op, ins: &[&Tensor]| kiln::ir::ops::eval(op, ins).unwrap().remove(0);
            let y = ev(&Op::MatMul, &[&x, &w]);
            let y = ev(&Op::Binary(BinaryOp::Add), &[&y, &bias]);
            let want = epilogue(kind, y, &mut |s| match s {
                Step::Op(op, ins) => ev(&op, &ins.iter().collect::<Vec<_>>()),
                Step::Const(c) => Tensor::scalar_f32(c),
            });

            let mut g = Graph::new("mm_epilogue");
            let xi = g.add_input("x", x.ty.clone());
            let wi = if const_b { g.add_const("w", w.clone()) } else { g.add_input("w", w.ty.clone()) };
            let bi = g.add_const("b", bias);
            let y = g.add_node(Op::MatMul, &[xi, wi], "mm", &[]).unwrap()[0];
            let y = g.add_node(Op::Binary(BinaryOp::Add), &[y, bi], "bias", &[]).unwrap()[0];
            let mut at = 0;
            let y = epilogue(kind, y, &mut |s| {
                at += 1;
                match s {
                    Step::Op(op, ins) => g.add_node(op, &ins, format!("e{at}"), &[]).unwrap()[0],
                    Step::Const(c) => g.add_const(format!("c{at}"), Tensor::scalar_f32(c)),
                }
            });
            g.outputs = vec![y];
            let prog = lowered(&g);
            let kernels = prog.instrs.iter().filter(|i| matches!(i, kiln::ir::lir::Instr::Kernel(_))).count();
            assert_eq!(kernels, 1, "matmul, bias and epilogue {kind} should fuse:\n{}", kiln::ir::lir::print(&prog));
            let compiler = Compiler::new(CompileOptions { verify: true, ..Default::default() });
            let art = compiler.compile_graph(g).unwrap();
            let s = Session::from_bytes(&art.bytes(), &SessionOptions { threads: 2, ..Default::default() }).unwrap();
            let mut ins = vec![TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &x.data }];
            if !const_b {
                ins.push(TensorRef { dtype: w.dtype().code(), shape: w.shape(), data: &w.data });
            }
            let got = s.run(&ins).unwrap()[0].to_f32().unwrap();
            assert_eq!(got.len(), m * n);
            for (i, (a, b)) in got.iter().zip(want.to_f64_vec()).enumerate() {
                assert!(
                    (*a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{m}x{k}x{n} epilogue {kind} element {i}: {a} vs {b}"
                );
            }
        }
    }
}

/// `y = (Cast(i32, x) − zp) @ w` for u8 `x` over its whole range, a u8 zero point and
/// constant i8 weights (also ±128 and 127 side by side, the largest pair sums): MatMulInteger
/// as imported. With `scale`, the f32 epilogue `Cast(f32, y)·scale + bias` of a dynamically
/// quantized model.
fn integer_product(r: &mut Rng, batch: &[usize], (m, k, n): (usize, usize, usize), scale: bool) -> RefNet {
    let mut net = RefNet::new("int_product");
    let mut xs = batch.to_vec();
    xs.extend([m, k]);
    let xn: usize = xs.iter().product();
    let xv: Vec<u8> = (0..xn).map(|i| if i % 7 == 0 { 255 } else { r.next() as u8 }).collect();
    let x = net.input("x", Tensor::from_data(xs, Data::U8(xv)));
    let wv: Vec<i8> = (0..k * n).map(|i| if i % 5 == 0 { -128 } else { r.next() as i8 }).collect();
    let w = net.constant("w", Tensor::from_data(vec![k, n], Data::I8(wv)));
    let zp = net.constant("zp", Tensor::from_data(vec![], Data::U8(vec![r.next() as u8])));
    let xi = net.node(Op::cast(DType::I32), &[x], "xi");
    let zi = net.node(Op::cast(DType::I32), &[zp], "zi");
    let xs = net.node(Op::Binary(BinaryOp::Sub), &[xi, zi], "xs");
    let wi = net.node(Op::cast(DType::I32), &[w], "wi");
    let y = net.node(Op::MatMul, &[xs, wi], "y");
    if !scale {
        net.g.outputs = vec![y];
        return net;
    }
    let s = net.constant("s", Tensor::from_data(vec![], Data::F32(vec![0.0123])));
    let b = net.constant("b", r.tensor(DType::F32, &[n]));
    let yf = net.node(Op::cast(DType::F32), &[y], "yf");
    let ys = net.node(Op::Binary(BinaryOp::Mul), &[yf, s], "ys");
    let out = net.node(Op::Binary(BinaryOp::Add), &[ys, b], "out");
    net.g.outputs = vec![out];
    net
}

/// Integer products (MatMulInteger, dynamically quantized models) take the blocked schedule
/// with i16 operands (`vpmaddwd`) where the CPU has it: exact i32 results at M = 1, edges in
/// M and N, K odd (the last pair half) and even, batched A, and with the f32 epilogue. On a
/// CPU without it they run as i32 reductions; the results are checked either way.
#[test]
fn integer_products_match_the_reference() {
    let mut r = Rng(48);
    let blocked = std::is_x86_feature_detected!("avx2");
    let shapes = [(1, 7, 5), (1, 300, 70), (5, 33, 17), (7, 261, 33), (17, 129, 31), (100, 300, 270), (6, 3, 16)];
    for (i, &mkn) in shapes.iter().enumerate() {
        for (batch, scale) in [(&[][..], false), (&[][..], true), (&[2][..], i % 2 == 0)] {
            let net = integer_product(&mut r, batch, mkn, scale);
            let out = net.g.outputs.clone();
            let text = kiln::ir::lir::print(&net.lowered(&out));
            if blocked {
                assert!(text.contains(".panels") && text.contains(".i16"), "{mkn:?}: i16 operands and panels:\n{text}");
            }
            net.check(&out, if scale { 1e-6 } else { 0.0 });
        }
    }
}

/// `--precision int8`'s product `x @ w` for row-major `x` (`rows × k`) and `w` (`k × n`),
/// computed here from the policy's definition: `w` per column (`sw = max|w[:, j]| / 127`, 1
/// for a zero column), `x` per row (`sx = max(max|x[i, :]|, f32::MIN_POSITIVE) / 127`), both
/// rounded to the nearest integer (ties to even), the integer sums scaled back in f32 as
/// `(Σ a·q)·sx·sw`.
fn int8_product(x: &[f32], w: &[f32], k: usize, n: usize) -> Vec<f32> {
    let rows = x.len() / k;
    let sw: Vec<f32> = (0..n)
        .map(|j| (0..k).map(|i| w[i * n + j].abs()).fold(0f32, f32::max))
        .map(|m| if m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let q: Vec<i64> = w.iter().enumerate().map(|(i, &v)| (v / sw[i % n]).round_ties_even() as i64).collect();
    let mut y = Vec::with_capacity(rows * n);
    for r in 0..rows {
        let row = &x[r * k..(r + 1) * k];
        let sx = row.iter().map(|v| v.abs()).fold(0f32, f32::max).max(f32::MIN_POSITIVE) / 127.0;
        let a: Vec<i64> = row.iter().map(|&v| (v / sx).round_ties_even() as i64).collect();
        for j in 0..n {
            let s: i64 = (0..k).map(|i| a[i] * q[i * n + j]).sum();
            y.push(s as f32 * sx * sw[j]);
        }
    }
    y
}

/// `--precision int8`: a product with constant weights is quantized (weights per column,
/// activations per row) and summed in i32; the compiled result matches the policy's
/// definition ([`int8_product`]) at M = 1, at edges in M, N and K (odd K), batched, with a
/// zero row and a zero column, and stays within 3% of the largest f32 result (the int8
/// tolerance this mode states for products of one layer). A run-time B stays f32.
#[test]
fn int8_products_match_the_quantized_reference() {
    let mut r = Rng(49);
    for (batch, m, k, n) in
        [(1, 1, 7, 5), (1, 1, 300, 70), (1, 5, 33, 17), (1, 17, 129, 31), (3, 9, 20, 11), (1, 100, 300, 270)]
    {
        let mut xs = r.f32s(batch * m * k, -2.0, 2.0);
        let mut ws = r.f32s(k * n, -1.0, 1.0);
        // A zero row of x and a zero column of w.
        xs[..k].iter_mut().for_each(|v| *v = 0.0);
        (0..k).for_each(|i| ws[i * n] = 0.0);
        let shape = if batch > 1 { vec![batch, m, k] } else { vec![m, k] };
        let x = Tensor::f32(shape.clone(), xs.clone());
        let w = Tensor::f32(vec![k, n], ws.clone());
        let mut out_shape = shape[..shape.len() - 1].to_vec();
        out_shape.push(n);
        let want = Tensor::f32(out_shape, int8_product(&xs, &ws, k, n));
        let exact = kiln::ir::ops::eval(&Op::MatMul, &[&x, &w]).unwrap().remove(0);
        let ins = [x.clone(), w.clone()];
        let (g, runtime) = one_node(&Op::MatMul, &ins, &[false, true]);
        let opts = CompileOptions { verify: true, precision: kiln::Precision::Int8, ..Default::default() };
        let what = format!("int8 {batch}x{m}x{k}x{n}");
        compile_and_compare_with(g, opts, &runtime, std::slice::from_ref(&want), 1e-5, &what);
        let top = exact.to_f64_vec().iter().fold(0f64, |a, v| a.max(v.abs()));
        let worst = want.to_f64_vec().iter().zip(exact.to_f64_vec()).fold(0f64, |a, (q, e)| a.max((q - e).abs()));
        assert!(worst <= 0.03 * top, "{what}: int8 differs from f32 by {worst} of {top}");
    }
    // Products of two activations stay f32.
    let ins = [r.tensor(DType::F32, &[4, 10]), r.tensor(DType::F32, &[10, 6])];
    let want = kiln::ir::ops::eval(&Op::MatMul, &[&ins[0], &ins[1]]).unwrap();
    let (g, runtime) = one_node(&Op::MatMul, &ins, &[false, false]);
    let opts = CompileOptions { verify: true, precision: kiln::Precision::Int8, ..Default::default() };
    compile_and_compare_with(g, opts, &runtime, &want, 1e-5, "int8 run-time B");
}

/// A static QDQ model's linear layer, `MatMul((Cast(f32, x_u8) − zp)·s, w)` and `Gemm` with
/// transposed weights and a bias, where each output column of `w` is an integer multiple of
/// its scale with 127 its largest (as a QDQ model's per-channel dequantized weights are):
/// an integer product (`int_product` in the LIR) whose result matches the f32 reference of
/// the same graph, at M = 1 and odd shapes.
#[test]
fn qdq_products_run_as_integers() {
    let mut r = Rng(52);
    for (m, k, n, gemm) in [(1, 33, 20, false), (7, 64, 48, false), (5, 40, 17, true)] {
        let mut net = RefNet::new("qdq_product");
        let xv: Vec<u8> = (0..m * k).map(|_| r.next() as u8).collect();
        let x = net.input("x", Tensor::from_data(vec![m, k], Data::U8(xv)));
        let zp = net.constant("zp", Tensor::f32(vec![], vec![128.0]));
        let s = net.constant("s", Tensor::f32(vec![], vec![0.05]));
        let sw: Vec<f32> = (0..n).map(|j| 0.002 * (j + 1) as f32).collect();
        // Weights [K, N] (MatMul) or [N, K] (Gemm, transposed): element (kk, j) = q·sw[j].
        let mut wv = vec![0f32; k * n];
        for kk in 0..k {
            for j in 0..n {
                let q = if kk == j % k { 127 } else { (r.next() % 255) as i64 - 127 };
                wv[if gemm { j * k + kk } else { kk * n + j }] = q as f32 * sw[j];
            }
        }
        let shape = if gemm { vec![n, k] } else { vec![k, n] };
        let w = net.constant("w", Tensor::f32(shape, wv));
        let xf = net.node(Op::cast(DType::F32), &[x], "xf");
        let xs = net.node(Op::Binary(BinaryOp::Sub), &[xf, zp], "xs");
        let xd = net.node(Op::Binary(BinaryOp::Mul), &[xs, s], "xd");
        let y = if gemm {
            let b = net.constant("b", r.tensor(DType::F32, &[n]));
            let op = Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true };
            net.node(op, &[xd, w, b], "y")
        } else {
            net.node(Op::MatMul, &[xd, w], "y")
        };
        let text = kiln::ir::lir::print(&net.lowered(&[y]));
        assert!(text.contains("int_product"), "{m}x{k}x{n}: an integer product:\n{text}");
        net.check(&[y], 1e-5);
    }
}
