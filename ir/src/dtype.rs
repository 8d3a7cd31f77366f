//! Element types.
//!
//! Kiln stores every type below, and computes natively in the *compute types* f32, f64, i32,
//! i64 and bool. The other types (f16, bf16, the 8- and 16-bit integers, u32, u64) are storage
//! types: the importer widens them to their compute type around each op and narrows the result
//! back ([`DType::compute`]), which gives the same results as computing in the narrow type for
//! everything ONNX defines on them (IEEE rounding of f16/bf16 results happens once per op;
//! integer arithmetic wraps).
//!
//! The small types (four float8 formats, E8M0, FLOAT4E2M1; INT4/UINT4/INT2/UINT2) are storage
//! types too, computed in f32 and i32. Kiln keeps every element of them in one byte, unpacked
//! (see [`kiln_abi::DTypeCode`]); the ONNX importer unpacks ONNX's packed 4- and 2-bit layouts.
//! Their conversions are in [`crate::minifloat`].

use std::fmt;

use kiln_abi::DTypeCode;

use crate::minifloat::MiniFloat;

/// The element types Kiln stores. `Bool` is stored as one byte (0 or 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    I32,
    I64,
    Bool,
    F64,
    F16,
    BF16,
    I8,
    U8,
    I16,
    U16,
    U32,
    U64,
    F8E4M3FN,
    F8E4M3FNUZ,
    F8E5M2,
    F8E5M2FNUZ,
    F8E8M0,
    F4E2M1,
    I4,
    U4,
    I2,
    U2,
}

impl DType {
    pub const ALL: [DType; 23] = [
        DType::F32,
        DType::I32,
        DType::I64,
        DType::Bool,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::U8,
        DType::I16,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::F8E4M3FN,
        DType::F8E4M3FNUZ,
        DType::F8E5M2,
        DType::F8E5M2FNUZ,
        DType::F8E8M0,
        DType::F4E2M1,
        DType::I4,
        DType::U4,
        DType::I2,
        DType::U2,
    ];

    pub fn size(self) -> usize {
        self.code().size()
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16) || self.minifloat().is_some()
    }
    /// The format of a small float type (float8, E8M0, FLOAT4E2M1).
    pub fn minifloat(self) -> Option<MiniFloat> {
        Some(match self {
            DType::F8E4M3FN => MiniFloat::E4M3FN,
            DType::F8E4M3FNUZ => MiniFloat::E4M3FNUZ,
            DType::F8E5M2 => MiniFloat::E5M2,
            DType::F8E5M2FNUZ => MiniFloat::E5M2FNUZ,
            DType::F8E8M0 => MiniFloat::E8M0,
            DType::F4E2M1 => MiniFloat::E2M1,
            _ => return None,
        })
    }
    /// Whether this is one of the small types: stored one element per byte, computed in f32
    /// or i32, converted by [`crate::minifloat`] or by wrapping to 4 or 2 bits.
    pub fn is_small(self) -> bool {
        self.minifloat().is_some() || matches!(self, DType::I4 | DType::U4 | DType::I2 | DType::U2)
    }
    pub fn is_int(self) -> bool {
        !self.is_float() && self != DType::Bool
    }
    pub fn is_signed(self) -> bool {
        matches!(self, DType::I8 | DType::I16 | DType::I32 | DType::I64 | DType::I4 | DType::I2) || self.is_float()
    }
    /// The type Kiln computes in for values of this type: itself for the compute types, f32
    /// for f16/bf16, i32 for 8- and 16-bit integers, i64 for u32 and u64 (u64 wraps to the
    /// same bits for add/sub/mul/bitwise ops only; see the importer).
    pub fn compute(self) -> DType {
        match self {
            DType::F16 | DType::BF16 => DType::F32,
            d if d.minifloat().is_some() => DType::F32,
            DType::I8 | DType::U8 | DType::I16 | DType::U16 => DType::I32,
            DType::I4 | DType::U4 | DType::I2 | DType::U2 => DType::I32,
            DType::U32 | DType::U64 => DType::I64,
            d => d,
        }
    }
    /// Whether Kiln computes in this type (see [`DType::compute`]).
    pub fn is_compute(self) -> bool {
        self.compute() == self
    }
    /// Bits of an integer type (4 and 2 for the sub-byte ones, though they take a byte).
    pub fn bits(self) -> u32 {
        match self {
            DType::I4 | DType::U4 => 4,
            DType::I2 | DType::U2 => 2,
            d => d.size() as u32 * 8,
        }
    }
    pub fn name(self) -> &'static str {
        self.code().name()
    }
    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }
    pub fn code(self) -> DTypeCode {
        match self {
            DType::F32 => DTypeCode::F32,
            DType::I32 => DTypeCode::I32,
            DType::I64 => DTypeCode::I64,
            DType::Bool => DTypeCode::Bool,
            DType::F64 => DTypeCode::F64,
            DType::F16 => DTypeCode::F16,
            DType::BF16 => DTypeCode::BF16,
            DType::I8 => DTypeCode::I8,
            DType::U8 => DTypeCode::U8,
            DType::I16 => DTypeCode::I16,
            DType::U16 => DTypeCode::U16,
            DType::U32 => DTypeCode::U32,
            DType::U64 => DTypeCode::U64,
            DType::F8E4M3FN => DTypeCode::F8E4M3FN,
            DType::F8E4M3FNUZ => DTypeCode::F8E4M3FNUZ,
            DType::F8E5M2 => DTypeCode::F8E5M2,
            DType::F8E5M2FNUZ => DTypeCode::F8E5M2FNUZ,
            DType::F8E8M0 => DTypeCode::F8E8M0,
            DType::F4E2M1 => DTypeCode::F4E2M1,
            DType::I4 => DTypeCode::I4,
            DType::U4 => DTypeCode::U4,
            DType::I2 => DTypeCode::I2,
            DType::U2 => DTypeCode::U2,
        }
    }
    pub fn from_code(c: DTypeCode) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.code() == c)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_code(d.code()), Some(d));
            assert_eq!(DType::from_name(d.name()), Some(d));
            assert!(d.compute().is_compute());
            assert!(d.compute().size() >= d.size() || d == DType::U64);
        }
    }
}
