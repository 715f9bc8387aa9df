//! Unit tests of `supervise`.
use super::*;
use crate::process::FakeBackend;

const GRACE: Duration = reconcile::DEFAULT_KILL_GRACE;

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

fn template() -> MonitorCommand {
    MonitorCommand::parse("georepd monitor --session-dir {session_dir} --bricks {bricks}").unwrap()
}

struct Rig {
    root: tempfile::TempDir,
    fake: Arc<FakeBackend>,
    sup: Supervisor,
    t0: Instant,
}

impl Rig {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::new());
        let sup = Self::supervisor(&root, &fake);
        Rig {
            root,
            fake,
            sup,
            t0: Instant::now(),
        }
    }

    fn supervisor(root: &tempfile::TempDir, fake: &Arc<FakeBackend>) -> Supervisor {
        Supervisor::new(
            fake.clone(),
            root.path().to_path_buf(),
            "n1".into(),
            template(),
            SupervisePolicy::default(),
        )
    }

    fn at(&mut self, plans: &BTreeMap<SessionId, SessionPlan>, secs: f64) -> Vec<Action> {
        self.sup
            .reconcile(plans, self.t0 + Duration::from_secs_f64(secs))
    }

    fn report(&self) -> MonitorReport {
        self.sup
            .reports()
            .remove(&sid())
            .expect("a report for the session")
    }

    fn pid_path(&self) -> PathBuf {
        self.root.path().join(sid().dir_name()).join(PID_FILE)
    }
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let policy = SupervisePolicy::default();
    let delays: Vec<u64> = (1..=8).map(|n| policy.backoff_for(n).as_secs()).collect();
    assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    assert_eq!(policy.backoff_for(u32::MAX), Duration::from_secs(30));
}

#[test]
fn started_spawns_one_monitor_with_every_placeholder_and_a_pid_file() {
    let mut rig = Rig::new();
    rig.sup.command = MonitorCommand::parse(
        "georepd monitor {session} {primary_vol} {secondary} {secondary_host} {secondary_vol} {node} {session_dir} {config_file} {bricks}",
    )
    .unwrap();
    let started = plans(DesiredState::Started, 1);
    let actions = rig.at(&started, 0.0);
    assert!(matches!(actions[..], [Action::Spawn { .. }]), "{actions:?}");
    let spawned = rig.fake.spawned();
    assert_eq!(spawned.len(), 1);
    let (pid, spec) = &spawned[0];
    let dir = rig.root.path().join("gv0_geo@n4_gv1");
    let dir_text = dir.to_string_lossy().into_owned();
    assert_eq!(
        spec.argv,
        vec![
            "georepd".to_string(),
            "monitor".into(),
            "gv0_geo@n4_gv1".into(),
            "gv0".into(),
            "geo@n4::gv1".into(),
            "n4".into(),
            "gv1".into(),
            "n1".into(),
            dir_text.clone(),
            format!("{dir_text}/gsyncd.conf"),
            "/data/b1,/data/b2".into(),
        ]
    );
    assert_eq!(spec.session_dir, dir);
    let record: PidRecord =
        serde_json::from_str(&fs::read_to_string(rig.pid_path()).unwrap()).unwrap();
    assert_eq!(record.pid, *pid);
    assert_eq!(record.restart_stamp, stamp(1));
    let report = rig.report();
    assert_eq!(report.state, MonitorState::Started);
    assert_eq!(report.pid, Some(*pid));
    assert_eq!(report.restart_stamp, stamp(1));
    assert_eq!(report.desired_stamp, stamp(101));
    assert_eq!(report.status_word(DesiredState::Started), "Started");
    assert_eq!(
        report.last_decision,
        format!("spawned monitor pid {pid} because desired Started")
    );
    assert_eq!(rig.at(&started, 1.0), vec![]);
    assert_eq!(rig.at(&started, 100.0), vec![]);
    assert_eq!(rig.fake.alive(), vec![*pid]);
    assert_eq!(rig.report().since_ms, 100_000);
    assert_eq!(
        rig.sup.next_wakeup(),
        Some(rig.t0 + Duration::from_secs(101))
    );
}

