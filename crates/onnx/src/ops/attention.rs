//! Attention (opset 23+) as MatMul, Softmax and elementwise ops, following the ONNX reference
//! implementation (`op_attention.py`): 3-D inputs split into heads, Q and K each scaled by
//! `sqrt(scale)`, KV cache concatenation, causal / boolean / additive masks and the padding
//! mask of `nonpad_kv_seqlen`, grouped-query heads repeated (interleaved), softcap. Also
//! RotaryEmbedding and LinearAttention (its recurrence unrolled).

use kiln_ir::{BinaryOp as B, CmpOp, DType, Op, UnaryOp as U, ValueId};

use super::builders::{bin, cmp, konst_as, reshape, scalar, tmp, un};
use super::{invalid, unsupported, NodeCx, OpResult};

/// `[B, S, H·D]` → `[B, H, S, D]`.
pub(super) fn split_heads(cx: &mut NodeCx, x: ValueId, heads: usize, what: &str) -> OpResult<ValueId> {
    let s = cx.shape(x);
    if heads == 0 || !s[2].is_multiple_of(heads) {
        return invalid(format!("{what} of shape {s:?} cannot be split into {heads} heads"));
    }
    let r = reshape(cx, x, vec![s[0], s[1], heads, s[2] / heads])?;
    tmp(cx, Op::Transpose { perm: vec![0, 2, 1, 3] }, &[r], "heads")
}

/// An additive bias from a boolean mask: 0 where true, -inf where false.
fn bool_to_bias(cx: &mut NodeCx, m: ValueId) -> OpResult<ValueId> {
    let zero = scalar(cx, DType::F32, 0.0);
    let ninf = scalar(cx, DType::F32, f64::NEG_INFINITY);
    tmp(cx, Op::Where, &[m, zero, ninf], "bias")
}

/// Fails (as unsupported) on an attribute Attention does not know.
fn check_attention_attrs(cx: &NodeCx) -> OpResult<()> {
    const KNOWN: [&str; 9] = [
        "is_causal",
        "kv_num_heads",
        "q_num_heads",
        "qk_matmul_output_mode",
        "scale",
        "softcap",
        "softmax_precision",
        "left_window_size",
        "right_window_size",
    ];
    if let Some(a) = cx.attrs.names().find(|a| !KNOWN.contains(a)) {
        return unsupported(format!("attribute `{a}`"));
    }
    Ok(())
}

/// Q, K and V as `[B, H, S, D]`, with the input rank and the head-count attributes.
struct Qkv {
    q: ValueId,
    k: ValueId,
    v: ValueId,
    /// The rank of the inputs (3 or 4).
    rank: usize,
    /// `q_num_heads`, `kv_num_heads`.
    qh: Option<i64>,
    kvh: Option<i64>,
}

/// Reads and checks Q, K and V and the head counts, splitting 3-D inputs into heads.
fn attention_qkv(cx: &mut NodeCx) -> OpResult<Qkv> {
    let (mut q, mut k, mut v) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    for x in [q, k, v] {
        if cx.ty(x).dtype != DType::F32 {
            return unsupported(format!("Attention on {} (only float32)", cx.ty(x).dtype));
        }
    }
    let rank = cx.rank(q);
    if cx.rank(k) != rank || cx.rank(v) != rank || !(rank == 3 || rank == 4) {
        return invalid("Q, K and V must all be 3-D or all 4-D");
    }
    let qh = cx.attrs.int("q_num_heads")?;
    let kvh = cx.attrs.int("kv_num_heads")?;
    if rank == 3 {
        let (Some(qh), Some(kvh)) = (qh, kvh) else {
            return invalid("3-D inputs need q_num_heads and kv_num_heads");
        };
        if qh < 1 || kvh < 1 {
            return invalid("q_num_heads and kv_num_heads must be positive");
        }
        q = split_heads(cx, q, qh as usize, "Q")?;
        k = split_heads(cx, k, kvh as usize, "K")?;
        v = split_heads(cx, v, kvh as usize, "V")?;
    }
    Ok(Qkv { q, k, v, rank, qh, kvh })
}

