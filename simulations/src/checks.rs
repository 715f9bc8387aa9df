//! The invariants, evaluated on the live nodes of a [`SimCluster`].
//!
//! After a heal and a quiet period (and at the end of a run):
//! - **replicas equal**: every live node's converged replica is the same;
//! - **monitors match**: on every live node the simulated monitors are exactly those
//!   its converged view requires: one running monitor per Started session on a node
//!   hosting the primary volume, obeying the latest restart-requiring configuration;
//!   for a Paused session one frozen monitor, or none (gluster pauses only a running
//!   monitor, so a session paused while its monitor was down has none until resumed);
//!   none for Created, Stopped or deleted sessions, none on other nodes;
//! - **acknowledged writes reflected**: every command `Agent::op` acknowledged is held
//!   by every live replica at its stamp or superseded by a later write (LWW), unless
//!   its only copies died with lost disks (counted separately);
//! - **membership agrees**: every live node sees every live node live, in the
//!   generation it currently runs;
//! - **events equal and gap-free**: every live node's merged event stream is the same,
//!   with no gap (retention is not exercised here: a gap means an event was lost);
//! - **every event reached the webhook receiver**: every event of that stream stamped
//!   after the cluster's webhook was added was acknowledged by the simulated receiver
//!   (which refuses deliveries 1.4 s of every 7 s) at least once.
//!
//! At every sample (continuously):
//! - **one monitor per session per node**: never two live monitors of one session on a
//!   node;
//! - **truthful acknowledgements**: a node a command response lists as confirmed held
//!   the write when the response was given (checked as each command returns), unless
//!   its disk was lost since the command was issued: then its confirmation spoke for
//!   the incarnation before, and "acknowledged commands reflected" holds the new one to
//!   the write at the next quiet check.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use georep_agent::{MONITOR_PREFIX, NodeSessionStatus};
use georep_mesh::codec;
use georep_mesh::{DesiredState, Replica, SessionId, SessionRecord};
use serde::Serialize;

use crate::cluster::{SimCluster, lock};
use crate::ledger::reflects;

/// Name of the event-stream invariant.
pub const EVENTS_INVARIANT: &str = "events equal and gap-free on every node";
/// The name of the webhook invariant in reports.
pub const WEBHOOK_INVARIANT: &str = "every event reached the webhook receiver";

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    /// Which invariant.
    pub invariant: String,
    /// Virtual ms when it was found.
    pub at_ms: u64,
    /// The first differing state, in words.
    pub detail: String,
}

/// What one live node looks like to the checker.
struct NodeState {
    index: usize,
    id: String,
    primary: bool,
    replica: Replica,
}

fn live_states(cluster: &SimCluster) -> Vec<NodeState> {
    cluster
        .nodes
        .iter()
        .filter_map(|node| {
            Some(NodeState {
                index: node.index,
                id: node.id.clone(),
                primary: node.is_primary(),
                replica: node.replica()?,
            })
        })
        .collect()
}

fn describe_record(record: Option<&SessionRecord>) -> String {
    let Some(record) = record else {
        return "absent".into();
    };
    let mut out = String::new();
    let view = record.view();
    let _ = write!(
        out,
        "exists={} desired={} registers:",
        view.exists, view.desired
    );
    for (name, stamp) in record.registers() {
        let _ = write!(out, " {name}@{stamp}");
    }
    out
}

/// The first session on which two replicas differ, in words.
pub fn first_difference(a_id: &str, a: &Replica, b_id: &str, b: &Replica) -> Option<String> {
    let sessions: std::collections::BTreeSet<&SessionId> =
        a.sessions.keys().chain(b.sessions.keys()).collect();
    for session in sessions {
        let ra = a.sessions.get(session);
        let rb = b.sessions.get(session);
        if ra != rb {
            return Some(format!(
                "session {session}:\n    {a_id}: {}\n    {b_id}: {}",
                describe_record(ra),
                describe_record(rb)
            ));
        }
    }
    None
}

fn replicas_equal(states: &[NodeState]) -> Result<(), String> {
    let Some(first) = states.first() else {
        return Ok(());
    };
    for other in &states[1..] {
        if other.replica != first.replica {
            return Err(
                first_difference(&first.id, &first.replica, &other.id, &other.replica)
                    .unwrap_or_else(|| format!("{} and {} differ", first.id, other.id)),
            );
        }
    }
    Ok(())
}

/// Required monitor state of a session on a node: `None` = no monitor, `Some(frozen)`.
/// A session another one between the same volumes supersedes runs none.
fn required(primary: bool, record: &SessionRecord, superseded: bool) -> Option<bool> {
    let view = record.view();
    if !primary || !view.exists || superseded {
        return None;
    }
    match view.desired {
        DesiredState::Started => Some(false),
        DesiredState::Paused => Some(true),
        DesiredState::Stopped | DesiredState::Created => None,
    }
}

