//! Runs a plan against a simulated cluster: one seed, a batch of seeds, or one seed
//! twice to compare traces.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use georep_agent::supervise::SupervisePolicy;
use georep_mesh::state::{DesiredState, Replica, SessionId};
use tokio::time::Instant;

use crate::backend::{Bug, LiveMonitor};
use crate::checks::{self, EVENTS_NOT_APPLICABLE, Violation};
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

struct Progress<'a> {
    watch: &'a Watch,
    schedule: Vec<String>,
    verdicts: Vec<String>,
    partitioned: bool,
    faults: FaultCounts,
    checks: usize,
    recovery: Vec<u64>,
    traffic: Vec<TrafficPoint>,
    last_traffic: (u64, u64),
    next_traffic: Duration,
    node_seconds: f64,
    heal_at_ms: Option<u64>,
}

async fn run_plan(
    options: &SimOptions,
    plan: &Scenario,
    watch: &Watch,
) -> anyhow::Result<RunReport> {
    let spec = ClusterSpec {
        layout: plan.layout,
        seed: plan.seed,
        gossip_interval: options.gossip_interval,
        policy: options.policy(),
        bug: options.bug,
        record_frames: options.record_frames,
    };
    let mut cluster = SimCluster::start(&spec).await?;
    let mut progress = Progress {
        watch,
        schedule: Vec::new(),
        verdicts: Vec::new(),
        partitioned: false,
        faults: FaultCounts::default(),
        checks: 0,
        recovery: Vec::new(),
        traffic: Vec::new(),
        last_traffic: (0, 0),
        next_traffic: TRAFFIC_PERIOD,
        node_seconds: 0.0,
        heal_at_ms: None,
    };
    let origin = cluster.origin;
    let mut next_step = 0;
    let mut next_sample = Duration::ZERO;
    let mut violation: Option<Violation> = None;
    'run: loop {
        let elapsed = origin.elapsed();
        watch.beat(elapsed.as_millis() as u64);
        while let Some(step) = plan.steps.get(next_step) {
            if step.at > elapsed {
                break;
            }
            next_step += 1;
            progress.schedule.push(format!(
                "t={:>9.3}s  {}",
                step.at.as_secs_f64(),
                step.action
            ));
            let line = progress.schedule.last().map_or("", String::as_str);
            watch.log(line);
            if options.verbose {
                eprintln!("[seed {}] {line}", plan.seed);
            }
            if matches!(step.action, Action::Op { .. }) {
                next_sample = step.at + Duration::from_millis(1);
            }
            if let Err(v) = execute(&mut cluster, &step.action, options, &mut progress).await? {
                violation = Some(v);
                break 'run;
            }
        }
        let elapsed = origin.elapsed();
        if elapsed >= progress.next_traffic {
            sample_traffic(&cluster, &mut progress);
            if options.verbose && progress.traffic.len().is_multiple_of(10) {
                let point = progress.traffic.last().copied();
                eprintln!(
                    "[seed {}] t={:.0}s: {:?}, pending writes {}",
                    plan.seed,
                    elapsed.as_secs_f64(),
                    point,
                    lock(&cluster.ledger).unconverged.len()
                );
            }
        }
        if elapsed >= next_sample {
            let fine = sample(&cluster);
            if let Err(v) = checks::continuous_invariants(&cluster) {
                violation = Some(v);
                break 'run;
            }
            next_sample = elapsed + if fine { FINE_SAMPLE } else { COARSE_SAMPLE };
        }
        if next_step >= plan.steps.len() && elapsed >= plan.duration {
            break;
        }
        let mut wake = next_sample.min(progress.next_traffic).max(elapsed);
        if let Some(step) = plan.steps.get(next_step) {
            wake = wake.min(step.at);
        } else {
            wake = wake.min(plan.duration);
        }
        tokio::time::sleep_until(origin + wake.max(elapsed + Duration::from_millis(1))).await;
    }
    if violation.is_none() {
        progress.schedule.push(format!(
            "t={:>9.3}s  final heal + check",
            origin.elapsed().as_secs_f64()
        ));
        cluster.faults.heal();
        progress.partitioned = false;
        progress.heal_at_ms = Some(cluster.now_ms());
        if let Err(v) = settle(&cluster, options.quiet, &mut progress).await {
            violation = Some(v);
        }
    }
    let report = finish(&mut cluster, plan, violation, progress).await;
    cluster.shutdown().await;
    Ok(report)
}

