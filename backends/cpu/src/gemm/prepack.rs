//! Constant B operands packed at compile time into the micro-kernel's panel layout.

use super::*;

/// The index a prepacked B is loaded with: batch variables (stride 0), then
/// `[n / NR, kflat, n % NR]` over a `[⌈N/NR⌉, K, NR]` panel layout, `kflat` the K dims
/// flattened in domain order.
pub(super) fn prepacked_index(nb: usize, k_dims: &[usize], nr: usize) -> Vec<Expr> {
    let dn = nb;
    let mut ix: Vec<Expr> = (0..nb).map(Expr::Var).collect();
    ix.push(Expr::div(Expr::Var(dn), Expr::i64(nr as i64)));
    let mut flat: Option<Expr> = None;
    for (i, &e) in k_dims.iter().enumerate() {
        let v = Expr::Var(dn + 1 + i);
        flat = Some(match flat {
            None => v,
            Some(f) => Expr::add(Expr::mul(f, Expr::i64(e as i64)), v),
        });
    }
    ix.push(flat.expect("at least one K dim"));
    ix.push(Expr::bin(kiln_ir::BinaryOp::Mod { fmod: false }, Expr::Var(dn), Expr::i64(nr as i64)));
    ix
}

/// A load of B in the compile-time panel layout ([`prepack`]) for this `NR`: its operand and
/// element offset. Panels of bf16 weights are loaded through a cast to f32.
pub(super) fn prepacked_load(k: &Kernel, e: &Expr, nr: usize) -> Option<(usize, i64)> {
    let (e, bf16) = match e {
        Expr::Cast(DType::F32, _, _, inner) => (&**inner, true),
        e => (e, false),
    };
    let Expr::Load { operand, index, pad: None } = e else { return None };
    let v = &k.inputs[*operand];
    if v.dtype != if bf16 { DType::BF16 } else { DType::F32 } {
        return None;
    }
    let dn = k.n_par - 1;
    let n = k.domain[dn];
    let k_dims = &k.domain[k.n_par..];
    let kk: usize = k_dims.iter().product();
    if index.len() != dn + 3 {
        return None;
    }
    let ok = *index == prepacked_index(dn, k_dims, nr)
        && v.strides[dn..] == [(kk * nr) as i64, nr as i64, 1]
        && v.extents[dn..] == [n.div_ceil(nr), kk, nr];
    ok.then_some((*operand, v.offset))
}

/// The index an integer product's prepacked B is loaded with: batch variables (stride 0),
/// then `[n / NR, kflat / 2, n % NR, kflat % 2]` over a `[⌈N/NR⌉, ⌈K/2⌉, NR, 2]` layout of
/// i16 (`kflat` the K dims flattened in domain order): each panel row a pair of K rows,
/// interleaved per column.
pub(super) fn prepacked_int_index(nb: usize, k_dims: &[usize], nr: usize) -> Vec<Expr> {
    use kiln_ir::BinaryOp as B;
    let mut ix = prepacked_index(nb, k_dims, nr);
    let flat = ix[nb + 1].clone();
    let rem = |e: Expr, by: i64| Expr::bin(B::Mod { fmod: false }, e, Expr::i64(by));
    ix[nb + 1] = Expr::div(flat.clone(), Expr::i64(2));
    ix.push(rem(flat, 2));
    ix
}

/// A load of an integer product's B in the layout of [`prepacked_int_index`], widened to
/// i32: its operand and element offset.
pub(crate) fn prepacked_int_load(k: &Kernel, e: &Expr, nr: usize) -> Option<(usize, i64)> {
    let Expr::Cast(DType::I32, _, _, inner) = e else { return None };
    let Expr::Load { operand, index, pad: None } = &**inner else { return None };
    let v = &k.inputs[*operand];
    let dn = k.n_par - 1;
    if v.dtype != DType::I16 || index.len() != dn + 4 {
        return None;
    }
    let k_dims = &k.domain[k.n_par..];
    let (n, pairs) = (k.domain[dn], k_dims.iter().product::<usize>().div_ceil(2));
    let ok = *index == prepacked_int_index(dn, k_dims, nr)
        && v.strides[dn..] == [(pairs * nr * 2) as i64, (nr * 2) as i64, 2, 1]
        && v.extents[dn..] == [n.div_ceil(nr), pairs, nr, 2];
    ok.then_some((*operand, v.offset))
}

