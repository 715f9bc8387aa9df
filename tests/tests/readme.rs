//! The README's "Using it on real nodes" walkthrough, run as written.
//!
//! Each of its four nodes is a network namespace with the README's address (10.0.0.N)
//! and a mount namespace of its own in which `/var/lib`, `/run` and `/srv` are empty
//! tmpfs (its brick directory is made in `/srv`), so `/var/lib/georep` and the default
//! socket `/run/georep/georepd.sock` are the node's own and nothing is written to the
//! host's. Block 1 runs once in a scratch directory
//! (the "machine" holding the CA); block 2 runs on every node with its own first line
//! (`NODE=.. IP=.. BRICK=..`, which the README says to change); block 3 runs on n1.
//! Needs root, iproute2, nftables and util-linux (`unshare`, `nsenter`).

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use georep_tests::bin_dir;
use georep_tests::sites::{Site, Sites};

/// The fenced `sh` blocks of the README section `title`.
fn section_blocks(readme: &str, title: &str) -> Vec<String> {
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("README has no section `## {title}`"));
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let section = &rest[..end];
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "unterminated code block in `## {title}`");
    blocks
}

/// Block 2 for one node: its first command line replaced by this node's values.
fn node_block(block: &str, node: &str, ip: Ipv4Addr, brick: &str) -> String {
    let mut replaced = false;
    let lines: Vec<String> = block
        .lines()
        .map(|line| {
            if !replaced && line.starts_with("NODE=") {
                replaced = true;
                format!("NODE={node} IP={ip} BRICK={brick}")
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(
        replaced,
        "block 2 must set NODE=.. IP=.. BRICK=.. on a line of its own:\n{block}"
    );
    lines.join("\n") + "\n"
}

fn path_env() -> String {
    format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn shown(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The agents started by block 2; killed (with their process groups) on drop. The
/// monitors, in sessions of their own, go with the namespaces ([`Sites`]'s drop).
struct Agents {
    children: Vec<(String, Child, PathBuf)>,
}

impl Agents {
    fn logs(&self) -> String {
        let mut text = String::new();
        for (node, _, log) in &self.children {
            let body = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = body.lines().rev().take(15).collect();
            text.push_str(&format!("--- {node} log (last lines)\n"));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    fn pid(&self, node: &str) -> u32 {
        self.children
            .iter()
            .find(|(n, _, _)| n == node)
            .map(|(_, child, _)| child.id())
            .unwrap_or_else(|| panic!("no agent {node}"))
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.children {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
    }
}

/// Runs `script` with `sh -e` inside the network and mount namespaces of process `pid`.
fn on_node(pid: u32, dir: &Path, script: &str) -> Output {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "-n", "sh", "-exc", script])
        .current_dir(dir)
        .env("PATH", path_env())
        .output()
        .expect("run nsenter")
}

#[test]
fn the_real_nodes_walkthrough_runs_as_written() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("read README.md");
    let blocks = section_blocks(&readme, "Using it on real nodes");
    assert_eq!(
        blocks.len(),
        3,
        "the walkthrough has three blocks: certificates, every node, any node"
    );

    let scratch = tempfile::tempdir().expect("scratch dir");
    let dir = scratch.path();
    let certs = Command::new("sh")
        .args(["-exc", &blocks[0]])
        .current_dir(dir)
        .env("PATH", path_env())
        .output()
        .expect("run block 1");
    assert!(certs.status.success(), "block 1 failed: {}", shown(&certs));

    let nodes: Vec<(String, Site, Ipv4Addr, &str)> = vec![
        (
            "n1".into(),
            Site::A,
            Ipv4Addr::new(10, 0, 0, 1),
            "gv0:/srv/gluster/gv0/brick1",
        ),
        (
            "n2".into(),
            Site::A,
            Ipv4Addr::new(10, 0, 0, 2),
            "gv0:/srv/gluster/gv0/brick1",
        ),
        (
            "n3".into(),
            Site::B,
            Ipv4Addr::new(10, 0, 0, 3),
            "gv1:/srv/gluster/gv1/brick1",
        ),
        (
            "n4".into(),
            Site::B,
            Ipv4Addr::new(10, 0, 0, 4),
            "gv1:/srv/gluster/gv1/brick1",
        ),
    ];
    let hosts: Vec<(String, Site, Ipv4Addr)> = nodes
        .iter()
        .map(|(name, site, ip, _)| (name.clone(), *site, *ip))
        .collect();
    let sites = Sites::create_hosts(&hosts);
    let mut agents = Agents {
        children: Vec::new(),
    };
    for (node, _, ip, brick) in &nodes {
        let script = node_block(&blocks[1], node, *ip, brick);
        let log = dir.join(format!("{node}.log"));
        let file = std::fs::File::create(&log).expect("agent log");
        let err = file.try_clone().expect("agent log");
        // A private /var/lib, /run and /srv (with its brick) for this node; then block 2.
        let child = Command::new("ip")
            .args(["netns", "exec", &sites.host(node).netns])
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-ec",
            ])
            .arg(
                "mount -t tmpfs georep-var-lib /var/lib && mount -t tmpfs georep-run /run \
                 && mount -t tmpfs georep-srv /srv && mkdir -p \"$1\" \
                 && exec sh -exc \"$0\"",
            )
            .arg(&script)
            .arg(brick.split(':').nth(1).unwrap_or_default())
            .current_dir(dir)
            .env("PATH", path_env())
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .process_group(0)
            .spawn()
            .expect("start block 2");
        agents.children.push((node.clone(), child, log));
    }

    // Wait until n1 sees all four nodes live (a user would run `georep nodes` until so).
    let n1 = agents.pid("n1");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = on_node(n1, dir, "georep nodes --json");
        let live = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["nodes"].as_array().cloned())
            .map_or(0, |nodes| {
                nodes
                    .iter()
                    .filter(|n| n["live"].as_bool() == Some(true))
                    .count()
            });
        if live == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "four nodes not live within 60 s: {}\n{}",
            shown(&out),
            agents.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let walk = on_node(n1, dir, &blocks[2]);
    let text = String::from_utf8_lossy(&walk.stdout).into_owned();
    assert!(
        walk.status.success(),
        "block 3 failed: {}\n{}",
        shown(&walk),
        agents.logs()
    );
    for expected in [
        "Creating geo-replication session between gv0 & n3::gv1 has been successful",
        "Starting geo-replication session between gv0 & n3::gv1 has been successful",
        "Setting config sync-jobs = 8 of",
        "desired: Started  converged: 4/4 live nodes",
        "\nn1 ",
        "\nn2 ",
        "Stopping geo-replication session between gv0 & n3::gv1 has been successful",
        "confirmed by: n1, n2, n3, n4 (4/4 live nodes)",
        "Deleting geo-replication session between gv0 & n3::gv1 has been successful",
    ] {
        assert!(
            text.contains(expected),
            "block 3 did not print `{expected}`:\n{text}"
        );
    }
    // Every node has forgotten the session and none runs a monitor.
    for (node, _, _, _) in &nodes {
        let status = on_node(agents.pid(node), dir, "georep status --json");
        let value: serde_json::Value =
            serde_json::from_slice(&status.stdout).unwrap_or(serde_json::Value::Null);
        assert_eq!(
            value["sessions"].as_array().map(Vec::len),
            Some(0),
            "{node} still lists a session: {}",
            shown(&status)
        );
    }
    drop(agents);
    drop(sites);
}
