//! Size-bounded monitor logs: `monitor.log` is rotated to `monitor.log.1` ..
//! `monitor.log.{KEPT}` once it passes a size, as logrotate's `copytruncate` would.
//!
//! The monitor holds `monitor.log` open for appending (it may outlive this agent, and
//! an adopted monitor's descriptor cannot be swapped), so the file is copied, not
//! renamed, and then emptied; appending writers go on at its new end, leaving no hole.
//! Whatever the monitor appends while the copy runs is carried over into the emptied
//! file; only a write landing between the last read and the truncation (a few
//! microseconds) can be lost, as with `copytruncate`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::session_dir::LOG_FILE;

/// Rotated copies kept: `monitor.log.1` (newest) to `monitor.log.3`.
pub const KEPT: usize = 3;

/// Opens `path` without following a symlink in its last component: the session
/// directory is ours, a link placed there must not make us write elsewhere.
fn open_nofollow(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    options
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

fn rotated(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("{LOG_FILE}.{n}"))
}

/// Rotates `dir`'s `monitor.log` if it holds more than `max_bytes` (0: never).
/// Returns whether it did.
pub fn rotate_if_over(dir: &Path, max_bytes: u64) -> io::Result<bool> {
    let path = dir.join(LOG_FILE);
    let size = match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    if max_bytes == 0 || size <= max_bytes {
        return Ok(false);
    }
    for n in (1..KEPT).rev() {
        match fs::rename(rotated(dir, n), rotated(dir, n + 1)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    let mut log = open_nofollow(&path, OpenOptions::new().read(true).write(true))?;
    let first = rotated(dir, 1);
    // A symlink put in place of the copy is replaced, not followed.
    match fs::remove_file(&first) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut copy = open_nofollow(
        &first,
        OpenOptions::new().write(true).create_new(true).mode(0o640),
    )?;
    let copied = io::copy(&mut (&mut log).take(size), &mut copy)?;
    copy.sync_data()?;
    // What was appended during the copy moves into the emptied file.
    let mut tail = Vec::new();
    log.seek(SeekFrom::Start(copied))?;
    log.read_to_end(&mut tail)?;
    log.set_len(0)?;
    if !tail.is_empty() {
        open_nofollow(&path, OpenOptions::new().append(true))?.write_all(&tail)?;
    }
    Ok(true)
}

/// Rotates the logs of those of `dirs` over `max_bytes`: sizes read here, the
/// copying on tokio's blocking pool (nothing is spawned when none is over).
pub fn rotate_those_over(dirs: impl Iterator<Item = PathBuf>, max_bytes: u64) {
    let over: Vec<PathBuf> = dirs
        .filter(|dir| {
            fs::symlink_metadata(dir.join(LOG_FILE)).is_ok_and(|meta| meta.len() > max_bytes)
        })
        .collect();
    if over.is_empty() {
        return;
    }
    tokio::task::spawn_blocking(move || {
        for dir in over {
            let log = dir.join(LOG_FILE);
            match rotate_if_over(&dir, max_bytes) {
                Ok(true) => {
                    tracing::info!(log = %log.display(), max_bytes, "rotated the monitor log")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(log = %log.display(), %error, "cannot rotate the monitor log");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn small_logs_and_missing_logs_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!rotate_if_over(dir.path(), 10).unwrap());
        fs::write(dir.path().join(LOG_FILE), "0123456789").unwrap();
        assert!(!rotate_if_over(dir.path(), 10).unwrap());
        assert!(!rotate_if_over(dir.path(), 0).unwrap(), "0 never rotates");
        assert_eq!(read(&dir.path().join(LOG_FILE)), "0123456789");
        assert!(!rotated(dir.path(), 1).exists());
    }

    #[test]
    fn a_full_log_moves_down_the_line_and_the_oldest_goes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(LOG_FILE);
        // A writer that keeps its descriptor across rotations, as a monitor does.
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        for round in 1..=KEPT + 1 {
            writer
                .write_all(format!("round {round} {}\n", "x".repeat(20)).as_bytes())
                .unwrap();
            assert!(rotate_if_over(dir.path(), 16).unwrap());
            assert_eq!(read(&log), "");
        }
        writer.write_all(b"after\n").unwrap();
        // Appended at the emptied file's end: no hole of zeros where the old bytes were.
        assert_eq!(read(&log), "after\n");
        for n in 1..=KEPT {
            let round = KEPT + 2 - n;
            assert!(read(&rotated(dir.path(), n)).starts_with(&format!("round {round} ")));
        }
        assert!(!rotated(dir.path(), KEPT + 1).exists(), "the oldest went");
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, "keep me").unwrap();
        fs::write(dir.path().join(LOG_FILE), "y".repeat(100)).unwrap();
        std::os::unix::fs::symlink(&victim, rotated(dir.path(), 1)).unwrap();
        assert!(rotate_if_over(dir.path(), 10).unwrap());
        assert_eq!(read(&victim), "keep me");
        let moved = fs::symlink_metadata(rotated(dir.path(), 2)).unwrap();
        assert!(
            moved.file_type().is_symlink(),
            "the link moved down, as a link"
        );
        assert_eq!(read(&rotated(dir.path(), 1)), "y".repeat(100));

        fs::remove_file(dir.path().join(LOG_FILE)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(LOG_FILE)).unwrap();
        let error = rotate_if_over(dir.path(), 1).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
        assert_eq!(read(&victim), "keep me");
    }
}
