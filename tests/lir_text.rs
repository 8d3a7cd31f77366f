//! LIR's text form round-trips on every test model: for the program each exporter, light and
//! generated model compiles to (and each partition of BERT split across two capped CPUs),
//! print → parse → print gives the same text, and the parsed program equals the original.
//! Constants too large to print inline are supplied from the original program by type and
//! fingerprint, as `kiln_ir::lir::parse_with` asks.

use kiln::ir::lir::{self, BufferKind, Program};
use kiln::ir::text::fnv1a;
use kiln::ir::Tensor;
use kiln::Compiler;

fn round_trip(name: &str, p: &Program) {
    let constants: Vec<&Tensor> =
        p.buffers.iter().filter_map(|b| if let BufferKind::Constant(t) = &b.kind { Some(t) } else { None }).collect();
    let text = lir::print(p);
    let source = |ty: &kiln::ir::TensorType, hash: u64| {
        constants.iter().find(|t| t.ty == *ty && fnv1a(&t.data) == hash).map(|t| (*t).clone())
    };
    let back = lir::parse_with(&text, &source).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(lir::print(&back), text, "{name}: print → parse → print");
    // NaN constants in kernel bodies compare unequal; the text equality above covers them.
    let has_nan = text.contains("NaN");
    assert!(has_nan || back == *p, "{name}: the parsed program differs from the original");
}

#[test]
fn lir_text_round_trips_on_every_test_model() {
    let cases = kiln_tests::every_test_model();
    assert!(cases.len() >= 20, "only {} test models found", cases.len());
    let mut programs = 0;
    for (name, case) in &cases {
        let mut targets = vec!["cpu"];
        if name == "exported/bert_torch" {
            targets.push("cpu:mem=512KiB,cpu:mem=512KiB");
        }
        for target in targets {
            let mut opts = kiln_tests::compile_options(case);
            opts.set_target(target).expect("target");
            let lowered = Compiler::new(opts).lower_path(&case.model).unwrap_or_else(|e| panic!("{name}: {e}"));
            for p in &lowered {
                round_trip(&format!("{name} on {target}"), p);
                programs += 1;
            }
        }
    }
    eprintln!("{programs} LIR programs of {} models round-trip", cases.len());
}

/// The text forms of both IRs round-trip on models that decide things at run time: guarded
/// nodes, merges, asserts, loops, outputs of run-time shape and run-time dims (HIR), case and
/// loop blocks, `SetDims`, `CopyRow`, the scan routines, symbols, rows and clamps (LIR).
#[test]
fn text_round_trips_on_run_time_decisions() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let batch = |name: &str, lo: usize, hi: usize| std::collections::BTreeMap::from([(name.to_string(), (lo, hi))]);
    let models = [
        (root.join("fixtures/if_shapes.onnx"), Default::default()),
        (root.join("fixtures/if_out_of_range.onnx"), Default::default()),
        (root.join("fixtures/reduce_axes.onnx"), Default::default()),
        (root.join("fixtures/range.onnx"), Default::default()),
        (root.join("fixtures/symbolic.onnx"), batch("N", 1, 4)),
        (root.join("fixtures/batch_pair.onnx"), batch("N", 2, 8)),
        (root.join("dynamic_models/detector_nms/model.onnx"), Default::default()),
        (root.join("dynamic_models/loop_decay/model.onnx"), Default::default()),
        (root.join("dynamic_models/encoder_batch/model.onnx"), batch("batch", 1, 8)),
        (root.join("dynamic_models/cnn_batch/model.onnx"), batch("batch", 1, 8)),
    ];
    for (model, dims) in &models {
        let name = model.display().to_string();
        // A bound small enough that its position vectors print inline.
        let opts = kiln::CompileOptions { max_elements: Some(32), dims: dims.clone(), ..Default::default() };
        let c = Compiler::new(opts);
        // HIR's text form parses back inline constants only: the fixtures have no others.
        if name.contains("fixtures") {
            let g = c.import_path(model).unwrap_or_else(|e| panic!("{name}: {e}"));
            let text = kiln::ir::text::print(&g);
            let back = kiln::ir::text::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            assert_eq!(kiln::ir::text::print(&back), text, "{name}: HIR print → parse → print");
        }
        let lowered = c.lower_path(model).unwrap_or_else(|e| panic!("{name}: {e}"));
        for p in &lowered {
            round_trip(&name, p);
        }
    }
}
