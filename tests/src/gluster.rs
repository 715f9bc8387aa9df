//! Real Gluster hosts for tests: one glusterd per host of a [`Sites`] network, each in
//! its host's network namespace and a mount namespace of its own.
//!
//! A host's mount namespace is held by an anchor process (`unshare -m` in the host's
//! network namespace, then `sleep`); every process of the host (glusterd, the bricks,
//! FUSE mounts, sshd, `georepd`, gsyncd) runs through `nsenter -t ANCHOR -m -n`. Bound
//! over the machine's paths inside it, from the test's directory: `/var/lib/glusterd`,
//! `/var/log/glusterfs`, `/run` (glusterd's sockets, sshd's privilege separation),
//! `/var/lib/misc` (gsyncd's working files), `/root` (ssh's known_hosts) and
//! `/etc/hosts` (the test's host names: gsyncd reaches a secondary by its node id).
//! Nothing of a host is visible outside it, and nothing outlives the test: dropping a
//! host lazily unmounts its FUSE mounts, kills its anchor and removes the directories
//! gsyncd made in the shared `/tmp` since (a killed gsyncd leaves them); dropping the
//! [`Sites`] kills every process left in the namespaces.
//!
//! Needs root, util-linux, iproute2, and Debian's `glusterfs-server`,
//! `glusterfs-client` and `openssh-server` (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::sites::{GOSSIP_PORT, Site, Sites};
use crate::{Cluster, NodeSpec, Placement, TEST_GOSSIP_MS};

/// Two Gluster hosts with their files in `dir`: primary `a1` (10.213.0.11, site A)
/// and secondary `b1` (10.213.0.21, site B), each knowing the other by name. Dropped
/// in reverse (the hosts before their [`Sites`]).
pub fn primary_and_secondary(dir: &Path) -> (Sites, GlusterHost, GlusterHost) {
    let sites = Sites::create_hosts(&[
        (
            "a1".to_string(),
            Site::A,
            "10.213.0.11".parse().expect("address"),
        ),
        (
            "b1".to_string(),
            Site::B,
            "10.213.0.21".parse().expect("address"),
        ),
    ]);
    let hosts = "127.0.0.1 localhost\n10.213.0.11 a1\n10.213.0.21 b1\n";
    let a1 = GlusterHost::start(&sites, "a1", dir, hosts);
    let b1 = GlusterHost::start(&sites, "b1", dir, hosts);
    (sites, a1, b1)
}

/// One `georepd` in each of `primary` and `secondary`, bricks from glusterd, the
/// primary's sessions running gsyncd.
pub fn start_agents(primary: &GlusterHost, secondary: &GlusterHost) -> Cluster {
    let specs = [
        NodeSpec::new(&primary.name, &[]).with_args(&[
            "--monitor",
            "gsyncd",
            "--bricks-from-glusterd",
        ]),
        NodeSpec::new(&secondary.name, &[]).with_args(&["--bricks-from-glusterd"]),
    ];
    let placements = [primary, secondary]
        .iter()
        .map(|h| Placement {
            addr: std::net::SocketAddr::new(h.ip.into(), GOSSIP_PORT),
            launcher: h.launcher(),
            extra_args: Vec::new(),
        })
        .collect();
    Cluster::start_placed(&specs, None, TEST_GOSSIP_MS, placements)
}

/// The paths each host gets its own copy of (see the module doc).
const PRIVATE: [&str; 5] = [
    "/var/lib/glusterd",
    "/var/log/glusterfs",
    "/run",
    "/var/lib/misc",
    "/root",
];

/// One Gluster host: a mount namespace inside a [`Sites`] host.
pub struct GlusterHost {
    /// The [`Sites`] host name (`a1`, `b1`...), also its node id and host name.
    pub name: String,
    /// Its address.
    pub ip: std::net::Ipv4Addr,
    netns: String,
    /// Its files (bound paths, bricks, mounts) under the test's directory.
    pub dir: PathBuf,
    anchor: Child,
    glusterd: Option<Child>,
    mounts: Vec<PathBuf>,
    started: std::time::SystemTime,
}

