//! The whole compilation pipeline, in order: from the imported HIR graph to a memory-planned
//! LIR program and its weight section. [`PIPELINE`] is the list; [`run`] the driver.
//!
//! ```text
//!   whole graph (HIR)     fold-constants remove-identity fold-batchnorm cse sink-reshapes
//!                         fold-constants-2 dce
//!   ── a model split across devices is partitioned here (partition.rs); the rest runs
//!      on each partition, with the context of its device ──
//!   per partition (HIR)   quantize-products (--precision int8) int-qdq narrow-int-products decompose
//!                         (ops the backend does not lower whole) fuse
//!   HIR → LIR             lower
//!   per partition (LIR)   fuse-lir forward-copies coalesce-dims split-reductions inline-scalar-constants
//!                         prepack (the backend's)
//!                         relayout-constants plan-memory remove-unused-buffers pack-weights
//!                         clamp-rows (kernels over run-time rows: rows.rs)
//! ```
//!
//! A backend plugs its own passes in through the [`Context`] ([`Backend::prepack`]): this
//! crate depends on no backend. The verifier (HIR, then LIR from `lower` on) runs after
//! every step when [`Context::verify`] is set, and always in debug builds. `kiln inspect --after NAME` stops
//! after any step of the list.

use std::time::{Duration, Instant};

use kiln_ir::lir::Program;
use kiln_ir::Graph;

use crate::memory::{MemoryReport, WeightSection};
use crate::{coalesce, decompose, fuse, memory, quant, simplify, split, views, PassError};

/// What a backend adds to the pipeline for the device a graph is compiled for.
pub trait Backend: Sync {
    /// The `prepack` step: rewrite constant operands into the layout the backend's kernels
    /// read (the CPU packs GEMM weights into its kernels' panels). Returns how many it
    /// rewrote. Nothing by default.
    fn prepack(&self, _p: &mut Program) -> usize {
        0
    }

    /// The `decompose` step: whether to expand `op` (one that stays whole through the HIR
    /// passes, [`crate::decompose::expandable`]) into simpler ops. A backend that lowers an
    /// op whole returns false for it. Every op by default.
    fn decomposes(&self, _op: &kiln_ir::Op) -> bool {
        true
    }

    /// The `quantize-products` step: whether to quantize the f32 products with constant
    /// weights to int8 ([`crate::quant::quantize_products`]; `--precision int8`). No by default.
    fn quantizes_products(&self) -> bool {
        false
    }
}

/// A backend that adds nothing (LIR for a reader, a GPU partition).
pub struct Plain;

impl Backend for Plain {}

/// What every step sees besides the IR.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The backend the graph is compiled for.
    pub backend: &'a dyn Backend,
    /// Verify the HIR after every HIR pass (always on in debug builds).
    pub verify: bool,
}

