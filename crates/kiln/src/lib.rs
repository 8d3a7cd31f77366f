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

mod artifact;
mod emit;
mod error;
pub mod native;
mod options;
mod partitioned;
pub mod report;
mod source_key;
use artifact::{existing_artifact, touch, write_file};
pub use artifact::{Artifact, Compiled};
pub use error::Error;
use kiln_ir::lir::Program;
use kiln_ir::Graph;
use kiln_passes::pipeline::{self, Until};
pub use native::ArtifactKind;
pub use options::{CompileOptions, Precision, Progress, ProgressEvent};

pub use kiln_abi as abi;
pub use kiln_abi::manifest::TensorSpec;
pub use kiln_abi::DTypeCode;
pub use kiln_backend_cpu::cache::KernelCache;
pub use kiln_backend_cpu::{CpuTarget, Emit};
pub use kiln_ir as ir;
pub use kiln_onnx::{
    decode_value, element_name, parse_dim_spec, parse_input_shape, ImportError, ImportOptions, OnnxValue, ValueKind,
    ValueSpec,
};
pub use kiln_passes::memory::{MemoryReport, WeightSection};
pub use kiln_passes::partition::{Device, DeviceKind, Plan};
pub use kiln_passes::{pass_names, PassError};
pub use kiln_runtime::{Profile, RuntimeError, Session, SessionOptions, Tensor, TensorRef};

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

/// A dim of a declared input or output: a size, a name (ONNX's `dim_param`), or unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeclaredDim {
    Size(u64),
    Named(String),
    Unknown,
}

/// A graph input or output as the model declares it: its name, element type (ONNX's
/// `TensorProto.DataType` code; 0 when not a tensor or undeclared) and dims (none when the
/// rank is undeclared).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    pub name: String,
    pub elem_type: i32,
    pub dims: Option<Vec<DeclaredDim>>,
}

/// The inputs (initializers listed as inputs left out) and outputs an ONNX model declares,
/// read without importing it.
pub fn declared_signature(path: impl AsRef<Path>) -> Result<(Vec<Declared>, Vec<Declared>), ImportError> {
    use kiln_onnx::proto::tensor_shape_proto::dimension::Value as Dim;
    use kiln_onnx::proto::type_proto::Value as Type;
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io { path: path.to_path_buf(), source })?;
    let m = kiln_onnx::decode_model(bytes.into())?;
    let Some(g) = m.graph else { return Ok((Vec::new(), Vec::new())) };
    let declared = |vi: &kiln_onnx::proto::ValueInfoProto| {
        let tensor = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(Type::TensorType(t)) => Some(t),
            _ => None,
        };
        let dims = tensor.and_then(|t| t.shape.as_ref()).map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(Dim::DimValue(n)) if *n >= 0 => DeclaredDim::Size(*n as u64),
                    Some(Dim::DimParam(p)) if !p.is_empty() => DeclaredDim::Named(p.clone()),
                    _ => DeclaredDim::Unknown,
                })
                .collect()
        });
        Declared { name: vi.name().to_string(), elem_type: tensor.map_or(0, |t| t.elem_type()), dims }
    };
    let weights: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let inputs = g.input.iter().filter(|vi| !weights.contains(vi.name())).map(declared).collect();
    Ok((inputs, g.output.iter().map(declared).collect()))
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
struct CpuSteps<'a>(&'a CpuTarget, Precision);

