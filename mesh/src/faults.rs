//! Fault injection below the mesh: loss, delay with jitter (hence reordering),
//! duplication, and one-way or two-way partitions between arbitrary groups.
//!
//! This kernel has no `tc netem`, so latency in tests comes from here: the simulator
//! sets faults per directed link, and `georepd --inject-delay` sets them per destination
//! [`IpNetwork`]. One [`Faults`] controls every link it wrapped; decisions come from a
//! seeded generator so a run's fault schedule is reproducible from its seed.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
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

/// An IP network: an address and a prefix length (`10.77.2.0/24`, `fd00::/64`). A bare
/// address is a network of one (`/32` or `/128`). The arithmetic is `ipnet`'s; this
/// type adds the refusal of host bits, the bare-address spelling and IPv4-mapped
/// matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNetwork(ipnet::IpNet);

/// Why an [`IpNetwork`] was refused. Nothing was built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("{0:?} is not an IP address (expected ADDR or ADDR/PREFIX, e.g. 10.77.2.0/24)")]
    Address(String),
    /// The prefix length is not a number, or too long for the address family.
    #[error("prefix {prefix:?} is not a number from 0 to {max}")]
    Prefix {
        /// The prefix as written.
        prefix: String,
        /// The longest prefix of the address family (32 or 128).
        max: u8,
    },
    /// Bits beyond the prefix are set: probably a typo, so it is not silently masked.
    #[error("{addr}/{prefix} has host bits set (did you mean {network}?)")]
    HostBits {
        /// The address as given.
        addr: IpAddr,
        /// The prefix length as given.
        prefix: u8,
        /// The network with the host bits cleared.
        network: IpNetwork,
    },
}

impl IpNetwork {
    /// The network `addr/prefix`; refused when the prefix is too long for the family or
    /// `addr` has bits set beyond it.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, NetworkError> {
        let net = ipnet::IpNet::new(addr, prefix).map_err(|_| NetworkError::Prefix {
            prefix: prefix.to_string(),
            max: max_prefix(addr),
        })?;
        let network = IpNetwork(net.trunc());
        if network.addr() != addr {
            return Err(NetworkError::HostBits {
                addr,
                prefix,
                network,
            });
        }
        Ok(network)
    }

    /// The network holding exactly `addr`.
    pub fn host(addr: IpAddr) -> Self {
        IpNetwork(ipnet::IpNet::from(addr))
    }

    /// The network's first address.
    pub fn addr(&self) -> IpAddr {
        self.0.network()
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
    /// as a dual-stack socket reports IPv4 peers) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        self.0.contains(&ip)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

impl FromStr for IpNetwork {
    type Err = NetworkError;

    /// Parses `ADDR` or `ADDR/PREFIX`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| NetworkError::Address(addr_text.to_owned()))?;
        let Some(prefix_text) = prefix_text else {
            return Ok(IpNetwork::host(addr));
        };
        let max = max_prefix(addr);
        let prefix = prefix_text
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max && !prefix_text.starts_with('+'))
            .ok_or_else(|| NetworkError::Prefix {
                prefix: prefix_text.to_owned(),
                max,
            })?;
        IpNetwork::new(addr, prefix)
    }
}

