//! The text form of LIR: [`print`] and [`parse`], so that each LIR pass can be tested as text
//! in → pass → text out, and so that `kiln inspect --emit lir` has something to show.
//!
//! ```text
//! program "lower" arena=64 {
//!   input "x": f32[2,8]
//!   output "y": f32[1]
//!   buffer @0 "x": input(0) bytes=64
//!   buffer @1 "y": output(0) bytes=4
//!   buffer @2 "w": const f32[2] = [0.5, 2.0] bytes=8 at=0
//!   buffer @3 "a": activation bytes=64 at=0 fused
//!   0: kernel "exp" domain=[2,8] par=2 {
//!     in0 = @0<f32 +0 [2,8]:[8,1]>
//!     out = @3<f32 +0 [2,8]:[8,1]>
//!     out = mul(exp(in0[i0, i1]), in1[i1]?0.0f32)
//!   }
//!   1: kernel "sum" domain=[16] par=0 {
//!     in0 = @3<f32 +0 [16]:[1]>
//!     out = @1<f32 +0 []:[]>
//!     acc = add from 0.0f32 of in0[i0]
//!     out = div(acc, 16.0f32)
//!   }
//!   2: copy from @1 +0 to @3 +4 bytes=4
//!   3: assert @3 "a message"
//! }
//! ```
//!
//! * A view is `@buffer<dtype +offset [extents]:[strides]>`; a load `inK[index, ...]`, with
//!   `?pad` when out-of-range indices read `pad`; `iD` is iteration variable `D`; `acc` the
//!   accumulated value in a reduction's finalizer.
//! * Scalars carry their type: `1.5f32`, `1.5f64`, `3i32`, `3` (i64), `true`. Floats use
//!   Rust's shortest round-trip form, so they parse back bit-exactly (NaN payloads aside).
//! * Scalar ops are written with their HIR names and attributes (`leaky_relu{alpha=0.1}(x)`,
//!   `cast{to=f16, saturate=false}(x)`), so one table of names serves both IRs.
//! * Constants of at most [`INLINE_LIMIT`] elements print inline; larger ones print as their
//!   byte size and FNV-1a fingerprint, and [`parse_with`] asks its caller for them.
//!
//! For any program `p`, `print(&parse_with(&print(p), constants of p)?) == print(p)`.

use std::fmt::Write;

use super::{const_body, fnv1a, list, quote, Attrs, Parser, Tok, INLINE_LIMIT};
use crate::lir::{
    Buffer, BufferId, BufferKind, Combine, Expr, Instr, Kernel, Origin, Program, Reduction, Scalar, View,
};
use crate::op::Op;
use crate::{DType, Tensor, TensorType};

fn scalar(s: Scalar) -> String {
    match s {
        Scalar::F32(x) => format!("{x:?}f32"),
        Scalar::F64(x) => format!("{x:?}f64"),
        Scalar::I32(x) => format!("{x}i32"),
        Scalar::I64(x) => format!("{x}"),
        Scalar::Bool(x) => format!("{x}"),
    }
}

/// `name{attrs}(args)`: a scalar op applied, with the HIR op's name and attributes.
fn apply(op: &Op, args: &[&Expr]) -> String {
    let attrs = crate::ops::attrs(op);
    let attrs = if attrs.is_empty() {
        String::new()
    } else {
        let kv: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{{{}}}", kv.join(", "))
    };
    let args: Vec<String> = args.iter().map(|a| expr(a)).collect();
    format!("{}{attrs}({})", op.name(), args.join(", "))
}

/// An expression in the text form.
pub fn expr(e: &Expr) -> String {
    match e {
        Expr::Var(d) => format!("i{d}"),
        Expr::Const(s) => scalar(*s),
        Expr::Acc => "acc".into(),
        Expr::Load { operand, index, pad } => {
            let index: Vec<String> = index.iter().map(expr).collect();
            let pad = pad.map(|p| format!("?{}", scalar(p))).unwrap_or_default();
            format!("in{operand}[{}]{pad}", index.join(", "))
        }
        Expr::Unary(op, a) => apply(&Op::Unary(*op), &[a]),
        Expr::Binary(op, a, b) => apply(&Op::Binary(*op), &[a, b]),
        Expr::Cmp(op, a, b) => apply(&Op::Compare(*op), &[a, b]),
        Expr::Select(c, a, b) => apply(&Op::Where, &[c, a, b]),
        Expr::Cast(to, saturate, round, a) => apply(&Op::Cast { to: *to, saturate: *saturate, round: *round }, &[a]),
    }
}

