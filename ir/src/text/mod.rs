//! The text form of HIR: [`print()`] and [`parse`], so that passes can be tested as text in →
//! pass → snapshot out, and so that `kiln inspect --emit hir` has something to show.
//!
//! ```text
//! graph "name" {
//!   input %0 "x": f32[1,3,8,8]
//!   const %1 "w": f32[2,3] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
//!   const %2 "big": f32[64,64] = bytes(16384, fnv1a=0x6a1c3f0b2d4e5f60)
//!   %3 "y": f32[1,2] = gemm(%0, %1) {alpha=1.0, beta=1.0, trans_a=false, trans_b=true} # "Gemm_0"
//!   output %3
//! }
//! ```
//!
//! * Values are renumbered densely in print order (inputs, then the constants that scheduled
//!   nodes or outputs use, in first-use order, then node results in schedule order), so the
//!   text does not depend on arena ids. Dead values and unscheduled nodes are not printed.
//! * Every value carries its (quoted) name and type, then `fused` when the fuse pass marked
//!   it as computed inside its consumer's kernel ([`Graph::is_fused`]); a node's name follows
//!   `#` as a quoted string (omitted when empty). Strings escape `\`, `"` and control
//!   characters.
//! * Attributes print as `key=value` in a fixed order; floats use Rust's shortest round-trip
//!   form (`{:?}`), so they parse back bit-exactly (NaN payloads aside).
//! * Constants of at most [`INLINE_LIMIT`] elements print inline and parse back; larger ones
//!   print as their byte size and an FNV-1a fingerprint, and `parse` rejects them.
//! * `symbol "batch" 1 8` declares a dim the caller sets at run time, between its bounds
//!   ([`crate::DimSymbol`]); an input that carries symbols says so after its type with
//!   `syms=[0,-1,…]` (per axis, the symbol's index in declaration order, or -1).
//! * `//` starts a comment that runs to the end of the line (for hand-written fixtures).
//!
//! `parse` rebuilds the graph through [`Graph::add_node`], so every node is type-checked, and
//! the printed result types must match the inferred ones. `Op::Unsupported` nodes are
//! rebuilt as placeholders with their printed types. For any graph `g`,
//! `print(&parse(&print(g))?) == print(g)` when all its constants are inline.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use crate::{numel, DType, Data, Graph, Op, Tensor, TensorType, ValueId};

/// Constants with at most this many elements are printed inline (and can be parsed back).
pub const INLINE_LIMIT: usize = 32;

/// 64-bit FNV-1a of `bytes`: the fingerprint of an elided constant.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A double-quoted string with `\\`, `\"`, `\n`, `\t`, `\r` and `\u{..}` escapes.
pub(crate) fn quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c if c.is_control() => write!(o, "\\u{{{:x}}}", c as u32).unwrap(),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// `[a,b,c]` (attribute lists, written like shapes).
pub(crate) fn list<T: ToString>(v: &[T]) -> String {
    format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
}

/// An f32 attribute in Rust's shortest round-trip form.
pub(crate) fn float(x: f32) -> String {
    format!("{x:?}")
}

