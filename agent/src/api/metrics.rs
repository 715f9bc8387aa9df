//! Prometheus metrics (`--metrics-listen`, off by default): a snapshot of the agent
//! ([`MetricsSnapshot`], gathered by the agent) rendered in the text exposition format
//! with `prometheus-client`, served at `/metrics` by axum on its own TCP listener.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use georep_mesh::LinkStatsSnapshot;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;

/// What one scrape reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Agent version.
    pub version: String,
    /// Members seen live.
    pub members_live: u64,
    /// Members seen dead.
    pub members_dead: u64,
    /// Mesh traffic of this node.
    pub link: LinkStatsSnapshot,
    /// Gossiped values that could not be decoded (another version, corruption).
    pub undecodable_values: u64,
    /// Existing sessions by desired state.
    pub sessions: BTreeMap<String, u64>,
    /// This node's monitors by state (`Started`, `Faulty`, ...).
    pub monitors: BTreeMap<String, u64>,
    /// Monitor restarts after crashes, summed over sessions.
    pub monitor_restarts: u64,
    /// push-pem: primary nodes whose keys this node has installed, summed over sessions.
    pub keys_installed: u64,
    /// push-pem: primary nodes whose keys it should have, summed over sessions.
    pub keys_expected: u64,
}

type Labels = Vec<(String, String)>;

fn gauge_family<'a>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) {
    let family: Family<Labels, Gauge> = Family::default();
    for (value, count) in values {
        family
            .get_or_create(&vec![(label.to_string(), value.to_string())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    registry.register(name, help, family);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric: Counter = Counter::default();
    metric.inc_by(value);
    registry.register(name, help, metric);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric: Gauge = Gauge::default();
    metric.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, metric);
}

/// The exposition text of `s` (names `georep_*`, counters `_total`).
pub fn render(s: &MetricsSnapshot) -> String {
    let mut registry = Registry::with_prefix("georep");
    gauge_family(
        &mut registry,
        "build_info",
        "The agent's version (always 1)",
        "version",
        [(s.version.as_str(), 1)],
    );
    gauge_family(
        &mut registry,
        "members",
        "Nodes of the mesh by liveness, as this node sees them",
        "state",
        [("live", s.members_live), ("dead", s.members_dead)],
    );
    counter(
        &mut registry,
        "mesh_frames_sent",
        "Mesh frames sent",
        s.link.frames_sent,
    );
    counter(
        &mut registry,
        "mesh_sent_bytes",
        "Mesh bytes sent",
        s.link.bytes_sent,
    );
    counter(
        &mut registry,
        "mesh_frames_received",
        "Mesh frames received",
        s.link.frames_received,
    );
    counter(
        &mut registry,
        "mesh_received_bytes",
        "Mesh bytes received",
        s.link.bytes_received,
    );
    counter(
        &mut registry,
        "mesh_frames_rejected",
        "Mesh frames rejected (malformed, unauthenticated, over a limit)",
        s.link.frames_rejected,
    );
    counter(
        &mut registry,
        "undecodable_values",
        "Gossiped values that could not be decoded",
        s.undecodable_values,
    );
    gauge_family(
        &mut registry,
        "sessions",
        "Existing sessions by desired state",
        "desired_state",
        s.sessions.iter().map(|(k, v)| (k.as_str(), *v)),
    );
    gauge_family(
        &mut registry,
        "monitors",
        "This node's session monitors by state",
        "state",
        s.monitors.iter().map(|(k, v)| (k.as_str(), *v)),
    );
    counter(
        &mut registry,
        "monitor_restarts",
        "Monitor restarts after a crash, over this node's sessions",
        s.monitor_restarts,
    );
    gauge(
        &mut registry,
        "push_pem_keys_installed",
        "push-pem: primary nodes whose keys this node installed, over its sessions",
        s.keys_installed,
    );
    gauge(
        &mut registry,
        "push_pem_keys_expected",
        "push-pem: primary nodes whose keys this node should hold, over its sessions",
        s.keys_expected,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    agent: Arc<Agent>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(agent): axum::extract::State<Arc<Agent>>| async move {
                    let text = render(&agent.metrics_snapshot().await);
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response()
                },
            ),
        )
        .with_state(agent);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let snapshot = MetricsSnapshot {
            version: "0.1.0".into(),
            members_live: 4,
            members_dead: 1,
            link: LinkStatsSnapshot {
                frames_sent: 10,
                bytes_sent: 1000,
                ..LinkStatsSnapshot::default()
            },
            sessions: [("Started".to_string(), 2)].into(),
            monitors: [("Faulty".to_string(), 1)].into(),
            monitor_restarts: 3,
            ..MetricsSnapshot::default()
        };
        let text = render(&snapshot);
        for line in [
            "georep_build_info{version=\"0.1.0\"} 1",
            "georep_members{state=\"live\"} 4",
            "georep_members{state=\"dead\"} 1",
            "georep_mesh_frames_sent_total 10",
            "georep_mesh_sent_bytes_total 1000",
            "georep_sessions{desired_state=\"Started\"} 2",
            "georep_monitors{state=\"Faulty\"} 1",
            "georep_monitor_restarts_total 3",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
