//! What a primary worker and a secondary agent say to each other over one QUIC
//! bidirectional stream (ALPN [`ALPN`]): each message is a 4-byte little-endian length
//! and its postcard encoding, requests from the worker, one response each.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
pub use serde_bytes::ByteBuf;

use crate::apply::Known;
use crate::chunk::Hash;
use crate::index::Op;
use crate::path::RelPath;

/// ALPN of data-path connections (the mesh's certificates, a connection of its own).
/// (`/2`: content identities are [`crate::chunk::content_id`]; a `/1` peer is refused
/// at the handshake rather than every write failing verification.)
/// (`/3`: a write may carry its file's metadata.)
/// (`/4`: a new file may be sent while it is read, [`Request::OpenNew`].)
/// (`/5`: a [`Request::Stage`]'s chunk bytes follow it raw; a file opened with
/// `OpenNew` is sent in [`Request::Append`]s, hashed by the secondary.)
/// (`/6`: a [`Request::Batch`]'s chunk bytes follow it raw too.)
/// (`/7`: a round's save may send only what changed, [`Request::SaveIndexDelta`].)
pub const ALPN: &[u8] = b"georep-data/7";
/// Largest message accepted (a batch of chunk data).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Most bytes of a saved index one message carries (an index larger than this is
/// read and saved in parts: a brick of a million files has an index of about
/// 200 MiB). Debug builds use small parts so that tests go through several.
pub const INDEX_PART: usize = if cfg!(debug_assertions) {
    64 << 10
} else {
    16 << 20
};
/// Writes of files up to this size carry their data without asking what is missing.
pub const SMALL_FILE: u64 = 256 * 1024;

/// A chunk's hash and its bytes (a shared slice: of the file read, or of the bytes that
/// followed a batch).
pub type ChunkData = (Hash, Bytes);

/// One operation of a batch and the chunk bytes it needs.
pub type BatchItem = (Op, Vec<ChunkData>);

/// One operation of a batch as [`Request::Batch`] carries it: its chunks' hashes and
/// lengths (their bytes follow the message).
pub type BatchHead = (Op, Vec<(Hash, u32)>);

/// A batch as it goes on the wire: the [`Request::Batch`] and the chunk bytes that
/// follow it, in order.
pub fn batch_request(items: Vec<BatchItem>) -> (Request, Vec<Bytes>) {
    let mut data = Vec::new();
    let heads = items
        .into_iter()
        .map(|(op, chunks)| {
            let heads = chunks
                .into_iter()
                .map(|(hash, bytes)| {
                    // A chunk is at most MAX_CHUNK: fits in u32.
                    let head = (hash, bytes.len() as u32);
                    data.push(bytes);
                    head
                })
                .collect();
            (op, heads)
        })
        .collect();
    (Request::Batch(heads), data)
}

/// `data` cut into consecutive pieces of `lens` bytes each (shared slices, not
/// copies); `None` if `data` is not exactly as long as they add up to.
pub fn split_data(lens: impl IntoIterator<Item = u32>, data: &Bytes) -> Option<Vec<Bytes>> {
    let mut at = 0usize;
    let pieces = lens
        .into_iter()
        .map(|len| {
            let end = at.checked_add(len as usize)?;
            let piece = data.get(at..end).map(|_| data.slice(at..end))?;
            at = end;
            Some(piece)
        })
        .collect::<Option<Vec<Bytes>>>()?;
    (at == data.len()).then_some(pieces)
}

/// The operations of a [`Request::Batch`] with their chunk bytes, sliced out of `data`
/// (the bytes that followed it, shared, not copied); `None` if `data` is not exactly
/// as long as the chunk lengths add up to.
pub fn batch_items(heads: Vec<BatchHead>, data: Bytes) -> Option<Vec<BatchItem>> {
    let lens = heads
        .iter()
        .flat_map(|(_, chunks)| chunks.iter().map(|(_, len)| *len));
    let mut pieces = split_data(lens, &data)?.into_iter();
    let items = heads
        .into_iter()
        .map(|(op, chunks)| {
            // As many pieces as chunks, in order (zip takes a hash before a piece).
            let chunks = chunks
                .into_iter()
                .map(|(hash, _)| hash)
                .zip(pieces.by_ref())
                .collect();
            (op, chunks)
        })
        .collect();
    Some(items)
}

/// Chunk bytes a [`Request::Batch`] says follow it (an untrusted sum: saturating).
pub fn batch_data_len(heads: &[BatchHead]) -> u64 {
    heads
        .iter()
        .flat_map(|(_, chunks)| chunks)
        .fold(0u64, |sum, (_, len)| sum.saturating_add(u64::from(*len)))
}

