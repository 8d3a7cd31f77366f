//! Data movement: Transpose, Slice, Concat, Gather, Expand as copies with index maps.

use super::*;

impl Lowerer<'_> {
    pub(super) fn lower_transpose(
        &mut self,
        perm: &[usize],
        ins: Vec<View>,
        out: View,
        name: &str,
    ) -> Result<(), String> {
        let out_shape = out.extents.clone();
        let rank = out.extents.len();
        let x = &ins[0];
        let v = View {
            buffer: x.buffer,
            dtype: x.dtype,
            offset: x.offset,
            extents: out_shape.clone(),
            strides: perm.iter().map(|&p| x.strides[p]).collect(),
        };
        self.emit(elementwise(name, out, vec![v], Expr::load(0, vars(0..rank))));

        Ok(())
    }

    pub(super) fn lower_slice(
        &mut self,
        starts: &[i64],
        steps: &[i64],
        ins: Vec<View>,
        out: View,
        name: &str,
    ) -> Result<(), String> {
        let out_shape = out.extents.clone();
        let rank = out.extents.len();
        let x = &ins[0];
        let offset = x.offset + starts.iter().zip(&x.strides).map(|(s, t)| s * t).sum::<i64>();
        let v = View {
            buffer: x.buffer,
            dtype: x.dtype,
            offset,
            extents: out_shape.clone(),
            strides: x.strides.iter().zip(steps).map(|(t, s)| t * s).collect(),
        };
        self.emit(elementwise(name, out, vec![v], Expr::load(0, vars(0..rank))));

        Ok(())
    }

    pub(super) fn lower_concat(&mut self, axis: &usize, ins: Vec<View>, out: View, name: &str) -> Result<(), String> {
        let rank = out.extents.len();
        if let Some(((slot, per), dims)) = crate::rows::concat_runs(&mut self.prog, &ins, &out, *axis) {
            // The first operand is as long as a run makes it: each later one starts where the
            // one before ends at run time. Every load is padded (the select reads both sides).
            let n = ins.len();
            // The dims array is operand n; the first bound is the guard the LIR walk reads.
            let mut start = crate::rows::run_extent(n, slot, per);
            let mut bounds = vec![start.clone()];
            for v in &ins[1..n - 1] {
                start = Expr::add(start, Expr::i64(v.extents[*axis] as i64));
                bounds.push(start.clone());
            }
            let load_at = |k: usize, at: Expr| {
                let mut index = vars(0..rank);
                index[*axis] = at;
                Expr::Load { operand: k, index, pad: Some(Scalar::of(out.dtype, 0.0)) }
            };
            // Operand k (k ≥ 1) starts at bounds[k - 1].
            let shifted = |k: usize| load_at(k, Expr::sub(Expr::Var(*axis), bounds[k - 1].clone()));
            let mut body = shifted(n - 1);
            for k in (1..n - 1).rev() {
                body = Expr::select(Expr::cmp(CmpOp::Less, Expr::Var(*axis), bounds[k].clone()), shifted(k), body);
            }
            body = Expr::select(
                Expr::cmp(CmpOp::Less, Expr::Var(*axis), bounds[0].clone()),
                load_at(0, Expr::Var(*axis)),
                body,
            );
            let mut inputs = ins;
            inputs.push(dims);
            self.emit(elementwise(name, out, inputs, body));
            return Ok(());
        }
        let mut at = 0usize;
        for (k, v) in ins.iter().enumerate() {
            let mut o = out.clone();
            o.extents = v.extents.clone();
            o.offset += at as i64 * out.strides[*axis];
            at += v.extents[*axis];
            if v.numel() > 0 {
                self.emit(elementwise(&format!("{name}.{k}"), o, vec![v.clone()], Expr::load(0, vars(0..rank))));
            }
        }

        Ok(())
    }

    pub(super) fn lower_gather(&mut self, axis: &usize, ins: Vec<View>, out: View, name: &str) -> Result<(), String> {
        let rank = out.extents.len();
        let (x, idx) = (&ins[0], &ins[1]);
        let ri = idx.extents.len();
        let dim = x.extents[*axis] as i64;
        let raw = Expr::cast(DType::I64, Expr::load(1, vars(*axis..axis + ri)));
        let wrapped = Expr::select(
            Expr::cmp(CmpOp::Less, raw.clone(), Expr::i64(0)),
            Expr::add(raw.clone(), Expr::i64(dim)),
            raw,
        );
        // Out-of-range indices are clamped so a bad index can never read outside memory.
        let clamped =
            Expr::bin(BinaryOp::Min, Expr::bin(BinaryOp::Max, wrapped, Expr::i64(0)), Expr::i64((dim - 1).max(0)));
        // Constant indices are checked now; indices from data are counted at run time
        // and a bad one stops the run with an error naming the node.
        let mut index = clamped;
        let constant = match &self.prog.buffer(idx.buffer).kind {
            BufferKind::Constant(t) => Some(t.to_i64_vec()),
            _ => None,
        };
        let bad = constant.as_ref().is_some_and(|vals| vals.iter().any(|&i| i < -dim || i >= dim));
        if bad && self.guarded {
            // In a run-time case: checked when the case runs (clamped meanwhile).
            self.gather_check(idx, dim, *axis, name);
        } else if let Some(vals) = constant {
            if let Some(bad) = vals.iter().find(|&&i| i < -dim || i >= dim) {
                return Err(format!("index {bad} is outside [-{dim}, {dim}) on axis {axis}"));
            }
            // One index: a constant (the kernel is then a copy through a view, which its
            // readers may take in place). Every index already in [0, dim): used as it is, no
            // wrap or clamp per element.
            if let [i] = vals[..] {
                index = Expr::i64(if i < 0 { i + dim } else { i });
            } else if vals.iter().all(|&i| i >= 0) {
                index = Expr::cast(DType::I64, Expr::load(1, vars(*axis..axis + ri)));
            }
        } else {
            self.gather_check(idx, dim, *axis, name);
        }
        let mut xidx = vars(0..*axis);
        xidx.push(index);
        xidx.extend(vars(axis + ri..rank));
        self.emit(elementwise(name, out, vec![x.clone(), idx.clone()], Expr::load(0, xidx)));

        Ok(())
    }
}
