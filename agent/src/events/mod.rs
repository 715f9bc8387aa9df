//! The cluster-wide event stream.
//!
//! - `journal`: per-origin journals on disk, retention, gaps.
//! - `volumes`: volume status from the membership, and the VOLUME_* events of its
//!   changes.
//! - `flapping`: Kubernetes-style aggregation of a flapping source (counted, and
//!   reported by `EVENTS_SUPPRESSED` records, never dropped silently).
//!
//! Each node appends what it observes or causes to its own stream (`emit`): events
//! `(origin, epoch, seq)` with `seq` contiguous within the stream across restarts, an
//! HLC stamp, a type and a payload; a node that lost its journal starts a new stream
//! (a new epoch) instead of reusing seqs. Streams travel over the mesh, not inside
//! chitchat values: every node gossips, under its `ev` key, the range (floor, high) it
//! holds of its own stream, of orphans and of the streams of writers that are down,
//! and pulls what it lacks (newer, or older history below what it holds) from a live
//! node that has it with [`FrameKind::App`] frames (a `Pull` answered by a `Batch`).
//! Every node can so serve the merged stream ([`EventHub::read`]) in (HLC, stream,
//! seq) order from a per-stream cursor.
//!
//! [`FrameKind::App`]: georep_mesh::FrameKind::App

mod flapping;
mod journal;
pub mod volumes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use georep_api::types::{EventRow, GapRow, StreamItem};
use georep_mesh::{Hlc, Membership, MeshNode, OwnedValues, Received, codec};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

pub use journal::{Event, Retention};
use journal::{Journal, OriginLog, parse_stream, stream_id};

/// Owner-written key: the (floor, high) of this node's own streams.
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

/// Streams and the (floor, high) of each, as advertised.
type Ranges = BTreeMap<String, (u64, u64)>;

/// A position in the merged stream: per stream (`node@epoch`), the last seq delivered.
pub type Cursor = BTreeMap<String, u64>;

/// `n1@17:5,n2@18:7` -> cursor; `None` if malformed.
pub fn parse_cursor(text: &str) -> Option<Cursor> {
    let mut out = Cursor::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (stream, seq) = part.rsplit_once(':')?;
        parse_stream(stream)?;
        out.insert(stream.to_string(), seq.parse().ok()?);
    }
    Some(out)
}

/// The cursor as `n1@17:5,n2@18:7`.
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

/// One stream of a node's advertisement, parsed once when the advertisement changes
/// (a replication step runs many times per interval and reads every node's).
struct AdStream {
    stream: String,
    /// Length of its writer's id at the start of `stream`, and its epoch (`None`:
    /// not a stream id).
    writer: Option<(usize, u64)>,
    floor: u64,
    high: u64,
}

impl AdStream {
    fn writer(&self) -> Option<(&str, u64)> {
        self.writer
            .and_then(|(len, epoch)| Some((self.stream.get(..len)?, epoch)))
    }
}

/// Raises `map[key]` to at least `value` (inserting it if absent).
fn max_into(map: &mut BTreeMap<String, u64>, key: &str, value: u64) {
    match map.get_mut(key) {
        Some(at) => *at = (*at).max(value),
        None => {
            map.insert(key.to_string(), value);
        }
    }
}

/// One node's advertisement, parsed.
fn parse_ad(raw: &str) -> Option<Arc<[AdStream]>> {
    let ranges = codec::decode::<Ranges>(raw).ok()?;
    Some(
        ranges
            .into_iter()
            .map(|(stream, (floor, high))| AdStream {
                writer: parse_stream(&stream).map(|(w, e)| (w.len(), e)),
                stream,
                floor,
                high,
            })
            .collect(),
    )
}

/// The other nodes' advertisements, decoded: their streams by node, and per writer
/// the newest epoch any of them holds.
struct Advertised {
    advertised: Vec<(Arc<str>, Arc<[AdStream]>)>,
    epochs: BTreeMap<String, u64>,
    /// Per stream, the highest seq any of them holds.
    highs: BTreeMap<String, u64>,
}

/// A live node offering a stream: its (floor, high), address, and whether it is the
/// stream's writer.
type Offer = (u64, u64, SocketAddr, bool);

/// A node's advertisement as decoded: its stamp, the node, what it says.
type DecodedAd = ((u64, u64), Arc<str>, Arc<[AdStream]>);

