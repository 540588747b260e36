//! The read cache: current resources and `$everything` pages, kept in process and dropped on
//! every committed write that could change them.
//!
//! Invalidation is by patient compartment: a write drops the pages of every patient whose
//! compartment held or now holds a resource it changed (old compartments included, so a
//! resource moved to another patient leaves neither page stale), and the cached copy of each
//! resource it changed. A write of a supporting resource (a Practitioner, an Organization, …)
//! drops every page, since any patient's page may include it.
//!
//! Writes by this process invalidate before the writer is answered. Writes by other processes:
//! - PostgreSQL: each write transaction sends `NOTIFY hl7bridge_cache` with what it changed,
//!   delivered at commit; every node listens. While the listening connection is down nothing is
//!   cached, and everything is dropped when it comes back (notifications may have been missed).
//!   A node therefore sees another node's write a few milliseconds after that node answered.
//! - SQLite: no notifications; every lookup first reads `PRAGMA data_version` on a connection
//!   of its own, which changes whenever any connection (of any process) commits, and a change
//!   drops everything. Correct across processes, but a write anywhere empties the cache.
//!
//! A lookup that misses takes a ticket (the generation of what it reads) before it queries;
//! its result is kept only if no invalidation of that patient or resource happened meanwhile,
//! so a read racing a write never stores what the write replaced.
//!
//! Absent results (an unknown id) are cached too, for a short time, so a client polling for a
//! resource that does not exist does not hit the database every time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::read::{EverythingPage, StoredResource, SupportingMode};
use crate::telemetry::metrics::metrics;

/// One `$everything` page: its resources and whether more follow.
pub type Page = (Vec<(SupportingMode, StoredResource)>, bool);

/// Limits of the cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Bytes of resource text held at most (pages and resources together).
    pub max_bytes: usize,
    /// How long an absent result is served from the cache.
    pub absent_ttl: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_bytes: 64 << 20,
            absent_ttl: Duration::from_secs(1),
        }
    }
}

/// What one committed write changed, for invalidation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    pub patients: HashSet<String>,
    pub resources: HashSet<(String, String)>,
    /// Something any page may include changed: drop every page.
    pub all_pages: bool,
}

impl Changed {
    pub fn is_empty(&self) -> bool {
        self.patients.is_empty() && self.resources.is_empty() && !self.all_pages
    }

    /// The NOTIFY payload: `*` (drop everything) when it would not fit PostgreSQL's 8000
    /// bytes, else `p<id>` and `r<type>/<id>` items separated by newlines.
    pub fn to_payload(&self) -> String {
        if self.all_pages {
            return "*".into();
        }
        let mut items: Vec<String> = self.patients.iter().map(|p| format!("p{p}")).collect();
        items.extend(self.resources.iter().map(|(t, id)| format!("r{t}/{id}")));
        let payload = items.join("\n");
        if payload.len() > 7000 {
            "*".into()
        } else {
            payload
        }
    }

    pub fn from_payload(payload: &str) -> Changed {
        let mut changed = Changed::default();
        for item in payload.split('\n') {
            if item == "*" {
                changed.all_pages = true;
            } else if let Some(patient) = item.strip_prefix('p') {
                changed.patients.insert(patient.to_string());
            } else if let Some((t, id)) = item.strip_prefix('r').and_then(|r| r.split_once('/')) {
                changed.resources.insert((t.to_string(), id.to_string()));
            }
        }
        if changed.all_pages {
            // An unreadable or flushing payload: drop resources too.
            changed.resources.clear();
        }
        changed
    }
}

#[derive(Clone)]
enum Value {
    Resource(Option<StoredResource>),
    Page(Page),
}

struct Entry {
    value: Value,
    bytes: usize,
    /// Absent results expire; present ones live until invalidated or evicted.
    expires: Option<Instant>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Resource(String, String),
    Page(String, String),
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Insertion order, for eviction (entries already gone are skipped).
    order: VecDeque<Key>,
    bytes: usize,
    /// Bumped by every invalidation; per-patient and per-resource marks remember when each
    /// was last invalidated, `flushed` when everything was.
    generation: u64,
    flushed: u64,
    patient_marks: HashMap<String, u64>,
    resource_marks: HashMap<(String, String), u64>,
    /// False while cross-process invalidation cannot be trusted (the listener is down).
    enabled: bool,
    /// SQLite: the last `data_version` seen.
    data_version: Option<i64>,
}

pub struct ReadCache {
    inner: Mutex<Inner>,
    limits: CacheLimits,
}

/// What a miss must present to store its result.
pub struct Ticket(u64);

