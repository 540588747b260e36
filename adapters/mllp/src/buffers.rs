//! The memory all connections may hold in frames: bytes buffered of a frame still arriving,
//! and the frame being answered.
//!
//! A frame is read whole before it is answered, up to `max_frame_bytes` (16 MiB by default),
//! so without a bound 1024 connections could hold 16 GiB; a hostile tester's 100 connections
//! each holding 15 MiB of an unfinished frame took the server from 1.2 to 2.5 GB. Each
//! connection holds its first [`FREE_BYTES`] uncharged, so ordinary messages never wait here;
//! beyond that, what it holds is charged to one budget for all ([`FrameBuffers`]). A connection
//! that needs more than the budget has left stops reading (its sender is held back by TCP)
//! until others give some back, within its frame timeout.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// What each connection holds uncharged: 64 KiB, more than any ordinary message.
pub const FREE_BYTES: usize = 64 * 1024;

/// The budget, counted in KiB.
#[derive(Debug)]
pub struct FrameBuffers {
    kib: Arc<Semaphore>,
}

impl FrameBuffers {
    pub fn new(max_bytes: usize) -> FrameBuffers {
        let kib = (max_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS);
        FrameBuffers {
            kib: Arc::new(Semaphore::new(kib)),
        }
    }

    /// A connection's charge, nothing held yet.
    pub fn charge(&self) -> Charge {
        Charge {
            kib: Arc::clone(&self.kib),
            held_kib: 0,
        }
    }
}

/// What one connection holds of the budget; all of it is given back when dropped.
#[derive(Debug)]
pub struct Charge {
    kib: Arc<Semaphore>,
    held_kib: u32,
}

impl Charge {
    /// Makes the charge cover `bytes` held, waiting for the budget when it must grow.
    pub async fn grow_to(&mut self, bytes: usize) {
        let needed = Self::kib_for(bytes);
        if needed > self.held_kib {
            self.kib
                .acquire_many(needed - self.held_kib)
                .await
                .expect("the frame budget is never closed")
                .forget();
            self.held_kib = needed;
        }
    }

    /// Gives back what holding `bytes` no longer needs.
    pub fn shrink_to(&mut self, bytes: usize) {
        let needed = Self::kib_for(bytes);
        if needed < self.held_kib {
            self.kib.add_permits((self.held_kib - needed) as usize);
            self.held_kib = needed;
        }
    }

    fn kib_for(bytes: usize) -> u32 {
        u32::try_from(bytes.saturating_sub(FREE_BYTES).div_ceil(1024)).unwrap_or(u32::MAX)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn within(future: impl std::future::Future<Output = ()>) -> bool {
        tokio::time::timeout(Duration::from_millis(100), future)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn the_free_bytes_are_never_charged_and_the_rest_waits_for_the_budget() {
        let buffers = FrameBuffers::new(100 * 1024);
        let (mut a, mut b) = (buffers.charge(), buffers.charge());
        assert!(within(a.grow_to(FREE_BYTES)).await, "free");
        assert!(within(a.grow_to(FREE_BYTES + 80 * 1024)).await);
        // 20 KiB are left: b's first 64 KiB are free, 30 more must wait.
        assert!(within(b.grow_to(FREE_BYTES)).await);
        assert!(!within(b.grow_to(FREE_BYTES + 30 * 1024)).await);
        a.shrink_to(FREE_BYTES + 40 * 1024);
        assert!(within(b.grow_to(FREE_BYTES + 30 * 1024)).await);
        drop(a);
        assert!(
            within(b.grow_to(FREE_BYTES + 90 * 1024)).await,
            "a gave all back"
        );
    }
}
