//! Chaos over a real network: two sites of three hosts, each host its own network
//! namespace running a real `georepd` (real QUIC, real monitor processes and
//! signals), with nftables faults between the sites, added WAN latency (the agents'
//! `--inject-delay`: this kernel has no `tc netem`), kill -9, SIGSTOP/SIGCONT and
//! restarts. Runs as root; fails (never skips) when namespaces cannot be created.
//!
//! Layout: a1, b1, a2 host bricks of the primary volume gv0 (replica sets 0, 1, 0);
//! b2, a3, b3 host the secondary volume gv1. The session is `gv0 -> b2::gv1`.

use std::time::{Duration, Instant};

use georep_tests::sites::Sites;
use georep_tests::{Cluster, NodeSpec, TEST_MONITOR, frozen, processes_matching};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const SECONDARY: &str = "b2::gv1";
const NAMES: [&str; 6] = ["a1", "b1", "a2", "b2", "a3", "b3"];
const PRIMARIES: [usize; 3] = [0, 1, 2];
const GOSSIP_MS: u64 = 100;

/// The agents first (their Drop kills them and their monitors), then the namespaces.
struct TwoSites {
    cluster: Cluster,
    sites: Sites,
}

/// Added one-way latency between the sites: a fixed delay and a random extra.
#[derive(Debug, Clone, Copy)]
struct WanDelay {
    delay: Duration,
    jitter: Duration,
}

impl TwoSites {
    fn start() -> TwoSites {
        Self::start_with(None)
    }

    /// Every agent delays what it sends to the other site by `wan_delay`, when given.
    fn start_with(wan_delay: Option<WanDelay>) -> TwoSites {
        let sites = Sites::create(3);
        let specs: Vec<NodeSpec> = NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let brick = match i {
                    0 | 2 => format!("gv0:/bricks/{name}/gv0:0"),
                    1 => format!("gv0:/bricks/{name}/gv0:1"),
                    _ => format!("gv1:/bricks/{name}/gv1"),
                };
                NodeSpec::new(name, &[&brick])
            })
            .collect();
        let placements = NAMES
            .iter()
            .map(|n| match wan_delay {
                Some(w) => sites.placement_with(n, sites.wan_delay_args(n, w.delay, w.jitter)),
                None => sites.placement(n),
            })
            .collect();
        let cluster = Cluster::start_placed(&specs, Some(TEST_MONITOR), GOSSIP_MS, placements);
        let both = TwoSites { cluster, sites };
        for i in 0..NAMES.len() {
            both.cluster
                .wait_live(i, NAMES.len(), Duration::from_secs(60));
        }
        both
    }

    fn georep(&self, i: usize, args: &[&str]) -> std::process::Output {
        self.cluster.georep(i, args)
    }

    /// `georep --json ARGS...` on node i, with its exit code.
    fn json(&self, i: usize, args: &[&str]) -> (Option<i32>, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.georep(i, &all);
        let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "georep {all:?} on {} printed no JSON ({e}): {}{}",
                NAMES[i],
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), value)
    }

    /// Runs a mutating command that must be applied (exit 0, or 4: applied but not
    /// confirmed everywhere) and returns its JSON.
    fn apply(&self, i: usize, args: &[&str]) -> Value {
        let (code, value) = self.json(i, args);
        assert!(
            matches!(code, Some(0) | Some(4)),
            "georep {args:?} on {} exited {code:?}: {value}\n{}",
            NAMES[i],
            self.cluster.logs_tail()
        );
        value
    }

    /// The session as node i sees it (None when it does not exist there).
    fn session(&self, i: usize) -> Option<Value> {
        let out = self.georep(i, &["--json", "status"]);
        let value: Value = serde_json::from_slice(&out.stdout).ok()?;
        value["sessions"].as_array()?.first().cloned()
    }

    fn desired(&self, i: usize) -> Option<String> {
        self.session(i)
            .and_then(|s| s["desired_state"].as_str().map(str::to_string))
    }

    fn config(&self, i: usize, key: &str) -> Option<String> {
        self.session(i)
            .and_then(|s| s["config"][key].as_str().map(str::to_string))
    }

    /// Pids of node i's monitors.
    fn monitors(&self, i: usize) -> Vec<u32> {
        let needle = format!(
            "georep-test-monitor {}",
            self.cluster.nodes[i].data().sessions_root().display()
        );
        processes_matching(&needle)
    }

    fn frozen(&self, i: usize) -> Vec<bool> {
        self.monitors(i).into_iter().map(frozen).collect()
    }

    fn wait(&self, within: Duration, what: &str, check: impl FnMut() -> bool) {
        self.cluster.wait_until(within, what, check);
    }

    /// Waits until every node in `nodes` shows `state` and the monitors follow:
    /// exactly one on each primary (frozen iff Paused), none elsewhere.
    fn wait_state_everywhere(&self, nodes: &[usize], state: &str, within: Duration) {
        self.wait(
            within,
            &format!("{state} on {nodes:?} with monitors following"),
            || {
                nodes
                    .iter()
                    .all(|i| self.desired(*i).as_deref() == Some(state))
                    && nodes.iter().all(|i| {
                        let frozen = self.frozen(*i);
                        match (PRIMARIES.contains(i), state) {
                            (true, "Started") => frozen == [false],
                            (true, "Paused") => frozen == [true],
                            _ => frozen.is_empty(),
                        }
                    })
            },
        );
    }

    /// Like [`Self::wait_state_everywhere`] for Paused, but a primary may also have no
    /// monitor: one that was stopping for a restart (a restart-requiring config change)
    /// when the pause arrived is not started again until the resume (DESIGN: gluster
    /// pauses only a running monitor). Never a running one.
    fn wait_paused_everywhere(&self, within: Duration) {
        self.wait(within, "Paused everywhere, no monitor running", || {
            ALL.iter()
                .all(|i| self.desired(*i).as_deref() == Some("Paused"))
                && ALL.iter().all(|i| {
                    let frozen = self.frozen(*i);
                    if PRIMARIES.contains(i) {
                        frozen == [true] || frozen.is_empty()
                    } else {
                        frozen.is_empty()
                    }
                })
        });
    }

    fn create_and_start(&self) {
        self.apply(0, &["create", "gv0", SECONDARY]);
        self.apply(3, &["start", "gv0", SECONDARY]);
        self.wait_state_everywhere(&[0, 1, 2, 3, 4, 5], "Started", Duration::from_secs(30));
    }

    fn names(list: &Value) -> Vec<String> {
        list.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).expect("signal the agent");
}

