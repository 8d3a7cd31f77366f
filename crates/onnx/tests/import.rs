//! Model-level import: inputs, initializers, errors, external data.

mod common;

use bytes::Bytes;
use common::*;
use kiln_ir::{BinaryOp, DType, Data, Op, TensorType, UnaryOp};
use kiln_onnx::proto::tensor_proto::{DataLocation, DataType};
use kiln_onnx::proto::StringStringEntryProto;
use kiln_onnx::{import_model, import_path, ImportError, ImportOptions};

fn mlp() -> Model {
    let w1: Vec<f32> = (0..32).map(|i| i as f32 * 0.1).collect();
    let w2: Vec<f32> = (0..16).map(|i| i as f32 * -0.1).collect();
    Model::new(13)
        .input(vis("x", F32, &[1, 4]))
        .init(t_f32_raw("w1", &[4, 8], &w1))
        .init(t_f32("b1", &[8], &[0.5; 8]))
        .init(t_f32_raw("w2", &[8, 2], &w2))
        .init(t_f32("b2", &[2], &[1.0, 2.0]))
        .node(node("MatMul", &["x", "w1"], &["h0"], vec![]))
        .node(node("Add", &["h0", "b1"], &["h1"], vec![]))
        .node(node("Relu", &["h1"], &["h2"], vec![]))
        .node(node("MatMul", &["h2", "w2"], &["h3"], vec![]))
        .node(node("Add", &["h3", "b2"], &["y"], vec![]))
        .output("y")
}

#[test]
fn mlp_imports_into_expected_nodes() {
    let g = import_ok(&mlp());
    assert_eq!(
        ops(&g),
        vec![
            &Op::MatMul,
            &Op::Binary(BinaryOp::Add),
            &Op::Unary(UnaryOp::Relu),
            &Op::MatMul,
            &Op::Binary(BinaryOp::Add)
        ]
    );
    let ns = nodes(&g);
    let ty = |n: usize| g.ty(ns[n].outputs[0]).clone();
    assert_eq!(ty(0), TensorType::new(DType::F32, vec![1, 8]));
    assert_eq!(ty(2), TensorType::new(DType::F32, vec![1, 8]));
    assert_eq!(ty(4), TensorType::new(DType::F32, vec![1, 2]));
    assert_eq!(ns[0].name, "h0_node");
    assert_eq!(g.value(ns[1].outputs[0]).name, "h1");
    // Runtime input and output keep their ONNX names; weights are constants.
    assert_eq!(g.inputs.len(), 1);
    assert_eq!(g.value(g.inputs[0]).name, "x");
    assert_eq!(g.outputs.len(), 1);
    assert_eq!(g.value(g.outputs[0]).name, "y");
    assert_eq!(g.ty(g.outputs[0]), &TensorType::new(DType::F32, vec![1, 2]));
    let w1 = g.const_of(ns[0].inputs[1]).expect("w1 is a constant");
    assert_eq!(g.value(ns[0].inputs[1]).name, "w1");
    assert_eq!(w1.shape(), &[4, 8]);
}

#[test]
fn raw_data_and_float_data_decode_alike() {
    let vals = [1.5f32, -2.0, 3.25, 0.0, 7.0, -0.5];
    let m = Model::new(13)
        .input(vis("x", F32, &[2, 3]))
        .init(t_f32_raw("a", &[2, 3], &vals))
        .init(t_f32("b", &[2, 3], &vals))
        .node(node("Add", &["x", "a"], &["s"], vec![]))
        .node(node("Mul", &["s", "b"], &["y"], vec![]))
        .output("y");
    let bytes = m.bytes();
    let g = import_model(bytes.clone(), &ImportOptions::default()).unwrap();
    let ns = nodes(&g);
    let a = g.const_of(ns[0].inputs[1]).unwrap();
    let b = g.const_of(ns[1].inputs[1]).unwrap();
    assert_eq!(a.data(), Data::F32(vals.to_vec()));
    assert_eq!(b.data(), Data::F32(vals.to_vec()));
    assert_eq!(a.ty, b.ty);
    // raw_data is a slice of the model's bytes, not a copy.
    let range = bytes.as_ptr_range();
    assert!(range.contains(&a.data.as_ptr()), "raw_data initializer was copied");
}

