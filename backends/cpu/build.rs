//! Fingerprints this crate's code generator: the kernel cache keys on it, so that a changed
//! backend never reuses objects the previous one compiled.

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
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    files.sort();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in &files {
        h.update(f.strip_prefix(&src).expect("under src").to_string_lossy().as_bytes());
        h.update(&std::fs::read(f).expect("reading a source file"));
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
    println!("cargo:rerun-if-changed=src");
}
