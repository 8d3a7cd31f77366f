//! Differential tests: every op's compiled kernel against its reference evaluation, on
//! random shapes and attributes (seeded, so failures reproduce).

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
}

/// The inline f32 exp, tanh, erf and sigmoid (polynomials the code generator emits instead
/// of libm calls) against the reference over their whole range: relative error within a few
/// ulp, overflow to inf, subnormal and zero results, NaN, infinities and signed zeros.
#[test]
fn transcendentals_over_their_range() {
    let mut xs: Vec<f32> = (-2400..=2400).map(|i| i as f32 * 0.05).collect();
    xs.extend((-300..=300).map(|i| i as f32 * 1e-3));
    xs.extend([
        -110.0, -104.5, -103.9, -100.0, -95.5, -87.5, -87.3, 88.0, 88.7, 88.8, 100.0, 1e-30, -1e-30, 3.9, 4.0, 4.1,
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
    let (x, w) = (r.tensor(DType::F32, &[1, 16, 9, 21]), r.tensor(DType::F32, &[32, 16, 1, 1]));
    let op = Op::Conv { window: Window { kernel: [1, 1], strides: [1, 1], pads: [0; 4], dilations: [1, 1] }, group: 1 };
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

fn window(r: &mut Rng, k: [usize; 2]) -> Window {
    Window {
        kernel: k,
        strides: [r.range(1, 2), r.range(1, 3)],
        pads: [r.range(0, 1), r.range(0, 2), r.range(0, 1), r.range(0, 2)],
        dilations: [r.range(1, 2), 1],
    }
}

#[test]
fn convolution() {
    let mut r = Rng(5);
    for _ in 0..8 {
        let group = [1, 1, 2, 3][r.range(0, 3)];
        let (cig, cog) = (r.range(1, 3), r.range(1, 3));
        let k = [r.range(1, 3), r.range(1, 3)];
        let x = vec![r.range(1, 2), cig * group, r.range(4, 9), r.range(4, 11)];
        let w = vec![cog * group, cig, k[0], k[1]];
        let op = Op::Conv { window: window(&mut r, k), group };
        let bias = r.next().is_multiple_of(2);
        let mut ins = vec![r.tensor(DType::F32, &x), r.tensor(DType::F32, &w)];
        if bias {
            ins.push(r.tensor(DType::F32, &[cog * group]));
        }
        check_with(op, &ins, &[false, true, true], 1e-4);
    }
}

/// Convolutions inside a network: channels-last intermediates, the first convolution a
/// register-blocked GEMM over output pixels (weights prepacked at compile time, padded taps
/// through per-row checks), with a ReLU epilogue, feeding a second convolution that writes
/// the row-major graph output. Shapes exercise channel counts past the register tile, more
/// input channels than one K block, several taps per K slice, strides, dilations, batch 2,
/// depthwise and grouped convolutions.
#[test]
fn convolution_chains_as_gemm() {
    let mut r = Rng(47);
    // (batch, ci, h, w, co, kernel, stride, pad, dilation, group, co2, kernel2)
    let cases = [
        (1, 3, 15, 13, 20, [7, 7], [2, 2], [3, 3, 3, 3], [1, 1], 1, 8, [1, 1]),
        (2, 19, 9, 11, 37, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1, 5, [3, 3]),
        (1, 140, 6, 7, 33, [1, 1], [1, 1], [0, 0, 0, 0], [1, 1], 1, 17, [3, 1]),
        (1, 16, 12, 10, 40, [3, 3], [2, 1], [0, 2, 1, 0], [2, 1], 1, 9, [1, 3]),
        (1, 24, 8, 8, 24, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 24, 30, [1, 1]),
        (1, 12, 7, 9, 18, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 3, 6, [1, 1]),
        // Wide (several panels of B per block), many input channels, uneven padding.
        (1, 20, 9, 9, 130, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1, 4, [1, 1]),
        (1, 150, 12, 11, 100, [3, 3], [2, 2], [1, 0, 1, 2], [1, 1], 1, 3, [1, 1]),
        // Winograd F(4×4, 3×3): outputs of 16×16 and more, batch 2, sizes that leave partial
        // tiles, uneven padding.
        (2, 24, 18, 17, 40, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1, 6, [1, 1]),
        (1, 32, 19, 21, 17, [3, 3], [1, 1], [0, 1, 2, 1], [1, 1], 1, 5, [3, 3]),
        // Below 8×8 outputs: the direct form.
        (1, 32, 7, 7, 32, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1, 4, [1, 1]),
    ];
    for (nb, ci, h, w, co, k, strides, pads, dilations, group, co2, k2) in cases {
        let x = r.tensor(DType::F32, &[nb, ci, h, w]);
        let w1 = r.tensor(DType::F32, &[co, ci / group, k[0], k[1]]);
        let b1 = r.tensor(DType::F32, &[co]);
        let w2 = r.tensor(DType::F32, &[co2, co, k2[0], k2[1]]);
        let conv1 = Op::Conv { window: Window { kernel: k, strides, pads, dilations }, group };
        let conv2 = Op::Conv {
            window: Window { kernel: k2, strides: [1, 1], pads: [0, 0, 0, 0], dilations: [1, 1] },
            group: 1,
        };
        let ev = |op: &Op, ins: &[&Tensor]| kiln::ir::ops::eval(op, ins).unwrap().remove(0);
        let y = ev(&conv1, &[&x, &w1, &b1]);
        let y = ev(&Op::Unary(UnaryOp::Relu), &[&y]);
        let want = ev(&conv2, &[&y, &w2]);

        let mut g = Graph::new("conv_chain");
        let xi = g.add_input("x", x.ty.clone());
        let (w1i, b1i, w2i) = (g.add_const("w1", w1), g.add_const("b1", b1), g.add_const("w2", w2));
        let y = g.add_node(conv1, &[xi, w1i, b1i], "conv1", &[]).unwrap()[0];
        let y = g.add_node(Op::Unary(UnaryOp::Relu), &[y], "relu", &[]).unwrap()[0];
        g.outputs = g.add_node(conv2, &[y, w2i], "conv2", &[]).unwrap();
        let prog = lowered(&g);
        let text = kiln::ir::lir::print(&prog);
        let (oh, ow) = (h + pads[0] + pads[2] - 2, w + pads[1] + pads[3] - 2);
        let winograd = group == 1
            && k == [3, 3]
            && strides == [1, 1]
            && dilations == [1, 1]
            && ci >= 16
            && co >= 16
            && oh >= 8
            && ow >= 8;
        if winograd {
            assert!(text.contains("conv1.winograd_weights"), "conv1 should go through Winograd:\n{text}");
            // F(4×4, 3×3) from 16×16 outputs: 6×6 tiles.
            let tile = if (16..=32).contains(&oh.max(ow)) && oh.min(ow) >= 16 { "[6,6," } else { "[4,4," };
            assert!(text.contains(tile), "conv1 should use {tile}…] tiles:\n{text}");
        } else if group == 1 {
            assert!(text.contains("w1.panels"), "conv1 should be a GEMM with prepacked weights:\n{text}");
        }
        if group == ci {
            // Depthwise on the row-major graph input: computed row-major, its loop along the
            // image rows of input and output (the channel is not the innermost dim).
            let row_major = prog.instrs.iter().any(|i| match i {
                kiln::ir::lir::Instr::Kernel(k) => {
                    k.name.contains("conv1") && !k.name.ends_with("/pad") && k.output.strides[1] != 1
                }
                _ => false,
            });
            assert!(row_major, "depthwise conv1 should compute row-major:\n{text}");
        }
        let compiler = Compiler::new(CompileOptions { verify: true, ..Default::default() });
        let art = compiler.compile_graph(g).unwrap();
        let s = Session::from_bytes(&art.bytes(), &SessionOptions { threads: 2 }).unwrap();
        let got = s.run(&[TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &x.data }]).unwrap()[0]
            .to_f32()
            .unwrap();
        let want = want.to_f64_vec();
        assert_eq!(got.len(), want.len());
        // f32 sums of up to 1,350 products, then 300 more, against an f64 reference.
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= 3e-4 * (1.0 + b.abs()),
                "case ci={ci} co={co} k={k:?}: element {i}: {a} vs {b}"
            );
        }
    }
}

