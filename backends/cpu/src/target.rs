//! Target machines, the optimization pipeline, object emission and linking.

use std::process::Command;

use inkwell::module::Module;
use inkwell::targets::{CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple};
use inkwell::OptimizationLevel;

use crate::BackendError;

/// Text the backend can emit instead of a library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    Llvm,
    Asm,
}

/// A CPU target: an LLVM triple, a CPU name and a feature string. Data, not a `cfg`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuTarget {
    pub triple: String,
    pub cpu: String,
    pub features: String,
    /// L1 data cache per core, in bytes: the blocking of matrix products is derived from it.
    pub l1d_bytes: usize,
    /// L2 cache per core, in bytes: the row blocks of matrix products are sized to it.
    pub l2_bytes: usize,
    /// LLVM's optimization level for the kernels, 0 to 3 (default 3). Lower levels compile
    /// faster and run slower; the results are the same up to floating-point contraction.
    pub opt_level: u8,
}

/// The L1 data cache assumed for a target whose own is not known.
pub const DEFAULT_L1D_BYTES: usize = 32 << 10;

/// The L2 cache assumed for a target whose own is not known.
pub const DEFAULT_L2_BYTES: usize = 1 << 20;

/// The size of this machine's cache of `level` whose type is one of `types` (Linux sysfs:
/// `Data`, `Unified`…), per core, if it can be read.
fn host_cache_bytes(level: &str, types: &[&str]) -> Option<usize> {
    let base = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    for e in std::fs::read_dir(base).ok()?.flatten() {
        let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok().map(|s| s.trim().to_string());
        if read("level").as_deref() == Some(level) && read("type").is_some_and(|t| types.contains(&t.as_str())) {
            return parse_cache_size(&read("size")?);
        }
    }
    None
}

/// A sysfs cache size: `48K`, `2048K`, `1M` or bytes.
fn parse_cache_size(size: &str) -> Option<usize> {
    let (num, mult) = if let Some(n) = size.strip_suffix('K') {
        (n, 1 << 10)
    } else if let Some(n) = size.strip_suffix('M') {
        (n, 1 << 20)
    } else {
        (size, 1)
    };
    num.parse::<usize>().ok().map(|n| n * mult)
}

impl CpuTarget {
    /// Another machine: an LLVM target triple (`aarch64-unknown-linux-gnu`) and CPU
    /// (`generic`, `cortex-a72`, `x86-64-v3`, …), with the features that CPU implies.
    pub fn cross(triple: &str, cpu: &str) -> CpuTarget {
        CpuTarget {
            triple: triple.to_string(),
            cpu: cpu.to_string(),
            features: String::new(),
            l1d_bytes: DEFAULT_L1D_BYTES,
            l2_bytes: DEFAULT_L2_BYTES,
            opt_level: 3,
        }
    }

    /// The machine Kiln runs on, with all its features.
    pub fn host() -> CpuTarget {
        Target::initialize_native(&InitializationConfig::default()).expect("LLVM native target");
        CpuTarget {
            triple: TargetMachine::get_default_triple().as_str().to_string_lossy().into_owned(),
            cpu: TargetMachine::get_host_cpu_name().to_string(),
            features: TargetMachine::get_host_cpu_features().to_string(),
            l1d_bytes: host_cache_bytes("1", &["Data"]).unwrap_or(DEFAULT_L1D_BYTES),
            l2_bytes: host_cache_bytes("2", &["Unified", "Data"]).unwrap_or(DEFAULT_L2_BYTES),
            opt_level: 3,
        }
    }

    pub(crate) fn machine(&self) -> Result<TargetMachine, BackendError> {
        Target::initialize_all(&InitializationConfig::default());
        let triple = TargetTriple::create(&self.triple);
        let err =
            |message: String| BackendError::Target { triple: self.triple.clone(), cpu: self.cpu.clone(), message };
        let target = Target::from_triple(&triple).map_err(|e| err(e.to_string()))?;
        target
            .create_target_machine(
                &triple,
                &self.cpu,
                &self.features,
                match self.opt_level {
                    0 => OptimizationLevel::None,
                    1 => OptimizationLevel::Less,
                    2 => OptimizationLevel::Default,
                    _ => OptimizationLevel::Aggressive,
                },
                RelocMode::PIC,
                CodeModel::Default,
            )
            .ok_or_else(|| err("LLVM cannot create a target machine for it".into()))
    }
}

