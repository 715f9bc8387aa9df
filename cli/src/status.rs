//! `status` (gluster's table, one row per primary brick, under a line per
//! session with its desired state and convergence), `exists` and `running`.

use georep_api::WorkerStatus;
use georep_api::types::{
    ExistsResponse, GlusterHookRequest, GlusterHookResponse, SessionStatus, StatusResponse,
    WorkerRow,
};
use georep_mesh::{DEFAULT_SECONDARY_USER, SessionId, StateError};

use crate::args::{ExistsArgs, Globals, GlusterHookArgs, StatusArgs};
use crate::client::{decode, with_query};
use crate::lifecycle::{check_volume, parse_session};
use crate::output::{CommandError, Exit, NA, Report, Table, compact_duration, list};

/// gluster's status columns.
pub const COLUMNS: &[&str] = &[
    "PRIMARY NODE",
    "PRIMARY VOL",
    "PRIMARY BRICK",
    "SECONDARY USER",
    "SECONDARY",
    "SECONDARY NODE",
    "STATUS",
    "CRAWL STATUS",
    "LAST_SYNCED",
];

/// Columns `--detail` adds.
pub const DETAIL_COLUMNS: &[&str] = &[
    "ENTRY",
    "DATA",
    "META",
    "FAILURES",
    "CHECKPOINT TIME",
    "CHECKPOINT COMPLETED",
    "CHECKPOINT COMPLETION TIME",
];

/// Printed when no session is in scope.
pub const NO_SESSIONS: &str = "No active geo-replication sessions";

/// `status`.
pub async fn status(g: &Globals, a: &StatusArgs) -> Report {
    let id = match (&a.primary, &a.secondary) {
        (Some(primary), Some(secondary)) => match parse_session(primary, secondary) {
            Ok(id) => Some(id),
            Err(e) => return e.report(g.json, None),
        },
        (Some(primary), None) => match check_volume(primary) {
            Ok(()) => None,
            Err(e) => return e.report(g.json, None),
        },
        _ => None,
    };
    let secondary = id.as_ref().map(SessionId::secondary);
    let path = with_query(
        "/v1/status",
        &[
            ("primary", a.primary.as_deref()),
            ("secondary", secondary.as_deref()),
        ],
    );
    let session = id.as_ref().map(SessionId::to_string);
    let fetched = match g.client().get(&path).await {
        Ok(raw) => decode::<StatusResponse>(&raw).map(|resp| (resp, raw)),
        Err(e) => Err(e),
    };
    let (resp, raw) = match fetched {
        Ok(fetched) => fetched,
        Err(e) => return e.report(g.json, session.as_deref()),
    };
    if let Some(id) = &id
        && resp.sessions.is_empty()
    {
        // The agent answered "nothing" rather than refusing: same meaning.
        let missing = StateError::NotCreated(id.clone()).to_string();
        return CommandError::Failed(missing).report(g.json, session.as_deref());
    }
    if g.json {
        return Report::json(Exit::Done, &raw);
    }
    let mut report = Report::new(Exit::Done);
    report.stdout = render_status(&resp, a.detail);
    report
}

/// The human form of a status answer.
pub fn render_status(resp: &StatusResponse, detail: bool) -> String {
    if resp.sessions.is_empty() {
        return format!("{NO_SESSIONS}\n");
    }
    let mut out = String::new();
    for (i, session) in resp.sessions.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&session_line(session));
        out.push_str("\n\n");
        let mut headers: Vec<&str> = COLUMNS.to_vec();
        if detail {
            headers.extend(DETAIL_COLUMNS);
        }
        let mut table = Table::new(&headers);
        for worker in &session.workers {
            table.push(worker_cells(session, worker, detail));
        }
        out.push_str(&table.render());
        let errors: Vec<String> = session
            .workers
            .iter()
            .filter_map(|w| {
                w.last_error.as_ref().map(|e| {
                    format!(
                        "  {}:{}: {e} (monitor restarts: {})",
                        w.node, w.brick, w.restarts
                    )
                })
            })
            .collect();
        if !errors.is_empty() {
            out.push_str("monitor errors:\n");
            for line in errors {
                out.push_str(&line);
                out.push('\n');
            }
        }
        if detail && !session.secondary_keys.is_empty() {
            out.push_str(&keys_table(session));
        }
    }
    out
}

