//! Register-blocked f32 matrix products, convolutions included.
//!
//! A kernel that is a matrix product, `C[b.., m.., n] = fin(Σ_{k..} A·B)` with affine operand
//! loads (any strides: transposed and broadcast operands included), several M dims (the rows,
//! flattened) and K dims (flattened; the outer ones are "taps"), A possibly padded with
//! bounds checks on rows and taps only, and an optional elementwise finalizer (a fused
//! epilogue: bias, activation, residual…), gets a schedule of its own instead of the generic
//! loop nest ([`match_gemm`] decides; anything else falls back to the generic path). A
//! channels-last convolution is one: rows are output pixels, K is `(kh, kw, ci)`, B the
//! weights.
//!
//! * an `MR×NR` register tile (`NR` = two vectors of the target's width; `MR` 12 at AVX-512,
//!   6 below): `MR·NR/W` accumulators, one broadcast of A per row and `NR/W` vector loads of
//!   B per `k`, `llvm.fmuladd` (an FMA on targets that have one), the loop unrolled by 4;
//! * each row of A is a pointer and a step along the inner K dim, set per tap; a row whose
//!   tap falls in the padding reads a row of zeros with the same step (or one zero, step 0);
//! * blocking over K (`KC`), M (`MC`) and N (`NC`): a task of the parallel loop is one
//!   `MC×NC` block of C of one batch element; inside it, for each K slice (a `KC` block of
//!   the inner K dim, or several whole taps when it is short) and each `NR`-wide column
//!   panel, the panel of B is packed contiguously (zero padded past N) into a stack buffer
//!   and reused by every `MR`-row tile of the block; a constant B is packed once at compile
//!   time instead ([`prepack`], into the weight section);
//! * a product of at most `MR` rows (the batch-1 case) with a run-time B contiguous along N
//!   and one K dim reads B in place (no packing) for the full-width panels (a constant B is
//!   prepacked whatever M: a GEMV then streams each panel contiguously);
//! * edge tiles: a micro-kernel for `M % MR` rows besides the `MR`-row one (a switch on the
//!   rows left; short tiles keep up to 4 accumulator sets over interleaved k to hide the FMA
//!   latency, which is what a GEMV needs); columns past N are masked off: a C contiguous
//!   along N is read and written with masked vector loads and stores (`llvm.masked.*`:
//!   AVX-512 mask registers, AVX's `vmaskmov`), a strided one through a small stack tile, so
//!   that nothing outside C is touched;
//! * a prepacked B (weights, read from L3 or memory) is prefetched [`PREFETCH_BYTES`] ahead
//!   in the K loop, a line per 64 bytes of panel, where more than one row tile reads each
//!   panel (a GEMV's single sequential stream is left to the hardware prefetcher);
//! * the finalizer runs on the accumulator vectors of every tile after its last K slice,
//!   before the store, when it is float arithmetic, ReLU/Clip and loads along N or broadcast
//!   ([`crate::vector::vgen_masked`]: an edge tile's loads are masked like its stores);
//!   otherwise over the tile of C right after the store.
//!
//! Block sizes (the analytical BLIS model): the `KC×NR` panel of B takes two thirds of the
//! target's L1 data cache (`KC` = 256 at AVX-512 with a 48 KiB L1), the tile's rows of A the
//! rest (a prepacked B is not cut along K at all: see [`Gemm::kc`]); `MC = 16·MR`, `NC = 16·NR`, narrowed (N first) until a product has 16 tasks for the
//! threads to share, then evened out so that no block is a sliver.

use inkwell::intrinsics::Intrinsic;
use inkwell::types::VectorType;
use inkwell::values::{BasicValue, BasicValueEnum, FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

use kiln_ir::lir::{BufferKind, Combine, Expr, Instr, Kernel, Program, Scalar, View};
use kiln_ir::DType;
use kiln_ir::Tensor;

use crate::vector::{vload, vload_masked, vstore, vstore_masked};
use kiln_llvm_codegen::expr::Env;
use kiln_llvm_codegen::{llvm_err, BackendResult, CodeGen};

mod emit;
mod prepack;

pub(crate) use emit::gen_gemm;

pub use prepack::prepack;
use prepack::prepacked_load;

/// Register tile and cache blocks for a vector width (f32 lanes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocking {
    /// f32 lanes per vector.
    pub w: usize,
    pub mr: usize,
    pub nr: usize,
    pub kc: usize,
    pub mc: usize,
    pub nc: usize,
    /// The target's L2 cache per core, in bytes (row blocks of A are sized to half of it).
    pub l2: usize,
    /// The target multiplies pairs of i16 into i32 sums at this width (`vpmaddwd`: AVX2 for
    /// 8 lanes, AVX-512BW for 16), so integer products take the blocked schedule.
    pub imadd: bool,
}

