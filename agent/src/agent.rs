//! The running agent: a mesh node, the monitor supervisor, session directories, the
//! answers of the local API, and persistence, tied together by a level-triggered loop.
//!
//! [`Agent::start`] takes its link, process backend and clock as parameters, so the
//! simulator runs this very code; [`crate::daemon::run`] wires the real ones (QUIC,
//! processes, system clock) for `georepd`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use georep_mesh::Link;
use georep_mesh::codec;
use georep_mesh::{Brick, BrickFacts, KeyInstall, Membership, NodeInfo};
use georep_mesh::{DesiredState, SessionId, SessionOp, SessionView, StateError};
use georep_mesh::{Hlc, WallClock};
use georep_mesh::{MeshConfig, MeshNode, MeshSnapshot, NODE_KEY};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::views;
use crate::config::AgentConfig;
use crate::config::BrickSpec;
use crate::events::{EventHub, Retention};
use crate::gluster::volumes::LocalBricks;
use crate::host_facts::HostFacts;
use crate::keys::KeySync;
use crate::monitor::BrickStatus;
use crate::monitor_command::MonitorCommand;
use crate::monitor_report::{MonitorReport, MonitorState};
use crate::process::ProcessBackend;
use crate::reconcile::SessionPlan;
use crate::session_dir::{self, SessionDirState};
use crate::supervise::{SupervisePolicy, Supervisor};
use crate::webhooks::{RetryPolicy, Webhooks};
use georep_api::types::{
    ConfigResponse, ExistsResponse, ForgetRequest, ForgetResponse, NodesResponse, OpRequest,
    OpResponse, SessionStatus, StatusResponse,
};
use georep_store::{StateFile, StoreError};

mod answers;
mod gluster_side;
mod hooks;
mod local_objects;
mod metrics;
mod observed;
use observed::worker_changes;

/// Key prefix of the per-session status each node publishes.
pub const MONITOR_PREFIX: &str = "m/";
/// The agent's version, published in its node info.
pub const AGENT_VERSION: &str = georep_api::VERSION;
/// Period of the reconcile loop when nothing changes.
const RECONCILE_TICK: Duration = Duration::from_secs(1);
/// Session directories are rewritten when their content changes, and at least this
/// often (to repair what was edited or removed behind the agent's back).
const DIR_RESYNC: Duration = Duration::from_secs(10);
/// Monitor logs are checked against `monitor_log_max_bytes` this often.
const LOG_CHECK: Duration = Duration::from_secs(5);
/// Shortest time a restarted agent waits for a peer before acting on its persisted view.
const WARM_UP_MIN: Duration = Duration::from_secs(2);
/// A monitor confirms a `start` once it has run this long (one that crashes at once
/// must not read as started to the command waiting for it).
pub const START_GRACE_MS: u64 = 500;
/// Longest a waiting command goes without re-checking convergence.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// What a node publishes per session under `m/<session key>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSessionStatus {
    /// The local monitor's report. Its relative times (`since_ms`,
    /// `backoff_remaining_ms`) are as of `published_at_ms`.
    pub report: MonitorReport,
    /// Worker statuses read from the session directory.
    pub workers: Vec<BrickStatus>,
    /// Wall-clock time (Unix ms, the publisher's clock) the report was taken.
    #[serde(default)]
    pub published_at_ms: u64,
}

impl NodeSessionStatus {
    /// The part that matters for republishing: relative times tick on every pass and
    /// would otherwise make every node rewrite its key (and everyone re-gossip it)
    /// many times a second.
    fn without_clock(&self) -> NodeSessionStatus {
        let mut stable = self.clone();
        // Only whether the monitor has run for the start grace yet: crossing it is a
        // change worth publishing (a waiting `start` confirms on it).
        stable.report.since_ms = stable.report.since_ms.min(START_GRACE_MS) / START_GRACE_MS;
        stable.report.backoff_remaining_ms = stable.report.backoff_remaining_ms.map(|_| 0);
        stable.published_at_ms = 0;
        for worker in &mut stable.workers {
            worker.updated_ms = 0;
        }
        stable
    }
}

