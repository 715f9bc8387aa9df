//! Chitchat over a [`Link`]: the `Transport`/`Socket` adapter and the identity check.
//!
//! The link proves who a frame comes from (the peer's certificate node id). Chitchat
//! messages carry node ids of their own, so we bind the two: a `Syn` or `SynAck` whose
//! digest does not list the sender under its proven node id, or that lists another node
//! id at the sender's address, is refused and logged. An `Ack` is accepted only from a
//! peer that passed that check before (chitchat only sends one after a `Syn`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::network::{Frame, FrameKind, Link, Received};

/// Chitchat messages queued between the demultiplexer and chitchat's server loop.
pub const GOSSIP_QUEUE: usize = 1024;

/// Gossip sends in flight at once; beyond that a message is dropped (gossip is lossy by
/// design and the next round repairs it).
pub const MAX_SENDS_IN_FLIGHT: usize = 256;

const SYN: u8 = 0;
const SYN_ACK: u8 = 1;
const ACK: u8 = 2;
/// Bytes of a chitchat message before the digest: magic (2), protocol version, type.
const DIGEST_OFFSET: usize = 4;
/// Serialized size of a digest entry after its chitchat id: heartbeat, gc version, max version.
const NODE_DIGEST_LEN: usize = 24;

/// Why a gossip frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipRefusal {
    /// Not a chitchat message.
    #[error("undecodable chitchat message: {0}")]
    Undecodable(String),
    /// The digest does not list the sender under its certificate's node id.
    #[error("peer authenticated as `{peer}` does not gossip under that node id")]
    MissingSelf {
        /// Node id proven by the peer's certificate.
        peer: String,
    },
    /// The digest claims another node id at the sender's address.
    #[error("peer authenticated as `{peer}` claims to be node `{claimed}`")]
    ClaimsOtherId {
        /// Node id proven by the peer's certificate.
        peer: String,
        /// Node id it gossips as.
        claimed: String,
    },
    /// An `Ack` from a peer that never passed the digest check.
    #[error("unsolicited ack from unverified peer `{peer}`")]
    Unverified {
        /// Node id proven by the peer's certificate.
        peer: String,
    },
}

/// What a `Syn`/`SynAck` digest says about the sender.
struct DigestFacts {
    /// The digest lists the sender's proven node id.
    lists_peer: bool,
    /// Another node id the digest places at the sender's address, if any.
    other_at_sender: Option<String>,
}

/// Reads a `Syn`/`SynAck` digest straight from the bytes (chitchat keeps `Digest`'s
/// fields private), without allocating: this runs on every gossip message and a digest
/// lists every node. `None` for other message types.
fn scan_digest(
    bytes: &[u8],
    from: SocketAddr,
    peer: &str,
) -> Result<Option<DigestFacts>, GossipRefusal> {
    let kind = *bytes
        .get(DIGEST_OFFSET - 1)
        .ok_or_else(|| GossipRefusal::Undecodable("too short".into()))?;
    if kind != SYN && kind != SYN_ACK {
        return Ok(None);
    }
    let mut buf = &bytes[DIGEST_OFFSET..];
    let undecodable = |e: anyhow::Error| GossipRefusal::Undecodable(e.to_string());
    let truncated = || GossipRefusal::Undecodable("truncated digest".into());
    let count = u16::deserialize(&mut buf).map_err(undecodable)?;
    let mut facts = DigestFacts {
        lists_peer: false,
        other_at_sender: None,
    };
    for _ in 0..count {
        // A chitchat id: node id (u16 length + UTF-8), generation (u64), address.
        let len = usize::from(u16::deserialize(&mut buf).map_err(undecodable)?);
        let node_id = buf.get(..len).ok_or_else(truncated)?;
        let node_id = std::str::from_utf8(node_id)
            .map_err(|_| GossipRefusal::Undecodable("node id is not UTF-8".into()))?;
        buf = &buf[len..];
        u64::deserialize(&mut buf).map_err(undecodable)?;
        let addr = SocketAddr::deserialize(&mut buf).map_err(undecodable)?;
        buf = buf.get(NODE_DIGEST_LEN..).ok_or_else(truncated)?;
        if node_id == peer {
            facts.lists_peer = true;
        } else if addr == from && facts.other_at_sender.is_none() {
            facts.other_at_sender = Some(node_id.to_string());
        }
    }
    Ok(Some(facts))
}

