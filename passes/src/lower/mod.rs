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
mod linalg;
mod norm;
mod pool;
mod reduce;
mod sample;
mod shape;
pub(crate) mod winograd;

use layout::{choose_layout, depthwise, order_loops, pointwise_on_row_major, row_major_conv};
pub(crate) use layout::{permute_parallel, stride_order, var_strides};

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
            view.strides = channels_last_strides(shape);
        }
        view
    }
}

struct Lowerer<'g> {
    g: &'g Graph,
    prog: Program,
    loc: HashMap<ValueId, Loc>,
    /// The node being lowered runs in a run-time case: a constant index out of range is an
    /// error only if the case is taken (a run-time check), not a compile error.
    guarded: bool,
    /// The source node of the HIR node being lowered: every kernel emitted for it computes it.
    origin: Vec<kiln_ir::lir::Origin>,
}

/// The buffers of a loop being lowered: its iteration number, its condition and its carried
/// values (dense views).
struct LoopBuffers {
    counter: View,
    cond: View,
    states: Vec<View>,
}

/// The strides of a rank-4 NCHW shape stored channels-last (NHWC).
fn channels_last_strides(shape: &[usize]) -> Vec<i64> {
    let [_, c, h, w] = shape[..] else { unreachable!("channels-last values are rank 4") };
    let (c, h, w) = (c as i64, h as i64, w as i64);
    vec![h * w * c, 1, w * c, c]
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
        origin: Vec::new(),
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

    /// The elements of a view of an f32 constant, densely in the view's own order.
    fn constant_f32(&self, v: &View) -> Option<kiln_ir::Tensor> {
        let BufferKind::Constant(t) = &self.prog.buffer(v.buffer).kind else { return None };
        let kiln_ir::Data::F32(data) = t.data() else { return None };
        let mut idx = vec![0usize; v.extents.len()];
        let mut out = Vec::with_capacity(v.numel());
        for _ in 0..v.numel() {
            let at = v.offset + idx.iter().zip(&v.strides).map(|(&i, &s)| i as i64 * s).sum::<i64>();
            out.push(data[at as usize]);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < v.extents[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Some(kiln_ir::Tensor::f32(v.extents.clone(), out))
    }

    fn emit(&mut self, mut k: Kernel) {
        k.origin = self.origin.clone();
        self.prog.instrs.push(Instr::Kernel(k));
    }

    /// Lowers one computing node: a short dispatch to the family that lowers its op.
    fn lower_node(&mut self, op: &Op, ins: Vec<View>, out: View, name: &str) -> Result<(), String> {
        let out_shape = out.extents.clone();
        let rank = out.extents.len();
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
                self.lower_gemm(alpha, beta, trans_a, trans_b, ins, out, name)?
            }
            Op::Conv { window, group } => self.lower_conv(window, group, &ins, out, name),
            Op::ConvTranspose { kernel, strides, dilations, pads, group, .. } => {
                self.lower_conv_transpose(kernel, strides, dilations, pads, group, ins, out, name)?
            }
            Op::MaxPool { .. } | Op::AveragePool { .. } => self.lower_pool(op, ins, out, name)?,
            Op::MaxPoolIndices { window, ceil_mode, column_major } => {
                self.lower_max_pool_indices(window, ceil_mode, column_major, ins, out, name)?
            }
            Op::BatchNorm { epsilon } => self.lower_batch_norm(epsilon, ins, out, name)?,
            Op::Lrn { size, alpha, beta, bias } => self.lower_lrn(size, alpha, beta, bias, ins, out, name)?,
            Op::Softmax { .. } | Op::LogSoftmax { .. } => self.lower_softmax(op, ins, out, name)?,
            Op::LayerNorm { .. } | Op::RmsNorm { .. } => {
                return Err("no backend lowers it whole yet: the `decompose` step expands it for every backend".into())
            }
            Op::Reduce { op: r, axes, .. } => self.lower_reduce(r, axes, ins, out, name)?,
            Op::Transpose { perm } => self.lower_transpose(perm, ins, out, name)?,
            Op::Slice { starts, steps, .. } => self.lower_slice(starts, steps, ins, out, name)?,
            Op::Concat { axis } => self.lower_concat(axis, ins, out, name)?,
            Op::Gather { axis } => self.lower_gather(axis, ins, out, name)?,
            Op::Expand { .. } => {
                let v = broadcast_view(&ins[0], &out_shape);
                self.emit(elementwise(name, out, vec![v], Expr::load(0, vars(0..rank))));
            }
            Op::ArgReduce { max, axis, select_last, .. } => {
                self.lower_arg_reduce(max, axis, select_last, ins, out, name)?
            }
            // A selection, which the backend runs as a routine (no compute definition does).
            Op::TopKIndices { axis, k, largest } => {
                let input = ins[0].clone();
                self.prog.instrs.push(Instr::TopK { input, output: out, axis: *axis, k: *k, largest: *largest });
            }
            // Scans whose output size depends on data: routines of each backend.
            Op::NonZero => self.prog.instrs.push(Instr::NonZero { input: ins[0].clone(), output: out }),
            Op::NonMaxSuppression { center_point_box } => {
                let n = ins[0].extents[1];
                let scratch = self.temp(DType::I64, &[2 * n], format!("{name}.scratch"));
                let [boxes, scores, m, iou, score] = &ins[..] else { unreachable!("typed: five inputs") };
                let scalar = |v: &View| View { extents: vec![], strides: vec![], ..v.clone() };
                self.prog.instrs.push(Instr::NonMaxSuppression {
                    boxes: boxes.clone(),
                    scores: scores.clone(),
                    params: [scalar(m), scalar(iou), scalar(score)],
                    output: out,
                    scratch,
                    center_point_box: *center_point_box,
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
            Op::GatherNd { batch_dims } => self.lower_gather_nd(batch_dims, ins, out, name)?,
            Op::ScatterElements { axis, reduction } => self.lower_scatter_elements(axis, reduction, ins, out, name)?,
            Op::ScatterNd { reduction } => self.lower_scatter_nd(reduction, ins, out, name)?,
            Op::Reshape { .. }
            | Op::BitCast { .. }
            | Op::Merge
            | Op::Assert { .. }
            | Op::LoopBegin
            | Op::LoopEnd { .. }
            | Op::Unsupported { .. } => unreachable!("handled by the caller"),
        }
        Ok(())
    }
}

/// Lowers a verified, fully typed HIR graph into one LIR program.
pub fn lower(g: &Graph) -> Result<Program, PassError> {
    let mut l = Lowerer {
        g,
        prog: Program { name: g.name.clone(), ..Default::default() },
        loc: HashMap::new(),
        guarded: false,
        origin: Vec::new(),
    };
    // Values whose leading axis is sized at run time: their buffers are marked once lowered.
    // With a run-time dim on an inner axis, the inputs and outputs are marked and the LIR
    // walk (`rows::mark`) carries the marks through the kernels.
    let inner = crate::rows::inner_dims(g);
    let rows = if inner { HashMap::new() } else { crate::rows::analyze(g, &HashMap::new(), false)? };
    l.prog.symbols = g.symbols.clone();
    l.prog.dim_slots = g.symbols.len();
    for (i, &v) in g.inputs.iter().enumerate() {
        let t = g.ty(v);
        let slots = g
            .input_syms
            .get(&i)
            .map_or_else(Vec::new, |axes| axes.iter().map(|s| s.map_or(-1, |s| s as i32)).collect());
        l.prog.input_slots.push(slots);
        l.prog.inputs.push((g.value(v).name.clone(), t.dtype, t.shape.clone()));
        let b = l.prog.add_buffer(BufferKind::Input(i), t.bytes(), g.value(v).name.clone());
        if inner {
            if let Some(axes) = g.input_syms.get(&i) {
                l.prog.buffers[b.0 as usize].rows = crate::rows::axis_marks(&t.shape, t.dtype, axes);
            }
        }
        l.loc.insert(v, Loc::dense(b));
    }
    // Graph outputs computed by a kernel are written straight into the caller's buffer.
    let mut out_bufs = Vec::new();
    let mut direct: HashMap<ValueId, usize> = HashMap::new();
    // Outputs of convolutions that may turn out row-major (`pointwise_on_row_major`, known
    // once their input's layout is): written directly then.
    let mut conv_outputs: HashMap<ValueId, usize> = HashMap::new();
    for (i, &v) in g.outputs.iter().enumerate() {
        let t = g.ty(v);
        let name = g.value(v).name.clone();
        l.prog.outputs.push((name.clone(), t.dtype, t.shape.clone()));
        out_bufs.push(l.prog.add_buffer(BufferKind::Output(i), t.bytes(), name));
        if let ValueDef::Node(n, _) = g.value(v).def {
            // A convolution computes channels-last (its fast schedule) and is transposed into
            // the row-major output at the end; a depthwise one writes it directly (row-major,
            // its loop along the image rows).
            let node = g.node(n);
            let conv = match node.op {
                Op::Conv { group, .. } => !depthwise(group, &g.ty(node.inputs[1]).shape),
                _ => false,
            };
            let conv = conv && t.shape.len() == 4 && t.dtype == DType::F32;
            let view = matches!(
                g.node(n).op,
                Op::Reshape { .. } | Op::BitCast { .. } | Op::Assert { .. } | Op::LoopBegin | Op::LoopEnd { .. }
            );
            if !view && !conv && !direct.contains_key(&v) {
                direct.insert(v, i);
            }
            if conv {
                conv_outputs.entry(v).or_insert(i);
            }
        }
    }
    // An output that is a Reshape (or BitCast) of a value used nowhere else: that value is
    // computed straight into the output buffer, and the reshape is a view of it, so no copy.
    let uses = g.use_counts();
    for (i, &v) in g.outputs.iter().enumerate() {
        let ValueDef::Node(n, _) = g.value(v).def else { continue };
        let node = g.node(n);
        if !matches!(node.op, Op::Reshape { .. } | Op::BitCast { .. } | Op::Assert { .. }) || direct.contains_key(&v) {
            continue;
        }
        let u = node.inputs[0];
        let ValueDef::Node(un, _) = g.value(u).def else { continue };
        let producer = &g.node(un).op;
        let layout_free =
            !matches!(producer, Op::Conv { .. } | Op::Reshape { .. } | Op::BitCast { .. } | Op::Assert { .. });
        if layout_free && uses.get(&u) == Some(&1) && !g.outputs.contains(&u) && !direct.contains_key(&u) {
            direct.insert(u, i);
        }
    }
    // The run-time cases open at this point of the program, outermost first.
    let mut open: Vec<kiln_ir::Guard> = Vec::new();
    let mut loops: HashMap<ValueId, LoopBuffers> = HashMap::new();
    for &nid in g.order() {
        let node = g.node(nid);
        let lowering_err =
            |message: String| PassError::Lowering { node: node.name.clone(), op: node.op.name().into(), message };
        // A loop's end still runs in its loop (the copies to the carried values).
        let mut guard = node.guard.clone();
        if let Op::LoopEnd { .. } = node.op {
            guard.push(kiln_ir::Guard::of_loop(node.inputs[0]));
        }
        l.enter_cases(&mut open, &guard).map_err(lowering_err)?;
        l.guarded = !node.guard.is_empty();
        l.origin = g.origin_of(&node.name).into_iter().collect();
        let ins: Vec<View> = node.inputs.iter().map(|&v| l.view_of(v)).collect();
        let out_v = node.outputs[0];
        match &node.op {
            Op::LoopBegin => {
                let bufs = l.lower_loop_begin(node, &ins);
                loops.insert(out_v, bufs);
                open.push(kiln_ir::Guard::of_loop(out_v));
                continue;
            }
            Op::LoopEnd { states, rows } => {
                let bufs = loops.remove(&node.inputs[0]).ok_or_else(|| lowering_err("no loop begins it".into()))?;
                l.lower_loop_end(node, &ins, *states, *rows, &bufs);
                open.pop();
                continue;
            }
            _ => {}
        }
        // An assert is a view of its first input, after a check of its second.
        if let Op::Assert { message } = &node.op {
            l.emit_assert(&ins[1], &node.name, message.clone());
            let src = l.loc[&node.inputs[0]];
            l.loc.insert(out_v, src);
            continue;
        }
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
        let in_locs: Vec<(Loc, &TensorType)> = node.inputs.iter().map(|&v| (l.loc[&v], g.ty(v))).collect();
        if let Some(&i) = conv_outputs.get(&out_v) {
            let row_major = pointwise_on_row_major(&node.op, &in_locs) || row_major_conv(&node.op, &in_locs);
            if row_major && !direct.values().any(|&j| j == i) {
                direct.insert(out_v, i);
            }
        }
        let buffer = match direct.get(&out_v) {
            Some(&i) => out_bufs[i],
            None => {
                let b = l.prog.add_buffer(BufferKind::Activation, t.bytes(), g.value(out_v).name.clone());
                l.prog.buffers[b.0 as usize].fused = g.is_fused(out_v);
                b
            }
        };
        let channels_last =
            !direct.contains_key(&out_v) && !matches!(node.op, Op::Merge) && choose_layout(&node.op, &in_locs, &t);
        let loc = Loc { buffer, offset: 0, channels_last };
        l.loc.insert(out_v, loc);
        if let Op::Merge = node.op {
            let shaped = g.outputs.iter().enumerate().any(|(i, &o)| o == out_v && g.output_shapes.contains_key(&i));
            l.lower_merge(node, &ins, buffer, shaped).map_err(|e| PassError::Lowering {
                node: node.name.clone(),
                op: node.op.name().into(),
                message: e,
            })?;
            continue;
        }
        let out = loc.view(t.dtype, &t.shape);
        l.lower_node(&node.op, ins, out, &node.name).map_err(|e| PassError::Lowering {
            node: node.name.clone(),
            op: node.op.name().into(),
            message: e,
        })?;
    }
    l.enter_cases(&mut open, &[]).map_err(|message| PassError::Lowering {
        node: g.name.clone(),
        op: "graph".into(),
        message,
    })?;
    for (i, &v) in g.outputs.iter().enumerate() {
        if direct.get(&v) == Some(&i) {
            continue;
        }
        let src = l.view_of(v);
        if g.output_shapes.contains_key(&i) {
            // Its elements are dense at the start of its value's buffer, in the case's shape.
            let bytes = l.prog.buffer(out_bufs[i]).bytes.min(l.prog.buffer(l.loc[&v].buffer).bytes);
            l.copy_to_output(out_bufs[i], &src, bytes);
            continue;
        }
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
        } else {
            l.copy_to_output(out_bufs[i], &src, bytes);
        }
    }
    // Outputs whose shape is decided at run time: their sizes to the dim slots.
    l.prog.output_slots = vec![Vec::new(); g.outputs.len()];
    for (i, &v) in g.outputs.iter().enumerate() {
        let t = g.ty(v);
        let axes = match rows.get(&v) {
            Some(&s) => (0..t.shape.len()).map(|d| (d == 0).then_some(s)).collect(),
            None => match g.output_syms.get(&i) {
                Some(axes) if inner => axes.clone(),
                _ => continue,
            },
        };
        l.prog.output_slots[i] = axes.iter().map(|a: &Option<usize>| a.map_or(-1, |s| s as i32)).collect();
        l.prog.buffers[out_bufs[i].0 as usize].rows = crate::rows::axis_marks(&t.shape, t.dtype, &axes);
    }
    let locs = &l.loc;
    crate::rows::mark_buffers(&mut l.prog, g, &rows, |v| locs.get(&v).map(|loc| loc.buffer));
    for (&i, r) in &g.output_shapes {
        let src = l.view_of(r.dims);
        let n = r.bounds.len();
        if src.dtype != DType::I64 || src.numel() != n {
            return Err(PassError::Lowering {
                node: g.value(g.outputs[i]).name.clone(),
                op: "output".into(),
                message: format!("its run-time shape is {} with {} elements for rank {n}", src.dtype, src.numel()),
            });
        }
        let first = l.prog.dim_slots;
        l.prog.dim_slots += n;
        l.prog.output_slots[i] = (first as i32..(first + n) as i32).collect();
        l.prog.outputs[i].2 = r.bounds.clone();
        let src = View { extents: vec![n], strides: vec![1], ..src };
        l.prog.instrs.push(Instr::SetDims { slots: (first..first + n).collect(), src });
    }
    for ins in &mut l.prog.instrs {
        if let Instr::Kernel(k) = ins {
            order_loops(k);
        }
    }
    crate::rows::mark(&mut l.prog);
    Ok(l.prog)
}

impl Lowerer<'_> {
    /// Closes and opens `Case` blocks so that the instructions emitted next run under
    /// `guard` (`open`: the blocks open now, outermost first). A loop's block is opened by
    /// its `LoopBegin` and closed by its `LoopEnd` only, so a node of a loop's body outside
    /// them (a schedule that split the body) is an error.
    fn enter_cases(&mut self, open: &mut Vec<kiln_ir::Guard>, guard: &[kiln_ir::Guard]) -> Result<(), String> {
        while !guard.starts_with(open) {
            if open.last().is_some_and(|c| c.is_loop()) {
                return Err("a node after a loop runs in it (the loop's body is not one run of nodes)".into());
            }
            open.pop();
            self.prog.instrs.push(Instr::EndCase);
        }
        for &c in &guard[open.len()..] {
            if c.is_loop() {
                return Err("a node of a loop's body is scheduled outside the loop".into());
            }
            let key = self.view_of(c.key);
            self.prog.instrs.push(Instr::Case { key, value: c.value });
            open.push(c);
        }
        Ok(())
    }

    /// `bytes` bytes from the start of `src` (a row-major view) to output buffer `out`, unless
    /// they are there already.
    fn copy_to_output(&mut self, out: BufferId, src: &View, bytes: usize) {
        if bytes > 0 && !(src.buffer == out && src.offset == 0) {
            let src_offset = src.offset as usize * src.dtype.size();
            self.prog.instrs.push(Instr::Copy { dst: out, dst_offset: 0, src: src.buffer, src_offset, bytes });
        }
    }

    /// A dense copy of `src` (any layout) to `dst` (dense, of `src`'s shape).
    fn copy_into(&mut self, name: &str, src: &View, dst: View) {
        let rank = src.extents.len();
        let src = View { extents: dst.extents.clone(), ..src.clone() };
        self.emit(elementwise(name, dst, vec![src], Expr::load(0, vars(0..rank))));
    }

    /// A loop's start: buffers for its iteration number, condition and carried values, set
    /// from its inputs, then the `Loop` instruction.
    fn lower_loop_begin(&mut self, node: &kiln_ir::Node, ins: &[View]) -> LoopBuffers {
        let name = &node.name;
        let counter = self.temp(DType::I64, &[], format!("{name}.iteration"));
        let zero = kiln_ir::Tensor::i64(vec![], vec![0]);
        let zero = self.prog.add_buffer(BufferKind::Constant(zero), 8, format!("{name}.zero"));
        self.prog.instrs.push(Instr::Copy { dst: counter.buffer, dst_offset: 0, src: zero, src_offset: 0, bytes: 8 });
        let scalar = |v: &View| View { extents: vec![], strides: vec![], ..v.clone() };
        let cond = self.temp(DType::Bool, &[], format!("{name}.condition"));
        self.copy_into(&format!("{name}/condition"), &scalar(&ins[1]), cond.clone());
        let mut states = Vec::new();
        for (k, &v) in node.outputs[1..].iter().enumerate() {
            let t = self.g.ty(v).clone();
            let st = self.temp(t.dtype, &t.shape, format!("{}.state", self.g.value(v).name));
            self.copy_into(&format!("{name}/init{k}"), &ins[2 + k], st.clone());
            self.loc.insert(v, Loc::dense(st.buffer));
            states.push(st);
        }
        self.loc.insert(node.outputs[0], Loc::dense(counter.buffer));
        self.prog.instrs.push(Instr::Loop { counter: counter.clone(), trip: scalar(&ins[0]), cond: cond.clone() });
        LoopBuffers { counter, cond, states }
    }

    /// A loop's end, in the loop: the next condition and carried values copied over the
    /// current ones (through copies of their own where a next value is another carried
    /// value, which the copies would overwrite first), each scan value to its row, then
    /// `EndLoop`. Its results are the carried values' buffers, the stacked scan outputs and
    /// the iteration count.
    fn lower_loop_end(&mut self, node: &kiln_ir::Node, ins: &[View], states: usize, rows: usize, b: &LoopBuffers) {
        let name = node.name.clone();
        let scalar = |v: &View| View { extents: vec![], strides: vec![], ..v.clone() };
        // The scan values first: one may be a carried value as this iteration saw it.
        let mut stacked = Vec::new();
        for (j, scan) in ins[2 + states..].iter().enumerate() {
            let bytes = scan.numel() * scan.dtype.size();
            let dense = if scan.is_dense() {
                scan.clone()
            } else {
                let t = self.temp(scan.dtype, &scan.extents, format!("{name}.scan{j}"));
                self.copy_into(&format!("{name}/scan{j}"), scan, t.clone());
                t
            };
            let out = node.outputs[states + j];
            let dst = self.prog.add_buffer(BufferKind::Activation, bytes * rows, self.g.value(out).name.clone());
            self.prog.instrs.push(Instr::CopyRow {
                dst,
                dst_offset: 0,
                src: dense.buffer,
                src_offset: dense.offset as usize * dense.dtype.size(),
                bytes,
                row: b.counter.clone(),
                rows,
            });
            stacked.push((out, dst));
        }
        self.copy_into(&format!("{name}/condition"), &scalar(&ins[1]), b.cond.clone());
        let state_bufs: Vec<BufferId> = b.states.iter().map(|v| v.buffer).collect();
        let mut nexts = Vec::new();
        for (k, next) in ins[2..2 + states].iter().enumerate() {
            let st = &b.states[k];
            let same = next.buffer == st.buffer && next.offset == st.offset && next.strides == st.strides;
            if same {
                nexts.push(None);
            } else if state_bufs.contains(&next.buffer) {
                let t = self.temp(next.dtype, &next.extents, format!("{name}.next{k}"));
                self.copy_into(&format!("{name}/hold{k}"), next, t.clone());
                nexts.push(Some(t));
            } else {
                nexts.push(Some(next.clone()));
            }
        }
        for (k, next) in nexts.into_iter().enumerate() {
            if let Some(next) = next {
                self.copy_into(&format!("{name}/next{k}"), &next, b.states[k].clone());
            }
        }
        self.prog.instrs.push(Instr::EndLoop);
        for (k, st) in b.states.iter().enumerate() {
            self.loc.insert(node.outputs[k], Loc::dense(st.buffer));
        }
        for (out, dst) in stacked {
            self.loc.insert(out, Loc::dense(dst));
        }
        self.loc
            .insert(*node.outputs.last().expect("a loop's end counts its iterations"), Loc::dense(b.counter.buffer));
    }

    /// A `Merge`: in each case, a copy of that case's value, dense in its own shape, to the
    /// start of `buffer`. `shaped`: the value is a graph output whose shape the code reports,
    /// so the cases may differ in shape; otherwise they must all have the merged one.
    fn lower_merge(
        &mut self,
        node: &kiln_ir::Node,
        ins: &[View],
        buffer: BufferId,
        shaped: bool,
    ) -> Result<(), String> {
        let merged = &self.g.ty(node.outputs[0]).shape;
        for (j, src) in ins[1..].iter().enumerate() {
            let shape = self.g.ty(node.inputs[1 + j]).shape.clone();
            if !shaped && shape != *merged {
                return Err(format!(
                    "case {j} gives shape {shape:?}, another {merged:?}: a value whose shape is decided at run time \
                     can only be a graph output yet"
                ));
            }
            self.prog.instrs.push(Instr::Case { key: ins[0].clone(), value: j as i64 });
            let dst = View::dense(buffer, src.dtype, &shape);
            let rank = shape.len();
            self.emit(elementwise(
                &format!("{}/case{j}", node.name),
                dst,
                vec![src.clone()],
                Expr::load(0, vars(0..rank)),
            ));
            self.prog.instrs.push(Instr::EndCase);
        }
        Ok(())
    }

    /// Stops the run with `message` when an element of `ok` (bool) is false: a kernel counts
    /// them into a flag that an `Assert` checks.
    fn emit_assert(&mut self, ok: &View, name: &str, message: String) {
        let r = ok.extents.len();
        let bad = Expr::select(Expr::load(0, vars(0..r)), Expr::i64(0), Expr::i64(1));
        self.emit_count_check(ok, bad, name, message);
    }

    /// A check kernel summing `bad` (an i64 expression over `view`'s domain, its operand 0)
    /// into a flag, and the `Assert` that stops the run with `message` when it is not 0.
    pub(super) fn emit_count_check(&mut self, view: &View, bad: Expr, name: &str, message: String) {
        let flag = self.temp(DType::I64, &[], format!("{name}.failed"));
        self.emit(Kernel {
            name: format!("{name}.check"),
            domain: view.extents.clone(),
            n_par: 0,
            inputs: vec![view.clone()],
            output: View { extents: vec![], strides: vec![], ..flag.clone() },
            body: bad,
            reduction: Some(Reduction { combine: Combine::Add, init: Scalar::I64(0), finalize: None }),
            origin: Vec::new(),
        });
        self.prog.instrs.push(Instr::Assert { buffer: flag.buffer, message });
    }
}
