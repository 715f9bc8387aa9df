//! Custody and retirement: republishing winning registers no live namespace carries
//! (their writer died, or they only arrived by push), and retiring own records that
//! are wholly superseded and carried elsewhere.

use super::*;

/// Own records to retire: every register in them lost to a newer write (or a newer
/// incarnation of the session) that a live namespace carries, for longer than the
/// grace period. Without this every node that ever wrote would stay an origin in every
/// frontier, and frontiers (gossiped by all) would grow to N entries each. What is
/// retired changes no outcome: the join already ignores it.
pub(super) fn shed_superseded(
    shared: &Shared,
    local: &mut Local,
    carried: &BTreeMap<(SessionId, RegisterName), Hlc>,
    now: Instant,
) -> Vec<SessionId> {
    let grace = shared.config.retire_superseded_after;
    let mut due = Vec::new();
    let mut still = HashMap::new();
    for (id, own) in &local.own {
        let Some(current) = local.replica.sessions.get(id) else {
            continue;
        };
        let winners: BTreeMap<RegisterName, Hlc> = current.registers().into_iter().collect();
        let carried_at = |name: &RegisterName, stamp: &Hlc| {
            carried
                .get(&(id.clone(), name.clone()))
                .is_some_and(|c| c >= stamp)
        };
        let superseded = own.registers().into_iter().all(|(name, stamp)| {
            match winners.get(&name) {
                Some(winner) => *winner > stamp && carried_at(&name, winner),
                // Pruned by the join: a newer incarnation of the session, or a delete,
                // made it dead.
                None => current
                    .floor()
                    .is_some_and(|(floor, at)| *at > stamp && carried_at(&floor, at)),
            }
        });
        if !superseded {
            continue;
        }
        let since = local.superseded_since.get(id).copied().unwrap_or(now);
        if now.duration_since(since) >= grace {
            due.push(id.clone());
        }
        still.insert(id.clone(), since);
    }
    local.superseded_since = still;
    due
}

/// Order of preference among namespaces carrying the same write: the writer's own
/// first, then by node id.
pub(super) fn carrier_rank<'a>(node: &'a str, writer: &str) -> (bool, &'a str) {
    (node != writer, node)
}

/// Which (session, register, stamp) some live namespace carries.
pub(super) fn carried_ids(carried: &[&SessionRecord]) -> BTreeMap<(SessionId, RegisterName), Hlc> {
    let mut out: BTreeMap<(SessionId, RegisterName), Hlc> = BTreeMap::new();
    for record in carried {
        for (name, stamp) in record.registers() {
            let slot = out
                .entry((record.id.clone(), name))
                .or_insert(stamp.clone());
            if stamp > *slot {
                *slot = stamp;
            }
        }
    }
    out
}

/// Registers no live namespace carries: since when, and the writer's live generation
/// when first seen so.
pub(super) type Uncarried = HashMap<(SessionId, RegisterName, Hlc), (Instant, Option<u64>)>;

/// What this node needs to decide custody on one tick.
pub(super) struct CustodyView<'a> {
    /// This node's id.
    pub(super) self_id: &'a str,
    /// Live node ids with the generation of their newest live incarnation (this node
    /// may or may not be among them).
    pub(super) live: &'a BTreeMap<&'a str, u64>,
    /// How many of the lowest-ranked live nodes are custodians without delay.
    pub(super) custodians: usize,
    /// The gossip interval (patience is counted in rounds).
    pub(super) gossip_interval: Duration,
}

