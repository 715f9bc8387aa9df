//! Real-process tests of input handling and operator-facing behaviour that a new user
//! or a hostile tester runs into: the data-directory lock, names that look like
//! options, the monitor command template, a starved or hung local API, brick flags,
//! config echo and restarts, JSON shapes, help and log text, DNS names in certificates,
//! and one session per volume pair.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use georep_tests::{Cluster, NodeSpec, bin_dir, free_port, process_state};

const WAIT: Duration = Duration::from_secs(30);

/// A monitor whose command line shows a literal `{node}` (from `{{node}}`) and the
/// node id (from `{node}`).
const BRACED_MONITOR: &str = "/bin/sh -c 'trap \"exit 0\" TERM; while :; do sleep 0.2; done' georep-test-monitor {session_dir} {{node}} {node}";

fn two_nodes() -> Cluster {
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0:0"]),
            NodeSpec::new("n2", &["gv1:/bricks/n2/gv1"]),
        ],
        Some(BRACED_MONITOR),
    );
    cluster.wait_live(0, 2, WAIT);
    cluster.wait_live(1, 2, WAIT);
    cluster
}

/// Primaries n1 and n2 (gv0, one replica set each) and secondary n3 (gv1), all live.
fn three_nodes() -> Cluster {
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0:0"]),
            NodeSpec::new("n2", &["gv0:/bricks/n2/gv0:1"]),
            NodeSpec::new("n3", &["gv1:/bricks/n3/gv1"]),
        ],
        Some(BRACED_MONITOR),
    );
    for i in 0..3 {
        cluster.wait_live(i, 3, WAIT);
    }
    cluster
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| text(&raw).replace('\0', " "))
        .unwrap_or_default()
}

/// Replaces the value following `flag` in `args`.
fn set_flag(args: &mut [String], flag: &str, value: &str) {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} not in {args:?}"));
    args[i + 1] = value.to_owned();
}

/// Runs a command that must end by itself within `within`; returns (code, stderr).
fn run_bounded(mut command: Command, within: Duration) -> (Option<i32>, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("read stderr");
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn raw_post(socket: &std::path::Path, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: georepd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or_default())
}

