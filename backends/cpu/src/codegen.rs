//! LIR → LLVM IR: one function per kernel, one entry function calling them in order.

use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::AddressSpace;

use kiln_abi::context_offsets as off;
use kiln_ir::lir::{Buffer, BufferKind, Expr, Instr, Kernel, Program, View};
use kiln_ir::DType;

use crate::expr::Env;
use crate::BackendError;

/// Kernels with less scalar work than this run inline instead of through `parallel_for`.
const PARALLEL_MIN_WORK: usize = 1 << 15;

pub fn llvm_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Llvm(e.to_string())
}

pub type R<T> = Result<T, BackendError>;

/// Shared LLVM handles for one module.
pub struct Gen<'ctx> {
    pub cx: &'ctx Context,
    pub m: Module<'ctx>,
    pub b: Builder<'ctx>,
}

impl<'ctx> Gen<'ctx> {
    pub fn i64(&self, x: i64) -> IntValue<'ctx> {
        self.cx.i64_type().const_int(x as u64, true)
    }
    pub fn ptr_ty(&self) -> inkwell::types::PointerType<'ctx> {
        self.cx.ptr_type(AddressSpace::default())
    }
    /// The in-register type of a dtype: that of its compute type ([`DType::compute`]), so an
    /// f16 value lives in an f32 register and a u8 in a zero-extended i32 (bool is `i1`).
    pub fn reg_ty(&self, d: DType) -> BasicTypeEnum<'ctx> {
        match d.compute() {
            DType::F64 => self.cx.f64_type().into(),
            DType::I32 => self.cx.i32_type().into(),
            DType::I64 => self.cx.i64_type().into(),
            DType::Bool => self.cx.bool_type().into(),
            _ => self.cx.f32_type().into(),
        }
    }
    /// The in-memory type of a dtype (bool is one byte; bf16 is its 16 bits).
    pub fn mem_ty(&self, d: DType) -> BasicTypeEnum<'ctx> {
        match d {
            DType::Bool | DType::I8 | DType::U8 => self.cx.i8_type().into(),
            // The small types: one byte per element (see `kiln_abi::DTypeCode`).
            d if d.is_small() => self.cx.i8_type().into(),
            DType::I16 | DType::U16 | DType::BF16 => self.cx.i16_type().into(),
            DType::U32 => self.cx.i32_type().into(),
            DType::F16 => self.cx.f16_type().into(),
            _ => self.reg_ty(d),
        }
    }

    /// Loads a pointer-sized field of the context.
    fn ctx_field(&self, ctx: PointerValue<'ctx>, offset: u64, name: &str) -> R<PointerValue<'ctx>> {
        let p =
            unsafe { self.b.build_gep(self.cx.i8_type(), ctx, &[self.i64(offset as i64)], name) }.map_err(llvm_err)?;
        Ok(self.b.build_load(self.ptr_ty(), p, name).map_err(llvm_err)?.into_pointer_value())
    }

    /// The base address of a buffer, computed from the context.
    fn buffer_ptr(&self, ctx: PointerValue<'ctx>, buf: &Buffer) -> R<PointerValue<'ctx>> {
        let (field, index_or_offset, indirect) = match &buf.kind {
            BufferKind::Input(i) => (off::INPUTS, *i as u64, true),
            BufferKind::Output(i) => (off::OUTPUTS, *i as u64, true),
            BufferKind::Constant(_) => (off::WEIGHTS, buf.offset.expect("weights packed"), false),
            BufferKind::Activation => (off::ARENA, buf.offset.expect("memory planned"), false),
        };
        let base = self.ctx_field(ctx, field, "base")?;
        if indirect {
            let slot = unsafe { self.b.build_gep(self.ptr_ty(), base, &[self.i64(index_or_offset as i64)], "slot") }
                .map_err(llvm_err)?;
            Ok(self.b.build_load(self.ptr_ty(), slot, &buf.name).map_err(llvm_err)?.into_pointer_value())
        } else {
            unsafe { self.b.build_gep(self.cx.i8_type(), base, &[self.i64(index_or_offset as i64)], &buf.name) }
                .map_err(llvm_err)
        }
    }

    /// `for iv in lo..hi { body(iv) }`, leaving the builder after the loop.
    pub fn for_range(
        &self,
        f: FunctionValue<'ctx>,
        lo: IntValue<'ctx>,
        hi: IntValue<'ctx>,
        body: &mut dyn FnMut(IntValue<'ctx>) -> R<()>,
    ) -> R<()> {
        let pre = self.b.get_insert_block().expect("positioned");
        let header = self.cx.append_basic_block(f, "loop");
        let bodyb = self.cx.append_basic_block(f, "body");
        let exit = self.cx.append_basic_block(f, "exit");
        self.b.build_unconditional_branch(header).map_err(llvm_err)?;
        self.b.position_at_end(header);
        let phi = self.b.build_phi(self.cx.i64_type(), "i").map_err(llvm_err)?;
        phi.add_incoming(&[(&lo, pre)]);
        let iv = phi.as_basic_value().into_int_value();
        let cond = self.b.build_int_compare(inkwell::IntPredicate::SLT, iv, hi, "c").map_err(llvm_err)?;
        self.b.build_conditional_branch(cond, bodyb, exit).map_err(llvm_err)?;
        self.b.position_at_end(bodyb);
        body(iv)?;
        let next = self.b.build_int_nsw_add(iv, self.i64(1), "next").map_err(llvm_err)?;
        let latch = self.b.get_insert_block().expect("positioned");
        self.b.build_unconditional_branch(header).map_err(llvm_err)?;
        phi.add_incoming(&[(&next, latch)]);
        self.b.position_at_end(exit);
        Ok(())
    }

    /// Address of element `index` (already linearized) of a view's buffer.
    pub fn elem_ptr(&self, base: PointerValue<'ctx>, d: DType, linear: IntValue<'ctx>) -> R<PointerValue<'ctx>> {
        unsafe { self.b.build_gep(self.mem_ty(d), base, &[linear], "p") }.map_err(llvm_err)
    }

    pub fn load_elem(&self, base: PointerValue<'ctx>, d: DType, linear: IntValue<'ctx>) -> R<BasicValueEnum<'ctx>> {
        let p = self.elem_ptr(base, d, linear)?;
        let v = self.b.build_load(self.mem_ty(d), p, "v").map_err(llvm_err)?;
        let b = &self.b;
        let reg = self.reg_ty(d);
        Ok(match d {
            DType::Bool => {
                let z = self.cx.i8_type().const_zero();
                b.build_int_compare(inkwell::IntPredicate::NE, v.into_int_value(), z, "b").map_err(llvm_err)?.into()
            }
            DType::F16 => b.build_float_ext(v.into_float_value(), reg.into_float_type(), "h").map_err(llvm_err)?.into(),
            DType::BF16 => {
                let w = b.build_int_z_extend(v.into_int_value(), self.cx.i32_type(), "w").map_err(llvm_err)?;
                let w = b.build_left_shift(w, self.cx.i32_type().const_int(16, false), "s").map_err(llvm_err)?;
                b.build_bit_cast(w, reg, "bf").map_err(llvm_err)?
            }
            d if d.minifloat().is_some() => {
                let c = b.build_int_z_extend(v.into_int_value(), self.cx.i32_type(), "c").map_err(llvm_err)?;
                crate::minifloat::decode(self, d.minifloat().expect("a small float"), c)?.into()
            }
            DType::I8 | DType::I16 | DType::I4 | DType::I2 => {
                b.build_int_s_extend(v.into_int_value(), reg.into_int_type(), "sx").map_err(llvm_err)?.into()
            }
            DType::U8 | DType::U16 | DType::U32 | DType::U4 | DType::U2 => {
                b.build_int_z_extend(v.into_int_value(), reg.into_int_type(), "zx").map_err(llvm_err)?.into()
            }
            _ => v,
        })
    }

    pub fn store_elem(
        &self,
        base: PointerValue<'ctx>,
        d: DType,
        linear: IntValue<'ctx>,
        v: BasicValueEnum<'ctx>,
    ) -> R<()> {
        let p = self.elem_ptr(base, d, linear)?;
        let b = &self.b;
        let mem = self.mem_ty(d);
        // Registers of storage types hold values already rounded or wrapped to the type
        // (`Cast` does that), so narrowing here is exact.
        let v: BasicValueEnum = match d {
            DType::Bool => b.build_int_z_extend(v.into_int_value(), self.cx.i8_type(), "zb").map_err(llvm_err)?.into(),
            DType::F16 => {
                b.build_float_trunc(v.into_float_value(), mem.into_float_type(), "h").map_err(llvm_err)?.into()
            }
            DType::BF16 => {
                let w = b.build_bit_cast(v, self.cx.i32_type(), "w").map_err(llvm_err)?.into_int_value();
                let w =
                    b.build_right_shift(w, self.cx.i32_type().const_int(16, false), false, "s").map_err(llvm_err)?;
                b.build_int_truncate(w, mem.into_int_type(), "bf").map_err(llvm_err)?.into()
            }
            // A small float register holds a value of the format (exactly): encoding is exact.
            d if d.minifloat().is_some() => {
                let f = d.minifloat().expect("a small float");
                let c = crate::minifloat::encode_exact(self, f, v.into_float_value())?;
                b.build_int_truncate(c, mem.into_int_type(), "t").map_err(llvm_err)?.into()
            }
            DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::U32 => {
                b.build_int_truncate(v.into_int_value(), mem.into_int_type(), "t").map_err(llvm_err)?.into()
            }
            DType::I4 | DType::U4 | DType::I2 | DType::U2 => {
                b.build_int_truncate(v.into_int_value(), mem.into_int_type(), "t").map_err(llvm_err)?.into()
            }
            _ => v,
        };
        self.b.build_store(p, v).map_err(llvm_err)?;
        Ok(())
    }

    /// `offset + Σ index[d] * strides[d]` for a view.
    pub fn linear(&self, view: &View, index: &[IntValue<'ctx>]) -> R<IntValue<'ctx>> {
        let mut acc = self.i64(view.offset);
        for (&ix, &s) in index.iter().zip(&view.strides) {
            if s == 0 {
                continue;
            }
            let t = if s == 1 { ix } else { self.b.build_int_nsw_mul(ix, self.i64(s), "t").map_err(llvm_err)? };
            acc = self.b.build_int_nsw_add(acc, t, "lin").map_err(llvm_err)?;
        }
        Ok(acc)
    }
}

/// The mixed-radix number `vars` (digits in `dims`, innermost last) plus one: each digit
/// that reaches its extent wraps to 0 and carries (selects, no division); the outermost one
/// does not wrap.
pub(crate) fn increment<'ctx>(g: &Gen<'ctx>, vars: &[IntValue<'ctx>], dims: &[usize]) -> R<Vec<IntValue<'ctx>>> {
    let b = &g.b;
    let mut next = vars.to_vec();
    let mut carry = g.cx.bool_type().const_int(1, false);
    for d in (0..vars.len()).rev() {
        let inc = b.build_int_z_extend(carry, g.cx.i64_type(), "inc").map_err(llvm_err)?;
        let v = b.build_int_nsw_add(vars[d], inc, "v1").map_err(llvm_err)?;
        next[d] = if d == 0 {
            v
        } else {
            let e = g.i64(dims[d] as i64);
            carry = b.build_int_compare(inkwell::IntPredicate::EQ, v, e, "wrap").map_err(llvm_err)?;
            b.build_select(carry, g.i64(0), v, "v2").map_err(llvm_err)?.into_int_value()
        };
    }
    Ok(next)
}

/// Loops over `domain[dim..]` (the reduction dims), calling `leaf` innermost with `vars`
/// completed by the loop variables.
pub fn reduce_loops<'ctx>(
    g: &Gen<'ctx>,
    f: FunctionValue<'ctx>,
    domain: &[usize],
    dim: usize,
    vars: &mut Vec<IntValue<'ctx>>,
    leaf: &mut dyn FnMut(&[IntValue<'ctx>]) -> R<()>,
) -> R<()> {
    if dim == domain.len() {
        return leaf(vars);
    }
    let mut inner_vars = vars.clone();
    g.for_range(f, g.i64(0), g.i64(domain[dim] as i64), &mut |r| {
        inner_vars[dim] = r;
        let mut vv = inner_vars.clone();
        reduce_loops(g, f, domain, dim + 1, &mut vv, leaf)
    })
}

/// The kernel as the emitter runs it: at least one parallel dimension.
pub fn normalized(k: &Kernel) -> Kernel {
    if k.n_par > 0 {
        return k.clone();
    }
    let mut k = k.clone();
    fn shift(e: Expr) -> Expr {
        e.map(&mut |e| {
            if let Expr::Var(d) = e {
                Expr::Var(d + 1)
            } else {
                e
            }
        })
    }
    k.body = shift(k.body);
    if let Some(r) = &mut k.reduction {
        r.finalize = r.finalize.take().map(shift);
    }
    k.domain.insert(0, 1);
    k.n_par = 1;
    k.output.extents = vec![1];
    k.output.strides = vec![0];
    k
}

/// How the outer parallel loop is cut into tasks.
struct Split {
    n_outer: usize,
    inner: usize,
    chunk: usize,
    n_chunks: usize,
}

impl Split {
    fn of(k: &Kernel) -> Split {
        let n_outer: usize = k.domain[..k.n_par - 1].iter().product();
        let inner = k.domain[k.n_par - 1];
        let (chunk, n_chunks) = if n_outer >= 16 || inner < 256 {
            (inner.max(1), 1)
        } else {
            let want = (16 / n_outer.max(1)).clamp(1, inner / 64);
            let chunk = inner.div_ceil(want).div_ceil(16) * 16;
            (chunk, inner.div_ceil(chunk))
        };
        Split { n_outer, inner, chunk, n_chunks }
    }
    fn tasks(&self) -> usize {
        self.n_outer * self.n_chunks
    }
}

/// Whether a reduction accumulates in the output row (reduction loops outside the innermost
/// parallel loop, which then vectorizes) instead of in a register per output element.
fn accumulate_in_output(k: &Kernel) -> bool {
    let Some(r) = &k.reduction else { return false };
    let inner = k.n_par - 1;
    if k.domain[inner] < 4 || k.output.strides[inner] != 1 {
        return false;
    }
    let ops: Vec<DType> = k.inputs.iter().map(|v| v.dtype).collect();
    let acc_ty = k.body.dtype(&ops, None);
    if acc_ty != k.output.dtype || r.finalize.as_ref().is_some_and(|f| f.dtype(&ops, Some(acc_ty)) != acc_ty) {
        return false;
    }
    // Loads whose innermost index steps with the innermost parallel variable (the parallel
    // loop then vectorizes), and loads whose innermost index steps with a reduction variable
    // alone (a row reduction: softmax's sum of `exp(x − max)`, which also reads the max along
    // the parallel dim; the reduction loop then vectorizes, its adds being reassociable).
    let (mut along_par, mut along_red) = (false, false);
    k.body.visit(&mut |e| {
        if let Expr::Load { index, .. } = e {
            if let Some(last) = index.last() {
                let (mut par, mut red) = (false, false);
                last.visit(&mut |x| match x {
                    Expr::Var(d) if *d == inner => par = true,
                    Expr::Var(d) if *d >= k.n_par => red = true,
                    _ => {}
                });
                along_par |= par;
                along_red |= red && !par;
            }
        }
    });
    along_par && !along_red
}

/// The distinct buffers of a kernel in first-use order (operands, then the output): the body
/// takes one base pointer per buffer, so that an in-place kernel reads and writes through one
/// pointer and distinct pointers never overlap. Returns the buffers and each
/// operand's slot among them, the output's last.
pub fn slots(k: &Kernel) -> (Vec<kiln_ir::lir::BufferId>, Vec<usize>) {
    let mut bufs = Vec::new();
    let slot = k
        .inputs
        .iter()
        .chain([&k.output])
        .map(|v| match bufs.iter().position(|&b| b == v.buffer) {
            Some(i) => i,
            None => {
                bufs.push(v.buffer);
                bufs.len() - 1
            }
        })
        .collect();
    (bufs, slot)
}

/// The type of a kernel body: one base pointer per distinct buffer ([`slots`]), then the
/// task range `start, end`.
fn body_type<'ctx>(g: &Gen<'ctx>, k: &Kernel) -> inkwell::types::FunctionType<'ctx> {
    let mut params: Vec<inkwell::types::BasicMetadataTypeEnum> = vec![g.ptr_ty().into(); slots(k).0.len()];
    let i64t: inkwell::types::BasicMetadataTypeEnum = g.cx.i64_type().into();
    params.extend([i64t, i64t]);
    g.cx.void_type().fn_type(&params, false)
}

/// A kernel instance: `void name(const Context*, i64 start, i64 end)` finds its buffers in the
/// context and calls the kernel's body, which knows nothing of where its buffers live (so
/// that kernels differing only in their buffers share one compiled body).
fn gen_wrapper<'ctx>(
    g: &Gen<'ctx>,
    prog: &Program,
    k: &Kernel,
    name: &str,
    body: FunctionValue<'ctx>,
) -> R<FunctionValue<'ctx>> {
    let f = g.m.add_function(name, function_type(g), Some(Linkage::Internal));
    let entry = g.cx.append_basic_block(f, "entry");
    g.b.position_at_end(entry);
    let ctx = f.get_nth_param(0).unwrap().into_pointer_value();
    let mut args: Vec<inkwell::values::BasicMetadataValueEnum> = Vec::new();
    for b in slots(k).0 {
        args.push(g.buffer_ptr(ctx, prog.buffer(b))?.into());
    }
    args.push(f.get_nth_param(1).unwrap().into());
    args.push(f.get_nth_param(2).unwrap().into());
    g.b.build_call(body, &args, "").map_err(llvm_err)?;
    g.b.build_return(None).map_err(llvm_err)?;
    Ok(f)
}

