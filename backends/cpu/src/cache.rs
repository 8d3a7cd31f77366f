//! The on-disk kernel cache: compiled kernel objects by content hash.
//!
//! A kernel body's object code depends on its compute definition (not on where its buffers
//! live: the body takes their base pointers as arguments), on the target, on LLVM's version
//! and on this backend's code generator (a hash of its sources); [`body_key`] hashes exactly
//! those (xxh3-128). Entries are written atomically (a temporary file renamed into
//! place) with a checksum trailer, and an entry that fails its checksum is compiled again and
//! replaced, so a damaged cache costs time, never a wrong library.

use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::codegen::KernelPlan;
use crate::{BackendError, CpuTarget};

/// A hash of this crate's sources (build.rs): any change to the code generator changes every
/// key.
const CODEGEN_FINGERPRINT: &str = env!("KILN_CODEGEN_FINGERPRINT");

/// Where compiled kernels are kept between compilations (`None`: nowhere).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCache {
    dir: Option<PathBuf>,
}

impl KernelCache {
    /// No cache: every kernel is compiled.
    pub fn disabled() -> KernelCache {
        KernelCache { dir: None }
    }

    /// A cache in `dir` (created when first written).
    pub fn at(dir: impl Into<PathBuf>) -> KernelCache {
        KernelCache { dir: Some(dir.into()) }
    }

    /// `$KILN_CACHE_DIR` when set (`off` or empty: disabled), else `$XDG_CACHE_HOME/kiln`,
    /// else `$HOME/.cache/kiln`, else disabled.
    pub fn from_env() -> KernelCache {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(v) = std::env::var_os("KILN_CACHE_DIR") {
            return if v.is_empty() || v == "off" { KernelCache::disabled() } else { KernelCache::at(v) };
        }
        if let Some(x) = var("XDG_CACHE_HOME") {
            return KernelCache::at(PathBuf::from(x).join("kiln"));
        }
        match var("HOME") {
            Some(h) => KernelCache::at(PathBuf::from(h).join(".cache").join("kiln")),
            None => KernelCache::disabled(),
        }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join("kernels").join(&key[..2]).join(format!("{key}.o")))
    }

    /// The cached object for `key`, or `make()`'s, stored for next time. Failing to read or
    /// write the cache only costs the compilation.
    pub(crate) fn get_or_insert(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<Vec<u8>, BackendError>,
    ) -> Result<Vec<u8>, BackendError> {
        let Some(path) = self.path(key) else { return make() };
        if let Ok(mut bytes) = std::fs::read(&path) {
            if bytes.len() >= 8 {
                let body = bytes.len() - 8;
                let sum = u64::from_le_bytes(bytes[body..].try_into().expect("8 bytes"));
                if xxh3_64(&bytes[..body]) == sum {
                    bytes.truncate(body);
                    return Ok(bytes);
                }
            }
        }
        let obj = make()?;
        let _ = store(&path, &obj);
        Ok(obj)
    }
}

fn store(path: &Path, obj: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache paths have a parent");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    use std::io::Write;
    tmp.write_all(obj)?;
    tmp.write_all(&xxh3_64(obj).to_le_bytes())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The cache key of a kernel body's object (32 hex digits): the kernel with its buffers
/// erased ([`KernelPlan::body`]), its schedule, the target and the code generator.
pub(crate) fn body_key(plan: &KernelPlan, target: &CpuTarget) -> String {
    let mut h = Xxh3::new();
    let mut put = |s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    put_toolchain(&mut put, target);
    put(&format!("{:?}", plan.body));
    put(&format!("{:?}", plan.gemm));
    put(&format!("{:?}", plan.inner_run));
    put(&format!("{:?}", plan.red_runs));
    format!("{:032x}", h.digest128())
}

/// The code generator and the LLVM it runs on, as one line.
pub fn toolchain_id() -> String {
    let (major, minor, patch) = inkwell::support::get_llvm_version();
    format!("kiln-backend-cpu {} {CODEGEN_FINGERPRINT} llvm {major}.{minor}.{patch}", env!("CARGO_PKG_VERSION"))
}

/// What every key starts with: the code generator, LLVM's version and the target.
fn put_toolchain(put: &mut dyn FnMut(&str), target: &CpuTarget) {
    put(&toolchain_id());
    put(&target.triple);
    put(&target.cpu);
    put(&target.features);
    put(&target.l1d_bytes.to_string());
    put(&target.l2_bytes.to_string());
    put(&format!("O{}", target.opt_level));
}

/// The cache key of the object compiled from an unoptimized LLVM module (the entry module:
/// the calls in program order and the kernels' wrappers): a hash of its bitcode.
pub(crate) fn module_key(module: &inkwell::module::Module, target: &CpuTarget) -> String {
    let mut h = Xxh3::new();
    let mut put = |s: &[u8]| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s);
    };
    put_toolchain(&mut |s| put(s.as_bytes()), target);
    put(b"module");
    put(module.write_bitcode_to_memory().as_slice());
    format!("{:032x}", h.digest128())
}

/// The cache key of the shared library linked from objects with these keys, in this order.
pub(crate) fn link_key<'a>(objects: impl IntoIterator<Item = &'a str>, target: &CpuTarget) -> String {
    let mut h = Xxh3::new();
    let mut put = |s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    put_toolchain(&mut put, target);
    put("link");
    put(&std::env::var("KILN_CC").unwrap_or_default());
    for key in objects {
        put(key);
    }
    format!("{:032x}", h.digest128())
}
