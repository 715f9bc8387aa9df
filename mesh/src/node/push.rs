//! Eager push: merging a peer's pushed record at once and acknowledging it, and
//! counting the acknowledgements of our own pushes.

use std::sync::atomic::{AtomicU64, Ordering};

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
        let first = local
            .acks
            .entry(ack.position)
            .or_default()
            .insert(received.peer_node.clone(), generation)
            .is_none();
        if first {
            let latency = local
                .pushed_at
                .get(&ack.position)
                .map(|sent| sent.elapsed());
            shared.push_stats.record_ack(latency);
        }
        // Bound the map: acknowledgements of old writes are also visible through `seen`.
        while local.acks.len() > 1024 {
            local.acks.pop_first();
        }
        while local.pushed_at.len() > 1024 {
            local.pushed_at.pop_first();
        }
    }
    shared.bump();
}

/// Upper bounds (seconds) of the eager-push acknowledgement latency histogram.
pub const PUSH_LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Eager-push counters of one node (for metrics).
#[derive(Debug, Default)]
pub(super) struct PushStats {
    pushes_sent: AtomicU64,
    acks_received: AtomicU64,
    /// Per bucket of [`PUSH_LATENCY_BUCKETS`], then one for larger latencies.
    latency: [AtomicU64; PUSH_LATENCY_BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
}

impl PushStats {
    pub(super) fn record_push(&self) {
        self.pushes_sent.fetch_add(1, Ordering::Relaxed);
    }

    fn record_ack(&self, latency: Option<Duration>) {
        self.acks_received.fetch_add(1, Ordering::Relaxed);
        let Some(latency) = latency else { return };
        let seconds = latency.as_secs_f64();
        let bucket = PUSH_LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(PUSH_LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(super) fn snapshot(&self) -> PushStatsSnapshot {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        PushStatsSnapshot {
            pushes_sent: self.pushes_sent.load(Ordering::Relaxed),
            acks_received: self.acks_received.load(Ordering::Relaxed),
            latency_count: counts.iter().sum(),
            latency_buckets: PUSH_LATENCY_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(counts)
                .collect(),
            latency_sum_seconds: self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Eager pushes of this node's writes and their acknowledgements, at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushStatsSnapshot {
    /// Push frames sent (one per peer per write).
    pub pushes_sent: u64,
    /// First acknowledgements received (one per peer per write).
    pub acks_received: u64,
    /// Push-to-acknowledgement latency: (upper bound in seconds, count in that bucket
    /// only), the last bound infinite.
    pub latency_buckets: Vec<(f64, u64)>,
    /// Sum of the observed latencies.
    pub latency_sum_seconds: f64,
    /// Number of observed latencies.
    pub latency_count: u64,
}
