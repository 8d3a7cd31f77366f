//! The recurrent layers RNN, GRU and LSTM, unrolled over the (static) sequence length into
//! Gemm, Slice, elementwise ops and Concat.
//!
//! Per direction, the input projection of every time step is one Gemm
//! (`X·Wᵀ + Wb (+ Rb)` over `[S·B, I]`); each step is then one Gemm `H·Rᵀ + (that step's
//! projection)` followed by the gates.
//! Gate order follows the ONNX spec: RNN `i`; GRU `z, r, h`; LSTM `i, o, f, c` (peepholes
//! `i, o, f`). `clip` bounds the input of every gate activation. `sequence_lens` must be
//! static: a step at or past a batch entry's length leaves its state unchanged and writes
//! zeros to `Y` (the reverse direction starts at the entry's last valid step, since its state
//! is held at the initial one until then). Activation parameters (`activation_alpha`,
//! `activation_beta`) are consumed in order by the activations that take them, each missing
//! one defaulting to the parameter of the ONNX op of that name.

use kiln_ir::{BinaryOp as B, CmpOp, DType, Op, UnaryOp as U, ValueId};

use super::builders::{bin, cmp, konst_as, reshape, scalar, slice_axis, tmp, un};
use super::{invalid, unsupported, NodeCx, OpResult};

/// The most time steps (per direction) a recurrent layer unrolls.
const MAX_STEPS: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cell {
    Rnn,
    Gru,
    Lstm,
}

impl Cell {
    /// Gates per hidden unit (the row blocks of W and R).
    fn gates(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Gru => 3,
            Cell::Lstm => 4,
        }
    }
    /// Default activations of one direction.
    fn default_acts(self) -> &'static [&'static str] {
        match self {
            Cell::Rnn => &["Tanh"],
            Cell::Gru => &["Sigmoid", "Tanh"],
            Cell::Lstm => &["Sigmoid", "Tanh", "Tanh"],
        }
    }
}

/// An activation function of a recurrent layer, with its parameters resolved.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Act {
    Relu,
    Tanh,
    Sigmoid,
    Affine(f32, f32),
    LeakyRelu(f32),
    ThresholdedRelu(f32),
    ScaledTanh(f32, f32),
    HardSigmoid(f32, f32),
    Elu(f32),
    Softsign,
    Softplus,
}

/// Resolves activation names, taking alphas and betas from the front of the given lists in
/// order (each missing one is the op's default).
fn parse_acts(names: &[String], alphas: &[f32], betas: &[f32]) -> OpResult<Vec<Act>> {
    let (mut ai, mut bi) = (alphas.iter().copied(), betas.iter().copied());
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let mut alpha = |d: f32| ai.next().unwrap_or(d);
        let act = match n.to_ascii_lowercase().as_str() {
            "relu" => Act::Relu,
            "tanh" => Act::Tanh,
            "sigmoid" => Act::Sigmoid,
            "affine" => {
                let a = alpha(1.0);
                Act::Affine(a, bi.next().unwrap_or(0.0))
            }
            "leakyrelu" => Act::LeakyRelu(alpha(0.01)),
            "thresholdedrelu" => Act::ThresholdedRelu(alpha(1.0)),
            "scaledtanh" => {
                let a = alpha(1.0);
                Act::ScaledTanh(a, bi.next().unwrap_or(1.0))
            }
            "hardsigmoid" => {
                let a = alpha(0.2);
                Act::HardSigmoid(a, bi.next().unwrap_or(0.5))
            }
            "elu" => Act::Elu(alpha(1.0)),
            "softsign" => Act::Softsign,
            "softplus" => Act::Softplus,
            other => return unsupported(format!("activation {other:?}")),
        };
        out.push(act);
    }
    Ok(out)
}

