//! Element types.

use std::fmt;

use kiln_abi::DTypeCode;

/// The element types Kiln computes with. `Bool` is stored as one byte (0 or 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    I32,
    I64,
    Bool,
}

impl DType {
    pub const ALL: [DType; 4] = [DType::F32, DType::I32, DType::I64, DType::Bool];

    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::I64 => 8,
            DType::Bool => 1,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32)
    }
    pub fn is_int(self) -> bool {
        matches!(self, DType::I32 | DType::I64)
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
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
        }
    }
    pub fn from_code(c: DTypeCode) -> Option<DType> {
        Some(match c {
            DTypeCode::F32 => DType::F32,
            DTypeCode::I32 => DType::I32,
            DTypeCode::I64 => DType::I64,
            DTypeCode::Bool => DType::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