async fn monitors_match(cluster: &SimCluster, state: &NodeState) -> Result<(), String> {
    let node = &cluster.nodes[state.index];
    let running = node.backend.monitors();
    let mut sessions: std::collections::BTreeSet<SessionId> = running.keys().cloned().collect();
    sessions.extend(state.replica.sessions.keys().cloned());
    let statuses = match node.agent() {
        Some(agent) => agent
            .mesh()
            .owned_values(MONITOR_PREFIX)
            .await
            .remove(&node.id)
            .unwrap_or_default(),
        None => BTreeMap::new(),
    };
    let superseded = state.replica.superseded();
    for session in sessions {
        let record = state.replica.sessions.get(&session);
        let need =
            record.and_then(|r| required(state.primary, r, superseded.contains_key(&session)));
        let live = running.get(&session).cloned().unwrap_or_default();
        let desired = record.map_or("unknown".to_string(), |r| {
            let view = r.view();
            if view.exists {
                view.desired.to_string()
            } else {
                "deleted".into()
            }
        });
        match (need, live.as_slice()) {
            (None, []) => {}
            (None, monitors) => {
                return Err(format!(
                    "{}: session {session} is {desired}{} but {} monitor(s) run (pids {:?})",
                    state.id,
                    if state.primary {
                        ""
                    } else {
                        " (not a primary node)"
                    },
                    monitors.len(),
                    monitors.iter().map(|m| m.pid).collect::<Vec<_>>()
                ));
            }
            // gluster pauses only a running monitor: a session paused while its
            // monitor was not running (stopped, crashed and backing off) has none.
            (Some(true), []) => {}
            (Some(false), []) => {
                return Err(format!(
                    "{}: session {session} is {desired} but no monitor runs",
                    state.id
                ));
            }
            (Some(frozen), [monitor]) => {
                if monitor.stopped != frozen {
                    return Err(format!(
                        "{}: session {session} is {desired} but its monitor (pid {}) is {}",
                        state.id,
                        monitor.pid,
                        if monitor.stopped { "frozen" } else { "running" }
                    ));
                }
                if !frozen && let Some(record) = record {
                    let view = record.view();
                    let wanted = view.restart_stamp(record);
                    let key = format!("{MONITOR_PREFIX}{}", session.key());
                    let report = statuses
                        .get(&key)
                        .and_then(|v| codec::decode::<NodeSessionStatus>(v).ok())
                        .map(|s| s.report);
                    let obeys = report
                        .as_ref()
                        .is_some_and(|r| r.pid == Some(monitor.pid) && r.restart_stamp == wanted);
                    if !obeys {
                        return Err(format!(
                            "{}: session {session}: monitor pid {} should obey restart stamp {:?}, the node reports {:?}",
                            state.id,
                            monitor.pid,
                            wanted,
                            report.map(|r| (r.pid, r.restart_stamp))
                        ));
                    }
                }
            }
            (Some(_), monitors) => {
                return Err(format!(
                    "{}: session {session} is {desired} but {} monitors run (pids {:?})",
                    state.id,
                    monitors.len(),
                    monitors.iter().map(|m| m.pid).collect::<Vec<_>>()
                ));
            }
        }
    }
    Ok(())
}

fn acknowledged_reflected(cluster: &SimCluster, states: &[NodeState]) -> Result<(), String> {
    let ledger = lock(&cluster.ledger);
    for (index, op) in ledger.ops.iter().enumerate() {
        let Some(stamp) = op.stamp() else { continue };
        if ledger.lost_with_disk.contains(&index) {
            continue;
        }
        if let Some(state) = states
            .iter()
            .find(|s| !reflects(&s.replica, &op.session, &op.register, stamp))
        {
            return Err(format!(
                "{} does not reflect acknowledged command #{index}: {}\n    {}: {}",
                state.id,
                op.line(),
                state.id,
                describe_record(state.replica.sessions.get(&op.session))
            ));
        }
    }
    Ok(())
}

/// Every live node sees every live node live, in its current generation.
async fn membership_agrees(cluster: &SimCluster) -> Result<(), String> {
    let current: BTreeMap<String, u64> = cluster
        .nodes
        .iter()
        .filter_map(|n| Some((n.id.clone(), n.agent()?.mesh().generation())))
        .collect();
    for node in &cluster.nodes {
        let Some(agent) = node.agent() else { continue };
        let membership = agent.mesh().membership().await;
        for (id, generation) in &current {
            match membership.members.get(id) {
                Some(member) if member.live && member.generation == *generation => {}
                Some(member) => {
                    return Err(format!(
                        "{} sees {id} {} in generation {} (its current generation is {generation})",
                        node.id,
                        if member.live { "live" } else { "dead" },
                        member.generation
                    ));
                }
                None => return Err(format!("{} does not know {id}", node.id)),
            }
        }
    }
    Ok(())
}