const ALL: [usize; 6] = [0, 1, 2, 3, 4, 5];
const SITE_A: [usize; 3] = [0, 2, 4];
const SITE_B: [usize; 3] = [1, 3, 5];

#[test]
fn namespaces_are_removed_when_the_sites_go() {
    let sites = Sites::create(2);
    let names = sites.namespace_names();
    assert!(!Sites::all_gone(&names), "created namespaces are listed");
    sites.partition();
    assert!(sites.rules("a1").contains("drop"), "{}", sites.rules("a1"));
    sites.heal();
    assert!(!sites.rules("a1").contains("drop"));
    drop(sites);
    assert!(Sites::all_gone(&names), "namespaces left behind");
}

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    let names = std::sync::Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(|| {
        let sites = Sites::create(1);
        sites.wan_loss(50);
        *names.lock().unwrap() = sites.namespace_names();
        panic!("a failing test");
    });
    assert!(outcome.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 3);
    assert!(Sites::all_gone(&names), "namespaces left behind: {names:?}");
}

#[test]
fn partition_between_sites_heals_to_the_lww_outcome_and_monitors_follow() {
    let t = TwoSites::start();
    t.create_and_start();
    t.sites.partition();
    // Each side acts on its own view; the later stamp must win everywhere.
    t.apply(2, &["stop", "gv0", SECONDARY, "--no-wait"]);
    t.wait_state_everywhere(&SITE_A, "Stopped", Duration::from_secs(20));
    t.apply(5, &["pause", "gv0", SECONDARY, "--no-wait"]);
    t.wait_state_everywhere(&SITE_B, "Paused", Duration::from_secs(20));
    t.apply(
        5,
        &["config", "gv0", SECONDARY, "sync-jobs", "7", "--no-wait"],
    );
    std::thread::sleep(Duration::from_millis(50));
    t.apply(0, &["start", "gv0", SECONDARY, "--no-wait"]);
    t.apply(
        4,
        &["config", "gv0", SECONDARY, "sync-jobs", "9", "--no-wait"],
    );
    t.wait_state_everywhere(&SITE_A, "Started", Duration::from_secs(20));
    // The partition holds: site b still sees its own writes only.
    std::thread::sleep(Duration::from_secs(2));
    for i in SITE_B {
        assert_eq!(
            t.desired(i).as_deref(),
            Some("Paused"),
            "{} during the partition",
            NAMES[i]
        );
        assert_eq!(t.config(i, "sync-jobs").as_deref(), Some("7"));
    }
    let b1_before = t.monitors(1);
    t.sites.heal();
    t.wait_state_everywhere(&ALL, "Started", Duration::from_secs(60));
    t.wait(Duration::from_secs(30), "sync-jobs 9 everywhere", || {
        ALL.iter()
            .all(|i| t.config(*i, "sync-jobs").as_deref() == Some("9"))
    });
    // b1's frozen monitor was started for the old configuration: it is replaced.
    t.wait(
        Duration::from_secs(30),
        "b1's monitor restarted for sync-jobs",
        || {
            let now = t.monitors(1);
            now.len() == 1 && now != b1_before
        },
    );
}

