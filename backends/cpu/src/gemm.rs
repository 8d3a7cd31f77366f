//! Register-blocked f32 matrix products.
//!
//! A kernel that is a plain matrix product, `C[b.., m, n] = fin(Σ_k A[b.., m, k]·B[b.., k, n])`
//! with affine operand views (any strides: transposed and broadcast operands included) and an
//! optional elementwise finalizer (a fused epilogue: bias, activation, residual…), gets a
//! schedule of its own instead of the generic loop nest ([`match_gemm`] decides; anything
//! else falls back to the generic path):
//!
//! * an `MR×NR` register tile (`NR` = two vectors of the target's width): `MR·NR/W`
//!   accumulators, one broadcast of A per row and `NR/W` vector loads of B per `k`,
//!   `llvm.fmuladd` (an FMA on targets that have one);
//! * blocking over K (`KC`), M (`MC`) and N (`NC`): a task of the parallel loop is one
//!   `MC×NC` block of C of one batch element; inside it, for each `KC` slice and each
//!   `NR`-wide column panel, the `KC×NR` panel of B is packed contiguously (zero padded past
//!   N) into a stack buffer and reused by every `MR`-row tile of the block; a constant B is
//!   packed once at compile time instead ([`prepack`], into the weight section);
//! * a product of at most `MR` rows (the batch-1 case) with B contiguous along N reads B in place
//!   (no packing) for the full-width panels;
//! * edge tiles: a micro-kernel for `M % MR` rows besides the `MR`-row one (a switch on the
//!   rows left; short
//!   tiles keep up to 4 accumulator sets over interleaved k to hide the FMA latency, which
//!   is what a GEMV needs), and columns past N go through a small stack tile so that nothing
//!   outside C is touched;
//! * the finalizer runs over each tile of C right after its last `KC` slice, while it is hot.
//!
//! Block sizes (the analytical BLIS model, for a 32 KiB L1d and at least 512 KiB of L2):
//! the `KC×NR` panel of B stays in half of L1 (`KC = 16 KiB / (NR·4)`: 256 at AVX2 width,
//! 128 at AVX-512), the `MC×KC` rows of A read for each panel stay in half of L2 (`MC` ≤
//! 256 KiB / (KC·4) = 256 rows at KC = 256; 96 is used so that a 512-row product still makes
//! several tasks), and `NC = 16·NR` columns per task.

use inkwell::intrinsics::Intrinsic;
use inkwell::types::VectorType;
use inkwell::values::{BasicValue, BasicValueEnum, FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

use kiln_ir::lir::{BufferKind, Combine, Expr, Instr, Kernel, Program, Scalar, View};
use kiln_ir::DType;
use kiln_ir::{Data, Tensor};

use crate::codegen::{llvm_err, Gen, R};
use crate::expr::Env;

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

/// Bytes of L1 data cache assumed by the blocking model.
const L1_BYTES: usize = 32 << 10;
/// M up to which a task takes every row (and narrower column blocks, for parallelism).
const SMALL_M: usize = 16;

impl Blocking {
    /// The blocking for a target's feature string (`+avx512f`: 16 lanes; `+avx`: 8; else 4).
    pub fn for_features(features: &str) -> Blocking {
        let has = |f: &str| features.split(',').any(|x| x == f);
        let w = if has("+avx512f") {
            16
        } else if has("+avx") {
            8
        } else {
            4
        };
        Blocking::for_width(w)
    }

    pub fn for_width(w: usize) -> Blocking {
        // Accumulators: MR·2 vectors (12 of AVX2's 16 registers, 16 of AVX-512's 32).
        let mr = if w >= 16 { 8 } else { 6 };
        let nr = 2 * w;
        let kc = (L1_BYTES / 2) / (nr * 4);
        Blocking { w, mr, nr, kc, mc: mr * 16, nc: nr * 16 }
    }
}

/// A matched matrix product: where its operands live, as affine functions of the domain.
#[derive(Clone, Debug)]
pub(crate) struct Gemm {
    /// Batch extents (the parallel dims before m and n).
    pub batch: Vec<usize>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: usize,
    pub b: usize,
    /// Element offsets and strides: per batch dim, then the named dims.
    pub a_off: i64,
    pub a_batch: Vec<i64>,
    pub a_m: i64,
    pub a_k: i64,
    pub b_off: i64,
    pub b_batch: Vec<i64>,
    pub b_k: i64,
    pub b_n: i64,
    pub c_batch: Vec<i64>,
    pub c_m: i64,
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
    /// its view, rows `NR` apart, zero padded past N.
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
        if self.m <= SMALL_M {
            self.m
        } else {
            self.bl.mc
        }
    }
    fn nc(&self) -> usize {
        // Small M: narrower column blocks, so that a GEMV still splits into several tasks.
        if self.m <= SMALL_M {
            self.bl.nr * 4
        } else {
            self.bl.nc
        }
    }
    /// Tasks of the parallel loop: batch × M blocks × N blocks.
    pub fn tasks(&self) -> usize {
        self.batch.iter().product::<usize>() * self.m_blocks() * self.n_blocks()
    }
}

