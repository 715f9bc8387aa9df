//! Real-process tests of monitor identity: monitors that exec, monitors of paused
//! sessions whose agents die, pids reused by strangers, session directories, and the
//! monitor's log, which the monitor keeps open across agents.
//!
//! A monitor is found by its environment (`GEOREP_SESSION_DIR`) and by leading its own
//! session, not by its command line, because these monitors change their command line.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use georep_tests::{Cluster, NodeSpec, TEST_MONITOR, frozen, process_state};

const WAIT: Duration = Duration::from_secs(30);

fn two_nodes(monitor: &str) -> Cluster {
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0:0"]),
            NodeSpec::new("n2", &["gv1:/bricks/n2/gv1", "x:/bricks/n2/x"]),
        ],
        Some(monitor),
    );
    cluster.wait_live(0, 2, WAIT);
    cluster.wait_live(1, 2, WAIT);
    cluster
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

fn write_script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn one_monitor(cluster: &Cluster, node: usize) -> u32 {
    let mut pid = 0;
    cluster.wait_until(WAIT, "exactly one monitor", || {
        let monitors = cluster.session_monitors(node);
        pid = monitors.first().copied().unwrap_or(0);
        monitors.len() == 1
    });
    pid
}

fn status_pid(cluster: &Cluster, node: usize, secondary: &str) -> Option<u64> {
    let status = cluster.json(node, &["status", "gv0", secondary]);
    status["sessions"][0]["workers"]
        .as_array()
        .and_then(|rows| rows.iter().find(|w| w["node"] == "n1"))
        .and_then(|w| w["monitor_pid"].as_u64())
}

/// Starts a session whose monitor execs into a command line containing `final_words`,
/// then checks that kill -9 and SIGTERM restarts of the agent adopt that same process
/// (no second monitor), and that a stop issued elsewhere after the restarts reaches it.
fn exec_monitor_is_adopted_across_restarts(monitor: &str, is_final: impl Fn(&str) -> bool) {
    let mut cluster = two_nodes(monitor);
    cluster.ok(1, &["create", "gv0", "n2::gv1"]);
    cluster.ok(1, &["start", "gv0", "n2::gv1"]);
    let pid = one_monitor(&cluster, 0);
    cluster.wait_until(WAIT, "the monitor's exec chain to finish", || {
        is_final(&cmdline(pid))
    });
    for how in ["kill -9", "SIGTERM"] {
        if how == "kill -9" {
            cluster.kill9(0);
        } else {
            let status = cluster.terminate(0).expect("agent exit status");
            assert!(status.success(), "SIGTERM exits 0: {status:?}");
        }
        assert_eq!(cluster.session_monitors(0), vec![pid], "survives its agent");
        cluster.restart(0);
        cluster.wait_live(0, 2, WAIT);
        cluster.wait_until(WAIT, "the restarted agent to report its monitor", || {
            status_pid(&cluster, 0, "n2::gv1") == Some(u64::from(pid))
        });
        // several reconcile rounds in which a second monitor would have been started
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            cluster.session_monitors(0),
            vec![pid],
            "after {how}: the same monitor ({}), no second one\n{}",
            cmdline(pid),
            cluster.logs_tail()
        );
    }
    let log = std::fs::read_to_string(cluster.nodes[0].data_dir.join("georepd.log")).unwrap();
    assert!(!log.contains("stale pid file"), "{log}");
    cluster.ok(1, &["stop", "gv0", "n2::gv1"]);
    cluster.wait_until(WAIT, "the adopted monitor to stop", || {
        cluster.session_monitors(0).is_empty() && process_state(pid).is_none()
    });
}

#[test]
fn a_shell_that_execs_is_adopted_and_stopped() {
    exec_monitor_is_adopted_across_restarts(
        "/bin/sh -c 'sleep 0.3; exec sleep 1000' georep-test-monitor {session_dir}",
        |cmdline| cmdline.starts_with("sleep 1000"),
    );
}

#[test]
fn an_env_python_script_is_adopted_and_stopped() {
    let scripts = tempfile::tempdir().unwrap();
    let script = write_script(
        scripts.path(),
        "mon.py",
        "#!/usr/bin/env python3\nimport signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\nwhile True:\n    time.sleep(0.2)\n",
    );
    exec_monitor_is_adopted_across_restarts(&format!("{script} {{session}} {{node}}"), |c| {
        !c.starts_with("/usr/bin/env") && c.contains("mon.py")
    });
}

