//! Differential tests for the element types: f64 and trigonometric kernels, integer bit
//! operations, casts between every pair of dtypes, and element moves on storage types.

mod common;

use common::*;
use kiln::ir::minifloat::{E8M0Round, MiniFloat};
use kiln::ir::op::{BinaryOp, ReduceOp, UnaryOp};
use kiln::ir::{DType, Data, Graph, Op, Tensor};
use kiln::{CompileOptions, Compiler, Session, SessionOptions, TensorRef};

#[test]
fn trig_and_f64_elementwise() {
    let mut r = Rng(40);
    for dt in [DType::F32, DType::F64] {
        for op in [UnaryOp::Sin, UnaryOp::Cos, UnaryOp::Tan, UnaryOp::Atan, UnaryOp::Exp, UnaryOp::Tanh, UnaryOp::Erf] {
            let s = r.shape(2, 6);
            check(Op::Unary(op), &[r.tensor(dt, &s)]);
        }
        for op in [UnaryOp::Asin, UnaryOp::Acos] {
            let n = 12;
            let v: Vec<f64> = r.f32s(n, -0.99, 0.99).into_iter().map(f64::from).collect();
            check(Op::Unary(op), &[Tensor::from_data(vec![n], Data::from_f64s(dt, &v))]);
        }
    }
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max, BinaryOp::Min] {
        let (a, b) = broadcast_pair(&mut r);
        check(Op::Binary(op), &[r.tensor(DType::F64, &a), r.tensor(DType::F64, &b)]);
    }
    for fmod in [false, true] {
        let (a, b) = broadcast_pair(&mut r);
        check(Op::Binary(BinaryOp::Mod { fmod }), &[r.tensor(DType::F64, &a), r.tensor(DType::F64, &b)]);
    }
    let (x, y) = (r.tensor(DType::F64, &[3, 5]), r.tensor(DType::F64, &[5, 4]));
    check(Op::MatMul, &[x, y]);
    let x = r.tensor(DType::F64, &[3, 4, 5]);
    check(Op::Reduce { op: ReduceOp::Sum, axes: vec![0, 2], keepdims: false }, std::slice::from_ref(&x));
    check(Op::Reduce { op: ReduceOp::Max, axes: vec![1], keepdims: true }, std::slice::from_ref(&x));
    check(Op::Softmax { axis: 1 }, std::slice::from_ref(&x));
    check(Op::LogSoftmax { axis: 2 }, &[x]);
}

#[test]
fn integer_bitwise_shift_and_clip() {
    let mut r = Rng(41);
    for dt in [DType::I32, DType::I64] {
        for op in [BinaryOp::And, BinaryOp::Or, BinaryOp::Xor] {
            let (a, b) = broadcast_pair(&mut r);
            check(Op::Binary(op), &[r.tensor(dt, &a), r.tensor(dt, &b)]);
        }
        check(Op::Unary(UnaryOp::Not), &[r.tensor(dt, &[7])]);
        // Shift amounts from -3 to 70 cover the out-of-range cases on both widths.
        let n = 74;
        let amounts =
            Tensor::from_data(vec![n], Data::from_i64s(dt, &(0..n as i64).map(|i| i - 3).collect::<Vec<_>>()));
        let v = Tensor::from_data(
            vec![n],
            Data::from_i64s(dt, &(0..n as i64).map(|i| (i * 7919) % 97 - 48).collect::<Vec<_>>()),
        );
        for op in [BinaryOp::Shl, BinaryOp::Shr] {
            check(Op::Binary(op), &[v.clone(), amounts.clone()]);
        }
        // Clip without bounds (±inf) keeps every value; with bounds it saturates.
        let x = Tensor::from_data(vec![4], Data::from_i64s(dt, &[i32::MIN.into(), -5, 6, i32::MAX.into()]));
        check(Op::Unary(UnaryOp::Clip { lo: f64::NEG_INFINITY, hi: f64::INFINITY }), std::slice::from_ref(&x));
        check(Op::Unary(UnaryOp::Clip { lo: -3.0, hi: 1e30 }), &[x]);
    }
}

