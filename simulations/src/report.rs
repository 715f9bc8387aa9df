//! What a run found: the JSON (`--json`, `--report DIR`) and the text summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::metrics::{Percentiles, TrafficPoint};
use crate::plot;

/// Commands issued and how they ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpCounts {
    /// Issued on a running node.
    pub issued: usize,
    /// Acknowledged (`Agent::op` returned Ok).
    pub acknowledged: usize,
    /// Refused by validation.
    pub refused: usize,
    /// Never answered: the agent died.
    pub aborted: usize,
    /// Still waiting at the end.
    pub in_flight: usize,
    /// Acknowledged, then lost with the only disks holding them (not a violation).
    pub lost_with_disk: usize,
}

/// Faults injected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultCounts {
    /// Two-way partitions.
    pub partitions: usize,
    /// One-way partitions.
    pub oneway_partitions: usize,
    /// Loss/delay/jitter/duplication settings.
    pub degrades: usize,
    /// Heals.
    pub heals: usize,
    /// Agent crashes.
    pub crashes: usize,
    /// Restarts with the data directory kept.
    pub restarts_disk_kept: usize,
    /// Restarts with the data directory wiped.
    pub restarts_disk_lost: usize,
    /// Clock steps.
    pub skews: usize,
    /// Monitor crashes (that hit a running monitor).
    pub monitor_crashes: usize,
    /// Monitors made to ignore SIGTERM.
    pub monitor_hangs: usize,
    /// Frames dropped by the simulated network.
    pub frames_dropped: u64,
    /// Frames duplicated by the simulated network.
    pub frames_duplicated: u64,
}

/// A broken invariant with what reproduces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViolationReport {
    /// Which invariant.
    pub invariant: String,
    /// Virtual ms when found.
    pub at_ms: u64,
    /// The first differing state.
    pub detail: String,
    /// The fault and command schedule up to the violation.
    pub schedule: Vec<String>,
}

/// The comparable trace of a run (see `--check-determinism`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// Executed steps with their virtual times.
    pub schedule: Vec<String>,
    /// Every command's outcome.
    pub outcomes: Vec<String>,
    /// Every node's final records.
    pub final_state: Vec<String>,
    /// Check verdicts.
    pub verdicts: Vec<String>,
    /// Frames sent in total.
    pub frames: u64,
    /// Every delivered frame (recorded for `--check-determinism` only).
    pub deliveries: Vec<String>,
}

/// One run (one seed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// The seed (network faults and random workload).
    pub seed: u64,
    /// Scenario name (`random` for the random workload).
    pub scenario: String,
    /// Nodes.
    pub nodes: usize,
    /// Of which primary nodes.
    pub primaries: usize,
    /// Sessions.
    pub sessions: usize,
    /// Virtual seconds simulated.
    pub virtual_s: f64,
    /// Wall-clock milliseconds the run took.
    pub wall_ms: u64,
    /// 0 or 1 (a run stops at its first violation).
    pub violations: usize,
    /// The violation, if any.
    pub violation: Option<ViolationReport>,
    /// Commands.
    pub ops: OpCounts,
    /// Faults.
    pub faults: FaultCounts,
    /// Quiet-time checks run (each heal + quiet window, and the final one).
    pub checks: usize,
    /// Write acknowledged -> every live replica reflects it.
    pub convergence_ms: Percentiles,
    /// The same, for writes issued while no partition was in force.
    pub convergence_unpartitioned_ms: Percentiles,
    /// Desired-state change -> every live node's monitors match.
    pub monitor_reaction_ms: Percentiles,
    /// Heal -> every invariant holds.
    pub recovery_ms: Percentiles,
    /// Frames sent per live node per second.
    pub messages_per_node_per_s: f64,
    /// Bytes sent per live node per second.
    pub bytes_per_node_per_s: f64,
    /// Verdict per invariant.
    pub invariants: BTreeMap<String, String>,
    /// Raw convergence samples (ms).
    #[serde(skip)]
    pub convergence_samples: Vec<u64>,
    /// Raw convergence samples of writes issued with no partition in force (ms).
    #[serde(skip)]
    pub unpartitioned_samples: Vec<u64>,
    /// Raw monitor-reaction samples (ms).
    #[serde(skip)]
    pub reaction_samples: Vec<u64>,
    /// Raw heal -> invariants samples (ms).
    #[serde(skip)]
    pub recovery_samples: Vec<u64>,
    /// Bytes per node over time.
    #[serde(skip)]
    pub traffic: Vec<TrafficPoint>,
    /// The comparable trace.
    #[serde(skip)]
    pub trace: Trace,
    /// `georep-sim` flags that run this seed alone with the same options.
    pub rerun: String,
    /// For a violation found in a batch: whether running the seed again, alone,
    /// violated the same invariant (`None`: not tried).
    pub reproduced_alone: Option<bool>,
}

