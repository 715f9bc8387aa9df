//! Webhooks: the replicated list of receivers, and at-least-once delivery of the
//! merged event stream to each.
//!
//! - `state`: the list as a join-semilattice (add/mod/del, delete wins over modify).
//! - `sign`: bodies and authentication (Bearer, HS256 JWT, Standard Webhooks).
//! - `http`: the [`Transport`] seam and the HTTP(S) client.
//!
//! Replication: every node publishes its joined list under [`WEBHOOKS_KEY`] and joins
//! everyone's into its own (the list is small; a node that was down catches up from
//! any peer), and persists it in `<data-dir>/webhooks.bin`.
//!
//! Delivery: the journal is the outbox. Each (webhook, stream) has one delivering
//! node: the stream's writer while it is live, else the live node with the highest
//! rendezvous hash of (URL, stream, node). It POSTs the stream's events in seq order,
//! one at a time, and advances its cursor only on a 2xx; cursors are gossiped under
//! [`DELIVERED_KEY`] and persisted, so the next delivering node resumes from the
//! highest cursor anyone published (a delivery in flight when a node dies is sent
//! again, with the same id). Failures retry with capped exponential backoff and
//! jitter, at least as late as `Retry-After`; a 410 disables the webhook, failing
//! longer than the park bound parks it (both in the replicated state, visible in
//! `webhook list`, cleared by `webhook mod`). Events retention removed before they
//! were delivered are counted as lost and logged, never skipped silently.

mod http;
mod sign;
mod state;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use georep_api::types::{WebhookRow, WebhookStreamRow};
use georep_mesh::{Hlc, Membership, MeshNode, OwnedValues, codec};
use georep_store::StateFile;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::events::{Event, EventHub};

pub use http::{Answer, HttpTransport, Transport, check_ca, check_url};
pub use sign::{Delivery, Payload, check as check_config, delivery};
pub use state::{
    Auth, DeliveryState, Format, WebhookConfig, WebhookError, WebhookRecord, WebhookSet,
};

/// Owner-written key: this node's joined webhook list.
pub const WEBHOOKS_KEY: &str = "wh";
/// Owner-written key: the delivery cursors this node advanced.
pub const DELIVERED_KEY: &str = "wd";
/// Events sent per delivery round of one (webhook, stream).
const ROUND_EVENTS: usize = 32;
/// First retry delay.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Cursors are published at most this often: every change is a key version every
/// node gossips, and a cursor that lags only means a few duplicates after failover.
const CURSOR_PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// Longest a `Retry-After` is honoured for.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// How failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Longest delay between attempts.
    pub backoff_max: Duration,
    /// Failing this long (ms) parks the webhook.
    pub park_after_ms: u64,
}

/// How far one (webhook, stream) was delivered, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamProgress {
    /// The webhook incarnation this cursor belongs to (its add stamp).
    pub incarnation: Hlc,
    /// Last seq the receiver acknowledged.
    pub delivered: u64,
    /// Events retention removed before delivery.
    pub lost: u64,
    /// Unix ms since when deliveries fail.
    pub failing_since_ms: Option<u64>,
    /// The last failure.
    pub last_error: Option<String>,
}

/// Progress by webhook URL, then by stream.
pub type Delivered = BTreeMap<String, BTreeMap<String, StreamProgress>>;

/// What `webhooks.bin` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Saved {
    set: WebhookSet,
    delivered: Delivered,
}

/// Local retry state of one (webhook, stream).
#[derive(Debug, Clone)]
struct Worker {
    busy: bool,
    attempts: u32,
    next_try: Instant,
}

/// One round of deliveries to run.
pub struct Job {
    url: String,
    incarnation: Hlc,
    config: WebhookConfig,
    stream: String,
    events: Vec<Event>,
    transport: Arc<dyn Transport>,
}

/// What a round achieved.
pub struct JobResult {
    url: String,
    incarnation: Hlc,
    stream: String,
    delivered: Option<u64>,
    failure: Option<(String, Option<Duration>, bool)>,
}

