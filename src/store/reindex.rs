//! Deferred indexing and the reindex.
//!
//! A store made with [`Store::deferring_search_index`] (`hl7bridge import --defer-index`)
//! writes each resource with only the index rows other work needs at once: its references,
//! its patient compartments (`$everything`, access checks) and its identifiers (conditional
//! references and creates, MLLP patient matching). Its other search values — codes, statuses,
//! dates, names — are left out, and the resource is put in `index_backlog`, in the same
//! transaction, so a crash leaves nothing unaccounted for.
//!
//! [`Store::reindex_backlog`] takes resources off the backlog a chunk at a time and replaces
//! all their index rows with rows computed from their current content. The import drains the
//! backlog before its conditional phase and at its end; `serve` drains what a killed import
//! left; `hl7bridge reindex` drains it by hand, and with `--all` first puts every resource in
//! the backlog (after an upgrade that indexes more).
//!
//! Until a resource leaves the backlog, searches on its deferred values do not find it.

use hl7bridge_entities::index_backlog;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement, TransactionOptions, TransactionTrait,
};

use super::cache::{self, Changed};
use super::{write, Store, StoreError};

/// Resources reindexed in one transaction.
pub const REINDEX_CHUNK: usize = 500;

impl Store {
    /// Resources waiting for their search values to be indexed.
    pub async fn index_backlog_len(&self) -> Result<u64, StoreError> {
        Ok(index_backlog::Entity::find().count(&self.db).await?)
    }

    /// Puts every stored resource in the backlog, for [`Store::reindex_backlog`] to index
    /// again from its content. Returns how many the backlog holds then.
    pub async fn queue_all_for_reindex(&self) -> Result<u64, StoreError> {
        let sql = "INSERT INTO index_backlog (resource_type, resource_id) \
                   SELECT resource_type, id FROM resource WHERE NOT deleted \
                   ON CONFLICT DO NOTHING";
        let statement = Statement::from_string(self.backend(), sql);
        self.db.execute_raw(statement).await?;
        self.index_backlog_len().await
    }

    /// Indexes up to `max` resources of the backlog, oldest keys first, in one transaction,
    /// and takes them off it. Returns how many it took off: 0 when the backlog is empty, or
    /// (PostgreSQL) when every resource it picked is locked by a writer just now.
    pub async fn reindex_backlog(&self, max: usize) -> Result<usize, StoreError> {
        let _gate = match self.backend() {
            DbBackend::Sqlite => Some(self.write_gate.lock().await),
            _ => None,
        };
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        let txn = self.db.begin_with_options(options).await?;
        let keys: Vec<(String, String)> = index_backlog::Entity::find()
            .select_only()
            .columns([
                index_backlog::Column::ResourceType,
                index_backlog::Column::ResourceId,
            ])
            .order_by_asc(index_backlog::Column::ResourceType)
            .order_by_asc(index_backlog::Column::ResourceId)
            .limit(max as u64)
            .into_tuple()
            .all(&txn)
            .await?;
        if keys.is_empty() {
            txn.rollback().await?;
            return Ok(0);
        }
        let done = write::rebuild_index(&txn, &keys).await?;
        let mut by_type: std::collections::HashMap<&str, Vec<&str>> = Default::default();
        for (t, id) in &done {
            by_type.entry(t).or_default().push(id);
        }
        for (t, ids) in by_type {
            for chunk in ids.chunks(REINDEX_CHUNK) {
                index_backlog::Entity::delete_many()
                    .filter(index_backlog::Column::ResourceType.eq(t))
                    .filter(index_backlog::Column::ResourceId.is_in(chunk.iter().copied()))
                    .exec(&txn)
                    .await?;
            }
        }
        // Compartments were rebuilt too; after an upgrade they may differ, so cached pages
        // go, on every node.
        let everything = Changed {
            all_pages: true,
            ..Changed::default()
        };
        if self.backend() == DbBackend::Postgres {
            cache::notify(&txn, &everything).await?;
        }
        txn.commit().await?;
        if let Some(cache) = &self.cache {
            cache.invalidate(&everything);
        }
        if let Some(shared) = &self.shared {
            shared.invalidate(&everything).await;
        }
        Ok(done.len())
    }

    /// Reindexes until the backlog is empty, calling `progress` with the running total after
    /// each chunk. Returns the total.
    pub async fn drain_index_backlog(
        &self,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, StoreError> {
        let mut total = 0u64;
        loop {
            let done = self.reindex_backlog(REINDEX_CHUNK).await?;
            if done == 0 {
                if self.index_backlog_len().await? == 0 {
                    return Ok(total);
                }
                // Every pick was locked by a writer: let it commit.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            total += done as u64;
            progress(total);
        }
    }
}