/// M up to which a task takes every row (and narrower column blocks, for parallelism).
const SMALL_M: usize = 16;
/// Tasks a product is cut into at least, where its size allows (the runtime shares them
/// among its threads, a few per thread).
const MIN_TASKS: usize = 16;
/// Multiply-adds a task keeps at least when blocks are narrowed for more tasks.
const MIN_TASK_WORK: usize = 1 << 17;
/// Unrolling of the K loop of a full-height tile.
const UNROLL: usize = 4;
/// How far ahead (bytes of panel) the K loop prefetches a prepacked B. Weights come from L3
/// or memory, and the hardware prefetchers stop at page boundaries: on ResNet-50 and GPT-2
/// (Emerald Rapids, one thread) prefetching 4 KiB ahead took 10–15% off the latency, 2 KiB
/// did as well and 8 KiB a little less.
const PREFETCH_BYTES: usize = 4096;
/// Row tiles a block needs at least for its tiles to share the prefetch of the next panel of
/// a prepacked B ([`emit`]'s `next_panel_lines`); with fewer, each would fetch a large share.
const NEXT_PANEL_MIN_TILES: usize = 4;

impl Blocking {
    /// The blocking for a target: its vector width from the features (`+avx512f`: 16 lanes;
    /// `+avx`: 8; else 4) and its L1 data cache.
    pub fn for_target(t: &crate::CpuTarget) -> Blocking {
        Blocking::for_features(&t.features, t.l1d_bytes, t.l2_bytes)
    }

    pub fn for_features(features: &str, l1d: usize, l2: usize) -> Blocking {
        let has = |f: &str| features.split(',').any(|x| x == f);
        let w = if has("+avx512f") {
            16
        } else if has("+avx") {
            8
        } else {
            4
        };
        let imadd = match w {
            16 => has("+avx512bw"),
            8 => has("+avx2"),
            _ => false,
        };
        Blocking { imadd, ..Blocking::for_width(w, l1d, l2) }
    }

    pub fn for_width(w: usize, l1d: usize, l2: usize) -> Blocking {
        // Accumulators: MR·2 vectors (24 of AVX-512's 32 registers, 12 of AVX2's 16).
        let mr = if w >= 16 { 12 } else { 6 };
        let nr = 2 * w;
        // The B panel takes two thirds of L1, the rest holds the tile's rows of A.
        let kc = ((l1d * 2 / 3) / (nr * 4) / 16 * 16).max(64);
        Blocking { w, mr, nr, kc, mc: mr * 16, nc: nr * 16, l2, imadd: false }
    }
}

/// A bounds check on A: the load is inside the view iff `0 <= c + Σ_d coef[d]·var[d] < ext`
/// (a padded convolution tap). It never involves N or the innermost K dim, so it is
/// evaluated once per row of a tile and per tap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Check {
    pub c: i64,
    pub coef: Vec<i64>,
    pub ext: i64,
}

/// A matched matrix product: where its operands live, as affine functions of the domain.
///
/// The domain is `[batch.., m dims.., n, k dims..]`: the M dims (flattened, mixed radix) are
/// the rows, the K dims (flattened in domain order) the reduction. A convolution in
/// channels-last order is one: rows are output pixels `(n, oh, ow)`, K is `(kh, kw, ci)`, B
/// the weights and A the input, read through per-row bounds checks for the padding.
#[derive(Clone, Debug)]
pub(crate) struct Gemm {
    /// Batch extents (the parallel dims before the M dims).
    pub batch: Vec<usize>,
    pub m_dims: Vec<usize>,
    pub m: usize,
    pub n: usize,
    /// The K dims of the schedule (innermost last); adjacent domain dims that A and B both
    /// walk contiguously are merged into one.
    pub k_dims: Vec<usize>,
    pub k: usize,
    /// The kernel's own number of K (reduction) variables.
    pub n_kvars: usize,
    pub a: usize,
    pub b: usize,
    /// Element offsets and strides: per batch dim, per M dim, per K dim.
    pub a_off: i64,
    pub a_batch: Vec<i64>,
    pub a_m: Vec<i64>,
    pub a_k: Vec<i64>,
    pub a_checks: Vec<Check>,
    pub b_off: i64,
    pub b_batch: Vec<i64>,
    pub b_k: Vec<i64>,
    pub b_n: i64,
    pub c_batch: Vec<i64>,
    pub c_m: Vec<i64>,
    pub c_n: i64,
    pub bl: Blocking,
    pub bsrc: BSource,
    /// A prepacked B of bf16 weights, widened to f32 as the K loop loads them.
    pub b_bf16: bool,
    /// An integer product ([`Gemm::int`]).
    pub int: Option<IntProduct>,
    /// For a product over run-time rows whose first M dim is the rows (no batch dims): the
    /// M rows per row of the run (0 otherwise). M blocks then end on those rows, so that a
    /// run over fewer rows computes none past them.
    pub row_unit: usize,
    /// Extents read at run time ([`Gemm::set_runs`]): the rows of M (`dims[slot] · per`, its
    /// first M dim being a run-time one), the columns of N, and K (one K dim); the dims array
    /// is operand `dims_op`.
    pub run_m: Option<(u32, u64)>,
    pub run_n: Option<(u32, u64)>,
    pub run_k: Option<(u32, u64)>,
    pub dims_op: Option<usize>,
}

/// An integer product: `C = fin(Σ_k A·B)` in i32, A an i16 tensor contiguous along its one
/// K dim, B an i32 constant whose values fit i16 (the zero-point-shifted 8-bit operands of
/// MatMulInteger and quantized models; `kiln_passes::quant` narrows A to i16). K is walked in
/// pairs: the micro-kernel broadcasts `(A[i,2p], A[i,2p+1])` as one 32-bit lane and
/// multiplies it with B's panel of pairs by `vpmaddwd` (two i16 products summed into i32:
/// exact), adding into i32 accumulators. B is prepacked into panels of pairs
/// (`[⌈N/NR⌉, ⌈K/2⌉, NR, 2]` i16, zero past K and N); an odd K's last pair reads A's last
/// element alone. The finalizer, if any, computes in f32 from the sum converted to f32
/// (every `Acc` it reads is `Cast(f32, Acc)`), in registers; without one C is the i32 sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IntProduct {
    /// K (elements), odd: the last pair is half.
    pub k_odd: bool,
}

