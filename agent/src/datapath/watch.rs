//! Change notifications for a primary brick: inotify on every directory of the brick
//! (through the `inotify` crate), collected into the set of directories whose listing
//! changed, which the next round re-reads ([`georep_datapath::rescan`]) instead of
//! walking the whole brick.
//!
//! Only changes are asked for: no `IN_OPEN` (which `notify` always adds), so reading a
//! brick, ours to hash it or a client's through the volume, queues nothing and cannot
//! overflow the queue. Gluster's own tree (`.glusterfs`, tens of thousands of
//! directories) and our temporary files are not watched.
//!
//! Never silent: an overflowed inotify queue asks for a full scan; a watch that cannot
//! be added (the `fs.inotify.max_user_watches` limit, no inotify instance left) turns
//! live detection off for good (every round is then a full scan, `Hybrid Crawl`) and
//! says why.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use georep_datapath::RelPath;
use georep_datapath::index::is_volume_content;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Most directories remembered between two rounds; past it, a full scan is cheaper.
const MAX_DIRTY: usize = 100_000;

/// What each directory's watch reports: what changes a listing or an entry's metadata
/// or content, and the directory itself going away; never opens or reads.
fn watch_mask() -> WatchMask {
    WatchMask::ATTRIB
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
        | WatchMask::DONT_FOLLOW
        | WatchMask::EXCL_UNLINK
}

/// What the next round must read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Nothing changed.
    None,
    /// The listings of these directories changed.
    Dirs(BTreeSet<PathBuf>),
    /// Anything may have changed: walk the brick (why).
    Full(String),
}

/// Changes noticed since the last [`BrickWatch::take`].
#[derive(Debug, Default)]
struct Pending {
    dirs: BTreeSet<PathBuf>,
    full: Option<String>,
    /// Why live detection is off for good, if it is.
    off: Option<String>,
}

/// Why a watch could not be had.
enum Trouble {
    /// Live detection cannot work (why): every round walks the brick.
    Off(String),
    /// Something was missed (why): one walk.
    Missed(String),
}

/// The inotify watch of one brick.
pub struct BrickWatch {
    pending: Arc<Mutex<Pending>>,
    /// The write end of a pipe the reading thread also polls: dropping it ends that
    /// thread (which then closes the inotify instance).
    _stop: Option<OwnedFd>,
}

impl BrickWatch {
    /// Watches every directory under `brick` (this walks the tree: run it off the
    /// async threads). Changes made while it starts are caught by the first round's
    /// full scan.
    pub fn start(brick: &Path) -> BrickWatch {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let stop = match Watching::new(brick, pending.clone()) {
            Ok(watching) => watching.spawn(),
            Err(trouble) => {
                note_trouble(brick, &pending, trouble);
                None
            }
        };
        BrickWatch {
            pending,
            _stop: stop,
        }
    }

    /// What changed since the last call; then forgets it.
    pub fn take(&self) -> Changes {
        let Ok(mut pending) = self.pending.lock() else {
            return Changes::Full("change notifications were lost".into());
        };
        let dirs = std::mem::take(&mut pending.dirs);
        if let Some(off) = &pending.off {
            return Changes::Full(off.clone());
        }
        if let Some(why) = pending.full.take() {
            return Changes::Full(why);
        }
        if dirs.is_empty() {
            Changes::None
        } else {
            Changes::Dirs(dirs)
        }
    }

    /// Why live change detection is off, if it is (every round walks the brick).
    pub fn off(&self) -> Option<String> {
        self.pending.lock().ok().and_then(|p| p.off.clone())
    }
}

/// Records why notifications cannot be trusted (see [`Trouble`]), saying it once.
fn note_trouble(root: &Path, pending: &Mutex<Pending>, trouble: Trouble) {
    let Ok(mut pending) = pending.lock() else {
        return;
    };
    match trouble {
        Trouble::Off(why) => {
            if pending.off.is_none() {
                tracing::warn!(brick = %root.display(), "{why}");
            }
            pending.off = Some(why);
        }
        Trouble::Missed(why) => {
            tracing::warn!(brick = %root.display(), "{why}; walking the brick");
            pending.full = Some(why);
        }
    }
}

/// The inotify instance of one brick and which directory each watch is on.
struct Watching {
    root: PathBuf,
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    pending: Arc<Mutex<Pending>>,
}

impl Watching {
    /// An inotify instance watching every directory of the brick `root`.
    fn new(root: &Path, pending: Arc<Mutex<Pending>>) -> Result<Watching, Trouble> {
        let inotify = Inotify::init().map_err(|error| {
            if error.raw_os_error() == Some(Errno::EMFILE as i32) {
                Trouble::Off(format!(
                    "no inotify instance left (raise fs.inotify.max_user_instances): {error}; \
                     walking the brick every change-interval"
                ))
            } else {
                Trouble::Off(format!(
                    "cannot start inotify: {error}; walking the brick every change-interval"
                ))
            }
        })?;
        let mut watching = Watching {
            root: root.to_path_buf(),
            inotify,
            dirs: HashMap::new(),
            pending,
        };
        match watching.watch_tree(root) {
            Err(Trouble::Missed(_)) | Ok(()) => Ok(watching),
            Err(off) => Err(off),
        }
    }

