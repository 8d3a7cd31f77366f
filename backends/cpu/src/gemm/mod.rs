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
//! * a product of at most `MR` rows (the batch-1 case) with B contiguous along N and one K
//!   dim reads B in place (no packing) for the full-width panels;
//! * edge tiles: a micro-kernel for `M % MR` rows besides the `MR`-row one (a switch on the
//!   rows left; short tiles keep up to 4 accumulator sets over interleaved k to hide the FMA
//!   latency, which is what a GEMV needs), and columns past N go through a small stack tile
//!   so that nothing outside C is touched;
//! * the finalizer runs on the accumulator vectors of a full tile after its last K slice,
//!   before the store, when it is float arithmetic, ReLU/Clip and loads along N or broadcast
//!   ([`crate::vector::vgen`]); otherwise (and on edge tiles) over the tile of C right after the store.
//!
//! Block sizes (the analytical BLIS model): the `KC×NR` panel of B takes two thirds of the
//! target's L1 data cache (`KC` = 256 at AVX-512 with a 48 KiB L1), the tile's rows of A the
//! rest; `MC = 16·MR`, `NC = 16·NR`, narrowed (N first) until a product has 16 tasks for the
//! threads to share, then evened out so that no block is a sliver.

use inkwell::intrinsics::Intrinsic;
use inkwell::types::VectorType;
use inkwell::values::{BasicValue, BasicValueEnum, FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

use kiln_ir::lir::{BufferKind, Combine, Expr, Instr, Kernel, Program, Scalar, View};
use kiln_ir::DType;
use kiln_ir::Tensor;

use crate::codegen::{llvm_err, Gen, R};
use crate::expr::Env;
use crate::vector::{vload, vstore};

mod prepack;

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

impl Blocking {
    /// The blocking for a target: its vector width from the features (`+avx512f`: 16 lanes;
    /// `+avx`: 8; else 4) and its L1 data cache.
    pub fn for_target(t: &crate::CpuTarget) -> Blocking {
        Blocking::for_features(&t.features, t.l1d_bytes)
    }

    pub fn for_features(features: &str, l1d: usize) -> Blocking {
        let has = |f: &str| features.split(',').any(|x| x == f);
        let w = if has("+avx512f") {
            16
        } else if has("+avx") {
            8
        } else {
            4
        };
        Blocking::for_width(w, l1d)
    }

    pub fn for_width(w: usize, l1d: usize) -> Blocking {
        // Accumulators: MR·2 vectors (24 of AVX-512's 32 registers, 12 of AVX2's 16).
        let mr = if w >= 16 { 12 } else { 6 };
        let nr = 2 * w;
        // The B panel takes two thirds of L1, the rest holds the tile's rows of A.
        let kc = ((l1d * 2 / 3) / (nr * 4) / 16 * 16).max(64);
        Blocking { w, mr, nr, kc, mc: mr * 16, nc: nr * 16 }
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
        // Small M: every row, and narrower column blocks, so that a GEMV splits too.
        let (mut mc, mut nc) = if self.m <= SMALL_M { (self.m, nr * 4) } else { (self.bl.mc, self.bl.nc) };
        let batch: usize = self.batch.iter().product();
        let tasks = |mc: usize, nc: usize| batch * self.m.div_ceil(mc) * self.n.div_ceil(nc);
        // Multiply-adds per task at these blocks (a task smaller than MIN_TASK_WORK costs more
        // in repacking and scheduling than sharing it gains).
        let work = |mc: usize, nc: usize| batch * self.m * self.n * self.k / tasks(mc, nc);
        while tasks(mc, nc) < MIN_TASKS && work(mc, nc) >= 2 * MIN_TASK_WORK {
            if nc > nr && self.n > nr {
                nc = (nc / 2).div_ceil(nr) * nr;
            } else if mc > mr && self.m > SMALL_M {
                mc = (mc / 2).div_ceil(mr) * mr;
            } else {
                break;
            }
        }
        // Even blocks (a 196-row product is 108 + 88 rows, not 192 + 4), so that tasks, and
        // the threads that run them, get equal work.
        if self.m > SMALL_M {
            mc = self.m.div_ceil(self.m.div_ceil(mc)).div_ceil(mr) * mr;
        }
        nc = self.n.div_ceil(self.n.div_ceil(nc)).div_ceil(nr) * nr;
        (mc, nc)
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
    /// Extent of the innermost K dim (the one the micro-kernel steps through).
    fn k_in(&self) -> usize {
        *self.k_dims.last().expect("at least one K dim")
    }
    /// Taps: combinations of the outer K dims.
    fn taps(&self) -> usize {
        self.k / self.k_in()
    }
    /// How K is cut into slices, each accumulated into C once: `(taps per slice, K_in block,
    /// K_in blocks)`. A long innermost dim is cut into `KC` blocks, one tap per slice; a
    /// short one (a convolution over few channels) takes several whole taps per slice.
    fn slicing(&self) -> (usize, usize, usize) {
        let (kc, k_in) = (self.bl.kc, self.k_in());
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

/// A load through an operand view as an affine element address plus bounds checks:
/// `(operand, offset, coef per domain dim, checks)`. Without `pad` there are no checks (the
/// load is in bounds by construction); with it, a zero pad is required (what the
/// micro-kernel substitutes) and each index that can leave its extent becomes a [`Check`].
fn affine_load(k: &Kernel, e: &Expr) -> Option<(usize, i64, Vec<i64>, Vec<Check>)> {
    let Expr::Load { operand, index, pad } = e else { return None };
    let v = &k.inputs[*operand];
    if v.dtype != DType::F32 || !matches!(pad, None | Some(Scalar::F32(0.0))) {
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
            // The range of the index over the whole domain.
            let (mut lo, mut hi) = (c, c);
            for (d, &fd) in f.iter().enumerate() {
                let span = fd * (k.domain[d] as i64 - 1);
                if span < 0 {
                    lo += span;
                } else {
                    hi += span;
                }
            }
            if lo < 0 || hi >= v.extents[p] as i64 {
                checks.push(Check { c, coef: f, ext: v.extents[p] as i64 });
            }
        }
    }
    Some((*operand, off, coef, checks))
}

/// Recognizes a plain f32 matrix product (see the module doc).
pub(crate) fn match_gemm(k: &Kernel, bl: Blocking) -> Option<Gemm> {
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
    // Few rows (a batch-1 product, a small image): 8-row tiles waste less than 12-row ones
    // (16 rows are two full tiles rather than 12 + 4).
    if g.bl.mr > 8 && g.m <= 32 {
        g.bl = Blocking { mr: 8, mc: 8 * 16, ..g.bl };
    }
    Some(g)
}

fn match_gemm_with(k: &Kernel, bl: Blocking) -> Option<Gemm> {
    let red = k.reduction.as_ref()?;
    if red.combine != Combine::Add || red.init != Scalar::F32(0.0) {
        return None;
    }
    let np = k.n_par;
    if np < 2 || k.domain.len() <= np || k.output.dtype != DType::F32 {
        return None;
    }
    let ops: Vec<DType> = k.inputs.iter().map(|v| v.dtype).collect();
    if k.body.dtype(&ops, None) != DType::F32 {
        return None;
    }
    if let Some(f) = &red.finalize {
        if f.dtype(&ops, Some(DType::F32)) != DType::F32 {
            return None;
        }
        // The finalizer may read only at the parallel indices.
        let mut ok = true;
        f.visit(&mut |e| ok &= !matches!(e, Expr::Var(d) if *d >= np));
        if !ok {
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
        })
    };
    // B packed at compile time: the A operand is the other load.
    for (pa, pb) in [(x, y), (y, x)] {
        let Some((b_op, b_off)) = prepacked_load(k, pb, bl.nr) else { continue };
        let ga = affine_load(k, pa)?;
        if !a_ok(&ga) {
            return None;
        }
        // Panel j0/NR starts at j0·K; flat K rows are NR apart; a batch of B (the 16
        // products of a Winograd convolution) has a block of panels per element.
        let mut b_coef = vec![0i64; nd];
        b_coef[..dn].copy_from_slice(&k.inputs[b_op].strides[..dn]);
        b_coef[dn] = kk as i64;
        let mut flat = bl.nr as i64;
        for d in (np..nd).rev() {
            b_coef[d] = flat;
            flat *= k.domain[d] as i64;
        }
        return build(ga, b_op, b_off, b_coef, BSource::Prepacked);
    }
    let (lx, ly) = (affine_load(k, x)?, affine_load(k, y)?);
    for (ga, gb) in [(lx.clone(), ly.clone()), (ly, lx)] {
        if !a_ok(&ga) || !gb.3.is_empty() {
            continue;
        }
        let ms = m_start(&gb.2);
        let m: usize = k.domain[ms..dn].iter().product();
        // In place only for a single row tile: with several, the panel is reused and packing
        // it (contiguous, no L1 set conflicts from the row stride of B) pays.
        let bsrc = if m <= bl.mr && gb.2[dn] == 1 && k_dims.len() == 1 { BSource::InPlace } else { BSource::Pack };
        if let Some(g) = build(ga, gb.0, gb.1, gb.2, bsrc) {
            return Some(g);
        }
    }
    None
}

fn min<'ctx>(g: &Gen<'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
    let lt = g.b.build_int_compare(IntPredicate::SLT, a, b, "lt").map_err(llvm_err)?;
    Ok(g.b.build_select(lt, a, b, "min").map_err(llvm_err)?.into_int_value())
}

fn add<'ctx>(g: &Gen<'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
    g.b.build_int_nsw_add(a, b, "add").map_err(llvm_err)
}

