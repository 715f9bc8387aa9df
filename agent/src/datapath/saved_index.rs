//! The secondary's copy of a replica set's index: a base file and a log of deltas
//! beside it (see [`georep_datapath::index_log`]), loaded for a worker's Hello, saved
//! whole (in parts when large) or added to by a delta, and folded into a new base once
//! the log outgrows it.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use georep_datapath::chunk::Hash;
use georep_datapath::index_log::{self, IndexDelta};

/// The temporary file the parts of an index (or a delta) go to; removed if the stream
/// ends before the last part (after it, it is the index, or it was read back).
struct IndexParts {
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

fn file_id(path: &Path) -> Result<FileId, String> {
    let meta = std::fs::metadata(path).map_err(on(path))?;
    Ok((
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
    ))
}

/// An I/O error as said of `path`.
fn on(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |error| format!("{}: {error}", path.display())
}

/// The saved index as a stream last read or wrote it: what its next delta is added to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    /// BLAKE3 of the base's bytes (what a new log's header names).
    base: Hash,
    /// The base file then.
    base_file: FileId,
    /// Bytes of the log then (0: none).
    log_len: u64,
}

/// A replica set's index as one stream of a worker reads and saves it.
pub(super) struct SavedIndex {
    /// The base: postcard of [`georep_datapath::Index`], written whole.
    base: PathBuf,
    /// The log of deltas after it.
    log: PathBuf,
    /// The index or delta being saved in parts, until its last part.
    saving: Mutex<Option<IndexParts>>,
    /// What this stream read or last saved (what a delta adds to).
    stored: Mutex<Option<Stored>>,
}

