//! A file being written on the secondary: its unnamed (or temporary) copy in the
//! destination's directory, filled chunk by chunk as pieces arrive (or appended to,
//! when streamed), each chunk checked against its hash (or hashed here, when
//! appended), then completed and linked (or renamed) into place.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::renameat;
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::temp::{create_named, temp_name};
use super::{Applier, ApplyError, ChunkSource, io};
use crate::chunk::{ChunkRef, Hash, content_id};
use crate::index::{Entry, Op};
use crate::path::RelPath;

/// Fewest chunks of a staged piece whose hashes are checked on several threads.
const PARALLEL_CHECKS: usize = 8;

/// A file being written: its temporary copy beside the destination, filled chunk by
/// chunk (see [`Applier::begin_write`]).
#[derive(Debug)]
pub struct PartialWrite {
    path: RelPath,
    name: std::ffi::OsString,
    dir: std::sync::Arc<OwnedFd>,
    /// Where the file is until it is placed (`None` once it is).
    temp: Option<Temp>,
    file: File,
    chunks: Vec<ChunkRef>,
    /// Where each hash occurs in `chunks`.
    at: HashMap<Hash, Vec<usize>>,
    filled: Vec<bool>,
    /// The chunks the current file is taken to have (see [`Applier::lacking`]).
    hint: Option<HashMap<Hash, ChunkRef>>,
    /// The metadata to set before the rename, if the write carries it.
    meta: Option<Box<Entry>>,
    /// Begun without a chunk list ([`Applier::begin_stream`]): chunks are appended
    /// ([`PartialWrite::append`]), hashed here.
    streamed: bool,
}

/// Where a file being written is until it is complete.
#[derive(Debug)]
enum Temp {
    /// A temporary file named beside the destination ([`temp_name`]), renamed into
    /// place; removed if the write is dropped.
    Named(std::ffi::OsString),
    /// A file without a name (`O_TMPFILE`), linked in at the destination once
    /// complete. Nothing to remove if the write is dropped or its writer dies: the
    /// kernel frees it with its last descriptor.
    Unnamed,
}

impl PartialWrite {
    /// A write of `chunks` (a streamed one: none yet) to `path`, into a temporary
    /// file created beside it with the permission bits of `mode`.
    pub(super) fn create(
        applier: &Applier,
        path: &RelPath,
        chunks: Vec<ChunkRef>,
        streamed: bool,
        parents: Option<&mut super::Parents>,
        mode: u32,
    ) -> Result<PartialWrite, ApplyError> {
        let (dir, name) = match parents {
            Some(parents) => applier.parent_kept(path, parents)?,
            None => {
                let (dir, name) = applier.parent(path)?;
                (std::sync::Arc::new(dir), name)
            }
        };
        let created = match applier.create_unnamed(&dir, mode) {
            Ok(Some(fd)) => Ok((Temp::Unnamed, fd)),
            Ok(None) => {
                let temp = temp_name(name);
                create_named(&dir, &temp, mode).map(|fd| (Temp::Named(temp), fd))
            }
            Err(e) => Err(e),
        };
        let (temp, fd) = created.map_err(|e| io(path, "create temporary file", e))?;
        let mut at: HashMap<Hash, Vec<usize>> = HashMap::new();
        for (i, chunk) in chunks.iter().enumerate() {
            at.entry(chunk.hash).or_default().push(i);
        }
        Ok(PartialWrite {
            path: path.clone(),
            name: name.to_os_string(),
            dir,
            temp: Some(temp),
            file: File::from(fd),
            filled: vec![false; chunks.len()],
            chunks,
            at,
            hint: None,
            meta: None,
            streamed,
        })
    }

    /// The file written.
    pub fn path(&self) -> &RelPath {
        &self.path
    }

    /// Whether this is the write of `op` (same file, same chunks).
    /// (A streamed write's chunk list was never checked against a size and content
    /// identity: the write that completes it must agree with what was appended.)
    pub fn is_for(&self, op: &Op) -> bool {
        let Op::Write {
            path,
            chunks,
            size,
            content,
            ..
        } = op
        else {
            return false;
        };
        *path == self.path
            && *chunks == self.chunks
            && (!self.streamed
                || (self
                    .chunks
                    .last()
                    .map_or(0, |c| c.offset + u64::from(c.len))
                    == *size
                    && content_id(chunks) == *content))
    }

    /// Sets `meta` (mode, owner, xattrs, mtime) on the new content once it is
    /// complete, before it is renamed into place.
    pub fn set_meta(&mut self, meta: Option<Box<Entry>>) {
        self.meta = meta;
    }

    /// Takes the current file to have `chunks` when filling in what was not put
    /// (each copied chunk still checked; one that does not match makes the file
    /// chunked after all, and distrusted next time).
    pub fn assume_current(&mut self, chunks: Option<Vec<ChunkRef>>) {
        self.hint = chunks.map(|chunks| chunks.into_iter().map(|c| (c.hash, c)).collect());
    }