#[test]
fn initializer_listed_as_input_is_a_constant() {
    let m = Model::new(13)
        .input(vis("x", F32, &[2]))
        .input(vis("w", F32, &[2]))
        .init(t_f32("w", &[2], &[1.0, 2.0]))
        .node(node("Add", &["x", "w"], &["y"], vec![]))
        .output("y");
    let g = import_ok(&m);
    assert_eq!(g.inputs.len(), 1);
    assert!(g.const_of(nodes(&g)[0].inputs[1]).is_some());
    // Pinning a constant is an error.
    let e = m.import_with(&ImportOptions::default().with_input_shape("w", vec![2])).unwrap_err().to_string();
    assert!(e.contains("`w` is an initializer"), "{e}");
}

fn dynamic_model() -> Model {
    Model::new(13)
        .input(vi("x", F32, &[D::P("batch"), D::V(3), D::Unknown]))
        .node(node("Relu", &["x"], &["y"], vec![]))
        .output("y")
}

#[test]
fn unpinned_dim_is_a_clear_error() {
    let e = dynamic_model().import().unwrap_err();
    assert!(matches!(e, ImportError::UnpinnedDim { index: 0, .. }), "{e:?}");
    let s = e.to_string();
    for want in ["input `x`", "symbolic dim `batch`", "dim 0", "[batch, 3, ?]", "--input-shape x=1x3x1", "input_shapes"]
    {
        assert!(s.contains(want), "`{want}` missing from: {s}");
    }
    // Unknown (neither value nor name) dims are reported too.
    let m = Model::new(13)
        .input(vi("x", F32, &[D::V(2), D::Unknown]))
        .node(node("Relu", &["x"], &["y"], vec![]))
        .output("y");
    let s = m.import().unwrap_err().to_string();
    assert!(s.contains("an unknown dim at dim 1"), "{s}");
}

#[test]
fn pinned_dim_specializes_the_input() {
    let m = dynamic_model();
    let mut opts = ImportOptions::default();
    opts.add_input_shape_spec("x=4x3x5").unwrap();
    let g = m.import_with(&opts).unwrap();
    assert_eq!(g.ty(g.inputs[0]), &TensorType::new(DType::F32, vec![4, 3, 5]));
    assert_eq!(g.ty(g.outputs[0]).shape, vec![4, 3, 5]);

    // Contradicting a static dim.
    let e = m.import_with(&ImportOptions::default().with_input_shape("x", vec![4, 2, 5])).unwrap_err().to_string();
    assert!(e.contains("bad input shape `x=4x2x5`") && e.contains("static dim 1 = 3"), "{e}");
    // Wrong rank.
    let e = m.import_with(&ImportOptions::default().with_input_shape("x", vec![4, 3])).unwrap_err().to_string();
    assert!(e.contains("rank 3"), "{e}");
    // No such input.
    let opts = ImportOptions::default().with_input_shape("x", vec![1, 3, 1]).with_input_shape("nope", vec![1]);
    let e = m.import_with(&opts).unwrap_err().to_string();
    assert!(e.contains("no input `nope`") && e.contains("`x`"), "{e}");
}

#[test]
fn unsupported_ops_are_all_reported_at_once() {
    let mut m = Model::new(13)
        .input(vis("boxes", F32, &[1, 4, 4]))
        .input(vis("scores", F32, &[1, 1, 4]))
        .node(node("Bernoulli", &["scores"], &["sel"], vec![]))
        // Downstream of an unsupported op: skipped, not reported.
        .node(node("Cast", &["sel"], &["self"], vec![a_int("to", 1)]))
        .node(node("Relu", &["scores"], &["r"], vec![]))
        .node(NodeProto { domain: Some("com.example".into()), ..node("Foo", &["r"], &["f"], vec![]) })
        .output("self")
        .output("f");
    m.nodes[0].name = Some("nms_1".into());
    m.nodes[3].name = Some("n7".into());
    m.other_opsets.push(("com.example", 1));
    let e = m.import().unwrap_err();
    let ImportError::UnsupportedOps(list) = &e else { panic!("{e:?}") };
    assert_eq!(list.len(), 2);
    assert_eq!(
        e.to_string(),
        "model uses 2 unsupported ops: Bernoulli (domain ai.onnx, opset 13) at node \"nms_1\"; \
         Foo (domain com.example, opset 1) at node \"n7\""
    );
}

