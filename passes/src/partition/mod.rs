//! Partitioning: splitting one model across several devices.
//!
//! The input is the simplified HIR (before fusion, which runs per partition) and a target
//! list such as `cuda,cpu` or `cpu:mem=64MiB,cpu:mem=64MiB`. Three steps:
//!
//! 1. **Support**: each node goes to the first device in the list that can run it. A node no
//!    device supports is an error, and every such node is named at once.
//! 2. **Cost**: a roofline estimate per node and device ([`CostModel`]) plus the cost of
//!    moving tensors between devices. A run of nodes that is cheaper on a neighbouring device
//!    once its transfers are counted moves there.
//! 3. **Memory**: walking the schedule, each device takes nodes while its estimated memory
//!    (the weights its nodes read plus the peak of the activations they produce) stays
//!    within its budget; then the device is closed and the next device in the list that
//!    supports the node takes over.
//!
//! The schedule is a topological order that keeps a device's nodes together where the
//! dependences allow. Its maximal runs on one device are the partitions, so the partition
//! graph is a DAG by construction (every edge goes forward in the schedule), which
//! [`Plan::validate`] checks again. Every value a partition reads from another partition is a
//! [`Transfer`] (for devices that share host memory, such as CPUs, the runtime hands the
//! buffer over instead of copying it).
//!
//! The budgets start at the memory caps. The compiler checks the real figures of each
//! lowered partition (its packed weights and planned arena) and, when a device overflows,
//! partitions again with a smaller budget for it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use kiln_ir::graph::{Node, NodeId, ValueDef, ValueId};
use kiln_ir::{Graph, Op};

use crate::PassError;

mod split;
pub use split::{device_usage, split, Backends, LoweredPartition, Slots, Split};

/// What kind of device a partition runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceKind {
    /// A CPU: compiled by the CPU backend, run by the runtime's thread pool. CPUs share host
    /// memory, so moving a tensor between two of them is handing over a pointer.
    Cpu,
    /// An NVIDIA GPU: PTX run through the CUDA driver.
    Cuda,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }
    /// Whether the device works in host memory (no copy to move tensors in or out).
    pub fn host_memory(self) -> bool {
        self == DeviceKind::Cpu
    }
}

/// One entry of a target list: a device and, optionally, the memory it may use (weights,
/// the arena and the tensors it hands to other devices).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Device {
    pub kind: DeviceKind,
    pub mem: Option<u64>,
}

impl Device {
    pub fn cpu() -> Device {
        Device { kind: DeviceKind::Cpu, mem: None }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind.name())?;
        if let Some(m) = self.mem {
            write!(f, ":mem={}", format_bytes(m))?;
        }
        Ok(())
    }
}

/// `n` bytes as the largest binary unit that divides it (`64MiB`, `1536KiB`, `100B`).
pub fn format_bytes(n: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n}B")
}

