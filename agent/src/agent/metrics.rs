//! What a metrics scrape reports, gathered from the mesh, the supervisor, the event
//! journal, the webhooks and the published worker statuses (rendered by
//! `api/metrics.rs`).

use super::*;
use crate::api::metrics::{WebhookMetrics, WorkerMetrics};

impl Agent {
    /// What a metrics scrape reports (see `api/metrics.rs`).
    pub async fn metrics_snapshot(&self) -> crate::api::metrics::MetricsSnapshot {
        let membership = self.mesh.membership().await;
        let replica = self.mesh.replica();
        let mut sessions: BTreeMap<String, u64> = BTreeMap::new();
        let mut keys_installed = 0;
        let mut keys_expected = 0;
        for record in replica.sessions.values() {
            let view = record.view();
            if !view.exists {
                continue;
            }
            *sessions.entry(view.desired.to_string()).or_default() += 1;
            if view.options.push_pem
                && membership
                    .local()
                    .is_some_and(|m| m.hosts(&view.id.secondary_volume))
            {
                let installs = self.key_installs(&view.id).await;
                for row in views::secondary_keys(&view, &membership, &installs)
                    .into_iter()
                    .filter(|row| row.node == self.config.node_id)
                {
                    keys_installed += row.keys_installed as u64;
                    keys_expected += row.keys_expected as u64;
                }
            }
        }
        let reports = self.supervisor.lock().await.reports();
        let mut monitors: BTreeMap<String, u64> = BTreeMap::new();
        for report in reports.values() {
            *monitors.entry(format!("{:?}", report.state)).or_default() += 1;
        }
        let actions = self
            .supervisor
            .lock()
            .await
            .actions_taken()
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let (journal_events, journal_bytes) = self.events.size();
        let webhooks = self
            .webhooks
            .list(&self.events, &membership)
            .into_iter()
            .map(|row| WebhookMetrics {
                url: redacted_url(&row.url),
                state: row.state,
                pending: row.pending,
                failing: row.failing_since_ms.is_some(),
            })
            .collect();
        let now_ms = self.wall.now_millis();
        let workers = self
            .published
            .lock()
            .map(|published| {
                published
                    .iter()
                    .flat_map(|(id, status)| {
                        status.workers.iter().map(move |w| WorkerMetrics {
                            session: id.to_string(),
                            brick: w.brick.clone(),
                            entry: w.entry,
                            data: w.data,
                            meta: w.meta,
                            failures: w.failures,
                            bytes_sent: w.bytes_sent,
                            lag_seconds: w
                                .last_synced
                                .as_deref()
                                .and_then(|t| lag_seconds(t, now_ms)),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        crate::api::metrics::MetricsSnapshot {
            push: self.mesh.push_stats(),
            reconcile_actions: actions,
            journal_events,
            journal_bytes,
            webhooks,
            workers,
            version: AGENT_VERSION.to_string(),
            members_live: membership.live().count() as u64,
            members_dead: membership.dead().count() as u64,
            link: self.mesh.link_stats(),
            undecodable_values: self.mesh.undecodable_values(),
            sessions,
            monitors,
            monitor_restarts: reports.values().map(|r| u64::from(r.restarts)).sum(),
            keys_installed,
            keys_expected,
        }
    }
}

/// A webhook URL without credentials or query (labels are visible to every scraper).
fn redacted_url(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or_default();
    match without_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{host}{path}")
        }
        None => without_query.to_string(),
    }
}

/// Seconds between a worker's `last_synced` (Unix seconds, or a UTC time such as
/// `2026-12-03 10:00:00` as gsyncd writes it) and `now_ms`; `None` if unreadable.
fn lag_seconds(last_synced: &str, now_ms: u64) -> Option<f64> {
    let text = last_synced.trim();
    let synced_ms = match text.parse::<u64>() {
        Ok(seconds) => seconds.checked_mul(1000)?,
        Err(_) => {
            let at = humantime::parse_rfc3339_weak(text).ok()?;
            u64::try_from(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()?
        }
    };
    Some(now_ms.saturating_sub(synced_ms) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_labels_hide_credentials_and_queries() {
        assert_eq!(
            redacted_url("https://user:pw@hooks.example:8443/in?token=s3cret"),
            "https://hooks.example:8443/in"
        );
        assert_eq!(
            redacted_url("http://127.0.0.1:9000"),
            "http://127.0.0.1:9000"
        );
    }

    #[test]
    fn lag_reads_unix_seconds_and_gsyncd_times() {
        assert_eq!(lag_seconds("1000", 1_500_000), Some(500.0));
        assert_eq!(lag_seconds("1970-01-01 00:16:40", 1_500_000), Some(500.0));
        assert_eq!(lag_seconds("never", 1_500_000), None);
        assert_eq!(lag_seconds("99999999999999999999", 1), None);
    }
}
