//! Differential tests of the ops that index by data: gathers and scatters, arg reductions,
//! NaN/Inf tests, TopK, GridSample and RoiAlign, against the reference evaluation (seeded),
//! and their out-of-range index errors.
mod common;

use common::*;
use kiln::ir::{DType, Graph, Op, Tensor};
use kiln::{CompileOptions, Compiler, Session, SessionOptions, TensorRef};

/// An index from data outside the gathered axis stops the run with an error naming the
/// node; it never reads out of bounds or answers silently.
#[test]
fn gather_index_out_of_range_is_an_error() {
    let mut r = Rng(11);
    let x = r.tensor(DType::F32, &[4, 3]);
    let mut g = Graph::new("gather");
    let xi = g.add_const("x", x);
    let ii = g.add_input("idx", Tensor::i64(vec![2], vec![0, 0]).ty);
    g.outputs = g.add_node(Op::Gather { axis: 0 }, &[xi, ii], "pick", &[]).unwrap();
    let art = Compiler::new(CompileOptions::default()).compile_graph(g).unwrap();
    let s = Session::from_bytes(&art.bytes(), &SessionOptions::default()).unwrap();
    let run = |idx: Vec<i64>| s.run(&[TensorRef::i64(&[2], &idx)]);
    assert!(run(vec![3, -4]).is_ok());
    for bad in [vec![0, 4], vec![-5, 1]] {
        let e = run(bad.clone()).expect_err("an out-of-range index must fail").to_string();
        assert!(e.contains("`pick` (Gather)") && e.contains("[-4, 4)"), "{bad:?}: {e}");
    }
    // The session stays usable after a failed run.
    assert!(run(vec![1, 2]).is_ok());
}

/// Random indices in `[-dim, dim)` for each element of `shape`, where `dim` may depend on
/// the position (`dim_of(flat)`).
fn indices(r: &mut Rng, shape: &[usize], dim_of: impl Fn(usize) -> usize, i32s: bool) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<i64> = (0..n)
        .map(|k| {
            let d = dim_of(k) as i64;
            r.range(0, (2 * d - 1) as usize) as i64 - d
        })
        .collect();
    if i32s {
        Tensor::i32(shape.to_vec(), v.iter().map(|&x| x as i32).collect())
    } else {
        Tensor::i64(shape.to_vec(), v)
    }
}

#[test]
fn nan_inf_and_arg_reductions() {
    let mut r = Rng(12);
    let vals = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -1.5, 2.0];
    let s = r.shape(3, 6);
    let n = s.iter().product();
    let x = Tensor::f32(s, (0..n).map(|_| vals[r.range(0, 5)]).collect());
    check(Op::IsNaN, std::slice::from_ref(&x));
    for (max, select_last) in [(true, false), (true, true), (false, false), (false, true)] {
        let axis = x.shape().len() - 1;
        check(Op::ArgReduce { max, axis, keepdims: true, select_last }, std::slice::from_ref(&x));
    }
    let nans = Tensor::f32(vec![2, 2], vec![f32::NAN, f32::NAN, 1.0, f32::NAN]);
    check(Op::ArgReduce { max: true, axis: 1, keepdims: false, select_last: true }, &[nans]);
    for (negative, positive) in [(true, true), (true, false), (false, true), (false, false)] {
        check(Op::IsInf { negative, positive }, std::slice::from_ref(&x));
    }
    for _ in 0..8 {
        let rank = r.range(1, 4);
        let s = r.shape(rank, 6);
        let axis = r.range(0, rank - 1);
        let dt = [DType::F32, DType::I64, DType::I32][r.range(0, 2)];
        // Integer inputs make ties common, which exercises first/last selection.
        let x = r.tensor(dt, &s);
        for (max, select_last) in [(true, false), (true, true), (false, false), (false, true)] {
            let keepdims = r.next().is_multiple_of(2);
            check(Op::ArgReduce { max, axis, keepdims, select_last }, std::slice::from_ref(&x));
        }
    }
}

