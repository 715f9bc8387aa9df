//! Managed blocks in an authorized_keys file: one per session, between marker
//! comments naming it, rewritten whole; every other line of the file is kept byte for
//! byte. Pure splicing ([`splice`]) and the file write that keeps owner and mode.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

const BEGIN: &str = "# BEGIN georep-mesh session ";
const END: &str = "# END georep-mesh session ";
const NOTICE: &str = "# managed by georepd from the mesh: edits inside this block are undone; delete the session to remove it";

/// One line of a block: a primary's public key, restricted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyLine {
    /// Addresses the key may log in from (`from=`).
    pub from: Vec<String>,
    /// The forced command.
    pub command: String,
    /// `ssh-ed25519 AAAA... comment`.
    pub key: String,
}

impl KeyLine {
    fn render(&self) -> String {
        format!(
            "restrict,from=\"{}\",command=\"{}\" {}",
            self.from.join(","),
            self.command,
            self.key
        )
    }
}

/// The block of session `session` (its key) holding `lines`.
pub fn render_block(session: &str, lines: &[KeyLine]) -> String {
    let mut out = format!("{BEGIN}{session}\n{NOTICE}\n");
    for line in lines {
        out.push_str(&line.render());
        out.push('\n');
    }
    out.push_str(&format!("{END}{session}\n"));
    out
}

/// The sessions whose blocks `text` holds, with each block's text.
pub fn blocks(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        match &mut current {
            None => {
                if let Some(session) = bare.strip_prefix(BEGIN) {
                    current = Some((session.to_string(), line.to_string()));
                }
            }
            Some((session, body)) => {
                body.push_str(line);
                if bare.strip_prefix(END) == Some(session.as_str()) {
                    let (session, body) = current.take().unwrap_or_default();
                    out.insert(session, body);
                }
            }
        }
    }
    out
}

/// `text` with the blocks of `wanted` (session -> block text) in place, and every other
/// block of ours that is not in `wanted` and satisfies `remove` taken out. Lines outside
/// our blocks are kept as they are; a new block is appended at the end. An unterminated
/// block (a BEGIN without its END) is left alone, and so is everything after it.
pub fn splice(
    text: &str,
    wanted: &BTreeMap<String, String>,
    remove: impl Fn(&str) -> bool,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut skipping: Option<(String, String)> = None;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if let Some((session, held)) = &mut skipping {
            held.push_str(line);
            if bare.strip_prefix(END) == Some(session.as_str()) {
                skipping = None;
            }
            continue;
        }
        if let Some(session) = bare.strip_prefix(BEGIN) {
            if let Some(block) = wanted.get(session) {
                if placed.insert(session.to_string()) {
                    out.push_str(block);
                }
                skipping = Some((session.to_string(), line.to_string()));
                continue;
            }
            if remove(session) {
                skipping = Some((session.to_string(), line.to_string()));
                continue;
            }
        }
        out.push_str(line);
    }
    if let Some((_, held)) = skipping {
        // No END: not a block we wrote whole; give back what was swallowed.
        out.push_str(&held);
    }
    for (session, block) in wanted {
        if !placed.contains(session) {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(block);
        }
    }
    out
}

/// Replaces `path` with `text` unless it already holds exactly that: a temp file in
/// the same directory, owner and mode of the existing file (or `uid`/`gid`, 0600 for a
/// new one; the directory is created 0700 for the user when missing), fsync, rename.
/// Ownership is only given away when running as root (an unprivileged agent, e.g.
/// `georep demo`, keeps its own). Returns whether it wrote.
pub fn write(path: &Path, text: &str, uid: u32, gid: u32) -> io::Result<bool> {
    let existing = fs::metadata(path).ok();
    if existing.is_some() && fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(false);
    }
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        }
    }
    let (mode, owner, group) = match &existing {
        Some(meta) => (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid()),
        None => (0o600, uid, gid),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.georep-tmp"));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::fchown(&file, Some(owner), Some(group))?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(key: &str) -> KeyLine {
        KeyLine {
            from: vec!["10.0.0.1".into()],
            command: "/usr/lib/x86_64-linux-gnu/glusterfs/gsyncd".into(),
            key: format!("ssh-ed25519 {key} c"),
        }
    }

    #[test]
    fn splicing_touches_only_our_blocks() {
        let outside = "ssh-rsa AAAA admin@laptop\n# a comment\n\nssh-ed25519 BBBB other";
        let block = render_block("s1", &[line("K1")]);
        let wanted: BTreeMap<String, String> = [("s1".to_string(), block.clone())].into();
        let first = splice(outside, &wanted, |_| true);
        assert!(first.starts_with(outside), "{first}");
        assert_eq!(&first[outside.len()..], format!("\n{block}"));
        assert!(block.contains(
            "restrict,from=\"10.0.0.1\",command=\"/usr/lib/x86_64-linux-gnu/glusterfs/gsyncd\" ssh-ed25519 K1 c"
        ));
        // Idempotent.
        assert_eq!(splice(&first, &wanted, |_| true), first);
        // A hand edit inside the block is undone; one outside stays.
        let edited = first.replace("K1", "EVIL").replace("# a comment", "# mine");
        let repaired = splice(&edited, &wanted, |_| true);
        assert_eq!(repaired, first.replace("# a comment", "# mine"));
        // Updated in place, then removed; other sessions' blocks are kept unless asked.
        let other = render_block("s2", &[line("K2")]);
        let both = format!("{first}{other}tail\n");
        let updated: BTreeMap<String, String> =
            [("s1".to_string(), render_block("s1", &[line("K3")]))].into();
        let spliced = splice(&both, &updated, |s| s == "nothing");
        assert!(spliced.contains("K3") && !spliced.contains("K1") && spliced.contains("K2"));
        assert!(spliced.ends_with("tail\n"));
        let gone = splice(&both, &BTreeMap::new(), |_| true);
        assert_eq!(gone, format!("{outside}\ntail\n"));
        assert_eq!(blocks(&both).keys().collect::<Vec<_>>(), vec!["s1", "s2"]);
    }

    #[test]
    fn an_unterminated_block_is_left_alone() {
        let text = format!("{BEGIN}s1\nssh-ed25519 X\nafter\n");
        assert_eq!(splice(&text, &BTreeMap::new(), |_| true), text);
    }

    #[test]
    fn writes_keep_owner_and_mode_and_skip_unchanged_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh/authorized_keys");
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        assert!(write(&path, "a\n", uid, gid).unwrap());
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        assert!(
            !write(&path, "a\n", uid, gid).unwrap(),
            "unchanged: not written"
        );
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
        assert!(write(&path, "b\n", uid, gid).unwrap());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "b\n");
    }
}
