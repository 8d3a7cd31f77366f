//! The optimizers of `ai.onnx.preview.training` (one update step), folded from constant
//! inputs and checked against hand-derived values of the operator docs' formulas.

mod common;

use common::*;
use kiln_ir::Data;

fn step(
    op: &str,
    tensors: &[(&str, f32)],
    t: i64,
    attrs: Vec<kiln_onnx::proto::AttributeProto>,
    outs: &[&str],
) -> Vec<f32> {
    let mut m = Model::new(21);
    m.other_opsets.push(("ai.onnx.preview.training", 1));
    m = m.init(t_f32("R", &[], &[0.1])).init(t_i64("T", &[], &[t]));
    let mut ins = vec!["R", "T"];
    for &(name, v) in tensors {
        m = m.init(t_f32(name, &[1], &[v]));
        ins.push(name);
    }
    let mut n = node(op, &ins, outs, attrs);
    n.domain = Some("ai.onnx.preview.training".into());
    m = m.node(n);
    for o in outs {
        m = m.output(o);
    }
    let g = import_ok(&m);
    g.outputs
        .iter()
        .map(|&v| match g.const_of(v).expect("folds").data() {
            Data::F32(x) => x[0],
            d => panic!("{d:?}"),
        })
        .collect()
}

fn close(got: &[f32], want: &[f64]) {
    for (g, w) in got.iter().zip(want) {
        assert!((f64::from(*g) - w).abs() <= 1e-6 * (1.0 + w.abs()), "{got:?} vs {want:?}");
    }
}

#[test]
fn adagrad_step() {
    // r = 0.1 / (1 + 0·0.1); h' = 2 + 1; x' = 1 + 0.1 / (√3 + 1e-6).
    let got =
        step("Adagrad", &[("x", 1.0), ("g", -1.0), ("h", 2.0)], 0, vec![a_float("decay_factor", 0.1)], &["x2", "h2"]);
    close(&got, &[1.0577349935856486, 3.0]);
}

#[test]
fn momentum_standard_and_nesterov() {
    let ins = [("x", 1.2), ("g", -0.5), ("v", 0.3)];
    let attrs = |mode: &str| {
        vec![a_float("alpha", 0.9), a_float("beta", 0.5), a_float("norm_coefficient", 0.1), a_str("mode", mode)]
    };
    // g' = 0.1·1.2 − 0.5 = −0.38. At T = 0 beta counts as 1: v' = 0.27 − 0.38 = −0.11.
    close(&step("Momentum", &ins, 0, attrs("standard"), &["x2", "v2"]), &[1.211, -0.11]);
    // T = 1: v' = 0.27 + 0.5·(−0.38) = 0.08; x' = 1.2 − 0.1·0.08.
    close(&step("Momentum", &ins, 1, attrs("standard"), &["x2", "v2"]), &[1.192, 0.08]);
    // Nesterov: x' = 1.2 − 0.1·(−0.38 + 0.9·0.08).
    close(&step("Momentum", &ins, 1, attrs("nesterov"), &["x2", "v2"]), &[1.2308, 0.08]);
}

#[test]
fn adam_step_with_bias_correction() {
    // v' = 0.1·0.5 = 0.05; h' = 0.001·0.25; r' = 0.1·√(1 − 0.999) / (1 − 0.9).
    let got = step("Adam", &[("x", 1.0), ("g", 0.5), ("v", 0.0), ("h", 0.0)], 1, vec![], &["x2", "v2", "h2"]);
    close(&got, &[0.9000063241553455, 0.05, 0.00025]);
}
