//! The cluster-wide event stream.
//!
//! - `journal`: per-origin journals on disk, retention, gaps.
//!
//! Each node appends what it observes or causes to its own journal (`emit`), as
//! `(origin, seq)` with `seq` contiguous per origin across restarts, an HLC stamp, a
//! type and a payload. Journals travel over the mesh, not inside chitchat values: every
//! node gossips, under its `ev` key, the range (floor, high) it holds of every origin,
//! and pulls what it lacks from a live node that has it with [`FrameKind::App`]
//! frames (a `Pull` answered by a `Batch`). Every node can so serve the merged stream
//! ([`EventHub::read`]) in (HLC, origin, seq) order from a per-origin cursor.
//!
//! [`FrameKind::App`]: georep_mesh::FrameKind::App

mod journal;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use georep_api::types::{EventRow, GapRow, StreamItem};
use georep_mesh::{Hlc, Membership, MeshNode, Received, codec};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use journal::Journal;
pub use journal::{Event, Retention};

/// Owner-written key: the ranges of every origin's journal this node holds.
pub const EVENTS_KEY: &str = "ev";
/// At most this many events per batch.
const BATCH_EVENTS: usize = 256;
/// A pull not answered within this is sent again (to whoever has the range then).
const PULL_TIMEOUT: Duration = Duration::from_secs(2);

/// What nodes say to each other about journals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AppMsg {
    /// Send me `origin`'s events from seq `from` on.
    Pull { origin: String, from: u64 },
    /// `origin`'s events, the sender holding nothing of it below `floor`.
    Batch {
        origin: String,
        floor: u64,
        events: Vec<Event>,
    },
}

/// A position in the merged stream: per origin, the last seq delivered.
pub type Cursor = BTreeMap<String, u64>;

/// `n1:5,n2:7` -> cursor; `None` if malformed.
pub fn parse_cursor(text: &str) -> Option<Cursor> {
    let mut out = Cursor::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (origin, seq) = part.rsplit_once(':')?;
        georep_mesh::validate_node_id(origin).ok()?;
        out.insert(origin.to_string(), seq.parse().ok()?);
    }
    Some(out)
}

