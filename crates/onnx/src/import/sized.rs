//! Sizes that come from data without a bound of their own (Pad's pads, Range's limits,
//! ConstantOfShape's and Expand's shapes, Tile's repeats, OneHot's depth, CenterCropPad's
//! shape), bounded by the import option `max_elements`: the output is computed flat, at
//! that many elements, each element's coordinates unravelled from its position with the
//! run-time dims (graph ops on a constant position vector), the value gathered from the
//! input at the coordinates it reads. The elements past the run-time count are unused; the
//! output has a run-time shape (`cases::Dyn`), checked against the bound at run time.
//! Without the option these inputs must be constant (`NeedsConstant`, as before).

use kiln_ir::{BinaryOp, CmpOp, DType, Op, ReduceOp, Tensor, UnaryOp, ValueId};

use super::cases::Dyn;
use super::Importer;
use crate::ops::{invalid, unsupported, OpError, OpResult};
use crate::proto::NodeProto;

/// Builds a node's graph ops under names of its own.
struct B<'a> {
    imp: &'a mut Importer,
    node: &'a NodeProto,
    name: &'a str,
    n: usize,
}

impl B<'_> {
    fn tag(&mut self, t: &str) -> String {
        self.n += 1;
        format!("{}/sized/{t}_{}", self.name, self.n)
    }
    fn op(&mut self, op: Op, ins: &[ValueId], t: &str) -> OpResult<ValueId> {
        let vname = self.tag(t);
        self.imp.emit_named(self.node, self.name, op, ins, vname)
    }
    fn bin(&mut self, b: BinaryOp, x: ValueId, y: ValueId) -> OpResult<ValueId> {
        self.op(Op::Binary(b), &[x, y], "t")
    }
    fn cmp(&mut self, c: CmpOp, x: ValueId, y: ValueId) -> OpResult<ValueId> {
        self.op(Op::Compare(c), &[x, y], "c")
    }
    fn select(&mut self, c: ValueId, x: ValueId, y: ValueId) -> OpResult<ValueId> {
        self.op(Op::Where, &[c, x, y], "w")
    }
    fn i64(&mut self, v: i64) -> ValueId {
        let t = self.tag("k");
        self.imp.g.add_const(t, Tensor::i64(vec![], vec![v]))
    }
    fn ty(&self, v: ValueId) -> kiln_ir::TensorType {
        self.imp.g.ty(v).clone()
    }
    /// `v` (an integer or float tensor of `n` elements) as `n` i64 scalars.
    fn scalars(&mut self, v: ValueId) -> OpResult<Vec<ValueId>> {
        let n = self.ty(v).numel();
        let v = if self.ty(v).dtype == DType::I64 { v } else { self.op(Op::cast(DType::I64), &[v], "i64")? };
        let v = self.op(Op::Reshape { shape: vec![n] }, &[v], "flat")?;
        (0..n)
            .map(|d| {
                let s =
                    self.op(Op::Slice { starts: vec![d as i64], steps: vec![1], out_shape: vec![1] }, &[v], "el")?;
                self.op(Op::Reshape { shape: vec![] }, &[s], "scalar")
            })
            .collect()
    }
    /// The run-time dims as one i64 vector.
    fn stack(&mut self, dims: &[ValueId]) -> OpResult<ValueId> {
        if dims.is_empty() {
            let t = self.tag("no_dims");
            return Ok(self.imp.g.add_const(t, Tensor::i64(vec![0], vec![])));
        }
        let parts: Vec<ValueId> =
            dims.iter().map(|&d| self.op(Op::Reshape { shape: vec![1] }, &[d], "dim")).collect::<OpResult<_>>()?;
        self.op(Op::Concat { axis: 0 }, &parts, "dims")
    }
}

