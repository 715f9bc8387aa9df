//! Reading a brick into an [`Index`]: the whole tree ([`scan`], the initial or recovery
//! walk and the periodic backstop) or only the directories change notifications named
//! ([`rescan`], the live path: its cost is the changed directories' listings, not the
//! tree).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};

use crate::chunk::chunk_open_file;
use crate::index::{Entry, EntryKind, Index, is_volume_content, paths_at_and_below, synced_xattr};
use crate::path::RelPath;

/// What a scan could not read (counted as FAILURES, retried by the next scan).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Files whose content was read and chunked (the others reused the old hashes).
    pub files_hashed: u64,
    /// Bytes read for that.
    pub bytes_hashed: u64,
    /// Paths that could not be read, and why.
    pub failures: Vec<(RelPath, String)>,
}

/// Scans the tree under `root`, reusing the chunk hashes of `previous` for files whose
/// path, inode, size and mtime are unchanged. (`previous` may be another replica's
/// index: hashes are never reused by inode alone here, inode numbers of two bricks
/// mean nothing to each other.)
pub fn scan(root: &Path, previous: Option<&Index>) -> io::Result<(Index, ScanReport)> {
    scan_streaming(root, previous, None, &mut |_, _| {})
}

/// What [`scan_streaming`] hands each directory's entries to, with the content it kept
/// of each (see [`Keep`]).
pub type Listed<'a> = dyn FnMut(&[(RelPath, Entry)], Vec<Option<Vec<u8>>>) + 'a;

/// The content of small files a [`scan_streaming`] keeps for its caller, so a file to
/// be sent is read once (for its hashes and for sending), within a budget of bytes
/// held at once: the caller gives back what it has handed on.
#[derive(Debug)]
pub struct Keep {
    /// Largest file kept.
    largest: u64,
    /// Bytes that may still be kept.
    left: AtomicI64,
    /// Files larger than this are listed unread: no chunks, no content identity (the
    /// caller reads them as it sends them, see [`crate::chunk::cut_pieces`]).
    defer_above: Option<u64>,
}

impl Keep {
    /// Keeps files of at most `largest` bytes, `budget` bytes at once.
    pub fn new(largest: u64, budget: u64) -> Keep {
        Keep {
            largest,
            left: AtomicI64::new(i64::try_from(budget).unwrap_or(i64::MAX)),
            defer_above: None,
        }
    }

    /// Also lists files larger than `size` unread (see [`Keep`]'s `defer_above`).
    pub fn deferring_above(mut self, size: u64) -> Keep {
        self.defer_above = Some(size);
        self
    }

    /// Whether a file of `size` bytes is listed unread.
    fn defers(&self, size: u64) -> bool {
        self.defer_above.is_some_and(|above| size > above)
    }

    /// Whether `size` more bytes may be kept (taken from the budget if so).
    fn take(&self, size: u64) -> bool {
        let Ok(size) = i64::try_from(size) else {
            return false;
        };
        if size as u64 > self.largest {
            return false;
        }
        if self.left.fetch_sub(size, Ordering::Relaxed) >= size {
            return true;
        }
        self.left.fetch_add(size, Ordering::Relaxed);
        false
    }

    /// Returns `size` bytes, kept content no longer held, to the budget.
    pub fn give_back(&self, size: u64) {
        self.left
            .fetch_add(i64::try_from(size).unwrap_or(0), Ordering::Relaxed);
    }
}

/// [`scan`], handing each directory's entries to `listed` as soon as they are read: a
/// directory's own entry before anything in it, so a caller can start creating the
/// tree elsewhere while the rest is still being read (the worker's initial sync does).
/// With `keep`, the content of small files read whole comes with them (and files over
/// its deferral size come unread).
pub fn scan_streaming(
    root: &Path,
    previous: Option<&Index>,
    keep: Option<&Keep>,
    listed: &mut Listed<'_>,
) -> io::Result<(Index, ScanReport)> {
    // Fails only for the root itself: a brick that cannot be read.
    std::fs::read_dir(root)?;
    let mut index = Index::default();
    let mut report = ScanReport::default();
    let reuse = |rel: &RelPath, _: &Entry| previous.and_then(|p| p.entries.get(rel));
    walk(
        root,
        root,
        (&reuse, keep),
        (&mut index, &mut report),
        listed,
    );
    Ok((index, report))
}

