//! The read cache's optional second level, in Redis (`HL7BRIDGE_REDIS_URL`), shared by every
//! node of a deployment: a resource or `$everything` page one node read from the database is
//! served to the others from Redis.
//!
//! Invalidation is by generation, not by deletion. Each patient compartment and each resource
//! has a generation counter in Redis, and so does the whole cache; a value is stored under a
//! key that names the generations it was read at. A write increments the generations of what
//! it changed (after its commit, before its caller is answered), so later lookups ask for keys
//! no stale value is stored under. A lookup reads the generations and the value in one round
//! trip (a Lua script), and a miss stores what the database returned under the generations the
//! lookup saw: a read racing a write stores its result under a key that is already dead.
//!
//! Another node's write reaches Redis a moment after its commit, and this node's in-process
//! cache may drop its copy on the commit's notification before that moment; so what a lookup
//! here finds is served but never kept in process, and the window stays that moment long.
//!
//! What it cannot see: writes made without hl7bridge (plain SQL), or by a process not given the
//! same Redis settings. Every value therefore expires after `HL7BRIDGE_REDIS_TTL_S`. The
//! generation counters never expire: a counter that vanished and started again from zero would
//! make values of its earlier life current again. For the same reason Redis must not evict them
//! (`maxmemory-policy` `noeviction` or a `volatile-*` policy, which evicts only the values) and
//! must not come back from an old snapshot (run it without persistence, as a cache). The
//! policy is read (`CONFIG GET`) before the level is first used: under an `allkeys-*` policy
//! the level stays off. A counter found holding something other than a number (written by
//! something else) is moved to a generation never used before rather than left to fail every
//! increment.
//!
//! Redis is a cache here, never a dependency: a lookup or store that fails or takes longer
//! than [`TIMEOUT`] is a miss, and the second level is skipped for [`BACKOFF`] after a
//! failure. Invalidations that could not be sent are kept and sent before the level is used
//! again; if too many pile up, the whole cache's generation is incremented instead.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use super::cache::{Changed, Page};
use super::read::{StoredResource, SupportingMode};
use crate::telemetry::metrics::metrics;

/// The longest a Redis round trip may take before it counts as a miss.
pub const TIMEOUT: Duration = Duration::from_millis(250);
/// How long the second level is skipped after Redis failed.
pub const BACKOFF: Duration = Duration::from_secs(1);
/// Unsent invalidations kept at most; beyond this the whole cache is invalidated instead.
const MAX_PENDING: usize = 10_000;
/// Values larger than this are not stored (a huge page would crowd out many small ones).
const MAX_VALUE_BYTES: usize = 4 << 20;

/// Reads the generations and the value they name. KEYS: the whole cache's generation and the
/// patient's or resource's; ARGV[1]: the value key without generations. Returns the full key
/// and the value (nil on a miss).
/// Increments each generation in KEYS. One that holds something other than a whole number
/// (written by something else) is set to ARGV[1], the time in microseconds: a generation no
/// counter has reached, so nothing stored under an earlier one becomes current.
const INCREMENT: &str = r"
for _, key in ipairs(KEYS) do
  local now = redis.call('GET', key)
  if now and not string.match(now, '^%d+$') then
    redis.call('SET', key, ARGV[1])
  else
    redis.call('INCR', key)
  end
end
return #KEYS
";

const LOOKUP: &str = r"
local all = redis.call('GET', KEYS[1]) or '0'
local one = redis.call('GET', KEYS[2]) or '0'
local key = ARGV[1] .. '@' .. all .. '.' .. one
return {key, redis.call('GET', key)}
";

pub struct SharedCache {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    lookup: redis::Script,
    increment: redis::Script,
    state: Mutex<State>,
}

/// What is known of Redis's `maxmemory-policy`.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Eviction {
    #[default]
    Unchecked,
    /// Only values can be evicted, or nothing (or the policy cannot be read: said at start).
    SparesCounters,
    /// Any key can be evicted, generation counters included: the level stays off.
    AnyKey,
}

#[derive(Default)]
struct State {
    eviction: Eviction,
    /// Until when the level is skipped after a failure.
    skip_until: Option<Instant>,
    /// Generation keys to increment once Redis answers again.
    pending: Vec<String>,
    /// Too many were pending: increment the whole cache's generation instead.
    pending_all: bool,
}

