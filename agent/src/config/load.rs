//! Loading: the TOML file's shape (every key optional, with spans so errors name
//! the line), reading it, and flags and file resolved into one validated
//! [`AgentConfig`] with every check.

use super::*;

/// The file's shape: everything optional (flags may supply it), with spans
/// so that semantic errors point at the offending line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) cluster_id: Option<Spanned<String>>,
    pub(super) node_id: Option<Spanned<String>>,
    pub(super) data_dir: Option<Spanned<PathBuf>>,
    pub(super) listen: Option<SocketAddr>,
    pub(super) advertise: Option<Spanned<SocketAddr>>,
    pub(super) metrics_listen: Option<SocketAddr>,
    pub(super) data_listen: Option<SocketAddr>,
    pub(super) dbus: Option<super::DbusBus>,
    pub(super) events_max_bytes: Option<u64>,
    pub(super) monitor_log_max_bytes: Option<u64>,
    pub(super) events_max_age: Option<Spanned<String>>,
    pub(super) seeds: Option<Vec<Spanned<String>>>,
    pub(super) api_socket: Option<PathBuf>,
    #[serde(rename = "brick")]
    pub(super) bricks: Option<Vec<Spanned<FileBrick>>>,
    pub(super) tls_ca: Option<PathBuf>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) gossip_interval_ms: Option<Spanned<u64>>,
    pub(super) monitor_command: Option<Spanned<String>>,
    pub(super) monitor: Option<Spanned<super::MonitorProfile>>,
    pub(super) bricks_from_glusterd: Option<Spanned<bool>>,
    pub(super) authorized_keys: Option<PathBuf>,
    pub(super) ssh_gsyncd_command: Option<Spanned<String>>,
    pub(super) ssh_tar_command: Option<Spanned<String>>,
    pub(super) webhooks: Option<Spanned<Vec<String>>>,
    pub(super) monitor_restart_max: Option<Spanned<String>>,
    pub(super) webhook_backoff_max: Option<Spanned<String>>,
    pub(super) webhook_park_after: Option<Spanned<String>>,
    pub(super) inject_delay: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileBrick {
    pub(super) volume: Spanned<String>,
    pub(super) path: Spanned<PathBuf>,
    #[serde(default)]
    pub(super) replica_set: u32,
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone)]
pub(super) enum Origin {
    /// A flag; the string is the flag and its value as the user wrote it.
    Flag(String),
    /// A span of the configuration file, and the key at that span.
    File(Range<usize>, String),
}

