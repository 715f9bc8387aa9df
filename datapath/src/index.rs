//! A brick's index (every entry with its kind, metadata and, for files, chunk hashes)
//! and the operations that turn one index into another (scanning is [`crate::scan`]).
//!
//! [`diff`] works on a copy of the old index, applying each operation to it as it is
//! emitted, so that the operations are valid in order (a parent exists before its
//! child, a rename's source is where the copy says) and their end state is the new
//! index. Moves are found by inode: a file or directory whose inode appears at another
//! path is renamed there (also onto an existing file: rename replaces it), never
//! deleted and sent again; further paths of one inode become hard links.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkRef, Hash};
use crate::path::RelPath;

/// Where a secondary volume keeps the sync progress of the sessions writing into it
/// (top level of the volume).
pub const PROGRESS_DIR: &str = ".georep";
/// Top-level names of a brick that are not volume content (gluster's own, and the
/// sync progress kept in a secondary volume): never scanned, never written by an
/// operation.
pub const SKIPPED_TOP_LEVEL: &[&str] = &[".glusterfs", ".trashcan", PROGRESS_DIR];
/// Temporary files the secondary writes before renaming start with this.
pub const TEMP_PREFIX: &str = ".georep-tmp.";

/// Whether `path` lies under a [`SKIPPED_TOP_LEVEL`] name.
pub fn under_reserved_top_level(path: &RelPath) -> bool {
    let first = path
        .as_bytes()
        .split(|b| *b == b'/')
        .next()
        .unwrap_or_default();
    SKIPPED_TOP_LEVEL
        .iter()
        .any(|name| first == name.as_bytes())
}

/// Whether `path` is volume content: not under a [`SKIPPED_TOP_LEVEL`] name and not a
/// secondary's temporary file.
pub fn is_volume_content(path: &RelPath) -> bool {
    !under_reserved_top_level(path) && !path.file_name().starts_with(TEMP_PREFIX.as_bytes())
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link and its target (bytes, as stored).
    Symlink(Vec<u8>),
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Kind (and a symlink's target).
    pub kind: EntryKind,
    /// Size in bytes (files).
    pub size: u64,
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Its nanoseconds.
    pub mtime_nsec: u32,
    /// Which file or directory on the brick this is ([`crate::scan::identity`]: the
    /// inode number mixed with the birth time); moves and hard links are recognised by
    /// it.
    pub ino: u64,
    /// Extended attributes synced (`user.*`, and `trusted.*` but gluster's own).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A file's chunks.
    pub chunks: Vec<ChunkRef>,
    /// A file's whole-content BLAKE3.
    pub content: Option<Hash>,
}

impl Entry {
    /// What a [`Op::Meta`] carries of this entry: all but a file's chunks (not read
    /// by whoever applies it, and most of an index entry's size).
    pub fn meta_only(&self) -> Entry {
        Entry {
            kind: self.kind.clone(),
            size: self.size,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            mtime_nsec: self.mtime_nsec,
            ino: self.ino,
            xattrs: self.xattrs.clone(),
            chunks: Vec::new(),
            content: self.content,
        }
    }

    /// How [`diff`] models an entry it has just created: its metadata still to set
    /// (mode `u32::MAX`, which no entry has), its content not compared again.
    pub fn unset_meta(&self) -> Entry {
        Entry {
            mode: u32::MAX,
            xattrs: Vec::new(),
            ..self.meta_only()
        }
    }

    /// An entry whose kind is all that is known (what a secondary has at a path an
    /// interrupted worker may have changed): it matches nothing, so a diff against it
    /// sends the primary's entry there again, or removes it.
    pub fn unknown(dir: bool) -> Entry {
        Entry {
            kind: if dir { EntryKind::Dir } else { EntryKind::File },
            size: u64::MAX,
            mode: u32::MAX,
            uid: u32::MAX,
            gid: u32::MAX,
            mtime: i64::MIN,
            mtime_nsec: 0,
            ino: u64::MAX,
            xattrs: Vec::new(),
            chunks: Vec::new(),
            content: None,
        }
    }

    /// Whether `other` has the same metadata (mode, owner, mtime, xattrs).
    pub fn same_meta(&self, other: &Entry) -> bool {
        self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
            && self.mtime == other.mtime
            && self.mtime_nsec == other.mtime_nsec
            && self.xattrs == other.xattrs
    }

    /// Whether `other` has the same content (a file's bytes, a symlink's target).
    pub fn same_content(&self, other: &Entry) -> bool {
        match (&self.kind, &other.kind) {
            (EntryKind::File, EntryKind::File) => {
                self.size == other.size && self.content == other.content
            }
            (a, b) => a == b,
        }
    }
}

/// Every entry of a tree, by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Entries by path.
    pub entries: BTreeMap<RelPath, Entry>,
}