/// The affine form `off + Σ coef[d]·var[d]` of a load through a view, when every index is a
/// variable or an i64 constant.
fn affine(k: &Kernel, operand: usize, index: &[Expr]) -> Option<(i64, Vec<i64>)> {
    let v = &k.inputs[operand];
    let mut off = v.offset;
    let mut coef = vec![0i64; k.domain.len()];
    for (ix, &s) in index.iter().zip(&v.strides) {
        match ix {
            Expr::Var(d) => coef[*d] += s,
            Expr::Const(Scalar::I64(c)) => off += c * s,
            _ => return None,
        }
    }
    Some((off, coef))
}

/// The index a prepacked B is loaded with: batch variables (stride 0), then
/// `[n / NR, k, n % NR]` over a `[⌈N/NR⌉, K, NR]` panel layout.
fn prepacked_index(nb: usize, nr: usize) -> Vec<Expr> {
    let (dn, dk) = (nb + 1, nb + 2);
    let mut ix: Vec<Expr> = (0..nb).map(Expr::Var).collect();
    ix.push(Expr::div(Expr::Var(dn), Expr::i64(nr as i64)));
    ix.push(Expr::Var(dk));
    ix.push(Expr::bin(kiln_ir::BinaryOp::Mod { fmod: false }, Expr::Var(dn), Expr::i64(nr as i64)));
    ix
}

/// A load of B in the compile-time panel layout ([`prepack`]) for this `NR`: its operand and
/// element offset.
fn prepacked_load(k: &Kernel, e: &Expr, nr: usize) -> Option<(usize, i64)> {
    let Expr::Load { operand, index, pad: None } = e else { return None };
    let v = &k.inputs[*operand];
    let nb = k.n_par - 2;
    let (n, kk) = (k.domain[nb + 1], k.domain[nb + 2]);
    let ok = v.dtype == DType::F32
        && *index == prepacked_index(nb, nr)
        && v.strides[..nb].iter().all(|&s| s == 0)
        && v.strides[nb..] == [(kk * nr) as i64, nr as i64, 1]
        && v.extents[nb..] == [n.div_ceil(nr), kk, nr];
    ok.then_some((*operand, v.offset))
}

