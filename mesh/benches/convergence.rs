//! Convergence benchmark of the mesh: how long one write takes to reach every node's
//! replica, with and without eager push, over real QUIC (loopback, one process) and
//! over the in-memory link; and what an idle cluster costs in gossip bytes.
//!
//! Run: `cargo bench -p georep-mesh --bench convergence`. Options after `--`:
//! `--quick` (N = 5 and 25 only, for CI smoke), `--sizes 5,100` (pick sizes),
//! `--link quic|mem` (one transport), `--verbose` (per-write arrival spread on stderr).
//! Prints a Markdown table on stdout; progress goes to stderr. Built as a plain binary
//! (`harness = false`): under `cargo test --benches` it only says how to run it.
//!
//! Eager push is measured three ways: off (`push_fanout = 0`, gossip only), on with the
//! default fan-out bound (64 peers; the rest of a larger cluster waits for gossip), and,
//! where the cluster is larger than that bound, on to every peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use georep_mesh::Link;
use georep_mesh::MemHub;
use georep_mesh::SystemClock;
use georep_mesh::codec;
use georep_mesh::{Brick, NodeInfo};
use georep_mesh::{MeshConfig, MeshNode, NODE_KEY};
use georep_mesh::{NodeIdentity, PemCert, generate_ca, issue_node_cert};
use georep_mesh::{QuicLink, QuicOptions};
use georep_mesh::{Replica, SessionId, SessionOp, SessionOptions};
use tokio::time::Instant;

/// Gossip interval of every benchmarked cluster (the `MeshConfig` default).
const GOSSIP_INTERVAL: Duration = Duration::from_millis(500);
/// Writes measured per configuration (the median is reported).
const WRITES: usize = 5;
/// Window over which idle traffic is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// Longest one write may take to converge before the run is declared failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between membership forming and the first write.
const SETTLE: Duration = Duration::from_secs(2);
/// Longest membership may take to form.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Quic,
    Mem,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Quic => "QUIC",
            Transport::Mem => "in-memory",
        }
    }
}

/// How the writer pushes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Push {
    /// `push_fanout = 0`: gossip only.
    Off,
    /// The default `push_fanout` (64).
    Default,
    /// `push_fanout` at least N - 1: every peer.
    All,
}

impl Push {
    fn name(self) -> String {
        match self {
            Push::Off => "off (push_fanout = 0)".into(),
            Push::Default => format!(
                "on (default push_fanout = {})",
                MeshConfig::new("x", 1).push_fanout
            ),
            Push::All => "on, to every peer (push_fanout = N)".into(),
        }
    }

    /// The variants worth measuring for a cluster of `n` nodes.
    fn variants(n: usize) -> Vec<Push> {
        if n - 1 > MeshConfig::new("x", 1).push_fanout {
            vec![Push::Default, Push::All, Push::Off]
        } else {
            vec![Push::Default, Push::Off]
        }
    }
}

/// One measured configuration.
struct Row {
    n: usize,
    transport: Transport,
    push: Push,
    membership: Duration,
    writes: Vec<Duration>,
    idle_bytes_per_node_s: Option<f64>,
    idle_frames_per_node_s: Option<f64>,
}

/// Deterministic pseudo-random numbers (splitmix64), so runs pick the same writers.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

fn node_name(i: usize) -> String {
    format!("n{i:03}")
}

/// Even nodes host the primary volume gv0, odd ones the secondary gv1.
fn node_info(i: usize) -> NodeInfo {
    let volume = if i.is_multiple_of(2) { "gv0" } else { "gv1" };
    NodeInfo {
        agent_version: "bench".into(),
        bricks: vec![Brick {
            volume: volume.into(),
            path: format!("/bricks/{volume}/{i}"),
            replica_set: 0,
        }],
        missing: Vec::new(),
        facts: Vec::new(),
        users: Vec::new(),
    }
}

fn session() -> SessionId {
    SessionId::parse("gv0", "n001::gv1").unwrap()
}

/// Tells whether a replica holds a given write.
type Holds = Box<dyn Fn(&Replica) -> bool>;

/// Write `k` of a run and the predicate telling that a replica holds it.
fn write(k: usize) -> (SessionOp, Holds) {
    if k == 0 {
        let op = SessionOp::Create {
            options: SessionOptions::default(),
            force: true,
        };
        let holds = |r: &Replica| r.view(&session()).is_some_and(|v| v.exists);
        (op, Box::new(holds))
    } else {
        let value = (k % 100 + 1).to_string();
        let op = SessionOp::SetConfig {
            key: "sync-jobs".into(),
            value: value.clone(),
        };
        let holds = move |r: &Replica| {
            r.view(&session())
                .is_some_and(|v| v.config_value("sync-jobs").as_deref() == Some(value.as_str()))
        };
        (op, Box::new(holds))
    }
}

