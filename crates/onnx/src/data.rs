//! Tensor decoding: dtypes, dims, raw/typed/external data.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use kiln_ir::{DType, Tensor, TensorType};

use crate::proto::tensor_proto::{DataLocation, DataType};
use crate::proto::TensorProto;
use crate::ImportError;

/// The largest element count any tensor may have (2^40): keeps every byte size and every
/// product of two dims far from overflowing.
pub(crate) const MAX_ELEMS: usize = 1 << 40;

/// The ONNX element types Kiln reads, for error messages.
pub(crate) const SUPPORTED_DTYPES: &str =
    "float32, float64, float16, bfloat16, int8, uint8, int16, uint16, int32, uint32, int64, uint64, bool, \
     float8e4m3fn, float8e4m3fnuz, float8e5m2, float8e5m2fnuz, float8e8m0, float4e2m1, int4, uint4, int2, uint2";

/// Maps an ONNX element type to a Kiln dtype, or gives the ONNX name of an unsupported one.
pub(crate) fn dtype_of(code: i32) -> Result<DType, String> {
    match DataType::try_from(code) {
        Ok(DataType::Float) => Ok(DType::F32),
        Ok(DataType::Int32) => Ok(DType::I32),
        Ok(DataType::Int64) => Ok(DType::I64),
        Ok(DataType::Bool) => Ok(DType::Bool),
        Ok(DataType::Double) => Ok(DType::F64),
        Ok(DataType::Float16) => Ok(DType::F16),
        Ok(DataType::Bfloat16) => Ok(DType::BF16),
        Ok(DataType::Int8) => Ok(DType::I8),
        Ok(DataType::Uint8) => Ok(DType::U8),
        Ok(DataType::Int16) => Ok(DType::I16),
        Ok(DataType::Uint16) => Ok(DType::U16),
        Ok(DataType::Uint32) => Ok(DType::U32),
        Ok(DataType::Uint64) => Ok(DType::U64),
        Ok(DataType::Float8e4m3fn) => Ok(DType::F8E4M3FN),
        Ok(DataType::Float8e4m3fnuz) => Ok(DType::F8E4M3FNUZ),
        Ok(DataType::Float8e5m2) => Ok(DType::F8E5M2),
        Ok(DataType::Float8e5m2fnuz) => Ok(DType::F8E5M2FNUZ),
        Ok(DataType::Float8e8m0) => Ok(DType::F8E8M0),
        Ok(DataType::Float4e2m1) => Ok(DType::F4E2M1),
        Ok(DataType::Int4) => Ok(DType::I4),
        Ok(DataType::Uint4) => Ok(DType::U4),
        Ok(DataType::Int2) => Ok(DType::I2),
        Ok(DataType::Uint2) => Ok(DType::U2),
        Ok(other) => Err(other.as_str_name().to_string()),
        Err(_) => Err(format!("with unknown code {code}")),
    }
}

/// The element count of `shape`, or `None` above [`MAX_ELEMS`] (or on overflow).
pub(crate) fn checked_numel(shape: &[usize]) -> Option<usize> {
    let mut n: usize = 1;
    for &d in shape {
        n = n.checked_mul(d)?;
    }
    // A zero dim anywhere makes the product 0 even when other dims are huge; bound every dim
    // too, so later products (broadcasts, concats) stay in range.
    (n <= MAX_ELEMS && shape.iter().all(|&d| d <= MAX_ELEMS)).then_some(n)
}

