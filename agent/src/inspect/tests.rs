//! Unit tests of `inspect`.
use georep_mesh::Hlc;
use georep_mesh::{Reg, SessionOptions};

use super::*;

fn sid() -> SessionId {
    SessionId::parse("gv0", "n4::gv1").unwrap()
}

fn record(desired: Option<DesiredState>, deleted: bool) -> SessionRecord {
    let mut record = SessionRecord::empty(sid());
    record.created = Some(Reg {
        val: SessionOptions::default(),
        marker: Hlc::new(100, 0, "n1"),
    });
    record.desired = desired.map(|val| Reg {
        val,
        marker: Hlc::new(200, 1, "n2"),
    });
    record.config.insert(
        "sync-jobs".into(),
        Reg {
            val: Some("7".into()),
            marker: Hlc::new(300, 0, "n3"),
        },
    );
    if deleted {
        record.deleted = Some(Hlc::new(400, 0, "n1"));
    }
    record
}

fn report(state: MonitorState) -> MonitorReport {
    MonitorReport {
        state,
        pid: matches!(state, MonitorState::Started | MonitorState::Paused).then_some(4242),
        restarts: 3,
        last_error: Some("exited with status 3".into()),
        desired_stamp: Some(Hlc::new(200, 1, "n2")),
        restart_stamp: None,
        since_ms: 1500,
        backoff_remaining_ms: (state == MonitorState::Faulty).then_some(3200),
        last_decision: "started monitor pid 4242".into(),
    }
}

fn brick() -> Vec<Brick> {
    vec![Brick {
        volume: "gv0".into(),
        path: "/bricks/n3".into(),
        replica_set: 1,
    }]
}

fn latest() -> LatestWrite {
    LatestWrite {
        stamp: Hlc::new(300, 0, "n2").to_string(),
        origin: "n2".into(),
        generation: 7,
        version: 5,
        carriers: vec![Carrier {
            origin: "n2".into(),
            generation: 7,
            version: 5,
        }],
    }
}

fn facts<'a>(
    view: &'a SessionView,
    bricks: &'a [Brick],
    report: Option<&'a MonitorReport>,
    latest: Option<&'a LatestWrite>,
) -> ExplainFacts<'a> {
    ExplainFacts {
        node: "n3",
        is_self: false,
        view,
        live: true,
        last_heard_ms: Some(80),
        primary_bricks: bricks,
        hosts_secondary: false,
        report,
        report_age_ms: Some(0),
        latest_write: latest,
        seen: seen(&[("n2", 7, 5)]),
        acked: false,
    }
}

#[test]
fn reason_follows_the_documented_precedence() {
    let started = record(Some(DesiredState::Started), false).view();
    let stopped = record(Some(DesiredState::Stopped), false).view();
    let created = record(None, false).view();
    let paused = record(Some(DesiredState::Paused), false).view();
    let deleted = record(Some(DesiredState::Started), true).view();
    let bricks = brick();
    let running = report(MonitorState::Started);
    let faulty = report(MonitorState::Faulty);
    let starting = report(MonitorState::Starting);
    let write = latest();

    let base = facts(&started, &bricks, Some(&running), Some(&write));
    assert_eq!(explain_reason(&base), ExplainReason::Running);
    let f = facts(&started, &bricks, Some(&faulty), Some(&write));
    assert_eq!(explain_reason(&f), ExplainReason::Faulty);
    let f = facts(&started, &bricks, Some(&starting), Some(&write));
    assert_eq!(explain_reason(&f), ExplainReason::Starting);
    let f = facts(&started, &bricks, None, None);
    assert_eq!(explain_reason(&f), ExplainReason::Starting);
    let f = facts(&stopped, &bricks, Some(&running), Some(&write));
    assert_eq!(explain_reason(&f), ExplainReason::DesiredStopped);
    let f = facts(&created, &bricks, None, Some(&write));
    assert_eq!(explain_reason(&f), ExplainReason::DesiredStopped);
    let f = facts(&paused, &bricks, Some(&running), Some(&write));
    assert_eq!(explain_reason(&f), ExplainReason::DesiredPaused);
    let f = facts(&deleted, &bricks, Some(&running), Some(&write));
    assert_eq!(explain_reason(&f), ExplainReason::Deleted);

    // lagging beats the session's state: the node acts on older state
    let mut f = facts(&stopped, &bricks, Some(&running), Some(&write));
    f.seen = seen(&[("n2", 7, 3)]);
    assert_eq!(explain_reason(&f), ExplainReason::Lagging);
    f.seen = Seen::new();
    assert_eq!(explain_reason(&f), ExplainReason::Lagging);
    // ... an older generation of the origin is lagging too
    f.seen = seen(&[("n2", 6, 99)]);
    assert_eq!(explain_reason(&f), ExplainReason::Lagging);
    // a node that acknowledged the push has merged it whatever it published
    f.acked = true;
    assert_eq!(explain_reason(&f), ExplainReason::DesiredStopped);
    f.acked = false;
    // the writer has its own write whatever it published
    f.node = "n2";
    assert_eq!(explain_reason(&f), ExplainReason::DesiredStopped);

    // not primary beats lagging; dead beats everything
    let mut f = facts(&started, &[], Some(&running), Some(&write));
    f.seen = Seen::new();
    assert_eq!(explain_reason(&f), ExplainReason::NotPrimary);
    f.live = false;
    assert_eq!(explain_reason(&f), ExplainReason::NodeDead);
}

