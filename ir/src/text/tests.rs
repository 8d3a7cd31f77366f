//! Print/parse tests of the HIR text form.
use super::*;
use crate::minifloat::E8M0Round;
use crate::op::{BinaryOp as B, CmpOp as C, ReduceOp as R, UnaryOp as U};
use crate::op::{GridMode, GridPadding, ScatterReduction, Window};

fn node(g: &mut Graph, op: Op, inputs: &[ValueId], name: &str) -> ValueId {
    g.add_node(op, inputs, name, &[]).unwrap_or_else(|e| panic!("{e}"))[0]
}
fn win(k: usize, s: usize, p: usize) -> Window {
    Window { kernel: [k, k], strides: [s, s], pads: [p; 4], dilations: [1, 1] }
}

/// A small convolutional classifier, with one constant too large to print inline.
fn small_net() -> Graph {
    let mut g = Graph::new("tiny net");
    let x = g.add_input("x", TensorType::new(DType::F32, vec![1, 3, 4, 4]));
    let w = g.add_const("conv.w", Tensor::f32(vec![2, 3, 1, 1], vec![0.5, -1.0, 0.25, 1.0, 0.0, -0.125]));
    let b = g.add_const("conv.b", Tensor::f32(vec![2], vec![0.1, -0.2]));
    let fc = g.add_const("fc.w", Tensor::f32(vec![5, 8], (0..40).map(|i| i as f32 / 8.0).collect()));
    let c = node(&mut g, Op::Conv { window: win(1, 1, 0), group: 1 }, &[x, w, b], "conv1");
    let r = node(&mut g, Op::Unary(U::Relu), &[c], "relu1");
    let p = node(&mut g, Op::MaxPool { window: win(2, 2, 0), ceil_mode: false }, &[r], "pool1");
    let f = node(&mut g, Op::Reshape { shape: vec![1, 8] }, &[p], "flatten");
    let y = node(&mut g, Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true }, &[f, fc], "fc");
    let s = node(&mut g, Op::Softmax { axis: 1 }, &[y], "");
    g.value_mut(s).name = "probs".into();
    g.outputs.push(s);
    g
}

#[test]
fn prints_a_small_network() {
    let g = small_net();
    insta::assert_snapshot!(print(&g));
    let err = parse(&print(&g)).unwrap_err();
    assert!(err.contains("line 5") && err.contains("elided") && err.contains("\"fc.w\""), "{err}");
}

