//! Connection slots at the cap, shared fairly between sending addresses.
//!
//! When `max_connections` connections are open, a newcomer waits in the acceptor's waiting
//! room (see `server.rs`) until a connection can make way for it. The candidates, cheapest to
//! close first:
//!
//! 1. a connection idle (between frames, or still in its handshake) for at least
//!    [`MIN_IDLE_TO_EVICT`] that has had no message accepted (MSA-1 `AA` or `CA`) within
//!    [`SENDING_FOR`];
//! 2. a connection whose frame has been arriving for at least the configured
//!    `slow_frame_evict_ms` (a real frame arrives in milliseconds, and one that was never
//!    acknowledged is sent again by its sender), or one open that long without a message
//!    accepted within [`SENDING_FOR`], however busy it keeps with frames that are refused;
//! 3. a connection whose last answer accepted a message, within [`SENDING_FOR`], idle for at
//!    least [`MIN_IDLE_TO_EVICT_SENDER`] (or idle at all when its address holds at least two
//!    connections more than the newcomer's).
//!
//! Connections being answered are never chosen, so every answer is written first. Among
//! candidates of one kind, the address holding the most connections gives one up first.
//!
//! A connection only makes way for a newcomer from its own address, or from an address
//! holding fewer connections, or, for the first two kinds, from a known sender: an address
//! that had a message accepted within [`KNOWN_SENDER_FOR`]. When there are more sending
//! addresses than slots, those idle ten seconds take turns. So trickling connections from many
//! addresses cannot push a real sender out again and again, and a real sender waiting to get in
//! goes before them.
//!
//! Without this, idle connections from a handful of addresses could hold every slot for the
//! idle timeout (ten minutes by default), and trickling ones from many addresses for the frame
//! timeout, again and again, and lock real senders out.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// A connection idle for less than this is not closed to make way.
pub const MIN_IDLE_TO_EVICT: Duration = Duration::from_secs(1);
/// A connection that has had messages accepted is not closed to make way before it has been
/// idle this long: a feed pauses between messages, and reconnecting costs it a wait.
pub const MIN_IDLE_TO_EVICT_SENDER: Duration = Duration::from_secs(10);
/// How long an address that had a message accepted stays a known sender.
pub const KNOWN_SENDER_FOR: Duration = Duration::from_secs(60 * 60);
/// How long a connection that had a message accepted counts as sending.
pub const SENDING_FOR: Duration = Duration::from_secs(60);
/// Known senders remembered at most; past it the longest quiet are forgotten first.
const KNOWN_SENDERS_MAX: usize = 4096;

const BUSY: u64 = u64::MAX;
const NOT_RECEIVING: u64 = u64::MAX;

/// What one connection is doing, as the acceptor sees it.
pub(crate) struct Activity {
    ip: IpAddr,
    /// Milliseconds since the registry's start at which the connection went idle; `BUSY`
    /// while a frame is being received or answered.
    idle_since_ms: AtomicU64,
    /// Milliseconds since the registry's start at which the frame being received started;
    /// `NOT_RECEIVING` otherwise.
    receiving_since_ms: AtomicU64,
    /// Milliseconds since the registry's start at which the connection opened.
    opened_ms: u64,
    /// Milliseconds since the registry's start at which a message of this connection was
    /// last accepted; `u64::MAX` for never.
    accepted_ms: AtomicU64,
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