/// Emits a kernel's body (see [`body_type`]).
fn gen_body<'ctx>(
    g: &Gen<'ctx>,
    k: &Kernel,
    name: &str,
    gemm: Option<&crate::gemm::Gemm>,
    vector_bits: usize,
    linkage: Linkage,
) -> R<FunctionValue<'ctx>> {
    let k = normalized(k);
    let cx = g.cx;
    let f = g.m.add_function(name, body_type(g, &k), Some(linkage));
    if linkage != Linkage::Internal {
        // Shared between the objects of one library, never exported from it.
        f.as_global_value().set_visibility(inkwell::GlobalVisibility::Hidden);
    }
    // Kernels stay functions of their own: inlining thousands of small kernels (an unrolled
    // recurrent layer) into the entry function makes one huge function that LLVM optimizes
    // in superlinear time, for no gain (each kernel is a loop nest behind one call).
    let noinline = cx.create_enum_attribute(inkwell::attributes::Attribute::get_named_enum_kind_id("noinline"), 0);
    f.add_attribute(inkwell::attributes::AttributeLoc::Function, noinline);
    // LLVM's tuning for several AVX-512 CPUs prefers 256-bit vectors in loops it vectorizes;
    // kernels are long, hot loops that gain from the full width (depthwise convolutions and
    // elementwise chains measured about 1.3x faster at 512 bits).
    let width = cx.create_string_attribute("prefer-vector-width", &vector_bits.to_string());
    f.add_attribute(inkwell::attributes::AttributeLoc::Function, width);
    let entry = cx.append_basic_block(f, "entry");
    g.b.position_at_end(entry);
    // One pointer per distinct buffer: an in-place kernel reads and writes through the same
    // pointer, which LLVM sees is the same element (no runtime overlap check that fails and
    // sends the loop to its scalar version). Parameters are not marked `noalias`: with it,
    // LLVM 22 vectorized a padded max-pool reduction kept in registers into wrong results.
    let (bufs, slot) = slots(&k);
    let n = bufs.len();
    let param = |i: usize| f.get_nth_param(i as u32).unwrap().into_pointer_value();
    let in_bases: Vec<PointerValue> = slot[..k.inputs.len()].iter().map(|&i| param(i)).collect();
    let out_base = param(slot[k.inputs.len()]);
    let start = f.get_nth_param(n as u32).unwrap().into_int_value();
    let end = f.get_nth_param(n as u32 + 1).unwrap().into_int_value();
    if let Some(p) = gemm {
        crate::gemm::gen_gemm(g, &k, p, f, &in_bases, out_base, (start, end))?;
        g.b.build_return(None).map_err(llvm_err)?;
        return Ok(f);
    }
    let ops: Vec<DType> = k.inputs.iter().map(|v| v.dtype).collect();
    let acc_ty = k.body.dtype(&ops, None);
    let acc_slot = g.b.build_alloca(g.reg_ty(acc_ty), "acc").map_err(llvm_err)?;
    let split = Split::of(&k);
    let np = k.n_par;
    let lanes = vector_bits / 32;
    let vector_rows = gemm.is_none() && crate::vector::row_ok(&k, lanes);
    let outer_in_output = accumulate_in_output(&k);
    let env = Env { k: &k, bases: &in_bases };

    // With whole rows per task, the outer variables are decomposed from `start` once and then
    // stepped with carries from task to task, instead of two divisions per dim per task (which
    // dominated kernels with a short innermost dim: a padded copy of a 3-channel image).
    let stepped = split.n_chunks == 1 && np >= 2;
    let var_slots: Vec<PointerValue> = if stepped {
        (0..np - 1).map(|_| crate::vector::entry_alloca(g, f, g.cx.i64_type())).collect::<R<_>>()?
    } else {
        Vec::new()
    };
    if stepped {
        let b = &g.b;
        let mut rest = start;
        for d in (0..np - 1).rev() {
            let v = if d == 0 {
                rest
            } else {
                let e = g.i64(k.domain[d] as i64);
                let v = b.build_int_signed_rem(rest, e, "p").map_err(llvm_err)?;
                rest = b.build_int_signed_div(rest, e, "q").map_err(llvm_err)?;
                v
            };
            b.build_store(var_slots[d], v).map_err(llvm_err)?;
        }
    }
    g.for_range(f, start, end, &mut |t| {
        let b = &g.b;
        let nc = g.i64(split.n_chunks as i64);
        let (l, c) = if split.n_chunks == 1 {
            (t, g.i64(0))
        } else {
            (
                b.build_int_signed_div(t, nc, "L").map_err(llvm_err)?,
                b.build_int_signed_rem(t, nc, "C").map_err(llvm_err)?,
            )
        };
        let jlo = b.build_int_nsw_mul(c, g.i64(split.chunk as i64), "jlo").map_err(llvm_err)?;
        let jhi0 = b.build_int_nsw_add(jlo, g.i64(split.chunk as i64), "jhi0").map_err(llvm_err)?;
        let inner = g.i64(split.inner as i64);
        let lt = b.build_int_compare(inkwell::IntPredicate::SLT, jhi0, inner, "lt").map_err(llvm_err)?;
        let jhi = b.build_select(lt, jhi0, inner, "jhi").map_err(llvm_err)?.into_int_value();
        // The leading parallel variables of the outer linear index.
        let mut vars: Vec<IntValue> = vec![g.i64(0); k.domain.len()];
        if stepped {
            for d in 0..np - 1 {
                vars[d] = b.build_load(g.cx.i64_type(), var_slots[d], "v").map_err(llvm_err)?.into_int_value();
            }
        } else {
            let mut rest = l;
            for d in (0..np - 1).rev() {
                let e = g.i64(k.domain[d] as i64);
                if d == 0 {
                    vars[d] = rest;
                } else {
                    vars[d] = b.build_int_signed_rem(rest, e, "p").map_err(llvm_err)?;
                    rest = b.build_int_signed_div(rest, e, "q").map_err(llvm_err)?;
                }
            }
        }
        let task = || -> R<()> {
            let out_index = |vars: &[IntValue<'ctx>]| g.linear(&k.output, &vars[..np]);
            // One output element per lane `j` of `lo..hi`, its reduction (if any) in a register.
            let mut scalar = |lo: IntValue<'ctx>, hi: IntValue<'ctx>| -> R<()> {
                g.for_range(f, lo, hi, &mut |j| {
                    let mut vs = vars.clone();
                    vs[np - 1] = j;
                    let Some(red) = &k.reduction else {
                        let v = env.gen(g, &k.body, &vs, None)?;
                        return g.store_elem(out_base, k.output.dtype, out_index(&vs)?, v);
                    };
                    let init = crate::expr::scalar(g, red.init, acc_ty)?;
                    g.b.build_store(acc_slot, init).map_err(llvm_err)?;
                    reduce_loops(g, f, &k.domain, np, &mut vs.clone(), &mut |rvars| {
                        let x = env.gen(g, &k.body, rvars, None)?;
                        let cur = g.b.build_load(g.reg_ty(acc_ty), acc_slot, "a").map_err(llvm_err)?;
                        let nv = crate::expr::combine(g, red.combine, cur, x)?;
                        g.b.build_store(acc_slot, nv).map_err(llvm_err)?;
                        Ok(())
                    })?;
                    let acc = g.b.build_load(g.reg_ty(acc_ty), acc_slot, "a").map_err(llvm_err)?;
                    let v = match &red.finalize {
                        Some(fin) => env.gen(g, fin, &vs, Some(acc))?,
                        None => acc,
                    };
                    g.store_elem(out_base, k.output.dtype, out_index(&vs)?, v)
                })
            };
            if vector_rows {
                let row = crate::vector::Row { g, f, k: &k, bases: &in_bases, out_base, vars: &vars };
                return crate::vector::gen_row(&row, (jlo, jhi), lanes, &mut scalar);
            }
            let Some(red) = &k.reduction else { return scalar(jlo, jhi) };
            if outer_in_output {
                // out[j] = init; for r: for j: out[j] = out[j] ⊕ body; for j: out[j] = finalize(out[j])
                let init = crate::expr::scalar(g, red.init, acc_ty)?;
                g.for_range(f, jlo, jhi, &mut |j| {
                    let mut vs = vars.clone();
                    vs[np - 1] = j;
                    g.store_elem(out_base, k.output.dtype, out_index(&vs)?, init)
                })?;
                let mut rv = vars.clone();
                reduce_loops(g, f, &k.domain, np, &mut rv, &mut |rvars| {
                    g.for_range(f, jlo, jhi, &mut |j| {
                        let mut vs = rvars.to_vec();
                        vs[np - 1] = j;
                        let x = env.gen(g, &k.body, &vs, None)?;
                        let at = out_index(&vs)?;
                        let cur = g.load_elem(out_base, k.output.dtype, at)?;
                        let nv = crate::expr::combine(g, red.combine, cur, x)?;
                        g.store_elem(out_base, k.output.dtype, at, nv)
                    })
                })?;
                if let Some(fin) = &red.finalize {
                    g.for_range(f, jlo, jhi, &mut |j| {
                        let mut vs = vars.clone();
                        vs[np - 1] = j;
                        let at = out_index(&vs)?;
                        let cur = g.load_elem(out_base, k.output.dtype, at)?;
                        let v = env.gen(g, fin, &vs, Some(cur))?;
                        g.store_elem(out_base, k.output.dtype, at, v)
                    })?;
                }
                return Ok(());
            }
            scalar(jlo, jhi)
        };
        task()?;
        if stepped {
            // The next task's variables: the innermost outer one plus one, carried outwards.
            let next = increment(g, &vars[..np - 1], &k.domain[..np - 1])?;
            for (slot, v) in var_slots.iter().zip(next) {
                b.build_store(*slot, v).map_err(llvm_err)?;
            }
        }
        Ok(())
    })?;
    g.b.build_return(None).map_err(llvm_err)?;
    Ok(f)
}

