//! Fault injection below the mesh: loss, delay with jitter (hence reordering),
//! duplication, and one-way or two-way partitions between arbitrary groups.
//!
//! This kernel has no `tc netem`, so latency in tests comes from here. One [`Faults`]
//! controls every link it wrapped; decisions come from a seeded generator so a run's
//! fault schedule is reproducible from its seed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::network::{Frame, Link, LinkStats, Received, TransportError};

/// A small, fast, seedable generator (SplitMix64): reproducible fault decisions.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float uniformly in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An integer uniformly in `[0, n)` (`0` when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.next_f64() < p
    }
}

/// Faults applied to frames on one directed link.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFaults {
    /// Probability that a frame is lost.
    pub loss: f64,
    /// Fixed added delay.
    pub delay: Duration,
    /// Extra uniformly random delay in `[0, jitter)`; reorders frames.
    pub jitter: Duration,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
}

#[derive(Debug)]
struct FaultState {
    rng: SeededRng,
    default: LinkFaults,
    per_link: HashMap<(SocketAddr, SocketAddr), LinkFaults>,
    blocked: HashSet<(SocketAddr, SocketAddr)>,
    dropped: u64,
    duplicated: u64,
}

/// What happens to one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Lost (partition or loss).
    Dropped,
    /// Delivered once per listed delay.
    Deliver(Vec<Duration>),
}

/// The fault controller shared by every wrapped link.
#[derive(Debug, Clone)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
}

impl Faults {
    /// A controller with no faults, drawing from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(FaultState {
                rng: SeededRng::new(seed),
                default: LinkFaults::default(),
                per_link: HashMap::new(),
                blocked: HashSet::new(),
                dropped: 0,
                duplicated: 0,
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut FaultState) -> T) -> T {
        // A poisoned lock only means a panic elsewhere mid-update; the state is plain data.
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Faults for every link without its own setting.
    pub fn set_default(&self, faults: LinkFaults) {
        self.with(|s| s.default = faults);
    }

    /// Faults for the directed link `from -> to`.
    pub fn set_link(&self, from: SocketAddr, to: SocketAddr, faults: LinkFaults) {
        self.with(|s| {
            s.per_link.insert((from, to), faults);
        });
    }

    /// Cuts `from -> to` only (a one-way partition).
    pub fn block(&self, from: SocketAddr, to: SocketAddr) {
        self.with(|s| {
            s.blocked.insert((from, to));
        });
    }

    /// Cuts every link between different groups, both ways. Addresses in no group keep
    /// talking to everyone.
    pub fn partition(&self, groups: &[Vec<SocketAddr>]) {
        self.with(|s| {
            for (i, a) in groups.iter().enumerate() {
                for (j, b) in groups.iter().enumerate() {
                    if i == j {
                        continue;
                    }
                    for from in a {
                        for to in b {
                            s.blocked.insert((*from, *to));
                        }
                    }
                }
            }
        });
    }

    /// Removes every partition and per-link setting, and the default faults.
    pub fn heal(&self) {
        self.with(|s| {
            s.blocked.clear();
            s.per_link.clear();
            s.default = LinkFaults::default();
        });
    }

    /// Whether `from -> to` is currently cut.
    pub fn is_blocked(&self, from: SocketAddr, to: SocketAddr) -> bool {
        self.with(|s| s.blocked.contains(&(from, to)))
    }

    /// Frames dropped and duplicated so far.
    pub fn counters(&self) -> (u64, u64) {
        self.with(|s| (s.dropped, s.duplicated))
    }

    /// Decides the fate of one frame on `from -> to`.
    pub fn decide(&self, from: SocketAddr, to: SocketAddr) -> Fate {
        self.with(|s| {
            if s.blocked.contains(&(from, to)) {
                s.dropped += 1;
                return Fate::Dropped;
            }
            let faults = s.per_link.get(&(from, to)).copied().unwrap_or(s.default);
            if s.rng.chance(faults.loss) {
                s.dropped += 1;
                return Fate::Dropped;
            }
            let copies = if s.rng.chance(faults.duplicate) {
                s.duplicated += 1;
                2
            } else {
                1
            };
            let delays = (0..copies)
                .map(|_| {
                    let jitter = faults.jitter.as_micros() as u64;
                    faults.delay + Duration::from_micros(s.rng.below(jitter))
                })
                .collect();
            Fate::Deliver(delays)
        })
    }

    /// Wraps `link` so that its outgoing frames suffer this controller's faults.
    pub fn wrap(&self, link: Arc<dyn Link>) -> Arc<FaultyLink> {
        Arc::new(FaultyLink {
            inner: link,
            faults: self.clone(),
        })
    }
}

