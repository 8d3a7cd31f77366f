//! The artifact manifest, prost-encoded. Field numbers are part of the ABI: never reuse one.

/// One tensor crossing the boundary (an input or an output).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorSpec {
    #[prost(string, tag = "1")]
    pub name: String,
    /// A [`crate::DTypeCode`] value.
    #[prost(int32, tag = "2")]
    pub dtype: i32,
    #[prost(uint64, repeated, tag = "3")]
    pub shape: Vec<u64>,
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
}