/// This node's journals, their replication, and the merged stream.
pub struct EventHub {
    node_id: String,
    /// This node's current stream (`node@epoch`).
    own: String,
    epoch: u64,
    journal: Mutex<Journal>,
    /// Streams whose last pull went to the copy starting earliest because no live peer
    /// held what comes next: only their batches may skip ahead (a reported gap).
    may_skip: Mutex<std::collections::BTreeSet<String>>,
    /// Pulls in flight, by stream.
    in_flight: Mutex<BTreeMap<String, Instant>>,
    /// What this node last advertised under [`EVENTS_KEY`].
    advertised: Mutex<Option<String>>,
    /// Decoded advertisements, by node: the value's stamp (generation, version) and
    /// what it says.
    decoded: Mutex<BTreeMap<String, DecodedAd>>,
    /// Every node's advertisement, as last read.
    seen: Mutex<OwnedValues>,
    /// What `seen` says, decoded (rebuilt when it changes).
    ads: Mutex<Option<Arc<Advertised>>>,
    /// When retention was last applied.
    retention_at: Mutex<Option<Instant>>,
    /// Turns the choice of a peer to pull a dead writer's stream from.
    round: Mutex<u64>,
    /// Flapping sources and what they suppressed.
    flapping: Mutex<flapping::Flapping>,
    /// Woken when this node recorded an event (advertise it now).
    pub(crate) wake: tokio::sync::Notify,
    changed: watch::Sender<u64>,
    /// Bumped when this node recorded one of its own events.
    own_changed: watch::Sender<u64>,
}

impl EventHub {
    /// Opens the journals under `<data_dir>/events`. This node goes on writing its
    /// latest stream there, or starts a new one of epoch `generation` if it has none.
    pub fn open(
        data_dir: &Path,
        node_id: &str,
        generation: u64,
        retention: Retention,
    ) -> std::io::Result<Self> {
        let journal = Journal::open(&data_dir.join("events"), retention)?;
        let epoch = journal
            .logs()
            .keys()
            .filter_map(|s| parse_stream(s))
            .filter(|(node, _)| *node == node_id)
            .map(|(_, epoch)| epoch)
            .max()
            .unwrap_or(generation);
        Ok(Self {
            node_id: node_id.to_string(),
            own: stream_id(node_id, epoch),
            epoch,
            journal: Mutex::new(journal),
            may_skip: Mutex::new(std::collections::BTreeSet::new()),
            in_flight: Mutex::new(BTreeMap::new()),
            advertised: Mutex::new(None),
            round: Mutex::new(0),
            decoded: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(OwnedValues::default()),
            ads: Mutex::new(None),
            retention_at: Mutex::new(None),
            flapping: Mutex::new(flapping::Flapping::default()),
            wake: tokio::sync::Notify::new(),
            changed: watch::channel(0).0,
            own_changed: watch::channel(0).0,
        })
    }

    /// Notified whenever events were appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Notified whenever this node recorded one of its own events (what it delivers
    /// to webhooks while live; other streams are looked at on a timer).
    pub fn subscribe_own(&self) -> watch::Receiver<u64> {
        self.own_changed.subscribe()
    }

    /// Records an event of this node in its stream (fsync'd), unless it comes from a
    /// flapping source (then it is counted, see `flapping`).
    pub fn emit(&self, mesh: &MeshNode, kind: &str, message: BTreeMap<String, String>) {
        let now_ms = mesh.stamp().millis;
        let records = match self.flapping.lock() {
            Ok(mut flapping) => flapping.admit(kind, message, now_ms),
            Err(_) => vec![(kind.to_string(), message)],
        };
        for (kind, message) in records {
            self.append_own(mesh, &kind, message);
        }
    }

    /// Records the summaries of aggregation windows that ended.
    pub fn flush_flapping(&self, mesh: &MeshNode, now_ms: u64) {
        let records = self
            .flapping
            .lock()
            .map(|mut f| f.flush(now_ms))
            .unwrap_or_default();
        for (kind, message) in records {
            self.append_own(mesh, &kind, message);
        }
    }

    fn append_own(&self, mesh: &MeshNode, kind: &str, message: BTreeMap<String, String>) {
        let Ok(mut journal) = self.journal.lock() else {
            return;
        };
        let seq = journal.next_seq(&self.own);
        let event = Event {
            origin: self.node_id.clone(),
            epoch: self.epoch,
            seq,
            hlc: mesh.stamp(),
            kind: kind.to_string(),
            message,
        };
        match journal.append(&self.own, seq, std::slice::from_ref(&event), true) {
            Ok(1) => {
                tracing::debug!(event = kind, seq, "event recorded");
                drop(journal);
                self.changed.send_modify(|n| *n = n.wrapping_add(1));
                self.own_changed.send_modify(|n| *n = n.wrapping_add(1));
                self.wake.notify_one();
            }
            Ok(_) => tracing::warn!(event = kind, seq, "event not recorded: out of sequence"),
            Err(error) => tracing::error!(event = kind, %error, "cannot record an event"),
        }
    }

