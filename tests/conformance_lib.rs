//! ONNX node conformance through the library API: one test per case (see build.rs).
#![allow(non_snake_case)]

fn check(name: &str) {
    kiln_tests::check_node(name, kiln_tests::run_lib);
}

include!(concat!(env!("OUT_DIR"), "/node_cases.rs"));

/// Issue #2's bar: every node test of its ops whose tensors are f32/i64/i32/bool is in the
/// manifest of passing cases (and so runs above, and in conformance_cli).
#[test]
fn every_in_scope_case_is_in_the_manifest() {
    let manifest = include_str!("conformance/manifest.txt");
    let passing: std::collections::HashSet<&str> = manifest.lines().filter(|l| !l.starts_with('#')).collect();
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
