//! georep-mesh: the part of georep every other capability stands on.
//!
//! - [`tls`]: the cluster CA and node certificates (`tls/pki.rs`), a node's loaded
//!   identity (`tls/identity.rs`), the verifiers of both TLS sides (`tls/verify.rs`).
//! - [`network`]: the [`network::Link`] trait and frame format every transport speaks.
//! - [`quic`]: the QUIC [`network::Link`] (quinn + rustls, ring), one connection per peer.
//! - [`mem`]: an in-memory [`network::Link`] hub for fast tests and the simulator.
//! - [`faults`]: a fault-injecting [`network::Link`] wrapper (loss, delay, duplication, partitions),
//!   per directed link or by destination IP network.
//! - [`hlc`]: hybrid logical clock stamping every replicated write.
//! - [`codec`]: versioned, size-capped postcard + base64 encoding of replicated values.
//! - [`session_config`]: the session configuration keys, their defaults and validation.
//! - [`state`]: session ids, the CRDT session records and their join (`state/record.rs`),
//!   and validated operations (`state/ops.rs`).
//! - [`view`]: owner-written node records and the membership view.
//! - [`gossip`]: the chitchat `Transport` adapter over a [`network::Link`], with identity checks.
//! - [`node`]: a running mesh node: chitchat + replicated state; in `node/`: start,
//!   membership, the generation answer, eager push and acks, the refresh, custody.
//! - `probe` (private): at start, what the seeds hold for this node id, and whether it
//!   already runs elsewhere.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod codec;
pub mod faults;
pub mod gossip;
pub mod hlc;
pub mod mem;
pub mod network;
pub mod node;
mod probe;
pub mod quic;
pub mod session_config;
pub mod state;
pub mod tls;
pub mod view;