#[test]
fn reason_codes_are_stable_and_match_serde() {
    for reason in [
        ExplainReason::NodeDead,
        ExplainReason::NotPrimary,
        ExplainReason::Lagging,
        ExplainReason::Deleted,
        ExplainReason::DesiredStopped,
        ExplainReason::DesiredPaused,
        ExplainReason::Faulty,
        ExplainReason::Running,
        ExplainReason::Starting,
    ] {
        assert_eq!(serde_json::to_value(reason).unwrap(), reason.code());
    }
}

#[test]
fn explain_sentences_name_the_facts() {
    let started = record(Some(DesiredState::Started), false).view();
    let bricks = brick();
    let faulty = report(MonitorState::Faulty);
    let write = latest();
    let f = facts(&started, &bricks, Some(&faulty), Some(&write));
    let (message, sentences) = explain_text(&f, explain_reason(&f));
    let all = sentences.join("\n");
    assert!(message.contains("Faulty"), "{message}");
    assert!(message.contains("retrying in 4s"), "{message}");
    assert!(all.contains("Faulty: retrying in 4s."), "{all}");
    assert!(
        all.contains("desired state Started set at 200.1@n2"),
        "{all}"
    );
    assert!(
        all.contains("hosts primary bricks of gv0: /bricks/n3 (replica set 1)"),
        "{all}"
    );
    assert!(all.contains("Last error: exited with status 3."), "{all}");
    assert!(
        all.contains("Last decision: started monitor pid 4242."),
        "{all}"
    );
    assert!(
        all.contains("has merged the session's latest write"),
        "{all}"
    );

    let mut f = facts(&started, &[], None, Some(&write));
    f.hosts_secondary = true;
    f.seen = seen(&[("n2", 7, 3)]);
    let (message, sentences) = explain_text(&f, explain_reason(&f));
    let all = sentences.join("\n");
    assert!(message.contains("not a primary node"), "{message}");
    assert!(
        all.contains("no SSH key management is implemented yet; nothing is installed"),
        "{all}"
    );
    assert!(
        all.contains("is lagging behind the latest write (300.0@n2): it has v3 of n2, needs v5"),
        "{all}"
    );

    let f = facts(&started, &bricks, None, Some(&write));
    let mut f2 = f.clone();
    f2.seen = seen(&[("n2", 7, 3)]);
    let (message, _) = explain_text(&f2, explain_reason(&f2));
    assert_eq!(
        message,
        "n3 is lagging behind the latest write (has v3 of n2, needs v5): it acts on older state until it merges it."
    );
    let (_, sentences) = explain_text(&f, explain_reason(&f));
    assert!(
        sentences
            .iter()
            .any(|s| s == "n3 has published no monitor status for this session.")
    );

    // relative times are as of publication: a report published 1s ago has aged
    let mut f = facts(&started, &bricks, Some(&faulty), Some(&write));
    f.report_age_ms = Some(1000);
    assert_eq!(f.state_for_ms(), Some(2500));
    assert_eq!(f.retry_in_ms(), Some(2200));
    let (message, sentences) = explain_text(&f, explain_reason(&f));
    assert!(message.contains("retrying in 3s"), "{message}");
    assert!(
        sentences
            .iter()
            .any(|s| s.contains("in this state for 3s (published 1s ago)")),
        "{sentences:?}"
    );
}

