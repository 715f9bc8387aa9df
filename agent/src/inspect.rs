//! Gossip-state inspection: what the local agent knows about every node, every session
//! register and every raw key, why a monitor is or is not running on a node, where two
//! nodes' views differ, and a stopped agent's persisted state (see
//! [`georep_api::inspect`] for the JSON).
//!
//! The answers are built in two steps: the `Agent` methods gather a snapshot (membership,
//! replica, raw namespaces), and pure functions ([`convergence`], [`explain_reason`],
//! [`explain_text`], [`diff_frontiers`], [`decode_value`]) turn it into the answer, so
//! the logic is unit-tested without a running mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use georep_mesh::codec;
use georep_mesh::hlc::Hlc;
use georep_mesh::node::{MeshNode, NODE_KEY, SEEN_KEY, SESSION_PREFIX, WriteReceipt};
use georep_mesh::state::{DesiredState, SessionId, SessionRecord, SessionView, StateError};
use georep_mesh::view::{Brick, Member, Membership, NodeInfo, Seen, WritePosition};
use serde_json::{Value, json};

use crate::agent::{Agent, ApiError, MONITOR_PREFIX, NodeSessionStatus};
use crate::monitor_report::{MonitorReport, MonitorState};
use georep_api::inspect::{
    Carrier, Convergence, ConvergenceCell, DiffResponse, ExplainReason, ExplainResponse, KeyRow,
    KeysResponse, LatestWrite, MemberRow, MemberStatus, MembersResponse, MonitorView, RegisterRow,
    SeenDiff, SessionInspect, SessionsResponse, WriteDiff,
};

pub use georep_api::inspect::register_values;

impl Agent {
    /// `inspect members`: every node the local agent knows.
    pub async fn inspect_members(&self) -> MembersResponse {
        let membership = self.mesh().membership().await;
        MembersResponse {
            members: membership
                .members
                .values()
                .map(|m| member_row(m, &membership.self_id))
                .collect(),
        }
    }

    /// `inspect sessions [P [S]]`: every register of every session in scope, and which
    /// nodes merged each session's latest write.
    pub async fn inspect_sessions(
        &self,
        primary: Option<&str>,
        secondary: Option<&str>,
    ) -> Result<SessionsResponse, ApiError> {
        let only = match (primary, secondary) {
            (Some(p), Some(s)) => Some(parse(p, s)?),
            _ => None,
        };
        let mesh = self.mesh();
        let replica = mesh.replica();
        let membership = mesh.membership().await;
        let namespaces = session_namespaces(mesh, &membership).await;
        if let Some(id) = &only
            && !replica.sessions.contains_key(id)
        {
            return Err(not_created(id));
        }
        let mut sessions = Vec::new();
        for (id, record) in &replica.sessions {
            if only.as_ref().is_some_and(|o| o != id)
                || primary.is_some_and(|p| p != id.primary_volume)
            {
                continue;
            }
            let key = format!("{SESSION_PREFIX}{}", id.key());
            let latest = latest_write_of(&key, &namespaces);
            let acked = acked_by(mesh, &membership.self_id, id, latest.as_ref()).await;
            let nodes = convergence(&membership, latest.as_ref(), &acked);
            let pick = |state: Convergence| -> Vec<String> {
                nodes
                    .iter()
                    .filter(|c| c.state == state)
                    .map(|c| c.node.clone())
                    .collect()
            };
            let view = record.view();
            // `registers()` and `register_values()` list registers in the same order.
            let registers = record
                .registers()
                .into_iter()
                .zip(register_values(record))
                .map(|((name, stamp), value)| RegisterRow {
                    carried_by: namespaces
                        .iter()
                        .filter(|(_, ns)| {
                            ns.keys.get(&key).is_some_and(|(_, r)| {
                                r.as_ref().is_some_and(|r| r.carries(&name, &stamp))
                            })
                        })
                        .map(|(node, _)| node.clone())
                        .collect(),
                    register: value.register,
                    value: value.value,
                    stamp: value.stamp,
                    writer: value.writer,
                })
                .collect();
            sessions.push(SessionInspect {
                session: id.to_string(),
                key: key.clone(),
                primary_volume: id.primary_volume.clone(),
                secondary_user: id.secondary_user.clone(),
                secondary_host: id.secondary_host.clone(),
                secondary_volume: id.secondary_volume.clone(),
                exists: view.exists,
                desired_state: view.desired.to_string(),
                registers,
                latest_write: latest,
                converged_nodes: pick(Convergence::Merged),
                lagging_nodes: pick(Convergence::Lagging),
                dead_nodes: pick(Convergence::Dead),
                nodes,
            });
        }
        Ok(SessionsResponse {
            local_node: membership.self_id.clone(),
            sessions,
        })
    }

    /// `inspect keys NODE [PREFIX]`: that node's raw namespace as held here, decoded.
    pub async fn inspect_keys(
        &self,
        node: &str,
        prefix: Option<&str>,
    ) -> Result<KeysResponse, ApiError> {
        let membership = self.mesh().membership().await;
        let member = known_member(&membership, node)?;
        let raw = self
            .mesh()
            .raw_keys(node)
            .await
            .ok_or_else(|| unknown_node(&membership, node))?;
        let keys = raw
            .into_iter()
            .filter(|(key, _)| prefix.is_none_or(|p| key.starts_with(p)))
            .map(|(key, (version, value, deleted))| {
                let (kind, decoded) = if deleted {
                    (key_kind(&key), Err("deleted key (tombstone)".to_string()))
                } else {
                    decode_value(&key, &value)
                };
                let (decoded, decode_error) = match decoded {
                    Ok(value) => (Some(value), None),
                    Err(error) => (None, Some(error)),
                };
                KeyRow {
                    size: value.len(),
                    kind: kind.to_string(),
                    key,
                    version,
                    deleted,
                    raw: value,
                    decoded,
                    decode_error,
                }
            })
            .collect();
        Ok(KeysResponse {
            node: node.to_string(),
            generation: member.generation,
            held_by: membership.self_id.clone(),
            prefix: prefix.map(str::to_string),
            keys,
        })
    }

