//! A running mesh node: chitchat gossip + replicated session state + eager push +
//! custodians + convergence frontier, over any [`Link`].
//!
//! Keys this node writes in its chitchat namespace:
//! - `s/<session key>`: the registers of that session this node wrote or keeps alive;
//! - `seen`: its [`Seen`] frontier (newest session write merged, per origin);
//! - `node` and any other owner-written key the agent sets with [`MeshNode::set_owned`].
//!
//! The converged record of a session is the join of its `s/` key over every node state
//! chitchat holds, plus what arrived by eager push or was reloaded from disk.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ListenerHandle,
    spawn_chitchat,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::{self, CodecError};
use crate::gossip::{GossipTransport, IdentityGuard};
use crate::hlc::{Hlc, HlcClock, WallClock};
use crate::network::{Frame, FrameKind, Link, LinkStatsSnapshot, Received};
use crate::probe::{self, GenerationReply, LiveIncarnation};
use crate::state::{self, RegisterName, Replica, SessionId, SessionOp, SessionRecord, StateError};
use crate::view::{Member, Membership, NodeInfo, Seen, WritePosition};

/// Key prefix of session records.
pub const SESSION_PREFIX: &str = "s/";
/// Key of a node's frontier.
pub const SEEN_KEY: &str = "seen";
/// Sends on tasks of their own in flight at once (see `Shared::send_detached`).
const MAX_DETACHED_SENDS: usize = 256;
/// Gossip rounds an uncarried register waits before the lowest-ranked custodians
/// republish it, when its writer is not live.
const CUSTODIAN_ROUNDS: u32 = 3;
/// The same when its writer is live (its own namespace should carry it shortly).
const CUSTODIAN_ROUNDS_WRITER_LIVE: u32 = 12;
/// Higher-ranked holders of an uncarried register wait longer before republishing it,
/// up to this many times the base patience (so a register only they hold is still
/// kept alive within a bounded time, whatever the cluster's size).
const MAX_CUSTODIAN_STAGGER: usize = 3;
/// At most this many change-driven refreshes per gossip round (plus the round's own).
const REFRESHES_PER_ROUND: u32 = 10;
/// Key of a node's [`NodeInfo`].
pub const NODE_KEY: &str = "node";
/// Key prefix of forgotten nodes (`forget/<node id>`, value: the newest generation of
/// that node forgotten), written by the node that ran `node forget`.
pub const FORGET_PREFIX: &str = "forget/";

/// Tunables of a mesh node.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// This node's id (must equal its certificate's).
    pub node_id: String,
    /// Chitchat generation: strictly greater on every restart.
    pub generation: u64,
    /// Cluster name; nodes of other clusters are refused by chitchat.
    pub cluster_id: String,
    /// Gossip round interval.
    pub gossip_interval: Duration,
    /// Addresses to gossip with at start (`host:port`).
    pub seeds: Vec<String>,
    /// Phi-accrual threshold above which a node is considered dead.
    pub phi_threshold: f64,
    /// How long a dead node's state is kept before chitchat forgets it.
    pub dead_node_grace: Duration,
    /// At most this many peers receive an eager push directly.
    pub push_fanout: usize,
    /// How many live nodes keep alive a register no live writer carries.
    pub custodians: usize,
    /// How long a record this node wrote stays in its namespace once every register in
    /// it lost to newer writes carried elsewhere (longer than clients wait on a write).
    pub retire_superseded_after: Duration,
}

impl MeshConfig {
    /// Defaults for a LAN cluster.
    pub fn new(node_id: impl Into<String>, generation: u64) -> Self {
        Self {
            node_id: node_id.into(),
            generation,
            cluster_id: "georep".into(),
            gossip_interval: Duration::from_millis(500),
            seeds: Vec::new(),
            phi_threshold: 8.0,
            dead_node_grace: Duration::from_secs(24 * 3600),
            push_fanout: 64,
            custodians: 2,
            retire_superseded_after: Duration::from_secs(60),
        }
    }
}

/// What a node persists to come back with everything it knew.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshSnapshot {
    /// The records in this node's own namespace.
    pub own: Vec<SessionRecord>,
    /// The converged replica.
    pub replica: Replica,
    /// The greatest HLC stamp issued or seen.
    pub hlc_last: Option<Hlc>,
}

