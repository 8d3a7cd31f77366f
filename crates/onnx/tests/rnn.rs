//! RNN, GRU and LSTM, imported as compositions unrolled over the sequence. With every input
//! an initializer the whole layer folds, so its outputs are checked here against values from
//! the ONNX reference implementation (`onnx.reference`, for what it covers) and, for
//! `sequence_lens`, the activation list and `clip`, `input_forget` (which it ignores), a direct
//! transcription of the operator spec's equations.

mod common;

use common::*;
use kiln_ir::Data;
use kiln_onnx::proto::{AttributeProto, TensorProto};

/// A list-of-strings attribute.
fn a_strs(name: &str, v: &[&str]) -> AttributeProto {
    use kiln_onnx::proto::attribute_proto::AttributeType;
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Strings as i32),
        strings: v.iter().map(|s| bytes::Bytes::copy_from_slice(s.as_bytes())).collect(),
        ..Default::default()
    }
}

/// A list-of-floats attribute.
fn a_floats(name: &str, v: &[f32]) -> AttributeProto {
    use kiln_onnx::proto::attribute_proto::AttributeType;
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Floats as i32),
        floats: v.to_vec(),
        ..Default::default()
    }
}

/// Imports a one-node model whose inputs are all initializers (`""` for an omitted input) and
/// returns each requested output, folded, as (shape, values).
fn run(
    op: &str,
    inits: Vec<TensorProto>,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<AttributeProto>,
) -> Vec<(Vec<usize>, Vec<f32>)> {
    folded(22, inits, node(op, ins, outs, attrs))
        .into_iter()
        .map(|(shape, data)| match data {
            Data::F32(d) => (shape, d),
            other => panic!("expected f32, got {other:?}"),
        })
        .collect()
}

fn close(got: &(Vec<usize>, Vec<f32>), shape: &[usize], want: &[f32]) {
    assert_eq!(got.0, shape);
    assert_eq!(got.1.len(), want.len());
    for (g, w) in got.1.iter().zip(want) {
        assert!((g - w).abs() <= 1e-5, "{:?} vs {want:?}", got.1);
    }
}

#[test]
fn rnn_bidirectional_with_bias_and_initial_state() {
    let inits = vec![
        t_f32("x", &[3, 2, 2], &[0.3, 0.8, 0.6, -0.5, -0.4, 0.7, -1.0, 0.6, 0.6, -0.1, -0.4, -0.4]),
        t_f32("w", &[2, 3, 2], &[-0.5, -0.1, 0.0, 0.1, 1.0, 0.6, 0.2, 1.0, -0.6, -0.7, 0.2, -0.9]),
        t_f32(
            "r",
            &[2, 3, 3],
            &[-0.9, 0.0, -0.1, 0.8, 0.3, 0.0, 0.0, -0.5, -1.0, -0.6, 0.4, -0.6, -0.3, -1.0, 0.7, -0.7, -0.5, 0.8],
        ),
        t_f32("b", &[2, 6], &[0.0, 0.7, 0.3, 0.5, -0.8, 0.1, 0.0, 0.7, -0.3, 0.2, -0.9, -0.2]),
        t_f32("h0", &[2, 2, 3], &[-0.4, -0.7, 0.6, -0.2, 1.0, 0.2, 0.2, 0.3, 0.4, -0.7, -0.1, -0.5]),
    ];
    let attrs = vec![a_int("hidden_size", 3), a_str("direction", "bidirectional")];
    let o = run("RNN", inits, &["x", "w", "r", "b", "", "h0"], &["y", "y_h"], attrs);
    close(
        &o[0],
        &[3, 2, 2, 3],
        &[
            0.5153593,
            -0.5005203,
            0.7305939,
            0.3884727,
            -0.009999687,
            2.980232e-08,
            0.8059705,
            -0.9216384,
            -0.9764583,
            -0.08184992,
            -0.5215006,
            -0.6651879,
            0.09284903,
            0.2280498,
            -0.0602606,
            0.530165,
            0.2615563,
            -0.2307677,
            0.6518058,
            -0.1062458,
            -0.8150055,
            0.4846856,
            -0.4323397,
            -0.9361896,
            0.1316926,
            0.0326825,
            0.7095295,
            0.278383,
            0.3475011,
            -0.1391027,
            -0.01999733,
            -0.5153593,
            -0.2542955,
            0.379949,
            0.2729051,
            -0.07982981,
        ],
    );
    close(
        &o[1],
        &[2, 2, 3],
        &[
            0.1316926,
            0.0326825,
            0.7095295,
            0.278383,
            0.3475011,
            -0.1391027,
            0.8059705,
            -0.9216384,
            -0.9764583,
            -0.08184992,
            -0.5215006,
            -0.6651879,
        ],
    );
}

