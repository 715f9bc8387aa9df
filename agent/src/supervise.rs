//! Applying the reconciler's decisions to monitor processes, real or simulated.
//!
//! A [`Supervisor`] owns the per-session monitor state and a [`ProcessBackend`]. Each
//! [`Supervisor::reconcile`] first learns which monitors exited, then asks
//! [`crate::reconcile::decide`] what to do and does it: spawn (recording
//! `monitor.pid`), SIGTERM / SIGKILL / SIGSTOP / SIGCONT the monitor's process group,
//! and retry crashed monitors after a capped exponential backoff. Time is injected
//! (`now`), so the same code runs under the simulator's virtual clock with
//! `FakeBackend`, and for real with [`crate::process::RealBackend`].
//!
//! A monitor survives an agent restart: it runs in a session of its own (`setsid`), so
//! neither the agent's death nor a terminal hang-up reaches it, and the next agent
//! [`Supervisor::adopt`]s it from its pid file. A process is the recorded monitor when
//! its pid and start time match the record and it still leads the session it was
//! started in; its command line is not part of its identity, because a monitor that
//! execs (a `#!/usr/bin/env` script, a shell wrapper, gluster's gsyncd) changes it.
//! One session therefore never gets two monitors on a node, and a pid reused by an
//! unrelated process is never signalled.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use georep_mesh::Hlc;
use georep_mesh::{DesiredState, SessionId};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::monitor_command::{MonitorCommand, Placeholder};
use crate::monitor_report::{MonitorReport, MonitorState};
use crate::process::{MonitorSignal, ProcessBackend, ProcessIdentity, SpawnSpec, SuperviseError};
use crate::reconcile::{self, Action, DecidePolicy, Need, ObservedMonitor, SessionPlan};
use crate::session_dir::{self, CONFIG_FILE, PID_FILE};

/// How often a monitor we signalled to stop is checked for its exit (it is expected
/// any moment; a restart's new monitor starts as soon as the old one is gone).
const STOPPING_POLL: Duration = Duration::from_millis(50);
/// How soon a monitor sent SIGSTOP is looked at again when the stop had not yet taken
/// effect (it does when each thread next runs: usually within a millisecond). Each
/// further look waits twice as long, up to [`STOP_LOOK_MAX`]: a thread in D on a hung
/// mount may not stop for minutes.
const STOP_LOOK_FIRST: Duration = Duration::from_millis(5);
/// The longest wait between two looks at a SIGSTOP not yet taken effect.
const STOP_LOOK_MAX: Duration = Duration::from_secs(1);

/// The wait before the next look at a SIGSTOP not yet seen to take effect, after
/// `looks` that found it so (the first in the pass that sent it).
fn stop_look_delay(looks: u32) -> Duration {
    STOP_LOOK_FIRST
        .checked_mul(1 << looks.saturating_sub(1).min(16))
        .map_or(STOP_LOOK_MAX, |delay| delay.min(STOP_LOOK_MAX))
}
/// Tunables of the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisePolicy {
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Delay before the first retry after a crash.
    pub backoff_initial: Duration,
    /// Growth of the delay per consecutive crash.
    pub backoff_factor: u32,
    /// Largest delay; retries continue at this pace forever.
    pub backoff_cap: Duration,
    /// A monitor that ran this long has its crash count reset.
    pub stable_after: Duration,
    /// Consecutive crashes after which the monitor is reported Faulty.
    pub faulty_after: u32,
    /// How often exits are polled while a monitor runs (adopted monitors are not our
    /// children, so only polling sees them go).
    pub poll_interval: Duration,
}

