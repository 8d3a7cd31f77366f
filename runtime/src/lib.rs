//! The Kiln runtime: loads a `.kiln` artifact and runs it.
//!
//! It depends on `kiln-abi` and a few small crates, never on LLVM or on the compiler: a
//! deployed program links this crate and ships one artifact.
//!
//! ```no_run
//! use kiln_runtime::{Session, TensorRef};
//! let s = Session::load("model.kiln")?;
//! let x = vec![0f32; 8];
//! let out = s.run(&[TensorRef::f32(&[1, 8], &x)])?;
//! println!("{:?}", out[0].to_f32());
//! # Ok::<(), kiln_runtime::RuntimeError>(())
//! ```

mod aligned;
#[cfg(feature = "cuda")]
mod cuda;
mod features;
mod manifest_check;
mod padded;
mod profile;
mod threads;

use std::path::Path;
use std::sync::{Arc, Mutex};

use kiln_abi::artifact::{self, ArtifactError};
use kiln_abi::manifest::{Manifest, TensorSpec};
use kiln_abi::{Context, DTypeCode, EntryFn, ABI_MAJOR};

pub use aligned::AlignedBuf;
pub use kiln_abi as abi;
pub use kiln_abi::DTypeCode as DType;
pub use profile::{Profile, RunRecord, Span, SpanKind};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot read `{path}`: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Artifact(#[from] ArtifactError),
    #[error("artifact was compiled for `{triple}`, which cannot run on this {host} machine")]
    WrongTarget { triple: String, host: &'static str },
    #[error(
        "artifact was compiled for a CPU (`{cpu}`) with {missing}, which this CPU lacks: compile it on this machine \
         (or with --cpu naming this CPU)"
    )]
    MissingFeatures { cpu: String, missing: String },
    #[error("cannot load the artifact's code: {0}")]
    Load(String),
    #[error("model takes {expected} inputs ({names}), got {got}")]
    InputCount { expected: usize, got: usize, names: String },
    #[error("input `{name}`: expected dtype {expected}, got {got}")]
    InputDType { name: String, expected: &'static str, got: &'static str },
    #[error("input `{name}`: expected shape [{expected}], got {got:?}")]
    InputShape { name: String, expected: String, got: Vec<usize> },
    #[error("input `{name}`: dim {dim} (`{symbol}`) is {size}, outside its bounds {bounds}")]
    InputDim { name: String, dim: usize, symbol: String, size: usize, bounds: String },
    #[error("input `{name}`: dim {dim} (`{symbol}`) is {size}, but input `{other}` gives `{symbol}` = {other_size}")]
    InputSymbol { name: String, dim: usize, symbol: String, size: usize, other: String, other_size: usize },
    /// `symbol`: the derived dim and what it derives from; `given`: what the other input gives.
    #[error("input `{name}`: dim {dim} ({symbol}) is {size}, but {given}")]
    InputDerived { name: String, dim: usize, symbol: String, size: usize, given: String },
    #[error("input `{name}`: {got} bytes of data for shape {shape:?} of {dtype} ({want} bytes)")]
    InputBytes { name: String, got: usize, want: usize, shape: Vec<usize>, dtype: &'static str },
    #[error("the model has no input `{name}` (its inputs: {inputs})")]
    UnknownInput { name: String, inputs: String },
    #[error("this artifact was compiled with input `{name}` frozen to another value; compile it again with this value (--freeze-input {name}=FILE) to use it")]
    FrozenInputChanged { name: String },
    #[error("artifact manifest is invalid: {0}")]
    Manifest(String),
    #[error("compiled code reported failure (status {0})")]
    Status(i32),
    #[error("invalid input data: {0}")]
    Check(String),
    #[error("model has {expected} outputs, got {got} output buffers")]
    OutputCount { expected: usize, got: usize },
    #[error("output `{name}`: a buffer of {got} bytes at {addr:#x}; it needs {want} bytes, aligned to {align}")]
    OutputBuffer { name: String, got: usize, want: usize, align: usize, addr: usize },
}

/// A borrowed input tensor.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub dtype: DTypeCode,
    pub shape: &'a [usize],
    /// Little-endian element bytes, row-major.
    pub data: &'a [u8],
}

impl<'a> TensorRef<'a> {
    pub fn f32(shape: &'a [usize], data: &'a [f32]) -> TensorRef<'a> {
        TensorRef { dtype: DTypeCode::F32, shape, data: as_bytes(data) }
    }
    pub fn i64(shape: &'a [usize], data: &'a [i64]) -> TensorRef<'a> {
        TensorRef { dtype: DTypeCode::I64, shape, data: as_bytes(data) }
    }
    /// A tensor of `dtype` whose elements are `data`'s, which must be as wide (an f16 tensor
    /// as `u16` bits, a float8 or 4-bit one as bytes): `None` otherwise.
    pub fn typed<T: Element>(dtype: DTypeCode, shape: &'a [usize], data: &'a [T]) -> Option<TensorRef<'a>> {
        (dtype.size() == std::mem::size_of::<T>()).then(|| TensorRef { dtype, shape, data: as_bytes(data) })
    }
}

