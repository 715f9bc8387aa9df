//! The layout of a data directory, in one place: which file is where.
//!
//! ```text
//!     <data-dir>/
//!         state.bin              the persisted state (PersistedState)
//!         georepd.lock           held by the running agent (flock)
//!         georepd.sock           the local API, when the agent is told to put it here
//!         geo-replication/       one directory per session
//!             <session>/
//!                 gsyncd.conf    the session's effective configuration
//!                 monitor.pid    the monitor's identity record
//!                 monitor.status what the agent last saw the monitor do
//!                 monitor.log    the monitor's stdout and stderr
//!                 active_bricks  the local Active bricks
//!                 <brick>.status worker status written by the monitor
//! ```

use std::path::{Path, PathBuf};

/// Name of the persisted state file.
pub const STATE_FILE: &str = "state.bin";
/// Name of the lock file.
pub const LOCK_FILE: &str = "georepd.lock";
/// Name of the local API socket when it lives in the data directory.
pub const API_SOCKET_FILE: &str = "georepd.sock";
/// Name of the directory holding one directory per session.
pub const SESSIONS_DIR: &str = "geo-replication";
/// Name of a session's effective configuration file.
pub const CONFIG_FILE: &str = "gsyncd.conf";
/// Name of a session's monitor status file.
pub const STATUS_FILE: &str = "monitor.status";
/// Name of the file listing a session's local Active bricks.
pub const ACTIVE_BRICKS_FILE: &str = "active_bricks";
/// Name of a session's monitor pid (identity) file.
pub const PID_FILE: &str = "monitor.pid";
/// Name of a session's monitor log (stdout and stderr).
pub const LOG_FILE: &str = "monitor.log";

/// A data directory: the paths of what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root` (nothing is read or created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `state.bin`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    /// `georepd.lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }

    /// `georepd.sock`.
    pub fn api_socket(&self) -> PathBuf {
        self.root.join(API_SOCKET_FILE)
    }

    /// `geo-replication/`.
    pub fn sessions_root(&self) -> PathBuf {
        self.root.join(SESSIONS_DIR)
    }

    /// `geo-replication/<name>/`, `name` being a session's directory name.
    pub fn session_dir(&self, name: &str) -> PathBuf {
        self.sessions_root().join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_layout() {
        let dir = DataDir::new("/var/lib/georep");
        assert_eq!(dir.state_file(), Path::new("/var/lib/georep/state.bin"));
        assert_eq!(dir.lock_file(), Path::new("/var/lib/georep/georepd.lock"));
        assert_eq!(dir.api_socket(), Path::new("/var/lib/georep/georepd.sock"));
        assert_eq!(
            dir.session_dir("gv0_n4_gv1").join(PID_FILE),
            Path::new("/var/lib/georep/geo-replication/gv0_n4_gv1/monitor.pid")
        );
    }
}
