//! Differential tests: every op's compiled kernel against its reference evaluation, on
//! random shapes and attributes (seeded, so failures reproduce).
//! (Convolutions and pools: `differential_conv.rs`; indexing by data: `differential_index.rs`;
//! GEMM: `differential_gemm.rs`; element types: `differential_dtypes.rs`.)
mod common;

use common::*;
use kiln::ir::op::{BinaryOp, CmpOp, ReduceOp, UnaryOp, Window};
use kiln::ir::{DType, Data, Graph, Op, Tensor};
use kiln::{CompileOptions, Compiler, Session, SessionOptions, TensorRef};

#[test]
fn unary_ops() {
    let mut r = Rng(1);
    let ops = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Relu,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::Erf,
        UnaryOp::Floor,
        UnaryOp::Ceil,
        UnaryOp::Round,
        UnaryOp::Sign,
        UnaryOp::LeakyRelu { alpha: 0.1 },
        UnaryOp::HardSigmoid { alpha: 0.2, beta: 0.5 },
        UnaryOp::Clip { lo: -0.5, hi: 0.7 },
    ];
    for op in ops {
        let s = r.shape(3, 9);
        check(Op::Unary(op), &[r.tensor(DType::F32, &s)]);
    }
    for op in [UnaryOp::Sqrt, UnaryOp::Log, UnaryOp::Reciprocal] {
        let s = r.shape(2, 40);
        let n = s.iter().product();
        check(Op::Unary(op), &[Tensor::f32(s, r.f32s(n, 0.1, 5.0))]);
    }
    for dt in [DType::I32, DType::I64] {
        for op in [UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Relu, UnaryOp::Sign, UnaryOp::Clip { lo: -3.0, hi: 4.0 }] {
            let s = r.shape(2, 7);
            check(Op::Unary(op), &[r.tensor(dt, &s)]);
        }
    }
    let s = r.shape(2, 5);
    check(Op::Unary(UnaryOp::Not), &[r.tensor(DType::Bool, &s)]);
    // Round at the ties (to even) and just below a half, in f32 and f64.
    let mut halves: Vec<f32> = (-9..=9).map(|i| i as f32 * 0.5).collect();
    halves.extend([0.49999997, -0.49999997, 8388609.0, 1.5e9]);
    check(Op::Unary(UnaryOp::Round), &[Tensor::f32(vec![halves.len()], halves.clone())]);
    let wide: Vec<f64> = halves.iter().map(|&x| f64::from(x)).collect();
    check(Op::Unary(UnaryOp::Round), &[Tensor::from_data(vec![wide.len()], kiln::ir::Data::F64(wide))]);
}

/// The inline f32 exp, tanh, erf and sigmoid (polynomials the code generator emits instead
/// of libm calls) against the reference over their whole range: relative error within a few
/// ulp, overflow to inf, subnormal and zero results, NaN, infinities and signed zeros.
#[test]
fn transcendentals_over_their_range() {
    let mut xs: Vec<f32> = (-2400..=2400).map(|i| i as f32 * 0.05).collect();
    xs.extend((-300..=300).map(|i| i as f32 * 1e-3));
    xs.extend([
        -110.0,
        -104.5,
        -104.0,
        -103.9,
        -100.0,
        -95.5,
        -87.5,
        -87.3,
        88.0,
        88.7,
        88.8,
        100.0,
        1e-30,
        -1e-30,
        3.9,
        4.0,
        4.1,
        -1e4,
        f32::MIN,
    ]);
    xs.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        0.6249,
        0.625,
        0.6251,
        1.99,
        2.0,
        2.01,
    ]);
    let x = Tensor::f32(vec![xs.len()], xs.clone());
    for (op, rtol) in [(UnaryOp::Exp, 5e-7), (UnaryOp::Sigmoid, 5e-7), (UnaryOp::Tanh, 1e-6), (UnaryOp::Erf, 1e-6)] {
        let want = kiln::ir::ops::eval(&Op::Unary(op), &[&x]).unwrap().remove(0).to_f64_vec();
        let mut g = Graph::new("transcendental");
        let xi = g.add_input("x", x.ty.clone());
        g.outputs = g.add_node(Op::Unary(op), &[xi], "f", &[]).unwrap();
        let art = Compiler::new(CompileOptions::default()).compile_graph(g).unwrap();
        let s = Session::from_bytes(&art.bytes(), &SessionOptions::default()).unwrap();
        let got = s.run(&[TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &x.data }]).unwrap()[0]
            .to_f32()
            .unwrap();
        for ((&xv, &a), &b) in xs.iter().zip(&got).zip(&want) {
            let b32 = b as f32;
            let ok = if b32.is_nan() {
                a.is_nan()
            } else if b32.is_infinite() || b32 == 0.0 {
                a == b32 && a.is_sign_negative() == b32.is_sign_negative()
            } else {
                ((a as f64) - b).abs() <= rtol * b.abs() + 2e-45
            };
            assert!(ok, "{op:?}({xv:e}) = {a:e}, reference {b:e}");
        }
    }
}

