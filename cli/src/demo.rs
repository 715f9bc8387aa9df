//! `georep demo`: a local cluster on loopback showing a session's whole
//! lifecycle.
//!
//! It writes a CA and node certificates, starts N `georepd` children (about
//! 60% primaries hosting bricks of `gv0` in replica pairs, the rest
//! secondaries hosting `gv1`), waits until the first node sees every node
//! live, then runs `create` ... `delete` in-process through [`crate::execute`],
//! each step on a different node. The children live in an [`Agents`] guard
//! whose `Drop` terminates them, so an error or Ctrl-C never leaves agents
//! behind.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use georep_api::request;
use georep_api::types::{NodesResponse, StatusResponse};
use georep_devcluster::{AgentPlan, AgentSpec, ClusterOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

use crate::args::{Cli, DemoArgs};
use crate::output::Exit;

/// Volume the primaries host.
const PRIMARY_VOLUME: &str = "gv0";
/// Volume the secondaries host.
const SECONDARY_VOLUME: &str = "gv1";
/// Bricks per replica set, on both sides.
const REPLICA_COUNT: usize = 2;
/// Gossip period of the demo agents: fast, so the demo is quick.
const GOSSIP_INTERVAL_MS: u64 = 200;
/// How long the agents get to see each other.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Bound on one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time an agent gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// `--timeout` of the clean-up commands after a failure.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Log lines shown per agent when something goes wrong.
const LOG_TAIL_LINES: usize = 15;
/// File name of each agent's API socket in its data directory.
const SOCKET_FILE: &str = georep_store::data_dir::API_SOCKET_FILE;
/// Longest Unix socket path (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Whether a demo node hosts the primary or the secondary volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Hosts a brick of the primary volume.
    Primary,
    /// Hosts a brick of the secondary volume.
    Secondary,
}

/// One agent of the demo cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// Node id (`n1`, `n2`, ...).
    pub id: String,
    /// Primary or secondary.
    pub role: Role,
    /// Data directory.
    pub dir: PathBuf,
    /// Gossip address.
    pub listen: SocketAddr,
    /// Local API socket.
    pub socket: PathBuf,
    /// The agent's log file.
    pub log: PathBuf,
    /// Brick directory.
    pub brick_dir: PathBuf,
    /// `--brick` value, `VOL:PATH:REPLICA_SET`.
    pub brick: String,
}

/// One step of the lifecycle: which node runs which `georep` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Index into the plans.
    pub node: usize,
    /// Arguments after `georep --socket ...`.
    pub args: Vec<String>,
}

/// How many of `n` nodes are primaries: about 60%, at least one of each role.
pub fn primary_count(n: usize) -> usize {
    ((n * 6 + 5) / 10).clamp(1, n.saturating_sub(1).max(1))
}

/// Lays out the cluster under `root`, one node per port.
pub fn plan_cluster(root: &Path, ports: &[u16]) -> Vec<NodePlan> {
    let primaries = primary_count(ports.len());
    ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let id = format!("n{}", i + 1);
            let dir = root.join(&id);
            let (role, volume, index) = if i < primaries {
                (Role::Primary, PRIMARY_VOLUME, i)
            } else {
                (Role::Secondary, SECONDARY_VOLUME, i - primaries)
            };
            // The secondary volume is one namespace: its agents share its mount.
            let brick_dir = match role {
                Role::Primary => dir.join("bricks").join(format!("{volume}-b{}", index + 1)),
                Role::Secondary => root.join(format!("{volume}-mount")),
            };
            let brick = format!("{volume}:{}:{}", brick_dir.display(), index / REPLICA_COUNT);
            NodePlan {
                listen: SocketAddr::from((Ipv4Addr::LOCALHOST, *port)),
                socket: dir.join(SOCKET_FILE),
                log: dir.join("georepd.log"),
                id,
                role,
                dir,
                brick_dir,
                brick,
            }
        })
        .collect()
}

