//! Bundles the server emits. Searchsets are assembled by splicing stored JSON text, so a
//! resource is never parsed or re-serialised on the way out.
//!
//! Every Bundle carries the W3C trace context of the request that produced it in
//! `Bundle.meta.extension` (see DESIGN.md, "Trace context").

use serde_json::{json, Value};

use crate::store::{instant_text, now_us, StoredResource};

/// The trace context an emitted Bundle carries.
#[derive(Debug, Clone)]
pub struct BundleTrace {
    pub extension_url: String,
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl BundleTrace {
    pub fn extension_url(canonical_base: &str) -> String {
        format!("{canonical_base}/StructureDefinition/w3c-trace-context")
    }

    fn extension(&self) -> Value {
        let mut parts = vec![json!({"url": "traceparent", "valueString": self.traceparent})];
        if let Some(state) = &self.tracestate {
            parts.push(json!({"url": "tracestate", "valueString": state}));
        }
        json!({"url": self.extension_url, "extension": parts})
    }
}

/// The trace context a posted Bundle carries in `meta.extension`, when valid.
pub fn carried_trace(bundle: &Value, extension_url: &str) -> Option<crate::telemetry::TraceParent> {
    let extensions = bundle.pointer("/meta/extension")?.as_array()?;
    let ours = extensions
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(extension_url))?;
    let part = |name: &str| {
        ours.get("extension")?
            .as_array()?
            .iter()
            .find(|e| e.get("url").and_then(Value::as_str) == Some(name))?
            .get("valueString")?
            .as_str()
    };
    crate::telemetry::TraceParent::from_carrier(part("traceparent"), part("tracestate"))
}

/// `Bundle.meta`: the trace extension (when there is a trace) and `lastUpdated`.
pub fn meta(trace: Option<&BundleTrace>) -> Value {
    let mut meta = serde_json::Map::new();
    if let Some(trace) = trace {
        meta.insert("extension".into(), json!([trace.extension()]));
    }
    meta.insert("lastUpdated".into(), json!(instant_text(now_us())));
    Value::Object(meta)
}

/// One searchset entry: a stored resource and how it got into the result.
pub struct SearchEntry<'a> {
    pub resource: &'a StoredResource,
    pub mode: &'static str,
}

/// A Bundle's opening elements as JSON text, without the entries: a new id, `meta` (the trace
/// and `lastUpdated`), `type`, `total` when known, and the links as (relation, url).
fn head(
    kind: &str,
    links: &[(&str, String)],
    total: Option<i64>,
    trace: Option<&BundleTrace>,
) -> String {
    let links: Vec<Value> = links
        .iter()
        .map(|(relation, url)| json!({"relation": relation, "url": url}))
        .collect();
    let mut head = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": meta(trace),
        "type": kind,
    });
    if let Some(total) = total {
        head["total"] = json!(total);
    }
    head["link"] = Value::Array(links);
    head.to_string()
}

/// A searchset Bundle as JSON text: `links` as (relation, url), `total` when known. `outcome`,
/// when given, is added as the first entry with `search.mode = outcome` (warnings about the
/// search itself).
pub fn searchset(
    base: &str,
    links: &[(&str, String)],
    total: Option<usize>,
    entries: &[SearchEntry<'_>],
    trace: Option<&BundleTrace>,
    outcome: Option<Value>,
) -> String {
    let head = head("searchset", links, total.map(|t| t as i64), trace);
    let size: usize = entries.iter().map(|e| e.resource.content.len() + 128).sum();
    if entries.is_empty() && outcome.is_none() {
        // FHIR JSON has no empty arrays: an empty result has no `entry` at all.
        return head;
    }
    let mut out = String::with_capacity(head.len() + size + 16);
    out.push_str(&head[..head.len() - 1]);
    out.push_str(",\"entry\":[");
    let mut first = true;
    if let Some(outcome) = outcome {
        let entry = json!({"resource": outcome, "search": {"mode": "outcome"}});
        out.push_str(&entry.to_string());
        first = false;
    }
    for entry in entries {
        if !first {
            out.push(',');
        }
        first = false;
        push_entry(&mut out, base, entry);
    }
    out.push_str("]}");
    out
}

/// One page of an instance history as JSON text, newest version first. Each entry says what
/// happened: created (version 1), updated, or deleted (no resource).
pub fn history(
    base: &str,
    links: &[(&str, String)],
    total: Option<i64>,
    versions: &[StoredResource],
    trace: Option<&BundleTrace>,
) -> String {
    let head = head("history", links, total, trace);
    if versions.is_empty() {
        return head;
    }
    let mut out = String::with_capacity(
        head.len()
            + versions
                .iter()
                .map(|v| v.content.len() + 256)
                .sum::<usize>(),
    );
    out.push_str(&head[..head.len() - 1]);
    out.push_str(",\"entry\":[");
    for (i, version) in versions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_history_entry(&mut out, base, version);
    }
    out.push_str("]}");
    out
}

