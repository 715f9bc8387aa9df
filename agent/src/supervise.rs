//! Applying the reconciler's decisions to monitor processes, real or simulated.
//!
//! A [`Supervisor`] owns the per-session monitor state and a [`ProcessBackend`]. Each
//! [`Supervisor::reconcile`] first learns which monitors exited, then asks
//! [`crate::reconcile::decide`] what to do and does it: spawn (recording
//! `monitor.pid`), SIGTERM / SIGKILL / SIGSTOP / SIGCONT the monitor's process group,
//! and retry crashed monitors after a capped exponential backoff. Time is injected
//! (`now`), so the same code runs under the simulator's virtual clock with
//! [`FakeBackend`], and for real with [`RealBackend`].
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
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use georep_mesh::hlc::Hlc;
use georep_mesh::state::{DesiredState, SessionId};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getpgrp};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::monitor_command::{MonitorCommand, Placeholder};
use crate::reconcile::{self, Action, DecidePolicy, ObservedMonitor, SessionPlan};
use crate::session_dir::{self, CONFIG_FILE, LOG_FILE, PID_FILE};

/// How often a monitor we signalled to stop is checked for its exit (it is expected
/// any moment; a restart's new monitor starts as soon as the old one is gone).
const STOPPING_POLL: Duration = Duration::from_millis(50);

/// A signal the supervisor sends to a monitor's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MonitorSignal {
    /// SIGTERM: please exit.
    Term,
    /// SIGKILL: exit now.
    Kill,
    /// SIGSTOP: freeze (pause).
    Stop,
    /// SIGCONT: thaw (resume).
    Cont,
}

impl MonitorSignal {
    fn to_nix(self) -> Signal {
        match self {
            MonitorSignal::Term => Signal::SIGTERM,
            MonitorSignal::Kill => Signal::SIGKILL,
            MonitorSignal::Stop => Signal::SIGSTOP,
            MonitorSignal::Cont => Signal::SIGCONT,
        }
    }
}

impl fmt::Display for MonitorSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_nix().as_str())
    }
}

/// How to start one monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnSpec {
    /// The session it serves.
    pub session: SessionId,
    /// Program and arguments, placeholders already substituted.
    pub argv: Vec<String>,
    /// The session directory (`monitor.log` goes there).
    pub session_dir: PathBuf,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// What tells one process apart from a later one that reuses its pid. Neither field
/// changes when the process execs, unlike its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// Start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    pub start_ticks: u64,
    /// The session id of the process (field 6 of `/proc/<pid>/stat`): a monitor leads
    /// its own session, so this is its own pid.
    pub process_session: u32,
}

/// A monitor process that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitNotice {
    /// Its pid.
    pub pid: u32,
    /// How it ended, e.g. "exited with status 1" or "killed by signal 9".
    pub reason: String,
}

/// Why a process operation failed. None of them changes the supervisor's state by
/// itself: a failed spawn goes through the crash backoff, a failed signal is reported
/// in the session's last decision and retried by the next level-triggered round.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The monitor command is empty; nothing was started.
    #[error("the monitor command is empty; set --monitor-command in the agent configuration")]
    EmptyCommand,
    /// The session directory or its log could not be prepared; nothing was started.
    #[error("cannot prepare {}: {source}", path.display())]
    SessionDir {
        /// The directory or file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The program could not be executed; nothing was started.
    #[error("cannot start monitor `{program}` for {session}: {source}")]
    Spawn {
        /// The session.
        session: String,
        /// The program that was to run.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The process group does not exist (any more); nothing was signalled.
    #[error("process group {pgid} does not exist")]
    NoSuchGroup {
        /// The group.
        pgid: u32,
    },
    /// The group id would hit init, the agent itself or every process; nothing was
    /// signalled.
    #[error("refusing to signal process group {pgid}")]
    UnsafeGroup {
        /// The group.
        pgid: u32,
    },
    /// The kernel refused the signal; nothing was signalled.
    #[error("cannot send {signal} to process group {pgid}: {errno}")]
    Signal {
        /// The group.
        pgid: u32,
        /// The signal.
        signal: MonitorSignal,
        /// The kernel's answer.
        errno: Errno,
    },
}

/// Starting, signalling and observing monitor processes.
pub trait ProcessBackend: Send + Sync + 'static {
    /// Starts a process as the leader of a new session and process group (`setsid`), so
    /// that it survives the agent; returns its pid.
    fn spawn(&self, spec: &SpawnSpec) -> Result<u32, SuperviseError>;
    /// Sends `sig` to every process of group `pgid`.
    fn signal_group(&self, pgid: u32, sig: MonitorSignal) -> Result<(), SuperviseError>;
    /// The identity of a live process; `None` when absent or a zombie.
    fn identity(&self, pid: u32) -> Option<ProcessIdentity>;
    /// Exits of processes this backend spawned, since the last call. Processes it did
    /// not spawn (adopted ones) are never reported here: poll [`Self::identity`].
    fn try_reap(&self) -> Vec<ExitNotice>;
}