/// The configuration file's text, kept to turn spans into line:column.
pub(super) struct Source {
    pub(super) path: PathBuf,
    pub(super) text: String,
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
pub(super) struct Reporter<'a> {
    pub(super) source: Option<&'a Source>,
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

pub(super) fn parse_file(source: &Source) -> Result<FileConfig, ConfigError> {
    let syntax = |err: toml::de::Error| {
        let span = err.span().unwrap_or(0..0);
        let key = key_at(&source.text, span.start);
        source.error_at(span, key, err.message())
    };
    let deserializer = toml::Deserializer::parse(&source.text).map_err(syntax)?;
    // The key path (e.g. `brick[1].path`) from serde_path_to_error; the line from
    // toml's span.
    serde_path_to_error::deserialize::<_, FileConfig>(deserializer).map_err(|err| {
        let path = key_path(err.path());
        let err = err.into_inner();
        let span = err.span().unwrap_or(0..0);
        let key = path.or_else(|| key_at(&source.text, span.start));
        source.error_at(span, key, err.message())
    })
}

/// A deserializer path as the file spells it (`brick[1].path`), without the private
/// field `toml::Spanned` wraps values in; `None` for the top level.
fn key_path(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key.starts_with("$__serde_spanned") => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Best-effort key for an error at byte `offset`: the left-hand side of the
/// `key = value` line there, qualified by the enclosing table (with its
/// index for `[[array]]` tables, e.g. `brick[1].path`), or the table header
/// itself.
pub(super) fn key_at(text: &str, offset: usize) -> Option<String> {
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
pub(super) fn qualified_table(earlier: &str, name: &str, header_line: &str) -> String {
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
pub(super) fn table_header(line: &str) -> Option<String> {
    let inner = line
        .strip_prefix("[[")
        .and_then(|l| l.split_once("]]"))
        .or_else(|| line.strip_prefix('[').and_then(|l| l.split_once(']')))?
        .0
        .trim();
    (!inner.is_empty()).then(|| inner.to_owned())
}

pub(super) fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

pub(super) fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A value together with where it came from.
pub(super) struct Sourced<T> {
    pub(super) value: T,
    pub(super) origin: Origin,
}

pub(super) fn from_flag<T>(value: T, flag: &str, shown: impl std::fmt::Display) -> Sourced<T> {
    Sourced {
        value,
        origin: Origin::Flag(format!("--{flag} {:?}", shown.to_string())),
    }
}

pub(super) fn from_file<T>(spanned: Spanned<T>, key: impl Into<String>) -> Sourced<T> {
    let span = spanned.span();
    Sourced {
        value: spanned.into_inner(),
        origin: Origin::File(span, key.into()),
    }
}

pub(super) fn resolve(
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
    let bricks: Vec<BrickSpec> = bricks.into_iter().map(|b| b.value).collect();

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

    let profile = match (args.monitor, file.monitor) {
        (Some(p), _) => Some(from_flag(p, "monitor", format!("{p:?}").to_lowercase())),
        (None, Some(s)) => Some(from_file(s, "monitor")),
        (None, None) => None,
    };
    if let (Some(profile), Some(command)) = (&profile, &monitor_command)
        && !profile.value.is_builtin()
    {
        return Err(report.invalid(
            &profile.origin,
            format!(
                "a monitor profile and a monitor command (`{}`) exclude each other: give one",
                command.template()
            ),
        ));
    }
    let monitor = profile.map(|p| p.value).unwrap_or_default();
    let from_glusterd = if args.bricks_from_glusterd {
        Some(from_flag(true, "bricks-from-glusterd", "true"))
    } else {
        file.bricks_from_glusterd
            .map(|s| from_file(s, "bricks_from_glusterd"))
    };
    let bricks_from_glusterd = from_glusterd.as_ref().is_some_and(|f| f.value);
    if let Some(f) = from_glusterd.as_ref().filter(|f| f.value)
        && !bricks.is_empty()
    {
        return Err(report.invalid(
            &f.origin,
            "bricks from glusterd and listed bricks exclude each other: give one",
        ));
    }

    let authorized_keys = args.authorized_keys.clone().or(file.authorized_keys);
    let metrics_listen = args.metrics_listen.or(file.metrics_listen);
    let dbus = args.dbus.or(file.dbus);
    let data_listen = args.data_listen.or(file.data_listen);
    let events_max_bytes = args
        .events_max_bytes
        .or(file.events_max_bytes)
        .unwrap_or(DEFAULT_EVENTS_MAX_BYTES);
    let monitor_log_max_bytes = args
        .monitor_log_max_bytes
        .or(file.monitor_log_max_bytes)
        .unwrap_or(super::DEFAULT_MONITOR_LOG_MAX_BYTES);
    let events_max_age_ms = match (args.events_max_age, file.events_max_age) {
        (Some(age), _) => age.as_millis() as u64,
        (None, Some(text)) => {
            let given = from_file(text, "events_max_age");
            super::flags::parse_age_text(&given.value)
                .map_err(|reason| report.invalid(&given.origin, reason))?
                .as_millis() as u64
        }
        (None, None) => DEFAULT_EVENTS_MAX_AGE_MS,
    };
    let forced = |flag: &Option<String>,
                  name: &str,
                  key: Option<Spanned<String>>,
                  default: &str| {
        let given = match (flag, key) {
            (Some(c), _) => from_flag(c.clone(), name, c),
            (None, Some(s)) => from_file(s, name.replace('-', "_")),
            (None, None) => return Ok(default.to_string()),
        };
        let value = given.value.trim().to_string();
        if value.is_empty()
            || value
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            return Err(report.invalid(
                &given.origin,
                "must be a non-empty command without double quotes, backslashes or control characters (it is written inside command=\"...\")",
            ));
        }
        Ok(value)
    };
    let ssh_gsyncd_command = forced(
        &args.ssh_gsyncd_command,
        "ssh-gsyncd-command",
        file.ssh_gsyncd_command,
        DEFAULT_GSYNCD_COMMAND,
    )?;
    let ssh_tar_command = forced(
        &args.ssh_tar_command,
        "ssh-tar-command",
        file.ssh_tar_command,
        DEFAULT_TAR_COMMAND,
    )?;

    const WEBHOOKS_MOVED: &str = "webhooks are cluster state now: add them with `georep webhook add URL` on any node (they reach every node, also one that is down)";
    if let Some(url) = args.webhooks.first() {
        return Err(report.invalid(
            &from_flag(url.clone(), "webhook", url).origin,
            WEBHOOKS_MOVED,
        ));
    }
    if let Some(given) = file.webhooks {
        let given = from_file(given, "webhooks");
        return Err(report.invalid(&given.origin, WEBHOOKS_MOVED));
    }
    let duration = |flag: Option<std::time::Duration>,
                    key: Option<Spanned<String>>,
                    name: &str,
                    default: u64| {
        match (flag, key) {
            (Some(age), _) => Ok(age.as_millis() as u64),
            (None, Some(text)) => {
                let given = from_file(text, name);
                super::flags::parse_age_text(&given.value)
                    .map(|d| d.as_millis() as u64)
                    .map_err(|reason| report.invalid(&given.origin, reason))
            }
            (None, None) => Ok(default),
        }
    };
    let monitor_restart_max_ms = duration(
        args.monitor_restart_max,
        file.monitor_restart_max,
        "monitor_restart_max",
        super::DEFAULT_MONITOR_RESTART_MAX_MS,
    )?;
    let webhook_backoff_max_ms = duration(
        args.webhook_backoff_max,
        file.webhook_backoff_max,
        "webhook_backoff_max",
        super::DEFAULT_WEBHOOK_BACKOFF_MAX_MS,
    )?;
    let webhook_park_after_ms = duration(
        args.webhook_park_after,
        file.webhook_park_after,
        "webhook_park_after",
        super::DEFAULT_WEBHOOK_PARK_AFTER_MS,
    )?;

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
        monitor,
        bricks_from_glusterd,
        authorized_keys,
        metrics_listen,
        data_listen,
        dbus,
        events_max_bytes,
        monitor_log_max_bytes,
        events_max_age_ms,
        ssh_gsyncd_command,
        ssh_tar_command,
        monitor_restart_max_ms,
        webhook_backoff_max_ms,
        webhook_park_after_ms,
        inject_delay,
        persist_inline: false,
    })
}

pub(super) fn missing(key: &str, flag: &str, source: Option<&Source>) -> ConfigError {
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

pub(super) fn check_id(report: &Reporter<'_>, id: &Sourced<String>) -> Result<(), ConfigError> {
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

pub(super) fn check_volume(volume: &str) -> Result<(), String> {
    georep_mesh::check_name(volume).map_err(|reason| format!("volume name {volume:?}: {reason}"))
}

pub(super) fn check_brick_path(path: &Path) -> Result<(), String> {
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
pub(super) fn parse_brick_flag(spec: &str) -> Result<BrickSpec, String> {
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
            monitor: MonitorProfile::Builtin,
            bricks_from_glusterd: false,
            authorized_keys: None,
            metrics_listen: None,
            data_listen: None,
            dbus: None,
            events_max_bytes: DEFAULT_EVENTS_MAX_BYTES,
            monitor_log_max_bytes: super::DEFAULT_MONITOR_LOG_MAX_BYTES,
            events_max_age_ms: DEFAULT_EVENTS_MAX_AGE_MS,
            ssh_gsyncd_command: DEFAULT_GSYNCD_COMMAND.to_string(),
            ssh_tar_command: DEFAULT_TAR_COMMAND.to_string(),
            monitor_restart_max_ms: super::DEFAULT_MONITOR_RESTART_MAX_MS,
            webhook_backoff_max_ms: super::DEFAULT_WEBHOOK_BACKOFF_MAX_MS,
            webhook_park_after_ms: super::DEFAULT_WEBHOOK_PARK_AFTER_MS,
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