/// Channels-last chains whose kernels run a vector of channels at a time (depthwise
/// convolution with padding and stride, max pooling padded with -inf, a global mean), over
/// channel counts that leave every kind of remainder: whole blocks of vectors, single and
/// half vectors, and scalar lanes.
#[test]
fn channels_last_rows_in_vectors() {
    let mut r = Rng(53);
    for (c, stride) in [(5, 1), (16, 2), (24, 1), (37, 2), (70, 1), (96, 2)] {
        let x = r.tensor(DType::F32, &[1, 3, 9, 11]);
        let w1 = r.tensor(DType::F32, &[c, 3, 1, 1]);
        let b1 = r.tensor(DType::F32, &[c]);
        let wd = r.tensor(DType::F32, &[c, 1, 3, 3]);
        let bd = r.tensor(DType::F32, &[c]);
        let conv1 = Op::Conv {
            window: Window { kernel: [1, 1], strides: [1, 1], pads: [0, 0, 0, 0], dilations: [1, 1] },
            group: 1,
        };
        let depthwise = Op::Conv {
            window: Window { kernel: [3, 3], strides: [stride, stride], pads: [1, 1, 1, 1], dilations: [1, 1] },
            group: c,
        };
        let clip = Op::Unary(UnaryOp::Clip { lo: 0.0, hi: 6.0 });
        let pool = Op::MaxPool {
            window: Window { kernel: [3, 3], strides: [1, 1], pads: [1, 1, 1, 1], dilations: [1, 1] },
            ceil_mode: false,
        };
        let mean = Op::Reduce { op: ReduceOp::Mean, axes: vec![2, 3], keepdims: true };
        let ev = |op: &Op, ins: &[&Tensor]| kiln::ir::ops::eval(op, ins).unwrap().remove(0);
        let y = ev(&conv1, &[&x, &w1, &b1]);
        let y = ev(&Op::Unary(UnaryOp::Relu), &[&y]);
        let y = ev(&depthwise, &[&y, &wd, &bd]);
        let y = ev(&clip, &[&y]);
        let p = ev(&pool, &[&y]);
        let want = [ev(&mean, &[&p]), p];

        let mut g = Graph::new("channels_last");
        let xi = g.add_input("x", x.ty.clone());
        let ids = [("w1", w1), ("b1", b1), ("wd", wd), ("bd", bd)].map(|(n, t)| g.add_const(n, t));
        let y = g.add_node(conv1, &[xi, ids[0], ids[1]], "conv1", &[]).unwrap()[0];
        let y = g.add_node(Op::Unary(UnaryOp::Relu), &[y], "relu", &[]).unwrap()[0];
        let y = g.add_node(depthwise, &[y, ids[2], ids[3]], "depthwise", &[]).unwrap()[0];
        let y = g.add_node(clip, &[y], "clip", &[]).unwrap()[0];
        let p = g.add_node(pool, &[y], "pool", &[]).unwrap()[0];
        let m = g.add_node(mean, &[p], "mean", &[]).unwrap()[0];
        g.outputs = vec![m, p];
        let art = Compiler::new(CompileOptions { verify: true, ..Default::default() }).compile_graph(g).unwrap();
        let s = Session::from_bytes(&art.bytes(), &SessionOptions { threads: 2 }).unwrap();
        let outs = s.run(&[TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &x.data }]).unwrap();
        for (o, (got, want)) in outs.iter().zip(&want).enumerate() {
            let (got, want) = (got.to_f32().unwrap(), want.to_f64_vec());
            assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((*a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()), "c={c} output {o} element {i}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn pooling_and_normalization() {
    let mut r = Rng(6);
    for _ in 0..12 {
        let x = vec![1, r.range(1, 3), r.range(4, 9), r.range(4, 9)];
        let k = [r.range(1, 3), r.range(2, 3)];
        let mut w = window(&mut r, k);
        w.pads = [w.pads[0].min(k[0] - 1), w.pads[1].min(k[1] - 1), w.pads[2].min(k[0] - 1), w.pads[3].min(k[1] - 1)];
        let ceil_mode = r.next().is_multiple_of(2);
        if w.out_dim(0, x[2], ceil_mode).is_none() || w.out_dim(1, x[3], ceil_mode).is_none() {
            continue;
        }
        check(Op::MaxPool { window: w.clone(), ceil_mode }, &[r.tensor(DType::F32, &x)]);
        // Integer inputs make ties common, which exercises "first maximum in scan order".
        let column_major = r.next().is_multiple_of(2);
        check(Op::MaxPoolIndices { window: w.clone(), ceil_mode, column_major }, &[r.tensor(DType::I64, &x)]);
        w.dilations = [1, 1];
        let count_include_pad = r.next().is_multiple_of(2);
        check(Op::AveragePool { window: w, ceil_mode, count_include_pad }, &[r.tensor(DType::F32, &x)]);
    }
    let x = vec![2, 3, 4, 5];
    let mut p = vec![r.tensor(DType::F32, &x)];
    for i in 0..4 {
        let t = r.tensor(DType::F32, &[3]);
        p.push(if i == 3 {
            Tensor::f32(vec![3], t.to_f64_vec().iter().map(|v| v.abs() as f32 + 0.1).collect())
        } else {
            t
        });
    }
    check(Op::BatchNorm { epsilon: 1e-5 }, &p);
    // Constant parameters (inference): folded into a scale and a shift at compile time.
    check_with(Op::BatchNorm { epsilon: 1e-5 }, &p, &[false, true, true, true, true], 1e-5);
    for size in [1, 3, 4, 5] {
        check(Op::Lrn { size, alpha: 1e-3, beta: 0.75, bias: 1.0 }, &[r.tensor(DType::F32, &[1, 7, 3, 4])]);
    }
    for axis in 0..3 {
        let s = r.shape(3, 7);
        check(Op::Softmax { axis }, &[r.tensor(DType::F32, &s)]);
        check(Op::LogSoftmax { axis }, &[r.tensor(DType::F32, &s)]);
    }
    // Attention-like rows, long enough for the vectorized row reductions (and their tails).
    for s in [vec![2, 3, 37, 70], vec![5, 130]] {
        let axis = s.len() - 1;
        check(Op::Softmax { axis }, &[r.tensor(DType::F32, &s)]);
        check(Op::LogSoftmax { axis }, &[r.tensor(DType::F32, &s)]);
    }
    // LayerNorm (expanded by the `decompose` step), over the last axes, with and without a
    // bias, the parameters constant (as exported models have them) or fed at run time.
    for (s, axis) in [(vec![2, 5, 768], 2), (vec![3, 4, 6], 1), (vec![7, 33], 1)] {
        let params = s[axis..].to_vec();
        let x = r.tensor(DType::F32, &s);
        let (scale, bias) = (r.tensor(DType::F32, &params), r.tensor(DType::F32, &params));
        let op = Op::LayerNorm { axis, epsilon: 1e-5 };
        check_with(op.clone(), &[x.clone(), scale.clone(), bias], &[false, true, true], 1e-5);
        check_with(op, &[x, scale], &[false, false], 1e-5);
    }
    for (s, axis) in [(vec![2, 5, 64], 2), (vec![3, 4, 6], 1)] {
        let (x, scale) = (r.tensor(DType::F32, &s), r.tensor(DType::F32, &s[axis..]));
        check_with(Op::RmsNorm { axis, epsilon: 1e-6 }, &[x.clone(), scale.clone()], &[false, true], 1e-5);
        check_with(Op::RmsNorm { axis, epsilon: 1e-6 }, &[x, scale], &[false, false], 1e-5);
    }
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
    Session::from_bytes(&art.bytes(), &SessionOptions { threads }).unwrap()
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
        let hs: Vec<_> = (0..4).map(|_| sc.spawn(|| (0..5).map(|_| run()).collect::<Vec<_>>())).collect();
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

/// An index from data outside the gathered axis stops the run with an error naming the
/// node; it never reads out of bounds or answers silently.
#[test]
fn gather_index_out_of_range_is_an_error() {
    let mut r = Rng(11);
    let x = r.tensor(DType::F32, &[4, 3]);
    let mut g = Graph::new("gather");
    let xi = g.add_const("x", x);
    let ii = g.add_input("idx", Tensor::i64(vec![2], vec![0, 0]).ty);
    g.outputs = g.add_node(Op::Gather { axis: 0 }, &[xi, ii], "pick", &[]).unwrap();
    let art = Compiler::new(CompileOptions::default()).compile_graph(g).unwrap();
    let s = Session::from_bytes(&art.bytes(), &SessionOptions::default()).unwrap();
    let run = |idx: Vec<i64>| s.run(&[TensorRef::i64(&[2], &idx)]);
    assert!(run(vec![3, -4]).is_ok());
    for bad in [vec![0, 4], vec![-5, 1]] {
        let e = run(bad.clone()).expect_err("an out-of-range index must fail").to_string();
        assert!(e.contains("`pick` (Gather)") && e.contains("[-4, 4)"), "{bad:?}: {e}");
    }
    // The session stays usable after a failed run.
    assert!(run(vec![1, 2]).is_ok());
}

/// Random indices in `[-dim, dim)` for each element of `shape`, where `dim` may depend on
/// the position (`dim_of(flat)`).
fn indices(r: &mut Rng, shape: &[usize], dim_of: impl Fn(usize) -> usize, i32s: bool) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<i64> = (0..n)
        .map(|k| {
            let d = dim_of(k) as i64;
            r.range(0, (2 * d - 1) as usize) as i64 - d
        })
        .collect();
    if i32s {
        Tensor::i32(shape.to_vec(), v.iter().map(|&x| x as i32).collect())
    } else {
        Tensor::i64(shape.to_vec(), v)
    }
}

#[test]
fn nan_inf_and_arg_reductions() {
    let mut r = Rng(12);
    let vals = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -1.5, 2.0];
    let s = r.shape(3, 6);
    let n = s.iter().product();
    let x = Tensor::f32(s, (0..n).map(|_| vals[r.range(0, 5)]).collect());
    check(Op::IsNaN, std::slice::from_ref(&x));
    for (max, select_last) in [(true, false), (true, true), (false, false), (false, true)] {
        let axis = x.shape().len() - 1;
        check(Op::ArgReduce { max, axis, keepdims: true, select_last }, std::slice::from_ref(&x));
    }
    let nans = Tensor::f32(vec![2, 2], vec![f32::NAN, f32::NAN, 1.0, f32::NAN]);
    check(Op::ArgReduce { max: true, axis: 1, keepdims: false, select_last: true }, &[nans]);
    for (negative, positive) in [(true, true), (true, false), (false, true), (false, false)] {
        check(Op::IsInf { negative, positive }, std::slice::from_ref(&x));
    }
    for _ in 0..8 {
        let rank = r.range(1, 4);
        let s = r.shape(rank, 6);
        let axis = r.range(0, rank - 1);
        let dt = [DType::F32, DType::I64, DType::I32][r.range(0, 2)];
        // Integer inputs make ties common, which exercises first/last selection.
        let x = r.tensor(dt, &s);
        for (max, select_last) in [(true, false), (true, true), (false, false), (false, true)] {
            let keepdims = r.next().is_multiple_of(2);
            check(Op::ArgReduce { max, axis, keepdims, select_last }, std::slice::from_ref(&x));
        }
    }
}

#[test]
fn gathers_and_scatters_with_data_indices() {
    use kiln::ir::ScatterReduction as S;
    let mut r = Rng(13);
    for _ in 0..6 {
        let rank = r.range(1, 3);
        let xs = r.shape(rank, 5);
        let axis = r.range(0, rank - 1);
        let is: Vec<usize> =
            xs.iter().enumerate().map(|(d, &e)| if d == axis { r.range(1, 6) } else { r.range(1, e) }).collect();
        let x = r.tensor(DType::F32, &xs);
        let i32s = r.next().is_multiple_of(2);
        let idx = indices(&mut r, &is, |_| xs[axis], i32s);
        check(Op::GatherElements { axis }, &[x.clone(), idx.clone()]);
        for red in [S::None, S::Add, S::Mul, S::Max, S::Min] {
            let dt = [DType::F32, DType::I64][r.range(0, 1)];
            let (x, u) = (r.tensor(dt, &xs), r.tensor(dt, &is));
            check(Op::ScatterElements { axis, reduction: red }, &[x, idx.clone(), u]);
        }
    }
    for _ in 0..6 {
        let rank = r.range(1, 4);
        let xs = r.shape(rank, 4);
        let batch_dims = r.range(0, rank - 1);
        let m = r.range(1, rank - batch_dims);
        let mut is: Vec<usize> = xs[..batch_dims].to_vec();
        let extra = r.range(0, 2);
        is.extend(r.shape(extra, 3));
        is.push(m);
        let x = r.tensor(DType::F32, &xs);
        let idx = indices(&mut r, &is, |k| xs[batch_dims + k % m], false);
        check(Op::GatherNd { batch_dims }, &[x, idx]);
        // ScatterND (no batch dims): updates are indices.shape[..-1] ++ data.shape[m..].
        let is: Vec<usize> = is[batch_dims..].to_vec();
        let idx = indices(&mut r, &is, |k| xs[k % m], false);
        let mut us: Vec<usize> = is[..is.len() - 1].to_vec();
        us.extend(&xs[m..]);
        for red in [S::None, S::Add, S::Mul, S::Max, S::Min] {
            let dt = [DType::F32, DType::I32][r.range(0, 1)];
            check(Op::ScatterNd { reduction: red }, &[r.tensor(dt, &xs), idx.clone(), r.tensor(dt, &us)]);
        }
    }
    // Constant indices are checked when compiling; indices from data at run time.
    let x = r.tensor(DType::F32, &[3, 4]);
    check_with(Op::GatherElements { axis: 0 }, &[x, Tensor::i64(vec![1, 2], vec![-3, 2])], &[false, true], 1e-5);
}

/// An out-of-range index from data in a scatter stops the run with an error naming the node.
#[test]
fn scatter_index_out_of_range_is_an_error() {
    let mut g = Graph::new("scatter");
    let xi = g.add_const("x", Tensor::f32(vec![4], vec![0.0; 4]));
    let ii = g.add_input("idx", Tensor::i64(vec![2, 1], vec![0, 0]).ty);
    let ui = g.add_const("u", Tensor::f32(vec![2], vec![1.0, 2.0]));
    let op = Op::ScatterNd { reduction: kiln::ir::ScatterReduction::Add };
    g.outputs = g.add_node(op, &[xi, ii, ui], "put", &[]).unwrap();
    let art = Compiler::new(CompileOptions::default()).compile_graph(g).unwrap();
    let s = Session::from_bytes(&art.bytes(), &SessionOptions::default()).unwrap();
    let run = |idx: Vec<i64>| s.run(&[TensorRef::i64(&[2, 1], &idx)]);
    let out = run(vec![3, -1]).unwrap();
    assert_eq!(out[0].to_f32().unwrap(), vec![0.0, 0.0, 0.0, 3.0]);
    let e = run(vec![4, 0]).expect_err("an out-of-range index must fail").to_string();
    assert!(e.contains("`put` (ScatterND)"), "{e}");
}

#[test]
fn transposed_convolution() {
    let mut r = Rng(14);
    for _ in 0..10 {
        let group = [1, 1, 2, 3][r.range(0, 3)];
        let (cg, mg) = (r.range(1, 3), r.range(1, 3));
        let kernel = [r.range(1, 3), r.range(1, 3)];
        let strides = [r.range(1, 3), r.range(1, 2)];
        let dilations = [r.range(1, 2), r.range(1, 2)];
        let pads = [r.range(0, 2) as i64 - 1, r.range(0, 2) as i64];
        let x = vec![r.range(1, 2), cg * group, r.range(1, 5), r.range(1, 6)];
        let full = |a: usize| strides[a] * (x[2 + a] - 1) + (kernel[a] - 1) * dilations[a] + 1;
        let out_hw = [
            (full(0) + r.range(0, 2)).saturating_sub(1).max(1),
            (full(1) as i64 - pads[1]).max(1) as usize + r.range(0, 1),
        ];
        let w = vec![cg * group, mg, kernel[0], kernel[1]];
        let op = Op::ConvTranspose { kernel, strides, dilations, pads, out_hw, group };
        let mut ins = vec![r.tensor(DType::F32, &x), r.tensor(DType::F32, &w)];
        if r.next().is_multiple_of(2) {
            ins.push(r.tensor(DType::F32, &[mg * group]));
        }
        check_with(op, &ins, &[false, true, true], 1e-4);
    }
}

/// A depthwise convolution of a row-major input computes row-major from a padded copy; pools
/// of stride 1 with pads read a padded copy; both with rows long and short (past the masked
/// end of a vector row), strides, dilation, ceil mode, batch 2.
#[test]
fn row_major_depthwise_and_padded_pools() {
    let mut r = Rng(44);
    for (c, h, w, k, stride, pad, dil) in [
        (5, 9, 23, 3, 1, 1, 1),
        (3, 7, 70, 5, 1, 2, 1),
        (4, 11, 17, 3, 2, 1, 1),
        (2, 12, 33, 3, 1, 2, 2),
        (6, 56, 56, 7, 1, 3, 1),
    ] {
        let x = r.tensor(DType::F32, &[2, c, h, w]);
        let window = Window { kernel: [k, k], strides: [stride, stride], pads: [pad; 4], dilations: [dil, dil] };
        let op = Op::Conv { window: window.clone(), group: c };
        let wt = r.tensor(DType::F32, &[c, 1, k, k]);
        check_with(op, &[x.clone(), wt, r.tensor(DType::F32, &[c])], &[false, true, true], 1e-4);
        let pool = Window { dilations: [1, 1], strides: [1, 1], pads: [pad.min(k - 1); 4], ..window };
        for ceil_mode in [false, true] {
            check(Op::MaxPool { window: pool.clone(), ceil_mode }, std::slice::from_ref(&x));
            for count_include_pad in [false, true] {
                check(Op::AveragePool { window: pool.clone(), ceil_mode, count_include_pad }, std::slice::from_ref(&x));
            }
        }
    }
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
    let s = Session::from_bytes(&art.bytes(), &SessionOptions { threads: 2 }).unwrap();
    let got =
        s.run(&[TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &x.data }]).unwrap()[0].to_f32().unwrap();
    for (i, (a, b)) in got.iter().zip(want.to_f64_vec()).enumerate() {
        assert!((*a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()), "element {i}: {a} vs {b}");
    }
}

