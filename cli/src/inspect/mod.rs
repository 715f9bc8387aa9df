//! `inspect`: gossip-state inspection through the local agent's `/v1/inspect/...`
//! routes (members, sessions, keys, explain, diff, watch), and `inspect offline`, which
//! decodes a stopped agent's data directory without any agent.
//!
//! `--json` prints the agent's answer as it came (the types of
//! `georep_api::inspect`); `watch --json` prints one such object per refresh.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use georep_api::inspect::{
    Convergence, ConvergenceCell, DiffResponse, ExplainResponse, KeysResponse, MemberRow,
    MemberStatus, MembersResponse, OfflineRecord, OfflineResponse, RegisterValue, SessionInspect,
    SessionsResponse,
};
use georep_mesh::WritePosition;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::args::{
    Globals, InspectCommand, InspectDiffArgs, InspectExplainArgs, InspectKeysArgs,
    InspectOfflineArgs, InspectSessionsArgs, InspectWatchArgs,
};
use crate::client::{decode, with_query};
use crate::lifecycle::{check_volume, parse_session};
use crate::output::{CommandError, Exit, NA, Report, Table, compact_duration, json_line, list};

/// ANSI: cursor home, clear screen (redraws `watch` in place on a terminal).
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// Why `members` shows no phi.
pub const PHI_NOTE: &str = "phi is not shown: chitchat 0.11 keeps its failure detector private; STATUS is its verdict, LAST HEARD its input.";

/// `inspect ...`.
pub async fn inspect(g: &Globals, command: &InspectCommand) -> Report {
    match command {
        InspectCommand::Members => members(g).await,
        InspectCommand::Sessions(a) => sessions(g, a).await,
        InspectCommand::Keys(a) => keys(g, a).await,
        InspectCommand::Explain(a) => explain(g, a).await,
        InspectCommand::Diff(a) => diff(g, a).await,
        InspectCommand::Watch(a) => watch(g, a).await,
        InspectCommand::Offline(a) => offline(g, a),
    }
}

async fn fetch<T: DeserializeOwned>(g: &Globals, path: &str) -> Result<(T, Value), CommandError> {
    let raw = g.client().get(path).await?;
    Ok((decode::<T>(&raw)?, raw))
}

/// The raw answer with `--json`, else `render` of the typed one.
fn answer<T>(
    g: &Globals,
    fetched: Result<(T, Value), CommandError>,
    session: Option<&str>,
    render: impl FnOnce(&T) -> String,
) -> Report {
    match fetched {
        Ok((_, raw)) if g.json => Report::json(Exit::Done, &raw),
        Ok((typed, _)) => {
            let mut report = Report::new(Exit::Done);
            report.stdout = render(&typed);
            report
        }
        Err(e) => e.report(g.json, session),
    }
}

async fn members(g: &Globals) -> Report {
    let fetched = fetch::<MembersResponse>(g, "/v1/inspect/members").await;
    answer(g, fetched, None, render_members)
}

async fn sessions(g: &Globals, a: &InspectSessionsArgs) -> Report {
    let id = match (&a.primary, &a.secondary) {
        (Some(p), Some(s)) => match parse_session(p, s) {
            Ok(id) => Some(id),
            Err(e) => return e.report(g.json, None),
        },
        (Some(p), None) => match check_volume(p) {
            Ok(()) => None,
            Err(e) => return e.report(g.json, None),
        },
        _ => None,
    };
    let secondary = id.as_ref().map(|id| id.secondary());
    let path = with_query(
        "/v1/inspect/sessions",
        &[
            ("primary", a.primary.as_deref()),
            ("secondary", secondary.as_deref()),
        ],
    );
    let session = id.as_ref().map(ToString::to_string);
    let fetched = fetch::<SessionsResponse>(g, &path).await;
    answer(g, fetched, session.as_deref(), render_sessions)
}

async fn keys(g: &Globals, a: &InspectKeysArgs) -> Report {
    let path = with_query(
        "/v1/inspect/keys",
        &[("node", Some(&a.node)), ("prefix", a.prefix.as_deref())],
    );
    let fetched = fetch::<KeysResponse>(g, &path).await;
    answer(g, fetched, None, |resp| render_keys(resp, a.raw))
}