use kiln_onnx::proto::NodeProto;

#[test]
fn truncated_model_is_a_decode_error() {
    let bytes = mlp().bytes();
    // Every prefix either fails cleanly or decodes to a (partial) model; nothing panics.
    for len in 0..bytes.len() {
        let _ = import_model(bytes.slice(..len), &ImportOptions::default());
    }
    let e = import_model(bytes.slice(..bytes.len() - 3), &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, ImportError::Decode(_)), "{e:?}");
    assert!(e.to_string().starts_with("cannot decode ONNX model: "), "{e}");
    let e = import_model(Bytes::from_static(b"\xff\xff\xff\xff garbage"), &ImportOptions::default()).unwrap_err();
    assert!(e.to_string().starts_with("cannot decode ONNX model: "), "{e}");
}

#[test]
fn corrupt_sizes_do_not_allocate() {
    // A tensor claiming 2^62 elements.
    let m = Model::new(13)
        .input(vis("x", F32, &[2]))
        .init(t_f32_raw("w", &[1 << 31, 1 << 31], &[1.0]))
        .node(node("Add", &["x", "w"], &["y"], vec![]))
        .output("y");
    let e = m.import().unwrap_err().to_string();
    assert!(e.contains("tensor `w`"), "{e}");
    // Mismatched raw_data length.
    let m = Model::new(13)
        .input(vis("x", F32, &[2]))
        .init(t_f32_raw("w", &[3], &[1.0, 2.0]))
        .node(node("Add", &["x", "w"], &["y"], vec![]))
        .output("y");
    let e = m.import().unwrap_err().to_string();
    assert!(e.contains("raw_data has 8 bytes"), "{e}");
    // A huge input shape.
    let m =
        Model::new(13).input(vis("x", F32, &[1 << 40, 1 << 40])).node(node("Relu", &["x"], &["y"], vec![])).output("y");
    assert!(m.import().is_err());
    // A Reshape to a huge shape.
    let m = Model::new(13)
        .input(vis("x", F32, &[2]))
        .init(t_i64("s", &[2], &[i64::MAX, 2]))
        .node(node("Reshape", &["x", "s"], &["y"], vec![]))
        .output("y");
    assert!(m.import().is_err());
}

#[test]
fn unsupported_dtype_names_tensor_and_dtype() {
    let mut t = t_f32("d", &[1], &[]);
    t.data_type = Some(DataType::Float6e2m3 as i32);
    t.int32_data = vec![1];
    let m =
        Model::new(13).input(vis("x", F32, &[1])).init(t).node(node("Add", &["x", "d"], &["y"], vec![])).output("y");
    assert_eq!(
        m.import().unwrap_err().to_string(),
        "tensor `d`: dtype FLOAT6E2M3 is not supported (supported: float32, float64, float16, bfloat16, int8, \
         uint8, int16, uint16, int32, uint32, int64, uint64, bool, float8e4m3fn, float8e4m3fnuz, float8e5m2, \
         float8e5m2fnuz, float8e8m0, float4e2m1, int4, uint4, int2, uint2)"
    );
}

#[test]
fn storage_dtypes_are_widened_around_computing_ops() {
    // Relu on f16 runs in f32 between two casts; Reshape moves f16 elements as they are.
    let m = Model::new(13)
        .input(vis("x", DataType::Float16, &[2]))
        .node(node("Relu", &["x"], &["r"], vec![]))
        .node(node("Reshape", &["r", "s"], &["y"], vec![]))
        .init(t_i64("s", &[2], &[1, 2]))
        .output("y");
    let g = m.import().unwrap();
    let ops: Vec<String> = g.order().iter().map(|&n| g.node(n).op.name().to_string()).collect();
    assert_eq!(ops, ["cast", "relu", "cast", "reshape"]);
    let y = g.outputs[0];
    assert_eq!(g.ty(y).dtype, DType::F16);
}

