//! Element types.
//!
//! Kiln stores every type below, and computes natively in the *compute types* f32, f64, i32,
//! i64 and bool. The other types (f16, bf16, the 8- and 16-bit integers, u32, u64) are storage
//! types: the importer widens them to their compute type around each op and narrows the result
//! back ([`DType::compute`]), which gives the same results as computing in the narrow type for
//! everything ONNX defines on them (IEEE rounding of f16/bf16 results happens once per op;
//! integer arithmetic wraps).

use std::fmt;

use kiln_abi::DTypeCode;

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
}

impl DType {
    pub const ALL: [DType; 13] = [
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
    ];

    pub fn size(self) -> usize {
        self.code().size()
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }
    pub fn is_int(self) -> bool {
        !self.is_float() && self != DType::Bool
    }
    pub fn is_signed(self) -> bool {
        matches!(self, DType::I8 | DType::I16 | DType::I32 | DType::I64) || self.is_float()
    }
    /// The type Kiln computes in for values of this type: itself for the compute types, f32
    /// for f16/bf16, i32 for 8- and 16-bit integers, i64 for u32 and u64 (u64 wraps to the
    /// same bits for add/sub/mul/bitwise ops only; see the importer).
    pub fn compute(self) -> DType {
        match self {
            DType::F16 | DType::BF16 => DType::F32,
            DType::I8 | DType::U8 | DType::I16 | DType::U16 => DType::I32,
            DType::U32 | DType::U64 => DType::I64,
            d => d,
        }
    }
    /// Whether Kiln computes in this type (see [`DType::compute`]).
    pub fn is_compute(self) -> bool {
        self.compute() == self
    }
    /// Bits of an integer type.
    pub fn bits(self) -> u32 {
        self.size() as u32 * 8
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
