//! 3×3 stride-1 convolutions by Winograd's minimal filtering, F(m×m, 3×3): each m×m block of
//! outputs costs t² = (m+2)² multiplies per (input, output) channel pair instead of 9m².
//! F(4×4, 3×3) (36 per 16 outputs, 4× fewer) for outputs of 16×16 or more with at most 256
//! input channels, F(2×2, 3×3) (16 per 4, 2.25× fewer) for the others down to 8×8.
//!
//! `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A` for a t×t input tile `d` (tiles m apart) and a 3×3
//! filter `g`, as four or five kernels and a constant:
//!
//! * `U = G g Gᵀ` per (input, output) channel pair, computed here once, stored
//!   `[t, t, C, CO]` (the t² products' weights, output channels contiguous);
//! * `{name}/winograd_rows` and `{name}/winograd_in`: `V[ξ, n, th, tw, c] = (Bᵀ d B)[ξ]` in
//!   two passes of t-term sums (`Bᵀ d` over the padded columns of all tiles, then `· B`),
//!   coefficients from a small constant, padding read as zeros, channels contiguous;
//! * `{name}/winograd_gemm`: t² matrix products `M[ξ] = V[ξ] · U[ξ]` (tiles × C times
//!   C × CO), which the CPU backend's GEMM schedule runs as a batch;
//! * `{name}`: the output `Y[n, co, y, x] = Σ_ij Aᵀ[y%m][i] Aᵀ[x%m][j] M[i, j, n, y/m, x/m, co]`
//!   plus the bias, where the convolution's epilogue (activation, residual) fuses as usual;
//!   for F(4×4) in two passes of t terms (`{name}/winograd_cols` over j, then `{name}` over
//!   i), as one pass of 36 cost more than its products saved, for F(2×2) in one of 16, which
//!   measured 8% faster than two.
//!
//! Below 8×8 outputs (ResNet's 7×7 stage) the products have too few rows to amortize the
//! transformed weights, which are t²/9 times the filter's size: the direct form is as fast
//! and its weights smaller. The weights must be constant.

use kiln_ir::Tensor;

use super::*;

/// Outputs of at least 16×16 take F(4×4, 3×3), with at most this many input channels (its
/// rounding error grows with the sum's length: for 256 channels it was a third of the test
/// tolerance); the others F(2×2, 3×3). F(4×4) took 4–5% off ResNet-50's latency against
/// F(2×2) at its 56×56 stage, and 26% off a U-Net's at 256×256 down to 32×32 (88 → 65 ms):
/// its transformed tiles and products are 2.25 times the input or output, F(2×2)'s 4 times,
/// so it moves less memory as well as multiplying less.
const WINOGRAD_F4_MIN: usize = 16;
const WINOGRAD_F4_MAX_C: usize = 256;
/// One of Winograd's algorithms F(m×m, 3×3): `m×m` outputs from a `t×t` input tile,
/// `t = m + 2`, with its transforms `Bᵀ` (t×t), `G` (t×3) and `Aᵀ` (m×t).
struct Variant {
    m: usize,
    bt: &'static [&'static [f64]],
    g: &'static [[f64; 3]],
    at: &'static [&'static [f64]],
}

/// F(2×2, 3×3), interpolation points 0, ±1: 16 products per 4 outputs.
const F2: Variant = Variant {
    m: 2,
    bt: &[&[1.0, 0.0, -1.0, 0.0], &[0.0, 1.0, 1.0, 0.0], &[0.0, -1.0, 1.0, 0.0], &[0.0, 1.0, 0.0, -1.0]],
    g: &[[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]],
    at: &[&[1.0, 1.0, 1.0, 0.0], &[0.0, 1.0, -1.0, -1.0]],
};

