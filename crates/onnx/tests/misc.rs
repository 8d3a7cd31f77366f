//! TfIdfVectorizer, Det and the ai.onnx.ml Binarizer, folded from constant inputs and checked
//! against hand-derived values.

mod common;

use common::*;
use kiln_ir::Data;

fn folded(m: Model) -> Data {
    let g = import_ok(&m);
    g.const_of(g.outputs[0]).unwrap_or_else(|| panic!("did not fold: {:?}", ops(&g))).data()
}

#[test]
fn tfidf_counts_unigrams_once_and_bigrams_per_skip() {
    // Pool: unigram 3 (slot 0), bigram (1, 2) (slot 1). x = [1, 3, 2, 1, 2]: (1, 2) is adjacent
    // once (positions 3, 4) and two apart once (positions 0, 2).
    let model = |skip: i64| {
        Model::new(9)
            .init(t_i64("x", &[5], &[1, 3, 2, 1, 2]))
            .node(node(
                "TfIdfVectorizer",
                &["x"],
                &["y"],
                vec![
                    a_str("mode", "TF"),
                    a_int("min_gram_length", 1),
                    a_int("max_gram_length", 2),
                    a_int("max_skip_count", skip),
                    a_ints("ngram_counts", &[0, 1]),
                    a_ints("ngram_indexes", &[0, 1]),
                    a_ints("pool_int64s", &[3, 1, 2]),
                ],
            ))
            .output("y")
    };
    assert_eq!(folded(model(0)), Data::F32(vec![1.0, 1.0]));
    assert_eq!(folded(model(1)), Data::F32(vec![1.0, 2.0]));
}

#[test]
fn det_of_2x2_and_batched_3x3() {
    let m = Model::new(22)
        .init(t_f32("x", &[2, 2], &[1., 2., 3., 4.]))
        .node(node("Det", &["x"], &["y"], vec![]))
        .output("y");
    assert_eq!(folded(m), Data::F32(vec![-2.0]));
    // 2·(3·2 − 2·1) − 0 + 1·(1·1 − 3·1) = 6, and the identity's 1.
    let m = Model::new(22)
        .init(t_f32("x", &[2, 3, 3], &[2., 0., 1., 1., 3., 2., 1., 1., 2., 1., 0., 0., 0., 1., 0., 0., 0., 1.]))
        .node(node("Det", &["x"], &["y"], vec![]))
        .output("y");
    assert_eq!(folded(m), Data::F32(vec![6.0, 1.0]));
}

#[test]
fn binarizer_thresholds() {
    let mut m = Model::new(13);
    m.other_opsets.push(("ai.onnx.ml", 1));
    let mut n = node("Binarizer", &["x"], &["y"], vec![a_float("threshold", 0.4)]);
    n.domain = Some("ai.onnx.ml".into());
    let m = m.init(t_f32("x", &[3], &[-1.0, 0.5, 0.4])).node(n).output("y");
    assert_eq!(folded(m), Data::F32(vec![0.0, 1.0, 0.0]));
}

#[test]
fn deform_conv_samples_at_offset_positions() {
    // A 1×1 kernel of weight 2 over [[1, 2], [3, 4]], every tap shifted right by 0.5:
    // (0, 0.5) → 1.5, (0, 1.5) → half of 2 (the other half is outside, zero), (1, 0.5) → 3.5,
    // (1, 1.5) → 2.
    let mut off = vec![0.0f32; 8];
    off[4..].fill(0.5); // channel 1 is the x offset
    let m = Model::new(22)
        .init(t_f32("x", &[1, 1, 2, 2], &[1., 2., 3., 4.]))
        .init(t_f32("w", &[1, 1, 1, 1], &[2.]))
        .init(t_f32("o", &[1, 2, 2, 2], &off))
        .node(node("DeformConv", &["x", "w", "o"], &["y"], vec![]))
        .output("y");
    assert_eq!(folded(m), Data::F32(vec![3.0, 2.0, 7.0, 4.0]));
}

#[test]
fn tree_ensemble_sums_leaf_weights_on_each_path() {
    // One tree: x0 <= 1 → leaf 0 (10, target 0); else x0 ∈ {3, 4} → leaf 1 (20, target 1),
    // else leaf 2 (40, target 1). Rows 0.5, 3, 7 → [10, 0], [0, 20], [0, 40].
    let mut modes = t_f32("nodes_modes", &[2], &[]);
    modes.data_type = Some(kiln_onnx::proto::tensor_proto::DataType::Uint8 as i32);
    modes.float_data.clear();
    modes.int32_data = vec![0, 6];
    let mut n = node(
        "TreeEnsemble",
        &["x"],
        &["y"],
        vec![
            a_ints("nodes_featureids", &[0, 0]),
            a_tensor("nodes_splits", t_f32("nodes_splits", &[2], &[1.0, f32::NAN])),
            a_tensor("nodes_modes", modes),
            a_ints("nodes_truenodeids", &[0, 1]),
            a_ints("nodes_trueleafs", &[1, 1]),
            a_ints("nodes_falsenodeids", &[1, 2]),
            a_ints("nodes_falseleafs", &[0, 1]),
            a_ints("leaf_targetids", &[0, 1, 1]),
            a_tensor("leaf_weights", t_f32("leaf_weights", &[3], &[10.0, 20.0, 40.0])),
            a_tensor("membership_values", t_f32("membership_values", &[3], &[3.0, 4.0, f32::NAN])),
            a_ints("tree_roots", &[0]),
            a_int("n_targets", 2),
        ],
    );
    n.domain = Some("ai.onnx.ml".into());
    let mut m = Model::new(21);
    m.other_opsets.push(("ai.onnx.ml", 5));
    let m = m.init(t_f32("x", &[3, 1], &[0.5, 3.0, 7.0])).node(n).output("y");
    assert_eq!(folded(m), Data::F32(vec![10.0, 0.0, 0.0, 20.0, 0.0, 40.0]));
}
