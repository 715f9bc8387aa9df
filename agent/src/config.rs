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

use georep_mesh::faults::{Faults, IpNetwork, LinkFaults};
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
    /// authorized_keys file whose managed block this node maintains.
    #[arg(long, value_name = "FILE")]
    pub authorized_keys: Option<PathBuf>,
    /// http:// URL receiving this node's events (repeatable; replaces the
    /// file's `webhooks`).
    #[arg(long = "webhook", value_name = "URL")]
    pub webhooks: Vec<String>,
    /// FOR TESTING ONLY: delay every frame this node sends to a peer in
    /// NETWORK (an IP or a CIDR) by DELAY plus a random 0..JITTER, e.g.
    /// 10.77.2.0/24=40ms~5ms (units us, ms, s). One way: give it on both sides
    /// for a round trip. Repeatable; the most specific network wins; replaces
    /// the file's `inject_delay`.
    #[arg(long = "inject-delay", value_name = "NETWORK=DELAY[~JITTER]")]
    pub inject_delay: Vec<String>,
}

/// Latency injected on frames to one network (`--inject-delay`, testing only):
/// written `NETWORK=DELAY[~JITTER]`, e.g. `10.77.2.0/24=40ms~5ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DelayRule {
    /// Destination network (a bare address is a network of one).
    pub network: IpNetwork,
    /// Fixed added one-way delay.
    pub delay: Duration,
    /// Extra uniformly random delay in `[0, jitter)`.
    pub jitter: Duration,
}

impl DelayRule {
    /// Parses `NETWORK=DELAY[~JITTER]`; the error says what is wrong, in one line.
    pub fn parse(text: &str) -> Result<DelayRule, String> {
        let Some((network, delays)) = text.split_once('=') else {
            return Err("expected NETWORK=DELAY[~JITTER], e.g. 10.77.2.0/24=40ms~5ms".to_owned());
        };
        let network = network
            .trim()
            .parse::<IpNetwork>()
            .map_err(|e| format!("network: {e}"))?;
        let (delay, jitter) = match delays.split_once('~') {
            Some((delay, jitter)) => (delay, Some(jitter)),
            None => (delays, None),
        };
        let delay = parse_delay(delay).map_err(|e| format!("delay: {e}"))?;
        let jitter = match jitter {
            Some(jitter) => parse_delay(jitter).map_err(|e| format!("jitter: {e}"))?,
            None => Duration::ZERO,
        };
        Ok(DelayRule {
            network,
            delay,
            jitter,
        })
    }

    /// The faults this rule asks for.
    pub fn link_faults(&self) -> LinkFaults {
        LinkFaults {
            delay: self.delay,
            jitter: self.jitter,
            ..LinkFaults::default()
        }
    }
}

impl fmt::Display for DelayRule {
    /// The canonical `NETWORK=DELAY[~JITTER]`, which [`DelayRule::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.network, DelaySpelling(self.delay))?;
        if !self.jitter.is_zero() {
            write!(f, "~{}", DelaySpelling(self.jitter))?;
        }
        Ok(())
    }
}

impl TryFrom<String> for DelayRule {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        DelayRule::parse(&text)
    }
}

impl From<DelayRule> for String {
    fn from(rule: DelayRule) -> String {
        rule.to_string()
    }
}

/// A duration as `--inject-delay` writes it: whole `s`, `ms` or `us`.
struct DelaySpelling(Duration);

impl fmt::Display for DelaySpelling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        if us != 0 && us.is_multiple_of(1_000_000) {
            write!(f, "{}s", us / 1_000_000)
        } else if us.is_multiple_of(1_000) {
            write!(f, "{}ms", us / 1_000)
        } else {
            write!(f, "{us}us")
        }
    }
}

/// Parses a whole number with a unit: `250us`, `40ms`, `2s`, at most [`MAX_INJECTED_DELAY`].
fn parse_delay(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let scale = match unit {
        "us" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        _ => {
            return Err(format!(
                "{text:?} is not a whole number with a unit us, ms or s (e.g. 40ms)"
            ));
        }
    };
    if number.is_empty() {
        return Err(format!("{text:?} has no number (e.g. 40ms)"));
    }
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .map(Duration::from_micros)
        .filter(|d| *d <= MAX_INJECTED_DELAY)
        .ok_or_else(|| {
            format!(
                "{text} is longer than {}",
                DelaySpelling(MAX_INJECTED_DELAY)
            )
        })
}

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
    /// Monitor command template, parsed; `None` runs the built-in monitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_command: Option<MonitorCommand>,
    /// authorized_keys file whose managed block this node maintains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorized_keys: Option<PathBuf>,
    /// http:// URLs receiving this node's events.
    #[serde(default)]
    pub webhooks: Vec<String>,
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

/// The file's shape: everything optional (flags may supply it), with spans
/// so that semantic errors point at the offending line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    cluster_id: Option<Spanned<String>>,
    node_id: Option<Spanned<String>>,
    data_dir: Option<Spanned<PathBuf>>,
    listen: Option<SocketAddr>,
    advertise: Option<Spanned<SocketAddr>>,
    seeds: Option<Vec<Spanned<String>>>,
    api_socket: Option<PathBuf>,
    #[serde(rename = "brick")]
    bricks: Option<Vec<Spanned<FileBrick>>>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    gossip_interval_ms: Option<Spanned<u64>>,
    monitor_command: Option<Spanned<String>>,
    authorized_keys: Option<PathBuf>,
    webhooks: Option<Vec<Spanned<String>>>,
    inject_delay: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBrick {
    volume: Spanned<String>,
    path: Spanned<PathBuf>,
    #[serde(default)]
    replica_set: u32,
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone)]
enum Origin {
    /// A flag; the string is the flag and its value as the user wrote it.
    Flag(String),
    /// A span of the configuration file, and the key at that span.
    File(Range<usize>, String),
}

