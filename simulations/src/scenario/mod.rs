//! What a run does, and when: scripted scenarios (TOML) and the seeded random
//! workload, both resolved to one timeline of [`Step`]s.
//!
//! A scenario file:
//!
//! ```toml
//! name = "partition-heal"
//! nodes = 5            # default: --nodes
//! sessions = 1         # sessions gv0 -> site<k>::gv<v>, k = 0..sessions (see Layout::session)
//! duration = "2m"      # optional; default: the last step (the final check follows)
//!
//! [[step]]
//! at = "10s"           # absolute virtual time; or `after = "2s"` (relative to the
//! action = "create"    # previous step); `wait` steps move the cursor by `duration`
//! node = 0
//! session = 0
//!
//! [[step]]
//! after = "5s"
//! action = "partition"
//! groups = [[0, 1], [2, 3, 4]]
//! ```
//!
//! Actions: `create`, `start`, `stop`, `pause`, `resume`, `config` (`key`, `value`;
//! no value resets), `delete` (each with `node`, `session`, optional `force`, `wait`);
//! `partition` (`groups`, optional `oneway = true`: only group i -> group j, i < j, is
//! cut), `degrade` (`loss`, `delay`, `jitter`, `duplicate`, optional `groups` of two
//! between which it applies, both ways; otherwise on every link), `heal`, `crash`
//! (`node`, `mode = "agent"` (monitors survive) or `"host"`), `restart` (`node`,
//! `disk = "kept"` or `"lost"`), `skew` (`node`, `offset = "-3s"`), `monitor-crash` and
//! `monitor-hang` (`node`, `session`), `wait` (`duration`), `check` (heal is not
//! implied: wait for the invariants to hold, up to the quiet window).
//!
//! Nodes are numbered from 0; node `i` has id `n<i>`. The first 60 % (at least one)
//! are primary nodes with one brick of `gv0` each, in replica sets of two; the others
//! host the secondary volumes `gv1`, `gv2`, ...

use std::fmt;
use std::path::Path;
use std::time::Duration;

use georep_mesh::{LinkFaults, SeededRng};
use georep_mesh::{SessionId, SessionOp, SessionOptions};
use serde::{Deserialize, Serialize};

use crate::duration::{format_duration, parse_duration, parse_offset_ms};

/// The primary volume every session replicates.
pub const PRIMARY_VOLUME: &str = "gv0";

/// Who hosts what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Number of nodes.
    pub nodes: usize,
    /// Nodes `0..primaries` host `gv0`; the rest host `gv1`.
    pub primaries: usize,
    /// Sessions `0..sessions`.
    pub sessions: usize,
}

impl Layout {
    /// About 60 % primaries (at least one, and at least one secondary from 2 nodes).
    pub fn new(nodes: usize, sessions: usize) -> Self {
        let primaries =
            ((nodes as f64 * 0.6).round() as usize).clamp(1, nodes.saturating_sub(1).max(1));
        Self {
            nodes,
            primaries,
            sessions: sessions.max(1),
        }
    }

    /// Whether node `i` hosts the primary volume.
    pub fn is_primary(&self, node: usize) -> bool {
        node < self.primaries
    }

    /// The id of node `i`.
    pub fn node_id(node: usize) -> String {
        format!("n{node}")
    }

    /// The id of session `k`: `gv0 -> <secondary node>::gv<k+1>`, the secondary
    /// nodes taken in turn, except that with three or more sessions the last one
    /// targets `gv1` again through another host (its secondary node's address), so
    /// that one pair of sessions competes for one pair of volumes (refused creates,
    /// and concurrent creates across partitions that must resolve to one winner).
    pub fn session(&self, k: usize) -> SessionId {
        let secondaries = self.nodes.saturating_sub(self.primaries);
        let host = if secondaries == 0 {
            format!("site{k}")
        } else {
            let node = self.primaries + k % secondaries;
            if self.sessions >= 3 && k == self.sessions - 1 {
                crate::cluster::node_addr(node).ip().to_string()
            } else {
                Self::node_id(node)
            }
        };
        SessionId {
            primary_volume: PRIMARY_VOLUME.into(),
            secondary_user: "root".into(),
            secondary_host: host,
            secondary_volume: self.secondary_volume_of(k),
        }
    }

    /// Secondary volume of session `k`.
    fn secondary_volume_of(&self, k: usize) -> String {
        let distinct = if self.sessions >= 3 {
            self.sessions - 1
        } else {
            self.sessions
        };
        format!("gv{}", k % distinct.max(1) + 1)
    }

    /// The secondary volumes every secondary node hosts.
    pub fn secondary_volumes(&self) -> Vec<String> {
        let mut volumes: Vec<String> = (0..self.sessions)
            .map(|k| self.secondary_volume_of(k))
            .collect();
        volumes.sort();
        volumes.dedup();
        volumes
    }
}

