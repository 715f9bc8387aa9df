//! Event journals on disk, one per *stream*: `<data-dir>/events/<node>@<epoch>.log`,
//! each an append-only file of framed records (`u32` length, postcard [`Event`], `u32`
//! CRC-32 of both), read back at start (a torn last record is cut off). A node writes
//! one stream per epoch: the epoch is its chitchat generation when it found no journal
//! of its own (first start, or a lost disk), so seqs are never reused. One contiguous
//! range of seqs per stream; retention by size and age drops the oldest events (never
//! the newest: it carries the next seq across restarts), and readers whose cursor is
//! below what is held get a gap, never a silent skip.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use georep_mesh::Hlc;
use serde::{Deserialize, Serialize};

/// One journaled event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The node that recorded it.
    pub origin: String,
    /// The origin's journal epoch (see the module doc).
    pub epoch: u64,
    /// Its position in the stream.
    pub seq: u64,
    /// When (HLC of the origin).
    pub hlc: Hlc,
    /// Type (`GEOREP_START`, ...).
    pub kind: String,
    /// Payload.
    pub message: BTreeMap<String, String>,
}

impl Event {
    /// The stream it belongs to: `<origin>@<epoch>`.
    pub fn stream(&self) -> String {
        stream_id(&self.origin, self.epoch)
    }
}

/// `<node>@<epoch>`.
pub fn stream_id(node: &str, epoch: u64) -> String {
    format!("{node}@{epoch}")
}

/// The node and epoch of a stream id, if it is one.
pub fn parse_stream(stream: &str) -> Option<(&str, u64)> {
    let (node, epoch) = stream.rsplit_once('@')?;
    georep_mesh::validate_node_id(node).ok()?;
    Some((node, epoch.parse().ok()?))
}

/// Retention limits per stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Bytes of journal per origin before the oldest events go.
    pub max_bytes: u64,
    /// Age (HLC milliseconds) beyond which events go.
    pub max_age_ms: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_age_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// One origin's held events.
#[derive(Debug, Default)]
pub struct OriginLog {
    events: VecDeque<(Event, u64)>,
    /// The seq the next event must have.
    next: u64,
    bytes: u64,
}

impl OriginLog {
    /// The first seq held (`next` when empty).
    pub fn floor(&self) -> u64 {
        self.events.front().map_or(self.next, |(e, _)| e.seq)
    }

    /// The last seq held or known (0: none ever).
    pub fn high(&self) -> u64 {
        self.next.saturating_sub(1)
    }

    /// Events held and their bytes on disk.
    pub fn size(&self) -> (u64, u64) {
        (self.events.len() as u64, self.bytes)
    }

    /// Events with seq >= `from`, at most `max`.
    pub fn from(&self, from: u64, max: usize) -> impl Iterator<Item = &Event> {
        let skip = from.saturating_sub(self.floor()) as usize;
        self.events.iter().skip(skip).take(max).map(|(e, _)| e)
    }
}

/// Every origin's journal held by this node.
pub struct Journal {
    dir: PathBuf,
    retention: Retention,
    logs: BTreeMap<String, OriginLog>,
}

fn frame(event: &Event) -> io::Result<Vec<u8>> {
    let body = postcard::to_stdvec(event)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "event too large"))?;
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Replaces the file at `path` with exactly what `log` holds (after dropping or
/// putting events in front, which appending cannot express).
fn rewrite(path: &Path, log: &OriginLog) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(log.bytes as usize);
    for (event, _) in &log.events {
        bytes.extend_from_slice(&frame(event)?);
    }
    georep_store::write_atomic(path, &bytes)
}

/// The records of a journal file, up to the first torn or corrupt one, and the byte
/// length of the good prefix.
fn read_records(bytes: &[u8]) -> (Vec<(Event, u64)>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 8 {
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[at..at + 4]);
        let len = u32::from_le_bytes(len) as usize;
        let end = at + 4 + len;
        if bytes.len() < end + 4 {
            break;
        }
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&bytes[end..end + 4]);
        if crc32fast::hash(&bytes[at..end]) != u32::from_le_bytes(crc) {
            break;
        }
        let Ok(event) = postcard::from_bytes::<Event>(&bytes[at + 4..end]) else {
            break;
        };
        out.push((event, (len + 8) as u64));
        at = end + 4;
    }
    (out, at)
}

