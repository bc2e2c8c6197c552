//! CQL types and values: the column types of the schema, and values encoded as CQL encodes them.

use crate::*;
use cassandra_protocol::frame::message_result::{ColType, ColTypeOption, ColTypeOptionValue};
use std::cmp::Ordering;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    Text,
    BigInt,
    Int,
    Bool,
    Blob,
    Uuid,
    Inet,
    SetText,
}

impl Ty {
    pub(crate) fn parse(name: &str) -> Res<Ty> {
        Ok(match name {
            "text" | "varchar" => Ty::Text,
            "bigint" => Ty::BigInt,
            "int" => Ty::Int,
            "boolean" => Ty::Bool,
            "blob" => Ty::Blob,
            other => return invalid(format!("column type {other} is not supported by the CQL double")),
        })
    }

    pub(crate) fn col_type(self) -> ColTypeOption {
        let (id, value) = match self {
            Ty::Text => (ColType::Varchar, None),
            Ty::BigInt => (ColType::Bigint, None),
            Ty::Int => (ColType::Int, None),
            Ty::Bool => (ColType::Boolean, None),
            Ty::Blob => (ColType::Blob, None),
            Ty::Uuid => (ColType::Uuid, None),
            Ty::Inet => (ColType::Inet, None),
            Ty::SetText => (ColType::Set, Some(ColTypeOptionValue::CSet(Box::new(ColTypeOption { id: ColType::Varchar, value: None })))),
        };
        ColTypeOption { id, value }
    }

    /// Checks a bound value's encoding, so a driver-side type mistake fails here as it would
    /// on a real server instead of storing garbage.
    pub(crate) fn check(self, bytes: &[u8], col: &str) -> Res<()> {
        let ok = match self {
            Ty::Text => std::str::from_utf8(bytes).is_ok(),
            Ty::BigInt => bytes.len() == 8,
            Ty::Int => bytes.len() == 4,
            Ty::Bool => bytes.len() == 1,
            Ty::Blob => true,
            Ty::Uuid => bytes.len() == 16,
            Ty::Inet => bytes.len() == 4 || bytes.len() == 16,
            Ty::SetText => true,
        };
        if ok {
            Ok(())
        } else {
            invalid(format!("value for column {col} is not a valid {self:?} ({} bytes)", bytes.len()))
        }
    }

    /// Orders two encoded values of this type the way CQL does.
    pub(crate) fn cmp(self, a: &[u8], b: &[u8]) -> Ordering {
        match self {
            Ty::BigInt | Ty::Int => {
                let n = |x: &[u8]| {
                    x.iter().fold(if x.first().is_some_and(|b| b & 0x80 != 0) { -1i64 } else { 0 }, |acc, b| (acc << 8) | *b as i64)
                };
                n(a).cmp(&n(b))
            }
            _ => a.cmp(b),
        }
    }
}
