//! Per-op import: attribute forms across opsets, folding, and the HIR each op becomes.

mod common;

use common::*;
use kiln_ir::minifloat::E8M0Round;
use kiln_ir::{BinaryOp, DType, Data, Op, ReduceOp, UnaryOp, Window};
use kiln_onnx::proto::tensor_proto::DataType;

/// The single scheduled node's op.
fn only_op(m: &Model) -> Op {
    let g = import_ok(m);
    let ops = ops(&g);
    assert_eq!(ops.len(), 1, "expected one node, got {ops:?}");
    ops[0].clone()
}

fn unary_model(opset: i64, shape: &[i64], n: kiln_onnx::proto::NodeProto) -> Model {
    Model::new(opset).input(vis("x", F32, shape)).node(n).output("y")
}

#[test]
fn shape_chain_folds_into_static_reshape() {
    // y = x.reshape(x.shape[0], -1) written the exporter way.
    let m = Model::new(13)
        .input(vis("x", F32, &[2, 3, 4]))
        .init(t_i64("zero", &[], &[0]))
        .init(t_i64("axes0", &[1], &[0]))
        .init(t_i64("minus1", &[1], &[-1]))
        .node(node("Shape", &["x"], &["s"], vec![]))
        .node(node("Gather", &["s", "zero"], &["n"], vec![a_int("axis", 0)]))
        .node(node("Unsqueeze", &["n", "axes0"], &["n1"], vec![]))
        .node(node("Concat", &["n1", "minus1"], &["shape"], vec![a_int("axis", 0)]))
        .node(node("Reshape", &["x", "shape"], &["y"], vec![]))
        .output("y");
    assert_eq!(only_op(&m), Op::Reshape { shape: vec![2, 12] });
    let g = import_ok(&m);
    // The folded intermediate constants keep their ONNX names.
    let names: Vec<String> =
        g.value_ids().filter(|&v| g.const_of(v).is_some()).map(|v| g.value(v).name.clone()).collect();
    for want in ["s", "n", "n1", "shape"] {
        assert!(names.iter().any(|n| n == want), "{want} not among {names:?}");
    }
}

#[test]
fn constant_of_shape_and_size_fold() {
    let m = Model::new(13)
        .input(vis("x", F32, &[2, 3]))
        .node(node("Shape", &["x"], &["s"], vec![a_int("start", -1)]))
        .node(node("ConstantOfShape", &["s"], &["c"], vec![a_tensor("value", t_i64("", &[1], &[7]))]))
        .node(node("Size", &["x"], &["n"], vec![]))
        .node(node("ConstantOfShape", &["s"], &["z"], vec![]))
        .output("c")
        .output("n")
        .output("z");
    let m = Model { opset: 15, ..m };
    let g = import_ok(&m);
    assert!(ops(&g).is_empty());
    let c = |i: usize| g.const_of(g.outputs[i]).unwrap().clone();
    assert_eq!(c(0).data(), Data::I64(vec![7, 7, 7]));
    assert_eq!(c(1).data(), Data::I64(vec![6]));
    assert_eq!(c(1).shape(), &[] as &[usize]);
    assert_eq!(c(2).data(), Data::F32(vec![0.0; 3]));
}

#[test]
fn conv_same_upper_pads() {
    let m = Model::new(11)
        .input(vis("x", F32, &[1, 2, 5, 6]))
        .init(t_f32("w", &[4, 2, 3, 3], &[0.1; 72]))
        .init(t_f32("b", &[4], &[0.0; 4]))
        .node(node("Conv", &["x", "w", "b"], &["y"], vec![a_str("auto_pad", "SAME_UPPER"), a_ints("strides", &[2, 2])]))
        .output("y");
    let window = Window { kernel: [3, 3], strides: [2, 2], pads: [1, 0, 1, 1], dilations: [1, 1] };
    assert_eq!(only_op(&m), Op::Conv { window, group: 1 });
    let g = import_ok(&m);
    assert_eq!(g.ty(g.outputs[0]).shape, vec![1, 4, 3, 3]);

    // SAME_LOWER puts the odd pad first; explicit pads and kernel_shape pass through.
    let mut m2 = m;
    m2.nodes[0].attribute[0] = a_str("auto_pad", "SAME_LOWER");
    let Op::Conv { window, .. } = only_op(&m2) else { panic!() };
    assert_eq!(window.pads, [1, 1, 1, 0]);
    m2.nodes[0].attribute =
        vec![a_ints("pads", &[1, 2, 1, 2]), a_ints("kernel_shape", &[3, 3]), a_ints("dilations", &[1, 2])];
    let Op::Conv { window, .. } = only_op(&m2) else { panic!() };
    assert_eq!(window, Window { kernel: [3, 3], strides: [1, 1], pads: [1, 2, 1, 2], dilations: [1, 2] });
}

