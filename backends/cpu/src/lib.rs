//! Kiln's CPU backend: LIR programs to LLVM IR (through inkwell), optimized with LLVM's O3
//! pipeline for the target CPU, emitted as an object and linked into a shared library.
//!
//! Every kernel instruction becomes one function `void kN(const Context*, i64 start, i64 end)`
//! that runs a range of the kernel's outer parallel loop; the entry function `kiln_entry`
//! calls them in order, through the runtime's `parallel_for` when the kernel is big enough.
//! The module never links the runtime: everything it needs comes in the context struct.
//!
//! A kernel is a body (its loop nest over base pointers given as arguments) and an instance
//! wrapper (which finds those buffers in the context). Kernels that differ only in their
//! buffers (the layers of a transformer) share one body. Bodies are compiled in parallel,
//! each into an object of its own, cached on disk under a hash of everything their code
//! depends on ([`cache`]), and linked with the object of the entry module (wrappers and
//! `kiln_entry`), so recompiling a model, or one that shares kernels with it, skips LLVM for
//! the bodies it has seen.

pub mod cache;
mod codegen;
mod gemm;
mod rows;
mod scan;
mod target;
mod tasks;
mod topk;
mod vector;

pub use codegen::{build_module, EntryNames};

pub use gemm::prepack;
pub use target::{link_relocatable, CpuTarget, Emit};

use kiln_ir::lir::{Instr, Program};

pub use kiln_llvm_codegen::BackendError;

/// Checks that LLVM can build code for `target` (its triple and CPU are known).
pub fn check_target(target: &CpuTarget) -> Result<(), BackendError> {
    target.machine().map(|_| ())
}

/// What a CPU compilation produced.
#[derive(Debug)]
pub struct CpuModule {
    /// The shared library (ELF `.so`) holding `kiln_entry`.
    pub shared_library: Vec<u8>,
    pub triple: String,
    pub cpu: String,
}

/// Compiles a memory-planned LIR program to a shared library for `target`, with the kernel
/// cache of the environment ([`cache::KernelCache::from_env`]).
pub fn compile(prog: &Program, target: &CpuTarget) -> Result<CpuModule, BackendError> {
    compile_with(prog, target, &cache::KernelCache::from_env())
}

/// The objects of a compiled program, before any link: the entry module's and one per
/// distinct kernel body, each with the cache key it is stored under.
#[derive(Debug)]
pub struct CpuObjects {
    pub entry: (String, Vec<u8>),
    pub bodies: Vec<(String, Vec<u8>)>,
    pub triple: String,
    pub cpu: String,
}

/// Compiles a memory-planned LIR program to a shared library for `target`: the kernels in
/// parallel (rayon's pool), each through `kernel_cache`, then the entry, then the link.
pub fn compile_with(
    prog: &Program,
    target: &CpuTarget,
    kernel_cache: &cache::KernelCache,
) -> Result<CpuModule, BackendError> {
    let objs = compile_objects(prog, target, kernel_cache, &EntryNames::default(), None)?;
    let so = link_shared(&objs, target, kernel_cache)?;
    Ok(CpuModule { shared_library: so, triple: objs.triple, cpu: objs.cpu })
}

/// Links a program's objects into a shared library, through `kernel_cache`: the library is a
/// function of its objects, so a warm compilation skips the link too.
pub fn link_shared(
    objs: &CpuObjects,
    target: &CpuTarget,
    kernel_cache: &cache::KernelCache,
) -> Result<Vec<u8>, BackendError> {
    link_shared_all(&[objs], target, kernel_cache)
}

/// Links the objects of several programs (the partitions of a model, whose entry points
/// have names of their own) into one shared library; a kernel body they share is linked
/// once.
pub fn link_shared_all(
    programs: &[&CpuObjects],
    target: &CpuTarget,
    kernel_cache: &cache::KernelCache,
) -> Result<Vec<u8>, BackendError> {
    let mut seen = std::collections::HashSet::new();
    let mut keys: Vec<&str> = Vec::new();
    let mut objects: Vec<&[u8]> = Vec::new();
    for o in programs.iter().map(|p| &p.entry).chain(programs.iter().flat_map(|p| &p.bodies)) {
        if seen.insert(o.0.as_str()) {
            keys.push(&o.0);
            objects.push(&o.1);
        }
    }
    let so_key = cache::link_key(keys, target);
    kernel_cache.get_or_insert(&so_key, || target::link_shared(&objects, target))
}

