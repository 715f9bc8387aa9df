//! push-pem: SSH keys through the mesh.
//!
//! - `keygen`: a primary node's key pairs for a session, in its session directory.
//! - `authorized`: managed blocks in a secondary user's authorized_keys file.
//!
//! [`KeySync::sync`] runs on every reconcile pass: a node hosting bricks of a push-pem
//! session's primary volume makes sure its key pairs exist for the session's
//! incarnation and rotation and publishes the public halves ([`SessionKeys`]); a node
//! hosting bricks of its secondary volume writes one block per session holding the
//! current keys of every primary node, restricted to `from=` that node's addresses and
//! to this node's forced commands, removes the blocks of sessions that no longer
//! exist (it remembers which files it wrote in `<data-dir>/authorized-keys.list`), and
//! publishes what it installed ([`KeyInstall`]).

mod authorized;
mod keygen;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use georep_mesh::{
    KEY_INSTALL_PREFIX, KEYS_PREFIX, KeyInstall, Membership, MeshNode, SessionId, SessionKeys,
    SessionView, codec,
};

pub use authorized::KeyLine;
pub use keygen::{SECRET_PEM, TAR_PEM};

use crate::config::AgentConfig;

/// The file (in the data directory) listing the authorized_keys files this node wrote
/// blocks into, so blocks of sessions deleted while it was down are found and removed.
const WRITTEN_LIST: &str = "authorized-keys.list";

/// The chitchat key of a primary's session keys.
pub fn keys_key(id: &SessionId) -> String {
    format!("{KEYS_PREFIX}{}", id.key())
}

/// The chitchat key of a secondary's installation report.
pub fn install_key(id: &SessionId) -> String {
    format!("{KEY_INSTALL_PREFIX}{}", id.key())
}

/// A secondary user as this node resolves it.
struct Account {
    uid: u32,
    gid: u32,
    file: PathBuf,
}

/// The push-pem side of an agent (state kept between passes).
pub struct KeySync {
    data_dir: PathBuf,
    sessions_root: PathBuf,
    node_id: String,
    addresses: Vec<String>,
    authorized_keys: Option<PathBuf>,
    gsyncd_command: String,
    tar_command: String,
    /// Blocks last written per file (so an unchanged pass reads nothing but files).
    last: Mutex<BTreeMap<PathBuf, String>>,
}

impl KeySync {
    /// The key side of an agent with `config`, its sessions under `sessions_root`.
    pub fn new(config: &AgentConfig, sessions_root: &Path) -> Self {
        let ip = config.advertise.ip();
        let addresses = if ip.is_unspecified() {
            Vec::new()
        } else {
            vec![ip.to_string()]
        };
        Self {
            data_dir: config.data_dir.clone(),
            sessions_root: sessions_root.to_path_buf(),
            node_id: config.node_id.clone(),
            addresses,
            authorized_keys: config.authorized_keys.clone(),
            gsyncd_command: config.ssh_gsyncd_command.clone(),
            tar_command: config.ssh_tar_command.clone(),
            last: Mutex::new(BTreeMap::new()),
        }
    }

    /// One pass over the existing sessions `views` (see the module doc).
    pub async fn sync(&self, mesh: &MeshNode, views: &[&SessionView], membership: &Membership) {
        self.publish_own_keys(mesh, views, membership).await;
        self.install(mesh, views, membership).await;
    }

    fn hosts(&self, membership: &Membership, volume: &str) -> bool {
        membership.local().is_some_and(|me| me.hosts(volume))
    }