#[test]
fn one_way_cut_then_lossy_wan_still_converges() {
    let t = TwoSites::start();
    t.create_and_start();
    t.sites.cut_one_way(georep_tests::sites::Site::A);
    t.apply(0, &["pause", "gv0", SECONDARY, "--no-wait"]);
    t.apply(
        5,
        &["config", "gv0", SECONDARY, "sync-jobs", "5", "--no-wait"],
    );
    // b -> a passes: site a learns the config; a -> b is cut: site b keeps Started.
    t.wait(Duration::from_secs(20), "site a has b3's config", || {
        SITE_A
            .iter()
            .all(|i| t.config(*i, "sync-jobs").as_deref() == Some("5"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(t.desired(5).as_deref(), Some("Started"), "a -> b is cut");
    // 30 % random loss between the sites instead: anti-entropy gets through.
    t.sites.wan_loss(30);
    assert!(
        t.sites.rules("b1").contains("numgen random mod 100"),
        "{}",
        t.sites.rules("b1")
    );
    t.apply(
        3,
        &[
            "config",
            "gv0",
            SECONDARY,
            "log-level",
            "DEBUG",
            "--no-wait",
        ],
    );
    // The log-level change restarts site b's monitor while the pause is on its way
    // there: whichever lands first decides whether it is frozen or waits for the resume.
    t.wait_paused_everywhere(Duration::from_secs(60));
    t.wait(
        Duration::from_secs(60),
        "configs everywhere over the lossy WAN",
        || {
            ALL.iter().all(|i| {
                t.config(*i, "sync-jobs").as_deref() == Some("5")
                    && t.config(*i, "log-level").as_deref() == Some("DEBUG")
            })
        },
    );
    t.sites.heal();
    t.apply(4, &["resume", "gv0", SECONDARY]);
    t.wait_state_everywhere(&ALL, "Started", Duration::from_secs(30));
}

#[test]
fn writer_killed_right_after_the_local_apply() {
    let mut t = TwoSites::start();
    t.create_and_start();
    let others: Vec<usize> = ALL.iter().copied().filter(|i| *i != 4).collect();

    // 1. Healthy network: a3 applies, answers, and dies at once.
    let (code, answer) = t.json(4, &["stop", "gv0", SECONDARY, "--no-wait"]);
    t.cluster.kill9(4);
    assert_eq!(code, Some(0), "{answer}");
    assert_eq!(answer["waited"], false, "{answer}");
    assert_eq!(
        answer["converged"], false,
        "--no-wait never claims convergence: {answer}"
    );
    let confirmed = TwoSites::names(&answer["confirmed_nodes"]);
    assert!(
        confirmed.contains(&"a3".to_string()),
        "the writer applied it: {answer}"
    );
    // Whoever the answer named as confirmed holds it (replicas only grow).
    for name in &confirmed {
        let i = NAMES.iter().position(|n| n == name).expect("known node");
        if i != 4 {
            assert_eq!(
                t.desired(i).as_deref(),
                Some("Stopped"),
                "{name} was said to confirm"
            );
        }
    }
    // The push left before the answer: the stop reaches every live node without a3.
    std::thread::sleep(Duration::from_secs(1));
    let reached: Vec<usize> = others
        .iter()
        .copied()
        .filter(|i| t.desired(*i).as_deref() == Some("Stopped"))
        .collect();
    assert!(!reached.is_empty(), "the eager push reached nobody");
    t.wait_state_everywhere(&others, "Stopped", Duration::from_secs(30));

    // 2. a3 cut off first: nothing can leave it; the answer must not claim otherwise.
    t.cluster.restart(4);
    t.wait(Duration::from_secs(30), "a3 back", || {
        t.desired(4).as_deref() == Some("Stopped")
    });
    t.cluster.wait_live(4, 6, Duration::from_secs(30));
    t.sites.isolate("a3");
    let (code, answer) = t.json(4, &["--timeout", "2", "start", "gv0", SECONDARY]);
    // Only a3 may be named as confirmed; every other node is lagging (still thought
    // live) or dead (its failure detector already gave up), and the answer is
    // "converged" only if nobody is lagging: exit 4 otherwise.
    assert_eq!(
        TwoSites::names(&answer["confirmed_nodes"]),
        vec!["a3".to_string()],
        "{answer}"
    );
    let lagging = TwoSites::names(&answer["lagging_nodes"]);
    let dead = TwoSites::names(&answer["dead_nodes"]);
    assert_eq!(
        lagging.len() + dead.len(),
        5,
        "every other node is lagging or dead: {answer}"
    );
    assert_eq!(answer["converged"], lagging.is_empty(), "{answer}");
    assert_eq!(
        code,
        Some(if lagging.is_empty() { 0 } else { 4 }),
        "{answer}"
    );
    t.cluster.kill9(4);
    std::thread::sleep(Duration::from_secs(2));
    for i in &others {
        assert_eq!(
            t.desired(*i).as_deref(),
            Some("Stopped"),
            "{} cannot have it",
            NAMES[*i]
        );
    }
    // Its disk kept the write: after the heal and a restart it reaches everyone.
    t.sites.heal();
    t.cluster.restart(4);
    t.wait_state_everywhere(&ALL, "Started", Duration::from_secs(60));
}

#[test]
fn a_sigstopped_agent_is_declared_dead_and_recovers_without_restart() {
    let t = TwoSites::start();
    t.create_and_start();
    let pid = t.cluster.nodes[1].pid().expect("b1 runs");
    let generation = |from: usize| -> Option<u64> {
        let (_, nodes) = t.json(from, &["nodes"]);
        nodes["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node"] == "b1")
            .and_then(|n| n["generation"].as_u64())
    };
    let live = |from: usize| -> Option<bool> {
        let (_, nodes) = t.json(from, &["nodes"]);
        nodes["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node"] == "b1")
            .and_then(|n| n["live"].as_bool())
    };
    let before = generation(0).expect("a1 knows b1");
    let monitor = t.monitors(1);
    assert_eq!(monitor.len(), 1);

    signal(pid, Signal::SIGSTOP);
    let stopped_at = Instant::now();
    t.wait(
        Duration::from_secs(30),
        "b1 declared dead by every other node",
        || [0, 2, 3, 4, 5].iter().all(|i| live(*i) == Some(false)),
    );
    let workers = t.session(0).expect("session on a1")["workers"].clone();
    assert!(
        workers.as_array().is_some_and(|w| w
            .iter()
            .any(|r| r["node"] == "b1" && r["status"] == "Offline")),
        "b1's worker shows Offline: {workers}"
    );
    t.apply(
        0,
        &["config", "gv0", SECONDARY, "sync-jobs", "11", "--no-wait"],
    );
    if let Some(rest) = Duration::from_secs(30).checked_sub(stopped_at.elapsed()) {
        std::thread::sleep(rest);
    }
    // The frozen agent did not kill its monitor: it keeps running meanwhile.
    assert_eq!(t.monitors(1), monitor);
    signal(pid, Signal::SIGCONT);

    t.wait(Duration::from_secs(30), "b1 live again everywhere", || {
        ALL.iter().all(|i| live(*i) == Some(true))
    });
    assert_eq!(t.cluster.nodes[1].pid(), Some(pid), "the same process");
    assert_eq!(generation(0), Some(before), "no restart: same generation");
    t.wait(
        Duration::from_secs(30),
        "b1 caught up and restarted its monitor",
        || {
            t.config(1, "sync-jobs").as_deref() == Some("11") && {
                let now = t.monitors(1);
                now.len() == 1 && now != monitor
            }
        },
    );
    t.wait_state_everywhere(&ALL, "Started", Duration::from_secs(30));
}

#[test]
fn wan_latency_slows_every_confirmed_write_yet_both_sites_converge() {
    let wan = WanDelay {
        delay: Duration::from_millis(100),
        jitter: Duration::from_millis(20),
    };
    let t = TwoSites::start_with(Some(wan));
    for node in &t.cluster.nodes {
        let log = std::fs::read_to_string(node.data_dir.join("georepd.log")).unwrap_or_default();
        assert!(
            log.contains("fault injection active"),
            "{} does not say it injects faults:\n{}",
            node.id,
            t.cluster.logs_tail()
        );
    }
    // Commands from both sites; every wait succeeds and the monitors follow.
    t.create_and_start();

    // A confirmed write crosses the WAN twice: the push from the writer's site, then
    // the answer back (an ack, or gossip showing the write) from the other. Both legs
    // are held at least `delay` by the senders' links, so no confirmed write can be
    // faster than 2 x delay, however idle the machine. Without the delay it takes
    // milliseconds, so the fastest of several cannot get there even on a loaded one.
    // No upper bound: the machine is shared.
    let writers = [0, 5, 2, 3, 4, 1];
    let mut fastest = Duration::MAX;
    for (k, i) in writers.into_iter().enumerate() {
        let jobs = (k + 2).to_string();
        let started = Instant::now();
        let (code, answer) = t.json(i, &["config", "gv0", SECONDARY, "sync-jobs", &jobs]);
        let took = started.elapsed();
        assert_eq!(
            code,
            Some(0),
            "config on {} not confirmed: {answer}\n{}",
            NAMES[i],
            t.cluster.logs_tail()
        );
        assert_eq!(answer["converged"], true, "{answer}");
        assert_eq!(
            TwoSites::names(&answer["confirmed_nodes"]).len(),
            NAMES.len(),
            "{answer}"
        );
        fastest = fastest.min(took);
    }
    assert!(
        fastest >= 2 * wan.delay,
        "the fastest confirmed write took {fastest:?}, less than a WAN round trip of {:?}: \
         the delay is not applied",
        2 * wan.delay
    );
    let last = (writers.len() + 1).to_string();
    t.wait(
        Duration::from_secs(30),
        "the last sync-jobs everywhere",
        || {
            ALL.iter()
                .all(|i| t.config(*i, "sync-jobs").as_deref() == Some(last.as_str()))
        },
    );

    // Pause from site b, resume from site a: monitors freeze and thaw on both sides.
    let paused = t.apply(3, &["pause", "gv0", SECONDARY]);
    assert_eq!(paused["converged"], true, "{paused}");
    t.wait_state_everywhere(&ALL, "Paused", Duration::from_secs(30));
    let resumed = t.apply(0, &["resume", "gv0", SECONDARY]);
    assert_eq!(resumed["converged"], true, "{resumed}");
    t.wait_state_everywhere(&ALL, "Started", Duration::from_secs(30));
    // A steady delay is not a failure: every node sees all six live.
    for i in ALL {
        t.cluster.wait_live(i, NAMES.len(), Duration::from_secs(30));
    }
}
