//! Simulated monitor processes: the agent's [`FakeBackend`], indexed by session.
//!
//! The agent's supervisor sees only the [`ProcessBackend`] trait, so it runs unchanged.
//! The simulator additionally needs to know which session each fake process serves
//! (to check that the running monitors are exactly the required ones), to crash or
//! hang a session's monitor on command, and, for tests of the checker itself, to
//! misbehave on purpose ([`Bug`]).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use georep_agent::{
    ExitNotice, FakeBackend, MonitorSignal, ProcessBackend, ProcessIdentity, SpawnSpec,
    SuperviseError,
};
use georep_mesh::SessionId;

/// A deliberate defect of the simulated processes, to prove the checker can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Bug {
    /// SIGTERM and SIGKILL are reported delivered but the monitor keeps running: a
    /// stopped or deleted session leaves a monitor behind.
    LeakMonitors,
}

/// One live simulated monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveMonitor {
    /// Its pid (= process group).
    pub pid: u32,
    /// Whether it is frozen by SIGSTOP.
    pub stopped: bool,
}

/// The process table of one simulated host.
#[derive(Debug)]
pub struct SimBackend {
    inner: FakeBackend,
    sessions: Mutex<BTreeMap<u32, SessionId>>,
    bug: Option<Bug>,
}

impl SimBackend {
    /// An empty host, optionally with a defect.
    pub fn new(bug: Option<Bug>) -> Self {
        Self {
            inner: FakeBackend::new(),
            sessions: Mutex::new(BTreeMap::new()),
            bug,
        }
    }

    fn sessions(&self) -> MutexGuard<'_, BTreeMap<u32, SessionId>> {
        // Plain data; a panic elsewhere cannot leave it half-written.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live monitors per session (frozen ones included).
    pub fn monitors(&self) -> BTreeMap<SessionId, Vec<LiveMonitor>> {
        let mut sessions = self.sessions();
        sessions.retain(|pid, _| self.inner.is_stopped(*pid).is_some());
        let mut out: BTreeMap<SessionId, Vec<LiveMonitor>> = BTreeMap::new();
        for (pid, session) in sessions.iter() {
            if let Some(stopped) = self.inner.is_stopped(*pid) {
                out.entry(session.clone())
                    .or_default()
                    .push(LiveMonitor { pid: *pid, stopped });
            }
        }
        out
    }

    /// Makes the monitor of `session` exit on its own; returns its pid if one ran.
    pub fn crash_monitor(&self, session: &SessionId) -> Option<u32> {
        let pid = self.first_live(session)?;
        self.inner
            .crash(pid, "exited with status 1 (simulated crash)");
        Some(pid)
    }

    /// Makes the monitor of `session` ignore SIGTERM (a hung monitor that only SIGKILL
    /// ends); returns its pid if one ran.
    pub fn hang_monitor(&self, session: &SessionId) -> Option<u32> {
        let pid = self.first_live(session)?;
        self.inner.ignore_sigterm(pid);
        Some(pid)
    }

    /// The agent died: its monitors keep running but are no longer its children.
    pub fn orphan_all(&self) {
        self.inner.orphan_all();
    }

    fn first_live(&self, session: &SessionId) -> Option<u32> {
        self.monitors().get(session)?.first().map(|m| m.pid)
    }
}

impl ProcessBackend for SimBackend {
    fn spawn(&self, spec: &SpawnSpec) -> Result<u32, SuperviseError> {
        let pid = self.inner.spawn(spec)?;
        self.sessions().insert(pid, spec.session.clone());
        Ok(pid)
    }

    fn signal_group(&self, pgid: u32, sig: MonitorSignal) -> Result<(), SuperviseError> {
        if self.bug == Some(Bug::LeakMonitors)
            && matches!(sig, MonitorSignal::Term | MonitorSignal::Kill)
            && self.inner.is_stopped(pgid).is_some()
        {
            return Ok(());
        }
        self.inner.signal_group(pgid, sig)
    }

    fn identity(&self, pid: u32) -> Option<ProcessIdentity> {
        self.inner.identity(pid)
    }

    fn try_reap(&self) -> Vec<ExitNotice> {
        self.inner.try_reap()
    }

    fn frozen(&self, pgid: u32) -> bool {
        self.inner.frozen(pgid)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn spec(name: &str) -> SpawnSpec {
        SpawnSpec {
            session: SessionId::parse(name, "h::gv1").unwrap(),
            argv: vec!["monitor".into()],
            session_dir: PathBuf::from("/nonexistent"),
            env: Vec::new(),
        }
    }

    #[test]
    fn indexes_monitors_by_session_and_injects_faults() {
        let backend = SimBackend::new(None);
        let a = backend.spawn(&spec("a")).unwrap();
        let b = backend.spawn(&spec("b")).unwrap();
        let sid = spec("a").session;
        assert_eq!(
            backend.monitors()[&sid],
            vec![LiveMonitor {
                pid: a,
                stopped: false
            }]
        );
        backend.signal_group(b, MonitorSignal::Stop).unwrap();
        assert!(backend.monitors()[&spec("b").session][0].stopped);
        assert_eq!(backend.crash_monitor(&sid), Some(a));
        assert!(!backend.monitors().contains_key(&sid));
        assert_eq!(backend.crash_monitor(&sid), None);
    }

    #[test]
    fn the_leak_bug_keeps_terminated_monitors() {
        let backend = SimBackend::new(Some(Bug::LeakMonitors));
        let pid = backend.spawn(&spec("a")).unwrap();
        backend.signal_group(pid, MonitorSignal::Kill).unwrap();
        assert_eq!(backend.monitors().len(), 1);
    }
}
