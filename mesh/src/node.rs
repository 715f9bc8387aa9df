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
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
    decoded: DecodeCache,
    /// Per namespace carrying session records: the newest write position in it.
    positions: HashMap<ChitchatId, WritePosition>,
    /// Per namespace: last heartbeat seen and when, and the max version read at.
    heard: HashMap<ChitchatId, Heard>,
    /// Registers no live namespace carries: since when, and the writer's live
    /// generation when first seen so (see [`keep_alive`]).
    uncarried_since: HashMap<(SessionId, RegisterName, Hlc), (Instant, Option<u64>)>,
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
}

/// A running mesh node.
pub struct MeshNode {
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

impl MeshNode {
    /// Starts a node on `link`, restoring `snapshot` if the node ran before.
    pub async fn start(
        mut config: MeshConfig,
        link: Arc<dyn Link>,
        wall: Arc<dyn WallClock>,
        snapshot: Option<MeshSnapshot>,
        owned: Vec<(String, String)>,
    ) -> Result<MeshNode, MeshError> {
        let probe = probe::check_identity(&config, &link).await?;
        if snapshot.is_none() {
            // Nothing persisted (a new node, or a lost disk): peers may remember an
            // earlier incarnation with a higher generation than this clock gives.
            config.generation = probe::generation_above(&config, probe.highest);
        }
        let chitchat_id =
            ChitchatId::new(config.node_id.clone(), config.generation, link.local_addr());
        let mut hlc = HlcClock::new(config.node_id.clone(), wall.clone());
        let snapshot = snapshot.unwrap_or_default();
        if let Some(last) = &snapshot.hlc_last {
            hlc.observe(last);
        }
        if let Some(max) = snapshot.replica.max_stamp() {
            hlc.observe(&max);
        }
        let mut initial = owned;
        let mut own = BTreeMap::new();
        // The replica only grows (a join of everything ever merged), so a write seen
        // once is never forgotten, even after every namespace carrying it is gone.
        let mut replica = snapshot.replica;
        for record in &snapshot.own {
            replica.join_record(record);
        }
        for record in snapshot.own {
            initial.push((session_key(&record.id), codec::encode(&record)?));
            own.insert(record.id.clone(), record);
        }
        let (transport, gossip_tx) = GossipTransport::new(link.clone());
        let chitchat_config = ChitchatConfig {
            chitchat_id: chitchat_id.clone(),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: link.local_addr(),
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                sampling_window_size: 1000,
                max_interval: Duration::from_secs(10),
                initial_interval: config.gossip_interval,
                dead_node_grace_period: config.dead_node_grace,
            },
            marked_for_deletion_grace_period: config.dead_node_grace,
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let handle = spawn_chitchat(chitchat_config, initial, &transport)
            .await
            .map_err(|e| MeshError::Start(e.to_string()))?;
        let chitchat = handle.chitchat();
        let (changes, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            config,
            chitchat_id,
            link,
            chitchat: chitchat.clone(),
            local: Mutex::new(Local {
                hlc,
                own,
                replica,
                acks: BTreeMap::new(),
                decoded: HashMap::new(),
                positions: HashMap::new(),
                heard: HashMap::new(),
                uncarried_since: HashMap::new(),
                superseded_since: HashMap::new(),
                published_seen: Arc::default(),
                members: HashMap::new(),
                topology: None,
                topology_epoch: 0,
                seen_published_at: None,
                undecodable: 0,
                latest_writes: BTreeMap::new(),
            }),
            wake: Notify::new(),
            dirty: Mutex::new(Dirty {
                all: true,
                ..Dirty::default()
            }),
            changes,
            view_changes: watch::channel(0).0,
            guard: IdentityGuard::default(),
            wall,
        });
        let listener = {
            let waker = Arc::downgrade(&shared);
            chitchat.lock().await.subscribe_event("", move |event| {
                let Some(shared) = waker.upgrade() else {
                    return;
                };
                let forget = event.key.starts_with(FORGET_PREFIX);
                if event.key.starts_with(SESSION_PREFIX) || event.key == NODE_KEY || forget {
                    let mut dirty = shared.dirty();
                    if !dirty.nodes.contains(event.node) {
                        dirty.nodes.insert(event.node.clone());
                    }
                    dirty.node_info |= event.key == NODE_KEY || forget;
                    drop(dirty);
                    shared.wake.notify_one();
                } else {
                    // A frontier (`seen`) or an agent's status moved: waiters on
                    // `--wait` progress care, the replica does not.
                    shared.bump();
                }
            })
        };
        let shutdown = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(demux_loop(shared.clone(), gossip_tx, shutdown.clone())),
            tokio::spawn(refresh_loop(shared.clone(), shutdown.clone())),
        ];
        refresh(&shared, false).await;
        Ok(MeshNode {
            shared,
            handle: Some(handle),
            tasks,
            shutdown,
            _listener: listener,
        })
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
                for peer in peers {
                    let frame = Frame::new(FrameKind::Push, payload.clone());
                    let link = shared.link.clone();
                    tokio::spawn(async move {
                        if let Err(error) = link.send(peer, frame).await {
                            tracing::debug!(%peer, %error, "eager push failed; gossip will repair");
                        }
                    });
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

fn membership_of(shared: &Shared, chitchat: &Chitchat, local: &mut Local) -> Membership {
    let live: BTreeSet<&ChitchatId> = chitchat.live_nodes().collect();
    let scheduled: BTreeSet<&ChitchatId> = chitchat.scheduled_for_deletion_nodes().collect();
    let now = Instant::now();
    let forgotten = forgotten_in(chitchat);
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    for (id, state) in chitchat.node_states() {
        if members
            .get(&*id.node_id)
            .is_some_and(|m| m.generation > id.generation_id)
        {
            continue;
        }
        let is_self = *id == shared.chitchat_id;
        // A forgotten generation is hidden while it is not live: a node that was only
        // cut off when it was forgotten shows again as soon as it is heard, and one that
        // comes back (under a new generation) is a new member.
        if !is_self
            && !live.contains(id)
            && forgotten
                .get(&*id.node_id)
                .is_some_and(|generation| *generation >= id.generation_id)
        {
            continue;
        }
        let decoded = local.members.entry(id.clone()).or_default();
        let info = match state.get_versioned(NODE_KEY).filter(|v| !v.is_deleted()) {
            None => None,
            Some(value) => match &decoded.node {
                Some((version, info)) if *version == value.version => info.clone(),
                _ => {
                    let info = codec::decode::<NodeInfo>(&value.value).ok();
                    decoded.node = Some((value.version, info.clone()));
                    info
                }
            },
        };
        let seen = if is_self {
            local.published_seen.clone()
        } else {
            match state.get_versioned(SEEN_KEY).filter(|v| !v.is_deleted()) {
                None => Arc::default(),
                Some(value) => match &decoded.seen {
                    Some((version, seen)) if *version == value.version => seen.clone(),
                    _ => {
                        let seen =
                            Arc::new(codec::decode::<Seen>(&value.value).unwrap_or_default());
                        decoded.seen = Some((value.version, seen.clone()));
                        seen
                    }
                },
            }
        };
        let last_heard_ms = if is_self {
            Some(0)
        } else {
            local
                .heard
                .get(id)
                .map(|heard| now.duration_since(heard.at).as_millis() as u64)
        };
        members.insert(
            id.node_id.to_string(),
            Member {
                node_id: id.node_id.to_string(),
                generation: id.generation_id,
                gossip_addr: id.gossip_advertise_addr,
                live: is_self || live.contains(id),
                scheduled_for_deletion: scheduled.contains(id),
                heartbeat: u64::from(state.heartbeat()),
                last_heard_ms,
                key_count: state.num_key_values(),
                max_version: state.max_version(),
                info,
                seen,
            },
        );
    }
    Membership {
        self_id: shared.config.node_id.clone(),
        members,
    }
}

/// The newest of `ids` that belongs to node `node`.
fn newest_of<'a>(ids: impl Iterator<Item = &'a ChitchatId>, node: &str) -> Option<&'a ChitchatId> {
    ids.filter(|id| *id.node_id == *node)
        .max_by_key(|id| id.generation_id)
}