impl Index {
    /// Forgets what the index says of `places` (a path, and whether what is below it
    /// too), then takes each of `present` (a path and whether it is a directory) as
    /// [`Entry::unknown`]: what an interrupted round may have changed is re-checked,
    /// never assumed.
    pub fn forget(&mut self, places: &[(RelPath, bool)], present: &[(RelPath, bool)]) {
        for (path, below) in places {
            if *below {
                for p in paths_at_and_below(&self.entries, path) {
                    self.entries.remove(&p);
                }
            } else {
                self.entries.remove(path);
            }
        }
        for (path, dir) in present {
            self.entries.insert(path.clone(), Entry::unknown(*dir));
        }
    }
}

/// Whether an extended attribute is synced: `user.*`, and `trusted.*` except
/// gluster's own (gfid, afr, ec, glusterfs, dht).
pub fn synced_xattr(name: &[u8]) -> bool {
    if name.starts_with(b"user.") {
        return true;
    }
    name.starts_with(b"trusted.")
        && ![
            &b"trusted.gfid"[..],
            b"trusted.afr.",
            b"trusted.ec.",
            b"trusted.glusterfs.",
            b"trusted.dht",
            b"trusted.pgfid.",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// One operation on a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create a directory (its parent exists).
    Mkdir {
        /// Where.
        path: RelPath,
    },
    /// Create (or replace) a symlink.
    Symlink {
        /// Where.
        path: RelPath,
        /// Its target, as stored.
        target: Vec<u8>,
    },
    /// Make `path` another name of the file at `existing`.
    Link {
        /// The new name.
        path: RelPath,
        /// A name the file already has.
        existing: RelPath,
    },
    /// Move `from` to `to`, replacing a file at `to`.
    Rename {
        /// Current path.
        from: RelPath,
        /// New path.
        to: RelPath,
    },
    /// Write a file's content: the chunks in order.
    Write {
        /// Which file.
        path: RelPath,
        /// Its size.
        size: u64,
        /// Its whole-content hash.
        content: Hash,
        /// Its chunks.
        chunks: Vec<ChunkRef>,
        /// Its metadata, set on the new content before it is renamed into place (a
        /// worker folds a new file's [`Op::Meta`] into its write: one operation, one
        /// open, instead of two); `None` from [`diff`].
        meta: Option<Box<Entry>>,
    },
    /// Set metadata.
    Meta {
        /// Which entry.
        path: RelPath,
        /// The metadata (kind and content fields are ignored).
        entry: Box<Entry>,
    },
    /// Remove a file, symlink or (empty) directory.
    Remove {
        /// Which entry.
        path: RelPath,
        /// Whether it is a directory.
        dir: bool,
    },
}

impl Op {
    /// The path the operation creates or changes.
    pub fn path(&self) -> &RelPath {
        match self {
            Op::Mkdir { path }
            | Op::Symlink { path, .. }
            | Op::Link { path, .. }
            | Op::Write { path, .. }
            | Op::Meta { path, .. }
            | Op::Remove { path, .. } => path,
            Op::Rename { to, .. } => to,
        }
    }

    /// The places the operation changes, each with whether what is below it changes
    /// too (a rename's source and destination); what a saved index says of them may
    /// no longer hold once it is applied.
    pub fn touches(&self) -> Vec<(&RelPath, bool)> {
        match self {
            Op::Rename { from, to } => vec![(from, true), (to, true)],
            other => vec![(other.path(), false)],
        }
    }

    /// gluster's counters: ENTRY (namespace), DATA (content) or META.
    pub fn class(&self) -> OpClass {
        match self {
            Op::Write { .. } => OpClass::Data,
            Op::Meta { .. } => OpClass::Meta,
            _ => OpClass::Entry,
        }
    }
}

/// gluster's classes of changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// Namespace: create, mkdir, link, rename, unlink, rmdir.
    Entry,
    /// File content.
    Data,
    /// Mode, owner, times, xattrs.
    Meta,
}

