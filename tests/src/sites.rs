//! Two sites of hosts on a simulated WAN, each host its own network namespace, for
//! real-process chaos tests.
//!
//! Layout (all of it inside namespaces; nothing is configured on the host):
//!
//! ```text
//!   host ns a1 a2 a3 (10.213.0.11-13)        host ns b1 b2 b3 (10.213.0.21-23)
//!        eth0 |  |  |                              eth0 |  |  |
//!   switch ns: h-a1 h-a2 h-a3 -- br-a == wan-a <-> wan-b == br-b -- h-b1 h-b2 h-b3
//! ```
//!
//! Faults are nftables rules inside the host namespaces (table `inet georep`): a full
//! partition between the sites, a one-way cut, random loss between the sites
//! (`numgen random mod 100 < P`), or isolating one host. Processes are started in a host
//! with [`Sites::launcher`] (`ip netns exec NS`, which execs, so the child's pid is the
//! agent's). Every namespace, and with it every link, address and rule, is deleted on
//! drop, also when the test fails.
//!
//! Latency between the sites comes from `georepd` itself, since this kernel has no
//! `tc netem` and nftables cannot delay: an agent started with the flags of
//! [`Sites::wan_delay_args`] (`--inject-delay ADDR=DELAY[~JITTER]` for each host of the
//! other site; repeatable, ADDR may be a CIDR; testing only) holds every frame it sends
//! across the WAN (gossip, pushes, acks) in its fault-injecting link layer. It is one
//! way per flag, so both sites get it for a round trip; QUIC's own handshake and
//! acknowledgements are not delayed.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables). A missing tool or a namespace that
//! cannot be created fails the test with the command's error; it never skips.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::Placement;

/// The nftables table faults live in.
const TABLE: &str = "georep";
/// The gossip port every agent listens on (each host has its own stack).
pub const GOSSIP_PORT: u16 = 7400;

/// One site: `a` or `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// Hosts `a1..`, 10.213.0.11..
    A,
    /// Hosts `b1..`, 10.213.0.21..
    B,
}

impl Site {
    fn letter(self) -> char {
        match self {
            Site::A => 'a',
            Site::B => 'b',
        }
    }

    fn base(self) -> u8 {
        match self {
            Site::A => 10,
            Site::B => 20,
        }
    }
}

/// One host: a network namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    /// Short name (`a1`), also the node id tests give its agent.
    pub name: String,
    /// The namespace.
    pub netns: String,
    /// Its site.
    pub site: Site,
    /// Its address (only inside the namespaces).
    pub ip: Ipv4Addr,
}

/// The two sites, their switch and the hosts.
#[derive(Debug)]
pub struct Sites {
    switch: String,
    /// Hosts of site a, then of site b.
    pub hosts: Vec<Host>,
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed ({:?}): {}{}\n(network-namespace tests need root, iproute2 and nftables; .ci/run installs them)",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run("ip", args);
}

impl Sites {
    /// Creates `per_site` hosts in each of the two sites and the switch joining them.
    /// Panics, naming the failing command, if anything cannot be created.
    pub fn create(per_site: usize) -> Sites {
        assert!((1..=9).contains(&per_site), "1..=9 hosts per site");
        let mut hosts = Vec::new();
        for site in [Site::A, Site::B] {
            for k in 1..=per_site {
                hosts.push((
                    format!("{}{k}", site.letter()),
                    site,
                    Ipv4Addr::new(10, 213, 0, site.base() + k as u8),
                ));
            }
        }
        Self::create_hosts(&hosts)
    }

    /// Creates the given hosts (name, site, address; all addresses in one /24) and the
    /// switch joining them. Panics, naming the failing command, if anything cannot be
    /// created.
    pub fn create_hosts(hosts: &[(String, Site, Ipv4Addr)]) -> Sites {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        crate::loopback_ns::require_tools();
        let tag = format!(
            "grs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut sites = Sites {
            switch: format!("{tag}-sw"),
            hosts: Vec::new(),
        };
        for (name, site, ip) in hosts {
            sites.hosts.push(Host {
                netns: format!("{tag}-{name}"),
                ip: *ip,
                name: name.clone(),
                site: *site,
            });
        }
        // Leftovers of a killed run with a recycled pid.
        for ns in sites.namespaces() {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
        // From here on, Drop removes whatever was made, also if a later step panics.
        ip(&["netns", "add", &sites.switch]);
        let sw = sites.switch.clone();
        ip(&["-n", &sw, "link", "set", "lo", "up"]);
        for bridge in ["br-a", "br-b"] {
            ip(&["-n", &sw, "link", "add", bridge, "type", "bridge"]);
            ip(&["-n", &sw, "link", "set", bridge, "up"]);
        }
        ip(&[
            "-n", &sw, "link", "add", "wan-a", "type", "veth", "peer", "name", "wan-b",
        ]);
        ip(&["-n", &sw, "link", "set", "wan-a", "master", "br-a", "up"]);
        ip(&["-n", &sw, "link", "set", "wan-b", "master", "br-b", "up"]);
        for host in sites.hosts.clone() {
            ip(&["netns", "add", &host.netns]);
            let port = format!("h-{}", host.name);
            let bridge = format!("br-{}", host.site.letter());
            ip(&[
                "-n",
                &sw,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.netns,
            ]);
            ip(&["-n", &sw, "link", "set", &port, "master", &bridge, "up"]);
            ip(&["-n", &host.netns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &host.netns,
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &host.netns, "link", "set", "eth0", "up"]);
        }
        sites
    }

    fn namespaces(&self) -> Vec<String> {
        let mut all: Vec<String> = self.hosts.iter().map(|h| h.netns.clone()).collect();
        all.push(self.switch.clone());
        all
    }

    /// The host named `name` (`a1`, `b3`...).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// `ip netns exec NS` for a host.
    pub fn launcher(&self, name: &str) -> Vec<String> {
        ["ip", "netns", "exec", &self.host(name).netns]
            .iter()
            .map(|w| w.to_string())
            .collect()
    }

    /// Where an agent on host `name` runs: its address and launcher.
    pub fn placement(&self, name: &str) -> Placement {
        self.placement_with(name, Vec::new())
    }

    /// [`Sites::placement`], the agent started with `extra_args` added to its flags.
    pub fn placement_with(&self, name: &str, extra_args: Vec<String>) -> Placement {
        Placement {
            addr: SocketAddr::new(IpAddr::V4(self.host(name).ip), GOSSIP_PORT),
            launcher: self.launcher(name),
            extra_args,
        }
    }

    /// `georepd` flags making host `name`'s agent delay every frame it sends to the other
    /// site by `delay` plus a random `0..jitter` (see the module docs).
    pub fn wan_delay_args(&self, name: &str, delay: Duration, jitter: Duration) -> Vec<String> {
        let other = Self::other(self.host(name).site);
        self.hosts
            .iter()
            .filter(|h| h.site == other)
            .flat_map(|h| {
                [
                    "--inject-delay".to_string(),
                    format!("{}={}us~{}us", h.ip, delay.as_micros(), jitter.as_micros()),
                ]
            })
            .collect()
    }

    fn ips_of(&self, site: Site) -> String {
        let ips: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.site == site)
            .map(|h| h.ip.to_string())
            .collect();
        format!("{{ {} }}", ips.join(", "))
    }