/// A 3-D ConvTranspose (zero insertion, then the flipped-kernel convolution) against the
/// direct scatter of its definition, here in the test: strides, pads, output padding,
/// dilation, bias.
#[test]
fn conv_transpose_3d_matches_the_direct_scatter() {
    let vals = |n: usize, seed: u32| -> Vec<f32> {
        (0..n).map(|i| ((i as u32 * 7919 + seed) % 23) as f32 / 11.0 - 1.0).collect()
    };
    let to_i = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
    for (xs, ws, s, p, op, dl, bias) in [
        ([1, 2, 3, 4, 3], [2, 3, 2, 2, 2], [2, 2, 2], [0, 0, 0], [0, 0, 0], [1, 1, 1], true),
        ([2, 3, 2, 3, 2], [3, 4, 2, 3, 1], [2, 3, 1], [0, 0, 0], [0, 0, 0], [1, 1, 1], false),
        ([1, 2, 2, 2, 3], [2, 2, 2, 2, 2], [2, 2, 2], [0, 0, 0], [0, 1, 0], [1, 1, 1], true),
        ([2, 3, 4, 3, 5], [3, 2, 3, 3, 2], [1, 2, 3], [1, 1, 0], [0, 1, 2], [1, 1, 1], false),
        ([1, 1, 3, 3, 3], [1, 2, 2, 3, 2], [2, 1, 2], [1, 2, 0], [1, 0, 1], [2, 1, 1], true),
    ] {
        let (x, w, b) = (vals(xs.iter().product(), 3), vals(ws.iter().product(), 5), vals(ws[1], 7));
        let o: Vec<usize> =
            (0..3).map(|a| s[a] * (xs[2 + a] - 1) + op[a] + (ws[2 + a] - 1) * dl[a] + 1 - 2 * p[a]).collect();
        let os = [xs[0], ws[1], o[0], o[1], o[2]];
        let mut want = vec![0f64; os.iter().product()];
        for n in 0..xs[0] {
            for (ci, co) in (0..xs[1]).flat_map(|ci| (0..ws[1]).map(move |co| (ci, co))) {
                for (id, ih, iw) in
                    (0..xs[2]).flat_map(|a| (0..xs[3]).flat_map(move |b| (0..xs[4]).map(move |c| (a, b, c))))
                {
                    for (kd, kh, kw) in
                        (0..ws[2]).flat_map(|a| (0..ws[3]).flat_map(move |b| (0..ws[4]).map(move |c| (a, b, c))))
                    {
                        let at = |i: usize, t: usize, a: usize| (i * s[a] + t * dl[a]) as i64 - p[a] as i64;
                        let (od, oh, ow) = (at(id, kd, 0), at(ih, kh, 1), at(iw, kw, 2));
                        if od < 0 || oh < 0 || ow < 0 || od >= o[0] as i64 || oh >= o[1] as i64 || ow >= o[2] as i64 {
                            continue;
                        }
                        let xv = x[(((n * xs[1] + ci) * xs[2] + id) * xs[3] + ih) * xs[4] + iw];
                        let wv = w[(((ci * ws[1] + co) * ws[2] + kd) * ws[3] + kh) * ws[4] + kw];
                        want[(((n * os[1] + co) * os[2] + od as usize) * os[3] + oh as usize) * os[4] + ow as usize] +=
                            f64::from(xv) * f64::from(wv);
                    }
                }
            }
        }
        if bias {
            for (i, v) in want.iter_mut().enumerate() {
                *v += f64::from(b[i / (os[2] * os[3] * os[4]) % os[1]]);
            }
        }
        let mut m = Model::new(13).input(vis("x", F32, &to_i(&xs))).init(t_f32("w", &to_i(&ws), &w));
        let mut ins = vec!["x", "w"];
        if bias {
            m = m.init(t_f32("b", &[ws[1] as i64], &b));
            ins.push("b");
        }
        let attrs = vec![
            a_ints("strides", &to_i(&s)),
            a_ints("pads", &to_i(&[p[0], p[1], p[2], p[0], p[1], p[2]])),
            a_ints("output_padding", &to_i(&op)),
            a_ints("dilations", &to_i(&dl)),
        ];
        let m = m.node(node("ConvTranspose", &ins, &["y"], attrs)).output("y");
        let g = import_ok(&m);
        let got = run(&g, &[("x", kiln_ir::Tensor::f32(xs.to_vec(), x.clone()))]).remove(0);
        assert_eq!(got.shape(), &os[..]);
        let Data::F32(got) = got.data() else { panic!("f32") };
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((f64::from(*a) - b).abs() <= 1e-4 * (1.0 + b.abs()), "{xs:?} {ws:?}: element {i}: {a} vs {b}");
        }
    }
}

