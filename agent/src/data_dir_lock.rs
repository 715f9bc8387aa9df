//! The exclusive lock an agent holds on its data directory for as long as it runs.
//!
//! Two agents on one data directory would start monitors in the same session
//! directories and overwrite each other's persisted state. The lock is `flock(2)` on
//! `<data-dir>/georepd.lock`: the kernel drops it when the holder exits, however it
//! exits, so a crashed agent never leaves a stale lock behind. The holder writes its pid
//! into the file so that a refused second agent can name it. The descriptor is
//! close-on-exec, so monitors never inherit the lock.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

pub use georep_store::data_dir::LOCK_FILE;

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the lock; nothing was changed.
    #[error(
        "data directory {} is in use by another georepd (pid {holder}, lock {}); stop it first or choose another --data-dir",
        dir.display(),
        lock.display()
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The holder's pid as it wrote it (`unknown` if unreadable).
        holder: String,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock {}: {source}", lock.display())]
    Io {
        /// The lock file.
        lock: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Held for the agent's lifetime; dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: Flock<File>,
}

impl DataDirLock {
    /// Takes the lock on `data_dir` (which must exist) without waiting.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let lock = data_dir.join(LOCK_FILE);
        let io_error = |source| LockError::Io {
            lock: lock.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io_error)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => file,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let holder = match file.read_to_string(&mut holder) {
                    Ok(_) if !holder.trim().is_empty() => holder.trim().to_owned(),
                    _ => "unknown".to_owned(),
                };
                return Err(LockError::InUse {
                    dir: data_dir.to_path_buf(),
                    lock,
                    holder,
                });
            }
            Err((_, errno)) => return Err(io_error(io::Error::from(errno))),
        };
        file.set_len(0).map_err(io_error)?;
        file.seek(SeekFrom::Start(0)).map_err(io_error)?;
        writeln!(file, "{}", std::process::id()).map_err(io_error)?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        // flock locks belong to open file descriptions: a second open conflicts even in
        // the same process, as a second agent's would.
        let error = DataDirLock::acquire(dir.path()).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("in use by another georepd"), "{text}");
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free again once the holder is gone");
    }
}
