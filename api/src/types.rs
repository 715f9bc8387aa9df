//! The JSON of the local API (`georepd.sock`): requests and responses, shared by the
//! agent and the CLI. Stable: fields may be added, never renamed.
//!
//! Routes (HTTP/1.1, one request per connection):
//! - `GET  /v1/status[?primary=P[&secondary=S]]` -> [`StatusResponse`]
//! - `GET  /v1/nodes` -> [`NodesResponse`]
//! - `POST /v1/op` with [`OpRequest`] -> [`OpResponse`] (200 done or timed out, 409 refused, 400 bad request)
//! - `GET  /v1/config?primary=P&secondary=S[&key=K]` -> [`ConfigResponse`]
//! - `GET  /v1/exists?volume=V[&secondary=S]` -> [`ExistsResponse`]
//!
//! Every error body is an [`ErrorBody`].

use std::collections::BTreeMap;

use georep_mesh::Brick;
use georep_mesh::SessionOp;
use serde::{Deserialize, Serialize};

/// One worker row of `status` (one per primary brick).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRow {
    /// Primary node id.
    pub node: String,
    /// Primary brick path.
    pub brick: String,
    /// Created, Initializing..., Active, Passive, Faulty, Stopped, Paused, Offline,
    /// Pausing..., Stopping...
    pub status: crate::WorkerStatus,
    /// Crawl status (`N/A` when there is none).
    pub crawl_status: crate::CrawlStatus,
    /// Last synced time, if any.
    pub last_synced: Option<String>,
    /// Pid of the node's monitor for this session.
    pub monitor_pid: Option<u32>,
    /// Secondary node the worker talks to, if known.
    pub secondary_node: Option<String>,
    /// Entry operations pending.
    pub entry: u64,
    /// Data operations pending.
    pub data: u64,
    /// Metadata operations pending.
    pub meta: u64,
    /// Failures.
    pub failures: u64,
    /// Checkpoint time, if a checkpoint is set.
    pub checkpoint_time: Option<String>,
    /// Whether the checkpoint completed.
    pub checkpoint_completed: bool,
    /// When the checkpoint completed.
    pub checkpoint_completion_time: Option<String>,
    /// Milliseconds since the primary node was last heard from (Offline rows).
    pub last_heard_ms: Option<u64>,
    /// Monitor restarts on that node.
    pub restarts: u32,
    /// The monitor's last error, if any.
    pub last_error: Option<String>,
}

/// One session in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// Primary volume.
    pub primary_volume: String,
    /// Secondary user.
    pub secondary_user: String,
    /// Secondary host.
    pub secondary_host: String,
    /// Secondary volume.
    pub secondary_volume: String,
    /// Session directory name.
    pub name: String,
    /// Desired state.
    pub desired_state: String,
    /// Live nodes whose replica holds this session's latest write.
    pub converged_nodes: Vec<String>,
    /// Live nodes that do not yet.
    pub lagging_nodes: Vec<String>,
    /// Dead nodes.
    pub dead_nodes: Vec<String>,
    /// Explicitly set configuration keys.
    pub config: BTreeMap<String, String>,
    /// One row per primary brick.
    pub workers: Vec<WorkerRow>,
    /// Set when another session between the same two volumes was created first (on
    /// the other side of a partition): this one runs no monitor until one is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// push-pem sessions: per secondary node, the primaries' keys it has installed
    /// (JSON `keys`, as cli.md has it).
    #[serde(default, rename = "keys", skip_serializing_if = "Vec::is_empty")]
    pub secondary_keys: Vec<SecondaryKeys>,
}

/// One secondary node's installation of a push-pem session's keys, counted per primary
/// node (each has two: gsyncd's and tar's, installed together).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondaryKeys {
    /// Secondary node id.
    pub node: String,
    /// Whether it is live.
    pub live: bool,
    /// Primary nodes whose keys are in its managed block.
    pub keys_installed: usize,
    /// Primary nodes hosting the primary volume.
    pub keys_expected: usize,
    /// The authorized_keys file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    /// Primary nodes whose keys are not installed, and why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub missing: BTreeMap<String, String>,
    /// Why nothing could be installed, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Response of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// Sessions in scope.
    pub sessions: Vec<SessionStatus>,
}