async fn start_cluster(n: usize, transport: Transport, push: Push, ca: &PemCert) -> Vec<MeshNode> {
    let hub = MemHub::new();
    let mut nodes = Vec::with_capacity(n);
    let mut seed: Option<SocketAddr> = None;
    for i in 0..n {
        let id = node_name(i);
        let link: Arc<dyn Link> = match transport {
            Transport::Quic => {
                let cert = issue_node_cert(&ca.cert_pem, &ca.key_pem, &id, &[], &[]).unwrap();
                let identity =
                    NodeIdentity::from_pem(&ca.cert_pem, &cert.cert_pem, &cert.key_pem).unwrap();
                QuicLink::bind(
                    "127.0.0.1:0".parse().unwrap(),
                    &identity,
                    QuicOptions::default(),
                )
                .unwrap()
            }
            Transport::Mem => {
                let addr = SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16));
                hub.bind(&id, addr).unwrap()
            }
        };
        let seed = *seed.get_or_insert(link.local_addr());
        let mut config = MeshConfig::new(id, 1);
        config.gossip_interval = GOSSIP_INTERVAL;
        config.seeds = vec![seed.to_string()];
        match push {
            Push::Off => config.push_fanout = 0,
            Push::Default => {}
            Push::All => config.push_fanout = config.push_fanout.max(n),
        }
        let info = codec::encode(&node_info(i)).unwrap();
        let node = MeshNode::start(
            config,
            link,
            Arc::new(SystemClock),
            None,
            vec![(NODE_KEY.to_string(), info)],
        )
        .await
        .unwrap();
        nodes.push(node);
    }
    nodes
}

