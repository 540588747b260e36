//! NDJSON files: one resource per line, upserted through [`Store::write`] in chunks that run
//! concurrently. A line keeps its id; a line without one gets an id derived from the file and
//! the line number, so importing the file again writes nothing new. A bad line is reported by
//! file and line number and skipped.
//!
//! [`Store::write`]: crate::store::Store::write

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use hl7bridge_fhir_codec::CodecError;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::task::JoinSet;

use super::inputs::Input;
use super::progress::Progress;
use super::Importer;
use crate::fhir::error::FhirError;
use crate::fhir::id::{is_resource_type, is_valid_id};
use crate::fhir::transaction::NewIds;
use crate::store::{ResourceWrite, WriteBatch, WriteOp};

/// Lines per write: the store's row chunk, so one chunk is one statement per table.
const CHUNK_LINES: usize = 500;

/// The file being imported, shared by its chunks; it counts as done when the last one ends.
struct File {
    name: String,
    source: String,
    progress: Arc<Progress>,
}

impl Drop for File {
    fn drop(&mut self) {
        self.progress.file_done();
    }
}

#[derive(Default)]
struct Chunk {
    lines: Vec<(u64, Vec<u8>)>,
    bytes: u64,
}

/// Reads the file and queues its chunks on `tasks`, each once a job is free.
pub(super) async fn import(importer: &Arc<Importer>, input: &Input, tasks: &mut JoinSet<()>) {
    let file = Arc::new(File {
        name: input.path.display().to_string(),
        source: input.source.clone(),
        progress: importer.progress.clone(),
    });
    let mut reader = match tokio::fs::File::open(&input.path).await {
        Ok(handle) => BufReader::with_capacity(1 << 16, handle),
        Err(err) => {
            let line = format!("{}: cannot be read: {}", file.name, err.kind());
            importer.progress.failed(1, &line);
            return;
        }
    };
    let mut chunk = Chunk::default();
    let mut number = 0;
    loop {
        let mut line = Vec::new();
        let read = read_line(&mut reader, &mut line, importer.max_bytes).await;
        number += 1;
        match read {
            Ok(Line::End) => break,
            Ok(Line::Read(bytes)) => {
                chunk.bytes += bytes;
                chunk.lines.push((number, line));
            }
            Ok(Line::TooLong(bytes)) => {
                chunk.bytes += bytes;
                let reason = "too-long: longer than HL7BRIDGE_MAX_BODY_BYTES";
                importer
                    .progress
                    .failed(1, &format!("{}:{number}: {reason}", file.name));
            }
            Err(err) => {
                let reason = format!("cannot be read: {}", err.kind());
                importer
                    .progress
                    .failed(1, &format!("{}:{number}: {reason}", file.name));
                break;
            }
        }
        if chunk.lines.len() == CHUNK_LINES {
            queue(importer, &file, std::mem::take(&mut chunk), tasks).await;
        }
    }
    queue(importer, &file, chunk, tasks).await;
}

async fn queue(importer: &Arc<Importer>, file: &Arc<File>, chunk: Chunk, tasks: &mut JoinSet<()>) {
    let permit = importer.job_slot().await;
    let importer = importer.clone();
    let file = file.clone();
    tasks.spawn(async move {
        write_chunk(&importer, &file, chunk).await;
        drop(permit);
    });
}

enum Line {
    End,
    /// A line of this many bytes (its line break included) is in the buffer.
    Read(u64),
    /// A line of this many bytes was longer than allowed and skipped.
    TooLong(u64),
}

async fn read_line<R>(reader: &mut R, line: &mut Vec<u8>, max_bytes: u64) -> io::Result<Line>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let read = (&mut *reader)
        .take(max_bytes + 1)
        .read_until(b'\n', line)
        .await? as u64;
    if read == 0 {
        return Ok(Line::End);
    }
    if read <= max_bytes || line.ends_with(b"\n") {
        return Ok(Line::Read(read));
    }
    line.clear();
    let mut skipped = read;
    let mut rest = Vec::new();
    loop {
        rest.clear();
        let n = (&mut *reader)
            .take(1 << 20)
            .read_until(b'\n', &mut rest)
            .await?;
        skipped += n as u64;
        if n == 0 || rest.ends_with(b"\n") {
            return Ok(Line::TooLong(skipped));
        }
    }
}

async fn write_chunk(importer: &Importer, file: &File, chunk: Chunk) {
    let progress = &importer.progress;
    let Some((first, last)) = chunk.lines.first().zip(chunk.lines.last()) else {
        progress.read(chunk.bytes);
        return;
    };
    let lines = format!("{}-{}", first.0, last.0);
    let source = file.source.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare(&source, chunk.lines)).await;
    let Ok((ops, bad)) = prepared else {
        progress.failed(1, &format!("{}:{lines}: exception", file.name));
        return;
    };
    for (number, reason) in bad {
        progress.failed(1, &format!("{}:{number}: {reason}", file.name));
    }
    if !ops.is_empty() {
        let count = ops.len() as u64;
        let batch = WriteBatch {
            ops,
            ..WriteBatch::default()
        };
        match importer.store.write(batch).await {
            Ok(_) => progress.stored(count),
            Err(err) => {
                let code = FhirError::from(err).issue_code();
                let line = format!("{}:{lines}: not written: {code}", file.name);
                progress.failed(count, &line);
            }
        }
    }
    progress.read(chunk.bytes);
}

