//! The real process backend with real child processes and signals: spawn into a new
//! session and process group, SIGSTOP/SIGCONT/SIGTERM the group, reap; and the
//! refusals that keep it from signalling the agent's own group or init.

use std::collections::BTreeMap;
use std::fs;
use std::sync::Arc;
use std::time::Duration;

use georep_agent::LOG_FILE;
use georep_agent::MonitorCommand;
use georep_agent::MonitorState;
use georep_agent::SessionPlan;
use georep_agent::{MonitorSignal, ProcessBackend, RealBackend, SpawnSpec, SuperviseError};
use georep_agent::{SupervisePolicy, Supervisor};
use georep_mesh::Hlc;
use georep_mesh::{DesiredState, SessionId};
use nix::unistd::getpgrp;
use tokio::time::Instant;

fn sid() -> SessionId {
    SessionId::parse("gv0", "geo@n4::gv1").unwrap()
}

fn stamp(n: u64) -> Option<Hlc> {
    Some(Hlc::new(n, 0, "n1"))
}

fn plans(desired: DesiredState, restart: u64) -> BTreeMap<SessionId, SessionPlan> {
    BTreeMap::from([(
        sid(),
        SessionPlan {
            id: sid(),
            desired,
            desired_stamp: stamp(restart + 100),
            restart_stamp: stamp(restart),
            local_bricks: vec!["/data/b1".into(), "/data/b2".into()],
        },
    )])
}

/// The state letter of `/proc/PID/stat` (after the command name, which may hold `)`).
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    after.trim_start().chars().next()
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn real_backend_spawns_signals_and_reaps_a_real_process() {
    let root = tempfile::tempdir().unwrap();
    let backend = Arc::new(RealBackend::new());
    let mut sup = Supervisor::new(
        backend.clone(),
        root.path().to_path_buf(),
        "n1".into(),
        MonitorCommand::parse("sleep 30").unwrap(),
        SupervisePolicy::default(),
    );
    sup.reconcile(&plans(DesiredState::Started, 1), Instant::now());
    let pid = sup.reports()[&sid()].pid.expect("a monitor pid");
    let identity = backend.identity(pid).expect("the monitor is alive");
    assert!(identity.start_ticks > 0);
    assert_eq!(
        identity.process_session, pid,
        "the monitor leads its own session"
    );
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, after) = stat.rsplit_once(')').unwrap();
    let pgid: u32 = after.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(pgid, pid, "the monitor leads its own process group");
    assert!(root.path().join("gv0_geo@n4_gv1").join(LOG_FILE).exists());

    sup.reconcile(&plans(DesiredState::Paused, 1), Instant::now());
    eventually("state T", || proc_state(pid) == Some('T'));
    sup.reconcile(&plans(DesiredState::Started, 1), Instant::now());
    eventually("state S", || matches!(proc_state(pid), Some('S' | 'R')));

    let stopped = plans(DesiredState::Stopped, 1);
    sup.reconcile(&stopped, Instant::now());
    eventually("exit noticed", || {
        sup.reconcile(&stopped, Instant::now());
        sup.reports()[&sid()].state == MonitorState::Stopped
    });
    let report = &sup.reports()[&sid()];
    assert!(
        report.last_decision.contains("killed by signal 15"),
        "{}",
        report.last_decision
    );
    assert_eq!(backend.identity(pid), None);
    assert_eq!(proc_state(pid), None, "reaped, not a zombie");
}

#[test]
fn real_backend_refuses_dangerous_groups_and_reports_missing_programs() {
    let backend = RealBackend::new();
    for pgid in [0, 1, getpgrp().as_raw() as u32, u32::MAX] {
        assert!(matches!(
            backend.signal_group(pgid, MonitorSignal::Term),
            Err(SuperviseError::UnsafeGroup { .. })
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = SpawnSpec {
        session: sid(),
        argv: vec!["/nonexistent/georep-monitor".into()],
        session_dir: dir.path().join("s"),
        env: vec![],
    };
    let error = backend.spawn(&spec).unwrap_err().to_string();
    assert!(
        error.contains("cannot start monitor `/nonexistent/georep-monitor` for gv0 -> geo@n4::gv1"),
        "{error}"
    );
    let empty = SpawnSpec {
        argv: vec![],
        ..spec
    };
    assert!(matches!(
        backend.spawn(&empty),
        Err(SuperviseError::EmptyCommand)
    ));
}