#[test]
fn lag_text_names_generations_only_when_they_differ() {
    let needs = WritePosition {
        generation: 9,
        version: 5,
    };
    assert_eq!(lag_text("n2", None, needs), "has no write of n2, needs v5");
    assert_eq!(
        lag_text(
            "n2",
            Some(WritePosition {
                generation: 9,
                version: 3
            }),
            needs
        ),
        "has v3 of n2, needs v5"
    );
    assert_eq!(
        lag_text(
            "n2",
            Some(WritePosition {
                generation: 8,
                version: 30
            }),
            needs
        ),
        "has v30 of n2's generation 8, needs v5 of generation 9"
    );
}

fn seen(entries: &[(&str, u64, u64)]) -> Seen {
    entries
        .iter()
        .map(|(origin, generation, version)| {
            (
                origin.to_string(),
                WritePosition {
                    generation: *generation,
                    version: *version,
                },
            )
        })
        .collect()
}

fn namespaces() -> BTreeMap<String, Namespace> {
    let mut n1 = Namespace {
        generation: 10,
        keys: BTreeMap::new(),
    };
    n1.keys.insert(
        format!("s/{}", sid().key()),
        (5, Some(record(Some(DesiredState::Started), false))),
    );
    n1.keys.insert("s/other".into(), (3, None));
    let mut n2 = Namespace {
        generation: 20,
        keys: BTreeMap::new(),
    };
    n2.keys.insert(format!("s/{}", sid().key()), (4, None));
    [("n1".to_string(), n1), ("n2".to_string(), n2)].into()
}

#[test]
fn latest_write_prefers_the_writer_and_any_carrier_counts() {
    let key = format!("s/{}", sid().key());
    let newest = record(Some(DesiredState::Started), false); // max stamp 300.0@n3
    let mut older = SessionRecord::empty(sid());
    older.desired = Some(Reg {
        val: DesiredState::Stopped,
        marker: Hlc::new(250, 0, "n4"),
    });
    let ns = |generation, version, record: &SessionRecord| Namespace {
        generation,
        keys: [(key.clone(), (version, Some(record.clone())))].into(),
    };
    let mut namespaces: BTreeMap<String, Namespace> = [
        ("n1".to_string(), ns(10, 9, &newest)), // custodian copy
        ("n3".to_string(), ns(30, 4, &newest)), // the writer
        ("n4".to_string(), ns(40, 2, &older)),
    ]
    .into();
    namespaces.insert(
        "n5".into(),
        Namespace {
            generation: 50,
            keys: [(key.clone(), (7, None))].into(),
        },
    );
    let latest = latest_write_of(&key, &namespaces).unwrap();
    assert_eq!(latest.stamp, "300.0@n3");
    assert_eq!((latest.origin.as_str(), latest.version), ("n3", 4));
    let carriers: Vec<&str> = latest.carriers.iter().map(|c| c.origin.as_str()).collect();
    assert_eq!(carriers, ["n1", "n3"]);
    // covering the custodian's copy is enough; an older write is not
    assert!(has_merged("n2", &seen(&[("n1", 10, 9)]), &latest, false));
    assert!(has_merged("n2", &seen(&[("n3", 30, 4)]), &latest, false));
    assert!(!has_merged(
        "n2",
        &seen(&[("n1", 10, 8), ("n4", 40, 2)]),
        &latest,
        false
    ));
    assert!(
        has_merged("n2", &Seen::new(), &latest, true),
        "acknowledged push"
    );
    assert!(
        has_merged("n1", &Seen::new(), &latest, false),
        "a carrier has it"
    );
    // without the writer's namespace the lowest carrier id is reported
    namespaces.remove("n3");
    let latest = latest_write_of(&key, &namespaces).unwrap();
    assert_eq!((latest.origin.as_str(), latest.version), ("n1", 9));
    assert!(latest_write_of("s/none", &namespaces).is_none());
}

#[test]
fn diff_is_empty_once_both_frontiers_cover_every_write() {
    let both = seen(&[("n1", 10, 5), ("n2", 20, 4)]);
    let (writes, seen_diff) = diff_frontiers("n3", &both, "n4", &both, &namespaces());
    assert!(writes.is_empty(), "{writes:?}");
    assert!(seen_diff.is_empty(), "{seen_diff:?}");
    // a writer covers its own keys even before its published frontier says so
    let (writes, _) = diff_frontiers(
        "n1",
        &seen(&[("n2", 20, 4)]),
        "n2",
        &seen(&[("n1", 10, 5)]),
        &namespaces(),
    );
    assert!(writes.is_empty(), "{writes:?}");
}

