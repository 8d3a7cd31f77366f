//! Partition plans with a GPU in the target list, worked out by hand: an op the GPU backend
//! lacks makes exactly one GPU → CPU → GPU detour around it.

use kiln::ir::op::UnaryOp;
use kiln::ir::{DType, Graph, Op, Tensor, TensorType};
use kiln::{CompileOptions, Compiler, DeviceKind};

/// `x[64,512] → MatMul → Relu → <op> → MatMul → Relu`, weights 512×512.
fn sandwich(middle: UnaryOp) -> Graph {
    let ramp = |n: usize, s: f32| Tensor::f32(vec![512, 512], (0..n).map(|i| (i % 13) as f32 * s - 0.05).collect());
    let mut g = Graph::new("sandwich");
    let x = g.add_input("x", TensorType::new(DType::F32, vec![64, 512]));
    let w0 = g.add_const("w0", ramp(512 * 512, 0.01));
    let w1 = g.add_const("w1", ramp(512 * 512, 0.02));
    let y = g.add_node(Op::MatMul, &[x, w0], "mm0", &[]).unwrap()[0];
    let y = g.add_node(Op::Unary(UnaryOp::Relu), &[y], "relu0", &[]).unwrap()[0];
    let y = g.add_node(Op::Unary(middle), &[y], "middle", &["m".into()]).unwrap()[0];
    let y = g.add_node(Op::MatMul, &[y, w1], "mm1", &[]).unwrap()[0];
    g.outputs = g.add_node(Op::Unary(UnaryOp::Relu), &[y], "relu1", &[]).unwrap();
    g
}

fn compiler(target: &str) -> Compiler {
    let mut o = CompileOptions { kernel_cache: kiln::KernelCache::disabled(), ..Default::default() };
    o.set_target(target).unwrap();
    Compiler::new(o)
}

#[test]
fn an_op_the_gpu_lacks_is_cut_out_once() {
    // The GPU backend has no sine: the plan is GPU [mm0, relu0], CPU [sin], GPU [mm1, relu1].
    let mut g = sandwich(UnaryOp::Sin);
    let plan = compiler("cuda,cpu").plan(&mut g).unwrap();
    let text = plan.text(&g);
    let kinds: Vec<DeviceKind> = plan.partitions.iter().map(|p| plan.devices[p.device].kind).collect();
    assert_eq!(kinds, [DeviceKind::Cuda, DeviceKind::Cpu, DeviceKind::Cuda], "{text}");
    let names =
        |i: usize| -> Vec<String> { plan.partitions[i].nodes.iter().map(|&n| g.node(n).name.clone()).collect() };
    assert_eq!(names(0), ["mm0", "relu0"]);
    assert_eq!(names(1), ["middle"]);
    assert_eq!(names(2), ["mm1", "relu1"]);
    // Exactly the two transfers around it.
    let moved: Vec<(usize, usize)> = plan.transfers.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(moved, [(0, 1), (1, 2)], "{text}");
    assert!(text.ends_with("partitions=3\n"));

    // With an op the GPU has (Tanh), the whole graph is one GPU partition.
    let mut g = sandwich(UnaryOp::Tanh);
    let plan = compiler("cuda,cpu").plan(&mut g).unwrap();
    assert_eq!(plan.partitions.len(), 1);
    assert_eq!(plan.devices[plan.partitions[0].device].kind, DeviceKind::Cuda);

    // GPU only, with the sine: every node the GPU lacks is named.
    let mut g = sandwich(UnaryOp::Sin);
    let e = compiler("cuda").plan(&mut g).unwrap_err().to_string();
    assert!(e.contains("no device in `cuda` runs 1 node(s): sin ×1 (`middle`)"), "{e}");
}

#[test]
fn a_gpu_partition_carries_its_ptx_and_launch_table() {
    let art = compiler("cuda,cpu").compile_graph(sandwich(UnaryOp::Sin)).unwrap();
    let m = &art.manifest;
    assert_eq!(m.devices, "cuda,cpu");
    let devices: Vec<&str> = m.partitions.iter().map(|p| p.device.as_str()).collect();
    assert_eq!(devices, ["cuda", "cpu", "cuda"]);
    let gpu = &m.partitions[0];
    assert_eq!(gpu.ptx_arch, "sm_80");
    assert!(gpu.ptx.contains(".visible .entry kiln_g"), "{}", gpu.ptx);
    // Every kernel launch names a kernel of the PTX, with one argument per buffer it touches.
    assert!(!gpu.launches.is_empty());
    for l in gpu.launches.iter().filter(|l| l.kind == kiln::abi::manifest::Launch::KERNEL) {
        assert!(gpu.ptx.contains(&format!(".entry {}(", l.kernel)), "{}", l.kernel);
        assert!(l.block == 256 && l.grid >= 1 && !l.args.is_empty());
    }
    assert!(gpu.entry.is_empty() && m.partitions[1].entry == "kiln_p1_entry");
    // The CPU partition's input is the GPU partition's output: an intermediate slot.
    let (n_in, n_out) = (m.inputs.len() as u32, m.outputs.len() as u32);
    assert_eq!(m.partitions[1].inputs, gpu.outputs);
    assert!(gpu.outputs[0] >= n_in + n_out);
    // Loading it on a machine without the GPU runtime is a clear error, not a crash: a runtime
    // built without CUDA support names the partition, one with it (the `cuda` feature, which
    // `cargo test --workspace` turns on) the missing driver.
    let e = kiln::Session::from_bytes(&art.bytes(), &Default::default()).err().expect("no GPU runtime here");
    let e = e.to_string();
    assert!(e.contains("partition 0 runs on device `cuda`") || e.contains("no CUDA driver (libcuda)"), "{e}");
}