/// Binds peers' gossip identity to their proven identity.
#[derive(Debug, Default)]
pub struct IdentityGuard {
    verified: Mutex<HashSet<(SocketAddr, String)>>,
    last_warned: Mutex<HashMap<String, Instant>>,
}

impl IdentityGuard {
    /// Checks one received gossip frame; returns the decoded message if acceptable.
    pub fn check(&self, received: &Received) -> Result<ChitchatMessage, GossipRefusal> {
        let bytes = &received.frame.payload;
        let message = ChitchatMessage::deserialize(&mut bytes.as_slice())
            .map_err(|e| GossipRefusal::Undecodable(e.to_string()))?;
        let peer = &received.peer_node;
        let key = (received.from, peer.clone());
        match scan_digest(bytes, received.from, peer)? {
            Some(facts) => {
                if let Some(claimed) = facts.other_at_sender {
                    return Err(GossipRefusal::ClaimsOtherId {
                        peer: peer.clone(),
                        claimed,
                    });
                }
                if !facts.lists_peer {
                    return Err(GossipRefusal::MissingSelf { peer: peer.clone() });
                }
                if let Ok(mut verified) = self.verified.lock()
                    && !verified.contains(&key)
                {
                    verified.insert(key);
                }
            }
            None => {
                let kind = bytes.get(DIGEST_OFFSET - 1).copied();
                let known = self.verified.lock().is_ok_and(|v| v.contains(&key));
                if kind == Some(ACK) && !known {
                    return Err(GossipRefusal::Unverified { peer: peer.clone() });
                }
            }
        }
        Ok(message)
    }

    /// Logs a refusal, at most once per peer every 30 s (a refused peer retries every round).
    pub fn log_refusal(&self, received: &Received, refusal: &GossipRefusal) {
        let now = Instant::now();
        let Ok(mut last) = self.last_warned.lock() else {
            return;
        };
        let due = last
            .get(&received.peer_node)
            .is_none_or(|at| now.duration_since(*at) > Duration::from_secs(30));
        if due {
            last.insert(received.peer_node.clone(), now);
            tracing::warn!(peer = %received.peer_node, from = %received.from, %refusal, "refused gossip");
        }
    }
}

/// Chitchat's view of the network: hands chitchat a socket over the link, once.
pub struct GossipTransport {
    socket: Mutex<Option<GossipSocket>>,
}

impl GossipTransport {
    /// A transport whose socket sends on `link` and receives what the demultiplexer
    /// forwards through the returned sender.
    pub fn new(link: Arc<dyn Link>) -> (Self, mpsc::Sender<(SocketAddr, ChitchatMessage)>) {
        let (tx, rx) = mpsc::channel(GOSSIP_QUEUE);
        let socket = GossipSocket {
            link,
            rx,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_SENDS_IN_FLIGHT)),
        };
        (
            Self {
                socket: Mutex::new(Some(socket)),
            },
            tx,
        )
    }
}

#[async_trait]
impl Transport for GossipTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = self
            .socket
            .lock()
            .map_err(|_| anyhow::anyhow!("gossip transport lock poisoned"))?
            .take()
            .ok_or_else(|| anyhow::anyhow!("gossip socket for {listen_addr} already opened"))?;
        Ok(Box::new(socket))
    }
}

