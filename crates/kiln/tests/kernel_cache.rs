//! The kernel cache: a second compilation takes every kernel from it and gives the same
//! artifact; a damaged entry is compiled again, never linked. And saving an artifact.

use kiln::ir::op::{UnaryOp, Window};
use kiln::ir::{DType, Graph, Op, Tensor, TensorType};
use kiln::{CompileOptions, Compiler, KernelCache};

fn model() -> Graph {
    let mut g = Graph::new("cached");
    let x = g.add_input("x", TensorType::new(DType::F32, vec![1, 8, 10, 10]));
    let w = g.add_const("w", Tensor::f32(vec![16, 8, 3, 3], (0..16 * 8 * 9).map(|i| (i % 7) as f32 - 3.0).collect()));
    let window = Window { kernel: [3, 3], strides: [1, 1], pads: [1, 1, 1, 1], dilations: [1, 1] };
    let y = g.add_node(Op::Conv { window, group: 1 }, &[x, w], "conv", &[]).unwrap()[0];
    g.outputs = g.add_node(Op::Unary(UnaryOp::Relu), &[y], "relu", &[]).unwrap();
    g
}

fn objects(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir.join("kernels")).unwrap().flatten() {
        out.extend(std::fs::read_dir(sub.path()).unwrap().flatten().map(|e| e.path()));
    }
    out.sort();
    out
}

#[test]
fn second_compile_hits_the_cache_and_damage_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let opts = CompileOptions { kernel_cache: KernelCache::at(dir.path()), ..Default::default() };
    let c = Compiler::new(opts);
    let first = c.compile_graph(model()).unwrap().bytes();
    let objs = objects(dir.path());
    assert!(!objs.is_empty(), "the kernels should have been cached");
    let stamps: Vec<_> = objs.iter().map(|p| std::fs::metadata(p).unwrap().modified().unwrap()).collect();
    // Warm: same artifact, no entry rewritten.
    let second = c.compile_graph(model()).unwrap().bytes();
    assert_eq!(first, second);
    let again: Vec<_> = objs.iter().map(|p| std::fs::metadata(p).unwrap().modified().unwrap()).collect();
    assert_eq!(stamps, again, "a warm compile should only read the cache");
    // A truncated entry fails its checksum: compiled again (and rewritten), same artifact.
    let bytes = std::fs::read(&objs[0]).unwrap();
    std::fs::write(&objs[0], &bytes[..bytes.len() / 2]).unwrap();
    let third = c.compile_graph(model()).unwrap().bytes();
    assert_eq!(first, third);
    assert_eq!(std::fs::read(&objs[0]).unwrap(), bytes, "the damaged entry should be replaced");
    // Without a cache: still the same artifact.
    let off = Compiler::new(CompileOptions { kernel_cache: KernelCache::disabled(), ..Default::default() });
    assert_eq!(first, off.compile_graph(model()).unwrap().bytes());
}

/// `Artifact::save` writes the file whole (through a temporary file renamed into place, none
/// left behind), replacing an existing one, and the saved file loads and runs.
#[test]
fn saved_artifact_replaces_the_old_file_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.kiln");
    std::fs::write(&path, b"an older, longer file that must be replaced entirely").unwrap();
    let opts = CompileOptions { kernel_cache: KernelCache::disabled(), ..Default::default() };
    let art = Compiler::new(opts).compile_graph(model()).unwrap();
    art.save(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), art.bytes());
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("model.kiln")], "no temporary file should remain");
    let s = kiln::Session::load(&path).unwrap();
    let x = vec![0.5f32; 8 * 10 * 10];
    let out = s.run(&[kiln::TensorRef::f32(&[1, 8, 10, 10], &x)]).unwrap();
    // Every output is relu(Σ over the 3×3×8 taps inside the image of 0.5·w): at an interior
    // pixel all 72 weights of an output channel count.
    let y = out[0].to_f32().unwrap();
    let w = |o: usize| (0..72).map(|i| ((o * 72 + i) % 7) as f32 - 3.0).sum::<f32>() * 0.5;
    let interior = |o: usize| y[o * 100 + 5 * 10 + 5];
    for o in 0..16 {
        assert!((interior(o) - w(o).max(0.0)).abs() < 1e-4, "channel {o}: {} vs {}", interior(o), w(o).max(0.0));
    }
    // Saving into a folder that does not exist is an error, not a panic.
    assert!(art.save(dir.path().join("missing").join("m.kiln")).is_err());
}

/// `CompileOptions::progress` hears each phase in order and every kernel body of code
/// generation, cold and warm (the bodies then come from the cache).
#[test]
fn progress_reports_phases_and_every_kernel_body() {
    use kiln::{Progress, ProgressEvent};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let heard: Arc<Mutex<Vec<ProgressEvent>>> = Arc::default();
    let sink = heard.clone();
    let opts = CompileOptions {
        kernel_cache: KernelCache::at(dir.path()),
        progress: Progress::new(move |e| sink.lock().unwrap().push(e)),
        ..Default::default()
    };
    let c = Compiler::new(opts);
    for _ in 0..2 {
        heard.lock().unwrap().clear();
        c.compile_graph(model()).unwrap();
        let events = heard.lock().unwrap().clone();
        let phases: Vec<&str> =
            events.iter().filter_map(|e| if let ProgressEvent::Phase(p) = e { Some(*p) } else { None }).collect();
        assert_eq!(phases, ["optimize", "codegen", "link"], "{events:?}");
        let counts: Vec<(usize, usize)> = events
            .iter()
            .filter_map(|e| if let ProgressEvent::Kernels { done, total } = e { Some((*done, *total)) } else { None })
            .collect();
        let total = counts.first().expect("kernel bodies reported").1;
        let mut done: Vec<usize> = counts.iter().map(|&(d, t)| if t == total { d } else { 0 }).collect();
        done.sort();
        assert_eq!(done, (1..=total).collect::<Vec<_>>(), "each body once: {counts:?}");
    }
}