impl Job {
    /// Sends the round's events in order, stopping at the first failure.
    pub async fn run(self, wall_ms: impl Fn() -> u64) -> JobResult {
        let mut delivered = None;
        let mut failure = None;
        for event in &self.events {
            let payload = Payload {
                nodeid: event.origin.clone(),
                ts: event.hlc.millis / 1000,
                event: event.kind.clone(),
                message: event.message.clone(),
                id: format!("{}:{}", event.stream(), event.seq),
            };
            let request = delivery(&self.config, &payload, wall_ms() / 1000);
            match self
                .transport
                .post(&self.url, self.config.ca_pem.as_deref(), &request)
                .await
            {
                Ok(answer) if (200..300).contains(&answer.status) => delivered = Some(event.seq),
                Ok(answer) => {
                    let gone = answer.status == 410;
                    let mut error = format!("HTTP {}", answer.status);
                    if (300..400).contains(&answer.status) {
                        error.push_str(" (redirects are not followed)");
                    }
                    if !answer.body.trim().is_empty() {
                        error = format!("{error}: {}", answer.body.trim());
                    }
                    failure = Some((error, answer.retry_after, gone));
                    break;
                }
                Err(error) => {
                    failure = Some((error, None, false));
                    break;
                }
            }
        }
        JobResult {
            url: self.url,
            incarnation: self.incarnation,
            stream: self.stream,
            delivered,
            failure,
        }
    }
}

/// The node delivering `stream` to `url`: its writer while live, else the live node
/// with the highest rendezvous hash.
pub fn deliverer(url: &str, stream: &str, membership: &Membership) -> Option<String> {
    let writer = stream.split('@').next().unwrap_or(stream);
    if membership.members.get(writer).is_some_and(|m| m.live) {
        return Some(writer.to_string());
    }
    membership
        .live()
        .map(|m| {
            let mut hasher = crc32fast::Hasher::new();
            for part in [url, stream, m.node_id.as_str()] {
                hasher.update(part.as_bytes());
                hasher.update(&[0]);
            }
            (hasher.finalize(), m.node_id.clone())
        })
        .max()
        .map(|(_, node)| node)
}

/// This node's webhook list, cursors and delivery rounds.
pub struct Webhooks {
    node_id: String,
    store: StateFile<Saved>,
    saved: Mutex<Saved>,
    /// Per node, the raw list value last joined.
    joined: Mutex<BTreeMap<String, String>>,
    /// Every node's published list and cursors, as last read.
    seen: Mutex<(OwnedValues, OwnedValues)>,
    /// Per node, what it published under [`DELIVERED_KEY`] (raw, decoded).
    others: Mutex<BTreeMap<String, (String, Delivered)>>,
    workers: Mutex<BTreeMap<(String, String), Worker>>,
    published: Mutex<(Option<String>, Option<String>)>,
    /// When the cursors were last published.
    cursors_at: Mutex<Option<Instant>>,
    transport: RwLock<Arc<dyn Transport>>,
    policy: RetryPolicy,
}

impl Webhooks {
    /// Opens `<data_dir>/webhooks.bin` (a corrupt file is set aside: peers hold the
    /// list, cursors restart from what peers published).
    pub fn open(data_dir: &Path, node_id: &str, policy: RetryPolicy) -> Self {
        let store = StateFile::new(data_dir.join("webhooks.bin"));
        let saved = match store.load() {
            Ok(saved) => saved.unwrap_or_default(),
            Err(error) => {
                let kept = store.quarantine().ok();
                tracing::error!(%error, kept_as = ?kept, "webhook state unreadable; recovering the list from peers");
                Saved::default()
            }
        };
        Self {
            node_id: node_id.to_string(),
            store,
            saved: Mutex::new(saved),
            joined: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(Default::default()),
            others: Mutex::new(BTreeMap::new()),
            workers: Mutex::new(BTreeMap::new()),
            published: Mutex::new((None, None)),
            cursors_at: Mutex::new(None),
            transport: RwLock::new(Arc::new(HttpTransport)),
            policy,
        }
    }

    /// Replaces how deliveries are sent (the simulator's in-memory receivers).
    pub fn set_transport(&self, transport: Arc<dyn Transport>) {
        if let Ok(mut t) = self.transport.write() {
            *t = transport;
        }
    }

