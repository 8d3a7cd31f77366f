//! BatchNorm folding keeps the numbers: the graph before and after the pass, evaluated node
//! by node with the reference evaluator, agree.

mod common;
use common::{ramp, run};
use kiln_ir::{Graph, Op, Tensor, ValueId, Window};
use kiln_passes::simplify;

fn bn_params(g: &mut Graph, c: usize) -> Vec<ValueId> {
    let var: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.25).collect();
    vec![
        g.add_const("scale", ramp(&[c], 0.3)),
        g.add_const("shift", ramp(&[c], 0.1)),
        g.add_const("mean", ramp(&[c], 0.2)),
        g.add_const("var", Tensor::f32(vec![c], var)),
    ]
}

fn check_fold(mut g: Graph, inputs: &[Tensor], folded_op: &str) {
    let before = run(&g, inputs);
    assert!(simplify::fold_batchnorm(&mut g).unwrap());
    kiln_ir::verify::verify(&g).unwrap();
    let ops: Vec<&str> = g.order().iter().map(|&n| g.node(n).op.name()).collect();
    assert_eq!(ops, [folded_op], "the BatchNorm is gone");
    let after = run(&g, inputs);
    for (a, b) in after[0].to_f64_vec().iter().zip(before[0].to_f64_vec()) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn batchnorm_folds_into_conv_with_bias() {
    let mut g = Graph::new("conv_bn");
    let x = g.add_input("x", ramp(&[1, 2, 4, 4], 0.5).ty);
    let w = g.add_const("w", ramp(&[3, 2, 3, 3], 0.2));
    let b = g.add_const("b", ramp(&[3], 0.4));
    let window = Window { kernel: [3, 3], strides: [1, 1], pads: [1, 1, 1, 1], dilations: [1, 1] };
    let c = g.add_node(Op::Conv { window, group: 1 }, &[x, w, b], "conv", &[]).unwrap()[0];
    let mut ins = vec![c];
    ins.extend(bn_params(&mut g, 3));
    g.outputs = g.add_node(Op::BatchNorm { epsilon: 1e-3 }, &ins, "bn", &[]).unwrap();
    check_fold(g, &[ramp(&[1, 2, 4, 4], 0.5)], "conv");
}

#[test]
fn batchnorm_folds_into_gemm() {
    for (trans_b, cshape) in [(false, vec![4]), (true, vec![3, 1]), (true, vec![]), (false, vec![3, 4])] {
        let mut g = Graph::new("gemm_bn");
        let a = g.add_input("a", ramp(&[3, 5], 0.5).ty);
        let bshape = if trans_b { vec![4, 5] } else { vec![5, 4] };
        let b = g.add_const("b", ramp(&bshape, 0.2));
        let c = g.add_const("c", ramp(&cshape, 0.7));
        let op = Op::Gemm { alpha: 0.5, beta: 2.0, trans_a: false, trans_b };
        let y = g.add_node(op, &[a, b, c], "fc", &[]).unwrap()[0];
        let mut ins = vec![y];
        ins.extend(bn_params(&mut g, 4));
        g.outputs = g.add_node(Op::BatchNorm { epsilon: 1e-5 }, &ins, "bn", &[]).unwrap();
        check_fold(g, &[ramp(&[3, 5], 0.5)], "gemm");
    }
}