/// An op's attributes as `(key, printed value)`, in print order.
pub(crate) type AttrList = Vec<(&'static str, String)>;

/// The inline elements of a constant, or its size and fingerprint when it is too large.
fn const_body(t: &Tensor) -> String {
    if t.numel() > INLINE_LIMIT {
        return format!("bytes({}, fnv1a=0x{:016x})", t.data.len(), fnv1a(&t.data));
    }
    fn strs<T: std::fmt::Debug>(v: &[T]) -> Vec<String> {
        v.iter().map(|x| format!("{x:?}")).collect()
    }
    let elems: Vec<String> = match t.data() {
        Data::F32(v) => strs(&v),
        Data::I32(v) => strs(&v),
        Data::I64(v) => strs(&v),
        Data::Bool(v) => strs(&v),
        Data::F64(v) => strs(&v),
        Data::F16(v) => v.iter().map(|x| format!("{:?}", x.to_f32())).collect(),
        Data::BF16(v) => v.iter().map(|x| format!("{:?}", x.to_f32())).collect(),
        Data::I8(v) => strs(&v),
        Data::U8(v) => strs(&v),
        Data::I16(v) => strs(&v),
        Data::U16(v) => strs(&v),
        Data::U32(v) => strs(&v),
        Data::U64(v) => strs(&v),
        // Small types by value (exact): floats decoded, integers as numbers.
        d @ Data::Small(dt, _) if dt.is_float() => d.to_f64_vec().iter().map(|&x| format!("{:?}", x as f32)).collect(),
        d @ Data::Small(..) => strs(&d.to_i64_vec()),
    };
    format!("[{}]", elems.join(", "))
}

/// Prints a graph in the text form.
pub fn print(g: &Graph) -> String {
    let mut num: HashMap<ValueId, usize> = HashMap::new();
    let mut out = String::new();
    fn def(num: &mut HashMap<ValueId, usize>, v: ValueId) -> usize {
        let n = num.len();
        *num.entry(v).or_insert(n)
    }
    let head = |n: usize, v: ValueId| {
        let fused = if g.is_fused(v) { " fused" } else { "" };
        format!("%{n} {}: {}{fused}", quote(&g.value(v).name), g.ty(v))
    };
    writeln!(out, "graph {} {{", quote(&g.name)).unwrap();
    for s in &g.symbols {
        let from = s.from.map(|(b, c)| format!(" from {b} {c}")).unwrap_or_default();
        writeln!(out, "  symbol {} {} {}{from}", quote(&s.name), s.lo, s.hi).unwrap();
    }
    if g.axis_dims {
        writeln!(out, "  axis_dims").unwrap();
    }
    for (i, &v) in g.inputs.iter().enumerate() {
        let n = def(&mut num, v);
        let syms = syms_text(g.input_syms.get(&i));
        writeln!(out, "  input {}{syms}", head(n, v)).unwrap();
    }
    for v in g.live_constants() {
        if num.contains_key(&v) {
            continue;
        }
        let n = def(&mut num, v);
        let t = g.const_of(v).expect("live_constants returns constants");
        writeln!(out, "  const {} = {}", head(n, v), const_body(t)).unwrap();
    }
    let operand = |num: &HashMap<ValueId, usize>, v: ValueId| match num.get(&v) {
        Some(n) => format!("%{n}"),
        None => format!("%?{}", v.0), // undefined here: an invalid graph, printed for debugging
    };
    for &nid in g.order() {
        let node = g.node(nid);
        let results: Vec<String> = node.outputs.iter().map(|&v| head(def(&mut num, v), v)).collect();
        let args: Vec<String> = node.inputs.iter().map(|&v| operand(&num, v)).collect();
        write!(out, "  {} = {}({})", results.join(", "), node.op.name(), args.join(", ")).unwrap();
        let a = crate::ops::attrs(&node.op);
        if !a.is_empty() {
            let kv: Vec<String> = a.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(out, " {{{}}}", kv.join(", ")).unwrap();
        }
        if !node.guard.is_empty() {
            let gs: Vec<String> = node.guard.iter().map(|c| format!("{}={}", operand(&num, c.key), c.value)).collect();
            write!(out, " when [{}]", gs.join(", ")).unwrap();
        }
        if !node.name.is_empty() {
            write!(out, " # {}", quote(&node.name)).unwrap();
        }
        out.push('\n');
    }
    for (i, &v) in g.outputs.iter().enumerate() {
        let shape = match g.output_shapes.get(&i) {
            Some(r) => format!(" shape={} bounds={}", operand(&num, r.dims), list(&r.bounds)),
            None => String::new(),
        };
        let syms = syms_text(g.output_syms.get(&i));
        writeln!(out, "  output {}{shape}{syms}", operand(&num, v)).unwrap();
    }
    out.push_str("}\n");
    out
}

/// ` syms=[0,-1]`: the symbol on each axis of an input or output (`-1`: none).
fn syms_text(axes: Option<&Vec<Option<usize>>>) -> String {
    match axes {
        Some(axes) => {
            let a: Vec<String> = axes.iter().map(|s| s.map_or("-1".to_string(), |s| s.to_string())).collect();
            format!(" syms=[{}]", a.join(","))
        }
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------------
// Parsing

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// Identifiers, keywords, numbers (`-1.5e-7`, `inf`, `NaN`, `0x1f`), booleans, dtypes.
    Word(String),
    Str(String),
    Punct(char),
    Eof,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-')
}

/// Splits the source into tokens, each with its 1-based line number.
fn lex(src: &str) -> Result<Vec<(Tok, usize)>, String> {
    let mut toks = Vec::new();
    let mut it = src.chars().peekable();
    let mut line = 1;
    while let Some(c) = it.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '/' if it.peek() == Some(&'/') => {
                while it.peek().is_some_and(|&c| c != '\n') {
                    it.next();
                }
            }
            '%' | '{' | '}' | '(' | ')' | '[' | ']' | ':' | '=' | ',' | '#' | '@' | '<' | '>' | '?' => {
                toks.push((Tok::Punct(c), line))
            }
            '"' => {
                let start = line;
                let mut s = String::new();
                loop {
                    match it.next() {
                        None => return Err(format!("line {start}: unterminated string")),
                        Some('"') => break,
                        Some('\n') => return Err(format!("line {start}: newline in a string (write it as \\n)")),
                        Some('\\') => match it.next() {
                            Some('"') => s.push('"'),
                            Some('\\') => s.push('\\'),
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some('r') => s.push('\r'),
                            Some('u') if it.next() == Some('{') => {
                                let mut hex = String::new();
                                for c in it.by_ref() {
                                    if c == '}' {
                                        break;
                                    }
                                    hex.push(c);
                                }
                                let ch = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                                s.push(ch.ok_or_else(|| format!("line {line}: bad escape \\u{{{hex}}}"))?);
                            }
                            e => {
                                return Err(format!(
                                    "line {line}: unknown escape \\{}",
                                    e.map_or(String::new(), String::from)
                                ))
                            }
                        },
                        Some(c) => s.push(c),
                    }
                }
                toks.push((Tok::Str(s), start));
            }
            c if is_word_char(c) => {
                let mut w = String::from(c);
                while let Some(&c) = it.peek().filter(|&&c| is_word_char(c)) {
                    w.push(c);
                    it.next();
                }
                toks.push((Tok::Word(w), line));
            }
            c => return Err(format!("line {line}: unexpected character {c:?}")),
        }
    }
    toks.push((Tok::Eof, line));
    Ok(toks)
}