async fn explain(g: &Globals, a: &InspectExplainArgs) -> Report {
    let id = match parse_session(&a.session.primary, &a.session.secondary) {
        Ok(id) => id,
        Err(e) => return e.report(g.json, None),
    };
    let secondary = id.secondary();
    let path = with_query(
        "/v1/inspect/explain",
        &[
            ("primary", Some(&id.primary_volume)),
            ("secondary", Some(&secondary)),
            ("node", a.node.as_deref()),
        ],
    );
    let fetched = fetch::<ExplainResponse>(g, &path).await;
    answer(g, fetched, Some(&id.to_string()), render_explain)
}

async fn diff(g: &Globals, a: &InspectDiffArgs) -> Report {
    let path = with_query("/v1/inspect/diff", &[("a", Some(&a.a)), ("b", Some(&a.b))]);
    let fetched = fetch::<DiffResponse>(g, &path).await;
    answer(g, fetched, None, render_diff)
}

/// `inspect watch`: frames are written as they come (this command streams, so its
/// [`Report`] only carries the exit and a final error, if any).
async fn watch(g: &Globals, a: &InspectWatchArgs) -> Report {
    let terminal = std::io::stdout().is_terminal();
    let mut frame = 0u64;
    loop {
        frame += 1;
        let fetched = async {
            let (members, members_raw) = fetch::<MembersResponse>(g, "/v1/inspect/members").await?;
            let (sessions, sessions_raw) =
                fetch::<SessionsResponse>(g, "/v1/inspect/sessions").await?;
            Ok::<_, CommandError>((members, members_raw, sessions, sessions_raw))
        }
        .await;
        let (members, members_raw, sessions, sessions_raw) = match fetched {
            Ok(fetched) => fetched,
            Err(e) => return e.report(g.json, None),
        };
        let text = if g.json {
            let line = json!({
                "frame": frame,
                "members": members_raw["members"],
                "sessions": sessions_raw["sessions"],
            });
            format!("{}\n", json_line(&line))
        } else {
            let body = render_watch_frame(&members, &sessions, frame, a.interval);
            if terminal {
                format!("{CLEAR_SCREEN}{body}")
            } else if frame > 1 {
                format!("\n{body}")
            } else {
                body
            }
        };
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`watch | head`) ends the watch quietly.
        if stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Report::new(Exit::Done);
        }
        drop(stdout);
        if a.count.is_some_and(|count| frame >= count) {
            return Report::new(Exit::Done);
        }
        tokio::time::sleep(Duration::from_millis(a.interval)).await;
    }
}

fn offline(g: &Globals, a: &InspectOfflineArgs) -> Report {
    let resp = georep_store::offline(&a.data_dir);
    let exit = if resp.ok { Exit::Done } else { Exit::Failed };
    let mut report = if g.json {
        Report::json(exit, &resp)
    } else {
        let mut report = Report::new(exit);
        report.stdout = render_offline(&resp);
        report
    };
    if let Some(error) = &resp.error {
        report.err(format!("georep: {}: {error}", resp.state_file));
    }
    report
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_owned()
}

fn heard(ms: Option<u64>) -> String {
    ms.map(|ms| format!("{} ago", compact_duration(ms)))
        .unwrap_or_else(|| NA.to_owned())
}

/// `v5`, with the generation when asked.
fn position(p: &WritePosition, with_generation: bool) -> String {
    if with_generation {
        format!("v{} (generation {})", p.version, p.generation)
    } else {
        format!("v{}", p.version)
    }
}

fn status_word(status: MemberStatus) -> &'static str {
    match status {
        MemberStatus::Live => "live",
        MemberStatus::Dead => "dead",
        MemberStatus::ScheduledForDeletion => "scheduled-for-deletion",
    }
}

