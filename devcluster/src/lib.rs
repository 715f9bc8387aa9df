//! georep-devcluster: starting N local `georepd` agents, the way `georep demo` and the
//! real-process tests both do: one cluster CA and a certificate per agent (for its
//! address), a data directory each, the flags that tie them together, and the child
//! processes with their logs.
//!
//! - [`prepare`] writes the CA, the certificates and the data directories, and
//!   returns each agent's [`AgentPlan`] with its full `georepd` argument list.
//! - [`spawn`] starts one planned agent (optionally behind a launcher such as
//!   `ip netns exec NS`), its output appended to its log.
//! - [`terminate`] stops one: SIGTERM, then SIGKILL after a grace period.
//! - [`free_udp_ports`] finds ports for agents on loopback.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fs::{self, OpenOptions};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use georep_mesh::{CA_CERT_FILE, TlsError, write_ca, write_node_cert};
use georep_store::DataDir;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Name of the directory under the root holding the CA and the certificates.
pub const TLS_DIR: &str = "tls";
/// Name of an agent's log file in its data directory.
pub const LOG_FILE: &str = "georepd.log";

/// Why a cluster could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// Writing the CA or a certificate failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Creating a directory failed.
    #[error("cannot create {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// One agent to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    /// Node id.
    pub id: String,
    /// Gossip address (its certificate carries this IP).
    pub addr: SocketAddr,
    /// Bricks as `VOL:PATH[:SET]`.
    pub bricks: Vec<String>,
    /// Flags added after the cluster's own (e.g. `--inject-delay`).
    pub extra_args: Vec<String>,
}

/// What every agent of the cluster shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// Gossip interval of every agent.
    pub gossip_interval_ms: u64,
    /// `--monitor-command`, when not the built-in monitor.
    pub monitor_command: Option<String>,
    /// Seeds every agent is given (its own address is left out).
    pub seeds: Vec<SocketAddr>,
}

/// One prepared agent: where its files are and how it is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPlan {
    /// Node id.
    pub id: String,
    /// Gossip address.
    pub addr: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Local API socket (in the data directory).
    pub socket: PathBuf,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// `georepd` arguments (after the program).
    pub args: Vec<String>,
}

/// Writes the CA and a certificate per agent under `root/tls`, creates each agent's
/// data directory `root/<id>`, and returns each agent's plan.
pub fn prepare(
    root: &Path,
    specs: &[AgentSpec],
    options: &ClusterOptions,
) -> Result<Vec<AgentPlan>, DevError> {
    let tls = root.join(TLS_DIR);
    write_ca(&tls)?;
    let mut plans = Vec::with_capacity(specs.len());
    for spec in specs {
        write_node_cert(&tls, &spec.id, &[spec.addr.ip()], &[], &tls)?;
        let data_dir = root.join(&spec.id);
        fs::create_dir_all(&data_dir).map_err(|source| DevError::Io {
            path: data_dir.clone(),
            source,
        })?;
        let socket = DataDir::new(&data_dir).api_socket();
        let path = |p: PathBuf| p.display().to_string();
        let mut args = vec![
            "--node-id".to_string(),
            spec.id.clone(),
            "--data-dir".into(),
            path(data_dir.clone()),
            "--listen".into(),
            spec.addr.to_string(),
            "--api-socket".into(),
            path(socket.clone()),
            "--tls-ca".into(),
            path(tls.join(CA_CERT_FILE)),
            "--tls-cert".into(),
            path(tls.join(format!("{}.crt", spec.id))),
            "--tls-key".into(),
            path(tls.join(format!("{}.key", spec.id))),
            "--gossip-interval-ms".into(),
            options.gossip_interval_ms.to_string(),
        ];
        for seed in options.seeds.iter().filter(|s| **s != spec.addr) {
            args.push("--seed".into());
            args.push(seed.to_string());
        }
        for brick in &spec.bricks {
            args.push("--brick".into());
            args.push(brick.clone());
        }
        if let Some(command) = &options.monitor_command {
            args.push("--monitor-command".into());
            args.push(command.clone());
        }
        args.extend(spec.extra_args.iter().cloned());
        plans.push(AgentPlan {
            id: spec.id.clone(),
            addr: spec.addr,
            log: data_dir.join(LOG_FILE),
            data_dir,
            socket,
            args,
        });
    }
    Ok(plans)
}