/// The lifecycle, each step on the next node in turn (so reads and writes
/// cross nodes, secondaries included).
pub fn steps(plans: &[NodePlan]) -> Vec<Step> {
    let secondary_host = plans
        .iter()
        .find(|p| p.role == Role::Secondary)
        .map_or("n2", |p| p.id.as_str());
    let secondary = format!("{secondary_host}::{SECONDARY_VOLUME}");
    let session = |cmd: &str, extra: &[&str]| -> Vec<String> {
        [cmd, PRIMARY_VOLUME, &secondary]
            .into_iter()
            .chain(extra.iter().copied())
            .map(str::to_owned)
            .collect()
    };
    let lifecycle: Vec<Vec<String>> = vec![
        session("create", &["--push-pem"]),
        session("config", &["change-interval", "1"]),
        session("start", &[]),
        vec!["status".into()],
        session("config", &["sync-jobs", "8"]),
        session("config", &["sync-jobs"]),
        session("pause", &[]),
        session("resume", &[]),
        vec!["status".into(), "--detail".into()],
        session("stop", &[]),
        session("delete", &[]),
        vec!["status".into()],
        vec!["nodes".into()],
    ];
    let n = plans.len().max(1);
    lifecycle
        .into_iter()
        .enumerate()
        .map(|(i, args)| Step { node: i % n, args })
        .collect()
}

/// `georep demo`. Prints as it goes; exit 0 only if every step succeeded.
pub async fn run(a: &DemoArgs) -> Exit {
    match demo(a).await {
        Ok(true) => Exit::Done,
        Ok(false) => Exit::Failed,
        Err(e) => {
            eprintln!("georep demo: {e:#}");
            Exit::Failed
        }
    }
}

async fn demo(a: &DemoArgs) -> anyhow::Result<bool> {
    let georepd = georepd_path()?;
    let n = usize::from(a.nodes);
    // Declared before the agents so that it is removed after they are gone.
    let (root, temp) = prepare_root(a.dir.as_deref(), n)?;
    let ports =
        georep_devcluster::free_udp_ports(n).context("cannot find free UDP ports on 127.0.0.1")?;
    let plans = plan_cluster(&root, &ports);
    let agent_plans = prepare_agents(&root, &plans)?;

    println!(
        "demo: {n} agents on loopback in {} ({} primaries hosting {PRIMARY_VOLUME}, {} secondaries hosting {SECONDARY_VOLUME})",
        root.display(),
        primary_count(n),
        n - primary_count(n)
    );
    for plan in &plans {
        let role = match plan.role {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        };
        println!(
            "  {}  {}  {role:<9}  --brick {}",
            plan.id, plan.listen, plan.brick
        );
    }
    println!();

    let mut agents = Agents::default();
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No handler could be installed: never report an interruption.
            std::future::pending::<()>().await;
        }
    };
    let outcome = tokio::select! {
        outcome = drive(&georepd, &plans, &agent_plans, &mut agents) => outcome,
        () = interrupted => Err(anyhow!("interrupted")),
    };
    let succeeded = matches!(outcome, Ok(true));
    if !succeeded {
        if let Err(e) = &outcome {
            eprintln!("georep demo: {e:#}");
        }
        print_log_tails(&plans);
        cleanup_session(&plans).await;
    }
    reap_stray_monitors(&plans).await;

    println!("demo: stopping the agents");
    for (id, status) in agents.terminate() {
        match status {
            Ok(status) if status.success() => println!("  {id}: exited 0"),
            Ok(status) => println!("  {id}: {status} (expected exit 0 after SIGTERM)"),
            Err(e) => println!("  {id}: could not be reaped: {e}"),
        }
    }
    match temp {
        Some(temp) => {
            let path = temp.path().to_path_buf();
            temp.close()
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
        None => println!("demo: files kept in {}", root.display()),
    }
    if succeeded {
        println!("demo: every step succeeded");
    }
    // A failure was reported above, before the log tails.
    Ok(succeeded)
}

