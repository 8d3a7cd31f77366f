//! Shared by the differential suites: a seeded generator and the compile-and-compare check.

#![allow(dead_code)]

use kiln::ir::{DType, Data, Graph, Op, Tensor};
use kiln::{CompileOptions, Compiler, Session, SessionOptions, TensorRef};

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    pub fn f32s(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)).collect()
    }
    pub fn tensor(&mut self, dtype: DType, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let data = match dtype {
            DType::F32 => Data::F32(self.f32s(n, -2.0, 2.0)),
            DType::I32 => Data::I32((0..n).map(|_| self.range(0, 20) as i32 - 10).collect()),
            DType::I64 => Data::I64((0..n).map(|_| self.range(0, 20) as i64 - 10).collect()),
            DType::Bool => Data::Bool((0..n).map(|_| self.next().is_multiple_of(2)).collect()),
            d if d.is_float() => {
                Data::from_f64s(d, &self.f32s(n, -2.0, 2.0).into_iter().map(f64::from).collect::<Vec<_>>())
            }
            d => Data::from_i64s(d, &(0..n).map(|_| self.range(0, 20) as i64 - 10).collect::<Vec<_>>()),
        };
        Tensor::from_data(shape.to_vec(), data)
    }
    pub fn shape(&mut self, rank: usize, max: usize) -> Vec<usize> {
        (0..rank).map(|_| self.range(1, max)).collect()
    }
}

/// Compiles `op` over `inputs` (runtime inputs; `consts[i]` makes input i a constant) and
/// compares the compiled result with `eval`.
pub fn check_with(op: Op, inputs: &[Tensor], consts: &[bool], tol: f64) {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let want = kiln::ir::ops::eval(&op, &refs).unwrap_or_else(|e| panic!("eval {op:?}: {e}"));
    let (g, runtime) = one_node(&op, inputs, consts);
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
    compile_and_compare(g, &runtime, &want, tol, &format!("{op:?} with inputs {shapes:?}"));
}

/// A graph of one node `op` over `inputs` (`consts[i]`: input i a constant), and its inputs
/// at run time, in order.
pub fn one_node<'a>(op: &Op, inputs: &'a [Tensor], consts: &[bool]) -> (Graph, Vec<&'a Tensor>) {
    let mut g = Graph::new("diff");
    let mut ids = Vec::new();
    let mut runtime = Vec::new();
    for (i, t) in inputs.iter().enumerate() {
        if consts.get(i).copied().unwrap_or(false) {
            ids.push(g.add_const(format!("c{i}"), t.clone()));
        } else {
            ids.push(g.add_input(format!("in{i}"), t.ty.clone()));
            runtime.push(t);
        }
    }
    g.outputs = g.add_node(op.clone(), &ids, "node", &[]).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    (g, runtime)
}

/// `x` rounded to the nearest bf16 (ties to even), as an f32: the top 16 bits kept.
pub fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    f32::from_bits((b + 0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
}

/// [`check_with`] compiled with `--precision bf16`, against the reference evaluation with input
/// 1 (a product's B, a convolution's weights), where constant, rounded to bf16 (a bias and
/// the inputs at run time stay f32). Returns the LIR of the compilation.
pub fn check_bf16(op: Op, inputs: &[Tensor], consts: &[bool], tol: f64) -> String {
    let rounded: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| match consts.get(i) {
            Some(true) if i == 1 => {
                Tensor::f32(t.shape().to_vec(), t.to_f64_vec().iter().map(|&x| round_bf16(x as f32)).collect())
            }
            _ => t.clone(),
        })
        .collect();
    let refs: Vec<&Tensor> = rounded.iter().collect();
    let want = kiln::ir::ops::eval(&op, &refs).unwrap_or_else(|e| panic!("eval {op:?}: {e}"));
    let (g, runtime) = one_node(&op, inputs, consts);
    let opts = CompileOptions { verify: true, precision: kiln::Precision::Bf16, ..Default::default() };
    let c = Compiler::new(opts.clone());
    let mut opt = g.clone();
    c.optimize(&mut opt, None).unwrap();
    let lir = kiln::ir::lir::print(&c.lower(&opt).unwrap().0);
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
    compile_and_compare_with(g, opts, &runtime, &want, tol, &format!("bf16 {op:?} with inputs {shapes:?}"));
    lir
}

/// Compiles `g`, runs it with 2 threads on `runtime` (its inputs, in order) and compares each
/// output with `want`: shape, dtype, and values within `tol` relative to 1 + |reference| (NaN
/// matches NaN); `what` names the case in a failure.
fn compile_and_compare(g: Graph, runtime: &[&Tensor], want: &[Tensor], tol: f64, what: &str) {
    let opts = CompileOptions { verify: true, ..Default::default() };
    compile_and_compare_with(g, opts, runtime, want, tol, what)
}

