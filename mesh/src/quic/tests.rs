//! Tests of the QUIC link over real sockets on loopback.
use super::*;
use crate::network::FrameKind;
use crate::tls::{PemCert, generate_ca, issue_node_cert};

const LOOPBACK: &str = "127.0.0.1:0";
const WAIT: Duration = Duration::from_secs(5);

struct TestCa {
    ca: PemCert,
}

impl TestCa {
    fn new() -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("georep_mesh=debug")
            .try_init();
        Self {
            ca: generate_ca().unwrap(),
        }
    }

    fn identity(&self, node_id: &str) -> NodeIdentity {
        let node = issue_node_cert(&self.ca.cert_pem, &self.ca.key_pem, node_id, &[], &[]).unwrap();
        NodeIdentity::from_pem(&self.ca.cert_pem, &node.cert_pem, &node.key_pem).unwrap()
    }

    fn link(&self, node_id: &str, options: QuicOptions) -> Arc<QuicLink> {
        QuicLink::bind(LOOPBACK.parse().unwrap(), &self.identity(node_id), options).unwrap()
    }
}

async fn recv_within(link: &QuicLink, wait: Duration) -> Option<Received> {
    tokio::time::timeout(wait, link.recv())
        .await
        .ok()
        .map(|r| r.unwrap())
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw quinn client authenticated by `identity`, for writing arbitrary bytes.
async fn raw_connection(identity: &NodeIdentity, to: SocketAddr) -> (Endpoint, Connection) {
    let crypto = QuicClientConfig::try_from(identity.client_config().unwrap()).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = Endpoint::client(LOOPBACK.parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, to, TLS_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn)
}

async fn write_raw(conn: &Connection, bytes: &[u8], finish: bool) -> quinn::SendStream {
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(bytes).await.unwrap();
    if finish {
        stream.finish().unwrap();
    }
    stream
}

fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn quic_two_nodes_exchange_frames_both_ways() {
    let ca = TestCa::new();
    let a = ca.link("node-a", QuicOptions::default());
    let b = ca.link("node-b", QuicOptions::default());
    assert_eq!(a.node_id(), "node-a");

    let ping = Frame::new(FrameKind::Gossip, b"ping".to_vec());
    a.send(b.local_addr(), ping.clone()).await.unwrap();
    let got = recv_within(&b, WAIT).await.expect("b received nothing");
    assert_eq!(got.frame, ping);
    assert_eq!(got.peer_node, "node-a");
    assert_eq!(got.from, a.local_addr());

    let pong = Frame::new(FrameKind::PushAck, vec![7; 100_000]);
    b.send(a.local_addr(), pong.clone()).await.unwrap();
    let got = recv_within(&a, WAIT).await.expect("a received nothing");
    assert_eq!(got.frame, pong);
    assert_eq!(got.peer_node, "node-b");
    assert_eq!(got.from, b.local_addr());

    for i in 0..20u8 {
        a.send(b.local_addr(), Frame::new(FrameKind::Push, vec![i]))
            .await
            .unwrap();
        b.send(a.local_addr(), Frame::new(FrameKind::Push, vec![i]))
            .await
            .unwrap();
    }
    for _ in 0..20 {
        recv_within(&a, WAIT).await.expect("a missed a frame");
        recv_within(&b, WAIT).await.expect("b missed a frame");
    }
    let max = Frame::new(FrameKind::Push, vec![1; MAX_FRAME_PAYLOAD]);
    a.send(b.local_addr(), max.clone()).await.unwrap();
    assert_eq!(recv_within(&b, WAIT).await.unwrap().frame, max);
    let over = Frame::new(FrameKind::Push, vec![1; MAX_FRAME_PAYLOAD + 1]);
    assert!(a.send(b.local_addr(), over).await.is_err());

    // b replied on the connection a dialled: one connection per pair.
    assert_eq!(a.connection_count(), 1);
    assert_eq!(b.connection_count(), 1);
    let a_stats = a.stats().snapshot();
    let b_stats = b.stats().snapshot();
    assert_eq!(a_stats.frames_sent, 22);
    assert_eq!(b_stats.frames_received, 22);
    assert_eq!(a_stats.frames_received, 21);
    assert_eq!(b_stats.frames_rejected, 0);
    assert_eq!(
        b_stats.bytes_received, a_stats.bytes_sent,
        "every byte a sent arrived"
    );

    a.close().await;
    b.close().await;
    assert!(matches!(a.recv().await, Err(TransportError::Closed)));
    assert!(matches!(
        a.send(b.local_addr(), ping).await,
        Err(TransportError::Closed)
    ));
}

#[tokio::test]
async fn quic_close_wakes_pending_recv() {
    let ca = TestCa::new();
    let a = ca.link("node-a", QuicOptions::default());
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move { a.recv().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.close().await;
    let result = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert!(matches!(result, Err(TransportError::Closed)));
}

#[tokio::test]
async fn quic_simultaneous_dials_converge_to_one_connection() {
    let ca = TestCa::new();
    let a = ca.link("node-a", QuicOptions::default());
    let b = ca.link("node-b", QuicOptions::default());
    let frame = Frame::new(FrameKind::Gossip, b"hello".to_vec());
    let (sent_a, sent_b) = tokio::join!(
        a.send(b.local_addr(), frame.clone()),
        b.send(a.local_addr(), frame.clone())
    );
    sent_a.unwrap();
    sent_b.unwrap();
    recv_within(&a, WAIT).await.unwrap();
    recv_within(&b, WAIT).await.unwrap();
    eventually("one connection per side", || {
        a.connection_count() == 1 && b.connection_count() == 1
    })
    .await;
    // Both still talk over the survivor.
    a.send(b.local_addr(), frame.clone()).await.unwrap();
    b.send(a.local_addr(), frame.clone()).await.unwrap();
    assert_eq!(recv_within(&b, WAIT).await.unwrap().frame, frame);
    assert_eq!(recv_within(&a, WAIT).await.unwrap().frame, frame);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn quic_peer_from_another_ca_is_refused() {
    let ours = TestCa::new();
    let theirs = TestCa::new();
    let honest = ours.link("honest", QuicOptions::default());
    let intruder = theirs.link("intruder", QuicOptions::default());
    let frame = Frame::new(FrameKind::Push, b"forged".to_vec());

    // Under TLS 1.3 the intruder's own send may look successful; what matters
    // is that nothing reaches the honest node.
    let _ = intruder.send(honest.local_addr(), frame.clone()).await;
    assert!(recv_within(&honest, Duration::from_secs(1)).await.is_none());

    let sent = honest.send(intruder.local_addr(), frame).await;
    assert!(
        sent.is_err(),
        "honest node accepted the intruder's certificate"
    );
    assert!(
        recv_within(&intruder, Duration::from_secs(1))
            .await
            .is_none()
    );
    assert_eq!(honest.stats().snapshot().frames_received, 0);
    assert_eq!(honest.connection_count(), 0);
    honest.close().await;
    intruder.close().await;
}

#[tokio::test]
async fn quic_garbage_streams_are_rejected() {
    let ca = TestCa::new();
    let options = QuicOptions {
        frame_read_timeout: Duration::from_millis(300),
        ..QuicOptions::default()
    };
    let node = ca.link("node", options);
    let (raw_endpoint, conn) = raw_connection(&ca.identity("raw"), node.local_addr()).await;

    let mut noise = pseudo_random_bytes(1000);
    noise[0] = 0xAB; // not FRAME_VERSION, whatever the seed
    write_raw(&conn, &noise, true).await;
    let whole = Frame::new(FrameKind::Push, vec![5; 100]).encode();
    write_raw(&conn, &whole[..50], true).await;
    let mut huge = Frame::new(FrameKind::Gossip, vec![0; 16]).encode();
    huge[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
    let _huge_stream = write_raw(&conn, &huge, false).await;
    // Header promises more than ever comes, and the stream stays open.
    let _stalled = write_raw(&conn, &whole[..20], false).await;
    write_raw(&conn, &[], true).await;

    let valid = Frame::new(FrameKind::Gossip, b"after the garbage".to_vec());
    write_raw(&conn, &valid.encode(), true).await;
    let got = recv_within(&node, WAIT).await.expect("valid frame lost");
    assert_eq!(got.frame, valid);
    assert_eq!(got.peer_node, "raw");
    assert_eq!(got.from, raw_endpoint.local_addr().unwrap());

    let stats = node.stats();
    eventually("five rejections", || stats.snapshot().frames_rejected == 5).await;
    assert!(
        recv_within(&node, Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(stats.snapshot().frames_received, 1);

    // The connection survived all that.
    write_raw(&conn, &valid.encode(), true).await;
    assert_eq!(recv_within(&node, WAIT).await.unwrap().frame, valid);
    conn.close(VarInt::from_u32(0), b"done");
    node.close().await;
}

#[tokio::test]
async fn quic_full_receive_queue_drops_and_counts() {
    let ca = TestCa::new();
    let a = ca.link("node-a", QuicOptions::default());
    let b = ca.link(
        "node-b",
        QuicOptions {
            recv_queue: 2,
            ..QuicOptions::default()
        },
    );
    for i in 0..5u8 {
        a.send(b.local_addr(), Frame::new(FrameKind::Push, vec![i]))
            .await
            .unwrap();
    }
    let stats = b.stats();
    eventually("all frames handled", || {
        let s = stats.snapshot();
        s.frames_received + s.frames_shed == 5
    })
    .await;
    let s = stats.snapshot();
    assert_eq!((s.frames_received, s.frames_shed), (2, 3));
    assert_eq!(s.frames_rejected, 0);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn quic_dead_address_does_not_hang_or_stall_others() {
    let ca = TestCa::new();
    let options = QuicOptions {
        connect_timeout: Duration::from_secs(1),
        ..QuicOptions::default()
    };
    let a = ca.link("node-a", options.clone());
    let b = ca.link("node-b", options);
    // A bound UDP socket that never answers: the worst case (no ICMP error).
    let silent = std::net::UdpSocket::bind(LOOPBACK).unwrap();
    let dead = silent.local_addr().unwrap();
    let frame = Frame::new(FrameKind::Gossip, b"anyone?".to_vec());

    let started = Instant::now();
    let to_dead = {
        let a = a.clone();
        let frame = frame.clone();
        tokio::spawn(async move { a.send(dead, frame).await })
    };
    // A send to a live peer is not held up by the dead one.
    tokio::time::sleep(Duration::from_millis(20)).await;
    a.send(b.local_addr(), frame.clone()).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(800));
    assert_eq!(recv_within(&b, WAIT).await.unwrap().frame, frame);

    let result = tokio::time::timeout(Duration::from_secs(3), to_dead)
        .await
        .expect("send to a dead address hung")
        .unwrap();
    assert!(result.is_err());
    assert!(started.elapsed() < Duration::from_millis(2500));

    // Nobody at all on a closed port either.
    drop(silent);
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(3), a.send(dead, frame)).await;
    assert!(result.expect("send to a closed port hung").is_err());
    assert!(started.elapsed() < Duration::from_millis(2500));
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn quic_reconnects_after_peer_restart() {
    let ca = TestCa::new();
    let a = ca.link("node-a", QuicOptions::default());
    let b_identity = ca.identity("node-b");
    let b = QuicLink::bind(
        LOOPBACK.parse().unwrap(),
        &b_identity,
        QuicOptions::default(),
    )
    .unwrap();
    let b_addr = b.local_addr();
    let frame = Frame::new(FrameKind::Gossip, b"again".to_vec());
    a.send(b_addr, frame.clone()).await.unwrap();
    recv_within(&b, WAIT).await.unwrap();
    b.close().await;
    drop(b);
    eventually("a notices b left", || a.connection_count() == 0).await;

    // quinn's endpoint driver releases the socket shortly after the last handle.
    let deadline = Instant::now() + WAIT;
    let b = loop {
        match QuicLink::bind(b_addr, &b_identity, QuicOptions::default()) {
            Ok(b) => break b,
            Err(e) => assert!(Instant::now() < deadline, "cannot rebind: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    a.send(b_addr, frame.clone()).await.unwrap();
    assert_eq!(recv_within(&b, WAIT).await.unwrap().frame, frame);
    a.close().await;
    b.close().await;
}

/// A peer killed without a word (its process gone, no CONNECTION_CLOSE) comes back on
/// its address and dials: its new connection replaces the dead one at once, even when
/// the dead one was dialled by the lower address a second before (a rule for
/// simultaneous dials once kept the dead connection for 6 s, and every reply with it).
#[tokio::test]
async fn quic_a_peer_killed_and_restarted_at_once_is_answered() {
    let ca = TestCa::new();
    let one = ca.link("node-one", QuicOptions::default());
    let other_identity = ca.identity("node-other");
    // The peer runs on a runtime of its own, so that it can die without closing.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The survivor has the lower address and dials first: a rule for simultaneous
    // dials would then keep its (dead) connection.
    let other = loop {
        let _entered = runtime.enter();
        let link = QuicLink::bind(
            LOOPBACK.parse().unwrap(),
            &other_identity,
            QuicOptions::default(),
        )
        .unwrap();
        if link.local_addr() > one.local_addr() {
            break link;
        }
    };
    let frame = Frame::new(FrameKind::Gossip, b"first".to_vec());
    one.send(other.local_addr(), frame).await.unwrap();
    recv_within(&other, WAIT)
        .await
        .expect("the first frame arrives");
    let other_addr = other.local_addr();
    // The agent CI caught died about a second after its connection was made (a
    // restart within HANDSHAKE_SLACK of it is taken for a simultaneous dial and
    // answered once the duplicate is closed, DUPLICATE_GRACE later).
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Killed: its tasks and sockets go with its runtime, nothing is sent (dropping the
    // link first would close its connections).
    runtime.shutdown_background();
    drop(other);

    let deadline = Instant::now() + WAIT;
    let other = loop {
        match QuicLink::bind(other_addr, &other_identity, QuicOptions::default()) {
            Ok(link) => break link,
            Err(e) => assert!(Instant::now() < deadline, "cannot rebind: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let hello = Frame::new(FrameKind::Gossip, b"back".to_vec());
    other.send(one.local_addr(), hello.clone()).await.unwrap();
    assert_eq!(recv_within(&one, WAIT).await.unwrap().frame, hello);
    let reply = Frame::new(FrameKind::Gossip, b"welcome".to_vec());
    one.send(other_addr, reply.clone()).await.unwrap();
    assert_eq!(
        recv_within(&other, Duration::from_secs(3))
            .await
            .expect("the reply reaches the new incarnation")
            .frame,
        reply
    );
    one.close().await;
    other.close().await;
}