impl ReadCache {
    pub fn new(limits: CacheLimits, enabled: bool) -> ReadCache {
        ReadCache {
            inner: Mutex::new(Inner {
                enabled,
                ..Inner::default()
            }),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn resource(&self, t: &str, id: &str) -> Result<Option<StoredResource>, Ticket> {
        match self.get(Key::Resource(t.into(), id.into()), "resource") {
            Ok(Value::Resource(r)) => Ok(r),
            Ok(Value::Page(_)) => unreachable!("keys are typed"),
            Err(ticket) => Err(ticket),
        }
    }

    pub fn keep_resource(&self, ticket: Ticket, t: &str, id: &str, r: &Option<StoredResource>) {
        let key = Key::Resource(t.into(), id.into());
        let bytes = r.as_ref().map_or(64, |r| r.content.len() + 64);
        let marks = |inner: &Inner| {
            inner
                .resource_marks
                .get(&(t.to_string(), id.to_string()))
                .copied()
                .unwrap_or(0)
        };
        self.keep(
            ticket,
            key,
            Value::Resource(r.clone()),
            bytes,
            r.is_none(),
            marks,
        );
    }

    pub fn page(&self, patient: &str, page: &EverythingPage) -> Result<Page, Ticket> {
        match self.get(Key::Page(patient.into(), page_key(page)), "everything") {
            Ok(Value::Page(p)) => Ok(p),
            Ok(Value::Resource(_)) => unreachable!("keys are typed"),
            Err(ticket) => Err(ticket),
        }
    }

    pub fn keep_page(&self, ticket: Ticket, patient: &str, page: &EverythingPage, found: &Page) {
        let page_key = page_key(page);
        // The entry costs memory even when the page is empty (a `_since` after everything):
        // counted, so that distinct empty pages are evicted like any other.
        let text: usize = found.0.iter().map(|(_, r)| r.content.len() + 64).sum();
        let bytes = 64 + patient.len() + page_key.len() + text;
        let key = Key::Page(patient.into(), page_key);
        let mark = |inner: &Inner| inner.patient_marks.get(patient).copied().unwrap_or(0);
        self.keep(ticket, key, Value::Page(found.clone()), bytes, false, mark);
    }

    fn get(&self, key: Key, kind: &'static str) -> Result<Value, Ticket> {
        let mut inner = self.lock();
        let ticket = Ticket(inner.generation);
        if !inner.enabled {
            return Err(ticket);
        }
        let hit = match inner.entries.get(&key) {
            Some(e) if e.expires.is_none_or(|at| at > Instant::now()) => Some(e.value.clone()),
            Some(_) => {
                remove(&mut inner, &key);
                None
            }
            None => None,
        };
        metrics().cache_lookup(kind, hit.is_some());
        hit.ok_or(ticket)
    }

    fn keep(
        &self,
        ticket: Ticket,
        key: Key,
        value: Value,
        bytes: usize,
        absent: bool,
        mark: impl Fn(&Inner) -> u64,
    ) {
        if bytes > self.limits.max_bytes / 4 {
            return;
        }
        let mut inner = self.lock();
        // Invalidated since the lookup began: what was read may predate the write.
        if !inner.enabled || inner.flushed > ticket.0 || mark(&inner) > ticket.0 {
            return;
        }
        let expires = absent.then(|| Instant::now() + self.limits.absent_ttl);
        remove(&mut inner, &key);
        inner.order.push_back(key.clone());
        inner.bytes += bytes;
        inner.entries.insert(
            key,
            Entry {
                value,
                bytes,
                expires,
            },
        );
        // Keys of entries invalidated or expired stay in `order` until evicted: compact it
        // before it outgrows the entries it orders.
        if inner.order.len() > 2 * inner.entries.len() + 1024 {
            let Inner { order, entries, .. } = &mut *inner;
            let mut seen = HashSet::new();
            // Newest first, so each entry keeps its latest place.
            let kept: Vec<Key> = order
                .iter()
                .rev()
                .filter(|k| entries.contains_key(*k) && seen.insert((*k).clone()))
                .cloned()
                .collect();
            *order = kept.into_iter().rev().collect();
        }
        while inner.bytes > self.limits.max_bytes {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.bytes -= e.bytes;
            }
        }
    }

    /// Drops what `changed` may have made stale.
    pub fn invalidate(&self, changed: &Changed) {
        if changed.is_empty() {
            return;
        }
        let mut inner = self.lock();
        inner.generation += 1;
        let generation = inner.generation;
        if changed.all_pages {
            inner.flushed = generation;
            clear(&mut inner);
            return;
        }
        for patient in &changed.patients {
            inner.patient_marks.insert(patient.clone(), generation);
        }
        for resource in &changed.resources {
            inner.resource_marks.insert(resource.clone(), generation);
        }
        let stale: Vec<Key> = inner
            .entries
            .keys()
            .filter(|k| match k {
                Key::Page(p, _) => changed.patients.contains(p),
                Key::Resource(t, id) => changed.resources.contains(&(t.clone(), id.clone())),
            })
            .cloned()
            .collect();
        for key in stale {
            remove(&mut inner, &key);
        }
        // Marks only matter to lookups in flight; keep the maps from growing without end.
        if inner.patient_marks.len() + inner.resource_marks.len() > 100_000 {
            inner.flushed = generation;
            inner.patient_marks.clear();
            inner.resource_marks.clear();
        }
    }

    /// Drops everything and turns caching on or off (off while invalidations may be missed).
    pub fn reset(&self, enabled: bool) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.flushed = inner.generation;
        inner.enabled = enabled;
        clear(&mut inner);
    }

