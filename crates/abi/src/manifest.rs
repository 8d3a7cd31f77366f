//! The artifact manifest, prost-encoded. Field numbers are part of the ABI: never reuse one.

/// One tensor crossing the boundary (an input or an output).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorSpec {
    #[prost(string, tag = "1")]
    pub name: String,
    /// A [`crate::DTypeCode`] value.
    #[prost(int32, tag = "2")]
    pub dtype: i32,
    /// The shape; for an output whose shape is decided at run time, each dim's upper bound.
    #[prost(uint64, repeated, tag = "3")]
    pub shape: Vec<u64>,
    /// ABI 1.4: empty when every dim is fixed; otherwise one entry per dim, -1 for a fixed
    /// dim and `k >= 0` for a dim whose size is in `Context::dims[k]`: written by the compiled
    /// code for an output, by the caller for a symbol's slot ([`Manifest::symbols`], ABI 1.5).
    #[prost(int32, repeated, tag = "4")]
    pub dim_slots: Vec<i32>,
    /// ABI 1.4: for a tensor with run-time dims, the bytes its buffer holds at most (0: the
    /// product of `shape`).
    #[prost(uint64, tag = "5")]
    pub max_bytes: u64,
}

impl TensorSpec {
    /// Bytes of the tensor's buffer: its data, or for an output whose shape is decided at run
    /// time the most its data can take (an unknown dtype counts one byte per element; the
    /// runtime rejects those at load).
    pub fn byte_len(&self) -> usize {
        if self.max_bytes > 0 {
            return self.max_bytes as usize;
        }
        let n: u64 = self.shape.iter().product();
        n as usize * crate::DTypeCode::from_i32(self.dtype).map_or(1, crate::DTypeCode::size)
    }

    /// Whether some dim's size is decided at run time.
    pub fn is_dynamic(&self) -> bool {
        self.dim_slots.iter().any(|&s| s >= 0)
    }

    /// Whether the code lays the tensor out at its bound shape (ABI 1.6): some axis other
    /// than the first is a run-time dim the caller gives (a slot below `symbols`, the
    /// manifest's symbol count).
    pub fn padded(&self, symbols: usize) -> bool {
        self.dim_slots.iter().skip(1).any(|&s| s >= 0 && (s as usize) < symbols)
    }
}

/// One partition of a model split across devices (ABI 1.2): a compiled program that reads
/// and writes **slots**. Slot `i < inputs.len()` is model input `i`; the next
/// `outputs.len()` slots are the model outputs; the rest are
/// [`Manifest::intermediates`], tensors handed from one partition to another.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Partition {
    /// The kind of device: `cpu` (code in the code section) or `cuda`.
    #[prost(string, tag = "1")]
    pub device: String,
    /// The device's index in the target list it was compiled for.
    #[prost(uint32, tag = "2")]
    pub device_index: u32,
    /// The entry point's symbol in the code section (its ABI version symbol is the same
    /// name with `_abi_version` for `_entry`).
    #[prost(string, tag = "3")]
    pub entry: String,
    /// Bytes of scratch memory it needs.
    #[prost(uint64, tag = "4")]
    pub arena_bytes: u64,
    /// Where its weights are in the weight section.
    #[prost(uint64, tag = "5")]
    pub weights_offset: u64,
    #[prost(uint64, tag = "6")]
    pub weights_len: u64,
    /// The slots of its inputs and of its outputs, in the order of its entry's context.
    #[prost(uint32, repeated, tag = "7")]
    pub inputs: Vec<u32>,
    #[prost(uint32, repeated, tag = "8")]
    pub outputs: Vec<u32>,
    /// Its checks' messages (as [`Manifest::check_messages`], for this entry point).
    #[prost(string, repeated, tag = "9")]
    pub check_messages: Vec<String>,
    /// A GPU partition's code: PTX text, for `ptx_arch` (`sm_80`) or newer.
    #[prost(string, tag = "10")]
    pub ptx: String,
    /// What a GPU partition runs, in order: kernels, copies, checks.
    #[prost(message, repeated, tag = "11")]
    pub launches: Vec<Launch>,
    #[prost(string, tag = "12")]
    pub ptx_arch: String,
}

/// Where a GPU kernel's pointer argument points: `offset` bytes into one of the partition's
/// inputs or outputs (number `index`), or into its arena or its weights.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BufferRef {
    /// 0: input, 1: output, 2: arena, 3: weights.
    #[prost(int32, tag = "1")]
    pub space: i32,
    #[prost(uint64, tag = "2")]
    pub index: u64,
    #[prost(uint64, tag = "3")]
    pub offset: u64,
}

