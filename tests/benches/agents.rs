//! Benchmark over real processes: N local `georepd` agents on loopback; time from a
//! command to "merged on every node" (`create`, which waits for every live node) and
//! to "monitor running on every primary" (`start`, which also waits for the monitors).
//!
//! Run: `cargo build --release --workspace && cargo bench -p georep-tests --bench agents`
//! (`-- --quick` for N = 5 only). Prints a table; nothing is asserted.

use std::time::{Duration, Instant};

use georep_tests::{Cluster, NodeSpec};

const ROUNDS: usize = 5;

fn specs(n: usize) -> Vec<NodeSpec> {
    let primaries = (n * 3).div_ceil(5);
    (0..n)
        .map(|i| {
            let id = format!("n{}", i + 1);
            let brick = if i < primaries {
                format!("gv0:/bricks/{id}/gv0:{}", i / 2)
            } else {
                format!("gv1:/bricks/{id}/gv1")
            };
            NodeSpec::new(&id, &[&brick])
        })
        .collect()
}

fn timed(cluster: &Cluster, node: usize, args: &[&str]) -> Duration {
    let start = Instant::now();
    cluster.ok(node, args);
    start.elapsed()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[usize] = if quick { &[5] } else { &[5, 25] };
    println!("agents  gossip  create->merged (median/max)  start->monitors running (median/max)");
    for &n in sizes {
        // The production default gossip interval; the built-in monitor.
        let cluster = Cluster::start_with_gossip(&specs(n), None, 500);
        for i in 0..n {
            cluster.wait_live(i, n, Duration::from_secs(60));
        }
        let mut merged = Vec::new();
        let mut running = Vec::new();
        for round in 0..ROUNDS {
            let secondary = format!("s{round}::gv1");
            let writer = round % n;
            merged.push(timed(&cluster, writer, &["create", "gv0", &secondary]));
            running.push(timed(
                &cluster,
                (writer + 1) % n,
                &["start", "gv0", &secondary],
            ));
            // One session per pair of volumes: clear it for the next round (untimed).
            cluster.ok(writer, &["stop", "gv0", &secondary]);
            cluster.ok(writer, &["delete", "gv0", &secondary]);
        }
        let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
        println!(
            "{n:>6}  {:>6}  {:>12.0?} / {:<12.0?}  {:>12.0?} / {:.0?}",
            "500ms",
            median(merged.clone()),
            max(&merged),
            median(running.clone()),
            max(&running),
        );
    }
}
