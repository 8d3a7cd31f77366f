//! Sequences and optionals: compile-time lists of values and compile-time presence in the
//! importer, flattened to `<name>[i]` tensors at the graph boundary. Small hand-built models
//! evaluated with the HIR reference evaluator against hand-derived values.

mod common;

use common::*;
use kiln_ir::{Data, Graph, Tensor, TensorType, ValueId};
use kiln_onnx::proto::attribute_proto::AttributeType;
use kiln_onnx::proto::tensor_proto::DataType;
use kiln_onnx::proto::type_proto::{self, Value as TypeValue};
use kiln_onnx::proto::{AttributeProto, GraphProto, TypeProto, ValueInfoProto};
use kiln_onnx::{ImportError, ImportOptions, OnnxValue, ValueSpec};

const BOOL: DataType = DataType::Bool;

fn tensor_type(dtype: DataType) -> TypeProto {
    TypeProto {
        denotation: None,
        value: Some(TypeValue::TensorType(type_proto::Tensor { elem_type: Some(dtype as i32), shape: None })),
    }
}

fn seq_type(dtype: DataType) -> TypeProto {
    TypeProto {
        denotation: None,
        value: Some(TypeValue::SequenceType(Box::new(type_proto::Sequence {
            elem_type: Some(Box::new(tensor_type(dtype))),
        }))),
    }
}

fn seq_vi(name: &str, dtype: DataType) -> ValueInfoProto {
    ValueInfoProto { name: Some(name.into()), r#type: Some(seq_type(dtype)), ..Default::default() }
}

fn opt_vi(name: &str, inner: TypeProto) -> ValueInfoProto {
    let t = TypeProto {
        denotation: None,
        value: Some(TypeValue::OptionalType(Box::new(type_proto::Optional { elem_type: Some(Box::new(inner)) }))),
    };
    ValueInfoProto { name: Some(name.into()), r#type: Some(t), ..Default::default() }
}

fn a_graph(name: &str, g: GraphProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Graph as i32),
        g: Some(g),
        ..Default::default()
    }
}

fn f32_seq(shapes: &[&[usize]]) -> ValueSpec {
    ValueSpec::Sequence(shapes.iter().map(|s| TensorType::new(kiln_ir::DType::F32, s.to_vec())).collect())
}

fn opts(specs: &[(&str, ValueSpec)]) -> ImportOptions {
    let mut o = ImportOptions::default();
    for (n, s) in specs {
        o.value_inputs.insert(n.to_string(), s.clone());
    }
    o
}

fn import_with(m: &Model, o: &ImportOptions) -> Graph {
    let g = m.import_with(o).unwrap_or_else(|e| panic!("import failed: {e}"));
    kiln_ir::verify::verify(&g).unwrap_or_else(|e| panic!("verify failed: {e}"));
    g
}

fn f32s(t: &Tensor) -> Vec<f32> {
    match t.data() {
        Data::F32(v) => v,
        other => panic!("expected f32, got {other:?}"),
    }
}

fn names(g: &Graph, vs: &[ValueId]) -> Vec<String> {
    vs.iter().map(|&v| g.value(v).name.clone()).collect()
}

/// SplitToSequence (columns, axis removed) → SequenceErase(0) → SequenceLength, SequenceAt(-1),
/// ConcatFromSequence(new_axis): all positions fold, the sequence never reaches the HIR.
#[test]
fn sequence_ops_on_a_split() {
    let m = Model::new(17)
        .input(vis("x", F32, &[2, 3]))
        .init(t_i64("zero", &[], &[0]))
        .init(t_i64("last", &[], &[-1]))
        .node(node("SplitToSequence", &["x"], &["cols"], vec![a_int("axis", 1), a_int("keepdims", 0)]))
        .node(node("SequenceErase", &["cols", "zero"], &["rest"], vec![]))
        .node(node("SequenceLength", &["rest"], &["len"], vec![]))
        .node(node("SequenceAt", &["rest", "last"], &["at"], vec![]))
        .node(node("ConcatFromSequence", &["rest"], &["stacked"], vec![a_int("axis", 0), a_int("new_axis", 1)]))
        .output("len")
        .output("at")
        .output("stacked");
    let g = import_ok(&m);
    // x = [[0, 1, 2], [3, 4, 5]]: columns [0, 3], [1, 4], [2, 5]; erase the first.
    let y = run(&g, &[("x", Tensor::f32(vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]))]);
    assert_eq!(y[0].to_i64_vec(), vec![2]);
    assert_eq!(y[0].shape(), &[] as &[usize]);
    assert_eq!(y[1].shape(), &[2]);
    assert_eq!(f32s(&y[1]), vec![2.0, 5.0]);
    assert_eq!(y[2].shape(), &[2, 2]);
    assert_eq!(f32s(&y[2]), vec![1.0, 4.0, 2.0, 5.0]);
}