    /// Writes the chunk `hash` wherever the file has it, after checking the bytes
    /// against the hash; a chunk the file does not have is refused.
    pub fn put(&mut self, hash: &Hash, bytes: &[u8]) -> Result<(), ApplyError> {
        if !self.fits(hash, bytes)? {
            return Err(self.mismatch(hash));
        }
        self.place(hash, bytes)
    }

    /// [`PartialWrite::put`] for each of `chunks`, in order, their hashes checked on
    /// several threads first (a large file's staged piece: hashing is most of the
    /// work of taking it). Stops at the first refused, as `put` would.
    pub fn put_all<B: AsRef<[u8]> + Send + Sync>(
        &mut self,
        chunks: &[(Hash, B)],
    ) -> Result<(), ApplyError> {
        let this = &*self;
        let checked: Vec<Result<bool, ApplyError>> =
            crate::parts::in_parts(chunks.iter().collect(), PARALLEL_CHECKS, |part| {
                part.into_iter()
                    .map(|(hash, bytes)| this.fits(hash, bytes.as_ref()))
                    .collect::<Vec<_>>()
            })
            .into_iter()
            .flatten()
            .collect();
        for ((hash, bytes), fits) in chunks.iter().zip(checked) {
            if !fits? {
                return Err(self.mismatch(hash));
            }
            self.place(hash, bytes.as_ref())?;
        }
        Ok(())
    }

    /// Appends `pieces`, each one chunk, to a write begun without a chunk list
    /// ([`Applier::begin_stream`]), hashed here on several threads: the hashes, in
    /// order (the chunk list the write that completes the file must give). Refused for
    /// a write begun with a chunk list, and for a piece empty or larger than any chunk
    /// (nothing of this call appended then).
    pub fn append<B: AsRef<[u8]> + Send + Sync>(
        &mut self,
        pieces: &[B],
    ) -> Result<Vec<Hash>, ApplyError> {
        use std::os::unix::fs::FileExt;
        let mut offset = self
            .chunks
            .last()
            .map_or(0, |c| c.offset + u64::from(c.len));
        let odd = pieces
            .iter()
            .map(|p| p.as_ref().len())
            .find(|len| *len == 0 || *len > crate::chunk::MAX_CHUNK);
        if let Some(len) = odd.or(if self.streamed { None } else { Some(0) }) {
            return Err(ApplyError::NotAChunk {
                path: self.path.clone(),
                offset,
                len,
            });
        }
        let hashes: Vec<Hash> =
            crate::parts::in_parts(pieces.iter().collect(), PARALLEL_CHECKS, |part| {
                part.into_iter()
                    .map(|bytes| Hash::of(bytes.as_ref()))
                    .collect::<Vec<_>>()
            })
            .into_iter()
            .flatten()
            .collect();
        for (bytes, hash) in pieces.iter().zip(&hashes) {
            let bytes = bytes.as_ref();
            self.file
                .write_all_at(bytes, offset)
                .map_err(|source| ApplyError::Io {
                    path: self.path.clone(),
                    what: "write",
                    source,
                })?;
            self.at.entry(*hash).or_default().push(self.chunks.len());
            self.chunks.push(ChunkRef {
                offset,
                // At most MAX_CHUNK (checked above).
                len: bytes.len() as u32,
                hash: *hash,
            });
            self.filled.push(true);
            offset += bytes.len() as u64;
        }
        Ok(hashes)
    }

    fn mismatch(&self, hash: &Hash) -> ApplyError {
        let offset = self
            .at
            .get(hash)
            .and_then(|p| p.first())
            .map_or(0, |i| self.chunks[*i].offset);
        ApplyError::HashMismatch {
            path: self.path.clone(),
            offset,
        }
    }

    /// Whether `bytes` are the chunk `hash` of this file (an error if the file has no
    /// such chunk).
    fn fits(&self, hash: &Hash, bytes: &[u8]) -> Result<bool, ApplyError> {
        let Some(first) = self.at.get(hash).and_then(|p| p.first()) else {
            return Err(ApplyError::MissingChunk {
                path: self.path.clone(),
                offset: 0,
            });
        };
        Ok(bytes.len() == self.chunks[*first].len as usize && Hash::of(bytes) == *hash)
    }

    /// Writes `bytes`, checked to be the chunk `hash`, wherever the file has it.
    fn place(&mut self, hash: &Hash, bytes: &[u8]) -> Result<(), ApplyError> {
        use std::os::unix::fs::FileExt;
        let places = self.at.get(hash).cloned().unwrap_or_default();
        for i in places {
            self.file
                .write_all_at(bytes, self.chunks[i].offset)
                .map_err(|source| ApplyError::Io {
                    path: self.path.clone(),
                    what: "write",
                    source,
                })?;
            self.filled[i] = true;
        }
        Ok(())
    }

