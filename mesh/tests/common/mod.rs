//! Helpers shared by the mesh's integration tests: in-process clusters on any link.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use georep_mesh::Link;
use georep_mesh::SystemClock;
use georep_mesh::codec;
use georep_mesh::{Brick, NodeInfo};
use georep_mesh::{MeshConfig, MeshNode, NODE_KEY};
use georep_mesh::{Replica, SessionId, SessionOp, SessionOptions};

/// Node ids `n00`, `n01`, ...
pub fn node_name(i: usize) -> String {
    format!("n{i:02}")
}

/// Node info: even nodes host bricks of gv0 (primary), odd nodes of gv1 (secondary).
pub fn node_info(i: usize) -> NodeInfo {
    let volume = if i.is_multiple_of(2) { "gv0" } else { "gv1" };
    NodeInfo {
        agent_version: "test".into(),
        bricks: vec![Brick {
            volume: volume.into(),
            path: format!("/bricks/{volume}/{i}"),
            replica_set: (i / 2) as u32 % 2,
        }],
        missing: Vec::new(),
        facts: Vec::new(),
        users: Vec::new(),
    }
}

/// Mesh config for tests: fast gossip; every node seeds from node 0.
pub fn config(i: usize, seed: SocketAddr, interval: Duration) -> MeshConfig {
    let mut config = MeshConfig::new(node_name(i), 1);
    config.gossip_interval = interval;
    config.seeds = vec![seed.to_string()];
    config
}

/// Starts one node on `link`.
pub async fn start(
    i: usize,
    link: Arc<dyn Link>,
    seed: SocketAddr,
    interval: Duration,
) -> MeshNode {
    let info = codec::encode(&node_info(i)).unwrap();
    MeshNode::start(
        config(i, seed, interval),
        link,
        Arc::new(SystemClock),
        None,
        vec![(NODE_KEY.to_string(), info)],
    )
    .await
    .unwrap()
}

/// The session every test uses.
pub fn session() -> SessionId {
    SessionId::parse("gv0", "n01::gv1").unwrap()
}

/// Create with `--force` (skips the secondary liveness check, not the brick check).
pub fn create() -> SessionOp {
    SessionOp::Create {
        options: SessionOptions::default(),
        force: true,
    }
}

/// Waits until every node sees all `n` members live.
pub async fn wait_members(nodes: &[&MeshNode], n: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut ok = true;
        for node in nodes {
            if node.membership().await.live().count() != n {
                ok = false;
            }
        }
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "membership did not reach {n} live nodes within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node's replica equals the first's and satisfies `pred`; returns the time it took.
pub async fn wait_converged(
    nodes: &[&MeshNode],
    within: Duration,
    pred: impl Fn(&Replica) -> bool,
) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        let replicas: Vec<Replica> = nodes.iter().map(|n| n.replica()).collect();
        if replicas.windows(2).all(|w| w[0] == w[1]) && pred(&replicas[0]) {
            return start.elapsed();
        }
        if start.elapsed() > within {
            let summary: Vec<String> = replicas
                .iter()
                .zip(nodes)
                .map(|(r, n)| format!("{}: {:?}", n.node_id(), r.view(&session())))
                .collect();
            panic!(
                "replicas did not converge within {within:?}:\n{}",
                summary.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
