//! File tests of the CPU backend's `prepack` step (see `passes/tests/lir_passes.rs` for the
//! other LIR passes): each `tests/lir/*.lir` is a program in LIR's text form headed by
//! `// pass: prepack`; the test packs it for a fixed AVX2 target (so the panels are 16 wide
//! on every machine) and compares the printed result with its snapshot.

use std::path::Path;

use kiln_backend_cpu::CpuTarget;

#[test]
fn prepack_on_its_files() {
    let mut target = CpuTarget::cross("x86_64-unknown-linux-gnu", "x86-64-v3");
    target.features = "+avx,+avx2,+fma".into();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lir");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("tests/lir").flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no file tests in {}", dir.display());
    for path in files {
        let text = std::fs::read_to_string(&path).expect("a readable file test");
        let stem = path.file_stem().expect("a file name").to_string_lossy().into_owned();
        let (head, body) = text.split_once('\n').expect("a header line");
        assert_eq!(head, "// pass: prepack", "{stem}.lir");
        let mut p = kiln_ir::lir::parse(body).unwrap_or_else(|e| panic!("{stem}.lir: {e}"));
        let changed = kiln_backend_cpu::prepack(&mut p, &target, false);
        kiln_ir::verify::verify_lir(&p).unwrap_or_else(|e| panic!("{stem}.lir after prepack: {e}"));
        let out = format!("// kernels changed: {changed}\n{}", kiln_ir::lir::print(&p));
        insta::assert_snapshot!(stem.clone(), out, &format!("{stem}.lir after prepack"));
    }
}