impl GlusterHost {
    /// Makes host `name` of `sites` a Gluster host with its files in `dir`/`name`, and
    /// starts its glusterd. `hosts` is the `/etc/hosts` every host gets.
    pub fn start(sites: &Sites, name: &str, dir: &Path, hosts: &str) -> GlusterHost {
        let host = sites.host(name);
        let dir = dir.join(name);
        let mut script = String::from("set -e\n");
        for path in PRIVATE {
            let own = dir.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&own).expect("make a host directory");
            script.push_str(&format!("mount --bind '{}' '{path}'\n", own.display()));
        }
        let hosts_file = dir.join("hosts");
        std::fs::write(&hosts_file, hosts).expect("write the hosts file");
        script.push_str(&format!(
            "mount --bind '{}' /etc/hosts\nmkdir -p /run/sshd /run/gluster\nexec sleep 100000\n",
            hosts_file.display()
        ));
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &host.netns]).args([
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ]);
        let anchor = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the mount namespace anchor");
        let mut this = GlusterHost {
            name: name.to_string(),
            ip: host.ip,
            netns: host.netns.clone(),
            dir,
            anchor,
            glusterd: None,
            mounts: Vec::new(),
            started: std::time::SystemTime::now(),
        };
        // The anchor is ready once its mounts are in place (it then sleeps).
        this.wait_for("the host's private mounts", Duration::from_secs(10), |h| {
            h.sh("test -d /run/sshd && grep -q ' /var/lib/glusterd ' /proc/self/mounts")
                .status
                .success()
        });
        this.start_glusterd(&[]);
        this
    }

    /// Starts glusterd (in the foreground, `-N`) with `env` added to its environment
    /// (its hooks inherit it), and waits until it answers.
    fn start_glusterd(&mut self, env: &[(&str, &str)]) {
        let glusterd = self.launcher();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("glusterd.out"))
            .expect("glusterd log");
        self.glusterd = Some(
            Command::new(&glusterd[0])
                .args(&glusterd[1..])
                .args(["glusterd", "-N"])
                .envs(env.iter().copied())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start glusterd"),
        );
        self.wait_for("glusterd to answer", Duration::from_secs(30), |h| {
            h.run(&["gluster", "--mode=script", "volume", "list"])
                .status
                .success()
        });
    }

    /// Restarts glusterd with `env` added to its environment (bricks and mounts stay).
    pub fn restart_glusterd(&mut self, env: &[(&str, &str)]) {
        if let Some(mut old) = self.glusterd.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        self.start_glusterd(env);
    }

    /// `nsenter -t ANCHOR -m -n`: runs what follows in this host.
    pub fn launcher(&self) -> Vec<String> {
        ["nsenter", "-t", &self.anchor.id().to_string(), "-m", "-n"]
            .iter()
            .map(|w| w.to_string())
            .collect()
    }

    /// Runs `argv` in this host.
    pub fn run(&self, argv: &[&str]) -> Output {
        let launcher = self.launcher();
        Command::new(&launcher[0])
            .args(&launcher[1..])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Runs a shell `script` in this host.
    pub fn sh(&self, script: &str) -> Output {
        self.run(&["sh", "-c", script])
    }

    /// Runs `argv` in this host and panics, with its output, unless it succeeds.
    pub fn must(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert!(
            out.status.success(),
            "{}: `{}` failed ({}): {}{}",
            self.name,
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `path` as this host sees it (through its anchor's root: mounts made inside the
    /// host, like its FUSE mounts, are visible there).
    pub fn path(&self, path: &Path) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.anchor.id()))
            .join(path.strip_prefix("/").unwrap_or(path))
    }

    /// `gluster --mode=script ARGS`, which must succeed.
    pub fn gluster(&self, args: &[&str]) -> String {
        let mut argv = vec!["gluster", "--mode=script"];
        argv.extend_from_slice(args);
        self.must(&argv)
    }

    /// Creates and starts volume `volume` of `bricks` brick directories on this host
    /// (`replica 2` when two), and returns the brick paths.
    pub fn create_volume(
        &self,
        volume: &str,
        bricks: usize,
        options: &[(&str, &str)],
    ) -> Vec<PathBuf> {
        let paths: Vec<PathBuf> = (1..=bricks)
            .map(|k| self.dir.join("bricks").join(format!("{volume}-{k}")))
            .collect();
        let mut args = vec![
            "volume".to_string(),
            "create".to_string(),
            volume.to_string(),
        ];
        if bricks == 2 {
            args.extend(["replica".to_string(), "2".to_string()]);
        }
        for path in &paths {
            std::fs::create_dir_all(path).expect("make a brick directory");
            args.push(format!("{}:{}", self.ip, path.display()));
        }
        args.push("force".to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.gluster(&args);
        for (key, value) in options {
            self.gluster(&["volume", "set", volume, key, value]);
        }
        self.gluster(&["volume", "start", volume]);
        paths
    }

    /// FUSE-mounts `volume` of this host's glusterd at `dir`/mnt-`volume` and returns it.
    pub fn mount(&mut self, volume: &str) -> PathBuf {
        let at = self.dir.join(format!("mnt-{volume}"));
        std::fs::create_dir_all(&at).expect("make a mount point");
        let source = format!("{}:/{volume}", self.ip);
        self.must(&[
            "mount",
            "-t",
            "glusterfs",
            &source,
            &at.display().to_string(),
        ]);
        self.mounts.push(at.clone());
        at
    }

    /// glusterd's UUID for this host.
    pub fn uuid(&self) -> String {
        let info = self.must(&["cat", "/var/lib/glusterd/glusterd.info"]);
        info.lines()
            .find_map(|l| l.strip_prefix("UUID="))
            .expect("UUID= in glusterd.info")
            .to_string()
    }

    /// Starts sshd on port 22 of this host, accepting root's keys from
    /// `authorized_keys`; returns its log file.
    pub fn start_sshd(&self, authorized_keys: &Path) -> PathBuf {
        let dir = self.dir.join("sshd");
        std::fs::create_dir_all(&dir).expect("sshd dir");
        let config = crate::sshd::write_config(&dir, &self.ip.to_string(), 22, authorized_keys);
        let log = dir.join("sshd.log");
        self.must(&[
            "/usr/sbin/sshd",
            "-f",
            &config.display().to_string(),
            "-E",
            &log.display().to_string(),
        ]);
        log
    }

    /// Pids of this host's processes whose command line contains `needle`.
    pub fn processes(&self, needle: &str) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.netns])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                    String::from_utf8_lossy(&raw)
                        .replace('\0', " ")
                        .contains(needle)
                })
            })
            .collect()
    }

    fn wait_for(&mut self, what: &str, within: Duration, mut ready: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !ready(self) {
            if let Ok(Some(status)) = self.anchor.try_wait() {
                panic!(
                    "{}: the mount namespace anchor exited ({status}) before {what}",
                    self.name
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out after {within:?} waiting for {what}; glusterd's output: {}",
                self.name,
                std::fs::read_to_string(self.dir.join("glusterd.out")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for GlusterHost {
    fn drop(&mut self) {
        for at in &self.mounts {
            let _ = self.run(&["umount", "-l", &at.display().to_string()]);
        }
        for child in self.glusterd.iter_mut().chain([&mut self.anchor]) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // gsyncd's ssh control and aux-mount directories in the shared /tmp: removed on
        // a clean exit, left by a gsyncd killed -9 (a failed run's cleanup).
        if let Ok(entries) = std::fs::read_dir("/tmp") {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let ours = name.to_string_lossy().starts_with("gsyncd-aux-")
                    && entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t >= self.started);
                if ours {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}
