//! `georepd` configuration: the command-line flags ([`AgentArgs`]), the TOML
//! file, and the resolved, validated [`AgentConfig`] they produce together.
//!
//! Flags override the file; a repeatable flag given at least once replaces
//! the file's whole list. Every error is one line naming the file, line and
//! key (or the flag) and what is wrong with it.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use georep_mesh::{Faults, IpNetwork, LinkFaults};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::monitor_command::MonitorCommand;

/// Cluster name used when the file does not set `cluster_id`.
pub const DEFAULT_CLUSTER_ID: &str = "georep";
/// Address the mesh listens on when neither the file nor `--listen` sets one.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    7400,
));
/// Gossip period when neither the file nor `--gossip-interval-ms` sets one.
pub const DEFAULT_GOSSIP_INTERVAL_MS: u64 = 500;
/// Event journal bytes kept per origin node by default (64 MiB).
pub const DEFAULT_EVENTS_MAX_BYTES: u64 = 64 << 20;
/// A monitor's `monitor.log` is rotated past this size by default (64 MiB).
pub const DEFAULT_MONITOR_LOG_MAX_BYTES: u64 = 64 << 20;
/// Age of journaled events kept by default (7 days).
pub const DEFAULT_EVENTS_MAX_AGE_MS: u64 = 7 * 24 * 3600 * 1000;
/// Default longest delay between restarts of a crashing monitor (30 s).
pub const DEFAULT_MONITOR_RESTART_MAX_MS: u64 = 30 * 1000;
/// Default longest delay between webhook delivery attempts (1 minute).
pub const DEFAULT_WEBHOOK_BACKOFF_MAX_MS: u64 = 60 * 1000;
/// Default time a failing webhook is retried before it is parked (3 days).
pub const DEFAULT_WEBHOOK_PARK_AFTER_MS: u64 = 3 * 24 * 3600 * 1000;
/// What primaries' gsyncd keys run on a secondary node unless its agent says otherwise
/// (gluster 10.3's path on Debian).
pub const DEFAULT_GSYNCD_COMMAND: &str = "/usr/lib/x86_64-linux-gnu/glusterfs/gsyncd";
/// What primaries' tar keys run (gluster's line, verbatim).
pub const DEFAULT_TAR_COMMAND: &str = "tar ${SSH_ORIGINAL_COMMAND#* }";
/// Accepted gossip periods, in milliseconds.
pub const GOSSIP_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 10..=60_000;
/// File name of the local API socket inside the data directory (tests and the demo
/// put it there).
pub use georep_store::data_dir::API_SOCKET_FILE;
/// Where the agent serves its local API, and where `georep` looks for it, when
/// neither is told otherwise.
pub const DEFAULT_API_SOCKET: &str = georep_api::DEFAULT_API_SOCKET;
/// Longest delay or jitter `--inject-delay` accepts.
pub const MAX_INJECTED_DELAY: Duration = Duration::from_secs(60);

/// Longest accepted node or cluster id.
const MAX_ID_LEN: usize = 64;

mod delay;
mod flags;
mod load;

pub use delay::*;
pub use flags::*;

/// A local primary brick: `[[brick]]` in the file, `--brick VOL:PATH[:N]`
/// on the command line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrickSpec {
    /// Volume name ([A-Za-z0-9_-]+).
    pub volume: String,
    /// Absolute path of the brick directory.
    pub path: PathBuf,
    /// Replica set (subvolume) of the volume this brick belongs to.
    #[serde(default)]
    pub replica_set: u32,
}