/// Packs, at compile time, the constant B of every matrix product that would pack it at run
/// time: B becomes a constant in `NR`-wide panels (`[⌈N/NR⌉, K, NR]`, zero padded past N)
/// and the kernel loads it through that layout (still a valid compute definition, which
/// [`match_gemm`] recognizes). A constant used only there is replaced in place, so the
/// weight section holds one copy. Returns the number of kernels changed.
pub fn prepack(p: &mut Program, target: &crate::CpuTarget) -> usize {
    let bl = Blocking::for_features(&target.features);
    let nr = bl.nr;
    let mut changed = 0;
    for i in 0..p.instrs.len() {
        let Instr::Kernel(k) = &p.instrs[i] else { continue };
        let Some(gm) = match_gemm(k, bl) else { continue };
        if gm.bsrc != BSource::Pack || gm.b_batch.iter().any(|&s| s != 0) {
            continue;
        }
        let bid = k.inputs[gm.b].buffer;
        let BufferKind::Constant(t) = &p.buffer(bid).kind else { continue };
        if t.dtype() != DType::F32 {
            continue;
        }
        // The finalizer must not read B itself (its operand view is replaced).
        let mut fin_reads_b = false;
        if let Some(f) = k.reduction.as_ref().and_then(|r| r.finalize.as_ref()) {
            f.visit(&mut |e| fin_reads_b |= matches!(e, Expr::Load { operand, .. } if *operand == gm.b));
        }
        if fin_reads_b || k.inputs.iter().filter(|v| v.buffer == bid).count() != 1 {
            continue;
        }
        let src = t.to_f64_vec();
        let (n, kk) = (gm.n, gm.k);
        let np = n.div_ceil(nr);
        let mut packed = vec![0f32; np * kk * nr];
        for j in 0..n {
            for r in 0..kk {
                let at = gm.b_off + r as i64 * gm.b_k + j as i64 * gm.b_n;
                packed[(j / nr) * kk * nr + r * nr + j % nr] = src[at as usize] as f32;
            }
        }
        let bytes = packed.len() * 4;
        let tensor = Tensor::from_data(vec![np, kk, nr], Data::F32(packed));
        let uses = p.instrs.iter().filter(|ins| ins.reads_writes().0.contains(&bid)).count();
        let name = format!("{}.panels{nr}", p.buffer(bid).name);
        let new_id = if uses == 1 {
            let buf = &mut p.buffers[bid.0 as usize];
            buf.kind = BufferKind::Constant(tensor);
            buf.bytes = bytes;
            buf.name = name;
            bid
        } else {
            p.add_buffer(BufferKind::Constant(tensor), bytes, name)
        };
        let Instr::Kernel(k) = &mut p.instrs[i] else { unreachable!() };
        let nb = gm.batch.len();
        let mut extents = gm.batch.clone();
        extents.extend([np, kk, nr]);
        let mut strides = vec![0i64; nb];
        strides.extend([(kk * nr) as i64, nr as i64, 1]);
        k.inputs[gm.b] = View { buffer: new_id, dtype: DType::F32, offset: 0, extents, strides };
        let b_op = gm.b;
        k.body = std::mem::replace(&mut k.body, Expr::Acc).map(&mut |e| match e {
            Expr::Load { operand, .. } if operand == b_op => {
                Expr::Load { operand, index: prepacked_index(nb, nr), pad: None }
            }
            e => e,
        });
        changed += 1;
    }
    changed
}

