//! The saved index of a replica set on the secondary, as a base and a log of deltas.
//!
//! A worker saves the index after every round that changed something. Sent whole, a
//! brick of a million files (an index of about 200 MiB) would cross the WAN in full for
//! a single edited file. So after the first save of a stream the worker sends only
//! what changed ([`IndexDelta`]), which the secondary appends to a log beside the base
//! (`<index>.log`), and folds into a new base once the log outgrows it.
//!
//! The log is a sequence of frames, each a 4-byte little-endian length, the first 8
//! bytes of the BLAKE3 of the body, and the body. The first frame is a [`Header`]
//! naming the base the deltas follow (the BLAKE3 of its bytes), so a log left behind by
//! a crash between writing a new base and removing the old log is never applied to the
//! new base. A torn or corrupt frame ends the log: its delta was not acknowledged (the
//! journal still names what its round touched, see [`crate::journal`]).

use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkRef, Hash};
use crate::index::{Entry, Index};
use crate::path::RelPath;

/// What changed in an index between two saves: entries gone, entries new or
/// different (whole), and files whose chunk list changed only in part (a 1 MiB change
/// in a 1 GiB file: its list is ~16 000 chunks, some 700 KiB, of which a few change).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDelta {
    /// Paths no longer in the index.
    pub removed: Vec<RelPath>,
    /// Entries added or changed.
    pub upserts: Vec<(RelPath, Entry)>,
    /// Files whose entry changed with a chunk list that kept most of its chunks.
    pub patched: Vec<(RelPath, ChunkPatch)>,
}

/// A file's entry changed, its chunk list in places only (a write here and there in
/// a large file): the old list with runs of chunks replaced, each by the chunks now
/// there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkPatch {
    /// The new entry, with no chunks.
    pub entry: Entry,
    /// The replacements, in file order, not overlapping.
    pub splices: Vec<Splice>,
}

/// One run of a chunk list replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Splice {
    /// Index in the old list of the first chunk replaced.
    pub at: u32,
    /// How many old chunks are replaced (0: an insertion).
    pub remove: u32,
    /// The chunks in their place: each one's length and hash, in order (their offsets
    /// follow from the chunks before them).
    pub insert: Vec<(u32, Hash)>,
}

/// A chunk list this long or longer is patched rather than sent whole when most of
/// it stays.
const PATCH_MIN: usize = 8;

impl ChunkPatch {
    /// The patch turning `old`'s chunk list into `new`'s, if most of it stays. A
    /// change realigns content-defined chunks a chunk or two later, so walking both
    /// lists finds each changed run and where the old list picks up again; the patch is
    /// checked by applying it.
    fn between(old: &Entry, new: &Entry) -> Option<ChunkPatch> {
        if old.chunks.len() < PATCH_MIN || new.chunks.len() < PATCH_MIN {
            return None;
        }
        let key = |c: &ChunkRef| (c.len, c.hash);
        // Where each chunk is in the old list, in order.
        let mut places: std::collections::HashMap<(u32, Hash), Vec<usize>> =
            std::collections::HashMap::with_capacity(old.chunks.len());
        for (i, chunk) in old.chunks.iter().enumerate() {
            places.entry(key(chunk)).or_default().push(i);
        }
        // The first place of `chunk` in the old list at or after `from`.
        let next_place = |chunk: &ChunkRef, from: usize| {
            let at = places.get(&key(chunk))?;
            at.get(at.partition_point(|i| *i < from)).copied()
        };
        let (old_chunks, new_chunks) = (&old.chunks, &new.chunks);
        let (mut splices, mut inserted) = (Vec::new(), 0usize);
        let (mut i, mut j) = (0usize, 0usize);
        while i < new_chunks.len() {
            if old_chunks
                .get(j)
                .is_some_and(|o| key(o) == key(&new_chunks[i]))
            {
                (i, j) = (i + 1, j + 1);
                continue;
            }
            // A changed run begins: new chunks not in the rest of the old list go in,
            // up to the first one that is, where the old list resumes.
            let mut insert = Vec::new();
            let resume = loop {
                let Some(chunk) = new_chunks.get(i) else {
                    break old_chunks.len();
                };
                if let Some(at) = next_place(chunk, j) {
                    break at;
                }
                insert.push((chunk.len, chunk.hash));
                i += 1;
            };
            inserted += insert.len();
            splices.push(Splice {
                at: u32::try_from(j).ok()?,
                remove: u32::try_from(resume - j).ok()?,
                insert,
            });
            j = resume;
        }
        if j < old_chunks.len() {
            splices.push(Splice {
                at: u32::try_from(j).ok()?,
                remove: u32::try_from(old_chunks.len() - j).ok()?,
                insert: Vec::new(),
            });
        }
        if inserted * 2 > new.chunks.len() || splices.len() * 2 > new.chunks.len() {
            return None;
        }
        let patch = ChunkPatch {
            entry: Entry {
                chunks: Vec::new(),
                ..new.clone()
            },
            splices,
        };
        (patch.clone().apply(old).as_ref() == Some(new)).then_some(patch)
    }

