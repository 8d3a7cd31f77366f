//! Pass tests as text: HIR text in → one pass (or lowering) → snapshot of the text out.

use kiln_ir::text::{parse, print};
use kiln_passes::{fuse, memory, simplify};

fn run(src: &str, pass: kiln_passes::pipeline::HirPass) -> String {
    let mut g = parse(src).unwrap_or_else(|e| panic!("parse: {e}"));
    pass(&mut g).unwrap();
    kiln_ir::verify::verify(&g).unwrap();
    print(&g)
}

#[test]
fn shape_arithmetic_folds_to_constants() {
    let src = r#"graph "fold" {
  input %0 "x": f32[2,3]
  const %1 "a": i64[2] = [2, 3]
  const %2 "b": i64[2] = [3, 2]
  %3 "prod": i64[2] = mul(%1, %2)
  %4 "y": f32[2,3] = relu(%0)
  output %3
  output %4
}"#;
    insta::assert_snapshot!(run(src, simplify::fold_constants));
}

#[test]
fn dead_code_is_removed() {
    let src = r#"graph "dce" {
  input %0 "x": f32[4]
  %1 "unused": f32[4] = exp(%0)
  %2 "y": f32[4] = relu(%0)
  output %2
}"#;
    insta::assert_snapshot!(run(src, simplify::dce));
}

#[test]
fn common_subexpressions_merge() {
    let src = r#"graph "cse" {
  input %0 "x": f32[4]
  %1 "a": f32[4] = exp(%0)
  %2 "b": f32[4] = exp(%0)
  %3 "y": f32[4] = add(%1, %2)
  output %3
}"#;
    insta::assert_snapshot!(run(src, simplify::cse));
}

#[test]
fn batchnorm_folds_into_conv() {
    let src = r#"graph "bn" {
  input %0 "x": f32[1,2,3,3]
  const %1 "w": f32[2,2,1,1] = [1.0, 2.0, 3.0, 4.0]
  const %2 "scale": f32[2] = [2.0, 0.5]
  const %3 "shift": f32[2] = [1.0, -1.0]
  const %4 "mean": f32[2] = [0.5, 1.5]
  const %5 "var": f32[2] = [3.0, 0.0]
  %6 "c": f32[1,2,3,3] = conv(%0, %1) {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1}
  %7 "y": f32[1,2,3,3] = batch_norm(%6, %2, %3, %4, %5) {epsilon=1.0}
  output %7
}"#;
    insta::assert_snapshot!(run(src, simplify::fold_batchnorm));
}

#[test]
fn epilogues_and_elementwise_chains_fuse() {
    let src = r#"graph "fuse" {
  input %0 "x": f32[1,2,4,4]
  const %1 "w": f32[2,2,1,1] = [1.0, 2.0, 3.0, 4.0]
  const %2 "b": f32[1,2,1,1] = [0.5, -0.5]
  %3 "c": f32[1,2,4,4] = conv(%0, %1) {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1}
  %4 "cb": f32[1,2,4,4] = add(%3, %2)
  %5 "r": f32[1,2,4,4] = relu(%4)
  %6 "e": f32[1,2,4,4] = exp(%0)
  %7 "s": f32[1,2] = reduce_sum(%6) {axes=[2,3], keepdims=false}
  output %5
  output %7
}"#;
    let out = run(src, fuse::fuse);
    insta::assert_snapshot!(out);
}

/// A product's value that a GELU reads twice fuses into the GELU's kernel (both reads end in
/// one kernel); one read by two ops that end in separate outputs stays materialized.
#[test]
fn a_product_read_twice_by_one_fused_kernel_fuses() {
    let src = r#"graph "gelu" {
  input %0 "x": f32[2,3]
  const %1 "w": f32[3,4] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
  const %2 "b": f32[4] = [0.5, -0.5, 1.0, -1.0]
  const %3 "s2": f32[] = [1.4142135]
  const %4 "one": f32[] = [1.0]
  const %5 "half": f32[] = [0.5]
  %6 "mm": f32[2,4] = matmul(%0, %1)
  %7 "h": f32[2,4] = add(%6, %2)
  %8 "t": f32[2,4] = div(%7, %3)
  %9 "e": f32[2,4] = erf(%8)
  %10 "a": f32[2,4] = add(%9, %4)
  %11 "m": f32[2,4] = mul(%7, %10)
  %12 "y": f32[2,4] = mul(%11, %5)
  %13 "p": f32[2,4] = matmul(%0, %1)
  %14 "q": f32[2,4] = relu(%13)
  %15 "r": f32[2,4] = exp(%13)
  output %12
  output %14
  output %15
}"#;
    let out = run(src, fuse::fuse);
    for fused in ["mm", "h", "t", "e", "a", "m"] {
        assert!(out.contains(&format!("\"{fused}\": f32[2,4] fused")), "{fused} should fuse:\n{out}");
    }
    assert!(out.contains("\"p\": f32[2,4] = matmul"), "p feeds two kernels and stays:\n{out}");
}