/// `n` bytes for people: `61.2 MiB`.
fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// Parses a size: a number with an optional unit, `B`, `KB`/`MB`/`GB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB` (powers of 1024), e.g. `64MiB`, `1.5GB`, `4096`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("`{s}` is not a size (e.g. 64MiB)"));
    }
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => return Err(format!("`{s}`: unknown unit `{other}` (use B, KB, MB, GB, KiB, MiB or GiB)")),
    };
    let x: f64 = num.parse().map_err(|_| format!("`{s}` is not a size (e.g. 64MiB)"))?;
    let bytes = x * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{s}` is not a usable size"));
    }
    Ok(bytes as u64)
}

/// Parses a target list: devices separated by commas, each `cpu` or `cuda` with an optional
/// `:mem=SIZE`, e.g. `cuda,cpu` or `cpu:mem=64MiB,cpu:mem=64MiB`.
pub fn parse_devices(s: &str) -> Result<Vec<Device>, String> {
    let mut out = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        let mut parts = item.split(':');
        let kind = match parts.next().unwrap_or("") {
            "cpu" => DeviceKind::Cpu,
            "cuda" => DeviceKind::Cuda,
            "" => return Err(format!("target list `{s}` has an empty entry")),
            other => return Err(format!("unknown device `{other}` in `{s}` (devices: cpu, cuda)")),
        };
        let mut mem = None;
        for opt in parts {
            match opt.split_once('=') {
                Some(("mem", v)) => mem = Some(parse_bytes(v).map_err(|e| format!("device `{item}`: mem {e}"))?),
                _ => return Err(format!("device `{item}`: unknown option `{opt}` (options: mem=SIZE)")),
            }
        }
        out.push(Device { kind, mem });
    }
    Ok(out)
}

/// The roofline figures the cost model uses for a kind of device.
#[derive(Clone, Copy, Debug)]
pub struct DeviceCost {
    /// Floating-point operations per second.
    pub flops: f64,
    /// Bytes per second of memory traffic.
    pub bandwidth: f64,
    /// Seconds of fixed overhead per kernel (a launch).
    pub overhead: f64,
}

/// Per-node time estimates (roofline: the slower of compute and memory traffic, plus a
/// launch overhead) and the cost of moving tensors between devices.
#[derive(Clone, Debug)]
pub struct CostModel {
    pub cpu: DeviceCost,
    pub cuda: DeviceCost,
    /// Bytes per second and seconds of latency of a copy between a GPU and the host.
    pub link_bandwidth: f64,
    pub link_latency: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            // About two cores of AVX2 FMA, and DRAM.
            cpu: DeviceCost { flops: 150e9, bandwidth: 20e9, overhead: 1e-6 },
            // A data-centre GPU (A100/H100 class) for fp32 work without tensor cores.
            cuda: DeviceCost { flops: 20e12, bandwidth: 2e12, overhead: 5e-6 },
            // PCIe 4 x16, in practice.
            link_bandwidth: 20e9,
            link_latency: 10e-6,
        }
    }
}

impl CostModel {
    fn device(&self, k: DeviceKind) -> &DeviceCost {
        match k {
            DeviceKind::Cpu => &self.cpu,
            DeviceKind::Cuda => &self.cuda,
        }
    }

    /// Estimated seconds for node `n` on a device of kind `k`.
    pub fn node_time(&self, g: &Graph, n: NodeId, k: DeviceKind) -> f64 {
        let d = self.device(k);
        let (flops, bytes) = node_work(g, g.node(n));
        (flops / d.flops).max(bytes / d.bandwidth) + d.overhead
    }

    /// Estimated seconds to move `bytes` from a device of kind `a` to one of kind `b`.
    pub fn transfer_time(&self, a: DeviceKind, b: DeviceKind, bytes: u64) -> f64 {
        if a.host_memory() && b.host_memory() {
            return 0.0;
        }
        self.link_latency + bytes as f64 / self.link_bandwidth
    }
}

/// Floating-point operations and bytes of memory traffic of one node.
fn node_work(g: &Graph, n: &Node) -> (f64, f64) {
    let out: f64 = n.outputs.iter().map(|&v| g.ty(v).numel() as f64).sum();
    let bytes: f64 = n.inputs.iter().chain(&n.outputs).map(|&v| g.ty(v).bytes() as f64).sum();
    let shape = |i: usize| n.inputs.get(i).map(|&v| g.ty(v).shape.to_vec()).unwrap_or_default();
    let flops = match &n.op {
        Op::MatMul => 2.0 * out * shape(0).last().copied().unwrap_or(1) as f64,
        Op::Gemm { trans_a, .. } => {
            let a = shape(0);
            let k = if *trans_a { a.first() } else { a.last() };
            2.0 * out * k.copied().unwrap_or(1) as f64
        }
        // Per output element: one multiply-add per weight of its output channel.
        Op::Conv { .. } => {
            let w = shape(1);
            2.0 * out * w.iter().skip(1).product::<usize>() as f64
        }
        Op::ConvTranspose { .. } => {
            let (x, w) = (shape(0), shape(1));
            2.0 * x.iter().product::<usize>() as f64 * w.iter().skip(1).product::<usize>() as f64
        }
        _ => out,
    };
    (flops, bytes)
}

/// A set of nodes that runs on one device, as one compiled program.
#[derive(Clone, Debug)]
pub struct Partition {
    /// Index of its device in the target list.
    pub device: usize,
    /// Its nodes, in schedule order.
    pub nodes: Vec<NodeId>,
    /// Values it reads that it does not compute: graph inputs and values of earlier
    /// partitions (constants are not inputs: each partition holds the ones it reads).
    pub inputs: Vec<ValueId>,
    /// Values it computes that later partitions read or that are graph outputs.
    pub outputs: Vec<ValueId>,
    /// Bytes of the constants its nodes read.
    pub weight_bytes: u64,
    /// Estimated seconds to run it (the cost model's sum over its nodes).
    pub time: f64,
}

/// A value computed by one partition and read by another.
#[derive(Clone, Debug, PartialEq)]
pub struct Transfer {
    pub value: ValueId,
    pub from: usize,
    pub to: usize,
    pub bytes: u64,
}

/// The result of partitioning: partitions in an order in which they can run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub devices: Vec<Device>,
    pub partitions: Vec<Partition>,
    pub transfers: Vec<Transfer>,
    /// The estimate per device of the memory its partitions need (weights, the peak of the
    /// activations they produce), which the split kept within the budgets.
    pub device_estimates: Vec<u64>,
    /// The memory each device needs once its partitions are lowered (packed weights, planned
    /// arena, tensors handed on), when the compiler has filled it in.
    pub device_usage: Vec<u64>,
}

/// Which nodes a device of each kind can run.
pub type Supports<'a> = &'a (dyn Fn(DeviceKind, &Graph, &Node) -> bool + Sync);

/// Splits `g` across `devices` (see the module documentation). `budgets[i]` bounds the
/// estimated memory of device `i` (the cap, or less when the compiler found the estimate
/// short); `None` for no bound.
pub fn partition(
    g: &Graph,
    devices: &[Device],
    supports: Supports,
    cost: &CostModel,
    budgets: &[Option<u64>],
) -> Result<Plan, PassError> {
    assert_eq!(devices.len(), budgets.len(), "one budget per device");
    if devices.is_empty() {
        return Err(failed("the target list is empty"));
    }
    // 1. Support: the first device that can run each node.
    let mut device: HashMap<NodeId, usize> = HashMap::new();
    // Unsupported nodes by op, in order of first appearance: (op, node names).
    let mut unsupported: Vec<(&'static str, Vec<&str>)> = Vec::new();
    for &n in g.order() {
        let node = g.node(n);
        match devices.iter().position(|d| supports(d.kind, g, node)) {
            Some(d) => {
                device.insert(n, d);
            }
            None => match unsupported.iter_mut().find(|(op, _)| *op == node.op.name()) {
                Some((_, names)) => names.push(&node.name),
                None => unsupported.push((node.op.name(), vec![&node.name])),
            },
        }
    }
    if !unsupported.is_empty() {
        let kinds: Vec<&str> = devices.iter().map(|d| d.kind.name()).collect();
        let total: usize = unsupported.iter().map(|(_, v)| v.len()).sum();
        let list: Vec<String> = unsupported
            .iter()
            .map(|(op, names)| {
                let shown: Vec<String> = names.iter().take(3).map(|n| format!("`{n}`")).collect();
                let more = if names.len() > 3 { ", …" } else { "" };
                format!("{op} ×{} ({}{more})", names.len(), shown.join(", "))
            })
            .collect();
        return Err(failed(&format!("no device in `{}` runs {total} node(s): {}", kinds.join(","), list.join("; "))));
    }
    // 2. Cost: move whole runs between devices where that is cheaper.
    if devices.iter().map(|d| d.kind).collect::<HashSet<_>>().len() > 1 {
        refine_by_cost(g, devices, supports, cost, &mut device);
    }
    // 3. Memory: fill each device up to its budget along the schedule.
    let estimates = if budgets.iter().any(Option::is_some) {
        fit_memory(g, devices, supports, budgets, &mut device)?
    } else {
        estimate_memory(g, devices.len(), &schedule(g, &device), &device)
    };
    let order = schedule(g, &device);
    let mut plan = build_plan(g, devices, cost, &order, &device);
    plan.device_estimates = estimates;
    plan.validate(g).map_err(|m| failed(&format!("internal error: invalid partition plan: {m}")))?;
    Ok(plan)
}

fn failed(message: &str) -> PassError {
    PassError::Failed { pass: "partition".into(), message: message.into() }
}

/// The node that computes `v`, if a node does.
fn producer(g: &Graph, v: ValueId) -> Option<NodeId> {
    match g.value(v).def {
        ValueDef::Node(n, _) => Some(n),
        _ => None,
    }
}

/// A topological order of the scheduled nodes that stays on one device as long as the
/// dependences allow (ties go to the original order).
fn schedule(g: &Graph, device: &HashMap<NodeId, usize>) -> Vec<NodeId> {
    let pos: HashMap<NodeId, usize> = g.order().iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut waiting: HashMap<NodeId, usize> = HashMap::new();
    let mut users: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for &n in g.order() {
        let preds: BTreeSet<NodeId> =
            g.node(n).inputs.iter().filter_map(|&v| producer(g, v)).filter(|p| pos.contains_key(p)).collect();
        waiting.insert(n, preds.len());
        for p in preds {
            users.entry(p).or_default().push(n);
        }
    }
    // Ready nodes per device, by original position.
    let ndev = device.values().copied().max().map_or(1, |m| m + 1);
    let mut ready: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); ndev];
    for &n in g.order() {
        if waiting[&n] == 0 {
            ready[device[&n]].insert(pos[&n]);
        }
    }
    let mut out = Vec::with_capacity(g.order().len());
    let mut current = g.order().first().map_or(0, |n| device[n]);
    while out.len() < g.order().len() {
        if ready[current].is_empty() {
            // Switch to the device whose next ready node comes first.
            current = (0..ndev)
                .filter(|&d| !ready[d].is_empty())
                .min_by_key(|&d| ready[d].first().copied())
                .expect("a topological order exists");
        }
        let p = ready[current].pop_first().expect("not empty");
        let n = g.order()[p];
        out.push(n);
        for &u in users.get(&n).map(Vec::as_slice).unwrap_or(&[]) {
            let w = waiting.get_mut(&u).expect("scheduled");
            *w -= 1;
            if *w == 0 {
                ready[device[&u]].insert(pos[&u]);
            }
        }
    }
    out
}

/// Maximal runs of one device in `order`: (device, nodes).
fn runs(order: &[NodeId], device: &HashMap<NodeId, usize>) -> Vec<(usize, Vec<NodeId>)> {
    let mut out: Vec<(usize, Vec<NodeId>)> = Vec::new();
    for &n in order {
        match out.last_mut() {
            Some((d, nodes)) if *d == device[&n] => nodes.push(n),
            _ => out.push((device[&n], vec![n])),
        }
    }
    out
}

/// Moves a run of nodes to another device that supports all of them when its estimated time
/// there, plus the transfers at its borders, is lower. Repeats until nothing moves.
fn refine_by_cost(
    g: &Graph,
    devices: &[Device],
    supports: Supports,
    cost: &CostModel,
    device: &mut HashMap<NodeId, usize>,
) {
    let users = g.users();
    for _round in 0..16 {
        let order = schedule(g, device);
        let mut moved = false;
        for (d, nodes) in runs(&order, device) {
            let inside: HashSet<NodeId> = nodes.iter().copied().collect();
            // The values crossing the run's border, with the device at the other end (`None`:
            // the host, where graph inputs come from and graph outputs go).
            let mut border: Vec<(Option<usize>, u64)> = Vec::new();
            for &n in &nodes {
                for &v in &g.node(n).inputs {
                    let bytes = g.ty(v).bytes() as u64;
                    match g.value(v).def {
                        ValueDef::Input(_) => border.push((None, bytes)),
                        ValueDef::Node(p, _) if !inside.contains(&p) => border.push((Some(device[&p]), bytes)),
                        _ => {}
                    }
                }
                for &v in &g.node(n).outputs {
                    let bytes = g.ty(v).bytes() as u64;
                    let outside: HashSet<usize> = users
                        .get(&v)
                        .into_iter()
                        .flatten()
                        .filter(|(u, _)| !inside.contains(u))
                        .map(|(u, _)| device[u])
                        .collect();
                    border.extend(outside.into_iter().map(|o| (Some(o), bytes)));
                    if g.outputs.contains(&v) {
                        border.push((None, bytes));
                    }
                }
            }
            let total = |e: usize| -> f64 {
                let k = devices[e].kind;
                let compute: f64 = nodes.iter().map(|&n| cost.node_time(g, n, k)).sum();
                let moves: f64 = border
                    .iter()
                    .map(|&(o, b)| cost.transfer_time(o.map_or(DeviceKind::Cpu, |o| devices[o].kind), k, b))
                    .sum();
                compute + moves
            };
            let here = total(d);
            // Only towards a neighbour: a run moves to join a device it exchanges tensors with.
            let neighbours: BTreeSet<usize> = border.iter().filter_map(|&(o, _)| o).filter(|&o| o != d).collect();
            let best = neighbours
                .into_iter()
                .filter(|&e| devices[e].kind != devices[d].kind)
                .filter(|&e| nodes.iter().all(|&n| supports(devices[e].kind, g, g.node(n))))
                .map(|e| (e, total(e)))
                .filter(|&(_, t)| t < here * 0.999)
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((e, _)) = best {
                for n in nodes {
                    device.insert(n, e);
                }
                moved = true;
                break;
            }
        }
        if !moved {
            break;
        }
    }
}

/// Bytes of the constants among `vals` not yet in `seen` (which it updates).
fn new_weight_bytes(g: &Graph, vals: &[ValueId], seen: &mut HashSet<ValueId>) -> u64 {
    vals.iter().filter(|&&v| g.const_of(v).is_some() && seen.insert(v)).map(|&v| g.ty(v).bytes() as u64).sum()
}

/// The position in `order` of each value's last use (graph outputs live to the end).
fn last_uses(g: &Graph, order: &[NodeId]) -> HashMap<ValueId, usize> {
    let mut last = HashMap::new();
    for (i, &n) in order.iter().enumerate() {
        for &v in &g.node(n).inputs {
            last.insert(v, i);
        }
    }
    for &v in &g.outputs {
        last.insert(v, order.len());
    }
    last
}

/// Tracks, along a schedule, each device's weights and the peak of the activations its
/// nodes produce that are live at once.
struct MemoryWalk {
    weights: Vec<u64>,
    live: Vec<u64>,
    peak: Vec<u64>,
    seen: Vec<HashSet<ValueId>>,
    /// Values dying after each position: (device that holds it, bytes).
    dying: HashMap<usize, Vec<(usize, u64)>>,
}

impl MemoryWalk {
    fn new(ndev: usize) -> MemoryWalk {
        MemoryWalk {
            weights: vec![0; ndev],
            live: vec![0; ndev],
            peak: vec![0; ndev],
            seen: vec![HashSet::new(); ndev],
            dying: HashMap::new(),
        }
    }

    /// What device `d` would need with node `n` (at position `i`) added.
    fn with(&self, g: &Graph, n: NodeId, d: usize) -> u64 {
        let mut seen = self.seen[d].clone();
        let w = new_weight_bytes(g, &g.node(n).inputs, &mut seen);
        let out: u64 = g.node(n).outputs.iter().map(|&v| g.ty(v).bytes().next_multiple_of(64) as u64).sum();
        self.weights[d] + w + self.peak[d].max(self.live[d] + out)
    }

    fn add(&mut self, g: &Graph, n: NodeId, d: usize, i: usize, last: &HashMap<ValueId, usize>) {
        self.weights[d] += new_weight_bytes(g, &g.node(n).inputs, &mut self.seen[d]);
        for &v in &g.node(n).outputs {
            let b = g.ty(v).bytes().next_multiple_of(64) as u64;
            self.live[d] += b;
            // A value nobody reads dies at once.
            let end = last.get(&v).copied().unwrap_or(i);
            self.dying.entry(end).or_default().push((d, b));
        }
        self.peak[d] = self.peak[d].max(self.live[d]);
        for (e, b) in self.dying.remove(&i).unwrap_or_default() {
            self.live[e] -= b;
        }
    }

    fn totals(&self) -> Vec<u64> {
        self.weights.iter().zip(&self.peak).map(|(w, p)| w + p).collect()
    }
}

/// The memory estimate of each device for an assignment.
fn estimate_memory(g: &Graph, ndev: usize, order: &[NodeId], device: &HashMap<NodeId, usize>) -> Vec<u64> {
    let last = last_uses(g, order);
    let mut walk = MemoryWalk::new(ndev);
    for (i, &n) in order.iter().enumerate() {
        walk.add(g, n, device[&n], i, &last);
    }
    walk.totals()
}

/// Walks the schedule, keeping each node on its device while the device's estimate stays
/// within budget; once a device overflows it is closed, and its later nodes go to the next
/// open device in the list that supports them.
fn fit_memory(
    g: &Graph,
    devices: &[Device],
    supports: Supports,
    budgets: &[Option<u64>],
    device: &mut HashMap<NodeId, usize>,
) -> Result<Vec<u64>, PassError> {
    let order = schedule(g, device);
    let last = last_uses(g, &order);
    let mut walk = MemoryWalk::new(devices.len());
    let mut closed = vec![false; devices.len()];
    let fits = |walk: &MemoryWalk, n: NodeId, d: usize| budgets[d].is_none_or(|b| walk.with(g, n, d) <= b);
    for (i, &n) in order.iter().enumerate() {
        let want = device[&n];
        let node = g.node(n);
        let candidates = (want..devices.len()).chain(0..want);
        let mut chosen = None;
        for d in candidates {
            if closed[d] || !supports(devices[d].kind, g, node) {
                continue;
            }
            if fits(&walk, n, d) {
                chosen = Some(d);
                break;
            }
            // Device `d` is full: close it (unless it has nothing yet: then this node alone
            // does not fit, and neither will it later).
            if walk.totals()[d] > 0 {
                closed[d] = true;
            }
        }
        let Some(d) = chosen else {
            let need = devices
                .iter()
                .enumerate()
                .filter(|(d, dev)| supports(dev.kind, g, node) && budgets[*d].is_some())
                .map(|(d, dev)| format!("{dev} (device {d}) would need {}", human_bytes(walk.with(g, n, d))))
                .collect::<Vec<_>>();
            return Err(failed(&format!(
                "node `{}` ({}) fits on no device: {}",
                node.name,
                node.op.name(),
                need.join("; ")
            )));
        };
        device.insert(n, d);
        walk.add(g, n, d, i, &last);
    }
    Ok(walk.totals())
}

fn build_plan(
    g: &Graph,
    devices: &[Device],
    cost: &CostModel,
    order: &[NodeId],
    device: &HashMap<NodeId, usize>,
) -> Plan {
    let runs = runs(order, device);
    let mut part_of: HashMap<NodeId, usize> = HashMap::new();
    for (i, (_, nodes)) in runs.iter().enumerate() {
        for &n in nodes {
            part_of.insert(n, i);
        }
    }
    let mut partitions: Vec<Partition> = runs
        .iter()
        .map(|(d, nodes)| Partition {
            device: *d,
            nodes: nodes.clone(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            weight_bytes: 0,
            time: nodes.iter().map(|&n| cost.node_time(g, n, devices[*d].kind)).sum(),
        })
        .collect();
    let mut transfers = Vec::new();
    let mut seen_input: HashSet<(usize, ValueId)> = HashSet::new();
    let mut seen_transfer: HashSet<(ValueId, usize)> = HashSet::new();
    for (i, p) in partitions.iter_mut().enumerate() {
        let mut consts = HashSet::new();
        for &n in &p.nodes {
            p.weight_bytes += new_weight_bytes(g, &g.node(n).inputs, &mut consts);
            for &v in &g.node(n).inputs {
                let from = match g.value(v).def {
                    ValueDef::Const(_) => continue,
                    ValueDef::Input(_) => None,
                    ValueDef::Node(m, _) => Some(part_of[&m]),
                };
                if from == Some(i) || !seen_input.insert((i, v)) {
                    continue;
                }
                p.inputs.push(v);
                if let Some(f) = from {
                    if seen_transfer.insert((v, i)) {
                        transfers.push(Transfer { value: v, from: f, to: i, bytes: g.ty(v).bytes() as u64 });
                    }
                }
            }
        }
    }
    // Outputs: what later partitions read, and graph outputs.
    for t in &transfers {
        if !partitions[t.from].outputs.contains(&t.value) {
            partitions[t.from].outputs.push(t.value);
        }
    }
    for &v in &g.outputs {
        // A constant graph output comes out of the last partition; a graph input given
        // back as an output is the runtime's to copy.
        let owner = match g.value(v).def {
            ValueDef::Node(m, _) => part_of[&m],
            ValueDef::Const(_) if !partitions.is_empty() => partitions.len() - 1,
            _ => continue,
        };
        let p = &mut partitions[owner];
        if !p.outputs.contains(&v) {
            p.outputs.push(v);
        }
    }
    // Keep outputs in the order their values were defined, for stable artifacts.
    for p in &mut partitions {
        p.outputs.sort();
    }
    transfers.sort_by_key(|t| (t.to, t.from, t.value));
    Plan { devices: devices.to_vec(), partitions, transfers, device_estimates: Vec::new(), device_usage: Vec::new() }
}

impl Plan {
    /// Checks the plan against `g`: every scheduled node in exactly one partition, each
    /// partition's inputs computed before it (so the partition graph is acyclic), transfers
    /// between existing partitions, and each device's estimate within its cap.
    pub fn validate(&self, g: &Graph) -> Result<(), String> {
        let mut seen: HashMap<NodeId, usize> = HashMap::new();
        for (i, p) in self.partitions.iter().enumerate() {
            if p.device >= self.devices.len() {
                return Err(format!("partition {i} is on device {}, which does not exist", p.device));
            }
            for &n in &p.nodes {
                if let Some(j) = seen.insert(n, i) {
                    return Err(format!("node `{}` is in partitions {j} and {i}", g.node(n).name));
                }
            }
        }
        if let Some(n) = g.order().iter().find(|n| !seen.contains_key(n)) {
            return Err(format!("node `{}` is in no partition", g.node(*n).name));
        }
        // Dependences between partitions, as a graph: acyclic, and forward in the order.
        let mut dag = petgraph::graphmap::DiGraphMap::<usize, ()>::new();
        for i in 0..self.partitions.len() {
            dag.add_node(i);
        }
        for (i, p) in self.partitions.iter().enumerate() {
            for &n in &p.nodes {
                for &v in &g.node(n).inputs {
                    if let Some(&j) = producer(g, v).and_then(|m| seen.get(&m)) {
                        if j != i {
                            if j > i {
                                return Err(format!(
                                    "partition {i} reads `{}` from later partition {j}",
                                    g.value(v).name
                                ));
                            }
                            dag.add_edge(j, i, ());
                        }
                    }
                }
            }
        }
        if petgraph::algo::is_cyclic_directed(&dag) {
            return Err("the partition graph has a cycle".into());
        }
        for t in &self.transfers {
            if t.from >= t.to || t.to >= self.partitions.len() {
                return Err(format!(
                    "transfer of `{}` from {} to {} goes backwards",
                    g.value(t.value).name,
                    t.from,
                    t.to
                ));
            }
        }
        for (d, (dev, est)) in self.devices.iter().zip(&self.device_estimates).enumerate() {
            if let Some(cap) = dev.mem.filter(|&cap| *est > cap) {
                return Err(format!("device {d} ({dev}) needs an estimated {est} bytes, over its cap of {cap}"));
            }
        }
        Ok(())
    }

    /// The plan as text: devices, partitions (device, node count and ops, weights, time),
    /// transfers, and a last line `partitions=<n>`.
    pub fn text(&self, g: &Graph) -> String {
        let mut s = String::new();
        for (d, dev) in self.devices.iter().enumerate() {
            let est = self.device_estimates.get(d).copied().unwrap_or(0);
            let used = self.partitions.iter().filter(|p| p.device == d).count();
            let _ = write!(s, "device {d}: {dev}, {used} partition(s), estimated memory {}", human_bytes(est));
            if let Some(u) = self.device_usage.get(d) {
                let _ = write!(s, ", compiled {}", human_bytes(*u));
            }
            s.push('\n');
        }
        for (i, p) in self.partitions.iter().enumerate() {
            let dev = &self.devices[p.device];
            let _ = writeln!(
                s,
                "partition {i} on device {} ({}): {} node(s) [{}], weights {}, estimated {:.3} ms",
                p.device,
                dev.kind.name(),
                p.nodes.len(),
                op_census(g, &p.nodes),
                human_bytes(p.weight_bytes),
                p.time * 1e3
            );
            let names = |vs: &[ValueId]| vs.iter().map(|&v| g.value(v).name.clone()).collect::<Vec<_>>().join(", ");
            let _ = writeln!(s, "  inputs: {}", names(&p.inputs));
            let _ = writeln!(s, "  outputs: {}", names(&p.outputs));
        }
        for t in &self.transfers {
            let (a, b) = (&self.partitions[t.from], &self.partitions[t.to]);
            let _ = writeln!(
                s,
                "transfer `{}` ({}): partition {} ({}{}) -> partition {} ({}{})",
                g.value(t.value).name,
                human_bytes(t.bytes),
                t.from,
                self.devices[a.device].kind.name(),
                a.device,
                t.to,
                self.devices[b.device].kind.name(),
                b.device
            );
        }
        let _ = writeln!(s, "partitions={}", self.partitions.len());
        s
    }

    /// The partition graph in Graphviz's dot language: one box per partition, one edge per
    /// pair of partitions with transfers, labelled with the tensors and their size.
    pub fn dot(&self, g: &Graph) -> String {
        let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut s = String::from("digraph partitions {\n  rankdir=TB;\n  node [shape=box, style=rounded];\n");
        let _ = writeln!(s, "  label=\"{}\";", quote(&format!("{}: {} partition(s)", g.name, self.partitions.len())));
        for (i, p) in self.partitions.iter().enumerate() {
            let dev = &self.devices[p.device];
            let label = format!(
                "partition {i}\\n{} (device {})\\n{} node(s), weights {}",
                quote(&dev.to_string()),
                p.device,
                p.nodes.len(),
                human_bytes(p.weight_bytes)
            );
            let color = if dev.kind == DeviceKind::Cuda { "palegreen" } else { "lightblue" };
            let _ = writeln!(s, "  p{i} [label=\"{label}\", style=\"rounded,filled\", fillcolor={color}];");
        }
        let mut edges: std::collections::BTreeMap<(usize, usize), (Vec<String>, u64)> = Default::default();
        for t in &self.transfers {
            let e = edges.entry((t.from, t.to)).or_default();
            e.0.push(g.value(t.value).name.clone());
            e.1 += t.bytes;
        }
        for ((a, b), (names, bytes)) in edges {
            let shown = if names.len() > 3 { format!("{} tensors", names.len()) } else { names.join(", ") };
            let label = format!("{}\\n{}", quote(&shown), human_bytes(bytes));
            let _ = writeln!(s, "  p{a} -> p{b} [label=\"{label}\"];");
        }
        s.push_str("}\n");
        s
    }
}

/// `Conv×53, Relu×49, …`: the ops of `nodes`, most frequent first.
fn op_census(g: &Graph, nodes: &[NodeId]) -> String {
    let mut count: HashMap<&'static str, usize> = HashMap::new();
    for &n in nodes {
        *count.entry(g.node(n).op.name()).or_default() += 1;
    }
    let mut v: Vec<_> = count.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = v.iter().take(6).map(|(op, c)| format!("{op}×{c}")).collect();
    let more = if v.len() > 6 { ", …" } else { "" };
    format!("{}{more}", shown.join(", "))
}

/// The graph of one partition: its inputs become graph inputs (same names and types), the
/// constants it reads are copied in (sharing their bytes), its nodes are re-added in order,
/// and its outputs are the graph outputs.
pub fn extract(g: &Graph, p: &Partition, name: &str) -> Result<Graph, PassError> {
    let mut sub = Graph::new(name);
    sub.sources = g.sources.clone();
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for &v in &p.inputs {
        let d = g.value(v);
        map.insert(v, sub.add_input(d.name.clone(), d.ty.clone()));
    }
    for &n in &p.nodes {
        let node = g.node(n);
        let mut ins = Vec::with_capacity(node.inputs.len());
        for &v in &node.inputs {
            let id = match map.get(&v) {
                Some(&id) => id,
                None => {
                    let t = g.const_of(v).ok_or_else(|| {
                        failed(&format!("node `{}` reads `{}`, which partition misses", node.name, g.value(v).name))
                    })?;
                    let id = sub.add_const(g.value(v).name.clone(), t.clone());
                    map.insert(v, id);
                    id
                }
            };
            ins.push(id);
        }
        let names: Vec<String> = node.outputs.iter().map(|&v| g.value(v).name.clone()).collect();
        let outs = sub.add_node(node.op.clone(), &ins, node.name.clone(), &names).map_err(|e| PassError::Lowering {
            node: e.node,
            op: e.op,
            message: e.message,
        })?;
        for (&a, b) in node.outputs.iter().zip(outs) {
            map.insert(a, b);
        }
    }
    for &v in &p.outputs {
        if let (false, Some(t)) = (map.contains_key(&v), g.const_of(v)) {
            let id = sub.add_const(g.value(v).name.clone(), t.clone());
            map.insert(v, id);
        }
    }
    sub.outputs = p
        .outputs
        .iter()
        .map(|v| map.get(v).copied().ok_or_else(|| failed(&format!("output `{}` is not computed", g.value(*v).name))))
        .collect::<Result<_, _>>()?;
    Ok(sub)
}
