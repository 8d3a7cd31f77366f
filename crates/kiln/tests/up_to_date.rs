//! `Compiler::compile_file` keeps an output that already holds the same compilation, and
//! compiles again when anything it depends on changed: the model, its external data, the
//! options, or the output itself (damaged, or not an artifact).

use std::path::Path;
use std::time::{Duration, SystemTime};

use kiln::{CompileOptions, Compiler, KernelCache, Session, TensorRef};
use kiln_onnx::proto::tensor_proto::{DataLocation, DataType};
use kiln_onnx::proto::tensor_shape_proto::{dimension, Dimension};
use kiln_onnx::proto::type_proto::{self, Value as TypeValue};
use kiln_onnx::proto::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};
use prost::Message;

fn value_info(name: &str, dims: Vec<dimension::Value>) -> ValueInfoProto {
    let dim = dims.into_iter().map(|v| Dimension { denotation: None, value: Some(v) }).collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            denotation: None,
            value: Some(TypeValue::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        ..Default::default()
    }
}

/// `y = x · W` with `x: [batch, 4]` and `W: [4, 3]` kept in the external file `w.bin`.
fn write_model(dir: &Path, w: &[f32; 12]) {
    let entry = |k: &str, v: &str| StringStringEntryProto { key: Some(k.into()), value: Some(v.into()) };
    let weights = TensorProto {
        name: Some("W".into()),
        dims: vec![4, 3],
        data_type: Some(DataType::Float as i32),
        data_location: Some(DataLocation::External as i32),
        external_data: vec![entry("location", "w.bin"), entry("offset", "0"), entry("length", "48")],
        ..Default::default()
    };
    let graph = GraphProto {
        name: Some("matmul".into()),
        node: vec![NodeProto {
            op_type: Some("MatMul".into()),
            input: vec!["x".into(), "W".into()],
            output: vec!["y".into()],
            name: Some("mm".into()),
            ..Default::default()
        }],
        initializer: vec![weights],
        input: vec![value_info("x", vec![dimension::Value::DimParam("batch".into()), dimension::Value::DimValue(4)])],
        output: vec![ValueInfoProto { name: Some("y".into()), ..Default::default() }],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        graph: Some(graph),
        ..Default::default()
    };
    std::fs::write(dir.join("model.onnx"), model.encode_to_vec()).unwrap();
    std::fs::write(dir.join("w.bin"), w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

fn compiler(batch: usize) -> Compiler {
    let mut opts = CompileOptions { kernel_cache: KernelCache::disabled(), ..Default::default() };
    opts.input_shapes.insert("x".into(), vec![batch, 4]);
    Compiler::new(opts)
}

/// Runs the artifact on rows `[1, 2, 3, 4]` and returns its output.
fn run(path: &Path, batch: usize) -> Vec<f32> {
    let s = Session::load(path).unwrap();
    let x: Vec<f32> = (0..batch).flat_map(|_| [1.0, 2.0, 3.0, 4.0]).collect();
    s.run(&[TensorRef::f32(&[batch, 4], &x)]).unwrap()[0].to_f32().unwrap()
}

/// `[1, 2, 3, 4] · W` by hand, W row-major 4×3.
fn expected(w: &[f32; 12]) -> [f32; 3] {
    std::array::from_fn(|j| (0..4).map(|i| (i + 1) as f32 * w[i * 3 + j]).sum())
}

fn age(path: &Path) {
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options().append(true).open(path).unwrap().set_modified(old).unwrap();
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn unchanged_compilation_keeps_the_artifact_and_any_change_recompiles() {
    let dir = tempfile::tempdir().unwrap();
    let (model, out) = (dir.path().join("model.onnx"), dir.path().join("model.kiln"));
    let w1: [f32; 12] = std::array::from_fn(|i| i as f32 - 5.0);
    write_model(dir.path(), &w1);

    let first = compiler(1).compile_file(&model, &out).unwrap();
    assert!(!first.up_to_date);
    assert_eq!(run(&out, 1), expected(&w1));
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(first.file_len, bytes.len() as u64);

    // Unchanged: kept as it is, its modification time brought up to date.
    age(&out);
    let second = compiler(1).compile_file(&model, &out).unwrap();
    assert!(second.up_to_date);
    assert_eq!(second.manifest.source_key, first.manifest.source_key);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert!(modified(&out) > SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000));

    // Other external weights, same model file: compiled again, with the new weights.
    let w2: [f32; 12] = std::array::from_fn(|i| (i * i) as f32 * 0.5);
    write_model(dir.path(), &w2);
    let third = compiler(1).compile_file(&model, &out).unwrap();
    assert!(!third.up_to_date);
    assert_ne!(third.manifest.source_key, first.manifest.source_key);
    assert_eq!(run(&out, 1), expected(&w2));

    // Another input shape: compiled again.
    let fourth = compiler(2).compile_file(&model, &out).unwrap();
    assert!(!fourth.up_to_date);
    let y = run(&out, 2);
    assert_eq!(y[..3], expected(&w2));
    assert_eq!(y[3..], expected(&w2));

    // A damaged artifact (one byte of its weights flipped) is never taken as up to date.
    let mut damaged = std::fs::read(&out).unwrap();
    let at = damaged.len() - 5;
    damaged[at] ^= 0x40;
    std::fs::write(&out, &damaged).unwrap();
    let fifth = compiler(2).compile_file(&model, &out).unwrap();
    assert!(!fifth.up_to_date);
    assert_eq!(fifth.manifest.source_key, fourth.manifest.source_key);
    assert_eq!(run(&out, 2)[..3], expected(&w2));

    // Nor is a file that is no artifact at all: it is replaced.
    std::fs::write(&out, b"not an artifact").unwrap();
    let sixth = compiler(2).compile_file(&model, &out).unwrap();
    assert!(!sixth.up_to_date);
    assert_eq!(run(&out, 2)[3..], expected(&w2));
}

#[test]
fn external_weights_live_next_to_the_artifact_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (model, out) = (dir.path().join("model.onnx"), dir.path().join("model.kiln"));
    let weights = dir.path().join("model.kiln.weights");
    let w: [f32; 12] = std::array::from_fn(|i| 0.25 * i as f32 - 1.0);
    write_model(dir.path(), &w);
    let mut c = compiler(1);
    c.opts.external_weights = true;

    let first = c.compile_file(&model, &out).unwrap();
    assert!(!first.up_to_date);
    assert_eq!(first.manifest.weights_file, "model.kiln.weights");
    // The artifact's own weight section is empty: the file holds the weights (and a header).
    assert!(std::fs::metadata(&weights).unwrap().len() >= 64 + 48);
    assert_eq!(run(&out, 1), expected(&w));
    // The key says external: the same model compiled inline is another compilation.
    assert_ne!(
        first.manifest.source_key,
        compiler(1).compile_file(&model, dir.path().join("inline.kiln")).unwrap().manifest.source_key
    );

    // Up to date while both files are sound.
    assert!(c.compile_file(&model, &out).unwrap().up_to_date);

    // A damaged weights file: refused at load with its name, and recompiled.
    let good = std::fs::read(&weights).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&weights, &bad).unwrap();
    let err = Session::load(&out).err().expect("a damaged weights file must be refused").to_string();
    assert!(err.contains("model.kiln.weights") && err.contains("checksum"), "{err}");
    assert!(!c.compile_file(&model, &out).unwrap().up_to_date);
    assert_eq!(std::fs::read(&weights).unwrap(), good);

    // A missing one: refused, naming the path; recompiled.
    std::fs::remove_file(&weights).unwrap();
    let err = Session::load(&out).err().expect("a missing weights file must be refused").to_string();
    assert!(err.contains("model.kiln.weights"), "{err}");
    assert!(!c.compile_file(&model, &out).unwrap().up_to_date);
    assert_eq!(run(&out, 1), expected(&w));

    // From bytes there is no "next to it": a clear error.
    let err = Session::from_bytes(&std::fs::read(&out).unwrap(), &Default::default()).err().unwrap().to_string();
    assert!(err.contains("Session::load"), "{err}");
}