#[test]
fn gathers_and_scatters_with_data_indices() {
    use kiln::ir::ScatterReduction as S;
    let mut r = Rng(13);
    for _ in 0..6 {
        let rank = r.range(1, 3);
        let xs = r.shape(rank, 5);
        let axis = r.range(0, rank - 1);
        let is: Vec<usize> =
            xs.iter().enumerate().map(|(d, &e)| if d == axis { r.range(1, 6) } else { r.range(1, e) }).collect();
        let x = r.tensor(DType::F32, &xs);
        let i32s = r.next().is_multiple_of(2);
        let idx = indices(&mut r, &is, |_| xs[axis], i32s);
        check(Op::GatherElements { axis }, &[x.clone(), idx.clone()]);
        for red in [S::None, S::Add, S::Mul, S::Max, S::Min] {
            let dt = [DType::F32, DType::I64][r.range(0, 1)];
            let (x, u) = (r.tensor(dt, &xs), r.tensor(dt, &is));
            check(Op::ScatterElements { axis, reduction: red }, &[x, idx.clone(), u]);
        }
    }
    for _ in 0..6 {
        let rank = r.range(1, 4);
        let xs = r.shape(rank, 4);
        let batch_dims = r.range(0, rank - 1);
        let m = r.range(1, rank - batch_dims);
        let mut is: Vec<usize> = xs[..batch_dims].to_vec();
        let extra = r.range(0, 2);
        is.extend(r.shape(extra, 3));
        is.push(m);
        let x = r.tensor(DType::F32, &xs);
        let idx = indices(&mut r, &is, |k| xs[batch_dims + k % m], false);
        check(Op::GatherNd { batch_dims }, &[x, idx]);
        // ScatterND (no batch dims): updates are indices.shape[..-1] ++ data.shape[m..].
        let is: Vec<usize> = is[batch_dims..].to_vec();
        let idx = indices(&mut r, &is, |k| xs[k % m], false);
        let mut us: Vec<usize> = is[..is.len() - 1].to_vec();
        us.extend(&xs[m..]);
        for red in [S::None, S::Add, S::Mul, S::Max, S::Min] {
            let dt = [DType::F32, DType::I32][r.range(0, 1)];
            check(Op::ScatterNd { reduction: red }, &[r.tensor(dt, &xs), idx.clone(), r.tensor(dt, &us)]);
        }
    }
    // Constant indices are checked when compiling; indices from data at run time.
    let x = r.tensor(DType::F32, &[3, 4]);
    check_with(Op::GatherElements { axis: 0 }, &[x, Tensor::i64(vec![1, 2], vec![-3, 2])], &[false, true], 1e-5);
}

/// An out-of-range index from data in a scatter stops the run with an error naming the node.
#[test]
fn scatter_index_out_of_range_is_an_error() {
    let mut g = Graph::new("scatter");
    let xi = g.add_const("x", Tensor::f32(vec![4], vec![0.0; 4]));
    let ii = g.add_input("idx", Tensor::i64(vec![2, 1], vec![0, 0]).ty);
    let ui = g.add_const("u", Tensor::f32(vec![2], vec![1.0, 2.0]));
    let op = Op::ScatterNd { reduction: kiln::ir::ScatterReduction::Add };
    g.outputs = g.add_node(op, &[xi, ii, ui], "put", &[]).unwrap();
    let art = Compiler::new(CompileOptions::default()).compile_graph(g).unwrap();
    let s = Session::from_bytes(&art.bytes(), &SessionOptions::default()).unwrap();
    let run = |idx: Vec<i64>| s.run(&[TensorRef::i64(&[2, 1], &idx)]);
    let out = run(vec![3, -1]).unwrap();
    assert_eq!(out[0].to_f32().unwrap(), vec![0.0, 0.0, 0.0, 3.0]);
    let e = run(vec![4, 0]).expect_err("an out-of-range index must fail").to_string();
    assert!(e.contains("`put` (ScatterND)"), "{e}");
}