pub use georep_store::PersistedState;

pub use crate::api::error::ApiError;

/// The running agent.
pub struct Agent {
    config: AgentConfig,
    mesh: MeshNode,
    supervisor: tokio::sync::Mutex<Supervisor>,
    store: StateFile<PersistedState>,
    sessions_root: PathBuf,
    last_persisted: tokio::sync::Mutex<Option<MeshSnapshot>>,
    /// The session directories as last written, and when.
    last_dirs: Mutex<Option<(Vec<SessionDirState>, Instant)>>,
    /// When the monitor logs' sizes were last checked.
    last_log_check: Mutex<Option<Instant>>,
    /// What this node last published under `m/`, without its clock fields.
    published: Mutex<BTreeMap<SessionId, NodeSessionStatus>>,
    wall: Arc<dyn WallClock>,
    wake: Notify,
    started: Instant,
    caught_up: AtomicBool,
    /// What this node measures about itself.
    facts: Arc<dyn HostFacts>,
    /// push-pem: this node's session keys and managed authorized_keys blocks.
    keys: KeySync,
    /// The event journals and the merged stream.
    events: EventHub,
    /// The replicated webhook list and deliveries.
    webhooks: Webhooks,
    /// Per session, the monitor state last seen (events on change).
    last_monitor_states: Mutex<BTreeMap<SessionId, (MonitorState, u32)>>,
    /// The live members last seen (PEER_* events on change).
    last_live: Mutex<Option<BTreeSet<String>>>,
    /// What this node last did for gluster's gsyncd (volume options, leftovers).
    gluster_side: Mutex<gluster_side::GlusterSide>,
    /// The volumes last seen (VOLUME_* events on change).
    last_volumes: Mutex<Option<BTreeMap<String, crate::events::volumes::VolumeState>>>,
    /// The topology peer and volume events last looked at.
    last_topology: Mutex<Option<Arc<Membership>>>,
    /// Every node's data path endpoint, as last read from the mesh.
    data_addrs: tokio::sync::Mutex<georep_mesh::OwnedValues>,
    /// The node info last published, and when the bricks were last measured.
    bricks_checked: Mutex<(NodeInfo, Instant)>,
    /// This node's bricks now: the configured ones, or as glusterd last listed them.
    bricks: Mutex<LocalBricks>,
}

/// How often an agent looks again for brick directories that did not exist.
const BRICK_CHECK: Duration = Duration::from_secs(5);

/// What this node publishes about itself, measured now. A brick glusterd has not
/// started counts as missing: it does not serve.
fn node_info(local: &LocalBricks, facts: &dyn HostFacts) -> NodeInfo {
    let measured: Vec<BrickFacts> = local.bricks.iter().map(|b| facts.brick(&b.path)).collect();
    let missing = local
        .bricks
        .iter()
        .zip(&measured)
        .filter(|(b, f)| !f.reachable || local.not_started.contains(&b.path))
        .map(|(_, f)| f.path.clone())
        .collect();
    NodeInfo {
        agent_version: AGENT_VERSION.to_string(),
        bricks: local
            .bricks
            .iter()
            .map(|b| Brick {
                volume: b.volume.clone(),
                path: b.path.display().to_string(),
                replica_set: b.replica_set,
            })
            .collect(),
        missing,
        facts: measured,
        users: facts.users(),
    }
}

/// The paths of `bricks` of `volume`.
fn paths_of(bricks: &[BrickSpec], volume: &str) -> Vec<String> {
    bricks
        .iter()
        .filter(|b| b.volume == volume)
        .map(|b| b.path.display().to_string())
        .collect()
}

fn sessions_root(data_dir: &Path) -> PathBuf {
    georep_store::DataDir::new(data_dir).sessions_root()
}

