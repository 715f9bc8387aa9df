//! The mesh's message network: framed, authenticated, addressed by gossip address.
//!
//! Every transport (QUIC, in-memory, fault-injecting wrapper) implements [`Link`]:
//! a node's endpoint that sends [`Frame`]s to a peer's gossip address and receives
//! frames tagged with the sender's *authenticated* node id. Gossip (chitchat) and
//! eager push both ride on it, so faults injected below apply to both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

/// Version byte at the head of every frame on the wire; bumped on incompatible change.
pub const FRAME_VERSION: u8 = 1;

/// Length of a frame header on the wire: version, kind, u32 little-endian payload length.
pub const FRAME_HEADER_LEN: usize = 6;

/// Largest payload accepted in one frame. Chitchat sizes its messages against ~64 KB;
/// pushes carry one session record (capped by the codec), so 1 MiB is ample and bounds
/// what a peer can make us allocate.
pub const MAX_FRAME_PAYLOAD: usize = 1024 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FrameKind {
    /// A serialized chitchat message.
    Gossip = 1,
    /// An eager push of freshly written registers.
    Push = 2,
    /// The acknowledgement of a push.
    PushAck = 3,
    /// A starting node without persisted state asks which generation peers hold for it.
    GenerationQuery = 4,
    /// The answer to a [`FrameKind::GenerationQuery`].
    GenerationReply = 5,
    /// A frame of the application above the mesh (the agent's event journal
    /// replication): delivered to [`crate::MeshNode::app_frames`] as it is.
    App = 6,
}

impl FrameKind {
    /// Decodes a kind byte; `None` for an unknown kind.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Gossip),
            2 => Some(Self::Push),
            3 => Some(Self::PushAck),
            4 => Some(Self::GenerationQuery),
            5 => Some(Self::GenerationReply),
            6 => Some(Self::App),
            _ => None,
        }
    }
}

/// One message on the mesh network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// The payload bytes (at most [`MAX_FRAME_PAYLOAD`]).
    pub payload: Vec<u8>,
}

impl Frame {
    /// Builds a frame.
    pub fn new(kind: FrameKind, payload: Vec<u8>) -> Self {
        Self { kind, payload }
    }

    /// Encodes header and payload for a byte stream.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_HEADER_LEN + self.payload.len());
        out.push(FRAME_VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Validates a frame header, returning the kind and the payload length to read.
    pub fn decode_header(
        header: &[u8; FRAME_HEADER_LEN],
    ) -> Result<(FrameKind, usize), FrameError> {
        if header[0] != FRAME_VERSION {
            return Err(FrameError::Version(header[0]));
        }
        let kind = FrameKind::from_byte(header[1]).ok_or(FrameError::Kind(header[1]))?;
        let len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]) as usize;
        if len > MAX_FRAME_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        Ok((kind, len))
    }

    /// Decodes a whole frame held in one buffer (header + exactly `len` payload bytes).
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let header: &[u8; FRAME_HEADER_LEN] = bytes
            .get(..FRAME_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(FrameError::Truncated)?;
        let (kind, len) = Self::decode_header(header)?;
        let payload = &bytes[FRAME_HEADER_LEN..];
        if payload.len() != len {
            return Err(FrameError::Truncated);
        }
        Ok(Frame::new(kind, payload.to_vec()))
    }
}

/// Why a frame was rejected. The frame is dropped; the connection and node carry on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Unknown frame version byte.
    #[error("unsupported frame version {0}")]
    Version(u8),
    /// Unknown frame kind byte.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// Announced payload larger than [`MAX_FRAME_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the {MAX_FRAME_PAYLOAD}-byte cap")]
    TooLarge(usize),
    /// Fewer bytes than the header announced.
    #[error("truncated frame")]
    Truncated,
}

/// A frame received from an authenticated peer.
#[derive(Debug, Clone)]
pub struct Received {
    /// The peer's gossip address (where replies go).
    pub from: SocketAddr,
    /// The peer's node id as proven by its credentials (certificate SAN for QUIC).
    pub peer_node: String,
    /// The frame itself.
    pub frame: Frame,
}

