//! Constant tensors: a type and shared, immutable little-endian bytes.

use bytes::Bytes;

use crate::{numel, DType, Shape, TensorType};

/// A dense row-major tensor value. Cloning shares the bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub ty: TensorType,
    pub data: Bytes,
}

/// Typed element storage, used by reference evaluation.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
    F64(Vec<f64>),
    F16(Vec<half::f16>),
    BF16(Vec<half::bf16>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    /// A small type ([`DType::is_small`]), one byte per element: a float's code, an INT4/INT2
    /// value as a sign-extended `i8`, a UINT4/UINT2 value (see [`kiln_abi::DTypeCode`]).
    Small(DType, Vec<u8>),
}

/// Runs `$body` with `$v` bound to the vector of any numeric (non-bool) variant.
macro_rules! with_numeric {
    ($data:expr, $v:ident => $body:expr, bool $b:ident => $bbody:expr) => {
        match $data {
            Data::F32($v) => $body,
            Data::I32($v) => $body,
            Data::I64($v) => $body,
            Data::F64($v) => $body,
            Data::F16($v) => $body,
            Data::BF16($v) => $body,
            Data::I8($v) => $body,
            Data::U8($v) => $body,
            Data::I16($v) => $body,
            Data::U16($v) => $body,
            Data::U32($v) => $body,
            Data::U64($v) => $body,
            Data::Small(_, $v) => $body,
            Data::Bool($b) => $bbody,
        }
    };
}

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::I32(_) => DType::I32,
            Data::I64(_) => DType::I64,
            Data::Bool(_) => DType::Bool,
            Data::F64(_) => DType::F64,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
            Data::I8(_) => DType::I8,
            Data::U8(_) => DType::U8,
            Data::I16(_) => DType::I16,
            Data::U16(_) => DType::U16,
            Data::U32(_) => DType::U32,
            Data::U64(_) => DType::U64,
            Data::Small(d, _) => *d,
        }
    }
    pub fn len(&self) -> usize {
        with_numeric!(self, v => v.len(), bool b => b.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Little-endian bytes of the elements (bools as 0/1).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        with_numeric!(self, v => v.iter().flat_map(|x| x.to_le_bytes()).collect(), bool b => b.iter().map(|&x| x as u8).collect())
    }
    /// Decodes little-endian bytes of `dtype` (the length must be a multiple of its size).
    pub fn from_le_bytes(dtype: DType, b: &[u8]) -> Data {
        macro_rules! dec {
            ($t:ty, $n:expr) => {
                b.chunks_exact($n).map(|c| <$t>::from_le_bytes(c.try_into().unwrap())).collect()
            };
        }
        match dtype {
            DType::F32 => Data::F32(dec!(f32, 4)),
            DType::I32 => Data::I32(dec!(i32, 4)),
            DType::I64 => Data::I64(dec!(i64, 8)),
            DType::Bool => Data::Bool(b.iter().map(|&x| x != 0).collect()),
            DType::F64 => Data::F64(dec!(f64, 8)),
            DType::F16 => Data::F16(dec!(half::f16, 2)),
            DType::BF16 => Data::BF16(dec!(half::bf16, 2)),
            DType::I8 => Data::I8(dec!(i8, 1)),
            DType::U8 => Data::U8(b.to_vec()),
            DType::I16 => Data::I16(dec!(i16, 2)),
            DType::U16 => Data::U16(dec!(u16, 2)),
            DType::U32 => Data::U32(dec!(u32, 4)),
            DType::U64 => Data::U64(dec!(u64, 8)),
            d => {
                debug_assert!(d.is_small());
                Data::Small(d, b.to_vec())
            }
        }
    }
    /// The elements as f64: exact for every type but i64/u64 beyond 2^53 (rounded).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            Data::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::Bool(v) => v.iter().map(|&b| b as u8 as f64).collect(),
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F64(v) => v.clone(),
            Data::I32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I8(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U8(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I16(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U16(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::Small(d, v) => match d.minifloat() {
                Some(f) => v.iter().map(|&c| f.decode(c) as f64).collect(),
                None if d.is_signed() => v.iter().map(|&x| x as i8 as f64).collect(),
                None => v.iter().map(|&x| x as f64).collect(),
            },
        }
    }
    /// The elements as i64: integers exactly (u64 by its bits), floats truncated toward zero
    /// (saturating), bools as 0/1.
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match self {
            Data::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I64(v) => v.clone(),
            Data::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I16(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U16(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U64(v) => v.iter().map(|&x| x as i64).collect(),
            Data::Bool(v) => v.iter().map(|&b| b as i64).collect(),
            Data::Small(d, v) if d.is_int() && d.is_signed() => v.iter().map(|&x| x as i8 as i64).collect(),
            Data::Small(d, v) if d.is_int() => v.iter().map(|&x| x as i64).collect(),
            _ => self.to_f64_vec().into_iter().map(|x| x as i64).collect(),
        }
    }
    /// Elements of `dtype` from f64 values: floats rounded to nearest, integers truncated
    /// toward zero and wrapped to the type's width (through a saturating i64; i32 saturates),
    /// bools as `x != 0`. Small floats are rounded to f32 first, then encoded saturating.
    pub fn from_f64s(dtype: DType, v: &[f64]) -> Data {
        let ints = || v.iter().map(|&x| x as i64);
        if let Some(f) = dtype.minifloat() {
            return Data::Small(dtype, v.iter().map(|&x| f.encode(x as f32, true)).collect());
        }
        match dtype {
            DType::I32 => Data::I32(v.iter().map(|&x| x as i32).collect()),
            DType::F32 => Data::F32(v.iter().map(|&x| x as f32).collect()),
            DType::F64 => Data::F64(v.to_vec()),
            DType::F16 => Data::F16(v.iter().map(|&x| half::f16::from_f64(x)).collect()),
            DType::BF16 => Data::BF16(v.iter().map(|&x| half::bf16::from_f64(x)).collect()),
            DType::Bool => Data::Bool(v.iter().map(|&x| x != 0.0).collect()),
            DType::U64 => Data::U64(v.iter().map(|&x| if x >= 0.0 { x as u64 } else { x as i64 as u64 }).collect()),
            d => Data::from_i64s(d, &ints().collect::<Vec<_>>()),
        }
    }
    /// Elements of `dtype` from i64 values, wrapped to integer widths (u64 by bits; 4- and
    /// 2-bit types too).
    pub fn from_i64s(dtype: DType, v: &[i64]) -> Data {
        match dtype {
            DType::I32 => Data::I32(v.iter().map(|&x| x as i32).collect()),
            DType::I64 => Data::I64(v.to_vec()),
            DType::I8 => Data::I8(v.iter().map(|&x| x as i8).collect()),
            DType::U8 => Data::U8(v.iter().map(|&x| x as u8).collect()),
            DType::I16 => Data::I16(v.iter().map(|&x| x as i16).collect()),
            DType::U16 => Data::U16(v.iter().map(|&x| x as u16).collect()),
            DType::U32 => Data::U32(v.iter().map(|&x| x as u32).collect()),
            DType::U64 => Data::U64(v.iter().map(|&x| x as u64).collect()),
            DType::Bool => Data::Bool(v.iter().map(|&x| x != 0).collect()),
            DType::I4 => Data::Small(dtype, v.iter().map(|&x| (((x as u8) << 4) as i8 >> 4) as u8).collect()),
            DType::U4 => Data::Small(dtype, v.iter().map(|&x| x as u8 & 0xF).collect()),
            DType::I2 => Data::Small(dtype, v.iter().map(|&x| (((x as u8) << 6) as i8 >> 6) as u8).collect()),
            DType::U2 => Data::Small(dtype, v.iter().map(|&x| x as u8 & 0x3).collect()),
            d => Data::from_f64s(d, &v.iter().map(|&x| x as f64).collect::<Vec<_>>()),
        }
    }
}

impl Tensor {
    /// Builds a tensor from raw little-endian bytes; checks the length.
    pub fn from_bytes(ty: TensorType, data: Bytes) -> Result<Tensor, String> {
        if data.len() != ty.bytes() {
            return Err(format!("tensor of type {ty} needs {} bytes, got {}", ty.bytes(), data.len()));
        }
        Ok(Tensor { ty, data })
    }

    pub fn from_data(shape: impl Into<Shape>, data: Data) -> Tensor {
        let shape = shape.into();
        assert_eq!(numel(&shape), data.len(), "tensor data length does not match shape {shape:?}");
        let dtype = data.dtype();
        Tensor { ty: TensorType::new(dtype, shape), data: Bytes::from(data.to_le_bytes()) }
    }

    pub fn f32(shape: impl Into<Shape>, v: Vec<f32>) -> Tensor {
        Tensor::from_data(shape, Data::F32(v))
    }
    pub fn i64(shape: impl Into<Shape>, v: Vec<i64>) -> Tensor {
        Tensor::from_data(shape, Data::I64(v))
    }
    pub fn i32(shape: impl Into<Shape>, v: Vec<i32>) -> Tensor {
        Tensor::from_data(shape, Data::I32(v))
    }
    pub fn bool(shape: impl Into<Shape>, v: Vec<bool>) -> Tensor {
        Tensor::from_data(shape, Data::Bool(v))
    }
    pub fn scalar_f32(x: f32) -> Tensor {
        Tensor::f32(vec![], vec![x])
    }

    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.ty.shape
    }
    pub fn numel(&self) -> usize {
        self.ty.numel()
    }

    /// Decodes the elements.
    pub fn data(&self) -> Data {
        Data::from_le_bytes(self.ty.dtype, &self.data)
    }

    /// The elements converted to i64 (integers and bools exactly, floats truncated).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        self.data().to_i64_vec()
    }

    /// The elements converted to f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.data().to_f64_vec()
    }

    /// The same bytes with another shape of equal element count.
    pub fn reshaped(&self, shape: Shape) -> Tensor {
        assert_eq!(numel(&shape), self.numel());
        Tensor { ty: TensorType::new(self.ty.dtype, shape), data: self.data.clone() }
    }

    /// A cheap content fingerprint, used by CSE to compare constants.
    pub fn same_content(&self, other: &Tensor) -> bool {
        self.ty == other.ty && self.data == other.data
    }
}