/// A view in the text form: `@B<dtype +offset [extents]:[strides]>`.
pub fn view(v: &View) -> String {
    format!("@{}<{} {:+} {}:{}>", v.buffer.0, v.dtype, v.offset, list(&v.extents), list(&v.strides))
}

fn combine_name(c: Combine) -> &'static str {
    match c {
        Combine::Add => "add",
        Combine::Mul => "mul",
        Combine::Max => "max",
        Combine::Min => "min",
    }
}

fn buffer_line(i: usize, b: &Buffer) -> String {
    let kind = match &b.kind {
        BufferKind::Input(k) => format!("input({k})"),
        BufferKind::Output(k) => format!("output({k})"),
        BufferKind::Constant(t) => format!("const {} = {}", t.ty, const_body(t)),
        BufferKind::Activation => "activation".to_string(),
        BufferKind::Dims => "dims".to_string(),
    };
    let at = b.offset.map(|o| format!(" at={o}")).unwrap_or_default();
    let fused = if b.fused { " fused" } else { "" };
    // A leading axis as `slot:bound`, an inner one as `slot:bound:stride`.
    let axis = |r: &crate::lir::RowDim| {
        if r.is_leading(b.bytes as u64) {
            format!("{}:{}", r.slot, r.bound)
        } else {
            format!("{}:{}:{}", r.slot, r.bound, r.stride)
        }
    };
    let rows = if b.rows.is_empty() {
        String::new()
    } else {
        format!(" rows={}", b.rows.iter().map(axis).collect::<Vec<_>>().join(","))
    };
    format!("  buffer @{i} {}: {kind} bytes={}{at}{fused}{rows}", quote(&b.name), b.bytes)
}

fn kernel_lines(out: &mut String, i: usize, k: &Kernel) {
    let _ = writeln!(out, "  {i}: kernel {} domain={} par={} {{", quote(&k.name), list(&k.domain), k.n_par);
    if !k.origin.is_empty() {
        let from: Vec<String> = k.origin.iter().map(|o| format!("{} {}", quote(&o.op), quote(&o.node))).collect();
        let _ = writeln!(out, "    from [{}]", from.join(", "));
    }
    for (j, v) in k.inputs.iter().enumerate() {
        let _ = writeln!(out, "    in{j} = {}", view(v));
    }
    let _ = writeln!(out, "    out = {}", view(&k.output));
    match &k.reduction {
        None => {
            let _ = writeln!(out, "    out = {}", expr(&k.body));
        }
        Some(r) => {
            let _ = writeln!(out, "    acc = {} from {} of {}", combine_name(r.combine), scalar(r.init), expr(&k.body));
            if let Some(fin) = &r.finalize {
                let _ = writeln!(out, "    out = {}", expr(fin));
            }
        }
    }
    out.push_str("  }\n");
}