/// A product's epilogue ends in f32, a shared one (the GELU) included: a product whose
/// GELU ends in a quantize step's integer tail (rounding to i16 for the next integer product)
/// stays a kernel of its own, the GEMM's (which writes f32 or i32).
#[test]
fn a_products_epilogue_stops_before_an_integer_tail() {
    let src = r#"graph "gelu_q" {
  input %0 "x": f32[2,3]
  const %1 "w": f32[3,4] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
  const %2 "s2": f32[] = [1.4142135]
  const %3 "one": f32[] = [1.0]
  %4 "mm": f32[2,4] = matmul(%0, %1)
  %5 "t": f32[2,4] = div(%4, %2)
  %6 "e": f32[2,4] = erf(%5)
  %7 "a": f32[2,4] = add(%6, %3)
  %8 "m": f32[2,4] = mul(%4, %7)
  %9 "r": f32[2,4] = round(%8)
  %10 "q": i16[2,4] = cast(%9) {to=i16}
  output %10
}"#;
    let out = run(src, fuse::fuse);
    // The GELU and the rounding fuse into the cast's kernel; the product, read twice by it,
    // does not join it (its kernel would end in i16).
    for fused in ["t", "e", "a", "m", "r"] {
        assert!(out.contains(&format!("\"{fused}\": f32[2,4] fused")), "{fused} should fuse:\n{out}");
    }
    assert!(out.contains("\"mm\": f32[2,4] = matmul"), "the product stays a kernel of its own:\n{out}");
}

/// A reshape that adds a leading 1 between a product and an elementwise region with scalar
/// operands (GPT-2's `addmm` → `view` → GELU) moves past the region; the reshape back to
/// the product's shape that follows then goes away, and an outside use keeps its shape.
#[test]
fn reshapes_sink_past_elementwise_regions() {
    let src = r#"graph "sink" {
  input %0 "x": f32[2,3]
  const %1 "w": f32[3,4] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
  const %2 "b": f32[4] = [0.5, -0.5, 1.0, -1.0]
  const %3 "half": f32[] = [0.5]
  %4 "mm": f32[2,4] = gemm(%0, %1, %2) {alpha=1.0, beta=1.0, trans_a=false, trans_b=false}
  %5 "v": f32[1,2,4] = reshape(%4) {shape=[1,2,4]}
  %6 "t": f32[1,2,4] = tanh(%5)
  %7 "m": f32[1,2,4] = mul(%6, %3)
  %8 "y": f32[1,2,4] = mul(%5, %7)
  %9 "back": f32[2,4] = reshape(%8) {shape=[2,4]}
  %10 "z": f32[2,4] = relu(%9)
  output %10
  output %7
}"#;
    let out = run(src, simplify::sink_reshapes);
    assert!(out.contains("\"t\": f32[2,4] = tanh(%4)"), "tanh reads the product:\n{out}");
    assert!(out.contains("\"y\": f32[2,4] = mul(%4,"), "the region runs on the product's shape:\n{out}");
    let id_of = |name: &str| {
        let line = out.lines().find(|l| l.contains(&format!("\"{name}\": "))).expect("value in the text");
        line.trim().split(' ').next().expect("an id").to_string()
    };
    assert!(out.contains(&format!("= relu({})", id_of("y"))), "the reshape back is gone:\n{out}");
    assert!(out.contains("\"m\": f32[1,2,4] = reshape("), "the graph output keeps its shape and name:\n{out}");
    assert!(out.contains("\"m.flat\": f32[2,4] = mul("), "the region's value is renamed:\n{out}");
}

#[test]
fn lowering_and_memory_plan() {
    let src = r#"graph "lower" {
  input %0 "x": f32[2,8]
  %1 "a": f32[2,8] = exp(%0)
  %2 "b": f32[2,8] = neg(%1)
  %3 "c": f32[16] = reshape(%2) {shape=[16]}
  %4 "d": f32[16] = abs(%3)
  %5 "y": f32[1] = reduce_sum(%4) {axes=[0], keepdims=true}
  output %5
}"#;
    let g = parse(src).unwrap();
    let mut p = kiln_passes::lower::lower(&g).unwrap();
    let report = memory::plan(&mut p);
    p.remove_unused_buffers();
    assert!(report.in_place >= 1, "neg and abs can overwrite their dying inputs");
    assert_eq!(report.arena_bytes, report.lower_bound);
    insta::assert_snapshot!(kiln_ir::lir::print(&p));
}
