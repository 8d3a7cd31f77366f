//! Generates one `#[test]` per ONNX node conformance case: cases listed in
//! `conformance/manifest.txt` run; every other case is `#[ignore]`d with its reason from
//! `conformance/ignored.txt` (never deleted).

use std::collections::HashMap;
use std::fmt::Write;

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance");
    for f in ["node_tests.txt", "manifest.txt", "ignored.txt"] {
        println!("cargo:rerun-if-changed={}", dir.join(f).display());
    }
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let all = read("node_tests.txt");
    let manifest = read("manifest.txt");
    let passing: std::collections::HashSet<&str> =
        manifest.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let ignored = read("ignored.txt");
    let reasons: HashMap<&str, &str> = ignored
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, r)| (n.trim(), r.trim()))
        .collect();
    let mut out = String::new();
    for name in all.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !passing.contains(name) {
            let reason = reasons.get(name).copied().unwrap_or("not passing yet").replace('"', "'");
            writeln!(out, "#[ignore = \"{reason}\"]").unwrap();
        }
        let ident: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        writeln!(out, "#[test]\nfn {ident}() {{ check(\"{name}\"); }}").unwrap();
    }
    let out_dir = std::env::var("OUT_DIR").unwrap();
    std::fs::write(std::path::Path::new(&out_dir).join("node_cases.rs"), out).unwrap();
}
