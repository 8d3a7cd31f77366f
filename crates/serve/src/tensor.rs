//! Tensors as the protocol carries them: its type names, shapes as `i64`, elements as JSON
//! numbers, as gRPC's typed repeated fields, or as raw little-endian bytes (Triton's binary
//! tensor extension and gRPC's `raw_*_contents`).

use bytes::Bytes;
use kiln_runtime::DType;
use serde_json::Value;

use crate::generated::InferTensorContents;
use crate::ServeError;

/// The protocol's name of a dtype; `None` for those it has no name for (float8, 4-bit, …).
pub fn datatype_name(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::Bool => "BOOL",
        DType::U8 => "UINT8",
        DType::U16 => "UINT16",
        DType::U32 => "UINT32",
        DType::U64 => "UINT64",
        DType::I8 => "INT8",
        DType::I16 => "INT16",
        DType::I32 => "INT32",
        DType::I64 => "INT64",
        DType::F16 => "FP16",
        DType::BF16 => "BF16",
        DType::F32 => "FP32",
        DType::F64 => "FP64",
        _ => return None,
    })
}

/// The dtype the protocol's type name `s` names.
pub fn datatype_from_name(s: &str) -> Option<DType> {
    DType::ALL.iter().copied().find(|&d| datatype_name(d) == Some(s))
}

/// One input of a request, its bytes little-endian and row-major.
#[derive(Clone, Debug)]
pub struct Input {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Bytes,
}

/// Where an input's elements come from, as a request gives them.
pub enum Elements<'a> {
    Json(&'a Value),
    Raw(Bytes),
    Typed(&'a InferTensorContents),
}

/// Checks a request's input header (type name and shape) against the limit on elements, and
/// decodes its elements into an [`Input`].
pub fn decode_input(
    name: &str,
    datatype: &str,
    shape: &[i64],
    elements: Elements,
    max_elements: usize,
) -> Result<Input, ServeError> {
    let bad = |m: String| ServeError::bad_request(format!("input `{name}`: {m}"));
    let dtype = datatype_from_name(datatype).ok_or_else(|| match datatype {
        "BYTES" => bad("datatype BYTES (strings) is not supported by Kiln's models".into()),
        _ => bad(format!("unknown datatype `{datatype}`")),
    })?;
    let shape: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("shape {shape:?} has a negative dim"))))
        .collect::<Result<_, _>>()?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let count = match count {
        Some(n) if n <= max_elements => n,
        _ => {
            return Err(bad(format!(
                "shape {shape:?} has more elements than the server's limit of {max_elements} (--max-tensor-elements)"
            )))
        }
    };
    let data = match elements {
        Elements::Raw(b) => b,
        Elements::Json(v) => Bytes::from(json_elements(v, dtype, count).map_err(bad)?),
        Elements::Typed(c) => Bytes::from(typed_elements(c, dtype, count).map_err(bad)?),
    };
    let want = count * dtype.size();
    if data.len() != want {
        return Err(bad(format!("{} bytes of data for shape {shape:?} of {datatype} ({want} bytes)", data.len())));
    }
    Ok(Input { name: name.to_string(), dtype, shape, data })
}

