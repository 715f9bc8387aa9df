//! In-memory mesh network: a hub of links addressed by socket address, for fast tests
//! and the simulator. Identity is the node id a link was bound with (no TLS here).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::network::{Frame, Link, LinkStats, Received, TransportError};

/// Frames queued per receiving link before new ones are shed.
pub const MEM_QUEUE_FRAMES: usize = 4096;

struct Endpoint {
    node_id: String,
    tx: mpsc::Sender<Received>,
    stats: Arc<LinkStats>,
}

/// One frame handed to its receiver, as recorded for a determinism trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// When (tokio time: virtual under a paused clock).
    pub at: tokio::time::Instant,
    /// Sender's address.
    pub from: SocketAddr,
    /// Receiver's address.
    pub to: SocketAddr,
    /// What the frame carries.
    pub kind: crate::network::FrameKind,
    /// Payload length.
    pub len: usize,
    /// A hash of the payload (std's fixed-key SipHash: stable within one build).
    pub digest: u64,
}

/// The shared medium of in-memory links.
#[derive(Clone, Default)]
pub struct MemHub {
    endpoints: Arc<Mutex<HashMap<SocketAddr, Endpoint>>>,
    deliveries: Arc<Mutex<Option<Vec<Delivery>>>>,
}

impl std::fmt::Debug for MemHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemHub")
    }
}

impl MemHub {
    /// A new, empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, remembers every delivered frame (see [`MemHub::deliveries`]).
    pub fn record_deliveries(&self) {
        if let Ok(mut deliveries) = self.deliveries.lock() {
            deliveries.get_or_insert_with(Vec::new);
        }
    }

    /// The frames delivered since [`MemHub::record_deliveries`], in delivery order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .ok()
            .and_then(|d| d.clone())
            .unwrap_or_default()
    }

    fn note_delivery(&self, from: SocketAddr, to: SocketAddr, frame: &Frame) {
        use std::hash::{Hash, Hasher};
        let Ok(mut guard) = self.deliveries.lock() else {
            return;
        };
        if let Some(deliveries) = guard.as_mut() {
            let mut hasher = std::hash::DefaultHasher::new();
            frame.payload.hash(&mut hasher);
            deliveries.push(Delivery {
                at: tokio::time::Instant::now(),
                from,
                to,
                kind: frame.kind,
                len: frame.payload.len(),
                digest: hasher.finish(),
            });
        }
    }

    /// Binds a link for `node_id` at `addr`; fails if the address is taken.
    pub fn bind(&self, node_id: &str, addr: SocketAddr) -> Result<Arc<MemLink>, TransportError> {
        let mut endpoints = self.endpoints.lock().map_err(|_| TransportError::Closed)?;
        if endpoints.contains_key(&addr) {
            return Err(TransportError::Bind {
                addr,
                reason: "address in use".into(),
            });
        }
        let (tx, rx) = mpsc::channel(MEM_QUEUE_FRAMES);
        let stats = Arc::new(LinkStats::default());
        endpoints.insert(
            addr,
            Endpoint {
                node_id: node_id.to_string(),
                tx,
                stats: stats.clone(),
            },
        );
        Ok(Arc::new(MemLink {
            hub: self.clone(),
            node_id: node_id.to_string(),
            addr,
            rx: tokio::sync::Mutex::new(rx),
            stats,
        }))
    }
}

/// One node's endpoint on a [`MemHub`].
pub struct MemLink {
    hub: MemHub,
    node_id: String,
    addr: SocketAddr,
    rx: tokio::sync::Mutex<mpsc::Receiver<Received>>,
    stats: Arc<LinkStats>,
}

#[async_trait]
impl Link for MemLink {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn send(&self, to: SocketAddr, frame: Frame) -> Result<(), TransportError> {
        let bytes = frame.payload.len() + crate::network::FRAME_HEADER_LEN;
        self.stats.record_sent(bytes);
        let target = {
            let endpoints = self
                .hub
                .endpoints
                .lock()
                .map_err(|_| TransportError::Closed)?;
            // Nobody at `to`: the frame is lost, as on a real network.
            let Some(endpoint) = endpoints.get(&to) else {
                return Ok(());
            };
            (endpoint.tx.clone(), endpoint.stats.clone())
        };
        let (tx, their_stats) = target;
        self.hub.note_delivery(self.addr, to, &frame);
        let received = Received {
            from: self.addr,
            peer_node: self.node_id.clone(),
            frame,
        };
        match tx.try_send(received) {
            Ok(()) => their_stats.record_received(bytes),
            Err(_) => their_stats.record_shed(),
        }
        Ok(())
    }

    async fn recv(&self) -> Result<Received, TransportError> {
        self.rx
            .lock()
            .await
            .recv()
            .await
            .ok_or(TransportError::Closed)
    }

    fn stats(&self) -> Arc<LinkStats> {
        self.stats.clone()
    }

    async fn close(&self) {
        if let Ok(mut endpoints) = self.hub.endpoints.lock() {
            endpoints.remove(&self.addr);
        }
        self.rx.lock().await.close();
    }
}

impl Drop for MemLink {
    fn drop(&mut self) {
        if let Ok(mut endpoints) = self.hub.endpoints.lock()
            && endpoints
                .get(&self.addr)
                .is_some_and(|e| e.node_id == self.node_id)
        {
            endpoints.remove(&self.addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::FrameKind;

    #[tokio::test]
    async fn frames_carry_the_sender_identity() {
        let hub = MemHub::new();
        let a = hub.bind("a", "127.0.0.1:1".parse().unwrap()).unwrap();
        let b = hub.bind("b", "127.0.0.1:2".parse().unwrap()).unwrap();
        assert!(hub.bind("c", "127.0.0.1:2".parse().unwrap()).is_err());
        a.send(b.local_addr(), Frame::new(FrameKind::Push, vec![7]))
            .await
            .unwrap();
        let got = b.recv().await.unwrap();
        assert_eq!(got.peer_node, "a");
        assert_eq!(got.from, a.local_addr());
        assert_eq!(got.frame.payload, vec![7]);
        b.close().await;
        assert!(matches!(b.recv().await, Err(TransportError::Closed)));
        // sending to a closed address is silently lost
        a.send(b.local_addr(), Frame::new(FrameKind::Push, vec![]))
            .await
            .unwrap();
    }
}
