//! Integer products read their operands narrow.
//!
//! An i32 MatMul whose operands are 8-bit integers shifted by their zero points (what
//! MatMulInteger, QLinearMatMul and the integer half of a dynamically quantized model import
//! as: `Cast(i32, x) - zero_point`) computes exactly from i16 operands. [`narrow_int_products`]
//! gives such a product `MatMul(Cast(i32, Cast(i16, a)), B)` when B is a constant whose values
//! fit i16 and `a`'s range, followed through casts, shifts and constants, does too: the i16
//! value is what A's producer writes ([`crate::fuse`] keeps it materialized and fuses the
//! widening into the product), and a backend multiplies pairs of i16 into i32 sums
//! (`vpmaddwd`) instead of running an i32 reduction. The graph computes the same values.

use kiln_ir::{BinaryOp, DType, Data, Graph, Op, ReduceOp, Tensor, UnaryOp, ValueDef, ValueId};

use crate::PassError;

/// The least and greatest value `v` can take, where its producers bound it: integer constants,
/// widening casts of integers, sums and differences of bounded values.
pub fn int_bounds(g: &Graph, v: ValueId) -> Option<(i64, i64)> {
    let ty = g.ty(v);
    if let Some(t) = g.const_of(v) {
        if !ty.dtype.is_int() || t.numel() == 0 {
            return None;
        }
        let xs = t.to_i64_vec();
        return Some((*xs.iter().min()?, *xs.iter().max()?));
    }
    let ValueDef::Node(n, _) = g.value(v).def else { return dtype_bounds(ty.dtype) };
    let node = g.node(n);
    match node.op {
        Op::Cast { to, .. } => {
            let from = g.ty(node.inputs[0]).dtype;
            let inner = int_bounds(g, node.inputs[0]).or_else(|| dtype_bounds(from))?;
            let (lo, hi) = dtype_bounds(to)?;
            (inner.0 >= lo && inner.1 <= hi).then_some(inner)
        }
        Op::Binary(op @ (BinaryOp::Add | BinaryOp::Sub)) => {
            let (a, b) = (int_bounds(g, node.inputs[0])?, int_bounds(g, node.inputs[1])?);
            let r = if op == BinaryOp::Add {
                (a.0.checked_add(b.0)?, a.1.checked_add(b.1)?)
            } else {
                (a.0.checked_sub(b.1)?, a.1.checked_sub(b.0)?)
            };
            let (lo, hi) = dtype_bounds(ty.dtype)?;
            (r.0 >= lo && r.1 <= hi).then_some(r)
        }
        _ => dtype_bounds(ty.dtype).filter(|_| ty.dtype.size() <= 2),
    }
}

/// The range of an integer type of at most 32 bits.
fn dtype_bounds(d: DType) -> Option<(i64, i64)> {
    Some(match d {
        DType::U8 => (0, u8::MAX as i64),
        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
        DType::U16 => (0, u16::MAX as i64),
        DType::I16 => (i16::MIN as i64, i16::MAX as i64),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        _ => return None,
    })
}

fn fits_i16(b: Option<(i64, i64)>) -> bool {
    b.is_some_and(|(lo, hi)| lo >= i16::MIN as i64 && hi <= i16::MAX as i64)
}

/// Whether `v` is an i32 value read as i16 widened: `Cast(i32, x)` of an i16 `x`.
pub fn widened_i16(g: &Graph, v: ValueId) -> bool {
    let ValueDef::Node(n, _) = g.value(v).def else { return false };
    let node = g.node(n);
    matches!(node.op, Op::Cast { to: DType::I32, .. }) && g.ty(node.inputs[0]).dtype == DType::I16
}

/// Whether node `n` is an i32 matrix product (both operands at least 2-D).
pub fn int_product(g: &Graph, n: &kiln_ir::Node) -> bool {
    matches!(n.op, Op::MatMul)
        && g.ty(n.outputs[0]).dtype == DType::I32
        && n.inputs.iter().all(|&v| g.ty(v).rank() >= 2)
}

