//! Scenario tests of whole mesh nodes over the in-memory and fault-injecting links.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use georep_mesh::Link;
use georep_mesh::MemHub;
use georep_mesh::MeshNode;
use georep_mesh::{DesiredState, SessionOp};
use georep_mesh::{Faults, LinkFaults};

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16))
}

async fn cluster(n: usize, faults: &Faults, interval: Duration) -> Vec<MeshNode> {
    let hub = MemHub::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        let link: Arc<dyn Link> = faults.wrap(hub.bind(&node_name(i), addr(i)).unwrap());
        nodes.push(start(i, link, addr(0), interval).await);
    }
    nodes
}

#[tokio::test]
async fn five_nodes_converge_and_report_progress() {
    let faults = Faults::new(1);
    let nodes = cluster(5, &faults, Duration::from_millis(50)).await;
    let refs: Vec<&MeshNode> = nodes.iter().collect();
    wait_members(&refs, 5, Duration::from_secs(10)).await;
    let receipt = nodes[3].apply(&session(), &create()).await.unwrap();
    wait_converged(&refs, Duration::from_secs(10), |r| {
        r.view(&session()).is_some_and(|v| v.exists)
    })
    .await;
    // every node publishes its frontier; the writer then sees all five confirmed
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let progress = nodes[3].progress(&receipt).await;
        if progress.confirmed.len() == 5 {
            assert!(progress.lagging.is_empty() && progress.dead.is_empty());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{progress:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn eager_push_beats_the_gossip_round() {
    let faults = Faults::new(2);
    // Slow gossip (2 s): a write seen everywhere within 500 ms must have been pushed.
    let nodes = cluster(4, &faults, Duration::from_secs(2)).await;
    let refs: Vec<&MeshNode> = nodes.iter().collect();
    wait_members(&refs, 4, Duration::from_secs(30)).await;
    let took = {
        nodes[2].apply(&session(), &create()).await.unwrap();
        wait_converged(&refs, Duration::from_millis(500), |r| {
            r.view(&session()).is_some_and(|v| v.exists)
        })
        .await
    };
    assert!(took < Duration::from_millis(500), "{took:?}");
}

#[tokio::test]
async fn loss_and_partition_heal_to_the_lww_outcome() {
    let faults = Faults::new(3);
    let nodes = cluster(5, &faults, Duration::from_millis(50)).await;
    let refs: Vec<&MeshNode> = nodes.iter().collect();
    wait_members(&refs, 5, Duration::from_secs(10)).await;
    nodes[0].apply(&session(), &create()).await.unwrap();
    wait_converged(&refs, Duration::from_secs(10), |r| {
        r.view(&session()).is_some_and(|v| v.exists)
    })
    .await;
    faults.set_default(LinkFaults {
        loss: 0.3,
        ..Default::default()
    });
    faults.partition(&[vec![addr(0), addr(1)], vec![addr(2), addr(3), addr(4)]]);
    // both sides write during the partition; the later write must win everywhere
    nodes[1]
        .apply(&session(), &SessionOp::Start { force: false })
        .await
        .unwrap();
    nodes[4]
        .apply(
            &session(),
            &SessionOp::SetConfig {
                key: "sync-jobs".into(),
                value: "7".into(),
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    nodes[3]
        .apply(&session(), &SessionOp::Stop { force: true })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    nodes[0]
        .apply(
            &session(),
            &SessionOp::SetConfig {
                key: "sync-jobs".into(),
                value: "9".into(),
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ne!(
        nodes[0].replica(),
        nodes[4].replica(),
        "partition must hold"
    );
    faults.heal();
    faults.set_default(LinkFaults {
        loss: 0.3,
        ..Default::default()
    });
    wait_converged(&refs, Duration::from_secs(20), |r| {
        r.view(&session()).is_some_and(|v| {
            v.desired == DesiredState::Stopped
                && v.config_value("sync-jobs").as_deref() == Some("9")
        })
    })
    .await;
}

#[tokio::test]
async fn state_survives_its_writer_through_custodians() {
    let faults = Faults::new(4);
    let mut nodes = cluster(4, &faults, Duration::from_millis(50)).await;
    let refs: Vec<&MeshNode> = nodes.iter().collect();
    wait_members(&refs, 4, Duration::from_secs(10)).await;
    nodes[3].apply(&session(), &create()).await.unwrap();
    wait_converged(&refs, Duration::from_secs(10), |r| {
        r.view(&session()).is_some_and(|v| v.exists)
    })
    .await;
    // the writer dies; its registers must end up in a live node's own namespace
    let writer = nodes.pop().unwrap();
    writer.shutdown().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let custodians = nodes
            .iter()
            .filter(|n| n.own_records().iter().any(|r| r.exists()))
            .count();
        if custodians >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no custodian took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node whose every write lost to newer ones retires its record (so frontiers do not
/// grow with every node that ever wrote), and nothing of the outcome is lost.
#[tokio::test]
async fn superseded_records_are_retired_without_changing_the_outcome() {
    let hub = MemHub::new();
    let interval = Duration::from_millis(50);
    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut config = config(i, addr(0), interval);
        config.retire_superseded_after = Duration::from_millis(500);
        let link: Arc<dyn Link> = hub.bind(&node_name(i), addr(i)).unwrap();
        let info = georep_mesh::codec::encode(&node_info(i)).unwrap();
        let node = MeshNode::start(
            config,
            link,
            Arc::new(georep_mesh::SystemClock),
            None,
            vec![(georep_mesh::NODE_KEY.to_string(), info)],
        )
        .await
        .unwrap();
        nodes.push(node);
    }
    let refs: Vec<&MeshNode> = nodes.iter().collect();
    wait_members(&refs, 3, Duration::from_secs(10)).await;
    nodes[0].apply(&session(), &create()).await.unwrap();
    wait_converged(&refs, Duration::from_secs(10), |r| {
        r.view(&session()).is_some_and(|v| v.exists)
    })
    .await;
    let set = |value: &str| SessionOp::SetConfig {
        key: "sync-jobs".into(),
        value: value.into(),
    };
    nodes[1].apply(&session(), &set("4")).await.unwrap();
    wait_converged(&refs, Duration::from_secs(10), |r| {
        r.view(&session())
            .is_some_and(|v| v.config.get("sync-jobs").map(String::as_str) == Some("4"))
    })
    .await;
    // n2's write is superseded by n3's: n2 retires its record after the grace period.
    nodes[2].apply(&session(), &set("5")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !nodes[1].own_records().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "n2 still carries {:?}",
            nodes[1].own_records()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The creator's record is not superseded (nobody re-created the session).
    assert_eq!(nodes[0].own_records().len(), 1);
    // Everyone, n2 included, keeps the outcome; n2 is no longer an origin anywhere.
    wait_converged(&refs, Duration::from_secs(10), |r| {
        r.view(&session())
            .is_some_and(|v| v.exists && v.config.get("sync-jobs").map(String::as_str) == Some("5"))
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let membership = nodes[0].membership().await;
        let origins: Vec<Vec<String>> = membership
            .members
            .values()
            .map(|m| m.seen.keys().cloned().collect())
            .collect();
        if origins.iter().all(|o| !o.contains(&node_name(1))) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{origins:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts node `i` with `generation` and no persisted state.
async fn start_fresh(hub: &MemHub, i: usize, generation: u64, interval: Duration) -> MeshNode {
    let mut config = config(i, addr(0), interval);
    config.generation = generation;
    let link: Arc<dyn Link> = hub.bind(&node_name(i), addr(i)).unwrap();
    let info = georep_mesh::codec::encode(&node_info(i)).unwrap();
    MeshNode::start(
        config,
        link,
        Arc::new(georep_mesh::SystemClock),
        None,
        vec![(georep_mesh::NODE_KEY.to_string(), info)],
    )
    .await
    .unwrap()
}

/// A host that lost its disk and whose clock is behind its previous start must not come
/// back in an older generation (its peers would keep the old, dead one as its identity).
#[tokio::test]
async fn a_node_without_state_starts_above_the_generation_its_peers_remember() {
    let hub = MemHub::new();
    let interval = Duration::from_millis(50);
    let n1 = start_fresh(&hub, 0, 1_000, interval).await;
    let n2 = start_fresh(&hub, 1, 1_000, interval).await;
    let n3 = start_fresh(&hub, 2, 9_000_000, interval).await;
    wait_members(&[&n1, &n2, &n3], 3, Duration::from_secs(10)).await;
    n3.shutdown().await;
    // The replacement's clock says 5_000: below its previous start.
    let n3 = start_fresh(&hub, 2, 5_000, interval).await;
    assert!(n3.generation() > 9_000_000, "{}", n3.generation());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut ok = true;
        for node in [&n1, &n2] {
            let membership = node.membership().await;
            let member = &membership.members[&node_name(2)];
            ok &= member.live && member.generation == n3.generation();
        }
        if ok {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "peers do not see the replacement live in its generation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
