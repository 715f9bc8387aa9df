//! Durable files: atomic replacement and the checked state envelope.
//!
//! [`write_atomic`] replaces a file so that a crash leaves either the old or
//! the new content, never a mix. [`StateFile`] stores one serde value in a
//! self-checking envelope so that a torn or bit-flipped file is detected
//! ([`StoreError::Corrupt`]) instead of silently loaded, and [`quarantine`]
//! moves such a file aside so nothing is lost.
//!
//! Everything here is blocking; call it from `spawn_blocking` in async code.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// First bytes of every [`StateFile`].
pub const STATE_MAGIC: [u8; 4] = *b"GRPS";
/// Envelope format version written by [`StateFile::save`].
pub const STATE_FORMAT_VERSION: u8 = 1;
/// Bytes of the envelope header: magic, version, payload length.
pub const HEADER_LEN: usize = 4 + 1 + 4;
/// Bytes of the envelope's CRC-32 trailer.
pub const TRAILER_LEN: usize = 4;

/// Mode of files [`write_atomic`] creates (existing files keep theirs): the
/// data directory holds keys and cluster state.
const NEW_FILE_MODE: u32 = 0o600;

/// Why a [`StateFile`] could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file failed; the file on disk is unchanged
    /// (a failed save leaves the previous version in place).
    #[error("{}: {source}", path.display())]
    Io {
        /// The state file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file exists but is not a valid state file. Nothing was loaded;
    /// the file is left as is (see [`quarantine`]).
    #[error("{}: corrupt state file: {reason}", path.display())]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
    /// The value could not be encoded; nothing was written.
    #[error("{}: cannot encode state: {reason}", path.display())]
    Encode {
        /// The state file.
        path: PathBuf,
        /// The encoder's message.
        reason: String,
    },
}

/// Replaces `path` with `bytes` atomically and durably: writes a temporary
/// file in the same directory, fsyncs it, renames it over `path` and fsyncs
/// the directory. A new file gets mode 0600; an existing file keeps its
/// permissions. On error the temporary file is removed and `path` is
/// untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, bytes, true)
}

/// Like [`write_atomic`] without the fsyncs: a reader sees the old or the new
/// content, never a mix, but a power loss may keep the old one. For files
/// rewritten often whose loss costs nothing (status files).
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, bytes, false)
}

fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);

    let mode = match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => NEW_FILE_MODE,
        Err(e) => return Err(e),
    };

    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed `mode`; an existing file's mode wins.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Renames a corrupt file to `<name>.corrupt-<unix-secs>` (with a `-N`
/// suffix if that exists) in the same directory, so it can be inspected
/// later, and returns the new path.
pub fn quarantine(path: &Path) -> io::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        )
    })?;
    let base = {
        let mut n = file_name.to_os_string();
        n.push(format!(".corrupt-{secs}"));
        n
    };
    let mut target = path.with_file_name(&base);
    let mut n = 1u32;
    while fs::symlink_metadata(&target).is_ok() {
        let mut name = base.clone();
        name.push(format!("-{n}"));
        target = path.with_file_name(name);
        n += 1;
    }
    fs::rename(path, &target)?;
    Ok(target)
}

/// One serde value persisted in a checked envelope:
/// `"GRPS"`, version `u8`, payload length `u32` LE, postcard payload,
/// CRC-32 (IEEE) `u32` LE of everything before it.
pub struct StateFile<T> {
    path: PathBuf,
    _value: PhantomData<fn() -> T>,
}

