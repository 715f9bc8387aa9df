//! Content-defined chunks: FastCDC (2020, normalization level 1) cut points, each
//! chunk hashed with BLAKE3, so that an edit in the middle of a file changes the
//! chunks around it and no others (fixed-size blocks would shift every block after an
//! insertion; rsync's rolling checksum needs both sides to read the whole file).

use std::fmt;
use std::io::{self, Read};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Smallest chunk (bytes), except a file's last.
pub const MIN_CHUNK: usize = 16 * 1024;
/// Average chunk size FastCDC aims at.
pub const AVG_CHUNK: usize = 64 * 1024;
/// Largest chunk.
pub const MAX_CHUNK: usize = 256 * 1024;

/// A BLAKE3 hash.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// One chunk of a file: where it is and what it hashes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// BLAKE3 of its bytes.
    pub hash: Hash,
}

/// A file's content identity: the BLAKE3 of its chunks' hashes in order. Equal bytes
/// give equal chunks and so equal identities, and the chunk hashes pin the bytes, so
/// one hashing pass over a file (its chunks) yields both.
pub fn content_id(chunks: &[ChunkRef]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"georep content/1");
    for chunk in chunks {
        hasher.update(&chunk.hash.0);
    }
    Hash(*hasher.finalize().as_bytes())
}

/// The chunks of everything `reader` yields, and its [`content_id`]. Reading and
/// finding cut points on this thread, hashing on another (each about half of the
/// work: a large file is chunked in about half the time when a core is free).
pub fn chunk_reader(reader: impl Read) -> io::Result<(Vec<ChunkRef>, Hash)> {
    let (chunks, _) = chunk_until(reader, 0, |_| false)?;
    let content = content_id(&chunks);
    Ok((chunks, content))
}

/// The chunks of what `reader` yields, at offsets from `base`, hashed on another
/// thread; stops before the first chunk whose offset `stop` accepts, and returns that
/// offset too (`None`: read to the end).
fn chunk_until(
    reader: impl Read,
    base: u64,
    stop: impl FnMut(u64) -> bool,
) -> io::Result<(Vec<ChunkRef>, Option<u64>)> {
    let (to_hash, queue) = std::sync::mpsc::sync_channel::<(u64, Bytes)>(QUEUED);
    std::thread::scope(|scope| {
        let hasher = scope.spawn(move || {
            queue
                .into_iter()
                .map(|(offset, data)| ChunkRef {
                    offset,
                    // MAX_CHUNK fits in u32.
                    len: data.len() as u32,
                    hash: Hash::of(&data),
                })
                .collect::<Vec<ChunkRef>>()
        });
        // The sender moves into the closure: dropped when cutting ends, which ends
        // the hasher's queue.
        let (failed, stopped) = cut(reader, base, stop, move |at, bytes| {
            to_hash.send((at, bytes)).is_ok()
        });
        let chunks = hasher
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        match failed {
            Some(error) => Err(error),
            None => Ok((chunks, stopped)),
        }
    })
}

/// Chunks found and not hashed yet, at most (bounds the memory held: 16 MiB).
const QUEUED: usize = 64;

/// Bytes read at once by the streaming chunker. Its chunks are slices of these
/// blocks (shared, not copied: a chunk goes from the read to the hasher and onto the
/// wire without a copy of its own); only a block's last bytes short of a whole
/// [`MAX_CHUNK`] are copied, to the start of the next block.
const BLOCK: usize = 4 << 20;

/// Finds the cut points of what `reader` yields (offsets from `base`) and hands each
/// chunk with its bytes to `take`, until `stop` accepts an offset (returned), `take`
/// returns false, or reading fails (the error returned).
fn cut(
    reader: impl Read,
    base: u64,
    stop: impl FnMut(u64) -> bool,
    take: impl FnMut(u64, Bytes) -> bool,
) -> (Option<io::Error>, Option<u64>) {
    cut_blocks(reader, BLOCK, base, stop, take)
}

