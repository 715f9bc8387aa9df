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
    /// Sends `sig` to every process of group `pgid`; returns once it is queued, without
    /// waiting for it to take effect (see [`Self::frozen`]).
    fn signal_group(&self, pgid: u32, sig: MonitorSignal) -> Result<(), SuperviseError>;
    /// The identity of a live process; `None` when absent or a zombie.
    fn identity(&self, pid: u32) -> Option<ProcessIdentity>;
    /// Whether the monitor `pgid` is frozen: every thread of it and of its descendants
    /// stopped (or gone). A SIGSTOP takes effect only when its target next runs.
    fn frozen(&self, pgid: u32) -> bool;
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
            // Queued, not yet acted on: a target stops when it next runs. The caller
            // asks `frozen` later rather than this call waiting on a tokio worker.
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

    fn frozen(&self, pgid: u32) -> bool {
        tree_frozen(Path::new("/proc"), pgid, 0)
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

/// How deep [`tree_frozen`] follows children.
const TREE_DEPTH: usize = 8;

/// Whether process `pid` and its descendants are frozen: every thread of each stopped
/// ('T'), gone, or waiting in D for a stopped child (a `vfork` parent whose child was
/// stopped before it could exec: it stays in D until the child runs again, so it is
/// frozen too). Every thread counts: a group stop stops each thread when it next runs,
/// so a multi-threaded monitor's main thread can be stopped while a worker still runs.
fn tree_frozen(proc_root: &Path, pid: u32, depth: usize) -> bool {
    // A process that is gone has no threads; a zombie's are dead: frozen either way.
    let children = proc_children(proc_root, pid);
    let child_stopped = || {
        children
            .iter()
            .any(|c| proc_state(proc_root, *c).is_some_and(is_stopped))
    };
    // The D case reads the thread again after the child: a thread read in D while its
    // vfork child was still exec'ing (and then stopped from its own queued SIGSTOP) is
    // already runnable, not frozen. A child seen stopped cannot exec, so a thread
    // still in D after that stays in D until SIGCONT.
    let frozen_itself =
        proc_tasks(proc_root, pid)
            .iter()
            .all(|task| match task_state(proc_root, pid, *task) {
                None => true,
                Some(state) if is_stopped(state) || is_dead(state) => true,
                Some('D') => child_stopped() && task_state(proc_root, pid, *task) == Some('D'),
                Some(_) => false,
            });
    frozen_itself
        && (depth >= TREE_DEPTH
            || children
                .iter()
                .all(|c| tree_frozen(proc_root, *c, depth + 1)))
}

/// The thread ids of `pid` (`/proc/<pid>/task`).
fn proc_tasks(proc_root: &Path, pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(proc_root.join(pid.to_string()).join("task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| task.file_name().to_str()?.parse().ok())
        .collect()
}

/// The state letter of thread `task` of `pid`, if it exists.
fn task_state(proc_root: &Path, pid: u32, task: u32) -> Option<char> {
    let dir = proc_root
        .join(pid.to_string())
        .join("task")
        .join(task.to_string());
    stat_in(&dir).map(|s| s.state)
}

/// The state letter of `/proc/<pid>/stat`, if the process exists.
fn proc_state(proc_root: &Path, pid: u32) -> Option<char> {
    read_stat(proc_root, pid).map(|s| s.state)
}

/// `/proc/<pid>/stat`, parsed, if the process exists.
fn read_stat(proc_root: &Path, pid: u32) -> Option<Stat> {
    stat_in(&proc_root.join(pid.to_string()))
}

/// The `stat` file of a process's or thread's procfs directory, parsed.
fn stat_in(dir: &Path) -> Option<Stat> {
    parse_stat(&fs::read_to_string(dir.join("stat")).ok()?)
}

/// The children of every thread of `pid` (`/proc/<pid>/task/*/children`).
fn proc_children(proc_root: &Path, pid: u32) -> Vec<u32> {
    let task_dir = proc_root.join(pid.to_string()).join("task");
    proc_tasks(proc_root, pid)
        .into_iter()
        .filter_map(|task| {
            fs::read_to_string(task_dir.join(task.to_string()).join("children")).ok()
        })
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

    /// Stops and continues monitor `pid` `rounds` times and checks that the monitor is
    /// frozen whenever [`ProcessBackend::frozen`] says so, and runs after SIGCONT.
    fn stop_and_continue(backend: &RealBackend, pid: u32, rounds: usize) {
        let proc_root = Path::new("/proc");
        let states = |pid: u32| {
            proc_tasks(proc_root, pid)
                .into_iter()
                .map(|t| task_state(proc_root, pid, t))
                .collect::<Vec<_>>()
        };
        for round in 0..rounds {
            backend
                .signal_group(pid, MonitorSignal::Stop)
                .expect("SIGSTOP");
            // when each thread next runs: usually within a millisecond, on an
            // overloaded machine later (the supervisor asks again until it is)
            let sent = std::time::Instant::now();
            while !backend.frozen(pid) {
                assert!(
                    sent.elapsed() < std::time::Duration::from_secs(20),
                    "round {round}: not frozen 20 s after SIGSTOP: threads {:?}",
                    states(pid)
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            // what `frozen` said must hold: a second look finds it frozen too
            assert!(
                tree_frozen(proc_root, pid, 0),
                "round {round}: threads {:?} after frozen() said so; children {:?}",
                states(pid),
                proc_children(proc_root, pid)
                    .into_iter()
                    .map(|c| (c, states(c)))
                    .collect::<Vec<_>>()
            );
            backend
                .signal_group(pid, MonitorSignal::Cont)
                .expect("SIGCONT");
            // SIGCONT acts when sent: the kernel wakes the stopped threads then
            assert!(
                !proc_state(proc_root, pid).is_some_and(is_stopped),
                "round {round}: still stopped after SIGCONT returned"
            );
        }
    }

    /// A monitor spawned for a test, with `argv`, killed however the test ends.
    fn spawn_busy(backend: &RealBackend, dir: &Path, argv: Vec<String>) -> (u32, GroupGuard) {
        let spec = SpawnSpec {
            session: SessionId::parse("gv0", "n4::gv1").expect("session id"),
            argv,
            session_dir: dir.to_path_buf(),
            env: vec![(BUSY_THREADS_CHILD.to_string(), "1".to_string())],
        };
        let pid = backend.spawn(&spec).expect("spawn the busy child");
        (pid, GroupGuard(pid))
    }

    /// `pause` confirms once the supervisor reports the monitor Paused, and the
    /// supervisor reports that when [`ProcessBackend::frozen`] says so: so then the
    /// monitor must be stopped, not merely have a SIGSTOP queued. Real child, real
    /// signals; the child keeps forking so that it is often asleep or running when
    /// signalled (and sometimes in `vfork`).
    #[test]
    fn a_stopped_group_is_stopped_whenever_frozen_says_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = RealBackend::new();
        let argv = [
            "sh",
            "-c",
            "while :; do cat /proc/self/stat > /dev/null; done",
        ];
        let (pid, _guard) = spawn_busy(&backend, dir.path(), argv.map(String::from).to_vec());
        stop_and_continue(&backend, pid, 300);
    }

    /// Set in the environment of the child [`busy_threads_child`] runs in.
    const BUSY_THREADS_CHILD: &str = "GEOREP_TEST_BUSY_THREADS_CHILD";

    /// The same for a multi-threaded monitor (the built-in one is): every thread must
    /// be stopped, not only the main one. The child is this test binary running
    /// [`busy_threads_child`].
    #[test]
    fn a_stopped_multi_threaded_monitor_has_every_thread_stopped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = RealBackend::new();
        let exe = std::env::current_exe().expect("test binary path");
        let argv = vec![
            exe.to_string_lossy().into_owned(),
            "--exact".to_string(),
            "process::backend::tests::busy_threads_child".to_string(),
            "--ignored".to_string(),
            "--test-threads=1".to_string(),
            "-q".to_string(),
        ];
        let (pid, _guard) = spawn_busy(&backend, dir.path(), argv);
        let started = std::time::Instant::now();
        while proc_tasks(Path::new("/proc"), pid).len() < 4 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "the busy child never started its threads"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        stop_and_continue(&backend, pid, 200);
    }

    /// Not a test: the child of [`a_stopped_multi_threaded_monitor_has_every_thread_stopped`].
    /// Four threads busy with system calls for at most 60 s; returns at once unless
    /// started by that test.
    #[test]
    #[ignore = "the child process of a_stopped_multi_threaded_monitor_has_every_thread_stopped"]
    fn busy_threads_child() {
        if std::env::var_os(BUSY_THREADS_CHILD).is_none() {
            return;
        }
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let spin = move || {
            while std::time::Instant::now() < end {
                let _ = fs::read_to_string("/proc/self/stat");
            }
        };
        let threads: Vec<_> = (0..3).map(|_| std::thread::spawn(spin)).collect();
        spin();
        for thread in threads {
            let _ = thread.join();
        }
    }
}
