//! Model-level import: version checks, initializers, inputs, the node walk, outputs.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bytes::Bytes;
use kiln_ir::{fmt_shape, DType, Graph, Op, Tensor, TensorType, ValueId};
use prost::Message;

use crate::data::{checked_numel, decode_tensor, dtype_of, map_file, ExternalStore};
use crate::ops::{self, NodeCx, OpError, OpResult};
use crate::proto::tensor_shape_proto::dimension::Value as DimValue;
use crate::proto::type_proto::Value as TypeValue;
use crate::proto::{GraphProto, ModelProto, NodeProto, ValueInfoProto};
use crate::value::{declared_elem_dtype, element_name, ValueKind, ValueSpec};
use crate::{ImportError, ImportOptions, UnsupportedOp};

mod cases;
mod control;
mod flex;
mod from_data;
mod sequence;
mod sized;

/// Oldest ONNX IR version accepted.
pub const MIN_IR_VERSION: i64 = 3;
/// Newest ONNX IR version accepted: the one onnx 1.23 writes. (IR versions after 10 add
/// types and fields Kiln does not use; they change nothing it reads.)
pub const MAX_IR_VERSION: i64 = 14;
/// Oldest default-domain opset accepted. Opsets before 7 are read with their legacy forms
/// (`broadcast`/`axis` attributes of binary ops, Cast's string `to`, Reshape's `shape`
/// attribute, Concat's default axis).
pub const MIN_OPSET: i64 = 1;
/// Newest default-domain opset accepted: onnx 1.23's. Versions of the supported ops after 23
/// only add element types.
pub const MAX_OPSET: i64 = 28;

/// Decodes a `ModelProto` (bytes fields are slices of `bytes`, not copies).
pub fn decode_model(bytes: Bytes) -> Result<ModelProto, ImportError> {
    Ok(ModelProto::decode(bytes)?)
}

/// Imports a serialized ONNX model. External data cannot be resolved (there is no model
/// directory): use [`import_path`] or [`import_model_in_dir`] for such models.
pub fn import_model(bytes: Bytes, opts: &ImportOptions) -> Result<Graph, ImportError> {
    Ok(import_inner(bytes, opts, None, &HashMap::new())?.0)
}

/// Imports a serialized ONNX model whose external data files live in `dir`.
pub fn import_model_in_dir(bytes: Bytes, dir: impl AsRef<Path>, opts: &ImportOptions) -> Result<Graph, ImportError> {
    Ok(import_inner(bytes, opts, Some(dir.as_ref()), &HashMap::new())?.0)
}

/// Maps the model file and imports it; initializers and external data stay in the mappings.
pub fn import_path(path: impl AsRef<Path>, opts: &ImportOptions) -> Result<Graph, ImportError> {
    import_path_with_constants(path, opts, &HashMap::new())
}

/// [`import_path`] with some graph inputs bound to values: each becomes a constant (its
/// dtype and declared dims must match), so that what depends on it folds. ONNX's node tests
/// pass shape-like operands (Reshape's shape, Slice's starts, reduction axes…) as graph
/// inputs; Kiln needs them static.
pub fn import_path_with_constants(
    path: impl AsRef<Path>,
    opts: &ImportOptions,
    constants: &HashMap<String, Tensor>,
) -> Result<Graph, ImportError> {
    Ok(import_path_with_sources(path, opts, constants)?.0)
}

/// The files an imported model was read from: the model file itself and each external data
/// file it used. With the options, their bytes are what a compilation's output depends on.
#[derive(Clone, Debug)]
pub struct Sources {
    pub model: Bytes,
    /// External data files by their location relative to the model's directory, sorted.
    pub external: Vec<(String, Bytes)>,
}

/// [`import_path_with_constants`], also giving the bytes the model was read from.
pub fn import_path_with_sources(
    path: impl AsRef<Path>,
    opts: &ImportOptions,
    constants: &HashMap<String, Tensor>,
) -> Result<(Graph, Sources), ImportError> {
    let path = path.as_ref();
    let bytes = map_file(path).map_err(|source| ImportError::Io { path: path.to_path_buf(), source })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (g, external) = import_inner(bytes.clone(), opts, Some(dir), constants)?;
    Ok((g, Sources { model: bytes, external }))
}

