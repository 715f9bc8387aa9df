//! The secondary's copy of a replica set's index: a base file and a log of deltas
//! beside it (see [`georep_datapath::index_log`]), loaded for a worker's Hello, saved
//! whole (in parts when large) or added to by a delta, and folded into a new base once
//! the log outgrows it.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use georep_datapath::chunk::Hash;
use georep_datapath::index_log::{self, IndexDelta};

/// The index being saved in parts on a stream.
pub(super) type Saving = Mutex<Option<IndexParts>>;

/// The temporary file the parts of an index (or a delta) go to; removed if the stream
/// ends before the last part (after it, it is the index, or it was read back).
pub(super) struct IndexParts {
    temp: PathBuf,
    file: std::fs::File,
    /// BLAKE3 of the parts so far (a whole index's hash names it in a new log).
    hasher: blake3::Hasher,
}

impl Drop for IndexParts {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// A log outgrowing its base folds into a new base only past this size, so that a
/// small index is not rewritten every few rounds. Debug builds fold early, so that
/// tests go through it.
const FOLD_MIN: u64 = if cfg!(debug_assertions) {
    16 << 10
} else {
    4 << 20
};

/// Which base file this is: device, inode, size, mtime (seconds, nanoseconds).
/// Another stream's save replaces it (a new inode) or a fold does.
type FileId = (u64, u64, u64, i64, i64);

fn file_id(path: &Path) -> std::io::Result<FileId> {
    let meta = std::fs::metadata(path)?;
    Ok((
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
    ))
}

/// The saved index as a stream last read or wrote it: what its next delta is added to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    /// BLAKE3 of the base's bytes (what a new log's header names).
    base: Hash,
    /// The base file then.
    base_file: FileId,
    /// Bytes of the log then (0: none).
    log_len: u64,
}

/// Where a replica set's index lives.
#[derive(Debug, Clone)]
pub(super) struct IndexFiles {
    /// The base: postcard of [`georep_datapath::Index`], written whole.
    pub base: PathBuf,
    /// The log of deltas after it.
    pub log: PathBuf,
}

impl IndexFiles {
    /// The files of the index at `base`.
    pub fn at(base: PathBuf) -> Self {
        let mut log = base.as_os_str().to_os_string();
        log.push(".log");
        Self {
            base,
            log: PathBuf::from(log),
        }
    }

    /// The saved index (postcard of [`georep_datapath::Index`]) and what a delta is
    /// added to, if one is saved. A torn or stale tail of the log is cut off here, so
    /// that the next delta follows the last intact one.
    pub fn load(&self) -> Option<(Vec<u8>, Option<Stored>)> {
        let base = std::fs::read(&self.base).ok()?;
        let log = std::fs::read(&self.log).unwrap_or_default();
        let loaded = index_log::load(base, &log);
        if log.len() as u64 > loaded.log_valid
            && let Err(error) = cut(&self.log, loaded.log_valid)
        {
            tracing::warn!(log = %self.log.display(), %error, "cannot cut the index log back to its intact frames");
            return Some((loaded.bytes, None));
        }
        if loaded.deltas > 0 {
            tracing::debug!(log = %self.log.display(), deltas = loaded.deltas, "index read with its log");
        }
        let stored = file_id(&self.base).ok().map(|base_file| Stored {
            base: loaded.base,
            base_file,
            log_len: loaded.log_valid,
        });
        Some((loaded.bytes, stored))
    }
}

/// Cuts the log at `path` back to `len` bytes (removes it at 0), durably.
fn cut(path: &Path, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return match std::fs::remove_file(path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        };
    }
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Appends a part of the index or delta being saved beside `base` to its temporary
/// file (created by the first part).
pub(super) fn save_part(saving: &Saving, base: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut saving = saving
        .lock()
        .map_err(|_| "stream state unusable".to_string())?;
    if saving.is_none() {
        static PARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = PARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name = base.as_os_str().to_os_string();
        name.push(format!(".part-{}-{n}", std::process::id()));
        let temp = PathBuf::from(name);
        let file = std::fs::File::create(&temp).map_err(|e| format!("{}: {e}", temp.display()))?;
        *saving = Some(IndexParts {
            temp,
            file,
            hasher: blake3::Hasher::new(),
        });
    }
    let Some(parts) = saving.as_mut() else {
        return Err("no index being saved".into());
    };
    parts.hasher.update(bytes);
    parts
        .file
        .write_all(bytes)
        .map_err(|e| format!("{}: {e}", parts.temp.display()))
}

