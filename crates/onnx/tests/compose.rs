//! Ops imported as compositions of other HIR ops (Pad, DepthToSpace, Resize, CumSum…).
//! With constant inputs the whole composition folds, so the values can be checked here
//! against hand-derived results and the examples of the ONNX operator docs.

mod common;

use common::*;
use kiln_ir::{Data, Op};

/// Imports a one-node model whose inputs are all initializers and returns the folded output.
fn folded(opset: i64, inits: Vec<kiln_onnx::proto::TensorProto>, n: kiln_onnx::proto::NodeProto) -> (Vec<usize>, Data) {
    let mut m = Model::new(opset);
    for t in inits {
        m = m.init(t);
    }
    let m = m.node(n).output("y");
    let g = import_ok(&m);
    let t = g.const_of(g.outputs[0]).unwrap_or_else(|| panic!("output did not fold: {:?}", ops(&g))).clone();
    (t.shape().to_vec(), t.data())
}

fn f32s(d: Data) -> Vec<f32> {
    match d {
        Data::F32(v) => v,
        other => panic!("expected f32, got {other:?}"),
    }
}

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-5, "{got:?} vs {want:?}");
    }
}

fn pad_1d(mode: &str, pads: &[i64], value: Option<f32>) -> Vec<f32> {
    let mut inits = vec![t_f32("x", &[4], &[1.0, 2.0, 3.0, 4.0]), t_i64("pads", &[2], pads)];
    let mut ins = vec!["x", "pads"];
    if let Some(v) = value {
        inits.push(t_f32("v", &[], &[v]));
        ins.push("v");
    }
    f32s(folded(19, inits, node("Pad", &ins, &["y"], vec![a_str("mode", mode)])).1)
}

#[test]
fn pad_modes() {
    // x = [1, 2, 3, 4], pads (3, 2): source indices -3..6.
    assert_eq!(pad_1d("constant", &[3, 2], None), vec![0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0]);
    assert_eq!(pad_1d("edge", &[3, 2], None), vec![1.0, 1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0]);
    // numpy reflect (no edge repeat): period 2·(4-1) = 6.
    assert_eq!(pad_1d("reflect", &[3, 2], None), vec![4.0, 3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0]);
    assert_eq!(pad_1d("wrap", &[3, 2], None), vec![2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0, 1.0, 2.0]);
    // A negative pad crops; constant_value fills.
    assert_eq!(pad_1d("constant", &[-1, 2], Some(9.0)), vec![2.0, 3.0, 4.0, 9.0, 9.0]);
    assert_eq!(pad_1d("edge", &[-2, -1], None), vec![3.0]);
}

#[test]
fn pad_2d_matches_onnx_docs() {
    // The Pad operator doc's example: pads [0, 2, 0, 0] on a 3x2 input.
    let x = [1.0, 1.2, 2.3, 3.4, 4.5, 5.7];
    let run = |mode: &str| {
        let inits = vec![t_f32("x", &[3, 2], &x), t_i64("pads", &[4], &[0, 2, 0, 0])];
        folded(13, inits, node("Pad", &["x", "pads"], &["y"], vec![a_str("mode", mode)]))
    };
    let (shape, c) = run("constant");
    assert_eq!(shape, vec![3, 4]);
    close(&f32s(c), &[0.0, 0.0, 1.0, 1.2, 0.0, 0.0, 2.3, 3.4, 0.0, 0.0, 4.5, 5.7]);
    close(&f32s(run("reflect").1), &[1.0, 1.2, 1.0, 1.2, 2.3, 3.4, 2.3, 3.4, 4.5, 5.7, 4.5, 5.7]);
    close(&f32s(run("edge").1), &[1.0, 1.0, 1.0, 1.2, 2.3, 2.3, 2.3, 3.4, 4.5, 4.5, 4.5, 5.7]);

    // Pad-2 takes pads and value as attributes.
    let n = node("Pad", &["x"], &["y"], vec![a_ints("pads", &[1, 0, 0, 0]), a_float("value", 7.0)]);
    let (shape, v) = folded(2, vec![t_f32("x", &[3, 2], &x)], n);
    assert_eq!(shape, vec![4, 2]);
    close(&f32s(v), &[7.0, 7.0, 1.0, 1.2, 2.3, 3.4, 4.5, 5.7]);
}