/// Applies `act` to `x` (f32), clipping its input to `[-clip, clip]` first.
fn apply(cx: &mut NodeCx, act: Act, clip: Option<f32>, x: ValueId) -> OpResult<ValueId> {
    let x = match clip {
        Some(c) => un(cx, U::Clip { lo: -f64::from(c), hi: f64::from(c) }, x)?,
        None => x,
    };
    let f = |cx: &mut NodeCx, v: f32| scalar(cx, DType::F32, f64::from(v));
    match act {
        Act::Relu => un(cx, U::Relu, x),
        Act::Tanh => un(cx, U::Tanh, x),
        Act::Sigmoid => un(cx, U::Sigmoid, x),
        Act::Affine(a, b) => {
            let (a, b) = (f(cx, a), f(cx, b));
            let ax = bin(cx, B::Mul, x, a)?;
            bin(cx, B::Add, ax, b)
        }
        Act::LeakyRelu(alpha) => un(cx, U::LeakyRelu { alpha }, x),
        Act::ThresholdedRelu(a) => {
            let (a, zero) = (f(cx, a), f(cx, 0.0));
            let c = cmp(cx, CmpOp::Greater, x, a)?;
            tmp(cx, Op::Where, &[c, x, zero], "w")
        }
        Act::ScaledTanh(a, b) => {
            let (a, b) = (f(cx, a), f(cx, b));
            let bx = bin(cx, B::Mul, x, b)?;
            let t = un(cx, U::Tanh, bx)?;
            bin(cx, B::Mul, t, a)
        }
        Act::HardSigmoid(alpha, beta) => un(cx, U::HardSigmoid { alpha, beta }, x),
        Act::Elu(a) => {
            let e = un(cx, U::Exp, x)?;
            let one = f(cx, 1.0);
            let e1 = bin(cx, B::Sub, e, one)?;
            let a = f(cx, a);
            let neg = bin(cx, B::Mul, e1, a)?;
            let zero = f(cx, 0.0);
            let c = cmp(cx, CmpOp::Less, x, zero)?;
            tmp(cx, Op::Where, &[c, neg, x], "w")
        }
        Act::Softsign => {
            let a = un(cx, U::Abs, x)?;
            let one = f(cx, 1.0);
            let d = bin(cx, B::Add, a, one)?;
            bin(cx, B::Div, x, d)
        }
        Act::Softplus => super::activation::softplus_of(cx, x),
    }
}

/// Direction `d` of a `[D, ...]` parameter, without the direction axis.
fn direction_of(cx: &mut NodeCx, x: ValueId, d: usize) -> OpResult<ValueId> {
    let s = slice_axis(cx, x, 0, d, 1)?;
    let shape = cx.shape(x)[1..].to_vec();
    reshape(cx, s, shape)
}

/// Checks that input `what` has shape `want`.
fn check_shape(cx: &NodeCx, v: ValueId, what: &str, want: &[usize]) -> OpResult<()> {
    let s = cx.shape(v);
    if s != want {
        return invalid(format!("{what} has shape {s:?}, expected {want:?}"));
    }
    if cx.ty(v).dtype != DType::F32 {
        return unsupported(format!("{} with {what} of type {} (only float32)", cx.op_type(), cx.ty(v).dtype));
    }
    Ok(())
}

/// One direction's parameters and initial state, each without the direction axis.
struct Dir {
    /// `[G·H, I]`, `[G·H, H]`.
    w: ValueId,
    r: ValueId,
    /// `Wb`, `Rb` (`[G·H]` each), if B is given.
    bias: Option<(ValueId, ValueId)>,
    /// `[3·H]` peepholes (LSTM).
    p: Option<ValueId>,
    /// `[B, H]`.
    h0: ValueId,
    c0: ValueId,
    /// This direction's activations.
    acts: Vec<Act>,
}

/// The static description of the layer shared by both directions.
struct Layer {
    cell: Cell,
    hidden: usize,
    batch: usize,
    steps: usize,
    clip: Option<f32>,
    input_forget: bool,
    linear_before_reset: bool,
    /// Per step, the batch entries still running (None: all of them).
    masks: Vec<Option<Vec<bool>>>,
}

/// What every step of one direction reuses: the step Gemm (`A·Bᵀ + C`), the constant one and
/// the slices of the parameters that do not change between steps.
struct StepParams {
    gemm: Op,
    /// The scalar 1 (LSTM with `input_forget`: `f = 1 - i`).
    one: ValueId,
    /// LSTM peepholes `(Pi, Po, Pf)`, `[H]` each.
    peep: Option<(ValueId, ValueId, ValueId)>,
    /// GRU: the rows of R for the `z, r` gates (`[2·H, H]`) and for the `h` gate (`[H, H]`),
    /// and `Rbh` (`[H]`) if B is given.
    r_zr: Option<ValueId>,
    r_h: Option<ValueId>,
    rb_h: Option<ValueId>,
}

