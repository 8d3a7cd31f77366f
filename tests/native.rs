//! Static libraries, objects and C headers (`kiln compile --emit staticlib|object|header`):
//! the C example (`examples/c/main.c`) links them, runs the bundled MLP and must give what
//! `kiln run` gives for the same input; built for aarch64, it runs under qemu-user and must
//! match the host. scripts/setup.sh installs the cross compiler and qemu.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/setup.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn kiln(args: &[&str]) -> String {
    run(Command::new(kiln_tests::kiln_bin()).args(args).current_dir(repo()))
}

const MODEL: &str = "examples/mlp/model.onnx";
const INPUT: &str = "examples/mlp/input.npy";

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// `kiln run`'s output for the example's input.
fn kiln_run_output(dir: &Path) -> Vec<f32> {
    let out = dir.join("kiln-run");
    kiln(&["run", MODEL, "--input", &format!("x={INPUT}"), "--output-dir", out.to_str().unwrap()]);
    npyz::NpyFile::new(&std::fs::read(out.join("y.npy")).unwrap()[..]).unwrap().into_vec().unwrap()
}

/// Compiles the example for `target` as `kind` (`staticlib` or `object`) plus its header into
/// `dir`, links `examples/c/main.c` with `cc` (plus `cc_args`), runs it (through `runner`
/// when given) and returns its output.
fn c_example(dir: &Path, target: &str, kind: &str, cc: &str, cc_args: &[&str], runner: Option<&str>) -> Vec<f32> {
    let code = match kind {
        "staticlib" => dir.join("libmlp.a"),
        _ => dir.join("mlp.o"),
    };
    let header = dir.join("mlp.h");
    kiln(&["compile", MODEL, "--target", target, "--emit", kind, "--name", "mlp", "-o", code.to_str().unwrap()]);
    kiln(&["compile", MODEL, "--target", target, "--emit", "header", "--name", "mlp", "-o", header.to_str().unwrap()]);
    let exe = dir.join("mlp");
    let mut link = Command::new(cc);
    link.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-I"]).arg(dir).arg(repo().join("examples/c/main.c"));
    if kind == "staticlib" {
        link.arg("-L").arg(dir).arg("-lmlp");
    } else {
        link.arg(&code);
    }
    link.args(["-lm", "-o"]).arg(&exe).args(cc_args);
    run(&mut link);
    let out = dir.join("y.bin");
    let mut cmd = match runner {
        Some(r) => {
            let mut c = Command::new(r);
            c.arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    run(cmd.arg(repo().join(INPUT)).arg(&out));
    f32s(&std::fs::read(&out).unwrap())
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, want {}", got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}: element {i} is {g}, want {w}");
    }
}

#[test]
fn c_program_linking_the_static_library_matches_kiln_run() {
    let d = tempfile::tempdir().unwrap();
    let want = kiln_run_output(d.path());
    let got = c_example(d.path(), "cpu", "staticlib", "cc", &[], None);
    // The same kernels, run on one thread instead of the pool: the same values.
    assert_close(&got, &want, 1e-6, "static library");
}

#[test]
fn c_program_linking_the_object_matches_kiln_run() {
    let d = tempfile::tempdir().unwrap();
    let want = kiln_run_output(d.path());
    let got = c_example(d.path(), "cpu", "object", "cc", &[], None);
    assert_close(&got, &want, 1e-6, "object");
}

#[test]
fn aarch64_static_library_runs_under_qemu_and_matches_the_host() {
    let d = tempfile::tempdir().unwrap();
    let want = kiln_run_output(d.path());
    let got = c_example(
        d.path(),
        "aarch64-unknown-linux-gnu",
        "staticlib",
        "aarch64-linux-gnu-gcc",
        &["-static"],
        Some("qemu-aarch64"),
    );
    // NEON code (4-wide vectors, other summation order in the products) against AVX.
    assert_close(&got, &want, 1e-5, "aarch64 under qemu");
}