#[test]
fn gru_batch_major_with_and_without_linear_before_reset() {
    for (lbr, y, y_h) in [
        (
            0,
            &[-0.6601841, -0.673958, -0.7092552, -0.6785865, 0.2071507, -0.2820317, -0.2703101, -0.3489133],
            &[-0.7092552, -0.6785865, -0.2703101, -0.3489133],
        ),
        (
            1,
            &[-0.6452125, -0.6719635, -0.6305318, -0.668428, 0.3194003, -0.2811909, -0.1440354, -0.3597296],
            &[-0.6305318, -0.668428, -0.1440354, -0.3597296],
        ),
    ] {
        let inits = vec![
            t_f32("x", &[2, 2, 3], &[0.3, 0.8, 0.6, -0.5, -0.4, 0.7, -1.0, 0.6, 0.6, -0.1, -0.4, -0.4]),
            t_f32(
                "w",
                &[1, 6, 3],
                &[-0.5, -0.1, 0.0, 0.1, 1.0, 0.6, 0.2, 1.0, -0.6, -0.7, 0.2, -0.9, -0.9, 0.0, -0.1, 0.8, 0.3, 0.0],
            ),
            t_f32("r", &[1, 6, 2], &[0.0, -0.5, -1.0, -0.6, 0.4, -0.6, -0.3, -1.0, 0.7, -0.7, -0.5, 0.8]),
            t_f32("b", &[1, 12], &[0.0, 0.7, 0.3, 0.5, -0.8, 0.1, 0.0, 0.7, -0.3, 0.2, -0.9, -0.2]),
            t_f32("h0", &[2, 1, 2], &[-0.4, -0.7, 0.6, -0.2]),
        ];
        let attrs = vec![a_int("hidden_size", 2), a_int("layout", 1), a_int("linear_before_reset", lbr)];
        let o = run("GRU", inits, &["x", "w", "r", "b", "", "h0"], &["y", "y_h"], attrs);
        close(&o[0], &[2, 2, 1, 2], y);
        close(&o[1], &[2, 1, 2], y_h);
    }
}

#[test]
fn lstm_bidirectional_batch_major_with_peepholes() {
    let inits = vec![
        t_f32("x", &[2, 2, 2], &[0.3, 0.8, 0.6, -0.5, -0.4, 0.7, -1.0, 0.6]),
        t_f32(
            "w",
            &[2, 8, 2],
            &[
                0.6, -0.1, -0.4, -0.4, -0.5, -0.1, 0.0, 0.1, 1.0, 0.6, 0.2, 1.0, -0.6, -0.7, 0.2, -0.9, -0.9, 0.0,
                -0.1, 0.8, 0.3, 0.0, 0.0, -0.5, -1.0, -0.6, 0.4, -0.6, -0.3, -1.0, 0.7, -0.7,
            ],
        ),
        t_f32(
            "r",
            &[2, 8, 2],
            &[
                -0.5, 0.8, 0.0, 0.7, 0.3, 0.5, -0.8, 0.1, 0.0, 0.7, -0.3, 0.2, -0.9, -0.2, -0.4, -0.7, 0.6, -0.2, 1.0,
                0.2, 0.2, 0.3, 0.4, -0.7, -0.1, -0.5, -0.2, -0.8, 0.9, -0.6, 0.3, -0.4,
            ],
        ),
        t_f32(
            "b",
            &[2, 16],
            &[
                0.7, 0.3, -0.7, 0.7, 0.9, 0.8, 0.1, -0.7, -0.6, 0.9, 0.1, -0.6, 0.8, 0.3, 0.1, -0.2, -0.2, -0.5, -0.9,
                0.8, -0.1, 0.1, -0.4, 0.5, -0.9, -0.3, -0.9, -0.8, 0.9, 0.3, -0.1, 0.0,
            ],
        ),
        t_f32("h0", &[2, 2, 2], &[0.7, -0.3, 0.2, 0.4, -0.3, 0.0, 0.5, 0.8]),
        t_f32("c0", &[2, 2, 2], &[-0.7, 0.9, -1.0, 0.5, 0.6, -0.7, -0.2, 0.6]),
        t_f32("p", &[2, 6], &[-1.0, 0.3, 0.6, 0.0, 0.5, -0.5, -0.6, -0.3, -0.6, -0.3, 0.9, 0.1]),
    ];
    let attrs = vec![a_int("hidden_size", 2), a_int("layout", 1), a_str("direction", "bidirectional")];
    let o = run("LSTM", inits.clone(), &["x", "w", "r", "b", "", "h0", "c0", "p"], &["y", "y_h", "y_c"], attrs);
    close(
        &o[0],
        &[2, 2, 2, 2],
        &[
            -0.1546653,
            0.02195863,
            -0.06799702,
            0.0879305,
            -0.1210765,
            -0.09394465,
            -0.08969223,
            0.2286628,
            0.243163,
            -0.5122634,
            -0.0899309,
            -0.09197311,
            0.2176721,
            -0.4464892,
            -0.08497266,
            -0.07527483,
        ],
    );
    close(
        &o[1],
        &[2, 2, 2],
        &[-0.1210765, -0.09394465, -0.06799702, 0.0879305, 0.2176721, -0.4464892, -0.0899309, -0.09197311],
    );
    close(
        &o[2],
        &[2, 2, 2],
        &[-0.6103303, -0.1744834, -0.370227, 0.2669746, 0.4815454, -1.680741, -0.5980844, -0.2153248],
    );
    // Only Y_c requested, of the same inputs.
    let attrs = vec![a_int("layout", 1), a_str("direction", "bidirectional")];
    let o = run("LSTM", inits, &["x", "w", "r", "b", "", "h0", "c0", "p"], &["", "", "y_c"], attrs);
    close(
        &o[0],
        &[2, 2, 2],
        &[-0.6103303, -0.1744834, -0.370227, 0.2669746, 0.4815454, -1.680741, -0.5980844, -0.2153248],
    );
}