impl Importer {
    /// Imports a node whose output size comes from data (see the module docs), if it is one
    /// of those ops and the bound is set; `None` otherwise.
    pub(super) fn sized_from_data(
        &mut self,
        node: &NodeProto,
        name: &str,
        opset: i64,
        inputs: &[Option<ValueId>],
    ) -> Option<OpResult<Vec<ValueId>>> {
        let cap = self.max_elements?;
        let op = node.op_type();
        if !crate::error::SIZED_FROM_DATA.contains(&op) {
            return None;
        }
        let mut b = B { imp: self, node, name, n: 0 };
        let input = |i: usize| inputs.get(i).copied().flatten();
        let r = match op {
            "Range" => range(&mut b, cap, input(0), input(1), input(2)),
            "ConstantOfShape" => constant_of_shape(&mut b, cap, input(0)),
            "Expand" => expand(&mut b, cap, input(0), input(1)),
            "Tile" => tile(&mut b, cap, input(0), input(1)),
            "Pad" => pad(&mut b, cap, opset, inputs),
            "OneHot" => one_hot(&mut b, cap, input(0), input(1), input(2)),
            "Slice" => slice(&mut b, cap, opset, inputs),
            "HannWindow" | "HammingWindow" | "BlackmanWindow" => window(&mut b, cap, input(0)),
            _ => center_crop_pad(&mut b, cap, input(0), input(1)),
        };
        Some(r.map(|v| vec![v]))
    }
}

fn required(v: Option<ValueId>, what: &str) -> OpResult<ValueId> {
    v.ok_or_else(|| OpError::Invalid(format!("input `{what}` is missing")))
}

/// The flat output of run-time `dims`, at `cap` elements: checks them (each at least 0, at
/// most `cap` elements in all), and gives the coordinates of each position (`[cap]` i64
/// each) and the position vector.
fn coordinates(b: &mut B, cap: usize, dims: &[ValueId]) -> OpResult<(Vec<ValueId>, ValueId)> {
    let zero = b.i64(0);
    let mut ok = None;
    for &d in dims {
        let ge = b.cmp(CmpOp::GreaterOrEqual, d, zero)?;
        ok = Some(match ok {
            Some(o) => b.bin(BinaryOp::And, o, ge)?,
            None => ge,
        });
    }
    let all = b.stack(dims)?;
    let count = b.op(Op::Reduce { op: ReduceOp::Prod, axes: vec![0], keepdims: false }, &[all], "count")?;
    let capc = b.i64(cap as i64);
    let fits = b.cmp(CmpOp::LessOrEqual, count, capc)?;
    let ok = match ok {
        Some(o) => b.bin(BinaryOp::And, o, fits)?,
        None => fits,
    };
    let message = format!(
        "node `{}` ({}): the size its inputs give at run time is negative or more than {cap} elements (the bound \
         it was compiled with, --max-elements)",
        b.name,
        b.node.op_type()
    );
    let t = b.tag("positions");
    let pos = b.imp.g.add_const(t, Tensor::i64(vec![cap], (0..cap as i64).collect()));
    let pos = b.op(Op::Assert { message }, &[pos, ok], "checked")?;
    let mut coords = vec![pos; dims.len()];
    let mut rest = pos;
    for d in (0..dims.len()).rev() {
        coords[d] = b.bin(BinaryOp::Mod { fmod: false }, rest, dims[d])?;
        rest = b.bin(BinaryOp::Div, rest, dims[d])?;
    }
    Ok((coords, pos))
}

/// The elements of `x` (flattened) at `src` (a flat position per output element, clamped
/// into `x`).
fn gather_at(b: &mut B, x: ValueId, src: ValueId) -> OpResult<ValueId> {
    let n = b.ty(x).numel();
    let flat = b.op(Op::Reshape { shape: vec![n] }, &[x], "input_flat")?;
    let (zero, last) = (b.i64(0), b.i64(n as i64 - 1));
    let src = b.bin(BinaryOp::Max, src, zero)?;
    let src = b.bin(BinaryOp::Min, src, last)?;
    b.op(Op::Gather { axis: 0 }, &[flat, src], "gathered")
}

/// [`gather_at`] as the output of run-time `dims`.
fn gathered(b: &mut B, x: ValueId, src: ValueId, dims: &[ValueId], cap: usize) -> OpResult<ValueId> {
    let out = gather_at(b, x, src)?;
    finish(b, out, dims, cap)
}

/// Names the flat output after the node's output and records its run-time shape.
fn finish(b: &mut B, out: ValueId, dims: &[ValueId], cap: usize) -> OpResult<ValueId> {
    let oname = b.node.output.first().cloned().unwrap_or_else(|| format!("{}/out", b.name));
    let out = b.op(Op::Identity, &[out], "out")?;
    b.imp.g.value_mut(out).name = oname;
    let all = b.stack(dims)?;
    let rows = dims.len() == 1;
    b.imp.dynamic.insert(out, Dyn { dims: all, bounds: vec![cap; dims.len()], cases: None, rows });
    Ok(out)
}

