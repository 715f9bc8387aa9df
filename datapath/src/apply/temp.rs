//! How a file being written exists before it is placed: without a name
//! (`O_TMPFILE`), linked in once complete; or, where the file system has no
//! `O_TMPFILE`, as a hidden temporary file named for its writer beside the
//! destination, renamed in, and swept when its writer died.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, openat2, renameat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, linkat, unlinkat};

use super::{Applier, beneath};
use crate::chunk::Hash;
use crate::index::TEMP_PREFIX;
use crate::path::RelPath;

impl Applier {
    /// Creates a file without a name (`O_TMPFILE`) in `dir` with the permission bits
    /// of `mode`; `None` where the file system cannot (then, and from then on, writes
    /// use named temporary files).
    ///
    /// (A named temporary file costs a name created and a rename: a quarter of the
    /// secondary's CPU on small files. And an unnamed one leaves nothing behind when
    /// its writer dies.)
    pub(super) fn create_unnamed(&self, dir: &OwnedFd, mode: u32) -> nix::Result<Option<OwnedFd>> {
        use std::sync::atomic::Ordering;
        if !self.unnamed.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
        match openat(
            dir.as_fd(),
            ".",
            flags,
            Mode::from_bits_truncate(mode & 0o777),
        ) {
            Ok(fd) => Ok(Some(fd)),
            // The file system (EOPNOTSUPP) or the kernel (EISDIR, EINVAL) has none.
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {
                self.unnamed.store(false, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Names the complete unnamed file `file` `name` in `dir`, atomically replacing
    /// what is there.
    pub(super) fn link_in(&self, file: &File, dir: &OwnedFd, name: &OsStr) -> nix::Result<()> {
        match self.link_unnamed(file, dir, name) {
            Err(Errno::EEXIST) => {}
            linked => return linked,
        }
        // Something is there: linked under a temporary name, renamed over it.
        let temp = temp_name(name);
        let linked = match self.link_unnamed(file, dir, &temp) {
            Err(Errno::EEXIST) => {
                let _ = unlinkat(dir.as_fd(), temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
                self.link_unnamed(file, dir, &temp)
            }
            linked => linked,
        };
        linked?;
        renameat(dir.as_fd(), temp.as_os_str(), dir.as_fd(), name).inspect_err(|_| {
            let _ = unlinkat(dir.as_fd(), temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        })
    }

    /// Links the unnamed file `file` as `name` in `dir` (EEXIST if taken).
    fn link_unnamed(&self, file: &File, dir: &OwnedFd, name: &OsStr) -> nix::Result<()> {
        use std::os::fd::AsRawFd;
        // The descriptor itself, with CAP_DAC_READ_SEARCH; else (ENOENT) its /proc link.
        if self.privileged {
            match linkat(file.as_fd(), "", dir.as_fd(), name, AtFlags::AT_EMPTY_PATH) {
                Err(Errno::ENOENT) => {}
                linked => return linked,
            }
        }
        let link = format!("{PROC_FDS}/{}", file.as_raw_fd());
        linkat(
            nix::fcntl::AT_FDCWD,
            link.as_str(),
            dir.as_fd(),
            name,
            AtFlags::AT_SYMLINK_FOLLOW,
        )
    }

    /// Removes the temporary files that interrupted writes left in the directories of
    /// `places` (a journal's, see [`crate::journal`]: where a batch or a streamed file
    /// was being written when its writer died). A temporary file is named for the
    /// process writing it: those of this process and of any process running here are
    /// left alone. Returns how many were removed.
    ///
    /// (Without this, a secondary agent killed mid-write left its partial file behind
    /// for good: the agent after it writes under another name.)
    pub fn sweep_temporaries(&self, places: &[(RelPath, bool)]) -> usize {
        let dirs: std::collections::BTreeSet<Option<RelPath>> =
            places.iter().map(|(path, _)| path.parent()).collect();
        let mut removed = 0;
        for dir in dirs {
            let how = beneath(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC);
            let opened = match &dir {
                Some(dir) => openat2(self.root.as_fd(), dir.as_path(), how),
                None => openat2(self.root.as_fd(), ".", how),
            };
            let Ok(fd) = opened else {
                continue;
            };
            let Ok(dup) = fd.try_clone() else {
                continue;
            };
            let Ok(mut listing) = nix::dir::Dir::from_fd(dup) else {
                continue;
            };
            let stale: Vec<std::ffi::CString> = listing
                .iter()
                .flatten()
                .map(|entry| entry.file_name().to_owned())
                .filter(|name| temp_writer(name.to_bytes()).is_some_and(|pid| !running(pid)))
                .collect();
            for name in stale {
                if unlinkat(fd.as_fd(), name.as_c_str(), UnlinkatFlags::NoRemoveDir).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// The process a temporary file's name says writes it (see [`temp_name`]); `None`
/// for any other name.
fn temp_writer(name: &[u8]) -> Option<u32> {
    let rest = name.strip_prefix(TEMP_PREFIX.as_bytes())?;
    let mut parts = rest.rsplitn(2, |b| *b == b'.');
    let pid = parts.next()?;
    parts.next()?;
    std::str::from_utf8(pid).ok()?.parse().ok()
}

/// Whether process `pid` runs on this host (this one included).
fn running(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().filter(|pid| *pid > 0) else {
        return false;
    };
    // Signal 0 checks only that the process exists; EPERM: it does, someone else's.
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(Errno::ESRCH)
    )
}

/// Where this process's open files are linked.
pub(super) const PROC_FDS: &str = "/proc/self/fd";

/// The temporary name a write to `name` uses (skipped by scans).
pub(super) fn temp_name(name: &OsStr) -> std::ffi::OsString {
    let hash = Hash::of(name.as_bytes());
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let mut out = std::ffi::OsString::from(TEMP_PREFIX);
    out.push(format!("{:?}.{}", hash, PID.get_or_init(std::process::id)));
    out
}

/// Creates the temporary file `temp` in `dir` with the permission bits of `mode`,
/// removing one an interrupted write left there first if it is in the way.
pub(super) fn create_named(dir: &OwnedFd, temp: &OsStr, mode: u32) -> nix::Result<OwnedFd> {
    let create = || {
        openat(
            dir.as_fd(),
            temp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode & 0o777),
        )
    };
    // A temporary file of an interrupted write is in the way only rarely: removed
    // then, not tried before every file (a failing unlink costs a lookup).
    match create() {
        Err(Errno::EEXIST) => {
            let _ = unlinkat(dir.as_fd(), temp, UnlinkatFlags::NoRemoveDir);
            create()
        }
        created => created,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FileData;

    /// Without CAP_DAC_READ_SEARCH (not root), an unnamed file is linked in through
    /// its /proc link: new files and files replacing others arrive whole, and nothing
    /// named is left beside them.
    #[test]
    fn an_unnamed_file_is_linked_in_through_proc_when_not_privileged() {
        let dir = tempfile::tempdir().unwrap();
        let mut applier = Applier::open(dir.path()).unwrap();
        applier.privileged = false;
        let path = RelPath::new("f").unwrap();
        for content in [&b"first"[..], &b"second, replacing it"[..]] {
            let (chunks, id) = crate::chunk::chunk_bytes(content);
            let listing = || -> Vec<_> {
                std::fs::read_dir(dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect()
            };
            let before = listing();
            let mut write = applier
                .begin_write(&path, content.len() as u64, &id, &chunks)
                .unwrap();
            write.put(&chunks[0].hash, content).unwrap();
            assert_eq!(listing(), before, "the file being written has a name");
            write.finish(&applier, &FileData::new()).unwrap();
            assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), content);
            assert_eq!(listing(), vec![std::ffi::OsString::from("f")]);
        }
    }
}