impl pipeline::Backend for CpuSteps<'_> {
    fn prepack(&self, p: &mut Program) -> usize {
        kiln_backend_cpu::prepack(p, self.0, self.1 == Precision::Bf16)
    }
    fn quantizes_products(&self) -> bool {
        self.1 == Precision::Int8
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
        ImportOptions {
            input_shapes,
            value_inputs: self.opts.value_inputs.clone(),
            max_elements: self.opts.max_elements,
            dims: self.opts.dims.clone(),
        }
    }

    /// Imports an ONNX file into HIR.
    pub fn import_path(&self, path: impl AsRef<Path>) -> Result<Graph, Error> {
        Ok(self.import_sources(path.as_ref())?.0)
    }

    /// Imports an ONNX file into HIR, with the files it was read from. With run-time dims
    /// (`--dim`), the model is imported once more per dim at another size and the graphs are
    /// compared axis by axis ([`kiln_passes::rows::compare_axes`]): they must differ only in
    /// the axes those dims size, so that what is compiled at the bounds holds at every size.
    /// Where every such axis is a leading one and the row analysis follows them
    /// ([`kiln_passes::rows::analyze`]), lowering marks every value's rows; otherwise the
    /// graph outputs' run-time axes are recorded ([`Graph::output_syms`]) and the LIR walk
    /// carries the inputs' marks (`clamp-rows` refusing a kernel it cannot cut).
    fn import_sources(&self, path: &Path) -> Result<(Graph, kiln_onnx::Sources), Error> {
        let opts = self.import_opts();
        let (mut g, sources) = kiln_onnx::import_path_with_sources(path, &opts, &self.opts.frozen_inputs)?;
        if g.symbols.is_empty() {
            return Ok((g, sources));
        }
        // `k` below the bound where the bounds allow (a model may not import past it: a table
        // of positions), else `k` above.
        let away = |i: usize, k: usize| {
            let s = &g.symbols[i];
            (i, if s.hi >= s.lo.max(1) + k { s.hi - k } else { s.hi + k })
        };
        let mut alts = Vec::new();
        let sizes: Vec<(usize, usize)> = (0..g.symbols.len()).map(|i| away(i, 1)).collect();
        self.import_alts(path, &g, &opts, &sizes, &mut alts)?;
        let refs: Vec<(usize, &Graph)> = alts.iter().map(|(i, a)| (*i, a)).collect();
        let mut dims = kiln_passes::rows::compare_axes(&g, &refs)?;
        // An axis sized with an offset fits any line through two sizes: a third must agree.
        let bases = dims.offset_bases();
        if !bases.is_empty() {
            let third: Vec<(usize, usize)> = bases.iter().map(|&i| away(i, 2)).collect();
            self.import_alts(path, &g, &opts, &third, &mut alts)?;
            let refs: Vec<(usize, &Graph)> = alts.iter().map(|(i, a)| (*i, a)).collect();
            dims = kiln_passes::rows::compare_axes(&g, &refs)?;
        }
        let rows = !kiln_passes::rows::inner_dims(&g)
            && dims.leading_only()
            && kiln_passes::rows::analyze(&g, &dims.seeds(&g), true).is_ok();
        if !rows {
            g.output_syms = dims.outputs;
            g.symbols.extend(dims.derived);
            g.axis_dims = true;
        }
        Ok((g, sources))
    }

    /// Imports the model once more per `(symbol, size)`, each with that symbol at that size,
    /// into `alts`.
    fn import_alts(
        &self,
        path: &Path,
        g: &Graph,
        opts: &ImportOptions,
        sizes: &[(usize, usize)],
        alts: &mut Vec<(usize, Graph)>,
    ) -> Result<(), Error> {
        for &(i, size) in sizes {
            let s = &g.symbols[i];
            let mut more = opts.clone();
            more.dims.insert(s.name.clone(), (s.lo.min(size), size));
            let alt = kiln_onnx::import_path_with_sources(path, &more, &self.opts.frozen_inputs).map_err(|e| {
                Error::Pass(kiln_passes::PassError::RunTimeDim {
                    node: g.name.clone(),
                    op: "model".into(),
                    message: format!(
                        "the model does not import at {}={size} (its bounds {}..{}); its dims cannot vary at run \
                         time: {}",
                        s.name,
                        s.lo,
                        s.hi,
                        error_chain(&e)
                    ),
                })
            })?;
            alts.push((i, alt.0));
        }
        Ok(())
    }

    /// The pipeline's context for the CPU this compiler targets.
    fn cpu_steps(&self) -> CpuSteps<'_> {
        CpuSteps(&self.opts.target, self.opts.precision)
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

    /// Compiles an optimized graph into an artifact. A graph with run-time dims
    /// ([`Graph::symbols`]) must keep their rows apart with no help from a second import: an
    /// operand with as many rows as the bound but without the dim is refused
    /// ([`kiln_passes::rows::analyze`], strict).
    pub fn compile_graph(&self, g: Graph) -> Result<Artifact, Error> {
        if !g.symbols.is_empty() && !kiln_passes::rows::inner_dims(&g) {
            kiln_passes::rows::analyze(&g, &HashMap::new(), true)?;
        }
        self.pooled(|| self.compile_graph_timed(g, Vec::new()))
    }

    fn compile_graph_timed(
        &self,
        g: Graph,
        timings: Vec<(&'static str, std::time::Duration)>,
    ) -> Result<Artifact, Error> {
        if self.partitioned() {
            if g.has_runtime_decisions() {
                return Err(Error::Devices {
                    target: self.devices_text(),
                    message: "the model decides something at run time (an If on data, an axes input, a shape \
                              computed from data, a --dim), which a model split across devices cannot do yet; \
                              compile it for one CPU"
                        .into(),
                });
            }
            return self.compile_partitioned(g, timings);
        }
        let mut b = self.build(g, timings, &kiln_backend_cpu::EntryNames::default())?;
        let start = std::time::Instant::now();
        self.opts.progress.phase("link");
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
        self.opts.progress.phase("optimize");
        let out = pipeline::run(&mut g, &pipeline::Context::new(&cpu, self.opts.verify), Until::End)?;
        // `--timings` phases: the HIR steps, then lowering and the LIR steps.
        let phase = |lir: bool| out.timings.iter().filter(|(n, _)| pipeline::is_lir(n) == lir).map(|(_, t)| *t).sum();
        timings.push(("optimize", phase(false)));
        timings.push(("lower", phase(true)));
        let pipeline::Lowered { program: p, memory, weights } = out.lowered.expect("the pipeline lowers");
        let mut lap = lap_timer();
        self.opts.progress.phase("codegen");
        let report = self.opts.progress.kernels();
        let report = report.as_ref().map(|f| f as &(dyn Fn(usize, usize) + Sync));
        let objects = kiln_backend_cpu::compile_objects(&p, &self.opts.target, &self.opts.kernel_cache, names, report)?;
        lap("codegen", &mut timings);
        let spec = |(name, dtype, shape): &(String, kiln_ir::DType, Vec<usize>)| TensorSpec {
            name: name.clone(),
            dtype: dtype.code() as i32,
            shape: shape.iter().map(|&d| d as u64).collect(),
            ..Default::default()
        };
        // An output whose shape the code decides at run time: its dims' slots and its
        // buffer's size.
        let outputs = p
            .outputs
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let mut s = spec(o);
                if let Some(slots) = p.output_slots.get(i).filter(|s| !s.is_empty()) {
                    s.dim_slots = slots.clone();
                    s.max_bytes = p.output_bytes(i) as u64;
                }
                s
            })
            .collect();
        let manifest = Manifest {
            abi_major: kiln_abi::ABI_MAJOR,
            abi_minor: kiln_abi::ABI_MINOR,
            target_triple: objects.triple.clone(),
            target_cpu: objects.cpu.clone(),
            inputs: p
                .inputs
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    let mut s = spec(x);
                    if let Some(slots) = p.input_slots.get(i).filter(|s| s.iter().any(|&k| k >= 0)) {
                        s.dim_slots = slots.clone();
                        s.max_bytes = s.byte_len() as u64;
                    }
                    s
                })
                .collect(),
            outputs,
            symbols: p
                .symbols
                .iter()
                .map(|s| kiln_abi::manifest::DimBound {
                    name: s.name.clone(),
                    lo: s.lo as u64,
                    hi: s.hi as u64,
                    base: s.from.map(|(b, _)| b as u32),
                    offset: s.from.map_or(0, |(_, c)| c),
                })
                .collect(),
            dim_slots: p.dim_slots as u32,
            arena_bytes: p.arena_bytes,
            model_name: g.name.clone(),
            producer: format!("kiln {}", env!("CARGO_PKG_VERSION")),
            check_messages: p.assert_messages(),
            source_key: String::new(),
            weights_file: String::new(),
            weights_len: 0,
            weights_checksum: 0,
            frozen_inputs: self.frozen_specs(),
            precision: self.opts.precision.name().into(),
            target_features: self.opts.target.features.clone(),
            kernels: kernel_infos(&p, 0),
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

    /// Compiles an ONNX file into an artifact.
    pub fn compile_path(&self, path: impl AsRef<Path>) -> Result<Artifact, Error> {
        let start = std::time::Instant::now();
        self.opts.progress.phase("import");
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
        self.opts.progress.phase("import");
        let (g, sources) = self.import_sources(model)?;
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
        self.opts.progress.phase("write");
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
        let (g, sources) = self.import_sources(model)?;
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
}

