//! The start-up probe of a node's own identity: which generation the seeds hold for its
//! id (so a node without persisted state starts above it) and whether another agent
//! is running as this node (then it refuses to start). The answering side is
//! `answer_generation` in [`crate::node`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::codec;
use crate::network::{Frame, FrameKind, Link};
use crate::node::{MeshConfig, MeshError};

/// What a peer answers a [`FrameKind::GenerationQuery`]: the highest chitchat generation
/// it holds for the asking node (authenticated by its certificate), if any, and whether
/// that incarnation is live in its view.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct GenerationReply {
    pub(crate) node: String,
    pub(crate) generation: Option<u64>,
    pub(crate) live: Option<LiveIncarnation>,
    /// The query's nonce: a late answer to an earlier probe is not taken for this one.
    pub(crate) nonce: u64,
}

/// A live incarnation of a node id as a peer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LiveIncarnation {
    pub(crate) generation: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) heartbeat: u64,
}

/// How long a node without persisted state waits for its seeds to say which
/// generation they hold for it: two gossip rounds, within [0.5 s, 3 s].
fn generation_probe_timeout(config: &MeshConfig) -> Duration {
    (config.gossip_interval * 2).clamp(Duration::from_millis(500), Duration::from_secs(3))
}

/// What the seeds said about this node id at start.
#[derive(Debug, Default)]
pub(crate) struct SeedProbe {
    /// The highest generation they hold for it.
    pub(crate) highest: Option<u64>,
    /// That incarnation, if live in the answering seed's view.
    live: Option<LiveIncarnation>,
    /// The seed that answered.
    from: Option<SocketAddr>,
}

/// How long a starting node watches a live-looking incarnation of its own id for a
/// heartbeat: three gossip rounds, within [1 s, 5 s].
fn liveness_wait(config: &MeshConfig) -> Duration {
    (config.gossip_interval * 3).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// The generation to start at: one above what the seeds hold if that is not below
/// `config.generation` (the clock of a host that lost its disk can be behind the start
/// time of its previous incarnation: a lower generation would leave the old, dead one
/// in everyone's view).
pub(crate) fn generation_above(config: &MeshConfig, highest: Option<u64>) -> u64 {
    match highest {
        Some(known) if known >= config.generation => {
            tracing::warn!(
                previous = known,
                clock = config.generation,
                "peers remember a newer incarnation of this node than this clock gives (lost disk, clock behind?): starting above it"
            );
            known + 1
        }
        _ => config.generation,
    }
}

/// Asks the seeds which generation they hold for this node id and whether it is live.
/// Takes the first answer: the highest generation of a node id is gossiped to every
/// member, so any running seed knows it. Seeds that are down or starting themselves do
/// not answer, and cost the timeout.
/// With `only`, asks that seed alone.
async fn probe_seeds(
    config: &MeshConfig,
    link: &Arc<dyn Link>,
    nonce: u64,
    only: Option<SocketAddr>,
) -> SeedProbe {
    let deadline = Instant::now() + generation_probe_timeout(config);
    let mut seeds: BTreeSet<SocketAddr> = BTreeSet::new();
    for seed in &config.seeds {
        // A name that does not resolve must not hold the start up for a DNS timeout.
        match tokio::time::timeout_at(deadline, tokio::net::lookup_host(seed.as_str())).await {
            Ok(Ok(addrs)) => seeds.extend(addrs),
            Ok(Err(error)) => tracing::debug!(seed, %error, "cannot resolve seed"),
            Err(_) => tracing::debug!(seed, "seed did not resolve in time"),
        }
    }
    seeds.remove(&link.local_addr());
    if let Some(only) = only {
        seeds = BTreeSet::from([only]);
    }
    if seeds.is_empty() {
        return SeedProbe::default();
    }
    for seed in &seeds {
        let link = link.clone();
        let seed = *seed;
        // Each ends after one send attempt (bounded by the link's connect timeout).
        tokio::spawn(async move {
            let Ok(payload) = codec::to_bytes(&nonce) else {
                return;
            };
            let query = Frame::new(FrameKind::GenerationQuery, payload);
            if let Err(error) = link.send(seed, query).await {
                tracing::debug!(%seed, %error, "generation query not sent");
            }
        });
    }
    loop {
        let received = match tokio::time::timeout_at(deadline, link.recv()).await {
            Ok(Ok(received)) => received,
            Ok(Err(_)) | Err(_) => return SeedProbe::default(),
        };
        // Anything else (a peer starting at the same time asking us, early gossip)
        // finds nothing running yet to take it; gossip repairs it.
        if received.frame.kind != FrameKind::GenerationReply {
            continue;
        }
        match codec::from_bytes::<GenerationReply>(&received.frame.payload) {
            Ok(reply) if reply.node == config.node_id && reply.nonce == nonce => {
                return SeedProbe {
                    highest: reply.generation,
                    live: reply.live,
                    from: Some(received.from),
                };
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(peer = %received.peer_node, %error, "undecodable generation reply")
            }
        }
    }
}

/// Probes the seeds at start: what they hold for this node id, refusing to start
/// (`AlreadyRunning`) when an incarnation of it is live. The seed may think so of a
/// crashed one not yet declared dead, or of another agent running as this node; only a
/// running one keeps beating, and a dead one's last beats may still trickle in for a
/// round or two, so it must beat twice in a row, as seen by the same seed.
pub(crate) async fn check_identity(
    config: &MeshConfig,
    link: &Arc<dyn Link>,
) -> Result<SeedProbe, MeshError> {
    let probe = probe_seeds(config, link, 1, None).await;
    if let (Some(first), Some(seed)) = (probe.live, probe.from) {
        let mut last = first;
        let mut beats = 0;
        for nonce in 2..=3 {
            tokio::time::sleep(liveness_wait(config)).await;
            match probe_seeds(config, link, nonce, Some(seed)).await.live {
                Some(now)
                    if now.generation == last.generation && now.heartbeat > last.heartbeat =>
                {
                    beats += 1;
                    last = now;
                }
                _ => break,
            }
        }
        if beats == 2 {
            return Err(MeshError::AlreadyRunning {
                node: config.node_id.clone(),
                addr: last.addr,
                generation: last.generation,
            });
        }
    }
    Ok(probe)
}
