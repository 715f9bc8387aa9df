//! georep-mesh: the part of georep every other capability stands on.
//!
//! Its surface is curated: the modules are private and what other crates use is
//! re-exported here, grouped as below. Two modules stay public as namespaces because
//! their functions read best qualified: [`codec`] (`codec::encode`) and
//! [`session_config`] (`session_config::lookup`).
//!
//! - `tls`: the cluster CA and node certificates (`tls/pki.rs`), a node's loaded
//!   identity (`tls/identity.rs`), the verifiers of both TLS sides (`tls/verify.rs`).
//! - `network`: the [`Link`] trait and the [`Frame`] format every transport speaks.
//! - `quic`: the QUIC [`Link`] ([`QuicLink`]; quinn + rustls, ring), one connection
//!   per peer.
//! - `mem`: an in-memory [`Link`] hub ([`MemHub`]) for fast tests and the simulator.
//! - `faults`: a fault-injecting [`Link`] wrapper ([`Faults`]: loss, delay,
//!   duplication, partitions), per directed link or by destination IP network.
//! - `hlc`: the hybrid logical clock ([`Hlc`]) stamping every replicated write.
//! - [`codec`]: versioned, size-capped postcard + base64 encoding of replicated values.
//! - [`session_config`]: the session configuration keys, their defaults and validation.
//! - `state`: session ids, the CRDT session records and their join (`state/record.rs`),
//!   and validated operations (`state/ops.rs`).
//! - `view`: owner-written node records (bricks and their measured facts) and the
//!   membership view.
//! - `keys`: push-pem's gossiped records: a primary's session public keys, a
//!   secondary's installation report.
//! - `gossip`: the chitchat `Transport` adapter over a [`Link`], with identity checks.
//! - `node`: a running mesh node ([`MeshNode`]): chitchat + replicated state; in
//!   `node/`: start, membership, the generation answer, eager push and acks, the
//!   refresh, custody.
//! - `probe`: at start, what the seeds hold for this node id, and whether it already
//!   runs elsewhere.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod codec;
mod faults;
mod gossip;
mod hlc;
mod keys;
mod mem;
mod network;
mod node;
mod probe;
mod quic;
pub mod session_config;
mod state;
mod tls;
mod view;

pub use faults::{Fate, Faults, FaultyLink, IpNetwork, LinkFaults, NetworkError, SeededRng};
pub use gossip::{GOSSIP_QUEUE, GossipRefusal, MAX_SENDS_IN_FLIGHT};
pub use hlc::{Hlc, HlcClock, ManualClock, SystemClock, WallClock};
pub use keys::{KEY_INSTALL_PREFIX, KEYS_PREFIX, KeyInstall, PublicKeyInfo, SessionKeys};
pub use mem::{Delivery, MEM_QUEUE_FRAMES, MemHub, MemLink};
pub use network::{
    FRAME_HEADER_LEN, FRAME_VERSION, Frame, FrameError, FrameKind, Link, LinkStats,
    LinkStatsSnapshot, MAX_FRAME_PAYLOAD, Received, TransportError,
};
pub use node::{
    APP_QUEUE, FORGET_PREFIX, MeshConfig, MeshError, MeshNode, MeshSnapshot, NODE_KEY, OwnedValues,
    PUSH_LATENCY_BUCKETS, PushStatsSnapshot, SEEN_KEY, SESSION_PREFIX, WriteProgress, WriteReceipt,
};
pub use quic::{QuicLink, QuicOptions, peer_node_id};
pub use state::{
    DEFAULT_SECONDARY_USER, DesiredState, NAME_RULE, Reg, RegisterName, Replica, SessionId,
    SessionOp, SessionOptions, SessionRecord, SessionView, StateError, VolumeDirectory, check_name,
    plan,
};
pub use tls::{
    ALPN, CA_CERT_FILE, CA_KEY_FILE, MAX_NODE_ID_LEN, NODE_URI_PREFIX, NodeIdentity, PemCert,
    PemFiles, TlsError, generate_ca, issue_node_cert, node_id_from_cert, validate_dns_name,
    validate_node_id, write_ca, write_node_cert,
};
pub use view::{Brick, BrickFacts, Member, Membership, NodeInfo, Seen, WritePosition};
