//! Signal processing: the window generators (HannWindow, HammingWindow, BlackmanWindow) and
//! MelWeightMatrix, which are constants, and DFT and STFT as MatMuls with constant cosine and
//! sine matrices.

use kiln_ir::{BinaryOp as B, DType, Op, UnaryOp as U, ValueId};

use super::builders::{bin, tensor_as, tmp, un};
use super::{invalid, norm_axis, unsupported, NodeCx, OpError, OpResult};
use crate::data::dtype_of;

/// HannWindow, HammingWindow, BlackmanWindow: constants of `size` elements.
pub(super) fn window(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let t = cx.opt_const_input(0, "size")?.ok_or_else(|| OpError::Invalid("input 0 (size) is missing".into()))?;
    if t.numel() != 1 || !t.dtype().is_int() {
        return invalid(format!("size must be an integer scalar, got {}", t.ty));
    }
    let size = t.to_i64_vec()[0];
    if !(0..=1 << 24).contains(&size) {
        return invalid(format!("size {size} is out of range"));
    }
    let periodic = cx.attrs.int_or("periodic", 1)? != 0;
    let dtype = match dtype_of(cx.attrs.int_or("output_datatype", 1)? as i32) {
        Ok(d) => d,
        Err(name) => return unsupported(format!("output_datatype {name}")),
    };
    let n1 = if periodic { size } else { size - 1 } as f64;
    let pi = std::f64::consts::PI;
    let v: Vec<f64> = (0..size)
        .map(|i| {
            let i = i as f64;
            match cx.op_type() {
                "HannWindow" => (i * pi / n1).sin().powi(2),
                "HammingWindow" => 25.0 / 46.0 - (i * pi * 2.0 / n1).cos() * (1.0 - 25.0 / 46.0),
                _ => 0.42 - (i * pi * 2.0 / n1).cos() / 2.0 + (i * pi * 4.0 / n1).cos() * 0.08,
            }
        })
        .collect();
    let name = cx.out_name(0);
    Ok(vec![cx.konst(name, tensor_as(dtype, vec![size as usize], &v))])
}

/// DFT (opsets 17 and 20) as MatMuls with constant cosine and sine matrices along the axis
/// (moved last): the input truncated to `dft_length` (zero padding adds nothing), one-sided
/// keeping the first `n / 2 + 1` frequencies, the inverse conjugated and divided by `n`.
pub(super) fn dft(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    if cx.ty(x).dtype != DType::F32 {
        return unsupported(format!("DFT on {} (only float32)", cx.ty(x).dtype));
    }
    let s = cx.shape(x);
    let r = s.len();
    if r < 2 || !(s[r - 1] == 1 || s[r - 1] == 2) {
        return invalid(format!("input {s:?} must end in a component axis of 1 (real) or 2 (complex)"));
    }
    let axis = if cx.opset >= 20 {
        match cx.opt_ints_input(2, "axis")? {
            Some(v) if v.len() == 1 => v[0],
            Some(v) => return invalid(format!("axis must be a scalar, got {v:?}")),
            None => -2,
        }
    } else {
        cx.attrs.int_or("axis", 1)?
    };
    let a = norm_axis(axis, r, "axis")?;
    if a == r - 1 {
        return invalid("axis cannot be the component axis");
    }
    let len = s[a];
    let inverse = cx.attrs.int_or("inverse", 0)? != 0;
    let onesided = cx.attrs.int_or("onesided", 0)? != 0;
    let dft_length = cx.opt_ints_input(1, "dft_length")?;
    Ok(vec![dft_core(cx, x, a, len, dft_length, inverse, onesided)?])
}