#[test]
fn hanging_monitor_gets_sigterm_then_sigkill_after_grace() {
    let mut rig = Rig::new();
    rig.at(&plans(DesiredState::Started, 1), 0.0);
    let pid = rig.report().pid.unwrap();
    rig.fake.ignore_sigterm(pid);
    let stopped = plans(DesiredState::Stopped, 1);
    rig.at(&stopped, 10.0);
    assert_eq!(rig.fake.signals(), vec![(pid, MonitorSignal::Term)]);
    let report = rig.report();
    assert_eq!(report.state, MonitorState::Stopping);
    assert_eq!(report.status_word(DesiredState::Stopped), "Stopped");
    assert!(
        report.last_decision.contains("sent SIGTERM"),
        "{}",
        report.last_decision
    );
    assert!(
        report.last_decision.contains("because desired Stopped"),
        "{}",
        report.last_decision
    );
    assert_eq!(rig.at(&stopped, 14.9), vec![]);
    assert!(rig.sup.next_wakeup().unwrap() <= rig.t0 + Duration::from_secs(10) + GRACE);
    let actions = rig.at(&stopped, 15.0);
    assert_eq!(actions, vec![Action::Kill { id: sid(), pid }]);
    assert_eq!(
        rig.fake.signals(),
        vec![(pid, MonitorSignal::Term), (pid, MonitorSignal::Kill)]
    );
    assert!(rig.fake.alive().is_empty());
    assert!(
        rig.pid_path().exists(),
        "the pid file stays until the exit is seen"
    );
    assert_eq!(rig.at(&stopped, 15.1), vec![]);
    let report = rig.report();
    assert_eq!(report.state, MonitorState::Stopped);
    assert_eq!(report.pid, None);
    assert_eq!(report.last_error, None);
    assert!(
        report.last_decision.contains("killed by signal 9"),
        "{}",
        report.last_decision
    );
    assert!(!rig.pid_path().exists());
    assert_eq!(rig.sup.next_wakeup(), None);
}

#[test]
fn pause_and_resume_signal_the_group_and_stop_continues_a_paused_monitor() {
    let mut rig = Rig::new();
    rig.at(&plans(DesiredState::Started, 1), 0.0);
    let pid = rig.report().pid.unwrap();
    let paused = plans(DesiredState::Paused, 1);
    rig.at(&paused, 1.0);
    assert_eq!(rig.fake.is_stopped(pid), Some(true));
    assert_eq!(rig.report().state, MonitorState::Paused);
    assert_eq!(rig.at(&paused, 2.0), vec![]);
    rig.at(&plans(DesiredState::Started, 1), 3.0);
    assert_eq!(rig.fake.is_stopped(pid), Some(false));
    assert_eq!(rig.report().state, MonitorState::Started);
    rig.at(&paused, 4.0);
    rig.at(&plans(DesiredState::Stopped, 1), 5.0);
    assert_eq!(
        rig.fake.signals(),
        vec![
            (pid, MonitorSignal::Stop),
            (pid, MonitorSignal::Cont),
            (pid, MonitorSignal::Stop),
            (pid, MonitorSignal::Term),
            (pid, MonitorSignal::Cont),
        ]
    );
    assert!(
        rig.fake.alive().is_empty(),
        "SIGTERM delivered once continued"
    );
    rig.at(&plans(DesiredState::Stopped, 1), 5.5);
    assert_eq!(rig.report().state, MonitorState::Stopped);
}

/// `pause` confirms when every node reports Paused, so Paused must mean frozen: a
/// SIGSTOP whose target has not run since (a loaded machine) is reported Started, the
/// supervisor looks again soon without signalling again, and reports Paused once the
/// stop took effect.
#[test]
fn a_monitor_is_reported_paused_only_once_its_stop_took_effect() {
    let mut rig = Rig::new();
    rig.at(&plans(DesiredState::Started, 1), 0.0);
    let pid = rig.report().pid.unwrap();
    rig.fake.lag_stops();
    let paused = plans(DesiredState::Paused, 1);
    assert_eq!(rig.at(&paused, 1.0), vec![Action::Pause { id: sid(), pid }]);
    assert_eq!(rig.report().state, MonitorState::Started);
    let soon = rig.t0 + Duration::from_secs(1) + STOP_LOOK_FIRST;
    assert!(rig.sup.next_wakeup().is_some_and(|at| at <= soon));
    assert_eq!(rig.at(&paused, 1.1), vec![]);
    assert_eq!(rig.report().state, MonitorState::Started);
    rig.fake.settle_stops();
    assert_eq!(rig.at(&paused, 1.2), vec![]);
    assert_eq!(rig.report().state, MonitorState::Paused);
    assert_eq!(rig.fake.signals(), vec![(pid, MonitorSignal::Stop)]);
}