/// The flat position in `shape` (row-major) of `coords`.
fn flat_index(b: &mut B, coords: &[ValueId], shape: &[usize]) -> OpResult<ValueId> {
    let strides = kiln_ir::strides_of(shape);
    let mut acc = b.i64(0);
    for (&c, &s) in coords.iter().zip(&strides) {
        let s = b.i64(s as i64);
        let t = b.bin(BinaryOp::Mul, c, s)?;
        acc = b.bin(BinaryOp::Add, acc, t)?;
    }
    Ok(acc)
}

/// A NeedsConstant error for input `index` of the node (`role`), computed at run time.
fn needs(b: &B, opset: i64, index: usize, role: &str, v: ValueId) -> OpError {
    OpError::Import(crate::ImportError::NeedsConstant(Box::new(crate::error::ConstantNeeded {
        node: b.name.to_string(),
        op_type: b.node.op_type().to_string(),
        opset,
        index,
        value: b.node.input.get(index).cloned().unwrap_or_default(),
        role: role.into(),
        graph_inputs: crate::ops::graph_inputs_behind(&b.imp.g, v),
    })))
}

/// Slice (opset 10+) with starts and ends (and steps) given at run time: ONNX's clamping
/// (negative positions count from the end; clamped into `[0, d]`, or `[-1, d - 1]` going
/// backwards), each axis's length `ceil((end − start) / step)`, at least 0. Axes from data
/// are decided first, per ordered tuple (the cases).
fn slice(b: &mut B, cap: usize, opset: i64, inputs: &[Option<ValueId>]) -> OpResult<ValueId> {
    if opset < 10 {
        return unsupported("Slice before opset 10 takes its starts and ends as attributes");
    }
    let input = |i: usize| inputs.get(i).copied().flatten();
    let (x, starts, ends) = (required(input(0), "data")?, required(input(1), "starts")?, required(input(2), "ends")?);
    let xs = b.ty(x).shape;
    let rank = xs.len();
    let st = b.scalars(starts)?;
    let en = b.scalars(ends)?;
    let axes: Vec<usize> = match input(3) {
        None => (0..st.len()).collect(),
        Some(a) => match b.imp.g.const_of(a) {
            Some(t) => {
                t.to_i64_vec().iter().map(|&v| crate::ops::norm_axis(v, rank, "axis")).collect::<OpResult<_>>()?
            }
            None => return Err(needs(b, opset, 3, "axes", a)),
        },
    };
    if st.len() != axes.len() || en.len() != axes.len() {
        return invalid(format!("{} starts and {} ends for {} axes", st.len(), en.len(), axes.len()));
    }
    let steps = match input(4) {
        Some(v) => b.scalars(v)?,
        None => (0..axes.len()).map(|_| b.i64(1)).collect(),
    };
    let (zero, one, minus1) = (b.i64(0), b.i64(1), b.i64(-1));
    let mut dims: Vec<ValueId> = xs.iter().map(|&d| b.i64(d as i64)).collect();
    let mut begin: Vec<Option<(ValueId, ValueId)>> = vec![None; rank];
    let mut ok = None;
    for (j, &a) in axes.iter().enumerate() {
        let d = b.i64(xs[a] as i64);
        let dm1 = b.i64(xs[a] as i64 - 1);
        let k = steps[j];
        let wrap = |b: &mut B, v: ValueId| -> OpResult<ValueId> {
            let neg = b.cmp(CmpOp::Less, v, zero)?;
            let w = b.bin(BinaryOp::Add, v, d)?;
            b.select(neg, w, v)
        };
        let clamp = |b: &mut B, v: ValueId, lo: ValueId, hi: ValueId| -> OpResult<ValueId> {
            let v = b.bin(BinaryOp::Max, v, lo)?;
            b.bin(BinaryOp::Min, v, hi)
        };
        let (s0, e0) = (wrap(b, st[j])?, wrap(b, en[j])?);
        let forward = b.cmp(CmpOp::Greater, k, zero)?;
        let (sf, ef) = (clamp(b, s0, zero, d)?, clamp(b, e0, zero, d)?);
        let (sb, eb) = (clamp(b, s0, zero, dm1)?, clamp(b, e0, minus1, dm1)?);
        let s = b.select(forward, sf, sb)?;
        let e = b.select(forward, ef, eb)?;
        // ceil((e − s) / k) for either sign of k: (e − s + k ∓ 1) / k, truncated, at least 0.
        let span = b.bin(BinaryOp::Sub, e, s)?;
        let toward = b.select(forward, minus1, one)?;
        let num = b.bin(BinaryOp::Add, span, k)?;
        let num = b.bin(BinaryOp::Add, num, toward)?;
        let len = b.bin(BinaryOp::Div, num, k)?;
        dims[a] = b.bin(BinaryOp::Max, len, zero)?;
        begin[a] = Some((s, k));
        let nonzero = b.cmp(CmpOp::Equal, k, zero)?;
        let nonzero = b.op(Op::Unary(UnaryOp::Not), &[nonzero], "step_ok")?;
        ok = Some(match ok {
            Some(o) => b.bin(BinaryOp::And, o, nonzero)?,
            None => nonzero,
        });
    }
    let (coords, _) = coordinates(b, cap, &dims)?;
    let mut src = Vec::with_capacity(rank);
    for a in 0..rank {
        src.push(match begin[a] {
            Some((s, k)) => {
                let t = b.bin(BinaryOp::Mul, coords[a], k)?;
                b.bin(BinaryOp::Add, s, t)?
            }
            None => coords[a],
        });
    }
    let src = flat_index(b, &src, &xs)?;
    let src = match ok {
        Some(ok) => {
            let message = format!("node `{}` (Slice): a step given at run time is 0", b.name);
            b.op(Op::Assert { message }, &[src, ok], "checked")?
        }
        None => src,
    };
    gathered(b, x, src, &dims, cap)
}