#[test]
fn versions_are_checked() {
    let mut m = mlp();
    m.ir_version = 2;
    assert!(matches!(m.import(), Err(ImportError::UnsupportedIrVersion { version: 2, .. })));
    let mut m = mlp();
    m.opset = 29;
    let e = m.import().unwrap_err().to_string();
    assert_eq!(e, "unsupported opset 29 for domain ai.onnx (supported: 1..=28)");
    let mut m = mlp();
    m.ir_version = 15;
    assert!(matches!(m.import(), Err(ImportError::UnsupportedIrVersion { version: 15, .. })));
    // `ai.onnx` is the default domain too.
    let mut p = mlp().proto();
    p.opset_import[0].domain = Some("ai.onnx".into());
    let g = import_model(prost::Message::encode_to_vec(&p).into(), &ImportOptions::default()).unwrap();
    assert_eq!(ops(&g).len(), 5);
}

#[test]
fn node_errors_carry_context() {
    let m = Model::new(13)
        .input(vis("a", F32, &[2, 3]))
        .input(vis("b", F32, &[4, 5]))
        .node(node("MatMul", &["a", "b"], &["y"], vec![]))
        .output("y");
    let e = m.import().unwrap_err().to_string();
    assert!(e.starts_with("node `y_node` (MatMul, opset 13): "), "{e}");
    // A shape input computed at run time that sets a size without a bound.
    let m = Model::new(13)
        .input(vis("x", F32, &[6]))
        .input(vis("p", I64, &[2]))
        .node(node("Pad", &["x", "p"], &["y"], vec![]))
        .output("y");
    let e = m.import().unwrap_err().to_string();
    assert!(e.contains("node `y_node` (Pad, opset 13)") && e.contains("input 1 (`p`, pads)"), "{e}");
    // An undefined value.
    let m = Model::new(13).input(vis("x", F32, &[1])).node(node("Relu", &["nope"], &["y"], vec![])).output("y");
    assert!(m.import().unwrap_err().to_string().contains("`nope`"));
    // An op the model's opset predates (the registry's first version).
    let m = Model::new(16)
        .input(vis("x", F32, &[2, 4]))
        .node(node("LayerNormalization", &["x"], &["y"], vec![]))
        .output("y");
    let e = m.import().unwrap_err().to_string();
    assert!(e.contains("(LayerNormalization, opset 16)") && e.contains("first appears in opset 17 of ai.onnx"), "{e}");
}

#[test]
fn outputs_keep_their_names() {
    // An output that is an Identity of an input, one that is a folded constant, one listed
    // twice.
    let m = Model::new(13)
        .input(vis("x", F32, &[2]))
        .node(node("Identity", &["x"], &["y"], vec![]))
        .node(node("Shape", &["x"], &["s"], vec![]))
        .output("y")
        .output("s")
        .output("x");
    let g = import_ok(&m);
    let names: Vec<&str> = g.outputs.iter().map(|&v| g.value(v).name.as_str()).collect();
    assert_eq!(names, ["y", "s", "x"]);
    assert_eq!(g.const_of(g.outputs[1]).unwrap().data(), Data::I64(vec![2]));
    assert_eq!(g.outputs[2], g.inputs[0]);
}

fn external_tensor(
    name: &str,
    dims: &[i64],
    location: &str,
    offset: Option<usize>,
    length: Option<usize>,
) -> kiln_onnx::proto::TensorProto {
    let kv = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
    let mut ext = vec![kv("location", location.into())];
    ext.extend(offset.map(|o| kv("offset", o.to_string())));
    ext.extend(length.map(|l| kv("length", l.to_string())));
    kiln_onnx::proto::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(F32 as i32),
        external_data: ext,
        data_location: Some(DataLocation::External as i32),
        ..Default::default()
    }
}