/// Slices the per-gate peepholes and GRU's recurrent parameters out of `dir`, once per
/// direction.
fn step_params(cx: &mut NodeCx, l: &Layer, dir: &Dir, one: ValueId) -> OpResult<StepParams> {
    let h = l.hidden;
    // Per-gate peepholes and recurrent parameters that do not change between steps.
    let peep = match dir.p {
        Some(p) => {
            let pi = slice_axis(cx, p, 0, 0, h)?;
            let po = slice_axis(cx, p, 0, h, h)?;
            let pf = slice_axis(cx, p, 0, 2 * h, h)?;
            Some((pi, po, pf))
        }
        None => None,
    };
    let (r_zr, r_h, rb_h) = if l.cell == Cell::Gru {
        let r_zr = slice_axis(cx, dir.r, 0, 0, 2 * h)?;
        let r_h = slice_axis(cx, dir.r, 0, 2 * h, h)?;
        let rb_h = match dir.bias {
            Some((_, rb)) => Some(slice_axis(cx, rb, 0, 2 * h, h)?),
            None => None,
        };
        (Some(r_zr), Some(r_h), rb_h)
    } else {
        (None, None, None)
    };
    let gemm = Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true };
    Ok(StepParams { gemm, one, peep, r_zr, r_h, rb_h })
}

/// One GRU step from state `hs` and this step's input projection `xt` (`[B, 3·H]`): the new
/// hidden state.
fn gru_cell(cx: &mut NodeCx, l: &Layer, dir: &Dir, sp: &StepParams, hs: ValueId, xt: ValueId) -> OpResult<ValueId> {
    let (h, gemm) = (l.hidden, &sp.gemm);
    let (f, g) = (dir.acts[0], dir.acts[1]);
    let x_zr = slice_axis(cx, xt, 1, 0, 2 * h)?;
    let x_h = slice_axis(cx, xt, 1, 2 * h, h)?;
    let zr = tmp(cx, gemm.clone(), &[hs, sp.r_zr.unwrap(), x_zr], "zr")?;
    let z_pre = slice_axis(cx, zr, 1, 0, h)?;
    let r_pre = slice_axis(cx, zr, 1, h, h)?;
    let z = apply(cx, f, l.clip, z_pre)?;
    let r = apply(cx, f, l.clip, r_pre)?;
    let hh = if l.linear_before_reset {
        let mut ins = vec![hs, sp.r_h.unwrap()];
        ins.extend(sp.rb_h);
        let hr = tmp(cx, gemm.clone(), &ins, "hr")?;
        bin(cx, B::Mul, r, hr)?
    } else {
        // Rbh is already part of the input projection.
        let rh = bin(cx, B::Mul, r, hs)?;
        tmp(cx, gemm.clone(), &[rh, sp.r_h.unwrap()], "hr")?
    };
    let pre = bin(cx, B::Add, x_h, hh)?;
    let cand = apply(cx, g, l.clip, pre)?;
    // (1 - z)·h~ + z·H  =  h~ + z·(H - h~)
    let d = bin(cx, B::Sub, hs, cand)?;
    let zd = bin(cx, B::Mul, z, d)?;
    bin(cx, B::Add, cand, zd)
}

