//! Artifacts for linking into a program instead of loading at run time: a relocatable
//! object, a static library and the C header that goes with them.
//!
//! They hold the same code as a `.kiln` file (the entry module and the kernel bodies) and the
//! weights as a read-only data symbol. The exported symbols carry the model's C name
//! (`<name>_entry`, `<name>_abi_version`, `<name>_weights`) so that several models link into
//! one program; kernel bodies are hidden weak symbols named by the hash of their code, shared
//! by models that have them in common. The program calls the entry point with a
//! `kiln_context` (the ABI of `kiln-abi`, spelled out in the header), and the header's
//! `<name>_run` does that on the calling thread.

use std::fmt::Write as _;

use kiln_abi::manifest::Manifest;
use kiln_abi::DTypeCode;
use object::write::{Object, StandardSection, Symbol, SymbolSection};
use object::{Architecture, BinaryFormat, Endianness, SectionKind, SymbolFlags, SymbolKind, SymbolScope};

use crate::WeightSection;

/// What `kiln compile --emit` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactKind {
    /// The `.kiln` file the runtime loads (the default).
    Kiln,
    /// One relocatable object: code and weights.
    Object,
    /// A static library (`.a`): the code's objects and the weights' object.
    Staticlib,
    /// A C header declaring the entry point, the weights and the tensors.
    Header,
}

impl ArtifactKind {
    pub const NAMES: [&'static str; 4] = ["kiln", "object", "staticlib", "header"];

    pub fn parse(s: &str) -> Option<ArtifactKind> {
        Some(match s {
            "kiln" => ArtifactKind::Kiln,
            "object" | "obj" => ArtifactKind::Object,
            "staticlib" => ArtifactKind::Staticlib,
            "header" => ArtifactKind::Header,
            _ => return None,
        })
    }
}

/// `s` as a C identifier: other characters become `_`, and a leading digit gets a `_`.
pub fn c_name(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("no object file format for target `{0}` (ELF targets are supported: x86_64, aarch64, riscv64, …)")]
    Architecture(String),
    #[error("writing the weights object: {0}")]
    Object(String),
    #[error("writing the static library: {0}")]
    Archive(std::io::Error),
}

fn architecture(triple: &str) -> Option<Architecture> {
    let arch = triple.split('-').next()?;
    Some(match arch {
        "x86_64" => Architecture::X86_64,
        "aarch64" => Architecture::Aarch64,
        "riscv64" | "riscv64gc" => Architecture::Riscv64,
        "i686" | "i586" | "i386" => Architecture::I386,
        "armv7" | "arm" | "thumbv7" => Architecture::Arm,
        "powerpc64le" => Architecture::PowerPc64,
        "loongarch64" => Architecture::LoongArch64,
        _ => return None,
    })
}

/// An ELF relocatable object for `triple` defining `<name>_weights`: the weight section,
/// read-only, 64-byte aligned.
pub fn weights_object(triple: &str, name: &str, weights: &WeightSection) -> Result<Vec<u8>, NativeError> {
    let arch = architecture(triple).ok_or_else(|| NativeError::Architecture(triple.to_string()))?;
    let endian = if triple.starts_with("powerpc64-") { Endianness::Big } else { Endianness::Little };
    let mut obj = Object::new(BinaryFormat::Elf, arch, endian);
    let section = obj.section_id(StandardSection::ReadOnlyData);
    // An empty section still gets a defined, aligned symbol.
    let bytes = weights.to_vec();
    let offset = obj.append_section_data(section, &bytes, 64);
    obj.add_symbol(Symbol {
        name: format!("{name}_weights").into_bytes(),
        value: offset,
        size: bytes.len() as u64,
        kind: SymbolKind::Data,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Section(section),
        flags: SymbolFlags::None,
    });
    // No executable stack (what compilers mark with an empty `.note.GNU-stack`).
    obj.add_section(Vec::new(), b".note.GNU-stack".to_vec(), SectionKind::Elf(object::elf::SHT_PROGBITS));
    obj.write().map_err(|e| NativeError::Object(e.to_string()))
}

/// A static library (GNU `ar` format with a symbol index) of `members`, (file name, object)
/// pairs in order: `<name>_entry.o`, `kiln_b<key>.o` for the bodies and `<name>_weights.o`.
pub fn staticlib(members: Vec<(String, Vec<u8>)>) -> Result<Vec<u8>, NativeError> {
    let members: Vec<ar_archive_writer::NewArchiveMember> = members
        .into_iter()
        .map(|(name, bytes)| {
            ar_archive_writer::NewArchiveMember::new(bytes, &ar_archive_writer::DEFAULT_OBJECT_READER, name)
        })
        .collect();
    let mut out = std::io::Cursor::new(Vec::new());
    ar_archive_writer::write_archive_to_stream(&mut out, &members, ar_archive_writer::ArchiveKind::Gnu, false, None)
        .map_err(NativeError::Archive)?;
    Ok(out.into_inner())
}