#[test]
fn external_data_is_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let mut blob = vec![0u8; 16];
    for v in [1.0f32, 2.0, 3.0] {
        blob.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/weights.bin"), &blob).unwrap();
    let model = |t| {
        Model::new(13).input(vis("x", F32, &[3])).init(t).node(node("Add", &["x", "w"], &["y"], vec![])).output("y")
    };
    let path = dir.path().join("model.onnx");

    std::fs::write(&path, model(external_tensor("w", &[3], "data/weights.bin", Some(16), Some(12))).bytes()).unwrap();
    let g = import_path(&path, &ImportOptions::default()).unwrap();
    let w = g.const_of(nodes(&g)[0].inputs[1]).unwrap();
    assert_eq!(w.data(), Data::F32(vec![1.0, 2.0, 3.0]));
    // Without a length, the rest of the file.
    std::fs::write(&path, model(external_tensor("w", &[3], "data/weights.bin", Some(16), None)).bytes()).unwrap();
    import_path(&path, &ImportOptions::default()).unwrap();

    let err = |t| {
        std::fs::write(&path, model(t).bytes()).unwrap();
        import_path(&path, &ImportOptions::default()).unwrap_err().to_string()
    };
    let e = err(external_tensor("w", &[3], "data/weights.bin", Some(20), Some(12)));
    assert!(e.contains("tensor `w`: external data") && e.contains("past the end"), "{e}");
    let e = err(external_tensor("w", &[3], "data/weights.bin", Some(0), Some(16)));
    assert!(e.contains("holds 16 bytes") && e.contains("need 12"), "{e}");
    let e = err(external_tensor("w", &[3], "../outside.bin", None, None));
    assert!(e.contains("tensor `w`: external data"), "{e}");
    std::fs::write(dir.path().parent().unwrap().join("kiln_onnx_outside.bin"), &blob[..12]).unwrap();
    let e = err(external_tensor("w", &[3], "../kiln_onnx_outside.bin", None, None));
    assert!(e.contains("escapes the model's directory"), "{e}");
    let e = err(external_tensor("w", &[3], "/etc/passwd", None, None));
    assert!(e.contains("absolute"), "{e}");
    let _ = std::fs::remove_file(dir.path().parent().unwrap().join("kiln_onnx_outside.bin"));

    // From bytes alone, external data cannot be resolved.
    let e = model(external_tensor("w", &[3], "data/weights.bin", Some(16), Some(12))).import().unwrap_err().to_string();
    assert!(e.contains("import_path"), "{e}");
}

#[test]
fn inputs_bound_to_constants_fold() {
    use std::collections::HashMap;
    let m = Model::new(13)
        .input(vis("x", F32, &[2, 6]))
        .input(vis("shape", I64, &[2]))
        .node(node("Reshape", &["x", "shape"], &["y"], vec![]))
        .output("y");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, m.bytes()).unwrap();
    let mut consts = HashMap::new();
    consts.insert("shape".to_string(), kiln_ir::Tensor::i64(vec![2], vec![3, 4]));
    let g = kiln_onnx::import_path_with_constants(&path, &ImportOptions::default(), &consts).unwrap();
    assert_eq!(ops(&g), vec![&Op::Reshape { shape: vec![3, 4] }]);
    assert_eq!(g.inputs.len(), 1);
    // A value of the wrong type, or for no input, is an error.
    consts.insert("shape".to_string(), kiln_ir::Tensor::i64(vec![3], vec![3, 4, 1]));
    let e = kiln_onnx::import_path_with_constants(&path, &ImportOptions::default(), &consts).unwrap_err().to_string();
    assert!(e.starts_with("constant for input `shape`"), "{e}");
    let mut consts = HashMap::new();
    consts.insert("nope".to_string(), kiln_ir::Tensor::i64(vec![1], vec![1]));
    assert!(kiln_onnx::import_path_with_constants(&path, &ImportOptions::default(), &consts).is_err());
}
