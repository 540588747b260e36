//! JSON Patch (RFC 6902) applied to a stored resource's JSON: `add`, `remove`, `replace`,
//! `move`, `copy` and `test`, all or nothing.
//!
//! A document that is not a list of well-formed operations is a 400; an operation that cannot
//! be applied to this resource (a pointer to nothing, a failing `test`, a change of `id` or
//! `resourceType`) is a 422. The handler re-validates the result through the codec and writes
//! it as an update.
//!
//! Numbers are compared by value in `test` (`72.40` equals `72.4`): serde_json runs with
//! `arbitrary_precision` in this workspace, where `Value` equality compares number text.

use serde_json::{Map, Value};

use super::error::FhirError;
use super::json::Size;

/// Most operations one patch may hold.
const MAX_OPERATIONS: usize = 10_000;
/// Most JSON values a patched resource may hold: as many as one resource may hold at all.
const MAX_VALUES: usize = hl7bridge_fhir_codec::MAX_NODES;
/// Deepest nesting a patched resource may reach: as deep as one resource may be at all.
/// Values nested deeper would be copied, compared and dropped by recursion: a 2.5 KB patch that
/// copied a value into itself ten times (1,024 deep) overflowed a worker's stack and killed the
/// server (a hostile tester's finding).
const MAX_DEPTH: usize = hl7bridge_fhir_codec::MAX_DEPTH;

/// Applies `patch` to `resource`, which may grow to `max_bytes` at most; on any error
/// `resource` is left as it was.
pub fn apply(resource: &mut Value, patch: &Value, max_bytes: usize) -> Result<(), FhirError> {
    let operations = read(patch)?;
    let mut patched = resource.clone();
    let mut budget = Budget::new(&patched, max_bytes);
    for (index, operation) in operations.iter().enumerate() {
        operation
            .apply(&mut patched, &mut budget)
            .map_err(|message| unprocessable(index, &message))?;
    }
    for element in ["resourceType", "id"] {
        if patched.get(element) != resource.get(element) {
            return Err(FhirError::Unprocessable(format!(
                "a patch cannot change {element}"
            )));
        }
    }
    *resource = patched;
    Ok(())
}

#[derive(Debug)]
enum Operation {
    Add(Vec<String>, Value),
    Remove(Vec<String>),
    Replace(Vec<String>, Value),
    Move { from: Vec<String>, to: Vec<String> },
    Copy { from: Vec<String>, to: Vec<String> },
    Test(Vec<String>, Value),
}

fn read(patch: &Value) -> Result<Vec<Operation>, FhirError> {
    let Value::Array(items) = patch else {
        return Err(FhirError::invalid("a JSON Patch is an array of operations"));
    };
    if items.len() > MAX_OPERATIONS {
        return Err(FhirError::invalid(format!(
            "at most {MAX_OPERATIONS} operations in one patch"
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            read_operation(item).map_err(|m| FhirError::invalid(format!("operation {index}: {m}")))
        })
        .collect()
}

fn read_operation(item: &Value) -> Result<Operation, String> {
    let Value::Object(map) = item else {
        return Err("an operation is an object".into());
    };
    let pointer = |name: &str| -> Result<Vec<String>, String> {
        match map.get(name) {
            Some(Value::String(text)) => parse_pointer(text),
            Some(_) => Err(format!("{name} must be a string")),
            None => Err(format!("{name} is missing")),
        }
    };
    let value = || {
        map.get("value")
            .cloned()
            .ok_or_else(|| "value is missing".to_string())
    };
    let op = map.get("op").and_then(Value::as_str).unwrap_or("");
    let path = pointer("path")?;
    let operation = match op {
        "add" => Operation::Add(path, value()?),
        "remove" => Operation::Remove(path),
        "replace" => Operation::Replace(path, value()?),
        "move" => Operation::Move {
            from: pointer("from")?,
            to: path,
        },
        "copy" => Operation::Copy {
            from: pointer("from")?,
            to: path,
        },
        "test" => Operation::Test(path, value()?),
        "" => return Err("op is missing".into()),
        other => return Err(format!("{other:?} is not a JSON Patch operation")),
    };
    Ok(operation)
}

/// An RFC 6901 pointer as its reference tokens (`~1` is `/`, `~0` is `~`).
fn parse_pointer(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!("{text:?} is not a JSON pointer (it starts with /)"));
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => out.push('~'),
                    Some('1') => out.push('/'),
                    _ => return Err(format!("{text:?} holds a ~ that is not ~0 or ~1")),
                }
            }
            Ok(out)
        })
        .collect()
}

