//! Differential tests of convolutions and pools: direct, as GEMM, Winograd, grouped,
//! depthwise, transposed (gather form and sub-pixel), against the reference evaluation on
//! random and edge shapes (seeded, so failures reproduce).
mod common;

use common::*;
use kiln::ir::op::{BinaryOp, ReduceOp, UnaryOp, Window};
use kiln::ir::{DType, Graph, Op, Tensor};
use kiln::{CompileOptions, Compiler, Session, SessionOptions, TensorRef};

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
            // F(4×4, 3×3) for outputs of 16×16 and more: 6×6 tiles (36 products per image,
            // the image axis first), else 4×4.
            let tile =
                if oh.min(ow) >= 16 { format!("gemm\" domain=[{nb},36,") } else { format!("gemm\" domain=[{nb},16,") };
            assert!(text.contains(&tile), "conv1 should use {tile}…] tiles:\n{text}");
        } else if group == 1 && k == [1, 1] && strides == [1, 1] && pads == [0; 4] {
            // Pointwise on the row-major input: the product W·X over the pixels, with the
            // ReLU after it (over the unmerged pixels) as its epilogue.
            assert!(
                kernel_ending(&prog, "conv1+relu").n_par == 3,
                "conv1 should be W·X over the pixels, the ReLU fused:\n{text}"
            );
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
        let s = Session::from_bytes(&art.bytes(), &SessionOptions { threads: 2, ..Default::default() }).unwrap();
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
        let s = Session::from_bytes(&art.bytes(), &SessionOptions { threads: 2, ..Default::default() }).unwrap();
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

/// A U-Net's or detector's neck, channels-last from end to end: a 3×3 convolution, a channel
/// Slice of it up-sampled by a transposed convolution (sub-pixel), beside a nearest ×2
/// up-sampling of it (a Gather per spatial axis), joined by a Concat into a 3×3 convolution
/// large enough for Winograd F(4×4) beyond 56×56, then a depthwise convolution with a SiLU
/// epilogue (vector rows with a sigmoid) and a mean over its channels-last pixels with the
/// SiLU fused in (loads permuted, no index arithmetic). Batch 2, odd sizes.
#[test]
fn channels_last_through_copies() {
    let mut r = Rng(61);
    let mut net = RefNet::new("neck");
    let (h, w) = (30, 29);
    let x = net.input("x", r.tensor(DType::F32, &[2, 5, h, w]));
    let conv = |k: usize, pad: usize, group: usize| Op::Conv {
        window: Window { kernel: [k, k], strides: [1, 1], pads: [pad; 4], dilations: [1, 1] },
        group,
    };
    let ids = [("w1", vec![24, 5, 3, 3]), ("b1", vec![24]), ("wt", vec![16, 8, 2, 2]), ("bt", vec![8])];
    let [w1, b1, wt, bt] = ids.map(|(n, s)| {
        let t = r.tensor(DType::F32, &s);
        net.constant(n, t)
    });
    let c1 = net.node(conv(3, 1, 1), &[x, w1, b1], "conv1");
    let c1 = net.node(Op::Unary(UnaryOp::Relu), &[c1], "relu");
    let s = net.node(
        Op::Slice { starts: vec![0, 4, 0, 0], steps: vec![1; 4], out_shape: vec![2, 16, h, w] },
        &[c1],
        "slice",
    );
    let up_op = Op::ConvTranspose {
        kernel: [2, 2],
        strides: [2, 2],
        dilations: [1, 1],
        pads: [0, 0],
        out_hw: [2 * h, 2 * w],
        group: 1,
    };
    let t = net.node(up_op, &[s, wt, bt], "up");
    let rows = net.constant("rows", Tensor::i64(vec![2 * h], (0..2 * h as i64).map(|i| i / 2).collect()));
    let cols = net.constant("cols", Tensor::i64(vec![2 * w], (0..2 * w as i64).map(|i| i / 2).collect()));
    let u = net.node(Op::Gather { axis: 2 }, &[c1, rows], "nearest_rows");
    let u = net.node(Op::Gather { axis: 3 }, &[u, cols], "nearest_cols");
    let cat = net.node(Op::Concat { axis: 1 }, &[t, u], "cat");
    // Weights of a trained network's scale (He: about √(2 / 288)): Winograd's rounding error
    // grows with the sum's magnitude, and unit-range weights make it a tolerance test of f32.
    let w2 = net.constant("w2", Tensor::f32(vec![20, 32, 3, 3], r.f32s(20 * 32 * 9, -0.15, 0.15)));
    let c2 = net.node(conv(3, 1, 1), &[cat, w2], "conv2");
    let (wd, bd) = (r.tensor(DType::F32, &[20, 1, 3, 3]), r.tensor(DType::F32, &[20]));
    let (wd, bd) = (net.constant("wd", wd), net.constant("bd", bd));
    let dw = net.node(conv(3, 1, 20), &[c2, wd, bd], "dw");
    let sig = net.node(Op::Unary(UnaryOp::Sigmoid), &[dw], "sigmoid");
    let silu = net.node(Op::Binary(kiln::ir::BinaryOp::Mul), &[dw, sig], "silu");
    let mean = net.node(Op::Reduce { op: ReduceOp::Mean, axes: vec![2, 3], keepdims: false }, &[silu], "mean");

    let prog = net.lowered(&[mean, c2]);
    let text = kiln::ir::lir::print(&prog);
    // Channels-last: the innermost loop runs along the channels, contiguous in the output.
    for (k, channels) in [("up", 8), ("cat.0", 8), ("cat.1", 24), ("nearest_cols", 24)] {
        let kernel = kernel_ending(&prog, k);
        let inner = kernel.n_par - 1;
        let channels_last = kernel.domain[inner] == channels && kernel.output.strides[inner] == 1;
        assert!(channels_last, "{k} should write channels-last:\n{text}");
    }
    assert!(text.contains("conv2/winograd_gemm\" domain=[2,36,"), "conv2 should take F(4×4):\n{text}");
    let mean_k = kernel_ending(&prog, "mean");
    let mut divides = false;
    mean_k.body.visit(&mut |e| divides |= matches!(e, kiln::ir::lir::Expr::Binary(kiln::ir::BinaryOp::Div, ..)));
    assert!(!divides, "the fused SiLU should be read without index arithmetic:\n{text}");
    net.check(&[mean, c2], 3e-4);
}

/// A 1×1 convolution of a row-major input is one product `W·X` over the merged pixels,
/// written row-major (no transposing copy): as the graph's output (straight into its
/// buffer), through a ReLU into a second one, and into a 3×3 convolution (which goes
/// channels-last); batch 2, odd images, channels past the register tile, with and without a
/// bias. An input whose rows are not contiguous (a Slice along W) takes the channels-last
/// form.
#[test]
fn pointwise_on_row_major_input() {
    let mut r = Rng(71);
    let pw = Window { kernel: [1, 1], strides: [1, 1], pads: [0; 4], dilations: [1, 1] };
    for bias in [false, true] {
        let mut net = RefNet::new("pointwise");
        let x = net.input("x", r.tensor(DType::F32, &[2, 20, 7, 9]));
        let w1 = net.constant("w1", Tensor::f32(vec![37, 20, 1, 1], r.f32s(37 * 20, -0.3, 0.3)));
        let mut ins = vec![x, w1];
        if bias {
            ins.push(net.constant("b1", r.tensor(DType::F32, &[37])));
        }
        let y1 = net.node(Op::Conv { window: pw.clone(), group: 1 }, &ins, "pw1");
        let a = net.node(Op::Unary(UnaryOp::Relu), &[y1], "relu");
        let w2 = net.constant("w2", Tensor::f32(vec![5, 37, 1, 1], r.f32s(5 * 37, -0.3, 0.3)));
        let y2 = net.node(Op::Conv { window: pw.clone(), group: 1 }, &[a, w2], "pw2");
        let w3 = net.constant("w3", Tensor::f32(vec![8, 37, 3, 3], r.f32s(8 * 37 * 9, -0.3, 0.3)));
        let win = Window { kernel: [3, 3], strides: [1, 1], pads: [1; 4], dilations: [1, 1] };
        let y3 = net.node(Op::Conv { window: win, group: 1 }, &[y1, w3], "conv3");
        let prog = net.lowered(&[y1, y2, y3]);
        let text = kiln::ir::lir::print(&prog);
        for name in ["pw1", "pw2"] {
            let k = kernel_ending(&prog, name);
            assert!(
                k.n_par == 3
                    && k.output.strides == [k.domain[1..3].iter().product::<usize>() as i64, k.domain[2] as i64, 1],
                "{text}"
            );
        }
        assert!(!text.contains("pw1/to_row_major") && !text.contains("pw2/to_row_major"), "{text}");
        net.check(&[y1, y2, y3], 1e-4);
    }
    let mut net = RefNet::new("pointwise_sliced");
    let x = net.input("x", r.tensor(DType::F32, &[1, 12, 6, 10]));
    let slice = Op::Slice { starts: vec![0, 0, 0, 1], steps: vec![1; 4], out_shape: vec![1, 12, 6, 7] };
    let xs = net.node(slice, &[x], "slice");
    let w = net.constant("w", Tensor::f32(vec![17, 12, 1, 1], r.f32s(17 * 12, -0.3, 0.3)));
    let y = net.node(Op::Conv { window: pw, group: 1 }, &[xs, w], "pw");
    net.check(&[y], 1e-4);
}

/// Convolutions of a row-major input with many channels (a Transpose's result, as a 3-D
/// convolution's depth slices are): one padded channels-last copy, then the fast forms
/// (Winograd for the 3×3, GEMM for the others); batch 2, uneven pads.
#[test]
fn row_major_input_copied_channels_last() {
    let mut r = Rng(67);
    for (k, stride, pads) in [(3, 1, [1, 1, 1, 1]), (3, 2, [0, 1, 2, 1]), (2, 1, [0, 0, 0, 0])] {
        let mut net = RefNet::new("row_major_input");
        let x = net.input("x", r.tensor(DType::F32, &[2, 18, 17, 20]));
        let x = net.node(Op::Transpose { perm: vec![0, 3, 1, 2] }, &[x], "nchw");
        let w = net.constant("w", Tensor::f32(vec![16, 20, k, k], r.f32s(16 * 20 * k * k, -0.3, 0.3)));
        let b = net.constant("b", r.tensor(DType::F32, &[16]));
        let window = Window { kernel: [k, k], strides: [stride, stride], pads, dilations: [1, 1] };
        let y = net.node(Op::Conv { window, group: 1 }, &[x, w, b], "conv");
        let prog = net.lowered(&[y]);
        let copy = kernel_ending(&prog, "conv/pad");
        let inner = copy.n_par - 1;
        assert!(copy.domain[inner] == 20 && copy.output.strides[inner] == 1, "{}", kiln::ir::lir::print(&prog));
        net.check(&[y], 1e-4);
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

/// A depthwise convolution, a max pool and an average pool (with and without the pads
/// counted, ceil mode or not) of each window `(channels, h, w, kernel, stride, pad,
/// dilation)` over a row-major input of batch 2; the pools with the window's stride (and the
/// max pool its dilation) when `strided_pools`, else with stride 1.
fn check_row_major_windows(
    r: &mut Rng,
    cases: &[(usize, usize, usize, usize, usize, usize, usize)],
    strided_pools: bool,
) {
    for &(c, h, w, k, stride, pad, dil) in cases {
        let x = r.tensor(DType::F32, &[2, c, h, w]);
        let window = Window { kernel: [k, k], strides: [stride, stride], pads: [pad; 4], dilations: [dil, dil] };
        let wt = r.tensor(DType::F32, &[c, 1, k, k]);
        let op = Op::Conv { window: window.clone(), group: c };
        check_with(op, &[x.clone(), wt, r.tensor(DType::F32, &[c])], &[false, true, true], 1e-4);
        let mut pool = Window { pads: [pad.min(k - 1); 4], ..window };
        if !strided_pools {
            (pool.strides, pool.dilations) = ([1, 1], [1, 1]);
        }
        for ceil_mode in [false, true] {
            check(Op::MaxPool { window: pool.clone(), ceil_mode }, std::slice::from_ref(&x));
            let pool = Window { dilations: [1, 1], ..pool.clone() };
            for count_include_pad in [false, true] {
                check(Op::AveragePool { window: pool.clone(), ceil_mode, count_include_pad }, std::slice::from_ref(&x));
            }
        }
    }
}

/// A depthwise convolution of a row-major input computes row-major, from a padded copy past
/// 3×3 taps (at most 3×3: its pads checked at the rows' edges); pools
/// of stride 1 with pads read a padded copy; both with rows long and short (past the masked
/// end of a vector row), strides, dilation, ceil mode, batch 2.
#[test]
fn row_major_depthwise_and_padded_pools() {
    let cases = [
        (5, 9, 23, 3, 1, 1, 1),
        (3, 7, 70, 5, 1, 2, 1),
        (4, 11, 17, 3, 2, 1, 1),
        (2, 12, 33, 3, 1, 2, 2),
        (6, 56, 56, 7, 1, 3, 1),
    ];
    check_row_major_windows(&mut Rng(44), &cases, false);
}

/// Windows along row-major image rows in vector rows: stride 2 (two loads per vector and the
/// shuffle of their even elements), pads checked lane by lane at the rows' edges (no padded
/// copy), rows of more than one block (interior blocks unchecked), several output rows a tile
/// (their count not a multiple of it), dilation, ceil mode, batch 2.
#[test]
fn row_major_windows_with_edges_and_strides() {
    let cases = [
        (3, 13, 111, 3, 2, 1, 1),
        (2, 9, 150, 3, 2, 1, 1),
        (4, 10, 37, 5, 2, 2, 1),
        (2, 7, 200, 3, 1, 1, 1),
        (3, 8, 40, 3, 2, 0, 1),
        (2, 11, 31, 3, 2, 1, 2),
        (1, 5, 17, 2, 2, 1, 1),
    ];
    check_row_major_windows(&mut Rng(61), &cases, true);
}

/// Grouped convolutions (several channels per group): alone, from the row-major graph
/// input to the row-major graph output, one product per group over `[n, oh, co, ow]`
/// (channels by the pixels of a row, no transposing copies); inside a network, of a
/// channels-last input, one ordinary convolution per group on slices of it, or, as many
/// channels in as out and at most 8 a group, one kernel over every group. Odd sizes,
/// strides, pads, dilation, batch 2, groups of 2 to 8 channels, with and without a bias.
#[test]
fn grouped_convolution_by_groups() {
    let mut r = Rng(43);
    for (group, cig, cog, k, stride, pad, dil) in [
        (3, 4, 5, 3, 1, 1, 1),
        (4, 2, 3, 1, 1, 0, 1),
        (2, 8, 8, 3, 2, 1, 1),
        (8, 2, 2, 3, 1, 2, 2),
        (2, 3, 16, 5, 1, 2, 1),
        // As many channels in as out, few a group: one kernel over every group (a load and
        // a shuffle per term), the channels past whole vectors (masked), tiles of pixels.
        (12, 4, 4, 3, 1, 1, 1),
        (5, 8, 8, 3, 2, 1, 1),
        (10, 2, 2, 3, 1, 1, 1),
        (3, 4, 4, 1, 1, 0, 1),
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
        check_with(op.clone(), &[x.clone(), w.clone()], &[false, true], 1e-4);
        let mut g = Graph::new("lone_grouped");
        let xi = g.add_input("x", x.ty.clone());
        let wi = g.add_const("w", w.clone());
        g.outputs = g.add_node(op.clone(), &[xi, wi], "conv", &[]).unwrap();
        let prog = lowered(&g);
        let text = kiln::ir::lir::print(&prog);
        let k0 = kernel_ending(&prog, "conv/g0");
        assert!(k0.n_par == 4 && k0.output.strides[3] == 1 && !text.contains("to_row_major"), "{text}");
        // Of a channels-last input: a 1×3 convolution before it.
        let mut net = RefNet::new("grouped_in_network");
        let xi = net.input("x", x);
        let c = group * cig;
        let w0 = net.constant("w0", Tensor::f32(vec![c, c, 1, 3], r.f32s(c * c * 3, -0.3, 0.3)));
        let pre = Window { kernel: [1, 3], strides: [1, 1], pads: [0, 1, 0, 1], dilations: [1, 1] };
        let h = net.node(Op::Conv { window: pre, group: 1 }, &[xi, w0], "pre");
        let wi = net.constant("w", w);
        let y = net.node(op, &[h, wi], "conv");
        net.check(&[y], 1e-4);
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

/// Means and maxima over the pixels of a channels-last image (a squeeze-and-excitation
/// block's mean, a global max pool) are computed in parts along the pixels and then
/// combined (`split-reductions`) where the pixels divide into parts; odd images, batch 2,
/// channels past a vector, and images whose pixel count does not divide (left whole). The
/// SE scale multiplies the image afterwards, as EfficientNet's does.
#[test]
fn channels_last_reductions_in_parts() {
    let mut r = Rng(73);
    let win = Window { kernel: [3, 3], strides: [1, 1], pads: [1; 4], dilations: [1, 1] };
    for (n, c, h, w, parts) in [(1, 20, 32, 40, true), (2, 37, 24, 48, true), (1, 19, 37, 41, false)] {
        let mut net = RefNet::new("reductions_in_parts");
        let x = net.input("x", r.tensor(DType::F32, &[n, 8, h, w]));
        let wt = net.constant("w", Tensor::f32(vec![c, 8, 3, 3], r.f32s(c * 8 * 9, -0.3, 0.3)));
        let y = net.node(Op::Conv { window: win.clone(), group: 1 }, &[x, wt], "conv");
        let mean = net.node(Op::Reduce { op: ReduceOp::Mean, axes: vec![2, 3], keepdims: true }, &[y], "mean");
        let max = net.node(Op::Reduce { op: ReduceOp::Max, axes: vec![2, 3], keepdims: true }, &[y], "max");
        let gate = net.node(Op::Unary(UnaryOp::Sigmoid), &[mean], "gate");
        let scaled = net.node(Op::Binary(BinaryOp::Mul), &[y, gate], "scale");
        let prog = net.lowered(&[mean, max, scaled]);
        let text = kiln::ir::lir::print(&prog);
        assert_eq!(text.contains("mean.parts") && text.contains("max.parts"), parts, "{text}");
        net.check(&[mean, max, scaled], 1e-4);
    }
}

/// An i16 tensor of `shape` with values in `[lo, hi]`, every seventh at `hi` (the extremes
/// meet in the pair sums).
fn i16s(r: &mut Rng, shape: &[usize], lo: i16, hi: i16) -> Tensor {
    let n: usize = shape.iter().product();
    let span = (hi as i64 - lo as i64 + 1) as u64;
    let v: Vec<i16> =
        (0..n).map(|i| if i % 7 == 0 { hi } else { (lo as i64 + (r.next() % span) as i64) as i16 }).collect();
    Tensor::from_data(shape.to_vec(), kiln::ir::Data::I16(v))
}

/// Integer convolutions (i16 operands, exact i32 sums: a quantized model's, see
/// `kiln_passes::quant::integer_convolutions`) match the reference exactly: 1×1, 3×3 with
/// pads (the zero row) and stride 2, an odd channel count under several taps (not the
/// integer GEMM: pairs would straddle taps; the generic reduction), a one-tap odd one (the
/// half pair), batch 2. Each reads the i16 result of a first (1×1, weights in [-1, 1])
/// integer convolution and a ReLU reads its result, so that it is channels-last as inside a
/// network, where the CPU's integer GEMM takes it (its panels are checked where the CPU has
/// one).
#[test]
fn integer_convolutions_are_exact() {
    let mut r = Rng(50);
    let win =
        |k: usize, s: usize, p: usize| Window { kernel: [k, k], strides: [s, s], pads: [p; 4], dilations: [1, 1] };
    let cases = [
        (1, 16, 6, 7, 24, win(1, 1, 0)),
        (1, 8, 9, 9, 16, win(3, 1, 1)),
        (2, 10, 8, 11, 20, win(3, 2, 1)),
        (1, 5, 6, 6, 8, win(3, 1, 1)),
        (1, 7, 5, 5, 9, win(1, 1, 0)),
        (1, 64, 7, 7, 33, win(3, 2, 0)),
    ];
    for (n, ci, h, w, co, window) in cases {
        let mut net = RefNet::new("int_conv");
        let x = net.input("x", i16s(&mut r, &[n, ci, h, w], -255, 255));
        let w1 = net.constant("w1", i16s(&mut r, &[ci, ci, 1, 1], -1, 1));
        let wt = net.constant("w2", i16s(&mut r, &[co, ci, window.kernel[0], window.kernel[1]], -127, 127));
        let first = net.node(Op::Conv { window: win(1, 1, 0), group: 1 }, &[x, w1], "first");
        let a = net.node(Op::cast(DType::I16), &[first], "a");
        let conv = net.node(Op::Conv { window: window.clone(), group: 1 }, &[a, wt], "conv");
        // (A consumer, so that the convolution is not the row-major graph output.)
        let y = net.node(Op::Unary(UnaryOp::Relu), &[conv], "y");
        let text = kiln::ir::lir::print(&net.lowered(&[y]));
        let pairs = ci % 2 == 0 || window.kernel == [1, 1];
        if std::is_x86_feature_detected!("avx2") && pairs {
            assert!(text.contains("w2.panels"), "{ci}->{co} {:?}: the integer GEMM's panels:\n{text}", window.kernel);
        }
        net.check(&[y], 0.0);
    }
}

/// An integer convolution whose epilogue ends in the i16 operand of the next one (its sums
/// scaled, rounded, clipped to [0, 255] and narrowed: a quantized network's requantization)
/// stores that i16 tensor from its GEMM's registers, and both match the reference exactly:
/// a partial column panel (20 channels), a partial row tile (35 pixels), one pixel, batch 2.
#[test]
fn integer_convolutions_store_the_next_ones_i16_operand() {
    let mut r = Rng(52);
    let win = |k: usize, p: usize| Window { kernel: [k, k], strides: [1, 1], pads: [p; 4], dilations: [1, 1] };
    for (n, ci, h, w, c1, c2, k2) in [(1, 16, 5, 7, 20, 8, 3), (1, 10, 1, 1, 9, 5, 1), (2, 8, 4, 3, 32, 12, 1)] {
        let mut net = RefNet::new("narrow_epilogue");
        let x = net.input("x", i16s(&mut r, &[n, ci, h, w], -255, 255));
        let w0 = net.constant("w0", i16s(&mut r, &[ci, ci, 1, 1], -1, 1));
        let w1 = net.constant("w1", i16s(&mut r, &[c1, ci, 1, 1], -127, 127));
        let w2 = net.constant("w2", i16s(&mut r, &[c2, c1, k2, k2], -127, 127));
        let sixty_fourth = net.constant("s", Tensor::f32(vec![], vec![1.0 / 64.0]));
        let first = net.node(Op::Conv { window: win(1, 0), group: 1 }, &[x, w0], "first");
        let a = net.node(Op::cast(DType::I16), &[first], "a");
        let conv1 = net.node(Op::Conv { window: win(1, 0), group: 1 }, &[a, w1], "conv1");
        let sums = net.node(Op::cast(DType::F32), &[conv1], "sums");
        let scaled = net.node(Op::Binary(BinaryOp::Mul), &[sums, sixty_fourth], "scaled");
        let rounded = net.node(Op::Unary(UnaryOp::Round), &[scaled], "rounded");
        let bounded = net.node(Op::Unary(UnaryOp::Clip { lo: 0.0, hi: 255.0 }), &[rounded], "bounded");
        let q = net.node(Op::cast(DType::I16), &[bounded], "q");
        let conv2 = net.node(Op::Conv { window: win(k2, k2 / 2), group: 1 }, &[q, w2], "conv2");
        let y = net.node(Op::Unary(UnaryOp::Relu), &[conv2], "y");
        let prog = net.lowered(&[y]);
        let text = kiln::ir::lir::print(&prog);
        let narrow = prog.instrs.iter().any(|i| {
            matches!(i, kiln::ir::lir::Instr::Kernel(k) if k.name.starts_with("conv1") && k.output.dtype == DType::I16)
        });
        assert!(narrow, "conv1's kernel should write q:\n{text}");
        if std::is_x86_feature_detected!("avx2") {
            assert!(text.contains("w1.panels"), "conv1 should be the integer GEMM:\n{text}");
        }
        net.check(&[y], 0.0);
    }
}

/// A quantized model's convolution, `Conv((Cast(f32, x_u8) − zp)·s, w, b)` with weights that
/// are integer multiples of a per-channel scale (as a QDQ model's dequantized weights are),
/// compiles to an integer convolution whose result matches the f32 reference of the same
/// graph: 1×1 and 3×3 of stride 2 with pads, with a bias. (Its input is the graph's, row-major:
/// the generic reduction runs it; `integer_convolutions_are_exact` covers the GEMM's.)
#[test]
fn quantized_convolutions_run_as_integers() {
    let mut r = Rng(51);
    for (ci, co, k, s, p) in [(16, 24, 1, 1, 0), (8, 12, 3, 2, 1)] {
        let mut net = RefNet::new("qconv");
        let xv: Vec<u8> = (0..ci * 9 * 10).map(|_| r.next() as u8).collect();
        let x = net.input("x", Tensor::from_data(vec![1, ci, 9, 10], kiln::ir::Data::U8(xv)));
        let zp = net.constant("zp", Tensor::f32(vec![], vec![117.0]));
        let scale = net.constant("s", Tensor::f32(vec![], vec![0.02]));
        let sw: Vec<f32> = (0..co).map(|o| 0.001 * (o + 1) as f32).collect();
        let wv: Vec<f32> = (0..co * ci * k * k)
            .map(|i| {
                // Symmetric per-channel weights: each channel's largest magnitude is 127.
                let q = if i % (ci * k * k) == 0 { -127 } else { (r.next() % 255) as i64 - 127 };
                q as f32 * sw[i / (ci * k * k)]
            })
            .collect();
        let w = net.constant("w", Tensor::f32(vec![co, ci, k, k], wv));
        let b = net.constant("b", r.tensor(DType::F32, &[co]));
        let xf = net.node(Op::cast(DType::F32), &[x], "xf");
        let xs = net.node(Op::Binary(BinaryOp::Sub), &[xf, zp], "xs");
        let xd = net.node(Op::Binary(BinaryOp::Mul), &[xs, scale], "xd");
        let window = Window { kernel: [k, k], strides: [s, s], pads: [p; 4], dilations: [1, 1] };
        let y = net.node(Op::Conv { window, group: 1 }, &[xd, w, b], "y");
        let text = kiln::ir::lir::print(&net.lowered(&[y]));
        assert!(text.contains("int_conv"), "{ci}->{co} {k}x{k}: an integer convolution:\n{text}");
        net.check(&[y], 1e-5);
    }
}