/// The chunk's writes, and its bad lines with the reason. A resource on several lines is
/// written once, as its last line has it.
fn prepare(source: &str, lines: Vec<(u64, Vec<u8>)>) -> (Vec<WriteOp>, Vec<(u64, String)>) {
    let ids = NewIds::Derived(source.to_string());
    let mut ops: Vec<WriteOp> = Vec::with_capacity(lines.len());
    let mut positions: HashMap<(String, String), usize> = HashMap::new();
    let mut bad = Vec::new();
    for (number, bytes) in lines {
        if bytes.trim_ascii().is_empty() {
            continue;
        }
        match resource_of(&bytes, || ids.for_entry(number as usize)) {
            Ok(write) => {
                let key = (write.resource_type.clone(), write.id.clone());
                match positions.get(&key) {
                    Some(&at) => ops[at] = WriteOp::Upsert(write),
                    None => {
                        positions.insert(key, ops.len());
                        ops.push(WriteOp::Upsert(write));
                    }
                }
            }
            Err(reason) => bad.push((number, reason)),
        }
    }
    (ops, bad)
}

/// One line as a resource to write. The reason for a refusal never quotes the line.
fn resource_of(line: &[u8], new_id: impl FnOnce() -> String) -> Result<ResourceWrite, String> {
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    let value: Value = serde_json::from_slice(line.trim_ascii_end())
        .map_err(|err| format!("not JSON (column {})", err.column()))?;
    let Value::Object(mut map) = value else {
        return Err("not a JSON object".into());
    };
    let resource_type = match map.get("resourceType") {
        Some(Value::String(t)) if is_resource_type(t) => t.clone(),
        Some(Value::String(_)) => return Err("invalid at resourceType: no R4 resource".into()),
        _ => return Err("required: no resourceType".into()),
    };
    let id = match map.get("id") {
        None => new_id(),
        Some(Value::String(id)) if is_valid_id(id) => id.clone(),
        Some(_) => return Err(format!("invalid at {resource_type}.id: not a FHIR id")),
    };
    map.insert("id".into(), Value::String(id.clone()));
    let content =
        hl7bridge_fhir_codec::canonicalize(Value::Object(map)).map_err(|err| match err {
            CodecError::Structure { path, message } => format!("invalid at {path}: {message}"),
            CodecError::Model(_) | CodecError::Xml(_) => {
                format!("invalid: not a valid R4 {resource_type}")
            }
        })?;
    Ok(ResourceWrite {
        resource_type,
        id,
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(texts: &[&str]) -> Vec<(u64, Vec<u8>)> {
        (1..)
            .zip(texts.iter().map(|t| format!("{t}\n").into_bytes()))
            .collect()
    }

    #[test]
    fn a_line_without_an_id_gets_the_same_derived_id_every_time() {
        let input = lines(&[r#"{"resourceType":"Patient","gender":"female"}"#]);
        let (first, _) = prepare("import:/data/a.ndjson", input.clone());
        let (again, _) = prepare("import:/data/a.ndjson", input.clone());
        let (elsewhere, _) = prepare("import:/data/b.ndjson", input);
        let id = |ops: &[WriteOp]| match &ops[0] {
            WriteOp::Upsert(w) => w.id.clone(),
            WriteOp::Delete { .. } => unreachable!(),
        };
        assert_eq!(id(&first), id(&again));
        assert_ne!(id(&first), id(&elsewhere));
    }

    #[test]
    fn bad_lines_are_named_by_number_and_reason_without_their_content() {
        let input = lines(&[
            r#"{"resourceType":"Patient","id":"p1"}"#,
            r#"{"resourceType":"Patient","name":[{"family":"Quill"}"#,
            r#"{"resourceType":"Petient","id":"p2"}"#,
            r#"{"resourceType":"Patient","id":"no spaces"}"#,
            r#"{"resourceType":"Patient","name":[]}"#,
            "",
            r#"{"resourceType":"Patient","nickname":"Quill"}"#,
        ]);
        let (ops, bad) = prepare("import:x", input);
        assert_eq!(ops.len(), 1);
        let reasons: Vec<String> = bad.iter().map(|(n, r)| format!("{n}: {r}")).collect();
        assert_eq!(
            reasons,
            [
                "2: not JSON (column 52)",
                "3: invalid at resourceType: no R4 resource",
                "4: invalid at Patient.id: not a FHIR id",
                "5: invalid at Patient.name: empty array",
                "7: invalid: not a valid R4 Patient",
            ]
        );
        assert!(reasons.iter().all(|r| !r.contains("Quill")));
    }

    #[test]
    fn a_resource_on_two_lines_of_a_chunk_is_written_once_as_the_later_line_has_it() {
        let input = lines(&[
            r#"{"resourceType":"Patient","id":"p1","gender":"male"}"#,
            r#"{"resourceType":"Patient","id":"p1","gender":"female"}"#,
        ]);
        let (ops, _) = prepare("import:x", input);
        assert_eq!(ops.len(), 1);
        let WriteOp::Upsert(write) = &ops[0] else {
            unreachable!()
        };
        assert_eq!(write.content["gender"], "female");
    }

    #[tokio::test]
    async fn an_overlong_line_is_skipped_whole_and_the_next_one_read() {
        let text = format!("{}\n{{}}\n", "x".repeat(40));
        let mut reader = BufReader::new(text.as_bytes());
        let mut line = Vec::new();
        assert!(matches!(
            read_line(&mut reader, &mut line, 10).await.unwrap(),
            Line::TooLong(41)
        ));
        line.clear();
        assert!(matches!(
            read_line(&mut reader, &mut line, 10).await.unwrap(),
            Line::Read(3)
        ));
        assert_eq!(line, b"{}\n");
    }
}