/// Grouped convolutions (several channels per group) run one ordinary convolution per group
/// on slices of a channels-last copy of the input: odd sizes, strides, pads, dilation, batch 2,
/// groups of 2 to 8 channels, with and without a bias.
#[test]
fn grouped_convolution_by_groups() {
    let mut r = Rng(43);
    for (group, cig, cog, k, stride, pad, dil) in [
        (3, 4, 5, 3, 1, 1, 1),
        (4, 2, 3, 1, 1, 0, 1),
        (2, 8, 8, 3, 2, 1, 1),
        (8, 2, 2, 3, 1, 2, 2),
        (2, 3, 16, 5, 1, 2, 1),
    ] {
        let x = r.tensor(DType::F32, &[2, group * cig, 9, 11]);
        let w = r.tensor(DType::F32, &[group * cog, cig, k, k]);
        let window = Window { kernel: [k, k], strides: [stride, stride], pads: [pad; 4], dilations: [dil, dil] };
        let op = Op::Conv { window, group };
        check_with(
            op.clone(),
            &[x.clone(), w.clone(), r.tensor(DType::F32, &[group * cog])],
            &[false, true, true],
            1e-4,
        );
        check_with(op, &[x, w], &[false, true], 1e-4);
    }
}

/// ConvTranspose with constant weights, no dilation and non-negative begin pads goes through
/// the sub-pixel decomposition (one convolution over every output phase, then an
/// interleaving copy): strides 1 to 4, kernels shorter and longer than the stride, end
/// padding (output_padding), 1-D-like shapes, batch 2, with and without a bias.
#[test]
fn transposed_convolution_by_phases() {
    let mut r = Rng(41);
    // kernel, strides, begin pads, extra output (output_padding)
    type Case = ([usize; 2], [usize; 2], [i64; 2], [usize; 2]);
    let cases: &[Case] = &[
        ([4, 4], [2, 2], [1, 1], [0, 0]),
        ([2, 2], [2, 2], [0, 0], [0, 0]),
        ([3, 3], [2, 2], [1, 1], [1, 1]),
        ([3, 5], [1, 3], [0, 2], [0, 2]),
        ([1, 16], [1, 8], [0, 4], [0, 0]),
        ([5, 2], [4, 3], [3, 0], [2, 1]),
        ([3, 3], [1, 1], [1, 1], [0, 0]),
        ([1, 1], [2, 2], [0, 0], [1, 1]),
    ];
    for (i, &(kernel, strides, pads, extra)) in cases.iter().enumerate() {
        let (ci, co) = (r.range(1, 5), r.range(1, 6));
        let x = vec![1 + i % 2, ci, r.range(1, 7), r.range(2, 9)];
        let out_hw: [usize; 2] = std::array::from_fn(|a| {
            let full = strides[a] * (x[2 + a] - 1) + kernel[a] + extra[a];
            (full as i64 - 2 * pads[a]).max(1) as usize
        });
        let op = Op::ConvTranspose { kernel, strides, dilations: [1, 1], pads, out_hw, group: 1 };
        let mut ins = vec![r.tensor(DType::F32, &x), r.tensor(DType::F32, &[ci, co, kernel[0], kernel[1]])];
        if i % 3 != 1 {
            ins.push(r.tensor(DType::F32, &[co]));
        }
        let mut g = Graph::new("convT");
        let xi = g.add_input("x", ins[0].ty.clone());
        let rest: Vec<_> = ins[1..].iter().enumerate().map(|(k, t)| g.add_const(format!("c{k}"), t.clone())).collect();
        let mut all = vec![xi];
        all.extend(rest);
        g.outputs = g.add_node(op.clone(), &all, "ct", &[]).unwrap();
        let text = kiln::ir::lir::print(&lowered(&g));
        assert!(text.contains("subpixel_weights"), "case {i} should take the sub-pixel path:\n{text}");
        check_with(op, &ins, &[false, true, true], 1e-4);
    }
}

