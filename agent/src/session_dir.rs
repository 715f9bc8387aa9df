//! The per-session directory on disk, written by each agent from the converged view.
//!
//! Layout, as gluster's glusterd keeps it on every peer:
//!
//! ```text
//! <data-dir>/geo-replication/<primaryvol>_<secondaryhost>_<secondaryvol>/
//!     gsyncd.conf      effective config ([vars] then `key = value`)
//!     monitor.status   Created | Started | Stopped | Paused | Faulty
//!     active_bricks    local brick paths that are Active, one per line
//!     monitor.pid      owned by crate::supervise
//!     monitor.log      the monitor's stdout and stderr
//!     <brick>.status   written by the monitor's workers
//! ```
//!
//! Files are replaced atomically and only when their content changes, so readers
//! (the monitor, other tools) never see a torn file and mtimes mean something.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;

use georep_mesh::SessionView;

pub use georep_store::data_dir::{
    ACTIVE_BRICKS_FILE, CONFIG_FILE, LOG_FILE, PID_FILE, STATUS_FILE,
};

/// What one existing session's directory must contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDirState {
    /// The converged view of the session.
    pub view: SessionView,
    /// One word for `monitor.status`: the local monitor state, or the desired state on
    /// nodes that are not primary nodes of the session.
    pub monitor_status: String,
    /// Local brick paths that are Active on this node.
    pub active_local_bricks: Vec<String>,
    /// The built-in monitor's data path plan (`datapath.json`), on primary nodes.
    pub datapath_plan: Option<String>,
    /// Whether this node runs gluster's gsyncd (`gsyncd.conf` then carries its lines).
    pub gsyncd: bool,
}

/// Brings `root` (`<data-dir>/geo-replication`) in line with `sessions`.
///
/// Creates and updates the directories of existing sessions, and removes (recursively)
/// every other subdirectory holding a `gsyncd.conf`: those belong to deleted sessions.
/// Nothing else under `root` is touched. A deleted session's directory that still holds
/// a `monitor.pid` is kept until the supervisor has stopped the monitor and removed
/// the pid file, so that an agent restart in between can still find and stop it.
pub fn sync_all(root: &Path, sessions: &[SessionDirState]) -> io::Result<()> {
    fs::create_dir_all(root)?;
    let mut keep = BTreeSet::new();
    for session in sessions.iter().filter(|s| s.view.exists) {
        let name = session.view.id.dir_name();
        let dir = root.join(&name);
        fs::create_dir_all(&dir)?;
        write_if_changed(
            &dir.join(CONFIG_FILE),
            render_config(&session.view, &dir, session.gsyncd).as_bytes(),
        )?;
        write_if_changed(
            &dir.join(STATUS_FILE),
            one_line(&session.monitor_status).as_bytes(),
        )?;
        let mut bricks = String::new();
        for brick in &session.active_local_bricks {
            bricks.push_str(&one_line(brick));
            bricks.push('\n');
        }
        write_if_changed(&dir.join(ACTIVE_BRICKS_FILE), bricks.as_bytes())?;
        let plan = dir.join(crate::datapath::PLAN_FILE);
        match &session.datapath_plan {
            Some(text) => {
                write_if_changed(&plan, text.as_bytes())?;
            }
            None => match fs::remove_file(&plan) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            },
        }
        keep.insert(name);
    }
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        // file_type does not follow symlinks: a link to a directory elsewhere is never ours.
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name();
        if name.to_str().is_some_and(|name| keep.contains(name)) {
            continue;
        }
        let dir = entry.path();
        let ours = fs::symlink_metadata(dir.join(CONFIG_FILE)).is_ok_and(|m| m.is_file());
        let monitor_may_run = fs::symlink_metadata(dir.join(PID_FILE)).is_ok();
        if ours && !monitor_may_run {
            tracing::info!(dir = %dir.display(), "removing the directory of a deleted session");
            fs::remove_dir_all(&dir)?;
        }
    }
    Ok(())
}

/// Options of every ssh the monitor runs, as gluster's gsyncd.conf has them.
const SSH_OPTIONS: &str = "-oPasswordAuthentication=no -oStrictHostKeyChecking=no";

