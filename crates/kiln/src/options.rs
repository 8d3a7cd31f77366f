//! What a compilation is told: input shapes, frozen inputs, the target and devices, the
//! kernel cache.

use std::collections::HashMap;

use kiln_backend_cpu::cache::KernelCache;
use kiln_backend_cpu::CpuTarget;
use kiln_onnx::ValueSpec;
use kiln_passes::partition::Device;

use crate::Error;

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
    /// The most elements of an output whose size comes from data with no bound of its own
    /// (`--max-elements`; see `kiln_onnx::ImportOptions::max_elements`). `None`: such inputs
    /// must be constant (`--freeze-input`).
    pub max_elements: Option<usize>,
    /// Symbolic input dims set at each run, by the model's dim name: `(lo, hi)` bounds
    /// (`--dim batch=1..8`). The model is compiled once, its memory planned at the bounds.
    pub dims: std::collections::BTreeMap<String, (usize, usize)>,
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
    /// The precision of the products (`--precision`): f32, or bf16 weights.
    pub precision: Precision,
    /// Where the compilation reports its progress (none by default; the CLI draws it).
    pub progress: Progress,
}

/// A step of a compilation, as [`Progress`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressEvent {
    /// A phase starts: `import`, `optimize` (the passes, lowering and memory planning),
    /// `codegen`, `link` or `write`.
    Phase(&'static str),
    /// Of the kernel bodies code generation compiles (or finds in the cache), `done` are.
    Kernels { done: usize, total: usize },
}

/// A callback told of a compilation's progress ([`ProgressEvent`]), from any thread.
#[derive(Clone, Default)]
pub struct Progress(Option<std::sync::Arc<dyn Fn(ProgressEvent) + Send + Sync>>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Progress(callback)" } else { "Progress(none)" })
    }
}

impl Progress {
    pub fn new(f: impl Fn(ProgressEvent) + Send + Sync + 'static) -> Progress {
        Progress(Some(std::sync::Arc::new(f)))
    }
    pub(crate) fn phase(&self, name: &'static str) {
        if let Some(f) = &self.0 {
            f(ProgressEvent::Phase(name));
        }
    }
    /// The per-body callback code generation takes.
    pub(crate) fn kernels(&self) -> Option<impl Fn(usize, usize) + Sync + '_> {
        self.0.as_ref().map(|f| move |done, total| f(ProgressEvent::Kernels { done, total }))
    }
}

/// The precision a compilation computes products in (`--precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32 (the default: exact to the conformance tolerances).
    #[default]
    F32,
    /// The weights of matrix products and convolutions (constant operands packed at compile
    /// time) rounded to bf16, widened to f32 as the kernels load them: half the bytes to
    /// stream, the products and sums in f32, everything else (activations, softmax,
    /// normalizations, reductions) in f32. Outputs differ from f32 by the weights' rounding
    /// (2^-9 relative per weight).
    Bf16,
    /// Matrix products with constant 2-D weights (MatMul: a transformer's linear layers)
    /// quantized dynamically to 8 bits (`kiln_passes::quant::quantize_products`): the weights
    /// per column at compile time, the activations per row at run time, the products summed
    /// exactly in i32 (the CPU backend's integer GEMM) and scaled back to f32. Convolutions,
    /// products of two activations and every other op stay f32.
    Int8,
}

impl Precision {
    /// Parses a `--precision` value.
    pub fn parse(s: &str) -> Result<Precision, Error> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            "f16" => Err(Error::Options(format!("--precision {s} is not supported yet (f32, bf16 and int8 are)"))),
            other => Err(Error::Options(format!("unknown --precision `{other}` (f32, bf16 or int8)"))),
        }
    }
    /// The name `--precision` takes.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            input_shapes: HashMap::new(),
            target: CpuTarget::host(),
            verify: false,
            frozen_inputs: HashMap::new(),
            value_inputs: HashMap::new(),
            max_elements: None,
            dims: Default::default(),
            kernel_cache: KernelCache::from_env(),
            progress: Progress::default(),
            external_weights: false,
            threads: 0,
            devices: Vec::new(),
            cuda: Default::default(),
            precision: Precision::F32,
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