/// Prints a program in the text form.
pub fn print(p: &Program) -> String {
    let mut s = String::new();
    let dims = if p.dim_slots > 0 { format!(" dims={}", p.dim_slots) } else { String::new() };
    let _ = writeln!(s, "program {} arena={}{dims} {{", quote(&p.name), p.arena_bytes);
    for sym in &p.symbols {
        let from = sym.from.map(|(b, c)| format!(" from {b} {c}")).unwrap_or_default();
        let _ = writeln!(s, "  symbol {} {} {}{from}", quote(&sym.name), sym.lo, sym.hi);
    }
    for (kw, specs) in [("input", &p.inputs), ("output", &p.outputs)] {
        for (i, (name, dtype, shape)) in specs.iter().enumerate() {
            let slots = if kw == "output" { p.output_slots.get(i) } else { p.input_slots.get(i) };
            let slots = match slots {
                Some(sl) if !sl.is_empty() => format!(" slots={}", list(sl)),
                _ => String::new(),
            };
            let _ = writeln!(s, "  {kw} {}: {}{slots}", quote(name), TensorType::new(*dtype, shape.clone()));
        }
    }
    for (i, b) in p.buffers.iter().enumerate() {
        s.push_str(&buffer_line(i, b));
        s.push('\n');
    }
    for (i, ins) in p.instrs.iter().enumerate() {
        if let Some(cs) = p.clamps.get(&i) {
            match cs.as_slice() {
                // Dim 0 alone (the rows of a leading run-time dim): its own short form.
                [Some(c), rest @ ..] if rest.iter().all(Option::is_none) => {
                    let _ = writeln!(s, "  {i}: clamp slot={} per={}", c.slot, c.per);
                }
                _ => {
                    let dims: Vec<String> =
                        cs.iter().map(|c| c.map_or("-".to_string(), |c| format!("{}:{}", c.slot, c.per))).collect();
                    let _ = writeln!(s, "  {i}: clamp dims=[{}]", dims.join(","));
                }
            }
        }
        match ins {
            Instr::Kernel(k) => kernel_lines(&mut s, i, k),
            Instr::Copy { dst, dst_offset, src, src_offset, bytes } => {
                let _ = writeln!(s, "  {i}: copy from {src} +{src_offset} to {dst} +{dst_offset} bytes={bytes}");
            }
            Instr::Assert { buffer, message } => {
                let _ = writeln!(s, "  {i}: assert {buffer} {}", quote(message));
            }
            Instr::TopK { input, output, axis, k, largest } => {
                let _ = writeln!(
                    s,
                    "  {i}: top_k in={} out={} axis={axis} k={k} largest={largest}",
                    view(input),
                    view(output)
                );
            }
            Instr::Case { key, value } => {
                let _ = writeln!(s, "  {i}: case key={} value={value}", view(key));
            }
            Instr::EndCase => {
                let _ = writeln!(s, "  {i}: end_case");
            }
            Instr::Loop { counter, trip, cond } => {
                let _ = writeln!(s, "  {i}: loop counter={} trip={} cond={}", view(counter), view(trip), view(cond));
            }
            Instr::EndLoop => {
                let _ = writeln!(s, "  {i}: end_loop");
            }
            Instr::CopyRow { dst, dst_offset, src, src_offset, bytes, row, rows } => {
                let _ = writeln!(
                    s,
                    "  {i}: copy_row from {src} +{src_offset} to {dst} +{dst_offset} bytes={bytes} row={} rows={rows}",
                    view(row)
                );
            }
            Instr::NonZero { input, output } => {
                let _ = writeln!(s, "  {i}: non_zero in={} out={}", view(input), view(output));
            }
            Instr::NonMaxSuppression { boxes, scores, params, output, scratch, center_point_box } => {
                let _ = writeln!(
                    s,
                    "  {i}: non_max_suppression boxes={} scores={} max_out={} iou={} score={} out={} scratch={} \
                     center_point_box={center_point_box}",
                    view(boxes),
                    view(scores),
                    view(&params[0]),
                    view(&params[1]),
                    view(&params[2]),
                    view(output),
                    view(scratch)
                );
            }
            Instr::SetDims { slots, src } => {
                let _ = writeln!(s, "  {i}: set_dims slots={} src={}", list(slots), view(src));
            }
        }
    }
    s.push_str("}\n");
    s
}

// ---------------------------------------------------------------------------------------
// Parsing

/// Supplies the data of a constant that the text elides: given its type and FNV-1a
/// fingerprint, the tensor (or `None` when the caller does not have it).
pub type ConstantSource<'a> = &'a dyn Fn(&TensorType, u64) -> Option<Tensor>;

/// Parses the text form back into a program; constants must be inline.
pub fn parse(src: &str) -> Result<Program, String> {
    parse_with(src, &|_, _| None)
}

