//! Runs a plan against a simulated cluster: one seed, a batch of seeds, or one seed
//! twice to compare traces.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use georep_agent::SupervisePolicy;
use georep_mesh::{DesiredState, Replica, SessionId};
use tokio::time::Instant;

use crate::backend::{Bug, LiveMonitor};
use crate::checks::{self, Violation};
use crate::cluster::{ClusterSpec, SimCluster, lock};
use crate::ledger::reflects;
use crate::metrics::{Percentiles, TrafficPoint};
use crate::report::{
    BatchReport, DeterminismReport, FaultCounts, OpCounts, PartComparison, RunReport, Trace,
    ViolationReport,
};
use crate::scenario::{Action, Layout, RandomWorkload, Scenario, random_scenario};

/// Sampling period while a recent write is not yet everywhere.
const FINE_SAMPLE: Duration = Duration::from_millis(50);
/// Sampling period otherwise.
const COARSE_SAMPLE: Duration = Duration::from_millis(500);
/// A pending write older than this is sampled coarsely.
const FINE_WINDOW_MS: u64 = 5_000;
/// Period of the traffic series.
const TRAFFIC_PERIOD: Duration = Duration::from_secs(1);
/// Poll period while waiting for the quiet-time invariants, at most 100 nodes; it
/// grows with N beyond (2 s at 1000 nodes), as each poll costs O(N^2).
const SETTLE_POLL: Duration = Duration::from_millis(250);
/// Wall time without virtual progress after which a run is declared stalled (a task
/// that never yields to the timer, i.e. a busy loop in the agent).
const STALL_WALL: Duration = Duration::from_secs(120);

/// Progress shared with the stall watchdog thread.
#[derive(Default)]
struct Watch {
    virtual_ms: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicBool,
    schedule: std::sync::Mutex<Vec<String>>,
}

impl Watch {
    fn beat(&self, ms: u64) {
        self.virtual_ms
            .store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    fn log(&self, line: &str) {
        self.schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line.to_string());
    }
}

/// Declares a run stalled when virtual time stops moving: under paused time that means
/// some task is always ready (a busy loop), which would burn a CPU forever in
/// production. Prints the seed and the schedule so far and exits the process.
fn watchdog(watch: std::sync::Arc<Watch>, seed: u64, scenario: String) {
    std::thread::spawn(move || {
        let stall = std::env::var("GEOREP_SIM_STALL_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(STALL_WALL, Duration::from_secs);
        let mut last = (u64::MAX, std::time::Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(500));
            if watch.done.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let now = watch.virtual_ms.load(std::sync::atomic::Ordering::SeqCst);
            if now != last.0 {
                last = (now, std::time::Instant::now());
                continue;
            }
            if last.1.elapsed() >= stall {
                let schedule = watch
                    .schedule
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                eprintln!(
                    "\nVIOLATION (seed {seed}, scenario {scenario}) at t={:.3}s: virtual time stalled\n  no progress for {:?} of wall time: a task never yields to the timer (busy loop)\nschedule so far:",
                    now as f64 / 1000.0,
                    stall
                );
                for line in schedule {
                    eprintln!("  {line}");
                }
                std::process::exit(3);
            }
        }
    });
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Nodes (random mode, and scenarios that do not say).
    pub nodes: usize,
    /// Sessions (random mode).
    pub sessions: usize,
    /// Virtual duration (random mode).
    pub duration: Duration,
    /// A scripted scenario instead of the random workload.
    pub scenario: Option<Scenario>,
    /// Gossip interval of every agent.
    pub gossip_interval: Duration,
    /// After a heal, the invariants must hold within this much virtual time.
    pub quiet: Duration,
    /// Commands per virtual second (random mode).
    pub command_rate: f64,
    /// Faults per virtual second (random mode).
    pub fault_rate: f64,
    /// A deliberate defect (tests of the checker).
    pub bug: Option<Bug>,
    /// Print each step to stderr as it runs.
    pub verbose: bool,
    /// Where the scenario was loaded from (for the re-run command line).
    pub scenario_path: Option<std::path::PathBuf>,
    /// Record every delivered frame in the trace (for determinism checks).
    pub record_frames: bool,
    /// Called first thing on each run's own thread with the run's seed: the binary
    /// seeds the thread's entropy there (hash keys, chitchat's RNG).
    pub on_run_thread: Option<fn(u64)>,
}

