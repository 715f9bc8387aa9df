//! Webhooks over real processes: real agents, real HTTP receivers on loopback (a
//! Python server verifying tokens, JWTs and Standard Webhooks signatures with its own
//! hmac), a receiver outage, a delivering agent killed mid-delivery, and the webhook
//! list replicated to a node that was down and across a partition.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use georep_tests::loopback_ns::LoopbackNs;
use georep_tests::receiver::Receiver;
use georep_tests::{Cluster, NodeSpec, TEST_MONITOR};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const SECONDARY: &str = "n4::gv1";
const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// `--json webhook list` on node `i`, by URL.
fn webhooks(cluster: &Cluster, i: usize) -> BTreeMap<String, Value> {
    let out = cluster.georep(i, &["--json", "webhook", "list"]);
    if !out.status.success() {
        return BTreeMap::new();
    }
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list["webhooks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|w| (w["url"].as_str().unwrap().to_string(), w))
        .collect()
}

/// Ids of the events of these types in node `i`'s merged stream (optionally only
/// those recorded by `origin`).
fn event_ids(cluster: &Cluster, i: usize, prefix: &str, origin: Option<&str>) -> BTreeSet<String> {
    let mut args = vec!["--json", "events"];
    if let Some(origin) = origin {
        args.extend(["--node", origin]);
    }
    let out = cluster.georep(i, &args);
    if !out.status.success() {
        return BTreeSet::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"].as_str().is_some_and(|t| t.starts_with(prefix)))
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect()
}

fn five_nodes() -> Cluster {
    let args = ["--webhook-backoff-max", "2s"];
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0:0"]).with_args(&args),
            NodeSpec::new("n2", &["gv0:/bricks/n2/gv0:0"]).with_args(&args),
            NodeSpec::new("n3", &["gv0:/bricks/n3/gv0:1"]).with_args(&args),
            NodeSpec::new("n4", &["gv1:/bricks/n4/gv1"]).with_args(&args),
            NodeSpec::new("n5", &["gv1:/bricks/n5/gv1"]).with_args(&args),
        ],
        Some(TEST_MONITOR),
    );
    for i in 0..5 {
        cluster.wait_live(i, 5, WAIT);
    }
    cluster
}

#[test]
fn every_event_reaches_every_receiver_signed_through_an_outage_and_a_killed_deliverer() {
    let mut cluster = five_nodes();
    let mut token = Receiver::start(&["--token", "t0k"]);
    let jwt = Receiver::start(&["--jwt-secret", "s3cret"]);
    let standard = Receiver::start(&["--standard-secret", STANDARD_SECRET]);
    let gone = Receiver::start(&[]);
    gone.set("410");
    cluster.ok(0, &["webhook", "add", &token.url(), "--token", "t0k"]);
    cluster.ok(1, &["webhook", "add", &jwt.url(), "--secret", "s3cret"]);
    cluster.ok(
        2,
        &[
            "webhook",
            "add",
            &standard.url(),
            "--format",
            "standard",
            "--secret",
            STANDARD_SECRET,
        ],
    );
    cluster.ok(3, &["webhook", "add", &gone.url()]);
    for i in 0..5 {
        cluster.wait_until(WAIT, "every node to list the four webhooks", || {
            webhooks(&cluster, i).len() == 4
        });
    }
    // Refusals name what is wrong, and change nothing.
    for (args, says) in [
        (
            vec!["webhook", "add", "ftp://x/"],
            "must start with http:// or https://",
        ),
        (vec!["webhook", "add", &token.url()], "already exists"),
        (
            vec![
                "webhook",
                "add",
                "http://127.0.0.1:1/x",
                "--format",
                "standard",
                "--secret",
                "plain",
            ],
            "whsec_",
        ),
        (
            vec!["webhook", "mod", "http://127.0.0.1:1/none"],
            "no webhook",
        ),
    ] {
        let out = cluster.georep(4, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(webhooks(&cluster, 4).len(), 4);
    // One test delivery, answered.
    let tested = cluster.ok(4, &["webhook", "test", &standard.url()]);
    assert!(tested.contains("answered 204"), "{tested}");
    let out = cluster.georep(4, &["webhook", "test", &gone.url()]);
    assert_eq!(out.status.code(), Some(1));

    // A lifecycle run from several nodes: every receiver gets every event.
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.ok(1, &["start", "gv0", SECONDARY]);
    cluster.ok(2, &["config", "gv0", SECONDARY, "sync-jobs", "5"]);
    cluster.ok(3, &["pause", "gv0", SECONDARY]);
    cluster.ok(4, &["resume", "gv0", SECONDARY]);
    let lifecycle = |cluster: &Cluster| event_ids(cluster, 4, "GEOREP_", None);
    cluster.wait_until(WAIT, "the five lifecycle events everywhere", || {
        lifecycle(&cluster).len() == 5
    });
    let expected = lifecycle(&cluster);
    for receiver in [&token, &jwt, &standard] {
        cluster.wait_until(WAIT, "every receiver to get every lifecycle event", || {
            receiver.ids().is_superset(&expected)
        });
        receiver.assert_authentic();
    }
    // 410 Gone disables that webhook, visibly, on every node.
    for i in 0..5 {
        cluster.wait_until(WAIT, "the 410 webhook to show as disabled", || {
            webhooks(&cluster, i)
                .get(&gone.url())
                .is_some_and(|w| w["state"] == "disabled")
        });
    }
    let human = cluster.ok(2, &["webhook", "list"]);
    assert!(
        human.contains("is disabled: the receiver answered 410"),
        "{human}"
    );

    // The token receiver is down for 30 s: what happens meanwhile waits, visibly.
    token.down();
    let down_at = Instant::now();
    cluster.ok(0, &["stop", "gv0", SECONDARY]);
    cluster.ok(1, &["start", "gv0", SECONDARY]);
    cluster.wait_until(
        WAIT,
        "the token webhook to show pending events and an error",
        || {
            webhooks(&cluster, 2).get(&token.url()).is_some_and(|w| {
                w["pending"].as_u64().unwrap_or(0) > 0 && w["last_error"].is_string()
            })
        },
    );
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down_at.elapsed()));
    token.up();
    let expected = lifecycle(&cluster);
    assert_eq!(expected.len(), 7);
    cluster.wait_until(
        WAIT,
        "everything pending to reach the returning receiver",
        || token.ids().is_superset(&expected),
    );
    token.assert_authentic();
    cluster.wait_until(WAIT, "nothing pending for it any more", || {
        webhooks(&cluster, 2)
            .get(&token.url())
            .is_some_and(|w| w["pending"] == 0 && w["failing_since_ms"].is_null())
    });

    // n1 delivers its own events; killed -9 while a slow receiver takes them, another
    // node resumes from the gossiped cursor: nothing lost, duplicates keep their id.
    jwt.set("slow");
    for jobs in 1..=6 {
        cluster.ok(
            0,
            &[
                "config",
                "gv0",
                SECONDARY,
                "sync-jobs",
                &jobs.to_string(),
                "--no-wait",
            ],
        );
    }
    cluster.wait_until(WAIT, "n1's events to reach n2", || {
        event_ids(&cluster, 1, "GEOREP_CONFIG_SET", Some("n1")).len() >= 6
    });
    cluster.kill9(0);
    let from_n1 = event_ids(&cluster, 1, "GEOREP_", Some("n1"));
    cluster.wait_until(WAIT, "another node to deliver n1's events", || {
        jwt.ids().is_superset(&from_n1)
    });
    jwt.assert_authentic();
    cluster.restart(0);
    cluster.wait_live(0, 5, WAIT);
    let everything = event_ids(&cluster, 0, "GEOREP_", None);
    cluster.wait_until(WAIT, "every receiver to hold every lifecycle event", || {
        [&token, &jwt, &standard]
            .iter()
            .all(|r| r.ids().is_superset(&everything))
    });
    for receiver in [&token, &jwt, &standard] {
        receiver.assert_authentic();
    }

    // Deleted: gone from every list.
    cluster.ok(3, &["webhook", "del", &standard.url()]);
    for i in 0..5 {
        cluster.wait_until(WAIT, "every node to drop the deleted webhook", || {
            let list = webhooks(&cluster, i);
            list.len() == 3 && !list.contains_key(&standard.url())
        });
    }
}