    /// The transport in use.
    pub fn transport(&self) -> Arc<dyn Transport> {
        match self.transport.read() {
            Ok(t) => t.clone(),
            Err(_) => Arc::new(HttpTransport),
        }
    }

    /// The joined list.
    pub fn set(&self) -> WebhookSet {
        self.saved.lock().map(|s| s.set.clone()).unwrap_or_default()
    }

    fn persist(&self) {
        let Ok(saved) = self.saved.lock() else { return };
        if let Err(error) = self.store.save(&saved) {
            tracing::warn!(%error, "cannot persist webhook state");
        }
    }

    /// Applies a local write (add, mod, del, state change) and persists it.
    pub fn write(
        &self,
        apply: impl FnOnce(&mut WebhookSet) -> Result<(), WebhookError>,
    ) -> Result<(), WebhookError> {
        {
            let Ok(mut saved) = self.saved.lock() else {
                return Ok(());
            };
            apply(&mut saved.set)?;
        }
        self.persist();
        Ok(())
    }

    /// Joins every peer's list and cursors (what changed since the last call), and
    /// publishes this node's.
    pub async fn sync(&self, mesh: &MeshNode) {
        let mut seen = self
            .seen
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        let lists_changed = mesh.track_owned_value(WEBHOOKS_KEY, &mut seen.0).await;
        let cursors_changed = mesh.track_owned_value(DELIVERED_KEY, &mut seen.1).await;
        let mut changed = false;
        if lists_changed
            && let (Ok(mut joined), Ok(mut saved)) = (self.joined.lock(), self.saved.lock())
        {
            for (node, raw) in seen.0.iter() {
                if node == self.node_id || joined.get(node).is_some_and(|r| r == raw) {
                    continue;
                }
                if let Ok(theirs) = codec::decode::<WebhookSet>(raw) {
                    changed |= saved.set.join(&theirs);
                }
                joined.insert(node.to_string(), raw.to_string());
            }
        }
        if changed {
            self.persist();
        }
        if cursors_changed && let Ok(mut others) = self.others.lock() {
            others.retain(|node, _| seen.1.get(node).is_some());
            for (node, raw) in seen.1.iter() {
                if node == self.node_id || others.get(node).is_some_and(|(r, _)| r == raw) {
                    continue;
                }
                if let Ok(theirs) = codec::decode::<Delivered>(raw) {
                    others.insert(node.to_string(), (raw.to_string(), theirs));
                }
            }
        }
        if let Ok(mut s) = self.seen.lock() {
            *s = seen;
        }
        self.publish(mesh).await;
    }

    async fn publish(&self, mesh: &MeshNode) {
        let (list, cursors) = {
            let Ok(saved) = self.saved.lock() else { return };
            let list = (!saved.set.hooks.is_empty())
                .then(|| codec::encode(&saved.set).ok())
                .flatten();
            let cursors = (!saved.delivered.is_empty())
                .then(|| codec::encode(&saved.delivered).ok())
                .flatten();
            (list, cursors)
        };
        let last = self.published.lock().map(|p| p.clone()).unwrap_or_default();
        if list.is_some() && list != last.0 {
            mesh.set_owned(WEBHOOKS_KEY, list.clone().unwrap_or_default())
                .await;
        }
        let due = self
            .cursors_at
            .lock()
            .is_ok_and(|at| at.is_none_or(|t| t.elapsed() >= CURSOR_PUBLISH_EVERY));
        let cursors = cursors.filter(|c| due && Some(c) != last.1.as_ref());
        if let Some(value) = &cursors {
            mesh.set_owned(DELIVERED_KEY, value.clone()).await;
            if let Ok(mut at) = self.cursors_at.lock() {
                *at = Some(Instant::now());
            }
        }
        if let Ok(mut published) = self.published.lock() {
            *published = (list.or(last.0), cursors.or(last.1));
        }
    }