impl RunReport {
    /// One progress line (stderr during batches).
    pub fn one_line(&self) -> String {
        format!(
            "seed {:>6}: {} violation(s), {} ops ({} acked), convergence p99 {} ms, {:.0} B/node/s, {:.1} s wall",
            self.seed,
            self.violations,
            self.ops.issued,
            self.ops.acknowledged,
            self.convergence_ms.p99,
            self.bytes_per_node_per_s,
            self.wall_ms as f64 / 1000.0
        )
    }
}

/// Short per-run line in a batch's JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunLine {
    /// Seed.
    pub seed: u64,
    /// Violations.
    pub violations: usize,
    /// Wall ms.
    pub wall_ms: u64,
    /// Commands acknowledged.
    pub acknowledged: usize,
    /// Convergence p99.
    pub convergence_p99_ms: u64,
    /// Bytes per node per second.
    pub bytes_per_node_per_s: f64,
}

/// Several runs, aggregated (one run is a batch of one).
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    /// Runs.
    pub runs: usize,
    /// Runs that found a violation.
    pub violations: usize,
    /// Seeds of those runs.
    pub failing_seeds: Vec<u64>,
    /// Scenario.
    pub scenario: String,
    /// Nodes per run.
    pub nodes: usize,
    /// Virtual seconds simulated in total.
    pub virtual_s: f64,
    /// Wall-clock milliseconds for the batch.
    pub wall_ms: u64,
    /// Over all runs' samples.
    pub convergence_ms: Percentiles,
    /// Over all runs' samples, writes issued with no partition in force.
    pub convergence_unpartitioned_ms: Percentiles,
    /// Over all runs' samples.
    pub monitor_reaction_ms: Percentiles,
    /// Over all runs' samples.
    pub recovery_ms: Percentiles,
    /// Mean over runs.
    pub messages_per_node_per_s: f64,
    /// Mean over runs.
    pub bytes_per_node_per_s: f64,
    /// Summed over runs.
    pub ops: OpCounts,
    /// Summed over runs.
    pub faults: FaultCounts,
    /// Verdict per invariant (worst over runs).
    pub invariants: BTreeMap<String, String>,
    /// Per run.
    pub per_run: Vec<RunLine>,
    /// Full report of each failing run.
    pub failures: Vec<RunReport>,
    /// The single run, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunReport>,
    /// All runs (for plots; not serialized).
    #[serde(skip)]
    pub all: Vec<RunReport>,
}