/// [`cut`], reading `block` bytes at a time. The cut points are those of fastcdc's
/// own `StreamCDC` (which saved indexes hold): each is looked for in at least
/// [`MAX_CHUNK`] bytes, or in what is left before the end, exactly as there; only the
/// copies differ (`StreamCDC` copies each chunk out of its buffer and moves the rest
/// of the buffer down, about three times the file's bytes in copies).
fn cut_blocks(
    mut reader: impl Read,
    block: usize,
    base: u64,
    mut stop: impl FnMut(u64) -> bool,
    mut take: impl FnMut(u64, Bytes) -> bool,
) -> (Option<io::Error>, Option<u64>) {
    let block = block.max(MAX_CHUNK);
    let mut offset = base;
    // The next block, starting with what the last one left uncut.
    let mut next = Vec::with_capacity(block);
    loop {
        let mut bytes = next;
        let wanted = block - bytes.len();
        let read = match (&mut reader).take(wanted as u64).read_to_end(&mut bytes) {
            Ok(read) => read,
            Err(error) => return (Some(error), None),
        };
        let ended = read < wanted;
        let bytes = Bytes::from(bytes);
        let cdc = fastcdc::v2020::FastCDC::new(&bytes, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK);
        let mut start = 0;
        while start < bytes.len() {
            let left = bytes.len() - start;
            if left < MAX_CHUNK && !ended {
                break;
            }
            let (_, end) = cdc.cut(start, left.min(MAX_CHUNK));
            let at = offset + start as u64;
            if stop(at) {
                return (None, Some(at));
            }
            if !take(at, bytes.slice(start..end)) {
                return (None, None);
            }
            start = end;
        }
        if ended {
            return (None, None);
        }
        next = Vec::with_capacity(block);
        next.extend_from_slice(&bytes[start..]);
        offset += start as u64;
    }
}

/// Cuts what `reader` yields exactly as [`chunk_reader`] does, without hashing, and
/// hands the chunks (offset, bytes) to `piece` in file order, in pieces of at least
/// `piece_bytes` (the last may be smaller): a file is sent while it is read, in one
/// pass, and hashed where it is written. `Ok(None)` when `piece` returned false (it
/// is not called again); else the file's size.
pub fn cut_pieces(
    reader: impl Read,
    piece_bytes: usize,
    mut piece: impl FnMut(Vec<(u64, Bytes)>) -> bool,
) -> io::Result<Option<u64>> {
    let mut pending = Vec::new();
    let mut pending_bytes = 0;
    let mut size = 0;
    let mut stopped = false;
    let (failed, _) = cut(
        reader,
        0,
        |_| false,
        |offset, data| {
            size = offset + data.len() as u64;
            pending_bytes += data.len();
            pending.push((offset, data));
            if pending_bytes >= piece_bytes {
                pending_bytes = 0;
                stopped = !piece(std::mem::take(&mut pending));
            }
            !stopped
        },
    );
    if let Some(error) = failed {
        return Err(error);
    }
    if stopped || (!pending.is_empty() && !piece(pending)) {
        return Ok(None);
    }
    Ok(Some(size))
}

/// Files of at least this size are cut from both ends at once
/// ([`chunk_in_halves`]) when there is more than one core.
pub const CUT_IN_HALVES: u64 = 64 << 20;

/// A reader of `file` from `at` on, by positioned reads (its own position: two of
/// them read one file at once).
struct ReadAt<'a> {
    file: &'a std::fs::File,
    at: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let read = self.file.read_at(buf, self.at)?;
        self.at += read as u64;
        Ok(read)
    }
}