#[test]
fn binary_ops_with_broadcasting() {
    let mut r = Rng(2);
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max, BinaryOp::Min] {
        for dt in [DType::F32, DType::I32, DType::I64] {
            let (a, b) = broadcast_pair(&mut r);
            let x = r.tensor(dt, &a);
            let mut y = r.tensor(dt, &b);
            if op == BinaryOp::Div && dt != DType::F32 {
                let n = b.iter().product();
                y = Tensor::from_data(
                    b.clone(),
                    if dt == DType::I32 {
                        Data::I32((0..n).map(|i| [3, -2, 5, 1][i % 4]).collect())
                    } else {
                        Data::I64((0..n).map(|i| [3, -2, 5, 1][i % 4]).collect())
                    },
                );
            }
            check(Op::Binary(op), &[x, y]);
        }
    }
    let (a, b) = broadcast_pair(&mut r);
    let x = Tensor::f32(a.clone(), r.f32s(a.iter().product(), 0.1, 3.0));
    check(Op::Binary(BinaryOp::Pow), &[x, r.tensor(DType::F32, &b)]);
    for op in [BinaryOp::And, BinaryOp::Or, BinaryOp::Xor] {
        let (a, b) = broadcast_pair(&mut r);
        check(Op::Binary(op), &[r.tensor(DType::Bool, &a), r.tensor(DType::Bool, &b)]);
    }
    for fmod in [false, true] {
        let (a, b) = broadcast_pair(&mut r);
        let n = b.iter().product();
        check(
            Op::Binary(BinaryOp::Mod { fmod }),
            &[r.tensor(DType::I64, &a), Tensor::i64(b, (0..n).map(|i| [3, -4, 7][i % 3]).collect())],
        );
    }
}

#[test]
fn compare_where_cast() {
    let mut r = Rng(3);
    for op in [CmpOp::Equal, CmpOp::Less, CmpOp::LessOrEqual, CmpOp::Greater, CmpOp::GreaterOrEqual] {
        for dt in [DType::F32, DType::I64, DType::I32] {
            let (a, b) = broadcast_pair(&mut r);
            check(Op::Compare(op), &[r.tensor(dt, &a), r.tensor(dt, &b)]);
        }
    }
    let (a, b) = broadcast_pair(&mut r);
    check(Op::Where, &[r.tensor(DType::Bool, &a), r.tensor(DType::F32, &b), r.tensor(DType::F32, &a)]);
    // (The small types are covered by `casts_between_every_dtype`.)
    let types = || DType::ALL.into_iter().filter(|d| !d.is_small());
    for from in types() {
        for to in types() {
            let s = r.shape(2, 6);
            check(Op::cast(to), &[r.tensor(from, &s)]);
        }
    }
}