#[test]
fn sequence_lens_hold_the_state_and_zero_the_outputs() {
    // Lengths 3, 1, 2 over 3 steps; the reverse direction starts at each entry's last step.
    let inits = vec![
        t_f32(
            "x",
            &[3, 3, 2],
            &[0.3, 0.8, 0.6, -0.5, -0.4, 0.7, -1.0, 0.6, 0.6, -0.1, -0.4, -0.4, -0.5, -0.1, 0.0, 0.1, 1.0, 0.6],
        ),
        t_f32(
            "w",
            &[2, 8, 2],
            &[
                0.2, 1.0, -0.6, -0.7, 0.2, -0.9, -0.9, 0.0, -0.1, 0.8, 0.3, 0.0, 0.0, -0.5, -1.0, -0.6, 0.4, -0.6,
                -0.3, -1.0, 0.7, -0.7, -0.5, 0.8, 0.0, 0.7, 0.3, 0.5, -0.8, 0.1, 0.0, 0.7,
            ],
        ),
        t_f32(
            "r",
            &[2, 8, 2],
            &[
                -0.3, 0.2, -0.9, -0.2, -0.4, -0.7, 0.6, -0.2, 1.0, 0.2, 0.2, 0.3, 0.4, -0.7, -0.1, -0.5, -0.2, -0.8,
                0.9, -0.6, 0.3, -0.4, 0.7, 0.3, -0.7, 0.7, 0.9, 0.8, 0.1, -0.7, -0.6, 0.9,
            ],
        ),
        t_f32(
            "b",
            &[2, 16],
            &[
                0.1, -0.6, 0.8, 0.3, 0.1, -0.2, -0.2, -0.5, -0.9, 0.8, -0.1, 0.1, -0.4, 0.5, -0.9, -0.3, -0.9, -0.8,
                0.9, 0.3, -0.1, 0.0, 0.7, -0.3, 0.2, 0.4, -0.3, 0.0, 0.5, 0.8, -0.7, 0.9,
            ],
        ),
        TensorProto {
            data_type: Some(kiln_onnx::proto::tensor_proto::DataType::Int32 as i32),
            int32_data: vec![3, 1, 2],
            ..t_f32("lens", &[3], &[])
        },
        t_f32("h0", &[2, 3, 2], &[-1.0, 0.5, 0.6, -0.7, -0.2, 0.6, -1.0, 0.3, 0.6, 0.0, 0.5, -0.5]),
        t_f32("c0", &[2, 3, 2], &[-0.6, -0.3, -0.6, -0.3, 0.9, 0.1, -0.3, -0.5, 0.9, -0.1, 1.0, 0.0]),
    ];
    let attrs = vec![a_int("hidden_size", 2), a_str("direction", "bidirectional")];
    let o = run("LSTM", inits, &["x", "w", "r", "b", "lens", "h0", "c0"], &["y", "y_h", "y_c"], attrs);
    close(
        &o[0],
        &[3, 2, 3, 2],
        &[
            -0.3508643,
            -0.2195728,
            -0.2217411,
            -0.2622207,
            0.007911835,
            -0.2077911,
            -0.03921832,
            0.2338895,
            0.1461523,
            -0.07283238,
            0.2290492,
            0.002830553,
            -0.3579184,
            -0.2470652,
            0.0,
            0.0,
            -0.09525115,
            -0.1503866,
            -0.004513983,
            0.1662439,
            0.0,
            0.0,
            0.3912452,
            -0.1651708,
            -0.3142567,
            -0.1488633,
            0.0,
            0.0,
            0.0,
            0.0,
            -0.09797911,
            -0.01963798,
            0.0,
            0.0,
            0.0,
            0.0,
        ],
    );
    close(
        &o[1],
        &[2, 3, 2],
        &[
            -0.3142567,
            -0.1488633,
            -0.2217411,
            -0.2622207,
            -0.09525115,
            -0.1503866,
            -0.03921832,
            0.2338895,
            0.1461523,
            -0.07283238,
            0.2290492,
            0.002830553,
        ],
    );
    close(
        &o[2],
        &[2, 3, 2],
        &[
            -0.4588674,
            -0.227789,
            -0.2771211,
            -0.4786551,
            -0.126936,
            -0.2210671,
            -0.07203023,
            0.3486688,
            0.1790624,
            -0.1452352,
            0.4910384,
            0.003614176,
        ],
    );
    // Y is zero past each length: [t, d, b, :] for (t, b) in (1, 1), (2, 1), (2, 2).
    for (t, b) in [(1, 1), (2, 1), (2, 2)] {
        for d in 0..2 {
            let at = ((t * 2 + d) * 3 + b) * 2;
            assert_eq!(&o[0].1[at..at + 2], &[0.0, 0.0]);
        }
    }
}