/// Compiles one graph casting `x` to each of `targets` (dtype, saturate) and compares every
/// output with the reference evaluation: values exactly (NaN equal to NaN), and the bytes too
/// when the target is a small type.
fn check_casts(x: &Tensor, targets: &[(DType, bool, E8M0Round)]) {
    let mut g = Graph::new("casts");
    let input = g.add_input("x", x.ty.clone());
    let mut want = Vec::new();
    for (i, &(to, saturate, round)) in targets.iter().enumerate() {
        let op = Op::Cast { to, saturate, round };
        want.push(kiln::ir::ops::eval(&op, &[x]).unwrap_or_else(|e| panic!("eval {op:?}: {e}")).remove(0));
        let out = g.add_node(op, &[input], format!("cast{i}"), &[]).unwrap_or_else(|e| panic!("cast {to}: {e}"));
        g.outputs.extend(out);
    }
    let opts = CompileOptions { verify: true, ..Default::default() };
    let art =
        Compiler::new(opts).compile_graph(g).unwrap_or_else(|e| panic!("compiling casts from {}: {e}", x.dtype()));
    let s = Session::from_bytes(&art.bytes(), &SessionOptions { threads: 1, ..Default::default() }).unwrap();
    let got = s.run(&[TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &x.data }]).unwrap();
    let xs = x.to_f64_vec();
    for ((g, w), &(to, saturate, round)) in got.iter().zip(&want).zip(targets) {
        let what = format!("cast {} -> {to} (saturate {saturate}, {round:?})", x.dtype());
        assert_eq!(g.dtype, to.code(), "{what}: dtype");
        let gt = Tensor::from_bytes(w.ty.clone(), g.data.clone().into()).unwrap();
        for (k, (a, b)) in gt.to_f64_vec().iter().zip(w.to_f64_vec()).enumerate() {
            assert!(
                (a.is_nan() && b.is_nan()) || *a == b,
                "{what}: element {k} ({}): compiled {a}, reference {b}",
                xs[k]
            );
        }
        if to.is_small() {
            // (NaN codes compare as NaN above: E5M2's several NaNs are not kept apart.)
            let wv = w.to_f64_vec();
            for (k, (a, b)) in g.data.iter().zip(w.data.iter()).enumerate().filter(|&(k, _)| !wv[k].is_nan()) {
                assert_eq!(a, b, "{what}: element {k} ({}): compiled code {a:#x}, reference {b:#x}", xs[k]);
            }
        }
    }
}