fn mul<'ctx>(g: &Gen<'ctx>, a: IntValue<'ctx>, c: i64) -> R<IntValue<'ctx>> {
    match c {
        0 => Ok(g.i64(0)),
        1 => Ok(a),
        c => g.b.build_int_nsw_mul(a, g.i64(c), "mul").map_err(llvm_err),
    }
}

fn sub<'ctx>(g: &Gen<'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
    g.b.build_int_nsw_sub(a, b, "sub").map_err(llvm_err)
}

fn f32_ptr<'ctx>(g: &Gen<'ctx>, base: PointerValue<'ctx>, at: IntValue<'ctx>) -> R<PointerValue<'ctx>> {
    g.elem_ptr(base, DType::F32, at)
}

/// `if cond { then() }`, leaving the builder after it.
fn when<'ctx>(g: &Gen<'ctx>, f: FunctionValue<'ctx>, cond: IntValue<'ctx>, then: &mut dyn FnMut() -> R<()>) -> R<()> {
    let yes = g.cx.append_basic_block(f, "then");
    let done = g.cx.append_basic_block(f, "endif");
    g.b.build_conditional_branch(cond, yes, done).map_err(llvm_err)?;
    g.b.position_at_end(yes);
    then()?;
    g.b.build_unconditional_branch(done).map_err(llvm_err)?;
    g.b.position_at_end(done);
    Ok(())
}

