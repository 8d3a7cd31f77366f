//! `kiln._kiln`: the Python extension under the `kiln` package (`python/kiln/__init__.py`
//! gives it onnxruntime's shape). A [`PySession`] is a loaded `.kiln` artifact, or an `.onnx`
//! model compiled on load through the kernel cache; where the options leave a symbolic dim
//! of an `.onnx` model open, it is compiled at the first run of each new set of input shapes
//! (and kept). `run` reads contiguous numpy arrays in place, releases the GIL while the model
//! runs (a session may be run from several threads at once) and writes fixed-shape outputs
//! straight into new numpy arrays. Errors are Python exceptions with the CLI's one-line
//! messages: `InvalidArgument` (a `ValueError`) for what the caller passed, `KilnError` for
//! the rest.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln::{CompileOptions, Compiler, DTypeCode, DeclaredDim, RuntimeError, Session, SessionOptions, TensorRef};
use numpy::{Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

pyo3::create_exception!(_kiln, KilnError, PyException, "A model that cannot be compiled, loaded or run.");
pyo3::create_exception!(_kiln, InvalidArgument, PyValueError, "Inputs or options the model cannot take.");

fn kiln_error(e: &dyn std::error::Error) -> PyErr {
    KilnError::new_err(kiln::error_chain(e))
}

fn invalid(e: &dyn std::error::Error) -> PyErr {
    InvalidArgument::new_err(kiln::error_chain(e))
}

fn runtime_error(e: RuntimeError) -> PyErr {
    use RuntimeError as E;
    match e {
        E::InputCount { .. }
        | E::InputDType { .. }
        | E::InputShape { .. }
        | E::InputDim { .. }
        | E::InputSymbol { .. }
        | E::InputDerived { .. }
        | E::InputBytes { .. }
        | E::UnknownInput { .. }
        | E::FrozenInputChanged { .. }
        | E::Check(_) => invalid(&e),
        e => kiln_error(&e),
    }
}

/// onnxruntime's spelling of an element type (`tensor(float)`), from its ONNX code.
fn type_string(code: i32) -> String {
    let name = match code {
        1 => "float",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "double",
        12 => "uint32",
        13 => "uint64",
        16 => "bfloat16",
        c => return DTypeCode::from_i32(c).map_or_else(|| "unknown".into(), |d| format!("tensor({})", d.name())),
    };
    format!("tensor({name})")
}

/// A dim as onnxruntime's `NodeArg.shape` gives it: a size, or a symbolic dim's name.
#[derive(Clone)]
enum DimText {
    Size(u64),
    Name(String),
}

impl<'py> IntoPyObject<'py> for DimText {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self {
            DimText::Size(n) => n.into_pyobject(py)?.into_any(),
            DimText::Name(s) => s.into_pyobject(py)?.into_any(),
        })
    }
}

/// A declared input or output: name, type string and shape (unknown dims as None).
type Io = (String, String, Vec<Option<DimText>>);

/// The specs of a loaded artifact: a dim the caller sets at run time by its symbol's name.
fn manifest_io(s: &Session) -> (Vec<Io>, Vec<Io>) {
    let symbols = &s.manifest().symbols;
    let io = |t: &kiln::TensorSpec| -> Io {
        let shape = t
            .shape
            .iter()
            .enumerate()
            .map(|(d, &n)| match usize::try_from(t.dim_slots.get(d).copied().unwrap_or(-1)) {
                Ok(k) => Some(DimText::Name(symbols.get(k).map_or_else(|| format!("dim{d}"), |s| s.name.clone()))),
                Err(_) => Some(DimText::Size(n)),
            })
            .collect();
        (t.name.clone(), type_string(t.dtype), shape)
    };
    (s.inputs().iter().map(io).collect(), s.outputs().iter().map(io).collect())
}

fn declared_io(d: &kiln::Declared) -> Io {
    let shape = d.dims.as_ref().map_or_else(Vec::new, |dims| {
        dims.iter()
            .map(|x| match x {
                DeclaredDim::Size(n) => Some(DimText::Size(*n)),
                DeclaredDim::Named(s) => Some(DimText::Name(s.clone())),
                DeclaredDim::Unknown => None,
            })
            .collect()
    });
    (d.name.clone(), type_string(d.elem_type), shape)
}

/// The compiled sessions of a model compiled per set of input shapes, by those shapes.
type PerShape = Mutex<BTreeMap<Vec<(String, Vec<usize>)>, Arc<Session>>>;

