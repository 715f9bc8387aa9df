//! Benchmark over real processes: how long an event takes from the node where it
//! happens to `georep events --follow` on every node, and to a webhook receiver
//! (Python's http.server on loopback); and how many events per second one node's
//! commands sustain end to end. Beside it, glustereventsd's design measured the same
//! way: one UDP datagram to a local daemon that POSTs it once to the webhook, no retry
//! (`receivers/udp_forwarder.py`), including what each loses while the receiver is down.
//!
//! Latency is arrival (wall clock, same host) minus the event's HLC physical time.
//! Run: `cargo build --release --workspace && cargo bench -p georep-tests --bench events`
//! (`-- --quick` for N = 5 only). Prints tables; nothing is asserted.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use georep_tests::receiver::Receiver;
use georep_tests::{Cluster, NodeSpec, TEST_MONITOR, free_port};
use serde_json::Value;

/// Commands timed one at a time, spaced so they do not queue.
const SPACED: usize = 20;
/// Commands issued back to back for the throughput run.
const BURST: usize = 400;
/// Concurrent CLI processes issuing the burst.
const BURST_CLIENTS: usize = 4;
/// The production gossip interval.
const GOSSIP_MS: u64 = 500;
/// Events while the receiver is down.
const OUTAGE: usize = 10;
/// Longest any phase waits.
const WAIT: Duration = Duration::from_secs(120);

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

