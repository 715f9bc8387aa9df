//! The reconciler's decision: given what the converged view requires of this node and
//! what its monitors are doing, which signals to send and which monitors to start.
//!
//! [`decide`] is a pure function (no I/O, no clock: `now` is a parameter) and
//! level-triggered: it looks only at the current requirement and observation, never at
//! what changed, so calling it again after its actions were applied yields nothing new.
//! [`crate::supervise::Supervisor`] applies the actions and feeds back the observation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use georep_mesh::Hlc;
use georep_mesh::{DesiredState, SessionId};
use tokio::time::Instant;

/// How long a monitor gets between SIGTERM and SIGKILL.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// What the converged view requires of this node for one existing session.
///
/// Sessions that are deleted have no plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPlan {
    /// Which session.
    pub id: SessionId,
    /// The desired run state.
    pub desired: DesiredState,
    /// Stamp of the desired-state register (reported back once acted on).
    pub desired_stamp: Option<Hlc>,
    /// The stamp a running monitor must have been started for (see
    /// [`georep_mesh::SessionView::restart_stamp`]).
    pub restart_stamp: Option<Hlc>,
    /// This node's bricks of the session's primary volume; empty when this node is not
    /// a primary node of the session.
    pub local_bricks: Vec<String>,
}

impl SessionPlan {
    /// Whether this node hosts bricks of the session's primary volume.
    pub fn is_primary(&self) -> bool {
        !self.local_bricks.is_empty()
    }
}

/// Why a monitor must not run on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// The session's desired state is Stopped or Created.
    Desired(DesiredState),
    /// This node hosts no brick of the session's primary volume.
    NotPrimary,
    /// The session was deleted (no plan).
    Deleted,
}

impl fmt::Display for StopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopCause::Desired(state) => write!(f, "desired {state}"),
            StopCause::NotPrimary => f.write_str("this node has no brick of the primary volume"),
            StopCause::Deleted => f.write_str("the session was deleted"),
        }
    }
}

/// What a plan asks of the local monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Running.
    Run,
    /// Present but frozen (SIGSTOP).
    Frozen,
    /// No monitor, and why.
    Absent(StopCause),
}

impl Need {
    /// What `plan` (`None`: the session is gone) asks of the local monitor.
    pub fn of(plan: Option<&SessionPlan>) -> Need {
        match plan {
            None => Need::Absent(StopCause::Deleted),
            Some(plan) if !plan.is_primary() => Need::Absent(StopCause::NotPrimary),
            Some(plan) => match plan.desired {
                DesiredState::Started => Need::Run,
                DesiredState::Paused => Need::Frozen,
                other @ (DesiredState::Stopped | DesiredState::Created) => {
                    Need::Absent(StopCause::Desired(other))
                }
            },
        }
    }
}

/// What the supervisor knows about a session's local monitor. A session with no
/// monitor and no pending retry has no entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObservedMonitor {
    /// A monitor process runs (as far as we know) and nobody asked it to exit.
    Running {
        /// Its pid, which is also its process group id.
        pid: u32,
        /// Whether we SIGSTOPped its group (and have not SIGCONTed it since).
        sigstopped: bool,
        /// The restart stamp it was started for.
        restart_stamp: Option<Hlc>,
    },
    /// SIGTERM was sent at `since`; the process has not exited yet.
    Stopping {
        /// Its pid.
        pid: u32,
        /// When SIGTERM was sent.
        since: Instant,
        /// Whether SIGKILL was sent too.
        kill_sent: bool,
    },
    /// No process: the last one crashed (or could not be started); retry from `until`.
    Backoff {
        /// Earliest time of the next spawn.
        until: Instant,
    },
}

