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
    let passing = kiln_tests::passing_cases();
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

/// The cases counted as passing with their inputs fed at run time have inputs: the few whose
/// model has none (constant outputs) are exactly those of `no_inputs.txt`, counted apart.
#[test]
fn cases_without_inputs_are_counted_apart() {
    let listed: std::collections::BTreeSet<&str> =
        kiln_tests::listed_cases(include_str!("conformance/no_inputs.txt")).collect();
    let found: std::collections::BTreeSet<&str> = kiln_tests::listed_cases(include_str!("conformance/manifest.txt"))
        .filter(|n| !kiln_tests::has_runtime_inputs(n))
        .collect();
    assert_eq!(listed, found, "no_inputs.txt must list the manifest's cases without inputs");
}

/// Every op of the importer's registry is used by a node test that passes (through both
/// suites above), or is listed here with the test that covers it instead.
#[test]
fn every_registered_op_passes_a_conformance_case() {
    let passing = kiln_tests::passing_cases();
    let mut covered = std::collections::HashSet::new();
    for e in kiln_tests::cached_index()["node"].as_array().unwrap() {
        if passing.contains(e["name"].as_str().unwrap()) {
            for op in e["ops"].as_array().into_iter().flatten() {
                let d = op["domain"].as_str().unwrap_or("");
                let d = if d == "ai.onnx" { "" } else { d };
                covered.insert((d.to_string(), op["op_type"].as_str().unwrap_or("").to_string()));
            }
        }
    }
    // No node test of their own: ONNX's simple suite has them (`simple_sequence_models`).
    let elsewhere = ["SequenceErase", "ConcatFromSequence"];
    let uncovered: Vec<String> = kiln_onnx::registered_ops()
        .into_iter()
        .filter(|(d, n)| !covered.contains(&(d.to_string(), n.to_string())))
        .filter(|(d, n)| !(d.is_empty() && elsewhere.contains(n)))
        .map(|(d, n)| if d.is_empty() { n.to_string() } else { format!("{d}.{n}") })
        .collect();
    println!("registered ops: {}; without a passing node test: {uncovered:?}", kiln_onnx::registered_ops().len());
    assert!(uncovered.is_empty(), "registered ops no passing node test uses: {uncovered:?}");
}

/// The sequence models of ONNX's "simple" suite (SequenceErase and ConcatFromSequence have
/// no node test of their own), every input fed at run time; model 8's split sizes are a
/// graph input, which static shapes need at compile time (compiled in, as `frozen.txt`'s).
#[test]
fn simple_sequence_models() {
    let mut ops = std::collections::BTreeSet::new();
    for i in 1..=8 {
        let dir = kiln_tests::data_root().join(format!("simple/test_sequence_model{i}"));
        let case = kiln_tests::load_case(&dir, 1e-3, 1e-7).unwrap_or_else(|e| panic!("model {i}: {e}"));
        let run = if i == 8 { kiln_tests::run_lib_frozen } else { kiln_tests::run_lib };
        let got = run(&case).unwrap_or_else(|e| panic!("test_sequence_model{i}: {e}"));
        kiln_tests::compare(&got, &case.expected, case.rtol, case.atol)
            .unwrap_or_else(|e| panic!("test_sequence_model{i}: {e}"));
        let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
        let m = kiln_onnx::decode_model(bytes.into()).unwrap();
        ops.extend(m.graph.unwrap().node.iter().map(|n| n.op_type().to_string()));
    }
    assert!(ops.contains("SequenceErase") && ops.contains("ConcatFromSequence"), "{ops:?}");
}
