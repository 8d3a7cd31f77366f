//! ONNX node conformance through the library API: one test per case (see build.rs).
//! `manifest.txt`'s cases compile without their inputs' values and get every input at run
//! time; `frozen.txt`'s compile the inputs that must be static in (reported apart).
#![allow(non_snake_case)]

fn check(name: &str) {
    kiln_tests::check_node(name, kiln_tests::run_lib);
}

fn check_frozen(name: &str) {
    kiln_tests::check_node_frozen(name, kiln_tests::run_lib, kiln_tests::run_lib_frozen);
}

include!(concat!(env!("OUT_DIR"), "/node_cases.rs"));

/// Issue #2's bar: every node test of its ops whose tensors are f32/i64/i32/bool passes,
/// with its inputs fed at run time (`manifest.txt`) or compiled in (`frozen.txt`), and so
/// runs above, and in conformance_cli.
#[test]
fn every_in_scope_case_is_in_the_manifest() {
    let lists = [include_str!("conformance/manifest.txt"), include_str!("conformance/frozen.txt")];
    let passing: std::collections::HashSet<&str> = lists
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').next().unwrap_or(""))
        .collect();
    let in_scope: Vec<&str> = kiln_tests::cached_index()["node"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| kiln_tests::out_of_scope(e).is_none())
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let missing: Vec<&&str> = in_scope.iter().filter(|n| !passing.contains(**n)).collect();
    println!(
        "in-scope node tests: {}; in the manifest: {}; manifest total: {}",
        in_scope.len(),
        in_scope.len() - missing.len(),
        passing.len()
    );
    assert!(missing.is_empty(), "in-scope node tests not in the manifest: {missing:?}");
}
