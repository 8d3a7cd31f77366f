//! The contract between compiled Kiln code and the Kiln runtime.
//!
//! This is the only crate that the compiler and the runtime share. It defines:
//!
//! * the C-ABI [`Context`] struct that a compiled entry point receives,
//! * the entry-point and `parallel_for` signatures,
//! * the artifact container ([`artifact`]): header, sections, checksum,
//! * the prost-encoded [`manifest::Manifest`] that describes inputs, outputs and memory.
//!
//! The ABI is versioned like a file format: a runtime refuses an artifact whose major
//! version it does not know.

pub mod artifact;
pub mod manifest;

/// Major version of the artifact format and entry-point ABI. Bumped on any incompatible change.
pub const ABI_MAJOR: u32 = 1;
/// Minor version: compatible additions.
pub const ABI_MINOR: u32 = 8;

/// Name of the entry-point symbol exported by every compiled CPU module.
pub const ENTRY_SYMBOL: &str = "kiln_entry";
/// Name of the symbol holding the module's ABI major version (an `u32`).
pub const ABI_VERSION_SYMBOL: &str = "kiln_abi_version";

/// A kernel task body: called with the context and a half-open range `[start, end)` of the
/// kernel's outer parallel loop.
pub type TaskFn = unsafe extern "C" fn(ctx: *const Context, start: i64, end: i64);

/// The runtime's parallel loop: runs `task(ctx, s, e)` over disjoint ranges covering
/// `[0, n)`, possibly on several threads, and returns when all have finished.
pub type ParallelForFn =
    unsafe extern "C" fn(runtime: *mut core::ffi::c_void, task: TaskFn, ctx: *const Context, n: i64);

/// The profiling hook (ABI 1.8): called by the entry with the context's `profile_data`,
/// before (`end` 0) and after (`end` 1) each instruction that does work, numbered in program
/// order from 0 ([`manifest::KernelInfo::event`]).
pub type ProfileFn = unsafe extern "C" fn(data: *mut core::ffi::c_void, event: u32, end: u32);

/// The entry point of a compiled module. Returns 0 on success.
pub type EntryFn = unsafe extern "C" fn(ctx: *const Context) -> i32;

/// Everything a compiled module needs for one run. Laid out for C (see `kiln.h`).
///
/// * `inputs[i]` / `outputs[i]` point at the i-th input / output tensor, dense, row-major,
///   with the dtype and shape the manifest gives;
/// * `arena` points at `manifest.arena_bytes` bytes of scratch memory, 64-byte aligned;
/// * `weights` points at the artifact's weight section, 64-byte aligned;
/// * `parallel_for` is called with `runtime` as its first argument;
/// * `dims` points at `manifest.dim_slots` `i64`s (ABI 1.4): the sizes the compiled code
///   decides at run time (an output's shape that depends on data), written by the code and
///   read by the runtime after the run; its first slots, one per `manifest.symbols` (ABI
///   1.5), hold the sizes the caller gives the inputs' run-time dims. It may be null when
///   the manifest has none.
/// * an input or output with a run-time dim on an axis other than its first (ABI 1.6) is
///   laid out row-major at its bound shape (the manifest's), of which the code reads or
///   writes only the first indices along each run-time axis: the caller spreads a shorter
///   input out to those strides and gathers such an output back.
/// * a symbol derived from another (ABI 1.7, [`manifest::DimBound::base`]) is not given by
///   the caller: its slot holds the base symbol's size plus its offset, filled by the
///   runtime before the run.
/// * `profile` (ABI 1.8), when not null, is called around every instruction that does work
///   ([`ProfileFn`]); null, the code only tests it.
#[repr(C)]
#[derive(Debug)]
pub struct Context {
    pub abi_version: u32,
    pub reserved: u32,
    pub inputs: *const *const u8,
    pub outputs: *const *mut u8,
    pub arena: *mut u8,
    pub weights: *const u8,
    pub runtime: *mut core::ffi::c_void,
    pub parallel_for: ParallelForFn,
    pub dims: *mut i64,
    pub profile: Option<ProfileFn>,
    pub profile_data: *mut core::ffi::c_void,
}

/// Byte offsets of the [`Context`] fields, which generated code uses to load them.
pub mod context_offsets {
    pub const INPUTS: u64 = 8;
    pub const OUTPUTS: u64 = 16;
    pub const ARENA: u64 = 24;
    pub const WEIGHTS: u64 = 32;
    pub const RUNTIME: u64 = 40;
    pub const PARALLEL_FOR: u64 = 48;
    pub const DIMS: u64 = 56;
    pub const PROFILE: u64 = 64;
    pub const PROFILE_DATA: u64 = 72;
}

