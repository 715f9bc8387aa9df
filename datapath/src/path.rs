//! Relative paths inside a brick or a secondary volume, as they travel between nodes.
//! (Resolving them under a root without following symlinks is [`crate::apply`]'s:
//! `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so no check can be raced.)

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

/// Longest path accepted (bytes), as Linux's PATH_MAX.
pub const MAX_PATH_BYTES: usize = 4096;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty, absolute, or with an empty, `.` or `..` component, or a NUL byte.
    #[error(
        "path {0:?} is not a plain relative path (no leading /, no . or .. or empty components, no NUL)"
    )]
    NotRelative(String),
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("path of {0} bytes is longer than {MAX_PATH_BYTES}")]
    TooLong(usize),
}

/// A plain relative path: components separated by `/`, none empty, `.` or `..`, no
/// NUL. File names are bytes (Linux allows any but `/` and NUL).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<u8>", into = "Vec<u8>")]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// Checks `bytes` and wraps them.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<RelPath, PathError> {
        let bytes = bytes.into();
        if bytes.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(bytes.len()));
        }
        let plain = !bytes.is_empty()
            && !bytes.contains(&0)
            && bytes
                .split(|b| *b == b'/')
                .all(|c| !c.is_empty() && c != b"." && c != b"..");
        if plain {
            Ok(RelPath(bytes))
        } else {
            Err(PathError::NotRelative(
                String::from_utf8_lossy(&bytes).into_owned(),
            ))
        }
    }

    /// `path` relative to `root`, if it lies below it.
    pub fn under(root: &Path, path: &Path) -> Option<RelPath> {
        let rest = path.strip_prefix(root).ok()?;
        let mut out = Vec::new();
        for component in rest.components() {
            match component {
                Component::Normal(name) => {
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(name.as_bytes());
                }
                _ => return None,
            }
        }
        RelPath::new(out).ok()
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// As a relative filesystem path.
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// The parent directory, `None` at the top level.
    pub fn parent(&self) -> Option<RelPath> {
        let at = self.0.iter().rposition(|b| *b == b'/')?;
        Some(RelPath(self.0[..at].to_vec()))
    }

    /// The last component.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(at) => &self.0[at + 1..],
            None => &self.0,
        }
    }

    /// Whether `self` is `other` or below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0[other.0.len()] == b'/')
    }

    /// `self` with its prefix `from` replaced by `to` (a directory rename moves what is
    /// below it); `None` if `self` is not below `from`.
    pub fn rebase(&self, from: &RelPath, to: &RelPath) -> Option<RelPath> {
        if !self.starts_with(from) {
            return None;
        }
        let mut out = to.0.clone();
        out.extend_from_slice(&self.0[from.0.len()..]);
        Some(RelPath(out))
    }

    /// Range bounds of what lies strictly below `self` in a map sorted by path: every
    /// `self/...` sorts at or after the first and before the second (`0` follows `/`).
    /// Bounds only: neither is a valid path.
    pub(crate) fn below_bounds(&self) -> std::ops::Range<RelPath> {
        let mut start = self.0.clone();
        start.push(b'/');
        let mut end = self.0.clone();
        end.push(b'/' + 1);
        RelPath(start)..RelPath(end)
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        self.0.iter().filter(|b| **b == b'/').count() + 1
    }
}

impl TryFrom<Vec<u8>> for RelPath {
    type Error = PathError;
    fn try_from(bytes: Vec<u8>) -> Result<Self, Self::Error> {
        RelPath::new(bytes)
    }
}

impl From<RelPath> for Vec<u8> {
    fn from(path: RelPath) -> Vec<u8> {
        path.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_accepted() {
        for good in ["a", "a/b", "a b/c.txt", ".hidden/x", "..x/y..", "\u{e9}"] {
            assert!(RelPath::new(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/a", "a/", "a//b", ".", "..", "a/../b", "a/./b", "../x", "a\0b",
        ] {
            assert!(RelPath::new(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            RelPath::new(vec![b'a'; MAX_PATH_BYTES + 1]),
            Err(PathError::TooLong(_))
        ));
        // Decoding checks too: a peer cannot smuggle `..` through the wire format.
        let wire = postcard::to_stdvec(&b"../etc/passwd".to_vec()).unwrap();
        assert!(postcard::from_bytes::<RelPath>(&wire).is_err());
    }

    #[test]
    fn parents_renames_and_prefixes() {
        let p = RelPath::new("a/b/c").unwrap();
        assert_eq!(p.parent(), Some(RelPath::new("a/b").unwrap()));
        assert_eq!(RelPath::new("a").unwrap().parent(), None);
        assert_eq!(p.file_name(), b"c");
        assert!(p.starts_with(&RelPath::new("a/b").unwrap()));
        assert!(
            !RelPath::new("a/bc")
                .unwrap()
                .starts_with(&RelPath::new("a/b").unwrap())
        );
        assert_eq!(
            p.rebase(&RelPath::new("a").unwrap(), &RelPath::new("z/y").unwrap()),
            Some(RelPath::new("z/y/b/c").unwrap())
        );
        assert_eq!(p.depth(), 3);
        assert_eq!(
            RelPath::under(Path::new("/r"), Path::new("/r/x/y")),
            Some(RelPath::new("x/y").unwrap())
        );
        assert_eq!(RelPath::under(Path::new("/r"), Path::new("/r")), None);
    }
}
