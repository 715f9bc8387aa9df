//! georep-mesh: the part of georep every other capability stands on.
//!
//! - [`tls`]: the cluster CA, node certificates (node id in the SAN), mutual-TLS configs.
//! - [`network`]: the [`network::Link`] trait and frame format every transport speaks.
//! - [`quic`]: the QUIC [`network::Link`] (quinn + rustls, ring), one connection per peer.
//! - [`mem`]: an in-memory [`network::Link`] hub for fast tests and the simulator.
//! - [`faults`]: a fault-injecting [`network::Link`] wrapper (loss, delay, duplication, partitions),
//!   per directed link or by destination IP network.
//! - [`hlc`]: hybrid logical clock stamping every replicated write.
//! - [`codec`]: versioned, size-capped postcard + base64 encoding of replicated values.
//! - [`session_config`]: the session configuration keys, their defaults and validation.
//! - [`state`]: the CRDT session records, their join, and validated operations.
//! - [`view`]: owner-written node records and the membership view.
//! - [`gossip`]: the chitchat `Transport` adapter over a [`network::Link`], with identity checks.
//! - [`node`]: a running mesh node: chitchat + replicated state + eager push + custodians.
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
