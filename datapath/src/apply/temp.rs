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
    /// was being written when its writer died). A temporary file is named for the host
    /// and process writing it: one of this host is removed when its process no longer
    /// runs; one of another host (several secondary agents can share one mounted
    /// volume, Gluster's case) when it has not been written to for
    /// [`FOREIGN_TEMP_STALE`], since this host cannot see that host's processes.
    /// Returns how many were removed.
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
                .filter(|name| match temp_writer(name.to_bytes()) {
                    None => false,
                    Some(writer) if writer.host.is_none_or(|host| host == host_tag()) => {
                        !running(writer.pid)
                    }
                    Some(_) => untouched_for(&fd, name, FOREIGN_TEMP_STALE),
                })
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

/// How long a temporary file of another host must have gone unwritten before a
/// sweep here takes its writer for dead. A live write adds to its file at least
/// every few seconds: a stalled stream is dropped by QUIC's 10 s idle timeout.
pub const FOREIGN_TEMP_STALE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Who a temporary file's name says writes it (see [`temp_name`]).
#[derive(Debug, PartialEq, Eq)]
struct Writer<'a> {
    /// The writer's [`host_tag`]; `None` in names from before hosts were named
    /// (taken as this host's).
    host: Option<&'a [u8]>,
    /// The writing process on that host.
    pid: u32,
}

/// The writer a temporary file's name states; `None` for any other name.
fn temp_writer(name: &[u8]) -> Option<Writer<'_>> {
    let rest = name.strip_prefix(TEMP_PREFIX.as_bytes())?;
    let mut parts = rest.rsplitn(3, |b| *b == b'.');
    let pid = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let middle = parts.next()?;
    let host = match parts.next() {
        Some(_) => Some(middle.strip_prefix(b"h")?),
        None => None,
    };
    Some(Writer { host, pid })
}

/// Whether `name` in `dir` was last modified at least `age` ago (false when it
/// cannot be read, or its time is in the future).
fn untouched_for(dir: &OwnedFd, name: &std::ffi::CStr, age: std::time::Duration) -> bool {
    let Ok(stat) = nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
        return false;
    };
    let modified = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            u64::try_from(stat.st_mtime).unwrap_or(0),
            u32::try_from(stat.st_mtime_nsec).unwrap_or(0),
        );
    std::time::SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|elapsed| elapsed >= age)
}

/// A short tag for this host in temporary names: 8 hex digits of the BLAKE3 hash of
/// its host name, machine id and pid namespace, the scope in which a pid names one
/// process. Agents sharing that scope (several on one machine, as in tests) share
/// the tag and judge each other's temporary files by pid.
fn host_tag() -> &'static [u8] {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let mut hasher = blake3::Hasher::new();
        for source in ["/proc/sys/kernel/hostname", "/etc/machine-id"] {
            hasher.update(&std::fs::read(source).unwrap_or_default());
            hasher.update(b"\0");
        }
        let namespace = std::fs::read_link("/proc/self/ns/pid").unwrap_or_default();
        hasher.update(namespace.as_os_str().as_bytes());
        hasher.finalize().as_bytes()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
    .as_bytes()
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

/// The temporary name a write to `name` uses (skipped by scans):
/// `.georep-tmp.<hash of name>.h<host tag>.<pid>`.
pub(super) fn temp_name(name: &OsStr) -> std::ffi::OsString {
    let hash = Hash::of(name.as_bytes());
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let mut out = std::ffi::OsString::from(TEMP_PREFIX);
    out.push(format!("{:?}.h", hash));
    out.push(OsStr::from_bytes(host_tag()));
    out.push(format!(".{}", PID.get_or_init(std::process::id)));
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

    #[test]
    fn temporary_names_say_which_host_and_process_write_them() {
        let name = temp_name(OsStr::new("report.pdf"));
        assert_eq!(
            temp_writer(name.as_bytes()),
            Some(Writer {
                host: Some(host_tag()),
                pid: std::process::id()
            })
        );
        assert_eq!(host_tag().len(), 8);
        // names from before hosts were named
        assert_eq!(
            temp_writer(b".georep-tmp.0123456789ab.42"),
            Some(Writer {
                host: None,
                pid: 42
            })
        );
        assert_eq!(temp_writer(b".georep-tmp.0123456789ab.xhost.42"), None);
        assert_eq!(temp_writer(b".georep-tmp.not-a-pid"), None);
        assert_eq!(temp_writer(b"plain.42"), None);
    }

    /// A temporary file of this host whose writer died is swept by pid, in the name
    /// format this code writes.
    #[test]
    fn this_hosts_temporary_file_of_a_dead_writer_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let mut ended = std::process::Command::new("true").spawn().unwrap();
        let dead = ended.id();
        ended.wait().unwrap();
        let mine = temp_name(OsStr::new("f"));
        let cut = mine.as_bytes().iter().rposition(|b| *b == b'.').unwrap();
        let stale = dir.path().join(OsStr::from_bytes(
            &[&mine.as_bytes()[..cut], format!(".{dead}").as_bytes()].concat(),
        ));
        std::fs::write(&stale, b"partial").unwrap();
        let live = dir.path().join(&mine);
        std::fs::write(&live, b"being written").unwrap();
        let applier = Applier::open(dir.path()).unwrap();
        assert_eq!(
            applier.sweep_temporaries(&[(RelPath::new("f").unwrap(), false)]),
            1
        );
        assert!(!stale.exists());
        assert!(live.exists());
    }

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