    /// Live nodes whose published list holds `url`'s write at `stamp`, and those
    /// whose does not.
    pub async fn spread(
        &self,
        mesh: &MeshNode,
        membership: &Membership,
        url: &str,
        stamp: &Hlc,
    ) -> (Vec<String>, Vec<String>) {
        let lists = mesh.owned_values(WEBHOOKS_KEY).await;
        let mut confirmed = Vec::new();
        let mut lagging = Vec::new();
        for member in membership.live() {
            let holds = if member.node_id == self.node_id {
                self.set().reflects(url, stamp)
            } else {
                lists
                    .get(&member.node_id)
                    .and_then(|v| v.get(WEBHOOKS_KEY))
                    .and_then(|raw| codec::decode::<WebhookSet>(raw).ok())
                    .is_some_and(|set| set.reflects(url, stamp))
            };
            if holds {
                confirmed.push(member.node_id.clone());
            } else {
                lagging.push(member.node_id.clone());
            }
        }
        (confirmed, lagging)
    }

    /// The highest cursor anyone published for (`url` at `incarnation`, `stream`).
    fn cursor(&self, saved: &Saved, url: &str, incarnation: &Hlc, stream: &str) -> (u64, u64) {
        let mut best = (0, 0);
        let mut consider = |progress: Option<&StreamProgress>| {
            if let Some(p) = progress.filter(|p| p.incarnation == *incarnation) {
                best.0 = best.0.max(p.delivered);
                best.1 = best.1.max(p.lost);
            }
        };
        consider(saved.delivered.get(url).and_then(|s| s.get(stream)));
        if let Ok(others) = self.others.lock() {
            for (_, delivered) in others.values() {
                consider(delivered.get(url).and_then(|s| s.get(stream)));
            }
        }
        best
    }

    /// The delivery rounds this node owes now: for every active webhook and every
    /// stream held here that this node delivers, the next events after the cursor.
    pub fn due(&self, hub: &EventHub, membership: &Membership) -> Vec<Job> {
        let now = Instant::now();
        let transport = self.transport();
        let mut jobs = Vec::new();
        let Ok(mut saved) = self.saved.lock() else {
            return jobs;
        };
        let Ok(mut workers) = self.workers.lock() else {
            return jobs;
        };
        let hooks: Vec<(String, WebhookRecord)> = saved
            .set
            .existing()
            .map(|(url, r)| (url.clone(), r.clone()))
            .collect();
        // Cursors of webhooks gone or re-added are dropped.
        saved.delivered.retain(|url, streams| {
            hooks.iter().any(|(u, r)| {
                u == url && {
                    streams.retain(|_, p| p.incarnation == r.added);
                    true
                }
            })
        });
        workers.retain(|(url, _), _| hooks.iter().any(|(u, _)| u == url));
        // A live writer delivers its own streams: only this node's and those of dead
        // writers can be this node's to deliver.
        let candidates = hub.streams_where(|stream| {
            let writer = stream.split('@').next().unwrap_or(stream);
            writer == self.node_id || !membership.members.get(writer).is_some_and(|m| m.live)
        });
        for (url, record) in hooks {
            if record.state.val != DeliveryState::Active {
                continue;
            }
            for stream in &candidates {
                if deliverer(&url, stream, membership).as_deref() != Some(&self.node_id) {
                    continue;
                }
                let worker = workers
                    .entry((url.clone(), stream.clone()))
                    .or_insert(Worker {
                        busy: false,
                        attempts: 0,
                        next_try: now,
                    });
                if worker.busy || worker.next_try > now {
                    continue;
                }
                let (mut cursor, mut lost) = self.cursor(&saved, &url, &record.added, stream);
                let Some((floor, events)) = hub.after(stream, cursor, ROUND_EVENTS) else {
                    continue;
                };
                if floor > cursor + 1 {
                    let dropped = floor - 1 - cursor;
                    tracing::warn!(webhook = %url, stream, dropped, "events removed by retention before delivery: reported as lost");
                    lost += dropped;
                    cursor = floor - 1;
                }
                // Events before the webhook's add are not for it: passed over.
                let skip = events.iter().take_while(|e| e.hlc < record.added).count();
                if skip > 0 {
                    cursor = events[skip - 1].seq;
                }
                let progress = saved
                    .delivered
                    .entry(url.clone())
                    .or_default()
                    .entry(stream.clone())
                    .or_insert(StreamProgress {
                        incarnation: record.added.clone(),
                        delivered: 0,
                        lost: 0,
                        failing_since_ms: None,
                        last_error: None,
                    });
                progress.delivered = progress.delivered.max(cursor);
                progress.lost = progress.lost.max(lost);
                let events: Vec<Event> = events.into_iter().skip(skip).collect();
                if events.is_empty() {
                    continue;
                }
                worker.busy = true;
                jobs.push(Job {
                    url: url.clone(),
                    incarnation: record.added.clone(),
                    config: record.config.val.clone(),
                    stream: stream.clone(),
                    events,
                    transport: transport.clone(),
                });
            }
        }
        jobs
    }

