//! ONNX node conformance through the real binary: one test per case (see build.rs).
//! `manifest.txt`'s cases are compiled with `kiln compile` without their inputs' values and
//! run with `kiln run` on the artifact, every input fed at run time; `frozen.txt`'s through
//! `kiln run` on the `.onnx` model, which compiles the inputs that must be static in.
#![allow(non_snake_case)]

fn check(name: &str) {
    kiln_tests::check_node(name, kiln_tests::run_cli);
}

fn check_frozen(name: &str) {
    kiln_tests::check_node_frozen(name, kiln_tests::run_cli, kiln_tests::run_cli_frozen);
}

include!(concat!(env!("OUT_DIR"), "/node_cases.rs"));