/// Saves the whole index whose last part (or whole) is `bytes`, durably and at once
/// (the parts before it were kept by [`save_part`]); the log of the base it replaces
/// goes. Returns what the next delta is added to.
pub(super) fn save_last(
    saving: &Saving,
    files: &IndexFiles,
    bytes: &[u8],
) -> Result<Stored, String> {
    let parts = saving
        .lock()
        .map_err(|_| "stream state unusable".to_string())?
        .take();
    let base = match parts {
        None => {
            georep_store::write_atomic(&files.base, bytes).map_err(|e| e.to_string())?;
            Hash::of(bytes)
        }
        Some(mut parts) => {
            parts.hasher.update(bytes);
            // Dropped, `parts` removes its temporary file: renamed, there is none left.
            parts
                .file
                .write_all(bytes)
                .and_then(|()| parts.file.sync_all())
                .and_then(|()| std::fs::rename(&parts.temp, &files.base))
                .map_err(|error| format!("{}: {error}", files.base.display()))?;
            Hash(*parts.hasher.finalize().as_bytes())
        }
    };
    // Left behind by a crash here, the old log names the old base and is ignored.
    cut(&files.log, 0).map_err(|error| format!("{}: {error}", files.log.display()))?;
    Ok(Stored {
        base,
        base_file: file_id(&files.base).map_err(|e| format!("{}: {e}", files.base.display()))?,
        log_len: 0,
    })
}

/// Adds the delta whose last part (or whole) is `bytes` to the saved index `stored`
/// says this stream knows, durably: appended to the log (begun with a header naming
/// the base), then, once the log outgrows the base, folded into a new base. Refused
/// when the stream knows no saved index, or the files are no longer what it knows.
pub(super) fn save_delta(
    saving: &Saving,
    stored: &Mutex<Option<Stored>>,
    files: &IndexFiles,
    bytes: &[u8],
) -> Result<(), String> {
    let encoded = match saving
        .lock()
        .map_err(|_| "stream state unusable".to_string())?
        .take()
    {
        None => bytes.to_vec(),
        Some(parts) => {
            let mut whole =
                std::fs::read(&parts.temp).map_err(|e| format!("{}: {e}", parts.temp.display()))?;
            whole.extend_from_slice(bytes);
            whole
        }
    };
    let delta: IndexDelta =
        postcard::from_bytes(&encoded).map_err(|e| format!("undecodable index delta: {e}"))?;
    let mut stored = stored
        .lock()
        .map_err(|_| "stream state unusable".to_string())?;
    let Some(known) = stored.clone() else {
        return Err("no saved index on this stream to add a delta to".into());
    };
    let base_now = file_id(&files.base).map_err(|e| format!("{}: {e}", files.base.display()))?;
    let log_now = match std::fs::metadata(&files.log) {
        Ok(meta) => meta.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
        Err(error) => return Err(format!("{}: {error}", files.log.display())),
    };
    if base_now != known.base_file || log_now != known.log_len {
        *stored = None;
        return Err("the saved index changed since this stream read it".into());
    }
    if delta.is_empty() {
        return Ok(());
    }
    let mut out = index_log::delta_frame(&encoded).map_err(|e| e.to_string())?;
    if log_now == 0 {
        let mut header = index_log::header_frame(known.base).map_err(|e| e.to_string())?;
        header.append(&mut out);
        out = header;
    }
    let append = || -> std::io::Result<()> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&files.log)?;
        log.write_all(&out)?;
        log.sync_data()?;
        if log_now == 0
            && let Some(dir) = files.log.parent()
        {
            // A new log's name must outlive a crash too.
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    append().map_err(|error| {
        *stored = None;
        format!("{}: {error}", files.log.display())
    })?;
    let log_len = log_now + out.len() as u64;
    *stored = Some(Stored {
        log_len,
        ..known.clone()
    });
    if log_len > known.base_file.2.max(FOLD_MIN) {
        match fold(files) {
            Ok(folded) => *stored = Some(folded),
            // The delta is in the log, which stays valid: folding is tried again later.
            Err(error) => {
                tracing::warn!(index = %files.base.display(), %error, "cannot fold the index log into the index")
            }
        }
    }
    Ok(())
}