fn import_inner(
    bytes: Bytes,
    opts: &ImportOptions,
    dir: Option<&Path>,
    constants: &HashMap<String, Tensor>,
) -> Result<(Graph, Vec<(String, Bytes)>), ImportError> {
    let model = decode_model(bytes)?;
    let ir = model.ir_version();
    if !(MIN_IR_VERSION..=MAX_IR_VERSION).contains(&ir) {
        return Err(ImportError::UnsupportedIrVersion { version: ir, min: MIN_IR_VERSION, max: MAX_IR_VERSION });
    }
    let mut default_opset = None;
    let mut opsets = HashMap::new();
    for o in &model.opset_import {
        match o.domain() {
            "" | "ai.onnx" => default_opset = Some(o.version()),
            d => {
                opsets.insert(d.to_string(), o.version());
            }
        }
    }
    if let Some(v) = default_opset {
        if !(MIN_OPSET..=MAX_OPSET).contains(&v) {
            return Err(ImportError::UnsupportedOpset { version: v, min: MIN_OPSET, max: MAX_OPSET });
        }
    }
    let graph = model.graph.as_ref().ok_or_else(|| ImportError::InvalidGraph("the model has no graph".into()))?;
    let mut imp = Importer {
        g: Graph::new(graph.name()),
        env: HashMap::new(),
        default_opset,
        opsets,
        ext: ExternalStore::new(dir)?,
        unsupported: Vec::new(),
        scope: String::new(),
        dynamic: HashMap::new(),
        max_elements: opts.max_elements,
    };
    imp.run(graph, opts, constants)?;
    Ok((imp.g, imp.ext.into_files()))
}

/// What an ONNX value name refers to.
#[derive(Clone, Debug)]
enum Slot {
    Value(ValueId),
    /// A sequence: a list of tensor values known at compile time (its length is static, its
    /// elements are ordinary HIR values), and its element dtype.
    Sequence(Vec<ValueId>, DType),
    /// An optional, present or absent at compile time.
    Optional(Option<Box<Slot>>),
    /// Produced by (or downstream of) an unsupported op: untyped, never consumed.
    Poisoned,
}

impl Slot {
    /// What the slot is, for messages.
    fn kind(&self) -> &'static str {
        match self {
            Slot::Value(_) => "a tensor",
            Slot::Sequence(..) => "a sequence",
            Slot::Optional(_) => "an optional",
            Slot::Poisoned => "an unsupported op's output",
        }
    }
}

struct Importer {
    g: Graph,
    env: HashMap<String, Slot>,
    default_opset: Option<i64>,
    opsets: HashMap<String, i64>,
    ext: ExternalStore,
    unsupported: Vec<UnsupportedOp>,
    /// Prefix of node names: `""` in the main graph, `<node>/<tag>/` inside an inlined
    /// subgraph (see `control`).
    scope: String,
    /// Values whose shape is decided at run time (see `cases`), with their shape (an i64
    /// value). Only graph outputs may be such values.
    dynamic: HashMap<ValueId, cases::Dyn>,
    /// [`ImportOptions::max_elements`].
    max_elements: Option<usize>,
}

impl Importer {
    fn run(
        &mut self,
        graph: &GraphProto,
        opts: &ImportOptions,
        constants: &HashMap<String, Tensor>,
    ) -> Result<(), ImportError> {
        if let Some(s) = graph.sparse_initializer.first() {
            let name = s.values.as_ref().map(|v| v.name()).unwrap_or("");
            return Err(ImportError::Unsupported(format!("sparse initializer `{name}`")));
        }
        for t in &graph.initializer {
            let c = decode_tensor(t, t.name(), &mut self.ext)?;
            let v = self.g.add_const(t.name(), c);
            self.env.insert(t.name().to_string(), Slot::Value(v));
        }
        self.inputs(graph, opts, constants)?;
        for (idx, node) in graph.node.iter().enumerate() {
            self.node(idx, node)?;
        }
        self.outputs(graph)?;
        if !self.unsupported.is_empty() {
            return Err(ImportError::UnsupportedOps(std::mem::take(&mut self.unsupported)));
        }
        Ok(())
    }