/// One LSTM step from states `hs`, `cs` and this step's input projection `xt` (`[B, 4·H]`):
/// the new hidden and cell states.
fn lstm_cell(
    cx: &mut NodeCx,
    l: &Layer,
    dir: &Dir,
    sp: &StepParams,
    hs: ValueId,
    cs: ValueId,
    xt: ValueId,
) -> OpResult<(ValueId, ValueId)> {
    let h = l.hidden;
    let (f, g, hact) = (dir.acts[0], dir.acts[1], dir.acts[2]);
    let gates = tmp(cx, sp.gemm.clone(), &[hs, dir.r, xt], "gates")?;
    let mut i_pre = slice_axis(cx, gates, 1, 0, h)?;
    let mut o_pre = slice_axis(cx, gates, 1, h, h)?;
    let mut f_pre = slice_axis(cx, gates, 1, 2 * h, h)?;
    let c_pre = slice_axis(cx, gates, 1, 3 * h, h)?;
    if let Some((pi, _, pf)) = sp.peep {
        let a = bin(cx, B::Mul, pi, cs)?;
        i_pre = bin(cx, B::Add, i_pre, a)?;
        let b = bin(cx, B::Mul, pf, cs)?;
        f_pre = bin(cx, B::Add, f_pre, b)?;
    }
    let i = apply(cx, f, l.clip, i_pre)?;
    let fg = if l.input_forget { bin(cx, B::Sub, sp.one, i)? } else { apply(cx, f, l.clip, f_pre)? };
    let c = apply(cx, g, l.clip, c_pre)?;
    let fc = bin(cx, B::Mul, fg, cs)?;
    let ic = bin(cx, B::Mul, i, c)?;
    let c_new = bin(cx, B::Add, fc, ic)?;
    if let Some((_, po, _)) = sp.peep {
        let a = bin(cx, B::Mul, po, c_new)?;
        o_pre = bin(cx, B::Add, o_pre, a)?;
    }
    let o = apply(cx, f, l.clip, o_pre)?;
    let hc = apply(cx, hact, None, c_new)?;
    Ok((bin(cx, B::Mul, o, hc)?, c_new))
}

/// One step of the layer's cell from states `hs`, `cs` and this step's input projection
/// `xt`: the new hidden and cell states (the cell state passes through for RNN and GRU).
fn cell_step(
    cx: &mut NodeCx,
    l: &Layer,
    dir: &Dir,
    sp: &StepParams,
    hs: ValueId,
    cs: ValueId,
    xt: ValueId,
) -> OpResult<(ValueId, ValueId)> {
    Ok(match l.cell {
        Cell::Rnn => {
            let pre = tmp(cx, sp.gemm.clone(), &[hs, dir.r, xt], "pre")?;
            (apply(cx, dir.acts[0], l.clip, pre)?, cs)
        }
        Cell::Gru => (gru_cell(cx, l, dir, sp, hs, xt)?, cs),
        Cell::Lstm => lstm_cell(cx, l, dir, sp, hs, cs, xt)?,
    })
}

/// The `sequence_lens` masking of one step: where batch entry `b` has ended (`m[b]` false) the
/// output is zero and the states `hs`, `cs` hold; elsewhere they take `h_new`, `c_new`.
/// Returns the step's output and the next hidden and cell states.
fn masked_step(
    cx: &mut NodeCx,
    l: &Layer,
    m: &[bool],
    zero: ValueId,
    (h_new, c_new): (ValueId, ValueId),
    hs: ValueId,
    cs: ValueId,
) -> OpResult<(ValueId, ValueId, ValueId)> {
    let mv: Vec<f64> = m.iter().map(|&b| f64::from(u8::from(b))).collect();
    let mk = konst_as(cx, DType::Bool, vec![l.batch, 1], &mv);
    let y = tmp(cx, Op::Where, &[mk, h_new, zero], "y")?;
    let hs = tmp(cx, Op::Where, &[mk, h_new, hs], "h")?;
    let cs = if l.cell == Cell::Lstm { tmp(cx, Op::Where, &[mk, c_new, cs], "c")? } else { cs };
    Ok((y, hs, cs))
}

/// Runs one direction over `xw` (`[S·B, G·H]`, the input projection with its bias).
/// Returns the per-step outputs in time order (`[B, H]` each), the last hidden and cell state.
fn run_direction(
    cx: &mut NodeCx,
    l: &Layer,
    dir: &Dir,
    xw: ValueId,
    reverse: bool,
) -> OpResult<(Vec<ValueId>, ValueId, ValueId)> {
    let (h, bt) = (l.hidden, l.batch);
    let zero = scalar(cx, DType::F32, 0.0);
    let one = scalar(cx, DType::F32, 1.0);
    let sp = step_params(cx, l, dir, one)?;
    let (mut hs, mut cs) = (dir.h0, dir.c0);
    let mut ys: Vec<Option<ValueId>> = vec![None; l.steps];
    let order: Vec<usize> = if reverse { (0..l.steps).rev().collect() } else { (0..l.steps).collect() };
    for t in order {
        let mask = &l.masks[t];
        if mask.as_ref().is_some_and(|m| m.iter().all(|&b| !b)) {
            // No batch entry runs at this step: the state holds, the output is zero.
            ys[t] = Some(konst_as(cx, DType::F32, vec![bt, h], &vec![0.0; bt * h]));
            continue;
        }
        let xt = slice_axis(cx, xw, 0, t * bt, bt)?;
        let (h_new, c_new) = cell_step(cx, l, dir, &sp, hs, cs, xt)?;
        let (y, h_next, c_next) = match mask {
            Some(m) => masked_step(cx, l, m, zero, (h_new, c_new), hs, cs)?,
            None => (h_new, h_new, c_new),
        };
        ys[t] = Some(y);
        hs = h_next;
        cs = c_next;
    }
    Ok((ys.into_iter().map(|y| y.expect("every step ran")).collect(), hs, cs))
}