/// What the entry function needs to know of a kernel, decided before any LLVM work.
#[derive(Debug)]
pub(crate) struct KernelPlan {
    /// Index of the kernel's instruction in the program.
    pub instr: usize,
    pub gemm: Option<crate::gemm::Gemm>,
    /// Tasks of its parallel loop.
    pub tasks: usize,
    pub work: usize,
    /// The target's widest vector, in bits: loops vectorize at this width.
    pub vector_bits: usize,
}

impl KernelPlan {
    /// The kernel instance's symbol (unique in the library).
    pub fn symbol(&self) -> String {
        format!("kiln_k{}", self.instr)
    }
}

/// The kernel with its name erased and its operands' buffers replaced by their slots
/// ([`slots`]): what its body's code depends on (which operands share a buffer included).
pub(crate) fn body_of(k: &Kernel) -> Kernel {
    let mut k = k.clone();
    k.name.clear();
    let (_, slot) = slots(&k);
    for (v, &s) in k.inputs.iter_mut().chain([&mut k.output]).zip(&slot) {
        v.buffer = kiln_ir::lir::BufferId(s as u32);
    }
    k
}

/// The plan of every kernel of the program, in order.
pub(crate) fn plan_kernels(prog: &Program, target: &crate::CpuTarget) -> Vec<KernelPlan> {
    let blocking = crate::gemm::Blocking::for_target(target);
    prog.instrs
        .iter()
        .enumerate()
        .filter_map(|(i, ins)| {
            let Instr::Kernel(k) = ins else { return None };
            let gemm = crate::gemm::match_gemm(k, blocking);
            let tasks = match &gemm {
                Some(p) => p.tasks(),
                None => Split::of(&normalized(k)).tasks(),
            };
            Some(KernelPlan { instr: i, gemm, tasks, work: k.work(), vector_bits: blocking.w * 32 })
        })
        .collect()
}