/// `1796173741266.0@n2` -> 1796173741266.
fn hlc_ms(hlc: &str) -> f64 {
    hlc.split(['.', '@'])
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(f64::NAN)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `georep --json events --follow` on one node: (event id -> arrival ms, HLC ms).
struct Follower {
    child: Child,
    rx: mpsc::Receiver<(String, f64, f64)>,
    seen: BTreeMap<String, (f64, f64)>,
}

impl Follower {
    fn start(cluster: &Cluster, i: usize) -> Follower {
        let mut child = Command::new(cluster.georep_bin())
            .arg("--socket")
            .arg(&cluster.nodes[i].socket)
            .args(["--json", "events", "--follow", "--since", "1s"])
            .args(["--type", "GEOREP_CONFIG_SET"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("georep events --follow");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let at = now_ms();
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let (Some(id), Some(hlc)) = (event["id"].as_str(), event["hlc"].as_str()) else {
                    continue;
                };
                if tx.send((id.to_string(), at, hlc_ms(hlc))).is_err() {
                    return;
                }
            }
        });
        Follower {
            child,
            rx,
            seen: BTreeMap::new(),
        }
    }

    fn drain(&mut self) {
        while let Ok((id, at, hlc)) = self.rx.try_recv() {
            self.seen.entry(id).or_insert((at, hlc));
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until every follower saw `count` events and the receiver got them all.
fn wait_all(followers: &mut [Follower], receiver: &Receiver, count: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        followers.iter_mut().for_each(Follower::drain);
        let everywhere = followers.iter().all(|f| f.seen.len() >= count);
        if everywhere && receiver.ids().len() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "events did not arrive in {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Event id -> (visible on every node, at the webhook), latencies in ms.
fn latencies(followers: &[Follower], receiver: &Receiver) -> BTreeMap<String, (f64, f64)> {
    let received: BTreeMap<String, f64> = receiver
        .received()
        .iter()
        .filter_map(|r| Some((r["id"].as_str()?.to_string(), r["received_at"].as_f64()?)))
        .fold(BTreeMap::new(), |mut first, (id, at)| {
            first.entry(id).or_insert(at * 1000.0);
            first
        });
    let mut out = BTreeMap::new();
    for (id, &(_, hlc)) in &followers[0].seen {
        let everywhere = followers
            .iter()
            .filter_map(|f| f.seen.get(id).map(|(at, _)| at - hlc))
            .fold(f64::MIN, f64::max);
        let hook = received.get(id).map_or(f64::NAN, |at| at - hlc);
        out.insert(id.clone(), (everywhere, hook));
    }
    out
}

fn config(cluster: &Cluster, node: usize, secondary: &str, value: usize) {
    cluster.ok(
        node,
        &[
            "config",
            "gv0",
            secondary,
            "sync-jobs",
            &(value % 100 + 1).to_string(),
            "--no-wait",
        ],
    );
}

fn run(n: usize) {
    let specs: Vec<NodeSpec> = (0..n)
        .map(|i| {
            let id = format!("n{}", i + 1);
            match i {
                0 => NodeSpec::new(&id, &["gv0:/bricks/n1/gv0"]),
                1 => NodeSpec::new(&id, &["gv1:/bricks/n2/gv1"]),
                _ => NodeSpec::new(&id, &[]),
            }
        })
        .collect();
    let cluster = Cluster::start_with_gossip(&specs, Some(TEST_MONITOR), GOSSIP_MS);
    for i in 0..n {
        cluster.wait_live(i, n, WAIT);
    }
    let mut receiver = Receiver::start(&[]);
    let secondary = "n2::gv1";
    cluster.ok(0, &["webhook", "add", &receiver.url()]);
    cluster.ok(0, &["create", "gv0", secondary]);
    let mut followers: Vec<Follower> = (0..n).map(|i| Follower::start(&cluster, i)).collect();
    std::thread::sleep(Duration::from_secs(2));

    // Spaced: one command at a time, from node after node.
    for round in 0..SPACED {
        config(&cluster, round % n, secondary, round);
        std::thread::sleep(Duration::from_millis(700));
    }
    wait_all(&mut followers, &receiver, SPACED);
    let spaced = latencies(&followers, &receiver);
    let every: Vec<f64> = spaced.values().map(|v| v.0).collect();
    let hook: Vec<f64> = spaced.values().map(|v| v.1).collect();
    println!(
        "{n:>5}  georep-mesh      {:>8.0} / {:<8.0}  {:>8.0} / {:<8.0}",
        percentile(&every, 0.5),
        percentile(&every, 0.99),
        percentile(&hook, 0.5),
        percentile(&hook, 0.99),
    );

    // Burst: BURST commands on node 1 by BURST_CLIENTS concurrent CLIs.
    let start = now_ms();
    std::thread::scope(|scope| {
        for client in 0..BURST_CLIENTS {
            let cluster = &cluster;
            scope.spawn(move || {
                for k in (client..BURST).step_by(BURST_CLIENTS) {
                    config(cluster, 0, secondary, k);
                }
            });
        }
    });
    let issued = now_ms();
    wait_all(&mut followers, &receiver, SPACED + BURST);
    let everywhere_end = followers
        .iter()
        .flat_map(|f| f.seen.values().map(|(at, _)| *at))
        .fold(f64::MIN, f64::max);
    let hook_end = receiver
        .received()
        .iter()
        .filter_map(|r| r["received_at"].as_f64())
        .fold(f64::MIN, f64::max)
        * 1000.0;
    let per_s = |end: f64| BURST as f64 / ((end - start) / 1000.0);
    println!(
        "       burst of {BURST} from one node: issued {:.0}/s; on every node {:.0}/s; at the webhook {:.0}/s",
        per_s(issued),
        per_s(everywhere_end),
        per_s(hook_end),
    );
    if n <= 5 {
        receiver_outage(&mut receiver, "georep-mesh", |k| {
            config(&cluster, k % n, secondary, k)
        });
    }
}

/// glustereventsd's design: a datagram to a local forwarder, POSTed once. Latency from
/// the send to the receiver, and what it and georep-mesh lose while the receiver is down.
fn gluster_design() {
    let mut receiver = Receiver::start(&[]);
    let port = free_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/receivers/udp_forwarder.py");
    let mut forwarder = Command::new("/usr/bin/python3")
        .args([script, &port.to_string(), &receiver.url()])
        .stdout(Stdio::null())
        .spawn()
        .expect("run the UDP forwarder");
    std::thread::sleep(Duration::from_secs(1));
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    let mut sent = BTreeMap::new();
    for k in 0..SPACED {
        let id = format!("g:{k}");
        sent.insert(id.clone(), now_ms());
        let datagram = format!("GEOREP_CONFIG_SET id={id} option=sync-jobs value={k}");
        let _ = socket.send_to(datagram.as_bytes(), ("127.0.0.1", port));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let lat: Vec<f64> = receiver
        .received()
        .iter()
        .filter_map(|r| {
            let sent = sent.get(r["id"].as_str()?)?;
            Some(r["received_at"].as_f64()? * 1000.0 - sent)
        })
        .collect();
    println!(
        "    -  glustereventsd   {:>8} / {:<8}  {:>8.1} / {:<8.1}  ({} of {SPACED} arrived)",
        "n/a",
        "n/a",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len(),
    );

    // The receiver down while OUTAGE events happen, then up again.
    receiver_outage(&mut receiver, "glustereventsd", |k| {
        let datagram = format!("GEOREP_CONFIG_SET id=g:o{k} option=sync-jobs value={k}");
        let _ = socket.send_to(datagram.as_bytes(), ("127.0.0.1", port));
    });
    let _ = forwarder.kill();
    let _ = forwarder.wait();
}

/// Events while the receiver is down for a few seconds: how many of them it has
/// 15 s after it is back.
fn receiver_outage(receiver: &mut Receiver, design: &str, mut event: impl FnMut(usize)) {
    let before = receiver.ids().len();
    receiver.down();
    for k in 0..OUTAGE {
        event(k);
        std::thread::sleep(Duration::from_millis(300));
    }
    receiver.up();
    let deadline = Instant::now() + Duration::from_secs(15);
    while receiver.ids().len() < before + OUTAGE && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "       {design}: receiver down for {OUTAGE} events; {} arrived after it returned",
        receiver.ids().len() - before
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[usize] = if quick { &[5] } else { &[5, 25] };
    println!(
        "nodes  design           every node p50 / p99 ms  webhook p50 / p99 ms   (gossip {GOSSIP_MS} ms)"
    );
    gluster_design();
    for &n in sizes {
        run(n);
    }
}