    /// The new entry, from the old one; `None` when the splices do not fit the old
    /// list (then the entry is dropped, and the file sent again).
    fn apply(self, old: &Entry) -> Option<Entry> {
        let mut chunks = Vec::with_capacity(old.chunks.len());
        let mut at = old.chunks.first().map_or(0, |c| c.offset);
        let mut push = |chunks: &mut Vec<ChunkRef>, len: u32, hash: Hash| {
            chunks.push(ChunkRef {
                offset: at,
                len,
                hash,
            });
            at += u64::from(len);
        };
        let mut next = 0usize;
        for splice in self.splices {
            let start = splice.at as usize;
            let end = start.checked_add(splice.remove as usize)?;
            for kept in old.chunks.get(next..start)? {
                push(&mut chunks, kept.len, kept.hash);
            }
            for (len, hash) in splice.insert {
                push(&mut chunks, len, hash);
            }
            if end > old.chunks.len() {
                return None;
            }
            next = end;
        }
        for kept in old.chunks.get(next..)? {
            push(&mut chunks, kept.len, kept.hash);
        }
        Some(Entry {
            chunks,
            ..self.entry
        })
    }
}

impl IndexDelta {
    /// What turns `old` into `new` (one ordered walk of both).
    pub fn between(old: &Index, new: &Index) -> IndexDelta {
        let mut delta = IndexDelta::default();
        let mut olds = old.entries.iter().peekable();
        let mut news = new.entries.iter().peekable();
        loop {
            // Which side's next path comes first (a side that has ended comes last).
            let order = match (olds.peek(), news.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((old_path, _)), Some((new_path, _))) => old_path.cmp(new_path),
            };
            match order {
                std::cmp::Ordering::Less => {
                    if let Some((path, _)) = olds.next() {
                        delta.removed.push(path.clone());
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some((path, entry)) = news.next() {
                        delta.upserts.push((path.clone(), entry.clone()));
                    }
                }
                std::cmp::Ordering::Equal => {
                    if let (Some((_, old_entry)), Some((path, new_entry))) =
                        (olds.next(), news.next())
                        && old_entry != new_entry
                    {
                        match ChunkPatch::between(old_entry, new_entry) {
                            Some(patch) => delta.patched.push((path.clone(), patch)),
                            None => delta.upserts.push((path.clone(), new_entry.clone())),
                        }
                    }
                }
            }
        }
        delta
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.upserts.is_empty() && self.patched.is_empty()
    }

    /// Applies the change to `index`.
    pub fn apply(self, index: &mut Index) {
        for path in &self.removed {
            index.entries.remove(path);
        }
        index.entries.extend(self.upserts);
        for (path, patch) in self.patched {
            match index.entries.get(&path).and_then(|old| patch.apply(old)) {
                Some(entry) => index.entries.insert(path, entry),
                None => index.entries.remove(&path),
            };
        }
    }
}

/// The first frame of a log: the base its deltas follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// BLAKE3 of the base's bytes.
    pub base: Hash,
}

/// Bytes before a frame's body: its length and its checksum.
const FRAME_HEAD: usize = 12;

/// One frame of the log holding `body`.
fn frame(body: &[u8]) -> Result<Vec<u8>, postcard::Error> {
    let len = u32::try_from(body.len()).map_err(|_| postcard::Error::SerializeBufferFull)?;
    let mut out = Vec::with_capacity(body.len() + FRAME_HEAD);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&blake3::hash(body).as_bytes()[..8]);
    out.extend_from_slice(body);
    Ok(out)
}

/// The frame that begins a log of deltas following the base whose bytes hash to `base`.
pub fn header_frame(base: Hash) -> Result<Vec<u8>, postcard::Error> {
    frame(&postcard::to_stdvec(&Header { base })?)
}