/// Parses the text form back into a program, asking `constants` for the elided ones.
pub fn parse_with(src: &str, constants: ConstantSource) -> Result<Program, String> {
    let mut p = Parser { toks: super::lex(src)?, pos: 0, ids: Default::default() };
    p.keyword("program")?;
    let mut prog = Program { name: p.string()?, ..Default::default() };
    p.keyword("arena")?;
    p.expect('=')?;
    prog.arena_bytes = p.number("arena size")?;
    if p.eat_word("dims") {
        p.expect('=')?;
        prog.dim_slots = p.number("dim slot count")?;
    }
    p.expect('{')?;
    loop {
        match p.peek().clone() {
            Tok::Punct('}') => {
                p.next();
                break;
            }
            Tok::Word(w) if w == "symbol" => {
                p.next();
                let name = p.string()?;
                let (lo, hi) = (p.number("bound")?, p.number("bound")?);
                let from = if p.eat_word("from") {
                    let base: usize = p.number("base symbol")?;
                    let off: i64 = p.number("offset")?;
                    if base >= prog.symbols.len() {
                        return Err(format!("symbol {} is derived from unknown symbol {base}", quote(&name)));
                    }
                    Some((base, off))
                } else {
                    None
                };
                prog.symbols.push(crate::DimSymbol { name, lo, hi, from });
            }
            Tok::Word(w) if w == "input" || w == "output" => {
                p.next();
                let name = p.string()?;
                p.expect(':')?;
                let ty = p.ty()?;
                let spec = (name, ty.dtype, ty.shape);
                let slots = if p.eat_word("slots") {
                    p.expect('=')?;
                    p.numbers("dim slot")?
                } else {
                    Vec::new()
                };
                if w == "input" {
                    prog.inputs.push(spec);
                    prog.input_slots.push(slots);
                } else {
                    prog.outputs.push(spec);
                    prog.output_slots.push(slots);
                }
            }
            Tok::Word(w) if w == "buffer" => {
                p.next();
                let b = p.buffer(prog.buffers.len(), constants)?;
                prog.buffers.push(b);
            }
            Tok::Word(_) => {
                let i = prog.instrs.len();
                if p.clamp_ahead() {
                    let at = p.number::<usize>("instruction number")?;
                    p.expect(':')?;
                    p.keyword("clamp")?;
                    let clamps = if p.eat_word("dims") {
                        p.expect('=')?;
                        p.expect('[')?;
                        let mut cs = Vec::new();
                        loop {
                            if p.eat_word("-") {
                                cs.push(None);
                            } else {
                                let slot = p.number("dim slot")?;
                                p.expect(':')?;
                                cs.push(Some(crate::lir::Clamp { slot, per: p.number("per")? }));
                            }
                            if !p.eat(',') {
                                break;
                            }
                        }
                        p.expect(']')?;
                        cs
                    } else {
                        let (slot, per) = (p.keyed("slot")?, p.keyed("per")?);
                        vec![Some(crate::lir::Clamp { slot, per })]
                    };
                    if at != i {
                        return p.err(format!("a clamp numbered {at} stands before instruction {i}"));
                    }
                    prog.clamps.insert(i, clamps);
                    continue;
                }
                let ins = p.instr(i)?;
                // A clamp's short form names dim 0 alone: the others are fixed.
                if let (Some(cs), Instr::Kernel(k)) = (prog.clamps.get_mut(&i), &ins) {
                    if cs.len() < k.domain.len() {
                        cs.resize(k.domain.len(), None);
                    }
                }
                prog.instrs.push(ins);
            }
            _ => {
                return p.err(format!(
                    "expected `input`, `output`, `buffer`, an instruction or `}}`, found {}",
                    p.describe()
                ))
            }
        }
    }
    if *p.peek() != Tok::Eof {
        return p.err(format!("unexpected {} after the program", p.describe()));
    }
    let n = prog.buffers.len();
    for ins in &mut prog.instrs {
        if let Some(b) = ins.buffers_mut().into_iter().find(|b| b.0 as usize >= n) {
            return Err(format!("buffer {b} is used but not declared ({n} buffers)"));
        }
    }
    Ok(prog)
}

impl Parser {
    /// A number of type `T` (`what` names it in the error).
    fn number<T: std::str::FromStr>(&mut self, what: &str) -> Result<T, String> {
        let w = self.word()?;
        w.parse().or_else(|_| self.err(format!("bad {what} `{w}`")))
    }

    /// Whether the next tokens are `N: clamp` (a clamp line before instruction `N`).
    fn clamp_ahead(&self) -> bool {
        matches!(self.toks.get(self.pos + 2), Some((Tok::Word(w), _)) if w == "clamp")
    }

    /// `key=number`.
    fn keyed<T: std::str::FromStr>(&mut self, key: &str) -> Result<T, String> {
        self.keyword(key)?;
        self.expect('=')?;
        self.number(key)
    }

    /// `[a,b,...]` of numbers.
    fn numbers<T: std::str::FromStr>(&mut self, what: &str) -> Result<Vec<T>, String> {
        self.expect('[')?;
        self.list_of(']', |p| p.number(what))
    }

