//! Real Gluster: `georepd` manages geo-replication of real GlusterFS volumes with
//! gluster's own gsyncd, and no `gluster volume geo-replication` command anywhere.
//!
//! Two Gluster clusters of one node each, every host in its own network and mount
//! namespace ([`georep_tests::gluster`]): primary `a1` (volume `pv`) and secondary
//! `b1` (volume `sv`, and the sshd gsyncd logs in to). One `georepd` per host, its
//! bricks taken from glusterd, `a1`'s running sessions with `--monitor gsyncd`. Then,
//! through `georep` only: create with push-pem, `sync-method tarssh`, start; files
//! written into the primary's FUSE mount appear in the secondary's; status shows the
//! worker Active with its crawl and LAST_SYNCED; pause freezes gsyncd and nothing more
//! arrives; resume continues, and the agent killed -9 right after leaves gsyncd
//! syncing and, restarted, adopts it; glusterd's pre-hook asks the agent before the volume stops (glusterd
//! 10.3 goes ahead whatever the hook answers: an event records the conflict); stop
//! leaves no gsyncd on either side; delete removes the session directories and the
//! authorized_keys block.
//!
//! Runs as root; fails (never skips) when Gluster is not installed (`.ci/run`
//! installs it) or namespaces cannot be created.

use std::path::Path;
use std::time::{Duration, Instant};

use georep_tests::Cluster;
use georep_tests::gluster;

const WAIT: Duration = Duration::from_secs(90);
const SECONDARY: &str = "b1::sv";
const SESSION_DIR: &str = "pv_b1_sv";
const GSYNCD: &str = "/usr/lib/x86_64-linux-gnu/glusterfs/gsyncd";

/// Polls `check` every 200 ms until true; panics with `what` and the agents' logs.
fn wait(cluster: &Cluster, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}\n{}\n--- gsyncd's INFO and above ---\n{}",
            cluster.logs_tail(),
            gsyncd_log(cluster)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// gsyncd's log on a1 (the session's `monitor.log`) without its DEBUG lines.