/// A stop that does not take effect (a thread in D on a hung mount) is looked at
/// again soon, then less and less often: 5 ms, 10, 20, ... up to once a second, never
/// signalled again; once it takes effect the monitor is Paused and the looks end.
#[test]
fn a_stop_not_taking_effect_is_looked_at_less_and_less_often() {
    let mut rig = Rig::new();
    rig.at(&plans(DesiredState::Started, 1), 0.0);
    let pid = rig.report().pid.unwrap();
    rig.fake.lag_stops();
    let paused = plans(DesiredState::Paused, 1);
    let mut at = rig.t0 + Duration::from_secs(1);
    assert_eq!(
        rig.sup.reconcile(&paused, at),
        vec![Action::Pause { id: sid(), pid }]
    );
    let mut waits = Vec::new();
    for _ in 0..12 {
        let next = rig.sup.next_wakeup().expect("a wake-up while not frozen");
        waits.push(next - at);
        at = next;
        assert_eq!(rig.sup.reconcile(&paused, at), vec![]);
        assert_eq!(rig.report().state, MonitorState::Started);
    }
    let ms = |n| Duration::from_millis(n);
    assert_eq!(
        waits,
        [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000].map(ms)
    );
    rig.fake.settle_stops();
    at += ms(1000);
    assert_eq!(rig.sup.reconcile(&paused, at), vec![]);
    assert_eq!(rig.report().state, MonitorState::Paused);
    assert_eq!(
        rig.sup.next_wakeup(),
        Some(at + SupervisePolicy::default().poll_interval),
        "no more looks once frozen: the usual poll"
    );
    assert_eq!(rig.fake.signals(), vec![(pid, MonitorSignal::Stop)]);
}

#[test]
fn paused_session_without_monitor_spawns_nothing_and_reports_paused() {
    let mut rig = Rig::new();
    assert_eq!(rig.at(&plans(DesiredState::Paused, 1), 0.0), vec![]);
    assert!(rig.fake.spawned().is_empty());
    assert_eq!(rig.report().state, MonitorState::Paused);
}

#[test]
fn a_due_retry_of_a_paused_session_does_not_wake_the_loop() {
    // Found by georep-sim: the loop slept until a retry that pausing had put off,
    // which was already past, so it spun.
    let mut rig = Rig::new();
    rig.at(&plans(DesiredState::Started, 1), 0.0);
    rig.fake
        .crash(rig.report().pid.unwrap(), "exited with status 1");
    rig.at(&plans(DesiredState::Started, 1), 0.1);
    rig.at(&plans(DesiredState::Paused, 1), 0.2);
    let later = rig.t0 + Duration::from_secs(5);
    assert_eq!(
        rig.sup.reconcile(&plans(DesiredState::Paused, 1), later),
        vec![]
    );
    assert!(
        rig.sup.next_wakeup().is_none_or(|at| at > later),
        "{:?} is not after {later:?}",
        rig.sup.next_wakeup()
    );
}

#[test]
fn restart_stamp_change_restarts_without_two_monitors_at_once() {
    let mut rig = Rig::new();
    rig.at(&plans(DesiredState::Started, 1), 0.0);
    let first = rig.report().pid.unwrap();
    let changed = plans(DesiredState::Started, 2);
    let actions = rig.at(&changed, 1.0);
    assert!(
        matches!(actions[..], [Action::Restart { pid, .. }] if pid == first),
        "{actions:?}"
    );
    assert_eq!(rig.report().state, MonitorState::Starting);
    assert!(rig.report().last_decision.contains("restart stamp changed"));
    assert_eq!(rig.fake.spawned().len(), 1);
    rig.at(&changed, 1.1);
    let (second, spec) = rig.fake.spawned()[1].clone();
    assert_ne!(first, second);
    assert_eq!(spec.session, sid());
    assert_eq!(rig.fake.alive(), vec![second]);
    let report = rig.report();
    assert_eq!(report.state, MonitorState::Started);
    assert_eq!(report.restart_stamp, stamp(2));
    assert_eq!(report.restarts, 1);
    assert_eq!(report.last_error, None);
}

