//! Compile ONNX models in a build script (`build.rs`) and call them from Rust with types.
//!
//! ```no_run
//! // build.rs of a crate that depends on `kiln-runtime` (and on `kiln-build` as a
//! // build-dependency), in its `fn main`:
//! kiln_build::Model::new("model.onnx").name("mlp").input_shape("x", [1, 8]).compile().unwrap();
//! ```
//!
//! ```ignore
//! // src/main.rs
//! include!(concat!(env!("OUT_DIR"), "/mlp.rs"));
//! let model = Mlp::new()?;
//! let out = model.run(&[0.5; 8])?; // `x`: f32 [1, 8], checked when compiling
//! println!("{:?}", out.y);          // `y`: Box<[f32; 4]>
//! ```
//!
//! [`Model::compile`] compiles the model into a static library in `OUT_DIR` (code and weights)
//! and tells cargo to link it and to rerun the build script when the model or its external
//! data change. It writes `OUT_DIR/<name>.rs`, a binding of a few dozen lines whatever the
//! model's size: a struct named after the model whose `run` takes each input as a reference
//! to an array of its element type and element count, and returns the outputs the same way,
//! boxed. The model runs on `kiln-runtime`'s thread pool; no LLVM, model file or artifact
//! file is needed at run time.
//!
//! Compilations are cached by content: the library is rebuilt only when the source key
//! (the compiler, the options, the bytes of the model and its external data) changed, so a
//! touched but unchanged model costs a hash, and cargo's own fingerprints make an untouched
//! one cost nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kiln::{ArtifactKind, CompileOptions, Compiler};
use kiln_abi::manifest::{Manifest, TensorSpec};
use kiln_abi::DTypeCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kiln-build: `{0}` is not set: Model::compile runs in a build script")]
    NotInBuildScript(&'static str),
    #[error("kiln-build: model `{model}`: {source}")]
    Compile { model: PathBuf, source: Box<kiln::Error> },
    #[error("kiln-build: model `{model}`: {message}")]
    Invalid { model: PathBuf, message: String },
    #[error("kiln-build: writing `{path}`: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// What [`Model::compile`] did.
#[derive(Debug)]
pub struct Built {
    /// The binding to include: `include!(concat!(env!("OUT_DIR"), "/<name>.rs"))`.
    pub binding: PathBuf,
    /// The static library linked into the crate.
    pub library: PathBuf,
    /// The model was compiled (false: the library in `OUT_DIR` was up to date).
    pub compiled: bool,
}

/// A model to compile in a build script.
#[derive(Clone, Debug)]
pub struct Model {
    path: PathBuf,
    name: Option<String>,
    opts: CompileOptions,
    cpu: Option<String>,
}

impl Model {
    /// The ONNX file at `path` (relative to the crate's directory).
    pub fn new(path: impl Into<PathBuf>) -> Model {
        Model { path: path.into(), name: None, opts: CompileOptions::default(), cpu: None }
    }

    /// The name of the model in Rust and C: the binding's file (`<name>.rs`), its struct
    /// (`<name>` in CamelCase) and the library's symbols. Default: the file's stem.
    pub fn name(mut self, name: &str) -> Model {
        self.name = Some(name.to_string());
        self
    }

    /// Pins an input's shape (needed for symbolic dims).
    pub fn input_shape(mut self, input: &str, dims: impl AsRef<[usize]>) -> Model {
        self.opts.input_shapes.insert(input.to_string(), dims.as_ref().to_vec());
        self
    }

    /// Lets the model's symbolic dim `name` vary at run time between `lo` and `hi` (`kiln
    /// compile --dim`): an input it sizes is passed as a slice and its shape.
    pub fn dim(mut self, name: &str, lo: usize, hi: usize) -> Model {
        self.opts.dims.insert(name.to_string(), (lo, hi));
        self
    }

    /// The CPU to compile for (LLVM's name, e.g. `generic`, `x86-64-v3`, `cortex-a72`).
    /// Default: this machine's when building for it (as `kiln compile` does; choose
    /// `generic` or the deployment machine's CPU for binaries that run elsewhere), `generic`
    /// when cross-compiling.
    pub fn cpu(mut self, cpu: &str) -> Model {
        self.cpu = Some(cpu.to_string());
        self
    }

    /// Compiles the model into `OUT_DIR` (unless it is up to date there), writes the
    /// binding and prints cargo's link and `rerun-if-changed` directives.
    pub fn compile(self) -> Result<Built, Error> {
        let env = |k: &'static str| std::env::var(k).map_err(|_| Error::NotInBuildScript(k));
        let out_dir = PathBuf::from(env("OUT_DIR")?);
        let path = match std::env::var_os("CARGO_MANIFEST_DIR") {
            Some(dir) if self.path.is_relative() => PathBuf::from(dir).join(&self.path),
            _ => self.path.clone(),
        };
        let stem = self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = kiln::native::c_name(self.name.as_deref().unwrap_or(&stem));
        let mut opts = self.opts;
        let (target, host) = (env("TARGET")?, env("HOST")?);
        let target_name = if target == host { "cpu" } else { target.as_str() };
        let compile_err = |source| Error::Compile { model: path.clone(), source: Box::new(source) };
        opts.set_target_cpu(target_name, self.cpu.as_deref()).map_err(compile_err)?;
        let compiler = Compiler::new(opts);

        let (key, files) = compiler.source_key_of(&path).map_err(compile_err)?;
        for f in &files {
            println!("cargo:rerun-if-changed={}", f.display());
        }
        let lib_name = format!("kiln_{name}");
        let library = out_dir.join(format!("lib{lib_name}.a"));
        let manifest_path = out_dir.join(format!("{name}.manifest"));
        let key_path = out_dir.join(format!("{name}.kiln-key"));
        let binding = out_dir.join(format!("{name}.rs"));
        let write =
            |p: &Path, bytes: &[u8]| std::fs::write(p, bytes).map_err(|source| Error::Write { path: p.into(), source });

        let cached = std::fs::read_to_string(&key_path).is_ok_and(|k| k == key)
            && library.is_file()
            && binding.is_file()
            && manifest_path.is_file();
        if !cached {
            let done =
                compiler.compile_file_as(&path, &library, ArtifactKind::Staticlib, &name).map_err(compile_err)?;
            let code = binding_source(&done.manifest, &name, &self.path.display().to_string())
                .map_err(|message| Error::Invalid { model: path.clone(), message })?;
            write(&manifest_path, &prost::Message::encode_to_vec(&done.manifest))?;
            write(&binding, code.as_bytes())?;
            // Last: the key says the three files above are complete.
            write(&key_path, key.as_bytes())?;
        }
        println!("cargo:rustc-link-search=native={}", out_dir.display());
        println!("cargo:rustc-link-lib=static={lib_name}");
        Ok(Built { binding, library, compiled: !cached })
    }
}

/// The Rust element type of a dtype (see `kiln_runtime::Element`).
fn rust_type(d: DTypeCode) -> &'static str {
    use DTypeCode::*;
    match d {
        F32 => "f32",
        F64 => "f64",
        I8 | I4 | I2 => "i8",
        I16 => "i16",
        I32 => "i32",
        I64 => "i64",
        U16 | F16 | BF16 => "u16",
        U32 => "u32",
        U64 => "u64",
        Bool => "bool",
        U8 | U4 | U2 | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F8E8M0 | F4E2M1 => "u8",
    }
}