/// How an agent dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CrashMode {
    /// Only the agent process: its monitors keep running and are adopted on restart.
    Agent,
    /// The whole host: monitors die too.
    Host,
}

/// What survives a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disk {
    /// The data directory is kept.
    Kept,
    /// The data directory is wiped (a replaced host: no processes either).
    Lost,
}

/// Link faults as scenarios write them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultSpec {
    /// Loss probability.
    pub loss: f64,
    /// Fixed delay, ms.
    pub delay_ms: u64,
    /// Random extra delay in `[0, jitter)`, ms (reorders frames).
    pub jitter_ms: u64,
    /// Duplication probability.
    pub duplicate: f64,
}

impl FaultSpec {
    /// As the mesh's fault controller takes it.
    pub fn link_faults(&self) -> LinkFaults {
        LinkFaults {
            loss: self.loss,
            delay: Duration::from_millis(self.delay_ms),
            jitter: Duration::from_millis(self.jitter_ms),
            duplicate: self.duplicate,
        }
    }
}

/// One thing that happens during a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// A command issued on a node's local API.
    Op {
        /// Node the command is issued on.
        node: usize,
        /// Session index.
        session: usize,
        /// The command.
        op: SessionOp,
        /// `--wait` (up to 5 s) rather than `--no-wait`.
        wait: bool,
    },
    /// Cut links between groups (both ways, or only from earlier to later groups).
    Partition {
        /// Groups of node indices.
        groups: Vec<Vec<usize>>,
        /// Only group i -> group j (i < j) is cut.
        oneway: bool,
    },
    /// Loss, delay, jitter, duplication on every link or between two groups.
    Degrade {
        /// Two groups between which the faults apply (both ways); `None`: everywhere.
        between: Option<(Vec<usize>, Vec<usize>)>,
        /// The faults.
        faults: FaultSpec,
    },
    /// Remove every partition and link fault.
    Heal,
    /// Kill an agent.
    Crash {
        /// Node.
        node: usize,
        /// What dies with it.
        mode: CrashMode,
    },
    /// Start a crashed agent again.
    Restart {
        /// Node.
        node: usize,
        /// Whether its data directory survived.
        disk: Disk,
    },
    /// Step a node's clock to `offset_ms` from true time.
    Skew {
        /// Node.
        node: usize,
        /// Offset, ms (negative: behind).
        offset_ms: i64,
    },
    /// A session's monitor on a node exits on its own.
    MonitorCrash {
        /// Node.
        node: usize,
        /// Session index.
        session: usize,
    },
    /// A session's monitor on a node stops answering SIGTERM.
    MonitorHang {
        /// Node.
        node: usize,
        /// Session index.
        session: usize,
    },
    /// Wait (at most the quiet window) for the invariants to hold, then check them.
    Check,
}

/// An action at a virtual time (since the start of the run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// When, since the start of the run.
    pub at: Duration,
    /// What.
    pub action: Action,
}

fn op_name(op: &SessionOp) -> String {
    match op {
        SessionOp::SetConfig { key, value } => format!("config {key}={value}"),
        SessionOp::ResetConfig { key } => format!("config reset {key}"),
        SessionOp::Start { force: true }
        | SessionOp::Stop { force: true }
        | SessionOp::Pause { force: true }
        | SessionOp::Resume { force: true }
        | SessionOp::Delete { force: true, .. } => format!("{} --force", op.name()),
        other => other.name().to_string(),
    }
}

fn groups_text(groups: &[Vec<usize>]) -> String {
    let inner: Vec<String> = groups
        .iter()
        .map(|g| {
            let ids: Vec<String> = g.iter().map(|n| Layout::node_id(*n)).collect();
            format!("[{}]", ids.join(","))
        })
        .collect();
    inner.join(" | ")
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Op {
                node,
                session,
                op,
                wait,
            } => write!(
                f,
                "{} on n{node} session {session}{}",
                op_name(op),
                if *wait { " --wait" } else { "" }
            ),
            Action::Partition { groups, oneway } => write!(
                f,
                "partition{} {}",
                if *oneway {
                    " (one-way, left to right)"
                } else {
                    ""
                },
                groups_text(groups)
            ),
            Action::Degrade { between, faults } => {
                let scope = match between {
                    Some((a, b)) => groups_text(&[a.clone(), b.clone()]),
                    None => "all links".into(),
                };
                write!(
                    f,
                    "degrade {scope}: loss {:.0}% delay {}ms jitter {}ms dup {:.0}%",
                    faults.loss * 100.0,
                    faults.delay_ms,
                    faults.jitter_ms,
                    faults.duplicate * 100.0
                )
            }
            Action::Heal => f.write_str("heal"),
            Action::Crash { node, mode } => write!(f, "crash n{node} ({mode:?})"),
            Action::Restart { node, disk } => write!(f, "restart n{node} (disk {disk:?})"),
            Action::Skew { node, offset_ms } => write!(f, "skew n{node} to {offset_ms:+}ms"),
            Action::MonitorCrash { node, session } => {
                write!(f, "monitor crash on n{node} session {session}")
            }
            Action::MonitorHang { node, session } => {
                write!(f, "monitor hang on n{node} session {session}")
            }
            Action::Check => f.write_str("check invariants"),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t={:>9.3}s  {}", self.at.as_secs_f64(), self.action)
    }
}