    /// `inspect explain P S [--node N]`: why the monitor is or is not running on a node.
    pub async fn inspect_explain(
        &self,
        primary: &str,
        secondary: &str,
        node: Option<&str>,
    ) -> Result<ExplainResponse, ApiError> {
        let id = parse(primary, secondary)?;
        let mesh = self.mesh();
        let replica = mesh.replica();
        let view = replica.view(&id).ok_or_else(|| not_created(&id))?;
        let membership = mesh.membership().await;
        let node = node.unwrap_or(&membership.self_id).to_string();
        let member = known_member(&membership, &node)?;
        let key = format!("{MONITOR_PREFIX}{}", id.key());
        let status = mesh
            .owned_values(&key)
            .await
            .get(&node)
            .and_then(|values| values.get(&key))
            .and_then(|value| codec::decode::<NodeSessionStatus>(value).ok());
        let published_at_ms = status
            .as_ref()
            .map(|s| s.published_at_ms)
            .filter(|at| *at > 0);
        let report_age_ms = published_at_ms.map(|at| self.now_millis().saturating_sub(at));
        let report = status.map(|status| status.report);
        let namespaces = session_namespaces(mesh, &membership).await;
        let latest = latest_write_of(&format!("{SESSION_PREFIX}{}", id.key()), &namespaces);
        let acked = acked_by(mesh, &membership.self_id, &id, latest.as_ref()).await;
        let primary_bricks: Vec<Brick> = member
            .info
            .as_ref()
            .map(|info| info.bricks_of(&id.primary_volume).cloned().collect())
            .unwrap_or_default();
        let facts = ExplainFacts {
            node: &node,
            is_self: node == membership.self_id,
            view: &view,
            live: member.live,
            last_heard_ms: member.last_heard_ms,
            primary_bricks: &primary_bricks,
            hosts_secondary: member.hosts(&id.secondary_volume),
            report: report.as_ref(),
            report_age_ms,
            latest_write: latest.as_ref(),
            seen: Seen::clone(&member.seen),
            acked: acked.contains(&node),
        };
        let reason = explain_reason(&facts);
        let (message, sentences) = explain_text(&facts, reason);
        let merged_latest_write = facts.merged();
        let node_seen = facts.node_seen();
        let hosts_secondary = facts.hosts_secondary;
        Ok(ExplainResponse {
            ok: true,
            session: id.to_string(),
            local_node: membership.self_id.clone(),
            reason,
            message,
            sentences,
            exists: view.exists,
            desired_state: view.desired.to_string(),
            desired_stamp: view.desired_stamp.as_ref().map(ToString::to_string),
            node_live: member.live,
            last_heard_ms: member.last_heard_ms,
            merged_latest_write,
            primary_bricks,
            hosts_secondary,
            monitor: report
                .as_ref()
                .map(|r| monitor_view(r, published_at_ms, report_age_ms)),
            latest_write: latest,
            node_seen,
            node,
        })
    }

    /// `inspect diff A B`: the session writes and frontier entries on which two nodes'
    /// published views differ, as the local agent knows them.
    pub async fn inspect_diff(&self, a: &str, b: &str) -> Result<DiffResponse, ApiError> {
        let membership = self.mesh().membership().await;
        let member_a = known_member(&membership, a)?;
        let member_b = known_member(&membership, b)?;
        let namespaces = session_namespaces(self.mesh(), &membership).await;
        let (writes, seen) = diff_frontiers(a, &member_a.seen, b, &member_b.seen, &namespaces);
        let differs = !writes.is_empty() || !seen.is_empty();
        let message = if differs {
            let only = |pick: fn(&WriteDiff) -> bool| writes.iter().filter(|w| pick(w)).count();
            format!(
                "{a} and {b} differ: {} session write(s) merged by {a} only, {} by {b} only, {} differing seen entr{}",
                only(|w| w.merged_by_a),
                only(|w| w.merged_by_b),
                seen.len(),
                if seen.len() == 1 { "y" } else { "ies" }
            )
        } else {
            format!(
                "no differences: {a} and {b} have merged the same session writes (as {} knows them)",
                membership.self_id
            )
        };
        Ok(DiffResponse {
            a: a.to_string(),
            b: b.to_string(),
            local_node: membership.self_id.clone(),
            differs,
            writes,
            seen,
            message,
        })
    }
}

/// Every known node's `s/` keys as gossiped here (latest generation of each node).
async fn session_namespaces(
    mesh: &MeshNode,
    membership: &Membership,
) -> BTreeMap<String, Namespace> {
    let mut namespaces = BTreeMap::new();
    for member in membership.members.values() {
        let Some(raw) = mesh.raw_keys(&member.node_id).await else {
            continue;
        };
        let keys = raw
            .into_iter()
            .filter(|(key, (_, _, deleted))| key.starts_with(SESSION_PREFIX) && !deleted)
            .map(|(key, (version, value, _))| {
                (key, (version, codec::decode::<SessionRecord>(&value).ok()))
            })
            .collect();
        namespaces.insert(
            member.node_id.clone(),
            Namespace {
                generation: member.generation,
                keys,
            },
        );
    }
    namespaces
}

/// The nodes known here to hold the latest write besides their published frontiers:
/// this node if it holds it, and those that acknowledged its eager push when this node
/// carries it (only a writer hears acknowledgements, and only of its own writes).
async fn acked_by(
    mesh: &MeshNode,
    self_id: &str,
    id: &SessionId,
    latest: Option<&LatestWrite>,
) -> BTreeSet<String> {
    // What `status` and `--wait` count for the same write (this node holding it,
    // pushes acknowledged here) counts here too: one answer everywhere.
    let mut confirmed = BTreeSet::new();
    if let Some(latest) = latest
        && mesh
            .latest_write(id)
            .is_some_and(|(stamp, _, _)| stamp.to_string() == latest.stamp)
        && let Some(progress) = mesh.session_progress(id).await
    {
        confirmed.extend(progress.confirmed);
    }
    confirmed.extend(pushes_acked(mesh, self_id, id, latest).await);
    confirmed
}

/// The nodes that acknowledged this node's eager push of the latest write.
async fn pushes_acked(
    mesh: &MeshNode,
    self_id: &str,
    id: &SessionId,
    latest: Option<&LatestWrite>,
) -> BTreeSet<String> {
    let Some((latest, own)) =
        latest.and_then(|w| Some((w, w.carriers.iter().find(|c| c.origin == self_id)?)))
    else {
        return BTreeSet::new();
    };
    let Some(stamp) = Hlc::parse(&latest.stamp) else {
        return BTreeSet::new();
    };
    let receipt = WriteReceipt {
        session: id.clone(),
        origin: own.origin.clone(),
        position: own.position(),
        stamp,
    };
    mesh.progress(&receipt)
        .await
        .confirmed
        .into_iter()
        .collect()
}

fn parse(primary: &str, secondary: &str) -> Result<SessionId, ApiError> {
    Ok(SessionId::parse(primary, secondary)?)
}

fn not_created(id: &SessionId) -> ApiError {
    StateError::NotCreated(id.clone()).into()
}

fn unknown_node(membership: &Membership, node: &str) -> ApiError {
    let known: Vec<&str> = membership.members.keys().map(String::as_str).collect();
    ApiError::Refused {
        code: georep_api::ErrorCode::UnknownNode,
        session: None,
        message: format!(
            "node `{node}` is not known to {} (known nodes: {}); check the node id with `georep inspect members`",
            membership.self_id,
            known.join(", ")
        ),
    }
}

