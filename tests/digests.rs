//! Compiles every exporter, light and generated test model (and BERT split across capped CPU
//! devices) with the kernel cache off, and prints one line per artifact: its name and the
//! xxh3-128 of its bytes. Two trees that print the same lines compile to the same artifacts;
//! `scripts/same-artifacts.sh BASE` runs this at BASE and here and compares.
//!
//! `cargo run --release -p kiln-tests --bin artifact-digests`
//!
//! Artifacts come from the library's `compile_path`, whose artifacts carry no source key
//! (the hash of the compiler's own sources, which any change to them changes).

use kiln::{Compiler, KernelCache};

fn main() {
    let cases = kiln_tests::every_test_model();
    let mut targets: Vec<(String, &kiln_tests::Case, &str)> =
        cases.iter().map(|(n, c)| (n.clone(), c, "cpu")).collect();
    let bert = &cases.iter().find(|(n, _)| n == "exported/bert_torch").expect("bert_torch").1;
    targets.push(("exported/bert_torch@cpu:mem=512KiB,cpu:mem=512KiB".into(), bert, "cpu:mem=512KiB,cpu:mem=512KiB"));
    for (name, case, target) in targets {
        let mut opts = kiln_tests::compile_options(case);
        opts.kernel_cache = KernelCache::disabled();
        opts.set_target(target).expect("target");
        match Compiler::new(opts).compile_path(&case.model) {
            Ok(art) => println!("{name} {:032x}", xxhash_rust::xxh3::xxh3_128(&art.bytes())),
            Err(e) => println!("{name} error: {}", kiln::error_chain(&e)),
        }
    }
}
