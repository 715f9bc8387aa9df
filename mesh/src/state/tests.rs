//! Unit tests of `state`.
use proptest::prelude::*;

use super::*;

struct Volumes {
    bricks: Vec<&'static str>,
    live: Vec<&'static str>,
    hosts: Vec<&'static str>,
    sizes: BTreeMap<&'static str, Result<u64, String>>,
    full: Vec<&'static str>,
    without_user: Vec<String>,
}

impl VolumeDirectory for Volumes {
    fn has_bricks(&self, volume: &str) -> bool {
        self.bricks.contains(&volume)
    }
    fn hosted_by_live_node(&self, volume: &str) -> bool {
        self.live.contains(&volume)
    }
    fn is_live_host(&self, host: &str) -> bool {
        self.hosts.contains(&host)
    }
    fn capacity(&self, volume: &str) -> Result<u64, String> {
        self.sizes.get(volume).cloned().unwrap_or(Ok(1 << 40))
    }
    fn non_empty_bricks(&self, volume: &str) -> Vec<String> {
        if self.full.contains(&volume) {
            vec![format!("n4:/b/{volume}")]
        } else {
            Vec::new()
        }
    }
    fn live_hosts_without_user(&self, _volume: &str, _user: &str) -> Vec<String> {
        self.without_user.clone()
    }
}

fn volumes() -> Volumes {
    Volumes {
        bricks: vec!["gv0", "gv1"],
        live: vec!["gv0", "gv1"],
        hosts: vec!["n4"],
        sizes: BTreeMap::new(),
        full: Vec::new(),
        without_user: Vec::new(),
    }
}

fn sid() -> SessionId {
    SessionId::parse("gv0", "n4::gv1").unwrap()
}

#[allow(clippy::result_large_err)] // mirrors `plan`'s error type
fn apply(replica: &mut Replica, op: SessionOp, stamp: Hlc) -> Result<(), StateError> {
    let delta = plan(replica, &volumes(), &sid(), &op, stamp, 0)?;
    replica.join_record(&delta);
    Ok(())
}

#[test]
fn session_id_parses_gluster_forms() {
    let id = SessionId::parse("gv0", "geo@n4::gv1").unwrap();
    assert_eq!(id.secondary_user, "geo");
    assert_eq!(id.secondary(), "geo@n4::gv1");
    assert_eq!(id.to_string(), "gv0 -> geo@n4::gv1");
    assert_eq!(sid().secondary_user, "root");
    assert_eq!(sid().dir_name(), "gv0_n4_gv1");
    assert_eq!(SessionId::from_key(&id.key()), Some(id));
    assert!(SessionId::parse("gv0", "n4:gv1").is_err());
    assert!(SessionId::parse("g v0", "n4::gv1").is_err());
    assert!(SessionId::parse("gv0", "n4::").is_err());
    for (primary, secondary) in [
        ("-rf", "n4::gv1"),
        ("gv0", "-oProxyCommand::gv1"),
        ("gv0", "n4::-e"),
        ("gv0", "-u@n4::gv1"),
    ] {
        let error = SessionId::parse(primary, secondary).unwrap_err();
        assert!(
            error.to_string().contains("not starting with '-'"),
            "{primary} {secondary}: {error}"
        );
    }
    assert!(SessionId::parse("gv0", "10.0.0.4::gv1").is_ok());
}

#[test]
fn directory_names_keep_gluster_shape_and_never_collide() {
    let dir = |p: &str, s: &str| SessionId::parse(p, s).unwrap().dir_name();
    assert_eq!(dir("gv0", "n4::gv1"), "gv0_n4_gv1");
    assert_eq!(dir("gv0", "geoaccount@n4::gv1"), "gv0_geoaccount@n4_gv1");
    assert_eq!(dir("gv0", "n4_gv1::x"), "gv0_n4%5Fgv1_x");
    assert_eq!(dir("gv0", "n4::gv1_x"), "gv0_n4_gv1%5Fx");
    let names = ["a", "b", "a_b", "_", "a.b", "b_", "ab"];
    let mut seen = std::collections::BTreeMap::new();
    for p in names {
        for u in ["root", "a", "a_b"] {
            for h in names {
                for v in names {
                    let id = SessionId::parse(p, &format!("{u}@{h}::{v}")).unwrap();
                    if let Some(other) = seen.insert(id.dir_name(), id.clone()) {
                        panic!("{id} and {other} share {}", id.dir_name());
                    }
                }
            }
        }
    }
}

