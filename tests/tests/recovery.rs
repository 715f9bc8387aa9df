//! Real-process tests of failure and recovery: killed agents, restarted agents, crashing
//! monitors, whole-cluster restarts, and bad input to `georepd`.

use std::process::Command;
use std::time::Duration;

use georep_tests::{CRASHING_MONITOR, Cluster, NodeSpec, TEST_MONITOR, bin_dir};

const SECONDARY: &str = "n4::gv1";

fn cluster(monitor: &str) -> Cluster {
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0:0"]),
            NodeSpec::new("n2", &["gv0:/bricks/n2/gv0:0"]),
            NodeSpec::new("n3", &["gv0:/bricks/n3/gv0:1"]),
            NodeSpec::new("n4", &["gv1:/bricks/n4/gv1"]),
        ],
        Some(monitor),
    );
    for i in 0..4 {
        cluster.wait_live(i, 4, Duration::from_secs(30));
    }
    cluster
}

fn started(cluster: &Cluster) {
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.ok(1, &["start", "gv0", SECONDARY]);
    for i in 0..3 {
        assert_eq!(cluster.test_monitors(i).len(), 1, "node {i}");
    }
}

#[test]
fn killed_primary_catches_up_with_a_stop_and_delete_issued_while_it_was_dead() {
    let mut cluster = cluster(TEST_MONITOR);
    started(&cluster);
    let orphan = cluster.test_monitors(0);
    cluster.kill9(0);
    // the monitor survives its agent (replication is not interrupted)
    assert_eq!(cluster.test_monitors(0), orphan);
    cluster.wait_live(1, 3, Duration::from_secs(30));
    let stop = cluster.json(1, &["stop", "gv0", SECONDARY]);
    assert_eq!(stop["ok"], true, "{stop}");
    assert_eq!(stop["dead_nodes"], serde_json::json!(["n1"]), "{stop}");
    assert!(cluster.test_monitors(1).is_empty() && cluster.test_monitors(2).is_empty());
    assert_eq!(
        cluster.test_monitors(0),
        orphan,
        "n1 cannot act while its agent is down"
    );
    // status elsewhere shows n1's row Offline, with how long ago it was heard from
    // (once that node's own failure detector has declared n1 dead)
    cluster.wait_live(3, 3, Duration::from_secs(30));
    let status = cluster.json(3, &["status", "gv0", SECONDARY]);
    let row = status["sessions"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["node"] == "n1")
        .cloned()
        .unwrap();
    assert_eq!(row["status"], "Offline", "{row}");
    assert!(row["last_heard_ms"].as_u64().is_some(), "{row}");
    // and the session is deleted while n1 is down
    cluster.ok(2, &["delete", "gv0", SECONDARY]);
    let session_dir = cluster.nodes[0].data().sessions_root().join("gv0_n4_gv1");
    assert!(session_dir.exists(), "n1 could not clean up while down");
    cluster.restart(0);
    cluster.wait_until(
        Duration::from_secs(15),
        "n1 stops its monitor after restart",
        || cluster.test_monitors(0).is_empty(),
    );
    cluster.wait_until(
        Duration::from_secs(15),
        "n1 removes the deleted session's dir",
        || !session_dir.exists(),
    );
}

#[test]
fn restarted_agent_adopts_its_running_monitor() {
    let mut cluster = cluster(TEST_MONITOR);
    started(&cluster);
    let before = cluster.test_monitors(2);
    let status = cluster.terminate(2).expect("agent exit status");
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    assert_eq!(cluster.test_monitors(2), before, "monitor kept running");
    cluster.restart(2);
    cluster.wait_live(2, 4, Duration::from_secs(30));
    // give the restarted agent several reconcile rounds to (wrongly) start another one
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        cluster.test_monitors(2),
        before,
        "same monitor, no second one"
    );
    // kill -9 + restart: same
    cluster.kill9(2);
    cluster.restart(2);
    cluster.wait_live(2, 4, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cluster.test_monitors(2), before);
    let status = cluster.json(2, &["status", "gv0", SECONDARY]);
    let worker = status["sessions"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["node"] == "n3")
        .cloned()
        .unwrap();
    assert_eq!(
        worker["monitor_pid"].as_u64(),
        Some(u64::from(before[0])),
        "{worker}"
    );
}

