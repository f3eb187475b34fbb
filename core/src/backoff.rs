//! Reconnection delays: exponential with full jitter, capped, so that many
//! clients losing the same server do not all come back in the same instant.

use std::time::Duration;

/// First retry delay.
pub const INITIAL: Duration = Duration::from_millis(200);
/// Longest wait between two attempts; short enough that a restarted server
/// is noticed quickly by a person watching.
pub const MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        Self { attempt: 0 }
    }

    /// Forget past failures (call after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = INITIAL
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(MAX);
        self.attempt = self.attempt.saturating_add(1);
        // Jitter in [ceiling/2, ceiling]: cheap randomness from a UUIDv4.
        let r = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
        ceiling / 2 + ceiling / 2 * r / 1000
    }

    /// Sleeps for [`Self::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first <= INITIAL && first >= INITIAL / 2);
        for _ in 0..40 {
            assert!(b.next_delay() <= MAX);
        }
        assert!(b.next_delay() >= MAX / 2);
        b.reset();
        assert!(b.next_delay() <= INITIAL);
    }
}
