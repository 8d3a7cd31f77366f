//! FlexAttention (ai.onnx.preview) with a score_mod subgraph, folded from constant inputs and
//! checked against hand-derived values.

mod common;

use common::*;
use kiln_ir::Data;
use kiln_onnx::proto::attribute_proto::AttributeType;
use kiln_onnx::proto::tensor_proto::DataType;
use kiln_onnx::proto::{AttributeProto, GraphProto};

fn flex(score_mod: Option<GraphProto>) -> f32 {
    let mut m = Model::new(23);
    m.other_opsets.push(("ai.onnx.preview", 1));
    let attrs = score_mod
        .map(|g| AttributeProto {
            name: Some("score_mod".into()),
            r#type: Some(AttributeType::Graph as i32),
            g: Some(g),
            ..Default::default()
        })
        .into_iter()
        .collect();
    let mut n = node("FlexAttention", &["q", "k", "v"], &["y"], attrs);
    n.domain = Some("ai.onnx.preview".into());
    // One query, two keys, head size 1 (scale 1): scores [1, 0].
    let m = m
        .init(t_f32("q", &[1, 1, 1, 1], &[1.0]))
        .init(t_f32("k", &[1, 1, 2, 1], &[1.0, 0.0]))
        .init(t_f32("v", &[1, 1, 2, 1], &[2.0, 4.0]))
        .node(n)
        .output("y");
    let g = import_ok(&m);
    match g.const_of(g.outputs[0]).expect("folds").data() {
        Data::F32(v) => v[0],
        d => panic!("{d:?}"),
    }
}

#[test]
fn flex_attention_with_and_without_score_mod() {
    // softmax([1, 0]) = [e, 1] / (e + 1): y = (2e + 4) / (e + 1).
    let e = std::f32::consts::E;
    assert!((flex(None) - (2.0 * e + 4.0) / (e + 1.0)).abs() < 1e-6);
    // score_mod adds [-1, 0]: equal scores, y = (2 + 4) / 2.
    let body = GraphProto {
        name: Some("bias".into()),
        node: vec![node("Add", &["s", "b"], &["o"], vec![])],
        initializer: vec![t_f32("b", &[2], &[-1.0, 0.0])],
        input: vec![vis("s", DataType::Float, &[1, 1, 1, 2])],
        output: vec![out("o")],
        ..Default::default()
    };
    assert!((flex(Some(body)) - 3.0).abs() < 1e-6);
}