/// A recurrent node's cell, operands and static sizes, as read and checked from its inputs
/// and attributes.
struct Header {
    cell: Cell,
    /// X, W and R (W and R with the direction axis).
    x0: ValueId,
    w_all: ValueId,
    r_all: ValueId,
    /// Number of directions.
    nd: usize,
    /// `direction` is `reverse`.
    reverse_only: bool,
    /// 0: X `[S, B, I]`, states `[D, B, H]`; 1: X `[B, S, I]`, states `[B, D, H]`.
    layout: i64,
    steps: usize,
    batch: usize,
    input: usize,
    hidden: usize,
}

/// The cell of the node's op type.
fn cell_of(cx: &NodeCx) -> OpResult<Cell> {
    Ok(match cx.op_type() {
        "RNN" => Cell::Rnn,
        "GRU" => Cell::Gru,
        "LSTM" => Cell::Lstm,
        other => return invalid(format!("{other} is not a recurrent layer")),
    })
}

/// Reads and checks the outputs requested, X, W, R and B, `direction`, `layout` and
/// `hidden_size`.
fn read_header(cx: &mut NodeCx) -> OpResult<Header> {
    let cell = cell_of(cx)?;
    let n_outputs = if cell == Cell::Lstm { 3 } else { 2 };
    cx.outputs_at_most(n_outputs, "")?;
    let (x0, w_all, r_all) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let xd = cx.ty(x0).dtype;
    if xd != DType::F32 {
        return unsupported(format!("{} on {xd} (only float32)", cx.op_type()));
    }
    let direction = cx.attrs.string("direction")?.unwrap_or_else(|| "forward".into());
    let (nd, reverse_only) = match direction.as_str() {
        "forward" => (1, false),
        "reverse" => (1, true),
        "bidirectional" => (2, false),
        other => return invalid(format!("direction {other:?} is not forward, reverse or bidirectional")),
    };
    let layout = cx.attrs.int_or("layout", 0)?;
    if layout != 0 && layout != 1 {
        return invalid(format!("layout {layout} is not 0 or 1"));
    }
    let xs = cx.shape(x0);
    if xs.len() != 3 {
        return invalid(format!("X has shape {xs:?}, expected rank 3"));
    }
    let (steps, batch, input) = if layout == 0 { (xs[0], xs[1], xs[2]) } else { (xs[1], xs[0], xs[2]) };
    let rs = cx.shape(r_all);
    let hidden = match cx.attrs.int("hidden_size")? {
        Some(hs) if hs >= 1 => hs as usize,
        Some(hs) => return invalid(format!("hidden_size {hs} is not positive")),
        None if rs.len() == 3 => rs[2],
        None => return invalid(format!("R has shape {rs:?}, expected rank 3")),
    };
    if steps == 0 || batch == 0 || input == 0 {
        return unsupported(format!("{} on an empty input {xs:?}", cx.op_type()));
    }
    if steps > MAX_STEPS {
        return unsupported(format!("sequence length {steps} (at most {MAX_STEPS} steps are unrolled)"));
    }
    let g = cell.gates();
    check_shape(cx, w_all, "W", &[nd, g * hidden, input])?;
    check_shape(cx, r_all, "R", &[nd, g * hidden, hidden])?;
    if let Some(b) = cx.opt_input(3) {
        check_shape(cx, b, "B", &[nd, 2 * g * hidden])?;
    }
    Ok(Header { cell, x0, w_all, r_all, nd, reverse_only, layout, steps, batch, input, hidden })
}

