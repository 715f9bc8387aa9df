//! The built-in monitor's data path, as a library: what a primary brick holds (an
//! index of entries with content-defined chunk hashes), what changed between two
//! indexes (entry operations in causal order, renames as renames), and applying those
//! operations on a secondary volume without ever writing outside it.
//!
//! - [`path`]: relative paths as they travel ([`RelPath`]: no `..`, no absolute, no
//!   empty or `.` components) and resolving them under a root without following
//!   symlinks out of it.
//! - [`chunk`]: FastCDC (2020) chunks hashed with BLAKE3.
//! - [`index`]: the [`Index`] of a tree and diffing two indexes into [`Op`]s.
//! - [`scan`]: reading a brick into an index, whole or only the directories a change
//!   notification named (reusing chunk hashes of files whose inode, size and mtime did
//!   not change).
//! - [`apply`]: the secondary side: each operation checked and applied under the
//!   volume's root; file contents written to a temporary file, verified, fsynced and
//!   renamed into place.
//! - [`index_log`]: the saved index as a base and a log of deltas (a round's save
//!   sends what changed, not the whole index).
//! - [`journal`]: the secondary's record of where batches applied since the index
//!   was last saved left something (a worker taking over re-checks those places).
//! - [`proto`]: what a primary worker and a secondary agent say to each other.

pub mod apply;
pub mod chunk;
pub mod index;
pub mod index_log;
pub mod journal;
pub mod parts;
pub mod path;
pub mod proto;
pub mod scan;

pub use apply::{Applier, ApplyError, ChunkSource, FileData, Known, Parents, PartialWrite};
pub use chunk::{ChunkRef, Hash, chunk_bytes, chunk_file};
pub use index::{Entry, EntryKind, Index, Op, diff};
pub use path::{PathError, RelPath};
pub use scan::{Keep, ScanReport, rescan, scan, scan_streaming};

/// Deterministic pseudo-random bytes (xorshift64) for tests and benchmarks: content
/// that does not compress or repeat, the same for the same seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