async fn execute(
    cluster: &mut SimCluster,
    action: &Action,
    options: &SimOptions,
    progress: &mut Progress<'_>,
) -> anyhow::Result<Result<(), Violation>> {
    let faults = &mut progress.faults;
    match action {
        Action::Op {
            node,
            session,
            op,
            wait,
        } => {
            if !cluster.issue(*node, *session, op.clone(), *wait, progress.partitioned)
                && let Some(line) = progress.schedule.last_mut()
            {
                line.push_str("  (skipped: node down)");
            }
        }
        Action::Partition { groups, oneway } => {
            let addrs: Vec<_> = groups.iter().map(|g| cluster.addrs(g)).collect();
            if *oneway {
                faults.oneway_partitions += 1;
                for (i, from) in addrs.iter().enumerate() {
                    for to in &addrs[i + 1..] {
                        for a in from {
                            for b in to {
                                cluster.faults.block(*a, *b);
                            }
                        }
                    }
                }
            } else {
                faults.partitions += 1;
                cluster.faults.partition(&addrs);
            }
            progress.partitioned = true;
        }
        Action::Degrade {
            between,
            faults: spec,
        } => {
            faults.degrades += 1;
            let link = spec.link_faults();
            match between {
                None => cluster.faults.set_default(link),
                Some((a, b)) => {
                    for x in cluster.addrs(a) {
                        for y in cluster.addrs(b) {
                            cluster.faults.set_link(x, y, link);
                            cluster.faults.set_link(y, x, link);
                        }
                    }
                }
            }
        }
        Action::Heal => {
            faults.heals += 1;
            cluster.faults.heal();
            progress.partitioned = false;
            progress.heal_at_ms = Some(cluster.now_ms());
        }
        Action::Crash { node, mode } => {
            faults.crashes += 1;
            cluster.crash(*node, *mode).await;
        }
        Action::Restart { node, disk } => {
            if !cluster.nodes[*node].is_up() {
                match disk {
                    crate::scenario::Disk::Kept => faults.restarts_disk_kept += 1,
                    crate::scenario::Disk::Lost => faults.restarts_disk_lost += 1,
                }
            }
            cluster.restart(*node, *disk).await?;
        }
        Action::Skew { node, offset_ms } => {
            faults.skews += 1;
            cluster.nodes[*node].clock.set_skew_ms(*offset_ms);
        }
        Action::MonitorCrash { node, session } => {
            let id = cluster.layout.session(*session);
            let hit = cluster.nodes[*node].backend.crash_monitor(&id);
            faults.monitor_crashes += usize::from(hit.is_some());
            note(progress, hit);
        }
        Action::MonitorHang { node, session } => {
            let id = cluster.layout.session(*session);
            let hit = cluster.nodes[*node].backend.hang_monitor(&id);
            faults.monitor_hangs += usize::from(hit.is_some());
            note(progress, hit);
        }
        Action::Check => {
            if let Err(v) = settle(cluster, options.quiet, progress).await {
                return Ok(Err(v));
            }
        }
    }
    Ok(Ok(()))
}

fn note(progress: &mut Progress<'_>, hit: Option<u32>) {
    if let Some(line) = progress.schedule.last_mut() {
        match hit {
            Some(pid) => line.push_str(&format!("  (pid {pid})")),
            None => line.push_str("  (no monitor ran)"),
        }
    }
}

/// Waits (at most `quiet`) for the quiet-time invariants; measurements go on meanwhile.
async fn settle(
    cluster: &SimCluster,
    quiet: Duration,
    progress: &mut Progress<'_>,
) -> Result<(), Violation> {
    progress.checks += 1;
    let start = Instant::now();
    let since_heal = progress.heal_at_ms.unwrap_or_else(|| cluster.now_ms());
    loop {
        progress.watch.beat(cluster.now_ms());
        sample(cluster);
        checks::continuous_invariants(cluster)?;
        if cluster.origin.elapsed() >= progress.next_traffic {
            sample_traffic(cluster, progress);
        }
        match checks::quiet_invariants(cluster).await {
            Ok(()) => {
                let took = cluster.now_ms().saturating_sub(since_heal);
                progress.recovery.push(took);
                progress
                    .verdicts
                    .push(format!("check {} passed", progress.checks));
                return Ok(());
            }
            Err(violation) if start.elapsed() >= quiet => {
                progress.verdicts.push(format!(
                    "check {} failed: {}",
                    progress.checks, violation.invariant
                ));
                return Err(violation);
            }
            Err(_) => {
                let nodes = cluster.nodes.len() as u32;
                tokio::time::sleep(SETTLE_POLL.max(Duration::from_millis(2) * nodes)).await;
            }
        }
    }
}