/// Brings `index`, this brick's own last scan, up to date by re-reading only the
/// directories in `dirty` (absolute paths under `root`; the root itself allowed):
/// their direct children are read again, a directory that is new at its path (created,
/// moved in, replaced) is walked whole, and what vanished is dropped with everything
/// below it. A file moved between two dirty directories keeps its hashes (found by
/// inode among what was re-read). What changed outside `dirty` is not seen: that is
/// the periodic full [`scan`]'s job.
pub fn rescan(
    root: &Path,
    mut index: Index,
    dirty: &BTreeSet<PathBuf>,
) -> io::Result<(Index, ScanReport)> {
    std::fs::read_dir(root)?;
    let mut report = ScanReport::default();
    let dirs: Vec<(Option<RelPath>, &PathBuf)> = dirty
        .iter()
        .filter_map(|dir| {
            if dir == root {
                Some((None, dir))
            } else {
                RelPath::under(root, dir).map(|rel| (Some(rel), dir))
            }
        })
        .collect();
    // 1. Take out the direct children of every dirty directory.
    let mut detached: BTreeMap<RelPath, Entry> = BTreeMap::new();
    for (rel, _) in &dirs {
        for path in direct_children(&index, rel.as_ref()) {
            if let Some(entry) = index.entries.remove(&path) {
                detached.insert(path, entry);
            }
        }
    }
    // 2. Read them again; directories new at their path are walked below (3).
    let mut graveyard: HashMap<u64, Entry> = HashMap::new();
    let mut to_walk = Vec::new();
    for (rel, dir) in &dirs {
        // The directory's own entry changed with its listing (mtime), and is read
        // from it, not from its parent's: read it again if it is still the same one.
        if let Some(rel) = rel {
            let same = index
                .entries
                .get(rel)
                .map(|old| (old.kind.clone(), old.ino));
            let reuse = |_: &RelPath, _: &Entry| None;
            let at = At {
                path: dir,
                dir: None,
            };
            if let Some((entry, _)) = read_entry(at, rel, (&reuse, None), &mut report)
                && same == Some((EntryKind::Dir, entry.ino))
            {
                index.entries.insert(rel.clone(), entry);
            }
        }
        let reuse = |path: &RelPath, _: &Entry| detached.get(path);
        let Some(children) = read_children(root, dir, (&reuse, None), &mut report) else {
            continue;
        };
        for (path, entry, _) in children {
            if entry.kind == EntryKind::Dir {
                let same = detached
                    .get(&path)
                    .is_some_and(|old| old.kind == EntryKind::Dir && old.ino == entry.ino);
                if !same {
                    bury_below(&mut index, &path, &mut graveyard);
                    to_walk.push(path.clone());
                }
            }
            debug_assert!(rel.as_ref().is_none_or(|r| path.starts_with(r)));
            index.entries.insert(path, entry);
        }
    }
    // What was a directory and is not that directory any more (removed, moved away,
    // replaced by a file): drop what was below it.
    for (path, old) in &detached {
        let still = index
            .entries
            .get(path)
            .is_some_and(|now| now.kind == EntryKind::Dir);
        if old.kind == EntryKind::Dir && !still {
            bury_below(&mut index, path, &mut graveyard);
        }
    }
    for entry in detached.into_values() {
        graveyard.entry(entry.ino).or_insert(entry);
    }
    // 3. Walk the new directories, reusing hashes of files that moved (by inode).
    let reuse = |_: &RelPath, entry: &Entry| graveyard.get(&entry.ino);
    for path in to_walk {
        walk(
            root,
            &root.join(path.as_path()),
            (&reuse, None),
            (&mut index, &mut report),
            &mut |_, _| {},
        );
    }
    Ok((index, report))
}