/// The model `diff` applies its operations to.
struct View {
    entries: BTreeMap<RelPath, Entry>,
    /// The paths holding each inode (kept with `entries`: finding where an inode is
    /// must not scan the tree once per entry).
    by_ino: HashMap<u64, std::collections::BTreeSet<RelPath>>,
}

impl View {
    fn new(entries: &BTreeMap<RelPath, Entry>) -> View {
        let mut view = View {
            entries: BTreeMap::new(),
            by_ino: HashMap::new(),
        };
        for (path, entry) in entries {
            view.insert(path.clone(), entry.clone());
        }
        view
    }

    fn insert(&mut self, path: RelPath, entry: Entry) {
        let ino = entry.ino;
        if let Some(old) = self.entries.insert(path.clone(), entry) {
            self.unindex(old.ino, &path);
        }
        self.by_ino.entry(ino).or_default().insert(path);
    }

    fn remove(&mut self, path: &RelPath) -> Option<Entry> {
        let entry = self.entries.remove(path)?;
        self.unindex(entry.ino, path);
        Some(entry)
    }

    fn unindex(&mut self, ino: u64, path: &RelPath) {
        if let Some(paths) = self.by_ino.get_mut(&ino) {
            paths.remove(path);
            if paths.is_empty() {
                self.by_ino.remove(&ino);
            }
        }
    }

    fn set_ino(&mut self, path: &RelPath, ino: u64) {
        if let Some(mut entry) = self.remove(path) {
            entry.ino = ino;
            self.insert(path.clone(), entry);
        }
    }

    fn rename(&mut self, from: &RelPath, to: &RelPath) {
        let moved = paths_at_and_below(&self.entries, from);
        // Whatever was at `to` is replaced.
        self.remove_tree(to);
        for path in moved {
            if let (Some(entry), Some(dest)) = (self.remove(&path), path.rebase(from, to)) {
                self.insert(dest, entry);
            }
        }
    }

    fn remove_tree(&mut self, at: &RelPath) {
        for path in paths_at_and_below(&self.entries, at) {
            self.remove(&path);
        }
    }

    fn path_of_ino(&self, ino: u64, new: &Index) -> Option<RelPath> {
        // A place holding the inode that the new index does not want it at.
        self.by_ino
            .get(&ino)?
            .iter()
            .find(|p| new.entries.get(*p).is_none_or(|n| n.ino != ino))
            .cloned()
    }
}

/// `at` (if present) and the paths below it in `entries`, found by range, not by
/// looking at every path.
pub fn paths_at_and_below<V>(entries: &BTreeMap<RelPath, V>, at: &RelPath) -> Vec<RelPath> {
    let own = entries.contains_key(at).then(|| at.clone());
    own.into_iter()
        .chain(entries.range(at.below_bounds()).map(|(p, _)| p.clone()))
        .collect()
}

