//! Import options and `--input-shape` specs.

use std::collections::{BTreeMap, HashMap};

use crate::ImportError;

/// Options of [`crate::import_model`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Shapes that pin graph inputs with symbolic or unknown dims, by input name. A pinned
    /// shape must agree with the input's static dims and name an existing runtime input.
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// What each sequence or optional graph input holds (its element types and shapes, or
    /// whether it is present), by input name: the compiled model takes such an input as
    /// tensors `<name>[0]`, `<name>[1]`, … (see [`crate::ValueSpec`]).
    pub value_inputs: HashMap<String, crate::ValueSpec>,
    /// The most elements of an output whose size comes from data with no bound of its own
    /// (Pad's pads, Range's limits, ConstantOfShape's and Expand's shapes, Tile's repeats,
    /// OneHot's depth, CenterCropPad's shape, the rows of a loop's scan outputs when its trip
    /// count comes from data): its buffer is planned at this size and the run fails beyond it.
    /// `None`: such inputs must be constant.
    pub max_elements: Option<usize>,
    /// Symbolic input dims the caller sets at each run, by the model's own dim name: each
    /// between its bounds `(lo, hi)` (`--dim NAME=LO..HI`). The graph is built at `hi`, and
    /// records the symbols ([`kiln_ir::Graph::symbols`]). A symbol with `lo == hi` just pins.
    pub dims: BTreeMap<String, (usize, usize)>,
}

impl ImportOptions {
    /// Pins the shape of input `name`.
    pub fn with_input_shape(mut self, name: impl Into<String>, shape: Vec<usize>) -> Self {
        self.input_shapes.insert(name.into(), shape);
        self
    }

    /// Adds a `NAME=1x3x224x224` spec (see [`parse_input_shape`]).
    pub fn add_input_shape_spec(&mut self, spec: &str) -> Result<(), ImportError> {
        let (name, shape) = parse_input_shape(spec)?;
        self.input_shapes.insert(name, shape);
        Ok(())
    }
}

/// Parses `NAME=LO..HI` (or `NAME=N`, a dim pinned to one size).
pub fn parse_dim_spec(spec: &str) -> Result<(String, (usize, usize)), ImportError> {
    let bad = |reason: &str| ImportError::DimSpec { spec: spec.to_string(), reason: reason.to_string() };
    // The first `=`: `LO..=HI` has one too.
    let (name, range) = spec.split_once('=').ok_or_else(|| bad("expected NAME=LO..HI (e.g. batch=1..8)"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(bad("the dim name is empty"));
    }
    let num = |s: &str| -> Result<usize, ImportError> {
        let s = s.trim();
        s.parse().map_err(|_| bad(&format!("`{s}` is not a size (a non-negative integer)")))
    };
    let (lo, hi) = match range.split_once("..") {
        Some((lo, hi)) => (num(lo)?, num(hi.trim_start_matches('='))?),
        None => {
            let n = num(range)?;
            (n, n)
        }
    };
    if lo > hi {
        return Err(bad(&format!("the lower bound {lo} is above the upper bound {hi}")));
    }
    if hi == 0 {
        return Err(bad("the upper bound is 0"));
    }
    Ok((name.to_string(), (lo, hi)))
}

/// Parses `NAME=D0xD1x…` (dims separated by `x` or `,`; `NAME=` is a scalar). The name is
/// everything before the last `=`.
pub fn parse_input_shape(spec: &str) -> Result<(String, Vec<usize>), ImportError> {
    let bad = |reason: &str| ImportError::ShapeSpec { spec: spec.to_string(), reason: reason.to_string() };
    let (name, dims) = spec.rsplit_once('=').ok_or_else(|| bad("expected NAME=D0xD1x… (e.g. images=1x3x224x224)"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(bad("the input name is empty"));
    }
    let dims = dims.trim();
    let mut shape = Vec::new();
    if !dims.is_empty() {
        for d in dims.split(['x', 'X', ',']) {
            let d = d.trim();
            let v: usize = d.parse().map_err(|_| bad(&format!("`{d}` is not a dimension (a non-negative integer)")))?;
            shape.push(v);
        }
    }
    Ok((name.to_string(), shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(parse_input_shape("images=1x3x224x224").unwrap(), ("images".into(), vec![1, 3, 224, 224]));
        assert_eq!(parse_input_shape("a=b=2,3").unwrap(), ("a=b".into(), vec![2, 3]));
        assert_eq!(parse_input_shape("s=").unwrap(), ("s".into(), vec![]));
        assert_eq!(parse_dim_spec("batch=1..8").unwrap(), ("batch".into(), (1, 8)));
        assert_eq!(parse_dim_spec("seq = 2..=16").unwrap(), ("seq".into(), (2, 16)));
        assert_eq!(parse_dim_spec("n=4").unwrap(), ("n".into(), (4, 4)));
        for bad in ["batch", "=1..2", "b=3..2", "b=x..2", "b=0..0", "b=1..-2"] {
            assert!(parse_dim_spec(bad).is_err(), "{bad}");
        }
        let e = parse_input_shape("x=1x?x3").unwrap_err().to_string();
        assert!(e.contains("bad input shape `x=1x?x3`"), "{e}");
        assert!(parse_input_shape("noequals").is_err());
        assert!(parse_input_shape("=1x2").is_err());
        assert!(parse_input_shape("x=1x-2").is_err());
    }
}