#[test]
fn matmul_and_gemm() {
    let mut r = Rng(4);
    for _ in 0..6 {
        let (m, k, n) = (r.range(1, 9), r.range(1, 17), r.range(1, 19));
        let (ba, bb) = broadcast_pair(&mut r);
        let mut a = ba.clone();
        a.extend([m, k]);
        let mut b = bb.clone();
        b.extend([k, n]);
        check(Op::MatMul, &[r.tensor(DType::F32, &a), r.tensor(DType::F32, &b)]);
    }
    let k = r.range(2, 9);
    check(Op::MatMul, &[r.tensor(DType::F32, &[k]), r.tensor(DType::F32, &[3, k, 5])]);
    check(Op::MatMul, &[r.tensor(DType::F32, &[4, k]), r.tensor(DType::F32, &[k])]);
    check(Op::MatMul, &[r.tensor(DType::I64, &[3, k]), r.tensor(DType::I64, &[k, 2])]);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (m, k, n) = (r.range(1, 9), r.range(1, 13), r.range(1, 11));
        let a = if ta { vec![k, m] } else { vec![m, k] };
        let b = if tb { vec![n, k] } else { vec![k, n] };
        let c = [vec![n], vec![m, 1], vec![m, n], vec![]][r.range(0, 3)].clone();
        let op = Op::Gemm { alpha: 0.5, beta: 1.5, trans_a: ta, trans_b: tb };
        check_with(
            op,
            &[r.tensor(DType::F32, &a), r.tensor(DType::F32, &b), r.tensor(DType::F32, &c)],
            &[false, true, true],
            1e-5,
        );
    }
}

/// A convolution's channels-last result copied to the row-major (NCHW) graph output walks
/// channels before pixels in its outer loops (each row of pixels reads the cache lines that
/// the next channels read again), and matches the reference; so does the NCHW input's copy.
#[test]
fn nhwc_to_nchw_copies_walk_channels_outside_pixels() {
    let mut r = Rng(48);
    // (A 1×3 window: a 1×1 convolution of the row-major input would write row-major.)
    let (x, w) = (r.tensor(DType::F32, &[1, 16, 9, 21]), r.tensor(DType::F32, &[32, 16, 1, 3]));
    let op = Op::Conv {
        window: Window { kernel: [1, 3], strides: [1, 1], pads: [0, 1, 0, 1], dilations: [1, 1] },
        group: 1,
    };
    let mut g = Graph::new("to_nchw");
    let xi = g.add_input("x", x.ty.clone());
    let wi = g.add_const("w", w.clone());
    g.outputs = g.add_node(op.clone(), &[xi, wi], "conv", &[]).unwrap();
    let prog = lowered(&g);
    let copy = kernel_ending(&prog, "to_row_major");
    assert_eq!(copy.domain, vec![1, 9, 32, 21], "(n, h, c, w):\n{}", kiln::ir::lir::print(&prog));
    check_with(op, &[x, w], &[false, true], 1e-4);

    // An RGB input padded into channels-last for a 3×3 convolution: rows along the input's
    // contiguous width, not a task per 3-channel pixel.
    let (x, w) = (r.tensor(DType::F32, &[1, 3, 11, 19]), r.tensor(DType::F32, &[8, 3, 3, 3]));
    let op = Op::Conv { window: Window { kernel: [3, 3], strides: [2, 2], pads: [1; 4], dilations: [1, 1] }, group: 1 };
    let mut g = Graph::new("rgb");
    let xi = g.add_input("x", x.ty.clone());
    let wi = g.add_const("w", w.clone());
    g.outputs = g.add_node(op.clone(), &[xi, wi], "conv", &[]).unwrap();
    let prog = lowered(&g);
    let pad = kernel_ending(&prog, "/pad");
    assert_eq!(pad.domain, vec![1, 13, 3, 21], "(n, h, c, w):\n{}", kiln::ir::lir::print(&prog));
    check_with(op, &[x, w], &[false, true], 1e-4);
}

#[test]
fn reductions() {
    let mut r = Rng(7);
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min, ReduceOp::Prod] {
        for _ in 0..3 {
            let rank = r.range(1, 4);
            let s = r.shape(rank, 6);
            let axes: Vec<usize> = (0..rank).filter(|_| r.next().is_multiple_of(2)).collect();
            let keepdims = r.next().is_multiple_of(2);
            let x = if op == ReduceOp::Prod {
                Tensor::f32(s.clone(), r.f32s(s.iter().product(), 0.5, 1.5))
            } else {
                r.tensor(DType::F32, &s)
            };
            check(Op::Reduce { op, axes, keepdims }, &[x]);
        }
    }
    check(Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdims: false }, &[r.tensor(DType::I64, &[3, 4])]);
    check(Op::Reduce { op: ReduceOp::Max, axes: vec![0, 1], keepdims: true }, &[r.tensor(DType::I32, &[3, 4])]);
}

