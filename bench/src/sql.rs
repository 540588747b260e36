//! The ceilings: the database work behind each figure, done straight from the bench with raw
//! SQL in the same run, so each figure can be read against what the database itself allows
//! here. Scratch tables have the shape of `resource` (see `entities/`) and are dropped after.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sea_orm::sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sea_orm::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sea_orm::sqlx::{self, AssertSqlSafe, Connection};
use serde_json::Value;

use crate::dataset::hl7::{Oru, ROWS_PER_MESSAGE};
use crate::http::Fetch;
use crate::load::Worker;
use crate::prng::Prng;

/// The types `$everything` includes when a member references them: a copy of
/// `SUPPORTING_TYPES` in `src/store/compartment.rs`, since linking the server's crate would
/// make the bench build the whole server. If that list changes, this one must follow.
const SUPPORTING_TYPES: &[&str] = &[
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Medication",
    "Device",
];

/// `CREATE DATABASE` / `DROP DATABASE` for the bench's own database, from the admin URL.
pub async fn recreate_database(admin_url: &str, name: &str, create: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "database names here are letters, digits and underscores"
    );
    let mut admin = PgConnection::connect(admin_url).await?;
    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::raw_sql(AssertSqlSafe(drop))
        .execute(&mut admin)
        .await?;
    if create {
        let create = format!("CREATE DATABASE \"{name}\"");
        sqlx::raw_sql(AssertSqlSafe(create))
            .execute(&mut admin)
            .await?;
    }
    admin.close().await?;
    Ok(())
}

pub async fn pg_pool(url: &str, connections: u32) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await?)
}

/// Fresh planner statistics for the whole database.
pub async fn analyze(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql("ANALYZE").execute(pool).await?;
    Ok(())
}

