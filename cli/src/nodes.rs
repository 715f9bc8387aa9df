//! `nodes`: cluster membership as the local agent sees it.

use georep_api::types::{NodeRow, NodesResponse, OpResponse};

use crate::args::Globals;
use crate::client::decode;
use crate::lifecycle::render_op;
use crate::output::{CommandError, Exit, NA, Report, Table, compact_duration};

/// The columns of `nodes`.
pub const COLUMNS: &[&str] = &[
    "NODE",
    "ADDRESS",
    "STATE",
    "GENERATION",
    "VERSION",
    "LAST HEARD",
    "BRICKS",
];

/// `nodes`.
pub async fn nodes(g: &Globals) -> Report {
    let fetched = match g.client().get("/v1/nodes").await {
        Ok(raw) => decode::<NodesResponse>(&raw).map(|resp| (resp, raw)),
        Err(e) => Err(e),
    };
    match fetched {
        Ok((_, raw)) if g.json => Report::json(Exit::Done, &raw),
        Ok((resp, _)) => {
            let mut report = Report::new(Exit::Done);
            report.stdout = render_nodes(&resp);
            report
        }
        Err(e) => e.report(g.json, None),
    }
}

/// `node forget NODE`.
pub async fn forget(g: &Globals, node: &str, no_wait: bool) -> Report {
    if let Err(e) = georep_mesh::validate_node_id(node) {
        return CommandError::Usage(e.to_string()).report(g.json, None);
    }
    match g.client().forget(node, !no_wait).await {
        Ok((resp, raw)) => {
            let doing = format!("Forgetting node {}", resp.node);
            // The same rendering as a session change: confirmed, lagging, dead.
            let as_op = OpResponse {
                ok: resp.ok,
                session: format!("node {}", resp.node),
                message: resp.message,
                confirmed_nodes: resp.confirmed_nodes,
                dead_nodes: resp.dead_nodes,
                lagging_nodes: resp.lagging_nodes,
                pending_monitors: Vec::new(),
                pending_keys: Vec::new(),
                converged: resp.converged,
                waited: resp.waited,
                stamp: None,
                value: None,
            };
            render_op(&as_op, &raw, &doing, g.json, g.timeout.as_secs())
        }
        Err(e) => e.report(g.json, None),
    }
}

/// The human form of a membership answer.
pub fn render_nodes(resp: &NodesResponse) -> String {
    let mut table = Table::new(COLUMNS);
    for node in &resp.nodes {
        table.push(cells(node));
    }
    let mut out = table.render();
    // Live agents on different builds (a rolling upgrade, or one forgotten).
    let mut versions: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for node in resp.nodes.iter().filter(|n| n.live) {
        if let Some(version) = &node.agent_version {
            versions.entry(version).or_default().push(&node.node);
        }
    }
    if versions.len() > 1 {
        let groups: Vec<String> = versions
            .iter()
            .map(|(version, nodes)| format!("{version} on {}", nodes.join(", ")))
            .collect();
        out.push_str(&format!(
            "\nwarning: live agents run different versions: {}\n",
            groups.join("; ")
        ));
    }
    out
}

fn cells(n: &NodeRow) -> Vec<String> {
    let bricks = if n.bricks.is_empty() {
        "-".to_owned()
    } else {
        n.bricks
            .iter()
            .map(|b| {
                let missing = if n.missing_bricks.contains(&b.path) {
                    " (offline)"
                } else {
                    ""
                };
                format!("{}:{}:{}{missing}", b.volume, b.path, b.replica_set)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        n.node.clone(),
        n.address.clone(),
        if n.live { "live" } else { "dead" }.to_owned(),
        n.generation.to_string(),
        n.agent_version.clone().unwrap_or_else(|| NA.to_owned()),
        n.last_heard_ms
            .map(|ms| format!("{} ago", compact_duration(ms)))
            .unwrap_or_else(|| NA.to_owned()),
        bricks,
    ]
}

#[cfg(test)]
mod tests {
    use georep_mesh::Brick;

    use super::*;

    #[test]
    fn nodes_table() {
        let resp = NodesResponse {
            nodes: vec![
                NodeRow {
                    node: "n1".into(),
                    address: "127.0.0.1:7401".into(),
                    live: true,
                    generation: 3,
                    agent_version: Some("0.1.0".into()),
                    last_heard_ms: Some(120),
                    bricks: vec![
                        Brick {
                            volume: "gv0".into(),
                            path: "/data/gv0/b1".into(),
                            replica_set: 0,
                        },
                        Brick {
                            volume: "gv0".into(),
                            path: "/data/gv0/b4".into(),
                            replica_set: 1,
                        },
                    ],
                    missing_bricks: vec!["/data/gv0/b4".into()],
                },
                NodeRow {
                    node: "n5".into(),
                    address: "127.0.0.1:7405".into(),
                    live: false,
                    generation: 1,
                    agent_version: None,
                    last_heard_ms: Some(42_000),
                    bricks: vec![],
                    missing_bricks: vec![],
                },
            ],
        };
        let text = render_nodes(&resp);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            "NODE    ADDRESS           STATE    GENERATION    VERSION    LAST HEARD    BRICKS"
        );
        assert!(lines[1].chars().all(|c| c == '-'));
        assert_eq!(
            lines[2],
            "n1      127.0.0.1:7401    live     3             0.1.0      120ms ago     gv0:/data/gv0/b1:0, gv0:/data/gv0/b4:1 (offline)"
        );
        assert_eq!(
            lines[3],
            "n5      127.0.0.1:7405    dead     1             N/A        42s ago       -"
        );
        assert!(!text.contains("warning"), "one live version: {text}");
    }

    #[test]
    fn live_agents_on_different_versions_are_flagged() {
        let row = |node: &str, live: bool, version: &str| NodeRow {
            node: node.into(),
            address: "127.0.0.1:7401".into(),
            live,
            generation: 1,
            agent_version: Some(version.into()),
            last_heard_ms: None,
            bricks: vec![],
            missing_bricks: vec![],
        };
        let resp = NodesResponse {
            nodes: vec![
                row("n1", true, "0.1.0 (aaa)"),
                row("n2", true, "0.2.0 (bbb)"),
                row("n3", true, "0.1.0 (aaa)"),
                row("n4", false, "0.0.9 (ccc)"),
            ],
        };
        let text = render_nodes(&resp);
        assert!(
            text.ends_with(
                "warning: live agents run different versions: 0.1.0 (aaa) on n1, n3; 0.2.0 (bbb) on n2\n"
            ),
            "{text}"
        );
    }
}