/// Transposes that run as vectors along the operand's contiguous dim, transposed in
/// registers: NCHW ↔ NHWC with sizes that leave partial squares on both sides, and the
/// interleave of a 3-D transposed convolution's blocks (`[N, D, H, W, kd, kh, kw, C]` to
/// `[N, C, D·kd, H·kh, W·kw]`), whose rows of `kw` elements merge with the next dim's.
#[test]
fn transposes_through_registers() {
    let mut r = Rng(62);
    for (shape, perm) in [
        (vec![2, 37, 9, 21], vec![0, 2, 3, 1]),
        (vec![1, 5, 23, 40], vec![0, 3, 1, 2]),
        (vec![1, 16, 17], vec![0, 2, 1]),
        (vec![1, 3, 5, 7, 2, 2, 2, 19], vec![0, 7, 1, 4, 2, 5, 3, 6]),
        (vec![2, 2, 3, 9, 2, 1, 3, 16], vec![0, 7, 1, 4, 2, 5, 3, 6]),
    ] {
        let x = r.tensor(DType::F32, &shape);
        check(Op::Transpose { perm }, std::slice::from_ref(&x));
    }
}

#[test]
fn data_movement() {
    let mut r = Rng(8);
    let x = r.tensor(DType::F32, &[2, 3, 4]);
    check(Op::Reshape { shape: vec![6, 4] }, std::slice::from_ref(&x));
    for perm in [vec![0, 2, 1], vec![2, 0, 1], vec![1, 2, 0]] {
        check(Op::Transpose { perm }, std::slice::from_ref(&x));
    }
    for axis in 0..3 {
        let mut s2 = vec![2, 3, 4];
        s2[axis] = r.range(1, 3);
        check(Op::Concat { axis }, &[x.clone(), r.tensor(DType::F32, &s2), r.tensor(DType::F32, &s2)]);
    }
    check(
        Op::Slice { starts: vec![1, 2, 0], steps: vec![1, -1, 2], out_shape: vec![1, 2, 2] },
        std::slice::from_ref(&x),
    );
    check(
        Op::Slice { starts: vec![0, 2, 3], steps: vec![1, -2, -3], out_shape: vec![2, 2, 2] },
        std::slice::from_ref(&x),
    );
    for axis in 0..3 {
        let dim = [2i64, 3, 4][axis];
        let idx = Tensor::i64(vec![2, 2], vec![0, -1, dim - 1, 1 - dim]);
        check(Op::Gather { axis }, &[x.clone(), idx]);
    }
    check(Op::Gather { axis: 1 }, &[r.tensor(DType::I64, &[3, 5]), Tensor::i32(vec![3], vec![4, 0, -2])]);
    check(Op::Expand { shape: vec![3, 2, 1, 4] }, &[r.tensor(DType::F32, &[2, 1, 1])]);
    check(Op::Identity, &[r.tensor(DType::Bool, &[3, 2])]);
}

