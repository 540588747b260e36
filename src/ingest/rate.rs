//! Per-peer pacing of MLLP messages: a token bucket per sending address, shared by all of that
//! address's connections. A sender over its rate is slowed, not refused: its next ACK waits
//! until the bucket allows the message, and MLLP senders wait for each ACK before sending on.
//! A runaway interface thus cannot take the whole ingest path from the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Peers remembered at most; idle ones are forgotten first.
const MAX_PEERS: usize = 10_000;

pub struct PeerRate {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    /// May go below zero: a batch larger than the burst is let through and paid for by the
    /// waits of what follows.
    tokens: f64,
    at: Instant,
}

impl PeerRate {
    /// `per_second` messages per peer, with bursts of as many (at least one).
    pub fn new(per_second: u32) -> PeerRate {
        PeerRate {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(per_second.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// How long `messages` from `peer` must wait before they are processed (zero within the
    /// rate); the messages are counted now.
    pub fn delay(&self, peer: IpAddr, messages: usize) -> Duration {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_PEERS && !buckets.contains_key(&peer) {
            let idle = Duration::from_secs_f64(self.burst / self.per_second);
            buckets.retain(|_, b| now.duration_since(b.at) < idle);
        }
        let bucket = buckets.entry(peer).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst) - messages as f64;
        bucket.at = now;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_within_its_rate_never_waits_and_one_over_it_waits_its_share() {
        let rate = PeerRate::new(10);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(rate.delay(a, 1), Duration::ZERO);
        }
        let wait = rate.delay(a, 1);
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(101),
            "{wait:?}"
        );
        // Another peer has its own bucket.
        assert_eq!(rate.delay(b, 1), Duration::ZERO);
        // A batch beyond the burst passes and is paid for afterwards.
        let wait = rate.delay(b, 30);
        assert!(wait >= Duration::from_millis(2000), "{wait:?}");
    }
}
