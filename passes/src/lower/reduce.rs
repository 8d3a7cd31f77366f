//! Reductions: Reduce*, ArgMax/ArgMin, TopK's indices.

use super::*;

impl Lowerer<'_> {
    pub(super) fn lower_reduce(
        &mut self,
        r: &ReduceOp,
        axes: &[usize],
        ins: Vec<View>,
        out: View,
        name: &str,
    ) -> Result<(), String> {
        // Not for a value fused into this kernel: LIR fusion substitutes its producer at the
        // load's indices, which must name the producer's own dims.
        let (x, axes) = if self.prog.buffer(ins[0].buffer).fused {
            (ins[0].clone(), axes.to_vec())
        } else {
            merge_reduced_axes(ins[0].clone(), axes)
        };
        let axes = &axes[..];
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
            origin: Vec::new(),
        });

        Ok(())
    }

    pub(super) fn lower_arg_reduce(
        &mut self,
        max: &bool,
        axis: &usize,
        select_last: &bool,
        ins: Vec<View>,
        out: View,
        name: &str,
    ) -> Result<(), String> {
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
            origin: Vec::new(),
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
            origin: Vec::new(),
        });

        Ok(())
    }
}

/// Merges adjacent reduced axes that are one run in memory (an outer axis's stride is the
/// inner one's times its extent: a mean over H and W of a row-major image), so that the
/// reduction is one long loop over contiguous elements instead of many short ones.
fn merge_reduced_axes(mut x: View, axes: &[usize]) -> (View, Vec<usize>) {
    let mut axes = axes.to_vec();
    let mut i = 0;
    while i + 1 < axes.len() {
        let (a, b) = (axes[i], axes[i + 1]);
        if b == a + 1 && x.strides[a] == x.strides[b] * x.extents[b] as i64 {
            x.extents[a] *= x.extents[b];
            x.strides[a] = x.strides[b];
            x.extents.remove(b);
            x.strides.remove(b);
            axes.remove(i + 1);
            for later in &mut axes[i + 1..] {
                *later -= 1;
            }
        } else {
            i += 1;
        }
    }
    (x, axes)
}
