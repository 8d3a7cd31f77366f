//! LIR: an address-only program.
//!
//! A [`Program`] is a list of [`Buffer`]s and an ordered list of [`Instr`]s. Buffers are
//! roots of memory: a graph input, a graph output, a constant, or an arena-planned
//! activation. Instructions read and write [`View`]s of buffers (buffer, element offset,
//! extents, element strides). No instruction names an SSA value or infers a shape.
//!
//! A kernel instruction carries a compute definition ([`Kernel`]): an iteration domain,
//! a scalar body over loads of its operands, and an optional reduction. Backends turn it
//! into loops; nothing about it is specific to one op.

use std::fmt;

use crate::minifloat::E8M0Round;
use crate::op::{BinaryOp, CmpOp, UnaryOp};
use crate::{DType, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub u32);

impl fmt::Display for BufferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum BufferKind {
    /// The i-th graph input (caller-owned, read-only).
    Input(usize),
    /// The i-th graph output (caller-owned, written).
    Output(usize),
    /// Constant data, placed in the artifact's weight section.
    Constant(Tensor),
    /// Scratch memory, placed in the arena by memory planning.
    Activation,
    /// The run-time dims array (`Context::dims`, i64 elements, one per slot): a kernel that
    /// masks its work to a size set at run time reads it.
    Dims,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    pub kind: BufferKind,
    /// Size in bytes.
    pub bytes: usize,
    /// A name for messages and the text form.
    pub name: String,
    /// Byte offset: in the arena for activations, in the weight section for constants.
    /// Set by memory planning / weight packing.
    pub offset: Option<u64>,
    /// The value was fused into its consumer by the HIR fuse pass: LIR fusion merges the
    /// producing kernel into the consuming one where the two compose.
    pub fused: bool,
    /// The axes of the value the buffer holds that a run sizes, outermost first: `bytes` is
    /// sized at their bounds (the value laid out row-major at its bound shape), and a run
    /// computes and reads only the elements whose index along each is below its
    /// `dims[slot]`. A leading axis (`stride · bound == bytes`) is the run's rows. Set by
    /// lowering (`kiln_passes::rows`).
    pub rows: Vec<RowDim>,
}

/// An axis of a buffer that a run sizes: its dim slot, its bound, and the bytes from one of
/// its indices to the next. Element byte `o` of the buffer has index `(o / stride) % bound`
/// along it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowDim {
    pub slot: u32,
    pub bound: u64,
    pub stride: u64,
}

impl RowDim {
    /// The leading axis of a buffer of `bytes`: its rows.
    pub fn leading(slot: u32, bound: u64, bytes: u64) -> RowDim {
        RowDim { slot, bound, stride: bytes / bound.max(1) }
    }
    /// Whether this is the leading axis of a buffer of `bytes`.
    pub fn is_leading(&self, bytes: u64) -> bool {
        self.stride * self.bound == bytes
    }
}

impl Buffer {
    /// The buffer's leading run-time axis, when that is its only one: its rows.
    pub fn leading_rows(&self) -> Option<RowDim> {
        match self.rows.as_slice() {
            [r] if r.is_leading(self.bytes as u64) => Some(*r),
            _ => None,
        }
    }
}

/// A domain dim of a kernel that runs only to `dims[slot] · per` of its extent (`bound ·
/// per`): the indices of its operands' run-time axes that a run uses. The entry function
/// cuts a kernel's tasks to those of a parallel one (a task's block may run past them, over
/// elements no one reads); a reduction one is masked in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Clamp {
    pub slot: u32,
    pub per: u64,
}

/// A strided window of a buffer: element `idx` lives at element
/// `offset + Σ idx[d] * strides[d]` of the buffer, for `0 <= idx[d] < extents[d]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct View {
    pub buffer: BufferId,
    pub dtype: DType,
    pub offset: i64,
    pub extents: Vec<usize>,
    pub strides: Vec<i64>,
}

