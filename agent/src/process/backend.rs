//! Monitor processes as the supervisor sees them: the [`ProcessBackend`] trait (spawn,
//! signal a process group, identify a pid, reap), the real one ([`RealBackend`]: fork
//! into a new session, `killpg`, `/proc/PID/stat`) and the identity rule: a process is
//! a recorded monitor when its pid and start time match and it still leads the session
//! it was started in (its command line is not part of its identity; exec changes it).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};

use georep_mesh::SessionId;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getpgrp};
use serde::{Deserialize, Serialize};

use crate::session_dir::LOG_FILE;

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

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
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
            Ok(()) => {
                await_stop_state(Path::new("/proc"), pgid, sig);
                Ok(())
            }
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

/// How long [`await_stop_state`] waits for the kernel to act on a SIGSTOP or SIGCONT.
const STOP_STATE_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Waits, briefly and bounded, until the monitor `pgid` shows the state `sig` asks for:
/// after SIGSTOP, it and its descendants frozen ([`tree_frozen`]; a group that is gone
/// counts); after SIGCONT, the leader no longer stopped. `killpg` returns when the
/// signal is queued; a target stops only when it next runs (one in D state only when it
/// leaves it), which on a loaded machine can come after the supervisor has reported it
/// Paused and `pause` has confirmed. When the wait runs out, the report rests on the
/// signal alone, as before.
fn await_stop_state(proc_root: &Path, pgid: u32, sig: MonitorSignal) {
    let reached = || match sig {
        MonitorSignal::Stop => tree_frozen(proc_root, pgid, 0),
        MonitorSignal::Cont => !proc_state(proc_root, pgid).is_some_and(is_stopped),
        MonitorSignal::Term | MonitorSignal::Kill => true,
    };
    let deadline = std::time::Instant::now() + STOP_STATE_WAIT;
    while !reached() {
        if std::time::Instant::now() >= deadline {
            tracing::debug!(pgid, signal = %sig, "monitor not yet in the state its signal asks for");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// How deep [`tree_frozen`] follows children.
const TREE_DEPTH: usize = 8;

/// Whether process `pid` and its descendants are frozen: each stopped ('T'), gone, or
/// waiting in D for a stopped child (a `vfork` parent whose child was stopped before it
/// could exec: it stays in D until the child runs again, so it is frozen too).
fn tree_frozen(proc_root: &Path, pid: u32, depth: usize) -> bool {
    let Some(state) = proc_state(proc_root, pid).filter(|s| !is_dead(*s)) else {
        return true;
    };
    let children = proc_children(proc_root, pid);
    // The D case reads the parent again after its child: a parent read in D while
    // its vfork child was still exec'ing (and then stopped from its own queued
    // SIGSTOP) is already runnable, not frozen. A child seen stopped cannot exec, so a
    // parent still in D after that stays in D until SIGCONT.
    let frozen_itself = is_stopped(state)
        || (state == 'D'
            && children
                .iter()
                .any(|c| proc_state(proc_root, *c).is_some_and(is_stopped))
            && proc_state(proc_root, pid) == Some('D'));
    frozen_itself
        && (depth >= TREE_DEPTH
            || children
                .iter()
                .all(|c| tree_frozen(proc_root, *c, depth + 1)))
}

/// The state letter of `/proc/<pid>/stat`, if the process exists.
fn proc_state(proc_root: &Path, pid: u32) -> Option<char> {
    read_stat(proc_root, pid).map(|s| s.state)
}

/// `/proc/<pid>/stat`, parsed, if the process exists.
fn read_stat(proc_root: &Path, pid: u32) -> Option<Stat> {
    let stat = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&stat)
}

/// The children of every thread of `pid` (`/proc/<pid>/task/*/children`).
fn proc_children(proc_root: &Path, pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(proc_root.join(pid.to_string()).join("task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn is_stopped(state: char) -> bool {
    matches!(state, 'T' | 't')
}

fn is_dead(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
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
    let stat = read_stat(proc_root, pid)?;
    if is_dead(stat.state) {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Kills a test's process group however the test ends.
    struct GroupGuard(u32);

    impl Drop for GroupGuard {
        fn drop(&mut self) {
            let _ = killpg(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
        }
    }

    /// `pause` confirms once the supervisor reports the monitor Paused, and the
    /// supervisor reports that when `signal_group` returns: so by then the monitor must
    /// be stopped, not merely have a SIGSTOP queued. Real child, real signals; the
    /// child keeps forking so that it is often asleep or running when signalled.
    #[test]
    fn a_stopped_group_is_stopped_when_the_signal_call_returns() {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = RealBackend::new();
        let spec = SpawnSpec {
            session: SessionId::parse("gv0", "n4::gv1").expect("session id"),
            argv: [
                "sh",
                "-c",
                "while :; do cat /proc/self/stat > /dev/null; done",
            ]
            .map(String::from)
            .to_vec(),
            session_dir: dir.path().to_path_buf(),
            env: Vec::new(),
        };
        let pid = backend.spawn(&spec).expect("spawn the busy child");
        let _guard = GroupGuard(pid);
        for round in 0..300 {
            backend
                .signal_group(pid, MonitorSignal::Stop)
                .expect("SIGSTOP");
            assert!(
                tree_frozen(Path::new("/proc"), pid, 0),
                "round {round}: {:?} after SIGSTOP returned; children {:?}",
                proc_state(Path::new("/proc"), pid),
                proc_children(Path::new("/proc"), pid)
                    .into_iter()
                    .map(|c| (c, proc_state(Path::new("/proc"), c)))
                    .collect::<Vec<_>>()
            );
            backend
                .signal_group(pid, MonitorSignal::Cont)
                .expect("SIGCONT");
            assert!(
                !proc_state(Path::new("/proc"), pid).is_some_and(is_stopped),
                "round {round}: still stopped after SIGCONT returned"
            );
        }
    }
}
