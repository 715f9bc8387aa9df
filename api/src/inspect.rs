//! The JSON of `georep inspect` (the `/v1/inspect/...` routes of the local API, and the
//! offline decoding of a data directory). Stable: fields may be added, never renamed.
//!
//! Routes (HTTP/1.1 `GET`, one request per connection; errors are
//! [`crate::types::ErrorBody`], 400 for a malformed request, 409 for an unknown
//! node or session):
//! - `/v1/inspect/members` -> [`MembersResponse`]
//! - `/v1/inspect/sessions[?primary=P[&secondary=S]]` -> [`SessionsResponse`]
//! - `/v1/inspect/keys?node=N[&prefix=P]` -> [`KeysResponse`]
//! - `/v1/inspect/explain?primary=P&secondary=S[&node=N]` -> [`ExplainResponse`]
//! - `/v1/inspect/diff?a=A&b=B` -> [`DiffResponse`]
//!
//! `georep inspect offline` needs no agent: [`OfflineResponse`] comes from
//! `georep_agent::inspect::offline`.
//!
//! Conventions: HLC stamps are strings in their `Display` form `millis.counter@node`;
//! a position in a writer's history ([`WritePosition`]) is
//! `{"generation": G, "version": V}`; everything is as the *local* agent knows it
//! (other nodes' views are what they last published and gossiped here).

use std::collections::BTreeMap;

use georep_mesh::{Brick, WritePosition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A member's liveness as the failure detector judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberStatus {
    /// Live (always, for the local node).
    Live,
    /// Dead: its heartbeat stopped advancing here.
    Dead,
    /// Dead long enough that chitchat will forget its state.
    ScheduledForDeletion,
}

/// One node in `inspect members`.
///
/// There is deliberately no `phi` field: chitchat 0.11 keeps its failure detector (and
/// the phi values it computes) private, so the agent cannot read it. `status` is that
/// detector's verdict; `last_heard_ms` is the age of the last heartbeat change, the
/// input phi is computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRow {
    /// Node id.
    pub node: String,
    /// Whether it is the agent that answered.
    pub is_self: bool,
    /// Live according to the failure detector.
    pub live: bool,
    /// Chitchat generation (a new one on every restart).
    pub generation: u64,
    /// Gossip address.
    pub gossip_addr: String,
    /// `live`, `dead` or `scheduled-for-deletion`.
    pub status: MemberStatus,
    /// Its heartbeat counter as known here.
    pub heartbeat: u64,
    /// Milliseconds since its heartbeat last advanced here (0 for the local node).
    pub last_heard_ms: Option<u64>,
    /// Agent version it publishes, if known.
    pub agent_version: Option<String>,
    /// Number of (live) keys in its namespace.
    pub key_count: usize,
    /// Highest chitchat version of its namespace known here.
    pub max_version: u64,
    /// Its published convergence frontier: per origin, the newest session write merged.
    pub seen: BTreeMap<String, WritePosition>,
}

/// Response of `GET /v1/inspect/members`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembersResponse {
    /// Every node known to the local agent, by node id.
    pub members: Vec<MemberRow>,
}

/// One register of a session record, with its value, stamp and writer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterValue {
    /// `created`, `deleted`, `desired` or `config.KEY`.
    pub register: String,
    /// `created`: the creation options (`{"push_pem": bool, "forced": bool}`);
    /// `deleted`: `null`; `desired`: the state (`"Started"`...); `config.KEY`: the value,
    /// or `null` when the key was reset to its default.
    pub value: Value,
    /// HLC stamp of the write, `millis.counter@node`.
    pub stamp: String,
    /// The node that wrote it (the stamp's node).
    pub writer: String,
}

/// One register in `inspect sessions`: its value and which namespaces carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRow {
    /// `created`, `deleted`, `desired` or `config.KEY`.
    pub register: String,
    /// As [`RegisterValue::value`].
    pub value: Value,
    /// HLC stamp of the winning write, `millis.counter@node`.
    pub stamp: String,
    /// The node that wrote it.
    pub writer: String,
    /// Nodes whose namespace (as gossiped here) holds this register at this stamp or
    /// newer: its writer, or custodians keeping it alive.
    pub carried_by: Vec<String>,
}

/// A namespace carrying a session's newest write, and where in its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carrier {
    /// Node whose namespace holds the write.
    pub origin: String,
    /// Its chitchat generation.
    pub generation: u64,
    /// Chitchat version of the session's key there.
    pub version: u64,
}

impl Carrier {
    /// The write's position in this carrier's history.
    pub fn position(&self) -> WritePosition {
        WritePosition {
            generation: self.generation,
            version: self.version,
        }
    }
}