/// `--detail` of a push-pem session: the primaries' keys each secondary node installed.
fn keys_table(s: &SessionStatus) -> String {
    let mut table = Table::new(&["SECONDARY NODE", "KEYS", "AUTHORIZED_KEYS", "MISSING"]);
    for k in &s.secondary_keys {
        let missing = match &k.error {
            Some(error) => error.clone(),
            None => k
                .missing
                .iter()
                .map(|(node, why)| format!("{node}: {why}"))
                .collect::<Vec<_>>()
                .join("; "),
        };
        table.push(vec![
            if k.live {
                k.node.clone()
            } else {
                format!("{} (down)", k.node)
            },
            format!("{}/{}", k.keys_installed, k.keys_expected),
            if k.file.is_empty() {
                "-".into()
            } else {
                k.file.clone()
            },
            if missing.is_empty() {
                "-".into()
            } else {
                missing
            },
        ]);
    }
    format!("\npush-pem keys:\n{}", table.render())
}

/// `gv0 -> n4::gv1  desired: Started  converged: 4/5 live nodes (lagging: n3)  dead: n5`.
pub fn session_line(s: &SessionStatus) -> String {
    let secondary = if s.secondary_user == DEFAULT_SECONDARY_USER {
        format!("{}::{}", s.secondary_host, s.secondary_volume)
    } else {
        format!(
            "{}@{}::{}",
            s.secondary_user, s.secondary_host, s.secondary_volume
        )
    };
    let live = s.converged_nodes.len() + s.lagging_nodes.len();
    let mut line = format!(
        "{} -> {secondary}  desired: {}  converged: {}/{live} live nodes",
        s.primary_volume,
        s.desired_state,
        s.converged_nodes.len()
    );
    if !s.lagging_nodes.is_empty() {
        line.push_str(&format!(" (lagging: {})", list(&s.lagging_nodes)));
    }
    if !s.dead_nodes.is_empty() {
        line.push_str(&format!("  dead: {}", list(&s.dead_nodes)));
    }
    if let Some(winner) = &s.superseded_by {
        line.push_str(&format!(
            "\n  CONFLICT: {winner} replicates the same volumes and was created first; this session runs no monitor. Delete one of them."
        ));
    }
    line
}

fn worker_cells(s: &SessionStatus, w: &WorkerRow, detail: bool) -> Vec<String> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| NA.to_owned());
    let offline = w.status == WorkerStatus::Offline;
    let last_synced = match (offline, w.last_heard_ms, &w.last_synced) {
        (true, Some(ms), Some(synced)) => {
            format!("{synced} (last heard {} ago)", compact_duration(ms))
        }
        (true, Some(ms), None) => format!("last heard {} ago", compact_duration(ms)),
        _ => opt(&w.last_synced),
    };
    let mut cells = vec![
        w.node.clone(),
        s.primary_volume.clone(),
        w.brick.clone(),
        s.secondary_user.clone(),
        format!("{}::{}", s.secondary_host, s.secondary_volume),
        opt(&w.secondary_node),
        w.status.to_string(),
        w.crawl_status.to_string(),
        last_synced,
    ];
    if detail {
        let count = |n: u64| {
            if offline {
                NA.to_owned()
            } else {
                n.to_string()
            }
        };
        let completed = match (&w.checkpoint_time, w.checkpoint_completed) {
            (None, _) => NA.to_owned(),
            (Some(_), true) => "Yes".to_owned(),
            (Some(_), false) => "No".to_owned(),
        };
        cells.extend([
            count(w.entry),
            count(w.data),
            count(w.meta),
            count(w.failures),
            opt(&w.checkpoint_time),
            completed,
            opt(&w.checkpoint_completion_time),
        ]);
    }
    cells
}