#[test]
fn pad_of_runtime_input_is_gather_and_where() {
    let m = Model::new(13)
        .input(vis("x", F32, &[2, 3]))
        .init(t_i64("pads", &[4], &[0, 1, 0, 2]))
        .node(node("Pad", &["x", "pads"], &["y"], vec![]))
        .output("y");
    let g = import_ok(&m);
    assert_eq!(g.ty(g.outputs[0]).shape, vec![2, 6]);
    let ops = ops(&g);
    assert!(matches!(ops.as_slice(), [Op::Gather { axis: 1 }, Op::Where]), "{ops:?}");
}

/// The DepthToSpace doc's input: channel c holds `9c + 3h + w`.
fn d2s_input() -> Vec<f32> {
    (0..8).flat_map(|c| (0..6).map(move |hw| (9 * c + 3 * (hw / 3) + hw % 3) as f32)).collect()
}

#[test]
fn depth_to_space_modes_match_onnx_docs() {
    let run = |mode: &str| {
        let n = node("DepthToSpace", &["x"], &["y"], vec![a_int("blocksize", 2), a_str("mode", mode)]);
        folded(13, vec![t_f32("x", &[1, 8, 2, 3], &d2s_input())], n)
    };
    let (shape, dcr) = run("DCR");
    assert_eq!(shape, vec![1, 2, 4, 6]);
    #[rustfmt::skip]
    let want_dcr = [
        0., 18., 1., 19., 2., 20., 36., 54., 37., 55., 38., 56., 3., 21., 4., 22., 5., 23., 39., 57., 40., 58., 41., 59.,
        9., 27., 10., 28., 11., 29., 45., 63., 46., 64., 47., 65., 12., 30., 13., 31., 14., 32., 48., 66., 49., 67., 50., 68.,
    ];
    assert_eq!(f32s(dcr), want_dcr);
    #[rustfmt::skip]
    let want_crd = [
        0., 9., 1., 10., 2., 11., 18., 27., 19., 28., 20., 29., 3., 12., 4., 13., 5., 14., 21., 30., 22., 31., 23., 32.,
        36., 45., 37., 46., 38., 47., 54., 63., 55., 64., 56., 65., 39., 48., 40., 49., 41., 50., 57., 66., 58., 67., 59., 68.,
    ];
    assert_eq!(f32s(run("CRD").1), want_crd);
}

#[test]
fn space_to_depth_inverts_depth_to_space() {
    for mode in ["DCR", "CRD"] {
        let m = Model::new(13)
            .init(t_f32("x", &[1, 8, 2, 3], &d2s_input()))
            .node(node("DepthToSpace", &["x"], &["s"], vec![a_int("blocksize", 2), a_str("mode", mode)]))
            .node(node("SpaceToDepth", &["s"], &["y"], vec![a_int("blocksize", 2), a_str("mode", mode)]))
            .output("y");
        let g = import_ok(&m);
        assert_eq!(f32s(g.const_of(g.outputs[0]).unwrap().data()), d2s_input(), "{mode}");
    }
}

fn resize(
    attrs: Vec<kiln_onnx::proto::AttributeProto>,
    x: &[f32],
    xs: &[i64],
    scales: &[f32],
) -> (Vec<usize>, Vec<f32>) {
    let inits = vec![t_f32("x", xs, x), t_f32("roi", &[0], &[]), t_f32("scales", &[scales.len() as i64], scales)];
    let (s, d) = folded(19, inits, node("Resize", &["x", "roi", "scales"], &["y"], attrs));
    (s, f32s(d))
}

#[test]
fn resize_matches_onnx_docs() {
    let x = [1.0, 2.0, 3.0, 4.0];
    // test_resize_upsample_scales_nearest: half_pixel, round_prefer_floor.
    let (shape, y) = resize(vec![a_str("mode", "nearest")], &x, &[1, 1, 2, 2], &[1.0, 1.0, 2.0, 3.0]);
    assert_eq!(shape, vec![1, 1, 4, 6]);
    #[rustfmt::skip]
    assert_eq!(y, [1., 1., 1., 2., 2., 2., 1., 1., 1., 2., 2., 2., 3., 3., 3., 4., 4., 4., 3., 3., 3., 4., 4., 4.]);
    // test_resize_upsample_scales_linear: half_pixel.
    let (_, y) = resize(vec![a_str("mode", "linear")], &x, &[1, 1, 2, 2], &[1.0, 1.0, 2.0, 2.0]);
    #[rustfmt::skip]
    close(&y, &[1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0]);
    // test_resize_upsample_scales_linear_align_corners.
    let attrs = vec![a_str("mode", "linear"), a_str("coordinate_transformation_mode", "align_corners")];
    let (_, y) = resize(attrs, &x, &[1, 1, 2, 2], &[1.0, 1.0, 2.0, 2.0]);
    let t = 1.0 / 3.0;
    let row = |a: f32| [a, a + t, a + 2.0 * t, a + 1.0];
    let want: Vec<f32> = [1.0, 1.0 + 2.0 * t, 1.0 + 4.0 * t, 3.0].into_iter().flat_map(row).collect();
    close(&y, &want);
}