/// The KV cache: `past_key` and `past_value` (inputs 4, 5), where given, concatenated before
/// K and V along the sequence. Returns the new K and V and `past_key`.
fn append_kv_cache(cx: &mut NodeCx, k: ValueId, v: ValueId) -> OpResult<(ValueId, ValueId, Option<ValueId>)> {
    let (mut k, mut v) = (k, v);
    let (past_k, past_v) = (cx.opt_input(4), cx.opt_input(5));
    if let Some(pk) = past_k {
        k = tmp(cx, Op::Concat { axis: 2 }, &[pk, k], "present_key")?;
    }
    if let Some(pv) = past_v {
        v = tmp(cx, Op::Concat { axis: 2 }, &[pv, v], "present_value")?;
    }
    Ok((k, v, past_k))
}

/// `a + b` (`b` when there is no `a`).
fn add_bias(cx: &mut NodeCx, a: Option<ValueId>, b: ValueId) -> OpResult<ValueId> {
    match a {
        Some(a) => bin(cx, B::Add, a, b),
        None => Ok(b),
    }
}

/// The attention mask (input 3), its last axis padded to `kvl` keys (with false or -inf).
fn padded_mask(cx: &mut NodeCx, kvl: usize) -> OpResult<Option<ValueId>> {
    let mut mask = cx.opt_input(3);
    if let Some(m) = mask {
        let ms = cx.shape(m);
        let last = ms.last().copied().unwrap_or(0);
        if last < kvl {
            let mut ps = ms.clone();
            *ps.last_mut().unwrap() = kvl - last;
            let md = cx.ty(m).dtype;
            let n: usize = ps.iter().product();
            let fill = if md == DType::Bool { 0.0 } else { f64::NEG_INFINITY };
            let pad = konst_as(cx, md, ps, &vec![fill; n]);
            let axis = ms.len() - 1;
            mask = Some(tmp(cx, Op::Concat { axis }, &[m, pad], "mask")?);
        }
    }
    Ok(mask)
}

/// `nonpad_kv_seqlen` (if given) as int64 `[B, 1, 1, 1]`.
fn nonpad_lengths(cx: &mut NodeCx, nonpad: Option<ValueId>, batch: usize) -> OpResult<Option<ValueId>> {
    Ok(match nonpad {
        Some(n) => {
            let n = if cx.ty(n).dtype == DType::I64 { n } else { tmp(cx, Op::cast(DType::I64), &[n], "nonpad")? };
            Some(reshape(cx, n, vec![batch, 1, 1, 1])?)
        }
        None => None,
    })
}

/// The causal mask as an additive bias: per batch from `nonpad_b` when there is no KV cache,
/// otherwise offset by the past length.
fn causal_bias(
    cx: &mut NodeCx,
    past_k: Option<ValueId>,
    nonpad_b: Option<ValueId>,
    ql: usize,
    kvl: usize,
) -> OpResult<ValueId> {
    if let (None, Some(nb)) = (past_k, nonpad_b) {
        // Per batch: key j is allowed for query i iff j - i + q_len <= nonpad[b].
        let d: Vec<f64> = (0..ql).flat_map(|i| (0..kvl).map(move |j| j as f64 - i as f64 + ql as f64)).collect();
        let d = konst_as(cx, DType::I64, vec![1, 1, ql, kvl], &d);
        let allowed = cmp(cx, CmpOp::LessOrEqual, d, nb)?;
        bool_to_bias(cx, allowed)
    } else {
        let past = past_k.map_or(0, |p| cx.shape(p)[2]);
        let c: Vec<f64> =
            (0..ql).flat_map(|i| (0..kvl).map(move |j| if j > i + past { f64::NEG_INFINITY } else { 0.0 })).collect();
        Ok(konst_as(cx, DType::F32, vec![ql, kvl], &c))
    }
}