/// Narrows the variable operand of every i32 product with a constant B to i16 where both
/// fit (see the module doc). Returns whether the graph changed.
pub fn narrow_int_products(g: &mut Graph) -> Result<bool, PassError> {
    let mut changed = false;
    let mut narrowed: std::collections::HashMap<ValueId, ValueId> = Default::default();
    for nid in g.order().to_vec() {
        let node = g.node(nid).clone();
        if !int_product(g, &node) {
            continue;
        }
        let (a, b) = (node.inputs[0], node.inputs[1]);
        if g.const_of(a).is_some() || g.const_of(b).is_none() || widened_i16(g, a) {
            continue;
        }
        if !fits_i16(int_bounds(g, a)) || !fits_i16(int_bounds(g, b)) {
            continue;
        }
        let name = g.value(a).name.clone();
        g.guard = node.guard.clone();
        // The casts are the product's: named after its node (their kernels' origin).
        let add = |g: &mut Graph, to: DType, x: ValueId, tag: &str| {
            g.add_node(Op::cast(to), &[x], format!("{}/{tag}", node.name), &[format!("{name}.{tag}")])
                .map(|v| v[0])
                .map_err(|e| PassError::Failed { pass: "narrow-int-products".into(), message: e.to_string() })
        };
        // One i16 value per operand (the query, key and value products of a layer read the
        // same activation), one widening per product (each fuses into its product).
        let narrow = match narrowed.get(&a) {
            Some(&n) => Ok(n),
            None => add(g, DType::I16, a, "i16"),
        };
        let wide = narrow.and_then(|n| add(g, DType::I32, n, "widened").map(|w| (n, w)));
        g.guard.clear();
        let (narrow, wide) = wide?;
        let fresh = narrowed.insert(a, narrow).is_none();
        // The casts go right before the product.
        let new = if fresh { vec![narrow, wide] } else { vec![wide] };
        schedule_before(g, nid, &new);
        g.node_mut(nid).inputs[0] = wide;
        changed = true;
    }
    Ok(changed)
}

/// Moves the producers of `values` (just added, at the end of the schedule) right before node
/// `before`, in the order given.
fn schedule_before(g: &mut Graph, before: kiln_ir::NodeId, values: &[ValueId]) {
    let new: Vec<kiln_ir::NodeId> = values
        .iter()
        .map(|&v| match g.value(v).def {
            ValueDef::Node(n, _) => n,
            _ => unreachable!("a node's result"),
        })
        .collect();
    let mut order: Vec<kiln_ir::NodeId> = g.order().iter().copied().filter(|m| !new.contains(m)).collect();
    let at = order.iter().position(|&m| m == before).expect("scheduled");
    order.splice(at..at, new);
    g.set_order(order);
}

/// The nodes a pass puts in place of node `at`'s result: added under its guard, named after
/// it, scheduled right before it ([`Replacement::finish`]).
struct Replacement {
    pass: &'static str,
    at: kiln_ir::NodeId,
    /// The replaced node's name and its result's.
    name: (String, String),
    added: Vec<ValueId>,
}

impl Replacement {
    fn new(g: &mut Graph, pass: &'static str, at: kiln_ir::NodeId) -> Replacement {
        let node = g.node(at);
        let name = (node.name.clone(), g.value(node.outputs[0]).name.clone());
        g.guard = node.guard.clone();
        Replacement { pass, at, name, added: Vec::new() }
    }

    /// `Cast(i16, Clip(a))`, the clip to `a`'s integral bounds (proven: it changes no value),
    /// so that the conversion vectorizes (the backend converts a clipped float through i32).
    fn narrowed_i16(&mut self, g: &mut Graph, a: ValueId, (lo, hi): (f64, f64)) -> Result<ValueId, PassError> {
        let clipped = self.node(g, Op::Unary(UnaryOp::Clip { lo, hi }), &[a], "bounded")?;
        self.node(g, Op::cast(DType::I16), &[clipped], "i16")
    }

    /// Adds `op` over `ins`: the node named `<node>/<tag>` after the node it replaces (so that
    /// its kernels name that node as their origin), its result `<result>.<tag>`.
    fn node(&mut self, g: &mut Graph, op: Op, ins: &[ValueId], tag: &str) -> Result<ValueId, PassError> {
        let (node, result) = &self.name;
        let v = g
            .add_node(op, ins, format!("{node}/{tag}"), &[format!("{result}.{tag}")])
            .map_err(|e| PassError::Failed { pass: self.pass.into(), message: e.to_string() })?[0];
        self.added.push(v);
        Ok(v)
    }

    /// Adds a constant named `<result>.<tag>`.
    fn constant(&self, g: &mut Graph, tag: &str, t: Tensor) -> ValueId {
        g.add_const(format!("{}.{tag}", self.name.1), t)
    }