/// A 3-D convolution (a sum of 2-D convolutions over its depth taps) against the direct
/// 7-deep loop of the definition, here in the test: strides, pads, dilation, groups, bias.
#[test]
fn conv_3d_matches_the_direct_sum() {
    #[allow(clippy::too_many_arguments)]
    fn direct(
        x: &[f32],
        xs: [usize; 5],
        w: &[f32],
        ws: [usize; 5],
        b: &[f32],
        s: [usize; 3],
        p: [usize; 3],
        dl: [usize; 3],
        g: usize,
    ) -> (Vec<f32>, [usize; 5]) {
        let o = |a: usize| (xs[2 + a] + 2 * p[a] - (dl[a] * (ws[2 + a] - 1) + 1)) / s[a] + 1;
        let os = [xs[0], ws[0], o(0), o(1), o(2)];
        let (cig, cog) = (ws[1], ws[0] / g);
        let mut y = vec![0f32; os.iter().product()];
        let mut at = 0;
        for n in 0..os[0] {
            for co in 0..os[1] {
                for od in 0..os[2] {
                    for oh in 0..os[3] {
                        for ow in 0..os[4] {
                            let mut acc = b.get(co).copied().unwrap_or(0.0) as f64;
                            for ci in 0..cig {
                                let c = (co / cog) * cig + ci;
                                for kd in 0..ws[2] {
                                    for kh in 0..ws[3] {
                                        for kw in 0..ws[4] {
                                            let id = (od * s[0] + kd * dl[0]) as i64 - p[0] as i64;
                                            let ih = (oh * s[1] + kh * dl[1]) as i64 - p[1] as i64;
                                            let iw = (ow * s[2] + kw * dl[2]) as i64 - p[2] as i64;
                                            if id < 0 || ih < 0 || iw < 0 {
                                                continue;
                                            }
                                            let (id, ih, iw) = (id as usize, ih as usize, iw as usize);
                                            if id >= xs[2] || ih >= xs[3] || iw >= xs[4] {
                                                continue;
                                            }
                                            let xv = x[(((n * xs[1] + c) * xs[2] + id) * xs[3] + ih) * xs[4] + iw];
                                            let wv = w[(((co * cig + ci) * ws[2] + kd) * ws[3] + kh) * ws[4] + kw];
                                            acc += f64::from(xv) * f64::from(wv);
                                        }
                                    }
                                }
                            }
                            y[at] = acc as f32;
                            at += 1;
                        }
                    }
                }
            }
        }
        (y, os)
    }
    let vals = |n: usize, seed: u32| -> Vec<f32> {
        (0..n).map(|i| ((i as u32 * 7919 + seed) % 23) as f32 / 11.0 - 1.0).collect()
    };
    for (xs, ws, s, p, dl, g, bias) in [
        ([1, 2, 5, 6, 7], [3, 2, 3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], 1, true),
        ([2, 4, 6, 5, 5], [4, 2, 2, 3, 1], [2, 1, 2], [0, 1, 0], [1, 1, 1], 2, false),
        ([1, 3, 7, 4, 4], [2, 3, 3, 2, 2], [2, 1, 1], [2, 0, 1], [2, 1, 1], 1, true),
        // Deep enough that the stride-1 depth taps share one 2-D convolution (its output
        // channels the taps'): batch 1 (placed as images) and 2, depth dilation.
        ([1, 2, 10, 4, 5], [3, 2, 3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], 1, true),
        ([2, 3, 12, 3, 4], [4, 3, 3, 2, 3], [1, 2, 1], [1, 0, 1], [1, 1, 1], 1, false),
        ([1, 2, 24, 3, 3], [2, 2, 3, 1, 2], [1, 1, 1], [2, 0, 1], [2, 1, 1], 1, true),
    ] {
        let (x, w, b) = (vals(xs.iter().product(), 3), vals(ws.iter().product(), 5), vals(ws[0], 7));
        let to_i = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
        let mut m = Model::new(13).input(vis("x", F32, &to_i(&xs))).init(t_f32("w", &to_i(&ws), &w));
        let mut ins = vec!["x", "w"];
        if bias {
            m = m.init(t_f32("b", &[ws[0] as i64], &b));
            ins.push("b");
        }
        let attrs = vec![
            a_ints("strides", &to_i(&s)),
            a_ints("pads", &to_i(&[p[0], p[1], p[2], p[0], p[1], p[2]])),
            a_ints("dilations", &to_i(&dl)),
            a_int("group", g as i64),
        ];
        let m = m.node(node("Conv", &ins, &["y"], attrs)).output("y");
        let g_ = import_ok(&m);
        let got = run(&g_, &[("x", kiln_ir::Tensor::f32(xs.to_vec(), x.clone()))]).remove(0);
        let (want, os) = direct(&x, xs, &w, ws, if bias { &b } else { &[] }, s, p, dl, g);
        assert_eq!(got.shape(), &os[..]);
        let Data::F32(got) = got.data() else { panic!("f32") };
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{xs:?} {ws:?}: element {i}: {a} vs {b}");
        }
    }
}