#[test]
fn a_two_step_wrapper_that_execs_late_is_adopted_and_stopped() {
    let scripts = tempfile::tempdir().unwrap();
    let second = write_script(
        scripts.path(),
        "wrap2.sh",
        "#!/bin/sh\nsleep 0.5\nexec sleep 1001\n",
    );
    // longer than the agent's first look at the new process (right after spawn)
    let first = write_script(
        scripts.path(),
        "wrap1.sh",
        &format!("#!/bin/sh\nsleep 1.5\nexec {second} \"$@\"\n"),
    );
    exec_monitor_is_adopted_across_restarts(&format!("{first} {{session_dir}}"), |c| {
        c.starts_with("sleep 1001")
    });
}

/// A pid file naming a live process that is not the monitor (the pid was reused after
/// the monitor died while its agent was down): never adopted, never signalled.
#[test]
fn a_reused_pid_is_never_signalled() {
    let mut cluster = two_nodes(TEST_MONITOR);
    cluster.ok(1, &["create", "gv0", "n2::gv1"]);
    cluster.ok(1, &["start", "gv0", "n2::gv1"]);
    let monitor = one_monitor(&cluster, 0);
    assert!(cluster.terminate(0).is_some_and(|s| s.success()));
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(monitor as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    cluster.wait_until(WAIT, "the monitor to die", || {
        process_state(monitor).is_none()
    });
    // The stranger leads its own session too, like a monitor would.
    let mut stranger: Child = Command::new("setsid")
        .args(["sleep", "1000"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stranger_pid = stranger.id();
    let pid_file = cluster.nodes[0]
        .data_dir
        .join("geo-replication/gv0_n2_gv1/monitor.pid");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&pid_file).unwrap()).unwrap();
    record["pid"] = stranger_pid.into();
    std::fs::write(&pid_file, serde_json::to_vec(&record).unwrap()).unwrap();

    cluster.restart(0);
    cluster.wait_live(0, 2, WAIT);
    let fresh = one_monitor(&cluster, 0);
    assert_ne!(fresh, stranger_pid);
    // n2 must know n1's new incarnation, or it counts n1 as dead and does not wait for
    // its monitor.
    cluster.wait_membership_agrees(WAIT);
    cluster.ok(1, &["pause", "gv0", "n2::gv1"]);
    assert!(frozen(fresh), "{:?}", process_state(fresh));
    cluster.ok(1, &["stop", "gv0", "n2::gv1", "--force"]);
    cluster.wait_until(WAIT, "the new monitor to stop", || {
        process_state(fresh).is_none()
    });
    let state = process_state(stranger_pid);
    let _ = stranger.kill();
    let _ = stranger.wait();
    assert!(
        matches!(state, Some('S' | 'R')),
        "the stranger was left alone: {state:?}"
    );
    let log = std::fs::read_to_string(cluster.nodes[0].data_dir.join("georepd.log")).unwrap();
    assert!(
        log.contains(&format!("pid {stranger_pid} is now another process")),
        "{}",
        cluster.logs_tail()
    );
}

/// Monitors run in a session of their own: the death of every agent while a session is
/// paused leaves the frozen monitors in place (no SIGHUP + SIGCONT from an orphaned
/// process group), and `resume` after the restart continues those same processes.
#[test]
fn paused_monitors_survive_the_death_of_every_agent() {
    let mut cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0:0"]),
            NodeSpec::new("n2", &["gv0:/bricks/n2/gv0:1"]),
            NodeSpec::new("n3", &["gv1:/bricks/n3/gv1"]),
        ],
        Some(TEST_MONITOR),
    );
    for i in 0..3 {
        cluster.wait_live(i, 3, WAIT);
    }
    cluster.ok(2, &["create", "gv0", "n3::gv1"]);
    cluster.ok(2, &["start", "gv0", "n3::gv1"]);
    let monitors = [one_monitor(&cluster, 0), one_monitor(&cluster, 1)];
    cluster.ok(0, &["pause", "gv0", "n3::gv1"]);
    for pid in monitors {
        assert!(frozen(pid), "pid {pid} paused: {:?}", process_state(pid));
    }
    for i in 0..3 {
        cluster.kill9(i);
    }
    std::thread::sleep(Duration::from_millis(500));
    for (i, pid) in monitors.into_iter().enumerate() {
        assert!(
            frozen(pid),
            "the paused monitor of n{} outlived its agent, still frozen: {:?}",
            i + 1,
            process_state(pid)
        );
        assert_eq!(cluster.session_monitors(i), vec![pid]);
    }
    for i in 0..3 {
        cluster.restart(i);
    }
    for i in 0..3 {
        cluster.wait_live(i, 3, WAIT);
    }
    cluster.wait_membership_agrees(WAIT);
    cluster.ok(1, &["resume", "gv0", "n3::gv1"]);
    for (i, pid) in monitors.into_iter().enumerate() {
        // Running again: not stopped ('T'), not gone; sleeping, running, or in a
        // disk wait ('D': stop 27's CI caught one writing its status file).
        assert!(
            matches!(process_state(pid), Some('S' | 'R' | 'D')),
            "resumed: {:?}",
            process_state(pid)
        );
        assert_eq!(cluster.session_monitors(i), vec![pid], "the same monitor");
    }
    cluster.ok(2, &["stop", "gv0", "n3::gv1"]);
    for pid in monitors {
        cluster.wait_until(WAIT, "stopped", || process_state(pid).is_none());
    }
}