fn function_type<'ctx>(g: &Gen<'ctx>) -> inkwell::types::FunctionType<'ctx> {
    g.cx.void_type().fn_type(&[g.ptr_ty().into(), g.cx.i64_type().into(), g.cx.i64_type().into()], false)
}

/// A module defining one kernel body, external and hidden, named `symbol`, to be linked
/// with the entry module of [`build_entry_module`].
pub(crate) fn build_body_module<'ctx>(
    cx: &'ctx Context,
    k: &Kernel,
    plan: &KernelPlan,
    symbol: &str,
) -> R<Module<'ctx>> {
    let g = Gen { cx, m: cx.create_module("kiln_kernel"), b: cx.create_builder() };
    // Weak: a body is named by the hash of what its code depends on, so two models linked
    // into one program (static libraries) may both define it, identically.
    gen_body(&g, &body_of(k), symbol, plan.gemm.as_ref(), plan.vector_bits, Linkage::WeakODR)
        .map_err(|e| BackendError::Kernel { kernel: k.name.clone(), message: e.to_string() })?;
    Ok(g.m)
}

/// The names of a module's exported symbols: `<prefix>_entry` and `<prefix>_abi_version`
/// (`kiln_entry`, `kiln_abi_version` in a `.kiln` artifact; a static library takes the
/// model's name, so that several models link into one program).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryNames {
    pub entry: String,
    pub abi_version: String,
}

