//! Change notifications for a primary brick: inotify (through `notify`) on every
//! directory of the brick, collected into the set of directories whose listing
//! changed, which the next round re-reads ([`georep_datapath::rescan`]) instead of
//! walking the whole brick.
//!
//! Never silent: an overflowed inotify queue asks for a full scan; a watch that cannot
//! be added (the `fs.inotify.max_user_watches` limit, no inotify instance left) turns
//! live detection off for good (every round is then a full scan, `Hybrid Crawl`) and
//! says why.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use georep_datapath::RelPath;
use georep_datapath::index::is_volume_content;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};

/// Most directories remembered between two rounds; past it, a full scan is cheaper.
const MAX_DIRTY: usize = 100_000;

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

/// The inotify watch of one brick.
pub struct BrickWatch {
    _watcher: Option<notify::RecommendedWatcher>,
    pending: Arc<Mutex<Pending>>,
}

impl BrickWatch {
    /// Watches every directory under `brick` (this walks the tree: run it off the
    /// async threads). Changes made while it starts are caught by the first round's
    /// full scan.
    pub fn start(brick: &Path) -> BrickWatch {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let root = brick.to_path_buf();
        let sink = pending.clone();
        let handler = move |event: notify::Result<Event>| note(&root, &sink, event);
        let watcher = notify::recommended_watcher(handler).and_then(|mut watcher| {
            watcher.watch(brick, RecursiveMode::Recursive)?;
            Ok(watcher)
        });
        let watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                note(brick, &pending, Err(error));
                None
            }
        };
        BrickWatch {
            _watcher: watcher,
            pending,
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

/// Records one notification (or watcher error) for the brick `root`.
fn note(root: &Path, pending: &Mutex<Pending>, event: notify::Result<Event>) {
    let Ok(mut pending) = pending.lock() else {
        return;
    };
    let event = match event {
        Ok(event) => event,
        Err(error) => {
            let why = match error.kind {
                notify::ErrorKind::MaxFilesWatch => Some(
                    "the inotify watch limit is reached (raise fs.inotify.max_user_watches); \
                     walking the brick every change-interval"
                        .to_string(),
                ),
                // inotify_init1 fails with EMFILE when `max_user_instances` is reached.
                notify::ErrorKind::Io(ref io)
                    if io.raw_os_error() == Some(nix::errno::Errno::EMFILE as i32) =>
                {
                    Some(format!(
                        "no inotify instance left (raise fs.inotify.max_user_instances): {io}; \
                         walking the brick every change-interval"
                    ))
                }
                _ => None,
            };
            match why {
                Some(why) => {
                    if pending.off.is_none() {
                        tracing::warn!(brick = %root.display(), "{why}");
                    }
                    pending.off = Some(why);
                }
                None => {
                    tracing::warn!(brick = %root.display(), %error, "change notification error; walking the brick");
                    pending.full = Some(format!("change notification error: {error}"));
                }
            }
            return;
        }
    };
    if event.need_rescan() {
        tracing::warn!(brick = %root.display(), "inotify queue overflowed; walking the brick");
        pending.full = Some("the inotify queue overflowed".into());
        return;
    }
    if matches!(
        event.kind,
        EventKind::Access(
            AccessKind::Read
                | AccessKind::Open(_)
                | AccessKind::Close(AccessMode::Read | AccessMode::Execute | AccessMode::Any)
        )
    ) {
        // Reads (ours among them: hashing opens files) change nothing.
        return;
    }
    for path in &event.paths {
        if !is_volume_data(root, path) {
            continue;
        }
        // A change to an entry shows in its directory's listing (its metadata is read
        // from there); a change to the root itself is nothing we sync.
        let dir = if path == root {
            root.to_path_buf()
        } else {
            match path.parent() {
                Some(parent) => parent.to_path_buf(),
                None => continue,
            }
        };
        pending.dirs.insert(dir);
    }
    if pending.dirs.len() > MAX_DIRTY {
        pending.dirs.clear();
        pending.full = Some(format!("over {MAX_DIRTY} directories changed"));
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
                other => return other,
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
    fn a_watch_limit_turns_live_detection_off_and_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let watch = BrickWatch::start(tmp.path());
        note(
            tmp.path(),
            &watch.pending,
            Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch)),
        );
        let off = watch.off().expect("off");
        assert!(off.contains("max_user_watches"), "{off}");
        // Every round walks the brick from now on.
        assert_eq!(watch.take(), Changes::Full(off.clone()));
        assert_eq!(watch.take(), Changes::Full(off));
        // An overflowed queue asks for one full walk.
        let other = tempfile::tempdir().unwrap();
        let watch = BrickWatch::start(other.path());
        note(
            other.path(),
            &watch.pending,
            Ok(Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)),
        );
        assert!(matches!(watch.take(), Changes::Full(why) if why.contains("overflow")));
        assert_eq!(watch.take(), Changes::None);
    }
}
