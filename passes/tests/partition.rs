//! The partition pass on small graphs whose right split is worked out by hand.

use std::collections::HashMap;

mod common;
use common::{ramp, run};
use kiln_ir::op::UnaryOp;
use kiln_ir::{DType, Graph, Node, Op, Tensor, TensorType, ValueId};
use kiln_passes::partition::{self, CostModel, Device, DeviceKind, Plan};

/// Runs a plan partition by partition, each partition's graph extracted and evaluated on its
/// own, passing values between them by name.
fn run_plan(g: &Graph, plan: &Plan, inputs: &[Tensor]) -> Vec<Tensor> {
    let mut by_name: HashMap<String, Tensor> = HashMap::new();
    for (&v, t) in g.inputs.iter().zip(inputs) {
        by_name.insert(g.value(v).name.clone(), t.clone());
    }
    for (i, p) in plan.partitions.iter().enumerate() {
        let sub = partition::extract(g, p, &format!("p{i}")).unwrap();
        let ins: Vec<Tensor> = sub.inputs.iter().map(|&v| by_name[&sub.value(v).name].clone()).collect();
        for (&v, t) in sub.outputs.iter().zip(run(&sub, &ins)) {
            by_name.insert(sub.value(v).name.clone(), t);
        }
    }
    g.outputs.iter().map(|&v| by_name[&g.value(v).name].clone()).collect()
}

const MIB: u64 = 1 << 20;

/// `x[1,512] → (MatMul with a 512×512 weight (1 MiB), Relu) × 4`.
fn chain() -> Graph {
    let mut g = Graph::new("chain");
    let mut x = g.add_input("x", TensorType::new(DType::F32, vec![1, 512]));
    for i in 0..4 {
        let w = g.add_const(format!("w{i}"), ramp(&[512, 512], 0.01));
        let y = g.add_node(Op::MatMul, &[x, w], format!("mm{i}"), &[format!("y{i}")]).unwrap()[0];
        x = g.add_node(Op::Unary(UnaryOp::Relu), &[y], format!("relu{i}"), &[format!("r{i}")]).unwrap()[0];
    }
    g.outputs = vec![x];
    g
}

fn all_ops(_: DeviceKind, _: &Graph, _: &Node) -> bool {
    true
}

/// A GPU that lacks Erf.
fn no_gpu_erf(k: DeviceKind, _: &Graph, n: &Node) -> bool {
    k == DeviceKind::Cpu || !matches!(n.op, Op::Unary(UnaryOp::Erf))
}

fn plan(g: &Graph, target: &str, supports: partition::Supports) -> Result<Plan, kiln_passes::PassError> {
    let devices = partition::parse_devices(target).unwrap();
    let budgets: Vec<Option<u64>> = devices.iter().map(|d| d.mem).collect();
    partition::partition(g, &devices, supports, &CostModel::default(), &budgets)
}

fn node_names(g: &Graph, p: &partition::Partition) -> Vec<String> {
    p.nodes.iter().map(|&n| g.node(n).name.clone()).collect()
}

