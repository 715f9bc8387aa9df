//! The secondary side: operations applied under the secondary volume's root, never
//! outside it.
//!
//! Every operation names its entries by [`RelPath`] (no `..`, nothing absolute); the
//! parent directory is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! from a descriptor of the root, and the operation is done relative to that
//! descriptor on the last component alone (`renameat`, `unlinkat`, `mkdirat`, ...,
//! files opened `O_NOFOLLOW`). A symlink or `..` on the way therefore fails instead of
//! leading elsewhere, also when someone swaps a directory for a symlink meanwhile.
//!
//! File content is written to a file without a name (`O_TMPFILE`) in its
//! destination's directory (where the file system has none: a named temporary file
//! beside it), each chunk (sent, or copied from the current file) verified against
//! its BLAKE3 hash and the chunk list against the content identity
//! ([`crate::chunk::content_id`]), fsynced, then linked (or renamed) into place: a
//! reader sees the old file or the new one, never a part.
//! Chunks the destination's current file already has are copied from it; only the
//! others must be sent ([`Applier::missing_chunks`]).
//!
//! Operations are idempotent, so a worker resuming from its last acknowledged
//! position may send some again: a rename whose source is gone and whose destination
//! exists, a removal of what is not there, a mkdir of an existing directory succeed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, renameat};
use nix::sys::stat::mkdirat;
use nix::sys::stat::{Mode, UtimensatFlags, fchmod, futimens, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};

use crate::chunk::{ChunkRef, Hash, chunk_reader, content_id};
use crate::index::{Entry, EntryKind, Op, synced_xattr, under_reserved_top_level};
use crate::path::{PathError, RelPath};

mod partial;
mod temp;
pub use partial::PartialWrite;
use temp::temp_name;

/// Chunk bytes sent for a write, by hash (shared slices of what was received).
pub type FileData = HashMap<Hash, bytes::Bytes>;

/// Where the bytes of chunks that were sent come from (a batch's own data, or chunks
/// staged on disk ahead of it for files too large for one message).
pub trait ChunkSource {
    /// The bytes of the chunk `hash`, if sent.
    fn chunk(&self, hash: &Hash) -> Option<std::borrow::Cow<'_, [u8]>>;
}

impl ChunkSource for FileData {
    fn chunk(&self, hash: &Hash) -> Option<std::borrow::Cow<'_, [u8]>> {
        self.get(hash)
            .map(|b| std::borrow::Cow::Borrowed(b.as_ref()))
    }
}

/// The open directory of the last file written in a run of independent writes (see
/// [`Applier::apply_in_run`]).
#[derive(Default)]
pub struct Parents(Option<(RelPath, std::sync::Arc<OwnedFd>)>);

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A path that is not plain and relative.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A symlink, `..` or a non-directory on the way to the entry.
    #[error("{path}: refused, the way there leaves the volume (a symlink or a file on the way)")]
    Escapes {
        /// The entry.
        path: RelPath,
    },
    /// A chunk whose bytes do not hash to what the operation says.
    #[error("{path}: chunk at offset {offset} does not match its hash")]
    HashMismatch {
        /// The file.
        path: RelPath,
        /// The chunk's offset.
        offset: u64,
    },
    /// The assembled file does not hash to the content hash.
    #[error("{path}: content does not match its hash")]
    ContentMismatch {
        /// The file.
        path: RelPath,
    },
    /// A path under a top-level name that is not volume content (`.glusterfs`,
    /// `.trashcan`, the sync progress directory).
    #[error("{path}: refused, not volume content (reserved top-level name)")]
    Reserved {
        /// The entry.
        path: RelPath,
    },
    /// A chunk neither sent nor found in the current file.
    #[error("{path}: chunk at offset {offset} was not sent and is not here")]
    MissingChunk {
        /// The file.
        path: RelPath,
        /// The chunk's offset.
        offset: u64,
    },
    /// Bytes appended to a file being sent while read that cannot be one chunk, or
    /// appended to a file that is not sent so.
    #[error(
        "{path}: {len} bytes appended at offset {offset}: not a chunk of a file sent while read"
    )]
    NotAChunk {
        /// The file.
        path: RelPath,
        /// Where they would go.
        offset: u64,
        /// How many bytes.
        len: usize,
    },
    /// A system call failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The entry.
        path: RelPath,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &RelPath, what: &'static str, errno: Errno) -> ApplyError {
    match errno {
        // openat2's answers to a symlink or `..` on the way (RESOLVE_NO_SYMLINKS,
        // RESOLVE_BENEATH), and to a file where a directory must be.
        Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => ApplyError::Escapes { path: path.clone() },
        _ => ApplyError::Io {
            path: path.clone(),
            what,
            source: std::io::Error::from(errno),
        },
    }
}

