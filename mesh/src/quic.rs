//! The QUIC [`Link`]: quinn over mutual TLS (ring), one cached connection per peer.
//!
//! One quinn endpoint is both server and client on a single UDP socket, so the
//! remote address of a peer's connection is the peer's gossip address, and a
//! connection the peer dialled is reused for sending to it (DESIGN: a connection
//! costs ~200 KB, keep one per peer pair). Every frame travels on its own
//! unidirectional stream: header, payload, finish.
//!
//! A peer is authenticated by rustls during the handshake (certificate chaining to
//! the cluster CA, both directions); its node id is then read from its certificate
//! and attached to every frame it delivers. What a peer can make us do is bounded:
//! over-size headers are refused before allocation, reads have a deadline, the
//! receive queue is bounded (a full queue drops and counts; anti-entropy repairs),
//! as are concurrent streams per connection, connections and dials.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, IdleTimeout, RecvStream, TransportConfig, VarInt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::network::{
    FRAME_HEADER_LEN, Frame, Link, LinkStats, MAX_FRAME_PAYLOAD, Received, TransportError,
};
use crate::tls::{NodeIdentity, node_id_from_cert};

/// Server name put in the TLS ClientHello. Peers do not check it: identity is the
/// node id in the certificate, and a dialler knows only an address.
const TLS_SERVER_NAME: &str = "georep";

/// Per-stream receive window: one maximal frame fits without waiting for credit.
const STREAM_RECEIVE_WINDOW: u32 = (MAX_FRAME_PAYLOAD + FRAME_HEADER_LEN) as u32;

/// Per-connection receive window: one maximal frame plus room for gossip beside it.
/// Buffers are allocated as data arrives, so this caps, not reserves, memory.
const CONNECTION_RECEIVE_WINDOW: u32 = 2 * STREAM_RECEIVE_WINDOW;

/// Per-connection send window (bytes in flight).
const SEND_WINDOW: u64 = 2 * STREAM_RECEIVE_WINDOW as u64;

/// Two connections to one peer whose handshakes overlapped (give or take this, for
/// the one-way delay and scheduling) are a simultaneous dial, resolved by address
/// order; otherwise the newer replaces the older, which is likely dead: the peer
/// restarted. (A span measured from the first connection's establishment, as before,
/// kept a peer restarted within it talking to the dead connection of its previous
/// incarnation for up to that span: CI caught an agent cut off for 6 s that way.)
const HANDSHAKE_SLACK: Duration = Duration::from_millis(500);

/// How long a superseded connection stays open so frames in flight on it land.
const DUPLICATE_GRACE: Duration = Duration::from_secs(2);

/// How long `close` waits for tasks and for quinn to send its close frames.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Application close codes.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_DUPLICATE: u32 = 1;
const CLOSE_NO_NODE_ID: u32 = 2;

/// Stream stop code telling a peer its frame was refused.
const STOP_REJECTED: u32 = 1;

/// Tunables of a [`QuicLink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicOptions {
    /// A connection silent for this long is closed (negotiated: the lower side wins).
    pub idle_timeout: Duration,
    /// Keep-alive interval on open connections, so a quiet peer is not dropped.
    pub keep_alive: Duration,
    /// Longest a dial (waiting for a dial slot plus the handshake) may take.
    pub connect_timeout: Duration,
    /// Longest opening a stream and writing one frame may take.
    pub send_timeout: Duration,
    /// Longest reading one frame may take once its stream opened.
    pub frame_read_timeout: Duration,
    /// Received frames waiting for `recv`; beyond this, frames are dropped and counted.
    pub recv_queue: usize,
    /// Dials in progress at once; further dials wait (within `connect_timeout`).
    pub max_concurrent_dials: usize,
    /// Connections open at once (incoming ones beyond this are refused).
    pub max_connections: usize,
    /// Unidirectional streams (frames) a peer may have open at once on one connection.
    pub max_streams_per_connection: u32,
}

impl Default for QuicOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(3),
            send_timeout: Duration::from_secs(5),
            frame_read_timeout: Duration::from_secs(10),
            recv_queue: 4096,
            max_concurrent_dials: 64,
            max_connections: 1024,
            max_streams_per_connection: 64,
        }
    }
}

