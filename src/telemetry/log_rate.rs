//! Warnings of one kind, at most so many a second: a client repeating what causes one (a
//! flood of refused frames, connections past a limit) must not fill the log, and the next line
//! logged says how many went unlogged.

/// At most `per_second` lines a second of one kind.
#[derive(Debug)]
pub struct LogRate {
    per_second: u64,
    /// (the second, lines logged in it, lines not logged since the last one logged)
    state: std::sync::Mutex<(u64, u64, u64)>,
}

impl LogRate {
    pub const fn new(per_second: u64) -> LogRate {
        LogRate {
            per_second,
            state: std::sync::Mutex::new((0, 0, 0)),
        }
    }

    /// `Some(lines not logged since the last)` when this one may be logged.
    pub fn admit(&self) -> Option<u64> {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (at, logged, unlogged) = &mut *state;
        if *at != second {
            (*at, *logged) = (second, 0);
        }
        if *logged >= self.per_second {
            *unlogged += 1;
            return None;
        }
        *logged += 1;
        Some(std::mem::take(unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_past_the_rate_are_counted_not_logged() {
        let rate = LogRate::new(3);
        let admitted: Vec<Option<u64>> = (0..5).map(|_| rate.admit()).collect();
        // Unless the second turned meanwhile, the last two are held back.
        if admitted.iter().filter(|a| a.is_some()).count() == 3 {
            assert_eq!(admitted, [Some(0), Some(0), Some(0), None, None]);
            std::thread::sleep(std::time::Duration::from_millis(1100));
            assert_eq!(
                rate.admit(),
                Some(2),
                "the next line says two went unlogged"
            );
        }
    }
}