/// Converts ONNX dims (i64) to a checked static shape.
pub(crate) fn dims_to_shape(dims: &[i64]) -> Result<Vec<usize>, String> {
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dim {d} in {dims:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    checked_numel(&shape).ok_or_else(|| format!("dims {dims:?} have more than 2^40 elements"))?;
    Ok(shape)
}

/// External data files of one model, each mmapped once.
pub(crate) struct ExternalStore {
    /// The model's directory, canonicalized; `None` for a model given as bytes only.
    base: Option<PathBuf>,
    files: HashMap<PathBuf, Bytes>,
}

impl ExternalStore {
    pub fn new(base: Option<&Path>) -> Result<Self, ImportError> {
        let base = match base {
            Some(b) => Some(b.canonicalize().map_err(|source| ImportError::Io { path: b.to_path_buf(), source })?),
            None => None,
        };
        Ok(ExternalStore { base, files: HashMap::new() })
    }

    fn resolve(&self, location: &str) -> Result<PathBuf, String> {
        let base = self
            .base
            .as_ref()
            .ok_or("the model was given as bytes, without its directory: use import_path or import_model_in_dir")?;
        let rel = Path::new(location);
        if location.is_empty() {
            return Err("`location` is empty".into());
        }
        if rel.components().any(|c| matches!(c, Component::RootDir | Component::Prefix(_))) {
            return Err(format!("location `{location}` is absolute; it must be relative to the model's directory"));
        }
        let joined = base.join(rel);
        let canon = joined.canonicalize().map_err(|e| format!("cannot open `{}`: {e}", joined.display()))?;
        if !canon.starts_with(base) {
            return Err(format!("location `{location}` escapes the model's directory `{}`", base.display()));
        }
        Ok(canon)
    }

    /// The files read, by path relative to the model's directory, sorted.
    pub fn into_files(self) -> Vec<(String, Bytes)> {
        let mut files: Vec<(String, Bytes)> = self
            .files
            .into_iter()
            .map(|(path, bytes)| {
                let rel = match &self.base {
                    Some(b) => path.strip_prefix(b).unwrap_or(&path),
                    None => &path,
                };
                (rel.to_string_lossy().into_owned(), bytes)
            })
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        files
    }

    fn file(&mut self, location: &str) -> Result<Bytes, String> {
        let path = self.resolve(location)?;
        if let Some(b) = self.files.get(&path) {
            return Ok(b.clone());
        }
        let bytes = map_file(&path).map_err(|e| format!("cannot map `{}`: {e}", path.display()))?;
        self.files.insert(path, bytes.clone());
        Ok(bytes)
    }

    /// The bytes of a tensor stored outside the model, per its `external_data` entries.
    fn load(&mut self, t: &TensorProto, want: usize) -> Result<Bytes, String> {
        let (mut location, mut offset, mut length) = (None, 0usize, None);
        for kv in &t.external_data {
            let parse =
                |v: &str| v.trim().parse::<usize>().map_err(|_| format!("`{}` = `{v}` is not a byte count", kv.key()));
            match kv.key() {
                "location" => location = Some(kv.value().to_string()),
                "offset" => offset = parse(kv.value())?,
                "length" => length = Some(parse(kv.value())?),
                _ => {} // checksum, basepath (unused), …
            }
        }
        let location = location.ok_or("no `location` entry")?;
        let file = self.file(&location)?;
        if offset > file.len() {
            return Err(format!("offset {offset} is past the end of `{location}` ({} bytes)", file.len()));
        }
        let length = length.unwrap_or(file.len() - offset);
        let end = offset.checked_add(length).filter(|&e| e <= file.len()).ok_or_else(|| {
            format!("offset {offset} + length {length} is past the end of `{location}` ({} bytes)", file.len())
        })?;
        if length != want {
            return Err(format!("`{location}` holds {length} bytes for this tensor, its dims need {want}"));
        }
        Ok(file.slice(offset..end))
    }
}

/// Maps a whole file read-only and wraps it in `Bytes` (no copy).
pub(crate) fn map_file(path: &Path) -> std::io::Result<Bytes> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the mapping is read-only; like every mmap-based loader we assume the file is
    // not truncated or rewritten while the model is in use.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    Ok(Bytes::from_owner(map))
}

/// Elements per byte in ONNX's serialized layout: 2 for the 4-bit types, 4 for the 2-bit ones
/// (packed low bits first), 1 otherwise. Kiln keeps one element per byte.
pub(crate) fn packing(d: DType) -> usize {
    match d {
        DType::I4 | DType::U4 | DType::F4E2M1 => 2,
        DType::I2 | DType::U2 => 4,
        _ => 1,
    }
}

/// Unpacks `numel` elements of a packed type (see [`packing`]) to one byte each: 4-bit floats
/// keep their code, signed integers are sign-extended, unsigned ones zero-extended.
pub(crate) fn unpack(d: DType, packed: &[u8], numel: usize) -> Vec<u8> {
    let per = packing(d);
    let bits = 8 / per;
    let mask = (1u8 << bits) - 1;
    (0..numel)
        .map(|i| {
            let v = (packed[i / per] >> ((i % per) * bits)) & mask;
            if d.is_int() && d.is_signed() {
                (((v << (8 - bits)) as i8) >> (8 - bits)) as u8
            } else {
                v
            }
        })
        .collect()
}

/// Packs one-byte elements of a packed type into ONNX's layout (the inverse of [`unpack`]).
pub(crate) fn pack(d: DType, elems: &[u8]) -> Vec<u8> {
    let per = packing(d);
    let bits = 8 / per;
    let mask = (1u8 << bits) - 1;
    let mut out = vec![0u8; elems.len().div_ceil(per)];
    for (i, &e) in elems.iter().enumerate() {
        out[i / per] |= (e & mask) << ((i % per) * bits);
    }
    out
}

