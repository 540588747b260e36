//! One Bundle file, through the code that answers `POST /`: placeholders and conditional
//! references resolve as they would over HTTP, and a transaction is written whole or not at
//! all. Only the ids of new resources differ: they are derived from the file and the entry's
//! position instead of random, so importing the file again writes nothing new.

use serde_json::Value;

use super::inputs::Input;
use super::Importer;
use crate::fhir::transaction::{self, NewIds};

/// A Bundle that failed, in part (a batch) or whole.
#[derive(Debug)]
struct Failed {
    stored: u64,
    /// Issue code and expression only: diagnostics may quote the content.
    reason: String,
}

impl Failed {
    fn whole(reason: impl Into<String>) -> Failed {
        Failed {
            stored: 0,
            reason: reason.into(),
        }
    }
}

pub(super) async fn import(importer: &Importer, input: &Input) {
    let progress = &importer.progress;
    match stored_entries(importer, input).await {
        Ok(stored) => progress.stored(stored),
        Err(failed) => {
            progress.stored(failed.stored);
            progress.failed(1, &format!("{}: {}", input.path.display(), failed.reason));
        }
    }
    progress.read(input.bytes);
    progress.file_done();
}

async fn stored_entries(importer: &Importer, input: &Input) -> Result<u64, Failed> {
    if input.bytes > importer.max_bytes {
        return Err(Failed::whole(format!(
            "too-long: larger than {} bytes (HL7BRIDGE_MAX_BODY_BYTES)",
            importer.max_bytes
        )));
    }
    let bytes = tokio::fs::read(&input.path)
        .await
        .map_err(|err| Failed::whole(format!("cannot be read: {}", err.kind())))?;
    let bundle = tokio::task::spawn_blocking(move || bundle_of(&bytes))
        .await
        .map_err(|_| Failed::whole("exception: reading the file failed"))??;
    let ids = NewIds::Derived(input.source.clone());
    let result = transaction::process(
        &importer.store,
        &importer.conditional_gate,
        &importer.bundle_limits,
        bundle,
        transaction::Caller {
            access: &crate::auth::Access::System,
            new_ids: &ids,
            trace: None,
            returns: transaction::Return::Minimal,
        },
    )
    .await;
    match result {
        Ok(response) => judge(&response),
        Err(err) => Err(Failed::whole(issue_text(&err.outcome()))),
    }
}

/// The file as a Bundle to process; a lone resource becomes a one-entry transaction.
fn bundle_of(bytes: &[u8]) -> Result<Value, Failed> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let value: Value = serde_json::from_slice(bytes).map_err(|err| {
        Failed::whole(format!(
            "not JSON (line {}, column {})",
            err.line(),
            err.column()
        ))
    })?;
    match value.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") | None => Ok(value),
        Some(resource_type) => {
            let resource_type = resource_type.to_string();
            Ok(transaction::single_entry_transaction(value, &resource_type))
        }
    }
}

/// A transaction response is all success. A batch response may hold failed entries: the
/// first one is named, and the stored ones are counted.
fn judge(response: &Value) -> Result<u64, Failed> {
    let entries = response
        .get("entry")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let succeeded = |e: &&Value| {
        e.pointer("/response/status")
            .and_then(Value::as_str)
            .is_some_and(|s| s.starts_with('2'))
    };
    let stored = entries.iter().filter(succeeded).count() as u64;
    let Some(first) = entries.iter().find(|e| !succeeded(e)) else {
        return Ok(stored);
    };
    let outcome = first.pointer("/response/outcome").unwrap_or(&Value::Null);
    Err(Failed {
        stored,
        reason: format!(
            "{} of {} entries failed, the first: {}",
            entries.len() as u64 - stored,
            entries.len(),
            issue_text(outcome)
        ),
    })
}

/// `code at expression` of an OperationOutcome's first issue.
fn issue_text(outcome: &Value) -> String {
    let code = outcome
        .pointer("/issue/0/code")
        .and_then(Value::as_str)
        .unwrap_or("exception");
    match outcome
        .pointer("/issue/0/expression/0")
        .and_then(Value::as_str)
    {
        Some(expression) => format!("{code} at {expression}"),
        None => code.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_batch_with_failed_entries_names_the_first_by_code_and_expression_only() {
        let response = json!({"type": "batch-response", "entry": [
            {"response": {"status": "201 Created"}},
            {"response": {"status": "400 Bad Request", "outcome": {"issue": [{
                "code": "invalid",
                "diagnostics": "Jane Doe is not a date",
                "expression": ["Bundle.entry[1].resource.birthDate"]}]}}},
            {"response": {"status": "412 Precondition Failed", "outcome": {"issue": [{
                "code": "duplicate"}]}}},
        ]});
        let failed = judge(&response).unwrap_err();
        assert_eq!(failed.stored, 1);
        assert_eq!(
            failed.reason,
            "2 of 3 entries failed, the first: invalid at Bundle.entry[1].resource.birthDate"
        );
    }

    #[test]
    fn a_lone_resource_is_imported_as_a_one_entry_transaction() {
        let bundle =
            bundle_of(b"\xEF\xBB\xBF{\"resourceType\":\"Patient\",\"id\":\"p1\"}").unwrap();
        assert_eq!(bundle["type"], "transaction");
        assert_eq!(bundle["entry"][0]["request"]["url"], "Patient/p1");
    }

    #[test]
    fn a_file_that_is_not_json_is_named_by_position_not_content() {
        let failed = bundle_of(b"{\"resourceType\": \"Bundle\",\n  Smith}").unwrap_err();
        assert_eq!(failed.reason, "not JSON (line 2, column 3)");
    }
}