    /// SQLite: drops everything when the database's data version moved since the last look.
    pub fn observe_data_version(&self, version: i64) {
        let mut inner = self.lock();
        if inner.data_version != Some(version) {
            inner.data_version = Some(version);
            inner.generation += 1;
            inner.flushed = inner.generation;
            clear(&mut inner);
        }
    }
}

fn remove(inner: &mut Inner, key: &Key) {
    if let Some(e) = inner.entries.remove(key) {
        inner.bytes -= e.bytes;
    }
}

fn clear(inner: &mut Inner) {
    inner.entries.clear();
    inner.order.clear();
    inner.bytes = 0;
}

fn page_key(page: &EverythingPage) -> String {
    format!("{page:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(id: &str) -> StoredResource {
        StoredResource {
            resource_type: "Observation".into(),
            id: id.into(),
            version_id: 1,
            last_updated_us: 0,
            deleted: false,
            content: "{}".into(),
        }
    }

    fn page() -> EverythingPage {
        EverythingPage {
            limit: 10,
            ..EverythingPage::default()
        }
    }

    fn changed_patient(p: &str) -> Changed {
        Changed {
            patients: [p.to_string()].into(),
            ..Changed::default()
        }
    }

    #[test]
    fn a_page_is_served_until_its_patient_changes() {
        let cache = ReadCache::new(CacheLimits::default(), true);
        let ticket = cache.page("p1", &page()).expect_err("a miss");
        let found: Page = (vec![(SupportingMode::Match, resource("o1"))], false);
        cache.keep_page(ticket, "p1", &page(), &found);
        assert!(cache.page("p1", &page()).is_ok());
        cache.invalidate(&changed_patient("p2"));
        assert!(cache.page("p1", &page()).is_ok(), "another patient's write");
        cache.invalidate(&changed_patient("p1"));
        assert!(cache.page("p1", &page()).is_err());
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let cache = ReadCache::new(CacheLimits::default(), true);
        let ticket = cache.page("p1", &page()).expect_err("a miss");
        cache.invalidate(&changed_patient("p1"));
        cache.keep_page(ticket, "p1", &page(), &(Vec::new(), false));
        assert!(
            cache.page("p1", &page()).is_err(),
            "the stale result was dropped"
        );
    }

    #[test]
    fn absent_results_expire() {
        let limits = CacheLimits {
            absent_ttl: Duration::from_millis(20),
            ..CacheLimits::default()
        };
        let cache = ReadCache::new(limits, true);
        let ticket = cache.resource("Patient", "x").expect_err("a miss");
        cache.keep_resource(ticket, "Patient", "x", &None);
        assert!(matches!(cache.resource("Patient", "x"), Ok(None)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(cache.resource("Patient", "x").is_err());
    }

    #[test]
    fn a_disabled_cache_keeps_nothing_and_memory_stays_bounded() {
        let cache = ReadCache::new(CacheLimits::default(), false);
        let ticket = cache.resource("Patient", "x").err().unwrap();
        cache.keep_resource(ticket, "Patient", "x", &Some(resource("x")));
        assert!(cache.resource("Patient", "x").is_err());

        let limits = CacheLimits {
            max_bytes: 4096,
            ..CacheLimits::default()
        };
        let cache = ReadCache::new(limits, true);
        for n in 0..1000 {
            let id = format!("o{n}");
            let ticket = cache.resource("Observation", &id).err().unwrap();
            cache.keep_resource(ticket, "Observation", &id, &Some(resource(&id)));
        }
        assert!(cache.lock().bytes <= 4096);
        assert!(
            cache.resource("Observation", "o999").is_ok(),
            "the newest stays"
        );
    }

    #[test]
    fn entries_cached_again_and_again_do_not_grow_the_eviction_order() {
        let cache = ReadCache::new(CacheLimits::default(), true);
        let changed = Changed {
            resources: [("Observation".to_string(), "o1".to_string())].into(),
            ..Changed::default()
        };
        for _ in 0..10_000 {
            let ticket = cache.resource("Observation", "o1").err().unwrap();
            cache.keep_resource(ticket, "Observation", "o1", &Some(resource("o1")));
            cache.invalidate(&changed);
        }
        assert!(cache.lock().order.len() <= 1026);
    }

    #[test]
    fn payloads_round_trip_and_overflow_to_a_flush() {
        let changed = Changed {
            patients: ["p1".to_string()].into(),
            resources: [("Observation".to_string(), "o1".to_string())].into(),
            all_pages: false,
        };
        assert_eq!(Changed::from_payload(&changed.to_payload()), changed);
        let many = Changed {
            patients: (0..2000).map(|n| format!("patient-{n}")).collect(),
            ..Changed::default()
        };
        assert_eq!(many.to_payload(), "*");
        assert!(Changed::from_payload("*").all_pages);
    }
}

mod wiring {
    //! The cache's place in the store: read-through lookups, the compartments a write touched,
    //! and the PostgreSQL listener.

    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;
    use std::time::Duration;

    use hl7bridge_entities::compartment;
    use sea_orm::sqlx::postgres::PgListener;
    use sea_orm::{
        ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
        QuerySelect, Statement,
    };

    use super::{Changed, Page, ReadCache};
    use crate::store::compartment::SUPPORTING_TYPES;
    use crate::store::read::{EverythingPage, StoredResource};
    use crate::store::shared_cache::Lookup;
    use crate::store::write::{Outcome, Written};
    use crate::store::{Store, StoreError};

    /// The channel every node listens on.
    pub(in crate::store) const CHANNEL: &str = "hl7bridge_cache";

    impl Store {
        /// The current version of a resource (as [`Store::read`]), from the cache when it holds it.
        pub async fn read_cached(
            &self,
            resource_type: &str,
            id: &str,
        ) -> Result<Option<StoredResource>, StoreError> {
            let Some(cache) = self.usable_cache().await else {
                return self.read(resource_type, id).await;
            };
            let ticket = match cache.resource(resource_type, id) {
                Ok(found) => return Ok(found),
                Err(ticket) => ticket,
            };
            let shared = match &self.shared {
                Some(shared) => shared.resource(resource_type, id).await,
                None => Lookup::Off,
            };
            let found = match shared {
                // Served, not kept: another node's write is in Redis only once that node has
                // bumped the generations after its commit, and this node may have had the
                // commit's notification (and dropped its copy) a moment before that. Kept
                // here, a value read in that moment would outlive the write.
                Lookup::Hit(found) => return Ok(Some(found)),
                Lookup::Miss(shared_ticket) => {
                    let found = self.primary().read(resource_type, id).await?;
                    if let (Some(shared), Some(found)) = (&self.shared, &found) {
                        shared.keep_resource(shared_ticket, found);
                    }
                    found
                }
                Lookup::Off => self.primary().read(resource_type, id).await?,
            };
            cache.keep_resource(ticket, resource_type, id, &found);
            Ok(found)
        }

        /// One `$everything` page (as [`Store::everything`]), from the cache when it holds it.
        pub async fn everything_cached(
            &self,
            patient_id: &str,
            page: &EverythingPage,
        ) -> Result<Page, StoreError> {
            let Some(cache) = self.usable_cache().await else {
                return self.everything(patient_id, page).await;
            };
            let ticket = match cache.page(patient_id, page) {
                Ok(found) => return Ok(found),
                Err(ticket) => ticket,
            };
            let shared = match &self.shared {
                Some(shared) => shared.page(patient_id, &super::page_key(page)).await,
                None => Lookup::Off,
            };
            let found = match shared {
                // Served, not kept in this process (see `read_cached`).
                Lookup::Hit(found) => return Ok(found),
                Lookup::Miss(shared_ticket) => {
                    let found = self.primary().everything(patient_id, page).await?;
                    if let Some(shared) = &self.shared {
                        shared.keep_page(shared_ticket, &found);
                    }
                    found
                }
                Lookup::Off => self.primary().everything(patient_id, page).await?,
            };
            cache.keep_page(ticket, patient_id, page, &found);
            Ok(found)
        }

        /// This store with its reads on the primary. A miss is read there: another node's
        /// write reaches this cache by NOTIFY at its commit, possibly before a lagging replica
        /// has it, and the page read after the notification must not be the replaced one.
        fn primary(&self) -> Store {
            Store {
                replica_reads: false,
                ..self.clone()
            }
        }

        /// The cache, after SQLite's check for commits by other connections and processes.
        async fn usable_cache(&self) -> Option<&Arc<ReadCache>> {
            let cache = self.cache.as_ref()?;
            if let Some(probe) = &self.data_version_probe {
                let statement =
                    Statement::from_string(DbBackend::Sqlite, "PRAGMA data_version".to_string());
                let version = probe
                    .query_one_raw(statement)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|row| row.try_get_by_index::<i64>(0).ok());
                match version {
                    Some(version) => cache.observe_data_version(version),
                    None => return None,
                }
            }
            Some(cache)
        }
    }

    /// What a write changes in the cache's terms: the resources it changed, the patients whose
    /// compartment held them before (read here, before their index rows go) or holds them now,
    /// and whether a supporting resource changed.
    pub(in crate::store) async fn changed_by(
        txn: &DatabaseTransaction,
        written: &[Written],
        new_patients: &HashSet<String>,
    ) -> Result<Changed, StoreError> {
        let mut changed = Changed {
            patients: new_patients.clone(),
            ..Changed::default()
        };
        let mut existing: HashMap<&str, Vec<&str>> = HashMap::new();
        for w in written {
            match w.outcome {
                Outcome::Created | Outcome::Updated | Outcome::Deleted => {}
                Outcome::Unchanged | Outcome::NothingToDelete => continue,
            }
            changed
                .resources
                .insert((w.resource_type.clone(), w.id.clone()));
            if SUPPORTING_TYPES.contains(&w.resource_type.as_str()) {
                changed.all_pages = true;
            }
            if w.resource_type == "Patient" {
                changed.patients.insert(w.id.clone());
            }
            if w.outcome != Outcome::Created {
                existing.entry(&w.resource_type).or_default().push(&w.id);
            }
        }
        for (resource_type, ids) in existing {
            for chunk in ids.chunks(500) {
                let old: Vec<String> = compartment::Entity::find()
                    .select_only()
                    .column(compartment::Column::PatientId)
                    .filter(compartment::Column::ResourceType.eq(resource_type))
                    .filter(compartment::Column::ResourceId.is_in(chunk.iter().copied()))
                    .into_tuple()
                    .all(txn)
                    .await?;
                changed.patients.extend(old);
            }
        }
        Ok(changed)
    }

    /// Sends the change to every node's listener; PostgreSQL delivers it at commit.
    pub(in crate::store) async fn notify(
        txn: &DatabaseTransaction,
        changed: &Changed,
    ) -> Result<(), StoreError> {
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [CHANNEL.into(), changed.to_payload().into()],
        );
        txn.execute_raw(statement).await?;
        Ok(())
    }

    /// Listens for other nodes' changes until the store is dropped. While the connection is
    /// down the cache is off; it comes back empty.
    pub(in crate::store) async fn listen(store: Store, cache: std::sync::Weak<ReadCache>) {
        let pool = store.db.get_postgres_connection_pool().clone();
        drop(store);
        loop {
            let listener = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(CHANNEL).await?;
                Ok::<_, sea_orm::sqlx::Error>(listener)
            };
            let mut listener = match listener.await {
                Ok(listener) => listener,
                Err(err) => {
                    // A closed pool or a dropped cache is the store shutting down (at the end of
                    // `import` or `reindex`, say): nothing to warn about.
                    if cache.upgrade().is_none() || pool.is_closed() {
                        return;
                    }
                    tracing::warn!(error = %err, "the cache's change listener cannot connect; caching is off");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            match cache.upgrade() {
                Some(cache) => cache.reset(true),
                None => return,
            }
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => match cache.upgrade() {
                        Some(cache) => {
                            cache.invalidate(&Changed::from_payload(notification.payload()))
                        }
                        None => return,
                    },
                    Ok(None) | Err(_) => {
                        match cache.upgrade() {
                            Some(cache) if !pool.is_closed() => cache.reset(false),
                            _ => return,
                        }
                        tracing::warn!("the cache's change listener lost its connection; caching is off until it is back");
                        break;
                    }
                }
            }
        }
    }
}

pub(super) use wiring::{changed_by, listen, notify};