/// From a primary worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Opens the conversation for one session's replica set.
    Hello {
        /// The session (its directory name, `gv0_n4_gv1`).
        session: String,
        /// The replica set of the worker's brick.
        replica_set: u32,
        /// Whether to answer with the saved index (a worker's first stream; the
        /// streams it opens for large files need none).
        index: bool,
    },
    /// Begins writing a large file on this stream (an [`Op::Write`]): the answer is
    /// which of its chunks the secondary lacks ([`Response::Missing`]); `Stage`s then
    /// carry them, written straight into the file's temporary copy beside its
    /// destination, and the file's write in the next batch completes it.
    Open {
        /// The write.
        write: Op,
        /// What the saved index says the file there is now, if it has it.
        known: Option<Known>,
    },
    /// Begins writing a large file the secondary has nothing of, whose chunks are
    /// found as it is read (a first sync's file): answered [`Response::Opened`];
    /// `Append`s then carry all its chunks in file order, each appended to the
    /// temporary copy and hashed there, and the file's write in the next batch
    /// completes it: its chunk list must be exactly the chunks appended, with the
    /// hashes the secondary answered.
    OpenNew {
        /// The file.
        path: RelPath,
    },
    /// Chunk bytes of the file opened, in pieces (a large file does not fit one
    /// message): each chunk's hash and length; their bytes follow this message on the
    /// stream, raw and in the same order, [`MAX_MESSAGE`] at most in all (outside the
    /// encoding, so that neither end copies them into or out of it).
    Stage(Vec<(Hash, u32)>),
    /// Chunks of the file opened with `OpenNew`, in file order: each one's length;
    /// their bytes follow this message on the stream, raw and in the same order,
    /// [`MAX_MESSAGE`] at most in all. Answered [`Response::Appended`]. (The primary
    /// does not hash them: the secondary does, as it would to check them, and the
    /// QUIC connection's AEAD already guards them on the way.)
    Append(Vec<u32>),
    /// Operations to apply in order, each with the hashes and lengths of the chunks it
    /// needs; their bytes follow this message on the stream, raw and in the same
    /// order, [`MAX_MESSAGE`] at most in all (see [`batch_request`], [`batch_items`]).
    /// The write of a file opened with `Open` is completed from what its `Stage`s
    /// carried.
    Batch(Vec<BatchHead>),
    /// Up to [`INDEX_PART`] bytes of the saved index from `offset` (after a Ready
    /// that said how long it is).
    ReadIndex {
        /// Where to start.
        offset: u64,
    },
    /// A part of the index (or delta) being saved, not the last (see `SaveIndex` and
    /// `SaveIndexDelta`).
    SaveIndexPart(ByteBuf),
    /// The last part (or the whole) of the index of what the secondary now has of
    /// this replica set (postcard of [`crate::Index`]), kept for the next worker: the
    /// parts before it and it replace the saved index at once.
    SaveIndex(ByteBuf),
    /// The last part (or the whole) of what changed in the index since this stream
    /// read it at Hello or last saved it (postcard of
    /// [`crate::index_log::IndexDelta`]): appended to the saved index's log (see
    /// [`crate::index_log`]). Refused when the saved index is not the one this stream
    /// knows (nothing read or saved on it yet, or another stream saved since).
    SaveIndexDelta(ByteBuf),
}

/// From the secondary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Hello accepted: how long the index saved last for this replica set is, if
    /// there is one (read with `ReadIndex`), and what is now where batches applied
    /// after it touched (see [`crate::journal`]).
    Ready {
        /// Bytes of the saved index (postcard of [`crate::Index`]).
        index_len: Option<u64>,
        /// Places batches applied after the index was saved changed, each with
        /// whether what is below it changed too: what the index says of them may not
        /// hold.
        unsaved: Vec<(RelPath, bool)>,
        /// What is now at (and below) those places, each with whether it is a
        /// directory.
        present: Vec<(RelPath, bool)>,
    },
    /// Refused, and why (the stream ends).
    Refused(String),
    /// The chunks lacking.
    Missing(Vec<Hash>),
    /// Per operation of a batch: `None` applied, `Some(error)` not.
    Applied(Vec<Option<String>>),
    /// A part of the saved index.
    IndexPart(ByteBuf),
    /// The index part is kept (`SaveIndexPart`), or the index is saved.
    Saved,
    /// The chunks are written (or, after one was refused, dropped: the file's write
    /// then fails).
    Staged,
    /// The hashes of an `Append`'s chunks, in order (none: the file's write had
    /// already failed, or failed now; its completing write says why).
    Appended(Vec<Hash>),
    /// `OpenNew` taken (if the file cannot be written, its `Append`s are dropped and
    /// its write fails with why).
    Opened,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkdir(path: &str) -> Op {
        Op::Mkdir {
            path: RelPath::new(path).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    #[test]
    fn a_batch_sent_with_its_bytes_raw_is_read_back_item_by_item() {
        let (a, b, c) = (Hash::of(b"a"), Hash::of(b"bb"), Hash::of(b"ccc"));
        let items: Vec<BatchItem> = vec![
            (
                mkdir("x"),
                vec![
                    (a, Bytes::from_static(b"a")),
                    (b, Bytes::from_static(b"bb")),
                ],
            ),
            (mkdir("y"), Vec::new()),
            (mkdir("z"), vec![(c, Bytes::from_static(b"ccc"))]),
        ];
        let (request, data) = batch_request(items.clone());
        let Request::Batch(heads) = request else {
            panic!("not a batch: {request:?}");
        };
        assert_eq!(heads[0].1, vec![(a, 1), (b, 2)]);
        assert_eq!(batch_data_len(&heads), 6);
        let wire: Vec<u8> = data.concat();
        assert_eq!(wire, b"abbccc");
        assert_eq!(batch_items(heads.clone(), Bytes::from(wire)), Some(items));
        // Bytes that do not add up to the lengths are refused, short or long.
        assert_eq!(
            batch_items(heads.clone(), Bytes::from_static(b"abbcc")),
            None
        );
        assert_eq!(batch_items(heads, Bytes::from_static(b"abbcccd")), None);
    }

    #[test]
    fn a_batch_claiming_more_bytes_than_follow_is_refused() {
        let heads: Vec<BatchHead> = (0..3)
            .map(|_| (mkdir("x"), vec![(Hash::of(b""), u32::MAX); 4]))
            .collect();
        assert_eq!(batch_data_len(&heads), 12 * u64::from(u32::MAX));
        assert_eq!(batch_items(heads, Bytes::new()), None);
    }
}
