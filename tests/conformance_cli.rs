//! ONNX node conformance through `kiln run` (the real binary): one test per case.
#![allow(non_snake_case)]

fn check(name: &str) {
    kiln_tests::check_node(name, kiln_tests::run_cli);
}

include!(concat!(env!("OUT_DIR"), "/node_cases.rs"));