/// Records convergence and monitor reaction of pending writes; returns whether a
/// recent write is pending (sample finely).
fn sample(cluster: &SimCluster) -> bool {
    let now = cluster.now_ms();
    let (pending_conv, pending_react, answering) = {
        let ledger = lock(&cluster.ledger);
        let answering = ledger
            .in_flight
            .iter()
            .any(|i| now.saturating_sub(ledger.ops[*i].issued_ms) < FINE_WINDOW_MS);
        (
            ledger.unconverged.clone(),
            ledger.unreacted.clone(),
            answering,
        )
    };
    if pending_conv.is_empty() && pending_react.is_empty() {
        return answering;
    }
    let replicas: Vec<(usize, Replica)> = cluster
        .nodes
        .iter()
        .filter_map(|n| Some((n.index, n.replica()?)))
        .collect();
    let mut ledger = lock(&cluster.ledger);
    let mut fine = answering;
    for index in pending_conv {
        let op = &ledger.ops[index];
        let Some(stamp) = op.stamp() else { continue };
        if replicas
            .iter()
            .all(|(_, r)| reflects(r, &op.session, &op.register, stamp))
        {
            let sample = (now.saturating_sub(op.issued_ms), op.partitioned);
            ledger.convergence.push(sample);
            ledger.unconverged.remove(&index);
        } else if now.saturating_sub(op.issued_ms) < FINE_WINDOW_MS {
            fine = true;
        }
    }
    // Each node's process table, read once per sample and only if needed.
    let mut tables: Vec<Option<BTreeMap<SessionId, Vec<LiveMonitor>>>> =
        vec![None; cluster.nodes.len()];
    for index in pending_react {
        let op = &ledger.ops[index];
        let Some(stamp) = op.stamp() else { continue };
        let done = replicas.iter().all(|(node, replica)| {
            reflects(replica, &op.session, &op.register, stamp) && {
                let table =
                    tables[*node].get_or_insert_with(|| cluster.nodes[*node].backend.monitors());
                monitors_follow(
                    cluster.nodes[*node].is_primary(),
                    table,
                    replica,
                    &op.session,
                )
            }
        });
        if done {
            let took = now.saturating_sub(op.issued_ms);
            ledger.reaction.push(took);
            ledger.unreacted.remove(&index);
        } else if now.saturating_sub(op.issued_ms) < FINE_WINDOW_MS {
            fine = true;
        }
    }
    fine
}

/// Whether a node's monitors of `session` (from its process `table`) are what its
/// replica requires.
fn monitors_follow(
    primary: bool,
    table: &BTreeMap<SessionId, Vec<LiveMonitor>>,
    replica: &Replica,
    session: &SessionId,
) -> bool {
    let need = replica.sessions.get(session).and_then(|record| {
        let view = record.view();
        (primary && view.exists)
            .then_some(view.desired)
            .and_then(|d| match d {
                DesiredState::Started => Some(false),
                DesiredState::Paused => Some(true),
                _ => None,
            })
    });
    let monitors = table.get(session).map_or(&[][..], Vec::as_slice);
    match (need, monitors) {
        (None, []) | (Some(true), []) => true,
        (Some(frozen), [one]) => one.stopped == frozen,
        _ => false,
    }
}

/// Appends one point per elapsed period (the period the point covers ends at its `t_s`).
fn sample_traffic(cluster: &SimCluster, progress: &mut Progress<'_>) {
    let elapsed = cluster.origin.elapsed();
    if elapsed < progress.next_traffic {
        return;
    }
    let periods = ((elapsed - progress.next_traffic).as_secs_f64() / TRAFFIC_PERIOD.as_secs_f64())
        .floor()
        + 1.0;
    progress.next_traffic += TRAFFIC_PERIOD.mul_f64(periods);
    let traffic = cluster.traffic();
    let live = cluster.up().len();
    let period = TRAFFIC_PERIOD.as_secs_f64() * periods;
    let bytes = traffic.bytes_sent.saturating_sub(progress.last_traffic.0);
    let frames = traffic.frames_sent.saturating_sub(progress.last_traffic.1);
    progress.last_traffic = (traffic.bytes_sent, traffic.frames_sent);
    progress.node_seconds += live as f64 * period;
    let per = |x: u64| {
        if live == 0 {
            0.0
        } else {
            x as f64 / live as f64 / period
        }
    };
    progress.traffic.push(TrafficPoint {
        t_s: cluster.origin.elapsed().as_secs_f64(),
        bytes_per_node_per_s: per(bytes),
        messages_per_node_per_s: per(frames),
        live,
    });
}