    /// Ends the replacement: with `new` (built, or an error), the node's result is read as
    /// `new` (a graph output keeping its name); the added nodes run right before the node,
    /// which the pipeline's step then removes with the other dead code.
    fn finish(self, g: &mut Graph, new: Result<ValueId, PassError>) -> Result<(), PassError> {
        g.guard.clear();
        let new = new?;
        schedule_before(g, self.at, &self.added);
        let old = g.node(self.at).outputs[0];
        if g.outputs.contains(&old) {
            g.value_mut(new).name = g.value(old).name.clone();
        }
        g.replace_uses(old, new);
        Ok(())
    }
}

/// The least and greatest value of an f32 value `v` that holds only integers (rounded and
/// clipped quotients, shifted by integer constants: a dequantized value's integer part, as
/// the importer builds a QDQ pair), within ±2^24 so that f32 holds them exactly; a rounded
/// value without bounds of its own is integral and unbounded (a Clip then bounds it).
pub fn integral_bounds(g: &Graph, v: ValueId) -> Option<(f64, f64)> {
    const EXACT: f64 = (1 << 24) as f64;
    let finite = |(lo, hi): (f64, f64)| (lo >= -EXACT && hi <= EXACT).then_some((lo, hi));
    if let Some(t) = g.const_of(v) {
        let xs = t.to_f64_vec();
        if xs.is_empty() || xs.iter().any(|x| x.fract() != 0.0) {
            return None;
        }
        return finite(xs.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x))));
    }
    let ValueDef::Node(n, _) = g.value(v).def else { return None };
    let node = g.node(n);
    let unbounded = (f64::NEG_INFINITY, f64::INFINITY);
    match node.op {
        Op::Unary(UnaryOp::Round | UnaryOp::Floor | UnaryOp::Ceil) if g.ty(v).dtype.is_float() => {
            Some(integral_bounds(g, node.inputs[0]).unwrap_or(unbounded))
        }
        Op::Unary(UnaryOp::Clip { lo, hi }) if lo.fract() == 0.0 && hi.fract() == 0.0 => {
            let (a, b) = integral_bounds(g, node.inputs[0])?;
            finite((a.max(lo), b.min(hi)))
        }
        Op::Binary(op @ (BinaryOp::Add | BinaryOp::Sub)) => {
            let (a, b) = (integral_bounds(g, node.inputs[0])?, integral_bounds(g, node.inputs[1])?);
            finite(if op == BinaryOp::Add { (a.0 + b.0, a.1 + b.1) } else { (a.0 - b.1, a.1 - b.0) })
        }
        Op::Cast { to: DType::F32, .. } => {
            int_bounds(g, node.inputs[0]).and_then(|(lo, hi)| finite((lo as f64, hi as f64)))
        }
        _ => None,
    }
}

/// `x = a·s` with `s` a positive scalar constant and `a` (of x's shape) integers within i16
/// ([`integral_bounds`]): a dequantized activation, as the importer builds a QDQ pair. Returns
/// `a`, `s` and `a`'s bounds.
fn dequantized(g: &Graph, x: ValueId) -> Option<(ValueId, f32, (f64, f64))> {
    if g.ty(x).dtype != DType::F32 {
        return None;
    }
    let ValueDef::Node(xn, _) = g.value(x).def else { return None };
    let xn = g.node(xn);
    if xn.op != Op::Binary(BinaryOp::Mul) {
        return None;
    }
    let scalar = |v: ValueId| g.const_of(v).filter(|t| t.numel() == 1).map(|t| t.to_f64_vec()[0] as f32);
    let (a, s) = match (scalar(xn.inputs[0]), scalar(xn.inputs[1])) {
        (_, Some(s)) => (xn.inputs[0], s),
        (Some(s), _) => (xn.inputs[1], s),
        _ => return None,
    };
    let bounds = integral_bounds(g, a)?;
    let ok =
        !s.is_nan() && s > 0.0 && g.ty(a).shape == g.ty(x).shape && fits_i16(Some((bounds.0 as i64, bounds.1 as i64)));
    ok.then_some((a, s, bounds))
}

