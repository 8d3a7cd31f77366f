//! Products: MatMul (batched, broadcast) and Gemm, as reductions over K.

use super::*;

impl Lowerer<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lower_gemm(
        &mut self,
        alpha: &f32,
        beta: &f32,
        trans_a: &bool,
        trans_b: &bool,
        ins: Vec<View>,
        out: View,
        name: &str,
    ) -> Result<(), String> {
        let out_shape = out.extents.clone();
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
        let body =
            Expr::mul(Expr::load(0, vec![Expr::Var(0), Expr::Var(2)]), Expr::load(1, vec![Expr::Var(2), Expr::Var(1)]));
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
            origin: Vec::new(),
        });

        Ok(())
    }

    /// MatMul: batch dims broadcast, 1-D operands promoted, a sum over K.
    pub(super) fn lower_matmul(&mut self, ins: Vec<View>, out: View, name: &str) {
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
            origin: Vec::new(),
        });
    }
}
