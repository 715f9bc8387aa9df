//! The command-line flags of `georepd` ([`AgentArgs`]).

use super::*;

/// The `georepd` flags of `cli.md` (everything optional: the file may supply
/// the rest). Flatten into the binary's parser with `#[command(flatten)]`.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id ([A-Za-z0-9._-], at most 64 characters).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Directory holding identity, persisted state and session directories.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the mesh listens on (default 127.0.0.1:7400).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Address peers dial to reach this node (default: --listen, which must
    /// then name a specific address).
    #[arg(long, value_name = "ADDR:PORT")]
    pub advertise: Option<SocketAddr>,
    /// A peer to join through (repeatable; replaces the file's `seeds`).
    #[arg(long = "seed", value_name = "ADDR:PORT")]
    pub seeds: Vec<String>,
    /// Local API socket (default /run/georep/georepd.sock, where `georep` looks).
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// A local primary brick (repeatable; replaces the file's `[[brick]]`s).
    #[arg(long = "brick", value_name = "VOL:PATH[:REPLICA_SET]")]
    pub bricks: Vec<String>,
    /// CA certificate (default DATA_DIR/tls/ca.crt).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (default DATA_DIR/tls/NODE_ID.crt).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (default DATA_DIR/tls/NODE_ID.key).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Gossip period in milliseconds (10..=60000, default 500).
    #[arg(long, value_name = "N")]
    pub gossip_interval_ms: Option<u64>,
    /// Command started as each session's monitor (split like a POSIX shell
    /// would, no shell runs; default: the built-in monitor).
    #[arg(long, value_name = "CMD ARGS...")]
    pub monitor_command: Option<String>,
    /// Which monitor runs sessions: `builtin` (the data path over the mesh) or
    /// `gsyncd` (gluster's own, on real Gluster volumes; needs glusterd on this node)
    /// [default: builtin].
    #[arg(
        long,
        value_name = "PROFILE",
        value_enum,
        conflicts_with = "monitor_command"
    )]
    pub monitor: Option<super::MonitorProfile>,
    /// Take this node's bricks from the local glusterd (`gluster volume info`,
    /// listed again every 5 s) instead of --brick.
    #[arg(long, conflicts_with = "bricks")]
    pub bricks_from_glusterd: bool,
    /// Serve Prometheus metrics over HTTP at ADDR:PORT/metrics (off by default; e.g.
    /// 127.0.0.1:9740).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the data path endpoint (QUIC, UDP) secondary nodes receive
    /// replicated files on [default: the --listen address with a port the system picks;
    /// it is published in the mesh].
    #[arg(long, value_name = "ADDR:PORT")]
    pub data_listen: Option<SocketAddr>,
    /// Export this node, its volumes, bricks and sessions as D-Bus objects on the
    /// system or the session bus (off by default; name `org.georep.Agent`).
    #[arg(long, value_name = "BUS", value_enum)]
    pub dbus: Option<super::DbusBus>,
    /// Event journal bytes kept per origin node before the oldest events go (a
    /// reported gap) [default: 67108864 (64 MiB)].
    #[arg(long, value_name = "BYTES")]
    pub events_max_bytes: Option<u64>,
    /// Size past which a session's monitor.log is rotated to monitor.log.1 (3 kept;
    /// 0: never) [default: 67108864 (64 MiB)].
    #[arg(long, value_name = "BYTES")]
    pub monitor_log_max_bytes: Option<u64>,
    /// Age beyond which journaled events go (a reported gap), e.g. `7d`, `12h`
    /// [default: 7d].
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    pub events_max_age: Option<std::time::Duration>,
    /// authorized_keys file whose managed blocks this node maintains for push-pem
    /// sessions (%h = the secondary user's home, %u = its name) [default:
    /// %h/.ssh/authorized_keys].
    #[arg(long, value_name = "FILE")]
    pub authorized_keys: Option<PathBuf>,
    /// Command the primaries' gsyncd keys are forced to run on this node
    /// [default: /usr/lib/x86_64-linux-gnu/glusterfs/gsyncd].
    #[arg(long, value_name = "CMD")]
    pub ssh_gsyncd_command: Option<String>,
    /// Command the primaries' tar keys are forced to run on this node
    /// [default: tar ${SSH_ORIGINAL_COMMAND#* }].
    #[arg(long, value_name = "CMD")]
    pub ssh_tar_command: Option<String>,
    /// No longer an agent setting: webhooks are cluster state (`georep webhook add
    /// URL` on any node). Refused with that advice.
    #[arg(long = "webhook", value_name = "URL", hide = true)]
    pub webhooks: Vec<String>,
    /// Longest delay between restarts of a crashing monitor (the delay doubles from
    /// 1 s up to this, as systemd's RestartMaxDelaySec), e.g. `30s` [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    pub monitor_restart_max: Option<std::time::Duration>,
    /// Longest delay between webhook delivery attempts (capped exponential backoff
    /// with jitter), e.g. `1m`, `30s` [default: 1m].
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    pub webhook_backoff_max: Option<std::time::Duration>,
    /// A webhook whose deliveries fail this long is parked (visible in `georep webhook
    /// list`, resumed by `georep webhook mod`), e.g. `3d` [default: 3d].
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    pub webhook_park_after: Option<std::time::Duration>,
    /// FOR TESTING ONLY: delay every frame this node sends to a peer in
    /// NETWORK (an IP or a CIDR) by DELAY plus a random 0..JITTER, e.g.
    /// 10.77.2.0/24=40ms~5ms (units us, ms, s). One way: give it on both sides
    /// for a round trip. Repeatable; the most specific network wins; replaces
    /// the file's `inject_delay`.
    #[arg(long = "inject-delay", value_name = "NETWORK=DELAY[~JITTER]")]
    pub inject_delay: Vec<String>,
}

/// `--events-max-age`: humantime's grammar (`7d`, `12h`, `90s`), at least one second.
fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    parse_age_text(text)
}

/// [`parse_age`] for the file's `events_max_age`.
pub(super) fn parse_age_text(text: &str) -> Result<std::time::Duration, String> {
    let age = humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 7d, 12h, 90s)"))?;
    if age < std::time::Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(age)
}