/// Zeroed memory for packed weights. Big ones come straight from the kernel, asking for
/// transparent huge pages: a model's hundreds of megabytes of panels otherwise take a page
/// fault per 4 KiB to fill (about a tenth of a warm compilation of BERT-base).
enum Packed {
    Small(Vec<u8>),
    Mapped(memmap2::MmapMut),
}

fn zeroed(len: usize) -> Packed {
    if len >= 2 << 20 {
        if let Ok(m) = memmap2::MmapMut::map_anon(len) {
            #[cfg(target_os = "linux")]
            let _ = m.advise(memmap2::Advice::HugePage);
            return Packed::Mapped(m);
        }
    }
    Packed::Small(vec![0u8; len])
}

impl Packed {
    fn freeze(self) -> bytes::Bytes {
        match self {
            Packed::Small(v) => v.into(),
            Packed::Mapped(m) => {
                bytes::Bytes::from_owner(m.make_read_only().expect("an anonymous mapping can be made read-only"))
            }
        }
    }
}

impl std::ops::Deref for Packed {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Packed::Small(v) => v,
            Packed::Mapped(m) => m,
        }
    }
}

impl std::ops::DerefMut for Packed {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Packed::Small(v) => v,
            Packed::Mapped(m) => m,
        }
    }
}