impl BufferRef {
    pub const INPUT: i32 = 0;
    pub const OUTPUT: i32 = 1;
    pub const ARENA: i32 = 2;
    pub const WEIGHTS: i32 = 3;
}

/// One step of a GPU partition (its launch table).
///
/// * `kind` 0, a kernel: `kernel` (the PTX entry's name) on a grid of `grid` blocks of
///   `block` threads, its pointer arguments `args`, in order; `bytes` is the memory traffic
///   it needs at least (for bandwidth figures).
/// * `kind` 1, a copy of `bytes` bytes from `args[1]` to `args[0]`.
/// * `kind` 2, a check: the run fails with check message `check` when the `i64` at `args[0]`
///   is not 0.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Launch {
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(string, tag = "2")]
    pub kernel: String,
    #[prost(uint32, tag = "3")]
    pub grid: u32,
    #[prost(uint32, tag = "4")]
    pub block: u32,
    #[prost(message, repeated, tag = "5")]
    pub args: Vec<BufferRef>,
    #[prost(uint64, tag = "6")]
    pub bytes: u64,
    #[prost(uint32, tag = "7")]
    pub check: u32,
}

impl Launch {
    pub const KERNEL: i32 = 0;
    pub const COPY: i32 = 1;
    pub const CHECK: i32 = 2;
}

/// A copy from one slot to another once every partition has run: a model output that a
/// later partition also reads (computed into an aligned intermediate), a value that is
/// several outputs, or an input given back as an output.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SlotCopy {
    #[prost(uint32, tag = "1")]
    pub from: u32,
    #[prost(uint32, tag = "2")]
    pub to: u32,
}

/// Everything the runtime must know about a compiled model.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Manifest {
    #[prost(uint32, tag = "1")]
    pub abi_major: u32,
    #[prost(uint32, tag = "2")]
    pub abi_minor: u32,
    /// The LLVM target triple the code section was built for.
    #[prost(string, tag = "3")]
    pub target_triple: String,
    #[prost(string, tag = "4")]
    pub target_cpu: String,
    #[prost(message, repeated, tag = "5")]
    pub inputs: Vec<TensorSpec>,
    #[prost(message, repeated, tag = "6")]
    pub outputs: Vec<TensorSpec>,
    /// Bytes of scratch memory one run needs.
    #[prost(uint64, tag = "7")]
    pub arena_bytes: u64,
    /// Name of the model's graph, for messages.
    #[prost(string, tag = "8")]
    pub model_name: String,
    /// Version of the compiler that made the artifact.
    #[prost(string, tag = "9")]
    pub producer: String,
    /// Messages of the data checks the code makes (an index out of range, …): the entry
    /// point returning status `k > 0` means check `k - 1` failed.
    #[prost(string, repeated, tag = "10")]
    pub check_messages: Vec<String>,
    /// What the artifact was compiled from (ABI 1.1): a hash of the compiler, the options and
    /// the model's bytes, so that compiling an unchanged model again can keep this file.
    /// Empty when unknown (a graph compiled through the library API).
    #[prost(string, tag = "11")]
    pub source_key: String,
    /// When not empty (ABI 1.1), the weights are not in the artifact's weight section (which is
    /// empty) but in this file, next to the artifact: a plain file name, in the layout of
    /// [`crate::artifact::write_weights_file`].
    #[prost(string, tag = "12")]
    pub weights_file: String,
    /// Length of the weights in `weights_file`.
    #[prost(uint64, tag = "13")]
    pub weights_len: u64,
    /// xxh3-64 of the weights in `weights_file`: ties that file to this artifact.
    #[prost(uint64, tag = "14")]
    pub weights_checksum: u64,
    /// When not empty (ABI 1.2), the model is split across devices: these partitions run in
    /// order, and `arena_bytes`, `check_messages` and the default entry point are unused.
    #[prost(message, repeated, tag = "15")]
    pub partitions: Vec<Partition>,
    /// The tensors partitions hand to each other (slots after the inputs and outputs).
    #[prost(message, repeated, tag = "16")]
    pub intermediates: Vec<TensorSpec>,
    /// Copies between slots after the partitions ran.
    #[prost(message, repeated, tag = "17")]
    pub copies: Vec<SlotCopy>,
    /// The target list the model was compiled for (`cpu:mem=64MiB,cpu:mem=64MiB`), for
    /// messages.
    #[prost(string, tag = "18")]
    pub devices: String,
    /// Graph inputs that were compiled in as constants (ABI 1.3; `--freeze-input`): the
    /// compiled code no longer takes them. A runner given a value for one must refuse it
    /// unless it is the value compiled in ([`FrozenInput::holds`]).
    #[prost(message, repeated, tag = "19")]
    pub frozen_inputs: Vec<FrozenInput>,
    /// How many `i64` sizes the compiled code decides at run time (ABI 1.4): the length of
    /// the `Context::dims` array the runtime passes it.
    #[prost(uint32, tag = "20")]
    pub dim_slots: u32,
    /// Input dims the caller sets at each run (ABI 1.5; `--dim`): symbol `k`'s size goes in
    /// `Context::dims[k]` before the run, and an input dim with slot `k`
    /// ([`TensorSpec::dim_slots`]) has that size, its shape giving the bound. Such an input's
    /// buffer holds [`TensorSpec::byte_len`] bytes, its rows first.
    #[prost(message, repeated, tag = "21")]
    pub symbols: Vec<DimBound>,
    /// The precision the products were compiled in (`--precision`: `f32`, `bf16`); empty in
    /// artifacts from before it (f32). Informational: the code is what it is.
    #[prost(string, tag = "22")]
    pub precision: String,
    /// The CPU features the code was compiled with (LLVM's list, `+avx2,-avx512f,…`; empty
    /// for a named CPU's defaults): the runtime refuses to load it on a CPU that lacks an
    /// enabled one it knows how to ask about, naming them.
    #[prost(string, tag = "23")]
    pub target_features: String,
    /// What each profiling event of the code computes (ABI 1.8; [`crate::ProfileFn`]): one
    /// per instruction that does work, per part, in event order.
    #[prost(message, repeated, tag = "24")]
    pub kernels: Vec<KernelInfo>,
}

