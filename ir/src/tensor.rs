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
}

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::I32(_) => DType::I32,
            Data::I64(_) => DType::I64,
            Data::Bool(_) => DType::Bool,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        let bytes: Vec<u8> = match data {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Bool(v) => v.iter().map(|&b| b as u8).collect(),
        };
        Tensor { ty: TensorType::new(dtype, shape), data: Bytes::from(bytes) }
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
        let b = &self.data[..];
        match self.ty.dtype {
            DType::F32 => Data::F32(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()),
            DType::I32 => Data::I32(b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()),
            DType::I64 => Data::I64(b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()),
            DType::Bool => Data::Bool(b.iter().map(|&x| x != 0).collect()),
        }
    }

    /// The elements converted to i64 (integers and bools exactly, floats truncated).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match self.data() {
            Data::F32(v) => v.into_iter().map(|x| x as i64).collect(),
            Data::I32(v) => v.into_iter().map(i64::from).collect(),
            Data::I64(v) => v,
            Data::Bool(v) => v.into_iter().map(i64::from).collect(),
        }
    }

    /// The elements converted to f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self.data() {
            Data::F32(v) => v.into_iter().map(f64::from).collect(),
            Data::I32(v) => v.into_iter().map(f64::from).collect(),
            Data::I64(v) => v.into_iter().map(|x| x as f64).collect(),
            Data::Bool(v) => v.into_iter().map(|b| b as u8 as f64).collect(),
        }
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
