//! The simulated wall clock of one node: tokio's virtual time plus a skew.
//!
//! Agents take a [`WallClock`]; under a paused tokio runtime [`tokio::time::Instant`]
//! only moves when the runtime is idle, so reading it is exactly "virtual now". The
//! skew is shared with the simulator, which changes it while the agent runs (a clock
//! step, as NTP would make), and survives the agent's restarts (it is the host's clock).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use georep_mesh::WallClock;
use tokio::time::Instant;

/// Wall-clock reading at virtual time zero: 2024-01-01T00:00:00Z.
pub const SIM_EPOCH_MS: u64 = 1_704_067_200_000;

/// A node's clock: `SIM_EPOCH_MS` + virtual time elapsed since `origin` + skew.
#[derive(Debug, Clone)]
pub struct VirtualClock {
    origin: Instant,
    skew_ms: Arc<AtomicI64>,
}

impl VirtualClock {
    /// A clock whose zero is `origin` (the start of the run), without skew.
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            skew_ms: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Sets the skew (milliseconds ahead of true time; negative is behind).
    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::SeqCst);
    }

    /// The current skew.
    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::SeqCst)
    }
}

impl WallClock for VirtualClock {
    fn now_millis(&self) -> u64 {
        let elapsed = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        SIM_EPOCH_MS
            .saturating_add(elapsed)
            .saturating_add_signed(self.skew_ms())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_virtual_time_and_skew() {
        let clock = VirtualClock::new(Instant::now());
        assert_eq!(clock.now_millis(), SIM_EPOCH_MS);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(clock.now_millis(), SIM_EPOCH_MS + 10_000);
        clock.set_skew_ms(-3_000);
        assert_eq!(clock.now_millis(), SIM_EPOCH_MS + 7_000);
    }
}