fn monitor_key(id: &SessionId) -> String {
    format!("{MONITOR_PREFIX}{}", id.key())
}

/// Loads the persisted state; a corrupt file is quarantined (kept for post-mortem) and the
/// agent starts from what its peers gossip, saying so loudly.
fn load_state(
    store: &StateFile<PersistedState>,
    node_id: &str,
) -> anyhow::Result<Option<PersistedState>> {
    match store.load() {
        Ok(Some(state)) if state.node_id != node_id => anyhow::bail!(
            "data directory {} belongs to node `{}`, not `{node_id}`",
            store.path().display(),
            state.node_id
        ),
        Ok(state) => Ok(state),
        Err(StoreError::Corrupt { path, reason }) => {
            let kept = store.quarantine().ok();
            tracing::error!(
                path = %path.display(),
                %reason,
                kept_as = ?kept,
                "persisted state is corrupt; starting from what peers gossip (sessions this node alone knew may be missing until a peer republishes them)"
            );
            Ok(None)
        }
        Err(error) => Err(anyhow::anyhow!(error)),
    }
}

impl Agent {
    /// Starts the agent on the given link, process backend and clock.
    pub async fn start(
        config: AgentConfig,
        link: Arc<dyn Link>,
        backend: Arc<dyn ProcessBackend>,
        facts: Arc<dyn HostFacts>,
        wall: Arc<dyn WallClock>,
        policy: SupervisePolicy,
    ) -> anyhow::Result<Arc<Agent>> {
        Self::start_above(config, link, backend, facts, wall, policy, 0).await
    }

    /// [`Agent::start`] with a chitchat generation of at least `floor` (a node displaced
    /// by another incarnation of its id restarts above it).
    pub async fn start_above(
        config: AgentConfig,
        link: Arc<dyn Link>,
        backend: Arc<dyn ProcessBackend>,
        facts: Arc<dyn HostFacts>,
        wall: Arc<dyn WallClock>,
        policy: SupervisePolicy,
        floor: u64,
    ) -> anyhow::Result<Arc<Agent>> {
        std::fs::create_dir_all(&config.data_dir)?;
        let store = StateFile::new(georep_store::DataDir::new(&config.data_dir).state_file());
        let persisted = load_state(&store, &config.node_id)?;
        // A new chitchat generation on every start, strictly above the last one.
        let generation = (wall.now_millis())
            .max(persisted.as_ref().map_or(0, |p| p.generation + 1))
            .max(floor);
        let mut mesh_config = MeshConfig::new(config.node_id.clone(), generation);
        mesh_config.cluster_id = config.cluster_id.clone();
        mesh_config.gossip_interval = Duration::from_millis(config.gossip_interval_ms);
        mesh_config.seeds = config.seeds.clone();
        let local_bricks = LocalBricks {
            bricks: config.bricks.clone(),
            not_started: BTreeSet::new(),
        };
        let info = node_info(&local_bricks, facts.as_ref());
        let snapshot = persisted.map(|p| p.mesh);
        let mesh = MeshNode::start(
            mesh_config,
            link,
            wall.clone(),
            snapshot.clone(),
            vec![(NODE_KEY.to_string(), codec::encode(&info)?)],
        )
        .await?;
        let sessions_root = sessions_root(&config.data_dir);
        std::fs::create_dir_all(&sessions_root)?;
        let command = match &config.monitor_command {
            Some(command) => command.clone(),
            None => default_monitor_command()?,
        };
        let mut supervisor = Supervisor::new(
            backend,
            sessions_root.clone(),
            config.node_id.clone(),
            command,
            policy,
        );
        let known: Vec<SessionId> = mesh.replica().sessions.keys().cloned().collect();
        supervisor.adopt(&known);
        let keys = KeySync::new(&config, &sessions_root);
        let events = EventHub::open(
            &config.data_dir,
            &config.node_id,
            generation,
            Retention {
                max_bytes: config.events_max_bytes,
                max_age_ms: config.events_max_age_ms,
            },
        )?;
        let webhooks = Webhooks::open(
            &config.data_dir,
            &config.node_id,
            RetryPolicy {
                backoff_max: Duration::from_millis(config.webhook_backoff_max_ms),
                park_after_ms: config.webhook_park_after_ms,
            },
        );
        let agent = Arc::new(Agent {
            config,
            mesh,
            supervisor: tokio::sync::Mutex::new(supervisor),
            store,
            sessions_root,
            last_persisted: tokio::sync::Mutex::new(snapshot),
            last_dirs: Mutex::new(None),
            last_log_check: Mutex::new(None),
            published: Mutex::new(BTreeMap::new()),
            wall,
            wake: Notify::new(),
            started: Instant::now(),
            caught_up: AtomicBool::new(false),
            facts,
            keys,
            events,
            webhooks,
            last_monitor_states: Mutex::new(BTreeMap::new()),
            last_live: Mutex::new(None),
            gluster_side: Mutex::default(),
            last_volumes: Mutex::new(None),
            last_topology: Mutex::new(None),
            data_addrs: tokio::sync::Mutex::new(georep_mesh::OwnedValues::default()),
            bricks_checked: Mutex::new((info, Instant::now())),
            bricks: Mutex::new(local_bricks),
        });
        agent.persist().await;
        Ok(agent)
    }

