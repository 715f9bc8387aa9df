//! The cluster-wide event stream over real processes: every node's journal, merged,
//! the same on every node, a node that was down catching up, `--follow` printing as
//! events happen, and retention reported as a gap.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use georep_tests::{Cluster, NodeSpec, Placement, TEST_GOSSIP_MS, TEST_MONITOR, free_port};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const SECONDARY: &str = "n4::gv1";
const LIFECYCLE: &[&str] = &[
    "GEOREP_CREATE",
    "GEOREP_START",
    "GEOREP_CONFIG_SET",
    "GEOREP_PAUSE",
    "GEOREP_RESUME",
    "GEOREP_STOP",
    "GEOREP_DELETE",
];

/// `georep --json events ARGS` on node `i`: one JSON object per line.
/// (An agent that is not up answers nothing: an empty list, for waits.)
fn events(cluster: &Cluster, i: usize, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json", "events"];
    all.extend_from_slice(args);
    let out = cluster.georep(i, &all);
    if out.status.code() == Some(3) {
        return Vec::new();
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// (origin, id, type) of the lifecycle events on node `i`.
fn lifecycle_ids(cluster: &Cluster, i: usize) -> Vec<(String, String, String)> {
    let mut args = Vec::new();
    for t in LIFECYCLE {
        args.push("--type");
        args.push(*t);
    }
    events(cluster, i, &args)
        .iter()
        .map(|e| {
            (
                e["origin"].as_str().unwrap_or_default().to_string(),
                e["id"].as_str().unwrap_or_default().to_string(),
                e["event"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_node_shows_every_lifecycle_event_once_in_one_order_and_a_returning_node_catches_up() {
    let mut cluster = Cluster::five_nodes(Some(TEST_MONITOR));
    // n5 is down for the whole lifecycle.
    cluster.terminate(4);
    cluster.wait_live(0, 4, WAIT);
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.ok(1, &["start", "gv0", SECONDARY]);
    cluster.ok(2, &["config", "gv0", SECONDARY, "sync-jobs", "5"]);
    cluster.ok(3, &["pause", "gv0", SECONDARY]);
    cluster.ok(0, &["resume", "gv0", SECONDARY]);
    cluster.ok(1, &["stop", "gv0", SECONDARY]);
    cluster.ok(2, &["delete", "gv0", SECONDARY]);

    let expected: Vec<String> = LIFECYCLE.iter().map(|s| s.to_string()).collect();
    cluster.wait_until(
        WAIT,
        "every live node to hold the 7 lifecycle events",
        || (0..4).all(|i| lifecycle_ids(&cluster, i).len() == 7),
    );
    let reference = lifecycle_ids(&cluster, 0);
    let kinds: Vec<String> = reference.iter().map(|(_, _, k)| k.clone()).collect();
    assert_eq!(kinds, expected, "each once, in the order they happened");
    for i in 1..4 {
        assert_eq!(lifecycle_ids(&cluster, i), reference, "node {i}");
    }
    // Issued where they were: the origin is the node the command ran on.
    let origins: Vec<&str> = reference
        .iter()
        .map(|(origin, _, _)| origin.as_str())
        .collect();
    assert_eq!(origins, ["n1", "n2", "n3", "n4", "n1", "n2", "n3"]);
    // gluster's keys.
    let start = events(&cluster, 3, &["--type", "GEOREP_START"]);
    assert_eq!(start.len(), 1);
    assert_eq!(start[0]["message"]["primary"], "gv0");
    assert_eq!(start[0]["message"]["secondary"], SECONDARY);
    assert_eq!(start[0]["message"]["force"], "false");
    let config = events(&cluster, 0, &["--type", "GEOREP_CONFIG_SET"]);
    assert_eq!(config[0]["message"]["option"], "sync-jobs");
    assert_eq!(config[0]["message"]["value"], "5");
    // Monitors are reported by the primaries that ran them.
    let monitors = events(
        &cluster,
        3,
        &["--type", "MONITOR_STARTED", "--session", "gv0", SECONDARY],
    );
    let mut reporters: Vec<&str> = monitors
        .iter()
        .filter_map(|e| e["origin"].as_str())
        .collect();
    reporters.sort_unstable();
    reporters.dedup();
    assert_eq!(reporters, ["n1", "n2", "n3"], "{monitors:?}");
    // The human form names the event and its keys.
    let text = cluster.ok(1, &["events", "--type", "GEOREP_DELETE"]);
    assert!(
        text.contains("  n3@")
            && text.contains(
                "GEOREP_DELETE  force=false primary=gv0 reset_sync_time=false secondary=n4::gv1"
            ),
        "{text}"
    );

    // n5 returns: it catches up on everything it missed, in the same order.
    let connects_before = events(&cluster, 0, &["--type", "PEER_CONNECT"])
        .into_iter()
        .filter(|e| e["message"]["peer"] == "n5")
        .count();
    cluster.restart(4);
    cluster.wait_until(WAIT, "n5 to catch up on the lifecycle", || {
        lifecycle_ids(&cluster, 4) == reference
    });
    // Its return is reported once cluster-wide, by the lowest live node.
    let connects_of_n5 = |i: usize| -> Vec<Value> {
        events(&cluster, i, &["--type", "PEER_CONNECT"])
            .into_iter()
            .filter(|e| e["message"]["peer"] == "n5")
            .collect()
    };
    cluster.wait_until(WAIT, "n5's return to be reported on every node", || {
        let on_n1 = connects_of_n5(0);
        on_n1.len() > connects_before && (1..5).all(|i| connects_of_n5(i) == on_n1)
    });
    let connects = connects_of_n5(0);
    assert_eq!(connects.len(), connects_before + 1, "{connects:?}");
    assert_eq!(connects[connects_before]["origin"], "n1", "{connects:?}");

    // A writer that dies leaves its events with the others, who pass them on: n5 is
    // frozen while n1 records a create, n1 dies, and n5, thawed, gets it from them.
    let n5 = Pid::from_raw(cluster.nodes[4].pid().expect("n5 runs") as i32);
    kill(n5, Signal::SIGSTOP).expect("SIGSTOP n5");
    cluster.ok(0, &["create", "gv0", SECONDARY, "--no-wait"]);
    let creates = |cluster: &Cluster, i: usize| {
        lifecycle_ids(cluster, i)
            .into_iter()
            .filter(|(_, _, kind)| kind == "GEOREP_CREATE")
            .count()
    };
    cluster.wait_until(WAIT, "n2 to n4 to hold n1's second create", || {
        (1..4).all(|i| creates(&cluster, i) == 2)
    });
    cluster.kill9(0);
    kill(n5, Signal::SIGCONT).expect("SIGCONT n5");
    cluster.wait_until(WAIT, "n5 to get the create of n1, which is down", || {
        creates(&cluster, 4) == 2
    });
}

#[test]
fn follow_prints_new_events_and_retention_shows_a_gap() {
    let placement = |extra: &[&str]| Placement {
        addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
        launcher: Vec::new(),
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
    };
    // n9 keeps only 300 bytes of journal per origin.
    let mut cluster = Cluster::start_placed(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0"]),
            NodeSpec::new("n4", &["gv1:/bricks/n4/gv1"]),
            NodeSpec::new("n9", &[]),
        ],
        Some(TEST_MONITOR),
        TEST_GOSSIP_MS,
        vec![
            placement(&[]),
            placement(&[]),
            placement(&["--events-max-bytes", "300"]),
        ],
    );
    for i in 0..3 {
        cluster.wait_live(i, 3, WAIT);
    }
    cluster.ok(0, &["create", "gv0", SECONDARY]);

    // --follow on n4, from now on: prints what happens next on n1, as it happens.
    let mut follow = Command::new(cluster.georep_bin())
        .arg("--socket")
        .arg(&cluster.nodes[1].socket)
        .args(["--json", "events", "--follow", "--since", "1s"])
        .args(["--type", "GEOREP_CONFIG_SET", "--node", "n1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("georep events --follow");
    let stdout = follow.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let values = ["2", "3", "4", "5", "6", "7", "8"];
    for value in values {
        cluster.ok(0, &["config", "gv0", SECONDARY, "sync-jobs", value]);
    }
    let mut seen = Vec::new();
    while seen.len() < values.len() {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("--follow printed only {seen:?}\n{}", cluster.logs_tail()));
        let event: Value = serde_json::from_str(&line).expect("one JSON object per line");
        let value = event["message"]["value"].as_str().unwrap_or_default();
        assert!(!value.is_empty(), "not a config event: {line}");
        seen.push(value.to_string());
    }
    assert_eq!(seen, values, "in order, each once");

    // The agent it follows restarts: --follow resumes from its cursor, and what
    // happened meanwhile arrives once.
    cluster.terminate(1);
    for value in ["9", "10"] {
        cluster.ok(0, &["config", "gv0", SECONDARY, "sync-jobs", value]);
    }
    cluster.restart(1);
    let mut after = Vec::new();
    while after.len() < 2 {
        let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "--follow printed only {after:?} after the restart\n{}",
                cluster.logs_tail()
            )
        });
        let event: Value = serde_json::from_str(&line).expect("one JSON object per line");
        after.push(
            event["message"]["value"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(after, ["9", "10"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(rx.try_recv().is_err(), "nothing repeated after the restart");
    let _ = follow.kill();
    let _ = follow.wait();

    // Commands issued on n9 are its events; it keeps 300 bytes of them: reading its
    // journal from the start begins with a gap record, then its newest events.
    for value in values {
        cluster.ok(
            2,
            &[
                "config",
                "gv0",
                SECONDARY,
                "log-level",
                if value.len() % 2 == 0 {
                    "DEBUG"
                } else {
                    "INFO"
                },
            ],
        );
    }
    cluster.wait_until(WAIT, "n9's retention to drop its oldest events", || {
        events(&cluster, 2, &["--node", "n9"])
            .first()
            .is_some_and(|first| {
                first["gap"]["origin"]
                    .as_str()
                    .is_some_and(|stream| stream.starts_with("n9@"))
            })
    });
    let stream = events(&cluster, 2, &["--node", "n9"]);
    assert_eq!(stream[0]["gap"]["from"], 1, "{stream:?}");
    assert_eq!(stream[0]["gap"]["reason"], "retention");
    let newest = stream.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
    let to = stream[0]["gap"]["to"].as_u64().unwrap_or(0);
    assert!(to >= 1 && newest > to, "{stream:?}");
    assert!(
        stream[1..].iter().all(|e| e["origin"] == "n9"),
        "{stream:?}"
    );
}

#[test]
fn built_in_workers_report_active_and_passive_per_brick() {
    // The built-in monitor: in replica set 0 (n1, n2) one worker is Active and one
    // Passive; n3 alone in set 1 is Active.
    let cluster = Cluster::five_nodes(None);
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.ok(1, &["start", "gv0", SECONDARY]);
    let kinds = |cluster: &Cluster| {
        let mut found: Vec<(String, String)> = events(
            cluster,
            4,
            &["--type", "GEOREP_ACTIVE", "--type", "GEOREP_PASSIVE"],
        )
        .iter()
        .map(|e| {
            assert_eq!(e["message"]["primary_volume"], "gv0", "{e}");
            assert_eq!(e["message"]["secondary_host"], "n4", "{e}");
            assert_eq!(e["message"]["secondary_volume"], "gv1", "{e}");
            assert!(e["message"]["brick_path"].is_string(), "{e}");
            assert_eq!(e["message"]["primary_node"], e["origin"], "{e}");
            (
                e["origin"].as_str().unwrap_or_default().to_string(),
                e["event"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
        found.sort();
        found
    };
    cluster.wait_until(WAIT, "one event per worker", || kinds(&cluster).len() >= 3);
    let found = kinds(&cluster);
    let active: Vec<&str> = found
        .iter()
        .filter(|(_, k)| k == "GEOREP_ACTIVE")
        .map(|(o, _)| o.as_str())
        .collect();
    let passive: Vec<&str> = found
        .iter()
        .filter(|(_, k)| k == "GEOREP_PASSIVE")
        .map(|(o, _)| o.as_str())
        .collect();
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(passive.len(), 1, "{found:?}");
    assert!(active.contains(&"n3"), "{found:?}");
    assert!(["n1", "n2"].contains(&passive[0]), "{found:?}");
}

#[test]
fn volume_status_is_reported_once_and_a_filling_brick_is_reported() {
    // Declared first, dropped last: the mount goes before its directory is removed.
    let scratch = tempfile::tempdir().unwrap();
    let mut mounts = georep_tests::tmpfs::Tmpfs::default();
    let small = scratch.path().join("small");
    mounts.mount(&small, "4m");
    let mut cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0"]),
            NodeSpec::new("n2", &["gv0:/bricks/n2/gv0"]),
            NodeSpec::new("n3", &[&format!("gv1:{}", small.display())]),
        ],
        Some(TEST_MONITOR),
    );
    for i in 0..3 {
        cluster.wait_live(i, 3, WAIT);
    }
    // Only what follows the kill is this test's subject: on a loaded machine a failure
    // detector may still judge a peer dead for a moment during start-up (and report it).
    let before_kill: Vec<Value> = events(&cluster, 2, &["--type", "VOLUME_STATUS"])
        .into_iter()
        .map(|e| e["id"].clone())
        .collect();
    let volume_events = |cluster: &Cluster, status: &str| -> Vec<Value> {
        events(cluster, 2, &["--type", "VOLUME_STATUS"])
            .into_iter()
            .filter(|e| e["message"]["name"] == "gv0" && e["message"]["status"] == status)
            .filter(|e| !before_kill.contains(&e["id"]))
            .collect()
    };
    // n2 dies: gv0 is degraded (1 of 2 bricks up), reported once, by n1.
    cluster.kill9(1);
    cluster.wait_until(WAIT, "gv0 reported degraded", || {
        !volume_events(&cluster, "degraded").is_empty()
    });
    cluster.restart(1);
    // Rejoining, republishing its bricks, the report and its replication to n3: a
    // few gossip rounds, but under a loaded CI machine rejoining alone took 6 s.
    cluster.wait_until(3 * WAIT, "gv0 reported online again", || {
        !volume_events(&cluster, "online").is_empty()
    });
    let degraded = volume_events(&cluster, "degraded");
    assert_eq!(degraded.len(), 1, "once cluster-wide: {degraded:?}");
    assert_eq!(degraded[0]["origin"], "n1");
    assert_eq!(degraded[0]["message"]["brick_count"], "2");
    assert_eq!(degraded[0]["message"]["bricks_up"], "1");
    assert!(degraded[0]["message"]["id"].is_string());

    // n3's 4 MiB brick fills up, then is emptied.
    let _ = std::fs::write(small.join("fill"), vec![7u8; 8 << 20]);
    let brick_events = |cluster: &Cluster, kind: &str| events(cluster, 0, &["--type", kind]);
    cluster.wait_until(WAIT, "the full brick reported", || {
        !brick_events(&cluster, "BRICK_FULL").is_empty()
    });
    let full = brick_events(&cluster, "BRICK_FULL");
    assert_eq!(full[0]["origin"], "n3");
    assert_eq!(full[0]["message"]["volume"], "gv1");
    assert_eq!(full[0]["message"]["brick"], small.display().to_string());
    std::fs::remove_file(small.join("fill")).unwrap();
    cluster.wait_until(WAIT, "the brick reported not full again", || {
        !brick_events(&cluster, "BRICK_NOT_FULL").is_empty()
    });
    drop(cluster);
}

#[test]
fn a_crash_looping_monitor_is_aggregated_into_a_suppression_record() {
    // A monitor that dies 0.2 s after every start, retried every second.
    let crashing = "/bin/sh -c 'sleep 0.2; exit 1' georep-crash-monitor {session_dir} {node}";
    let restart = ["--monitor-restart-max", "1s"];
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0"]).with_args(&restart),
            NodeSpec::new("n4", &["gv1:/bricks/n4/gv1"]).with_args(&restart),
        ],
        Some(crashing),
    );
    for i in 0..2 {
        cluster.wait_live(i, 2, WAIT);
    }
    cluster.ok(1, &["create", "gv0", SECONDARY]);
    // Applied whether or not it is confirmed (the monitor may be seen up for a
    // moment between crashes, or never: exit 0 or 4).
    let out = cluster.georep(1, &["--timeout", "1s", "start", "gv0", SECONDARY]);
    assert!(matches!(out.status.code(), Some(0 | 4)), "{out:?}");
    let restarted = |i: usize| {
        events(
            &cluster,
            i,
            &["--type", "MONITOR_RESTARTED", "--node", "n1"],
        )
        .len()
    };
    let suppressed = |i: usize| events(&cluster, i, &["--type", "EVENTS_SUPPRESSED"]);
    cluster.wait_until(WAIT, "a suppression record on both nodes", || {
        (0..2).all(|i| !suppressed(i).is_empty())
    });
    // The loop goes on (the supervisor keeps restarting it) ...
    let restarts = || -> u64 {
        cluster.json(0, &["status", "gv0", SECONDARY])["sessions"][0]["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["restarts"].as_u64())
            .max()
            .unwrap_or(0)
    };
    cluster.wait_until(WAIT, "three more restarts", || restarts() >= 9);
    // ... but its events stop at the burst, plus one record saying so.
    for i in 0..2 {
        assert_eq!(
            restarted(i),
            5,
            "the first five restarts are recorded one by one"
        );
        let records = suppressed(i);
        assert_eq!(records.len(), 1, "{records:?}");
        let message = &records[0]["message"];
        assert_eq!(message["event"], "MONITOR_RESTARTED", "{message}");
        assert_eq!(message["state"], "started", "{message}");
        assert_eq!(message["primary"], "gv0", "{message}");
        assert_eq!(message["primary_node"], "n1", "{message}");
        assert_eq!(message["window_s"], "300", "{message}");
    }
}
