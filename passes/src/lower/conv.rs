//! Convolutions: the direct form (a window sum the CPU backend runs as a GEMM over output
//! pixels), of a padded copy of some inputs (few channels, row-major, grouped); 3×3 stride-1
//! ones go through [`super::winograd`] first.

use super::*;

/// Group `gi`'s `per` entries of `v` along `dim` (a grouped convolution's channels).
fn group_slice(v: &View, dim: usize, gi: usize, per: usize) -> View {
    let mut v = v.clone();
    v.offset += (gi * per) as i64 * v.strides[dim];
    v.extents[dim] = per;
    v
}

impl Lowerer<'_> {
    pub(super) fn lower_conv(&mut self, window: &kiln_ir::Window, group: &usize, ins: &[View], out: View, name: &str) {
        let (x, w) = (&ins[0], &ins[1]);
        let cig = w.extents[1];
        // Some inputs are first copied, padded (so that no tap needs a bounds check), in the
        // output's layout; the convolution then reads the copy with a window without pads:
        // * few input channels (an image): in channels-last `(kw, ci)` is one contiguous run
        //   for the GEMM schedule, instead of a few channels per checked tap;
        // * a row-major input of many channels (a Transpose's or a Reshape's result: a 3-D
        //   convolution's depth slices), which every kernel of the convolution would read a
        //   whole image apart per channel (Winograd's input transform took a third of a 3-D
        //   ResNet-18's time so); not for a 1×1 convolution, whose product reads it as it is
        //   (a MobileNetV2 expansion took 1.3× as long with the copy);
        // * a grouped convolution's: it reads a few channels per output channel, which the
        //   loop over output channels (innermost, contiguous in the channels-last result)
        //   reads contiguously only from a channels-last input. A depthwise one on a
        //   row-major input writes row-major (see `choose_layout`): its loop runs along the
        //   image row, and past 3×3 taps a padded row-major copy spares them the bounds
        //   checks (see `small_depthwise` below). One
        //   of few channels a group (ResNeXt's first stage: 4) is copied once, padded, not
        //   as many times as it has groups (as each group's product would copy its few
        //   channels: 3% of a ResNeXt-50).
        let padded_pays = window.pads.iter().any(|&p| p > 0);
        let row_major_out = out.strides[1] != 1;
        let row_major_in = x.strides[1] != 1;
        if row_major_out && row_major_in && self.lower_conv_row_major(window, *group, ins, &out, name) {
            return;
        }
        let few_channels = *group == 1 && cig <= 8 && padded_pays;
        let many_row_major = *group == 1 && cig > 8 && window.kernel != [1, 1] && row_major_in && !row_major_out;
        let grouped = *group > 1
            && ((row_major_in && !row_major_out) || (padded_pays && (row_major_out || (cig > 1 && cig <= 8))));
        // A depthwise one of at most 3×3 taps checks its pads lane by lane at the rows' edges
        // instead (on the Xeon: 3×3 over 144 channels of 56×56 0.25 → 0.15 ms, and with
        // stride 2 over 96 of 112×112 0.54 → 0.21 ms; a 7×7 took 0.37 → 0.50 ms without
        // its copy, so it keeps it).
        let small_depthwise = cig == 1 && row_major_out && window.kernel[0] * window.kernel[1] <= 9;
        let grouped = grouped && !small_depthwise;
        if x.dtype == DType::F32 && (few_channels || many_row_major || grouped) {
            let (copy, unpadded) = self.padded_copy(x, window, Scalar::F32(0.0), !row_major_out, name);
            let mut ins = ins.to_vec();
            ins[0] = copy;
            return self.lower_conv(&unpadded, group, &ins, out, name);
        }
        if self.lower_pointwise_row_major(window, *group, ins, &out, name) {
            return;
        }
        if self.lower_winograd(window, *group, ins, &out, name) {
            return;
        }
        let out_shape = out.extents.clone();
        // Reduction order (kh, kw, ci): the input channel innermost, contiguous in a
        // channels-last input and the dim the GEMM schedule blocks.
        let cog = w.extents[0] / group;
        if *group > 1 && cig > 1 && out.strides[1] == 1 && x.strides[1] == 1 {
            if cig == cog && cig <= 8 && self.lower_grouped_in_vectors(window, ins, &out, name) {
                return;
            }
            // A grouped convolution (not depthwise) is one ordinary convolution per group, on
            // its slice of the channels-last input and output: matrix products the GEMM
            // schedule runs, where one kernel over every group would index channels by a
            // division.
            for gi in 0..*group {
                let slice = |v: &View, dim: usize, per: usize| group_slice(v, dim, gi, per);
                let mut gins = vec![slice(x, 1, cig), slice(w, 0, cog)];
                gins.extend(ins.get(2).map(|b| slice(b, 0, cog)));
                self.lower_conv(window, &1, &gins, slice(&out, 1, cog), &format!("{name}/g{gi}"));
            }
            return;
        }
        let [kh, kw] = window.kernel;
        let mut domain = out_shape.clone();
        domain.extend([kh, kw, cig]);
        let chan = if *group == 1 {
            Expr::Var(6)
        } else if cig == 1 {
            // Depthwise: the channel is the group.
            if cog == 1 {
                Expr::Var(1)
            } else {
                Expr::div(Expr::Var(1), Expr::i64(cog as i64))
            }
        } else {
            Expr::add(Expr::mul(Expr::div(Expr::Var(1), Expr::i64(cog as i64)), Expr::i64(cig as i64)), Expr::Var(6))
        };
        let spatial = |a: usize| window_input_index(window, a, Expr::Var(4 + a));
        // Without pads every tap is inside the input (the output extent says so): no checks.
        let xl = Expr::Load {
            operand: 0,
            index: vec![Expr::Var(0), chan, spatial(0), spatial(1)],
            pad: (window.pads != [0; 4]).then_some(Scalar::of(x.dtype, 0.0)),
        };
        let wl = Expr::load(1, vec![Expr::Var(1), Expr::Var(6), Expr::Var(4), Expr::Var(5)]);
        // An integer convolution multiplies its narrow operands widened to i32.
        let body = if x.dtype.is_int() {
            Expr::mul(Expr::cast(DType::I32, xl), Expr::cast(DType::I32, wl))
        } else {
            Expr::mul(xl, wl)
        };
        self.emit_window_sum(name, domain, [x, w], ins.get(2), body, out);
    }

    /// A grouped convolution (not depthwise) from a row-major input to a row-major output
    /// (a lone convolution's graph output): per group, the product
    /// `Y[n, oh, co, ow] = Σ_(ci, kh, kw) W[co, ci, kh, kw]·X[n, ci, oh·s + kh·d, ow·s + kw·d]`
    /// over the domain `[n, oh, co, ow, ci, kh, kw]`, the GEMM schedule's `[batch, M, N, K]`
    /// with B (the input's rows) and C contiguous along the pixels of a row: no transposing
    /// copy of the input into channels-last nor of the result back (a RegNet 3×3
    /// convolution of 8 groups spent a third of its time in those two copies). A padded
    /// input is first copied, padded, row-major. Returns false (and emits nothing) where
    /// the other forms apply.
    fn lower_conv_row_major(
        &mut self,
        window: &kiln_ir::Window,
        group: usize,
        ins: &[View],
        out: &View,
        name: &str,
    ) -> bool {
        let (x, w) = (&ins[0], &ins[1]);
        let (cig, cog) = (w.extents[1], w.extents[0] / group);
        // Grouped only: an ungrouped one's channels-last product over output pixels with a
        // transposing copy after it measured as fast (a ResNet stem) or faster (a dilated
        // 3×3 over 64 channels: 1.48 against 1.82 ms).
        if group == 1 || depthwise(group, &w.extents) || x.dtype != DType::F32 || out.extents.len() != 4 {
            return false;
        }
        let (x, window) = if window.pads.iter().any(|&p| p > 0) {
            self.padded_copy(x, window, Scalar::F32(0.0), false, name)
        } else {
            (x.clone(), window.clone())
        };
        let [kh, kw] = window.kernel;
        let [n, _, oh, ow] = out.extents[..] else { return false };
        let spatial = |a: usize, o: usize, t: usize| {
            Expr::add(
                Expr::mul(Expr::Var(o), Expr::i64(window.strides[a] as i64)),
                Expr::mul(Expr::Var(t), Expr::i64(window.dilations[a] as i64)),
            )
        };
        for gi in 0..group {
            let slice = |v: &View, dim: usize, per: usize| group_slice(v, dim, gi, per);
            let (xg, wg, og) = (slice(&x, 1, cig), slice(w, 0, cog), slice(out, 1, cog));
            // The output in the domain's order (n, oh, co, ow).
            let mut yv = og.clone();
            yv.extents = vec![n, oh, cog, ow];
            yv.strides = vec![og.strides[0], og.strides[2], og.strides[1], og.strides[3]];
            let xl = Expr::load(0, vec![Expr::Var(0), Expr::Var(4), spatial(0, 1, 5), spatial(1, 3, 6)]);
            let wl = Expr::load(1, vec![Expr::Var(2), Expr::Var(4), Expr::Var(5), Expr::Var(6)]);
            let bias = ins.get(2).map(|b| slice(b, 0, cog));
            self.emit_product_sum(
                &format!("{name}/g{gi}"),
                (vec![n, oh, cog, ow, cig, kh, kw], 4),
                [&xg, &wg],
                bias.as_ref().map(|b| (b, 2)),
                Expr::mul(xl, wl),
                yv,
            );
        }
        true
    }

    /// A 1×1 convolution (stride 1, no pads, one group) from a row-major input to a
    /// row-major output, as the product `Y[n, co, p] = Σ_ci W[co, ci]·X[n, ci, p]` over the
    /// pixels `p` (H and W merged): the domain `[n, co, p, ci]` is the GEMM schedule's
    /// `[batch, M, N, K]`, with B (the input) and C contiguous along N. Returns false (and
    /// emits nothing) where the image's rows are not contiguous in the input or the output.
    fn lower_pointwise_row_major(
        &mut self,
        window: &kiln_ir::Window,
        group: usize,
        ins: &[View],
        out: &View,
        name: &str,
    ) -> bool {
        let (x, w) = (&ins[0], &ins[1]);
        let pointwise = window.kernel == [1, 1] && window.strides == [1, 1] && window.pads == [0; 4];
        // The pixels as one dim: W contiguous and H one whole row of W apart.
        let pixels = |v: &View| {
            (v.strides[3] == 1 && v.strides[2] == v.extents[3] as i64).then(|| {
                let mut m = v.clone();
                m.extents = vec![v.extents[0], v.extents[1], v.extents[2] * v.extents[3]];
                m.strides = vec![v.strides[0], v.strides[1], 1];
                m
            })
        };
        if !pointwise || group != 1 || x.dtype != DType::F32 {
            return false;
        }
        let (Some(xp), Some(yp)) = (pixels(x), pixels(out)) else { return false };
        let ci = w.extents[1];
        let xl = Expr::load(0, vec![Expr::Var(0), Expr::Var(3), Expr::Var(2)]);
        let wl = Expr::load(1, vec![Expr::Var(1), Expr::Var(3), Expr::i64(0), Expr::i64(0)]);
        let mut domain = yp.extents.clone();
        domain.push(ci);
        self.emit_product_sum(name, (domain, 3), [&xp, w], ins.get(2).map(|b| (b, 1)), Expr::mul(xl, wl), yp);
        true
    }

    /// A channels-last grouped convolution of a few channels a group, as many in as out
    /// (ResNeXt's first stages: 4 and 8), as one kernel over every channel: its sum over a
    /// group's input channels written out term by term, each reading the input at its
    /// group's first channel plus a constant, which the CPU's vector rows do as one load and
    /// a shuffle per term (the per-group products ran 4 columns of a 32-wide tile). The
    /// weights, constant, are stored `[ci, kh, kw, C]`: contiguous along the output channels.
    /// Returns false (and emits nothing) where they are not constant or there are pads.
    fn lower_grouped_in_vectors(&mut self, window: &kiln_ir::Window, ins: &[View], out: &View, name: &str) -> bool {
        let (x, w) = (&ins[0], &ins[1]);
        if window.pads != [0; 4] || x.dtype != DType::F32 {
            return false;
        }
        let Some(wt) = self.constant_f32(w) else { return false };
        let Ok(mut t) = kiln_ir::ops::eval(&Op::Transpose { perm: vec![1, 2, 3, 0] }, &[&wt]) else { return false };
        let t = t.remove(0);
        let (cig, shape) = (w.extents[1], t.shape().to_vec());
        let bytes = t.ty.bytes();
        let wb = self.prog.add_buffer(BufferKind::Constant(t), bytes, format!("{name}.grouped_weights"));
        let wv = View::dense(wb, DType::F32, &shape);
        let q = Expr::i64(cig as i64);
        let first = Expr::mul(Expr::div(Expr::Var(1), q.clone()), q);
        let spatial = |a: usize| window_input_index(window, a, Expr::Var(4 + a));
        let term = |i: usize| {
            let chan = Expr::add(first.clone(), Expr::i64(i as i64));
            let xl = Expr::load(0, vec![Expr::Var(0), chan, spatial(0), spatial(1)]);
            let wl = Expr::load(1, vec![Expr::i64(i as i64), Expr::Var(4), Expr::Var(5), Expr::Var(1)]);
            Expr::mul(xl, wl)
        };
        let body = (1..cig).fold(term(0), |acc, i| Expr::add(acc, term(i)));
        let mut domain = out.extents.clone();
        domain.extend(window.kernel);
        self.emit_window_sum(name, domain, [x, &wv], ins.get(2), body, out.clone());
        true
    }

    /// A copy of the NCHW input `x` with the window's pads filled with `pad` (row-major or
    /// channels-last), and the window without pads that reads it: its taps need no bounds
    /// checks.
    pub(super) fn padded_copy(
        &mut self,
        x: &View,
        window: &kiln_ir::Window,
        pad: Scalar,
        channels_last: bool,
        name: &str,
    ) -> (View, kiln_ir::Window) {
        let [n, c, h, w] = x.extents[..] else { unreachable!("windows are 2-D here") };
        let (hp, wp) = (h + window.pads[0] + window.pads[2], w + window.pads[1] + window.pads[3]);
        let mut v = self.temp(x.dtype, &[n, c, hp, wp], format!("{name}.padded_input"));
        if channels_last {
            v.strides = channels_last_strides(&v.extents);
        }
        let shifted = |a: usize| Expr::sub(Expr::Var(2 + a), Expr::i64(window.pads[a] as i64));
        let load =
            Expr::Load { operand: 0, index: vec![Expr::Var(0), Expr::Var(1), shifted(0), shifted(1)], pad: Some(pad) };
        self.emit(elementwise(&format!("{name}/pad"), v.clone(), vec![x.clone()], load));
        (v, kiln_ir::Window { pads: [0; 4], ..window.clone() })
    }

    pub(super) fn emit_window_sum(
        &mut self,
        name: &str,
        domain: Vec<usize>,
        [x, w]: [&View; 2],
        bias: Option<&View>,
        body: Expr,
        out: View,
    ) {
        self.emit_product_sum(name, (domain, 4), [x, w], bias.map(|b| (b, 1)), body, out);
    }

    /// A kernel summing `body` (a product of operands 0 and 1) over the domain's dims past
    /// its first `n_par`, plus `bias` indexed by parallel variable `channel`, if any.
    fn emit_product_sum(
        &mut self,
        name: &str,
        (domain, n_par): (Vec<usize>, usize),
        [x, w]: [&View; 2],
        bias: Option<(&View, usize)>,
        body: Expr,
        out: View,
    ) {
        let mut inputs = vec![x.clone(), w.clone()];
        let dt = out.dtype;
        let finalize = bias.map(|(b, channel)| {
            inputs.push(b.clone());
            Expr::add(Expr::Acc, Expr::load(2, vec![Expr::Var(channel)]))
        });
        self.emit(Kernel {
            name: name.into(),
            domain,
            n_par,
            inputs,
            output: out,
            body,
            reduction: Some(Reduction { combine: Combine::Add, init: Scalar::of(dt, 0.0), finalize }),
            origin: Vec::new(),
        });
    }
}