/// The operations that turn the tree `old` describes into the one `new` describes.
pub fn diff(old: &Index, new: &Index) -> Vec<Op> {
    let mut view = View::new(&old.entries);
    let mut ops = Vec::new();
    let mut by_depth: Vec<(&RelPath, &Entry)> = new.entries.iter().collect();
    // Compared in place: a key holding a copy of the path cost an allocation per
    // comparison.
    by_depth.sort_by(|(a, _), (b, _)| a.depth().cmp(&b.depth()).then_with(|| a.cmp(b)));

    // Directories, parents first: in place, moved here, or created.
    for (path, entry) in by_depth.iter().filter(|(_, e)| e.kind == EntryKind::Dir) {
        if view
            .entries
            .get(*path)
            .is_some_and(|e| e.ino == entry.ino && e.kind == EntryKind::Dir)
        {
            continue;
        }
        if view
            .entries
            .get(*path)
            .is_some_and(|e| e.kind != EntryKind::Dir)
        {
            // A file or symlink where a directory must be: it goes (moved elsewhere
            // later if the new tree has its inode, as a new entry then).
            ops.push(Op::Remove {
                path: (*path).clone(),
                dir: false,
            });
            view.remove_tree(path);
        }
        let source = view
            .path_of_ino(entry.ino, new)
            .filter(|p| {
                view.entries
                    .get(p)
                    .is_some_and(|e| e.kind == EntryKind::Dir)
            })
            .filter(|p| !path.starts_with(p));
        match source {
            Some(from) if !view.entries.contains_key(*path) => {
                ops.push(Op::Rename {
                    from: from.clone(),
                    to: (*path).clone(),
                });
                view.rename(&from, path);
            }
            _ => {
                if view.entries.contains_key(*path) {
                    // Another directory (a different inode) is here: keep it, it is
                    // the same name; its metadata is set below.
                    view.set_ino(path, entry.ino);
                } else {
                    ops.push(Op::Mkdir {
                        path: (*path).clone(),
                    });
                    view.insert((*path).clone(), entry.unset_meta());
                }
            }
        }
    }

    // Files and symlinks: in place, moved here, another name of one placed, or new.
    let mut placed: HashMap<u64, RelPath> = HashMap::new();
    for (path, entry) in by_depth.iter().filter(|(_, e)| e.kind != EntryKind::Dir) {
        let here = view.entries.get(*path);
        if here.is_some_and(|e| e.ino == entry.ino && same_kind(e, entry)) {
            placed.entry(entry.ino).or_insert_with(|| (*path).clone());
            continue;
        }
        if here.is_some_and(|e| e.kind == EntryKind::Dir) {
            remove_subtree_ops(&mut view, path, &mut ops);
        }
        let linked = placed
            .get(&entry.ino)
            .filter(|p| entry.kind == EntryKind::File && view.entries.contains_key(*p));
        if let Some(existing) = linked {
            ops.push(Op::Link {
                path: (*path).clone(),
                existing: existing.clone(),
            });
            if let Some(e) = view.entries.get(existing).cloned() {
                view.insert((*path).clone(), e);
            }
            continue;
        }
        let source = view
            .path_of_ino(entry.ino, new)
            .filter(|p| view.entries.get(p).is_some_and(|e| same_kind(e, entry)));
        match source {
            Some(from) => {
                ops.push(Op::Rename {
                    from: from.clone(),
                    to: (*path).clone(),
                });
                view.rename(&from, path);
            }
            None => {
                match &entry.kind {
                    EntryKind::Symlink(target) => ops.push(Op::Symlink {
                        path: (*path).clone(),
                        target: target.clone(),
                    }),
                    _ => ops.push(write_op(path, entry)),
                }
                view.insert((*path).clone(), entry.unset_meta());
            }
        }
        placed.entry(entry.ino).or_insert_with(|| (*path).clone());
    }

    // What the new tree does not have, deepest first.
    let mut gone: Vec<RelPath> = view
        .entries
        .keys()
        .filter(|p| !new.entries.contains_key(*p))
        .cloned()
        .collect();
    gone.sort_by_key(|p| std::cmp::Reverse(p.depth()));
    for path in gone {
        if let Some(e) = view.remove(&path) {
            ops.push(Op::Remove {
                path,
                dir: e.kind == EntryKind::Dir,
            });
        }
    }

    // Content of files whose bytes changed, then metadata (directories last, deepest
    // first: creating entries inside a directory changes its mtime).
    let mut meta_files = Vec::new();
    let mut meta_dirs = Vec::new();
    // A rewritten file with several names is written once; its other names link to it
    // (the secondary writes through a temporary file: a second write would split them).
    let mut rewritten: HashMap<u64, &RelPath> = HashMap::new();
    for (path, entry) in &new.entries {
        let Some(current) = view.entries.get(path) else {
            continue;
        };
        if entry.kind == EntryKind::File && current.mode != u32::MAX && !current.same_content(entry)
        {
            match rewritten.get(&entry.ino) {
                Some(existing) => ops.push(Op::Link {
                    path: path.clone(),
                    existing: (*existing).clone(),
                }),
                None => {
                    ops.push(write_op(path, entry));
                    rewritten.insert(entry.ino, path);
                }
            }
        }
    }
    // Every directory something was created in, renamed in or out of, or removed from
    // (the secondary writes through temporary files, so also rewritten files' parents)
    // gets its metadata back.
    let mut touched: std::collections::BTreeSet<RelPath> = std::collections::BTreeSet::new();
    for op in &ops {
        if let Op::Rename { from, .. } = op {
            touched.extend(from.parent());
        }
        touched.extend(op.path().parent());
    }
    for (path, entry) in &new.entries {
        let Some(current) = view.entries.get(path) else {
            continue;
        };
        let touched_dir = entry.kind == EntryKind::Dir && touched.contains(path);
        if touched_dir || current.mode == u32::MAX || !current.same_meta(entry) {
            let op = Op::Meta {
                path: path.clone(),
                entry: Box::new(entry.meta_only()),
            };
            if entry.kind == EntryKind::Dir {
                meta_dirs.push(op);
            } else {
                meta_files.push(op);
            }
        }
    }
    meta_dirs.sort_by_key(|op| std::cmp::Reverse(op.path().depth()));
    ops.extend(meta_files);
    ops.extend(meta_dirs);
    ops
}

