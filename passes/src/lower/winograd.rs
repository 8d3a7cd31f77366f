//! 3×3 stride-1 convolutions by Winograd's minimal filtering, F(2×2, 3×3): each 2×2 block
//! of outputs costs 16 multiplies per (input, output) channel pair instead of 36.
//!
//! `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A` for a 4×4 input tile `d` (tiles 2 apart) and a 3×3
//! filter `g`, as three kernels and a constant:
//!
//! * `U = G g Gᵀ` per (input, output) channel pair, computed here once, stored
//!   `[4, 4, C, CO]` (the 16 products' weights, output channels contiguous);
//! * `{name}/winograd_rows` and `{name}/winograd_in`: `V[ξ, n, th, tw, c] = (Bᵀ d B)[ξ]` in
//!   two passes of 4-term sums (`Bᵀ d` over the padded columns of all tiles, then `· B`),
//!   coefficients from a small constant, padding read as zeros, channels contiguous;
//! * `{name}/winograd_gemm`: 16 matrix products `M[ξ] = V[ξ] · U[ξ]` (tiles × C times
//!   C × CO), which the CPU backend's GEMM schedule runs (a batch of 16);
//! * `{name}`: the output `Y[n, co, y, x] = Σ_ξ Aᵀ[y%2][i] Aᵀ[x%2][j] M[ξ, n, y/2, x/2, co]`
//!   plus the bias, where the convolution's epilogue (activation, residual) fuses as usual.
//!
//! Taken for convolutions with at least 16 input and output channels and an output of at
//! least 4×4 (below that the transforms cost more than the products save). The weights must
//! be constant.

use kiln_ir::Tensor;

use super::*;