/// A fused chain (conv → bias add → relu → residual add) against the reference, op by op.
#[test]
fn fused_chain_matches_reference() {
    let mut r = Rng(9);
    let x = r.tensor(DType::F32, &[1, 4, 6, 6]);
    let w = r.tensor(DType::F32, &[4, 4, 3, 3]);
    let b = r.tensor(DType::F32, &[1, 4, 1, 1]);
    let conv = Op::Conv {
        window: Window { kernel: [3, 3], strides: [1, 1], pads: [1, 1, 1, 1], dilations: [1, 1] },
        group: 1,
    };
    let ev = |op: &Op, ins: &[&Tensor]| kiln::ir::ops::eval(op, ins).unwrap().remove(0);
    let c = ev(&conv, &[&x, &w]);
    let c = ev(&Op::Binary(BinaryOp::Add), &[&c, &b]);
    let c = ev(&Op::Unary(UnaryOp::Relu), &[&c]);
    let want = ev(&Op::Binary(BinaryOp::Add), &[&c, &x]);

    let mut g = Graph::new("chain");
    let xi = g.add_input("x", x.ty.clone());
    let wi = g.add_const("w", w);
    let bi = g.add_const("b", b);
    let c = g.add_node(conv, &[xi, wi], "conv", &[]).unwrap()[0];
    let c = g.add_node(Op::Binary(BinaryOp::Add), &[c, bi], "bias", &[]).unwrap()[0];
    let c = g.add_node(Op::Unary(UnaryOp::Relu), &[c], "relu", &[]).unwrap()[0];
    let y = g.add_node(Op::Binary(BinaryOp::Add), &[c, xi], "residual", &[]).unwrap()[0];
    g.outputs = vec![y];
    let prog = lowered(&g);
    // With 4 input channels the convolution first copies its input, padded, channels-last
    // (`conv/pad`); everything else is one kernel.
    let kernels: Vec<&str> = prog
        .instrs
        .iter()
        .filter_map(|i| if let kiln::ir::lir::Instr::Kernel(k) = i { Some(k.name.as_str()) } else { None })
        .filter(|n| !n.ends_with("conv/pad"))
        .collect();
    assert_eq!(
        kernels.len(),
        1,
        "conv, bias, relu and residual add should fuse into one kernel:\n{}",
        kiln::ir::lir::print(&prog)
    );
    let compiler = Compiler::new(CompileOptions { verify: true, ..Default::default() });
    let art = compiler.compile_graph(g).unwrap();
    let s = Session::from_bytes(&art.bytes(), &SessionOptions::default()).unwrap();
    let got = s.run(&[TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &x.data }]).unwrap();
    let got = got[0].to_f32().unwrap();
    for (a, b) in got.iter().zip(want.to_f64_vec()) {
        assert!((*a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

/// A session computing `x · w` for inputs shaped like `x`, with `w` a constant.
fn matmul_session(x: &Tensor, w: Tensor, threads: usize) -> Session {
    let mut g = Graph::new("mm");
    let xi = g.add_input("x", x.ty.clone());
    let wi = g.add_const("w", w);
    g.outputs = g.add_node(Op::MatMul, &[xi, wi], "mm", &[]).unwrap();
    let art = Compiler::new(CompileOptions::default()).compile_graph(g).unwrap();
    Session::from_bytes(&art.bytes(), &SessionOptions { threads, ..Default::default() }).unwrap()
}

/// Runs from several threads at once give identical results.
#[test]
fn concurrent_runs_agree() {
    let mut r = Rng(10);
    let x = r.tensor(DType::F32, &[64, 96]);
    let s = matmul_session(&x, r.tensor(DType::F32, &[96, 80]), 2);
    let run =
        || s.run(&[TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &x.data }]).unwrap()[0].data.clone();
    let first = run();
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4).map(|_| sc.spawn(|| (0..50).map(|_| run()).collect::<Vec<_>>())).collect();
        for h in hs {
            for out in h.join().unwrap() {
                assert_eq!(out, first);
            }
        }
    });
}

/// `run_into` writes the same outputs as `run` into the caller's buffers, reused from run to
/// run (old contents overwritten), and refuses buffers of the wrong number, size or
/// alignment, naming the output.
#[test]
fn run_into_reuses_caller_buffers() {
    let mut r = Rng(11);
    let w = r.tensor(DType::F32, &[24, 40]);
    let x = r.tensor(DType::F32, &[5, 24]);
    let s = matmul_session(&x, w, 1);
    let name = s.outputs()[0].name.clone();
    let mut buf = vec![f32::NAN; 5 * 40];
    for seed in [1, 2] {
        let x = Rng(seed).tensor(DType::F32, &[5, 24]);
        let ins = [TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &x.data }];
        let want = s.run(&ins).unwrap().remove(0).data;
        let bytes: &mut [u8] = bytemuck_f32(&mut buf);
        s.run_into(&ins, &mut [bytes]).unwrap();
        assert_eq!(bytemuck_f32(&mut buf).to_vec(), want, "seed {seed}");
    }
    let ins = [TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &x.data }];
    let e = s.run_into(&ins, &mut []).unwrap_err().to_string();
    assert!(e.contains("1 outputs, got 0"), "{e}");
    let mut short = vec![0f32; 10];
    let e = s.run_into(&ins, &mut [bytemuck_f32(&mut short)]).unwrap_err().to_string();
    assert!(e.contains(&format!("`{name}`")) && e.contains("800 bytes"), "{e}");
    let e = s.run_into(&ins, &mut [&mut bytemuck_f32(&mut buf)[1..]]).unwrap_err().to_string();
    assert!(e.contains("799 bytes"), "{e}");
    let mut wide = vec![0f32; 5 * 40 + 1];
    let e = s.run_into(&ins, &mut [&mut bytemuck_f32(&mut wide)[1..801]]).unwrap_err().to_string();
    assert!(e.contains("aligned to 4"), "{e}");
}