/// Static sequence lengths (input 4): a mask per step, None where every entry runs.
fn sequence_masks(cx: &NodeCx, steps: usize, batch: usize) -> OpResult<Vec<Option<Vec<bool>>>> {
    let mut masks = vec![None; steps];
    if let Some(lens) = cx.opt_ints_input(4, "sequence_lens")? {
        if lens.len() != batch {
            return invalid(format!("sequence_lens has {} entries for a batch of {batch}", lens.len()));
        }
        if let Some(l) = lens.iter().find(|&&l| l < 0 || l as usize > steps) {
            return invalid(format!("sequence length {l} is outside 0..={steps}"));
        }
        for (t, m) in masks.iter_mut().enumerate() {
            let run: Vec<bool> = lens.iter().map(|&l| (t as i64) < l).collect();
            if run.iter().any(|&b| !b) {
                *m = Some(run);
            }
        }
    }
    Ok(masks)
}

/// Initial state input `i` (`what`), checked and as `[D, B, H]` (None if omitted).
fn state_in(cx: &mut NodeCx, hd: &Header, i: usize, what: &str) -> OpResult<Option<ValueId>> {
    let (layout, nd, batch, hidden) = (hd.layout, hd.nd, hd.batch, hd.hidden);
    let Some(v) = cx.opt_input(i) else { return Ok(None) };
    let want = if layout == 0 { [nd, batch, hidden] } else { [batch, nd, hidden] };
    check_shape(cx, v, what, &want)?;
    Ok(Some(if layout == 0 { v } else { tmp(cx, Op::Transpose { perm: vec![1, 0, 2] }, &[v], what)? }))
}

/// Initial states, as `[D, B, H]`, and the peepholes: `(initial_h, initial_c, P)`, each None
/// if omitted (`initial_c` and `P` are LSTM's only).
type States = (Option<ValueId>, Option<ValueId>, Option<ValueId>);

/// Reads and checks the initial states and (LSTM) the peepholes.
fn initial_states(cx: &mut NodeCx, hd: &Header) -> OpResult<States> {
    let h0_all = state_in(cx, hd, 5, "initial_h")?;
    let (c0_all, p_all) = if hd.cell == Cell::Lstm {
        let c0 = state_in(cx, hd, 6, "initial_c")?;
        let p = cx.opt_input(7);
        if let Some(p) = p {
            check_shape(cx, p, "P", &[hd.nd, 3 * hd.hidden])?;
        }
        (c0, p)
    } else {
        (None, None)
    };
    Ok((h0_all, c0_all, p_all))
}

/// The activations: one list per direction (a single direction's list serves both), all
/// directions' lists concatenated.
fn read_activations(cx: &NodeCx, cell: Cell, nd: usize) -> OpResult<Vec<Act>> {
    let per_dir = cell.default_acts().len();
    let names = match cx.attrs.strings("activations")? {
        Some(n) if !n.is_empty() => n,
        _ => cell.default_acts().iter().map(|s| s.to_string()).collect(),
    };
    let alphas = cx.attrs.floats("activation_alpha")?.unwrap_or(&[]).to_vec();
    let betas = cx.attrs.floats("activation_beta")?.unwrap_or(&[]).to_vec();
    let mut acts = parse_acts(&names, &alphas, &betas)?;
    if acts.len() == per_dir && nd == 2 {
        acts.extend_from_within(..);
    }
    if acts.len() != per_dir * nd {
        return invalid(format!("{} activations given, expected {} per direction", names.len(), per_dir));
    }
    Ok(acts)
}

/// Reads `clip`, `input_forget` and `linear_before_reset` into the layer's description.
fn read_layer(cx: &NodeCx, hd: &Header, masks: Vec<Option<Vec<bool>>>) -> OpResult<Layer> {
    let cell = hd.cell;
    let clip = match cx.attrs.float("clip")? {
        Some(c) if c > 0.0 => Some(c),
        Some(c) => return invalid(format!("clip {c} is not positive")),
        None => None,
    };
    let input_forget = cell == Cell::Lstm && cx.attrs.int_or("input_forget", 0)? != 0;
    let linear_before_reset = cell == Cell::Gru && cx.attrs.int_or("linear_before_reset", 0)? != 0;
    let (hidden, batch, steps) = (hd.hidden, hd.batch, hd.steps);
    Ok(Layer { cell, hidden, batch, steps, clip, input_forget, linear_before_reset, masks })
}