/// Every op variant, with awkward floats, strings and constants.
fn every_op() -> Graph {
    let f32t = |s: &[usize]| TensorType::new(DType::F32, s.to_vec());
    let mut g = Graph::new("every \"op\"\n\tgraph \\ \u{1}");
    let a = g.add_input("a", f32t(&[2, 3]));
    let bo = g.add_input("b", TensorType::new(DType::Bool, vec![2, 3]));
    let i = g.add_input("i:0 with spaces", TensorType::new(DType::I64, vec![2, 3]));
    let x = g.add_input("x", f32t(&[1, 4, 5, 5]));
    let m =
        g.add_const("m", Tensor::f32(vec![3, 2], vec![0.1, -0.0, 1e-30, f32::MAX, f32::INFINITY, f32::MIN_POSITIVE]));
    let k = g.add_const("k", Tensor::i32(vec![2], vec![i32::MIN, 7]));
    let idx = g.add_const("idx", Tensor::i64(vec![2], vec![-1, i64::MAX]));
    let idx = node(&mut g, Op::Binary(B::Min), &[idx, idx], "");
    let flags = g.add_const("flags", Tensor::bool(vec![], vec![true]));
    let _ = node(&mut g, Op::Binary(B::And), &[bo, flags], "");
    let _ = node(&mut g, Op::Unary(U::Abs), &[k], "abs_k");
    for op in [B::Add, B::Sub, B::Mul, B::Div, B::Pow, B::Max, B::Min, B::Mod { fmod: true }] {
        node(&mut g, Op::Binary(op), &[a, a], "");
    }
    node(&mut g, Op::Binary(B::Mod { fmod: false }), &[i, i], "");
    node(&mut g, Op::Binary(B::Shl), &[i, i], "");
    node(&mut g, Op::Binary(B::Shr), &[i, i], "");
    for op in [B::And, B::Or, B::Xor] {
        node(&mut g, Op::Binary(op), &[bo, bo], "");
    }
    for op in [C::Equal, C::Less, C::LessOrEqual, C::Greater, C::GreaterOrEqual] {
        node(&mut g, Op::Compare(op), &[a, a], "");
    }
    let unary = [
        U::Neg,
        U::Abs,
        U::Sqrt,
        U::Reciprocal,
        U::Exp,
        U::Log,
        U::Relu,
        U::Sigmoid,
        U::Tanh,
        U::Erf,
        U::Sin,
        U::Cos,
        U::Tan,
        U::Asin,
        U::Acos,
        U::Atan,
        U::Floor,
        U::Ceil,
        U::Sign,
        U::LeakyRelu { alpha: 0.01 },
        U::HardSigmoid { alpha: 1.0 / 6.0, beta: 0.5 },
        U::Clip { lo: f64::NEG_INFINITY, hi: 6.000000000000001 },
    ];
    for op in unary {
        node(&mut g, Op::Unary(op), &[a], "");
    }
    node(&mut g, Op::Unary(U::Not), &[bo], "");
    node(&mut g, Op::Where, &[bo, a, a], "");
    node(&mut g, Op::cast(DType::I32), &[a], "");
    node(&mut g, Op::Cast { to: DType::F8E4M3FN, saturate: false, round: E8M0Round::Up }, &[a], "");
    node(&mut g, Op::Cast { to: DType::F8E8M0, saturate: true, round: E8M0Round::Nearest }, &[a], "");
    node(&mut g, Op::cast(DType::I4), &[a], "");
    node(&mut g, Op::BitCast { to: DType::I32 }, &[a], "");
    node(&mut g, Op::MatMul, &[a, m], "");
    let c2 = g.add_const("c2", Tensor::f32(vec![2, 1], vec![f32::NAN, -1.5]));
    node(&mut g, Op::Gemm { alpha: 0.1, beta: -2.5e-8, trans_a: true, trans_b: true }, &[m, a, c2], "");
    let w = g.add_const("w", Tensor::f32(vec![2, 2, 2, 1], vec![0.0; 8]));
    let window = Window { kernel: [2, 1], strides: [2, 1], pads: [1, 0, 2, 1], dilations: [1, 2] };
    node(&mut g, Op::Conv { window: window.clone(), group: 2 }, &[x, w], "");
    let wt = g.add_const("wt", Tensor::f32(vec![4, 1, 2, 1], vec![0.5; 8]));
    let ct = Op::ConvTranspose {
        kernel: [2, 1],
        strides: [2, 1],
        dilations: [1, 2],
        pads: [-1, 0],
        out_hw: [11, 5],
        group: 2,
    };
    node(&mut g, ct, &[x, wt], "");
    node(&mut g, Op::MaxPool { window: window.clone(), ceil_mode: true }, &[x], "");
    node(&mut g, Op::MaxPoolIndices { window: window.clone(), ceil_mode: true, column_major: true }, &[x], "");
    node(&mut g, Op::AveragePool { window, ceil_mode: false, count_include_pad: true }, &[x], "");
    let p4 = g.add_const("p4", Tensor::f32(vec![4], vec![1.0, 2.0, 3.0, 4.0]));
    node(&mut g, Op::BatchNorm { epsilon: 1e-5 }, &[x, p4, p4, p4, p4], "");
    node(&mut g, Op::Lrn { size: 3, alpha: 1e-4, beta: 0.75, bias: 2.0 }, &[x], "");
    node(&mut g, Op::Softmax { axis: 1 }, &[a], "");
    node(&mut g, Op::LogSoftmax { axis: 0 }, &[a], "");
    let p3 = g.add_const("p3", Tensor::f32(vec![3], vec![1.0, 0.5, 2.0]));
    node(&mut g, Op::LayerNorm { axis: 1, epsilon: 1e-5 }, &[a, p3, p3], "");
    node(&mut g, Op::LayerNorm { axis: 0, epsilon: 0.25 }, &[a, p3], "");
    node(&mut g, Op::RmsNorm { axis: 1, epsilon: 1e-6 }, &[a, p3], "");
    for (op, axes, keepdims) in [
        (R::Sum, vec![0, 1], true),
        (R::Mean, vec![1], false),
        (R::Max, vec![], false),
        (R::Min, vec![0], true),
        (R::Prod, vec![1], true),
    ] {
        node(&mut g, Op::Reduce { op, axes, keepdims }, &[a], "");
    }
    node(&mut g, Op::Reshape { shape: vec![3, 1, 2] }, &[a], "");
    node(&mut g, Op::Transpose { perm: vec![1, 0] }, &[a], "");
    node(&mut g, Op::Concat { axis: 1 }, &[a, a, a], "");
    node(&mut g, Op::Slice { starts: vec![1, 2], steps: vec![-1, -2], out_shape: vec![2, 2] }, &[a], "");
    node(&mut g, Op::Gather { axis: 1 }, &[a, idx], "");
    node(&mut g, Op::GatherElements { axis: 0 }, &[a, i], "");
    let idx1 = g.add_const("idx1", Tensor::i64(vec![2, 1], vec![1, 0]));
    node(&mut g, Op::GatherNd { batch_dims: 1 }, &[a, idx1], "");
    node(&mut g, Op::ScatterElements { axis: 1, reduction: ScatterReduction::Max }, &[a, i, a], "");
    let upd = g.add_const("upd", Tensor::f32(vec![2, 3], vec![0.5; 6]));
    node(&mut g, Op::ScatterNd { reduction: ScatterReduction::None }, &[a, idx1, upd], "");
    node(&mut g, Op::IsNaN, &[a], "");
    let rois = g.add_const("rois", Tensor::f32(vec![1, 4], vec![0.0, 0.5, 3.0, 4.0]));
    let bi = g.add_const("bi", Tensor::i64(vec![1], vec![0]));
    let ra = Op::RoiAlign { out_hw: [2, 3], sampling_ratio: 2, spatial_scale: 0.5, max: true, half_pixel: false };
    node(&mut g, ra, &[x, rois, bi], "");
    let grid = g.add_const("grid", Tensor::f32(vec![1, 1, 2, 2], vec![-1.0, 0.5, 0.25, 1.0]));
    let gs = Op::GridSample { mode: GridMode::Cubic, padding: GridPadding::Reflection, align_corners: true };
    node(&mut g, gs, &[x, grid], "");
    node(&mut g, Op::TopKIndices { axis: 1, k: 2, largest: false }, &[a], "");
    node(&mut g, Op::IsInf { negative: true, positive: false }, &[a], "");
    node(&mut g, Op::ArgReduce { max: true, axis: 1, keepdims: true, select_last: false }, &[a], "");
    node(&mut g, Op::ArgReduce { max: false, axis: 0, keepdims: false, select_last: true }, &[a], "");
    let e = node(&mut g, Op::Expand { shape: vec![4, 1, 1] }, &[a], "");
    g.set_fused(e, true);
    let id = node(&mut g, Op::Identity, &[e], "");
    let unsupported = Op::Unsupported { op_type: "Loop".into(), domain: "ai.\"onnx\"".into(), opset: 17 };
    let u = g.add_placeholder(
        unsupported,
        &[a, x],
        "loop",
        &["u0".into(), "u1".into()],
        vec![f32t(&[2]), TensorType::new(DType::Bool, vec![])],
    );
    g.outputs.extend([id, u[1], a, m]);
    g
}