#[test]
fn diff_lists_the_writes_and_registers_one_side_lacks() {
    let a = seen(&[("n1", 10, 5), ("n2", 20, 4)]);
    let b = seen(&[("n1", 10, 3), ("n2", 20, 4)]);
    let (writes, seen_diff) = diff_frontiers("n3", &a, "n4", &b, &namespaces());
    assert_eq!(writes.len(), 1, "{writes:?}");
    let w = &writes[0];
    assert_eq!((w.origin.as_str(), w.version, w.generation), ("n1", 5, 10));
    assert!(w.merged_by_a && !w.merged_by_b);
    assert_eq!(w.session.as_deref(), Some("gv0 -> n4::gv1"));
    let registers: Vec<&str> = w.registers.iter().map(|r| r.register.as_str()).collect();
    assert_eq!(registers, ["created", "desired", "config.sync-jobs"]);
    assert_eq!(w.registers[2].value, json!("7"));
    assert_eq!(w.registers[2].stamp, "300.0@n3");
    assert_eq!(
        seen_diff,
        vec![SeenDiff {
            origin: "n1".into(),
            a: Some(WritePosition {
                generation: 10,
                version: 5
            }),
            b: Some(WritePosition {
                generation: 10,
                version: 3
            }),
        }]
    );
    // a frontier from an older generation of the origin covers nothing new
    let old = seen(&[("n1", 9, 100), ("n2", 20, 4)]);
    let (writes, _) = diff_frontiers("n3", &a, "n4", &old, &namespaces());
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(writes.iter().all(|w| w.merged_by_a && !w.merged_by_b));
    // writes neither side merged are no difference between them
    let (writes, seen_diff) = diff_frontiers("n3", &Seen::new(), "n4", &Seen::new(), &namespaces());
    assert!(writes.is_empty() && seen_diff.is_empty(), "{writes:?}");
    // ... but each side is compared with the writer's own view
    let (writes, _) = diff_frontiers("n1", &Seen::new(), "n4", &Seen::new(), &namespaces());
    assert_eq!(writes.len(), 2, "n1's two keys: {writes:?}");
    assert!(writes.iter().all(|w| w.merged_by_a && !w.merged_by_b));
}

fn member(id: &str, live: bool, seen: Seen) -> Member {
    Member {
        node_id: id.into(),
        generation: 1,
        gossip_addr: "127.0.0.1:1".parse().unwrap(),
        live,
        scheduled_for_deletion: false,
        heartbeat: 1,
        last_heard_ms: Some(0),
        key_count: 0,
        max_version: 0,
        info: None,
        seen: std::sync::Arc::new(seen),
    }
}

#[test]
fn convergence_cells_classify_merged_lagging_dead() {
    let mut membership = Membership {
        self_id: "n1".into(),
        members: BTreeMap::new(),
    };
    for m in [
        member("n1", true, seen(&[("n2", 7, 5)])),
        member("n2", true, Seen::new()),
        member("n3", true, seen(&[("n2", 7, 3)])),
        member("n4", false, seen(&[("n2", 7, 5)])),
    ] {
        membership.members.insert(m.node_id.clone(), m);
    }
    let write = latest();
    let cells = convergence(&membership, Some(&write), &BTreeSet::new());
    let states: Vec<(&str, Convergence, bool)> = cells
        .iter()
        .map(|c| (c.node.as_str(), c.state, c.merged))
        .collect();
    assert_eq!(
        states,
        [
            ("n1", Convergence::Merged, true),
            ("n2", Convergence::Merged, true),
            ("n3", Convergence::Lagging, false),
            ("n4", Convergence::Dead, true),
        ]
    );
    assert_eq!(
        cells[2].seen,
        Some(WritePosition {
            generation: 7,
            version: 3
        })
    );
    assert!(
        convergence(&membership, None, &BTreeSet::new())
            .iter()
            .all(|c| c.merged)
    );
    // an acknowledged push counts as merged before the frontier says so
    let acked: BTreeSet<String> = ["n3".to_string()].into();
    let cells = convergence(&membership, Some(&write), &acked);
    assert_eq!(cells[2].state, Convergence::Merged);
    let row = member_row(&membership.members["n4"], "n1");
    assert_eq!(row.status, MemberStatus::Dead);
    assert_eq!(serde_json::to_value(row.status).unwrap(), "dead");
    assert_eq!(
        serde_json::to_value(MemberStatus::ScheduledForDeletion).unwrap(),
        "scheduled-for-deletion"
    );
}