#[test]
fn top_k_indices() {
    let mut r = Rng(15);
    for _ in 0..8 {
        let rank = r.range(1, 3);
        let s = r.shape(rank, 7);
        let axis = r.range(0, rank - 1);
        let k = r.range(0, s[axis]);
        let dt = [DType::F32, DType::I64][r.range(0, 1)];
        // Integer inputs make ties common: the lower position comes first.
        let x = r.tensor(dt, &s);
        for largest in [true, false] {
            check(Op::TopKIndices { axis, k, largest }, std::slice::from_ref(&x));
        }
    }
}

/// TopK runs as a heap selection per row: long rows (a detector's 8400 boxes, a vocabulary),
/// k from 1 to the whole row, the axis inside (rows strided), many ties (small integers,
/// where the lower position must come first), smallest and largest.
#[test]
fn top_k_by_heap_selection() {
    let mut r = Rng(17);
    for (shape, axis, k) in [
        (vec![1, 8400], 1, 100),
        (vec![2, 3000], 1, 3000),
        (vec![37, 3, 4], 0, 11),
        (vec![5, 64, 2], 1, 1),
        (vec![1, 50257], 1, 50),
    ] {
        for dt in [DType::F32, DType::I64] {
            let x = r.tensor(dt, &shape);
            for largest in [true, false] {
                check(Op::TopKIndices { axis, k, largest }, std::slice::from_ref(&x));
            }
        }
    }
}