#[test]
fn the_webhook_list_reaches_a_returning_node_and_survives_a_partition() {
    let ns = LoopbackNs::create();
    let mut cluster = Cluster::start_with(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0"]),
            NodeSpec::new("n2", &["gv0:/bricks/n2/gv0"]),
            NodeSpec::new("n3", &["gv1:/bricks/n3/gv1"]),
            NodeSpec::new("n4", &["gv1:/bricks/n4/gv1"]),
        ],
        Some(TEST_MONITOR),
        Some(ns.launcher()),
    );
    for i in 0..4 {
        cluster.wait_live(i, 4, WAIT);
    }
    let urls: Vec<String> = (1..=4)
        .map(|i| format!("http://127.0.0.1:1/hook{i}"))
        .collect();
    // Added while n4 is down: n4 has it when it returns.
    cluster.terminate(3);
    cluster.wait_live(0, 3, WAIT);
    cluster.ok(0, &["webhook", "add", &urls[0]]);
    cluster.ok(1, &["webhook", "add", &urls[1], "--token", "x"]);
    cluster.restart(3);
    cluster.wait_until(WAIT, "the returning node to list both webhooks", || {
        webhooks(&cluster, 3).len() == 2
    });

    // Partitioned: {n1, n2} | {n3, n4}. Concurrent adds on both sides; a modify on one
    // side and a delete of the same webhook on the other.
    let port = |i: usize| cluster.nodes[i].addr.port();
    ns.partition(&[port(0), port(1)], &[port(2), port(3)]);
    cluster.wait_live(0, 2, WAIT);
    cluster.wait_live(2, 2, WAIT);
    cluster.ok(0, &["webhook", "add", &urls[2]]);
    cluster.ok(2, &["webhook", "add", &urls[3]]);
    cluster.ok(1, &["webhook", "mod", &urls[1], "--token", "y"]);
    cluster.ok(3, &["webhook", "del", &urls[1]]);
    ns.heal();
    for i in 0..4 {
        cluster.wait_live(i, 4, WAIT);
    }
    let expected: BTreeSet<String> = [&urls[0], &urls[2], &urls[3]]
        .into_iter()
        .cloned()
        .collect();
    for i in 0..4 {
        cluster.wait_until(
            WAIT,
            "both adds kept, the delete winning over the modify",
            || {
                webhooks(&cluster, i)
                    .keys()
                    .cloned()
                    .collect::<BTreeSet<_>>()
                    == expected
            },
        );
    }
}