impl EntryNames {
    pub fn with_prefix(prefix: &str) -> EntryNames {
        EntryNames { entry: format!("{prefix}_entry"), abi_version: format!("{prefix}_abi_version") }
    }
}

impl Default for EntryNames {
    fn default() -> Self {
        EntryNames { entry: kiln_abi::ENTRY_SYMBOL.into(), abi_version: kiln_abi::ABI_VERSION_SYMBOL.into() }
    }
}

/// The module with the ABI version, one wrapper per kernel instance (calling its body,
/// declared here as `bodies[i]` and defined in another module) and the entry point.
pub(crate) fn build_entry_module<'ctx>(
    cx: &'ctx Context,
    prog: &Program,
    plans: &[KernelPlan],
    bodies: &[String],
    names: &EntryNames,
) -> R<Module<'ctx>> {
    let g = Gen { cx, m: cx.create_module("kiln"), b: cx.create_builder() };
    let mut fns = Vec::new();
    for (p, sym) in plans.iter().zip(bodies) {
        let Instr::Kernel(k) = &prog.instrs[p.instr] else { unreachable!("plans are of kernels") };
        let body = match g.m.get_function(sym) {
            Some(f) => f,
            None => g.m.add_function(sym, body_type(&g, &normalized(k)), Some(Linkage::External)),
        };
        fns.push(gen_wrapper(&g, prog, k, &p.symbol(), body)?);
    }
    gen_entry(&g, prog, plans, &fns, names)?;
    Ok(g.m)
}