#[test]
fn target_lists_parse() {
    let d = partition::parse_devices("cpu:mem=64MiB,cpu:mem=1.5GB,cuda").unwrap();
    assert_eq!(
        d,
        vec![
            Device { kind: DeviceKind::Cpu, mem: Some(64 << 20) },
            Device { kind: DeviceKind::Cpu, mem: Some(1_500_000_000) },
            Device { kind: DeviceKind::Cuda, mem: None },
        ]
    );
    assert_eq!(d[0].to_string(), "cpu:mem=64MiB");
    assert_eq!(partition::parse_bytes("4096").unwrap(), 4096);
    assert_eq!(partition::parse_bytes("2KiB").unwrap(), 2048);
    for (bad, says) in [
        ("tpu", "unknown device `tpu`"),
        ("cpu,,cpu", "empty entry"),
        ("cpu:mem=64XB", "unknown unit `xb`"),
        ("cpu:mem=lots", "not a size"),
        ("cpu:mem=0", "not a usable size"),
        ("cpu:cores=2", "unknown option `cores=2`"),
    ] {
        let e = partition::parse_devices(bad).unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn one_device_without_a_cap_is_one_partition() {
    let g = chain();
    let p = plan(&g, "cpu", &all_ops).unwrap();
    assert_eq!(p.partitions.len(), 1);
    assert_eq!(p.partitions[0].nodes.len(), 8);
    assert!(p.transfers.is_empty());
    assert_eq!(p.partitions[0].weight_bytes, 4 * MIB);
    assert!(p.text(&g).ends_with("partitions=1\n"));
}

#[test]
fn memory_caps_split_a_chain_where_the_weights_run_out() {
    let g = chain();
    // Each MatMul reads 1 MiB of weights; the activations are 2 KiB each. With 2.5 MiB per
    // device, the first two layers fit on device 0 (2 MiB + activations), the third does not.
    let p = plan(&g, "cpu:mem=2.5MiB,cpu:mem=2.5MiB", &all_ops).unwrap();
    assert_eq!(p.partitions.len(), 2, "{}", p.text(&g));
    assert_eq!(node_names(&g, &p.partitions[0]), ["mm0", "relu0", "mm1", "relu1"]);
    assert_eq!(node_names(&g, &p.partitions[1]), ["mm2", "relu2", "mm3", "relu3"]);
    assert_eq!((p.partitions[0].device, p.partitions[1].device), (0, 1));
    assert_eq!(p.partitions[0].weight_bytes, 2 * MIB);
    // One tensor crosses: relu1's result, 512 floats.
    assert_eq!(p.transfers.len(), 1);
    assert_eq!(g.value(p.transfers[0].value).name, "r1");
    assert_eq!(p.transfers[0].bytes, 2048);
    for (d, est) in p.device_estimates.iter().enumerate() {
        assert!(*est <= 5 * MIB / 2, "device {d}: {est}");
    }
    p.validate(&g).unwrap();
    let text = p.text(&g);
    assert!(text.contains("transfer `r1` (2.0 KiB): partition 0 (cpu0) -> partition 1 (cpu1)"), "{text}");
    assert!(text.ends_with("partitions=2\n"));
    let dot = p.dot(&g);
    assert!(dot.starts_with("digraph partitions {") && dot.contains("p0 -> p1 [label=\"r1\\n2.0 KiB\"]"), "{dot}");
    // Run partition by partition, the outputs are the whole graph's.
    let x = ramp(&[1, 512], 0.1);
    assert_eq!(run_plan(&g, &p, std::slice::from_ref(&x)), run(&g, &[x]));
}

#[test]
fn a_node_too_big_for_every_device_is_named() {
    let g = chain();
    let e = plan(&g, "cpu:mem=512KiB,cpu:mem=512KiB", &all_ops).unwrap_err().to_string();
    assert!(e.contains("node `mm0` (matmul) fits on no device"), "{e}");
    assert!(e.contains("cpu:mem=512KiB (device 0) would need 1.0 MiB"), "{e}");
    // Three devices' worth of layers on two devices.
    let e = plan(&g, "cpu:mem=1.5MiB,cpu:mem=1.5MiB", &all_ops).unwrap_err().to_string();
    assert!(e.contains("node `mm2` (matmul) fits on no device"), "{e}");
}

/// `x → MatMul → Relu → Erf → MatMul → Relu`, weights 512×512.
fn with_erf() -> Graph {
    let mut g = Graph::new("erf");
    let x = g.add_input("x", TensorType::new(DType::F32, vec![64, 512]));
    let w0 = g.add_const("w0", ramp(&[512, 512], 0.01));
    let w1 = g.add_const("w1", ramp(&[512, 512], 0.02));
    let y = g.add_node(Op::MatMul, &[x, w0], "mm0", &[]).unwrap()[0];
    let y = g.add_node(Op::Unary(UnaryOp::Relu), &[y], "relu0", &[]).unwrap()[0];
    let y = g.add_node(Op::Unary(UnaryOp::Erf), &[y], "erf", &["e".into()]).unwrap()[0];
    let y = g.add_node(Op::MatMul, &[y, w1], "mm1", &[]).unwrap()[0];
    g.outputs = g.add_node(Op::Unary(UnaryOp::Relu), &[y], "relu1", &[]).unwrap();
    g
}

#[test]
fn an_op_the_gpu_lacks_makes_one_cut_around_it() {
    let g = with_erf();
    let p = plan(&g, "cuda,cpu", &no_gpu_erf).unwrap();
    let devices: Vec<usize> = p.partitions.iter().map(|p| p.device).collect();
    assert_eq!(devices, [0, 1, 0], "{}", p.text(&g));
    assert_eq!(node_names(&g, &p.partitions[1]), ["erf"]);
    // Two transfers: relu0's result to the CPU, Erf's back.
    let moved: Vec<(String, usize, usize)> =
        p.transfers.iter().map(|t| (g.value(t.value).name.clone(), t.from, t.to)).collect();
    assert_eq!(moved, [("relu0:0".to_string(), 0, 1), ("e".to_string(), 1, 2)]);
    // Without the unsupported op, all of it runs on the GPU.
    let p = plan(&g, "cuda,cpu", &all_ops).unwrap();
    assert_eq!(p.partitions.len(), 1);
    assert_eq!(p.partitions[0].device, 0);
    // Listed CPU first, the CPU takes everything.
    let p = plan(&g, "cpu,cuda", &no_gpu_erf).unwrap();
    assert_eq!(p.partitions.len(), 1);
    assert_eq!(p.partitions[0].device, 0);
}

#[test]
fn independent_branches_are_grouped_by_device() {
    // x → MatMul a → Erf (CPU only) ─┐
    // x → MatMul c ──────────────────┴→ Add → MatMul d
    // In source order (a, erf, c, add, d) the GPU work is split in two runs around Erf
    // anyway; scheduling c before Erf keeps a and c together: GPU [a, c], CPU [erf],
    // GPU [add, d].
    let mut g = Graph::new("branches");
    let x = g.add_input("x", TensorType::new(DType::F32, vec![64, 256]));
    let w: Vec<ValueId> = (0..3).map(|i| g.add_const(format!("w{i}"), ramp(&[256, 256], 0.01))).collect();
    let a = g.add_node(Op::MatMul, &[x, w[0]], "a", &[]).unwrap()[0];
    let e = g.add_node(Op::Unary(UnaryOp::Erf), &[a], "erf", &[]).unwrap()[0];
    let c = g.add_node(Op::MatMul, &[x, w[1]], "c", &[]).unwrap()[0];
    let s = g.add_node(Op::Binary(kiln_ir::BinaryOp::Add), &[e, c], "add", &[]).unwrap()[0];
    g.outputs = g.add_node(Op::MatMul, &[s, w[2]], "d", &[]).unwrap();
    let p = plan(&g, "cuda,cpu", &no_gpu_erf).unwrap();
    let parts: Vec<Vec<String>> = p.partitions.iter().map(|q| node_names(&g, q)).collect();
    assert_eq!(parts, [vec!["a", "c"], vec!["erf"], vec!["add", "d"]]);
    // c's result skips the CPU partition: it goes from partition 0 to 2 directly.
    assert!(p.transfers.iter().any(|t| g.value(t.value).name == "c:0" && (t.from, t.to) == (0, 2)));
    let x = ramp(&[64, 256], 0.1);
    assert_eq!(run_plan(&g, &p, std::slice::from_ref(&x)), run(&g, &[x]));
}

#[test]
fn the_cost_model_keeps_a_tiny_gpu_run_between_cpu_ops_on_the_cpu() {
    // Erf → Relu → Erf on 16 floats: Relu alone on the GPU would cost two copies of 10 µs
    // each (the link's latency) to save nothing, so it stays on the CPU.
    let mut g = Graph::new("tiny");
    let x = g.add_input("x", TensorType::new(DType::F32, vec![16]));
    let y = g.add_node(Op::Unary(UnaryOp::Erf), &[x], "erf0", &[]).unwrap()[0];
    let y = g.add_node(Op::Unary(UnaryOp::Relu), &[y], "relu", &[]).unwrap()[0];
    g.outputs = g.add_node(Op::Unary(UnaryOp::Erf), &[y], "erf1", &[]).unwrap();
    let p = plan(&g, "cuda,cpu", &no_gpu_erf).unwrap();
    assert_eq!(p.partitions.len(), 1, "{}", p.text(&g));
    assert_eq!(p.partitions[0].device, 1);
}

#[test]
fn nodes_no_device_runs_are_all_named() {
    let g = with_erf();
    let gpu_matmul_only = |k: DeviceKind, _: &Graph, n: &Node| k == DeviceKind::Cuda && matches!(n.op, Op::MatMul);
    let e = plan(&g, "cuda", &gpu_matmul_only).unwrap_err().to_string();
    assert!(e.contains("no device in `cuda` runs 3 node(s): relu ×2 (`relu0`, `relu1`); erf ×1 (`erf`)"), "{e}");
}

/// Two CPUs, neither adding a step to the pipeline.
struct Cpus;

impl partition::Backends for Cpus {
    fn supports(&self, _: DeviceKind, _: &Graph, _: &Node) -> bool {
        true
    }
    fn backend(&self, _: DeviceKind) -> &dyn kiln_passes::pipeline::Backend {
        &kiln_passes::pipeline::Plain
    }
}

/// The whole path of a split model up to LIR, with no backend: the chain splits where its
/// weights run out, each partition is lowered on its own, each device's lowered memory
/// (weights, arena, the tensor it hands on) is within its cap, and the slots put the input,
/// the output and the one handed-on tensor where the runtime expects them.
#[test]
fn a_split_chain_is_lowered_within_its_caps() {
    let mut g = chain();
    let devices = partition::parse_devices("cpu:mem=2.5MiB,cpu:mem=2.5MiB").unwrap();
    let split = partition::split(&mut g, &devices, &Cpus, true).unwrap();
    let plan = &split.plan;
    assert_eq!(plan.partitions.len(), 2, "{}", plan.text(&g));
    assert_eq!(split.partitions.len(), 2);
    for (d, l) in split.partitions.iter().enumerate() {
        // Two 1 MiB weights per partition, equal (`ramp`), so one copy in its weight section.
        assert_eq!(l.lowered.weights.len, MIB, "partition {d}");
        assert!(!l.lowered.program.instrs.is_empty());
    }
    // Device 0 hands relu1's 2 KiB on; both hold 1 MiB of weights and a small arena.
    let arena = |d: usize| split.partitions[d].lowered.memory.arena_bytes;
    assert_eq!(split.usage, vec![MIB + arena(0) + 2048, MIB + arena(1)]);
    assert_eq!(split.usage, partition::device_usage(&g, plan, &split.partitions));
    assert!(split.usage.iter().all(|&u| u <= 5 * MIB / 2));
    let slots = partition::Slots::assign(&g, plan);
    let r1 = plan.transfers[0].value;
    assert_eq!((slots.home[&g.inputs[0]], slots.home[&g.outputs[0]], slots.home[&r1]), (0, 1, 2));
    assert_eq!(slots.intermediates, [r1]);
    assert!(slots.copies.is_empty());
}

/// An output that a later partition also reads lives in an intermediate (aligned for its
/// reader) and is copied to its output slot; an input given back as an output is copied.
#[test]
fn outputs_read_later_and_inputs_given_back_are_copied() {
    let mut g = Graph::new("g");
    let x = g.add_input("x", TensorType::new(DType::F32, vec![4]));
    let a = g.add_node(Op::Unary(UnaryOp::Relu), &[x], "relu", &["a".to_string()]).unwrap()[0];
    let y = g.add_node(Op::Unary(UnaryOp::Exp), &[a], "exp", &["y".to_string()]).unwrap()[0];
    g.outputs = vec![a, y, x];
    let part = |device: usize, node: &str, inputs: Vec<ValueId>, outputs: Vec<ValueId>| partition::Partition {
        device,
        nodes: vec![*g.order().iter().find(|&&n| g.node(n).name == node).unwrap()],
        inputs,
        outputs,
        weight_bytes: 0,
        time: 0.0,
    };
    let plan = Plan {
        devices: partition::parse_devices("cpu,cpu").unwrap(),
        partitions: vec![part(0, "relu", vec![x], vec![a]), part(1, "exp", vec![a], vec![y])],
        transfers: vec![partition::Transfer { value: a, from: 0, to: 1, bytes: 16 }],
        device_estimates: vec![0, 0],
        device_usage: Vec::new(),
    };
    let slots = partition::Slots::assign(&g, &plan);
    // Slots: x 0; outputs a 1, y 2, x 3; intermediates from 4.
    assert_eq!((slots.home[&x], slots.home[&a], slots.home[&y]), (0, 4, 2));
    assert_eq!(slots.intermediates, [a]);
    assert_eq!(slots.copies, [(4, 1), (0, 3)]);
}