/// Proof of a local write: where it sits in the writer's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteReceipt {
    /// The session written.
    pub session: SessionId,
    /// The writer (this node).
    pub origin: String,
    /// Generation and version of the written key.
    pub position: WritePosition,
    /// HLC stamp of the written registers.
    pub stamp: Hlc,
}

/// How far a write has spread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteProgress {
    /// Live nodes that merged the write (acknowledged push or published frontier).
    pub confirmed: Vec<String>,
    /// Live nodes that have not confirmed yet.
    pub lagging: Vec<String>,
    /// Dead nodes: they catch up when they return.
    pub dead: Vec<String>,
}

impl WriteProgress {
    /// Whether every live node confirmed.
    pub fn complete(&self) -> bool {
        self.lagging.is_empty()
    }
}

/// Errors of a mesh node.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The operation was refused by validation; nothing was written.
    #[error(transparent)]
    Refused(#[from] StateError),
    /// The value could not be encoded (too large); nothing was written.
    #[error("cannot encode session record: {0}")]
    Encode(#[from] CodecError),
    /// Chitchat could not start.
    #[error("cannot start gossip: {0}")]
    Start(String),
    /// `node forget` was refused; nothing was written.
    #[error("{0}")]
    ForgetRefused(String),
    /// Another agent with this node id is running (its heartbeat advanced while we
    /// watched): starting too would hide one of them from the cluster.
    #[error(
        "node {node} is already running at {addr} (generation {generation}, its heartbeat advancing as seen by the seeds): stop that agent first, or give this one another node id and certificate"
    )]
    AlreadyRunning {
        /// The node id.
        node: String,
        /// Where the running one gossips.
        addr: SocketAddr,
        /// Its generation.
        generation: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct PushMsg {
    origin: String,
    position: WritePosition,
    record: SessionRecord,
}

#[derive(Serialize, Deserialize)]
struct PushAck {
    origin: String,
    position: WritePosition,
}

/// Decoded `s/` values per node state and key, so each version is decoded once
/// (looked up in place: a refresh touches every namespace and must not allocate).
type DecodeCache = HashMap<ChitchatId, HashMap<String, (u64, Option<SessionRecord>)>>;

/// A node's decoded `node` and `seen` values with the versions they were decoded at:
/// a `seen` map lists every writer, so decoding it for every view would cost O(N^2).
#[derive(Default)]
struct DecodedMember {
    node: Option<(u64, Option<NodeInfo>)>,
    seen: Option<(u64, Arc<Seen>)>,
}

struct Local {
    hlc: HlcClock,
    own: BTreeMap<SessionId, SessionRecord>,
    replica: Replica,
    /// Per own write position: the nodes that acknowledged its push, each with its
    /// generation when it did (an ack by an earlier incarnation of a node that has
    /// restarted since, its disk maybe lost, confirms nothing about the current one).
    acks: BTreeMap<WritePosition, BTreeMap<String, u64>>,
    /// Per own write position: when its eager push went out (for the ack latency).
    pushed_at: BTreeMap<WritePosition, Instant>,
    decoded: DecodeCache,
    /// Per namespace carrying session records: the newest write position in it.
    positions: HashMap<ChitchatId, WritePosition>,
    /// Per namespace: last heartbeat seen and when, and the max version read at.
    heard: HashMap<ChitchatId, Heard>,
    /// Registers no live namespace carries: since when, and the writer's live
    /// generation when first seen so (see [`keep_alive`]).
    uncarried_since: Uncarried,
    /// Own records wholly superseded, and since when (see [`shed_superseded`]).
    superseded_since: HashMap<SessionId, Instant>,
    published_seen: Arc<Seen>,
    /// Decoded `node`/`seen` values per node state.
    members: HashMap<ChitchatId, DecodedMember>,
    /// The last [`MeshNode::topology`] and the fingerprint it was built at.
    topology: Option<(u64, Arc<Membership>)>,
    /// Fingerprint of what a topology depends on (node ids, liveness, `node` versions)
    /// as of the last refresh.
    topology_epoch: u64,
    seen_published_at: Option<Instant>,
    undecodable: u64,
    /// Per session: the newest register's stamp, and which namespace write carries it.
    latest_writes: BTreeMap<SessionId, (Hlc, String, WritePosition)>,
}

struct Shared {
    config: MeshConfig,
    chitchat_id: ChitchatId,
    link: Arc<dyn Link>,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    local: Mutex<Local>,
    wake: Notify,
    /// Namespaces changed since the last refresh (see [`Dirty`]).
    dirty: Mutex<Dirty>,
    /// Bumped on any change a waiter may care about (frontiers, acks, statuses).
    changes: watch::Sender<u64>,
    /// Bumped only when the replica or the topology changed (what reconcilers read).
    view_changes: watch::Sender<u64>,
    guard: IdentityGuard,
    wall: Arc<dyn WallClock>,
    /// Sends made on tasks of their own (pushes, acks, generation replies).
    sends: TaskTracker,
    /// Bounds those tasks: beyond it a frame is dropped (gossip repairs).
    send_slots: Arc<Semaphore>,
    /// Where [`FrameKind::App`] frames go (full: shed, as gossip is).
    app_tx: mpsc::Sender<Received>,
    /// Eager pushes sent and acknowledged.
    push_stats: PushStats,
}

/// A running mesh node.
pub struct MeshNode {
    /// [`FrameKind::App`] frames received, until the application takes them.
    app_rx: Mutex<Option<mpsc::Receiver<Received>>>,
    shared: Arc<Shared>,
    handle: Option<ChitchatHandle>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
    _listener: ListenerHandle,
}

impl Shared {
    fn local(&self) -> MutexGuard<'_, Local> {
        // The state is only mutated in small critical sections that cannot leave it
        // half-updated in a way a later reader would misread; recover from poisoning.
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dirty(&self) -> MutexGuard<'_, Dirty> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Sends `frame` to `to` on a tracked task of its own, so that a slow or dead peer
    /// holds up neither the caller nor the demux loop. At most [`MAX_DETACHED_SENDS`]
    /// run at once; beyond that the frame is dropped: pushes, acks and replies are
    /// best effort, and gossip repairs what they miss. Shutdown waits for them.
    fn send_detached(&self, to: SocketAddr, frame: Frame, what: &'static str) {
        let Ok(slot) = self.send_slots.clone().try_acquire_owned() else {
            self.link.stats().record_shed();
            tracing::debug!(%to, what, "too many sends in flight; dropped");
            return;
        };
        let link = self.link.clone();
        self.sends.spawn(async move {
            if let Err(error) = link.send(to, frame).await {
                tracing::debug!(%to, %error, what, "not sent; gossip will repair");
            }
            drop(slot);
        });
    }

    fn bump_view(&self) {
        self.view_changes.send_modify(|n| *n = n.wrapping_add(1));
        self.bump();
    }
}

/// What a refresh last saw of a namespace.
struct Heard {
    heartbeat: u64,
    /// When the heartbeat last moved.
    at: Instant,
    /// The namespace's max version when its records were last read on a tick.
    read_at_version: u64,
}

/// Namespaces a refresh must read again: chitchat's key-change callback marks a node
/// whenever one of its session records or its node info changes. Deletions and
/// liveness changes fire no callback; ticks read everything.
#[derive(Default)]
struct Dirty {
    nodes: HashSet<ChitchatId>,
    /// A `node` key changed: recompute the topology fingerprint.
    node_info: bool,
    /// Read every namespace (set at start).
    all: bool,
}

fn session_key(id: &SessionId) -> String {
    format!("{SESSION_PREFIX}{}", id.key())
}

/// How many application frames wait for the application before new ones are shed.
pub const APP_QUEUE: usize = 256;

impl MeshNode {
    /// The application frames this node receives ([`FrameKind::App`]); the first call
    /// takes the receiver, later ones get `None`.
    pub fn app_frames(&self) -> Option<mpsc::Receiver<Received>> {
        self.app_rx.lock().ok().and_then(|mut rx| rx.take())
    }

    /// Sends an application frame to the node at `to` (best effort, on a task of its
    /// own: a slow peer holds up nobody).
    pub fn send_app(&self, to: SocketAddr, payload: Vec<u8>) {
        self.shared
            .send_detached(to, Frame::new(FrameKind::App, payload), "application frame");
    }

    /// A fresh HLC stamp of this node (for records outside the session state).
    pub fn stamp(&self) -> Hlc {
        self.shared.local().hlc.now()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.config.node_id
    }

    /// This node's chitchat generation.
    pub fn generation(&self) -> u64 {
        self.shared.config.generation
    }

    /// The gossip address.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.shared.link.local_addr()
    }

    /// Validates `op` against the local view, applies it locally, publishes it in this
    /// node's namespace and pushes it to live peers.
    pub async fn apply(&self, id: &SessionId, op: &SessionOp) -> Result<WriteReceipt, MeshError> {
        let shared = &self.shared;
        let now_secs = shared.wall.now_millis() / 1000;
        let (receipt, push, peers) = {
            let mut chitchat = shared.chitchat.lock().await;
            let mut local = shared.local();
            let membership = membership_of(shared, &chitchat, &mut local);
            let stamp = local.hlc.now();
            let delta = state::plan(&local.replica, &membership, id, op, stamp.clone(), now_secs)?;
            // A same-value config write re-publishes the register it found, under that
            // register's stamp: the receipt names what peers will actually hold.
            let stamp = delta.max_stamp().unwrap_or(stamp);
            let mut own = local
                .own
                .get(id)
                .cloned()
                .unwrap_or_else(|| SessionRecord::empty(id.clone()));
            own.join(&delta);
            let value = codec::encode(&own)?;
            let key = session_key(id);
            let node_state = chitchat.self_node_state();
            node_state.set(key.clone(), value);
            let version = node_state.get_versioned(&key).map_or(0, |v| v.version);
            local.own.insert(id.clone(), own.clone());
            local.replica.join_record(&delta);
            let position = WritePosition {
                generation: shared.config.generation,
                version,
            };
            // Our own write, also a same-value one re-publishing the current register:
            // progress is counted at our position.
            if local
                .latest_writes
                .get(id)
                .is_none_or(|(best, _, _)| stamp >= *best)
            {
                local.latest_writes.insert(
                    id.clone(),
                    (stamp.clone(), shared.config.node_id.clone(), position),
                );
            }
            let peers: Vec<SocketAddr> = membership
                .live()
                .filter(|m| m.node_id != shared.config.node_id)
                .map(|m| m.gossip_addr)
                .take(shared.config.push_fanout)
                .collect();
            let push = PushMsg {
                origin: shared.config.node_id.clone(),
                position,
                record: own,
            };
            let receipt = WriteReceipt {
                session: id.clone(),
                origin: shared.config.node_id.clone(),
                position,
                stamp,
            };
            (receipt, push, peers)
        };
        shared.bump_view();
        match codec::to_bytes(&push) {
            Ok(payload) => {
                // In parallel: one slow or dead peer must not delay the others.
                if !peers.is_empty() {
                    shared
                        .local()
                        .pushed_at
                        .insert(receipt.position, Instant::now());
                }
                for peer in peers {
                    shared.push_stats.record_push();
                    let frame = Frame::new(FrameKind::Push, payload.clone());
                    shared.send_detached(peer, frame, "eager push");
                }
            }
            Err(error) => tracing::warn!(%error, "eager push not sent; gossip will carry it"),
        }
        Ok(receipt)
    }

    /// Forgets `node` (`georep node forget`): publishes that its current generation is
    /// gone for good, so every node drops it from membership. Refused for this node, an
    /// unknown node and a live one. Returns the forgotten generation and the write's
    /// position in this node's history (for [`Self::position_progress`]).
    pub async fn forget(&self, node: &str) -> Result<(u64, WritePosition), MeshError> {
        let shared = &self.shared;
        if node == shared.config.node_id {
            return Err(MeshError::ForgetRefused(format!(
                "{node} is this node: run `node forget` on another node after stopping it"
            )));
        }
        let (generation, position) = {
            let mut chitchat = shared.chitchat.lock().await;
            let mut local = shared.local();
            let membership = membership_of(shared, &chitchat, &mut local);
            drop(local);
            let Some(member) = membership.members.get(node) else {
                let known = chitchat.node_states().keys().any(|id| *id.node_id == *node);
                return Err(MeshError::ForgetRefused(if known {
                    format!("{node} is already forgotten")
                } else {
                    format!("no node {node} is known here (see `georep nodes`)")
                }));
            };
            if member.live {
                let heard = member
                    .last_heard_ms
                    .map(|ms| format!(" (heard {ms} ms ago)"))
                    .unwrap_or_default();
                return Err(MeshError::ForgetRefused(format!(
                    "{node} is live{heard}: only a dead node can be forgotten; stop its agent first"
                )));
            }
            let generation = member.generation;
            let key = format!("{FORGET_PREFIX}{node}");
            let node_state = chitchat.self_node_state();
            node_state.set(key.clone(), codec::encode(&generation)?);
            let version = node_state.get_versioned(&key).map_or(0, |v| v.version);
            (
                generation,
                WritePosition {
                    generation: shared.config.generation,
                    version,
                },
            )
        };
        shared.dirty().all = true;
        shared.wake.notify_one();
        Ok((generation, position))
    }

    /// A newer incarnation of this node's own id in the cluster state (another agent
    /// started as this node): its generation, address and whether it is live. While
    /// it exists every peer sees it instead of this node.
    pub async fn newer_incarnation(&self) -> Option<(u64, SocketAddr, bool)> {
        let chitchat = self.shared.chitchat.lock().await;
        let me = &self.shared.chitchat_id;
        let newest = newest_of(chitchat.node_states().keys(), &me.node_id)
            .filter(|id| id.generation_id > me.generation_id)?;
        let live = chitchat.live_nodes().any(|id| id == newest);
        Some((newest.generation_id, newest.gossip_advertise_addr, live))
    }

    /// How far a write at `position` in this node's history has spread, by the
    /// frontiers other nodes publish.
    pub async fn position_progress(&self, position: WritePosition) -> WriteProgress {
        let membership = self.membership().await;
        let origin = self.shared.config.node_id.clone();
        progress_in(&membership, &origin, position, &BTreeMap::new())
    }

    /// The converged replica as this node sees it now.
    pub fn replica(&self) -> Replica {
        self.shared.local().replica.clone()
    }

    /// The records this node carries in its own namespace.
    pub fn own_records(&self) -> Vec<SessionRecord> {
        self.shared.local().own.values().cloned().collect()
    }

    /// The membership view.
    pub async fn membership(&self) -> Membership {
        let chitchat = self.shared.chitchat.lock().await;
        let mut local = self.shared.local();
        membership_of(&self.shared, &chitchat, &mut local)
    }

    /// The membership view for decisions on who runs what, rebuilt only when a node
    /// joined, left, changed liveness or republished its node info: its frontiers
    /// (`seen`), heartbeat, last-heard, key-count and max-version figures may be stale
    /// (use [`Self::membership`] for those), and liveness is as of the last refresh (at
    /// most a gossip round old). Frontiers change on every write at every
    /// node, and a reconciler runs on every change: rebuilding the view each time
    /// would cost O(N^2) per write per node.
    pub async fn topology(&self) -> Arc<Membership> {
        let chitchat = self.shared.chitchat.lock().await;
        let mut local = self.shared.local();
        let fingerprint = local.topology_epoch;
        if let Some((at, view)) = &local.topology
            && *at == fingerprint
        {
            return view.clone();
        }
        let view = Arc::new(membership_of(&self.shared, &chitchat, &mut local));
        local.topology = Some((fingerprint, view.clone()));
        view
    }

    /// How far a write has spread: confirmed, lagging and dead nodes.
    pub async fn progress(&self, receipt: &WriteReceipt) -> WriteProgress {
        let membership = self.membership().await;
        let acked = self
            .shared
            .local()
            .acks
            .get(&receipt.position)
            .cloned()
            .unwrap_or_default();
        progress_in(&membership, &receipt.origin, receipt.position, &acked)
    }

    /// How far the newest write of a session has spread (which nodes merged it).
    pub async fn session_progress(&self, id: &SessionId) -> Option<WriteProgress> {
        let membership = self.membership().await;
        let local = self.shared.local();
        let (stamp, origin, position) = local.latest_writes.get(id).cloned()?;
        // Our own writes are also confirmed by push acknowledgements, which arrive
        // before the peers' next published frontier.
        let mut acked = if origin == self.shared.config.node_id {
            local.acks.get(&position).cloned().unwrap_or_default()
        } else {
            BTreeMap::new()
        };
        // And this node has merged whatever its replica holds, whatever its last
        // published frontier says.
        if local
            .replica
            .sessions
            .get(id)
            .and_then(SessionRecord::max_stamp)
            .is_some_and(|held| held >= stamp)
        {
            acked.insert(
                self.shared.config.node_id.clone(),
                self.shared.config.generation,
            );
        }
        drop(local);
        Some(progress_in(&membership, &origin, position, &acked))
    }

    /// The newest register stamp of a session and the node whose namespace carries it.
    pub fn latest_write(&self, id: &SessionId) -> Option<(Hlc, String, WritePosition)> {
        self.shared.local().latest_writes.get(id).cloned()
    }

    /// Sets an owner-written key in this node's namespace (no-op if unchanged).
    pub async fn set_owned(&self, key: &str, value: String) {
        let mut chitchat = self.shared.chitchat.lock().await;
        let node_state = chitchat.self_node_state();
        if node_state.get(key) != Some(value.as_str()) {
            node_state.set(key, value);
            drop(chitchat);
            self.shared.bump();
        }
    }

    /// Starts a gossip exchange with the given live nodes right away, instead of
    /// waiting for chitchat to pick them: scuttlebutt's third message carries our
    /// newer keys to each (used to tell a waiting writer that its command took effect).
    pub async fn gossip_with(&self, nodes: &[&str]) {
        let Some(handle) = &self.handle else {
            return;
        };
        // Liveness as of the last refresh is enough to pick whom to call.
        let membership = self.topology().await;
        for node in nodes {
            let Some(member) = membership.members.get(*node).filter(|m| m.live) else {
                continue;
            };
            if member.node_id == self.shared.config.node_id {
                continue;
            }
            if let Err(error) = handle.gossip(member.gossip_addr) {
                tracing::debug!(peer = %member.gossip_addr, %error, "cannot start a gossip exchange");
            }
        }
    }

    /// Deletes an owner-written key from this node's namespace.
    pub async fn delete_owned(&self, key: &str) {
        let mut chitchat = self.shared.chitchat.lock().await;
        let node_state = chitchat.self_node_state();
        if node_state.get(key).is_some() {
            node_state.delete(key);
        }
    }

    /// This node's own live (non-deleted) values under `prefix`.
    pub async fn own_values(&self, prefix: &str) -> BTreeMap<String, String> {
        let mut chitchat = self.shared.chitchat.lock().await;
        chitchat
            .self_node_state()
            .iter_prefix(prefix)
            .filter(|(_, v)| !v.is_deleted())
            .map(|(k, v)| (k.to_string(), v.value.clone()))
            .collect()
    }

    /// Every live (non-deleted) value under `prefix`, per node id (latest generation).
    pub async fn owned_values(&self, prefix: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        let chitchat = self.shared.chitchat.lock().await;
        let mut latest: BTreeMap<String, &ChitchatId> = BTreeMap::new();
        for id in chitchat.node_states().keys() {
            let entry = latest.entry(id.node_id.to_string()).or_insert(id);
            if id.generation_id > entry.generation_id {
                *entry = id;
            }
        }
        let mut out = BTreeMap::new();
        for (node, id) in latest {
            let Some(state) = chitchat.node_state(id) else {
                continue;
            };
            let values: BTreeMap<String, String> = state
                .iter_prefix(prefix)
                .filter(|(_, v)| !v.is_deleted())
                .map(|(k, v)| (k.to_string(), v.value.clone()))
                .collect();
            if !values.is_empty() {
                out.insert(node, values);
            }
        }
        out
    }

    /// Raw key/value pairs of one node's namespace: key -> (version, value, deleted).
    pub async fn raw_keys(&self, node_id: &str) -> Option<BTreeMap<String, (u64, String, bool)>> {
        let chitchat = self.shared.chitchat.lock().await;
        let id = chitchat
            .node_states()
            .keys()
            .filter(|id| &*id.node_id == node_id)
            .max_by_key(|id| id.generation_id)?
            .clone();
        let state = chitchat.node_state(&id)?;
        Some(
            state
                .key_values_including_deleted()
                .map(|(k, v)| (k.to_string(), (v.version, v.value.clone(), v.is_deleted())))
                .collect(),
        )
    }

    /// A receiver notified whenever state or membership may have changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// A receiver notified when the replica or the topology changed (not on frontier,
    /// acknowledgement or status changes): what a reconciler waits on.
    pub fn subscribe_view(&self) -> watch::Receiver<u64> {
        self.shared.view_changes.subscribe()
    }

    /// What to persist to come back with everything this node knew.
    pub fn snapshot(&self) -> MeshSnapshot {
        let local = self.shared.local();
        MeshSnapshot {
            own: local.own.values().cloned().collect(),
            replica: local.replica.clone(),
            hlc_last: Some(local.hlc.last()),
        }
    }

    /// Traffic counters of the node's link.
    pub fn link_stats(&self) -> LinkStatsSnapshot {
        self.shared.link.stats().snapshot()
    }

    /// Eager pushes of this node's writes and their acknowledgements.
    pub fn push_stats(&self) -> PushStatsSnapshot {
        self.shared.push_stats.snapshot()
    }

    /// Number of undecodable session values seen from peers (rejected, logged).
    pub fn undecodable_values(&self) -> u64 {
        self.shared.local().undecodable
    }

    /// Recomputes the converged view now (normally done on every change and tick).
    pub async fn refresh_now(&self) {
        refresh(&self.shared, true).await;
    }

    /// Stops gossiping and closes the link. Persist [`MeshNode::snapshot`] first.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.shutdown().await;
        }
        self.shared.link.close().await;
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.shared.sends.close();
        self.shared.sends.wait().await;
    }
}