/// The paths directly in `dir` (`None`: the root) that `index` holds.
fn direct_children(index: &Index, dir: Option<&RelPath>) -> Vec<RelPath> {
    match dir {
        None => index
            .entries
            .keys()
            .filter(|p| p.parent().is_none())
            .cloned()
            .collect(),
        Some(dir) => index
            .entries
            .range(dir.below_bounds())
            .map(|(p, _)| p)
            .filter(|p| p.parent().as_ref() == Some(dir))
            .cloned()
            .collect(),
    }
}

/// Moves what lies strictly below `at` out of `index` into `graveyard` (by inode).
fn bury_below(index: &mut Index, at: &RelPath, graveyard: &mut HashMap<u64, Entry>) {
    for path in paths_at_and_below(&index.entries, at) {
        if &path == at {
            continue;
        }
        if let Some(entry) = index.entries.remove(&path) {
            graveyard.entry(entry.ino).or_insert(entry);
        }
    }
}

/// An entry as a scan read it, with its content where it was kept (see [`Keep`]).
type ReadEntry = (RelPath, Entry, Option<Vec<u8>>);

/// Where a scan may take a file's hashes from: an older entry for `rel`, or `None`.
type Reuse<'a> = dyn Fn(&RelPath, &Entry) -> Option<&'a Entry> + Sync + 'a;

/// Adds everything below `dir` (recursively) to `index`, each directory's entries
/// also handed to `listed` as read.
fn walk(
    root: &Path,
    dir: &Path,
    (reuse, keep): (&Reuse<'_>, Option<&Keep>),
    (index, report): (&mut Index, &mut ScanReport),
    listed: &mut Listed<'_>,
) {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Some(read) = read_children(root, &dir, (reuse, keep), report) else {
            continue;
        };
        let (children, kept): (Vec<_>, Vec<_>) = read
            .into_iter()
            .map(|(rel, entry, kept)| ((rel, entry), kept))
            .unzip();
        listed(&children, kept);
        for (rel, entry) in children {
            if entry.kind == EntryKind::Dir {
                pending.push(root.join(rel.as_path()));
            }
            index.entries.insert(rel, entry);
        }
    }
}