/// Per node id: the newest generation some namespace says was forgotten.
fn forgotten_in(chitchat: &Chitchat) -> BTreeMap<String, u64> {
    let mut forgotten: BTreeMap<String, u64> = BTreeMap::new();
    for state in chitchat.node_states().values() {
        for (key, value) in state.iter_prefix(FORGET_PREFIX) {
            let Ok(generation) = codec::decode::<u64>(&value.value) else {
                continue;
            };
            let node = &key[FORGET_PREFIX.len()..];
            let slot = forgotten.entry(node.to_string()).or_default();
            *slot = (*slot).max(generation);
        }
    }
    forgotten
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
        }
    }
}

/// Tells a starting peer the highest generation we hold for it.
async fn answer_generation(shared: &Shared, received: &Received) {
    let (generation, live) = {
        let chitchat = shared.chitchat.lock().await;
        let highest = newest_of(chitchat.node_states().keys(), &received.peer_node);
        let live = highest.filter(|id| chitchat.live_nodes().any(|live| live == *id));
        let live = live.and_then(|id| {
            Some(LiveIncarnation {
                generation: id.generation_id,
                addr: id.gossip_advertise_addr,
                heartbeat: u64::from(chitchat.node_state(id)?.heartbeat()),
            })
        });
        (highest.map(|id| id.generation_id), live)
    };
    let reply = GenerationReply {
        node: received.peer_node.clone(),
        generation,
        live,
        nonce: codec::from_bytes::<u64>(&received.frame.payload).unwrap_or(0),
    };
    match codec::to_bytes(&reply) {
        Ok(payload) => {
            let frame = Frame::new(FrameKind::GenerationReply, payload);
            if let Err(error) = shared.link.send(received.from, frame).await {
                tracing::debug!(peer = %received.peer_node, %error, "generation reply not sent");
            }
        }
        Err(error) => tracing::warn!(%error, "cannot encode a generation reply"),
    }
}