/// Adds the local-window masks (`left_window_size`, `right_window_size`) to `bias`.
fn window_bias(
    cx: &mut NodeCx,
    mut bias: Option<ValueId>,
    past_k: Option<ValueId>,
    nonpad_b: Option<ValueId>,
    ql: usize,
    kvl: usize,
) -> OpResult<Option<ValueId>> {
    // Local windows around the query's absolute position `i + offset` (offset: the past
    // length, or per batch `nonpad - q_len`): key j is allowed iff -left <= j - (i + offset)
    // <= right (a negative size leaves that side unbounded).
    let (left, right) = (cx.attrs.int_or("left_window_size", -1)?, cx.attrs.int_or("right_window_size", -1)?);
    if left >= 0 || right >= 0 {
        let past = past_k.map_or(0, |p| cx.shape(p)[2]) as f64;
        let rel = match (past_k, nonpad_b) {
            (None, Some(nb)) => {
                let d: Vec<f64> =
                    (0..ql).flat_map(|i| (0..kvl).map(move |j| j as f64 - i as f64 + ql as f64)).collect();
                let d = konst_as(cx, DType::I64, vec![1, 1, ql, kvl], &d);
                bin(cx, B::Sub, d, nb)?
            }
            _ => {
                let d: Vec<f64> = (0..ql).flat_map(|i| (0..kvl).map(move |j| j as f64 - i as f64 - past)).collect();
                konst_as(cx, DType::I64, vec![ql, kvl], &d)
            }
        };
        for (size, op) in [(left, CmpOp::GreaterOrEqual), (right, CmpOp::LessOrEqual)] {
            if size >= 0 {
                let bound =
                    scalar(cx, DType::I64, if op == CmpOp::GreaterOrEqual { -size as f64 } else { size as f64 });
                let allowed = cmp(cx, op, rel, bound)?;
                let w = bool_to_bias(cx, allowed)?;
                bias = Some(add_bias(cx, bias, w)?);
            }
        }
    }
    Ok(bias)
}

/// The bias added to Q·Kᵀ (None: nothing to add): the attention mask, the causal mask, the
/// local windows and the padding mask of `nonpad_kv_seqlen`, summed.
fn attention_bias(
    cx: &mut NodeCx,
    batch: usize,
    past_k: Option<ValueId>,
    ql: usize,
    kvl: usize,
) -> OpResult<Option<ValueId>> {
    let mask = padded_mask(cx, kvl)?;
    let nonpad = cx.opt_input(6);
    let is_causal = cx.attrs.int_or("is_causal", 0)? != 0;
    let mut bias: Option<ValueId> = None;
    if let Some(m) = mask {
        bias = Some(if cx.ty(m).dtype == DType::Bool { bool_to_bias(cx, m)? } else { m });
    }
    let nonpad_b = nonpad_lengths(cx, nonpad, batch)?;
    if is_causal {
        let c = causal_bias(cx, past_k, nonpad_b, ql, kvl)?;
        bias = Some(add_bias(cx, bias, c)?);
    }
    bias = window_bias(cx, bias, past_k, nonpad_b, ql, kvl)?;
    if let Some(nb) = nonpad_b {
        let r: Vec<f64> = (0..kvl).map(|j| j as f64).collect();
        let r = konst_as(cx, DType::I64, vec![1, 1, 1, kvl], &r);
        let valid = cmp(cx, CmpOp::Less, r, nb)?;
        let p = bool_to_bias(cx, valid)?;
        bias = Some(add_bias(cx, bias, p)?);
    }
    Ok(bias)
}

/// `[B, H, S, D]` → `[B, H·r, S, D]`, each head repeated `r` times (interleaved).
fn gqa_repeat(cx: &mut NodeCx, x: ValueId, r: usize) -> OpResult<ValueId> {
    let s = cx.shape(x);
    let x5 = reshape(cx, x, vec![s[0], s[1], 1, s[2], s[3]])?;
    let e = tmp(cx, Op::Expand { shape: vec![s[0], s[1], r, s[2], s[3]] }, &[x5], "gqa")?;
    reshape(cx, e, vec![s[0], s[1] * r, s[2], s[3]])
}