/// The entries directly in `dir`, or `None` when it cannot be listed (a failure,
/// unless it is simply gone: its parent's listing says so).
fn read_children(
    root: &Path,
    dir: &Path,
    (reuse, keep): (&Reuse<'_>, Option<&Keep>),
    report: &mut ScanReport,
) -> Option<Vec<ReadEntry>> {
    // One descriptor for the listing and for reading the entries relative to it: one
    // name looked up per entry, not every component of its path for each of the
    // stat, open and xattr calls; and the entries listed are the entries read, even
    // if the directory is renamed meanwhile.
    let opened = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .and_then(|fd| rustix::fs::Dir::read_from(&fd).map(|listing| (fd, listing)));
    let (opened, listing) = match opened {
        Ok(opened) => opened,
        Err(errno) => {
            let error = io::Error::from(errno);
            if error.kind() != io::ErrorKind::NotFound
                && let Some(rel) = RelPath::under(root, dir)
            {
                report.failures.push((rel, error.to_string()));
            }
            return None;
        }
    };
    let children: Vec<(PathBuf, RelPath)> = listing
        .flatten()
        .filter_map(|child| {
            let name = std::ffi::OsStr::from_bytes(child.file_name().to_bytes());
            if name == "." || name == ".." {
                return None;
            }
            let path = dir.join(name);
            let rel = RelPath::under(root, &path).filter(is_volume_content)?;
            Some((path, rel))
        })
        .collect();
    // A large directory's entries are read (stat, xattrs, and the content of new or
    // changed files hashed) on several threads: one thread left the other cores idle
    // while a tree of small files was hashed for the first time.
    let parts = crate::parts::in_parts(children, PARALLEL_LISTING, |part| {
        let mut report = ScanReport::default();
        let entries: Vec<ReadEntry> = part
            .into_iter()
            .filter_map(|(path, rel)| {
                let at = At {
                    path: &path,
                    dir: Some(&opened).zip(path.file_name()),
                };
                read_entry(at, &rel, (reuse, keep), &mut report)
                    .map(|(entry, kept)| (rel, entry, kept))
            })
            .collect();
        (entries, report)
    });
    let mut out = Vec::new();
    for (entries, part) in parts {
        out.extend(entries);
        report.files_hashed += part.files_hashed;
        report.bytes_hashed += part.bytes_hashed;
        report.failures.extend(part.failures);
    }
    Some(out)
}

/// What tells one file or directory from another on a brick: its inode number `ino`,
/// mixed with its birth time `born` (seconds, nanoseconds) where the filesystem
/// records one (ext4, XFS, btrfs do). ext4 gives a freed inode number to the next file
/// created, often in the same second: by number alone, "remove a, create b" looked like
/// "a renamed to b", and with `ignore-deletes` the secondary lost `a`. Hard links share
/// an inode, so they share this too.
pub fn identity(ino: u64, born: Option<(i64, u32)>) -> u64 {
    // A birth time before 1970 counts as none (as it did when read through std).
    let Some((secs, nanos)) = born.filter(|(secs, _)| *secs >= 0) else {
        return ino;
    };
    // splitmix64's finalizer: every bit of the birth time moves every bit of the mix.
    let mut z = (secs as u64)
        .wrapping_mul(1_000_000_007)
        .wrapping_add(u64::from(nanos));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ino ^ z ^ (z >> 31)
}

/// Fewest entries in a directory read on several threads.
const PARALLEL_LISTING: usize = 64;

/// Where [`read_entry`] reads an entry: its full path, and, when its directory is
/// open, that directory and its name in it (then used instead of the path).
struct At<'a> {
    path: &'a Path,
    dir: Option<(&'a std::os::fd::OwnedFd, &'a std::ffi::OsStr)>,
}

impl At<'_> {
    /// The entry's status, not following a final symlink (with its birth time where
    /// the filesystem has one).
    fn stat(&self) -> io::Result<rustix::fs::Statx> {
        use rustix::fs::{AtFlags, StatxFlags};
        let flags = AtFlags::SYMLINK_NOFOLLOW;
        let mask = StatxFlags::BASIC_STATS | StatxFlags::BTIME;
        Ok(match self.dir {
            Some((dir, name)) => rustix::fs::statx(dir, name, flags, mask)?,
            None => rustix::fs::statx(rustix::fs::CWD, self.path, flags, mask)?,
        })
    }

    /// The entry opened for reading, not following a final symlink.
    fn open(&self) -> io::Result<std::fs::File> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match self.dir {
            Some((dir, name)) => rustix::fs::openat(dir, name, flags, Mode::empty())?,
            None => rustix::fs::open(self.path, flags, Mode::empty())?,
        };
        Ok(std::fs::File::from(fd))
    }
}