fn known_member<'a>(membership: &'a Membership, node: &str) -> Result<&'a Member, ApiError> {
    membership
        .members
        .get(node)
        .ok_or_else(|| unknown_node(membership, node))
}

/// A member as `inspect members` shows it.
pub fn member_row(member: &Member, self_id: &str) -> MemberRow {
    let status = if member.scheduled_for_deletion {
        MemberStatus::ScheduledForDeletion
    } else if member.live {
        MemberStatus::Live
    } else {
        MemberStatus::Dead
    };
    MemberRow {
        node: member.node_id.clone(),
        is_self: member.node_id == self_id,
        live: member.live,
        generation: member.generation,
        gossip_addr: member.gossip_addr.to_string(),
        status,
        heartbeat: member.heartbeat,
        last_heard_ms: member.last_heard_ms,
        agent_version: member.info.as_ref().map(|i| i.agent_version.clone()),
        key_count: member.key_count,
        max_version: member.max_version,
        seen: Seen::clone(&member.seen),
    }
}

/// Whether `node`, whose frontier is `seen`, has merged the write at `position` in
/// `origin`'s namespace (a writer has its own writes).
pub fn covers(node: &str, seen: &Seen, origin: &str, position: WritePosition) -> bool {
    node == origin || seen.get(origin).is_some_and(|mine| *mine >= position)
}

/// The newest write of the session stored under `key`: the greatest register stamp any
/// namespace carries, and every namespace that carries it. Custodians republish
/// registers that arrived by push, so one write may sit in several namespaces; the
/// reported origin is the stamp's writer when its namespace carries it, else the
/// lowest node id among the carriers.
pub fn latest_write_of(key: &str, namespaces: &BTreeMap<String, Namespace>) -> Option<LatestWrite> {
    let mut best: Option<Hlc> = None;
    let mut carriers: Vec<Carrier> = Vec::new();
    for (origin, namespace) in namespaces {
        let Some((version, Some(record))) = namespace.keys.get(key) else {
            continue;
        };
        let Some(stamp) = record.max_stamp() else {
            continue;
        };
        let carrier = Carrier {
            origin: origin.clone(),
            generation: namespace.generation,
            version: *version,
        };
        match best.as_ref().map(|b| stamp.cmp(b)) {
            Some(std::cmp::Ordering::Less) => {}
            Some(std::cmp::Ordering::Equal) => carriers.push(carrier),
            _ => {
                best = Some(stamp);
                carriers = vec![carrier];
            }
        }
    }
    let stamp = best?;
    let preferred = carriers
        .iter()
        .find(|c| c.origin == stamp.node)
        .unwrap_or(&carriers[0])
        .clone();
    Some(LatestWrite {
        stamp: stamp.to_string(),
        origin: preferred.origin,
        generation: preferred.generation,
        version: preferred.version,
        carriers,
    })
}

/// Whether `node` (frontier `seen`) has merged `latest`: it acknowledged its push
/// (`acked`), or it covers the write in any namespace that carries it.
pub fn has_merged(node: &str, seen: &Seen, latest: &LatestWrite, acked: bool) -> bool {
    acked
        || covers(node, seen, &latest.origin, latest.position())
        || latest
            .carriers
            .iter()
            .any(|c| covers(node, seen, &c.origin, c.position()))
}

/// One session's column of the convergence matrix: for every known node, whether it
/// merged the latest write (it acknowledged its push, in `acked`, or its published
/// frontier covers it), lags, or is dead.
pub fn convergence(
    membership: &Membership,
    latest: Option<&LatestWrite>,
    acked: &BTreeSet<String>,
) -> Vec<ConvergenceCell> {
    membership
        .members
        .values()
        .map(|member| {
            let seen = latest.and_then(|w| member.seen.get(&w.origin).copied());
            let merged = latest.is_none_or(|w| {
                has_merged(
                    &member.node_id,
                    &member.seen,
                    w,
                    acked.contains(&member.node_id),
                )
            });
            let state = if !member.live {
                Convergence::Dead
            } else if merged {
                Convergence::Merged
            } else {
                Convergence::Lagging
            };
            ConvergenceCell {
                node: member.node_id.clone(),
                state,
                live: member.live,
                merged,
                seen,
            }
        })
        .collect()
}

/// What kind of value a key holds, by its name.
pub fn key_kind(key: &str) -> &'static str {
    if key.starts_with(SESSION_PREFIX) {
        "session"
    } else if key.starts_with(MONITOR_PREFIX) {
        "monitor"
    } else if key == NODE_KEY {
        "node"
    } else if key == SEEN_KEY {
        "seen"
    } else {
        "other"
    }
}

/// Decodes a raw chitchat value to readable JSON by its key: `s/` as the session's
/// registers, `node` as [`NodeInfo`], `seen` as [`Seen`], `m/` as
/// [`NodeSessionStatus`]. Never panics: whatever does not decode is an error string.
pub fn decode_value(key: &str, raw: &str) -> (&'static str, Result<Value, String>) {
    let kind = key_kind(key);
    let decoded = match kind {
        "session" => codec::decode::<SessionRecord>(raw)
            .map_err(|e| e.to_string())
            .and_then(|record| {
                let expected = format!("{SESSION_PREFIX}{}", record.id.key());
                if expected != key {
                    return Err(format!(
                        "record of session {} stored under the wrong key (expected {expected})",
                        record.id
                    ));
                }
                Ok(json!({
                    "session": record.id.to_string(),
                    "registers": register_values(&record),
                }))
            }),
        "node" => codec::decode::<NodeInfo>(raw)
            .map_err(|e| e.to_string())
            .and_then(|info| serde_json::to_value(info).map_err(|e| e.to_string())),
        "seen" => codec::decode::<Seen>(raw)
            .map_err(|e| e.to_string())
            .and_then(|seen| serde_json::to_value(seen).map_err(|e| e.to_string())),
        "monitor" => codec::decode::<NodeSessionStatus>(raw)
            .map_err(|e| e.to_string())
            .and_then(|status| serde_json::to_value(status).map_err(|e| e.to_string()))
            .map(stamps_as_text),
        _ => Err("no decoder for this key; use --raw".to_string()),
    };
    (kind, decoded)
}