/// Recognizes a plain f32 matrix product (see the module doc).
pub(crate) fn match_gemm(k: &Kernel, bl: Blocking) -> Option<Gemm> {
    let red = k.reduction.as_ref()?;
    if red.combine != Combine::Add || red.init != Scalar::F32(0.0) {
        return None;
    }
    let np = k.n_par;
    if np < 2 || k.domain.len() != np + 1 || k.output.dtype != DType::F32 {
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
    let load = |e: &Expr| match e {
        Expr::Load { operand, index, pad: None } if k.inputs[*operand].dtype == DType::F32 => {
            affine(k, *operand, index).map(|(o, c)| (*operand, o, c))
        }
        _ => None,
    };
    let (dm, dn, dk) = (np - 2, np - 1, np);
    let (m, n, kk) = (k.domain[dm], k.domain[dn], k.domain[dk]);
    if m == 0 || n == 0 || kk == 0 {
        return None;
    }
    // B packed at compile time: the A operand is the other load.
    for (pa, pb) in [(x, y), (y, x)] {
        let Some((b_op, b_off)) = prepacked_load(k, pb, bl.nr) else { continue };
        let ga = load(pa)?;
        if ga.2[dn] != 0 {
            return None;
        }
        return Some(Gemm {
            batch: k.domain[..dm].to_vec(),
            m,
            n,
            k: kk,
            a: ga.0,
            b: b_op,
            a_off: ga.1,
            a_batch: ga.2[..dm].to_vec(),
            a_m: ga.2[dm],
            a_k: ga.2[dk],
            b_off,
            b_batch: vec![0; dm],
            // Panel j0/NR starts at j0·K; rows are NR apart.
            b_k: bl.nr as i64,
            b_n: kk as i64,
            c_batch: k.output.strides[..dm].to_vec(),
            c_m: k.output.strides[dm],
            c_n: k.output.strides[dn],
            bl,
            bsrc: BSource::Prepacked,
        });
    }
    let (lx, ly) = (load(x)?, load(y)?);
    let (ga, gb) = if lx.2[dn] == 0 && ly.2[dm] == 0 {
        (lx, ly)
    } else if ly.2[dn] == 0 && lx.2[dm] == 0 {
        (ly, lx)
    } else {
        return None;
    };
    let batch = k.domain[..dm].to_vec();
    // In place only for a single row tile: with several, the panel is reused and packing it
    // (contiguous, no L1 set conflicts from the row stride of B) pays.
    let bsrc = if m <= bl.mr && gb.2[dn] == 1 { BSource::InPlace } else { BSource::Pack };
    Some(Gemm {
        batch,
        m,
        n,
        k: kk,
        a: ga.0,
        b: gb.0,
        a_off: ga.1,
        a_batch: ga.2[..dm].to_vec(),
        a_m: ga.2[dm],
        a_k: ga.2[dk],
        b_off: gb.1,
        b_batch: gb.2[..dm].to_vec(),
        b_k: gb.2[dk],
        b_n: gb.2[dn],
        c_batch: k.output.strides[..dm].to_vec(),
        c_m: k.output.strides[dm],
        c_n: k.output.strides[dn],
        bl,
        bsrc,
    })
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

fn vload<'ctx>(g: &Gen<'ctx>, vt: VectorType<'ctx>, p: PointerValue<'ctx>) -> R<VectorValue<'ctx>> {
    let v = g.b.build_load(vt, p, "bv").map_err(llvm_err)?;
    v.as_instruction_value().expect("a load").set_alignment(4).map_err(llvm_err)?;
    Ok(v.into_vector_value())
}