/// The entry at `at` (`rel` under the root); `None` when it is not volume data
/// (device, fifo, socket) or could not be read (a failure in `report`).
fn read_entry(
    at: At<'_>,
    rel: &RelPath,
    (reuse, keep): (&Reuse<'_>, Option<&Keep>),
    report: &mut ScanReport,
) -> Option<(Entry, Option<Vec<u8>>)> {
    let fail = |report: &mut ScanReport, error: io::Error| {
        if error.kind() != io::ErrorKind::NotFound {
            report.failures.push((rel.clone(), error.to_string()));
        }
    };
    let stat = match at.stat() {
        Ok(stat) => stat,
        Err(error) => {
            fail(report, error);
            return None;
        }
    };
    let kind = match u32::from(stat.stx_mode) & nix::libc::S_IFMT {
        nix::libc::S_IFDIR => EntryKind::Dir,
        nix::libc::S_IFLNK => match std::fs::read_link(at.path) {
            Ok(target) => EntryKind::Symlink(target.as_os_str().as_bytes().to_vec()),
            Err(error) => {
                report.failures.push((rel.clone(), error.to_string()));
                return None;
            }
        },
        nix::libc::S_IFREG => EntryKind::File,
        // Devices, fifos and sockets are not volume data.
        _ => return None,
    };
    let born = rustix::fs::StatxFlags::from_bits_retain(stat.stx_mask)
        .contains(rustix::fs::StatxFlags::BTIME)
        .then_some((stat.stx_btime.tv_sec, stat.stx_btime.tv_nsec));
    let mut entry = Entry {
        size: if kind == EntryKind::File {
            stat.stx_size
        } else {
            0
        },
        mode: u32::from(stat.stx_mode) & 0o7777,
        uid: stat.stx_uid,
        gid: stat.stx_gid,
        mtime: stat.stx_mtime.tv_sec,
        mtime_nsec: stat.stx_mtime.tv_nsec,
        ino: identity(stat.stx_ino, born),
        // A file read below has its attributes read through the open file instead.
        xattrs: if kind == EntryKind::Dir {
            read_xattrs(at.path)
        } else {
            Vec::new()
        },
        kind,
        chunks: Vec::new(),
        content: None,
    };
    if entry.kind != EntryKind::File {
        return Some((entry, None));
    }
    let mut kept = None;
    let reusable = reuse(rel, &entry).filter(|old| {
        old.kind == EntryKind::File
            && old.ino == entry.ino
            && old.size == entry.size
            && old.mtime == entry.mtime
            && old.mtime_nsec == entry.mtime_nsec
            && old.content.is_some()
    });
    match reusable {
        Some(old) => {
            entry.chunks = old.chunks.clone();
            entry.content = old.content;
            entry.xattrs = read_xattrs(at.path);
        }
        None if keep.is_some_and(|keep| keep.defers(entry.size)) => {
            entry.xattrs = read_xattrs(at.path);
        }
        None => {
            let keeping = keep.is_some_and(|keep| keep.take(entry.size));
            // What was taken from the budget is the size the stat gave: a file read at
            // another size is not kept; what is not kept goes back to the budget.
            let read = at.open().and_then(|file| {
                let xattrs = read_file_xattrs(&file);
                let (chunks, content, bytes) = chunk_open_file(file, entry.size, keeping)?;
                let bytes = bytes.filter(|bytes| bytes.len() as u64 == entry.size);
                Ok((chunks, content, bytes, xattrs))
            });
            if keeping
                && !matches!(read, Ok((_, _, Some(_), _)))
                && let Some(keep) = keep
            {
                keep.give_back(entry.size);
            }
            match read {
                Ok((chunks, content, bytes, xattrs)) => {
                    report.files_hashed += 1;
                    report.bytes_hashed += entry.size;
                    entry.chunks = chunks;
                    entry.content = Some(content);
                    entry.xattrs = xattrs;
                    kept = bytes;
                }
                Err(error) => {
                    fail(report, error);
                    return None;
                }
            }
        }
    }
    Some((entry, kept))
}

/// The synced extended attributes of the entry at `path` (not following a final
/// symlink), sorted.
fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    synced_xattrs(xattr::list(path), |name| xattr::get(path, name))
}

/// [`read_xattrs`] of an open file.
fn read_file_xattrs(file: &std::fs::File) -> Vec<(Vec<u8>, Vec<u8>)> {
    use xattr::FileExt;
    synced_xattrs(file.list_xattr(), |name| file.get_xattr(name))
}

