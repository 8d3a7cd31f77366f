//! Reading and writing tensors: `.npy` files and ONNX `TensorProto` `.pb` files.

use std::path::Path;

use kiln::ir::{DType, Data};
use kiln::DTypeCode;
use kiln::{Tensor, TensorRef};
use npyz::WriterBuilder;

/// A tensor read from a file, ready to hand to a session.
pub struct HostTensor {
    pub dtype: DTypeCode,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl HostTensor {
    pub fn as_ref(&self) -> TensorRef<'_> {
        TensorRef { dtype: self.dtype, shape: &self.shape, data: &self.data }
    }
}

/// A tensor already read (an element of a sequence input).
pub fn host(t: &kiln::ir::Tensor) -> HostTensor {
    from_ir(t)
}

fn from_ir(t: &kiln::ir::Tensor) -> HostTensor {
    HostTensor { dtype: t.dtype().code(), shape: t.shape().to_vec(), data: t.data.to_vec() }
}

fn read_npy(bytes: &[u8]) -> Result<kiln::ir::Tensor, String> {
    let npy = npyz::NpyFile::new(bytes).map_err(|e| format!("not a valid .npy file: {e}"))?;
    if npy.order() != npyz::Order::C {
        return Err("Fortran-ordered .npy arrays are not supported; save with order='C'".into());
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let type_str = match npy.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        other => return Err(format!("structured .npy dtype {other:?} is not supported")),
    };
    macro_rules! read {
        ($v:ident, $t:ty) => {
            Data::$v(npy.into_vec::<$t>().map_err(|e| e.to_string())?)
        };
    }
    let data = match type_str.trim_start_matches(['<', '|', '=']) {
        "f4" => read!(F32, f32),
        "f8" => read!(F64, f64),
        "f2" => read!(F16, half::f16),
        "i1" => read!(I8, i8),
        "u1" => read!(U8, u8),
        "i2" => read!(I16, i16),
        "u2" => read!(U16, u16),
        "i4" => read!(I32, i32),
        "u4" => read!(U32, u32),
        "i8" => read!(I64, i64),
        "u8" => read!(U64, u64),
        "b1" => read!(Bool, bool),
        other => {
            return Err(format!(
                ".npy dtype `{other}` is not supported (use a float16/32/64, (u)int8/16/32/64 or bool array)"
            ))
        }
    };
    if data.len() != shape.iter().product::<usize>() {
        return Err("the .npy data length does not match its shape".into());
    }
    Ok(kiln::ir::Tensor::from_data(shape, data))
}

/// Reads a `.npy` or `.pb` file.
pub fn read(path: &Path) -> Result<HostTensor, String> {
    read_ir(path).map(|t| from_ir(&t))
}

/// Reads a `.npy` or `.pb` file as an IR tensor.
pub fn read_ir(path: &Path) -> Result<kiln::ir::Tensor, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => read_npy(&bytes),
        Some("pb") => kiln::read_tensor_proto(&bytes).map_err(|e| e.to_string()),
        _ => Err("unknown tensor file type (expected .npy or .pb)".into()),
    }
}

/// Deterministic pseudo-random input for a spec: floats in [-1, 1), integers in [0, 8).
pub fn random(spec: &kiln::TensorSpec, seed: u64) -> HostTensor {
    let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
    let n: usize = shape.iter().product();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let dtype = DType::from_code(DTypeCode::from_i32(spec.dtype).expect("validated")).unwrap_or(DType::F32);
    let data = match dtype {
        DType::F32 => Data::F32((0..n).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect()),
        DType::Bool => Data::Bool((0..n).map(|_| next() % 2 == 1).collect()),
        d if d.is_float() => {
            let v: Vec<f64> = (0..n).map(|_| (next() >> 40) as f64 / (1u64 << 23) as f64 - 1.0).collect();
            Data::from_f64s(d, &v)
        }
        d => Data::from_i64s(d, &(0..n).map(|_| (next() % 8) as i64).collect::<Vec<_>>()),
    };
    from_ir(&kiln::ir::Tensor::from_data(shape, data))
}