/// Appends one element, given as a JSON number or bool, to `out` as `dtype`'s bytes.
fn push_json(out: &mut Vec<u8>, v: &Value, dtype: DType) -> Result<(), String> {
    let int = || -> Result<i128, String> {
        v.as_i64()
            .map(i128::from)
            .or_else(|| v.as_u64().map(i128::from))
            .ok_or_else(|| format!("{v} is not an integer"))
    };
    let ranged = |lo: i128, hi: i128| -> Result<i128, String> {
        let x = int()?;
        if x < lo || x > hi {
            return Err(format!("{x} is out of range for {}", datatype_name(dtype).unwrap_or("?")));
        }
        Ok(x)
    };
    let float = || v.as_f64().ok_or_else(|| format!("{v} is not a number"));
    match dtype {
        DType::Bool => out.push(v.as_bool().ok_or_else(|| format!("{v} is not a bool"))? as u8),
        DType::U8 => out.push(ranged(0, u8::MAX.into())? as u8),
        DType::I8 => out.extend((ranged(i8::MIN.into(), i8::MAX.into())? as i8).to_le_bytes()),
        DType::U16 => out.extend((ranged(0, u16::MAX.into())? as u16).to_le_bytes()),
        DType::I16 => out.extend((ranged(i16::MIN.into(), i16::MAX.into())? as i16).to_le_bytes()),
        DType::U32 => out.extend((ranged(0, u32::MAX.into())? as u32).to_le_bytes()),
        DType::I32 => out.extend((ranged(i32::MIN.into(), i32::MAX.into())? as i32).to_le_bytes()),
        DType::U64 => out.extend((ranged(0, u64::MAX.into())? as u64).to_le_bytes()),
        DType::I64 => out.extend((ranged(i64::MIN.into(), i64::MAX.into())? as i64).to_le_bytes()),
        DType::F16 => out.extend(half::f16::from_f64(float()?).to_le_bytes()),
        DType::BF16 => out.extend(half::bf16::from_f64(float()?).to_le_bytes()),
        DType::F32 => out.extend((float()? as f32).to_le_bytes()),
        DType::F64 => out.extend(float()?.to_le_bytes()),
        _ => return Err(format!("datatype {} has no JSON form", dtype.name())),
    }
    Ok(())
}

/// A JSON tensor's elements (the protocol allows them flat or nested, row-major) as bytes:
/// exactly `count` of them.
fn json_elements(v: &Value, dtype: DType, count: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(count * dtype.size());
    let mut seen = 0usize;
    // An explicit stack: a deeply nested body must not overflow the thread's stack.
    let mut stack = vec![v];
    while let Some(x) = stack.pop() {
        match x {
            Value::Array(items) => stack.extend(items.iter().rev()),
            leaf => {
                seen += 1;
                if seen > count {
                    return Err(format!("more than the shape's {count} elements in `data`"));
                }
                push_json(&mut out, leaf, dtype).map_err(|e| format!("element {}: {e}", seen - 1))?;
            }
        }
    }
    if seen != count {
        return Err(format!("{seen} elements in `data`, the shape has {count}"));
    }
    Ok(out)
}

/// gRPC's typed contents of a tensor as bytes: the repeated field its dtype uses.
fn typed_elements(c: &InferTensorContents, dtype: DType, count: usize) -> Result<Vec<u8>, String> {
    fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
        v: &[S],
        bytes: impl Fn(T) -> Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        v.iter()
            .map(|&x| T::try_from(x).map(&bytes).map_err(|_| format!("{x} is out of range")))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.concat())
    }
    let (field, n) = match dtype {
        DType::Bool => ("bool_contents", c.bool_contents.len()),
        DType::I8 | DType::I16 | DType::I32 => ("int_contents", c.int_contents.len()),
        DType::I64 => ("int64_contents", c.int64_contents.len()),
        DType::U8 | DType::U16 | DType::U32 => ("uint_contents", c.uint_contents.len()),
        DType::U64 => ("uint64_contents", c.uint64_contents.len()),
        DType::F32 => ("fp32_contents", c.fp32_contents.len()),
        DType::F64 => ("fp64_contents", c.fp64_contents.len()),
        _ => return Err(format!("datatype {} must come as raw_input_contents", datatype_name(dtype).unwrap_or("?"))),
    };
    if n != count {
        return Err(format!("{n} elements in contents.{field}, the shape has {count}"));
    }
    match dtype {
        DType::Bool => Ok(c.bool_contents.iter().map(|&b| b as u8).collect()),
        DType::I8 => narrow(&c.int_contents, |x: i8| x.to_le_bytes().to_vec()),
        DType::I16 => narrow(&c.int_contents, |x: i16| x.to_le_bytes().to_vec()),
        DType::I32 => Ok(c.int_contents.iter().flat_map(|x| x.to_le_bytes()).collect()),
        DType::I64 => Ok(c.int64_contents.iter().flat_map(|x| x.to_le_bytes()).collect()),
        DType::U8 => narrow(&c.uint_contents, |x: u8| vec![x]),
        DType::U16 => narrow(&c.uint_contents, |x: u16| x.to_le_bytes().to_vec()),
        DType::U32 => Ok(c.uint_contents.iter().flat_map(|x| x.to_le_bytes()).collect()),
        DType::U64 => Ok(c.uint64_contents.iter().flat_map(|x| x.to_le_bytes()).collect()),
        DType::F32 => Ok(c.fp32_contents.iter().flat_map(|x| x.to_le_bytes()).collect()),
        _ => Ok(c.fp64_contents.iter().flat_map(|x| x.to_le_bytes()).collect()),
    }
}