/// The resolved, validated agent configuration. Its serde form is the
/// configuration file's format (bricks as `[[brick]]`), so a serialized
/// `AgentConfig` is itself a valid file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Name shared by every node of the cluster (file only).
    pub cluster_id: String,
    /// This node's id.
    pub node_id: String,
    /// Directory holding identity, persisted state and session directories.
    pub data_dir: PathBuf,
    /// Address the mesh listens on.
    pub listen: SocketAddr,
    /// Address peers dial to reach this node (never unspecified).
    pub advertise: SocketAddr,
    /// Peers to join through.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Local API socket.
    pub api_socket: PathBuf,
    /// Local primary bricks.
    #[serde(default, rename = "brick")]
    pub bricks: Vec<BrickSpec>,
    /// CA certificate.
    pub tls_ca: PathBuf,
    /// This node's certificate.
    pub tls_cert: PathBuf,
    /// This node's private key.
    pub tls_key: PathBuf,
    /// Gossip period in milliseconds.
    pub gossip_interval_ms: u64,
    /// Monitor command template, parsed; `None` runs the monitor of `monitor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_command: Option<MonitorCommand>,
    /// Which monitor runs this node's sessions when no `monitor_command` is given.
    #[serde(default, skip_serializing_if = "MonitorProfile::is_builtin")]
    pub monitor: MonitorProfile,
    /// Whether this node's bricks are the local glusterd's (instead of `brick`s).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bricks_from_glusterd: bool,
    /// authorized_keys file whose managed blocks this node maintains (`%h`, `%u`
    /// expanded per secondary user; default `%h/.ssh/authorized_keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorized_keys: Option<PathBuf>,
    /// Where Prometheus metrics are served (`/metrics`), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where the data path endpoint listens (`None`: the listen address, any port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_listen: Option<SocketAddr>,
    /// The bus this node's D-Bus objects are exported on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dbus: Option<DbusBus>,
    /// Event journal bytes kept per origin.
    pub events_max_bytes: u64,
    /// Size past which a session's `monitor.log` is rotated (0: never).
    pub monitor_log_max_bytes: u64,
    /// Age (ms) beyond which journaled events go (`events_max_age = "7days"` in the
    /// file, as humantime writes it).
    #[serde(
        rename = "events_max_age",
        serialize_with = "age_to_text",
        deserialize_with = "age_from_text"
    )]
    pub events_max_age_ms: u64,
    /// Forced command of the primaries' gsyncd (`secret.pem`) keys on this node.
    pub ssh_gsyncd_command: String,
    /// Forced command of the primaries' tar (`tar_ssh.pem`) keys on this node.
    pub ssh_tar_command: String,
    /// Longest delay between restarts of a crashing monitor (ms; `monitor_restart_max
    /// = "30s"` in the file): the restart backoff doubles from 1 s up to this.
    #[serde(
        rename = "monitor_restart_max",
        serialize_with = "age_to_text",
        deserialize_with = "age_from_text"
    )]
    pub monitor_restart_max_ms: u64,
    /// Longest delay between webhook delivery attempts (ms; `webhook_backoff_max =
    /// "1m"` in the file).
    #[serde(
        rename = "webhook_backoff_max",
        serialize_with = "age_to_text",
        deserialize_with = "age_from_text"
    )]
    pub webhook_backoff_max_ms: u64,
    /// A webhook failing this long (ms) is parked (`webhook_park_after = "3days"`).
    #[serde(
        rename = "webhook_park_after",
        serialize_with = "age_to_text",
        deserialize_with = "age_from_text"
    )]
    pub webhook_park_after_ms: u64,
    /// Latency injected on frames to these networks (testing only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inject_delay: Vec<DelayRule>,
    /// Write `state.bin` on the calling thread instead of the blocking pool. Only the
    /// simulator sets it: a second thread would make its runs depend on timing.
    #[serde(skip)]
    pub persist_inline: bool,
}

/// Why the configuration could not be loaded. Always one line; nothing has
/// been started when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("{}: cannot read configuration file: {source}", path.display())]
    Read {
        /// The file named by `--config`.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A value in the file is malformed, of the wrong type, unknown or
    /// invalid.
    #[error("{}:{line}:{column}: {}{message}", path.display(), key_prefix(key))]
    File {
        /// The configuration file.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column (in characters) of the offending text.
        column: usize,
        /// Dotted key, when one could be determined (e.g. `brick[1].path`).
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A flag value, a missing required setting, or a monitor command
    /// expansion is invalid.
    #[error("{key}: {reason}")]
    Invalid {
        /// The flag (`--brick "gv0:x"`) or key (`node_id`) at fault.
        key: String,
        /// What is wrong and, where useful, what to do.
        reason: String,
    },
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default()
}

#[cfg(test)]
mod tests;

fn age_to_text<S: serde::Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(std::time::Duration::from_millis(*ms)).to_string())
}

fn age_from_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    flags::parse_age_text(&text)
        .map(|age| age.as_millis() as u64)
        .map_err(serde::de::Error::custom)
}

/// Which monitor runs sessions (`--monitor`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MonitorProfile {
    /// `georepd monitor`: the built-in data path over the mesh.
    #[default]
    Builtin,
    /// gluster's own gsyncd (`monitor` in the foreground) on real Gluster volumes.
    Gsyncd,
}

impl MonitorProfile {
    /// Whether this is the default.
    pub fn is_builtin(&self) -> bool {
        *self == MonitorProfile::Builtin
    }
}

/// Which D-Bus bus `--dbus` exports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DbusBus {
    /// The system bus (needs the policy file the package installs).
    System,
    /// The session bus of the user running the agent (`DBUS_SESSION_BUS_ADDRESS`).
    Session,
}

impl DbusBus {
    /// `system` or `session`.
    pub fn name(self) -> &'static str {
        match self {
            DbusBus::System => "system",
            DbusBus::Session => "session",
        }
    }
}
