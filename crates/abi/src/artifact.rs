//! The `.kiln` container: one file holding the manifest, the code and the weights.
//!
//! ```text
//! offset  size  field
//!      0     8  magic  "KILNART\0"
//!      8     4  ABI major (LE u32)
//!     12     4  ABI minor
//!     16    16  manifest section (offset, length; LE u64 each)
//!     32    16  code section     (a shared library for the manifest's target)
//!     48    16  weights section  (64-byte aligned constant data)
//!     64     8  xxh3-64 checksum of bytes [0, 64) and [128, end)
//!     72    56  zero
//!    128     …  sections, each starting at a multiple of 64
//! ```

use prost::Message;
use xxhash_rust::xxh3::Xxh3;

use crate::manifest::Manifest;
use crate::{ABI_MAJOR, ABI_MINOR};

pub const MAGIC: &[u8; 8] = b"KILNART\0";
pub const HEADER_LEN: usize = 128;
pub const SECTION_ALIGN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("not a Kiln artifact (bad magic bytes; is this an ONNX model or some other file?)")]
    BadMagic,
    #[error("artifact is truncated: {len} bytes, header needs at least {HEADER_LEN}")]
    TooShort { len: usize },
    #[error("artifact has ABI version {major}.{minor}, this runtime supports {ABI_MAJOR}.x; recompile the model with a matching kiln")]
    UnsupportedVersion { major: u32, minor: u32 },
    #[error("artifact section `{section}` (offset {offset}, length {len}) lies outside the {file_len}-byte file: the file is truncated or damaged")]
    SectionOutOfBounds { section: &'static str, offset: u64, len: u64, file_len: usize },
    #[error("artifact checksum mismatch (stored {stored:#018x}, computed {computed:#018x}): the file is damaged")]
    Checksum { stored: u64, computed: u64 },
    #[error("artifact manifest cannot be decoded: {0}")]
    Manifest(#[from] prost::DecodeError),
    #[error("weights file `{name}`: {why}")]
    WeightsFile { name: String, why: String },
}

/// The sections of a parsed artifact, borrowed from the file's bytes.
#[derive(Debug)]
pub struct Sections<'a> {
    pub manifest: Manifest,
    pub code: &'a [u8],
    pub weights: &'a [u8],
    /// Byte offset of the weight section in the file (a multiple of 64).
    pub weights_offset: usize,
}

fn align_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

fn checksum(bytes: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&bytes[..64]);
    h.update(&bytes[HEADER_LEN..]);
    h.digest()
}

/// A section given as pieces: `(offset, bytes)` in increasing, non-overlapping order inside
/// `len` bytes, the gaps zero (the weights, written straight from the constants that hold
/// them instead of being copied into one buffer first).
#[derive(Clone, Copy, Debug)]
pub struct Pieces<'a> {
    pub pieces: &'a [(u64, &'a [u8])],
    pub len: u64,
}

impl<'a> Pieces<'a> {
    /// Its bytes in order, gaps included, as slices.
    fn for_each(&self, emit: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        let mut at = 0u64;
        for &(off, data) in self.pieces {
            assert!(off >= at && off + data.len() as u64 <= self.len, "pieces out of order or out of bounds");
            zeros(off - at, emit)?;
            emit(data)?;
            at = off + data.len() as u64;
        }
        zeros(self.len - at, emit)
    }
}

fn zeros(mut n: u64, emit: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        emit(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Serializes an artifact. Deterministic: the same inputs give the same bytes.
pub fn write(manifest: &Manifest, code: &[u8], weights: &[u8]) -> Vec<u8> {
    let pieces = [(0, weights)];
    let weights = Pieces { pieces: &pieces, len: weights.len() as u64 };
    let mut out = Vec::with_capacity(HEADER_LEN + code.len() + weights.len as usize + 4096);
    write_to(&mut out, manifest, code, weights).expect("writing to memory cannot fail");
    out
}

/// Serializes an artifact into `w` without assembling it in memory: the checksum is computed
/// over the pieces first, then header and sections are written in order. Gives the bytes of
/// [`write`].
pub fn write_to(w: &mut dyn std::io::Write, manifest: &Manifest, code: &[u8], weights: Pieces) -> std::io::Result<()> {
    let (mut header, body) = layout(manifest, code, weights);
    let mut h = Xxh3::new();
    h.update(&header[..64]);
    body.emit(&mut |b| {
        h.update(b);
        Ok(())
    })?;
    header[64..72].copy_from_slice(&h.digest().to_le_bytes());
    w.write_all(&header)?;
    body.emit(&mut |b| w.write_all(b))
}

/// [`write_to`] into a file (anything seekable): the sections are written while another
/// thread hashes them, and the header last, once the checksum is known. Gives the same
/// bytes.
pub fn write_seekable<W: std::io::Write + std::io::Seek>(
    w: &mut W,
    manifest: &Manifest,
    code: &[u8],
    weights: Pieces,
) -> std::io::Result<()> {
    let (mut header, body) = layout(manifest, code, weights);
    let start = w.stream_position()?;
    w.write_all(&[0u8; HEADER_LEN])?;
    // The checksum on a second thread while this one writes: hashing a model's weights takes
    // about as long as handing them to the kernel.
    let digest = std::thread::scope(|s| {
        let hasher = s.spawn(|| {
            let mut h = Xxh3::new();
            h.update(&header[..64]);
            body.emit(&mut |b| {
                h.update(b);
                Ok(())
            })
            .map(|()| h.digest())
        });
        let written = body.emit(&mut |b| w.write_all(b));
        let digest = hasher.join().expect("hashing does not panic");
        written.and(digest)
    })?;
    header[64..72].copy_from_slice(&digest.to_le_bytes());
    let end = w.stream_position()?;
    w.seek(std::io::SeekFrom::Start(start))?;
    w.write_all(&header)?;
    w.seek(std::io::SeekFrom::Start(end))?;
    Ok(())
}

/// Everything after the header, in order: padding, manifest, padding, code, padding, weights.
struct Body<'a> {
    sections: [(u64, u64); 3],
    manifest: Vec<u8>,
    code: &'a [u8],
    weights: Pieces<'a>,
}

impl Body<'_> {
    fn emit(&self, emit: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        let mut end = HEADER_LEN as u64;
        for (i, &(off, len)) in self.sections.iter().enumerate() {
            zeros(off - end, emit)?;
            match i {
                0 => emit(&self.manifest)?,
                1 => emit(self.code)?,
                _ => self.weights.for_each(emit)?,
            }
            end = off + len;
        }
        Ok(())
    }
}