/// How an exit status reads in reports.
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(signal) = status.signal() {
        format!("killed by signal {signal}")
    } else {
        status.to_string()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent even if a holder panicked mid-way.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Real processes: std `Command` in a new session (`setsid`), signals through `killpg`,
/// identities from `/proc`.
#[derive(Debug, Default)]
pub struct RealBackend {
    children: Mutex<BTreeMap<u32, Child>>,
}

impl RealBackend {
    /// A backend with no children yet.
    pub fn new() -> Self {
        Self::default()
    }
}

impl ProcessBackend for RealBackend {
    fn spawn(&self, spec: &SpawnSpec) -> Result<u32, SuperviseError> {
        let (program, args) = spec
            .argv
            .split_first()
            .ok_or(SuperviseError::EmptyCommand)?;
        let prepare = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SuperviseError::SessionDir { path, source }
        };
        fs::create_dir_all(&spec.session_dir).map_err(prepare(&spec.session_dir))?;
        let log_path = spec.session_dir.join(LOG_FILE);
        let stdout = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(prepare(&log_path))?;
        let stderr = stdout.try_clone().map_err(prepare(&log_path))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        in_new_session(&mut command);
        let child = command.spawn().map_err(|source| SuperviseError::Spawn {
            session: spec.session.to_string(),
            program: program.clone(),
            source,
        })?;
        let pid = child.id();
        lock(&self.children).insert(pid, child);
        Ok(pid)
    }

    fn signal_group(&self, pgid: u32, sig: MonitorSignal) -> Result<(), SuperviseError> {
        let raw = i32::try_from(pgid)
            .ok()
            .filter(|raw| *raw > 1 && *raw != getpgrp().as_raw())
            .ok_or(SuperviseError::UnsafeGroup { pgid })?;
        match killpg(Pid::from_raw(raw), sig.to_nix()) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => Err(SuperviseError::NoSuchGroup { pgid }),
            Err(errno) => Err(SuperviseError::Signal {
                pgid,
                signal: sig,
                errno,
            }),
        }
    }

    fn identity(&self, pid: u32) -> Option<ProcessIdentity> {
        proc_identity(Path::new("/proc"), pid)
    }

    fn try_reap(&self) -> Vec<ExitNotice> {
        let mut exits = Vec::new();
        lock(&self.children).retain(|pid, child| match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                exits.push(ExitNotice {
                    pid: *pid,
                    reason: describe_exit(status),
                });
                false
            }
            Err(error) => {
                exits.push(ExitNotice {
                    pid: *pid,
                    reason: format!("could not be waited for: {error}"),
                });
                false
            }
        });
        exits
    }
}

