//! Reading a brick into an [`Index`]: the whole tree ([`scan`], the initial or recovery
//! walk and the periodic backstop) or only the directories change notifications named
//! ([`rescan`], the live path: its cost is the changed directories' listings, not the
//! tree).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};

use crate::chunk::chunk_file_of_size;
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
            if let Some((entry, _)) = read_entry(dir, rel, (&reuse, None), &mut report)
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
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(error) => {
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
            let path = child.path();
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
                read_entry(&path, &rel, (reuse, keep), &mut report)
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

/// What tells one file or directory from another on a brick: its inode number, mixed
/// with its birth time where the filesystem records one (ext4, XFS, btrfs do). ext4
/// gives a freed inode number to the next file created, often in the same second: by
/// number alone, "remove a, create b" looked like "a renamed to b", and with
/// `ignore-deletes` the secondary lost `a`. Hard links share an inode, so they share
/// this too.
pub fn identity(meta: &std::fs::Metadata) -> u64 {
    let Some(born) = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    else {
        return meta.ino();
    };
    // splitmix64's finalizer: every bit of the birth time moves every bit of the mix.
    let mut z = born
        .as_secs()
        .wrapping_mul(1_000_000_007)
        .wrapping_add(u64::from(born.subsec_nanos()));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    meta.ino() ^ z ^ (z >> 31)
}

/// Fewest entries in a directory read on several threads.
const PARALLEL_LISTING: usize = 64;

/// The entry at `path` (`rel` under the root); `None` when it is not volume data
/// (device, fifo, socket) or could not be read (a failure in `report`).
fn read_entry(
    path: &Path,
    rel: &RelPath,
    (reuse, keep): (&Reuse<'_>, Option<&Keep>),
    report: &mut ScanReport,
) -> Option<(Entry, Option<Vec<u8>>)> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) => {
            if error.kind() != io::ErrorKind::NotFound {
                report.failures.push((rel.clone(), error.to_string()));
            }
            return None;
        }
    };
    let file_type = meta.file_type();
    let kind = if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_symlink() {
        match std::fs::read_link(path) {
            Ok(target) => EntryKind::Symlink(target.as_os_str().as_bytes().to_vec()),
            Err(error) => {
                report.failures.push((rel.clone(), error.to_string()));
                return None;
            }
        }
    } else if file_type.is_file() {
        EntryKind::File
    } else {
        // Devices, fifos and sockets are not volume data.
        return None;
    };
    let mut entry = Entry {
        size: if kind == EntryKind::File {
            meta.len()
        } else {
            0
        },
        kind,
        mode: meta.permissions().mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
        mtime_nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
        ino: identity(&meta),
        xattrs: if file_type.is_symlink() {
            Vec::new()
        } else {
            read_xattrs(path)
        },
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
        }
        None if keep.is_some_and(|keep| keep.defers(entry.size)) => {}
        None => {
            let keeping = keep.is_some_and(|keep| keep.take(entry.size));
            // What was taken from the budget is the size the stat gave: a file read at
            // another size is not kept; what is not kept goes back to the budget.
            let read = chunk_file_of_size(path, entry.size, keeping).map(|(c, h, bytes)| {
                (c, h, bytes.filter(|bytes| bytes.len() as u64 == entry.size))
            });
            if keeping
                && !matches!(read, Ok((_, _, Some(_))))
                && let Some(keep) = keep
            {
                keep.give_back(entry.size);
            }
            match read {
                Ok((chunks, content, bytes)) => {
                    report.files_hashed += 1;
                    report.bytes_hashed += entry.size;
                    entry.chunks = chunks;
                    entry.content = Some(content);
                    kept = bytes;
                }
                Err(error) => {
                    if error.kind() != io::ErrorKind::NotFound {
                        report.failures.push((rel.clone(), error.to_string()));
                    }
                    return None;
                }
            }
        }
    }
    Some((entry, kept))
}

fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names
        .filter(|name| synced_xattr(name.as_bytes()))
        .filter_map(|name| {
            let value = xattr::get(path, &name).ok()??;
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