/// Applies operations under one root (a secondary volume's path on this node).
#[derive(Debug)]
pub struct Applier {
    root: OwnedFd,
    root_path: PathBuf,
    /// Whether owners and `trusted.*` attributes can be set (running as root).
    privileged: bool,
    /// The last file chunked: its path, identity and chunks (see [`Self::current`]).
    last_chunked: std::sync::Mutex<Option<LastChunked>>,
    /// Files whose [`Known`] chunks turned out wrong: chunked again, not trusted, until
    /// a write of them succeeds.
    distrusted: std::sync::Mutex<std::collections::HashSet<RelPath>>,
    /// Whether files are written unnamed (`O_TMPFILE`) and linked in when complete;
    /// turned off for good the first time the file system refuses one.
    unnamed: std::sync::atomic::AtomicBool,
}

/// What the sender's saved index says the file at a path is: trusted when the file
/// there still has that size and mtime (rsync's quick check), so that which chunks it
/// lacks is known without reading it; every chunk copied from it is still checked
/// against its hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Known {
    /// Its size.
    pub size: u64,
    /// Its modification time, seconds.
    pub mtime: i64,
    /// Its nanoseconds.
    pub mtime_nsec: u32,
    /// Its chunks.
    pub chunks: Vec<ChunkRef>,
}

/// A file chunked: its path, which version of it, its chunks by hash.
type LastChunked = (RelPath, FileIdentity, HashMap<Hash, ChunkRef>);

