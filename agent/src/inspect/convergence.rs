//! Who merged what: members as rows, the newest write of each session, which nodes
//! have merged it, and where two nodes' frontiers differ. Pure functions.

use super::*;

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