/// The configuration file's text, kept to turn spans into line:column.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    fn error_at(&self, span: Range<usize>, key: Option<String>, message: &str) -> ConfigError {
        let (line, column) = line_column(&self.text, span.start);
        ConfigError::File {
            path: self.path.clone(),
            line,
            column,
            key,
            message: one_line(message),
        }
    }
}

/// Builds errors for values of either origin.
struct Reporter<'a> {
    source: Option<&'a Source>,
}

impl Reporter<'_> {
    fn invalid(&self, origin: &Origin, reason: impl Into<String>) -> ConfigError {
        let reason = reason.into();
        match (origin, self.source) {
            (Origin::File(span, key), Some(src)) => {
                src.error_at(span.clone(), Some(key.clone()), &reason)
            }
            (Origin::File(_, key), None) => ConfigError::Invalid {
                key: key.clone(),
                reason,
            },
            (Origin::Flag(flag), _) => ConfigError::Invalid {
                key: flag.clone(),
                reason,
            },
        }
    }
}

impl AgentConfig {
    /// Reads the file named by `--config` (if any), applies the flags on top
    /// and validates the result.
    pub fn load(args: &AgentArgs) -> Result<AgentConfig, ConfigError> {
        let (file, source) = match &args.config {
            None => (FileConfig::default(), None),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let source = Source {
                    path: path.clone(),
                    text,
                };
                let file = parse_file(&source)?;
                (file, Some(source))
            }
        };
        resolve(file, args, source.as_ref())
    }

    /// A valid configuration for tests: the given node id and data
    /// directory, loopback port 0, everything else at its default.
    pub fn for_test(node_id: &str, data_dir: &Path) -> AgentConfig {
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        AgentConfig {
            cluster_id: DEFAULT_CLUSTER_ID.to_owned(),
            node_id: node_id.to_owned(),
            data_dir: data_dir.to_path_buf(),
            listen,
            advertise: listen,
            seeds: Vec::new(),
            api_socket: data_dir.join(API_SOCKET_FILE),
            bricks: Vec::new(),
            tls_ca: data_dir.join("tls").join("ca.crt"),
            tls_cert: data_dir.join("tls").join(format!("{node_id}.crt")),
            tls_key: data_dir.join("tls").join(format!("{node_id}.key")),
            gossip_interval_ms: DEFAULT_GOSSIP_INTERVAL_MS,
            monitor_command: None,
            authorized_keys: None,
            webhooks: Vec::new(),
            inject_delay: Vec::new(),
            persist_inline: false,
        }
    }

    /// The fault controller `inject_delay` asks for, seeded from the node id (so a
    /// node's jitter is reproducible and differs from its peers'); `None` when no
    /// latency is to be injected.
    pub fn fault_injection(&self) -> Option<Faults> {
        if self.inject_delay.is_empty() {
            return None;
        }
        // FNV-1a: stable across Rust versions, unlike the std hasher.
        let seed = self
            .node_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
        let faults = Faults::new(seed);
        for rule in &self.inject_delay {
            faults.set_network(rule.network, rule.link_faults());
        }
        Some(faults)
    }
}

fn parse_file(source: &Source) -> Result<FileConfig, ConfigError> {
    toml::from_str::<FileConfig>(&source.text).map_err(|err| {
        let span = err.span().unwrap_or(0..0);
        let key = key_at(&source.text, span.start).or_else(|| toml_error_key(&err));
        source.error_at(span, key, err.message())
    })
}

/// The dotted key toml attached to its error, if any. toml only prints the
/// key path when it has no input to quote, so ask for exactly that.
fn toml_error_key(err: &toml::de::Error) -> Option<String> {
    let mut bare = err.clone();
    bare.set_input(None);
    let rendered = bare.to_string();
    let last = rendered.trim_end().lines().last()?;
    let key = last.strip_prefix("in `")?.strip_suffix('`')?;
    (!key.is_empty()).then(|| key.to_owned())
}

/// Best-effort key for an error at byte `offset`: the left-hand side of the
/// `key = value` line there, qualified by the enclosing table (with its
/// index for `[[array]]` tables, e.g. `brick[1].path`), or the table header
/// itself.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = floor_char_boundary(text, offset);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    let before = &text[..line_start];
    if let Some(header) = table_header(line) {
        return Some(qualified_table(before, &header, line));
    }
    let (lhs, _) = line.split_once('=')?;
    let lhs = lhs.trim();
    if lhs.is_empty() || lhs.starts_with('#') {
        return None;
    }
    let table = before.lines().rev().find_map(|l| {
        let l = l.trim();
        table_header(l).map(|h| (h, l))
    });
    Some(match table {
        Some((header, header_line)) => {
            let header_start = before.rfind(header_line).unwrap_or(0);
            format!(
                "{}.{lhs}",
                qualified_table(&before[..header_start], &header, header_line)
            )
        }
        None => lhs.to_owned(),
    })
}

