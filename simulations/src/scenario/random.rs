//! The seeded random workload: faults and commands drawn up front from the seed at
//! the configured rates, resolved to the same timeline of steps a scenario file gives.

use super::*;

/// Rates and shape of the random workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomWorkload {
    /// Commands per virtual second, cluster-wide, during chaos windows.
    pub command_rate: f64,
    /// Faults per virtual second during chaos windows.
    pub fault_rate: f64,
    /// Shortest and longest chaos window.
    pub chaos: (Duration, Duration),
    /// Quiet window after each heal (the check must pass within it).
    pub quiet: Duration,
    /// Time given to the cluster to form before the first command.
    pub warmup: Duration,
}

impl RandomWorkload {
    /// Defaults for `nodes` nodes gossiping every `gossip` (warm-up grows with log N).
    pub fn new(nodes: usize, gossip: Duration, quiet: Duration) -> Self {
        let rounds = (nodes.max(2) as f64).log2().ceil() as u32 * 3 + 4;
        Self {
            command_rate: 1.0,
            fault_rate: 0.15,
            chaos: (Duration::from_secs(15), Duration::from_secs(40)),
            quiet,
            warmup: (gossip * rounds).max(Duration::from_secs(8)),
        }
    }
}

pub(super) struct Gen {
    pub(super) rng: SeededRng,
}

impl Gen {
    fn below(&mut self, n: usize) -> usize {
        self.rng.below(n as u64) as usize
    }

    fn pick(&mut self, from: &[usize]) -> Option<usize> {
        (!from.is_empty()).then(|| from[self.below(from.len())])
    }

    fn between(&mut self, range: (Duration, Duration)) -> Duration {
        let span = range.1.saturating_sub(range.0).as_millis() as u64;
        range.0 + Duration::from_millis(self.rng.below(span + 1))
    }

    /// Exponential inter-arrival time for `rate` events per second.
    fn gap(&mut self, rate: f64) -> Duration {
        if rate <= 0.0 {
            return Duration::MAX;
        }
        let u = self.rng.next_f64().max(1e-12);
        Duration::from_secs_f64((-u.ln() / rate).min(3600.0))
    }

    fn split(&mut self, nodes: usize, parts: usize) -> Vec<Vec<usize>> {
        let mut groups = vec![Vec::new(); parts];
        for node in 0..nodes {
            let g = self.below(parts);
            groups[g].push(node);
        }
        // No empty group: move one node into each empty one.
        for g in 0..parts {
            if groups[g].is_empty() {
                let donor = (0..parts).max_by_key(|d| groups[*d].len()).unwrap_or(0);
                if let Some(node) = groups[donor].pop() {
                    groups[g].push(node);
                }
            }
        }
        groups
    }

    fn op(&mut self, layout: &Layout) -> SessionOp {
        let force = self.rng.chance(0.3);
        match self.below(100) {
            0..15 => SessionOp::Create {
                options: SessionOptions::default(),
                force: self.rng.chance(0.5),
            },
            15..35 => SessionOp::Start { force },
            35..50 => SessionOp::Stop { force },
            50..60 => SessionOp::Pause { force },
            60..70 => SessionOp::Resume { force },
            70..78 => SessionOp::SetConfig {
                key: "sync-jobs".into(),
                value: (1 + self.below(20)).to_string(),
            },
            78..84 => SessionOp::SetConfig {
                key: "log-sync-performance".into(),
                value: if self.rng.chance(0.5) {
                    "true"
                } else {
                    "false"
                }
                .into(),
            },
            84..88 => SessionOp::ResetConfig {
                key: "sync-jobs".into(),
            },
            _ => {
                let _ = layout;
                SessionOp::Delete {
                    force,
                    reset_sync_time: false,
                }
            }
        }
    }
}

