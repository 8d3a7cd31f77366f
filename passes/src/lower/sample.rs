//! Lowering of the sampling ops: GridSample (nearest, bilinear, bicubic; padding modes)
//! and RoiAlign.

use super::*;

impl Lowerer<'_> {
    /// GridSample as a reduction over the interpolation taps (1, 2×2 or 4×4) of each output
    /// element: coordinates are computed from the grid in the body, as ONNX's reference does.
    pub(super) fn lower_grid_sample(
        &mut self,
        ins: Vec<View>,
        out: View,
        mode: GridMode,
        padding: GridPadding,
        align: bool,
        name: &str,
    ) {
        let (x, grid) = (ins[0].clone(), ins[1].clone());
        let ns = x.extents.len() - 2;
        let dims: Vec<usize> = x.extents[2..].to_vec();
        let f = Expr::f32;
        let fbin = |op, a: Expr, b: Expr| Expr::bin(op, a, b);
        let lt = |a: Expr, b: Expr| Expr::cmp(CmpOp::Less, a, b);
        let floor = |a: Expr| Expr::unary(UnaryOp::Floor, a);
        let border = |a: usize| if align { (0.0, dims[a] as f32 - 1.0) } else { (-0.5, dims[a] as f32 - 0.5) };
        let reflect = |p: Expr, lo: f32, hi: f32| {
            let rng = hi - lo;
            let fold = |dx: Expr, near: f32, far: f32, sign: f32| {
                let n = floor(Expr::div(dx.clone(), f(rng)));
                let r = Expr::sub(dx, Expr::mul(n.clone(), f(rng)));
                let even = Expr::cmp(CmpOp::Equal, Expr::mul(floor(Expr::div(n.clone(), f(2.0))), f(2.0)), n);
                // Even: near border moved inwards by r; odd: far border moved back by r.
                Expr::select(
                    even,
                    Expr::add(f(near), Expr::mul(f(sign), r.clone())),
                    Expr::sub(f(far), Expr::mul(f(sign), r)),
                )
            };
            let below = fold(Expr::sub(f(lo), p.clone()), lo, hi, 1.0);
            let above = fold(Expr::sub(p.clone(), f(hi)), hi, lo, -1.0);
            Expr::select(lt(p.clone(), f(lo)), below, Expr::select(lt(f(hi), p.clone()), above, p))
        };
        // The sampling position along spatial axis a (from grid component ns-1-a: the grid
        // lists x first).
        let pos = |a: usize| {
            let mut gi = vec![Expr::Var(0)];
            gi.extend(vars(2..2 + ns));
            gi.push(Expr::i64((ns - 1 - a) as i64));
            let g = Expr::load(1, gi);
            let len = dims[a] as f32;
            let g1 = Expr::add(g, f(1.0));
            let mut p = if align {
                Expr::mul(Expr::div(g1, f(2.0)), f(len - 1.0))
            } else {
                Expr::div(Expr::sub(Expr::mul(g1, f(len)), f(1.0)), f(2.0))
            };
            if mode == GridMode::Nearest {
                // Round half to even.
                let r = floor(Expr::add(p.clone(), f(0.5)));
                let tie = Expr::cmp(CmpOp::Equal, Expr::sub(r.clone(), p), f(0.5));
                let odd = Expr::cmp(
                    CmpOp::Equal,
                    Expr::sub(r.clone(), Expr::mul(floor(Expr::div(r.clone(), f(2.0))), f(2.0))),
                    f(1.0),
                );
                p = Expr::select(fbin(BinaryOp::And, tie, odd), Expr::sub(r.clone(), f(1.0)), r);
            }
            let (lo, hi) = border(a);
            let outside = fbin(BinaryOp::Or, lt(p.clone(), f(lo)), lt(f(hi), p.clone()));
            match padding {
                GridPadding::Zeros => p,
                GridPadding::Border => {
                    let c = fbin(BinaryOp::Min, fbin(BinaryOp::Max, p.clone(), f(0.0)), f(len - 1.0));
                    Expr::select(outside, c, p)
                }
                GridPadding::Reflection => reflect(p, lo, hi),
            }
        };
        // The element index that an integer tap index reads along axis a.
        let pixel = |a: usize, i: Expr| -> Expr {
            let d = dims[a] as i64;
            match padding {
                GridPadding::Zeros => i,
                GridPadding::Border => {
                    fbin(BinaryOp::Min, fbin(BinaryOp::Max, i, Expr::i64(0)), Expr::i64((d - 1).max(0)))
                }
                GridPadding::Reflection => {
                    let (lo, hi) = border(a);
                    Expr::cast(DType::I64, reflect(Expr::cast(DType::F32, i), lo, hi))
                }
            }
        };
        let taps = match mode {
            GridMode::Nearest => 1,
            GridMode::Linear => 2,
            GridMode::Cubic => 4,
        };
        // (index, weight) of tap Var(2 + ns + a) along spatial axis a.
        let tap = |a: usize| -> (Expr, Expr) {
            let p = pos(a);
            let t = Expr::Var(2 + ns + a);
            if mode == GridMode::Nearest {
                return (pixel(a, Expr::cast(DType::I64, p)), f(1.0));
            }
            let x0 = floor(p.clone());
            let fr = Expr::sub(p, x0.clone());
            let base = Expr::cast(DType::I64, x0);
            let is = |k: i64| Expr::cmp(CmpOp::Equal, t.clone(), Expr::i64(k));
            if mode == GridMode::Linear {
                let w = Expr::select(is(0), Expr::sub(f(1.0), fr.clone()), fr);
                return (pixel(a, Expr::add(base, t.clone())), w);
            }
            // Keys cubic weights (alpha = -0.75) at distances 1+x, x, 1-x, 2-x.
            let al = -0.75f32;
            let x = Expr::unary(UnaryOp::Abs, fr);
            let outer = |d: Expr| {
                let inner =
                    Expr::add(Expr::mul(Expr::sub(Expr::mul(f(al), d.clone()), f(5.0 * al)), d.clone()), f(8.0 * al));
                Expr::sub(Expr::mul(inner, d), f(4.0 * al))
            };
            let near = |d: Expr| {
                let q = Expr::sub(Expr::mul(f(al + 2.0), d.clone()), f(al + 3.0));
                Expr::add(Expr::mul(Expr::mul(q, d.clone()), d), f(1.0))
            };
            let w = Expr::select(
                is(0),
                outer(Expr::add(x.clone(), f(1.0))),
                Expr::select(
                    is(1),
                    near(x.clone()),
                    Expr::select(is(2), near(Expr::sub(f(1.0), x.clone())), outer(Expr::sub(f(2.0), x))),
                ),
            );
            (pixel(a, Expr::add(Expr::sub(base, Expr::i64(1)), t.clone())), w)
        };
        let mut index = vec![Expr::Var(0), Expr::Var(1)];
        let mut weight: Option<Expr> = None;
        for a in 0..ns {
            let (i, w) = tap(a);
            index.push(i);
            weight = Some(match weight {
                None => w,
                Some(acc) => Expr::mul(acc, w),
            });
        }
        let xl = Expr::Load { operand: 0, index, pad: Some(Scalar::F32(0.0)) };
        let mut domain = out.extents.clone();
        domain.extend(vec![taps; ns]);
        self.emit(Kernel {
            name: name.into(),
            domain,
            n_par: 2 + ns,
            inputs: vec![x, grid],
            output: out,
            body: Expr::mul(weight.expect("at least one spatial axis"), xl),
            reduction: Some(Reduction { combine: Combine::Add, init: Scalar::F32(0.0), finalize: None }),
            origin: Vec::new(),
        });
    }

    /// RoiAlign: average or max of bilinear samples over each region's bins.
    pub(super) fn lower_roi_align(&mut self, op: &Op, ins: &[View], out: View, name: &str) -> Result<(), String> {
        let out_shape = out.extents.clone();
        let Op::RoiAlign { out_hw, sampling_ratio, spatial_scale, max, half_pixel } = op else {
            unreachable!("lower_roi_align on {}", op.name())
        };
        let (x, rois, bi) = (&ins[0], &ins[1], &ins[2]);
        let (n, h, w) = (x.extents[0] as i64, x.extents[2] as i64, x.extents[3] as i64);
        self.index_check(bi, &|_| n, Expr::i64(n), name, "RoiAlign")?;
        let f = Expr::f32;
        let fv = |d: usize| Expr::cast(DType::F32, Expr::Var(d));
        let off = if *half_pixel { 0.5 } else { 0.0 };
        let roi =
            |k: i64| Expr::sub(Expr::mul(Expr::load(1, vec![Expr::Var(0), Expr::i64(k)]), f(*spatial_scale)), f(off));
        let (sw, sh) = (roi(0), roi(1));
        let mut rw = Expr::sub(roi(2), sw.clone());
        let mut rh = Expr::sub(roi(3), sh.clone());
        if !*half_pixel {
            rw = Expr::bin(BinaryOp::Max, rw, f(1.0));
            rh = Expr::bin(BinaryOp::Max, rh, f(1.0));
        }
        let sr = *sampling_ratio as f32;
        // The sample position along an axis: start + bin·size + (i + 0.5)·size / sr.
        let sample = |start: Expr, size: Expr, bin: usize, i: usize| {
            let step = Expr::div(Expr::mul(Expr::add(fv(i), f(0.5)), size.clone()), f(sr));
            Expr::add(Expr::add(start, Expr::mul(fv(bin), size)), step)
        };
        let y = sample(sh, Expr::div(rh, f(out_hw[0] as f32)), 2, 4);
        let xx = sample(sw, Expr::div(rw, f(out_hw[1] as f32)), 3, 5);
        let lt = |a: Expr, b: Expr| Expr::cmp(CmpOp::Less, a, b);
        let or = |a: Expr, b: Expr| Expr::bin(BinaryOp::Or, a, b);
        let outside = or(
            or(lt(y.clone(), f(-1.0)), lt(f(h as f32), y.clone())),
            or(lt(xx.clone(), f(-1.0)), lt(f(w as f32), xx.clone())),
        );
        // (low index, high index, fraction) along an axis of extent `len`.
        let axis = |v: Expr, len: i64| {
            let v = Expr::bin(BinaryOp::Max, v, f(0.0));
            let lo = Expr::cast(DType::I64, v.clone());
            let edge = Expr::cmp(CmpOp::GreaterOrEqual, lo.clone(), Expr::i64(len - 1));
            let frac = Expr::sub(v, Expr::cast(DType::F32, lo.clone()));
            (
                Expr::select(edge.clone(), Expr::i64(len - 1), lo.clone()),
                Expr::select(edge.clone(), Expr::i64(len - 1), Expr::add(lo, Expr::i64(1))),
                Expr::select(edge, f(0.0), frac),
            )
        };
        let (yl, yh, ly) = axis(y, h);
        let (xl, xh, lx) = axis(xx, w);
        let (hy, hx) = (Expr::sub(f(1.0), ly.clone()), Expr::sub(f(1.0), lx.clone()));
        let b = wrap_clamp(Expr::load(2, vec![Expr::Var(0)]), Expr::i64(n));
        let tap = |yi: Expr, xi: Expr, wy: Expr, wx: Expr| {
            let v =
                Expr::Load { operand: 0, index: vec![b.clone(), Expr::Var(1), yi, xi], pad: Some(Scalar::F32(0.0)) };
            Expr::mul(Expr::select(outside.clone(), f(0.0), Expr::mul(wy, wx)), v)
        };
        let t1 = tap(yl.clone(), xl.clone(), hy.clone(), hx.clone());
        let t2 = tap(yl, xh.clone(), hy, lx.clone());
        let t3 = tap(yh.clone(), xl, ly.clone(), hx);
        let t4 = tap(yh, xh, ly, lx);
        let mut domain = out_shape.clone();
        domain.extend([*sampling_ratio, *sampling_ratio]);
        let (body, reduction) = if *max {
            let m = |a, b| Expr::bin(BinaryOp::Max, a, b);
            (
                m(m(t1, t2), m(t3, t4)),
                Reduction { combine: Combine::Max, init: Scalar::F32(f32::NEG_INFINITY), finalize: None },
            )
        } else {
            let fin = Expr::div(Expr::Acc, f(sr * sr));
            (
                Expr::add(Expr::add(t1, t2), Expr::add(t3, t4)),
                Reduction { combine: Combine::Add, init: Scalar::F32(0.0), finalize: Some(fin) },
            )
        };
        self.emit(Kernel {
            name: name.into(),
            domain,
            n_par: 4,
            inputs: vec![x.clone(), rois.clone(), bi.clone()],
            output: out,
            body,
            reduction: Some(reduction),
            origin: Vec::new(),
        });
        Ok(())
    }
}
