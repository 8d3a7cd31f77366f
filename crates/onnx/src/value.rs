//! Sequence and optional values at the compiled-model boundary.
//!
//! Kiln's compiled models take and give tensors only. A graph input or output that is an
//! ONNX sequence is flattened into one tensor per element, named `<name>[0]`, `<name>[1]`, …;
//! an optional is either absent (no tensor at all) or present (its value, flattened the same
//! way, under the optional's name). The number of elements of a sequence *input* and whether
//! an optional input is present must be known at compile time: [`ValueSpec`] gives them
//! ([`crate::ImportOptions::value_inputs`]), and [`OnnxValue::spec`] derives one from a value
//! read from a `SequenceProto`/`OptionalProto` file ([`decode_value`]).

use kiln_ir::{DType, Tensor, TensorType};
use prost::Message;

use crate::data::{decode_tensor, dtype_of, ExternalStore};
use crate::proto::type_proto::Value as TypeValue;
use crate::proto::{TensorProto, TypeProto};
use crate::ImportError;

/// `onnx-data.proto`'s `SequenceProto` (the fields Kiln reads).
#[derive(Clone, PartialEq, Message)]
struct SequenceProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(int32, optional, tag = "2")]
    elem_type: Option<i32>,
    #[prost(message, repeated, tag = "3")]
    tensor_values: Vec<TensorProto>,
    #[prost(message, repeated, tag = "5")]
    sequence_values: Vec<SequenceProto>,
    #[prost(message, repeated, tag = "7")]
    optional_values: Vec<OptionalProto>,
}

/// `onnx-data.proto`'s `OptionalProto` (the fields Kiln reads).
#[derive(Clone, PartialEq, Message)]
struct OptionalProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(int32, optional, tag = "2")]
    elem_type: Option<i32>,
    #[prost(message, optional, tag = "3")]
    tensor_value: Option<TensorProto>,
    #[prost(message, optional, tag = "5")]
    sequence_value: Option<SequenceProto>,
    #[prost(message, optional, boxed, tag = "7")]
    optional_value: Option<Box<OptionalProto>>,
}

// `elem_type` codes of SequenceProto / OptionalProto.
const ELEM_TENSOR: i32 = 1;
const ELEM_SPARSE: i32 = 2;
const ELEM_SEQUENCE: i32 = 3;
const ELEM_MAP: i32 = 4;
const ELEM_OPTIONAL: i32 = 5;

/// A value of an ONNX graph input or output.
#[derive(Clone, Debug, PartialEq)]
pub enum OnnxValue {
    Tensor(Tensor),
    /// A sequence of tensors.
    Sequence(Vec<Tensor>),
    /// An optional: absent, or a tensor or sequence.
    Optional(Option<Box<OnnxValue>>),
}

/// What a sequence or optional graph input holds, fixed at compile time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueSpec {
    Tensor(TensorType),
    /// One type per element (the count is the sequence's length).
    Sequence(Vec<TensorType>),
    /// Absent, or present with this value.
    Optional(Option<Box<ValueSpec>>),
}

/// Which kind of value a graph input or output is declared to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    Tensor,
    Sequence,
    Optional,
}

impl ValueKind {
    /// The kind of a declared type (a tensor when undeclared).
    pub fn of(ty: Option<&TypeProto>) -> ValueKind {
        match ty.and_then(|t| t.value.as_ref()) {
            Some(TypeValue::SequenceType(_)) => ValueKind::Sequence,
            Some(TypeValue::OptionalType(_)) => ValueKind::Optional,
            _ => ValueKind::Tensor,
        }
    }
}

impl OnnxValue {
    /// The spec an input holding this value compiles for.
    pub fn spec(&self) -> ValueSpec {
        match self {
            OnnxValue::Tensor(t) => ValueSpec::Tensor(t.ty.clone()),
            OnnxValue::Sequence(ts) => ValueSpec::Sequence(ts.iter().map(|t| t.ty.clone()).collect()),
            OnnxValue::Optional(v) => ValueSpec::Optional(v.as_ref().map(|v| Box::new(v.spec()))),
        }
    }

