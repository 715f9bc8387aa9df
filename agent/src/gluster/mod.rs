//! Real Gluster: gluster's own gsyncd as the monitor (`--monitor gsyncd`), and this
//! node's bricks taken from the local glusterd (`--bricks-from-glusterd`).
//!
//! - `mod.rs`: the profile: glusterd's UUID for this node, the foreground gsyncd
//!   monitor command, and the lines gsyncd needs in the session's `gsyncd.conf`
//!   (its working directory, state and pid files inside the session directory).
//! - `status`: gsyncd's per-brick status files (`brick_<path>.status`) read into
//!   the worker reports `status` shows.
//! - `volumes`: `gluster --xml volume info` parsed into this node's bricks with their
//!   replica set; the volume options geo-replication needs on a primary volume.
//! - `leftovers`: secondary-side gsyncd processes of a session that is no longer
//!   running (gsyncd leaves them behind on a stop, and they ignore SIGTERM).
//!
//! Nothing here runs `gluster volume geo-replication`: glusterd does not know our
//! sessions.

pub mod leftovers;
pub mod status;
pub mod volumes;

use std::path::{Path, PathBuf};

use crate::config::{AgentConfig, MonitorProfile};
use crate::monitor_command::{MonitorCommand, MonitorCommandError};

/// gluster's gsyncd entry point (a wrapper that execs python3 with `gsyncd.py`).
pub const GSYNCD: &str = crate::config::DEFAULT_GSYNCD_COMMAND;

/// glusterd's working directory on Debian and Red Hat systems.
pub const GLUSTERD_WORKDIR: &str = "/var/lib/glusterd";

/// gsyncd's own pid file, in the session directory (`monitor.pid` is the agent's).
pub const GSYNCD_PID_FILE: &str = "gsyncd.pid";

/// gsyncd's monitor state file, in the session directory (`monitor.status` is the
/// agent's; not `*.status`, which are per-brick reports).
pub const GSYNCD_STATE_FILE: &str = "gsyncd-monitor.state";

/// Why the gsyncd profile cannot be used on this node.
#[derive(Debug, thiserror::Error)]
pub enum GlusterError {
    /// `glusterd.info` could not be read.
    #[error(
        "cannot read glusterd's UUID from {path}: {source} (is glusterd installed and has it run once on this node?)"
    )]
    Info {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `glusterd.info` holds no valid `UUID=` line.
    #[error("{path} holds no valid UUID= line")]
    NoUuid {
        /// The file.
        path: PathBuf,
    },
    /// The command template could not be built.
    #[error(transparent)]
    Command(#[from] MonitorCommandError),
    /// `gluster` could not be run or failed.
    #[error("`gluster {args}` failed: {why}")]
    Cli {
        /// Its arguments.
        args: String,
        /// Its error output, or why it did not run.
        why: String,
    },
    /// `gluster --xml volume info` answered something that is not its XML.
    #[error("cannot parse `gluster --xml volume info`: {0}")]
    Xml(String),
}

/// This node's glusterd UUID (`UUID=` in `<workdir>/glusterd.info`): gsyncd's
/// `--local-node-id`, which picks the bricks it runs workers for.
pub fn glusterd_uuid(workdir: &Path) -> Result<String, GlusterError> {
    let path = workdir.join("glusterd.info");
    let text = std::fs::read_to_string(&path).map_err(|source| GlusterError::Info {
        path: path.clone(),
        source,
    })?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("UUID="))
        .map(str::trim)
        .find(|uuid| is_uuid(uuid))
        .map(str::to_string)
        .ok_or(GlusterError::NoUuid { path })
}

/// `8-4-4-4-12` hexadecimal digits.
pub fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// gsyncd's monitor in the foreground, as glusterd would start it but for `--debug`,
/// gsyncd's only way to stay in the foreground under another supervisor (it then also
/// logs at DEBUG to its standard error: the session's `monitor.log`). Without
/// `--use-gconf-volinfo`: gluster 10.3's code path for it fails on a missing import;
/// gsyncd asks the local glusterd, and the secondary's over ssh, for the volumes.
pub fn monitor_command(uuid: &str) -> Result<MonitorCommand, GlusterError> {
    Ok(MonitorCommand::with_program(
        GSYNCD,
        &[
            "monitor",
            "{primary_vol}",
            "{secondary}",
            "-c",
            "{config_file}",
            "--local-node-id",
            uuid,
            "--debug",
        ],
    )?)
}

/// The configuration with what glusterd decides filled in: gsyncd's monitor command
/// for `--monitor gsyncd`, the local bricks for `--bricks-from-glusterd`. Unchanged
/// when neither is asked for (glusterd is then not needed).
pub fn resolve(mut config: AgentConfig) -> Result<AgentConfig, GlusterError> {
    let gsyncd = config.monitor == MonitorProfile::Gsyncd && config.monitor_command.is_none();
    if !gsyncd && !config.bricks_from_glusterd {
        return Ok(config);
    }
    let uuid = glusterd_uuid(Path::new(GLUSTERD_WORKDIR))?;
    if gsyncd {
        config.monitor_command = Some(monitor_command(&uuid)?);
    }
    if config.bricks_from_glusterd {
        config.bricks = volumes::local_bricks(&uuid)?.bricks;
        tracing::info!(uuid, bricks = ?config.bricks, "bricks taken from glusterd");
    }
    Ok(config)
}

/// The lines the gsyncd profile adds to a session's `gsyncd.conf` (after the session's
/// own keys): where gsyncd keeps its state, and what the secondary runs, unless the
/// session sets `remote-gsyncd` itself.
pub fn config_lines(dir: &Path, remote_gsyncd_set: bool) -> Vec<(&'static str, String)> {
    let mut lines = vec![
        ("georep-session-working-dir", format!("{}/", dir.display())),
        (
            "state-file",
            dir.join(GSYNCD_STATE_FILE).display().to_string(),
        ),
        ("pid-file", dir.join(GSYNCD_PID_FILE).display().to_string()),
    ];
    if !remote_gsyncd_set {
        lines.push(("remote-gsyncd", GSYNCD.to_string()));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uuid_comes_from_glusterd_info_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = glusterd_uuid(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("glusterd.info") && err.contains("glusterd installed"),
            "{err}"
        );
        let info = dir.path().join("glusterd.info");
        std::fs::write(&info, "UUID=not-a-uuid\noperating-version=100000\n").unwrap();
        let err = glusterd_uuid(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no valid UUID"), "{err}");
        std::fs::write(
            &info,
            "UUID=0721f245-2c38-41e6-a8ab-89835524b139\noperating-version=100000\n",
        )
        .unwrap();
        assert_eq!(
            glusterd_uuid(dir.path()).unwrap(),
            "0721f245-2c38-41e6-a8ab-89835524b139"
        );
    }

    #[test]
    fn the_monitor_command_is_gsyncd_in_the_foreground_for_this_node() {
        let command = monitor_command("0721f245-2c38-41e6-a8ab-89835524b139").unwrap();
        let argv = command.render(|p| format!("<{}>", p.name()));
        assert_eq!(
            argv,
            [
                GSYNCD,
                "monitor",
                "<primary_vol>",
                "<secondary>",
                "-c",
                "<config_file>",
                "--local-node-id",
                "0721f245-2c38-41e6-a8ab-89835524b139",
                "--debug"
            ]
        );
    }
}