impl BatchReport {
    /// Aggregates runs.
    pub fn aggregate(runs: Vec<RunReport>, wall_ms: u64) -> BatchReport {
        let mut conv = Vec::new();
        let mut calm = Vec::new();
        let mut react = Vec::new();
        let mut recovery = Vec::new();
        let mut ops = OpCounts::default();
        let mut faults = FaultCounts::default();
        let mut invariants: BTreeMap<String, String> = BTreeMap::new();
        for run in &runs {
            conv.extend_from_slice(&run.convergence_samples);
            calm.extend_from_slice(&run.unpartitioned_samples);
            react.extend_from_slice(&run.reaction_samples);
            recovery.extend_from_slice(&run.recovery_samples);
            ops.issued += run.ops.issued;
            ops.acknowledged += run.ops.acknowledged;
            ops.refused += run.ops.refused;
            ops.aborted += run.ops.aborted;
            ops.in_flight += run.ops.in_flight;
            ops.lost_with_disk += run.ops.lost_with_disk;
            let f = &run.faults;
            faults.partitions += f.partitions;
            faults.oneway_partitions += f.oneway_partitions;
            faults.degrades += f.degrades;
            faults.heals += f.heals;
            faults.crashes += f.crashes;
            faults.restarts_disk_kept += f.restarts_disk_kept;
            faults.restarts_disk_lost += f.restarts_disk_lost;
            faults.skews += f.skews;
            faults.monitor_crashes += f.monitor_crashes;
            faults.monitor_hangs += f.monitor_hangs;
            faults.frames_dropped += f.frames_dropped;
            faults.frames_duplicated += f.frames_duplicated;
            for (name, verdict) in &run.invariants {
                let slot = invariants
                    .entry(name.clone())
                    .or_insert_with(|| verdict.clone());
                if verdict.starts_with("VIOLATED") {
                    *slot = format!("VIOLATED (seed {})", run.seed);
                }
            }
        }
        for verdict in invariants.values_mut() {
            if let Some(rest) = verdict.strip_prefix("held (")
                && rest.ends_with("checks)")
            {
                *verdict = "held".into();
            }
        }
        let n = runs.len().max(1) as f64;
        let failing: Vec<&RunReport> = runs.iter().filter(|r| r.violations > 0).collect();
        BatchReport {
            runs: runs.len(),
            violations: failing.len(),
            failing_seeds: failing.iter().map(|r| r.seed).collect(),
            scenario: runs.first().map(|r| r.scenario.clone()).unwrap_or_default(),
            nodes: runs.first().map_or(0, |r| r.nodes),
            virtual_s: runs.iter().map(|r| r.virtual_s).sum(),
            wall_ms,
            convergence_ms: Percentiles::of(&conv),
            convergence_unpartitioned_ms: Percentiles::of(&calm),
            monitor_reaction_ms: Percentiles::of(&react),
            recovery_ms: Percentiles::of(&recovery),
            messages_per_node_per_s: runs.iter().map(|r| r.messages_per_node_per_s).sum::<f64>()
                / n,
            bytes_per_node_per_s: runs.iter().map(|r| r.bytes_per_node_per_s).sum::<f64>() / n,
            ops,
            faults,
            invariants,
            per_run: runs
                .iter()
                .map(|r| RunLine {
                    seed: r.seed,
                    violations: r.violations,
                    wall_ms: r.wall_ms,
                    acknowledged: r.ops.acknowledged,
                    convergence_p99_ms: r.convergence_ms.p99,
                    bytes_per_node_per_s: r.bytes_per_node_per_s,
                })
                .collect(),
            failures: failing.iter().map(|r| (*r).clone()).collect(),
            run: (runs.len() == 1).then(|| runs[0].clone()),
            all: runs,
        }
    }