/// Builds one LLVM module for a memory-planned program: every kernel and the entry (what
/// `--emit llvm|asm` shows).
///
/// `target` chooses the vector width of the register-blocked matrix products.
pub fn build_module<'ctx>(cx: &'ctx Context, prog: &Program, target: &crate::CpuTarget) -> R<Module<'ctx>> {
    let g = Gen { cx, m: cx.create_module("kiln"), b: cx.create_builder() };
    let plans = plan_kernels(prog, target);
    let mut fns = Vec::new();
    for p in &plans {
        let Instr::Kernel(k) = &prog.instrs[p.instr] else { unreachable!("plans are of kernels") };
        let body = gen_body(&g, k, &format!("k{}.body", p.instr), p.gemm.as_ref(), p.vector_bits, Linkage::Internal)
            .map_err(|e| BackendError::Kernel { kernel: k.name.clone(), message: e.to_string() })?;
        fns.push(gen_wrapper(&g, prog, k, &format!("k{}", p.instr), body)?);
    }
    gen_entry(&g, prog, &plans, &fns, &EntryNames::default())?;
    Ok(g.m)
}

/// The ABI version global and `kiln_entry`: the instructions in order, each kernel through
/// `parallel_for` when it is big enough.
fn gen_entry<'ctx>(
    g: &Gen<'ctx>,
    prog: &Program,
    plans: &[KernelPlan],
    fns: &[FunctionValue<'ctx>],
    names: &EntryNames,
) -> R<()> {
    let cx = g.cx;
    let ver = g.m.add_global(cx.i32_type(), None, &names.abi_version);
    ver.set_initializer(&cx.i32_type().const_int(kiln_abi::ABI_MAJOR as u64, false));
    ver.set_constant(true);
    let kernels: Vec<(usize, FunctionValue, usize, usize)> =
        plans.iter().zip(fns).map(|(p, &f)| (p.instr, f, p.tasks, p.work)).collect();

    let entry_ty = cx.i32_type().fn_type(&[g.ptr_ty().into()], false);
    let entry = g.m.add_function(&names.entry, entry_ty, None);
    let bb = cx.append_basic_block(entry, "entry");
    g.b.position_at_end(bb);
    let ctx = entry.get_nth_param(0).unwrap().into_pointer_value();
    let pf_ty =
        cx.void_type().fn_type(&[g.ptr_ty().into(), g.ptr_ty().into(), g.ptr_ty().into(), cx.i64_type().into()], false);
    let mut kit = kernels.into_iter().peekable();
    let mut asserts = 0;
    for (i, ins) in prog.instrs.iter().enumerate() {
        match ins {
            Instr::Assert { buffer, .. } => {
                asserts += 1;
                let p = g.buffer_ptr(ctx, prog.buffer(*buffer))?;
                let v = g.b.build_load(cx.i64_type(), p, "bad").map_err(llvm_err)?.into_int_value();
                let failed =
                    g.b.build_int_compare(inkwell::IntPredicate::NE, v, g.i64(0), "failed").map_err(llvm_err)?;
                let fail = cx.append_basic_block(entry, "assert_failed");
                let next = cx.append_basic_block(entry, "assert_ok");
                g.b.build_conditional_branch(failed, fail, next).map_err(llvm_err)?;
                g.b.position_at_end(fail);
                g.b.build_return(Some(&cx.i32_type().const_int(asserts, false))).map_err(llvm_err)?;
                g.b.position_at_end(next);
            }
            Instr::Kernel(_) => {
                let (_, f, tasks, work) = kit.next().expect("one function per kernel");
                if tasks == 0 {
                    continue;
                }
                if tasks >= 2 && work >= PARALLEL_MIN_WORK {
                    let rt = g.ctx_field(ctx, off::RUNTIME, "rt")?;
                    let pf = g.ctx_field(ctx, off::PARALLEL_FOR, "pf")?;
                    let fp = f.as_global_value().as_pointer_value();
                    g.b.build_indirect_call(
                        pf_ty,
                        pf,
                        &[rt.into(), fp.into(), ctx.into(), g.i64(tasks as i64).into()],
                        "",
                    )
                    .map_err(llvm_err)?;
                } else {
                    g.b.build_call(f, &[ctx.into(), g.i64(0).into(), g.i64(tasks as i64).into()], "")
                        .map_err(llvm_err)?;
                }
            }
            Instr::Copy { dst, dst_offset, src, src_offset, bytes } => {
                let _ = i;
                let d = g.buffer_ptr(ctx, prog.buffer(*dst))?;
                let s = g.buffer_ptr(ctx, prog.buffer(*src))?;
                let d =
                    unsafe { g.b.build_gep(cx.i8_type(), d, &[g.i64(*dst_offset as i64)], "d") }.map_err(llvm_err)?;
                let s =
                    unsafe { g.b.build_gep(cx.i8_type(), s, &[g.i64(*src_offset as i64)], "s") }.map_err(llvm_err)?;
                g.b.build_memmove(d, 1, s, 1, g.i64(*bytes as i64)).map_err(llvm_err)?;
            }
        }
    }
    g.b.build_return(Some(&cx.i32_type().const_zero())).map_err(llvm_err)?;
    Ok(())
}