/// The window generators with their size given at run time (the formulas of the
/// compile-time ones, `ops::signal::window`).
fn window(b: &mut B, cap: usize, size: Option<ValueId>) -> OpResult<ValueId> {
    let size = required(size, "size")?;
    let attrs = crate::attrs::Attrs::new(&b.node.attribute);
    let periodic = attrs.int_or("periodic", 1)? != 0;
    let dtype = match crate::data::dtype_of(attrs.int_or("output_datatype", 1)? as i32) {
        Ok(d) => d,
        Err(name) => return unsupported(format!("output_datatype {name}")),
    };
    let n = b.scalars(size)?[0];
    let (_, pos) = coordinates(b, cap, &[n])?;
    let f64c = |b: &mut B, v: f64| {
        let t = b.tag("f");
        b.imp.g.add_const(t, Tensor::from_data(vec![], kiln_ir::Data::F64(vec![v])))
    };
    let i = b.op(Op::cast(DType::F64), &[pos], "i")?;
    let nf = b.op(Op::cast(DType::F64), &[n], "n")?;
    let n1 = if periodic {
        nf
    } else {
        let one = f64c(b, 1.0);
        b.bin(BinaryOp::Sub, nf, one)?
    };
    let pi = std::f64::consts::PI;
    // cos(i·2πm / n1) for m = 1, 2.
    let angle = |b: &mut B, m: f64| -> OpResult<ValueId> {
        let c = f64c(b, pi * m);
        let t = b.bin(BinaryOp::Mul, i, c)?;
        let t = b.bin(BinaryOp::Div, t, n1)?;
        Ok(t)
    };
    let out = match b.node.op_type() {
        "HannWindow" => {
            let a = angle(b, 1.0)?;
            let s = b.op(Op::Unary(UnaryOp::Sin), &[a], "sin")?;
            b.bin(BinaryOp::Mul, s, s)?
        }
        "HammingWindow" => {
            let a = angle(b, 2.0)?;
            let c = b.op(Op::Unary(UnaryOp::Cos), &[a], "cos")?;
            let beta = f64c(b, 1.0 - 25.0 / 46.0);
            let alpha = f64c(b, 25.0 / 46.0);
            let t = b.bin(BinaryOp::Mul, c, beta)?;
            b.bin(BinaryOp::Sub, alpha, t)?
        }
        _ => {
            let a1 = angle(b, 2.0)?;
            let a2 = angle(b, 4.0)?;
            let c1 = b.op(Op::Unary(UnaryOp::Cos), &[a1], "cos")?;
            let c2 = b.op(Op::Unary(UnaryOp::Cos), &[a2], "cos")?;
            let (k0, k1, k2) = (f64c(b, 0.42), f64c(b, 0.5), f64c(b, 0.08));
            let t1 = b.bin(BinaryOp::Mul, c1, k1)?;
            let t2 = b.bin(BinaryOp::Mul, c2, k2)?;
            let t = b.bin(BinaryOp::Sub, k0, t1)?;
            b.bin(BinaryOp::Add, t, t2)?
        }
    };
    let out = b.op(Op::cast(dtype.compute()), &[out], "value")?;
    let out = if dtype.compute() == dtype { out } else { b.op(Op::cast(dtype), &[out], "narrow")? };
    finish(b, out, &[n], cap)
}

