//! Which files an import reads, in which order.

use std::io;
use std::path::{Path, PathBuf};

use super::ImportOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// A transaction or batch Bundle (or a lone resource) in one JSON document.
    Bundle,
    /// One resource per line.
    Ndjson,
}

#[derive(Debug)]
pub(super) struct Input {
    pub path: PathBuf,
    pub format: Format,
    pub bytes: u64,
    /// What the ids of new resources are derived from: the file's absolute path, so that
    /// importing the same file again writes the same resources.
    pub source: String,
}

/// The files named, each directory replaced by its `*.json` and `*.ndjson` files in name order.
/// Every path that cannot be used is reported at once.
pub(super) fn collect(options: &ImportOptions) -> anyhow::Result<Vec<Input>> {
    let mut inputs = Vec::new();
    let mut problems = Vec::new();
    for path in &options.paths {
        let found = if path.is_dir() {
            directory_files(path)
        } else {
            Ok(vec![path.clone()])
        };
        let described = found.and_then(|files| {
            files
                .into_iter()
                .map(|file| input(file, options.ndjson))
                .collect::<io::Result<Vec<_>>>()
        });
        match described {
            Ok(found) => inputs.extend(found),
            Err(err) => problems.push(format!("{}: {err}", path.display())),
        }
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(inputs)
}

fn directory_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let matches = name.ends_with(".json") || name.ends_with(".ndjson");
        if matches && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn input(path: PathBuf, all_ndjson: bool) -> io::Result<Input> {
    let metadata = std::fs::metadata(&path)?;
    if !metadata.is_file() {
        return Err(io::Error::other("not a file or directory"));
    }
    let ndjson = all_ndjson || path.extension().is_some_and(|e| e == "ndjson");
    let source = format!("import:{}", std::fs::canonicalize(&path)?.display());
    Ok(Input {
        path,
        format: if ndjson {
            Format::Ndjson
        } else {
            Format::Bundle
        },
        bytes: metadata.len(),
        source,
    })
}

/// Splits the inputs into two phases, each in the order given. Bundles with conditional
/// references (`Organization?identifier=…`) usually point at shared resources that other files
/// create — Synthea's patients refer to the Organizations and Practitioners of its hospital and
/// practitioner files — so they wait for the second phase. Bundles larger than `max_bytes` are
/// refused when imported and not read here.
pub(super) fn phases(inputs: Vec<Input>, max_bytes: u64) -> (Vec<Input>, Vec<Input>) {
    inputs.into_iter().partition(|input| {
        let refers = input.format == Format::Bundle
            && input.bytes <= max_bytes
            && std::fs::read(&input.path).is_ok_and(|bytes| has_conditional_reference(&bytes));
        !refers
    })
}

/// Text only: a conditional URL anywhere in the file counts, which at worst moves a Bundle to
/// the second phase for nothing.
fn has_conditional_reference(bytes: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"?identifier=";
    bytes.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_with_conditional_references_wait_for_the_second_phase() {
        let dir = std::env::temp_dir().join(format!("hl7bridge-phases-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        write(
            "a_patient.json",
            r#"{"reference":"Organization?identifier=x|1"}"#,
        );
        write("b_orgs.json", r#"{"resourceType":"Bundle"}"#);
        write("c.ndjson", r#"{"reference":"Organization?identifier=x|1"}"#);
        write("notes.txt", "ignored");
        let options = ImportOptions {
            paths: vec![dir.clone()],
            ndjson: false,
            jobs: 1,
            defer_index: false,
        };

        let (first, second) = phases(collect(&options).unwrap(), 1 << 20);

        let names = |inputs: &[Input]| -> Vec<String> {
            inputs
                .iter()
                .map(|i| i.path.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(&first), ["b_orgs.json", "c.ndjson"]);
        assert_eq!(names(&second), ["a_patient.json"]);
        assert_eq!(first[1].format, Format::Ndjson);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_missing_path_is_reported_at_once() {
        let options = ImportOptions {
            paths: vec!["/nonexistent/a.json".into(), "/nonexistent/b".into()],
            ndjson: false,
            jobs: 1,
            defer_index: false,
        };
        let err = collect(&options).unwrap_err().to_string();
        assert!(
            err.contains("a.json") && err.contains("/nonexistent/b"),
            "{err}"
        );
    }
}