#[test]
fn one_session_per_volume_pair_and_same_value_writes_change_no_stamp() {
    let mut replica = Replica::default();
    let t = |n| Hlc::new(n, 0, "a");
    let create = SessionOp::Create {
        options: SessionOptions::default(),
        force: true,
    };
    apply(&mut replica, create.clone(), t(1)).unwrap();
    for other in ["n3::gv1", "geo@n4::gv1"] {
        let other = SessionId::parse("gv0", other).unwrap();
        let error = plan(&replica, &volumes(), &other, &create, t(2), 0).unwrap_err();
        assert_eq!(
            error,
            StateError::SameVolumes {
                session: other.clone(),
                existing: sid()
            }
        );
        assert!(error.to_string().contains("gv0 -> n4::gv1"), "{error}");
    }
    let elsewhere = SessionId::parse("gv0", "n4::gv2").unwrap();
    assert!(plan(&replica, &volumes(), &elsewhere, &create, t(2), 0).is_ok());

    let set = |value: &str| SessionOp::SetConfig {
        key: "sync_jobs".into(),
        value: value.into(),
    };
    let restart = |replica: &Replica| {
        let record = &replica.sessions[&sid()];
        record.view().restart_stamp(record)
    };
    apply(&mut replica, set("5"), t(3)).unwrap();
    assert_eq!(restart(&replica), Some(t(3)));
    apply(&mut replica, set(" 5"), t(4)).unwrap();
    assert_eq!(restart(&replica), Some(t(3)), "same value: no restart");
    apply(&mut replica, set("6"), t(5)).unwrap();
    assert_eq!(restart(&replica), Some(t(5)));
    let reset = SessionOp::ResetConfig {
        key: "sync-jobs".into(),
    };
    apply(&mut replica, reset.clone(), t(6)).unwrap();
    apply(&mut replica, reset, t(7)).unwrap();
    assert_eq!(restart(&replica), Some(t(6)), "reset twice: one restart");
}

#[test]
fn concurrent_creates_of_one_volume_pair_resolve_to_the_first_everywhere() {
    let t = |n| Hlc::new(n, 0, "a");
    let create = |id: &SessionId, stamp: Hlc| {
        let mut record = SessionRecord::empty(id.clone());
        record.created = Some(LWWReg {
            val: SessionOptions::default(),
            marker: stamp,
        });
        record
    };
    let a = SessionId::parse("gv0", "n4::gv1").unwrap();
    let b = SessionId::parse("gv0", "geo@n3::gv1").unwrap();
    let other = SessionId::parse("gv0", "n4::gv2").unwrap();
    // the two sides of a partition, joined in either order
    let mut left = Replica::default();
    left.join_record(&create(&b, t(5)));
    left.join_record(&create(&other, t(9)));
    let mut right = Replica::default();
    right.join_record(&create(&a, t(3)));
    let mut healed_lr = left.clone();
    healed_lr.join_record(&right.sessions[&a]);
    let mut healed_rl = right.clone();
    for record in left.sessions.values() {
        healed_rl.join_record(record);
    }
    let expected: BTreeMap<_, _> = [(b.clone(), a.clone())].into();
    assert_eq!(healed_lr.superseded(), expected);
    assert_eq!(healed_rl.superseded(), expected);
    assert!(left.superseded().is_empty() && right.superseded().is_empty());
    // deleting the winner lets the other run
    let mut deleted = SessionRecord::empty(a.clone());
    deleted.deleted = Some(t(10));
    healed_lr.join_record(&deleted);
    assert!(healed_lr.superseded().is_empty());
}