/// `name`, or `name[i]` for the i-th `[[name]]` table (`earlier` is the text
/// before this header).
fn qualified_table(earlier: &str, name: &str, header_line: &str) -> String {
    if !header_line.starts_with("[[") {
        return name.to_owned();
    }
    let index = earlier
        .lines()
        .filter(|l| {
            let l = l.trim();
            l.starts_with("[[") && table_header(l).as_deref() == Some(name)
        })
        .count();
    format!("{name}[{index}]")
}

/// The table name of a `[name]` or `[[name]]` header line.
fn table_header(line: &str) -> Option<String> {
    let inner = line
        .strip_prefix("[[")
        .and_then(|l| l.split_once("]]"))
        .or_else(|| line.strip_prefix('[').and_then(|l| l.split_once(']')))?
        .0
        .trim();
    (!inner.is_empty()).then(|| inner.to_owned())
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A value together with where it came from.
struct Sourced<T> {
    value: T,
    origin: Origin,
}

fn from_flag<T>(value: T, flag: &str, shown: impl std::fmt::Display) -> Sourced<T> {
    Sourced {
        value,
        origin: Origin::Flag(format!("--{flag} {:?}", shown.to_string())),
    }
}

fn from_file<T>(spanned: Spanned<T>, key: impl Into<String>) -> Sourced<T> {
    let span = spanned.span();
    Sourced {
        value: spanned.into_inner(),
        origin: Origin::File(span, key.into()),
    }
}

fn resolve(
    file: FileConfig,
    args: &AgentArgs,
    source: Option<&Source>,
) -> Result<AgentConfig, ConfigError> {
    let report = Reporter { source };

    let cluster_id = match file.cluster_id {
        Some(s) => {
            let s = from_file(s, "cluster_id");
            check_id(&report, &s)?;
            s.value
        }
        None => DEFAULT_CLUSTER_ID.to_owned(),
    };

    let node_id = match (&args.node_id, file.node_id) {
        (Some(id), _) => from_flag(id.clone(), "node-id", id),
        (None, Some(s)) => from_file(s, "node_id"),
        (None, None) => return Err(missing("node_id", "--node-id", source)),
    };
    check_id(&report, &node_id)?;
    let node_id = node_id.value;

    let data_dir = match (&args.data_dir, file.data_dir) {
        (Some(d), _) => from_flag(d.clone(), "data-dir", d.display()),
        (None, Some(s)) => from_file(s, "data_dir"),
        (None, None) => return Err(missing("data_dir", "--data-dir", source)),
    };
    if data_dir.value.as_os_str().is_empty() {
        return Err(report.invalid(&data_dir.origin, "must not be empty"));
    }
    let data_dir = data_dir.value;

    let listen = args.listen.or(file.listen).unwrap_or(DEFAULT_LISTEN);
    let advertise = match (args.advertise, file.advertise) {
        (Some(a), _) => Some(from_flag(a, "advertise", a)),
        (None, Some(s)) => Some(from_file(s, "advertise")),
        (None, None) => None,
    };
    let advertise = match advertise {
        Some(a) if a.value.ip().is_unspecified() || a.value.port() == 0 => {
            return Err(report.invalid(
                &a.origin,
                "must be an address and port peers can dial (not 0.0.0.0, :: or port 0)",
            ));
        }
        Some(a) => a.value,
        None if listen.ip().is_unspecified() => {
            return Err(ConfigError::Invalid {
                key: "advertise".to_owned(),
                reason: format!(
                    "required when listening on the unspecified address {listen}; \
                     pass --advertise ADDR:PORT or set advertise in the file"
                ),
            });
        }
        None => listen,
    };

    let seeds: Vec<Sourced<String>> = if !args.seeds.is_empty() {
        args.seeds
            .iter()
            .map(|s| from_flag(s.clone(), "seed", s))
            .collect()
    } else {
        file.seeds
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, s)| from_file(s, format!("seeds[{i}]")))
            .collect()
    };
    for seed in &seeds {
        if seed.value.parse::<SocketAddr>().is_err() {
            return Err(report.invalid(&seed.origin, "not an ADDR:PORT socket address"));
        }
    }
    let seeds = seeds.into_iter().map(|s| s.value).collect();

    let api_socket = args
        .api_socket
        .clone()
        .or(file.api_socket)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCKET));

    let bricks: Vec<Sourced<BrickSpec>> = if !args.bricks.is_empty() {
        args.bricks
            .iter()
            .map(|spec| {
                let origin = Origin::Flag(format!("--brick {spec:?}"));
                parse_brick_flag(spec)
                    .map(|value| Sourced {
                        value,
                        origin: origin.clone(),
                    })
                    .map_err(|reason| report.invalid(&origin, reason))
            })
            .collect::<Result<_, _>>()?
    } else {
        let mut out = Vec::new();
        for (i, b) in file.bricks.unwrap_or_default().into_iter().enumerate() {
            let span = b.span();
            let b = b.into_inner();
            let volume = from_file(b.volume, format!("brick[{i}].volume"));
            let path = from_file(b.path, format!("brick[{i}].path"));
            if let Err(reason) = check_volume(&volume.value) {
                return Err(report.invalid(&volume.origin, reason));
            }
            if let Err(reason) = check_brick_path(&path.value) {
                return Err(report.invalid(&path.origin, reason));
            }
            out.push(Sourced {
                value: BrickSpec {
                    volume: volume.value,
                    path: path.value,
                    replica_set: b.replica_set,
                },
                origin: Origin::File(span, format!("brick[{i}]")),
            });
        }
        out
    };
    for (i, b) in bricks.iter().enumerate() {
        if bricks[..i]
            .iter()
            .any(|o| o.value.volume == b.value.volume && o.value.path == b.value.path)
        {
            return Err(report.invalid(&b.origin, "the same volume and path are listed twice"));
        }
    }
    let bricks = bricks.into_iter().map(|b| b.value).collect();

    let tls_dir = data_dir.join("tls");
    let tls_ca = args
        .tls_ca
        .clone()
        .or(file.tls_ca)
        .unwrap_or_else(|| tls_dir.join("ca.crt"));
    let tls_cert = args
        .tls_cert
        .clone()
        .or(file.tls_cert)
        .unwrap_or_else(|| tls_dir.join(format!("{node_id}.crt")));
    let tls_key = args
        .tls_key
        .clone()
        .or(file.tls_key)
        .unwrap_or_else(|| tls_dir.join(format!("{node_id}.key")));

    let gossip = match (args.gossip_interval_ms, file.gossip_interval_ms) {
        (Some(n), _) => Some(from_flag(n, "gossip-interval-ms", n)),
        (None, Some(s)) => Some(from_file(s, "gossip_interval_ms")),
        (None, None) => None,
    };
    if let Some(g) = &gossip
        && !GOSSIP_INTERVAL_MS_RANGE.contains(&g.value)
    {
        return Err(report.invalid(
            &g.origin,
            format!(
                "{} is out of range {}..={}",
                g.value,
                GOSSIP_INTERVAL_MS_RANGE.start(),
                GOSSIP_INTERVAL_MS_RANGE.end()
            ),
        ));
    }
    let gossip_interval_ms = gossip.map_or(DEFAULT_GOSSIP_INTERVAL_MS, |g| g.value);

    let monitor = match (&args.monitor_command, file.monitor_command) {
        (Some(c), _) => Some(from_flag(c.clone(), "monitor-command", c)),
        (None, Some(s)) => Some(from_file(s, "monitor_command")),
        (None, None) => None,
    };
    let monitor_command = match monitor {
        Some(m) => Some(
            MonitorCommand::parse(&m.value)
                .map_err(|error| report.invalid(&m.origin, error.to_string()))?,
        ),
        None => None,
    };

    let authorized_keys = args.authorized_keys.clone().or(file.authorized_keys);

    let webhooks: Vec<Sourced<String>> = if !args.webhooks.is_empty() {
        args.webhooks
            .iter()
            .map(|w| from_flag(w.clone(), "webhook", w))
            .collect()
    } else {
        file.webhooks
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, w)| from_file(w, format!("webhooks[{i}]")))
            .collect()
    };
    for w in &webhooks {
        check_webhook(&w.value).map_err(|reason| report.invalid(&w.origin, reason))?;
    }
    let webhooks = webhooks.into_iter().map(|w| w.value).collect();

    let delays: Vec<Sourced<String>> = if !args.inject_delay.is_empty() {
        args.inject_delay
            .iter()
            .map(|d| from_flag(d.clone(), "inject-delay", d))
            .collect()
    } else {
        file.inject_delay
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, d)| from_file(d, format!("inject_delay[{i}]")))
            .collect()
    };
    let mut inject_delay: Vec<DelayRule> = Vec::with_capacity(delays.len());
    for d in &delays {
        let rule =
            DelayRule::parse(&d.value).map_err(|reason| report.invalid(&d.origin, reason))?;
        if inject_delay.iter().any(|r| r.network == rule.network) {
            return Err(report.invalid(
                &d.origin,
                format!("network {} is listed twice", rule.network),
            ));
        }
        inject_delay.push(rule);
    }

    Ok(AgentConfig {
        cluster_id,
        node_id,
        data_dir,
        listen,
        advertise,
        seeds,
        api_socket,
        bricks,
        tls_ca,
        tls_cert,
        tls_key,
        gossip_interval_ms,
        monitor_command,
        authorized_keys,
        webhooks,
        inject_delay,
        persist_inline: false,
    })
}

