//! Lowering of data-dependent index ops: scatters (in gather form), top-k selection, and
//! the check kernels whose `Assert`s turn an out-of-range index from data into an error.

use kiln_ir::lir::{BufferKind, Combine, Expr, Kernel, Reduction, Scalar, View};
use kiln_ir::op::{BinaryOp, CmpOp, UnaryOp};
use kiln_ir::DType;

use super::*;

impl Lowerer<'_> {
    /// A scatter in gather form: for each output element `p` (the first `out` rank domain
    /// variables), reduce over the candidate updates (the remaining domain variables) for
    /// which `hit` holds; `u` indexes the updates at a candidate. Without a reduction, the
    /// last hit in row-major order of the updates wins: a first kernel finds its flat
    /// position `flat_u`, a second one loads the update there (`decode` turns the flat
    /// position back into an updates index).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lower_scatter(
        &mut self,
        name: &str,
        red: ScatterReduction,
        out: View,
        [x, idx, upd]: [View; 3],
        domain: Vec<usize>,
        hit: Expr,
        u: Vec<Expr>,
        flat_u: Expr,
        decode: &dyn Fn(Expr) -> Vec<Expr>,
    ) {
        let rank = out.extents.len();
        let dt = x.dtype;
        let zero = Scalar::of(dt, 0.0);
        let upd_at = |index: Vec<Expr>| Expr::Load { operand: 2, index, pad: Some(zero) };
        let xl = Expr::load(0, vars(0..rank));
        let (combine, init, op) = match red {
            ScatterReduction::None => {
                let last = self.temp(DType::I64, &out.extents, format!("{name}.last"));
                self.emit(Kernel {
                    name: format!("{name}.last"),
                    domain,
                    n_par: rank,
                    inputs: vec![x.clone(), idx.clone(), upd.clone()],
                    output: last.clone(),
                    body: Expr::select(hit, flat_u, Expr::i64(-1)),
                    reduction: Some(Reduction { combine: Combine::Max, init: Scalar::I64(-1), finalize: None }),
                    origin: Vec::new(),
                });
                let l = Expr::load(3, vars(0..rank));
                let body =
                    Expr::select(Expr::cmp(CmpOp::GreaterOrEqual, l.clone(), Expr::i64(0)), upd_at(decode(l)), xl);
                self.emit(elementwise(name, out, vec![x, idx, upd, last], body));
                return;
            }
            ScatterReduction::Add => (Combine::Add, zero, BinaryOp::Add),
            ScatterReduction::Mul => (Combine::Mul, Scalar::of(dt, 1.0), BinaryOp::Mul),
            ScatterReduction::Max => (Combine::Max, Scalar::extreme(dt, true), BinaryOp::Max),
            ScatterReduction::Min => (Combine::Min, Scalar::extreme(dt, false), BinaryOp::Min),
        };
        self.emit(Kernel {
            name: name.into(),
            domain,
            n_par: rank,
            inputs: vec![x, idx, upd],
            output: out,
            body: Expr::select(hit, upd_at(u), Expr::Const(init)),
            reduction: Some(Reduction { combine, init, finalize: Some(Expr::bin(op, xl, Expr::Acc)) }),
            origin: Vec::new(),
        });
    }

    /// Checks indices from data against `[-dim, dim)`, where the bound may depend on the
    /// position in the indices (`dim_of` for constant indices, checked now; `dim` as an
    /// expression over the indices' domain for a check kernel and an `Assert`).
    pub(super) fn index_check(
        &mut self,
        idx: &View,
        dim_of: &dyn Fn(&[usize]) -> i64,
        dim: Expr,
        name: &str,
        what: &str,
    ) -> Result<(), String> {
        if let BufferKind::Constant(t) = &self.prog.buffer(idx.buffer).kind {
            let vals = t.to_i64_vec();
            let shape = &idx.extents;
            let mut mi = vec![0usize; shape.len()];
            let mut bad = None;
            for &v in vals.iter().take(idx.numel()) {
                let d = dim_of(&mi);
                if v < -d || v >= d {
                    bad = Some((v, d));
                    break;
                }
                for k in (0..shape.len()).rev() {
                    mi[k] += 1;
                    if mi[k] < shape[k] {
                        break;
                    }
                    mi[k] = 0;
                }
            }
            match bad {
                None => return Ok(()),
                Some((v, d)) if !self.guarded => return Err(format!("index {v} is outside [-{d}, {d})")),
                // In a run-time case: an error only if the case runs (the check kernel below).
                Some(_) => {}
            }
        }
        let message = format!("node `{name}` ({what}): an index is outside the range of the axis it indexes");
        self.emit_index_check(idx, dim, name, message);
        Ok(())
    }

    /// Counts the indices outside `[-dim, dim)` into a flag that an `Assert` checks.
    pub(super) fn gather_check(&mut self, idx: &View, dim: i64, axis: usize, name: &str) {
        let message = format!("node `{name}` (Gather): an index is outside [-{dim}, {dim}) on axis {axis}");
        self.emit_index_check(idx, Expr::i64(dim), name, message);
    }

    /// A check kernel counting the indices outside `[-dim, dim)` (`dim` an expression over the
    /// indices' domain), and the `Assert` that stops the run with `message` if any are.
    fn emit_index_check(&mut self, idx: &View, dim: Expr, name: &str, message: String) {
        let ri = idx.extents.len();
        let v = Expr::cast(DType::I64, Expr::load(0, vars(0..ri)));
        let low = Expr::cmp(CmpOp::Less, v.clone(), Expr::unary(UnaryOp::Neg, dim.clone()));
        let high = Expr::cmp(CmpOp::GreaterOrEqual, v, dim);
        let bad = Expr::select(Expr::bin(BinaryOp::Or, low, high), Expr::i64(1), Expr::i64(0));
        self.emit_count_check(idx, bad, name, message);
    }
}

impl Lowerer<'_> {
    pub(super) fn lower_gather_nd(
        &mut self,
        batch_dims: &usize,
        ins: Vec<View>,
        out: View,
        name: &str,
    ) -> Result<(), String> {
        let rank = out.extents.len();
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

        Ok(())
    }

    pub(super) fn lower_scatter_elements(
        &mut self,
        axis: &usize,
        reduction: &ScatterReduction,
        ins: Vec<View>,
        out: View,
        name: &str,
    ) -> Result<(), String> {
        let out_shape = out.extents.clone();
        let rank = out.extents.len();
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

        Ok(())
    }

    pub(super) fn lower_scatter_nd(
        &mut self,
        reduction: &ScatterReduction,
        ins: Vec<View>,
        out: View,
        name: &str,
    ) -> Result<(), String> {
        let out_shape = out.extents.clone();
        let rank = out.extents.len();
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

        Ok(())
    }
}
