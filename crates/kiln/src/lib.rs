//! Kiln: compile ONNX models into native artifacts and run them.
//!
//! Compile a model file, load the artifact and run it (the bundled example MLP):
//!
//! ```
//! use kiln::{CompileOptions, Compiler, KernelCache, Session, TensorRef};
//! let opts = CompileOptions { threads: 1, kernel_cache: KernelCache::disabled(), ..Default::default() };
//! let artifact = Compiler::new(opts).compile_path("../../examples/mlp/model.onnx")?;
//! let session = Session::from_bytes(&artifact.bytes(), &Default::default())?;
//! assert_eq!(session.inputs()[0].name, "x");
//! let x = [0.5f32; 8];
//! let y = session.run(&[TensorRef::f32(&[1, 8], &x)])?;
//! assert_eq!((y[0].name.as_str(), y[0].shape.as_slice()), ("y", &[1, 4][..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Or build the graph in code. Here `y = relu(x · W)`, with outputs worked out by hand:
//!
//! ```
//! use kiln::ir::op::UnaryOp;
//! use kiln::ir::{DType, Graph, Op, Tensor, TensorType};
//! use kiln::{CompileOptions, Compiler, KernelCache, Session, TensorRef};
//!
//! let mut g = Graph::new("tiny");
//! let x = g.add_input("x", TensorType::new(DType::F32, vec![1, 2]));
//! let w = g.add_const("w", Tensor::f32(vec![2, 2], vec![1.0, -2.0, 1.0, -3.0]));
//! let xw = g.add_node(Op::MatMul, &[x, w], "matmul", &[])?[0];
//! g.outputs = g.add_node(Op::Unary(UnaryOp::Relu), &[xw], "relu", &[])?;
//!
//! let mut opts = CompileOptions { kernel_cache: KernelCache::disabled(), ..Default::default() };
//! opts.target.opt_level = 1; // LLVM's O1 for the kernels: quicker to compile
//! let artifact = Compiler::new(opts).compile_graph(g)?;
//! let session = Session::from_bytes(&artifact.bytes(), &Default::default())?;
//! let y = session.run(&[TensorRef::f32(&[1, 2], &[1.0, 2.0])])?;
//! // [1, 2] · [[1, -2], [1, -3]] = [3, -8]; relu gives [3, 0].
//! assert_eq!(y[0].to_f32(), Some(vec![3.0, 0.0]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`Compiler::compile_file_as`] writes the other artifact kinds (a static library, an
//! object, a C header); the `kiln-build` crate does it from a build script.

use std::collections::HashMap;
use std::path::Path;

use kiln_abi::manifest::Manifest;

pub mod native;
use kiln_ir::lir::Program;
use kiln_ir::Graph;
use kiln_passes::pipeline::{self, Until};
pub use native::ArtifactKind;

pub use kiln_abi as abi;
pub use kiln_abi::manifest::TensorSpec;
pub use kiln_abi::DTypeCode;
pub use kiln_backend_cpu::cache::KernelCache;
pub use kiln_backend_cpu::{CpuTarget, Emit};
pub use kiln_ir as ir;
pub use kiln_onnx::{
    decode_value, element_name, parse_input_shape, ImportError, ImportOptions, OnnxValue, ValueKind, ValueSpec,
};
pub use kiln_passes::memory::{MemoryReport, WeightSection};
pub use kiln_passes::partition::{Device, DeviceKind, Plan};
pub use kiln_passes::{pass_names, PassError};
pub use kiln_runtime::{RuntimeError, Session, SessionOptions, Tensor, TensorRef};

/// An error and its causes on one line (`a: b: c`), skipping causes already spelled out.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    msg.replace('\n', " ")
}

/// Decodes an ONNX `TensorProto` file (the conformance suite's `input_0.pb`).
pub fn read_tensor_proto(bytes: &[u8]) -> Result<kiln_ir::Tensor, ImportError> {
    kiln_onnx::decode_tensor_proto(bytes)
}

/// Encodes a tensor as an ONNX `TensorProto` named `name`, with its exact element type (the
/// form `kiln run --output-format pb` writes; `.npy` has no bf16, float8 or 4/2-bit types).
pub fn write_tensor_proto(t: &kiln_ir::Tensor, name: &str) -> Vec<u8> {
    kiln_onnx::encode_tensor_proto(t, name)
}