/// Two sessions whose names would both have made gluster's `gv0_n4_gv1_x` live in two
/// directories: each has its own monitor and pid file, deleting one leaves the other
/// running and adoptable.
#[test]
fn sessions_never_share_a_directory() {
    let mut cluster = two_nodes(TEST_MONITOR);
    let a = "n4_gv1::x";
    let b = "n4::gv1_x";
    cluster.ok(0, &["create", "gv0", a, "--force"]);
    cluster.ok(0, &["create", "gv0", b, "--force"]);
    cluster.ok(0, &["start", "gv0", a]);
    cluster.ok(0, &["start", "gv0", b]);
    let root = cluster.nodes[0].data().sessions_root();
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["gv0_n4%5Fgv1_x", "gv0_n4_gv1%5Fx"]);
    let monitors = cluster.session_monitors(0);
    assert_eq!(monitors.len(), 2, "one monitor per session");
    let pid_of = |dir: &str| -> u32 {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join(dir).join("monitor.pid")).unwrap())
                .unwrap();
        record["pid"].as_u64().unwrap() as u32
    };
    let kept = pid_of("gv0_n4_gv1%5Fx");
    cluster.ok(1, &["delete", "gv0", a, "--force"]);
    cluster.wait_until(WAIT, "the deleted session's monitor to stop", || {
        cluster.session_monitors(0) == vec![kept]
    });
    assert!(root.join("gv0_n4_gv1%5Fx/monitor.pid").exists());
    cluster.kill9(0);
    cluster.restart(0);
    cluster.wait_live(0, 2, WAIT);
    cluster.wait_until(WAIT, "the survivor adopted", || {
        status_pid(&cluster, 0, b) == Some(u64::from(kept))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cluster.session_monitors(0), vec![kept]);
}

/// The view that makes an agent start a monitor is on disk before the monitor starts.
/// An agent killed the moment its monitor appears comes back alone (its peer is down
/// too, so after the warm-up it acts on what it persisted) and keeps that monitor; it
/// must not stop it for the older view from before `start`. CI once caught a restarted
/// agent doing that to an adopted monitor.
#[test]
fn a_monitor_is_started_only_from_a_persisted_view() {
    let mut cluster = two_nodes(TEST_MONITOR);
    cluster.ok(1, &["create", "gv0", "n2::gv1"]);
    let pid_file = cluster.nodes[0]
        .data_dir
        .join("geo-replication/gv0_n2_gv1/monitor.pid");
    cluster.ok(1, &["start", "gv0", "n2::gv1", "--no-wait"]);
    // As close to the spawn as polling gets: the pid file is written right after it.
    let deadline = std::time::Instant::now() + WAIT;
    while !pid_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no monitor started\n{}",
            cluster.logs_tail()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    cluster.kill9(0);
    let pid = one_monitor(&cluster, 0);
    cluster.kill9(1);
    cluster.restart(0);
    cluster.wait_until(WAIT, "the lone agent to report its adopted monitor", || {
        status_pid(&cluster, 0, "n2::gv1") == Some(u64::from(pid))
    });
    // Past the warm-up (2 s) after which a lone agent acts on its persisted view, and
    // several reconcile rounds after it.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        cluster.session_monitors(0),
        vec![pid],
        "the monitor started before the kill still runs, alone\n{}",
        cluster.logs_tail()
    );
    cluster.restart(1);
    cluster.wait_live(1, 2, WAIT);
    cluster.ok(1, &["stop", "gv0", "n2::gv1"]);
    cluster.wait_until(WAIT, "the adopted monitor to stop", || {
        process_state(pid).is_none()
    });
}

