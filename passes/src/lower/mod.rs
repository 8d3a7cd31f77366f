//! HIR → LIR lowering: every value gets a location (a buffer and an element offset), every
//! computing node becomes one or more kernels with compute definitions, and reshapes become
//! zero-copy views.

use std::collections::HashMap;

use kiln_ir::lir::{BufferId, BufferKind, Combine, Expr, Instr, Kernel, Program, Reduction, Scalar, View};
use kiln_ir::op::{BinaryOp, CmpOp, GridMode, GridPadding, ReduceOp, ScatterReduction, UnaryOp};
use kiln_ir::{strides_of, DType, Graph, Op, TensorType, ValueDef, ValueId};

use crate::PassError;

mod conv;
mod index;
mod layout;
mod sample;
mod winograd;

use layout::{choose_layout, order_loops};
pub(crate) use layout::{permute_parallel, stride_order};

/// Where a value's elements live: from `offset` (in elements) of `buffer`, dense row-major
/// or, for a rank-4 value with `channels_last`, in NHWC order (see [`choose_layout`]).
#[derive(Clone, Copy, Debug)]
struct Loc {
    buffer: BufferId,
    offset: i64,
    channels_last: bool,
}

impl Loc {
    fn dense(buffer: BufferId) -> Loc {
        Loc { buffer, offset: 0, channels_last: false }
    }
    fn view(&self, dtype: DType, shape: &[usize]) -> View {
        let mut view = View::dense(self.buffer, dtype, shape);
        view.offset = self.offset;
        if self.channels_last {
            let [_, c, h, w] = shape[..] else { unreachable!("channels-last values are rank 4") };
            let (c, h, w) = (c as i64, h as i64, w as i64);
            view.strides = vec![h * w * c, 1, w * c, c];
        }
        view
    }
}

struct Lowerer<'g> {
    g: &'g Graph,
    prog: Program,
    loc: HashMap<ValueId, Loc>,
}

/// A view of `v` (shape `shape`) broadcast to `to` (numpy rules: aligned right, stride 0 on
/// broadcast dimensions).
pub fn broadcast_view(v: &View, to: &[usize]) -> View {
    let off = to.len() - v.extents.len();
    let mut strides = vec![0i64; to.len()];
    for (d, (&e, &s)) in v.extents.iter().zip(&v.strides).enumerate() {
        strides[off + d] = if e == 1 && to[off + d] != 1 { 0 } else { s };
    }
    View { buffer: v.buffer, dtype: v.dtype, offset: v.offset, extents: to.to_vec(), strides }
}

/// The input row (`a` = 0) or column (`a` = 1) that window tap `tap` reads for the output
/// position in iteration variable `2 + a` (NCHW): `out·stride + tap·dilation − pad_begin`.
fn window_input_index(window: &kiln_ir::Window, a: usize, tap: Expr) -> Expr {
    let base = Expr::mul(Expr::Var(2 + a), Expr::i64(window.strides[a] as i64));
    let off = Expr::mul(tap, Expr::i64(window.dilations[a] as i64));
    Expr::sub(Expr::add(base, off), Expr::i64(window.pads[a] as i64))
}

/// An integer index (any int dtype) as i64, negative values wrapped by `dim`.
fn wrap(raw: Expr, dim: Expr) -> Expr {
    let raw = Expr::cast(DType::I64, raw);
    Expr::select(Expr::cmp(CmpOp::Less, raw.clone(), Expr::i64(0)), Expr::add(raw.clone(), dim), raw)
}

/// [`wrap`], then clamped into `[0, dim)` so that a bad index never reads outside memory
/// (the check kernel reports it).
fn wrap_clamp(raw: Expr, dim: Expr) -> Expr {
    let w = wrap(raw, dim.clone());
    let hi = Expr::bin(BinaryOp::Max, Expr::sub(dim, Expr::i64(1)), Expr::i64(0));
    Expr::bin(BinaryOp::Min, Expr::bin(BinaryOp::Max, w, Expr::i64(0)), hi)
}

/// `dims[t]` where `t` is the value of `sel` (a small select chain).
fn nd_dim_expr(dims: &[i64], sel: Expr) -> Expr {
    let mut e = Expr::i64(*dims.last().expect("at least one indexed dimension"));
    for (t, &d) in dims.iter().enumerate().rev().skip(1) {
        e = Expr::select(Expr::cmp(CmpOp::Equal, sel.clone(), Expr::i64(t as i64)), Expr::i64(d), e);
    }
    e
}

fn vars(range: std::ops::Range<usize>) -> Vec<Expr> {
    range.map(Expr::Var).collect()
}

fn elementwise(name: &str, out: View, inputs: Vec<View>, body: Expr) -> Kernel {
    Kernel {
        name: name.to_string(),
        domain: out.extents.clone(),
        n_par: out.extents.len(),
        inputs,
        output: out,
        body,
        reduction: None,
    }
}

