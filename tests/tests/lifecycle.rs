//! Real-process tests of the agent and the CLI: real `georepd` binaries on loopback
//! with separate data dirs, real QUIC, real monitor processes and signals.

use std::time::Duration;

use georep_tests::{Cluster, NodeSpec, TEST_MONITOR, frozen, process_state};

const SECONDARY: &str = "n4::gv1";

fn session_dir(cluster: &Cluster, node: usize) -> std::path::PathBuf {
    cluster.nodes[node]
        .data()
        .sessions_root()
        .join("gv0_n4_gv1")
}

fn wait_monitor_counts(cluster: &Cluster, expected: [usize; 5], what: &str) {
    cluster.wait_until(Duration::from_secs(20), what, || {
        (0..5).all(|i| cluster.test_monitors(i).len() == expected[i])
    });
}

#[test]
fn full_lifecycle_from_every_node() {
    let cluster = Cluster::five_nodes(Some(TEST_MONITOR));
    // create on a primary; every node learns it (exists exit codes)
    let out = cluster.ok(0, &["create", "gv0", SECONDARY, "--push-pem"]);
    assert!(out.contains("successful"), "{out}");
    for i in 0..5 {
        cluster.wait_until(Duration::from_secs(10), "exists everywhere", || {
            cluster
                .georep(i, &["exists", "gv0", SECONDARY])
                .status
                .code()
                == Some(0)
        });
        assert_eq!(
            cluster.georep(i, &["running", "gv0"]).status.code(),
            Some(1)
        );
        assert!(session_dir(&cluster, i).join("gsyncd.conf").exists());
    }
    assert_eq!(cluster.georep(2, &["exists", "gv9"]).status.code(), Some(1));
    assert_eq!(cluster.georep(2, &["exists", "gv1"]).status.code(), Some(0));

    // start from a secondary: monitors on primaries only, exactly one each
    let started = cluster.json(3, &["start", "gv0", SECONDARY]);
    assert_eq!(started["ok"], true, "{started}");
    assert_eq!(
        started["confirmed_nodes"].as_array().unwrap().len(),
        5,
        "{started}"
    );
    for i in 0..3 {
        assert_eq!(
            cluster.test_monitors(i).len(),
            1,
            "node {i} right after start --wait"
        );
    }
    for i in 3..5 {
        assert!(
            cluster.test_monitors(i).is_empty(),
            "secondary {i} runs no monitor"
        );
    }
    assert_eq!(
        cluster
            .georep(4, &["running", "gv0", SECONDARY])
            .status
            .code(),
        Some(0)
    );
    // another node's status follows as the monitors' reports gossip in
    cluster.wait_until(
        Duration::from_secs(10),
        "status on n5 shows 3 monitor pids",
        || {
            let status = cluster.json(4, &["status", "gv0", SECONDARY]);
            let session = &status["sessions"][0];
            session["desired_state"] == "Started"
                && session["workers"].as_array().is_some_and(|workers| {
                    workers.len() == 3
                        && workers.iter().all(|w| w["monitor_pid"].as_u64().is_some())
                })
        },
    );
    let before: Vec<Vec<u32>> = (0..3).map(|i| cluster.test_monitors(i)).collect();

    // config set on one node, read back on every other
    cluster.ok(1, &["config", "gv0", SECONDARY, "sync_jobs", "8"]);
    for i in 0..5 {
        cluster.wait_until(Duration::from_secs(10), "config converged", || {
            let out = cluster.georep(i, &["config", "gv0", SECONDARY, "sync-jobs"]);
            String::from_utf8_lossy(&out.stdout).trim() == "8"
        });
        let conf = std::fs::read_to_string(session_dir(&cluster, i).join("gsyncd.conf")).unwrap();
        assert!(conf.contains("sync-jobs = 8"), "node {i}: {conf}");
    }
    // sync-jobs requires a restart: every monitor is replaced, still exactly one per node
    cluster.wait_until(
        Duration::from_secs(20),
        "monitors restarted for sync-jobs",
        || {
            (0..3).all(|i| {
                let now = cluster.test_monitors(i);
                now.len() == 1 && now != before[i]
            })
        },
    );
    wait_monitor_counts(
        &cluster,
        [1, 1, 1, 0, 0],
        "one monitor per primary after restart",
    );

    // pause from n5: monitors SIGSTOPped (state T); resume from n2: running again
    cluster.ok(4, &["pause", "gv0", SECONDARY]);
    for i in 0..3 {
        let pids = cluster.test_monitors(i);
        assert_eq!(pids.len(), 1, "node {i}: {pids:?}\n{}", cluster.logs_tail());
        assert!(
            frozen(pids[0]),
            "node {i} monitor stopped: {:?}",
            process_state(pids[0])
        );
    }
    assert_eq!(
        cluster.georep(0, &["running", "gv0"]).status.code(),
        Some(0)
    );
    cluster.ok(1, &["resume", "gv0", SECONDARY]);
    for i in 0..3 {
        let pids = cluster.test_monitors(i);
        assert_eq!(pids.len(), 1);
        assert_ne!(
            process_state(pids[0]),
            Some('T'),
            "node {i} monitor continued"
        );
    }

    // stop from n3: monitors gone everywhere
    cluster.ok(2, &["stop", "gv0", SECONDARY]);
    for i in 0..5 {
        assert!(cluster.test_monitors(i).is_empty(), "node {i} after stop");
    }
    assert_eq!(
        cluster.georep(0, &["running", "gv0"]).status.code(),
        Some(1)
    );

    // delete from n4: session dirs removed everywhere; exists fails
    cluster.ok(3, &["delete", "gv0", SECONDARY]);
    for i in 0..5 {
        cluster.wait_until(Duration::from_secs(10), "session dir removed", || {
            !session_dir(&cluster, i).exists()
        });
        assert_eq!(cluster.georep(i, &["exists", "gv0"]).status.code(), Some(1));
    }
}