/// `exists` (`running == false`) and `running`: exit 0 or 1, silent without `--json`.
pub async fn exists(g: &Globals, a: &ExistsArgs, running: bool) -> Report {
    let checked = match &a.secondary {
        Some(secondary) => parse_session(&a.volume, secondary).map(|id| Some(id.secondary())),
        None => check_volume(&a.volume).map(|()| None),
    };
    let secondary = match checked {
        Ok(secondary) => secondary,
        Err(e) => return e.report(g.json, None),
    };
    let path = with_query(
        "/v1/exists",
        &[
            ("volume", Some(&a.volume)),
            ("secondary", secondary.as_deref()),
        ],
    );
    let resp = match g.client().get(&path).await {
        Ok(raw) => decode::<ExistsResponse>(&raw),
        Err(e) => Err(e),
    };
    match resp {
        Ok(resp) => {
            let yes = if running { resp.running } else { resp.exists };
            let exit = if yes { Exit::Done } else { Exit::Failed };
            if g.json {
                Report::json(exit, &resp)
            } else {
                Report::new(exit)
            }
        }
        Err(e) => e.report(g.json, None),
    }
}

/// `gluster-hook OP --volname=VOL ...` (see the command's help).
pub async fn gluster_hook(g: &Globals, a: &GlusterHookArgs) -> Report {
    let volume = a.args.iter().find_map(|arg| arg.strip_prefix("--volname="));
    let Some(volume) = volume else {
        let mut report = Report::new(Exit::Usage);
        report.err(format!(
            "georep: gluster-hook: no --volname=VOL among the hook's arguments ({})",
            a.args.join(" ")
        ));
        return report;
    };
    let request = GlusterHookRequest {
        op: a.op.clone(),
        volume: volume.to_string(),
    };
    let answer: Result<(GlusterHookResponse, _), _> =
        g.client().post_waiting("/v1/gluster-hook", &request).await;
    match answer {
        Ok((resp, raw)) => {
            let exit = if resp.conflict {
                Exit::Failed
            } else {
                Exit::Done
            };
            if g.json {
                return Report::json(exit, &raw);
            }
            let mut report = Report::new(exit);
            if resp.conflict {
                report.err(format!("georep: {}", resp.message));
            }
            report
        }
        // No agent to ask: never in glusterd's way.
        Err(e @ (CommandError::NoAgent { .. } | CommandError::Unresponsive { .. })) => {
            let mut report = Report::new(Exit::Done);
            report.err(format!(
                "georep: gluster-hook: cannot check for geo-replication sessions: {}",
                e.message()
            ));
            report
        }
        Err(e) => e.report(g.json, None),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn worker(node: &str, brick: &str, status: &str) -> WorkerRow {
        WorkerRow {
            node: node.into(),
            brick: brick.into(),
            status: status.into(),
            crawl_status: "Changelog Crawl".into(),
            last_synced: Some("2024-05-01 10:00:00".into()),
            monitor_pid: Some(1234),
            secondary_node: Some("n4".into()),
            entry: 1,
            data: 2,
            meta: 3,
            failures: 0,
            checkpoint_time: None,
            checkpoint_completed: false,
            checkpoint_completion_time: None,
            last_heard_ms: None,
            restarts: 0,
            last_error: None,
        }
    }

    fn sample() -> StatusResponse {
        let mut offline = worker("n3", "/data/gv0/b3", "Offline");
        offline.last_synced = None;
        offline.secondary_node = None;
        offline.monitor_pid = None;
        offline.last_heard_ms = Some(42_000);
        StatusResponse {
            sessions: vec![SessionStatus {
                primary_volume: "gv0".into(),
                secondary_user: "root".into(),
                secondary_host: "n4".into(),
                secondary_volume: "gv1".into(),
                name: "gv0_n4_gv1".into(),
                desired_state: "Started".into(),
                converged_nodes: vec!["n1".into(), "n2".into(), "n4".into(), "n5".into()],
                lagging_nodes: vec!["n3".into()],
                dead_nodes: vec!["n6".into()],
                config: BTreeMap::new(),
                superseded_by: None,
                secondary_keys: Vec::new(),
                workers: vec![
                    worker("n1", "/data/gv0/b1", "Active"),
                    worker("n2", "/data/gv0/b2", "Passive"),
                    offline,
                ],
            }],
        }
    }

    #[test]
    fn status_table_has_gluster_columns() {
        let text = render_status(&sample(), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "gv0 -> n4::gv1  desired: Started  converged: 4/5 live nodes (lagging: n3)  dead: n6"
        );
        assert_eq!(lines[1], "");
        let header = lines[2];
        let mut at = 0;
        for column in COLUMNS {
            let found = header[at..]
                .find(column)
                .unwrap_or_else(|| panic!("{column} in {header}"));
            at += found + column.len();
        }
        for column in DETAIL_COLUMNS {
            assert!(!header.contains(column), "{column} without --detail");
        }
        assert!(lines[3].chars().all(|c| c == '-') && lines[3].len() >= header.len());
        // Columns are aligned: every cell of a column starts where its header does.
        let status_at = header.find("STATUS    ").unwrap();
        assert_eq!(&lines[4][status_at..status_at + 6], "Active");
        assert_eq!(&lines[5][status_at..status_at + 7], "Passive");
        assert!(lines[4].starts_with("n1    "));
        assert!(lines[4].contains("/data/gv0/b1"));
        assert!(lines[4].contains("n4::gv1"));
        let offline = lines[6];
        assert_eq!(&offline[status_at..status_at + 7], "Offline");
        assert!(offline.ends_with("last heard 42s ago"), "{offline}");
        assert!(offline.contains("N/A"), "{offline}");
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn detail_adds_columns() {
        let mut resp = sample();
        resp.sessions[0].workers[0].checkpoint_time = Some("2024-05-01 09:00:00".into());
        resp.sessions[0].workers[0].checkpoint_completed = true;
        resp.sessions[0].workers[0].checkpoint_completion_time = Some("2024-05-01 09:30:00".into());
        let text = render_status(&resp, true);
        let lines: Vec<&str> = text.lines().collect();
        let header = lines[2];
        for column in COLUMNS.iter().chain(DETAIL_COLUMNS) {
            assert!(header.contains(column), "{column} in {header}");
        }
        assert!(header.ends_with("CHECKPOINT COMPLETION TIME"));
        assert!(
            lines[4]
                .ends_with("2024-05-01 09:00:00    Yes                     2024-05-01 09:30:00"),
            "{}",
            lines[4]
        );
        let entry_at = header.find("ENTRY").unwrap();
        assert!(lines[4][entry_at..].starts_with("1 "));
        assert!(
            lines[6][entry_at..].starts_with("N/A"),
            "offline counts: {}",
            lines[6]
        );
        // No checkpoint: N/A under each checkpoint column.
        for column in &DETAIL_COLUMNS[4..] {
            let at = header.find(column).unwrap();
            assert!(lines[5][at..].starts_with("N/A"), "{column}: {}", lines[5]);
        }
    }

    #[test]
    fn no_sessions_and_monitor_errors() {
        assert_eq!(
            render_status(&StatusResponse { sessions: vec![] }, false),
            "No active geo-replication sessions\n"
        );
        let mut resp = sample();
        resp.sessions[0].workers[1].status = "Faulty".into();
        resp.sessions[0].workers[1].last_error = Some("exited with status 1".into());
        resp.sessions[0].workers[1].restarts = 3;
        resp.sessions[0].lagging_nodes.clear();
        resp.sessions[0].dead_nodes.clear();
        resp.sessions[0].secondary_user = "geo".into();
        let text = render_status(&resp, false);
        assert!(
            text.starts_with("gv0 -> geo@n4::gv1  desired: Started  converged: 4/4 live nodes\n"),
            "{text}"
        );
        assert!(
            text.contains("n2:/data/gv0/b2: exited with status 1 (monitor restarts: 3)"),
            "{text}"
        );
    }

    #[test]
    fn status_json_is_the_api_shape() {
        let v = serde_json::to_value(sample()).unwrap();
        let w = &v["sessions"][0]["workers"][0];
        for field in [
            "node",
            "brick",
            "status",
            "crawl_status",
            "last_synced",
            "monitor_pid",
            "secondary_node",
            "entry",
            "data",
            "meta",
            "failures",
        ] {
            assert!(w.get(field).is_some(), "{field}");
        }
        for field in [
            "primary_volume",
            "secondary_user",
            "secondary_host",
            "secondary_volume",
            "name",
            "desired_state",
            "converged_nodes",
            "lagging_nodes",
            "dead_nodes",
            "config",
            "workers",
        ] {
            assert!(v["sessions"][0].get(field).is_some(), "{field}");
        }
    }
}