/// The body of an elementwise HIR op applied to `args` (already loaded).
pub fn elementwise_body(op: &Op, mut args: Vec<Expr>) -> Expr {
    match op {
        Op::Binary(b) => {
            let rhs = args.pop().unwrap();
            Expr::bin(*b, args.pop().unwrap(), rhs)
        }
        Op::Compare(c) => {
            let rhs = args.pop().unwrap();
            Expr::cmp(*c, args.pop().unwrap(), rhs)
        }
        Op::Unary(u) => Expr::unary(*u, args.pop().unwrap()),
        Op::Cast { to, saturate, round } => Expr::cast_with(*to, *saturate, *round, args.pop().unwrap()),
        Op::Where => {
            let b = args.pop().unwrap();
            let a = args.pop().unwrap();
            Expr::select(args.pop().unwrap(), a, b)
        }
        Op::Identity => args.pop().unwrap(),
        Op::IsNaN => {
            let x = args.pop().unwrap();
            Expr::unary(UnaryOp::Not, Expr::cmp(CmpOp::Equal, x.clone(), x))
        }
        Op::IsInf { negative, positive } => {
            let x = args.pop().unwrap();
            let eq = |v: f32| Expr::cmp(CmpOp::Equal, x.clone(), Expr::f32(v));
            match (negative, positive) {
                (true, true) => Expr::bin(BinaryOp::Or, eq(f32::INFINITY), eq(f32::NEG_INFINITY)),
                (false, true) => eq(f32::INFINITY),
                (true, false) => eq(f32::NEG_INFINITY),
                (false, false) => Expr::Const(Scalar::Bool(false)),
            }
        }
        _ => unreachable!("not an elementwise op: {}", op.name()),
    }
}

impl<'g> Lowerer<'g> {
    fn ty(&self, v: ValueId) -> &TensorType {
        self.g.ty(v)
    }

    fn view_of(&mut self, v: ValueId) -> View {
        let loc = match self.loc.get(&v) {
            Some(l) => *l,
            None => {
                let t = self.g.const_of(v).expect("operand without a location is a constant").clone();
                let name = self.g.value(v).name.clone();
                let bytes = t.ty.bytes();
                let b = self.prog.add_buffer(BufferKind::Constant(t), bytes, name);
                let l = Loc::dense(b);
                self.loc.insert(v, l);
                l
            }
        };
        let ty = self.ty(v);
        loc.view(ty.dtype, &ty.shape)
    }

    fn temp(&mut self, dtype: DType, shape: &[usize], name: String) -> View {
        let bytes = shape.iter().product::<usize>() * dtype.size();
        let b = self.prog.add_buffer(BufferKind::Activation, bytes, name);
        View::dense(b, dtype, shape)
    }

    fn emit(&mut self, k: Kernel) {
        self.prog.instrs.push(Instr::Kernel(k));
    }