/// A node's QUIC endpoint on the mesh network.
pub struct QuicLink {
    shared: Arc<Shared>,
    node_id: String,
    received: tokio::sync::Mutex<mpsc::Receiver<Received>>,
}

/// State shared by the link and its tasks.
struct Shared {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    client_config: quinn::ClientConfig,
    options: QuicOptions,
    /// One slot per peer address: the connection used to send to it.
    peers: Mutex<HashMap<SocketAddr, Arc<PeerSlot>>>,
    dial_permits: Semaphore,
    live_connections: AtomicUsize,
    stats: Arc<LinkStats>,
    deliver: mpsc::Sender<Received>,
    shutdown: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
}

type PeerSlot = tokio::sync::Mutex<Slot>;

/// What we know about sending to one peer address.
#[derive(Default)]
struct Slot {
    conn: Option<Cached>,
    /// Last failed dial, so that sends queued behind it fail at once instead of
    /// each waiting out its own connect timeout.
    failure: Option<(Instant, String)>,
}

#[derive(Clone)]
struct Cached {
    conn: Connection,
    dialled: bool,
    /// When its handshake began here: our first packet went out (dialled) or the
    /// peer's first packet arrived (accepted).
    began: Instant,
    /// When its handshake completed here.
    since: Instant,
}

impl Cached {
    fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }
}

/// Counts a connection as live while its reader runs (even if the reader is aborted).
struct LiveConnection<'a>(&'a AtomicUsize);

impl<'a> LiveConnection<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for LiveConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a stream did not yield a frame.
enum StreamFailure {
    /// The peer sent something that is not a frame; counted and logged.
    Rejected(String),
    /// The link is shutting down.
    Shutdown,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Cache key and reported address of a peer: IPv4-mapped IPv6 addresses (seen on
/// dual-stack sockets) are folded to IPv4 so both spellings share one connection.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// The node id proven by a connection's peer certificate.
pub fn peer_node_id(conn: &Connection) -> Result<String, String> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| "peer presented no certificate".to_owned())?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| "peer identity is not a certificate chain".to_owned())?;
    let end_entity = certs
        .first()
        .ok_or_else(|| "peer presented an empty certificate chain".to_owned())?;
    node_id_from_cert(end_entity).map_err(|e| e.to_string())
}

fn transport_config(options: &QuicOptions) -> Result<TransportConfig, String> {
    let idle = IdleTimeout::try_from(options.idle_timeout)
        .map_err(|_| format!("idle timeout {:?} is too large", options.idle_timeout))?;
    let mut config = TransportConfig::default();
    config
        .max_idle_timeout(Some(idle))
        .keep_alive_interval((!options.keep_alive.is_zero()).then_some(options.keep_alive))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(options.max_streams_per_connection))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(None);
    Ok(config)
}

impl QuicLink {
    /// Binds a QUIC endpoint on `listen` (port 0 picks one; see [`Link::local_addr`])
    /// authenticating as `identity`, and starts accepting peers.
    ///
    /// Must be called inside a Tokio runtime.
    pub fn bind(
        listen: SocketAddr,
        identity: &NodeIdentity,
        options: QuicOptions,
    ) -> Result<Arc<QuicLink>, TransportError> {
        let bind_err = |reason: String| TransportError::Bind {
            addr: listen,
            reason,
        };
        tokio::runtime::Handle::try_current()
            .map_err(|_| bind_err("QuicLink::bind must run inside a Tokio runtime".into()))?;
        let mut options = options;
        options.recv_queue = options.recv_queue.max(1);
        options.max_concurrent_dials = options.max_concurrent_dials.max(1);
        options.max_connections = options.max_connections.max(1);
        options.max_streams_per_connection = options.max_streams_per_connection.max(1);

        let transport = Arc::new(transport_config(&options).map_err(bind_err)?);
        let server_crypto = QuicServerConfig::try_from(identity.server_config()?)
            .map_err(|e| bind_err(format!("TLS server config unusable for QUIC: {e}")))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config
            .transport_config(transport.clone())
            // The remote address is the peer's gossip address; it must not move.
            .migration(false)
            .max_incoming(options.max_connections);
        let client_crypto = QuicClientConfig::try_from(identity.client_config()?)
            .map_err(|e| bind_err(format!("TLS client config unusable for QUIC: {e}")))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);