/// Starts the agents, waits for them, runs the steps. `Ok(false)` if a step failed.
async fn drive(
    georepd: &Path,
    plans: &[NodePlan],
    agent_plans: &[AgentPlan],
    agents: &mut Agents,
) -> anyhow::Result<bool> {
    for (plan, agent) in plans.iter().zip(agent_plans) {
        agents.spawn(georepd, plan, agent)?;
    }
    wait_ready(plans, agents).await?;
    let files = seed_files(plans)?;
    for step in steps(plans) {
        let plan = &plans[step.node];
        let socket = plan.socket.display().to_string();
        println!("$ georep --socket {socket} {}", step.args.join(" "));
        let argv = ["georep".to_owned(), "--socket".to_owned(), socket]
            .into_iter()
            .chain(step.args.iter().cloned());
        let cli = Cli::try_parse_from(argv).context("a demo step does not parse")?;
        let report = crate::execute(&cli).await;
        report.print();
        println!();
        if report.exit != Exit::Done {
            eprintln!(
                "georep demo: step `georep {}` on {} failed (exit {})",
                step.args.join(" "),
                plan.id,
                report.exit.code()
            );
            return Ok(false);
        }
        if step.args.first().map(String::as_str) == Some("start")
            && !show_arrival(plans, &files).await?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes a few files into the primary bricks, the same into the bricks of one
/// replica set (replicas hold the same files), different ones per replica set (a
/// distributed volume); returns the paths written, relative to the volume.
fn seed_files(plans: &[NodePlan]) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = std::collections::BTreeSet::new();
    for plan in plans.iter().filter(|p| p.role == Role::Primary) {
        let set = plan.brick.rsplit(':').next().unwrap_or("0");
        let files = [
            (
                PathBuf::from(format!("set{set}/hello.txt")),
                format!("hello from replica set {set}\n"),
            ),
            (
                PathBuf::from(format!("set{set}/docs/notes.md")),
                "# notes\n".repeat(1000),
            ),
        ];
        for (relative, content) in files {
            let path = plan.brick_dir.join(&relative);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            fs::write(&path, content)
                .with_context(|| format!("cannot write {}", path.display()))?;
            written.insert(relative);
        }
    }
    println!(
        "demo: wrote {} files into the primary bricks",
        written.len()
    );
    Ok(written.into_iter().collect())
}

/// Waits (up to 60 s) until every seeded file is on the secondary volume with the
/// same content, printing each as it arrives. `Ok(false)` if some did not.
async fn show_arrival(plans: &[NodePlan], files: &[PathBuf]) -> anyhow::Result<bool> {
    let Some(secondary) = plans.iter().find(|p| p.role == Role::Secondary) else {
        return Ok(true);
    };
    let sources: Vec<&NodePlan> = plans.iter().filter(|p| p.role == Role::Primary).collect();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut pending: Vec<&PathBuf> = files.iter().collect();
    while !pending.is_empty() {
        pending.retain(|relative| {
            let arrived = fs::read(secondary.brick_dir.join(relative)).ok();
            let same = arrived.as_ref().is_some_and(|bytes| {
                sources
                    .iter()
                    .any(|p| fs::read(p.brick_dir.join(relative)).ok().as_ref() == Some(bytes))
            });
            if same {
                println!(
                    "  arrived on the secondary volume: {} ({} bytes)",
                    relative.display(),
                    arrived.map_or(0, |b| b.len())
                );
            }
            !same
        });
        if pending.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            eprintln!("georep demo: not on the secondary volume after 60 s: {pending:?}");
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Then until the status the next step prints shows it: one Active worker per
    // replica set with a LAST_SYNCED (workers report through the mesh).
    let sets: std::collections::BTreeSet<&str> = sources
        .iter()
        .filter_map(|p| p.brick.rsplit(':').next())
        .collect();
    let socket = secondary.socket.display().to_string();
    while tokio::time::Instant::now() < deadline {
        let cli = Cli::try_parse_from(["georep", "--socket", &socket, "status", "--json"])
            .context("the demo's status does not parse")?;
        let report = crate::execute(&cli).await;
        let synced = serde_json::from_str::<serde_json::Value>(&report.stdout)
            .ok()
            .and_then(|v| v["sessions"][0]["workers"].as_array().cloned())
            .map_or(0, |workers| {
                workers
                    .iter()
                    .filter(|w| w["status"] == "Active" && w["last_synced"].is_string())
                    .count()
            });
        if synced >= sets.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    println!();
    Ok(true)
}

fn georepd_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the georep executable")?;
    let georepd = exe.with_file_name("georepd");
    if !georepd.is_file() {
        bail!(
            "georepd not found at {} (the demo runs the georepd next to georep); build it with cargo build --workspace",
            georepd.display()
        );
    }
    Ok(georepd)
}

/// The demo's root directory: `dir` (made absolute, must be new or empty,
/// kept afterwards) or a temporary directory (removed afterwards).
fn prepare_root(
    dir: Option<&Path>,
    nodes: usize,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(dir) => {
            let dir = std::path::absolute(dir)
                .with_context(|| format!("cannot resolve {}", dir.display()))?;
            check_socket_room(&dir, nodes)?;
            if dir.exists() {
                let mut entries =
                    fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
                if entries.next().is_some() {
                    bail!(
                        "{} is not empty; give --dir a new or empty directory",
                        dir.display()
                    );
                }
            }
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            Ok((dir, None))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("georep-demo-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            check_socket_room(temp.path(), nodes)?;
            Ok((temp.path().to_path_buf(), Some(temp)))
        }
    }
}

/// Refuses a root under which the longest agent socket path would not fit
/// in a Unix socket address.
fn check_socket_room(root: &Path, nodes: usize) -> anyhow::Result<()> {
    let longest = root.join(format!("n{nodes}")).join(SOCKET_FILE);
    let len = longest.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        bail!(
            "socket path {} would be {len} bytes, longer than a Unix socket allows ({MAX_SOCKET_PATH_BYTES}); use a shorter --dir",
            longest.display()
        );
    }
    Ok(())
}

/// The certificates, data directories and `georepd` flags of every agent (the shared
/// launcher, `georep-devcluster`); the first agent is everyone's seed. Each secondary
/// agent keeps its push-pem block in `DIR/ssh/NODE/authorized_keys`, never in a real
/// user's file.
fn prepare_agents(root: &Path, plans: &[NodePlan]) -> anyhow::Result<Vec<AgentPlan>> {
    let specs: Vec<AgentSpec> = plans
        .iter()
        .map(|plan| AgentSpec {
            id: plan.id.clone(),
            addr: plan.listen,
            bricks: vec![plan.brick.clone()],
            extra_args: vec![
                "--authorized-keys".into(),
                root.join("ssh")
                    .join(&plan.id)
                    .join("authorized_keys")
                    .display()
                    .to_string(),
            ],
        })
        .collect();
    let options = ClusterOptions {
        gossip_interval_ms: GOSSIP_INTERVAL_MS,
        monitor_command: None,
        seeds: plans.first().map(|p| p.listen).into_iter().collect(),
    };
    georep_devcluster::prepare(root, &specs, &options).context("cannot prepare the agents")
}

/// Polls n1's `nodes` until every agent is live there.
async fn wait_ready(plans: &[NodePlan], agents: &mut Agents) -> anyhow::Result<()> {
    let Some(first) = plans.first() else {
        return Ok(());
    };
    let n = plans.len();
    let started = Instant::now();
    println!("demo: waiting for {} to see all {n} agents live", first.id);
    loop {
        if let Some((id, status)) = agents.exited() {
            bail!("agent {id} exited early ({status})");
        }
        let last = match probe_nodes(&first.socket).await {
            Ok(resp) => {
                let live = resp.nodes.iter().filter(|node| node.live).count();
                if live >= n && resp.nodes.len() >= n {
                    println!(
                        "demo: all {n} agents live after {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                    println!();
                    return Ok(());
                }
                format!("{live}/{n} live")
            }
            Err(e) => e,
        };
        if started.elapsed() >= READY_TIMEOUT {
            bail!(
                "the agents did not all become live within {}s (last from {}: {last})",
                READY_TIMEOUT.as_secs(),
                first.id
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn probe_nodes(socket: &Path) -> Result<NodesResponse, String> {
    match request(socket, "GET", "/v1/nodes", None, PROBE_TIMEOUT).await {
        Ok((200, body)) => serde_json::from_value(body).map_err(|e| e.to_string()),
        Ok((status, body)) => Err(format!("HTTP {status}: {body}")),
        Err(e) => Err(e.to_string()),
    }
}

/// After a failure: force the session down so that no monitor outlives the demo.
async fn cleanup_session(plans: &[NodePlan]) {
    let Some(first) = plans.first() else { return };
    let Some(step) = steps(plans).into_iter().next() else {
        return;
    };
    let (primary, secondary) = (&step.args[1], &step.args[2]);
    let timeout = CLEANUP_TIMEOUT.as_secs().to_string();
    for cmd in ["stop", "delete"] {
        let argv = [
            "georep",
            "--socket",
            &first.socket.display().to_string(),
            "--timeout",
            &timeout,
            cmd,
            primary,
            secondary,
            "--force",
        ]
        .map(str::to_owned);
        if let Ok(cli) = Cli::try_parse_from(argv) {
            // Refusals are expected here (e.g. nothing was created).
            let _ = crate::execute(&cli).await;
        }
    }
}

/// Agents leave monitors running when terminated (so a restart re-adopts
/// them); any monitor still reported now would outlive the demo, so its
/// process group gets SIGTERM.
async fn reap_stray_monitors(plans: &[NodePlan]) {
    for plan in plans {
        let Ok((200, body)) = request(&plan.socket, "GET", "/v1/status", None, PROBE_TIMEOUT).await
        else {
            continue;
        };
        let Ok(status) = serde_json::from_value::<StatusResponse>(body) else {
            continue;
        };
        let pids: Vec<u32> = status
            .sessions
            .iter()
            .flat_map(|s| &s.workers)
            .filter_map(|w| w.monitor_pid)
            .collect();
        for pid in &pids {
            let Ok(raw) = i32::try_from(*pid) else {
                continue;
            };
            if kill(Pid::from_raw(-raw), Signal::SIGTERM).is_err() {
                let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
            }
        }
        if !pids.is_empty() {
            println!("demo: stopped leftover monitors (pids {pids:?})");
        }
        return;
    }
}

fn print_log_tails(plans: &[NodePlan]) {
    for plan in plans {
        eprintln!("--- last lines of {} ---", plan.log.display());
        match fs::read(&plan.log) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                for line in &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..] {
                    eprintln!("{line}");
                }
            }
            Err(e) => eprintln!("(cannot read it: {e})"),
        }
    }
}

/// A started agent.
struct Agent {
    id: String,
    child: Child,
}

/// The agents the demo started; dropping it terminates them (SIGTERM, then
/// SIGKILL after [`STOP_GRACE`]) and reaps them.
#[derive(Default)]
struct Agents {
    running: Vec<Agent>,
}

impl Agents {
    fn spawn(&mut self, georepd: &Path, plan: &NodePlan, agent: &AgentPlan) -> anyhow::Result<()> {
        fs::create_dir_all(&plan.brick_dir)
            .with_context(|| format!("cannot create {}", plan.brick_dir.display()))?;
        let child = georep_devcluster::spawn(georepd, agent, &[], &[])
            .with_context(|| format!("cannot start {} for {}", georepd.display(), plan.id))?;
        self.running.push(Agent {
            id: plan.id.clone(),
            child,
        });
        Ok(())
    }

    /// The first agent found to have exited, if any.
    fn exited(&mut self) -> Option<(String, ExitStatus)> {
        self.running
            .iter_mut()
            .find_map(|a| match a.child.try_wait() {
                Ok(Some(status)) => Some((a.id.clone(), status)),
                _ => None,
            })
    }

    /// SIGTERMs every agent, waits up to [`STOP_GRACE`], kills stragglers,
    /// and returns how each ended.
    fn terminate(&mut self) -> Vec<(String, std::io::Result<ExitStatus>)> {
        // All at once, then each within what is left of the grace.
        for agent in &self.running {
            if let Ok(pid) = i32::try_from(agent.child.id()) {
                // ESRCH: it already exited, and is reaped below.
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = std::time::Instant::now() + STOP_GRACE;
        self.running
            .drain(..)
            .map(|mut agent| {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let status = georep_devcluster::terminate(&mut agent.child, left);
                (agent.id, status)
            })
            .collect()
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_nodes_are_three_primaries_in_two_replica_sets_and_two_secondaries() {
        let root = Path::new("/tmp/demo");
        let plans = plan_cluster(root, &[7401, 7402, 7403, 7404, 7405]);
        let bricks: Vec<&str> = plans.iter().map(|p| p.brick.as_str()).collect();
        assert_eq!(
            bricks,
            [
                "gv0:/tmp/demo/n1/bricks/gv0-b1:0",
                "gv0:/tmp/demo/n2/bricks/gv0-b2:0",
                "gv0:/tmp/demo/n3/bricks/gv0-b3:1",
                "gv1:/tmp/demo/gv1-mount:0",
                "gv1:/tmp/demo/gv1-mount:0",
            ]
        );
        assert_eq!(plans[3].role, Role::Secondary);
        assert_eq!(plans[0].socket, root.join("n1/georepd.sock"));
        assert_eq!(plans[4].listen.to_string(), "127.0.0.1:7405");
    }

    #[test]
    fn role_split_is_about_sixty_forty() {
        let split: Vec<usize> = (2..=10).map(primary_count).collect();
        assert_eq!(split, [1, 2, 2, 3, 4, 4, 5, 5, 6]);
    }

    #[test]
    fn steps_rotate_over_nodes_and_parse() {
        let plans = plan_cluster(Path::new("/d"), &[1, 2, 3, 4, 5]);
        let steps = steps(&plans);
        assert_eq!(steps[0].args, ["create", "gv0", "n4::gv1", "--push-pem"]);
        assert_eq!(steps.len(), 13);
        for pair in steps.windows(2) {
            assert_ne!(pair[0].node, pair[1].node);
        }
        // The config read-back runs on another node than the write, a secondary among them.
        assert_eq!(
            steps[4].args,
            ["config", "gv0", "n4::gv1", "sync-jobs", "8"]
        );
        assert_ne!(steps[4].node, steps[5].node);
        assert!(steps.iter().any(|s| plans[s.node].role == Role::Secondary));
        for step in &steps {
            let argv = ["georep", "--socket", "/s"]
                .into_iter()
                .chain(step.args.iter().map(String::as_str));
            Cli::try_parse_from(argv).unwrap();
        }
        let two = plan_cluster(Path::new("/d"), &[1, 2]);
        assert_eq!(steps_for(&two)[0].args[2], "n2::gv1");
    }

    fn steps_for(plans: &[NodePlan]) -> Vec<Step> {
        steps(plans)
    }

    #[test]
    fn guard_terminates_children() {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut agents = Agents::default();
        agents.running.push(Agent {
            id: "n1".into(),
            child,
        });
        assert!(agents.exited().is_none());
        drop(agents);
        // Reaped: the pid is gone (or at least no longer our child).
        let alive = kill(Pid::from_raw(i32::try_from(pid).unwrap()), None).is_ok();
        assert!(!alive, "pid {pid} survived the guard");
    }
}
