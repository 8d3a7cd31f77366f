//! Values whose shape comes from data rather than from a choice among few: the rows kept by
//! NonZero, NonMaxSuppression and Compress (`Dyn::rows`: only the first dim is decided at run
//! time, its count computed by the routine), the ops that work row by row on such values, a
//! Reshape to a shape given at run time, and `Shape` of any value of run-time shape. Each is
//! planned at its bound; its run-time shape is an ordinary value ([`super::cases::Dyn`]).

use kiln_ir::{BinaryOp, CmpOp, DType, Op, ReduceOp, Tensor, ValueId};

use super::cases::{axes_from_input, Dyn};
use super::{Importer, Slot};
use crate::ops::{self, invalid, OpError, OpResult};
use crate::proto::NodeProto;
use crate::ImportError;

impl Importer {
    /// `Shape` of a value whose shape is decided at run time: its run-time dims (between the
    /// `start` and `end` attributes), an ordinary value.
    pub(super) fn shape_of_dynamic(&mut self, node: &NodeProto, name: &str, dims: ValueId) -> Result<(), ImportError> {
        let attrs = crate::attrs::Attrs::new(&node.attribute);
        let r = self.g.ty(dims).numel() as i64;
        let clamp = |a: i64| if a < 0 { (a + r).max(0) } else { a.min(r) };
        let err =
            |m: String| ImportError::Node { node: name.to_string(), op_type: "Shape".into(), opset: 0, message: m };
        let start = clamp(attrs.int_or("start", 0).map_err(|e| err(format!("{e:?}")))?);
        let end = clamp(attrs.int_or("end", r).map_err(|e| err(format!("{e:?}")))?).max(start);
        let oname = node.output.first().cloned().unwrap_or_default();
        let v = if (start, end) == (0, r) {
            self.emit_named(node, name, Op::Identity, &[dims], oname.clone())
        } else {
            let slice = Op::Slice { starts: vec![start], steps: vec![1], out_shape: vec![(end - start) as usize] };
            self.emit_named(node, name, slice, &[dims], oname.clone())
        }
        .map_err(|e| match e {
            OpError::Invalid(m) => err(m),
            OpError::Import(e) => e,
            _ => err("cannot take the shape".into()),
        })?;
        self.env.insert(oname, Slot::Value(v));
        Ok(())
    }