/// The socket chitchat's server loop uses.
pub struct GossipSocket {
    link: Arc<dyn Link>,
    rx: mpsc::Receiver<(SocketAddr, ChitchatMessage)>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

#[async_trait]
impl Socket for GossipSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        let frame = Frame::new(FrameKind::Gossip, msg.serialize_to_vec());
        // Chitchat awaits each send in its one server loop: a peer that is slow to
        // connect (dead, restarting) must not stall gossip with everyone else, so sends
        // run in the background, bounded. A failed or shed send is a lost datagram to
        // chitchat, not a broken socket.
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.link.stats().record_shed();
            return Ok(());
        };
        let link = self.link.clone();
        tokio::spawn(async move {
            if let Err(error) = link.send(to, frame).await {
                tracing::debug!(%to, %error, "gossip send failed");
            }
            drop(permit);
        });
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        self.rx
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("gossip link closed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chitchat::ChitchatId;

    fn id(node: &str, port: u16) -> ChitchatId {
        ChitchatId::new(node, 1, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    // Builds a Syn message whose digest lists `ids`, byte for byte as chitchat writes it.
    fn syn_bytes(ids: &[ChitchatId]) -> Vec<u8> {
        let mut buf = Vec::new();
        buf.extend(45_139u16.to_le_bytes());
        buf.push(0); // protocol version
        buf.push(SYN);
        (ids.len() as u16).serialize(&mut buf);
        for id in ids {
            id.serialize(&mut buf);
            buf.extend([0u8; NODE_DIGEST_LEN]);
        }
        "cluster".to_string().serialize(&mut buf);
        buf
    }

    fn received(peer: &str, port: u16, payload: Vec<u8>) -> Received {
        Received {
            from: SocketAddr::from(([127, 0, 0, 1], port)),
            peer_node: peer.into(),
            frame: Frame::new(FrameKind::Gossip, payload),
        }
    }

    #[test]
    fn honest_syn_is_accepted_and_parses_as_chitchat_does() {
        let guard = IdentityGuard::default();
        let bytes = syn_bytes(&[id("a", 1), id("b", 2)]);
        let msg = guard.check(&received("b", 2, bytes)).unwrap();
        assert!(matches!(msg, ChitchatMessage::Syn { .. }));
    }

    #[test]
    fn spoofed_identity_is_refused() {
        let guard = IdentityGuard::default();
        // cert says "evil", gossips as "b" from its own address
        let bytes = syn_bytes(&[id("a", 1), id("b", 9)]);
        assert_eq!(
            guard.check(&received("evil", 9, bytes)).unwrap_err(),
            GossipRefusal::ClaimsOtherId {
                peer: "evil".into(),
                claimed: "b".into()
            }
        );
        let bytes = syn_bytes(&[id("a", 1)]);
        assert_eq!(
            guard.check(&received("evil", 9, bytes)).unwrap_err(),
            GossipRefusal::MissingSelf {
                peer: "evil".into()
            }
        );
    }

    #[test]
    fn garbage_and_unsolicited_acks_are_refused() {
        let guard = IdentityGuard::default();
        assert!(matches!(
            guard.check(&received("a", 1, vec![1, 2, 3])),
            Err(GossipRefusal::Undecodable(_))
        ));
        let mut truncated = syn_bytes(&[id("a", 1)]);
        truncated.truncate(truncated.len() - 12);
        assert!(guard.check(&received("a", 1, truncated)).is_err());
        let ack = ChitchatMessage::BadCluster.serialize_to_vec();
        // BadCluster is harmless and accepted
        assert!(guard.check(&received("a", 1, ack)).is_ok());
        let ack = ChitchatMessage::Ack {
            delta: Default::default(),
        }
        .serialize_to_vec();
        assert_eq!(
            guard.check(&received("a", 1, ack.clone())).unwrap_err(),
            GossipRefusal::Unverified { peer: "a".into() }
        );
        guard
            .check(&received("a", 1, syn_bytes(&[id("a", 1)])))
            .unwrap();
        assert!(guard.check(&received("a", 1, ack)).is_ok());
    }
}