/// The DFT of `x` (`[…, 1 | 2]`) along axis `a` of `len` elements; the result is output 0.
fn dft_core(
    cx: &mut NodeCx,
    x: ValueId,
    a: usize,
    len: usize,
    dft_length: Option<Vec<i64>>,
    inverse: bool,
    onesided: bool,
) -> OpResult<ValueId> {
    use super::builders::{konst_as, reshape};
    let s = cx.shape(x);
    let r = s.len();
    // Inverse of a one-sided (Hermitian) spectrum: a real signal (numpy's irfft), of
    // `2 (len - 1)` samples unless dft_length says otherwise.
    let irfft = inverse && onesided;
    let n = match dft_length {
        Some(v) if v.len() == 1 && (1..=1 << 16).contains(&v[0]) => v[0] as usize,
        Some(v) => return invalid(format!("dft_length {v:?} must be a positive scalar")),
        None if irfft => 2 * len.saturating_sub(1),
        None => len,
    };
    if n == 0 || n > 1 << 16 {
        return unsupported(format!("DFT of length {n}"));
    }
    let k = if irfft {
        n
    } else if onesided {
        n / 2 + 1
    } else {
        n
    };
    let rows = if irfft { len.min(n / 2 + 1) } else { len.min(n) };
    // Real and imaginary parts, without the component axis, the transformed axis last.
    let mut perm: Vec<usize> = (0..r - 1).filter(|&i| i != a).collect();
    perm.push(a);
    let part = |cx: &mut NodeCx, c: i64| -> OpResult<ValueId> {
        let mut starts = vec![0i64; r];
        starts[r - 1] = c;
        let mut out_shape = s.clone();
        out_shape[r - 1] = 1;
        out_shape[a] = rows;
        let p = tmp(cx, Op::Slice { starts, steps: vec![1; r], out_shape }, &[x], "part")?;
        let mut sq = s[..r - 1].to_vec();
        sq[a] = rows;
        let p = reshape(cx, p, sq)?;
        if a == r - 2 {
            Ok(p)
        } else {
            tmp(cx, Op::Transpose { perm: perm.clone() }, &[p], "axis_last")
        }
    };
    let re_in = part(cx, 0)?;
    let im_in = if s[r - 1] == 2 { Some(part(cx, 1)?) } else { None };
    let norm = if inverse { 1.0 / n as f64 } else { 1.0 };
    let two_pi = 2.0 * std::f64::consts::PI;
    let mut cos = Vec::with_capacity(rows * k);
    let mut sin = Vec::with_capacity(rows * k);
    for l in 0..rows {
        // irfft counts each frequency but DC and Nyquist twice (its conjugate mirror).
        let w = if irfft && l != 0 && 2 * l != n { 2.0 } else { 1.0 };
        for j in 0..k {
            let t = two_pi * ((l * j) % n) as f64 / n as f64;
            cos.push(t.cos() * norm * w);
            sin.push(t.sin() * norm * w);
        }
    }
    let cm = konst_as(cx, DType::F32, vec![rows, k], &cos);
    let sm = konst_as(cx, DType::F32, vec![rows, k], &sin);
    // Forward: re = r·cos + i·sin, im = i·cos - r·sin; inverse flips the sine terms.
    let rc = tmp(cx, Op::MatMul, &[re_in, cm], "rc")?;
    let rs = tmp(cx, Op::MatMul, &[re_in, sm], "rs")?;
    let (mut re, mut im) = if inverse { (rc, rs) } else { (rc, un(cx, U::Neg, rs)?) };
    if let Some(i) = im_in {
        let ic = tmp(cx, Op::MatMul, &[i, cm], "ic")?;
        let is = tmp(cx, Op::MatMul, &[i, sm], "is")?;
        re = bin(cx, if inverse { B::Sub } else { B::Add }, re, is)?;
        im = bin(cx, B::Add, im, ic)?;
    }
    let mut inv = vec![0; r - 1];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    let mut os = s.clone();
    os[a] = k;
    os[r - 1] = 1;
    let back = |cx: &mut NodeCx, v: ValueId| -> OpResult<ValueId> {
        let v = if a == r - 2 { v } else { tmp(cx, Op::Transpose { perm: inv.clone() }, &[v], "axis_back")? };
        reshape(cx, v, os.clone())
    };
    let re = back(cx, re)?;
    if irfft {
        return cx.emit_out(Op::Identity, &[re], 0);
    }
    let im = back(cx, im)?;
    cx.emit_out(Op::Concat { axis: r - 1 }, &[re, im], 0)
}