/// The frame of an encoded delta (postcard of [`IndexDelta`]).
pub fn delta_frame(encoded: &[u8]) -> Result<Vec<u8>, postcard::Error> {
    frame(encoded)
}

/// The complete, intact frames at the start of `bytes`, each with where it ends.
fn frames(bytes: &[u8]) -> impl Iterator<Item = (&[u8], usize)> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let rest = bytes.get(at..)?;
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let (sum, tail) = tail.split_first_chunk::<8>()?;
        let body = tail.get(..u32::from_le_bytes(*len) as usize)?;
        if blake3::hash(body).as_bytes()[..8] != sum[..] {
            return None;
        }
        at += FRAME_HEAD + body.len();
        Some((body, at))
    })
}

/// The saved index as base and log make it.
#[derive(Debug)]
pub struct Loaded {
    /// The index (postcard of [`Index`]): the base's bytes as they are when no delta
    /// applies, else the base with the deltas applied, encoded again.
    pub bytes: Vec<u8>,
    /// BLAKE3 of the base's bytes (what a new log's header names).
    pub base: Hash,
    /// Bytes of the log that belong to this base and are intact (0: none apply; a
    /// log longer than this is cut back to it before anything is appended).
    pub log_valid: u64,
    /// Deltas applied.
    pub deltas: usize,
}