    /// Imports a node reading values whose rows come from data (`Dyn::rows`): when the op
    /// works row by row along their first dim, at the bound, and its outputs keep that dim
    /// (checked on their shapes too), they are such values, with the same run-time count.
    pub(super) fn node_on_rows(
        &mut self,
        idx: usize,
        node: &NodeProto,
        name: &str,
        rows: &[(usize, ValueId, Dyn)],
    ) -> Result<(), ImportError> {
        let op = node.op_type();
        let fail = |why: &str| ImportError::Node {
            node: name.to_string(),
            op_type: op.to_string(),
            opset: 0,
            message: format!(
                "input {} `{}` has a number of rows decided at run time, and {why}",
                rows[0].0, node.input[rows[0].0]
            ),
        };
        let src = &rows[0].2;
        if rows.iter().any(|(_, _, d)| d.dims != src.dims) {
            return Err(fail("another input's rows are counted apart (Kiln cannot check they agree yet)"));
        }
        let input_ty = |imp: &Self, i: usize| match imp.env.get(&node.input[i]) {
            Some(Slot::Value(v)) => Some(imp.g.ty(*v).clone()),
            _ => None,
        };
        let dyn_at: Vec<usize> = rows.iter().map(|(i, _, _)| *i).collect();
        let attrs = crate::attrs::Attrs::new(&node.attribute);
        let rank0 = input_ty(self, dyn_at[0]).map_or(0, |t| t.rank());
        let norm = |a: i64, r: usize| if a < 0 { a + r as i64 } else { a };
        let const_ints = |imp: &Self, i: usize| match imp.env.get(node.input.get(i)?) {
            Some(Slot::Value(v)) => imp.g.const_of(*v).map(|t| t.to_i64_vec()),
            _ => None,
        };
        const UNARY: &[&str] = &[
            "Identity",
            "Cast",
            "CastLike",
            "Relu",
            "Sigmoid",
            "Tanh",
            "Exp",
            "Log",
            "Neg",
            "Abs",
            "Sqrt",
            "Floor",
            "Ceil",
            "Round",
            "Not",
            "Erf",
            "Softplus",
            "Softsign",
            "Reciprocal",
            "Sign",
            "LeakyRelu",
            "Clip",
            "Sin",
            "Cos",
            "Tan",
            "Asin",
            "Acos",
            "Atan",
            "Sinh",
            "Cosh",
            "Asinh",
            "Acosh",
            "Atanh",
            "Elu",
            "Selu",
            "HardSigmoid",
            "HardSwish",
            "Mish",
            "IsNaN",
            "IsInf",
        ];
        const BINARY: &[&str] = &[
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Pow",
            "Max",
            "Min",
            "Equal",
            "Less",
            "Greater",
            "LessOrEqual",
            "GreaterOrEqual",
            "And",
            "Or",
            "Xor",
            "Where",
            "Mod",
        ];
        let row_wise = match op {
            _ if UNARY.contains(&op) => true,
            _ if BINARY.contains(&op) => {
                // Operands known for every row broadcast along the first dim (lower rank, or 1).
                let out_rank = (0..node.input.len()).filter_map(|i| input_ty(self, i)).map(|t| t.rank()).max();
                (0..node.input.len()).filter(|i| !dyn_at.contains(i)).all(|i| {
                    input_ty(self, i).is_some_and(|t| Some(t.rank()) < out_rank || t.shape.first() == Some(&1))
                }) && out_rank == Some(rank0)
            }
            "Gather" => {
                let axis = norm(attrs.int_or("axis", 0).unwrap_or(0), input_ty(self, 0).map_or(0, |t| t.rank()));
                (dyn_at == [0] && axis != 0) || (dyn_at == [1] && axis == 0)
            }
            "Squeeze" | "Unsqueeze" => {
                let axes = if axes_from_input(node) {
                    const_ints(self, 1)
                } else {
                    attrs.ints("axes").ok().flatten().map(<[i64]>::to_vec)
                };
                let l = axes.as_ref().map_or(0, Vec::len);
                let r = if op == "Unsqueeze" { rank0 + l } else { rank0 };
                axes.is_some_and(|a| a.iter().all(|&x| norm(x, r) != 0))
            }
            "Transpose" => attrs.ints("perm").ok().flatten().is_some_and(|p| p.first() == Some(&0)),
            "Flatten" => norm(attrs.int_or("axis", 1).unwrap_or(1), rank0) >= 1,
            "Reshape" | "Slice" => true, // checked on the output's shape below
            "MatMul" => dyn_at == [0] && rank0 >= 2,
            "Softmax" | "LogSoftmax" => norm(attrs.int_or("axis", -1).unwrap_or(-1), rank0) != 0 && rank0 >= 2,
            _ => false,
        };
        if !row_wise {
            return Err(fail("Kiln cannot yet run this op on such a value"));
        }
        // Imported at the bound, the inputs' run-time rows put aside meanwhile.
        let saved: Vec<(ValueId, Dyn)> = rows.iter().map(|(_, v, d)| (*v, d.clone())).collect();
        for (v, _) in &saved {
            self.dynamic.remove(v);
        }
        let r = self.node(idx, node);
        for (v, d) in saved {
            self.dynamic.insert(v, d);
        }
        r?;
        let bound = src.bounds[0];
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            let Some(Slot::Value(v)) = self.env.get(o).cloned() else {
                return Err(fail("its output is not a tensor"));
            };
            let shape = self.g.ty(v).shape.clone();
            if shape.first() != Some(&bound) {
                return Err(fail(&format!("its output {shape:?} does not keep the {bound} rows first")));
            }
            let at = |e: OpError| match e {
                OpError::Invalid(m) => fail(&m),
                OpError::Import(e) => e,
                _ => fail("its shape cannot be computed"),
            };
            let first = Op::Slice { starts: vec![0], steps: vec![1], out_shape: vec![1] };
            let count = self.emit_named(node, name, first, &[src.dims], format!("{o}/rows")).map_err(at)?;
            let rest: Vec<i64> = shape[1..].iter().map(|&d| d as i64).collect();
            let rest = self.g.add_const(format!("{o}/row_shape"), Tensor::i64(vec![rest.len()], rest));
            let dims = self
                .emit_named(node, name, Op::Concat { axis: 0 }, &[count, rest], format!("{o}/shape"))
                .map_err(at)?;
            self.dynamic.insert(v, Dyn { dims, bounds: shape, cases: None, rows: true });
        }
        Ok(())
    }

    /// A Reshape of `x` to a shape given at run time (`spec`, ONNX's rules: 0 copies the
    /// input's dim unless `allowzero`, one -1 is inferred): the data is `x`'s, the shape is
    /// computed and checked by the compiled code, and the value can only be a graph output.
    pub(super) fn reshape_from_data(
        &mut self,
        node: &NodeProto,
        name: &str,
        x: ValueId,
        spec: ValueId,
        allowzero: bool,
    ) -> OpResult<ValueId> {
        let xs = self.g.ty(x).shape.clone();
        let st = self.g.ty(spec).clone();
        if !st.dtype.is_int() || st.rank() != 1 {
            return invalid(format!("the shape must be a 1-D integer tensor, got {st}"));
        }
        let (r, n) = (st.numel(), xs.iter().product::<usize>());
        let tmp = |tag: &str| format!("{name}/shape/{tag}");
        let e = |imp: &mut Self, op: Op, ins: &[ValueId], tag: &str| imp.emit_named(node, name, op, ins, tmp(tag));
        let k = |imp: &mut Self, tag: &str, shape: Vec<usize>, v: Vec<i64>| {
            imp.g.add_const(tmp(tag), Tensor::i64(shape, v))
        };
        let sum = || Op::Reduce { op: ReduceOp::Sum, axes: vec![0], keepdims: false };
        let s = e(self, Op::cast(DType::I64), &[spec], "i64")?;
        let zero = k(self, "zero", vec![], vec![0]);
        let one = k(self, "one", vec![], vec![1]);
        let minus1 = k(self, "minus_one", vec![], vec![-1]);
        let is_zero = e(self, Op::Compare(CmpOp::Equal), &[s, zero], "is_zero")?;
        // 0: the input's dim at that position (or, past its rank, an error).
        let dims: Vec<i64> = (0..r).map(|j| xs.get(j).map_or(0, |&d| d as i64)).collect();
        let in_dims = k(self, "input_dims", vec![r], dims);
        let beyond: Vec<i64> = (0..r).map(|j| i64::from(j >= xs.len())).collect();
        let beyond = k(self, "beyond_rank", vec![r], beyond);
        let s1 = if allowzero { s } else { e(self, Op::Where, &[is_zero, in_dims, s], "zeros_copied")? };
        let is_neg1 = e(self, Op::Compare(CmpOp::Equal), &[s1, minus1], "is_inferred")?;
        let known = e(self, Op::Where, &[is_neg1, one, s1], "known")?;
        let known =
            e(self, Op::Reduce { op: ReduceOp::Prod, axes: vec![0], keepdims: false }, &[known], "known_product")?;
        let numel = k(self, "elements", vec![], vec![n as i64]);
        let divisor = e(self, Op::Binary(BinaryOp::Max), &[known, one], "divisor")?;
        let inferred = e(self, Op::Binary(BinaryOp::Div), &[numel, divisor], "inferred")?;
        let shape = e(self, Op::Where, &[is_neg1, inferred, s1], "resolved")?;
        // Checks: at most one -1, nothing below -1, a 0 past the input's rank only with
        // allowzero, and as many elements as the input.
        let count = |imp: &mut Self, b: ValueId, tag: &str| -> OpResult<ValueId> {
            let c = e(imp, Op::cast(DType::I64), &[b], &format!("{tag}_i64"))?;
            e(imp, sum(), &[c], &format!("{tag}_count"))
        };
        let n_inferred = count(self, is_neg1, "inferred")?;
        let below = e(self, Op::Compare(CmpOp::Less), &[s1, minus1], "below")?;
        let n_below = count(self, below, "below")?;
        let beyond = e(self, Op::Compare(CmpOp::Equal), &[beyond, one], "beyond")?;
        let zero_beyond = e(self, Op::Binary(BinaryOp::And), &[is_zero, beyond], "zero_beyond")?;
        let n_zero_beyond = if allowzero { zero } else { count(self, zero_beyond, "zero_beyond")? };
        let product = e(self, Op::Reduce { op: ReduceOp::Prod, axes: vec![0], keepdims: false }, &[shape], "product")?;
        let c1 = e(self, Op::Compare(CmpOp::LessOrEqual), &[n_inferred, one], "ok_inferred")?;
        let c2 = e(self, Op::Compare(CmpOp::Equal), &[n_below, zero], "ok_below")?;
        let c3 = e(self, Op::Compare(CmpOp::Equal), &[n_zero_beyond, zero], "ok_zeros")?;
        let c4 = e(self, Op::Compare(CmpOp::Equal), &[product, numel], "ok_elements")?;
        let ok = e(self, Op::Binary(BinaryOp::And), &[c1, c2], "ok12")?;
        let ok = e(self, Op::Binary(BinaryOp::And), &[ok, c3], "ok123")?;
        let ok = e(self, Op::Binary(BinaryOp::And), &[ok, c4], "ok")?;
        let message = format!(
            "node `{name}` (Reshape): the shape given at run time (input 1, `{}`) does not fit its input of shape \
             {xs:?} ({n} elements)",
            node.input.get(1).map_or("", String::as_str)
        );
        let flat = e(self, Op::Reshape { shape: vec![n] }, &[x], "flat")?;
        let oname = node.output.first().cloned().unwrap_or_else(|| tmp("out"));
        let out = self.emit_named(node, name, Op::Assert { message }, &[flat, ok], oname)?;
        // Each dim is at most the element count (or, with no elements, the largest input dim).
        let bound = xs.iter().copied().max().unwrap_or(1).max(n);
        self.dynamic.insert(out, Dyn { dims: shape, bounds: vec![bound; r], cases: None, rows: false });
        Ok(out)
    }

    /// A packed result (`[count, rows...]`, see `Op::NonZero`) as a value of run-time shape:
    /// its data (after the count) and its shape, `dims_of(count)`, with `bounds`.
    fn unpack(
        &mut self,
        node: &NodeProto,
        name: &str,
        packed: ValueId,
        bounds: Vec<usize>,
        rows: bool,
        dims_of: &dyn Fn(&mut Self, ValueId) -> OpResult<ValueId>,
    ) -> OpResult<ValueId> {
        let cap: usize = bounds.iter().product();
        let slice = |start: i64, len: usize| Op::Slice { starts: vec![start], steps: vec![1], out_shape: vec![len] };
        let count = self.emit_named(node, name, slice(0, 1), &[packed], format!("{name}/count"))?;
        let oname = node.output.first().cloned().unwrap_or_else(|| format!("{name}/out"));
        // Rows from data: typed at the bound, its rows dense (the layout of the run-time
        // shape's prefix); otherwise the elements, dense in the run-time shape, flat.
        let data = if rows {
            let flat = self.emit_named(node, name, slice(1, cap), &[packed], format!("{name}/rows"))?;
            self.emit_named(node, name, Op::Reshape { shape: bounds.clone() }, &[flat], oname)?
        } else {
            self.emit_named(node, name, slice(1, cap), &[packed], oname)?
        };
        let dims = dims_of(self, count)?;
        self.dynamic.insert(data, Dyn { dims, bounds, cases: None, rows });
        Ok(data)
    }

    /// NonZero of a value known at run time: the coordinates `[rank, n]`, `n` decided by the
    /// data (at most the element count).
    pub(super) fn non_zero_at_run_time(
        &mut self,
        node: &NodeProto,
        name: &str,
        inputs: &[Option<ValueId>],
    ) -> OpResult<ValueId> {
        let Some(x) = inputs.first().copied().flatten() else { return invalid("input 0 (data) is missing") };
        let xt = self.g.ty(x).clone();
        let packed = self.emit_named(node, name, Op::NonZero, &[x], format!("{name}/packed"))?;
        let r = xt.rank();
        self.unpack(node, name, packed, vec![r, xt.numel()], false, &|imp, count| {
            let rank = imp.g.add_const(format!("{name}/rank"), Tensor::i64(vec![1], vec![r as i64]));
            imp.emit_named(node, name, Op::Concat { axis: 0 }, &[rank, count], format!("{name}/shape"))
        })
    }

    /// NonMaxSuppression of boxes or scores known at run time: `[n, 3]` rows of (batch,
    /// class, box), `n` decided by the data (at most every box of every class).
    pub(super) fn nms_at_run_time(
        &mut self,
        node: &NodeProto,
        name: &str,
        inputs: &[Option<ValueId>],
    ) -> OpResult<ValueId> {
        let attrs = crate::attrs::Attrs::new(&node.attribute);
        let center_point_box = attrs.int_or("center_point_box", 0)? != 0;
        let mut ins = Vec::with_capacity(5);
        for (k, (d, absent)) in [
            (DType::F32, 0.0),
            (DType::F32, 0.0),
            (DType::I64, 0.0),
            (DType::F32, 0.0),
            (DType::F32, f64::NEG_INFINITY),
        ]
        .into_iter()
        .enumerate()
        {
            let v = match inputs.get(k).copied().flatten() {
                Some(v) => v,
                None if k < 2 => return invalid(format!("input {k} is missing")),
                None => self.g.add_const(
                    format!("{name}/default{k}"),
                    Tensor::from_data(vec![], kiln_ir::Data::from_f64s(d, &[absent])),
                ),
            };
            let v = if self.g.ty(v).dtype == d {
                v
            } else {
                self.emit_named(node, name, Op::cast(d), &[v], format!("{name}/in{k}"))?
            };
            ins.push(v);
        }
        let ss = self.g.ty(ins[1]).shape.clone();
        let packed =
            self.emit_named(node, name, Op::NonMaxSuppression { center_point_box }, &ins, format!("{name}/packed"))?;
        let rows = ss.iter().product::<usize>();
        self.unpack(node, name, packed, vec![rows, 3], true, &|imp, count| {
            let three = imp.g.add_const(format!("{name}/three"), Tensor::i64(vec![1], vec![3]));
            imp.emit_named(node, name, Op::Concat { axis: 0 }, &[count, three], format!("{name}/shape"))
        })
    }

    /// Compress by a condition known at run time: the slices along the axis (or the elements
    /// of the flattened input) whose condition holds, `n` decided by the data (at most the
    /// condition's length). The slices are gathered at the condition's length; unless the
    /// axis is the first, a second gather, by flat positions unravelled with the run-time
    /// `n`, packs them densely at the start.
    pub(super) fn compress_at_run_time(
        &mut self,
        node: &NodeProto,
        name: &str,
        inputs: &[Option<ValueId>],
    ) -> OpResult<ValueId> {
        let (Some(mut x), Some(cond)) = (inputs.first().copied().flatten(), inputs.get(1).copied().flatten()) else {
            return invalid("inputs 0 (input) and 1 (condition) are required");
        };
        let ct = self.g.ty(cond).clone();
        if ct.rank() != 1 {
            return invalid(format!("condition must be 1-D, got {ct}"));
        }
        let l = ct.numel();
        let tmp = |tag: &str| format!("{name}/{tag}");
        let axis = match crate::attrs::Attrs::new(&node.attribute).int("axis")? {
            Some(a) => ops::norm_axis(a, self.g.ty(x).rank(), "axis")?,
            None => {
                let n = self.g.ty(x).numel();
                x = self.emit_named(node, name, Op::Reshape { shape: vec![n] }, &[x], tmp("flat"))?;
                0
            }
        };
        let packed = self.emit_named(node, name, Op::NonZero, &[cond], tmp("kept"))?;
        let slice = |start: i64, len: usize| Op::Slice { starts: vec![start], steps: vec![1], out_shape: vec![len] };
        let count = self.emit_named(node, name, slice(0, 1), &[packed], tmp("count"))?;
        let idx = self.emit_named(node, name, slice(1, l), &[packed], tmp("indices"))?;
        let xs = self.g.ty(x).shape.clone();
        let mut bounds = xs.clone();
        bounds[axis] = l;
        let oname = node.output.first().cloned().unwrap_or_else(|| tmp("out"));
        let gathered_name = if axis == 0 { oname.clone() } else { tmp("gathered") };
        let gathered = self.emit_named(node, name, Op::Gather { axis }, &[x, idx], gathered_name)?;
        let before: Vec<i64> = xs[..axis].iter().map(|&d| d as i64).collect();
        let after: Vec<i64> = xs[axis + 1..].iter().map(|&d| d as i64).collect();
        let (b_c, a_c) = (
            self.g.add_const(tmp("dims_before"), Tensor::i64(vec![before.len()], before)),
            self.g.add_const(tmp("dims_after"), Tensor::i64(vec![after.len()], after)),
        );
        let dims = self.emit_named(node, name, Op::Concat { axis: 0 }, &[b_c, count, a_c], tmp("shape"))?;
        let out = if axis == 0 {
            gathered
        } else {
            let inner: usize = xs[axis + 1..].iter().product();
            let cap: usize = bounds.iter().product();
            let e = |imp: &mut Self, op: Op, ins: &[ValueId], tag: &str| imp.emit_named(node, name, op, ins, tmp(tag));
            let k = |imp: &mut Self, tag: &str, v: i64| imp.g.add_const(tmp(tag), Tensor::i64(vec![], vec![v]));
            let flat = e(self, Op::Reshape { shape: vec![cap] }, &[gathered], "gathered_flat")?;
            let pos = self.g.add_const(tmp("positions"), Tensor::i64(vec![cap], (0..cap as i64).collect()));
            let n = e(self, Op::Reshape { shape: vec![] }, &[count], "n")?;
            let inner_c = k(self, "inner", inner as i64);
            let row_c = k(self, "row", (l * inner) as i64);
            let last = k(self, "last", cap as i64 - 1);
            let i2 = e(self, Op::Binary(BinaryOp::Mod { fmod: false }), &[pos, inner_c], "i_inner")?;
            let t = e(self, Op::Binary(BinaryOp::Div), &[pos, inner_c], "t")?;
            let j = e(self, Op::Binary(BinaryOp::Mod { fmod: false }), &[t, n], "j")?;
            let i0 = e(self, Op::Binary(BinaryOp::Div), &[t, n], "i_outer")?;
            let src = e(self, Op::Binary(BinaryOp::Mul), &[i0, row_c], "src_outer")?;
            let ji = e(self, Op::Binary(BinaryOp::Mul), &[j, inner_c], "src_kept")?;
            let src = e(self, Op::Binary(BinaryOp::Add), &[src, ji], "src0")?;
            let src = e(self, Op::Binary(BinaryOp::Add), &[src, i2], "src1")?;
            let src = e(self, Op::Binary(BinaryOp::Min), &[src, last], "src")?;
            self.emit_named(node, name, Op::Gather { axis: 0 }, &[flat, src], oname)?
        };
        self.dynamic.insert(out, Dyn { dims, bounds, cases: None, rows: axis == 0 });
        Ok(out)
    }
}
