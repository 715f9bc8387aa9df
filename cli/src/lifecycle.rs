//! `create`, `start`, `stop`, `pause`, `resume`, `delete`: one `POST /v1/op`
//! each, reported the way gluster does ("Starting geo-replication session
//! between gv0 & n4::gv1 has been successful") plus which nodes confirmed.
//! Also the local session-name validation and op rendering `config` reuses.

use georep_api::types::OpResponse;
use georep_mesh::{SessionId, SessionOp, SessionOptions, StateError};
use serde_json::Value;

use crate::args::{CreateArgs, DeleteArgs, Globals, RunStateArgs, SessionArgs};
use crate::output::{CommandError, Exit, Report, list};

/// Which run-state change `start`/`stop`/`pause`/`resume` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// `start`.
    Start,
    /// `stop`.
    Stop,
    /// `pause`.
    Pause,
    /// `resume`.
    Resume,
}

/// Parses the session locally; a bad name is a usage error (exit 2).
pub fn parse_session(primary: &str, secondary: &str) -> Result<SessionId, CommandError> {
    SessionId::parse(primary, secondary).map_err(|e| CommandError::Usage(e.to_string()))
}

/// Checks a lone volume name with the session-name rules (exit 2 if bad).
pub fn check_volume(volume: &str) -> Result<(), CommandError> {
    // Any well-formed secondary will do: only the volume is in question.
    match SessionId::parse(volume, "host::volume") {
        Ok(_) => Ok(()),
        Err(StateError::BadSessionName { reason, .. }) => Err(CommandError::Usage(format!(
            "invalid volume name `{volume}`: {reason}"
        ))),
        Err(other) => Err(CommandError::Usage(other.to_string())),
    }
}

/// `gv0 & n4::gv1`, as gluster names a session in its messages.
pub fn between(id: &SessionId) -> String {
    format!("{} & {}", id.primary_volume, id.secondary())
}

/// `create`.
pub async fn create(g: &Globals, a: &CreateArgs) -> Report {
    let op = SessionOp::Create {
        options: SessionOptions {
            push_pem: a.push_pem,
            forced: a.force,
        },
        force: a.force,
    };
    apply(g, &a.session, op, a.no_wait, "Creating").await
}

/// `start`, `stop`, `pause`, `resume`.
pub async fn run_state(g: &Globals, state: RunState, a: &RunStateArgs) -> Report {
    let force = a.force;
    let (op, verb) = match state {
        RunState::Start => (SessionOp::Start { force }, "Starting"),
        RunState::Stop => (SessionOp::Stop { force }, "Stopping"),
        RunState::Pause => (SessionOp::Pause { force }, "Pausing"),
        RunState::Resume => (SessionOp::Resume { force }, "Resuming"),
    };
    apply(g, &a.session, op, a.no_wait, verb).await
}

/// `delete`.
pub async fn delete(g: &Globals, a: &DeleteArgs) -> Report {
    let op = SessionOp::Delete {
        force: a.force,
        reset_sync_time: a.reset_sync_time,
    };
    apply(g, &a.session, op, a.no_wait, "Deleting").await
}

/// Validates the session, sends `op`, and renders the answer as `verb`ing
/// the session.
async fn apply(
    g: &Globals,
    session: &SessionArgs,
    op: SessionOp,
    no_wait: bool,
    verb: &str,
) -> Report {
    match parse_session(&session.primary, &session.secondary) {
        Err(e) => e.report(g.json, None),
        Ok(id) => {
            let doing = format!("{verb} geo-replication session between {}", between(&id));
            send(g, &id, op, no_wait, &doing).await
        }
    }
}

/// Sends `op` on `id` and renders the answer; `doing` is the gluster-style
/// subject ("Starting geo-replication session between gv0 & n4::gv1").
pub async fn send(
    g: &Globals,
    id: &SessionId,
    op: SessionOp,
    no_wait: bool,
    doing: &str,
) -> Report {
    let session = id.to_string();
    match g
        .client()
        .op(&id.primary_volume, &id.secondary(), op, !no_wait)
        .await
    {
        Ok((resp, raw)) => render_op(&resp, &raw, doing, g.json, g.timeout.as_secs()),
        Err(e) => e.report(g.json, Some(&session)),
    }
}

