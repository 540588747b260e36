//! The memory HL7v2 messages being parsed and mapped at once may take, shared fairly between
//! senders.
//!
//! Each message is charged an estimate ([`super::process`]'s `MessageCost`) while it is
//! processed. One pool alone is first come, first served: a sender keeping 64 connections busy
//! with messages of a quarter of a million fields queued ahead of everyone else, and a hostile
//! tester's other sender waited 25 s for one ordinary message. So:
//! - ordinary messages (charged at most [`SMALL_KIB`]) draw on a reserve of their own
//!   ([`RESERVE_KIB`], beside the budget), so they never queue behind large ones, however many
//!   addresses send those (thirteen addresses had held an ordinary message up 5 s);
//! - no sender (an MLLP client address, or a Kafka topic's consumer) holds more than half of
//!   the budget for large messages: what it asks for beyond that waits on its own share, not
//!   in the queue the other senders share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// The most a message may be charged and still count as ordinary: 4 MiB. An ORU^R01 with ten
/// OBX is charged about 250 KiB.
pub const SMALL_KIB: u32 = 4 << 10;

/// The reserve for ordinary messages, in KiB: 256 MiB, an ordinary message on each of a
/// thousand connections, or 64 at the largest ordinary charge.
pub const RESERVE_KIB: u32 = 256 << 10;

pub struct MemoryBudget {
    /// The budget for large messages, in KiB.
    total: Semaphore,
    /// The reserve for ordinary ones, and its size in KiB.
    reserve: Semaphore,
    reserve_kib: u32,
    /// The largest ordinary charge.
    small_kib: u32,
    /// The most one sender may hold, in KiB.
    share: u32,
    /// Each sender's share while it holds or waits for some of it.
    senders: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A message's charge, given back when dropped.
pub struct Held<'a> {
    _charge: Charge<'a>,
}

enum Charge<'a> {
    Ordinary {
        _reserve: SemaphorePermit<'a>,
    },
    Large {
        _total: SemaphorePermit<'a>,
        _share: SenderShare<'a>,
    },
}

impl MemoryBudget {
    /// A budget of `total_kib` for large messages and `reserve_kib` for ordinary ones, those
    /// charged at most `small_kib`.
    pub fn new(total_kib: u32, reserve_kib: u32, small_kib: u32) -> MemoryBudget {
        MemoryBudget {
            total: Semaphore::new(total_kib as usize),
            reserve: Semaphore::new(reserve_kib as usize),
            reserve_kib,
            small_kib,
            share: (total_kib / 2).max(1),
            senders: Mutex::default(),
        }
    }

    /// Charges `kib` (at most the whole budget) to the reserve when it is ordinary, else to
    /// the sender `sender` names and to the budget, waiting for room. A message costing more
    /// than a sender's share takes the whole share. The sender is named only for a large
    /// message: ordinary ones, nearly all, skip that work.
    pub async fn charge(&self, sender: impl FnOnce() -> String, kib: u32) -> Held<'_> {
        if kib <= self.small_kib {
            let permit = self
                .reserve
                .acquire_many(kib.min(self.reserve_kib))
                .await
                .expect("the reserve is never closed");
            return Held {
                _charge: Charge::Ordinary { _reserve: permit },
            };
        }
        let sender = sender();
        let sender = sender.as_str();
        let semaphore = self
            .senders
            .lock()
            .expect("the senders' shares are never poisoned")
            .entry(sender.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.share as usize)))
            .clone();
        // Dropped on every path, a wait given up too, so that the sender's entry goes.
        let mut share = SenderShare {
            budget: self,
            sender: sender.to_string(),
            semaphore: Some(semaphore.clone()),
            permit: None,
        };
        share.permit = Some(
            semaphore
                .acquire_many_owned(kib.min(self.share))
                .await
                .expect("a sender's share is never closed"),
        );
        let total = self
            .total
            .acquire_many(kib)
            .await
            .expect("the memory budget is never closed");
        Held {
            _charge: Charge::Large {
                _total: total,
                _share: share,
            },
        }
    }

    /// Senders holding or waiting for part of the budget.
    #[cfg(test)]
    fn senders(&self) -> usize {
        self.senders.lock().unwrap().len()
    }
}

