//! The simulated cluster: real [`Agent`]s, each on a [`MemHub`] link wrapped by one
//! shared, seeded [`Faults`] controller, each with its own simulated process table and
//! skewable clock, crashed and restarted on command.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use anyhow::Context;
use georep_agent::Agent;
use georep_api::types::WebhookRequest;

use crate::receiver::{SIM_WEBHOOK_URL, SimReceiver};
use georep_agent::MonitorCommand;
use georep_agent::ProcessBackend;
use georep_agent::SupervisePolicy;
use georep_agent::{AgentConfig, BrickSpec, FixedHostFacts};
use georep_api::types::OpRequest;
use georep_mesh::Faults;
use georep_mesh::{Hlc, WallClock};
use georep_mesh::{Link, LinkStatsSnapshot};
use georep_mesh::{MemHub, MemLink};
use georep_mesh::{Replica, SessionOp};
use georep_store::{DataDir, PersistedState, StateFile};
use tempfile::TempDir;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Bug, SimBackend};
use crate::clock::VirtualClock;
use crate::ledger::{Ledger, OpRecord, Outcome, reflects, register_of};
use crate::scenario::{CrashMode, Disk, Layout, PRIMARY_VOLUME};

/// How long a `--wait` command waits.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a restart waits for the previous incarnation's link to be released.
const LINK_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to build a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Who hosts what.
    pub layout: Layout,
    /// Seed of the network's fault decisions.
    pub seed: u64,
    /// Gossip interval of every agent.
    pub gossip_interval: Duration,
    /// The supervisor's tunables.
    pub policy: SupervisePolicy,
    /// A deliberate defect of the simulated processes (tests of the checker).
    pub bug: Option<Bug>,
    /// Remember every delivered frame (see [`SimCluster::deliveries`]).
    pub record_frames: bool,
}

/// Shared between the simulator and its command tasks.
pub type SharedLedger = Arc<Mutex<Ledger>>;

/// Locks the ledger (plain data: recover from poisoning).
pub fn lock(ledger: &SharedLedger) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|p| p.into_inner())
}

/// Live agents by node id, for command tasks that check what a response claimed.
type Directory = Arc<Mutex<BTreeMap<String, Weak<Agent>>>>;

struct Running {
    agent: Arc<Agent>,
    task: JoinHandle<()>,
    shutdown: CancellationToken,
    ops: JoinSet<()>,
    link: Weak<MemLink>,
}

/// One simulated host.
pub struct SimNode {
    /// Index in the cluster.
    pub index: usize,
    /// Node id.
    pub id: String,
    /// Gossip address on the simulated network.
    pub addr: SocketAddr,
    /// The agent's configuration (data dir kept across restarts).
    pub config: AgentConfig,
    /// The host's clock.
    pub clock: VirtualClock,
    /// The host's processes.
    pub backend: Arc<SimBackend>,
    /// How often the agent was started.
    pub starts: u32,
    running: Option<Running>,
    released_link: Option<Weak<MemLink>>,
    traffic_before: LinkStatsSnapshot,
}

impl SimNode {
    /// Whether the agent runs.
    pub fn is_up(&self) -> bool {
        self.running.is_some()
    }

    /// The running agent.
    pub fn agent(&self) -> Option<&Arc<Agent>> {
        self.running.as_ref().map(|r| &r.agent)
    }

    /// The agent's converged replica, if it runs.
    pub fn replica(&self) -> Option<Replica> {
        self.agent().map(|a| a.mesh().replica())
    }

    /// Whether this node hosts primary bricks.
    pub fn is_primary(&self) -> bool {
        self.config
            .bricks
            .iter()
            .any(|b| b.volume == PRIMARY_VOLUME)
    }

    /// Traffic sent and received over every incarnation.
    pub fn traffic(&self) -> LinkStatsSnapshot {
        let mut total = self.traffic_before;
        if let Some(agent) = self.agent() {
            add(&mut total, &agent.mesh().link_stats());
        }
        total
    }
}