fn cumsum(x: Vec<i64>, exclusive: i64, reverse: i64) -> Vec<i64> {
    let inits = vec![t_i64("x", &[x.len() as i64], &x), t_i64("axis", &[], &[0])];
    let n = node("CumSum", &["x", "axis"], &["y"], vec![a_int("exclusive", exclusive), a_int("reverse", reverse)]);
    match folded(14, inits, n).1 {
        Data::I64(v) => v,
        other => panic!("{other:?}"),
    }
}

#[test]
fn cumsum_modes() {
    let x = vec![1, 2, 3, 4, 5];
    assert_eq!(cumsum(x.clone(), 0, 0), vec![1, 3, 6, 10, 15]);
    assert_eq!(cumsum(x.clone(), 1, 0), vec![0, 1, 3, 6, 10]);
    assert_eq!(cumsum(x.clone(), 0, 1), vec![15, 14, 12, 9, 5]);
    assert_eq!(cumsum(x, 1, 1), vec![14, 12, 9, 5, 0]);
}

#[test]
fn one_hot_wraps_negative_and_drops_out_of_range() {
    let inits = vec![t_i64("i", &[3], &[0, -1, 5]), t_i64("depth", &[], &[3]), t_f32("values", &[2], &[-1.0, 1.0])];
    let (shape, y) = folded(11, inits, node("OneHot", &["i", "depth", "values"], &["y"], vec![]));
    assert_eq!(shape, vec![3, 3]);
    assert_eq!(f32s(y), vec![1.0, -1.0, -1.0, -1.0, -1.0, 1.0, -1.0, -1.0, -1.0]);
}

#[test]
fn tile_and_trilu() {
    let (shape, y) = folded(
        13,
        vec![t_f32("x", &[2, 2], &[1.0, 2.0, 3.0, 4.0]), t_i64("r", &[2], &[1, 2])],
        node("Tile", &["x", "r"], &["y"], vec![]),
    );
    assert_eq!(shape, vec![2, 4]);
    assert_eq!(f32s(y), vec![1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0]);
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let (_, y) = folded(
        14,
        vec![t_f32("x", &[3, 3], &x), t_i64("k", &[], &[-1])],
        node("Trilu", &["x", "k"], &["y"], vec![a_int("upper", 0)]),
    );
    assert_eq!(f32s(y), vec![0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 7.0, 8.0, 0.0]);
}

fn einsum(eq: &str, xs: &[(&[i64], Vec<f32>)]) -> (Vec<usize>, Vec<f32>) {
    let names = ["a", "b", "c"];
    let inits = xs.iter().zip(names).map(|((s, v), n)| t_f32(n, s, v)).collect();
    let (s, d) = folded(12, inits, node("Einsum", &names[..xs.len()], &["y"], vec![a_str("equation", eq)]));
    (s, f32s(d))
}

#[test]
fn einsum_equations() {
    let a: Vec<f32> = (1..=6).map(|v| v as f32).collect(); // [[1, 2, 3], [4, 5, 6]]
    let b: Vec<f32> = (1..=6).map(|v| v as f32).collect(); // [[1, 2], [3, 4], [5, 6]]
    let mm = (vec![2, 2], vec![22.0, 28.0, 49.0, 64.0]);
    assert_eq!(einsum("ij,jk->ik", &[(&[2, 3], a.clone()), (&[3, 2], b.clone())]), mm);
    assert_eq!(einsum("ij, jk", &[(&[2, 3], a.clone()), (&[3, 2], b.clone())]), mm); // implicit output
    assert_eq!(einsum("ij->ji", &[(&[2, 3], a.clone())]), (vec![3, 2], vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]));
    assert_eq!(einsum("ij->i", &[(&[2, 3], a.clone())]), (vec![2], vec![6.0, 15.0]));
    assert_eq!(einsum("i,i", &[(&[3], vec![1.0, 2.0, 3.0]), (&[3], vec![4.0, 5.0, 6.0])]), (vec![], vec![32.0]));
    let sq: Vec<f32> = (0..9).map(|v| v as f32).collect();
    assert_eq!(einsum("ii->i", &[(&[3, 3], sq.clone())]), (vec![3], vec![0.0, 4.0, 8.0]));
    assert_eq!(einsum("ii", &[(&[3, 3], sq.clone())]), (vec![], vec![12.0])); // trace
    let batch: Vec<f32> = (0..18).map(|v| v as f32).collect();
    let (s, d) = einsum("...ii->...i", &[(&[2, 3, 3], batch)]);
    assert_eq!((s, d), (vec![2, 3], vec![0.0, 4.0, 8.0, 9.0, 13.0, 17.0]));
    let (s, d) = einsum("bij,bjk->bik", &[(&[1, 2, 3], a), (&[1, 3, 2], b)]);
    assert_eq!((s, d), (vec![1, 2, 2], mm.1));
}