/// One node in `nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    /// Node id.
    pub node: String,
    /// Gossip address.
    pub address: String,
    /// Live according to the failure detector.
    pub live: bool,
    /// Chitchat generation.
    pub generation: u64,
    /// Agent version, if known.
    pub agent_version: Option<String>,
    /// Milliseconds since its heartbeat last advanced.
    pub last_heard_ms: Option<u64>,
    /// Declared bricks.
    pub bricks: Vec<Brick>,
    /// Paths of its bricks that do not serve, as the node last checked: the directory
    /// does not exist (yet), or glusterd has not started the volume.
    #[serde(default)]
    pub missing_bricks: Vec<String>,
}

/// Response of `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodesResponse {
    /// Every known node.
    pub nodes: Vec<NodeRow>,
}

/// Body of `POST /v1/op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpRequest {
    /// Primary volume.
    pub primary: String,
    /// Secondary, `[USER@]HOST::VOL`.
    pub secondary: String,
    /// The operation.
    pub op: SessionOp,
    /// Wait for every live node (and, for run-state changes, every live primary monitor).
    pub wait: bool,
    /// How long to wait, in milliseconds.
    pub timeout_ms: u64,
}

/// Response of `POST /v1/op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpResponse {
    /// Whether the operation was applied.
    pub ok: bool,
    /// `PRIMARYVOL -> [USER@]HOST::SECONDARYVOL`.
    pub session: String,
    /// Human summary.
    pub message: String,
    /// Live nodes that confirmed.
    pub confirmed_nodes: Vec<String>,
    /// Dead nodes (they catch up when they return).
    pub dead_nodes: Vec<String>,
    /// Live nodes that had not confirmed when the wait ended.
    pub lagging_nodes: Vec<String>,
    /// Live primary nodes whose monitor did not match yet when the wait ended.
    pub pending_monitors: Vec<String>,
    /// `create --push-pem`: live secondary nodes that had not installed every live
    /// primary's current keys when the wait ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_keys: Vec<String>,
    /// Whether everything waited for was confirmed (false after a timeout or `--no-wait`).
    pub converged: bool,
    /// Whether the agent waited at all.
    pub waited: bool,
    /// HLC stamp of the registers the operation wrote (`millis.counter@node`), so a
    /// client can tell its write from a later one. Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
    /// For `config` set: the value as stored (validated and normalised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One key of `config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigRow {
    /// Canonical key name.
    pub key: String,
    /// Effective value.
    pub value: String,
    /// Default value.
    pub default: String,
    /// Whether explicitly set.
    pub set: bool,
    /// Whether a change applies without a monitor restart.
    pub live: bool,
}

/// Response of `GET /v1/config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigResponse {
    /// Always true (errors use [`ErrorBody`]).
    pub ok: bool,
    /// Session name.
    pub session: String,
    /// Keys (one when `key` was given).
    pub keys: Vec<ConfigRow>,
}

/// Body of `POST /v1/nodes/forget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgetRequest {
    /// The node to forget.
    pub node: String,
    /// Wait for every live node to merge the forget.
    pub wait: bool,
    /// How long to wait, in milliseconds.
    pub timeout_ms: u64,
}

/// Response of `POST /v1/nodes/forget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgetResponse {
    /// Whether the node was forgotten.
    pub ok: bool,
    /// Always null: no session is concerned.
    pub session: Option<String>,
    /// Human summary.
    pub message: String,
    /// The forgotten node.
    pub node: String,
    /// Its generation that was forgotten (a later one is a new member).
    pub generation: u64,
    /// Live nodes that merged the forget.
    pub confirmed_nodes: Vec<String>,
    /// Other dead nodes.
    pub dead_nodes: Vec<String>,
    /// Live nodes that had not merged it when the wait ended.
    pub lagging_nodes: Vec<String>,
    /// Whether every live node merged it (false after a timeout or `--no-wait`).
    pub converged: bool,
    /// Whether the agent waited at all.
    pub waited: bool,
}

/// Response of `GET /v1/exists`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExistsResponse {
    /// Always true (errors use [`ErrorBody`]).
    pub ok: bool,
    /// Whether a matching session exists.
    pub exists: bool,
    /// Whether a matching session is Started or Paused.
    pub running: bool,
    /// Names of the matching sessions.
    pub sessions: Vec<String>,
    /// What was asked about: the session, or the volume when no secondary was given.
    #[serde(default)]
    pub session: String,
    /// One sentence: which sessions match, and their desired states.
    #[serde(default)]
    pub message: String,
}

/// Body of `POST /v1/gluster-hook`: glusterd is about to run `op` on `volume` (what
/// the pre-hook script passes on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlusterHookRequest {
    /// glusterd's hook directory name: `stop`, `remove-brick` or `delete`.
    pub op: String,
    /// The volume (`--volname=` of the hook's arguments).
    pub volume: String,
}