fn camel(name: &str) -> String {
    let mut out = String::new();
    for part in name.split('_').filter(|p| !p.is_empty()) {
        let mut c = part.chars();
        if let Some(f) = c.next() {
            out.extend(f.to_uppercase());
            out.push_str(c.as_str());
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'M');
    }
    out
}

/// A tensor's Rust field or argument name (its ONNX name made an identifier, numbered when
/// two would be the same, `r#` for keywords is avoided with a trailing `_`).
fn idents(specs: &[TensorSpec], prefix: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    specs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut id = kiln::native::c_name(&t.name).to_ascii_lowercase();
            if id.starts_with('_') && id.len() == 1 || KEYWORDS.contains(&id.as_str()) {
                id.push('_');
            }
            if !seen.insert(id.clone()) {
                id = format!("{prefix}{i}");
                seen.insert(id.clone());
            }
            id
        })
        .collect()
}

const KEYWORDS: [&str; 38] = [
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern", "false", "fn",
    "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "self", "static",
    "struct", "super", "trait", "true", "type", "unsafe", "use", "where", "while", "abstract",
];

fn describe(t: &TensorSpec) -> (DTypeCode, u64, String) {
    let d = DTypeCode::from_i32(t.dtype).unwrap_or(DTypeCode::U8);
    let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
    (d, t.shape.iter().product(), shape.join(", "))
}