/// The declared kind (tensor, sequence, optional) of each graph input of an ONNX model file.
pub fn input_kinds(path: impl AsRef<Path>) -> Result<HashMap<String, ValueKind>, ImportError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io { path: path.to_path_buf(), source })?;
    let m = kiln_onnx::decode_model(bytes.into())?;
    Ok(m.graph
        .iter()
        .flat_map(|g| &g.input)
        .map(|vi| (vi.name().to_string(), ValueKind::of(vi.r#type.as_ref())))
        .collect())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Backend(#[from] kiln_backend_cpu::BackendError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("unknown pass `{0}`; passes are: {1}")]
    UnknownPass(String, String),
    #[error("`--after {0}` stops in {1}: print it with --emit {2}")]
    AfterInOtherIr(String, &'static str, &'static str),
    #[error(
        "unknown target `{0}`; supported: cpu (this machine) or an LLVM target triple, e.g. aarch64-unknown-linux-gnu"
    )]
    UnknownTarget(String),
    #[error("writing `{path}`: {source}")]
    Write { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Native(#[from] native::NativeError),
    #[error("target `{target}`: {message}")]
    Devices { target: String, message: String },
}

impl Error {
    /// Graph inputs that must be frozen to constants for the model to compile (empty when
    /// the error is something else).
    pub fn inputs_to_freeze(&self) -> &[String] {
        match self {
            Error::Import(ImportError::NeedsConstant(c)) => &c.graph_inputs,
            _ => &[],
        }
    }
}

/// Options of a compilation.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Pins input shapes with symbolic or unknown dims, by input name.
    pub input_shapes: HashMap<String, Vec<usize>>,
    pub target: CpuTarget,
    /// Verify the HIR after every pass (always on in debug builds).
    pub verify: bool,
    /// Graph inputs replaced by constant values at compile time (`--freeze-input`): the
    /// compiled model no longer takes them. This is how shape-like inputs (a Reshape's
    /// target shape given as a graph input) become static.
    pub frozen_inputs: HashMap<String, kiln_ir::Tensor>,
    /// What each sequence or optional graph input holds (element types and shapes, or
    /// whether it is present): the compiled model takes it as tensors `<name>[0]`, … .
    pub value_inputs: HashMap<String, ValueSpec>,
    /// Where compiled kernels are cached between compilations (by default from the
    /// environment: `$KILN_CACHE_DIR`, `off` to disable, else `~/.cache/kiln`).
    pub kernel_cache: KernelCache,
    /// [`Artifact::save`] puts the weights in a file of their own next to the artifact
    /// (`<artifact>.weights`, which the runtime maps) instead of inside it.
    pub external_weights: bool,
    /// Threads compiling kernels in parallel (0: one per core).
    pub threads: usize,
    /// The devices to split the model across (`--target cpu:mem=64MiB,cpu:mem=64MiB`), in
    /// order of preference; empty for the whole model on one CPU, [`CompileOptions::target`].
    /// Every CPU device compiles for `target`.
    pub devices: Vec<Device>,
    /// The GPU that `cuda` devices compile for.
    pub cuda: kiln_backend_cuda::CudaTarget,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            input_shapes: HashMap::new(),
            target: CpuTarget::host(),
            verify: false,
            frozen_inputs: HashMap::new(),
            value_inputs: HashMap::new(),
            kernel_cache: KernelCache::from_env(),
            external_weights: false,
            threads: 0,
            devices: Vec::new(),
            cuda: Default::default(),
        }
    }
}

impl CompileOptions {
    /// Parses a `--target` value: `cpu` (the host).
    pub fn set_target(&mut self, name: &str) -> Result<(), Error> {
        self.set_target_cpu(name, None)
    }

    /// Parses a `--target` value and an optional `--cpu`: `cpu` or `host` (this machine, with
    /// all its features, unless `cpu` names another CPU), or an LLVM target triple such as
    /// `aarch64-unknown-linux-gnu` (for `cpu`, default `generic`). The optimization level
    /// ([`CpuTarget::opt_level`]) is kept.
    ///
    /// A list of devices (`cuda,cpu`, `cpu:mem=64MiB,cpu:mem=64MiB`: a comma or a `:` option
    /// makes it one) splits the model across them ([`CompileOptions::devices`]); its CPUs are
    /// this machine (or `cpu`).
    pub fn set_target_cpu(&mut self, name: &str, cpu: Option<&str>) -> Result<(), Error> {
        self.devices = Vec::new();
        if name.contains(',') || name.contains(':') || name == "cuda" {
            let devices = kiln_passes::partition::parse_devices(name)
                .map_err(|message| Error::Devices { target: name.into(), message })?;
            self.set_target_cpu("cpu", cpu)?;
            self.devices = devices;
            return Ok(());
        }
        let opt_level = self.target.opt_level;
        self.target = match name {
            "cpu" | "host" => match cpu {
                None => CpuTarget::host(),
                Some(c) => CpuTarget::cross(&CpuTarget::host().triple, c),
            },
            t if t.split('-').count() >= 2 => CpuTarget::cross(t, cpu.unwrap_or("generic")),
            other => return Err(Error::UnknownTarget(other.to_string())),
        };
        self.target.opt_level = opt_level;
        // A target LLVM cannot build for is reported now, not after the front end ran.
        kiln_backend_cpu::check_target(&self.target)?;
        Ok(())
    }
}

/// A compiled model: the `.kiln` file's parts and what planning found. The weights are the
/// model's constants themselves (shared with the imported file), so writing the artifact
/// ([`Artifact::write_to`], [`Artifact::save`]) streams them instead of copying them first.
#[derive(Debug)]
pub struct Artifact {
    pub manifest: Manifest,
    /// The shared library for the manifest's target.
    pub code: Vec<u8>,
    pub weights: WeightSection,
    pub memory: MemoryReport,
    /// How long each phase of the compilation took, in order (`kiln compile --timings`).
    pub timings: Vec<(&'static str, std::time::Duration)>,
    /// [`Artifact::save`] writes the weights to a file of their own
    /// ([`CompileOptions::external_weights`]).
    pub external_weights: bool,
}

impl Artifact {
    /// The `.kiln` file's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to memory cannot fail");
        out
    }