/// A Rust element type of tensors: the numeric primitives and `bool`. A dtype without a
/// Rust type of its own is read and written through the unsigned or signed integer of its
/// width (f16 and bf16 as `u16` bits, float8 and `u4` as `u8`, `i4` as `i8`).
pub trait Element: Copy + sealed::Sealed + 'static {
    /// Decodes one element from its little-endian bytes.
    fn from_le(b: &[u8]) -> Self;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! numeric_element {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            fn from_le(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("element width"))
            }
        }
    )*};
}
numeric_element!(f32, f64, i8, i16, i32, i64, u8, u16, u32, u64);

impl sealed::Sealed for bool {}
impl Element for bool {
    fn from_le(b: &[u8]) -> Self {
        b[0] != 0
    }
}

fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: the element types are plain data (numbers, and `bool`, whose bytes are 0 or
    // 1) viewed as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// An output tensor, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: DTypeCode,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    /// The elements as `T` (None if `T` is not as wide as the dtype's elements).
    pub fn to_vec_of<T: Element>(&self) -> Option<Vec<T>> {
        let w = std::mem::size_of::<T>();
        (self.dtype.size() == w).then(|| self.data.chunks_exact(w).map(T::from_le).collect())
    }

    /// The elements as f32 (None if the dtype is not f32).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == DTypeCode::F32)
            .then(|| self.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
    }
}

enum Backing {
    Map(memmap2::Mmap),
    Owned(AlignedBuf),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(b) => b.as_slice(),
        }
    }
}

/// Where a session's code and weights live.
enum Code {
    /// An artifact's: the code loaded from a temporary file (removed once loaded), the
    /// weights in the artifact's bytes. Field order matters: the library is closed before the
    /// weights go.
    Loaded {
        /// None when the artifact has no CPU code (every partition on a GPU).
        _lib: Option<libloading::Library>,
        backing: Backing,
        weights_offset: usize,
        weights_len: usize,
        /// The weights file next to the artifact, when the manifest names one (mapped).
        external: Option<memmap2::Mmap>,
    },
    /// Linked into this program (a static library): the weights are its data symbol.
    Linked { weights: *const u8 },
}

/// One compiled program of a session: the whole model, or one partition of a model split
/// across devices.
struct Part {
    exec: Exec,
    /// Where its weights start in the weight section.
    weights_offset: usize,
    /// The slots (see [`kiln_abi::manifest::Partition`]) it reads and writes.
    inputs: Vec<usize>,
    outputs: Vec<usize>,
    check_messages: Vec<String>,
}

/// A loaded model, ready to run; `run` may be called from several threads at once.
pub struct Session {
    manifest: Manifest,
    parts: Vec<Part>,
    /// Per-run scratch memory: the arena (the largest any part needs, as parts run one
    /// after another), then the intermediate slots at these offsets.
    scratch_bytes: usize,
    intermediate_offsets: Vec<usize>,
    /// Per input with run-time dims: where in the scratch memory an input shorter than its
    /// bound is copied (the code may read rows past the run's, never using them).
    staging_offsets: Vec<Option<usize>>,
    scratch: Mutex<Vec<AlignedBuf>>,
    /// Buffers at their bounds for the outputs whose shape a run decides, one set per run in
    /// flight ([`Session::run`]): reused, so a run neither zeroes nor faults in memory it
    /// does not fill (a key/value cache's present at its bound, of which a step fills a
    /// sliver).
    bound_outputs: Mutex<Vec<Vec<AlignedBuf>>>,
    pool: Arc<threads::Pool>,
    code: Code,
    /// With [`SessionOptions::profile`]: every run's kernel times.
    profiler: Option<profile::Profiler>,
}

// SAFETY: the entry point is reentrant (all per-run state lives in the arena and the
// context passed to it); the rest is immutable or behind a mutex.
unsafe impl Sync for Session {}
unsafe impl Send for Session {}

/// Options for loading a session.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Worker threads for parallel kernels (0: one per core).
    pub threads: usize,
    /// Record each run's kernel times ([`Session::end_profiling`]); needs an artifact of ABI
    /// 1.8 or newer.
    pub profile: bool,
}

fn host_matches(triple: &str) -> bool {
    let arch = triple.split('-').next().unwrap_or("");
    arch == std::env::consts::ARCH || (arch == "x86_64" && std::env::consts::ARCH == "x86_64")
}

/// Checks the weights file that `manifest` names, in `dir` (the artifact's directory): that
/// it is a plain file name and that the file is there with the weights the manifest
/// describes (what loading the artifact would check).
pub fn check_weights_file(dir: &Path, manifest: &Manifest) -> Result<(), RuntimeError> {
    load_weights_file(dir, &manifest.weights_file, manifest).map(|_| ())
}

/// Maps the weights file `name` in `dir` and checks it against the manifest.
fn load_weights_file(dir: &Path, name: &str, manifest: &Manifest) -> Result<memmap2::Mmap, RuntimeError> {
    let plain = Path::new(name).file_name().is_some_and(|f| f == name) && name != "." && name != "..";
    if !plain {
        return Err(RuntimeError::Manifest(format!("weights file `{name}` is not a plain file name")));
    }
    let path = dir.join(name);
    let io = |source| RuntimeError::Io { path: path.display().to_string(), source };
    let file = std::fs::File::open(&path).map_err(io)?;
    // SAFETY: read-only mapping, checked below; as with the artifact, a concurrent writer
    // could change it afterwards.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    artifact::read_weights_file(&map, manifest)?;
    Ok(map)
}