    fn lower_node(&mut self, op: &Op, ins: Vec<View>, out: View, name: &str) -> Result<(), String> {
        let out_shape = out.extents.clone();
        let rank = out_shape.len();
        match op {
            Op::Binary(_)
            | Op::Compare(_)
            | Op::Unary(_)
            | Op::Cast { .. }
            | Op::Where
            | Op::Identity
            | Op::IsNaN
            | Op::IsInf { .. } => {
                let views: Vec<View> = ins.iter().map(|v| broadcast_view(v, &out_shape)).collect();
                let args = (0..views.len()).map(|k| Expr::load(k, vars(0..rank))).collect();
                let body = elementwise_body(op, args);
                self.emit(elementwise(name, out, views, body));
            }
            Op::MatMul => self.lower_matmul(ins, out, name),
            Op::Gemm { alpha, beta, trans_a, trans_b } => {
                let (m, n) = (out_shape[0], out_shape[1]);
                let mut a = ins[0].clone();
                let mut b = ins[1].clone();
                if *trans_a {
                    a.extents.swap(0, 1);
                    a.strides.swap(0, 1);
                }
                if *trans_b {
                    b.extents.swap(0, 1);
                    b.strides.swap(0, 1);
                }
                let k = a.extents[1];
                let body = Expr::mul(
                    Expr::load(0, vec![Expr::Var(0), Expr::Var(2)]),
                    Expr::load(1, vec![Expr::Var(2), Expr::Var(1)]),
                );
                let mut fin = Expr::Acc;
                if *alpha != 1.0 {
                    fin = Expr::mul(Expr::f32(*alpha), fin);
                }
                let mut inputs = vec![a, b];
                if let Some(c) = ins.get(2) {
                    if *beta != 0.0 {
                        inputs.push(broadcast_view(c, &[m, n]));
                        let mut cl = Expr::load(2, vars(0..2));
                        if *beta != 1.0 {
                            cl = Expr::mul(Expr::f32(*beta), cl);
                        }
                        fin = Expr::add(fin, cl);
                    }
                }
                let dt = out.dtype;
                self.emit(Kernel {
                    name: name.into(),
                    domain: vec![m, n, k],
                    n_par: 2,
                    inputs,
                    output: out,
                    body,
                    reduction: Some(Reduction {
                        combine: Combine::Add,
                        init: Scalar::of(dt, 0.0),
                        finalize: (fin != Expr::Acc).then_some(fin),
                    }),
                });
            }
            Op::Conv { window, group } => self.lower_conv(window, group, &ins, out, name),
            Op::ConvTranspose { kernel, strides, dilations, pads, group, .. } => {
                // Gather form: output (oy, ox) sums the taps whose input position
                // (o + pad − t·dilation) / stride is integral and inside the input.
                let (x, w) = (&ins[0], &ins[1]);
                let (cg, mg) = (w.extents[0] / group, w.extents[1]);
                let mut domain = out_shape.clone();
                domain.extend([cg, kernel[0], kernel[1]]);
                let chan = if *group == 1 {
                    Expr::Var(4)
                } else {
                    Expr::add(
                        Expr::mul(Expr::div(Expr::Var(1), Expr::i64(mg as i64)), Expr::i64(cg as i64)),
                        Expr::Var(4),
                    )
                };
                let spatial = |a: usize| {
                    let t = Expr::sub(
                        Expr::add(Expr::Var(2 + a), Expr::i64(pads[a])),
                        Expr::mul(Expr::Var(5 + a), Expr::i64(dilations[a] as i64)),
                    );
                    let s = strides[a] as i64;
                    if s == 1 {
                        return t;
                    }
                    let ok = Expr::bin(
                        BinaryOp::And,
                        Expr::cmp(CmpOp::GreaterOrEqual, t.clone(), Expr::i64(0)),
                        Expr::cmp(
                            CmpOp::Equal,
                            Expr::bin(BinaryOp::Mod { fmod: true }, t.clone(), Expr::i64(s)),
                            Expr::i64(0),
                        ),
                    );
                    // -1 is outside the input: the padded load yields 0.
                    Expr::select(ok, Expr::div(t, Expr::i64(s)), Expr::i64(-1))
                };
                let xl = Expr::Load {
                    operand: 0,
                    index: vec![Expr::Var(0), chan.clone(), spatial(0), spatial(1)],
                    pad: Some(Scalar::F32(0.0)),
                };
                let wcol = if *group == 1 {
                    Expr::Var(1)
                } else {
                    Expr::bin(BinaryOp::Mod { fmod: true }, Expr::Var(1), Expr::i64(mg as i64))
                };
                let wl = Expr::load(1, vec![chan, wcol, Expr::Var(5), Expr::Var(6)]);
                self.emit_window_sum(name, domain, [x, w], ins.get(2), Expr::mul(xl, wl), out);
            }
            Op::MaxPool { window, .. } | Op::AveragePool { window, .. } => {
                let x = &ins[0];
                let dt = x.dtype;
                let mut domain = out_shape.clone();
                domain.extend(window.kernel);
                let spatial = |a: usize| window_input_index(window, a, Expr::Var(4 + a));
                let is_max = matches!(op, Op::MaxPool { .. });
                let pad = if is_max { Scalar::extreme(dt, true) } else { Scalar::of(dt, 0.0) };
                let body = Expr::Load {
                    operand: 0,
                    index: vec![Expr::Var(0), Expr::Var(1), spatial(0), spatial(1)],
                    pad: Some(pad),
                };
                let mut inputs = vec![x.clone()];
                let reduction = if is_max {
                    Reduction { combine: Combine::Max, init: pad, finalize: None }
                } else {
                    let Op::AveragePool { count_include_pad, .. } = op else { unreachable!() };
                    // Divisors depend only on the output position: precompute 1/count per (oh, ow).
                    let (oh, ow) = (out_shape[2], out_shape[3]);
                    let (h, w) = (x.extents[2] as i64, x.extents[3] as i64);
                    let count_axis = |a: usize, o: usize, n: i64| -> i64 {
                        let start = (o * window.strides[a]) as i64 - window.pads[a] as i64;
                        let (lo, hi) = if *count_include_pad {
                            (-(window.pads[a] as i64), n + window.pads[a + 2] as i64)
                        } else {
                            (0, n)
                        };
                        (0..window.kernel[a] as i64)
                            .filter(|t| (lo..hi).contains(&(start + t * window.dilations[a] as i64)))
                            .count() as i64
                    };
                    let mut inv = Vec::with_capacity(oh * ow);
                    for i in 0..oh {
                        for j in 0..ow {
                            let c = count_axis(0, i, h) * count_axis(1, j, w);
                            inv.push(if c == 0 { 0.0 } else { c as f32 });
                        }
                    }
                    let t = kiln_ir::Tensor::f32(vec![oh, ow], inv);
                    let b = self.prog.add_buffer(BufferKind::Constant(t), oh * ow * 4, format!("{name}.counts"));
                    inputs.push(View::dense(b, DType::F32, &[oh, ow]));
                    Reduction {
                        combine: Combine::Add,
                        init: Scalar::F32(0.0),
                        finalize: Some(Expr::div(Expr::Acc, Expr::load(1, vec![Expr::Var(2), Expr::Var(3)]))),
                    }
                };
                self.emit(Kernel {
                    name: name.into(),
                    domain,
                    n_par: 4,
                    inputs,
                    output: out,
                    body,
                    reduction: Some(reduction),
                });
            }
            Op::MaxPoolIndices { window, ceil_mode, column_major } => {
                // The window's maximum, then the first tap (scan order) that equals it.
                let x = ins[0].clone();
                let mx = self.temp(x.dtype, &out_shape, format!("{name}.max"));
                let max_op = Op::MaxPool { window: window.clone(), ceil_mode: *ceil_mode };
                self.lower_node(&max_op, vec![x.clone()], mx.clone(), name)?;
                let (h, w) = (x.extents[2] as i64, x.extents[3] as i64);
                let kw = window.kernel[1] as i64;
                let pos = |a: usize, tap: Expr| window_input_index(window, a, tap);
                let inside = |e: Expr, n: i64| {
                    let lo = Expr::cmp(CmpOp::GreaterOrEqual, e.clone(), Expr::i64(0));
                    Expr::bin(BinaryOp::And, lo, Expr::cmp(CmpOp::Less, e, Expr::i64(n)))
                };
                let (hy, wx) = (pos(0, Expr::Var(4)), pos(1, Expr::Var(5)));
                let index = vec![Expr::Var(0), Expr::Var(1), hy.clone(), wx.clone()];
                let xl = Expr::Load { operand: 0, index, pad: Some(Scalar::extreme(x.dtype, true)) };
                let in_bounds = Expr::bin(BinaryOp::And, inside(hy, h), inside(wx, w));
                let hit = Expr::bin(BinaryOp::And, in_bounds, Expr::cmp(CmpOp::Equal, xl, Expr::load(1, vars(0..4))));
                let tap = Expr::add(Expr::mul(Expr::Var(4), Expr::i64(kw)), Expr::Var(5));
                let body = Expr::select(hit, tap, Expr::i64(i64::MAX));
                let ty = pos(0, Expr::div(Expr::Acc, Expr::i64(kw)));
                let tx = pos(1, Expr::bin(BinaryOp::Mod { fmod: true }, Expr::Acc, Expr::i64(kw)));
                let nc = Expr::add(Expr::mul(Expr::Var(0), Expr::i64(x.extents[1] as i64)), Expr::Var(1));
                let plane = Expr::mul(nc, Expr::i64(h * w));
                let within = if *column_major {
                    Expr::add(ty, Expr::mul(tx, Expr::i64(h)))
                } else {
                    Expr::add(Expr::mul(ty, Expr::i64(w)), tx)
                };
                let mut domain = out_shape.clone();
                domain.extend(window.kernel);
                let finalize = Some(Expr::add(plane, within));
                self.emit(Kernel {
                    name: name.into(),
                    domain,
                    n_par: 4,
                    inputs: vec![x, mx],
                    output: out,
                    body,
                    reduction: Some(Reduction { combine: Combine::Min, init: Scalar::I64(i64::MAX), finalize }),
                });
            }
            Op::BatchNorm { epsilon } => {
                let x = &ins[0];
                let chan = |v: &View| {
                    let mut strides = vec![0i64; rank];
                    strides[1] = v.strides[0];
                    View { buffer: v.buffer, dtype: v.dtype, offset: v.offset, extents: out_shape.clone(), strides }
                };
                let mut inputs = vec![x.clone()];
                inputs.extend(ins[1..].iter().map(chan));
                let l = |k: usize| Expr::load(k, vars(0..rank));
                let denom = Expr::unary(UnaryOp::Sqrt, Expr::add(l(4), Expr::f32(*epsilon)));
                let body = Expr::add(Expr::mul(Expr::div(Expr::sub(l(0), l(3)), denom), l(1)), l(2));
                self.emit(elementwise(name, out, inputs, body));
            }
            Op::Lrn { size, alpha, beta, bias } => {
                let x = ins[0].clone();
                let half = ((size - 1) / 2) as i64;
                let mut domain = out_shape.clone();
                domain.push(*size);
                let mut idx = vars(0..rank);
                idx[1] = Expr::add(Expr::sub(Expr::Var(1), Expr::i64(half)), Expr::Var(rank));
                let xl = Expr::Load { operand: 0, index: idx, pad: Some(Scalar::F32(0.0)) };
                let scale = Expr::add(Expr::f32(*bias), Expr::mul(Expr::f32(alpha / *size as f32), Expr::Acc));
                let fin = Expr::div(Expr::load(0, vars(0..rank)), Expr::bin(BinaryOp::Pow, scale, Expr::f32(*beta)));
                self.emit(Kernel {
                    name: name.into(),
                    domain,
                    n_par: rank,
                    inputs: vec![x],
                    output: out,
                    body: Expr::mul(xl.clone(), xl),
                    reduction: Some(Reduction { combine: Combine::Add, init: Scalar::F32(0.0), finalize: Some(fin) }),
                });
            }
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                let x = ins[0].clone();
                let a = *axis;
                let mut red_shape = out_shape.clone();
                red_shape[a] = 1;
                let kept: Vec<usize> = (0..rank).filter(|&d| d != a).collect();
                let kept_shape: Vec<usize> = kept.iter().map(|&d| out_shape[d]).collect();
                // Index of x in the reduction domain [kept..., axis].
                let mut xidx = vec![Expr::Var(0); rank];
                for (i, &d) in kept.iter().enumerate() {
                    xidx[d] = Expr::Var(i);
                }
                xidx[a] = Expr::Var(rank - 1);
                let mut domain = kept_shape.clone();
                domain.push(out_shape[a]);
                let dt = x.dtype;
                let mx = self.temp(dt, &red_shape, format!("{name}.max"));
                let mut mx_out = mx.clone();
                mx_out.extents = kept_shape.clone();
                mx_out.strides = strides_of(&kept_shape).into_iter().map(|s| s as i64).collect();
                self.emit(Kernel {
                    name: format!("{name}.max"),
                    domain: domain.clone(),
                    n_par: rank - 1,
                    inputs: vec![x.clone()],
                    output: mx_out.clone(),
                    body: Expr::load(0, xidx.clone()),
                    reduction: Some(Reduction {
                        combine: Combine::Max,
                        init: Scalar::of(dt, f64::NEG_INFINITY),
                        finalize: None,
                    }),
                });
                let sm = self.temp(dt, &red_shape, format!("{name}.sum"));
                let mut sm_out = sm.clone();
                sm_out.extents = kept_shape.clone();
                sm_out.strides = mx_out.strides.clone();
                let mx_k: Vec<Expr> = (0..rank - 1).map(Expr::Var).collect();
                self.emit(Kernel {
                    name: format!("{name}.sum"),
                    domain,
                    n_par: rank - 1,
                    inputs: vec![x.clone(), mx_out.clone()],
                    output: sm_out,
                    body: Expr::unary(UnaryOp::Exp, Expr::sub(Expr::load(0, xidx), Expr::load(1, mx_k))),
                    // Softmax keeps 1/Σ, so that each element takes a multiplication instead
                    // of a division (within an ulp of dividing; a 12×128×128 attention
                    // softmax measured 6% faster).
                    reduction: Some(Reduction {
                        combine: Combine::Add,
                        init: Scalar::of(dt, 0.0),
                        finalize: matches!(op, Op::Softmax { .. }).then(|| Expr::unary(UnaryOp::Reciprocal, Expr::Acc)),
                    }),
                });
                let inputs = vec![x, broadcast_view(&mx, &out_shape), broadcast_view(&sm, &out_shape)];
                let l = |k: usize| Expr::load(k, vars(0..rank));
                let shifted = Expr::sub(l(0), l(1));
                let body = if matches!(op, Op::Softmax { .. }) {
                    Expr::mul(Expr::unary(UnaryOp::Exp, shifted), l(2))
                } else {
                    Expr::sub(shifted, Expr::unary(UnaryOp::Log, l(2)))
                };
                self.emit(elementwise(name, out, inputs, body));
            }
            Op::Reduce { op: r, axes, .. } => {
                let x = ins[0].clone();
                let xr = x.extents.len();
                let kept: Vec<usize> = (0..xr).filter(|d| !axes.contains(d)).collect();
                let kept_shape: Vec<usize> = kept.iter().map(|&d| x.extents[d]).collect();
                let mut domain = kept_shape.clone();
                domain.extend(axes.iter().map(|&d| x.extents[d]));
                let mut xidx = vec![Expr::Var(0); xr];
                for (i, &d) in kept.iter().enumerate() {
                    xidx[d] = Expr::Var(i);
                }
                for (i, &d) in axes.iter().enumerate() {
                    xidx[d] = Expr::Var(kept.len() + i);
                }
                let mut o = out.clone();
                o.extents = kept_shape.clone();
                o.strides = strides_of(&kept_shape).into_iter().map(|s| s as i64).collect();
                let dt = x.dtype;
                let count: usize = axes.iter().map(|&d| x.extents[d]).product();
                let (combine, init, finalize) = match r {
                    ReduceOp::Sum => (Combine::Add, Scalar::of(dt, 0.0), None),
                    ReduceOp::Mean => (
                        Combine::Add,
                        Scalar::of(dt, 0.0),
                        Some(Expr::div(Expr::Acc, Expr::Const(Scalar::of(dt, count as f64)))),
                    ),
                    ReduceOp::Prod => (Combine::Mul, Scalar::of(dt, 1.0), None),
                    ReduceOp::Max => (Combine::Max, Scalar::extreme(dt, true), None),
                    ReduceOp::Min => (Combine::Min, Scalar::extreme(dt, false), None),
                };
                self.emit(Kernel {
                    name: name.into(),
                    domain,
                    n_par: kept.len(),
                    inputs: vec![x],
                    output: o,
                    body: Expr::load(0, xidx),
                    reduction: Some(Reduction { combine, init, finalize }),
                });
            }
            Op::Transpose { perm } => {
                let x = &ins[0];
                let v = View {
                    buffer: x.buffer,
                    dtype: x.dtype,
                    offset: x.offset,
                    extents: out_shape.clone(),
                    strides: perm.iter().map(|&p| x.strides[p]).collect(),
                };
                self.emit(elementwise(name, out, vec![v], Expr::load(0, vars(0..rank))));
            }
            Op::Slice { starts, steps, .. } => {
                let x = &ins[0];
                let offset = x.offset + starts.iter().zip(&x.strides).map(|(s, t)| s * t).sum::<i64>();
                let v = View {
                    buffer: x.buffer,
                    dtype: x.dtype,
                    offset,
                    extents: out_shape.clone(),
                    strides: x.strides.iter().zip(steps).map(|(t, s)| t * s).collect(),
                };
                self.emit(elementwise(name, out, vec![v], Expr::load(0, vars(0..rank))));
            }
            Op::Concat { axis } => {
                let mut at = 0usize;
                for (k, v) in ins.iter().enumerate() {
                    let mut o = out.clone();
                    o.extents = v.extents.clone();
                    o.offset += at as i64 * out.strides[*axis];
                    at += v.extents[*axis];
                    if v.numel() > 0 {
                        self.emit(elementwise(
                            &format!("{name}.{k}"),
                            o,
                            vec![v.clone()],
                            Expr::load(0, vars(0..rank)),
                        ));
                    }
                }
            }
            Op::Gather { axis } => {
                let (x, idx) = (&ins[0], &ins[1]);
                let ri = idx.extents.len();
                let dim = x.extents[*axis] as i64;
                let raw = Expr::cast(DType::I64, Expr::load(1, vars(*axis..axis + ri)));
                let wrapped = Expr::select(
                    Expr::cmp(CmpOp::Less, raw.clone(), Expr::i64(0)),
                    Expr::add(raw.clone(), Expr::i64(dim)),
                    raw,
                );
                // Out-of-range indices are clamped so a bad index can never read outside memory.
                let clamped = Expr::bin(
                    BinaryOp::Min,
                    Expr::bin(BinaryOp::Max, wrapped, Expr::i64(0)),
                    Expr::i64((dim - 1).max(0)),
                );
                // Constant indices are checked now; indices from data are counted at run time
                // and a bad one stops the run with an error naming the node.
                if let BufferKind::Constant(t) = &self.prog.buffer(idx.buffer).kind {
                    if let Some(bad) = t.to_i64_vec().into_iter().find(|&i| i < -dim || i >= dim) {
                        return Err(format!("index {bad} is outside [-{dim}, {dim}) on axis {axis}"));
                    }
                } else {
                    self.gather_check(idx, dim, *axis, name);
                }
                let mut xidx = vars(0..*axis);
                xidx.push(clamped);
                xidx.extend(vars(axis + ri..rank));
                self.emit(elementwise(name, out, vec![x.clone(), idx.clone()], Expr::load(0, xidx)));
            }
            Op::Expand { .. } => {
                let v = broadcast_view(&ins[0], &out_shape);
                self.emit(elementwise(name, out, vec![v], Expr::load(0, vars(0..rank))));
            }
            Op::ArgReduce { max, axis, select_last, .. } => {
                let x = ins[0].clone();
                let (a, xr) = (*axis, x.extents.len());
                let kept: Vec<usize> = (0..xr).filter(|&d| d != a).collect();
                let kept_shape: Vec<usize> = kept.iter().map(|&d| x.extents[d]).collect();
                let kr = kept.len();
                let mut xidx = vec![Expr::Var(0); xr];
                for (i, &d) in kept.iter().enumerate() {
                    xidx[d] = Expr::Var(i);
                }
                xidx[a] = Expr::Var(kr);
                let mut domain = kept_shape.clone();
                domain.push(x.extents[a]);
                let ext = self.temp(x.dtype, &kept_shape, format!("{name}.extreme"));
                let (combine, init) = if *max {
                    (Combine::Max, Scalar::extreme(x.dtype, true))
                } else {
                    (Combine::Min, Scalar::extreme(x.dtype, false))
                };
                self.emit(Kernel {
                    name: format!("{name}.extreme"),
                    domain: domain.clone(),
                    n_par: kr,
                    inputs: vec![x.clone()],
                    output: ext.clone(),
                    body: Expr::load(0, xidx.clone()),
                    reduction: Some(Reduction { combine, init, finalize: None }),
                });
                // The first (last) position along the axis holding the extreme value.
                let hit = Expr::cmp(CmpOp::Equal, Expr::load(0, xidx), Expr::load(1, vars(0..kr)));
                // NaN never wins (float max/min reductions skip it); a row of NaN gives 0.
                let (combine, none, fin) = if *select_last {
                    (Combine::Max, -1, Expr::bin(BinaryOp::Max, Expr::Acc, Expr::i64(0)))
                } else {
                    (
                        Combine::Min,
                        i64::MAX,
                        Expr::select(Expr::cmp(CmpOp::Equal, Expr::Acc, Expr::i64(i64::MAX)), Expr::i64(0), Expr::Acc),
                    )
                };
                let mut o = out.clone();
                o.extents = kept_shape.clone();
                o.strides = strides_of(&kept_shape).into_iter().map(|s| s as i64).collect();
                self.emit(Kernel {
                    name: name.into(),
                    domain,
                    n_par: kr,
                    inputs: vec![x, ext],
                    output: o,
                    body: Expr::select(hit, Expr::Var(kr), Expr::i64(none)),
                    reduction: Some(Reduction { combine, init: Scalar::I64(none), finalize: Some(fin) }),
                });
            }
            Op::TopKIndices { axis, k, largest } if *k <= 16 && ins[0].extents[*axis] > 64 => {
                self.lower_top_k_select(ins[0].clone(), out, *axis, *k, *largest, name);
            }
            Op::TopKIndices { axis, largest, .. } => {
                // The rank of each element in the order (value, then position), then for each
                // output slot j the element whose rank is j (ranks are a permutation).
                let x = ins[0].clone();
                let (a, xr) = (*axis, x.extents.len());
                let n = x.extents[a];
                let ranks = self.temp(DType::I64, &x.extents, format!("{name}.rank"));
                let xi = Expr::load(0, vars(0..xr));
                let mut li = vars(0..xr);
                li[a] = Expr::Var(xr);
                let xl = Expr::load(0, li.clone());
                let ahead = Expr::cmp(if *largest { CmpOp::Greater } else { CmpOp::Less }, xl.clone(), xi.clone());
                let tie = Expr::bin(
                    BinaryOp::And,
                    Expr::cmp(CmpOp::Equal, xl, xi),
                    Expr::cmp(CmpOp::Less, Expr::Var(xr), Expr::Var(a)),
                );
                let before = Expr::bin(BinaryOp::Or, ahead, tie);
                let mut domain = x.extents.clone();
                domain.push(n);
                self.emit(Kernel {
                    name: format!("{name}.rank"),
                    domain,
                    n_par: xr,
                    inputs: vec![x],
                    output: ranks.clone(),
                    body: Expr::select(before, Expr::i64(1), Expr::i64(0)),
                    reduction: Some(Reduction { combine: Combine::Add, init: Scalar::I64(0), finalize: None }),
                });
                let mut domain = out_shape.clone();
                domain.push(n);
                let hit = Expr::cmp(CmpOp::Equal, Expr::load(0, li), Expr::Var(a));
                self.emit(Kernel {
                    name: name.into(),
                    domain,
                    n_par: rank,
                    inputs: vec![ranks],
                    output: out,
                    body: Expr::select(hit, Expr::Var(xr), Expr::i64(0)),
                    reduction: Some(Reduction { combine: Combine::Add, init: Scalar::I64(0), finalize: None }),
                });
            }
            Op::RoiAlign { .. } => self.lower_roi_align(op, &ins, out, name)?,
            Op::GridSample { mode, padding, align_corners } => {
                self.lower_grid_sample(ins, out, *mode, *padding, *align_corners, name);
            }
            Op::GatherElements { axis } => {
                let (x, idx) = (&ins[0], &ins[1]);
                let dim = x.extents[*axis] as i64;
                self.index_check(idx, &|_| dim, Expr::i64(dim), name, "GatherElements")?;
                let mut xidx = vars(0..rank);
                xidx[*axis] = wrap_clamp(Expr::load(1, vars(0..rank)), Expr::i64(dim));
                self.emit(elementwise(name, out, vec![x.clone(), idx.clone()], Expr::load(0, xidx)));
            }
            Op::GatherNd { batch_dims } => {
                let (x, idx) = (&ins[0], &ins[1]);
                let b = *batch_dims;
                let q = idx.extents.len();
                let m = idx.extents[q - 1];
                let dims: Vec<i64> = (0..m).map(|t| x.extents[b + t] as i64).collect();
                let dim_expr = nd_dim_expr(&dims, Expr::Var(q - 1));
                self.index_check(idx, &|mi: &[usize]| dims[mi[q - 1]], dim_expr, name, "GatherND")?;
                let mut xidx = vars(0..b);
                for (t, &d) in dims.iter().enumerate() {
                    let mut ii = vars(0..q - 1);
                    ii.push(Expr::i64(t as i64));
                    xidx.push(wrap_clamp(Expr::load(1, ii), Expr::i64(d)));
                }
                xidx.extend(vars(q - 1..rank));
                self.emit(elementwise(name, out, vec![x.clone(), idx.clone()], Expr::load(0, xidx)));
            }
            Op::ScatterElements { axis, reduction } => {
                let (x, idx, upd) = (&ins[0], &ins[1], &ins[2]);
                let a = *axis;
                let dim = x.extents[a] as i64;
                self.index_check(idx, &|_| dim, Expr::i64(dim), name, "ScatterElements")?;
                // For output element p, the candidate updates are u = p with u[axis] = j.
                let mut u = vars(0..rank);
                u[a] = Expr::Var(rank);
                let raw = Expr::Load { operand: 1, index: u.clone(), pad: Some(Scalar::extreme(idx.dtype, true)) };
                let hit = Expr::cmp(CmpOp::Equal, wrap(raw, Expr::i64(dim)), Expr::Var(a));
                let mut domain = out_shape.clone();
                domain.push(idx.extents[a]);
                let flat_u = Expr::Var(rank);
                let decode = |last: Expr| {
                    let mut ui = vars(0..rank);
                    ui[a] = last;
                    ui
                };
                self.lower_scatter(
                    name,
                    *reduction,
                    out,
                    [x.clone(), idx.clone(), upd.clone()],
                    domain,
                    hit,
                    u,
                    flat_u,
                    &decode,
                );
            }
            Op::ScatterNd { reduction } => {
                let (x, idx, upd) = (&ins[0], &ins[1], &ins[2]);
                let q = idx.extents.len();
                let k = idx.extents[q - 1];
                let dims: Vec<i64> = (0..k).map(|t| x.extents[t] as i64).collect();
                let dim_expr = nd_dim_expr(&dims, Expr::Var(q - 1));
                self.index_check(idx, &|mi: &[usize]| dims[mi[q - 1]], dim_expr, name, "ScatterND")?;
                let nu = q - 1;
                let mut hit = Expr::Const(Scalar::Bool(true));
                for (t, &d) in dims.iter().enumerate() {
                    let mut ii = vars(rank..rank + nu);
                    ii.push(Expr::i64(t as i64));
                    let eq = Expr::cmp(CmpOp::Equal, wrap(Expr::load(1, ii), Expr::i64(d)), Expr::Var(t));
                    hit = if t == 0 { eq } else { Expr::bin(BinaryOp::And, hit, eq) };
                }
                let mut domain = out_shape.clone();
                domain.extend(&idx.extents[..nu]);
                let mut u = vars(rank..rank + nu);
                u.extend(vars(k..rank));
                let ustr = strides_of(&idx.extents[..nu]);
                let mut flat_u = Expr::i64(0);
                for (i, &st) in ustr.iter().enumerate() {
                    flat_u = Expr::add(flat_u, Expr::mul(Expr::Var(rank + i), Expr::i64(st as i64)));
                }
                let uext: Vec<i64> = idx.extents[..nu].iter().map(|&e| e as i64).collect();
                let decode = |last: Expr| {
                    let mut ui: Vec<Expr> = ustr
                        .iter()
                        .zip(&uext)
                        .map(|(&st, &e)| {
                            let qt = Expr::div(last.clone(), Expr::i64(st as i64));
                            Expr::bin(BinaryOp::Mod { fmod: true }, qt, Expr::i64(e))
                        })
                        .collect();
                    ui.extend(vars(k..rank));
                    ui
                };
                self.lower_scatter(
                    name,
                    *reduction,
                    out,
                    [x.clone(), idx.clone(), upd.clone()],
                    domain,
                    hit,
                    u,
                    flat_u,
                    &decode,
                );
            }
            Op::Reshape { .. } | Op::BitCast { .. } | Op::Unsupported { .. } => unreachable!("handled by the caller"),
        }
        Ok(())
    }

    /// A convolution-like kernel over `[N, O, OH, OW, taps…]`: the sum of `body` (which
    /// loads `x` as operand 0 and `w` as operand 1) plus an optional per-channel bias.
    fn lower_matmul(&mut self, ins: Vec<View>, out: View, name: &str) {
        let (mut a, mut b) = (ins[0].clone(), ins[1].clone());
        if a.extents.len() == 1 {
            a.extents.insert(0, 1);
            a.strides.insert(0, 0);
        }
        if b.extents.len() == 1 {
            b.extents.push(1);
            b.strides.push(0);
        }
        let (m, k) = (a.extents[a.extents.len() - 2], a.extents[a.extents.len() - 1]);
        let n = b.extents[b.extents.len() - 1];
        let batch =
            kiln_ir::infer::broadcast_shapes(&[&a.extents[..a.extents.len() - 2], &b.extents[..b.extents.len() - 2]])
                .expect("typed");
        let nb = batch.len();
        let mut full = batch.clone();
        full.extend([m, k]);
        let a = broadcast_view(&a, &full);
        full.truncate(nb);
        full.extend([k, n]);
        let b = broadcast_view(&b, &full);
        let mut out_full = batch.clone();
        out_full.extend([m, n]);
        let mut o = View::dense(out.buffer, out.dtype, &out_full);
        o.offset = out.offset;
        let mut domain = out_full.clone();
        domain.push(k);
        let mut ai = vars(0..nb);
        ai.extend([Expr::Var(nb), Expr::Var(nb + 2)]);
        let mut bi = vars(0..nb);
        bi.extend([Expr::Var(nb + 2), Expr::Var(nb + 1)]);
        let dt = out.dtype;
        self.emit(Kernel {
            name: name.into(),
            domain,
            n_par: nb + 2,
            inputs: vec![a, b],
            output: o,
            body: Expr::mul(Expr::load(0, ai), Expr::load(1, bi)),
            reduction: Some(Reduction { combine: Combine::Add, init: Scalar::of(dt, 0.0), finalize: None }),
        });
    }
}