/// F(4×4, 3×3): 36 products per 16 outputs. Interpolation points 0, 1, −1, ½, −2 (and ∞)
/// rather than the usual 0, ±1, ±2: in f32 over 64 channels its largest error measured 4×
/// smaller (6e-5 against 2.3e-4 on sums of unit-range products). `Bᵀ` and `Aᵀ` hold
/// binary fractions (exact in f32); `G`, with thirds and fifteenths, is applied at compile
/// time in f64.
const F4: Variant = Variant {
    m: 4,
    bt: &[
        &[1.0, -1.5, -2.0, 1.5, 1.0, 0.0],
        &[0.0, -1.0, 0.5, 2.5, 1.0, 0.0],
        &[0.0, 1.0, -2.5, 0.5, 1.0, 0.0],
        &[0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        &[0.0, 0.5, -1.0, -0.5, 1.0, 0.0],
        &[0.0, 1.0, -1.5, -2.0, 1.5, 1.0],
    ],
    g: &[
        [1.0, 0.0, 0.0],
        [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
        [-1.0 / 3.0, 1.0 / 3.0, -1.0 / 3.0],
        [-16.0 / 15.0, -8.0 / 15.0, -4.0 / 15.0],
        [1.0 / 15.0, -2.0 / 15.0, 4.0 / 15.0],
        [0.0, 0.0, 1.0],
    ],
    at: &[
        &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        &[0.0, 1.0, -1.0, 0.5, -2.0, 0.0],
        &[0.0, 1.0, 1.0, 0.25, 4.0, 0.0],
        &[0.0, 1.0, -1.0, 0.125, -8.0, 1.0],
    ],
};

/// `m[r][c]` for index expressions `r` and `c`, as selects over constants: no memory, so the
/// backend keeps a coefficient in a register for a whole row of channels.
fn table(m: &[&[f64]], r: Expr, c: Expr) -> Expr {
    let pick = |row: &[f64]| {
        let mut e = Expr::f32(row[row.len() - 1] as f32);
        for (j, &v) in row.iter().enumerate().rev().skip(1) {
            e = Expr::select(Expr::cmp(CmpOp::Equal, c.clone(), Expr::i64(j as i64)), Expr::f32(v as f32), e);
        }
        e
    };
    let mut e = pick(m[m.len() - 1]);
    for (i, row) in m.iter().enumerate().rev().skip(1) {
        e = Expr::select(Expr::cmp(CmpOp::Equal, r.clone(), Expr::i64(i as i64)), pick(row), e);
    }
    e
}

/// The sizes of one Winograd convolution: batch, channels in and out, output extents, the
/// tile's output side `m` and input side `t = m + 2`, and the tile counts.
#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    c: usize,
    co: usize,
    oh: usize,
    ow: usize,
    m: usize,
    t: usize,
    th: usize,
    tw: usize,
}

/// The transformed filter `U[i][j][c][co] = Σ_ab G[i][a] g[co][c][a][b] G[j][b]`, as
/// `(G g) Gᵀ` in f64, written plane by plane with the output channel contiguous, from the
/// little-endian f32 filter bytes `g` (`[co][c][3][3]`). Blocks of 64 output channels: 64
/// filters read in step, t² planes written in runs.
fn transformed_filter(wv: &Variant, g: &[u8], d: Dims) -> Vec<f32> {
    let (c, co, t) = (d.c, d.co, d.t);
    let mut u = vec![0f32; t * t * c * co];
    for ob in (0..co).step_by(64) {
        for ci in 0..c {
            for o in ob..(ob + 64).min(co) {
                let at = (o * c + ci) * 36;
                let f: [f64; 9] = std::array::from_fn(|k| {
                    let b = &g[at + 4 * k..at + 4 * k + 4];
                    f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64
                });
                for (i, gi) in wv.g.iter().enumerate() {
                    let row: [f64; 3] = std::array::from_fn(|b| gi[0] * f[b] + gi[1] * f[3 + b] + gi[2] * f[6 + b]);
                    for (j, gj) in wv.g.iter().enumerate() {
                        let v = row[0] * gj[0] + row[1] * gj[1] + row[2] * gj[2];
                        u[((i * t + j) * c + ci) * co + o] = v as f32;
                    }
                }
            }
        }
    }
    u
}

/// Whether a 3×3 stride-1 f32 convolution of `c` input and `co` output channels and an
/// `oh`×`ow` output is big enough for the Winograd schedule (what [`Lowerer::lower_winograd`]
/// asks besides its window, types and constant filter).
pub(crate) fn winograd_sized(c: usize, co: usize, oh: usize, ow: usize) -> bool {
    c >= 16 && co >= 16 && oh >= 8 && ow >= 8
}

/// Whether the Winograd schedule takes graph node `n` when it is lowered: an f32 3×3
/// convolution of stride 1 with a constant filter, big enough ([`Lowerer::lower_winograd`]'s
/// conditions, asked before lowering).
pub(crate) fn takes(g: &kiln_ir::Graph, n: &kiln_ir::Node) -> bool {
    let Op::Conv { window, group: 1 } = &n.op else { return false };
    let (wt, out) = (g.ty(n.inputs[1]), g.ty(n.outputs[0]));
    let f32s = [n.inputs[0], n.inputs[1], n.outputs[0]].iter().all(|&v| g.ty(v).dtype == DType::F32);
    window.kernel == [3, 3]
        && window.strides == [1, 1]
        && window.dilations == [1, 1]
        && f32s
        && g.const_of(n.inputs[1]).is_some()
        && wt.rank() == 4
        && out.rank() == 4
        && winograd_sized(wt.shape[1], wt.shape[0], out.shape[2], out.shape[3])
}

impl Lowerer<'_> {
    /// Lowers a convolution by F(2×2, 3×3) when it qualifies (see the module doc); `false`
    /// leaves it to the direct form.
    pub(super) fn lower_winograd(
        &mut self,
        window: &kiln_ir::Window,
        group: usize,
        ins: &[View],
        out: &View,
        name: &str,
    ) -> bool {
        let (x, w) = (&ins[0], &ins[1]);
        let [n, co, oh, ow] = out.extents[..] else { return false };
        let c = w.extents[1];
        if group != 1
            || window.kernel != [3, 3]
            || window.strides != [1, 1]
            || window.dilations != [1, 1]
            || x.dtype != DType::F32
            || w.dtype != DType::F32
            || out.dtype != DType::F32
            || !winograd_sized(c, co, oh, ow)
        {
            return false;
        }
        // The filter, as constant data laid out densely.
        let g = match &self.prog.buffer(w.buffer).kind {
            BufferKind::Constant(t)
                if w.offset == 0 && w.strides == View::dense(w.buffer, w.dtype, &w.extents).strides =>
            {
                t.data.clone()
            }
            _ => return false,
        };
        let f4 = oh.min(ow) >= WINOGRAD_F4_MIN;
        let wv = if f4 && c <= WINOGRAD_F4_MAX_C { &F4 } else { &F2 };
        let (mt, t) = (wv.m, wv.m + 2);
        let d = Dims { n, c, co, oh, ow, m: mt, t, th: oh.div_ceil(mt), tw: ow.div_ceil(mt) };

        let u = self.winograd_constant(name, vec![t, t, c, co], transformed_filter(wv, &g, d), "winograd_weights");
        let v = self.winograd_input(wv, x, window, d, name);
        // M[n, i, j, th, tw, co] = Σ_c V[n, i, j, th, tw, c] U[i, j, c, co]. The image is the
        // outermost axis of every intermediate, so that each holds an image's tiles as a row
        // (run-time batches cut them: rows.rs).
        let m = self.temp(DType::F32, &[n, t, t, d.th, d.tw, co], format!("{name}.winograd_products"));
        self.emit(Kernel {
            name: format!("{name}/winograd_gemm"),
            domain: vec![n, t, t, d.th, d.tw, co, c],
            n_par: 6,
            inputs: vec![v, u],
            output: m.clone(),
            body: Expr::mul(
                Expr::load(0, vec![Expr::Var(0), Expr::Var(1), Expr::Var(2), Expr::Var(3), Expr::Var(4), Expr::Var(6)]),
                Expr::load(1, vec![Expr::Var(1), Expr::Var(2), Expr::Var(6), Expr::Var(5)]),
            ),
            reduction: Some(Reduction { combine: Combine::Add, init: Scalar::F32(0.0), finalize: None }),
            origin: Vec::new(),
        });
        self.winograd_output(wv, m, ins.get(2), out, d, name);
        true
    }

    /// A constant f32 buffer `<name>.<what>` of `shape`, as a dense view.
    fn winograd_constant(&mut self, name: &str, shape: Vec<usize>, v: Vec<f32>, what: &str) -> View {
        let t = Tensor::f32(shape.clone(), v);
        let b = self.prog.add_buffer(
            BufferKind::Constant(t),
            shape.iter().product::<usize>() * 4,
            format!("{name}.{what}"),
        );
        View::dense(b, DType::F32, &shape)
    }

    /// The input transform `V = Bᵀ d B` of every tile, in two passes of t terms (Bᵀ d, then
    /// (Bᵀ d) B) instead of one of t², the coefficients from a small constant (as selects,
    /// like the output transform's, they measured twice as slow here). Returns V
    /// (`[n, t, t, th, tw, c]`).
    fn winograd_input(&mut self, wv: &Variant, x: &View, window: &kiln_ir::Window, d: Dims, name: &str) -> View {
        let Dims { n, c, m: mt, t, th, tw, .. } = d;
        let bt_values = wv.bt.iter().flat_map(|r| r.iter()).map(|&v| v as f32).collect();
        let bt = self.winograd_constant(name, vec![t, t], bt_values, "winograd_bt");
        let sum = Some(Reduction { combine: Combine::Add, init: Scalar::F32(0.0), finalize: None });
        // R[n, i, th, x', c] = Σ_a Bᵀ[i][a] x[n, c, m·th + a - top, x' - left] over the padded
        // columns x' of all tiles.
        let wp = mt * tw + 2;
        let rows = self.temp(DType::F32, &[n, t, th, wp, c], format!("{name}.winograd_rows"));
        let xl = Expr::Load {
            operand: 0,
            index: vec![
                Expr::Var(0),
                Expr::Var(4),
                Expr::sub(
                    Expr::add(Expr::mul(Expr::Var(2), Expr::i64(mt as i64)), Expr::Var(5)),
                    Expr::i64(window.pads[0] as i64),
                ),
                Expr::sub(Expr::Var(3), Expr::i64(window.pads[1] as i64)),
            ],
            pad: Some(Scalar::F32(0.0)),
        };
        self.emit(Kernel {
            name: format!("{name}/winograd_rows"),
            domain: vec![n, t, th, wp, c, t],
            n_par: 5,
            inputs: vec![x.clone(), bt.clone()],
            output: rows.clone(),
            body: Expr::mul(Expr::load(1, vec![Expr::Var(1), Expr::Var(5)]), xl),
            reduction: sum.clone(),
            origin: Vec::new(),
        });
        // V[n, i, j, th, tw, c] = Σ_b Bᵀ[j][b] R[n, i, th, m·tw + b, c].
        let v = self.temp(DType::F32, &[n, t, t, th, tw, c], format!("{name}.winograd_tiles"));
        let rl = Expr::load(
            0,
            vec![
                Expr::Var(0),
                Expr::Var(1),
                Expr::Var(3),
                Expr::add(Expr::mul(Expr::Var(4), Expr::i64(mt as i64)), Expr::Var(6)),
                Expr::Var(5),
            ],
        );
        self.emit(Kernel {
            name: format!("{name}/winograd_in"),
            domain: vec![n, t, t, th, tw, c, t],
            n_par: 6,
            inputs: vec![rows, bt],
            output: v.clone(),
            body: Expr::mul(Expr::load(1, vec![Expr::Var(2), Expr::Var(6)]), rl),
            reduction: sum,
            origin: Vec::new(),
        });
        v
    }

    /// The output transform `Y = Aᵀ M A` (+ bias) from the products M
    /// (`[n, t, t, th, tw, co]`) into `out`.
    fn winograd_output(&mut self, wv: &Variant, m: View, bias: Option<&View>, out: &View, d: Dims, name: &str) {
        let Dims { n, co, oh, ow, m: mt, t, th, .. } = d;
        let tile = || Expr::i64(mt as i64);
        let modulo = |e: Expr| Expr::bin(BinaryOp::Mod { fmod: false }, e, tile());
        let bias = |inputs: &mut Vec<View>| {
            bias.map(|b| {
                inputs.push(b.clone());
                Expr::add(Expr::Acc, Expr::load(1, vec![Expr::Var(1)]))
            })
        };
        if wv.m == 2 {
            // Y[n, co, y, x] = Σ_ij Aᵀ[y%2][i] Aᵀ[x%2][j] M[n, i, j, y/2, x/2, co] (+ bias),
            // in one pass of 16 terms (two passes measured 8% slower at 56×56).
            let ml = Expr::load(
                0,
                vec![
                    Expr::Var(0),
                    Expr::Var(4),
                    Expr::Var(5),
                    Expr::div(Expr::Var(2), tile()),
                    Expr::div(Expr::Var(3), tile()),
                    Expr::Var(1),
                ],
            );
            let coef = Expr::mul(
                table(wv.at, modulo(Expr::Var(2)), Expr::Var(4)),
                table(wv.at, modulo(Expr::Var(3)), Expr::Var(5)),
            );
            let mut inputs = vec![m];
            let finalize = bias(&mut inputs);
            self.emit(Kernel {
                name: name.into(),
                domain: vec![n, co, oh, ow, t, t],
                n_par: 4,
                inputs,
                output: out.clone(),
                body: Expr::mul(coef, ml),
                reduction: Some(Reduction { combine: Combine::Add, init: Scalar::F32(0.0), finalize }),
                origin: Vec::new(),
            });
            return;
        }
        // F(4×4): in two passes of t terms, like the input transform (one pass of 36 cost
        // more than the products saved):
        // Z[n, i, th, x, co] = Σ_j Aᵀ[x%m][j] M[n, i, j, th, x/m, co], then
        // Y[n, co, y, x] = Σ_i Aᵀ[y%m][i] Z[n, i, y/m, x, co] (+ bias).
        let z = self.temp(DType::F32, &[n, t, th, ow, co], format!("{name}.winograd_cols"));
        let ml = Expr::load(
            0,
            vec![Expr::Var(0), Expr::Var(1), Expr::Var(5), Expr::Var(2), Expr::div(Expr::Var(3), tile()), Expr::Var(4)],
        );
        self.emit(Kernel {
            name: format!("{name}/winograd_cols"),
            domain: vec![n, t, th, ow, co, t],
            n_par: 5,
            inputs: vec![m],
            output: z.clone(),
            body: Expr::mul(table(wv.at, modulo(Expr::Var(3)), Expr::Var(5)), ml),
            reduction: Some(Reduction { combine: Combine::Add, init: Scalar::F32(0.0), finalize: None }),
            origin: Vec::new(),
        });
        let zl = Expr::load(
            0,
            vec![Expr::Var(0), Expr::Var(4), Expr::div(Expr::Var(2), tile()), Expr::Var(3), Expr::Var(1)],
        );
        let mut inputs = vec![z];
        let finalize = bias(&mut inputs);
        self.emit(Kernel {
            name: name.into(),
            domain: vec![n, co, oh, ow, t],
            n_par: 4,
            inputs,
            output: out.clone(),
            body: Expr::mul(table(wv.at, modulo(Expr::Var(2)), Expr::Var(4)), zl),
            reduction: Some(Reduction { combine: Combine::Add, init: Scalar::F32(0.0), finalize }),
            origin: Vec::new(),
        });
    }
}