#[test]
fn lifecycle_validation_follows_cli_contract() {
    let mut replica = Replica::default();
    let t = |n| Hlc::new(n, 0, "a");
    assert_eq!(
        apply(&mut replica, SessionOp::Start { force: false }, t(1)),
        Err(StateError::NotCreated(sid()))
    );
    let missing = Volumes {
        bricks: vec![],
        live: vec![],
        ..volumes()
    };
    let create = SessionOp::Create {
        options: SessionOptions::default(),
        force: true,
    };
    assert!(matches!(
        plan(&replica, &missing, &sid(), &create, t(1), 0),
        Err(StateError::PrimaryVolumeUnknown { .. })
    ));
    let no_secondary = Volumes {
        bricks: vec!["gv0"],
        live: vec![],
        ..volumes()
    };
    let strict = SessionOp::Create {
        options: SessionOptions::default(),
        force: false,
    };
    assert!(matches!(
        plan(&replica, &no_secondary, &sid(), &strict, t(1), 0),
        Err(StateError::SecondaryNotHosted { .. })
    ));
    assert!(plan(&replica, &no_secondary, &sid(), &create, t(1), 0).is_ok());
    apply(&mut replica, strict.clone(), t(2)).unwrap();
    assert_eq!(
        apply(&mut replica, create, t(3)),
        Err(StateError::AlreadyExists(sid()))
    );
    assert!(apply(&mut replica, SessionOp::Stop { force: false }, t(3)).is_err());
    assert!(apply(&mut replica, SessionOp::Pause { force: false }, t(3)).is_err());
    apply(&mut replica, SessionOp::Start { force: false }, t(4)).unwrap();
    let err = apply(&mut replica, SessionOp::Start { force: false }, t(5)).unwrap_err();
    assert!(err.to_string().contains("gv0 -> n4::gv1"), "{err}");
    apply(&mut replica, SessionOp::Start { force: true }, t(5)).unwrap();
    let err = apply(
        &mut replica,
        SessionOp::Delete {
            force: false,
            reset_sync_time: false,
        },
        t(6),
    )
    .unwrap_err();
    assert!(err.to_string().contains("Please stop the session"), "{err}");
    apply(&mut replica, SessionOp::Pause { force: false }, t(6)).unwrap();
    assert!(apply(&mut replica, SessionOp::Pause { force: false }, t(7)).is_err());
    apply(&mut replica, SessionOp::Resume { force: false }, t(7)).unwrap();
    assert_eq!(replica.view(&sid()).unwrap().desired, DesiredState::Started);
    apply(&mut replica, SessionOp::Stop { force: false }, t(8)).unwrap();
    apply(
        &mut replica,
        SessionOp::Delete {
            force: false,
            reset_sync_time: false,
        },
        t(9),
    )
    .unwrap();
    assert!(!replica.view(&sid()).unwrap().exists);
}

#[test]
fn config_set_validates_and_normalises() {
    let mut replica = Replica::default();
    let t = |n| Hlc::new(n, 0, "a");
    apply(
        &mut replica,
        SessionOp::Create {
            options: SessionOptions::default(),
            force: false,
        },
        t(1),
    )
    .unwrap();
    let set = |key: &str, value: &str| SessionOp::SetConfig {
        key: key.into(),
        value: value.into(),
    };
    apply(&mut replica, set("sync_jobs", "8"), t(2)).unwrap();
    let err = apply(&mut replica, set("bogus", "1"), t(3)).unwrap_err();
    assert!(err.to_string().contains("valid keys"), "{err}");
    let err = apply(&mut replica, set("sync-jobs", "0"), t(3)).unwrap_err();
    assert!(err.to_string().contains("from 1 to 100"), "{err}");
    let view = replica.view(&sid()).unwrap();
    assert_eq!(view.config_value("sync-jobs").as_deref(), Some("8"));
    apply(
        &mut replica,
        SessionOp::ResetConfig {
            key: "sync-jobs".into(),
        },
        t(4),
    )
    .unwrap();
    let view = replica.view(&sid()).unwrap();
    assert_eq!(view.config_value("sync-jobs").as_deref(), Some("3"));
    assert!(view.config.is_empty());
}

// ---- lattice laws on random histories ----

const NODES: [&str; 3] = ["a", "b", "c"];