impl Lowerer<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lower_conv_transpose(
        &mut self,
        kernel: &[usize; 2],
        strides: &[usize; 2],
        dilations: &[usize; 2],
        pads: &[i64; 2],
        group: &usize,
        ins: Vec<View>,
        out: View,
        name: &str,
    ) -> Result<(), String> {
        if self.lower_conv_transpose_subpixel(kernel, strides, dilations, pads, *group, &ins, &out, name) {
            return Ok(());
        }
        let out_shape = out.extents.clone();
        // Gather form: output (oy, ox) sums the taps whose input position
        // (o + pad − t·dilation) / stride is integral and inside the input.
        let (x, w) = (&ins[0], &ins[1]);
        let (cg, mg) = (w.extents[0] / group, w.extents[1]);
        let mut domain = out_shape.clone();
        domain.extend([cg, kernel[0], kernel[1]]);
        let chan = if *group == 1 {
            Expr::Var(4)
        } else {
            Expr::add(Expr::mul(Expr::div(Expr::Var(1), Expr::i64(mg as i64)), Expr::i64(cg as i64)), Expr::Var(4))
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
                Expr::cmp(CmpOp::Equal, Expr::bin(BinaryOp::Mod { fmod: true }, t.clone(), Expr::i64(s)), Expr::i64(0)),
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

        Ok(())
    }

    /// ConvTranspose with constant weights, no dilation and non-negative begin pads, as a
    /// sub-pixel decomposition: one ordinary convolution that computes every output phase
    /// (`(o + pad) mod stride` per spatial axis) as its own group of output channels, then an
    /// interleaving copy. Along an axis of stride `s` and kernel `k`, phase `r` is the
    /// correlation of the input with the taps `r, r + s, …` reversed, `⌈k / s⌉` of them (the
    /// shorter phases padded with zero taps), so the convolution reaches the fast GEMM path.
    /// Returns false (and emits nothing) where it does not apply.
    #[allow(clippy::too_many_arguments)]
    fn lower_conv_transpose_subpixel(
        &mut self,
        kernel: &[usize; 2],
        strides: &[usize; 2],
        dilations: &[usize; 2],
        pads: &[i64; 2],
        group: usize,
        ins: &[View],
        out: &View,
        name: &str,
    ) -> bool {
        let (x, w) = (&ins[0], &ins[1]);
        if group != 1 || *dilations != [1, 1] || pads.iter().any(|&p| p < 0) || x.dtype != DType::F32 {
            return false;
        }
        let Some(wt) = self.constant_f32(w) else { return false };
        let kiln_ir::Data::F32(wdata) = wt.data() else { return false };
        let (ci, co) = (w.extents[0], w.extents[1]);
        let [n, _, ih, iw] = x.extents[..] else { return false };
        let s = [strides[0], strides[1]];
        let taps = [kernel[0].div_ceil(s[0]), kernel[1].div_ceil(s[1])];
        let phases = s[0] * s[1];
        // The sub-kernels: output channel (phase, co), tap j of phase r is w[r + s·(taps-1-j)].
        let mut sub = vec![0f32; phases * co * ci * taps[0] * taps[1]];
        for (oc, out_taps) in sub.chunks_mut(ci * taps[0] * taps[1]).enumerate() {
            let (rh, rw, c) = (oc / co / s[1], oc / co % s[1], oc % co);
            for (k, v) in out_taps.iter_mut().enumerate() {
                let (i, jh, jw) = (k / (taps[0] * taps[1]), k / taps[1] % taps[0], k % taps[1]);
                let (th, tw) = (rh + s[0] * (taps[0] - 1 - jh), rw + s[1] * (taps[1] - 1 - jw));
                if th < kernel[0] && tw < kernel[1] {
                    *v = wdata[((i * co + c) * kernel[0] + th) * kernel[1] + tw];
                }
            }
        }
        let wshape = vec![phases * co, ci, taps[0], taps[1]];
        let wsub = kiln_ir::Tensor::f32(wshape.clone(), sub);
        let bytes = wsub.ty.bytes();
        let wb = self.prog.add_buffer(BufferKind::Constant(wsub), bytes, format!("{name}.subpixel_weights"));
        // Phase outputs q run from q0 = ⌊pad / s⌋ to ⌊(out - 1 + pad) / s⌋; the convolution's
        // output q' = q - q0 reads input q - (taps - 1) + j: a shifted view of the input
        // where that is positive, a begin pad where it is negative.
        let mut xv = x.clone();
        let (mut q0, mut qn, mut pad) = ([0i64; 2], [0usize; 2], [0usize; 4]);
        for a in 0..2 {
            let (sa, o) = (s[a] as i64, out.extents[2 + a] as i64);
            q0[a] = pads[a] / sa;
            qn[a] = ((o - 1 + pads[a]) / sa - q0[a] + 1) as usize;
            let shift = q0[a] - (taps[a] as i64 - 1);
            let extent = [ih, iw][a] as i64;
            if shift > 0 {
                if shift >= extent {
                    return false;
                }
                xv.offset += shift * x.strides[2 + a];
                xv.extents[2 + a] -= shift as usize;
            } else {
                pad[a] = (-shift) as usize;
            }
            // End pad so that the convolution covers every q' < qn.
            let have = xv.extents[2 + a] as i64 + pad[a] as i64 - taps[a] as i64 + 1;
            pad[2 + a] = (qn[a] as i64 - have).max(0) as usize;
        }
        let window = kiln_ir::Window { kernel: taps, strides: [1, 1], pads: pad, dilations: [1, 1] };
        let conv_out: Vec<usize> = vec![
            n,
            phases * co,
            window.out_dim(0, xv.extents[2], false).unwrap_or(0),
            window.out_dim(1, xv.extents[3], false).unwrap_or(0),
        ];
        if conv_out[2] < qn[0] || conv_out[3] < qn[1] {
            return false;
        }
        // Channels-last, as convolutions' results are (the GEMM writes channels contiguously).
        let mut v = self.temp(DType::F32, &conv_out, format!("{name}.phases"));
        v.strides = channels_last_strides(&conv_out);
        self.lower_conv(&window, &1, &[xv, View::dense(wb, DType::F32, &wshape)], v.clone(), &format!("{name}/phases"));
        // Interleave: y[n, c, o] = v[n, (r_h·s_w + r_w)·co + c, q - q0] (+ bias[c]),
        // with q, r the quotient and remainder of o + pad by the stride.
        let t = |a: usize| Expr::add(Expr::Var(2 + a), Expr::i64(pads[a]));
        let q = |a: usize| Expr::sub(Expr::div(t(a), Expr::i64(s[a] as i64)), Expr::i64(q0[a]));
        let r = |a: usize| Expr::bin(BinaryOp::Mod { fmod: true }, t(a), Expr::i64(s[a] as i64));
        let phase = Expr::add(Expr::mul(r(0), Expr::i64(s[1] as i64)), r(1));
        // The phases' channels as (phase, c): the output channel indexes its own dim, which
        // the loads step along contiguously (a transposed copy when the output is row-major).
        let mut by_phase = v.clone();
        by_phase.extents = vec![n, phases, co, conv_out[2], conv_out[3]];
        by_phase.strides = vec![v.strides[0], co as i64 * v.strides[1], v.strides[1], v.strides[2], v.strides[3]];
        let mut inputs = vec![by_phase];
        let mut body = Expr::load(0, vec![Expr::Var(0), phase, Expr::Var(1), q(0), q(1)]);
        if let Some(b) = ins.get(2) {
            inputs.push(b.clone());
            body = Expr::add(body, Expr::load(1, vec![Expr::Var(1)]));
        }
        self.emit(elementwise(name, out.clone(), inputs, body));
        true
    }
}