async fn handle_push(shared: &Shared, received: Received) {
    let push: PushMsg = match codec::from_bytes(&received.frame.payload) {
        Ok(push) => push,
        Err(error) => {
            shared.link.stats().record_rejected();
            tracing::warn!(peer = %received.peer_node, %error, "undecodable push dropped");
            return;
        }
    };
    if push.origin != received.peer_node {
        shared.link.stats().record_rejected();
        tracing::warn!(peer = %received.peer_node, origin = %push.origin, "push on behalf of another node refused");
        return;
    }
    {
        let mut local = shared.local();
        if let Some(max) = push.record.max_stamp() {
            local.hlc.observe(&max);
            // Status must know the newest write as soon as it is merged, not only once
            // the writer's namespace arrives by gossip.
            let newer = local
                .latest_writes
                .get(&push.record.id)
                .is_none_or(|(best, _, _)| max > *best);
            if newer {
                local.latest_writes.insert(
                    push.record.id.clone(),
                    (max, push.origin.clone(), push.position),
                );
            }
        }
        local.replica.join_record(&push.record);
    }
    shared.bump_view();
    let ack = PushAck {
        origin: push.origin,
        position: push.position,
    };
    if let Ok(payload) = codec::to_bytes(&ack) {
        let _ = shared
            .link
            .send(received.from, Frame::new(FrameKind::PushAck, payload))
            .await;
    }
}

fn handle_push_ack(shared: &Shared, received: &Received) {
    let Ok(ack) = codec::from_bytes::<PushAck>(&received.frame.payload) else {
        shared.link.stats().record_rejected();
        return;
    };
    if ack.origin != shared.config.node_id {
        return;
    }
    {
        let mut local = shared.local();
        // The acknowledging incarnation: the newest generation of that node we know of.
        // A node we know nothing of yet counts through its frontier instead.
        let generation = newest_of(local.members.keys(), &received.peer_node)
            .map_or(u64::MAX, |id| id.generation_id);
        local
            .acks
            .entry(ack.position)
            .or_default()
            .insert(received.peer_node.clone(), generation);
        // Bound the map: acknowledgements of old writes are also visible through `seen`.
        while local.acks.len() > 1024 {
            local.acks.pop_first();
        }
    }
    shared.bump();
}