/// `s` as a C string literal: quotes, backslashes and bytes outside printable ASCII escaped
/// (in octal, which never runs into a following digit past three).
fn c_string(s: &str) -> String {
    let mut out = String::from("\"");
    for &b in s.as_bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            // `??x` would be a trigraph in older C.
            b'?' => out.push_str("\\?"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out.push('"');
    out
}

fn c_type(d: Option<DTypeCode>) -> &'static str {
    match d {
        Some(DTypeCode::F32) => "float",
        Some(DTypeCode::F64) => "double",
        Some(DTypeCode::I8 | DTypeCode::I4 | DTypeCode::I2) => "int8_t",
        Some(DTypeCode::I16) => "int16_t",
        Some(DTypeCode::I32) => "int32_t",
        Some(DTypeCode::I64) => "int64_t",
        Some(DTypeCode::U16 | DTypeCode::F16 | DTypeCode::BF16) => "uint16_t",
        Some(DTypeCode::U32) => "uint32_t",
        Some(DTypeCode::U64) => "uint64_t",
        _ => "uint8_t",
    }
}

/// The C header of a model compiled under the C name `name`.
pub fn header(m: &Manifest, name: &str) -> String {
    let up = name.to_ascii_uppercase();
    let mut h = String::new();
    let w = &mut h;
    let _ = writeln!(w, "/* {name}.h: the C interface of a model compiled by {}.", m.producer);
    let _ = writeln!(
        w,
        " * Model `{}`, target {} (cpu {}), Kiln ABI {}.{}.",
        m.model_name, m.target_triple, m.target_cpu, m.abi_major, m.abi_minor
    );
    let _ = writeln!(w, " * Generated: do not edit. Link with the static library or object of the same compilation");
    let _ = writeln!(w, " * (and -lm). */");
    let _ = writeln!(w, "#ifndef KILN_MODEL_{up}_H\n#define KILN_MODEL_{up}_H\n");
    let _ = writeln!(w, "#include <stddef.h>\n#include <stdint.h>\n");
    let _ = writeln!(w, "#ifdef __cplusplus\nextern \"C\" {{\n#endif\n");
    h.push_str(ABI_C);
    let w = &mut h;
    let _ = writeln!(w, "\n/* Bytes of scratch memory one run needs (64-byte aligned). */");
    let _ = writeln!(w, "#define {up}_ARENA_BYTES {}u", m.arena_bytes);
    let _ = writeln!(w, "#define {up}_NUM_INPUTS {}", m.inputs.len());
    let _ = writeln!(w, "#define {up}_NUM_OUTPUTS {}", m.outputs.len());
    let _ = writeln!(
        w,
        "/* Sizes set at run time: first the inputs' run-time dims (the caller's, below), then those the \
         code decides (an output's shape that depends on data). */"
    );
    let _ = writeln!(w, "#define {up}_NUM_DIMS {}", m.dim_slots);
    for (k, s) in m.symbols.iter().enumerate() {
        let set = match s.base {
            Some(b) => format!("set by the caller before a run to dims[{b}] + ({})", s.offset),
            None => "set by the caller before a run".to_string(),
        };
        let _ = writeln!(
            w,
            "/* dims[{k}]: `{}`, {set}, {} to {}. */\n#define {up}_DIM_{} {k}",
            s.name.replace("*/", "* /"),
            s.lo,
            s.hi,
            c_name(&s.name).to_ascii_uppercase()
        );
    }
    for (role, specs) in [("INPUT", &m.inputs), ("OUTPUT", &m.outputs)] {
        for (i, t) in specs.iter().enumerate() {
            let dtype = DTypeCode::from_i32(t.dtype);
            let elems: u64 = t.shape.iter().product();
            let size = dtype.map_or(1, |d| d.size()) as u64;
            let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
            let _ = writeln!(
                w,
                "/* {} {i}: `{}`, {} [{}], {} elements of {}. */",
                role.to_lowercase(),
                t.name.replace("*/", "* /"),
                dtype.map_or("unknown", |d| d.name()),
                shape.join(", "),
                elems,
                c_type(dtype)
            );
            let _ = writeln!(w, "#define {up}_{role}_{i}_NAME {}", c_string(&t.name));
            let _ = writeln!(w, "#define {up}_{role}_{i}_DTYPE {}", t.dtype);
            let _ = writeln!(w, "#define {up}_{role}_{i}_RANK {}", t.shape.len());
            let _ = writeln!(w, "#define {up}_{role}_{i}_ELEMENTS {elems}u");
            let _ = writeln!(
                w,
                "#define {up}_{role}_{i}_BYTES {}u",
                if t.is_dynamic() { t.byte_len() as u64 } else { elems * size }
            );
            let _ = writeln!(w, "typedef {} {name}_{}_{i}_t;", c_type(dtype), role.to_lowercase());
            let dims = if shape.is_empty() { "0".to_string() } else { shape.join(", ") };
            let _ = writeln!(w, "static const int64_t {name}_{}_{i}_shape[] = {{{dims}}};", role.to_lowercase());
            if t.is_dynamic() {
                let slots: Vec<String> = t.dim_slots.iter().map(i32::to_string).collect();
                let _ = writeln!(
                    w,
                    "/* Its shape is decided at run time: the shape above bounds each dim; dim d's size is \
                     dims[slots[d]] (slots[d] = -1: fixed), set by the caller before the run for an input, by \
                     the run for an output. Its buffer holds {up}_{role}_{i}_BYTES, its elements first. */"
                );
                let _ = writeln!(
                    w,
                    "static const int32_t {name}_{}_{i}_dim_slots[] = {{{}}};",
                    role.to_lowercase(),
                    slots.join(", ")
                );
            }
        }
    }
    let _ = writeln!(w, "\n/* Messages of the data checks: {name}_run returning k > 0 means check k - 1 failed. */");
    let _ = writeln!(w, "#define {up}_NUM_CHECKS {}", m.check_messages.len());
    let _ = writeln!(w, "static const char *const {name}_check_messages[] = {{");
    for msg in &m.check_messages {
        let _ = writeln!(w, "    {},", c_string(msg));
    }
    let _ = writeln!(w, "    0\n}};\n");
    let _ = writeln!(w, "extern const unsigned char {name}_weights[];");
    let _ = writeln!(w, "extern const uint32_t {name}_abi_version;");
    let _ = writeln!(w, "int32_t {name}_entry(const kiln_context *ctx);\n");
    let _ = writeln!(w, "/* Runs the model on the calling thread. inputs[i] and outputs[i] point at dense, row-major");
    let _ = writeln!(w, " * tensors of the dtypes and shapes above; arena at {up}_ARENA_BYTES bytes, 64-byte aligned.");
    let _ = writeln!(w, " * Returns 0, or k > 0 when check k - 1 failed ({name}_check_messages). */");
    let n_sym = m.symbols.len();
    if m.inputs.iter().chain(&m.outputs).any(|t| t.padded(n_sym)) {
        let _ = writeln!(
            w,
            "/* A tensor with a run-time dim on an axis other than its first (its _dim_slots) is laid out at the \
             strides of\n * its bound shape: the caller spreads such an input out to them, and reads such an \
             output there (ABI 1.6). */"
        );
    }
    let (dims_param, dims_arg) = if m.dim_slots > 0 {
        let _ = writeln!(
            w,
            "/* dims: {up}_NUM_DIMS int64_t: the inputs' run-time dims, set by the caller, within their \
             bounds, then where the run writes the sizes it decides. */"
        );
        (", int64_t *dims", "dims")
    } else {
        ("", "0")
    };
    let _ = writeln!(
        w,
        "static inline int32_t {name}_run(const void *const *inputs, void *const *outputs, void *arena{dims_param}) {{"
    );
    let _ = writeln!(
        w,
        "    kiln_context ctx = {{KILN_ABI_MAJOR, 0, inputs, outputs, arena, {name}_weights, 0, kiln_serial_for, {dims_arg}, 0, 0}};"
    );
    let _ = writeln!(w, "    return {name}_entry(&ctx);\n}}\n");
    let _ = writeln!(w, "#ifdef __cplusplus\n}}\n#endif\n\n#endif");
    h
}