/// The header (checksum left zero) and the body of an artifact.
fn layout<'a>(manifest: &Manifest, code: &'a [u8], weights: Pieces<'a>) -> ([u8; HEADER_LEN], Body<'a>) {
    let manifest_bytes = manifest.encode_to_vec();
    let sections: [(u64, u64); 3] = {
        let mut end = HEADER_LEN;
        [manifest_bytes.len() as u64, code.len() as u64, weights.len].map(|len| {
            let off = align_up(end, SECTION_ALIGN);
            end = off + len as usize;
            (off as u64, len)
        })
    };
    let mut header = [0u8; HEADER_LEN];
    header[0..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&ABI_MAJOR.to_le_bytes());
    header[12..16].copy_from_slice(&ABI_MINOR.to_le_bytes());
    for (i, (off, len)) in sections.into_iter().enumerate() {
        header[16 + 16 * i..24 + 16 * i].copy_from_slice(&off.to_le_bytes());
        header[24 + 16 * i..32 + 16 * i].copy_from_slice(&len.to_le_bytes());
    }
    (header, Body { sections, manifest: manifest_bytes, code, weights })
}

/// Magic bytes of a weights file (the weights of an artifact kept next to it).
pub const WEIGHTS_MAGIC: &[u8; 8] = b"KILNWTS\0";

/// Writes a weights file: the magic, the ABI major (LE u32), 4 zero bytes, the weights'
/// length (LE u64), zeros up to byte 64, then the weights (64-byte aligned in the file, so
/// in a mapping of it). Returns the weights' xxh3-64, which the artifact's manifest records.
pub fn write_weights_file(w: &mut dyn std::io::Write, weights: Pieces) -> std::io::Result<u64> {
    let mut header = [0u8; SECTION_ALIGN];
    header[..8].copy_from_slice(WEIGHTS_MAGIC);
    header[8..12].copy_from_slice(&ABI_MAJOR.to_le_bytes());
    header[16..24].copy_from_slice(&weights.len.to_le_bytes());
    w.write_all(&header)?;
    let mut h = Xxh3::new();
    weights.for_each(&mut |b| {
        for c in b.chunks(1 << 20) {
            h.update(c);
            w.write_all(c)?;
        }
        Ok(())
    })?;
    Ok(h.digest())
}

/// The weights in a weights file's bytes, checked against what the artifact's manifest
/// says of them (length and checksum).
pub fn read_weights_file<'a>(bytes: &'a [u8], manifest: &Manifest) -> Result<&'a [u8], ArtifactError> {
    let name = &manifest.weights_file;
    let bad = |why: String| ArtifactError::WeightsFile { name: name.clone(), why };
    if bytes.len() < SECTION_ALIGN || &bytes[..8] != WEIGHTS_MAGIC {
        return Err(bad("not a Kiln weights file (bad magic bytes or too short)".into()));
    }
    let major = u32_at(bytes, 8);
    if major != ABI_MAJOR {
        return Err(bad(format!("ABI version {major}, expected {ABI_MAJOR}")));
    }
    let len = u64_at(bytes, 16);
    if len != manifest.weights_len || (bytes.len() - SECTION_ALIGN) as u64 != len {
        return Err(bad(format!(
            "{} bytes of weights (header says {len}), the artifact expects {}: truncated, or from another compilation",
            bytes.len() - SECTION_ALIGN,
            manifest.weights_len
        )));
    }
    let weights = &bytes[SECTION_ALIGN..];
    let computed = xxhash_rust::xxh3::xxh3_64(weights);
    if computed != manifest.weights_checksum {
        return Err(bad(format!(
            "checksum {computed:#018x}, the artifact expects {:#018x}: damaged, or from another compilation",
            manifest.weights_checksum
        )));
    }
    Ok(weights)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses and checks an artifact: magic, version, section bounds, checksum, manifest.