impl CpuObjects {
    /// Every object, the entry's first.
    pub fn all(&self) -> Vec<&[u8]> {
        std::iter::once(&self.entry.1).chain(self.bodies.iter().map(|(_, o)| o)).map(Vec::as_slice).collect()
    }
}

/// Compiles a memory-planned LIR program to objects for `target` (nothing linked): the
/// kernel bodies in parallel, each through `kernel_cache`, and the entry module, whose
/// exported symbols are named by `names`.
///
/// `progress`, when given, is called with (bodies done, bodies in all) as each body is done.
pub fn compile_objects(
    prog: &Program,
    target: &CpuTarget,
    kernel_cache: &cache::KernelCache,
    names: &EntryNames,
    progress: Option<&(dyn Fn(usize, usize) + Sync)>,
) -> Result<CpuObjects, BackendError> {
    use rayon::prelude::*;
    let plans = codegen::plan_kernels(prog, target);
    // Kernels that differ only in their buffers share one body: compile each body once.
    let mut keys: Vec<String> = Vec::new();
    let mut first: Vec<usize> = Vec::new();
    let mut symbols = Vec::with_capacity(plans.len());
    let mut seen = std::collections::HashSet::new();
    for (i, p) in plans.iter().enumerate() {
        let key = cache::body_key(p, target);
        if seen.insert(key.clone()) {
            keys.push(key.clone());
            first.push(i);
        }
        symbols.push(format!("kiln_b{key}"));
    }
    let done = std::sync::atomic::AtomicUsize::new(0);
    let objects: Vec<Vec<u8>> = keys
        .par_iter()
        .zip(&first)
        .map(|(key, &i)| {
            let p = &plans[i];
            let object = kernel_cache.get_or_insert(key, || {
                let Instr::Kernel(k) = &prog.instrs[p.instr] else { unreachable!("plans are of kernels") };
                let ctx = inkwell::context::Context::create();
                let module = codegen::build_body_module(&ctx, k, p, &symbols[i])?;
                let tm = target.machine()?;
                target::optimize(&module, &tm, target.opt_level)?;
                target::emit_object(&module, &tm)
            });
            if let Some(report) = progress {
                report(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, keys.len());
            }
            object
        })
        .collect::<Result<_, _>>()?;
    let ctx = inkwell::context::Context::create();
    let entry = codegen::build_entry_module(&ctx, prog, &plans, &symbols, names)?;
    let entry_key = cache::module_key(&entry, target);
    let entry_obj = kernel_cache.get_or_insert(&entry_key, || {
        let tm = target.machine()?;
        // The entry is calls in order and the wrappers loads of buffer pointers: O1 is all
        // they need, and O3 on a few thousand wrappers took most of a warm compilation.
        target::optimize_with(&entry, &tm, &format!("default<O{}>", target.opt_level.min(1)))?;
        target::emit_object(&entry, &tm)
    })?;
    Ok(CpuObjects {
        entry: (entry_key, entry_obj),
        bodies: keys.into_iter().zip(objects).collect(),
        triple: target.triple.clone(),
        cpu: target.cpu.clone(),
    })
}

/// Renders the program as LLVM IR (`optimized`: after the O3 pipeline) or as assembly.
pub fn emit_text(prog: &Program, target: &CpuTarget, what: Emit) -> Result<String, BackendError> {
    let ctx = inkwell::context::Context::create();
    let module = build_module(&ctx, prog, target)?;
    let tm = target.machine()?;
    target::optimize(&module, &tm, target.opt_level)?;
    match what {
        Emit::Llvm => Ok(module.print_to_string().to_string()),
        Emit::Asm => {
            let buf = tm
                .write_to_memory_buffer(&module, inkwell::targets::FileType::Assembly)
                .map_err(|e| BackendError::Llvm(e.to_string()))?;
            Ok(String::from_utf8_lossy(buf.as_slice()).into_owned())
        }
    }
}