    /// Runtime inputs: graph inputs that are not initializers (those are constants).
    fn inputs(
        &mut self,
        graph: &GraphProto,
        opts: &ImportOptions,
        constants: &HashMap<String, Tensor>,
    ) -> Result<(), ImportError> {
        // A --dim must name a symbolic dim of some runtime input.
        let declared: HashSet<String> = graph_inputs_dim_params(&graph.input);
        if let Some((name, (lo, hi))) = opts.dims.iter().find(|(n, _)| !declared.contains(*n)) {
            let mut known: Vec<&str> = declared.iter().map(String::as_str).collect();
            known.sort_unstable();
            return Err(ImportError::DimSpec {
                spec: format!("{name}={lo}..{hi}"),
                reason: if known.is_empty() {
                    "the model's inputs have no symbolic dims".into()
                } else {
                    format!("no input has a dim named `{name}`; the symbolic dims are: {}", quote_list(&known))
                },
            });
        }
        let mut runtime = HashSet::new();
        let mut bound: HashSet<String> = HashSet::new();
        let mut structured = HashSet::new();
        for vi in &graph.input {
            let name = vi.name();
            if self.env.contains_key(name) {
                continue;
            }
            let kind = ValueKind::of(vi.r#type.as_ref());
            if kind != ValueKind::Tensor {
                let what = if kind == ValueKind::Sequence { "a sequence" } else { "an optional" };
                let Some(spec) = opts.value_inputs.get(name) else {
                    return Err(ImportError::Unsupported(format!(
                        "input `{name}` is {what}: its element types and shapes (or whether it is present) must be \
                         given at compile time (ImportOptions::value_inputs; `--input-value {name}=FILE.pb` on \
                         the command line, which `kiln run` implies for a .pb input)"
                    )));
                };
                let fits = matches!(
                    (kind, spec),
                    (ValueKind::Sequence, ValueSpec::Sequence(_)) | (ValueKind::Optional, ValueSpec::Optional(_))
                );
                if !fits {
                    return Err(ImportError::ValueInput {
                        input: name.to_string(),
                        reason: format!("the input is {what}, the value given for it is not"),
                    });
                }
                let declared = vi.r#type.as_ref().and_then(declared_elem_dtype);
                let slot = self.value_input(name, spec, declared, constants, &mut bound)?;
                self.env.insert(name.to_string(), slot);
                structured.insert(name);
                continue;
            }
            if let Some(t) = constants.get(name) {
                let ty = input_type(vi, Some(&t.ty.shape), &Default::default())
                    .map(|(ty, _)| ty)
                    .map_err(|e| ImportError::ConstantInput { input: name.to_string(), reason: e.to_string() })?;
                if ty != t.ty || t.data.len() != t.ty.bytes() {
                    return Err(ImportError::ConstantInput {
                        input: name.to_string(),
                        reason: format!("the value has type {}, the input is declared {ty}", t.ty),
                    });
                }
                let v = self.g.add_const(name, t.clone());
                self.env.insert(name.to_string(), Slot::Value(v));
                bound.insert(name.to_string());
                continue;
            }
            let (ty, syms) = input_type(vi, opts.input_shapes.get(name), &opts.dims)?;
            if syms.iter().any(Option::is_some) {
                let axes = syms
                    .iter()
                    .map(|s| {
                        s.as_ref().map(|s| match self.g.symbols.iter().position(|d| d.name == *s) {
                            Some(k) => k,
                            None => {
                                let (lo, hi) = opts.dims[s];
                                self.g.symbols.push(kiln_ir::DimSymbol::new(s.clone(), lo, hi));
                                self.g.symbols.len() - 1
                            }
                        })
                    })
                    .collect();
                self.g.input_syms.insert(self.g.inputs.len(), axes);
            }
            let v = self.g.add_input(name, ty);
            self.env.insert(name.to_string(), Slot::Value(v));
            runtime.insert(name);
        }
        let mut extra: Vec<&String> = opts.value_inputs.keys().filter(|n| !structured.contains(n.as_str())).collect();
        extra.sort();
        if let Some(name) = extra.first() {
            return Err(ImportError::ValueInput {
                input: name.to_string(),
                reason: "a sequence or optional value is given for it, but the model has no such sequence or \
                         optional input"
                    .into(),
            });
        }
        let mut unbound: Vec<&String> = constants.keys().filter(|n| !bound.contains(n.as_str())).collect();
        unbound.sort();
        if let Some(name) = unbound.first() {
            return Err(ImportError::ConstantInput {
                input: name.to_string(),
                reason: "the model has no such runtime input".into(),
            });
        }
        let mut pinned: Vec<&String> = opts.input_shapes.keys().collect();
        pinned.sort();
        for name in pinned {
            if !runtime.contains(name.as_str()) {
                let mut names: Vec<&str> = runtime.iter().copied().collect();
                names.sort_unstable();
                let why = if self.env.contains_key(name.as_str()) {
                    format!("`{name}` is an initializer (a constant), not a runtime input")
                } else {
                    format!("the model has no input `{name}`")
                };
                return Err(ImportError::ShapeSpec {
                    spec: format!("{name}={}", fmt_shape(&opts.input_shapes[name])),
                    reason: format!("{why}; its runtime inputs are: {}", quote_list(&names)),
                });
            }
        }
        Ok(())
    }

    /// A sequence or optional graph input, as `spec` gives it: each tensor in it becomes a
    /// runtime input (named as [`crate::ValueSpec`] says), or a constant where `constants`
    /// binds that name.
    fn value_input(
        &mut self,
        name: &str,
        spec: &ValueSpec,
        declared: Option<DType>,
        constants: &HashMap<String, Tensor>,
        bound: &mut HashSet<String>,
    ) -> Result<Slot, ImportError> {
        let mut tensor = |imp: &mut Self, tname: String, ty: &TensorType| -> Result<ValueId, ImportError> {
            if declared.is_some_and(|d| d != ty.dtype) {
                return Err(ImportError::ValueInput {
                    input: name.to_string(),
                    reason: format!(
                        "`{tname}` is given as {ty}, the input's elements are declared {}",
                        declared.unwrap()
                    ),
                });
            }
            if checked_numel(&ty.shape).is_none() {
                return Err(ImportError::Tensor {
                    tensor: tname,
                    message: format!("input shape {:?} has more than 2^40 elements", ty.shape),
                });
            }
            if let Some(t) = constants.get(&tname) {
                if t.ty != *ty {
                    return Err(ImportError::ConstantInput {
                        input: tname,
                        reason: format!("the value has type {}, the input is given as {ty}", t.ty),
                    });
                }
                bound.insert(tname.clone());
                return Ok(imp.g.add_const(&tname, t.clone()));
            }
            Ok(imp.g.add_input(&tname, ty.clone()))
        };
        Ok(match spec {
            ValueSpec::Tensor(ty) => Slot::Value(tensor(self, name.to_string(), ty)?),
            ValueSpec::Sequence(tys) => {
                let dtype = declared.or(tys.first().map(|t| t.dtype)).unwrap_or(DType::F32);
                let mut elems = Vec::with_capacity(tys.len());
                for (i, ty) in tys.iter().enumerate() {
                    elems.push(tensor(self, element_name(name, i), ty)?);
                    if ty.dtype != dtype {
                        return Err(ImportError::ValueInput {
                            input: name.to_string(),
                            reason: format!("its elements have different dtypes ({dtype} and {})", ty.dtype),
                        });
                    }
                }
                Slot::Sequence(elems, dtype)
            }
            ValueSpec::Optional(None) => Slot::Optional(None),
            ValueSpec::Optional(Some(inner)) => {
                Slot::Optional(Some(Box::new(self.value_input(name, inner, declared, constants, bound)?)))
            }
        })
    }

    fn node(&mut self, idx: usize, node: &NodeProto) -> Result<(), ImportError> {
        let op_type = node.op_type();
        let name = if node.name().is_empty() { format!("{op_type}_{idx}") } else { node.name().to_string() };
        let name = format!("{}{name}", self.scope);
        self.g.sources.insert(name.clone(), op_type.to_string());
        let is_default = matches!(node.domain(), "" | "ai.onnx");
        let def = ops::lookup(node.domain(), op_type);
        let opset = if is_default { self.default_opset } else { self.opsets.get(node.domain()).copied() };
        let node_err = |message: String| ImportError::Node {
            node: name.clone(),
            op_type: op_type.to_string(),
            opset: opset.unwrap_or(0),
            message,
        };

        let mut slots = Vec::with_capacity(node.input.len());
        let mut poisoned = false;
        for (i, iname) in node.input.iter().enumerate() {
            if iname.is_empty() {
                slots.push(None);
                continue;
            }
            match self.env.get(iname) {
                Some(Slot::Poisoned) => poisoned = true,
                Some(s) => slots.push(Some(s.clone())),
                None => {
                    return Err(node_err(format!(
                        "input {i} `{iname}` is not a graph input, an initializer or an earlier node's output"
                    )))
                }
            }
        }
        let inputs: Vec<Option<ValueId>> =
            slots.iter().map(|s| if let Some(Slot::Value(v)) = s { Some(*v) } else { None }).collect();
        if !poisoned {
            // A node reading a value whose shape is decided at run time runs in each case.
            if let Some(r) = self.node_over_cases(idx, node, &name) {
                return r;
            }
        }
        let structured = slots.iter().enumerate().find_map(|(i, s)| match s {
            Some(s @ (Slot::Sequence(..) | Slot::Optional(_))) => Some((i, s.kind())),
            _ => None,
        });
        if poisoned {
            // Downstream of an unsupported op nothing can be typed: a known op is skipped (the
            // op upstream is reported), an unknown one is reported too.
            if !is_default || def.is_none() {
                self.placeholder(node, &name, &inputs, opset, None);
            } else {
                self.poison(node);
            }
            return Ok(());
        }
        let Some(def) = def else {
            // Not in the registry: reported with every other unknown op.
            self.placeholder(node, &name, &inputs, opset, None);
            return Ok(());
        };
        let Some(opset) = opset else {
            return Err(ImportError::InvalidGraph(format!(
                "node `{name}` ({op_type}) is in domain `{}`, but the model imports no opset for it",
                if is_default { "ai.onnx" } else { node.domain() }
            )));
        };

        if opset < i64::from(def.opsets.first) {
            return Err(node_err(format!(
                "{op_type} first appears in opset {} of {}, but the model imports opset {opset}",
                def.opsets.first,
                if is_default { "ai.onnx" } else { node.domain() }
            )));
        }
        let values = |r: OpResult<Vec<ValueId>>| r.map(|vs| vs.into_iter().map(Slot::Value).collect::<Vec<_>>());
        let result = match def.route {
            ops::Route::Node(f) if !def.domain.is_empty() => {
                // Other domains' ops take their inputs as given.
                let mut cx = NodeCx::new(&mut self.g, &mut self.ext, node, &name, opset, inputs.clone());
                values(f(&mut cx))
            }
            ops::Route::Flex | ops::Route::Control => {
                let r = if matches!(def.route, ops::Route::Flex) {
                    self.flex_attention(node, &name, opset, &inputs)
                        .map(|o| o.map(|vs| vs.into_iter().map(Slot::Value).collect()))
                } else {
                    self.control(node, &name, opset, &slots)
                };
                match r {
                    Ok(Some(outs)) => Ok(outs),
                    Ok(None) => {
                        self.poison(node);
                        return Ok(());
                    }
                    Err(e) => Err(e),
                }
            }
            ops::Route::Sequence => self.sequence_op(node, &name, opset, &slots),
            ops::Route::Node(_) if op_type == "Identity" && structured.is_some() => {
                self.sequence_op(node, &name, opset, &slots)
            }
            ops::Route::Node(_) if structured.is_some() => {
                let (i, kind) = structured.expect("matched");
                return Err(node_err(format!("input {i} `{}` is {kind}; {op_type} takes tensors", node.input[i])));
            }
            ops::Route::Node(f) => values(self.node_in_cases(node, &name, opset, def, f, inputs.clone())),
        };
        match result {
            Ok(outs) => {
                for (k, oname) in node.output.iter().enumerate() {
                    if oname.is_empty() {
                        continue;
                    }
                    let Some(v) = outs.get(k) else {
                        return Err(node_err(format!("output {k} `{oname}` is not produced")));
                    };
                    self.env.insert(oname.clone(), v.clone());
                }
                Ok(())
            }
            Err(OpError::Unknown) => {
                self.placeholder(node, &name, &inputs, Some(opset), None);
                Ok(())
            }
            Err(OpError::Unsupported(reason)) => {
                self.placeholder(node, &name, &inputs, Some(opset), Some(reason));
                Ok(())
            }
            Err(OpError::Invalid(message)) => Err(node_err(message)),
            Err(OpError::Import(e)) => Err(e),
        }
    }

    fn poison(&mut self, node: &NodeProto) {
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            self.env.insert(o.clone(), Slot::Poisoned);
        }
    }