/// A resolved plan: the layout and the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    /// Name shown in reports (`random` for the random workload).
    pub name: String,
    /// Who hosts what.
    pub layout: Layout,
    /// The steps, in time order.
    pub steps: Vec<Step>,
    /// Virtual time at which the run ends (a final heal and check follow).
    pub duration: Duration,
    /// Seed of the simulated network's fault decisions (and of the random workload).
    pub seed: u64,
}

/// Why a scenario file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown fields.
    #[error("{path}: {message}")]
    Toml {
        /// The file.
        path: String,
        /// toml's message (with line and column).
        message: String,
    },
    /// A step is invalid.
    #[error("{path}: step {index} ({action}): {reason}")]
    Step {
        /// The file.
        path: String,
        /// 1-based step number.
        index: usize,
        /// Its action.
        action: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: Option<String>,
    #[allow(dead_code)]
    description: Option<String>,
    nodes: Option<usize>,
    sessions: Option<usize>,
    seed: Option<u64>,
    duration: Option<String>,
    #[serde(default, rename = "step")]
    steps: Vec<StepFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    at: Option<String>,
    after: Option<String>,
    action: String,
    node: Option<usize>,
    session: Option<usize>,
    groups: Option<Vec<Vec<usize>>>,
    oneway: Option<bool>,
    force: Option<bool>,
    wait: Option<bool>,
    key: Option<String>,
    value: Option<String>,
    mode: Option<String>,
    disk: Option<String>,
    loss: Option<f64>,
    duplicate: Option<f64>,
    delay: Option<String>,
    jitter: Option<String>,
    offset: Option<String>,
    duration: Option<String>,
}

impl Scenario {
    /// Reads a scenario file; `default_nodes` and `default_seed` apply when the file
    /// does not say.
    pub fn load(
        path: &Path,
        default_nodes: usize,
        default_seed: u64,
    ) -> Result<Scenario, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".into());
        Self::parse(&text, &shown, &name, default_nodes, default_seed)
    }

    /// Parses scenario TOML (`origin` names it in errors).
    pub fn parse(
        text: &str,
        origin: &str,
        default_name: &str,
        default_nodes: usize,
        default_seed: u64,
    ) -> Result<Scenario, ScenarioError> {
        let file: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError::Toml {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let nodes = file.nodes.unwrap_or(default_nodes);
        let layout = Layout::new(nodes, file.sessions.unwrap_or(1));
        let mut cursor = Duration::ZERO;
        let mut steps = Vec::new();
        for (i, raw) in file.steps.iter().enumerate() {
            let bad = |reason: String| ScenarioError::Step {
                path: origin.to_string(),
                index: i + 1,
                action: raw.action.clone(),
                reason,
            };
            let dur = |text: &Option<String>| -> Result<Option<Duration>, ScenarioError> {
                text.as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(|e| bad(e.to_string()))
            };
            match (dur(&raw.at)?, dur(&raw.after)?) {
                (Some(_), Some(_)) => return Err(bad("give `at` or `after`, not both".into())),
                (Some(at), None) => {
                    if at < cursor {
                        return Err(bad(format!(
                            "at = {} is before the previous step ({})",
                            format_duration(at),
                            format_duration(cursor)
                        )));
                    }
                    cursor = at;
                }
                (None, Some(after)) => cursor += after,
                (None, None) => {}
            }
            if raw.action == "wait" {
                cursor +=
                    dur(&raw.duration)?.ok_or_else(|| bad("`wait` needs `duration`".into()))?;
                continue;
            }
            let action = resolve_action(raw, &layout).map_err(bad)?;
            steps.push(Step { at: cursor, action });
        }
        let duration = match dur_opt(&file.duration).map_err(|e| ScenarioError::Toml {
            path: origin.to_string(),
            message: e.to_string(),
        })? {
            Some(d) => d.max(cursor),
            None => cursor,
        };
        Ok(Scenario {
            name: file.name.unwrap_or_else(|| default_name.to_string()),
            layout,
            steps,
            duration,
            seed: file.seed.unwrap_or(default_seed),
        })
    }
}