#[test]
fn every_op_round_trips() {
    let g = every_op();
    let text = print(&g);
    if std::env::var_os("KILN_SHOW").is_some() {
        println!("{text}");
    }
    let h = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(print(&h), text);
    // The ops, names and constants themselves survive, not just their printing.
    let ops = |g: &Graph| g.order().iter().map(|&n| (g.node(n).op.clone(), g.node(n).name.clone())).collect::<Vec<_>>();
    assert_eq!(ops(&g), ops(&h));
    let consts = |g: &Graph| g.live_constants().into_iter().map(|v| g.const_of(v).unwrap().clone()).collect::<Vec<_>>();
    assert_eq!(consts(&g), consts(&h));
    assert_eq!(g.name, h.name);
    let names: std::collections::BTreeSet<&str> = g.order().iter().map(|&n| g.node(n).op.name()).collect();
    assert_eq!(names.len(), 81, "every op kind appears: {names:?}");
}

#[test]
fn hand_written_text_parses() {
    let src = r#"
        // ids need not be dense or ordered; comments and blank lines are fine
        graph "g" {
          input %10 "x": f32[2]
          const %3 "c": f32[] = [2.5]
          %7 "y": f32[2] = mul(%10, %3)  # "scale"
          %8 "z": f32[2] = clip(%7) {hi=1.0, lo=-inf}
          output %8
        }
    "#;
    let g = parse(src).unwrap();
    let want = "graph \"g\" {\n  input %0 \"x\": f32[2]\n  const %1 \"c\": f32[] = [2.5]\n  \
                %2 \"y\": f32[2] = mul(%0, %1) # \"scale\"\n  \
                %3 \"z\": f32[2] = clip(%2) {lo=-inf, hi=1.0}\n  output %3\n}\n";
    assert_eq!(print(&g), want);
}