    async fn publish_own_keys(
        &self,
        mesh: &MeshNode,
        views: &[&SessionView],
        membership: &Membership,
    ) {
        let mut wanted = BTreeSet::new();
        for view in views {
            let Some(incarnation) = &view.incarnation else {
                continue;
            };
            if !view.options.push_pem || !self.hosts(membership, &view.id.primary_volume) {
                continue;
            }
            let key = keys_key(&view.id);
            wanted.insert(key.clone());
            let dir = self.sessions_root.join(view.id.dir_name());
            let comment = format!("georep:{}:{}", self.node_id, view.id.dir_name());
            let rotation = view.key_rotation.as_ref();
            // Milliseconds of work, once per session and rotation; read back after.
            let pairs = match keygen::ensure(&dir, &comment, incarnation, rotation) {
                Ok((pairs, generated)) => {
                    if generated {
                        tracing::info!(session = %view.id, fingerprint = %pairs.secret.fingerprint, "generated this node's session key pairs");
                    }
                    pairs
                }
                Err(error) => {
                    tracing::warn!(session = %view.id, dir = %dir.display(), %error, "cannot generate the session's key pairs");
                    continue;
                }
            };
            let record = SessionKeys {
                incarnation: incarnation.clone(),
                rotation: rotation.cloned(),
                secret: pairs.secret,
                tar: pairs.tar,
                addresses: self.addresses.clone(),
            };
            match codec::encode(&record) {
                Ok(value) => mesh.set_owned(&key, value).await,
                Err(error) => tracing::warn!(session = %view.id, %error, "cannot publish keys"),
            }
        }
        for key in mesh.own_values(KEYS_PREFIX).await.into_keys() {
            if !wanted.contains(&key) {
                mesh.delete_owned(&key).await;
            }
        }
    }

    fn account(&self, user: &str) -> Result<Account, String> {
        let found = nix::unistd::User::from_name(user)
            .map_err(|e| format!("cannot look up user {user}: {e}"))?
            .ok_or_else(|| format!("user {user} does not exist on this node"))?;
        let home = found.dir.display().to_string();
        let file = match &self.authorized_keys {
            Some(template) => {
                let expanded = template
                    .display()
                    .to_string()
                    .replace("%h", &home)
                    .replace("%u", user)
                    .replace("%%", "%");
                let path = PathBuf::from(expanded);
                if path.is_absolute() {
                    path
                } else {
                    found.dir.join(path)
                }
            }
            None => found.dir.join(".ssh/authorized_keys"),
        };
        Ok(Account {
            uid: found.uid.as_raw(),
            gid: found.gid.as_raw(),
            file,
        })
    }

    async fn install(&self, mesh: &MeshNode, views: &[&SessionView], membership: &Membership) {
        // Every node's keys: read (a walk over every namespace) only when some session
        // here needs them; every pass still removes what no session needs.
        let published = if views.iter().any(|v| v.options.push_pem) {
            mesh.owned_values(KEYS_PREFIX).await
        } else {
            BTreeMap::new()
        };
        // file -> (account, session key -> block)
        let mut files: BTreeMap<PathBuf, (u32, u32, BTreeMap<String, String>)> = BTreeMap::new();
        let mut reports: BTreeMap<String, KeyInstall> = BTreeMap::new();
        for view in views {
            let Some(incarnation) = &view.incarnation else {
                continue;
            };
            if !view.options.push_pem || !self.hosts(membership, &view.id.secondary_volume) {
                continue;
            }
            let session = view.id.key();
            let mut report = KeyInstall {
                incarnation: incarnation.clone(),
                rotation: view.key_rotation.clone(),
                user: view.id.secondary_user.clone(),
                file: String::new(),
                installed: Vec::new(),
                missing: BTreeMap::new(),
                error: None,
            };
            let account = match self.account(&view.id.secondary_user) {
                Ok(account) => account,
                Err(error) => {
                    report.error = Some(error);
                    reports.insert(install_key(&view.id), report);
                    continue;
                }
            };
            report.file = account.file.display().to_string();
            let mut lines = Vec::new();
            for primary in membership.hosts_of(&view.id.primary_volume) {
                let keys = published
                    .get(&primary.node_id)
                    .and_then(|values| values.get(&keys_key(&view.id)))
                    .map(|value| codec::decode::<SessionKeys>(value));
                let why = match keys {
                    None if !primary.live => {
                        "it is down and has not published keys for this session"
                    }
                    None => "it has not published keys for this session yet",
                    Some(Err(_)) => "its published keys cannot be decoded (another version?)",
                    Some(Ok(keys)) if keys.incarnation != *incarnation => {
                        "its keys are for another incarnation of the session"
                    }
                    Some(Ok(keys)) if keys.rotation != view.key_rotation => {
                        "its keys predate the latest rotation (it regenerates them when it learns of it)"
                    }
                    Some(Ok(keys)) if keys.addresses.is_empty() => {
                        "it advertises no address to restrict its keys to (from=)"
                    }
                    Some(Ok(keys)) => {
                        for (public, command) in [
                            (&keys.secret, &self.gsyncd_command),
                            (&keys.tar, &self.tar_command),
                        ] {
                            lines.push(KeyLine {
                                from: keys.addresses.clone(),
                                command: command.clone(),
                                key: public.openssh.clone(),
                            });
                        }
                        report.installed.push(primary.node_id.clone());
                        continue;
                    }
                };
                report
                    .missing
                    .insert(primary.node_id.clone(), why.to_string());
            }
            let block = authorized::render_block(&session, &lines);
            files
                .entry(account.file.clone())
                .or_insert_with(|| (account.uid, account.gid, BTreeMap::new()))
                .2
                .insert(session, block);
            reports.insert(install_key(&view.id), report);
        }
        let failed = self.write_files(&files);
        let reported: BTreeSet<String> = reports.keys().cloned().collect();
        for (key, mut report) in reports {
            if let Some(error) = failed.get(&PathBuf::from(&report.file)) {
                report.error = Some(error.clone());
                report.installed.clear();
            }
            match codec::encode(&report) {
                Ok(value) => mesh.set_owned(&key, value).await,
                Err(error) => tracing::warn!(%key, %error, "cannot publish the key report"),
            }
        }
        for key in mesh.own_values(KEY_INSTALL_PREFIX).await.into_keys() {
            if !reported.contains(&key) {
                mesh.delete_owned(&key).await;
            }
        }
    }

