//! Models split across several CPU "devices" with memory caps (`--target
//! cpu:mem=…,cpu:mem=…`): the plan has at least two partitions, every device's compiled
//! memory is within its cap, and the outputs match both the single-device compilation and
//! the expected outputs (onnxruntime's, or ONNX's for the light models).

use kiln::{CompileOptions, Compiler};
use kiln_tests::{compare, Case, Out};

fn with_target(case: &Case, target: &str) -> CompileOptions {
    let mut o = kiln_tests::compile_options(case);
    o.set_target(target).unwrap_or_else(|e| panic!("{target}: {e}"));
    o
}

/// Outputs as tensors, to compare one run with another.
fn tensors(outs: &[Out], like: &[kiln_ir::Tensor]) -> Vec<kiln_ir::Tensor> {
    outs.iter()
        .zip(like)
        .map(|((_, _, bytes), w)| kiln_ir::Tensor::from_bytes(w.ty.clone(), bytes.clone().into()).unwrap())
        .collect()
}

/// Splits `case` across `target`, checks the plan and the caps, runs the split model and
/// compares it with one device and with the expected outputs.
fn check_split(case: &Case, target: &str, min_partitions: usize) {
    let name = &case.name;
    let opts = with_target(case, target);
    let c = Compiler::new(opts.clone());
    let mut g = c.import_path(&case.model).unwrap();
    let plan = c.plan(&mut g).unwrap_or_else(|e| panic!("{name} on {target}: {e}"));
    let text = plan.text(&g);
    eprintln!("{name} on {target}:\n{text}");
    assert!(plan.partitions.len() >= min_partitions, "{name}: {text}");
    assert!(text.ends_with(&format!("partitions={}\n", plan.partitions.len())));
    for (d, dev) in plan.devices.iter().enumerate() {
        let cap = dev.mem.expect("every device has a cap");
        assert!(plan.device_usage[d] <= cap, "{name}: device {d} uses {} > {cap}", plan.device_usage[d]);
    }
    let devices_used: std::collections::HashSet<usize> = plan.partitions.iter().map(|p| p.device).collect();
    assert!(devices_used.len() >= 2, "{name}: one device took everything");

    // The artifact holds the same partitions.
    let art = Compiler::new(opts.clone()).compile_path(&case.model).unwrap();
    assert_eq!(art.manifest.partitions.len(), plan.partitions.len());
    assert_eq!(art.manifest.devices, target.replace("1.5MiB", "1536KiB"));

    let split = kiln_tests::run_lib_on(case, opts).unwrap_or_else(|e| panic!("{name} split: {e}"));
    compare(&split, &case.expected, case.rtol, case.atol).unwrap_or_else(|e| panic!("{name} split: {e}"));
    let single = kiln_tests::run_lib(case).unwrap();
    // Partitions fuse and order their kernels on their own, so sums may round differently.
    compare(&split, &tensors(&single, &case.expected), 1e-5, 1e-6)
        .unwrap_or_else(|e| panic!("{name}: split vs one device: {e}"));
}

fn light(name: &str) -> Case {
    let dir = kiln_tests::data_root().join("light").join(name);
    let (rtol, atol) = kiln_tests::tolerance(&dir);
    kiln_tests::load_case(&dir, rtol, atol).unwrap()
}

/// ResNet-50 (the onnx wheel's, 98 MB of weights) over two devices of 64 MiB.
#[test]
fn resnet50_across_two_64mib_cpus() {
    check_split(&light("resnet50"), "cpu:mem=64MiB,cpu:mem=64MiB", 2);
}

/// A ResNet-50 with random weights (narrow, exported by PyTorch; onnxruntime's outputs).
#[test]
fn resnet50_torch_across_two_capped_cpus() {
    check_split(&kiln_tests::load_exported("resnet50_torch").unwrap(), "cpu:mem=1.5MiB,cpu:mem=1.5MiB", 2);
}

/// A BERT encoder with random weights (PyTorch export; onnxruntime's outputs).
#[test]
fn bert_encoder_across_two_capped_cpus() {
    check_split(&kiln_tests::load_exported("bert_torch").unwrap(), "cpu:mem=512KiB,cpu:mem=512KiB", 2);
}

#[test]
fn bert_encoder_across_three_capped_cpus() {
    check_split(&kiln_tests::load_exported("bert_torch").unwrap(), "cpu:mem=400KiB,cpu:mem=400KiB,cpu:mem=400KiB", 3);
}

/// `kiln inspect --partitions` prints the plan, last line `partitions=<n>`, and `--dot`
/// writes the partition graph; `kiln compile` with the same target writes an artifact that
/// `kiln run` runs.
#[test]
fn cli_prints_the_plan_and_the_dot_graph() {
    let dir = tempfile::tempdir().unwrap();
    let case = light("resnet50");
    let dot = dir.path().join("plan.dot");
    let out = std::process::Command::new(kiln_tests::kiln_bin())
        .arg("inspect")
        .arg(&case.model)
        .args(["--target", "cpu:mem=64MiB,cpu:mem=64MiB", "--partitions", "--dot"])
        .arg(&dot)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.lines().last(), Some("partitions=2"), "{text}");
    assert!(text.contains("device 1: cpu:mem=64MiB, 1 partition(s)"), "{text}");
    assert!(text.contains("-> partition 1 (cpu1)"), "{text}");
    let dot = std::fs::read_to_string(&dot).unwrap();
    assert!(dot.starts_with("digraph partitions {"), "{dot}");
    assert!(dot.contains("p0 -> p1 [label="), "{dot}");
    assert!(dot.contains("cpu:mem=64MiB (device 1)"), "{dot}");
}

#[test]
fn bad_target_lists_are_refused_with_the_reason() {
    let case = kiln_tests::load_exported("bert_torch").unwrap();
    for (target, says) in [
        ("cpu:mem=64MiB,tpu", "unknown device `tpu`"),
        ("cpu:mem=1KiB,cpu:mem=1KiB", "fits on no device"),
        ("cuda:mem=64KiB", "fits on no device: cuda:mem=64KiB (device 0) would need"),
    ] {
        let e = match CompileOptions::default().set_target(target) {
            Err(e) => e.to_string(),
            Ok(()) => match Compiler::new(with_target(&case, target)).compile_path(&case.model) {
                Err(err) => kiln::error_chain(&err),
                Ok(_) => panic!("{target}: compiled"),
            },
        };
        assert!(e.contains(says), "{target}: {e}");
    }
}