        let endpoint =
            Endpoint::server(server_config, listen).map_err(|e| bind_err(e.to_string()))?;
        let local_addr = endpoint.local_addr().map_err(|e| bind_err(e.to_string()))?;
        let (deliver, received) = mpsc::channel(options.recv_queue);
        let shared = Arc::new(Shared {
            endpoint,
            local_addr,
            client_config,
            dial_permits: Semaphore::new(options.max_concurrent_dials),
            options,
            peers: Mutex::new(HashMap::new()),
            live_connections: AtomicUsize::new(0),
            stats: Arc::new(LinkStats::default()),
            deliver,
            shutdown: CancellationToken::new(),
            tasks: Mutex::new(JoinSet::new()),
        });
        let accepting = shared.clone();
        shared.spawn(async move { accepting.accept_loop().await });
        tracing::debug!(%local_addr, node = identity.node_id(), "QUIC link listening");
        Ok(Arc::new(QuicLink {
            shared,
            node_id: identity.node_id().to_owned(),
            received: tokio::sync::Mutex::new(received),
        }))
    }

    /// Established connections (dialled or accepted), for tests and `inspect`.
    pub fn connection_count(&self) -> usize {
        self.shared.live_connections.load(Ordering::Relaxed)
    }

    async fn try_send(&self, to: SocketAddr, bytes: &[u8]) -> Result<(), TransportError> {
        let send_err = |reason: String| TransportError::Send { to, reason };
        // A cached connection may have died without us noticing yet: retry once on a
        // fresh one when the failure is the connection's, not the stream's.
        for attempt in 0..2 {
            let conn = self.shared.connection_to(to).await?;
            let write = async {
                let mut stream = conn.open_uni().await.map_err(|e| (true, e.to_string()))?;
                stream.write_all(bytes).await.map_err(|e| {
                    let lost = matches!(e, quinn::WriteError::ConnectionLost(_));
                    (lost, e.to_string())
                })?;
                stream.finish().map_err(|e| (false, e.to_string()))
            };
            let outcome = tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => return Err(TransportError::Closed),
                outcome = tokio::time::timeout(self.shared.options.send_timeout, write) => outcome,
            };
            match outcome {
                Ok(Ok(())) => return Ok(()),
                Ok(Err((true, reason))) if attempt == 0 => {
                    tracing::debug!(%to, %reason, "cached connection failed, reconnecting");
                    self.shared.forget(to, &conn).await;
                }
                Ok(Err((_, reason))) => return Err(send_err(reason)),
                Err(_) => return Err(send_err("timed out writing the frame".into())),
            }
        }
        Err(send_err("connection lost twice".into()))
    }
}

impl Drop for QuicLink {
    fn drop(&mut self) {
        // Tasks hold `Shared`, not the link: stop them when the link goes away.
        self.shared.shutdown.cancel();
        self.shared
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    }
}

impl std::fmt::Debug for QuicLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicLink")
            .field("node_id", &self.node_id)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Link for QuicLink {
    fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn send(&self, to: SocketAddr, frame: Frame) -> Result<(), TransportError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(TransportError::Closed);
        }
        if frame.payload.len() > MAX_FRAME_PAYLOAD {
            return Err(TransportError::Send {
                to,
                reason: format!(
                    "frame payload of {} bytes exceeds the {MAX_FRAME_PAYLOAD}-byte cap",
                    frame.payload.len()
                ),
            });
        }
        let bytes = frame.encode();
        self.try_send(canonical(to), &bytes).await?;
        self.shared.stats.record_sent(bytes.len());
        Ok(())
    }

    async fn recv(&self) -> Result<Received, TransportError> {
        let shutdown = &self.shared.shutdown;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Err(TransportError::Closed),
            received = async { self.received.lock().await.recv().await } => {
                received.ok_or(TransportError::Closed)
            }
        }
    }

    fn stats(&self) -> Arc<LinkStats> {
        self.shared.stats.clone()
    }

    async fn close(&self) {
        let shared = &self.shared;
        shared.shutdown.cancel();
        shared
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        let mut tasks = std::mem::take(&mut *lock(&shared.tasks));
        let drained = tokio::time::timeout(CLOSE_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(local_addr = %shared.local_addr, "QUIC link tasks slow to stop, aborting them");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        lock(&shared.peers).clear();
        // Let quinn tell peers we are gone, so they drop their connections now.
        let _ = tokio::time::timeout(CLOSE_GRACE, shared.endpoint.wait_idle()).await;
    }
}