/// A quantized model's matrix product as an integer one: `MatMul(a·s, w)` or `Gemm(a·s, w,
/// c)` (alpha 1, A not transposed, `c` a constant added with beta 1) where `a` is a
/// dequantized activation ([`dequantized`]) and `w` constant weights whose columns (outputs)
/// are integer multiples of a per-column scale becomes `Cast(f32, MatMul(Cast(i32, Cast(i16,
/// a)), q))·(s·sw) [+ c]`: the integer GEMM's product ([`narrow_int_products`]'s form). The
/// static QDQ form of a transformer's linear layers (and a classifier's last layer).
/// Returns whether the graph changed.
pub fn integer_matmuls(g: &mut Graph) -> Result<bool, PassError> {
    let mut changed = false;
    for nid in g.order().to_vec() {
        let node = g.node(nid).clone();
        let (trans_b, bias) = match (&node.op, &node.inputs[..]) {
            (Op::MatMul, [_, _]) => (false, None),
            (Op::Gemm { alpha, beta, trans_a: false, trans_b }, [_, _, rest @ ..]) if *alpha == 1.0 => match rest {
                [] => (*trans_b, None),
                [c] if *beta == 1.0 && g.const_of(*c).is_some() => (*trans_b, Some(*c)),
                _ => continue,
            },
            _ => continue,
        };
        let (x, w) = (node.inputs[0], node.inputs[1]);
        let (xt, wt) = (g.ty(x).clone(), g.ty(w).clone());
        if xt.rank() < 2 || wt.rank() != 2 || wt.dtype != DType::F32 || g.ty(node.outputs[0]).dtype != DType::F32 {
            continue;
        }
        let Some((a, s, bounds)) = dequantized(g, x) else { continue };
        let Some(wc) = g.const_of(w) else { continue };
        // The weights as [N, K] (a row per output) for the per-output scales.
        let (k, n) = if trans_b { (wt.shape[1], wt.shape[0]) } else { (wt.shape[0], wt.shape[1]) };
        let wv = wc.to_f64_vec();
        let rows: Vec<f64> = if trans_b { wv } else { (0..n * k).map(|i| wv[(i % k) * n + i / k]).collect() };
        let Some((q, sw)) = integer_weights(&Tensor::from_data(vec![n, k], Data::F64(rows))) else { continue };
        // q as [K, N] i32.
        let qkn: Vec<i32> = (0..k * n).map(|i| i32::from(q[(i % n) * k + i / n])).collect();
        let mut r = Replacement::new(g, "int-qdq", nid);
        let built = (|| {
            let qb = r.constant(g, "int_weights", Tensor::from_data(vec![k, n], Data::I32(qkn)));
            let scales: Vec<f32> = sw.iter().map(|&c| s * c).collect();
            let sc = r.constant(g, "int_scales", Tensor::from_data(vec![n], Data::F32(scales)));
            let a16 = r.narrowed_i16(g, a, bounds)?;
            let a32 = r.node(g, Op::cast(DType::I32), &[a16], "widened")?;
            let yi = r.node(g, Op::MatMul, &[a32, qb], "int_product")?;
            let yf = r.node(g, Op::cast(DType::F32), &[yi], "sums")?;
            let y = r.node(g, Op::Binary(BinaryOp::Mul), &[yf, sc], "dequantized")?;
            match bias {
                Some(c) => r.node(g, Op::Binary(BinaryOp::Add), &[y, c], "biased"),
                None => Ok(y),
            }
        })();
        r.finish(g, built)?;
        changed = true;
    }
    Ok(changed)
}

/// Per output channel, `w = q·sw` with `q` integers in [-127, 127] and `sw = max|w| / 127`
/// (1 for a zero channel), if the f32 weights `w` (`[O, …]`) are such multiples (to 1e-3 of a
/// step): a quantized model's dequantized weights. Returns `(q, sw)`.
fn integer_weights(w: &Tensor) -> Option<(Vec<i16>, Vec<f32>)> {
    let o = *w.shape().first()?;
    let xs = w.to_f64_vec();
    let per = xs.len() / o.max(1);
    let mut q = Vec::with_capacity(xs.len());
    let mut scales = Vec::with_capacity(o);
    for c in xs.chunks(per.max(1)) {
        let m = c.iter().fold(0f64, |m, x| m.max(x.abs())) as f32;
        let sw = if m > 0.0 { m / Q8 } else { 1.0 };
        for &x in c {
            let r = x / f64::from(sw);
            if (r - r.round()).abs() > 1e-3 || r.abs() > f64::from(Q8) + 1e-3 {
                return None;
            }
            q.push(r.round() as i16);
        }
        scales.push(sw);
    }
    Some((q, scales))
}

