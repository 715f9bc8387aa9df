//! Running one plan against a simulated cluster: executing its steps, settling and
//! sampling between them, checking the invariants after every heal, and the report.

use super::*;

pub(super) struct Progress<'a> {
    pub(super) watch: &'a Watch,
    pub(super) schedule: Vec<String>,
    pub(super) verdicts: Vec<String>,
    pub(super) partitioned: bool,
    pub(super) faults: FaultCounts,
    pub(super) checks: usize,
    pub(super) recovery: Vec<u64>,
    pub(super) traffic: Vec<TrafficPoint>,
    pub(super) last_traffic: (u64, u64),
    pub(super) next_traffic: Duration,
    pub(super) node_seconds: f64,
    pub(super) heal_at_ms: Option<u64>,
}

pub(super) async fn run_plan(
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

pub(super) async fn execute(
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

pub(super) fn note(progress: &mut Progress<'_>, hit: Option<u32>) {
    if let Some(line) = progress.schedule.last_mut() {
        match hit {
            Some(pid) => line.push_str(&format!("  (pid {pid})")),
            None => line.push_str("  (no monitor ran)"),
        }
    }
}

/// Waits (at most `quiet`) for the quiet-time invariants; measurements go on meanwhile.
pub(super) async fn settle(
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
pub(super) fn sample(cluster: &SimCluster) -> bool {
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
pub(super) fn monitors_follow(
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
pub(super) fn sample_traffic(cluster: &SimCluster, progress: &mut Progress<'_>) {
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

pub(super) async fn finish(
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
        checks::EVENTS_INVARIANT,
        checks::WEBHOOK_INVARIANT,
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