#[test]
fn activation_lists_with_parameters_and_clip() {
    // RNN: LeakyRelu(0.3) forward, ScaledTanh(0.5, 2) reverse, inputs clipped to 0.8.
    let inits = vec![
        t_f32("x", &[2, 1, 2], &[0.9, 2.4, 1.8, -1.5]),
        t_f32("w", &[2, 2, 2], &[-0.4, 0.7, -1.0, 0.6, 0.6, -0.1, -0.4, -0.4]),
        t_f32("r", &[2, 2, 2], &[-0.5, -0.1, 0.0, 0.1, 1.0, 0.6, 0.2, 1.0]),
    ];
    let attrs = vec![
        a_str("direction", "bidirectional"),
        a_strs("activations", &["LeakyRelu", "ScaledTanh"]),
        a_floats("activation_alpha", &[0.3, 0.5]),
        a_floats("activation_beta", &[2.0]),
        a_float("clip", 0.8),
    ];
    close(
        &run("RNN", inits, &["x", "w", "r"], &["y"], attrs)[0],
        &[2, 2, 1, 2],
        &[0.8, 0.5400001, 0.4405172, -0.4608343, -0.24, -0.24, 0.4608343, -0.1177479],
    );
    // GRU: HardSigmoid(0.3, 0.4) gates, Elu(0.7) candidate.
    let inits = vec![
        t_f32("x", &[2, 1, 2], &[0.9, 2.4, 1.8, -1.5]),
        t_f32("w", &[1, 6, 2], &[-0.6, -0.7, 0.2, -0.9, -0.9, 0.0, -0.1, 0.8, 0.3, 0.0, 0.0, -0.5]),
        t_f32("r", &[1, 6, 2], &[-1.0, -0.6, 0.4, -0.6, -0.3, -1.0, 0.7, -0.7, -0.5, 0.8, 0.0, 0.7]),
    ];
    let attrs = vec![
        a_strs("activations", &["HardSigmoid", "Elu"]),
        a_floats("activation_alpha", &[0.3, 0.7]),
        a_floats("activation_beta", &[0.4]),
    ];
    close(
        &run("GRU", inits, &["x", "w", "r"], &["y"], attrs)[0],
        &[2, 1, 1, 2],
        &[0.27, -0.4891641, 0.3953082, -0.4891641],
    );
    // LSTM with input_forget (f = 1 - i): Sigmoid, Softsign, Softplus.
    let lstm_inits = || {
        vec![
            t_f32("x", &[2, 1, 2], &[0.9, 2.4, 1.8, -1.5]),
            t_f32(
                "w",
                &[1, 8, 2],
                &[0.3, 0.5, -0.8, 0.1, 0.0, 0.7, -0.3, 0.2, -0.9, -0.2, -0.4, -0.7, 0.6, -0.2, 1.0, 0.2],
            ),
            t_f32(
                "r",
                &[1, 8, 2],
                &[0.2, 0.3, 0.4, -0.7, -0.1, -0.5, -0.2, -0.8, 0.9, -0.6, 0.3, -0.4, 0.7, 0.3, -0.7, 0.7],
            ),
        ]
    };
    let attrs = vec![a_int("input_forget", 1), a_strs("activations", &["Sigmoid", "Softsign", "Softplus"])];
    let o = run("LSTM", lstm_inits(), &["x", "w", "r"], &["y", "", "y_c"], attrs);
    close(&o[0], &[2, 1, 1, 2], &[0.6038762, 0.4474226, 0.185354, 0.1777722]);
    close(&o[1], &[1, 1, 2], &[0.3596667, 0.279082]);
    // LSTM: ThresholdedRelu(-0.3), Relu, Affine(0.5, 0.2); the alphas go to the activations
    // that take one, in order.
    let attrs = vec![
        a_strs("activations", &["ThresholdedRelu", "Relu", "Affine"]),
        a_floats("activation_alpha", &[-0.3, 0.5]),
        a_floats("activation_beta", &[0.2]),
    ];
    let o = run("LSTM", lstm_inits(), &["x", "w", "r"], &["y", "", "y_c"], attrs);
    close(&o[0], &[2, 1, 1, 2], &[0.410088, 0.042, 0.0, 0.0]);
    close(&o[1], &[1, 1, 2], &[-0.1938033, 0.0]);
}

