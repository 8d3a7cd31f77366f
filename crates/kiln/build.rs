//! Fingerprints the whole compiler (this crate and the compiler crates it builds on, by
//! their sources, and the locked dependency versions): an artifact records it in its source
//! key, so that a changed compiler never takes an old artifact for up to date.

use std::path::{Path, PathBuf};

fn visit(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            visit(&p, files);
        } else if p.extension().is_some_and(|x| x == "rs" || x == "proto") {
            files.push(p);
        }
    }
}

fn main() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here.join("../..");
    // Outside this workspace (a published crate) the sibling directories are absent and the
    // crate versions stand for them.
    let dirs = [
        "crates/kiln/src",
        "crates/abi/src",
        "crates/onnx/src",
        "ir/src",
        "passes/src",
        "backends/llvm/src",
        "backends/cpu/src",
        "backends/cuda/src",
    ];
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    for d in dirs {
        let dir = root.join(d);
        let mut files = Vec::new();
        visit(&dir, &mut files);
        files.sort();
        for f in &files {
            h.update(f.strip_prefix(&root).unwrap_or(f).to_string_lossy().as_bytes());
            h.update(&std::fs::read(f).expect("reading a source file"));
        }
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    let lock = root.join("Cargo.lock");
    if let Ok(b) = std::fs::read(&lock) {
        h.update(&b);
        println!("cargo:rerun-if-changed={}", lock.display());
    }
    println!("cargo:rustc-env=KILN_COMPILER_FINGERPRINT={:032x}", h.digest128());
}