fn missing(key: &str, flag: &str, source: Option<&Source>) -> ConfigError {
    let reason = match source {
        Some(src) => format!(
            "required: set {key} in {} or pass {flag}",
            src.path.display()
        ),
        None => format!("required: pass {flag} or set {key} in a --config file"),
    };
    ConfigError::Invalid {
        key: key.to_owned(),
        reason,
    }
}

fn check_id(report: &Reporter<'_>, id: &Sourced<String>) -> Result<(), ConfigError> {
    let s = &id.value;
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(report.invalid(
            &id.origin,
            format!("must be 1 to {MAX_ID_LEN} characters long"),
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(report.invalid(
            &id.origin,
            format!("character {c:?} not allowed (use A-Z, a-z, 0-9, '.', '_', '-')"),
        ));
    }
    Ok(())
}

fn check_volume(volume: &str) -> Result<(), String> {
    georep_mesh::state::check_name(volume)
        .map_err(|reason| format!("volume name {volume:?}: {reason}"))
}

fn check_brick_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err("path must be absolute".to_owned());
    }
    // `{bricks}` joins a node's brick paths with ',', and `VOL:PATH:SET` splits at ':'.
    if let Some(c) = path
        .to_string_lossy()
        .chars()
        .find(|c| matches!(c, ',' | ':') || c.is_control())
    {
        return Err(format!("path may not contain {c:?}"));
    }
    Ok(())
}