// Markers must be unique per value (they are in real life: one stamp, one write), so
// the value is derived from the marker.
fn arb_record() -> impl Strategy<Value = SessionRecord> {
    let stamp = (0u64..20, 0u32..3, 0usize..3)
        .prop_map(|(millis, counter, node)| Hlc::new(millis, counter, NODES[node]));
    (
        proptest::option::of(stamp.clone()),
        proptest::option::of(stamp.clone()),
        proptest::option::of(stamp.clone()),
        proptest::collection::btree_map(0usize..3, stamp.clone(), 0..3),
        proptest::option::of(stamp),
    )
        .prop_map(|(created, deleted, desired, config, rotated)| {
            let states = [
                DesiredState::Created,
                DesiredState::Started,
                DesiredState::Stopped,
                DesiredState::Paused,
            ];
            let mut record = SessionRecord::empty(sid());
            record.created = created.map(|marker| LWWReg {
                val: SessionOptions {
                    push_pem: marker.millis % 2 == 0,
                    forced: marker.counter == 1,
                },
                marker,
            });
            record.deleted = deleted;
            record.desired = desired.map(|marker| LWWReg {
                val: states[(marker.millis as usize + marker.counter as usize) % 4],
                marker,
            });
            for (key, marker) in config {
                let name = ["sync-jobs", "log-level", "checkpoint"][key].to_string();
                let val = (marker.millis % 3 != 0).then(|| marker.to_string());
                record.config.insert(name, LWWReg { val, marker });
            }
            record.rotated = rotated;
            record.prune();
            record
        })
}

fn joined(a: &SessionRecord, b: &SessionRecord) -> SessionRecord {
    let mut out = a.clone();
    out.join(b);
    out
}

proptest! {
    #[test]
    fn join_is_commutative(a in arb_record(), b in arb_record()) {
        prop_assert_eq!(joined(&a, &b), joined(&b, &a));
    }

    #[test]
    fn join_is_associative(a in arb_record(), b in arb_record(), c in arb_record()) {
        prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
    }

    /// What a delete (or a later incarnation) dominates is gone after any join, so a
    /// node that never received such a register holds the same record.
    #[test]
    fn dominated_registers_make_no_difference(a in arb_record(), b in arb_record(), drop in 0usize..4) {
        let full = joined(&a, &b);
        if let Some((_, floor)) = full.floor() {
            prop_assert!(full.desired.as_ref().is_none_or(|r| r.marker >= *floor));
            prop_assert!(full.config.values().all(|r| r.marker > *floor));
            let mut missing = a.clone();
            let dominated = |marker: &Hlc| marker < floor;
            if drop == 3 {
                if missing.desired.as_ref().is_some_and(|r| dominated(&r.marker)) {
                    missing.desired = None;
                }
            } else if let Some(key) = missing.config.keys().nth(drop).cloned()
                && missing.config.get(&key).is_some_and(|r| dominated(&r.marker))
            {
                missing.config.remove(&key);
            }
            prop_assert_eq!(joined(&missing, &b), full);
        }
    }

    #[test]
    fn join_is_idempotent(a in arb_record(), b in arb_record()) {
        prop_assert_eq!(joined(&a, &a), a.clone());
        let ab = joined(&a, &b);
        prop_assert_eq!(joined(&ab, &b), ab);
    }

    /// Random histories of operations issued on several nodes, each node applying its
    /// own ops locally and exchanging deltas in arbitrary order with duplicates,
    /// converge to one state.
    #[test]
    fn random_histories_converge(
        ops in proptest::collection::vec((0usize..3, 0u8..9, 0u8..4), 1..40),
        deliveries in proptest::collection::vec((0usize..3, 0usize..200), 0..200),
    ) {
        let mut replicas = vec![Replica::default(); 3];
        let mut clocks = [0u64; 3];
        let mut deltas: Vec<SessionRecord> = Vec::new();
        let vols = volumes();
        for (i, (node, op, arg)) in ops.iter().enumerate() {
            clocks[*node] += 1 + (i as u64 % 3);
            let stamp = Hlc::new(clocks[*node], 0, NODES[*node]);
            let op = match op {
                0 => SessionOp::Create { options: SessionOptions::default(), force: true },
                1 => SessionOp::Start { force: *arg == 0 },
                2 => SessionOp::Stop { force: *arg == 0 },
                3 => SessionOp::Pause { force: *arg == 0 },
                4 => SessionOp::Resume { force: *arg == 0 },
                5 => SessionOp::SetConfig { key: "sync-jobs".into(), value: (arg + 1).to_string() },
                6 => SessionOp::ResetConfig { key: "sync-jobs".into() },
                7 => SessionOp::SetConfig { key: "log-level".into(), value: "DEBUG".into() },
                _ => SessionOp::Delete {
                    force: *arg < 2,
                    reset_sync_time: false,
                },
            };
            if let Ok(delta) = plan(&replicas[*node], &vols, &sid(), &op, stamp, 0) {
                replicas[*node].join_record(&delta);
                deltas.push(delta);
            }
            // some arbitrary deliveries interleaved with the ops
            for (to, which) in deliveries.iter().skip(i * 5).take(5) {
                if !deltas.is_empty() {
                    let delta = &deltas[which % deltas.len()];
                    replicas[*to].join_record(delta);
                }
            }
        }
        // anti-entropy: everything reaches everyone, in a different order per node
        for (n, replica) in replicas.iter_mut().enumerate() {
            let mut order: Vec<&SessionRecord> = deltas.iter().collect();
            if n % 2 == 1 { order.reverse(); }
            for delta in order { replica.join_record(delta); }
        }
        prop_assert_eq!(&replicas[0], &replicas[1]);
        prop_assert_eq!(&replicas[1], &replicas[2]);
    }
}