/// How much a patch may make a resource hold, and write in all: without these bounds a patch of
/// twenty `copy` operations, each doubling the resource, took gigabytes before the result was
/// ever checked (a hostile tester's finding; twenty-four ran the server out of memory), and 200
/// copies of a 1 MB string made a 210 MB resource.
struct Budget {
    /// Values and bytes (text and numbers; 8 bytes a value besides) held now.
    values: usize,
    bytes: usize,
    /// Values and bytes written so far (added, replaced, copied or moved).
    values_written: usize,
    bytes_written: usize,
    /// The most bytes the resource may hold (the largest body the server takes); four times
    /// as many may be written.
    max_bytes: usize,
}

impl Budget {
    fn new(resource: &Value, max_bytes: usize) -> Budget {
        let held = Size::unbounded(resource);
        Budget {
            values: held.values,
            bytes: held.bytes,
            values_written: 0,
            bytes_written: 0,
            max_bytes,
        }
    }

    /// Counts `value`, about to be written at `path` (to be held anew unless `moved`), or says
    /// why it may not be.
    fn write(&mut self, value: &Value, path: &[String], moved: bool) -> Result<(), String> {
        let room = |now: usize, most: usize| {
            if moved {
                usize::MAX
            } else {
                most.saturating_sub(now)
            }
        };
        let most = Size {
            values: room(self.values, MAX_VALUES)
                .min((4 * MAX_VALUES).saturating_sub(self.values_written)),
            bytes: room(self.bytes, self.max_bytes)
                .min((4 * self.max_bytes).saturating_sub(self.bytes_written)),
            depth: 0,
        };
        let max_depth = MAX_DEPTH.saturating_sub(path.len());
        let size = Size::of(value, most, max_depth).ok_or_else(|| {
            format!(
                "the patch would make the resource hold more than {MAX_VALUES} values or {} \
                 bytes, nest deeper than {MAX_DEPTH}, or write more than four times as much",
                self.max_bytes
            )
        })?;
        if !moved {
            self.values += size.values;
            self.bytes += size.bytes;
        }
        self.values_written += size.values;
        self.bytes_written += size.bytes;
        Ok(())
    }

    fn removed(&mut self, value: &Value) {
        let size = Size::unbounded(value);
        self.values = self.values.saturating_sub(size.values);
        self.bytes = self.bytes.saturating_sub(size.bytes);
    }
}

impl Operation {
    fn apply(&self, doc: &mut Value, budget: &mut Budget) -> Result<(), String> {
        match self {
            Operation::Add(path, value) => {
                let path = guarded(path)?;
                budget.write(value, path, false)?;
                // An object member added again replaces the one there.
                if let Some((last, parent)) = path.split_last() {
                    if let Ok(Value::Object(map)) = get_mut(doc, parent) {
                        if let Some(old) = map.get(last) {
                            budget.removed(old);
                        }
                    }
                }
                add(doc, path, value.clone())
            }
            Operation::Remove(path) => {
                let removed = remove(doc, guarded(path)?)?;
                budget.removed(&removed);
                Ok(())
            }
            Operation::Replace(path, value) => {
                let path = guarded(path)?;
                let target = get_mut(doc, path)?;
                budget.write(value, path, false)?;
                budget.removed(target);
                *target = value.clone();
                Ok(())
            }
            Operation::Move { from, to } => {
                if to.len() > from.len() && to.starts_with(from) {
                    return Err("cannot move a value into itself".into());
                }
                let to = guarded(to)?;
                budget.write(get_mut(doc, guarded(from)?)?, to, true)?;
                let value = remove(doc, from)?;
                add(doc, to, value)
            }
            Operation::Copy { from, to } => {
                let to = guarded(to)?;
                let source = get_mut(doc, from)?;
                // Counted before it is cloned: a copy too large or too deep is never made.
                budget.write(source, to, false)?;
                let value = source.clone();
                add(doc, to, value)
            }
            Operation::Test(path, expected) => {
                if same(get_mut(doc, path)?, expected) {
                    Ok(())
                } else {
                    Err(format!(
                        "test failed: {} is not the value given",
                        show(path)
                    ))
                }
            }
        }
    }
}

