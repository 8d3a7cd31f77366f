//! The HIR graph: an arena of values and nodes with typed ids, plus a separate schedule.
//!
//! * A value is defined exactly once: by a graph input, a constant, or a node result.
//! * Node data (op, operands, results) lives in `nodes`; their order lives in `order`, which
//!   is always a topological order. Rescheduling never touches node data.
//! * Types are inferred when a node is built (`add_node`), so every value has a static type.

use std::collections::HashMap;
use std::fmt;

use crate::infer::infer;
use crate::{Op, Tensor, TensorType};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ValueDef {
    /// The i-th graph input.
    Input(usize),
    /// Result `k` of a node.
    Node(NodeId, usize),
    /// A constant (weights, folded values).
    Const(Tensor),
}

#[derive(Clone, Debug)]
pub struct ValueData {
    /// The source name (ONNX tensor name) for messages and outputs.
    pub name: String,
    pub ty: TensorType,
    pub def: ValueDef,
}

/// A condition on a node: it runs only when the key (a one-element i64 value) equals
/// `value`. A node's guards all hold when it runs (nested run-time cases, outermost first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guard {
    pub key: ValueId,
    pub value: i64,
}

impl Guard {
    /// The `value` of a loop body's guard: its key is the loop's iteration number
    /// ([`crate::Op::LoopBegin`]'s result 0), and the node runs in every iteration.
    pub const LOOP: i64 = i64::MIN;

    /// The guard of the body of the loop whose iteration number is `counter`.
    pub fn of_loop(counter: ValueId) -> Guard {
        Guard { key: counter, value: Guard::LOOP }
    }

    pub fn is_loop(&self) -> bool {
        self.value == Guard::LOOP
    }
}

/// A dim of the graph's inputs that the caller sets at each run, between `lo` and `hi`
/// (`--dim NAME=LO..HI`). The graph is built at `hi`: every value whose leading axis carries
/// the symbol holds `hi` rows of which a run computes and reads the first `value` (see
/// `kiln_passes::rows`).
///
/// A symbol may be derived from another (`from`): its size is `symbols[base]` plus an offset,
/// the length of an axis that a run makes one longer than an input's (a key/value cache's
/// present length, the past plus the new token). The caller gives only the base; the
/// runtime fills the derived slot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DimSymbol {
    pub name: String,
    pub lo: usize,
    pub hi: usize,
    pub from: Option<(usize, i64)>,
}

impl DimSymbol {
    /// A symbol the caller sets, between `lo` and `hi`.
    pub fn new(name: impl Into<String>, lo: usize, hi: usize) -> DimSymbol {
        DimSymbol { name: name.into(), lo, hi, from: None }
    }
}

/// The shape of a graph output that the code decides at run time.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeShape {
    /// An i64 value of one element per dim: the sizes.
    pub dims: ValueId,
    /// Each dim's largest size.
    pub bounds: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    /// The source node name, for messages.
    pub name: String,
    /// The run-time cases the node belongs to (empty: it always runs). Its results are read
    /// only by nodes of the same cases, or by a [`Op::Merge`] of them.
    pub guard: Vec<Guard>,
}

#[derive(Debug, thiserror::Error)]
#[error("node `{node}` ({op}): {message}")]
pub struct BuildError {
    pub node: String,
    pub op: String,
    pub message: String,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    values: Vec<ValueData>,
    nodes: Vec<Node>,
    order: Vec<NodeId>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    /// Values the fuse pass decided not to materialize: each is computed inside the kernel
    /// of its single consumer (or the one kernel all its consumers are fused into).
    fused: std::collections::BTreeSet<ValueId>,
    /// The guard of nodes added from now on (the importer sets it around a run-time case;
    /// a pass that rewrites a node sets it to that node's guard).
    pub guard: Vec<Guard>,
    /// Graph outputs (by position) whose shape is decided at run time.
    pub output_shapes: std::collections::BTreeMap<usize, RuntimeShape>,
    /// The dims the caller sets at run time ([`DimSymbol`]), in the order of their slots.
    pub symbols: Vec<DimSymbol>,
    /// Per graph input (by position) that has a run-time dim: per axis, the index in
    /// `symbols` of the dim it carries (the input's type giving the bound).
    pub input_syms: std::collections::BTreeMap<usize, Vec<Option<usize>>>,
    /// The same for graph outputs (by position) with a run-time dim on an axis other than
    /// the leading one (set by the importer's caller from a second import; a leading one is
    /// found by `kiln_passes::rows::analyze`).
    pub output_syms: std::collections::BTreeMap<usize, Vec<Option<usize>>>,
    /// Whether the run-time dims are followed axis by axis through the LIR rather than by the
    /// row analysis (`kiln_passes::rows`), set by import where that analysis cannot follow
    /// them (written `axis_dims` after the symbols in the text form).
    pub axis_dims: bool,
    /// The source model's nodes by name, with their op types (set by the importer): what
    /// [`Graph::origin_of`] resolves a node's name against.
    pub sources: std::collections::BTreeMap<String, String>,
}