#[test]
fn validation_refusals_name_the_session() {
    let cluster = Cluster::five_nodes(Some(TEST_MONITOR));
    let refused = |node: usize, args: &[&str], needle: &str| {
        let out = cluster.georep(node, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    };
    refused(
        0,
        &["start", "gv0", SECONDARY],
        "gv0 -> n4::gv1 has not been created",
    );
    refused(0, &["create", "gv9", SECONDARY], "gv9");
    refused(0, &["create", "gv0", "n4::gv7"], "gv7");
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    refused(1, &["create", "gv0", SECONDARY], "already exists");
    refused(1, &["stop", "gv0", SECONDARY], "gv0 -> n4::gv1");
    refused(1, &["pause", "gv0", SECONDARY], "gv0 -> n4::gv1");
    refused(1, &["resume", "gv0", SECONDARY], "gv0 -> n4::gv1");
    refused(
        2,
        &["config", "gv0", SECONDARY, "no-such-key", "1"],
        "change-interval",
    );
    refused(
        2,
        &["config", "gv0", SECONDARY, "sync-jobs", "1000"],
        "from 1 to 100",
    );
    cluster.ok(3, &["start", "gv0", SECONDARY]);
    refused(3, &["start", "gv0", SECONDARY], "already Started");
    refused(4, &["delete", "gv0", SECONDARY], "Please stop the session");
    // --force overrides the state checks, never the duplicate check
    cluster.ok(4, &["delete", "gv0", SECONDARY, "--force"]);
    let usage = cluster.georep(0, &["start", "gv0", "n4:gv1"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn no_agent_at_the_socket_exits_3() {
    let bins = georep_tests::bin_dir();
    let out = std::process::Command::new(bins.join("georep"))
        .args(["--socket", "/nonexistent/georepd.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/georepd.sock"));
}

#[test]
fn metrics_are_served_in_the_prometheus_format() {
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], georep_tests::free_port()));
    let placement = |extra: Vec<String>| georep_tests::Placement {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], georep_tests::free_port())),
        launcher: Vec::new(),
        extra_args: extra,
    };
    let cluster = Cluster::start_placed(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0"]),
            NodeSpec::new("n4", &["gv1:/bricks/n4/gv1"]),
        ],
        Some(TEST_MONITOR),
        georep_tests::TEST_GOSSIP_MS,
        vec![
            placement(vec!["--metrics-listen".into(), metrics.to_string()]),
            placement(Vec::new()),
        ],
    );
    cluster.wait_live(0, 2, Duration::from_secs(30));
    // A receiver that is not there: deliveries fail and events stay pending.
    let dead = format!(
        "http://127.0.0.1:{}/hook?token=s3cret",
        georep_tests::free_port()
    );
    cluster.ok(0, &["webhook", "add", &dead]);
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.ok(1, &["start", "gv0", SECONDARY]);
    // The scrape reflects what this node has merged and its monitor's state.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let (status, body) = georep_tests::http_get(metrics, "/metrics");
        let caught_up = body.contains("georep_sessions{desired_state=\"Started\"} 1")
            && body.contains("georep_monitors{state=\"Started\"} 1")
            && body.contains("georep_eager_push_ack_seconds_count")
            && !body.contains("georep_eager_push_ack_seconds_count 0")
            && body
                .lines()
                .any(|l| l.starts_with("georep_webhook_failing{") && l.ends_with(" 1"));
        if caught_up || std::time::Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.contains(" 200 "), "{status}");
    // A real parser of the exposition format (Debian's python3-prometheus-client).
    // Debian's interpreter, where the package installs the module (not a pyenv shim).
    let parsed = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import sys\n\
             from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
             for family in text_string_to_metric_families(sys.stdin.read()):\n\
             \x20   for s in family.samples:\n\
             \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
             \x20       print(f'{s.name}{{{labels}}} {s.value:g}')\n",
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(body.as_bytes())?;
            child.wait_with_output()
        })
        .expect("python3 with prometheus_client (.ci/run installs python3-prometheus-client)");
    let samples = String::from_utf8_lossy(&parsed.stdout);
    assert!(
        parsed.status.success(),
        "the exposition does not parse: {}\n{body}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    for sample in [
        "georep_members{state=live} 2",
        "georep_members{state=dead} 0",
        "georep_sessions{desired_state=Started} 1",
        "georep_monitors{state=Started} 1",
        "georep_monitor_restarts_total{} 0",
    ] {
        assert!(
            samples.lines().any(|l| l == sample),
            "{sample} not in:\n{samples}"
        );
    }
    let value = |prefix: &str| {
        samples
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    assert!(value("georep_mesh_frames_sent_total{} ") > 0.0, "{samples}");
    assert_eq!(value("georep_mesh_frames_shed_total{} "), 0.0, "{samples}");
    // create was issued here: pushed to n4, acknowledged, timed.
    assert!(value("georep_eager_pushes_total{} ") >= 1.0, "{samples}");
    assert!(value("georep_eager_push_acks_total{} ") >= 1.0, "{samples}");
    assert!(
        value("georep_eager_push_ack_seconds_count{} ") >= 1.0,
        "{samples}"
    );
    assert_eq!(
        value("georep_eager_push_ack_seconds_bucket{le=+Inf} "),
        value("georep_eager_push_ack_seconds_count{} "),
        "{samples}"
    );
    // The monitor of n1's brick was spawned by the reconciler.
    assert!(
        value("georep_reconcile_actions_total{action=spawn} ") >= 1.0,
        "{samples}"
    );
    assert!(value("georep_event_journal_events{} ") >= 3.0, "{samples}");
    assert!(value("georep_event_journal_bytes{} ") > 0.0, "{samples}");
    // The webhook: labelled without its token, failing, events pending.
    let hook = dead.split('?').next().unwrap_or_default();
    assert_eq!(
        value(&format!(
            "georep_webhook_failing{{state=active,url={hook}}} "
        )),
        1.0,
        "{samples}"
    );
    assert!(
        value(&format!(
            "georep_webhook_pending_events{{state=active,url={hook}}} "
        )) >= 1.0,
        "{samples}"
    );
    assert!(!body.contains("s3cret"), "{body}");

    let (status, _) = georep_tests::http_get(metrics, "/nothing");
    assert!(status.contains(" 404 "), "{status}");
}
