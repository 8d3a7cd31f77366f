//! Every model of the test suite compiled for `--target cuda`: each runs wholly on the GPU,
//! and its PTX is accepted by `ptxas` for sm_80 (Ampere) and sm_90 (Hopper). No GPU is
//! needed; running the PTX is `scripts/gpu-check.sh`'s job.

use kiln::Compiler;
use kiln_tests::Case;

/// Compiles `case` for `target`, assembles each GPU partition's PTX, and returns how many
/// of the model's nodes run on the GPU and how many in all.
fn check(case: &Case, target: &str) -> (usize, usize) {
    let name = &case.name;
    let mut opts = kiln_tests::compile_options(case);
    opts.set_target(target).unwrap();
    // Inputs that set static shapes are frozen to the case's values, as `kiln run` does.
    loop {
        let c = Compiler::new(opts.clone());
        match c.emit_ptx(&case.model) {
            Ok(modules) => {
                for (i, ptx) in &modules {
                    assert!(ptx.contains(".entry kiln_g"), "{name}: partition {i}: no kernel entry");
                    for arch in ["sm_80", "sm_90"] {
                        kiln_tests::assemble_ptx(ptx, arch).unwrap_or_else(|e| panic!("{name}: partition {i}: {e}"));
                    }
                }
                let mut g = c.import_path(&case.model).unwrap();
                let plan = c.plan(&mut g).unwrap();
                let on_gpu = plan.partitions.iter().filter(|p| p.device == 0).map(|p| p.nodes.len()).sum();
                let all = plan.partitions.iter().map(|p| p.nodes.len()).sum();
                eprintln!("{name}: {on_gpu} of {all} nodes on the GPU, {} partition(s)", plan.partitions.len());
                return (on_gpu, all);
            }
            Err(e) => {
                let need: Vec<String> = e.inputs_to_freeze().to_vec();
                assert!(!need.is_empty(), "{name}: {}", kiln::error_chain(&e));
                for n in need {
                    let t = case.inputs.iter().find(|(m, _, _)| *m == n).expect("a case input").1.clone();
                    opts.frozen_inputs.insert(n, t);
                }
            }
        }
    }
}

fn light(name: &str) -> Case {
    let dir = kiln_tests::data_root().join("light").join(name);
    kiln_tests::load_case(&dir, 0.0, 0.0).unwrap()
}

fn generated(name: &str) -> Case {
    let dir = kiln_tests::data_root().join("models").join(name);
    kiln_tests::load_case(&dir, 0.0, 0.0).unwrap()
}

macro_rules! ptx_tests {
    ($load:ident: $($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let (on_gpu, all) = check(&$load(stringify!($name)), "cuda");
            assert_eq!(on_gpu, all);
        }
    )*};
}

mod light_models {
    use super::*;
    ptx_tests!(light: bvlc_alexnet, densenet121, inception_v1, inception_v2, resnet50, shufflenet, squeezenet, vgg19, zfnet512);
}

mod random_weights {
    use super::*;
    ptx_tests!(generated: resnet_cnn, transformer_encoder, mlp);
}

mod exported {
    use super::*;
    fn exported(name: &str) -> Case {
        kiln_tests::load_exported(name).unwrap()
    }
    kiln_tests::with_exported_models!(ptx_tests!(exported:));
}

/// With a CPU in the list, a model whose ops the GPU all runs stays on the GPU.
#[test]
fn a_cpu_fallback_takes_nothing_from_a_model_the_gpu_runs() {
    let (on_gpu, all) = check(&generated("transformer_encoder"), "cuda,cpu");
    assert_eq!(on_gpu, all);
}

/// The bundled example runs wholly on the GPU: one partition, one module.
#[test]
fn example_mlp_is_one_gpu_partition() {
    let mut opts = kiln::CompileOptions::default();
    opts.set_target("cuda").unwrap();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mlp/model.onnx");
    let modules = Compiler::new(opts).emit_ptx(&model).unwrap();
    assert_eq!(modules.len(), 1);
    assert!(modules[0].1.contains(".target sm_80"));
    kiln_tests::assemble_ptx(&modules[0].1, "sm_90").unwrap();
}
