//! The official R4 examples (and the other hand-written resources) in ../shared/corpus/fhir
//! round-trip: created, then read back, they equal what was sent but for what the server owns
//! (`id` when the create assigned a new one, `meta.versionId`, `meta.lastUpdated`). JSON files
//! are compared as JSON, with numbers kept as written; XML files are created as XML, read back as
//! XML and compared element by element. Synthea's generated bundles are exercised elsewhere
//! (`corpus.rs`). Skipped (with a note) where the corpus is absent; required under CI.

use quick_xml::events::Event;
use serde_json::Value;

use crate::support::{corpus_dir, spawn_app, TestApp};

const FHIR_JSON: &str = "application/fhir+json";
const FHIR_XML: &str = "application/fhir+xml";

/// The corpus files of one extension that are examples rather than generated test data.
fn examples(extension: &str) -> Vec<std::path::PathBuf> {
    let Some(dir) = corpus_dir("fhir") else {
        return Vec::new();
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("synthea__")
        })
        .collect();
    files.sort();
    files
}

/// Creates `body` as a `resource_type` and reads it back in `format`: (create status, read body).
async fn create_then_read(
    app: &TestApp,
    resource_type: &str,
    format: &str,
    body: Vec<u8>,
) -> Result<String, String> {
    let created = app
        .client
        .post(format!("{}/{resource_type}", app.base))
        .header("content-type", format)
        .header("prefer", "return=minimal")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = created.status().as_u16();
    let location = created
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string());
    if status != 201 {
        return Err(format!(
            "create answered {status}: {}",
            created.text().await.unwrap()
        ));
    }
    let location = location.expect("a create names its Location");
    let path = location
        .split_once(&format!("/{resource_type}/"))
        .map(|(_, rest)| format!("/{resource_type}/{rest}"))
        .expect("the Location names the resource");
    let read = app
        .client
        .get(format!("{}{path}", app.base))
        .header("accept", format)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200, "{path}");
    Ok(read.text().await.unwrap())
}

/// What the server owns removed: `id`, `meta.versionId`, `meta.lastUpdated`, and a `meta`
/// left empty by that.
fn without_server_owned(mut resource: Value) -> Value {
    let map = resource.as_object_mut().unwrap();
    map.remove("id");
    if let Some(meta) = map.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            map.remove("meta");
        }
    }
    resource
}

#[tokio::test]
async fn every_json_example_reads_back_as_it_was_created() {
    round_trip_every("json", FHIR_JSON, json_resource_type, json_difference).await;
}

#[tokio::test]
async fn every_xml_example_reads_back_as_it_was_created() {
    round_trip_every("xml", FHIR_XML, xml_resource_type, xml_difference).await;
}

/// Creates every example file of `extension` in `format`, reads each back, and fails listing
/// every file refused or read back different.
async fn round_trip_every(
    extension: &str,
    format: &str,
    resource_type: fn(&[u8]) -> String,
    difference: fn(&[u8], &str) -> Option<String>,
) {
    let files = examples(extension);
    if files.is_empty() {
        return;
    }
    let app = spawn_app().await;
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(path).unwrap();
        let resource_type = resource_type(&bytes);
        match create_then_read(&app, &resource_type, format, bytes.clone()).await {
            Err(refusal) => failures.push(format!("{name}: {refusal}")),
            Ok(read) => failures.extend(difference(&bytes, &read).map(|d| format!("{name}: {d}"))),
        }
    }
    println!(
        "{} {extension} examples, {} failed",
        files.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    app.stop().await;
}

fn json_resource_type(bytes: &[u8]) -> String {
    let sent: Value = serde_json::from_slice(strip_bom(bytes)).unwrap();
    sent["resourceType"].as_str().unwrap().to_string()
}

fn json_difference(sent: &[u8], read: &str) -> Option<String> {
    let sent = without_server_owned(serde_json::from_slice(strip_bom(sent)).unwrap());
    let read = without_server_owned(serde_json::from_str(read).unwrap());
    (sent != read).then(|| first_difference(&sent, &read, ""))
}