    /// Which kind of candidate to make way this connection is at `now` (see the module
    /// docs), and since when; `None` while it may not be chosen. A sending connection makes
    /// way after `sender_idle` idle.
    fn candidacy(
        &self,
        now: u64,
        slow_frame: Duration,
        sender_idle: Duration,
    ) -> Option<(Kind, u64)> {
        let older_than = |since: u64, age: Duration| {
            since != u64::MAX && now.saturating_sub(since) >= age.as_millis() as u64
        };
        let idle = self.idle_since_ms.load(Ordering::Relaxed);
        let receiving = self.receiving_since_ms.load(Ordering::Relaxed);
        if idle == BUSY && receiving == NOT_RECEIVING {
            return None;
        }
        let accepted = self.accepted_ms.load(Ordering::Relaxed);
        if accepted != u64::MAX && !older_than(accepted, SENDING_FOR) {
            if older_than(idle, sender_idle) {
                return Some((Kind::IdleSender, idle));
            }
            return older_than(receiving, slow_frame).then_some((Kind::SlowFrame, receiving));
        }
        if older_than(idle, MIN_IDLE_TO_EVICT) {
            return Some((Kind::Idle, idle));
        }
        if older_than(receiving, slow_frame) {
            return Some((Kind::SlowFrame, receiving));
        }
        older_than(self.opened_ms, slow_frame).then_some((Kind::SlowFrame, self.opened_ms))
    }
}

/// Candidates to make way, cheapest to close first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Idle,
    SlowFrame,
    IdleSender,
}

fn millis(registry_start: Instant, at: Instant) -> u64 {
    let ms = at.saturating_duration_since(registry_start).as_millis() as u64;
    ms.min(BUSY - 1)
}

/// Every open connection's [`Activity`], and the addresses known to send real messages.
pub(crate) struct Registry {
    start: Instant,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    /// How old a frame still arriving must be for its connection to make way.
    slow_frame: Duration,
    /// When each known sender last had a message accepted.
    known: Mutex<HashMap<IpAddr, Instant>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    pub(crate) fn new(slow_frame: Duration) -> Arc<Registry> {
        Arc::new(Registry {
            start: Instant::now(),
            open: Mutex::default(),
            slow_frame,
            known: Mutex::default(),
        })
    }

    /// Registers connection `id` from `ip`, idle from now (a handshake not yet finished counts
    /// as idle).
    pub(crate) fn register(self: &Arc<Self>, id: u64, ip: IpAddr) -> Registration {
        let activity = Arc::new(Activity {
            ip,
            idle_since_ms: AtomicU64::new(0),
            receiving_since_ms: AtomicU64::new(NOT_RECEIVING),
            opened_ms: millis(self.start, Instant::now()),
            accepted_ms: AtomicU64::new(u64::MAX),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        });
        activity.idle_since(self.start, Instant::now());
        lock(&self.open).insert(id, activity.clone());
        Registration {
            id,
            registry: self.clone(),
            activity,
        }
    }

    /// Connections open and not on their way out, per address.
    pub(crate) fn holdings(&self) -> HashMap<IpAddr, usize> {
        let mut held = HashMap::new();
        for activity in lock(&self.open).values() {
            if !activity.evicted.load(Ordering::Relaxed) {
                *held.entry(activity.ip).or_insert(0) += 1;
            }
        }
        held
    }

    /// When `ip` last had a message accepted, if within [`KNOWN_SENDER_FOR`] (a known
    /// sender).
    pub(crate) fn last_accepted(&self, ip: IpAddr) -> Option<Instant> {
        lock(&self.known)
            .get(&ip)
            .copied()
            .filter(|at| at.elapsed() < KNOWN_SENDER_FOR)
    }

    #[cfg(test)]
    fn is_known(&self, ip: IpAddr) -> bool {
        self.last_accepted(ip).is_some()
    }

    fn know(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut known = lock(&self.known);
        if known.len() >= KNOWN_SENDERS_MAX && !known.contains_key(&ip) {
            known.retain(|_, at| now.duration_since(*at) < KNOWN_SENDER_FOR);
            if known.len() >= KNOWN_SENDERS_MAX {
                if let Some(quietest) = known.iter().min_by_key(|(_, at)| **at).map(|(ip, _)| *ip) {
                    known.remove(&quietest);
                }
            }
        }
        known.insert(ip, now);
    }

