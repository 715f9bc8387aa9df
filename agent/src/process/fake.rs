//! In-memory monitor processes for the agent's unit tests and the simulator (feature
//! `testing`): pids, recorded signals, crashes and monitors that ignore SIGTERM.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use super::backend::{
    ExitNotice, MonitorSignal, ProcessBackend, ProcessIdentity, SpawnSpec, SuperviseError, lock,
};

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
    /// SIGSTOP takes effect only at [`FakeBackend::settle_stops`].
    stops_lag: bool,
}

#[derive(Debug, Clone)]
struct FakeProcess {
    identity: ProcessIdentity,
    stopped: bool,
    /// A SIGSTOP took effect (see [`FakeBackend::lag_stops`]).
    frozen: bool,
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
                stops_lag: false,
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
                frozen: false,
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

    /// From now on a SIGSTOP takes effect only at the next [`Self::settle_stops`], as
    /// on a loaded machine where the target has not run since the signal.
    pub fn lag_stops(&self) {
        lock(&self.world).stops_lag = true;
    }

    /// Makes every SIGSTOP sent so far take effect.
    pub fn settle_stops(&self) {
        for process in lock(&self.world).processes.values_mut() {
            process.frozen = process.stopped;
        }
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
                frozen: false,
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
        let stops_lag = world.stops_lag;
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
                process.frozen = !stops_lag;
                None
            }
            MonitorSignal::Cont => {
                process.stopped = false;
                process.frozen = false;
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

    fn frozen(&self, pgid: u32) -> bool {
        lock(&self.world)
            .processes
            .get(&pgid)
            .is_none_or(|p| p.stopped && p.frozen)
    }

    fn try_reap(&self) -> Vec<ExitNotice> {
        std::mem::take(&mut lock(&self.world).exits)
    }
}
