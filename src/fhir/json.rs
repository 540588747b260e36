//! FHIR JSON read from bytes: what serde_json reads, plus the rule it lets pass — an object
//! with the same key twice. serde_json keeps the last value and drops the others without a
//! word, so `{"gender":"male","gender":"female"}` would be stored as one of the two; it is
//! refused instead (RFC 8259 leaves duplicate names to the reader; FHIR data must not lose one).

use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// JSON that cannot be taken, with where (line and column, from 1).
#[derive(Debug, thiserror::Error)]
#[error("{what} (line {line}, column {column})")]
pub struct JsonError {
    pub what: &'static str,
    pub line: usize,
    pub column: usize,
}

const NOT_JSON: &str = "not valid JSON";
const DUPLICATE_KEY: &str = "JSON with an object that has the same key twice";

/// The JSON value of `bytes`, refused when it is not JSON or repeats a key in an object.
pub fn from_slice(bytes: &[u8]) -> Result<Value, JsonError> {
    let value = serde_json::from_slice(bytes).map_err(|e| located(NOT_JSON, &e))?;
    serde_json::from_slice::<UniqueKeys>(bytes).map_err(|e| located(DUPLICATE_KEY, &e))?;
    Ok(value)
}

fn located(what: &'static str, err: &serde_json::Error) -> JsonError {
    JsonError {
        what,
        line: err.line(),
        column: err.column(),
    }
}

/// Reads a JSON document keeping nothing, failing at the first object that repeats a key.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: Error>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E: Error>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E: Error>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E: Error>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E: Error>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E: Error>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<UniqueKeys, A::Error> {
        while items.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    // With `arbitrary_precision`, serde_json hands every number over as a one-key map too.
    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = members.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(A::Error::custom("duplicate key"));
            }
            members.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

/// The size of a JSON value (values, bytes of text and numbers plus 8 a value, nesting),
/// counted without recursion: values built by a client may nest deeper than a stack allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    pub values: usize,
    pub bytes: usize,
    /// 1 for a primitive, one more per level of nesting.
    pub depth: usize,
}

impl Size {
    /// `value`'s size; `None` as soon as it passes `most` values or bytes, or `max_depth`.
    pub fn of(value: &Value, most: Size, max_depth: usize) -> Option<Size> {
        let mut size = Size::default();
        let mut stack = vec![(value, 1usize)];
        while let Some((v, depth)) = stack.pop() {
            size.values += 1;
            size.depth = size.depth.max(depth);
            size.bytes += 8 + match v {
                Value::String(text) => text.len(),
                Value::Number(n) => n.to_string().len(),
                Value::Object(map) => map.keys().map(String::len).sum(),
                _ => 0,
            };
            if size.values > most.values || size.bytes > most.bytes || depth > max_depth {
                return None;
            }
            match v {
                Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
                Value::Object(map) => stack.extend(map.values().map(|i| (i, depth + 1))),
                _ => {}
            }
        }
        Some(size)
    }

    pub fn unbounded(value: &Value) -> Size {
        let most = Size {
            values: usize::MAX,
            bytes: usize::MAX,
            depth: 0,
        };
        Size::of(value, most, usize::MAX).unwrap_or(most)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_is_refused_at_any_depth() {
        assert!(from_slice(br#"{"a":1,"a":2}"#).is_err());
        let deep = br#"{"a":[{"b":{"c":1,"d":[1.50,"x",null,true],"c":2}}]}"#;
        let err = from_slice(deep).unwrap_err();
        assert_eq!(err.what, DUPLICATE_KEY);
    }

    #[test]
    fn the_same_key_in_sibling_objects_and_numbers_of_any_form_pass() {
        let value = from_slice(br#"[{"a":1e400},{"a":-0,"b":{"a":12.50}}]"#).unwrap();
        assert_eq!(value[1]["b"]["a"].to_string(), "12.50");
    }

    #[test]
    fn invalid_json_says_where() {
        let err = from_slice(b"{\n\"a\":").unwrap_err();
        assert_eq!((err.what, err.line), (NOT_JSON, 2));
    }
}