/// Packs, at compile time, the constant B of every matrix product that would pack it at run
/// time or read it in place (few rows: a GEMV then streams each panel contiguously instead
/// of NR columns of every row of B, 14% faster on 1×512×512): B becomes a constant in `NR`-wide panels (`[⌈N/NR⌉, K, NR]`, zero padded past N)
/// and the kernel loads it through that layout (still a valid compute definition, which
/// [`match_gemm`] recognizes). A constant used only there is replaced in place, so the
/// weight section holds one copy. With `bf16`, the panels hold the weights rounded to bf16
/// (to nearest, ties to even) and the kernel widens them to f32 as it loads them: half the
/// bytes to stream, the products and sums still in f32 (`--precision bf16`). Returns the
/// number of kernels changed.
pub fn prepack(p: &mut Program, target: &crate::CpuTarget, bf16: bool) -> usize {
    let bl = Blocking::for_target(target);
    let nr = bl.nr;
    let mut changed = 0;
    for i in 0..p.instrs.len() {
        let Instr::Kernel(k) = &p.instrs[i] else { continue };
        let Some(gm) = match_product(k, bl) else { continue };
        if gm.bsrc == BSource::Prepacked {
            continue;
        }
        let bid = k.inputs[gm.b].buffer;
        let BufferKind::Constant(t) = &p.buffer(bid).kind else { continue };
        let int = gm.int.is_some();
        let src_dtype_ok = match t.dtype() {
            DType::I32 | DType::I16 => int,
            d => !int && d == DType::F32,
        };
        if !src_dtype_ok {
            continue;
        }
        // An integer product's B (i32 or i16) must fit i16 (the shifted 8-bit weights do), and
        // its K pairs must not straddle taps ([`pair_rows`]).
        let src_int = |at: usize| match t.dtype() {
            DType::I16 => i32::from(i16::from_le_bytes(t.data[at * 2..at * 2 + 2].try_into().expect("two bytes"))),
            _ => i32::from_le_bytes(t.data[at * 4..at * 4 + 4].try_into().expect("four bytes")),
        };
        if int && (gm.pairs_straddle_taps() || (0..t.numel()).any(|i| i16::try_from(src_int(i)).is_err())) {
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
        // Copies the little-endian f32 bytes as they are, W's rows (one per column of B,
        // contiguous for weights) outermost.
        let src: &[u8] = &t.data;
        let (n, kk) = (gm.n, gm.k);
        let np = n.div_ceil(nr);
        let rows: Vec<i64> = (0..kk)
            .map(|r| {
                // Unravel the flat K index into the K dims.
                let (mut rest, mut at) = (r, gm.b_off);
                for (d, &e) in gm.k_dims.iter().enumerate().rev() {
                    at += (rest % e) as i64 * gm.b_k[d];
                    rest /= e;
                }
                at
            })
            .collect();
        // Batch dims along which B varies get a block of panels per element, the others share.
        let bdims: Vec<usize> = (0..gm.batch.len()).filter(|&d| gm.b_batch[d] != 0).collect();
        let nbatch: usize = bdims.iter().map(|&d| gm.batch[d]).product();
        // Panel rows: K, or pairs of K (an integer product: i16 pairs).
        let prows = if int { kk.div_ceil(2) } else { kk };
        let block = np * prows * nr * if int { 2 } else { 1 };
        let es = if bf16 || int { 2 } else { 4 };
        let mut packed = zeroed(nbatch * block * es);
        {
            use rayon::prelude::*;
            packed.par_chunks_mut(block / np * es).enumerate().for_each(|(q, panel)| {
                let (mut bi, pj) = (q / np, q % np);
                let mut boff = 0i64;
                for &d in bdims.iter().rev() {
                    boff += (bi % gm.batch[d]) as i64 * gm.b_batch[d];
                    bi /= gm.batch[d];
                }
                let rows: Vec<i64> = rows.iter().map(|&r| r + boff).collect();
                let cols = nr.min(n - pj * nr);
                if int {
                    // Element (r, jj, r % 2) of the panel of pairs: K row r, column jj.
                    for jj in 0..cols {
                        let col = (pj * nr + jj) as i64 * gm.b_n;
                        for (r, &at) in rows.iter().enumerate() {
                            let x = src_int((at + col) as usize) as i16;
                            let d = ((r / 2 * nr + jj) * 2 + r % 2) * 2;
                            panel[d..d + 2].copy_from_slice(&x.to_le_bytes());
                        }
                    }
                    return;
                }
                if bf16 {
                    // Each weight rounded to bf16 (to nearest, ties to even).
                    for jj in 0..cols {
                        let col = (pj * nr + jj) as i64 * gm.b_n;
                        for (r, &at) in rows.iter().enumerate() {
                            let s = (at + col) as usize * 4;
                            let x = f32::from_le_bytes(src[s..s + 4].try_into().expect("four bytes"));
                            let d = (r * nr + jj) * 2;
                            panel[d..d + 2].copy_from_slice(&half::bf16::from_f32(x).to_bits().to_le_bytes());
                        }
                    }
                    return;
                }
                if gm.b_n == 1 {
                    // B contiguous along N (a MatMul's weights): a row of the panel is one
                    // run of the source.
                    for (r, &at) in rows.iter().enumerate() {
                        let s = (at + (pj * nr) as i64) as usize * 4;
                        panel[r * nr * 4..(r * nr + cols) * 4].copy_from_slice(&src[s..s + cols * 4]);
                    }
                    return;
                }
                for jj in 0..cols {
                    let col = (pj * nr + jj) as i64 * gm.b_n;
                    for (r, &at) in rows.iter().enumerate() {
                        let s = (at + col) as usize * 4;
                        let d = (r * nr + jj) * 4;
                        panel[d..d + 4].copy_from_slice(&src[s..s + 4]);
                    }
                }
            });
        }
        let bytes = packed.len();
        let dtype = if int {
            DType::I16
        } else if bf16 {
            DType::BF16
        } else {
            DType::F32
        };
        let mut shape = vec![nbatch * np, prows, nr];
        if int {
            shape.push(2);
        }
        let tensor =
            Tensor::from_bytes(kiln_ir::TensorType::new(dtype, shape), packed.freeze()).expect("sized for the shape");
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
        let dn = k.n_par - 1;
        let mut extents = k.domain[..dn].to_vec();
        extents.extend([np, prows, nr]);
        let mut strides = vec![0i64; dn];
        let mut bstride = block as i64;
        for &d in bdims.iter().rev() {
            strides[d] = bstride;
            bstride *= gm.batch[d] as i64;
        }
        let index = if int {
            extents.push(2);
            strides.extend([(prows * nr * 2) as i64, (nr * 2) as i64, 2, 1]);
            prepacked_int_index(dn, &k.domain[k.n_par..], nr)
        } else {
            strides.extend([(kk * nr) as i64, nr as i64, 1]);
            prepacked_index(dn, &k.domain[k.n_par..], nr)
        };
        k.inputs[gm.b] = View { buffer: new_id, dtype, offset: 0, extents, strides };
        let b_op = gm.b;
        // The panels are loaded through a widening cast (bf16 to f32, i16 to i32), unless the
        // load already has one (an integer product's i16 weights).
        let mut widened = false;
        k.body.visit(&mut |e| {
            widened |=
                matches!(e, Expr::Cast(_, _, _, l) if matches!(**l, Expr::Load { operand, .. } if operand == b_op));
        });
        k.body = std::mem::replace(&mut k.body, Expr::Acc).map(&mut |e| match e {
            Expr::Load { operand, .. } if operand == b_op => {
                let load = Expr::Load { operand, index: index.clone(), pad: None };
                if (bf16 || int) && !widened {
                    Expr::cast(if int { DType::I32 } else { DType::F32 }, load)
                } else {
                    load
                }
            }
            e => e,
        });
        changed += 1;
    }
    changed
}
