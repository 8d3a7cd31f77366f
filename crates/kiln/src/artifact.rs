//! The compiled artifact in memory, and writing it: whole or not at all, with its weights
//! inside or in a file of their own; recognising an output that already holds a compilation.

use std::path::Path;

use kiln_abi::manifest::Manifest;
use kiln_passes::memory::{MemoryReport, WeightSection};

/// A compiled model: the `.kiln` file's parts and what planning found. The weights are the
/// model's constants themselves (shared with the imported file), so writing the artifact
/// ([`Artifact::write_to`], [`Artifact::save`]) streams them instead of copying them first.
#[derive(Debug)]
pub struct Artifact {
    pub manifest: Manifest,
    /// The shared library for the manifest's target.
    pub code: Vec<u8>,
    pub weights: WeightSection,
    pub memory: MemoryReport,
    /// How long each phase of the compilation took, in order (`kiln compile --timings`).
    pub timings: Vec<(&'static str, std::time::Duration)>,
    /// [`Artifact::save`] writes the weights to a file of their own
    /// ([`CompileOptions::external_weights`]).
    pub external_weights: bool,
}

impl Artifact {
    /// The `.kiln` file's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to memory cannot fail");
        out
    }

    /// Writes the `.kiln` file into `w`.
    pub fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        let pieces = self.weights.slices();
        let weights = kiln_abi::artifact::Pieces { pieces: &pieces, len: self.weights.len };
        kiln_abi::artifact::write_to(w, &self.manifest, &self.code, weights)
    }

    /// Writes the `.kiln` file at `path`: into a temporary file next to it, renamed over
    /// `path` once complete, so that a failure never leaves a truncated artifact behind.
    ///
    /// With [`Artifact::external_weights`], the weights go first into `<path>.weights` (the
    /// file name recorded in the manifest, with the weights' length and checksum) and the
    /// artifact's own weight section is empty. [`Artifact::bytes`] always gives the whole
    /// artifact, weights inside.
    pub fn save(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        self.save_with_manifest(path.as_ref()).map(|_| ())
    }

    /// [`Artifact::save`], returning the manifest written (which names the weights file).
    pub(crate) fn save_with_manifest(&self, path: &Path) -> std::io::Result<Manifest> {
        let pieces = self.weights.slices();
        let weights = kiln_abi::artifact::Pieces { pieces: &pieces, len: self.weights.len };
        if !self.external_weights {
            write_file(path, |w| kiln_abi::artifact::write_seekable(w, &self.manifest, &self.code, weights))?;
            return Ok(self.manifest.clone());
        }
        let name = format!("{}.weights", path.file_name().unwrap_or_default().to_string_lossy());
        let mut checksum = 0;
        write_file(&path.with_file_name(&name), |w| {
            checksum = kiln_abi::artifact::write_weights_file(w, weights)?;
            Ok(())
        })?;
        let manifest = Manifest {
            weights_file: name,
            weights_len: self.weights.len,
            weights_checksum: checksum,
            ..self.manifest.clone()
        };
        let none = kiln_abi::artifact::Pieces { pieces: &[], len: 0 };
        write_file(path, |w| kiln_abi::artifact::write_seekable(w, &manifest, &self.code, none))?;
        Ok(manifest)
    }
}

/// Writes a file through `write`: into a temporary file next to `path`, renamed over it once
/// complete, so that a failure never leaves a truncated file behind.
pub(crate) fn write_file(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        let msg = format!("the folder `{}` does not exist", dir.display());
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, msg));
    }
    let mut builder = tempfile::Builder::new();
    builder.prefix(".kiln-");
    // A new file's usual mode (0o666 less the umask), not a temporary file's 0o600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir)?;
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        write(&mut w)?;
        std::io::Write::flush(&mut w)?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// What [`Compiler::compile_file`] did.
#[derive(Debug)]
pub struct Compiled {
    /// The output already held this compilation's artifact and was kept.
    pub up_to_date: bool,
    /// The artifact file's size in bytes.
    pub file_len: u64,
    /// How long each phase took, in order.
    pub timings: Vec<(&'static str, std::time::Duration)>,
    /// The artifact's manifest: inputs, outputs, target, arena size, [`Compiler::source_key`]
    /// of this compilation, ….
    pub manifest: Manifest,
}

/// The manifest of the sound artifact at `path`, if there is one (checksum verified).
pub(crate) struct Existing {
    pub(crate) manifest: Manifest,
    pub(crate) file_len: u64,
}

pub(crate) fn existing_artifact(path: &Path) -> Option<Existing> {
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: read-only mapping, read once here; a file changed meanwhile fails its checksum.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let sections = kiln_abi::artifact::read(&map).ok()?;
    if !sections.manifest.weights_file.is_empty() {
        let dir = path.parent().unwrap_or(Path::new(""));
        kiln_runtime::check_weights_file(dir, &sections.manifest).ok()?;
    }
    Some(Existing { manifest: sections.manifest, file_len: map.len() as u64 })
}

/// Sets a file's modification time to now, as if it had just been written (make-like build
/// systems compare it with the model's).
pub(crate) fn touch(path: &Path) -> std::io::Result<()> {
    std::fs::File::options().append(true).open(path)?.set_modified(std::time::SystemTime::now())
}