#[test]
fn pools() {
    let pool = |op: &str, attrs| unary_model(12, &[1, 3, 7, 7], node(op, &["x"], &["y"], attrs));
    let op = only_op(&pool(
        "MaxPool",
        vec![a_ints("kernel_shape", &[3, 3]), a_ints("strides", &[2, 2]), a_int("ceil_mode", 1)],
    ));
    let window = Window { kernel: [3, 3], strides: [2, 2], pads: [0; 4], dilations: [1, 1] };
    assert_eq!(op, Op::MaxPool { window: window.clone(), ceil_mode: true });
    let op = only_op(&pool(
        "AveragePool",
        vec![
            a_ints("kernel_shape", &[3, 3]),
            a_ints("strides", &[2, 2]),
            a_ints("pads", &[1, 1, 1, 1]),
            a_int("count_include_pad", 1),
        ],
    ));
    let w2 = Window { pads: [1; 4], ..window };
    assert_eq!(op, Op::AveragePool { window: w2, ceil_mode: false, count_include_pad: true });
    assert_eq!(
        only_op(&pool("GlobalAveragePool", vec![])),
        Op::Reduce { op: ReduceOp::Mean, axes: vec![2, 3], keepdims: true }
    );
    assert_eq!(
        only_op(&pool("GlobalMaxPool", vec![])),
        Op::Reduce { op: ReduceOp::Max, axes: vec![2, 3], keepdims: true }
    );
    // MaxPool's Indices output: a second op over the same input (2-D windows only).
    let attrs = vec![a_ints("kernel_shape", &[2, 2]), a_int("storage_order", 1)];
    let m = unary_model(12, &[1, 3, 7, 7], node("MaxPool", &["x"], &["y", "idx"], attrs));
    let g = import_ok(&m);
    let names: Vec<&str> = ops(&g).iter().map(|o| o.name()).collect();
    assert_eq!(names, ["max_pool", "max_pool_indices"]);
    assert!(matches!(ops(&g)[1], Op::MaxPoolIndices { column_major: true, .. }));
    let m = unary_model(
        12,
        &[1, 3, 4, 4, 4],
        node("MaxPool", &["x"], &["y", "idx"], vec![a_ints("kernel_shape", &[2, 2, 2])]),
    );
    let e = m.import().unwrap_err().to_string();
    assert!(e.contains("MaxPool") && e.contains("Indices"), "{e}");
}

fn slice_model(opset: i64, starts: &[i64], ends: &[i64], axes: Option<&[i64]>, steps: Option<&[i64]>) -> Model {
    let mut m = Model::new(opset).input(vis("x", F32, &[5, 4])).output("y");
    if opset < 10 {
        let mut attrs = vec![a_ints("starts", starts), a_ints("ends", ends)];
        attrs.extend(axes.map(|a| a_ints("axes", a)));
        m = m.node(node("Slice", &["x"], &["y"], attrs));
    } else {
        m = m.init(t_i64("st", &[starts.len() as i64], starts)).init(t_i64("en", &[ends.len() as i64], ends));
        let mut ins = vec!["x", "st", "en"];
        if let Some(a) = axes {
            m = m.init(t_i64("ax", &[a.len() as i64], a));
            ins.push("ax");
        } else if steps.is_some() {
            ins.push("");
        }
        if let Some(s) = steps {
            m = m.init(t_i64("sp", &[s.len() as i64], s));
            ins.push("sp");
        }
        m = m.node(node("Slice", &ins, &["y"], vec![]));
    }
    m
}

#[test]
fn slice_with_negative_steps() {
    // x[::-2] along axis 0, and x[:, -1:0:-1].
    let m = slice_model(13, &[-1, -1], &[i64::MIN, 0], Some(&[0, -1]), Some(&[-2, -1]));
    assert_eq!(only_op(&m), Op::Slice { starts: vec![4, 3], steps: vec![-2, -1], out_shape: vec![3, 3] });
    // INT_MAX ends and clamped starts, axes omitted.
    let m = slice_model(13, &[1, -100], &[i64::MAX, 2], None, None);
    assert_eq!(only_op(&m), Op::Slice { starts: vec![1, 0], steps: vec![1, 1], out_shape: vec![4, 2] });
    // Slice-1: attributes.
    let m = slice_model(9, &[2], &[-1], Some(&[1]), None);
    assert_eq!(only_op(&m), Op::Slice { starts: vec![0, 2], steps: vec![1, 1], out_shape: vec![5, 1] });
    // An empty slice.
    let m = slice_model(13, &[3], &[1], Some(&[0]), None);
    assert_eq!(only_op(&m), Op::Slice { starts: vec![0, 0], steps: vec![1, 1], out_shape: vec![0, 4] });
}

#[test]
fn split_becomes_slices() {
    let slices = |m: &Model| -> Vec<(Vec<i64>, Vec<usize>)> {
        let g = import_ok(m);
        ops(&g)
            .into_iter()
            .map(|op| match op {
                Op::Slice { starts, out_shape, .. } => (starts.clone(), out_shape.clone()),
                other => panic!("not a slice: {other:?}"),
            })
            .collect()
    };
    // Opset 13: split input.
    let m = Model::new(13)
        .input(vis("x", F32, &[6, 4]))
        .init(t_i64("sp", &[2], &[2, 4]))
        .node(node("Split", &["x", "sp"], &["a", "b"], vec![]))
        .output("a")
        .output("b");
    assert_eq!(slices(&m), vec![(vec![0, 0], vec![2, 4]), (vec![2, 0], vec![4, 4])]);
    let g = import_ok(&m);
    assert_eq!(g.value(g.outputs[1]).name, "b");
    // Opset 11: split attribute, negative axis.
    let m = Model::new(11)
        .input(vis("x", F32, &[6, 4]))
        .node(node("Split", &["x"], &["a", "b"], vec![a_int("axis", -1), a_ints("split", &[1, 3])]))
        .output("a")
        .output("b");
    assert_eq!(slices(&m), vec![(vec![0, 0], vec![6, 1]), (vec![0, 1], vec![6, 3])]);
    // No split: equal parts.
    let m = Model::new(11)
        .input(vis("x", F32, &[6, 4]))
        .node(node("Split", &["x"], &["a", "b", "c"], vec![]))
        .output("a")
        .output("b")
        .output("c");
    assert_eq!(slices(&m).len(), 3);
    // Opset 18: num_outputs with a smaller last chunk.
    let m = Model::new(18)
        .input(vis("x", F32, &[7]))
        .node(node("Split", &["x"], &["a", "b", "c"], vec![a_int("num_outputs", 3)]))
        .output("a")
        .output("b")
        .output("c");
    assert_eq!(slices(&m), vec![(vec![0], vec![3]), (vec![3], vec![3]), (vec![6], vec![1])]);
}