    /// One replication step: advertise the ranges of this node's own streams, of
    /// the *orphans* it holds (streams their writer no longer advertises: an epoch
    /// before a lost disk) and of the streams of writers that are down, so that the
    /// values gossiped stay O(N) cluster-wide while every node is up and every stream
    /// stays findable; then, for every advertised stream, pull what this
    /// node lacks: from its writer while it is live and holds it, else from a live
    /// node advertising it (each in turn); older history below what is held likewise.
    /// Also applies retention at HLC time `now_ms`.
    pub async fn sync(&self, mesh: &MeshNode, membership: &Membership, now_ms: u64) {
        // Retention at most once a second (this step runs many times per interval).
        let retention_due = self.retention_at.lock().is_ok_and(|mut at| {
            let due = at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if due {
                *at = Some(Instant::now());
            }
            due
        });
        if retention_due
            && let Ok(mut journal) = self.journal.lock()
            && let Err(error) = journal.enforce_retention(now_ms)
        {
            tracing::warn!(%error, "cannot apply event retention");
        }
        let mut theirs = self
            .seen
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        let changed = mesh.track_owned_value(EVENTS_KEY, &mut theirs).await;
        // Decoded once per value, and the per-node view rebuilt only when some value
        // changed (at hundreds of nodes this step runs many times per interval).
        let cached = self.ads.lock().ok().and_then(|ads| ads.clone());
        let ads = match cached {
            Some(ads) if !changed => Some(ads),
            _ => {
                let Ok(mut cache) = self.decoded.lock() else {
                    return;
                };
                cache.retain(|node, _| theirs.get(node).is_some());
                let advertised: Vec<(Arc<str>, Arc<[AdStream]>)> = theirs
                    .iter_stamped()
                    .filter(|(node, _, _)| *node != self.node_id)
                    .filter_map(|(node, stamp, raw)| match cache.get(node) {
                        Some((cached, node, streams)) if *cached == stamp => {
                            Some((node.clone(), streams.clone()))
                        }
                        _ => {
                            let streams = parse_ad(raw)?;
                            let id: Arc<str> = Arc::from(node);
                            cache.insert(node.to_string(), (stamp, id.clone(), streams.clone()));
                            Some((id, streams))
                        }
                    })
                    .collect();
                let mut epochs: BTreeMap<String, u64> = BTreeMap::new();
                let mut highs: BTreeMap<String, u64> = BTreeMap::new();
                for ad in advertised.iter().flat_map(|(_, streams)| streams.iter()) {
                    max_into(&mut highs, &ad.stream, ad.high);
                    if let Some((writer, epoch)) = ad.writer() {
                        max_into(&mut epochs, writer, epoch);
                    }
                }
                let ads = Some(Arc::new(Advertised {
                    advertised,
                    epochs,
                    highs,
                }));
                if let Ok(mut cached) = self.ads.lock() {
                    cached.clone_from(&ads);
                }
                ads
            }
        };
        let Some(ads) = ads else { return };
        if let Ok(mut seen) = self.seen.lock() {
            *seen = theirs;
        }
        let mine = self.journal.lock().map(|j| j.ranges()).unwrap_or_default();
        // Each stream held here with its writer and epoch, parsed once.
        let mine_parsed: Vec<(&String, Option<(&str, u64)>)> =
            mine.keys().map(|s| (s, parse_stream(s))).collect();
        // Each node's current epoch: the newest stream of it anyone knows of. Older
        // streams of a node are orphans (their writer lost them with a disk).
        let mut mine_epochs: BTreeMap<&str, u64> = BTreeMap::new();
        mine_epochs.insert(&self.node_id, self.epoch);
        for (writer, epoch) in mine_parsed.iter().filter_map(|(_, p)| *p) {
            let at = mine_epochs.entry(writer).or_insert(epoch);
            *at = (*at).max(epoch);
        }
        let current = |writer: &str| {
            let advertised = ads.epochs.get(writer).copied();
            let held = mine_epochs.get(writer).copied();
            advertised.max(held)
        };
        let orphan = |parsed: Option<(&str, u64)>| {
            parsed.is_some_and(|(w, e)| current(w).is_some_and(|c| e < c))
        };
        // Advertised: this node's current stream, and every orphan it holds.
        // (The current stream even before its first event: so that the others learn
        // the new epoch, and advertise the old one as an orphan this node can fetch.)
        let empty = (1, 0);
        // A down writer's current stream is advertised by whoever holds it, too: else
        // the node that delivers it to webhooks meanwhile could not complete its copy.
        let writer_down = |parsed: Option<(&str, u64)>| {
            parsed.is_some_and(|(w, _)| {
                w != self.node_id && !membership.members.get(w).is_some_and(|m| m.live)
            })
        };
        let mut ours: BTreeMap<&String, &(u64, u64)> = mine_parsed
            .iter()
            .filter(|(stream, parsed)| {
                **stream == self.own || orphan(*parsed) || writer_down(*parsed)
            })
            .filter_map(|(stream, _)| Some((*stream, mine.get(*stream)?)))
            .collect();
        ours.entry(&self.own).or_insert(&empty);
        if let Ok(value) = codec::encode(&ours) {
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
        // Per stream: who advertises it (live nodes only), the writer first; in
        // stream order, then node order.
        let mut offers: Vec<(&str, Offer)> = Vec::new();
        for (node, streams) in &ads.advertised {
            let Some(member) = membership.members.get(&**node).filter(|m| m.live) else {
                continue;
            };
            for ad in streams.iter() {
                let parsed = ad.writer();
                let by_writer = !orphan(parsed) && parsed.is_some_and(|(w, _)| w == &**node);
                offers.push((
                    ad.stream.as_str(),
                    (ad.floor, ad.high, member.gossip_addr, by_writer),
                ));
            }
        }
        offers.sort_by(|a, b| a.0.cmp(b.0));
        let holders = offers
            .chunk_by(|a, b| a.0 == b.0)
            .filter_map(|group| Some((group.first()?.0, group)));
        let now = Instant::now();
        let mut round = self
            .round
            .lock()
            .map(|mut r| {
                *r = r.wrapping_add(1);
                *r
            })
            .unwrap_or(0);
        for (stream, group) in holders {
            let (my_floor, have) = mine.get(stream).copied().unwrap_or((1, 0));
            let peers = || group.iter().map(|(_, peer)| *peer);
            let source = match peers().find(|p| p.3) {
                Some(writer) => Some(writer),
                None => {
                    let best = peers().map(|p| p.1).max().unwrap_or(0);
                    let top = || peers().filter(move |p| p.1 == best);
                    round = round.wrapping_add(1);
                    match top().count() {
                        0 => None,
                        n => top().nth(round as usize % n),
                    }
                }
            };
            let Some((floor, high, addr, _)) = source else {
                continue;
            };
            if high > have && self.due(stream, now) {
                // Skip ahead only when the source holds nothing older than that.
                if let Ok(mut may_skip) = self.may_skip.lock() {
                    if floor > have + 1 {
                        may_skip.insert(stream.to_string());
                    } else {
                        may_skip.remove(stream);
                    }
                }
                self.send_pull(mesh, addr, stream, have + 1);
            }
            if have >= my_floor && floor < my_floor && self.due(&format!("{stream}<"), now) {
                let from = floor.max(my_floor.saturating_sub(BATCH_EVENTS as u64));
                self.send_pull(mesh, addr, stream, from);
            }
        }
    }

    /// Whether a pull for `flight` may go now (none in flight, or it timed out); if so
    /// it is recorded as in flight.
    fn due(&self, flight: &str, now: Instant) -> bool {
        self.in_flight.lock().is_ok_and(|mut flights| {
            let due = flights
                .get(flight)
                .is_none_or(|sent| now.duration_since(*sent) > PULL_TIMEOUT);
            if due {
                flights.insert(flight.to_string(), now);
            }
            due
        })
    }

    fn send_pull(&self, mesh: &MeshNode, to: SocketAddr, stream: &str, from: u64) {
        let pull = AppMsg::Pull {
            origin: stream.to_string(),
            from,
        };
        if let Ok(payload) = postcard::to_stdvec(&pull) {
            mesh.send_app(to, payload);
        }
    }

    /// Events held here and their bytes on disk, over every stream.
    pub fn size(&self) -> (u64, u64) {
        self.journal
            .lock()
            .map(|j| {
                j.logs()
                    .values()
                    .map(OriginLog::size)
                    .fold((0, 0), |(e, b), (e2, b2)| (e + e2, b + b2))
            })
            .unwrap_or_default()
    }

    /// Every stream held here: (floor, high).
    pub fn ranges(&self) -> BTreeMap<String, (u64, u64)> {
        self.journal.lock().map(|j| j.ranges()).unwrap_or_default()
    }

    /// The streams held here that `keep` accepts (without copying the others).
    pub fn streams_where(&self, mut keep: impl FnMut(&str) -> bool) -> Vec<String> {
        self.journal
            .lock()
            .map(|j| j.logs().keys().filter(|s| keep(s)).cloned().collect())
            .unwrap_or_default()
    }

    /// Up to `limit` events of `stream` after seq `after`, and the stream's floor here
    /// (the oldest seq held); `None` if this node holds nothing of it.
    pub fn after(&self, stream: &str, after: u64, limit: usize) -> Option<(u64, Vec<Event>)> {
        let journal = self.journal.lock().ok()?;
        let log = journal.log(stream)?;
        Some((log.floor(), log.from(after + 1, limit).cloned().collect()))
    }

    /// How many events of `stream` after seq `after` are stamped at or after `since`.
    pub fn count_after(&self, stream: &str, after: u64, since: &Hlc) -> u64 {
        self.journal
            .lock()
            .ok()
            .and_then(|j| {
                j.log(stream).map(|log| {
                    log.from(after + 1, usize::MAX)
                        .filter(|e| e.hlc >= *since)
                        .count()
                })
            })
            .unwrap_or(0) as u64
    }

    /// Handles a journal frame from a peer; returns whether a replication step should
    /// follow soon: events were appended and more is known to exist.
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
                if parse_stream(&origin).is_none() {
                    return false;
                }
                let appended = self.journal.lock().map_err(|_| ()).and_then(|mut j| {
                    let may_skip = self.may_skip.lock().is_ok_and(|m| m.contains(&origin));
                    let floor = if may_skip { floor } else { 0 };
                    let before = j.append(&origin, floor, &events, false).map_err(|_| ())?;
                    let older = j.prepend(&origin, &events).map_err(|_| ())?;
                    let high = j.log(&origin).map_or(0, OriginLog::high);
                    Ok((before, older, high))
                });
                match appended {
                    Ok((before, older, high)) if before + older > 0 => {
                        // Progress: the next pull may go at once. (A batch that added
                        // nothing leaves its pull in flight until it times out, so two
                        // nodes never ping-pong pulls and batches without time passing.)
                        if let Ok(mut flights) = self.in_flight.lock() {
                            flights.remove(&origin);
                            flights.remove(&format!("{origin}<"));
                        }
                        self.changed.send_modify(|n| *n = n.wrapping_add(1));
                        // A step soon only if there is more to pull: older history
                        // came (what precedes it may be missing too), or someone
                        // advertises more of the stream than this node now holds.
                        // Else the periodic step is enough (at hundreds of nodes,
                        // a step per batch was most of the agent's CPU).
                        older > 0
                            || self.ads.lock().is_ok_and(|ads| {
                                ads.as_ref()
                                    .and_then(|a| a.highs.get(&origin))
                                    .is_some_and(|h| *h > high)
                            })
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
        for (stream, log) in journal.logs() {
            let after = cursor.get(stream).copied().unwrap_or(0);
            let node = parse_stream(stream).map(|(node, _)| node);
            if filter.node.as_deref().is_none_or(|n| Some(n) == node) && after + 1 < log.floor() {
                items.push(StreamItem::Gap {
                    gap: GapRow {
                        origin: stream.clone(),
                        from: after + 1,
                        to: log.floor() - 1,
                        reason: "retention".into(),
                    },
                });
            }
            candidates.extend(log.from(after + 1, usize::MAX));
        }
        candidates.sort_by(|a, b| {
            (&a.hlc, &a.origin, a.epoch, a.seq).cmp(&(&b.hlc, &b.origin, b.epoch, b.seq))
        });
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
            next.insert(event.stream(), event.seq);
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
        id: format!("{}:{}", event.stream(), event.seq),
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
        let cursor: Cursor = [("n1@17".to_string(), 5), ("n2@3".to_string(), 7)].into();
        assert_eq!(format_cursor(&cursor), "n1@17:5,n2@3:7");
        assert_eq!(parse_cursor("n1@17:5,n2@3:7"), Some(cursor));
        assert_eq!(parse_cursor(""), Some(Cursor::new()));
        assert_eq!(parse_cursor("n1@17:x"), None);
        assert_eq!(parse_cursor("n1:5"), None);
        assert_eq!(parse_cursor("-rf@1:1"), None);
    }
}