impl SimOptions {
    /// Random mode defaults for `nodes` nodes over `duration`.
    pub fn random(nodes: usize, duration: Duration) -> Self {
        Self {
            nodes,
            sessions: 3,
            duration,
            scenario: None,
            gossip_interval: Duration::from_secs(1),
            quiet: Duration::from_secs(30),
            command_rate: 1.0,
            fault_rate: 0.15,
            bug: None,
            verbose: false,
            scenario_path: None,
            record_frames: false,
            on_run_thread: None,
        }
    }

    /// The `georep-sim` arguments that run `seed` alone with these options (those that
    /// differ from the defaults). A scenario given without its path shows as `FILE`.
    pub fn rerun_args(&self, seed: u64) -> Vec<String> {
        let defaults = Self::random(10, Duration::from_secs(90));
        let mut args = vec!["--seed".to_string(), seed.to_string()];
        let mut flag = |name: &str, value: String| {
            args.push(format!("--{name}"));
            args.push(value);
        };
        if let Some(scenario) = &self.scenario {
            let path = self.scenario_path.as_ref().map_or_else(
                || format!("FILE (of scenario `{}`)", scenario.name),
                |p| p.display().to_string(),
            );
            flag("scenario", path);
            flag("nodes", self.nodes.to_string());
        } else {
            flag("nodes", self.nodes.to_string());
            flag("duration", format!("{}ms", self.duration.as_millis()));
            if self.sessions != defaults.sessions {
                flag("sessions", self.sessions.to_string());
            }
            if self.command_rate != defaults.command_rate {
                flag("command-rate", self.command_rate.to_string());
            }
            if self.fault_rate != defaults.fault_rate {
                flag("fault-rate", self.fault_rate.to_string());
            }
        }
        if self.gossip_interval != defaults.gossip_interval {
            flag(
                "gossip-interval",
                format!("{}ms", self.gossip_interval.as_millis()),
            );
        }
        if self.quiet != defaults.quiet {
            flag("quiet", format!("{}ms", self.quiet.as_millis()));
        }
        args
    }

    /// [`SimOptions::rerun_args`] as one line to paste after `georep-sim`.
    pub fn rerun_flags(&self, seed: u64) -> String {
        shell_words::join(self.rerun_args(seed))
    }

    /// The plan for one seed.
    pub fn plan(&self, seed: u64) -> Scenario {
        match &self.scenario {
            Some(scenario) => Scenario {
                seed,
                ..scenario.clone()
            },
            None => {
                let mut workload =
                    RandomWorkload::new(self.nodes, self.gossip_interval, self.quiet);
                workload.command_rate = self.command_rate;
                workload.fault_rate = self.fault_rate;
                random_scenario(
                    Layout::new(self.nodes, self.sessions),
                    seed,
                    self.duration,
                    &workload,
                )
            }
        }
    }

    /// The supervisor's tunables in simulation: the defaults, with a backoff cap that
    /// fits the quiet window.
    pub fn policy(&self) -> SupervisePolicy {
        SupervisePolicy {
            backoff_cap: (self.quiet / 4).max(Duration::from_secs(2)),
            ..SupervisePolicy::default()
        }
    }
}

/// Runs one seed on its own thread (see [`SimOptions::on_run_thread`]) and its own
/// paused current-thread runtime.
pub fn run_seed(options: &SimOptions, seed: u64) -> anyhow::Result<RunReport> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name(format!("sim-{seed}"))
            .spawn_scoped(scope, || {
                if let Some(install) = options.on_run_thread {
                    install(seed);
                }
                run_seed_here(options, seed)
            })
            .context("cannot start the run's thread")?
            .join()
            .map_err(|_| anyhow::anyhow!("seed {seed}: the run panicked"))?
    })
}

fn run_seed_here(options: &SimOptions, seed: u64) -> anyhow::Result<RunReport> {
    let plan = options.plan(seed);
    let wall = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .context("cannot build the simulation runtime")?;
    let watch = std::sync::Arc::new(Watch::default());
    watchdog(watch.clone(), seed, plan.name.clone());
    let result = runtime.block_on(run_plan(options, &plan, &watch));
    watch.done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut report = result?;
    // Tasks of dropped agents wind down with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    report.wall_ms = wall.elapsed().as_millis() as u64;
    report.rerun = options.rerun_flags(seed);
    Ok(report)
}