/// Replaces every serialized HLC (`{"millis", "counter", "node"}`) by its
/// `millis.counter@node` text.
pub fn stamps_as_text(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let is_hlc = map.len() == 3
                && map.get("millis").is_some_and(Value::is_u64)
                && map.get("counter").is_some_and(Value::is_u64)
                && map.get("node").is_some_and(Value::is_string);
            if is_hlc {
                Value::String(format!(
                    "{}.{}@{}",
                    map["millis"],
                    map["counter"],
                    map["node"].as_str().unwrap_or_default()
                ))
            } else {
                Value::Object(
                    map.into_iter()
                        .map(|(k, v)| (k, stamps_as_text(v)))
                        .collect(),
                )
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(stamps_as_text).collect()),
        other => other,
    }
}

fn monitor_view(
    report: &MonitorReport,
    published_at_ms: Option<u64>,
    age_ms: Option<u64>,
) -> MonitorView {
    MonitorView {
        state: report.state.to_string(),
        pid: report.pid,
        restarts: report.restarts,
        last_error: report.last_error.clone(),
        desired_stamp: report.desired_stamp.as_ref().map(ToString::to_string),
        restart_stamp: report.restart_stamp.as_ref().map(ToString::to_string),
        since_ms: report.since_ms,
        backoff_remaining_ms: report.backoff_remaining_ms,
        last_decision: report.last_decision.clone(),
        published_at_ms,
        age_ms,
    }
}

/// Everything `explain` decides from, gathered from the local agent's view.
#[derive(Debug, Clone)]
pub struct ExplainFacts<'a> {
    /// The node explained.
    pub node: &'a str,
    /// Whether it is the node answering.
    pub is_self: bool,
    /// The converged view of the session.
    pub view: &'a SessionView,
    /// Whether the node is live.
    pub live: bool,
    /// Milliseconds since its heartbeat last advanced.
    pub last_heard_ms: Option<u64>,
    /// Its bricks of the primary volume.
    pub primary_bricks: &'a [Brick],
    /// Whether it hosts a brick of the secondary volume.
    pub hosts_secondary: bool,
    /// Its published monitor report for the session.
    pub report: Option<&'a MonitorReport>,
    /// How old that report is (its relative times are as of publication).
    pub report_age_ms: Option<u64>,
    /// The session's newest write.
    pub latest_write: Option<&'a LatestWrite>,
    /// The node's published frontier.
    pub seen: Seen,
    /// Whether the node acknowledged the latest write's eager push (known only to its
    /// writer).
    pub acked: bool,
}

impl ExplainFacts<'_> {
    /// Milliseconds the monitor has been in its reported state, as of now.
    pub fn state_for_ms(&self) -> Option<u64> {
        self.report
            .map(|r| r.since_ms.saturating_add(self.report_age_ms.unwrap_or(0)))
    }

    /// Milliseconds until the reported retry, as of now (0: due).
    pub fn retry_in_ms(&self) -> Option<u64> {
        self.report
            .and_then(|r| r.backoff_remaining_ms)
            .map(|ms| ms.saturating_sub(self.report_age_ms.unwrap_or(0)))
    }

    /// Whether the node has merged the latest write (true when none is known).
    pub fn merged(&self) -> bool {
        self.latest_write
            .is_none_or(|w| has_merged(self.node, &self.seen, w, self.acked))
    }

    /// The node's `seen` entry for the latest write's (reported) origin.
    pub fn node_seen(&self) -> Option<WritePosition> {
        let origin = &self.latest_write?.origin;
        self.seen.get(origin).copied()
    }
}

/// The reason code, by precedence: a dead node's state is unknown; a node without
/// primary bricks never runs a monitor; a lagging node acts on older state; then the
/// session's state, then the node's monitor report.
pub fn explain_reason(facts: &ExplainFacts<'_>) -> ExplainReason {
    if !facts.live {
        return ExplainReason::NodeDead;
    }
    if facts.primary_bricks.is_empty() {
        return ExplainReason::NotPrimary;
    }
    if !facts.merged() {
        return ExplainReason::Lagging;
    }
    if !facts.view.exists {
        return ExplainReason::Deleted;
    }
    match facts.view.desired {
        DesiredState::Created | DesiredState::Stopped => ExplainReason::DesiredStopped,
        DesiredState::Paused => ExplainReason::DesiredPaused,
        DesiredState::Started => match facts.report.map(|r| r.state) {
            Some(MonitorState::Faulty) => ExplainReason::Faulty,
            Some(MonitorState::Started) => ExplainReason::Running,
            _ => ExplainReason::Starting,
        },
    }
}

/// `has v3 of n2, needs v5` (generations named when they differ).
pub fn lag_text(origin: &str, has: Option<WritePosition>, needs: WritePosition) -> String {
    match has {
        None => format!("has no write of {origin}, needs v{}", needs.version),
        Some(has) if has.generation == needs.generation => {
            format!("has v{} of {origin}, needs v{}", has.version, needs.version)
        }
        Some(has) => format!(
            "has v{} of {origin}'s generation {}, needs v{} of generation {}",
            has.version, has.generation, needs.version, needs.generation
        ),
    }
}

fn duration_text(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms.div_ceil(1000))
    }
}