#[test]
fn softmax_before_opset_13_is_coerced_to_2d() {
    let m = unary_model(11, &[2, 3, 4], node("Softmax", &["x"], &["y"], vec![]));
    let g = import_ok(&m);
    assert_eq!(
        ops(&g),
        vec![&Op::Reshape { shape: vec![2, 12] }, &Op::Softmax { axis: 1 }, &Op::Reshape { shape: vec![2, 3, 4] }]
    );
    assert_eq!(g.value(g.outputs[0]).name, "y");
    // Last axis: no coercion needed.
    let m = unary_model(11, &[2, 3, 4], node("LogSoftmax", &["x"], &["y"], vec![a_int("axis", -1)]));
    assert_eq!(only_op(&m), Op::LogSoftmax { axis: 2 });
    // Opset 13: plain, default axis -1.
    let m = unary_model(13, &[2, 3, 4], node("Softmax", &["x"], &["y"], vec![]));
    assert_eq!(only_op(&m), Op::Softmax { axis: 2 });
    let m = unary_model(13, &[2, 3, 4], node("Softmax", &["x"], &["y"], vec![a_int("axis", 1)]));
    assert_eq!(only_op(&m), Op::Softmax { axis: 1 });
}

#[test]
fn reshape_forms() {
    // Reshape-5+ needs its shape input (Reshape-1's attribute form is for opsets 1..=4).
    let m = unary_model(7, &[2, 3, 4], node("Reshape", &["x"], &["y"], vec![a_ints("shape", &[24])]));
    assert!(m.import().unwrap_err().to_string().contains("shape"));
    let m = Model { opset: 4, ..m };
    assert_eq!(only_op(&m), Op::Reshape { shape: vec![24] });
    // Reshape-5+: 0 copies, -1 infers.
    let m = Model::new(13)
        .input(vis("x", F32, &[2, 3, 4]))
        .init(t_i64("s", &[2], &[0, -1]))
        .node(node("Reshape", &["x", "s"], &["y"], vec![]))
        .output("y");
    assert_eq!(only_op(&m), Op::Reshape { shape: vec![2, 12] });
    // Flatten, Squeeze and Unsqueeze in both forms.
    let m = unary_model(13, &[2, 3, 4], node("Flatten", &["x"], &["y"], vec![a_int("axis", -1)]));
    assert_eq!(only_op(&m), Op::Reshape { shape: vec![6, 4] });
    let m = unary_model(11, &[1, 3, 1], node("Squeeze", &["x"], &["y"], vec![a_ints("axes", &[-1])]));
    assert_eq!(only_op(&m), Op::Reshape { shape: vec![1, 3] });
    let m = unary_model(13, &[1, 3, 1], node("Squeeze", &["x"], &["y"], vec![]));
    assert_eq!(only_op(&m), Op::Reshape { shape: vec![3] });
    let m = unary_model(11, &[3], node("Unsqueeze", &["x"], &["y"], vec![a_ints("axes", &[0, -1])]));
    assert_eq!(only_op(&m), Op::Reshape { shape: vec![1, 3, 1] });
    let m = Model::new(13)
        .input(vis("x", F32, &[3]))
        .init(t_i64("ax", &[1], &[1]))
        .node(node("Unsqueeze", &["x", "ax"], &["y"], vec![]))
        .output("y");
    assert_eq!(only_op(&m), Op::Reshape { shape: vec![3, 1] });
    let m = unary_model(11, &[1, 3], node("Squeeze", &["x"], &["y"], vec![a_ints("axes", &[1])]));
    assert!(m.import().unwrap_err().to_string().contains("not 1"));
}

#[test]
fn batch_norm_versions() {
    let bn = |opset: i64, attrs| {
        let mut m = Model::new(opset).input(vis("x", F32, &[1, 2, 3, 3]));
        for n in ["s", "b", "m", "v"] {
            m = m.init(t_f32(n, &[2], &[1.0, 2.0]));
        }
        m.node(node("BatchNormalization", &["x", "s", "b", "m", "v"], &["y"], attrs)).output("y")
    };
    assert_eq!(only_op(&bn(7, vec![a_int("spatial", 1), a_float("epsilon", 1e-3)])), Op::BatchNorm { epsilon: 1e-3 });
    assert_eq!(only_op(&bn(9, vec![a_float("momentum", 0.9)])), Op::BatchNorm { epsilon: 1e-5 });
    assert!(bn(7, vec![a_int("spatial", 0)]).import().unwrap_err().to_string().contains("spatial=0"));
    // Training mode normalizes with the batch's statistics.
    let g = import_ok(&bn(15, vec![a_int("training_mode", 1)]));
    let names: Vec<&str> = ops(&g).iter().map(|o| o.name()).collect();
    assert_eq!(names, ["reduce_mean", "reshape", "sub", "mul", "reduce_mean", "batch_norm"]);
}

