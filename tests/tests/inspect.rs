//! Real-process tests of `georep inspect`: five real agents on loopback (and, for the
//! partition, in a private network namespace partitioned with nftables), inspected
//! through the real CLI, human and `--json` forms.

use std::time::{Duration, Instant};

use georep_tests::loopback_ns::LoopbackNs;
use georep_tests::{Cluster, NodeSpec, TEST_MONITOR};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const SECONDARY: &str = "n4::gv1";
/// A monitor that crashes at once for sessions whose secondary volume is `gvbad`, and
/// runs like [`TEST_MONITOR`] otherwise.
const PICKY_MONITOR: &str = "/bin/sh -c 'case \"$1\" in *_gvbad) exit 3;; esac; trap \"exit 0\" TERM; while :; do sleep 0.2; done' georep-test-monitor {session_dir} {node}";
/// Generous bound for anything gossip has to carry or the failure detector has to see.
const SETTLE: Duration = Duration::from_secs(30);

fn specs() -> Vec<NodeSpec> {
    vec![
        NodeSpec::new("n1", &["gv0:/bricks/n1/gv0:0"]),
        NodeSpec::new("n2", &["gv0:/bricks/n2/gv0:0"]),
        NodeSpec::new("n3", &["gv0:/bricks/n3/gv0:1"]),
        NodeSpec::new("n4", &["gv1:/bricks/n4/gv1", "gvbad:/bricks/n4/gvbad"]),
        NodeSpec::new("n5", &["gv0:/bricks/n5/gv0:1"]),
    ]
}

fn settled(cluster: Cluster) -> Cluster {
    for i in 0..cluster.nodes.len() {
        cluster.wait_live(i, 5, SETTLE);
    }
    cluster
}

fn cluster(monitor: &str) -> Cluster {
    settled(Cluster::start(&specs(), Some(monitor)))
}

/// `georep --json inspect ARGS` on node `i`, parsed.
fn inspect(cluster: &Cluster, i: usize, args: &[&str]) -> Value {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    cluster.json(i, &all)
}

/// `georep inspect ARGS` on node `i`, human form, asserting exit 0.
fn inspect_text(cluster: &Cluster, i: usize, args: &[&str]) -> String {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    cluster.ok(i, &all)
}

fn signal(cluster: &Cluster, i: usize, signal: Signal) {
    let pid = cluster.nodes[i].pid().expect("agent running");
    kill(Pid::from_raw(pid as i32), signal).expect("signal the agent");
}

fn member<'a>(members: &'a Value, node: &str) -> &'a Value {
    members["members"]
        .as_array()
        .expect("members array")
        .iter()
        .find(|m| m["node"] == node)
        .unwrap_or_else(|| panic!("{node} not in {members}"))
}

fn session<'a>(sessions: &'a Value, name: &str) -> &'a Value {
    sessions["sessions"]
        .as_array()
        .expect("sessions array")
        .iter()
        .find(|s| s["session"] == name)
        .unwrap_or_else(|| panic!("{name} not in {sessions}"))
}

fn cell<'a>(session: &'a Value, node: &str) -> &'a Value {
    session["nodes"]
        .as_array()
        .expect("nodes array")
        .iter()
        .find(|c| c["node"] == node)
        .unwrap_or_else(|| panic!("{node} not in {session}"))
}

fn register<'a>(session: &'a Value, name: &str) -> &'a Value {
    session["registers"]
        .as_array()
        .expect("registers array")
        .iter()
        .find(|r| r["register"] == name)
        .unwrap_or_else(|| panic!("register {name} not in {session}"))
}

fn has_register(session: &Value, name: &str, value: &str) -> bool {
    session["registers"].as_array().is_some_and(|r| {
        r.iter()
            .any(|r| r["register"] == name && r["value"] == value)
    })
}

fn all_merged(session: &Value) -> bool {
    session["nodes"]
        .as_array()
        .is_some_and(|cells| cells.len() == 5 && cells.iter().all(|c| c["state"] == "merged"))
}