fn push_history_entry(out: &mut String, base: &str, v: &StoredResource) {
    let path = format!("{}/{}", v.resource_type, v.id);
    let (method, url, status) = match (v.deleted, v.version_id) {
        (true, _) => ("DELETE", path.clone(), "204 No Content"),
        (false, 1) => ("POST", v.resource_type.clone(), "201 Created"),
        (false, _) => ("PUT", path.clone(), "200 OK"),
    };
    out.push_str("{\"fullUrl\":");
    out.push_str(&Value::String(format!("{base}/{path}")).to_string());
    if !v.deleted {
        out.push_str(",\"resource\":");
        out.push_str(&v.content);
    }
    let tail = json!({
        "request": {"method": method, "url": url},
        "response": {
            "status": status,
            "etag": format!("W/\"{}\"", v.version_id),
            "lastModified": instant_text(v.last_updated_us),
        },
    })
    .to_string();
    out.push(',');
    out.push_str(&tail[1..]);
}

fn push_entry(out: &mut String, base: &str, entry: &SearchEntry<'_>) {
    let r = entry.resource;
    let full_url = format!("{base}/{}/{}", r.resource_type, r.id);
    out.push_str("{\"fullUrl\":");
    out.push_str(&Value::String(full_url).to_string());
    out.push_str(",\"resource\":");
    out.push_str(&r.content);
    out.push_str(",\"search\":{\"mode\":\"");
    out.push_str(entry.mode);
    out.push_str("\"}}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str) -> StoredResource {
        StoredResource {
            resource_type: "Patient".into(),
            id: id.into(),
            version_id: 1,
            last_updated_us: 0,
            deleted: false,
            content: format!(r#"{{"resourceType":"Patient","id":"{id}","gender":"other"}}"#),
        }
    }

    #[test]
    fn a_spliced_searchset_is_valid_json_with_the_trace_in_meta() {
        let (a, b) = (stored("a"), stored("b"));
        let entries = [
            SearchEntry {
                resource: &a,
                mode: "match",
            },
            SearchEntry {
                resource: &b,
                mode: "include",
            },
        ];
        let trace = BundleTrace {
            extension_url: BundleTrace::extension_url("https://x.test/fhir"),
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: None,
        };
        let text = searchset(
            "http://h",
            &[("self", "http://h/Patient".into())],
            Some(1),
            &entries,
            Some(&trace),
            None,
        );
        let bundle: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(bundle["entry"][1]["fullUrl"], "http://h/Patient/b");
        assert_eq!(bundle["entry"][1]["search"]["mode"], "include");
        assert_eq!(bundle["entry"][0]["resource"]["gender"], "other");
        let ext = &bundle["meta"]["extension"][0];
        assert_eq!(
            ext["url"],
            "https://x.test/fhir/StructureDefinition/w3c-trace-context"
        );
        assert_eq!(ext["extension"][0]["valueString"], trace.traceparent);
    }

    #[test]
    fn a_posted_bundles_trace_context_is_read_from_its_meta() {
        let url = BundleTrace::extension_url("https://x.test/fhir");
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let bundle = json!({"resourceType": "Bundle", "meta": {"extension": [{"url": url,
            "extension": [{"url": "traceparent", "valueString": tp}]}]}});
        let carried = carried_trace(&bundle, &url).unwrap();
        assert_eq!(
            carried.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(carried_trace(&json!({"resourceType": "Bundle"}), &url).is_none());
    }

    #[test]
    fn an_empty_searchset_has_no_entry_element() {
        let text = searchset(
            "http://h",
            &[("self", "http://h/Patient".into())],
            Some(0),
            &[],
            None,
            None,
        );
        let bundle: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(bundle["total"], 0);
        assert!(
            bundle.get("entry").is_none(),
            "FHIR JSON has no empty arrays"
        );
    }
}