impl Drop for MeshNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

fn progress_in(
    membership: &Membership,
    origin: &str,
    position: WritePosition,
    acked: &BTreeMap<String, u64>,
) -> WriteProgress {
    let mut progress = WriteProgress::default();
    for member in membership.members.values() {
        let merged = member.node_id == origin
            || acked.get(&member.node_id) == Some(&member.generation)
            || member.has_seen(origin, position);
        if !member.live {
            progress.dead.push(member.node_id.clone());
        } else if merged {
            progress.confirmed.push(member.node_id.clone());
        } else {
            progress.lagging.push(member.node_id.clone());
        }
    }
    progress
}

async fn demux_loop(
    shared: Arc<Shared>,
    gossip_tx: mpsc::Sender<(SocketAddr, chitchat::ChitchatMessage)>,
    shutdown: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = shared.link.recv() => match received {
                Ok(received) => received,
                Err(_) => return,
            },
        };
        match received.frame.kind {
            FrameKind::Gossip => match shared.guard.check(&received) {
                Ok(message) => {
                    // Full queue: shed; anti-entropy repairs on the next round.
                    if gossip_tx.try_send((received.from, message)).is_err() {
                        shared.link.stats().record_rejected();
                    }
                }
                Err(refusal) => {
                    shared.link.stats().record_rejected();
                    shared.guard.log_refusal(&received, &refusal);
                }
            },
            FrameKind::Push => handle_push(&shared, received).await,
            FrameKind::PushAck => handle_push_ack(&shared, &received),
            FrameKind::GenerationQuery => answer_generation(&shared, &received).await,
            // A late answer to our own start-up question: nothing to do any more.
            FrameKind::GenerationReply => {}
            FrameKind::App => {
                if shared.app_tx.try_send(received).is_err() {
                    shared.link.stats().record_shed();
                }
            }
        }
    }
}

mod custodian;
mod generation;
mod membership;
mod push;
mod refresh;
mod start;
mod values;

use custodian::*;
use generation::*;
use membership::*;
use push::*;
pub use push::{PUSH_LATENCY_BUCKETS, PushStatsSnapshot};
use refresh::*;
pub use values::OwnedValues;