/// A quantized model's convolution as an integer one: `Conv(a·s, w, b)` where `a` holds
/// integers within i16 ([`integral_bounds`]: a dequantized activation, `s` its scalar scale)
/// and `w` constant weights that are integer multiples of a per-channel scale
/// ([`integer_weights`]) becomes `Cast(f32, Conv(Cast(i16, a), q))·(s·sw) + b`: exact i32
/// sums on the integer GEMM, the scales and bias in the f32 epilogue. Only ungrouped 2-D
/// convolutions whose input channels are even or whose window is one tap (the integer
/// GEMM's pairs of K must not straddle taps), and not the 3×3 ones of stride 1 that the
/// Winograd schedule takes; the others stay f32. Returns whether the graph changed.
pub fn integer_convolutions(g: &mut Graph) -> Result<bool, PassError> {
    let mut changed = false;
    for nid in g.order().to_vec() {
        let node = g.node(nid).clone();
        let Op::Conv { window, group: 1 } = &node.op else { continue };
        let (x, w) = (node.inputs[0], node.inputs[1]);
        let wt = g.ty(w).clone();
        if wt.rank() != 4 || !(wt.shape[1].is_multiple_of(2) || wt.shape[2] * wt.shape[3] == 1) {
            continue;
        }
        // A 3×3 convolution of stride 1 that Winograd takes stays f32: that schedule does a
        // quarter of the multiplies, more than the integer GEMM's rate gains (`vpmaddwd`: 1.8×
        // the f32 FMA rate on Zen 3; ResNet-50 QDQ 64-67 ms with them in f32, 69-76 ms as
        // integers). One too small for Winograd (ResNet-50's 7×7 stage) is an integer one.
        if crate::lower::winograd::takes(g, &node) {
            continue;
        }
        let Some((a, s, bounds)) = dequantized(g, x) else { continue };
        let Some((q, sw)) = g.const_of(w).and_then(integer_weights) else { continue };
        let bias = match node.inputs.get(2) {
            Some(&b) => match g.const_of(b) {
                Some(t) if t.dtype() == DType::F32 => Some(t.to_f64_vec()),
                _ => continue,
            },
            None => None,
        };
        let o = wt.shape[0];
        let window = window.clone();
        let mut r = Replacement::new(g, "int-qdq", nid);
        let built = (|| {
            let wq = r.constant(g, "int_weights", Tensor::from_data(wt.shape.clone(), Data::I16(q)));
            let scales: Vec<f32> = sw.iter().map(|&c| s * c).collect();
            let sc = r.constant(g, "int_scales", Tensor::from_data(vec![o, 1, 1], Data::F32(scales)));
            let a16 = r.narrowed_i16(g, a, bounds)?;
            let yi = r.node(g, Op::Conv { window, group: 1 }, &[a16, wq], "int_conv")?;
            let yf = r.node(g, Op::cast(DType::F32), &[yi], "sums")?;
            let y = r.node(g, Op::Binary(BinaryOp::Mul), &[yf, sc], "dequantized")?;
            match bias {
                Some(b) => {
                    let bv: Vec<f32> = b.iter().map(|&v| v as f32).collect();
                    let bc = r.constant(g, "bias", Tensor::from_data(vec![o, 1, 1], Data::F32(bv)));
                    r.node(g, Op::Binary(BinaryOp::Add), &[y, bc], "biased")
                }
                None => Ok(y),
            }
        })();
        r.finish(g, built)?;
        changed = true;
    }
    Ok(changed)
}

/// The largest magnitude of the 8-bit quantized operands of [`quantize_products`].
const Q8: f32 = 127.0;