async fn refresh_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.gossip_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Key changes arrive in bursts (each gossip exchange brings some): one refresh per
    // burst, at most one per gap, instead of one per exchange.
    let gap = shared.config.gossip_interval / REFRESHES_PER_ROUND;
    let mut come_back: Option<Instant> = None;
    loop {
        let held = come_back.unwrap_or_else(|| Instant::now() + shared.config.gossip_interval);
        come_back = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.wake.notified() => {
                let next = refresh(&shared, false).await;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(gap) => {}
                }
                next
            }
            _ = tokio::time::sleep_until(held), if come_back.is_some() => refresh(&shared, false).await,
            _ = tick.tick() => refresh(&shared, true).await,
        };
    }
}

/// Recomputes the converged replica and frontier. Between ticks only the namespaces
/// chitchat reported changed are read; ticks read every namespace, pick up liveness,
/// deletions and heartbeats, and keep uncarried registers alive.
/// Returns when to come back if a frontier publish is held back.
async fn refresh(shared: &Shared, tick: bool) -> Option<Instant> {
    let mut chitchat = shared.chitchat.lock().await;
    let dirty = std::mem::take(&mut *shared.dirty());
    let everything = tick || dirty.all;
    let mut come_back = None;
    let mut replica_changed = false;
    let mut topology_changed = false;
    let mut publish: Vec<(String, String)> = Vec::new();
    let mut retire: Vec<String> = Vec::new();
    {
        let live: BTreeSet<&ChitchatId> = if everything || dirty.node_info {
            chitchat.live_nodes().collect()
        } else {
            BTreeSet::new()
        };
        let mut local = shared.local();
        let local = &mut *local;
        let now = Instant::now();
        let mut fresh: Vec<SessionRecord> = Vec::new();
        let mut decoded_changed = false;
        if everything {
            for (id, state) in chitchat.node_states() {
                let heartbeat = u64::from(state.heartbeat());
                let max_version = state.max_version();
                // A namespace whose max version did not move has no new, changed or
                // deleted key since it was last read (a reset lowers it: also a move).
                let moved = match local.heard.get_mut(id) {
                    Some(entry) => {
                        if entry.heartbeat != heartbeat {
                            entry.heartbeat = heartbeat;
                            entry.at = now;
                        }
                        std::mem::replace(&mut entry.read_at_version, max_version) != max_version
                    }
                    None => {
                        let entry = Heard {
                            heartbeat,
                            at: now,
                            read_at_version: max_version,
                        };
                        local.heard.insert(id.clone(), entry);
                        true
                    }
                };
                if moved || dirty.all {
                    decoded_changed |= read_records(local, id, state, &mut fresh);
                }
            }
        } else {
            for id in &dirty.nodes {
                if let Some(state) = chitchat.node_state(id) {
                    decoded_changed |= read_records(local, id, state, &mut fresh);
                }
            }
        }
        if everything || dirty.node_info {
            let epoch = topology_fingerprint(&chitchat, &live);
            topology_changed = epoch != local.topology_epoch;
            local.topology_epoch = epoch;
        }
        // Only what changed is joined: the replica is the join of every version seen.
        for record in &fresh {
            let before = local.replica.sessions.get(&record.id).cloned();
            local.replica.join_record(record);
            if local.replica.sessions.get(&record.id) != before.as_ref() {
                replica_changed = true;
            }
        }
        if replica_changed && let Some(max) = local.replica.max_stamp() {
            local.hlc.observe(&max);
        }
        decoded_changed |= !fresh.is_empty();
        // After a tick's walk `heard` holds every namespace chitchat has: more entries
        // (here or in the member cache) mean some namespace was dropped since.
        let namespaces = chitchat.node_states().len();
        if everything && (local.heard.len() > namespaces || local.members.len() > namespaces) {
            let before = local.decoded.len();
            local
                .decoded
                .retain(|id, _| chitchat.node_state(id).is_some());
            decoded_changed |= local.decoded.len() != before;
            local
                .positions
                .retain(|id, _| chitchat.node_state(id).is_some());
            local
                .heard
                .retain(|id, _| chitchat.node_state(id).is_some());
            local
                .members
                .retain(|id, _| chitchat.node_state(id).is_some());
        }
        let mut latest_writes: BTreeMap<SessionId, (Hlc, String, WritePosition)> = BTreeMap::new();
        // Per live node: the records its namespace carries (for custodianship).
        let mut carried: Vec<&SessionRecord> = Vec::new();
        // Both only change with the decoded namespaces (and liveness, read on ticks).
        let rescan = tick || decoded_changed;
        for (id, records) in local.decoded.iter().filter(|_| rescan) {
            for (version, record) in records.values() {
                let Some(record) = record else {
                    continue;
                };
                if let Some(stamp) = record.max_stamp() {
                    let position = WritePosition {
                        generation: id.generation_id,
                        version: *version,
                    };
                    // Custodians carry copies of a write: among equal stamps prefer the
                    // writer's own namespace, then the lowest node id, so the answer does
                    // not depend on map iteration order.
                    let newer = latest_writes.get(&record.id).is_none_or(|(best, node, _)| {
                        stamp > *best
                            || (stamp == *best
                                && carrier_rank(&id.node_id, &stamp.node)
                                    < carrier_rank(node, &stamp.node))
                    });
                    if newer {
                        latest_writes
                            .insert(record.id.clone(), (stamp, id.node_id.to_string(), position));
                    }
                }
                if tick && (live.contains(id) || *id == shared.chitchat_id) {
                    carried.push(record);
                }
            }
        }
        let carried = carried_ids(&carried);
        if rescan {
            // A write merged by push whose namespace has not arrived yet stays known.
            for (id, pushed) in &local.latest_writes {
                let scanned = latest_writes.get(id);
                if scanned.is_none_or(|(stamp, _, _)| *stamp < pushed.0)
                    && local.replica.sessions.contains_key(id)
                {
                    latest_writes.insert(id.clone(), pushed.clone());
                }
            }
            local.latest_writes = latest_writes;
        }
        // Our frontier: per origin node, the newest write position we hold.
        let mut seen = Seen::new();
        for (id, best) in &local.positions {
            let slot = seen.entry(id.node_id.to_string()).or_default();
            *slot = (*slot).max(*best);
        }
        // The frontier is what `--wait` and `status` read on other nodes: publish it as
        // soon as it moves, but at most twice per gossip round (each publish is a
        // new version of our `seen` key that everyone gossips).
        let seen_due = tick
            || local
                .seen_published_at
                .is_none_or(|at| now.duration_since(at) >= shared.config.gossip_interval / 2);
        if seen != *local.published_seen && seen_due {
            if let Ok(value) = codec::encode(&seen) {
                publish.push((SEEN_KEY.to_string(), value));
            }
            local.published_seen = Arc::new(seen);
            local.seen_published_at = Some(now);
        } else if seen != *local.published_seen {
            // Not due yet: come back for it (no gossip may arrive to wake us).
            come_back = local
                .seen_published_at
                .map(|at| at + shared.config.gossip_interval / 2);
        }
        if tick {
            publish.extend(keep_alive(shared, local, &live, &carried, now));
            let republished: BTreeSet<&str> = publish.iter().map(|(k, _)| k.as_str()).collect();
            for id in shed_superseded(shared, local, &carried, now) {
                let key = session_key(&id);
                if !republished.contains(key.as_str()) {
                    local.own.remove(&id);
                    local.superseded_since.remove(&id);
                    retire.push(key);
                }
            }
        }
    }
    let published = !publish.is_empty() || !retire.is_empty();
    if published {
        let node_state = chitchat.self_node_state();
        for (key, value) in publish {
            node_state.set(key, value);
        }
        for key in retire {
            tracing::debug!(key, "retiring a wholly superseded record");
            node_state.delete(&key);
        }
    }
    drop(chitchat);
    if replica_changed || topology_changed {
        shared.bump_view();
    } else if published || tick {
        shared.bump();
    }
    come_back
}

