//! Limits and timeouts of the MLLP server, with their defaults and validation.

use std::time::Duration;

use crate::codec::DEFAULT_MAX_FRAME_BYTES;

/// Server settings. Every field must be above zero; [`MllpConfig::validate`] says which are not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MllpConfig {
    /// Largest accepted payload; a longer frame is answered through
    /// `MessageHandler::oversized` and the connection closed. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// Close a connection that has not started a frame for this long after its last answer
    /// (or after connecting). Bytes outside frames do not count as activity. Default 10 minutes.
    pub idle_timeout_ms: u64,
    /// Close a connection whose frame has not ended this long after its start block, however
    /// steadily bytes arrive, so a trickling sender cannot hold a slot. Default 60 s.
    pub frame_timeout_ms: u64,
    /// At the connection cap, when no connection is idle, a connection whose frame has been
    /// arriving for this long is closed to make way for a newcomer: a sender trickling bytes
    /// from many addresses cannot hold every slot for the frame timeout over and over. Its half
    /// frame was never acknowledged, so a real sender sends it again. Default 10 s.
    pub slow_frame_evict_ms: u64,
    /// Close a connection whose peer does not take a response within this time. Default 30 s.
    pub write_timeout_ms: u64,
    /// Connections served at once. Past it newcomers wait (at most two per address, and
    /// `max(max_connections, 256)` in all) until a connection closes or makes way for them;
    /// see the `slots` module for who makes way and who goes first. Default 1024.
    pub max_connections: usize,
    /// Connections one peer address may hold at once; a further one is closed on accept, before
    /// it has sent anything. Keeps one misbehaving (or hostile) sender from using every slot
    /// and starving the other feeds. Default 64.
    pub max_connections_per_peer: usize,
    /// After shutdown is requested, how long connections get to finish their frame in flight
    /// before they are dropped. Default 10 s.
    pub drain_timeout_ms: u64,
    /// Close a connection whose handshake (see [`Handshake`](crate::Handshake); TLS, say) has
    /// not finished this long after it was accepted. Default 10 s.
    pub handshake_timeout_ms: u64,
    /// Bytes all connections may hold in frames beyond 64 KiB each (see the `buffers` module):
    /// a connection needing more stops reading until others give some back. Default 1 GiB.
    pub max_buffered_bytes: usize,
}

impl Default for MllpConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            idle_timeout_ms: 10 * 60 * 1000,
            frame_timeout_ms: 60 * 1000,
            slow_frame_evict_ms: 10 * 1000,
            write_timeout_ms: 30 * 1000,
            max_connections: 1024,
            max_connections_per_peer: 64,
            drain_timeout_ms: 10 * 1000,
            handshake_timeout_ms: 10 * 1000,
            max_buffered_bytes: 1 << 30,
        }
    }
}

/// Every invalid setting, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MLLP configuration: {}", .problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl MllpConfig {
    /// Checks every field, collecting all problems rather than stopping at the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let zero_checks = [
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("frame_timeout_ms", self.frame_timeout_ms),
            ("slow_frame_evict_ms", self.slow_frame_evict_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_peer",
                self.max_connections_per_peer as u64,
            ),
            ("drain_timeout_ms", self.drain_timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("max_buffered_bytes", self.max_buffered_bytes as u64),
        ];
        let problems: Vec<String> = zero_checks
            .iter()
            .filter(|(_, value)| *value == 0)
            .map(|(name, _)| format!("{name} must be above zero"))
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        Err(ConfigError { problems })
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub(crate) fn frame_timeout(&self) -> Duration {
        Duration::from_millis(self.frame_timeout_ms)
    }

    pub(crate) fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub(crate) fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(MllpConfig::default().validate(), Ok(()));
    }

    #[test]
    fn every_zero_setting_is_reported_at_once() {
        let config = MllpConfig {
            max_connections: 0,
            idle_timeout_ms: 0,
            ..MllpConfig::default()
        };

        let problems = config.validate().map_err(|e| e.problems);

        assert_eq!(
            problems,
            Err(vec![
                "idle_timeout_ms must be above zero".to_string(),
                "max_connections must be above zero".to_string(),
            ])
        );
    }
}