/// `x` unravelled over `dims` (mixed radix, innermost last).
fn unravel<'ctx>(g: &Gen<'ctx>, x: IntValue<'ctx>, dims: &[usize]) -> R<Vec<IntValue<'ctx>>> {
    let mut out = vec![g.i64(0); dims.len()];
    let mut rest = x;
    for d in (0..dims.len()).rev() {
        if d == 0 {
            out[d] = rest;
        } else {
            let e = g.i64(dims[d] as i64);
            out[d] = g.b.build_int_signed_rem(rest, e, "ur").map_err(llvm_err)?;
            rest = g.b.build_int_signed_div(rest, e, "uq").map_err(llvm_err)?;
        }
    }
    Ok(out)
}

/// The M variables of rows `i0 .. i0 + r`: the first unravelled, each next one the previous
/// plus one with carries (a few selects instead of a division per M dim per row).
fn step_rows<'ctx>(g: &Gen<'ctx>, i0: IntValue<'ctx>, r: usize, dims: &[usize]) -> R<Vec<Vec<IntValue<'ctx>>>> {
    let mut rows = Vec::with_capacity(r);
    let mut cur = unravel(g, i0, dims)?;
    for i in 0..r {
        if i > 0 {
            cur = crate::codegen::increment(g, &cur, dims)?;
        }
        rows.push(cur.clone());
    }
    Ok(rows)
}