#[test]
fn values_decode_by_key_and_garbage_is_an_error_not_a_panic() {
    let rec = record(Some(DesiredState::Started), false);
    let key = format!("s/{}", sid().key());
    let (kind, value) = decode_value(&key, &codec::encode(&rec).unwrap());
    assert_eq!(kind, "session");
    let value = value.unwrap();
    assert_eq!(value["session"], "gv0 -> n4::gv1");
    assert_eq!(value["registers"][1]["value"], "Started");
    assert_eq!(value["registers"][1]["stamp"], "200.1@n2");
    // a record under another session's key
    let (_, wrong) = decode_value("s/gv9:root@x::y", &codec::encode(&rec).unwrap());
    assert!(wrong.unwrap_err().contains("wrong key"));
    for (key, raw) in [
        (key.as_str(), "!!not base64!!"),
        ("seen", ""),
        ("node", "AQ"),
        ("m/x", "AAAA"),
        ("weird", "x"),
    ] {
        let (_, decoded) = decode_value(key, raw);
        assert!(decoded.is_err(), "{key}: {decoded:?}");
    }
    let status = NodeSessionStatus {
        report: report(MonitorState::Started),
        workers: Vec::new(),
        published_at_ms: 5,
    };
    let (kind, value) = decode_value("m/x", &codec::encode(&status).unwrap());
    assert_eq!(kind, "monitor");
    let value = value.unwrap();
    assert_eq!(value["report"]["desired_stamp"], "200.1@n2");
    assert_eq!(value["report"]["state"], "Started");
    let seen_value = seen(&[("n1", 3, 4)]);
    let (_, value) = decode_value("seen", &codec::encode(&seen_value).unwrap());
    assert_eq!(
        value.unwrap(),
        json!({"n1": {"generation": 3, "version": 4}})
    );
}

#[test]
fn stamps_become_text_everywhere() {
    let value = json!({"a": [{"millis": 5, "counter": 1, "node": "n1"}], "b": {"millis": 1}});
    assert_eq!(
        stamps_as_text(value),
        json!({"a": ["5.1@n1"], "b": {"millis": 1}})
    );
}

#[test]
fn key_sentences_name_the_missing_primary_and_why() {
    let mut rec = record(Some(DesiredState::Started), false);
    if let Some(created) = rec.created.as_mut() {
        created.val.push_pem = true;
    }
    let view = rec.view();
    let incarnation = view.incarnation.clone().unwrap();
    let public = |f: &str| georep_mesh::PublicKeyInfo {
        openssh: "ssh-ed25519 AAAA".into(),
        fingerprint: f.into(),
    };
    let keys = SessionKeys {
        incarnation: incarnation.clone(),
        rotation: None,
        secret: public("SHA256:s"),
        tar: public("SHA256:t"),
        addresses: vec!["10.0.0.1".into()],
    };
    let report = KeyInstall {
        incarnation,
        rotation: None,
        user: "root".into(),
        file: "/root/.ssh/authorized_keys".into(),
        installed: vec!["n1".into()],
        missing: [("n2".to_string(), "it is down".to_string())].into(),
        error: None,
    };
    let installs: BTreeMap<String, KeyInstall> = [("n4".to_string(), report)].into();
    let primary = key_sentences("n1", &view, true, false, Some(&keys), &installs);
    assert_eq!(
        primary,
        ["push-pem: n1 published its session keys (gsyncd SHA256:s, tar SHA256:t)."]
    );
    let down = key_sentences("n2", &view, true, false, None, &installs);
    assert!(
        down.contains(&"push-pem: n4 has not installed n2's keys: it is down.".to_string()),
        "{down:?}"
    );
    let secondary = key_sentences("n4", &view, false, true, None, &installs);
    assert_eq!(
        secondary,
        [
            "push-pem: n4 holds the keys of 1 primary node(s) in /root/.ssh/authorized_keys.",
            "push-pem: n4 lacks n2's keys: it is down."
        ]
    );
    // A session without push-pem says nothing about keys.
    let plain = record(Some(DesiredState::Started), false).view();
    assert!(key_sentences("n4", &plain, false, true, None, &installs).is_empty());
}
