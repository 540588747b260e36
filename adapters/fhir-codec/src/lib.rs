//! The one place that calls fhirbolt: FHIR JSON checked into canonical form, and FHIR XML
//! in and out (see [`xml`]).
//!
//! fhirbolt's (de)serialisation is generic and is monomorphised in whichever crate calls it; a
//! crate calling it directly takes minutes to rebuild in release. Keeping every call here, behind
//! functions that take and return `serde_json::Value`, means the server crate around it rebuilds
//! in seconds (see LIBRARIES.md, "Build cost").
//!
//! fhirbolt is also unsafe on untrusted input in ways this module guards against:
//! - it spins forever on unknown array elements in its lenient modes, so only Strict mode is used;
//! - it panics on empty arrays, so the input is checked for empty arrays, objects and strings
//!   first (FHIR forbids all three), and any panic that remains is contained and turned into an
//!   error for that one resource;
//! - parsing straight into a concrete type fails on real bundles, so input always goes through
//!   the `Resource` enum.

mod codes;
mod narrative;
mod xml;

use std::panic::{catch_unwind, AssertUnwindSafe};

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use serde_json::{Map, Value};

pub use codes::required as required_codes;
pub use xml::{compact_xml, json_to_xml, xml_to_json};

/// Deeper nesting than this is refused before any recursive walk (real resources stay below 20).
pub const MAX_DEPTH: usize = 64;

/// More JSON values than this in one resource is refused before fhirbolt builds its model,
/// which takes well over a hundred times the input for many small elements. Real resources
/// stay in the thousands; large payloads (attachments) are single strings.
pub const MAX_NODES: usize = 200_000;

/// The longest number taken, in characters. FHIR integers are 32-bit (11 characters at most),
/// and its decimals take their limits from XML Schema, whose processors need support only 18
/// digits; the shortest text that round-trips any 64-bit float is at most 24 characters. 64
/// leaves room for a decimal written out in full with its precision, while a number of
/// thousands of digits, which FHIR gives no meaning, would be stored and then fail in the
/// parsers of the clients that read it (Python refuses integers of more than 4300 digits).
pub const MAX_NUMBER_CHARS: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The JSON breaks a FHIR JSON rule that fhirbolt does not check (or would crash on).
    #[error("{path}: {message}")]
    Structure { path: String, message: String },
    /// fhirbolt rejected the content (unknown element, wrong type, missing required element).
    #[error("{0}")]
    Model(String),
    /// The XML is not well-formed, or holds what FHIR XML forbids or this server refuses
    /// (a DOCTYPE, entities, CDATA, nesting deeper than [`MAX_DEPTH`]).
    #[error("{0}")]
    Xml(String),
}

/// Checks one resource against the R4 model and returns it in canonical form: elements in
/// specification order, as fhirbolt writes them. Decimals keep their text (serde_json runs with
/// `arbitrary_precision` in this workspace).
pub fn canonicalize(value: Value) -> Result<Value, CodecError> {
    let root = root_name(&value)?;
    if exceeds_nodes(&value, MAX_NODES) {
        return Err(structure(&root, "more elements than one resource may hold"));
    }
    check_structure(&value, &mut root.clone(), 0)?;
    let mut value = value;
    check_narratives(&mut value, &mut root.clone())?;
    let sent = value.clone();
    let parsed = catch_unwind(AssertUnwindSafe(|| parse_strict(value)))
        .map_err(|_| CodecError::Model("the resource could not be read".into()))??;
    let written = catch_unwind(AssertUnwindSafe(|| {
        fhirbolt::json::to_json_value(parsed, None)
    }))
    .map_err(|_| CodecError::Model("the resource could not be written".into()))?
    .map_err(|e| CodecError::Model(e.to_string()))?;
    check_nothing_coerced(&sent, &written, &mut root.clone())?;
    Ok(written)
}

