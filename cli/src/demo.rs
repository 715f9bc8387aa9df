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

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use georep_api::client::request;
use georep_api::types::{NodesResponse, StatusResponse};
use georep_mesh::tls::{CA_CERT_FILE, write_ca, write_node_cert};
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
const SOCKET_FILE: &str = "georepd.sock";
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
            let brick_dir = dir.join("bricks").join(format!("{volume}-b{}", index + 1));
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
    let ports = free_udp_ports(n)?;
    let plans = plan_cluster(&root, &ports);
    let tls = root.join("tls");
    write_tls(&tls, &plans)?;

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
        outcome = drive(&georepd, &plans, &tls, &mut agents) => outcome,
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
    tls: &Path,
    agents: &mut Agents,
) -> anyhow::Result<bool> {
    let seed = plans.first().map(|p| p.listen);
    for plan in plans {
        agents.spawn(georepd, plan, seed.filter(|s| *s != plan.listen), tls)?;
    }
    wait_ready(plans, agents).await?;
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
    }
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

/// `n` distinct free UDP ports on 127.0.0.1 (QUIC listens on UDP). All are
/// held until every one is chosen, then released for the agents.
fn free_udp_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let sockets = (0..n)
        .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find free UDP ports on 127.0.0.1")?;
    sockets
        .iter()
        .map(|s| Ok(s.local_addr()?.port()))
        .collect::<std::io::Result<Vec<u16>>>()
        .context("cannot read a bound UDP port")
}

fn write_tls(tls: &Path, plans: &[NodePlan]) -> anyhow::Result<()> {
    write_ca(tls)?;
    for plan in plans {
        write_node_cert(tls, &plan.id, &[Ipv4Addr::LOCALHOST.into()], &[], tls)?;
    }
    Ok(())
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
    fn spawn(
        &mut self,
        georepd: &Path,
        plan: &NodePlan,
        seed: Option<SocketAddr>,
        tls: &Path,
    ) -> anyhow::Result<()> {
        fs::create_dir_all(&plan.brick_dir)
            .with_context(|| format!("cannot create {}", plan.brick_dir.display()))?;
        let log = File::create(&plan.log)
            .with_context(|| format!("cannot create {}", plan.log.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("cannot reopen {}", plan.log.display()))?;
        let mut command = std::process::Command::new(georepd);
        // Plain log files: no terminal colour codes.
        command
            .env("NO_COLOR", "1")
            .arg("--node-id")
            .arg(&plan.id)
            .arg("--data-dir")
            .arg(&plan.dir)
            .arg("--listen")
            .arg(plan.listen.to_string())
            .arg("--api-socket")
            .arg(&plan.socket)
            .arg("--brick")
            .arg(&plan.brick)
            .arg("--tls-ca")
            .arg(tls.join(CA_CERT_FILE))
            .arg("--tls-cert")
            .arg(tls.join(format!("{}.crt", plan.id)))
            .arg("--tls-key")
            .arg(tls.join(format!("{}.key", plan.id)))
            .arg("--gossip-interval-ms")
            .arg(GOSSIP_INTERVAL_MS.to_string());
        if let Some(seed) = seed {
            command.arg("--seed").arg(seed.to_string());
        }
        // Own process group: a Ctrl-C reaches the demo, which then stops
        // the agents in order, rather than every agent at once.
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
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
                let status = loop {
                    match agent.child.try_wait() {
                        Ok(Some(status)) => break Ok(status),
                        Ok(None) if std::time::Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Ok(None) => {
                            let _ = agent.child.kill();
                            break agent.child.wait();
                        }
                        Err(e) => break Err(e),
                    }
                };
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
                "gv1:/tmp/demo/n4/bricks/gv1-b1:0",
                "gv1:/tmp/demo/n5/bricks/gv1-b2:0",
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
        assert_eq!(steps.len(), 12);
        for pair in steps.windows(2) {
            assert_ne!(pair[0].node, pair[1].node);
        }
        // The config read-back runs on another node than the write, a secondary among them.
        assert_eq!(
            steps[3].args,
            ["config", "gv0", "n4::gv1", "sync-jobs", "8"]
        );
        assert_ne!(steps[3].node, steps[4].node);
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
    fn free_ports_are_distinct() {
        let ports = free_udp_ports(5).unwrap();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 5);
    }

    #[test]
    fn guard_terminates_children() {
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
