//! A primary node's key pairs for one session: `secret.pem` (gsyncd's control and
//! data channel) and `tar_ssh.pem` (tar mode), private halves 0600 with `.pub` beside
//! them, generated with `ssh-key` and regenerated when the session's incarnation or
//! key rotation moves past the one recorded in `keys.stamp`.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use georep_mesh::{Hlc, PublicKeyInfo};
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey};

/// The gsyncd key pair's private half, in the session directory.
pub const SECRET_PEM: &str = "secret.pem";
/// The tar key pair's private half, in the session directory.
pub const TAR_PEM: &str = "tar_ssh.pem";
/// Which incarnation and rotation the key files were generated for.
const STAMP_FILE: &str = "keys.stamp";

/// The public halves of a session's two key pairs on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairs {
    /// `secret.pem.pub`.
    pub secret: PublicKeyInfo,
    /// `tar_ssh.pem.pub`.
    pub tar: PublicKeyInfo,
}

fn stamp_text(incarnation: &Hlc, rotation: Option<&Hlc>) -> String {
    match rotation {
        Some(rotation) => format!("{incarnation} {rotation}\n"),
        None => format!("{incarnation} -\n"),
    }
}

/// The key pairs in `dir` for `incarnation`/`rotation`: read back when `keys.stamp`
/// says they were made for them and every file is there, generated (replacing any
/// older ones) otherwise. Returns the pairs and whether they were generated now.
pub fn ensure(
    dir: &Path,
    comment: &str,
    incarnation: &Hlc,
    rotation: Option<&Hlc>,
) -> io::Result<(KeyPairs, bool)> {
    let stamp = stamp_text(incarnation, rotation);
    if fs::read_to_string(dir.join(STAMP_FILE)).is_ok_and(|s| s == stamp)
        && let (Ok(secret), Ok(tar)) = (read_public(dir, SECRET_PEM), read_public(dir, TAR_PEM))
        && dir.join(SECRET_PEM).is_file()
        && dir.join(TAR_PEM).is_file()
    {
        return Ok((KeyPairs { secret, tar }, false));
    }
    fs::create_dir_all(dir)?;
    let secret = generate(dir, SECRET_PEM, &format!("{comment}:secret"))?;
    let tar = generate(dir, TAR_PEM, &format!("{comment}:tar"))?;
    write_file(&dir.join(STAMP_FILE), stamp.as_bytes(), 0o600)?;
    Ok((KeyPairs { secret, tar }, true))
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

fn generate(dir: &Path, name: &str, comment: &str) -> io::Result<PublicKeyInfo> {
    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(invalid)?;
    key.set_comment(comment);
    let private = key.to_openssh(LineEnding::LF).map_err(invalid)?;
    let public = key.public_key();
    let openssh = public.to_openssh().map_err(invalid)?;
    write_file(&dir.join(name), private.as_bytes(), 0o600)?;
    write_file(
        &dir.join(format!("{name}.pub")),
        format!("{openssh}\n").as_bytes(),
        0o644,
    )?;
    Ok(PublicKeyInfo {
        openssh,
        fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
    })
}

fn read_public(dir: &Path, name: &str) -> io::Result<PublicKeyInfo> {
    let text = fs::read_to_string(dir.join(format!("{name}.pub")))?;
    let public = ssh_key::PublicKey::from_openssh(text.trim()).map_err(invalid)?;
    Ok(PublicKeyInfo {
        openssh: public.to_openssh().map_err(invalid)?,
        fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
    })
}

/// Writes `path` atomically (temp file created with `mode`, fsync, rename).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn generated_once_per_incarnation_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let first = Hlc::new(1, 0, "n1");
        let (keys, made) = ensure(dir.path(), "georep:n1:s", &first, None).unwrap();
        assert!(made);
        assert!(keys.secret.openssh.starts_with("ssh-ed25519 "));
        assert!(keys.secret.fingerprint.starts_with("SHA256:"));
        assert_ne!(keys.secret, keys.tar);
        for name in [SECRET_PEM, TAR_PEM] {
            let mode = fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let (again, made) = ensure(dir.path(), "georep:n1:s", &first, None).unwrap();
        assert!(!made);
        assert_eq!(again, keys);
        let rotation = Hlc::new(2, 0, "n2");
        let (rotated, made) = ensure(dir.path(), "georep:n1:s", &first, Some(&rotation)).unwrap();
        assert!(made);
        assert_ne!(rotated.secret, keys.secret);
        // A lost private half is regenerated, not silently published without one.
        fs::remove_file(dir.path().join(SECRET_PEM)).unwrap();
        let (_, made) = ensure(dir.path(), "georep:n1:s", &first, Some(&rotation)).unwrap();
        assert!(made);
    }
}