/// Checks every narrative `div` (FHIR names no other element `div`) with
/// [`narrative::checked_div`], wrapping plain text in XHTML. Called after [`check_structure`],
/// which bounds the depth.
fn check_narratives(value: &mut Value, path: &mut String) -> Result<(), CodecError> {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                let len = path.len();
                push_segment(path, key);
                match child {
                    Value::String(div) if key == "div" => match narrative::checked_div(div) {
                        Ok(Some(wrapped)) => *div = wrapped,
                        Ok(None) => {}
                        Err(message) => return Err(structure(path, &message)),
                    },
                    _ => check_narratives(child, path)?,
                }
                path.truncate(len);
            }
            Ok(())
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                check_narratives(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// fhirbolt reads some JSON that FHIR forbids by coercing it: a number or boolean written as
/// a string, a single object where an array belongs, `_x` on a complex element (moved into
/// `x`). Each shows as a difference of JSON kind, or a key gone, between what was sent and
/// what fhirbolt writes back; the resource is refused rather than stored coerced.
fn check_nothing_coerced(
    sent: &Value,
    written: &Value,
    path: &mut String,
) -> Result<(), CodecError> {
    match (sent, written) {
        (Value::Object(sent), Value::Object(written)) => {
            for (key, child) in sent {
                let len = path.len();
                push_segment(path, key);
                let Some(back) = written.get(key) else {
                    return Err(structure(path, "is not an element here"));
                };
                check_nothing_coerced(child, back, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        (Value::Array(sent), Value::Array(written)) if sent.len() == written.len() => {
            for (index, (child, back)) in sent.iter().zip(written).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                check_nothing_coerced(child, back, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        (Value::Array(_), _) | (_, Value::Array(_)) => Err(structure(
            path,
            "an array where FHIR has a single value, or the reverse",
        )),
        _ if kind(sent) == kind(written) => Ok(()),
        _ => Err(structure(
            path,
            &format!("a {} where FHIR has a {}", kind(sent), kind(written)),
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn parse_strict(value: Value) -> Result<Resource, CodecError> {
    let config = DeserializationConfig {
        mode: DeserializationMode::Strict,
    };
    fhirbolt::json::from_json_value::<Resource>(value, Some(config))
        .map_err(|e| CodecError::Model(e.to_string()))
}

fn root_name(value: &Value) -> Result<String, CodecError> {
    match value.get("resourceType") {
        Some(Value::String(t)) if !t.is_empty() => Ok(t.clone()),
        _ => Err(structure("", "resourceType is missing or not a string")),
    }
}

/// FHIR JSON forbids empty arrays, objects and strings, and control characters in strings.
/// `null` is allowed only inside arrays that align primitive extensions
/// (`"given": ["A", null], "_given": [null, {...}]`), which [`check_object`] checks.
fn check_structure(value: &Value, path: &mut String, depth: usize) -> Result<(), CodecError> {
    if depth > MAX_DEPTH {
        return Err(structure(path, "nested too deeply"));
    }
    match value {
        Value::String(s) if s.is_empty() => Err(structure(path, "empty string")),
        Value::String(s) if s.chars().any(is_forbidden_control) => {
            Err(structure(path, "control character in a string"))
        }
        Value::Number(n) if n.to_string().len() > MAX_NUMBER_CHARS => Err(structure(
            path,
            &format!("a number longer than {MAX_NUMBER_CHARS} characters"),
        )),
        // `1e400`: no decimal a FHIR client could read back (it overflows a double).
        Value::Number(n) if n.as_f64().is_none() => {
            Err(structure(path, "a number out of any decimal's range"))
        }
        Value::Array(items) => check_array(items, path, depth),
        Value::Object(map) if map.is_empty() => Err(structure(path, "empty object")),
        Value::Object(map) => check_object(map, path, depth),
        _ => Ok(()),
    }
}

/// R4 elements of type positiveInt, by JSON name. fhirbolt reads positiveInt as a `u32` and so
/// takes 0, which FHIR forbids. The names are those every R4 type uses for positiveInt only,
/// those it uses for positiveInt or a complex type (a number can only be the positiveInt), and
/// the `[x]` choices; `sequence`, `count`, `number` and `priority` are also integers or
/// unsignedInts elsewhere, and 0 is left to fhirbolt for them. (Listed from fhirbolt's own R4
/// model: the fields typed `PositiveInt`.)
const POSITIVE_INTS: &[&str] = &[
    "careTeamSequence",
    "countMax",
    "detailSequence",
    "diagnosisSequence",
    "dimensions",
    "frames",
    "frequency",
    "frequencyMax",
    "groupSize",
    "height",
    "informationSequence",
    "itemSequence",
    "limit",
    "minutesDuration",
    "noteNumber",
    "order",
    "precedence",
    "procedureSequence",
    "rank",
    "repetitions",
    "subDetailSequence",
    "subdetailSequence",
    "supportingInfoSequence",
    "width",
];

fn is_positive_int(key: &str) -> bool {
    key.ends_with("PositiveInt") || POSITIVE_INTS.contains(&key)
}

/// R4 elements of type instant, by path without array indices: fhirbolt keeps an instant as
/// text and checks nothing, so `"issued": "2024-03-05"` would be stored. (Listed from
/// fhirbolt's own R4 model: the fields typed `Instant`; those inside types, Meta and
/// Signature, by their suffix.)
const INSTANT_PATHS: &[&str] = &[
    "Appointment.start",
    "Appointment.end",
    "AppointmentResponse.start",
    "AppointmentResponse.end",
    "AuditEvent.recorded",
    "Bundle.timestamp",
    "Bundle.entry.request.ifModifiedSince",
    "Bundle.entry.response.lastModified",
    "DeviceMetric.calibration.time",
    "DiagnosticReport.issued",
    "DocumentReference.date",
    "Media.issued",
    "Observation.issued",
    "Provenance.recorded",
    "Slot.start",
    "Slot.end",
    "Subscription.end",
];
const INSTANT_SUFFIXES: &[&str] = &[".meta.lastUpdated", ".signature.when"];

fn is_instant_path(path: &str) -> bool {
    let mut bare = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            _ if !in_index => bare.push(c),
            _ => {}
        }
    }
    // `[x]` choices name their type: `valueInstant`, `effectiveInstant`.
    let choice = bare
        .rsplit('.')
        .next()
        .is_some_and(|last| last.ends_with("Instant"));
    choice
        || INSTANT_PATHS.contains(&bare.as_str())
        || INSTANT_SUFFIXES.iter().any(|s| bare.ends_with(s))
}

/// FHIR's instant: `YYYY-MM-DDThh:mm:ss`, optional fraction, then `Z` or `±hh:mm`.
fn is_instant(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let shape = digits(0..4)
        && bytes.get(4) == Some(&b'-')
        && digits(5..7)
        && bytes.get(7) == Some(&b'-')
        && digits(8..10)
        && bytes.get(10) == Some(&b'T')
        && digits(11..13)
        && bytes.get(13) == Some(&b':')
        && digits(14..16)
        && bytes.get(16) == Some(&b':')
        && digits(17..19);
    if !shape {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let n = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    // R4's offsets run from -14:00 to +14:00.
    let zone_ok = rest == "Z"
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':'
            && rest[1..3]
                .bytes()
                .chain(rest[4..6].bytes())
                .all(|b| b.is_ascii_digit())
            && (&rest[1..3] < "14" || &rest[1..] == "14:00"));
    // The calendar and clock ranges (month 13, hour 25) by a real parse.
    zone_ok && chrono::DateTime::parse_from_rfc3339(text).is_ok()
}

/// R4 elements of type date or dateTime (instant, a dateTime with every part, in places), by
/// JSON name: the names that no R4 type uses for anything JSON writes as a string. fhirbolt
/// keeps these as unchecked text, so `"birthDate": "yesterday"` would be stored and then
/// break every date search and every client that parses it. (Listed from fhirbolt's own R4
/// model: the fields typed `Date`, `DateTime` or `Instant` whose name has no string-valued
/// type elsewhere; `start`, which GraphDefinition uses for a code, is checked only in a
/// Period.) `[x]` choices name their type: `valueDate`, `effectiveDateTime`.
const DATE_TIME_NAMES: &[&str] = &[
    "approvalDate",
    "authored",
    "authoredOn",
    "birthDate",
    "created",
    "creation",
    "date",
    "dateAsserted",
    "dateOfFirstAuthorization",
    "dateTime",
    "dateWritten",
    "detected",
    "effectiveDate",
    "effectiveTime",
    "end",
    "enteredDate",
    "event",
    "expirationDate",
    "expiry",
    "ifModifiedSince",
    "internationalBirthDate",
    "issued",
    "lastModified",
    "lastOccurrence",
    "lastPerformed",
    "lastReviewDate",
    "lastUpdated",
    "lockedDate",
    "manufactureDate",
    "nextScheduled",
    "occurrenceDateTime",
    "onset",
    "paymentDate",
    "presentationDate",
    "publicationDate",
    "received",
    "receivedTime",
    "recorded",
    "recordedDate",
    "recordedOn",
    "releaseDate",
    "restoreDate",
    "sent",
    "started",
    "statusDate",
    "time",
    "timestamp",
    "validTo",
    "validationDate",
    "verificationDate",
    "whenHandedOver",
    "whenPrepared",
];

/// Of those, the names typed `date` wherever they appear: no time of day.
const DATE_ONLY_NAMES: &[&str] = &[
    "approvalDate",
    "birthDate",
    "lastReviewDate",
    "nextScheduled",
];

/// R4 elements of type time that are not `[x]` choices (listed from fhirbolt's R4 model).
const TIME_NAMES: &[&str] = &[
    "availableEndTime",
    "availableStartTime",
    "closingTime",
    "openingTime",
    "timeOfDay",
];

/// The temporal types whose text the codec checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Temporal {
    Date,
    DateTime,
    Time,
}

/// What a string at `key` (under `parent`, the parent's path) must be, if a temporal type.
fn temporal_kind(parent: &str, key: &str) -> Option<Temporal> {
    if DATE_ONLY_NAMES.contains(&key) {
        return Some(Temporal::Date);
    }
    if key.ends_with("Date") {
        // `valueDate`; but `effectiveDate` is a dateTime.
        return Some(match DATE_TIME_NAMES.contains(&key) {
            true => Temporal::DateTime,
            false => Temporal::Date,
        });
    }
    if key.ends_with("DateTime") || DATE_TIME_NAMES.contains(&key) {
        return Some(Temporal::DateTime);
    }
    // `valueTime`, `answerTime`: choices of type time (`effectiveTime` is listed above).
    if TIME_NAMES.contains(&key) || key.ends_with("Time") {
        return Some(Temporal::Time);
    }
    let in_period = parent
        .rsplit('.')
        .next()
        .map(|last| last.split('[').next().unwrap_or(last))
        .is_some_and(|last| last == "period" || last.ends_with("Period"));
    (in_period && key == "start").then_some(Temporal::DateTime)
}

/// FHIR's time: `hh:mm:ss`, optional fraction, hours 00 to 23.
fn is_time(text: &str) -> bool {
    let (clock, fraction) = match text.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (text, None),
    };
    let fraction_ok =
        fraction.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    let parts: Vec<&str> = clock.split(':').collect();
    let two_digits = |p: &str| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit());
    let value = |p: &str| p.parse::<u32>().unwrap_or(99);
    fraction_ok
        && parts.len() == 3
        && parts.iter().all(|p| two_digits(p))
        && value(parts[0]) <= 23
        && value(parts[1]) <= 59
        && value(parts[2]) <= 59
}

/// FHIR's date (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) and, unless `date_only`, dateTime: a date, or
/// a full date with a time to the second, optional fraction, and a zone.
fn is_date_time(text: &str, date_only: bool) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let number = |range: std::ops::Range<usize>| text[range].parse::<u32>().unwrap_or(0);
    if !digits(0..4) || number(0..4) == 0 {
        return false;
    }
    match bytes.len() {
        4 => return true,
        7 => {
            return bytes[4] == b'-' && digits(5..7) && (1..=12).contains(&number(5..7));
        }
        10 => {
            return bytes[4] == b'-'
                && bytes[7] == b'-'
                && digits(5..7)
                && digits(8..10)
                && chrono::NaiveDate::from_ymd_opt(
                    number(0..4) as i32,
                    number(5..7),
                    number(8..10),
                )
                .is_some();
        }
        _ => {}
    }
    !date_only && is_instant(text)
}

/// R4's invariant per-1: a Period's start is not after its end. Compared when both are dates
/// or both are dateTimes with a time (a date against a time depends on a zone neither has).
fn check_period_order(map: &Map<String, Value>, path: &str) -> Result<(), CodecError> {
    let last = path.rsplit('.').next().unwrap_or(path);
    let last = last.split('[').next().unwrap_or(last);
    if !(last == "period" || last.ends_with("Period")) {
        return Ok(());
    }
    let (Some(Value::String(start)), Some(Value::String(end))) = (map.get("start"), map.get("end"))
    else {
        return Ok(());
    };
    let after = if start.len() == end.len() && start.len() <= 10 {
        start > end
    } else {
        match (
            chrono::DateTime::parse_from_rfc3339(start),
            chrono::DateTime::parse_from_rfc3339(end),
        ) {
            (Ok(start), Ok(end)) => start > end,
            _ => false,
        }
    };
    if after {
        return Err(structure(path, "a Period's start is after its end (per-1)"));
    }
    Ok(())
}

/// A positiveInt (or each of an array of them) is at least 1. Values that are not numbers are
/// the other types some of these names have, or fhirbolt's to refuse.
fn check_positive(value: &Value, path: &str) -> Result<(), CodecError> {
    let zero = |v: &Value| v.as_number().is_some_and(|n| n.as_u64() == Some(0));
    match value {
        Value::Array(items) if items.iter().any(zero) => {
            Err(structure(path, "a positiveInt must be at least 1"))
        }
        v if zero(v) => Err(structure(path, "a positiveInt must be at least 1")),
        _ => Ok(()),
    }
}

/// A date, dateTime or time (or each of an array of them) has FHIR's shape and names a real
/// day or time. Values that are not strings are fhirbolt's to refuse.
fn check_temporal(value: &Value, path: &str, kind: Temporal) -> Result<(), CodecError> {
    let fits = |t: &str| match kind {
        Temporal::Date => is_date_time(t, true),
        Temporal::DateTime => is_date_time(t, false),
        Temporal::Time => is_time(t),
    };
    let bad = |v: &Value| v.as_str().is_some_and(|t| !fits(t));
    let wrong = match value {
        Value::Array(items) => items.iter().any(bad),
        v => bad(v),
    };
    if !wrong {
        return Ok(());
    }
    Err(structure(
        path,
        match kind {
            Temporal::Date => "a date is YYYY, YYYY-MM or YYYY-MM-DD, and a real one",
            Temporal::DateTime => {
                "a dateTime is YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.fff] with a \
                 time zone (Z or ±hh:mm up to 14:00), and a real one"
            }
            Temporal::Time => "a time is hh:mm:ss[.fff], from 00:00:00 to 23:59:59",
        },
    ))
}

/// FHIR strings exclude code points below U+0020 other than tab, CR and LF.
fn is_forbidden_control(c: char) -> bool {
    (c as u32) < 0x20 && !matches!(c, '\t' | '\r' | '\n')
}

fn check_object(
    map: &Map<String, Value>,
    path: &mut String,
    depth: usize,
) -> Result<(), CodecError> {
    check_period_order(map, path)?;
    let resource_type = map.get("resourceType").and_then(Value::as_str);
    let parent = codes::parent_element(path).to_string();
    for (key, child) in map {
        if let (Value::String(code), Some(allowed)) =
            (child, codes::required(resource_type, &parent, key))
        {
            // An empty code is refused as an empty string, below.
            if !code.is_empty() && !allowed.contains(&code.as_str()) {
                let mut at = path.clone();
                push_segment(&mut at, key);
                return Err(structure(
                    &at,
                    &format!(
                        "{:?} is not a code of the element's required value set ({})",
                        code.chars().take(64).collect::<String>(),
                        allowed.join(", ")
                    ),
                ));
            }
        }
        let len = path.len();
        push_segment(path, key);
        if let Some(primitive) = key.strip_prefix('_') {
            check_primitive_extension(map.get(primitive), child, path)?;
        } else if let Value::Array(items) = child {
            check_nulls_are_aligned(items, map.get(&format!("_{key}")), path)?;
        }
        if is_positive_int(key) {
            check_positive(child, path)?;
        }
        if let Value::String(text) = child {
            if is_instant_path(path) && !is_instant(text) {
                return Err(structure(
                    path,
                    "an instant is a date and time to the second with its time zone \
                     (YYYY-MM-DDThh:mm:ss[.fff]Z or ±hh:mm)",
                ));
            }
        }
        if let Some(kind) = temporal_kind(&path[..len], key) {
            check_temporal(child, path, kind)?;
        }
        check_structure(child, path, depth + 1)?;
        path.truncate(len);
    }
    Ok(())
}

/// `_x` carries the id and extensions of primitive `x`: an object beside a single value, an
/// array of the same length beside an array. Anything else would let fhirbolt replace or drop
/// the value itself.
fn check_primitive_extension(
    value: Option<&Value>,
    ext: &Value,
    path: &str,
) -> Result<(), CodecError> {
    let shape_ok = match (value, ext) {
        (None | Some(Value::String(_) | Value::Number(_) | Value::Bool(_)), Value::Object(_)) => {
            true
        }
        (None, Value::Array(exts)) => exts.iter().all(is_object_or_null),
        (Some(Value::Array(values)), Value::Array(exts)) if values.len() == exts.len() => {
            exts.iter().all(is_object_or_null)
        }
        (Some(Value::Array(_)), Value::Array(_)) => {
            return Err(structure(
                path,
                "must have as many items as the value it extends",
            ))
        }
        _ => false,
    };
    if shape_ok {
        Ok(())
    } else {
        Err(structure(
            path,
            "does not match the shape of the value it extends",
        ))
    }
}

fn is_object_or_null(value: &Value) -> bool {
    value.is_object() || value.is_null()
}

/// A `null` in a primitive array stands for a value given only through its `_x` partner.
fn check_nulls_are_aligned(
    items: &[Value],
    ext: Option<&Value>,
    path: &str,
) -> Result<(), CodecError> {
    for (index, item) in items.iter().enumerate() {
        let covered = ext
            .and_then(Value::as_array)
            .and_then(|exts| exts.get(index))
            .is_some_and(|e| !e.is_null());
        if item.is_null() && !covered {
            return Err(structure(
                &format!("{path}[{index}]"),
                "null without an extension",
            ));
        }
    }
    Ok(())
}

fn check_array(items: &[Value], path: &mut String, depth: usize) -> Result<(), CodecError> {
    if items.is_empty() {
        return Err(structure(path, "empty array"));
    }
    if items.iter().all(Value::is_null) {
        return Err(structure(path, "array of nulls"));
    }
    for (index, item) in items.iter().enumerate() {
        if item.is_array() {
            return Err(structure(path, "array inside an array"));
        }
        let len = path.len();
        path.push_str(&format!("[{index}]"));
        if !item.is_null() {
            check_structure(item, path, depth + 1)?;
        }
        path.truncate(len);
    }
    Ok(())
}

/// Whether `value` holds more than `limit` JSON values; stops counting as soon as it does.
fn exceeds_nodes(value: &Value, limit: usize) -> bool {
    let mut stack = vec![value];
    let mut seen = 0;
    while let Some(v) = stack.pop() {
        seen += 1;
        if seen > limit {
            return true;
        }
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    false
}

fn push_segment(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn structure(path: &str, message: &str) -> CodecError {
    CodecError::Structure {
        path: path.to_string(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_valid_patient_comes_back_in_canonical_order() {
        let input = json!({"gender": "female", "id": "p1", "resourceType": "Patient"});
        let out = canonicalize(input).unwrap();
        let keys: Vec<_> = out.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["resourceType", "id", "gender"]);
    }

    #[test]
    fn what_fhirbolt_would_coerce_is_refused() {
        let quantity = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "x"}, "valueQuantity": {"value": "12"}});
        for input in [
            json!({"resourceType": "Patient", "multipleBirthInteger": "2"}),
            json!({"resourceType": "Patient", "name": {"family": "A"}}),
            json!({"resourceType": "Patient", "_name": {"id": "x"}}),
            quantity,
        ] {
            let refused = canonicalize(input.clone());
            assert!(
                matches!(refused, Err(CodecError::Structure { .. })),
                "{input}: {refused:?}"
            );
        }
    }

    /// An Observation whose quantity is `value`, written as given (JSON number text).
    fn observation(value: &str) -> Value {
        serde_json::from_str::<Value>(&format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},
                "valueQuantity":{{"value":{value}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn a_number_beyond_a_doubles_range_is_refused() {
        let refused = canonicalize(observation("1e400")).unwrap_err().to_string();
        assert!(refused.contains("out of any decimal's range"), "{refused}");
        assert!(canonicalize(observation("1e300")).is_ok());
        assert!(canonicalize(observation("-0.000000000000000000001")).is_ok());
    }

    #[test]
    fn dates_and_date_times_must_have_fhirs_shape_and_name_a_real_day() {
        let patient = |birth: &str| json!({"resourceType": "Patient", "birthDate": birth});
        for good in ["1980", "1980-02", "1980-02-29"] {
            assert!(canonicalize(patient(good)).is_ok(), "{good}");
        }
        for bad in [
            "yesterday",
            "1981-02-29",
            "1980-13",
            "0000",
            "80-02-03",
            "1980-02-03T10:00:00Z",
            "03/02/1980",
        ] {
            let refused = canonicalize(patient(bad)).unwrap_err().to_string();
            assert!(
                refused.starts_with("Patient.birthDate: a date is"),
                "{bad}: {refused}"
            );
        }
        let observation = |effective: &str| {
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "effectiveDateTime": effective})
        };
        for good in [
            "2024",
            "2024-03-05",
            "2024-03-05T10:00:00+01:00",
            "2024-03-05T10:00:00.5Z",
            "2024-03-05T10:00:00+14:00",
            "2024-03-05T10:00:00-13:59",
        ] {
            assert!(canonicalize(observation(good)).is_ok(), "{good}");
        }
        for bad in [
            "2024-03-05T10:00:00",
            "2024-03-05T10:00Z",
            "2024-03-32",
            "now",
            "2024-03-05T10:00:00+14:01",
            "2024-03-05T10:00:00-15:00",
        ] {
            let refused = canonicalize(observation(bad)).unwrap_err().to_string();
            assert!(
                refused.starts_with("Observation.effectiveDateTime: a dateTime is"),
                "{bad}: {refused}"
            );
        }
        // A Period's start, an array of Timing events, and a code named `start` elsewhere.
        let encounter = json!({"resourceType": "Encounter", "status": "finished",
            "class": {"code": "AMB"}, "period": {"start": "2024-02-30"}});
        let refused = canonicalize(encounter).unwrap_err().to_string();
        assert!(refused.starts_with("Encounter.period.start"), "{refused}");
        let request = json!({"resourceType": "MedicationRequest", "status": "active",
            "intent": "order", "medicationCodeableConcept": {"text": "x"},
            "subject": {"reference": "Patient/p"},
            "dosageInstruction": [{"timing": {"event": ["2024-03-05T08:00:00Z", "soon"]}}]});
        let refused = canonicalize(request).unwrap_err().to_string();
        assert!(refused.contains("timing.event"), "{refused}");
        use Temporal::*;
        assert_eq!(temporal_kind("GraphDefinition", "start"), None);
        let due = temporal_kind("Goal.target[0].duePeriod", "start");
        assert_eq!(due, Some(DateTime));
        assert_eq!(temporal_kind("Extension", "valueDate"), Some(Date));
        let effective = temporal_kind("MedicationKnowledge", "effectiveDate");
        assert_eq!(effective, Some(DateTime));
        assert_eq!(
            temporal_kind("Observation", "effectiveTime"),
            Some(DateTime)
        );
        assert_eq!(temporal_kind("Observation", "valueTime"), Some(Time));
    }

    #[test]
    fn a_period_may_not_end_before_it_starts() {
        let encounter = |start: &str, end: &str| {
            json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                "period": {"start": start, "end": end}})
        };
        for (start, end) in [
            ("2020-03-01", "2020-02-01"),
            ("2020-03-01T10:00:00Z", "2020-03-01T09:59:59Z"),
            ("2020-03-01T10:00:00+01:00", "2020-03-01T08:30:00Z"),
        ] {
            let refused = canonicalize(encounter(start, end)).unwrap_err().to_string();
            assert!(refused.contains("per-1"), "{start} {end}: {refused}");
        }
        for (start, end) in [
            ("2020-02-01", "2020-03-01"),
            ("2020-03-01", "2020-03-01"),
            ("2020-03-01T10:00:00+01:00", "2020-03-01T09:30:00Z"),
            ("2020-03-01T10:00:00Z", "2020-03-01"),
        ] {
            assert!(canonicalize(encounter(start, end)).is_ok(), "{start} {end}");
        }
    }

    #[test]
    fn a_time_is_a_clock_time_of_one_day() {
        let observation = |value: &str| {
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "valueTime": value})
        };
        for good in ["00:00:00", "23:59:59", "12:30:00.250"] {
            assert!(canonicalize(observation(good)).is_ok(), "{good}");
        }
        for bad in [
            "24:00:00",
            "25:00:00",
            "12:60:00",
            "12:30",
            "12:30:00.",
            "noon",
        ] {
            let refused = canonicalize(observation(bad)).unwrap_err().to_string();
            assert!(
                refused.starts_with("Observation.valueTime: a time is"),
                "{bad}: {refused}"
            );
        }
        let timing = json!({"resourceType": "MedicationRequest", "status": "active",
            "intent": "order", "medicationCodeableConcept": {"text": "x"},
            "subject": {"reference": "Patient/p"},
            "dosageInstruction": [{"timing": {"repeat": {"timeOfDay": ["08:00:00", "8am"]}}}]});
        let refused = canonicalize(timing).unwrap_err().to_string();
        assert!(refused.contains("timeOfDay"), "{refused}");
    }

    #[test]
    fn an_instant_must_be_a_full_date_time_with_a_zone() {
        let report = |issued: &str| {
            json!({"resourceType": "DiagnosticReport", "status": "final",
                "code": {"text": "x"}, "issued": issued})
        };
        for good in [
            "2024-03-05T10:00:00Z",
            "2024-03-05T10:00:00.123+05:30",
            "2024-02-29T23:59:59-00:00",
        ] {
            assert!(canonicalize(report(good)).is_ok(), "{good}");
        }
        for bad in [
            "2024-03-05",
            "2024-03-05T10:00:00",
            "2024-03-05T10:00Z",
            "2024-13-05T10:00:00Z",
            "2023-02-29T10:00:00Z",
            "2024-03-05 10:00:00Z",
            "2024-03-05T10:00:00.Z",
            "2024-03-05T25:00:00Z",
        ] {
            let refused = canonicalize(report(bad)).unwrap_err().to_string();
            assert!(
                refused.starts_with("DiagnosticReport.issued: an instant"),
                "{bad}: {refused}"
            );
        }
        // Inside a Bundle entry's path, and in a Signature anywhere.
        assert!(is_instant_path("Bundle.entry[3].response.lastModified"));
        assert!(is_instant_path("Provenance.signature[0].when"));
        assert!(!is_instant_path("Observation.effectiveInstant.x"));
        assert!(is_instant_path("Observation.effectiveInstant"));
    }

    #[test]
    fn a_positive_int_of_zero_is_refused_naming_it() {
        let dose = |n: u32| {
            json!({"resourceType": "Immunization", "status": "completed",
                "vaccineCode": {"text": "x"}, "patient": {"reference": "Patient/p"},
                "occurrenceString": "x", "protocolApplied": [{"doseNumberPositiveInt": n}]})
        };
        let refused = canonicalize(dose(0)).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "Immunization.protocolApplied[0].doseNumberPositiveInt: a positiveInt must be at least 1"
        );
        assert!(canonicalize(dose(1)).is_ok());
        let timing = |count: u32, frequency: u32| {
            json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                "medicationCodeableConcept": {"text": "x"}, "subject": {"reference": "Patient/p"},
                "dosageInstruction": [{"sequence": 0, "timing": {"repeat":
                    {"count": count, "frequency": frequency, "period": 1, "periodUnit": "d"}}}]})
        };
        // `frequency` is a positiveInt; `sequence` (an integer here) may be 0.
        assert!(canonicalize(timing(1, 0)).is_err());
        assert!(canonicalize(timing(1, 2)).is_ok());
        let claim_item = json!({"resourceType": "Patient", "contact": [{"telecom":
            [{"system": "phone", "value": "1", "rank": 0}]}]});
        assert!(canonicalize(claim_item).is_err(), "ContactPoint.rank");
    }

    #[test]
    fn decimals_keep_their_text() {
        let input: Value = serde_json::from_str(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
                "valueQuantity":{"value":72.40}}"#,
        )
        .unwrap();
        let out = serde_json::to_string(&canonicalize(input).unwrap()).unwrap();
        assert!(out.contains("72.40"), "{out}");
    }

    #[test]
    fn an_empty_array_is_refused_with_its_path_instead_of_panicking() {
        let err = canonicalize(json!({"resourceType": "Patient", "name": []})).unwrap_err();
        assert_eq!(err, structure("Patient.name", "empty array"));
    }

    #[test]
    fn an_unknown_array_element_is_refused_and_returns() {
        let err = canonicalize(json!({"resourceType": "Patient", "foo": ["x"]})).unwrap_err();
        assert!(matches!(err, CodecError::Model(_)));
    }

    #[test]
    fn codes_outside_their_required_value_set_are_refused() {
        let err = canonicalize(json!({"resourceType": "Patient", "gender": "bogus"})).unwrap_err();
        assert!(
            matches!(&err, CodecError::Structure { path, .. } if path == "Patient.gender"),
            "{err}"
        );
        let name = json!({"resourceType": "Patient", "name": [{"use": "home", "family": "Q"}]});
        let err = canonicalize(name).unwrap_err();
        assert!(
            matches!(&err, CodecError::Structure { path, .. } if path == "Patient.name[0].use"),
            "{err}"
        );
        let contained = json!({"resourceType": "Patient", "contained": [
            {"resourceType": "Observation", "id": "o", "status": "done",
             "code": {"text": "x"}}]});
        assert!(canonicalize(contained).is_err());
        let fine = json!({"resourceType": "Patient", "gender": "unknown",
            "name": [{"use": "maiden", "family": "Q"}],
            "telecom": [{"system": "sms", "value": "1", "use": "mobile"}],
            "address": [{"use": "billing", "type": "both", "city": "X"}],
            "identifier": [{"use": "secondary", "value": "1"}]});
        assert!(canonicalize(fine).is_ok());
    }

    #[test]
    fn empty_strings_and_objects_are_refused() {
        let err = canonicalize(json!({"resourceType": "Patient", "gender": ""})).unwrap_err();
        assert_eq!(err, structure("Patient.gender", "empty string"));
        let err = canonicalize(json!({"resourceType": "Patient", "meta": {}})).unwrap_err();
        assert_eq!(err, structure("Patient.meta", "empty object"));
    }

    #[test]
    fn a_primitive_extension_cannot_replace_or_drop_its_value() {
        for bad in [
            json!({"resourceType": "Patient", "birthDate": "1980-01-01", "_birthDate": "1999-09-09"}),
            json!({"resourceType": "Patient", "birthDate": "1980-01-01", "_birthDate": [{"id": "a"}]}),
            json!({"resourceType": "Patient", "name": [{"family": "R", "_family": "O"}]}),
            json!({"resourceType": "Patient", "name": [{"given": ["A", "B"], "_given": [{"id": "x"}]}]}),
            json!({"resourceType": "Patient", "name": [{"given": ["A"], "_given": ["B"]}]}),
            json!({"resourceType": "Patient", "name": [{"_given": ["B"]}]}),
        ] {
            assert!(
                matches!(canonicalize(bad.clone()), Err(CodecError::Structure { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_null_without_an_extension_is_refused() {
        let bad = json!({"resourceType": "Patient", "name": [{"given": [null, "A"]}]});
        let err = canonicalize(bad).unwrap_err();
        assert_eq!(
            err,
            structure("Patient.name[0].given[0]", "null without an extension")
        );
    }

    #[test]
    fn control_characters_in_strings_are_refused() {
        let bad = json!({"resourceType": "Patient", "name": [{"family": "a\u{0}b"}]});
        assert!(canonicalize(bad).is_err());
        let fine = json!({"resourceType": "Patient", "name": [{"text": "line\nnext\ttab"}]});
        assert!(canonicalize(fine).is_ok());
    }

    #[test]
    fn a_resource_with_absurdly_many_elements_is_refused_before_the_model_is_built() {
        let names: Vec<Value> = (0..MAX_NODES).map(|_| json!({"family": "x"})).collect();
        let err = canonicalize(json!({"resourceType": "Patient", "name": names})).unwrap_err();
        assert_eq!(
            err,
            structure("Patient", "more elements than one resource may hold")
        );
    }

    #[test]
    fn a_number_longer_than_the_bound_is_refused_with_its_path() {
        let longest = format!("0.{}", "1".repeat(MAX_NUMBER_CHARS - 2));
        let out = canonicalize(observation(&longest)).unwrap();
        assert_eq!(out["valueQuantity"]["value"].to_string(), longest);
        let err = canonicalize(observation(&format!("{longest}1"))).unwrap_err();
        assert_eq!(
            err,
            structure(
                "Observation.valueQuantity.value",
                "a number longer than 64 characters"
            )
        );
    }

    #[test]
    fn a_missing_resource_type_is_refused() {
        assert!(canonicalize(json!({"id": "x"})).is_err());
    }

    #[test]
    fn primitive_extension_alignment_with_nulls_is_accepted() {
        let input = json!({"resourceType": "Patient", "name": [{"given": ["A", "B"],
            "_given": [null, {"extension": [{"url": "http://x", "valueString": "y"}]}]}]});
        assert!(canonicalize(input).is_ok());
    }
}