/// `[B, H]` zeros (an omitted initial state).
fn zeros_bh(cx: &mut NodeCx, batch: usize, hidden: usize) -> ValueId {
    konst_as(cx, DType::F32, vec![batch, hidden], &vec![0.0; batch * hidden])
}

/// Direction `d`'s parameters, initial states and activations (`acts`: all directions').
fn direction_params(cx: &mut NodeCx, hd: &Header, states: States, acts: &[Act], d: usize) -> OpResult<Dir> {
    let (g, hidden) = (hd.cell.gates(), hd.hidden);
    let per_dir = hd.cell.default_acts().len();
    let (h0_all, c0_all, p_all) = states;
    let w = direction_of(cx, hd.w_all, d)?;
    let r = direction_of(cx, hd.r_all, d)?;
    let bias = match cx.opt_input(3) {
        Some(b) => {
            let bd = direction_of(cx, b, d)?;
            let wb = slice_axis(cx, bd, 0, 0, g * hidden)?;
            let rb = slice_axis(cx, bd, 0, g * hidden, g * hidden)?;
            Some((wb, rb))
        }
        None => None,
    };
    let p = match p_all {
        Some(p) => Some(direction_of(cx, p, d)?),
        None => None,
    };
    let h0 = match h0_all {
        Some(h) => direction_of(cx, h, d)?,
        None => zeros_bh(cx, hd.batch, hidden),
    };
    let c0 = match c0_all {
        Some(c) => direction_of(cx, c, d)?,
        None => zeros_bh(cx, hd.batch, hidden),
    };
    Ok(Dir { w, r, bias, p, h0, c0, acts: acts[d * per_dir..(d + 1) * per_dir].to_vec() })
}

/// The input projection of every step (`x2`: X as `[S·B, I]`), with the biases that do not
/// depend on the state (for GRU with linear_before_reset, Rbh is applied inside the reset
/// gate instead).
fn input_projection(cx: &mut NodeCx, l: &Layer, dir: &Dir, x2: ValueId) -> OpResult<ValueId> {
    let (cell, hidden, linear_before_reset) = (l.cell, l.hidden, l.linear_before_reset);
    let mut ins = vec![x2, dir.w];
    if let Some((wb, rb)) = dir.bias {
        let rb = if cell == Cell::Gru && linear_before_reset {
            let keep: Vec<f64> = (0..3 * hidden).map(|k| if k < 2 * hidden { 1.0 } else { 0.0 }).collect();
            let keep = konst_as(cx, DType::F32, vec![3 * hidden], &keep);
            bin(cx, B::Mul, rb, keep)?
        } else {
            rb
        };
        ins.push(bin(cx, B::Add, wb, rb)?);
    }
    let gemm = Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true };
    tmp(cx, gemm, &ins, "xw")
}

/// Y_h or Y_c (output `k`) from the last states of each direction (`[B, H]` each):
/// `[D, B, H]` (layout 1: `[B, D, H]`), its last op named after the ONNX output.
fn stack_states(cx: &mut NodeCx, hd: &Header, vs: &[ValueId], k: usize) -> OpResult<ValueId> {
    let (layout, batch, hidden) = (hd.layout, hd.batch, hd.hidden);
    let parts = vs.iter().map(|&v| reshape(cx, v, vec![1, batch, hidden])).collect::<OpResult<Vec<_>>>()?;
    match (layout, parts.as_slice()) {
        (0, [_]) => cx.emit_out(Op::Reshape { shape: vec![1, batch, hidden] }, &[vs[0]], k),
        (0, _) => cx.emit_out(Op::Concat { axis: 0 }, &parts, k),
        _ => {
            let s = if parts.len() == 1 { parts[0] } else { tmp(cx, Op::Concat { axis: 0 }, &parts, "stack")? };
            cx.emit_out(Op::Transpose { perm: vec![1, 0, 2] }, &[s], k)
        }
    }
}