/// Where the micro-kernel reads its `KC×NR` panels of B from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BSource {
    /// Packed at run time into a stack buffer, per task.
    Pack,
    /// Read in place for full-width panels (small M, B contiguous along N); the last,
    /// narrower panel is packed.
    InPlace,
    /// Packed at compile time ([`prepack`]): panel `j` of B starts at element `j·K·NR` of
    /// its view, rows (flattened K) `NR` apart, zero padded past N.
    Prepacked,
}

impl Gemm {
    fn m_blocks(&self) -> usize {
        self.m.div_ceil(self.mc())
    }
    fn n_blocks(&self) -> usize {
        self.n.div_ceil(self.nc())
    }
    fn mc(&self) -> usize {
        self.blocks().0
    }
    fn nc(&self) -> usize {
        self.blocks().1
    }
    /// `(MC, NC)`: the cache blocks, narrowed (N first, in whole panels, then M, in whole
    /// row tiles) until the product has [`MIN_TASKS`] tasks to share among threads, or the
    /// blocks are one tile.
    fn blocks(&self) -> (usize, usize) {
        let (mr, nr) = (self.bl.mr, self.bl.nr);
        // Over run-time rows, blocks are chosen for a run of one row (the rows of a longer
        // run are more tasks of the same blocks).
        let m = if self.row_unit > SMALL_M { self.row_unit } else { self.m };
        // Small M: every row, and narrower column blocks, so that a GEMV splits too.
        // Run-time rows (`run_m`): a run may have a few of them, for which narrow column
        // blocks are what splits the product among threads; a long run loses little to them.
        let nc0 = if self.run_m.is_some() { nr * 4 } else { self.bl.nc };
        let (mut mc, mut nc) = if m <= SMALL_M { (m, nr * 4) } else { (self.l2_rows().min(m), nc0) };
        let batch: usize = self.batch.iter().product();
        let tasks = |mc: usize, nc: usize| batch * m.div_ceil(mc) * self.n.div_ceil(nc);
        // Multiply-adds per task at these blocks (a task smaller than MIN_TASK_WORK costs more
        // in repacking and scheduling than sharing it gains).
        let work = |mc: usize, nc: usize| batch * m * self.n * self.k / tasks(mc, nc);
        while tasks(mc, nc) < MIN_TASKS && work(mc, nc) >= 2 * MIN_TASK_WORK {
            if nc > nr && self.n > nr {
                nc = (nc / 2).div_ceil(nr) * nr;
            } else if mc > mr && m > SMALL_M {
                mc = (mc / 2).div_ceil(mr) * mr;
            } else {
                break;
            }
        }
        // Even blocks (a 196-row product is 108 + 88 rows, not 192 + 4), so that tasks, and
        // the threads that run them, get equal work.
        if m > SMALL_M {
            mc = m.div_ceil(m.div_ceil(mc)).div_ceil(mr) * mr;
        }
        nc = self.n.div_ceil(self.n.div_ceil(nc)).div_ceil(nr) * nr;
        (self.aligned_rows(mc), nc)
    }
    /// `mc` cut to end on the run's rows ([`Gemm::row_unit`]): a multiple of the unit, or
    /// the largest divisor of it (of at least a row tile) that is at most `mc`.
    fn aligned_rows(&self, mc: usize) -> usize {
        let u = self.row_unit;
        if u == 0 || self.m <= SMALL_M || mc == 0 {
            return mc;
        }
        if u <= mc {
            return mc / u * u;
        }
        (self.bl.mr.min(u)..=mc).rev().find(|d| u.is_multiple_of(*d)).unwrap_or(mc)
    }
    /// Rows of a block for a large M: `MC`, or fewer when the block's rows of A over one K
    /// slice would not stay in half of L2 (a long K slice: a prepacked B) and reading B
    /// once more per extra block moves fewer elements than reading A from beyond L2 once
    /// per panel. On 2048³ (MC 192 → 120) that took 4% off.
    fn l2_rows(&self) -> usize {
        let (mr, nr, mc) = (self.bl.mr, self.bl.nr, self.bl.mc);
        let (tps, kcl, _) = self.slicing();
        let row_bytes = tps * kcl * 4;
        // The rows of the largest block once blocks are evened out.
        let rows = |mc: usize| self.m.div_ceil(self.m.div_ceil(mc));
        let fits = |mc: usize| rows(mc) * row_bytes <= self.bl.l2 / 2;
        // Elements read from beyond L2: A once per N block when its block stays, else once
        // per panel; B once per M block.
        let traffic = |mc: usize| {
            let a_reads = if fits(mc) { self.n.div_ceil(self.bl.nc) } else { self.n.div_ceil(nr) };
            self.m * self.k * a_reads + self.k * self.n * self.m.div_ceil(mc)
        };
        let cap = self.bl.l2 / 2 / row_bytes / mr * mr;
        if fits(mc) || cap < mr || traffic(cap) >= traffic(mc) {
            mc
        } else {
            cap
        }
    }
    /// Takes a kernel's run-time extents (`cs`, per domain dim `[batch.., m dims.., n, k..]`;
    /// the dims array is operand `dims_op`). A run-time batch dim cuts the tasks; the first
    /// M dim, with no batch dims before it, makes M blocks end on its rows
    /// ([`Gemm::row_unit`]); a later M dim turns the M dims before it into batch dims (run-time
    /// ones among them cutting the tasks) and is read at run time, as are N and a lone K dim.
    /// Returns false where the product cannot take them (one of several K dims).
    pub(crate) fn set_runs(&mut self, cs: &[Option<kiln_ir::lir::Clamp>], dims_op: Option<usize>) -> bool {
        let c = |d: usize| cs.get(d).copied().flatten();
        let nb = self.batch.len();
        let dn = nb + self.m_dims.len();
        let m_runs: Vec<usize> = (nb..dn).filter(|&d| c(d).is_some()).collect();
        let k_runs: Vec<usize> = (dn + 1..dn + 1 + self.n_kvars).filter(|&d| c(d).is_some()).collect();
        if !k_runs.is_empty() && (self.n_kvars != 1 || self.k_dims.len() != 1) {
            return false;
        }
        if let Some(&d) = m_runs.last() {
            if nb == 0 && d == 0 {
                self.row_unit = self.m / self.m_dims[0].max(1);
            } else {
                // The M dims before it become batch dims.
                for _ in nb..d {
                    let e = self.m_dims.remove(0);
                    self.batch.push(e);
                    self.a_batch.push(self.a_m.remove(0));
                    self.c_batch.push(self.c_m.remove(0));
                    self.b_batch.push(0);
                    self.m /= e.max(1);
                }
                let cl = c(d).expect("a run-time M dim");
                self.run_m = Some((cl.slot, cl.per * (self.m / self.m_dims[0].max(1)) as u64));
            }
        }
        self.run_n = c(dn).map(|cl| (cl.slot, cl.per));
        self.run_k = k_runs.first().and_then(|&d| c(d)).map(|cl| (cl.slot, cl.per));
        self.dims_op = dims_op;
        dims_op.is_some() || (self.run_m.is_none() && self.run_n.is_none() && self.run_k.is_none())
    }

