//! The source key: what an artifact depends on, hashed, so that compiling an unchanged model
//! again can keep the file (`Compiler::compile_file`).

use std::path::Path;

use crate::{Compiler, Error};

/// A hash of `bytes` (16 bytes), in 8 MiB pieces hashed in parallel.
fn content_hash(bytes: &[u8]) -> [u8; 16] {
    use rayon::prelude::*;
    let pieces: Vec<u128> = bytes.par_chunks(8 << 20).map(xxhash_rust::xxh3::xxh3_128).collect();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(bytes.len() as u64).to_le_bytes());
    for p in pieces {
        h.update(&p.to_le_bytes());
    }
    h.digest128().to_le_bytes()
}
impl Compiler {
    /// The [`Compiler::source_key`] of compiling the ONNX file `model`, and the files it was
    /// read from (the model and its external data files), without compiling it.
    pub fn source_key_of(&self, model: impl AsRef<Path>) -> Result<(String, Vec<std::path::PathBuf>), Error> {
        let model = model.as_ref();
        let (_, sources) = kiln_onnx::import_path_with_sources(model, &self.import_opts(), &self.opts.frozen_inputs)?;
        let dir = model.parent().unwrap_or(Path::new(""));
        let files = std::iter::once(model.to_path_buf()).chain(sources.external.iter().map(|(n, _)| dir.join(n)));
        Ok((self.source_key(&sources), files.collect()))
    }

    /// What an artifact compiled from `sources` with these options depends on, hashed (32
    /// hex digits): the compiler (its sources and dependencies, LLVM's version), the target,
    /// the options that change the output, and the bytes of the model and of its external
    /// data files.
    pub fn source_key(&self, sources: &kiln_onnx::Sources) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut put = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        put(env!("KILN_COMPILER_FINGERPRINT").as_bytes());
        put(kiln_backend_cpu::cache::toolchain_id().as_bytes());
        put(format!("{:?}", self.opts.target).as_bytes());
        put(&[self.opts.external_weights as u8]);
        put(self.devices_text().as_bytes());
        put(self.opts.cuda.arch.as_bytes());
        let mut shapes: Vec<_> = self.opts.input_shapes.iter().collect();
        shapes.sort();
        put(format!("{shapes:?}").as_bytes());
        let mut frozen: Vec<_> = self.opts.frozen_inputs.iter().collect();
        frozen.sort_by_key(|(name, _)| name.as_str());
        for (name, t) in frozen {
            put(format!("{name} {:?}", t.ty).as_bytes());
            put(&content_hash(&t.data));
        }
        let mut values: Vec<_> = self.opts.value_inputs.iter().map(|(n, v)| format!("{n} {v:?}")).collect();
        values.sort();
        put(values.join("\n").as_bytes());
        put(format!("max_elements {:?}", self.opts.max_elements).as_bytes());
        put(format!("dims {:?}", self.opts.dims).as_bytes());
        put(&content_hash(&sources.model));
        for (name, bytes) in &sources.external {
            put(name.as_bytes());
            put(&content_hash(bytes));
        }
        format!("{:032x}", h.digest128())
    }
}