/// The exit code an [`OpResponse`] stands for.
pub fn op_exit(resp: &OpResponse) -> Exit {
    if !resp.ok {
        Exit::Failed
    } else if resp.waited && !resp.converged {
        Exit::NotConverged
    } else {
        Exit::Done
    }
}

/// Renders an op's answer; `raw` is printed as is with `--json`.
pub fn render_op(
    resp: &OpResponse,
    raw: &Value,
    doing: &str,
    json: bool,
    timeout_secs: u64,
) -> Report {
    let exit = op_exit(resp);
    let mut report = if json {
        Report::json(exit, raw)
    } else {
        Report::new(exit)
    };
    match exit {
        Exit::Failed => {
            report.err(&resp.message);
            return report;
        }
        Exit::NotConverged => {
            let mut pending = Vec::new();
            if !resp.lagging_nodes.is_empty() {
                pending.push(format!("lagging nodes: {}", list(&resp.lagging_nodes)));
            }
            if !resp.pending_monitors.is_empty() {
                pending.push(format!(
                    "monitors pending on: {}",
                    list(&resp.pending_monitors)
                ));
            }
            if !resp.pending_keys.is_empty() {
                pending.push(format!(
                    "push-pem keys not yet installed on: {}",
                    list(&resp.pending_keys)
                ));
            }
            if pending.is_empty() {
                pending.push("some live nodes did not answer".to_owned());
            }
            report.err(format!(
                "georep: {}: not confirmed by every live node within {timeout_secs}s ({}). The change is recorded and will still propagate; follow it with `georep status`.",
                resp.session,
                pending.join("; ")
            ));
        }
        _ => {}
    }
    if json {
        return report;
    }
    match exit {
        Exit::NotConverged => {
            report.out(format!(
                "{doing}: applied locally, not yet confirmed by every live node"
            ));
            report.out(confirmed_line(resp));
        }
        _ if !resp.waited => report.out(format!(
            "{doing}: applied locally; propagating to the other nodes (not waited for, see `georep status`)"
        )),
        _ => {
            report.out(format!("{doing} has been successful"));
            report.out(confirmed_line(resp));
        }
    }
    if !resp.dead_nodes.is_empty() {
        report.out(format!(
            "dead nodes (will catch up when they return): {}",
            list(&resp.dead_nodes)
        ));
    }
    report
}

