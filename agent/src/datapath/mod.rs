//! The built-in monitor's data path over QUIC (see `georep-datapath` for the index,
//! operations and the applier): the secondary agent's server ([`server`]) and the
//! primary worker's client ([`client`]), one connection per worker on an endpoint of
//! its own (the mesh's endpoint has windows sized for gossip; bulk data must not
//! starve it), authenticated with the mesh's certificates under ALPN `georep-data/7`
//! ([`georep_datapath::proto::ALPN`]).
//!
//! Each agent publishes the address of its data endpoint under the mesh key
//! [`DATA_ADDR_KEY`]; the agent writes what a worker needs (secondary endpoints,
//! replica sets, settings, certificate paths) into `datapath.json` in the session
//! directory ([`WorkerPlan`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use georep_datapath::proto::MAX_MESSAGE;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod client;
mod saved_index;
pub mod server;
pub mod watch;

/// Mesh key under which a node publishes its data endpoint (`ip:port`).
pub const DATA_ADDR_KEY: &str = "data";
/// The worker plan's file in a session directory.
pub const PLAN_FILE: &str = "datapath.json";

/// What a worker needs to know, written by the agent into the session directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerPlan {
    /// The session's directory name (its id on the wire).
    pub session: String,
    /// Local brick path -> its replica set.
    pub replica_sets: std::collections::BTreeMap<String, u32>,
    /// Live secondary nodes and their data endpoints, in preference order.
    pub secondaries: Vec<(String, SocketAddr)>,
    /// Keep on the secondary what the primary deletes.
    pub ignore_deletes: bool,
    /// Seconds between rescans.
    pub change_interval_s: u64,
    /// Large files in flight at once, each on a stream of its own (`sync-jobs`).
    #[serde(default = "one")]
    pub sync_jobs: usize,
    /// The checkpoint (Unix seconds; 0: none).
    #[serde(default)]
    pub checkpoint: u64,
    /// The cluster CA, this node's certificate and key.
    pub tls: [PathBuf; 3],
}

fn one() -> usize {
    1
}

/// Why a message could not be exchanged.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The stream failed or ended.
    #[error("stream: {0}")]
    Stream(String),
    /// Over [`MAX_MESSAGE`].
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Not decodable.
    #[error("undecodable message: {0}")]
    Decode(String),
}

/// Writes one length-prefixed postcard message, handed to quinn as one buffer it
/// keeps (a staged piece is 8 MiB: not copied again on its way out).
pub async fn write_msg<T: Serialize>(
    send: &mut quinn::SendStream,
    message: &T,
) -> Result<(), WireError> {
    let mut framed =
        postcard::to_extend(message, vec![0u8; 4]).map_err(|e| WireError::Decode(e.to_string()))?;
    let len = framed.len() - 4;
    if len > MAX_MESSAGE {
        return Err(WireError::TooLarge(len));
    }
    framed[..4].copy_from_slice(&(len as u32).to_le_bytes());
    send.write_chunk(bytes::Bytes::from(framed))
        .await
        .map_err(|e| WireError::Stream(e.to_string()))
}

/// [`write_msg`], then `data` raw right after it (a `Stage`'s chunk bytes, each handed
/// to quinn as it is: no copy).
pub async fn write_msg_and_data<T: Serialize>(
    send: &mut quinn::SendStream,
    message: &T,
    mut data: Vec<bytes::Bytes>,
) -> Result<(), WireError> {
    write_msg(send, message).await?;
    send.write_all_chunks(&mut data)
        .await
        .map_err(|e| WireError::Stream(e.to_string()))
}

/// The `len` raw bytes that follow a message (a `Stage`'s chunk bytes), in one buffer
/// (copied once out of quinn's, never zeroed first).
pub async fn read_data(recv: &mut quinn::RecvStream, len: u64) -> Result<Vec<u8>, WireError> {
    if len > MAX_MESSAGE as u64 {
        return Err(WireError::TooLarge(len as usize));
    }
    let len = len as usize;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        match recv.read_chunk(len - data.len(), true).await {
            Ok(Some(chunk)) => data.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(WireError::Stream(
                    "the stream ended inside a message".into(),
                ));
            }
            Err(e) => return Err(WireError::Stream(e.to_string())),
        }
    }
    Ok(data)
}

/// Reads one length-prefixed postcard message; `Ok(None)` at a clean end of stream.
pub async fn read_msg<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, WireError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(WireError::Stream(e.to_string())),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| WireError::Stream(e.to_string()))?;
    postcard::from_bytes(&body)
        .map(Some)
        .map_err(|e| WireError::Decode(e.to_string()))
}