/// The chunks of `file`, exactly those [`chunk_reader`] finds, in about half the
/// time on two cores: the second half is cut from `middle` on, as if a chunk began
/// there, while the first is cut from the start; the first goes on past `middle` until
/// one of its cut points is also one of the second half's (from a common cut point on,
/// both cut the same) and the second half's chunks from there are taken. Without a
/// common point the first is cut to the end alone (still exact).
fn chunk_in_halves(file: &std::fs::File, middle: u64) -> io::Result<(Vec<ChunkRef>, Hash)> {
    let reader = |at| ReadAt { file, at };
    std::thread::scope(|scope| {
        let second = scope.spawn(move || chunk_until(reader(middle), middle, |_| false));
        let mut second = Some(second);
        // The second half's chunks, once the first has reached `middle`.
        let mut found: Option<(Vec<ChunkRef>, std::collections::HashSet<u64>)> = None;
        let (mut chunks, common) = chunk_until(reader(0), 0, |offset| {
            if offset < middle {
                return false;
            }
            if let Some(handle) = second.take() {
                let joined = handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                // A second half that failed to read: the first is cut to the end.
                if let Ok((chunks, _)) = joined {
                    let starts = chunks.iter().map(|c| c.offset).collect();
                    found = Some((chunks, starts));
                }
            }
            found
                .as_ref()
                .is_some_and(|(_, starts)| starts.contains(&offset))
        })?;
        if let (Some(common), Some((rest, _))) = (common, found) {
            chunks.extend(rest.into_iter().filter(|c| c.offset >= common));
        }
        let content = content_id(&chunks);
        Ok((chunks, content))
    })
}

