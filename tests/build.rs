//! Generates one `#[test]` per ONNX node conformance case: cases listed in
//! `conformance/manifest.txt` run with every input fed at run time (`check`); cases in
//! `conformance/frozen.txt` pass only with inputs compiled in (`check_frozen`, reported
//! apart); every other case is `#[ignore]`d with its reason from `conformance/ignored.txt`
//! (never deleted).
//!
//! Also sets `cfg(kiln_gpu)` where the GPU tests can run: `KILN_GPU_TESTS=1`, or, when that
//! variable is unset, an NVIDIA device node (`/dev/nvidia0`). Elsewhere those tests are
//! ignored, with the reason shown in the test output.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance");
    for f in ["node_tests.txt", "manifest.txt", "frozen.txt", "ignored.txt"] {
        println!("cargo:rerun-if-changed={}", dir.join(f).display());
    }
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let names = |text: &str| -> HashSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split('\t').next().unwrap_or("").trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    };
    let all = read("node_tests.txt");
    let run_time = names(&read("manifest.txt"));
    let frozen = names(&read("frozen.txt"));
    if let Some(both) = run_time.intersection(&frozen).next() {
        panic!("{both} is in both manifest.txt and frozen.txt");
    }
    let ignored = read("ignored.txt");
    let reasons: HashMap<&str, &str> = ignored
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, r)| (n.trim(), r.trim()))
        .collect();
    let mut out = String::new();
    for name in all.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let check = if run_time.contains(name) {
            "check"
        } else if frozen.contains(name) {
            "check_frozen"
        } else {
            let reason = reasons.get(name).copied().unwrap_or("not passing yet").replace(['"', '\\'], "'");
            writeln!(out, "#[ignore = \"{reason}\"]").unwrap();
            "check"
        };
        let ident: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        writeln!(out, "#[test]\nfn {ident}() {{ {check}(\"{name}\"); }}").unwrap();
    }
    let out_dir = std::env::var("OUT_DIR").unwrap();
    std::fs::write(std::path::Path::new(&out_dir).join("node_cases.rs"), out).unwrap();

    println!("cargo:rustc-check-cfg=cfg(kiln_gpu)");
    println!("cargo:rerun-if-env-changed=KILN_GPU_TESTS");
    let gpu = match std::env::var("KILN_GPU_TESTS").as_deref() {
        Ok("1") => true,
        Ok(_) => false,
        Err(_) => std::path::Path::new("/dev/nvidia0").exists(),
    };
    if gpu {
        println!("cargo:rustc-cfg=kiln_gpu");
    }
}
