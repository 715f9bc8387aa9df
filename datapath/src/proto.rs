//! What a primary worker and a secondary agent say to each other over one QUIC
//! bidirectional stream (ALPN [`ALPN`]): each message is a 4-byte little-endian length
//! and its postcard encoding, requests from the worker, one response each.

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
pub const ALPN: &[u8] = b"georep-data/5";
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

/// A chunk's hash and its bytes (one byte string on the wire, not a sequence of bytes).
pub type ChunkData = (Hash, ByteBuf);

/// One operation of a batch and the chunk bytes it needs.
pub type BatchItem = (Op, Vec<ChunkData>);

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
    /// Operations to apply in order, each with the chunk bytes it needs (the write of
    /// a file opened with `Open` is completed from what its `Stage`s carried).
    Batch(Vec<BatchItem>),
    /// Up to [`INDEX_PART`] bytes of the saved index from `offset` (after a Ready
    /// that said how long it is).
    ReadIndex {
        /// Where to start.
        offset: u64,
    },
    /// A part of the index being saved, not the last (see `SaveIndex`).
    SaveIndexPart(ByteBuf),
    /// The last part (or the whole) of the index of what the secondary now has of
    /// this replica set (postcard of [`crate::Index`]), kept for the next worker: the
    /// parts before it and it replace the saved index at once.
    SaveIndex(ByteBuf),
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