/// STFT: frames of the signal `[B, L, 1 | 2]` gathered with constant indices, weighted by
/// the window, and transformed (one-sided by default) along the frame axis.
pub(super) fn stft(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    use super::builders::{konst_as, reshape};
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    if cx.ty(x).dtype != DType::F32 || s.len() != 3 || !(s[2] == 1 || s[2] == 2) {
        return unsupported(format!("STFT of {} (only float32 [B, L, 1 | 2])", cx.ty(x)));
    }
    let step = match cx.opt_ints_input(1, "frame_step")? {
        Some(v) if v.len() == 1 && v[0] > 0 => v[0] as usize,
        _ => return invalid("frame_step must be a positive scalar"),
    };
    let window = cx.opt_input(2);
    let fl = match cx.opt_ints_input(3, "frame_length")? {
        Some(v) if v.len() == 1 && v[0] > 0 => v[0] as usize,
        Some(v) => return invalid(format!("frame_length {v:?} must be a positive scalar")),
        None => match window {
            Some(w) => cx.ty(w).numel(),
            None => s[1],
        },
    };
    if fl == 0 || fl > s[1] {
        return invalid(format!("frame length {fl} does not fit a signal of {}", s[1]));
    }
    let frames = 1 + (s[1] - fl) / step;
    let idx: Vec<f64> = (0..frames).flat_map(|f| (0..fl).map(move |i| (f * step + i) as f64)).collect();
    let idx = konst_as(cx, DType::I64, vec![frames, fl], &idx);
    let mut fr = tmp(cx, Op::Gather { axis: 1 }, &[x, idx], "frames")?; // [B, F, fl, c]
    if let Some(w) = window {
        if cx.ty(w).numel() != fl {
            return invalid(format!("window {} does not have {fl} elements", cx.ty(w)));
        }
        let w4 = reshape(cx, w, vec![1, 1, fl, 1])?;
        fr = bin(cx, B::Mul, fr, w4)?;
    }
    let onesided = cx.attrs.int_or("onesided", 1)? != 0;
    Ok(vec![dft_core(cx, fr, 2, fl, None, false, onesided)?])
}

/// MelWeightMatrix: a constant `[dft_length / 2 + 1, num_mel_bins]` of triangular filters,
/// computed as the ONNX reference does (its mel step divides by `num_mel_bins + 2`).
pub(super) fn mel_weight_matrix(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let mut v = Vec::with_capacity(5);
    for (i, role) in
        ["num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz"].into_iter().enumerate()
    {
        let t =
            cx.opt_const_input(i, role)?.ok_or_else(|| OpError::Invalid(format!("input {i} ({role}) is missing")))?;
        if t.numel() != 1 {
            return invalid(format!("{role} must be a scalar, got {}", t.ty));
        }
        v.push(t.to_f64_vec()[0]);
    }
    let (bins, dft_length, rate) = (v[0] as i64, v[1] as i64, v[2] as i64);
    if !(1..=1 << 16).contains(&bins) || !(1..=1 << 20).contains(&dft_length) || rate < 1 {
        return invalid(format!("num_mel_bins {bins}, dft_length {dft_length}, sample_rate {rate} are out of range"));
    }
    let dtype = match dtype_of(cx.attrs.int_or("output_datatype", 1)? as i32) {
        Ok(d) => d,
        Err(name) => return unsupported(format!("output_datatype {name}")),
    };
    let spec = (dft_length / 2 + 1) as usize;
    let nb = bins as usize;
    // The hertz inputs are float32: their mel values are computed in float32.
    let mel = |hz: f64| 2595.0f32 * (1.0f32 + hz as f32 / 700.0f32).log10();
    let (lo, hi) = (mel(v[3]), mel(v[4]));
    let step = f64::from((hi - lo) / (bins + 2) as f32);
    let edges: Vec<i64> = (0..bins + 2)
        .map(|i| {
            let m = i as f64 * step + f64::from(lo);
            let hz = 700.0 * (10f64.powf(m / 2595.0) - 1.0);
            (((dft_length + 1) as f64 * hz) / rate as f64).floor() as i64
        })
        .collect();
    let mut out = vec![0.0; spec * nb];
    let mut set = |j: i64, i: usize, val: f64| -> OpResult<()> {
        match usize::try_from(j).ok().filter(|&j| j < spec) {
            Some(j) => {
                out[j * nb + i] = val;
                Ok(())
            }
            None => invalid(format!("mel bin edge {j} is outside the {spec} spectrogram bins")),
        }
    };
    for i in 0..nb {
        let (l, c, h) = (edges[i], edges[i + 1], edges[i + 2]);
        if c == l {
            set(c, i, 1.0)?;
        } else {
            for j in l..=c {
                set(j, i, (j - l) as f64 / (c - l) as f64)?;
            }
        }
        if h > c {
            for j in c..h {
                set(j, i, (h - j) as f64 / (h - c) as f64)?;
            }
        }
    }
    let name = cx.out_name(0);
    Ok(vec![cx.konst(name, tensor_as(dtype, vec![spec, nb], &out))])
}