/// An attribute value as written: a word, a quoted string, or a list of words.
#[derive(Debug)]
enum AttrVal {
    Word(String),
    Str(String),
    List(Vec<String>),
}

/// The attributes of one node; each accessor consumes its key.
pub(crate) struct Attrs(BTreeMap<String, AttrVal>);

impl Attrs {
    fn take(&mut self, k: &str) -> Result<AttrVal, String> {
        self.0.remove(k).ok_or_else(|| format!("missing attribute `{k}`"))
    }
    pub(crate) fn word<T: std::str::FromStr>(&mut self, k: &str) -> Result<T, String> {
        match self.take(k)? {
            AttrVal::Word(w) => w.parse().map_err(|_| format!("attribute `{k}`: cannot parse `{w}`")),
            v => Err(format!("attribute `{k}` must be a single value, got {v:?}")),
        }
    }
    /// A single value that may be absent.
    pub(crate) fn opt_word<T: std::str::FromStr>(&mut self, k: &str) -> Result<Option<T>, String> {
        if self.0.contains_key(k) {
            self.word(k).map(Some)
        } else {
            Ok(None)
        }
    }
    pub(crate) fn list<T: std::str::FromStr>(&mut self, k: &str) -> Result<Vec<T>, String> {
        match self.take(k)? {
            AttrVal::List(ws) => {
                ws.iter().map(|w| w.parse().map_err(|_| format!("attribute `{k}`: cannot parse `{w}`"))).collect()
            }
            v => Err(format!("attribute `{k}` must be a list, got {v:?}")),
        }
    }
    pub(crate) fn array<const N: usize>(&mut self, k: &str) -> Result<[usize; N], String> {
        let v: Vec<usize> = self.list(k)?;
        v.try_into().map_err(|v: Vec<usize>| format!("attribute `{k}` needs {N} values, got {}", v.len()))
    }
    pub(crate) fn string(&mut self, k: &str) -> Result<String, String> {
        match self.take(k)? {
            AttrVal::Str(s) => Ok(s),
            v => Err(format!("attribute `{k}` must be a quoted string, got {v:?}")),
        }
    }
    /// A dtype written by name.
    pub(crate) fn dtype(&mut self, k: &str) -> Result<DType, String> {
        let name: String = self.word(k)?;
        DType::from_name(&name).ok_or_else(|| format!("unknown dtype `{name}`"))
    }
}