fn member_cells(m: &MemberRow) -> Vec<String> {
    let seen = if m.seen.is_empty() {
        "-".to_owned()
    } else {
        m.seen
            .iter()
            .map(|(origin, p)| format!("{origin}:{}", position(p, false)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    vec![
        if m.is_self {
            format!("{}*", m.node)
        } else {
            m.node.clone()
        },
        status_word(m.status).to_owned(),
        m.generation.to_string(),
        m.gossip_addr.clone(),
        m.heartbeat.to_string(),
        heard(m.last_heard_ms),
        m.agent_version.clone().unwrap_or_else(|| NA.to_owned()),
        m.key_count.to_string(),
        m.max_version.to_string(),
        seen,
    ]
}

/// The human form of `inspect members`.
pub fn render_members(resp: &MembersResponse) -> String {
    let mut table = Table::new(&[
        "NODE",
        "STATUS",
        "GENERATION",
        "GOSSIP ADDR",
        "HEARTBEAT",
        "LAST HEARD",
        "VERSION",
        "KEYS",
        "MAX VERSION",
        "SEEN (origin:version)",
    ]);
    for member in &resp.members {
        table.push(member_cells(member));
    }
    let mut out = table.render();
    out.push_str("* the node answering. ");
    out.push_str(PHI_NOTE);
    out.push('\n');
    out
}

/// A register's value for humans.
pub fn value_text(register: &str, value: &Value) -> String {
    match (register, value) {
        ("created", Value::Object(options)) => format!(
            "push-pem: {}, forced: {}",
            yes_no(options.get("push_pem") == Some(&Value::Bool(true))),
            yes_no(options.get("forced") == Some(&Value::Bool(true)))
        ),
        ("deleted", Value::Null) => "-".to_owned(),
        (_, Value::Null) => "(reset to default)".to_owned(),
        (_, Value::String(text)) => text.clone(),
        (_, other) => other.to_string(),
    }
}

fn registers_table(registers: &[RegisterValue]) -> String {
    let mut table = Table::new(&["REGISTER", "VALUE", "STAMP", "WRITER"]);
    for r in registers {
        table.push(vec![
            r.register.clone(),
            value_text(&r.register, &r.value),
            r.stamp.clone(),
            r.writer.clone(),
        ]);
    }
    table.render()
}

fn session_state(exists: bool, desired: &str) -> String {
    if exists {
        format!("exists, desired {desired}")
    } else {
        format!("deleted (last desired {desired})")
    }
}

/// A matrix cell: `merged`, `lagging (has v3, needs v5)`, `dead`.
fn cell_text(cell: &ConvergenceCell, session: &SessionInspect) -> String {
    match cell.state {
        Convergence::Merged => "merged".to_owned(),
        Convergence::Dead if cell.merged => "dead (had merged)".to_owned(),
        Convergence::Dead => "dead".to_owned(),
        Convergence::Lagging => match &session.latest_write {
            Some(w) => format!(
                "lagging (has {}, needs v{})",
                cell.seen
                    .as_ref()
                    .map(|s| position(s, s.generation != w.generation))
                    .unwrap_or_else(|| "nothing".into()),
                w.version
            ),
            None => "lagging".to_owned(),
        },
    }
}

/// The human form of `inspect sessions`: per session its registers and latest write,
/// then the node × session convergence matrix.
pub fn render_sessions(resp: &SessionsResponse) -> String {
    if resp.sessions.is_empty() {
        return format!("No geo-replication sessions known to {}\n", resp.local_node);
    }
    let mut out = String::new();
    for session in &resp.sessions {
        out.push_str(&format!(
            "{}: {}  (key {})\n",
            session.session,
            session_state(session.exists, &session.desired_state),
            session.key
        ));
        let mut table = Table::new(&["REGISTER", "VALUE", "STAMP", "WRITER", "CARRIED BY"]);
        for r in &session.registers {
            table.push(vec![
                r.register.clone(),
                value_text(&r.register, &r.value),
                r.stamp.clone(),
                r.writer.clone(),
                list(&r.carried_by),
            ]);
        }
        out.push_str(&table.render());
        match &session.latest_write {
            Some(w) => out.push_str(&format!(
                "latest write: {}, v{} of {} (generation {}); merged by {}; lagging: {}; dead: {}\n\n",
                w.stamp,
                w.version,
                w.origin,
                w.generation,
                list(&session.converged_nodes),
                list(&session.lagging_nodes),
                list(&session.dead_nodes)
            )),
            None => out.push_str("latest write: none gossiped here yet\n\n"),
        }
    }
    out.push_str(&format!(
        "convergence (node x session, as {} knows it):\n",
        resp.local_node
    ));
    out.push_str(&matrix(&resp.sessions));
    out
}

fn matrix(sessions: &[SessionInspect]) -> String {
    let nodes: BTreeSet<&str> = sessions
        .iter()
        .flat_map(|s| s.nodes.iter().map(|c| c.node.as_str()))
        .collect();
    let mut headers = vec!["NODE".to_owned()];
    headers.extend(sessions.iter().map(|s| s.session.clone()));
    let mut table = Table::new(&headers);
    for node in nodes {
        let mut row = vec![node.to_owned()];
        for session in sessions {
            row.push(
                session
                    .nodes
                    .iter()
                    .find(|c| c.node == node)
                    .map(|c| cell_text(c, session))
                    .unwrap_or_else(|| NA.to_owned()),
            );
        }
        table.push(row);
    }
    table.render()
}

/// The human form of `inspect keys`.
pub fn render_keys(resp: &KeysResponse, raw: bool) -> String {
    let mut out = format!(
        "Keys of {} (generation {}) as held by {}{}:\n",
        resp.node,
        resp.generation,
        resp.held_by,
        resp.prefix
            .as_ref()
            .map(|p| format!(", prefix `{p}`"))
            .unwrap_or_default()
    );
    let mut table = Table::new(&["KEY", "KIND", "VERSION", "SIZE", "DELETED", "VALUE"]);
    for key in &resp.keys {
        let value = if raw {
            key.raw.clone()
        } else {
            match (&key.decoded, &key.decode_error) {
                (Some(value), _) => value.to_string(),
                (None, Some(error)) => format!("<{error}>"),
                (None, None) => "-".to_owned(),
            }
        };
        table.push(vec![
            key.key.clone(),
            key.kind.clone(),
            key.version.to_string(),
            key.size.to_string(),
            yes_no(key.deleted),
            value,
        ]);
    }
    out.push_str(&table.render());
    out
}

/// The human form of `inspect explain`.
pub fn render_explain(resp: &ExplainResponse) -> String {
    let mut out = format!(
        "{} on {}: {}\n{}\n\n",
        resp.session,
        resp.node,
        resp.reason.code(),
        resp.message
    );
    for sentence in &resp.sentences {
        out.push_str(&format!("  - {sentence}\n"));
    }
    if resp.local_node != resp.node {
        out.push_str(&format!(
            "(as {} knows {}: what {} last published and gossiped)\n",
            resp.local_node, resp.node, resp.node
        ));
    }
    out
}

/// The human form of `inspect diff`.
pub fn render_diff(resp: &DiffResponse) -> String {
    let mut out = format!(
        "{} vs {}, by their published frontiers as {} knows them:\n{}\n",
        resp.a, resp.b, resp.local_node, resp.message
    );
    if !resp.writes.is_empty() {
        out.push_str("\nsession writes merged by one side only:\n");
        let mut table = Table::new(&[
            "ORIGIN".to_owned(),
            "KEY".to_owned(),
            "VERSION".to_owned(),
            resp.a.to_uppercase(),
            resp.b.to_uppercase(),
            "REGISTERS IN THAT WRITE".to_owned(),
        ]);
        for w in &resp.writes {
            let registers = w
                .registers
                .iter()
                .map(|r| {
                    format!(
                        "{}={} @{}",
                        r.register,
                        value_text(&r.register, &r.value),
                        r.stamp
                    )
                })
                .collect::<Vec<_>>();
            table.push(vec![
                w.origin.clone(),
                w.key.clone(),
                format!("v{} (generation {})", w.version, w.generation),
                merged_word(w.merged_by_a),
                merged_word(w.merged_by_b),
                if registers.is_empty() {
                    "<undecodable>".to_owned()
                } else {
                    registers.join("; ")
                },
            ]);
        }
        out.push_str(&table.render());
    }
    if !resp.seen.is_empty() {
        out.push_str("\nseen (frontier) entries that differ:\n");
        let mut table = Table::new(&[
            "ORIGIN".to_owned(),
            resp.a.to_uppercase(),
            resp.b.to_uppercase(),
        ]);
        let text = |p: &Option<WritePosition>| {
            p.as_ref()
                .map(|p| position(p, true))
                .unwrap_or_else(|| "-".to_owned())
        };
        for s in &resp.seen {
            table.push(vec![s.origin.clone(), text(&s.a), text(&s.b)]);
        }
        out.push_str(&table.render());
    }
    out
}

fn merged_word(merged: bool) -> String {
    if merged { "merged" } else { "missing" }.to_owned()
}

/// One frame of `inspect watch`: the members table and a line per session.
pub fn render_watch_frame(
    members: &MembersResponse,
    sessions: &SessionsResponse,
    frame: u64,
    interval_ms: u64,
) -> String {
    let live = members.members.iter().filter(|m| m.live).count();
    let mut out = format!(
        "georep inspect watch on {}: {} member(s) ({live} live), {} session(s)  [refresh #{frame}, every {}]\n\n",
        sessions.local_node,
        members.members.len(),
        sessions.sessions.len(),
        compact_duration(interval_ms)
    );
    out.push_str(&render_members(members));
    out.push('\n');
    if sessions.sessions.is_empty() {
        out.push_str("No geo-replication sessions.\n");
        return out;
    }
    let mut table = Table::new(&[
        "SESSION",
        "STATE",
        "LATEST WRITE",
        "MERGED",
        "LAGGING",
        "DEAD",
    ]);
    for s in &sessions.sessions {
        let live_total = s.converged_nodes.len() + s.lagging_nodes.len();
        table.push(vec![
            s.session.clone(),
            session_state(s.exists, &s.desired_state),
            s.latest_write
                .as_ref()
                .map(|w| format!("{} (v{} of {})", w.stamp, w.version, w.origin))
                .unwrap_or_else(|| NA.to_owned()),
            format!("{}/{live_total}", s.converged_nodes.len()),
            list(&s.lagging_nodes),
            list(&s.dead_nodes),
        ]);
    }
    out.push_str(&table.render());
    out.push('\n');
    out.push_str(&matrix(&sessions.sessions));
    out
}

fn records_text(title: &str, records: &[OfflineRecord]) -> String {
    let mut out = format!("{title} ({}):\n", records.len());
    for record in records {
        match (record.exists, &record.desired_state) {
            (Some(exists), Some(desired)) => out.push_str(&format!(
                "  {}: {}\n",
                record.session,
                session_state(exists, desired)
            )),
            _ => out.push_str(&format!("  {}\n", record.session)),
        }
        for line in registers_table(&record.registers).lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

/// The human form of `inspect offline`.
pub fn render_offline(resp: &OfflineResponse) -> String {
    let mut out = format!(
        "data directory {}\nstate file {} ({})\n",
        resp.data_dir,
        resp.state_file,
        resp.file_size
            .map(|n| format!("{n} bytes"))
            .unwrap_or_else(|| "missing".to_owned())
    );
    if let Some(error) = &resp.error {
        out.push_str(&format!("ERROR: {error}\n"));
    }
    out.push_str(&format!("{}\n", resp.message));
    if let Some(header) = &resp.envelope {
        out.push_str(&format!(
            "envelope: magic {} ({}), format version {}, payload {} bytes claimed, {} held\n",
            header.magic,
            if header.magic_ok { "GRPS" } else { "not GRPS" },
            header.format_version,
            header.payload_len,
            header.payload_held
        ));
    }
    out.push_str(&format!(
        "node {}, generation {}, HLC {}\n\n",
        resp.node_id.as_deref().unwrap_or("unknown"),
        resp.generation
            .map(|g| g.to_string())
            .unwrap_or_else(|| "unknown".to_owned()),
        resp.hlc_last.as_deref().unwrap_or("unknown")
    ));
    out.push_str(&records_text(
        "own records (partial: the registers this node wrote or keeps alive)",
        &resp.own_records,
    ));
    out.push('\n');
    out.push_str(&records_text("replica sessions", &resp.replica));
    out.push('\n');
    if resp.session_dirs.is_empty() {
        out.push_str("no session directories under geo-replication/\n");
    } else {
        out.push_str("session directories:\n");
        let mut table = Table::new(&["NAME", "MONITOR STATUS", "MONITOR PID", "PID RUNNING"]);
        for dir in &resp.session_dirs {
            table.push(vec![
                dir.name.clone(),
                dir.monitor_status.clone().unwrap_or_else(|| NA.to_owned()),
                match (&dir.monitor_pid, &dir.pid_file_error) {
                    (Some(pid), _) => pid.to_string(),
                    (None, Some(error)) => error.clone(),
                    (None, None) => "-".to_owned(),
                },
                dir.pid_running
                    .map(yes_no)
                    .unwrap_or_else(|| "-".to_owned()),
            ]);
        }
        out.push_str(&table.render());
    }
    out
}

#[cfg(test)]
mod tests;