/// The newest write of a session: which namespace carries it and where in its history.
///
/// Custodians republish registers that arrived by eager push, so the same write may sit
/// in several namespaces (`carriers`); a node has merged it when its `seen` covers any
/// of them. `origin`, `generation` and `version` name one carrier: the stamp's writer
/// if its namespace carries it, else the lowest node id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatestWrite {
    /// The newest register stamp, `millis.counter@node`.
    pub stamp: String,
    /// Node whose namespace carries that write (`seen[origin]` is compared with it).
    pub origin: String,
    /// The origin's chitchat generation of the write.
    pub generation: u64,
    /// Chitchat version of the write's key in that generation.
    pub version: u64,
    /// Every namespace carrying a register with that stamp.
    pub carriers: Vec<Carrier>,
}

impl LatestWrite {
    /// The write's position in its origin's history.
    pub fn position(&self) -> WritePosition {
        WritePosition {
            generation: self.generation,
            version: self.version,
        }
    }
}

/// Where one node stands with one session's latest write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Convergence {
    /// Live, and merged the latest write: it carries it, its published frontier covers
    /// it in one of its carriers, or it acknowledged the write's eager push
    /// (acknowledgements reach only the writer, so that last test is made only when the
    /// answering node carries the write).
    Merged,
    /// Live, and has not merged it yet.
    Lagging,
    /// Dead in the local agent's view (see `merged` for what it had).
    Dead,
}

/// One cell of the node × session convergence matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvergenceCell {
    /// Node id.
    pub node: String,
    /// `merged`, `lagging` or `dead`.
    pub state: Convergence,
    /// Whether it is live.
    pub live: bool,
    /// Whether it merged the latest write, by the tests of [`Convergence::Merged`]
    /// (true when there is none). Also given for dead nodes: what they had.
    pub merged: bool,
    /// Its `seen` entry for the latest write's origin, if any.
    pub seen: Option<WritePosition>,
}

/// One session in `inspect sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInspect {
    /// `PRIMARYVOL -> [USER@]HOST::SECONDARYVOL`.
    pub session: String,
    /// The chitchat key of its record (`s/<key>`).
    pub key: String,
    /// Primary volume.
    pub primary_volume: String,
    /// Secondary user.
    pub secondary_user: String,
    /// Secondary host.
    pub secondary_host: String,
    /// Secondary volume.
    pub secondary_volume: String,
    /// Whether it exists (created after its latest delete); deleted records stay until
    /// their tombstone is dropped.
    pub exists: bool,
    /// Desired state (`Created` when never set in this incarnation).
    pub desired_state: String,
    /// Every register of the converged record.
    pub registers: Vec<RegisterRow>,
    /// The newest write, if some namespace gossiped here carries one.
    pub latest_write: Option<LatestWrite>,
    /// One cell per known node (the session's column of the matrix).
    pub nodes: Vec<ConvergenceCell>,
    /// Live nodes that merged the latest write.
    pub converged_nodes: Vec<String>,
    /// Live nodes that have not.
    pub lagging_nodes: Vec<String>,
    /// Dead nodes.
    pub dead_nodes: Vec<String>,
}

/// Response of `GET /v1/inspect/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionsResponse {
    /// The node that answered.
    pub local_node: String,
    /// Sessions in scope, deleted ones included.
    pub sessions: Vec<SessionInspect>,
}

/// One key of a node's namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRow {
    /// The chitchat key.
    pub key: String,
    /// Its chitchat version.
    pub version: u64,
    /// Size of the stored value, in bytes.
    pub size: usize,
    /// Whether it is a deletion tombstone.
    pub deleted: bool,
    /// `session` (`s/`), `node`, `seen`, `monitor` (`m/`) or `other`.
    pub kind: String,
    /// The stored string, undecoded (base64 of version byte + postcard).
    pub raw: String,
    /// The value decoded to JSON (stamps as `millis.counter@node`), when decodable.
    pub decoded: Option<Value>,
    /// Why it could not be decoded, when it could not.
    pub decode_error: Option<String>,
}

/// Response of `GET /v1/inspect/keys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeysResponse {
    /// The node whose namespace this is.
    pub node: String,
    /// Its generation whose keys these are (the latest known here).
    pub generation: u64,
    /// The node that answered (whose copy of the namespace this is).
    pub held_by: String,
    /// The prefix asked for, if any.
    pub prefix: Option<String>,
    /// Keys, sorted.
    pub keys: Vec<KeyRow>,
}