    /// The tensors of the value as the compiled model takes or gives them, with their names
    /// (see the module doc).
    pub fn flatten(&self, name: &str) -> Vec<(String, Tensor)> {
        match self {
            OnnxValue::Tensor(t) => vec![(name.to_string(), t.clone())],
            OnnxValue::Sequence(ts) => ts.iter().enumerate().map(|(i, t)| (element_name(name, i), t.clone())).collect(),
            OnnxValue::Optional(None) => Vec::new(),
            OnnxValue::Optional(Some(v)) => v.flatten(name),
        }
    }
}

/// The name of element `i` of sequence `name` at the compiled-model boundary.
pub fn element_name(name: &str, i: usize) -> String {
    format!("{name}[{i}]")
}

/// Decodes a `TensorProto`, `SequenceProto` or `OptionalProto` file, by `kind`.
pub fn decode_value(bytes: &[u8], kind: ValueKind) -> Result<OnnxValue, ImportError> {
    match kind {
        ValueKind::Tensor => Ok(OnnxValue::Tensor(crate::decode_tensor_proto(bytes)?)),
        ValueKind::Sequence => sequence(&SequenceProto::decode(bytes).map_err(|e| not_a("sequence", e))?),
        ValueKind::Optional => optional(&OptionalProto::decode(bytes).map_err(|e| not_a("optional", e))?),
    }
}

fn not_a(kind: &str, e: prost::DecodeError) -> ImportError {
    let proto = if kind == "sequence" { "SequenceProto" } else { "OptionalProto" };
    ImportError::Tensor { tensor: format!("<{kind} file>"), message: format!("not a valid {proto}: {e}") }
}

fn tensor(t: &TensorProto) -> Result<Tensor, ImportError> {
    let name = t.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "<tensor file>".to_string());
    let mut ext = ExternalStore::new(None)?;
    decode_tensor(t, &name, &mut ext)
}

fn kind_name(code: i32) -> &'static str {
    match code {
        ELEM_SPARSE => "sparse tensors",
        ELEM_SEQUENCE => "sequences",
        ELEM_MAP => "maps",
        ELEM_OPTIONAL => "optionals",
        _ => "values of an unknown kind",
    }
}

fn sequence(s: &SequenceProto) -> Result<OnnxValue, ImportError> {
    let code = s.elem_type.unwrap_or(0);
    let nested = !s.sequence_values.is_empty() || !s.optional_values.is_empty();
    if (code != ELEM_TENSOR && code != 0) || nested {
        let code = if nested && code == 0 { ELEM_SEQUENCE } else { code };
        return Err(ImportError::Unsupported(format!(
            "a sequence of {}: only sequences of tensors are supported",
            kind_name(code)
        )));
    }
    Ok(OnnxValue::Sequence(s.tensor_values.iter().map(tensor).collect::<Result<_, _>>()?))
}

fn optional(o: &OptionalProto) -> Result<OnnxValue, ImportError> {
    let v = match (o.elem_type.unwrap_or(0), &o.tensor_value, &o.sequence_value) {
        (_, Some(t), _) => Some(Box::new(OnnxValue::Tensor(tensor(t)?))),
        (_, None, Some(s)) => Some(Box::new(sequence(s)?)),
        (_, None, None) if o.optional_value.is_some() => {
            return Err(ImportError::Unsupported("an optional of an optional is not supported".into()))
        }
        (0 | ELEM_TENSOR | ELEM_SEQUENCE, None, None) => None,
        (code, None, None) => {
            return Err(ImportError::Unsupported(format!(
                "an optional of {}: only optional tensors and sequences are supported",
                kind_name(code)
            )))
        }
    };
    Ok(OnnxValue::Optional(v))
}

/// The element dtype a declared sequence type names (or `None` when it does not say).
pub(crate) fn declared_elem_dtype(ty: &TypeProto) -> Option<DType> {
    let elem = match ty.value.as_ref()? {
        TypeValue::SequenceType(s) => s.elem_type.as_deref()?,
        TypeValue::OptionalType(o) => return declared_elem_dtype(o.elem_type.as_deref()?),
        TypeValue::TensorType(t) => return dtype_of(t.elem_type()).ok(),
        _ => return None,
    };
    match elem.value.as_ref()? {
        TypeValue::TensorType(t) => dtype_of(t.elem_type()).ok(),
        _ => None,
    }
}