/// A scalar `split` gives chunks of that size, the last one shorter; ConcatFromSequence
/// without a new axis puts them back together.
#[test]
fn split_to_sequence_with_a_scalar_split_round_trips() {
    let m = Model::new(17)
        .input(vis("x", F32, &[5]))
        .init(t_i64("two", &[], &[2]))
        .node(node("SplitToSequence", &["x", "two"], &["parts"], vec![]))
        .node(node("SequenceAt", &["parts", "two"], &["tail"], vec![]))
        .node(node("ConcatFromSequence", &["parts"], &["back"], vec![a_int("axis", 0)]))
        .output("tail")
        .output("back");
    let g = import_ok(&m);
    let y = run(&g, &[("x", Tensor::f32(vec![5], vec![1.0, 2.0, 3.0, 4.0, 5.0]))]);
    assert_eq!(f32s(&y[0]), vec![5.0]);
    assert_eq!(f32s(&y[1]), vec![1.0, 2.0, 3.0, 4.0, 5.0]);
}

/// A sequence input is taken as tensors `s[0]`, `s[1]`; a sequence output is given as
/// `out[0]`, `out[1]`, `out[2]`.
#[test]
fn sequence_input_and_output_are_flattened() {
    let m = Model::new(17)
        .input(seq_vi("s", F32))
        .init(t_f32("nine", &[2], &[9.0, 9.0]))
        .init(t_i64("one", &[], &[1]))
        .node(node("SequenceInsert", &["s", "nine", "one"], &["out"], vec![]))
        .output("out");
    let g = import_with(&m, &opts(&[("s", f32_seq(&[&[2], &[2]]))]));
    assert_eq!(names(&g, &g.inputs), vec!["s[0]", "s[1]"]);
    assert_eq!(names(&g, &g.outputs), vec!["out[0]", "out[1]", "out[2]"]);
    let y = run(&g, &[("s[0]", Tensor::f32(vec![2], vec![1.0, 2.0])), ("s[1]", Tensor::f32(vec![2], vec![3.0, 4.0]))]);
    assert_eq!(f32s(&y[0]), vec![1.0, 2.0]);
    assert_eq!(f32s(&y[1]), vec![9.0, 9.0]);
    assert_eq!(f32s(&y[2]), vec![3.0, 4.0]);
}

#[test]
fn sequence_input_without_a_spec_is_a_clear_error() {
    let m = Model::new(17).input(seq_vi("s", F32)).node(node("Identity", &["s"], &["y"], vec![])).output("y");
    let e = m.import().unwrap_err().to_string();
    assert!(e.contains("input `s` is a sequence") && e.contains("value_inputs"), "{e}");
    let wrong = ValueSpec::Sequence(vec![TensorType::new(kiln_ir::DType::I64, vec![2])]);
    let e = m.import_with(&opts(&[("s", wrong)])).unwrap_err().to_string();
    assert!(e.contains("declared float32") || e.contains("declared f32"), "{e}");
}

/// A position computed at run time cannot pick an element: NeedsConstant names the input.
#[test]
fn runtime_position_needs_a_constant() {
    let m = Model::new(17)
        .input(seq_vi("s", F32))
        .input(vis("p", I64, &[]))
        .node(node("SequenceAt", &["s", "p"], &["y"], vec![]))
        .output("y");
    match m.import_with(&opts(&[("s", f32_seq(&[&[1]]))])) {
        Err(ImportError::NeedsConstant(c)) => assert_eq!(c.graph_inputs, vec!["p".to_string()]),
        other => panic!("expected NeedsConstant, got {other:?}"),
    }
    let m = Model::new(17)
        .input(seq_vi("s", F32))
        .init(t_i64("three", &[], &[3]))
        .node(node("SequenceAt", &["s", "three"], &["y"], vec![]))
        .output("y");
    let e = m.import_with(&opts(&[("s", f32_seq(&[&[1], &[1]]))])).unwrap_err().to_string();
    assert!(e.contains("position 3 is out of range [-2, 1]"), "{e}");
}