    /// Writes the `.kiln` file into `w`.
    pub fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        let pieces = self.weights.slices();
        let weights = kiln_abi::artifact::Pieces { pieces: &pieces, len: self.weights.len };
        kiln_abi::artifact::write_to(w, &self.manifest, &self.code, weights)
    }

    /// Writes the `.kiln` file at `path`: into a temporary file next to it, renamed over
    /// `path` once complete, so that a failure never leaves a truncated artifact behind.
    ///
    /// With [`Artifact::external_weights`], the weights go first into `<path>.weights` (the
    /// file name recorded in the manifest, with the weights' length and checksum) and the
    /// artifact's own weight section is empty. [`Artifact::bytes`] always gives the whole
    /// artifact, weights inside.
    pub fn save(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        self.save_with_manifest(path.as_ref()).map(|_| ())
    }

    /// [`Artifact::save`], returning the manifest written (which names the weights file).
    fn save_with_manifest(&self, path: &Path) -> std::io::Result<Manifest> {
        let pieces = self.weights.slices();
        let weights = kiln_abi::artifact::Pieces { pieces: &pieces, len: self.weights.len };
        if !self.external_weights {
            write_file(path, |w| kiln_abi::artifact::write_seekable(w, &self.manifest, &self.code, weights))?;
            return Ok(self.manifest.clone());
        }
        let name = format!("{}.weights", path.file_name().unwrap_or_default().to_string_lossy());
        let mut checksum = 0;
        write_file(&path.with_file_name(&name), |w| {
            checksum = kiln_abi::artifact::write_weights_file(w, weights)?;
            Ok(())
        })?;
        let manifest = Manifest {
            weights_file: name,
            weights_len: self.weights.len,
            weights_checksum: checksum,
            ..self.manifest.clone()
        };
        let none = kiln_abi::artifact::Pieces { pieces: &[], len: 0 };
        write_file(path, |w| kiln_abi::artifact::write_seekable(w, &manifest, &self.code, none))?;
        Ok(manifest)
    }
}

/// Writes a file through `write`: into a temporary file next to `path`, renamed over it once
/// complete, so that a failure never leaves a truncated file behind.
fn write_file(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        let msg = format!("the folder `{}` does not exist", dir.display());
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, msg));
    }
    let mut builder = tempfile::Builder::new();
    builder.prefix(".kiln-");
    // A new file's usual mode (0o666 less the umask), not a temporary file's 0o600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir)?;
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        write(&mut w)?;
        std::io::Write::flush(&mut w)?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// What [`Compiler::compile_file`] did.
#[derive(Debug)]
pub struct Compiled {
    /// The output already held this compilation's artifact and was kept.
    pub up_to_date: bool,
    /// The artifact file's size in bytes.
    pub file_len: u64,
    /// How long each phase took, in order.
    pub timings: Vec<(&'static str, std::time::Duration)>,
    /// The artifact's manifest: inputs, outputs, target, arena size, [`Compiler::source_key`]
    /// of this compilation, ….
    pub manifest: Manifest,
}

/// A hash of `bytes` (16 bytes), in 8 MiB pieces hashed in parallel.
fn content_hash(bytes: &[u8]) -> [u8; 16] {
    use rayon::prelude::*;
    let pieces: Vec<u128> = bytes.par_chunks(8 << 20).map(xxhash_rust::xxh3::xxh3_128).collect();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(bytes.len() as u64).to_le_bytes());
    for p in pieces {
        h.update(&p.to_le_bytes());
    }
    h.digest128().to_le_bytes()
}

/// The manifest of the sound artifact at `path`, if there is one (checksum verified).
struct Existing {
    manifest: Manifest,
    file_len: u64,
}

fn existing_artifact(path: &Path) -> Option<Existing> {
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: read-only mapping, read once here; a file changed meanwhile fails its checksum.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let sections = kiln_abi::artifact::read(&map).ok()?;
    if !sections.manifest.weights_file.is_empty() {
        let dir = path.parent().unwrap_or(Path::new(""));
        kiln_runtime::check_weights_file(dir, &sections.manifest).ok()?;
    }
    Some(Existing { manifest: sections.manifest, file_len: map.len() as u64 })
}

/// Sets a file's modification time to now, as if it had just been written (make-like build
/// systems compare it with the model's).
fn touch(path: &Path) -> std::io::Result<()> {
    std::fs::File::options().append(true).open(path)?.set_modified(std::time::SystemTime::now())
}

/// A stopwatch for compilation phases: each call records the time since the previous one
/// (or since its creation) under a phase name.
fn lap_timer() -> impl FnMut(&'static str, &mut Vec<(&'static str, std::time::Duration)>) {
    let mut clock = std::time::Instant::now();
    move |name, timings| {
        let now = std::time::Instant::now();
        timings.push((name, now - clock));
        clock = now;
    }
}