/// `--precision int8`: every f32 matrix product with a constant 2-D B becomes an integer
/// product, quantized dynamically and symmetrically: B per
/// column at compile time (`sw[n] = max_k |B[k, n]| / 127`, `q = rint(B / sw)`), A per row
/// at run time (`sx = max_k |A[.., k]| / 127`, `a = rint(A / sx)`, both in [-127, 127]), and
/// `Y = (a @ q) · sx · sw` (the i32 sums exact; the error is the operands' rounding, at most
/// half a step of each). A's quantization is a row reduction and an elementwise kernel
/// writing i16; the product is [`narrow_int_products`]'s form. Other products and every
/// other op stay f32. Returns whether the graph changed.
pub fn quantize_products(g: &mut Graph) -> Result<bool, PassError> {
    let mut changed = false;
    for nid in g.order().to_vec() {
        let node = g.node(nid).clone();
        let (a, b) = match node.inputs[..] {
            [a, b] if node.op == Op::MatMul => (a, b),
            _ => continue,
        };
        let (ta, tb) = (g.ty(a).clone(), g.ty(b).clone());
        let Some(w) = g.const_of(b).filter(|_| g.const_of(a).is_none()) else { continue };
        if ta.dtype != DType::F32 || tb.dtype != DType::F32 || ta.rank() < 2 || tb.rank() != 2 {
            continue;
        }
        let (k, n) = (tb.shape[0], tb.shape[1]);
        // B per column.
        let wv = w.to_f64_vec();
        let mut sw = vec![0f32; n];
        for (i, &x) in wv.iter().enumerate() {
            sw[i % n] = sw[i % n].max((x as f32).abs());
        }
        let sw: Vec<f32> = sw.iter().map(|&m| if m > 0.0 { m / Q8 } else { 1.0 }).collect();
        let q: Vec<i32> =
            wv.iter().enumerate().map(|(i, &x)| ((x as f32) / sw[i % n]).round_ties_even() as i32).collect();
        let mut r = Replacement::new(g, "quantize-products", nid);
        let built = (|| {
            let qb = r.constant(g, "q8_weights", Tensor::from_data(vec![k, n], Data::I32(q)));
            let swc = r.constant(g, "q8_scales", Tensor::from_data(vec![n], Data::F32(sw)));
            let tiny = r.constant(g, "q8_tiny", Tensor::from_data(vec![], Data::F32(vec![f32::MIN_POSITIVE])));
            let q8 = r.constant(g, "q8_range", Tensor::from_data(vec![], Data::F32(vec![Q8])));
            // A per row: its scale, and the rounded quotient as i16.
            let abs = r.node(g, Op::Unary(UnaryOp::Abs), &[a], "abs")?;
            let last = ta.rank() - 1;
            let amax =
                r.node(g, Op::Reduce { op: ReduceOp::Max, axes: vec![last], keepdims: true }, &[abs], "absmax")?;
            let amax = r.node(g, Op::Binary(BinaryOp::Max), &[amax, tiny], "absmax_pos")?;
            let sx = r.node(g, Op::Binary(BinaryOp::Div), &[amax, q8], "row_scale")?;
            let quot = r.node(g, Op::Binary(BinaryOp::Div), &[a, sx], "quotient")?;
            let rounded = r.node(g, Op::Unary(UnaryOp::Round), &[quot], "rounded")?;
            let a16 = r.narrowed_i16(g, rounded, (-127.0, 127.0))?;
            let a32 = r.node(g, Op::cast(DType::I32), &[a16], "widened")?;
            let prod = r.node(g, Op::MatMul, &[a32, qb], "int_product")?;
            let yf = r.node(g, Op::cast(DType::F32), &[prod], "sums")?;
            let y = r.node(g, Op::Binary(BinaryOp::Mul), &[yf, sx], "row_scaled")?;
            r.node(g, Op::Binary(BinaryOp::Mul), &[y, swc], "dequantized")
        })();
        r.finish(g, built)?;
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::TensorType;

    /// `MatMul(Cast(i32, x) - zp, w)` for a u8 input and i32 weights.
    fn graph(weights: Vec<i32>) -> (Graph, ValueId) {
        let mut g = Graph::new("q");
        let x = g.add_input("x", TensorType::new(DType::U8, vec![3, 4]));
        let zp = g.add_const("zp", Tensor::from_data(vec![], Data::I32(vec![128])));
        let w = g.add_const("w", Tensor::from_data(vec![4, 2], Data::I32(weights)));
        let xi = g.add_node(Op::cast(DType::I32), &[x], "c", &["xi".into()]).unwrap()[0];
        let xs = g.add_node(Op::Binary(BinaryOp::Sub), &[xi, zp], "s", &["xs".into()]).unwrap()[0];
        let y = g.add_node(Op::MatMul, &[xs, w], "m", &["y".into()]).unwrap()[0];
        g.outputs.push(y);
        (g, y)
    }

    #[test]
    fn a_shifted_u8_operand_is_read_as_i16() {
        let (mut g, y) = graph(vec![-128, 127, 0, 5, 1, 2, 3, 4]);
        assert!(narrow_int_products(&mut g).unwrap());
        let ValueDef::Node(m, _) = g.value(y).def else { panic!() };
        let a = g.node(m).inputs[0];
        assert!(widened_i16(&g, a));
        assert_eq!(int_bounds(&g, a), Some((-128, 127)));
        // Once is enough.
        assert!(!narrow_int_products(&mut g).unwrap());
    }

    #[test]
    fn weights_past_i16_leave_the_product_alone() {
        let (mut g, _) = graph(vec![40000, 0, 0, 0, 0, 0, 0, 0]);
        assert!(!narrow_int_products(&mut g).unwrap());
    }
}