/// What each profiling event of a part's code computes (see [`kiln_abi::ProfileFn`]): the
/// program's instructions that do work, in order.
pub(crate) fn kernel_infos(p: &Program, part: u32) -> Vec<kiln_abi::manifest::KernelInfo> {
    use kiln_ir::lir::Instr;
    p.instrs
        .iter()
        .filter(|i| i.does_work())
        .enumerate()
        .map(|(event, ins)| {
            let mut info = kiln_abi::manifest::KernelInfo { part, event: event as u32, ..Default::default() };
            let copy = |bytes: usize| 2 * bytes as u64;
            match ins {
                Instr::Kernel(k) => {
                    info.name = k.name.clone();
                    info.kind = "kernel".into();
                    info.nodes = k.origin.iter().map(|o| o.node.clone()).collect();
                    info.ops = k.origin.iter().map(|o| o.op.clone()).collect();
                    info.flops = k.flops();
                    info.bytes = k.bytes_moved();
                }
                Instr::Copy { bytes, .. } => (info.kind, info.bytes) = ("copy".into(), copy(*bytes)),
                Instr::CopyRow { bytes, .. } => (info.kind, info.bytes) = ("copy_row".into(), copy(*bytes)),
                Instr::TopK { input, output, .. } => {
                    info.kind = "top_k".into();
                    info.bytes = (input.numel() * input.dtype.size() + 2 * output.numel() * output.dtype.size()) as u64;
                }
                Instr::NonZero { input, .. } => {
                    info.kind = "non_zero".into();
                    info.bytes = (input.numel() * input.dtype.size()) as u64;
                }
                _ => info.kind = "non_max_suppression".into(),
            }
            if info.name.is_empty() {
                info.name = info.kind.clone();
            }
            info
        })
        .collect()
}