/// Why a session's monitor is, or is not, running on a node: a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExplainReason {
    /// The node is dead in the local agent's view; what it runs is unknown here.
    NodeDead,
    /// The node hosts no brick of the primary volume: no monitor runs there.
    NotPrimary,
    /// The node has not merged the session's latest write; it acts on older state.
    Lagging,
    /// The session is deleted: no monitor should run.
    Deleted,
    /// Desired state Stopped or Created: no monitor should run.
    DesiredStopped,
    /// Desired state Paused: the monitor is kept frozen.
    DesiredPaused,
    /// Desired Started and the node reports its monitor Faulty (crashing, backing off).
    Faulty,
    /// Desired Started and the node reports its monitor running.
    Running,
    /// Desired Started; the node has not (yet) reported its monitor running.
    Starting,
}

impl ExplainReason {
    /// The stable code, as in the JSON.
    pub fn code(self) -> &'static str {
        match self {
            ExplainReason::NodeDead => "node_dead",
            ExplainReason::NotPrimary => "not_primary",
            ExplainReason::Lagging => "lagging",
            ExplainReason::Deleted => "deleted",
            ExplainReason::DesiredStopped => "desired_stopped",
            ExplainReason::DesiredPaused => "desired_paused",
            ExplainReason::Faulty => "faulty",
            ExplainReason::Running => "running",
            ExplainReason::Starting => "starting",
        }
    }
}

/// A node's published monitor report, stamps as strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorView {
    /// Started, Paused, Stopped, Faulty, Starting, Stopping, NotPrimary.
    pub state: String,
    /// Pid (= process group) of the monitor, while one exists.
    pub pid: Option<u32>,
    /// Restarts since the session was last started.
    pub restarts: u32,
    /// Last unexpected exit or spawn failure.
    pub last_error: Option<String>,
    /// The desired stamp the node's supervisor last acted on.
    pub desired_stamp: Option<String>,
    /// The restart stamp the running monitor was started for.
    pub restart_stamp: Option<String>,
    /// Milliseconds the monitor had been in `state` when the node published this.
    pub since_ms: u64,
    /// Time left before the next retry when the node published this, while one is pending.
    pub backoff_remaining_ms: Option<u64>,
    /// When the node took the report (Unix ms, its clock); `None` from older agents.
    pub published_at_ms: Option<u64>,
    /// How old the report is by the answering agent's clock (clocks may be skewed).
    pub age_ms: Option<u64>,
    /// The supervisor's last decision, as a sentence.
    pub last_decision: String,
}

/// Response of `GET /v1/inspect/explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainResponse {
    /// Always true (errors use [`crate::types::ErrorBody`]).
    pub ok: bool,
    /// `PRIMARYVOL -> [USER@]HOST::SECONDARYVOL`.
    pub session: String,
    /// The node explained.
    pub node: String,
    /// The node that answered.
    pub local_node: String,
    /// Stable reason code (see [`ExplainReason`]).
    pub reason: ExplainReason,
    /// The conclusion, one sentence.
    pub message: String,
    /// Every fact behind it, one sentence each, in the order they matter.
    pub sentences: Vec<String>,
    /// Whether the session exists.
    pub exists: bool,
    /// Desired state.
    pub desired_state: String,
    /// Stamp of the desired register, if set in this incarnation.
    pub desired_stamp: Option<String>,
    /// Whether the node is live.
    pub node_live: bool,
    /// Milliseconds since the node's heartbeat last advanced here.
    pub last_heard_ms: Option<u64>,
    /// The node's bricks of the primary volume (empty: not a primary node).
    pub primary_bricks: Vec<Brick>,
    /// Whether the node hosts a brick of the secondary volume.
    pub hosts_secondary: bool,
    /// The node's published monitor report for the session, if any.
    pub monitor: Option<MonitorView>,
    /// The session's newest write, if known.
    pub latest_write: Option<LatestWrite>,
    /// The node's `seen` entry for the latest write's origin.
    pub node_seen: Option<WritePosition>,
    /// Whether the node has merged the latest write (see [`Convergence::Merged`]).
    pub merged_latest_write: bool,
}

/// One session write (an origin's `s/` key at a version) that one side merged and the
/// other has not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteDiff {
    /// Node whose namespace holds the key.
    pub origin: String,
    /// The key (`s/<session key>`).
    pub key: String,
    /// The session, `PRIMARYVOL -> SECONDARY`, when the value decodes.
    pub session: Option<String>,
    /// The origin's generation.
    pub generation: u64,
    /// The key's version.
    pub version: u64,
    /// Whether node A's frontier covers it.
    pub merged_by_a: bool,
    /// Whether node B's frontier covers it.
    pub merged_by_b: bool,
    /// The registers that write carries (what the other side is missing or older on).
    pub registers: Vec<RegisterValue>,
}