/// Grouped-query attention: K and V with each KV head repeated (interleaved) up to the
/// number of query heads (`q_heads`: Q's head axis).
fn repeat_kv_heads(cx: &mut NodeCx, qkv: &Qkv, q_heads: usize, k: ValueId, v: ValueId) -> OpResult<(ValueId, ValueId)> {
    let (mut k, mut v) = (k, v);
    let hq = qkv.qh.map_or(q_heads, |h| h as usize);
    let hk = if qkv.rank == 4 { qkv.kvh.map_or(cx.shape(k)[1], |h| h as usize) } else { cx.shape(k)[1] };
    if hq != hk && hk > 0 && hq.is_multiple_of(hk) && cx.shape(v)[1] == hk {
        let r = hq / hk;
        k = gqa_repeat(cx, k, r)?;
        v = gqa_repeat(cx, v, r)?;
    }
    Ok((k, v))
}

/// The scores `(√scale·Q)·(√scale·K)ᵀ` (`sq`: `√scale`), soft-capped if `softcap` is set.
fn attention_scores(cx: &mut NodeCx, q: ValueId, k: ValueId, sq: ValueId) -> OpResult<ValueId> {
    let qsc = bin(cx, B::Mul, q, sq)?;
    let ksc = bin(cx, B::Mul, k, sq)?;
    let kt = tmp(cx, Op::Transpose { perm: vec![0, 1, 3, 2] }, &[ksc], "kt")?;
    let mut qk = tmp(cx, Op::MatMul, &[qsc, kt], "qk")?;
    let softcap = cx.attrs.float_or("softcap", 0.0)?;
    if softcap > 0.0 {
        let c = scalar(cx, DType::F32, f64::from(softcap));
        let d = bin(cx, B::Div, qk, c)?;
        let t = un(cx, U::Tanh, d)?;
        qk = bin(cx, B::Mul, t, c)?;
    }
    Ok(qk)
}

/// The scores plus `bias`, and their softmax over the keys (NaN rows zeroed).
fn attention_probs(cx: &mut NodeCx, qk: ValueId, bias: Option<ValueId>) -> OpResult<(ValueId, ValueId)> {
    let with_bias = match bias {
        Some(b) => bin(cx, B::Add, qk, b)?,
        None => qk,
    };
    let sm = tmp(cx, Op::Softmax { axis: 3 }, &[with_bias], "softmax")?;
    // A fully masked row (all -inf) attends to nothing: zeros, not NaN.
    let not_nan = cmp(cx, CmpOp::Equal, sm, sm)?;
    let zero = scalar(cx, DType::F32, 0.0);
    let probs = tmp(cx, Op::Where, &[not_nan, sm, zero], "probs")?;
    Ok((with_bias, probs))
}

/// Output 0, `probs·V`, back as `[B, S, H·D]` for 3-D inputs.
fn attention_output(cx: &mut NodeCx, rank: usize, probs: ValueId, v: ValueId) -> OpResult<ValueId> {
    Ok(if rank == 3 {
        let y = tmp(cx, Op::MatMul, &[probs, v], "y")?;
        let t = tmp(cx, Op::Transpose { perm: vec![0, 2, 1, 3] }, &[y], "y")?;
        let ts = cx.shape(t);
        cx.emit_out(Op::Reshape { shape: vec![ts[0], ts[1], ts[2] * ts[3]] }, &[t], 0)?
    } else {
        cx.emit_out(Op::MatMul, &[probs, v], 0)?
    })
}

/// Attention (opset 23+), as the module docs describe.
pub(super) fn attention(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(4, "")?;
    check_attention_attrs(cx)?;
    let qkv = attention_qkv(cx)?;
    let (q, rank) = (qkv.q, qkv.rank);
    let qs = cx.shape(q);
    let batch = qs[0];
    let scale = match cx.attrs.float("scale")? {
        Some(s) => f64::from(s),
        None => 1.0 / (qs[3] as f64).sqrt(),
    };
    let sq = scalar(cx, DType::F32, scale.sqrt());
    // KV cache.
    let (k, v, past_k) = append_kv_cache(cx, qkv.k, qkv.v)?;
    let (present_k, present_v) = (k, v);
    let (ql, kvl) = (qs[2], cx.shape(k)[2]);

    let bias = attention_bias(cx, batch, past_k, ql, kvl)?;
    let (k, v) = repeat_kv_heads(cx, &qkv, qs[1], k, v)?;
    let qk = attention_scores(cx, q, k, sq)?;
    let (with_bias, probs) = attention_probs(cx, qk, bias)?;
    let out = attention_output(cx, rank, probs, v)?;
    let mut outs = vec![out, present_k, present_v];
    if cx.has_output(3) {
        let mode = cx.attrs.int_or("qk_matmul_output_mode", 0)?;
        outs.push(match mode {
            0 | 1 => qk,
            2 => with_bias,
            3 => probs,
            m => return invalid(format!("qk_matmul_output_mode {m} is not 0..=3")),
        });
    }
    Ok(outs)
}