    /// Asks the loop for a pass now (a monitor exited: its status must not read
    /// "running" to a waiting client while it is already gone).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// The mesh node (for tests, the simulator and inspection).
    pub fn mesh(&self) -> &MeshNode {
        &self.mesh
    }

    /// The agent's configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// This node's bricks now (see [`Agent::set_bricks`]).
    pub fn bricks(&self) -> Vec<BrickSpec> {
        self.bricks
            .lock()
            .map(|local| local.bricks.clone())
            .unwrap_or_default()
    }

    /// Replaces this node's bricks (glusterd listed others, or started or stopped a
    /// volume); the loop measures and republishes them at once.
    pub fn set_bricks(&self, local: LocalBricks) {
        {
            let Ok(mut current) = self.bricks.lock() else {
                return;
            };
            if *current == local {
                return;
            }
            tracing::info!(bricks = ?local.bricks, not_started = ?local.not_started, "local bricks changed");
            *current = local;
        }
        if let Ok(mut checked) = self.bricks_checked.lock()
            && let Some(past) = Instant::now().checked_sub(BRICK_CHECK)
        {
            checked.1 = past;
        }
        self.nudge();
    }

    /// Runs the reconcile loop until `shutdown`.
    pub async fn run_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let events = tokio::spawn(self.clone().events_loop(shutdown.clone()));
        let webhooks = tokio::spawn(self.clone().webhooks_loop(shutdown.clone()));
        self.reconcile_loop(shutdown).await;
        let _ = events.await;
        let _ = webhooks.await;
    }

    /// Replicates the event journals: a step every gossip interval, at once after an
    /// own event or a batch that added events; frames answered as they come.
    async fn events_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(mut frames) = self.mesh.app_frames() else {
            return;
        };
        let period = Duration::from_millis(self.config.gossip_interval_ms);
        let mut next_sync = Instant::now();
        loop {
            if Instant::now() >= next_sync {
                let membership = self.mesh.topology().await;
                self.events
                    .sync(&self.mesh, &membership, self.wall.now_millis())
                    .await;
                self.events
                    .flush_flapping(&self.mesh, self.wall.now_millis());
                next_sync = Instant::now() + period;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                frame = frames.recv() => match frame {
                    // Events added and more known to exist: pull soon (batches
                    // arriving together share one step; a step reads every node).
                    Some(frame) => {
                        if self.events.handle(&self.mesh, &frame) {
                            next_sync = next_sync.min(Instant::now() + period / 8);
                        }
                    }
                    None => return,
                },
                _ = self.events.wake.notified() => next_sync = Instant::now(),
                _ = tokio::time::sleep_until(next_sync) => {}
            }
        }
    }

    async fn reconcile_loop(&self, shutdown: CancellationToken) {
        let mut changes = self.mesh.subscribe_view();
        loop {
            self.reconcile_once().await;
            let wakeup = self
                .supervisor
                .lock()
                .await
                .next_wakeup()
                .unwrap_or_else(|| Instant::now() + RECONCILE_TICK)
                .min(Instant::now() + RECONCILE_TICK);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changes.changed() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(wakeup) => {}
            }
        }
    }

    /// Measures the bricks again (at most every [`BRICK_CHECK`]) and republishes this
    /// node's info if anything changed.
    async fn recheck_bricks(&self) {
        let info = {
            let Ok(mut checked) = self.bricks_checked.lock() else {
                return;
            };
            if checked.1.elapsed() < BRICK_CHECK {
                return;
            }
            checked.1 = Instant::now();
            let Ok(local) = self.bricks.lock() else {
                return;
            };
            let info = node_info(&local, self.facts.as_ref());
            drop(local);
            if info == checked.0 {
                return;
            }
            if info.missing != checked.0.missing {
                tracing::info!(missing = ?info.missing, "bricks not serving changed");
                for brick in &info.bricks {
                    let was = checked.0.missing.contains(&brick.path);
                    let is = info.missing.contains(&brick.path);
                    if was != is {
                        let kind = if is {
                            "BRICK_DISCONNECTED"
                        } else {
                            "BRICK_CONNECTED"
                        };
                        self.events.emit(
                            &self.mesh,
                            kind,
                            [
                                ("peer".to_string(), self.config.node_id.clone()),
                                ("volume".to_string(), brick.volume.clone()),
                                ("brick".to_string(), brick.path.clone()),
                            ]
                            .into(),
                        );
                    }
                }
            }
            for facts in &info.facts {
                let full = |f: &BrickFacts| {
                    f.reachable
                        && f.size_bytes > 0
                        && f.free_bytes.saturating_mul(100) < f.size_bytes
                };
                let was = checked
                    .0
                    .facts
                    .iter()
                    .find(|f| f.path == facts.path)
                    .is_some_and(full);
                let is = full(facts);
                if was != is {
                    let volume = info
                        .bricks
                        .iter()
                        .find(|b| b.path == facts.path)
                        .map(|b| b.volume.clone())
                        .unwrap_or_default();
                    self.events.emit(
                        &self.mesh,
                        if is { "BRICK_FULL" } else { "BRICK_NOT_FULL" },
                        [
                            ("peer".to_string(), self.config.node_id.clone()),
                            ("volume".to_string(), volume),
                            ("brick".to_string(), facts.path.clone()),
                            ("free_bytes".to_string(), facts.free_bytes.to_string()),
                            ("size_bytes".to_string(), facts.size_bytes.to_string()),
                        ]
                        .into(),
                    );
                }
            }
            checked.0.clone_from(&info);
            info
        };
        match codec::encode(&info) {
            Ok(value) => self.mesh.set_owned(NODE_KEY, value).await,
            Err(error) => tracing::warn!(%error, "cannot encode this node's info"),
        }
    }

    /// One pass: converge local monitors and session directories on the converged
    /// view, publish this node's per-session status, persist if anything changed.
    pub async fn reconcile_once(&self) {
        self.recheck_bricks().await;
        let replica = self.mesh.replica();
        let membership = self.mesh.topology().await;
        let views: Vec<(SessionView, Option<Hlc>)> = replica
            .sessions
            .values()
            .map(|record| {
                let view = record.view();
                let restart = view.restart_stamp(record);
                (view, restart)
            })
            .filter(|(view, _)| view.exists)
            .collect();
        // A session that loses to another between the same two volumes runs nothing.
        let superseded = replica.superseded();
        // One snapshot of this node's bricks for the whole pass: the supervisor's plans
        // and the data path's agree even if glusterd's listing changes meanwhile.
        let bricks = self.bricks();
        let plans: BTreeMap<SessionId, SessionPlan> = views
            .iter()
            .filter(|(view, _)| !superseded.contains_key(&view.id))
            .map(|(view, restart)| {
                let plan = SessionPlan {
                    id: view.id.clone(),
                    desired: view.desired,
                    desired_stamp: view.desired_stamp.clone(),
                    restart_stamp: restart.clone(),
                    local_bricks: paths_of(&bricks, &view.id.primary_volume),
                };
                (view.id.clone(), plan)
            })
            .collect();
        if self.caught_up(&membership) {
            self.prepare_primaries(&views, &bricks).await;
            // Write-ahead: the view that makes this agent start, stop or signal a
            // monitor is on disk before it does. Killed right after, the agent comes
            // back to the same view; from an older one it would stop the monitor it
            // adopts (the end-of-pass persist below came too late once in CI).
            let plans_changed = self.supervisor.lock().await.last_plans() != &plans;
            if plans_changed {
                self.persist().await;
            }
        }
        let reports = {
            let mut supervisor = self.supervisor.lock().await;
            if self.caught_up(&membership) {
                supervisor.reconcile(&plans, Instant::now());
            }
            supervisor.reports()
        };

        let data_addrs = {
            let mut addrs = self.data_addrs.lock().await;
            self.mesh
                .track_owned_value(crate::datapath::DATA_ADDR_KEY, &mut addrs)
                .await;
            addrs.clone()
        };
        // Per volume, this node's Active bricks (an O(N) fold over the topology: once
        // per volume, not once per session).
        let mut active_here: HashMap<&str, Vec<String>> = HashMap::new();
        let dir_states: Vec<SessionDirState> = views
            .iter()
            .map(|(view, _)| {
                let report = reports.get(&view.id);
                let monitor_status = match report {
                    Some(report) if plans.get(&view.id).is_some_and(SessionPlan::is_primary) => {
                        report.status_word(view.desired)
                    }
                    _ => view.desired.to_string(),
                };
                let volume = view.id.primary_volume.as_str();
                let active_local_bricks = active_here
                    .entry(volume)
                    .or_insert_with(|| {
                        membership
                            .active_bricks(volume)
                            .into_iter()
                            .filter(|(node, _)| *node == self.config.node_id)
                            .map(|(_, path)| path)
                            .collect()
                    })
                    .clone();
                SessionDirState {
                    view: view.clone(),
                    monitor_status,
                    active_local_bricks,
                    datapath_plan: crate::datapath::plan_for(
                        view,
                        &membership,
                        &data_addrs,
                        &self.config,
                        &bricks,
                    )
                    .and_then(|plan| serde_json::to_string_pretty(&plan).ok()),
                    gsyncd: self.config.monitor == crate::config::MonitorProfile::Gsyncd,
                }
            })
            .collect();
        self.sync_session_dirs(dir_states);
        self.rotate_monitor_logs(&views);
        if self.caught_up(&membership) {
            self.end_leftovers(&views, &bricks);
        }
        let existing: Vec<&SessionView> = views.iter().map(|(view, _)| view).collect();
        self.keys.sync(&self.mesh, &existing, &membership).await;
        let worker_events = self.publish_status(&plans, &reports).await;
        // After the status is out: recording events (fsync'd) must not delay what a
        // waiting command reads.
        for (kind, message) in worker_events {
            self.events.emit(&self.mesh, kind, message);
        }
        if self.caught_up(&membership) {
            self.monitor_events(&reports);
            // The topology is one shared value until it changes: diff it only then.
            let changed = self.last_topology.lock().is_ok_and(|mut last| {
                let changed = !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &membership));
                *last = Some(membership.clone());
                changed
            });
            if changed {
                self.peer_events(&membership);
                self.volume_events(&membership);
            }
        }
        self.persist().await;
    }

    /// Rotates the monitor logs of `views`' sessions past `monitor_log_max_bytes`,
    /// checked every [`LOG_CHECK`].
    fn rotate_monitor_logs(&self, views: &[(SessionView, Option<Hlc>)]) {
        let max = self.config.monitor_log_max_bytes;
        if max == 0 {
            return;
        }
        match self.last_log_check.lock() {
            Ok(mut last) if !last.is_some_and(|at| at.elapsed() < LOG_CHECK) => {
                *last = Some(Instant::now());
            }
            _ => return,
        }
        let dirs = views
            .iter()
            .map(|(view, _)| self.sessions_root.join(view.id.dir_name()));
        crate::monitor_log::rotate_those_over(dirs, max);
    }

    /// Writes the session directories when what they must contain changed, and at
    /// least every [`DIR_RESYNC`] (repairing files edited or removed behind our back).
    fn sync_session_dirs(&self, dir_states: Vec<SessionDirState>) {
        let Ok(mut last) = self.last_dirs.lock() else {
            return;
        };
        let now = Instant::now();
        if let Some((states, at)) = &*last
            && *states == dir_states
            && now.duration_since(*at) < DIR_RESYNC
        {
            return;
        }
        match session_dir::sync_all(&self.sessions_root, &dir_states) {
            Ok(()) => *last = Some((dir_states, now)),
            Err(error) => {
                *last = None;
                tracing::warn!(%error, root = %self.sessions_root.display(), "cannot update session directories");
            }
        }
    }

    /// Whether this agent may act on its view. Right after a start, the view is what
    /// was persisted, possibly stale (the session may have been stopped while this node
    /// was down): acting on it could start a monitor only to stop it a moment later.
    /// So monitors are left as they are (adopted ones keep running) until state from a
    /// live peer has been merged, or a warm-up period has passed (a lone node).
    fn caught_up(&self, membership: &Membership) -> bool {
        if self.caught_up.load(Ordering::Relaxed) {
            return true;
        }
        let heard_a_peer = membership
            .live()
            .any(|m| m.node_id != self.config.node_id && m.max_version > 0);
        let warmed_up = self.started.elapsed()
            >= (Duration::from_millis(self.config.gossip_interval_ms) * 4).max(WARM_UP_MIN);
        if heard_a_peer || warmed_up {
            self.caught_up.store(true, Ordering::Relaxed);
            tracing::debug!(heard_a_peer, "caught up; acting on the converged view");
        }
        self.caught_up.load(Ordering::Relaxed)
    }

    async fn publish_status(
        &self,
        plans: &BTreeMap<SessionId, SessionPlan>,
        reports: &BTreeMap<SessionId, MonitorReport>,
    ) -> Vec<(&'static str, BTreeMap<String, String>)> {
        let mut worker_events = Vec::new();
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        for (id, report) in reports {
            let primary = plans.get(id).is_some_and(SessionPlan::is_primary);
            // Keep publishing for a deleted session until its monitor is gone, so
            // `delete --wait` can see it stop.
            if !primary && report.pid.is_none() {
                continue;
            }
            let workers = read_workers(&self.sessions_root.join(id.dir_name()));
            let status = NodeSessionStatus {
                report: report.clone(),
                workers,
                published_at_ms: self.wall.now_millis(),
            };
            let key = monitor_key(id);
            wanted.insert(key.clone());
            let stable = status.without_clock();
            let unchanged = self
                .published
                .lock()
                .is_ok_and(|published| published.get(id) == Some(&stable));
            if unchanged {
                continue;
            }
            match codec::encode(&status) {
                Ok(value) => {
                    self.mesh.set_owned(&key, value).await;
                    let acted_on_new_command = {
                        let Ok(mut published) = self.published.lock() else {
                            continue;
                        };
                        let before = published.insert(id.clone(), stable.clone());
                        worker_events.extend(worker_changes(
                            id,
                            &self.config.node_id,
                            before.as_ref(),
                            &stable,
                        ));
                        before.map(|b| b.report.desired_stamp) != Some(report.desired_stamp.clone())
                    };
                    // Whoever issued the command may be waiting for this report: tell
                    // it now rather than in a gossip round or two.
                    if let (true, Some(stamp)) = (acted_on_new_command, &report.desired_stamp) {
                        self.mesh.gossip_with(&[stamp.node.as_str()]).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(session = %id, %error, "cannot publish monitor status")
                }
            }
        }
        let mine = self.mesh.own_values(MONITOR_PREFIX).await;
        for key in mine.keys().filter(|k| !wanted.contains(*k)) {
            self.mesh.delete_owned(key).await;
        }
        if let Ok(mut published) = self.published.lock() {
            published.retain(|id, _| wanted.contains(&monitor_key(id)));
        }
        worker_events
    }

    /// Persists the mesh snapshot if it changed since the last write.
    pub async fn persist(&self) {
        // Held across the write: persists happen one at a time, in order.
        let mut last = self.last_persisted.lock().await;
        let snapshot = self.mesh.snapshot();
        // The HLC moves on every refresh; persist when the records change, and always
        // carry the latest stamp along.
        let unchanged = last
            .as_ref()
            .is_some_and(|l| l.own == snapshot.own && l.replica == snapshot.replica);
        if unchanged {
            return;
        }
        let state = PersistedState {
            node_id: self.config.node_id.clone(),
            generation: self.mesh.generation(),
            mesh: snapshot.clone(),
        };
        let store = self.store.clone();
        // fsync blocks: off the async threads, unless told otherwise (the simulator).
        let saved = if self.config.persist_inline {
            store.save(&state)
        } else {
            match tokio::task::spawn_blocking(move || store.save(&state)).await {
                Ok(saved) => saved,
                Err(error) => {
                    tracing::error!(%error, "the state writer did not finish");
                    return;
                }
            }
        };
        match saved {
            Ok(()) => *last = Some(snapshot),
            Err(error) => {
                tracing::error!(%error, path = %self.store.path().display(), "cannot persist state")
            }
        }
    }

    /// Stops gossiping and persists. Monitors keep running for re-adoption.
    pub async fn shutdown(self: Arc<Self>) {
        self.persist().await;
        match Arc::try_unwrap(self) {
            Ok(agent) => {
                agent.persist().await;
                agent.mesh.shutdown().await;
            }
            Err(agent) => agent.persist().await,
        }
    }
}