/// The conclusion for `reason` and every fact behind it, as plain sentences.
pub fn explain_text(facts: &ExplainFacts<'_>, reason: ExplainReason) -> (String, Vec<String>) {
    let node = facts.node;
    let view = facts.view;
    let id = &view.id;
    let heard = facts
        .last_heard_ms
        .map(|ms| format!("{} ago", duration_text(ms)))
        .unwrap_or_else(|| "never".into());
    let pid = facts.report.and_then(|r| r.pid);
    let mut sentences = Vec::new();

    let mut session = match (&view.incarnation, view.exists) {
        (Some(created), true) => format!("Session {id} exists (created at {created})"),
        (_, false) => format!(
            "Session {id} is deleted (delete at {})",
            view.deleted
                .as_ref()
                .map_or_else(|| "unknown".into(), ToString::to_string)
        ),
        (None, true) => format!("Session {id} exists"),
    };
    match &view.desired_stamp {
        Some(stamp) => {
            let _ = write!(session, "; desired state {} set at {stamp}.", view.desired);
        }
        None => {
            let _ = write!(
                session,
                "; desired state {} (never set since creation).",
                view.desired
            );
        }
    }
    sentences.push(session);

    sentences.push(if facts.is_self {
        format!("{node} is the node answering, live.")
    } else if facts.live {
        format!("{node} is live (heartbeat last advanced {heard}).")
    } else {
        format!(
            "{node} is dead in this agent's view (heartbeat last advanced {heard}); what it runs now is unknown here."
        )
    });

    if facts.primary_bricks.is_empty() {
        sentences.push(format!(
            "{node} is not a primary node: it hosts no brick of {}, so no monitor runs there.",
            id.primary_volume
        ));
    } else {
        let bricks: Vec<String> = facts
            .primary_bricks
            .iter()
            .map(|b| format!("{} (replica set {})", b.path, b.replica_set))
            .collect();
        sentences.push(format!(
            "{node} hosts primary bricks of {}: {}.",
            id.primary_volume,
            bricks.join(", ")
        ));
    }
    if facts.hosts_secondary {
        sentences.push(format!(
            "{node} hosts the secondary volume {}: no SSH key management is implemented yet; nothing is installed.",
            id.secondary_volume
        ));
    }

    match facts.latest_write {
        Some(write) if facts.merged() => sentences.push(format!(
            "{node} has merged the session's latest write ({}, v{} of {}).",
            write.stamp, write.version, write.origin
        )),
        Some(write) => sentences.push(format!(
            "{node} is lagging behind the latest write ({}): it {}.",
            write.stamp,
            lag_text(&write.origin, facts.node_seen(), write.position())
        )),
        None => sentences.push(
            "No namespace gossiped here carries a write of this session yet (it may have arrived by push only)."
                .to_string(),
        ),
    }

    match facts.report {
        Some(report) => {
            let mut line = format!("Its published monitor report: {}", report.state);
            if let Some(pid) = report.pid {
                let _ = write!(line, ", pid {pid}");
            }
            let _ = write!(
                line,
                ", {} restart{}, in this state for {}",
                report.restarts,
                if report.restarts == 1 { "" } else { "s" },
                duration_text(facts.state_for_ms().unwrap_or(report.since_ms))
            );
            match facts.report_age_ms {
                Some(age) => {
                    let _ = write!(line, " (published {} ago).", duration_text(age));
                }
                None => line.push_str(" (as of publication)."),
            }
            sentences.push(line);
            if let Some(error) = &report.last_error {
                sentences.push(format!("Last error: {error}."));
            }
            if let Some(ms) = facts.retry_in_ms() {
                let prefix = if report.state == MonitorState::Faulty {
                    "Faulty: r"
                } else {
                    "R"
                };
                sentences.push(format!("{prefix}etrying in {}.", duration_text(ms)));
            }
            if !report.last_decision.is_empty() {
                sentences.push(format!("Last decision: {}.", report.last_decision));
            }
            match (&report.desired_stamp, &view.desired_stamp) {
                (acted, current) if acted == current => {
                    if current.is_some() {
                        sentences.push("It has acted on the current desired stamp.".into());
                    }
                }
                (Some(acted), Some(current)) => sentences.push(format!(
                    "It last acted on desired stamp {acted}; the current one is {current}."
                )),
                (None, Some(current)) => sentences.push(format!(
                    "It has not acted on the current desired stamp {current} yet."
                )),
                (Some(acted), None) => sentences.push(format!(
                    "It last acted on desired stamp {acted}, which this incarnation no longer has."
                )),
                (None, None) => {}
            }
        }
        None if !facts.primary_bricks.is_empty() => sentences.push(format!(
            "{node} has published no monitor status for this session."
        )),
        None => {}
    }

    let stopping = |base: String| match pid {
        Some(pid) => format!("{base} (its monitor, pid {pid}, is still being stopped)."),
        None => format!("{base}."),
    };
    let message = match reason {
        ExplainReason::NodeDead => format!(
            "{node} is dead in this agent's view: whatever it runs is unknown here; it will act on the converged state when it returns."
        ),
        ExplainReason::NotPrimary => format!(
            "{node} is not a primary node: it hosts no brick of {}, so no monitor runs there.",
            id.primary_volume
        ),
        ExplainReason::Lagging => {
            let needs = facts
                .latest_write
                .map(|w| lag_text(&w.origin, facts.node_seen(), w.position()))
                .unwrap_or_default();
            format!(
                "{node} is lagging behind the latest write ({needs}): it acts on older state until it merges it."
            )
        }
        ExplainReason::Deleted => {
            stopping(format!("The session is deleted: no monitor runs on {node}"))
        }
        ExplainReason::DesiredStopped => stopping(format!(
            "Desired state is {}: no monitor runs on {node}",
            view.desired
        )),
        ExplainReason::DesiredPaused => format!(
            "Desired state is Paused: the monitor on {node} is kept frozen (SIGSTOP to its process group)."
        ),
        ExplainReason::Faulty => {
            let report = facts.report;
            let retry = facts
                .retry_in_ms()
                .map(|ms| format!("retrying in {}", duration_text(ms)))
                .unwrap_or_else(|| "no retry pending".into());
            format!(
                "The monitor on {node} is Faulty: it keeps exiting ({} restarts, last error: {}); {retry}.",
                report.map_or(0, |r| r.restarts),
                report
                    .and_then(|r| r.last_error.as_deref())
                    .unwrap_or("none recorded")
            )
        }
        ExplainReason::Running => format!(
            "The monitor is running on {node}{} as desired.",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        ),
        ExplainReason::Starting => format!(
            "Desired state is Started; the monitor on {node} is not running yet ({}).",
            facts
                .report
                .map(|r| format!("state {}", r.state))
                .unwrap_or_else(|| "no status published".into())
        ),
    };
    (message, sentences)
}

/// One node's session keys as gossiped here: its generation and, per `s/` key, the
/// version and decoded record (`None` if undecodable).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Namespace {
    /// The namespace's (latest known) generation.
    pub generation: u64,
    /// `s/` key -> (version, record).
    pub keys: BTreeMap<String, (u64, Option<SessionRecord>)>,
}

/// Session writes one of `a`, `b` merged and the other has not (by their published
/// frontiers, against every namespace known here), and their differing `seen` entries.
/// A write neither has merged is no difference between them and is not listed.
pub fn diff_frontiers(
    a: &str,
    a_seen: &Seen,
    b: &str,
    b_seen: &Seen,
    namespaces: &BTreeMap<String, Namespace>,
) -> (Vec<WriteDiff>, Vec<SeenDiff>) {
    let mut writes = Vec::new();
    for (origin, namespace) in namespaces {
        for (key, (version, record)) in &namespace.keys {
            let position = WritePosition {
                generation: namespace.generation,
                version: *version,
            };
            let merged_by_a = covers(a, a_seen, origin, position);
            let merged_by_b = covers(b, b_seen, origin, position);
            if merged_by_a == merged_by_b {
                continue;
            }
            writes.push(WriteDiff {
                origin: origin.clone(),
                key: key.clone(),
                session: record.as_ref().map(|r| r.id.to_string()),
                generation: namespace.generation,
                version: *version,
                merged_by_a,
                merged_by_b,
                registers: record.as_ref().map(register_values).unwrap_or_default(),
            });
        }
    }
    let origins: BTreeSet<&String> = a_seen.keys().chain(b_seen.keys()).collect();
    let seen = origins
        .into_iter()
        .filter(|origin| a_seen.get(*origin) != b_seen.get(*origin))
        .map(|origin| SeenDiff {
            origin: origin.clone(),
            a: a_seen.get(origin).copied(),
            b: b_seen.get(origin).copied(),
        })
        .collect();
    (writes, seen)
}