/// Range: `start + k·delta` for `k < max(ceil((limit − start) / delta), 0)`.
fn range(b: &mut B, cap: usize, s: Option<ValueId>, l: Option<ValueId>, d: Option<ValueId>) -> OpResult<ValueId> {
    let (s, l, d) = (required(s, "start")?, required(l, "limit")?, required(d, "delta")?);
    let dtype = b.ty(s).dtype;
    let f = |b: &mut B, v: ValueId| -> OpResult<ValueId> {
        let v = b.op(Op::Reshape { shape: vec![] }, &[v], "scalar")?;
        b.op(Op::cast(DType::F64), &[v], "f64")
    };
    let (sf, lf, df) = (f(b, s)?, f(b, l)?, f(b, d)?);
    let span = b.bin(BinaryOp::Sub, lf, sf)?;
    let steps = b.bin(BinaryOp::Div, span, df)?;
    let steps = b.op(Op::Unary(UnaryOp::Ceil), &[steps], "ceil")?;
    let n = b.op(Op::cast(DType::I64), &[steps], "n")?;
    let zero = b.i64(0);
    let n = b.bin(BinaryOp::Max, n, zero)?;
    let (_, pos) = coordinates(b, cap, &[n])?;
    // In the compute type (f16 in f32), rounded to the element type once.
    let ct = dtype.compute();
    let k = b.op(Op::cast(ct), &[pos], "k")?;
    let wide = |b: &mut B, v: ValueId, t: &str| -> OpResult<ValueId> {
        let v = b.op(Op::Reshape { shape: vec![] }, &[v], t)?;
        if ct == dtype {
            Ok(v)
        } else {
            b.op(Op::cast(ct), &[v], t)
        }
    };
    let (start, delta) = (wide(b, s, "start")?, wide(b, d, "delta")?);
    let kd = b.bin(BinaryOp::Mul, k, delta)?;
    let out = b.bin(BinaryOp::Add, start, kd)?;
    let out = if ct == dtype { out } else { b.op(Op::cast(dtype), &[out], "narrow")? };
    finish(b, out, &[n], cap)
}

/// ConstantOfShape: its `value` (a one-element tensor, default a float 0) everywhere.
fn constant_of_shape(b: &mut B, cap: usize, shape: Option<ValueId>) -> OpResult<ValueId> {
    let shape = required(shape, "input")?;
    let value = match b.node.attribute.iter().find(|a| a.name() == "value").and_then(|a| a.t.as_ref()) {
        Some(t) => crate::data::decode_tensor(t, "value", &mut b.imp.ext)?,
        None => Tensor::f32(vec![1], vec![0.0]),
    };
    if value.numel() != 1 {
        return invalid(format!("value must hold one element, got {}", value.ty));
    }
    let dims = b.scalars(shape)?;
    let (_, pos) = coordinates(b, cap, &dims)?;
    let t = b.tag("value");
    let v = b.imp.g.add_const(t, Tensor::from_data(vec![1], value.data()));
    let zero = b.i64(0);
    let at = b.bin(BinaryOp::Mul, pos, zero)?;
    let out = b.op(Op::Gather { axis: 0 }, &[v, at], "filled")?;
    finish(b, out, &dims, cap)
}