/// Reads one namespace's session records into the decode cache (decoding only new
/// versions), queues newly seen records for the join and notes the newest write
/// position it carries. True if the cached set of records changed shape.
fn read_records(
    local: &mut Local,
    id: &ChitchatId,
    state: &chitchat::NodeState,
    fresh: &mut Vec<SessionRecord>,
) -> bool {
    // Forgets are writes too: `--wait` on `node forget` reads frontiers like any other.
    let forgets = state
        .iter_prefix(FORGET_PREFIX)
        .map(|(_, value)| WritePosition {
            generation: id.generation_id,
            version: value.version,
        })
        .max();
    let mut records = state.iter_prefix(SESSION_PREFIX).peekable();
    if records.peek().is_none() {
        match forgets {
            Some(best) => {
                local.positions.insert(id.clone(), best);
            }
            None => {
                local.positions.remove(id);
            }
        }
        return local.decoded.remove(id).is_some();
    }
    if !local.decoded.contains_key(id) {
        local.decoded.insert(id.clone(), HashMap::new());
    }
    let Some(cache) = local.decoded.get_mut(id) else {
        return false;
    };
    let mut best = forgets.unwrap_or_default();
    let mut count = 0;
    let mut undecodable = 0;
    for (key, value) in records {
        count += 1;
        best = best.max(WritePosition {
            generation: id.generation_id,
            version: value.version,
        });
        if cache
            .get(key)
            .is_some_and(|(version, _)| *version == value.version)
        {
            continue;
        }
        let record = match codec::decode::<SessionRecord>(&value.value) {
            Ok(record) if session_key(&record.id) == key => Some(record),
            Ok(_) | Err(_) => {
                undecodable += 1;
                tracing::warn!(node = %id.node_id, key, "undecodable or mislabelled session record ignored");
                None
            }
        };
        if let Some(record) = &record {
            fresh.push(record.clone());
        }
        cache.insert(key.to_string(), (value.version, record));
    }
    let mut reshaped = false;
    if cache.len() > count {
        // A key was deleted (a retired record): forget its decoded value.
        cache.retain(|key, _| state.get(key).is_some());
        reshaped = true;
    }
    local.undecodable += undecodable;
    match local.positions.get_mut(id) {
        Some(slot) => *slot = best,
        None => {
            local.positions.insert(id.clone(), best);
        }
    }
    reshaped
}