impl Journal {
    /// Opens (creating) the journals under `dir`.
    pub fn open(dir: &Path, retention: Retention) -> io::Result<Journal> {
        fs::create_dir_all(dir)?;
        let mut logs = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(origin) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".log"))
            else {
                continue;
            };
            if parse_stream(origin).is_none() {
                continue;
            }
            let bytes = fs::read(&path)?;
            let (records, good) = read_records(&bytes);
            if good < bytes.len() {
                tracing::warn!(file = %path.display(), kept = good, dropped = bytes.len() - good, "cutting a torn or corrupt end off an event journal");
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(good as u64)?;
            }
            let mut log = OriginLog::default();
            for (event, size) in records {
                if event.stream() != origin || (!log.events.is_empty() && event.seq != log.next) {
                    tracing::warn!(file = %path.display(), seq = event.seq, "event out of sequence in a journal; the rest is pulled again from peers");
                    break;
                }
                log.next = event.seq + 1;
                log.bytes += size;
                log.events.push_back((event, size));
            }
            logs.insert(origin.to_string(), log);
        }
        Ok(Journal {
            dir: dir.to_path_buf(),
            retention,
            logs,
        })
    }

    fn path(&self, origin: &str) -> PathBuf {
        self.dir.join(format!("{origin}.log"))
    }

    /// Origins held, each with (floor, high).
    pub fn ranges(&self) -> BTreeMap<String, (u64, u64)> {
        self.logs
            .iter()
            .map(|(origin, log)| (origin.clone(), (log.floor(), log.high())))
            .collect()
    }

    /// One origin's log.
    pub fn log(&self, origin: &str) -> Option<&OriginLog> {
        self.logs.get(origin)
    }

    /// Every origin's log.
    pub fn logs(&self) -> &BTreeMap<String, OriginLog> {
        &self.logs
    }

    /// The seq `origin`'s next event gets.
    pub fn next_seq(&self, origin: &str) -> u64 {
        self.logs.get(origin).map_or(1, |l| l.next.max(1))
    }

    /// Appends `events` of one origin (contiguous, starting at its next seq, or, if
    /// `floor` says the sender holds nothing older, after a hole: then what was held of
    /// that origin is dropped and readers get a gap). `durable`: fsync before
    /// returning. Returns how many were appended.
    pub fn append(
        &mut self,
        origin: &str,
        floor: u64,
        events: &[Event],
        durable: bool,
    ) -> io::Result<usize> {
        let path = self.path(origin);
        let log = self.logs.entry(origin.to_string()).or_default();
        if log.next == 0 {
            log.next = 1;
        }
        let Some(first) = events.first() else {
            return Ok(0);
        };
        if first.seq > log.next {
            // The sender no longer holds what we lack: start again at its floor.
            if floor > log.next && first.seq == floor {
                log.events.clear();
                log.bytes = 0;
                log.next = floor;
                let _ = fs::remove_file(&path);
            } else {
                return Ok(0);
            }
        }
        let mut file: Option<File> = None;
        let mut appended = 0;
        for event in events {
            if event.seq < log.next {
                continue;
            }
            if event.seq != log.next || event.stream() != origin {
                break;
            }
            let bytes = frame(event)?;
            let out = match &mut file {
                Some(f) => f,
                None => file.insert(OpenOptions::new().create(true).append(true).open(&path)?),
            };
            out.write_all(&bytes)?;
            log.next += 1;
            log.bytes += bytes.len() as u64;
            log.events.push_back((event.clone(), bytes.len() as u64));
            appended += 1;
        }
        if durable && let Some(f) = &file {
            f.sync_data()?;
        }
        Ok(appended)
    }

    /// Puts `events` of `origin` that end right below what is held in front of it (a
    /// node that lost its disk fetching its own, or anyone's, older history back).
    /// Returns how many were added; rewrites the origin's file when any were.
    pub fn prepend(&mut self, origin: &str, events: &[Event]) -> io::Result<usize> {
        let path = self.path(origin);
        let Some(log) = self.logs.get_mut(origin) else {
            return Ok(0);
        };
        let floor = log.floor();
        let below: Vec<&Event> = events
            .iter()
            .filter(|e| e.seq < floor && e.stream() == origin)
            .collect();
        let contiguous = below.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        if below.is_empty() || !contiguous || below.last().map(|e| e.seq + 1) != Some(floor) {
            return Ok(0);
        }
        for event in below.iter().rev() {
            let size = frame(event)?.len() as u64;
            log.bytes += size;
            log.events.push_front(((*event).clone(), size));
        }
        rewrite(&path, log)?;
        Ok(below.len())
    }

    /// Applies retention to every origin at HLC time `now_ms`: the oldest events go
    /// while over the byte limit (down to three quarters of it) or older than the age
    /// limit, never the newest. Rewrites the files that changed.
    pub fn enforce_retention(&mut self, now_ms: u64) -> io::Result<()> {
        let retention = self.retention;
        let too_old = |e: &Event| now_ms.saturating_sub(e.hlc.millis) > retention.max_age_ms;
        // Only the logs over a limit (this runs every second over every stream).
        let due: Vec<String> = self
            .logs
            .iter()
            .filter(|(_, log)| {
                log.bytes > retention.max_bytes
                    || log.events.front().is_some_and(|(e, _)| too_old(e))
            })
            .map(|(origin, _)| origin.clone())
            .collect();
        for origin in due {
            let path = self.path(&origin);
            let Some(log) = self.logs.get_mut(&origin) else {
                continue;
            };
            let over = log.bytes > retention.max_bytes;
            let target = if over {
                retention.max_bytes / 4 * 3
            } else {
                u64::MAX
            };
            let mut dropped = 0;
            while log.events.len() > 1 {
                let Some((front, size)) = log.events.front() else {
                    break;
                };
                if log.bytes > target || too_old(front) {
                    log.bytes -= size;
                    log.events.pop_front();
                    dropped += 1;
                } else {
                    break;
                }
            }
            if dropped == 0 {
                continue;
            }
            tracing::info!(%origin, dropped, floor = log.floor(), "event retention dropped the oldest events");
            rewrite(&path, log)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stream: &str, seq: u64, millis: u64) -> Event {
        let (origin, epoch) = parse_stream(stream).unwrap();
        Event {
            origin: origin.into(),
            epoch,
            seq,
            hlc: Hlc::new(millis, 0, origin),
            kind: "GEOREP_START".into(),
            message: [("primary".to_string(), "gv0".to_string())].into(),
        }
    }

    #[test]
    fn appends_survive_a_reopen_and_a_torn_end_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), Retention::default()).unwrap();
        assert_eq!(j.next_seq("n1@7"), 1);
        let batch: Vec<Event> = (1..=3).map(|s| event("n1@7", s, s)).collect();
        assert_eq!(j.append("n1@7", 1, &batch, true).unwrap(), 3);
        // Not contiguous: refused.
        assert_eq!(
            j.append("n1@7", 1, &[event("n1@7", 9, 9)], true).unwrap(),
            0
        );
        // A duplicate is skipped.
        assert_eq!(j.append("n1@7", 1, &batch[2..], true).unwrap(), 0);
        let path = dir.path().join("n1@7.log");
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[7, 0, 0, 0, 1, 2]);
        fs::write(&path, &bytes).unwrap();
        let j = Journal::open(dir.path(), Retention::default()).unwrap();
        assert_eq!(j.next_seq("n1@7"), 4);
        assert_eq!(j.ranges()["n1@7"], (1, 3));
        assert_eq!(fs::read(&path).unwrap().len(), bytes.len() - 6);
    }

    #[test]
    fn retention_drops_the_oldest_keeps_the_newest_and_a_peer_floor_opens_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            max_bytes: 400,
            max_age_ms: 1_000,
        };
        let mut j = Journal::open(dir.path(), retention).unwrap();
        let batch: Vec<Event> = (1..=20).map(|s| event("n1@7", s, 100 * s)).collect();
        j.append("n1@7", 1, &batch, false).unwrap();
        j.enforce_retention(2_000).unwrap();
        let (floor, high) = j.ranges()["n1@7"];
        assert!(floor > 1 && high == 20, "{floor}..{high}");
        // Age: everything but the newest goes.
        j.enforce_retention(1_000_000).unwrap();
        assert_eq!(j.ranges()["n1@7"], (20, 20));
        let j = Journal::open(dir.path(), retention).unwrap();
        assert_eq!(
            j.next_seq("n1@7"),
            21,
            "the next seq survives retention and a restart"
        );
        // A peer that holds only from 50 on: we start again there.
        let mut j = j;
        let later: Vec<Event> = (50..=52).map(|s| event("n1@7", s, 10_000 + s)).collect();
        assert_eq!(j.append("n1@7", 50, &later, false).unwrap(), 3);
        assert_eq!(j.ranges()["n1@7"], (50, 52));
        // Older history fetched back goes in front, only when it ends right below.
        let older: Vec<Event> = (45..=49).map(|s| event("n1@7", s, 10_000 + s)).collect();
        assert_eq!(j.prepend("n1@7", &older[..3]).unwrap(), 0, "not adjacent");
        assert_eq!(j.prepend("n1@7", &older).unwrap(), 5);
        assert_eq!(j.ranges()["n1@7"], (45, 52));
        let j = Journal::open(dir.path(), retention).unwrap();
        assert_eq!(j.ranges()["n1@7"], (45, 52), "the file holds them in order");
    }
}