/// Polls `check` (which returns `Some` when done) until `within`.
fn poll<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGSTOPs agent `frozen`, has agent `writer` set `sync-jobs` (without waiting), and
/// returns the `inspect sessions` answer of agent 0 once it holds that write, provided
/// the frozen agent is still live there (so it shows as lagging rather than dead). The
/// failure detector declares a frozen agent dead within about a second; when that
/// happens first the agent is resumed, allowed to catch up, and the attempt repeated.
/// Returns with the agent still stopped; the caller resumes it.
fn write_while_frozen(cluster: &Cluster, frozen: usize, writer: usize) -> (Value, String) {
    let frozen_id = cluster.nodes[frozen].id.clone();
    let writer_id = cluster.nodes[writer].id.clone();
    for attempt in 0..8 {
        let value = (10 + attempt).to_string();
        signal(cluster, frozen, Signal::SIGSTOP);
        cluster.ok(
            writer,
            &["config", "gv0", SECONDARY, "sync-jobs", &value, "--no-wait"],
        );
        let seen = poll(Duration::from_secs(5), || {
            let sessions = inspect(cluster, 0, &["sessions"]);
            let s = session(&sessions, "gv0 -> n4::gv1");
            let holds = has_register(s, "config.sync-jobs", &value)
                && s["latest_write"]["origin"] == writer_id.as_str();
            holds.then(|| sessions.clone())
        })
        .expect("agent 0 receives the write");
        let s = session(&seen, "gv0 -> n4::gv1");
        if cell(s, &frozen_id)["state"] == "lagging" {
            eprintln!("frozen {frozen_id} seen lagging on attempt {}", attempt + 1);
            return (seen, value);
        }
        eprintln!(
            "frozen {frozen_id} declared dead first (attempt {})",
            attempt + 1
        );
        // Declared dead before we looked: resume, let it catch up, try again.
        signal(cluster, frozen, Signal::SIGCONT);
        cluster.wait_until(SETTLE, "the resumed agent catches up", || {
            let sessions = inspect(cluster, 0, &["sessions"]);
            all_merged(session(&sessions, "gv0 -> n4::gv1"))
        });
    }
    panic!(
        "in 8 attempts agent 0 never saw the frozen {frozen_id} live but lagging\n{}",
        cluster.logs_tail()
    );
}

#[test]
fn members_lists_all_five_live_then_a_killed_node_dead() {
    let mut cluster = cluster(TEST_MONITOR);
    let members = inspect(&cluster, 0, &["members"]);
    let rows = members["members"].as_array().expect("members");
    assert_eq!(rows.len(), 5, "{members}");
    for (node, row) in cluster.nodes.iter().zip(rows) {
        assert_eq!(row["node"], node.id.as_str(), "{row}");
        assert_eq!(row["live"], true, "{row}");
        assert_eq!(row["status"], "live", "{row}");
        assert_eq!(row["gossip_addr"], node.addr.to_string(), "{row}");
        assert!(row["generation"].as_u64().unwrap() > 0, "{row}");
        assert!(row["heartbeat"].as_u64().unwrap() > 0, "{row}");
        assert!(row["last_heard_ms"].as_u64().unwrap() < 10_000, "{row}");
        // `VERSION (commit)`: tests/tests/version.rs checks the commit.
        let version = row["agent_version"].as_str().unwrap_or_default();
        assert!(
            version.starts_with(concat!(env!("CARGO_PKG_VERSION"), " (")),
            "{row}"
        );
        assert!(row["key_count"].as_u64().unwrap() >= 1, "{row}");
        assert!(row["max_version"].as_u64().unwrap() >= 1, "{row}");
        assert!(row["seen"].is_object(), "{row}");
        assert!(
            row.get("phi").is_none(),
            "phi is not readable from chitchat 0.11: {row}"
        );
        assert_eq!(row["is_self"], node.id == "n1", "{row}");
    }

    let killed_at = Instant::now();
    cluster.kill9(4);
    let members = poll(SETTLE, || {
        let members = inspect(&cluster, 0, &["members"]);
        (member(&members, "n5")["status"] == "dead").then_some(members)
    })
    .unwrap_or_else(|| {
        panic!(
            "n5 not shown dead within {SETTLE:?}\n{}",
            cluster.logs_tail()
        )
    });
    eprintln!("n5 shown dead {:?} after kill -9", killed_at.elapsed());
    let n5 = member(&members, "n5");
    assert_eq!(n5["live"], false, "{n5}");
    assert!(n5["last_heard_ms"].as_u64().unwrap() > 0, "{n5}");
    for other in ["n1", "n2", "n3", "n4"] {
        assert_eq!(member(&members, other)["status"], "live", "{members}");
    }

    let text = inspect_text(&cluster, 0, &["members"]);
    let n5_line = text
        .lines()
        .find(|l| l.starts_with("n5 "))
        .unwrap_or_else(|| panic!("no n5 row:\n{text}"));
    assert!(n5_line.contains(" dead "), "{n5_line}");
    assert!(text.contains("phi is not shown"), "{text}");
}