impl Default for SupervisePolicy {
    fn default() -> Self {
        Self {
            kill_grace: reconcile::DEFAULT_KILL_GRACE,
            backoff_initial: Duration::from_secs(1),
            backoff_factor: 2,
            backoff_cap: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
            faulty_after: 3,
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl SupervisePolicy {
    /// The delay before retrying after `crashes` consecutive crashes (1 = first).
    pub fn backoff_for(&self, crashes: u32) -> Duration {
        let mut delay = self.backoff_initial;
        if self.backoff_factor > 1 {
            for _ in 1..crashes {
                if delay >= self.backoff_cap {
                    break;
                }
                delay = delay.saturating_mul(self.backoff_factor);
            }
        }
        delay.min(self.backoff_cap)
    }

    fn decide_policy(&self) -> DecidePolicy {
        DecidePolicy {
            kill_grace: self.kill_grace,
        }
    }
}

/// What a pid file records; enough to recognise the process after an agent restart
/// (pid, start time, and the session it leads, which is its pid) and to know which
/// geo-replication session it serves. `argv` is what was started, for people: an
/// exec'ing monitor shows another command line later, and that does not matter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PidRecord {
    session: SessionId,
    pid: u32,
    start_ticks: u64,
    argv: Vec<String>,
    restart_stamp: Option<Hlc>,
}

impl PidRecord {
    fn identity(&self) -> ProcessIdentity {
        ProcessIdentity {
            start_ticks: self.start_ticks,
            process_session: self.pid,
        }
    }
}

#[derive(Debug, Clone)]
struct Process {
    pid: u32,
    identity: ProcessIdentity,
    /// Not our child: its exit is noticed by polling its identity.
    adopted: bool,
    restart_stamp: Option<Hlc>,
    /// `None` until the first reconcile after adoption supplies a clock reading.
    started: Option<Instant>,
}

#[derive(Debug, Clone)]
enum Phase {
    Idle,
    Running {
        process: Process,
        /// `None` after adoption: the previous agent may or may not have frozen it.
        sigstopped: Option<bool>,
        /// The last SIGSTOP was seen to take effect ([`ProcessBackend::frozen`]): only
        /// then is the monitor reported Paused (a stop takes effect when the target
        /// next runs, which on a loaded machine can be later than the signal call).
        frozen: bool,
        /// Looks since the last SIGSTOP that did not find it in effect yet.
        looks: u32,
    },
    Stopping {
        process: Process,
        since: Instant,
        kill_sent: bool,
        restart: bool,
    },
    Backoff {
        until: Instant,
    },
}

#[derive(Debug, Clone)]
struct Monitor {
    phase: Phase,
    consecutive_crashes: u32,
    restarts: u32,
    /// The next spawn starts a monitor again (after a crash or for a restart).
    respawn: bool,
    last_error: Option<String>,
    state: MonitorState,
    state_since: Option<Instant>,
    desired_stamp: Option<Hlc>,
    last_decision: String,
}

impl Monitor {
    fn new(now: Option<Instant>) -> Self {
        Self {
            phase: Phase::Idle,
            consecutive_crashes: 0,
            restarts: 0,
            respawn: false,
            last_error: None,
            state: MonitorState::Stopped,
            state_since: now,
            desired_stamp: None,
            last_decision: String::new(),
        }
    }

    fn process(&self) -> Option<&Process> {
        match &self.phase {
            Phase::Running { process, .. } | Phase::Stopping { process, .. } => Some(process),
            Phase::Idle | Phase::Backoff { .. } => None,
        }
    }

    fn process_mut(&mut self) -> Option<&mut Process> {
        match &mut self.phase {
            Phase::Running { process, .. } | Phase::Stopping { process, .. } => Some(process),
            Phase::Idle | Phase::Backoff { .. } => None,
        }
    }

    fn forget_crashes(&mut self) {
        self.consecutive_crashes = 0;
        self.restarts = 0;
        self.respawn = false;
        self.last_error = None;
    }
}

fn state_of(monitor: &Monitor, plan: Option<&SessionPlan>, faulty_after: u32) -> MonitorState {
    let faulty = monitor.consecutive_crashes >= faulty_after;
    match &monitor.phase {
        Phase::Running {
            sigstopped: Some(true),
            frozen: true,
            ..
        } => MonitorState::Paused,
        Phase::Running { .. } if faulty => MonitorState::Faulty,
        Phase::Running { .. } => MonitorState::Started,
        Phase::Stopping { .. } if Need::of(plan) == Need::Run => MonitorState::Starting,
        Phase::Stopping { .. } => MonitorState::Stopping,
        Phase::Backoff { .. } if Need::of(plan) == Need::Frozen => MonitorState::Paused,
        Phase::Backoff { .. } if faulty => MonitorState::Faulty,
        Phase::Backoff { .. } => MonitorState::Starting,
        Phase::Idle => match plan {
            None => MonitorState::Stopped,
            Some(plan) if !plan.is_primary() => MonitorState::NotPrimary,
            Some(plan) => match plan.desired {
                DesiredState::Started => MonitorState::Starting,
                DesiredState::Paused => MonitorState::Paused,
                DesiredState::Stopped | DesiredState::Created => MonitorState::Stopped,
            },
        },
    }
}

/// A delay for people, to the millisecond (`2s`, `1s 500ms`).
fn secs(duration: Duration) -> String {
    let ms = Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    humantime::format_duration(ms).to_string()
}

fn stamp_text(stamp: Option<&Hlc>) -> String {
    stamp.map_or_else(|| "none".into(), Hlc::to_string)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Supervises the monitors of every session on this node.
pub struct Supervisor {
    backend: Arc<dyn ProcessBackend>,
    sessions_root: PathBuf,
    node_id: String,
    command: MonitorCommand,
    policy: SupervisePolicy,
    monitors: BTreeMap<SessionId, Monitor>,
    plans: BTreeMap<SessionId, SessionPlan>,
    now: Option<Instant>,
    /// Actions taken since start, by kind (for metrics).
    actions_taken: BTreeMap<&'static str, u64>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("sessions_root", &self.sessions_root)
            .field("node_id", &self.node_id)
            .field("command", &self.command.template())
            .field("policy", &self.policy)
            .field("monitors", &self.monitors)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor with no monitors. `sessions_root` is `<data-dir>/geo-replication`;
    /// `command` is the monitor command with its placeholders.
    pub fn new(
        backend: Arc<dyn ProcessBackend>,
        sessions_root: PathBuf,
        node_id: String,
        command: MonitorCommand,
        policy: SupervisePolicy,
    ) -> Self {
        Self {
            backend,
            sessions_root,
            node_id,
            command,
            policy,
            monitors: BTreeMap::new(),
            plans: BTreeMap::new(),
            now: None,
            actions_taken: BTreeMap::new(),
        }
    }

    /// Actions taken since start, by kind (`spawn`, `terminate`, ...).
    pub fn actions_taken(&self) -> &BTreeMap<&'static str, u64> {
        &self.actions_taken
    }

    fn session_dir(&self, id: &SessionId) -> PathBuf {
        self.sessions_root.join(id.dir_name())
    }

    /// The monitor command for `plan`, placeholders substituted.
    pub fn monitor_argv(&self, plan: &SessionPlan) -> Vec<String> {
        let id = &plan.id;
        let session_dir = self.session_dir(id);
        self.command.render(|placeholder| match placeholder {
            Placeholder::Session => id.dir_name(),
            Placeholder::PrimaryVol => id.primary_volume.clone(),
            Placeholder::Secondary => id.secondary(),
            Placeholder::SecondaryHost => id.secondary_host.clone(),
            Placeholder::SecondaryVol => id.secondary_volume.clone(),
            Placeholder::Node => self.node_id.clone(),
            Placeholder::SessionDir => session_dir.to_string_lossy().into_owned(),
            Placeholder::ConfigFile => session_dir.join(CONFIG_FILE).to_string_lossy().into_owned(),
            Placeholder::Bricks => plan.local_bricks.join(","),
        })
    }

    /// The plans the last [`Self::reconcile`] acted on (empty before the first).
    pub fn last_plans(&self) -> &BTreeMap<SessionId, SessionPlan> {
        &self.plans
    }

    /// One level-triggered round: learn exits, decide, act. Returns the actions taken.
    pub fn reconcile(
        &mut self,
        plans: &BTreeMap<SessionId, SessionPlan>,
        now: Instant,
    ) -> Vec<Action> {
        self.now = Some(now);
        for monitor in self.monitors.values_mut() {
            monitor.state_since.get_or_insert(now);
            if let Some(process) = monitor.process_mut() {
                process.started.get_or_insert(now);
            }
        }
        self.collect_exits(now);
        for monitor in self.monitors.values_mut() {
            if let Phase::Running { process, .. } = &monitor.phase
                && monitor.consecutive_crashes > 0
                && process
                    .started
                    .is_some_and(|started| now >= started + self.policy.stable_after)
            {
                monitor.consecutive_crashes = 0;
            }
        }
        for id in plans.keys() {
            self.monitors
                .entry(id.clone())
                .or_insert_with(|| Monitor::new(Some(now)));
        }
        let observed = self.observed(plans);
        let actions = reconcile::decide(plans, &observed, now, &self.policy.decide_policy());
        for action in &actions {
            *self.actions_taken.entry(action.kind()).or_default() += 1;
            self.apply(action, plans, now);
        }
        self.check_frozen();
        let faulty_after = self.policy.faulty_after;
        self.monitors.retain(|id, monitor| {
            let plan = plans.get(id);
            if plan.is_none() && matches!(monitor.phase, Phase::Idle) {
                return false;
            }
            let state = state_of(monitor, plan, faulty_after);
            if state != monitor.state {
                monitor.state = state;
                monitor.state_since = Some(now);
            }
            if let Some(plan) = plan {
                monitor.desired_stamp.clone_from(&plan.desired_stamp);
            }
            true
        });
        self.plans = plans.clone();
        actions
    }

    /// Looks whether monitors sent SIGSTOP are frozen yet (see `Phase::Running::frozen`).
    fn check_frozen(&mut self) {
        for monitor in self.monitors.values_mut() {
            if let Phase::Running {
                process,
                sigstopped: Some(true),
                frozen: frozen @ false,
                looks,
            } = &mut monitor.phase
            {
                *frozen = self.backend.frozen(process.pid);
                if !*frozen {
                    *looks = looks.saturating_add(1);
                }
            }
        }
    }

    fn collect_exits(&mut self, now: Instant) {
        let mut exits: Vec<(SessionId, String)> = Vec::new();
        for notice in self.backend.try_reap() {
            match self
                .monitors
                .iter()
                .find(|(_, m)| m.process().is_some_and(|p| p.pid == notice.pid))
            {
                Some((id, _)) => exits.push((id.clone(), notice.reason)),
                None => tracing::debug!(pid = notice.pid, "exit of a process that is no monitor"),
            }
        }
        for (id, monitor) in &self.monitors {
            if let Some(process) = monitor.process()
                && process.adopted
                && self.backend.identity(process.pid) != Some(process.identity)
            {
                exits.push((
                    id.clone(),
                    "ended (exit status unknown: it was adopted, not started by this agent)"
                        .to_string(),
                ));
            }
        }
        for (id, reason) in exits {
            self.on_exit(&id, &reason, now);
        }
    }

    fn on_exit(&mut self, id: &SessionId, reason: &str, now: Instant) {
        let pid_path = self.session_dir(id).join(PID_FILE);
        let Some(monitor) = self.monitors.get_mut(id) else {
            return;
        };
        match std::mem::replace(&mut monitor.phase, Phase::Idle) {
            Phase::Running { process, .. } => {
                let ran_stably = process
                    .started
                    .is_some_and(|started| now >= started + self.policy.stable_after);
                monitor.consecutive_crashes = if ran_stably {
                    1
                } else {
                    monitor.consecutive_crashes.saturating_add(1)
                };
                let delay = self.policy.backoff_for(monitor.consecutive_crashes);
                monitor.phase = Phase::Backoff { until: now + delay };
                monitor.respawn = true;
                monitor.last_error = Some(reason.to_string());
                monitor.last_decision = format!(
                    "monitor pid {} {reason} without being asked to; retrying in {} (crash {} in a row)",
                    process.pid,
                    secs(delay),
                    monitor.consecutive_crashes
                );
                tracing::warn!(session = %id, pid = process.pid, crashes = monitor.consecutive_crashes, "monitor {reason}; retrying in {}", secs(delay));
            }
            Phase::Stopping {
                process, restart, ..
            } => {
                if restart {
                    monitor.respawn = true;
                    monitor.last_decision = format!(
                        "monitor pid {} {reason}; starting it again for the new restart stamp",
                        process.pid
                    );
                } else {
                    monitor.forget_crashes();
                    monitor.last_decision = format!("monitor pid {} {reason}", process.pid);
                }
                tracing::info!(session = %id, pid = process.pid, "monitor {reason}");
            }
            other => {
                monitor.phase = other;
                return;
            }
        }
        remove_pid_file(&pid_path);
    }

    fn observed(
        &self,
        plans: &BTreeMap<SessionId, SessionPlan>,
    ) -> BTreeMap<SessionId, ObservedMonitor> {
        let mut observed = BTreeMap::new();
        for (id, monitor) in &self.monitors {
            let seen = match &monitor.phase {
                Phase::Idle => continue,
                Phase::Running {
                    process,
                    sigstopped,
                    ..
                } => ObservedMonitor::Running {
                    pid: process.pid,
                    // Unknown after adoption: assume the opposite of what the plan wants
                    // so that the matching SIGSTOP/SIGCONT, harmless if redundant, is sent.
                    sigstopped: sigstopped
                        .unwrap_or_else(|| Need::of(plans.get(id)) != Need::Frozen),
                    restart_stamp: process.restart_stamp.clone(),
                },
                Phase::Stopping {
                    process,
                    since,
                    kill_sent,
                    ..
                } => ObservedMonitor::Stopping {
                    pid: process.pid,
                    since: *since,
                    kill_sent: *kill_sent,
                },
                Phase::Backoff { until } => ObservedMonitor::Backoff { until: *until },
            };
            observed.insert(id.clone(), seen);
        }
        observed
    }

    fn apply(&mut self, action: &Action, plans: &BTreeMap<SessionId, SessionPlan>, now: Instant) {
        match action {
            Action::Spawn {
                id,
                restart_stamp,
                retry,
            } => {
                if let Some(plan) = plans.get(id) {
                    self.spawn(plan, restart_stamp.clone(), *retry, now);
                }
            }
            Action::Terminate {
                id,
                pid,
                cause,
                resume,
            } => self.terminate(id, *pid, *resume, false, &format!("because {cause}"), now),
            Action::Restart {
                id,
                pid,
                from,
                to,
                resume,
            } => {
                let why = format!(
                    "to restart it: restart stamp changed from {} to {}",
                    stamp_text(from.as_ref()),
                    stamp_text(to.as_ref())
                );
                self.terminate(id, *pid, *resume, true, &why, now);
            }
            Action::Kill { id, pid } => {
                let (outcome, _) = self.signal(id, *pid, MonitorSignal::Kill, now);
                let grace = secs(self.policy.kill_grace);
                if let Some(monitor) = self.monitors.get_mut(id) {
                    if let Phase::Stopping { kill_sent, .. } = &mut monitor.phase {
                        *kill_sent = true;
                    }
                    monitor.last_decision = format!(
                        "{outcome} to monitor pid {pid}: still running {grace} after SIGTERM"
                    );
                }
            }
            Action::Pause { id, pid } | Action::Resume { id, pid } => {
                let (signal, frozen, why) = match action {
                    Action::Pause { .. } => (MonitorSignal::Stop, true, "desired Paused"),
                    _ => (MonitorSignal::Cont, false, "desired Started"),
                };
                let (outcome, sent) = self.signal(id, *pid, signal, now);
                if let Some(monitor) = self.monitors.get_mut(id) {
                    // a signal that was not sent changes nothing: the next pass tries
                    // again, and the report does not claim a state the group is not in
                    if let (
                        true,
                        Phase::Running {
                            sigstopped,
                            frozen: seen,
                            looks,
                            ..
                        },
                    ) = (sent, &mut monitor.phase)
                    {
                        *sigstopped = Some(frozen);
                        *seen = false;
                        *looks = 0;
                    }
                    monitor.last_decision = format!("{outcome} to monitor pid {pid} because {why}");
                }
            }
            Action::Forget { id, cause } => {
                if let Some(monitor) = self.monitors.get_mut(id) {
                    monitor.phase = Phase::Idle;
                    monitor.forget_crashes();
                    monitor.last_decision = format!("cancelled the pending retry because {cause}");
                }
            }
        }
    }

    fn spawn(&mut self, plan: &SessionPlan, restart_stamp: Option<Hlc>, retry: bool, now: Instant) {
        let id = &plan.id;
        let session_dir = self.session_dir(id);
        let argv = self.monitor_argv(plan);
        let spec = SpawnSpec {
            session: id.clone(),
            argv: argv.clone(),
            session_dir: session_dir.clone(),
            env: vec![
                ("GEOREP_SESSION".into(), id.dir_name()),
                ("GEOREP_NODE".into(), self.node_id.clone()),
                (
                    "GEOREP_SESSION_DIR".into(),
                    session_dir.to_string_lossy().into_owned(),
                ),
            ],
        };
        // The pid file must land somewhere even before the agent's directory sync ran.
        let spawned = fs::create_dir_all(&session_dir)
            .map_err(|source| SuperviseError::SessionDir {
                path: session_dir.clone(),
                source,
            })
            .and_then(|()| self.backend.spawn(&spec));
        // Read right after spawn returned, i.e. after the exec (std reports exec failure
        // through a pipe before returning), so the process already leads its session.
        let identity = spawned
            .as_ref()
            .ok()
            .and_then(|pid| self.backend.identity(*pid));
        let Some(monitor) = self.monitors.get_mut(id) else {
            return;
        };
        match spawned {
            Ok(pid) => {
                // No identity means it already died; the reaper will say how. Recording
                // tick 0 keeps a later agent from ever adopting the pid.
                let identity = identity.unwrap_or(ProcessIdentity {
                    start_ticks: 0,
                    process_session: pid,
                });
                let record = PidRecord {
                    session: id.clone(),
                    pid,
                    start_ticks: identity.start_ticks,
                    argv,
                    restart_stamp: restart_stamp.clone(),
                };
                write_pid_file(&session_dir.join(PID_FILE), &record);
                monitor.phase = Phase::Running {
                    process: Process {
                        pid,
                        identity,
                        adopted: false,
                        restart_stamp,
                        started: Some(now),
                    },
                    sigstopped: Some(false),
                    frozen: false,
                    looks: 0,
                };
                if std::mem::take(&mut monitor.respawn) {
                    monitor.restarts = monitor.restarts.saturating_add(1);
                }
                monitor.last_decision = match (&monitor.last_error, retry) {
                    (Some(error), true) => format!(
                        "spawned monitor pid {pid} because desired Started (retry after: {error})"
                    ),
                    _ => format!("spawned monitor pid {pid} because desired Started"),
                };
                tracing::info!(session = %id, pid, "spawned monitor");
            }
            Err(error) => {
                monitor.consecutive_crashes = monitor.consecutive_crashes.saturating_add(1);
                let delay = self.policy.backoff_for(monitor.consecutive_crashes);
                monitor.phase = Phase::Backoff { until: now + delay };
                monitor.respawn = true;
                monitor.last_error = Some(error.to_string());
                monitor.last_decision = format!(
                    "could not spawn monitor: {error}; retrying in {}",
                    secs(delay)
                );
                tracing::warn!(session = %id, %error, "could not spawn monitor; retrying in {}", secs(delay));
            }
        }
    }

    /// SIGTERM (and SIGCONT when `resume`, so a frozen monitor receives it);
    /// `restart` marks that a new monitor follows.
    fn terminate(
        &mut self,
        id: &SessionId,
        pid: u32,
        resume: bool,
        restart: bool,
        why: &str,
        now: Instant,
    ) {
        if let Some(monitor) = self.monitors.get_mut(id)
            && let Phase::Running { process, .. } =
                std::mem::replace(&mut monitor.phase, Phase::Idle)
        {
            monitor.phase = Phase::Stopping {
                process,
                since: now,
                kill_sent: false,
                restart,
            };
        }
        let (mut outcome, _) = self.signal(id, pid, MonitorSignal::Term, now);
        if resume {
            outcome = format!(
                "{outcome}, {}",
                self.signal(id, pid, MonitorSignal::Cont, now).0
            );
        }
        if let Some(monitor) = self.monitors.get_mut(id) {
            monitor.last_decision = format!("{outcome} to monitor pid {pid} {why}");
        }
    }

    /// Sends one signal; returns how it went, for the decision sentence, and whether it
    /// was sent. An adopted monitor whose group is gone has exited (nobody else will
    /// tell us).
    fn signal(
        &mut self,
        id: &SessionId,
        pid: u32,
        signal: MonitorSignal,
        now: Instant,
    ) -> (String, bool) {
        let text = match self.backend.signal_group(pid, signal) {
            Ok(()) => return (format!("sent {signal}"), true),
            Err(SuperviseError::NoSuchGroup { .. }) => {
                let adopted = self
                    .monitors
                    .get(id)
                    .and_then(Monitor::process)
                    .is_some_and(|p| p.adopted);
                if adopted {
                    self.on_exit(id, "was already gone", now);
                }
                format!("could not send {signal} (process gone)")
            }
            Err(error) => {
                tracing::warn!(session = %id, pid, %error, "cannot signal monitor");
                format!("could not send {signal} ({error})")
            }
        };
        (text, false)
    }

    /// What this node says about every session it has a plan or a monitor for.
    pub fn reports(&self) -> BTreeMap<SessionId, MonitorReport> {
        self.monitors
            .iter()
            .map(|(id, monitor)| {
                let elapsed = |since: Option<Instant>| match (self.now, since) {
                    (Some(now), Some(since)) => now.saturating_duration_since(since),
                    _ => Duration::ZERO,
                };
                let restart_stamp = match &monitor.phase {
                    Phase::Running { process, .. } => process.restart_stamp.clone(),
                    _ => None,
                };
                let backoff_remaining_ms = match (&monitor.phase, self.now) {
                    (Phase::Backoff { until }, Some(now)) => {
                        Some(millis(until.saturating_duration_since(now)))
                    }
                    _ => None,
                };
                let report = MonitorReport {
                    state: monitor.state,
                    pid: monitor.process().map(|p| p.pid),
                    restarts: monitor.restarts,
                    last_error: monitor.last_error.clone(),
                    desired_stamp: monitor.desired_stamp.clone(),
                    restart_stamp,
                    since_ms: millis(elapsed(monitor.state_since)),
                    backoff_remaining_ms,
                    last_decision: monitor.last_decision.clone(),
                };
                (id.clone(), report)
            })
            .collect()
    }

    /// When [`Self::reconcile`] must run again even if nothing else changes: a retry
    /// falls due, a kill grace expires, a crash count may reset, or running monitors
    /// must be polled for exits. `None` before the first reconcile or when idle.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let now = self.now?;
        let poll = now + self.policy.poll_interval;
        self.monitors
            .values()
            .filter_map(|monitor| match &monitor.phase {
                Phase::Idle => None,
                // A retry that is already due but was not taken (the session is paused)
                // waits for a plan change; waking for it now would spin.
                Phase::Backoff { until } => Some(*until).filter(|until| *until > now),
                // An exit is expected any moment (we signalled it): notice it soon, so
                // that a restart's new monitor follows without a poll interval's gap.
                Phase::Stopping {
                    since, kill_sent, ..
                } => Some(if *kill_sent {
                    now + STOPPING_POLL
                } else {
                    (now + STOPPING_POLL).min(*since + self.policy.kill_grace)
                }),
                // A SIGSTOP not yet seen to take effect: look again soon, then less
                // often.
                Phase::Running {
                    sigstopped: Some(true),
                    frozen: false,
                    looks,
                    ..
                } => Some(now + stop_look_delay(*looks)),
                Phase::Running { process, .. } => Some(
                    match process.started.filter(|_| monitor.consecutive_crashes > 0) {
                        Some(started) => poll.min(started + self.policy.stable_after),
                        None => poll,
                    },
                ),
            })
            .min()
    }
}

enum Skip {
    AlreadySupervised,
    Stale(String),
}

fn write_pid_file(path: &Path, record: &PidRecord) {
    let written = serde_json::to_vec_pretty(record)
        .map_err(io::Error::other)
        .and_then(|bytes| session_dir::write_atomic(path, &bytes, true));
    if let Err(error) = written {
        // The monitor runs regardless; only re-adoption after an agent restart is lost.
        tracing::warn!(file = %path.display(), %error, "cannot write pid file");
    }
}

fn remove_pid_file(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(file = %path.display(), %error, "cannot remove pid file"),
    }
}

mod adopt;

#[cfg(test)]
mod tests;
