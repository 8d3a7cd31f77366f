//! Compiles the bundled MLP into this crate: a static library in OUT_DIR and the typed
//! binding `mlp.rs` that src/main.rs includes.

fn main() {
    let built = kiln_build::Model::new("../mlp/model.onnx").name("mlp").input_shape("x", [1, 8]).compile();
    match built {
        Ok(b) => {
            // What the tests read to see whether the model was compiled or taken from OUT_DIR.
            let status = if b.compiled { "compiled" } else { "up to date" };
            std::fs::write(b.library.with_file_name("kiln-build-status"), status).expect("writing OUT_DIR");
        }
        Err(e) => panic!("{e}"),
    }
}