/// Items 4, 6, 7, 13 (start-time part), 15, 18 (logs) and the one-session-per-pair
/// refusal, on one small cluster.
#[test]
fn a_running_cluster_refuses_what_it_must() {
    // n1 also declares a brick of another volume whose directory does not exist.
    let missing = tempfile::tempdir().unwrap();
    let absent = format!("gv9:{}", missing.path().join("absent").display());
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0:0", &absent]),
            NodeSpec::new("n2", &["gv1:/bricks/n2/gv1"]),
        ],
        Some(BRACED_MONITOR),
    );
    cluster.wait_live(0, 2, WAIT);
    cluster.wait_live(1, 2, WAIT);
    let georepd = cluster.georepd_bin();

    // A second agent on the same data directory (another socket, another port) is
    // refused at once, naming the holder.
    let mut args = cluster.agent_args(0);
    let other_socket = cluster.dir.path().join("second.sock");
    set_flag(
        &mut args,
        "--api-socket",
        &other_socket.display().to_string(),
    );
    set_flag(&mut args, "--listen", &format!("127.0.0.1:{}", free_port()));
    let mut second = Command::new(&georepd);
    second.args(&args);
    let (code, stderr) = run_bounded(second, WAIT);
    let holder = cluster.nodes[0].pid().unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("in use by another georepd (pid {holder}")),
        "{stderr}"
    );
    assert!(!other_socket.exists(), "the refused agent served nothing");

    // Names that would reach a monitor's argv looking like options: refused by the CLI
    // (usage, exit 2) and by the raw API (400), before anything is written.
    for (primary, secondary) in [
        ("gv0", "-oProxyCommand::gv1"),
        ("gv0", "n2::-e"),
        ("-rf", "n2::gv1"),
    ] {
        let out = cluster.georep(0, &["create", "--", primary, secondary]);
        assert_eq!(out.status.code(), Some(2), "{primary} {secondary}");
        assert!(
            text(&out.stderr).contains("not starting with '-'"),
            "{}",
            text(&out.stderr)
        );
        let body = serde_json::json!({
            "primary": primary, "secondary": secondary,
            "op": {"Create": {"options": {"push_pem": false, "forced": false}, "force": true}},
            "wait": false, "timeout_ms": 1000,
        });
        let (status, answer) = raw_post(&cluster.nodes[0].socket, "/v1/op", &body.to_string());
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or_default()
                .contains("not starting with '-'"),
            "{answer}"
        );
    }
    let sessions = cluster.json(1, &["status"]);
    assert_eq!(
        sessions["sessions"],
        serde_json::json!([]),
        "nothing created"
    );

    // The template: `{{node}}` is a literal `{node}`, `{node}` the node id.
    cluster.ok(0, &["create", "gv0", "n2::gv1"]);
    cluster.ok(0, &["start", "gv0", "n2::gv1"]);
    let monitors = cluster.test_monitors(0);
    assert_eq!(monitors.len(), 1);
    assert!(
        cmdline(monitors[0]).ends_with("{node} n1 "),
        "{}",
        cmdline(monitors[0])
    );

    // One session per volume pair, whichever host or user reaches the secondary.
    for other in ["n1::gv1", "geoaccount@n2::gv1"] {
        let out = cluster.georep(1, &["create", "gv0", other, "--force"]);
        assert_eq!(out.status.code(), Some(1), "{other}");
        let err = text(&out.stderr);
        assert!(
            err.contains("is already created: gv0 -> n2::gv1"),
            "{other}: {err}"
        );
    }

    // exists / running --json carry session and message, as every command's JSON does.
    for command in ["exists", "running"] {
        let answer = cluster.json(1, &[command, "gv0", "n2::gv1"]);
        assert_eq!(answer["session"], "gv0 -> n2::gv1", "{answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or_default()
                .contains("gv0 -> n2::gv1 (Started)"),
            "{answer}"
        );
        let answer = cluster.json(1, &[command, "nothing"]);
        assert_eq!(answer["session"], "nothing", "{answer}");
        assert!(answer["message"].as_str().unwrap().contains("no session"));
    }

    // Logs written to a file carry no colour codes; missing bricks are a warning.
    let log = std::fs::read_to_string(cluster.nodes[0].data_dir.join("georepd.log")).unwrap();
    assert!(!log.contains('\u{1b}'), "ANSI escape in a log file");
    assert!(
        log.contains("brick directory does not exist"),
        "{}",
        cluster.logs_tail()
    );
}