    /// Whether the masked reduction dims of [`unmask`] are the product's run-time K dim.
    pub(crate) fn runs_k(&self, masked: &[(usize, u32, u64)]) -> bool {
        let dk = self.batch.len() + self.m_dims.len() + 1;
        matches!(masked, [(d, slot, per)] if *d == dk && self.run_k == Some((*slot, *per)))
    }

    /// The element type of a prepacked B's panels (an integer product's pairs of i16 as one
    /// 32-bit element).
    pub(crate) fn b_dtype(&self) -> DType {
        if self.int.is_some() {
            DType::I32
        } else if self.b_bf16 {
            DType::BF16
        } else {
            DType::F32
        }
    }

    /// B elements in a 64-byte cache line (prefetches go a line at a time).
    pub(crate) fn b_per_line(&self) -> usize {
        64 / self.b_dtype().size()
    }

    /// The task levels of a product with run-time extents `cs` (see `tasks::Radix`):
    /// batch dims, M blocks, N blocks.
    pub(crate) fn radices(&self, cs: &[Option<kiln_ir::lir::Clamp>]) -> Vec<crate::tasks::Radix> {
        use crate::tasks::Radix;
        let c = |d: usize| cs.get(d).copied().flatten();
        let mut r: Vec<Radix> = self
            .batch
            .iter()
            .enumerate()
            .map(|(d, &e)| Radix { count: e as u64, run: c(d).map(|cl| (cl.slot, cl.per, 1)) })
            .collect();
        let rows = match (self.row_unit, self.run_m) {
            (u, _) if u > 0 => c(0).map(|cl| (cl.slot, cl.per * u as u64)),
            (_, m) => m,
        };
        r.push(Radix { count: self.m_blocks() as u64, run: rows.map(|(s, p)| (s, p, self.mc() as u64)) });
        r.push(Radix { count: self.n_blocks() as u64, run: self.run_n.map(|(s, p)| (s, p, self.nc() as u64)) });
        r
    }