#[test]
fn delete_then_recreate_never_resurrects_old_config() {
    let t = |n| Hlc::new(n, 0, "a");
    let mut a = Replica::default();
    apply(
        &mut a,
        SessionOp::Create {
            options: SessionOptions::default(),
            force: false,
        },
        t(1),
    )
    .unwrap();
    // node b sets a key concurrently with a's delete + re-create, and delivers late
    let mut b = a.clone();
    let late = plan(
        &b,
        &volumes(),
        &sid(),
        &SessionOp::SetConfig {
            key: "sync-jobs".into(),
            value: "9".into(),
        },
        Hlc::new(2, 0, "b"),
        0,
    )
    .unwrap();
    b.join_record(&late);
    apply(
        &mut a,
        SessionOp::Delete {
            force: false,
            reset_sync_time: false,
        },
        t(3),
    )
    .unwrap();
    apply(
        &mut a,
        SessionOp::Create {
            options: SessionOptions::default(),
            force: false,
        },
        t(4),
    )
    .unwrap();
    a.join_record(&late);
    b.join(&a);
    for replica in [&a, &b] {
        let view = replica.view(&sid()).unwrap();
        assert!(view.exists);
        assert_eq!(view.config_value("sync-jobs").as_deref(), Some("3"));
        assert_eq!(view.desired, DesiredState::Created);
    }
    assert_eq!(a, b);
}

#[test]
fn concurrent_start_and_stop_resolve_identically_everywhere() {
    let mut base = Replica::default();
    apply(
        &mut base,
        SessionOp::Create {
            options: SessionOptions::default(),
            force: false,
        },
        Hlc::new(1, 0, "a"),
    )
    .unwrap();
    let start = plan(
        &base,
        &volumes(),
        &sid(),
        &SessionOp::Start { force: false },
        Hlc::new(5, 0, "a"),
        0,
    )
    .unwrap();
    // same millisecond on another node: the node id breaks the tie
    let stop = plan(
        &base,
        &volumes(),
        &sid(),
        &SessionOp::Stop { force: true },
        Hlc::new(5, 0, "b"),
        0,
    )
    .unwrap();
    let mut x = base.clone();
    x.join_record(&start);
    x.join_record(&stop);
    let mut y = base;
    y.join_record(&stop);
    y.join_record(&start);
    assert_eq!(x, y);
    assert_eq!(x.view(&sid()).unwrap().desired, DesiredState::Stopped);
}

fn create(force: bool, push_pem: bool) -> SessionOp {
    SessionOp::Create {
        options: SessionOptions {
            push_pem,
            ..SessionOptions::default()
        },
        force,
    }
}