/// One thing to do to a session's monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a monitor for the plan's restart stamp.
    Spawn {
        /// Which session.
        id: SessionId,
        /// The restart stamp the new monitor obeys.
        restart_stamp: Option<Hlc>,
        /// Whether this retries after a crash or a failed spawn.
        retry: bool,
    },
    /// SIGTERM the monitor's group (then SIGCONT if it was stopped, so the pending
    /// SIGTERM is delivered).
    Terminate {
        /// Which session.
        id: SessionId,
        /// The monitor's pid (= process group).
        pid: u32,
        /// Why it must go.
        cause: StopCause,
        /// Whether to SIGCONT after SIGTERM.
        resume: bool,
    },
    /// SIGKILL the group: it outlived the kill grace after SIGTERM.
    Kill {
        /// Which session.
        id: SessionId,
        /// The monitor's pid (= process group).
        pid: u32,
    },
    /// SIGSTOP the group (gluster's pause).
    Pause {
        /// Which session.
        id: SessionId,
        /// The monitor's pid (= process group).
        pid: u32,
    },
    /// SIGCONT the group (gluster's resume).
    Resume {
        /// Which session.
        id: SessionId,
        /// The monitor's pid (= process group).
        pid: u32,
    },
    /// SIGTERM the group (SIGCONT too if stopped) so that a monitor for the new restart
    /// stamp is spawned once it has exited.
    Restart {
        /// Which session.
        id: SessionId,
        /// The monitor's pid (= process group).
        pid: u32,
        /// The stamp the running monitor obeys.
        from: Option<Hlc>,
        /// The stamp the plan requires.
        to: Option<Hlc>,
        /// Whether to SIGCONT after SIGTERM.
        resume: bool,
    },
    /// Drop the crash backoff of a session that no longer needs a monitor, so that a
    /// later start begins afresh.
    Forget {
        /// Which session.
        id: SessionId,
        /// Why no monitor is needed.
        cause: StopCause,
    },
}

impl Action {
    /// The action's kind, as a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Spawn { .. } => "spawn",
            Action::Terminate { .. } => "terminate",
            Action::Kill { .. } => "kill",
            Action::Pause { .. } => "pause",
            Action::Resume { .. } => "resume",
            Action::Restart { .. } => "restart",
            Action::Forget { .. } => "forget",
        }
    }

    /// The session acted on.
    pub fn session(&self) -> &SessionId {
        match self {
            Action::Spawn { id, .. }
            | Action::Terminate { id, .. }
            | Action::Kill { id, .. }
            | Action::Pause { id, .. }
            | Action::Resume { id, .. }
            | Action::Restart { id, .. }
            | Action::Forget { id, .. } => id,
        }
    }
}

/// Tunables of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidePolicy {
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
}

impl Default for DecidePolicy {
    fn default() -> Self {
        Self {
            kill_grace: DEFAULT_KILL_GRACE,
        }
    }
}

/// Compares what `plans` require with what is `observed` and returns the actions that
/// close the gap, in session order.
pub fn decide(
    plans: &BTreeMap<SessionId, SessionPlan>,
    observed: &BTreeMap<SessionId, ObservedMonitor>,
    now: Instant,
    policy: &DecidePolicy,
) -> Vec<Action> {
    let ids: BTreeSet<&SessionId> = plans.keys().chain(observed.keys()).collect();
    ids.into_iter()
        .filter_map(|id| decide_one(id, plans.get(id), observed.get(id), now, policy))
        .collect()
}