/// How a session runs: one compiled model, or an `.onnx` model compiled per set of input
/// shapes where its options leave a symbolic dim open.
enum Model {
    Ready(Arc<Session>),
    PerShape { path: PathBuf, opts: Box<CompileOptions>, so: SessionOptions, compiled: PerShape },
}

#[pyclass(name = "Session", module = "kiln._kiln", frozen)]
struct PySession {
    model: Model,
    inputs: Vec<Io>,
    outputs: Vec<Io>,
}

/// Compile options from the keyword arguments shared by `Session` and `compile`.
fn compile_options(
    target: Option<&str>,
    precision: Option<&str>,
    input_shapes: Option<HashMap<String, Vec<usize>>>,
    dims: Option<HashMap<String, (usize, usize)>>,
) -> PyResult<CompileOptions> {
    let mut o = CompileOptions::default();
    if let Some(t) = target {
        o.set_target(t).map_err(|e| invalid(&e))?;
    }
    if let Some(p) = precision {
        o.precision = kiln::Precision::parse(p).map_err(|e| invalid(&e))?;
    }
    o.input_shapes = input_shapes.unwrap_or_default();
    for (name, (lo, hi)) in dims.unwrap_or_default() {
        if lo > hi || hi == 0 {
            return Err(InvalidArgument::new_err(format!("dims: `{name}` = ({lo}, {hi}) is not a range of sizes")));
        }
        o.dims.insert(name, (lo, hi));
    }
    Ok(o)
}

fn is_onnx(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "onnx")
}

fn compile_session(path: &Path, opts: &CompileOptions, so: &SessionOptions) -> PyResult<Session> {
    let art = Compiler::new(opts.clone()).compile_path(path).map_err(|e| kiln_error(&e))?;
    Session::from_bytes(&art.bytes(), so).map_err(runtime_error)
}

/// A numpy array's element type as Kiln's (the common ones asked about first; each
/// descriptor made only when asked about).
fn dtype_of(a: &Bound<'_, PyUntypedArray>) -> Option<DTypeCode> {
    type Descr = for<'py> fn(Python<'py>) -> Bound<'py, numpy::PyArrayDescr>;
    let candidates: [(Descr, DTypeCode); 12] = [
        (numpy::dtype::<f32>, DTypeCode::F32),
        (numpy::dtype::<i64>, DTypeCode::I64),
        (numpy::dtype::<f64>, DTypeCode::F64),
        (numpy::dtype::<i32>, DTypeCode::I32),
        (numpy::dtype::<i16>, DTypeCode::I16),
        (numpy::dtype::<i8>, DTypeCode::I8),
        (numpy::dtype::<u8>, DTypeCode::U8),
        (numpy::dtype::<u16>, DTypeCode::U16),
        (numpy::dtype::<u32>, DTypeCode::U32),
        (numpy::dtype::<u64>, DTypeCode::U64),
        (numpy::dtype::<bool>, DTypeCode::Bool),
        (numpy::dtype::<half::f16>, DTypeCode::F16),
    ];
    let d = a.dtype();
    candidates.into_iter().find(|(descr, _)| d.is_equiv_to(&descr(a.py()))).map(|(_, c)| c)
}

/// A new zeroed numpy array of `dtype` and `shape` (C order).
fn new_array<'py>(py: Python<'py>, dtype: DTypeCode, shape: &[usize]) -> PyResult<Bound<'py, PyUntypedArray>> {
    fn zeros<'py, T: Element>(py: Python<'py>, shape: &[usize]) -> Bound<'py, PyUntypedArray> {
        PyArrayDyn::<T>::zeros(py, shape, false).as_untyped().clone()
    }
    Ok(match dtype {
        DTypeCode::F32 => zeros::<f32>(py, shape),
        DTypeCode::F64 => zeros::<f64>(py, shape),
        DTypeCode::I64 => zeros::<i64>(py, shape),
        DTypeCode::I32 => zeros::<i32>(py, shape),
        DTypeCode::I16 => zeros::<i16>(py, shape),
        DTypeCode::I8 => zeros::<i8>(py, shape),
        DTypeCode::U8 => zeros::<u8>(py, shape),
        DTypeCode::U16 => zeros::<u16>(py, shape),
        DTypeCode::U32 => zeros::<u32>(py, shape),
        DTypeCode::U64 => zeros::<u64>(py, shape),
        DTypeCode::Bool => zeros::<bool>(py, shape),
        DTypeCode::F16 => zeros::<half::f16>(py, shape),
        d => {
            return Err(KilnError::new_err(format!(
                "the model gives an output of type {}, which numpy has no type for",
                d.name()
            )))
        }
    })
}