/// QUIC transport settings for bulk data: windows large enough for one maximal
/// message in flight.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(quinn::VarInt::from_u32(16 << 20))
        .receive_window(quinn::VarInt::from_u32(32 << 20))
        .send_window(32 << 20)
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(std::time::Duration::from_secs(10))
                .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(10_000))),
        ))
        // A dead secondary is noticed within the idle timeout; the worker then moves
        // to another one.
        .keep_alive_interval(Some(std::time::Duration::from_secs(2)))
        .mtu_discovery_config(Some({
            let mut mtud = quinn::MtuDiscoveryConfig::default();
            mtud.upper_bound(MAX_DATAGRAM);
            mtud
        }));
    Arc::new(transport)
}

/// Largest UDP payload the data path sends or accepts: where the path carries it
/// (loopback, jumbo frames), MTU discovery climbs from 1200 bytes to this, so a chunk
/// crosses the kernel in a fifth of the datagrams (QUIC's per-datagram cost, in the
/// kernel and in quinn, is most of a transfer's CPU at Ethernet's 1452 bytes). On a
/// 1500-byte path discovery stays at 1452. Not more: quinn hands the kernel up to 10
/// datagrams in one segmentation-offload send, whose total must stay within one IP
/// packet (65 507 bytes), or the send fails and is taken for loss (a black hole that
/// drops the size back to 1200). quinn sizes its receive buffer by it (times 64 GRO
/// segments times 32 datagrams, virtual memory: only what a read fills is touched).
pub const MAX_DATAGRAM: u16 = 6500;

/// Socket buffer bytes asked for each way (the kernel doubles it for its own
/// bookkeeping). With Linux's default of 208 KiB, a bulk transfer overflows the
/// receiver's buffer within a millisecond whenever its reader is busy hashing or
/// writing: measured on loopback, 8 800 datagrams lost in one 1 GiB file, each loss
/// halving the congestion window and the bursts of them taken for an MTU black hole.
const SOCKET_BUFFER: usize = 8 << 20;

/// Gives `socket` [`SOCKET_BUFFER`] bytes each way: beyond `net.core.rmem_max` /
/// `wmem_max` when the agent may (root: `SO_RCVBUFFORCE`), else up to them. What the
/// kernel refuses is logged, never fatal: the data path works with less, slower.
fn size_buffers(socket: &std::net::UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let size = SOCKET_BUFFER;
    if setsockopt(socket, sockopt::RcvBufForce, &size).is_err()
        && let Err(error) = setsockopt(socket, sockopt::RcvBuf, &size)
    {
        tracing::debug!(%error, "cannot size the data path's receive buffer");
    }
    if setsockopt(socket, sockopt::SndBufForce, &size).is_err()
        && let Err(error) = setsockopt(socket, sockopt::SndBuf, &size)
    {
        tracing::debug!(%error, "cannot size the data path's send buffer");
    }
}

/// A data-path QUIC endpoint on `addr` (serving with `server` when given) that sends
/// and accepts datagrams of up to [`MAX_DATAGRAM`].
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_DATAGRAM)
        .map_err(std::io::Error::other)?;
    let socket = std::net::UdpSocket::bind(addr)?;
    size_buffers(&socket);
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
    quinn::Endpoint::new(config, server, socket, runtime)
}

/// The plan for this node's workers of the session `view`, from the converged
/// membership, the data endpoints nodes published, this node's TLS files and its
/// `bricks`; `None` when this node has no brick of the primary volume.
pub fn plan_for(
    view: &georep_mesh::SessionView,
    membership: &georep_mesh::Membership,
    data_addrs: &georep_mesh::OwnedValues,
    config: &crate::config::AgentConfig,
    bricks: &[crate::config::BrickSpec],
) -> Option<WorkerPlan> {
    let replica_sets: std::collections::BTreeMap<String, u32> = bricks
        .iter()
        .filter(|b| b.volume == view.id.primary_volume)
        .map(|b| (b.path.display().to_string(), b.replica_set))
        .collect();
    if replica_sets.is_empty() {
        return None;
    }
    let secondaries = membership
        .live()
        .filter(|m| m.hosts(&view.id.secondary_volume))
        .filter_map(|m| {
            let addr = data_addrs.get(&m.node_id)?.parse().ok()?;
            Some((m.node_id.clone(), addr))
        })
        .collect();
    let effective = view.effective_config();
    let value = |key: &str| {
        effective
            .iter()
            .find(|(name, ..)| *name == key)
            .map(|(_, value, ..)| value.clone())
            .unwrap_or_default()
    };
    Some(WorkerPlan {
        session: view.id.dir_name(),
        replica_sets,
        secondaries,
        ignore_deletes: matches!(
            value("ignore-deletes").as_str(),
            "true" | "1" | "yes" | "on"
        ),
        change_interval_s: value("change-interval").parse().unwrap_or(5),
        sync_jobs: value("sync-jobs").parse().unwrap_or(3),
        checkpoint: value("checkpoint").parse().unwrap_or(0),
        tls: [
            config.tls_ca.clone(),
            config.tls_cert.clone(),
            config.tls_key.clone(),
        ],
    })
}