/// Runs LLVM's pipeline for `level` (0 to 3) on a kernel module.
pub(crate) fn optimize(module: &Module, tm: &TargetMachine, level: u8) -> Result<(), BackendError> {
    optimize_with(module, tm, &format!("default<O{}>", level.min(3)))
}

pub use kiln_llvm_codegen::optimize_with;

pub(crate) fn emit_object(module: &Module, tm: &TargetMachine) -> Result<Vec<u8>, BackendError> {
    let buf = tm.write_to_memory_buffer(module, FileType::Object).map_err(|e| BackendError::Llvm(e.to_string()))?;
    Ok(buf.as_slice().to_vec())
}

/// The C compiler driver that links for `target`: `$KILN_CC` if set; for the host, `cc`;
/// else the GNU cross driver for the triple (`aarch64-linux-gnu-gcc` for
/// `aarch64-unknown-linux-gnu`, Debian's `gcc-aarch64-linux-gnu`) when installed, else
/// `clang --target=<triple>`.
fn c_driver(target: &CpuTarget) -> Command {
    if let Ok(cc) = std::env::var("KILN_CC") {
        return Command::new(cc);
    }
    let host = TargetMachine::get_default_triple().as_str().to_string_lossy().into_owned();
    if target.triple == host {
        return Command::new("cc");
    }
    let parts: Vec<&str> = target.triple.split('-').collect();
    if parts.len() == 4 {
        let gnu = format!("{}-{}-{}-gcc", parts[0], parts[2], parts[3]);
        let found =
            std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(&gnu).is_file()));
        if found {
            return Command::new(gnu);
        }
    }
    let mut cmd = Command::new("clang");
    cmd.arg(format!("--target={}", target.triple));
    cmd
}

/// Runs the C driver as `<args> -o <out> <objs> <libs>` (`out` in a temporary directory)
/// and returns the output file.
fn link(objs: &[&[u8]], target: &CpuTarget, args: &[&str], libs: &[&str], out: &str) -> Result<Vec<u8>, BackendError> {
    let dir = tempfile::tempdir().map_err(|e| BackendError::Link(format!("temporary directory: {e}")))?;
    let result = dir.path().join(out);
    let mut paths = Vec::with_capacity(objs.len());
    for (i, obj) in objs.iter().enumerate() {
        let o = dir.path().join(format!("m{i}.o"));
        std::fs::write(&o, obj).map_err(|e| BackendError::Link(e.to_string()))?;
        paths.push(o);
    }
    let mut cmd = c_driver(target);
    let cc = format!("{:?}", cmd.get_program());
    cmd.args(args).arg("-o").arg(&result).args(&paths).args(libs);
    let out = cmd.output().map_err(|e| {
        BackendError::Link(format!(
            "cannot run {cc} to link for `{}` (install a C toolchain for it, e.g. `apt-get install gcc`, or set KILN_CC): {e}",
            target.triple
        ))
    })?;
    if !out.status.success() {
        return Err(BackendError::Link(format!("{cc} failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    std::fs::read(&result).map_err(|e| BackendError::Link(e.to_string()))
}

/// Links objects into a shared library with the C compiler driver for the target.
pub(crate) fn link_shared(objs: &[&[u8]], target: &CpuTarget) -> Result<Vec<u8>, BackendError> {
    // --build-id=none (and no timestamps) keeps the library byte-identical across runs.
    let args = ["-shared", "-nostartfiles", "-Wl,--build-id=none", "-Wl,-z,noexecstack"];
    link(objs, target, &args, &["-lm"], "module.so")
}

/// Links objects into one relocatable object (`ld -r`) with the C compiler driver for the
/// target.
pub fn link_relocatable(objs: &[&[u8]], target: &CpuTarget) -> Result<Vec<u8>, BackendError> {
    link(objs, target, &["-r", "-nostdlib", "-Wl,--build-id=none"], &[], "module.o")
}

#[cfg(test)]
mod tests {
    #[test]
    fn cache_sizes_as_sysfs_writes_them() {
        use super::parse_cache_size;
        assert_eq!(parse_cache_size("48K"), Some(48 << 10));
        assert_eq!(parse_cache_size("2048K"), Some(2 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("32768"), Some(32768));
        assert_eq!(parse_cache_size("big"), None);
    }
}