/// Errors of a link. Send errors are per message; a recv error means the link is closed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The local address could not be bound (in use, not local, ...).
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// Address that could not be bound.
        addr: SocketAddr,
        /// Underlying reason.
        reason: String,
    },
    /// Connecting or sending to a peer failed; the message is lost (gossip repairs it).
    #[error("cannot send to {to}: {reason}")]
    Send {
        /// Destination address.
        to: SocketAddr,
        /// Underlying reason.
        reason: String,
    },
    /// The link was closed.
    #[error("link closed")]
    Closed,
    /// TLS material was unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Counters of one link, for benchmarks and `inspect`.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Frames sent (including dropped by fault injection before the wire).
    pub frames_sent: AtomicU64,
    /// Payload + header bytes sent.
    pub bytes_sent: AtomicU64,
    /// Frames received and delivered.
    pub frames_received: AtomicU64,
    /// Bytes received and delivered.
    pub bytes_received: AtomicU64,
    /// Frames dropped on receipt: malformed, over-size, unauthenticated.
    pub frames_rejected: AtomicU64,
    /// Frames shed under load (a full queue, too many sends in flight); gossip repairs.
    pub frames_shed: AtomicU64,
}

impl LinkStats {
    /// Records one sent frame of `bytes` bytes.
    pub fn record_sent(&self, bytes: usize) {
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records one delivered frame of `bytes` bytes.
    pub fn record_received(&self, bytes: usize) {
        self.frames_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records one rejected frame.
    pub fn record_rejected(&self) {
        self.frames_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one frame shed under load.
    pub fn record_shed(&self) {
        self.frames_shed.fetch_add(1, Ordering::Relaxed);
    }

    /// A plain copy of the counters.
    pub fn snapshot(&self) -> LinkStatsSnapshot {
        LinkStatsSnapshot {
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            frames_received: self.frames_received.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            frames_rejected: self.frames_rejected.load(Ordering::Relaxed),
            frames_shed: self.frames_shed.load(Ordering::Relaxed),
        }
    }
}

/// A copy of [`LinkStats`] at one instant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkStatsSnapshot {
    /// Frames sent.
    pub frames_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Frames rejected.
    pub frames_rejected: u64,
    /// Frames shed under load.
    #[serde(default)]
    pub frames_shed: u64,
}

/// A node's endpoint on the mesh network.
#[async_trait]
pub trait Link: Send + Sync + 'static {
    /// The address this endpoint listens on (its gossip address).
    fn local_addr(&self) -> SocketAddr;
    /// The node id this endpoint authenticates as.
    fn node_id(&self) -> &str;
    /// Sends one frame to the endpoint at `to`. Delivery is best effort.
    async fn send(&self, to: SocketAddr, frame: Frame) -> Result<(), TransportError>;
    /// Waits for the next frame from an authenticated peer. `Err(Closed)` once closed.
    async fn recv(&self) -> Result<Received, TransportError>;
    /// The link's counters.
    fn stats(&self) -> Arc<LinkStats>;
    /// Closes the endpoint: pending and future `recv` return `Closed`.
    async fn close(&self);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip() {
        let frame = Frame::new(FrameKind::Push, vec![1, 2, 3]);
        assert_eq!(Frame::decode(&frame.encode()), Ok(frame));
    }

    #[test]
    fn frame_rejects_bad_headers() {
        let mut bytes = Frame::new(FrameKind::Gossip, vec![9; 4]).encode();
        bytes[0] = 7;
        assert_eq!(Frame::decode(&bytes), Err(FrameError::Version(7)));
        bytes[0] = FRAME_VERSION;
        bytes[1] = 99;
        assert_eq!(Frame::decode(&bytes), Err(FrameError::Kind(99)));
        bytes[1] = 1;
        bytes[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Frame::decode(&bytes),
            Err(FrameError::TooLarge(u32::MAX as usize))
        );
        assert_eq!(Frame::decode(&bytes[..3]), Err(FrameError::Truncated));
        let short = &Frame::new(FrameKind::Gossip, vec![9; 4]).encode()[..8];
        assert_eq!(Frame::decode(short), Err(FrameError::Truncated));
    }
}
