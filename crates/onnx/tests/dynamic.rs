//! Ops whose output shape depends on data (Compress, NonZero, Unique, NonMaxSuppression):
//! folded at import from constant inputs, with hand-derived expected values; a run-time
//! data input is a `NeedsConstant` error naming it.

mod common;

use common::*;
use kiln_ir::{Data, Op};
use kiln_onnx::proto::tensor_proto::DataType;

#[test]
fn non_zero_lists_indices_row_major() {
    // [[1, 0], [0, 3], [2, 0]]: non-zeros at (0,0), (1,1), (2,0).
    let out = folded(21, vec![t_f32("x", &[3, 2], &[1., 0., 0., 3., 2., 0.])], node("NonZero", &["x"], &["y"], vec![]));
    assert_eq!(out[0], (vec![2, 3], Data::I64(vec![0, 1, 2, 0, 1, 0])));
}

#[test]
fn unique_sorted_and_in_first_occurrence_order() {
    let x = || t_f32("x", &[6], &[2., 1., 1., 3., 4., 3.]);
    let outs = ["y", "idx", "inv", "cnt"];
    let s = folded(21, vec![x()], node("Unique", &["x"], &outs, vec![]));
    assert_eq!(s[0], (vec![4], Data::F32(vec![1., 2., 3., 4.])));
    assert_eq!(s[1].1, Data::I64(vec![1, 0, 3, 4]));
    assert_eq!(s[2].1, Data::I64(vec![1, 0, 0, 2, 3, 2]));
    assert_eq!(s[3].1, Data::I64(vec![2, 1, 2, 1]));
    let u = folded(21, vec![x()], node("Unique", &["x"], &outs, vec![a_int("sorted", 0)]));
    assert_eq!(u[0], (vec![4], Data::F32(vec![2., 1., 3., 4.])));
    assert_eq!(u[1].1, Data::I64(vec![0, 1, 3, 4]));
    assert_eq!(u[2].1, Data::I64(vec![0, 1, 1, 2, 3, 2]));
    // Unique rows: [[1, 0], [0, 1], [1, 0]] along axis 0 → rows [0, 1] and [1, 0].
    let r = folded(
        21,
        vec![t_f32("x", &[3, 2], &[1., 0., 0., 1., 1., 0.])],
        node("Unique", &["x"], &outs, vec![a_int("axis", 0)]),
    );
    assert_eq!(r[0], (vec![2, 2], Data::F32(vec![0., 1., 1., 0.])));
    assert_eq!(r[3].1, Data::I64(vec![1, 2]));
}

#[test]
fn non_max_suppression_keeps_best_non_overlapping_boxes() {
    // Boxes (y1, x1, y2, x2): 0 and 1 overlap by 0.9 of 1.1 (IoU ≈ 0.82); 2 is apart.
    let inits = || {
        vec![
            t_f32("b", &[1, 3, 4], &[0., 0., 1., 1., 0., 0.1, 1., 1.1, 0., 5., 1., 6.]),
            t_f32("s", &[1, 1, 3], &[0.9, 0.95, 0.3]),
            t_i64("m", &[1], &[3]),
            t_f32("iou", &[1], &[0.5]),
        ]
    };
    let out = folded(21, inits(), node("NonMaxSuppression", &["b", "s", "m", "iou"], &["y"], vec![]));
    // Box 1 (0.95) first, box 0 suppressed by it, box 2 kept.
    assert_eq!(out[0], (vec![2, 3], Data::I64(vec![0, 0, 1, 0, 0, 2])));
    // An IoU threshold above 0.82 keeps both overlapping boxes, best first; the score
    // threshold drops box 2.
    let mut i = inits();
    i[3] = t_f32("iou", &[1], &[0.9]);
    i.push(t_f32("st", &[1], &[0.5]));
    let out = folded(21, i, node("NonMaxSuppression", &["b", "s", "m", "iou", "st"], &["y"], vec![]));
    assert_eq!(out[0], (vec![2, 3], Data::I64(vec![0, 0, 1, 0, 0, 0])));
}

#[test]
fn compress_with_constant_condition_is_a_gather_of_runtime_data() {
    let m = Model::new(21)
        .input(vis("x", DataType::Float, &[3, 2]))
        .init(kiln_onnx_bool("c", &[0, 1, 1]))
        .node(node("Compress", &["x", "c"], &["y"], vec![a_int("axis", 0)]))
        .output("y");
    let g = import_ok(&m);
    assert_eq!(ops(&g), vec![&Op::Gather { axis: 0 }]);
    assert_eq!(g.ty(g.outputs[0]).shape, vec![2, 2]);
}

/// NonZero of data known only at run time: a scan whose output has a run-time shape
/// (`[rank, n]`, at most `[1, 4]` here), its coordinates at the start of its buffer.
#[test]
fn runtime_data_gives_an_output_of_runtime_shape() {
    let m =
        Model::new(21).input(vis("x", DataType::Float, &[4])).node(node("NonZero", &["x"], &["y"], vec![])).output("y");
    let g = import_ok(&m);
    assert!(ops(&g).contains(&&Op::NonZero), "{:?}", ops(&g));
    assert_eq!(g.output_shapes.get(&0).map(|r| r.bounds.clone()), Some(vec![1, 4]));
    let x = kiln_ir::Tensor::f32(vec![4], vec![0.0, 2.0, 0.0, 3.0]);
    let y = run(&g, &[("x", x)]);
    assert_eq!(y[0].to_i64_vec(), vec![1, 3, 0, 0]);
}

/// A bool initializer.
fn kiln_onnx_bool(name: &str, v: &[i32]) -> kiln_onnx::proto::TensorProto {
    let mut t = t_i64(name, &[v.len() as i64], &[]);
    t.data_type = Some(DataType::Bool as i32);
    t.int64_data.clear();
    t.int32_data = v.to_vec();
    t
}