#[test]
fn clip_forms() {
    let m = unary_model(7, &[4], node("Clip", &["x"], &["y"], vec![a_float("min", -1.0), a_float("max", 6.0)]));
    assert_eq!(only_op(&m), Op::Unary(UnaryOp::Clip { lo: -1.0, hi: 6.0 }));
    let m = Model::new(13)
        .input(vis("x", F32, &[4]))
        .init(t_f32("hi", &[], &[6.0]))
        .node(node("Clip", &["x", "", "hi"], &["y"], vec![]))
        .output("y");
    assert_eq!(only_op(&m), Op::Unary(UnaryOp::Clip { lo: f64::NEG_INFINITY, hi: 6.0 }));
}

#[test]
fn reduce_axes_forms() {
    let red = |op: &str, opset: i64, attrs, axes: Option<&[i64]>| {
        let mut m = Model::new(opset).input(vis("x", F32, &[2, 3, 4])).output("y");
        let mut ins = vec!["x"];
        if let Some(a) = axes {
            m = m.init(t_i64("ax", &[a.len() as i64], a));
            ins.push("ax");
        }
        m.node(node(op, &ins, &["y"], attrs))
    };
    assert_eq!(
        only_op(&red("ReduceMean", 13, vec![a_ints("axes", &[-1, 0])], None)),
        Op::Reduce { op: ReduceOp::Mean, axes: vec![0, 2], keepdims: true }
    );
    assert_eq!(
        only_op(&red("ReduceMean", 18, vec![a_int("keepdims", 0)], Some(&[1]))),
        Op::Reduce { op: ReduceOp::Mean, axes: vec![1], keepdims: false }
    );
    assert_eq!(
        only_op(&red("ReduceSum", 13, vec![], Some(&[-2]))),
        Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdims: true }
    );
    // No axes: all of them; noop_with_empty_axes: none.
    assert_eq!(
        only_op(&red("ReduceMax", 18, vec![], None)),
        Op::Reduce { op: ReduceOp::Max, axes: vec![0, 1, 2], keepdims: true }
    );
    let g = import_ok(&red("ReduceSum", 13, vec![a_int("noop_with_empty_axes", 1)], None));
    assert_eq!(ops(&g), vec![&Op::Identity]); // only the named copy of the output
                                              // Composites.
    let g = import_ok(&red("ReduceL2", 18, vec![], Some(&[2])));
    assert_eq!(
        ops(&g),
        vec![
            &Op::Binary(BinaryOp::Mul),
            &Op::Reduce { op: ReduceOp::Sum, axes: vec![2], keepdims: true },
            &Op::Unary(UnaryOp::Sqrt)
        ]
    );
    let g = import_ok(&red("ReduceLogSumExp", 13, vec![a_ints("axes", &[1]), a_int("keepdims", 0)], None));
    assert_eq!(g.ty(g.outputs[0]).shape, vec![2, 4]);
}

#[test]
fn variadic_and_binary_ops() {
    let m = Model::new(13)
        .input(vis("a", F32, &[2, 3]))
        .input(vis("b", F32, &[3]))
        .input(vis("c", F32, &[1, 3]))
        .node(node("Sum", &["a", "b", "c"], &["s"], vec![]))
        .node(node("Mean", &["a", "b"], &["m"], vec![]))
        .node(node("Max", &["s", "m"], &["y"], vec![]))
        .output("y");
    let g = import_ok(&m);
    assert_eq!(
        ops(&g),
        vec![
            &Op::Binary(BinaryOp::Add),
            &Op::Binary(BinaryOp::Add),
            &Op::Binary(BinaryOp::Add),
            &Op::Binary(BinaryOp::Div),
            &Op::Binary(BinaryOp::Max)
        ]
    );
    assert_eq!(g.ty(g.outputs[0]).shape, vec![2, 3]);
    // Pow with an integer exponent casts it.
    let m = Model::new(15)
        .input(vis("x", F32, &[3]))
        .input(vis("e", I64, &[3]))
        .node(node("Pow", &["x", "e"], &["y"], vec![]))
        .output("y");
    let g = import_ok(&m);
    assert_eq!(ops(&g), vec![&Op::cast(DType::F32), &Op::Binary(BinaryOp::Pow)]);
}

