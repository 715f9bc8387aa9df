//! The refresh: reading changed namespaces into the replica, the newest write per
//! session, our published frontier, and (on ticks) custody and retirement.

use super::*;

pub(super) async fn refresh_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.gossip_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Key changes arrive in bursts (each gossip exchange brings some): one refresh per
    // burst, at most one per gap, instead of one per exchange.
    let gap = shared.config.gossip_interval / REFRESHES_PER_ROUND;
    let mut come_back: Option<Instant> = None;
    loop {
        let held = come_back.unwrap_or_else(|| Instant::now() + shared.config.gossip_interval);
        come_back = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.wake.notified() => {
                let next = refresh(&shared, false).await;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(gap) => {}
                }
                next
            }
            _ = tokio::time::sleep_until(held), if come_back.is_some() => refresh(&shared, false).await,
            _ = tick.tick() => refresh(&shared, true).await,
        };
    }
}

/// Recomputes the converged replica and frontier. Between ticks only the namespaces
/// chitchat reported changed are read; ticks read every namespace, pick up liveness,
/// deletions and heartbeats, and keep uncarried registers alive.
/// Returns when to come back if a frontier publish is held back.
pub(super) async fn refresh(shared: &Shared, tick: bool) -> Option<Instant> {
    let mut chitchat = shared.chitchat.lock().await;
    let dirty = std::mem::take(&mut *shared.dirty());
    let everything = tick || dirty.all;
    let mut come_back = None;
    let mut replica_changed = false;
    let mut topology_changed = false;
    let mut publish: Vec<(String, String)> = Vec::new();
    let mut retire: Vec<String> = Vec::new();
    {
        let live: BTreeSet<&ChitchatId> = if everything || dirty.node_info {
            chitchat.live_nodes().collect()
        } else {
            BTreeSet::new()
        };
        let mut local = shared.local();
        let local = &mut *local;
        let now = Instant::now();
        let mut fresh: Vec<SessionRecord> = Vec::new();
        let mut decoded_changed = false;
        if everything {
            for (id, state) in chitchat.node_states() {
                let heartbeat = u64::from(state.heartbeat());
                let max_version = state.max_version();
                // A namespace whose max version did not move has no new, changed or
                // deleted key since it was last read (a reset lowers it: also a move).
                let moved = match local.heard.get_mut(id) {
                    Some(entry) => {
                        if entry.heartbeat != heartbeat {
                            entry.heartbeat = heartbeat;
                            entry.at = now;
                        }
                        std::mem::replace(&mut entry.read_at_version, max_version) != max_version
                    }
                    None => {
                        let entry = Heard {
                            heartbeat,
                            at: now,
                            read_at_version: max_version,
                        };
                        local.heard.insert(id.clone(), entry);
                        true
                    }
                };
                if moved || dirty.all {
                    decoded_changed |= read_records(local, id, state, &mut fresh);
                }
            }
        } else {
            for id in &dirty.nodes {
                if let Some(state) = chitchat.node_state(id) {
                    decoded_changed |= read_records(local, id, state, &mut fresh);
                }
            }
        }
        if everything || dirty.node_info {
            let epoch = topology_fingerprint(&chitchat, &live);
            topology_changed = epoch != local.topology_epoch;
            local.topology_epoch = epoch;
        }
        // Only what changed is joined: the replica is the join of every version seen.
        for record in &fresh {
            let before = local.replica.sessions.get(&record.id).cloned();
            local.replica.join_record(record);
            if local.replica.sessions.get(&record.id) != before.as_ref() {
                replica_changed = true;
            }
        }
        if replica_changed && let Some(max) = local.replica.max_stamp() {
            local.hlc.observe(&max);
        }
        decoded_changed |= !fresh.is_empty();
        // After a tick's walk `heard` holds every namespace chitchat has: more entries
        // (here or in the member cache) mean some namespace was dropped since.
        let namespaces = chitchat.node_states().len();
        if everything && (local.heard.len() > namespaces || local.members.len() > namespaces) {
            let before = local.decoded.len();
            local
                .decoded
                .retain(|id, _| chitchat.node_state(id).is_some());
            decoded_changed |= local.decoded.len() != before;
            local
                .positions
                .retain(|id, _| chitchat.node_state(id).is_some());
            local
                .heard
                .retain(|id, _| chitchat.node_state(id).is_some());
            local
                .members
                .retain(|id, _| chitchat.node_state(id).is_some());
        }
        let mut latest_writes: BTreeMap<SessionId, (Hlc, String, WritePosition)> = BTreeMap::new();
        // Per live node: the records its namespace carries (for custodianship).
        let mut carried: Vec<&SessionRecord> = Vec::new();
        // Both only change with the decoded namespaces (and liveness, read on ticks).
        let rescan = tick || decoded_changed;
        for (id, records) in local.decoded.iter().filter(|_| rescan) {
            for (version, record) in records.values() {
                let Some(record) = record else {
                    continue;
                };
                if let Some(stamp) = record.max_stamp() {
                    let position = WritePosition {
                        generation: id.generation_id,
                        version: *version,
                    };
                    // Custodians carry copies of a write: among equal stamps prefer the
                    // writer's own namespace, then the lowest node id, so the answer does
                    // not depend on map iteration order.
                    let newer = latest_writes.get(&record.id).is_none_or(|(best, node, _)| {
                        stamp > *best
                            || (stamp == *best
                                && carrier_rank(&id.node_id, &stamp.node)
                                    < carrier_rank(node, &stamp.node))
                    });
                    if newer {
                        latest_writes
                            .insert(record.id.clone(), (stamp, id.node_id.to_string(), position));
                    }
                }
                if tick && (live.contains(id) || *id == shared.chitchat_id) {
                    carried.push(record);
                }
            }
        }
        let carried = carried_ids(&carried);
        if rescan {
            // A write merged by push whose namespace has not arrived yet stays known.
            for (id, pushed) in &local.latest_writes {
                let scanned = latest_writes.get(id);
                if scanned.is_none_or(|(stamp, _, _)| *stamp < pushed.0)
                    && local.replica.sessions.contains_key(id)
                {
                    latest_writes.insert(id.clone(), pushed.clone());
                }
            }
            local.latest_writes = latest_writes;
        }
        // Our frontier: per origin node, the newest write position we hold.
        let mut seen = Seen::new();
        for (id, best) in &local.positions {
            let slot = seen.entry(id.node_id.to_string()).or_default();
            *slot = (*slot).max(*best);
        }
        // The frontier is what `--wait` and `status` read on other nodes: publish it as
        // soon as it moves, but at most twice per gossip round (each publish is a
        // new version of our `seen` key that everyone gossips).
        let seen_due = tick
            || local
                .seen_published_at
                .is_none_or(|at| now.duration_since(at) >= shared.config.gossip_interval / 2);
        if seen != *local.published_seen && seen_due {
            if let Ok(value) = codec::encode(&seen) {
                publish.push((SEEN_KEY.to_string(), value));
            }
            local.published_seen = Arc::new(seen);
            local.seen_published_at = Some(now);
        } else if seen != *local.published_seen {
            // Not due yet: come back for it (no gossip may arrive to wake us).
            come_back = local
                .seen_published_at
                .map(|at| at + shared.config.gossip_interval / 2);
        }
        if tick {
            publish.extend(keep_alive(shared, local, &live, &carried, now));
            let republished: BTreeSet<&str> = publish.iter().map(|(k, _)| k.as_str()).collect();
            for id in shed_superseded(shared, local, &carried, now) {
                let key = session_key(&id);
                if !republished.contains(key.as_str()) {
                    local.own.remove(&id);
                    local.superseded_since.remove(&id);
                    retire.push(key);
                }
            }
        }
    }
    let published = !publish.is_empty() || !retire.is_empty();
    if published {
        let node_state = chitchat.self_node_state();
        for (key, value) in publish {
            node_state.set(key, value);
        }
        for key in retire {
            tracing::debug!(key, "retiring a wholly superseded record");
            node_state.delete(&key);
        }
    }
    drop(chitchat);
    if replica_changed || topology_changed {
        shared.bump_view();
    } else if published || tick {
        shared.bump();
    }
    come_back
}