    /// Records what a round achieved; a 410 or failing beyond the park bound changes
    /// the webhook's state (stamped with `stamp`). Returns whether the list changed.
    pub fn finish(&self, result: JobResult, now_ms: u64, stamp: impl FnOnce() -> Hlc) -> bool {
        let key = (result.url.clone(), result.stream.clone());
        let mut state_change = None;
        if let Ok(mut saved) = self.saved.lock() {
            let progress = saved
                .delivered
                .entry(result.url.clone())
                .or_default()
                .entry(result.stream.clone())
                .or_insert(StreamProgress {
                    incarnation: result.incarnation.clone(),
                    delivered: 0,
                    lost: 0,
                    failing_since_ms: None,
                    last_error: None,
                });
            if progress.incarnation != result.incarnation {
                return false;
            }
            if let Some(seq) = result.delivered {
                progress.delivered = progress.delivered.max(seq);
            }
            let mut attempts = 0;
            match &result.failure {
                None => {
                    progress.failing_since_ms = None;
                    progress.last_error = None;
                }
                Some((error, _, gone)) => {
                    tracing::warn!(webhook = %result.url, stream = %result.stream, %error, "webhook delivery failed");
                    let since = *progress.failing_since_ms.get_or_insert(now_ms);
                    progress.last_error = Some(error.clone());
                    if *gone {
                        state_change = Some(DeliveryState::Disabled(format!(
                            "the receiver answered 410 Gone: {error}"
                        )));
                    } else if now_ms.saturating_sub(since) > self.policy.park_after_ms {
                        state_change = Some(DeliveryState::Parked(format!(
                            "failing for {} (since {since} ms): {error}",
                            humantime::format_duration(Duration::from_secs(
                                now_ms.saturating_sub(since) / 1000
                            ))
                        )));
                    }
                }
            }
            if let Ok(mut workers) = self.workers.lock()
                && let Some(worker) = workers.get_mut(&key)
            {
                worker.busy = false;
                match &result.failure {
                    None => {
                        worker.attempts = 0;
                        worker.next_try = Instant::now();
                    }
                    Some((_, retry_after, _)) => {
                        worker.attempts = worker.attempts.saturating_add(1);
                        attempts = worker.attempts;
                        let delay = self
                            .backoff(&key, attempts)
                            .max(retry_after.unwrap_or_default().min(RETRY_AFTER_MAX));
                        worker.next_try = Instant::now() + delay;
                    }
                }
            }
            let _ = attempts;
        }
        let Some(state) = state_change else {
            self.persist();
            return false;
        };
        tracing::error!(webhook = %result.url, state = state.name(), "webhook no longer delivered until `georep webhook mod`");
        let url = result.url.clone();
        self.write(|set| set.set_state(&url, state, stamp()))
            .is_ok()
    }

    /// Capped exponential backoff with a deterministic +-25% jitter per stream.
    fn backoff(&self, key: &(String, String), attempts: u32) -> Duration {
        let exp = BACKOFF_BASE.saturating_mul(1 << attempts.saturating_sub(1).min(20));
        let capped = exp.min(self.policy.backoff_max);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(key.0.as_bytes());
        hasher.update(key.1.as_bytes());
        hasher.update(&attempts.to_le_bytes());
        let jitter = f64::from(hasher.finalize() % 500) / 1000.0 + 0.75;
        capped.mul_f64(jitter)
    }