/// Makes `command`'s child call `setsid()` before it execs: it leads a new session and
/// process group (pgid = sid = its pid), outside the agent's session. When the agent
/// dies its process group is then never "orphaned with stopped members" by that death
/// (the kernel only checks groups in the dying parent's session), so a paused monitor
/// is not sent SIGHUP + SIGCONT, and no terminal's hang-up reaches it.
#[allow(unsafe_code)]
fn in_new_session(command: &mut Command) {
    // SAFETY: `pre_exec` runs the closure in the forked child before exec, where only
    // async-signal-safe calls are sound. The closure calls setsid(2), which POSIX lists
    // as async-signal-safe, through nix's thin wrapper (no allocation, no lock), and
    // turns its errno into an `io::Error` by value (`from_raw_os_error` does not
    // allocate). It touches no memory shared with the parent. setsid cannot fail here:
    // the fresh child is not a process group leader.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(|errno| io::Error::from_raw_os_error(errno as i32))
        });
    }
}

/// Reads a process's identity under a procfs mount (`/proc` outside tests).
pub fn proc_identity(proc_root: &Path, pid: u32) -> Option<ProcessIdentity> {
    let stat = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let stat = parse_stat(&stat)?;
    if matches!(stat.state, 'Z' | 'X' | 'x') {
        return None;
    }
    Some(ProcessIdentity {
        start_ticks: stat.start_ticks,
        process_session: stat.process_session,
    })
}

/// The fields of a `/proc/<pid>/stat` line that identify a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// Field 3.
    state: char,
    /// Field 6.
    process_session: u32,
    /// Field 22.
    start_ticks: u64,
}

fn parse_stat(stat: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may itself contain spaces and
    // parentheses; everything after the last ')' is well-formed.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let process_session = fields.nth(2)?.parse().ok()?;
    let start_ticks = fields.nth(15)?.parse().ok()?;
    Some(Stat {
        state,
        process_session,
        start_ticks,
    })
}

/// In-memory processes for tests and the simulator: pids, recorded signals, crashes
/// and monitors that ignore SIGTERM on demand.
#[derive(Debug)]
pub struct FakeBackend {
    world: Mutex<FakeWorld>,
}

#[derive(Debug)]
struct FakeWorld {
    next_pid: u32,
    next_ticks: u64,
    processes: BTreeMap<u32, FakeProcess>,
    exits: Vec<ExitNotice>,
    signals: Vec<(u32, MonitorSignal)>,
    spawned: Vec<(u32, SpawnSpec)>,
    failing_spawns: u32,
}

#[derive(Debug, Clone)]
struct FakeProcess {
    identity: ProcessIdentity,
    stopped: bool,
    term_pending: bool,
    ignores_term: bool,
    /// Only our own children can be waited for; others just vanish.
    child: bool,
}

impl FakeWorld {
    fn end(&mut self, pid: u32, reason: String) {
        if let Some(process) = self.processes.remove(&pid)
            && process.child
        {
            self.exits.push(ExitNotice { pid, reason });
        }
    }
}

impl Default for FakeBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeBackend {
    /// An empty process table; pids start at 1000.
    pub fn new() -> Self {
        Self {
            world: Mutex::new(FakeWorld {
                next_pid: 1000,
                next_ticks: 1,
                processes: BTreeMap::new(),
                exits: Vec::new(),
                signals: Vec::new(),
                spawned: Vec::new(),
                failing_spawns: 0,
            }),
        }
    }

    /// Makes `pid` exit on its own with `reason` (e.g. "exited with status 1").
    pub fn crash(&self, pid: u32, reason: &str) {
        lock(&self.world).end(pid, reason.to_string());
    }

    /// Makes `pid` ignore SIGTERM, so only SIGKILL ends it.
    pub fn ignore_sigterm(&self, pid: u32) {
        if let Some(process) = lock(&self.world).processes.get_mut(&pid) {
            process.ignores_term = true;
        }
    }

    /// Makes the next `count` spawns fail.
    pub fn fail_next_spawns(&self, count: u32) {
        lock(&self.world).failing_spawns = count;
    }

    /// Starts a process this backend will not report exits of, as if a previous agent
    /// had started it (leading its own session); returns its pid and identity.
    pub fn start_foreign(&self) -> (u32, ProcessIdentity) {
        let mut world = lock(&self.world);
        let pid = world.next_pid;
        world.next_pid += 1;
        let identity = ProcessIdentity {
            start_ticks: world.next_ticks,
            process_session: pid,
        };
        world.next_ticks += 1;
        world.processes.insert(
            pid,
            FakeProcess {
                identity,
                stopped: false,
                term_pending: false,
                ignores_term: false,
                child: false,
            },
        );
        (pid, identity)
    }