/// The ABI in C (shared by every model's header): [`kiln_abi::Context`] and its callbacks.
const ABI_C: &str = r#"#ifndef KILN_ABI_H
#define KILN_ABI_H
#define KILN_ABI_MAJOR 1
typedef struct kiln_context kiln_context;
/* Runs one kernel over [start, end) of its outer parallel loop. */
typedef void (*kiln_task_fn)(const kiln_context *ctx, int64_t start, int64_t end);
/* Runs task over disjoint ranges covering [0, n), on any threads; returns when all are done. */
typedef void (*kiln_parallel_for_fn)(void *runtime, kiln_task_fn task, const kiln_context *ctx, int64_t n);
/* ABI 1.8: called before (end 0) and after (end 1) each instruction that does work, numbered from 0. */
typedef void (*kiln_profile_fn)(void *data, uint32_t event, uint32_t end);
struct kiln_context {
    uint32_t abi_version;
    uint32_t reserved;
    const void *const *inputs;
    void *const *outputs;
    void *arena;
    const void *weights;
    void *runtime;
    kiln_parallel_for_fn parallel_for;
    /* ABI 1.4: sizes set at run time (NUM_DIMS int64_t): the inputs' run-time dims (ABI 1.5, set by the
     * caller), then those the code decides; or 0 if none. */
    int64_t *dims;
    /* ABI 1.8: a profiling hook, or 0, and its first argument. */
    kiln_profile_fn profile;
    void *profile_data;
};
/* A parallel_for that runs everything on the calling thread. */
static inline void kiln_serial_for(void *runtime, kiln_task_fn task, const kiln_context *ctx, int64_t n) {
    (void)runtime;
    if (n > 0) task(ctx, 0, n);
}
#endif
"#;