/// An output's elements as JSON values (a float that JSON cannot hold, NaN or ±inf, as null).
pub fn json_values(dtype: DType, data: &[u8]) -> Vec<Value> {
    let w = dtype.size().max(1);
    data.chunks_exact(w)
        .map(|b| match dtype {
            DType::Bool => Value::Bool(b[0] != 0),
            DType::U8 => b[0].into(),
            DType::I8 => (b[0] as i8).into(),
            DType::U16 => u16::from_le_bytes([b[0], b[1]]).into(),
            DType::I16 => i16::from_le_bytes([b[0], b[1]]).into(),
            DType::U32 => u32::from_le_bytes(b.try_into().expect("width")).into(),
            DType::I32 => i32::from_le_bytes(b.try_into().expect("width")).into(),
            DType::U64 => u64::from_le_bytes(b.try_into().expect("width")).into(),
            DType::I64 => i64::from_le_bytes(b.try_into().expect("width")).into(),
            DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64().into(),
            DType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f64().into(),
            DType::F32 => f64::from(f32::from_le_bytes(b.try_into().expect("width"))).into(),
            _ => f64::from_le_bytes(b.try_into().expect("width")).into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_flat_json_give_the_same_bytes() {
        let nested = serde_json::json!([[1.5, -2.0], [0.25, 8.0]]);
        let flat = serde_json::json!([1.5, -2.0, 0.25, 8.0]);
        let a = decode_input("x", "FP32", &[2, 2], Elements::Json(&nested), 100).unwrap();
        let b = decode_input("x", "FP32", &[2, 2], Elements::Json(&flat), 100).unwrap();
        assert_eq!(a.data, b.data);
        let want: Vec<u8> = [1.5f32, -2.0, 0.25, 8.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(&a.data[..], &want[..]);
        assert_eq!(
            json_values(DType::F32, &a.data),
            vec![1.5.into(), (-2.0).into(), 0.25.into(), 8.0.into()] as Vec<Value>
        );
    }

    #[test]
    fn bad_tensors_are_named() {
        let v = serde_json::json!([1, 2, 3]);
        let e = |r: Result<Input, ServeError>| r.unwrap_err().message;
        assert_eq!(
            e(decode_input("ids", "INT64", &[2, 2], Elements::Json(&v), 100)),
            "input `ids`: 3 elements in `data`, the shape has 4"
        );
        assert_eq!(
            e(decode_input("ids", "UINT8", &[3], Elements::Json(&serde_json::json!([1, 256, 3])), 100)),
            "input `ids`: element 1: 256 is out of range for UINT8"
        );
        assert!(e(decode_input("ids", "INT64", &[1 << 40, 1 << 40], Elements::Json(&v), 100))
            .contains("--max-tensor-elements"));
        assert!(e(decode_input("ids", "INT64", &[-1], Elements::Json(&v), 100)).contains("negative"));
        assert!(e(decode_input("ids", "COMPLEX", &[3], Elements::Json(&v), 100)).contains("unknown datatype"));
        assert!(
            e(decode_input("ids", "FP32", &[2], Elements::Raw(Bytes::from_static(&[0; 7])), 100)).contains("7 bytes")
        );
    }

    #[test]
    fn typed_contents_narrow_with_range_checks() {
        let c = InferTensorContents { int_contents: vec![-3, 127], ..Default::default() };
        let t = decode_input("x", "INT8", &[2], Elements::Typed(&c), 10).unwrap();
        assert_eq!(&t.data[..], &[0xfd, 0x7f]);
        let c = InferTensorContents { int_contents: vec![300], ..Default::default() };
        assert!(decode_input("x", "INT8", &[1], Elements::Typed(&c), 10)
            .unwrap_err()
            .message
            .contains("300 is out of range"));
    }
}