fn decide_one(
    id: &SessionId,
    plan: Option<&SessionPlan>,
    observed: Option<&ObservedMonitor>,
    now: Instant,
    policy: &DecidePolicy,
) -> Option<Action> {
    let need = Need::of(plan);
    let id = id.clone();
    let spawn = |retry| Action::Spawn {
        id: id.clone(),
        restart_stamp: plan.and_then(|p| p.restart_stamp.clone()),
        retry,
    };
    match observed {
        None => (need == Need::Run).then(|| spawn(false)),
        Some(ObservedMonitor::Backoff { until }) => match need {
            Need::Run => (now >= *until).then(|| spawn(true)),
            // A paused session keeps its retry pending: gluster only pauses a monitor
            // that runs, so there is nothing to start until it is resumed.
            Need::Frozen => None,
            Need::Absent(cause) => Some(Action::Forget { id, cause }),
        },
        Some(ObservedMonitor::Stopping {
            pid,
            since,
            kill_sent,
        }) => (!kill_sent && now >= *since + policy.kill_grace)
            .then_some(Action::Kill { id, pid: *pid }),
        Some(ObservedMonitor::Running {
            pid,
            sigstopped,
            restart_stamp,
        }) => {
            let pid = *pid;
            match need {
                Need::Run => {
                    let wanted = plan.and_then(|p| p.restart_stamp.clone());
                    if *restart_stamp != wanted {
                        Some(Action::Restart {
                            id,
                            pid,
                            from: restart_stamp.clone(),
                            to: wanted,
                            resume: *sigstopped,
                        })
                    } else if *sigstopped {
                        Some(Action::Resume { id, pid })
                    } else {
                        None
                    }
                }
                // A restart-requiring change made while paused waits for the resume:
                // restarting would unfreeze the session, and a paused session must not
                // spawn anything.
                Need::Frozen => (!sigstopped).then_some(Action::Pause { id, pid }),
                Need::Absent(cause) => Some(Action::Terminate {
                    id,
                    pid,
                    cause,
                    resume: *sigstopped,
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(name: &str) -> SessionId {
        SessionId::parse(name, "n4::sv").unwrap()
    }

    fn stamp(n: u64) -> Option<Hlc> {
        Some(Hlc::new(n, 0, "n1"))
    }

    fn plan(id: &SessionId, desired: DesiredState, restart: u64) -> SessionPlan {
        SessionPlan {
            id: id.clone(),
            desired,
            desired_stamp: stamp(restart + 100),
            restart_stamp: stamp(restart),
            local_bricks: vec!["/b1".into()],
        }
    }

    fn plans(list: &[SessionPlan]) -> BTreeMap<SessionId, SessionPlan> {
        list.iter().map(|p| (p.id.clone(), p.clone())).collect()
    }

    fn running(pid: u32, sigstopped: bool, restart: u64) -> ObservedMonitor {
        ObservedMonitor::Running {
            pid,
            sigstopped,
            restart_stamp: stamp(restart),
        }
    }

    /// Applies actions the way a perfect supervisor would, processes never exiting on
    /// their own: what `decide` sees on its next call.
    fn apply(
        observed: &mut BTreeMap<SessionId, ObservedMonitor>,
        actions: &[Action],
        now: Instant,
    ) {
        for action in actions {
            let id = action.session().clone();
            match action {
                Action::Spawn { restart_stamp, .. } => {
                    let pid = 1000 + observed.len() as u32;
                    observed.insert(
                        id,
                        ObservedMonitor::Running {
                            pid,
                            sigstopped: false,
                            restart_stamp: restart_stamp.clone(),
                        },
                    );
                }
                Action::Terminate { pid, .. } | Action::Restart { pid, .. } => {
                    observed.insert(
                        id,
                        ObservedMonitor::Stopping {
                            pid: *pid,
                            since: now,
                            kill_sent: false,
                        },
                    );
                }
                Action::Kill { .. } => {
                    if let Some(ObservedMonitor::Stopping { kill_sent, .. }) = observed.get_mut(&id)
                    {
                        *kill_sent = true;
                    }
                }
                Action::Pause { .. } | Action::Resume { .. } => {
                    if let Some(ObservedMonitor::Running { sigstopped, .. }) = observed.get_mut(&id)
                    {
                        *sigstopped = matches!(action, Action::Pause { .. });
                    }
                }
                Action::Forget { .. } => {
                    observed.remove(&id);
                }
            }
        }
    }

    /// Runs decide, applies its actions, and checks a second decide at the same instant
    /// is empty.
    fn step(
        plans: &BTreeMap<SessionId, SessionPlan>,
        observed: &mut BTreeMap<SessionId, ObservedMonitor>,
        now: Instant,
    ) -> Vec<Action> {
        let policy = DecidePolicy::default();
        let actions = decide(plans, observed, now, &policy);
        apply(observed, &actions, now);
        assert_eq!(
            decide(plans, observed, now, &policy),
            vec![],
            "not idempotent after {actions:?}"
        );
        actions
    }

    #[test]
    fn started_primary_spawns_exactly_one_monitor() {
        let id = sid("gv0");
        let plans = plans(&[plan(&id, DesiredState::Started, 1)]);
        let mut observed = BTreeMap::new();
        let now = Instant::now();
        let actions = step(&plans, &mut observed, now);
        assert_eq!(
            actions,
            vec![Action::Spawn {
                id: id.clone(),
                restart_stamp: stamp(1),
                retry: false
            }]
        );
        assert_eq!(
            step(&plans, &mut observed, now + Duration::from_secs(60)),
            vec![]
        );
        assert!(matches!(observed[&id], ObservedMonitor::Running { .. }));
    }

    #[test]
    fn started_in_backoff_waits_until_expiry_then_retries() {
        let id = sid("gv0");
        let plans = plans(&[plan(&id, DesiredState::Started, 1)]);
        let now = Instant::now();
        let until = now + Duration::from_secs(2);
        let mut observed = BTreeMap::from([(id.clone(), ObservedMonitor::Backoff { until })]);
        assert_eq!(step(&plans, &mut observed, now), vec![]);
        assert_eq!(
            step(&plans, &mut observed, until - Duration::from_millis(1)),
            vec![]
        );
        let actions = step(&plans, &mut observed, until);
        assert_eq!(
            actions,
            vec![Action::Spawn {
                id,
                restart_stamp: stamp(1),
                retry: true
            }]
        );
    }

    #[test]
    fn started_resumes_a_monitor_stopped_by_us() {
        let id = sid("gv0");
        let plans = plans(&[plan(&id, DesiredState::Started, 1)]);
        let mut observed = BTreeMap::from([(id.clone(), running(7, true, 1))]);
        let actions = step(&plans, &mut observed, Instant::now());
        assert_eq!(
            actions,
            vec![Action::Resume {
                id: id.clone(),
                pid: 7
            }]
        );
        assert_eq!(observed[&id], running(7, false, 1));
    }

    #[test]
    fn restart_stamp_change_restarts_and_respawns_after_exit() {
        let id = sid("gv0");
        let plans = plans(&[plan(&id, DesiredState::Started, 2)]);
        let mut observed = BTreeMap::from([(id.clone(), running(7, false, 1))]);
        let now = Instant::now();
        let actions = step(&plans, &mut observed, now);
        assert_eq!(
            actions,
            vec![Action::Restart {
                id: id.clone(),
                pid: 7,
                from: stamp(1),
                to: stamp(2),
                resume: false
            }]
        );
        // still exiting: no second monitor beside it
        assert_eq!(
            step(&plans, &mut observed, now + Duration::from_secs(1)),
            vec![]
        );
        observed.remove(&id);
        let actions = step(&plans, &mut observed, now + Duration::from_secs(2));
        assert_eq!(
            actions,
            vec![Action::Spawn {
                id,
                restart_stamp: stamp(2),
                retry: false
            }]
        );
    }

    #[test]
    fn restart_of_a_sigstopped_monitor_also_continues_it() {
        let id = sid("gv0");
        let plans = plans(&[plan(&id, DesiredState::Started, 2)]);
        let mut observed = BTreeMap::from([(id.clone(), running(7, true, 1))]);
        let actions = step(&plans, &mut observed, Instant::now());
        assert!(
            matches!(actions[..], [Action::Restart { resume: true, .. }]),
            "{actions:?}"
        );
    }

    #[test]
    fn paused_primary_sigstops_the_running_monitor() {
        let id = sid("gv0");
        let plans = plans(&[plan(&id, DesiredState::Paused, 1)]);
        let mut observed = BTreeMap::from([(id.clone(), running(7, false, 1))]);
        let actions = step(&plans, &mut observed, Instant::now());
        assert_eq!(
            actions,
            vec![Action::Pause {
                id: id.clone(),
                pid: 7
            }]
        );
        assert_eq!(observed[&id], running(7, true, 1));
    }

    #[test]
    fn paused_without_a_monitor_spawns_nothing() {
        let id = sid("gv0");
        let plans = plans(&[plan(&id, DesiredState::Paused, 1)]);
        let now = Instant::now();
        let mut observed = BTreeMap::new();
        assert_eq!(step(&plans, &mut observed, now), vec![]);
        let mut observed = BTreeMap::from([(id, ObservedMonitor::Backoff { until: now })]);
        assert_eq!(
            step(&plans, &mut observed, now + Duration::from_secs(100)),
            vec![]
        );
    }

    #[test]
    fn paused_defers_a_restart_until_resumed() {
        let id = sid("gv0");
        let now = Instant::now();
        let paused = plans(&[plan(&id, DesiredState::Paused, 2)]);
        let mut observed = BTreeMap::from([(id.clone(), running(7, true, 1))]);
        assert_eq!(step(&paused, &mut observed, now), vec![]);
        let started = plans(&[plan(&id, DesiredState::Started, 2)]);
        let actions = step(&started, &mut observed, now);
        assert!(
            matches!(
                actions[..],
                [Action::Restart {
                    pid: 7,
                    resume: true,
                    ..
                }]
            ),
            "{actions:?}"
        );
    }

    #[test]
    fn every_stop_cause_terminates_then_kills_after_grace() {
        let id = sid("gv0");
        let mut not_primary = plan(&id, DesiredState::Started, 1);
        not_primary.local_bricks.clear();
        let cases = [
            (
                plans(&[plan(&id, DesiredState::Stopped, 1)]),
                StopCause::Desired(DesiredState::Stopped),
            ),
            (
                plans(&[plan(&id, DesiredState::Created, 1)]),
                StopCause::Desired(DesiredState::Created),
            ),
            (plans(&[not_primary]), StopCause::NotPrimary),
            (BTreeMap::new(), StopCause::Deleted),
        ];
        for (plans, cause) in cases {
            let now = Instant::now();
            let mut observed = BTreeMap::from([(id.clone(), running(7, false, 1))]);
            let actions = step(&plans, &mut observed, now);
            assert_eq!(
                actions,
                vec![Action::Terminate {
                    id: id.clone(),
                    pid: 7,
                    cause,
                    resume: false
                }]
            );
            let grace = DEFAULT_KILL_GRACE;
            assert_eq!(
                step(
                    &plans,
                    &mut observed,
                    now + grace - Duration::from_millis(1)
                ),
                vec![]
            );
            let actions = step(&plans, &mut observed, now + grace);
            assert_eq!(
                actions,
                vec![Action::Kill {
                    id: id.clone(),
                    pid: 7
                }]
            );
            // SIGKILL once; then wait for the exit
            assert_eq!(step(&plans, &mut observed, now + grace * 10), vec![]);
            observed.remove(&id);
            assert_eq!(step(&plans, &mut observed, now + grace * 11), vec![]);
        }
    }

    #[test]
    fn terminating_a_paused_monitor_continues_it_so_sigterm_is_delivered() {
        let id = sid("gv0");
        let plans = plans(&[plan(&id, DesiredState::Stopped, 1)]);
        let mut observed = BTreeMap::from([(id.clone(), running(7, true, 1))]);
        let actions = step(&plans, &mut observed, Instant::now());
        assert!(
            matches!(actions[..], [Action::Terminate { resume: true, .. }]),
            "{actions:?}"
        );
    }

    #[test]
    fn monitor_exiting_for_a_restart_is_killed_after_grace_too() {
        let id = sid("gv0");
        let plans = plans(&[plan(&id, DesiredState::Started, 2)]);
        let now = Instant::now();
        let mut observed = BTreeMap::from([(
            id.clone(),
            ObservedMonitor::Stopping {
                pid: 7,
                since: now,
                kill_sent: false,
            },
        )]);
        assert_eq!(step(&plans, &mut observed, now), vec![]);
        let actions = step(&plans, &mut observed, now + DEFAULT_KILL_GRACE);
        assert_eq!(actions, vec![Action::Kill { id, pid: 7 }]);
    }

    #[test]
    fn backoff_of_a_session_that_needs_no_monitor_is_forgotten() {
        let id = sid("gv0");
        let plans = plans(&[plan(&id, DesiredState::Stopped, 1)]);
        let now = Instant::now();
        let mut observed = BTreeMap::from([(
            id.clone(),
            ObservedMonitor::Backoff {
                until: now + Duration::from_secs(30),
            },
        )]);
        let actions = step(&plans, &mut observed, now);
        assert_eq!(
            actions,
            vec![Action::Forget {
                id,
                cause: StopCause::Desired(DesiredState::Stopped)
            }]
        );
        assert!(observed.is_empty());
    }

    #[test]
    fn stopped_created_and_not_primary_without_monitor_do_nothing() {
        let id = sid("gv0");
        let mut not_primary = plan(&id, DesiredState::Started, 1);
        not_primary.local_bricks.clear();
        for list in [
            vec![plan(&id, DesiredState::Stopped, 1)],
            vec![plan(&id, DesiredState::Created, 1)],
            vec![not_primary],
            vec![],
        ] {
            let mut observed = BTreeMap::new();
            assert_eq!(step(&plans(&list), &mut observed, Instant::now()), vec![]);
        }
    }

    #[test]
    fn many_sessions_converge_in_one_round_and_stay_quiet() {
        let ids: Vec<SessionId> = ["a", "b", "c", "d", "e"].iter().map(|n| sid(n)).collect();
        let plans = plans(&[
            plan(&ids[0], DesiredState::Started, 1),
            plan(&ids[1], DesiredState::Paused, 1),
            plan(&ids[2], DesiredState::Stopped, 1),
            plan(&ids[3], DesiredState::Started, 3),
        ]);
        let mut observed = BTreeMap::from([
            (ids[1].clone(), running(11, false, 1)),
            (ids[2].clone(), running(12, false, 1)),
            (ids[3].clone(), running(13, true, 2)),
            (ids[4].clone(), running(14, true, 1)),
        ]);
        let now = Instant::now();
        let actions = step(&plans, &mut observed, now);
        let kinds: Vec<(&str, &str)> = actions
            .iter()
            .map(|a| {
                let kind = match a {
                    Action::Spawn { .. } => "spawn",
                    Action::Pause { .. } => "pause",
                    Action::Terminate { .. } => "terminate",
                    Action::Restart { .. } => "restart",
                    _ => "other",
                };
                (a.session().primary_volume.as_str(), kind)
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("a", "spawn"),
                ("b", "pause"),
                ("c", "terminate"),
                ("d", "restart"),
                ("e", "terminate")
            ]
        );
        for later in 1..4 {
            let at = now + Duration::from_millis(1000 * later);
            assert_eq!(
                decide(&plans, &observed, at, &DecidePolicy::default()),
                vec![]
            );
        }
    }
}