/// Whether `.npy` (numpy) has the element type: not bfloat16, the float8/float4 types or the
/// 4- and 2-bit integers.
pub fn npy_holds(dtype: DTypeCode) -> bool {
    DType::from_code(dtype).is_some_and(|d| d != DType::BF16 && !d.is_small())
}

/// Writes an output as an ONNX `TensorProto` `.pb`, with its exact element type.
pub fn write_pb(path: &Path, t: &Tensor) -> Result<(), String> {
    let dtype = DType::from_code(t.dtype).ok_or_else(|| format!("output `{}`: unknown dtype", t.name))?;
    let ir = kiln::ir::Tensor::from_bytes(kiln::ir::TensorType::new(dtype, t.shape.clone()), t.data.clone().into())
        .map_err(|e| format!("output `{}`: {e}", t.name))?;
    std::fs::write(path, kiln::write_tensor_proto(&ir, &t.name)).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Writes an output as `.npy` (bfloat16 and the small float types widened to float32, the 4-
/// and 2-bit integers one per byte: `--output-format pb` keeps their types).
pub fn write_npy(path: &Path, t: &Tensor) -> Result<(), String> {
    let err = |e: std::io::Error| format!("writing {}: {e}", path.display());
    let file = std::fs::File::create(path).map_err(err)?;
    let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
    let w = std::io::BufWriter::new(file);
    macro_rules! dump {
        ($ty:ty, $n:expr, $conv:expr) => {{
            let mut wr =
                npyz::WriteOptions::<$ty>::new().default_dtype().shape(&shape).writer(w).begin_nd().map_err(err)?;
            wr.extend(t.data.chunks_exact($n).map($conv)).map_err(err)?;
            wr.finish().map_err(err)
        }};
    }
    macro_rules! le {
        ($ty:ty, $n:expr) => {
            dump!($ty, $n, |c: &[u8]| <$ty>::from_le_bytes(c.try_into().unwrap()))
        };
    }
    match t.dtype {
        DTypeCode::F32 => le!(f32, 4),
        DTypeCode::F64 => le!(f64, 8),
        DTypeCode::F16 => le!(half::f16, 2),
        // numpy has no bfloat16: widen to float32 (exact).
        DTypeCode::BF16 => dump!(f32, 2, |c: &[u8]| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()),
        DTypeCode::I8 => le!(i8, 1),
        DTypeCode::U8 => le!(u8, 1),
        DTypeCode::I16 => le!(i16, 2),
        DTypeCode::U16 => le!(u16, 2),
        DTypeCode::I32 => le!(i32, 4),
        DTypeCode::U32 => le!(u32, 4),
        DTypeCode::I64 => le!(i64, 8),
        DTypeCode::U64 => le!(u64, 8),
        DTypeCode::Bool => dump!(bool, 1, |c: &[u8]| c[0] != 0),
        // numpy has none of the small types: floats widen to float32 (exact), the 4- and 2-bit
        // integers are written one per byte as int8/uint8 (Kiln keeps them unpacked).
        DTypeCode::I4 | DTypeCode::I2 => le!(i8, 1),
        DTypeCode::U4 | DTypeCode::U2 => le!(u8, 1),
        code => {
            let f = DType::from_code(code).and_then(DType::minifloat).expect("the other codes are small floats");
            dump!(f32, 1, |c: &[u8]| f.decode(c[0]))
        }
    }
}

/// The first `n` elements, for printing: `[0.25, -1.5, …]`.
pub fn preview(t: &Tensor, n: usize) -> String {
    let size = t.dtype.size();
    let count = t.data.len() / size.max(1);
    let Some(dtype) = DType::from_code(t.dtype) else { return format!("[{count} elements]") };
    let head = Data::from_le_bytes(dtype, &t.data[..n.min(count) * size]);
    let items: Vec<String> = match head {
        Data::Bool(v) => v.iter().map(|b| b.to_string()).collect(),
        Data::U64(v) => v.iter().map(|x| x.to_string()).collect(),
        Data::I64(v) => v.iter().map(|x| x.to_string()).collect(),
        d if dtype.is_float() => d.to_f64_vec().iter().map(|x| format!("{x:.6}")).collect(),
        d => d.to_i64_vec().iter().map(|x| x.to_string()).collect(),
    };
    let more = if count > n { ", …" } else { "" };
    format!("[{}{more}]", items.join(", "))
}