    /// Records an unsupported op and adds an `Op::Unsupported` placeholder; its outputs are
    /// poisoned.
    fn placeholder(
        &mut self,
        node: &NodeProto,
        name: &str,
        inputs: &[Option<ValueId>],
        opset: Option<i64>,
        reason: Option<String>,
    ) {
        let domain = match node.domain() {
            "" => "ai.onnx".to_string(),
            d => d.to_string(),
        };
        let op =
            Op::Unsupported { op_type: node.op_type().to_string(), domain: domain.clone(), opset: opset.unwrap_or(0) };
        let present: Vec<ValueId> = inputs.iter().flatten().copied().collect();
        // Result types are unknown: placeholders get a nominal type and are never consumed.
        let tys = vec![TensorType::new(DType::F32, Vec::new()); node.output.len()];
        self.g.add_placeholder(op, &present, name, &node.output, tys);
        self.poison(node);
        self.unsupported.push(UnsupportedOp {
            op_type: node.op_type().to_string(),
            domain,
            opset,
            node: name.to_string(),
            reason,
        });
    }

    /// Graph outputs, each a value named as the ONNX output (a named copy where the value
    /// carries another name: an input, an aliased value, or an output listed twice).
    /// A sequence output is flattened into its elements (`<name>[i]`), an optional one into
    /// nothing (absent) or its value.
    fn outputs(&mut self, graph: &GraphProto) -> Result<(), ImportError> {
        let mut used = HashSet::new();
        for vi in &graph.output {
            let name = vi.name();
            let Some(slot) = self.env.get(name).cloned() else {
                return Err(ImportError::InvalidGraph(format!(
                    "graph output `{name}` is not produced by any node, initializer or input"
                )));
            };
            self.output_slot(name, &slot, &mut used)?;
        }
        Ok(())
    }