    /// `@N`.
    fn buffer_id(&mut self) -> Result<BufferId, String> {
        self.expect('@')?;
        Ok(BufferId(self.number("buffer number")?))
    }

    /// `(k)` after `input` / `output`.
    fn paren_index(&mut self) -> Result<usize, String> {
        self.expect('(')?;
        let k = self.number("index")?;
        self.expect(')')?;
        Ok(k)
    }

    /// `@i "name": kind bytes=N [at=N] [fused]` (after `buffer`).
    fn buffer(&mut self, i: usize, constants: ConstantSource) -> Result<Buffer, String> {
        let id = self.buffer_id()?;
        if id.0 as usize != i {
            return self.err(format!("buffer {id} is declared in position {i}; buffers are numbered in order"));
        }
        let name = self.string()?;
        self.expect(':')?;
        let kind = match self.word()?.as_str() {
            "input" => BufferKind::Input(self.paren_index()?),
            "output" => BufferKind::Output(self.paren_index()?),
            "activation" => BufferKind::Activation,
            "dims" => BufferKind::Dims,
            "const" => {
                let ty = self.ty()?;
                self.expect('=')?;
                let what = format!("buffer {id} {}", quote(&name));
                BufferKind::Constant(self.constant(&what, &ty, constants)?)
            }
            k => return self.err(format!("unknown buffer kind `{k}`")),
        };
        let bytes = self.keyed("bytes")?;
        let offset = if *self.peek() == Tok::Word("at".into()) { Some(self.keyed("at")?) } else { None };
        let fused = self.eat_word("fused");
        let mut rows = Vec::new();
        if self.eat_word("rows") {
            self.expect('=')?;
            loop {
                let slot = self.number("dim slot")?;
                self.expect(':')?;
                let bound: u64 = self.number("bound")?;
                let stride = if self.eat(':') { self.number("stride")? } else { bytes as u64 / bound.max(1) };
                rows.push(crate::lir::RowDim { slot, bound, stride });
                if !self.eat(',') {
                    break;
                }
            }
        }
        Ok(Buffer { kind, bytes, name, offset, fused, rows })
    }

    /// A constant's body: inline elements, or `bytes(N, fnv1a=0x…)` looked up in `constants`.
    fn constant(&mut self, what: &str, ty: &TensorType, constants: ConstantSource) -> Result<Tensor, String> {
        if *self.peek() != Tok::Word("bytes".into()) {
            return self.const_data(what, ty);
        }
        self.next();
        self.expect('(')?;
        let bytes: usize = self.number("byte count")?;
        self.expect(',')?;
        self.keyword("fnv1a")?;
        self.expect('=')?;
        let w = self.word()?;
        let hash = w.strip_prefix("0x").and_then(|h| u64::from_str_radix(h, 16).ok());
        let Some(hash) = hash else { return self.err(format!("bad fingerprint `{w}`")) };
        self.expect(')')?;
        match constants(ty, hash) {
            Some(t) if t.ty == *ty && t.data.len() == bytes && fnv1a(&t.data) == hash => Ok(t),
            Some(_) => self.err(format!("{what}: the supplied data does not match its type and fingerprint")),
            None => self.err(format!(
                "{what} ({ty}) is elided in the text form and was not supplied; only constants of at most \
                 {INLINE_LIMIT} elements are printed inline"
            )),
        }
    }

    /// `from @S +OFF to @D +OFF bytes=N` (a copy's operands).
    fn copy_parts(&mut self) -> Result<(BufferId, usize, BufferId, usize, usize), String> {
        self.keyword("from")?;
        let src = self.buffer_id()?;
        let src_offset = self.number("offset")?;
        self.keyword("to")?;
        let dst = self.buffer_id()?;
        let dst_offset = self.number("offset")?;
        Ok((src, src_offset, dst, dst_offset, self.keyed("bytes")?))
    }

    /// `key=VIEW`.
    fn keyed_view(&mut self, key: &str) -> Result<View, String> {
        self.keyword(key)?;
        self.expect('=')?;
        self.view()
    }

    /// `@B<dtype +offset [extents]:[strides]>`.
    fn view(&mut self) -> Result<View, String> {
        let buffer = self.buffer_id()?;
        self.expect('<')?;
        let d = self.word()?;
        let Some(dtype) = DType::from_name(&d) else { return self.err(format!("unknown dtype `{d}`")) };
        let offset: i64 = self.number("offset")?;
        let extents = self.numbers("extent")?;
        self.expect(':')?;
        let strides = self.numbers("stride")?;
        self.expect('>')?;
        if strides.len() != extents.len() {
            return self.err(format!("a view with {} extents and {} strides", extents.len(), strides.len()));
        }
        Ok(View { buffer, dtype, offset, extents, strides })
    }