impl View {
    /// A dense row-major view of a whole buffer.
    pub fn dense(buffer: BufferId, dtype: DType, shape: &[usize]) -> View {
        View {
            buffer,
            dtype,
            offset: 0,
            extents: shape.to_vec(),
            strides: crate::strides_of(shape).into_iter().map(|s| s as i64).collect(),
        }
    }
    pub fn numel(&self) -> usize {
        self.extents.iter().product()
    }
    /// True when the view covers elements `0..numel` in row-major order.
    pub fn is_dense(&self) -> bool {
        self.offset == 0
            && crate::strides_of(&self.extents)
                .iter()
                .zip(&self.strides)
                .zip(&self.extents)
                .all(|((&s, &t), &e)| e == 1 || s as i64 == t)
    }
}

/// A scalar constant in a kernel body.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    F32(f32),
    F64(f64),
    I32(i32),
    I64(i64),
    Bool(bool),
}

impl Scalar {
    pub fn dtype(self) -> DType {
        match self {
            Scalar::F32(_) => DType::F32,
            Scalar::F64(_) => DType::F64,
            Scalar::I32(_) => DType::I32,
            Scalar::I64(_) => DType::I64,
            Scalar::Bool(_) => DType::Bool,
        }
    }
    /// `x` converted to `dtype` (saturating for integers). Storage-only types give a scalar
    /// of their compute type ([`DType::compute`]); the code generator converts it.
    pub fn of(dtype: DType, x: f64) -> Scalar {
        match dtype.compute() {
            DType::F64 => Scalar::F64(x),
            DType::I32 => Scalar::I32(x as i32),
            DType::I64 => Scalar::I64(x as i64),
            DType::Bool => Scalar::Bool(x != 0.0),
            _ => Scalar::F32(x as f32),
        }
    }
    /// The smallest (`lowest`) or largest value of a dtype, for max/min reductions.
    pub fn extreme(dtype: DType, lowest: bool) -> Scalar {
        let int = |lo: i64, hi: i64| Scalar::of(dtype, if lowest { lo as f64 } else { hi as f64 });
        match (dtype, lowest) {
            (DType::I64, true) => Scalar::I64(i64::MIN),
            (DType::I64, false) => Scalar::I64(i64::MAX),
            (DType::Bool, lowest) => Scalar::Bool(!lowest),
            (DType::I32, _) => int(i32::MIN.into(), i32::MAX.into()),
            (DType::I8, _) => int(i8::MIN.into(), i8::MAX.into()),
            (DType::U8, _) => int(0, u8::MAX.into()),
            (DType::I16, _) => int(i16::MIN.into(), i16::MAX.into()),
            (DType::U16, _) => int(0, u16::MAX.into()),
            (DType::U32, _) => int(0, u32::MAX.into()),
            // u64 is computed on its i64 bits: the extremes are 0 and all ones (-1).
            (DType::U64, _) => Scalar::I64(if lowest { 0 } else { -1 }),
            (d, true) => Scalar::of(d, f64::NEG_INFINITY),
            (d, false) => Scalar::of(d, f64::INFINITY),
        }
    }
}

/// A scalar expression: the body of a kernel.
///
/// Index arithmetic is `i64`. Types follow the operands; [`Expr::dtype`] computes them.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// Iteration variable `d` of the kernel's domain (i64).
    Var(usize),
    Const(Scalar),
    /// An element of operand `operand`: one index expression per view dimension. With
    /// `pad`, an index outside the view's extents yields `pad` instead of reading memory.
    Load {
        operand: usize,
        index: Vec<Expr>,
        pad: Option<Scalar>,
    },
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// `cond ? a : b`
    Select(Box<Expr>, Box<Expr>, Box<Expr>),
    /// Conversion to a dtype, with `saturate` and the E8M0 rounding (see `Op::Cast`).
    Cast(DType, bool, E8M0Round, Box<Expr>),
    /// The accumulated value; only inside a reduction's `finalize`.
    Acc,
}