/// `x[..., start::step]` (`len` elements) along the last axis.
fn slice_last(cx: &mut NodeCx, x: ValueId, start: usize, step: usize, len: usize) -> OpResult<ValueId> {
    let s = cx.shape(x);
    let r = s.len();
    let mut starts = vec![0i64; r];
    starts[r - 1] = if len == 0 { 0 } else { start as i64 };
    let mut steps = vec![1i64; r];
    steps[r - 1] = step as i64;
    let mut out_shape = s;
    out_shape[r - 1] = len;
    tmp(cx, Op::Slice { starts, steps, out_shape }, &[x], "part")
}

/// RotaryEmbedding (opset 23), as the ONNX reference computes it: on `[B, S, H, D]` (from
/// `[B, H, S, D]` or `[B, S, H·D]`), the first `rotary_embedding_dim` features rotate as
/// pairs (halves, or even/odd when interleaved) by the cos/sin cache rows of each position.
pub(super) fn rotary_embedding(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x0, cos_cache, sin_cache) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    if cx.ty(x0).dtype != DType::F32 {
        return unsupported(format!("RotaryEmbedding on {} (only float32)", cx.ty(x0).dtype));
    }
    let s0 = cx.shape(x0);
    let x = match s0.len() {
        4 => tmp(cx, Op::Transpose { perm: vec![0, 2, 1, 3] }, &[x0], "bshd")?,
        3 => {
            let nh = cx.attrs.int_or("num_heads", 0)?;
            if nh < 1 || !s0[2].is_multiple_of(nh as usize) {
                return invalid(format!("num_heads {nh} does not divide the hidden size of {s0:?}"));
            }
            reshape(cx, x0, vec![s0[0], s0[1], nh as usize, s0[2] / nh as usize])?
        }
        _ => return invalid(format!("input {s0:?} must be 3-D or 4-D")),
    };
    let xs = cx.shape(x);
    let d = xs[3];
    let rd = match cx.attrs.int_or("rotary_embedding_dim", 0)? {
        0 => d,
        r if r > 0 && (r as usize) <= d && r % 2 == 0 => r as usize,
        r => return invalid(format!("rotary_embedding_dim {r} does not fit head size {d}")),
    };
    let half = rd / 2;
    let interleaved = cx.attrs.int_or("interleaved", 0)? != 0;
    let (mut cos, mut sin) = (cos_cache, sin_cache);
    if let Some(pos) = cx.opt_input(3) {
        cos = tmp(cx, Op::Gather { axis: 0 }, &[cos, pos], "cos")?;
        sin = tmp(cx, Op::Gather { axis: 0 }, &[sin, pos], "sin")?;
    }
    let cs = cx.shape(cos);
    if cs.len() != 3 || cs[2] != half || cx.shape(sin) != cs {
        return invalid(format!("cos/sin of shape {cs:?} do not fit [batch, sequence, {half}]"));
    }
    cos = reshape(cx, cos, vec![cs[0], cs[1], 1, half])?;
    sin = reshape(cx, sin, vec![cs[0], cs[1], 1, half])?;
    let (x1, x2) = if interleaved {
        (slice_last(cx, x, 0, 2, half)?, slice_last(cx, x, 1, 2, half)?)
    } else {
        (slice_last(cx, x, 0, 1, half)?, slice_last(cx, x, half, 1, half)?)
    };
    let c1 = bin(cx, B::Mul, cos, x1)?;
    let s2 = bin(cx, B::Mul, sin, x2)?;
    let real = bin(cx, B::Sub, c1, s2)?;
    let s1 = bin(cx, B::Mul, sin, x1)?;
    let c2 = bin(cx, B::Mul, cos, x2)?;
    let imag = bin(cx, B::Add, s1, c2)?;
    let rs = cx.shape(real);
    let rotated = if interleaved {
        let mut r5 = rs.clone();
        r5.push(1);
        let re = reshape(cx, real, r5.clone())?;
        let im = reshape(cx, imag, r5)?;
        let c = tmp(cx, Op::Concat { axis: 4 }, &[re, im], "pairs")?;
        reshape(cx, c, vec![rs[0], rs[1], rs[2], rd])?
    } else {
        tmp(cx, Op::Concat { axis: 3 }, &[real, imag], "rotated")?
    };
    let full = if rd < d {
        let rest = slice_last(cx, x, rd, 1, d - rd)?;
        tmp(cx, Op::Concat { axis: 3 }, &[rotated, rest], "full")?
    } else {
        rotated
    };
    let y = if s0.len() == 4 {
        cx.emit_out(Op::Transpose { perm: vec![0, 2, 1, 3] }, &[full], 0)?
    } else {
        cx.emit_out(Op::Reshape { shape: s0 }, &[full], 0)?
    };
    Ok(vec![y])
}