/// The seeded random workload over `duration`: after a warm-up, all sessions are
/// created and started, then chaos windows (commands and faults at their rates)
/// alternate with heal + quiet windows ending in a check. A node that is down at the
/// end of a chaos window is restarted at the heal.
pub fn random_scenario(
    layout: Layout,
    seed: u64,
    duration: Duration,
    workload: &RandomWorkload,
) -> Scenario {
    let mut generator = Gen {
        rng: SeededRng::new(seed ^ 0x05EE_D0FC_4A05_u64),
    };
    let g = &mut generator;
    let n = layout.nodes;
    let mut steps = Vec::new();
    let mut down: Vec<bool> = vec![false; n];
    let mut at = workload.warmup;
    for session in 0..layout.sessions {
        let node = g.below(n);
        steps.push(Step {
            at,
            action: Action::Op {
                node,
                session,
                op: SessionOp::Create {
                    options: SessionOptions::default(),
                    force: false,
                },
                wait: false,
            },
        });
        at += Duration::from_millis(200);
        steps.push(Step {
            at,
            action: Action::Op {
                node: g.below(n),
                session,
                op: SessionOp::Start { force: false },
                wait: true,
            },
        });
        at += Duration::from_millis(200);
    }
    at += Duration::from_secs(5);
    while at < duration {
        let window_end =
            (at + g.between(workload.chaos)).min(duration.max(at + Duration::from_secs(5)));
        let mut next_command = at + g.gap(workload.command_rate);
        let mut next_fault = at + g.gap(workload.fault_rate);
        loop {
            let now = next_command.min(next_fault);
            if now >= window_end {
                break;
            }
            let up: Vec<usize> = (0..n).filter(|i| !down[*i]).collect();
            if now == next_command {
                next_command = now + g.gap(workload.command_rate);
                if let Some(node) = g.pick(&up) {
                    let session = g.below(layout.sessions);
                    let op = g.op(&layout);
                    let wait = g.rng.chance(0.25);
                    steps.push(Step {
                        at: now,
                        action: Action::Op {
                            node,
                            session,
                            op,
                            wait,
                        },
                    });
                }
                continue;
            }
            next_fault = now + g.gap(workload.fault_rate);
            let downs: Vec<usize> = (0..n).filter(|i| down[*i]).collect();
            let primaries_up: Vec<usize> = up
                .iter()
                .copied()
                .filter(|i| layout.is_primary(*i))
                .collect();
            let action = match g.below(100) {
                0..22 if n >= 2 => {
                    let parts = if n >= 6 && g.rng.chance(0.3) { 3 } else { 2 };
                    Action::Partition {
                        groups: g.split(n, parts),
                        oneway: false,
                    }
                }
                22..32 if n >= 2 => Action::Partition {
                    groups: g.split(n, 2),
                    oneway: true,
                },
                32..44 => {
                    let faults = FaultSpec {
                        loss: g.rng.next_f64() * 0.25,
                        delay_ms: g.rng.below(150),
                        jitter_ms: g.rng.below(300),
                        duplicate: g.rng.next_f64() * 0.1,
                    };
                    let between = (n >= 4 && g.rng.chance(0.5)).then(|| {
                        let mut split = g.split(n, 2);
                        let b = split.pop().unwrap_or_default();
                        let a = split.pop().unwrap_or_default();
                        (a, b)
                    });
                    Action::Degrade { between, faults }
                }
                44..58 if up.len() * 2 > n + 1 => match g.pick(&up) {
                    Some(node) => {
                        down[node] = true;
                        Action::Crash {
                            node,
                            mode: if g.rng.chance(0.7) {
                                CrashMode::Agent
                            } else {
                                CrashMode::Host
                            },
                        }
                    }
                    None => continue,
                },
                58..68 => match g.pick(&downs) {
                    Some(node) => {
                        down[node] = false;
                        Action::Restart {
                            node,
                            disk: if g.rng.chance(0.75) {
                                Disk::Kept
                            } else {
                                Disk::Lost
                            },
                        }
                    }
                    None => continue,
                },
                68..76 => match g.pick(&up) {
                    Some(node) => Action::Skew {
                        node,
                        offset_ms: g.rng.below(20_001) as i64 - 10_000,
                    },
                    None => continue,
                },
                76..86 => match g.pick(&primaries_up) {
                    Some(node) => Action::MonitorCrash {
                        node,
                        session: g.below(layout.sessions),
                    },
                    None => continue,
                },
                86..94 => match g.pick(&primaries_up) {
                    Some(node) => Action::MonitorHang {
                        node,
                        session: g.below(layout.sessions),
                    },
                    None => continue,
                },
                _ => Action::Heal,
            };
            steps.push(Step { at: now, action });
        }
        at = window_end;
        steps.push(Step {
            at,
            action: Action::Heal,
        });
        for (node, is_down) in down.iter_mut().enumerate() {
            if *is_down {
                *is_down = false;
                steps.push(Step {
                    at,
                    action: Action::Restart {
                        node,
                        disk: if g.rng.chance(0.75) {
                            Disk::Kept
                        } else {
                            Disk::Lost
                        },
                    },
                });
            }
        }
        steps.push(Step {
            at,
            action: Action::Check,
        });
        at += workload.quiet;
    }
    Scenario {
        name: "random".into(),
        layout,
        steps,
        duration: at.max(duration),
        seed,
    }
}