impl<'a> Context<'a> {
    pub fn new(backend: &'a dyn Backend, verify: bool) -> Context<'a> {
        Context { backend, verify }
    }

    fn verifies(&self) -> bool {
        self.verify || cfg!(debug_assertions)
    }
}

/// A graph lowered to LIR: its program, and the memory plan and weight section that
/// `plan-memory` and `pack-weights` fill in.
#[derive(Debug, Default)]
pub struct Lowered {
    pub program: Program,
    pub memory: MemoryReport,
    pub weights: WeightSection,
}

/// A HIR pass: returns whether it changed the graph.
pub type HirPass = fn(&mut Graph) -> Result<bool, PassError>;
/// A HIR pass on one partition, with the context (for the backend's choices).
pub type PartitionPass = fn(&mut Graph, &Context) -> Result<bool, PassError>;
/// An LIR pass, with the context (for the backend's steps).
pub type LirPass = fn(&mut Lowered, &Context) -> Result<(), PassError>;

/// One step of the pipeline.
#[derive(Clone, Copy)]
pub enum Pass {
    /// A HIR pass on the whole graph (before a split model is partitioned).
    Graph(HirPass),
    /// A HIR pass on each partition (on the whole graph when it is not split).
    Partition(PartitionPass),
    /// HIR → LIR.
    Lower,
    /// An LIR pass.
    Lir(LirPass),
}

/// The pipeline, in order (see the module's documentation).
pub const PIPELINE: &[(&str, Pass)] = &[
    ("fold-constants", Pass::Graph(simplify::fold_constants)),
    ("remove-identity", Pass::Graph(simplify::remove_identity)),
    ("fold-batchnorm", Pass::Graph(simplify::fold_batchnorm)),
    ("cse", Pass::Graph(simplify::cse)),
    ("sink-reshapes", Pass::Graph(simplify::sink_reshapes)),
    ("fold-constants-2", Pass::Graph(simplify::fold_constants)),
    ("dce", Pass::Graph(simplify::dce)),
    ("quantize-products", Pass::Partition(quantize_products)),
    ("int-qdq", Pass::Partition(integer_qdq)),
    ("narrow-int-products", Pass::Partition(narrow_int_products)),
    ("decompose", Pass::Partition(decompose::decompose)),
    ("fuse", Pass::Partition(fuse)),
    ("lower", Pass::Lower),
    ("fuse-lir", Pass::Lir(fuse_lir)),
    ("forward-copies", Pass::Lir(forward_copies)),
    ("coalesce-dims", Pass::Lir(coalesce_dims)),
    ("split-reductions", Pass::Lir(split_reductions)),
    ("inline-scalar-constants", Pass::Lir(inline_scalar_constants)),
    ("prepack", Pass::Lir(prepack)),
    ("relayout-constants", Pass::Lir(relayout_constants)),
    ("plan-memory", Pass::Lir(plan_memory)),
    ("remove-unused-buffers", Pass::Lir(remove_unused_buffers)),
    ("pack-weights", Pass::Lir(pack_weights)),
    ("clamp-rows", Pass::Lir(clamp_rows)),
];

/// A graph rewrite, then the dead code it leaves (the replaced nodes).
fn and_dce(g: &mut Graph, changed: bool) -> Result<bool, PassError> {
    if changed {
        simplify::dce(g)?;
    }
    Ok(changed)
}

fn quantize_products(g: &mut Graph, cx: &Context) -> Result<bool, PassError> {
    if !cx.backend.quantizes_products() {
        return Ok(false);
    }
    let changed = quant::quantize_products(g)?;
    and_dce(g, changed)
}

fn integer_qdq(g: &mut Graph, _: &Context) -> Result<bool, PassError> {
    let changed = quant::integer_convolutions(g)? | quant::integer_matmuls(g)?;
    if changed {
        // Products reading one activation (a bottleneck's first convolution and its
        // projection shortcut) share its i16 copy.
        simplify::cse(g)?;
    }
    and_dce(g, changed)
}

fn narrow_int_products(g: &mut Graph, _: &Context) -> Result<bool, PassError> {
    quant::narrow_int_products(g)
}

fn fuse(g: &mut Graph, _: &Context) -> Result<bool, PassError> {
    fuse::fuse(g)
}

// The LIR steps as [`LirPass`]es: each the pass of its module on the lowered program.

fn fuse_lir(l: &mut Lowered, _: &Context) -> Result<(), PassError> {
    fuse::fuse_lir(&mut l.program);
    Ok(())
}

fn clamp_rows(l: &mut Lowered, _: &Context) -> Result<(), PassError> {
    crate::rows::clamp(&mut l.program)
}

fn forward_copies(l: &mut Lowered, _: &Context) -> Result<(), PassError> {
    views::forward_copies(&mut l.program);
    Ok(())
}

fn coalesce_dims(l: &mut Lowered, _: &Context) -> Result<(), PassError> {
    coalesce::coalesce_dims(&mut l.program);
    Ok(())
}

fn split_reductions(l: &mut Lowered, _: &Context) -> Result<(), PassError> {
    split::split_reductions(&mut l.program);
    Ok(())
}

fn inline_scalar_constants(l: &mut Lowered, _: &Context) -> Result<(), PassError> {
    fuse::inline_scalar_constants(&mut l.program);
    Ok(())
}

fn prepack(l: &mut Lowered, cx: &Context) -> Result<(), PassError> {
    cx.backend.prepack(&mut l.program);
    Ok(())
}

fn relayout_constants(l: &mut Lowered, _: &Context) -> Result<(), PassError> {
    fuse::relayout_constants(&mut l.program);
    Ok(())
}

fn plan_memory(l: &mut Lowered, _: &Context) -> Result<(), PassError> {
    l.memory = memory::plan(&mut l.program);
    Ok(())
}

fn remove_unused_buffers(l: &mut Lowered, _: &Context) -> Result<(), PassError> {
    l.program.remove_unused_buffers();
    Ok(())
}

fn pack_weights(l: &mut Lowered, _: &Context) -> Result<(), PassError> {
    l.weights = memory::pack_constants(&mut l.program);
    Ok(())
}

/// The names of the steps, in order (what `--after` accepts, besides `import`).
pub fn pass_names() -> Vec<&'static str> {
    PIPELINE.iter().map(|(n, _)| *n).collect()
}

/// Whether step `name` works on LIR (`lower` and after).
pub fn is_lir(name: &str) -> bool {
    let lower = PIPELINE.iter().position(|(_, p)| matches!(p, Pass::Lower));
    PIPELINE.iter().position(|(n, _)| *n == name).zip(lower).is_some_and(|(i, l)| i >= l)
}

/// Where the driver stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until<'s> {
    /// The end of the pipeline.
    End,
    /// The last whole-graph step: where a model split across devices is partitioned.
    Partitioning,
    /// The last HIR step (before `lower`).
    Hir,
    /// After the named step (`kiln inspect --after`).
    After(&'s str),
}

