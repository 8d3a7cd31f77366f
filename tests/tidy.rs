//! Architecture invariants, checked as tests.

use std::process::Command;

/// The crates `krate` depends on (`cargo tree` with `edges`), one per line, checked to have
/// run and to list `krate`'s own dependency `expect`.
fn dependencies(krate: &str, edges: &str, expect: &str) -> String {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "-p", krate, "-e", edges, "--prefix", "none", "--offline"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(tree.contains(expect), "unexpected cargo tree output for {krate}: {tree}");
    tree
}

/// Fails if a line of `tree` (the dependencies of `krate`) starts with a banned name.
fn refuse(krate: &str, tree: &str, banned: &[&str], why: &str) {
    for line in tree.lines() {
        if let Some(b) = banned.iter().find(|b| line.starts_with(**b)) {
            panic!("{krate} depends on `{line}` ({b}); {why}");
        }
    }
}

/// The runtime never links LLVM or any compiler crate: a deployed program carries only the
/// runtime and an artifact.
#[test]
fn runtime_depends_on_neither_llvm_nor_the_compiler() {
    let tree = dependencies("kiln-runtime", "normal,build", "kiln-abi");
    let banned = ["inkwell", "llvm-sys", "kiln-ir", "kiln-onnx", "kiln-passes", "kiln-backend", "kiln v", "cudarc"];
    refuse("kiln-runtime", &tree, &banned, "the runtime must not link LLVM or the compiler");
}

/// The server is built on the runtime alone: its container carries no LLVM and no compiler.
#[test]
fn server_depends_on_neither_llvm_nor_the_compiler() {
    let tree = dependencies("kiln-serve", "normal,build", "kiln-runtime");
    let banned = ["inkwell", "llvm-sys", "kiln-ir", "kiln-onnx", "kiln-passes", "kiln-backend", "kiln v"];
    refuse("kiln-serve", &tree, &banned, "kiln-serve must not link LLVM or the compiler");
}

/// `ir/` knows nothing of ONNX, LLVM or the runtime.
#[test]
fn ir_depends_on_neither_onnx_nor_llvm() {
    let tree = dependencies("kiln-ir", "normal", "kiln-ir");
    refuse("kiln-ir", &tree, &["inkwell", "llvm-sys", "kiln-onnx", "kiln-runtime", "libloading"], "the IR is plain");
}

/// The passes and the importer depend on no backend and no LLVM: a backend plugs its steps
/// into the pipeline through `kiln_passes::pipeline::Backend`.
#[test]
fn passes_and_onnx_depend_on_no_backend() {
    for krate in ["kiln-passes", "kiln-onnx"] {
        let tree = dependencies(krate, "normal", "kiln-ir");
        let banned = ["kiln-backend", "inkwell", "llvm-sys", "cudarc", "kiln-runtime"];
        refuse(krate, &tree, &banned, "backends plug into the pipeline, not the other way round");
    }
}

/// The backends share LLVM code generation through `kiln-llvm-codegen`; the CUDA backend does
/// not reach into the CPU backend (its kernel cache, linker, thread pool).
#[test]
fn the_cuda_backend_does_not_depend_on_the_cpu_backend() {
    let tree = dependencies("kiln-backend-cuda", "normal", "kiln-llvm-codegen");
    refuse("kiln-backend-cuda", &tree, &["kiln-backend-cpu", "rayon", "tempfile"], "share backends/llvm instead");
}

/// Compiles `model` twice with `kiln compile`, the kernel cache off (so that the second
/// compilation cannot reuse the first one's objects), and requires byte-identical artifacts.
fn compiles_identically(model: &str, args: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut outs = Vec::new();
    for i in 0..2 {
        let p = dir.path().join(format!("m{i}.kiln"));
        let o = Command::new(kiln_tests::kiln_bin())
            .args(["compile", model, "-o", p.to_str().unwrap()])
            .args(args)
            .env("KILN_CACHE_DIR", "off")
            .current_dir(repo)
            .output()
            .unwrap();
        assert!(o.status.success(), "{model}: {}", String::from_utf8_lossy(&o.stderr));
        outs.push(std::fs::read(&p).unwrap());
    }
    assert!(outs[0] == outs[1], "{model} {args:?}: two compilations with the kernel cache off differ");
}

/// Each exported model compiles to the same bytes twice.
mod deterministic {
    macro_rules! determinism_tests {
        ($($name:ident),* $(,)?) => {$(
            #[test]
            fn $name() {
                let name = stringify!($name);
                let case = kiln_tests::load_exported(name).unwrap();
                let args: Vec<String> = case
                    .inputs
                    .iter()
                    .flat_map(|(n, t, _)| {
                        let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
                        ["--input-shape".to_string(), format!("{n}={}", dims.join("x"))]
                    })
                    .collect();
                super::compiles_identically(&format!("tests/models/{name}/model.onnx"), &args);
            }
        )*};
    }
    kiln_tests::with_exported_models!(determinism_tests!());