#[test]
#[allow(clippy::result_large_err)] // mirrors `plan`'s error type
fn create_verifies_the_secondary_and_force_overrides_what_it_may() {
    let replica = Replica::default();
    let try_with = |volumes: &Volumes, force: bool| {
        plan(
            &replica,
            volumes,
            &sid(),
            &create(force, false),
            Hlc::new(1, 0, "n1"),
            0,
        )
    };
    let cases: Vec<(Volumes, &str)> = vec![
        (
            Volumes {
                hosts: vec![],
                ..volumes()
            },
            "secondary host n4 is not a live node",
        ),
        (
            Volumes {
                live: vec!["gv0"],
                ..volumes()
            },
            "secondary volume gv1 is not hosted by any live node",
        ),
        (
            Volumes {
                without_user: vec!["n5".into()],
                ..volumes()
            },
            "user root does not exist on secondary node(s) n5",
        ),
        (
            Volumes {
                sizes: [("gv0", Ok(20 << 30)), ("gv1", Ok(9_800 << 20))].into(),
                ..volumes()
            },
            "secondary gv1 has 9.6 GiB, primary gv0 needs 20.0 GiB",
        ),
        (
            Volumes {
                sizes: [("gv1", Err("no reachable brick".to_string()))].into(),
                ..volumes()
            },
            "cannot verify the size of gv1: no reachable brick",
        ),
        (
            Volumes {
                full: vec!["gv1"],
                ..volumes()
            },
            "secondary volume gv1 is not empty (n4:/b/gv1)",
        ),
    ];
    for (volumes, expected) in cases {
        let refusal = try_with(&volumes, false).unwrap_err().to_string();
        assert!(refusal.contains(expected), "{refusal}");
        assert!(refusal.contains("use --force"), "{refusal}");
        assert!(
            try_with(&volumes, true).is_ok(),
            "--force overrides: {expected}"
        );
    }
    // Equal sizes pass; no primary bricks anywhere is refused even with --force.
    let equal = Volumes {
        sizes: [("gv0", Ok(5 << 30)), ("gv1", Ok(5 << 30))].into(),
        ..volumes()
    };
    assert!(try_with(&equal, false).is_ok());
    let no_primary = Volumes {
        bricks: vec!["gv1"],
        ..volumes()
    };
    assert!(matches!(
        try_with(&no_primary, true),
        Err(StateError::PrimaryVolumeUnknown { .. })
    ));
}

#[test]
fn a_second_session_to_the_same_secondary_volume_is_refused_even_with_force() {
    let mut replica = Replica::default();
    apply(&mut replica, create(false, false), Hlc::new(1, 0, "n1")).unwrap();
    let other = SessionId::parse("gv2", "n4::gv1").unwrap();
    let v = Volumes {
        bricks: vec!["gv0", "gv1", "gv2"],
        ..volumes()
    };
    let refusal = plan(
        &replica,
        &v,
        &other,
        &create(true, false),
        Hlc::new(2, 0, "n1"),
        0,
    )
    .unwrap_err();
    assert!(
        matches!(refusal, StateError::SecondaryVolumeTaken { .. }),
        "{refusal}"
    );
    assert!(
        refusal.to_string().contains("--force does not override"),
        "{refusal}"
    );
}

#[test]
fn create_push_pem_force_on_an_existing_session_rotates_its_keys() {
    let mut replica = Replica::default();
    apply(&mut replica, create(false, true), Hlc::new(1, 0, "n1")).unwrap();
    assert!(matches!(
        apply(&mut replica, create(false, true), Hlc::new(2, 0, "n1")),
        Err(StateError::AlreadyExists(_))
    ));
    apply(&mut replica, create(true, true), Hlc::new(3, 0, "n2")).unwrap();
    let record = &replica.sessions[&sid()];
    let view = record.view();
    assert_eq!(view.key_rotation, Some(Hlc::new(3, 0, "n2")));
    // The monitor restarts for new keys.
    assert_eq!(view.restart_stamp(record), Some(Hlc::new(3, 0, "n2")));
    // The rotation belongs to its incarnation: delete and create again forget it.
    apply(
        &mut replica,
        SessionOp::Delete {
            force: true,
            reset_sync_time: false,
        },
        Hlc::new(4, 0, "n1"),
    )
    .unwrap();
    apply(&mut replica, create(false, true), Hlc::new(5, 0, "n1")).unwrap();
    assert_eq!(replica.sessions[&sid()].view().key_rotation, None);
    // Without push-pem there is nothing to rotate.
    let mut plain = Replica::default();
    apply(&mut plain, create(false, false), Hlc::new(1, 0, "n1")).unwrap();
    assert!(matches!(
        apply(&mut plain, create(true, true), Hlc::new(2, 0, "n1")),
        Err(StateError::NoKeysToRotate(_))
    ));
}
