//! Import options and `--input-shape` specs.

use std::collections::HashMap;

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
        let e = parse_input_shape("x=1x?x3").unwrap_err().to_string();
        assert!(e.contains("bad input shape `x=1x?x3`"), "{e}");
        assert!(parse_input_shape("noequals").is_err());
        assert!(parse_input_shape("=1x2").is_err());
        assert!(parse_input_shape("x=1x-2").is_err());
    }
}