/// `Σ coef[i]·vars[i]`.
fn dot<'ctx>(g: &Gen<'ctx>, vars: &[IntValue<'ctx>], coef: &[i64]) -> R<IntValue<'ctx>> {
    let mut s = g.i64(0);
    for (&v, &c) in vars.iter().zip(coef) {
        if c != 0 {
            s = add(g, s, mul(g, v, c)?)?;
        }
    }
    Ok(s)
}

/// Emits the body of kernel function `f`, running tasks `start..end` of the blocked product.
pub(crate) fn gen_gemm<'ctx>(
    g: &Gen<'ctx>,
    k: &Kernel,
    p: &Gemm,
    f: FunctionValue<'ctx>,
    in_bases: &[PointerValue<'ctx>],
    out_base: PointerValue<'ctx>,
    (start, end): (IntValue<'ctx>, IntValue<'ctx>),
) -> R<()> {
    let cx = g.cx;
    let bl = p.bl;
    let (w, mr, nr) = (bl.w, bl.mr, bl.nr);
    let nq = nr / w;
    let f32t = cx.f32_type();
    let vt = f32t.vec_type(w as u32);
    // Stack buffers and accumulators (entry block, so that they become registers).
    let panel = g.b.build_alloca(f32t.array_type((bl.kc * nr) as u32), "panel").map_err(llvm_err)?;
    panel.as_instruction_value().expect("alloca").set_alignment(64).map_err(llvm_err)?;
    let ctile = g.b.build_alloca(f32t.array_type((mr * nr) as u32), "ctile").map_err(llvm_err)?;
    ctile.as_instruction_value().expect("alloca").set_alignment(64).map_err(llvm_err)?;
    // What a row of A outside the padded input reads: one zero, stride 0.
    // It reads a row of zeros as long as a K slice with A's own step when that row is short
    // (a channels-last input: step 1), so that every row of a tile shares one step; else
    // one zero with step 0.
    let zlen = p.zero_row();
    let zslot = g.b.build_alloca(f32t.array_type(zlen.max(1) as u32), "zero").map_err(llvm_err)?;
    zslot.as_instruction_value().expect("alloca").set_alignment(64).map_err(llvm_err)?;
    g.b.build_memset(zslot, 64, cx.i8_type().const_zero(), g.i64(zlen.max(1) as i64 * 4)).map_err(llvm_err)?;
    let accs: Vec<PointerValue> =
        (0..mr * nq).map(|_| g.b.build_alloca(vt, "acc")).collect::<Result<_, _>>().map_err(llvm_err)?;
    let fmuladd = Intrinsic::find("llvm.fmuladd")
        .and_then(|i| i.get_declaration(&g.m, &[vt.into()]))
        .ok_or_else(|| llvm_err("llvm.fmuladd"))?;
    let (a_base, b_base) = (in_bases[p.a], in_bases[p.b]);
    let env = Env { k, bases: in_bases };
    let zero = vt.const_zero();
    let splat = |x: BasicValueEnum<'ctx>| -> R<VectorValue<'ctx>> {
        let v = g.b.build_insert_element(vt.get_poison(), x, g.i64(0), "ins").map_err(llvm_err)?;
        let mask = cx.i32_type().vec_type(w as u32).const_zero();
        g.b.build_shuffle_vector(v, vt.get_poison(), mask, "splat").map_err(llvm_err)
    };

    let (mb, nb) = (p.m_blocks() as i64, p.n_blocks() as i64);
    let (mc, nc) = (p.mc() as i64, p.nc() as i64);
    let (tps, kcl, kblocks) = p.slicing();
    let (taps, k_in) = (p.taps(), p.k_in());
    let n_slices = (taps.div_ceil(tps) * kblocks) as i64;
    let nkd = p.k_dims.len();
    let a_kin = p.a_k[nkd - 1];
    let has_fin = k.reduction.as_ref().and_then(|r| r.finalize.as_ref());
    let vector_fin = has_fin.filter(|fin| p.c_n == 1 && crate::vector::vexpr_ok(k, fin));

    g.for_range(f, start, end, &mut |t| {
        let b = &g.b;
        let nbk = b.build_int_signed_rem(t, g.i64(nb), "nbk").map_err(llvm_err)?;
        let rest = b.build_int_signed_div(t, g.i64(nb), "r").map_err(llvm_err)?;
        let mbk = b.build_int_signed_rem(rest, g.i64(mb), "mbk").map_err(llvm_err)?;
        let bl_ix = b.build_int_signed_div(rest, g.i64(mb), "bl").map_err(llvm_err)?;
        // Batch variables, innermost last.
        let bvars = if p.batch.is_empty() { vec![] } else { unravel(g, bl_ix, &p.batch)? };
        let a0 = add(g, g.i64(p.a_off), dot(g, &bvars, &p.a_batch)?)?;
        let b0 = add(g, g.i64(p.b_off), dot(g, &bvars, &p.b_batch)?)?;
        let c0 = add(g, g.i64(k.output.offset), dot(g, &bvars, &p.c_batch)?)?;
        let i_lo = mul(g, mbk, mc)?;
        let i_hi = min(g, add(g, i_lo, g.i64(mc))?, g.i64(p.m as i64))?;
        let j_lo = mul(g, nbk, nc)?;
        let j_hi = min(g, add(g, j_lo, g.i64(nc))?, g.i64(p.n as i64))?;
        let n_it =
            g.b.build_int_signed_div(add(g, sub(g, i_hi, i_lo)?, g.i64(mr as i64 - 1))?, g.i64(mr as i64), "nit")
                .map_err(llvm_err)?;
        let n_jt =
            g.b.build_int_signed_div(add(g, sub(g, j_hi, j_lo)?, g.i64(nr as i64 - 1))?, g.i64(nr as i64), "njt")
                .map_err(llvm_err)?;

        g.for_range(f, g.i64(0), g.i64(n_slices), &mut |s| {
            let tg = g.b.build_int_signed_div(s, g.i64(kblocks as i64), "tg").map_err(llvm_err)?;
            let kb = g.b.build_int_signed_rem(s, g.i64(kblocks as i64), "kb").map_err(llvm_err)?;
            let tap_lo = mul(g, tg, tps as i64)?;
            let tap_hi = min(g, add(g, tap_lo, g.i64(tps as i64))?, g.i64(taps as i64))?;
            let ntap = sub(g, tap_hi, tap_lo)?;
            let kc0 = mul(g, kb, kcl as i64)?;
            let kcn = min(g, g.i64(kcl as i64), sub(g, g.i64(k_in as i64), kc0)?)?;
            let first = g.b.build_int_compare(IntPredicate::EQ, s, g.i64(0), "first").map_err(llvm_err)?;
            let last = g.b.build_int_compare(IntPredicate::EQ, s, g.i64(n_slices - 1), "last").map_err(llvm_err)?;
            let ar = ARows { a_base, zslot, bvars: &bvars, tap_lo, kc0, a_kin };
            // One NR-wide panel of B: where the micro-kernel reads it (packing it first if
            // needed), and which columns of C it covers.
            let panel_at = |jt: IntValue<'ctx>| -> R<Panel<'ctx>> {
                let j0 = add(g, j_lo, mul(g, jt, nr as i64)?)?;
                let jn = min(g, g.i64(nr as i64), sub(g, j_hi, j0)?)?;
                let jfull = g.b.build_int_compare(IntPredicate::EQ, jn, g.i64(nr as i64), "jfull").map_err(llvm_err)?;
                // &B[0, j0] of this batch element.
                let b_at = add(g, b0, mul(g, j0, p.b_n)?)?;
                // Panel rows: (tap − tap_lo)·kcn + kk.
                let pack = |g: &Gen<'ctx>| -> R<()> {
                    g.for_range(f, g.i64(0), ntap, &mut |tt| {
                        let tv = unravel(g, add(g, tap_lo, tt)?, &p.k_dims[..nkd - 1])?;
                        let b_tap =
                            add(g, add(g, b_at, dot(g, &tv, &p.b_k[..nkd - 1])?)?, mul(g, kc0, p.b_k[nkd - 1])?)?;
                        let row0 = g.b.build_int_nsw_mul(tt, kcn, "row0").map_err(llvm_err)?;
                        g.for_range(f, g.i64(0), kcn, &mut |kk| {
                            let src = add(g, b_tap, mul(g, kk, p.b_k[nkd - 1])?)?;
                            let dst = mul(g, add(g, row0, kk)?, nr as i64)?;
                            g.for_range(f, g.i64(0), jn, &mut |jj| {
                                let v = g.load_elem(b_base, DType::F32, add(g, src, mul(g, jj, p.b_n)?)?)?;
                                g.store_elem(panel, DType::F32, add(g, dst, jj)?, v)
                            })?;
                            g.for_range(f, jn, g.i64(nr as i64), &mut |jj| {
                                g.store_elem(panel, DType::F32, add(g, dst, jj)?, f32t.const_zero().into())
                            })
                        })
                    })
                };
                let (bptr, bstride) = if p.bsrc == BSource::Prepacked {
                    // Flat K row tap_lo·K_in + kc0 of panel j0/NR.
                    let row = add(g, mul(g, tap_lo, k_in as i64)?, kc0)?;
                    (f32_ptr(g, b_base, add(g, b_at, mul(g, row, nr as i64)?)?)?, g.i64(nr as i64))
                } else if p.bsrc == BSource::InPlace {
                    // One K dim. Full-width panels are read in place; the last, narrower one
                    // is packed.
                    let narrow = g.b.build_not(jfull, "narrow").map_err(llvm_err)?;
                    when(g, f, narrow, &mut || pack(g))?;
                    let direct_ptr = f32_ptr(g, b_base, add(g, b_at, mul(g, kc0, p.b_k[0])?)?)?;
                    let bp = g.b.build_select(jfull, direct_ptr, panel, "bp").map_err(llvm_err)?.into_pointer_value();
                    let bs =
                        g.b.build_select(jfull, g.i64(p.b_k[0]), g.i64(nr as i64), "bs")
                            .map_err(llvm_err)?
                            .into_int_value();
                    (bp, bs)
                } else {
                    pack(g)?;
                    (panel, g.i64(nr as i64))
                };
                let c_full = if p.c_n == 1 { jfull } else { cx.bool_type().const_zero() };
                Ok(Panel { j0, jn, bptr, bstride, c_full })
            };
            let tile_at = |it: IntValue<'ctx>, pn: &Panel<'ctx>| -> R<()> {
                let Panel { j0, jn, bptr, bstride, c_full } = *pn;
                let i0 = add(g, i_lo, mul(g, it, mr as i64)?)?;
                let rows = min(g, g.i64(mr as i64), sub(g, i_hi, i0)?)?;
                let merge = cx.append_basic_block(f, "tile_done");
                // Blocks are whole multiples of MR rows but the last: only MR and M % MR
                // rows occur, so only those micro-kernels are emitted.
                let heights: Vec<usize> = [mr, p.m % mr].into_iter().filter(|&r| r != 0 && r <= p.m).collect();
                let blocks: Vec<_> = heights.iter().map(|_| cx.append_basic_block(f, "tile")).collect();
                let cases: Vec<_> = heights.iter().zip(&blocks).map(|(&r, &bb)| (g.i64(r as i64), bb)).collect();
                g.b.build_switch(rows, merge, &cases).map_err(llvm_err)?;
                for (&r, &bb) in heights.iter().zip(&blocks) {
                    g.b.position_at_end(bb);
                    micro_tile(
                        g,
                        f,
                        p,
                        r,
                        &Tile {
                            ar,
                            vt,
                            zero,
                            accs: &accs,
                            ctile,
                            fmuladd,
                            a0,
                            i0,
                            ntap,
                            kcn,
                            bptr,
                            bstride,
                            out_base,
                            c0: add(g, c0, mul(g, j0, p.c_n)?)?,
                            jn,
                            c_full,
                            first,
                            vfin: vector_fin.map(|fin| VFin { k, fin, bases: in_bases, last, j0 }),
                        },
                        &splat,
                    )?;
                    g.b.build_unconditional_branch(merge).map_err(llvm_err)?;
                }
                g.b.position_at_end(merge);
                if let Some(fin) = has_fin {
                    // Full tiles took the finalizer in registers when it vectorizes.
                    let cond = match vector_fin {
                        Some(_) => {
                            let edge = g.b.build_not(c_full, "edge").map_err(llvm_err)?;
                            g.b.build_and(last, edge, "fin_here").map_err(llvm_err)?
                        }
                        None => last,
                    };
                    when(g, f, cond, &mut || {
                        g.for_range(f, g.i64(0), rows, &mut |i| {
                            let mv = unravel(g, add(g, i0, i)?, &p.m_dims)?;
                            let c_row = add(g, add(g, c0, dot(g, &mv, &p.c_m)?)?, mul(g, j0, p.c_n)?)?;
                            g.for_range(f, g.i64(0), jn, &mut |j| {
                                let col = add(g, j0, j)?;
                                let mut vs = bvars.clone();
                                vs.extend(mv.iter().copied());
                                vs.push(col);
                                vs.extend(std::iter::repeat_n(g.i64(0), p.n_kvars));
                                let at = add(g, c_row, mul(g, j, p.c_n)?)?;
                                let cur = g.load_elem(out_base, DType::F32, at)?;
                                let v = env.gen(g, fin, &vs, Some(cur))?;
                                g.store_elem(out_base, DType::F32, at, v)
                            })
                        })
                    })?;
                }
                Ok(())
            };
            // A panel of B (packed, or prepacked) is reused by every row tile of the block.
            // (Row tiles outermost, panels streaming past a tile of A held in L1, measured
            // the same or slower on this host.)
            g.for_range(f, g.i64(0), n_jt, &mut |jt| {
                let pn = panel_at(jt)?;
                g.for_range(f, g.i64(0), n_it, &mut |it| tile_at(it, &pn))
            })
        })
    })?;
    Ok(())
}