/// A long axis and a small k take the repeated-selection lowering.
#[test]
fn top_k_by_selection() {
    let mut r = Rng(16);
    for (shape, axis) in [(vec![100], 0), (vec![3, 90], 1), (vec![70, 2, 3], 0)] {
        for dt in [DType::F32, DType::I32] {
            let x = r.tensor(dt, &shape);
            for (k, largest) in [(1, true), (5, false), (16, true)] {
                check(Op::TopKIndices { axis, k, largest }, std::slice::from_ref(&x));
            }
        }
    }
}

#[test]
fn grid_sample_modes_and_paddings() {
    use kiln::ir::{GridMode, GridPadding};
    let mut r = Rng(17);
    for mode in [GridMode::Nearest, GridMode::Linear, GridMode::Cubic] {
        for padding in [GridPadding::Zeros, GridPadding::Border, GridPadding::Reflection] {
            for align_corners in [false, true] {
                let (n, c) = (r.range(1, 2), r.range(1, 3));
                let xs = [n, c, r.range(2, 6), r.range(2, 6)];
                let x = r.tensor(DType::F32, &xs);
                let gs = [n, r.range(1, 5), r.range(1, 5), 2];
                // Coordinates reach outside [-1, 1] to exercise the padding modes.
                let grid = Tensor::f32(gs.to_vec(), r.f32s(gs.iter().product(), -1.7, 1.7));
                check_with(Op::GridSample { mode, padding, align_corners }, &[x, grid], &[], 1e-4);
                // Volumetric: [N, C, D, H, W] with a grid of (x, y, z).
                let xs = [n, c, r.range(2, 4), r.range(2, 4), r.range(2, 4)];
                let x = r.tensor(DType::F32, &xs);
                let gs = [n, r.range(1, 3), r.range(1, 3), r.range(1, 3), 3];
                let grid = Tensor::f32(gs.to_vec(), r.f32s(gs.iter().product(), -1.7, 1.7));
                check_with(Op::GridSample { mode, padding, align_corners }, &[x, grid], &[], 1e-4);
            }
        }
    }
}

#[test]
fn roi_align_avg_and_max() {
    let mut r = Rng(18);
    for (max, half_pixel) in [(false, false), (false, true), (true, false), (true, true)] {
        let (n, c, h, w) = (r.range(1, 3), r.range(1, 3), r.range(2, 7), r.range(2, 7));
        let x = r.tensor(DType::F32, &[n, c, h, w]);
        let rois_n = r.range(1, 4);
        // Boxes partly outside the image exercise the zero and edge-clamp rules.
        let mut rois = Vec::new();
        for _ in 0..rois_n {
            let v = r.f32s(4, -2.0, 8.0);
            rois.extend([v[0].min(v[2]), v[1].min(v[3]), v[0].max(v[2]), v[1].max(v[3])]);
        }
        let bi = Tensor::i64(vec![rois_n], (0..rois_n).map(|_| r.range(0, n - 1) as i64).collect());
        let op = Op::RoiAlign {
            out_hw: [r.range(1, 4), r.range(1, 4)],
            sampling_ratio: r.range(1, 3),
            spatial_scale: [1.0, 0.5][r.range(0, 1)],
            max,
            half_pixel,
        };
        check_with(op, &[x, Tensor::f32(vec![rois_n, 4], rois), bi], &[], 1e-4);
    }
}
