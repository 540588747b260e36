//! `hl7bridge messages` and `hl7bridge replay`: the stored HL7v2 messages, listed from the
//! database, and sent again over MLLP to a running server (after a mapping was added or a
//! sender's data fixed, say). An identical resend of a message that was accepted gets its
//! stored ACK back without being processed again; refused ones are processed anew.

use std::net::SocketAddr;

use anyhow::Context;
use serde_json::json;

use crate::store::{instant_text, Store};

/// The server's database, which these commands only read: a SQLite file that is not there
/// is an error, not a new empty database left behind in the working directory.
async fn open_existing(database_url: &str) -> anyhow::Result<Store> {
    if let Some(path) = sqlite_file(database_url) {
        if !std::path::Path::new(path).exists() {
            anyhow::bail!(
                "no database at {path}: run this where `serve` runs, or set \
                 HL7BRIDGE_DATABASE_URL to the database the server uses"
            );
        }
        // Opened read-only first: another application's SQLite file must not be given this
        // server's tables.
        if !holds_messages(path).await? {
            anyhow::bail!(
                "{path} is not an hl7bridge database (it holds no stored messages table)"
            );
        }
    }
    Store::connect(database_url)
        .await
        .context("opening the database")
}

/// Whether the SQLite file at `path` has hl7bridge's message table, read without changing it.
async fn holds_messages(path: &str) -> anyhow::Result<bool> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let db = sea_orm::Database::connect(format!("sqlite://{path}?mode=ro"))
        .await
        .with_context(|| format!("opening {path}"))?;
    let found = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'hl7_message'",
        ))
        .await;
    let _ = db.close().await;
    Ok(!found.context("reading the database's tables")?.is_empty())
}

/// The file of a `sqlite:` URL; `None` for an in-memory database or another kind.
fn sqlite_file(database_url: &str) -> Option<&str> {
    let rest = database_url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// Prints one JSON line per stored message, newest first: who sent it, when, its control id,
/// type and ACK code — never its content.
pub async fn list(database_url: &str, ack_code: Option<&str>, limit: u64) -> anyhow::Result<()> {
    let store = open_existing(database_url).await?;
    for m in store.messages(ack_code, limit).await? {
        let line = json!({
            "id": m.id,
            "received_at": instant_text(m.received_at_us),
            "peer": m.peer,
            "sending_application": m.sending_application,
            "sending_facility": m.sending_facility,
            "control_id": m.control_id,
            "message_type": m.message_type,
            "ack_code": m.ack_code,
            "trace_id": m.trace_id,
        });
        println!("{line}");
    }
    store.close().await;
    Ok(())
}

/// Sends each stored message (by id) to `mllp` and prints its ACKs, read as `send` reads them
/// (the ACKs its MSH-15 and MSH-16 ask for). `Ok(true)` when every message is accepted.
pub async fn replay(
    database_url: &str,
    mllp: SocketAddr,
    ids: &[String],
    waits: crate::send::Waits,
) -> anyhow::Result<bool> {
    let store = open_existing(database_url).await?;
    let mut payloads = Vec::with_capacity(ids.len());
    for id in ids {
        let raw = store
            .message_raw(id)
            .await?
            .with_context(|| format!("no stored message has the id {id}"))?;
        payloads.push((id.clone(), raw));
    }
    store.close().await;
    tokio::task::spawn_blocking(move || crate::send::send_payloads(mllp, &payloads, waits))
        .await
        .context("the sender stopped")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_of_a_sqlite_url_is_found_in_every_spelling() {
        assert_eq!(sqlite_file("sqlite://hl7bridge.db"), Some("hl7bridge.db"));
        assert_eq!(
            sqlite_file("sqlite:///var/lib/h.db?mode=rwc"),
            Some("/var/lib/h.db")
        );
        assert_eq!(sqlite_file("sqlite:h.db"), Some("h.db"));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://x/y"), None);
    }
}