/// Response of `POST /v1/gluster-hook`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlusterHookResponse {
    /// Always true (errors use [`ErrorBody`]).
    pub ok: bool,
    /// Whether a geo-replication session stands in the way (running, for `stop` and
    /// `remove-brick`; existing, for `delete`), as gluster would have refused.
    pub conflict: bool,
    /// The sessions of the volume.
    pub sessions: Vec<String>,
    /// One sentence for the operator.
    pub message: String,
}

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Always false.
    pub ok: bool,
    /// What kind of error, for programs (`message` is for people).
    #[serde(default)]
    pub code: ErrorCode,
    /// Session concerned, if any.
    pub session: Option<String>,
    /// What was wrong and what to do.
    pub message: String,
}

/// The machine-readable kind of an error answer (`code` in [`ErrorBody`]), in JSON as
/// its snake_case name. New codes may be added; a client reads a code it does not
/// know as [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed: a missing or invalid parameter, a body that is not
    /// the expected JSON (400).
    BadRequest,
    /// The session name (`PRIMARY`, `HOST::SECONDARY`) is invalid (400).
    BadSessionName,
    /// No such session (409).
    SessionNotFound,
    /// Create of a session that exists (409).
    AlreadyExists,
    /// Create between two volumes another session already replicates between (409).
    SameVolumes,
    /// Create with a primary volume no node declares bricks of (409).
    PrimaryVolumeUnknown,
    /// Create with a secondary volume no live node hosts (409; `--force` overrides).
    SecondaryNotHosted,
    /// Create to a secondary volume another session already writes to (409).
    SecondaryVolumeTaken,
    /// Create naming a secondary host that is not a live node (409; `--force`).
    SecondaryHostUnknown,
    /// Create for a secondary user a secondary node lacks (409; `--force`).
    SecondaryUserMissing,
    /// Create with a secondary volume smaller than the primary (409; `--force`).
    SecondaryTooSmall,
    /// Create when a volume's size cannot be verified (409; `--force`).
    SizeUnknown,
    /// Create with a secondary volume that holds data (409; `--force`).
    SecondaryNotEmpty,
    /// `create --push-pem --force` on a session without push-pem (409).
    NoKeysToRotate,
    /// The session's desired state does not allow the operation, e.g. start of a
    /// started session (409).
    WrongState,
    /// A config key that does not exist (409).
    UnknownKey,
    /// A config value that does not fit its key (409).
    BadValue,
    /// A node id no member of the mesh has (409).
    UnknownNode,
    /// `node forget` was refused (409).
    ForgetRefused,
    /// `webhook add` of a URL that is already a webhook (409).
    WebhookExists,
    /// `webhook mod`/`del` of a URL that is not a webhook (409).
    WebhookNotFound,
    /// The request could not be stored (e.g. the record would be too large) (409).
    NotStored,
    /// No such endpoint (404).
    NotFound,
    /// The endpoint does not take this method (405).
    MethodNotAllowed,
    /// The request body exceeds the limit (413).
    PayloadTooLarge,
    /// The request was not received in time (408).
    RequestTimeout,
    /// Every connection slot is serving a request (503).
    Busy,
    /// The agent failed to answer (500).
    Internal,
    /// A code this client does not know (a newer agent), or none (an older one).
    #[default]
    #[serde(other)]
    Unknown,
}

/// One event of the merged cluster-wide stream (`GET /v1/events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    /// `<origin>:<seq>`: stable across retries and nodes; consumers de-duplicate on it.
    pub id: String,
    /// The node that recorded it.
    pub origin: String,
    /// Its position in the origin's journal (strictly increasing, no holes).
    pub seq: u64,
    /// Its HLC stamp (`millis.counter@node`).
    pub hlc: String,
    /// Unix time in seconds (from the HLC).
    pub ts: u64,
    /// Event type, gluster's eventsapi name where gluster has one (`GEOREP_START`).
    pub event: String,
    /// Payload, gluster's keys where gluster has them.
    pub message: BTreeMap<String, String>,
    /// Resume after this event with `--since CURSOR`.
    pub cursor: String,
}

/// A range of an origin's events this node no longer holds (retention), reported
/// instead of being skipped silently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapRow {
    /// The origin whose events are missing.
    pub origin: String,
    /// First missing seq.
    pub from: u64,
    /// Last missing seq.
    pub to: u64,
    /// Why (`retention`).
    pub reason: String,
}