/// Where a miss stores what it read: the key under the generations the lookup saw.
pub struct SharedTicket(String);

pub enum Lookup<T> {
    Hit(T),
    Miss(SharedTicket),
    /// Redis is unreachable or slow just now.
    Off,
}

impl SharedCache {
    /// A cache on the Redis at `url`, its keys under `prefix`. Connects lazily: a Redis that
    /// is down now is not an error, only misses until it is up.
    pub fn new(url: &str, prefix: String, ttl: Duration) -> Result<SharedCache, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(BACKOFF);
        let conn = client.get_connection_manager_lazy(config)?;
        Ok(SharedCache {
            conn,
            prefix,
            ttl,
            lookup: redis::Script::new(LOOKUP),
            increment: redis::Script::new(INCREMENT),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn all_generation(&self) -> String {
        format!("{}g", self.prefix)
    }

    fn patient_generation(&self, patient: &str) -> String {
        format!("{}g:p:{patient}", self.prefix)
    }

    fn resource_generation(&self, t: &str, id: &str) -> String {
        format!("{}g:r:{t}/{id}", self.prefix)
    }

    pub async fn resource(&self, t: &str, id: &str) -> Lookup<StoredResource> {
        let generation = self.resource_generation(t, id);
        let base = format!("{}v:r:{t}/{id}", self.prefix);
        match decoded(
            self.get(&generation, &base, "resource").await,
            decode_resource,
        ) {
            // A value must be the resource asked for, whatever was written under its key.
            Lookup::Hit(found) if found.resource_type != t || found.id != id => Lookup::Off,
            other => other,
        }
    }

    pub async fn page(&self, patient: &str, page_key: &str) -> Lookup<Page> {
        let generation = self.patient_generation(patient);
        let digest = &super::write::payload_hash(page_key.as_bytes())[..24];
        let base = format!("{}v:e:{patient}:{digest}", self.prefix);
        decoded(
            self.get(&generation, &base, "everything").await,
            decode_page,
        )
    }

    /// Stores a resource a miss read, in the background.
    pub fn keep_resource(&self, ticket: SharedTicket, found: &StoredResource) {
        let mut bytes = Vec::with_capacity(found.content.len() + 64);
        encode_resource(found, &mut bytes);
        self.keep(ticket, bytes);
    }

    /// Stores a page a miss read, in the background.
    pub fn keep_page(&self, ticket: SharedTicket, found: &Page) {
        self.keep(ticket, encode_page(found));
    }

    async fn get(&self, generation: &str, base: &str, kind: &'static str) -> Lookup<Vec<u8>> {
        if !self.usable().await {
            return Lookup::Off;
        }
        let mut conn = self.conn.clone();
        let mut invocation = self.lookup.prepare_invoke();
        invocation
            .key(self.all_generation())
            .key(generation)
            .arg(base);
        let answer = tokio::time::timeout(
            TIMEOUT,
            invocation.invoke_async::<(String, Option<Vec<u8>>)>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok((_, Some(value)))) => {
                metrics().shared_cache_lookup(kind, true);
                Lookup::Hit(value)
            }
            Ok(Ok((key, None))) => {
                metrics().shared_cache_lookup(kind, false);
                Lookup::Miss(SharedTicket(key))
            }
            Ok(Err(err)) => {
                self.failed(&err.to_string());
                Lookup::Off
            }
            Err(_) => {
                self.failed("timed out");
                Lookup::Off
            }
        }
    }

    fn keep(&self, ticket: SharedTicket, bytes: Vec<u8>) {
        if bytes.len() > MAX_VALUE_BYTES {
            return;
        }
        let mut conn = self.conn.clone();
        let ttl = self.ttl.as_secs().max(1);
        tokio::spawn(async move {
            let mut set = redis::cmd("SET");
            set.arg(&ticket.0).arg(bytes).arg("EX").arg(ttl);
            // A lost store is only a later miss.
            let _ = tokio::time::timeout(TIMEOUT, set.exec_async(&mut conn)).await;
        });
    }

    /// Makes every value `changed` may have made stale unreachable, on every node. Called after
    /// the write's commit and before its caller is answered. Never fails: what cannot be sent
    /// now is sent before the next lookup.
    pub async fn invalidate(&self, changed: &Changed) {
        if changed.is_empty() {
            return;
        }
        let mut keys = Vec::new();
        if changed.all_pages {
            keys.push(self.all_generation());
        } else {
            keys.extend(changed.patients.iter().map(|p| self.patient_generation(p)));
            keys.extend(
                changed
                    .resources
                    .iter()
                    .map(|(t, id)| self.resource_generation(t, id)),
            );
        }
        // Bumps that could not be sent before go with this one: a node that only writes never
        // looks anything up, and must not leave the others stale.
        {
            let mut state = self.lock();
            if std::mem::take(&mut state.pending_all) {
                keys.push(self.all_generation());
            }
            keys.append(&mut state.pending);
        }
        if let Err(problem) = self.increment(&keys).await {
            self.failed(&problem);
            let mut state = self.lock();
            state.pending.extend(keys);
            if state.pending.len() > MAX_PENDING {
                state.pending.clear();
                state.pending_all = true;
            }
        }
    }

    /// Increments generation counters (which never expire: see the module's notes).
    async fn increment(&self, keys: &[String]) -> Result<(), String> {
        let mut invocation = self.increment.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        invocation.arg(crate::store::now_us());
        let mut conn = self.conn.clone();
        match tokio::time::timeout(TIMEOUT, invocation.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Reads Redis's eviction policy once. `Err` when Redis did not answer (ask again later).
    async fn check_eviction(&self) -> Result<Eviction, String> {
        let mut conn = self.conn.clone();
        let mut command = redis::cmd("CONFIG");
        command.arg("GET").arg("maxmemory-policy");
        let ask = command.query_async::<Vec<String>>(&mut conn);
        let eviction = match tokio::time::timeout(TIMEOUT, ask).await {
            Err(_) => return Err("timed out".into()),
            Ok(Ok(pair)) if pair.get(1).is_some_and(|p| p.starts_with("allkeys-")) => {
                tracing::error!(
                    policy = %pair[1],
                    "Redis may evict any key (maxmemory-policy): the shared cache's generation \
                     counters could vanish and stale values come back, so it stays off; set \
                     noeviction or a volatile-* policy"
                );
                Eviction::AnyKey
            }
            Ok(Ok(_)) => Eviction::SparesCounters,
            // A managed Redis may refuse CONFIG: the operator vouches for the policy.
            // A server error (unknown or forbidden command), not a lost connection.
            Ok(Err(err)) if err.code().is_some() => {
                tracing::warn!(
                    "Redis does not tell its maxmemory-policy; the shared cache assumes \
                     noeviction or a volatile-* policy, as it requires"
                );
                Eviction::SparesCounters
            }
            Ok(Err(err)) => return Err(err.to_string()),
        };
        self.lock().eviction = eviction;
        Ok(eviction)
    }

    /// Whether the level may be used now: not backing off, and nothing left unsent.
    async fn usable(&self) -> bool {
        let eviction = {
            let mut state = self.lock();
            if state.skip_until.is_some_and(|until| Instant::now() < until) {
                return false;
            }
            state.skip_until = None;
            state.eviction
        };
        let eviction = match eviction {
            Eviction::Unchecked => match self.check_eviction().await {
                Ok(eviction) => eviction,
                Err(problem) => {
                    self.failed(&problem);
                    return false;
                }
            },
            known => known,
        };
        if eviction == Eviction::AnyKey {
            return false;
        }
        let pending = {
            let mut state = self.lock();
            if state.pending_all {
                state.pending_all = false;
                state.pending.clear();
                vec![self.all_generation()]
            } else {
                std::mem::take(&mut state.pending)
            }
        };
        if pending.is_empty() {
            return true;
        }
        match self.increment(&pending).await {
            Ok(()) => true,
            Err(problem) => {
                self.failed(&problem);
                let mut state = self.lock();
                if pending.len() == 1 && pending[0] == self.all_generation() {
                    state.pending_all = true;
                } else {
                    state.pending.extend(pending);
                }
                false
            }
        }
    }

    fn failed(&self, problem: &str) {
        let mut state = self.lock();
        if state.skip_until.is_none() {
            tracing::warn!(
                problem,
                "the shared cache (Redis) failed; using the database"
            );
        }
        state.skip_until = Some(Instant::now() + BACKOFF);
        metrics().shared_cache_error();
    }
}

// Values are length-prefixed fields, not JSON: a resource's content is JSON text already, and
// wrapping it in JSON would escape every quote in it.

fn put(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_le_bytes());
    out.extend_from_slice(field);
}

fn encode_resource(r: &StoredResource, out: &mut Vec<u8>) {
    put(out, r.resource_type.as_bytes());
    put(out, r.id.as_bytes());
    out.extend_from_slice(&r.version_id.to_le_bytes());
    out.extend_from_slice(&r.last_updated_us.to_le_bytes());
    out.push(r.deleted as u8);
    put(out, r.content.as_bytes());
}

fn encode_page((resources, more): &Page) -> Vec<u8> {
    let text: usize = resources.iter().map(|(_, r)| r.content.len() + 64).sum();
    let mut out = Vec::with_capacity(text + 8);
    out.push(*more as u8);
    out.extend_from_slice(&(resources.len() as u32).to_le_bytes());
    for (mode, r) in resources {
        out.push(match mode {
            SupportingMode::Match => 0,
            SupportingMode::Include => 1,
        });
        encode_resource(r, &mut out);
    }
    out
}

/// A hit decoded; a value that does not decode (written by another version, say) is a miss
/// that stores nothing.
fn decoded<T>(found: Lookup<Vec<u8>>, decode: fn(&[u8]) -> Option<T>) -> Lookup<T> {
    match found {
        Lookup::Hit(bytes) => decode(&bytes).map_or(Lookup::Off, Lookup::Hit),
        Lookup::Miss(ticket) => Lookup::Miss(ticket),
        Lookup::Off => Lookup::Off,
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }

    fn text(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.bytes(n)?.to_vec()).ok()
    }

    fn resource(&mut self) -> Option<StoredResource> {
        Some(StoredResource {
            resource_type: self.text()?,
            id: self.text()?,
            version_id: self.i64()?,
            last_updated_us: self.i64()?,
            deleted: self.u8()? != 0,
            content: self.text()?,
        })
    }
}

fn decode_resource(bytes: &[u8]) -> Option<StoredResource> {
    let mut reader = Reader(bytes);
    let found = reader.resource()?;
    reader.0.is_empty().then_some(found)
}

fn decode_page(bytes: &[u8]) -> Option<Page> {
    let mut reader = Reader(bytes);
    let more = reader.u8()? != 0;
    let n = reader.u32()? as usize;
    let mut resources = Vec::with_capacity(n.min(10_000));
    for _ in 0..n {
        let mode = match reader.u8()? {
            0 => SupportingMode::Match,
            1 => SupportingMode::Include,
            _ => return None,
        };
        resources.push((mode, reader.resource()?));
    }
    reader.0.is_empty().then_some((resources, more))
}

/// The default key prefix: `hl7bridge:` and a digest of the database URL.
pub fn default_prefix(database_url: &str) -> String {
    let digest = super::write::payload_hash(database_url.as_bytes());
    format!("hl7bridge:{}:", &digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(id: &str, content: &str) -> StoredResource {
        StoredResource {
            resource_type: "Observation".into(),
            id: id.into(),
            version_id: 7,
            last_updated_us: -3,
            deleted: false,
            content: content.into(),
        }
    }

    #[test]
    fn values_round_trip_and_damaged_ones_are_misses() {
        let r = resource("o1", r#"{"resourceType":"Observation","note":"é\"x"}"#);
        let mut bytes = Vec::new();
        encode_resource(&r, &mut bytes);
        assert_eq!(decode_resource(&bytes), Some(r.clone()));
        assert_eq!(decode_resource(&bytes[..bytes.len() - 1]), None);
        let page: Page = (
            vec![
                (SupportingMode::Match, r.clone()),
                (SupportingMode::Include, resource("o2", "{}")),
            ],
            true,
        );
        let bytes = encode_page(&page);
        assert_eq!(decode_page(&bytes), Some(page));
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode_page(&extra), None);
        assert_eq!(decode_page(&[1, 255, 255, 255, 255]), None);
    }

    #[test]
    fn deployments_on_different_databases_get_different_prefixes() {
        let a = default_prefix("postgres://db-a/h");
        assert_eq!(a, default_prefix("postgres://db-a/h"));
        assert_ne!(a, default_prefix("postgres://db-b/h"));
        assert!(a.starts_with("hl7bridge:"));
    }
}
