//! Builds small ONNX models with the prost types.
#![allow(dead_code)]

use bytes::Bytes;
use kiln_ir::{Graph, Node, Op};
use kiln_onnx::proto::attribute_proto::AttributeType;
use kiln_onnx::proto::tensor_proto::DataType;
use kiln_onnx::proto::tensor_shape_proto::{dimension, Dimension};
use kiln_onnx::proto::type_proto::{self, Value as TypeValue};
use kiln_onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use kiln_onnx::{import_model, ImportError, ImportOptions};
use prost::Message;

pub const F32: DataType = DataType::Float;
pub const I64: DataType = DataType::Int64;

/// A declared dim of an input.
#[derive(Clone)]
pub enum D {
    V(i64),
    P(&'static str),
    Unknown,
}

pub fn vi(name: &str, dtype: DataType, dims: &[D]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: None,
            value: match d {
                D::V(v) => Some(dimension::Value::DimValue(*v)),
                D::P(p) => Some(dimension::Value::DimParam(p.to_string())),
                D::Unknown => None,
            },
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            denotation: None,
            value: Some(TypeValue::TensorType(type_proto::Tensor {
                elem_type: Some(dtype as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        ..Default::default()
    }
}

/// A static-shape value info.
pub fn vis(name: &str, dtype: DataType, dims: &[i64]) -> ValueInfoProto {
    vi(name, dtype, &dims.iter().map(|&d| D::V(d)).collect::<Vec<_>>())
}

/// An output with no declared type (outputs' types are not read).
pub fn out(name: &str) -> ValueInfoProto {
    ValueInfoProto { name: Some(name.into()), ..Default::default() }
}

pub fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: Some(format!("{}_node", outputs.first().copied().unwrap_or(op))),
        attribute: attrs,
        ..Default::default()
    }
}

fn attr(name: &str, ty: AttributeType) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(ty as i32), ..Default::default() }
}
pub fn a_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { i: Some(v), ..attr(name, AttributeType::Int) }
}
pub fn a_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { ints: v.to_vec(), ..attr(name, AttributeType::Ints) }
}
pub fn a_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { f: Some(v), ..attr(name, AttributeType::Float) }
}
pub fn a_str(name: &str, v: &str) -> AttributeProto {
    AttributeProto { s: Some(Bytes::copy_from_slice(v.as_bytes())), ..attr(name, AttributeType::String) }
}
pub fn a_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto { t: Some(t), ..attr(name, AttributeType::Tensor) }
}