/// `Bᵀ` of F(2×2, 3×3).
const BT: [[f64; 4]; 4] = [[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, 1.0, 0.0, -1.0]];
/// `G` of F(2×2, 3×3).
const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
/// `Aᵀ` of F(2×2, 3×3).
const AT: [[f64; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

/// `m[r][c]` for index expressions `r` and `c`, as selects over constants: no memory, so the
/// backend keeps a coefficient in a register for a whole row of channels.
fn table<const C: usize>(m: &[[f64; C]], r: Expr, c: Expr) -> Expr {
    let pick = |row: &[f64; C]| {
        let mut e = Expr::f32(row[C - 1] as f32);
        for (j, &v) in row.iter().enumerate().rev().skip(1) {
            e = Expr::select(Expr::cmp(CmpOp::Equal, c.clone(), Expr::i64(j as i64)), Expr::f32(v as f32), e);
        }
        e
    };
    let mut e = pick(&m[m.len() - 1]);
    for (i, row) in m.iter().enumerate().rev().skip(1) {
        e = Expr::select(Expr::cmp(CmpOp::Equal, r.clone(), Expr::i64(i as i64)), pick(row), e);
    }
    e
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
            || c < 16
            || co < 16
            || oh < 4
            || ow < 4
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
        let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));

        // U[i][j][c][co] = Σ_ab G[i][a] g[co][c][a][b] G[j][b], as (G g) Gᵀ in f64, written
        // plane by plane with the output channel contiguous.
        // Blocks of 64 output channels: 64 filters read in step, 16 planes written in runs.
        let mut u = vec![0f32; 16 * c * co];
        for ob in (0..co).step_by(64) {
            for ci in 0..c {
                for o in ob..(ob + 64).min(co) {
                    let at = (o * c + ci) * 36;
                    let f: [f64; 9] = std::array::from_fn(|k| {
                        let b = &g[at + 4 * k..at + 4 * k + 4];
                        f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64
                    });
                    let mut gf = [[0f64; 3]; 4];
                    for (i, gi) in G.iter().enumerate() {
                        for bcol in 0..3 {
                            gf[i][bcol] = gi[0] * f[bcol] + gi[1] * f[3 + bcol] + gi[2] * f[6 + bcol];
                        }
                    }
                    for (i, row) in gf.iter().enumerate() {
                        for (j, gj) in G.iter().enumerate() {
                            let v = row[0] * gj[0] + row[1] * gj[1] + row[2] * gj[2];
                            u[((i * 4 + j) * c + ci) * co + o] = v as f32;
                        }
                    }
                }
            }
        }
        let constant = |s: &mut Self, shape: Vec<usize>, v: Vec<f32>, what: &str| {
            let t = Tensor::f32(shape.clone(), v);
            let b = s.prog.add_buffer(
                BufferKind::Constant(t),
                shape.iter().product::<usize>() * 4,
                format!("{name}.{what}"),
            );
            View::dense(b, DType::F32, &shape)
        };
        let u = constant(self, vec![4, 4, c, co], u, "winograd_weights");

        // The input transform in two passes of 4 terms (Bᵀ d, then (Bᵀ d) B) instead of one of
        // 16, the coefficients from a small constant (as selects, like the output
        // transform's, they measured twice as slow here).
        let bt = constant(self, vec![4, 4], BT.iter().flatten().map(|&v| v as f32).collect(), "winograd_bt");
        let sum = Some(Reduction { combine: Combine::Add, init: Scalar::F32(0.0), finalize: None });
        // R[i, n, th, x', c] = Σ_a Bᵀ[i][a] x[n, c, 2th + a - top, x' - left] over the padded
        // columns x' of all tiles.
        let wp = 2 * tw + 2;
        let rows = self.temp(DType::F32, &[4, n, th, wp, c], format!("{name}.winograd_rows"));
        let xl = Expr::Load {
            operand: 0,
            index: vec![
                Expr::Var(1),
                Expr::Var(4),
                Expr::sub(
                    Expr::add(Expr::mul(Expr::Var(2), Expr::i64(2)), Expr::Var(5)),
                    Expr::i64(window.pads[0] as i64),
                ),
                Expr::sub(Expr::Var(3), Expr::i64(window.pads[1] as i64)),
            ],
            pad: Some(Scalar::F32(0.0)),
        };
        self.emit(Kernel {
            name: format!("{name}/winograd_rows"),
            domain: vec![4, n, th, wp, c, 4],
            n_par: 5,
            inputs: vec![x.clone(), bt.clone()],
            output: rows.clone(),
            body: Expr::mul(Expr::load(1, vec![Expr::Var(0), Expr::Var(5)]), xl),
            reduction: sum.clone(),
        });
        // V[i, j, n, th, tw, c] = Σ_b Bᵀ[j][b] R[i, n, th, 2tw + b, c].
        let v = self.temp(DType::F32, &[4, 4, n, th, tw, c], format!("{name}.winograd_tiles"));
        let rl = Expr::load(
            0,
            vec![
                Expr::Var(0),
                Expr::Var(2),
                Expr::Var(3),
                Expr::add(Expr::mul(Expr::Var(4), Expr::i64(2)), Expr::Var(6)),
                Expr::Var(5),
            ],
        );
        self.emit(Kernel {
            name: format!("{name}/winograd_in"),
            domain: vec![4, 4, n, th, tw, c, 4],
            n_par: 6,
            inputs: vec![rows, bt],
            output: v.clone(),
            body: Expr::mul(Expr::load(1, vec![Expr::Var(1), Expr::Var(6)]), rl),
            reduction: sum,
        });

        // M[i, j, n, th, tw, co] = Σ_c V[i, j, n, th, tw, c] U[i, j, c, co].
        let m = self.temp(DType::F32, &[4, 4, n, th, tw, co], format!("{name}.winograd_products"));
        self.emit(Kernel {
            name: format!("{name}/winograd_gemm"),
            domain: vec![4, 4, n, th, tw, co, c],
            n_par: 6,
            inputs: vec![v, u],
            output: m.clone(),
            body: Expr::mul(
                Expr::load(0, vec![Expr::Var(0), Expr::Var(1), Expr::Var(2), Expr::Var(3), Expr::Var(4), Expr::Var(6)]),
                Expr::load(1, vec![Expr::Var(0), Expr::Var(1), Expr::Var(6), Expr::Var(5)]),
            ),
            reduction: Some(Reduction { combine: Combine::Add, init: Scalar::F32(0.0), finalize: None }),
        });

        // Y[n, co, y, x] = Σ_ij Aᵀ[y%2][i] Aᵀ[x%2][j] M[i, j, n, y/2, x/2, co] (+ bias).
        let two = || Expr::i64(2);
        let modulo = |e: Expr| Expr::bin(BinaryOp::Mod { fmod: false }, e, two());
        let ml = Expr::load(
            0,
            vec![
                Expr::Var(4),
                Expr::Var(5),
                Expr::Var(0),
                Expr::div(Expr::Var(2), two()),
                Expr::div(Expr::Var(3), two()),
                Expr::Var(1),
            ],
        );
        let coef =
            Expr::mul(table(&AT, modulo(Expr::Var(2)), Expr::Var(4)), table(&AT, modulo(Expr::Var(3)), Expr::Var(5)));
        let mut inputs = vec![m];
        let finalize = ins.get(2).map(|b| {
            inputs.push(b.clone());
            Expr::add(Expr::Acc, Expr::load(1, vec![Expr::Var(1)]))
        });
        self.emit(Kernel {
            name: name.into(),
            domain: vec![n, co, oh, ow, 4, 4],
            n_par: 4,
            inputs,
            output: out.clone(),
            body: Expr::mul(coef, ml),
            reduction: Some(Reduction { combine: Combine::Add, init: Scalar::F32(0.0), finalize }),
        });
        true
    }
}