pub fn compile_and_compare_with(
    g: Graph,
    opts: CompileOptions,
    runtime: &[&Tensor],
    want: &[Tensor],
    tol: f64,
    what: &str,
) {
    let art = Compiler::new(opts).compile_graph(g).unwrap_or_else(|e| panic!("compiling {what}: {e}"));
    let s = Session::from_bytes(&art.bytes(), &SessionOptions { threads: 2, ..Default::default() }).unwrap();
    let trefs: Vec<TensorRef> =
        runtime.iter().map(|t| TensorRef { dtype: t.dtype().code(), shape: t.shape(), data: &t.data }).collect();
    let got = s.run(&trefs).unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert_eq!(got.len(), want.len());
    for (o, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.shape, w.shape(), "{what}: output {o}: shape");
        assert_eq!(g.dtype, w.dtype().code(), "{what}: output {o}: dtype");
        let gt = Tensor::from_bytes(w.ty.clone(), g.data.clone().into()).unwrap();
        for (k, (a, b)) in gt.to_f64_vec().iter().zip(w.to_f64_vec()).enumerate() {
            let ok = (a.is_nan() && b.is_nan()) || *a == b || (a - b).abs() <= tol * (1.0 + b.abs());
            assert!(ok, "{what}: output {o} element {k}: compiled {a}, reference {b}");
        }
    }
}

pub fn check(op: Op, inputs: &[Tensor]) {
    check_with(op, inputs, &[], 1e-5);
}

/// Two shapes that broadcast to each other: some dims of one are 1, ranks may differ.
pub fn broadcast_pair(r: &mut Rng) -> (Vec<usize>, Vec<usize>) {
    let rank = r.range(1, 4);
    let full = r.shape(rank, 6);
    let a: Vec<usize> = full.iter().map(|&d| if r.next().is_multiple_of(3) { 1 } else { d }).collect();
    let drop = r.range(0, rank - 1);
    let b: Vec<usize> = full[drop..].iter().map(|&d| if r.next().is_multiple_of(3) { 1 } else { d }).collect();
    (a, b)
}

/// `g` optimized and lowered to LIR, with verification after every pass.
pub fn lowered(g: &Graph) -> kiln::ir::lir::Program {
    let compiler = Compiler::new(CompileOptions { verify: true, ..Default::default() });
    let mut opt = g.clone();
    compiler.optimize(&mut opt, None).unwrap();
    compiler.lower(&opt).unwrap().0
}

/// The kernel of `p` whose name ends with `suffix` (the program's text in the panic if none).
pub fn kernel_ending<'a>(p: &'a kiln::ir::lir::Program, suffix: &str) -> &'a kiln::ir::lir::Kernel {
    p.instrs
        .iter()
        .find_map(|i| match i {
            kiln::ir::lir::Instr::Kernel(k) if k.name.ends_with(suffix) => Some(k),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no kernel named …{suffix}:\n{}", kiln::ir::lir::print(p)))
}

/// A graph built node by node while the reference evaluator computes each node's value, so
/// that a whole network can be compiled and compared with its reference result.
pub struct RefNet {
    pub g: Graph,
    values: std::collections::HashMap<kiln::ir::ValueId, Tensor>,
    inputs: Vec<Tensor>,
}

impl RefNet {
    pub fn new(name: &str) -> Self {
        RefNet { g: Graph::new(name), values: Default::default(), inputs: Vec::new() }
    }
    pub fn input(&mut self, name: &str, t: Tensor) -> kiln::ir::ValueId {
        let v = self.g.add_input(name, t.ty.clone());
        self.values.insert(v, t.clone());
        self.inputs.push(t);
        v
    }
    pub fn constant(&mut self, name: &str, t: Tensor) -> kiln::ir::ValueId {
        let v = self.g.add_const(name, t.clone());
        self.values.insert(v, t);
        v
    }
    /// Adds `op` over `ins`, evaluated by the reference evaluator; its first output.
    pub fn node(&mut self, op: Op, ins: &[kiln::ir::ValueId], name: &str) -> kiln::ir::ValueId {
        let refs: Vec<&Tensor> = ins.iter().map(|v| &self.values[v]).collect();
        let out = kiln::ir::ops::eval(&op, &refs).unwrap_or_else(|e| panic!("eval {name}: {e}")).remove(0);
        let v = self.g.add_node(op, ins, name, &[]).unwrap_or_else(|e| panic!("{name}: {e}"))[0];
        self.values.insert(v, out);
        v
    }
    /// The graph with `outputs`, optimized and lowered (see [`lowered`]).
    pub fn lowered(&self, outputs: &[kiln::ir::ValueId]) -> kiln::ir::lir::Program {
        let mut g = self.g.clone();
        g.outputs = outputs.to_vec();
        lowered(&g)
    }
    /// Compiles the graph with `outputs` and compares each with the reference (see
    /// [`compile_and_compare`]).
    pub fn check(mut self, outputs: &[kiln::ir::ValueId], tol: f64) {
        self.g.outputs = outputs.to_vec();
        let want: Vec<Tensor> = outputs.iter().map(|v| self.values[v].clone()).collect();
        let runtime: Vec<&Tensor> = self.inputs.iter().collect();
        let name = self.g.name.clone();
        compile_and_compare(self.g, &runtime, &want, tol, &name);
    }
}