#[test]
fn header_declares_the_model_tensors_and_escapes_names() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path().join("odd.h");
    kiln(&[
        "compile",
        "tests/fixtures/odd_names.onnx",
        "--emit",
        "header",
        "--name",
        "odd-names",
        "-o",
        h.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&h).unwrap();
    // The C name is sanitized; the tensor names keep their characters, escaped.
    assert!(text.contains("int32_t odd_names_entry(const kiln_context *ctx);"), "{text}");
    assert!(text.contains("#define ODD_NAMES_INPUT_0_NAME \"in put\""), "{text}");
    assert!(text.contains("#define ODD_NAMES_OUTPUT_1_NAME \"mask out\""), "{text}");
    assert!(text.contains("#define ODD_NAMES_OUTPUT_1_DTYPE 9"), "{text}");
    // It compiles as C (and every declaration is well formed) on its own.
    let c = d.path().join("use.c");
    std::fs::write(&c, "#include \"odd.h\"\nint main(void) { return ODD_NAMES_NUM_INPUTS == 1 ? 0 : 1; }\n").unwrap();
    run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-I"])
        .arg(d.path())
        .arg(&c));
}

/// Builds the example crate (`examples/mlp-rs`, which compiles the MLP in its build script
/// with kiln-build) and returns the build script's OUT_DIR.
fn build_example() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--locked", "-p", "kiln-example-mlp", "--message-format=json"])
        .current_dir(repo())
        .output()
        .expect("run cargo");
    assert!(out.status.success(), "building the example crate failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "build-script-executed" && m["package_id"].as_str().unwrap_or("").contains("mlp-rs"))
        .find_map(|m| m["out_dir"].as_str().map(PathBuf::from))
        .expect("cargo reports the example's build script")
}

fn modified(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).modified().unwrap()
}

#[test]
fn example_crate_runs_the_model_through_its_typed_binding_and_caches_it() {
    let out_dir = build_example();
    let lib = out_dir.join("libkiln_mlp.a");
    let status = out_dir.join("kiln-build-status");

    // The example's output is `kiln run`'s.
    let d = tempfile::tempdir().unwrap();
    let want = kiln_run_output(d.path());
    let exe = repo().join("target/release/kiln-example-mlp");
    let y = d.path().join("y.npy");
    run(Command::new(&exe).arg(repo().join(INPUT)).arg(&y));
    let got: Vec<f32> = npyz::NpyFile::new(&std::fs::read(&y).unwrap()[..]).unwrap().into_vec().unwrap();
    assert_close(&got, &want, 1e-6, "example crate");

    // Rebuilding with nothing changed: cargo does not even run the build script.
    let (lib_time, status_time) = (modified(&lib), modified(&status));
    assert_eq!(build_example(), out_dir);
    assert_eq!((modified(&lib), modified(&status)), (lib_time, status_time), "nothing should be rebuilt");

    // The model touched but unchanged: the build script runs, kiln-build finds the library
    // up to date by its content hash and does not compile.
    let model = std::fs::File::options().append(true).open(repo().join(MODEL)).unwrap();
    model.set_modified(std::time::SystemTime::now()).unwrap();
    assert_eq!(build_example(), out_dir);
    assert!(modified(&status) > status_time, "the build script should have run again");
    assert_eq!(std::fs::read_to_string(&status).unwrap(), "up to date");
    assert_eq!(modified(&lib), lib_time, "the model should not have been compiled again");
}

#[test]
fn kiln_artifact_for_another_machine_is_built_and_refused_here_clearly() {
    let d = tempfile::tempdir().unwrap();
    let art = d.path().join("a64.kiln");
    kiln(&["compile", MODEL, "--target", "aarch64-unknown-linux-gnu", "-o", art.to_str().unwrap()]);
    let out = Command::new(kiln_tests::kiln_bin())
        .args(["run", art.to_str().unwrap(), "--input", &format!("x={INPUT}"), "--output-dir"])
        .arg(d.path().join("out"))
        .current_dir(repo())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("compiled for `aarch64-unknown-linux-gnu`") && err.contains("cannot run"), "{err}");
    // A triple LLVM does not know is named before anything is compiled.
    let out = Command::new(kiln_tests::kiln_bin())
        .args(["compile", MODEL, "--target", "nonsense-vendor-os", "-o"])
        .arg(d.path().join("x.kiln"))
        .current_dir(repo())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nonsense-vendor-os"), "{err}");
}