// Manual impls: derives would needlessly require `T: Clone` / `T: Debug`.
impl<T> Clone for StateFile<T> {
    fn clone(&self) -> Self {
        StateFile {
            path: self.path.clone(),
            _value: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for StateFile<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateFile")
            .field("path", &self.path)
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> StateFile<T> {
    /// A state file at `path` (nothing is read or created yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateFile {
            path: path.into(),
            _value: PhantomData,
        }
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encodes `value` and replaces the file with it ([`write_atomic`]).
    pub fn save(&self, value: &T) -> Result<(), StoreError> {
        let bytes = encode(value).map_err(|reason| StoreError::Encode {
            path: self.path.clone(),
            reason,
        })?;
        write_atomic(&self.path, &bytes).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Loads the value: `Ok(None)` if the file does not exist,
    /// [`StoreError::Corrupt`] if it fails any check. Never reads more than
    /// the file holds.
    pub fn load(&self) -> Result<Option<T>, StoreError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        decode(&bytes)
            .map(Some)
            .map_err(|reason| StoreError::Corrupt {
                path: self.path.clone(),
                reason,
            })
    }

    /// Moves the file aside with [`quarantine`].
    pub fn quarantine(&self) -> io::Result<PathBuf> {
        quarantine(&self.path)
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let payload = postcard::to_stdvec(value).map_err(|e| e.to_string())?;
    let len = u32::try_from(payload.len())
        .map_err(|_| format!("{} bytes exceed the 4 GiB format limit", payload.len()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TRAILER_LEN);
    out.extend_from_slice(&STATE_MAGIC);
    out.push(STATE_FORMAT_VERSION);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// A state file's envelope as it is on disk, read without any check (see
/// [`Envelope::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The first four bytes (`"GRPS"` when valid).
    pub magic: [u8; 4],
    /// The format version byte.
    pub version: u8,
    /// The payload length the header claims.
    pub claimed_len: usize,
    /// The payload bytes present, at most `claimed_len` (fewer when truncated).
    pub payload: &'a [u8],
    /// Payload bytes the file holds between header and trailer.
    pub held_len: usize,
}

impl<'a> Envelope<'a> {
    /// Reads the header of `bytes`; `None` if it is shorter than a header.
    pub fn read(bytes: &'a [u8]) -> Option<Self> {
        let header = bytes.get(..HEADER_LEN)?;
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&header[..4]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&header[5..9]);
        let claimed_len = u32::from_le_bytes(len) as usize;
        let body = &bytes[HEADER_LEN..];
        let end = claimed_len.min(body.len());
        Some(Envelope {
            magic,
            version: header[4],
            claimed_len,
            payload: &body[..end],
            held_len: bytes.len().saturating_sub(HEADER_LEN + TRAILER_LEN),
        })
    }

    /// Whether the magic is right.
    pub fn magic_ok(&self) -> bool {
        self.magic == STATE_MAGIC
    }

    /// Every check of a whole file `bytes` (magic, version, length, checksum): the
    /// verified payload, or what failed.
    pub fn check(bytes: &'a [u8]) -> Result<&'a [u8], String> {
        if bytes.is_empty() {
            return Err("file is empty".to_owned());
        }
        if bytes.len() < HEADER_LEN + TRAILER_LEN {
            return Err(format!(
                "file is {} bytes, shorter than the {}-byte envelope",
                bytes.len(),
                HEADER_LEN + TRAILER_LEN
            ));
        }
        let envelope = Envelope::read(bytes).ok_or("file is shorter than its header")?;
        if !envelope.magic_ok() {
            return Err(format!(
                "bad magic {:02x?}, expected \"GRPS\"",
                envelope.magic
            ));
        }
        if envelope.version != STATE_FORMAT_VERSION {
            return Err(format!(
                "unsupported format version {} (this build reads {STATE_FORMAT_VERSION})",
                envelope.version
            ));
        }
        if envelope.claimed_len != envelope.held_len {
            return Err(format!(
                "length field says {} payload bytes but the file holds {} (truncated or torn write?)",
                envelope.claimed_len, envelope.held_len
            ));
        }
        let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
        let mut stored = [0u8; 4];
        stored.copy_from_slice(trailer);
        let stored = u32::from_le_bytes(stored);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(format!(
                "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            ));
        }
        Ok(&body[HEADER_LEN..])
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let payload = Envelope::check(bytes)?;
    let (value, unread) =
        postcard::take_from_bytes::<T>(payload).map_err(|e| format!("cannot decode: {e}"))?;
    if !unread.is_empty() {
        return Err(format!(
            "cannot decode: {} trailing payload bytes",
            unread.len()
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Replica {
        version: u64,
        sessions: BTreeMap<String, Vec<u8>>,
        note: Option<String>,
    }

    fn sample() -> Replica {
        Replica {
            version: 42,
            sessions: [
                ("gv0_h_gv1".to_owned(), vec![1, 2, 3]),
                ("gv2_h_gv3".to_owned(), vec![]),
            ]
            .into_iter()
            .collect(),
            note: Some("hello".to_owned()),
        }
    }

    fn saved() -> (tempfile::TempDir, StateFile<Replica>) {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("replica.bin"));
        file.save(&sample()).unwrap();
        (dir, file)
    }

    fn corrupt_reason(file: &StateFile<Replica>) -> String {
        match file.load() {
            Err(StoreError::Corrupt { path, reason }) => {
                assert_eq!(path, file.path());
                assert!(!reason.is_empty());
                reason
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn the_envelope_is_byte_for_byte_the_documented_format() {
        // "GRPS", version 1, length 1 (LE), postcard of 7u8, CRC-32/IEEE (LE) of the rest.
        let mut expected = b"GRPS\x01\x01\x00\x00\x00\x07".to_vec();
        expected.extend_from_slice(&[5, 114, 11, 236]);
        assert_eq!(encode(&7u8).unwrap(), expected);
        assert_eq!(decode::<u8>(&expected), Ok(7));
    }

    #[test]
    fn roundtrip() {
        let (_dir, file) = saved();
        assert_eq!(file.load().unwrap(), Some(sample()));
        let mut next = sample();
        next.version = 43;
        file.save(&next).unwrap();
        assert_eq!(file.load().unwrap(), Some(next));
    }

    #[test]
    fn absent_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::<Replica>::new(dir.path().join("nope"));
        assert!(file.load().unwrap().is_none());
    }

    #[test]
    fn new_files_are_private_and_no_temp_is_left() {
        let (dir, file) = saved();
        let mode = fs::metadata(file.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["replica.bin"]);
    }

    #[test]
    fn write_atomic_keeps_existing_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    #[test]
    fn truncated_file_is_corrupt() {
        let (_dir, file) = saved();
        let bytes = fs::read(file.path()).unwrap();
        for cut in [1, 5, HEADER_LEN, bytes.len() - 1] {
            fs::write(file.path(), &bytes[..cut]).unwrap();
            corrupt_reason(&file);
        }
        fs::write(file.path(), &bytes[..bytes.len() - 3]).unwrap();
        assert!(corrupt_reason(&file).contains("length field"));
    }

    #[test]
    fn flipped_byte_is_corrupt() {
        let (_dir, file) = saved();
        let bytes = fs::read(file.path()).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            fs::write(file.path(), &bad).unwrap();
            corrupt_reason(&file);
        }
        let mut bad = bytes.clone();
        bad[HEADER_LEN + 2] ^= 0x01;
        fs::write(file.path(), &bad).unwrap();
        assert!(corrupt_reason(&file).contains("checksum"));
    }

    #[test]
    fn wrong_magic_and_version_are_corrupt() {
        let (_dir, file) = saved();
        let bytes = fs::read(file.path()).unwrap();
        let mut bad = bytes.clone();
        bad[..4].copy_from_slice(b"JUNK");
        fs::write(file.path(), &bad).unwrap();
        assert!(corrupt_reason(&file).contains("magic"));
        let mut bad = bytes;
        bad[4] = 9;
        fs::write(file.path(), &bad).unwrap();
        assert!(corrupt_reason(&file).contains("version 9"));
    }

    #[test]
    fn empty_file_is_corrupt() {
        let (_dir, file) = saved();
        fs::write(file.path(), b"").unwrap();
        assert!(corrupt_reason(&file).contains("empty"));
    }

    #[test]
    fn huge_length_field_does_not_allocate() {
        let (_dir, file) = saved();
        let mut bytes = fs::read(file.path()).unwrap();
        bytes[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(file.path(), &bytes).unwrap();
        assert!(corrupt_reason(&file).contains("length field"));
    }

    #[test]
    fn valid_envelope_with_bad_payload_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        // A u8 where a Replica is expected: the envelope checks pass.
        StateFile::<u8>::new(&path).save(&7).unwrap();
        let file = StateFile::<Replica>::new(&path);
        assert!(corrupt_reason(&file).contains("cannot decode"));
    }

    #[test]
    fn quarantine_moves_aside_without_clobbering() {
        let (dir, file) = saved();
        fs::write(file.path(), b"junk").unwrap();
        let first = file.quarantine().unwrap();
        assert!(!file.path().exists());
        assert_eq!(fs::read(&first).unwrap(), b"junk");
        let name = first.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.starts_with("replica.bin.corrupt-"), "{name}");

        fs::write(file.path(), b"junk2").unwrap();
        let second = quarantine(file.path()).unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read(&first).unwrap(), b"junk");
        assert_eq!(fs::read(&second).unwrap(), b"junk2");
        assert_eq!(second.parent(), Some(dir.path()));
        assert!(file.load().unwrap().is_none());
    }
}
