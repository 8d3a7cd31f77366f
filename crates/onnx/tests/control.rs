//! Control flow (`If`, `Loop`, `Scan`) imported by inlining subgraphs: small hand-built models
//! evaluated with the HIR reference evaluator against hand-derived values.

mod common;

use std::collections::HashSet;

use common::*;
use kiln_ir::{Data, Graph, Op, Tensor};
use kiln_onnx::proto::attribute_proto::AttributeType;
use kiln_onnx::proto::tensor_proto::DataType;
use kiln_onnx::proto::{AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto};
use kiln_onnx::ImportError;

const BOOL: DataType = DataType::Bool;

fn a_graph(name: &str, g: GraphProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Graph as i32),
        g: Some(g),
        ..Default::default()
    }
}

fn graph(
    name: &str,
    inputs: Vec<ValueInfoProto>,
    outputs: &[&str],
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
) -> GraphProto {
    GraphProto {
        name: Some(name.into()),
        node: nodes,
        initializer: inits,
        input: inputs,
        output: outputs.iter().map(|o| out(o)).collect(),
        ..Default::default()
    }
}

fn f32s(t: &Tensor) -> Vec<f32> {
    match t.data() {
        Data::F32(v) => v,
        other => panic!("expected f32, got {other:?}"),
    }
}

fn has_op(g: &Graph, f: impl Fn(&Op) -> bool) -> bool {
    ops(g).into_iter().any(f)
}

/// Nodes of inlined subgraphs have unique names (each instance names its nodes apart). The
/// nodes the control op adds itself (slices, stacking) carry its name, as compositions do.
fn assert_unique_names(g: &Graph, control_node: &str) {
    let mut seen = HashSet::new();
    let scope = format!("{control_node}/");
    for n in nodes(g).into_iter().filter(|n| n.name.starts_with(&scope)) {
        assert!(seen.insert(n.name.clone()), "node name `{}` repeats", n.name);
    }
    let mut seen = HashSet::new();
    for n in nodes(g).into_iter().filter(|n| n.name.starts_with(&scope) && n.name != control_node) {
        for &v in &n.outputs {
            let name = &g.value(v).name;
            assert!(seen.insert(name.clone()), "value name `{name}` repeats");
        }
    }
}