/// A path a change may touch: not the whole resource, its type or its id.
fn guarded(path: &[String]) -> Result<&[String], String> {
    match path.first().map(String::as_str) {
        None => Err("a patch cannot replace the whole resource".into()),
        Some(name @ ("resourceType" | "id")) if path.len() == 1 => {
            Err(format!("a patch cannot change {name}"))
        }
        _ => Ok(path),
    }
}

fn get_mut<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, String> {
    let mut at = doc;
    for (depth, token) in path.iter().enumerate() {
        let missing = || format!("{} does not exist", show(&path[..=depth]));
        at = match at {
            Value::Object(map) => map.get_mut(token).ok_or_else(missing)?,
            Value::Array(items) => {
                let index = array_index(token, items.len()).ok_or_else(missing)?;
                &mut items[index]
            }
            _ => return Err(missing()),
        };
    }
    Ok(at)
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let (last, parent) = path.split_last().ok_or("no target")?;
    match get_mut(doc, parent)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
        }
        Value::Array(items) if last == "-" => items.push(value),
        Value::Array(items) => {
            let index = array_index(last, items.len() + 1)
                .ok_or_else(|| format!("{} is beyond the end of the array", show(path)))?;
            items.insert(index, value);
        }
        _ => {
            return Err(format!(
                "{} is inside a value that holds nothing",
                show(path)
            ))
        }
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    let (last, parent) = path.split_last().ok_or("no target")?;
    let missing = || format!("{} does not exist", show(path));
    match get_mut(doc, parent)? {
        Value::Object(map) => map.shift_remove(last).ok_or_else(missing),
        Value::Array(items) => {
            let index = array_index(last, items.len()).ok_or_else(missing)?;
            Ok(items.remove(index))
        }
        _ => Err(missing()),
    }
}

/// A decimal array index below `len`, without leading zeros.
fn array_index(token: &str, len: usize) -> Option<usize> {
    let well_formed = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    token.parse().ok().filter(|i| well_formed && *i < len)
}

/// RFC 6902 equality: numbers by value, objects regardless of key order.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            normal_number(&x.to_string()) == normal_number(&y.to_string())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => same_objects(x, y),
        _ => a == b,
    }
}

fn same_objects(x: &Map<String, Value>, y: &Map<String, Value>) -> bool {
    x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
}

/// A JSON number's text as (negative, significant digits, exponent), with no leading or
/// trailing zeros in the digits, so that equal values have equal forms.
fn normal_number(text: &str) -> (bool, String, i64) {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().unwrap_or(0)),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    let mut exponent = exponent - fraction.len() as i64;
    let trimmed = digits.trim_start_matches('0');
    let significant = trimmed.trim_end_matches('0');
    exponent += (trimmed.len() - significant.len()) as i64;
    if significant.is_empty() {
        return (false, "0".into(), 0);
    }
    (negative, significant.to_string(), exponent)
}