/// A compiled program before it is linked or packaged.
struct Built {
    manifest: Manifest,
    objects: kiln_backend_cpu::CpuObjects,
    weights: WeightSection,
    memory: MemoryReport,
    timings: Vec<(&'static str, std::time::Duration)>,
}

pub struct Compiler {
    pub opts: CompileOptions,
}

/// The CPU backend's steps in the pipeline: it packs constant GEMM operands into its
/// kernels' panels.
struct CpuSteps<'a>(&'a CpuTarget);

impl pipeline::Backend for CpuSteps<'_> {
    fn prepack(&self, p: &mut Program) -> usize {
        kiln_backend_cpu::prepack(p, self.0)
    }
}

/// The backends of the devices a model is split across: a CPU runs every op, a GPU what
/// [`kiln_backend_cuda::supports`] says; only the CPU adds a step to the pipeline.
struct DeviceBackends<'a> {
    cpu: CpuSteps<'a>,
}

impl kiln_passes::partition::Backends for DeviceBackends<'_> {
    fn supports(&self, kind: DeviceKind, g: &Graph, node: &kiln_ir::Node) -> bool {
        match kind {
            DeviceKind::Cpu => true,
            DeviceKind::Cuda => kiln_backend_cuda::supports(g, node),
        }
    }

    fn backend(&self, kind: DeviceKind) -> &dyn pipeline::Backend {
        match kind {
            DeviceKind::Cpu => &self.cpu,
            DeviceKind::Cuda => &pipeline::Plain,
        }
    }
}

impl Compiler {
    pub fn new(opts: CompileOptions) -> Compiler {
        Compiler { opts }
    }