/// Inputs at any address give the same outputs: one at an odd byte address (copied by the
/// runtime) and one aligned only to its element size (read in place), against a 64-byte
/// aligned one.
#[test]
fn inputs_at_any_alignment() {
    let mut r = Rng(12);
    let x = r.tensor(DType::F32, &[9, 40]);
    let s = matmul_session(&x, r.tensor(DType::F32, &[40, 33]), 1);
    let n = x.data.len();
    let mut store = vec![0u64; n / 8 + 16];
    let words = store.as_mut_ptr() as usize;
    // SAFETY: bytes of the u64 buffer, borrowed for the rest of the test.
    let bytes = unsafe { std::slice::from_raw_parts_mut(store.as_mut_ptr().cast::<u8>(), store.len() * 8) };
    let at = |off: usize| (64 - words % 64) % 64 + off;
    let mut outs = Vec::new();
    for off in [0, 4, 1] {
        let o = at(off);
        bytes[o..o + n].copy_from_slice(&x.data);
        let t = TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &bytes[o..o + n] };
        outs.push(s.run(&[t]).unwrap().remove(0).data);
    }
    assert_eq!(outs[1], outs[0], "element-aligned input");
    assert_eq!(outs[2], outs[0], "odd-address input");
}

/// The bytes of an f32 slice.
fn bytemuck_f32(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: the same memory as bytes (alignment 1, every value valid), borrowed from `v`.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 4) }
}

/// Reductions over adjacent axes that are one run in memory are one merged loop: over H and
/// W of a row-major input and of a convolution's channels-last output, and over axes that do
/// not merge.
#[test]
fn reductions_over_merged_axes() {
    let mut r = Rng(45);
    let x = r.tensor(DType::F32, &[2, 5, 7, 9]);
    for (op, axes) in [
        (ReduceOp::Mean, vec![2, 3]),
        (ReduceOp::Sum, vec![1, 2, 3]),
        (ReduceOp::Max, vec![0, 2]),
        (ReduceOp::Min, vec![1, 3]),
    ] {
        for keepdims in [false, true] {
            check(Op::Reduce { op, axes: axes.clone(), keepdims }, std::slice::from_ref(&x));
        }
    }
    // After a convolution (channels-last): the mean over H and W of its output.
    let w = r.tensor(DType::F32, &[6, 5, 3, 3]);
    let conv =
        Op::Conv { window: Window { kernel: [3, 3], strides: [1, 1], pads: [1; 4], dilations: [1, 1] }, group: 1 };
    let ev = |op: &Op, ins: &[&Tensor]| kiln::ir::ops::eval(op, ins).unwrap().remove(0);
    let mean = Op::Reduce { op: ReduceOp::Mean, axes: vec![2, 3], keepdims: true };
    let want = ev(&mean, &[&ev(&conv, &[&x, &w])]);
    let mut g = Graph::new("conv_mean");
    let xi = g.add_input("x", x.ty.clone());
    let wi = g.add_const("w", w);
    let y = g.add_node(conv, &[xi, wi], "conv", &[]).unwrap()[0];
    g.outputs = g.add_node(mean, &[y], "mean", &[]).unwrap();
    let art = Compiler::new(CompileOptions { verify: true, ..Default::default() }).compile_graph(g).unwrap();
    let s = Session::from_bytes(&art.bytes(), &SessionOptions { threads: 2, ..Default::default() }).unwrap();
    let got =
        s.run(&[TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &x.data }]).unwrap()[0].to_f32().unwrap();
    for (i, (a, b)) in got.iter().zip(want.to_f64_vec()).enumerate() {
        assert!((*a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()), "element {i}: {a} vs {b}");
    }
}

