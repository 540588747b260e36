//! FHIR XML in and out, through fhirbolt, with the checks it lacks.
//!
//! The server keeps and splices canonical JSON; XML exists only at the HTTP boundary. A posted
//! XML document becomes the JSON the JSON path would have produced ([`xml_to_json`]), and a
//! response is written as XML from its JSON text ([`json_to_xml`]).
//!
//! Before fhirbolt sees a document, [`prepare`] walks it once with quick-xml (the parser
//! fhirbolt itself uses) and refuses what a server facing untrusted input must not read:
//! bytes that are not UTF-8, DOCTYPE declarations (so no entity can be defined, let alone
//! expanded), processing instructions, CDATA, unknown entity references, nesting deeper than
//! [`MAX_DEPTH`] (fhirbolt recurses per element) and more than [`MAX_NODES`] elements. It also
//! normalises what real senders write and fhirbolt refuses (LIBRARIES.md, fhirbolt item 6): a
//! lower-case `utf-8` or a `standalone` in the declaration, and `xsi` namespace declarations
//! and `xsi:*` attributes (a `schemaLocation`) on the root element.
//!
//! fhirbolt re-indents narrative XHTML both ways and drops the whitespace next to inline tags
//! (`Seen by <b>Dr</b> on` became `Seen by<b>Dr</b>on`), so the narrative is carried past it:
//! the `div` as written in the XML becomes the JSON `div` ([`keep_narratives_from_xml`]), and the
//! JSON `div` is written into the XML ([`write_narratives_into_xml`]). A known loss that
//! remains (fhirbolt item 7): exponents are written in lower case.

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use serde_json::Value;

use crate::{CodecError, MAX_DEPTH, MAX_NODES};

/// Attributes one element may carry.
const MAX_ATTRIBUTES: usize = 32;

const XSI_NAMESPACE: &[u8] = b"http://www.w3.org/2001/XMLSchema-instance";
const DOCTYPE_REFUSED: &str = "DOCTYPE declarations (and entities) are refused";

/// One FHIR XML resource (a Bundle included) as the JSON fhirbolt writes for it.
pub fn xml_to_json(bytes: &[u8]) -> Result<Value, CodecError> {
    let prepared = prepare(bytes)?;
    let config = DeserializationConfig {
        mode: DeserializationMode::Strict,
    };
    let parsed = catch_unwind(AssertUnwindSafe(|| {
        fhirbolt::xml::from_slice::<Resource>(&prepared, Some(config))
    }))
    .map_err(|_| CodecError::Model("the XML resource could not be read".into()))?
    .map_err(|e| CodecError::Model(e.to_string()))?;
    let mut json = catch_unwind(AssertUnwindSafe(|| {
        fhirbolt::json::to_json_value(parsed, None)
    }))
    .map_err(|_| CodecError::Model("the resource could not be written".into()))?
    .map_err(|e| CodecError::Model(e.to_string()))?;
    keep_narratives_from_xml(&prepared, &mut json);
    Ok(json)
}

pub(crate) const XHTML_NAMESPACE: &str = "http://www.w3.org/1999/xhtml";

/// The byte ranges of the narrative `div` elements of a FHIR XML document (those not inside
/// another), in document order; `None` when the document cannot be read.
fn narrative_ranges(xml: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
    let mut reader = Reader::from_reader(xml);
    let mut ranges = Vec::new();
    let (mut depth, mut begin) = (0usize, 0usize);
    loop {
        let start = reader.buffer_position();
        let event = reader.read_event().ok()?;
        let end = reader.buffer_position();
        match event {
            Event::Eof => return Some(ranges),
            Event::Start(tag) if depth == 0 && tag.name().as_ref() == b"div" => {
                (depth, begin) = (1, start);
            }
            Event::Start(_) if depth > 0 => depth += 1,
            Event::End(_) if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    ranges.push(begin..end);
                }
            }
            Event::Empty(tag) if depth == 0 && tag.name().as_ref() == b"div" => {
                ranges.push(start..end)
            }
            _ => {}
        }
    }
}