impl Graph {
    /// The source node a node named `name` comes from: the source of that name, or of the
    /// longest prefix of it ending before a `/` or `.` (the names passes give the nodes they
    /// add: `conv/int`); otherwise the name itself, with no op type; none for an unnamed node.
    pub fn origin_of(&self, name: &str) -> Option<crate::lir::Origin> {
        if name.is_empty() {
            return None;
        }
        let mut prefix = name;
        loop {
            if let Some(op) = self.sources.get(prefix) {
                return Some(crate::lir::Origin { node: prefix.to_string(), op: op.clone() });
            }
            match prefix.rfind(['/', '.']) {
                Some(i) => prefix = &prefix[..i],
                None => return Some(crate::lir::Origin { node: name.to_string(), op: String::new() }),
            }
        }
    }
    pub fn is_fused(&self, v: ValueId) -> bool {
        self.fused.contains(&v)
    }
    pub fn set_fused(&mut self, v: ValueId, on: bool) {
        if on {
            self.fused.insert(v);
        } else {
            self.fused.remove(&v);
        }
    }

    pub fn new(name: impl Into<String>) -> Graph {
        Graph { name: name.into(), ..Default::default() }
    }

    fn push_value(&mut self, name: String, ty: TensorType, def: ValueDef) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        self.values.push(ValueData { name, ty, def });
        id
    }

    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> ValueId {
        let i = self.inputs.len();
        let v = self.push_value(name.into(), ty, ValueDef::Input(i));
        self.inputs.push(v);
        v
    }

    pub fn add_const(&mut self, name: impl Into<String>, t: Tensor) -> ValueId {
        let ty = t.ty.clone();
        self.push_value(name.into(), ty, ValueDef::Const(t))
    }

    /// Adds a node after all existing ones, inferring its result types.
    /// Results are named `output_names[k]`, or `<node name>:<k>` where none is given.
    pub fn add_node(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        name: impl Into<String>,
        output_names: &[String],
    ) -> Result<Vec<ValueId>, BuildError> {
        let name = name.into();
        let tys: Vec<&TensorType> = inputs.iter().map(|&v| &self.values[v.0 as usize].ty).collect();
        let out_tys = infer(&op, &tys).map_err(|message| BuildError {
            node: name.clone(),
            op: op.name().to_string(),
            message,
        })?;
        /// Largest tensor a node may produce (1 TiB): beyond it a shape is broken or hostile.
        const MAX_TENSOR_BYTES: usize = 1 << 40;
        if let Some(t) = out_tys.iter().find(|t| t.checked_bytes().is_none_or(|b| b > MAX_TENSOR_BYTES)) {
            return Err(BuildError {
                node: name,
                op: op.name().to_string(),
                message: format!("result of shape {:?} is too large", t.shape),
            });
        }
        Ok(self.push_node(op, inputs, name, output_names, out_tys))
    }

    /// Adds a node whose result types are given instead of inferred (placeholders for
    /// unsupported ops; the verifier rejects a graph that still holds one).
    pub fn add_placeholder(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        name: impl Into<String>,
        output_names: &[String],
        out_tys: Vec<TensorType>,
    ) -> Vec<ValueId> {
        self.push_node(op, inputs, name.into(), output_names, out_tys)
    }

    fn push_node(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        name: String,
        output_names: &[String],
        out_tys: Vec<TensorType>,
    ) -> Vec<ValueId> {
        let nid = NodeId(self.nodes.len() as u32);
        let outputs: Vec<ValueId> = out_tys
            .into_iter()
            .enumerate()
            .map(|(k, ty)| {
                let vname = output_names.get(k).cloned().unwrap_or_else(|| format!("{name}:{k}"));
                self.push_value(vname, ty, ValueDef::Node(nid, k))
            })
            .collect();
        self.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            outputs: outputs.clone(),
            name,
            guard: self.guard.clone(),
        });
        self.order.push(nid);
        outputs
    }

    pub fn value(&self, v: ValueId) -> &ValueData {
        &self.values[v.0 as usize]
    }
    pub fn value_mut(&mut self, v: ValueId) -> &mut ValueData {
        &mut self.values[v.0 as usize]
    }
    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.values[v.0 as usize].ty
    }
    pub fn node(&self, n: NodeId) -> &Node {
        &self.nodes[n.0 as usize]
    }
    pub fn node_mut(&mut self, n: NodeId) -> &mut Node {
        &mut self.nodes[n.0 as usize]
    }
    /// The constant a value holds, if it is one.
    pub fn const_of(&self, v: ValueId) -> Option<&Tensor> {
        match &self.values[v.0 as usize].def {
            ValueDef::Const(t) => Some(t),
            _ => None,
        }
    }
    /// Nodes in schedule (topological) order.
    pub fn order(&self) -> &[NodeId] {
        &self.order
    }
    pub fn set_order(&mut self, order: Vec<NodeId>) {
        self.order = order;
    }
    pub fn num_values(&self) -> usize {
        self.values.len()
    }
    pub fn value_ids(&self) -> impl Iterator<Item = ValueId> {
        (0..self.values.len() as u32).map(ValueId)
    }

    /// Removes a node from the schedule. Its results must no longer be used.
    pub fn remove_node(&mut self, n: NodeId) {
        self.order.retain(|&m| m != n);
    }

    /// Replaces every use of `old` (as a node operand or a graph output) by `new`.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        for &n in &self.order {
            for v in &mut self.nodes[n.0 as usize].inputs {
                if *v == old {
                    *v = new;
                }
            }
        }
        for v in self.outputs.iter_mut().chain(self.output_shapes.values_mut().map(|r| &mut r.dims)) {
            if *v == old {
                *v = new;
            }
        }
    }

    /// Values the graph needs besides its outputs: the run-time shapes of outputs.
    pub fn shape_values(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.output_shapes.values().map(|r| r.dims)
    }

    /// Whether anything is decided at run time (a guarded node, an output's shape, a dim the
    /// caller sets).
    pub fn has_runtime_decisions(&self) -> bool {
        !self.output_shapes.is_empty()
            || !self.symbols.is_empty()
            || self.order.iter().any(|&n| !self.nodes[n.0 as usize].guard.is_empty())
    }

    /// Turns a node result into a constant in place (constant folding); the node is removed.
    pub fn make_const(&mut self, v: ValueId, t: Tensor) {
        if let ValueDef::Node(n, _) = self.values[v.0 as usize].def {
            let all_folded = self.nodes[n.0 as usize].outputs.iter().all(|&o| o == v || self.const_of(o).is_some());
            if all_folded {
                self.remove_node(n);
            }
        }
        self.values[v.0 as usize].ty = t.ty.clone();
        self.values[v.0 as usize].def = ValueDef::Const(t);
    }

    /// Number of uses of each value among scheduled nodes and graph outputs.
    pub fn use_counts(&self) -> HashMap<ValueId, usize> {
        let mut m = HashMap::new();
        for &n in &self.order {
            for &v in &self.nodes[n.0 as usize].inputs {
                *m.entry(v).or_insert(0) += 1;
            }
        }
        for v in self.outputs.iter().copied().chain(self.shape_values()) {
            *m.entry(v).or_insert(0) += 1;
        }
        m
    }

    /// Users of each value: (node, operand index), in schedule order.
    pub fn users(&self) -> HashMap<ValueId, Vec<(NodeId, usize)>> {
        let mut m: HashMap<ValueId, Vec<(NodeId, usize)>> = HashMap::new();
        for &n in &self.order {
            for (i, &v) in self.nodes[n.0 as usize].inputs.iter().enumerate() {
                m.entry(v).or_default().push((n, i));
            }
        }
        m
    }

    /// Constants reachable from scheduled nodes or outputs, in first-use order.
    pub fn live_constants(&self) -> Vec<ValueId> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let shapes: Vec<ValueId> = self.shape_values().collect();
        let iter = self
            .order
            .iter()
            .flat_map(|&n| self.nodes[n.0 as usize].inputs.iter())
            .chain(self.outputs.iter())
            .chain(shapes.iter());
        for &v in iter {
            if self.const_of(v).is_some() && seen.insert(v) {
                out.push(v);
            }
        }
        out
    }
}