#[test]
fn gemm_and_friends() {
    let m = Model::new(11)
        .input(vis("a", F32, &[4, 3]))
        .init(t_f32("b", &[5, 3], &[0.5; 15]))
        .init(t_f32("c", &[5], &[1.0; 5]))
        .node(node("Gemm", &["a", "b", "c"], &["y"], vec![a_int("transB", 1), a_float("alpha", 2.0)]))
        .output("y");
    assert_eq!(only_op(&m), Op::Gemm { alpha: 2.0, beta: 1.0, trans_a: false, trans_b: true });
    let m = unary_model(13, &[2, 3, 4], node("Transpose", &["x"], &["y"], vec![]));
    assert_eq!(only_op(&m), Op::Transpose { perm: vec![2, 1, 0] });
    let m = Model::new(13)
        .input(vis("x", F32, &[2, 3]))
        .input(vis("z", F32, &[2, 1]))
        .node(node("Concat", &["x", "z"], &["y"], vec![a_int("axis", -1)]))
        .output("y");
    assert_eq!(only_op(&m), Op::Concat { axis: 1 });
    let m = Model::new(13)
        .input(vis("x", F32, &[2, 3]))
        .init(t_i64("i", &[2], &[0, -1]))
        .node(node("Gather", &["x", "i"], &["y"], vec![a_int("axis", -1)]))
        .output("y");
    assert_eq!(only_op(&m), Op::Gather { axis: 1 });
    let m = Model::new(13)
        .input(vis("x", F32, &[3, 1]))
        .init(t_i64("s", &[3], &[2, 1, 4]))
        .node(node("Expand", &["x", "s"], &["y"], vec![]))
        .output("y");
    assert_eq!(only_op(&m), Op::Expand { shape: vec![2, 1, 4] });
    let g = import_ok(&m);
    assert_eq!(g.ty(g.outputs[0]).shape, vec![2, 3, 4]);
    let m = unary_model(13, &[3], node("Cast", &["x"], &["y"], vec![a_int("to", DataType::Int32 as i64)]));
    assert_eq!(only_op(&m), Op::cast(DType::I32));
    let m = unary_model(13, &[3], node("Cast", &["x"], &["y"], vec![a_int("to", DataType::Double as i64)]));
    assert_eq!(only_op(&m), Op::cast(DType::F64));
    let m = unary_model(13, &[3], node("Cast", &["x"], &["y"], vec![a_int("to", DataType::Float8e5m2 as i64)]));
    assert_eq!(only_op(&m), Op::cast(DType::F8E5M2));
    let attrs = vec![a_int("to", DataType::Float8e5m2 as i64), a_int("saturate", 0)];
    let m = unary_model(19, &[3], node("Cast", &["x"], &["y"], attrs));
    assert_eq!(only_op(&m), Op::Cast { to: DType::F8E5M2, saturate: false, round: E8M0Round::Up });
    let attrs = vec![a_int("to", DataType::Float8e8m0 as i64), a_str("round_mode", "nearest")];
    let m = unary_model(24, &[3], node("Cast", &["x"], &["y"], attrs));
    assert_eq!(only_op(&m), Op::Cast { to: DType::F8E8M0, saturate: true, round: E8M0Round::Nearest });
    // `saturate` only matters for float8 targets.
    let m = unary_model(19, &[3], node("Cast", &["x"], &["y"], vec![a_int("to", 22), a_int("saturate", 0)]));
    assert_eq!(only_op(&m), Op::cast(DType::I4));
    let m = unary_model(13, &[3], node("Cast", &["x"], &["y"], vec![a_int("to", DataType::Float6e2m3 as i64)]));
    let e = m.import().unwrap_err().to_string();
    assert!(e.contains("Cast (domain ai.onnx, opset 13)") && e.contains("FLOAT6E2M3"), "{e}");
}

#[test]
fn dropout_is_identity_with_constant_mask() {
    let m = Model::new(13)
        .input(vis("x", F32, &[2, 2]))
        .node(node("Dropout", &["x"], &["d", "mask"], vec![]))
        .node(node("Relu", &["d"], &["y"], vec![]))
        .output("y")
        .output("mask");
    let g = import_ok(&m);
    assert_eq!(ops(&g), vec![&Op::Unary(UnaryOp::Relu)]);
    assert_eq!(nodes(&g)[0].inputs, g.inputs);
    assert_eq!(g.const_of(g.outputs[1]).unwrap().data(), Data::Bool(vec![true; 4]));
    // Opset 7: ratio attribute.
    let m = unary_model(7, &[2], node("Dropout", &["x"], &["y"], vec![a_float("ratio", 0.3)]));
    let g = import_ok(&m);
    // The graph output is a named copy of the input.
    assert_eq!(ops(&g), vec![&Op::Identity]);
    assert_eq!(g.value(g.outputs[0]).name, "y");
}

#[test]
fn constants_in_all_forms() {
    let m = Model::new(13)
        .node(node("Constant", &[], &["a"], vec![a_tensor("value", t_f32("", &[2], &[1.0, 2.0]))]))
        .node(node("Constant", &[], &["b"], vec![a_float("value_float", 3.0)]))
        .node(node("Constant", &[], &["c"], vec![a_ints("value_ints", &[4, 5])]))
        .node(node("Constant", &[], &["d"], vec![a_int("value_int", 6)]))
        .node(node("Add", &["a", "b"], &["y"], vec![]))
        .output("y")
        .output("c")
        .output("d");
    let g = import_ok(&m);
    let c = |i: usize| g.const_of(g.outputs[i]).cloned();
    assert_eq!(c(1).unwrap().data(), Data::I64(vec![4, 5]));
    assert_eq!(c(2).unwrap().shape(), &[] as &[usize]);
    // a + b folds where the reference evaluator can run it.
    if let Some(y) = c(0) {
        assert_eq!(y.data(), Data::F32(vec![4.0, 5.0]));
    } else {
        assert_eq!(ops(&g), vec![&Op::Binary(BinaryOp::Add)]);
    }
}

