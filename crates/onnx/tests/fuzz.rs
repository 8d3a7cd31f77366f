//! Mutated model bytes never panic the importer (a cheap, deterministic fuzz).
//! `KILN_FUZZ_ITERS=N` runs more iterations.

mod common;

use bytes::Bytes;
use common::*;
use kiln_onnx::{import_model, ImportOptions};

fn rich_model() -> Model {
    Model::new(13)
        .input(vis("x", F32, &[1, 2, 6, 6]))
        .init(t_f32_raw("w", &[4, 2, 3, 3], &[0.5; 72]))
        .init(t_f32("b", &[4], &[0.1; 4]))
        .init(t_i64("idx", &[], &[0]))
        .init(t_i64("ax", &[1], &[0]))
        .init(t_i64("m1", &[1], &[-1]))
        .init(t_i64("st", &[2], &[-1, 0]))
        .init(t_i64("en", &[2], &[i64::MIN, 3]))
        .init(t_i64("sa", &[2], &[1, 3]))
        .init(t_i64("sp", &[2], &[-1, 1]))
        .init(t_i64("split", &[2], &[1, 3]))
        .node(node("Conv", &["x", "w", "b"], &["c"], vec![a_str("auto_pad", "SAME_UPPER"), a_ints("strides", &[2, 2])]))
        .node(node("Relu", &["c"], &["r"], vec![]))
        .node(node("MaxPool", &["r"], &["p"], vec![a_ints("kernel_shape", &[2, 2]), a_int("ceil_mode", 1)]))
        .node(node("Slice", &["p", "st", "en", "sa", "sp"], &["sl"], vec![]))
        .node(node("Split", &["sl", "split"], &["s0", "s1"], vec![a_int("axis", 1)]))
        .node(node("Concat", &["s1", "s0"], &["cc"], vec![a_int("axis", -3)]))
        .node(node("Shape", &["cc"], &["shp"], vec![]))
        .node(node("Gather", &["shp", "idx"], &["n"], vec![]))
        .node(node("Unsqueeze", &["n", "ax"], &["n1"], vec![]))
        .node(node("Concat", &["n1", "m1"], &["tgt"], vec![a_int("axis", 0)]))
        .node(node("Reshape", &["cc", "tgt"], &["flat"], vec![]))
        .node(node("Softmax", &["flat"], &["sm"], vec![]))
        .node(node("ReduceMean", &["sm"], &["rm"], vec![a_ints("axes", &[-1])]))
        .node(node("ConstantOfShape", &["shp"], &["z"], vec![]))
        .node(node("Cast", &["rm"], &["y"], vec![a_int("to", 7)]))
        .output("y")
        .output("z")
}

#[test]
fn rich_model_imports() {
    let g = import_ok(&rich_model());
    assert_eq!(g.outputs.len(), 2);
}

#[test]
fn mutated_models_never_panic() {
    let base = rich_model().bytes().to_vec();
    let iters: usize = std::env::var("KILN_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let opts = ImportOptions::default();
    for _ in 0..iters {
        let mut b = base.clone();
        for _ in 0..1 + rnd(4) {
            let i = rnd(b.len());
            match rnd(4) {
                0 => b[i] = rnd(256) as u8,
                1 => b[i] ^= 1 << rnd(8),
                2 => b.insert(i, rnd(256) as u8),
                _ => {
                    b.remove(i);
                }
            }
        }
        let _ = import_model(Bytes::from(b), &opts);
    }
}

#[test]
fn extreme_attribute_and_shape_values_never_panic() {
    const EXTREMES: [i64; 10] = [0, 1, -1, 2, -2, 7, i64::MAX, i64::MIN, 1 << 40, -(1 << 33)];
    let base = rich_model();
    let iters: usize = std::env::var("KILN_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for _ in 0..iters {
        let mut m = Model {
            nodes: base.nodes.clone(),
            inits: base.inits.clone(),
            inputs: base.inputs.clone(),
            ..Model::new(13)
        };
        m.outputs = base.outputs.clone();
        m.opset = [1, 6, 7, 10, 11, 13, 18, 28][rnd(8)];
        for _ in 0..1 + rnd(3) {
            let v = EXTREMES[rnd(EXTREMES.len())];
            if rnd(2) == 0 {
                let n = rnd(m.nodes.len());
                let node = &mut m.nodes[n];
                if node.attribute.is_empty() {
                    continue;
                }
                let a = rnd(node.attribute.len());
                let attr = &mut node.attribute[a];
                if attr.ints.is_empty() {
                    attr.i = Some(v);
                } else {
                    let k = rnd(attr.ints.len() + 1);
                    if k == attr.ints.len() {
                        attr.ints.push(v);
                    } else {
                        attr.ints[k] = v;
                    }
                }
            } else {
                let t = rnd(m.inits.len());
                let init = &mut m.inits[t];
                if !init.int64_data.is_empty() {
                    let k = rnd(init.int64_data.len());
                    init.int64_data[k] = v;
                } else if !init.dims.is_empty() {
                    let k = rnd(init.dims.len());
                    init.dims[k] = v;
                }
            }
        }
        let _ = m.import();
    }
}