/// The head of a value definition: `%N "name": type [fused]`.
struct Head {
    n: u32,
    name: String,
    ty: TensorType,
    line: usize,
    fused: bool,
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    /// Text value number → graph value.
    ids: HashMap<u32, ValueId>,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }
    fn line(&self) -> usize {
        self.toks[self.pos].1
    }
    fn err<T>(&self, msg: impl std::fmt::Display) -> Result<T, String> {
        Err(format!("line {}: {msg}", self.line()))
    }
    fn next(&mut self) -> Tok {
        let t = self.toks[self.pos].0.clone();
        if t != Tok::Eof {
            self.pos += 1;
        }
        t
    }
    fn eat(&mut self, c: char) -> bool {
        if *self.peek() == Tok::Punct(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    /// Consumes the word `w` if it is next.
    /// `=[0,-1]` after `syms`: the symbol on each axis of `what`.
    fn syms(&mut self, g: &Graph, what: &str) -> Result<Vec<Option<usize>>, String> {
        self.expect('=')?;
        self.expect('[')?;
        let words = self.list_of(']', Parser::word)?;
        words
            .iter()
            .map(|w| match w.parse::<i64>() {
                Ok(-1) => Ok(None),
                Ok(s) if s >= 0 && (s as usize) < g.symbols.len() => Ok(Some(s as usize)),
                _ => Err(format!("bad symbol index `{w}` of {what}")),
            })
            .collect()
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if *self.peek() == Tok::Word(w.into()) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            self.err(format!("expected `{c}`, found {}", self.describe()))
        }
    }
    fn describe(&self) -> String {
        match self.peek() {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Str(s) => quote(s),
            Tok::Punct(c) => format!("`{c}`"),
            Tok::Eof => "end of input".into(),
        }
    }
    fn word(&mut self) -> Result<String, String> {
        match self.peek().clone() {
            Tok::Word(w) => {
                self.pos += 1;
                Ok(w)
            }
            _ => self.err(format!("expected a word, found {}", self.describe())),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        match self.peek().clone() {
            Tok::Str(s) => {
                self.pos += 1;
                Ok(s)
            }
            _ => self.err(format!("expected a quoted string, found {}", self.describe())),
        }
    }
    fn keyword(&mut self, k: &str) -> Result<(), String> {
        match self.peek() {
            Tok::Word(w) if w == k => {
                self.pos += 1;
                Ok(())
            }
            _ => self.err(format!("expected `{k}`, found {}", self.describe())),
        }
    }
    /// `%N` → N.
    fn value_number(&mut self) -> Result<u32, String> {
        self.expect('%')?;
        let w = self.word()?;
        w.parse().or_else(|_| self.err(format!("bad value number `%{w}`")))
    }
    fn value_use(&mut self) -> Result<ValueId, String> {
        let n = self.value_number()?;
        match self.ids.get(&n) {
            Some(&v) => Ok(v),
            None => self.err(format!("%{n} is used before it is defined")),
        }
    }
    fn define(&mut self, n: u32, v: ValueId, line: usize) -> Result<(), String> {
        if self.ids.insert(n, v).is_some() {
            return Err(format!("line {line}: %{n} is defined twice"));
        }
        Ok(())
    }
    /// Comma-separated items up to (and consuming) `close`.
    fn list_of<T>(
        &mut self,
        close: char,
        mut item: impl FnMut(&mut Self) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let mut v = Vec::new();
        if self.eat(close) {
            return Ok(v);
        }
        loop {
            v.push(item(self)?);
            if self.eat(close) {
                return Ok(v);
            }
            self.expect(',')?;
        }
    }
    /// `f32[1,2,3]`
    fn ty(&mut self) -> Result<TensorType, String> {
        let d = self.word()?;
        let dtype = match DType::from_name(&d) {
            Some(t) => t,
            None => return self.err(format!("unknown dtype `{d}`")),
        };
        self.expect('[')?;
        let dims = self.list_of(']', |p| {
            let w = p.word()?;
            w.parse::<usize>().or_else(|_| p.err(format!("bad dimension `{w}`")))
        })?;
        Ok(TensorType::new(dtype, dims))
    }
    /// `%N "name": type [fused]`.
    fn value_head(&mut self) -> Result<Head, String> {
        let line = self.line();
        let n = self.value_number()?;
        let name = self.string()?;
        self.expect(':')?;
        let ty = self.ty()?;
        let fused = self.eat_word("fused");
        Ok(Head { n, name, ty, line, fused })
    }
    /// Binds text number `h.n` to `v` and restores the value's `fused` mark.
    fn define_head(&mut self, g: &mut Graph, h: &Head, v: ValueId) -> Result<(), String> {
        g.set_fused(v, h.fused);
        self.define(h.n, v, h.line)
    }
    /// The body of a constant: `[e, ...]` (parsed) or `bytes(N, fnv1a=H)` (rejected).
    /// `what` names the constant in messages (`constant %3 "w"`).
    fn const_data(&mut self, what: &str, ty: &TensorType) -> Result<Tensor, String> {
        if *self.peek() == Tok::Word("bytes".into()) {
            return self.err(format!(
                "{what} ({ty}) is elided in the text form; only constants of at most {INLINE_LIMIT} \
                 elements are printed inline and can be parsed back"
            ));
        }
        self.expect('[')?;
        let words = self.list_of(']', Self::word)?;
        if words.len() != numel(&ty.shape) {
            return self.err(format!("{what} of type {ty} needs {} elements, got {}", numel(&ty.shape), words.len()));
        }
        fn all<T: std::str::FromStr>(ws: &[String]) -> Result<Vec<T>, String> {
            ws.iter().map(|w| w.parse().map_err(|_| format!("cannot parse element `{w}`"))).collect()
        }
        let data = match ty.dtype {
            DType::F32 => all(&words).map(Data::F32),
            DType::I32 => all(&words).map(Data::I32),
            DType::I64 => all(&words).map(Data::I64),
            DType::Bool => all(&words).map(Data::Bool),
            DType::F64 => all(&words).map(Data::F64),
            DType::F16 => all::<f32>(&words).map(|v| Data::F16(v.into_iter().map(half::f16::from_f32).collect())),
            DType::BF16 => all::<f32>(&words).map(|v| Data::BF16(v.into_iter().map(half::bf16::from_f32).collect())),
            DType::I8 => all(&words).map(Data::I8),
            DType::U8 => all(&words).map(Data::U8),
            DType::I16 => all(&words).map(Data::I16),
            DType::U16 => all(&words).map(Data::U16),
            DType::U32 => all(&words).map(Data::U32),
            DType::U64 => all(&words).map(Data::U64),
            d => match d.minifloat() {
                Some(f) => {
                    all::<f32>(&words).map(|v| Data::Small(d, v.into_iter().map(|x| f.encode_exact(x)).collect()))
                }
                None => all::<i64>(&words).map(|v| Data::from_i64s(d, &v)),
            },
        };
        match data {
            Ok(d) => Ok(Tensor::from_data(ty.shape.clone(), d)),
            Err(e) => self.err(format!("{what}: {e}")),
        }
    }
    /// `{key=value, ...}` (the opening brace already consumed).
    fn attrs(&mut self) -> Result<Attrs, String> {
        let mut m = BTreeMap::new();
        for (k, v) in self.list_of('}', |p| {
            let k = p.word()?;
            p.expect('=')?;
            let v = match p.peek() {
                Tok::Str(_) => AttrVal::Str(p.string()?),
                Tok::Punct('[') => {
                    p.next();
                    AttrVal::List(p.list_of(']', Self::word)?)
                }
                _ => AttrVal::Word(p.word()?),
            };
            Ok((k, v))
        })? {
            if m.insert(k.clone(), v).is_some() {
                return self.err(format!("attribute `{k}` given twice"));
            }
        }
        Ok(Attrs(m))
    }

    fn node(&mut self, g: &mut Graph) -> Result<(), String> {
        let line = self.line();
        let mut results = vec![self.value_head()?];
        while self.eat(',') {
            results.push(self.value_head()?);
        }
        self.expect('=')?;
        let op_name = self.word()?;
        self.expect('(')?;
        let inputs = self.list_of(')', Self::value_use)?;
        let mut attrs = if self.eat('{') { self.attrs()? } else { Attrs(BTreeMap::new()) };
        let guard = if self.eat_word("when") {
            self.expect('[')?;
            self.list_of(']', |p| {
                let key = p.value_use()?;
                p.expect('=')?;
                let w = p.word()?;
                let value = w.parse().map_err(|_| format!("bad case value `{w}`"))?;
                Ok(crate::Guard { key, value })
            })?
        } else {
            Vec::new()
        };
        let node_name = if self.eat('#') { self.string()? } else { String::new() };
        let op = crate::ops::parse(&op_name, &mut attrs).map_err(|e| format!("line {line}: {e}"))?;
        if let Some(k) = attrs.0.keys().next() {
            return Err(format!("line {line}: {op_name} has no attribute `{k}`"));
        }
        let names: Vec<String> = results.iter().map(|r| r.name.clone()).collect();
        let tys: Vec<TensorType> = results.iter().map(|r| r.ty.clone()).collect();
        g.guard = guard;
        let outs = if matches!(op, Op::Unsupported { .. }) {
            g.add_placeholder(op, &inputs, node_name, &names, tys.clone())
        } else {
            g.add_node(op, &inputs, node_name, &names).map_err(|e| format!("line {line}: {e}"))?
        };
        let got: Vec<&TensorType> = outs.iter().map(|&v| g.ty(v)).collect();
        if got.len() != tys.len() || got.iter().zip(&tys).any(|(a, b)| *a != b) {
            let got: Vec<String> = got.iter().map(|t| t.to_string()).collect();
            let want: Vec<String> = tys.iter().map(|t| t.to_string()).collect();
            return Err(format!(
                "line {line}: {op_name} results are written as [{}] but its typing rule gives [{}]",
                want.join(", "),
                got.join(", ")
            ));
        }
        g.guard.clear();
        for (h, v) in results.iter().zip(outs) {
            self.define_head(g, h, v)?;
        }
        Ok(())
    }
}

/// Parses the text form back into a graph (see the module docs for the grammar).
pub fn parse(src: &str) -> Result<Graph, String> {
    let mut p = Parser { toks: lex(src)?, pos: 0, ids: HashMap::new() };
    p.keyword("graph")?;
    let mut g = Graph::new(p.string()?);
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
                let mut bound = || -> Result<usize, String> {
                    let w = p.word()?;
                    w.parse().map_err(|_| format!("bad bound `{w}` of symbol {}", quote(&name)))
                };
                let (lo, hi) = (bound()?, bound()?);
                let from = if p.eat_word("from") {
                    let base = p.word()?;
                    let off = p.word()?;
                    match (base.parse::<usize>(), off.parse::<i64>()) {
                        (Ok(b), Ok(c)) if b < g.symbols.len() => Some((b, c)),
                        _ => return Err(format!("bad `from {base} {off}` of symbol {}", quote(&name))),
                    }
                } else {
                    None
                };
                g.symbols.push(crate::DimSymbol { name, lo, hi, from });
            }
            Tok::Word(w) if w == "axis_dims" => {
                p.next();
                g.axis_dims = true;
            }
            Tok::Word(w) if w == "input" => {
                p.next();
                let h = p.value_head()?;
                let i = g.inputs.len();
                let v = g.add_input(h.name.clone(), h.ty.clone());
                p.define_head(&mut g, &h, v)?;
                if p.eat_word("syms") {
                    let axes = p.syms(&g, &format!("input {}", quote(&h.name)))?;
                    g.input_syms.insert(i, axes);
                }
            }
            Tok::Word(w) if w == "const" => {
                p.next();
                let h = p.value_head()?;
                p.expect('=')?;
                let t = p.const_data(&format!("constant %{} {}", h.n, quote(&h.name)), &h.ty)?;
                let v = g.add_const(h.name.clone(), t);
                p.define_head(&mut g, &h, v)?;
            }
            Tok::Word(w) if w == "output" => {
                p.next();
                let v = p.value_use()?;
                if p.eat_word("shape") {
                    p.expect('=')?;
                    let dims = p.value_use()?;
                    p.keyword("bounds")?;
                    p.expect('=')?;
                    p.expect('[')?;
                    let words = p.list_of(']', Parser::word)?;
                    let bounds = words
                        .iter()
                        .map(|w| w.parse().map_err(|_| format!("bad bound `{w}`")))
                        .collect::<Result<_, _>>()?;
                    g.output_shapes.insert(g.outputs.len(), crate::RuntimeShape { dims, bounds });
                }
                if p.eat_word("syms") {
                    let axes = p.syms(&g, &format!("output {}", g.outputs.len()))?;
                    g.output_syms.insert(g.outputs.len(), axes);
                }
                g.outputs.push(v);
            }
            Tok::Punct('%') => p.node(&mut g)?,
            _ => {
                return p.err(format!(
                    "expected `symbol`, `input`, `const`, `output`, a node or `}}`, found {}",
                    p.describe()
                ))
            }
        }
    }
    if *p.peek() != Tok::Eof {
        return p.err(format!("unexpected {} after the graph", p.describe()));
    }
    Ok(g)
}

pub mod lir;

#[cfg(test)]
mod tests;