/// Runs one seed and reports it: [`run_seed`] in this process, or the binary's
/// runner that starts a child process per seed.
pub type Runner<'a> = &'a (dyn Fn(u64) -> anyhow::Result<RunReport> + Sync);

/// Runs seeds `first..first + count`, `jobs` at a time, in this process.
pub fn run_batch(
    options: &SimOptions,
    first: u64,
    count: u64,
    jobs: usize,
) -> anyhow::Result<BatchReport> {
    run_batch_with(&|seed| run_seed(options, seed), first, count, jobs)
}

/// Runs seeds `first..first + count` through `run`, `jobs` at a time, and aggregates;
/// a seed that violates an invariant is run again alone before it is reported.
pub fn run_batch_with(
    run: Runner<'_>,
    first: u64,
    count: u64,
    jobs: usize,
) -> anyhow::Result<BatchReport> {
    let wall = std::time::Instant::now();
    let seeds: Vec<u64> = (first..first.saturating_add(count)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1).min(seeds.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(seed) = seeds.get(i) else { break };
                    let result = run(*seed);
                    if let Ok(report) = &result {
                        eprintln!("{}", report.one_line());
                    }
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(*seed, result);
                }
            });
        }
    });
    let mut runs = Vec::new();
    for (seed, result) in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        let mut report =
            result.with_context(|| format!("seed {seed}: the simulation itself failed"))?;
        if let Some(violation) = &report.violation {
            // A failure is only useful if it replays: try it alone before reporting.
            let again = run(seed)?;
            report.reproduced_alone = Some(
                again
                    .violation
                    .is_some_and(|v| v.invariant == violation.invariant),
            );
        }
        runs.push(report);
    }
    Ok(BatchReport::aggregate(
        runs,
        wall.elapsed().as_millis() as u64,
    ))
}

/// Runs `seed` twice in this process and compares the traces part by part.
pub fn check_determinism(options: &SimOptions, seed: u64) -> anyhow::Result<DeterminismReport> {
    let mut options = options.clone();
    options.record_frames = true;
    check_determinism_with(&|s| run_seed(&options, s), seed)
}

/// Runs `seed` through `run` once alone, then once more after two other seeds and
/// beside two more running in parallel, and compares the traces part by part (the
/// runner should record frames).
pub fn check_determinism_with(run: Runner<'_>, seed: u64) -> anyhow::Result<DeterminismReport> {
    let first = run(seed)?;
    let second = std::thread::scope(|scope| {
        let beside = scope.spawn(|| {
            for other in [seed.wrapping_add(3), seed.wrapping_add(4)] {
                run(other)?;
            }
            anyhow::Ok(())
        });
        let mut second = None;
        for s in [seed.wrapping_add(1), seed.wrapping_add(2), seed] {
            let report = run(s)?;
            if s == seed {
                second = Some(report);
            }
        }
        beside
            .join()
            .map_err(|_| anyhow::anyhow!("a run beside the check panicked"))??;
        second.context("the second run of the seed did not happen")
    })?;
    let compare = |name: &str, a: &[String], b: &[String]| {
        let first_difference = a
            .iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())));
        PartComparison {
            part: name.to_string(),
            identical: first_difference.is_none(),
            first_difference: first_difference.map(|i| {
                format!(
                    "line {}: run 1: {} | run 2: {}",
                    i + 1,
                    a.get(i).map_or("(none)", String::as_str),
                    b.get(i).map_or("(none)", String::as_str)
                )
            }),
            lines: (a.len(), b.len()),
        }
    };
    let parts = vec![
        compare(
            "fault and command schedule",
            &first.trace.schedule,
            &second.trace.schedule,
        ),
        compare(
            "command outcomes",
            &first.trace.outcomes,
            &second.trace.outcomes,
        ),
        compare(
            "final converged state",
            &first.trace.final_state,
            &second.trace.final_state,
        ),
        compare(
            "invariant verdicts",
            &first.trace.verdicts,
            &second.trace.verdicts,
        ),
        compare(
            "message counts",
            &[format!("{} frames", first.trace.frames)],
            &[format!("{} frames", second.trace.frames)],
        ),
        compare(
            "delivered frames",
            &first.trace.deliveries,
            &second.trace.deliveries,
        ),
    ];
    Ok(DeterminismReport {
        seed,
        parts,
        runs: vec![first, second],
    })
}

mod run;

use run::*;