/// SequenceMap unrolls its body per element; a tensor input goes to every instance.
#[test]
fn sequence_map_unrolls_per_element() {
    let body = GraphProto {
        name: Some("body".into()),
        node: vec![node("Add", &["a", "b"], &["c"], vec![])],
        input: vec![vis("a", F32, &[2]), vis("b", F32, &[2])],
        output: vec![out("c")],
        ..Default::default()
    };
    let m = Model::new(17)
        .input(seq_vi("s", F32))
        .input(vis("t", F32, &[2]))
        .node(node("SequenceMap", &["s", "t"], &["m"], vec![a_graph("body", body)]))
        .output("m");
    let g = import_with(&m, &opts(&[("s", f32_seq(&[&[2], &[2], &[2]]))]));
    let y = run(
        &g,
        &[
            ("s[0]", Tensor::f32(vec![2], vec![1.0, 2.0])),
            ("s[1]", Tensor::f32(vec![2], vec![3.0, 4.0])),
            ("s[2]", Tensor::f32(vec![2], vec![5.0, 6.0])),
            ("t", Tensor::f32(vec![2], vec![10.0, 20.0])),
        ],
    );
    assert_eq!(names(&g, &g.outputs), vec!["m[0]", "m[1]", "m[2]"]);
    assert_eq!(y.iter().map(f32s).collect::<Vec<_>>(), vec![vec![11.0, 22.0], vec![13.0, 24.0], vec![15.0, 26.0]]);
}

/// A Loop carries a sequence: each iteration appends its iteration number.
#[test]
fn loop_carries_a_sequence() {
    let body = GraphProto {
        name: Some("body".into()),
        node: vec![
            node("Identity", &["c_in"], &["c_out"], vec![]),
            node("SequenceInsert", &["seq_in", "i"], &["seq_out"], vec![]),
        ],
        input: vec![vis("i", I64, &[]), vis("c_in", BOOL, &[]), seq_vi("seq_in", I64)],
        output: vec![out("c_out"), out("seq_out")],
        ..Default::default()
    };
    let m = Model::new(17)
        .init(t_i64("n", &[], &[3]))
        .node(node("SequenceEmpty", &[], &["empty"], vec![a_int("dtype", 7)]))
        .node(node("Loop", &["n", "", "empty"], &["seq"], vec![a_graph("body", body)]))
        .node(node("SequenceLength", &["seq"], &["len"], vec![]))
        .output("seq")
        .output("len");
    let g = import_ok(&m);
    let y = run(&g, &[]);
    let got: Vec<Vec<i64>> = y.iter().map(|t| t.to_i64_vec()).collect();
    assert_eq!(got, vec![vec![0], vec![1], vec![2], vec![3]]);
}

/// Optionals: present or absent at compile time; an absent optional input takes no tensor.
#[test]
fn optionals_are_known_at_compile_time() {
    let m = Model::new(18)
        .input(vis("x", F32, &[1]))
        .input(opt_vi("o", tensor_type(F32)))
        .node(node("Optional", &["x"], &["some"], vec![]))
        .node(node("OptionalHasElement", &["some"], &["has_some"], vec![]))
        .node(node("OptionalHasElement", &["o"], &["has_o"], vec![]))
        .node(node("OptionalHasElement", &[], &["has_nothing"], vec![]))
        .node(node("OptionalGetElement", &["some"], &["got"], vec![]))
        .output("has_some")
        .output("has_o")
        .output("has_nothing")
        .output("got")
        .output("o");
    let g = import_with(&m, &opts(&[("o", ValueSpec::Optional(None))]));
    assert_eq!(names(&g, &g.inputs), vec!["x"]);
    let y = run(&g, &[("x", Tensor::f32(vec![1], vec![7.0]))]);
    assert_eq!(y.len(), 4, "the absent optional output gives no tensor");
    let bools: Vec<i64> = y[..3].iter().map(|t| t.to_i64_vec()[0]).collect();
    assert_eq!(bools, vec![1, 0, 0]);
    assert_eq!(f32s(&y[3]), vec![7.0]);

    // Present: the optional input is the tensor `o`.
    let present = OnnxValue::Optional(Some(Box::new(OnnxValue::Tensor(Tensor::f32(vec![2], vec![1.0, 2.0])))));
    let g = import_with(&m, &opts(&[("o", present.spec())]));
    assert_eq!(names(&g, &g.inputs), vec!["x", "o"]);
    assert_eq!(present.flatten("o").len(), 1);

    // Getting the element of an absent optional is an error, not a panic.
    let m = Model::new(18)
        .input(opt_vi("o", tensor_type(F32)))
        .node(node("OptionalGetElement", &["o"], &["y"], vec![]))
        .output("y");
    let e = m.import_with(&opts(&[("o", ValueSpec::Optional(None))])).unwrap_err().to_string();
    assert!(e.contains("the optional is empty"), "{e}");
}

/// A sequence given to an op that takes tensors is a clear error.
#[test]
fn a_sequence_where_a_tensor_is_expected_is_an_error() {
    let m = Model::new(17).input(seq_vi("s", F32)).node(node("Relu", &["s"], &["y"], vec![])).output("y");
    let e = m.import_with(&opts(&[("s", f32_seq(&[&[1]]))])).unwrap_err().to_string();
    assert!(e.contains("input 0 `s` is a sequence; Relu takes tensors"), "{e}");
}