/// `If` on `Shape(x)[0] == 2` (folds once x's shape is pinned): only the then branch is
/// imported. The else branch gives another shape, so a run-time select could not exist.
#[test]
fn if_with_folded_condition_imports_one_branch() {
    let then_b = graph(
        "then",
        vec![],
        &["t_out"],
        vec![node("Add", &["x", "one"], &["t_out"], vec![])],
        vec![t_f32("one", &[], &[1.0])],
    );
    let else_b = graph(
        "else",
        vec![],
        &["e_out"],
        vec![node("Reshape", &["x", "flat"], &["e_out"], vec![])],
        vec![t_i64("flat", &[1], &[6])],
    );
    let m = Model::new(13)
        .input(vis("x", F32, &[2, 3]))
        .init(t_i64("zero", &[], &[0]))
        .init(t_i64("two", &[], &[2]))
        .node(node("Shape", &["x"], &["s"], vec![]))
        .node(node("Gather", &["s", "zero"], &["d0"], vec![]))
        .node(node("Equal", &["d0", "two"], &["c"], vec![]))
        .node(node("If", &["c"], &["y"], vec![a_graph("then_branch", then_b), a_graph("else_branch", else_b)]))
        .output("y");
    let g = import_ok(&m);
    assert!(!has_op(&g, |o| matches!(o, Op::Where | Op::Reshape { .. })), "{:?}", ops(&g));
    assert!(nodes(&g).iter().any(|n| n.name == "y_node/then/t_out_node"), "{:?}", nodes(&g));
    let x = Tensor::f32(vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let y = run(&g, &[("x", x)]);
    assert_eq!(y[0].shape(), &[2, 3]);
    assert_eq!(f32s(&y[0]), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

fn runtime_if(else_out: &str) -> Model {
    // then: x + 10 (a constant of the branch itself); else: x * w (w from the outer scope).
    let then_b = graph(
        "then",
        vec![],
        &["t_out"],
        vec![node("Add", &["x", "ten"], &["t_out"], vec![])],
        vec![t_f32("ten", &[], &[10.0])],
    );
    let else_b = graph(
        "else",
        vec![],
        &[else_out],
        vec![
            node("Mul", &["x", "w"], &["e_out"], vec![]),
            node("ReduceSum", &["e_out"], &["e_sum"], vec![a_int("keepdims", 0)]),
        ],
        vec![],
    );
    Model::new(13)
        .input(vis("cond", BOOL, &[]))
        .input(vis("x", F32, &[3]))
        .init(t_f32("w", &[3], &[2.0, 3.0, 4.0]))
        .node(node("If", &["cond"], &["y"], vec![a_graph("then_branch", then_b), a_graph("else_branch", else_b)]))
        .output("y")
}

/// A condition known only at run time: each branch in a run-time case of its own (guarded
/// nodes), the outputs merged; only the branch taken runs.
#[test]
fn if_with_runtime_condition_runs_the_branch_taken() {
    let g = import_ok(&runtime_if("e_out"));
    assert!(has_op(&g, |o| matches!(o, Op::Merge)), "{:?}", ops(&g));
    assert!(!has_op(&g, |o| matches!(o, Op::Where)), "{:?}", ops(&g));
    let guarded: Vec<i64> = nodes(&g).iter().flat_map(|n| n.guard.iter().map(|c| c.value)).collect();
    assert!(guarded.contains(&0) && guarded.contains(&1), "{guarded:?}");
    let x = Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]);
    let y = run(&g, &[("cond", Tensor::bool(Vec::<usize>::new(), vec![true])), ("x", x.clone())]);
    assert_eq!(f32s(&y[0]), vec![11.0, 12.0, 13.0]);
    let y = run(&g, &[("cond", Tensor::bool(Vec::<usize>::new(), vec![false])), ("x", x)]);
    assert_eq!(f32s(&y[0]), vec![2.0, 6.0, 12.0]);
}

/// Branches of different shapes cannot be selected at run time: an error naming the node.
#[test]
fn if_with_runtime_condition_and_different_shapes_fails() {
    let err = runtime_if("e_sum").import().unwrap_err();
    let ImportError::NeedsConstant(c) = &err else { panic!("unexpected error: {err}") };
    assert_eq!(c.node, "y_node");
    assert_eq!(c.graph_inputs, vec!["cond".to_string()]);
    let msg = err.to_string();
    assert!(msg.contains("different types") && msg.contains("then f32[3]"), "{msg}");
}

/// `Loop` with a constant trip count: the carried value threads through the iterations, the
/// scan output is stacked along axis 0, and an `If` nested in the body folds per iteration.
#[test]
fn loop_unrolls_with_carried_state_and_scan_output() {
    // Body: f = float(i); y_out = y + f * x; scan = y_out * (i == 1 ? -1 : 1).
    let then_b = graph("then", vec![], &["neg"], vec![node("Neg", &["y_out"], &["neg"], vec![])], vec![]);
    let else_b = graph("else", vec![], &["y_out"], vec![], vec![]);
    let body = graph(
        "body",
        vec![vis("i", I64, &[]), vis("c_in", BOOL, &[]), vis("y", F32, &[2])],
        &["c_out", "y_out", "scan"],
        vec![
            node("Identity", &["c_in"], &["c_out"], vec![]),
            node("Cast", &["i"], &["f"], vec![a_int("to", 1)]),
            node("Mul", &["f", "x"], &["fx"], vec![]),
            node("Add", &["y", "fx"], &["y_out"], vec![]),
            node("Equal", &["i", "one"], &["is_one"], vec![]),
            node("If", &["is_one"], &["scan"], vec![a_graph("then_branch", then_b), a_graph("else_branch", else_b)]),
        ],
        vec![t_i64("one", &[], &[1])],
    );
    let m = Model::new(13)
        .input(vis("x", F32, &[2]))
        .init(t_i64("m", &[], &[3]))
        .init(t_f32("y0", &[2], &[1.0, -1.0]))
        .node(node("Loop", &["m", "", "y0"], &["y_fin", "ys"], vec![a_graph("body", body)]))
        .output("y_fin")
        .output("ys");
    let g = import_ok(&m);
    assert_unique_names(&g, "y_fin_node");
    assert!(!has_op(&g, |o| matches!(o, Op::Where)), "{:?}", ops(&g));
    // x = [1, 2]: y after i = 0, 1, 2 is [1, -1], [2, 1], [4, 5].
    let y = run(&g, &[("x", Tensor::f32(vec![2], vec![1.0, 2.0]))]);
    assert_eq!(f32s(&y[0]), vec![4.0, 5.0]);
    assert_eq!(y[1].shape(), &[3, 2]);
    assert_eq!(f32s(&y[1]), vec![1.0, -1.0, -2.0, -1.0, 4.0, 5.0]);
}

/// A loop that stops on its body's condition (no trip count): `i < 2` after each iteration.
#[test]
fn loop_stops_on_folded_body_condition() {
    let body = graph(
        "body",
        vec![vis("i", I64, &[]), vis("c_in", BOOL, &[]), vis("y", F32, &[])],
        &["c_out", "y_out"],
        vec![node("Less", &["i", "two"], &["c_out"], vec![]), node("Add", &["y", "x"], &["y_out"], vec![])],
        vec![t_i64("two", &[], &[2])],
    );
    // No trip count, or one far beyond the unrolling limit (`for i in range(BIG): … break`).
    for trip in ["", "big"] {
        let m = Model::new(13)
            .input(vis("x", F32, &[]))
            .init(t_f32("y0", &[], &[0.0]))
            .init(t_i64("big", &[], &[1 << 40]))
            .node(node("Loop", &[trip, "", "y0"], &["y_fin"], vec![a_graph("body", body.clone())]))
            .output("y_fin");
        let g = import_ok(&m);
        // Iterations i = 0, 1, 2 run (the condition is checked after each): y = 3x.
        let y = run(&g, &[("x", Tensor::f32(Vec::<usize>::new(), vec![1.5]))]);
        assert_eq!(f32s(&y[0]), vec![4.5]);
    }
}

/// A trip count computed at run time: a loop run at run time (`LoopBegin`, the body once, its
/// nodes guarded as the loop's, `LoopEnd`), not unrolled; so is a loop still running after
/// as many iterations as are unrolled. A scan output needs a bound on the iterations.
#[test]
fn loop_with_runtime_trip_count_runs_at_run_time() {
    let body = graph(
        "body",
        vec![vis("i", I64, &[]), vis("c_in", BOOL, &[]), vis("y", F32, &[])],
        &["c_in", "y_out"],
        vec![node("Add", &["y", "one"], &["y_out"], vec![])],
        vec![t_f32("one", &[], &[1.0])],
    );
    let m = Model::new(13)
        .input(vis("n", I64, &[]))
        .init(t_f32("y0", &[], &[0.0]))
        .node(node("Loop", &["n", "", "y0"], &["y_fin"], vec![a_graph("body", body.clone())]))
        .output("y_fin");
    let g = import_ok(&m);
    assert!(has_op(&g, |o| matches!(o, Op::LoopBegin)) && has_op(&g, |o| matches!(o, Op::LoopEnd { .. })));
    let in_body: Vec<&str> =
        nodes(&g).iter().filter(|n| n.guard.iter().any(|c| c.is_loop())).map(|n| n.name.as_str()).collect();
    assert_eq!(in_body.len(), 1, "the body once: {in_body:?}");

    // Beyond the unrolling limit: at run time too, not an endless import.
    let m = Model::new(13)
        .init(t_i64("n", &[], &[1 << 20]))
        .init(t_f32("y0", &[], &[0.0]))
        .node(node("Loop", &["n", "", "y0"], &["y_fin"], vec![a_graph("body", body.clone())]))
        .output("y_fin");
    assert!(has_op(&import_ok(&m), |o| matches!(o, Op::LoopBegin)));

    // A scan output of a loop whose trip count comes from data: no bound on its rows.
    let scan_body = graph(
        "body",
        vec![vis("i", I64, &[]), vis("c_in", BOOL, &[]), vis("y", F32, &[])],
        &["c_in", "y_out", "y_out"],
        vec![node("Add", &["y", "one"], &["y_out"], vec![])],
        vec![t_f32("one", &[], &[1.0])],
    );
    let m = Model::new(13)
        .input(vis("n", I64, &[]))
        .init(t_f32("y0", &[], &[0.0]))
        .node(node("Loop", &["n", "", "y0"], &["y_fin", "ys"], vec![a_graph("body", scan_body)]))
        .output("y_fin")
        .output("ys");
    let err = m.import().unwrap_err();
    let ImportError::NeedsConstant(c) = &err else { panic!("unexpected error: {err}") };
    assert_eq!((c.index, c.graph_inputs.clone()), (0, vec!["n".to_string()]));
    assert!(err.to_string().contains("bound"), "{err}");
}

/// `Scan` with a reversed scan input and a reversed scan output: a running sum.
#[test]
fn scan_with_reversed_directions() {
    let body = graph(
        "body",
        vec![vis("s", F32, &[2]), vis("x_t", F32, &[2])],
        &["s_out", "y_t"],
        vec![node("Add", &["s", "x_t"], &["s_out"], vec![]), node("Identity", &["s_out"], &["y_t"], vec![])],
        vec![],
    );
    let scan = |in_dir: i64, out_dir: i64| {
        let attrs = vec![
            a_graph("body", body.clone()),
            a_int("num_scan_inputs", 1),
            a_ints("scan_input_directions", &[in_dir]),
            a_ints("scan_output_directions", &[out_dir]),
        ];
        let m = Model::new(11)
            .input(vis("x", F32, &[3, 2]))
            .init(t_f32("s0", &[2], &[0.0, 0.0]))
            .node(node("Scan", &["s0", "x"], &["s_fin", "ys"], attrs))
            .output("s_fin")
            .output("ys");
        let g = import_ok(&m);
        assert_unique_names(&g, "s_fin_node");
        let x = Tensor::f32(vec![3, 2], vec![1.0, 2.0, 10.0, 20.0, 100.0, 200.0]);
        let y = run(&g, &[("x", x)]);
        assert_eq!(f32s(&y[0]), vec![111.0, 222.0]);
        assert_eq!(y[1].shape(), &[3, 2]);
        f32s(&y[1])
    };
    // Rows taken last to first: partial sums 100, 110, 111 (and 200, 220, 222).
    assert_eq!(scan(1, 0), vec![100.0, 200.0, 110.0, 220.0, 111.0, 222.0]);
    // ... and stacked last to first as well.
    assert_eq!(scan(1, 1), vec![111.0, 222.0, 110.0, 220.0, 100.0, 200.0]);
    assert_eq!(scan(0, 0), vec![1.0, 2.0, 11.0, 22.0, 111.0, 222.0]);
}

/// Scan along axis 1 of its input, stacking its output along axis 1.
#[test]
fn scan_along_other_axes() {
    let body = graph(
        "body",
        vec![vis("s", F32, &[]), vis("x_t", F32, &[2])],
        &["s_out", "y_t"],
        vec![
            node("ReduceSum", &["x_t"], &["r"], vec![a_int("keepdims", 0)]),
            node("Add", &["s", "r"], &["s_out"], vec![]),
            node("Mul", &["x_t", "s_out"], &["y_t"], vec![]),
        ],
        vec![],
    );
    let attrs = vec![
        a_graph("body", body),
        a_int("num_scan_inputs", 1),
        a_ints("scan_input_axes", &[1]),
        a_ints("scan_output_axes", &[-1]),
    ];
    let m = Model::new(11)
        .input(vis("x", F32, &[2, 3]))
        .init(t_f32("s0", &[], &[0.0]))
        .node(node("Scan", &["s0", "x"], &["s_fin", "ys"], attrs))
        .output("s_fin")
        .output("ys");
    let g = import_ok(&m);
    // Columns [1, 4], [2, 5], [3, 6]: s = 5, 12, 21; y_t = column * s.
    let x = Tensor::f32(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let y = run(&g, &[("x", x)]);
    assert_eq!(f32s(&y[0]), vec![21.0]);
    assert_eq!(y[1].shape(), &[2, 3]);
    assert_eq!(f32s(&y[1]), vec![5.0, 24.0, 63.0, 20.0, 60.0, 126.0]);
}

/// An unsupported op inside a loop body is reported (once, under its scoped name) with the
/// model's other unsupported ops.
#[test]
fn unsupported_op_in_a_body_is_reported() {
    let body = graph(
        "body",
        vec![vis("i", I64, &[]), vis("c_in", BOOL, &[]), vis("y", F32, &[])],
        &["c_in", "y_out"],
        vec![node("NoSuchOp", &["y"], &["y_out"], vec![])],
        vec![],
    );
    let m = Model::new(13)
        .init(t_i64("n", &[], &[3]))
        .input(vis("y0", F32, &[]))
        .node(node("Loop", &["n", "", "y0"], &["y_fin"], vec![a_graph("body", body)]))
        .node(node("Relu", &["y_fin"], &["z"], vec![]))
        .output("z");
    let err = m.import().unwrap_err();
    let ImportError::UnsupportedOps(list) = &err else { panic!("unexpected error: {err}") };
    let names: Vec<&str> = list.iter().map(|o| o.node.as_str()).collect();
    assert_eq!(names, vec!["y_fin_node/it0/y_out_node"], "{err}");
}

/// Scan-8: a batch axis 0 and the sequence on axis 1 (`sequence_lens` omitted).
#[test]
fn scan8_unrolls_batch_and_sequence() {
    let body = graph(
        "body",
        vec![vis("s", F32, &[]), vis("x_t", F32, &[])],
        &["s_out", "y_t"],
        vec![node("Add", &["s", "x_t"], &["s_out"], vec![]), node("Mul", &["s_out", "x_t"], &["y_t"], vec![])],
        vec![],
    );
    let attrs = vec![a_graph("body", body), a_int("num_scan_inputs", 1), a_ints("directions", &[1])];
    let m = Model::new(8)
        .input(vis("x", F32, &[2, 3]))
        .init(t_f32("s0", &[2], &[0.0, 100.0]))
        .node(node("Scan", &["", "s0", "x"], &["s_fin", "ys"], attrs))
        .output("s_fin")
        .output("ys");
    let g = import_ok(&m);
    let x = Tensor::f32(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let y = run(&g, &[("x", x)]);
    // Batch 0 reversed: x_t = 3, 2, 1; s = 3, 5, 6; y = 9, 10, 6.
    // Batch 1 reversed: x_t = 6, 5, 4; s = 106, 111, 115; y = 636, 555, 460.
    assert_eq!(f32s(&y[0]), vec![6.0, 115.0]);
    assert_eq!(y[1].shape(), &[2, 3]);
    assert_eq!(f32s(&y[1]), vec![9.0, 10.0, 6.0, 636.0, 555.0, 460.0]);
}