    /// Watches `top` and every directory below it that is volume content (a directory
    /// watched already keeps its watch, now under this path).
    fn watch_tree(&mut self, top: &Path) -> Result<(), Trouble> {
        let mut stack = vec![top.to_path_buf()];
        while let Some(dir) = stack.pop() {
            match self.inotify.watches().add(&dir, watch_mask()) {
                Ok(wd) => {
                    self.dirs.insert(wd, dir.clone());
                }
                // Gone, or replaced by a file or symlink, since it was listed: its
                // parent's listing says so.
                Err(error)
                    if matches!(
                        error.raw_os_error().map(Errno::from_raw),
                        Some(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP)
                    ) =>
                {
                    continue;
                }
                Err(error) if error.raw_os_error() == Some(Errno::ENOSPC as i32) => {
                    return Err(Trouble::Off(
                        "the inotify watch limit is reached (raise fs.inotify.max_user_watches); \
                         walking the brick every change-interval"
                            .to_string(),
                    ));
                }
                Err(error) => {
                    return Err(Trouble::Missed(format!(
                        "cannot watch {}: {error}",
                        dir.display()
                    )));
                }
            }
            let Ok(listing) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in listing.flatten() {
                // The type from the listing: a symlink to a directory is not followed.
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let path = entry.path();
                    if is_volume_data(&self.root, &path) {
                        stack.push(path);
                    }
                }
            }
        }
        Ok(())
    }

    /// Records `trouble` for this brick (see [`note_trouble`]).
    fn trouble(&self, trouble: Trouble) {
        note_trouble(&self.root, &self.pending, trouble);
    }

    /// Stops watching `top` and every directory below it.
    fn unwatch_tree(&mut self, top: &Path) {
        let gone: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, dir)| dir.starts_with(top))
            .map(|(wd, _)| wd.clone())
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            let _ = self.inotify.watches().remove(wd);
        }
    }

    /// Reads notifications on a thread of its own until the returned pipe end is
    /// dropped; `None` (and a full walk every round) if the thread cannot start.
    fn spawn(mut self) -> Option<OwnedFd> {
        let (wake, stop) = match nix::unistd::pipe() {
            Ok(pipe) => pipe,
            Err(error) => {
                self.trouble(Trouble::Off(format!("cannot watch the brick: {error}")));
                return None;
            }
        };
        let thread = std::thread::Builder::new()
            .name("georep-inotify".into())
            .spawn(move || self.read_until(&wake));
        match thread {
            Ok(_) => Some(stop),
            Err(error) => {
                tracing::warn!(%error, "cannot start the inotify thread");
                None
            }
        }
    }

    /// Reads and records notifications until `wake` reports its other end closed.
    fn read_until(&mut self, wake: &OwnedFd) {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let ready = {
                let mut fds = [
                    PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
                    PollFd::new(wake.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => fds[1].any().unwrap_or(true),
                    Err(Errno::EINTR) => false,
                    Err(error) => {
                        tracing::warn!(%error, "cannot wait for inotify");
                        true
                    }
                }
            };
            if ready {
                return;
            }
            let events: Vec<(WatchDescriptor, EventMask, Option<std::ffi::OsString>)> =
                match self.inotify.read_events(&mut buffer) {
                    Ok(events) => events
                        .map(|e| (e.wd, e.mask, e.name.map(OsStr::to_os_string)))
                        .collect(),
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(error) => {
                        self.trouble(Trouble::Off(format!(
                            "cannot read inotify: {error}; walking the brick every change-interval"
                        )));
                        return;
                    }
                };
            for (wd, mask, name) in events {
                self.record(wd, mask, name.as_deref());
            }
        }
    }

    /// Records one notification: the directory whose listing it changes, and watches
    /// added or dropped for a directory made, moved in, or moved away.
    fn record(&mut self, wd: WatchDescriptor, mask: EventMask, name: Option<&OsStr>) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            self.trouble(Trouble::Missed("the inotify queue overflowed".into()));
            return;
        }
        if mask.contains(EventMask::IGNORED) {
            // The watch is gone (its directory removed, or unwatched above).
            self.dirs.remove(&wd);
            return;
        }
        let Some(dir) = self.dirs.get(&wd).cloned() else {
            return;
        };
        let path = match name {
            Some(name) => dir.join(name),
            None => dir,
        };
        if !is_volume_data(&self.root, &path) {
            return;
        }
        if mask.contains(EventMask::ISDIR) && name.is_some() {
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                if let Err(trouble) = self.watch_tree(&path) {
                    self.trouble(trouble);
                }
            } else if mask.contains(EventMask::MOVED_FROM) {
                self.unwatch_tree(&path);
            }
        }
        // A change to an entry shows in its directory's listing (its metadata is read
        // from there); a change to the root itself is nothing we sync.
        let listing = if path == self.root {
            path
        } else {
            match path.parent() {
                Some(parent) => parent.to_path_buf(),
                None => return,
            }
        };
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        pending.dirs.insert(listing);
        if pending.dirs.len() > MAX_DIRTY {
            pending.dirs.clear();
            pending.full = Some(format!("over {MAX_DIRTY} directories changed"));
        }
    }
}