    /// The bundled example and a model with symbolic dims pinned.
    #[test]
    fn example_and_symbolic_fixture() {
        super::compiles_identically("examples/mlp/model.onnx", &["--input-shape".into(), "x=1x8".into()]);
        super::compiles_identically("tests/fixtures/symbolic.onnx", &["--input-shape".into(), "x=3x4".into()]);
    }

    /// Splitting across devices is deterministic too: GPU code, partitions and slots.
    #[test]
    fn partitioned_bert() {
        let shapes = ["input_ids=2x24", "attention_mask=2x24", "token_type_ids=2x24"];
        for target in ["cuda,cpu", "cpu:mem=512KiB,cpu:mem=512KiB"] {
            let mut args = vec!["--target".to_string(), target.to_string()];
            for s in shapes {
                args.extend(["--input-shape".to_string(), s.to_string()]);
            }
            super::compiles_identically("tests/models/bert_torch/model.onnx", &args);
        }
    }
}

/// The venv the tests ran with holds exactly the committed lock
/// (`scripts/python/requirements.lock`): every package at its pinned version, nothing else.
#[test]
fn venv_matches_the_python_lock() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = repo.join(".venv/bin/python");
    assert!(py.exists(), "{} missing: run `bash scripts/setup.sh`", py.display());
    let out = Command::new(&py).arg(repo.join("scripts/python/check_venv.py")).output().expect("run check_venv.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the venv differs from scripts/python/requirements.lock:\n{text}");
    eprintln!("{}", text.trim());
}

/// The README reports both conformance counts, as the lists have them: cases that pass with
/// every input fed at run time (`manifest.txt`, less the cases without inputs of
/// `no_inputs.txt`, counted apart) and cases that pass only with inputs compiled in
/// (`frozen.txt`), out of every node test.
#[test]
fn readme_reports_both_conformance_counts() {
    let count = |text: &str| kiln_tests::listed_cases(text).count();
    let run_time = count(include_str!("conformance/manifest.txt")) - count(include_str!("conformance/no_inputs.txt"));
    let frozen = count(include_str!("conformance/frozen.txt"));
    let total = count(include_str!("conformance/node_tests.txt"));
    let readme = include_str!("../README.md");
    let fmt = |n: usize| {
        let s = n.to_string();
        if n >= 1000 {
            format!("{},{}", &s[..s.len() - 3], &s[s.len() - 3..])
        } else {
            s
        }
    };
    let want_run_time = format!("{} of {}", fmt(run_time), fmt(total));
    let want_frozen = format!("{} more", fmt(frozen));
    assert!(
        readme.contains(&want_run_time) && readme.contains(&want_frozen),
        "README.md must report `{want_run_time}` (every input fed at run time) and `{want_frozen}` (inputs compiled in)"
    );
}

/// Each registered op's first and newest opset versions are the ones the pinned `onnx`
/// package defines (its schemas with history), so the importer's "first appears in opset N"
/// refusal and the registry's record follow ONNX.
#[test]
fn registry_opsets_match_onnx() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = repo.join(".venv/bin/python");
    assert!(py.exists(), "{} missing: run `bash scripts/setup.sh`", py.display());
    let script = "import onnx.defs\n\
        for s in onnx.defs.get_all_schemas_with_history():\n    \
            print(s.domain if s.domain != 'ai.onnx' else '', s.name, s.since_version)";
    let out = Command::new(&py).args(["-c", script]).output().expect("run python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut versions: std::collections::HashMap<(String, String), Vec<u16>> = Default::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (domain, name, v) = if f.len() == 3 { (f[0], f[1], f[2]) } else { ("", f[f.len() - 2], f[f.len() - 1]) };
        versions.entry((domain.into(), name.into())).or_default().push(v.parse().expect("a version"));
    }
    let mut wrong = Vec::new();
    for (domain, name, first, newest) in kiln_onnx::registered_opsets() {
        let v = versions.get(&(domain.to_string(), name.to_string()));
        let want = v.map(|v| (*v.iter().min().unwrap(), *v.iter().max().unwrap()));
        if want != Some((first, newest)) {
            wrong.push(format!("{domain}.{name}: registry ({first}, {newest}), onnx {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "opsets in crates/onnx/src/ops/registry.rs differ from onnx:\n{}", wrong.join("\n"));
}
