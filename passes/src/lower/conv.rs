//! Convolutions: the direct form (a window sum the CPU backend runs as a GEMM over output
//! pixels), with a padded channels-last copy of a few-channel input; 3×3 stride-1 ones go
//! through [`super::winograd`] first.

use super::*;

impl Lowerer<'_> {
    pub(super) fn lower_conv(&mut self, window: &kiln_ir::Window, group: &usize, ins: &[View], out: View, name: &str) {
        if self.lower_winograd(window, *group, ins, &out, name) {
            return;
        }
        let out_shape = out.extents.clone();
        // Reduction order (kh, kw, ci): the input channel innermost, contiguous in a
        // channels-last input and the dim the GEMM schedule blocks.
        let (x, w) = (&ins[0], &ins[1]);
        let cig = w.extents[1];
        // Few input channels (an image): pad the input into a channels-last copy, so
        // that the taps need no bounds checks and `(kw, ci)` is one contiguous run
        // for the GEMM schedule, instead of a few channels per checked tap.
        let padded;
        let mut window = window;
        let mut x = x;
        if *group == 1 && cig <= 8 && x.dtype == DType::F32 && window.pads.iter().any(|&p| p > 0) {
            let [n, c, h, wd] = x.extents[..] else { unreachable!("convolutions are 2-D here") };
            let (hp, wp) = (h + window.pads[0] + window.pads[2], wd + window.pads[1] + window.pads[3]);
            let mut v = self.temp(DType::F32, &[n, c, hp, wp], format!("{name}.padded_input"));
            let (c_, hp_, wp_) = (c as i64, hp as i64, wp as i64);
            v.strides = vec![hp_ * wp_ * c_, 1, wp_ * c_, c_];
            let load = Expr::Load {
                operand: 0,
                index: vec![
                    Expr::Var(0),
                    Expr::Var(1),
                    Expr::sub(Expr::Var(2), Expr::i64(window.pads[0] as i64)),
                    Expr::sub(Expr::Var(3), Expr::i64(window.pads[1] as i64)),
                ],
                pad: Some(Scalar::F32(0.0)),
            };
            self.emit(elementwise(&format!("{name}/pad"), v.clone(), vec![x.clone()], load));
            padded = (v, kiln_ir::Window { pads: [0; 4], ..window.clone() });
            x = &padded.0;
            window = &padded.1;
        }
        let cog = w.extents[0] / group;
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
        let xl = Expr::Load {
            operand: 0,
            index: vec![Expr::Var(0), chan, spatial(0), spatial(1)],
            pad: Some(Scalar::F32(0.0)),
        };
        let wl = Expr::load(1, vec![Expr::Var(1), Expr::Var(6), Expr::Var(4), Expr::Var(5)]);
        self.emit_window_sum(name, domain, [x, w], ins.get(2), Expr::mul(xl, wl), out);
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
        let mut inputs = vec![x.clone(), w.clone()];
        let finalize = bias.map(|b| {
            inputs.push(b.clone());
            Expr::add(Expr::Acc, Expr::load(2, vec![Expr::Var(1)]))
        });
        self.emit(Kernel {
            name: name.into(),
            domain,
            n_par: 4,
            inputs,
            output: out,
            body,
            reduction: Some(Reduction { combine: Combine::Add, init: Scalar::F32(0.0), finalize }),
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
}