/// The command that starts `plan`'s agent: `LAUNCHER... GEOREPD ARGS...` (the launcher,
/// e.g. `ip netns exec NS`, must exec the agent so that the child's pid is the agent's).
pub fn command(georepd: &Path, plan: &AgentPlan, launcher: &[String]) -> Command {
    let mut command = match launcher.split_first() {
        Some((program, words)) => {
            let mut command = Command::new(program);
            command.args(words).arg(georepd);
            command
        }
        None => Command::new(georepd),
    };
    command.args(&plan.args);
    command
}

/// Starts `plan`'s agent with stdin closed and stdout and stderr appended to its log,
/// in a process group of its own (a Ctrl-C reaches whoever started it, which stops
/// the agents in order). `env` is added to the agent's environment.
pub fn spawn(
    georepd: &Path,
    plan: &AgentPlan,
    launcher: &[String],
    env: &[(&str, &str)],
) -> io::Result<Child> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&plan.log)?;
    let err = log.try_clone()?;
    let mut command = command(georepd, plan, launcher);
    // Plain log files: no terminal colour codes.
    command.env("NO_COLOR", "1");
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
}

/// Stops an agent: SIGTERM, then SIGKILL if it has not exited after `grace`; returns
/// how it ended.
pub fn terminate(child: &mut Child, grace: Duration) -> io::Result<ExitStatus> {
    if let Ok(pid) = i32::try_from(child.id()) {
        // ESRCH: it already exited, and is reaped below.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait()? {
            Some(status) => return Ok(status),
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            None => {
                let _ = child.kill();
                return child.wait();
            }
        }
    }
}

/// `n` distinct free UDP ports on 127.0.0.1 (QUIC listens on UDP). All are held until
/// every one is chosen, then released for the agents.
pub fn free_udp_ports(n: usize) -> io::Result<Vec<u16>> {
    let sockets = (0..n)
        .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()?;
    sockets.iter().map(|s| Ok(s.local_addr()?.port())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_writes_the_pki_and_each_agent_gets_its_flags() {
        let root = tempfile::tempdir().unwrap();
        let ports = free_udp_ports(5).unwrap();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 5, "distinct ports");
        let addr = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        let specs = [
            AgentSpec {
                id: "n1".into(),
                addr: addr(ports[0]),
                bricks: vec!["gv0:/b1:0".into()],
                extra_args: vec![],
            },
            AgentSpec {
                id: "n2".into(),
                addr: addr(ports[1]),
                bricks: vec![],
                extra_args: vec!["--cluster-id".into(), "x".into()],
            },
        ];
        let options = ClusterOptions {
            gossip_interval_ms: 100,
            monitor_command: Some("mon {session}".into()),
            seeds: vec![addr(ports[0])],
        };
        let plans = prepare(root.path(), &specs, &options).unwrap();
        assert!(root.path().join("tls/ca.crt").is_file());
        assert!(root.path().join("tls/n2.key").is_file());
        assert!(plans[1].data_dir.is_dir());
        assert_eq!(plans[0].socket, root.path().join("n1/georepd.sock"));
        // An agent is not its own seed.
        assert!(!plans[0].args.contains(&"--seed".to_string()));
        let seed_at = plans[1].args.iter().position(|a| a == "--seed").unwrap();
        assert_eq!(plans[1].args[seed_at + 1], addr(ports[0]).to_string());
        assert!(plans[0].args.ends_with(&[
            "--brick".into(),
            "gv0:/b1:0".into(),
            "--monitor-command".into(),
            "mon {session}".into()
        ]));
        assert!(
            plans[1]
                .args
                .ends_with(&["--cluster-id".into(), "x".into()])
        );
        // A second prepare in the same root refuses to overwrite the keys.
        assert!(prepare(root.path(), &specs, &options).is_err());
    }

    #[test]
    fn terminate_escalates_to_sigkill_after_the_grace() {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "trap '' TERM; while :; do sleep 0.05; done"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let status = terminate(&mut child, Duration::from_millis(200)).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }
}
