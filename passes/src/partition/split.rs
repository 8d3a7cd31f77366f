//! Compiling a model split across devices, up to LIR: partition the simplified graph, run
//! the per-partition part of the pipeline on each partition with its device's backend, and
//! check the lowered partitions against the devices' memory caps, partitioning again with
//! smaller budgets while a device overflows. Then [`Slots`]: where each tensor handed between
//! partitions lives at run time.

use std::collections::{HashMap, HashSet};

use kiln_ir::graph::{Node, ValueId};
use kiln_ir::Graph;

use super::{partition, CostModel, Device, DeviceKind, Plan};
use crate::pipeline::{self, Backend, Context, Lowered, Until};
use crate::PassError;

/// The backends of the kinds of devices a model is split across.
pub trait Backends: Sync {
    /// Whether a device of `kind` runs `node`.
    fn supports(&self, kind: DeviceKind, g: &Graph, node: &Node) -> bool;
    /// The pipeline's backend for a device of `kind`.
    fn backend(&self, kind: DeviceKind) -> &dyn Backend;
}

/// One partition after the pipeline: its graph (fused) and its LIR.
pub struct LoweredPartition {
    pub graph: Graph,
    pub lowered: Lowered,
}

/// A model split across devices and lowered.
pub struct Split {
    pub plan: Plan,
    /// Each partition's graph and LIR, in the plan's order.
    pub partitions: Vec<LoweredPartition>,
    /// Each device's memory: its partitions' weights, its largest arena (its partitions run
    /// one after another) and the tensors it hands to other partitions.
    pub usage: Vec<u64>,
}

/// Re-partitions at most this many times before a cap that cannot be met is an error.
const ATTEMPTS: usize = 6;

/// Runs the whole-graph passes on `g`, partitions it across `devices` and runs the rest of
/// the pipeline on every partition (in parallel, on rayon's current pool). Partitioning works
/// from estimates; when the lowered partitions of a device need more than its cap (packed
/// and transformed weights, scratch buffers), it partitions again with that device's budget
/// scaled down by the overshoot, up to [`ATTEMPTS`] times.
pub fn split(g: &mut Graph, devices: &[Device], backends: &dyn Backends, verify: bool) -> Result<Split, PassError> {
    use rayon::prelude::*;
    let cpu = backends.backend(DeviceKind::Cpu);
    pipeline::run(g, &Context::new(cpu, verify), Until::Partitioning)?;
    let cost = CostModel::default();
    let supports = |k: DeviceKind, g: &Graph, n: &Node| backends.supports(k, g, n);
    let mut budgets: Vec<Option<u64>> = devices.iter().map(|d| d.mem).collect();
    let mut attempt = 0;
    loop {
        let plan = partition(g, devices, &supports, &cost, &budgets)?;
        let graph: &Graph = g;
        let lower_one = |i: usize| -> Result<LoweredPartition, PassError> {
            let p = &plan.partitions[i];
            let mut sub = super::extract(graph, p, &format!("{}.p{i}", graph.name))?;
            let cx = Context::new(backends.backend(plan.devices[p.device].kind), verify);
            let lowered = pipeline::run_partition(&mut sub, &cx)?;
            Ok(LoweredPartition { graph: sub, lowered })
        };
        let partitions: Vec<LoweredPartition> =
            (0..plan.partitions.len()).into_par_iter().map(lower_one).collect::<Result<_, _>>()?;
        let usage = device_usage(g, &plan, &partitions);
        let over: Vec<usize> =
            (0..devices.len()).filter(|&d| devices[d].mem.is_some_and(|cap| usage[d] > cap)).collect();
        if over.is_empty() {
            return Ok(Split { plan, partitions, usage });
        }
        attempt += 1;
        if attempt > ATTEMPTS {
            let d = over[0];
            return Err(PassError::Devices(format!(
                "device {d} ({}) needs {} bytes (weights, arena and the tensors it hands on), over its cap",
                devices[d], usage[d]
            )));
        }
        shrink_budgets(devices, &usage, &over, &mut budgets);
    }
}

/// Scales each overflowing device's budget down by the share the estimate missed, and a
/// little more (at least 4 KiB), so that the next partitioning gives it less.
fn shrink_budgets(devices: &[Device], usage: &[u64], over: &[usize], budgets: &mut [Option<u64>]) {
    for &d in over {
        let (cap, budget) = (devices[d].mem.unwrap_or(0), budgets[d].unwrap_or(0));
        let scaled = (budget as f64 * cap as f64 / usage[d] as f64 * 0.98) as u64;
        budgets[d] = Some(scaled.min(budget.saturating_sub(4096)));
    }
}

/// Each device's memory for a plan's lowered partitions: the weights of its partitions, its
/// largest arena (its partitions run one after another) and the tensors its partitions hand
/// to other partitions (each once, 64-byte aligned).
pub fn device_usage(g: &Graph, plan: &Plan, lowered: &[LoweredPartition]) -> Vec<u64> {
    let n = plan.devices.len();
    let (mut weights, mut arena, mut handed) = (vec![0u64; n], vec![0u64; n], vec![0u64; n]);
    for (p, l) in plan.partitions.iter().zip(lowered) {
        weights[p.device] += l.lowered.weights.len;
        arena[p.device] = arena[p.device].max(l.lowered.memory.arena_bytes);
    }
    let mut seen = HashSet::new();
    for t in &plan.transfers {
        if seen.insert(t.value) {
            handed[plan.partitions[t.from].device] += (g.ty(t.value).bytes() as u64).next_multiple_of(64);
        }
    }
    (0..n).map(|d| weights[d] + arena[d] + handed[d]).collect()
}

/// Where each value crossing a partition boundary lives at run time. Slot `i` below the
/// graph's input count is input `i`; the next are the outputs; then the intermediates.
#[derive(Debug, Default, PartialEq)]
pub struct Slots {
    pub home: HashMap<ValueId, u32>,
    /// The values that live in intermediate slots, in slot order.
    pub intermediates: Vec<ValueId>,
    /// Copies `(from, to)` between slots after the partitions ran.
    pub copies: Vec<(u32, u32)>,
}

impl Slots {
    /// Graph inputs live in their input slot. A graph output lives in its output slot, unless
    /// a later partition reads it too (then in an intermediate, 64-byte aligned for the
    /// reader, copied to the output at the end). Other values handed between partitions live
    /// in intermediates. A value that is several outputs, or an input given back, is copied.
    pub fn assign(g: &Graph, plan: &Plan) -> Slots {
        let (n_in, n_out) = (g.inputs.len() as u32, g.outputs.len() as u32);
        let mut s = Slots::default();
        for (i, &v) in g.inputs.iter().enumerate() {
            s.home.insert(v, i as u32);
        }
        let read_later: HashSet<ValueId> = plan.transfers.iter().map(|t| t.value).collect();
        let intermediate = |s: &mut Slots, v: ValueId| -> u32 {
            if let Some(&k) = s.home.get(&v) {
                return k;
            }
            let k = n_in + n_out + s.intermediates.len() as u32;
            s.intermediates.push(v);
            s.home.insert(v, k);
            k
        };
        for (k, &v) in g.outputs.iter().enumerate() {
            let slot = n_in + k as u32;
            match s.home.get(&v) {
                Some(&from) => s.copies.push((from, slot)),
                None if read_later.contains(&v) => {
                    let from = intermediate(&mut s, v);
                    s.copies.push((from, slot));
                }
                None => {
                    s.home.insert(v, slot);
                }
            }
        }
        for t in &plan.transfers {
            intermediate(&mut s, t.value);
        }
        s
    }
}
