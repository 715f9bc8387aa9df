//! `webhook add|mod|del|list|test`: the cluster's webhooks, managed from any node.

use georep_api::types::{
    OpResponse, WebhookListResponse, WebhookRequest, WebhookResponse, WebhookRow,
    WebhookTestRequest, WebhookTestResponse,
};

use crate::args::{Globals, WebhookCommand, WebhookOptions};
use crate::client::decode;
use crate::lifecycle::render_op;
use crate::output::{CommandError, Exit, NA, Report, Table, compact_duration};

/// The columns of `webhook list`.
pub const COLUMNS: &[&str] = &[
    "URL",
    "FORMAT",
    "AUTH",
    "STATE",
    "DELIVERING",
    "PENDING",
    "LOST",
    "FAILING SINCE",
    "LAST ERROR",
];

/// The CA file's content, read here (the CLI runs where the file is).
fn ca_pem(options: &WebhookOptions) -> Result<Option<String>, CommandError> {
    options
        .ca
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .map_err(|e| CommandError::Usage(format!("--ca {}: {e}", path.display())))
        })
        .transpose()
}

/// `webhook ...`.
pub async fn webhook(g: &Globals, command: &WebhookCommand) -> Report {
    match command {
        WebhookCommand::Add {
            url,
            options,
            no_wait,
        } => write(g, "add", url, Some(options), *no_wait).await,
        WebhookCommand::Mod {
            url,
            options,
            no_wait,
        } => write(g, "mod", url, Some(options), *no_wait).await,
        WebhookCommand::Del { url, no_wait } => write(g, "del", url, None, *no_wait).await,
        WebhookCommand::List => list(g).await,
        WebhookCommand::Test { url, options } => test(g, url, options).await,
    }
}

async fn write(
    g: &Globals,
    action: &str,
    url: &str,
    options: Option<&WebhookOptions>,
    no_wait: bool,
) -> Report {
    let default = WebhookOptions::default();
    let options = options.unwrap_or(&default);
    let ca_pem = match ca_pem(options) {
        Ok(pem) => pem,
        Err(e) => return e.report(g.json, None),
    };
    let client = g.client();
    let request = WebhookRequest {
        action: action.to_string(),
        url: url.to_string(),
        format: options.format.clone(),
        token: options.token.clone(),
        secret: options.secret.clone(),
        ca_pem,
        wait: !no_wait,
        timeout_ms: client.wait_timeout_ms(),
    };
    let answer: Result<(WebhookResponse, _), _> =
        client.post_waiting("/v1/webhooks", &request).await;
    match answer {
        Ok((resp, raw)) => {
            let doing = match action {
                "add" => "Adding",
                "mod" => "Changing",
                _ => "Deleting",
            };
            // The same rendering as a session change: confirmed, lagging.
            let as_op = OpResponse {
                ok: resp.ok,
                session: format!("webhook {}", resp.url),
                message: resp.message,
                confirmed_nodes: resp.confirmed_nodes,
                dead_nodes: Vec::new(),
                lagging_nodes: resp.lagging_nodes,
                pending_monitors: Vec::new(),
                pending_keys: Vec::new(),
                converged: resp.converged,
                waited: resp.waited,
                stamp: None,
                value: None,
            };
            render_op(
                &as_op,
                &raw,
                &format!("{doing} webhook {}", resp.url),
                g.json,
                g.timeout.as_secs(),
            )
        }
        Err(e) => e.report(g.json, None),
    }
}

