//! The membership view built from chitchat's node states: members, their `node`
//! info and `seen` frontiers, forgotten nodes, and the newest incarnation of an id.

use super::*;

pub(super) fn membership_of(shared: &Shared, chitchat: &Chitchat, local: &mut Local) -> Membership {
    let live: BTreeSet<&ChitchatId> = chitchat.live_nodes().collect();
    let scheduled: BTreeSet<&ChitchatId> = chitchat.scheduled_for_deletion_nodes().collect();
    let now = Instant::now();
    let forgotten = forgotten_in(chitchat);
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    for (id, state) in chitchat.node_states() {
        if members
            .get(&*id.node_id)
            .is_some_and(|m| m.generation > id.generation_id)
        {
            continue;
        }
        let is_self = *id == shared.chitchat_id;
        // A forgotten generation is hidden while it is not live: a node that was only
        // cut off when it was forgotten shows again as soon as it is heard, and one that
        // comes back (under a new generation) is a new member.
        if !is_self
            && !live.contains(id)
            && forgotten
                .get(&*id.node_id)
                .is_some_and(|generation| *generation >= id.generation_id)
        {
            continue;
        }
        let decoded = local.members.entry(id.clone()).or_default();
        let info = match state.get_versioned(NODE_KEY).filter(|v| !v.is_deleted()) {
            None => None,
            Some(value) => match &decoded.node {
                Some((version, info)) if *version == value.version => info.clone(),
                _ => {
                    let info = codec::decode::<NodeInfo>(&value.value).ok();
                    decoded.node = Some((value.version, info.clone()));
                    info
                }
            },
        };
        let seen = if is_self {
            local.published_seen.clone()
        } else {
            match state.get_versioned(SEEN_KEY).filter(|v| !v.is_deleted()) {
                None => Arc::default(),
                Some(value) => match &decoded.seen {
                    Some((version, seen)) if *version == value.version => seen.clone(),
                    _ => {
                        let seen =
                            Arc::new(codec::decode::<Seen>(&value.value).unwrap_or_default());
                        decoded.seen = Some((value.version, seen.clone()));
                        seen
                    }
                },
            }
        };
        let last_heard_ms = if is_self {
            Some(0)
        } else {
            local
                .heard
                .get(id)
                .map(|heard| now.duration_since(heard.at).as_millis() as u64)
        };
        members.insert(
            id.node_id.to_string(),
            Member {
                node_id: id.node_id.to_string(),
                generation: id.generation_id,
                gossip_addr: id.gossip_advertise_addr,
                live: is_self || live.contains(id),
                scheduled_for_deletion: scheduled.contains(id),
                heartbeat: u64::from(state.heartbeat()),
                last_heard_ms,
                key_count: state.num_key_values(),
                max_version: state.max_version(),
                info,
                seen,
            },
        );
    }
    Membership {
        self_id: shared.config.node_id.clone(),
        members,
    }
}

/// The newest of `ids` that belongs to node `node`.
pub(super) fn newest_of<'a>(
    ids: impl Iterator<Item = &'a ChitchatId>,
    node: &str,
) -> Option<&'a ChitchatId> {
    ids.filter(|id| *id.node_id == *node)
        .max_by_key(|id| id.generation_id)
}

/// Per node id: the newest generation some namespace says was forgotten.
pub(super) fn forgotten_in(chitchat: &Chitchat) -> BTreeMap<String, u64> {
    let mut forgotten: BTreeMap<String, u64> = BTreeMap::new();
    for state in chitchat.node_states().values() {
        for (key, value) in state.iter_prefix(FORGET_PREFIX) {
            let Ok(generation) = codec::decode::<u64>(&value.value) else {
                continue;
            };
            let node = &key[FORGET_PREFIX.len()..];
            let slot = forgotten.entry(node.to_string()).or_default();
            *slot = (*slot).max(generation);
        }
    }
    forgotten
}