    /// Simulates the agent dying: its children become processes it cannot wait for,
    /// and exits not yet reaped are lost.
    pub fn orphan_all(&self) {
        let mut world = lock(&self.world);
        for process in world.processes.values_mut() {
            process.child = false;
        }
        world.exits.clear();
    }

    /// Every signal delivered so far, in order.
    pub fn signals(&self) -> Vec<(u32, MonitorSignal)> {
        lock(&self.world).signals.clone()
    }

    /// Every successful spawn so far, with its pid.
    pub fn spawned(&self) -> Vec<(u32, SpawnSpec)> {
        lock(&self.world).spawned.clone()
    }

    /// Pids of live processes.
    pub fn alive(&self) -> Vec<u32> {
        lock(&self.world).processes.keys().copied().collect()
    }

    /// Whether `pid` is frozen by SIGSTOP (`None` if it is not alive).
    pub fn is_stopped(&self, pid: u32) -> Option<bool> {
        lock(&self.world).processes.get(&pid).map(|p| p.stopped)
    }
}

impl ProcessBackend for FakeBackend {
    fn spawn(&self, spec: &SpawnSpec) -> Result<u32, SuperviseError> {
        let program = spec.argv.first().ok_or(SuperviseError::EmptyCommand)?;
        let mut world = lock(&self.world);
        if world.failing_spawns > 0 {
            world.failing_spawns -= 1;
            return Err(SuperviseError::Spawn {
                session: spec.session.to_string(),
                program: program.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "No such file or directory"),
            });
        }
        let pid = world.next_pid;
        world.next_pid += 1;
        let identity = ProcessIdentity {
            start_ticks: world.next_ticks,
            process_session: pid,
        };
        world.next_ticks += 1;
        world.processes.insert(
            pid,
            FakeProcess {
                identity,
                stopped: false,
                term_pending: false,
                ignores_term: false,
                child: true,
            },
        );
        world.spawned.push((pid, spec.clone()));
        Ok(pid)
    }

    fn signal_group(&self, pgid: u32, sig: MonitorSignal) -> Result<(), SuperviseError> {
        let mut world = lock(&self.world);
        let Some(process) = world.processes.get_mut(&pgid) else {
            return Err(SuperviseError::NoSuchGroup { pgid });
        };
        // A stopped process keeps SIGTERM pending until SIGCONT, as the kernel does.
        let ends = match sig {
            MonitorSignal::Term if process.ignores_term => None,
            MonitorSignal::Term if process.stopped => {
                process.term_pending = true;
                None
            }
            MonitorSignal::Term => Some("killed by signal 15"),
            MonitorSignal::Kill => Some("killed by signal 9"),
            MonitorSignal::Stop => {
                process.stopped = true;
                None
            }
            MonitorSignal::Cont => {
                process.stopped = false;
                (process.term_pending && !process.ignores_term).then_some("killed by signal 15")
            }
        };
        world.signals.push((pgid, sig));
        if let Some(reason) = ends {
            world.end(pgid, reason.to_string());
        }
        Ok(())
    }

    fn identity(&self, pid: u32) -> Option<ProcessIdentity> {
        lock(&self.world).processes.get(&pid).map(|p| p.identity)
    }

    fn try_reap(&self) -> Vec<ExitNotice> {
        std::mem::take(&mut lock(&self.world).exits)
    }
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

/// The state of a session's monitor on this node, as gossiped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MonitorState {
    /// Running as desired.
    Started,
    /// Frozen by SIGSTOP as desired (or desired Paused with nothing to freeze).
    Paused,
    /// No monitor, as desired.
    Stopped,
    /// Crashed `faulty_after` times in a row without running stably since.
    Faulty,
    /// Desired Started, not running yet (retry pending, or the previous one exiting
    /// for a restart).
    Starting,
    /// Asked to exit, not gone yet.
    Stopping,
    /// This node hosts no brick of the primary volume: nothing to run here.
    NotPrimary,
}