#[test]
fn runtime_inputs_import_unrolled() {
    // X and the weights fed at run time: nothing folds; the outputs are typed.
    let m = Model::new(14)
        .input(vis("x", F32, &[4, 2, 3]))
        .input(vis("w", F32, &[2, 20, 3]))
        .input(vis("r", F32, &[2, 20, 5]))
        .node(node("LSTM", &["x", "w", "r"], &["y", "y_h", "y_c"], vec![a_str("direction", "bidirectional")]))
        .output("y")
        .output("y_h")
        .output("y_c");
    let g = import_ok(&m);
    let shapes: Vec<Vec<usize>> = g.outputs.iter().map(|&v| g.ty(v).shape.clone()).collect();
    assert_eq!(shapes, [vec![4, 2, 2, 5], vec![2, 2, 5], vec![2, 2, 5]]);
    // Each output is the value its node produced (no extra copy).
    for (&v, name) in g.outputs.iter().zip(["y", "y_h", "y_c"]) {
        assert_eq!(g.value(v).name, name);
    }
}

#[test]
fn sequence_lens_fed_at_run_time_needs_a_constant() {
    let m = Model::new(14)
        .input(vis("x", F32, &[2, 1, 3]))
        .input(vis("lens", kiln_onnx::proto::tensor_proto::DataType::Int32, &[1]))
        .init(t_f32("w", &[1, 4, 3], &[0.1; 12]))
        .init(t_f32("r", &[1, 4, 4], &[0.1; 16]))
        .node(node("RNN", &["x", "w", "r", "", "lens"], &["y"], vec![a_int("hidden_size", 4)]))
        .output("y");
    let e = m.import().unwrap_err().to_string();
    assert!(e.contains("sequence_lens") && e.contains("run time") && e.contains("lens"), "{e}");
}

#[test]
fn bad_shapes_and_attributes_are_errors() {
    let model = |w_rows: usize, attrs: Vec<AttributeProto>| {
        Model::new(14)
            .input(vis("x", F32, &[2, 1, 3]))
            .init(t_f32("w", &[1, w_rows as i64, 3], &vec![0.1; w_rows * 3]))
            .init(t_f32("r", &[1, 12, 4], &[0.1; 48]))
            .node(node("GRU", &["x", "w", "r"], &["y"], attrs))
            .output("y")
    };
    let e = model(8, vec![]).import().unwrap_err().to_string();
    assert!(e.contains("W has shape [1, 8, 3]"), "{e}");
    let e = model(12, vec![a_str("direction", "sideways")]).import().unwrap_err().to_string();
    assert!(e.contains("sideways"), "{e}");
    let e = model(12, vec![a_strs("activations", &["Gelu", "Tanh"])]).import().unwrap_err().to_string();
    assert!(e.contains("GRU") && e.contains("gelu"), "{e}");
    import_ok(&model(12, vec![a_strs("activations", &["sigmoid", "tanh"])]));
}
