//! `events`: the merged cluster-wide event stream, oldest first; with `--follow`, a
//! long poll that keeps printing (and resumes from its cursor when the agent restarts).

use std::io::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use georep_api::types::{EventsResponse, StreamItem};

use crate::args::{EventsArgs, Globals};
use crate::client::{decode, with_query};
use crate::output::{CommandError, Exit, Report};

/// How long one `--follow` request waits on the agent for something new.
const FOLLOW_WAIT: Duration = Duration::from_secs(20);
/// How long `--follow` waits before asking an agent that did not answer again.
const RETRY: Duration = Duration::from_secs(1);

fn path(a: &EventsArgs, since: Option<&str>, wait: Option<Duration>) -> String {
    let types = a.types.join(",");
    let (primary, secondary) = match a.session.as_deref() {
        Some([p, s]) => (Some(p.as_str()), Some(s.as_str())),
        _ => (None, None),
    };
    let wait_ms = wait.map(|w| w.as_millis().to_string());
    with_query(
        "/v1/events",
        &[
            ("since", since),
            ("types", (!types.is_empty()).then_some(types.as_str())),
            ("primary", primary),
            ("secondary", secondary),
            ("node", a.node.as_deref()),
            ("wait_ms", wait_ms.as_deref()),
        ],
    )
}

/// One item as a line: `2026-12-02T17:30:01Z  n2:17  GEOREP_START  primary=gv0 ...`,
/// or the gap it is.
pub fn render_item(item: &StreamItem) -> String {
    match item {
        StreamItem::Event(e) => {
            let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(e.ts));
            let message: Vec<String> = e.message.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{at}  {}  {}  {}", e.id, e.event, message.join(" "))
                .trim_end()
                .to_string()
        }
        StreamItem::Gap { gap } => format!(
            "-- gap: events {}..{} of {} are no longer held anywhere reachable ({})",
            gap.from, gap.to, gap.origin, gap.reason
        ),
    }
}

fn print_items(items: &[StreamItem], json: bool) {
    let mut out = std::io::stdout().lock();
    for item in items {
        let line = if json {
            serde_json::to_string(item).unwrap_or_default()
        } else {
            render_item(item)
        };
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// `events`.
pub async fn events(g: &Globals, a: &EventsArgs) -> Report {
    if let Some(node) = &a.node
        && let Err(e) = georep_mesh::validate_node_id(node)
    {
        return CommandError::Usage(e.to_string()).report(g.json, None);
    }
    let client = g.client();
    if !a.follow {
        return match client.get(&path(a, a.since.as_deref(), None)).await {
            Ok(raw) => match decode::<EventsResponse>(&raw) {
                Ok(resp) => {
                    print_items(&resp.items, g.json);
                    Report::new(Exit::Done)
                }
                Err(e) => e.report(g.json, None),
            },
            Err(e) => e.report(g.json, None),
        };
    }
    let mut since = a.since.clone();
    let mut complained = false;
    loop {
        let answer = client
            .get_waiting(&path(a, since.as_deref(), Some(FOLLOW_WAIT)), FOLLOW_WAIT)
            .await
            .and_then(|raw| decode::<EventsResponse>(&raw));
        match answer {
            Ok(resp) => {
                complained = false;
                print_items(&resp.items, g.json);
                since = Some(resp.cursor);
            }
            // A refusal (bad --since) does not get better by asking again.
            Err(e @ (CommandError::Refused { .. } | CommandError::Usage(_))) => {
                return e.report(g.json, None);
            }
            Err(e) => {
                if !complained {
                    eprintln!(
                        "georep: {}; retrying every {}s from the last cursor",
                        e.message(),
                        RETRY.as_secs()
                    );
                    complained = true;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
