//! Prometheus metrics (`--metrics-listen`, off by default): a snapshot of the agent
//! ([`MetricsSnapshot`], gathered by the agent) rendered in the text exposition format
//! with `prometheus-client`, served at `/metrics` by axum on its own TCP listener.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use georep_mesh::{LinkStatsSnapshot, PushStatsSnapshot};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
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
    /// Eager pushes of this node's writes and their acknowledgements.
    pub push: PushStatsSnapshot,
    /// Reconciler actions taken since start, by kind.
    pub reconcile_actions: BTreeMap<String, u64>,
    /// Events held in this node's journal (every stream).
    pub journal_events: u64,
    /// Bytes of those events on disk.
    pub journal_bytes: u64,
    /// Every webhook as this node sees it.
    pub webhooks: Vec<WebhookMetrics>,
    /// This node's workers, as its monitors report them.
    pub workers: Vec<WorkerMetrics>,
}

/// One webhook's delivery, for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookMetrics {
    /// The receiver URL without credentials or query.
    pub url: String,
    /// `active`, `parked` or `disabled`.
    pub state: String,
    /// Events held here not yet acknowledged by the receiver.
    pub pending: u64,
    /// Whether deliveries to it fail now.
    pub failing: bool,
}

/// One local worker (a primary brick of a session), for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerMetrics {
    /// The session (`primary secondary`).
    pub session: String,
    /// The brick path.
    pub brick: String,
    /// Entry operations synced.
    pub entry: u64,
    /// Data operations (files) synced.
    pub data: u64,
    /// Metadata operations synced.
    pub meta: u64,
    /// Failed operations.
    pub failures: u64,
    /// Chunk bytes the data path sent.
    pub bytes_sent: u64,
    /// Seconds since the last synced change, when the monitor reports one.
    pub lag_seconds: Option<f64>,
}

/// A histogram rendered from counts gathered elsewhere (the mesh's push latencies).
#[derive(Debug)]
struct FixedHistogram {
    sum: f64,
    count: u64,
    /// (upper bound, count in that bucket only); `f64::MAX` for +Inf.
    buckets: Vec<(f64, u64)>,
}

impl TypedMetric for FixedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for FixedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
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

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn counter_rows(registry: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, u64)>) {
    let family: Family<Labels, Counter> = Family::default();
    for (labels, value) in rows {
        family.get_or_create(&labels).inc_by(value);
    }
    registry.register(name, help, family);
}

fn gauge_rows(registry: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, u64)>) {
    let family: Family<Labels, Gauge> = Family::default();
    for (labels, value) in rows {
        family
            .get_or_create(&labels)
            .set(i64::try_from(value).unwrap_or(i64::MAX));
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
    render_activity(&mut registry, s);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// The metrics of what the agent does: pushes, reconciling, events, webhooks, workers.
fn render_activity(registry: &mut Registry, s: &MetricsSnapshot) {
    counter(
        registry,
        "mesh_frames_shed",
        "Mesh frames shed under load (a full queue, too many sends in flight)",
        s.link.frames_shed,
    );
    counter(
        registry,
        "eager_pushes",
        "Eager pushes of this node's writes sent (one per peer per write)",
        s.push.pushes_sent,
    );
    counter(
        registry,
        "eager_push_acks",
        "First acknowledgements of this node's eager pushes (one per peer per write)",
        s.push.acks_received,
    );
    registry.register(
        "eager_push_ack_seconds",
        "Time from an eager push to a peer's acknowledgement",
        FixedHistogram {
            sum: s.push.latency_sum_seconds,
            count: s.push.latency_count,
            buckets: s
                .push
                .latency_buckets
                .iter()
                .map(|(bound, n)| (if bound.is_finite() { *bound } else { f64::MAX }, *n))
                .collect(),
        },
    );
    counter_rows(
        registry,
        "reconcile_actions",
        "Actions the reconciler took on this node's monitors, by kind",
        s.reconcile_actions
            .iter()
            .map(|(kind, n)| (labels(&[("action", kind)]), *n))
            .collect(),
    );
    gauge(
        registry,
        "event_journal_events",
        "Events held in this node's journal (every stream)",
        s.journal_events,
    );
    gauge(
        registry,
        "event_journal_bytes",
        "Bytes of the events held in this node's journal",
        s.journal_bytes,
    );
    let hook = |w: &WebhookMetrics| labels(&[("url", &w.url), ("state", &w.state)]);
    gauge_rows(
        registry,
        "webhook_pending_events",
        "Events held here not yet acknowledged by the webhook's receiver",
        s.webhooks.iter().map(|w| (hook(w), w.pending)).collect(),
    );
    gauge_rows(
        registry,
        "webhook_failing",
        "1 while deliveries to the webhook fail",
        s.webhooks
            .iter()
            .map(|w| (hook(w), u64::from(w.failing)))
            .collect(),
    );
    let worker = |w: &WorkerMetrics| labels(&[("session", &w.session), ("brick", &w.brick)]);
    let ops = |pick: fn(&WorkerMetrics) -> u64| -> Vec<(Labels, u64)> {
        s.workers.iter().map(|w| (worker(w), pick(w))).collect()
    };
    counter_rows(
        registry,
        "worker_files_synced",
        "Files (data operations) a local worker synced, as its monitor reports",
        ops(|w| w.data),
    );
    counter_rows(
        registry,
        "worker_entries_synced",
        "Entry operations a local worker synced, as its monitor reports",
        ops(|w| w.entry),
    );
    counter_rows(
        registry,
        "worker_meta_synced",
        "Metadata operations a local worker synced, as its monitor reports",
        ops(|w| w.meta),
    );
    counter_rows(
        registry,
        "worker_sent_bytes",
        "Chunk bytes a local worker's data path sent",
        ops(|w| w.bytes_sent),
    );
    counter_rows(
        registry,
        "worker_failures",
        "Operations a local worker failed to sync, as its monitor reports",
        ops(|w| w.failures),
    );
    let lag: Family<Labels, Gauge<f64, AtomicU64>> = Family::default();
    for w in &s.workers {
        if let Some(seconds) = w.lag_seconds {
            lag.get_or_create(&worker(w)).set(seconds);
        }
    }
    registry.register(
        "worker_lag_seconds",
        "Seconds since a local worker's last synced change",
        lag,
    );
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
            push: PushStatsSnapshot {
                pushes_sent: 4,
                acks_received: 3,
                latency_buckets: vec![(0.01, 2), (0.1, 1), (f64::INFINITY, 0)],
                latency_sum_seconds: 0.06,
                latency_count: 3,
            },
            reconcile_actions: [("spawn".to_string(), 2)].into(),
            workers: vec![WorkerMetrics {
                session: "gv0 h::gv1".into(),
                brick: "/b".into(),
                data: 7,
                lag_seconds: Some(2.5),
                ..WorkerMetrics::default()
            }],
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
            "georep_eager_pushes_total 4",
            "georep_eager_push_ack_seconds_bucket{le=\"0.01\"} 2",
            "georep_eager_push_ack_seconds_bucket{le=\"0.1\"} 3",
            "georep_eager_push_ack_seconds_bucket{le=\"+Inf\"} 3",
            "georep_eager_push_ack_seconds_count 3",
            "georep_reconcile_actions_total{action=\"spawn\"} 2",
            "georep_worker_files_synced_total{session=\"gv0 h::gv1\",brick=\"/b\"} 7",
            "georep_worker_lag_seconds{session=\"gv0 h::gv1\",brick=\"/b\"} 2.5",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