/// What identifies one version of a file: any write, truncation, rename over it or
/// attribute change moves its ctime, a replacement changes its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl Applier {
    /// An applier for the directory `root`.
    pub fn open(root: &Path) -> std::io::Result<Applier> {
        let fd = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)?;
        let privileged = nix::unistd::geteuid().is_root();
        // Linking an unnamed file in needs CAP_DAC_READ_SEARCH or /proc.
        let unnamed = privileged || Path::new(temp::PROC_FDS).is_dir();
        Ok(Applier {
            root: fd,
            root_path: root.to_path_buf(),
            privileged,
            unnamed: std::sync::atomic::AtomicBool::new(unnamed),
            last_chunked: std::sync::Mutex::new(None),
            distrusted: std::sync::Mutex::new(Default::default()),
        })
    }

    /// This applier, writing through named temporary files only (renamed into place),
    /// as it does on a file system without `O_TMPFILE`.
    pub fn with_named_temporaries(self) -> Applier {
        self.unnamed
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// The parent directory of `path`, opened beneath the root without symlinks, and
    /// the last component.
    fn parent<'p>(&self, path: &'p RelPath) -> Result<(OwnedFd, &'p OsStr), ApplyError> {
        let name = OsStr::from_bytes(path.file_name());
        let parent = match path.parent() {
            Some(parent) => parent,
            None => {
                let fd = self.root.try_clone().map_err(|e| ApplyError::Io {
                    path: path.clone(),
                    what: "dup root",
                    source: e,
                })?;
                return Ok((fd, name));
            }
        };
        let how = beneath(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC);
        let fd = openat2(self.root.as_fd(), parent.as_path(), how)
            .map_err(|e| io(path, "open parent", e))?;
        Ok((fd, name))
    }

    /// [`Self::parent`], kept in `parents` for the next path in the same directory.
    fn parent_kept<'p>(
        &self,
        path: &'p RelPath,
        parents: &mut Parents,
    ) -> Result<(std::sync::Arc<OwnedFd>, &'p OsStr), ApplyError> {
        let name = OsStr::from_bytes(path.file_name());
        let parent = path.parent();
        if let Some((kept, dir)) = &parents.0
            && parent.as_ref() == Some(kept)
        {
            return Ok((dir.clone(), name));
        }
        let (dir, name) = self.parent(path)?;
        let dir = std::sync::Arc::new(dir);
        parents.0 = parent.map(|parent| (parent, dir.clone()));
        Ok((dir, name))
    }

    /// Appends to `out` what is at `path` here (and, if `below`, what is below it), each
    /// with whether it is a directory (volume content only: no temporary files,
    /// nothing reserved), never following a symlink; stops at `limit` entries in
    /// `out`. Nothing there: nothing appended.
    pub fn present(
        &self,
        path: &RelPath,
        below: bool,
        limit: usize,
        out: &mut Vec<(RelPath, bool)>,
    ) {
        if out.len() >= limit || !crate::index::is_volume_content(path) {
            return;
        }
        let Some(stat) = self.lstat(path) else {
            return;
        };
        let is_dir = file_type(&stat) == nix::sys::stat::SFlag::S_IFDIR;
        out.push((path.clone(), is_dir));
        if !is_dir || !below {
            return;
        }
        let how = beneath(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC);
        let Ok(fd) = openat2(self.root.as_fd(), path.as_path(), how) else {
            return;
        };
        let Ok(mut listing) = nix::dir::Dir::from_fd(fd) else {
            return;
        };
        let names: Vec<Vec<u8>> = listing
            .iter()
            .flatten()
            .map(|e| e.file_name().to_bytes().to_vec())
            .filter(|n| n.as_slice() != b"." && n.as_slice() != b"..")
            .collect();
        for name in names {
            let mut child = path.as_bytes().to_vec();
            child.push(b'/');
            child.extend_from_slice(&name);
            if let Ok(child) = RelPath::new(child) {
                self.present(&child, true, limit, out);
            }
        }
    }

    /// Which of `chunks` the file now at `path` lacks (what the primary must send),
    /// and the chunks it is taken to have when that comes from `known` (its size and
    /// mtime still match, and it has not been caught wrong): then the file is not
    /// read; else it is chunked.
    pub fn lacking(
        &self,
        path: &RelPath,
        chunks: &[ChunkRef],
        known: Option<&Known>,
    ) -> (Vec<Hash>, Option<Vec<ChunkRef>>) {
        let trusted = known.filter(|known| {
            let distrusted = self.distrusted.lock().map_or(true, |d| d.contains(path));
            !distrusted && self.quick_check(path, known)
        });
        let wanted = chunks.iter().map(|c| c.hash);
        match trusted {
            Some(known) => {
                let have: std::collections::HashSet<&Hash> =
                    known.chunks.iter().map(|c| &c.hash).collect();
                let missing = not_in(wanted, |h| have.contains(h));
                (missing, Some(known.chunks.clone()))
            }
            None => {
                let have = self.current_chunks(path).unwrap_or_default();
                (not_in(wanted, |h| have.contains_key(h)), None)
            }
        }
    }

    /// Whether the regular file at `path` has `known`'s size and mtime.
    fn quick_check(&self, path: &RelPath, known: &Known) -> bool {
        let Some(stat) = self.lstat(path) else {
            return false;
        };
        file_type(&stat) == nix::sys::stat::SFlag::S_IFREG
            && u64::try_from(stat.st_size).ok() == Some(known.size)
            && stat.st_mtime == known.mtime
            && u32::try_from(stat.st_mtime_nsec).ok() == Some(known.mtime_nsec)
    }

    /// What is at `path` (not followed), if anything.
    fn lstat(&self, path: &RelPath) -> Option<nix::sys::stat::FileStat> {
        let (dir, name) = self.parent(path).ok()?;
        nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()
    }

    /// Opens the file at `path` for reading, without following it.
    fn open_current(&self, path: &RelPath) -> Option<File> {
        let (dir, name) = self.parent(path).ok()?;
        let fd = openat(
            dir.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        Some(File::from(fd))
    }

    /// The chunks of `chunks` that the file now at `path` does not have (what the
    /// primary must send).
    pub fn missing_chunks(&self, path: &RelPath, wanted: &[Hash]) -> Vec<Hash> {
        let have = self.current_chunks(path).unwrap_or_default();
        not_in(wanted.iter().copied(), |h| have.contains_key(h))
    }

    /// The current file at `path`, opened without following it, and its chunks by hash.
    /// The chunks of the last file chunked are remembered with its identity (device,
    /// inode, size, mtime, ctime): asked again for the same unchanged file (a write
    /// right after [`Self::missing_chunks`]), the file is not chunked twice. What is
    /// copied from it is verified chunk by chunk as it is copied.
    fn current(&self, path: &RelPath) -> Option<(File, HashMap<Hash, ChunkRef>)> {
        let mut file = self.open_current(path)?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let identity = FileIdentity::of(&meta);
        if let Ok(last) = self.last_chunked.lock()
            && let Some((at, id, chunks)) = last.as_ref()
            && at == path
            && *id == identity
        {
            return Some((file, chunks.clone()));
        }
        let (chunks, _) = chunk_reader(std::io::BufReader::new(&mut file)).ok()?;
        let chunks: HashMap<Hash, ChunkRef> = chunks.into_iter().map(|c| (c.hash, c)).collect();
        if let Ok(mut last) = self.last_chunked.lock() {
            *last = Some((path.clone(), identity, chunks.clone()));
        }
        Some((file, chunks))
    }

    fn current_chunks(&self, path: &RelPath) -> Option<HashMap<Hash, ChunkRef>> {
        self.current(path).map(|(_, chunks)| chunks)
    }

    /// [`Self::apply`] for one of a run of operations that each change one file and
    /// nothing else (small files' writes, files' metadata), in which no directory is
    /// created, moved or removed: a write into the directory of the one before it does
    /// not open that directory again (`parents` keeps it open). Between runs, a new
    /// [`Parents`]: a directory moved or replaced meanwhile would still be written
    /// into at its old place.
    pub fn apply_in_run(
        &self,
        op: &Op,
        data: &dyn ChunkSource,
        parents: &mut Parents,
    ) -> Result<(), ApplyError> {
        self.apply_with(op, data, Some(parents))
    }

    /// Applies one operation; `data` holds the chunk bytes a [`Op::Write`] needs.
    pub fn apply(&self, op: &Op, data: &dyn ChunkSource) -> Result<(), ApplyError> {
        self.apply_with(op, data, None)
    }

    /// [`Self::apply`], a write's directory taken from (or kept in) `parents` if given.
    fn apply_with(
        &self,
        op: &Op,
        data: &dyn ChunkSource,
        parents: Option<&mut Parents>,
    ) -> Result<(), ApplyError> {
        let mut paths = vec![op.path()];
        match op {
            Op::Rename { from, .. } => paths.push(from),
            Op::Link { existing, .. } => paths.push(existing),
            _ => {}
        }
        if let Some(path) = paths.into_iter().find(|p| under_reserved_top_level(p)) {
            return Err(ApplyError::Reserved { path: path.clone() });
        }
        match op {
            Op::Mkdir { path } => {
                let (dir, name) = self.parent(path)?;
                match mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => Ok(()),
                    Err(e) => Err(io(path, "mkdir", e)),
                }
            }
            Op::Symlink { path, target } => {
                let (dir, name) = self.parent(path)?;
                let temp = temp_name(name);
                let _ = unlinkat(dir.as_fd(), temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
                symlinkat(OsStr::from_bytes(target), dir.as_fd(), temp.as_os_str())
                    .map_err(|e| io(path, "symlink", e))?;
                renameat(dir.as_fd(), temp.as_os_str(), dir.as_fd(), name)
                    .map_err(|e| io(path, "rename symlink into place", e))
            }
            Op::Link { path, existing } => {
                let (from_dir, from_name) = self.parent(existing)?;
                let (dir, name) = self.parent(path)?;
                let temp = temp_name(name);
                let _ = unlinkat(dir.as_fd(), temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
                linkat(
                    from_dir.as_fd(),
                    from_name,
                    dir.as_fd(),
                    temp.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| io(path, "link", e))?;
                renameat(dir.as_fd(), temp.as_os_str(), dir.as_fd(), name)
                    .map_err(|e| io(path, "rename link into place", e))
            }
            Op::Rename { from, to } => {
                let (from_dir, from_name) = self.parent(from)?;
                let (to_dir, to_name) = self.parent(to)?;
                match renameat(from_dir.as_fd(), from_name, to_dir.as_fd(), to_name) {
                    Ok(()) => Ok(()),
                    // Done before (a resumed worker sends it again).
                    Err(Errno::ENOENT) if exists(&to_dir, to_name) => Ok(()),
                    Err(e) => Err(io(to, "rename", e)),
                }
            }
            Op::Remove { path, dir: is_dir } => {
                let (dir, name) = self.parent(path)?;
                let flag = if *is_dir {
                    UnlinkatFlags::RemoveDir
                } else {
                    UnlinkatFlags::NoRemoveDir
                };
                match unlinkat(dir.as_fd(), name, flag) {
                    Ok(()) | Err(Errno::ENOENT) => Ok(()),
                    Err(e) => Err(io(path, "remove", e)),
                }
            }
            Op::Write {
                path,
                size,
                content,
                chunks,
                meta,
            } => {
                // Created with the permission bits it will have, as rsync does (set-id
                // bits only after the owner is set).
                let mode = meta.as_ref().map_or(TEMP_MODE, |meta| meta.mode & 0o777);
                let mut write =
                    self.begin_write_in(path, (*size, content, chunks), parents, mode)?;
                write.set_meta(meta.clone());
                write.finish(self, data)
            }
            Op::Meta { path, entry } => self.set_meta(path, entry),
        }
    }

    /// Starts writing the content of a [`Op::Write`] to `path`: checks the chunk list
    /// against `size` and `content` and creates the temporary file beside `path`.
    /// Chunks then go straight into it ([`PartialWrite::put`]) as they arrive;
    /// [`PartialWrite::finish`] fills in the rest and renames it into place. Dropped
    /// unfinished, the temporary file is removed.
    pub fn begin_write(
        &self,
        path: &RelPath,
        size: u64,
        content: &Hash,
        chunks: &[ChunkRef],
    ) -> Result<PartialWrite, ApplyError> {
        self.begin_write_in(path, (size, content, chunks), None, TEMP_MODE)
    }

    /// [`Self::begin_write`], the file's directory taken from (or kept in) `parents`.
    /// `mode`: the permission bits the temporary file is created with.
    fn begin_write_in(
        &self,
        path: &RelPath,
        (size, content, chunks): (u64, &Hash, &[ChunkRef]),
        parents: Option<&mut Parents>,
        mode: u32,
    ) -> Result<PartialWrite, ApplyError> {
        if under_reserved_top_level(path) {
            return Err(ApplyError::Reserved { path: path.clone() });
        }
        let mut end = 0u64;
        for chunk in chunks {
            if chunk.offset != end {
                return Err(ApplyError::ContentMismatch { path: path.clone() });
            }
            end += u64::from(chunk.len);
        }
        if content_id(chunks) != *content || end != size {
            return Err(ApplyError::ContentMismatch { path: path.clone() });
        }
        PartialWrite::create(self, path, chunks.to_vec(), false, parents, mode)
    }

    /// Starts writing a file at `path` whose chunks are not known yet (a new file
    /// sent while it is read and chunked): each chunk is appended to the temporary
    /// file in order and hashed here ([`PartialWrite::append`]), and the write that
    /// completes it must name exactly the chunks appended.
    pub fn begin_stream(&self, path: &RelPath) -> Result<PartialWrite, ApplyError> {
        if under_reserved_top_level(path) {
            return Err(ApplyError::Reserved { path: path.clone() });
        }
        PartialWrite::create(self, path, Vec::new(), true, None, TEMP_MODE)
    }

    fn set_meta(&self, path: &RelPath, entry: &Entry) -> Result<(), ApplyError> {
        let (dir, name) = self.parent(path)?;
        let mtime = TimeSpec::new(entry.mtime, i64::from(entry.mtime_nsec));
        let omit = TimeSpec::UTIME_OMIT;
        if let EntryKind::Symlink(_) = entry.kind {
            // Symlinks have no mode or xattrs of their own here; owner and time are
            // set on the link itself.
            if self.privileged {
                fchownat(
                    dir.as_fd(),
                    name,
                    Some(Uid::from_raw(entry.uid)),
                    Some(Gid::from_raw(entry.gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io(path, "chown", e))?;
            }
            return utimensat(
                dir.as_fd(),
                name,
                &omit,
                &mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| io(path, "set mtime", e));
        }
        let flags = match entry.kind {
            EntryKind::Dir => OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            _ => OFlag::O_RDONLY,
        };
        let fd = openat(
            dir.as_fd(),
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| io(path, "open for metadata", e))?;
        self.set_file_meta(path, &File::from(fd), entry, false)
    }

    /// Sets owner (when privileged), mode, xattrs and mtime of the open file `file`
    /// (the entry at `path`, named in errors): in that order, since a chown clears
    /// set-id bits and setting xattrs moves the times.
    /// `fresh`: a file this applier has just created, which has no xattrs to remove.
    fn set_file_meta(
        &self,
        path: &RelPath,
        file: &File,
        entry: &Entry,
        fresh: bool,
    ) -> Result<(), ApplyError> {
        // A file created here often has the wanted owner and mode already (created
        // with the wanted permission bits, by the wanted owner): one fstat instead of
        // a chown and a chmod per small file.
        let had = if fresh {
            nix::sys::stat::fstat(file.as_fd())
                .ok()
                .map(|stat| (stat.st_uid, stat.st_gid, stat.st_mode & 0o7777))
        } else {
            None
        };
        let owned = had.is_some_and(|(uid, gid, _)| (uid, gid) == (entry.uid, entry.gid));
        if self.privileged && !owned {
            fchown(
                file.as_fd(),
                Some(Uid::from_raw(entry.uid)),
                Some(Gid::from_raw(entry.gid)),
            )
            .map_err(|e| io(path, "chown", e))?;
        }
        // (A file created here has no set-id bits for a chown to clear.)
        let moded = had.is_some_and(|(_, _, mode)| mode == entry.mode & 0o7777);
        if !moded {
            fchmod(file.as_fd(), Mode::from_bits_truncate(entry.mode))
                .map_err(|e| io(path, "chmod", e))?;
        }
        self.set_xattrs(path, file, &entry.xattrs, fresh)?;
        let mtime = TimeSpec::new(entry.mtime, i64::from(entry.mtime_nsec));
        futimens(file.as_fd(), &TimeSpec::UTIME_OMIT, &mtime).map_err(|e| io(path, "set mtime", e))
    }

    fn set_xattrs(
        &self,
        path: &RelPath,
        file: &File,
        wanted: &[(Vec<u8>, Vec<u8>)],
        fresh: bool,
    ) -> Result<(), ApplyError> {
        use xattr::FileExt;
        let settable =
            |name: &[u8]| synced_xattr(name) && (self.privileged || !name.starts_with(b"trusted."));
        if !fresh && let Ok(names) = file.list_xattr() {
            for name in names {
                let bytes = name.as_bytes();
                if settable(bytes) && !wanted.iter().any(|(n, _)| n == bytes) {
                    let _ = file.remove_xattr(&name);
                }
            }
        }
        for (name, value) in wanted.iter().filter(|(n, _)| settable(n)) {
            file.set_xattr(OsStr::from_bytes(name), value)
                .map_err(|source| ApplyError::Io {
                    path: path.clone(),
                    what: "set xattr",
                    source,
                })?;
        }
        Ok(())
    }
}

/// The hashes of `wanted` that `have` says are not there, sorted, each once.
fn not_in(wanted: impl Iterator<Item = Hash>, have: impl Fn(&Hash) -> bool) -> Vec<Hash> {
    let mut missing: Vec<Hash> = wanted.filter(|h| !have(h)).collect();
    missing.sort();
    missing.dedup();
    missing
}

/// `openat2` resolution with `flags` that stays beneath the root and follows no
/// symlink.
fn beneath(flags: OFlag) -> OpenHow {
    OpenHow::new().flags(flags).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    )
}

/// The file type bits of `stat`.
fn file_type(stat: &nix::sys::stat::FileStat) -> nix::sys::stat::SFlag {
    nix::sys::stat::SFlag::from_bits_truncate(stat.st_mode) & nix::sys::stat::SFlag::S_IFMT
}

fn exists(dir: &OwnedFd, name: &OsStr) -> bool {
    nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
}

/// The permission bits of a temporary file whose final mode is not known yet.
const TEMP_MODE: u32 = 0o600;
