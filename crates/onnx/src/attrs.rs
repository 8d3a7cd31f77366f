//! Typed access to a node's attributes.

use crate::proto::attribute_proto::AttributeType;
use crate::proto::{AttributeProto, TensorProto};

/// A node's attributes by name. Getters check the attribute's declared type (where the model
/// declares one) and return `Err(message)` on a mismatch.
pub(crate) struct Attrs<'a> {
    list: &'a [AttributeProto],
}

type AttrResult<T> = Result<T, String>;

impl<'a> Attrs<'a> {
    pub fn new(list: &'a [AttributeProto]) -> Self {
        Attrs { list }
    }

    pub fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.list.iter().rev().find(|a| a.name() == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn typed(&self, name: &str, want: AttributeType) -> AttrResult<Option<&'a AttributeProto>> {
        let Some(a) = self.get(name) else {
            return Ok(None);
        };
        match a.r#type {
            None | Some(0) => Ok(Some(a)),
            Some(t) if t == want as i32 => Ok(Some(a)),
            Some(t) => {
                let have =
                    AttributeType::try_from(t).map(|t| t.as_str_name().to_string()).unwrap_or_else(|_| t.to_string());
                Err(format!("attribute `{name}` has type {have}, expected {}", want.as_str_name()))
            }
        }
    }

    pub fn int(&self, name: &str) -> AttrResult<Option<i64>> {
        Ok(self.typed(name, AttributeType::Int)?.map(|a| a.i()))
    }
    pub fn int_or(&self, name: &str, default: i64) -> AttrResult<i64> {
        Ok(self.int(name)?.unwrap_or(default))
    }
    pub fn float(&self, name: &str) -> AttrResult<Option<f32>> {
        Ok(self.typed(name, AttributeType::Float)?.map(|a| a.f()))
    }
    pub fn float_or(&self, name: &str, default: f32) -> AttrResult<f32> {
        Ok(self.float(name)?.unwrap_or(default))
    }
    pub fn ints(&self, name: &str) -> AttrResult<Option<&'a [i64]>> {
        Ok(self.typed(name, AttributeType::Ints)?.map(|a| a.ints.as_slice()))
    }
    pub fn floats(&self, name: &str) -> AttrResult<Option<&'a [f32]>> {
        Ok(self.typed(name, AttributeType::Floats)?.map(|a| a.floats.as_slice()))
    }
    pub fn string(&self, name: &str) -> AttrResult<Option<String>> {
        match self.typed(name, AttributeType::String)? {
            None => Ok(None),
            Some(a) => String::from_utf8(a.s().to_vec())
                .map(Some)
                .map_err(|_| format!("attribute `{name}` is not valid UTF-8")),
        }
    }
    pub fn strings(&self, name: &str) -> AttrResult<Option<Vec<String>>> {
        match self.typed(name, AttributeType::Strings)? {
            None => Ok(None),
            Some(a) => a
                .strings
                .iter()
                .map(|s| String::from_utf8(s.to_vec()).map_err(|_| format!("attribute `{name}` is not valid UTF-8")))
                .collect::<AttrResult<Vec<_>>>()
                .map(Some),
        }
    }
    pub fn tensor(&self, name: &str) -> AttrResult<Option<&'a TensorProto>> {
        match self.typed(name, AttributeType::Tensor)? {
            None => Ok(None),
            Some(a) => a.t.as_ref().map(Some).ok_or_else(|| format!("attribute `{name}` holds no tensor")),
        }
    }

    /// Names of all attributes, for "unknown attribute" checks.
    pub fn names(&self) -> impl Iterator<Item = &'a str> {
        self.list.iter().map(|a| a.name())
    }
}