#[derive(Clone, Copy)]
struct Panel<'ctx> {
    j0: IntValue<'ctx>,
    jn: IntValue<'ctx>,
    bptr: PointerValue<'ctx>,
    bstride: IntValue<'ctx>,
    c_full: IntValue<'ctx>,
}

/// Where the rows of A of a slice are read from.
#[derive(Clone, Copy)]
struct ARows<'a, 'ctx> {
    a_base: PointerValue<'ctx>,
    /// The zero row that rows outside a padded input read.
    zslot: PointerValue<'ctx>,
    bvars: &'a [IntValue<'ctx>],
    tap_lo: IntValue<'ctx>,
    kc0: IntValue<'ctx>,
    a_kin: i64,
}

struct Tile<'a, 'ctx> {
    ar: ARows<'a, 'ctx>,
    vt: VectorType<'ctx>,
    zero: VectorValue<'ctx>,
    accs: &'a [PointerValue<'ctx>],
    ctile: PointerValue<'ctx>,
    fmuladd: FunctionValue<'ctx>,
    /// Element index of A at this batch element (rows, taps and K are added here).
    a0: IntValue<'ctx>,
    i0: IntValue<'ctx>,
    ntap: IntValue<'ctx>,
    kcn: IntValue<'ctx>,
    bptr: PointerValue<'ctx>,
    bstride: IntValue<'ctx>,
    out_base: PointerValue<'ctx>,
    /// Element index of C at this batch element and column `j0` (rows are added here).
    c0: IntValue<'ctx>,
    jn: IntValue<'ctx>,
    /// The tile is NR wide in C and C is contiguous along N: vector loads/stores of C.
    c_full: IntValue<'ctx>,
    first: IntValue<'ctx>,
    /// The finalizer, applied to full tiles in registers after the last slice ([`crate::vector::vgen`]).
    vfin: Option<VFin<'a, 'ctx>>,
}