/// A normalization's `x − mean`, read by the variance's square and by the output, is
/// recomputed in both kernels rather than stored (no kernel writes it); the reductions over
/// a few long rows (40 channels of 50×60 pixels) are shared out in chunks of rows; the
/// kernels over `(h, w)` run over the merged pixels. Batch 2 and an odd small shape too.
#[test]
fn instance_norm_recomputes_the_centered_input() {
    let mut r = Rng(91);
    for shape in [[2, 5, 7, 9], [1, 40, 50, 60]] {
        let mut net = RefNet::new("instance_norm");
        let x = net.input("x", r.tensor(DType::F32, &shape));
        let mean_op = Op::Reduce { op: ReduceOp::Mean, axes: vec![2, 3], keepdims: true };
        let mean = net.node(mean_op.clone(), &[x], "mean");
        let d = net.node(Op::Binary(BinaryOp::Sub), &[x, mean], "centered");
        let d2 = net.node(Op::Binary(BinaryOp::Mul), &[d, d], "square");
        let var = net.node(mean_op, &[d2], "var");
        let eps = net.constant("eps", Tensor::f32(vec![], vec![1e-5]));
        let ve = net.node(Op::Binary(BinaryOp::Add), &[var, eps], "var_eps");
        let sd = net.node(Op::Unary(UnaryOp::Sqrt), &[ve], "sd");
        let inv = net.node(Op::Unary(UnaryOp::Reciprocal), &[sd], "inv");
        let y = net.node(Op::Binary(BinaryOp::Mul), &[d, inv], "y");
        let prog = net.lowered(&[y]);
        let text = kiln::ir::lir::print(&prog);
        let kernels: Vec<&kiln::ir::lir::Kernel> = prog
            .instrs
            .iter()
            .filter_map(|i| if let kiln::ir::lir::Instr::Kernel(k) = i { Some(k) } else { None })
            .collect();
        assert!(kernels.iter().all(|k| k.name != "centered"), "x − mean should not be stored:\n{text}");
        let pixels = shape[2] * shape[3];
        let last = kernels.last().expect("kernels");
        assert_eq!(last.domain.last(), Some(&pixels), "the output's kernel runs over the merged pixels:\n{text}");
        net.check(&[y], 1e-4);
    }
}

/// A quantize step, `Cast(Clip(Round(x)))` to each narrow integer type, runs through a plain
/// i32 conversion (vectorized; NaN selected to 0): checked on NaN, infinities, values past the
/// bounds and ties, in rows long enough to vectorize. And a maximum and minimum over a whole
/// tensor, which the pipeline splits into parts (each part a row reduction in vectors).
#[test]
fn quantize_steps_and_split_reductions() {
    let mut r = Rng(12);
    let mut v = r.f32s(1037, -400.0, 400.0);
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.5, 1.5, 2.5, -0.5, -2.5, 254.5, 255.5, 1e30, -1e30];
    for (i, s) in specials.iter().enumerate() {
        v[i * 83] = *s;
    }
    let x = Tensor::f32(vec![1037], v);
    for (to, lo, hi) in
        [(DType::U8, 0.0, 255.0), (DType::I8, -128.0, 127.0), (DType::I16, -300.0, 300.0), (DType::I32, -1e6, 1e6)]
    {
        let ops = [Op::Unary(UnaryOp::Round), Op::Unary(UnaryOp::Clip { lo, hi }), Op::cast(to)];
        let mut want = x.clone();
        let mut g = Graph::new("quantize");
        let mut v = g.add_input("x", x.ty.clone());
        for (i, op) in ops.iter().enumerate() {
            want = kiln::ir::ops::eval(op, &[&want]).unwrap().remove(0);
            v = g.add_node(op.clone(), &[v], format!("q{i}"), &[]).unwrap()[0];
        }
        g.outputs = vec![v];
        compile_and_compare_with(g, CompileOptions::default(), &[&x], &[want], 0.0, &format!("quantize to {to:?}"));
    }
    let big = r.tensor(DType::F32, &[3, 40_001]);
    for op in [ReduceOp::Max, ReduceOp::Min] {
        check(Op::Reduce { op, axes: vec![0, 1], keepdims: false }, std::slice::from_ref(&big));
    }
}