/// An f32 tensor in `float_data`.
pub fn t_f32(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(F32 as i32),
        float_data: v.to_vec(),
        ..Default::default()
    }
}
/// An f32 tensor in `raw_data`.
pub fn t_f32_raw(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(F32 as i32),
        raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into()),
        ..Default::default()
    }
}
/// An i64 tensor in `int64_data`.
pub fn t_i64(name: &str, dims: &[i64], v: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(I64 as i32),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

pub struct Model {
    pub ir_version: i64,
    pub opset: i64,
    pub other_opsets: Vec<(&'static str, i64)>,
    pub inputs: Vec<ValueInfoProto>,
    pub outputs: Vec<ValueInfoProto>,
    pub inits: Vec<TensorProto>,
    pub nodes: Vec<NodeProto>,
}

impl Model {
    pub fn new(opset: i64) -> Model {
        Model {
            ir_version: 8,
            opset,
            other_opsets: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            inits: Vec::new(),
            nodes: Vec::new(),
        }
    }
    pub fn input(mut self, v: ValueInfoProto) -> Self {
        self.inputs.push(v);
        self
    }
    pub fn output(mut self, name: &str) -> Self {
        self.outputs.push(out(name));
        self
    }
    pub fn init(mut self, t: TensorProto) -> Self {
        self.inits.push(t);
        self
    }
    pub fn node(mut self, n: NodeProto) -> Self {
        self.nodes.push(n);
        self
    }

    pub fn proto(&self) -> ModelProto {
        let mut opset_import = vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(self.opset) }];
        for (d, v) in &self.other_opsets {
            opset_import.push(OperatorSetIdProto { domain: Some(d.to_string()), version: Some(*v) });
        }
        ModelProto {
            ir_version: Some(self.ir_version),
            opset_import,
            producer_name: Some("kiln-onnx tests".into()),
            graph: Some(GraphProto {
                name: Some("test".into()),
                node: self.nodes.clone(),
                initializer: self.inits.clone(),
                input: self.inputs.clone(),
                output: self.outputs.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn bytes(&self) -> Bytes {
        Bytes::from(self.proto().encode_to_vec())
    }

    pub fn import(&self) -> Result<Graph, ImportError> {
        import_model(self.bytes(), &ImportOptions::default())
    }

    pub fn import_with(&self, opts: &ImportOptions) -> Result<Graph, ImportError> {
        import_model(self.bytes(), opts)
    }
}

/// The scheduled nodes.
pub fn nodes(g: &Graph) -> Vec<&Node> {
    g.order().iter().map(|&n| g.node(n)).collect()
}

/// The scheduled nodes' ops.
pub fn ops(g: &Graph) -> Vec<&Op> {
    nodes(g).into_iter().map(|n| &n.op).collect()
}

/// Imports and verifies, panicking with the error.
pub fn import_ok(m: &Model) -> Graph {
    let g = m.import().unwrap_or_else(|e| panic!("import failed: {e}"));
    kiln_ir::verify::verify(&g).unwrap_or_else(|e| panic!("verify failed: {e}"));
    g
}

/// Imports a one-node model at `opset` whose inputs are all initializers and returns each
/// output it names (`""` is an omitted one), folded to a constant, as (shape, values).
pub fn folded(opset: i64, inits: Vec<TensorProto>, n: NodeProto) -> Vec<(Vec<usize>, kiln_ir::Data)> {
    let outs: Vec<String> = n.output.iter().filter(|o| !o.is_empty()).cloned().collect();
    let mut m = Model::new(opset);
    for t in inits {
        m = m.init(t);
    }
    m = m.node(n);
    for o in &outs {
        m = m.output(o);
    }
    let g = import_ok(&m);
    g.outputs
        .iter()
        .map(|&v| {
            let t = g.const_of(v).unwrap_or_else(|| panic!("output did not fold: {:?}", ops(&g)));
            (t.shape().to_vec(), t.data())
        })
        .collect()
}

/// Evaluates the imported graph on `inputs` (by input name) with the reference evaluator.
pub fn run(g: &Graph, inputs: &[(&str, kiln_ir::Tensor)]) -> Vec<kiln_ir::Tensor> {
    let mut vals: std::collections::HashMap<kiln_ir::ValueId, kiln_ir::Tensor> = std::collections::HashMap::new();
    for &v in &g.inputs {
        let name = &g.value(v).name;
        let t = inputs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no value for input {name}"));
        vals.insert(v, t.1.clone());
    }
    let get =
        |vals: &std::collections::HashMap<kiln_ir::ValueId, kiln_ir::Tensor>, v: kiln_ir::ValueId| -> kiln_ir::Tensor {
            match &g.value(v).def {
                kiln_ir::ValueDef::Const(t) => t.clone(),
                _ => vals[&v].clone(),
            }
        };
    let key = |vals: &std::collections::HashMap<kiln_ir::ValueId, kiln_ir::Tensor>, v| get(vals, v).to_i64_vec()[0];
    for &n in g.order() {
        let node = g.node(n);
        // A node of a run-time case runs only in that case.
        if !node.guard.iter().all(|c| key(&vals, c.key) == c.value) {
            continue;
        }
        // A merge takes the case taken (whose shape may differ from the merged bound).
        if let kiln_ir::Op::Merge = node.op {
            let k = key(&vals, node.inputs[0]) as usize;
            vals.insert(node.outputs[0], get(&vals, node.inputs[1 + k]));
            continue;
        }
        let ins: Vec<kiln_ir::Tensor> = node.inputs.iter().map(|&v| get(&vals, v)).collect();
        let refs: Vec<&kiln_ir::Tensor> = ins.iter().collect();
        let outs = kiln_ir::ops::eval(&node.op, &refs).unwrap_or_else(|e| panic!("{}: {e}", node.name));
        for (&v, t) in node.outputs.iter().zip(outs) {
            vals.insert(v, t);
        }
    }
    g.outputs.iter().map(|&v| get(&vals, v)).collect()
}