struct SenderShare<'a> {
    budget: &'a MemoryBudget,
    sender: String,
    semaphore: Option<Arc<Semaphore>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for SenderShare<'_> {
    fn drop(&mut self) {
        self.permit.take();
        self.semaphore.take();
        let mut senders = self
            .budget
            .senders
            .lock()
            .expect("the senders' shares are never poisoned");
        // Only the map holds it: nobody holds or waits for this sender's share any more.
        if senders
            .get(&self.sender)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            senders.remove(&self.sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn within<T>(future: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(200), future)
            .await
            .ok()
    }

    /// 100 for large messages, 10 reserved for those charged 5 or less.
    fn budget() -> MemoryBudget {
        MemoryBudget::new(100, 10, 5)
    }

    #[tokio::test]
    async fn a_sender_at_its_share_waits_while_another_is_charged_at_once() {
        let budget = budget();
        let first = budget.charge(|| "10.0.0.1".into(), 30).await;
        let second = budget.charge(|| "10.0.0.1".into(), 20).await;
        // Over half: this one waits for the sender's own share.
        let waiting = budget.charge(|| "10.0.0.1".into(), 30);
        tokio::pin!(waiting);
        assert!(within(&mut waiting).await.is_none());
        // Another sender is charged at once, though the first sender's wait came earlier.
        let other = within(budget.charge(|| "10.0.0.2".into(), 50)).await;
        assert!(other.is_some(), "another sender does not queue behind it");
        drop(first);
        // 20 + 30 of the first sender's share, 50 of the other's: the whole budget.
        let third = within(&mut waiting).await;
        assert!(third.is_some());
        drop((second, third, other));
        assert_eq!(budget.senders(), 0, "idle senders are forgotten");
    }

    #[tokio::test]
    async fn a_message_costing_more_than_a_share_takes_the_whole_share() {
        let budget = budget();
        let big = within(budget.charge(|| "a".into(), 90))
            .await
            .expect("charged");
        assert!(within(budget.charge(|| "a".into(), 6)).await.is_none());
        assert!(within(budget.charge(|| "b".into(), 10)).await.is_some());
        assert!(
            within(budget.charge(|| "b".into(), 11)).await.is_none(),
            "90 are taken"
        );
        drop(big);
        assert!(within(budget.charge(|| "a".into(), 6)).await.is_some());
    }

    #[tokio::test]
    async fn ordinary_messages_do_not_queue_behind_large_ones_of_many_senders() {
        let budget = budget();
        // Two senders fill the budget; three more wait for it, in the queue they share.
        let held = [
            budget.charge(|| "a".into(), 50).await,
            budget.charge(|| "b".into(), 50).await,
        ];
        let mut waiting: Vec<_> = ["c", "d", "e"]
            .into_iter()
            .map(|sender| Box::pin(budget.charge(|| sender.to_string(), 40)))
            .collect();
        for wait in &mut waiting {
            assert!(within(wait).await.is_none());
        }
        // Ordinary charges go in at once, up to the reserve.
        let ordinary = [
            within(budget.charge(|| "f".into(), 5))
                .await
                .expect("not queued"),
            within(budget.charge(|| "c".into(), 5))
                .await
                .expect("not queued"),
        ];
        assert!(
            within(budget.charge(|| "g".into(), 1)).await.is_none(),
            "the reserve is full"
        );
        drop(ordinary);
        assert!(within(budget.charge(|| "g".into(), 1)).await.is_some());
        drop(held);
    }

    #[tokio::test]
    async fn a_wait_given_up_forgets_the_sender() {
        let budget = MemoryBudget::new(10, 1, 0);
        let held = budget.charge(|| "a".into(), 10).await;
        assert!(within(budget.charge(|| "b".into(), 10)).await.is_none());
        drop(held);
        assert_eq!(budget.senders(), 0);
    }
}
