//! Helpers shared by Kiln's benches: building single-op graphs and compiled sessions.

use kiln::ir::{DType, Data, Graph, Op, Tensor};
use kiln::{CompileOptions, Compiler, Session, SessionOptions};

/// A deterministic tensor with values in [-1, 1).
pub fn tensor(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let v = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_data(shape.to_vec(), Data::F32(v))
}

/// Compiles `op` with runtime input `x` and constant operands `consts` into a session.
pub fn single_op(op: Op, x: &[usize], consts: Vec<Tensor>, threads: usize) -> Session {
    let mut g = Graph::new("bench");
    let xi = g.add_input("x", kiln::ir::TensorType::new(DType::F32, x.to_vec()));
    let mut ins = vec![xi];
    for (i, c) in consts.into_iter().enumerate() {
        ins.push(g.add_const(format!("c{i}"), c));
    }
    g.outputs = g.add_node(op, &ins, "op", &[]).expect("typed");
    let art = Compiler::new(CompileOptions::default()).compile_graph(g).expect("compiles");
    Session::from_bytes(&art.bytes(), &SessionOptions { threads }).expect("loads")
}

/// Compiles an ONNX file into a session.
pub fn model(path: &std::path::Path, threads: usize) -> Session {
    let art = Compiler::new(CompileOptions::default()).compile_path(path).expect("compiles");
    Session::from_bytes(&art.bytes(), &SessionOptions { threads }).expect("loads")
}