#[test]
fn crashes_back_off_exponentially_and_report_faulty_after_three() {
    let mut rig = Rig::new();
    let started = plans(DesiredState::Started, 1);
    rig.at(&started, 0.0);
    let mut t = 0.0;
    // (delay before the retry, state while waiting)
    let expected = [
        (1.0, MonitorState::Starting),
        (2.0, MonitorState::Starting),
        (4.0, MonitorState::Faulty),
        (8.0, MonitorState::Faulty),
        (16.0, MonitorState::Faulty),
        (30.0, MonitorState::Faulty),
        (30.0, MonitorState::Faulty),
    ];
    for (n, (delay, state)) in expected.iter().enumerate() {
        let pid = rig.report().pid.unwrap();
        rig.fake.crash(pid, "exited with status 1");
        t += 0.5;
        assert_eq!(rig.at(&started, t), vec![], "crash {n}");
        let report = rig.report();
        assert_eq!(report.state, *state, "crash {n}");
        assert_eq!(report.pid, None);
        assert_eq!(report.last_error.as_deref(), Some("exited with status 1"));
        assert_eq!(report.backoff_remaining_ms, Some((delay * 1000.0) as u64));
        assert_eq!(
            rig.sup.next_wakeup(),
            Some(rig.t0 + Duration::from_secs_f64(t + delay))
        );
        assert!(!rig.pid_path().exists());
        assert_eq!(rig.at(&started, t + delay - 0.001), vec![]);
        t += delay;
        let actions = rig.at(&started, t);
        assert!(
            matches!(actions[..], [Action::Spawn { retry: true, .. }]),
            "{actions:?}"
        );
        assert_eq!(rig.report().restarts, n as u32 + 1);
    }
    let report = rig.report();
    assert_eq!(report.state, MonitorState::Faulty, "not yet stable");
    assert!(
        report
            .last_decision
            .contains("retry after: exited with status 1")
    );
    rig.at(&started, t + 60.0);
    let report = rig.report();
    assert_eq!(report.state, MonitorState::Started);
    // a crash after a stable run starts the backoff afresh
    rig.fake.crash(report.pid.unwrap(), "killed by signal 9");
    rig.at(&started, t + 61.0);
    let report = rig.report();
    assert_eq!(report.state, MonitorState::Starting);
    assert_eq!(report.backoff_remaining_ms, Some(1000));
    assert_eq!(report.last_error.as_deref(), Some("killed by signal 9"));
}

#[test]
fn spawn_failures_go_through_backoff_and_stop_forgets_them() {
    let mut rig = Rig::new();
    rig.fake.fail_next_spawns(1);
    let started = plans(DesiredState::Started, 1);
    rig.at(&started, 0.0);
    let report = rig.report();
    assert_eq!(report.state, MonitorState::Starting);
    assert_eq!(report.backoff_remaining_ms, Some(1000));
    assert!(
        report
            .last_error
            .as_deref()
            .unwrap()
            .contains("cannot start monitor `georepd`")
    );
    rig.at(&started, 1.0);
    assert_eq!(rig.report().state, MonitorState::Started);
    assert_eq!(rig.report().restarts, 1);
    rig.fake
        .crash(rig.report().pid.unwrap(), "exited with status 2");
    let stopped = plans(DesiredState::Stopped, 1);
    let actions = rig.at(&stopped, 2.0);
    assert!(
        matches!(actions[..], [Action::Forget { .. }]),
        "{actions:?}"
    );
    let report = rig.report();
    assert_eq!(
        (report.state, report.restarts, report.last_error),
        (MonitorState::Stopped, 0, None)
    );
    assert_eq!(rig.sup.next_wakeup(), None);
}

#[test]
fn not_primary_and_deleted_sessions() {
    let mut rig = Rig::new();
    let mut not_primary = plans(DesiredState::Started, 1);
    not_primary
        .values_mut()
        .for_each(|p| p.local_bricks.clear());
    assert_eq!(rig.at(&not_primary, 0.0), vec![]);
    let report = rig.report();
    assert_eq!(report.state, MonitorState::NotPrimary);
    assert_eq!(report.status_word(DesiredState::Started), "Started");
    rig.at(&plans(DesiredState::Started, 1), 1.0);
    let pid = rig.report().pid.unwrap();
    let actions = rig.at(&BTreeMap::new(), 2.0);
    assert!(
        matches!(&actions[..], [Action::Terminate { pid: p, cause: reconcile::StopCause::Deleted, .. }] if *p == pid),
        "{actions:?}"
    );
    assert_eq!(rig.report().state, MonitorState::Stopping);
    rig.at(&BTreeMap::new(), 3.0);
    assert!(rig.sup.reports().is_empty());
    assert!(!rig.pid_path().exists());
}

