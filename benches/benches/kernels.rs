//! Kernel throughput: MatMul (GFLOP/s, one thread) at square sizes and at small M, a 3×3
//! convolution layer, and the core's measured FMA peak (`fma_peak`, same unit), so that a
//! GEMM figure divided by the peak of the same run is its fraction of peak.
//! `cargo bench -p kiln-benches --bench kernels`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln::ir::{Op, Window};
use kiln::TensorRef;
#[cfg(target_arch = "x86_64")]
use kiln_benches::peak;
use kiln_benches::{single_op, tensor};

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    let square = [64, 256, 512, 1024].map(|n| (n, n, n));
    let small_m = [1, 8, 16, 128].map(|m| (m, 512, 512));
    for (m, k, n) in square.into_iter().chain(small_m) {
        let s = single_op(Op::MatMul, &[m, k], vec![tensor(&[k, n])], 1);
        let x = tensor(&[m, k]);
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        group.bench_function(format!("{m}x{k}x{n}"), |b| {
            b.iter(|| s.run(&[TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &x.data }]).unwrap())
        });
    }
    group.finish();
}

fn conv(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv3x3");
    for (ch, hw) in [(64, 56), (128, 28)] {
        let window = Window { kernel: [3, 3], strides: [1, 1], pads: [1, 1, 1, 1], dilations: [1, 1] };
        let s = single_op(Op::Conv { window, group: 1 }, &[1, ch, hw, hw], vec![tensor(&[ch, ch, 3, 3])], 1);
        let x = tensor(&[1, ch, hw, hw]);
        group.throughput(Throughput::Elements((2 * ch * ch * 9 * hw * hw) as u64));
        group.bench_function(format!("c{ch}_{hw}x{hw}"), |b| {
            b.iter(|| s.run(&[TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &x.data }]).unwrap())
        });
    }
    group.finish();
}

/// The measured single-core FMA peak, in FLOP/s (2 per lane per FMA), for each vector width
/// the CPU has.
#[cfg(target_arch = "x86_64")]
fn fma_peak(c: &mut Criterion) {
    const ITERS: u64 = 100_000;
    let mut group = c.benchmark_group("fma_peak");
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        group.throughput(Throughput::Elements(ITERS * peak::CHAINS as u64 * 8 * 2));
        // SAFETY: the features the function needs were detected above.
        group.bench_function("avx2", |b| b.iter(|| unsafe { peak::fma256(std::hint::black_box(ITERS)) }));
    }
    if is_x86_feature_detected!("avx512f") {
        group.throughput(Throughput::Elements(ITERS * peak::CHAINS as u64 * 16 * 2));
        // SAFETY: as above.
        group.bench_function("avx512", |b| b.iter(|| unsafe { peak::fma512(std::hint::black_box(ITERS)) }));
    }
    group.finish();
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak(_: &mut Criterion) {}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = fma_peak, matmul, conv
}
criterion_main!(benches);