/// Reads one namespace's session records into the decode cache (decoding only new
/// versions), queues newly seen records for the join and notes the newest write
/// position it carries. True if the cached set of records changed shape.
pub(super) fn read_records(
    local: &mut Local,
    id: &ChitchatId,
    state: &chitchat::NodeState,
    fresh: &mut Vec<SessionRecord>,
) -> bool {
    // Forgets are writes too: `--wait` on `node forget` reads frontiers like any other.
    let forgets = state
        .iter_prefix(FORGET_PREFIX)
        .map(|(_, value)| WritePosition {
            generation: id.generation_id,
            version: value.version,
        })
        .max();
    let mut records = state.iter_prefix(SESSION_PREFIX).peekable();
    if records.peek().is_none() {
        match forgets {
            Some(best) => {
                local.positions.insert(id.clone(), best);
            }
            None => {
                local.positions.remove(id);
            }
        }
        return local.decoded.remove(id).is_some();
    }
    if !local.decoded.contains_key(id) {
        local.decoded.insert(id.clone(), HashMap::new());
    }
    let Some(cache) = local.decoded.get_mut(id) else {
        return false;
    };
    let mut best = forgets.unwrap_or_default();
    let mut count = 0;
    let mut undecodable = 0;
    for (key, value) in records {
        count += 1;
        best = best.max(WritePosition {
            generation: id.generation_id,
            version: value.version,
        });
        if cache
            .get(key)
            .is_some_and(|(version, _)| *version == value.version)
        {
            continue;
        }
        let record = match codec::decode::<SessionRecord>(&value.value) {
            Ok(record) if session_key(&record.id) == key => Some(record),
            Ok(_) | Err(_) => {
                undecodable += 1;
                tracing::warn!(node = %id.node_id, key, "undecodable or mislabelled session record ignored");
                None
            }
        };
        if let Some(record) = &record {
            fresh.push(record.clone());
        }
        cache.insert(key.to_string(), (value.version, record));
    }
    let mut reshaped = false;
    if cache.len() > count {
        // A key was deleted (a retired record): forget its decoded value.
        cache.retain(|key, _| state.get(key).is_some());
        reshaped = true;
    }
    local.undecodable += undecodable;
    match local.positions.get_mut(id) {
        Some(slot) => *slot = best,
        None => {
            local.positions.insert(id.clone(), best);
        }
    }
    reshaped
}

/// Fingerprint of what the reconciler's topology depends on: node ids, liveness and
/// `node` key versions (not frontiers: they move at every node on every write).
pub(super) fn topology_fingerprint(chitchat: &Chitchat, live: &BTreeSet<&ChitchatId>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    for (id, state) in chitchat.node_states() {
        id.hash(&mut hasher);
        state
            .get_versioned(NODE_KEY)
            .map(|v| (v.version, v.is_deleted()))
            .hash(&mut hasher);
        for (key, value) in state.iter_prefix(FORGET_PREFIX) {
            (key, value.version).hash(&mut hasher);
        }
        for (key, value) in state.iter_prefix(crate::keys::KEYS_PREFIX) {
            (key, value.version, value.is_deleted()).hash(&mut hasher);
        }
    }
    // Both iterate in id order: no lookups needed.
    for id in live {
        id.hash(&mut hasher);
    }
    hasher.finish()
}