fn dur_opt(text: &Option<String>) -> Result<Option<Duration>, crate::duration::DurationError> {
    text.as_deref().map(parse_duration).transpose()
}

fn resolve_action(raw: &StepFile, layout: &Layout) -> Result<Action, String> {
    let node = || -> Result<usize, String> {
        let node = raw.node.ok_or("needs `node`")?;
        if node >= layout.nodes {
            return Err(format!(
                "node {node} does not exist (nodes are 0..{})",
                layout.nodes
            ));
        }
        Ok(node)
    };
    let session = || -> Result<usize, String> {
        let session = raw.session.unwrap_or(0);
        if session >= layout.sessions {
            return Err(format!(
                "session {session} does not exist (sessions are 0..{})",
                layout.sessions
            ));
        }
        Ok(session)
    };
    let force = raw.force.unwrap_or(false);
    let op = |op: SessionOp| -> Result<Action, String> {
        Ok(Action::Op {
            node: node()?,
            session: session()?,
            op,
            wait: raw.wait.unwrap_or(false),
        })
    };
    let groups = || -> Result<Vec<Vec<usize>>, String> {
        let groups = raw.groups.clone().ok_or("needs `groups`")?;
        if groups.len() < 2 {
            return Err("needs at least two groups".into());
        }
        if let Some(n) = groups.iter().flatten().find(|n| **n >= layout.nodes) {
            return Err(format!("node {n} does not exist"));
        }
        Ok(groups)
    };
    let ms = |text: &Option<String>| -> Result<u64, String> {
        Ok(dur_opt(text)
            .map_err(|e| e.to_string())?
            .map_or(0, |d| d.as_millis() as u64))
    };
    let probability = |p: Option<f64>| -> Result<f64, String> {
        let p = p.unwrap_or(0.0);
        if (0.0..=1.0).contains(&p) {
            Ok(p)
        } else {
            Err(format!("probability {p} is not within 0..=1"))
        }
    };
    Ok(match raw.action.as_str() {
        "create" => op(SessionOp::Create {
            options: SessionOptions::default(),
            force,
        })?,
        "start" => op(SessionOp::Start { force })?,
        "stop" => op(SessionOp::Stop { force })?,
        "pause" => op(SessionOp::Pause { force })?,
        "resume" => op(SessionOp::Resume { force })?,
        "delete" => op(SessionOp::Delete {
            force,
            reset_sync_time: false,
        })?,
        "config" => {
            let key = raw.key.clone().ok_or("needs `key`")?;
            match &raw.value {
                Some(value) => op(SessionOp::SetConfig {
                    key,
                    value: value.clone(),
                })?,
                None => op(SessionOp::ResetConfig { key })?,
            }
        }
        "partition" => Action::Partition {
            groups: groups()?,
            oneway: raw.oneway.unwrap_or(false),
        },
        "degrade" => {
            let between = match raw.groups.as_ref() {
                None => None,
                Some(_) => {
                    let groups = groups()?;
                    let [a, b] = <[Vec<usize>; 2]>::try_from(groups)
                        .map_err(|_| "`degrade` takes exactly two groups".to_string())?;
                    Some((a, b))
                }
            };
            Action::Degrade {
                between,
                faults: FaultSpec {
                    loss: probability(raw.loss)?,
                    delay_ms: ms(&raw.delay)?,
                    jitter_ms: ms(&raw.jitter)?,
                    duplicate: probability(raw.duplicate)?,
                },
            }
        }
        "heal" => Action::Heal,
        "crash" => Action::Crash {
            node: node()?,
            mode: match raw.mode.as_deref().unwrap_or("agent") {
                "agent" => CrashMode::Agent,
                "host" => CrashMode::Host,
                other => return Err(format!("mode `{other}`: use \"agent\" or \"host\"")),
            },
        },
        "restart" => Action::Restart {
            node: node()?,
            disk: match raw.disk.as_deref().unwrap_or("kept") {
                "kept" => Disk::Kept,
                "lost" => Disk::Lost,
                other => return Err(format!("disk `{other}`: use \"kept\" or \"lost\"")),
            },
        },
        "skew" => Action::Skew {
            node: node()?,
            offset_ms: parse_offset_ms(raw.offset.as_deref().ok_or("needs `offset`")?)
                .map_err(|e| e.to_string())?,
        },
        "monitor-crash" => Action::MonitorCrash {
            node: node()?,
            session: session()?,
        },
        "monitor-hang" => Action::MonitorHang {
            node: node()?,
            session: session()?,
        },
        "check" => Action::Check,
        other => return Err(format!("unknown action `{other}`")),
    })
}

mod random;

pub use random::*;

#[cfg(test)]
mod tests;