/// Reads every `<brick>.status` file of a session directory, gsyncd's included
/// (malformed ones skipped).
fn read_workers(dir: &Path) -> Vec<BrickStatus> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut workers: Vec<BrickStatus> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if !name.ends_with(".status") || name == session_dir::STATUS_FILE {
                return None;
            }
            let bytes = std::fs::read(e.path()).ok()?;
            if bytes.len() > 64 * 1024 {
                return None;
            }
            // gsyncd's own (`brick_<path>.status`), or the built-in's and custom ones.
            crate::gluster::status::read(&name, &bytes)
                .or_else(|| serde_json::from_slice::<BrickStatus>(&bytes).ok())
        })
        .collect();
    workers.sort_by(|a, b| a.brick.cmp(&b.brick));
    workers
}

/// The built-in monitor: this very binary's `monitor` subcommand.
fn default_monitor_command() -> anyhow::Result<MonitorCommand> {
    let exe = std::env::current_exe()?;
    Ok(MonitorCommand::with_program(
        &exe.display().to_string(),
        &[
            "monitor",
            "--session-dir",
            "{session_dir}",
            "--bricks",
            "{bricks}",
            "--node",
            "{node}",
            "--session",
            "{session}",
        ],
    )?)
}

impl Agent {
    /// The agent's wall clock, Unix milliseconds (`inspect` ages published reports by it).
    pub fn now_millis(&self) -> u64 {
        self.wall.now_millis()
    }
}
