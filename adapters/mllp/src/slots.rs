//! Connection slots at the cap. When `max_connections` connections are open, a newcomer does
//! not wait behind connections that only sit there: the connection idle longest (between
//! frames, or still in its handshake) is closed to make way, as long as it has been idle at
//! least [`MIN_IDLE_TO_EVICT`]. When none is idle, the connection whose frame has been
//! arriving longest is closed instead, once that frame is older than the configured
//! `slow_frame_evict_ms`: a real frame arrives in milliseconds, and one that was never
//! acknowledged is sent again by its sender. Connections being answered are never chosen, so
//! every answer is written first. Only when every connection is busy do newcomers wait in the
//! listen backlog.
//!
//! Without this, idle connections from a handful of addresses could hold every slot for the
//! idle timeout (ten minutes by default), and trickling ones from many addresses for the frame
//! timeout, again and again, and lock real senders out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// A connection idle for less than this is not closed to make way.
pub const MIN_IDLE_TO_EVICT: Duration = Duration::from_secs(1);

const BUSY: u64 = u64::MAX;
const NOT_RECEIVING: u64 = u64::MAX;

/// What one connection is doing, as the acceptor sees it.
pub(crate) struct Activity {
    /// Milliseconds since the registry's start at which the connection went idle; `BUSY`
    /// while a frame is being received or answered.
    idle_since_ms: AtomicU64,
    /// Milliseconds since the registry's start at which the frame being received started;
    /// `NOT_RECEIVING` otherwise.
    receiving_since_ms: AtomicU64,
    evicted: AtomicBool,
    wake: Notify,
}

impl Activity {
    /// Idle since `at` (between frames, nothing buffered).
    pub(crate) fn idle_since(&self, registry_start: Instant, at: Instant) {
        self.receiving_since_ms
            .store(NOT_RECEIVING, Ordering::Relaxed);
        self.idle_since_ms
            .store(millis(registry_start, at), Ordering::Relaxed);
    }

    /// Receiving a frame that started at `at`.
    pub(crate) fn receiving_since(&self, registry_start: Instant, at: Instant) {
        self.idle_since_ms.store(BUSY, Ordering::Relaxed);
        self.receiving_since_ms
            .store(millis(registry_start, at), Ordering::Relaxed);
    }

    /// Reading or answering: not to be chosen.
    pub(crate) fn busy(&self) {
        self.receiving_since_ms
            .store(NOT_RECEIVING, Ordering::Relaxed);
        self.idle_since_ms.store(BUSY, Ordering::Relaxed);
    }

    /// Completes once the acceptor chose this connection to make way.
    pub(crate) async fn evicted(&self) {
        loop {
            let woken = self.wake.notified();
            if self.evicted.load(Ordering::Acquire) {
                return;
            }
            woken.await;
        }
    }
}

fn millis(registry_start: Instant, at: Instant) -> u64 {
    let ms = at.saturating_duration_since(registry_start).as_millis() as u64;
    ms.min(BUSY - 1)
}

/// Every open connection's [`Activity`].
pub(crate) struct Registry {
    start: Instant,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    /// How old a frame still arriving must be for its connection to make way.
    slow_frame: Duration,
}