/// Locks stream state (plain data: a panic elsewhere cannot leave it half-written).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SavedIndex {
    /// The index whose base is at `base` (its log beside it, `<base>.log`).
    pub fn at(base: PathBuf) -> Self {
        let mut log = base.as_os_str().to_os_string();
        log.push(".log");
        Self {
            base,
            log: PathBuf::from(log),
            saving: Mutex::new(None),
            stored: Mutex::new(None),
        }
    }

    /// The saved index (postcard of [`georep_datapath::Index`]), if one is saved; from
    /// then on, deltas add to it. A torn or stale tail of the log is cut off here, so
    /// that the next delta follows the last intact one.
    pub fn load(&self) -> Option<Vec<u8>> {
        let mut stored = lock(&self.stored);
        *stored = None;
        let base = std::fs::read(&self.base).ok()?;
        let log = std::fs::read(&self.log).unwrap_or_default();
        let loaded = index_log::load(base, &log);
        if log.len() as u64 > loaded.log_valid
            && let Err(error) = cut(&self.log, loaded.log_valid)
        {
            tracing::warn!(log = %self.log.display(), %error, "cannot cut the index log back to its intact frames");
            return Some(loaded.bytes);
        }
        if loaded.deltas > 0 {
            tracing::debug!(log = %self.log.display(), deltas = loaded.deltas, "index read with its log");
        }
        *stored = file_id(&self.base).ok().map(|base_file| Stored {
            base: loaded.base,
            base_file,
            log_len: loaded.log_valid,
        });
        Some(loaded.bytes)
    }

    /// Appends a part of the index or delta being saved to its temporary file beside
    /// the base (created by the first part).
    pub fn save_part(&self, bytes: &[u8]) -> Result<(), String> {
        let mut saving = lock(&self.saving);
        let parts = match &mut *saving {
            Some(parts) => parts,
            None => {
                static PARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = PARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut name = self.base.as_os_str().to_os_string();
                name.push(format!(".part-{}-{n}", std::process::id()));
                let temp = PathBuf::from(name);
                let file = std::fs::File::create(&temp).map_err(on(&temp))?;
                saving.insert(IndexParts {
                    temp,
                    file,
                    hasher: blake3::Hasher::new(),
                })
            }
        };
        parts.hasher.update(bytes);
        parts.file.write_all(bytes).map_err(on(&parts.temp))
    }

    /// Saves the whole index whose last part (or whole) is `bytes`, durably and at
    /// once (the parts before it were kept by [`Self::save_part`]); the log of the
    /// base it replaces goes.
    pub fn save_whole(&self, bytes: &[u8]) -> Result<(), String> {
        let mut stored = lock(&self.stored);
        *stored = None;
        let base = match lock(&self.saving).take() {
            None => {
                georep_store::write_atomic(&self.base, bytes).map_err(|e| e.to_string())?;
                Hash::of(bytes)
            }
            Some(mut parts) => {
                parts.hasher.update(bytes);
                // Dropped, `parts` removes its temporary file: renamed, there is none left.
                parts
                    .file
                    .write_all(bytes)
                    .and_then(|()| parts.file.sync_all())
                    .and_then(|()| std::fs::rename(&parts.temp, &self.base))
                    .map_err(on(&self.base))?;
                Hash(*parts.hasher.finalize().as_bytes())
            }
        };
        // Left behind by a crash here, the old log names the old base and is ignored.
        cut(&self.log, 0).map_err(on(&self.log))?;
        *stored = Some(self.new_base(base)?);
        Ok(())
    }

    /// Adds the delta whose last part (or whole) is `bytes` to the saved index this
    /// stream knows, durably: appended to the log (begun with a header naming the
    /// base), then, once the log outgrows the base, folded into a new base. Refused
    /// when the stream knows no saved index, or the files are no longer what it knows.
    pub fn save_delta(&self, bytes: &[u8]) -> Result<(), String> {
        let encoded = match lock(&self.saving).take() {
            None => bytes.to_vec(),
            Some(parts) => {
                let mut whole = std::fs::read(&parts.temp).map_err(on(&parts.temp))?;
                whole.extend_from_slice(bytes);
                whole
            }
        };
        let delta: IndexDelta =
            postcard::from_bytes(&encoded).map_err(|e| format!("undecodable index delta: {e}"))?;
        let mut stored = lock(&self.stored);
        // Whatever goes wrong below, the stream no longer knows the files for sure.
        let Some(known) = stored.take() else {
            return Err("no saved index on this stream to add a delta to".into());
        };
        let log_now = match std::fs::metadata(&self.log) {
            Ok(meta) => meta.len(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(on(&self.log)(error)),
        };
        if file_id(&self.base)? != known.base_file || log_now != known.log_len {
            return Err("the saved index changed since this stream read it".into());
        }
        if delta.is_empty() {
            *stored = Some(known);
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
                .open(&self.log)?;
            log.write_all(&out)?;
            log.sync_data()?;
            if log_now == 0
                && let Some(dir) = self.log.parent()
            {
                // A new log's name must outlive a crash too.
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        append().map_err(on(&self.log))?;
        let log_len = log_now + out.len() as u64;
        let mut now = Stored { log_len, ..known };
        if log_len > now.base_file.2.max(FOLD_MIN) {
            match self.fold() {
                Ok(folded) => now = folded,
                // The delta is in the log, which stays valid: folding is tried again.
                Err(error) => {
                    tracing::warn!(index = %self.base.display(), %error, "cannot fold the index log into the index")
                }
            }
        }
        *stored = Some(now);
        Ok(())
    }

    /// Writes base and log as one new base and removes the log.
    fn fold(&self) -> Result<Stored, String> {
        let base = std::fs::read(&self.base).map_err(on(&self.base))?;
        let log = std::fs::read(&self.log).map_err(on(&self.log))?;
        let loaded = index_log::load(base, &log);
        if loaded.log_valid != log.len() as u64 {
            return Err("the log is not intact".into());
        }
        georep_store::write_atomic(&self.base, &loaded.bytes).map_err(|e| e.to_string())?;
        cut(&self.log, 0).map_err(on(&self.log))?;
        tracing::debug!(index = %self.base.display(), deltas = loaded.deltas, bytes = loaded.bytes.len(), "folded the index log into the index");
        self.new_base(Hash::of(&loaded.bytes))
    }

    /// What a delta adds to once a base whose bytes hash to `base` was written (and
    /// its log removed).
    fn new_base(&self, base: Hash) -> Result<Stored, String> {
        Ok(Stored {
            base,
            base_file: file_id(&self.base)?,
            log_len: 0,
        })
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

    fn read(saved: &SavedIndex) -> Index {
        postcard::from_bytes(&saved.load().unwrap()).unwrap()
    }

    fn delta(old: &Index, new: &Index) -> Vec<u8> {
        postcard::to_stdvec(&IndexDelta::between(old, new)).unwrap()
    }

    fn base_file(saved: &SavedIndex) -> FileId {
        lock(&saved.stored).clone().unwrap().base_file
    }

    /// Whole, then deltas: every state reads back as saved, the log is folded once it
    /// outgrows the base, and a delta is refused on a stream that knows no saved index
    /// or one that another save replaced.
    #[test]
    fn deltas_read_back_and_fold_and_are_refused_on_a_stale_stream() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("replica-set-0.index");
        let saved = SavedIndex::at(at.clone());
        assert!(saved.load().is_none());
        let mut now = index(50, 1);
        let whole = postcard::to_stdvec(&now).unwrap();
        assert!(saved.save_delta(&delta(&Index::default(), &now)).is_err());
        saved.save_whole(&whole).unwrap();
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
            let before = base_file(&saved);
            saved.save_delta(&delta(&now, &next)).unwrap();
            folds += usize::from(base_file(&saved) != before);
            now = next;
            // Read through another stream: this one's state stays as it saved it.
            assert_eq!(read(&SavedIndex::at(at.clone())), now, "round {round}");
        }
        assert!(folds > 0, "the log outgrew the base and was folded");
        // A stream that read the index before another stream saved it whole may not
        // add to what it no longer knows.
        SavedIndex::at(at.clone()).save_whole(&whole).unwrap();
        let error = saved.save_delta(&delta(&now, &index(3, 1))).unwrap_err();
        assert!(error.contains("changed since"), "{error}");
        assert_eq!(read(&saved), index(50, 1));
    }

    /// A log torn mid-append is cut back to its intact frames when loaded, and the next
    /// delta follows the last intact one.
    #[test]
    fn a_torn_log_is_cut_back_and_added_to() {
        let dir = tempfile::tempdir().unwrap();
        let saved = SavedIndex::at(dir.path().join("replica-set-0.index"));
        let v0 = index(3, 1);
        let v1 = index(4, 1);
        let v2 = index(5, 1);
        saved
            .save_whole(&postcard::to_stdvec(&v0).unwrap())
            .unwrap();
        saved.save_delta(&delta(&v0, &v1)).unwrap();
        let intact = std::fs::metadata(&saved.log).unwrap().len();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&saved.log)
            .unwrap()
            .write_all(&[9, 0, 0, 0, 1, 2])
            .unwrap();
        let bytes = saved.load().unwrap();
        assert_eq!(postcard::from_bytes::<Index>(&bytes).unwrap(), v1);
        assert_eq!(std::fs::metadata(&saved.log).unwrap().len(), intact);
        saved.save_delta(&delta(&v1, &v2)).unwrap();
        assert_eq!(read(&saved), v2);
    }
}