impl Expr {
    pub fn var(d: usize) -> Expr {
        Expr::Var(d)
    }
    pub fn i64(x: i64) -> Expr {
        Expr::Const(Scalar::I64(x))
    }
    pub fn f32(x: f32) -> Expr {
        Expr::Const(Scalar::F32(x))
    }
    pub fn load(operand: usize, index: Vec<Expr>) -> Expr {
        Expr::Load { operand, index, pad: None }
    }
    pub fn unary(op: UnaryOp, a: Expr) -> Expr {
        Expr::Unary(op, Box::new(a))
    }
    pub fn bin(op: BinaryOp, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }
    pub fn cmp(op: CmpOp, a: Expr, b: Expr) -> Expr {
        Expr::Cmp(op, Box::new(a), Box::new(b))
    }
    pub fn select(c: Expr, a: Expr, b: Expr) -> Expr {
        Expr::Select(Box::new(c), Box::new(a), Box::new(b))
    }
    /// A saturating cast.
    pub fn cast(to: DType, a: Expr) -> Expr {
        Expr::Cast(to, true, E8M0Round::Up, Box::new(a))
    }
    pub fn cast_with(to: DType, saturate: bool, round: E8M0Round, a: Expr) -> Expr {
        Expr::Cast(to, saturate, round, Box::new(a))
    }
    #[allow(clippy::should_implement_trait)]
    pub fn add(a: Expr, b: Expr) -> Expr {
        Expr::bin(BinaryOp::Add, a, b)
    }
    #[allow(clippy::should_implement_trait)]
    pub fn mul(a: Expr, b: Expr) -> Expr {
        Expr::bin(BinaryOp::Mul, a, b)
    }
    #[allow(clippy::should_implement_trait)]
    pub fn sub(a: Expr, b: Expr) -> Expr {
        Expr::bin(BinaryOp::Sub, a, b)
    }
    #[allow(clippy::should_implement_trait)]
    pub fn div(a: Expr, b: Expr) -> Expr {
        Expr::bin(BinaryOp::Div, a, b)
    }

    /// The expression's element type, given the operands' dtypes and the accumulator's.
    pub fn dtype(&self, operands: &[DType], acc: Option<DType>) -> DType {
        match self {
            Expr::Var(_) => DType::I64,
            Expr::Const(s) => s.dtype(),
            Expr::Load { operand, .. } => operands[*operand],
            Expr::Unary(_, a) => a.dtype(operands, acc),
            Expr::Binary(_, a, _) => a.dtype(operands, acc),
            Expr::Cmp(..) => DType::Bool,
            Expr::Select(_, a, _) => a.dtype(operands, acc),
            Expr::Cast(t, _, _, _) => *t,
            Expr::Acc => acc.expect("Expr::Acc outside a reduction finalizer"),
        }
    }

    /// Calls `f` on every sub-expression, pre-order.
    pub fn visit(&self, f: &mut impl FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Var(_) | Expr::Const(_) | Expr::Acc => {}
            Expr::Load { index, .. } => index.iter().for_each(|e| e.visit(f)),
            Expr::Unary(_, a) | Expr::Cast(_, _, _, a) => a.visit(f),
            Expr::Binary(_, a, b) | Expr::Cmp(_, a, b) => {
                a.visit(f);
                b.visit(f);
            }
            Expr::Select(c, a, b) => {
                c.visit(f);
                a.visit(f);
                b.visit(f);
            }
        }
    }

    /// Rebuilds the expression bottom-up, replacing each node by `f(node)`.
    pub fn map(self, f: &mut impl FnMut(Expr) -> Expr) -> Expr {
        let e = match self {
            Expr::Load { operand, index, pad } => {
                Expr::Load { operand, index: index.into_iter().map(|e| e.map(f)).collect(), pad }
            }
            Expr::Unary(op, a) => Expr::Unary(op, Box::new(a.map(f))),
            Expr::Cast(t, s, r, a) => Expr::Cast(t, s, r, Box::new(a.map(f))),
            Expr::Binary(op, a, b) => Expr::Binary(op, Box::new(a.map(f)), Box::new(b.map(f))),
            Expr::Cmp(op, a, b) => Expr::Cmp(op, Box::new(a.map(f)), Box::new(b.map(f))),
            Expr::Select(c, a, b) => Expr::Select(Box::new(c.map(f)), Box::new(a.map(f)), Box::new(b.map(f))),
            leaf => leaf,
        };
        f(e)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Combine {
    Add,
    Mul,
    Max,
    Min,
}

/// How a kernel reduces over its reduction dimensions.
#[derive(Clone, Debug, PartialEq)]
pub struct Reduction {
    pub combine: Combine,
    pub init: Scalar,
    /// Applied to the accumulated value ([`Expr::Acc`]) before the store; may load operands
    /// at the parallel indices (bias, residual, scale) for fused epilogues.
    pub finalize: Option<Expr>,
}

/// A compute definition: `for p in domain[..n_par]: out[p] = reduce_{r in domain[n_par..]} body(p, r)`.
///
/// Without a reduction there are no reduction dimensions and `out[p] = body(p)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// A readable name (the HIR ops it computes), for symbols and the text form.
    pub name: String,
    pub domain: Vec<usize>,
    pub n_par: usize,
    /// Operand views read by `body` / `finalize`; `Expr::Load::operand` indexes this list.
    pub inputs: Vec<View>,
    /// The output view, indexed by the parallel iteration variables (one extent per
    /// parallel dimension).
    pub output: View,
    pub body: Expr,
    pub reduction: Option<Reduction>,
    /// The model's nodes this kernel computes (fused ones included), in order: what a profile
    /// names it by. Not part of its code (bodies are shared regardless).
    pub origin: Vec<Origin>,
}