/// Every narrative `div` string of a JSON resource, in document order (FHIR names no other
/// element `div`).
fn narrative_slots(value: &mut Value) -> Vec<&mut String> {
    let mut slots = Vec::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                // Reversed onto the stack, so they come off in document order.
                for (key, child) in map.iter_mut().rev() {
                    if key == "div" {
                        if let Value::String(text) = child {
                            slots.push(text);
                            continue;
                        }
                    }
                    stack.push(child);
                }
            }
            Value::Array(items) => stack.extend(items.iter_mut().rev()),
            _ => {}
        }
    }
    slots
}

/// An XHTML `div` as FHIR requires it: the element itself, declaring the XHTML namespace.
fn is_own_xhtml_div(text: &str) -> bool {
    let start_tag = text.split('>').next().unwrap_or("");
    text.starts_with("<div") && start_tag.contains(XHTML_NAMESPACE)
}

/// Replaces the narratives fhirbolt read (re-indented, spaces beside inline tags lost) with
/// the `div`s as the XML document holds them. When the two cannot be paired one to one,
/// fhirbolt's stand.
fn keep_narratives_from_xml(xml: &[u8], json: &mut Value) {
    let Some(ranges) = narrative_ranges(xml) else {
        return;
    };
    let slots = narrative_slots(json);
    if slots.len() != ranges.len() {
        return;
    }
    // Paired in document order, each must be the same narrative but for whitespace: fhirbolt
    // takes elements out of order (a `contained` before `text`), and its JSON then lists
    // the narratives in another order than the document (a hostile pass saw a resource's
    // narrative stored on the resource it contained, and the reverse).
    let written: Vec<&str> = ranges
        .iter()
        .map(|range| std::str::from_utf8(&xml[range.clone()]).unwrap_or(""))
        .collect();
    let paired = slots
        .iter()
        .zip(&written)
        .all(|(slot, text)| same_but_whitespace(slot, text));
    if !paired {
        return;
    }
    for (slot, text) in slots.into_iter().zip(written) {
        if is_own_xhtml_div(text) {
            *slot = text.to_string();
        }
    }
}

/// Whether two texts differ at most in whitespace.
fn same_but_whitespace(a: &str, b: &str) -> bool {
    let mut a = a.chars().filter(|c| !c.is_whitespace());
    let mut b = b.chars().filter(|c| !c.is_whitespace());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (x, y) if x == y => {}
            _ => return false,
        }
    }
}

/// Writes each JSON narrative `div` into fhirbolt's XML in place of its re-indented copy.
/// When they cannot be paired one to one, or the result would not read back, fhirbolt's
/// output stands.
fn write_narratives_into_xml(json: &[u8], xml: Vec<u8>) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<Value>(json) else {
        return xml;
    };
    let slots = narrative_slots(&mut value);
    let Some(ranges) = narrative_ranges(&xml) else {
        return xml;
    };
    if slots.len() != ranges.len() || slots.is_empty() {
        return xml;
    }
    let mut out = Vec::with_capacity(xml.len());
    let mut from = 0;
    for (slot, range) in slots.into_iter().zip(ranges) {
        out.extend_from_slice(&xml[from..range.start]);
        if is_own_xhtml_div(slot) {
            out.extend_from_slice(slot.as_bytes());
        } else {
            out.extend_from_slice(&xml[range.clone()]);
        }
        from = range.end;
    }
    out.extend_from_slice(&xml[from..]);
    match narrative_ranges(&out) {
        Some(_) if reads_back(&out) => out,
        _ => xml,
    }
}

