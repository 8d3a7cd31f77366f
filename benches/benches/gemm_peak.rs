//! GEMM as a fraction of the core's FMA peak, measured side by side: for each product, rounds
//! that time the FMA-peak probe and then the product (one thread, constant B as a MatMul's
//! weights), so that both see the same machine (a shared VM's speed can change from one
//! second to the next), and the median of the per-round ratios is printed; `best` is the
//! fastest call of the product against the fastest probe over all rounds (other tenants
//! only ever slow a call down, so the fastest calls show what the core does undisturbed).
//! `cargo bench -p kiln-benches --bench gemm_peak`; `GEMM_SIZES=2048x2048x2048,1x512x512`
//! (M×K×N) times other products than the default list.

use std::time::{Duration, Instant};

use kiln::ir::Op;
use kiln::TensorRef;
use kiln_benches::{single_op, tensor};

/// Rounds per product, and how long each side of a round runs at least.
const ROUNDS: usize = 15;
const SPAN: Duration = Duration::from_millis(60);

/// Median and least time of one call of `f` over calls filling `SPAN`.
fn time(mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < SPAN || times.len() < 3 {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    let least = times.iter().copied().fold(f64::INFINITY, f64::min);
    (median(&mut times), least)
}

/// The bytes of an f32 slice.
fn bytes_of_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: the same memory as bytes (alignment 1, every value valid), borrowed from `v`.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 4) }
}

/// `"MxKxN,MxKxN"` as `(m, k, n)` triples.
fn parse_sizes(list: &str) -> Option<Vec<(usize, usize, usize)>> {
    list.split(',')
        .map(|t| {
            let d: Vec<usize> = t.trim().split('x').map(|x| x.parse().ok()).collect::<Option<_>>()?;
            match d[..] {
                [m, k, n] if m > 0 && k > 0 && n > 0 => Some((m, k, n)),
                _ => None,
            }
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[cfg(target_arch = "x86_64")]
fn main() {
    let Some((name, lanes, probe)) = kiln_benches::peak::widest() else {
        println!("no AVX2/AVX-512 here: no FMA peak to compare with");
        return;
    };
    const ITERS: u64 = 200_000;
    let peak_flop = (ITERS * kiln_benches::peak::CHAINS as u64 * lanes * 2) as f64;
    let sizes = match std::env::var("GEMM_SIZES") {
        Ok(list) => match parse_sizes(&list) {
            Some(s) => s,
            None => {
                eprintln!("GEMM_SIZES: expected a comma-separated list of MxKxN, got {list:?}");
                std::process::exit(2);
            }
        },
        Err(_) => {
            vec![(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (1, 512, 512), (8, 512, 512), (16, 512, 512)]
        }
    };
    println!("one thread; peak probe: {name}; {ROUNDS} rounds of {} ms each side", SPAN.as_millis());
    // A product of M ≤ 16 rows reads each element of B for M multiply-adds only, so where B
    // does not fit in L1 the load bandwidth bounds it below the FMA peak: `bound` is
    // min(peak, M × the rate of one FMA per vector of a K×N buffer streamed from the same
    // level of the cache), `of bound` the product against it (AVX-512 only).
    let stream = is_x86_feature_detected!("avx512f");
    println!(
        "{:>16} {:>10} {:>10} {:>9} {:>9} {:>10} {:>9}",
        "M x K x N", "GFLOP/s", "peak", "of peak", "best", "bound", "of bound"
    );
    for (m, k, n) in sizes {
        let s = single_op(Op::MatMul, &[m, k], vec![tensor(&[k, n])], 1);
        let x = tensor(&[m, k]);
        // The output buffer is allocated once: a fresh one per run can cost a page fault per
        // 4 KiB, which is the allocator's time, not the product's.
        let mut out = vec![0f32; m * n];
        let flop = (2 * m * k * n) as f64;
        let (mut ratios, mut gemm, mut peak) = (Vec::new(), Vec::new(), Vec::new());
        let (mut bound_ratios, mut bound) = (Vec::new(), Vec::new());
        // K×N floats on a 64-byte boundary (as Kiln's weights are), so that no load splits
        // a cache line.
        let store: Vec<f32> =
            if stream && m <= 16 { (0..k * n + 16).map(|i| (i % 97) as f32 * 1e-2).collect() } else { Vec::new() };
        let skip = store.as_ptr().align_offset(64).min(store.len());
        let buf = &store[skip..skip + if store.is_empty() { 0 } else { k * n }];
        let (mut best_gemm, mut best_peak) = (0f64, 0f64);
        for _ in 0..ROUNDS {
            let (t, least) = time(|| {
                std::hint::black_box(probe(std::hint::black_box(ITERS)));
            });
            let p = peak_flop / t;
            best_peak = best_peak.max(peak_flop / least);
            if !buf.is_empty() {
                const REPS: u64 = 16;
                let flop = (buf.len() / 128 * 128) as f64 * 2.0 * REPS as f64;
                // SAFETY: AVX-512F was detected above.
                let s = flop
                    / time(|| unsafe {
                        std::hint::black_box(kiln_benches::peak::stream512(buf, std::hint::black_box(REPS)));
                    })
                    .0;
                bound.push((m as f64 * s).min(p));
            }
            let (t, least) = time(|| {
                let ins = [TensorRef { dtype: x.dtype().code(), shape: x.shape(), data: &x.data }];
                s.run_into(&ins, &mut [bytes_of_mut(&mut out)]).unwrap();
            });
            let g = flop / t;
            best_gemm = best_gemm.max(flop / least);
            ratios.push(g / p);
            if let Some(&b) = bound.last() {
                bound_ratios.push(g / b);
            }
            gemm.push(g);
            peak.push(p);
        }
        let (bound, of_bound) = if bound.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            (format!("{:.1}", median(&mut bound) / 1e9), format!("{:.1}%", 100.0 * median(&mut bound_ratios)))
        };
        println!(
            "{:>16} {:>10.1} {:>10.1} {:>8.1}% {:>8.1}% {bound:>10} {of_bound:>9}",
            format!("{m}x{k}x{n}"),
            median(&mut gemm) / 1e9,
            median(&mut peak) / 1e9,
            100.0 * median(&mut ratios),
            100.0 * best_gemm / best_peak
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("the FMA-peak probe is x86-64 only");
}
