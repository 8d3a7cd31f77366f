//! LLVM handles for one module ([`CodeGen`]): element loads and stores by dtype (the narrow
//! types widened to their compute type in registers), loops, the context struct's fields;
//! and the kernel-shaped helpers both backends need.

use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::AddressSpace;

use kiln_abi::context_offsets as off;
use kiln_ir::lir::{Buffer, BufferKind, Expr, Kernel, View};
use kiln_ir::DType;

use crate::BackendError;

/// An LLVM failure (a builder call, a module check) as a [`BackendError`].
pub fn llvm_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Llvm(e.to_string())
}

/// A buffer's offset, which the memory plan (activations) or the weight packing (constants)
/// gives: an error on a program stopped before them (`kiln inspect --after prepack --emit asm`).
fn planned(buf: &kiln_ir::lir::Buffer, what: &'static str) -> BackendResult<u64> {
    buf.offset.ok_or_else(|| BackendError::Unplanned { buffer: buf.name.clone(), what })
}

/// What every code-generation step returns.
pub type BackendResult<T> = Result<T, BackendError>;

/// The LLVM handles for generating one module: a kernel's code is built through these.
pub struct CodeGen<'ctx> {
    /// Owns LLVM's types and constants.
    pub context: &'ctx Context,
    /// The module the functions are added to.
    pub module: Module<'ctx>,
    /// Positioned where the next instruction goes.
    pub builder: Builder<'ctx>,
    /// Whether the target scales by a power of two in one instruction (AVX-512's `vscalef`):
    /// [`crate::math::exp`] then ends in `llvm.ldexp`, which elsewhere is a libm call per
    /// element.
    pub native_ldexp: bool,
}