/// The synced ones of the attributes `names`, each with its value from `get`, sorted
/// (none when they cannot be listed; one that went away meanwhile is left out).
fn synced_xattrs(
    names: io::Result<xattr::XAttrs>,
    get: impl Fn(&std::ffi::OsStr) -> io::Result<Option<Vec<u8>>>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(names) = names else {
        return Vec::new();
    };
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names
        .filter(|name| synced_xattr(name.as_bytes()))
        .filter_map(|name| {
            let value = get(&name).ok()??;
            Some((name.as_bytes().to_vec(), value))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn dirty(root: &Path, dirs: &[&str]) -> BTreeSet<PathBuf> {
        dirs.iter()
            .map(|d| {
                if d.is_empty() {
                    root.to_path_buf()
                } else {
                    root.join(d)
                }
            })
            .collect()
    }

    /// What std's metadata says of `path`, in an entry's terms (kind aside).
    fn as_std_sees(path: &Path) -> (u64, u32, u32, u32, i64, u32, u64) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = fs::symlink_metadata(path).unwrap();
        let born = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| (d.as_secs() as i64, d.subsec_nanos()));
        let size = if meta.is_file() { meta.len() } else { 0 };
        (
            size,
            meta.permissions().mode() & 0o7777,
            meta.uid(),
            meta.gid(),
            meta.mtime(),
            meta.mtime_nsec() as u32,
            identity(meta.ino(), born),
        )
    }

    #[test]
    fn a_scan_reads_each_entry_as_stat_and_its_attributes_say() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir(root.join("d")).unwrap();
        // More files than one thread reads: some are read on the listing's threads.
        for i in 0..(PARALLEL_LISTING + 6) {
            let file = root.join(format!("d/f{i}"));
            fs::write(&file, vec![i as u8; i]).unwrap();
            xattr::set(&file, "user.n", i.to_string().as_bytes()).unwrap();
        }
        xattr::set(root.join("d"), "user.dir", b"yes").unwrap();
        std::os::unix::fs::symlink("d/f1", root.join("link")).unwrap();
        let check = |index: &Index| {
            assert_eq!(index.entries.len(), PARALLEL_LISTING + 6 + 2);
            for (path, entry) in &index.entries {
                let at = root.join(path.as_path());
                let seen = (
                    entry.size,
                    entry.mode,
                    entry.uid,
                    entry.gid,
                    entry.mtime,
                    entry.mtime_nsec,
                    entry.ino,
                );
                assert_eq!(seen, as_std_sees(&at), "{path}");
                let xattrs: Vec<(Vec<u8>, Vec<u8>)> = match entry.kind {
                    EntryKind::Symlink(_) => Vec::new(),
                    _ => xattr::list(&at)
                        .unwrap()
                        .map(|n| (n.as_bytes().to_vec(), xattr::get(&at, &n).unwrap().unwrap()))
                        .collect(),
                };
                assert!(!xattrs.is_empty() || path.to_string() == "link");
                assert_eq!(entry.xattrs, xattrs, "{path}");
            }
            let link = RelPath::new("link").unwrap();
            assert_eq!(
                index.entries[&link].kind,
                EntryKind::Symlink(b"d/f1".to_vec())
            );
        };
        // Read afresh (each file opened and hashed), then again with every file's
        // hashes reused (its attributes read through its path).
        let (index, report) = scan(root, None).unwrap();
        assert_eq!(report.files_hashed, (PARALLEL_LISTING + 6) as u64);
        check(&index);
        let (again, report) = scan(root, Some(&index)).unwrap();
        assert_eq!(report.files_hashed, 0);
        check(&again);
    }

    #[test]
    fn a_streaming_scan_lists_parents_first_and_keeps_content_within_its_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        for (i, name) in ["a/one", "a/two", "a/b/three", "a/b/c/four"]
            .iter()
            .enumerate()
        {
            fs::write(root.join(name), vec![i as u8; 100]).unwrap();
        }
        fs::write(root.join("a/large"), vec![9u8; 5000]).unwrap();
        // Files of at most 4096 bytes, 250 bytes at once, none given back: two kept.
        let keep = Keep::new(4096, 250);
        let mut seen: Vec<RelPath> = Vec::new();
        let mut kept = 0;
        let (index, report) = scan_streaming(root, None, Some(&keep), &mut |entries, contents| {
            assert_eq!(entries.len(), contents.len());
            for ((path, entry), content) in entries.iter().zip(contents) {
                if let Some(parent) = path.parent() {
                    assert!(seen.contains(&parent), "{path} listed before {parent}");
                }
                seen.push(path.clone());
                if let Some(content) = content {
                    kept += 1;
                    assert_eq!(content, fs::read(root.join(path.as_path())).unwrap());
                    assert_eq!(content.len() as u64, entry.size);
                }
            }
        })
        .unwrap();
        assert_eq!(kept, 2, "kept beyond the budget, or nothing");
        assert!(report.failures.is_empty());
        assert_eq!(
            index,
            scan(root, None).unwrap().0,
            "streaming changed the index"
        );
        assert_eq!(seen.len(), index.entries.len());
        // Given back, the budget holds two more.
        keep.give_back(200);
        assert!(keep.take(100) && keep.take(100) && !keep.take(100));
    }

    #[test]
    fn a_rescan_of_the_changed_directories_equals_a_full_scan() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("a/x/deep")).unwrap();
        fs::create_dir_all(root.join("b")).unwrap();
        fs::create_dir_all(root.join("c")).unwrap();
        fs::write(root.join("a/x/deep/f"), vec![7u8; 300_000]).unwrap();
        fs::write(root.join("a/one"), b"1").unwrap();
        fs::write(root.join("c/gone"), b"2").unwrap();
        fs::write(root.join("top"), b"3").unwrap();
        let (before, _) = scan(root, None).unwrap();

        // A directory moved to another parent, a file created, one removed, a
        // directory replaced by a file, a top-level file changed.
        fs::rename(root.join("a/x"), root.join("b/x")).unwrap();
        fs::write(root.join("b/new"), b"new").unwrap();
        fs::remove_file(root.join("c/gone")).unwrap();
        fs::remove_dir(root.join("c")).unwrap();
        fs::write(root.join("c"), b"now a file").unwrap();
        fs::write(root.join("top"), b"changed").unwrap();
        let (full, _) = scan(root, Some(&before)).unwrap();
        let (partial, report) =
            rescan(root, before.clone(), &dirty(root, &["a", "b", ""])).unwrap();
        assert_eq!(partial, full);
        // The moved 300 kB file kept its hashes: only `new`, `c` and `top` were read.
        assert_eq!(report.files_hashed, 3, "{report:?}");

        // A directory not named dirty is not read: its change waits for a full scan.
        fs::write(root.join("b/x/deep/f"), b"edited").unwrap();
        let (stale, _) = rescan(root, partial.clone(), &dirty(root, &["a"])).unwrap();
        assert_eq!(stale, partial);
        let (fresh, _) = rescan(root, partial, &dirty(root, &["b/x/deep"])).unwrap();
        assert_eq!(fresh, scan(root, None).unwrap().0);
        // A file made in a nested directory changes that directory's mtime too, which
        // its own listing (not its parent's) is asked for.
        fs::write(root.join("b/x/deep/g"), b"g").unwrap();
        let (nested, _) = rescan(root, fresh, &dirty(root, &["b/x/deep"])).unwrap();
        assert_eq!(nested, scan(root, None).unwrap().0);
        let fresh = nested;
        // A dirty directory that is gone is no failure.
        let (_, report) = rescan(root, fresh, &dirty(root, &["nowhere"])).unwrap();
        assert!(report.failures.is_empty());
    }
}