    fn output_slot(&mut self, name: &str, slot: &Slot, used: &mut HashSet<ValueId>) -> Result<(), ImportError> {
        match slot {
            Slot::Value(v) => self.output_value(name, *v, used),
            Slot::Sequence(elems, _) => {
                for (i, &v) in elems.iter().enumerate() {
                    self.output_value(&element_name(name, i), v, used)?;
                }
                Ok(())
            }
            Slot::Optional(None) | Slot::Poisoned => Ok(()),
            Slot::Optional(Some(inner)) => self.output_slot(name, inner, used),
        }
    }

    fn output_value(&mut self, name: &str, v: ValueId, used: &mut HashSet<ValueId>) -> Result<(), ImportError> {
        let shape = self.dynamic.get(&v).map(|d| (d.dims, d.bounds.clone()));
        let v = if self.g.value(v).name == name && used.insert(v) {
            v
        } else if let Some(t) = self.g.const_of(v) {
            let t = t.clone();
            self.g.add_const(name, t)
        } else {
            let outs = self
                .g
                .add_node(Op::Identity, &[v], format!("{name}/output"), &[name.to_string()])
                .map_err(|e| ImportError::InvalidGraph(e.to_string()))?;
            outs[0]
        };
        if let Some((dims, bounds)) = shape {
            self.g.output_shapes.insert(self.g.outputs.len(), kiln_ir::RuntimeShape { dims, bounds });
        }
        self.g.outputs.push(v);
        Ok(())
    }
}