impl fmt::Display for IpNetwork {
    /// `ADDR/PREFIX`, or the bare address for a network of one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix() == max_prefix(self.addr()) {
            write!(f, "{}", self.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

#[derive(Debug)]
struct FaultState {
    rng: SeededRng,
    default: LinkFaults,
    per_link: HashMap<(SocketAddr, SocketAddr), LinkFaults>,
    /// Faults by destination network, for links without their own setting.
    per_network: Vec<(IpNetwork, LinkFaults)>,
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
                per_network: Vec::new(),
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

    /// Faults for frames to any address in `network`, on links without their own
    /// [`Faults::set_link`] setting. When several networks hold the destination, the
    /// longest prefix wins; setting the same network again replaces its faults.
    pub fn set_network(&self, network: IpNetwork, faults: LinkFaults) {
        self.with(
            |s| match s.per_network.iter_mut().find(|(n, _)| *n == network) {
                Some((_, existing)) => *existing = faults,
                None => s.per_network.push((network, faults)),
            },
        );
    }

    /// The faults a frame on `from -> to` suffers when the link is not cut: its own
    /// setting, else the most specific destination network's, else the default.
    pub fn faults_for(&self, from: SocketAddr, to: SocketAddr) -> LinkFaults {
        self.with(|s| s.faults_for(from, to))
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

    /// Removes every partition, per-link and per-network setting, and the default faults.
    pub fn heal(&self) {
        self.with(|s| {
            s.blocked.clear();
            s.per_link.clear();
            s.per_network.clear();
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
            let faults = s.faults_for(from, to);
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

impl FaultState {
    fn faults_for(&self, from: SocketAddr, to: SocketAddr) -> LinkFaults {
        if let Some(faults) = self.per_link.get(&(from, to)) {
            return *faults;
        }
        self.per_network
            .iter()
            .filter(|(network, _)| network.contains(to.ip()))
            .max_by_key(|(network, _)| network.prefix())
            .map_or(self.default, |(_, faults)| *faults)
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

    fn net(text: &str) -> IpNetwork {
        text.parse().expect("valid network")
    }

    fn delay_of(ms: u64) -> LinkFaults {
        LinkFaults {
            delay: Duration::from_millis(ms),
            ..LinkFaults::default()
        }
    }

    #[test]
    fn networks_parse_display_and_refuse_typos() {
        assert_eq!(net("10.77.2.0/24").to_string(), "10.77.2.0/24");
        assert_eq!(net("10.77.2.7").prefix(), 32);
        assert_eq!(net("10.77.2.7").to_string(), "10.77.2.7");
        assert_eq!(net("10.77.2.7/32"), net("10.77.2.7"));
        assert_eq!(net("0.0.0.0/0").prefix(), 0);
        assert_eq!(net("fd00:1::/32").to_string(), "fd00:1::/32");
        assert_eq!(net("::1").prefix(), 128);
        let err = |text: &str| text.parse::<IpNetwork>().unwrap_err().to_string();
        assert_eq!(
            err("10.77.2.5/24"),
            "10.77.2.5/24 has host bits set (did you mean 10.77.2.0/24?)"
        );
        assert_eq!(
            err("10.0.0.0/33"),
            r#"prefix "33" is not a number from 0 to 32"#
        );
        assert_eq!(
            err("fd00::/129"),
            r#"prefix "129" is not a number from 0 to 128"#
        );
        assert!(err("10.0.0.0/").contains(r#"prefix """#));
        assert!(err("10.0.0.0/+8").contains("prefix"));
        assert!(err("10.0.0.0/x").contains("prefix"));
        assert!(err("site-b/24").starts_with(r#""site-b" is not an IP address"#));
        assert!(err("").contains("is not an IP address"));
        assert_eq!(
            IpNetwork::new("10.1.0.0".parse().unwrap(), 40),
            Err(NetworkError::Prefix {
                prefix: "40".into(),
                max: 32
            })
        );
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let site_b = net("10.77.2.0/24");
        assert!(site_b.contains("10.77.2.0".parse().unwrap()));
        assert!(site_b.contains("10.77.2.255".parse().unwrap()));
        assert!(!site_b.contains("10.77.3.1".parse().unwrap()));
        assert!(!site_b.contains("fd00::1".parse().unwrap()));
        // A dual-stack socket's view of an IPv4 peer.
        assert!(site_b.contains("::ffff:10.77.2.9".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("192.0.2.1".parse().unwrap()));
        assert!(!net("0.0.0.0/0").contains("2001:db8::1".parse().unwrap()));
        assert!(net("::/0").contains("2001:db8::1".parse().unwrap()));
        assert!(net("2001:db8::/33").contains("2001:db8:7fff::1".parse().unwrap()));
        assert!(!net("2001:db8::/33").contains("2001:db8:8000::1".parse().unwrap()));
        assert!(net("10.77.2.9").contains("10.77.2.9".parse().unwrap()));
        assert!(!net("10.77.2.9").contains("10.77.2.8".parse().unwrap()));
    }

    #[test]
    fn link_setting_beats_longest_prefix_beats_default() {
        let faults = Faults::new(5);
        let from = addr(1);
        let in_site = SocketAddr::from(([10, 77, 2, 9], 7400));
        let exempt = SocketAddr::from(([10, 77, 2, 1], 7400));
        let elsewhere = SocketAddr::from(([10, 77, 3, 1], 7400));
        faults.set_default(delay_of(1));
        faults.set_network(net("10.77.0.0/16"), delay_of(20));
        faults.set_network(net("10.77.2.0/24"), delay_of(40));
        faults.set_network(net("10.77.2.1"), delay_of(0));
        assert_eq!(faults.faults_for(from, in_site), delay_of(40));
        assert_eq!(faults.faults_for(from, exempt), delay_of(0));
        assert_eq!(faults.faults_for(from, elsewhere), delay_of(20));
        assert_eq!(faults.faults_for(from, addr(2)), delay_of(1));
        assert_eq!(
            faults.decide(from, in_site),
            Fate::Deliver(vec![Duration::from_millis(40)])
        );
        // The same network again replaces its faults.
        faults.set_network(net("10.77.2.0/24"), delay_of(80));
        assert_eq!(faults.faults_for(from, in_site), delay_of(80));
        // An exact link setting wins over every network; a cut wins over everything.
        faults.set_link(from, in_site, delay_of(3));
        assert_eq!(faults.faults_for(from, in_site), delay_of(3));
        faults.block(from, in_site);
        assert_eq!(faults.decide(from, in_site), Fate::Dropped);
        faults.heal();
        assert_eq!(faults.faults_for(from, elsewhere), LinkFaults::default());
        assert_eq!(
            faults.decide(from, in_site),
            Fate::Deliver(vec![Duration::ZERO])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn frames_to_a_delayed_network_arrive_later_others_at_once() {
        let hub = MemHub::new();
        let faults = Faults::new(9);
        let here = SocketAddr::from(([10, 77, 1, 1], 7400));
        let near = SocketAddr::from(([10, 77, 1, 2], 7400));
        let far = SocketAddr::from(([10, 77, 2, 1], 7400));
        let a = faults.wrap(hub.bind("a", here).unwrap());
        let b = hub.bind("b", near).unwrap();
        let c = hub.bind("c", far).unwrap();
        faults.set_network(
            net("10.77.2.0/24"),
            LinkFaults {
                delay: Duration::from_millis(80),
                jitter: Duration::from_millis(20),
                ..LinkFaults::default()
            },
        );
        let start = tokio::time::Instant::now();
        a.send(far, Frame::new(FrameKind::Gossip, vec![1]))
            .await
            .unwrap();
        a.send(near, Frame::new(FrameKind::Gossip, vec![2]))
            .await
            .unwrap();
        assert_eq!(b.recv().await.unwrap().frame.payload, [2]);
        assert!(start.elapsed() < Duration::from_millis(80));
        assert_eq!(c.recv().await.unwrap().frame.payload, [1]);
        let took = start.elapsed();
        assert!(
            (Duration::from_millis(80)..Duration::from_millis(100)).contains(&took),
            "{took:?}"
        );
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