/// Decodes a `TensorProto` into a constant. `name` names it in errors (the proto's own name
/// may be empty, e.g. in a Constant node's attribute).
pub(crate) fn decode_tensor(t: &TensorProto, name: &str, ext: &mut ExternalStore) -> Result<Tensor, ImportError> {
    let err = |message: String| ImportError::Tensor { tensor: name.to_string(), message };
    let dtype =
        dtype_of(t.data_type()).map_err(|dtype| ImportError::UnsupportedDtype { tensor: name.to_string(), dtype })?;
    let shape = dims_to_shape(&t.dims).map_err(err)?;
    let numel = checked_numel(&shape).unwrap_or(0);
    let ty = TensorType::new(dtype, shape);
    // The serialized size (numel <= 2^40: no overflow): the 4- and 2-bit types are packed.
    let per = packing(dtype);
    let packed = numel.div_ceil(per);
    let nbytes = if per > 1 { packed } else { numel * dtype.size() };
    if t.segment.is_some() {
        return Err(err("segmented tensors are not supported".into()));
    }

    let bytes = if t.data_location() == DataLocation::External {
        ext.load(t, nbytes).map_err(|message| ImportError::ExternalData { tensor: name.to_string(), message })?
    } else if let Some(raw) = &t.raw_data {
        if raw.len() != nbytes {
            return Err(err(format!("raw_data has {} bytes, type {ty} needs {nbytes}", raw.len())));
        }
        raw.clone()
    } else {
        // The typed field each dtype is stored in; 8- and 16-bit types (f16/bf16 by their bit
        // patterns) are one element per int32, u32/u64 one per uint64.
        let (field, have) = match dtype {
            DType::F32 => ("float_data", t.float_data.len()),
            DType::F64 => ("double_data", t.double_data.len()),
            DType::I64 => ("int64_data", t.int64_data.len()),
            DType::U32 | DType::U64 => ("uint64_data", t.uint64_data.len()),
            _ => ("int32_data", t.int32_data.len()),
        };
        // The packed types hold one packed byte per int32.
        if have != packed {
            return Err(err(format!("{field} has {have} elements, type {ty} needs {packed}")));
        }
        let i32s = || t.int32_data.iter().copied();
        let v: Vec<u8> = match dtype {
            DType::F32 => t.float_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::F64 => t.double_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::I64 => t.int64_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::U64 => t.uint64_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::U32 => t.uint64_data.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect(),
            DType::I32 => i32s().flat_map(|x| x.to_le_bytes()).collect(),
            DType::Bool => i32s().map(|x| u8::from(x != 0)).collect(),
            DType::I8 | DType::U8 => i32s().map(|x| x as u8).collect(),
            DType::F8E4M3FN
            | DType::F8E4M3FNUZ
            | DType::F8E5M2
            | DType::F8E5M2FNUZ
            | DType::F8E8M0
            | DType::F4E2M1
            | DType::I4
            | DType::U4
            | DType::I2
            | DType::U2 => i32s().map(|x| x as u8).collect(),
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => {
                i32s().flat_map(|x| (x as u16).to_le_bytes()).collect()
            }
        };
        Bytes::from(v)
    };
    let bytes = if per > 1 { Bytes::from(unpack(dtype, &bytes, numel)) } else { bytes };
    // Bools are one byte, 0 or 1: normalise other non-zero bytes (copying only then).
    let bytes = if dtype == DType::Bool && bytes.iter().any(|&b| b > 1) {
        Bytes::from(bytes.iter().map(|&b| u8::from(b != 0)).collect::<Vec<u8>>())
    } else {
        bytes
    };
    Tensor::from_bytes(ty, bytes).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_types_unpack_and_pack_back() {
        // int4: -9..=15 wrapped, packed low nibble first (ONNX's test_cast_FLOAT_to_INT4 output).
        let packed = [135u8, 169, 203, 237, 15, 33, 67, 101, 135, 169, 203, 237, 15];
        let v = unpack(DType::I4, &packed, 25);
        let want: Vec<u8> = (-9i32..16).map(|x| (((x as u8) << 4) as i8 >> 4) as u8).collect();
        assert_eq!(v, want);
        assert_eq!(pack(DType::I4, &v), packed);
        // uint2: 1 2 3 0 1 2 3.
        let v = unpack(DType::U2, &[57, 57], 7);
        assert_eq!(v, [1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(pack(DType::U2, &v), [57, 57]);
        assert_eq!(unpack(DType::I2, &[0b1110_0100], 4), [0, 1, 0xFE, 0xFF]);
    }

    #[test]
    fn numel_is_checked() {
        assert_eq!(checked_numel(&[2, 3]), Some(6));
        assert_eq!(checked_numel(&[]), Some(1));
        assert_eq!(checked_numel(&[usize::MAX, 2]), None);
        assert_eq!(checked_numel(&[0, usize::MAX]), None);
        assert!(dims_to_shape(&[1 << 30, 1 << 30, 4]).is_err());
        assert!(dims_to_shape(&[-1]).is_err());
    }

    #[test]
    fn dtype_names() {
        assert_eq!(dtype_of(DataType::Double as i32), Ok(DType::F64));
        assert_eq!(dtype_of(DataType::Float8e5m2 as i32), Ok(DType::F8E5M2));
        assert_eq!(dtype_of(DataType::Float6e2m3 as i32), Err("FLOAT6E2M3".to_string()));
        assert_eq!(dtype_of(DataType::Bool as i32), Ok(DType::Bool));
    }
}