impl Shared {
    /// Spawns a task owned by the link; refused once shutdown began.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        if self.shutdown.is_cancelled() {
            return;
        }
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// The slot of `to`, created if needed (bounded by `max_connections`).
    fn slot(&self, to: SocketAddr) -> Result<Arc<PeerSlot>, TransportError> {
        let mut peers = lock(&self.peers);
        if let Some(slot) = peers.get(&to) {
            return Ok(slot.clone());
        }
        if peers.len() >= self.options.max_connections {
            // Drop slots holding nothing useful; busy ones (a dial) are kept.
            peers.retain(|_, slot| {
                slot.try_lock()
                    .map(|s| s.conn.as_ref().is_some_and(Cached::is_open))
                    .unwrap_or(true)
            });
            if peers.len() >= self.options.max_connections {
                return Err(TransportError::Send {
                    to,
                    reason: format!("{} peers already connected (max_connections)", peers.len()),
                });
            }
        }
        Ok(peers.entry(to).or_default().clone())
    }

    fn is_current(&self, to: SocketAddr, slot: &Arc<PeerSlot>) -> bool {
        lock(&self.peers)
            .get(&to)
            .is_some_and(|current| Arc::ptr_eq(current, slot))
    }

    /// Removes the slot of `to` if it holds no open connection and nobody uses it.
    fn prune(&self, to: SocketAddr) {
        let mut peers = lock(&self.peers);
        if let Entry::Occupied(entry) = peers.entry(to) {
            let idle = entry
                .get()
                .try_lock()
                .is_ok_and(|s| !s.conn.as_ref().is_some_and(Cached::is_open));
            if idle {
                entry.remove();
            }
        }
    }

    /// The connection to send to `to` on: the cached one, or a fresh dial.
    async fn connection_to(self: &Arc<Self>, to: SocketAddr) -> Result<Connection, TransportError> {
        let started = Instant::now();
        loop {
            let slot = self.slot(to)?;
            let mut guard = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Err(TransportError::Closed),
                guard = slot.lock() => guard,
            };
            if !self.is_current(to, &slot) {
                continue; // pruned while we waited; use the live slot
            }
            if let Some(cached) = &guard.conn {
                if cached.is_open() {
                    return Ok(cached.conn.clone());
                }
                guard.conn = None;
            }
            if let Some((at, reason)) = &guard.failure
                && *at >= started
            {
                return Err(TransportError::Send {
                    to,
                    reason: reason.clone(),
                });
            }
            // Holding this peer's slot (not the map) across the dial: concurrent sends
            // to the same peer share one dial, sends to other peers are not delayed.
            match self.dial(to).await {
                Ok((conn, peer_node, began)) => {
                    guard.failure = None;
                    guard.conn = Some(Cached {
                        conn: conn.clone(),
                        dialled: true,
                        began,
                        since: Instant::now(),
                    });
                    drop(guard);
                    let reader = self.clone();
                    let reading = conn.clone();
                    self.spawn(async move { reader.run_connection(reading, to, peer_node).await });
                    return Ok(conn);
                }
                Err(TransportError::Send { reason, .. }) => {
                    guard.failure = Some((Instant::now(), reason.clone()));
                    drop(guard);
                    self.prune(to);
                    return Err(TransportError::Send { to, reason });
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Dials `to`; the connection, the peer's node id, and when the handshake began
    /// (after any wait for a dial slot).
    async fn dial(&self, to: SocketAddr) -> Result<(Connection, String, Instant), TransportError> {
        let send_err = |reason: String| TransportError::Send { to, reason };
        let deadline = Instant::now() + self.options.connect_timeout;
        let dialling = async {
            let _permit = tokio::time::timeout_at(deadline, self.dial_permits.acquire())
                .await
                .map_err(|_| send_err("timed out waiting for a dial slot".into()))?
                .map_err(|_| TransportError::Closed)?;
            let began = Instant::now();
            let connecting = self
                .endpoint
                .connect_with(self.client_config.clone(), to, TLS_SERVER_NAME)
                .map_err(|e| send_err(format!("cannot connect: {e}")))?;
            let conn = tokio::time::timeout_at(deadline, connecting)
                .await
                .map_err(|_| {
                    send_err(format!(
                        "no handshake within {:?}",
                        self.options.connect_timeout
                    ))
                })?
                .map_err(|e| send_err(format!("handshake failed: {e}")))?;
            match peer_node_id(&conn) {
                Ok(peer_node) => Ok((conn, peer_node, began)),
                Err(reason) => {
                    conn.close(VarInt::from_u32(CLOSE_NO_NODE_ID), b"no node id");
                    Err(send_err(reason))
                }
            }
        };
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Err(TransportError::Closed),
            dialled = dialling => dialled,
        }
    }

    /// Drops `conn` from the slot of `to` if it is still the cached one.
    async fn forget(&self, to: SocketAddr, conn: &Connection) {
        let slot = lock(&self.peers).get(&to).cloned();
        if let Some(slot) = slot {
            let mut guard = slot.lock().await;
            if guard
                .conn
                .as_ref()
                .is_some_and(|c| c.conn.stable_id() == conn.stable_id())
            {
                guard.conn = None;
            }
        }
        self.prune(to);
    }

    /// Caches an accepted connection for sending to `from`, resolving duplicates;
    /// `began` is when the peer's first packet arrived.
    async fn register_accepted(
        self: &Arc<Self>,
        from: SocketAddr,
        conn: &Connection,
        began: Instant,
    ) {
        // Before waiting for the slot, which a dial of ours may hold.
        let new = Cached {
            conn: conn.clone(),
            dialled: false,
            began,
            since: Instant::now(),
        };
        let Ok(slot) = self.slot(from) else {
            return; // full: the connection still delivers, we just do not send on it
        };
        let mut guard = slot.lock().await;
        let retired = match guard.conn.take() {
            Some(old) if old.is_open() => {
                if self.keep_new(from, &old, &new) {
                    guard.conn = Some(new.clone());
                    old.conn
                } else {
                    guard.conn = Some(old);
                    new.conn
                }
            }
            _ => {
                guard.conn = Some(new);
                return;
            }
        };
        drop(guard);
        tracing::debug!(peer = %from, "two connections to one peer, closing one");
        let shutdown = self.shutdown.clone();
        self.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(DUPLICATE_GRACE) => {
                    retired.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate connection");
                }
            }
        });
    }

    /// Whether `new` should replace the open connection `old` to `peer`.
    fn keep_new(&self, peer: SocketAddr, old: &Cached, new: &Cached) -> bool {
        let overlapped = |a: &Cached, b: &Cached| a.began <= b.since + HANDSHAKE_SLACK;
        let simultaneous = overlapped(old, new) && overlapped(new, old);
        // Both ends agree on this rule: keep the connection the lower address dialled.
        let lower_dialled = |c: &Cached| c.dialled == (self.local_addr < peer);
        if simultaneous && lower_dialled(old) != lower_dialled(new) {
            lower_dialled(new)
        } else {
            // The older one is likely dead (the peer restarted and dialled anew).
            true
        }
    }

    async fn accept_loop(self: Arc<Self>) {
        loop {
            let incoming = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            let remote = canonical(incoming.remote_address());
            let open = self.endpoint.open_connections();
            if open >= self.options.max_connections {
                tracing::warn!(%remote, open, "refusing mesh connection: too many connections");
                incoming.refuse();
                continue;
            }
            let handler = self.clone();
            self.spawn(async move { handler.handle_incoming(incoming, remote).await });
        }
    }

    async fn handle_incoming(self: Arc<Self>, incoming: quinn::Incoming, remote: SocketAddr) {
        let began = Instant::now();
        let connecting = match incoming.accept() {
            Ok(connecting) => connecting,
            Err(e) => {
                tracing::warn!(%remote, reason = %e, "refused mesh connection");
                return;
            }
        };
        let handshake = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return,
            handshake = tokio::time::timeout(self.options.connect_timeout, connecting) => handshake,
        };
        let conn = match handshake {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::warn!(%remote, reason = %e, "refused mesh connection");
                return;
            }
            Err(_) => {
                tracing::warn!(%remote, reason = "handshake timed out", "refused mesh connection");
                return;
            }
        };
        let peer_node = match peer_node_id(&conn) {
            Ok(peer_node) => peer_node,
            Err(reason) => {
                tracing::warn!(%remote, %reason, "refused mesh connection");
                conn.close(VarInt::from_u32(CLOSE_NO_NODE_ID), b"no node id");
                return;
            }
        };
        tracing::debug!(%remote, %peer_node, "accepted mesh connection");
        // Registered before reading: once a peer's frame is seen, replies reuse its connection.
        self.register_accepted(remote, &conn, began).await;
        self.run_connection(conn, remote, peer_node).await;
    }

    /// Reads frames from every stream the peer opens on `conn`, until it closes.
    async fn run_connection(
        self: Arc<Self>,
        conn: Connection,
        remote: SocketAddr,
        peer_node: String,
    ) {
        let live = LiveConnection::new(&self.live_connections);
        let mut streams = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(_) = streams.join_next(), if !streams.is_empty() => {}
                accepted = conn.accept_uni() => match accepted {
                    Ok(stream) => {
                        let reader = self.clone();
                        let peer_node = peer_node.clone();
                        streams.spawn(async move { reader.read_stream(stream, remote, peer_node).await });
                    }
                    Err(e) => {
                        tracing::debug!(%remote, %peer_node, reason = %e, "mesh connection ended");
                        break;
                    }
                },
            }
        }
        // Streams already accepted finish on their own: each read ends with the data,
        // the connection's error, the read deadline or shutdown.
        while streams.join_next().await.is_some() {}
        drop(live);
        if !self.shutdown.is_cancelled() {
            self.forget(remote, &conn).await;
        }
    }

    async fn read_stream(
        self: Arc<Self>,
        mut stream: RecvStream,
        from: SocketAddr,
        peer_node: String,
    ) {
        let outcome = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Err(StreamFailure::Shutdown),
            read = tokio::time::timeout(self.options.frame_read_timeout, read_frame(&mut stream)) => {
                read.unwrap_or_else(|_| Err(StreamFailure::Rejected("frame not complete in time".into())))
            }
        };
        match outcome {
            Ok(frame) => {
                let bytes = FRAME_HEADER_LEN + frame.payload.len();
                let received = Received {
                    from,
                    peer_node,
                    frame,
                };
                match self.deliver.try_send(received) {
                    Ok(()) => self.stats.record_received(bytes),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.stats.record_shed();
                        tracing::debug!(%from, "receive queue full, frame dropped");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            Err(StreamFailure::Rejected(reason)) => {
                self.stats.record_rejected();
                tracing::warn!(%from, %peer_node, %reason, "dropping malformed frame");
                let _ = stream.stop(VarInt::from_u32(STOP_REJECTED));
            }
            Err(StreamFailure::Shutdown) => {}
        }
    }
}

/// Reads one frame: the header first, validated before the payload is allocated.
async fn read_frame(stream: &mut RecvStream) -> Result<Frame, StreamFailure> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| StreamFailure::Rejected(format!("reading the header: {e}")))?;
    let (kind, len) =
        Frame::decode_header(&header).map_err(|e| StreamFailure::Rejected(e.to_string()))?;
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|e| StreamFailure::Rejected(format!("reading a {len}-byte payload: {e}")))?;
    Ok(Frame::new(kind, payload))
}

#[cfg(test)]
mod tests;