/// Fingerprint of what the reconciler's topology depends on: node ids, liveness and
/// `node` key versions (not frontiers: they move at every node on every write).
fn topology_fingerprint(chitchat: &Chitchat, live: &BTreeSet<&ChitchatId>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    for (id, state) in chitchat.node_states() {
        id.hash(&mut hasher);
        state
            .get_versioned(NODE_KEY)
            .map(|v| (v.version, v.is_deleted()))
            .hash(&mut hasher);
        for (key, value) in state.iter_prefix(FORGET_PREFIX) {
            (key, value.version).hash(&mut hasher);
        }
    }
    // Both iterate in id order: no lookups needed.
    for id in live {
        id.hash(&mut hasher);
    }
    hasher.finish()
}

/// Own records to retire: every register in them lost to a newer write (or a newer
/// incarnation of the session) that a live namespace carries, for longer than the
/// grace period. Without this every node that ever wrote would stay an origin in every
/// frontier, and frontiers (gossiped by all) would grow to N entries each. What is
/// retired changes no outcome: the join already ignores it.
fn shed_superseded(
    shared: &Shared,
    local: &mut Local,
    carried: &BTreeMap<(SessionId, RegisterName), Hlc>,
    now: Instant,
) -> Vec<SessionId> {
    let grace = shared.config.retire_superseded_after;
    let mut due = Vec::new();
    let mut still = HashMap::new();
    for (id, own) in &local.own {
        let Some(current) = local.replica.sessions.get(id) else {
            continue;
        };
        let winners: BTreeMap<RegisterName, Hlc> = current.registers().into_iter().collect();
        let carried_at = |name: &RegisterName, stamp: &Hlc| {
            carried
                .get(&(id.clone(), name.clone()))
                .is_some_and(|c| c >= stamp)
        };
        let superseded = own.registers().into_iter().all(|(name, stamp)| {
            match winners.get(&name) {
                Some(winner) => *winner > stamp && carried_at(&name, winner),
                // Pruned by the join: a newer incarnation of the session, or a delete,
                // made it dead.
                None => current
                    .floor()
                    .is_some_and(|(floor, at)| *at > stamp && carried_at(&floor, at)),
            }
        });
        if !superseded {
            continue;
        }
        let since = local.superseded_since.get(id).copied().unwrap_or(now);
        if now.duration_since(since) >= grace {
            due.push(id.clone());
        }
        still.insert(id.clone(), since);
    }
    local.superseded_since = still;
    due
}

/// Order of preference among namespaces carrying the same write: the writer's own
/// first, then by node id.
fn carrier_rank<'a>(node: &'a str, writer: &str) -> (bool, &'a str) {
    (node != writer, node)
}