/// `confirmed by: n1, n2, n3 (3/3 live nodes)`.
fn confirmed_line(resp: &OpResponse) -> String {
    let mut live: Vec<&String> = resp
        .confirmed_nodes
        .iter()
        .chain(&resp.lagging_nodes)
        .chain(&resp.pending_monitors)
        .collect();
    live.sort();
    live.dedup();
    format!(
        "confirmed by: {} ({}/{} live nodes)",
        list(&resp.confirmed_nodes),
        resp.confirmed_nodes.len(),
        live.len()
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::Cli;

    fn op_response(converged: bool, waited: bool) -> OpResponse {
        OpResponse {
            ok: true,
            session: "gv0 -> n4::gv1".into(),
            message: "started".into(),
            confirmed_nodes: vec!["n1".into(), "n2".into()],
            dead_nodes: vec!["n5".into()],
            lagging_nodes: if converged { vec![] } else { vec!["n3".into()] },
            pending_monitors: vec![],
            pending_keys: Vec::new(),
            converged,
            waited,
            stamp: None,
            value: None,
        }
    }

    const DOING: &str = "Starting geo-replication session between gv0 & n4::gv1";

    #[test]
    fn converged_op_is_successful() {
        let mut resp = op_response(true, true);
        resp.confirmed_nodes.push("n3".into());
        let raw = serde_json::to_value(&resp).unwrap();
        let report = render_op(&resp, &raw, DOING, false, 30);
        assert_eq!(report.exit, Exit::Done);
        assert_eq!(
            report.stdout,
            "Starting geo-replication session between gv0 & n4::gv1 has been successful\n\
             confirmed by: n1, n2, n3 (3/3 live nodes)\n\
             dead nodes (will catch up when they return): n5\n"
        );
        assert!(report.stderr.is_empty());
    }

    #[test]
    fn unconverged_wait_exits_4_naming_laggards() {
        let mut resp = op_response(false, true);
        resp.pending_monitors = vec!["n2".into()];
        let raw = serde_json::to_value(&resp).unwrap();
        let report = render_op(&resp, &raw, DOING, false, 30);
        assert_eq!(op_exit(&resp), Exit::NotConverged);
        assert_eq!(report.exit, Exit::NotConverged);
        assert!(
            report
                .stdout
                .contains("confirmed by: n1, n2 (2/3 live nodes)"),
            "{}",
            report.stdout
        );
        assert!(
            report.stderr.contains("lagging nodes: n3"),
            "{}",
            report.stderr
        );
        assert!(
            report.stderr.contains("monitors pending on: n2"),
            "{}",
            report.stderr
        );
        assert!(
            report.stderr.contains("will still propagate"),
            "{}",
            report.stderr
        );

        let json = render_op(&resp, &raw, DOING, true, 30);
        assert_eq!(json.exit, Exit::NotConverged);
        let v: Value = serde_json::from_str(json.stdout.trim()).unwrap();
        assert_eq!(v, raw);
    }

    #[test]
    fn no_wait_is_applied_locally_and_exits_0() {
        let resp = op_response(false, false);
        let raw = serde_json::to_value(&resp).unwrap();
        let report = render_op(&resp, &raw, DOING, false, 30);
        assert_eq!(report.exit, Exit::Done);
        assert!(
            report.stdout.contains("applied locally; propagating"),
            "{}",
            report.stdout
        );
    }

    #[test]
    fn refused_op_exits_1() {
        let mut resp = op_response(true, true);
        resp.ok = false;
        resp.message = "Session gv0 -> n4::gv1: already started".into();
        let raw = serde_json::to_value(&resp).unwrap();
        let report = render_op(&resp, &raw, DOING, false, 30);
        assert_eq!(report.exit, Exit::Failed);
        assert_eq!(report.stderr, "Session gv0 -> n4::gv1: already started\n");
    }

    #[tokio::test]
    async fn bad_session_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("none.sock");
        for args in [
            vec!["create", "gv0", "n4:gv1"],
            vec!["start", "g v0", "n4::gv1"],
            vec!["delete", "gv0", "n4::"],
            vec!["config", "gv0", "@n4::gv1"],
            vec!["status", "gv0", "n4"],
            vec!["exists", "g/v"],
        ] {
            let mut argv = vec!["georep", "--socket", socket.to_str().unwrap()];
            argv.extend(&args);
            let cli = Cli::try_parse_from(argv).unwrap();
            let report = crate::execute(&cli).await;
            assert_eq!(report.exit, Exit::Usage, "{args:?}: {report:?}");
            assert!(
                report.stderr.starts_with("georep: invalid"),
                "{args:?}: {}",
                report.stderr
            );
        }
    }

    #[tokio::test]
    async fn missing_socket_exits_3() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("georepd.sock");
        for args in [
            vec!["start", "gv0", "n4::gv1"],
            vec!["status"],
            vec!["nodes", "--json"],
            vec!["config", "gv0", "n4::gv1"],
            vec!["running", "gv0"],
        ] {
            let mut argv = vec!["georep", "--socket", socket.to_str().unwrap()];
            argv.extend(&args);
            let cli = Cli::try_parse_from(argv).unwrap();
            let report = crate::execute(&cli).await;
            assert_eq!(report.exit, Exit::NoAgent, "{args:?}: {report:?}");
            assert!(
                report
                    .stderr
                    .starts_with(&format!("georep: no agent at {}: ", socket.display())),
                "{}",
                report.stderr
            );
            assert!(report.stderr.contains("Is georepd running?"));
        }
    }
}
