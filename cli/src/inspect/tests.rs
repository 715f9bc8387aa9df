//! Unit tests of `inspect`.
use georep_api::inspect::{Carrier, ExplainReason, LatestWrite, RegisterRow, SeenDiff, WriteDiff};

use super::*;

fn member_row(node: &str, status: MemberStatus) -> MemberRow {
    MemberRow {
        node: node.into(),
        is_self: node == "n1",
        live: status == MemberStatus::Live,
        generation: 17,
        gossip_addr: "127.0.0.1:7401".into(),
        status,
        heartbeat: 42,
        last_heard_ms: Some(1500),
        agent_version: Some("0.1.0".into()),
        key_count: 4,
        max_version: 11,
        seen: [(
            "n2".to_string(),
            WritePosition {
                generation: 3,
                version: 9,
            },
        )]
        .into(),
    }
}

#[test]
fn members_table_shows_status_and_frontier() {
    let text = render_members(&MembersResponse {
        members: vec![
            member_row("n1", MemberStatus::Live),
            member_row("n5", MemberStatus::ScheduledForDeletion),
        ],
    });
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("NODE    STATUS"), "{text}");
    assert!(lines[2].starts_with("n1*     live "), "{text}");
    assert!(
        lines[2].contains("1s ago") && lines[2].ends_with("n2:v9"),
        "{text}"
    );
    assert!(lines[3].contains("scheduled-for-deletion"), "{text}");
    assert!(text.contains(PHI_NOTE));
}

#[test]
fn register_values_read_naturally() {
    assert_eq!(
        value_text("created", &json!({"push_pem": true, "forced": false})),
        "push-pem: yes, forced: no"
    );
    assert_eq!(value_text("deleted", &Value::Null), "-");
    assert_eq!(
        value_text("config.sync-jobs", &Value::Null),
        "(reset to default)"
    );
    assert_eq!(value_text("desired", &json!("Started")), "Started");
}

fn session_with(cells: Vec<ConvergenceCell>) -> SessionInspect {
    SessionInspect {
        session: "gv0 -> n4::gv1".into(),
        key: "s/gv0:root@n4::gv1".into(),
        primary_volume: "gv0".into(),
        secondary_user: "root".into(),
        secondary_host: "n4".into(),
        secondary_volume: "gv1".into(),
        exists: true,
        desired_state: "Started".into(),
        registers: vec![RegisterRow {
            register: "desired".into(),
            value: json!("Started"),
            stamp: "5.0@n2".into(),
            writer: "n2".into(),
            carried_by: vec!["n2".into()],
        }],
        latest_write: Some(LatestWrite {
            stamp: "5.0@n2".into(),
            origin: "n2".into(),
            generation: 3,
            version: 9,
            carriers: vec![Carrier {
                origin: "n2".into(),
                generation: 3,
                version: 9,
            }],
        }),
        nodes: cells,
        converged_nodes: vec!["n1".into()],
        lagging_nodes: vec!["n3".into()],
        dead_nodes: vec!["n5".into()],
    }
}

fn cell(node: &str, state: Convergence, seen: Option<u64>) -> ConvergenceCell {
    ConvergenceCell {
        node: node.into(),
        state,
        live: state != Convergence::Dead,
        merged: state == Convergence::Merged,
        seen: seen.map(|version| WritePosition {
            generation: 3,
            version,
        }),
    }
}

#[test]
fn sessions_show_registers_and_the_matrix() {
    let resp = SessionsResponse {
        local_node: "n1".into(),
        sessions: vec![session_with(vec![
            cell("n1", Convergence::Merged, Some(9)),
            cell("n3", Convergence::Lagging, Some(7)),
            cell("n5", Convergence::Dead, None),
        ])],
    };
    let text = render_sessions(&resp);
    assert!(
        text.starts_with("gv0 -> n4::gv1: exists, desired Started"),
        "{text}"
    );
    assert!(
        text.contains("desired     Started    5.0@n2    n2        n2"),
        "{text}"
    );
    assert!(
        text.contains("latest write: 5.0@n2, v9 of n2 (generation 3)"),
        "{text}"
    );
    let matrix: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("convergence"))
        .collect();
    assert_eq!(matrix[1], "NODE    gv0 -> n4::gv1");
    assert_eq!(matrix[3], "n1      merged");
    assert_eq!(matrix[4], "n3      lagging (has v7, needs v9)");
    assert_eq!(matrix[5], "n5      dead");
    let empty = SessionsResponse {
        local_node: "n1".into(),
        sessions: vec![],
    };
    assert_eq!(
        render_sessions(&empty),
        "No geo-replication sessions known to n1\n"
    );
}

#[test]
fn explain_and_diff_render_their_sentences() {
    let resp = ExplainResponse {
        ok: true,
        session: "gv0 -> n4::gv1".into(),
        node: "n4".into(),
        local_node: "n1".into(),
        reason: ExplainReason::NotPrimary,
        message: "n4 is not a primary node.".into(),
        sentences: vec!["first.".into(), "second.".into()],
        exists: true,
        desired_state: "Started".into(),
        desired_stamp: None,
        node_live: true,
        last_heard_ms: Some(3),
        primary_bricks: vec![],
        hosts_secondary: true,
        monitor: None,
        latest_write: None,
        node_seen: None,
        merged_latest_write: true,
    };
    let text = render_explain(&resp);
    assert!(
        text.starts_with("gv0 -> n4::gv1 on n4: not_primary\nn4 is not a primary node.\n\n  - first.\n  - second.\n"),
        "{text}"
    );
    assert!(text.contains("as n1 knows n4"), "{text}");

    let mut diff = DiffResponse {
        a: "n1".into(),
        b: "n4".into(),
        local_node: "n2".into(),
        differs: false,
        writes: vec![],
        seen: vec![],
        message: "no differences: n1 and n4 have merged the same session writes".into(),
    };
    assert_eq!(
        render_diff(&diff),
        "n1 vs n4, by their published frontiers as n2 knows them:\nno differences: n1 and n4 have merged the same session writes\n"
    );
    diff.differs = true;
    diff.writes.push(WriteDiff {
        origin: "n1".into(),
        key: "s/gv0:root@n4::gv1".into(),
        session: Some("gv0 -> n4::gv1".into()),
        generation: 3,
        version: 9,
        merged_by_a: true,
        merged_by_b: false,
        registers: vec![RegisterValue {
            register: "config.sync-jobs".into(),
            value: json!("9"),
            stamp: "7.0@n1".into(),
            writer: "n1".into(),
        }],
    });
    diff.seen.push(SeenDiff {
        origin: "n1".into(),
        a: Some(WritePosition {
            generation: 3,
            version: 9,
        }),
        b: None,
    });
    let text = render_diff(&diff);
    assert!(
        text.contains("merged    missing    config.sync-jobs=9 @7.0@n1"),
        "{text}"
    );
    assert!(text.contains("n1        v9 (generation 3)    -"), "{text}");
}