/// The cursor as `n1:5,n2:7`.
pub fn format_cursor(cursor: &Cursor) -> String {
    cursor
        .iter()
        .map(|(origin, seq)| format!("{origin}:{seq}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// What a reader asks for besides the cursor.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these types (empty: all).
    pub types: Vec<String>,
    /// Only events of this session (`primary`, `secondary` keys).
    pub session: Option<(String, String)>,
    /// Only events recorded by this node.
    pub node: Option<String>,
    /// Only events stamped at or after this HLC.
    pub after: Option<Hlc>,
}

impl Filter {
    fn admits(&self, event: &Event) -> bool {
        (self.types.is_empty() || self.types.contains(&event.kind))
            && self.node.as_ref().is_none_or(|n| *n == event.origin)
            && self.after.as_ref().is_none_or(|h| event.hlc >= *h)
            && self.session.as_ref().is_none_or(|(p, s)| {
                event.message.get("primary") == Some(p) && event.message.get("secondary") == Some(s)
            })
    }
}

/// An event emitted before its seq can be given: type and payload.
type Queued = (String, BTreeMap<String, String>);

/// This node's journals, their replication, and the merged stream.
pub struct EventHub {
    node_id: String,
    journal: Mutex<Journal>,
    /// Events emitted before the agent caught up with its peers (their seqs are given
    /// once it knows the highest seq of its own any peer holds: a node that lost its
    /// disk must not reuse seqs).
    pending: Mutex<Option<Vec<Queued>>>,
    /// The highest seq of this node's own journal any peer advertises.
    own_high_elsewhere: Mutex<u64>,
    /// Pulls in flight, by origin.
    in_flight: Mutex<BTreeMap<String, Instant>>,
    /// What this node last advertised under [`EVENTS_KEY`].
    advertised: Mutex<Option<String>>,
    changed: watch::Sender<u64>,
}

impl EventHub {
    /// Opens the journals under `<data_dir>/events`.
    pub fn open(data_dir: &Path, node_id: &str, retention: Retention) -> std::io::Result<Self> {
        let journal = Journal::open(&data_dir.join("events"), retention)?;
        Ok(Self {
            node_id: node_id.to_string(),
            journal: Mutex::new(journal),
            pending: Mutex::new(Some(Vec::new())),
            own_high_elsewhere: Mutex::new(0),
            in_flight: Mutex::new(BTreeMap::new()),
            advertised: Mutex::new(None),
            changed: watch::channel(0).0,
        })
    }

    /// Notified whenever events were appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Records an event of this node (queued until [`Self::ready`]).
    pub fn emit(&self, mesh: &MeshNode, kind: &str, message: BTreeMap<String, String>) {
        if let Ok(mut pending) = self.pending.lock()
            && let Some(queue) = pending.as_mut()
        {
            queue.push((kind.to_string(), message));
            return;
        }
        self.append_own(mesh, kind, message);
    }

    fn append_own(&self, mesh: &MeshNode, kind: &str, message: BTreeMap<String, String>) {
        let elsewhere = self.own_high_elsewhere.lock().map_or(0, |h| *h);
        let Ok(mut journal) = self.journal.lock() else {
            return;
        };
        let seq = journal.next_seq(&self.node_id).max(elsewhere + 1);
        let event = Event {
            origin: self.node_id.clone(),
            seq,
            hlc: mesh.stamp(),
            kind: kind.to_string(),
            message,
        };
        match journal.append(&self.node_id, seq, std::slice::from_ref(&event), true) {
            Ok(1) => {
                tracing::debug!(event = kind, seq, "event recorded");
                drop(journal);
                self.changed.send_modify(|n| *n = n.wrapping_add(1));
            }
            Ok(_) => tracing::warn!(event = kind, seq, "event not recorded: out of sequence"),
            Err(error) => tracing::error!(event = kind, %error, "cannot record an event"),
        }
    }

    /// The agent caught up with its peers: queued events get their seqs now.
    pub fn ready(&self, mesh: &MeshNode) {
        let queued = self.pending.lock().ok().and_then(|mut p| p.take());
        for (kind, message) in queued.unwrap_or_default() {
            self.append_own(mesh, &kind, message);
        }
    }

    /// One replication step: advertise what this node holds, note what peers hold of
    /// its own journal, pull what it lacks from live peers that have it, and apply
    /// retention at HLC time `now_ms`.
    pub async fn sync(&self, mesh: &MeshNode, membership: &Membership, now_ms: u64) {
        if let Ok(mut journal) = self.journal.lock()
            && let Err(error) = journal.enforce_retention(now_ms)
        {
            tracing::warn!(%error, "cannot apply event retention");
        }
        let mine = self.journal.lock().map(|j| j.ranges()).unwrap_or_default();
        if let Ok(value) = codec::encode(&mine) {
            let changed = self
                .advertised
                .lock()
                .is_ok_and(|last| last.as_ref() != Some(&value));
            if changed {
                mesh.set_owned(EVENTS_KEY, value.clone()).await;
                if let Ok(mut last) = self.advertised.lock() {
                    *last = Some(value);
                }
            }
        }
        let theirs = mesh.owned_values(EVENTS_KEY).await;
        // Per origin: the live peer holding the most of it (lowest id on ties).
        let mut best: BTreeMap<String, (u64, u64, SocketAddr)> = BTreeMap::new();
        for (node, values) in &theirs {
            if *node == self.node_id {
                continue;
            }
            let Some(member) = membership.members.get(node).filter(|m| m.live) else {
                continue;
            };
            let Some(ranges) = values
                .get(EVENTS_KEY)
                .and_then(|v| codec::decode::<BTreeMap<String, (u64, u64)>>(v).ok())
            else {
                continue;
            };
            for (origin, (floor, high)) in ranges {
                if origin == self.node_id
                    && let Ok(mut own) = self.own_high_elsewhere.lock()
                {
                    *own = (*own).max(high);
                }
                let better = best.get(&origin).is_none_or(|(_, h, _)| high > *h);
                if better {
                    best.insert(origin, (floor, high, member.gossip_addr));
                }
            }
        }
        let now = Instant::now();
        for (origin, (_floor, high, addr)) in best {
            let have = mine.get(&origin).map_or(0, |(_, h)| *h);
            if high <= have {
                continue;
            }
            let due = self.in_flight.lock().is_ok_and(|mut flights| {
                let due = flights
                    .get(&origin)
                    .is_none_or(|sent| now.duration_since(*sent) > PULL_TIMEOUT);
                if due {
                    flights.insert(origin.clone(), now);
                }
                due
            });
            if !due {
                continue;
            }
            let pull = AppMsg::Pull {
                origin: origin.clone(),
                from: have + 1,
            };
            if let Ok(payload) = postcard::to_stdvec(&pull) {
                mesh.send_app(addr, payload);
            }
        }
    }

    /// Handles a journal frame from a peer; returns whether events were appended.
    pub fn handle(&self, mesh: &MeshNode, received: &Received) -> bool {
        let Ok(message) = postcard::from_bytes::<AppMsg>(&received.frame.payload) else {
            tracing::debug!(from = %received.peer_node, "undecodable journal frame ignored");
            return false;
        };
        match message {
            AppMsg::Pull { origin, from } => {
                let reply = self.journal.lock().ok().and_then(|journal| {
                    let log = journal.log(&origin)?;
                    let events: Vec<Event> = log.from(from, BATCH_EVENTS).cloned().collect();
                    (!events.is_empty()).then(|| AppMsg::Batch {
                        origin,
                        floor: log.floor(),
                        events,
                    })
                });
                if let Some(payload) = reply.and_then(|r| postcard::to_stdvec(&r).ok()) {
                    mesh.send_app(received.from, payload);
                }
                false
            }
            AppMsg::Batch {
                origin,
                floor,
                events,
            } => {
                if georep_mesh::validate_node_id(&origin).is_err() {
                    return false;
                }
                if let Ok(mut flights) = self.in_flight.lock() {
                    flights.remove(&origin);
                }
                let appended = self
                    .journal
                    .lock()
                    .map_err(|_| ())
                    .and_then(|mut j| j.append(&origin, floor, &events, false).map_err(|_| ()));
                match appended {
                    Ok(n) if n > 0 => {
                        self.changed.send_modify(|n| *n = n.wrapping_add(1));
                        true
                    }
                    _ => false,
                }
            }
        }
    }

    /// The merged stream after `cursor`: gaps first (ranges below what is held), then
    /// events in (HLC, origin, seq) order; at most `limit` events. Returns the items and
    /// the cursor after them (it moves past filtered-out events too).
    pub fn read(
        &self,
        cursor: &Cursor,
        filter: &Filter,
        limit: usize,
    ) -> (Vec<StreamItem>, Cursor) {
        let Ok(journal) = self.journal.lock() else {
            return (Vec::new(), cursor.clone());
        };
        let mut items = Vec::new();
        let mut candidates: Vec<&Event> = Vec::new();
        for (origin, log) in journal.logs() {
            let after = cursor.get(origin).copied().unwrap_or(0);
            if filter.node.as_ref().is_none_or(|n| n == origin) && after + 1 < log.floor() {
                items.push(StreamItem::Gap {
                    gap: GapRow {
                        origin: origin.clone(),
                        from: after + 1,
                        to: log.floor() - 1,
                        reason: "retention".into(),
                    },
                });
            }
            candidates.extend(log.from(after + 1, usize::MAX));
        }
        candidates.sort_by(|a, b| (&a.hlc, &a.origin, a.seq).cmp(&(&b.hlc, &b.origin, b.seq)));
        let mut next = cursor.clone();
        for log_origin in journal.logs().keys() {
            if let Some(log) = journal.log(log_origin) {
                let at = next.entry(log_origin.clone()).or_insert(0);
                if *at + 1 < log.floor() {
                    *at = log.floor() - 1;
                }
            }
        }
        let mut taken = 0;
        for event in candidates {
            if taken >= limit {
                break;
            }
            next.insert(event.origin.clone(), event.seq);
            if filter.admits(event) {
                items.push(StreamItem::Event(row(event, &next)));
                taken += 1;
            }
        }
        (items, next)
    }
}

fn row(event: &Event, cursor: &Cursor) -> EventRow {
    EventRow {
        id: format!("{}:{}", event.origin, event.seq),
        origin: event.origin.clone(),
        seq: event.seq,
        hlc: event.hlc.to_string(),
        ts: event.hlc.millis / 1000,
        event: event.kind.clone(),
        message: event.message.clone(),
        cursor: format_cursor(cursor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let cursor: Cursor = [("n1".to_string(), 5), ("n2".to_string(), 7)].into();
        assert_eq!(format_cursor(&cursor), "n1:5,n2:7");
        assert_eq!(parse_cursor("n1:5,n2:7"), Some(cursor));
        assert_eq!(parse_cursor(""), Some(Cursor::new()));
        assert_eq!(parse_cursor("n1:x"), None);
        assert_eq!(parse_cursor("-rf:1"), None);
    }
}