    /// One instruction, `N: ...` with N its position.
    fn instr(&mut self, i: usize) -> Result<Instr, String> {
        let n: usize = self.number("instruction number")?;
        if n != i {
            return self.err(format!("instruction {n} is in position {i}; instructions are numbered in order"));
        }
        self.expect(':')?;
        match self.word()?.as_str() {
            "kernel" => self.kernel().map(Instr::Kernel),
            "copy" => {
                let (src, src_offset, dst, dst_offset, bytes) = self.copy_parts()?;
                Ok(Instr::Copy { dst, dst_offset, src, src_offset, bytes })
            }
            "assert" => {
                let buffer = self.buffer_id()?;
                Ok(Instr::Assert { buffer, message: self.string()? })
            }
            "top_k" => {
                self.keyword("in")?;
                self.expect('=')?;
                let input = self.view()?;
                self.keyword("out")?;
                self.expect('=')?;
                let output = self.view()?;
                let (axis, k) = (self.keyed("axis")?, self.keyed("k")?);
                let largest = self.keyed("largest")?;
                Ok(Instr::TopK { input, output, axis, k, largest })
            }
            "case" => {
                self.keyword("key")?;
                self.expect('=')?;
                let key = self.view()?;
                Ok(Instr::Case { key, value: self.keyed("value")? })
            }
            "end_case" => Ok(Instr::EndCase),
            "loop" => {
                let counter = self.keyed_view("counter")?;
                let trip = self.keyed_view("trip")?;
                Ok(Instr::Loop { counter, trip, cond: self.keyed_view("cond")? })
            }
            "end_loop" => Ok(Instr::EndLoop),
            "copy_row" => {
                let (src, src_offset, dst, dst_offset, bytes) = self.copy_parts()?;
                let row = self.keyed_view("row")?;
                let rows = self.keyed("rows")?;
                Ok(Instr::CopyRow { dst, dst_offset, src, src_offset, bytes, row, rows })
            }
            "non_zero" => {
                let input = self.keyed_view("in")?;
                Ok(Instr::NonZero { input, output: self.keyed_view("out")? })
            }
            "non_max_suppression" => {
                let boxes = self.keyed_view("boxes")?;
                let scores = self.keyed_view("scores")?;
                let params = [self.keyed_view("max_out")?, self.keyed_view("iou")?, self.keyed_view("score")?];
                let output = self.keyed_view("out")?;
                let scratch = self.keyed_view("scratch")?;
                let center_point_box = self.keyed("center_point_box")?;
                Ok(Instr::NonMaxSuppression { boxes, scores, params, output, scratch, center_point_box })
            }
            "set_dims" => {
                self.keyword("slots")?;
                self.expect('=')?;
                let slots = self.numbers("dim slot")?;
                self.keyword("src")?;
                self.expect('=')?;
                Ok(Instr::SetDims { slots, src: self.view()? })
            }
            w => self.err(format!("unknown instruction `{w}`")),
        }
    }

    /// `"name" domain=[..] par=N { inK = view ... out = view  body }` (after `kernel`).
    fn kernel(&mut self) -> Result<Kernel, String> {
        let name = self.string()?;
        self.keyword("domain")?;
        self.expect('=')?;
        let domain = self.numbers("extent")?;
        let n_par = self.keyed("par")?;
        self.expect('{')?;
        let origin = if self.eat_word("from") {
            self.expect('[')?;
            self.list_of(']', |p| Ok(Origin { op: p.string()?, node: p.string()? }))?
        } else {
            Vec::new()
        };
        let mut inputs = Vec::new();
        while let Tok::Word(w) = self.peek().clone() {
            if w != format!("in{}", inputs.len()) {
                break;
            }
            self.next();
            self.expect('=')?;
            inputs.push(self.view()?);
        }
        self.keyword("out")?;
        self.expect('=')?;
        let output = self.view()?;
        let (body, reduction) = if self.eat_word("acc") {
            self.expect('=')?;
            let combine = match self.word()?.as_str() {
                "add" => Combine::Add,
                "mul" => Combine::Mul,
                "max" => Combine::Max,
                "min" => Combine::Min,
                c => return self.err(format!("unknown combine `{c}`")),
            };
            self.keyword("from")?;
            let init = self.scalar()?;
            self.keyword("of")?;
            let body = self.expr()?;
            let finalize = if self.eat_word("out") {
                self.expect('=')?;
                Some(self.expr()?)
            } else {
                None
            };
            (body, Some(Reduction { combine, init, finalize }))
        } else {
            self.keyword("out")?;
            self.expect('=')?;
            (self.expr()?, None)
        };
        self.expect('}')?;
        if n_par > domain.len() {
            return self.err(format!("kernel {} has {n_par} parallel dimensions of {}", quote(&name), domain.len()));
        }
        Ok(Kernel { name, domain, n_par, inputs, output, body, reduction, origin })
    }