/// The bytes of a C-contiguous numpy array.
///
/// # Safety
/// The array must be C-contiguous and of `dtype`; the slice must not outlive it, nor be
/// written through while something else reads the array. (The array is Python's: a shared
/// reference is all Rust ever holds of it.)
#[allow(clippy::mut_from_ref)]
unsafe fn array_bytes<'a>(a: &'a Bound<'_, PyUntypedArray>, dtype: DTypeCode) -> &'a mut [u8] {
    let len = a.len() * dtype.size();
    // SAFETY: as the function's contract says; numpy gives a zero-length array a valid
    // (dangling but non-null) pointer.
    unsafe { std::slice::from_raw_parts_mut((*a.as_array_ptr()).data as *mut u8, len) }
}

/// What crosses into the GIL-free part of `run`: the inputs' bytes (held alive by the arrays
/// the caller passed, which `run` keeps) and the output buffers.
struct Unlocked<'a> {
    inputs: Vec<TensorRef<'a>>,
    outputs: Vec<&'a mut [u8]>,
}
// SAFETY: the bytes belong to numpy arrays and buffers that outlive the call; like
// onnxruntime, Kiln does not guard against another Python thread writing to an input array
// while a run reads it.
unsafe impl Send for Unlocked<'_> {}

#[pymethods]
impl PySession {
    #[new]
    #[pyo3(signature = (path, threads=0, profile=false, target=None, precision=None, input_shapes=None, dims=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        threads: usize,
        profile: bool,
        target: Option<&str>,
        precision: Option<&str>,
        input_shapes: Option<HashMap<String, Vec<usize>>>,
        dims: Option<HashMap<String, (usize, usize)>>,
    ) -> PyResult<PySession> {
        let so = SessionOptions { threads, profile };
        if !is_onnx(&path) {
            if target.is_some() || precision.is_some() || input_shapes.is_some() || dims.is_some() {
                return Err(InvalidArgument::new_err(
                    "target, precision, input_shapes and dims apply to .onnx models; a .kiln artifact is fixed at \
                     compile time",
                ));
            }
            let s = py.detach(|| Session::load_with(&path, &so)).map_err(runtime_error)?;
            let (inputs, outputs) = manifest_io(&s);
            return Ok(PySession { model: Model::Ready(Arc::new(s)), inputs, outputs });
        }
        let opts = compile_options(target, precision, input_shapes, dims)?;
        let (declared_in, declared_out) = kiln::declared_signature(&path).map_err(|e| kiln_error(&e))?;
        // A symbolic dim neither pinned (by its input's shape) nor bounded (by name) is
        // decided by the first run that feeds it.
        let open = declared_in.iter().any(|d| {
            !opts.input_shapes.contains_key(&d.name)
                && d.dims.iter().flatten().any(|x| match x {
                    DeclaredDim::Named(n) => !opts.dims.contains_key(n),
                    DeclaredDim::Unknown => true,
                    DeclaredDim::Size(_) => false,
                })
        });
        let inputs = declared_in.iter().map(declared_io).collect();
        let outputs = declared_out.iter().map(declared_io).collect();
        let model = if open {
            Model::PerShape { path, opts: Box::new(opts), so, compiled: Mutex::new(BTreeMap::new()) }
        } else {
            Model::Ready(Arc::new(py.detach(|| compile_session(&path, &opts, &so))?))
        };
        Ok(PySession { model, inputs, outputs })
    }

    /// `[(name, type, shape)]` of the inputs, as the model declares them.
    fn inputs(&self) -> Vec<Io> {
        self.inputs.clone()
    }

    /// `[(name, type, shape)]` of the outputs.
    fn outputs(&self) -> Vec<Io> {
        self.outputs.clone()
    }

    /// Runs the model on `feed` (`{name: ndarray}`) and returns the outputs named in
    /// `output_names` (all, in the model's order, when None) as numpy arrays.
    #[pyo3(signature = (output_names, feed))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        output_names: Option<Vec<String>>,
        feed: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyList>> {
        // The arrays, made C-contiguous where they are not.
        let mut arrays: Vec<(String, Bound<'py, PyUntypedArray>)> = Vec::with_capacity(feed.len());
        for (k, v) in feed.iter() {
            let name: String =
                k.extract().map_err(|_| InvalidArgument::new_err(format!("input names are strings, got {k}")))?;
            let array = match v.cast_into::<PyUntypedArray>() {
                Ok(a) if a.is_c_contiguous() => a,
                Ok(a) => py.import("numpy")?.call_method1("ascontiguousarray", (a,))?.cast_into::<PyUntypedArray>()?,
                Err(e) => {
                    let got = e.into_inner().get_type().name()?.to_string();
                    return Err(InvalidArgument::new_err(format!("input `{name}`: expected a numpy array, got {got}")));
                }
            };
            arrays.push((name, array));
        }
        let session = self.session_for(py, &arrays)?;
        let specs = session.inputs();
        let names = || specs.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", ");
        let mut ordered: Vec<Option<(&Bound<'py, PyUntypedArray>, DTypeCode)>> = vec![None; specs.len()];
        for (name, a) in &arrays {
            let Some(i) = specs.iter().position(|s| &s.name == name) else {
                return Err(InvalidArgument::new_err(format!(
                    "the model has no input `{name}` (its inputs: {})",
                    names()
                )));
            };
            let dtype = dtype_of(a).ok_or_else(|| {
                let got = a.dtype().str().map(|s| s.to_string()).unwrap_or_default();
                InvalidArgument::new_err(format!("input `{name}`: numpy type {got} is not one Kiln takes"))
            })?;
            ordered[i] = Some((a, dtype));
        }
        let mut inputs = Vec::with_capacity(specs.len());
        for (spec, a) in specs.iter().zip(&ordered) {
            let Some((a, dtype)) = a else {
                return Err(InvalidArgument::new_err(format!(
                    "input `{}` is missing from the feed (the model's inputs: {})",
                    spec.name,
                    names()
                )));
            };
            // SAFETY: a C-contiguous array of this type (made so above), kept alive by
            // `arrays` until the run returns, only read.
            let data = unsafe { array_bytes(a, *dtype) };
            inputs.push(TensorRef { dtype: *dtype, shape: a.shape(), data });
        }
        let out_specs = session.outputs();
        let wanted: Vec<usize> = match output_names {
            None => (0..out_specs.len()).collect(),
            Some(names) => names
                .iter()
                .map(|n| {
                    out_specs.iter().position(|s| &s.name == n).ok_or_else(|| {
                        let all = out_specs.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", ");
                        InvalidArgument::new_err(format!("the model has no output `{n}` (its outputs: {all})"))
                    })
                })
                .collect::<PyResult<_>>()?,
        };
        // Fixed-shape outputs are written straight into new arrays; those whose shape a run
        // decides into buffers at their bounds, copied out at the run's shape.
        let mut fixed: Vec<Option<Bound<'py, PyUntypedArray>>> = Vec::with_capacity(out_specs.len());
        let mut spare: Vec<Vec<u64>> = Vec::new();
        for s in out_specs {
            if s.is_dynamic() {
                fixed.push(None);
                spare.push(vec![0u64; s.byte_len().div_ceil(8)]);
            } else {
                let dtype = DTypeCode::from_i32(s.dtype).expect("checked at load");
                let shape: Vec<usize> = s.shape.iter().map(|&d| d as usize).collect();
                fixed.push(Some(new_array(py, dtype, &shape)?));
            }
        }
        let mut spare_it = spare.iter_mut();
        let mut outputs: Vec<&mut [u8]> = Vec::with_capacity(out_specs.len());
        for (s, a) in out_specs.iter().zip(&fixed) {
            let dtype = DTypeCode::from_i32(s.dtype).expect("checked at load");
            outputs.push(match a {
                // SAFETY: a fresh C-contiguous array of the spec's shape and type, written only
                // by this run.
                Some(a) => unsafe { array_bytes(a, dtype) },
                None => {
                    let b = spare_it.next().expect("one per dynamic output");
                    // SAFETY: the same memory as bytes; u8 has no alignment or invalid values.
                    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut u8, s.byte_len()) }
                }
            });
        }
        let mut work = Unlocked { inputs, outputs };
        let shapes = py
            .detach(|| {
                let w = &mut work;
                session.run_into_shaped(&w.inputs, &mut w.outputs)
            })
            .map_err(runtime_error)?;
        drop(work);
        let mut spare_bytes = spare.iter();
        let mut results: Vec<Bound<'py, PyAny>> = Vec::with_capacity(out_specs.len());
        for ((s, a), shape) in out_specs.iter().zip(fixed).zip(&shapes) {
            match a {
                Some(a) => results.push(a.into_any()),
                None => {
                    let dtype = DTypeCode::from_i32(s.dtype).expect("checked at load");
                    let b = spare_bytes.next().expect("one per dynamic output");
                    let n = shape.iter().product::<usize>() * dtype.size();
                    let a = new_array(py, dtype, shape)?;
                    // SAFETY: the buffer holds the run's elements at its start (n bytes); the
                    // new array is C-contiguous of that shape and type, n bytes, not shared.
                    unsafe {
                        array_bytes(&a, dtype)
                            .copy_from_slice(&std::slice::from_raw_parts(b.as_ptr() as *const u8, n)[..n])
                    };
                    results.push(a.into_any());
                }
            }
        }
        PyList::new(py, wanted.into_iter().map(|i| results[i].clone()))
    }

    /// What the runs since profiling started (or was last ended) recorded, and profiling
    /// goes on afresh: `(trace, table)`, the Chrome trace as JSON text and the table by op
    /// type and by kernel; None when the session does not profile.
    fn end_profiling(&self) -> Option<(String, String)> {
        let sessions: Vec<Arc<Session>> = match &self.model {
            Model::Ready(s) if !s.profiling() => return None,
            Model::Ready(s) => vec![s.clone()],
            Model::PerShape { so, .. } if !so.profile => return None,
            Model::PerShape { compiled, .. } => {
                compiled.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
            }
        };
        let mut events = Vec::new();
        let mut table = String::new();
        for p in sessions.iter().filter_map(|s| s.end_profiling()) {
            if let Some(list) = p.chrome_trace()["traceEvents"].as_array() {
                events.extend(list.iter().cloned());
            }
            table.push_str(&p.table(25));
        }
        let trace = serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" });
        Some((trace.to_string(), table))
    }
}