/// Evaluates the quiet-time invariants once; the first broken one, if any.
pub async fn quiet_invariants(cluster: &SimCluster) -> Result<(), Violation> {
    let at_ms = cluster.now_ms();
    let fail = |invariant: &str, detail: String| Violation {
        invariant: invariant.into(),
        at_ms,
        detail,
    };
    let states = live_states(cluster);
    replicas_equal(&states).map_err(|d| fail("replicas equal", d))?;
    acknowledged_reflected(cluster, &states)
        .map_err(|d| fail("acknowledged commands reflected", d))?;
    for state in &states {
        monitors_match(cluster, state)
            .await
            .map_err(|d| fail("monitors match the converged view", d))?;
    }
    membership_agrees(cluster)
        .await
        .map_err(|d| fail("membership agrees", d))?;
    events_equal(cluster).map_err(|d| fail(EVENTS_INVARIANT, d))?;
    webhook_delivered(cluster)
        .await
        .map_err(|d| fail(WEBHOOK_INVARIANT, d))?;
    Ok(())
}

/// Every event of the (equal) merged stream stamped after the webhook was added has
/// reached the receiver at least once.
async fn webhook_delivered(cluster: &SimCluster) -> Result<(), String> {
    use georep_api::types::StreamItem;
    use georep_mesh::Hlc;
    let Some(agent) = cluster.nodes.iter().find_map(|n| n.agent()) else {
        return Ok(());
    };
    let list = agent.webhook_list().await;
    let Some(hook) = list
        .webhooks
        .iter()
        .find(|w| w.url == crate::receiver::SIM_WEBHOOK_URL)
    else {
        return Err("no live node lists the webhook".into());
    };
    let added = Hlc::parse(&hook.added).ok_or("unparsable webhook stamp")?;
    let missing: Vec<String> = agent
        .event_stream()
        .into_iter()
        .filter_map(|item| match item {
            StreamItem::Event(e) => Some(e),
            StreamItem::Gap { .. } => None,
        })
        .filter(|e| Hlc::parse(&e.hlc).is_some_and(|h| h >= added))
        .filter(|e| !cluster.receiver.has(&e.id))
        .map(|e| e.id)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} events never reached the receiver (first {}); {} state {}, pending {}",
            missing.len(),
            missing[0],
            hook.url,
            hook.state,
            hook.pending
        ))
    }
}

/// Every live node holds the same merged event stream, without gaps.
fn events_equal(cluster: &SimCluster) -> Result<(), String> {
    use georep_api::types::StreamItem;
    let mut reference: Option<(String, Vec<StreamItem>)> = None;
    for node in &cluster.nodes {
        let Some(agent) = node.agent() else { continue };
        let stream = agent.event_stream();
        if let Some(StreamItem::Gap { gap }) =
            stream.iter().find(|i| matches!(i, StreamItem::Gap { .. }))
        {
            return Err(format!(
                "{} has a gap: events {}..{} of {}",
                node.id, gap.from, gap.to, gap.origin
            ));
        }
        match &reference {
            None => reference = Some((node.id.clone(), stream)),
            Some((id, theirs)) => {
                if *theirs != stream {
                    let id_of = |i: &StreamItem| match i {
                        StreamItem::Event(e) => e.id.clone(),
                        StreamItem::Gap { gap } => format!("gap of {}", gap.origin),
                    };
                    let at = theirs
                        .iter()
                        .zip(&stream)
                        .position(|(a, b)| a != b)
                        .unwrap_or(theirs.len().min(stream.len()));
                    let ranges = |n: &str| {
                        cluster
                            .nodes
                            .iter()
                            .find(|x| x.id == n)
                            .and_then(|x| x.agent())
                            .map(|a| format!("{:?}", a.event_ranges()))
                            .unwrap_or_default()
                    };
                    return Err(format!(
                        "{id} holds {} events ({}), {} holds {} ({}); first difference at #{at}: {} vs {}",
                        theirs.len(),
                        ranges(id),
                        node.id,
                        stream.len(),
                        ranges(&node.id),
                        theirs.get(at).map_or("nothing".into(), id_of),
                        stream.get(at).map_or("nothing".into(), id_of),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The invariants that must hold at every instant.
pub fn continuous_invariants(cluster: &SimCluster) -> Result<(), Violation> {
    let at_ms = cluster.now_ms();
    for node in &cluster.nodes {
        for (session, monitors) in node.backend.monitors() {
            if monitors.len() > 1 {
                return Err(Violation {
                    invariant: "at most one monitor per session per node".into(),
                    at_ms,
                    detail: format!(
                        "{}: {} monitors of session {session} run (pids {:?})",
                        node.id,
                        monitors.len(),
                        monitors.iter().map(|m| m.pid).collect::<Vec<_>>()
                    ),
                });
            }
        }
    }
    if let Some(broken) = lock(&cluster.ledger).violations.first() {
        return Err(Violation {
            invariant: "acknowledgements are truthful".into(),
            at_ms,
            detail: broken.clone(),
        });
    }
    Ok(())
}