/// A path for messages, as a pointer.
fn show(path: &[String]) -> String {
    path.iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

fn unprocessable(index: usize, message: &str) -> FhirError {
    FhirError::Unprocessable(format!("operation {index}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patched(doc: Value, patch: Value) -> Result<Value, FhirError> {
        let mut doc = doc;
        apply(&mut doc, &patch, 64 << 20).map(|_| doc)
    }

    #[test]
    fn the_rfc_operations_apply_in_order() {
        let doc = json!({"resourceType": "Patient", "id": "p", "name": [{"family": "A"}],
            "telecom": [{"value": "1"}, {"value": "2"}]});
        let out = patched(
            doc,
            json!([
                {"op": "add", "path": "/gender", "value": "other"},
                {"op": "copy", "from": "/name/0", "path": "/name/-"},
                {"op": "replace", "path": "/name/1/family", "value": "B"},
                {"op": "move", "from": "/telecom/1", "path": "/telecom/0"},
                {"op": "remove", "path": "/telecom/1"},
                {"op": "test", "path": "/name/1", "value": {"family": "B"}},
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"resourceType": "Patient", "id": "p", "name": [{"family": "A"}, {"family": "B"}],
                "telecom": [{"value": "2"}], "gender": "other"})
        );
    }

    #[test]
    fn numbers_are_equal_by_value() {
        for (a, b) in [
            ("72.40", "72.4"),
            ("1e2", "100"),
            ("0.0", "0"),
            ("-1.50", "-15e-1"),
        ] {
            assert_eq!(normal_number(a), normal_number(b), "{a} {b}");
        }
        assert_ne!(normal_number("1.01"), normal_number("1.1"));
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        assert_eq!(parse_pointer("/a~1b/c~0d").unwrap(), ["a/b", "c~d"]);
        assert!(parse_pointer("a").is_err());
        assert!(parse_pointer("/a~2").is_err());
        assert_eq!(array_index("01", 5), None);
        assert_eq!(array_index("-", 5), None);
    }

    #[test]
    fn a_failed_operation_leaves_the_resource_unchanged() {
        let mut doc = json!({"resourceType": "Patient", "gender": "male"});
        let before = doc.clone();
        let patch = json!([{"op": "replace", "path": "/gender", "value": "female"},
            {"op": "test", "path": "/gender", "value": "male"}]);
        assert!(matches!(
            apply(&mut doc, &patch, 1 << 20),
            Err(FhirError::Unprocessable(_))
        ));
        assert_eq!(doc, before);
    }

    #[test]
    fn copies_that_would_grow_the_resource_past_its_bound_are_refused_before_they_are_made() {
        let doc = json!({"resourceType": "Patient", "id": "p", "contact": [
            {"name": {"text": "x", "given": ["a", "b", "c", "d"]}}
        ]});
        let doubling = json!({"op": "copy", "from": "/contact", "path": "/contact/-"});
        let bomb = Value::Array(vec![doubling.clone(); 40]);
        let started = std::time::Instant::now();
        let refused = patched(doc.clone(), bomb);
        assert!(
            matches!(&refused, Err(FhirError::Unprocessable(m)) if m.contains("more than")),
            "{refused:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // A few copies are fine, and removing makes room again.
        let few = Value::Array(vec![doubling; 3]);
        let grown = patched(doc.clone(), few).unwrap();
        // Each copy appends the whole array to itself.
        assert_eq!(grown["contact"].as_array().unwrap().len(), 4);
        let remove = json!({"op": "remove", "path": "/contact/0"});
        let copy = json!({"op": "copy", "from": "/contact/0", "path": "/contact/-"});
        let churn: Vec<Value> = (0..5000)
            .flat_map(|_| [copy.clone(), remove.clone()])
            .collect();
        let refused = patched(doc, Value::Array(churn[..9000].to_vec()));
        assert!(
            refused.is_ok(),
            "copy and remove in turn stay bounded: {refused:?}"
        );
    }

    #[test]
    fn a_value_copied_into_itself_cannot_nest_past_the_resource_depth() {
        let doc = json!({"resourceType": "Patient", "id": "p"});
        let mut ops = vec![json!({"op": "add", "path": "/zz", "value": {"b": {}}})];
        let mut deepest = "/zz/b".to_string();
        for _ in 0..12 {
            ops.push(json!({"op": "copy", "from": "/zz", "path": format!("{deepest}/b")}));
            deepest = format!("{deepest}/b/b");
        }
        let refused = patched(doc, Value::Array(ops));
        assert!(
            matches!(&refused, Err(FhirError::Unprocessable(m)) if m.contains("nest deeper")),
            "{refused:?}"
        );
    }

    #[test]
    fn copies_of_a_large_string_are_bounded_by_bytes() {
        let doc = json!({"resourceType": "Patient", "id": "p",
            "extension": [{"url": "u", "valueString": "x".repeat(1 << 20)}]});
        let copy = json!({"op": "copy", "from": "/extension/0", "path": "/extension/-"});
        let mut refused_doc = doc.clone();
        let refused = apply(
            &mut refused_doc,
            &Value::Array(vec![copy.clone(); 200]),
            8 << 20,
        );
        assert!(
            matches!(refused, Err(FhirError::Unprocessable(_))),
            "{refused:?}"
        );
        assert_eq!(refused_doc, doc, "left as it was");
        let mut grown = doc.clone();
        apply(&mut grown, &Value::Array(vec![copy; 3]), 8 << 20).unwrap();
        assert_eq!(grown["extension"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn id_and_resource_type_cannot_be_changed() {
        let doc = json!({"resourceType": "Patient", "id": "p"});
        for patch in [
            json!([{"op": "replace", "path": "/id", "value": "q"}]),
            json!([{"op": "remove", "path": "/resourceType"}]),
            json!([{"op": "replace", "path": "", "value": {"resourceType": "Patient"}}]),
            json!([{"op": "move", "from": "/id", "path": "/x"}]),
        ] {
            assert!(matches!(
                patched(doc.clone(), patch),
                Err(FhirError::Unprocessable(_))
            ));
        }
    }
}