/// Custody of one tick, as a pure function: which winning registers of `replica` that
/// no live namespace carries (`carried`) this node adopts now, and which stay
/// uncarried (with when they were first seen so). A fresh write normally reaches us by
/// push before its writer's namespace does by gossip: gossip gets a few rounds before
/// a custodian steps in, more while the writer's incarnation that was live when the
/// register was first seen uncarried still is (it carries the write itself), and more
/// for higher-ranked nodes, so a register held only by high-ranked nodes is not lost
/// either. Clock steps make stamps useless here; only ranks and generations count.
pub(super) fn custody(
    view: &CustodyView<'_>,
    replica: &Replica,
    carried: &BTreeMap<(SessionId, RegisterName), Hlc>,
    uncarried_since: &Uncarried,
    now: Instant,
) -> (BTreeMap<SessionId, Vec<RegisterName>>, Uncarried) {
    let mut ranked: Vec<&str> = view.live.keys().copied().collect();
    ranked.push(view.self_id);
    ranked.sort_unstable();
    ranked.dedup();
    let rank = ranked
        .iter()
        .position(|id| *id == view.self_id)
        .unwrap_or(0);
    let rounds = |writer_live_throughout: bool| {
        let base = if writer_live_throughout {
            CUSTODIAN_ROUNDS_WRITER_LIVE
        } else {
            CUSTODIAN_ROUNDS
        };
        let behind = rank.saturating_sub(view.custodians.saturating_sub(1));
        base * (1 + behind.min(MAX_CUSTODIAN_STAGGER)) as u32
    };
    let mut adopt: BTreeMap<SessionId, Vec<RegisterName>> = BTreeMap::new();
    let mut still_uncarried = HashMap::new();
    for record in replica.sessions.values() {
        for (name, stamp) in record.registers() {
            let key = (record.id.clone(), name.clone());
            if carried.get(&key).is_some_and(|c| *c >= stamp) {
                continue;
            }
            // The writer carries a write itself only in the incarnation that made it.
            let writer_now = view.live.get(stamp.node.as_str()).copied();
            let slot = (record.id.clone(), name.clone(), stamp);
            let (since, writer_then) = uncarried_since
                .get(&slot)
                .copied()
                .unwrap_or((now, writer_now));
            let throughout = writer_then.is_some() && writer_then == writer_now;
            let patience = view.gossip_interval * rounds(throughout);
            if now.duration_since(since) >= patience {
                adopt.entry(record.id.clone()).or_default().push(name);
            } else {
                still_uncarried.insert(slot, (since, writer_then));
            }
        }
    }
    (adopt, still_uncarried)
}