    /// The connection to make way for a newcomer from `newcomer` (a known sender or not), given
    /// the connections each address holds; `None` when no connection may (see the module docs).
    pub(crate) fn make_way_for(
        &self,
        newcomer: IpAddr,
        newcomer_known: bool,
        holdings: &HashMap<IpAddr, usize>,
    ) -> Option<Arc<Activity>> {
        let held = |ip: &IpAddr| holdings.get(ip).copied().unwrap_or(0);
        let theirs = held(&newcomer);
        let now = millis(self.start, Instant::now());
        lock(&self.open)
            .values()
            .filter(|a| !a.evicted.load(Ordering::Relaxed))
            .filter_map(|a| {
                let ours = held(&a.ip);
                // Between its messages, a connection of an address holding two more than the
                // newcomer's makes way at once.
                let sender_idle = if a.ip != newcomer && ours > theirs + 1 {
                    Duration::ZERO
                } else {
                    MIN_IDLE_TO_EVICT_SENDER
                };
                let (kind, since) = a.candidacy(now, self.slow_frame, sender_idle)?;
                let may = a.ip == newcomer
                    || match kind {
                        Kind::Idle | Kind::SlowFrame => newcomer_known || ours > theirs,
                        Kind::IdleSender => ours > theirs,
                    };
                may.then_some(((kind, Reverse(ours), since), a))
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, a)| a.clone())
    }

    /// Asks `chosen` to close.
    pub(crate) fn evict(&self, chosen: &Activity) {
        chosen.evicted.store(true, Ordering::Release);
        chosen.wake.notify_one();
    }