    /// Writes every file's blocks (and removes stale blocks from files written before);
    /// returns the files that could not be written, with why.
    fn write_files(
        &self,
        files: &BTreeMap<PathBuf, (u32, u32, BTreeMap<String, String>)>,
    ) -> BTreeMap<PathBuf, String> {
        let list = self.data_dir.join(WRITTEN_LIST);
        let mut known: BTreeSet<PathBuf> = std::fs::read_to_string(&list)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect();
        let before = known.clone();
        let mut failed = BTreeMap::new();
        let empty = BTreeMap::new();
        let paths: BTreeSet<PathBuf> = files.keys().chain(known.iter()).cloned().collect();
        let Ok(mut last) = self.last.lock() else {
            return failed;
        };
        for path in paths {
            let (uid, gid, wanted) = match files.get(&path) {
                Some((uid, gid, blocks)) => (*uid, *gid, blocks),
                None => (0, 0, &empty),
            };
            let current = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(error) => {
                    failed.insert(
                        path.clone(),
                        format!("cannot read {}: {error}", path.display()),
                    );
                    continue;
                }
            };
            // Blocks of sessions this node no longer installs into this file go.
            let next = authorized::splice(&current, wanted, |_| true);
            if next != current {
                let had = authorized::blocks(&current);
                for (session, block) in wanted {
                    match had.get(session) {
                        None => {
                            tracing::info!(file = %path.display(), %session, "installing the session's keys")
                        }
                        Some(old)
                            if old != block
                                && last.get(&path).is_some_and(|l| l.contains(old.as_str())) =>
                        {
                            tracing::info!(file = %path.display(), %session, "updating the session's keys")
                        }
                        Some(old) if old != block => {
                            tracing::warn!(file = %path.display(), %session, "the session's block was edited by hand; putting it back")
                        }
                        _ => {}
                    }
                }
                for session in had.keys().filter(|s| !wanted.contains_key(*s)) {
                    tracing::info!(file = %path.display(), %session, "removing the keys of a session this node no longer serves");
                }
                if next.is_empty() && current.is_empty() {
                    continue;
                }
                if let Err(error) = authorized::write(&path, &next, uid, gid) {
                    failed.insert(
                        path.clone(),
                        format!("cannot write {}: {error}", path.display()),
                    );
                    continue;
                }
            }
            last.insert(path.clone(), next.clone());
            if authorized::blocks(&next).is_empty() {
                known.remove(&path);
            } else {
                known.insert(path);
            }
        }
        if known != before {
            let text: String = known.iter().map(|p| format!("{}\n", p.display())).collect();
            if let Err(error) = georep_store::write_atomic(&list, text.as_bytes()) {
                tracing::warn!(file = %list.display(), %error, "cannot record the authorized_keys files written");
            }
        }
        failed
    }
}