fn xml_resource_type(bytes: &[u8]) -> String {
    xml_elements(bytes)[0].name.clone()
}

fn xml_difference(sent: &[u8], read: &str) -> Option<String> {
    let sent = without_server_owned_xml(xml_elements(sent));
    let read = without_server_owned_xml(xml_elements(read.as_bytes()));
    if let Some(at) = sent.iter().zip(&read).position(|(a, b)| a != b) {
        return Some(format!("sent {:?}, read {:?}", sent[at], read[at]));
    }
    (sent.len() != read.len()).then(|| format!("{} elements sent, {} read", sent.len(), read.len()))
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// Where two JSON values first differ, as a path with both sides.
fn first_difference(sent: &Value, read: &Value, at: &str) -> String {
    match (sent, read) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    None => return format!("{at}.{key} sent, not read back"),
                    Some(other) if other != value => {
                        return first_difference(value, other, &format!("{at}.{key}"))
                    }
                    Some(_) => {}
                }
            }
            let extra: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
            format!("{at}: read back with {extra:?} not sent")
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find(|(_, (x, y))| x != y)
            .map(|(i, (x, y))| first_difference(x, y, &format!("{at}[{i}]")))
            .unwrap_or_default(),
        _ => format!("{at}: sent {sent}, read {read}"),
    }
}

/// One XML element (or text run) in document order, with its depth and its attributes sorted:
/// what a comparison that ignores formatting (indentation, quote style, self-closing tags,
/// comments) needs.
#[derive(Debug, Clone, PartialEq)]
struct XmlNode {
    depth: usize,
    name: String,
    attributes: Vec<(String, String)>,
}

fn xml_elements(bytes: &[u8]) -> Vec<XmlNode> {
    let mut reader = quick_xml::Reader::from_reader(strip_bom(bytes));
    reader.trim_text(true);
    let mut buf = Vec::new();
    let mut depth = 0;
    let mut nodes = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).expect("well-formed XML") {
            Event::Start(e) => {
                nodes.push(element(depth, &e));
                depth += 1;
            }
            Event::Empty(e) => nodes.push(element(depth, &e)),
            Event::End(_) => depth -= 1,
            Event::Text(t) => nodes.push(XmlNode {
                depth,
                name: "#text".to_string(),
                attributes: vec![(String::new(), t.unescape().unwrap().to_string())],
            }),
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    nodes
}

fn element(depth: usize, e: &quick_xml::events::BytesStart) -> XmlNode {
    let mut attributes: Vec<_> = e
        .attributes()
        .map(|a| {
            let a = a.unwrap();
            let key = String::from_utf8_lossy(a.key.as_ref()).to_string();
            (key, a.unescape_value().unwrap().to_string())
        })
        .collect();
    attributes.sort();
    XmlNode {
        depth,
        name: String::from_utf8_lossy(e.name().as_ref()).to_string(),
        attributes,
    }
}

/// [`without_server_owned`] for XML: the root's `id`, and `meta`'s `versionId` and
/// `lastUpdated` (with `meta` itself when nothing else is left in it).
fn without_server_owned_xml(nodes: Vec<XmlNode>) -> Vec<XmlNode> {
    let mut kept: Vec<XmlNode> = Vec::with_capacity(nodes.len());
    let mut in_meta = false;
    for node in nodes {
        if node.depth == 1 {
            in_meta = node.name == "meta";
        }
        let owned = (node.depth == 1 && node.name == "id")
            || (in_meta && node.depth == 2 && ["versionId", "lastUpdated"].contains(&&*node.name));
        if !owned {
            kept.push(node);
        }
    }
    let empty_meta = |i: usize| {
        kept[i].depth == 1
            && kept[i].name == "meta"
            && kept.get(i + 1).is_none_or(|next| next.depth <= 1)
    };
    if let Some(i) = (0..kept.len()).find(|&i| empty_meta(i)) {
        kept.remove(i);
    }
    kept
}