/// The tensor in slot `k` of a manifest: an input, an output, then the intermediates.
fn slot_spec(m: &Manifest, k: usize) -> &TensorSpec {
    let (n_in, n_out) = (m.inputs.len(), m.outputs.len());
    if k < n_in {
        &m.inputs[k]
    } else if k < n_in + n_out {
        &m.outputs[k - n_in]
    } else {
        &m.intermediates[k - n_in - n_out]
    }
}

/// How a part runs.
enum Exec {
    /// Compiled CPU code: its entry point.
    Cpu(EntryFn),
    /// A GPU partition.
    #[cfg(feature = "cuda")]
    Gpu(Box<cuda::GpuPart>),
}

/// The programs of a manifest, their entry points found by `lookup`: the whole model, or
/// each partition, checked against the manifest (slots, weights within `weights` when
/// given, copies between tensors of one size). GPU partitions are loaded onto the GPU.
fn parts_of(
    m: &Manifest,
    weights: Option<&[u8]>,
    lookup: impl Fn(&str) -> Result<EntryFn, RuntimeError>,
) -> Result<Vec<Part>, RuntimeError> {
    let (n_in, n_out) = (m.inputs.len(), m.outputs.len());
    if m.partitions.is_empty() {
        return Ok(vec![Part {
            exec: Exec::Cpu(lookup(kiln_abi::ENTRY_SYMBOL)?),
            weights_offset: 0,
            inputs: (0..n_in).collect(),
            outputs: (n_in..n_in + n_out).collect(),
            check_messages: m.check_messages.clone(),
        }]);
    }
    let slots = n_in + n_out + m.intermediates.len();
    let bad = |msg: String| RuntimeError::Manifest(msg);
    let spec = |k: usize| slot_spec(m, k);
    let mut parts = Vec::with_capacity(m.partitions.len());
    #[cfg(feature = "cuda")]
    let mut gpu: Option<Arc<cuda::Gpu>> = None;
    for (i, p) in m.partitions.iter().enumerate() {
        if p.device != "cpu" && !(cfg!(feature = "cuda") && p.device == "cuda") {
            let why = if p.device == "cuda" { " (built without the `cuda` feature)" } else { "" };
            return Err(RuntimeError::Load(format!(
                "partition {i} runs on device `{}` ({} in the target list `{}`), which this runtime cannot run{why}",
                p.device, p.device_index, m.devices
            )));
        }
        let in_range = |k: &u32| (*k as usize) < slots;
        if !p.inputs.iter().all(in_range) || !p.outputs.iter().all(|k| in_range(k) && *k as usize >= n_in) {
            return Err(bad(format!("partition {i} names a slot that does not exist or is an input it writes")));
        }
        let end = p.weights_offset.saturating_add(p.weights_len);
        if weights.is_some_and(|w| end > w.len() as u64) {
            return Err(bad(format!("partition {i}'s weights lie beyond the weight section")));
        }
        let exec = match p.device.as_str() {
            #[cfg(feature = "cuda")]
            "cuda" => {
                let gpu = match &gpu {
                    Some(g) => g.clone(),
                    None => gpu.insert(Arc::new(cuda::Gpu::open()?)).clone(),
                };
                let w = weights.map_or(&[][..], |w| &w[p.weights_offset as usize..end as usize]);
                Exec::Gpu(Box::new(cuda::GpuPart::load(&gpu, i, p, w)?))
            }
            _ => Exec::Cpu(lookup(&p.entry)?),
        };
        parts.push(Part {
            exec,
            weights_offset: p.weights_offset as usize,
            inputs: p.inputs.iter().map(|&k| k as usize).collect(),
            outputs: p.outputs.iter().map(|&k| k as usize).collect(),
            check_messages: p.check_messages.clone(),
        });
    }
    for c in &m.copies {
        let (from, to) = (c.from as usize, c.to as usize);
        if from >= slots || to >= slots || to < n_in || from == to || spec(from).byte_len() != spec(to).byte_len() {
            return Err(bad(format!("copy from slot {from} to slot {to} is invalid")));
        }
    }
    Ok(parts)
}

impl Session {
    /// Loads an artifact file (memory-mapped: weights are not copied).
    pub fn load(path: impl AsRef<Path>) -> Result<Session, RuntimeError> {
        Session::load_with(path, &SessionOptions::default())
    }

