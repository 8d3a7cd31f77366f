//! `FlexAttention` (domain `ai.onnx.preview`): scaled dot-product attention with optional
//! `score_mod` / `prob_mod` subgraphs, which are inlined like control-flow bodies.
//!
//! `Y = prob_mod(Softmax(score_mod((Q @ Kᵀ) · scale))) @ V` on rank-4 inputs; with fewer K/V
//! heads than query heads, query head `h` uses K/V head `h / (Hq / Hkv)`. It computes in f64
//! for f64 inputs and in f32 otherwise (f16/bf16 inputs are widened), rounding scores and
//! probabilities to `softmax_precision` when that names a narrower float.

use kiln_ir::{BinaryOp, DType, Op, ValueId};

use super::control::At;
use super::{Importer, Slot};
use crate::data::dtype_of;
use crate::ops::{invalid, unsupported, OpResult};
use crate::proto::NodeProto;

impl Importer {
    /// Imports a FlexAttention node; `None` when a modifier subgraph holds an unsupported op.
    pub(super) fn flex_attention(
        &mut self,
        node: &NodeProto,
        name: &str,
        opset: i64,
        inputs: &[Option<ValueId>],
    ) -> OpResult<Option<Vec<ValueId>>> {
        let at = At { node, name, opset };
        let arg = |i: usize| inputs.get(i).copied().flatten().ok_or_else(|| format!("input {i} is missing"));
        let (q, k, v) = (arg(0)?, arg(1)?, arg(2)?);
        let (qt, kt, vt) = (self.g.ty(q).clone(), self.g.ty(k).clone(), self.g.ty(v).clone());
        if qt.rank() != 4 || kt.rank() != 4 || vt.rank() != 4 {
            return invalid("Q, K and V must be rank-4");
        }
        let d = qt.dtype;
        if !d.is_float() || kt.dtype != d || vt.dtype != d {
            return invalid(format!("Q, K and V must share one float type, got {d}, {} and {}", kt.dtype, vt.dtype));
        }
        let (hq, hk, e) = (qt.shape[1], kt.shape[1], qt.shape[3]);
        if hk == 0 || !hq.is_multiple_of(hk) || vt.shape[1] != hk || kt.shape[3] != e || kt.shape[2] != vt.shape[2] {
            return invalid(format!("Q {qt}, K {kt} and V {vt} do not fit together"));
        }
        let attr = |n: &str| node.attribute.iter().rev().find(|a| a.name() == n);
        let cd = if d == DType::F64 { DType::F64 } else { DType::F32 };
        let precision = match attr("softmax_precision").map(|a| a.i()) {
            None => cd,
            Some(p) => dtype_of(p as i32).map_err(|n| format!("softmax_precision {n}"))?,
        };
        if !precision.is_float() {
            return unsupported(format!("softmax_precision {precision}"));
        }
        let scale = attr("scale").map_or(1.0 / (e as f64).sqrt(), |a| f64::from(a.f()));
        let n = |s: &str| format!("{name}/{s}");
        let widen = |me: &mut Self, x: ValueId, tag: &str| -> OpResult<ValueId> {
            if me.g.ty(x).dtype == cd {
                return Ok(x);
            }
            me.emit_at(at, Op::cast(cd), &[x], n(tag))
        };
        // Values rounded to `precision` (when it is narrower than the compute type).
        let round = |me: &mut Self, x: ValueId, tag: &str| -> OpResult<ValueId> {
            if precision.compute() != cd || precision == cd {
                return Ok(x);
            }
            let r = me.emit_at(at, Op::cast(precision), &[x], n(&format!("{tag}_rounded")))?;
            me.emit_at(at, Op::cast(cd), &[r], n(&format!("{tag}_wide")))
        };
        let (q, mut k, mut v) = (widen(self, q, "q")?, widen(self, k, "k")?, widen(self, v, "v")?);
        if hq != hk {
            let r = hq / hk;
            for (x, tag) in [(&mut k, "k"), (&mut v, "v")] {
                let s = self.g.ty(*x).shape.clone();
                let x5 = self.emit_at(at, Op::Reshape { shape: vec![s[0], s[1], 1, s[2], s[3]] }, &[*x], n(tag))?;
                let ex = self.emit_at(at, Op::Expand { shape: vec![s[0], s[1], r, s[2], s[3]] }, &[x5], n(tag))?;
                *x = self.emit_at(at, Op::Reshape { shape: vec![s[0], s[1] * r, s[2], s[3]] }, &[ex], n(tag))?;
            }
        }
        let ktr = self.emit_at(at, Op::Transpose { perm: vec![0, 1, 3, 2] }, &[k], n("kt"))?;
        let qk = self.emit_at(at, Op::MatMul, &[q, ktr], n("qk"))?;
        let sc = self.g.add_const(
            n("scale"),
            kiln_ir::Tensor::from_data(Vec::<usize>::new(), kiln_ir::Data::from_f64s(cd, &[scale])),
        );
        let mut scores = self.emit_at(at, Op::Binary(BinaryOp::Mul), &[qk, sc], n("scores"))?;
        scores = round(self, scores, "scores")?;
        if let Some(g) = attr("score_mod").and_then(|a| a.g.as_ref()) {
            match self.instantiate(g, at, "score_mod", &[Slot::Value(scores)])?.as_deref() {
                Some([Slot::Value(v)]) => scores = *v,
                Some([_]) => return invalid("score_mod must give a tensor"),
                Some(o) => return invalid(format!("score_mod gives {} outputs, expected 1", o.len())),
                None => return Ok(None),
            }
        }
        let mut probs = self.emit_at(at, Op::Softmax { axis: 3 }, &[scores], n("probs"))?;
        probs = round(self, probs, "probs")?;
        if let Some(g) = attr("prob_mod").and_then(|a| a.g.as_ref()) {
            match self.instantiate(g, at, "prob_mod", &[Slot::Value(probs)])?.as_deref() {
                Some([Slot::Value(v)]) => probs = *v,
                Some([_]) => return invalid("prob_mod must give a tensor"),
                Some(o) => return invalid(format!("prob_mod gives {} outputs, expected 1", o.len())),
                None => return Ok(None),
            }
        }
        let y = self.emit_at(at, Op::MatMul, &[probs, v], n("y"))?;
        let out = node.output.first().filter(|o| !o.is_empty()).cloned().unwrap_or_else(|| n("Y"));
        let y = if d == cd {
            self.emit_at(at, Op::Identity, &[y], out)?
        } else {
            self.emit_at(at, Op::cast(d), &[y], out)?
        };
        Ok(Some(vec![y]))
    }
}