/// `ops` with the [`Op::Meta`] of each file of at most `largest` bytes folded into
/// its [`Op::Write`] (and dropped from where it was) when nothing between them
/// touches that path or a directory above it: the secondary then sets the metadata on the new content before
/// renaming it into place, one operation and one open instead of two (a new file
/// always has both; on an initial sync they are half of all operations). Larger files
/// keep theirs (a worker writes them on streams of their own).
pub fn fold_meta(ops: &[Op], largest: u64) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    // Files whose write could still take its metadata: where that write is in `out`.
    let mut open: BTreeMap<RelPath, usize> = BTreeMap::new();
    for op in ops {
        if let Op::Meta { path, entry } = op
            && entry.kind == EntryKind::File
            && let Some(at) = open.remove(path)
            && let Some(Op::Write { meta, .. }) = out.get_mut(at)
        {
            *meta = Some(entry.clone());
            continue;
        }
        // Anything else naming a path (or a directory above it) ends its chance.
        let mut places = op.touches();
        if let Op::Link { existing, .. } = op {
            places.push((existing, false));
        }
        for (place, below) in places {
            let below = below || matches!(op, Op::Remove { dir: true, .. });
            if below {
                for path in paths_at_and_below(&open, place) {
                    open.remove(&path);
                }
            } else {
                open.remove(place);
            }
        }
        if let Op::Write {
            path,
            size,
            meta: None,
            ..
        } = op
            && *size <= largest
        {
            open.insert(path.clone(), out.len());
        }
        out.push(op.clone());
    }
    out
}

fn same_kind(a: &Entry, b: &Entry) -> bool {
    matches!(
        (&a.kind, &b.kind),
        (EntryKind::File, EntryKind::File)
            | (EntryKind::Dir, EntryKind::Dir)
            | (EntryKind::Symlink(_), EntryKind::Symlink(_))
    )
}