/// Whether `xml` is well-formed, end tags matching.
fn reads_back(xml: &[u8]) -> bool {
    let mut reader = Reader::from_reader(xml);
    reader.check_end_names(true);
    loop {
        match reader.read_event() {
            Ok(Event::Eof) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// A FHIR JSON resource (compact, as the server writes it) as indented FHIR XML.
///
/// A narrative `div` that is not XHTML (plain text is legal-looking JSON that fhirbolt accepts)
/// would come out as text without its `<div>`, which no XML reader takes back, so it is an
/// error here instead.
pub fn json_to_xml(json: &[u8]) -> Result<Vec<u8>, CodecError> {
    match bundle_to_xml(json)? {
        Some(xml) => Ok(xml),
        None => resource_to_xml(json),
    }
}

/// The id of the stand-in for entry `n`'s resource in [`bundle_to_xml`].
fn stand_in_id(n: usize) -> String {
    format!("hl7bridge-entry-{n}")
}

/// A Bundle holding resources, written entry by entry: the Bundle with a small stand-in for
/// each entry's resource, then each resource on its own in its stand-in's place. fhirbolt's
/// model of a whole search page took over a hundred times its JSON in memory (a hostile
/// tester's page of 30 MB of Patients peaked at 4.8 GB written as XML); one entry at a time,
/// the largest entry decides. `None` for anything else.
fn bundle_to_xml(json: &[u8]) -> Result<Option<Vec<u8>>, CodecError> {
    if !json.windows(8).any(|w| w == b"\"Bundle\"") {
        return Ok(None);
    }
    let Ok(mut bundle) = serde_json::from_slice::<Value>(json) else {
        return Ok(None);
    };
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Ok(None);
    }
    let Some(Value::Array(entries)) = bundle.get_mut("entry") else {
        return Ok(None);
    };
    let mut resources = Vec::new();
    for (n, entry) in entries.iter_mut().enumerate() {
        if let Some(resource) = entry.get_mut("resource") {
            let stand_in = serde_json::json!({
                "resourceType": "Basic", "id": stand_in_id(n), "code": {"text": "entry"}
            });
            resources.push((n, std::mem::replace(resource, stand_in)));
        }
    }
    if resources.is_empty() {
        return Ok(None);
    }
    let written =
        |value: &Value| serde_json::to_vec(value).map_err(|e| CodecError::Model(e.to_string()));
    let envelope = resource_to_xml(&written(&bundle)?)?;
    drop(bundle);
    let lost = || CodecError::Model("an entry's place in the Bundle's XML was lost".into());
    let mut out = Vec::with_capacity(envelope.len());
    let mut from = 0;
    for (n, resource) in resources {
        let marker = format!("<id value=\"{}\"/>", stand_in_id(n));
        let at = from + find(&envelope[from..], marker.as_bytes()).ok_or_else(lost)?;
        let start = envelope[from..at]
            .windows(6)
            .rposition(|w| w == b"<Basic")
            .map(|i| from + i)
            .ok_or_else(lost)?;
        let end = at + find(&envelope[at..], b"</Basic>").ok_or_else(lost)? + b"</Basic>".len();
        out.extend_from_slice(&envelope[from..start]);
        let xml = resource_to_xml(&written(&resource)?)?;
        out.extend_from_slice(without_declaration(&xml));
        from = end;
    }
    out.extend_from_slice(&envelope[from..]);
    Ok(Some(out))
}

/// An XML document without its `<?xml …?>` declaration (and the line break after it).
fn without_declaration(xml: &[u8]) -> &[u8] {
    if !xml.starts_with(b"<?xml") {
        return xml;
    }
    match find(xml, b"?>") {
        Some(end) => xml[end + 2..].trim_ascii_start(),
        None => xml,
    }
}

/// One resource as XML through fhirbolt, its narratives as the JSON has them.
fn resource_to_xml(json: &[u8]) -> Result<Vec<u8>, CodecError> {
    if let Some(at) = plain_text_div(json) {
        return Err(CodecError::Model(format!(
            "a narrative div at byte {at} is not XHTML and cannot be written as XML"
        )));
    }
    let config = DeserializationConfig {
        mode: DeserializationMode::Strict,
    };
    let parsed = catch_unwind(AssertUnwindSafe(|| {
        fhirbolt::json::from_slice::<Resource>(json, Some(config))
    }))
    .map_err(|_| CodecError::Model("the resource could not be read".into()))?
    .map_err(|e| CodecError::Model(e.to_string()))?;
    let xml = catch_unwind(AssertUnwindSafe(|| fhirbolt::xml::to_vec(&parsed, None)))
        .map_err(|_| CodecError::Model("the resource could not be written as XML".into()))?
        .map_err(|e| CodecError::Model(e.to_string()))?;
    Ok(write_narratives_into_xml(json, xml))
}

/// FHIR XML as fhirbolt writes it (indented), without the indentation: the whitespace-only
/// text between elements is dropped, and everything else is kept byte for byte, the narrative
/// XHTML whole (whitespace between inline tags is content there). FHIR puts primitive values
/// in attributes, so outside the narrative no text is content.
pub fn compact_xml(xml: &[u8]) -> Vec<u8> {
    let mut reader = Reader::from_reader(xml);
    let mut dropped: Vec<std::ops::Range<usize>> = Vec::new();
    // Elements open inside the narrative `div`, itself included.
    let mut in_narrative = 0usize;
    loop {
        let start = reader.buffer_position();
        let Ok(event) = reader.read_event() else {
            // Not what fhirbolt writes: left as it is.
            return xml.to_vec();
        };
        let end = reader.buffer_position();
        match event {
            Event::Eof => break,
            Event::Start(tag) if in_narrative > 0 || tag.name().as_ref() == b"div" => {
                in_narrative += 1;
            }
            Event::End(_) if in_narrative > 0 => in_narrative -= 1,
            Event::Text(text) if in_narrative == 0 && text.iter().all(u8::is_ascii_whitespace) => {
                dropped.push(start..end);
            }
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(xml.len());
    let mut from = 0;
    for range in dropped {
        out.extend_from_slice(&xml[from..range.start]);
        from = range.end;
    }
    out.extend_from_slice(&xml[from..]);
    out
}

/// Where a `"div":"` value does not start with `<div`. In compact JSON that pattern can only be
/// a key and its string value: inside a string the quotes would be escaped.
fn plain_text_div(json: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"div\":\"";
    let mut from = 0;
    while let Some(found) = find(&json[from..], KEY) {
        let value = from + found + KEY.len();
        if !json[value..].starts_with(b"<div") {
            return Some(value);
        }
        from = value;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn find_ignoring_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// The document checked and normalised for fhirbolt (see the module documentation).
pub(crate) fn prepare(bytes: &[u8]) -> Result<Cow<'_, [u8]>, CodecError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    // FHIR XML is UTF-8, and fhirbolt unwraps every name it decodes: a stray byte in an element
    // name panicked there (found by fuzzing), printing the bytes around it to stderr.
    if let Err(err) = std::str::from_utf8(bytes) {
        return Err(xml_error(err.valid_up_to(), "the document is not UTF-8"));
    }
    // quick-xml 0.25 asserts that a DOCTYPE has a name: in builds with debug assertions a
    // nameless one panicked before `Scan` could refuse it (found by fuzzing). Any DOCTYPE is
    // refused, so it is looked for first (a comment mentioning one is refused too).
    if let Some(at) = find_ignoring_case(bytes, b"<!DOCTYPE") {
        return Err(xml_error(at, DOCTYPE_REFUSED));
    }
    let mut reader = Reader::from_reader(bytes);
    reader.check_end_names(true);
    let mut scan = Scan::default();
    loop {
        let start = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| xml_error(reader.buffer_position(), &e.to_string()))?;
        let end = reader.buffer_position();
        if !scan.visit(event, start..end)? {
            break;
        }
    }
    if scan.depth != 0 || scan.root.is_none() {
        return Err(xml_error(
            bytes.len(),
            "the document ends before its root element",
        ));
    }
    Ok(scan.rewrite(bytes))
}

/// What [`prepare`] learns while reading the document once.
#[derive(Default)]
struct Scan {
    depth: usize,
    elements: usize,
    /// Where the XML declaration is, to be dropped once checked.
    declaration: Option<std::ops::Range<usize>>,
    /// The root start tag, and its replacement when it carried `xsi` attributes.
    root: Option<(std::ops::Range<usize>, Option<Vec<u8>>)>,
    closed: bool,
}

impl Scan {
    /// Checks one event; `false` at the end of the document.
    fn visit(&mut self, event: Event<'_>, at: std::ops::Range<usize>) -> Result<bool, CodecError> {
        let refuse = |what: &str| Err(xml_error(at.start, what));
        match event {
            Event::Eof => return Ok(false),
            Event::DocType(_) => return refuse(DOCTYPE_REFUSED),
            Event::PI(_) => return refuse("processing instructions are refused"),
            Event::CData(_) => return refuse("CDATA sections are not FHIR XML"),
            Event::Decl(decl) if self.root.is_none() && self.elements == 0 => {
                check_declaration(&decl, at.start)?;
                self.declaration = Some(at);
            }
            Event::Decl(_) => return refuse("an XML declaration after the start"),
            Event::Start(start) => {
                self.open(&start, at.clone(), false)?;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return refuse("elements nested too deeply");
                }
            }
            Event::Empty(start) => self.open(&start, at.clone(), true)?,
            Event::End(_) => {
                self.depth = self.depth.saturating_sub(1);
                self.closed = self.depth == 0;
            }
            Event::Text(text) => {
                text.unescape()
                    .map_err(|e| xml_error(at.start, &e.to_string()))?;
            }
            Event::Comment(_) => {}
        }
        Ok(true)
    }

    /// An element starts: counted, its attribute values checked, the root remembered.
    fn open(
        &mut self,
        start: &BytesStart<'_>,
        at: std::ops::Range<usize>,
        empty: bool,
    ) -> Result<(), CodecError> {
        if self.closed || (self.depth == 0 && self.root.is_some()) {
            return Err(xml_error(at.start, "content after the root element"));
        }
        self.elements += 1;
        if self.elements > MAX_NODES {
            return Err(xml_error(
                at.start,
                "more elements than one resource may hold",
            ));
        }
        // Checking names for duplicates costs the square of their number: count them first,
        // without that check. A FHIR element has `value`, `id` or `url`; XHTML a few more.
        if start.attributes().with_checks(false).count() > MAX_ATTRIBUTES {
            return Err(xml_error(
                at.start,
                &format!("an element with more than {MAX_ATTRIBUTES} attributes"),
            ));
        }
        for attribute in start.attributes() {
            let attribute = attribute.map_err(|e| xml_error(at.start, &e.to_string()))?;
            attribute
                .unescape_value()
                .map_err(|e| xml_error(at.start, &e.to_string()))?;
        }
        if self.depth == 0 {
            let replacement = without_xsi(start, at.end - at.start, empty);
            self.root = Some((at, replacement));
        }
        Ok(())
    }

    fn rewrite<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let root = self.root.as_ref();
        let replacement = root.and_then(|(range, tag)| tag.as_ref().map(|t| (range, t)));
        match (&self.declaration, replacement) {
            (None, None) => Cow::Borrowed(bytes),
            (Some(decl), None) => Cow::Borrowed(&bytes[decl.end..]),
            (decl, Some((range, tag))) => {
                let from = decl.as_ref().map_or(0, |d| d.end);
                let mut out = Vec::with_capacity(bytes.len());
                out.extend_from_slice(&bytes[from..range.start]);
                out.extend_from_slice(tag);
                out.extend_from_slice(&bytes[range.end..]);
                Cow::Owned(out)
            }
        }
    }
}

/// Version 1.0 and UTF-8 in any case; `standalone` is ignored (the declaration is dropped).
fn check_declaration(decl: &quick_xml::events::BytesDecl<'_>, at: usize) -> Result<(), CodecError> {
    let version = decl.version().map_err(|e| xml_error(at, &e.to_string()))?;
    if version.as_ref() != b"1.0" {
        return Err(xml_error(at, "only XML version 1.0 is read"));
    }
    if let Some(encoding) = decl.encoding() {
        let encoding = encoding.map_err(|e| xml_error(at, &e.to_string()))?;
        if !encoding.eq_ignore_ascii_case(b"utf-8") {
            return Err(xml_error(at, "only UTF-8 is read"));
        }
    }
    Ok(())
}

/// The root start tag rebuilt without `xmlns:p` declarations of the XML Schema instance
/// namespace and without `p:*` attributes; `None` when it has none.
fn without_xsi(start: &BytesStart<'_>, len: usize, empty: bool) -> Option<Vec<u8>> {
    let attributes: Vec<_> = start.attributes().flatten().collect();
    let prefixes: Vec<&[u8]> = attributes
        .iter()
        .filter(|a| a.value.as_ref() == XSI_NAMESPACE)
        .filter_map(|a| a.key.as_ref().strip_prefix(b"xmlns:"))
        .collect();
    if prefixes.is_empty() {
        return None;
    }
    let is_xsi = |key: &[u8]| {
        key.strip_prefix(b"xmlns:")
            .is_some_and(|p| prefixes.contains(&p))
            || prefixes
                .iter()
                .any(|p| key.len() > p.len() && key.starts_with(p) && key[p.len()] == b':')
    };
    let mut tag = Vec::with_capacity(len);
    tag.push(b'<');
    tag.extend_from_slice(start.name().as_ref());
    for attribute in attributes.iter().filter(|a| !is_xsi(a.key.as_ref())) {
        let quote = if attribute.value.contains(&b'"') {
            b'\''
        } else {
            b'"'
        };
        tag.push(b' ');
        tag.extend_from_slice(attribute.key.as_ref());
        tag.extend_from_slice(&[b'=', quote]);
        tag.extend_from_slice(&attribute.value);
        tag.push(quote);
    }
    tag.extend_from_slice(if empty { b"/>" } else { b">" });
    Some(tag)
}

fn xml_error(at: usize, message: &str) -> CodecError {
    CodecError::Xml(format!("byte {at}: {message}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_narrative_posted_as_xml_keeps_its_text_as_written() {
        let xml = concat!(
            r#"<Bundle xmlns="http://hl7.org/fhir"><type value="collection"/>"#,
            r#"<entry><resource><Patient><text><status value="generated"/>"#,
            r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>Seen by <b>Dr Who</b> on <i>Monday</i>.</p></div>"#,
            r#"</text><contained><Organization><id value="o"/><text><status value="generated"/>"#,
            r#"<div xmlns="http://www.w3.org/1999/xhtml">Org &amp; <b>co</b></div></text>"#,
            r#"<name value="x"/></Organization></contained><gender value="male"/></Patient></resource></entry>"#,
            r#"</Bundle>"#
        );
        let json = xml_to_json(xml.as_bytes()).unwrap();
        let patient = &json["entry"][0]["resource"];
        assert_eq!(
            patient["text"]["div"],
            r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>Seen by <b>Dr Who</b> on <i>Monday</i>.</p></div>"#
        );
        assert_eq!(
            patient["contained"][0]["text"]["div"],
            r#"<div xmlns="http://www.w3.org/1999/xhtml">Org &amp; <b>co</b></div>"#
        );
        // And back out as XML, unchanged.
        let out = String::from_utf8(json_to_xml(json.to_string().as_bytes()).unwrap()).unwrap();
        assert!(
            out.contains("<p>Seen by <b>Dr Who</b> on <i>Monday</i>.</p>"),
            "{out}"
        );
        assert!(out.contains("Org &amp; <b>co</b>"), "{out}");
    }

    /// Found by a hostile pass: with `contained` before `text` (out of FHIR's order, which
    /// fhirbolt takes), pairing the documents' narratives in order swapped them.
    #[test]
    fn narratives_out_of_order_stay_on_their_own_resources() {
        let xml = concat!(
            r#"<Patient xmlns="http://hl7.org/fhir"><id value="ord"/>"#,
            r#"<contained><Patient><id value="c"/><text><status value="generated"/>"#,
            r#"<div xmlns="http://www.w3.org/1999/xhtml">CONTAINED</div></text></Patient></contained>"#,
            r#"<text><status value="generated"/>"#,
            r#"<div xmlns="http://www.w3.org/1999/xhtml">OUTER</div></text></Patient>"#
        );
        let json = xml_to_json(xml.as_bytes()).unwrap();
        let outer = json["text"]["div"].as_str().unwrap();
        let contained = json["contained"][0]["text"]["div"].as_str().unwrap();
        assert!(
            outer.contains("OUTER") && !outer.contains("CONTAINED"),
            "{outer}"
        );
        assert!(contained.contains("CONTAINED"), "{contained}");
    }

    #[test]
    fn a_bundle_written_entry_by_entry_is_the_bundle_written_whole() {
        let bundle = serde_json::json!({
            "resourceType": "Bundle", "type": "searchset", "total": 2,
            "link": [{"relation": "self", "url": "http://x/Patient"}],
            "entry": [
                {"fullUrl": "http://x/Patient/a", "resource": {
                    "resourceType": "Patient", "id": "a",
                    "text": {"status": "generated",
                             "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><b>Ann</b> Lee</div>"},
                    "contained": [{"resourceType": "Organization", "id": "o", "name": "Org"}],
                    "gender": "female"},
                 "search": {"mode": "match"}},
                {"request": {"method": "DELETE", "url": "Patient/gone"}},
                {"fullUrl": "http://x/Observation/b", "resource": {
                    "resourceType": "Observation", "id": "b", "status": "final",
                    "code": {"text": "x"}, "valueQuantity": {"value": 72.40}},
                 "search": {"mode": "include"}}
            ]
        });
        let json = bundle.to_string();
        let by_entry = json_to_xml(json.as_bytes()).unwrap();
        let whole = resource_to_xml(json.as_bytes()).unwrap();
        let text = String::from_utf8(compact_xml(&by_entry)).unwrap();
        // The same document, but that each entry's resource names its namespace again.
        assert_eq!(
            text.replace(r#"<Patient xmlns="http://hl7.org/fhir">"#, "<Patient>")
                .replace(
                    r#"<Observation xmlns="http://hl7.org/fhir">"#,
                    "<Observation>"
                ),
            String::from_utf8(compact_xml(&whole)).unwrap()
        );
        assert!(!text.contains("Basic"), "{text}");
        assert_eq!(
            xml_to_json(&by_entry).unwrap(),
            serde_json::from_str::<Value>(&json).unwrap()
        );
    }

    #[test]
    fn compact_xml_drops_the_indentation_and_keeps_the_narrative_whole() {
        let json = br#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><b>Ada</b> <i>Quill</i></div>"},"gender":"female","birthDate":"1980-02-03"}"#;
        let indented = json_to_xml(json).unwrap();
        assert!(
            indented.windows(3).any(|w| w == b"\n  "),
            "fhirbolt indents"
        );
        let compact = compact_xml(&indented);
        let text = String::from_utf8(compact.clone()).unwrap();
        assert!(
            text.contains(r#"<gender value="female"/><birthDate value="1980-02-03"/>"#),
            "{text}"
        );
        // The narrative exactly as the JSON holds it, spaces between inline tags included.
        assert!(
            text.contains(
                r#"<div xmlns="http://www.w3.org/1999/xhtml"><b>Ada</b> <i>Quill</i></div>"#
            ),
            "{text}"
        );
        // The same resource either way.
        assert_eq!(
            xml_to_json(&compact).unwrap(),
            xml_to_json(&indented).unwrap()
        );
    }

    use super::*;

    const PATIENT: &str = r#"<Patient xmlns="http://hl7.org/fhir"><id value="x1"/><gender value="female"/></Patient>"#;

    #[test]
    fn an_element_with_thousands_of_attributes_is_refused_quickly() {
        let attributes: String = (0..100_000).map(|i| format!(" a{i}=\"x\"")).collect();
        let document = format!(r#"<Patient xmlns="http://hl7.org/fhir"{attributes}/>"#);
        let started = std::time::Instant::now();
        let err = xml_to_json(document.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("more than 32 attributes"), "{err}");
        // Quadratic checking took minutes here; counting takes milliseconds.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn xml_becomes_the_json_the_json_path_produces() {
        let json = xml_to_json(PATIENT.as_bytes()).unwrap();
        let expected =
            serde_json::json!({"resourceType": "Patient", "id": "x1", "gender": "female"});
        assert_eq!(json, crate::canonicalize(expected).unwrap());
    }

    #[test]
    fn json_comes_back_from_its_xml() {
        let json = r#"{"resourceType":"Patient","id":"x1","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Ann</p></div>"},"gender":"female"}"#;
        let xml = json_to_xml(json.as_bytes()).unwrap();
        let back = xml_to_json(&xml).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(json).unwrap());
    }

    #[test]
    fn a_doctype_is_refused_so_no_entity_is_ever_defined() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><Patient xmlns="http://hl7.org/fhir"><gender value="&lol2;"/></Patient>"#;
        let err = xml_to_json(bomb.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("DOCTYPE"), "{err}");
    }

    #[test]
    fn an_undefined_entity_is_refused() {
        let xml = r#"<Patient xmlns="http://hl7.org/fhir"><gender value="&lol;"/></Patient>"#;
        assert!(matches!(
            xml_to_json(xml.as_bytes()),
            Err(CodecError::Xml(_))
        ));
    }

    #[test]
    fn deep_nesting_is_refused_before_fhirbolt_recurses() {
        let depth = 100_000;
        let xml = format!(
            "<Patient xmlns=\"http://hl7.org/fhir\">{}{}</Patient>",
            "<extension url=\"u\">".repeat(depth),
            "</extension>".repeat(depth)
        );
        let err = xml_to_json(xml.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("nested too deeply"), "{err}");
    }

    #[test]
    fn what_real_senders_write_is_normalised() {
        let xml = r#"<?xml version="1.0" encoding="utf-8" standalone="yes"?>
<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://hl7.org/fhir ../patient.xsd"><id value="x1"/><gender value="female"/></Patient>"#;
        let json = xml_to_json(xml.as_bytes()).unwrap();
        assert_eq!(json["gender"], "female");
    }

    #[test]
    fn broken_and_trailing_documents_are_refused() {
        for bad in [
            "<Patient xmlns=\"http://hl7.org/fhir\"><gender value=\"female\"></Patient>",
            "<Patient xmlns=\"http://hl7.org/fhir\">",
            "<Patient xmlns=\"http://hl7.org/fhir\"/><Patient xmlns=\"http://hl7.org/fhir\"/>",
            "<Patient xmlns=\"http://hl7.org/fhir\"><![CDATA[x]]></Patient>",
            "",
            "{\"resourceType\":\"Patient\"}",
        ] {
            assert!(
                matches!(xml_to_json(bad.as_bytes()), Err(CodecError::Xml(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_document_that_is_not_utf8_is_refused_before_fhirbolt_reads_it() {
        // The fuzzer's input (fhir_xml): 0x92 ends an element name, where fhirbolt unwrapped.
        let xml = b"<Patient xmlns=\"http://hl7.org/fhir\"><birthDate value=\"1990-02-02\">\
<extension url=\"http://hl7.org/fhir/StructureDefinition/patient-btihrmTei\">\
<valueDateTime\x92value=\"1990-02-\x8602T04:05:00Z\"/></extension></birthDate></Patient>";
        let err = xml_to_json(xml).unwrap_err();
        assert!(
            matches!(&err, CodecError::Xml(m) if m.contains("not UTF-8")),
            "{err}"
        );
    }

    #[test]
    fn a_doctype_without_a_name_is_refused_without_a_panic() {
        // The fuzzer's input (fhir_xml): quick-xml's debug assertion fired on `<!DOCTYPE>`.
        let xml = b"<!DOCTYPE><Par\"><gende\x00@valu/Patient>'";
        let err = xml_to_json(xml).unwrap_err();
        assert!(err.to_string().contains("DOCTYPE"), "{err}");
        let lower = b"<Patient xmlns=\"http://hl7.org/fhir\"><!doctype   ></Patient>";
        assert!(xml_to_json(lower).is_err());
    }

    #[test]
    fn a_plain_text_div_is_an_error_not_a_broken_document() {
        let json = r#"{"resourceType":"Patient","text":{"status":"generated","div":"just text"}}"#;
        assert!(json_to_xml(json.as_bytes()).is_err());
    }
}