    /// Fills in every chunk not put yet (from `data`, else copied from the current
    /// file at the destination, each checked against its hash), fsyncs the file and
    /// renames it into place.
    pub fn finish(mut self, applier: &Applier, data: &dyn ChunkSource) -> Result<(), ApplyError> {
        let result = self.complete(applier, data);
        if result.is_err() {
            // Whatever went wrong, the next attempt reads the current file afresh.
            if let Ok(mut last) = applier.last_chunked.lock() {
                *last = None;
            }
        }
        result
    }

    fn complete(&mut self, applier: &Applier, data: &dyn ChunkSource) -> Result<(), ApplyError> {
        // The current file is read only if a chunk was neither put nor sent (a small
        // file arrives whole: nothing to read).
        let mut current: Option<Option<(File, HashMap<Hash, ChunkRef>)>> = None;
        let mut hinted: Option<Option<File>> = None;
        let mut buffer = Vec::new();
        for i in 0..self.chunks.len() {
            if self.filled[i] {
                continue;
            }
            let chunk = self.chunks[i];
            let sent = data.chunk(&chunk.hash);
            if sent.is_none() && self.copy_hinted(applier, &mut hinted, &chunk, &mut buffer)? {
                continue;
            }
            let bytes: &[u8] = match &sent {
                Some(bytes) => bytes,
                None => {
                    let missing = ApplyError::MissingChunk {
                        path: self.path.clone(),
                        offset: chunk.offset,
                    };
                    let Some((file, have)) = current
                        .get_or_insert_with(|| applier.current(&self.path))
                        .as_mut()
                    else {
                        return Err(missing);
                    };
                    let Some(local) = have.get(&chunk.hash) else {
                        return Err(missing);
                    };
                    buffer.resize(local.len as usize, 0);
                    file.seek(SeekFrom::Start(local.offset))
                        .and_then(|_| file.read_exact(&mut buffer))
                        .map_err(|source| ApplyError::Io {
                            path: self.path.clone(),
                            what: "read current file",
                            source,
                        })?;
                    &buffer
                }
            };
            // Sent or copied (the current file may have changed since it was chunked),
            // each chunk is checked: with the chunk list checked at the start, the
            // file is then exactly the content named.
            self.put(&chunk.hash, bytes)?;
        }
        if let Some(meta) = self.meta.take() {
            // The temporary file was created here (O_EXCL): no xattrs of its own.
            applier.set_file_meta(&self.path, &self.file, &meta, true)?;
        }
        self.file.sync_all().map_err(|source| ApplyError::Io {
            path: self.path.clone(),
            what: "fsync",
            source,
        })?;
        match self.temp.take() {
            None => {}
            Some(Temp::Named(temp)) => {
                if let Err(e) = renameat(
                    self.dir.as_fd(),
                    temp.as_os_str(),
                    self.dir.as_fd(),
                    self.name.as_os_str(),
                ) {
                    self.temp = Some(Temp::Named(temp));
                    return Err(io(&self.path, "rename into place", e));
                }
            }
            Some(Temp::Unnamed) => {
                applier
                    .link_in(&self.file, &self.dir, &self.name)
                    .map_err(|e| io(&self.path, "link into place", e))?;
            }
        }
        if let Ok(mut distrusted) = applier.distrusted.lock() {
            distrusted.remove(&self.path);
        }
        Ok(())
    }

    /// Copies `chunk` from where the hint says the current file has it, if it does
    /// and the bytes there match; `false` if not (and then the hint is dropped and the
    /// file distrusted: what is left comes from chunking it).
    fn copy_hinted(
        &mut self,
        applier: &Applier,
        file: &mut Option<Option<File>>,
        chunk: &ChunkRef,
        buffer: &mut Vec<u8>,
    ) -> Result<bool, ApplyError> {
        use std::os::unix::fs::FileExt;
        let Some(local) = self.hint.as_ref().and_then(|h| h.get(&chunk.hash)).copied() else {
            return Ok(false);
        };
        let copied = file
            .get_or_insert_with(|| applier.open_current(&self.path))
            .as_ref()
            .is_some_and(|file| {
                buffer.resize(local.len as usize, 0);
                file.read_exact_at(buffer, local.offset).is_ok()
            });
        if copied && self.fits(&chunk.hash, buffer)? {
            self.place(&chunk.hash, buffer)?;
            return Ok(true);
        }
        self.hint = None;
        if let Ok(mut distrusted) = applier.distrusted.lock() {
            distrusted.insert(self.path.clone());
        }
        Ok(false)
    }
}

impl Drop for PartialWrite {
    fn drop(&mut self) {
        if let Some(Temp::Named(temp)) = self.temp.take() {
            let _ = unlinkat(
                self.dir.as_fd(),
                temp.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}