impl fmt::Display for MonitorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What this node says about one session's monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorReport {
    /// Current state.
    pub state: MonitorState,
    /// Pid (= process group) of the monitor, while one exists.
    pub pid: Option<u32>,
    /// How often the monitor was started again (after crashes or for restart stamps)
    /// since the session was last started.
    pub restarts: u32,
    /// Last unexpected exit or spawn failure.
    pub last_error: Option<String>,
    /// The plan's desired stamp last acted on.
    pub desired_stamp: Option<Hlc>,
    /// The restart stamp the running monitor was started for.
    pub restart_stamp: Option<Hlc>,
    /// Milliseconds since `state` was entered.
    pub since_ms: u64,
    /// Time left before the next retry, while one is pending.
    pub backoff_remaining_ms: Option<u64>,
    /// The last decision taken for the session, as a sentence.
    pub last_decision: String,
}

impl MonitorReport {
    /// The word for `monitor.status`: Started, Paused and Faulty as they are; otherwise
    /// the desired state (transitions and non-primary nodes show what is wanted).
    pub fn status_word(&self, desired: DesiredState) -> String {
        match self.state {
            MonitorState::Started | MonitorState::Paused | MonitorState::Faulty => {
                self.state.to_string()
            }
            _ => desired.to_string(),
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

fn wants_run(plan: Option<&SessionPlan>) -> bool {
    plan.is_some_and(|p| p.is_primary() && p.desired == DesiredState::Started)
}

fn wants_frozen(plan: Option<&SessionPlan>) -> bool {
    plan.is_some_and(|p| p.is_primary() && p.desired == DesiredState::Paused)
}

fn state_of(monitor: &Monitor, plan: Option<&SessionPlan>, faulty_after: u32) -> MonitorState {
    let faulty = monitor.consecutive_crashes >= faulty_after;
    match &monitor.phase {
        Phase::Running {
            sigstopped: Some(true),
            ..
        } => MonitorState::Paused,
        Phase::Running { .. } if faulty => MonitorState::Faulty,
        Phase::Running { .. } => MonitorState::Started,
        Phase::Stopping { .. } if wants_run(plan) => MonitorState::Starting,
        Phase::Stopping { .. } => MonitorState::Stopping,
        Phase::Backoff { .. } if wants_frozen(plan) => MonitorState::Paused,
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

fn secs(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{:.3}s", duration.as_secs_f64())
    }
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
        }
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

    /// Takes over monitors left running by an earlier agent, from their pid files.
    ///
    /// A pid file is honoured only if it names the session whose directory holds it
    /// (and, if a known session lives there, that one) and its process is alive with the
    /// recorded start time, leading its own session; otherwise (or if unreadable) it is
    /// removed and nothing is signalled. An adopted monitor no plan requires is stopped
    /// by the next [`Self::reconcile`].
    pub fn adopt(&mut self, known: &[SessionId]) {
        let entries = match fs::read_dir(&self.sessions_root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return,
            Err(error) => {
                tracing::warn!(dir = %self.sessions_root.display(), %error, "cannot list session directories; no monitor adopted");
                return;
            }
        };
        for entry in entries.flatten() {
            let Some(dir_name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let pid_path = entry.path().join(PID_FILE);
            let text = match fs::read_to_string(&pid_path) {
                Ok(text) => text,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => {
                    tracing::warn!(file = %pid_path.display(), %error, "cannot read pid file");
                    continue;
                }
            };
            match self.check_pid_record(&dir_name, &text, known) {
                Ok((id, record)) => {
                    tracing::info!(session = %id, pid = record.pid, "adopted running monitor");
                    let mut monitor = Monitor::new(self.now);
                    monitor.last_decision = format!(
                        "adopted monitor pid {} left running by an earlier agent",
                        record.pid
                    );
                    monitor.phase = Phase::Running {
                        process: Process {
                            pid: record.pid,
                            identity: record.identity(),
                            adopted: true,
                            restart_stamp: record.restart_stamp,
                            started: self.now,
                        },
                        sigstopped: None,
                    };
                    self.monitors.insert(id, monitor);
                }
                Err(Skip::AlreadySupervised) => {}
                Err(Skip::Stale(why)) => {
                    tracing::info!(file = %pid_path.display(), "removing stale pid file: {why}");
                    remove_pid_file(&pid_path);
                }
            }
        }
    }

    fn check_pid_record(
        &self,
        dir_name: &str,
        text: &str,
        known: &[SessionId],
    ) -> Result<(SessionId, PidRecord), Skip> {
        let record: PidRecord = serde_json::from_str(text)
            .map_err(|error| Skip::Stale(format!("unreadable: {error}")))?;
        if record.session.dir_name() != dir_name {
            return Err(Skip::Stale(format!(
                "it names session {} whose directory is {}, not {dir_name}",
                record.session,
                record.session.dir_name()
            )));
        }
        if let Some(other) = known
            .iter()
            .find(|id| id.dir_name() == dir_name && **id != record.session)
        {
            return Err(Skip::Stale(format!(
                "it names session {} but {dir_name} belongs to {other}",
                record.session
            )));
        }
        let id = record.session.clone();
        if self
            .monitors
            .get(&id)
            .is_some_and(|m| m.process().is_some())
        {
            return Err(Skip::AlreadySupervised);
        }
        if record.pid <= 1 || record.start_ticks == 0 {
            return Err(Skip::Stale(format!(
                "pid {} (start tick {}) is not a monitor",
                record.pid, record.start_ticks
            )));
        }
        let recorded = record.identity();
        match self.backend.identity(record.pid) {
            None => Err(Skip::Stale(format!("pid {} is not running", record.pid))),
            Some(found) if found != recorded => Err(Skip::Stale(format!(
                "pid {} is now another process (started at tick {} in session {}; recorded: tick {}, leading its own session)",
                record.pid, found.start_ticks, found.process_session, recorded.start_ticks
            ))),
            Some(_) => Ok((id, record)),
        }
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
            self.apply(action, plans, now);
        }
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
                } => ObservedMonitor::Running {
                    pid: process.pid,
                    // Unknown after adoption: assume the opposite of what the plan wants
                    // so that the matching SIGSTOP/SIGCONT, harmless if redundant, is sent.
                    sigstopped: sigstopped.unwrap_or_else(|| !wants_frozen(plans.get(id))),
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
                let outcome = self.signal(id, *pid, MonitorSignal::Kill, now);
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
                let outcome = self.signal(id, *pid, signal, now);
                if let Some(monitor) = self.monitors.get_mut(id) {
                    if let Phase::Running { sigstopped, .. } = &mut monitor.phase {
                        *sigstopped = Some(frozen);
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
        let mut outcome = self.signal(id, pid, MonitorSignal::Term, now);
        if resume {
            outcome = format!(
                "{outcome}, {}",
                self.signal(id, pid, MonitorSignal::Cont, now)
            );
        }
        if let Some(monitor) = self.monitors.get_mut(id) {
            monitor.last_decision = format!("{outcome} to monitor pid {pid} {why}");
        }
    }

    /// Sends one signal; returns how it went, for the decision sentence. An adopted
    /// monitor whose group is gone has exited (nobody else will tell us).
    fn signal(&mut self, id: &SessionId, pid: u32, signal: MonitorSignal, now: Instant) -> String {
        match self.backend.signal_group(pid, signal) {
            Ok(()) => format!("sent {signal}"),
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
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        MonitorCommand::parse("georepd monitor --session-dir {session_dir} --bricks {bricks}")
            .unwrap()
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

    fn proc_state(pid: u32) -> Option<char> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat(&stat).map(|stat| stat.state)
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
            error.contains(
                "cannot start monitor `/nonexistent/georep-monitor` for gv0 -> geo@n4::gv1"
            ),
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

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let line = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                process_session: 42,
                start_ticks: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }
}