    pub fn load_with(path: impl AsRef<Path>, opts: &SessionOptions) -> Result<Session, RuntimeError> {
        let path = path.as_ref();
        let io = |source| RuntimeError::Io { path: path.display().to_string(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a concurrent writer could change the bytes under us,
        // which the checksum verified at load time cannot prevent (as with any mmapped file).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Session::from_backing(Backing::Map(map), opts, path.parent())
    }

    /// Loads an artifact from memory (copied once into aligned storage).
    pub fn from_bytes(bytes: &[u8], opts: &SessionOptions) -> Result<Session, RuntimeError> {
        Session::from_backing(Backing::Owned(AlignedBuf::from_slice(bytes)), opts, None)
    }

    /// `dir`: the artifact's directory, where a weights file next to it is found.
    fn from_backing(backing: Backing, opts: &SessionOptions, dir: Option<&Path>) -> Result<Session, RuntimeError> {
        let sections = artifact::read(backing.bytes())?;
        let manifest = sections.manifest.clone();
        let external = match (manifest.weights_file.as_str(), dir) {
            ("", _) => None,
            (name, Some(dir)) => Some(load_weights_file(dir, name, &manifest)?),
            (name, None) => {
                return Err(RuntimeError::Load(format!(
                "the artifact keeps its weights in the file `{name}` next to it: load it from its path (Session::load)"
            )))
            }
        };
        if !host_matches(&manifest.target_triple) {
            return Err(RuntimeError::WrongTarget {
                triple: manifest.target_triple.clone(),
                host: std::env::consts::ARCH,
            });
        }
        manifest_check::check_manifest(&manifest)?;
        let load_err = |e: String| RuntimeError::Load(e);
        // The code goes through a file only to be loaded: the file is removed once it is, so a
        // process that is killed (a server's replica) leaves nothing behind. Its name has 16
        // random characters: the loader takes a name it has loaded before for that library,
        // so a later file must never get a removed one's name.
        let mut file = tempfile::Builder::new()
            .prefix("kiln-")
            .suffix(".so")
            .rand_bytes(16)
            .tempfile()
            .map_err(|e| load_err(e.to_string()))?;
        std::io::Write::write_all(&mut file, sections.code).map_err(|e| load_err(e.to_string()))?;
        let code_path = file.into_temp_path();
        // SAFETY: loading the artifact's code runs no initializers of ours (the module has
        // none) and the checksum above ensures it is the code the compiler wrote.
        let lib = match sections.code.is_empty() {
            true => None,
            false => Some(unsafe { libloading::Library::new(&*code_path) }.map_err(|e| load_err(e.to_string()))?),
        };
        // (The mapping outlives the name; a file that cannot be removed is left to the OS.)
        let _ = code_path.close();
        let lookup = |entry: &str| -> Result<EntryFn, RuntimeError> {
            let lib = lib.as_ref().ok_or_else(|| load_err(format!("the artifact has no CPU code for `{entry}`")))?;
            let abi_symbol = match entry.strip_suffix("_entry") {
                Some(stem) if entry != kiln_abi::ENTRY_SYMBOL => format!("{stem}_abi_version"),
                _ => kiln_abi::ABI_VERSION_SYMBOL.to_string(),
            };
            // SAFETY: the symbols are the ones the compiler defined (checksum verified): a
            // `u32` constant and a function of the entry-point signature.
            let version: u32 = unsafe {
                **lib.get::<*const u32>(abi_symbol.as_bytes()).map_err(|e| load_err(format!("`{abi_symbol}`: {e}")))?
            };
            if version != ABI_MAJOR {
                return Err(RuntimeError::Load(format!(
                    "code section has ABI version {version}, expected {ABI_MAJOR}"
                )));
            }
            unsafe { Ok(*lib.get::<EntryFn>(entry.as_bytes()).map_err(|e| load_err(format!("`{entry}`: {e}")))?) }
        };
        let weights: &[u8] = match &external {
            Some(map) => &map[artifact::SECTION_ALIGN..artifact::SECTION_ALIGN + manifest.weights_len as usize],
            None => sections.weights,
        };
        let weights_len = weights.len();
        let parts = parts_of(&manifest, Some(weights), lookup)?;
        let weights_offset = sections.weights_offset;
        Session::new(manifest, parts, opts, Code::Loaded { _lib: lib, backing, weights_offset, weights_len, external })
    }

    /// A session for a model linked into this program from a static library or object
    /// (what `kiln-build`'s generated bindings call): its manifest (prost-encoded, as
    /// `kiln-build` writes it), entry point, the address of its weights symbol and the value
    /// of its ABI version symbol.
    ///
    /// # Safety
    /// The four must come from one compilation: the entry point trusts the manifest's
    /// shapes and arena size and the weights' layout.
    pub unsafe fn from_linked(
        manifest: &[u8],
        entry: EntryFn,
        weights: *const u8,
        abi_version: u32,
        opts: &SessionOptions,
    ) -> Result<Session, RuntimeError> {
        let manifest = <Manifest as prost::Message>::decode(manifest).map_err(ArtifactError::Manifest)?;
        if abi_version != ABI_MAJOR || manifest.abi_major != ABI_MAJOR {
            return Err(RuntimeError::Load(format!(
                "linked model has ABI version {abi_version} (manifest {}), this runtime {ABI_MAJOR}",
                manifest.abi_major
            )));
        }
        manifest_check::check_manifest(&manifest)?;
        if !manifest.partitions.is_empty() {
            return Err(RuntimeError::Load(
                "a model split across devices cannot be linked statically; load its .kiln file".into(),
            ));
        }
        let parts = parts_of(&manifest, None, |_| Ok(entry))?;
        Session::new(manifest, parts, opts, Code::Linked { weights })
    }

    fn new(manifest: Manifest, parts: Vec<Part>, opts: &SessionOptions, code: Code) -> Result<Session, RuntimeError> {
        if opts.profile && (manifest.abi_major, manifest.abi_minor) < (1, 8) {
            return Err(RuntimeError::Load(format!(
                "profiling needs an artifact of ABI 1.8 or newer, and this one is {}.{}: compile it again",
                manifest.abi_major, manifest.abi_minor
            )));
        }
        let profiler = opts.profile.then(|| profile::Profiler::new(&manifest));
        let align = |n: usize| n.next_multiple_of(64);
        let arena = if manifest.partitions.is_empty() {
            manifest.arena_bytes
        } else {
            manifest.partitions.iter().map(|p| p.arena_bytes).max().unwrap_or(0)
        };
        let mut scratch_bytes = align(arena as usize);
        let mut intermediate_offsets = Vec::with_capacity(manifest.intermediates.len());
        for t in &manifest.intermediates {
            intermediate_offsets.push(scratch_bytes);
            scratch_bytes += align(t.byte_len());
        }
        let mut staging_offsets = Vec::with_capacity(manifest.inputs.len());
        for t in &manifest.inputs {
            staging_offsets.push(t.is_dynamic().then_some(scratch_bytes));
            if t.is_dynamic() {
                scratch_bytes += align(t.byte_len());
            }
        }
        Ok(Session {
            manifest,
            parts,
            scratch_bytes,
            intermediate_offsets,
            staging_offsets,
            scratch: Mutex::new(Vec::new()),
            bound_outputs: Mutex::new(Vec::new()),
            pool: threads::Pool::new(opts.threads),
            code,
            profiler,
        })
    }

    fn weights(&self) -> *const u8 {
        match &self.code {
            Code::Loaded { external: Some(map), .. } => map[artifact::SECTION_ALIGN..].as_ptr(),
            Code::Loaded { backing, weights_offset, weights_len, .. } => {
                backing.bytes()[*weights_offset..*weights_offset + *weights_len].as_ptr()
            }
            Code::Linked { weights } => *weights,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.manifest.inputs
    }

    /// Where a value given by name goes (a runner's `--input NAME=FILE`): `Some(i)` for input
    /// `i` of the compiled code, `None` for an input frozen at compile time (whose value must
    /// then pass [`Session::check_frozen`]); an error for a name the model does not have.
    pub fn input_index(&self, name: &str) -> Result<Option<usize>, RuntimeError> {
        if let Some(i) = self.manifest.inputs.iter().position(|s| s.name == name) {
            return Ok(Some(i));
        }
        if self.manifest.frozen_inputs.iter().any(|f| f.name() == name) {
            return Ok(None);
        }
        let known: Vec<&str> = self.manifest.inputs.iter().map(|s| s.name.as_str()).collect();
        let inputs = if known.is_empty() { "none".to_string() } else { known.join(", ") };
        Err(RuntimeError::UnknownInput { name: name.to_string(), inputs })
    }

    /// Checks a value given for input `name`, which was frozen at compile time: it must be the
    /// value compiled in, which the compiled code uses whatever is given.
    pub fn check_frozen(&self, name: &str, value: TensorRef) -> Result<(), RuntimeError> {
        let frozen = self.manifest.frozen_inputs.iter().find(|f| f.name() == name);
        if frozen.is_some_and(|f| f.holds(value.dtype as i32, value.shape, value.data)) {
            Ok(())
        } else {
            Err(RuntimeError::FrozenInputChanged { name: name.to_string() })
        }
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.manifest.outputs
    }

    /// Checks inputs as [`Session::run`] would before running (count, dtypes, shapes, dims
    /// within their bounds and agreeing, byte lengths), without running: a server checks each
    /// request this way before batching it with others.
    pub fn check(&self, inputs: &[TensorRef]) -> Result<(), RuntimeError> {
        self.check_inputs(inputs).map(|_| ())
    }

    /// Checks the inputs against the manifest, and returns the sizes of the run-time dims
    /// they give (one per [`Manifest::symbols`]).
    fn check_inputs(&self, inputs: &[TensorRef]) -> Result<Vec<i64>, RuntimeError> {
        let specs = &self.manifest.inputs;
        let symbols = &self.manifest.symbols;
        // Each symbol's size and the input that gave it.
        let mut given: Vec<Option<(usize, &str)>> = vec![None; symbols.len()];
        if inputs.len() != specs.len() {
            let names = specs.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", ");
            return Err(RuntimeError::InputCount { expected: specs.len(), got: inputs.len(), names });
        }
        for (t, s) in inputs.iter().zip(specs) {
            let want = DTypeCode::from_i32(s.dtype).expect("checked at load");
            if t.dtype != want {
                return Err(RuntimeError::InputDType {
                    name: s.name.clone(),
                    expected: want.name(),
                    got: t.dtype.name(),
                });
            }
            let slot = |d: usize| s.dim_slots.get(d).copied().unwrap_or(-1);
            if t.shape.len() != s.shape.len()
                || t.shape.iter().zip(&s.shape).enumerate().any(|(d, (&a, &b))| slot(d) < 0 && a as u64 != b)
            {
                return Err(RuntimeError::InputShape {
                    name: s.name.clone(),
                    expected: shape_text(s, symbols),
                    got: t.shape.to_vec(),
                });
            }
            for (d, &size) in t.shape.iter().enumerate() {
                let Ok(k) = usize::try_from(slot(d)) else { continue };
                let sym = &symbols[k];
                if (size as u64) < sym.lo || size as u64 > sym.hi {
                    return Err(RuntimeError::InputDim {
                        name: s.name.clone(),
                        dim: d,
                        symbol: sym.name.clone(),
                        size,
                        bounds: format!("{}..={}", sym.lo, sym.hi),
                    });
                }
                match given[k] {
                    Some((other, from)) if other != size => {
                        return Err(RuntimeError::InputSymbol {
                            name: s.name.clone(),
                            dim: d,
                            symbol: sym.name.clone(),
                            size,
                            other: from.to_string(),
                            other_size: other,
                        })
                    }
                    Some(_) => {}
                    None => given[k] = Some((size, s.name.as_str())),
                }
            }
            let want_bytes = t.shape.iter().try_fold(want.size(), |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX);
            if t.data.len() != want_bytes {
                return Err(RuntimeError::InputBytes {
                    name: s.name.clone(),
                    got: t.data.len(),
                    want: want_bytes,
                    shape: t.shape.to_vec(),
                    dtype: want.name(),
                });
            }
        }
        // Every symbol the caller sets sizes some input's dim (the compiler keeps no other); a
        // derived one is its base's size plus its offset, and an input it sizes must agree.
        let mut sizes: Vec<i64> = given.iter().map(|g| g.map_or(0, |(n, _)| n as i64)).collect();
        for (k, sym) in symbols.iter().enumerate() {
            let Some(b) = sym.base else { continue };
            let size = sizes[b as usize] + sym.offset;
            if let (Some((got, from)), Some((_, base_from))) = (given[k], given[b as usize]) {
                if got as i64 != size {
                    let dim = specs
                        .iter()
                        .find(|s| s.name == from)
                        .and_then(|s| s.dim_slots.iter().position(|&x| x == k as i32))
                        .unwrap_or(0);
                    let base = &symbols[b as usize].name;
                    return Err(RuntimeError::InputDerived {
                        name: from.to_string(),
                        dim,
                        symbol: format!("`{}`, `{base}` {:+}", sym.name, sym.offset),
                        size: got,
                        given: format!("input `{base_from}` gives `{base}` = {}", sizes[b as usize]),
                    });
                }
            }
            sizes[k] = size;
        }
        Ok(sizes)
    }

    /// Runs every part in order on the given input and output buffers, then the manifest's
    /// slot copies.
    fn run_parts(
        &self,
        ins: &[*const u8],
        outs: &[*mut u8],
        scratch: &mut AlignedBuf,
        dims: &mut [i64],
        mut rec: Option<&mut profile::Recorder>,
    ) -> Result<(), RuntimeError> {
        let base = scratch.as_mut_ptr();
        let (n_in, n_out) = (ins.len(), outs.len());
        let slot = |k: usize| -> *mut u8 {
            if k < n_in {
                ins[k] as *mut u8
            } else if k < n_in + n_out {
                outs[k - n_in]
            } else {
                // SAFETY: the offsets lie within the scratch buffer (laid out at load).
                unsafe { base.add(self.intermediate_offsets[k - n_in - n_out]) }
            }
        };
        let weights = self.weights();
        for (index, part) in self.parts.iter().enumerate() {
            let entry = match &part.exec {
                Exec::Cpu(entry) => *entry,
                #[cfg(feature = "cuda")]
                Exec::Gpu(gpu) => {
                    // SAFETY: each slot holds its tensor's bytes; a part's inputs and outputs
                    // are distinct slots.
                    let ins: Vec<&[u8]> = part
                        .inputs
                        .iter()
                        .map(|&k| unsafe { std::slice::from_raw_parts(slot(k), self.slot_spec(k).byte_len()) })
                        .collect();
                    let mut outs: Vec<&mut [u8]> = part
                        .outputs
                        .iter()
                        .map(|&k| unsafe { std::slice::from_raw_parts_mut(slot(k), self.slot_spec(k).byte_len()) })
                        .collect();
                    let started = std::time::Instant::now();
                    gpu.run(&ins, &mut outs, &part.check_messages)?;
                    if let Some(r) = rec.as_deref_mut() {
                        r.step(format!("partition {index} (gpu)"), started);
                    }
                    continue;
                }
            };
            let in_ptrs: Vec<*const u8> = part.inputs.iter().map(|&k| slot(k) as *const u8).collect();
            let out_ptrs: Vec<*mut u8> = part.outputs.iter().map(|&k| slot(k)).collect();
            let mut ctx = Context {
                abi_version: ABI_MAJOR,
                reserved: 0,
                inputs: in_ptrs.as_ptr(),
                outputs: out_ptrs.as_ptr(),
                arena: base,
                // SAFETY: the part's weights lie within the section (checked at load).
                weights: unsafe { weights.add(part.weights_offset) },
                runtime: Arc::as_ptr(&self.pool) as *mut core::ffi::c_void,
                parallel_for: threads::parallel_for,
                dims: dims.as_mut_ptr(),
                profile: None,
                profile_data: std::ptr::null_mut(),
            };
            // SAFETY: the context points at buffers of the sizes the manifest declares, which
            // is what the compiled code was planned against; they outlive the call.
            // The entry runs on a worker of the pool, which then takes part in every parallel
            // kernel itself (no hand-off to the pool and back per kernel, no thread idling).
            if let Some(r) = rec.as_deref_mut() {
                r.part = index as u32;
                ctx.profile = Some(profile::hook);
                ctx.profile_data = r as *mut profile::Recorder as *mut core::ffi::c_void;
            }
            let status = self.pool.run(entry, &ctx);
            if status != 0 {
                let message = usize::try_from(status - 1).ok().and_then(|k| part.check_messages.get(k));
                return Err(message.map_or(RuntimeError::Status(status), |m| RuntimeError::Check(m.clone())));
            }
        }
        for c in &self.manifest.copies {
            let (from, to) = (c.from as usize, c.to as usize);
            let len = self.slot_spec(to).byte_len();
            let started = std::time::Instant::now();
            // SAFETY: both slots hold `len` bytes (checked at load) and are distinct buffers.
            unsafe { std::ptr::copy_nonoverlapping(slot(from), slot(to), len) };
            if let Some(r) = rec.as_deref_mut() {
                r.step(format!("copy `{}`", self.slot_spec(to).name), started);
            }
        }
        Ok(())
    }

    /// Whether the session records its runs' kernel times ([`SessionOptions::profile`]).
    pub fn profiling(&self) -> bool {
        self.profiler.is_some()
    }

    /// What the runs recorded since the session was loaded or this was last called (none
    /// when the session does not profile), and profiling goes on afresh.
    pub fn end_profiling(&self) -> Option<Profile> {
        self.profiler.as_ref().map(profile::Profiler::take)
    }

    fn slot_spec(&self, k: usize) -> &TensorSpec {
        slot_spec(&self.manifest, k)
    }

    /// Runs the model: checks the inputs against the manifest and returns the outputs, in
    /// buffers allocated for this run (see [`Session::run_into`] to reuse them).
    pub fn run(&self, inputs: &[TensorRef]) -> Result<Vec<Tensor>, RuntimeError> {
        let specs = &self.manifest.outputs;
        // An output of a fixed shape is written in place; one whose shape a run decides is
        // written to a reused buffer at its bound and its elements copied out.
        let mut bound = self.bound_outputs.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_else(|| {
            specs.iter().filter(|s| s.is_dynamic()).map(|s| AlignedBuf::zeroed(s.byte_len())).collect()
        });
        let mut outs: Vec<Vec<u8>> =
            specs.iter().map(|s| if s.is_dynamic() { Vec::new() } else { vec![0u8; s.byte_len()] }).collect();
        let result = {
            let mut spare = bound.iter_mut();
            let mut slices: Vec<&mut [u8]> = outs
                .iter_mut()
                .zip(specs)
                .map(|(b, s)| {
                    if s.is_dynamic() {
                        spare.next().expect("one per dynamic output").as_mut_slice()
                    } else {
                        b.as_mut_slice()
                    }
                })
                .collect();
            self.run_into_shaped(inputs, &mut slices)
        };
        let tensors = result.map(|shapes| {
            let mut spare = bound.iter();
            specs
                .iter()
                .zip(outs)
                .zip(shapes)
                .map(|((s, mut b), shape)| {
                    let dtype = DTypeCode::from_i32(s.dtype).expect("checked");
                    let n = shape.iter().product::<usize>() * dtype.size();
                    if s.is_dynamic() {
                        b = spare.next().expect("one per dynamic output").as_slice()[..n].to_vec();
                    } else {
                        b.truncate(n);
                    }
                    Tensor { name: s.name.clone(), dtype, shape, data: b }
                })
                .collect()
        });
        self.bound_outputs.lock().unwrap_or_else(|e| e.into_inner()).push(bound);
        tensors
    }

    /// Runs the model into output buffers the caller owns (and can reuse from run to run,
    /// as an allocation per run can cost a page fault per 4 KiB of output): one per output,
    /// in the manifest's order, each exactly the output's buffer size in bytes
    /// ([`TensorSpec::byte_len`]) and aligned to its element size. An output whose shape is
    /// decided at run time holds its elements, row-major, at the start of its buffer: see
    /// [`Session::run_into_shaped`] for the shapes.
    pub fn run_into(&self, inputs: &[TensorRef], outputs: &mut [&mut [u8]]) -> Result<(), RuntimeError> {
        if self.manifest.dim_slots == 0 {
            return self.run_core(inputs, outputs, &mut []);
        }
        let mut dims = vec![-1i64; self.manifest.dim_slots as usize];
        self.run_core(inputs, outputs, &mut dims)?;
        // Checked even when not asked for: the code is trusted to write them, not to be right.
        for s in self.manifest.outputs.iter().filter(|s| s.is_dynamic()) {
            output_shape(s, &dims)?;
        }
        Ok(())
    }

    /// [`Session::run_into`], returning every output's shape.
    pub fn run_into_shaped(
        &self,
        inputs: &[TensorRef],
        outputs: &mut [&mut [u8]],
    ) -> Result<Vec<Vec<usize>>, RuntimeError> {
        let mut dims = vec![-1i64; self.manifest.dim_slots as usize];
        self.run_core(inputs, outputs, &mut dims)?;
        self.manifest.outputs.iter().map(|s| output_shape(s, &dims)).collect()
    }

    /// Runs the model, the code writing its run-time dims to `dims` (`Manifest::dim_slots` of
    /// them).
    fn run_core(&self, inputs: &[TensorRef], outputs: &mut [&mut [u8]], dims: &mut [i64]) -> Result<(), RuntimeError> {
        let Some(profiler) = &self.profiler else { return self.run_recorded(inputs, outputs, dims, None) };
        let mut rec = profiler.recorder();
        self.run_recorded(inputs, outputs, dims, Some(&mut rec))?;
        profiler.finish(rec);
        Ok(())
    }

    /// [`Session::run_core`], noting each kernel's times in `rec` when profiling.
    fn run_recorded(
        &self,
        inputs: &[TensorRef],
        outputs: &mut [&mut [u8]],
        dims: &mut [i64],
        rec: Option<&mut profile::Recorder>,
    ) -> Result<(), RuntimeError> {
        let sizes = self.check_inputs(inputs)?;
        dims[..sizes.len()].copy_from_slice(&sizes);
        let specs = &self.manifest.outputs;
        if outputs.len() != specs.len() {
            return Err(RuntimeError::OutputCount { expected: specs.len(), got: outputs.len() });
        }
        for (b, s) in outputs.iter().zip(specs) {
            let (want, size) = (s.byte_len(), DTypeCode::from_i32(s.dtype).expect("checked at load").size());
            // (An empty buffer's pointer is never read or written.)
            if b.len() != want || (want > 0 && !(b.as_ptr() as usize).is_multiple_of(size)) {
                return Err(RuntimeError::OutputBuffer {
                    name: s.name.clone(),
                    got: b.len(),
                    want,
                    align: size,
                    addr: b.as_ptr() as usize,
                });
            }
        }
        // Kernels read inputs at their elements' natural alignment (vector loads included);
        // an input the caller passes less aligned is copied. (A copy of every input not on
        // a 64-byte boundary cost a megabyte-sized allocation and copy per run.)
        let mut scratch = self
            .scratch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_else(|| AlignedBuf::zeroed(self.scratch_bytes));
        let copies: Vec<Option<AlignedBuf>> = inputs
            .iter()
            .map(|t| {
                let size = t.dtype.size().max(1);
                (!(t.data.as_ptr() as usize).is_multiple_of(size)).then(|| AlignedBuf::from_slice(t.data))
            })
            .collect();
        let mut in_ptrs: Vec<*const u8> =
            inputs.iter().zip(&copies).map(|(t, c)| c.as_ref().map_or(t.data.as_ptr(), |c| c.as_ptr())).collect();
        // An input with run-time dims shorter than its bound is copied into the scratch
        // memory, sized at the bound: the code may read rows past the run's (never using them).
        // One with a run-time inner axis is spread out to the strides of its bound shape
        // (the rest of that space holds this input's earlier values, or zeros: the code
        // never uses them).
        let n_sym = self.manifest.symbols.len();
        for (i, (t, s)) in inputs.iter().zip(&self.manifest.inputs).enumerate() {
            let Some(at) = self.staging_offsets[i].filter(|_| t.data.len() < s.byte_len()) else { continue };
            if s.padded(n_sym) {
                let dst = &mut scratch.as_mut_slice()[at..at + s.byte_len()];
                padded::spread(t.data, t.shape, &s.shape, t.dtype.size(), dst);
                in_ptrs[i] = dst.as_ptr();
            } else {
                let dst = &mut scratch.as_mut_slice()[at..at + t.data.len()];
                dst.copy_from_slice(t.data);
                in_ptrs[i] = dst.as_ptr();
            }
        }
        // Outputs are written in place (kernels need only the elements' natural alignment
        // there).
        let out_ptrs: Vec<*mut u8> = outputs.iter_mut().map(|b| b.as_mut_ptr()).collect();
        let result = self.run_parts(&in_ptrs, &out_ptrs, &mut scratch, dims, rec);
        self.scratch.lock().unwrap_or_else(|e| e.into_inner()).push(scratch);
        result?;
        // An output laid out at its bound shape is gathered to the start of its buffer.
        for (b, s) in outputs.iter_mut().zip(specs).filter(|(_, s)| s.padded(n_sym)) {
            let shape = output_shape(s, dims)?;
            let size = DTypeCode::from_i32(s.dtype).expect("checked at load").size();
            padded::gather_in_place(b, &shape, &s.shape, size);
        }
        Ok(())
    }
}

/// An input's shape as the manifest gives it: fixed dims as numbers, run-time ones as
/// `name=lo..=hi`.
fn shape_text(s: &TensorSpec, symbols: &[kiln_abi::manifest::DimBound]) -> String {
    let dims: Vec<String> = s
        .shape
        .iter()
        .enumerate()
        .map(|(d, &n)| match s.dim_slots.get(d).and_then(|&k| usize::try_from(k).ok()) {
            Some(k) => format!("{}={}..={}", symbols[k].name, symbols[k].lo, symbols[k].hi),
            None => n.to_string(),
        })
        .collect();
    dims.join(", ")
}

/// The shape of an output after a run: its fixed shape, or the sizes the code wrote to its
/// run-time dim slots, checked against its bounds and its buffer (the code is trusted to
/// write them, never to write them in range).
fn output_shape(s: &TensorSpec, dims: &[i64]) -> Result<Vec<usize>, RuntimeError> {
    if !s.is_dynamic() {
        return Ok(s.shape.iter().map(|&d| d as usize).collect());
    }
    let bad = |what: String| RuntimeError::Manifest(format!("output `{}`: {what}", s.name));
    let mut shape = Vec::with_capacity(s.shape.len());
    for (d, (&slot, &bound)) in s.dim_slots.iter().zip(&s.shape).enumerate() {
        let size = if slot < 0 { bound as i64 } else { dims[slot as usize] };
        if size < 0 || size as u64 > bound {
            return Err(bad(format!("the compiled code gave dim {d} size {size}, outside 0..={bound}")));
        }
        shape.push(size as usize);
    }
    let size = DTypeCode::from_i32(s.dtype).map_or(1, DTypeCode::size);
    let bytes = shape.iter().try_fold(size, |a, &d| a.checked_mul(d));
    if bytes.is_none_or(|b| b > s.byte_len()) {
        return Err(bad(format!("shape {shape:?} does not fit its buffer of {} bytes", s.byte_len())));
    }
    Ok(shape)
}