/// Writes base and log as one new base and removes the log.
fn fold(files: &IndexFiles) -> Result<Stored, String> {
    let base = std::fs::read(&files.base).map_err(|e| format!("{}: {e}", files.base.display()))?;
    let log = std::fs::read(&files.log).map_err(|e| format!("{}: {e}", files.log.display()))?;
    let loaded = index_log::load(base, &log);
    if loaded.log_valid != log.len() as u64 {
        return Err("the log is not intact".into());
    }
    georep_store::write_atomic(&files.base, &loaded.bytes).map_err(|e| e.to_string())?;
    cut(&files.log, 0).map_err(|error| format!("{}: {error}", files.log.display()))?;
    tracing::debug!(index = %files.base.display(), deltas = loaded.deltas, bytes = loaded.bytes.len(), "folded the index log into the index");
    Ok(Stored {
        base: Hash::of(&loaded.bytes),
        base_file: file_id(&files.base).map_err(|e| format!("{}: {e}", files.base.display()))?,
        log_len: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use georep_datapath::index::{Entry, Index};
    use georep_datapath::path::RelPath;

    fn index(n: usize, size: u64) -> Index {
        Index {
            entries: (0..n)
                .map(|i| {
                    let path = RelPath::new(format!("d/f{i:04}")).unwrap();
                    (
                        path,
                        Entry {
                            size,
                            ..Entry::unknown(false)
                        },
                    )
                })
                .collect(),
        }
    }

    fn read(files: &IndexFiles) -> Index {
        postcard::from_bytes(&files.load().unwrap().0).unwrap()
    }

    fn delta(old: &Index, new: &Index) -> Vec<u8> {
        postcard::to_stdvec(&IndexDelta::between(old, new)).unwrap()
    }

    /// Whole, then deltas: every state reads back as saved, the log is folded once it
    /// outgrows the base, and a delta is refused on a stream that knows no saved index
    /// or one that another save replaced.
    #[test]
    fn deltas_read_back_and_fold_and_are_refused_on_a_stale_stream() {
        let dir = tempfile::tempdir().unwrap();
        let files = IndexFiles::at(dir.path().join("replica-set-0.index"));
        let (saving, stored) = (Saving::default(), Mutex::new(None));
        assert!(files.load().is_none());
        let mut now = index(50, 1);
        let whole = postcard::to_stdvec(&now).unwrap();
        assert!(save_delta(&saving, &stored, &files, &delta(&Index::default(), &now)).is_err());
        *stored.lock().unwrap() = Some(save_last(&saving, &files, &whole).unwrap());
        let mut folds = 0;
        for round in 0..40u64 {
            let mut next = now.clone();
            for i in 0..20 {
                let path = RelPath::new(format!("d/f{:04}", (round + i) % 50)).unwrap();
                next.entries.insert(
                    path,
                    Entry {
                        size: round + 2,
                        ..Entry::unknown(false)
                    },
                );
            }
            next.entries
                .remove(&RelPath::new(format!("d/f{:04}", (round + 7) % 50)).unwrap());
            let before = stored.lock().unwrap().clone().unwrap();
            save_delta(&saving, &stored, &files, &delta(&now, &next)).unwrap();
            let after = stored.lock().unwrap().clone().unwrap();
            folds += usize::from(after.base_file != before.base_file);
            now = next;
            assert_eq!(read(&files), now, "round {round}");
        }
        assert!(folds > 0, "the log outgrew the base and was folded");
        // A stream that read the index before another stream saved it whole may not
        // add to what it no longer knows.
        let old = stored.lock().unwrap().clone();
        let other = (Saving::default(), Mutex::new(None::<Stored>));
        *other.1.lock().unwrap() = Some(save_last(&other.0, &files, &whole).unwrap());
        let stale = Mutex::new(old);
        let error = save_delta(&saving, &stale, &files, &delta(&now, &index(3, 1))).unwrap_err();
        assert!(error.contains("changed since"), "{error}");
        assert_eq!(read(&files), index(50, 1));
    }

    /// A log torn mid-append is cut back to its intact frames when loaded, and the next
    /// delta follows the last intact one.
    #[test]
    fn a_torn_log_is_cut_back_and_added_to() {
        let dir = tempfile::tempdir().unwrap();
        let files = IndexFiles::at(dir.path().join("replica-set-0.index"));
        let (saving, stored) = (Saving::default(), Mutex::new(None));
        let v0 = index(3, 1);
        let v1 = index(4, 1);
        let v2 = index(5, 1);
        *stored.lock().unwrap() =
            Some(save_last(&saving, &files, &postcard::to_stdvec(&v0).unwrap()).unwrap());
        save_delta(&saving, &stored, &files, &delta(&v0, &v1)).unwrap();
        let intact = std::fs::metadata(&files.log).unwrap().len();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&files.log)
            .unwrap()
            .write_all(&[9, 0, 0, 0, 1, 2])
            .unwrap();
        let (bytes, reloaded) = files.load().unwrap();
        assert_eq!(postcard::from_bytes::<Index>(&bytes).unwrap(), v1);
        assert_eq!(std::fs::metadata(&files.log).unwrap().len(), intact);
        let reloaded = Mutex::new(reloaded);
        save_delta(&saving, &reloaded, &files, &delta(&v1, &v2)).unwrap();
        assert_eq!(read(&files), v2);
    }
}