#[test]
fn one_d_windows_are_lifted_to_2d() {
    let m = Model::new(11)
        .input(vis("x", F32, &[1, 2, 9]))
        .init(t_f32("w", &[3, 2, 3], &[0.1; 18]))
        .node(node("Conv", &["x", "w"], &["c"], vec![a_ints("pads", &[1, 1]), a_ints("strides", &[2])]))
        .node(node("MaxPool", &["c"], &["y"], vec![a_ints("kernel_shape", &[2]), a_str("auto_pad", "SAME_UPPER")]))
        .output("y");
    let g = import_ok(&m);
    let ops = ops(&g);
    // x lifted; the constant weights fold to a lifted constant.
    assert_eq!(ops[0], &Op::Reshape { shape: vec![1, 2, 1, 9] });
    let window = Window { kernel: [1, 3], strides: [1, 2], pads: [0, 1, 0, 1], dilations: [1, 1] };
    assert_eq!(ops[1], &Op::Conv { window, group: 1 });
    assert_eq!(ops[2], &Op::Reshape { shape: vec![1, 3, 5] });
    assert!(matches!(ops[4], Op::MaxPool { window, .. } if window.kernel == [1, 2] && window.pads == [0, 0, 0, 1]));
    assert_eq!(g.ty(g.outputs[0]).shape, vec![1, 3, 5]);
}

#[test]
fn legacy_opsets() {
    // Opset 6: Add with broadcast=1 along axis 1 (B gets trailing unit dims).
    let m = Model::new(6)
        .input(vis("x", F32, &[2, 3, 4]))
        .init(t_f32("b", &[3], &[1.0, 2.0, 3.0]))
        .node(node("Add", &["x", "b"], &["y"], vec![a_int("broadcast", 1), a_int("axis", 1)]))
        .output("y");
    let g = import_ok(&m);
    assert_eq!(ops(&g), vec![&Op::Binary(BinaryOp::Add)]);
    assert_eq!(g.ty(nodes(&g)[0].inputs[1]).shape, vec![3, 1]);
    // Cast-1: the type by name. Concat-1: default axis 1.
    let m = Model::new(1)
        .input(vis("x", F32, &[2, 3]))
        .node(node("Cast", &["x"], &["c"], vec![a_str("to", "INT32")]))
        .node(node("Concat", &["c", "c"], &["y"], vec![]))
        .output("y");
    let g = import_ok(&m);
    assert_eq!(ops(&g), vec![&Op::cast(DType::I32), &Op::Concat { axis: 1 }]);
    // Reshape-1: the shape attribute.
    let m = unary_model(4, &[2, 3], node("Reshape", &["x"], &["y"], vec![a_ints("shape", &[3, -1])]));
    assert_eq!(only_op(&m), Op::Reshape { shape: vec![3, 2] });
    // Softmax-1 coerces like Softmax-11.
    let m = unary_model(1, &[2, 3, 4], node("Softmax", &["x"], &["y"], vec![]));
    assert_eq!(ops(&import_ok(&m)).len(), 3);
}

#[test]
fn clip_with_runtime_bounds_becomes_max_min() {
    let m = Model::new(13)
        .input(vis("x", F32, &[4]))
        .input(vis("lo", F32, &[]))
        .node(node("Clip", &["x", "lo"], &["y"], vec![]))
        .output("y");
    assert_eq!(only_op(&m), Op::Binary(BinaryOp::Max));
}

#[test]
fn cast_like_and_range() {
    let m = Model::new(15)
        .input(vis("x", F32, &[3]))
        .input(vis("t", I64, &[1]))
        .node(node("CastLike", &["x", "t"], &["y"], vec![]))
        .output("y");
    assert_eq!(only_op(&m), Op::cast(DType::I64));
    let m = Model::new(11)
        .init(t_i64("s", &[], &[10]))
        .init(t_i64("l", &[], &[1]))
        .init(t_i64("d", &[], &[-3]))
        .node(node("Range", &["s", "l", "d"], &["y"], vec![]))
        .output("y");
    let g = import_ok(&m);
    assert_eq!(g.const_of(g.outputs[0]).unwrap().data(), Data::I64(vec![10, 7, 4]));
    let m = Model::new(11)
        .init(t_f32("s", &[], &[0.0]))
        .init(t_f32("l", &[], &[1.0]))
        .init(t_f32("d", &[], &[0.25]))
        .node(node("Range", &["s", "l", "d"], &["y"], vec![]))
        .output("y");
    let g = import_ok(&m);
    assert_eq!(g.const_of(g.outputs[0]).unwrap().data(), Data::F32(vec![0.0, 0.25, 0.5, 0.75]));
}

#[test]
fn top_k_is_indices_then_gather_elements() {
    let m = Model::new(11)
        .input(vis("x", F32, &[2, 5]))
        .init(t_i64("k", &[1], &[3]))
        .node(node("TopK", &["x", "k"], &["values", "indices"], vec![a_int("largest", 0)]))
        .output("values")
        .output("indices");
    let g = import_ok(&m);
    assert_eq!(ops(&g), vec![&Op::TopKIndices { axis: 1, k: 3, largest: false }, &Op::GatherElements { axis: 1 }]);
    assert_eq!(g.ty(g.outputs[0]).shape, vec![2, 3]);
    assert_eq!(g.ty(g.outputs[1]).dtype, DType::I64);
}
