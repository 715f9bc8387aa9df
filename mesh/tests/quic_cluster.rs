//! Scenario tests of whole mesh nodes over real QUIC on loopback, in one process.
//!
//! Certificates are generated into a temporary directory with the `tls` module, as an
//! operator would with `georep tls`. Besides convergence, these tests attack the mesh
//! from inside the network: a node of another cluster CA, a node gossiping under a node
//! id its certificate does not carry, and an authenticated peer writing garbage.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{ChitchatMessage, Serializable};
use common::*;
use georep_mesh::SystemClock;
use georep_mesh::codec;
use georep_mesh::{CA_CERT_FILE, NodeIdentity, write_ca, write_node_cert};
use georep_mesh::{Frame, FrameKind, Link};
use georep_mesh::{Membership, NodeInfo};
use georep_mesh::{MeshConfig, MeshNode, NODE_KEY};
use georep_mesh::{QuicLink, QuicOptions};
use georep_mesh::{SessionId, SessionOp};
use quinn::crypto::rustls::QuicClientConfig;
use tempfile::TempDir;
use tokio::time::Instant;

const LOOPBACK: &str = "127.0.0.1:0";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// A cluster CA and node certificates, written to a temporary directory.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_ca(dir.path()).unwrap();
        Self { dir }
    }

    /// Issues (once per id) and loads the identity of `node_id`.
    fn identity(&self, node_id: &str) -> NodeIdentity {
        let dir = self.dir.path();
        let files = write_node_cert(dir, node_id, &[], &[], dir).unwrap();
        NodeIdentity::load(&dir.join(CA_CERT_FILE), &files.cert, &files.key).unwrap()
    }

    fn link(&self, node_id: &str) -> Arc<QuicLink> {
        QuicLink::bind(
            LOOPBACK.parse().unwrap(),
            &self.identity(node_id),
            QuicOptions::default(),
        )
        .unwrap()
    }
}

/// A node with a chosen config and node info on a chosen link.
async fn start_with(config: MeshConfig, link: Arc<dyn Link>, info: &NodeInfo) -> MeshNode {
    let info = codec::encode(info).unwrap();
    MeshNode::start(
        config,
        link,
        Arc::new(SystemClock),
        None,
        vec![(NODE_KEY.to_string(), info)],
    )
    .await
    .unwrap()
}

/// `n` honest nodes `n00..`, each on its own QUIC link, all seeding from `n00`.
async fn quic_cluster(
    pki: &Pki,
    n: usize,
    interval: Duration,
) -> (Vec<MeshNode>, Vec<Arc<QuicLink>>) {
    let mut nodes = Vec::new();
    let mut links = Vec::new();
    let mut seed = None;
    for i in 0..n {
        let link = pki.link(&node_name(i));
        let seed = *seed.get_or_insert(link.local_addr());
        nodes.push(start(i, link.clone(), seed, interval).await);
        links.push(link);
    }
    (nodes, links)
}

/// A fixed-seed pseudo-random index below `n` (splitmix64), so a failure reproduces.
fn pick(seed: u64, n: usize) -> usize {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % n as u64) as usize
}

fn exists(session: &SessionId) -> impl Fn(&georep_mesh::Replica) -> bool + '_ {
    move |r| r.view(session).is_some_and(|v| v.exists)
}