pub fn read(bytes: &[u8]) -> Result<Sections<'_>, ArtifactError> {
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(ArtifactError::BadMagic);
    }
    if bytes.len() < HEADER_LEN {
        return Err(ArtifactError::TooShort { len: bytes.len() });
    }
    let (major, minor) = (u32_at(bytes, 8), u32_at(bytes, 12));
    if major != ABI_MAJOR {
        return Err(ArtifactError::UnsupportedVersion { major, minor });
    }
    let section = |i: usize, name: &'static str| -> Result<(usize, usize), ArtifactError> {
        let off = u64_at(bytes, 16 + 16 * i);
        let len = u64_at(bytes, 24 + 16 * i);
        match off.checked_add(len) {
            Some(end) if end <= bytes.len() as u64 && off >= HEADER_LEN as u64 => Ok((off as usize, len as usize)),
            _ => Err(ArtifactError::SectionOutOfBounds { section: name, offset: off, len, file_len: bytes.len() }),
        }
    };
    let m = section(0, "manifest")?;
    let c = section(1, "code")?;
    let w = section(2, "weights")?;
    let stored = u64_at(bytes, 64);
    let computed = checksum(bytes);
    if stored != computed {
        return Err(ArtifactError::Checksum { stored, computed });
    }
    let manifest = Manifest::decode(&bytes[m.0..m.0 + m.1])?;
    Ok(Sections { manifest, code: &bytes[c.0..c.0 + c.1], weights: &bytes[w.0..w.0 + w.1], weights_offset: w.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let m = Manifest { abi_major: ABI_MAJOR, model_name: "m".into(), arena_bytes: 64, ..Default::default() };
        write(&m, b"code bytes", &[1, 2, 3, 4])
    }

    #[test]
    fn seekable_writer_gives_the_same_bytes() {
        let m = Manifest { abi_major: ABI_MAJOR, model_name: "m".into(), arena_bytes: 64, ..Default::default() };
        let (a, b) = (vec![7u8; 3 << 20], vec![9u8; 100]);
        let pieces = [(64, &a[..]), ((4 << 20) + 3, &b[..])];
        let weights = Pieces { pieces: &pieces, len: 5 << 20 };
        let mut one = Vec::new();
        write_to(&mut one, &m, b"code", weights).unwrap();
        // Written after some other bytes, as into a file opened at an offset.
        let mut two = std::io::Cursor::new(b"prefix".to_vec());
        two.set_position(6);
        write_seekable(&mut two, &m, b"code", weights).unwrap();
        assert_eq!(two.position() as usize, 6 + one.len());
        assert_eq!(&two.get_ref()[6..], &one[..]);
        assert!(read(&one).is_ok());
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let s = read(&bytes).unwrap();
        assert_eq!(s.code, b"code bytes");
        assert_eq!(s.weights, &[1, 2, 3, 4]);
        assert_eq!(s.weights_offset % SECTION_ALIGN, 0);
        assert_eq!(s.manifest.model_name, "m");
        assert_eq!(s.manifest.arena_bytes, 64);
    }

    #[test]
    fn weights_written_as_pieces_read_back_whole() {
        let m = Manifest { abi_major: ABI_MAJOR, model_name: "m".into(), ..Default::default() };
        // Two pieces with a gap between them and one after (longer than the zero block).
        let (a, b) = (vec![7u8; 100], vec![9u8; 5000]);
        let pieces = [(0, &a[..]), (192, &b[..])];
        let mut streamed = Vec::new();
        write_to(&mut streamed, &m, b"code", Pieces { pieces: &pieces, len: 192 + 5000 + 6000 }).unwrap();
        let mut whole = vec![0u8; 192 + 5000 + 6000];
        whole[..100].copy_from_slice(&a);
        whole[192..5192].copy_from_slice(&b);
        assert_eq!(streamed, write(&m, b"code", &whole));
        assert_eq!(read(&streamed).unwrap().weights, &whole[..]);
    }

    #[test]
    fn damaged_byte_is_detected() {
        let mut bytes = sample();
        let n = bytes.len();
        bytes[n - 2] ^= 0x40;
        assert!(matches!(read(&bytes), Err(ArtifactError::Checksum { .. })));
    }

    #[test]
    fn truncated_is_detected() {
        let bytes = sample();
        assert!(matches!(read(&bytes[..bytes.len() - 3]), Err(ArtifactError::SectionOutOfBounds { .. })));
        assert!(matches!(read(&bytes[..40]), Err(ArtifactError::TooShort { .. })));
    }

    #[test]
    fn unknown_major_is_refused() {
        let mut bytes = sample();
        bytes[8..12].copy_from_slice(&(ABI_MAJOR + 1).to_le_bytes());
        assert!(matches!(read(&bytes), Err(ArtifactError::UnsupportedVersion { .. })));
    }
}