fn gsyncd_log(cluster: &Cluster) -> String {
    let log = cluster.nodes[0]
        .data()
        .sessions_root()
        .join(SESSION_DIR)
        .join("monitor.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains("] D ["))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The session's worker rows as node `i` shows them.
fn workers(cluster: &Cluster, i: usize) -> Vec<serde_json::Value> {
    let status = cluster.json(i, &["status", "pv", SECONDARY]);
    status["sessions"][0]["workers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[test]
fn georepd_runs_glusters_gsyncd_on_real_volumes_from_create_to_delete() {
    for tool in ["/usr/sbin/glusterd", "/usr/sbin/gluster", GSYNCD] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: install glusterfs-server and glusterfs-client (.ci/run does)"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (sites, mut a1, mut b1) = gluster::primary_and_secondary(dir.path());
    let pv_bricks = a1.create_volume("pv", 1, &[]);
    b1.create_volume("sv", 1, &[]);
    let mut cluster = gluster::start_agents(&a1, &b1);
    cluster.wait_live(0, 2, WAIT);
    let authorized_keys = cluster.authorized_keys(1);
    b1.start_sshd(&authorized_keys);

    // Each node's bricks are glusterd's.
    let nodes = cluster.json(1, &["nodes"]);
    let text = nodes.to_string();
    assert!(
        text.contains(&pv_bricks[0].display().to_string()) && text.contains("\"sv\""),
        "{nodes:#}"
    );

    // glusterd's volumes are followed: one created, stopped and deleted there shows up
    // in the mesh (a1 sees b1's brick come, go offline and go) and as VOLUME_* events.
    let late = b1.create_volume("late", 1, &[]);
    let late = late[0].display().to_string();
    let b1_row = |cluster: &Cluster| {
        let nodes = cluster.json(0, &["nodes"]);
        nodes["nodes"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["node"] == "b1").cloned())
            .unwrap_or_default()
    };
    let lists = |row: &serde_json::Value, key: &str| row[key].to_string().contains(&late);
    wait(
        &cluster,
        "a1 to see b1's brick of the volume created in glusterd",
        || {
            let row = b1_row(&cluster);
            lists(&row, "bricks") && !lists(&row, "missing_bricks")
        },
    );
    let volume_events = |kind: &str| cluster.ok(0, &["--json", "events", "--type", kind]);
    assert!(volume_events("VOLUME_ADD_BRICK").contains(&late));
    b1.gluster(&["volume", "stop", "late"]);
    wait(
        &cluster,
        "a1 to see the stopped volume's brick offline",
        || {
            lists(&b1_row(&cluster), "missing_bricks")
                && volume_events("VOLUME_STATUS").contains("\"status\":\"offline\"")
        },
    );
    b1.gluster(&["volume", "delete", "late"]);
    wait(
        &cluster,
        "a1 to see the deleted volume's brick gone",
        || {
            !lists(&b1_row(&cluster), "bricks")
                && volume_events("VOLUME_REMOVE_BRICK").contains(&late)
        },
    );

    cluster.ok(0, &["create", "pv", SECONDARY, "--push-pem"]);
    cluster.ok(0, &["config", "pv", SECONDARY, "sync-method", "tarssh"]);
    cluster.ok(0, &["config", "pv", SECONDARY, "change-interval", "1"]);
    // gsyncd's live changelog crawl stalled for good here in about one run of three
    // (no change ever consumed after its first crawl or after a worker restart; gluster
    // 10.3): its file-system crawl (`change-detector xsync`, one of gsyncd's own
    // options; every 60 s) does not.
    cluster.ok(0, &["config", "pv", SECONDARY, "change-detector", "xsync"]);
    let conf = cluster.nodes[0]
        .data()
        .sessions_root()
        .join(SESSION_DIR)
        .join("gsyncd.conf");
    wait(&cluster, "sync-method in gsyncd.conf", || {
        std::fs::read_to_string(&conf).is_ok_and(|c| c.contains("sync-method = tarssh\n"))
    });
    wait(&cluster, "the keys installed on b1", || {
        std::fs::read_to_string(&authorized_keys).is_ok_and(|k| k.contains("gsyncd"))
    });
    cluster.ok(1, &["start", "pv", SECONDARY]);

    let pv = a1.mount("pv");
    let sv = b1.mount("sv");
    let on_a1 = |p: &Path| a1.path(p);
    let on_b1 = |p: &Path| b1.path(p);
    std::fs::create_dir_all(on_a1(&pv.join("d1/d2"))).unwrap();
    std::fs::write(on_a1(&pv.join("d1/d2/small")), b"hello gsyncd\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(on_a1(&pv.join("big")), &big).unwrap();
    let started = Instant::now();
    wait(&cluster, "the files in the secondary mount", || {
        read(&on_b1(&sv.join("d1/d2/small"))).as_deref() == Some(b"hello gsyncd\n")
            && read(&on_b1(&sv.join("big"))).as_deref() == Some(&big[..])
    });
    eprintln!("first files synced {:?} after start", started.elapsed());

    // status: gsyncd's worker, Active, with a crawl and a sync time, on both nodes.
    for i in 0..2 {
        wait(&cluster, "status to show the Active gsyncd worker", || {
            workers(&cluster, i).iter().any(|w| {
                w["status"] == "Active"
                    && w["brick"] == pv_bricks[0].display().to_string()
                    && w["crawl_status"]
                        .as_str()
                        .is_some_and(|c| c.ends_with("Crawl"))
                    && w["last_synced"].is_string()
            })
        });
    }

    // pause freezes gsyncd's whole process group: nothing more arrives.
    let monitors = || a1.processes("gsyncd.py monitor pv");
    assert_eq!(monitors().len(), 1, "one gsyncd monitor");
    cluster.ok(0, &["pause", "pv", SECONDARY]);
    let frozen = a1.processes("gsyncd.py");
    assert!(frozen.len() >= 2, "monitor and worker: {frozen:?}");
    for pid in &frozen {
        assert!(
            georep_tests::frozen(*pid),
            "pid {pid}: {:?}",
            georep_tests::process_state(*pid)
        );
    }
    std::fs::write(on_a1(&pv.join("while-paused")), b"later\n").unwrap();
    // Longer than a change takes to arrive unpaused (one xsync crawl period, 60 s).
    std::thread::sleep(Duration::from_secs(65));
    assert!(
        !on_b1(&sv.join("while-paused")).exists(),
        "synced while paused"
    );
    cluster.ok(0, &["resume", "pv", SECONDARY]);

    // Resumed, and at once the agent killed -9: gsyncd goes on (both files arrive);
    // the restarted agent adopts it.
    let before = monitors();
    cluster.kill9(0);
    let written = Instant::now();
    std::fs::write(on_a1(&pv.join("agent-down")), b"still syncing\n").unwrap();
    wait(&cluster, "gsyncd to sync without its agent", || {
        read(&on_b1(&sv.join("while-paused"))).as_deref() == Some(b"later\n")
            && read(&on_b1(&sv.join("agent-down"))).as_deref() == Some(b"still syncing\n")
    });
    eprintln!("write -> visible on the secondary: {:?}", written.elapsed());
    cluster.restart(0);
    cluster.wait_live(0, 2, WAIT);
    wait(&cluster, "the restarted agent to report the worker", || {
        workers(&cluster, 0).iter().any(|w| w["status"] == "Active")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        monitors(),
        before,
        "adopted: the same gsyncd, no second one"
    );

    // glusterd's pre-hook asks a1's agent before the volume stops. glusterd 10.3 runs
    // it but ignores its exit status: the volume stops anyway (what this shows), and the
    // conflict is an event everywhere.
    let hook = a1.path(Path::new(
        "/var/lib/glusterd/hooks/1/stop/pre/S29georep-mesh.sh",
    ));
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/glusterd-hooks/S29georep-mesh.sh"),
        &hook,
    )
    .unwrap();
    let socket = cluster.nodes[0].socket.display().to_string();
    let path = format!(
        "{}:/usr/sbin:/usr/bin:/sbin:/bin",
        georep_tests::bin_dir().display()
    );
    a1.restart_glusterd(&[("GEOREP_SOCKET", &socket), ("PATH", &path)]);
    let stopped = a1.run(&["gluster", "--mode=script", "volume", "stop", "pv"]);
    assert!(
        stopped.status.success(),
        "glusterd refused: {}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    wait(
        &cluster,
        "the hook's GLUSTER_OP_WITH_GEOREP event on b1",
        || {
            let events = cluster.ok(1, &["--json", "events", "--type", "GLUSTER_OP_WITH_GEOREP"]);
            events.contains("\"op\":\"stop\"") && events.contains("\"volume\":\"pv\"")
        },
    );

    // stop: no gsyncd on either side.
    cluster.ok(1, &["stop", "pv", SECONDARY]);
    let left = || {
        // gsyncd itself, and the aux-gfid mounts of its workers.
        let mut left = Vec::new();
        for host in [&a1, &b1] {
            left.extend(host.processes("gsyncd.py"));
            left.extend(host.processes("gsyncd-aux"));
        }
        left.iter()
            .map(|pid| {
                let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!(
                    "{pid}: {}",
                    String::from_utf8_lossy(&raw).replace('\0', " ")
                )
            })
            .collect::<Vec<String>>()
    };
    let deadline = Instant::now() + WAIT;
    while !left().is_empty() {
        assert!(
            Instant::now() < deadline,
            "gsyncd processes left after stop: {:#?}\n{}",
            left(),
            cluster.logs_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // delete: the session directories and the keys go.
    cluster.ok(0, &["delete", "pv", SECONDARY]);
    wait(
        &cluster,
        "the session directories and the key block gone",
        || {
            (0..2).all(|i| {
                !cluster.nodes[i]
                    .data()
                    .sessions_root()
                    .join(SESSION_DIR)
                    .exists()
            }) && !std::fs::read_to_string(&authorized_keys)
                .unwrap_or_default()
                .contains("gsyncd")
        },
    );
    drop(cluster);
    drop(a1);
    drop(b1);
    drop(sites);
}
