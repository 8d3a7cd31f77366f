//! Pooling: max and average windows, and MaxPool's indices.

use super::*;

impl Lowerer<'_> {
    pub(super) fn lower_pool(&mut self, op: &Op, ins: Vec<View>, out: View, name: &str) -> Result<(), String> {
        let (Op::MaxPool { window, .. } | Op::AveragePool { window, .. }) = op else {
            unreachable!("dispatched by lower_node")
        };
        let out_shape = out.extents.clone();
        let x = &ins[0];
        let dt = x.dtype;
        let mut domain = out_shape.clone();
        domain.extend(window.kernel);
        let is_max = matches!(op, Op::MaxPool { .. });
        let pad = if is_max { Scalar::extreme(dt, true) } else { Scalar::of(dt, 0.0) };
        // A row-major input with pads is copied into a padded one (the pad value: -inf for
        // a max, 0 for a sum) when every window lies inside it: the taps then need no bounds
        // checks, which along the image row (the innermost loop here) keep it from vectorizing.
        let inside = (0..2).all(|a| {
            let (n, o) = (x.extents[2 + a], out_shape[2 + a]);
            o == 0
                || (o - 1) * window.strides[a] + (window.kernel[a] - 1) * window.dilations[a]
                    < n + window.pads[a] + window.pads[a + 2]
        });
        // Stride 1 only: a strided row is not vectorized anyway, and the copy costs a pass.
        let padded_copy = window.pads != [0; 4]
            && window.strides == [1, 1]
            && dt == DType::F32
            && x.strides[1] != 1
            && out.strides[1] != 1
            && inside;
        let (src, win) =
            if padded_copy { self.padded_copy(x, window, pad, false, name) } else { (x.clone(), window.clone()) };
        let spatial = |a: usize| window_input_index(&win, a, Expr::Var(4 + a));
        let body = Expr::Load {
            operand: 0,
            index: vec![Expr::Var(0), Expr::Var(1), spatial(0), spatial(1)],
            pad: (!padded_copy).then_some(pad),
        };
        let mut inputs = vec![src];
        let reduction = if is_max {
            Reduction { combine: Combine::Max, init: pad, finalize: None }
        } else {
            let Op::AveragePool { count_include_pad, .. } = op else { unreachable!() };
            // Divisors depend only on the output position: precompute 1/count per (oh, ow).
            let (oh, ow) = (out_shape[2], out_shape[3]);
            let (h, w) = (x.extents[2] as i64, x.extents[3] as i64);
            let count_axis = |a: usize, o: usize, n: i64| -> i64 {
                let start = (o * window.strides[a]) as i64 - window.pads[a] as i64;
                let (lo, hi) =
                    if *count_include_pad { (-(window.pads[a] as i64), n + window.pads[a + 2] as i64) } else { (0, n) };
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
            origin: Vec::new(),
        });

        Ok(())
    }

    pub(super) fn lower_max_pool_indices(
        &mut self,
        window: &kiln_ir::Window,
        ceil_mode: &bool,
        column_major: &bool,
        ins: Vec<View>,
        out: View,
        name: &str,
    ) -> Result<(), String> {
        let out_shape = out.extents.clone();
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
            origin: Vec::new(),
        });

        Ok(())
    }
}