/// Y (output 0) from each direction's per-step outputs: `[S, D, B, H]` (layout 1:
/// `[B, S, D, H]`), its last op named after the ONNX output.
fn sequence_output(cx: &mut NodeCx, hd: &Header, y_dirs: &[Vec<ValueId>]) -> OpResult<ValueId> {
    let (layout, nd, steps, batch, hidden) = (hd.layout, hd.nd, hd.steps, hd.batch, hd.hidden);
    // Per direction, the steps stacked as [S·B, H].
    let mut seqs = Vec::with_capacity(nd);
    for ys in y_dirs {
        seqs.push(if ys.len() == 1 { ys[0] } else { tmp(cx, Op::Concat { axis: 0 }, ys, "y")? });
    }
    let shape4 = vec![steps, 1, batch, hidden];
    Ok(if layout == 0 && nd == 1 {
        cx.emit_out(Op::Reshape { shape: shape4 }, &[seqs[0]], 0)?
    } else {
        let parts = seqs.iter().map(|&v| reshape(cx, v, shape4.clone())).collect::<OpResult<Vec<_>>>()?;
        if layout == 0 {
            cx.emit_out(Op::Concat { axis: 1 }, &parts, 0)?
        } else {
            let yc = if nd == 1 { parts[0] } else { tmp(cx, Op::Concat { axis: 1 }, &parts, "y")? };
            cx.emit_out(Op::Transpose { perm: vec![2, 0, 1, 3] }, &[yc], 0)?
        }
    })
}

/// The node's outputs from each direction's per-step outputs and last hidden and cell
/// states: Y, Y_h (and Y_c for LSTM), each built only if requested.
fn assemble_outputs(
    cx: &mut NodeCx,
    hd: &Header,
    y_dirs: &[Vec<ValueId>],
    h_dirs: &[ValueId],
    c_dirs: &[ValueId],
) -> OpResult<Vec<ValueId>> {
    let cell = hd.cell;
    // Outputs. Y: [S, D, B, H] (layout 1: [B, S, D, H]); Y_h, Y_c: [D, B, H] (layout 1: [B, D, H]).
    // The last op of each is named after its ONNX output.
    let y_h = if cx.has_output(1) { Some(stack_states(cx, hd, h_dirs, 1)?) } else { None };
    let y_c = if cell == Cell::Lstm && cx.has_output(2) { Some(stack_states(cx, hd, c_dirs, 2)?) } else { None };
    let y = if cx.has_output(0) { Some(sequence_output(cx, hd, y_dirs)?) } else { None };
    // Omitted outputs get a stand-in value (never bound to a name).
    let any = y.or(y_h).or(y_c).unwrap_or(h_dirs[0]);
    let mut outs = vec![y.unwrap_or(any), y_h.unwrap_or(any)];
    if cell == Cell::Lstm {
        outs.push(y_c.unwrap_or(any));
    }
    Ok(outs)
}

/// RNN, GRU and LSTM.
pub(super) fn recurrent(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let hd = read_header(cx)?;
    let masks = sequence_masks(cx, hd.steps, hd.batch)?;
    let states = initial_states(cx, &hd)?;
    let acts = read_activations(cx, hd.cell, hd.nd)?;
    let layer = read_layer(cx, &hd, masks)?;
    let (layout, nd) = (hd.layout, hd.nd);

    // X as [S·B, I], time-major.
    let x0 = hd.x0;
    let x_t = if layout == 0 { x0 } else { tmp(cx, Op::Transpose { perm: vec![1, 0, 2] }, &[x0], "x")? };
    let x2 = reshape(cx, x_t, vec![hd.steps * hd.batch, hd.input])?;

    let mut y_dirs = Vec::with_capacity(nd);
    let mut h_dirs = Vec::with_capacity(nd);
    let mut c_dirs = Vec::with_capacity(nd);
    for d in 0..nd {
        let dir = direction_params(cx, &hd, states, &acts, d)?;
        let xw = input_projection(cx, &layer, &dir, x2)?;
        let reverse = hd.reverse_only || d == 1;
        let (ys, hl, cl) = run_direction(cx, &layer, &dir, xw, reverse)?;
        y_dirs.push(ys);
        h_dirs.push(hl);
        c_dirs.push(cl);
    }
    assemble_outputs(cx, &hd, &y_dirs, &h_dirs, &c_dirs)
}