async fn wait_membership(nodes: &[MeshNode]) -> Duration {
    let started = Instant::now();
    loop {
        let mut formed = true;
        for node in nodes {
            if node.membership().await.live().count() != nodes.len() {
                formed = false;
                break;
            }
        }
        if formed {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < MEMBERSHIP_TIMEOUT,
            "membership of {} nodes did not form within {MEMBERSHIP_TIMEOUT:?}",
            nodes.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Applies `op` on `writer` and returns how long until every replica satisfies `holds`.
async fn time_write(
    nodes: &[MeshNode],
    writer: usize,
    op: &SessionOp,
    holds: &dyn Fn(&Replica) -> bool,
    verbose: bool,
) -> Duration {
    let mut changes: Vec<_> = nodes.iter().map(|n| n.subscribe()).collect();
    let started = Instant::now();
    nodes[writer].apply(&session(), op).await.unwrap();
    let applied = started.elapsed();
    let mut pending: Vec<usize> = (0..nodes.len()).collect();
    let mut arrivals = Vec::with_capacity(nodes.len());
    let mut first = true;
    loop {
        let now = started.elapsed();
        pending.retain(|&i| {
            // Only look at a replica again when the node signalled a change.
            if !first && !changes[i].has_changed().unwrap_or(true) {
                return true;
            }
            changes[i].borrow_and_update();
            let arrived = holds(&nodes[i].replica());
            if arrived {
                arrivals.push(now);
            }
            !arrived
        });
        first = false;
        if pending.is_empty() {
            if verbose {
                arrivals.sort();
                let at = |q: usize| arrivals[(arrivals.len() - 1) * q / 100];
                eprintln!(
                    "    write by {}: apply returned after {applied:?}; reached half the nodes after {:?}, 90 % after {:?}, all after {:?}",
                    nodes[writer].node_id(),
                    at(50),
                    at(90),
                    at(100)
                );
            }
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WRITE_TIMEOUT,
            "write did not reach {} of {} nodes within {WRITE_TIMEOUT:?}",
            pending.len(),
            nodes.len()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Bytes and frames sent per node per second by an idle cluster.
async fn idle_traffic(nodes: &[MeshNode]) -> (f64, f64) {
    let total = |nodes: &[MeshNode]| {
        nodes.iter().fold((0u64, 0u64), |(b, f), n| {
            let s = n.link_stats();
            (b + s.bytes_sent, f + s.frames_sent)
        })
    };
    let (bytes0, frames0) = total(nodes);
    let started = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let (bytes1, frames1) = total(nodes);
    let per = nodes.len() as f64 * started.elapsed().as_secs_f64();
    (
        (bytes1 - bytes0) as f64 / per,
        (frames1 - frames0) as f64 / per,
    )
}

async fn shutdown_all(nodes: Vec<MeshNode>) {
    let mut closing = tokio::task::JoinSet::new();
    for node in nodes {
        closing.spawn(node.shutdown());
    }
    while closing.join_next().await.is_some() {}
}

async fn run_one(
    n: usize,
    transport: Transport,
    push: Push,
    ca: &PemCert,
    rng: &mut SplitMix,
    verbose: bool,
) -> Row {
    let nodes = start_cluster(n, transport, push, ca).await;
    let membership = wait_membership(&nodes).await;
    // Let the failure detector and the connections settle, as in a running cluster.
    tokio::time::sleep(SETTLE).await;
    let mut writes = Vec::with_capacity(WRITES);
    for k in 0..WRITES {
        let (op, holds) = write(k);
        let writer = rng.below(n);
        writes.push(time_write(&nodes, writer, &op, holds.as_ref(), verbose).await);
    }
    let (idle_bytes_per_node_s, idle_frames_per_node_s) = if push == Push::Default {
        // Let the last write's frontier updates settle before measuring idle traffic.
        tokio::time::sleep(GOSSIP_INTERVAL * 4).await;
        let (bytes, frames) = idle_traffic(&nodes).await;
        (Some(bytes), Some(frames))
    } else {
        (None, None)
    };
    shutdown_all(nodes).await;
    Row {
        n,
        transport,
        push,
        membership,
        writes,
        idle_bytes_per_node_s,
        idle_frames_per_node_s,
    }
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            let parts: Vec<&str> = l.split_whitespace().take(3).collect();
            (parts.len() == 3).then(|| parts.join(" "))
        })
        .unwrap_or_else(|| "?".into())
}

struct Options {
    sizes: Vec<usize>,
    transports: Vec<Transport>,
    verbose: bool,
}

fn parse_options(args: &[String]) -> Options {
    let mut options = Options {
        sizes: vec![5, 25, 100],
        transports: vec![Transport::Quic, Transport::Mem],
        verbose: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.sizes = vec![5, 25],
            "--verbose" => options.verbose = true,
            "--sizes" => {
                let list = args.next().expect("--sizes needs a list, e.g. 5,25");
                options.sizes = list
                    .split(',')
                    .map(|n| n.trim().parse().expect("--sizes: not a number"))
                    .filter(|n| *n >= 2)
                    .collect();
            }
            "--link" => {
                options.transports = match args.next().map(String::as_str) {
                    Some("quic") => vec![Transport::Quic],
                    Some("mem") => vec![Transport::Mem],
                    other => panic!("--link takes quic or mem, not {other:?}"),
                }
            }
            // `--bench` comes from cargo; anything else is ignored (libtest-style filters).
            _ => {}
        }
    }
    options
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "convergence: run with `cargo bench -p georep-mesh --bench convergence [-- --quick]`"
        );
        return;
    }
    let options = parse_options(&args);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let load_before = load_average();
    let rows = runtime.block_on(async {
        let ca = generate_ca().unwrap();
        let mut rng = SplitMix(0x6E6F_6465);
        let mut rows = Vec::new();
        for &n in &options.sizes {
            for &transport in &options.transports {
                for push in Push::variants(n) {
                    eprintln!("N={n:>3} {:<9} push {}", transport.name(), push.name());
                    let row = run_one(n, transport, push, &ca, &mut rng, options.verbose).await;
                    eprintln!(
                        "    membership {:.1} s, writes (ms): {}",
                        row.membership.as_secs_f64(),
                        row.writes
                            .iter()
                            .map(|d| ms(*d))
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                    rows.push(row);
                }
            }
        }
        rows
    });

    println!(
        "gossip interval {} ms; {WRITES} writes per row, each applied on a pseudo-randomly \
         chosen node and timed until every node's replica shows it; idle traffic over {} s \
         (frame bytes as counted by `link_stats()`: QUIC, UDP and IP overhead excluded)\n",
        GOSSIP_INTERVAL.as_millis(),
        IDLE_WINDOW.as_secs()
    );
    println!(
        "| N | link | eager push | membership formed (s) | convergence median (ms) | min (ms) | max (ms) | idle bytes sent / node / s | idle frames sent / node / s |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let min = row.writes.iter().min().copied().unwrap_or_default();
        let max = row.writes.iter().max().copied().unwrap_or_default();
        println!(
            "| {} | {} | {} | {:.1} | {} | {} | {} | {} | {} |",
            row.n,
            row.transport.name(),
            row.push.name(),
            row.membership.as_secs_f64(),
            ms(median(&row.writes)),
            ms(min),
            ms(max),
            row.idle_bytes_per_node_s
                .map_or("".into(), |b| format!("{b:.0}")),
            row.idle_frames_per_node_s
                .map_or("".into(), |f| format!("{f:.1}")),
        );
    }
    println!();
    println!(
        "total {:.0} s; peak RSS {} MiB; load average {} before, {} after",
        started.elapsed().as_secs_f64(),
        peak_rss_mib().map_or("?".into(), |m| format!("{m:.0}")),
        load_before,
        load_average()
    );
}