/// The binding of a model compiled under the C name `name` from `source`.
fn binding_source(m: &Manifest, name: &str, source: &str) -> Result<String, String> {
    if m.inputs.iter().chain(&m.outputs).any(|t| DTypeCode::from_i32(t.dtype).is_none()) {
        return Err("a tensor has an unknown dtype".into());
    }
    let ty = camel(name);
    let (ins, outs) = (idents(&m.inputs, "input"), idents(&m.outputs, "output"));
    let doc = |t: &TensorSpec| {
        let (d, _, shape) = describe(t);
        format!("`{}`: {} [{shape}], row-major", t.name.replace('`', "'"), d.name())
    };
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "// Generated by kiln-build from `{source}`: do not edit.");
    let _ = writeln!(w, "#[allow(non_upper_case_globals, dead_code)]\nmod __kiln_{name} {{");
    let _ = writeln!(w, "    extern \"C\" {{");
    let _ = writeln!(w, "        pub fn {name}_entry(ctx: *const kiln_runtime::abi::Context) -> i32;");
    let _ = writeln!(w, "        pub static {name}_abi_version: u32;");
    let _ = writeln!(w, "        pub static {name}_weights: [u8; 0];\n    }}");
    let _ = writeln!(
        w,
        "    pub static MANIFEST: &[u8] = include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{name}.manifest\"));\n}}\n"
    );
    let _ = writeln!(
        w,
        "/// The model `{}` from `{source}`, compiled by {} for {} (cpu {}).",
        m.model_name, m.producer, m.target_triple, m.target_cpu
    );
    let _ = writeln!(
        w,
        "///\n/// Inputs: {}.\n///\n/// Outputs: {}.",
        m.inputs.iter().map(doc).collect::<Vec<_>>().join("; "),
        m.outputs.iter().map(doc).collect::<Vec<_>>().join("; ")
    );
    let _ = writeln!(w, "pub struct {ty} {{\n    session: kiln_runtime::Session,\n}}\n");
    let _ =
        writeln!(w, "/// The outputs of [`{ty}::run`].\n#[derive(Clone, Debug, PartialEq)]\npub struct {ty}Outputs {{");
    for (t, id) in m.outputs.iter().zip(&outs) {
        let (d, n, _) = describe(t);
        if t.is_dynamic() {
            // Its shape is decided at run time: its elements and its shape.
            let _ = writeln!(w, "    /// {}: its shape is decided at run time (at most the bounds, per dim).", doc(t));
            let _ = writeln!(
                w,
                "    pub {id}: Vec<{}>,\n    /// The shape of `{id}`.\n    pub {id}_shape: Vec<usize>,",
                rust_type(d)
            );
        } else {
            let _ = writeln!(w, "    /// {}.\n    pub {id}: Box<[{}; {n}]>,", doc(t), rust_type(d));
        }
    }
    let _ = writeln!(w, "}}\n\nimpl {ty} {{");
    for (t, id) in m.inputs.iter().chain(&m.outputs).zip(ins.iter().chain(&outs)) {
        let (_, _, shape) = describe(t);
        let (what, suffix) =
            if t.is_dynamic() { ("The most each dim of", "MAX_SHAPE") } else { ("The shape of", "SHAPE") };
        let _ = writeln!(
            w,
            "    /// {what} {}.\n    pub const {}_{suffix}: [usize; {}] = [{shape}];",
            doc(t),
            id.to_ascii_uppercase(),
            t.shape.len()
        );
    }
    let _ = writeln!(w, "\n    /// Loads the model, running it on one worker per core.");
    let _ = writeln!(
        w,
        "    pub fn new() -> Result<Self, kiln_runtime::RuntimeError> {{\n        Self::with_threads(0)\n    }}\n"
    );
    let _ = writeln!(w, "    /// Loads the model, running it on `threads` workers (0: one per core).");
    let _ = writeln!(w, "    pub fn with_threads(threads: usize) -> Result<Self, kiln_runtime::RuntimeError> {{");
    let _ = writeln!(w, "        use __kiln_{name}::*;");
    let _ = writeln!(w, "        let opts = kiln_runtime::SessionOptions {{ threads, ..Default::default() }};");
    let _ =
        writeln!(w, "        // SAFETY: the manifest, entry point and symbols come from one compilation: kiln-build");
    let _ = writeln!(w, "        // wrote this file next to the library that defines them.");
    let _ = writeln!(w, "        let session = unsafe {{");
    let _ = writeln!(w, "            let weights = std::ptr::addr_of!({name}_weights).cast::<u8>();");
    let _ = writeln!(w, "            kiln_runtime::Session::from_linked(MANIFEST, {name}_entry, weights, {name}_abi_version, &opts)?\n        }};");
    let _ = writeln!(w, "        Ok({ty} {{ session }})\n    }}\n");
    let args: Vec<String> = m
        .inputs
        .iter()
        .zip(&ins)
        .map(|(t, id)| {
            let (d, n, _) = describe(t);
            if t.is_dynamic() {
                // Sized at run time: its elements and its shape.
                format!("{id}: &[{}], {id}_shape: &[usize; {}]", rust_type(d), t.shape.len())
            } else {
                format!("{id}: &[{}; {n}]", rust_type(d))
            }
        })
        .collect();
    let _ = writeln!(w, "    /// Runs the model (several threads may run it at once).");
    let _ =
        writeln!(w, "    pub fn run(&self, {}) -> Result<{ty}Outputs, kiln_runtime::RuntimeError> {{", args.join(", "));
    let _ = writeln!(w, "        let inputs = [");
    for (t, id) in m.inputs.iter().zip(&ins) {
        let shape =
            if t.is_dynamic() { format!("{id}_shape") } else { format!("&Self::{}_SHAPE", id.to_ascii_uppercase()) };
        let _ = writeln!(w, "            kiln_runtime::TensorRef::typed(kiln_runtime::DType::from_i32({}).expect(\"dtype\"), {shape}, {id}).expect(\"width\"),", t.dtype);
    }
    let _ = writeln!(w, "        ];\n        let mut outs = self.session.run(&inputs)?.into_iter();");
    let fields: Vec<String> = m
        .outputs
        .iter()
        .zip(&outs)
        .map(|(t, id)| {
            if t.is_dynamic() {
                format!(
                    "{id}: {{ let t = outs.next().expect(\"output as declared\"); let s = t.shape.clone(); \
                     {id}_shape = s; t.to_vec_of().expect(\"output as declared\") }}"
                )
            } else {
                format!(
                    "{id}: outs.next().and_then(|t| t.to_vec_of()).and_then(|v| v.into_boxed_slice().try_into().ok())\
                     .expect(\"output as declared\")"
                )
            }
        })
        .collect();
    let shapes: Vec<String> = m
        .outputs
        .iter()
        .zip(&outs)
        .filter(|(t, _)| t.is_dynamic())
        .map(|(_, id)| format!("        let {id}_shape;"))
        .collect();
    for line in &shapes {
        let _ = writeln!(w, "{line}");
    }
    let _ = writeln!(w, "        let out = {ty}Outputs {{");
    for (f, (t, id)) in fields.iter().zip(m.outputs.iter().zip(&outs)) {
        let _ = writeln!(w, "            {f},");
        if t.is_dynamic() {
            let _ = writeln!(w, "            {id}_shape,");
        }
    }
    let _ = writeln!(w, "        }};\n        Ok(out)\n    }}\n}}");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DTypeCode, shape: &[u64]) -> TensorSpec {
        TensorSpec { name: name.into(), dtype: dtype as i32, shape: shape.to_vec(), ..Default::default() }
    }

    #[test]
    fn names_become_rust_identifiers() {
        assert_eq!(camel("mlp"), "Mlp");
        assert_eq!(camel("my_model_2"), "MyModel2");
        assert_eq!(camel("3d_unet"), "M3dUnet");
        let specs = [
            spec("input:0", DTypeCode::F32, &[1]),
            spec("type", DTypeCode::F32, &[1]),
            spec("Input/0", DTypeCode::F32, &[1]),
            spec("_", DTypeCode::F32, &[1]),
        ];
        assert_eq!(idents(&specs, "input"), ["input_0", "type_", "input2", "__"]);
    }

    #[test]
    fn binding_types_follow_dtypes_and_shapes() {
        let m = Manifest {
            model_name: "m".into(),
            inputs: vec![spec("ids", DTypeCode::I64, &[1, 128]), spec("mask", DTypeCode::Bool, &[1, 128])],
            outputs: vec![spec("logits", DTypeCode::F16, &[1, 2])],
            ..Default::default()
        };
        let code = binding_source(&m, "clf", "clf.onnx").unwrap();
        assert!(code.contains("pub struct Clf {"), "{code}");
        assert!(
            code.contains("pub fn run(&self, ids: &[i64; 128], mask: &[bool; 128]) -> Result<ClfOutputs"),
            "{code}"
        );
        assert!(code.contains("pub logits: Box<[u16; 2]>,"), "{code}");
        assert!(code.contains("pub const IDS_SHAPE: [usize; 2] = [1, 128];"), "{code}");
        assert!(code.contains("pub fn clf_entry(ctx: *const kiln_runtime::abi::Context) -> i32;"), "{code}");
        // A few dozen lines, whatever the model.
        assert!(code.lines().count() < 80, "{}", code.lines().count());
    }

    /// An input sized at run time: a slice and its shape, its bounds as a constant.
    #[test]
    fn binding_of_an_input_sized_at_run_time() {
        let mut x = spec("x", DTypeCode::F32, &[8, 4]);
        x.dim_slots = vec![0, -1];
        let mut y = spec("y", DTypeCode::F32, &[8, 4]);
        y.dim_slots = vec![0, -1];
        let m = Manifest {
            inputs: vec![x],
            outputs: vec![y],
            dim_slots: 1,
            symbols: vec![kiln_abi::manifest::DimBound { name: "N".into(), lo: 1, hi: 8, base: None, offset: 0 }],
            ..Default::default()
        };
        let code = binding_source(&m, "m", "m.onnx").unwrap();
        assert!(code.contains("pub fn run(&self, x: &[f32], x_shape: &[usize; 2])"), "{code}");
        assert!(code.contains("expect(\"dtype\"), x_shape, x)"), "{code}");
        assert!(code.contains("pub const X_MAX_SHAPE: [usize; 2] = [8, 4];"), "{code}");
        assert!(code.contains("pub y: Vec<f32>,") && code.contains("pub y_shape: Vec<usize>,"), "{code}");
    }

    /// An output whose shape is decided at run time: its elements and its shape, its bounds
    /// as a constant.
    #[test]
    fn binding_of_an_output_of_run_time_shape() {
        let mut boxes = spec("boxes", DTypeCode::F32, &[40, 4]);
        boxes.dim_slots = vec![0, -1];
        boxes.max_bytes = 640;
        let m = Manifest {
            model_name: "m".into(),
            inputs: vec![spec("image", DTypeCode::F32, &[1, 3, 16, 16])],
            outputs: vec![boxes, spec("count", DTypeCode::I64, &[1])],
            dim_slots: 1,
            ..Default::default()
        };
        let code = binding_source(&m, "det", "det.onnx").unwrap();
        assert!(code.contains("pub boxes: Vec<f32>,"), "{code}");
        assert!(code.contains("pub boxes_shape: Vec<usize>,"), "{code}");
        assert!(code.contains("pub const BOXES_MAX_SHAPE: [usize; 2] = [40, 4];"), "{code}");
        assert!(code.contains("pub count: Box<[i64; 1]>,"), "{code}");
    }
}