pub async fn pg_version(pool: &PgPool) -> anyhow::Result<String> {
    let sql = "SELECT current_setting('server_version')";
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

const SCRATCH_COLUMNS: &str = "resource_type varchar NOT NULL, id varchar NOT NULL, \
    version_id bigint NOT NULL, last_updated_us bigint NOT NULL, deleted boolean NOT NULL, \
    content_hash varchar NOT NULL, content text NOT NULL, PRIMARY KEY (resource_type, id)";

/// Fresh scratch tables: `bench_scratch_copy` and `bench_scratch_upsert` (shaped like
/// `resource`), `bench_scratch_message` (like `hl7_message`, trimmed).
pub async fn create_scratch(pool: &PgPool) -> anyhow::Result<()> {
    drop_scratch(pool).await?;
    let sql = format!(
        "CREATE TABLE bench_scratch_copy ({SCRATCH_COLUMNS}); \
         CREATE TABLE bench_scratch_upsert ({SCRATCH_COLUMNS}); \
         CREATE TABLE bench_scratch_message (id varchar PRIMARY KEY, received_at_us bigint NOT NULL, \
         raw bytea NOT NULL, ack_code varchar NOT NULL)"
    );
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(pool).await?;
    Ok(())
}

pub async fn drop_scratch(pool: &PgPool) -> anyhow::Result<()> {
    let sql =
        "DROP TABLE IF EXISTS bench_scratch_copy, bench_scratch_upsert, bench_scratch_message";
    sqlx::raw_sql(sql).execute(pool).await?;
    Ok(())
}

/// One resource as a row: type, an id, its JSON.
pub struct ResourceRow {
    pub resource_type: String,
    pub id: String,
    pub content: String,
}

/// The resources of one transaction Bundle, as rows (ids from their `urn:uuid:` fullUrls).
pub fn resource_rows(bundle: &[u8]) -> Vec<ResourceRow> {
    let Ok(bundle) = serde_json::from_slice::<Value>(bundle) else {
        return Vec::new();
    };
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    entries
        .into_iter()
        .map(|entry| ResourceRow {
            resource_type: entry["resource"]["resourceType"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            id: entry["fullUrl"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("urn:uuid:")
                .to_string(),
            content: entry["resource"].to_string(),
        })
        .collect()
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Stands in for the server's SHA-256 content hash: same length, far cheaper, so that the
/// ceiling measures the database and not the bench.
fn stand_in_hash(content: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in content.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}").repeat(4)
}

/// Rows in PostgreSQL's COPY text format, in `parts` payloads of about equal row counts.
pub fn copy_payloads(rows: &[ResourceRow], parts: usize) -> Vec<(Bytes, u64)> {
    let per_part = rows.len().div_ceil(parts.max(1)).max(1);
    let now = now_us();
    rows.chunks(per_part)
        .map(|chunk| {
            let mut text = String::new();
            for row in chunk {
                let hash = stand_in_hash(&row.content);
                text.push_str(&format!(
                    "{}\t{}\t1\t{now}\tf\t{hash}\t{}\n",
                    row.resource_type,
                    row.id,
                    copy_escape(&row.content)
                ));
            }
            (Bytes::from(text), chunk.len() as u64)
        })
        .collect()
}

fn copy_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// Copies payload `seq` into `bench_scratch_copy` over its own connection.
pub struct Copier {
    pub pool: PgPool,
    pub payloads: Arc<Vec<(Bytes, u64)>>,
}

impl Worker for Copier {
    async fn call(&mut self, seq: u64) -> Result<u64, String> {
        let (payload, rows) = &self.payloads[seq as usize];
        let mut connection = self.pool.acquire().await.map_err(|e| e.to_string())?;
        let statement = "COPY bench_scratch_copy (resource_type, id, version_id, last_updated_us, \
                         deleted, content_hash, content) FROM STDIN";
        let mut copy = connection
            .copy_in_raw(statement)
            .await
            .map_err(|e| e.to_string())?;
        for piece in payload.chunks(1 << 20) {
            copy.send(piece).await.map_err(|e| e.to_string())?;
        }
        copy.finish().await.map_err(|e| e.to_string())?;
        Ok(*rows)
    }
}

/// One ORU^R01's rows upserted as the server's write would: one transaction, one multi-row
/// `INSERT … ON CONFLICT DO UPDATE` of its 13 resources and the raw message beside them.
pub struct Upserter {
    pub pool: PgPool,
    pub seed: u64,
    pub patients: u64,
    pub lane: char,
}

impl Worker for Upserter {
    async fn call(&mut self, seq: u64) -> Result<u64, String> {
        let oru = Oru::generate(self.seed, self.patients, self.lane, seq);
        let (rows, raw) = (oru.rows(), oru.er7(false));
        let now = now_us();
        static UPSERT: OnceLock<String> = OnceLock::new();
        let upsert = UPSERT.get_or_init(|| upsert_statement(ROWS_PER_MESSAGE));
        let mut query = sqlx::query(AssertSqlSafe(upsert.as_str()));
        for (resource_type, id, content) in &rows {
            query = query
                .bind(*resource_type)
                .bind(id.as_str())
                .bind(now)
                .bind(stand_in_hash(content))
                .bind(content.as_str());
        }
        let message = "INSERT INTO bench_scratch_message (id, received_at_us, raw, ack_code) \
                       VALUES ($1, $2, $3, 'AA')";
        let mut tx = self.pool.begin().await.map_err(|e| e.to_string())?;
        query.execute(&mut *tx).await.map_err(|e| e.to_string())?;
        sqlx::query(message)
            .bind(format!("{}{seq}", self.lane))
            .bind(now)
            .bind(raw)
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(ROWS_PER_MESSAGE as u64)
    }
}

fn upsert_statement(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let p = r * 5;
            format!(
                "(${}, ${}, 1, ${}, false, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5
            )
        })
        .collect();
    format!(
        "INSERT INTO bench_scratch_upsert (resource_type, id, version_id, last_updated_us, \
         deleted, content_hash, content) VALUES {} ON CONFLICT (resource_type, id) DO UPDATE SET \
         version_id = bench_scratch_upsert.version_id + 1, last_updated_us = EXCLUDED.last_updated_us, \
         content_hash = EXCLUDED.content_hash, content = EXCLUDED.content",
        values.join(", ")
    )
}

const MEMBERS: &str = "SELECT r.content FROM compartment c JOIN resource r \
    ON r.resource_type = c.resource_type AND r.id = c.resource_id \
    WHERE c.patient_id = $1 AND NOT r.deleted ORDER BY r.resource_type, r.id";

const SUPPORTING: &str = "SELECT r.content FROM resource r JOIN (SELECT DISTINCT \
    rr.target_type, rr.target_id FROM compartment c JOIN resource_ref rr \
    ON rr.source_type = c.resource_type AND rr.source_id = c.resource_id \
    WHERE c.patient_id = $1 AND rr.target_type = ANY($2)) t \
    ON r.resource_type = t.target_type AND r.id = t.target_id \
    WHERE NOT r.deleted ORDER BY r.resource_type, r.id";

const PATIENT: &str =
    "SELECT content FROM resource WHERE resource_type = 'Patient' AND id = $1 AND NOT deleted";

pub struct Reader {
    pub pool: PgPool,
    pub patients: Arc<Vec<String>>,
    pub prng: Prng,
    pub fetch: Fetch,
}

impl Worker for Reader {
    async fn call(&mut self, _seq: u64) -> Result<u64, String> {
        let id = self.prng.pick(&self.patients).as_str();
        let fetched = match self.fetch {
            // The `$everything` rows: compartment members, then the supporting resources
            // they reference; units are rows.
            Fetch::Everything => {
                let members: Vec<String> = sqlx::query_scalar(MEMBERS)
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| e.to_string())?;
                let supporting: Vec<String> = sqlx::query_scalar(SUPPORTING)
                    .bind(id)
                    .bind(SUPPORTING_TYPES)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| e.to_string())?;
                members.len() + supporting.len()
            }
            Fetch::Patient => {
                let row: Option<String> = sqlx::query_scalar(PATIENT)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| e.to_string())?;
                row.map_or(0, |_| 1)
            }
        };
        match fetched {
            0 => Err(format!("nothing stored for Patient/{id}")),
            n => Ok(n as u64),
        }
    }
}

