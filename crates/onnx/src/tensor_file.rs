//! Standalone `TensorProto` files (the `input_0.pb` / `output_0.pb` of ONNX's test data).

use prost::Message;

use crate::data::{decode_tensor, ExternalStore};
use crate::proto::TensorProto;
use crate::ImportError;

/// Decodes a serialized `TensorProto` into a tensor.
pub fn decode_tensor_proto(bytes: &[u8]) -> Result<kiln_ir::Tensor, ImportError> {
    let t = TensorProto::decode(bytes)?;
    let name = t.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "<tensor file>".to_string());
    let mut ext = ExternalStore::new(None)?;
    decode_tensor(&t, &name, &mut ext)
}