/// One item of the stream: an event, or a gap (`{"gap": {...}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StreamItem {
    /// A gap.
    Gap {
        /// What is missing.
        gap: GapRow,
    },
    /// An event.
    Event(EventRow),
}

/// Response of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsResponse {
    /// Events and gaps after the request's cursor, in (HLC, origin, seq) order.
    pub items: Vec<StreamItem>,
    /// The cursor after the last item (pass it back to continue).
    pub cursor: String,
}

/// Body of `POST /v1/webhooks`: add, modify or delete a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRequest {
    /// `add`, `mod` or `del`.
    pub action: String,
    /// The receiver's URL (the webhook's identity).
    pub url: String,
    /// `gluster` (default) or `standard`.
    #[serde(default)]
    pub format: Option<String>,
    /// Bearer token.
    #[serde(default)]
    pub token: Option<String>,
    /// JWT secret (gluster format) or `whsec_...` signing secret (standard format).
    #[serde(default)]
    pub secret: Option<String>,
    /// PEM of a private CA for HTTPS (the content of `--ca FILE`).
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Wait for every live node to hold the change.
    pub wait: bool,
    /// How long to wait, in milliseconds.
    pub timeout_ms: u64,
}

/// Response of `POST /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookResponse {
    /// Whether the change was applied.
    pub ok: bool,
    /// Human summary.
    pub message: String,
    /// The webhook.
    pub url: String,
    /// Live nodes holding the change.
    pub confirmed_nodes: Vec<String>,
    /// Live nodes that did not hold it when the wait ended.
    pub lagging_nodes: Vec<String>,
    /// Whether every live node holds it.
    pub converged: bool,
    /// Whether the agent waited at all.
    pub waited: bool,
}

/// Body of `POST /v1/webhooks/test`: one delivery from this node, now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookTestRequest {
    /// Where to deliver.
    pub url: String,
    /// Format (default: the webhook's own if it is one, else `gluster`).
    #[serde(default)]
    pub format: Option<String>,
    /// Bearer token (default: the webhook's own).
    #[serde(default)]
    pub token: Option<String>,
    /// Secret (default: the webhook's own).
    #[serde(default)]
    pub secret: Option<String>,
    /// Private CA PEM (default: the webhook's own).
    #[serde(default)]
    pub ca_pem: Option<String>,
}

/// Response of `POST /v1/webhooks/test`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookTestResponse {
    /// Whether the receiver answered 2xx.
    pub ok: bool,
    /// The URL tried.
    pub url: String,
    /// The delivery id sent.
    pub id: String,
    /// HTTP status, if an answer came.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Round trip in milliseconds.
    pub elapsed_ms: u64,
    /// Human summary.
    pub message: String,
}

/// Response of `GET /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookListResponse {
    /// Every webhook, by URL.
    pub webhooks: Vec<WebhookRow>,
}

/// One webhook as `webhook list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRow {
    /// Receiver URL.
    pub url: String,
    /// `gluster` or `standard`.
    pub format: String,
    /// `none`, `token` or `secret` (never the value).
    pub auth: String,
    /// Whether a private CA is configured.
    pub ca: bool,
    /// `active`, `parked` or `disabled`.
    pub state: String,
    /// Why it is parked or disabled.
    pub state_reason: Option<String>,
    /// HLC of its add: events stamped before it are not delivered to it.
    pub added: String,
    /// Nodes delivering some stream to it now.
    pub delivering_nodes: Vec<String>,
    /// Delivered position per stream (`n1@17:5,...`, as an events cursor).
    pub cursor: String,
    /// Events held here not yet acknowledged by the receiver.
    pub pending: u64,
    /// Events retention removed before they were delivered (reported, not silent).
    pub lost: u64,
    /// Unix ms since when deliveries fail (the earliest failing stream).
    pub failing_since_ms: Option<u64>,
    /// The last error seen.
    pub last_error: Option<String>,
    /// Per stream detail.
    pub streams: Vec<WebhookStreamRow>,
}

/// One (webhook, stream) delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookStreamRow {
    /// The stream (`node@epoch`).
    pub stream: String,
    /// The node delivering it (by the rule: its writer while live, else a
    /// rendezvous hash over live nodes).
    pub delivering_node: Option<String>,
    /// Last seq the receiver acknowledged.
    pub delivered: u64,
    /// Events after it held here.
    pub pending: u64,
    /// Events lost to retention.
    pub lost: u64,
    /// Unix ms since when its deliveries fail.
    pub failing_since_ms: Option<u64>,
    /// Its last error.
    pub last_error: Option<String>,
}