impl Registry {
    pub(crate) fn new(slow_frame: Duration) -> Arc<Registry> {
        Arc::new(Registry {
            start: Instant::now(),
            open: Mutex::default(),
            slow_frame,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers connection `id`, idle from now (a handshake not yet finished counts as idle).
    pub(crate) fn register(self: &Arc<Self>, id: u64) -> Registration {
        let activity = Arc::new(Activity {
            idle_since_ms: AtomicU64::new(0),
            receiving_since_ms: AtomicU64::new(NOT_RECEIVING),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        });
        activity.idle_since(self.start, Instant::now());
        self.lock().insert(id, activity.clone());
        Registration {
            id,
            registry: self.clone(),
            activity,
        }
    }

    /// The connection idle longest, if one has been idle at least `min_idle` and is not
    /// already on its way out.
    fn longest_idle(&self, min_idle: Duration) -> Option<Arc<Activity>> {
        self.earliest(min_idle, |a| &a.idle_since_ms)
    }

    /// The connection whose frame has been arriving longest, if that frame started at least
    /// `min_age` ago and the connection is not already on its way out.
    fn slowest_frame(&self, min_age: Duration) -> Option<Arc<Activity>> {
        self.earliest(min_age, |a| &a.receiving_since_ms)
    }

    /// The connection whose `since` (a time, or `u64::MAX` for none) is earliest and at least
    /// `min_age` ago, among those not on their way out.
    fn earliest(
        &self,
        min_age: Duration,
        since: impl Fn(&Activity) -> &AtomicU64,
    ) -> Option<Arc<Activity>> {
        let now = millis(self.start, Instant::now());
        let cutoff = now.checked_sub(min_age.as_millis() as u64)?;
        self.lock()
            .values()
            .filter(|a| !a.evicted.load(Ordering::Relaxed))
            .map(|a| (since(a).load(Ordering::Relaxed), a))
            .filter(|(at, _)| *at != u64::MAX && *at <= cutoff)
            .min_by_key(|(at, _)| *at)
            .map(|(_, a)| a.clone())
    }

    /// The connection to make way: the one idle longest, else the one slowest to send its
    /// frame.
    fn candidate(&self) -> Option<Arc<Activity>> {
        self.longest_idle(MIN_IDLE_TO_EVICT)
            .or_else(|| self.slowest_frame(self.slow_frame))
    }

    /// Whether a connection could make way now.
    pub(crate) fn has_evictable(&self) -> bool {
        self.candidate().is_some()
    }

    /// Asks the connection idle longest (else the slowest to send its frame) to close; false
    /// when none qualifies.
    pub(crate) fn evict_one(&self) -> bool {
        self.evict(self.candidate())
    }

    #[cfg(test)]
    fn evict_idle_at_least(&self, min_idle: Duration) -> bool {
        self.evict(self.longest_idle(min_idle))
    }

    fn evict(&self, chosen: Option<Arc<Activity>>) -> bool {
        match chosen {
            Some(activity) => {
                activity.evicted.store(true, Ordering::Release);
                activity.wake.notify_one();
                true
            }
            None => false,
        }
    }

    /// Connections open and not on their way out.
    pub(crate) fn staying(&self) -> usize {
        self.lock()
            .values()
            .filter(|a| !a.evicted.load(Ordering::Relaxed))
            .count()
    }
}

/// A connection's place in the [`Registry`], given up when the connection's task ends.
pub(crate) struct Registration {
    id: u64,
    registry: Arc<Registry>,
    pub(crate) activity: Arc<Activity>,
}

impl Registration {
    pub(crate) fn registry_start(&self) -> Instant {
        self.registry.start
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_longest_idle_connection_makes_way_and_busy_ones_never_do() {
        let min = Duration::from_millis(200);
        let registry = Registry::new(Duration::from_secs(3600));
        let first = registry.register(1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = registry.register(2);
        let third = registry.register(3);
        third.activity.busy();
        // Only the first has been idle long enough.
        assert!(registry.longest_idle(min).is_some());
        assert!(registry.evict_idle_at_least(min));
        first.activity.evicted().await;
        assert_eq!(registry.staying(), 2);
        assert!(
            !registry.evict_idle_at_least(min),
            "the second is too fresh"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(registry.evict_idle_at_least(min));
        second.activity.evicted().await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!registry.evict_idle_at_least(min), "the busy one stays");
        drop(first);
        drop(second);
        assert_eq!(registry.staying(), 1);
        assert_eq!(registry.lock().len(), 1);
    }

    #[tokio::test]
    async fn with_none_idle_the_frame_arriving_longest_makes_way_once_old_enough() {
        let registry = Registry::new(Duration::from_millis(200));
        let older = registry.register(1);
        let newer = registry.register(2);
        let answering = registry.register(3);
        let start = older.registry_start();
        older.activity.receiving_since(start, Instant::now());
        tokio::time::sleep(Duration::from_millis(50)).await;
        newer.activity.receiving_since(start, Instant::now());
        answering.activity.busy();
        assert!(!registry.has_evictable(), "no frame is old enough yet");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(registry.evict_one());
        older.activity.evicted().await;
        assert!(registry.evict_one(), "the newer one is old enough too");
        newer.activity.evicted().await;
        assert!(
            !registry.evict_one(),
            "a connection being answered never makes way"
        );
    }
}