/// Expand: numpy broadcasting of `x` with a shape given at run time.
fn expand(b: &mut B, cap: usize, x: Option<ValueId>, shape: Option<ValueId>) -> OpResult<ValueId> {
    let (x, shape) = (required(x, "input")?, required(shape, "shape")?);
    let xs = b.ty(x).shape;
    let s = b.scalars(shape)?;
    let r = xs.len().max(s.len());
    let one = b.i64(1);
    let mut dims = Vec::with_capacity(r);
    let mut ok = None;
    let xpad: Vec<usize> = std::iter::repeat_n(1, r - xs.len()).chain(xs.iter().copied()).collect();
    for d in 0..r {
        let sd = if d + s.len() >= r { s[d + s.len() - r] } else { one };
        let xd = b.i64(xpad[d] as i64);
        let out = if xpad[d] == 1 { sd } else { xd };
        // A given size must be 1 or equal the input's (which may be 1).
        let s_one = b.cmp(CmpOp::Equal, sd, one)?;
        let same = b.cmp(CmpOp::Equal, sd, xd)?;
        let fine =
            if xpad[d] == 1 { b.cmp(CmpOp::GreaterOrEqual, sd, one)? } else { b.bin(BinaryOp::Or, s_one, same)? };
        ok = Some(match ok {
            Some(o) => b.bin(BinaryOp::And, o, fine)?,
            None => fine,
        });
        dims.push(out);
    }
    let (coords, _) = coordinates(b, cap, &dims)?;
    let src: Vec<ValueId> = coords
        .iter()
        .zip(&xpad)
        .map(|(&c, &xd)| if xd == 1 { Ok(b.i64(0)) } else { Ok(c) })
        .collect::<OpResult<_>>()?;
    let src = flat_index(b, &src, &xpad)?;
    if let Some(ok) = ok {
        let message = format!("node `{}` (Expand): the shape given at run time does not broadcast with {xs:?}", b.name);
        let checked = b.op(Op::Assert { message }, &[src, ok], "checked")?;
        return gathered(b, x, checked, &dims, cap);
    }
    gathered(b, x, src, &dims, cap)
}

/// Tile: `x` repeated along each dim by counts given at run time.
fn tile(b: &mut B, cap: usize, x: Option<ValueId>, repeats: Option<ValueId>) -> OpResult<ValueId> {
    let (x, repeats) = (required(x, "input")?, required(repeats, "repeats")?);
    let xs = b.ty(x).shape;
    let reps = b.scalars(repeats)?;
    if reps.len() != xs.len() {
        return invalid(format!("repeats has {} elements for rank {}", reps.len(), xs.len()));
    }
    let mut dims = Vec::new();
    for (&rp, &xd) in reps.iter().zip(&xs) {
        let xd = b.i64(xd as i64);
        dims.push(b.bin(BinaryOp::Mul, rp, xd)?);
    }
    let (coords, _) = coordinates(b, cap, &dims)?;
    let mut src = Vec::new();
    for (&c, &xd) in coords.iter().zip(&xs) {
        let xd = b.i64(xd.max(1) as i64);
        src.push(b.bin(BinaryOp::Mod { fmod: false }, c, xd)?);
    }
    let src = flat_index(b, &src, &xs)?;
    gathered(b, x, src, &dims, cap)
}

