//! Test harness for real-process tests: a cluster of real `georepd` binaries on
//! loopback, driven through the real `georep` CLI.
//!
//! Binaries are taken from the cargo target directory this test binary runs from
//! (`cargo test --workspace` builds them).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod gluster;
pub mod loopback_ns;
pub mod receiver;
pub mod sites;
pub mod sshd;
pub mod tmpfs;
pub mod trees;

/// Where the workspace's binaries are: `GEOREP_BIN_DIR`, else the target directory this
/// test binary runs from.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GEOREP_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for bin in ["georepd", "georep"] {
        assert!(
            dir.join(bin).exists(),
            "{} not built: run `cargo build --workspace` (or `cargo test --workspace`)",
            dir.join(bin).display()
        );
    }
    dir
}

/// A port on loopback free for UDP and TCP (bound, then released), below the kernel's
/// ephemeral range: between its choice and the agent's bind, no socket the kernel
/// numbers itself (an agent's data-path endpoint, any client) can take it, and this
/// process never hands the same port out twice. (Ports from the ephemeral range were
/// taken that way now and then: "cannot listen on ...: Address already in use".)
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low > 12_000 {
        (10_000, ephemeral_low)
    } else {
        // An unusual range: fall back to what the kernel hands out.
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind ephemeral port");
        return socket.local_addr().expect("local addr").port();
    };
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..10_000 {
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        random.write_u32(std::process::id());
        let port = low + (random.finish() % u64::from(high - low)) as u16;
        if given.contains(&port) {
            continue;
        }
        let free = UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free {
            given.push(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {low}..{high}");
}

/// One node of a test cluster.
pub struct NodeSpec {
    /// Node id.
    pub id: String,
    /// Bricks as `VOL:PATH[:SET]`. A `PATH` under `/bricks/` is a placeholder: the
    /// cluster creates it as an empty directory inside its temporary directory (see
    /// [`BRICKS_PLACEHOLDER`]) and the agent gets that path.
    pub bricks: Vec<String>,
    /// Flags added to this agent's command line.
    pub extra_args: Vec<String>,
}

impl NodeSpec {
    /// A node with the given bricks.
    pub fn new(id: &str, bricks: &[&str]) -> Self {
        Self {
            id: id.into(),
            bricks: bricks.iter().map(|b| b.to_string()).collect(),
            extra_args: Vec::new(),
        }
    }

    /// This node with `args` added to its agent's command line.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }
}

/// Brick paths starting with this are created inside the cluster's temporary
/// directory (`<tmp>/bricks/...`), so that the agents measure real, empty directories
/// (create verifies the secondary from them) and nothing is written outside it.
pub const BRICKS_PLACEHOLDER: &str = "/bricks/";

/// `VOL:/bricks/REST[:SET]` -> `VOL:<root>/bricks/REST[:SET]`, the directory created;
/// any other brick spec unchanged.
fn place_brick(root: &Path, spec: &str) -> String {
    let mut parts: Vec<String> = spec.splitn(3, ':').map(str::to_string).collect();
    if let Some(path) = parts.get(1).filter(|p| p.starts_with(BRICKS_PLACEHOLDER)) {
        let placed = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&placed).expect("create a test brick directory");
        parts[1] = placed.display().to_string();
    }
    parts.join(":")
}

/// The authorized_keys file a test cluster's node keeps its push-pem blocks in.
fn authorized_keys_of(root: &Path, id: &str) -> PathBuf {
    root.join("ssh").join(id).join("authorized_keys")
}

/// A running (or stopped) `georepd`.
pub struct Node {
    /// Node id.
    pub id: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// API socket.
    pub socket: PathBuf,
    /// Gossip address.
    pub addr: SocketAddr,
    /// Words run before `georepd` (e.g. `ip netns exec NS`); empty: run it directly.
    launcher: Vec<String>,
    /// How the shared launcher prepared it.
    plan: georep_devcluster::AgentPlan,
    child: Option<Child>,
}

impl Node {
    /// The layout of the node's data directory.
    pub fn data(&self) -> georep_store::DataDir {
        georep_store::DataDir::new(&self.data_dir)
    }

    /// Pid of the running agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A cluster of real agents in a temporary directory; everything is killed on drop.
pub struct Cluster {
    /// The temporary directory (CA, certs, data dirs).
    pub dir: TempDir,
    /// The nodes, in spec order.
    pub nodes: Vec<Node>,
    bins: PathBuf,
}

/// Where one agent of [`Cluster::start_placed`] runs: its gossip address (its
/// certificate carries that IP) and the launcher that puts it there (e.g.
/// `ip netns exec NS`; it must exec the agent so that the child's pid is the agent's).
#[derive(Debug, Clone)]
pub struct Placement {
    /// Gossip address.
    pub addr: SocketAddr,
    /// Words run before `georepd`.
    pub launcher: Vec<String>,
    /// Flags added after the cluster's own (e.g. `--inject-delay`).
    pub extra_args: Vec<String>,
}

/// A monitor command the tests can find: its command line carries the session dir
/// (under the cluster's temp dir); it exits 0 on SIGTERM.
pub const TEST_MONITOR: &str = "/bin/sh -c 'trap \"exit 0\" TERM; while :; do sleep 0.2; done' georep-test-monitor {session_dir} {node}";

/// A monitor command that exits with status 3 at once (for crash handling).
pub const CRASHING_MONITOR: &str = "/bin/sh -c 'exit 3' georep-test-monitor {session_dir} {node}";

/// Gossip interval used by test clusters.
pub const TEST_GOSSIP_MS: u64 = 100;

impl Cluster {
    /// Primaries n1, n2 (gv0 replica set 0) and n3 (set 1), secondaries n4 and n5
    /// (gv1), started with `monitor` and waited for until every node sees all five live.
    pub fn five_nodes(monitor: Option<&str>) -> Cluster {
        let cluster = Cluster::start(
            &[
                NodeSpec::new("n1", &["gv0:/bricks/n1/gv0:0"]),
                NodeSpec::new("n2", &["gv0:/bricks/n2/gv0:0"]),
                NodeSpec::new("n3", &["gv0:/bricks/n3/gv0:1"]),
                NodeSpec::new("n4", &["gv1:/bricks/n4/gv1"]),
                NodeSpec::new("n5", &["gv1:/bricks/n5/gv1"]),
            ],
            monitor,
        );
        for i in 0..5 {
            cluster.wait_live(i, 5, Duration::from_secs(30));
        }
        cluster
    }

    /// Starts one agent per spec; nodes 0 and 1 are everyone's seeds. `monitor_command` replaces
    /// the built-in monitor when given.
    pub fn start(specs: &[NodeSpec], monitor_command: Option<&str>) -> Cluster {
        Self::start_with_gossip(specs, monitor_command, TEST_GOSSIP_MS)
    }

    /// [`Cluster::start`] with a chosen gossip interval.
    pub fn start_with_gossip(
        specs: &[NodeSpec],
        monitor_command: Option<&str>,
        gossip_ms: u64,
    ) -> Cluster {
        Self::launch(specs, monitor_command, gossip_ms, Vec::new(), None)
    }

    /// [`Cluster::start`], every agent started as `LAUNCHER... georepd ARGS...` when
    /// `launcher` is given (e.g. `ip netns exec NS`, see [`loopback_ns`]). The launcher
    /// must exec the agent, so that the child's pid is the agent's.
    pub fn start_with(
        specs: &[NodeSpec],
        monitor_command: Option<&str>,
        launcher: Option<Vec<String>>,
    ) -> Cluster {
        Self::launch(
            specs,
            monitor_command,
            TEST_GOSSIP_MS,
            launcher.unwrap_or_default(),
            None,
        )
    }

    /// [`Cluster::start`] with each agent at its own address and launcher (one network
    /// namespace per host, see [`sites`]); `placements` pairs with `specs`.
    pub fn start_placed(
        specs: &[NodeSpec],
        monitor_command: Option<&str>,
        gossip_ms: u64,
        placements: Vec<Placement>,
    ) -> Cluster {
        assert_eq!(specs.len(), placements.len(), "one placement per node");
        Self::launch(
            specs,
            monitor_command,
            gossip_ms,
            Vec::new(),
            Some(placements),
        )
    }

    fn launch(
        specs: &[NodeSpec],
        monitor_command: Option<&str>,
        gossip_ms: u64,
        launcher: Vec<String>,
        placements: Option<Vec<Placement>>,
    ) -> Cluster {
        let bins = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let placements: Vec<Placement> = placements.unwrap_or_else(|| {
            specs
                .iter()
                .map(|_| Placement {
                    addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
                    launcher: launcher.clone(),
                    extra_args: Vec::new(),
                })
                .collect()
        });
        let addrs: Vec<SocketAddr> = placements.iter().map(|p| p.addr).collect();
        let agents: Vec<georep_devcluster::AgentSpec> = specs
            .iter()
            .zip(&placements)
            .map(|(spec, placement)| georep_devcluster::AgentSpec {
                id: spec.id.clone(),
                addr: placement.addr,
                bricks: spec
                    .bricks
                    .iter()
                    .map(|b| place_brick(dir.path(), b))
                    .collect(),
                // push-pem writes here, never into the real root's authorized_keys.
                extra_args: [
                    "--authorized-keys".to_string(),
                    authorized_keys_of(dir.path(), &spec.id)
                        .display()
                        .to_string(),
                ]
                .into_iter()
                .chain(spec.extra_args.iter().cloned())
                .chain(placement.extra_args.iter().cloned())
                .collect(),
            })
            .collect();
        // Nodes 0 and 1 are everyone's seeds.
        let options = georep_devcluster::ClusterOptions {
            gossip_interval_ms: gossip_ms,
            monitor_command: monitor_command.map(str::to_owned),
            seeds: addrs.iter().take(2).copied().collect(),
        };
        let plans = georep_devcluster::prepare(dir.path(), &agents, &options)
            .expect("prepare the cluster's certificates and data directories");
        let nodes = plans
            .into_iter()
            .zip(&placements)
            .map(|(plan, placement)| Node {
                id: plan.id.clone(),
                data_dir: plan.data_dir.clone(),
                socket: plan.socket.clone(),
                addr: plan.addr,
                launcher: placement.launcher.clone(),
                plan,
                child: None,
            })
            .collect();
        let mut cluster = Cluster { dir, nodes, bins };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        let child = georep_devcluster::spawn(
            &self.georepd_bin(),
            &node.plan,
            &node.launcher,
            &[("RUST_LOG", "info,georep_mesh=debug")],
        )
        .expect("spawn georepd");
        self.nodes[i].child = Some(child);
    }

    /// Restarts a stopped or killed agent with the same data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} still running");
        self.spawn(i);
    }

    /// SIGKILLs an agent (its monitors keep running).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Chunk bytes the built-in data path's workers on `nodes` sent since their
    /// monitors started, from their status files (rewritten every second).
    pub fn worker_bytes_sent(&self, nodes: &[usize]) -> u64 {
        nodes
            .iter()
            .flat_map(|i| {
                let root = self.nodes[*i].data().sessions_root();
                std::fs::read_dir(root).into_iter().flatten().flatten()
            })
            .flat_map(|session| {
                std::fs::read_dir(session.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .filter(|f| f.file_name().to_string_lossy().ends_with(".status"))
            .filter_map(|f| {
                serde_json::from_slice::<serde_json::Value>(&std::fs::read(f.path()).ok()?).ok()
            })
            .filter_map(|v| v["bytes_sent"].as_u64())
            .sum()
    }

    /// The index bytes each round of node `i`'s workers saved on the secondary, in
    /// order (from the `round synced` lines of its monitor logs): the whole index on a
    /// connection's first save, what changed after.
    pub fn worker_index_saves(&self, i: usize) -> Vec<u64> {
        let root = self.nodes[i].data().sessions_root();
        std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|session| std::fs::read_to_string(session.path().join("monitor.log")).ok())
            .flat_map(|log| {
                log.lines()
                    .filter(|l| l.contains("round synced"))
                    .filter_map(|l| {
                        let value = l.split("index_bytes=").nth(1)?;
                        value
                            .split(|c: char| !c.is_ascii_digit())
                            .next()?
                            .parse()
                            .ok()
                    })
                    .collect::<Vec<u64>>()
            })
            .collect()
    }

    /// The node dies: SIGKILLs its agent and the process groups of its monitors.
    pub fn kill9_node(&mut self, i: usize) {
        let monitors = self.session_monitors(i);
        self.kill9(i);
        for pid in monitors {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// SIGTERMs an agent and waits for it to exit; returns its exit status.
    pub fn terminate(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let mut child = self.nodes[i].child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pids of the [`TEST_MONITOR`] processes of node `i` (any session). Only process
    /// group leaders count: the agent starts each monitor in its own group, while the
    /// shell's forked children carry the same command line until they exec `sleep`.
    pub fn test_monitors(&self, i: usize) -> Vec<u32> {
        let needle = format!(
            "georep-test-monitor {}",
            self.nodes[i].data().sessions_root().display()
        );
        processes_matching(&needle)
            .into_iter()
            .filter(|pid| process_group(*pid) == Some(*pid))
            .collect()
    }

    /// Monitors of node `i` (any session, any command): processes that lead their own
    /// session (the agent starts every monitor with `setsid`) and carry node `i`'s
    /// `GEOREP_SESSION_DIR` in their environment. Unlike [`Self::test_monitors`] this
    /// finds monitors whose command line changed by `exec`.
    pub fn session_monitors(&self, i: usize) -> Vec<u32> {
        let prefix = format!(
            "GEOREP_SESSION_DIR={}",
            self.nodes[i].data().sessions_root().display()
        );
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut out: Vec<u32> = entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| process_session(*pid) == Some(*pid))
            .filter(|pid| process_state(*pid).is_some_and(|s| s != 'Z'))
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    env.split(|b| *b == 0)
                        .any(|var| var.starts_with(prefix.as_bytes()))
                })
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// The authorized_keys file node `i` maintains (`--authorized-keys`).
    pub fn authorized_keys(&self, i: usize) -> PathBuf {
        authorized_keys_of(self.dir.path(), &self.nodes[i].id)
    }

    /// The flags node `i`'s agent runs with (after the binary), for tests that start a
    /// second agent with some of them changed.
    pub fn agent_args(&self, i: usize) -> Vec<String> {
        self.nodes[i].plan.args.clone()
    }

    /// The `georepd` binary the cluster runs.
    pub fn georepd_bin(&self) -> PathBuf {
        self.bins.join("georepd")
    }

    /// The `georep` binary.
    pub fn georep_bin(&self) -> PathBuf {
        self.bins.join("georep")
    }

    /// The `georepd` command line node `i` runs with (launcher included).
    pub fn agent_command(&self, i: usize) -> Command {
        let node = &self.nodes[i];
        georep_devcluster::command(&self.georepd_bin(), &node.plan, &node.launcher)
    }

    /// Runs `georep --socket <node i's socket> ARGS...`.
    pub fn georep(&self, i: usize, args: &[&str]) -> Output {
        Command::new(self.bins.join("georep"))
            .arg("--socket")
            .arg(&self.nodes[i].socket)
            .args(args)
            .output()
            .expect("run georep")
    }

    /// Runs `georep` and asserts exit code 0; returns stdout.
    pub fn ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.georep(i, args);
        assert!(
            out.status.success(),
            "georep {args:?} on {} failed ({:?}):\nstdout: {}\nstderr: {}\n{}",
            self.nodes[i].id,
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `georep --json ARGS` parsed.
    pub fn json(&self, i: usize, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.georep(i, &all);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "georep {all:?} printed no JSON ({e}):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Waits until node `i` sees `live` live nodes.
    pub fn wait_live(&self, i: usize, live: usize, within: Duration) {
        self.wait_until(
            within,
            &format!("{live} live nodes seen by node {i}"),
            || {
                let out = self.georep(i, &["--json", "nodes"]);
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                    return false;
                };
                value["nodes"]
                    .as_array()
                    .is_some_and(|n| n.iter().filter(|m| m["live"] == true).count() == live)
            },
        );
    }

    /// Waits until every running agent sees every running agent live at the generation
    /// that agent reports for itself (after a restart, peers must learn the new
    /// incarnation before a command issued elsewhere waits for it).
    pub fn wait_membership_agrees(&self, within: Duration) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .collect();
        let generations = |i: usize| -> Vec<(String, u64, bool)> {
            let out = self.georep(i, &["--json", "nodes"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v["nodes"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|n| {
                    Some((
                        n["node"].as_str()?.to_string(),
                        n["generation"].as_u64()?,
                        n["live"].as_bool()?,
                    ))
                })
                .collect()
        };
        self.wait_until(
            within,
            "every agent to see every agent's current incarnation",
            || {
                // One `nodes` per agent per poll: its own generation and its view.
                let views: Vec<Vec<(String, u64, bool)>> =
                    running.iter().map(|i| generations(*i)).collect();
                let own: Vec<Option<u64>> = running
                    .iter()
                    .zip(&views)
                    .map(|(i, view)| {
                        view.iter()
                            .find(|(node, _, _)| *node == self.nodes[*i].id)
                            .map(|(_, generation, _)| *generation)
                    })
                    .collect();
                views.iter().all(|seen| {
                    running.iter().zip(&own).all(|(i, generation)| {
                        seen.iter().any(|(node, g, live)| {
                            *node == self.nodes[*i].id && Some(*g) == *generation && *live
                        })
                    })
                })
            },
        );
    }

    /// Polls `check` until true, or panics with `what` and the agents' log tails.
    pub fn wait_until(&self, within: Duration, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out after {within:?} waiting for {what}\n{}",
            self.logs_tail()
        );
    }

    /// The last lines of every agent's log, for failure messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let log =
                std::fs::read_to_string(node.data_dir.join("georepd.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains("DEBUG")).collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            out.push_str(&format!(
                "--- {} log tail ---\n{}\n",
                node.id,
                tail.join("\n")
            ));
            // And each session's monitor log (the built-in data path logs there).
            let sessions = std::fs::read_dir(node.data_dir.join("geo-replication"));
            for session in sessions.into_iter().flatten().flatten() {
                let log =
                    std::fs::read_to_string(session.path().join("monitor.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(15)..];
                if !tail.is_empty() {
                    out.push_str(&format!(
                        "--- {} monitor log of {} ---\n{}\n",
                        node.id,
                        session.file_name().to_string_lossy(),
                        tail.join("\n")
                    ));
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        // Monitors outlive agents by design; the test's own must not outlive the test
        // (found by environment too: one that exec'd no longer shows the temp dir).
        for i in 0..self.nodes.len() {
            for pid in self.session_monitors(i) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        kill_processes_matching(&self.dir.path().display().to_string());
    }
}

/// Pids of processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && process_state(pid).is_some_and(|s| s != 'Z') {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// The state letter of a process (`R`, `S`, `T` stopped, `Z` zombie...).
pub fn process_state(pid: u32) -> Option<char> {
    stat_state(&format!("/proc/{pid}/stat"))
}

/// The state letter of a process's or thread's `stat` file at `path`.
fn stat_state(path: &str) -> Option<char> {
    let stat = std::fs::read_to_string(path).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

/// Whether a process is frozen by SIGSTOP: every thread stopped ('T'), or a `vfork`
/// parent in D whose child was stopped before it could exec (it stays in D until the
/// child runs). Its children are not looked at, except for that.
pub fn frozen(pid: u32) -> bool {
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|task| task.file_name().to_string_lossy().into_owned())
        .collect();
    let task_state = |task: &str| stat_state(&format!("/proc/{pid}/task/{task}/stat"));
    let child_stopped = |task: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{task}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .any(|child| process_state(child) == Some('T'))
    };
    !tasks.is_empty()
        && tasks.iter().all(|task| match task_state(task) {
            Some('T') | None => true,
            // read again after the child: see the backend's `tree_frozen`
            Some('D') => child_stopped(task) && task_state(task) == Some('D'),
            _ => false,
        })
}

/// The process group of a process.
pub fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    // fields after the command name: state, ppid, pgrp, ...
    after.split_whitespace().nth(2)?.parse().ok()
}

/// The session id of a process (field 6 of `/proc/PID/stat`).
pub fn process_session(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(3)?.parse().ok()
}

/// SIGKILLs every process whose command line contains `needle`.
pub fn kill_processes_matching(needle: &str) {
    for pid in processes_matching(needle) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// GET `path` on `addr` with a bare HTTP/1.1 client; returns (status line, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}