/// A link whose outgoing frames pass through a [`Faults`] controller.
pub struct FaultyLink {
    inner: Arc<dyn Link>,
    faults: Faults,
}

#[async_trait]
impl Link for FaultyLink {
    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    fn node_id(&self) -> &str {
        self.inner.node_id()
    }

    async fn send(&self, to: SocketAddr, frame: Frame) -> Result<(), TransportError> {
        let Fate::Deliver(delays) = self.faults.decide(self.local_addr(), to) else {
            return Ok(());
        };
        for delay in delays {
            if delay.is_zero() {
                self.inner.send(to, frame.clone()).await?;
            } else {
                let inner = self.inner.clone();
                let frame = frame.clone();
                // Bounded by the sender's own rate; each task ends after one send.
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = inner.send(to, frame).await;
                });
            }
        }
        Ok(())
    }

    async fn recv(&self) -> Result<Received, TransportError> {
        self.inner.recv().await
    }

    fn stats(&self) -> Arc<LinkStats> {
        self.inner.stats()
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemHub;
    use crate::network::FrameKind;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn same_seed_same_fates() {
        let run = |seed| {
            let faults = Faults::new(seed);
            faults.set_default(LinkFaults {
                loss: 0.3,
                delay: Duration::from_millis(5),
                jitter: Duration::from_millis(10),
                duplicate: 0.2,
            });
            (0..100)
                .map(|_| faults.decide(addr(1), addr(2)))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let fates = run(7);
        let dropped = fates.iter().filter(|f| **f == Fate::Dropped).count();
        assert!(
            (10..=50).contains(&dropped),
            "{dropped} of 100 dropped at 30% loss"
        );
    }

    #[test]
    fn partitions_cut_across_groups_only_and_heal() {
        let faults = Faults::new(1);
        faults.partition(&[vec![addr(1), addr(2)], vec![addr(3)]]);
        assert_eq!(faults.decide(addr(1), addr(3)), Fate::Dropped);
        assert_eq!(faults.decide(addr(3), addr(2)), Fate::Dropped);
        assert_eq!(
            faults.decide(addr(1), addr(2)),
            Fate::Deliver(vec![Duration::ZERO])
        );
        assert_eq!(
            faults.decide(addr(4), addr(3)),
            Fate::Deliver(vec![Duration::ZERO])
        );
        faults.heal();
        faults.block(addr(1), addr(2));
        assert_eq!(faults.decide(addr(1), addr(2)), Fate::Dropped);
        assert_ne!(faults.decide(addr(2), addr(1)), Fate::Dropped);
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_and_duplicated_frames_arrive_later() {
        let hub = MemHub::new();
        let faults = Faults::new(3);
        let a = faults.wrap(hub.bind("a", addr(1)).unwrap());
        let b = hub.bind("b", addr(2)).unwrap();
        faults.set_link(
            addr(1),
            addr(2),
            LinkFaults {
                loss: 0.0,
                delay: Duration::from_millis(100),
                jitter: Duration::ZERO,
                duplicate: 1.0,
            },
        );
        let start = tokio::time::Instant::now();
        a.send(addr(2), Frame::new(FrameKind::Push, vec![1]))
            .await
            .unwrap();
        let first = b.recv().await.unwrap();
        let second = b.recv().await.unwrap();
        assert_eq!(first.frame, second.frame);
        assert!(start.elapsed() >= Duration::from_millis(100));
    }
}