    /// A typed scalar: `1.5f32`, `1.5f64`, `3i32`, `3`, `true`.
    fn scalar(&mut self) -> Result<Scalar, String> {
        let w = self.word()?;
        parse_scalar(&w).ok_or_else(|| format!("line {}: bad scalar `{w}`", self.line()))
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let w = self.word()?;
        if w == "acc" {
            return Ok(Expr::Acc);
        }
        if let Some(d) = w.strip_prefix('i').and_then(|d| d.parse().ok()) {
            return Ok(Expr::Var(d));
        }
        if let Some(operand) = w.strip_prefix("in").and_then(|k| k.parse().ok()) {
            self.expect('[')?;
            let index = self.list_of(']', Self::expr)?;
            let pad = if self.eat('?') { Some(self.scalar()?) } else { None };
            return Ok(Expr::Load { operand, index, pad });
        }
        if !matches!(self.peek(), Tok::Punct('(' | '{')) {
            return parse_scalar(&w).map(Expr::Const).ok_or_else(|| format!("line {}: bad scalar `{w}`", self.line()));
        }
        let line = self.line();
        let mut attrs = if self.eat('{') { self.attrs()? } else { Attrs(Default::default()) };
        self.expect('(')?;
        let mut args = self.list_of(')', Self::expr)?.into_iter().map(Box::new);
        let op = crate::ops::parse(&w, &mut attrs).map_err(|e| format!("line {line}: {e}"))?;
        if let Some(k) = attrs.0.keys().next() {
            return Err(format!("line {line}: {w} has no attribute `{k}`"));
        }
        let want = match op {
            Op::Unary(_) | Op::Cast { .. } => 1,
            Op::Binary(_) | Op::Compare(_) => 2,
            Op::Where => 3,
            _ => return Err(format!("line {line}: `{w}` is not a scalar op")),
        };
        if args.len() != want {
            return Err(format!("line {line}: {w} takes {want} operands, got {}", args.len()));
        }
        let mut arg = || args.next().expect("arity checked");
        Ok(match op {
            Op::Unary(u) => Expr::Unary(u, arg()),
            Op::Cast { to, saturate, round } => Expr::Cast(to, saturate, round, arg()),
            Op::Binary(b) => Expr::Binary(b, arg(), arg()),
            Op::Compare(c) => Expr::Cmp(c, arg(), arg()),
            _ => Expr::Select(arg(), arg(), arg()),
        })
    }
}