/// Lowers a verified, fully typed HIR graph into one LIR program.
pub fn lower(g: &Graph) -> Result<Program, PassError> {
    let mut l = Lowerer { g, prog: Program { name: g.name.clone(), ..Default::default() }, loc: HashMap::new() };
    for (i, &v) in g.inputs.iter().enumerate() {
        let t = g.ty(v);
        l.prog.inputs.push((g.value(v).name.clone(), t.dtype, t.shape.clone()));
        let b = l.prog.add_buffer(BufferKind::Input(i), t.bytes(), g.value(v).name.clone());
        l.loc.insert(v, Loc::dense(b));
    }
    // Graph outputs computed by a kernel are written straight into the caller's buffer.
    let mut out_bufs = Vec::new();
    let mut direct: HashMap<ValueId, usize> = HashMap::new();
    for (i, &v) in g.outputs.iter().enumerate() {
        let t = g.ty(v);
        let name = g.value(v).name.clone();
        l.prog.outputs.push((name.clone(), t.dtype, t.shape.clone()));
        out_bufs.push(l.prog.add_buffer(BufferKind::Output(i), t.bytes(), name));
        if let ValueDef::Node(n, _) = g.value(v).def {
            // A convolution computes channels-last (its fast schedule) and is transposed into
            // the row-major output at the end.
            let conv = matches!(g.node(n).op, Op::Conv { .. }) && t.shape.len() == 4 && t.dtype == DType::F32;
            if !matches!(g.node(n).op, Op::Reshape { .. } | Op::BitCast { .. }) && !conv && !direct.contains_key(&v) {
                direct.insert(v, i);
            }
        }
    }
    for &nid in g.order() {
        let node = g.node(nid);
        let ins: Vec<View> = node.inputs.iter().map(|&v| l.view_of(v)).collect();
        let out_v = node.outputs[0];
        // Reshape and BitCast are views of their input's bytes (row-major ones: a
        // channels-last input is copied to row-major first).
        if let Op::Reshape { .. } | Op::BitCast { .. } = node.op {
            let mut src = ins[0].clone();
            if l.loc[&node.inputs[0]].channels_last {
                let t = g.ty(node.inputs[0]);
                let dense = l.temp(t.dtype, &t.shape, format!("{}.row_major", g.value(node.inputs[0]).name));
                l.emit(elementwise(
                    &format!("{}/to_row_major", node.name),
                    dense.clone(),
                    vec![src],
                    Expr::load(0, vars(0..4)),
                ));
                src = dense;
            }
            l.loc.insert(out_v, Loc { buffer: src.buffer, offset: src.offset, channels_last: false });
            continue;
        }
        if let Op::Unsupported { op_type, .. } = &node.op {
            return Err(PassError::Unsupported { node: node.name.clone(), what: format!("op {op_type}") });
        }
        let t = g.ty(out_v).clone();
        let buffer = match direct.get(&out_v) {
            Some(&i) => out_bufs[i],
            None => {
                let b = l.prog.add_buffer(BufferKind::Activation, t.bytes(), g.value(out_v).name.clone());
                l.prog.buffers[b.0 as usize].fused = g.is_fused(out_v);
                b
            }
        };
        let in_locs: Vec<(Loc, &TensorType)> = node.inputs.iter().map(|&v| (l.loc[&v], g.ty(v))).collect();
        let channels_last = !direct.contains_key(&out_v) && choose_layout(&node.op, &in_locs, &t);
        let loc = Loc { buffer, offset: 0, channels_last };
        l.loc.insert(out_v, loc);
        let out = loc.view(t.dtype, &t.shape);
        l.lower_node(&node.op, ins, out, &node.name).map_err(|e| PassError::Lowering {
            node: node.name.clone(),
            op: node.op.name().into(),
            message: e,
        })?;
    }
    for (i, &v) in g.outputs.iter().enumerate() {
        if direct.get(&v) == Some(&i) {
            continue;
        }
        let src = l.view_of(v);
        let bytes = g.ty(v).bytes();
        if l.loc[&v].channels_last {
            let t = g.ty(v);
            let dst = View::dense(out_bufs[i], t.dtype, &t.shape);
            l.emit(elementwise(
                &format!("{}/to_row_major", g.value(v).name),
                dst,
                vec![src],
                Expr::load(0, vars(0..4)),
            ));
        } else if bytes > 0 {
            let sz = src.dtype.size();
            l.prog.instrs.push(Instr::Copy {
                dst: out_bufs[i],
                dst_offset: 0,
                src: src.buffer,
                src_offset: src.offset as usize * sz,
                bytes,
            });
        }
    }
    for ins in &mut l.prog.instrs {
        if let Instr::Kernel(k) = ins {
            order_loops(k);
        }
    }
    Ok(l.prog)
}