#[derive(Clone, Copy)]
struct VFin<'a, 'ctx> {
    k: &'a Kernel,
    fin: &'a Expr,
    bases: &'a [PointerValue<'ctx>],
    last: IntValue<'ctx>,
    j0: IntValue<'ctx>,
}

/// Each row's A pointer and step along the inner K dim for tap `tap_lo + tt` of the slice
/// (a row outside the padded input reads the zero row).
fn a_row_ptrs<'ctx>(
    g: &Gen<'ctx>,
    p: &Gemm,
    t: &ARows<'_, 'ctx>,
    mvs: &[Vec<IntValue<'ctx>>],
    a_rows: &[IntValue<'ctx>],
    tt: IntValue<'ctx>,
) -> R<Vec<(PointerValue<'ctx>, IntValue<'ctx>)>> {
    let nkd = p.k_dims.len();
    let tv = unravel(g, add(g, t.tap_lo, tt)?, &p.k_dims[..nkd - 1])?;
    let a_tap = add(g, dot(g, &tv, &p.a_k[..nkd - 1])?, mul(g, t.kc0, t.a_kin)?)?;
    let mut rows = Vec::with_capacity(a_rows.len());
    for (i, &a_row) in a_rows.iter().enumerate() {
        let ptr = f32_ptr(g, t.a_base, add(g, a_row, a_tap)?)?;
        if p.a_checks.is_empty() {
            rows.push((ptr, g.i64(t.a_kin)));
            continue;
        }
        let mut all = g.cx.bool_type().const_all_ones();
        for c in &p.a_checks {
            let nb = t.bvars.len();
            let ms = nb + p.m_dims.len();
            let mut v = g.i64(c.c);
            v = add(g, v, dot(g, t.bvars, &c.coef[..nb])?)?;
            v = add(g, v, dot(g, &mvs[i], &c.coef[nb..ms])?)?;
            let ko = ms + 1;
            v = add(g, v, dot(g, &tv, &c.coef[ko..ko + nkd - 1])?)?;
            let ok = g.b.build_int_compare(IntPredicate::ULT, v, g.i64(c.ext), "inb").map_err(llvm_err)?;
            all = g.b.build_and(all, ok, "valid").map_err(llvm_err)?;
        }
        let ptr = g.b.build_select(all, ptr, t.zslot, "arow").map_err(llvm_err)?.into_pointer_value();
        let step = if p.zero_row() > 0 {
            g.i64(t.a_kin)
        } else {
            g.b.build_select(all, g.i64(t.a_kin), g.i64(0), "astep").map_err(llvm_err)?.into_int_value()
        };
        rows.push((ptr, step));
    }
    Ok(rows)
}

/// One `r×NR` tile: C[i0.., j0..] (+)= A[i0.., slice] · panel.
fn micro_tile<'ctx>(
    g: &Gen<'ctx>,
    f: FunctionValue<'ctx>,
    p: &Gemm,
    r: usize,
    t: &Tile<'_, 'ctx>,
    splat: &dyn Fn(BasicValueEnum<'ctx>) -> R<VectorValue<'ctx>>,
) -> R<()> {
    let (w, nr) = (p.bl.w, p.bl.nr);
    let nq = nr / w;
    let acc = |i: usize, q: usize| t.accs[i * nq + q];
    // The M variables of each row, and where the row starts in A and C.
    let mvs = step_rows(g, t.i0, r, &p.m_dims)?;
    let c_rows: Vec<IntValue> = mvs.iter().map(|mv| add(g, t.c0, dot(g, mv, &p.c_m)?)).collect::<R<_>>()?;
    let a_rows: Vec<IntValue> = mvs.iter().map(|mv| add(g, t.a0, dot(g, mv, &p.a_m)?)).collect::<R<_>>()?;
    // Initial accumulators: zero on the first K slice, else the partial sums in C.
    for i in 0..r {
        for q in 0..nq {
            g.b.build_store(acc(i, q), t.zero).map_err(llvm_err)?;
        }
    }
    let not_first = g.b.build_not(t.first, "nf").map_err(llvm_err)?;
    let full_reload = g.b.build_and(not_first, t.c_full, "fr").map_err(llvm_err)?;
    when(g, f, full_reload, &mut || {
        for (i, &ci) in c_rows.iter().enumerate() {
            for q in 0..nq {
                let pc = f32_ptr(g, t.out_base, add(g, ci, g.i64((q * w) as i64))?)?;
                g.b.build_store(acc(i, q), vload(g, t.vt, pc)?).map_err(llvm_err)?;
            }
        }
        Ok(())
    })?;
    let not_full = g.b.build_not(t.c_full, "nfull").map_err(llvm_err)?;
    let edge_reload = g.b.build_and(not_first, not_full, "er").map_err(llvm_err)?;
    when(g, f, edge_reload, &mut || {
        for (i, &ci) in c_rows.iter().enumerate() {
            for q in 0..nq {
                vstore(g, f32_ptr(g, t.ctile, g.i64((i * nr + q * w) as i64))?, t.zero)?;
            }
            g.for_range(f, g.i64(0), t.jn, &mut |j| {
                let v = g.load_elem(t.out_base, DType::F32, add(g, ci, mul(g, j, p.c_n)?)?)?;
                g.store_elem(t.ctile, DType::F32, add(g, g.i64((i * nr) as i64), j)?, v)
            })?;
            for q in 0..nq {
                let v = vload(g, t.vt, f32_ptr(g, t.ctile, g.i64((i * nr + q * w) as i64))?)?;
                g.b.build_store(acc(i, q), v).map_err(llvm_err)?;
            }
        }
        Ok(())
    })?;
    // Short tiles (few rows: M = 1, edges) keep `sets` independent accumulator sets, over
    // interleaved k, so that the FMA latency is hidden without MR rows of work.
    let sets = (p.bl.mr / r).min(4);
    let acc_s = |s: usize, i: usize, q: usize| t.accs[(s * r + i) * nq + q];
    for s in 1..sets {
        for i in 0..r {
            for q in 0..nq {
                g.b.build_store(acc_s(s, i, q), t.zero).map_err(llvm_err)?;
            }
        }
    }
    // The K loop over `len` steps from panel row `row0`, A's rows given as (pointer, step).
    let k_loop = |rows: &[(PointerValue<'ctx>, IntValue<'ctx>)], row0: IntValue<'ctx>, len: IntValue<'ctx>| -> R<()> {
        let step = |kk: IntValue<'ctx>, s: usize| -> R<()> {
            let boff = g.b.build_int_nsw_mul(add(g, row0, kk)?, t.bstride, "bo").map_err(llvm_err)?;
            let bv: Vec<VectorValue> = (0..nq)
                .map(|q| vload(g, t.vt, f32_ptr(g, t.bptr, add(g, boff, g.i64((q * w) as i64))?)?))
                .collect::<R<_>>()?;
            for (i, &(ap, astep)) in rows.iter().enumerate() {
                let ak = g.b.build_int_nsw_mul(kk, astep, "ak").map_err(llvm_err)?;
                let a = g.load_elem(ap, DType::F32, ak)?;
                let av = splat(a)?;
                for (q, &bq) in bv.iter().enumerate() {
                    let cur = g.b.build_load(t.vt, acc_s(s, i, q), "a").map_err(llvm_err)?;
                    let nv =
                        g.b.build_call(t.fmuladd, &[av.into(), bq.into(), cur.into()], "fma")
                            .map_err(llvm_err)?
                            .try_as_basic_value()
                            .basic()
                            .ok_or_else(|| llvm_err("fmuladd returned void"))?;
                    g.b.build_store(acc_s(s, i, q), nv).map_err(llvm_err)?;
                }
            }
            Ok(())
        };
        // Full-height tiles: the loop unrolled by `UNROLL` (fewer loop instructions between the
        // FMAs); short tiles interleave accumulator sets instead.
        if sets == 1 {
            let u = UNROLL;
            let whole = g.b.build_int_signed_div(len, g.i64(u as i64), "ku").map_err(llvm_err)?;
            g.for_range(f, g.i64(0), whole, &mut |kq| {
                let k0 = mul(g, kq, u as i64)?;
                for s in 0..u {
                    step(add(g, k0, g.i64(s as i64))?, 0)?;
                }
                Ok(())
            })?;
            return g.for_range(f, mul(g, whole, u as i64)?, len, &mut |kk| step(kk, 0));
        }
        let whole = g.b.build_int_signed_div(len, g.i64(sets as i64), "kq").map_err(llvm_err)?;
        g.for_range(f, g.i64(0), whole, &mut |kq| {
            let k0 = mul(g, kq, sets as i64)?;
            for s in 0..sets {
                step(add(g, k0, g.i64(s as i64))?, s)?;
            }
            Ok(())
        })?;
        g.for_range(f, mul(g, whole, sets as i64)?, len, &mut |kk| step(kk, 0))
    };
    g.for_range(f, g.i64(0), t.ntap, &mut |tt| {
        let rows = a_row_ptrs(g, p, &t.ar, &mvs, &a_rows, tt)?;
        let row0 = g.b.build_int_nsw_mul(tt, t.kcn, "prow").map_err(llvm_err)?;
        k_loop(&rows, row0, t.kcn)
    })?;
    for s in 1..sets {
        for i in 0..r {
            for q in 0..nq {
                let x = g.b.build_load(t.vt, acc(i, q), "a").map_err(llvm_err)?.into_vector_value();
                let y = g.b.build_load(t.vt, acc_s(s, i, q), "b").map_err(llvm_err)?.into_vector_value();
                let sum = g.b.build_float_add(x, y, "sum").map_err(llvm_err)?;
                g.b.build_store(acc(i, q), sum).map_err(llvm_err)?;
            }
        }
    }
    // Store: straight into C for a full tile, through the stack tile at the N edge.
    let full = cx_blocks(g, f, t.c_full)?;
    g.b.position_at_end(full.0);
    if let Some(VFin { k, fin, bases, last, j0 }) = t.vfin {
        // The epilogue in registers, on the last slice.
        when(g, f, last, &mut || {
            for (i, mv) in mvs.iter().enumerate() {
                for q in 0..nq {
                    let mut vars = t.ar.bvars.to_vec();
                    vars.extend(mv.iter().copied());
                    vars.push(add(g, j0, g.i64((q * w) as i64))?);
                    vars.extend(std::iter::repeat_n(g.i64(0), p.n_kvars));
                    let a = g.b.build_load(t.vt, acc(i, q), "a").map_err(llvm_err)?.into_vector_value();
                    let y = crate::vector::vgen(g, k, bases, fin, &vars, Some(a), t.vt)?;
                    g.b.build_store(acc(i, q), y).map_err(llvm_err)?;
                }
            }
            Ok(())
        })?;
    }
    for (i, &ci) in c_rows.iter().enumerate() {
        for q in 0..nq {
            let v = g.b.build_load(t.vt, acc(i, q), "a").map_err(llvm_err)?.into_vector_value();
            vstore(g, f32_ptr(g, t.out_base, add(g, ci, g.i64((q * w) as i64))?)?, v)?;
        }
    }
    g.b.build_unconditional_branch(full.2).map_err(llvm_err)?;
    g.b.position_at_end(full.1);
    for (i, &ci) in c_rows.iter().enumerate() {
        for q in 0..nq {
            let v = g.b.build_load(t.vt, acc(i, q), "a").map_err(llvm_err)?.into_vector_value();
            vstore(g, f32_ptr(g, t.ctile, g.i64((i * nr + q * w) as i64))?, v)?;
        }
        g.for_range(f, g.i64(0), t.jn, &mut |j| {
            let v = g.load_elem(t.ctile, DType::F32, add(g, g.i64((i * nr) as i64), j)?)?;
            g.store_elem(t.out_base, DType::F32, add(g, ci, mul(g, j, p.c_n)?)?, v)
        })?;
    }
    g.b.build_unconditional_branch(full.2).map_err(llvm_err)?;
    g.b.position_at_end(full.2);
    Ok(())
}