#[cfg(test)]
mod tests {
    use georep_mesh::hlc::Hlc;
    use georep_mesh::state::{Reg, SessionOptions};

    use super::*;

    fn sid() -> SessionId {
        SessionId::parse("gv0", "n4::gv1").unwrap()
    }

    fn record(desired: Option<DesiredState>, deleted: bool) -> SessionRecord {
        let mut record = SessionRecord::empty(sid());
        record.created = Some(Reg {
            val: SessionOptions::default(),
            marker: Hlc::new(100, 0, "n1"),
        });
        record.desired = desired.map(|val| Reg {
            val,
            marker: Hlc::new(200, 1, "n2"),
        });
        record.config.insert(
            "sync-jobs".into(),
            Reg {
                val: Some("7".into()),
                marker: Hlc::new(300, 0, "n3"),
            },
        );
        if deleted {
            record.deleted = Some(Hlc::new(400, 0, "n1"));
        }
        record
    }

    fn report(state: MonitorState) -> MonitorReport {
        MonitorReport {
            state,
            pid: matches!(state, MonitorState::Started | MonitorState::Paused).then_some(4242),
            restarts: 3,
            last_error: Some("exited with status 3".into()),
            desired_stamp: Some(Hlc::new(200, 1, "n2")),
            restart_stamp: None,
            since_ms: 1500,
            backoff_remaining_ms: (state == MonitorState::Faulty).then_some(3200),
            last_decision: "started monitor pid 4242".into(),
        }
    }

    fn brick() -> Vec<Brick> {
        vec![Brick {
            volume: "gv0".into(),
            path: "/bricks/n3".into(),
            replica_set: 1,
        }]
    }

    fn latest() -> LatestWrite {
        LatestWrite {
            stamp: Hlc::new(300, 0, "n2").to_string(),
            origin: "n2".into(),
            generation: 7,
            version: 5,
            carriers: vec![Carrier {
                origin: "n2".into(),
                generation: 7,
                version: 5,
            }],
        }
    }