#[test]
fn top_k_indices() {
    let mut r = Rng(15);
    for _ in 0..8 {
        let rank = r.range(1, 3);
        let s = r.shape(rank, 7);
        let axis = r.range(0, rank - 1);
        let k = r.range(0, s[axis]);
        let dt = [DType::F32, DType::I64][r.range(0, 1)];
        // Integer inputs make ties common: the lower position comes first.
        let x = r.tensor(dt, &s);
        for largest in [true, false] {
            check(Op::TopKIndices { axis, k, largest }, std::slice::from_ref(&x));
        }
    }
}

/// TopK runs as a heap selection per row: long rows (a detector's 8400 boxes, a vocabulary),
/// k from 1 to the whole row, the axis inside (rows strided), many ties (small integers,
/// where the lower position must come first), smallest and largest.
#[test]
fn top_k_by_heap_selection() {
    let mut r = Rng(17);
    for (shape, axis, k) in [
        (vec![1, 8400], 1, 100),
        (vec![2, 3000], 1, 3000),
        (vec![37, 3, 4], 0, 11),
        (vec![5, 64, 2], 1, 1),
        (vec![1, 50257], 1, 50),
    ] {
        check_top_k(&mut r, &shape, axis, [DType::F32, DType::I64], &[(k, true), (k, false)]);
    }
}

/// Contiguous f32 rows are screened 16 at a time against the worst value kept: rows of
/// few distinct values (equal values: the earlier position is kept, so a later tie never
/// enters), rising and falling rows (every block, or none, holds a replacement), and
/// lengths that leave a scalar tail after the last whole block.
#[test]
fn top_k_screened_rows() {
    let mut r = Rng(23);
    for (n, k) in [(1000, 7), (533, 40), (70, 3), (19, 2)] {
        let ties: Vec<f32> = (0..n).map(|_| r.range(0, 4) as f32).collect();
        let rising: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        for v in [ties, rising] {
            let falling: Vec<f32> = v.iter().map(|a| -a).collect();
            let x = Tensor::f32(vec![2, n], [v, falling].concat());
            for largest in [true, false] {
                check(Op::TopKIndices { axis: 1, k, largest }, std::slice::from_ref(&x));
            }
        }
    }
}

/// TopK's indices of a tensor of `shape`, for each dtype, for each `(k, largest)`.
fn check_top_k(r: &mut Rng, shape: &[usize], axis: usize, dtypes: [DType; 2], ks: &[(usize, bool)]) {
    for dt in dtypes {
        let x = r.tensor(dt, shape);
        for &(k, largest) in ks {
            check(Op::TopKIndices { axis, k, largest }, std::slice::from_ref(&x));
        }
    }
}

/// A long axis and a small k take the repeated-selection lowering.
#[test]
fn top_k_by_selection() {
    let mut r = Rng(16);
    for (shape, axis) in [(vec![100], 0), (vec![3, 90], 1), (vec![70, 2, 3], 0)] {
        check_top_k(&mut r, &shape, axis, [DType::F32, DType::I32], &[(1, true), (5, false), (16, true)]);
    }
}

#[test]
fn grid_sample_modes_and_paddings() {
    use kiln::ir::{GridMode, GridPadding};
    let mut r = Rng(17);
    for mode in [GridMode::Nearest, GridMode::Linear, GridMode::Cubic] {
        for padding in [GridPadding::Zeros, GridPadding::Border, GridPadding::Reflection] {
            for align_corners in [false, true] {
                let (n, c) = (r.range(1, 2), r.range(1, 3));
                let xs = [n, c, r.range(2, 6), r.range(2, 6)];
                let x = r.tensor(DType::F32, &xs);
                let gs = [n, r.range(1, 5), r.range(1, 5), 2];
                // Coordinates reach outside [-1, 1] to exercise the padding modes.
                let grid = Tensor::f32(gs.to_vec(), r.f32s(gs.iter().product(), -1.7, 1.7));
                check_with(Op::GridSample { mode, padding, align_corners }, &[x, grid], &[], 1e-4);
                // Volumetric: [N, C, D, H, W] with a grid of (x, y, z).
                let xs = [n, c, r.range(2, 4), r.range(2, 4), r.range(2, 4)];
                let x = r.tensor(DType::F32, &xs);
                let gs = [n, r.range(1, 3), r.range(1, 3), r.range(1, 3), 3];
                let grid = Tensor::f32(gs.to_vec(), r.f32s(gs.iter().product(), -1.7, 1.7));
                check_with(Op::GridSample { mode, padding, align_corners }, &[x, grid], &[], 1e-4);
            }
        }
    }
}