/// The operation that creates `entry` at `path` where nothing is (what [`diff`] sends
/// for a new entry), and the entry as it is there afterwards: a file of at most
/// `largest` bytes with its metadata folded in (as [`fold_meta`] would); anything else
/// with its metadata unset, left to a later [`Op::Meta`] (a directory's times move
/// as entries are created in it). `linked`: another name of the same file, already
/// created (a hard link to it).
pub fn create_op(
    path: &RelPath,
    entry: &Entry,
    linked: Option<&RelPath>,
    largest: u64,
) -> (Op, Entry) {
    let op = match (&entry.kind, linked) {
        (EntryKind::Dir, _) => Op::Mkdir { path: path.clone() },
        (EntryKind::Symlink(target), _) => Op::Symlink {
            path: path.clone(),
            target: target.clone(),
        },
        (EntryKind::File, Some(existing)) => Op::Link {
            path: path.clone(),
            existing: existing.clone(),
        },
        (EntryKind::File, None) if entry.size <= largest => {
            let mut op = write_op(path, entry);
            if let Op::Write { meta, .. } = &mut op {
                *meta = Some(Box::new(entry.meta_only()));
            }
            return (op, entry.clone());
        }
        (EntryKind::File, None) => write_op(path, entry),
    };
    (op, entry.unset_meta())
}

fn write_op(path: &RelPath, entry: &Entry) -> Op {
    Op::Write {
        path: path.clone(),
        size: entry.size,
        content: entry.content.unwrap_or(Hash([0; 32])),
        chunks: entry.chunks.clone(),
        meta: None,
    }
}

/// Removes the directory `at` and everything below it from `view`, emitting the
/// removals deepest first (`at` itself last).
fn remove_subtree_ops(view: &mut View, at: &RelPath, ops: &mut Vec<Op>) {
    let mut doomed: Vec<(RelPath, bool)> = paths_at_and_below(&view.entries, at)
        .into_iter()
        .filter_map(|p| {
            let dir = view.entries.get(&p)?.kind == EntryKind::Dir;
            Some((p, dir))
        })
        .collect();
    doomed.sort_by_key(|(p, _)| std::cmp::Reverse(p.depth()));
    for (path, dir) in doomed {
        ops.push(Op::Remove { path, dir });
    }
    view.remove_tree(at);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn write(path: &str, size: u64) -> Op {
        Op::Write {
            path: p(path),
            size,
            content: Hash([0; 32]),
            chunks: Vec::new(),
            meta: None,
        }
    }

    fn meta(path: &str, kind: EntryKind) -> Op {
        let mut entry = Entry::unknown(kind == EntryKind::Dir);
        entry.kind = kind;
        entry.mode = 0o640;
        Op::Meta {
            path: p(path),
            entry: Box::new(entry),
        }
    }

    fn folded(op: &Op) -> Option<(&RelPath, u32)> {
        match op {
            Op::Write {
                path,
                meta: Some(entry),
                ..
            } => Some((path, entry.mode)),
            _ => None,
        }
    }

    #[test]
    fn a_small_file_s_metadata_rides_with_its_write_unless_something_comes_between() {
        let ops = vec![
            Op::Mkdir { path: p("d") },
            write("d/a", 10),
            write("d/big", 10 << 20),
            write("e/moved/b", 10),
            write("e/c", 10),
            write("f", 10),
            // The directory above e/moved/b moves: its metadata stays where it was.
            Op::Rename {
                from: p("e/moved"),
                to: p("g"),
            },
            // Another name of f: f's metadata stays too.
            Op::Link {
                path: p("h"),
                existing: p("f"),
            },
            meta("d/a", EntryKind::File),
            meta("d/big", EntryKind::File),
            meta("g/b", EntryKind::File),
            meta("e/c", EntryKind::File),
            meta("f", EntryKind::File),
            meta("d", EntryKind::Dir),
        ];
        let out = fold_meta(&ops, 1 << 20);
        let carried: Vec<_> = out.iter().filter_map(folded).collect();
        assert_eq!(carried, vec![(&p("d/a"), 0o640), (&p("e/c"), 0o640)]);
        let metas: Vec<&RelPath> = out
            .iter()
            .filter(|op| matches!(op, Op::Meta { .. }))
            .map(Op::path)
            .collect();
        assert_eq!(metas, vec![&p("d/big"), &p("g/b"), &p("f"), &p("d")]);
        assert_eq!(out.len(), ops.len() - 2);
        // Order otherwise kept.
        assert_eq!(out[0], ops[0]);
        assert_eq!(out[2], ops[2]);
    }
}