/// Parses `VOL:PATH[:REPLICA_SET]`; a path may not contain ':', so text after a second
/// ':' must be the replica set, a number.
fn parse_brick_flag(spec: &str) -> Result<BrickSpec, String> {
    let Some((volume, rest)) = spec.split_once(':') else {
        return Err("expected VOL:PATH[:REPLICA_SET]".to_owned());
    };
    check_volume(volume)?;
    let (path, replica_set) = match rest.split_once(':') {
        Some((path, n)) => {
            let n = n
                .parse::<u32>()
                .map_err(|_| format!("replica set {n:?} is not a number from 0 to {}", u32::MAX))?;
            (path, n)
        }
        None => (rest, 0),
    };
    if path.is_empty() {
        return Err("brick path is empty".to_owned());
    }
    let path = PathBuf::from(path);
    check_brick_path(&path)?;
    Ok(BrickSpec {
        volume: volume.to_owned(),
        path,
        replica_set,
    })
}

fn check_webhook(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("must start with http://".to_owned());
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host".to_owned());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    fn args(argv: &[&str]) -> AgentArgs {
        Cli::try_parse_from(std::iter::once("georepd").chain(argv.iter().copied()))
            .expect("flags parse")
            .args
    }

    fn write_config(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("georepd.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn load_file(text: &str, extra: &[&str]) -> (Result<AgentConfig, ConfigError>, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), text);
        let mut argv = vec!["--config", path.to_str().expect("utf-8 path")];
        argv.extend_from_slice(extra);
        (AgentConfig::load(&args(&argv)), path)
    }

    fn err_line(text: &str, extra: &[&str]) -> String {
        let (res, path) = load_file(text, extra);
        let msg = res.expect_err("config must be refused").to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        msg.replace(&path.display().to_string(), "FILE")
    }

    #[test]
    fn defaults_from_flags_only() {
        let cfg = AgentConfig::load(&args(&["--node-id", "n1", "--data-dir", "/var/lib/g"]))
            .expect("valid");
        let d = Path::new("/var/lib/g");
        assert_eq!(cfg.cluster_id, "georep");
        assert_eq!(cfg.listen, "127.0.0.1:7400".parse().unwrap());
        assert_eq!(cfg.advertise, cfg.listen);
        assert_eq!(cfg.api_socket, Path::new(DEFAULT_API_SOCKET));
        assert_eq!(cfg.tls_ca, d.join("tls/ca.crt"));
        assert_eq!(cfg.tls_cert, d.join("tls/n1.crt"));
        assert_eq!(cfg.tls_key, d.join("tls/n1.key"));
        assert_eq!(cfg.gossip_interval_ms, 500);
        assert!(cfg.seeds.is_empty() && cfg.bricks.is_empty() && cfg.webhooks.is_empty());
        assert_eq!(cfg.monitor_command, None);
        assert_eq!(cfg.authorized_keys, None);
    }

    #[test]
    fn missing_required_values_are_named() {
        let e = AgentConfig::load(&args(&["--data-dir", "/d"])).unwrap_err();
        assert!(e.to_string().starts_with("node_id: required"), "{e}");
        let e = AgentConfig::load(&args(&["--node-id", "n"])).unwrap_err();
        assert!(e.to_string().starts_with("data_dir: required"), "{e}");
    }

    const FILE: &str = r#"
cluster_id = "prod"
node_id = "file-node"
data_dir = "/srv/georep"
listen = "0.0.0.0:7400"
advertise = "10.0.0.1:7400"
seeds = ["10.0.0.2:7400", "10.0.0.3:7400"]
gossip_interval_ms = 250
monitor_command = "/usr/bin/mon --session {session} --bricks {bricks}"
webhooks = ["http://hooks.local/georep"]
inject_delay = ["10.0.0.0/24=40ms~5ms", "10.0.0.3=1s"]

[[brick]]
volume = "gv0"
path = "/bricks/b1"
replica_set = 1

[[brick]]
volume = "gv0"
path = "/bricks/b2"
"#;

    /// The commented example shipped as `/etc/georep/georepd.toml`.
    const EXAMPLE: &str = include_str!("../georepd.toml");

    #[test]
    fn the_shipped_example_loads_and_its_commented_values_are_the_defaults() {
        let (shipped, _) = load_file(EXAMPLE, &[]);
        let shipped = shipped.expect("the example file is valid as shipped");
        let uncommented: String = EXAMPLE
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(uncommented.contains("\ngossip_interval_ms = 500\n"));
        let (explicit, _) = load_file(&uncommented, &[]);
        assert_eq!(
            explicit.expect("every documented key parses"),
            shipped,
            "a `# key = value` line of the example is not that key's default"
        );
        for key in [
            "cluster_id",
            "listen",
            "advertise",
            "seeds",
            "api_socket",
            "tls_ca",
            "tls_cert",
            "tls_key",
            "gossip_interval_ms",
            "monitor_command",
            "[[brick]]",
            "replica_set",
            "authorized_keys",
            "webhooks",
            "inject_delay",
        ] {
            assert!(EXAMPLE.contains(key), "the example does not mention {key}");
        }
    }

    #[test]
    fn file_values_are_read() {
        let (cfg, _) = load_file(FILE, &[]);
        let cfg = cfg.expect("valid");
        assert_eq!(cfg.cluster_id, "prod");
        assert_eq!(cfg.node_id, "file-node");
        assert_eq!(cfg.advertise, "10.0.0.1:7400".parse().unwrap());
        assert_eq!(cfg.seeds, ["10.0.0.2:7400", "10.0.0.3:7400"]);
        assert_eq!(cfg.gossip_interval_ms, 250);
        assert_eq!(
            cfg.bricks,
            [
                BrickSpec {
                    volume: "gv0".into(),
                    path: "/bricks/b1".into(),
                    replica_set: 1
                },
                BrickSpec {
                    volume: "gv0".into(),
                    path: "/bricks/b2".into(),
                    replica_set: 0
                },
            ]
        );
        assert_eq!(cfg.tls_cert, Path::new("/srv/georep/tls/file-node.crt"));
        assert_eq!(
            cfg.inject_delay
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.0.0.0/24=40ms~5ms", "10.0.0.3=1s"]
        );
    }

    #[test]
    fn flags_override_file() {
        let (cfg, _) = load_file(
            FILE,
            &[
                "--node-id",
                "flag-node",
                "--seed",
                "192.168.1.1:1",
                "--brick",
                "gv9:/b/x:3",
                "--gossip-interval-ms",
                "1000",
                "--advertise",
                "10.9.9.9:7401",
                "--api-socket",
                "/run/g.sock",
            ],
        );
        let cfg = cfg.expect("valid");
        assert_eq!(cfg.node_id, "flag-node");
        assert_eq!(cfg.seeds, ["192.168.1.1:1"]);
        assert_eq!(
            cfg.bricks,
            [BrickSpec {
                volume: "gv9".into(),
                path: "/b/x".into(),
                replica_set: 3
            }]
        );
        assert_eq!(cfg.gossip_interval_ms, 1000);
        assert_eq!(cfg.advertise, "10.9.9.9:7401".parse().unwrap());
        assert_eq!(cfg.api_socket, Path::new("/run/g.sock"));
        // Not overridden: kept from the file.
        assert_eq!(cfg.webhooks, ["http://hooks.local/georep"]);
        assert_eq!(cfg.cluster_id, "prod");
        // Derived defaults follow the effective node id.
        assert_eq!(cfg.tls_key, Path::new("/srv/georep/tls/flag-node.key"));
    }

    #[test]
    fn serialized_config_loads_back_identically() {
        let (cfg, _) = load_file(FILE, &[]);
        let cfg = cfg.expect("valid");
        let text = toml::to_string(&cfg).expect("serialize");
        let (again, _) = load_file(&text, &[]);
        assert_eq!(again.expect("valid"), cfg);
    }

    #[test]
    fn missing_file_is_named() {
        let e = AgentConfig::load(&args(&["--config", "/nonexistent/georepd.toml"])).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("/nonexistent/georepd.toml: cannot read configuration file"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_toml_names_line_and_key() {
        let msg = err_line(
            "node_id = \"n\"\ndata_dir = \"/d\"\nlisten = \"127.0.0.1:7400\n",
            &[],
        );
        assert!(msg.starts_with("FILE:3:"), "{msg}");
        assert!(msg.contains("listen: "), "{msg}");
    }

    #[test]
    fn unknown_key_is_named_with_line() {
        let msg = err_line(
            "node_id = \"n\"\ndata_dir = \"/d\"\n\ngosip_interval_ms = 5\n",
            &[],
        );
        assert!(
            msg.starts_with("FILE:4:1: gosip_interval_ms: unknown field"),
            "{msg}"
        );
        let msg = err_line(
            "node_id = \"n\"\ndata_dir = \"/d\"\n[[brick]]\nvolume = \"gv0\"\npth = \"/b\"\n",
            &[],
        );
        assert!(
            msg.starts_with("FILE:5:1: brick[0].pth: unknown field"),
            "{msg}"
        );
        let msg = err_line(
            "node_id = \"n\"\n[[brick]]\nvolume = \"a\"\npath = \"/a\"\n\n[[brick]]\nvolume = 7\n",
            &[],
        );
        assert!(
            msg.starts_with("FILE:7:10: brick[1].volume: invalid type"),
            "{msg}"
        );
        // A key spread over lines: toml's own key path is used.
        let msg = err_line("node_id = \"n\"\nseeds = [\n  \"a:1\",\n  5,\n]\n", &[]);
        assert!(msg.starts_with("FILE:4:3: seeds: invalid type"), "{msg}");
    }

    #[test]
    fn wrong_type_is_named_with_line() {
        let msg = err_line(
            "node_id = \"n\"\ndata_dir = \"/d\"\ngossip_interval_ms = \"fast\"\n",
            &[],
        );
        assert!(msg.starts_with("FILE:3:22: gossip_interval_ms: "), "{msg}");
        let msg = err_line(
            "node_id = \"n\"\ndata_dir = \"/d\"\nlisten = \"nowhere\"\n",
            &[],
        );
        assert!(msg.starts_with("FILE:3:10: listen: "), "{msg}");
    }

    #[test]
    fn semantic_errors_in_file_name_line_and_key() {
        let msg = err_line("node_id = \"bad id\"\ndata_dir = \"/d\"\n", &[]);
        assert!(
            msg.starts_with("FILE:1:11: node_id: character ' '"),
            "{msg}"
        );
        let msg = err_line(
            "node_id = \"n\"\ndata_dir = \"/d\"\n[[brick]]\nvolume = \"gv0\"\npath = \"/a\"\n\
             [[brick]]\nvolume = \"gv0\"\npath = \"rel\"\n",
            &[],
        );
        assert!(
            msg.starts_with("FILE:8:8: brick[1].path: path must be absolute"),
            "{msg}"
        );
        let msg = err_line(
            "node_id = \"n\"\ndata_dir = \"/d\"\ngossip_interval_ms = 5\n",
            &[],
        );
        assert!(
            msg.starts_with("FILE:3:22: gossip_interval_ms: 5 is out of range"),
            "{msg}"
        );
        let msg = err_line(
            "node_id = \"n\"\ndata_dir = \"/d\"\nwebhooks = [\"https://x\"]\n",
            &[],
        );
        assert!(
            msg.starts_with("FILE:3:13: webhooks[0]: must start with http://"),
            "{msg}"
        );
    }

    #[test]
    fn bad_brick_flags() {
        let base = ["--node-id", "n", "--data-dir", "/d"];
        let load = |brick: &str| {
            let mut argv = base.to_vec();
            argv.extend(["--brick", brick]);
            AgentConfig::load(&args(&argv)).map_err(|e| e.to_string())
        };
        assert_eq!(
            load("gv0:rel/path").unwrap_err(),
            r#"--brick "gv0:rel/path": path must be absolute"#
        );
        assert!(
            load("gv0")
                .unwrap_err()
                .contains("expected VOL:PATH[:REPLICA_SET]")
        );
        for bad in ["g v:/b", ":/b"] {
            assert!(
                load(bad).unwrap_err().contains("not starting with '-'"),
                "{bad}"
            );
        }
        assert!(load("gv0:").unwrap_err().contains("brick path is empty"));
        let ok = load("gv0:/b:7").expect("valid");
        assert_eq!(ok.bricks[0].replica_set, 7);
        let not_a_number =
            |n: &str| format!("replica set {n:?} is not a number from 0 to 4294967295");
        for (bad, reason) in [
            ("gv0:/b:99999999999", not_a_number("99999999999")),
            ("gv0:/x:abc", not_a_number("abc")),
            ("gv0:/x:-1", not_a_number("-1")),
            ("gv0:/x:", not_a_number("")),
            ("gv0:/a,b", "path may not contain ','".to_owned()),
            ("gv0:/a,b:1", "path may not contain ','".to_owned()),
        ] {
            assert_eq!(load(bad).unwrap_err(), format!("--brick {bad:?}: {reason}"));
        }
        let mut argv = base.to_vec();
        argv.extend(["--brick", "gv0:/b", "--brick", "gv0:/b:2"]);
        let e = AgentConfig::load(&args(&argv)).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
    }

    fn load_delays(delays: &[&str]) -> Result<AgentConfig, String> {
        let mut argv = vec!["--node-id", "n", "--data-dir", "/d"];
        for d in delays {
            argv.extend(["--inject-delay", d]);
        }
        AgentConfig::load(&args(&argv)).map_err(|e| e.to_string())
    }

    #[test]
    fn inject_delay_flags_parse() {
        let cfg = load_delays(&[
            "10.77.2.0/24=40ms~5ms",
            "10.213.0.21=80ms",
            "fd00::/64=250us",
        ])
        .expect("valid");
        assert_eq!(
            cfg.inject_delay,
            [
                DelayRule {
                    network: "10.77.2.0/24".parse().unwrap(),
                    delay: Duration::from_millis(40),
                    jitter: Duration::from_millis(5),
                },
                DelayRule {
                    network: "10.213.0.21/32".parse().unwrap(),
                    delay: Duration::from_millis(80),
                    jitter: Duration::ZERO,
                },
                DelayRule {
                    network: "fd00::/64".parse().unwrap(),
                    delay: Duration::from_micros(250),
                    jitter: Duration::ZERO,
                },
            ]
        );
        // Canonical spelling: the largest whole unit.
        let cfg = load_delays(&["10.0.0.1=1000ms~1500us", "10.0.0.2=0s~60s"]).expect("valid");
        let shown: Vec<String> = cfg.inject_delay.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.1=1s~1500us", "10.0.0.2=0ms~60s"]);
        assert!(load_delays(&[]).expect("valid").inject_delay.is_empty());
    }

    #[test]
    fn bad_inject_delay_flags_say_what_is_wrong() {
        let err = |d: &str| {
            let e = load_delays(&[d]).expect_err("must be refused");
            assert!(!e.contains('\n'), "one line: {e}");
            e
        };
        assert_eq!(
            err("10.77.2.0/24"),
            r#"--inject-delay "10.77.2.0/24": expected NETWORK=DELAY[~JITTER], e.g. 10.77.2.0/24=40ms~5ms"#
        );
        assert_eq!(
            err("10.77.2.5/24=40ms"),
            r#"--inject-delay "10.77.2.5/24=40ms": network: 10.77.2.5/24 has host bits set (did you mean 10.77.2.0/24?)"#
        );
        assert_eq!(
            err("site-b=40ms"),
            r#"--inject-delay "site-b=40ms": network: "site-b" is not an IP address (expected ADDR or ADDR/PREFIX, e.g. 10.77.2.0/24)"#
        );
        assert!(
            err("10.0.0.0/40=1ms").contains("network: prefix \"40\" is not a number from 0 to 32")
        );
        assert_eq!(
            err("10.0.0.1=40"),
            r#"--inject-delay "10.0.0.1=40": delay: "40" is not a whole number with a unit us, ms or s (e.g. 40ms)"#
        );
        assert!(err("10.0.0.1=").contains("delay: \"\" is not a whole number"));
        assert!(err("10.0.0.1=ms").contains("delay: \"ms\" has no number"));
        assert!(err("10.0.0.1=1.5s").contains("delay: \"1.5s\" is not a whole number"));
        assert!(err("10.0.0.1=-5ms").contains("delay: \"-5ms\""));
        assert!(err("10.0.0.1=40ms~").contains("jitter: \"\" is not a whole number"));
        assert_eq!(
            err("10.0.0.1=40ms~61s"),
            r#"--inject-delay "10.0.0.1=40ms~61s": jitter: 61s is longer than 60s"#
        );
        assert!(err("10.0.0.1=99999999999999999999s").contains("is longer than 60s"));
        let e = load_delays(&["10.0.0.0/8=1ms", "10.0.0.0/8=2ms"]).unwrap_err();
        assert_eq!(
            e,
            r#"--inject-delay "10.0.0.0/8=2ms": network 10.0.0.0/8 is listed twice"#
        );
        // The same address written two ways is the same network.
        let e = load_delays(&["10.0.0.1=1ms", "10.0.0.1/32=2ms"]).unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn inject_delay_in_the_file_and_flags_replacing_it() {
        let msg = err_line(
            "node_id = \"n\"\ndata_dir = \"/d\"\ninject_delay = [\"10.0.0.0/24=5ms\", \"10.0.0.1=5\"]\n",
            &[],
        );
        assert!(
            msg.starts_with("FILE:3:36: inject_delay[1]: delay: \"5\" is not a whole number"),
            "{msg}"
        );
        let (cfg, _) = load_file(FILE, &["--inject-delay", "10.9.0.0/16=7ms"]);
        let cfg = cfg.expect("valid");
        assert_eq!(cfg.inject_delay.len(), 1);
        assert_eq!(cfg.inject_delay[0].to_string(), "10.9.0.0/16=7ms");
    }

    #[test]
    fn fault_injection_delays_only_the_listed_networks() {
        let cfg = load_delays(&[]).expect("valid");
        assert!(cfg.fault_injection().is_none());
        let cfg = load_delays(&["10.77.2.0/24=80ms", "10.77.2.9=0ms"]).expect("valid");
        let faults = cfg.fault_injection().expect("asked for");
        let from: SocketAddr = "10.77.1.1:7400".parse().unwrap();
        let delay = |to: &str| faults.faults_for(from, to.parse().unwrap()).delay;
        assert_eq!(delay("10.77.2.1:7400"), Duration::from_millis(80));
        assert_eq!(delay("10.77.2.9:7400"), Duration::ZERO);
        assert_eq!(delay("10.77.1.2:7400"), Duration::ZERO);
    }

    #[test]
    fn advertise_is_required_with_unspecified_listen() {
        let e = AgentConfig::load(&args(&[
            "--node-id",
            "n",
            "--data-dir",
            "/d",
            "--listen",
            "0.0.0.0:7400",
        ]))
        .unwrap_err();
        assert!(e.to_string().starts_with("advertise: required"), "{e}");
        let e = AgentConfig::load(&args(&[
            "--node-id",
            "n",
            "--data-dir",
            "/d",
            "--advertise",
            "0.0.0.0:7400",
        ]))
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--advertise \"0.0.0.0:7400\": must be"),
            "{e}"
        );
    }

    #[test]
    fn bad_seed_and_ids() {
        let e = AgentConfig::load(&args(&[
            "--node-id",
            "n",
            "--data-dir",
            "/d",
            "--seed",
            "host-without-port",
        ]))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"--seed "host-without-port": not an ADDR:PORT socket address"#
        );
        let long = "x".repeat(65);
        let e = AgentConfig::load(&args(&["--node-id", &long, "--data-dir", "/d"])).unwrap_err();
        assert!(e.to_string().contains("1 to 64 characters"), "{e}");
    }

    #[test]
    fn bad_placeholder_is_refused() {
        let base = ["--node-id", "n", "--data-dir", "/d", "--monitor-command"];
        let load = |cmd: &str| {
            let mut argv = base.to_vec();
            argv.push(cmd);
            AgentConfig::load(&args(&argv)).map_err(|e| e.to_string())
        };
        let e = load("mon {sesion}").unwrap_err();
        assert!(
            e.starts_with(r#"--monitor-command "mon {sesion}": unknown placeholder {sesion}"#),
            "{e}"
        );
        assert!(load("mon {session").unwrap_err().contains("unmatched '{'"));
        assert!(
            load("mon 'unterminated")
                .unwrap_err()
                .contains("missing closing quote")
        );
        assert!(load("   ").unwrap_err().contains("is empty"));
        assert!(load("awk '{{print}}' {session_dir}").is_ok());
    }
}
