//! Quantization ops (quant.rs): QuantizeLinear, DequantizeLinear,
//! DynamicQuantizeLinear, MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv. With
//! constant inputs the compositions fold; the expected values are hand-derived or were
//! computed with the ONNX Python reference implementation (onnx 1.23, numpy 2.4), and are
//! compared exactly.

mod common;

use common::*;
use kiln_ir::Data;
use kiln_onnx::proto::tensor_proto::DataType;
use kiln_onnx::proto::{NodeProto, TensorProto};

fn t_raw(name: &str, dims: &[i64], dt: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(dt as i32),
        raw_data: Some(raw.into()),
        ..Default::default()
    }
}
fn t_u8(name: &str, dims: &[i64], v: &[u8]) -> TensorProto {
    t_raw(name, dims, DataType::Uint8, v.to_vec())
}
fn t_i8(name: &str, dims: &[i64], v: &[i8]) -> TensorProto {
    t_raw(name, dims, DataType::Int8, v.iter().map(|&x| x as u8).collect())
}
fn t_i16(name: &str, dims: &[i64], v: &[i16]) -> TensorProto {
    t_raw(name, dims, DataType::Int16, v.iter().flat_map(|x| x.to_le_bytes()).collect())
}
fn t_i32(name: &str, dims: &[i64], v: &[i32]) -> TensorProto {
    t_raw(name, dims, DataType::Int32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
}
/// A float16 tensor from its bit patterns.
fn t_f16(name: &str, dims: &[i64], bits: &[u16]) -> TensorProto {
    t_raw(name, dims, DataType::Float16, bits.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// The first output of [`folded`].
fn folded_one(opset: i64, inits: Vec<TensorProto>, n: NodeProto) -> (Vec<usize>, Data) {
    folded(opset, inits, n).remove(0)
}

fn import_err(opset: i64, inits: Vec<TensorProto>, n: NodeProto) -> String {
    let mut m = Model::new(opset);
    for t in inits {
        m = m.init(t);
    }
    m.node(n).output("y").import().unwrap_err().to_string()
}

fn q(ins: &[&str]) -> NodeProto {
    node("QuantizeLinear", ins, &["y"], vec![])
}

#[test]
fn quantize_rounds_half_to_even_and_saturates() {
    // 0.49999997 is the f32 just below 0.5: floor(x + 0.5) would round it up to 1.
    let x = [0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -300.0, 0.499_999_97, 7.0];
    let inits = vec![t_f32("x", &[9], &x), t_f32("s", &[], &[1.0]), t_i8("z", &[], &[0])];
    let (shape, y) = folded_one(21, inits, q(&["x", "s", "z"]));
    assert_eq!(shape, vec![9]);
    assert_eq!(y, Data::I8(vec![0, 2, 2, 0, -2, 127, -128, 0, 7]));

    // uint8 by default, with a zero point: 1 / 0.4 = 2.5 → 2, 3 / 0.4 = 7.5 → 8.
    let inits = vec![t_f32("x", &[5], &[1.0, 2.0, 3.0, -7.0, 1000.0]), t_f32("s", &[], &[0.4])];
    let (_, y) = folded_one(13, inits.clone(), q(&["x", "s"]));
    assert_eq!(y, Data::U8(vec![2, 5, 8, 0, 255]));
    let mut with_zp = inits;
    with_zp.push(t_u8("z", &[1], &[128]));
    assert_eq!(folded_one(13, with_zp, q(&["x", "s", "z"])).1, Data::U8(vec![130, 133, 136, 110, 255]));
}

#[test]
fn quantize_divides_in_float16_like_numpy() {
    // x / scale in f16: 2.55 / 0.1 is 25.52 in f16 (25.5 in exact arithmetic), so 26.
    let x = t_f16("x", &[5], &[11878, 12902, 13517, 16077, 16666]); // 0.1 0.2 0.3 1.7 2.55
    let inits = vec![x, t_f16("s", &[], &[11878]), t_i16("z", &[], &[0])];
    assert_eq!(folded_one(21, inits, q(&["x", "s", "z"])).1, Data::I16(vec![1, 2, 3, 17, 26]));
}

#[test]
fn quantize_per_axis_and_blocked() {
    let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let inits = vec![t_f32("x", &[2, 3, 2], &x), t_f32("s", &[3], &[1.0, 2.0, 4.0]), t_u8("z", &[3], &[0, 10, 250])];
    let n = node("QuantizeLinear", &["x", "s", "z"], &["y"], vec![a_int("axis", 1)]);
    let (shape, y) = folded_one(13, inits, n);
    assert_eq!(shape, vec![2, 3, 2]);
    // Row 1 of batch 0: 2/2 + 10, 3/2 = 1.5 → 2, + 10; row 2: 4/4 + 250, 5/4 → 1 + 250.
    assert_eq!(y, Data::U8(vec![0, 1, 11, 12, 251, 251, 6, 7, 14, 14, 252, 253]));

    // Blocks of 4 along axis 1 (the last block has 2 columns).
    let x: Vec<f32> = (0..12).map(|v| v as f32 - 3.0).collect();
    let inits =
        vec![t_f32("x", &[2, 6], &x), t_f32("s", &[2, 2], &[1.0, 2.0, 0.5, 4.0]), t_i8("z", &[2, 2], &[0, 1, -1, 2])];
    let n = node("QuantizeLinear", &["x", "s", "z"], &["y"], vec![a_int("axis", 1), a_int("block_size", 4)]);
    assert_eq!(folded_one(21, inits, n).1, Data::I8(vec![-3, -2, -1, 0, 1, 2, 5, 7, 9, 11, 4, 4]));
}

#[test]
fn quantize_to_unsupported_types_is_reported() {
    let inits = vec![t_f32("x", &[2], &[1.0, 2.0]), t_f32("s", &[], &[1.0])];
    // FLOAT6E2M3 (27) is not a Kiln dtype.
    let n = node("QuantizeLinear", &["x", "s"], &["y"], vec![a_int("output_dtype", 27)]);
    let e = import_err(21, inits, n);
    assert!(e.contains("QuantizeLinear") && e.contains("FLOAT6E2M3"), "{e}");
}

#[test]
fn dequantize_per_axis_blocked_and_int32() {
    let inits = vec![
        t_u8("x", &[2, 3], &[0, 100, 255, 1, 2, 3]),
        t_f32("s", &[3], &[0.5, 0.25, 2.0]),
        t_u8("z", &[3], &[0, 100, 255]),
    ];
    let n = node("DequantizeLinear", &["x", "s", "z"], &["y"], vec![a_int("axis", 1)]);
    assert_eq!(folded_one(13, inits, n).1, Data::F32(vec![0.0, 0.0, 0.0, 0.5, -24.5, -504.0]));

    // Blocked, f16 scale (the result is f16): blocks of 3 along axis 1.
    let inits = vec![
        t_i8("x", &[1, 5], &[-128, -1, 0, 1, 127]),
        t_f16("s", &[1, 2], &[11878, 16896]), // 0.1, 3.0
        t_i8("z", &[1, 2], &[1, -2]),
    ];
    let n = node("DequantizeLinear", &["x", "s", "z"], &["y"], vec![a_int("axis", 1), a_int("block_size", 3)]);
    let (shape, y) = folded_one(21, inits, n);
    assert_eq!(shape, vec![1, 5]);
    assert!(matches!(y, Data::F16(_)));
    assert_eq!(y.to_f64_vec(), vec![-12.8984375, -0.199951171875, -0.0999755859375, 9.0, 387.0]);

    // int32 with a zero point is computed in f64 by numpy (after x is rounded to f32);
    // without one, in f32.
    let x = [16_777_217, -5, i32::MAX];
    let inits = vec![t_i32("x", &[3], &x), t_f32("s", &[], &[0.5]), t_i32("z", &[], &[3])];
    let y = folded_one(13, inits, node("DequantizeLinear", &["x", "s", "z"], &["y"], vec![])).1;
    assert_eq!(y, Data::F32(vec![8_388_606.5, -4.0, 1_073_741_824.0]));
    let inits = vec![t_i32("x", &[3], &x), t_f32("s", &[], &[0.5])];
    let y = folded_one(13, inits, node("DequantizeLinear", &["x", "s"], &["y"], vec![])).1;
    assert_eq!(y, Data::F32(vec![8_388_608.0, -2.5, 1_073_741_824.0]));

    // output_dtype (opset 23).
    let inits = vec![t_u8("x", &[3], &[1, 2, 3]), t_f32("s", &[], &[0.1])];
    let n = node("DequantizeLinear", &["x", "s"], &["y"], vec![a_int("output_dtype", DataType::Float16 as i64)]);
    let y = folded_one(23, inits, n).1;
    assert!(matches!(y, Data::F16(_)));
    assert_eq!(y.to_f64_vec(), vec![0.0999755859375, 0.199951171875, 0.300048828125]);
}

#[test]
fn dynamic_quantize_linear() {
    let x = [1.0, -2.5, 0.3, 4.2, 0.0, -0.7];
    let n = node("DynamicQuantizeLinear", &["x"], &["y", "s", "z"], vec![]);
    let outs = folded(11, vec![t_f32("x", &[2, 3], &x)], n);
    assert_eq!(outs[0], (vec![2, 3], Data::U8(vec![133, 0, 106, 255, 95, 68])));
    assert_eq!(outs[1], (vec![], Data::F32(vec![0.026_274_51])));
    assert_eq!(outs[2], (vec![], Data::U8(vec![95])));

    // All positive: the range still starts at 0.
    let n = node("DynamicQuantizeLinear", &["x"], &["y", "s", "z"], vec![]);
    let outs = folded(11, vec![t_f32("x", &[3], &[0.5, 1.0, 2.0])], n);
    assert_eq!(outs[0].1, Data::U8(vec![64, 127, 255]));
    assert_eq!(outs[1].1, Data::F32(vec![0.007_843_138]));
    assert_eq!(outs[2].1, Data::U8(vec![0]));
}

#[test]
fn matmul_integer_per_row_and_per_column_zero_points() {
    // A - [1, 2] per row = [[0, 1, 2], [2, 3, 4]]; B - [1, -1] per column = [[0, 1], [1, 2], [-1, 4]].
    let inits = vec![
        t_u8("a", &[2, 3], &[1, 2, 3, 4, 5, 6]),
        t_i8("b", &[3, 2], &[1, 0, 2, 1, 0, 3]),
        t_u8("az", &[2], &[1, 2]),
        t_i8("bz", &[2], &[1, -1]),
    ];
    let n = node("MatMulInteger", &["a", "b", "az", "bz"], &["y"], vec![]);
    assert_eq!(folded_one(10, inits, n), (vec![2, 2], Data::I32(vec![-1, 10, -1, 24])));
}

#[test]
fn conv_integer_and_its_exactness_bound() {
    let x: Vec<u8> = (0..36).map(|v| v * 7).collect();
    let w = [1, -2, 3, 4, 0, 5, -6, 7, 127, -128, 2, 2, 9, 9, 9, -9];
    let attrs = || vec![a_int("group", 2), a_ints("pads", &[1, 0, 0, 1])];
    let inits = vec![
        t_u8("x", &[1, 4, 3, 3], &x),
        t_i8("w", &[2, 2, 2, 2], &w),
        t_u8("xz", &[], &[3]),
        t_i8("wz", &[2], &[0, 1]),
    ];
    let (shape, y) = folded_one(10, inits, node("ConvInteger", &["x", "w", "xz", "wz"], &["y"], attrs()));
    assert_eq!(shape, vec![1, 2, 3, 3]);
    let want = [116, 172, -411, 608, 692, -463, 860, 944, -505, -189, -189, 1737, 1571, 1662, 20788, 1844, 1935, 23791];
    assert_eq!(y, Data::I32(want.to_vec()));

    // 300 products of up to 255 · 255 may pass 2^24, where an f32 sum is no longer exact:
    // the channels are reduced in chunks of 258 (258 · 255² < 2^24), summed in i32.
    let inits = vec![t_u8("x", &[1, 300, 1, 1], &[255; 300]), t_u8("w", &[1, 300, 1, 1], &[255; 300])];
    let (shape, y) = folded_one(10, inits, node("ConvInteger", &["x", "w"], &["y"], vec![]));
    assert_eq!((shape, y), (vec![1, 1, 1, 1], Data::I32(vec![300 * 255 * 255])));
    // With groups, every group's channels are chunked: 2 groups of 260 channels of 255 · 255.
    let inits = vec![t_u8("x", &[1, 520, 1, 2], &[255; 1040]), t_u8("w", &[2, 260, 1, 1], &[255; 520])];
    let (shape, y) = folded_one(10, inits, node("ConvInteger", &["x", "w"], &["y"], vec![a_int("group", 2)]));
    assert_eq!((shape, y), (vec![1, 2, 1, 2], Data::I32(vec![260 * 255 * 255; 4])));
    // One channel's 17 × 17 window of products of up to 255 · 255 (x is any uint8 input) can
    // pass 2^24 by itself.
    let m = Model::new(10)
        .input(vis("x", DataType::Uint8, &[1, 1, 17, 17]))
        .init(t_u8("w", &[1, 1, 17, 17], &[255; 289]))
        .node(node("ConvInteger", &["x", "w"], &["y"], vec![]))
        .output("y");
    let e = m.import().unwrap_err().to_string();
    assert!(e.contains("2^24") && e.contains("289 products of up to 255·255"), "{e}");
    // A 16 × 16 window stays below it.
    let m = Model::new(10)
        .input(vis("x", DataType::Uint8, &[1, 1, 16, 16]))
        .init(t_u8("w", &[1, 1, 16, 16], &[255; 256]))
        .node(node("ConvInteger", &["x", "w"], &["y"], vec![]))
        .output("y");
    import_ok(&m);
}

#[test]
fn qlinear_matmul_matches_the_reference() {
    let a = [10, 200, 35, 0, 255, 128];
    let b = [3, -5, 127, -128, 0, 9];
    let ins = ["a", "as", "az", "b", "bs", "bz", "ys", "yz"];
    let n = || node("QLinearMatMul", &ins, &["y"], vec![]);
    let inits = vec![
        t_u8("a", &[2, 3], &a),
        t_f32("as", &[], &[0.002]),
        t_u8("az", &[], &[7]),
        t_i8("b", &[3, 2], &b),
        t_f32("bs", &[], &[0.05]),
        t_i8("bz", &[], &[-2]),
        t_f32("ys", &[], &[0.1]),
        t_i8("yz", &[], &[-3]),
    ];
    assert_eq!(folded_one(10, inits, n()), (vec![2, 2], Data::I8(vec![22, -27, 29, -33])));

    // float16 scales (opset 21).
    let inits = vec![
        t_u8("a", &[2, 3], &a),
        t_f16("as", &[], &[6169]), // 0.002
        t_u8("az", &[], &[7]),
        t_i8("b", &[3, 2], &b),
        t_f16("bs", &[], &[10854]), // 0.05
        t_i8("bz", &[], &[-2]),
        t_f16("ys", &[], &[11878]), // 0.1
        t_u8("yz", &[], &[100]),
    ];
    assert_eq!(folded_one(21, inits, n()).1, Data::U8(vec![125, 76, 132, 70]));

    // Ties round to even: 9 · 0.5, 5 · 0.5, 7 · 0.5.
    let inits = vec![
        t_u8("a", &[3, 3], &[1, 3, 5, 1, 2, 2, 3, 2, 2]),
        t_f32("as", &[], &[0.5]),
        t_u8("az", &[], &[0]),
        t_u8("b", &[3, 1], &[1, 1, 1]),
        t_f32("bs", &[], &[1.0]),
        t_u8("bz", &[], &[0]),
        t_f32("ys", &[], &[1.0]),
        t_u8("yz", &[], &[0]),
    ];
    assert_eq!(folded_one(10, inits, n()).1, Data::U8(vec![4, 2, 4]));
}

#[test]
fn qlinear_conv_with_bias_and_per_channel_scales() {
    let x: Vec<u8> = (0..36).map(|v| v * 7).collect();
    let w = [1, -2, 3, 4, 0, 5, -6, 7, 127, -128, 2, 2, 9, 9, 9, -9];
    let ins = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"];
    let n = || node("QLinearConv", &ins, &["y"], vec![a_int("group", 2), a_ints("pads", &[1, 0, 0, 1])]);
    let inits = |ys: f32, yz: TensorProto| {
        vec![
            t_u8("x", &[1, 4, 3, 3], &x),
            t_f32("xs", &[], &[0.02]),
            t_u8("xz", &[], &[3]),
            t_i8("w", &[2, 2, 2, 2], &w),
            t_f32("ws", &[2], &[0.05, 0.003]),
            t_i8("wz", &[2], &[0, 1]),
            t_f32("ys", &[], &[ys]),
            yz,
            t_i32("b", &[2], &[1000, -700]),
        ]
    };
    let (shape, y) = folded_one(10, inits(0.3, t_u8("yz", &[], &[5])), n());
    assert_eq!(shape, vec![1, 2, 3, 3]);
    assert_eq!(y, Data::U8(vec![9, 9, 7, 10, 11, 7, 11, 11, 7, 5, 5, 5, 5, 5, 9, 5, 5, 10]));
    let y = folded_one(10, inits(0.7, t_i8("yz", &[], &[-5])), n()).1;
    assert_eq!(y, Data::I8(vec![-3, -3, -4, -3, -3, -4, -2, -2, -4, -5, -5, -5, -5, -5, -3, -5, -5, -3]));
}

#[test]
fn quantize_to_int4_and_float8() {
    // rint(x / 2) clipped to int4's [-8, 7]: 0.5 → 0 (tie to even), 10 → 7, -10 → -8.
    let inits = vec![t_f32("x", &[3], &[1.0, 20.0, -20.0]), t_f32("s", &[], &[2.0])];
    let n = node("QuantizeLinear", &["x", "s"], &["y"], vec![a_int("output_dtype", DataType::Int4 as i64)]);
    let y = folded_one(21, inits, n).1;
    assert_eq!(y.dtype(), kiln_ir::DType::I4);
    assert_eq!(y.to_i64_vec(), vec![0, 7, -8]);
    // Float8 E4M3FN saturates to its largest finite value, 448.
    let inits = vec![t_f32("x", &[2], &[1000.0, 1.5]), t_f32("s", &[], &[1.0])];
    let n = node("QuantizeLinear", &["x", "s"], &["y"], vec![a_int("output_dtype", DataType::Float8e4m3fn as i64)]);
    assert_eq!(folded_one(21, inits, n).1.to_f64_vec(), vec![448.0, 1.5]);
    // And back: int4 values 7 and -8 at scale 0.5.
    let inits = vec![t_raw("q", &[2], DataType::Int4, vec![0x87]), t_f32("s", &[], &[0.5])];
    let n = node("DequantizeLinear", &["q", "s"], &["y"], vec![]);
    assert_eq!(folded_one(21, inits, n).1, Data::F32(vec![3.5, -4.0]));
}

/// A QuantizeLinear followed by a DequantizeLinear of its result (a QDQ model's pair) imports
/// as float arithmetic on the rounded quotient, no integer steps left, with the pair's values
/// (hand-derived: scale 0.5, zero point 10, u8): x/s = -20, -0.5, 0.5, 1.5, 2.5, 400, 6.6
/// rounds (ties to even) to -20, -0, 0, 2, 2, 400, 7; plus 10 and saturated to [0, 255]:
/// 0, 10, 10, 12, 12, 255, 17; minus 10, times 0.5: -5, 0, 0, 1, 1, 122.5, 3.5.
#[test]
fn a_quantize_dequantize_pair_is_float_arithmetic() {
    let g = Model::new(19)
        .input(vis("x", DataType::Float, &[7]))
        .init(t_f32("s", &[], &[0.5]))
        .init(t_u8("z", &[], &[10]))
        .node(node("QuantizeLinear", &["x", "s", "z"], &["q"], vec![]))
        .node(node("DequantizeLinear", &["q", "s", "z"], &["y"], vec![]))
        .output("y")
        .import()
        .unwrap();
    // Every value y is computed from is f32 (the u8 value and its i32 steps are not read).
    let mut todo = vec![g.outputs[0]];
    while let Some(v) = todo.pop() {
        assert_eq!(g.ty(v).dtype, kiln_ir::DType::F32, "{} in {:?}", g.value(v).name, ops(&g));
        if let kiln_ir::ValueDef::Node(n, _) = g.value(v).def {
            todo.extend(g.node(n).inputs.iter().copied());
        }
    }
    let x = kiln_ir::Tensor::f32(vec![7], vec![-10.0, -0.25, 0.25, 0.75, 1.25, 200.0, 3.3]);
    let got = run(&g, &[("x", x)]).remove(0);
    assert_eq!(got.data(), Data::F32(vec![-5.0, 0.0, 0.0, 1.0, 1.0, 122.5, 3.5]));
}
