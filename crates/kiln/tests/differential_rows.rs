//! Differential tests of run-time rows (`--dim`): a graph whose inputs' leading axis is sized
//! at each run is compiled once, at its bound, and run at every size from 1 to the bound; each
//! run matches the reference evaluation of the same ops at that size. Products whose rows per
//! run row are not whole register tiles, batched products of two run-time operands, row
//! reductions, normalizations and an index check over every element are covered.

mod common;

use common::*;
use kiln::ir::op::{ReduceOp, UnaryOp};
use kiln::ir::{DType, DimSymbol, Graph, Op, Tensor, ValueId};
use kiln::{CompileOptions, Compiler, Session, SessionOptions, TensorRef};

/// A graph over inputs of the given shapes (their leading axis the run-time dim `n`, sized
/// `bound` in the shapes), built by `build` from the input values; `eval` gives the reference
/// outputs for inputs of any size.
struct Rows {
    shapes: Vec<(DType, Vec<usize>)>,
    bound: usize,
}

impl Rows {
    /// Compiles once and compares every size `1..=bound`, each with fresh inputs.
    fn check(&self, r: &mut Rng, build: impl Fn(&mut Graph, &[ValueId]) -> Vec<ValueId>, tol: f64, what: &str) {
        let mut g = Graph::new("rows");
        g.symbols.push(DimSymbol::new("n", 1, self.bound));
        let ins: Vec<ValueId> = self
            .shapes
            .iter()
            .enumerate()
            .map(|(i, (d, s))| {
                let mut shape = s.clone();
                shape[0] = self.bound;
                g.input_syms.insert(i, (0..s.len()).map(|a| (a == 0).then_some(0)).collect());
                g.add_input(format!("in{i}"), kiln::ir::TensorType::new(*d, shape))
            })
            .collect();
        g.outputs = build(&mut g, &ins);
        let opts = CompileOptions { verify: true, ..Default::default() };
        let art = Compiler::new(opts).compile_graph(g).unwrap_or_else(|e| panic!("compiling {what}: {e}"));
        assert_eq!(art.manifest.symbols.len(), 1, "{what}: the manifest names the run-time dim");
        let s = Session::from_bytes(&art.bytes(), &SessionOptions { threads: 2, ..Default::default() }).unwrap();
        for n in 1..=self.bound {
            let inputs: Vec<Tensor> = self
                .shapes
                .iter()
                .map(|(d, sh)| {
                    let mut shape = sh.clone();
                    shape[0] = n;
                    r.tensor(*d, &shape)
                })
                .collect();
            // The reference: the same graph built at size n, evaluated node by node.
            let mut gr = Graph::new("reference");
            let ri: Vec<ValueId> =
                inputs.iter().enumerate().map(|(i, t)| gr.add_const(format!("in{i}"), t.clone())).collect();
            let outs = build(&mut gr, &ri);
            let want: Vec<Tensor> = outs.iter().map(|&v| eval_value(&gr, v)).collect();
            let trefs: Vec<TensorRef> =
                inputs.iter().map(|t| TensorRef { dtype: t.dtype().code(), shape: t.shape(), data: &t.data }).collect();
            let got = s.run(&trefs).unwrap_or_else(|e| panic!("{what} at n = {n}: {e}"));
            for (o, (gt, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(gt.shape, w.shape(), "{what} at n = {n}: output {o}'s shape");
                let gt = Tensor::from_bytes(w.ty.clone(), gt.data.clone().into()).unwrap();
                for (k, (a, b)) in gt.to_f64_vec().iter().zip(w.to_f64_vec()).enumerate() {
                    let ok = *a == b || (a - b).abs() <= tol * (1.0 + b.abs());
                    assert!(ok, "{what} at n = {n}: output {o} element {k}: compiled {a}, reference {b}");
                }
            }
        }
    }
}

/// The value of `v` in a graph of constants, by the reference evaluator.
fn eval_value(g: &Graph, v: ValueId) -> Tensor {
    if let Some(t) = g.const_of(v) {
        return t.clone();
    }
    let kiln::ir::ValueDef::Node(n, k) = g.value(v).def else { panic!("an input in a reference graph") };
    let node = g.node(n);
    let args: Vec<Tensor> = node.inputs.iter().map(|&x| eval_value(g, x)).collect();
    let refs: Vec<&Tensor> = args.iter().collect();
    kiln::ir::ops::eval(&node.op, &refs).unwrap_or_else(|e| panic!("eval {:?}: {e}", node.op)).swap_remove(k)
}

fn node(g: &mut Graph, op: Op, ins: &[ValueId]) -> ValueId {
    g.add_node(op, ins, "n", &[]).unwrap()[0]
}

/// Products of `[n, u, k]` by constant weights `[k, c]`: `u` rows per run row, whole tiles or
/// not, fewer than a tile, many; and a `[n, k]` product (one row each).
#[test]
fn products_over_run_time_rows() {
    let mut r = Rng(71);
    for (u, k, c) in [(20, 37, 45), (7, 64, 33), (64, 300, 70), (1, 19, 40), (33, 129, 31)] {
        let w = r.tensor(DType::F32, &[k, c]);
        let b = r.tensor(DType::F32, &[c]);
        let shape = if u == 1 { vec![0, k] } else { vec![0, u, k] };
        let rows = Rows { shapes: vec![(DType::F32, shape)], bound: 5 };
        rows.check(
            &mut r,
            |g, ins| {
                let (wi, bi) = (g.add_const("w", w.clone()), g.add_const("b", b.clone()));
                let p = node(g, Op::MatMul, &[ins[0], wi]);
                let p = node(g, Op::Binary(kiln::ir::op::BinaryOp::Add), &[p, bi]);
                vec![node(g, Op::Unary(UnaryOp::Relu), &[p])]
            },
            1e-4,
            &format!("[n, {u}, {k}] · [{k}, {c}]"),
        );
    }
}

/// Attention-shaped products of two run-time operands (`[n, h, s, d] · [n, h, d, s]`), a
/// softmax over their rows and a layer normalization.
#[test]
fn batched_products_softmax_and_normalization_over_run_time_rows() {
    let mut r = Rng(72);
    let rows = Rows { shapes: vec![(DType::F32, vec![0, 3, 10, 8]), (DType::F32, vec![0, 3, 8, 10])], bound: 4 };
    rows.check(
        &mut r,
        |g, ins| {
            let s = node(g, Op::MatMul, &[ins[0], ins[1]]);
            let p = node(g, Op::Softmax { axis: 3 }, &[s]);
            let sc = g.add_const("scale", Tensor::f32(vec![10], vec![1.5; 10]));
            let bi = g.add_const("bias", Tensor::f32(vec![10], vec![0.25; 10]));
            let ln = node(g, Op::LayerNorm { axis: 3, epsilon: 1e-5 }, &[s, sc, bi]);
            let sum = node(g, Op::Reduce { op: ReduceOp::Sum, axes: vec![2], keepdims: false }, &[s]);
            vec![p, ln, sum]
        },
        1e-4,
        "attention-shaped products",
    );
}

/// An embedding lookup whose indices are a run-time input: the index check counts bad
/// indices over every element, masked to the rows of the run (padding past them is never
/// read as an index).
#[test]
fn gather_with_run_time_rows_of_indices() {
    let mut r = Rng(73);
    let table = r.tensor(DType::F32, &[21, 6]);
    let rows = Rows { shapes: vec![(DType::I64, vec![0, 7])], bound: 6 };
    rows.check(
        &mut r,
        |g, ins| {
            let t = g.add_const("table", table.clone());
            vec![node(g, Op::Gather { axis: 0 }, &[t, ins[0]])]
        },
        0.0,
        "embedding lookup",
    );
}

/// A graph built in code with a run-time dim must not combine its rows with a constant of as
/// many rows as the bound (the model would need exactly that many): refused, naming the node
/// and the dim, where a constant broadcast along the rows compiles.
#[test]
fn a_constant_with_the_bounds_rows_is_refused() {
    for (rows, ok) in [(4, false), (1, true)] {
        let mut g = Graph::new("fixed");
        g.symbols.push(DimSymbol::new("n", 1, 4));
        g.input_syms.insert(0, vec![Some(0), None]);
        let x = g.add_input("x", kiln::ir::TensorType::new(DType::F32, vec![4, 3]));
        let c = g.add_const("c", Tensor::f32(vec![rows, 3], vec![1.0; rows * 3]));
        g.outputs = vec![node(&mut g, Op::Binary(kiln::ir::op::BinaryOp::Add), &[x, c])];
        let r = Compiler::new(CompileOptions::default()).compile_graph(g);
        match (r, ok) {
            (Ok(_), true) => {}
            (Err(e), false) => {
                let e = e.to_string();
                assert!(e.contains("`n`") && e.contains("rows are fixed"), "{e}");
            }
            (r, _) => panic!("a [{rows}, 3] constant: compiled = {}", r.is_ok()),
        }
    }
}
