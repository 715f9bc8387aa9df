//! Hybrid logical clock: wall millis + logical counter + node id.
//!
//! Every replicated write is stamped with an [`Hlc`]. Stamps are totally ordered
//! (`millis`, then `counter`, then `node`), and unique because a node never
//! issues the same `(millis, counter)` twice, so LWW merges are deterministic.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// Injected so that the simulator can run agents under virtual time and skew.
pub trait WallClock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch, as this node believes.
    fn now_millis(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock driven by hand (tests) or by the simulator's virtual time.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `millis`.
    pub fn new(millis: u64) -> Self {
        Self(Arc::new(AtomicU64::new(millis)))
    }

    /// Sets the reading.
    pub fn set(&self, millis: u64) {
        self.0.store(millis, Ordering::SeqCst);
    }

    /// Moves the reading forward by `millis`.
    pub fn advance(&self, millis: u64) {
        self.0.fetch_add(millis, Ordering::SeqCst);
    }
}

impl WallClock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// One HLC stamp.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Hlc {
    /// Wall-clock component, milliseconds since the Unix epoch.
    pub millis: u64,
    /// Logical counter breaking ties within one millisecond.
    pub counter: u32,
    /// The node that issued the stamp (final tie-break, makes stamps unique).
    pub node: String,
}

impl Hlc {
    /// A stamp (mostly for tests and decoding).
    pub fn new(millis: u64, counter: u32, node: impl Into<String>) -> Self {
        Self {
            millis,
            counter,
            node: node.into(),
        }
    }

    /// Parses the `millis.counter@node` form printed by `Display`.
    pub fn parse(text: &str) -> Option<Hlc> {
        let (time, node) = text.split_once('@')?;
        let (millis, counter) = time.split_once('.')?;
        Some(Hlc::new(millis.parse().ok()?, counter.parse().ok()?, node))
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.millis, self.counter, self.node)
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The clock of one node: issues strictly increasing stamps and absorbs remote ones.
pub struct HlcClock {
    node: String,
    wall: Arc<dyn WallClock>,
    last_millis: u64,
    last_counter: u32,
}

impl fmt::Debug for HlcClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HlcClock")
            .field("node", &self.node)
            .field("last_millis", &self.last_millis)
            .field("last_counter", &self.last_counter)
            .finish()
    }
}

impl HlcClock {
    /// A clock for `node` reading `wall`.
    pub fn new(node: impl Into<String>, wall: Arc<dyn WallClock>) -> Self {
        Self {
            node: node.into(),
            wall,
            last_millis: 0,
            last_counter: 0,
        }
    }

    /// The node id stamped into every issued stamp.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Issues a stamp greater than every stamp issued or observed before.
    pub fn now(&mut self) -> Hlc {
        let wall = self.wall.now_millis();
        if wall > self.last_millis {
            self.last_millis = wall;
            self.last_counter = 0;
        } else {
            self.bump();
        }
        Hlc::new(self.last_millis, self.last_counter, self.node.clone())
    }

    /// Absorbs a stamp seen from elsewhere (a merged write or a persisted one), so that
    /// later local stamps order after it even if this node's wall clock is behind.
    pub fn observe(&mut self, seen: &Hlc) {
        if (seen.millis, seen.counter) > (self.last_millis, self.last_counter) {
            self.last_millis = seen.millis;
            self.last_counter = seen.counter;
        }
    }

    /// The greatest stamp issued or observed, for persisting across restarts.
    pub fn last(&self) -> Hlc {
        Hlc::new(self.last_millis, self.last_counter, self.node.clone())
    }

    fn bump(&mut self) {
        match self.last_counter.checked_add(1) {
            Some(counter) => self.last_counter = counter,
            None => {
                // 4 billion writes in one millisecond: borrow from the next millisecond.
                self.last_millis += 1;
                self.last_counter = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_strictly_increase_even_when_wall_clock_stalls_or_goes_back() {
        let wall = ManualClock::new(1_000);
        let mut clock = HlcClock::new("a", Arc::new(wall.clone()));
        let first = clock.now();
        let second = clock.now();
        assert!(second > first);
        wall.set(500);
        let third = clock.now();
        assert!(third > second);
        assert_eq!(third.millis, 1_000);
        wall.set(2_000);
        assert_eq!(clock.now(), Hlc::new(2_000, 0, "a"));
    }

    #[test]
    fn observing_a_future_stamp_orders_later_writes_after_it() {
        let wall = ManualClock::new(1_000);
        let mut clock = HlcClock::new("a", Arc::new(wall));
        clock.observe(&Hlc::new(9_000, 7, "b"));
        let next = clock.now();
        assert!(next > Hlc::new(9_000, 7, "b"));
        assert_eq!((next.millis, next.counter), (9_000, 8));
    }

    #[test]
    fn seeded_from_persisted_stamp_stays_monotonic_across_restart() {
        let wall = ManualClock::new(100);
        let mut before = HlcClock::new("a", Arc::new(wall.clone()));
        wall.set(5_000);
        let issued = before.now();
        wall.set(100); // the machine rebooted with a clock behind
        let mut after = HlcClock::new("a", Arc::new(wall));
        after.observe(&before.last());
        assert!(after.now() > issued);
    }

    #[test]
    fn display_parse_roundtrip() {
        let stamp = Hlc::new(1_700_000_000_000, 3, "n1");
        assert_eq!(Hlc::parse(&stamp.to_string()), Some(stamp));
        assert_eq!(Hlc::parse("garbage"), None);
    }
}
