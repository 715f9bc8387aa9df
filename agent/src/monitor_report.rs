//! What the supervisor says about a session's monitor on this node: its state and the
//! report gossiped to every node (`status`, `inspect explain`).

use std::fmt;

use georep_mesh::DesiredState;
use georep_mesh::Hlc;
use serde::{Deserialize, Serialize};

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
