//! Fingerprints this crate's code generator and the shared one it builds on
//! (`backends/llvm`): the kernel cache keys on it, so that a changed backend never reuses
//! objects the previous one compiled.

use std::path::Path;

fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("reading src/").flatten() {
        let p = e.path();
        if p.is_dir() {
            visit(&p, files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
}

fn main() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    // Published alone, the shared crate's directory is absent and its version stands for it
    // (in Cargo.lock, which the compiler's own fingerprint covers).
    for (tag, src) in [("cpu", here.join("src")), ("llvm", here.join("../llvm/src"))] {
        let mut files = Vec::new();
        if src.is_dir() {
            visit(&src, &mut files);
        }
        files.sort();
        for f in &files {
            h.update(tag.as_bytes());
            h.update(f.strip_prefix(&src).expect("under src").to_string_lossy().as_bytes());
            h.update(&std::fs::read(f).expect("reading a source file"));
        }
        println!("cargo:rerun-if-changed={}", src.display());
    }
    // `scripts/same-artifacts.sh` builds two trees with one fixed fingerprint: kernel bodies
    // are named after their cache key, so that a restructuring of these sources can be shown
    // to generate the same code.
    println!("cargo:rerun-if-env-changed=KILN_FIXED_CODEGEN_FINGERPRINT");
    let fingerprint = match std::env::var("KILN_FIXED_CODEGEN_FINGERPRINT") {
        Ok(fixed) => fixed,
        Err(_) => format!("{:032x}", h.digest128()),
    };
    println!("cargo:rustc-env=KILN_CODEGEN_FINGERPRINT={fingerprint}");
}