/// Pad (opset 11+): pads (and the constant value) given at run time; constant, edge,
/// reflect and wrap modes; negative pads crop.
fn pad(b: &mut B, cap: usize, opset: i64, inputs: &[Option<ValueId>]) -> OpResult<ValueId> {
    if opset < 11 {
        return unsupported("Pad before opset 11 takes its pads as an attribute");
    }
    let x = required(inputs.first().copied().flatten(), "data")?;
    let pads = required(inputs.get(1).copied().flatten(), "pads")?;
    let xs = b.ty(x).shape;
    let rank = xs.len();
    let attrs = crate::attrs::Attrs::new(&b.node.attribute);
    let mode = attrs.string("mode")?.unwrap_or_else(|| "constant".into());
    if !matches!(mode.as_str(), "constant" | "edge" | "reflect" | "wrap") {
        return invalid(format!("attribute `mode` = {mode:?} is not constant, edge, reflect or wrap"));
    }
    let axes: Vec<usize> = match inputs.get(3).copied().flatten() {
        None => (0..rank).collect(),
        Some(a) => match b.imp.g.const_of(a) {
            Some(t) => {
                t.to_i64_vec().iter().map(|&v| crate::ops::norm_axis(v, rank, "axis")).collect::<OpResult<_>>()?
            }
            // Axes from data too: specialized per axes first (the cases), each then here.
            None => {
                return Err(OpError::Import(crate::ImportError::NeedsConstant(Box::new(
                    crate::error::ConstantNeeded {
                        node: b.name.to_string(),
                        op_type: "Pad".into(),
                        opset,
                        index: 3,
                        value: b.node.input.get(3).cloned().unwrap_or_default(),
                        role: "axes".into(),
                        graph_inputs: crate::ops::graph_inputs_behind(&b.imp.g, a),
                    },
                ))))
            }
        },
    };
    let p = b.scalars(pads)?;
    if p.len() != 2 * axes.len() {
        return invalid(format!("pads has {} elements for {} axes", p.len(), axes.len()));
    }
    let zero = b.i64(0);
    let (mut begin, mut end) = (vec![zero; rank], vec![zero; rank]);
    for (j, &a) in axes.iter().enumerate() {
        begin[a] = p[j];
        end[a] = p[axes.len() + j];
    }
    let mut dims = Vec::with_capacity(rank);
    for d in 0..rank {
        let xd = b.i64(xs[d] as i64);
        let t = b.bin(BinaryOp::Add, xd, begin[d])?;
        dims.push(b.bin(BinaryOp::Add, t, end[d])?);
    }
    let (coords, _) = coordinates(b, cap, &dims)?;
    let mut src = Vec::with_capacity(rank);
    let mut inside = None;
    for d in 0..rank {
        let xd = xs[d] as i64;
        let s = b.bin(BinaryOp::Sub, coords[d], begin[d])?;
        let s = match mode.as_str() {
            "constant" => {
                let xdc = b.i64(xd);
                let ge = b.cmp(CmpOp::GreaterOrEqual, s, zero)?;
                let lt = b.cmp(CmpOp::Less, s, xdc)?;
                let here = b.bin(BinaryOp::And, ge, lt)?;
                inside = Some(match inside {
                    Some(i) => b.bin(BinaryOp::And, i, here)?,
                    None => here,
                });
                s
            }
            "edge" => {
                let last = b.i64((xd - 1).max(0));
                let s = b.bin(BinaryOp::Max, s, zero)?;
                b.bin(BinaryOp::Min, s, last)?
            }
            "wrap" => {
                let xdc = b.i64(xd.max(1));
                b.bin(BinaryOp::Mod { fmod: false }, s, xdc)?
            }
            _ => {
                // Reflect: a period of 2(d − 1), folded back.
                let period = b.i64((2 * (xd - 1)).max(1));
                let m = b.bin(BinaryOp::Mod { fmod: false }, s, period)?;
                let xdc = b.i64(xd);
                let below = b.cmp(CmpOp::Less, m, xdc)?;
                let back = b.bin(BinaryOp::Sub, period, m)?;
                b.select(below, m, back)?
            }
        };
        src.push(s);
    }
    let src = flat_index(b, &src, &xs)?;
    let out_dims = dims.clone();
    let Some(inside) = inside else { return gathered(b, x, src, &out_dims, cap) };
    let value = match inputs.get(2).copied().flatten() {
        Some(v) => b.op(Op::Reshape { shape: vec![] }, &[v], "value")?,
        None => {
            let t = b.tag("zero");
            let dtype = b.ty(x).dtype;
            b.imp.g.add_const(t, Tensor::from_data(vec![], kiln_ir::Data::from_f64s(dtype, &[0.0])))
        }
    };
    let got = gather_at(b, x, src)?;
    let out = b.select(inside, got, value)?;
    finish(b, out, &out_dims, cap)
}