/// A node of the source model that a kernel computes part of: its name and op type (ONNX's
/// `NodeProto.name` and `op_type`, or the HIR node's name and an empty op where the source is
/// not known).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub node: String,
    pub op: String,
}

/// `a` followed by those of `b` that it lacks.
fn merged<T: Clone + PartialEq>(a: &[T], b: &[T]) -> Vec<T> {
    let mut out = a.to_vec();
    for x in b {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

impl Kernel {
    /// Names this kernel as the fusion of `first` and `second` (in that order): its name their
    /// names' `+`-separated parts, each once, and its origin theirs, each node once.
    pub fn name_as_fused(&mut self, first: &Kernel, second: &Kernel) {
        let parts: Vec<&str> = first.name.split('+').collect();
        let more: Vec<&str> = second.name.split('+').collect();
        self.name = merged(&parts, &more).join("+");
        self.origin = merged(&first.origin, &second.origin);
    }
    /// Number of output elements (product of the parallel extents).
    pub fn out_elems(&self) -> usize {
        self.domain[..self.n_par].iter().product()
    }
    /// Scalar work estimate: iterations of the whole domain.
    pub fn work(&self) -> usize {
        self.domain.iter().product()
    }
    /// Arithmetic operations at the bounds: the body's value operations (index arithmetic
    /// and type conversions not counted) per iteration of the domain, the reduction's combine
    /// per iteration and its finalizer's per output element (a matrix product: 2·M·N·K,
    /// an integer one's widened operands included).
    pub fn flops(&self) -> u64 {
        fn ops(e: &Expr) -> u64 {
            match e {
                Expr::Var(_) | Expr::Const(_) | Expr::Acc | Expr::Load { .. } => 0,
                Expr::Cast(_, _, _, a) => ops(a),
                Expr::Unary(_, a) => 1 + ops(a),
                Expr::Binary(_, a, b) | Expr::Cmp(_, a, b) => 1 + ops(a) + ops(b),
                Expr::Select(c, a, b) => 1 + ops(c) + ops(a) + ops(b),
            }
        }
        let (work, outs) = (self.work() as u64, self.out_elems() as u64);
        match &self.reduction {
            Some(r) => work * (ops(&self.body) + 1) + outs * r.finalize.as_ref().map_or(0, ops),
            None => work * ops(&self.body),
        }
    }
    /// Bytes the kernel must move at the bounds: each operand's distinct elements (a
    /// broadcast axis, of stride 0, counted once) and the output's.
    pub fn bytes_moved(&self) -> u64 {
        let distinct = |v: &View| -> u64 {
            let n: usize = v.extents.iter().zip(&v.strides).filter(|&(_, &s)| s != 0).map(|(&e, _)| e).product();
            (n * v.dtype.size()) as u64
        };
        self.inputs.iter().map(distinct).sum::<u64>() + (self.out_elems() * self.output.dtype.size()) as u64
    }
    /// Input operands that are read only at the element being written (same buffer layout as
    /// the output, indexed by the parallel variables in order): they may share memory with
    /// the output.
    pub fn inplace_candidates(&self) -> Vec<usize> {
        if self.reduction.is_some() {
            return vec![];
        }
        (0..self.inputs.len())
            .filter(|&k| {
                let v = &self.inputs[k];
                if v.extents != self.output.extents
                    || v.strides != self.output.strides
                    || v.offset != self.output.offset
                    || v.dtype.size() != self.output.dtype.size()
                {
                    return false;
                }
                let mut ok = true;
                self.body.visit(&mut |e| {
                    if let Expr::Load { operand, index, .. } = e {
                        if *operand == k && !index.iter().enumerate().all(|(d, ix)| *ix == Expr::Var(d)) {
                            ok = false;
                        }
                    }
                });
                ok
            })
            .collect()
    }
}

/// Kernels dominate; instructions are few, so the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Instr {
    Kernel(Kernel),
    /// Copies `bytes` bytes between two buffers.
    Copy {
        dst: BufferId,
        dst_offset: usize,
        src: BufferId,
        src_offset: usize,
        bytes: usize,
    },
    /// Stops the run with an error when the i64 at the start of `buffer` is not 0 (a check
    /// kernel wrote a count of bad elements there). The artifact's manifest lists the
    /// messages of all asserts, in program order.
    Assert {
        buffer: BufferId,
        message: String,
    },
    /// The positions of the `k` largest (`largest`) or smallest elements of `input` along
    /// `axis`, best first, a lower position first among equal values: `output` (i64) has
    /// `input`'s extents but `k` along `axis`. A selection (O(n log k) per row) that no
    /// compute definition expresses; backends run it as a routine of their own.
    TopK {
        input: View,
        output: View,
        axis: usize,
        k: usize,
        largest: bool,
    },
    /// Opens a block that runs only when the `i64` at `key` (one element) equals `value`;
    /// it ends at the matching [`Instr::EndCase`]. Blocks nest. The run-time form of a
    /// decision the compiler cannot make (an `If` on data, a specialization per value of an
    /// axes input): each alternative is compiled whole, and only the one taken runs.
    Case {
        key: View,
        value: i64,
    },
    /// Closes the innermost open [`Instr::Case`].
    EndCase,
    /// Opens a loop, closed by the matching [`Instr::EndLoop`]: its instructions run while the
    /// i64 at `counter` (set to 0 before) is below the integer at `trip` and the bool at
    /// `cond` holds; `EndLoop` adds one to the counter. Loop-carried values live in buffers
    /// the body's last instructions overwrite; memory planning keeps every buffer that
    /// outlives one iteration live across the whole loop.
    Loop {
        counter: View,
        trip: View,
        cond: View,
    },
    /// Closes the innermost open [`Instr::Loop`].
    EndLoop,
    /// Copies `bytes` bytes from `src` (at byte `src_offset`) to row `r` of `dst` (at byte
    /// `dst_offset + r·bytes`), `r` being the i64 at `row`, when `r < rows` (a loop's scan
    /// output: one row per iteration).
    CopyRow {
        dst: BufferId,
        dst_offset: usize,
        src: BufferId,
        src_offset: usize,
        bytes: usize,
        row: View,
        rows: usize,
    },
    /// [`crate::Op::NonZero`]: `output` (i64, rank 1, `1 + rank·numel` elements) gets the
    /// count of non-zero elements of `input`, then their coordinates, one row per dim, then
    /// zeros. A routine each backend implements (a scan no compute definition expresses).
    NonZero {
        input: View,
        output: View,
    },
    /// [`crate::Op::NonMaxSuppression`], a routine: `params` are the views of the most boxes
    /// per class (i64), the IoU threshold and the score threshold (f32), one element each;
    /// `scratch` holds `2·N` i64 (a class's candidates, then its kept boxes).
    NonMaxSuppression {
        boxes: View,
        scores: View,
        params: [View; 3],
        output: View,
        scratch: View,
        center_point_box: bool,
    },
    /// Writes the `i64`s of `src` (a rank-1 view, one element per slot) to the run-time
    /// dims `slots` (`Context::dims`): the shape of an output decided at run time.
    SetDims {
        slots: Vec<usize>,
        src: View,
    },
}

impl Instr {
    /// Buffers read, then buffers written.
    pub fn reads_writes(&self) -> (Vec<BufferId>, Vec<BufferId>) {
        match self {
            Instr::Kernel(k) => (k.inputs.iter().map(|v| v.buffer).collect(), vec![k.output.buffer]),
            Instr::Copy { dst, src, .. } => (vec![*src], vec![*dst]),
            Instr::Assert { buffer, .. } => (vec![*buffer], vec![]),
            Instr::TopK { input, output, .. } => (vec![input.buffer], vec![output.buffer]),
            Instr::Case { key, .. } => (vec![key.buffer], vec![]),
            Instr::EndCase => (vec![], vec![]),
            Instr::Loop { counter, trip, cond } => (vec![counter.buffer, trip.buffer, cond.buffer], vec![]),
            Instr::EndLoop => (vec![], vec![]),
            Instr::CopyRow { dst, src, row, .. } => (vec![*src, row.buffer], vec![*dst]),
            Instr::NonZero { input, output } => (vec![input.buffer], vec![output.buffer]),
            Instr::NonMaxSuppression { boxes, scores, params, output, scratch, .. } => (
                [boxes, scores].into_iter().chain(params).map(|v| v.buffer).collect(),
                vec![output.buffer, scratch.buffer],
            ),
            Instr::SetDims { src, .. } => (vec![src.buffer], vec![]),
        }
    }

    /// Every buffer id the instruction names, for renaming.
    pub fn buffers_mut(&mut self) -> Vec<&mut BufferId> {
        match self {
            Instr::Kernel(k) => {
                k.inputs.iter_mut().chain(std::iter::once(&mut k.output)).map(|v| &mut v.buffer).collect()
            }
            Instr::Copy { dst, src, .. } => vec![dst, src],
            Instr::Assert { buffer, .. } => vec![buffer],
            Instr::TopK { input, output, .. } => vec![&mut input.buffer, &mut output.buffer],
            Instr::Case { key, .. } => vec![&mut key.buffer],
            Instr::EndCase => vec![],
            Instr::Loop { counter, trip, cond } => vec![&mut counter.buffer, &mut trip.buffer, &mut cond.buffer],
            Instr::EndLoop => vec![],
            Instr::CopyRow { dst, src, row, .. } => vec![dst, src, &mut row.buffer],
            Instr::NonZero { input, output } => vec![&mut input.buffer, &mut output.buffer],
            Instr::NonMaxSuppression { boxes, scores, params, output, scratch, .. } => [boxes, scores]
                .into_iter()
                .chain(params.iter_mut())
                .chain([output, scratch])
                .map(|v| &mut v.buffer)
                .collect(),
            Instr::SetDims { src, .. } => vec![&mut src.buffer],
        }
    }
}

impl Program {
    /// The messages of the program's asserts, in order: assert `k` fails the run with status `k + 1`.
    pub fn assert_messages(&self) -> Vec<String> {
        self.instrs
            .iter()
            .filter_map(|i| match i {
                Instr::Assert { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }
}

/// An LIR program: one per device partition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Program {
    pub name: String,
    pub buffers: Vec<Buffer>,
    pub instrs: Vec<Instr>,
    /// Input and output specs, in graph order: (name, dtype, shape).
    pub inputs: Vec<(String, DType, Vec<usize>)>,
    pub outputs: Vec<(String, DType, Vec<usize>)>,
    /// Per output: empty when its shape is fixed (`outputs`' shape); otherwise, per dim, -1
    /// for a fixed dim or the run-time dim slot ([`Instr::SetDims`]) that holds its size,
    /// `outputs`' shape then giving each dim's upper bound.
    pub output_slots: Vec<Vec<i32>>,
    /// How many run-time dim slots the program uses: first one per symbol (set by the
    /// caller before the run), then those it writes ([`Instr::SetDims`]).
    pub dim_slots: usize,
    /// The dims the caller sets at run time: symbol `i`'s value is in dim slot `i`.
    pub symbols: Vec<crate::DimSymbol>,
    /// Per input: empty when its shape is fixed; otherwise, per dim, -1 or the slot of the
    /// symbol that sizes it (`inputs`' shape giving the bound).
    pub input_slots: Vec<Vec<i32>>,
    /// Kernels (by instruction index) that walk run-time axes: per domain dim, the extent a
    /// run uses ([`Clamp`]: `dims[slot] · per` of its bound), `None` for a fixed one (set by
    /// the last step, after which instructions no longer move).
    pub clamps: std::collections::BTreeMap<usize, Vec<Option<Clamp>>>,
    /// Arena size in bytes, set by memory planning.
    pub arena_bytes: u64,
}

impl Instr {
    /// Whether the instruction does work of its own (a kernel, a copy, a scan), rather than
    /// steer the run (cases, loops, checks, dims): what a profile times, in program order.
    pub fn does_work(&self) -> bool {
        !matches!(
            self,
            Instr::Assert { .. }
                | Instr::Case { .. }
                | Instr::EndCase
                | Instr::Loop { .. }
                | Instr::EndLoop
                | Instr::SetDims { .. }
        )
    }
}

impl Program {
    pub fn add_buffer(&mut self, kind: BufferKind, bytes: usize, name: impl Into<String>) -> BufferId {
        let id = BufferId(self.buffers.len() as u32);
        self.buffers.push(Buffer { kind, bytes, name: name.into(), offset: None, fused: false, rows: Vec::new() });
        id
    }
    pub fn buffer(&self, b: BufferId) -> &Buffer {
        &self.buffers[b.0 as usize]
    }
    /// Bytes of output `i`'s buffer (for an output of run-time shape, the most it holds).
    pub fn output_bytes(&self, i: usize) -> usize {
        self.buffers.iter().find(|b| b.kind == BufferKind::Output(i)).map_or(0, |b| b.bytes)
    }

    /// Drops constant and activation buffers no instruction touches (left behind by fusion)
    /// and renumbers the rest densely, in their original order.
    pub fn remove_unused_buffers(&mut self) {
        let mut used = vec![false; self.buffers.len()];
        for ins in &self.instrs {
            let (r, w) = ins.reads_writes();
            for b in r.into_iter().chain(w) {
                used[b.0 as usize] = true;
            }
        }
        let mut remap = vec![BufferId(u32::MAX); self.buffers.len()];
        let mut kept = Vec::new();
        for (i, b) in std::mem::take(&mut self.buffers).into_iter().enumerate() {
            if used[i] || matches!(b.kind, BufferKind::Input(_) | BufferKind::Output(_)) {
                remap[i] = BufferId(kept.len() as u32);
                kept.push(b);
            }
        }
        self.buffers = kept;
        for ins in &mut self.instrs {
            for b in ins.buffers_mut() {
                *b = remap[b.0 as usize];
            }
        }
    }
}

// The text form lives in `text/lir.rs`; `Display` writes the same syntax.

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::text::lir::expr(self))
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::text::lir::view(self))
    }
}