/// Custodianship applied: the registers [`custody`] adopts are joined into our own
/// record of their session and republished.
pub(super) fn keep_alive(
    shared: &Shared,
    local: &mut Local,
    live: &BTreeSet<&ChitchatId>,
    carried: &BTreeMap<(SessionId, RegisterName), Hlc>,
    now: Instant,
) -> Vec<(String, String)> {
    let mut generations: BTreeMap<&str, u64> = BTreeMap::new();
    for id in live {
        let slot = generations.entry(&id.node_id).or_insert(id.generation_id);
        *slot = (*slot).max(id.generation_id);
    }
    let view = CustodyView {
        self_id: &shared.config.node_id,
        live: &generations,
        custodians: shared.config.custodians,
        gossip_interval: shared.config.gossip_interval,
    };
    let (adopt, still_uncarried) =
        custody(&view, &local.replica, carried, &local.uncarried_since, now);
    local.uncarried_since = still_uncarried;
    let mut publish = Vec::new();
    for (id, names) in adopt {
        let Some(record) = local.replica.sessions.get(&id) else {
            continue;
        };
        let part = record.extract(&names);
        let own = local
            .own
            .entry(id.clone())
            .or_insert_with(|| SessionRecord::empty(id.clone()));
        own.join(&part);
        match codec::encode(&*own) {
            Ok(value) => {
                tracing::debug!(session = %id, registers = ?names, "keeping uncarried registers alive");
                publish.push((session_key(&id), value));
            }
            Err(error) => tracing::warn!(session = %id, %error, "cannot republish session record"),
        }
    }
    publish
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Reg, SessionOptions};

    const ROUND: Duration = Duration::from_secs(1);

    fn sid() -> SessionId {
        SessionId::parse("gv0", "n9::gv1").unwrap()
    }

    /// A replica with one session whose `created` register was written by `writer`.
    fn replica(writer: &str) -> Replica {
        let mut record = SessionRecord::empty(sid());
        record.created = Some(Reg {
            val: SessionOptions::default(),
            marker: Hlc::new(1_000, 0, writer),
        });
        let mut replica = Replica::default();
        replica.join_record(&record);
        replica
    }

    /// Runs custody every round from `t0` until `self_id` adopts, and returns after how
    /// many rounds it did (`None`: not within 100).
    fn rounds_until_adopted(
        self_id: &str,
        live: &[(&str, u64)],
        writer_restarts_at: Option<u32>,
    ) -> Option<u32> {
        let replica = replica("w");
        let carried = BTreeMap::new();
        let t0 = Instant::now();
        let mut uncarried = Uncarried::new();
        for round in 0..100u32 {
            let mut generations: BTreeMap<&str, u64> = live.iter().copied().collect();
            if writer_restarts_at.is_some_and(|at| round >= at) {
                // The writer came back as a new incarnation (its disk maybe lost).
                generations.insert("w", 99);
            }
            let view = CustodyView {
                self_id,
                live: &generations,
                custodians: 2,
                gossip_interval: ROUND,
            };
            let now = t0 + ROUND * round;
            let (adopt, still) = custody(&view, &replica, &carried, &uncarried, now);
            if adopt
                .get(&sid())
                .is_some_and(|names| names.contains(&RegisterName::Created))
            {
                return Some(round);
            }
            uncarried = still;
        }
        None
    }

    #[test]
    fn a_carried_register_is_never_adopted() {
        let replica = replica("w");
        let stamp = Hlc::new(1_000, 0, "w");
        let carried = BTreeMap::from([((sid(), RegisterName::Created), stamp)]);
        let live = BTreeMap::from([("a", 1)]);
        let view = CustodyView {
            self_id: "a",
            live: &live,
            custodians: 2,
            gossip_interval: ROUND,
        };
        let t0 = Instant::now();
        let mut uncarried = Uncarried::new();
        for round in 0..50 {
            let (adopt, still) = custody(&view, &replica, &carried, &uncarried, t0 + ROUND * round);
            assert!(adopt.is_empty(), "round {round}: {adopt:?}");
            assert!(still.is_empty());
            uncarried = still;
        }
    }

    #[test]
    fn the_lowest_ranked_nodes_adopt_after_a_few_rounds_when_the_writer_is_gone() {
        // Live: a, b, c, d (the writer w is not). a and b are the custodians.
        let live = [("a", 1), ("b", 1), ("c", 1), ("d", 1)];
        assert_eq!(
            rounds_until_adopted("a", &live, None),
            Some(CUSTODIAN_ROUNDS)
        );
        assert_eq!(
            rounds_until_adopted("b", &live, None),
            Some(CUSTODIAN_ROUNDS)
        );
        // Higher ranks wait proportionally longer, so one of them steps in only if the
        // custodians did not.
        assert_eq!(
            rounds_until_adopted("c", &live, None),
            Some(2 * CUSTODIAN_ROUNDS)
        );
        assert_eq!(
            rounds_until_adopted("d", &live, None),
            Some(3 * CUSTODIAN_ROUNDS)
        );
    }

    #[test]
    fn the_stagger_is_capped() {
        let ids: Vec<String> = (0..20).map(|i| format!("n{i:02}")).collect();
        let live: Vec<(&str, u64)> = ids.iter().map(|id| (id.as_str(), 1)).collect();
        let last = ids.last().map(String::as_str).unwrap_or_default();
        assert_eq!(
            rounds_until_adopted(last, &live, None),
            Some((1 + MAX_CUSTODIAN_STAGGER as u32) * CUSTODIAN_ROUNDS)
        );
    }

    #[test]
    fn a_live_writer_gets_longer_unless_it_restarts() {
        let live = [("a", 1), ("b", 1), ("w", 5)];
        // The writer's incarnation stays live: it carries the write itself soon.
        assert_eq!(
            rounds_until_adopted("a", &live, None),
            Some(CUSTODIAN_ROUNDS_WRITER_LIVE)
        );
        // It restarted after we first saw the register uncarried: nobody else will
        // publish the write, so the short patience applies from the start.
        assert_eq!(
            rounds_until_adopted("a", &live, Some(1)),
            Some(CUSTODIAN_ROUNDS)
        );
    }
}