/// The file at `path` opened for reading without following a final symlink.
pub fn open_nofollow(path: &std::path::Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Files up to this size are read whole and cut in memory: the streaming chunker
/// allocates (and zeroes) a buffer of [`MAX_CHUNK`] per file, and a buffered reader
/// another, which for a tree of small files cost more than hashing them.
pub const READ_WHOLE: u64 = 1 << 20;

/// The chunks of the file at `path` (opened without following a final symlink).
pub fn chunk_file(path: &std::path::Path) -> io::Result<(Vec<ChunkRef>, Hash)> {
    let file = open_nofollow(path)?;
    let size = file.metadata()?.len();
    let (chunks, content, _) = chunk_open_file(file, size, false)?;
    Ok((chunks, content))
}

/// [`chunk_file`] of the open `file`, whose size a `stat` just gave (`size`): no
/// second one. A file that has grown past [`READ_WHOLE`] since is streamed, never read
/// whole. With `keep`, also the bytes the chunks describe when the file was read whole.
pub fn chunk_open_file(
    mut file: std::fs::File,
    size: u64,
    keep: bool,
) -> io::Result<(Vec<ChunkRef>, Hash, Option<Vec<u8>>)> {
    use std::io::Seek;
    if size <= READ_WHOLE {
        // One byte more than the size, so a file that grew while read is read whole
        // (its chunks then describe what was read, as the streaming path would), up
        // to READ_WHOLE: past that it is streamed from the start.
        let mut bytes = Vec::with_capacity(size as usize + 1);
        (&mut file).take(READ_WHOLE + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 <= READ_WHOLE {
            let (chunks, content) = chunk_bytes(&bytes);
            return Ok((chunks, content, keep.then_some(bytes)));
        }
        file.rewind()?;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (chunks, content) = if size >= CUT_IN_HALVES && cores > 1 {
        chunk_in_halves(&file, size / 2)?
    } else {
        chunk_reader(file)?
    };
    Ok((chunks, content, None))
}

/// The chunks of `bytes`: the cut points [`chunk_reader`] finds, without its buffer.
pub fn chunk_bytes(bytes: &[u8]) -> (Vec<ChunkRef>, Hash) {
    let chunks: Vec<ChunkRef> =
        fastcdc::v2020::FastCDC::new(bytes, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
            .map(|chunk| ChunkRef {
                offset: chunk.offset as u64,
                // MAX_CHUNK fits in u32.
                len: chunk.length as u32,
                hash: Hash::of(&bytes[chunk.offset..][..chunk.length]),
            })
            .collect();
    let content = content_id(&chunks);
    (chunks, content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise;

    #[test]
    fn pieces_carry_the_chunks_of_one_pass_in_order() {
        for (i, size) in [0, 1, MIN_CHUNK, 3 << 20, BLOCK + 5]
            .into_iter()
            .enumerate()
        {
            let data = noise(size, 70 + i as u64);
            let mut pieces: Vec<Vec<(u64, Bytes)>> = Vec::new();
            let cut = cut_pieces(&data[..], 1 << 20, |piece| {
                pieces.push(piece);
                true
            })
            .unwrap();
            assert_eq!(cut, Some(size as u64), "{size} bytes");
            let (chunks, _) = chunk_bytes(&data);
            let carried: Vec<&(u64, Bytes)> = pieces.iter().flatten().collect();
            assert_eq!(carried.len(), chunks.len());
            for (chunk, (offset, bytes)) in chunks.iter().zip(carried) {
                assert_eq!((*offset, bytes.len()), (chunk.offset, chunk.len as usize));
                assert_eq!(Hash::of(bytes), chunk.hash);
            }
            if let Some((_, all_but_last)) = pieces.split_last() {
                for piece in all_but_last {
                    assert!(piece.iter().map(|(_, b)| b.len()).sum::<usize>() >= 1 << 20);
                }
            }
        }
        // Refused after the first piece: no more pieces, and no result.
        let data = noise(3 << 20, 9);
        let mut calls = 0;
        let stopped = cut_pieces(&data[..], 1 << 20, |_| {
            calls += 1;
            false
        })
        .unwrap();
        assert_eq!((stopped, calls), (None, 1));
        // A read that fails is the error, not a short file.
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk gone"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(7);
                self.0 -= n;
                Ok(n)
            }
        }
        let failed = cut_pieces(Failing(5 << 20), 1 << 20, |_| true);
        assert_eq!(failed.unwrap_err().to_string(), "disk gone");
    }

    #[test]
    fn cutting_in_memory_finds_the_streaming_cut_points() {
        for (i, size) in [
            0,
            1,
            MIN_CHUNK - 1,
            MIN_CHUNK,
            100_000,
            MAX_CHUNK + 1,
            3 << 20,
        ]
        .into_iter()
        .enumerate()
        {
            let data = noise(size, 40 + i as u64);
            let streamed = chunk_reader(&data[..]).unwrap();
            assert_eq!(chunk_bytes(&data), streamed, "{size} bytes");
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            std::fs::write(&path, &data).unwrap();
            assert_eq!(
                chunk_file(&path).unwrap(),
                streamed,
                "{size} bytes from a file"
            );
            // A size from an older stat (the file grew, or shrank, since): the chunks
            // are still those of what the file holds.
            for stale in [0, size as u64 / 2, READ_WHOLE, size as u64 + 5] {
                let (chunks, content, kept) =
                    chunk_open_file(open_nofollow(&path).unwrap(), stale, true).unwrap();
                assert_eq!((chunks, content), streamed, "{size} bytes read as {stale}");
                // Kept bytes are exactly what was chunked; a streamed file keeps none.
                match kept {
                    Some(kept) => assert_eq!(kept, data, "{size} bytes read as {stale}"),
                    None => assert!(size as u64 > READ_WHOLE, "{size} bytes not kept"),
                }
            }
        }
    }

    #[test]
    fn reading_in_blocks_finds_the_cut_points_of_fastcdcs_stream_chunker() {
        // Saved indexes hold the chunks fastcdc's StreamCDC found: reading in blocks
        // must find exactly those, wherever a block ends (mid-chunk, on a cut point,
        // with less than a whole largest chunk left in it).
        let data = noise(3 << 20, 63);
        let theirs: Vec<(u64, usize)> =
            fastcdc::v2020::StreamCDC::new(&data[..], MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
                .map(|c| {
                    let c = c.unwrap();
                    (c.offset, c.length)
                })
                .collect();
        assert!(theirs.len() > 20);
        for block in [MAX_CHUNK, MAX_CHUNK + 1, 300_001, 1 << 20, BLOCK, 3 << 20] {
            for len in [data.len(), data.len() - 1, 2 * MAX_CHUNK + 7] {
                let data = &data[..len];
                let expected: Vec<(u64, usize)> =
                    fastcdc::v2020::StreamCDC::new(data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
                        .map(|c| c.map(|c| (c.offset, c.length)).unwrap())
                        .collect();
                let mut ours: Vec<(u64, usize)> = Vec::new();
                let (failed, stopped) = cut_blocks(
                    data,
                    block,
                    7,
                    |_| false,
                    |at, bytes| {
                        assert_eq!(&bytes[..], &data[(at - 7) as usize..][..bytes.len()]);
                        ours.push((at - 7, bytes.len()));
                        true
                    },
                );
                assert!(failed.is_none() && stopped.is_none());
                assert_eq!(ours, expected, "{len} bytes in blocks of {block}");
            }
        }
    }

    #[test]
    fn cutting_from_both_ends_finds_the_cut_points_of_one_pass() {
        let data = noise(6 << 20, 61);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let whole = chunk_bytes(&data);
        let len = data.len() as u64;
        // Anywhere, including on a cut point, before the start and past the end.
        let on_a_cut = whole.0[whole.0.len() / 2].offset;
        for middle in [
            0,
            1,
            MIN_CHUNK as u64,
            len / 3,
            on_a_cut,
            len / 2 + 12345,
            len - 10,
            len,
            len + 1,
        ] {
            assert_eq!(
                chunk_in_halves(&file, middle).unwrap(),
                whole,
                "split at {middle}"
            );
        }
        // Small data: the second half is one short chunk, never a common point.
        let small = noise(MAX_CHUNK + 100, 62);
        std::fs::write(&path, &small).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert_eq!(chunk_in_halves(&file, 50_000).unwrap(), chunk_bytes(&small));
    }

    #[test]
    fn chunks_cover_the_file_and_respect_the_bounds() {
        let data = noise(3 << 20, 1);
        let (chunks, content) = chunk_bytes(&data);
        assert_eq!(content, content_id(&chunks));
        let mut edited = data.clone();
        edited[1 << 20] ^= 1;
        assert_ne!(
            chunk_bytes(&edited).1,
            content,
            "one bit changed, same identity"
        );
        let mut at = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.offset, at);
            let bytes = &data[c.offset as usize..][..c.len as usize];
            assert_eq!(c.hash, Hash::of(bytes));
            assert!(c.len as usize <= MAX_CHUNK);
            if i + 1 < chunks.len() {
                assert!(c.len as usize >= MIN_CHUNK);
            }
            at += u64::from(c.len);
        }
        assert_eq!(at, data.len() as u64);
        assert!(chunks.len() > 20, "{} chunks for 3 MiB", chunks.len());
        assert_eq!(chunk_bytes(&[]).0, Vec::new());
    }

    #[test]
    fn an_insertion_in_the_middle_changes_only_the_chunks_around_it() {
        let before = noise(8 << 20, 2);
        let mut after = before.clone();
        let middle = before.len() / 2;
        after.splice(middle..middle, noise(1000, 3));
        let (old, _) = chunk_bytes(&before);
        let (new, _) = chunk_bytes(&after);
        let known: std::collections::HashSet<Hash> = old.iter().map(|c| c.hash).collect();
        let changed: u64 = new
            .iter()
            .filter(|c| !known.contains(&c.hash))
            .map(|c| u64::from(c.len))
            .sum();
        assert!(
            changed <= 3 * MAX_CHUNK as u64,
            "{changed} bytes of new chunks for a 1000-byte insertion"
        );
    }
}