    /// The human summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let p = |x: &Percentiles| {
            format!(
                "p50 {} / p95 {} / p99 {} / max {} ms ({} samples)",
                x.p50, x.p95, x.p99, x.max, x.count
            )
        };
        let _ = writeln!(
            out,
            "georep-sim: {} run(s) of `{}`, {} nodes, {:.0} virtual s in {:.1} s wall",
            self.runs,
            self.scenario,
            self.nodes,
            self.virtual_s,
            self.wall_ms as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "violations:            {}{}",
            self.violations,
            if self.failing_seeds.is_empty() {
                String::new()
            } else {
                format!(" (seeds {:?})", self.failing_seeds)
            }
        );
        let _ = writeln!(out, "convergence:           {}", p(&self.convergence_ms));
        let _ = writeln!(
            out,
            "  without partition:   {}",
            p(&self.convergence_unpartitioned_ms)
        );
        let _ = writeln!(
            out,
            "monitor reaction:      {}",
            p(&self.monitor_reaction_ms)
        );
        let _ = writeln!(out, "heal -> invariants:    {}", p(&self.recovery_ms));
        let _ = writeln!(
            out,
            "traffic per node:      {:.1} messages/s, {:.0} bytes/s",
            self.messages_per_node_per_s, self.bytes_per_node_per_s
        );
        let o = &self.ops;
        let _ = writeln!(
            out,
            "commands:              {} issued, {} acknowledged, {} refused, {} aborted, {} in flight, {} lost with disk",
            o.issued, o.acknowledged, o.refused, o.aborted, o.in_flight, o.lost_with_disk
        );
        let f = &self.faults;
        let _ = writeln!(
            out,
            "faults:                {} partitions, {} one-way, {} degrades, {} heals, {} crashes, {}+{} restarts (disk kept+lost), {} skews, {} monitor crashes, {} hangs; {} frames dropped, {} duplicated",
            f.partitions,
            f.oneway_partitions,
            f.degrades,
            f.heals,
            f.crashes,
            f.restarts_disk_kept,
            f.restarts_disk_lost,
            f.skews,
            f.monitor_crashes,
            f.monitor_hangs,
            f.frames_dropped,
            f.frames_duplicated
        );
        let _ = writeln!(out, "invariants:");
        for (name, verdict) in &self.invariants {
            let _ = writeln!(out, "  {name:<42} {verdict}");
        }
        for failure in &self.failures {
            if let Some(v) = &failure.violation {
                let _ = writeln!(
                    out,
                    "\nVIOLATION (seed {}, scenario {}, {} nodes) at t={:.3}s: {}\n  {}\nschedule so far (rerun alone: georep-sim {}{}):",
                    failure.seed,
                    failure.scenario,
                    failure.nodes,
                    v.at_ms as f64 / 1000.0,
                    v.invariant,
                    v.detail.replace('\n', "\n  "),
                    failure.rerun,
                    match failure.reproduced_alone {
                        Some(true) => "; it did fail the same way alone",
                        Some(false) => {
                            "; it did NOT fail alone: the outcome depended on the other runs (see simulations/README.md, determinism)"
                        }
                        None => "",
                    },
                );
                for line in &v.schedule {
                    let _ = writeln!(out, "  {line}");
                }
            }
        }
        out
    }

    /// Writes `summary.json` and the plots `convergence` and `traffic` (`.svg` and `.png`) into `dir`.
    pub fn write_dir(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut json = serde_json::to_value(self)?;
        if let Some(object) = json.as_object_mut() {
            let series: Vec<serde_json::Value> = self
                .all
                .iter()
                .map(|r| serde_json::json!({"seed": r.seed, "traffic": r.traffic}))
                .collect();
            object.insert("traffic_series".into(), serde_json::Value::Array(series));
        }
        let path = dir.join("summary.json");
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let samples: Vec<u64> = self
            .all
            .iter()
            .flat_map(|r| r.convergence_samples.iter().copied())
            .collect();
        let title = format!(
            "Convergence time, write -> all live replicas ({} runs, {} nodes, {} writes)",
            self.runs,
            self.nodes,
            samples.len()
        );
        let mut written = plot::write_both(dir, "convergence", |area| {
            area.histogram(&title, "virtual ms (log scale)", &samples)
        })?;
        let series: Vec<(String, Vec<(f64, f64)>)> = self
            .all
            .iter()
            .map(|r| {
                (
                    format!("seed {}", r.seed),
                    r.traffic
                        .iter()
                        .map(|p| (p.t_s, p.bytes_per_node_per_s))
                        .collect(),
                )
            })
            .collect();
        let title = format!("Bytes sent per live node per second ({} nodes)", self.nodes);
        let traffic = plot::write_both(dir, "traffic", |area| {
            area.lines(&title, "virtual time (s)", "bytes / node / s", &series)
        })?;
        written.files.extend(traffic.files);
        if let Some(why) = written.skipped.or(traffic.skipped) {
            eprintln!("georep-sim: no plots in {}: {why}", dir.display());
        }
        Ok(())
    }
}