/// The effective configuration as `gsyncd.conf` in `dir` holds it. A push-pem session
/// names its key files in `ssh-options`/`ssh-options-tar` (after the session's own
/// options, if set), as gluster's does, so gluster's gsyncd uses them unchanged.
/// `gsyncd`: the gsyncd monitor profile's lines too (its state kept in `dir`). Every
/// key is written once: gsyncd's parser refuses a file that repeats one.
pub fn render_config(view: &SessionView, dir: &Path, gsyncd: bool) -> String {
    let mut out = String::from("[vars]\n");
    let incarnation = view
        .incarnation
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    for (key, value) in [
        ("primary_volume", view.id.primary_volume.clone()),
        ("secondary", view.id.secondary()),
        ("session_incarnation", incarnation),
    ] {
        push_line(&mut out, key, &value);
    }
    let pem_keys = [
        ("ssh-options", crate::keys::SECRET_PEM),
        ("ssh-options-tar", crate::keys::TAR_PEM),
    ];
    let mut remote_gsyncd_set = false;
    for (key, value, _default, set) in view.effective_config() {
        if view.options.push_pem && pem_keys.iter().any(|(k, _)| *k == key) {
            continue;
        }
        remote_gsyncd_set |= key == "remote-gsyncd" && set;
        push_line(&mut out, key, &value);
    }
    if view.options.push_pem {
        for (key, file) in pem_keys {
            let options = view.config.get(key).map_or(SSH_OPTIONS, String::as_str);
            let value = format!("{options} -i {}", dir.join(file).display());
            push_line(&mut out, key, &value);
        }
    }
    if gsyncd {
        for (key, value) in crate::gluster::config_lines(dir, remote_gsyncd_set) {
            push_line(&mut out, key, &value);
        }
    }
    out
}

fn push_line(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    out.push_str(" = ");
    out.push_str(&one_line(value));
    out.push('\n');
}

/// Values are validated when set, but the file format must survive a value that was
/// not (a peer running other code): one value, one line.
fn one_line(text: &str) -> String {
    text.trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Replaces `path` with `bytes` unless it already holds exactly that. Returns whether
/// the file was written.
pub(crate) fn write_if_changed(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    match fs::read(path) {
        Ok(current) if current == bytes => return Ok(false),
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    write_atomic(path, bytes, false)?;
    Ok(true)
}

/// Replaces `path` atomically; `durable` also fsyncs (for files that must survive a
/// crash, like the pid file).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    if durable {
        georep_store::write_atomic(path, bytes)
    } else {
        georep_store::write_atomic_unsynced(path, bytes)
    }
}

#[cfg(test)]
mod tests {
    use georep_mesh::Hlc;
    use georep_mesh::session_config::CONFIG_KEYS;
    use georep_mesh::{DesiredState, SessionId, SessionOptions};

    use super::*;

    fn view(primary: &str, exists: bool) -> SessionView {
        SessionView {
            id: SessionId::parse(primary, "geo@n4::sv").unwrap(),
            exists,
            incarnation: Some(Hlc::new(5, 1, "n1")),
            deleted: None,
            desired: DesiredState::Started,
            desired_stamp: None,
            options: SessionOptions::default(),
            config: [("sync-jobs".to_string(), "8".to_string())].into(),
            key_rotation: None,
        }
    }

    fn state(primary: &str, status: &str, active: &[&str]) -> SessionDirState {
        SessionDirState {
            view: view(primary, true),
            monitor_status: status.into(),
            active_local_bricks: active.iter().map(ToString::to_string).collect(),
            datapath_plan: Some("{}".into()),
            gsyncd: false,
        }
    }

    #[test]
    fn writes_every_file_of_an_existing_session() {
        let root = tempfile::tempdir().unwrap();
        sync_all(root.path(), &[state("gv0", "Started", &["/b1", "/b2"])]).unwrap();
        let dir = root.path().join("gv0_geo@n4_sv");
        let conf = fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
        assert!(conf.starts_with("[vars]\n"), "{conf}");
        assert!(conf.contains("primary_volume = gv0\n"), "{conf}");
        assert!(conf.contains("secondary = geo@n4::sv\n"), "{conf}");
        assert!(conf.contains("session_incarnation = 5.1@n1\n"), "{conf}");
        assert!(conf.contains("sync-jobs = 8\n"), "{conf}");
        for key in CONFIG_KEYS {
            assert!(
                conf.contains(&format!("\n{} = ", key.name)),
                "{} missing: {conf}",
                key.name
            );
        }
        assert!(conf.contains("log-level = INFO\n"), "{conf}");
        assert_eq!(
            fs::read_to_string(dir.join(STATUS_FILE)).unwrap(),
            "Started"
        );
        assert_eq!(
            fs::read_to_string(dir.join(ACTIVE_BRICKS_FILE)).unwrap(),
            "/b1\n/b2\n"
        );
    }