fn vstore<'ctx>(g: &Gen<'ctx>, p: PointerValue<'ctx>, v: VectorValue<'ctx>) -> R<()> {
    g.b.build_store(p, v).map_err(llvm_err)?.set_alignment(4).map_err(llvm_err)?;
    Ok(())
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

/// Emits the kernel function `void name(const Context*, i64 start, i64 end)` running tasks
/// `start..end` of the blocked product.
pub(crate) fn gen_gemm<'ctx>(
    g: &Gen<'ctx>,
    k: &Kernel,
    p: &Gemm,
    f: FunctionValue<'ctx>,
    in_bases: &[PointerValue<'ctx>],
    out_base: PointerValue<'ctx>,
) -> R<()> {
    let cx = g.cx;
    let bl = p.bl;
    let (w, mr, nr) = (bl.w, bl.mr, bl.nr);
    let nq = nr / w;
    let f32t = cx.f32_type();
    let vt = f32t.vec_type(w as u32);
    let start = f.get_nth_param(1).unwrap().into_int_value();
    let end = f.get_nth_param(2).unwrap().into_int_value();
    // Stack buffers and accumulators (entry block, so that they become registers).
    let panel = g.b.build_alloca(f32t.array_type((bl.kc * nr) as u32), "panel").map_err(llvm_err)?;
    panel.as_instruction_value().expect("alloca").set_alignment(64).map_err(llvm_err)?;
    let ctile = g.b.build_alloca(f32t.array_type((mr * nr) as u32), "ctile").map_err(llvm_err)?;
    ctile.as_instruction_value().expect("alloca").set_alignment(64).map_err(llvm_err)?;
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
    let n_kb = p.k.div_ceil(bl.kc) as i64;
    let has_fin = k.reduction.as_ref().and_then(|r| r.finalize.as_ref());

    g.for_range(f, start, end, &mut |t| {
        let b = &g.b;
        let nbk = b.build_int_signed_rem(t, g.i64(nb), "nbk").map_err(llvm_err)?;
        let rest = b.build_int_signed_div(t, g.i64(nb), "r").map_err(llvm_err)?;
        let mbk = b.build_int_signed_rem(rest, g.i64(mb), "mbk").map_err(llvm_err)?;
        let mut bl_ix = b.build_int_signed_div(rest, g.i64(mb), "bl").map_err(llvm_err)?;
        // Batch variables, innermost last.
        let mut bvars = vec![g.i64(0); p.batch.len()];
        for d in (0..p.batch.len()).rev() {
            if d == 0 {
                bvars[d] = bl_ix;
            } else {
                let e = g.i64(p.batch[d] as i64);
                bvars[d] = b.build_int_signed_rem(bl_ix, e, "bv").map_err(llvm_err)?;
                bl_ix = b.build_int_signed_div(bl_ix, e, "bq").map_err(llvm_err)?;
            }
        }
        let (mut a0, mut b0, mut c0) = (g.i64(p.a_off), g.i64(p.b_off), g.i64(k.output.offset));
        for (d, &v) in bvars.iter().enumerate() {
            a0 = add(g, a0, mul(g, v, p.a_batch[d])?)?;
            b0 = add(g, b0, mul(g, v, p.b_batch[d])?)?;
            c0 = add(g, c0, mul(g, v, p.c_batch[d])?)?;
        }
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

        g.for_range(f, g.i64(0), g.i64(n_kb), &mut |kb| {
            let kc0 = mul(g, kb, bl.kc as i64)?;
            let kcn = min(g, g.i64(bl.kc as i64), sub(g, g.i64(p.k as i64), kc0)?)?;
            let first = g.b.build_int_compare(IntPredicate::EQ, kb, g.i64(0), "first").map_err(llvm_err)?;
            let last = g.b.build_int_compare(IntPredicate::EQ, kb, g.i64(n_kb - 1), "last").map_err(llvm_err)?;
            let a_k0 = add(g, a0, mul(g, kc0, p.a_k)?)?;
            g.for_range(f, g.i64(0), n_jt, &mut |jt| {
                let j0 = add(g, j_lo, mul(g, jt, nr as i64)?)?;
                let jn = min(g, g.i64(nr as i64), sub(g, j_hi, j0)?)?;
                let jfull = g.b.build_int_compare(IntPredicate::EQ, jn, g.i64(nr as i64), "jfull").map_err(llvm_err)?;
                // B panel origin: &B[kc0, j0].
                let b_at = add(g, add(g, b0, mul(g, kc0, p.b_k)?)?, mul(g, j0, p.b_n)?)?;
                let pack = |g: &Gen<'ctx>| -> R<()> {
                    g.for_range(f, g.i64(0), kcn, &mut |kk| {
                        let src = add(g, b_at, mul(g, kk, p.b_k)?)?;
                        let dst = mul(g, kk, nr as i64)?;
                        g.for_range(f, g.i64(0), jn, &mut |jj| {
                            let v = g.load_elem(b_base, DType::F32, add(g, src, mul(g, jj, p.b_n)?)?)?;
                            g.store_elem(panel, DType::F32, add(g, dst, jj)?, v)
                        })?;
                        g.for_range(f, jn, g.i64(nr as i64), &mut |jj| {
                            g.store_elem(panel, DType::F32, add(g, dst, jj)?, f32t.const_zero().into())
                        })
                    })
                };
                let (bptr, bstride) = if p.bsrc == BSource::Prepacked {
                    (f32_ptr(g, b_base, b_at)?, g.i64(nr as i64))
                } else if p.bsrc == BSource::InPlace {
                    // Full-width panels are read in place; the last, narrower one is packed.
                    let narrow = g.b.build_not(jfull, "narrow").map_err(llvm_err)?;
                    when(g, f, narrow, &mut || pack(g))?;
                    let direct_ptr = f32_ptr(g, b_base, b_at)?;
                    let bp = g.b.build_select(jfull, direct_ptr, panel, "bp").map_err(llvm_err)?.into_pointer_value();
                    let bs =
                        g.b.build_select(jfull, g.i64(p.b_k), g.i64(nr as i64), "bs")
                            .map_err(llvm_err)?
                            .into_int_value();
                    (bp, bs)
                } else {
                    pack(g)?;
                    (panel, g.i64(nr as i64))
                };
                let c_full = if p.c_n == 1 { jfull } else { cx.bool_type().const_zero() };
                g.for_range(f, g.i64(0), n_it, &mut |it| {
                    let i0 = add(g, i_lo, mul(g, it, mr as i64)?)?;
                    let rows = min(g, g.i64(mr as i64), sub(g, i_hi, i0)?)?;
                    let c_at = add(g, add(g, c0, mul(g, i0, p.c_m)?)?, mul(g, j0, p.c_n)?)?;
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
                                vt,
                                zero,
                                accs: &accs,
                                ctile,
                                fmuladd,
                                a_base,
                                a_rows: a_k0,
                                i0,
                                kcn,
                                bptr,
                                bstride,
                                out_base,
                                c_at,
                                jn,
                                c_full,
                                first,
                            },
                            &splat,
                        )?;
                        g.b.build_unconditional_branch(merge).map_err(llvm_err)?;
                    }
                    g.b.position_at_end(merge);
                    if let Some(fin) = has_fin {
                        when(g, f, last, &mut || {
                            g.for_range(f, g.i64(0), rows, &mut |i| {
                                let row = add(g, i0, i)?;
                                g.for_range(f, g.i64(0), jn, &mut |j| {
                                    let col = add(g, j0, j)?;
                                    let mut vs = bvars.clone();
                                    vs.extend([row, col, g.i64(0)]);
                                    let at = add(g, add(g, c_at, mul(g, i, p.c_m)?)?, mul(g, j, p.c_n)?)?;
                                    let cur = g.load_elem(out_base, DType::F32, at)?;
                                    let v = env.gen(g, fin, &vs, Some(cur))?;
                                    g.store_elem(out_base, DType::F32, at, v)
                                })
                            })
                        })?;
                    }
                    Ok(())
                })
            })
        })
    })?;
    Ok(())
}