impl<'ctx> CodeGen<'ctx> {
    pub fn i64(&self, x: i64) -> IntValue<'ctx> {
        self.context.i64_type().const_int(x as u64, true)
    }
    pub fn ptr_ty(&self) -> inkwell::types::PointerType<'ctx> {
        self.context.ptr_type(AddressSpace::default())
    }
    /// The in-register type of a dtype: that of its compute type ([`DType::compute`]), so an
    /// f16 value lives in an f32 register and a u8 in a zero-extended i32 (bool is `i1`).
    pub fn reg_ty(&self, d: DType) -> BasicTypeEnum<'ctx> {
        match d.compute() {
            DType::F64 => self.context.f64_type().into(),
            DType::I32 => self.context.i32_type().into(),
            DType::I64 => self.context.i64_type().into(),
            DType::Bool => self.context.bool_type().into(),
            _ => self.context.f32_type().into(),
        }
    }
    /// The in-memory type of a dtype (bool is one byte; bf16 is its 16 bits).
    pub fn mem_ty(&self, d: DType) -> BasicTypeEnum<'ctx> {
        match d {
            DType::Bool | DType::I8 | DType::U8 => self.context.i8_type().into(),
            // The small types: one byte per element (see `kiln_abi::DTypeCode`).
            d if d.is_small() => self.context.i8_type().into(),
            DType::I16 | DType::U16 | DType::BF16 => self.context.i16_type().into(),
            DType::U32 => self.context.i32_type().into(),
            DType::F16 => self.context.f16_type().into(),
            _ => self.reg_ty(d),
        }
    }

    /// Loads a pointer-sized field of the context.
    pub fn ctx_field(&self, ctx: PointerValue<'ctx>, offset: u64, name: &str) -> BackendResult<PointerValue<'ctx>> {
        let p = unsafe { self.builder.build_gep(self.context.i8_type(), ctx, &[self.i64(offset as i64)], name) }
            .map_err(llvm_err)?;
        Ok(self.builder.build_load(self.ptr_ty(), p, name).map_err(llvm_err)?.into_pointer_value())
    }

    /// The base address of a buffer, computed from the context.
    pub fn buffer_ptr(&self, ctx: PointerValue<'ctx>, buf: &Buffer) -> BackendResult<PointerValue<'ctx>> {
        let (field, index_or_offset, indirect) = match &buf.kind {
            BufferKind::Dims => return self.ctx_field(ctx, off::DIMS, &buf.name),
            BufferKind::Input(i) => (off::INPUTS, *i as u64, true),
            BufferKind::Output(i) => (off::OUTPUTS, *i as u64, true),
            BufferKind::Constant(_) => (off::WEIGHTS, planned(buf, "offset in the weight section")?, false),
            BufferKind::Activation => (off::ARENA, planned(buf, "offset in the arena")?, false),
        };
        let base = self.ctx_field(ctx, field, "base")?;
        if indirect {
            let slot =
                unsafe { self.builder.build_gep(self.ptr_ty(), base, &[self.i64(index_or_offset as i64)], "slot") }
                    .map_err(llvm_err)?;
            Ok(self.builder.build_load(self.ptr_ty(), slot, &buf.name).map_err(llvm_err)?.into_pointer_value())
        } else {
            unsafe {
                self.builder.build_gep(self.context.i8_type(), base, &[self.i64(index_or_offset as i64)], &buf.name)
            }
            .map_err(llvm_err)
        }
    }

    /// `for iv in lo..hi { body(iv) }`, leaving the builder after the loop.
    pub fn for_range(
        &self,
        f: FunctionValue<'ctx>,
        lo: IntValue<'ctx>,
        hi: IntValue<'ctx>,
        body: &mut dyn FnMut(IntValue<'ctx>) -> BackendResult<()>,
    ) -> BackendResult<()> {
        let pre = self.builder.get_insert_block().expect("positioned");
        let header = self.context.append_basic_block(f, "loop");
        let bodyb = self.context.append_basic_block(f, "body");
        let exit = self.context.append_basic_block(f, "exit");
        self.builder.build_unconditional_branch(header).map_err(llvm_err)?;
        self.builder.position_at_end(header);
        let phi = self.builder.build_phi(self.context.i64_type(), "i").map_err(llvm_err)?;
        phi.add_incoming(&[(&lo, pre)]);
        let iv = phi.as_basic_value().into_int_value();
        let cond = self.builder.build_int_compare(inkwell::IntPredicate::SLT, iv, hi, "c").map_err(llvm_err)?;
        self.builder.build_conditional_branch(cond, bodyb, exit).map_err(llvm_err)?;
        self.builder.position_at_end(bodyb);
        body(iv)?;
        let next = self.builder.build_int_nsw_add(iv, self.i64(1), "next").map_err(llvm_err)?;
        let latch = self.builder.get_insert_block().expect("positioned");
        self.builder.build_unconditional_branch(header).map_err(llvm_err)?;
        phi.add_incoming(&[(&next, latch)]);
        self.builder.position_at_end(exit);
        Ok(())
    }

    /// Address of element `index` (already linearized) of a view's buffer.
    pub fn elem_ptr(
        &self,
        base: PointerValue<'ctx>,
        d: DType,
        linear: IntValue<'ctx>,
    ) -> BackendResult<PointerValue<'ctx>> {
        unsafe { self.builder.build_gep(self.mem_ty(d), base, &[linear], "p") }.map_err(llvm_err)
    }

    pub fn load_elem(
        &self,
        base: PointerValue<'ctx>,
        d: DType,
        linear: IntValue<'ctx>,
    ) -> BackendResult<BasicValueEnum<'ctx>> {
        let p = self.elem_ptr(base, d, linear)?;
        let v = self.builder.build_load(self.mem_ty(d), p, "v").map_err(llvm_err)?;
        let b = &self.builder;
        let reg = self.reg_ty(d);
        Ok(match d {
            DType::Bool => {
                let z = self.context.i8_type().const_zero();
                b.build_int_compare(inkwell::IntPredicate::NE, v.into_int_value(), z, "b").map_err(llvm_err)?.into()
            }
            DType::F16 => b.build_float_ext(v.into_float_value(), reg.into_float_type(), "h").map_err(llvm_err)?.into(),
            DType::BF16 => {
                let w = b.build_int_z_extend(v.into_int_value(), self.context.i32_type(), "w").map_err(llvm_err)?;
                let w = b.build_left_shift(w, self.context.i32_type().const_int(16, false), "s").map_err(llvm_err)?;
                b.build_bit_cast(w, reg, "bf").map_err(llvm_err)?
            }
            d if d.minifloat().is_some() => {
                let c = b.build_int_z_extend(v.into_int_value(), self.context.i32_type(), "c").map_err(llvm_err)?;
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
    ) -> BackendResult<()> {
        let p = self.elem_ptr(base, d, linear)?;
        let b = &self.builder;
        let mem = self.mem_ty(d);
        // Registers of storage types hold values already rounded or wrapped to the type
        // (`Cast` does that), so narrowing here is exact.
        let v: BasicValueEnum = match d {
            DType::Bool => {
                b.build_int_z_extend(v.into_int_value(), self.context.i8_type(), "zb").map_err(llvm_err)?.into()
            }
            DType::F16 => {
                b.build_float_trunc(v.into_float_value(), mem.into_float_type(), "h").map_err(llvm_err)?.into()
            }
            DType::BF16 => {
                let w = b.build_bit_cast(v, self.context.i32_type(), "w").map_err(llvm_err)?.into_int_value();
                let w = b
                    .build_right_shift(w, self.context.i32_type().const_int(16, false), false, "s")
                    .map_err(llvm_err)?;
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
        self.builder.build_store(p, v).map_err(llvm_err)?;
        Ok(())
    }

    /// `offset + Σ index[d] * strides[d]` for a view.
    pub fn linear(&self, view: &View, index: &[IntValue<'ctx>]) -> BackendResult<IntValue<'ctx>> {
        let mut acc = self.i64(view.offset);
        for (&ix, &s) in index.iter().zip(&view.strides) {
            if s == 0 {
                continue;
            }
            let t = if s == 1 { ix } else { self.builder.build_int_nsw_mul(ix, self.i64(s), "t").map_err(llvm_err)? };
            acc = self.builder.build_int_nsw_add(acc, t, "lin").map_err(llvm_err)?;
        }
        Ok(acc)
    }
}

/// The mixed-radix number `vars` (digits in `dims`, innermost last) plus one: each digit
/// that reaches its extent wraps to 0 and carries (selects, no division); the outermost one
/// does not wrap.
pub fn increment<'ctx>(
    g: &CodeGen<'ctx>,
    vars: &[IntValue<'ctx>],
    dims: &[usize],
) -> BackendResult<Vec<IntValue<'ctx>>> {
    let b = &g.builder;
    let mut next = vars.to_vec();
    let mut carry = g.context.bool_type().const_int(1, false);
    for d in (0..vars.len()).rev() {
        let inc = b.build_int_z_extend(carry, g.context.i64_type(), "inc").map_err(llvm_err)?;
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
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    domain: &[usize],
    dim: usize,
    vars: &mut Vec<IntValue<'ctx>>,
    leaf: &mut dyn FnMut(&[IntValue<'ctx>]) -> BackendResult<()>,
) -> BackendResult<()> {
    reduce_loops_to(g, f, domain, &[], dim, vars, leaf)
}

/// [`reduce_loops`] where dim `d` ends at `ends[d]` when that is given (an extent decided at
/// run time, at most `domain[d]`).
pub fn reduce_loops_to<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    domain: &[usize],
    ends: &[Option<IntValue<'ctx>>],
    dim: usize,
    vars: &mut Vec<IntValue<'ctx>>,
    leaf: &mut dyn FnMut(&[IntValue<'ctx>]) -> BackendResult<()>,
) -> BackendResult<()> {
    if dim == domain.len() {
        return leaf(vars);
    }
    let mut inner_vars = vars.clone();
    let end = ends.get(dim).copied().flatten().unwrap_or_else(|| g.i64(domain[dim] as i64));
    g.for_range(f, g.i64(0), end, &mut |r| {
        inner_vars[dim] = r;
        let mut vv = inner_vars.clone();
        reduce_loops_to(g, f, domain, ends, dim + 1, &mut vv, leaf)
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