#[test]
fn adoption_keeps_the_running_monitor_and_never_starts_a_second() {
    let mut rig = Rig::new();
    let started = plans(DesiredState::Started, 1);
    rig.at(&started, 0.0);
    let pid = rig.report().pid.unwrap();
    // the agent restarts: its children are orphans now
    rig.fake.orphan_all();
    let mut sup = Rig::supervisor(&rig.root, &rig.fake);
    sup.adopt(&[sid()]);
    let t = rig.t0 + Duration::from_secs(10);
    let actions = sup.reconcile(&started, t);
    // the previous agent may have frozen it: SIGCONT makes sure it runs
    assert_eq!(actions, vec![Action::Resume { id: sid(), pid }]);
    assert_eq!(sup.reconcile(&started, t), vec![]);
    assert_eq!(rig.fake.spawned().len(), 1);
    let report = &sup.reports()[&sid()];
    assert_eq!(
        (report.state, report.pid),
        (MonitorState::Started, Some(pid))
    );
    // an adopted monitor's exit is noticed by polling, then it is retried
    rig.fake.crash(pid, "exited with status 1");
    sup.reconcile(&started, t + Duration::from_secs(1));
    let report = &sup.reports()[&sid()];
    assert_eq!(report.state, MonitorState::Starting);
    assert!(
        report
            .last_error
            .as_deref()
            .unwrap()
            .contains("exit status unknown")
    );
    assert!(!rig.pid_path().exists());
    sup.reconcile(&started, t + Duration::from_secs(2));
    assert_eq!(rig.fake.spawned().len(), 2);
}

#[test]
fn adopted_paused_monitor_is_sigstopped_again_and_unplanned_one_is_stopped() {
    let mut rig = Rig::new();
    rig.at(&plans(DesiredState::Paused, 1), 0.0);
    rig.at(&plans(DesiredState::Started, 1), 0.0);
    let pid = rig.report().pid.unwrap();
    rig.fake.orphan_all();
    let mut sup = Rig::supervisor(&rig.root, &rig.fake);
    sup.adopt(&[]);
    let t = rig.t0 + Duration::from_secs(10);
    let actions = sup.reconcile(&plans(DesiredState::Paused, 1), t);
    assert_eq!(actions, vec![Action::Pause { id: sid(), pid }]);
    let actions = sup.reconcile(&BTreeMap::new(), t);
    assert!(
        matches!(actions[..], [Action::Terminate { resume: true, .. }]),
        "{actions:?}"
    );
    // not our child: its disappearance is the exit
    sup.reconcile(&BTreeMap::new(), t + Duration::from_secs(1));
    assert!(sup.reports().is_empty());
    assert!(!rig.pid_path().exists());
}

#[test]
fn adoption_removes_stale_pid_files() {
    let rig = Rig::new();
    let (foreign, identity) = rig.fake.start_foreign();
    let dir = rig.root.path().join(sid().dir_name());
    fs::create_dir_all(&dir).unwrap();
    let write = |record: &PidRecord| {
        fs::write(dir.join(PID_FILE), serde_json::to_vec(record).unwrap()).unwrap()
    };
    let matching = PidRecord {
        session: sid(),
        pid: foreign,
        start_ticks: identity.start_ticks,
        argv: vec!["georepd".into(), "monitor".into()],
        restart_stamp: stamp(1),
    };
    let stale = [
        PidRecord {
            start_ticks: identity.start_ticks + 1,
            ..matching.clone()
        },
        PidRecord {
            start_ticks: 0,
            ..matching.clone()
        },
        PidRecord {
            pid: 99_999,
            ..matching.clone()
        },
        PidRecord {
            session: SessionId::parse("other", "n4::gv1").unwrap(),
            ..matching.clone()
        },
    ];
    for record in &stale {
        write(record);
        let mut sup = Rig::supervisor(&rig.root, &rig.fake);
        sup.adopt(&[]);
        assert!(sup.reports().is_empty(), "{record:?}");
        assert!(!dir.join(PID_FILE).exists(), "{record:?}");
    }
    fs::write(dir.join(PID_FILE), "not json").unwrap();
    Rig::supervisor(&rig.root, &rig.fake).adopt(&[sid()]);
    assert!(!dir.join(PID_FILE).exists());
    write(&matching);
    let mut sup = Rig::supervisor(&rig.root, &rig.fake);
    sup.adopt(&[sid()]);
    assert_eq!(sup.reports()[&sid()].pid, Some(foreign));
    assert!(dir.join(PID_FILE).exists());
    // the stamp recorded in the file decides whether it must restart
    let actions = sup.reconcile(&plans(DesiredState::Started, 2), rig.t0);
    assert!(
        matches!(actions[..], [Action::Restart { resume: true, .. }]),
        "{actions:?}"
    );
}