/// The saved index from a base's bytes and its log's (empty if there is none). A log
/// whose header names another base is ignored, as is everything from its first torn
/// or undecodable frame on; so is the whole log if the base does not decode (the bytes
/// are then the base's, as they were saved).
pub fn load(base: Vec<u8>, log: &[u8]) -> Loaded {
    let base_hash = Hash::of(&base);
    let unchanged = |base: Vec<u8>| Loaded {
        bytes: base,
        base: base_hash,
        log_valid: 0,
        deltas: 0,
    };
    let mut frames = frames(log);
    let Some((header, header_end)) = frames.next() else {
        return unchanged(base);
    };
    if postcard::from_bytes::<Header>(header).ok() != Some(Header { base: base_hash }) {
        return unchanged(base);
    }
    let deltas: Vec<(IndexDelta, usize)> = frames
        .map_while(|(body, end)| Some((postcard::from_bytes::<IndexDelta>(body).ok()?, end)))
        .collect();
    if deltas.is_empty() {
        return Loaded {
            log_valid: header_end as u64,
            ..unchanged(base)
        };
    }
    let Ok(mut index) = postcard::from_bytes::<Index>(&base) else {
        return unchanged(base);
    };
    let log_valid = deltas.last().map_or(header_end, |(_, end)| *end) as u64;
    let count = deltas.len();
    for (delta, _) in deltas {
        delta.apply(&mut index);
    }
    match postcard::to_stdvec(&index) {
        Ok(bytes) => Loaded {
            bytes,
            base: base_hash,
            log_valid,
            deltas: count,
        },
        Err(_) => unchanged(base),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::EntryKind;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn file(size: u64) -> Entry {
        Entry {
            size,
            ..Entry::unknown(false)
        }
    }

    fn index(entries: &[(&str, u64)]) -> Index {
        Index {
            entries: entries
                .iter()
                .map(|(path, size)| (p(path), file(*size)))
                .collect(),
        }
    }

    #[test]
    fn a_delta_turns_the_old_index_into_the_new_one_and_names_only_what_changed() {
        let old = index(&[("a", 1), ("b", 2), ("d/x", 3), ("e", 5)]);
        let mut new = index(&[("b", 2), ("c", 9), ("d/x", 4), ("e", 5), ("f", 6)]);
        new.entries.insert(
            p("l"),
            Entry {
                kind: EntryKind::Symlink(b"b".to_vec()),
                ..file(0)
            },
        );
        let delta = IndexDelta::between(&old, &new);
        assert_eq!(delta.removed, vec![p("a")]);
        let upserted: Vec<RelPath> = delta.upserts.iter().map(|(path, _)| path.clone()).collect();
        assert_eq!(upserted, ["c", "d/x", "f", "l"].map(p));
        let mut applied = old.clone();
        delta.apply(&mut applied);
        assert_eq!(applied, new);
        assert!(IndexDelta::between(&new, &new).is_empty());
        let mut emptied = new.clone();
        IndexDelta::between(&new, &Index::default()).apply(&mut emptied);
        assert_eq!(emptied, Index::default());
    }

    fn chunked(lens: &[u32], seed: u8) -> Entry {
        let mut offset = 0;
        let chunks = lens
            .iter()
            .enumerate()
            .map(|(i, len)| {
                let chunk = ChunkRef {
                    offset,
                    len: *len,
                    hash: Hash([seed.wrapping_add(i as u8); 32]),
                };
                offset += u64::from(*len);
                chunk
            })
            .collect();
        Entry {
            size: offset,
            chunks,
            ..Entry::unknown(false)
        }
    }

    fn one(entry: &Entry) -> Index {
        Index {
            entries: [(p("f"), entry.clone())].into(),
        }
    }

    /// A file of 100 chunks changed in places is sent as a patch of the chunks that
    /// changed, and the patch rebuilds exactly the new list: an overwrite, an insertion
    /// that moves every later chunk, a cut, a change at either end, changes in two and
    /// in many places, a list of identical chunks. A change of most of the list, or a
    /// short list, goes whole.
    #[test]
    fn a_chunk_list_changed_in_its_middle_travels_as_a_patch() {
        let old = chunked(&[1000; 100], 0);
        let mut overwrite = old.clone();
        overwrite.chunks[50].hash = Hash([0xee; 32]);
        let mut insert = old.clone();
        insert.chunks.insert(40, chunked(&[777], 0xaa).chunks[0]);
        let mut cut = old.clone();
        cut.chunks.drain(10..20);
        let mut head = old.clone();
        head.chunks[0].hash = Hash([0xdd; 32]);
        let mut tail = old.clone();
        tail.chunks.push(chunked(&[5], 0xcc).chunks[0]);
        let mut two_places = old.clone();
        two_places.chunks[10].hash = Hash([0xe1; 32]);
        two_places.chunks[90].len = 1500;
        let mut scattered = old.clone();
        for k in (3..100).step_by(10) {
            scattered.chunks[k].hash = Hash([0xe2 ^ k as u8; 32]);
        }
        scattered.chunks.remove(55);
        scattered.chunks.insert(20, chunked(&[333], 0x77).chunks[0]);
        // Content-defined chunks of a run of zeros are all alike.
        let zeros = chunked(&[1000; 100], 0)
            .chunks
            .iter()
            .map(|c| ChunkRef {
                hash: Hash([0; 32]),
                ..*c
            })
            .collect::<Vec<_>>();
        let mut zeros_changed = zeros.clone();
        zeros_changed[60].hash = Hash([0x99; 32]);
        let zeros_old = Entry {
            chunks: zeros,
            ..old.clone()
        };
        let zeros_new = Entry {
            chunks: zeros_changed,
            ..old.clone()
        };
        for (case, from, mut new, inserted) in [
            ("overwrite", &old, overwrite, 1),
            ("insert", &old, insert, 1),
            ("cut", &old, cut, 0),
            ("head", &old, head, 1),
            ("tail", &old, tail, 1),
            ("two places", &old, two_places, 2),
            ("scattered", &old, scattered, 11),
            ("zeros", &zeros_old, zeros_new, 1),
        ] {
            // Offsets as a real chunk list has them: contiguous from 0.
            let mut at = 0;
            for chunk in &mut new.chunks {
                chunk.offset = at;
                at += u64::from(chunk.len);
            }
            new.size = at;
            new.mtime = 7;
            let delta = IndexDelta::between(&one(from), &one(&new));
            assert!(delta.upserts.is_empty(), "{case}");
            assert_eq!(delta.patched.len(), 1, "{case}");
            let sent: usize = delta.patched[0]
                .1
                .splices
                .iter()
                .map(|s| s.insert.len())
                .sum();
            assert_eq!(sent, inserted, "{case}: {:?}", delta.patched[0].1.splices);
            let mut applied = one(from);
            delta.apply(&mut applied);
            assert_eq!(applied, one(&new), "{case}");
        }
        let rewritten = chunked(&[1000; 100], 100);
        let whole = IndexDelta::between(&one(&old), &one(&rewritten));
        assert_eq!((whole.upserts.len(), whole.patched.len()), (1, 0));
        let (short, mut short_new) = (chunked(&[10; 4], 0), chunked(&[10; 4], 0));
        short_new.chunks[1].hash = Hash([1; 32]);
        assert!(ChunkPatch::between(&short, &short_new).is_none());
        // A patch whose old entry is missing drops the entry: the file is sent again.
        let mut delta = IndexDelta::default();
        delta.patched.push((
            p("gone"),
            ChunkPatch::between(&old, &chunked(&[1000; 101], 0)).unwrap(),
        ));
        let mut index = Index::default();
        delta.apply(&mut index);
        assert!(index.entries.is_empty());
    }

    /// Random edits of random chunk lists (hashes from a small alphabet, so chunks
    /// repeat): whatever the delta holds, applying it gives the new index exactly.
    #[test]
    fn random_edits_of_chunk_lists_round_trip() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut patched = 0;
        for round in 0..300 {
            let len = 8 + next(150) as usize;
            let lens: Vec<u32> = (0..len).map(|_| 100 + next(3) as u32).collect();
            let mut old = chunked(&lens, 0);
            for chunk in &mut old.chunks {
                chunk.hash = Hash([next(6) as u8; 32]);
            }
            let mut new = old.clone();
            for _ in 0..=next(6) {
                let at = next(new.chunks.len() as u64 + 1) as usize;
                let chunk = ChunkRef {
                    offset: 0,
                    len: 100 + next(3) as u32,
                    hash: Hash([next(9) as u8; 32]),
                };
                match next(3) {
                    0 if at < new.chunks.len() => new.chunks[at] = chunk,
                    1 if at < new.chunks.len() => drop(new.chunks.remove(at)),
                    _ => new.chunks.insert(at, chunk),
                }
            }
            let mut at = 0;
            for chunk in &mut new.chunks {
                chunk.offset = at;
                at += u64::from(chunk.len);
            }
            let delta = IndexDelta::between(&one(&old), &one(&new));
            patched += delta.patched.len();
            let mut applied = one(&old);
            delta.apply(&mut applied);
            assert_eq!(applied, one(&new), "round {round}");
        }
        assert!(
            patched > 100,
            "most small edits travel as patches: {patched}"
        );
    }

    fn encoded(delta: &IndexDelta) -> Vec<u8> {
        delta_frame(&postcard::to_stdvec(delta).unwrap()).unwrap()
    }

    #[test]
    fn a_log_applies_to_its_own_base_only_and_stops_at_a_torn_frame() {
        let v0 = index(&[("a", 1), ("b", 2)]);
        let v1 = index(&[("a", 1), ("b", 3), ("c", 4)]);
        let v2 = index(&[("b", 3), ("c", 4), ("d", 5)]);
        let base = postcard::to_stdvec(&v0).unwrap();
        let mut log = header_frame(Hash::of(&base)).unwrap();
        let header_len = log.len() as u64;
        log.extend(encoded(&IndexDelta::between(&v0, &v1)));
        let first_len = log.len() as u64;
        log.extend(encoded(&IndexDelta::between(&v1, &v2)));

        let whole = load(base.clone(), &log);
        assert_eq!(postcard::from_bytes::<Index>(&whole.bytes).unwrap(), v2);
        assert_eq!((whole.deltas, whole.log_valid), (2, log.len() as u64));
        assert_eq!(whole.base, Hash::of(&base));

        // The node died while appending the second delta: the first still counts.
        let torn = load(base.clone(), &log[..log.len() - 3]);
        assert_eq!(postcard::from_bytes::<Index>(&torn.bytes).unwrap(), v1);
        assert_eq!((torn.deltas, torn.log_valid), (1, first_len));
        // A flipped byte inside the second delta: the same.
        let mut flipped = log.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(load(base.clone(), &flipped).log_valid, first_len);
        // Only the header: the base as it is.
        let header_only = load(base.clone(), &log[..header_len as usize]);
        assert_eq!(header_only.bytes, base);
        assert_eq!((header_only.deltas, header_only.log_valid), (0, header_len));

        // A log following another base (a crash after the new base was written, before
        // the old log went) is ignored whole.
        let newer = postcard::to_stdvec(&v1).unwrap();
        let stale = load(newer.clone(), &log);
        assert_eq!(stale.bytes, newer);
        assert_eq!((stale.deltas, stale.log_valid), (0, 0));
        // No log, or an empty one.
        assert_eq!(load(base.clone(), &[]).bytes, base);
        // A base that does not decode is served as saved, whatever the log says.
        let junk = vec![0xff; 7];
        let mut junk_log = header_frame(Hash::of(&junk)).unwrap();
        junk_log.extend(encoded(&IndexDelta::between(&v0, &v1)));
        assert_eq!(load(junk.clone(), &junk_log).bytes, junk);
    }
}