async fn finish(
    cluster: &mut SimCluster,
    plan: &Scenario,
    violation: Option<Violation>,
    mut progress: Progress<'_>,
) -> RunReport {
    sample_traffic(cluster, &mut progress);
    // What was sent after the last full period still counts in the totals.
    let tail = (cluster.origin.elapsed().as_secs_f64()
        - (progress.next_traffic.as_secs_f64() - TRAFFIC_PERIOD.as_secs_f64()))
    .max(0.0);
    progress.node_seconds += tail * cluster.up().len() as f64;
    let traffic = cluster.traffic();
    let (dropped, duplicated) = cluster.faults.counters();
    progress.faults.frames_dropped = dropped;
    progress.faults.frames_duplicated = duplicated;
    let ledger = lock(&cluster.ledger);
    let (issued, acknowledged, refused, aborted, in_flight) = ledger.counts();
    let all: Vec<u64> = ledger.convergence.iter().map(|(ms, _)| *ms).collect();
    let calm: Vec<u64> = ledger
        .convergence
        .iter()
        .filter(|(_, partitioned)| !partitioned)
        .map(|(ms, _)| *ms)
        .collect();
    let node_seconds = progress.node_seconds.max(1.0);
    let mut invariants = BTreeMap::new();
    let verdict = |name: &str| match &violation {
        Some(v) if v.invariant == name => "VIOLATED".to_string(),
        _ => format!("held ({} checks)", progress.checks),
    };
    for name in [
        "replicas equal",
        "monitors match the converged view",
        "acknowledged commands reflected",
        "membership agrees",
    ] {
        invariants.insert(name.to_string(), verdict(name));
    }
    for name in [
        "at most one monitor per session per node",
        "acknowledgements are truthful",
    ] {
        let held = match &violation {
            Some(v) if v.invariant == name => "VIOLATED".to_string(),
            _ => "held (every sample)".to_string(),
        };
        invariants.insert(name.to_string(), held);
    }
    invariants.insert(
        "events gap-free per node".into(),
        EVENTS_NOT_APPLICABLE.into(),
    );
    let mut final_state = Vec::new();
    for node in &cluster.nodes {
        match node.replica() {
            Some(replica) => {
                for record in replica.sessions.values() {
                    let registers: Vec<String> = record
                        .registers()
                        .iter()
                        .map(|(name, stamp)| format!("{name}@{stamp}"))
                        .collect();
                    final_state.push(format!(
                        "{} {}: {} {}",
                        node.id,
                        record.id,
                        record.view().desired,
                        registers.join(" ")
                    ));
                }
            }
            None => final_state.push(format!("{} down", node.id)),
        }
    }
    let trace = Trace {
        schedule: progress.schedule.clone(),
        outcomes: ledger.ops.iter().map(|op| op.line()).collect(),
        final_state,
        verdicts: progress.verdicts.clone(),
        frames: traffic.frames_sent,
        deliveries: cluster.deliveries(),
    };
    let violation_report = violation.map(|v| ViolationReport {
        invariant: v.invariant,
        at_ms: v.at_ms,
        detail: v.detail,
        schedule: progress.schedule.clone(),
    });
    RunReport {
        seed: plan.seed,
        scenario: plan.name.clone(),
        nodes: plan.layout.nodes,
        primaries: plan.layout.primaries,
        sessions: plan.layout.sessions,
        virtual_s: cluster.origin.elapsed().as_secs_f64(),
        wall_ms: 0,
        violations: usize::from(violation_report.is_some()),
        violation: violation_report,
        ops: OpCounts {
            issued,
            acknowledged,
            refused,
            aborted,
            in_flight,
            lost_with_disk: ledger.lost_with_disk.len(),
        },
        faults: progress.faults.clone(),
        checks: progress.checks,
        convergence_ms: Percentiles::of(&all),
        convergence_unpartitioned_ms: Percentiles::of(&calm),
        monitor_reaction_ms: Percentiles::of(&ledger.reaction),
        recovery_ms: Percentiles::of(&progress.recovery),
        messages_per_node_per_s: traffic.frames_sent as f64 / node_seconds,
        bytes_per_node_per_s: traffic.bytes_sent as f64 / node_seconds,
        invariants,
        convergence_samples: all,
        unpartitioned_samples: calm,
        reaction_samples: ledger.reaction.clone(),
        recovery_samples: progress.recovery.clone(),
        traffic: progress.traffic.clone(),
        trace,
        // Set by [`run_seed`], which knows the options.
        rerun: String::new(),
        reproduced_alone: None,
    }
}