impl PySession {
    /// The compiled session for these arrays: the one session, or the one compiled for their
    /// shapes (compiled now if new).
    fn session_for(&self, py: Python<'_>, arrays: &[(String, Bound<'_, PyUntypedArray>)]) -> PyResult<Arc<Session>> {
        let (path, opts, so, compiled) = match &self.model {
            Model::Ready(s) => return Ok(s.clone()),
            Model::PerShape { path, opts, so, compiled } => (path, opts, so, compiled),
        };
        let mut key: Vec<(String, Vec<usize>)> = arrays.iter().map(|(n, a)| (n.clone(), a.shape().to_vec())).collect();
        key.sort();
        if let Some(s) = compiled.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(s.clone());
        }
        let mut o = (**opts).clone();
        for (name, shape) in &key {
            if self.inputs.iter().any(|i| &i.0 == name) && !o.input_shapes.contains_key(name) {
                o.input_shapes.insert(name.clone(), shape.clone());
            }
        }
        let s = Arc::new(py.detach(|| compile_session(path, &o, so))?);
        Ok(compiled.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert(s).clone())
    }
}

/// Compiles `model` (.onnx) to `output`, as `kiln compile` does; returns the artifact's size
/// in bytes and whether it was already up to date.
#[pyfunction]
#[pyo3(signature = (model, output, target=None, precision=None, input_shapes=None, dims=None, emit="kiln", name=None))]
#[allow(clippy::too_many_arguments)]
fn compile(
    py: Python<'_>,
    model: PathBuf,
    output: PathBuf,
    target: Option<&str>,
    precision: Option<&str>,
    input_shapes: Option<HashMap<String, Vec<usize>>>,
    dims: Option<HashMap<String, (usize, usize)>>,
    emit: &str,
    name: Option<String>,
) -> PyResult<(u64, bool)> {
    let opts = compile_options(target, precision, input_shapes, dims)?;
    let kind = match emit {
        "kiln" => kiln::ArtifactKind::Kiln,
        "object" => kiln::ArtifactKind::Object,
        "staticlib" => kiln::ArtifactKind::Staticlib,
        "header" => kiln::ArtifactKind::Header,
        e => return Err(InvalidArgument::new_err(format!("emit `{e}`: expected kiln, object, staticlib or header"))),
    };
    let stem = model.file_stem().map(|s| s.to_string_lossy().replace(['-', '.', ' '], "_")).unwrap_or_default();
    let name = name.unwrap_or(stem);
    let done =
        py.detach(|| Compiler::new(opts).compile_file_as(&model, &output, kind, &name)).map_err(|e| kiln_error(&e))?;
    Ok((done.file_len, done.up_to_date))
}

#[pymodule]
fn _kiln(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySession>()?;
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add("KilnError", m.py().get_type::<KilnError>())?;
    m.add("InvalidArgument", m.py().get_type::<InvalidArgument>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