/// Item 14: config shows what it stored, a same-value write restarts nothing, and a
/// negative number is a range error, not a usage error.
#[test]
fn config_echoes_the_stored_value_and_same_values_restart_nothing() {
    let cluster = two_nodes();
    cluster.ok(0, &["create", "gv0", "n2::gv1"]);
    cluster.ok(0, &["start", "gv0", "n2::gv1"]);
    let before = cluster.test_monitors(0);
    assert_eq!(before.len(), 1);

    let out = cluster.ok(1, &["config", "gv0", "n2::gv1", "sync-jobs", " 5"]);
    assert!(out.contains("Setting config sync-jobs = 5 of"), "{out}");
    assert!(!out.contains("' 5'") && !out.contains("= \u{20}5"), "{out}");
    let answer = cluster.json(1, &["config", "gv0", "n2::gv1", "sync_jobs", "+5"]);
    assert_eq!(answer["value"], "5", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("sync-jobs = 5"),
        "{answer}"
    );
    // the first write restarted the monitor once; wait for it
    let mut restarted = Vec::new();
    cluster.wait_until(WAIT, "the restart for sync-jobs", || {
        restarted = cluster.test_monitors(0);
        restarted.len() == 1 && restarted != before
    });
    for _ in 0..3 {
        cluster.ok(0, &["config", "gv0", "n2::gv1", "sync-jobs", "5"]);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cluster.test_monitors(0),
        restarted,
        "setting the current value again restarts nothing"
    );

    let out = cluster.ok(1, &["config", "gv0", "n2::gv1", "checkpoint", "NOW"]);
    assert!(!out.contains("NOW"), "{out}");
    let answer = cluster.json(1, &["config", "gv0", "n2::gv1", "checkpoint"]);
    assert!(
        answer.to_string().chars().any(|c| c.is_ascii_digit()),
        "{answer}"
    );

    let out = cluster.georep(1, &["config", "gv0", "n2::gv1", "change-interval", "-1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("1..3600") || text(&out.stderr).contains("1 to 3600"));
}

/// Items 11 and 12: idle connections cannot lock the CLI out, and a hung agent is
/// exit 3 within seconds.
#[test]
fn the_local_api_survives_idle_floods_and_a_hung_agent_is_exit_3() {
    let cluster = two_nodes();
    let socket = &cluster.nodes[0].socket;
    let mut idle = Vec::new();
    for _ in 0..900 {
        let mut stream = UnixStream::connect(socket).expect("connect");
        stream.write_all(b"GET /v1/status HT").unwrap();
        idle.push(stream);
    }
    let started = Instant::now();
    cluster.ok(0, &["status"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "status answered despite 900 idle connections, in {:?}",
        started.elapsed()
    );
    drop(idle);

    let agent = nix::unistd::Pid::from_raw(cluster.nodes[0].pid().unwrap() as i32);
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    let out = cluster.georep(0, &["status"]);
    let took = started.elapsed();
    let nodes = cluster.georep(0, &["--json", "nodes"]);
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not answer"),
        "{}",
        text(&out.stderr)
    );
    assert!(took < Duration::from_secs(15), "gave up after {took:?}");
    assert_eq!(nodes.status.code(), Some(3));
    let json: serde_json::Value = serde_json::from_slice(&nodes.stdout).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(
        process_state(agent.as_raw() as u32).map(|s| s != 'T'),
        Some(true)
    );
}

/// Items 7, 13, 17, 18 and 19 at start-up and in the CLI: bad input names what was wrong,
/// once.
#[test]
fn bad_input_is_named_once() {
    let bins = bin_dir();
    let dir = tempfile::tempdir().unwrap();
    let base = |extra: &[&str]| {
        let mut command = Command::new(bins.join("georepd"));
        command.args([
            "--node-id",
            "n1",
            "--data-dir",
            &dir.path().join("d").display().to_string(),
            "--api-socket",
            &dir.path().join("s.sock").display().to_string(),
        ]);
        command.args(extra);
        command
    };
    let (code, err) = run_bounded(base(&["--monitor-command", "mon {nope}"]), WAIT);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("unknown placeholder {nope}") && err.contains("{session_dir}"),
        "{err}"
    );
    for (brick, says) in [
        (
            "gv0:/x:abc",
            r#"--brick "gv0:/x:abc": replica set "abc" is not a number"#,
        ),
        (
            "gv0:/x:-1",
            r#"--brick "gv0:/x:-1": replica set "-1" is not a number"#,
        ),
        (
            "gv0:/a,b",
            r#"--brick "gv0:/a,b": path may not contain ','"#,
        ),
    ] {
        let (code, err) = run_bounded(base(&["--brick", brick]), WAIT);
        assert_eq!(code, Some(1), "{brick}");
        assert!(err.contains(says), "{brick}: {err}");
    }
    let missing = dir.path().join("nope.crt");
    let (code, err) = run_bounded(base(&["--tls-ca", &missing.display().to_string()]), WAIT);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause is said once: {err}"
    );
    assert!(!err.contains('\u{1b}'), "no colour off a terminal: {err}");

    let help = Command::new(bins.join("georepd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(text(&help.stdout).contains("georepd.toml"));
    // --timeout's help says what it means for each command.
    let help_of = |args: &[&str]| {
        text(
            &Command::new(bins.join("georep"))
                .args(args)
                .arg("--help")
                .output()
                .unwrap()
                .stdout,
        )
    };
    let status = help_of(&["status"]);
    assert!(status.contains("a read waits at most 5 s"), "{status}");
    assert!(!status.contains("confirm"), "{status}");
    assert!(help_of(&["start"]).contains("confirm the change"));
    assert!(!help_of(&["tls", "cert", "create"]).contains("--timeout"));

    let georep = bins.join("georep");
    let ca = dir.path().join("ca");
    let ok = Command::new(&georep)
        .args(["tls", "ca", "create", "--out"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(ok.status.success());
    let out = Command::new(&georep)
        .args(["tls", "cert", "create", "--ca"])
        .arg(&ca)
        .args(["--node", "n1", "--dns", "bad dns!", "--out"])
        .arg(dir.path().join("certs"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is not a valid DNS name"));
    assert!(!dir.path().join("certs/n1.crt").exists());
}

fn monitor_sessions(cluster: &Cluster, node: usize) -> Vec<String> {
    let mut out: Vec<String> = cluster
        .session_monitors(node)
        .into_iter()
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            env.split(|b| *b == 0)
                .find_map(|var| var.strip_prefix(b"GEOREP_SESSION="))
                .map(text)
        })
        .collect();
    out.sort();
    out
}

/// Item 3 across a partition: each side creates and starts a session between the same
/// two volumes through its own secondary host. After the heal every node agrees that
/// the first-created one stays; the other is reported and runs no monitor anywhere.
#[test]
fn concurrent_creates_of_one_volume_pair_resolve_to_one_session_after_heal() {
    let ns = georep_tests::loopback_ns::LoopbackNs::create();
    let cluster = Cluster::start_with(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0:0"]),
            NodeSpec::new("n2", &["gv0:/bricks/n2/gv0:1"]),
            NodeSpec::new("n3", &["gv1:/bricks/n3/gv1"]),
            NodeSpec::new("n4", &["gv1:/bricks/n4/gv1"]),
        ],
        Some(georep_tests::TEST_MONITOR),
        Some(ns.launcher()),
    );
    for i in 0..4 {
        cluster.wait_live(i, 4, WAIT);
    }
    let port = |i: usize| cluster.nodes[i].addr.port();
    ns.partition(&[port(0), port(2)], &[port(1), port(3)]);
    cluster.wait_live(0, 2, WAIT);
    cluster.wait_live(1, 2, WAIT);
    cluster.ok(0, &["create", "gv0", "n3::gv1"]);
    cluster.ok(0, &["start", "gv0", "n3::gv1"]);
    cluster.ok(1, &["create", "gv0", "n4::gv1"]);
    cluster.ok(1, &["start", "gv0", "n4::gv1"]);
    assert_eq!(monitor_sessions(&cluster, 0), ["gv0_n3_gv1"]);
    assert_eq!(monitor_sessions(&cluster, 1), ["gv0_n4_gv1"]);

    ns.heal();
    for i in 0..4 {
        cluster.wait_live(i, 4, WAIT);
    }
    for i in 0..4 {
        cluster.wait_until(WAIT, "every node to report the conflict", || {
            let status = cluster.json(i, &["status"]);
            let sessions = status["sessions"].as_array().cloned().unwrap_or_default();
            sessions.len() == 2
                && sessions
                    .iter()
                    .any(|s| s["secondary_host"] == "n4" && s["superseded_by"] == "gv0 -> n3::gv1")
                && sessions
                    .iter()
                    .any(|s| s["secondary_host"] == "n3" && s.get("superseded_by").is_none())
        });
    }
    for i in 0..2 {
        cluster.wait_until(WAIT, "only the first session's monitor to run", || {
            monitor_sessions(&cluster, i) == ["gv0_n3_gv1"]
        });
    }
    let human = cluster.ok(2, &["status"]);
    assert!(human.contains("CONFLICT: gv0 -> n3::gv1"), "{human}");
    let out = cluster.georep(3, &["start", "gv0", "n4::gv1", "--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot run"),
        "{}",
        text(&out.stderr)
    );
    cluster.ok(3, &["delete", "gv0", "n4::gv1", "--force"]);
    assert_eq!(monitor_sessions(&cluster, 1), ["gv0_n3_gv1"]);
}

#[test]
fn a_dead_node_is_forgotten_everywhere_and_may_return_as_new() {
    let mut cluster = three_nodes();
    cluster.ok(0, &["create", "gv0", "n3::gv1"]);
    cluster.ok(0, &["start", "gv0", "n3::gv1"]);

    // Refused: a live node, this node, an unknown node, an option-like name.
    for (node, says) in [
        ("n2", "n2 is live"),
        ("n1", "n1 is this node"),
        ("nope", "no node nope is known"),
    ] {
        let out = cluster.georep(0, &["node", "forget", node]);
        assert_eq!(out.status.code(), Some(1), "{node}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(says),
            "{node}: {}",
            text(&out.stderr)
        );
    }
    let out = cluster.georep(0, &["node", "forget", "--", "-x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    cluster.kill9(1);
    cluster.wait_live(0, 2, WAIT);
    cluster.wait_live(2, 2, WAIT);
    let config = cluster.ok(2, &["config", "gv0", "n3::gv1", "sync-jobs", "2"]);
    assert!(
        config.contains("dead nodes (will catch up when they return): n2"),
        "{config}"
    );

    let forget = cluster.ok(0, &["node", "forget", "n2"]);
    assert!(
        forget.contains("Forgetting node n2 has been successful")
            && forget.contains("confirmed by: n1, n3 (2/2 live nodes)"),
        "{forget}"
    );
    let names = |cluster: &Cluster, i: usize| -> Vec<String> {
        cluster.json(i, &["nodes"])["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|n| n["node"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Confirmed means merged: both live nodes have dropped it already.
    for i in [0, 2] {
        assert_eq!(names(&cluster, i), ["n1", "n3"], "node {i}");
        let status = cluster.json(i, &["status", "gv0", "n3::gv1"]);
        let rows: Vec<&str> = status["sessions"][0]["workers"]
            .as_array()
            .map(|w| w.iter().filter_map(|r| r["node"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(rows, ["n1"], "node {i}: {status}");
    }
    let config = cluster.ok(2, &["config", "gv0", "n3::gv1", "sync-jobs", "3"]);
    assert!(!config.contains("dead nodes"), "{config}");
    let again = cluster.georep(0, &["node", "forget", "n2"]);
    assert!(
        text(&again.stderr).contains("n2 is already forgotten"),
        "{}",
        text(&again.stderr)
    );

    // Back (a new generation): a member again everywhere, with its brick row.
    cluster.restart(1);
    for i in 0..3 {
        cluster.wait_live(i, 3, WAIT);
    }
    assert_eq!(names(&cluster, 2), ["n1", "n2", "n3"]);
}

/// Item 5: a second agent with an existing node id (its certificate, another data
/// directory and port) is refused at start and the real node stays in view; a node
/// restarted right after a crash (its old incarnation still looks live) is not.
#[test]
fn a_second_agent_with_a_live_node_id_is_refused() {
    let mut cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0"]),
            NodeSpec::new("n2", &["gv1:/bricks/n2/gv1"]),
        ],
        Some(BRACED_MONITOR),
    );
    cluster.wait_live(0, 2, WAIT);
    cluster.wait_live(1, 2, WAIT);
    let real = cluster.json(1, &["nodes"])["nodes"][0]["address"].clone();

    let mut args = cluster.agent_args(0);
    let impostor_dir = cluster.dir.path().join("impostor");
    let port = free_port();
    set_flag(&mut args, "--data-dir", &impostor_dir.display().to_string());
    set_flag(
        &mut args,
        "--api-socket",
        &impostor_dir.join("api.sock").display().to_string(),
    );
    set_flag(&mut args, "--listen", &format!("127.0.0.1:{port}"));
    // The same --tls-cert: n1's certificate.
    let mut impostor = Command::new(cluster.georepd_bin());
    impostor.args(&args);
    let (code, stderr) = run_bounded(impostor, WAIT);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "node n1 is already running at {}",
            real.as_str().unwrap_or_default()
        )),
        "{stderr}"
    );
    // The real n1 is still seen live at its own address.
    let seen = cluster.json(1, &["nodes"]);
    assert_eq!(seen["nodes"][0]["address"], real, "{seen}");
    assert_eq!(seen["nodes"][0]["live"], true, "{seen}");

    // If it happens anyway (the impostor's only seed was stopped while it probed), the
    // real n1 takes its place back by itself, in the same process, once the impostor
    // is gone.
    let real_listen = {
        let args = cluster.agent_args(0);
        let i = args.iter().position(|a| a == "--listen").unwrap();
        args[i + 1].clone()
    };
    let mut sneaky: Vec<String> = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--seed" {
            let seed = rest.next().unwrap();
            if *seed != real_listen {
                sneaky.extend(["--seed".to_string(), seed.clone()]);
            }
        } else {
            sneaky.push(arg.clone());
        }
    }
    let n2 = nix::unistd::Pid::from_raw(cluster.nodes[1].pid().unwrap() as i32);
    let n1_pid = cluster.nodes[0].pid().unwrap();
    nix::sys::signal::kill(n2, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let impostor_log = cluster.dir.path().join("impostor.log");
    let mut impostor = Command::new(cluster.georepd_bin())
        .args(&sneaky)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&impostor_log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(&impostor_log)
        .unwrap_or_default()
        .contains("georepd running")
    {
        assert!(started.elapsed() < WAIT, "the impostor did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(n2, nix::sys::signal::Signal::SIGCONT).unwrap();
    let impostor_addr = format!("127.0.0.1:{port}");
    let n1_as_seen = |cluster: &Cluster| cluster.json(1, &["nodes"])["nodes"][0].clone();
    cluster.wait_until(WAIT, "n2 to see the impostor in n1's place", || {
        n1_as_seen(&cluster)["address"] == impostor_addr.as_str()
    });
    let _ = impostor.kill();
    let _ = impostor.wait();
    cluster.wait_until(
        Duration::from_secs(60),
        "n1 live again at its own address",
        || {
            let n1 = n1_as_seen(&cluster);
            n1["address"] == real && n1["live"] == true
        },
    );
    assert_eq!(cluster.nodes[0].pid(), Some(n1_pid), "recovered in place");
    assert!(
        cluster
            .logs_tail()
            .contains("restarting the mesh under a generation above")
    );

    // A restart right after a crash: the old incarnation looks live but does not beat.
    cluster.kill9(0);
    cluster.restart(0);
    cluster.wait_live(0, 2, WAIT);
    cluster.wait_live(1, 2, WAIT);
}

/// One command of [`status_agrees_with_every_confirmed_command`]: the node that runs
/// it, its words (the session is appended to one-word commands), the desired state
/// it leaves (`None`: deleted) and the row statuses that agree with it.
type Step = (
    usize,
    &'static [&'static str],
    Option<&'static str>,
    &'static [&'static str],
);

/// Item 8: after every confirmed command, `status --json` agrees with what the command
/// printed: on the node that ran it at once, on every other node within a few gossip
/// rounds, and never with an empty converged set or another desired state.
#[test]
fn status_agrees_with_every_confirmed_command() {
    let cluster = three_nodes();
    let session = ["gv0", "n3::gv1"];
    let steps: [Step; 7] = [
        (0, &["create"], Some("Created"), &["Created"]),
        (
            1,
            &["start"],
            Some("Started"),
            &["Initializing...", "Active", "Passive"],
        ),
        (
            2,
            &["config", "gv0", "n3::gv1", "sync-jobs", "4"],
            Some("Started"),
            &["Initializing...", "Active", "Passive"],
        ),
        (0, &["pause"], Some("Paused"), &["Paused"]),
        (
            1,
            &["resume"],
            Some("Started"),
            &["Initializing...", "Active", "Passive"],
        ),
        (2, &["stop"], Some("Stopped"), &["Stopped"]),
        (0, &["delete"], None, &[]),
    ];
    for (issuer, command, desired, rows) in steps {
        let mut args: Vec<&str> = command.to_vec();
        if command.len() == 1 {
            args.extend(session);
        }
        let answer = cluster.json(issuer, &args);
        assert_eq!(answer["converged"], true, "{args:?}: {answer}");
        let mut confirmed: Vec<String> = answer["confirmed_nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect();
        confirmed.sort();
        assert_eq!(confirmed, ["n1", "n2", "n3"], "{args:?}: {answer}");
        // What `status --json` on node i shows for the session, if it agrees.
        let agrees = |i: usize| -> Result<(), String> {
            let status = cluster.json(i, &["status"]);
            let sessions = status["sessions"].as_array().cloned().unwrap_or_default();
            let Some(desired) = desired else {
                return if sessions.is_empty() {
                    Ok(())
                } else {
                    Err(format!("still lists the deleted session: {status}"))
                };
            };
            let Some(s) = sessions.first() else {
                return Err(format!("no session: {status}"));
            };
            // Never: another desired state than the confirmed one, or 0/0.
            assert_eq!(s["desired_state"], desired, "node {i} after {args:?}: {s}");
            assert!(
                s["converged_nodes"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty()),
                "node {i} after {args:?} shows 0/0: {s}"
            );
            let mut converged: Vec<&str> = s["converged_nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|n| n.as_str())
                .collect();
            converged.sort();
            if converged != ["n1", "n2", "n3"] {
                return Err(format!("converged {converged:?}: {s}"));
            }
            for row in s["workers"].as_array().cloned().unwrap_or_default() {
                let word = row["status"].as_str().unwrap_or_default();
                if !rows.contains(&word) {
                    return Err(format!("row {word}: {s}"));
                }
            }
            Ok(())
        };
        if let Err(what) = agrees(issuer) {
            panic!("node {issuer} contradicts its own confirmed {args:?}: {what}");
        }
        // `inspect sessions` counts the same way (a deleted session stays there as a
        // tombstone).
        let inspect = cluster.json(issuer, &["inspect", "sessions", "gv0", "n3::gv1"]);
        let session = &inspect["sessions"][0];
        assert_eq!(
            session["lagging_nodes"],
            serde_json::json!([]),
            "inspect on {issuer} after {args:?}: {session}"
        );
        let mut merged: Vec<&str> = session["converged_nodes"]
            .as_array()
            .map(|c| c.iter().filter_map(|n| n.as_str()).collect())
            .unwrap_or_default();
        merged.sort();
        assert_eq!(
            merged,
            ["n1", "n2", "n3"],
            "inspect on {issuer} after {args:?}"
        );
        for i in 0..3 {
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                match agrees(i) {
                    Ok(()) => break,
                    Err(what) if Instant::now() > deadline => {
                        panic!("node {i} after {args:?}, 3 s on: {what}")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

/// Item 13: a brick directory that does not exist is a warning at start (see
/// [`a_running_cluster_refuses_what_it_must`]) and then a brick status every node
/// sees, which clears when the directory appears (a mount that came up later).
#[test]
fn a_missing_brick_directory_is_shown_until_it_appears() {
    let bricks = tempfile::tempdir().unwrap();
    let brick = bricks.path().join("gv0-b1");
    let spec = format!("gv0:{}", brick.display());
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &[spec.as_str()]),
            NodeSpec::new("n2", &["gv1:/bricks/n2/gv1"]),
        ],
        Some(BRACED_MONITOR),
    );
    cluster.wait_live(1, 2, WAIT);
    let missing_on_n1 = |cluster: &Cluster| -> Vec<String> {
        cluster.json(1, &["nodes"])["nodes"][0]["missing_bricks"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let path = brick.display().to_string();
    cluster.wait_until(WAIT, "n2 to see n1's brick missing", || {
        missing_on_n1(&cluster) == [path.clone()]
    });
    let table = cluster.ok(1, &["nodes"]);
    assert!(table.contains(&format!("{path}:0 (offline)")), "{table}");
    std::fs::create_dir(&brick).unwrap();
    cluster.wait_until(WAIT, "n2 to see n1's brick present", || {
        missing_on_n1(&cluster).is_empty()
    });
    let table = cluster.ok(1, &["nodes"]);
    assert!(!table.contains(&format!("{path}:0 (offline)")), "{table}");
}