    fn facts<'a>(
        view: &'a SessionView,
        bricks: &'a [Brick],
        report: Option<&'a MonitorReport>,
        latest: Option<&'a LatestWrite>,
    ) -> ExplainFacts<'a> {
        ExplainFacts {
            node: "n3",
            is_self: false,
            view,
            live: true,
            last_heard_ms: Some(80),
            primary_bricks: bricks,
            hosts_secondary: false,
            report,
            report_age_ms: Some(0),
            latest_write: latest,
            seen: seen(&[("n2", 7, 5)]),
            acked: false,
        }
    }

    #[test]
    fn reason_follows_the_documented_precedence() {
        let started = record(Some(DesiredState::Started), false).view();
        let stopped = record(Some(DesiredState::Stopped), false).view();
        let created = record(None, false).view();
        let paused = record(Some(DesiredState::Paused), false).view();
        let deleted = record(Some(DesiredState::Started), true).view();
        let bricks = brick();
        let running = report(MonitorState::Started);
        let faulty = report(MonitorState::Faulty);
        let starting = report(MonitorState::Starting);
        let write = latest();

        let base = facts(&started, &bricks, Some(&running), Some(&write));
        assert_eq!(explain_reason(&base), ExplainReason::Running);
        let f = facts(&started, &bricks, Some(&faulty), Some(&write));
        assert_eq!(explain_reason(&f), ExplainReason::Faulty);
        let f = facts(&started, &bricks, Some(&starting), Some(&write));
        assert_eq!(explain_reason(&f), ExplainReason::Starting);
        let f = facts(&started, &bricks, None, None);
        assert_eq!(explain_reason(&f), ExplainReason::Starting);
        let f = facts(&stopped, &bricks, Some(&running), Some(&write));
        assert_eq!(explain_reason(&f), ExplainReason::DesiredStopped);
        let f = facts(&created, &bricks, None, Some(&write));
        assert_eq!(explain_reason(&f), ExplainReason::DesiredStopped);
        let f = facts(&paused, &bricks, Some(&running), Some(&write));
        assert_eq!(explain_reason(&f), ExplainReason::DesiredPaused);
        let f = facts(&deleted, &bricks, Some(&running), Some(&write));
        assert_eq!(explain_reason(&f), ExplainReason::Deleted);

        // lagging beats the session's state: the node acts on older state
        let mut f = facts(&stopped, &bricks, Some(&running), Some(&write));
        f.seen = seen(&[("n2", 7, 3)]);
        assert_eq!(explain_reason(&f), ExplainReason::Lagging);
        f.seen = Seen::new();
        assert_eq!(explain_reason(&f), ExplainReason::Lagging);
        // ... an older generation of the origin is lagging too
        f.seen = seen(&[("n2", 6, 99)]);
        assert_eq!(explain_reason(&f), ExplainReason::Lagging);
        // a node that acknowledged the push has merged it whatever it published
        f.acked = true;
        assert_eq!(explain_reason(&f), ExplainReason::DesiredStopped);
        f.acked = false;
        // the writer has its own write whatever it published
        f.node = "n2";
        assert_eq!(explain_reason(&f), ExplainReason::DesiredStopped);

        // not primary beats lagging; dead beats everything
        let mut f = facts(&started, &[], Some(&running), Some(&write));
        f.seen = Seen::new();
        assert_eq!(explain_reason(&f), ExplainReason::NotPrimary);
        f.live = false;
        assert_eq!(explain_reason(&f), ExplainReason::NodeDead);
    }

    #[test]
    fn reason_codes_are_stable_and_match_serde() {
        for reason in [
            ExplainReason::NodeDead,
            ExplainReason::NotPrimary,
            ExplainReason::Lagging,
            ExplainReason::Deleted,
            ExplainReason::DesiredStopped,
            ExplainReason::DesiredPaused,
            ExplainReason::Faulty,
            ExplainReason::Running,
            ExplainReason::Starting,
        ] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.code());
        }
    }

    #[test]
    fn explain_sentences_name_the_facts() {
        let started = record(Some(DesiredState::Started), false).view();
        let bricks = brick();
        let faulty = report(MonitorState::Faulty);
        let write = latest();
        let f = facts(&started, &bricks, Some(&faulty), Some(&write));
        let (message, sentences) = explain_text(&f, explain_reason(&f));
        let all = sentences.join("\n");
        assert!(message.contains("Faulty"), "{message}");
        assert!(message.contains("retrying in 4s"), "{message}");
        assert!(all.contains("Faulty: retrying in 4s."), "{all}");
        assert!(
            all.contains("desired state Started set at 200.1@n2"),
            "{all}"
        );
        assert!(
            all.contains("hosts primary bricks of gv0: /bricks/n3 (replica set 1)"),
            "{all}"
        );
        assert!(all.contains("Last error: exited with status 3."), "{all}");
        assert!(
            all.contains("Last decision: started monitor pid 4242."),
            "{all}"
        );
        assert!(
            all.contains("has merged the session's latest write"),
            "{all}"
        );

        let mut f = facts(&started, &[], None, Some(&write));
        f.hosts_secondary = true;
        f.seen = seen(&[("n2", 7, 3)]);
        let (message, sentences) = explain_text(&f, explain_reason(&f));
        let all = sentences.join("\n");
        assert!(message.contains("not a primary node"), "{message}");
        assert!(
            all.contains("no SSH key management is implemented yet; nothing is installed"),
            "{all}"
        );
        assert!(
            all.contains(
                "is lagging behind the latest write (300.0@n2): it has v3 of n2, needs v5"
            ),
            "{all}"
        );

        let f = facts(&started, &bricks, None, Some(&write));
        let mut f2 = f.clone();
        f2.seen = seen(&[("n2", 7, 3)]);
        let (message, _) = explain_text(&f2, explain_reason(&f2));
        assert_eq!(
            message,
            "n3 is lagging behind the latest write (has v3 of n2, needs v5): it acts on older state until it merges it."
        );
        let (_, sentences) = explain_text(&f, explain_reason(&f));
        assert!(
            sentences
                .iter()
                .any(|s| s == "n3 has published no monitor status for this session.")
        );

        // relative times are as of publication: a report published 1s ago has aged
        let mut f = facts(&started, &bricks, Some(&faulty), Some(&write));
        f.report_age_ms = Some(1000);
        assert_eq!(f.state_for_ms(), Some(2500));
        assert_eq!(f.retry_in_ms(), Some(2200));
        let (message, sentences) = explain_text(&f, explain_reason(&f));
        assert!(message.contains("retrying in 3s"), "{message}");
        assert!(
            sentences
                .iter()
                .any(|s| s.contains("in this state for 3s (published 1s ago)")),
            "{sentences:?}"
        );
    }

    #[test]
    fn lag_text_names_generations_only_when_they_differ() {
        let needs = WritePosition {
            generation: 9,
            version: 5,
        };
        assert_eq!(lag_text("n2", None, needs), "has no write of n2, needs v5");
        assert_eq!(
            lag_text(
                "n2",
                Some(WritePosition {
                    generation: 9,
                    version: 3
                }),
                needs
            ),
            "has v3 of n2, needs v5"
        );
        assert_eq!(
            lag_text(
                "n2",
                Some(WritePosition {
                    generation: 8,
                    version: 30
                }),
                needs
            ),
            "has v30 of n2's generation 8, needs v5 of generation 9"
        );
    }

    fn seen(entries: &[(&str, u64, u64)]) -> Seen {
        entries
            .iter()
            .map(|(origin, generation, version)| {
                (
                    origin.to_string(),
                    WritePosition {
                        generation: *generation,
                        version: *version,
                    },
                )
            })
            .collect()
    }

    fn namespaces() -> BTreeMap<String, Namespace> {
        let mut n1 = Namespace {
            generation: 10,
            keys: BTreeMap::new(),
        };
        n1.keys.insert(
            format!("s/{}", sid().key()),
            (5, Some(record(Some(DesiredState::Started), false))),
        );
        n1.keys.insert("s/other".into(), (3, None));
        let mut n2 = Namespace {
            generation: 20,
            keys: BTreeMap::new(),
        };
        n2.keys.insert(format!("s/{}", sid().key()), (4, None));
        [("n1".to_string(), n1), ("n2".to_string(), n2)].into()
    }

    #[test]
    fn latest_write_prefers_the_writer_and_any_carrier_counts() {
        let key = format!("s/{}", sid().key());
        let newest = record(Some(DesiredState::Started), false); // max stamp 300.0@n3
        let mut older = SessionRecord::empty(sid());
        older.desired = Some(Reg {
            val: DesiredState::Stopped,
            marker: Hlc::new(250, 0, "n4"),
        });
        let ns = |generation, version, record: &SessionRecord| Namespace {
            generation,
            keys: [(key.clone(), (version, Some(record.clone())))].into(),
        };
        let mut namespaces: BTreeMap<String, Namespace> = [
            ("n1".to_string(), ns(10, 9, &newest)), // custodian copy
            ("n3".to_string(), ns(30, 4, &newest)), // the writer
            ("n4".to_string(), ns(40, 2, &older)),
        ]
        .into();
        namespaces.insert(
            "n5".into(),
            Namespace {
                generation: 50,
                keys: [(key.clone(), (7, None))].into(),
            },
        );
        let latest = latest_write_of(&key, &namespaces).unwrap();
        assert_eq!(latest.stamp, "300.0@n3");
        assert_eq!((latest.origin.as_str(), latest.version), ("n3", 4));
        let carriers: Vec<&str> = latest.carriers.iter().map(|c| c.origin.as_str()).collect();
        assert_eq!(carriers, ["n1", "n3"]);
        // covering the custodian's copy is enough; an older write is not
        assert!(has_merged("n2", &seen(&[("n1", 10, 9)]), &latest, false));
        assert!(has_merged("n2", &seen(&[("n3", 30, 4)]), &latest, false));
        assert!(!has_merged(
            "n2",
            &seen(&[("n1", 10, 8), ("n4", 40, 2)]),
            &latest,
            false
        ));
        assert!(
            has_merged("n2", &Seen::new(), &latest, true),
            "acknowledged push"
        );
        assert!(
            has_merged("n1", &Seen::new(), &latest, false),
            "a carrier has it"
        );
        // without the writer's namespace the lowest carrier id is reported
        namespaces.remove("n3");
        let latest = latest_write_of(&key, &namespaces).unwrap();
        assert_eq!((latest.origin.as_str(), latest.version), ("n1", 9));
        assert!(latest_write_of("s/none", &namespaces).is_none());
    }

    #[test]
    fn diff_is_empty_once_both_frontiers_cover_every_write() {
        let both = seen(&[("n1", 10, 5), ("n2", 20, 4)]);
        let (writes, seen_diff) = diff_frontiers("n3", &both, "n4", &both, &namespaces());
        assert!(writes.is_empty(), "{writes:?}");
        assert!(seen_diff.is_empty(), "{seen_diff:?}");
        // a writer covers its own keys even before its published frontier says so
        let (writes, _) = diff_frontiers(
            "n1",
            &seen(&[("n2", 20, 4)]),
            "n2",
            &seen(&[("n1", 10, 5)]),
            &namespaces(),
        );
        assert!(writes.is_empty(), "{writes:?}");
    }

    #[test]
    fn diff_lists_the_writes_and_registers_one_side_lacks() {
        let a = seen(&[("n1", 10, 5), ("n2", 20, 4)]);
        let b = seen(&[("n1", 10, 3), ("n2", 20, 4)]);
        let (writes, seen_diff) = diff_frontiers("n3", &a, "n4", &b, &namespaces());
        assert_eq!(writes.len(), 1, "{writes:?}");
        let w = &writes[0];
        assert_eq!((w.origin.as_str(), w.version, w.generation), ("n1", 5, 10));
        assert!(w.merged_by_a && !w.merged_by_b);
        assert_eq!(w.session.as_deref(), Some("gv0 -> n4::gv1"));
        let registers: Vec<&str> = w.registers.iter().map(|r| r.register.as_str()).collect();
        assert_eq!(registers, ["created", "desired", "config.sync-jobs"]);
        assert_eq!(w.registers[2].value, json!("7"));
        assert_eq!(w.registers[2].stamp, "300.0@n3");
        assert_eq!(
            seen_diff,
            vec![SeenDiff {
                origin: "n1".into(),
                a: Some(WritePosition {
                    generation: 10,
                    version: 5
                }),
                b: Some(WritePosition {
                    generation: 10,
                    version: 3
                }),
            }]
        );
        // a frontier from an older generation of the origin covers nothing new
        let old = seen(&[("n1", 9, 100), ("n2", 20, 4)]);
        let (writes, _) = diff_frontiers("n3", &a, "n4", &old, &namespaces());
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert!(writes.iter().all(|w| w.merged_by_a && !w.merged_by_b));
        // writes neither side merged are no difference between them
        let (writes, seen_diff) =
            diff_frontiers("n3", &Seen::new(), "n4", &Seen::new(), &namespaces());
        assert!(writes.is_empty() && seen_diff.is_empty(), "{writes:?}");
        // ... but each side is compared with the writer's own view
        let (writes, _) = diff_frontiers("n1", &Seen::new(), "n4", &Seen::new(), &namespaces());
        assert_eq!(writes.len(), 2, "n1's two keys: {writes:?}");
        assert!(writes.iter().all(|w| w.merged_by_a && !w.merged_by_b));
    }

    fn member(id: &str, live: bool, seen: Seen) -> Member {
        Member {
            node_id: id.into(),
            generation: 1,
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            live,
            scheduled_for_deletion: false,
            heartbeat: 1,
            last_heard_ms: Some(0),
            key_count: 0,
            max_version: 0,
            info: None,
            seen: std::sync::Arc::new(seen),
        }
    }

    #[test]
    fn convergence_cells_classify_merged_lagging_dead() {
        let mut membership = Membership {
            self_id: "n1".into(),
            members: BTreeMap::new(),
        };
        for m in [
            member("n1", true, seen(&[("n2", 7, 5)])),
            member("n2", true, Seen::new()),
            member("n3", true, seen(&[("n2", 7, 3)])),
            member("n4", false, seen(&[("n2", 7, 5)])),
        ] {
            membership.members.insert(m.node_id.clone(), m);
        }
        let write = latest();
        let cells = convergence(&membership, Some(&write), &BTreeSet::new());
        let states: Vec<(&str, Convergence, bool)> = cells
            .iter()
            .map(|c| (c.node.as_str(), c.state, c.merged))
            .collect();
        assert_eq!(
            states,
            [
                ("n1", Convergence::Merged, true),
                ("n2", Convergence::Merged, true),
                ("n3", Convergence::Lagging, false),
                ("n4", Convergence::Dead, true),
            ]
        );
        assert_eq!(
            cells[2].seen,
            Some(WritePosition {
                generation: 7,
                version: 3
            })
        );
        assert!(
            convergence(&membership, None, &BTreeSet::new())
                .iter()
                .all(|c| c.merged)
        );
        // an acknowledged push counts as merged before the frontier says so
        let acked: BTreeSet<String> = ["n3".to_string()].into();
        let cells = convergence(&membership, Some(&write), &acked);
        assert_eq!(cells[2].state, Convergence::Merged);
        let row = member_row(&membership.members["n4"], "n1");
        assert_eq!(row.status, MemberStatus::Dead);
        assert_eq!(serde_json::to_value(row.status).unwrap(), "dead");
        assert_eq!(
            serde_json::to_value(MemberStatus::ScheduledForDeletion).unwrap(),
            "scheduled-for-deletion"
        );
    }

    #[test]
    fn values_decode_by_key_and_garbage_is_an_error_not_a_panic() {
        let rec = record(Some(DesiredState::Started), false);
        let key = format!("s/{}", sid().key());
        let (kind, value) = decode_value(&key, &codec::encode(&rec).unwrap());
        assert_eq!(kind, "session");
        let value = value.unwrap();
        assert_eq!(value["session"], "gv0 -> n4::gv1");
        assert_eq!(value["registers"][1]["value"], "Started");
        assert_eq!(value["registers"][1]["stamp"], "200.1@n2");
        // a record under another session's key
        let (_, wrong) = decode_value("s/gv9:root@x::y", &codec::encode(&rec).unwrap());
        assert!(wrong.unwrap_err().contains("wrong key"));
        for (key, raw) in [
            (key.as_str(), "!!not base64!!"),
            ("seen", ""),
            ("node", "AQ"),
            ("m/x", "AAAA"),
            ("weird", "x"),
        ] {
            let (_, decoded) = decode_value(key, raw);
            assert!(decoded.is_err(), "{key}: {decoded:?}");
        }
        let status = NodeSessionStatus {
            report: report(MonitorState::Started),
            workers: Vec::new(),
            published_at_ms: 5,
        };
        let (kind, value) = decode_value("m/x", &codec::encode(&status).unwrap());
        assert_eq!(kind, "monitor");
        let value = value.unwrap();
        assert_eq!(value["report"]["desired_stamp"], "200.1@n2");
        assert_eq!(value["report"]["state"], "Started");
        let seen_value = seen(&[("n1", 3, 4)]);
        let (_, value) = decode_value("seen", &codec::encode(&seen_value).unwrap());
        assert_eq!(
            value.unwrap(),
            json!({"n1": {"generation": 3, "version": 4}})
        );
    }

    #[test]
    fn stamps_become_text_everywhere() {
        let value = json!({"a": [{"millis": 5, "counter": 1, "node": "n1"}], "b": {"millis": 1}});
        assert_eq!(
            stamps_as_text(value),
            json!({"a": ["5.1@n1"], "b": {"millis": 1}})
        );
    }
}