fn add(total: &mut LinkStatsSnapshot, more: &LinkStatsSnapshot) {
    total.frames_sent += more.frames_sent;
    total.bytes_sent += more.bytes_sent;
    total.frames_received += more.frames_received;
    total.bytes_received += more.bytes_received;
    total.frames_rejected += more.frames_rejected;
    total.frames_shed += more.frames_shed;
}
/// The size a simulated primary brick reports.
const SIM_BRICK_BYTES: u64 = 1 << 40;

/// The simulated address of node `i`.
pub fn node_addr(i: usize) -> SocketAddr {
    let n = i + 1;
    SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 7000))
}

/// The cluster.
pub struct SimCluster {
    /// Who hosts what.
    pub layout: Layout,
    /// The network's fault controller.
    pub faults: Faults,
    /// The hosts.
    pub nodes: Vec<SimNode>,
    /// Commands and what they require.
    pub ledger: SharedLedger,
    /// When the run started (virtual time zero).
    pub origin: Instant,
    hub: MemHub,
    policy: SupervisePolicy,
    bug: Option<Bug>,
    directory: Directory,
    /// The webhook receiver every agent delivers to.
    pub receiver: Arc<SimReceiver>,
    _root: TempDir,
}

impl SimCluster {
    /// Starts every node (inside a paused tokio runtime).
    pub async fn start(spec: &ClusterSpec) -> anyhow::Result<SimCluster> {
        let shm = std::path::Path::new("/dev/shm");
        // Agents fsync their state on every change: keep it in memory when possible.
        let root = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("georep-sim-")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("georep-sim-").tempdir()
        }
        .context("cannot create the simulation's temporary directory")?;
        let origin = Instant::now();
        let layout = spec.layout;
        let n = layout.nodes;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let id = Layout::node_id(i);
            let data_dir: PathBuf = root.path().join(&id);
            let mut config = AgentConfig::for_test(&id, &data_dir);
            config.gossip_interval_ms = spec.gossip_interval.as_millis() as u64;
            config.persist_inline = true;
            // Receiver outages are short: retries come back within the quiet time.
            config.webhook_backoff_max_ms = 3_000;
            config.monitor_command = Some(
                MonitorCommand::parse("sim-monitor --session {session} --node {node}")
                    .expect("a valid template"),
            );
            let mut seeds: Vec<usize> = vec![0, 1, 2, (i + 1) % n];
            seeds.retain(|s| *s != i && *s < n);
            seeds.sort_unstable();
            seeds.dedup();
            config.seeds = seeds.iter().map(|s| node_addr(*s).to_string()).collect();
            config.listen = node_addr(i);
            config.advertise = node_addr(i);
            config.bricks = if layout.is_primary(i) {
                vec![BrickSpec {
                    volume: PRIMARY_VOLUME.into(),
                    path: PathBuf::from(format!("/bricks/{id}/{PRIMARY_VOLUME}")),
                    replica_set: (i / 2) as u32,
                }]
            } else {
                layout
                    .secondary_volumes()
                    .into_iter()
                    .map(|volume| BrickSpec {
                        path: PathBuf::from(format!("/bricks/{id}/{volume}")),
                        volume,
                        replica_set: 0,
                    })
                    .collect()
            };
            nodes.push(SimNode {
                index: i,
                id,
                addr: node_addr(i),
                config,
                clock: VirtualClock::new(origin),
                backend: Arc::new(SimBackend::new(spec.bug)),
                starts: 0,
                running: None,
                released_link: None,
                traffic_before: LinkStatsSnapshot::default(),
            });
        }
        let hub = MemHub::new();
        if spec.record_frames {
            hub.record_deliveries();
        }
        let mut cluster = SimCluster {
            layout,
            faults: Faults::new(spec.seed),
            nodes,
            ledger: Arc::new(Mutex::new(Ledger::default())),
            origin,
            hub,
            policy: spec.policy.clone(),
            bug: spec.bug,
            directory: Arc::new(Mutex::new(BTreeMap::new())),
            receiver: Arc::new(SimReceiver::new(origin)),
            _root: root,
        };
        // Boots are spread over one gossip interval: nodes started in the same virtual
        // instant would gossip in lockstep forever, which no real cluster does.
        for i in 0..n {
            cluster.boot(i).await?;
            let next = spec.gossip_interval.mul_f64((i + 1) as f64 / n as f64);
            tokio::time::sleep_until(origin + next).await;
        }
        // One webhook, added on the first node before any command: every event from
        // then on must reach the receiver.
        if let Some(agent) = cluster.nodes[0].agent() {
            agent
                .webhook_write(WebhookRequest {
                    action: "add".into(),
                    url: SIM_WEBHOOK_URL.into(),
                    format: None,
                    token: None,
                    secret: None,
                    ca_pem: None,
                    wait: false,
                    timeout_ms: 0,
                })
                .await
                .map_err(|e| anyhow::anyhow!("cannot add the simulated webhook: {e}"))?;
        }
        Ok(cluster)
    }

    /// Virtual milliseconds since the start of the run.
    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    async fn boot(&mut self, i: usize) -> anyhow::Result<()> {
        let total = self.nodes.len() as u64;
        let node = &mut self.nodes[i];
        // The previous incarnation's link unregisters its address when the last
        // reference goes (delayed frames in flight hold it a little longer).
        if let Some(old) = node.released_link.take() {
            let deadline = Instant::now() + LINK_RELEASE_TIMEOUT;
            while old.upgrade().is_some() {
                if Instant::now() > deadline {
                    anyhow::bail!("{}: the previous agent's link was never released", node.id);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mem = self
            .hub
            .bind(&node.id, node.addr)
            .with_context(|| format!("{}: cannot bind {}", node.id, node.addr))?;
        let link_weak = Arc::downgrade(&mem);
        let link: Arc<dyn Link> = self.faults.wrap(mem);
        let backend: Arc<dyn ProcessBackend> = node.backend.clone();
        let wall: Arc<dyn WallClock> = Arc::new(node.clock.clone());
        let agent = Agent::start(
            node.config.clone(),
            link,
            backend,
            Arc::new(FixedHostFacts {
                // A secondary brick holds a whole primary volume: as large as all
                // primary replica sets together (create's size check passes).
                size_bytes: if node.is_primary() {
                    SIM_BRICK_BYTES
                } else {
                    SIM_BRICK_BYTES * total
                },
                users: vec!["root".to_string()],
            }),
            wall,
            self.policy.clone(),
        )
        .await
        .with_context(|| format!("{}: agent did not start", node.id))?;
        agent.set_webhook_transport(self.receiver.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(agent.clone().run_loop(shutdown.clone()));
        directory_lock(&self.directory).insert(node.id.clone(), Arc::downgrade(&agent));
        node.starts += 1;
        node.running = Some(Running {
            agent,
            task,
            shutdown,
            ops: JoinSet::new(),
            link: link_weak,
        });
        Ok(())
    }

    /// Kills node `i`'s agent (no graceful persist: what is on disk is what it wrote).
    pub async fn crash(&mut self, i: usize, mode: CrashMode) {
        let Some(running) = self.nodes[i].running.take() else {
            return;
        };
        let node = &mut self.nodes[i];
        directory_lock(&self.directory).remove(&node.id);
        let Running {
            agent,
            task,
            shutdown,
            mut ops,
            link,
        } = running;
        shutdown.cancel();
        task.abort();
        ops.abort_all();
        let _ = task.await;
        while ops.join_next().await.is_some() {}
        add(&mut node.traffic_before, &agent.mesh().link_stats());
        drop(agent);
        node.released_link = Some(link);
        // Commands still waiting were never answered.
        {
            let mut ledger = lock(&self.ledger);
            for index in 0..ledger.ops.len() {
                if ledger.ops[index].node == i && ledger.ops[index].outcome == Outcome::InFlight {
                    ledger.finish(index, Outcome::Aborted);
                }
            }
        }
        match mode {
            CrashMode::Agent => node.backend.orphan_all(),
            CrashMode::Host => node.backend = Arc::new(SimBackend::new(self.bug)),
        }
    }

    /// Starts node `i`'s agent again; with [`Disk::Lost`] its data directory is wiped
    /// and the host replaced (no processes survive).
    pub async fn restart(&mut self, i: usize, disk: Disk) -> anyhow::Result<()> {
        if self.nodes[i].is_up() {
            return Ok(());
        }
        if disk == Disk::Lost {
            let node = &mut self.nodes[i];
            if node.config.data_dir.exists() {
                std::fs::remove_dir_all(&node.config.data_dir)
                    .with_context(|| format!("cannot wipe {}", node.config.data_dir.display()))?;
            }
            node.backend = Arc::new(SimBackend::new(self.bug));
            *lock(&self.ledger)
                .disk_losses
                .entry(node.id.clone())
                .or_default() += 1;
            self.forget_lost_writes(i);
        }
        self.boot(i).await
    }

    /// Acknowledged writes that no copy holds any more died with a lost disk: held
    /// neither by a running agent nor in the persisted state of a stopped one.
    fn forget_lost_writes(&mut self, lost_node: usize) {
        let mut replicas: Vec<Replica> = self.nodes.iter().filter_map(SimNode::replica).collect();
        for node in &self.nodes {
            if node.is_up() || node.index == lost_node {
                continue;
            }
            let store =
                StateFile::<PersistedState>::new(DataDir::new(&node.config.data_dir).state_file());
            if let Ok(Some(state)) = store.load() {
                replicas.push(state.mesh.replica);
            }
        }
        let mut ledger = lock(&self.ledger);
        let lost: Vec<usize> = ledger
            .unconverged
            .iter()
            .copied()
            .filter(|index| {
                let op = &ledger.ops[*index];
                op.stamp().is_some_and(|stamp| {
                    !replicas
                        .iter()
                        .any(|r| reflects(r, &op.session, &op.register, stamp))
                })
            })
            .collect();
        for index in lost {
            ledger.unconverged.remove(&index);
            ledger.unreacted.remove(&index);
            ledger.lost_with_disk.insert(index);
        }
    }

    /// Issues a command on node `i`'s local API in the background; returns false if
    /// the node is down.
    pub fn issue(
        &mut self,
        i: usize,
        session: usize,
        op: SessionOp,
        wait: bool,
        partitioned: bool,
    ) -> bool {
        let issued_ms = self.now_ms();
        let id = self.layout.session(session);
        let Some(running) = self.nodes[i].running.as_mut() else {
            return false;
        };
        let index = lock(&self.ledger).issue(OpRecord {
            node: i,
            session: id.clone(),
            register: register_of(&op),
            op: op.clone(),
            wait,
            issued_ms,
            partitioned,
            outcome: Outcome::InFlight,
        });
        let request = OpRequest {
            primary: id.primary_volume.clone(),
            secondary: id.secondary(),
            op,
            wait,
            timeout_ms: WAIT_TIMEOUT.as_millis() as u64,
        };
        let agent = running.agent.clone();
        let ledger = self.ledger.clone();
        let losses_at_issue = lock(&ledger).disk_losses.clone();
        let directory = self.directory.clone();
        let origin = self.origin;
        running.ops.spawn(async move {
            let result = agent.op(request).await;
            drop(agent);
            let outcome = match result {
                Ok(response) => {
                    let Some(stamp) = response.stamp.as_deref().and_then(Hlc::parse) else {
                        lock(&ledger)
                            .violations
                            .push(format!("op #{index}: the response carried no stamp"));
                        return;
                    };
                    let lies = untruthful(&ledger, &directory, index, &stamp, &response.confirmed_nodes, &losses_at_issue);
                    if !lies.is_empty() {
                        lock(&ledger).violations.push(format!(
                            "op #{index} answered that {} confirmed it, but {} did not hold stamp {stamp}",
                            response.confirmed_nodes.join(","),
                            lies.join(",")
                        ));
                    }
                    Outcome::Acknowledged {
                        stamp,
                        acked_ms: origin.elapsed().as_millis() as u64,
                        converged: response.converged,
                        confirmed: response.confirmed_nodes,
                    }
                }
                Err(error) => Outcome::Refused(error.to_string()),
            };
            lock(&ledger).finish(index, outcome);
        });
        true
    }

    /// Addresses of node indices.
    pub fn addrs(&self, group: &[usize]) -> Vec<SocketAddr> {
        group
            .iter()
            .filter_map(|i| self.nodes.get(*i))
            .map(|n| n.addr)
            .collect()
    }

    /// Indices of running nodes.
    pub fn up(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|n| n.is_up())
            .map(|n| n.index)
            .collect()
    }

    /// Total traffic of every node over the run.
    pub fn traffic(&self) -> LinkStatsSnapshot {
        let mut total = LinkStatsSnapshot::default();
        for node in &self.nodes {
            add(&mut total, &node.traffic());
        }
        total
    }

    /// Every delivered frame, one line each (`ms from->to kind len digest`), when the
    /// spec asked to record them; empty otherwise.
    pub fn deliveries(&self) -> Vec<String> {
        self.hub
            .deliveries()
            .iter()
            .map(|d| {
                format!(
                    "{:>9.3} {}->{} {:?} {}B {:016x}",
                    d.at.saturating_duration_since(self.origin).as_secs_f64(),
                    d.from,
                    d.to,
                    d.kind,
                    d.len,
                    d.digest
                )
            })
            .collect()
    }

    /// Stops every agent gracefully.
    pub async fn shutdown(&mut self) {
        for node in &mut self.nodes {
            let Some(running) = node.running.take() else {
                continue;
            };
            let Running {
                agent,
                task,
                shutdown,
                mut ops,
                ..
            } = running;
            shutdown.cancel();
            ops.abort_all();
            let _ = task.await;
            while ops.join_next().await.is_some() {}
            add(&mut node.traffic_before, &agent.mesh().link_stats());
            agent.shutdown().await;
        }
        directory_lock(&self.directory).clear();
    }
}

fn directory_lock(directory: &Directory) -> MutexGuard<'_, BTreeMap<String, Weak<Agent>>> {
    directory.lock().unwrap_or_else(|p| p.into_inner())
}

/// The nodes a response lists as confirmed that do not hold the write. A node whose
/// disk was lost after the command was issued is not held to it here: its confirmation
/// spoke for the incarnation before (which did hold it), and the responding node may not
/// have heard of the restart yet. What a user relies on afterwards, that the write
/// survives and reaches that node again, is "acknowledged commands reflected" at the
/// next quiet check (unless every copy died with its disk: `lost_with_disk`).
fn untruthful(
    ledger: &SharedLedger,
    directory: &Directory,
    index: usize,
    stamp: &Hlc,
    confirmed: &[String],
    losses_at_issue: &BTreeMap<String, u32>,
) -> Vec<String> {
    let (session, register, losses_now) = {
        let ledger = lock(ledger);
        let Some(op) = ledger.ops.get(index) else {
            return Vec::new();
        };
        (
            op.session.clone(),
            op.register.clone(),
            ledger.disk_losses.clone(),
        )
    };
    let directory = directory_lock(directory);
    confirmed
        .iter()
        .filter(|node| losses_now.get(*node) == losses_at_issue.get(*node))
        .filter(|node| {
            directory
                .get(*node)
                .and_then(Weak::upgrade)
                .is_some_and(|agent| !reflects(&agent.mesh().replica(), &session, &register, stamp))
        })
        .cloned()
        .collect()
}