/// What the driver leaves: the graph's state, and the LIR once it is lowered.
pub struct Outcome {
    /// `None` while the pipeline stopped in HIR.
    pub lowered: Option<Lowered>,
    /// How long each step took, in order.
    pub timings: Vec<(&'static str, Duration)>,
}

/// The index in [`PIPELINE`] of the first step that `first` names.
fn first_of(first: fn(&Pass) -> bool) -> usize {
    PIPELINE.iter().position(|(_, p)| first(p)).expect("the pipeline has every kind of step")
}

/// Runs the steps of [`PIPELINE`] from index `first` on (the graph being in the state the
/// step before it leaves), to `until`. Fuses `g` in place; the LIR comes back in the outcome.
fn drive(g: &mut Graph, cx: &Context, first: usize, until: Until) -> Result<Outcome, PassError> {
    if let Until::After(name) = until {
        if !PIPELINE[first..].iter().any(|(n, _)| *n == name) {
            return Err(PassError::Failed { pass: name.into(), message: "no such pass at this point".into() });
        }
    }
    if cx.verifies() && first == 0 {
        kiln_ir::verify::verify(g).map_err(|message| PassError::Verify { pass: "import".into(), message })?;
    }
    let mut lowered: Option<Lowered> = None;
    let mut timings = Vec::new();
    for &(name, pass) in &PIPELINE[first..] {
        match (until, pass) {
            (Until::Partitioning, Pass::Partition(_) | Pass::Lower | Pass::Lir(_)) => break,
            (Until::Hir, Pass::Lower | Pass::Lir(_)) => break,
            _ => {}
        }
        let start = Instant::now();
        match (pass, lowered.as_mut()) {
            (Pass::Graph(f), None) => {
                f(g)?;
                verify_hir(g, cx, name)?;
            }
            (Pass::Partition(f), None) => {
                f(g, cx)?;
                verify_hir(g, cx, name)?;
            }
            (Pass::Lower, None) => lowered = Some(lower_step(g, cx, name)?),
            (Pass::Lir(f), Some(l)) => lir_step(f, l, cx, name)?,
            _ => unreachable!("`{name}` is out of order in PIPELINE"),
        }
        timings.push((name, start.elapsed()));
        if until == Until::After(name) {
            break;
        }
    }
    Ok(Outcome { lowered, timings })
}

/// Runs the pipeline on a graph compiled as one piece, to `until`.
pub fn run(g: &mut Graph, cx: &Context, until: Until) -> Result<Outcome, PassError> {
    drive(g, cx, 0, until)
}

/// Runs the per-partition part of the pipeline (fusion, lowering, the LIR passes) on one
/// partition's graph, whose whole-graph passes have run before partitioning.
pub fn run_partition(g: &mut Graph, cx: &Context) -> Result<Lowered, PassError> {
    let out = drive(g, cx, first_of(|p| matches!(p, Pass::Partition(_))), Until::End)?;
    Ok(out.lowered.expect("the pipeline lowers"))
}

/// Runs the LIR half of the pipeline (`lower` and after) on a graph whose HIR steps have run.
pub fn lower(g: &Graph, cx: &Context) -> Result<Lowered, PassError> {
    let first = first_of(|p| matches!(p, Pass::Lower));
    let mut l = lower_step(g, cx, PIPELINE[first].0)?;
    for &(name, pass) in &PIPELINE[first + 1..] {
        if let Pass::Lir(f) = pass {
            lir_step(f, &mut l, cx, name)?;
        }
    }
    Ok(l)
}

/// Runs the one LIR step `name` of [`PIPELINE`] on `l`, then the LIR verifier (what the
/// LIR file tests do: text in, one step, text out).
pub fn run_lir_step(name: &str, l: &mut Lowered, cx: &Context) -> Result<(), PassError> {
    match PIPELINE.iter().find(|(n, _)| *n == name) {
        Some(&(name, Pass::Lir(f))) => lir_step(f, l, cx, name),
        _ => Err(PassError::Failed { pass: name.into(), message: "not an LIR step of the pipeline".into() }),
    }
}

/// The `lower` step: HIR → LIR, then the LIR verifier.
fn lower_step(g: &Graph, cx: &Context, name: &str) -> Result<Lowered, PassError> {
    let l = Lowered { program: crate::lower::lower(g)?, ..Default::default() };
    verify_lir(&l, cx, name)?;
    Ok(l)
}

/// An LIR step, then the LIR verifier.
fn lir_step(f: LirPass, l: &mut Lowered, cx: &Context, name: &str) -> Result<(), PassError> {
    f(l, cx)?;
    verify_lir(l, cx, name)
}

/// Runs the HIR verifier after step `name` when the context verifies.
fn verify_hir(g: &Graph, cx: &Context, name: &str) -> Result<(), PassError> {
    if cx.verifies() {
        kiln_ir::verify::verify(g).map_err(|message| PassError::Verify { pass: name.into(), message })?;
    }
    Ok(())
}

/// Runs the LIR verifier after step `name` when the context verifies.
fn verify_lir(l: &Lowered, cx: &Context, name: &str) -> Result<(), PassError> {
    if cx.verifies() {
        kiln_ir::verify::verify_lir(&l.program).map_err(|message| PassError::Verify { pass: name.into(), message })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_in_phase_order() {
        // Whole-graph steps, then per-partition HIR steps, then `lower`, then LIR steps.
        let rank = |p: &Pass| match p {
            Pass::Graph(_) => 0,
            Pass::Partition(_) => 1,
            Pass::Lower => 2,
            Pass::Lir(_) => 3,
        };
        let ranks: Vec<u8> = PIPELINE.iter().map(|(_, p)| rank(p)).collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{ranks:?}");
        assert_eq!(ranks.iter().filter(|&&r| r == 2).count(), 1);
        let names = pass_names();
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "step names are unique");
        assert!(!is_lir("fuse") && is_lir("lower") && is_lir("pack-weights") && !is_lir("nonsense"));
        // Ops kept whole are expanded per partition, before fusion sees them.
        assert_eq!(
            names.iter().position(|&n| n == "decompose").unwrap() + 1,
            names.iter().position(|&n| n == "fuse").unwrap()
        );
    }

    fn small_graph() -> Graph {
        kiln_ir::text::parse(
            r#"graph "g" {
  input %0 "x": f32[2,3]
  %1 "a": f32[2,3] = relu(%0)
  %2 "y": f32[2,3] = exp(%1)
  output %2
}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_driver_stops_where_asked() {
        let cx = Context::new(&Plain, true);
        let mut g = small_graph();
        let out = run(&mut g, &cx, Until::After("cse")).unwrap();
        assert!(out.lowered.is_none());
        assert_eq!(out.timings.last().unwrap().0, "cse");
        let mut g = small_graph();
        let out = run(&mut g, &cx, Until::Partitioning).unwrap();
        assert_eq!(out.timings.last().unwrap().0, "dce");
        let mut g = small_graph();
        let out = run(&mut g, &cx, Until::After("lower")).unwrap();
        let l = out.lowered.unwrap();
        assert!(l.weights.pieces.is_empty() && l.memory.buffers == 0, "later steps did not run");
        let mut g = small_graph();
        let out = run(&mut g, &cx, Until::End).unwrap();
        assert_eq!(out.timings.len(), PIPELINE.len());
        assert!(run(&mut small_graph(), &cx, Until::After("no-such-pass")).is_err());
    }

    /// The LIR verifier accepts what the pipeline makes and names what a broken program gets
    /// wrong: a view past its buffer, a load of a missing operand, `Acc` outside a finalizer.
    #[test]
    fn the_lir_verifier_catches_broken_programs() {
        use kiln_ir::lir::{Expr, Instr};
        let l = run_partition(&mut small_graph(), &Context::new(&Plain, true)).unwrap();
        kiln_ir::verify::verify_lir(&l.program).unwrap();
        fn first_kernel(p: &mut Program) -> &mut kiln_ir::lir::Kernel {
            let found = p.instrs.iter_mut().find_map(|i| if let Instr::Kernel(k) = i { Some(k) } else { None });
            found.expect("the graph computes")
        }
        let broken = |f: &dyn Fn(&mut kiln_ir::lir::Kernel)| {
            let mut p = l.program.clone();
            f(first_kernel(&mut p));
            kiln_ir::verify::verify_lir(&p).unwrap_err()
        };
        let e = broken(&|k| k.inputs[0].offset += 1);
        assert!(e.contains("reaches elements"), "{e}");
        let e = broken(&|k| k.body = Expr::load(7, vec![Expr::Var(0)]));
        assert!(e.contains("operand 7"), "{e}");
        let e = broken(&|k| k.body = Expr::Acc);
        assert!(e.contains("`Acc`"), "{e}");
    }

    /// A backend's step runs where the list says, on the LIR.
    #[test]
    fn the_backend_plugs_in_through_the_context() {
        struct Counting(std::sync::atomic::AtomicUsize);
        impl Backend for Counting {
            fn prepack(&self, p: &mut Program) -> usize {
                self.0.fetch_add(p.buffers.len().max(1), std::sync::atomic::Ordering::SeqCst);
                0
            }
        }
        let backend = Counting(Default::default());
        let mut g = small_graph();
        run_partition(&mut g, &Context::new(&backend, true)).unwrap();
        assert!(backend.0.load(std::sync::atomic::Ordering::SeqCst) > 0);
    }
}