/// Step `t` of a `[B, H, T, D]` tensor, as `[B, H, 1, D]`.
fn step(cx: &mut NodeCx, x: ValueId, t: usize) -> OpResult<ValueId> {
    let mut out_shape = cx.shape(x);
    out_shape[2] = 1;
    tmp(cx, Op::Slice { starts: vec![0, 0, t as i64, 0], steps: vec![1; 4], out_shape }, &[x], "step")
}

/// `[B, H·r]` heads from `[B, H, …]` by repeating each head `r` times (interleaved).
fn repeat_heads(cx: &mut NodeCx, x: ValueId, r: usize) -> OpResult<ValueId> {
    if r == 1 {
        return Ok(x);
    }
    let s = cx.shape(x);
    let x5 = reshape(cx, x, vec![s[0], s[1], 1, s[2], s[3]])?;
    let e = tmp(cx, Op::Expand { shape: vec![s[0], s[1], r, s[2], s[3]] }, &[x5], "repeat")?;
    reshape(cx, e, vec![s[0], s[1] * r, s[2], s[3]])
}

/// The most time steps LinearAttention unrolls.
const MAX_STEPS: usize = 512;

/// LinearAttention, its recurrence unrolled over the (static) sequence: per step the state
/// `[B, H_kv, d_k, d_v]` decays by `exp(decay)` (gated rules), the value is delta-corrected
/// `beta · (v - Sᵀ (erase ⊙ k))` (delta rules), `k ⊗ v` is added, and the output reads
/// `scale · q S` with KV heads repeated for grouped queries.
pub(super) fn linear_attention(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(2, "")?;
    let (q, k, v) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    for x in [q, k, v] {
        if cx.ty(x).dtype != DType::F32 || cx.rank(x) != 3 {
            return unsupported(format!("LinearAttention on {} (only float32 [B, T, H·D])", cx.ty(x)));
        }
    }
    let rule = cx.attrs.string("update_rule")?.unwrap_or_else(|| "gated_delta".into());
    let (gating, delta) = match rule.as_str() {
        "linear" => (false, false),
        "gated" => (true, false),
        "delta" => (false, true),
        "gated_delta" => (true, true),
        other => return invalid(format!("update_rule {other:?} is not linear, gated, delta or gated_delta")),
    };
    let (Some(hq), Some(hkv)) = (cx.attrs.int("q_num_heads")?, cx.attrs.int("kv_num_heads")?) else {
        return invalid("q_num_heads and kv_num_heads are required");
    };
    if hq < 1 || hkv < 1 || hq % hkv != 0 {
        return invalid(format!("q_num_heads {hq} must be a positive multiple of kv_num_heads {hkv}"));
    }
    let (hq, hkv) = (hq as usize, hkv as usize);
    let (decay, beta, erase) = (cx.opt_input(4), cx.opt_input(5), cx.opt_input(6));
    if gating != decay.is_some() || delta != beta.is_some() || (erase.is_some() && !delta) {
        return invalid(format!("update_rule {rule:?} does not match the decay/beta/erase_gate inputs given"));
    }
    let qs = cx.shape(q);
    let (b, t) = (qs[0], qs[1]);
    if t > MAX_STEPS {
        return unsupported(format!("LinearAttention over {t} steps (at most {MAX_STEPS} are unrolled)"));
    }
    let q4 = split_heads(cx, q, hq, "query")?;
    let k4 = split_heads(cx, k, hkv, "key")?;
    let v4 = split_heads(cx, v, hkv, "value")?;
    let (dk, dv) = (cx.shape(q4)[3], cx.shape(v4)[3]);
    if cx.shape(k4)[3] != dk {
        return invalid("query and key head sizes differ");
    }
    let to4 = |cx: &mut NodeCx, x: ValueId, what: &str| -> OpResult<ValueId> {
        let s = cx.shape(x);
        if s.len() != 3 || s[0] != b || s[1] != t {
            return invalid(format!("{what} of shape {s:?} must be [{b}, {t}, …]"));
        }
        if s[2] == hkv || s[2] == 1 {
            let r = reshape(cx, x, vec![b, t, s[2], 1])?;
            tmp(cx, Op::Transpose { perm: vec![0, 2, 1, 3] }, &[r], what)
        } else {
            split_heads(cx, x, hkv, what)
        }
    };
    let gain = match decay {
        Some(d) => {
            let d4 = to4(cx, d, "decay")?;
            Some(un(cx, U::Exp, d4)?)
        }
        None => None,
    };
    let beta4 = match beta {
        Some(x) => Some(to4(cx, x, "beta")?),
        None => None,
    };
    let erase4 = match erase {
        Some(x) => Some(split_heads(cx, x, hkv, "erase_gate")?),
        None => None,
    };
    let mut state = match cx.opt_input(3) {
        Some(p) => {
            if cx.shape(p) != [b, hkv, dk, dv] {
                return invalid(format!("past_state {:?} must be {:?}", cx.shape(p), [b, hkv, dk, dv]));
            }
            p
        }
        None => konst_as(cx, DType::F32, vec![b, hkv, dk, dv], &vec![0.0; b * hkv * dk * dv]),
    };
    let scale = match cx.attrs.float("scale")? {
        Some(s) if s != 0.0 => f64::from(s),
        _ => 1.0 / (dk as f64).sqrt(),
    };
    let sc = scalar(cx, DType::F32, scale);
    let mut outs = Vec::with_capacity(t);
    for i in 0..t {
        let (qt, kt, mut vt) = (step(cx, q4, i)?, step(cx, k4, i)?, step(cx, v4, i)?);
        if let Some(g) = gain {
            let gt = step(cx, g, i)?;
            let w = cx.shape(gt)[3];
            let gcol = reshape(cx, gt, vec![b, hkv, w, 1])?;
            state = bin(cx, B::Mul, state, gcol)?;
        }
        if let Some(bt4) = beta4 {
            let ke = match erase4 {
                Some(e) => {
                    let et = step(cx, e, i)?;
                    bin(cx, B::Mul, et, kt)?
                }
                None => kt,
            };
            let retrieved = tmp(cx, Op::MatMul, &[ke, state], "retrieved")?;
            let d = bin(cx, B::Sub, vt, retrieved)?;
            let bt = step(cx, bt4, i)?;
            vt = bin(cx, B::Mul, bt, d)?;
        }
        let kcol = reshape(cx, kt, vec![b, hkv, dk, 1])?;
        let outer = tmp(cx, Op::MatMul, &[kcol, vt], "outer")?;
        state = bin(cx, B::Add, state, outer)?;
        let read = repeat_heads(cx, state, hq / hkv)?;
        let o = tmp(cx, Op::MatMul, &[qt, read], "read")?;
        outs.push(bin(cx, B::Mul, o, sc)?);
    }
    let all = if outs.len() == 1 { outs[0] } else { tmp(cx, Op::Concat { axis: 2 }, &outs, "outputs")? };
    let tr = tmp(cx, Op::Transpose { perm: vec![0, 2, 1, 3] }, &[all], "bthd")?;
    let y = cx.emit_out(Op::Reshape { shape: vec![b, t, hq * dv] }, &[tr], 0)?;
    Ok(vec![y, state])
}
