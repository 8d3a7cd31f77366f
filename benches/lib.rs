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
    Session::from_bytes(&art.bytes(), &SessionOptions { threads, ..Default::default() }).expect("loads")
}

/// Compiles an ONNX file into a session.
pub fn model(path: &std::path::Path, threads: usize) -> Session {
    let art = Compiler::new(CompileOptions::default()).compile_path(path).expect("compiles");
    Session::from_bytes(&art.bytes(), &SessionOptions { threads, ..Default::default() }).expect("loads")
}

/// The core's FMA peak: independent FMA chains in vector registers, enough of them (12) to
/// cover the FMA latency on both FMA ports, so that the loop runs at the peak rate. Each
/// chain starts from its own value, so that no compiler can merge chains that would
/// otherwise compute the same thing (one that did would measure the latency instead).
#[cfg(target_arch = "x86_64")]
pub mod peak {
    use std::arch::x86_64::*;

    pub const CHAINS: usize = 12;

    /// `iters` rounds of one 8-lane FMA per chain.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub fn fma256(iters: u64) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc: [__m256; CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(1.0 + i as f32 * 1e-3));
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for x in acc {
            s = _mm256_add_ps(s, x);
        }
        let mut out = [0f32; 8];
        // SAFETY: `out` holds 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }

    /// `iters` rounds of one 16-lane FMA per chain.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub fn fma512(iters: u64) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc: [__m512; CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(1.0 + i as f32 * 1e-3));
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for x in acc {
            s = _mm512_add_ps(s, x);
        }
        _mm512_reduce_add_ps(s)
    }

    /// How far ahead [`stream512`] prefetches (4 KiB, as Kiln's kernels do for weights).
    const PREFETCH_FLOATS: usize = 1024;

    /// One 16-lane FMA per 16 floats of `buf`, `reps` times over it: what a product with
    /// one row of A (a GEMV) can do at best when B is `buf` and comes from wherever `buf`
    /// lives (L2 for 1 MiB), since each element of B then takes part in one multiply-add.
    /// Eight accumulators hide the FMA latency, and the loop prefetches 4 KiB ahead; the
    /// loads, not the FMAs, set the pace.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub fn stream512(buf: &[f32], reps: u64) -> f32 {
        let s = _mm512_set1_ps(0.5);
        let mut acc: [__m512; 8] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
        for _ in 0..reps {
            for chunk in buf.chunks_exact(128) {
                for l in 0..8 {
                    // A hint only: any address is allowed, in or past the buffer.
                    let ahead = chunk.as_ptr().wrapping_add(PREFETCH_FLOATS + 16 * l).cast::<i8>();
                    _mm_prefetch::<_MM_HINT_T0>(ahead);
                }
                for (i, x) in acc.iter_mut().enumerate() {
                    // SAFETY: floats 16·i .. 16·i + 16 of a 128-float chunk.
                    let v = unsafe { _mm512_loadu_ps(chunk.as_ptr().add(16 * i)) };
                    *x = _mm512_fmadd_ps(v, s, *x);
                }
            }
        }
        let mut t = _mm512_setzero_ps();
        for x in acc {
            t = _mm512_add_ps(t, x);
        }
        _mm512_reduce_add_ps(t)
    }

    /// A probe: its name, its f32 lanes, and the loop (`iters` rounds of [`CHAINS`] FMAs).
    pub type Probe = (&'static str, u64, fn(u64) -> f32);

    /// The widest probe this CPU runs.
    pub fn widest() -> Option<Probe> {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the function's features were detected just above.
            Some(("avx512", 16, |n| unsafe { fma512(n) }))
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            Some(("avx2", 8, |n| unsafe { fma256(n) }))
        } else {
            None
        }
    }
}
