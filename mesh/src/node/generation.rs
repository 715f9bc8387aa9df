//! Answering a starting peer's question: which generation of its id we hold, and
//! whether that incarnation is live (the start-up identity probe, `probe.rs`).

use super::*;

/// Tells a starting peer the highest generation we hold for it.
pub(super) async fn answer_generation(shared: &Shared, received: &Received) {
    let (generation, live) = {
        let chitchat = shared.chitchat.lock().await;
        let highest = newest_of(chitchat.node_states().keys(), &received.peer_node);
        let live = highest.filter(|id| chitchat.live_nodes().any(|live| live == *id));
        let live = live.and_then(|id| {
            Some(LiveIncarnation {
                generation: id.generation_id,
                addr: id.gossip_advertise_addr,
                heartbeat: u64::from(chitchat.node_state(id)?.heartbeat()),
            })
        });
        (highest.map(|id| id.generation_id), live)
    };
    let reply = GenerationReply {
        node: received.peer_node.clone(),
        generation,
        live,
        nonce: codec::from_bytes::<u64>(&received.frame.payload).unwrap_or(0),
    };
    match codec::to_bytes(&reply) {
        Ok(payload) => {
            let frame = Frame::new(FrameKind::GenerationReply, payload);
            shared.send_detached(received.from, frame, "generation reply");
        }
        Err(error) => tracing::warn!(%error, "cannot encode a generation reply"),
    }
}
