//! Eager push: merging a peer's pushed record at once and acknowledging it, and
//! counting the acknowledgements of our own pushes.

use super::*;

pub(super) async fn handle_push(shared: &Shared, received: Received) {
    let push: PushMsg = match codec::from_bytes(&received.frame.payload) {
        Ok(push) => push,
        Err(error) => {
            shared.link.stats().record_rejected();
            tracing::warn!(peer = %received.peer_node, %error, "undecodable push dropped");
            return;
        }
    };
    if push.origin != received.peer_node {
        shared.link.stats().record_rejected();
        tracing::warn!(peer = %received.peer_node, origin = %push.origin, "push on behalf of another node refused");
        return;
    }
    {
        let mut local = shared.local();
        if let Some(max) = push.record.max_stamp() {
            local.hlc.observe(&max);
            // Status must know the newest write as soon as it is merged, not only once
            // the writer's namespace arrives by gossip.
            let newer = local
                .latest_writes
                .get(&push.record.id)
                .is_none_or(|(best, _, _)| max > *best);
            if newer {
                local.latest_writes.insert(
                    push.record.id.clone(),
                    (max, push.origin.clone(), push.position),
                );
            }
        }
        local.replica.join_record(&push.record);
    }
    shared.bump_view();
    let ack = PushAck {
        origin: push.origin,
        position: push.position,
    };
    if let Ok(payload) = codec::to_bytes(&ack) {
        shared.send_detached(
            received.from,
            Frame::new(FrameKind::PushAck, payload),
            "push ack",
        );
    }
}

pub(super) fn handle_push_ack(shared: &Shared, received: &Received) {
    let Ok(ack) = codec::from_bytes::<PushAck>(&received.frame.payload) else {
        shared.link.stats().record_rejected();
        return;
    };
    if ack.origin != shared.config.node_id {
        return;
    }
    {
        let mut local = shared.local();
        // The acknowledging incarnation: the newest generation of that node we know of.
        // A node we know nothing of yet counts through its frontier instead.
        let generation = newest_of(local.members.keys(), &received.peer_node)
            .map_or(u64::MAX, |id| id.generation_id);
        local
            .acks
            .entry(ack.position)
            .or_default()
            .insert(received.peer_node.clone(), generation);
        // Bound the map: acknowledgements of old writes are also visible through `seen`.
        while local.acks.len() > 1024 {
            local.acks.pop_first();
        }
    }
    shared.bump();
}