#[test]
fn roi_align_avg_and_max() {
    let mut r = Rng(18);
    for (max, half_pixel) in [(false, false), (false, true), (true, false), (true, true)] {
        let (n, c, h, w) = (r.range(1, 3), r.range(1, 3), r.range(2, 7), r.range(2, 7));
        let x = r.tensor(DType::F32, &[n, c, h, w]);
        let rois_n = r.range(1, 4);
        // Boxes partly outside the image exercise the zero and edge-clamp rules.
        let mut rois = Vec::new();
        for _ in 0..rois_n {
            let v = r.f32s(4, -2.0, 8.0);
            rois.extend([v[0].min(v[2]), v[1].min(v[3]), v[0].max(v[2]), v[1].max(v[3])]);
        }
        let bi = Tensor::i64(vec![rois_n], (0..rois_n).map(|_| r.range(0, n - 1) as i64).collect());
        let op = Op::RoiAlign {
            out_hw: [r.range(1, 4), r.range(1, 4)],
            sampling_ratio: r.range(1, 3),
            spatial_scale: [1.0, 0.5][r.range(0, 1)],
            max,
            half_pixel,
        };
        check_with(op, &[x, Tensor::f32(vec![rois_n, 4], rois), bi], &[], 1e-4);
    }
}

/// NonZero's scan routine against the reference: the count, then the coordinates row by row,
/// over ranks 0 to 4, several dtypes, zeros common (and NaN, which is non-zero).
#[test]
fn non_zero_scan() {
    let mut r = Rng(41);
    for _ in 0..12 {
        let rank = r.range(0, 4);
        let s = r.shape(rank, 5);
        let n: usize = s.iter().product();
        let x = match r.range(0, 3) {
            0 => Tensor::f32(s.clone(), (0..n).map(|_| [0.0, 1.5, -2.0, f32::NAN][r.range(0, 3)]).collect()),
            1 => Tensor::i64(s.clone(), (0..n).map(|_| r.range(0, 2) as i64 - 1).collect()),
            2 => Tensor::i32(s.clone(), (0..n).map(|_| r.range(0, 1) as i32).collect()),
            _ => Tensor::bool(s.clone(), (0..n).map(|_| r.range(0, 1) == 1).collect()),
        };
        check(Op::NonZero, &[x]);
    }
    // All zero: a count of 0 and nothing else.
    check(Op::NonZero, &[Tensor::f32(vec![2, 3], vec![0.0; 6])]);
}

/// NonMaxSuppression's routine against the reference on random boxes (both box formats),
/// scores with ties, and random limits: most boxes per class from 0 past N, IoU and score
/// thresholds, none (−inf) included.
#[test]
fn non_max_suppression_routine() {
    let mut r = Rng(42);
    for case in 0..16 {
        let (b, c, n) = (r.range(1, 2), r.range(1, 3), r.range(1, 24));
        let coords: Vec<f32> = r.f32s(b * n * 4, 0.0, 10.0);
        let boxes = Tensor::f32(vec![b, n, 4], coords);
        // Scores on a coarse grid, so that equal scores occur.
        let scores = Tensor::f32(vec![b, c, n], (0..b * c * n).map(|_| r.range(0, 8) as f32 / 8.0).collect());
        let max_out = Tensor::i64(vec![1], vec![r.range(0, n + 2) as i64]);
        let iou = Tensor::f32(vec![], vec![[0.0, 0.3, 0.5, 0.9][r.range(0, 3)]]);
        let threshold = Tensor::f32(vec![], vec![[f32::NEG_INFINITY, 0.2, 0.5][r.range(0, 2)]]);
        let center_point_box = case % 2 == 1;
        check(Op::NonMaxSuppression { center_point_box }, &[boxes, scores, max_out, iou, threshold]);
    }
}
