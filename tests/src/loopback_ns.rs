//! A private network namespace with only loopback up, so a test cluster can be
//! partitioned with nftables without touching the host's firewall.
//!
//! Agents run inside it through [`LoopbackNs::launcher`] (`ip netns exec NS`, which
//! execs the agent, so the child's pid is the agent's); the CLI needs no namespace: it
//! talks to agents over their Unix sockets. The namespace (and with it every rule) is
//! deleted on drop, also when the test fails. Needs root, `ip` (iproute2) and `nft`
//! (nftables): a missing tool fails the test, never skips it.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The nftables table partitions live in.
const TABLE: &str = "georep";

/// A network namespace `georep-test-<pid>-<n>` with `lo` up.
#[derive(Debug)]
pub struct LoopbackNs {
    name: String,
}

/// Panics unless `ip` and `nft` can run, saying how to get them.
pub fn require_tools() {
    for (tool, flag, package) in [("ip", "-V", "iproute2"), ("nft", "-v", "nftables")] {
        let found = Command::new(tool)
            .arg(flag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "`{tool}` is not installed: network-namespace tests need iproute2 and nftables \
             (.ci/run installs iproute2 and nftables; or `apt-get install {package}`)"
        );
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl LoopbackNs {
    /// Creates the namespace and brings its loopback up (panics, naming the step, if
    /// that fails: the tests run as root).
    pub fn create() -> LoopbackNs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        require_tools();
        let name = format!(
            "georep-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // A leftover of a killed run with a recycled pid.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = LoopbackNs { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The words to put before a command to run it inside: `ip netns exec NS`.
    pub fn launcher(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .iter()
            .map(|w| w.to_string())
            .collect()
    }

    /// Runs `PROGRAM ARGS...` inside the namespace; panics if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Drops every UDP datagram between any port of `side_a` and any port of `side_b`,
    /// both ways (QUIC uses each agent's gossip port as source and destination), in one
    /// atomic nftables transaction. Replaces an earlier partition.
    pub fn partition(&self, side_a: &[u16], side_b: &[u16]) {
        self.heal();
        let mut rules = String::new();
        for a in side_a {
            for b in side_b {
                rules.push_str(&format!("        udp sport {a} udp dport {b} drop\n"));
                rules.push_str(&format!("        udp sport {b} udp dport {a} drop\n"));
            }
        }
        let script = format!(
            "table inet {TABLE} {{\n    chain input {{\n        type filter hook input priority 0; policy accept;\n{rules}    }}\n}}\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft");
        child
            .stdin
            .take()
            .expect("nft stdin")
            .write_all(script.as_bytes())
            .expect("write nft script");
        let out = child.wait_with_output().expect("nft exit");
        assert!(
            out.status.success(),
            "nft -f failed ({:?}): {}\nscript:\n{script}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The partition's rules as nftables lists them (empty when healed).
    pub fn ruleset(&self) -> String {
        String::from_utf8_lossy(&self.exec("nft", &["list", "ruleset"]).stdout).into_owned()
    }

    /// Removes the partition (deletes the table); a no-op when there is none.
    pub fn heal(&self) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "nft", "delete", "table", "inet", TABLE,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for LoopbackNs {
    fn drop(&mut self) {
        // Processes still inside keep the namespace alive only until they die; the name
        // goes now, so nothing accumulates across runs.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}