pub use crate::text::lir::{parse, parse_with, print};

#[cfg(test)]
mod tests {
    use super::*;

    /// A product `C[m, n] = Σ_k A[m, k]·B[k, n]` of `dtype` operands summed in `acc` (the
    /// operands widened to it when they differ).
    fn product(dtype: DType, acc: DType, init: Scalar) -> Kernel {
        let (m, n, k) = (3, 5, 7);
        let widen = |e: Expr| if dtype == acc { e } else { Expr::cast(acc, e) };
        let a = widen(Expr::load(0, vec![Expr::Var(0), Expr::Var(2)]));
        let b = widen(Expr::load(1, vec![Expr::Var(2), Expr::Var(1)]));
        Kernel {
            name: "p".into(),
            domain: vec![m, n, k],
            n_par: 2,
            inputs: vec![View::dense(BufferId(0), dtype, &[m, k]), View::dense(BufferId(1), dtype, &[k, n])],
            output: View::dense(BufferId(2), acc, &[m, n]),
            body: Expr::mul(a, b),
            reduction: Some(Reduction { combine: Combine::Add, init, finalize: None }),
            origin: Vec::new(),
        }
    }

    #[test]
    fn a_product_counts_two_operations_per_multiply_add_whatever_its_operand_types() {
        // 3×5×7 multiply-adds: the conversions of an integer product's i16 operands to i32
        // are not arithmetic.
        assert_eq!(product(DType::F32, DType::F32, Scalar::F32(0.0)).flops(), 2 * 3 * 5 * 7);
        assert_eq!(product(DType::I16, DType::I32, Scalar::I32(0)).flops(), 2 * 3 * 5 * 7);
    }
}