/// Which (session, register, stamp) some live namespace carries.
fn carried_ids(carried: &[&SessionRecord]) -> BTreeMap<(SessionId, RegisterName), Hlc> {
    let mut out: BTreeMap<(SessionId, RegisterName), Hlc> = BTreeMap::new();
    for record in carried {
        for (name, stamp) in record.registers() {
            let slot = out
                .entry((record.id.clone(), name))
                .or_insert(stamp.clone());
            if stamp > *slot {
                *slot = stamp;
            }
        }
    }
    out
}

/// Custodianship: a winning register that no live namespace carries (its writer died, or
/// it only arrived by push) is republished here if this node ranks among the
/// `custodians` lowest live ids, or after a rank-proportional delay otherwise (so a
/// register held only by high-ranked nodes is not lost either).
fn keep_alive(
    shared: &Shared,
    local: &mut Local,
    live: &BTreeSet<&ChitchatId>,
    carried: &BTreeMap<(SessionId, RegisterName), Hlc>,
    now: Instant,
) -> Vec<(String, String)> {
    let mut live_ids: Vec<&str> = live.iter().map(|id| &*id.node_id).collect();
    live_ids.push(&shared.config.node_id);
    live_ids.sort_unstable();
    live_ids.dedup();
    let rank = live_ids
        .iter()
        .position(|id| *id == shared.config.node_id)
        .unwrap_or(0);
    // A fresh write normally reaches us by push before its writer's namespace does by
    // gossip: give gossip a few rounds before stepping in, more when the writer is
    // alive (it carries the write itself), and more for higher-ranked nodes.
    // The writer's live incarnation, if any.
    let writer_generation =
        |writer: &str| newest_of(live.iter().copied(), writer).map(|id| id.generation_id);
    // The writer carries a write itself only in the incarnation that made it. Waiting
    // longer for it is right only while the incarnation that was live when we first saw
    // the write uncarried still is: if the writer was not live then (the write came
    // from disk at our start, or its writer was down) or has restarted since (its disk
    // maybe lost), nobody else will publish it. Clock steps make stamps useless here.
    let rounds = |writer_live_throughout: bool| {
        let base = if writer_live_throughout {
            CUSTODIAN_ROUNDS_WRITER_LIVE
        } else {
            CUSTODIAN_ROUNDS
        };
        let behind = rank.saturating_sub(shared.config.custodians.saturating_sub(1));
        base * (1 + behind.min(MAX_CUSTODIAN_STAGGER)) as u32
    };
    let mut adopt: BTreeMap<SessionId, Vec<RegisterName>> = BTreeMap::new();
    let mut still_uncarried = HashMap::new();
    for record in local.replica.sessions.values() {
        for (name, stamp) in record.registers() {
            let key = (record.id.clone(), name.clone());
            if carried.get(&key).is_some_and(|c| *c >= stamp) {
                continue;
            }
            let writer_now = writer_generation(&stamp.node);
            let slot = (record.id.clone(), name.clone(), stamp);
            let (since, writer_then) = local
                .uncarried_since
                .get(&slot)
                .copied()
                .unwrap_or((now, writer_now));
            let throughout = writer_then.is_some() && writer_then == writer_now;
            let patience = shared.config.gossip_interval * rounds(throughout);
            if now.duration_since(since) >= patience {
                adopt.entry(record.id.clone()).or_default().push(name);
            } else {
                still_uncarried.insert(slot, (since, writer_then));
            }
        }
    }
    local.uncarried_since = still_uncarried;
    let mut publish = Vec::new();
    for (id, names) in adopt {
        let Some(record) = local.replica.sessions.get(&id) else {
            continue;
        };
        let part = record.extract(&names);
        let own = local
            .own
            .entry(id.clone())
            .or_insert_with(|| SessionRecord::empty(id.clone()));
        own.join(&part);
        match codec::encode(&*own) {
            Ok(value) => {
                tracing::debug!(session = %id, registers = ?names, "keeping uncarried registers alive");
                publish.push((session_key(&id), value));
            }
            Err(error) => tracing::warn!(session = %id, %error, "cannot republish session record"),
        }
    }
    publish
}
