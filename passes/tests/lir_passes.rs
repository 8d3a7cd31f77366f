//! File tests of the LIR passes. Each `tests/lir/*.lir` is a small program in LIR's text form
//! headed by `// pass: NAME`; the test parses it, runs that one step of the pipeline (then
//! the LIR verifier), and compares the printed result with its snapshot
//! (`tests/snapshots/lir_passes__NAME.snap`; `cargo insta review` after a deliberate change).
//! The CPU backend's `prepack` step has its own file test in `backends/cpu/tests/`.

use std::path::Path;

use kiln_passes::pipeline::{self, Context, Lowered, Plain};

/// `(file stem, pass name, program text)` of every file test, sorted.
fn file_tests() -> Vec<(String, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lir");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests/lir").flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "lir") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a readable file test");
        let pass = text.lines().next().and_then(|l| l.strip_prefix("// pass: ")).map(str::trim);
        let pass = pass.unwrap_or_else(|| panic!("{} must start with `// pass: NAME`", path.display()));
        let stem = path.file_stem().expect("a file name").to_string_lossy().into_owned();
        out.push((stem, pass.to_string(), text));
    }
    out.sort();
    out
}

#[test]
fn each_lir_pass_on_its_files() {
    let cx = Context::new(&Plain, true);
    for (stem, pass, text) in file_tests() {
        let program = kiln_ir::lir::parse(&text).unwrap_or_else(|e| panic!("{stem}.lir: {e}"));
        assert_eq!(kiln_ir::lir::print(&program), text.split_once('\n').unwrap().1, "{stem}.lir is in printed form");
        let mut l = Lowered { program, ..Default::default() };
        pipeline::run_lir_step(&pass, &mut l, &cx).unwrap_or_else(|e| panic!("{stem}.lir: {e}"));
        insta::assert_snapshot!(stem.clone(), kiln_ir::lir::print(&l.program), &format!("{stem}.lir after {pass}"));
    }
}

#[test]
fn every_lir_pass_has_a_file_test() {
    let tested: Vec<String> = file_tests().into_iter().map(|(_, pass, _)| pass).collect();
    for name in pipeline::pass_names() {
        // `lower` takes HIR (its snapshots are in passes_text.rs); `prepack` is the backend's.
        if pipeline::is_lir(name) && !["lower", "prepack"].contains(&name) {
            assert!(tested.iter().any(|t| t == name), "no file test in tests/lir runs `{name}`");
        }
    }
    assert!(pipeline::run_lir_step("fuse", &mut Lowered::default(), &Context::new(&Plain, true)).is_err());
}