    #[test]
    fn rewrites_only_files_whose_content_changed() {
        let root = tempfile::tempdir().unwrap();
        sync_all(root.path(), &[state("gv0", "Started", &[])]).unwrap();
        let dir = root.path().join("gv0_geo@n4_sv");
        let conf_mtime = fs::metadata(dir.join(CONFIG_FILE))
            .unwrap()
            .modified()
            .unwrap();
        let conf_inode =
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(dir.join(CONFIG_FILE)).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
        sync_all(root.path(), &[state("gv0", "Paused", &["/b1"])]).unwrap();
        let meta = fs::metadata(dir.join(CONFIG_FILE)).unwrap();
        assert_eq!(meta.modified().unwrap(), conf_mtime);
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&meta), conf_inode);
        assert_eq!(fs::read_to_string(dir.join(STATUS_FILE)).unwrap(), "Paused");
        assert_eq!(
            fs::read_to_string(dir.join(ACTIVE_BRICKS_FILE)).unwrap(),
            "/b1\n"
        );
        // no temp files left behind
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn removes_only_directories_of_deleted_sessions() {
        let root = tempfile::tempdir().unwrap();
        sync_all(
            root.path(),
            &[state("gv0", "Started", &[]), state("gv9", "Stopped", &[])],
        )
        .unwrap();
        fs::write(
            root.path().join("gv9_geo@n4_sv").join("gv0%2Fb1.status"),
            "{}",
        )
        .unwrap();
        fs::create_dir(root.path().join("unrelated")).unwrap();
        fs::write(root.path().join("unrelated").join("x"), "keep").unwrap();
        fs::write(root.path().join("loose-file"), "keep").unwrap();
        // a deleted session whose monitor may still be stopping keeps its directory
        sync_all(
            root.path(),
            &[state("gv0", "Started", &[]), state("gv8", "Stopped", &[])],
        )
        .unwrap();
        fs::write(root.path().join("gv8_geo@n4_sv").join(PID_FILE), "{}").unwrap();
        let mut gone = view("gv9", false);
        gone.exists = false;
        let deleted = SessionDirState {
            view: gone,
            monitor_status: "Stopped".into(),
            active_local_bricks: vec![],
            datapath_plan: None,
            gsyncd: false,
        };
        sync_all(root.path(), &[state("gv0", "Started", &[]), deleted]).unwrap();
        assert!(root.path().join("gv0_geo@n4_sv").join(CONFIG_FILE).exists());
        assert!(!root.path().join("gv9_geo@n4_sv").exists());
        assert!(root.path().join("gv8_geo@n4_sv").join(PID_FILE).exists());
        assert!(root.path().join("unrelated").join("x").exists());
        assert!(root.path().join("loose-file").exists());
        fs::remove_file(root.path().join("gv8_geo@n4_sv").join(PID_FILE)).unwrap();
        sync_all(root.path(), &[]).unwrap();
        assert!(!root.path().join("gv8_geo@n4_sv").exists());
        assert!(!root.path().join("gv0_geo@n4_sv").exists());
        assert!(root.path().join("unrelated").exists());
    }

    #[test]
    fn control_characters_cannot_break_the_line_format() {
        let mut v = view("gv0", true);
        v.config
            .insert("log-level".into(), "INFO\nsync-jobs = 99".into());
        let conf = render_config(&v, Path::new("/d"), false);
        assert!(conf.contains("log-level = INFO sync-jobs = 99\n"), "{conf}");
        assert!(!conf.contains("\nsync-jobs = 99"), "{conf}");
    }

    #[test]
    fn push_pem_sessions_name_their_key_files_as_gluster_does() {
        let mut v = view("gv0", true);
        let dir = Path::new("/var/lib/georep/geo-replication/gv0_geo@n4_sv");
        assert!(!render_config(&v, dir, false).contains("ssh-options"));
        v.options.push_pem = true;
        let conf = render_config(&v, dir, false);
        assert!(
            conf.contains("ssh-options = -oPasswordAuthentication=no -oStrictHostKeyChecking=no -i /var/lib/georep/geo-replication/gv0_geo@n4_sv/secret.pem\n"),
            "{conf}"
        );
        assert!(conf.contains("ssh-options-tar = -oPasswordAuthentication=no -oStrictHostKeyChecking=no -i /var/lib/georep/geo-replication/gv0_geo@n4_sv/tar_ssh.pem\n"), "{conf}");
        // The session's own options come first, and the key is written once.
        v.config.insert("ssh-options".into(), "-p 2222".into());
        let conf = render_config(&v, dir, false);
        assert!(
            conf.contains("ssh-options = -p 2222 -i /var/lib/georep/geo-replication/gv0_geo@n4_sv/secret.pem\n"),
            "{conf}"
        );
        assert_eq!(conf.matches("ssh-options =").count(), 1, "{conf}");
    }

    #[test]
    fn the_gsyncd_profile_keeps_gsyncds_state_in_the_session_directory() {
        let mut v = view("gv0", true);
        let dir = Path::new("/d/gv0_n4_sv");
        assert!(!render_config(&v, dir, false).contains("pid-file"));
        let conf = render_config(&v, dir, true);
        for line in [
            "georep-session-working-dir = /d/gv0_n4_sv/\n",
            "state-file = /d/gv0_n4_sv/gsyncd-monitor.state\n",
            "pid-file = /d/gv0_n4_sv/gsyncd.pid\n",
            "remote-gsyncd = /usr/lib/x86_64-linux-gnu/glusterfs/gsyncd\n",
        ] {
            assert!(conf.contains(line), "{line} in {conf}");
        }
        v.config
            .insert("remote-gsyncd".into(), "/opt/gsyncd".into());
        v.config.insert("sync-method".into(), "tarssh".into());
        let conf = render_config(&v, dir, true);
        assert!(conf.contains("remote-gsyncd = /opt/gsyncd\n"), "{conf}");
        assert_eq!(conf.matches("remote-gsyncd").count(), 1, "{conf}");
        assert!(conf.contains("sync-method = tarssh\n"), "{conf}");
    }
}