#[test]
fn sessions_matrix_shows_a_frozen_agent_lagging_then_catching_up() {
    let cluster = cluster(TEST_MONITOR);
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.ok(0, &["start", "gv0", SECONDARY]);
    cluster.wait_until(SETTLE, "every node merged the start", || {
        all_merged(session(
            &inspect(&cluster, 0, &["sessions"]),
            "gv0 -> n4::gv1",
        ))
    });
    let sessions = inspect(&cluster, 0, &["sessions", "gv0", SECONDARY]);
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 1);
    let s = session(&sessions, "gv0 -> n4::gv1");
    assert_eq!(s["exists"], true);
    assert_eq!(s["desired_state"], "Started");
    assert_eq!(s["key"], "s/gv0:root@n4::gv1");
    let desired = register(s, "desired");
    assert_eq!(desired["value"], "Started");
    assert_eq!(desired["writer"], "n1");
    let stamp = desired["stamp"].as_str().unwrap();
    assert!(
        stamp.ends_with("@n1") && stamp.split_once('.').is_some(),
        "stamp in millis.counter@node form: {stamp}"
    );
    assert!(
        desired["carried_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "n1"),
        "{desired}"
    );
    assert_eq!(register(s, "created")["value"]["push_pem"], false);

    let (frozen_view, value) = write_while_frozen(&cluster, 4, 1);
    let s = session(&frozen_view, "gv0 -> n4::gv1");
    let latest = &s["latest_write"];
    assert_eq!(latest["origin"], "n2", "{s}");
    let needs = latest["version"].as_u64().unwrap();
    let n5 = cell(s, "n5");
    assert_eq!(n5["state"], "lagging", "{s}");
    assert_eq!(n5["merged"], false, "{s}");
    assert!(
        n5["seen"].is_null() || n5["seen"]["version"].as_u64().unwrap() < needs,
        "{n5}"
    );
    assert!(
        s["lagging_nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "n5")
    );
    assert_eq!(
        cell(s, "n2")["state"],
        "merged",
        "the writer has its write: {s}"
    );
    let sync_jobs = register(s, "config.sync-jobs");
    assert_eq!(sync_jobs["writer"], "n2");
    assert_eq!(sync_jobs["value"], value.as_str());
    let text = inspect_text(&cluster, 0, &["sessions"]);
    assert!(
        text.lines().any(|l| l.starts_with("n5 ")
            && l.contains("lagging (has ")
            && l.contains(&format!("needs v{needs}"))),
        "matrix shows n5 lagging:\n{text}"
    );

    signal(&cluster, 4, Signal::SIGCONT);
    let caught_up = poll(SETTLE, || {
        let sessions = inspect(&cluster, 0, &["sessions"]);
        let s = session(&sessions, "gv0 -> n4::gv1");
        // Merged can show first through n5's acknowledgement of the push; its
        // published frontier (`seen`) follows on its next gossip round.
        let n5 = cell(s, "n5");
        (n5["state"] == "merged" && n5["seen"]["version"].as_u64() >= Some(needs))
            .then(|| sessions.clone())
    })
    .unwrap_or_else(|| panic!("n5 never caught up\n{}", cluster.logs_tail()));
    let s = session(&caught_up, "gv0 -> n4::gv1");
    assert_eq!(register(s, "config.sync-jobs")["value"], value.as_str());
    cluster.wait_until(SETTLE, "all five merged again", || {
        all_merged(session(
            &inspect(&cluster, 0, &["sessions"]),
            "gv0 -> n4::gv1",
        ))
    });
}

fn explain(cluster: &Cluster, i: usize, secondary: &str, node: &str) -> Value {
    let answer = inspect(cluster, i, &["explain", "gv0", secondary, "--node", node]);
    assert_eq!(answer["ok"], true, "{answer}");
    answer
}

fn sentences(answer: &Value) -> String {
    answer["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn explain_names_the_reason_on_each_node() {
    let cluster = cluster(PICKY_MONITOR);
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.ok(0, &["start", "gv0", SECONDARY]);

    // running, on the local node by default
    let local = inspect(&cluster, 0, &["explain", "gv0", SECONDARY]);
    assert_eq!(local["node"], "n1");
    assert_eq!(local["reason"], "running", "{local}");
    assert!(local["monitor"]["pid"].as_u64().is_some(), "{local}");
    assert!(
        local["message"].as_str().unwrap().contains("running on n1"),
        "{local}"
    );

    // a secondary node: not a primary node, and the honest word on keys
    let n4 = explain(&cluster, 0, SECONDARY, "n4");
    assert_eq!(n4["reason"], "not_primary", "{n4}");
    assert_eq!(n4["primary_bricks"], Value::Array(vec![]));
    assert_eq!(n4["hosts_secondary"], true);
    assert!(
        n4["message"]
            .as_str()
            .unwrap()
            .contains("not a primary node"),
        "{n4}"
    );
    assert!(
        sentences(&n4).contains("no SSH key management is implemented yet; nothing is installed"),
        "{n4}"
    );

    // desired Stopped, asked on another node about a third
    cluster.ok(1, &["stop", "gv0", SECONDARY]);
    let n3 = explain(&cluster, 1, SECONDARY, "n3");
    assert_eq!(n3["reason"], "desired_stopped", "{n3}");
    assert_eq!(n3["desired_state"], "Stopped");
    assert!(
        n3["desired_stamp"].as_str().unwrap().ends_with("@n2"),
        "{n3}"
    );
    let n3_brick = n3["primary_bricks"][0]["path"].as_str().unwrap_or_default();
    assert!(n3_brick.ends_with("/bricks/n3/gv0"), "{n3}");
    assert!(
        sentences(&n3).contains("desired state Stopped set at"),
        "{n3}"
    );

    // a crashing monitor: Faulty, with its error and retry
    cluster.ok(0, &["create", "gv0", "n4::gvbad"]);
    cluster.ok(0, &["start", "gv0", "n4::gvbad", "--no-wait"]);
    let faulty = poll(SETTLE, || {
        let answer = explain(&cluster, 0, "n4::gvbad", "n3");
        (answer["reason"] == "faulty").then_some(answer)
    })
    .unwrap_or_else(|| panic!("n3's gvbad monitor never Faulty\n{}", cluster.logs_tail()));
    assert_eq!(faulty["monitor"]["state"], "Faulty", "{faulty}");
    assert!(
        faulty["monitor"]["restarts"].as_u64().unwrap() >= 1,
        "{faulty}"
    );
    let error = faulty["monitor"]["last_error"].as_str().unwrap();
    assert!(error.contains('3'), "exit status 3 named: {error}");
    let message = faulty["message"].as_str().unwrap();
    assert!(message.contains("Faulty"), "{message}");
    let text = inspect_text(
        &cluster,
        0,
        &["explain", "gv0", "n4::gvbad", "--node", "n3"],
    );
    assert!(
        text.starts_with("gv0 -> n4::gvbad on n3: faulty\n"),
        "{text}"
    );
    assert!(text.contains("Last error: "), "{text}");

    // a frozen primary misses a write: lagging (n5, stopped, asked on n1)
    cluster.ok(0, &["start", "gv0", SECONDARY]);
    cluster.wait_until(SETTLE, "every node merged the restart", || {
        all_merged(session(
            &inspect(&cluster, 0, &["sessions"]),
            "gv0 -> n4::gv1",
        ))
    });
    let mut lagging = None;
    for _ in 0..8 {
        let (view, _) = write_while_frozen(&cluster, 4, 1);
        let answer = explain(&cluster, 0, SECONDARY, "n5");
        let latest = session(&view, "gv0 -> n4::gv1")["latest_write"].clone();
        signal(&cluster, 4, Signal::SIGCONT);
        if answer["reason"] == "lagging" {
            lagging = Some((answer, latest));
            break;
        }
        assert_eq!(
            answer["reason"], "node_dead",
            "frozen n5 is lagging or dead: {answer}"
        );
        cluster.wait_until(SETTLE, "n5 catches up", || {
            all_merged(session(
                &inspect(&cluster, 0, &["sessions"]),
                "gv0 -> n4::gv1",
            ))
        });
    }
    let (answer, latest) = lagging.expect("n5 explained as lagging in 8 attempts");
    assert_eq!(answer["merged_latest_write"], false, "{answer}");
    assert_eq!(answer["latest_write"]["origin"], "n2", "{answer}");
    let needs = latest["version"].as_u64().unwrap();
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.starts_with("n5 is lagging behind the latest write (has ")
            && message.contains(&format!("of n2, needs v{needs}")),
        "{message}"
    );
    // once resumed it catches up and runs its monitor again
    let running = poll(SETTLE, || {
        let answer = explain(&cluster, 0, SECONDARY, "n5");
        (answer["reason"] == "running").then_some(answer)
    });
    assert!(
        running.is_some(),
        "n5 back to running\n{}",
        cluster.logs_tail()
    );
}

#[test]
fn diff_is_empty_once_converged_and_not_during_a_partition() {
    let ns = LoopbackNs::create();
    let cluster = settled(Cluster::start_with(
        &specs(),
        Some(TEST_MONITOR),
        Some(ns.launcher()),
    ));
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.ok(0, &["start", "gv0", SECONDARY]);
    let converged = poll(SETTLE, || {
        let diff = inspect(&cluster, 2, &["diff", "n1", "n4"]);
        (diff["differs"] == false).then_some(diff)
    })
    .unwrap_or_else(|| panic!("n1 and n4 never converged\n{}", cluster.logs_tail()));
    assert_eq!(converged["writes"], Value::Array(vec![]));
    assert_eq!(converged["seen"], Value::Array(vec![]));
    assert!(
        converged["message"]
            .as_str()
            .unwrap()
            .starts_with("no differences")
    );
    let text = inspect_text(&cluster, 2, &["diff", "n1", "n4"]);
    assert!(text.contains("no differences"), "{text}");

    // {n1, n2} | {n3, n4, n5}: a write on n1 cannot reach the other side
    let port = |i: usize| cluster.nodes[i].addr.port();
    ns.partition(&[port(0), port(1)], &[port(2), port(3), port(4)]);
    assert!(ns.ruleset().contains("drop"), "{}", ns.ruleset());
    cluster.ok(
        0,
        &["config", "gv0", SECONDARY, "sync-jobs", "9", "--no-wait"],
    );
    let split = poll(SETTLE, || {
        let diff = inspect(&cluster, 0, &["diff", "n1", "n4"]);
        let shows_write = diff["writes"].as_array().is_some_and(|w| {
            w.iter().any(|w| {
                w["origin"] == "n1"
                    && w["merged_by_a"] == true
                    && w["merged_by_b"] == false
                    && w["registers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|r| r["register"] == "config.sync-jobs" && r["value"] == "9")
            })
        });
        shows_write.then_some(diff)
    })
    .unwrap_or_else(|| {
        panic!(
            "no difference during the partition\n{}",
            cluster.logs_tail()
        )
    });
    assert_eq!(split["differs"], true);
    assert!(
        split["seen"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["origin"] == "n1"),
        "{split}"
    );
    let text = inspect_text(&cluster, 0, &["diff", "n1", "n4"]);
    assert!(text.contains("config.sync-jobs=9"), "{text}");
    assert!(text.contains("missing"), "{text}");
    // the partition holds: n1 sees the far side dead, and 2 s (20 gossip rounds)
    // later n4 still lacks the write
    cluster.wait_until(SETTLE, "n1 sees n3, n4, n5 dead", || {
        let members = inspect(&cluster, 0, &["members"]);
        ["n3", "n4", "n5"]
            .iter()
            .all(|n| member(&members, n)["live"] == false)
    });
    std::thread::sleep(Duration::from_secs(2));
    let still = inspect(&cluster, 0, &["diff", "n1", "n4"]);
    assert_eq!(still["differs"], true, "{still}");
    let far = inspect(&cluster, 3, &["sessions"]);
    assert_ne!(
        register(session(&far, "gv0 -> n4::gv1"), "desired")["stamp"],
        Value::Null
    );
    assert!(
        session(&far, "gv0 -> n4::gv1")["registers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["register"] != "config.sync-jobs"),
        "n4 must not have the write yet: {far}"
    );

    ns.heal();
    assert!(!ns.ruleset().contains("drop"));
    let healed = poll(Duration::from_secs(60), || {
        let diff = inspect(&cluster, 2, &["diff", "n1", "n4"]);
        (diff["differs"] == false).then_some(diff)
    })
    .unwrap_or_else(|| panic!("never converged after the heal\n{}", cluster.logs_tail()));
    assert_eq!(healed["writes"], Value::Array(vec![]));
    let far = inspect(&cluster, 3, &["sessions"]);
    assert_eq!(
        register(session(&far, "gv0 -> n4::gv1"), "config.sync-jobs")["value"],
        "9"
    );
    drop(cluster);
    drop(ns);
}

#[test]
fn offline_decodes_a_terminated_agents_data_dir() {
    let mut cluster = cluster(TEST_MONITOR);
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.ok(0, &["start", "gv0", SECONDARY]);
    cluster.ok(0, &["config", "gv0", SECONDARY, "sync-jobs", "6"]);
    let generation = member(&inspect(&cluster, 0, &["members"]), "n3")["generation"]
        .as_u64()
        .unwrap();
    let status = cluster.terminate(2).expect("n3 exit status");
    assert!(status.success(), "{status:?}");
    let dir = cluster.nodes[2].data_dir.clone();
    let dir_arg = dir.display().to_string();

    let out = cluster.json(0, &["inspect", "offline", "--data-dir", &dir_arg]);
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["node_id"], "n3");
    assert_eq!(out["generation"], generation);
    assert!(out["hlc_last"].as_str().unwrap().contains('@'), "{out}");
    let replica = out["replica"].as_array().unwrap();
    assert_eq!(replica.len(), 1, "{out}");
    assert_eq!(replica[0]["session"], "gv0 -> n4::gv1");
    assert_eq!(replica[0]["desired_state"], "Started");
    assert!(
        replica[0]["registers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["register"] == "config.sync-jobs" && r["value"] == "6"),
        "{out}"
    );
    let dirs = out["session_dirs"].as_array().unwrap();
    assert_eq!(dirs.len(), 1, "{out}");
    assert_eq!(dirs[0]["name"], "gv0_n4_gv1");
    assert_eq!(dirs[0]["monitor_status"], "Started");
    let pid = dirs[0]["monitor_pid"]
        .as_u64()
        .expect("monitor pid recorded");
    assert_eq!(
        dirs[0]["pid_running"], true,
        "the monitor outlives its agent (pid {pid})"
    );
    let text = cluster.ok(0, &["inspect", "offline", "--data-dir", &dir_arg]);
    for needle in [
        "node n3",
        &format!("generation {generation}"),
        "gv0 -> n4::gv1: exists, desired Started",
        "config.sync-jobs",
        "gv0_n4_gv1",
        &pid.to_string(),
    ] {
        assert!(text.contains(needle), "{needle:?} in:\n{text}");
    }

    // a corrupted copy: the failed check, the size, and what could still be read
    let copy = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(georep_store::DataDir::new(&dir).state_file()).unwrap();
    let keep = bytes.len() - 10;
    bytes.truncate(keep);
    std::fs::write(georep_store::DataDir::new(copy.path()).state_file(), &bytes).unwrap();
    let copy_arg = copy.path().display().to_string();
    let out = cluster.georep(
        0,
        &["--json", "inspect", "offline", "--data-dir", &copy_arg],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a corrupt file fails the command"
    );
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON even when corrupt");
    assert_eq!(json["ok"], false);
    assert_eq!(json["file_size"], keep as u64);
    assert!(
        json["error"].as_str().unwrap().contains("length field"),
        "{json}"
    );
    assert_eq!(
        json["node_id"], "n3",
        "the head survives truncation: {json}"
    );
    assert_eq!(json["generation"], generation);
    assert_eq!(json["envelope"]["magic_ok"], true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("corrupt state file"), "{stderr}");
    let out = cluster.georep(0, &["inspect", "offline", "--data-dir", &copy_arg]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("file is {keep} bytes")), "{text}");
    assert!(text.contains("node n3"), "{text}");
}

/// `inspect ARGS` on node 0 as JSON and as text, taken when the JSON before and after
/// the text agree on `fields` (gossip state keeps moving a little after every write:
/// custodians republish, frontiers advance).
fn stable_pair<T: PartialEq>(
    cluster: &Cluster,
    args: &[&str],
    fields: impl Fn(&Value) -> T,
) -> (Value, String) {
    for _ in 0..50 {
        let before = inspect(cluster, 0, args);
        let text = inspect_text(cluster, 0, args);
        let after = inspect(cluster, 0, args);
        if fields(&before) == fields(&after) {
            return (after, text);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("inspect {args:?} never held still for three calls");
}

/// Every value a human form prints must be in the JSON form, and vice versa for the
/// stable fields.
#[test]
fn json_outputs_parse_and_carry_what_the_human_form_shows() {
    let cluster = cluster(TEST_MONITOR);
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.ok(0, &["start", "gv0", SECONDARY]);
    cluster.ok(1, &["config", "gv0", SECONDARY, "sync-jobs", "5"]);
    cluster.wait_until(SETTLE, "convergence", || {
        all_merged(session(
            &inspect(&cluster, 0, &["sessions"]),
            "gv0 -> n4::gv1",
        ))
    });

    let (members, text) = stable_pair(&cluster, &["members"], |v| {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["status"].clone(), m["seen"].clone()))
            .collect::<Vec<_>>()
    });
    for row in members["members"].as_array().unwrap() {
        let node = row["node"].as_str().unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{node} ")) || l.starts_with(&format!("{node}* ")))
            .unwrap_or_else(|| panic!("{node} row in:\n{text}"));
        for field in ["status", "gossip_addr", "agent_version"] {
            let value = row[field].as_str().unwrap();
            assert!(line.contains(value), "{field}={value} in {line:?}");
        }
        assert!(line.contains(&row["generation"].to_string()), "{line}");
        for (origin, position) in row["seen"].as_object().unwrap() {
            let text = format!("{origin}:v{}", position["version"]);
            assert!(line.contains(&text), "{text} in {line:?}");
        }
        for field in ["heartbeat", "last_heard_ms", "key_count", "max_version"] {
            assert!(row[field].is_u64(), "{field} in {row}");
        }
    }

    let (sessions, text) = stable_pair(&cluster, &["sessions"], |v| {
        let s = session(v, "gv0 -> n4::gv1");
        (
            s["registers"].clone(),
            s["latest_write"]["stamp"].clone(),
            s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["state"].clone())
                .collect::<Vec<_>>(),
        )
    });
    let s = session(&sessions, "gv0 -> n4::gv1");
    for r in s["registers"].as_array().unwrap() {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{} ", r["register"].as_str().unwrap())))
            .unwrap_or_else(|| panic!("{r} in:\n{text}"));
        assert!(line.contains(r["stamp"].as_str().unwrap()), "{line}");
        assert!(line.contains(r["writer"].as_str().unwrap()), "{line}");
    }
    assert!(text.contains("desired              Started") || text.contains("Started"));
    assert!(
        text.contains(s["latest_write"]["stamp"].as_str().unwrap()),
        "{text}"
    );
    for c in s["nodes"].as_array().unwrap() {
        let node = c["node"].as_str().unwrap();
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{node} "))
                    && l.contains(c["state"].as_str().unwrap())),
            "{node} {} in:\n{text}",
            c["state"]
        );
    }

    // n1 merged n2's config write from the eager push (that is what `--wait` counted);
    // n2's own namespace, which carries the write as a key, follows by gossip.
    let has_session_key = |keys: &Value| {
        keys["keys"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|k| k["kind"] == "session"))
    };
    cluster.wait_until(SETTLE, "n2's session key reaching n1", || {
        has_session_key(&inspect(&cluster, 0, &["keys", "n2"]))
    });
    let keys = inspect(&cluster, 0, &["keys", "n2"]);
    assert_eq!(keys["node"], "n2");
    assert_eq!(keys["held_by"], "n1");
    let rows = keys["keys"].as_array().unwrap();
    let kinds: Vec<&str> = rows.iter().map(|k| k["kind"].as_str().unwrap()).collect();
    for kind in ["node", "seen", "session", "monitor"] {
        assert!(kinds.contains(&kind), "{kind} key of n2: {keys}");
    }
    for k in rows {
        assert!(k["decode_error"].is_null(), "every n2 value decodes: {k}");
        assert_eq!(
            k["size"].as_u64().unwrap() as usize,
            k["raw"].as_str().unwrap().len()
        );
    }
    let s_key = rows.iter().find(|k| k["kind"] == "session").unwrap();
    assert_eq!(s_key["decoded"]["session"], "gv0 -> n4::gv1");
    let node_key = rows.iter().find(|k| k["kind"] == "node").unwrap();
    let n2_brick = node_key["decoded"]["bricks"][0]["path"]
        .as_str()
        .unwrap_or_default();
    assert!(n2_brick.ends_with("/bricks/n2/gv0"), "{node_key}");
    let text = inspect_text(&cluster, 0, &["keys", "n2", "node"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("node "))
        .expect("node row");
    assert!(line.contains(&node_key["version"].to_string()), "{line}");
    assert!(line.contains("/bricks/n2/gv0"), "{line}");
    let raw = inspect_text(&cluster, 0, &["keys", "n2", "node", "--raw"]);
    assert!(raw.contains(node_key["raw"].as_str().unwrap()), "{raw}");
    let prefixed = inspect(&cluster, 0, &["keys", "n2", "s/"]);
    assert!(
        prefixed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["key"].as_str().unwrap().starts_with("s/")),
        "{prefixed}"
    );
    let unknown = cluster.georep(0, &["--json", "inspect", "keys", "n9"]);
    assert_eq!(unknown.status.code(), Some(1));
    let body: Value = serde_json::from_slice(&unknown.stdout).unwrap();
    assert!(body["message"].as_str().unwrap().contains("n9"), "{body}");

    // the config change above restarts the monitors, perhaps after convergence: the
    // message names the pid, so take the pair once it holds still
    let (answer, text) = stable_pair(
        &cluster,
        &["explain", "gv0", SECONDARY, "--node", "n2"],
        |v| (v["reason"].clone(), v["message"].clone()),
    );
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(text.starts_with(&format!(
        "gv0 -> n4::gv1 on n2: {}",
        answer["reason"].as_str().unwrap()
    )));
    assert!(text.contains(answer["message"].as_str().unwrap()), "{text}");
    for sentence in answer["sentences"].as_array().unwrap() {
        let sentence = sentence.as_str().unwrap();
        // times in sentences move between the two calls; compare up to the first digit run
        let stable: String = sentence
            .chars()
            .take_while(|c| !c.is_ascii_digit())
            .collect();
        assert!(text.contains(&stable), "{stable:?} in:\n{text}");
    }
    let missing = cluster.georep(0, &["--json", "inspect", "explain", "gv9", SECONDARY]);
    assert_eq!(missing.status.code(), Some(1));

    let (diff, text) = stable_pair(&cluster, &["diff", "n2", "n5"], |v| v["message"].clone());
    assert!(text.contains(diff["message"].as_str().unwrap()), "{text}");
    for field in ["a", "b", "local_node", "differs", "writes", "seen"] {
        assert!(!diff[field].is_null(), "{field} in {diff}");
    }

    // watch: bounded, plain blocks when stdout is not a terminal; JSON lines with --json
    let out = cluster.georep(
        0,
        &["inspect", "watch", "--interval", "100", "--count", "2"],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains('\x1b'),
        "no ANSI codes off a terminal: {text:?}"
    );
    assert!(
        text.contains("[refresh #1, every 100ms]") && text.contains("[refresh #2, every 100ms]"),
        "{text}"
    );
    assert!(
        text.contains("\n\ngeorep inspect watch on n1"),
        "blocks separated by a blank line:\n{text}"
    );
    assert!(text.contains("gv0 -> n4::gv1"), "{text}");
    let out = cluster.georep(
        0,
        &[
            "--json",
            "inspect",
            "watch",
            "--interval",
            "100",
            "--count",
            "3",
        ],
    );
    assert!(out.status.success());
    let frames: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(frames.len(), 3);
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(frame["frame"], i as u64 + 1);
        assert_eq!(frame["members"].as_array().unwrap().len(), 5);
        assert_eq!(frame["sessions"].as_array().unwrap().len(), 1);
    }
}
