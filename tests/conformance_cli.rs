//! ONNX node conformance through `kiln run` (the real binary): one test per case.
#![allow(non_snake_case)]

use std::sync::OnceLock;

fn index() -> &'static serde_json::Value {
    static I: OnceLock<serde_json::Value> = OnceLock::new();
    I.get_or_init(kiln_tests::index)
}

fn check(name: &str) {
    let case = kiln_tests::node_case(name, index()).unwrap_or_else(|e| panic!("{name}: loading: {e}"));
    let got = kiln_tests::run_cli(&case).unwrap_or_else(|e| panic!("{name}: {e}"));
    kiln_tests::compare(&got, &case.expected, case.rtol, case.atol).unwrap_or_else(|e| panic!("{name}: {e}"));
}

include!(concat!(env!("OUT_DIR"), "/node_cases.rs"));
