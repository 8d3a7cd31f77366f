//! A loaded manifest checked for what the runtime relies on: code this CPU can run, dtypes it
//! knows, run-time dims within their slots, derived dims that follow their base.

use kiln_abi::manifest::Manifest;
use kiln_abi::{DTypeCode, ABI_MAJOR};

use crate::RuntimeError;

/// The manifest's ABI version, CPU features, run-time dims, derived dims and dtypes, checked
/// at load (from an artifact file or bytes, and statically linked).
pub(crate) fn check_manifest(manifest: &Manifest) -> Result<(), RuntimeError> {
    let lacking = crate::features::missing(&manifest.target_features, &crate::features::host_has);
    if !lacking.is_empty() {
        return Err(RuntimeError::MissingFeatures { cpu: manifest.target_cpu.clone(), missing: lacking.join(", ") });
    }
    if manifest.abi_minor > kiln_abi::ABI_MINOR {
        return Err(RuntimeError::Manifest(format!(
            "the artifact needs ABI {}.{}, this runtime has {ABI_MAJOR}.{}: use a newer runtime",
            manifest.abi_major,
            manifest.abi_minor,
            kiln_abi::ABI_MINOR
        )));
    }
    let n_sym = manifest.symbols.len() as i32;
    if n_sym as u32 > manifest.dim_slots || manifest.symbols.iter().any(|s| s.lo > s.hi) {
        return Err(RuntimeError::Manifest(format!(
            "{} run-time dims for {} slots, or bounds reversed",
            n_sym, manifest.dim_slots
        )));
    }
    // A derived symbol follows a symbol the caller gives, its bounds shifted by its offset.
    for (k, s) in manifest.symbols.iter().enumerate() {
        let Some(b) = s.base else { continue };
        let base = manifest.symbols.get(b as usize).filter(|t| t.base.is_none() && (b as usize) < k);
        let fits = base.is_some_and(|t| t.lo as i64 + s.offset == s.lo as i64 && t.hi as i64 + s.offset == s.hi as i64);
        if !fits {
            return Err(RuntimeError::Manifest(format!(
                "run-time dim `{}` is derived from dim {b} + {} with bounds {}..={} that do not follow",
                s.name, s.offset, s.lo, s.hi
            )));
        }
    }
    for spec in &manifest.inputs {
        if !spec.dim_slots.is_empty()
            && (spec.dim_slots.len() != spec.shape.len()
                || spec
                    .dim_slots
                    .iter()
                    .zip(&spec.shape)
                    .any(|(&k, &d)| k < -1 || k >= n_sym || (k >= 0 && manifest.symbols[k as usize].hi != d)))
        {
            return Err(RuntimeError::Manifest(format!(
                "input `{}` names run-time dims {:?} for shape {:?} and {n_sym} symbols",
                spec.name, spec.dim_slots, spec.shape
            )));
        }
    }
    for spec in &manifest.intermediates {
        if !spec.dim_slots.is_empty() {
            return Err(RuntimeError::Manifest(format!(
                "tensor `{}` has dims decided at run time, which a partition's tensor may not have",
                spec.name
            )));
        }
    }
    for spec in &manifest.outputs {
        let n = manifest.dim_slots as i32;
        if !spec.dim_slots.is_empty()
            && (spec.dim_slots.len() != spec.shape.len() || spec.dim_slots.iter().any(|&k| k < -1 || k >= n))
        {
            return Err(RuntimeError::Manifest(format!(
                "output `{}` names run-time dims {:?} for a rank-{} shape and {n} slots",
                spec.name,
                spec.dim_slots,
                spec.shape.len()
            )));
        }
    }
    for spec in manifest.inputs.iter().chain(&manifest.outputs).chain(&manifest.intermediates) {
        if DTypeCode::from_i32(spec.dtype).is_none() {
            return Err(RuntimeError::Manifest(format!(
                "tensor `{}` has unknown dtype code {}",
                spec.name, spec.dtype
            )));
        }
    }
    Ok(())
}
