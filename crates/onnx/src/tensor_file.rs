//! Standalone `TensorProto` files (the `input_0.pb` / `output_0.pb` of ONNX's test data).

use prost::Message;

use crate::data::{decode_tensor, pack, packing, ExternalStore};
use crate::proto::TensorProto;
use crate::ImportError;

/// Decodes a serialized `TensorProto` into a tensor.
pub fn decode_tensor_proto(bytes: &[u8]) -> Result<kiln_ir::Tensor, ImportError> {
    let t = TensorProto::decode(bytes)?;
    let name = t.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "<tensor file>".to_string());
    let mut ext = ExternalStore::new(None)?;
    decode_tensor(&t, &name, &mut ext)
}

/// Encodes a tensor as a serialized `TensorProto` named `name`, with its exact ONNX element
/// type: the data little-endian in `raw_data`, the 4- and 2-bit types packed as ONNX packs
/// them (the inverse of [`decode_tensor_proto`]).
pub fn encode_tensor_proto(t: &kiln_ir::Tensor, name: &str) -> Vec<u8> {
    let dtype = t.dtype();
    let raw = if packing(dtype) > 1 { pack(dtype, &t.data) } else { t.data.to_vec() };
    let proto = TensorProto {
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(dtype.code() as i32),
        name: Some(name.to_string()),
        raw_data: Some(raw.into()),
        ..Default::default()
    };
    proto.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use kiln_ir::{DType, Data, Tensor};

    use super::*;

    #[test]
    fn every_dtype_round_trips_exactly() {
        // One tensor per dtype, through its byte form: encoding then decoding gives back the
        // same element type, shape and bytes (the 4- and 2-bit types packed on the way).
        for &dtype in DType::ALL.iter() {
            let code = dtype.code();
            let n = 7;
            let bytes: Vec<u8> = (0..n * dtype.size())
                .map(|i| match dtype {
                    DType::Bool => (i % 2) as u8,
                    d if packing(d) == 4 => (i % 4) as u8,
                    d if packing(d) == 2 => (i % 16) as u8,
                    _ => (i * 37 % 251) as u8,
                })
                .collect();
            let t = Tensor::from_bytes(kiln_ir::TensorType::new(dtype, vec![n]), bytes.into()).unwrap();
            let back = decode_tensor_proto(&encode_tensor_proto(&t, "y")).unwrap();
            assert_eq!(back.dtype(), dtype, "{code:?}");
            assert_eq!(back.shape(), t.shape(), "{code:?}");
            let want = if matches!(dtype, DType::I4 | DType::I2) {
                // Signed 4/2-bit elements come back sign-extended into their byte.
                let bits = 8 / packing(dtype) as u32;
                t.data.iter().map(|&b| (((b << (8 - bits)) as i8) >> (8 - bits)) as u8).collect::<Vec<_>>()
            } else {
                t.data.to_vec()
            };
            assert_eq!(back.data.to_vec(), want, "{code:?}");
        }
        // A hand-packed case: int4 [-1, 2, 7] packs to [0x2F, 0x07].
        let t = Tensor::from_data(vec![3], Data::from_i64s(DType::I4, &[-1, 2, 7]));
        let p = TensorProto::decode(&encode_tensor_proto(&t, "q")[..]).unwrap();
        assert_eq!(p.raw_data.unwrap().to_vec(), [0x2F, 0x07]);
        assert_eq!(p.data_type, Some(22));
    }
}