fn parse_scalar(w: &str) -> Option<Scalar> {
    Some(match w {
        "true" => Scalar::Bool(true),
        "false" => Scalar::Bool(false),
        _ => {
            if let Some(x) = w.strip_suffix("f32") {
                Scalar::F32(x.parse().ok()?)
            } else if let Some(x) = w.strip_suffix("f64") {
                Scalar::F64(x.parse().ok()?)
            } else if let Some(x) = w.strip_suffix("i32") {
                Scalar::I32(x.parse().ok()?)
            } else {
                Scalar::I64(w.parse().ok()?)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{BinaryOp, CmpOp, UnaryOp};

    const SMALL: &str = r#"program "p" arena=96 {
  input "x": f32[2,8]
  output "y": f32[]
  buffer @0 "x": input(0) bytes=64
  buffer @1 "y": output(0) bytes=4
  buffer @2 "w": const f32[2] = [0.5, -inf] bytes=8 at=0
  buffer @3 "a \"quoted\"": activation bytes=64 at=32 fused
  buffer @4 "flag": activation bytes=8 at=0
  0: kernel "exp" domain=[2,8] par=2 {
    in0 = @0<f32 +0 [2,8]:[8,1]>
    in1 = @2<f32 -1 [2,8]:[0,1]>
    out = @3<f32 +0 [2,8]:[8,1]>
    out = where(less(in0[i0, i1], 0.0f32), leaky_relu{alpha=0.1}(in0[i0, i1]), mul(exp(in0[i0, i1]), in1[i0, add(i1, -1)]?0.0f32))
  }
  1: kernel "sum" domain=[16] par=0 {
    in0 = @3<f32 +0 [16]:[1]>
    out = @1<f32 +0 []:[]>
    acc = max from -inff32 of cast{to=f16, saturate=false}(in0[i0])
    out = div(cast{to=f32}(acc), 16.0f32)
  }
  2: copy from @1 +0 to @3 +4 bytes=4
  3: kernel "check" domain=[] par=0 {
    out = @4<i64 +0 []:[]>
    out = 7
  }
  4: assert @4 "a \"message\""
  5: top_k in=@0<f32 +0 [1,8]:[8,1]> out=@4<i64 +0 [1,1]:[1,1]> axis=1 k=1 largest=false
}
"#;

    #[test]
    fn print_parse_print_is_the_identity() {
        let p = parse(SMALL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(print(&p), SMALL);
        assert_eq!(p.buffers.len(), 5);
        assert!(p.buffers[3].fused && p.buffers[3].offset == Some(32));
        let Instr::Kernel(k) = &p.instrs[0] else { panic!("a kernel") };
        assert_eq!(k.inputs[1].offset, -1);
        let Expr::Select(c, a, _) = &k.body else { panic!("where: {:?}", k.body) };
        assert!(matches!(**c, Expr::Cmp(CmpOp::Less, ..)));
        assert!(matches!(**a, Expr::Unary(UnaryOp::LeakyRelu { alpha }, _) if alpha == 0.1));
        let Instr::Kernel(k) = &p.instrs[1] else { panic!("a kernel") };
        let r = k.reduction.as_ref().unwrap();
        assert_eq!((r.combine, r.init), (Combine::Max, Scalar::F32(f32::NEG_INFINITY)));
        assert!(matches!(r.finalize, Some(Expr::Binary(BinaryOp::Div, ..))));
        assert!(matches!(p.instrs[2], Instr::Copy { dst: BufferId(3), dst_offset: 4, src: BufferId(1), .. }));
    }

    #[test]
    fn elided_constants_come_from_the_caller() {
        let big = Tensor::f32(vec![40], (0..40).map(|i| i as f32).collect());
        let mut p = Program { name: "big".into(), ..Default::default() };
        p.add_buffer(BufferKind::Constant(big.clone()), 160, "w");
        let text = print(&p);
        assert!(text.contains("bytes(160, fnv1a=0x"), "{text}");
        let e = parse(&text).unwrap_err();
        assert!(e.contains("elided") && e.contains("\"w\""), "{e}");
        let back = parse_with(&text, &|ty, h| (ty == &big.ty && h == fnv1a(&big.data)).then(|| big.clone())).unwrap();
        assert_eq!(back, p);
        let other = Tensor::f32(vec![40], vec![0.0; 40]);
        let e = parse_with(&text, &|_, _| Some(other.clone())).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
    }

    #[test]
    fn bad_text_is_an_error_naming_the_line() {
        let cases = [
            (SMALL.replace("buffer @4", "buffer @5"), "numbered in order"),
            (SMALL.replace("  2: copy", "  7: copy"), "numbered in order"),
            (SMALL.replace("leaky_relu{alpha=0.1}", "leaky_relu"), "missing attribute `alpha`"),
            (SMALL.replace("exp(in0", "exp(1, in0"), "takes 1 operands"),
            (SMALL.replace("exp(in0", "matmul(in0"), "not a scalar op"),
            (SMALL.replace("from -inff32", "from nonsense"), "bad scalar"),
            (SMALL.replace("to @3 +4", "to @9 +4"), "not declared"),
            (SMALL.replace("[2,8]:[0,1]", "[2,8]:[0]"), "2 extents and 1 strides"),
        ];
        for (src, want) in cases {
            let e = parse(&src).unwrap_err();
            assert!(e.contains(want), "want `{want}` in: {e}");
        }
    }
}
