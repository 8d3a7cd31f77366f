//! Whole-model latency and compile time on the generated test models (run
//! `scripts/gen_testdata.py` first). `cargo bench -p kiln-benches --bench models`.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use kiln::{CompileOptions, Compiler, TensorRef};
use kiln_benches::{model, tensor};

fn data(rel: &str) -> Option<PathBuf> {
    let root = std::env::var_os("KILN_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/kiln-testdata/onnx-1.23.2")));
    let p = root.join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping {rel}: {} missing (run scripts/gen_testdata.py)", p.display());
        None
    }
}

fn latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("latency");
    for (name, rel) in [
        ("resnet_cnn", "models/resnet_cnn/model.onnx"),
        ("transformer_encoder", "models/transformer_encoder/model.onnx"),
        ("resnet50_light", "light/resnet50/model.onnx"),
    ] {
        let Some(p) = data(rel) else { continue };
        for threads in [1, 2] {
            let s = model(&p, threads);
            let inputs: Vec<_> =
                s.inputs().iter().map(|i| tensor(&i.shape.iter().map(|&d| d as usize).collect::<Vec<_>>())).collect();
            group.bench_function(format!("{name}/threads{threads}"), |b| {
                b.iter(|| {
                    let refs: Vec<TensorRef> = inputs
                        .iter()
                        .map(|t| TensorRef { dtype: t.dtype().code(), shape: t.shape(), data: &t.data })
                        .collect();
                    s.run(&refs).unwrap()
                })
            });
        }
    }
    group.finish();
}

fn compile_time(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    for (name, rel) in [("resnet_cnn", "models/resnet_cnn/model.onnx"), ("resnet50_light", "light/resnet50/model.onnx")]
    {
        let Some(p) = data(rel) else { continue };
        group.bench_function(name, |b| b.iter(|| Compiler::new(CompileOptions::default()).compile_path(&p).unwrap()));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = latency, compile_time
}
criterion_main!(benches);