/// One instruction of the compiled code that a profile times: a kernel, a copy or a scan.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KernelInfo {
    /// The part (partition) it runs in, and its event number there (the hook's `event`).
    #[prost(uint32, tag = "1")]
    pub part: u32,
    #[prost(uint32, tag = "2")]
    pub event: u32,
    /// The kernel's name (its fused nodes' names, joined by `+`), or the instruction's kind.
    #[prost(string, tag = "3")]
    pub name: String,
    /// `kernel`, `copy`, `copy_row`, `top_k`, `non_zero` or `non_max_suppression`.
    #[prost(string, tag = "4")]
    pub kind: String,
    /// The source model's nodes it computes (ONNX node names), and their op types (empty where
    /// not known), in the same order.
    #[prost(string, repeated, tag = "5")]
    pub nodes: Vec<String>,
    #[prost(string, repeated, tag = "6")]
    pub ops: Vec<String>,
    /// Arithmetic operations and bytes moved, estimated at the bounds of its loops.
    #[prost(uint64, tag = "7")]
    pub flops: u64,
    #[prost(uint64, tag = "8")]
    pub bytes: u64,
}

/// A dim the caller sets at run time, between its bounds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DimBound {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub lo: u64,
    #[prost(uint64, tag = "3")]
    pub hi: u64,
    /// A symbol derived from another (ABI 1.7): its size is symbol `base`'s plus `offset`
    /// (an output one longer than an input along a run-time axis). The caller gives the base.
    #[prost(uint32, optional, tag = "4")]
    pub base: Option<u32>,
    #[prost(int64, tag = "5")]
    pub offset: i64,
}

/// A graph input compiled in as a constant: its name, type and shape, and a hash of its value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FrozenInput {
    #[prost(message, optional, tag = "1")]
    pub spec: Option<TensorSpec>,
    /// xxh3-64 of the value's bytes (little-endian, one byte per element of the small types).
    #[prost(uint64, tag = "2")]
    pub value_hash: u64,
}

impl FrozenInput {
    pub fn new(name: &str, dtype: i32, shape: &[usize], data: &[u8]) -> FrozenInput {
        FrozenInput {
            spec: Some(TensorSpec {
                name: name.to_string(),
                dtype,
                shape: shape.iter().map(|&d| d as u64).collect(),
                ..Default::default()
            }),
            value_hash: xxhash_rust::xxh3::xxh3_64(data),
        }
    }

    pub fn name(&self) -> &str {
        self.spec.as_ref().map_or("", |s| s.name.as_str())
    }

    /// Whether a given value (dtype code, shape, bytes as in [`FrozenInput::new`]) is the one
    /// compiled in.
    pub fn holds(&self, dtype: i32, shape: &[usize], data: &[u8]) -> bool {
        self.spec.as_ref().is_some_and(|s| {
            s.dtype == dtype
                && s.shape.len() == shape.len()
                && s.shape.iter().zip(shape).all(|(&a, &b)| a == b as u64)
                && self.value_hash == xxhash_rust::xxh3::xxh3_64(data)
        })
    }
}