#[test]
fn attention_causal_first_query_sees_first_key() {
    // One head, two steps: with is_causal the first query attends to key 0 only, so its
    // output is V[0]; the second mixes both values.
    let q = [1.0, 0.0, 0.0, 1.0];
    let v = [1.0, 2.0, 3.0, 4.0];
    let inits = vec![t_f32("q", &[1, 1, 2, 2], &q), t_f32("k", &[1, 1, 2, 2], &q), t_f32("v", &[1, 1, 2, 2], &v)];
    let (shape, y) = folded(23, inits, node("Attention", &["q", "k", "v"], &["y"], vec![a_int("is_causal", 1)]));
    assert_eq!(shape, vec![1, 1, 2, 2]);
    let y = f32s(y);
    close(&y[..2], &[1.0, 2.0]);
    // Row 1: softmax([0, 1] / sqrt(2)) over V rows.
    let e = (1.0f32 / 2f32.sqrt()).exp();
    let (p0, p1) = (1.0 / (1.0 + e), e / (1.0 + e));
    close(&y[2..], &[p0 * 1.0 + p1 * 3.0, p0 * 2.0 + p1 * 4.0]);
}

#[test]
fn hardmax_cumprod_and_dft() {
    let (_, y) = folded(13, vec![t_f32("x", &[2, 4], &[1.0, 3.0, 3.0, 2.0, -1.0, -2.0, -3.0, -4.0])], {
        node("Hardmax", &["x"], &["y"], vec![])
    });
    assert_eq!(f32s(y), vec![0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]); // first maximum wins
    let inits = vec![t_i64("x", &[4], &[1, 2, 3, 4]), t_i64("axis", &[], &[0])];
    let (_, y) = folded(26, inits, node("CumProd", &["x", "axis"], &["y"], vec![a_int("exclusive", 1)]));
    assert_eq!(y, Data::I64(vec![1, 1, 2, 6]));
    // DFT of an impulse is flat; of a constant, one bin of 4.
    let dft = |x: [f32; 4]| {
        let n = node("DFT", &["x"], &["y"], vec![a_int("axis", 1)]);
        f32s(folded(17, vec![t_f32("x", &[1, 4, 1], &x)], n).1)
    };
    close(&dft([1.0, 0.0, 0.0, 0.0]), &[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
    close(&dft([1.0, 1.0, 1.0, 1.0]), &[4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn einsum_contractions_are_matmuls() {
    let a: Vec<f32> = (1..=6).map(|v| v as f32).collect();
    let b: Vec<f32> = (1..=6).map(|v| v as f32).collect();
    let ab = [(&[2i64, 3][..], a.clone()), (&[3i64, 2][..], b)];
    assert_eq!(einsum("ij,jk->ki", &ab), (vec![2, 2], vec![22.0, 49.0, 28.0, 64.0]));
    let aa = [(&[2i64, 3][..], a.clone()), (&[2i64, 3][..], a)];
    assert_eq!(einsum("ij,kj->ik", &aa), (vec![2, 2], vec![14.0, 32.0, 32.0, 77.0]));
    // Runtime operands: one MatMul between reshapes/transposes, no broadcast product.
    let m = Model::new(12)
        .input(vis("q", F32, &[2, 4, 5, 8]))
        .input(vis("k", F32, &[2, 4, 6, 8]))
        .node(node("Einsum", &["q", "k"], &["y"], vec![a_str("equation", "bhqd,bhkd->bhqk")]))
        .output("y");
    let g = import_ok(&m);
    assert_eq!(g.ty(g.outputs[0]).shape, vec![2, 4, 5, 6]);
    let ops = ops(&g);
    assert!(ops.iter().any(|o| matches!(o, Op::MatMul)), "{ops:?}");
    assert!(!ops.iter().any(|o| matches!(o, Op::Reduce { .. } | Op::Binary(_))), "{ops:?}");
}