    /// Tasks of the parallel loop: batch × M blocks × N blocks.
    pub fn tasks(&self) -> usize {
        self.batch.iter().product::<usize>() * self.m_blocks() * self.n_blocks()
    }
    /// Elements of the zero row that padded rows of A read with A's own step along K (0:
    /// too long for the stack, a single zero read with step 0 instead).
    fn zero_row(&self) -> usize {
        let step = self.a_k[self.k_dims.len() - 1];
        let len = (self.slicing().1 as i64 - 1) * step + 1;
        if self.a_checks.is_empty() || step < 0 || len > 4096 {
            0
        } else {
            len as usize
        }
    }
    /// Whether an integer product's pairs of K would straddle taps: an odd innermost K dim
    /// under several taps (the schedule walks each tap's run in pairs).
    fn pairs_straddle_taps(&self) -> bool {
        self.taps() > 1 && self.k_in() % 2 == 1
    }
    /// Extent of the innermost K dim (the one the micro-kernel steps through).
    fn k_in(&self) -> usize {
        *self.k_dims.last().expect("at least one K dim")
    }
    /// Taps: combinations of the outer K dims.
    fn taps(&self) -> usize {
        self.k / self.k_in()
    }
    /// Length of a K slice. A prepacked B is read from its panels where they are, so K is
    /// not cut: C is then loaded and stored once per tile instead of once per slice, and the
    /// panel streams from L2 (2 vectors per `MR` broadcasts, well within its bandwidth).
    /// On 2048³ that took 5% off; ResNet-50 and BERT-base were unchanged. A B packed at run
    /// time goes through a stack panel of `KC` rows, which bounds the slice.
    fn kc(&self) -> usize {
        match self.bsrc {
            BSource::Prepacked => self.k,
            BSource::Pack | BSource::InPlace => self.bl.kc,
        }
    }
    /// How K is cut into slices, each accumulated into C once: `(taps per slice, K_in block,
    /// K_in blocks)`. A long innermost dim is cut into `KC` blocks, one tap per slice; a
    /// short one (a convolution over few channels) takes several whole taps per slice.
    fn slicing(&self) -> (usize, usize, usize) {
        let (kc, k_in) = (self.kc(), self.k_in());
        if k_in >= kc {
            (1, kc, k_in.div_ceil(kc))
        } else {
            ((kc / k_in).clamp(1, self.taps()), k_in, 1)
        }
    }
}

/// The affine form `c + Σ coef[d]·var[d]` of an integer index expression, if it is one.
pub(crate) fn affine_expr(e: &Expr, nd: usize) -> Option<(i64, Vec<i64>)> {
    use kiln_ir::BinaryOp as B;
    Some(match e {
        Expr::Var(d) => {
            let mut c = vec![0; nd];
            c[*d] = 1;
            (0, c)
        }
        Expr::Const(Scalar::I64(x)) => (*x, vec![0; nd]),
        Expr::Binary(op @ (B::Add | B::Sub), x, y) => {
            let (cx, mut fx) = affine_expr(x, nd)?;
            let (cy, fy) = affine_expr(y, nd)?;
            let s = if *op == B::Add { 1 } else { -1 };
            fx.iter_mut().zip(&fy).for_each(|(a, b)| *a += s * b);
            (cx + s * cy, fx)
        }
        Expr::Binary(B::Mul, x, y) => {
            let (cx, fx) = affine_expr(x, nd)?;
            let (cy, fy) = affine_expr(y, nd)?;
            if fx.iter().all(|&v| v == 0) {
                (cx * cy, fy.iter().map(|v| v * cx).collect())
            } else if fy.iter().all(|&v| v == 0) {
                (cx * cy, fx.iter().map(|v| v * cy).collect())
            } else {
                return None;
            }
        }
        _ => return None,
    })
}

/// The least and greatest value of the affine form `c + Σ coef[d]·var[d]` over a domain.
pub(crate) fn affine_range(c: i64, coef: &[i64], domain: &[usize]) -> (i64, i64) {
    let (mut lo, mut hi) = (c, c);
    for (&fd, &e) in coef.iter().zip(domain) {
        let span = fd * (e as i64 - 1);
        if span < 0 {
            lo += span;
        } else {
            hi += span;
        }
    }
    (lo, hi)
}

/// A load through an operand view as an affine element address plus bounds checks:
/// `(operand, offset, coef per domain dim, checks)`. Without `pad` there are no checks (the
/// load is in bounds by construction); with it, a zero pad is required (what the
/// micro-kernel substitutes) and each index that can leave its extent becomes a [`Check`].
fn affine_load(k: &Kernel, e: &Expr, dt: DType) -> Option<(usize, i64, Vec<i64>, Vec<Check>)> {
    let Expr::Load { operand, index, pad } = e else { return None };
    let v = &k.inputs[*operand];
    // A zero pad: f32, or an integer product's i16 A (its pad an i32 zero).
    let zero = match dt {
        DType::F32 => Scalar::F32(0.0),
        _ => Scalar::I32(0),
    };
    if v.dtype != dt || !(pad.is_none() || *pad == Some(zero)) {
        return None;
    }
    let nd = k.domain.len();
    let mut off = v.offset;
    let mut coef = vec![0i64; nd];
    let mut checks = Vec::new();
    for (p, ix) in index.iter().enumerate() {
        let (c, f) = affine_expr(ix, nd)?;
        let s = v.strides[p];
        off += c * s;
        coef.iter_mut().zip(&f).for_each(|(a, b)| *a += s * b);
        if pad.is_some() {
            let (lo, hi) = affine_range(c, &f, &k.domain);
            if lo < 0 || hi >= v.extents[p] as i64 {
                checks.push(Check { c, coef: f, ext: v.extents[p] as i64 });
            }
        }
    }
    Some((*operand, off, coef, checks))
}

/// Recognizes a plain f32 matrix product (see the module doc).
/// Masked dims of a kernel: `(dim, slot, per)`, the dim running to `dims[slot] · per`.
pub(crate) type Masked = Vec<(usize, u32, u64)>;

