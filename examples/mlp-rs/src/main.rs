//! Runs the MLP compiled into this binary by `kiln-build` (see build.rs).
//!
//! ```text
//! kiln-example-mlp [INPUT.npy [OUTPUT.npy]]
//! ```
//!
//! The input is `examples/mlp/input.npy` by default: f32 [1, 8]. The output `y` (f32 [1, 4])
//! is printed and, when OUTPUT is given, written as .npy.

use std::process::ExitCode;

// The binding kiln-build generated: `Mlp`, `MlpOutputs`.
include!(concat!(env!("OUT_DIR"), "/mlp.rs"));

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let input =
        args.first().cloned().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../mlp/input.npy").into());
    let x: Vec<f32> = npyz::NpyFile::new(std::fs::File::open(&input)?)?.into_vec()?;
    // The binding takes `x` as &[f32; 8]: a wrong element count is an error here, not a
    // wrong answer later.
    let x: &[f32; 8] =
        x.as_slice().try_into().map_err(|_| format!("{input}: {} values, the model takes 8", x.len()))?;
    let model = Mlp::new()?;
    let out = model.run(x)?;
    println!("y {:?}: {:?}", Mlp::Y_SHAPE, out.y);
    if let Some(path) = args.get(1) {
        use npyz::WriterBuilder;
        let f = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&Mlp::Y_SHAPE.map(|d| d as u64))
            .writer(f)
            .begin_nd()?;
        w.extend(out.y.iter().copied())?;
        w.finish()?;
    }
    Ok(())
}