    /// Connections open and not on their way out.
    #[cfg(test)]
    fn staying(&self) -> usize {
        self.holdings().values().sum()
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

    /// Notes what the connection answered: an acceptance makes it a sending connection and its
    /// address a known sender; any other answer makes it no longer sending (junk between
    /// occasional real messages does not keep a slot).
    pub(crate) fn answered(&self, responses: &[Vec<u8>]) {
        if responses.iter().any(|r| is_acceptance(r)) {
            let now = millis(self.registry.start, Instant::now());
            self.activity.accepted_ms.store(now, Ordering::Relaxed);
            self.registry.know(self.activity.ip);
        } else if !responses.is_empty() {
            self.activity.accepted_ms.store(u64::MAX, Ordering::Relaxed);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.registry.open).remove(&self.id);
    }
}

/// Whether `response` is an HL7 acknowledgement accepting a message: an MSA segment whose
/// first field is `AA` or `CA`.
fn is_acceptance(response: &[u8]) -> bool {
    response
        .split(|&b| b == b'\r' || b == b'\n')
        .find(|segment| segment.starts_with(b"MSA"))
        .and_then(|msa| msa.get(4..6))
        .is_some_and(|code| code == b"AA" || code == b"CA")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, last))
    }

    fn make_way(registry: &Registry, newcomer: IpAddr) -> Option<Arc<Activity>> {
        let chosen =
            registry.make_way_for(newcomer, registry.is_known(newcomer), &registry.holdings())?;
        registry.evict(&chosen);
        Some(chosen)
    }

    fn same(chosen: Option<Arc<Activity>>, expected: &Registration) -> bool {
        chosen.is_some_and(|c| Arc::ptr_eq(&c, &expected.activity))
    }

    fn acceptance(code: &str) -> Vec<Vec<u8>> {
        vec![format!("MSH|^~\\&|HL7BRIDGE|X|S|F|20260101||ACK|1|P|2.5\rMSA|{code}|C1").into_bytes()]
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_idle_connection_makes_way_and_busy_ones_never_do() {
        let registry = Registry::new(Duration::from_secs(3600));
        let first = registry.register(1, HOME);
        tokio::time::advance(MIN_IDLE_TO_EVICT + Duration::from_millis(100)).await;
        let second = registry.register(2, HOME);
        let third = registry.register(3, HOME);
        third.activity.busy();
        // Only the first has been idle long enough.
        assert!(same(make_way(&registry, HOME), &first));
        first.activity.evicted().await;
        assert_eq!(registry.staying(), 2);
        assert!(
            make_way(&registry, HOME).is_none(),
            "the second is too fresh"
        );
        tokio::time::advance(MIN_IDLE_TO_EVICT).await;
        assert!(same(make_way(&registry, HOME), &second));
        second.activity.evicted().await;
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(make_way(&registry, HOME).is_none(), "the busy one stays");
        drop(first);
        drop(second);
        assert_eq!(registry.staying(), 1);
        assert_eq!(lock(&registry.open).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn with_none_idle_the_frame_arriving_longest_makes_way_once_old_enough() {
        let registry = Registry::new(Duration::from_millis(200));
        let older = registry.register(1, HOME);
        let newer = registry.register(2, HOME);
        let answering = registry.register(3, HOME);
        let start = older.registry_start();
        older.activity.receiving_since(start, Instant::now());
        tokio::time::advance(Duration::from_millis(50)).await;
        newer.activity.receiving_since(start, Instant::now());
        answering.activity.busy();
        assert!(
            make_way(&registry, HOME).is_none(),
            "no frame is old enough yet"
        );
        tokio::time::advance(Duration::from_millis(250)).await;
        assert!(same(make_way(&registry, HOME), &older));
        assert!(
            same(make_way(&registry, HOME), &newer),
            "the newer one is old enough too"
        );
        assert!(
            make_way(&registry, HOME).is_none(),
            "a connection being answered never makes way"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_frame_makes_way_for_an_address_holding_fewer_or_for_a_known_sender() {
        let registry = Registry::new(Duration::from_secs(10));
        let start = registry.start;
        // Two addresses, one trickling connection each, and one of them a second connection.
        let a = registry.register(1, ip(2));
        let b = registry.register(2, ip(3));
        let b2 = registry.register(3, ip(3));
        for r in [&a, &b, &b2] {
            r.activity.receiving_since(start, Instant::now());
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        // ip(2) holds one: it may take one of ip(3)'s two, not the other way round.
        assert!(make_way(&registry, ip(2)).is_some_and(|c| c.ip == ip(3)));
        assert!(
            make_way(&registry, ip(3)).is_some_and(|c| c.ip == ip(3)),
            "an address may always replace its own"
        );
        // Now each holds one; a newcomer from a third address holding none takes one.
        assert!(make_way(&registry, ip(4)).is_some_and(|c| c.ip == ip(2)));
        // A new address holding none, against the remaining... none left: all on their way out.
        assert!(make_way(&registry, ip(5)).is_none());

        // Between equals only a known sender gets in.
        let registry = Registry::new(Duration::from_secs(10));
        let earlier = registry.register(1, ip(9));
        earlier.answered(&acceptance("AA"));
        drop(earlier);
        let trickling = registry.register(2, ip(2));
        trickling
            .activity
            .receiving_since(registry.start, Instant::now());
        let busy = [registry.register(3, ip(7)), registry.register(4, ip(9))];
        for r in &busy {
            r.activity.busy();
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(registry.is_known(ip(9)));
        assert!(
            make_way(&registry, ip(7)).is_none(),
            "an unknown address holding as many does not push another out"
        );
        assert!(
            same(make_way(&registry, ip(9)), &trickling),
            "a known sender does"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_whose_messages_were_accepted_keeps_its_connection_longer() {
        let registry = Registry::new(Duration::from_secs(10));
        let sender = registry.register(1, ip(9));
        sender.answered(&acceptance("AE"));
        assert!(!registry.is_known(ip(9)), "AE accepts nothing");
        sender.answered(&acceptance("AA"));
        sender.activity.idle_since(registry.start, Instant::now());
        let other = registry.register(2, ip(9));
        other.activity.idle_since(registry.start, Instant::now());
        tokio::time::advance(MIN_IDLE_TO_EVICT_SENDER - Duration::from_secs(1)).await;
        // Both idle nine seconds: the one that never delivered goes first.
        assert!(same(make_way(&registry, ip(9)), &other));
        assert!(
            make_way(&registry, ip(9)).is_none(),
            "the sender is not idle long enough"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            same(make_way(&registry, ip(9)), &sender),
            "its own address may replace it"
        );

        tokio::time::advance(KNOWN_SENDER_FOR).await;
        assert!(!registry.is_known(ip(9)), "known for an hour only");
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_holding_two_more_gives_up_an_idle_sender() {
        let registry = Registry::new(Duration::from_secs(10));
        let first = registry.register(1, ip(9));
        let second = registry.register(2, ip(9));
        for r in [&first, &second] {
            r.answered(&acceptance("CA"));
            r.activity.idle_since(registry.start, Instant::now());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        tokio::time::advance(MIN_IDLE_TO_EVICT_SENDER).await;
        assert!(same(make_way(&registry, ip(3)), &first));
        // One each: a sender idle ten seconds takes turns with a newcomer holding none.
        assert!(same(make_way(&registry, ip(4)), &second));
        assert!(
            make_way(&registry, ip(5)).is_none(),
            "none left but those of others"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_busy_with_refused_frames_makes_way_once_open_as_long_as_a_slow_frame() {
        let registry = Registry::new(Duration::from_secs(10));
        let chatter = registry.register(1, ip(2));
        // A junk frame answered every 700 ms: never idle a second, never one slow frame.
        for _ in 0..14 {
            tokio::time::advance(Duration::from_millis(700)).await;
            chatter.answered(&acceptance("AR"));
            chatter.activity.idle_since(registry.start, Instant::now());
            if make_way(&registry, ip(3)).is_some() {
                panic!("made way before it was open ten seconds");
            }
        }
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(same(make_way(&registry, ip(3)), &chatter));
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_holding_many_sending_connections_gives_one_up_after_a_second_idle() {
        let registry = Registry::new(Duration::from_secs(10));
        let pulses: Vec<Registration> = (0..4).map(|n| registry.register(n, ip(3))).collect();
        for pulse in &pulses {
            pulse.answered(&acceptance("AA"));
            pulse.activity.idle_since(registry.start, Instant::now());
        }
        tokio::time::advance(MIN_IDLE_TO_EVICT).await;
        assert!(
            make_way(&registry, ip(3)).is_none(),
            "its own newcomer waits for ten seconds idle"
        );
        assert!(make_way(&registry, ip(9)).is_some_and(|c| c.ip == ip(3)));
        // A message accepted over a minute ago no longer counts as sending.
        let registry = Registry::new(Duration::from_secs(10));
        let old = registry.register(9, ip(5));
        old.answered(&acceptance("AA"));
        tokio::time::advance(SENDING_FOR).await;
        old.activity.idle_since(registry.start, Instant::now());
        tokio::time::advance(MIN_IDLE_TO_EVICT).await;
        assert!(same(make_way(&registry, ip(5)), &old));
    }

    #[tokio::test(start_paused = true)]
    async fn junk_after_an_accepted_message_ends_its_standing_as_a_sender() {
        let registry = Registry::new(Duration::from_secs(10));
        let mixed = registry.register(1, ip(2));
        mixed.answered(&acceptance("AA"));
        for _ in 0..15 {
            tokio::time::advance(Duration::from_millis(700)).await;
            mixed.answered(&acceptance("AR"));
            mixed.activity.idle_since(registry.start, Instant::now());
        }
        // Open over ten seconds, its last answer a refusal: it makes way.
        assert!(same(make_way(&registry, ip(3)), &mixed));
    }

    #[test]
    fn only_aa_and_ca_are_acceptances() {
        for (code, accepted) in [
            ("AA", true),
            ("CA", true),
            ("AE", false),
            ("AR", false),
            ("CR", false),
        ] {
            assert_eq!(is_acceptance(&acceptance(code)[0]), accepted, "{code}");
        }
        assert!(!is_acceptance(b"ACK:real"));
        assert!(!is_acceptance(b"MSA"));
        assert!(
            is_acceptance(b"MSH|^~\\&\nMSA#AA#1"),
            "any separator, any line ending"
        );
    }
}
