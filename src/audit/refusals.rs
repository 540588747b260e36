//! Bounds what requests refused for want of a valid token (HTTP 401) add to the audit trail.
//!
//! Anyone who can reach the listener can send such requests, as fast as the network allows;
//! recording each one would let an unauthenticated flood grow the trail without bound. So per
//! source address only the first [`PER_ADDRESS_PER_SECOND`] each second (and
//! [`TOTAL_PER_SECOND`] over all addresses) are recorded one by one. The rest are counted, and
//! the audit writer turns each address's count into one summary event every
//! [`SUMMARY_INTERVAL`], and whenever the trail is flushed or closed: every refusal stays in
//! the trail, as an event of its own or in a count. Requests that carry a valid token are not
//! limited here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// 401 refusals from one address recorded one by one per second, at most.
pub const PER_ADDRESS_PER_SECOND: u32 = 5;
/// 401 refusals recorded one by one per second over all addresses, at most.
pub const TOTAL_PER_SECOND: u32 = 50;
/// How often counted refusals are written as summaries.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// Addresses counted apart, at most; refusals from others share one count (and are never
/// recorded one by one), so a flood from many addresses cannot grow this table either.
pub const MAX_ADDRESSES: usize = 1024;

/// Refusals counted, not recorded, since the last summary: from one address, or (with an empty
/// `network`) from addresses past [`MAX_ADDRESSES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub network: String,
    pub count: u64,
    pub first_us: i64,
    pub last_us: i64,
}

#[derive(Debug, Default)]
pub struct Refusals {
    window_start: Option<Instant>,
    recorded_in_window: u32,
    addresses: HashMap<String, Tally>,
    elsewhere: Tally,
}

#[derive(Debug, Default)]
struct Tally {
    recorded_in_window: u32,
    counted: u64,
    first_us: i64,
    last_us: i64,
}

impl Tally {
    fn count(&mut self, now_us: i64) {
        if self.counted == 0 {
            self.first_us = now_us;
        }
        self.counted += 1;
        self.last_us = now_us;
    }

    fn take(&mut self, network: &str) -> Option<Summary> {
        if self.counted == 0 {
            return None;
        }
        let summary = Summary {
            network: network.to_string(),
            count: self.counted,
            first_us: self.first_us,
            last_us: self.last_us,
        };
        self.counted = 0;
        Some(summary)
    }
}

impl Refusals {
    /// Whether a refusal from `network` is recorded one by one (`true`) or only counted.
    pub fn admit(&mut self, network: &str, now: Instant, now_us: i64) -> bool {
        self.roll_window(now);
        let room = self.recorded_in_window < TOTAL_PER_SECOND;
        let tracked = self.addresses.len() < MAX_ADDRESSES || self.addresses.contains_key(network);
        if !tracked {
            self.elsewhere.count(now_us);
            return false;
        }
        let tally = self.addresses.entry(network.to_string()).or_default();
        if room && tally.recorded_in_window < PER_ADDRESS_PER_SECOND {
            tally.recorded_in_window += 1;
            self.recorded_in_window += 1;
            return true;
        }
        tally.count(now_us);
        false
    }

    /// The counts since the last call, one per address, which start again from zero.
    pub fn take_summaries(&mut self) -> Vec<Summary> {
        let mut summaries: Vec<Summary> = self
            .addresses
            .iter_mut()
            .filter_map(|(network, tally)| tally.take(network))
            .collect();
        summaries.extend(self.elsewhere.take(""));
        summaries
    }

    /// A new second: every address may be recorded again, and addresses with nothing counted
    /// are forgotten.
    fn roll_window(&mut self, now: Instant) {
        let current = self
            .window_start
            .is_some_and(|start| now.duration_since(start) < Duration::from_secs(1));
        if current {
            return;
        }
        self.window_start = Some(now);
        self.recorded_in_window = 0;
        self.addresses.retain(|_, tally| {
            tally.recorded_in_window = 0;
            tally.counted > 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_recorded_a_few_times_a_second_and_counted_beyond() {
        let mut refusals = Refusals::default();
        let start = Instant::now();
        let admitted = (0..100)
            .filter(|i| refusals.admit("10.0.0.1", start, *i))
            .count();
        assert_eq!(admitted, PER_ADDRESS_PER_SECOND as usize);
        assert!(refusals.admit("10.0.0.2", start, 100), "another address");
        let later = start + Duration::from_millis(1500);
        assert!(refusals.admit("10.0.0.1", later, 200), "the next second");
        let summaries = refusals.take_summaries();
        let expected = Summary {
            network: "10.0.0.1".into(),
            count: 100 - PER_ADDRESS_PER_SECOND as u64,
            first_us: PER_ADDRESS_PER_SECOND as i64,
            last_us: 99,
        };
        assert_eq!(summaries, [expected]);
        assert!(refusals.take_summaries().is_empty());
    }

    #[test]
    fn many_addresses_share_a_total_and_one_count_past_the_table() {
        let mut refusals = Refusals::default();
        let now = Instant::now();
        let addresses = MAX_ADDRESSES + 10;
        let admitted = (0..addresses)
            .filter(|i| refusals.admit(&format!("10.1.{}.{}", i / 256, i % 256), now, 1))
            .count();
        assert_eq!(admitted, TOTAL_PER_SECOND as usize);
        let summaries = refusals.take_summaries();
        let counted: u64 = summaries.iter().map(|s| s.count).sum();
        assert_eq!(counted as usize, addresses - admitted);
        let elsewhere = summaries.iter().find(|s| s.network.is_empty()).unwrap();
        assert_eq!(elsewhere.count, 10);
    }
}