/// Every dtype to every other: the kernels' conversions (rounding to f16/bf16 and the small
/// floats, saturating or not; wrapping to narrow integers; saturating float→int) agree with
/// the reference evaluation bit for bit.
#[test]
fn casts_between_every_dtype() {
    let mut vals: Vec<f64> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        2.5,
        -2.5,
        3.7,
        -3.7,
        127.0,
        128.0,
        255.0,
        256.0,
        300.5,
        -129.0,
        40000.0,
        65504.0,
        70000.0,
        -70000.0,
        1e10,
        -1e10,
        0.333333,
        1.0e-5,
        4294967295.0,
        3e9,
    ];
    // Around the small floats' limits and rounding points.
    vals.extend([
        448.0,
        464.0,
        -465.0,
        480.0,
        240.0,
        248.0,
        57344.0,
        61440.0,
        -61441.0,
        6.0,
        7.0,
        5.0,
        0.25,
        0.75,
        1.75,
        -2.9,
        1e-7,
        0.0019531,
        0.00390625,
        0.0029296875,
        1.5258789e-5,
        2.2888184e-5,
        0.0009765625,
        1.1,
        0.124,
    ]);
    // Every target, saturating and (float8, E8M0) not, and E8M0 in each rounding mode.
    let mut all: Vec<(DType, bool, E8M0Round)> = DType::ALL
        .into_iter()
        .flat_map(|d| {
            let unsat = d.minifloat().is_some_and(|f| f != MiniFloat::E2M1);
            std::iter::once((d, true, E8M0Round::Up)).chain(unsat.then_some((d, false, E8M0Round::Up)))
        })
        .collect();
    for round in [E8M0Round::Down, E8M0Round::Nearest] {
        all.extend([(DType::F8E8M0, true, round), (DType::F8E8M0, false, round)]);
    }
    let n = vals.len();
    for from in DType::ALL {
        let data = if from.is_float() || from == DType::Bool {
            Data::from_f64s(from, &vals)
        } else {
            Data::from_i64s(from, &vals.iter().map(|&v| v as i64).collect::<Vec<_>>())
        };
        check_casts(&Tensor::from_data(vec![n], data), &all);
    }
    // Special float values.
    let x = Tensor::f32(vec![6], vec![f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-40, f32::MAX]);
    check_casts(&x, &all);
    // Every code of each small type, to every type.
    for from in DType::ALL.into_iter().filter(|d| d.is_small()) {
        let codes: Vec<u8> = match from {
            DType::F4E2M1 | DType::U4 => (0..16).collect(),
            DType::I4 => (-8i8..8).map(|x| x as u8).collect(),
            DType::U2 => (0..4).collect(),
            DType::I2 => (-2i8..2).map(|x| x as u8).collect(),
            _ => (0..=255).collect(),
        };
        check_casts(&Tensor::from_data(vec![codes.len()], Data::Small(from, codes)), &all);
    }
    // Random f32 bit patterns with exponents around the small floats' ranges (and all of f32).
    let mut r = Rng(77);
    let bits: Vec<f32> = (0..4096)
        .map(|i| {
            let b = r.next() as u32;
            let e = if i % 4 == 0 { b >> 23 & 0xFF } else { 127 - 30 + (r.next() % 50) as u32 };
            f32::from_bits((b & 0x807F_FFFF) | (e << 23))
        })
        .collect();
    let small: Vec<_> = all.iter().copied().filter(|(d, _, _)| d.is_small()).collect();
    check_casts(&Tensor::f32(vec![bits.len()], bits.clone()), &small);
    let halves = Data::from_f64s(DType::F16, &bits.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
    check_casts(&Tensor::from_data(vec![bits.len()], halves), &small);
}

/// Element moves on storage types run without widening.
#[test]
fn data_movement_on_storage_types() {
    let mut r = Rng(42);
    for dt in [
        DType::F16,
        DType::BF16,
        DType::U8,
        DType::I8,
        DType::I16,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::F64,
        DType::F8E4M3FN,
        DType::F8E8M0,
        DType::F4E2M1,
        DType::I4,
        DType::U2,
    ] {
        let x = r.tensor(dt, &[2, 3, 4]);
        check_with(Op::Transpose { perm: vec![2, 0, 1] }, std::slice::from_ref(&x), &[], 0.0);
        let y = r.tensor(dt, &[2, 1, 4]);
        check_with(Op::Concat { axis: 1 }, &[x.clone(), y], &[], 0.0);
        let idx = Tensor::i64(vec![3], vec![2, 0, 1]);
        check_with(Op::Gather { axis: 1 }, &[x, idx], &[false, true], 0.0);
    }
    // BitCast is a view of the same bytes.
    for (from, to) in
        [(DType::F32, DType::I32), (DType::U16, DType::F16), (DType::I64, DType::F64), (DType::Bool, DType::U8)]
    {
        let x = r.tensor(from, &[3, 4]);
        check_with(Op::BitCast { to }, std::slice::from_ref(&x), &[], 0.0);
        let y = kiln::ir::ops::eval(&Op::BitCast { to }, &[&x]).unwrap().remove(0);
        assert_eq!((y.dtype(), &y.data), (to, &x.data));
    }
}