struct Tile<'a, 'ctx> {
    vt: VectorType<'ctx>,
    zero: VectorValue<'ctx>,
    accs: &'a [PointerValue<'ctx>],
    ctile: PointerValue<'ctx>,
    fmuladd: FunctionValue<'ctx>,
    a_base: PointerValue<'ctx>,
    /// Element index of A[batch, 0, kc0] (rows are added here).
    a_rows: IntValue<'ctx>,
    i0: IntValue<'ctx>,
    kcn: IntValue<'ctx>,
    bptr: PointerValue<'ctx>,
    bstride: IntValue<'ctx>,
    out_base: PointerValue<'ctx>,
    c_at: IntValue<'ctx>,
    jn: IntValue<'ctx>,
    /// The tile is NR wide in C and C is contiguous along N: vector loads/stores of C.
    c_full: IntValue<'ctx>,
    first: IntValue<'ctx>,
}

/// One `r×NR` tile: C[i0.., j0..] (+)= A[i0.., kc0..kc0+kcn] · panel.
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
    let c_row = |i: usize| add(g, t.c_at, g.i64(i as i64 * p.c_m));
    // Initial accumulators: zero on the first K slice, else the partial sums in C.
    for i in 0..r {
        for q in 0..nq {
            g.b.build_store(acc(i, q), t.zero).map_err(llvm_err)?;
        }
    }
    let not_first = g.b.build_not(t.first, "nf").map_err(llvm_err)?;
    let full_reload = g.b.build_and(not_first, t.c_full, "fr").map_err(llvm_err)?;
    when(g, f, full_reload, &mut || {
        for i in 0..r {
            for q in 0..nq {
                let pc = f32_ptr(g, t.out_base, add(g, c_row(i)?, g.i64((q * w) as i64))?)?;
                g.b.build_store(acc(i, q), vload(g, t.vt, pc)?).map_err(llvm_err)?;
            }
        }
        Ok(())
    })?;
    let not_full = g.b.build_not(t.c_full, "nfull").map_err(llvm_err)?;
    let edge_reload = g.b.build_and(not_first, not_full, "er").map_err(llvm_err)?;
    when(g, f, edge_reload, &mut || {
        for i in 0..r {
            for q in 0..nq {
                vstore(g, f32_ptr(g, t.ctile, g.i64((i * nr + q * w) as i64))?, t.zero)?;
            }
            let ci = c_row(i)?;
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
    // A row starts for this tile.
    let a_row: Vec<IntValue> =
        (0..r).map(|i| add(g, t.a_rows, mul(g, add(g, t.i0, g.i64(i as i64))?, p.a_m)?)).collect::<R<_>>()?;
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
    let step = |kk: IntValue<'ctx>, s: usize| -> R<()> {
        let boff = g.b.build_int_nsw_mul(kk, t.bstride, "bo").map_err(llvm_err)?;
        let bv: Vec<VectorValue> = (0..nq)
            .map(|q| vload(g, t.vt, f32_ptr(g, t.bptr, add(g, boff, g.i64((q * w) as i64))?)?))
            .collect::<R<_>>()?;
        let ak = mul(g, kk, p.a_k)?;
        for (i, &ar) in a_row.iter().enumerate() {
            let a = g.load_elem(t.a_base, DType::F32, add(g, ar, ak)?)?;
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
    let whole = g.b.build_int_signed_div(t.kcn, g.i64(sets as i64), "kq").map_err(llvm_err)?;
    g.for_range(f, g.i64(0), whole, &mut |kq| {
        let k0 = mul(g, kq, sets as i64)?;
        for s in 0..sets {
            step(add(g, k0, g.i64(s as i64))?, s)?;
        }
        Ok(())
    })?;
    g.for_range(f, mul(g, whole, sets as i64)?, t.kcn, &mut |kk| step(kk, 0))?;
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
    for i in 0..r {
        for q in 0..nq {
            let v = g.b.build_load(t.vt, acc(i, q), "a").map_err(llvm_err)?.into_vector_value();
            vstore(g, f32_ptr(g, t.out_base, add(g, c_row(i)?, g.i64((q * w) as i64))?)?, v)?;
        }
    }
    g.b.build_unconditional_branch(full.2).map_err(llvm_err)?;
    g.b.position_at_end(full.1);
    for i in 0..r {
        for q in 0..nq {
            let v = g.b.build_load(t.vt, acc(i, q), "a").map_err(llvm_err)?.into_vector_value();
            vstore(g, f32_ptr(g, t.ctile, g.i64((i * nr + q * w) as i64))?, v)?;
        }
        let ci = c_row(i)?;
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
    fn blocking_follows_the_vector_width() {
        let avx512 = Blocking::for_features("+sse2,+avx,+avx2,+fma,+avx512f");
        assert_eq!((avx512.w, avx512.mr, avx512.nr, avx512.kc), (16, 8, 32, 128));
        let avx2 = Blocking::for_features("+sse2,+avx,+avx2,+fma,-avx512f");
        assert_eq!((avx2.w, avx2.mr, avx2.nr, avx2.kc), (8, 6, 16, 256));
        let neon = Blocking::for_features("+neon");
        assert_eq!((neon.w, neon.mr, neon.nr, neon.kc), (4, 6, 8, 512));
    }
}