/// Element types as they appear in the manifest. Values match ONNX's `TensorProto.DataType`.
///
/// Every element takes [`DTypeCode::size`] bytes, little-endian. The small types take one
/// byte each, **unpacked** (ONNX packs 4-bit types two to a byte and 2-bit types four to a
/// byte; Kiln never does): a float8 element is its 8-bit code; a FLOAT4E2M1 element is its
/// 4-bit code in the low bits (high bits zero); an INT4/INT2 element is its value as a
/// sign-extended `i8` (-8..=7 / -2..=1); a UINT4/UINT2 element is its value as a `u8`
/// (0..=15 / 0..=3). Tensors given to or returned by a compiled model use this layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i32)]
pub enum DTypeCode {
    F32 = 1,
    U8 = 2,
    I8 = 3,
    U16 = 4,
    I16 = 5,
    I32 = 6,
    I64 = 7,
    Bool = 9,
    F16 = 10,
    F64 = 11,
    U32 = 12,
    U64 = 13,
    BF16 = 16,
    F8E4M3FN = 17,
    F8E4M3FNUZ = 18,
    F8E5M2 = 19,
    F8E5M2FNUZ = 20,
    U4 = 21,
    I4 = 22,
    F4E2M1 = 23,
    F8E8M0 = 24,
    U2 = 25,
    I2 = 26,
}

impl DTypeCode {
    pub const ALL: [DTypeCode; 23] = [
        Self::F32,
        Self::U8,
        Self::I8,
        Self::U16,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::Bool,
        Self::F16,
        Self::F64,
        Self::U32,
        Self::U64,
        Self::BF16,
        Self::F8E4M3FN,
        Self::F8E4M3FNUZ,
        Self::F8E5M2,
        Self::F8E5M2FNUZ,
        Self::U4,
        Self::I4,
        Self::F4E2M1,
        Self::F8E8M0,
        Self::U2,
        Self::I2,
    ];
    pub fn from_i32(v: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as i32 == v)
    }
    pub fn size(self) -> usize {
        match self {
            // The 4- and 2-bit types are unpacked: one element per byte (see the enum's doc).
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::F8E4M3FN | Self::F8E4M3FNUZ | Self::F8E5M2 | Self::F8E5M2FNUZ | Self::F8E8M0 => 1,
            Self::U4 | Self::I4 | Self::U2 | Self::I2 | Self::F4E2M1 => 1,
            Self::U16 | Self::I16 | Self::F16 | Self::BF16 => 2,
            Self::F32 | Self::I32 | Self::U32 => 4,
            Self::I64 | Self::F64 | Self::U64 => 8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::U8 => "u8",
            Self::I8 => "i8",
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::I32 => "i32",
            Self::I64 => "i64",
            Self::Bool => "bool",
            Self::F16 => "f16",
            Self::F64 => "f64",
            Self::U32 => "u32",
            Self::U64 => "u64",
            Self::BF16 => "bf16",
            Self::F8E4M3FN => "f8e4m3fn",
            Self::F8E4M3FNUZ => "f8e4m3fnuz",
            Self::F8E5M2 => "f8e5m2",
            Self::F8E5M2FNUZ => "f8e5m2fnuz",
            Self::U4 => "u4",
            Self::I4 => "i4",
            Self::F4E2M1 => "f4e2m1",
            Self::F8E8M0 => "f8e8m0",
            Self::U2 => "u2",
            Self::I2 => "i2",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_layout_matches_offsets() {
        use core::mem::offset_of;
        assert_eq!(offset_of!(Context, inputs) as u64, context_offsets::INPUTS);
        assert_eq!(offset_of!(Context, outputs) as u64, context_offsets::OUTPUTS);
        assert_eq!(offset_of!(Context, arena) as u64, context_offsets::ARENA);
        assert_eq!(offset_of!(Context, weights) as u64, context_offsets::WEIGHTS);
        assert_eq!(offset_of!(Context, runtime) as u64, context_offsets::RUNTIME);
        assert_eq!(offset_of!(Context, parallel_for) as u64, context_offsets::PARALLEL_FOR);
        assert_eq!(offset_of!(Context, dims) as u64, context_offsets::DIMS);
        assert_eq!(offset_of!(Context, profile) as u64, context_offsets::PROFILE);
        assert_eq!(offset_of!(Context, profile_data) as u64, context_offsets::PROFILE_DATA);
        assert_eq!(core::mem::size_of::<Context>(), 80);
    }
}