    /// Runs `f` on a pool of [`CompileOptions::threads`] threads (rayon's global pool for 0).
    fn pooled<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        if self.opts.threads == 0 {
            return f();
        }
        match rayon::ThreadPoolBuilder::new().num_threads(self.opts.threads).build() {
            Ok(pool) => pool.install(f),
            Err(_) => f(),
        }
    }

    fn import_opts(&self) -> ImportOptions {
        // A frozen input is a constant: its value fixes its shape, so a pin for it is moot.
        let mut input_shapes = self.opts.input_shapes.clone();
        input_shapes.retain(|name, _| !self.opts.frozen_inputs.contains_key(name));
        ImportOptions { input_shapes, value_inputs: self.opts.value_inputs.clone() }
    }

    /// Imports an ONNX file into HIR.
    pub fn import_path(&self, path: impl AsRef<Path>) -> Result<Graph, Error> {
        Ok(kiln_onnx::import_path_with_constants(path.as_ref(), &self.import_opts(), &self.opts.frozen_inputs)?)
    }

    /// The pipeline's context for the CPU this compiler targets.
    fn cpu_steps(&self) -> CpuSteps<'_> {
        CpuSteps(&self.opts.target)
    }

    /// Checks a step name for `--after` (`import` or any step of [`pipeline::PIPELINE`]).
    fn check_pass_name(name: &str) -> Result<(), Error> {
        if name == "import" || pass_names().contains(&name) {
            return Ok(());
        }
        Err(Error::UnknownPass(name.into(), format!("import, {}", pass_names().join(", "))))
    }

    /// Runs the HIR steps of the pipeline, stopping after `after` if given (`import`: none;
    /// an LIR step: all the HIR steps).
    pub fn optimize(&self, g: &mut Graph, after: Option<&str>) -> Result<(), Error> {
        let until = match after {
            Some("import") => return Ok(()),
            Some(a) => {
                Self::check_pass_name(a)?;
                if pipeline::is_lir(a) {
                    Until::Hir
                } else {
                    Until::After(a)
                }
            }
            None => Until::Hir,
        };
        let cpu = self.cpu_steps();
        pipeline::run(g, &pipeline::Context::new(&cpu, self.opts.verify), until)?;
        Ok(())
    }

    /// Runs the LIR steps of the pipeline on an optimized graph: a memory-planned LIR
    /// program and its weight section.
    pub fn lower(&self, g: &Graph) -> Result<(Program, MemoryReport, WeightSection), Error> {
        let cpu = self.cpu_steps();
        let l = pipeline::lower(g, &pipeline::Context::new(&cpu, self.opts.verify))?;
        Ok((l.program, l.memory, l.weights))
    }

    /// Compiles an optimized graph into an artifact.
    pub fn compile_graph(&self, g: Graph) -> Result<Artifact, Error> {
        self.pooled(|| self.compile_graph_timed(g, Vec::new()))
    }

    fn compile_graph_timed(
        &self,
        g: Graph,
        timings: Vec<(&'static str, std::time::Duration)>,
    ) -> Result<Artifact, Error> {
        if self.partitioned() {
            return self.compile_partitioned(g, timings);
        }
        let mut b = self.build(g, timings, &kiln_backend_cpu::EntryNames::default())?;
        let start = std::time::Instant::now();
        let code = kiln_backend_cpu::link_shared(&b.objects, &self.opts.target, &self.opts.kernel_cache)?;
        b.timings.push(("link", start.elapsed()));
        Ok(Artifact {
            manifest: b.manifest,
            code,
            weights: b.weights,
            memory: b.memory,
            timings: b.timings,
            external_weights: self.opts.external_weights,
        })
    }

    /// Optimizes, lowers and compiles a graph to unlinked objects whose entry symbols are
    /// `names`.
    fn build(
        &self,
        mut g: Graph,
        mut timings: Vec<(&'static str, std::time::Duration)>,
        names: &kiln_backend_cpu::EntryNames,
    ) -> Result<Built, Error> {
        let cpu = self.cpu_steps();
        let out = pipeline::run(&mut g, &pipeline::Context::new(&cpu, self.opts.verify), Until::End)?;
        // `--timings` phases: the HIR steps, then lowering and the LIR steps.
        let phase = |lir: bool| out.timings.iter().filter(|(n, _)| pipeline::is_lir(n) == lir).map(|(_, t)| *t).sum();
        timings.push(("optimize", phase(false)));
        timings.push(("lower", phase(true)));
        let pipeline::Lowered { program: p, memory, weights } = out.lowered.expect("the pipeline lowers");
        let mut lap = lap_timer();
        let objects = kiln_backend_cpu::compile_objects(&p, &self.opts.target, &self.opts.kernel_cache, names)?;
        lap("codegen", &mut timings);
        let spec = |(name, dtype, shape): &(String, kiln_ir::DType, Vec<usize>)| TensorSpec {
            name: name.clone(),
            dtype: dtype.code() as i32,
            shape: shape.iter().map(|&d| d as u64).collect(),
        };
        let manifest = Manifest {
            abi_major: kiln_abi::ABI_MAJOR,
            abi_minor: kiln_abi::ABI_MINOR,
            target_triple: objects.triple.clone(),
            target_cpu: objects.cpu.clone(),
            inputs: p.inputs.iter().map(spec).collect(),
            outputs: p.outputs.iter().map(spec).collect(),
            arena_bytes: p.arena_bytes,
            model_name: g.name.clone(),
            producer: format!("kiln {}", env!("CARGO_PKG_VERSION")),
            check_messages: p.assert_messages(),
            source_key: String::new(),
            weights_file: String::new(),
            weights_len: 0,
            weights_checksum: 0,
            frozen_inputs: self.frozen_specs(),
            ..Default::default()
        };
        Ok(Built { manifest, objects, weights, memory, timings })
    }

    /// The inputs compiled in as constants, sorted by name, for the manifest.
    fn frozen_specs(&self) -> Vec<kiln_abi::manifest::FrozenInput> {
        let mut frozen: Vec<_> = self.opts.frozen_inputs.iter().collect();
        frozen.sort_by_key(|(name, _)| name.as_str());
        frozen
            .into_iter()
            .map(|(name, t)| kiln_abi::manifest::FrozenInput::new(name, t.dtype().code() as i32, t.shape(), &t.data))
            .collect()
    }

    /// Whether the options split the model across devices (a target list, or a memory cap).
    fn partitioned(&self) -> bool {
        !self.opts.devices.is_empty()
    }

    fn devices_text(&self) -> String {
        self.opts.devices.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Splits an imported graph across [`CompileOptions::devices`] (after simplification;
    /// fusion runs per partition): the plan `kiln inspect --partitions` prints.
    /// The plan's [`Plan::device_usage`] is filled in from the lowered partitions.
    pub fn plan(&self, g: &mut Graph) -> Result<Plan, Error> {
        let split = self.split(g)?;
        let mut plan = split.plan;
        plan.device_usage = split.usage;
        Ok(plan)
    }

    /// Runs the pipeline on a model split across devices ([`kiln_passes::partition::split`]).
    fn split(&self, g: &mut Graph) -> Result<kiln_passes::partition::Split, Error> {
        let backends = DeviceBackends { cpu: self.cpu_steps() };
        kiln_passes::partition::split(g, &self.opts.devices, &backends, self.opts.verify).map_err(|e| match e {
            PassError::Devices(message) => Error::Devices { target: self.devices_text(), message },
            e => Error::Pass(e),
        })
    }

    /// Compiles a graph split across devices: each partition into a program with entry
    /// points of its own (`kiln_p<i>_entry`), all linked into one library; the weight
    /// sections laid end to end; the manifest lists the partitions and the slots they read
    /// and write.
    fn compile_partitioned(
        &self,
        mut g: Graph,
        mut timings: Vec<(&'static str, std::time::Duration)>,
    ) -> Result<Artifact, Error> {
        let mut lap = lap_timer();
        let kiln_passes::partition::Split { plan, partitions: lowered, .. } = self.split(&mut g)?;
        lap("lower", &mut timings);
        let mut objects = Vec::new();
        let mut gpu: HashMap<usize, kiln_backend_cuda::CudaModule> = HashMap::new();
        for (i, (p, l)) in plan.partitions.iter().zip(&lowered).enumerate() {
            match plan.devices[p.device].kind {
                DeviceKind::Cpu => {
                    let names = kiln_backend_cpu::EntryNames::with_prefix(&format!("kiln_p{i}"));
                    let cache = &self.opts.kernel_cache;
                    let program = &l.lowered.program;
                    objects.push(kiln_backend_cpu::compile_objects(program, &self.opts.target, cache, &names)?);
                }
                DeviceKind::Cuda => {
                    gpu.insert(i, kiln_backend_cuda::compile(&l.lowered.program, &self.opts.cuda)?);
                }
            }
        }
        lap("codegen", &mut timings);
        let refs: Vec<&kiln_backend_cpu::CpuObjects> = objects.iter().collect();
        let code = if refs.is_empty() {
            Vec::new()
        } else {
            kiln_backend_cpu::link_shared_all(&refs, &self.opts.target, &self.opts.kernel_cache)?
        };
        lap("link", &mut timings);

        let slots = kiln_passes::partition::Slots::assign(&g, &plan);
        let mut weights = WeightSection::default();
        let mut partitions = Vec::with_capacity(lowered.len());
        for (i, (p, l)) in plan.partitions.iter().zip(lowered.iter().map(|l| &l.lowered)).enumerate() {
            let base = weights.len.next_multiple_of(64);
            weights.pieces.extend(l.weights.pieces.iter().map(|(off, b)| (base + off, b.clone())));
            weights.len = base + l.weights.len;
            let cuda = gpu.remove(&i);
            partitions.push(kiln_abi::manifest::Partition {
                device: plan.devices[p.device].kind.name().to_string(),
                device_index: p.device as u32,
                entry: if cuda.is_some() { String::new() } else { format!("kiln_p{i}_entry") },
                arena_bytes: l.program.arena_bytes,
                weights_offset: base,
                weights_len: l.weights.len,
                inputs: p.inputs.iter().map(|v| slots.home[v]).collect(),
                outputs: p.outputs.iter().map(|v| slots.home[v]).collect(),
                check_messages: l.program.assert_messages(),
                ptx_arch: cuda.as_ref().map(|c| c.arch.clone()).unwrap_or_default(),
                launches: cuda.as_ref().map(|c| c.launches.clone()).unwrap_or_default(),
                ptx: cuda.map(|c| c.ptx).unwrap_or_default(),
            });
        }
        let reports = || lowered.iter().map(|l| &l.lowered.memory);
        let memory = MemoryReport {
            arena_bytes: reports().map(|m| m.arena_bytes).max().unwrap_or(0),
            lower_bound: reports().map(|m| m.lower_bound).max().unwrap_or(0),
            buffers: reports().map(|m| m.buffers).sum(),
            in_place: reports().map(|m| m.in_place).sum(),
        };
        let spec = |v: &kiln_ir::ValueId| {
            let t = g.ty(*v);
            TensorSpec {
                name: g.value(*v).name.clone(),
                dtype: t.dtype.code() as i32,
                shape: t.shape.iter().map(|&d| d as u64).collect(),
            }
        };
        let manifest = Manifest {
            abi_major: kiln_abi::ABI_MAJOR,
            abi_minor: kiln_abi::ABI_MINOR,
            target_triple: self.opts.target.triple.clone(),
            target_cpu: self.opts.target.cpu.clone(),
            inputs: g.inputs.iter().map(spec).collect(),
            outputs: g.outputs.iter().map(spec).collect(),
            arena_bytes: memory.arena_bytes,
            model_name: g.name.clone(),
            producer: format!("kiln {}", env!("CARGO_PKG_VERSION")),
            partitions,
            intermediates: slots.intermediates.iter().map(spec).collect(),
            copies: slots.copies.iter().map(|&(from, to)| kiln_abi::manifest::SlotCopy { from, to }).collect(),
            devices: self.devices_text(),
            frozen_inputs: self.frozen_specs(),
            ..Default::default()
        };
        Ok(Artifact { manifest, code, weights, memory, timings, external_weights: self.opts.external_weights })
    }

    /// Compiles an ONNX file into an artifact.
    pub fn compile_path(&self, path: impl AsRef<Path>) -> Result<Artifact, Error> {
        let start = std::time::Instant::now();
        let g = self.import_path(path)?;
        self.pooled(|| self.compile_graph_timed(g, vec![("import", start.elapsed())]))
    }

    /// Compiles the ONNX file `model` into the artifact file `out`, unless `out` already
    /// holds this very compilation: a sound artifact (checksum verified) whose source key
    /// ([`Compiler::source_key`]) is this one's. Such a file is kept, only its modification
    /// time updated, so that an unchanged model costs a hash of its bytes, not a compilation
    /// and a rewrite of its weights.
    pub fn compile_file(&self, model: impl AsRef<Path>, out: impl AsRef<Path>) -> Result<Compiled, Error> {
        let (model, out) = (model.as_ref(), out.as_ref());
        self.pooled(|| self.compile_file_inner(model, out))
    }

    fn compile_file_inner(&self, model: &Path, out: &Path) -> Result<Compiled, Error> {
        let start = std::time::Instant::now();
        let (g, sources) = kiln_onnx::import_path_with_sources(model, &self.import_opts(), &self.opts.frozen_inputs)?;
        let mut timings = vec![("import", start.elapsed())];
        let start = std::time::Instant::now();
        let (key, existing) = rayon::join(|| self.source_key(&sources), || existing_artifact(out));
        timings.push(("check", start.elapsed()));
        if let Some(m) = existing.filter(|m| m.manifest.source_key == key) {
            if touch(out).is_ok() {
                return Ok(Compiled { up_to_date: true, file_len: m.file_len, timings, manifest: m.manifest });
            }
        }
        let mut art = self.compile_graph_timed(g, timings)?;
        art.manifest.source_key = key;
        let start = std::time::Instant::now();
        art.manifest =
            art.save_with_manifest(out).map_err(|source| Error::Write { path: out.to_path_buf(), source })?;
        art.timings.push(("write", start.elapsed()));
        let file_len = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        Ok(Compiled { up_to_date: false, file_len, timings: art.timings, manifest: art.manifest })
    }

    /// Compiles the ONNX file `model` into `out` as an artifact of kind `kind`; a static
    /// library, object or header names its symbols after `name` (a C identifier:
    /// `<name>_entry`, `<name>_weights`, `<name>_run`, …). A `.kiln` artifact goes through
    /// [`Compiler::compile_file`] (kept when up to date).
    pub fn compile_file_as(
        &self,
        model: impl AsRef<Path>,
        out: impl AsRef<Path>,
        kind: ArtifactKind,
        name: &str,
    ) -> Result<Compiled, Error> {
        let (model, out) = (model.as_ref(), out.as_ref());
        if kind == ArtifactKind::Kiln {
            return self.compile_file(model, out);
        }
        self.pooled(|| self.compile_native(model, out, kind, name))
    }

    fn compile_native(&self, model: &Path, out: &Path, kind: ArtifactKind, name: &str) -> Result<Compiled, Error> {
        if self.partitioned() {
            return Err(Error::Devices {
                target: self.devices_text(),
                message: format!("a model split across devices is written as a .kiln artifact, not `--emit {kind:?}`")
                    .to_lowercase(),
            });
        }
        let name = native::c_name(name);
        let start = std::time::Instant::now();
        let (g, sources) = kiln_onnx::import_path_with_sources(model, &self.import_opts(), &self.opts.frozen_inputs)?;
        let timings = vec![("import", start.elapsed())];
        let mut b = self.build(g, timings, &kiln_backend_cpu::EntryNames::with_prefix(&name))?;
        b.manifest.source_key = self.source_key(&sources);
        let start = std::time::Instant::now();
        let bytes = match kind {
            ArtifactKind::Header => native::header(&b.manifest, &name).into_bytes(),
            ArtifactKind::Staticlib | ArtifactKind::Object => {
                let weights = native::weights_object(&b.manifest.target_triple, &name, &b.weights)?;
                if kind == ArtifactKind::Object {
                    let mut all = b.objects.all();
                    all.push(&weights);
                    kiln_backend_cpu::link_relocatable(&all, &self.opts.target)?
                } else {
                    let mut members = vec![(format!("{name}_entry.o"), b.objects.entry.1)];
                    members.extend(b.objects.bodies.into_iter().map(|(key, o)| (format!("kiln_b{key}.o"), o)));
                    members.push((format!("{name}_weights.o"), weights));
                    native::staticlib(members)?
                }
            }
            ArtifactKind::Kiln => unreachable!("handled above"),
        };
        b.timings.push(("package", start.elapsed()));
        let start = std::time::Instant::now();
        write_file(out, |w| std::io::Write::write_all(w, &bytes))
            .map_err(|source| Error::Write { path: out.to_path_buf(), source })?;
        b.timings.push(("write", start.elapsed()));
        Ok(Compiled { up_to_date: false, file_len: bytes.len() as u64, timings: b.timings, manifest: b.manifest })
    }

    /// The [`Compiler::source_key`] of compiling the ONNX file `model`, and the files it was
    /// read from (the model and its external data files), without compiling it.
    pub fn source_key_of(&self, model: impl AsRef<Path>) -> Result<(String, Vec<std::path::PathBuf>), Error> {
        let model = model.as_ref();
        let (_, sources) = kiln_onnx::import_path_with_sources(model, &self.import_opts(), &self.opts.frozen_inputs)?;
        let dir = model.parent().unwrap_or(Path::new(""));
        let files = std::iter::once(model.to_path_buf()).chain(sources.external.iter().map(|(n, _)| dir.join(n)));
        Ok((self.source_key(&sources), files.collect()))
    }

    /// What an artifact compiled from `sources` with these options depends on, hashed (32
    /// hex digits): the compiler (its sources and dependencies, LLVM's version), the target,
    /// the options that change the output, and the bytes of the model and of its external
    /// data files.
    pub fn source_key(&self, sources: &kiln_onnx::Sources) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut put = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        put(env!("KILN_COMPILER_FINGERPRINT").as_bytes());
        put(kiln_backend_cpu::cache::toolchain_id().as_bytes());
        put(format!("{:?}", self.opts.target).as_bytes());
        put(&[self.opts.external_weights as u8]);
        put(self.devices_text().as_bytes());
        put(self.opts.cuda.arch.as_bytes());
        let mut shapes: Vec<_> = self.opts.input_shapes.iter().collect();
        shapes.sort();
        put(format!("{shapes:?}").as_bytes());
        let mut frozen: Vec<_> = self.opts.frozen_inputs.iter().collect();
        frozen.sort_by_key(|(name, _)| name.as_str());
        for (name, t) in frozen {
            put(format!("{name} {:?}", t.ty).as_bytes());
            put(&content_hash(&t.data));
        }
        let mut values: Vec<_> = self.opts.value_inputs.iter().map(|(n, v)| format!("{n} {v:?}")).collect();
        values.sort();
        put(values.join("\n").as_bytes());
        put(&content_hash(&sources.model));
        for (name, bytes) in &sources.external {
            put(name.as_bytes());
            put(&content_hash(bytes));
        }
        format!("{:032x}", h.digest128())
    }

    /// The PTX of each GPU partition of the ONNX file `path` (`kiln compile --emit ptx`): the
    /// partition's index and its module's text. An error when no partition runs on a GPU.
    pub fn emit_ptx(&self, path: impl AsRef<Path>) -> Result<Vec<(usize, String)>, Error> {
        let no_gpu = || Error::Devices {
            target: if self.partitioned() { self.devices_text() } else { "cpu".into() },
            message: "no partition runs on a GPU, so there is no PTX (give a target list with `cuda`)".into(),
        };
        if !self.opts.devices.iter().any(|d| d.kind == DeviceKind::Cuda) {
            return Err(no_gpu());
        }
        let mut g = self.import_path(path)?;
        let split = self.split(&mut g)?;
        let mut out = Vec::new();
        for (i, (p, l)) in split.plan.partitions.iter().zip(&split.partitions).enumerate() {
            if split.plan.devices[p.device].kind == DeviceKind::Cuda {
                out.push((i, kiln_backend_cuda::compile(&l.lowered.program, &self.opts.cuda)?.ptx));
            }
        }
        if out.is_empty() {
            return Err(no_gpu());
        }
        Ok(out)
    }

    /// The IR after pass `after` (or the whole pipeline) as text: HIR, LIR, LLVM IR or assembly.
    /// For a model split across devices, each partition's, after a `# partition` line.
    pub fn emit(&self, path: impl AsRef<Path>, what: &str, after: Option<&str>) -> Result<String, Error> {
        if what == "ptx" {
            let ptx = self.emit_ptx(path)?;
            return Ok(ptx.into_iter().map(|(_, text)| text).collect::<Vec<_>>().join("\n"));
        }
        if self.partitioned() && after.is_none() {
            let mut g = self.import_path(path)?;
            let split = self.split(&mut g)?;
            let plan = &split.plan;
            let mut out = String::new();
            for (i, (p, l)) in plan.partitions.iter().zip(&split.partitions).enumerate() {
                out.push_str(&format!("# partition {i} on device {} ({})\n", p.device, plan.devices[p.device]));
                out.push_str(&match what {
                    "hir" => kiln_ir::text::print(&l.graph),
                    "lir" => kiln_ir::lir::print(&l.lowered.program),
                    "llvm" | "asm" => {
                        let e = if what == "llvm" { Emit::Llvm } else { Emit::Asm };
                        kiln_backend_cpu::emit_text(&l.lowered.program, &self.opts.target, e)?
                    }
                    other => return Err(Error::UnknownTarget(format!("--emit {other}"))),
                });
            }
            return Ok(out);
        }
        let mut g = self.import_path(path)?;
        // Stop after `after` (`import`: before every step); without it, HIR stops after the
        // last HIR step and the others run the whole pipeline.
        let until = match after {
            Some("import") => None,
            Some(a) => {
                Self::check_pass_name(a)?;
                Some(Until::After(a))
            }
            None if what == "hir" => Some(Until::Hir),
            None => Some(Until::End),
        };
        let lowered = match until {
            Some(until) => {
                let cpu = self.cpu_steps();
                pipeline::run(&mut g, &pipeline::Context::new(&cpu, self.opts.verify), until)?.lowered
            }
            None => None,
        };
        let step = after.unwrap_or_default().to_string();
        match (what, lowered) {
            ("hir", None) => Ok(kiln_ir::text::print(&g)),
            ("hir", Some(_)) => Err(Error::AfterInOtherIr(step, "LIR", "lir, llvm or asm")),
            ("lir" | "llvm" | "asm", None) => Err(Error::AfterInOtherIr(step, "HIR", "hir")),
            ("lir", Some(l)) => Ok(kiln_ir::lir::print(&l.program)),
            ("llvm" | "asm", Some(l)) => {
                let e = if what == "llvm" { Emit::Llvm } else { Emit::Asm };
                Ok(kiln_backend_cpu::emit_text(&l.program, &self.opts.target, e)?)
            }
            (other, _) => Err(Error::UnknownTarget(format!("--emit {other}"))),
        }
    }
}