#[test]
fn parse_errors_are_clear() {
    let err = |src: &str| parse(src).unwrap_err();
    let g = |body: &str| format!("graph \"g\" {{\n  input %0 \"x\": f32[2]\n{body}\n}}");
    assert!(err(&g("  %1 \"y\": f32[3] = relu(%0)")).contains("line 3: relu results are written as [f32[3]]"));
    assert!(err(&g("  %1 \"y\": f32[2] = relu(%5)")).contains("line 3: %5 is used before it is defined"));
    assert!(err(&g("  %1 \"y\": f32[2] = frob(%0)")).contains("unknown op `frob`"));
    assert!(err(&g("  %1 \"y\": f32[2] = relu(%0) {alpha=1.0}")).contains("relu has no attribute `alpha`"));
    assert!(err(&g("  %1 \"y\": f32[2] = leaky_relu(%0)")).contains("missing attribute `alpha`"));
    assert!(err(&g("  %1 \"y\": f32[2] = add(%0)")).contains("add takes 2..=2 inputs"));
    assert!(err(&g("  input %0 \"z\": f32[2]")).contains("line 3: %0 is defined twice"));
    assert!(err(&g("  const %1 \"c\": i32[2] = [1]")).contains("needs 2 elements, got 1"));
    assert!(err(&g("  const %1 \"c\": i32[1] = [1.5]")).contains("cannot parse element `1.5`"));
    assert!(err(&g("  const %1 \"c\": f17[1] = [1]")).contains("unknown dtype `f17`"));
    assert!(err(&g("  output %0 $")).contains("unexpected character '$'"));
    assert!(err("graph \"g\" {\n  input %0 \"x: f32[2]\n}").contains("line 2: newline in a string"));
    assert!(err("graph \"g\" {").contains("end of input"));
}

#[test]
fn fnv1a_matches_reference_vectors() {
    assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
    assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
}