/// Creates the test session on a fixed-seed random node of `nodes`, waits until every
/// replica shows it and the writer's `progress()` confirms every node.
async fn create_converges_and_confirms(nodes: &[MeshNode], seed: u64, within: Duration) {
    let refs: Vec<&MeshNode> = nodes.iter().collect();
    let writer = &nodes[pick(seed, nodes.len())];
    let receipt = writer.apply(&session(), &create()).await.unwrap();
    let took = wait_converged(&refs, within, exists(&session())).await;
    eprintln!(
        "{} nodes: replicas converged {took:?} after the create on {}",
        nodes.len(),
        writer.node_id()
    );
    let started = Instant::now();
    loop {
        let progress = writer.progress(&receipt).await;
        if progress.confirmed.len() == nodes.len() {
            assert!(
                progress.complete() && progress.dead.is_empty(),
                "{progress:?}"
            );
            break;
        }
        assert!(
            started.elapsed() < within,
            "writer never confirmed everyone: {progress:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{} nodes: writer confirmed all {} nodes {:?} later",
        nodes.len(),
        nodes.len(),
        started.elapsed()
    );
}

/// Shuts every node down at once (each waits up to a second for QUIC to close).
async fn shutdown_all(nodes: Vec<MeshNode>) {
    let mut closing = tokio::task::JoinSet::new();
    for node in nodes {
        closing.spawn(node.shutdown());
    }
    while let Some(done) = closing.join_next().await {
        done.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_five_nodes_converge_and_confirm() {
    init_tracing();
    let pki = Pki::new();
    let (nodes, _links) = quic_cluster(&pki, 5, Duration::from_millis(100)).await;
    let refs: Vec<&MeshNode> = nodes.iter().collect();
    let started = Instant::now();
    wait_members(&refs, 5, Duration::from_secs(30)).await;
    eprintln!("5 nodes: membership formed in {:?}", started.elapsed());
    create_converges_and_confirms(&nodes, 5, Duration::from_secs(30)).await;
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_twenty_five_nodes_converge_and_confirm() {
    init_tracing();
    let pki = Pki::new();
    let (nodes, _links) = quic_cluster(&pki, 25, Duration::from_millis(200)).await;
    let refs: Vec<&MeshNode> = nodes.iter().collect();
    let started = Instant::now();
    wait_members(&refs, 25, Duration::from_secs(60)).await;
    eprintln!("25 nodes: membership formed in {:?}", started.elapsed());
    create_converges_and_confirms(&nodes, 25, Duration::from_secs(60)).await;
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_eager_push_beats_the_gossip_round() {
    init_tracing();
    let pki = Pki::new();
    // Gossip every 3 s: a write seen everywhere within 1 s must have been pushed.
    let (nodes, _links) = quic_cluster(&pki, 5, Duration::from_secs(3)).await;
    let refs: Vec<&MeshNode> = nodes.iter().collect();
    let started = Instant::now();
    wait_members(&refs, 5, Duration::from_secs(90)).await;
    eprintln!("push: membership formed in {:?}", started.elapsed());
    // Behavioural check of the push path, not a tight timing: a gossip round is 3 s.
    let writer = &nodes[pick(3, nodes.len())];
    let started = Instant::now();
    writer.apply(&session(), &create()).await.unwrap();
    wait_converged(&refs, Duration::from_secs(1), exists(&session())).await;
    let took = started.elapsed();
    eprintln!("push: write reached all 5 nodes in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    shutdown_all(nodes).await;
}

/// Polls `check` for `rounds` gossip rounds of `interval`; it must hold every time.
async fn holds_for(
    rounds: u32,
    interval: Duration,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) {
    let until = Instant::now() + interval * rounds;
    while Instant::now() < until {
        if let Err(violation) = check().await {
            panic!("{violation}");
        }
        tokio::time::sleep(interval / 4).await;
    }
}

/// The honest view never mentions `intruder_addr` or `forbidden_ids`, and `n01` stays at
/// `honest_n01` (when given); no replica holds `intruder_session`.
async fn honest_view_is_clean(
    honest: &[MeshNode],
    intruder_addr: SocketAddr,
    forbidden_ids: &[&str],
    honest_n01: Option<SocketAddr>,
    intruder_session: &SessionId,
) -> Result<(), String> {
    for node in honest {
        let membership: Membership = node.membership().await;
        for member in membership.members.values() {
            if member.gossip_addr == intruder_addr
                || forbidden_ids.contains(&member.node_id.as_str())
            {
                return Err(format!("{} lists the intruder: {member:?}", node.node_id()));
            }
        }
        if let Some(addr) = honest_n01 {
            let n01 = membership.members.get(&node_name(1));
            if n01.is_none_or(|m| m.gossip_addr != addr || !m.live) {
                return Err(format!("{}: honest n01 disturbed: {n01:?}", node.node_id()));
            }
        }
        if node.replica().sessions.contains_key(intruder_session) {
            return Err(format!("{} holds the intruder's session", node.node_id()));
        }
    }
    Ok(())
}

/// A session only an intruder writes.
fn intruder_session() -> SessionId {
    SessionId::parse("gv0", "n01::stolen").unwrap()
}

/// A forged eager push carrying `origin`'s own records (same wire shape as the node's:
/// origin, write position, record).
fn forged_push(origin: &str, node: &MeshNode) -> Frame {
    let record = node.own_records().into_iter().next().unwrap();
    let position = georep_mesh::WritePosition {
        generation: 1,
        version: 1_000,
    };
    let payload = codec::to_bytes(&(origin.to_string(), position, record)).unwrap();
    Frame::new(FrameKind::Push, payload)
}

/// Accepts any server certificate: an intruder that knows the cluster CA certificate
/// (it is public) or skips checks altogether, so that only the honest acceptor's
/// verdict on the intruder's client certificate decides.
#[derive(Debug)]
struct TrustAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Dials `to` presenting `node_id`'s certificate of `pki`, trusting any server, and
/// writes `frame`. Returns whether the connection was still open `wait` later (an
/// acceptor refusing the certificate closes it; under TLS 1.3 the dialler may first
/// see the handshake succeed).
async fn permissive_dial_survives(
    pki: &Pki,
    node_id: &str,
    to: SocketAddr,
    frame: &Frame,
    wait: Duration,
) -> bool {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = pki.dir.path();
    let cert = CertificateDer::from_pem_file(dir.join(format!("{node_id}.crt"))).unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{node_id}.key"))).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnything(provider)))
        .with_client_auth_cert(vec![cert], key)
        .unwrap();
    tls.alpn_protocols = vec![georep_mesh::ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(Arc::new(tls)).unwrap();
    let endpoint = quinn::Endpoint::client(LOOPBACK.parse().unwrap()).unwrap();
    let connecting = endpoint
        .connect_with(quinn::ClientConfig::new(Arc::new(crypto)), to, "georep")
        .unwrap();
    let Ok(conn) = connecting.await else {
        return false;
    };
    if let Ok(mut stream) = conn.open_uni().await {
        let _ = stream.write_all(&frame.encode()).await;
        let _ = stream.finish();
    }
    let survived = tokio::time::timeout(wait, conn.closed()).await.is_err();
    conn.close(0u32.into(), b"done");
    survived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_node_from_another_ca_cannot_join() {
    init_tracing();
    let interval = Duration::from_millis(100);
    let pki = Pki::new();
    let (honest, links) = quic_cluster(&pki, 3, interval).await;
    let refs: Vec<&MeshNode> = honest.iter().collect();
    wait_members(&refs, 3, Duration::from_secs(30)).await;

    // Same node-id scheme, a certificate from another CA; it seeds from every honest node.
    let other = Pki::new();
    let intruder_link = other.link("n09");
    let intruder_addr = intruder_link.local_addr();
    let mut config = common::config(9, links[0].local_addr(), interval);
    config.seeds = links.iter().map(|l| l.local_addr().to_string()).collect();
    let intruder = start_with(config, intruder_link.clone(), &node_info(0)).await;
    intruder
        .apply(&intruder_session(), &create())
        .await
        .unwrap();
    for link in &links {
        // Under TLS 1.3 the dialler may see success; only the acceptor's verdict counts.
        let _ = intruder_link
            .send(link.local_addr(), forged_push("n09", &intruder))
            .await;
    }
    // Even an intruder that accepts the honest servers' certificates is cut off by
    // them: the acceptor refuses the foreign client certificate.
    for link in &links {
        let frame = forged_push("n09", &intruder);
        let survived = permissive_dial_survives(
            &other,
            "n09",
            link.local_addr(),
            &frame,
            Duration::from_secs(5),
        )
        .await;
        assert!(
            !survived,
            "{} kept a connection from another CA",
            link.local_addr()
        );
    }
    // Control: the same dial with a certificate of the cluster CA stays connected.
    pki.identity("control");
    let harmless = Frame::new(FrameKind::PushAck, Vec::new());
    let survived = permissive_dial_survives(
        &pki,
        "control",
        links[0].local_addr(),
        &harmless,
        Duration::from_secs(1),
    )
    .await;
    assert!(
        survived,
        "the permissive dial fails even with a cluster certificate"
    );
    let honest_received: Vec<u64> = links
        .iter()
        .map(|l| l.stats().snapshot().frames_received)
        .collect();

    holds_for(20, interval, async || {
        honest_view_is_clean(&honest, intruder_addr, &["n09"], None, &intruder_session()).await
    })
    .await;
    // And the intruder heard nothing back from anyone.
    assert_eq!(intruder.membership().await.members.len(), 1);
    assert!(intruder_link.stats().snapshot().frames_received == 0);
    // The honest cluster kept gossiping among itself meanwhile.
    for (link, before) in links.iter().zip(honest_received) {
        assert!(link.stats().snapshot().frames_received > before);
    }
    intruder.shutdown().await;
    shutdown_all(honest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_node_gossiping_under_another_node_id_is_refused() {
    init_tracing();
    let interval = Duration::from_millis(100);
    let pki = Pki::new();
    let (honest, links) = quic_cluster(&pki, 3, interval).await;
    let refs: Vec<&MeshNode> = honest.iter().collect();
    wait_members(&refs, 3, Duration::from_secs(30)).await;
    let honest_n01 = links[1].local_addr();

    // Certificate says `evil` (same CA), chitchat says `n01`.
    let evil_link = pki.link("evil");
    let evil_addr = evil_link.local_addr();
    let mut config = common::config(1, links[0].local_addr(), interval);
    config.seeds = links.iter().map(|l| l.local_addr().to_string()).collect();
    assert_eq!(config.node_id, node_name(1));
    let evil = start_with(config, evil_link.clone(), &node_info(0)).await;
    evil.apply(&intruder_session(), &create()).await.unwrap();
    let rejected_before: Vec<u64> = honest
        .iter()
        .map(|n| n.link_stats().frames_rejected)
        .collect();
    for link in &links {
        // A push on behalf of n01 from a peer whose certificate says `evil`.
        evil_link
            .send(link.local_addr(), forged_push(&node_name(1), &evil))
            .await
            .unwrap();
    }

    holds_for(20, interval, async || {
        honest_view_is_clean(
            &honest,
            evil_addr,
            &["evil"],
            Some(honest_n01),
            &intruder_session(),
        )
        .await
    })
    .await;
    // The refusals were seen and counted: its gossip and its push reached the nodes.
    for (node, before) in honest.iter().zip(rejected_before) {
        let now = node.link_stats().frames_rejected;
        assert!(
            now > before,
            "{} counted no refusal ({before} -> {now})",
            node.node_id()
        );
    }
    // Still one honest n01, and it still works: its write converges.
    honest[1].apply(&session(), &create()).await.unwrap();
    wait_converged(&refs, Duration::from_secs(30), exists(&session())).await;
    assert!(!evil.replica().sessions.contains_key(&session()));
    evil.shutdown().await;
    shutdown_all(honest).await;
}

/// A raw quinn connection authenticated as `identity`, for writing arbitrary bytes.
async fn raw_connection(
    identity: &NodeIdentity,
    to: SocketAddr,
) -> (quinn::Endpoint, quinn::Connection) {
    let crypto = QuicClientConfig::try_from(identity.client_config().unwrap()).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn::Endpoint::client(LOOPBACK.parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, to, "georep")
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn)
}

/// Writes `bytes` on a fresh unidirectional stream and finishes it; the peer may stop
/// the stream (it refuses the frame), so write errors are ignored.
async fn write_stream(conn: &quinn::Connection, bytes: &[u8]) {
    let mut stream = conn.open_uni().await.unwrap();
    let _ = stream.write_all(bytes).await;
    let _ = stream.finish();
}

fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_garbage_from_an_authenticated_peer_is_refused() {
    init_tracing();
    let interval = Duration::from_millis(100);
    let pki = Pki::new();
    let (nodes, links) = quic_cluster(&pki, 4, interval).await;
    let refs: Vec<&MeshNode> = nodes.iter().collect();
    wait_members(&refs, 4, Duration::from_secs(30)).await;
    let target = 2;
    let before = nodes[target].link_stats();

    let (_endpoint, conn) =
        raw_connection(&pki.identity("garbler"), links[target].local_addr()).await;
    let mut refusals = 0;
    // Random bytes (not even a frame header).
    let mut random = noise(4_000, 0xDEAD_BEEF);
    random[0] = 0xAB;
    write_stream(&conn, &random).await;
    refusals += 1;
    // A truncated header, and a frame whose payload stops halfway.
    write_stream(&conn, &[1, 2, 3]).await;
    refusals += 1;
    let whole = Frame::new(FrameKind::Push, vec![5; 200]).encode();
    write_stream(&conn, &whole[..100]).await;
    refusals += 1;
    // A header announcing u32::MAX bytes.
    let mut huge = Frame::new(FrameKind::Gossip, vec![0; 32]).encode();
    huge[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
    write_stream(&conn, &huge).await;
    refusals += 1;
    // Well-framed: gossip that is not chitchat, and a push that is not postcard.
    write_stream(
        &conn,
        &Frame::new(FrameKind::Gossip, noise(300, 7)).encode(),
    )
    .await;
    refusals += 1;
    let mut bad_push = noise(300, 11);
    bad_push[0] = codec::CODEC_VERSION;
    write_stream(&conn, &Frame::new(FrameKind::Push, bad_push).encode()).await;
    refusals += 1;
    write_stream(
        &conn,
        &Frame::new(FrameKind::PushAck, noise(50, 13)).encode(),
    )
    .await;
    refusals += 1;
    // Valid chitchat, but an Ack from a peer that never passed the identity check.
    let ack = ChitchatMessage::Ack {
        delta: Default::default(),
    }
    .serialize_to_vec();
    write_stream(&conn, &Frame::new(FrameKind::Gossip, ack).encode()).await;
    refusals += 1;

    let started = Instant::now();
    loop {
        let rejected = nodes[target].link_stats().frames_rejected - before.frames_rejected;
        if rejected >= refusals {
            eprintln!(
                "garbage: {rejected} frames rejected after {:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "only {rejected} of {refusals} garbage frames were counted as rejected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing of the garbler entered the node's view.
    let membership = nodes[target].membership().await;
    assert!(
        !membership.members.contains_key("garbler"),
        "{membership:?}"
    );
    assert_eq!(membership.live().count(), 4);

    // The node keeps gossiping: its own write, and a write elsewhere, converge.
    nodes[target].apply(&session(), &create()).await.unwrap();
    wait_converged(&refs, Duration::from_secs(30), exists(&session())).await;
    let writer = pick(17, nodes.len());
    nodes[writer]
        .apply(
            &session(),
            &SessionOp::SetConfig {
                key: "sync-jobs".into(),
                value: "5".into(),
            },
        )
        .await
        .unwrap();
    wait_converged(&refs, Duration::from_secs(30), |r| {
        r.view(&session())
            .is_some_and(|v| v.config_value("sync-jobs").as_deref() == Some("5"))
    })
    .await;
    let after = nodes[target].link_stats();
    assert!(after.frames_received > before.frames_received);
    conn.close(0u32.into(), b"done");
    shutdown_all(nodes).await;
}