/// `if cond {A} else {B}`: the (then, else, join) blocks, after branching on `cond`.
fn cx_blocks<'ctx>(
    g: &Gen<'ctx>,
    f: FunctionValue<'ctx>,
    cond: IntValue<'ctx>,
) -> R<(
    inkwell::basic_block::BasicBlock<'ctx>,
    inkwell::basic_block::BasicBlock<'ctx>,
    inkwell::basic_block::BasicBlock<'ctx>,
)> {
    let a = g.cx.append_basic_block(f, "full");
    let b = g.cx.append_basic_block(f, "edge");
    let j = g.cx.append_basic_block(f, "stored");
    g.b.build_conditional_branch(cond, a, b).map_err(llvm_err)?;
    Ok((a, b, j))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_follows_the_vector_width_and_l1() {
        let avx512 = Blocking::for_features("+sse2,+avx,+avx2,+fma,+avx512f", 48 << 10);
        assert_eq!((avx512.w, avx512.mr, avx512.nr, avx512.kc), (16, 12, 32, 256));
        let avx2 = Blocking::for_features("+sse2,+avx,+avx2,+fma,-avx512f", 32 << 10);
        assert_eq!((avx2.w, avx2.mr, avx2.nr, avx2.kc), (8, 6, 16, 336));
        let neon = Blocking::for_features("+neon", 64 << 10);
        assert_eq!((neon.w, neon.mr, neon.nr, neon.kc), (4, 6, 8, 1360));
    }
}