/// A chatty monitor's log stays bounded: past `--monitor-log-max-bytes` the agent
/// copies it to `monitor.log.1` and empties it, while the monitor (which keeps its
/// descriptor, and is not restarted for it) goes on writing at the new end.
#[test]
fn a_chatty_monitors_log_is_rotated_under_it() {
    const MAX: u64 = 64 * 1024;
    let chatty = "/bin/sh -c 'trap \"exit 0\" TERM; while :; do yes georep-test-log-line | head -n 400; sleep 0.02; done' georep-test-monitor {session_dir} {node}";
    let max = MAX.to_string();
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0:0"])
                .with_args(&["--monitor-log-max-bytes", &max]),
            NodeSpec::new("n2", &["gv1:/bricks/n2/gv1"]),
        ],
        Some(chatty),
    );
    cluster.wait_live(0, 2, WAIT);
    cluster.wait_live(1, 2, WAIT);
    cluster.ok(1, &["create", "gv0", "n2::gv1"]);
    cluster.ok(1, &["start", "gv0", "n2::gv1"]);
    let pid = one_monitor(&cluster, 0);
    let dir = cluster.nodes[0].data_dir.join("geo-replication/gv0_n2_gv1");
    let (log, first) = (dir.join("monitor.log"), dir.join("monitor.log.1"));
    cluster.wait_until(WAIT, "monitor.log to be rotated", || first.exists());
    let size = |path: &Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    assert!(
        size(&first) > MAX,
        "the copy holds what was there: {}",
        size(&first)
    );
    // The monitor writes on into the emptied file, from its start: no hole of zeros.
    cluster.wait_until(WAIT, "new lines in monitor.log", || size(&log) > 0);
    let text = std::fs::read(&log).unwrap();
    assert!(!text.contains(&0), "no hole where the old bytes were");
    // Copy-and-truncate cannot know where the monitor is in a line: its next write
    // (a pipe's buffer, not a whole line) lands at the start, so the first line may be
    // a line's tail and the last a line's head; every line between is whole.
    let lines = String::from_utf8_lossy(&text);
    let all: Vec<&str> = lines.lines().collect();
    let whole = "georep-test-log-line";
    assert!(!all.is_empty(), "the monitor's new lines are there");
    for (i, line) in all.iter().enumerate() {
        let fits = if i == 0 {
            whole.ends_with(line)
        } else if i + 1 == all.len() {
            whole.starts_with(line)
        } else {
            *line == whole
        };
        assert!(
            fits,
            "line {i} of monitor.log is not the monitor's: {line:?}\n{}",
            &lines[..lines.len().min(200)]
        );
    }
    // Kept bounded while the monitor keeps writing (checked every 5 s). The agent
    // logs a rotation once it is done: `monitor.log.2` appears at its start, before
    // the copy and the truncation.
    let agent_log = cluster.nodes[0].data_dir.join("georepd.log");
    let rotations = || {
        std::fs::read_to_string(&agent_log)
            .unwrap_or_default()
            .matches("rotated the monitor log")
            .count()
    };
    cluster.wait_until(WAIT, "a second rotation", || rotations() >= 2);
    assert!(
        size(&log) < 8 * MAX,
        "monitor.log stays bounded: {}",
        size(&log)
    );
    assert!(
        dir.join("monitor.log.2").exists(),
        "the first copy moved on"
    );
    assert_eq!(cluster.session_monitors(0), vec![pid], "the same monitor");
    cluster.ok(1, &["stop", "gv0", "n2::gv1"]);
    cluster.wait_until(WAIT, "the monitor to stop", || process_state(pid).is_none());
}