/// OneHot with its depth given at run time: `on` where the index (negative ones counting
/// from the end) equals the position along `axis`, else `off`.
fn one_hot(
    b: &mut B,
    cap: usize,
    idx: Option<ValueId>,
    depth: Option<ValueId>,
    values: Option<ValueId>,
) -> OpResult<ValueId> {
    let (idx, depth, values) = (required(idx, "indices")?, required(depth, "depth")?, required(values, "values")?);
    if b.ty(values).numel() != 2 {
        return invalid(format!("values must be [off, on], got {}", b.ty(values)));
    }
    let is = b.ty(idx).shape;
    let attrs = crate::attrs::Attrs::new(&b.node.attribute);
    let axis = crate::ops::norm_axis(attrs.int_or("axis", -1)?, is.len() + 1, "axis")?;
    let depth = b.scalars(depth)?[0];
    let mut dims: Vec<ValueId> = is.iter().map(|&d| b.i64(d as i64)).collect();
    dims.insert(axis, depth);
    let (coords, _) = coordinates(b, cap, &dims)?;
    let mut at: Vec<ValueId> = coords.clone();
    let j = at.remove(axis);
    let pos = flat_index(b, &at, &is)?;
    let n = b.ty(idx).numel().max(1);
    let flat_idx = b.op(Op::Reshape { shape: vec![b.ty(idx).numel()] }, &[idx], "indices_flat")?;
    let last = b.i64(n as i64 - 1);
    let zero = b.i64(0);
    let pos = b.bin(BinaryOp::Min, pos, last)?;
    let pos = b.bin(BinaryOp::Max, pos, zero)?;
    let k = b.op(Op::Gather { axis: 0 }, &[flat_idx, pos], "index")?;
    let k = b.op(Op::cast(DType::I64), &[k], "index_i64")?;
    let neg = b.cmp(CmpOp::Less, k, zero)?;
    let wrapped = b.bin(BinaryOp::Add, k, depth)?;
    let k = b.select(neg, wrapped, k)?;
    let hit = b.cmp(CmpOp::Equal, k, j)?;
    let one = b.i64(1);
    let which = b.select(hit, one, zero)?;
    let out = b.op(Op::Gather { axis: 0 }, &[values, which], "value")?;
    finish(b, out, &dims, cap)
}

/// CenterCropPad: each axis (all, or the `axes` attribute) cropped or padded with zeros
/// to the size given at run time, centered (the extra element of an odd difference at the
/// end).
fn center_crop_pad(b: &mut B, cap: usize, x: Option<ValueId>, shape: Option<ValueId>) -> OpResult<ValueId> {
    let (x, shape) = (required(x, "input_data")?, required(shape, "shape")?);
    let xs = b.ty(x).shape;
    let rank = xs.len();
    let attrs = crate::attrs::Attrs::new(&b.node.attribute);
    let axes: Vec<usize> = match attrs.ints("axes")? {
        Some(a) => a.iter().map(|&v| crate::ops::norm_axis(v, rank, "axis")).collect::<OpResult<_>>()?,
        None => (0..rank).collect(),
    };
    let t = b.scalars(shape)?;
    if t.len() != axes.len() {
        return invalid(format!("shape has {} elements for {} axes", t.len(), axes.len()));
    }
    let mut dims: Vec<ValueId> = xs.iter().map(|&d| b.i64(d as i64)).collect();
    for (j, &a) in axes.iter().enumerate() {
        dims[a] = t[j];
    }
    let (coords, _) = coordinates(b, cap, &dims)?;
    let (zero, two) = (b.i64(0), b.i64(2));
    let mut src = Vec::with_capacity(rank);
    let mut inside: Option<ValueId> = None;
    for d in 0..rank {
        if !axes.contains(&d) {
            src.push(coords[d]);
            continue;
        }
        let xd = b.i64(xs[d] as i64);
        // Crop: from (x − t) / 2; pad: (t − x) / 2 zeros before.
        let crop = b.bin(BinaryOp::Sub, xd, dims[d])?;
        let crop = b.bin(BinaryOp::Div, crop, two)?;
        let pad = b.bin(BinaryOp::Sub, dims[d], xd)?;
        let pad = b.bin(BinaryOp::Div, pad, two)?;
        let cropping = b.cmp(CmpOp::GreaterOrEqual, xd, dims[d])?;
        let from_crop = b.bin(BinaryOp::Add, coords[d], crop)?;
        let from_pad = b.bin(BinaryOp::Sub, coords[d], pad)?;
        let s = b.select(cropping, from_crop, from_pad)?;
        let ge = b.cmp(CmpOp::GreaterOrEqual, s, zero)?;
        let lt = b.cmp(CmpOp::Less, s, xd)?;
        let here = b.bin(BinaryOp::And, ge, lt)?;
        inside = Some(match inside {
            Some(i) => b.bin(BinaryOp::And, i, here)?,
            None => here,
        });
        src.push(s);
    }
    let src = flat_index(b, &src, &xs)?;
    let got = gather_at(b, x, src)?;
    let out = match inside {
        Some(inside) => {
            let t = b.tag("zero");
            let dtype = b.ty(x).dtype;
            let z = b.imp.g.add_const(t, Tensor::from_data(vec![], kiln_ir::Data::from_f64s(dtype, &[0.0])));
            b.select(inside, got, z)?
        }
        None => got,
    };
    finish(b, out, &dims, cap)
}