/// A scratch SQLite file with the server's settings (WAL, synchronous FULL) and one writer.
pub async fn sqlite_pool(path: &std::path::Path) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let sql = format!("CREATE TABLE IF NOT EXISTS bench_scratch_copy ({SCRATCH_COLUMNS})");
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(&pool).await?;
    Ok(pool)
}

/// Bundle `seq`'s rows inserted into SQLite in one transaction (as one Bundle commits),
/// in multi-row INSERTs of 100.
pub struct SqliteInserter {
    pub pool: SqlitePool,
    pub bundles: Arc<Vec<Vec<ResourceRow>>>,
}

impl Worker for SqliteInserter {
    async fn call(&mut self, seq: u64) -> Result<u64, String> {
        let rows = &self.bundles[seq as usize];
        let now = now_us();
        let mut tx = self.pool.begin().await.map_err(|e| e.to_string())?;
        for chunk in rows.chunks(100) {
            let values = vec!["(?, ?, 1, ?, 0, ?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "INSERT INTO bench_scratch_copy (resource_type, id, version_id, last_updated_us, \
                 deleted, content_hash, content) VALUES {values}"
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for row in chunk {
                query = query
                    .bind(row.resource_type.as_str())
                    .bind(row.id.as_str())
                    .bind(now)
                    .bind(stand_in_hash(&row.content))
                    .bind(row.content.as_str());
            }
            query.execute(&mut *tx).await.map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(rows.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_backslashes_and_control_characters() {
        assert_eq!(copy_escape(r#"{"a":"x\"y"}"#), r#"{"a":"x\\"y"}"#);
        assert_eq!(copy_escape("a\tb\nc"), "a\\tb\\nc");
    }

    #[test]
    fn copy_payloads_split_rows_evenly_and_count_them() {
        let rows: Vec<ResourceRow> = (0..10)
            .map(|i| ResourceRow {
                resource_type: "Observation".into(),
                id: format!("o{i}"),
                content: "{}".into(),
            })
            .collect();
        let payloads = copy_payloads(&rows, 4);
        assert_eq!(payloads.iter().map(|p| p.1).sum::<u64>(), 10);
        assert_eq!(payloads.len(), 4);
        let first = String::from_utf8(payloads[0].0.to_vec()).unwrap();
        assert_eq!(first.lines().count(), 3);
        assert_eq!(first.lines().next().unwrap().split('\t').count(), 7);
    }

    #[test]
    fn the_upsert_numbers_five_parameters_a_row() {
        let sql = upsert_statement(2);
        assert!(sql.contains("($1, $2, 1, $3, false, $4, $5), ($6, $7, 1, $8, false, $9, $10)"));
    }

    #[test]
    fn a_bundle_becomes_one_row_a_resource() {
        let bundle =
            br#"{"entry":[{"fullUrl":"urn:uuid:u1","resource":{"resourceType":"Patient"}}]}"#;
        let rows = resource_rows(bundle);
        assert_eq!(
            (rows[0].resource_type.as_str(), rows[0].id.as_str()),
            ("Patient", "u1")
        );
    }
}