fn quote_list(names: &[&str]) -> String {
    if names.is_empty() {
        return "(none)".into();
    }
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// One declared dim of a graph input.
enum Dim {
    Static(usize),
    Symbolic(String),
    Unknown,
}

/// The static type of a runtime input: its declared type with `pinned` applied.
/// The symbolic dim names of the inputs' declared shapes.
fn graph_inputs_dim_params(inputs: &[ValueInfoProto]) -> HashSet<String> {
    inputs
        .iter()
        .filter_map(|vi| match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(TypeValue::TensorType(t)) => t.shape.as_ref(),
            _ => None,
        })
        .flat_map(|s| &s.dim)
        .filter_map(|d| match &d.value {
            Some(DimValue::DimParam(p)) if !p.is_empty() => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// An input's type, its symbolic dims sized at their `--dim` bounds, and per axis the
/// symbol it carries at run time (a dim whose bounds differ).
fn input_type(
    vi: &ValueInfoProto,
    pinned: Option<&Vec<usize>>,
    dims_opt: &std::collections::BTreeMap<String, (usize, usize)>,
) -> Result<(TensorType, Vec<Option<String>>), ImportError> {
    let name = vi.name();
    let tensor = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => t,
        Some(other) => {
            let kind = match other {
                TypeValue::SequenceType(_) => "a sequence",
                TypeValue::MapType(_) => "a map",
                TypeValue::OptionalType(_) => "an optional",
                TypeValue::SparseTensorType(_) => "a sparse tensor",
                _ => "an opaque value",
            };
            return Err(ImportError::Unsupported(format!("input `{name}` is {kind}; only tensors are supported")));
        }
        None => return Err(ImportError::InvalidGraph(format!("input `{name}` has no type"))),
    };
    let dtype = dtype_of(tensor.elem_type())
        .map_err(|dtype| ImportError::UnsupportedDtype { tensor: name.to_string(), dtype })?;
    let dims: Option<Vec<Dim>> = tensor.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(DimValue::DimValue(v)) if *v >= 0 => usize::try_from(*v).map_or(Dim::Unknown, Dim::Static),
                Some(DimValue::DimParam(p)) if !p.is_empty() => Dim::Symbolic(p.clone()),
                _ => Dim::Unknown,
            })
            .collect()
    });
    let declared = |dims: &[Dim]| -> String {
        dims.iter()
            .map(|d| match d {
                Dim::Static(v) => v.to_string(),
                Dim::Symbolic(p) => p.clone(),
                Dim::Unknown => "?".into(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };

    let mut syms = Vec::new();
    let shape = if let Some(p) = pinned {
        let spec = format!("{name}={}", fmt_shape(p));
        let bad = |reason: String| ImportError::ShapeSpec { spec: spec.clone(), reason };
        if let Some(dims) = &dims {
            if dims.len() != p.len() {
                return Err(bad(format!(
                    "input `{name}` has rank {} ([{}]), the spec gives {}",
                    dims.len(),
                    declared(dims),
                    p.len()
                )));
            }
            for (i, (d, &want)) in dims.iter().zip(p).enumerate() {
                if let Dim::Static(have) = d {
                    if *have != want {
                        return Err(bad(format!(
                            "input `{name}` has static dim {i} = {have} ([{}]), the spec gives {want}",
                            declared(dims)
                        )));
                    }
                }
            }
        }
        p.clone()
    } else {
        let Some(dims) = dims else {
            return Err(ImportError::UnpinnedDim {
                input: name.to_string(),
                index: 0,
                dim: "an unknown rank".into(),
                shape: "?".into(),
                suggestion: format!("{name}=D0xD1x…"),
            });
        };
        let bounded = |d: &Dim| matches!(d, Dim::Symbolic(p) if dims_opt.contains_key(p));
        if let Some((index, d)) = dims.iter().enumerate().find(|(_, d)| !matches!(d, Dim::Static(_)) && !bounded(d)) {
            let dim = match d {
                Dim::Symbolic(p) => format!("symbolic dim `{p}`"),
                _ => "an unknown dim".into(),
            };
            let example: Vec<usize> = dims.iter().map(|d| if let Dim::Static(v) = d { *v } else { 1 }).collect();
            return Err(ImportError::UnpinnedDim {
                input: name.to_string(),
                index,
                dim,
                shape: declared(&dims),
                suggestion: format!("{name}={}", fmt_shape(&example)),
            });
        }
        syms = dims
            .iter()
            .map(|d| match d {
                Dim::Symbolic(p) if dims_opt.get(p).is_some_and(|(lo, hi)| lo < hi) => Some(p.clone()),
                _ => None,
            })
            .collect();
        dims.iter()
            .map(|d| match d {
                Dim::Static(v) => *v,
                Dim::Symbolic(p) => dims_opt[p].1,
                Dim::Unknown => 0,
            })
            .collect()
    };
    if checked_numel(&shape).is_none() {
        return Err(ImportError::Tensor {
            tensor: name.to_string(),
            message: format!("input shape {shape:?} has more than 2^40 elements"),
        });
    }
    if syms.is_empty() {
        syms = vec![None; shape.len()];
    }
    Ok((TensorType::new(dtype, shape), syms))
}