    /// `webhook list`: every existing webhook with its delivery per stream held here.
    pub fn list(&self, hub: &EventHub, membership: &Membership) -> Vec<WebhookRow> {
        let Ok(saved) = self.saved.lock() else {
            return Vec::new();
        };
        let others = self.others.lock().map(|o| o.clone()).unwrap_or_default();
        let ranges = hub.ranges();
        saved
            .set
            .existing()
            .map(|(url, record)| {
                let mut streams = Vec::new();
                for stream in ranges.keys() {
                    let (delivered, lost) = self.cursor(&saved, url, &record.added, stream);
                    let delivering_node = deliverer(url, stream, membership);
                    let theirs = if delivering_node.as_deref() == Some(&self.node_id) {
                        saved
                            .delivered
                            .get(url)
                            .and_then(|s| s.get(stream))
                            .cloned()
                    } else {
                        delivering_node
                            .as_ref()
                            .and_then(|n| others.get(n))
                            .and_then(|(_, d)| d.get(url))
                            .and_then(|s| s.get(stream))
                            .cloned()
                    }
                    .filter(|p| p.incarnation == record.added);
                    streams.push(WebhookStreamRow {
                        stream: stream.clone(),
                        delivering_node,
                        delivered,
                        pending: hub.count_after(stream, delivered, &record.added),
                        lost,
                        failing_since_ms: theirs.as_ref().and_then(|p| p.failing_since_ms),
                        last_error: theirs.and_then(|p| p.last_error),
                    });
                }
                let mut delivering: Vec<String> = streams
                    .iter()
                    .filter_map(|s| s.delivering_node.clone())
                    .collect();
                delivering.sort();
                delivering.dedup();
                let (state, reason) = match &record.state.val {
                    DeliveryState::Active => ("active", None),
                    DeliveryState::Parked(r) => ("parked", Some(r.clone())),
                    DeliveryState::Disabled(r) => ("disabled", Some(r.clone())),
                };
                WebhookRow {
                    url: url.clone(),
                    format: record.config.val.format.name().to_string(),
                    auth: match record.config.val.auth {
                        Auth::None => "none",
                        Auth::Token(_) => "token",
                        Auth::Secret(_) => "secret",
                    }
                    .to_string(),
                    ca: record.config.val.ca_pem.is_some(),
                    state: state.to_string(),
                    state_reason: reason,
                    added: record.added.to_string(),
                    delivering_nodes: delivering,
                    cursor: streams
                        .iter()
                        .map(|s| format!("{}:{}", s.stream, s.delivered))
                        .collect::<Vec<_>>()
                        .join(","),
                    pending: streams.iter().map(|s| s.pending).sum(),
                    lost: streams.iter().map(|s| s.lost).sum(),
                    failing_since_ms: streams.iter().filter_map(|s| s.failing_since_ms).min(),
                    last_error: streams.iter().find_map(|s| s.last_error.clone()),
                    streams,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use georep_mesh::Member;

    fn membership(live: &[&str], dead: &[&str]) -> Membership {
        let member = |id: &str, live: bool| Member {
            node_id: id.to_string(),
            generation: 1,
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            live,
            scheduled_for_deletion: false,
            heartbeat: 1,
            last_heard_ms: Some(0),
            key_count: 0,
            max_version: 0,
            info: None,
            seen: Default::default(),
        };
        Membership {
            self_id: live[0].to_string(),
            members: live
                .iter()
                .map(|n| (n.to_string(), member(n, true)))
                .chain(dead.iter().map(|n| (n.to_string(), member(n, false))))
                .collect(),
        }
    }

    #[test]
    fn the_writer_delivers_while_live_else_one_live_node_by_hash() {
        let view = membership(&["n1", "n2", "n3"], &["n4"]);
        assert_eq!(deliverer("http://a/", "n2@7", &view).as_deref(), Some("n2"));
        let chosen = deliverer("http://a/", "n4@7", &view).unwrap();
        assert!(["n1", "n2", "n3"].contains(&chosen.as_str()));
        // Every observer with the same view agrees, and another dead stream may land
        // elsewhere (spread, not all on one node).
        assert_eq!(deliverer("http://a/", "n4@7", &view), Some(chosen));
        let spread: std::collections::BTreeSet<String> = (0..20)
            .filter_map(|i| deliverer("http://a/", &format!("n4@{i}"), &view))
            .collect();
        assert!(spread.len() > 1, "{spread:?}");
    }
}