/// A `seen` entry on which the two nodes differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenDiff {
    /// Origin node.
    pub origin: String,
    /// Node A's entry.
    pub a: Option<WritePosition>,
    /// Node B's entry.
    pub b: Option<WritePosition>,
}

/// Response of `GET /v1/inspect/diff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffResponse {
    /// Node A.
    pub a: String,
    /// Node B.
    pub b: String,
    /// The node that answered (the differences are as it knows both frontiers).
    pub local_node: String,
    /// Whether anything differs.
    pub differs: bool,
    /// Session writes one side merged and the other has not.
    pub writes: Vec<WriteDiff>,
    /// Differing `seen` entries.
    pub seen: Vec<SeenDiff>,
    /// One-sentence summary (`no differences` once converged).
    pub message: String,
}

/// The fixed header of a state file's envelope, as read (whether or not it is valid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeHeader {
    /// The first four bytes, as hex.
    pub magic: String,
    /// Whether they are `GRPS`.
    pub magic_ok: bool,
    /// Format version byte.
    pub format_version: u8,
    /// Payload length the header claims.
    pub payload_len: u64,
    /// Payload bytes the file actually holds (between header and checksum).
    pub payload_held: u64,
}

/// One session record decoded from a state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineRecord {
    /// `PRIMARYVOL -> SECONDARY`.
    pub session: String,
    /// Whether the record says the session exists (`None` for a record of the node's
    /// own namespace: those are partial, holding only the registers the node wrote or
    /// keeps alive, so they say nothing about existence).
    pub exists: Option<bool>,
    /// Desired state it holds (`None` for own-namespace records).
    pub desired_state: Option<String>,
    /// Its registers.
    pub registers: Vec<RegisterValue>,
}

/// A session directory under `<data-dir>/geo-replication`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionDirRow {
    /// Directory name (`<primaryvol>_<secondaryhost>_<secondaryvol>`).
    pub name: String,
    /// Content of `monitor.status`, if present.
    pub monitor_status: Option<String>,
    /// Pid recorded in `monitor.pid`, if present and readable.
    pub monitor_pid: Option<u32>,
    /// Whether a process with that pid exists now (`None` without a pid).
    pub pid_running: Option<bool>,
    /// Why `monitor.pid` could not be read, if it exists but is unreadable.
    pub pid_file_error: Option<String>,
}

/// Output of `georep inspect offline`: a stopped agent's data directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineResponse {
    /// Whether the state file was read completely and passed every check.
    pub ok: bool,
    /// The data directory.
    pub data_dir: String,
    /// The state file (`<data-dir>/state.bin`).
    pub state_file: String,
    /// Its size in bytes, if it exists.
    pub file_size: Option<u64>,
    /// What failed (a missing file, or the check that failed), if anything.
    pub error: Option<String>,
    /// The envelope header, when the file is long enough to hold one.
    pub envelope: Option<EnvelopeHeader>,
    /// Node id the state belongs to, if it could be read.
    pub node_id: Option<String>,
    /// Chitchat generation of the last run, if it could be read.
    pub generation: Option<u64>,
    /// The greatest HLC issued or seen, if it could be read.
    pub hlc_last: Option<String>,
    /// Records in the node's own namespace (as many as could be read).
    pub own_records: Vec<OfflineRecord>,
    /// The converged replica (as many sessions as could be read).
    pub replica: Vec<OfflineRecord>,
    /// Session directories with their monitor status and pid.
    pub session_dirs: Vec<SessionDirRow>,
    /// One-sentence summary.
    pub message: String,
}

/// Every register of a record with its value, stamp and writer.
pub fn register_values(record: &georep_mesh::SessionRecord) -> Vec<RegisterValue> {
    let mut out = Vec::new();
    if let Some(reg) = &record.created {
        out.push(RegisterValue {
            register: "created".into(),
            value: serde_json::json!({"push_pem": reg.val.push_pem, "forced": reg.val.forced}),
            stamp: reg.marker.to_string(),
            writer: reg.marker.node.clone(),
        });
    }
    if let Some(stamp) = &record.deleted {
        out.push(RegisterValue {
            register: "deleted".into(),
            value: Value::Null,
            stamp: stamp.to_string(),
            writer: stamp.node.clone(),
        });
    }
    if let Some(reg) = &record.desired {
        out.push(RegisterValue {
            register: "desired".into(),
            value: Value::String(reg.val.to_string()),
            stamp: reg.marker.to_string(),
            writer: reg.marker.node.clone(),
        });
    }
    for (key, reg) in &record.config {
        out.push(RegisterValue {
            register: format!("config.{key}"),
            value: reg.val.clone().map_or(Value::Null, Value::String),
            stamp: reg.marker.to_string(),
            writer: reg.marker.node.clone(),
        });
    }
    out
}
