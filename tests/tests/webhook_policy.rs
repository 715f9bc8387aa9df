//! Webhook delivery policy over real processes: HTTPS verified against a private CA
//! given with `--ca` (and no fallback to unverified without it), `Retry-After`
//! honoured, and a webhook failing beyond `--webhook-park-after` parked on every node
//! until `webhook mod` resumes it, with nothing lost.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use georep_tests::receiver::Receiver;
use georep_tests::{Cluster, NodeSpec, TEST_MONITOR};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const SECONDARY: &str = "n2::gv1";

/// `--json webhook list` on node `i`, by URL.
fn webhooks(cluster: &Cluster, i: usize) -> BTreeMap<String, Value> {
    let list: Value = cluster.json(i, &["webhook", "list"]);
    list["webhooks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|w| Some((w["url"].as_str()?.to_string(), w)))
        .collect()
}

fn two_nodes(args: &[&str]) -> Cluster {
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0"]).with_args(args),
            NodeSpec::new("n2", &["gv1:/bricks/n2/gv1"]).with_args(args),
        ],
        Some(TEST_MONITOR),
    );
    for i in 0..2 {
        cluster.wait_live(i, 2, WAIT);
    }
    cluster
}

/// Ids of the GEOREP_* events in node `i`'s merged stream.
fn georep_event_ids(cluster: &Cluster, i: usize) -> Vec<String> {
    let out = cluster.ok(i, &["--json", "events", "--type", "GEOREP_CONFIG_SET"]);
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn https_is_verified_against_the_private_ca_and_never_falls_back_to_unverified() {
    let cluster = two_nodes(&[]);
    // A private CA and a server certificate for 127.0.0.1, made by `georep tls`.
    let pki = tempfile::tempdir().unwrap();
    let ca_dir = pki.path().join("ca");
    let cert_dir = pki.path().join("web");
    let tls = |args: &[&str]| {
        let out = Command::new(cluster.georep_bin())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "georep {args:?}: {out:?}");
    };
    tls(&["tls", "ca", "create", "--out", ca_dir.to_str().unwrap()]);
    tls(&[
        "tls",
        "cert",
        "create",
        "--ca",
        ca_dir.to_str().unwrap(),
        "--node",
        "web",
        "--ip",
        "127.0.0.1",
        "--out",
        cert_dir.to_str().unwrap(),
    ]);
    let ca = ca_dir.join("ca.crt");
    let ca = ca.to_str().unwrap();
    let tls_opts = |token: &str| {
        vec![
            "--token".to_string(),
            token.to_string(),
            "--tls-cert".to_string(),
            cert_dir.join("web.crt").display().to_string(),
            "--tls-key".to_string(),
            cert_dir.join("web.key").display().to_string(),
        ]
    };
    let trusted_opts = tls_opts("trusted");
    let untrusted_opts = tls_opts("untrusted");
    let trusted = Receiver::start(&trusted_opts.iter().map(String::as_str).collect::<Vec<_>>());
    let untrusted = Receiver::start(
        &untrusted_opts
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(trusted.url().starts_with("https://"));

    // `webhook test`: with the CA it succeeds; without it the certificate is refused.
    let with_ca = cluster.json(
        0,
        &[
            "webhook",
            "test",
            &trusted.url(),
            "--token",
            "trusted",
            "--ca",
            ca,
        ],
    );
    assert_eq!(with_ca["ok"], true, "{with_ca}");
    let out = cluster.georep(
        0,
        &["webhook", "test", &untrusted.url(), "--token", "untrusted"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase()
        + &String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        stderr.contains("certificate"),
        "names the certificate: {stderr}"
    );
    assert!(untrusted.attempts().is_empty() && untrusted.received().is_empty());

    // Delivery: the webhook with the CA gets every event; the one without gets none
    // and shows why in `webhook list` on every node.
    cluster.ok(
        0,
        &[
            "webhook",
            "add",
            &trusted.url(),
            "--token",
            "trusted",
            "--ca",
            ca,
        ],
    );
    cluster.ok(
        1,
        &["webhook", "add", &untrusted.url(), "--token", "untrusted"],
    );
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    for value in ["4", "5"] {
        cluster.ok(1, &["config", "gv0", SECONDARY, "sync-jobs", value]);
    }
    // Read where they were issued (events replicate on their own, after the config).
    let expected = georep_event_ids(&cluster, 1);
    assert_eq!(expected.len(), 2);
    cluster.wait_until(WAIT, "the trusted receiver got every event", || {
        expected.iter().all(|id| trusted.ids().contains(id))
    });
    trusted.assert_authentic();
    cluster.wait_until(WAIT, "both nodes show the certificate error", || {
        (0..2).all(|i| {
            webhooks(&cluster, i)
                .get(&untrusted.url())
                .and_then(|w| w["last_error"].as_str().map(str::to_lowercase))
                .is_some_and(|e| e.contains("certificate"))
        })
    });
    let row = &webhooks(&cluster, 0)[&untrusted.url()];
    assert_eq!(row["state"], "active", "still retried: {row}");
    assert!(row["pending"].as_u64().unwrap_or(0) > 0, "{row}");
    assert!(
        untrusted.received().is_empty(),
        "nothing over an unverified connection"
    );
    assert_eq!(webhooks(&cluster, 1)[&trusted.url()]["ca"], true);
}

#[test]
fn retry_after_is_honoured_and_a_failing_webhook_parks_until_modified() {
    let cluster = two_nodes(&["--webhook-backoff-max", "1s", "--webhook-park-after", "10s"]);
    let receiver = Receiver::start(&[]);
    // Every answer says: not before 4 s.
    receiver.set("retry-after:4");
    cluster.ok(0, &["webhook", "add", &receiver.url()]);
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.ok(0, &["config", "gv0", SECONDARY, "sync-jobs", "4"]);
    // n1's stream (each stream has its own delivery worker and backoff).
    let n1 = |attempts: Vec<(f64, u16, String)>| -> Vec<f64> {
        attempts
            .into_iter()
            .filter(|(_, _, id)| id.starts_with("n1@"))
            .map(|(at, _, _)| at)
            .collect()
    };
    cluster.wait_until(WAIT, "three attempts", || {
        n1(receiver.attempts()).len() >= 3
    });
    let attempts = n1(receiver.attempts());
    for pair in attempts.windows(2).take(2) {
        let gap = pair[1] - pair[0];
        // The backoff alone would retry after 1 s (capped): Retry-After wins.
        assert!(
            gap >= 3.9,
            "retried {gap:.2} s after a Retry-After: 4 ({attempts:?})"
        );
    }

    // Failing beyond the park bound: parked on every node, and no more attempts.
    receiver.set("500");
    cluster.wait_until(WAIT, "parked on both nodes", || {
        (0..2).all(|i| {
            webhooks(&cluster, i)
                .get(&receiver.url())
                .is_some_and(|w| w["state"] == "parked")
        })
    });
    let row = &webhooks(&cluster, 1)[&receiver.url()];
    assert!(
        row["state_reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{row}"
    );
    assert!(row["pending"].as_u64().unwrap_or(0) > 0, "{row}");
    let parked_attempts = receiver.attempts().len();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        receiver.attempts().len(),
        parked_attempts,
        "a parked webhook is not tried"
    );

    // The receiver is fixed; `webhook mod` resumes it and everything pending arrives.
    receiver.set("ok");
    cluster.ok(1, &["webhook", "mod", &receiver.url()]);
    let expected = georep_event_ids(&cluster, 0);
    cluster.wait_until(WAIT, "every event after the resume", || {
        expected.iter().all(|id| receiver.ids().contains(id))
    });
    for i in 0..2 {
        let row = &webhooks(&cluster, i)[&receiver.url()];
        assert_eq!(row["state"], "active", "{row}");
    }
    receiver.assert_authentic();
}