#[test]
fn crashing_monitor_is_retried_with_backoff_and_reported_faulty() {
    let cluster = cluster(CRASHING_MONITOR);
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    // the monitors never match Started: the wait times out with exit 4 (applied, not confirmed)
    let out = cluster.georep(1, &["start", "gv0", SECONDARY, "--timeout", "2"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.wait_until(
        Duration::from_secs(30),
        "all primaries Faulty in status",
        || {
            let status = cluster.json(3, &["status", "gv0", SECONDARY]);
            status["sessions"][0]["workers"]
                .as_array()
                .is_some_and(|w| w.len() == 3 && w.iter().all(|w| w["status"] == "Faulty"))
        },
    );
    let status = cluster.json(3, &["status", "gv0", SECONDARY]);
    let worker = &status["sessions"][0]["workers"][0];
    assert!(worker["restarts"].as_u64().unwrap() >= 2, "{worker}");
    assert!(
        worker["last_error"].as_str().unwrap_or("").contains('3'),
        "last exit reason names the status: {worker}"
    );
    let table = cluster.ok(0, &["status"]);
    assert!(table.contains("Faulty"), "{table}");
}

#[test]
fn whole_cluster_restart_loses_nothing() {
    let mut cluster = cluster(TEST_MONITOR);
    started(&cluster);
    cluster.ok(3, &["config", "gv0", SECONDARY, "log-level", "debug"]);
    cluster.ok(2, &["create", "gv0", "n4::gv2", "--force"]);
    cluster.ok(2, &["config", "gv0", "n4::gv2", "ignore-deletes", "yes"]);
    let monitors: Vec<Vec<u32>> = (0..4).map(|i| cluster.test_monitors(i)).collect();
    for i in 0..4 {
        cluster.kill9(i);
    }
    for i in 0..4 {
        cluster.restart(i);
    }
    for i in 0..4 {
        cluster.wait_live(i, 4, Duration::from_secs(30));
    }
    for i in 0..4 {
        let status = cluster.json(i, &["status"]);
        let sessions = status["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 2, "node {i}: {status}");
        let first = sessions
            .iter()
            .find(|s| s["secondary_volume"] == "gv1")
            .unwrap();
        assert_eq!(first["desired_state"], "Started");
        assert_eq!(first["config"]["log-level"], "DEBUG");
        let second = sessions
            .iter()
            .find(|s| s["secondary_volume"] == "gv2")
            .unwrap();
        assert_eq!(second["desired_state"], "Created");
        assert_eq!(second["config"]["ignore-deletes"], "true");
    }
    std::thread::sleep(Duration::from_secs(2));
    for (i, before) in monitors.iter().enumerate() {
        assert_eq!(
            &cluster.test_monitors(i),
            before,
            "node {i} kept exactly its monitor\n{}",
            cluster.logs_tail()
        );
    }
}

#[test]
fn corrupt_state_file_is_reported_kept_and_repaired_from_peers() {
    let mut cluster = cluster(TEST_MONITOR);
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.terminate(3);
    let state = cluster.nodes[3].data().state_file();
    std::fs::write(&state, b"GRPS\x01garbage").unwrap();
    cluster.restart(3);
    cluster.wait_until(
        Duration::from_secs(20),
        "n4 relearns the session from peers",
        || {
            cluster
                .georep(3, &["exists", "gv0", SECONDARY])
                .status
                .code()
                == Some(0)
        },
    );
    let log = std::fs::read_to_string(cluster.nodes[3].data_dir.join("georepd.log")).unwrap();
    assert!(log.contains("corrupt"), "{log}");
    let kept = std::fs::read_dir(&cluster.nodes[3].data_dir)
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.bin.corrupt-")
        });
    assert!(kept, "the corrupt file is kept for post-mortem");
}

fn georepd(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin_dir().join("georepd"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_is_refused_with_a_one_line_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("georepd.toml");
    std::fs::write(
        &file,
        "node_id = \"n1\"\ndata_dir = \"/tmp/x\"\ngossip_interval_ms = \"fast\"\n",
    )
    .unwrap();
    let (code, stderr) = georepd(&["--config", file.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("georepd.toml:3"), "{stderr}");
    assert!(stderr.contains("gossip_interval_ms"), "{stderr}");
    std::fs::write(&file, "node_id = \"n1\"\nbogus = 1\n").unwrap();
    let (_, stderr) = georepd(&["--config", file.to_str().unwrap()]);
    assert!(
        stderr.contains(":2") && stderr.contains("bogus"),
        "{stderr}"
    );

    // TLS files missing
    let data = dir.path().join("d");
    let (code, stderr) = georepd(&[
        "--node-id",
        "n1",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("ca.crt"), "{stderr}");

    // certificate from another CA
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    georep_mesh::write_ca(&a).unwrap();
    georep_mesh::write_ca(&b).unwrap();
    georep_mesh::write_node_cert(&b, "n1", &[], &[], &b).unwrap();
    let port = georep_tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    let tls_args = |ca: &std::path::Path, certs: &std::path::Path| {
        vec![
            "--node-id".to_string(),
            "n1".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            listen.clone(),
            "--tls-ca".into(),
            ca.join("ca.crt").display().to_string(),
            "--tls-cert".into(),
            certs.join("n1.crt").display().to_string(),
            "--tls-key".into(),
            certs.join("n1.key").display().to_string(),
        ]
    };
    let args = tls_args(&a, &b);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = georepd(&args);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("not accepted by the cluster CA"),
        "{stderr}"
    );

    // port taken
    let _taken = std::net::UdpSocket::bind(&listen).unwrap();
    let args = tls_args(&b, &b);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = georepd(&args);
    assert_ne!(code, Some(0));
    assert!(stderr.contains(&listen), "{stderr}");
}