/// Whether `path` is the brick `root` or volume content under it.
fn is_volume_data(root: &Path, path: &Path) -> bool {
    path == root || RelPath::under(root, path).is_some_and(|rel| is_volume_content(&rel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_for(watch: &BrickWatch, want: impl Fn(&Changes) -> bool) -> Changes {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = BTreeSet::new();
        loop {
            match watch.take() {
                Changes::Dirs(dirs) => seen.extend(dirs),
                Changes::None => {}
                full => return full,
            }
            let changes = Changes::Dirs(seen.clone());
            if want(&changes) || Instant::now() > deadline {
                return changes;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn changes_name_their_directories_and_reads_or_gluster_internals_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join(".glusterfs/00")).unwrap();
        std::fs::write(root.join("a/b/f"), b"x").unwrap();
        let watch = BrickWatch::start(&root);
        assert_eq!(watch.off(), None);
        assert_eq!(watch.take(), Changes::None);

        // Reading (as hashing does) and gluster's own tree: nothing.
        std::fs::read(root.join("a/b/f")).unwrap();
        std::fs::write(root.join(".glusterfs/00/gfid"), b"x").unwrap();
        std::fs::write(root.join("a/b/.georep-tmp.1"), b"x").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(watch.take(), Changes::None);

        // A write, a directory made after the watch started and a file in it, a chmod.
        std::fs::write(root.join("a/b/f"), b"changed").unwrap();
        std::fs::create_dir(root.join("new")).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(root.join("new/inside"), b"x").unwrap();
        let want: BTreeSet<PathBuf> = [root.join("a/b"), root.clone(), root.join("new")].into();
        let got = wait_for(
            &watch,
            |c| matches!(c, Changes::Dirs(d) if d.is_superset(&want)),
        );
        assert_eq!(got, Changes::Dirs(want));
    }

    #[test]
    fn a_renamed_directory_is_watched_under_its_new_name() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        let watch = BrickWatch::start(&root);
        std::fs::rename(root.join("a"), root.join("z")).unwrap();
        let want: BTreeSet<PathBuf> = [root.clone()].into();
        wait_for(
            &watch,
            |c| matches!(c, Changes::Dirs(d) if d.is_superset(&want)),
        );
        // A change deep in the moved tree names its directory at the new path.
        std::fs::write(root.join("z/b/c/f"), b"x").unwrap();
        let want: BTreeSet<PathBuf> = [root.join("z/b/c")].into();
        let got = wait_for(
            &watch,
            |c| matches!(c, Changes::Dirs(d) if d.is_superset(&want)),
        );
        assert_eq!(got, Changes::Dirs(want));
        // Moved out of the brick: nothing inside it is reported any more.
        let outside = tempfile::tempdir().unwrap();
        std::fs::rename(root.join("z"), outside.path().join("z")).unwrap();
        wait_for(
            &watch,
            |c| matches!(c, Changes::Dirs(d) if d.contains(&root)),
        );
        std::fs::write(outside.path().join("z/b/c/g"), b"x").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(watch.take(), Changes::None);
    }

    #[test]
    fn a_watch_limit_turns_live_detection_off_and_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let watch = BrickWatch::start(tmp.path());
        note_trouble(
            tmp.path(),
            &watch.pending,
            Trouble::Off(
                "the inotify watch limit is reached (raise fs.inotify.max_user_watches)".into(),
            ),
        );
        let off = watch.off().expect("off");
        assert!(off.contains("max_user_watches"), "{off}");
        // Every round walks the brick from now on.
        assert_eq!(watch.take(), Changes::Full(off.clone()));
        assert_eq!(watch.take(), Changes::Full(off));
        // An overflowed queue asks for one full walk.
        let other = tempfile::tempdir().unwrap();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let mut watching = match Watching::new(other.path(), pending.clone()) {
            Ok(watching) => watching,
            Err(_) => panic!("cannot watch a temporary directory"),
        };
        let wd = watching
            .inotify
            .watches()
            .add(other.path(), watch_mask())
            .unwrap();
        watching.record(wd, EventMask::Q_OVERFLOW, None);
        let watch = BrickWatch {
            pending,
            _stop: None,
        };
        assert!(matches!(watch.take(), Changes::Full(why) if why.contains("overflow")));
        assert_eq!(watch.take(), Changes::None);
    }
}
