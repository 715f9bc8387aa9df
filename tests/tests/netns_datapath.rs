//! The built-in data path under network chaos, every agent in its own network
//! namespace (real QUIC over veths, nftables faults): primaries a1+a2 (replica set 0)
//! and a3 (replica set 1) at site A; the secondary volume reachable through b1, b2 and
//! b3 at site B (one directory: the volume's mount). Files keep changing while the WAN
//! drops a fifth of the packets, then while it is cut both ways, and set 0's Active
//! node is killed -9 during the cut, with the secondary node it was sending to. After
//! the heal, the secondary tree equals the union of the primary replica sets: nothing
//! lost, nothing extra.
//! Runs as root; fails (never skips) when namespaces cannot be created.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use georep_datapath::noise;
use georep_tests::sites::Sites;
use georep_tests::trees::{self, brick_of};
use georep_tests::{Cluster, NodeSpec};

const NAMES: [&str; 6] = ["a1", "a2", "a3", "b1", "b2", "b3"];
const SECONDARY: &str = "b1::gv1";
const WAIT: Duration = Duration::from_secs(120);

/// Writes the starting tree of replica set `set` under `root`.
fn populate(root: &Path, set: usize) {
    for i in 0..300 {
        let dir = root.join(format!("d{}/e{}", i % 6, i % 5));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(format!("s{set}-{i}")),
            format!("set {set} file {i}\n"),
        )
        .unwrap();
    }
    fs::write(
        root.join(format!("big-{set}.bin")),
        noise(20 << 20, set as u64),
    )
    .unwrap();
}

/// Step `k` of the churn on every brick of replica set `set` (replicas change alike):
/// a file created, the previous step's file renamed, an older one deleted, one
/// appended to.
fn churn(bricks: &[&Path], set: usize, k: usize) {
    for root in bricks {
        let dir = root.join(format!("churn-{set}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("new-{k}")), noise(1000 + k * 37, k as u64)).unwrap();
        if k >= 1 {
            let _ = fs::rename(
                dir.join(format!("new-{}", k - 1)),
                dir.join(format!("renamed-{}", k - 1)),
            );
        }
        if k >= 3 {
            let _ = fs::remove_file(dir.join(format!("renamed-{}", k - 3)));
        }
        let victim = root.join(format!("d{}/e{}/s{set}-{}", k % 6, k % 5, k));
        if let Ok(mut file) = fs::OpenOptions::new().append(true).open(victim) {
            use std::io::Write;
            let _ = writeln!(file, "appended at step {k}");
        }
    }
}

fn wait_union(cluster: &Cluster, sets: &[&Path], secondary: &Path, what: &str) {
    trees::wait_equal(cluster, sets, secondary, false, WAIT, what);
}

/// The worker for one of `bricks` that is Active, as node `at` sees it.
fn active_worker(cluster: &Cluster, at: usize, bricks: &[PathBuf]) -> Option<serde_json::Value> {
    let status = cluster.json(at, &["status", "gv0", SECONDARY]);
    status["sessions"][0]["workers"]
        .as_array()?
        .iter()
        .find(|w| {
            w["status"] == "Active" && bricks.iter().any(|b| w["brick"] == b.display().to_string())
        })
        .cloned()
}

/// The node whose worker for one of `bricks` is Active, as node `at` sees it.
fn active_of(cluster: &Cluster, at: usize, bricks: &[PathBuf]) -> Option<String> {
    active_worker(cluster, at, bricks).and_then(|w| w["node"].as_str().map(String::from))
}

#[test]
fn after_loss_a_partition_and_a_dead_active_the_secondary_equals_the_primary() {
    // The namespaces outlive the agents: the cluster is dropped first.
    let sites = Sites::create(3);
    let specs: Vec<NodeSpec> = NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let brick = match i {
                0 | 1 => format!("gv0:/bricks/{name}/gv0:0"),
                2 => format!("gv0:/bricks/{name}/gv0:1"),
                _ => "gv1:/bricks/secondary/gv1".to_string(),
            };
            NodeSpec::new(name, &[&brick])
        })
        .collect();
    let placements = NAMES.iter().map(|n| sites.placement(n)).collect();
    let mut cluster = Cluster::start_placed(&specs, None, 100, placements);
    for i in 0..NAMES.len() {
        cluster.wait_live(i, NAMES.len(), WAIT);
    }
    let bricks: Vec<PathBuf> = (0..3).map(|i| brick_of(&cluster, i)).collect();
    let secondary = brick_of(&cluster, 3);
    populate(&bricks[0], 0);
    populate(&bricks[1], 0);
    populate(&bricks[2], 1);
    // Replicas hold the same files with the same times (gluster's AFR keeps them so).
    let copy = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", bricks[0].display()))
        .arg(&bricks[1])
        .status()
        .unwrap();
    assert!(copy.success());
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.ok(0, &["config", "gv0", SECONDARY, "change-interval", "1"]);
    cluster.ok(0, &["start", "gv0", SECONDARY]);
    wait_union(
        &cluster,
        &[&bricks[0], &bricks[2]],
        &secondary,
        "the initial sync",
    );

    // A fifth of the WAN's packets dropped while files keep changing.
    sites.wan_loss(20);
    let mut step = 0;
    let lossy_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < lossy_until {
        churn(&[&bricks[0], &bricks[1]], 0, step);
        churn(&[&bricks[2]], 1, step);
        step += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    wait_union(
        &cluster,
        &[&bricks[0], &bricks[2]],
        &secondary,
        "the sync over a lossy WAN",
    );

    // The WAN cut both ways; set 0's Active node dies during the cut, and so does the
    // secondary node it was sending to (its successor must resume through another
    // one: the progress belongs to the volume, not to a node); files change.
    let set0 = [bricks[0].clone(), bricks[1].clone()];
    let mut worker = None;
    cluster.wait_until(WAIT, "set 0's Active worker and its secondary node", || {
        worker = active_worker(&cluster, 2, &set0).filter(|w| w["secondary_node"].is_string());
        worker.is_some()
    });
    let worker = worker.unwrap();
    let active = worker["node"].as_str().unwrap().to_string();
    let sending_to = worker["secondary_node"].as_str().unwrap().to_string();
    sites.partition();
    for _ in 0..5 {
        churn(&[&bricks[0], &bricks[1]], 0, step);
        churn(&[&bricks[2]], 1, step);
        step += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    let (dead, alive) = if active == "a1" { (0, 1) } else { (1, 0) };
    cluster.kill9_node(dead);
    let secondary_i = NAMES.iter().position(|n| *n == sending_to).unwrap();
    cluster.kill9_node(secondary_i);
    for _ in 0..5 {
        churn(&[&bricks[alive]], 0, step);
        churn(&[&bricks[2]], 1, step);
        step += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    sites.heal();
    wait_union(
        &cluster,
        &[&bricks[alive], &bricks[2]],
        &secondary,
        "the sync after the heal, set 0 from its surviving replica",
    );
    cluster.wait_until(WAIT, "the surviving replica Active", || {
        active_of(&cluster, 2, &set0).as_deref() == Some(NAMES[alive])
    });
    drop(cluster);
    drop(sites);
}