/// One part of a determinism comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartComparison {
    /// Which part of the trace.
    pub part: String,
    /// Whether both runs produced the same.
    pub identical: bool,
    /// Where they first differ.
    pub first_difference: Option<String>,
    /// Lines in each run.
    pub lines: (usize, usize),
}

/// `--check-determinism`: the same seed twice.
#[derive(Debug, Clone, Serialize)]
pub struct DeterminismReport {
    /// The seed.
    pub seed: u64,
    /// Part by part.
    pub parts: Vec<PartComparison>,
    /// The two runs.
    #[serde(skip)]
    pub runs: Vec<RunReport>,
}

impl DeterminismReport {
    /// The human summary.
    pub fn text(&self) -> String {
        let mut out = format!(
            "determinism check, seed {}: run alone, then again after other seeds and beside parallel runs:\n",
            self.seed
        );
        for part in &self.parts {
            let _ = writeln!(
                out,
                "  {:<28} {}",
                part.part,
                if part.identical {
                    format!("identical ({} lines)", part.lines.0)
                } else {
                    format!(
                        "DIFFERS ({} vs {} lines); {}",
                        part.lines.0,
                        part.lines.1,
                        part.first_difference.clone().unwrap_or_default()
                    )
                }
            );
        }
        out.push_str(if self.identical() {
            "deterministic: both runs are identical\n"
        } else {
            "NOT deterministic: the runs differ (first difference per part above)\n"
        });
        out
    }

    /// Whether every part of the trace was identical.
    pub fn identical(&self) -> bool {
        self.parts.iter().all(|p| p.identical)
    }
}

/// A whole run as a child process hands it to its parent (the report's raw samples
/// and trace included, which the user-facing JSON leaves out).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildRun {
    /// The report (without the fields below).
    pub report: RunReport,
    /// [`RunReport::convergence_samples`].
    pub convergence_samples: Vec<u64>,
    /// [`RunReport::unpartitioned_samples`].
    pub unpartitioned_samples: Vec<u64>,
    /// [`RunReport::reaction_samples`].
    pub reaction_samples: Vec<u64>,
    /// [`RunReport::recovery_samples`].
    pub recovery_samples: Vec<u64>,
    /// [`RunReport::traffic`].
    pub traffic: Vec<TrafficPoint>,
    /// [`RunReport::trace`].
    pub trace: Trace,
}

impl ChildRun {
    /// Packs a report.
    pub fn from_report(mut report: RunReport) -> Self {
        use std::mem::take;
        Self {
            convergence_samples: take(&mut report.convergence_samples),
            unpartitioned_samples: take(&mut report.unpartitioned_samples),
            reaction_samples: take(&mut report.reaction_samples),
            recovery_samples: take(&mut report.recovery_samples),
            traffic: take(&mut report.traffic),
            trace: take(&mut report.trace),
            report,
        }
    }

    /// Unpacks the report.
    pub fn into_report(self) -> RunReport {
        RunReport {
            convergence_samples: self.convergence_samples,
            unpartitioned_samples: self.unpartitioned_samples,
            reaction_samples: self.reaction_samples,
            recovery_samples: self.recovery_samples,
            traffic: self.traffic,
            trace: self.trace,
            ..self.report
        }
    }
}