async fn list(g: &Globals) -> Report {
    let fetched = match g.client().get("/v1/webhooks").await {
        Ok(raw) => decode::<WebhookListResponse>(&raw).map(|resp| (resp, raw)),
        Err(e) => Err(e),
    };
    match fetched {
        Ok((_, raw)) if g.json => Report::json(Exit::Done, &raw),
        Ok((resp, _)) => {
            let mut report = Report::new(Exit::Done);
            report.stdout = render_list(&resp, now_ms());
            report
        }
        Err(e) => e.report(g.json, None),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The human form of `webhook list`: a table, then the reason of every webhook that
/// is not active.
pub fn render_list(resp: &WebhookListResponse, now_ms: u64) -> String {
    if resp.webhooks.is_empty() {
        return "No webhooks (add one with `georep webhook add URL`).\n".to_string();
    }
    let mut table = Table::new(COLUMNS);
    for hook in &resp.webhooks {
        table.push(cells(hook, now_ms));
    }
    let mut out = table.render();
    for hook in &resp.webhooks {
        if let Some(reason) = &hook.state_reason {
            out.push_str(&format!("{} is {}: {reason}\n", hook.url, hook.state));
        }
        if hook.lost > 0 {
            out.push_str(&format!(
                "{}: {} events were removed by retention before delivery\n",
                hook.url, hook.lost
            ));
        }
    }
    out
}

fn cells(hook: &WebhookRow, now_ms: u64) -> Vec<String> {
    let or_na = |s: Option<String>| s.unwrap_or_else(|| NA.to_string());
    vec![
        hook.url.clone(),
        hook.format.clone(),
        hook.auth.clone(),
        hook.state.clone(),
        if hook.delivering_nodes.is_empty() {
            NA.to_string()
        } else {
            hook.delivering_nodes.join(",")
        },
        hook.pending.to_string(),
        hook.lost.to_string(),
        or_na(
            hook.failing_since_ms
                .map(|t| format!("{} ago", compact_duration(now_ms.saturating_sub(t)))),
        ),
        or_na(hook.last_error.clone()),
    ]
}

async fn test(g: &Globals, url: &str, options: &WebhookOptions) -> Report {
    let ca_pem = match ca_pem(options) {
        Ok(pem) => pem,
        Err(e) => return e.report(g.json, None),
    };
    let request = WebhookTestRequest {
        url: url.to_string(),
        format: options.format.clone(),
        token: options.token.clone(),
        secret: options.secret.clone(),
        ca_pem,
    };
    let answer: Result<(WebhookTestResponse, _), _> =
        g.client().post_waiting("/v1/webhooks/test", &request).await;
    match answer {
        Ok((resp, raw)) => {
            let exit = if resp.ok { Exit::Done } else { Exit::Failed };
            if g.json {
                return Report::json(exit, &raw);
            }
            let mut report = Report::new(exit);
            if resp.ok {
                report.out(format!("webhook test: {} (id {})", resp.message, resp.id));
            } else {
                report.err(format!("georep: webhook test failed: {}", resp.message));
            }
            report
        }
        Err(e) => e.report(g.json, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_says_why_a_webhook_is_not_delivered() {
        let row = WebhookRow {
            url: "http://h/x".into(),
            format: "gluster".into(),
            auth: "token".into(),
            ca: false,
            state: "disabled".into(),
            state_reason: Some("the receiver answered 410 Gone: HTTP 410".into()),
            added: "1.0@n1".into(),
            delivering_nodes: vec!["n1".into(), "n2".into()],
            cursor: "n1@1:4".into(),
            pending: 3,
            lost: 2,
            failing_since_ms: Some(1_000),
            last_error: Some("HTTP 410".into()),
            streams: Vec::new(),
        };
        let out = render_list(
            &WebhookListResponse {
                webhooks: vec![row],
            },
            61_000,
        );
        assert!(out.contains("http://h/x"), "{out}");
        assert!(out.contains("n1,n2"), "{out}");
        assert!(out.contains("1m 0s ago"), "{out}");
        assert!(
            out.contains("is disabled: the receiver answered 410"),
            "{out}"
        );
        assert!(out.contains("2 events were removed by retention"), "{out}");
        assert_eq!(
            render_list(&WebhookListResponse { webhooks: vec![] }, 0),
            "No webhooks (add one with `georep webhook add URL`).\n"
        );
    }
}