/// A kernel whose body is masked to run-time extents (`select(i_d < dims[slot]·per ∧ …,
/// body, init)`, as `kiln_passes::rows` writes it, the dims array operand `dims_op`): the
/// kernel with the bare body, and the masked `(dim, slot, per)`.
pub(crate) fn unmask(k: &Kernel, dims_op: Option<usize>) -> Option<(Kernel, Masked)> {
    let dop = dims_op?;
    let init = k.reduction.as_ref()?.init;
    let Expr::Select(c, body, other) = &k.body else { return None };
    if **other != Expr::Const(init) {
        return None;
    }
    fn terms(e: &Expr, dop: usize, out: &mut Vec<(usize, u32, u64)>) -> bool {
        match e {
            Expr::Binary(kiln_ir::BinaryOp::And, a, b) => terms(a, dop, out) && terms(b, dop, out),
            Expr::Cmp(kiln_ir::CmpOp::Less, v, lim) => {
                let (Expr::Var(d), Expr::Binary(kiln_ir::BinaryOp::Mul, l, p)) = (&**v, &**lim) else { return false };
                let (Expr::Load { operand, index, pad: None }, Expr::Const(Scalar::I64(per))) = (&**l, &**p) else {
                    return false;
                };
                match index.as_slice() {
                    [Expr::Const(Scalar::I64(slot))] if *operand == dop && *per > 0 && *slot >= 0 => {
                        out.push((*d, *slot as u32, *per as u64));
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }
    let mut masked = Vec::new();
    if !terms(c, dop, &mut masked) {
        return None;
    }
    Some((Kernel { body: (**body).clone(), ..k.clone() }, masked))
}

/// A matched product that the blocked schedule runs: an integer product only with its B
/// prepacked ([`prepack`] makes the panels of pairs it needs).
pub(crate) fn match_gemm(k: &Kernel, bl: Blocking) -> Option<Gemm> {
    match_product(k, bl).filter(|g| g.int.is_none() || g.bsrc == BSource::Prepacked)
}

/// A matched product, before or after [`prepack`].
pub(crate) fn match_product(k: &Kernel, bl: Blocking) -> Option<Gemm> {
    let mut g = match_gemm_with(k, bl)?;
    // Merge the inner K dims that A and B both walk contiguously (a padded-copy convolution
    // over few channels: `(kw, ci)` is one run of `kw·ci` elements), so that the micro-kernel
    // steps through a long inner dim. Only without bounds checks, which name domain dims.
    while g.a_checks.is_empty() && g.k_dims.len() >= 2 {
        let d = g.k_dims.len() - 1;
        let e = g.k_dims[d] as i64;
        if g.a_k[d - 1] != g.a_k[d] * e || g.b_k[d - 1] != g.b_k[d] * e {
            break;
        }
        g.k_dims[d - 1] *= g.k_dims[d];
        g.k_dims.pop();
        g.a_k.remove(d - 1);
        g.b_k.remove(d - 1);
    }
    if g.int.is_some() && g.bsrc == BSource::Prepacked {
        g = pair_rows(g)?;
    }
    // A narrow C holds no partial sums: the product must be one K slice (a prepacked B is;
    // before prepacking, an integer product's B is not yet).
    if k.output.dtype.size() < 4 && g.bsrc == BSource::Prepacked {
        let (tps, _, kblocks) = g.slicing();
        if g.taps().div_ceil(tps) * kblocks != 1 {
            return None;
        }
    }
    // Few rows (a batch-1 product, a small image): 8-row tiles waste less than 12-row ones
    // (16 rows are two full tiles rather than 12 + 4).
    if g.bl.mr > 8 && g.m <= 32 {
        g.bl = Blocking { mr: 8, mc: 8 * 16, ..g.bl };
    }
    Some(g)
}

/// An integer product with prepacked B walks K in pairs: the innermost (merged) K dim
/// halved, rounded up where it is the only one (an odd K's last pair is half), B's panel rows
/// the pairs. None where taps would split a pair (an odd inner dim under several taps).
fn pair_rows(mut g: Gemm) -> Option<Gemm> {
    if g.pairs_straddle_taps() {
        return None;
    }
    let k_in = g.k_in();
    g.int = Some(IntProduct { k_odd: k_in % 2 == 1 });
    *g.k_dims.last_mut().expect("a K dim") = k_in.div_ceil(2);
    g.k = g.k_dims.iter().product();
    let mut flat = g.bl.nr as i64;
    for d in (0..g.k_dims.len()).rev() {
        g.b_k[d] = flat;
        flat *= g.k_dims[d] as i64;
    }
    Some(g)
}

/// The part of a finalizer that runs on f32 vectors in the tile's registers, for a product
/// whose C has type `out`: all of it for an f32 C; for an integer product's narrow integer C
/// (the i16 operand of the next integer product), the value inside its last conversion,
/// `Cast(i16, x)` with `x` clipped within i32, which the store converts as the scalar code
/// does (through i32, NaN as 0, wrapped to the width).
pub(crate) fn vector_part(fin: &Expr, out: DType) -> Option<&Expr> {
    match fin {
        _ if out == DType::F32 => Some(fin),
        Expr::Cast(to, _, _, x) if *to == out && narrow_int(out) && kiln_llvm_codegen::expr::within_i32(x) => Some(x),
        _ => None,
    }
}

/// A narrow integer type an integer product's epilogue may store ([`vector_part`]).
pub(crate) fn narrow_int(d: DType) -> bool {
    matches!(d, DType::I16 | DType::I8 | DType::U8)
}

/// `fin` with each `Cast(f32, Acc)` read as `Acc`: an integer product's finalizer over the
/// sum converted to f32. None if it reads the i32 accumulator otherwise.
pub(crate) fn float_acc(fin: &Expr) -> Option<Expr> {
    let is_cast = |e: &Expr| matches!(e, Expr::Cast(DType::F32, _, _, a) if **a == Expr::Acc);
    let (mut accs, mut casts) = (0, 0);
    fin.visit(&mut |e| {
        accs += usize::from(*e == Expr::Acc);
        casts += usize::from(is_cast(e));
    });
    let out = fin.clone().map(&mut |e| if is_cast(&e) { Expr::Acc } else { e });
    (accs == casts).then_some(out)
}

fn match_gemm_with(k: &Kernel, bl: Blocking) -> Option<Gemm> {
    let red = k.reduction.as_ref()?;
    let int = red.init == Scalar::I32(0);
    if red.combine != Combine::Add || !(int || red.init == Scalar::F32(0.0)) || (int && !bl.imadd) {
        return None;
    }
    let acc = if int { DType::I32 } else { DType::F32 };
    let np = k.n_par;
    let out_ok = k.output.dtype == DType::F32
        || (int && k.output.dtype == DType::I32 && red.finalize.is_none())
        || (int && narrow_int(k.output.dtype) && red.finalize.is_some());
    if np < 2 || k.domain.len() <= np || !out_ok {
        return None;
    }
    // An integer product: C contiguous along N (its edges are masked vectors).
    if int && k.output.strides[np - 1] != 1 {
        return None;
    }
    let ops: Vec<DType> = k.inputs.iter().map(|v| v.dtype).collect();
    if k.body.dtype(&ops, None) != acc {
        return None;
    }
    if let Some(f) = &red.finalize {
        if f.dtype(&ops, Some(acc)) != k.output.dtype {
            return None;
        }
        // The finalizer may read only at the parallel indices.
        let mut ok = true;
        f.visit(&mut |e| ok &= !matches!(e, Expr::Var(d) if *d >= np));
        if !ok {
            return None;
        }
        // An integer product's finalizer runs on the sum in f32, in registers (converted to
        // a narrow C as it is stored).
        if int
            && !float_acc(f)
                .is_some_and(|ff| vector_part(&ff, k.output.dtype).is_some_and(|v| crate::vector::vexpr_ok(k, v)))
        {
            return None;
        }
    }
    let Expr::Binary(kiln_ir::BinaryOp::Mul, x, y) = &k.body else { return None };
    let dn = np - 1;
    let n = k.domain[dn];
    let k_dims = k.domain[np..].to_vec();
    let kk: usize = k_dims.iter().product();
    if n == 0 || kk == 0 || k.domain[..np].contains(&0) {
        return None;
    }
    let nd = k.domain.len();
    let kin = nd - 1;
    // A: does not depend on N; its checks involve neither N nor the innermost K dim.
    let a_ok = |a: &(usize, i64, Vec<i64>, Vec<Check>)| {
        a.2[dn] == 0 && a.3.iter().all(|c| c.coef[dn] == 0 && c.coef[kin] == 0)
    };
    // The M dims: the parallel dims before N that B does not depend on, innermost first.
    let m_start = |b_coef: &[i64]| {
        let mut s = dn;
        while s > 0 && b_coef[s - 1] == 0 {
            s -= 1;
        }
        s
    };
    let build = |ga: (usize, i64, Vec<i64>, Vec<Check>), b: usize, b_off: i64, b_coef: Vec<i64>, bsrc| {
        let ms = m_start(&b_coef);
        if ms == dn {
            return None;
        }
        let m_dims = k.domain[ms..dn].to_vec();
        Some(Gemm {
            batch: k.domain[..ms].to_vec(),
            m: m_dims.iter().product(),
            m_dims,
            n,
            k_dims: k_dims.clone(),
            k: kk,
            n_kvars: k_dims.len(),
            a: ga.0,
            b,
            a_off: ga.1,
            a_batch: ga.2[..ms].to_vec(),
            a_m: ga.2[ms..dn].to_vec(),
            a_k: ga.2[np..].to_vec(),
            a_checks: ga.3,
            b_off,
            b_batch: b_coef[..ms].to_vec(),
            b_k: b_coef[np..].to_vec(),
            b_n: b_coef[dn],
            c_batch: k.output.strides[..ms].to_vec(),
            c_m: k.output.strides[ms..dn].to_vec(),
            c_n: k.output.strides[dn],
            bl,
            bsrc,
            b_bf16: k.inputs[b].dtype == DType::BF16,
            int: None,
            row_unit: 0,
            run_m: None,
            run_n: None,
            run_k: None,
            dims_op: None,
        })
    };
    // An integer product's A is `Cast(i32, Load(A: i16))`, its B an i32 load (before
    // prepacking) or a prepacked panel of pairs.
    let a_load = |e: &'_ Expr| -> Option<(usize, i64, Vec<i64>, Vec<Check>)> {
        match e {
            Expr::Cast(DType::I32, _, _, a) if int => affine_load(k, a, DType::I16),
            e if !int => affine_load(k, e, DType::F32),
            _ => None,
        }
    };
    let int_rows = |mut g: Gemm| -> Option<Gemm> {
        if int {
            // Pairs of A along K are adjacent i16 (K in pairs: [`pair_rows`]).
            if g.a_k.last() != Some(&1) {
                return None;
            }
            g.int = Some(IntProduct { k_odd: false });
        }
        Some(g)
    };
    // B packed at compile time: the A operand is the other load.
    for (pa, pb) in [(x, y), (y, x)] {
        let packed = if int { prepack::prepacked_int_load(k, pb, bl.nr) } else { prepacked_load(k, pb, bl.nr) };
        let Some((b_op, b_off)) = packed else { continue };
        let ga = a_load(pa)?;
        if !a_ok(&ga) {
            return None;
        }
        // Panel j0/NR starts at j0·K; flat K rows are NR apart; a batch of B (the 16
        // products of a Winograd convolution) has a block of panels per element. An
        // integer product's panel rows are pairs of K.
        let rows = if int { kk.div_ceil(2) } else { kk };
        let mut b_coef = vec![0i64; nd];
        b_coef[..dn].copy_from_slice(&k.inputs[b_op].strides[..dn]);
        b_coef[dn] = rows as i64;
        // (An integer product's K rows become pairs once its K dims are merged: `pair_rows`.)
        let mut flat = bl.nr as i64;
        for d in (np..nd).rev() {
            b_coef[d] = flat;
            flat *= k.domain[d] as i64;
        }
        return int_rows(build(ga, b_op, b_off, b_coef, BSource::Prepacked)?);
    }
    // An integer product's B before prepacking: i32, or i16 widened.
    let b_load = |e: &'_ Expr| match e {
        Expr::Cast(DType::I32, _, _, b) if int => affine_load(k, b, DType::I16),
        e if int => affine_load(k, e, DType::I32),
        e => affine_load(k, e, DType::F32),
    };
    for (pa, pb) in [(x, y), (y, x)] {
        let (Some(ga), Some(gb)) = (a_load(pa), b_load(pb)) else { continue };
        if !a_ok(&ga) || !gb.3.is_empty() {
            continue;
        }
        let ms = m_start(&gb.2);
        let m: usize = k.domain[ms..dn].iter().product();
        // In place only for a single row tile: with several, the panel is reused and packing
        // it (contiguous, no L1 set conflicts from the row stride of B) pays.
        let bsrc = if m <= bl.mr && gb.2[dn] == 1 && k_dims.len() == 1 { BSource::InPlace } else { BSource::Pack };
        if let Some(g) = build(ga, gb.0, gb.1, gb.2, bsrc).and_then(int_rows) {
            return Some(g);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_follows_the_vector_width_and_l1() {
        let avx512 = Blocking::for_features("+sse2,+avx,+avx2,+fma,+avx512f", 48 << 10, 2 << 20);
        assert_eq!((avx512.w, avx512.mr, avx512.nr, avx512.kc), (16, 12, 32, 256));
        let avx2 = Blocking::for_features("+sse2,+avx,+avx2,+fma,-avx512f", 32 << 10, 1 << 20);
        assert_eq!((avx2.w, avx2.mr, avx2.nr, avx2.kc), (8, 6, 16, 336));
        let neon = Blocking::for_features("+neon", 64 << 10, 1 << 20);
        assert_eq!((neon.w, neon.mr, neon.nr, neon.kc), (4, 6, 8, 1360));
    }

    /// A row-major `m×k · k×n` product.
    fn product(m: usize, k: usize, n: usize, bsrc: BSource) -> Gemm {
        Gemm {
            batch: vec![],
            m_dims: vec![m],
            m,
            n,
            k_dims: vec![k],
            k,
            n_kvars: 1,
            a: 0,
            b: 1,
            a_off: 0,
            a_batch: vec![],
            a_m: vec![k as i64],
            a_k: vec![1],
            a_checks: vec![],
            b_off: 0,
            b_batch: vec![],
            b_k: vec![n as i64],
            b_n: 1,
            c_batch: vec![],
            c_m: vec![n as i64],
            c_n: 1,
            bl: Blocking::for_features("+avx2,+avx512f", 48 << 10, 2 << 20),
            bsrc,
            b_bf16: false,
            int: None,
            row_unit: 0,
            run_m: None,
            run_n: None,
            run_k: None,
            dims_op: None,
        }
    }

    #[test]
    fn a_prepacked_b_is_one_k_slice_and_rows_fit_half_of_l2() {
        // 2048³ with weights: K is not cut, so a block's rows of A are 8 KiB each; 128 of
        // them fill half of a 2 MiB L2, 120 in whole 12-row tiles. 18 blocks of 114 rows,
        // rounded up to tiles.
        let p = product(2048, 2048, 2048, BSource::Prepacked);
        assert_eq!(p.slicing(), (1, 2048, 1));
        assert_eq!(p.l2_rows(), 120);
        assert_eq!((p.mc(), p.m_blocks()), (120, 18));
        // B packed at run time: 256-long K slices, 1 KiB of each row, MC stays 16 tiles
        // (11 blocks of 187 rows, rounded up).
        let p = product(2048, 2048, 2048, BSource::Pack);
        assert_eq!(p.slicing(), (1, 256, 8));
        assert_eq!((p.mc(), p.m_blocks()), (192, 11));
        // 49 rows of 18 KiB (a 3×3 convolution over 512 channels at 7×7) fit in 1 MiB: one
        // block, so that B (9 MiB) is read once.
        let p = product(49, 4608, 512, BSource::Prepacked);
        assert_eq!(p.l2_rows(), 192);
        assert_eq!(p.m_blocks(), 1);
    }
}