    fn other(site: Site) -> Site {
        match site {
            Site::A => Site::B,
            Site::B => Site::A,
        }
    }

    /// Loads `rules` (lines for an `output` and an `input` chain) into a host, replacing
    /// its previous faults.
    fn load(&self, host: &Host, output: &[String], input: &[String]) {
        self.clear(host);
        let chain = |name: &str, hook: &str, rules: &[String]| {
            let mut text = format!(
                "    chain {name} {{\n        type filter hook {hook} priority 0; policy accept;\n"
            );
            for rule in rules {
                text.push_str(&format!("        {rule}\n"));
            }
            text.push_str("    }\n");
            text
        };
        let script = format!(
            "table inet {TABLE} {{\n{}{}}}\n",
            chain("output", "output", output),
            chain("input", "input", input)
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &host.netns, "nft", "-f", "-"])
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
            "nft -f in {} failed ({:?}): {}\nscript:\n{script}",
            host.netns,
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn clear(&self, host: &Host) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &host.netns,
                "nft",
                "delete",
                "table",
                "inet",
                TABLE,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Cuts the WAN both ways: nothing passes between the sites.
    pub fn partition(&self) {
        for host in &self.hosts {
            let other = self.ips_of(Self::other(host.site));
            self.load(
                host,
                &[format!("ip daddr {other} drop")],
                &[format!("ip saddr {other} drop")],
            );
        }
    }

    /// Cuts `from -> to` only; the other direction passes.
    pub fn cut_one_way(&self, from: Site) {
        let to = Self::other(from);
        for host in &self.hosts {
            if host.site == from {
                self.load(host, &[format!("ip daddr {} drop", self.ips_of(to))], &[]);
            } else {
                self.load(host, &[], &[format!("ip saddr {} drop", self.ips_of(from))]);
            }
        }
    }

    /// Drops `percent` % of the packets each host sends to the other site, at random.
    pub fn wan_loss(&self, percent: u8) {
        for host in &self.hosts {
            let other = self.ips_of(Self::other(host.site));
            self.load(
                host,
                &[format!(
                    "ip daddr {other} numgen random mod 100 < {percent} drop"
                )],
                &[],
            );
        }
    }

    /// Cuts one host off from every other host, both ways.
    pub fn isolate(&self, name: &str) {
        let host = self.host(name).clone();
        let others: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.name != name)
            .map(|h| h.ip.to_string())
            .collect();
        let set = format!("{{ {} }}", others.join(", "));
        self.load(
            &host,
            &[format!("ip daddr {set} drop")],
            &[format!("ip saddr {set} drop")],
        );
    }

    /// Removes every fault.
    pub fn heal(&self) {
        for host in &self.hosts {
            self.clear(host);
        }
    }

    /// The rules currently loaded in a host (empty when healed).
    pub fn rules(&self, name: &str) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.host(name).netns,
                "nft",
                "list",
                "ruleset",
            ])
            .output()
            .expect("run nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether every namespace of these sites is gone (after drop).
    pub fn all_gone(names: &[String]) -> bool {
        let out = Command::new("ip").args(["netns", "list"]).output();
        out.is_ok_and(|o| {
            let listed = String::from_utf8_lossy(&o.stdout).into_owned();
            names.iter().all(|n| {
                !listed
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(n))
            })
        })
    }

    /// Names of every namespace (hosts and switch).
    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces()
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        // Whatever still runs inside (an agent, a monitor in a session of its own) goes
        // first: deleting a namespace's name does not stop its processes.
        for ns in self.namespaces() {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        // Deleting a namespace deletes its links (a veth's peer goes with it) and rules.
        for ns in self.namespaces() {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}
