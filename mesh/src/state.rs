//! Replicated session state: per-session records of LWW registers, and validated operations.
//!
//! A [`SessionRecord`] is a join-semilattice: [`SessionRecord::join`] is pointwise
//! max of HLC-stamped registers (crdts [`LWWReg`] with [`Hlc`] markers, unique per
//! write), followed by pruning registers older than the current incarnation, so a
//! delete followed by a re-create never resurrects old configuration. Records in a
//! node's chitchat namespace are *partial* (only the registers that node wrote or
//! keeps alive); the converged record of a session is the join over all of them.

use std::collections::BTreeMap;
use std::fmt;

use crdts::{CvRDT, LWWReg};
use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::session_config::{self, ConfigKeyError};

/// A last-writer-wins register stamped with an HLC.
pub type Reg<V> = LWWReg<V, Hlc>;

/// Identity of a geo-replication session: `PRIMARYVOL` and `[USER@]HOST::SECONDARYVOL`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId {
    /// Primary volume name.
    pub primary_volume: String,
    /// User on the secondary side (default `root`).
    pub secondary_user: String,
    /// Secondary host as given by the user.
    pub secondary_host: String,
    /// Secondary volume name.
    pub secondary_volume: String,
}

/// Default secondary user, as in gluster.
pub const DEFAULT_SECONDARY_USER: &str = "root";

/// Gluster's rule for volume, user and host names: 1-128 letters, digits, `-`, `_`, `.`,
/// not starting with `-` (so that no name can reach a monitor's argv looking like an
/// option).
fn valid_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && !text.starts_with('-')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `valid_name` with the reason it fails, for configuration errors.
pub fn check_name(text: &str) -> Result<(), String> {
    if valid_name(text) {
        Ok(())
    } else {
        Err(NAME_RULE.to_owned())
    }
}

/// The rule `valid_name` enforces, in words.
pub const NAME_RULE: &str = "must be 1-128 letters, digits, '-', '_', '.', not starting with '-'";

/// A host is a name under `valid_name`'s rule or an IP literal.
fn valid_host(text: &str) -> bool {
    valid_name(text) || text.parse::<std::net::IpAddr>().is_ok()
}

/// How `_` inside a name is written in a session directory name (names never hold `%`).
const ESCAPED_UNDERSCORE: &str = "%5F";

impl SessionId {
    /// Parses `PRIMARYVOL` and `[USER@]HOST::SECONDARYVOL` as the CLI takes them.
    // StateError is matched field-by-field by agent/ and cli/; boxing would change its shape.
    #[allow(clippy::result_large_err)]
    pub fn parse(primary: &str, secondary: &str) -> Result<SessionId, StateError> {
        let bad = |reason: &str| StateError::BadSessionName {
            given: format!("{primary} {secondary}"),
            reason: reason.to_string(),
        };
        if !valid_name(primary) {
            return Err(bad(&format!("the primary volume name {NAME_RULE}")));
        }
        let (user_host, volume) = secondary
            .split_once("::")
            .ok_or_else(|| bad("the secondary must be written [USER@]HOST::VOLUME"))?;
        let (user, host) = match user_host.split_once('@') {
            Some((user, host)) => (user, host),
            None => (DEFAULT_SECONDARY_USER, user_host),
        };
        if !valid_name(user) {
            return Err(bad(&format!("the secondary user {NAME_RULE}")));
        }
        if !valid_host(host) {
            return Err(bad(
                "the secondary host must be a host name (letters, digits, '-', '_', '.', not starting with '-') or an IP address",
            ));
        }
        if !valid_name(volume) {
            return Err(bad(&format!("the secondary volume name {NAME_RULE}")));
        }
        Ok(SessionId {
            primary_volume: primary.to_string(),
            secondary_user: user.to_string(),
            secondary_host: host.to_string(),
            secondary_volume: volume.to_string(),
        })
    }

    /// The secondary as gluster writes it: `[USER@]HOST::VOL`, user shown when not root.
    pub fn secondary(&self) -> String {
        if self.secondary_user == DEFAULT_SECONDARY_USER {
            format!("{}::{}", self.secondary_host, self.secondary_volume)
        } else {
            format!(
                "{}@{}::{}",
                self.secondary_user, self.secondary_host, self.secondary_volume
            )
        }
    }

    /// The session directory name: gluster's `<primaryvol>_<secondaryhost>_<secondaryvol>`
    /// when that is unambiguous (user `root`, no `_` inside a name); otherwise each `_`
    /// inside a name is written `%5F` and a user other than root is written `USER@`
    /// before the host. Names never hold `%` or `@`, so splitting at the two remaining
    /// `_` recovers the session: the mapping is injective and two sessions never share
    /// a directory.
    pub fn dir_name(&self) -> String {
        let escape = |name: &str| name.replace('_', ESCAPED_UNDERSCORE);
        let host = if self.secondary_user == DEFAULT_SECONDARY_USER {
            escape(&self.secondary_host)
        } else {
            format!(
                "{}@{}",
                escape(&self.secondary_user),
                escape(&self.secondary_host)
            )
        };
        format!(
            "{}_{host}_{}",
            escape(&self.primary_volume),
            escape(&self.secondary_volume)
        )
    }

    /// Whether `other` replicates between the same two volumes: one session per
    /// (primary volume, secondary volume), whichever host or user reaches the secondary.
    pub fn same_volume_pair(&self, other: &SessionId) -> bool {
        self.primary_volume == other.primary_volume
            && self.secondary_volume == other.secondary_volume
    }

    /// Stable textual key used in chitchat keys: `PRIMARY:USER@HOST::SECONDARY`.
    pub fn key(&self) -> String {
        format!(
            "{}:{}@{}::{}",
            self.primary_volume, self.secondary_user, self.secondary_host, self.secondary_volume
        )
    }

    /// Parses [`SessionId::key`] back.
    pub fn from_key(key: &str) -> Option<SessionId> {
        let (primary, secondary) = key.split_once(':')?;
        let id = SessionId::parse(primary, secondary).ok()?;
        (id.key() == key).then_some(id)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.primary_volume, self.secondary())
    }
}

/// The run state an operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DesiredState {
    /// Created, never started (or re-created).
    Created,
    /// Monitors should run on every primary node.
    Started,
    /// Monitors should not run.
    Stopped,
    /// Monitors stay but are frozen (SIGSTOP).
    Paused,
}

impl DesiredState {
    /// Whether `running` (gluster's "started or paused") holds.
    pub fn is_running(self) -> bool {
        matches!(self, DesiredState::Started | DesiredState::Paused)
    }
}

impl fmt::Display for DesiredState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DesiredState::Created => "Created",
            DesiredState::Started => "Started",
            DesiredState::Stopped => "Stopped",
            DesiredState::Paused => "Paused",
        })
    }
}

/// Options fixed at creation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOptions {
    /// Whether primary public keys are installed on the secondary (gluster's push-pem).
    pub push_pem: bool,
    /// Whether the secondary checks were skipped at creation.
    pub forced: bool,
}

/// One register of a session record, by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RegisterName {
    /// The incarnation (`created`) register.
    Created,
    /// The `deleted` register.
    Deleted,
    /// The `desired` register.
    Desired,
    /// One configuration key.
    Config(String),
}

impl fmt::Display for RegisterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterName::Created => f.write_str("created"),
            RegisterName::Deleted => f.write_str("deleted"),
            RegisterName::Desired => f.write_str("desired"),
            RegisterName::Config(key) => write!(f, "config.{key}"),
        }
    }
}

/// The registers of one session (all of them, or the part one node carries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Which session.
    pub id: SessionId,
    /// Latest create: its stamp is the incarnation, its value the creation options.
    pub created: Option<Reg<SessionOptions>>,
    /// Latest delete stamp.
    pub deleted: Option<Hlc>,
    /// Desired run state.
    pub desired: Option<Reg<DesiredState>>,
    /// Configuration: key -> value (`None` = reset to default).
    pub config: BTreeMap<String, Reg<Option<String>>>,
}

fn join_reg<V: PartialEq + Clone>(mine: &mut Option<Reg<V>>, theirs: &Option<Reg<V>>) {
    match (mine.as_mut(), theirs) {
        (Some(mine), Some(theirs)) => mine.merge(theirs.clone()),
        (None, Some(theirs)) => *mine = Some(theirs.clone()),
        _ => {}
    }
}

impl SessionRecord {
    /// An empty record (no register set) for `id`.
    pub fn empty(id: SessionId) -> Self {
        Self {
            id,
            created: None,
            deleted: None,
            desired: None,
            config: BTreeMap::new(),
        }
    }

    /// The incarnation stamp (latest create), if any.
    pub fn incarnation(&self) -> Option<&Hlc> {
        self.created.as_ref().map(|reg| &reg.marker)
    }

    /// Whether the session exists: created after its latest delete.
    pub fn exists(&self) -> bool {
        match (self.incarnation(), &self.deleted) {
            (Some(created), Some(deleted)) => created > deleted,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// Joins `other` into `self` (pointwise max, then prune stale registers).
    ///
    /// Commutative, associative and idempotent (property-tested below).
    pub fn join(&mut self, other: &SessionRecord) {
        debug_assert_eq!(self.id, other.id);
        join_reg(&mut self.created, &other.created);
        if other.deleted > self.deleted {
            self.deleted.clone_from(&other.deleted);
        }
        join_reg(&mut self.desired, &other.desired);
        for (key, theirs) in &other.config {
            match self.config.get_mut(key) {
                Some(mine) => mine.merge(theirs.clone()),
                None => {
                    self.config.insert(key.clone(), theirs.clone());
                }
            }
        }
        self.prune();
    }

    /// The register below whose stamp `desired` and `config` registers can never matter
    /// again, and that stamp: the incarnation (they belong to an earlier one), or a
    /// later delete (the session can only exist again through a create stamped above
    /// the delete, which makes them older than its incarnation).
    pub fn floor(&self) -> Option<(RegisterName, &Hlc)> {
        match (self.incarnation(), &self.deleted) {
            (Some(created), Some(deleted)) if deleted > created => {
                Some((RegisterName::Deleted, deleted))
            }
            (Some(created), _) => Some((RegisterName::Created, created)),
            (None, Some(deleted)) => Some((RegisterName::Deleted, deleted)),
            (None, None) => None,
        }
    }

    /// Drops registers below the floor (see [`Self::floor`]): they can never win again.
    /// Every replica drops them, so replicas that merged different dominated registers
    /// (one node got a write the delete overtook, another never did, and the namespace
    /// carrying it was retired) still end up structurally equal, and a deleted session's
    /// record stays a few registers.
    fn prune(&mut self) {
        let Some((_, floor)) = self.floor() else {
            return;
        };
        let floor = floor.clone();
        if self.desired.as_ref().is_some_and(|reg| reg.marker < floor) {
            self.desired = None;
        }
        self.config.retain(|_, reg| reg.marker > floor);
    }

    /// Every register present, with its stamp.
    pub fn registers(&self) -> Vec<(RegisterName, Hlc)> {
        let mut out = Vec::new();
        if let Some(reg) = &self.created {
            out.push((RegisterName::Created, reg.marker.clone()));
        }
        if let Some(stamp) = &self.deleted {
            out.push((RegisterName::Deleted, stamp.clone()));
        }
        if let Some(reg) = &self.desired {
            out.push((RegisterName::Desired, reg.marker.clone()));
        }
        for (key, reg) in &self.config {
            out.push((RegisterName::Config(key.clone()), reg.marker.clone()));
        }
        out
    }

    /// The stamp of one register, if present.
    pub fn stamp_of(&self, name: &RegisterName) -> Option<&Hlc> {
        match name {
            RegisterName::Created => self.created.as_ref().map(|r| &r.marker),
            RegisterName::Deleted => self.deleted.as_ref(),
            RegisterName::Desired => self.desired.as_ref().map(|r| &r.marker),
            RegisterName::Config(key) => self.config.get(key).map(|r| &r.marker),
        }
    }

    /// Whether this record carries `name` at `stamp` or newer.
    pub fn carries(&self, name: &RegisterName, stamp: &Hlc) -> bool {
        self.stamp_of(name).is_some_and(|mine| mine >= stamp)
    }

    /// A record holding only the named registers of `self`.
    pub fn extract(&self, names: &[RegisterName]) -> SessionRecord {
        let mut out = SessionRecord::empty(self.id.clone());
        for name in names {
            match name {
                RegisterName::Created => out.created.clone_from(&self.created),
                RegisterName::Deleted => out.deleted.clone_from(&self.deleted),
                RegisterName::Desired => out.desired.clone_from(&self.desired),
                RegisterName::Config(key) => {
                    if let Some(reg) = self.config.get(key) {
                        out.config.insert(key.clone(), reg.clone());
                    }
                }
            }
        }
        out
    }

    /// The greatest stamp in the record.
    pub fn max_stamp(&self) -> Option<Hlc> {
        self.registers().into_iter().map(|(_, stamp)| stamp).max()
    }

    /// The effective view of this (converged) record.
    pub fn view(&self) -> SessionView {
        let exists = self.exists();
        let desired = self
            .desired
            .as_ref()
            .map(|reg| reg.val)
            .unwrap_or(DesiredState::Created);
        let config = self
            .config
            .iter()
            .filter_map(|(key, reg)| reg.val.clone().map(|value| (key.clone(), value)))
            .collect();
        SessionView {
            id: self.id.clone(),
            exists,
            incarnation: self.incarnation().cloned(),
            deleted: self.deleted.clone(),
            desired,
            desired_stamp: self.desired.as_ref().map(|reg| reg.marker.clone()),
            options: self
                .created
                .as_ref()
                .map(|reg| reg.val.clone())
                .unwrap_or_default(),
            config,
        }
    }
}

/// What a converged record means: the state every node acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// Which session.
    pub id: SessionId,
    /// Whether it exists (created after its latest delete).
    pub exists: bool,
    /// Stamp of the latest create.
    pub incarnation: Option<Hlc>,
    /// Stamp of the latest delete.
    pub deleted: Option<Hlc>,
    /// Desired run state (Created when never set in this incarnation).
    pub desired: DesiredState,
    /// Stamp of the desired state's register, if set in this incarnation.
    pub desired_stamp: Option<Hlc>,
    /// Creation options.
    pub options: SessionOptions,
    /// Keys explicitly set in this incarnation (canonical name -> value).
    pub config: BTreeMap<String, String>,
}

impl SessionView {
    /// The effective value of every known key: (name, value, default, whether set).
    pub fn effective_config(&self) -> Vec<(&'static str, String, &'static str, bool)> {
        session_config::CONFIG_KEYS
            .iter()
            .map(|key| match self.config.get(key.name) {
                Some(value) => (key.name, value.clone(), key.default, true),
                None => (key.name, key.default.to_string(), key.default, false),
            })
            .collect()
    }

    /// The effective value of one key.
    pub fn config_value(&self, key: &str) -> Option<String> {
        let key = session_config::lookup(key).ok()?;
        Some(
            self.config
                .get(key.name)
                .cloned()
                .unwrap_or_else(|| key.default.to_string()),
        )
    }

    /// The stamp a monitor must restart for: the latest stamp among restart-requiring
    /// config keys and the incarnation (live keys excluded).
    pub fn restart_stamp(&self, record: &SessionRecord) -> Option<Hlc> {
        let mut stamp = self.incarnation.clone();
        for (key, reg) in &record.config {
            let live = session_config::lookup(key).is_ok_and(|k| k.live);
            if !live && Some(&reg.marker) > stamp.as_ref() {
                stamp = Some(reg.marker.clone());
            }
        }
        stamp
    }
}

/// The converged replica: every session this node knows of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// Records by session.
    pub sessions: BTreeMap<SessionId, SessionRecord>,
}

impl Replica {
    /// Joins one record in.
    pub fn join_record(&mut self, record: &SessionRecord) {
        match self.sessions.get_mut(&record.id) {
            Some(mine) => mine.join(record),
            None => {
                let mut fresh = SessionRecord::empty(record.id.clone());
                fresh.join(record);
                self.sessions.insert(record.id.clone(), fresh);
            }
        }
    }

    /// Joins a whole replica in.
    pub fn join(&mut self, other: &Replica) {
        for record in other.sessions.values() {
            self.join_record(record);
        }
    }

    /// The view of one session, if known at all.
    pub fn view(&self, id: &SessionId) -> Option<SessionView> {
        self.sessions.get(id).map(SessionRecord::view)
    }

    /// Existing sessions that lose to another existing session between the same two
    /// volumes, each with the session it loses to. `create` refuses a second session
    /// per volume pair, but two sides of a partition can each create one; after the
    /// heal every node agrees, from the replica alone, that the session created first
    /// (the lowest incarnation stamp; stamps are unique) stays, and the others run no
    /// monitor until they are deleted.
    pub fn superseded(&self) -> BTreeMap<SessionId, SessionId> {
        let mut first: BTreeMap<(&str, &str), (&Hlc, &SessionId)> = BTreeMap::new();
        let existing: Vec<(&SessionId, &Hlc)> = self
            .sessions
            .iter()
            .filter(|(_, record)| record.exists())
            .filter_map(|(id, record)| Some((id, record.incarnation()?)))
            .collect();
        for &(id, stamp) in &existing {
            let pair = (id.primary_volume.as_str(), id.secondary_volume.as_str());
            let winner = first.entry(pair).or_insert((stamp, id));
            if stamp < winner.0 {
                *winner = (stamp, id);
            }
        }
        existing
            .into_iter()
            .filter_map(|(id, _)| {
                let (_, winner) =
                    first[&(id.primary_volume.as_str(), id.secondary_volume.as_str())];
                (winner != id).then(|| (id.clone(), winner.clone()))
            })
            .collect()
    }

    /// Views of the sessions that exist.
    pub fn existing(&self) -> impl Iterator<Item = SessionView> + '_ {
        self.sessions
            .values()
            .map(SessionRecord::view)
            .filter(|view| view.exists)
    }

    /// The greatest stamp anywhere in the replica (to seed the HLC after a restart).
    pub fn max_stamp(&self) -> Option<Hlc> {
        self.sessions
            .values()
            .filter_map(SessionRecord::max_stamp)
            .max()
    }
}

/// A command on a session, as a user issues it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionOp {
    /// `create` (`force` skips the secondary checks, never the duplicate check).
    Create {
        /// Creation options.
        options: SessionOptions,
        /// `--force`.
        force: bool,
    },
    /// `start`.
    Start {
        /// `--force`.
        force: bool,
    },
    /// `stop`.
    Stop {
        /// `--force`.
        force: bool,
    },
    /// `pause`.
    Pause {
        /// `--force`.
        force: bool,
    },
    /// `resume`.
    Resume {
        /// `--force`.
        force: bool,
    },
    /// `config KEY VALUE`.
    SetConfig {
        /// Key, any spelling.
        key: String,
        /// Value as given.
        value: String,
    },
    /// `config --reset KEY` / `config '!KEY'`.
    ResetConfig {
        /// Key, any spelling.
        key: String,
    },
    /// `delete`.
    Delete {
        /// `--force`.
        force: bool,
    },
}

impl SessionOp {
    /// The command's name as the CLI spells it.
    pub fn name(&self) -> &'static str {
        match self {
            SessionOp::Create { .. } => "create",
            SessionOp::Start { .. } => "start",
            SessionOp::Stop { .. } => "stop",
            SessionOp::Pause { .. } => "pause",
            SessionOp::Resume { .. } => "resume",
            SessionOp::SetConfig { .. } | SessionOp::ResetConfig { .. } => "config",
            SessionOp::Delete { .. } => "delete",
        }
    }

    /// The desired state the op leads to, if it changes the run state.
    pub fn target_state(&self) -> Option<DesiredState> {
        match self {
            SessionOp::Start { .. } | SessionOp::Resume { .. } => Some(DesiredState::Started),
            SessionOp::Stop { .. } => Some(DesiredState::Stopped),
            SessionOp::Pause { .. } => Some(DesiredState::Paused),
            _ => None,
        }
    }
}

/// What the validator needs to know about volumes (answered from the membership view).
pub trait VolumeDirectory {
    /// Whether any node (live or not) declares bricks of `volume`.
    fn has_bricks(&self, volume: &str) -> bool;
    /// Whether a live node hosts `volume`.
    fn hosted_by_live_node(&self, volume: &str) -> bool;
}

/// Why an operation was refused. Refusals do not change any state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The session name could not be parsed.
    #[error("invalid session `{given}`: {reason}")]
    BadSessionName {
        /// What was given.
        given: String,
        /// What is wrong.
        reason: String,
    },
    /// No such session.
    #[error("Session {0} has not been created. Please create session and retry.")]
    NotCreated(SessionId),
    /// Create of an existing session.
    #[error("Session {0} already exists. Delete it first to create it again.")]
    AlreadyExists(SessionId),
    /// Create of a session between two volumes another session already replicates
    /// between (through another secondary host or user).
    #[error(
        "Session between {} and {}::{} is already created: {existing}. One session per pair of volumes; delete that one first to reach the secondary another way.",
        session.primary_volume,
        session.secondary_host,
        session.secondary_volume
    )]
    SameVolumes {
        /// The session asked for.
        session: SessionId,
        /// The session that exists.
        existing: SessionId,
    },
    /// Create with a primary volume nobody declares.
    #[error(
        "Cannot create session {session}: primary volume {volume} has no bricks on any node. Declare its bricks with --brick on the nodes that host it."
    )]
    PrimaryVolumeUnknown {
        /// Session.
        session: SessionId,
        /// The primary volume.
        volume: String,
    },
    /// Create with a secondary volume no live node hosts.
    #[error(
        "Cannot create session {session}: secondary volume {volume} is not hosted by any live node. Check the secondary agents, or use --force."
    )]
    SecondaryNotHosted {
        /// Session.
        session: SessionId,
        /// The secondary volume.
        volume: String,
    },
    /// The desired state does not allow the operation.
    #[error("Session {session}: {reason}")]
    WrongState {
        /// Session.
        session: SessionId,
        /// Current desired state.
        current: DesiredState,
        /// Sentence explaining the refusal and what to do.
        reason: String,
    },
    /// Bad config key or value.
    #[error("Session {session}: {error}")]
    Config {
        /// Session.
        session: SessionId,
        /// Key or value error.
        error: ConfigKeyError,
    },
}

/// Validates `op` on `id` against the local converged view and returns the registers to
/// write, all stamped `stamp`. `now_secs` resolves `checkpoint now`.
// StateError is matched field-by-field by agent/ and cli/; boxing would change its shape.
#[allow(clippy::result_large_err)]
pub fn plan(
    replica: &Replica,
    volumes: &dyn VolumeDirectory,
    id: &SessionId,
    op: &SessionOp,
    stamp: Hlc,
    now_secs: u64,
) -> Result<SessionRecord, StateError> {
    let view = replica.view(id).filter(|v| v.exists);
    let mut delta = SessionRecord::empty(id.clone());
    let wrong = |current: DesiredState, reason: String| StateError::WrongState {
        session: id.clone(),
        current,
        reason,
    };
    let Some(view) = view else {
        let SessionOp::Create { options, force } = op else {
            return Err(StateError::NotCreated(id.clone()));
        };
        if let Some(existing) = replica
            .existing()
            .find(|other| other.id != *id && other.id.same_volume_pair(id))
        {
            return Err(StateError::SameVolumes {
                session: id.clone(),
                existing: existing.id,
            });
        }
        if !volumes.has_bricks(&id.primary_volume) {
            return Err(StateError::PrimaryVolumeUnknown {
                session: id.clone(),
                volume: id.primary_volume.clone(),
            });
        }
        if !force && !volumes.hosted_by_live_node(&id.secondary_volume) {
            return Err(StateError::SecondaryNotHosted {
                session: id.clone(),
                volume: id.secondary_volume.clone(),
            });
        }
        let options = SessionOptions {
            forced: *force,
            ..options.clone()
        };
        delta.created = Some(LWWReg {
            val: options,
            marker: stamp,
        });
        return Ok(delta);
    };
    let current = view.desired;
    let set_desired = |delta: &mut SessionRecord, state: DesiredState| {
        delta.desired = Some(LWWReg {
            val: state,
            marker: stamp.clone(),
        });
    };
    if matches!(op, SessionOp::Start { .. } | SessionOp::Resume { .. })
        && let Some(winner) = replica.superseded().get(id)
    {
        return Err(wrong(
            current,
            format!(
                "{winner} replicates the same volumes and was created first, so this session cannot run. Delete one of them."
            ),
        ));
    }
    match op {
        SessionOp::Create { .. } => return Err(StateError::AlreadyExists(id.clone())),
        SessionOp::Start { force } => {
            if current.is_running() && !force {
                return Err(wrong(
                    current,
                    format!(
                        "geo-replication session is already {current}. Use --force to start it anyway."
                    ),
                ));
            }
            set_desired(&mut delta, DesiredState::Started);
        }
        SessionOp::Stop { force } => {
            if !current.is_running() && !force {
                return Err(wrong(
                    current,
                    format!(
                        "geo-replication session is not running (it is {current}). Use --force to stop it anyway."
                    ),
                ));
            }
            set_desired(&mut delta, DesiredState::Stopped);
        }
        SessionOp::Pause { force } => {
            if current != DesiredState::Started && !force {
                return Err(wrong(
                    current,
                    format!(
                        "geo-replication session is {current}; only a Started session can be paused."
                    ),
                ));
            }
            set_desired(&mut delta, DesiredState::Paused);
        }
        SessionOp::Resume { force } => {
            if current != DesiredState::Paused && !force {
                return Err(wrong(
                    current,
                    format!(
                        "geo-replication session is {current}; only a Paused session can be resumed."
                    ),
                ));
            }
            set_desired(&mut delta, DesiredState::Started);
        }
        SessionOp::SetConfig { key, value } => {
            let config_error = |error| StateError::Config {
                session: id.clone(),
                error,
            };
            let key = session_config::lookup(key).map_err(config_error)?;
            let value = session_config::normalise(key, value, now_secs).map_err(config_error)?;
            delta.config.insert(
                key.name.to_string(),
                reassert_or(replica, id, key.name, Some(value), stamp),
            );
        }
        SessionOp::ResetConfig { key } => {
            let key = session_config::lookup(key).map_err(|error| StateError::Config {
                session: id.clone(),
                error,
            })?;
            delta.config.insert(
                key.name.to_string(),
                reassert_or(replica, id, key.name, None, stamp),
            );
        }
        SessionOp::Delete { force } => {
            if current.is_running() && !force {
                return Err(wrong(
                    current,
                    format!(
                        "geo-replication session is {current}. Please stop the session and retry, or use --force."
                    ),
                ));
            }
            delta.deleted = Some(stamp);
        }
    }
    Ok(delta)
}

/// The register that sets `key` to `value`: the current one when it already holds that
/// value (so the write changes no stamp and restarts no monitor), else a new one
/// stamped `stamp`.
fn reassert_or(
    replica: &Replica,
    id: &SessionId,
    key: &str,
    value: Option<String>,
    stamp: Hlc,
) -> Reg<Option<String>> {
    match replica.sessions.get(id).and_then(|r| r.config.get(key)) {
        Some(current) if current.val == value => current.clone(),
        _ => LWWReg {
            val: value,
            marker: stamp,
        },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    struct Volumes {
        bricks: Vec<&'static str>,
        live: Vec<&'static str>,
    }

    impl VolumeDirectory for Volumes {
        fn has_bricks(&self, volume: &str) -> bool {
            self.bricks.contains(&volume)
        }
        fn hosted_by_live_node(&self, volume: &str) -> bool {
            self.live.contains(&volume)
        }
    }

    fn volumes() -> Volumes {
        Volumes {
            bricks: vec!["gv0", "gv1"],
            live: vec!["gv0", "gv1"],
        }
    }

    fn sid() -> SessionId {
        SessionId::parse("gv0", "n4::gv1").unwrap()
    }

    #[allow(clippy::result_large_err)] // mirrors `plan`'s error type
    fn apply(replica: &mut Replica, op: SessionOp, stamp: Hlc) -> Result<(), StateError> {
        let delta = plan(replica, &volumes(), &sid(), &op, stamp, 0)?;
        replica.join_record(&delta);
        Ok(())
    }

    #[test]
    fn session_id_parses_gluster_forms() {
        let id = SessionId::parse("gv0", "geo@n4::gv1").unwrap();
        assert_eq!(id.secondary_user, "geo");
        assert_eq!(id.secondary(), "geo@n4::gv1");
        assert_eq!(id.to_string(), "gv0 -> geo@n4::gv1");
        assert_eq!(sid().secondary_user, "root");
        assert_eq!(sid().dir_name(), "gv0_n4_gv1");
        assert_eq!(SessionId::from_key(&id.key()), Some(id));
        assert!(SessionId::parse("gv0", "n4:gv1").is_err());
        assert!(SessionId::parse("g v0", "n4::gv1").is_err());
        assert!(SessionId::parse("gv0", "n4::").is_err());
        for (primary, secondary) in [
            ("-rf", "n4::gv1"),
            ("gv0", "-oProxyCommand::gv1"),
            ("gv0", "n4::-e"),
            ("gv0", "-u@n4::gv1"),
        ] {
            let error = SessionId::parse(primary, secondary).unwrap_err();
            assert!(
                error.to_string().contains("not starting with '-'"),
                "{primary} {secondary}: {error}"
            );
        }
        assert!(SessionId::parse("gv0", "10.0.0.4::gv1").is_ok());
    }

    #[test]
    fn directory_names_keep_gluster_shape_and_never_collide() {
        let dir = |p: &str, s: &str| SessionId::parse(p, s).unwrap().dir_name();
        assert_eq!(dir("gv0", "n4::gv1"), "gv0_n4_gv1");
        assert_eq!(dir("gv0", "geoaccount@n4::gv1"), "gv0_geoaccount@n4_gv1");
        assert_eq!(dir("gv0", "n4_gv1::x"), "gv0_n4%5Fgv1_x");
        assert_eq!(dir("gv0", "n4::gv1_x"), "gv0_n4_gv1%5Fx");
        let names = ["a", "b", "a_b", "_", "a.b", "b_", "ab"];
        let mut seen = std::collections::BTreeMap::new();
        for p in names {
            for u in ["root", "a", "a_b"] {
                for h in names {
                    for v in names {
                        let id = SessionId::parse(p, &format!("{u}@{h}::{v}")).unwrap();
                        if let Some(other) = seen.insert(id.dir_name(), id.clone()) {
                            panic!("{id} and {other} share {}", id.dir_name());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn one_session_per_volume_pair_and_same_value_writes_change_no_stamp() {
        let mut replica = Replica::default();
        let t = |n| Hlc::new(n, 0, "a");
        let create = SessionOp::Create {
            options: SessionOptions::default(),
            force: true,
        };
        apply(&mut replica, create.clone(), t(1)).unwrap();
        for other in ["n3::gv1", "geo@n4::gv1"] {
            let other = SessionId::parse("gv0", other).unwrap();
            let error = plan(&replica, &volumes(), &other, &create, t(2), 0).unwrap_err();
            assert_eq!(
                error,
                StateError::SameVolumes {
                    session: other.clone(),
                    existing: sid()
                }
            );
            assert!(error.to_string().contains("gv0 -> n4::gv1"), "{error}");
        }
        let elsewhere = SessionId::parse("gv0", "n4::gv2").unwrap();
        assert!(plan(&replica, &volumes(), &elsewhere, &create, t(2), 0).is_ok());

        let set = |value: &str| SessionOp::SetConfig {
            key: "sync_jobs".into(),
            value: value.into(),
        };
        let restart = |replica: &Replica| {
            let record = &replica.sessions[&sid()];
            record.view().restart_stamp(record)
        };
        apply(&mut replica, set("5"), t(3)).unwrap();
        assert_eq!(restart(&replica), Some(t(3)));
        apply(&mut replica, set(" 5"), t(4)).unwrap();
        assert_eq!(restart(&replica), Some(t(3)), "same value: no restart");
        apply(&mut replica, set("6"), t(5)).unwrap();
        assert_eq!(restart(&replica), Some(t(5)));
        let reset = SessionOp::ResetConfig {
            key: "sync-jobs".into(),
        };
        apply(&mut replica, reset.clone(), t(6)).unwrap();
        apply(&mut replica, reset, t(7)).unwrap();
        assert_eq!(restart(&replica), Some(t(6)), "reset twice: one restart");
    }

    #[test]
    fn concurrent_creates_of_one_volume_pair_resolve_to_the_first_everywhere() {
        let t = |n| Hlc::new(n, 0, "a");
        let create = |id: &SessionId, stamp: Hlc| {
            let mut record = SessionRecord::empty(id.clone());
            record.created = Some(LWWReg {
                val: SessionOptions::default(),
                marker: stamp,
            });
            record
        };
        let a = SessionId::parse("gv0", "n4::gv1").unwrap();
        let b = SessionId::parse("gv0", "geo@n3::gv1").unwrap();
        let other = SessionId::parse("gv0", "n4::gv2").unwrap();
        // the two sides of a partition, joined in either order
        let mut left = Replica::default();
        left.join_record(&create(&b, t(5)));
        left.join_record(&create(&other, t(9)));
        let mut right = Replica::default();
        right.join_record(&create(&a, t(3)));
        let mut healed_lr = left.clone();
        healed_lr.join_record(&right.sessions[&a]);
        let mut healed_rl = right.clone();
        for record in left.sessions.values() {
            healed_rl.join_record(record);
        }
        let expected: BTreeMap<_, _> = [(b.clone(), a.clone())].into();
        assert_eq!(healed_lr.superseded(), expected);
        assert_eq!(healed_rl.superseded(), expected);
        assert!(left.superseded().is_empty() && right.superseded().is_empty());
        // deleting the winner lets the other run
        let mut deleted = SessionRecord::empty(a.clone());
        deleted.deleted = Some(t(10));
        healed_lr.join_record(&deleted);
        assert!(healed_lr.superseded().is_empty());
    }

    #[test]
    fn lifecycle_validation_follows_cli_contract() {
        let mut replica = Replica::default();
        let t = |n| Hlc::new(n, 0, "a");
        assert_eq!(
            apply(&mut replica, SessionOp::Start { force: false }, t(1)),
            Err(StateError::NotCreated(sid()))
        );
        let missing = Volumes {
            bricks: vec![],
            live: vec![],
        };
        let create = SessionOp::Create {
            options: SessionOptions::default(),
            force: true,
        };
        assert!(matches!(
            plan(&replica, &missing, &sid(), &create, t(1), 0),
            Err(StateError::PrimaryVolumeUnknown { .. })
        ));
        let no_secondary = Volumes {
            bricks: vec!["gv0"],
            live: vec![],
        };
        let strict = SessionOp::Create {
            options: SessionOptions::default(),
            force: false,
        };
        assert!(matches!(
            plan(&replica, &no_secondary, &sid(), &strict, t(1), 0),
            Err(StateError::SecondaryNotHosted { .. })
        ));
        assert!(plan(&replica, &no_secondary, &sid(), &create, t(1), 0).is_ok());
        apply(&mut replica, strict.clone(), t(2)).unwrap();
        assert_eq!(
            apply(&mut replica, create, t(3)),
            Err(StateError::AlreadyExists(sid()))
        );
        assert!(apply(&mut replica, SessionOp::Stop { force: false }, t(3)).is_err());
        assert!(apply(&mut replica, SessionOp::Pause { force: false }, t(3)).is_err());
        apply(&mut replica, SessionOp::Start { force: false }, t(4)).unwrap();
        let err = apply(&mut replica, SessionOp::Start { force: false }, t(5)).unwrap_err();
        assert!(err.to_string().contains("gv0 -> n4::gv1"), "{err}");
        apply(&mut replica, SessionOp::Start { force: true }, t(5)).unwrap();
        let err = apply(&mut replica, SessionOp::Delete { force: false }, t(6)).unwrap_err();
        assert!(err.to_string().contains("Please stop the session"), "{err}");
        apply(&mut replica, SessionOp::Pause { force: false }, t(6)).unwrap();
        assert!(apply(&mut replica, SessionOp::Pause { force: false }, t(7)).is_err());
        apply(&mut replica, SessionOp::Resume { force: false }, t(7)).unwrap();
        assert_eq!(replica.view(&sid()).unwrap().desired, DesiredState::Started);
        apply(&mut replica, SessionOp::Stop { force: false }, t(8)).unwrap();
        apply(&mut replica, SessionOp::Delete { force: false }, t(9)).unwrap();
        assert!(!replica.view(&sid()).unwrap().exists);
    }

    #[test]
    fn config_set_validates_and_normalises() {
        let mut replica = Replica::default();
        let t = |n| Hlc::new(n, 0, "a");
        apply(
            &mut replica,
            SessionOp::Create {
                options: SessionOptions::default(),
                force: false,
            },
            t(1),
        )
        .unwrap();
        let set = |key: &str, value: &str| SessionOp::SetConfig {
            key: key.into(),
            value: value.into(),
        };
        apply(&mut replica, set("sync_jobs", "8"), t(2)).unwrap();
        let err = apply(&mut replica, set("bogus", "1"), t(3)).unwrap_err();
        assert!(err.to_string().contains("valid keys"), "{err}");
        let err = apply(&mut replica, set("sync-jobs", "0"), t(3)).unwrap_err();
        assert!(err.to_string().contains("from 1 to 100"), "{err}");
        let view = replica.view(&sid()).unwrap();
        assert_eq!(view.config_value("sync-jobs").as_deref(), Some("8"));
        apply(
            &mut replica,
            SessionOp::ResetConfig {
                key: "sync-jobs".into(),
            },
            t(4),
        )
        .unwrap();
        let view = replica.view(&sid()).unwrap();
        assert_eq!(view.config_value("sync-jobs").as_deref(), Some("3"));
        assert!(view.config.is_empty());
    }

    // ---- lattice laws on random histories ----

    const NODES: [&str; 3] = ["a", "b", "c"];

    // Markers must be unique per value (they are in real life: one stamp, one write), so
    // the value is derived from the marker.
    fn arb_record() -> impl Strategy<Value = SessionRecord> {
        let stamp = (0u64..20, 0u32..3, 0usize..3)
            .prop_map(|(millis, counter, node)| Hlc::new(millis, counter, NODES[node]));
        (
            proptest::option::of(stamp.clone()),
            proptest::option::of(stamp.clone()),
            proptest::option::of(stamp.clone()),
            proptest::collection::btree_map(0usize..3, stamp, 0..3),
        )
            .prop_map(|(created, deleted, desired, config)| {
                let states = [
                    DesiredState::Created,
                    DesiredState::Started,
                    DesiredState::Stopped,
                    DesiredState::Paused,
                ];
                let mut record = SessionRecord::empty(sid());
                record.created = created.map(|marker| LWWReg {
                    val: SessionOptions {
                        push_pem: marker.millis % 2 == 0,
                        forced: marker.counter == 1,
                    },
                    marker,
                });
                record.deleted = deleted;
                record.desired = desired.map(|marker| LWWReg {
                    val: states[(marker.millis as usize + marker.counter as usize) % 4],
                    marker,
                });
                for (key, marker) in config {
                    let name = ["sync-jobs", "log-level", "checkpoint"][key].to_string();
                    let val = (marker.millis % 3 != 0).then(|| marker.to_string());
                    record.config.insert(name, LWWReg { val, marker });
                }
                record.prune();
                record
            })
    }

    fn joined(a: &SessionRecord, b: &SessionRecord) -> SessionRecord {
        let mut out = a.clone();
        out.join(b);
        out
    }

    proptest! {
        #[test]
        fn join_is_commutative(a in arb_record(), b in arb_record()) {
            prop_assert_eq!(joined(&a, &b), joined(&b, &a));
        }

        #[test]
        fn join_is_associative(a in arb_record(), b in arb_record(), c in arb_record()) {
            prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
        }

        /// What a delete (or a later incarnation) dominates is gone after any join, so a
        /// node that never received such a register holds the same record.
        #[test]
        fn dominated_registers_make_no_difference(a in arb_record(), b in arb_record(), drop in 0usize..4) {
            let full = joined(&a, &b);
            if let Some((_, floor)) = full.floor() {
                prop_assert!(full.desired.as_ref().is_none_or(|r| r.marker >= *floor));
                prop_assert!(full.config.values().all(|r| r.marker > *floor));
                let mut missing = a.clone();
                let dominated = |marker: &Hlc| marker < floor;
                if drop == 3 {
                    if missing.desired.as_ref().is_some_and(|r| dominated(&r.marker)) {
                        missing.desired = None;
                    }
                } else if let Some(key) = missing.config.keys().nth(drop).cloned()
                    && missing.config.get(&key).is_some_and(|r| dominated(&r.marker))
                {
                    missing.config.remove(&key);
                }
                prop_assert_eq!(joined(&missing, &b), full);
            }
        }

        #[test]
        fn join_is_idempotent(a in arb_record(), b in arb_record()) {
            prop_assert_eq!(joined(&a, &a), a.clone());
            let ab = joined(&a, &b);
            prop_assert_eq!(joined(&ab, &b), ab);
        }

        /// Random histories of operations issued on several nodes, each node applying its
        /// own ops locally and exchanging deltas in arbitrary order with duplicates,
        /// converge to one state.
        #[test]
        fn random_histories_converge(
            ops in proptest::collection::vec((0usize..3, 0u8..9, 0u8..4), 1..40),
            deliveries in proptest::collection::vec((0usize..3, 0usize..200), 0..200),
        ) {
            let mut replicas = vec![Replica::default(); 3];
            let mut clocks = [0u64; 3];
            let mut deltas: Vec<SessionRecord> = Vec::new();
            let vols = volumes();
            for (i, (node, op, arg)) in ops.iter().enumerate() {
                clocks[*node] += 1 + (i as u64 % 3);
                let stamp = Hlc::new(clocks[*node], 0, NODES[*node]);
                let op = match op {
                    0 => SessionOp::Create { options: SessionOptions::default(), force: true },
                    1 => SessionOp::Start { force: *arg == 0 },
                    2 => SessionOp::Stop { force: *arg == 0 },
                    3 => SessionOp::Pause { force: *arg == 0 },
                    4 => SessionOp::Resume { force: *arg == 0 },
                    5 => SessionOp::SetConfig { key: "sync-jobs".into(), value: (arg + 1).to_string() },
                    6 => SessionOp::ResetConfig { key: "sync-jobs".into() },
                    7 => SessionOp::SetConfig { key: "log-level".into(), value: "DEBUG".into() },
                    _ => SessionOp::Delete { force: *arg < 2 },
                };
                if let Ok(delta) = plan(&replicas[*node], &vols, &sid(), &op, stamp, 0) {
                    replicas[*node].join_record(&delta);
                    deltas.push(delta);
                }
                // some arbitrary deliveries interleaved with the ops
                for (to, which) in deliveries.iter().skip(i * 5).take(5) {
                    if !deltas.is_empty() {
                        let delta = &deltas[which % deltas.len()];
                        replicas[*to].join_record(delta);
                    }
                }
            }
            // anti-entropy: everything reaches everyone, in a different order per node
            for (n, replica) in replicas.iter_mut().enumerate() {
                let mut order: Vec<&SessionRecord> = deltas.iter().collect();
                if n % 2 == 1 { order.reverse(); }
                for delta in order { replica.join_record(delta); }
            }
            prop_assert_eq!(&replicas[0], &replicas[1]);
            prop_assert_eq!(&replicas[1], &replicas[2]);
        }
    }

    #[test]
    fn delete_then_recreate_never_resurrects_old_config() {
        let t = |n| Hlc::new(n, 0, "a");
        let mut a = Replica::default();
        apply(
            &mut a,
            SessionOp::Create {
                options: SessionOptions::default(),
                force: false,
            },
            t(1),
        )
        .unwrap();
        // node b sets a key concurrently with a's delete + re-create, and delivers late
        let mut b = a.clone();
        let late = plan(
            &b,
            &volumes(),
            &sid(),
            &SessionOp::SetConfig {
                key: "sync-jobs".into(),
                value: "9".into(),
            },
            Hlc::new(2, 0, "b"),
            0,
        )
        .unwrap();
        b.join_record(&late);
        apply(&mut a, SessionOp::Delete { force: false }, t(3)).unwrap();
        apply(
            &mut a,
            SessionOp::Create {
                options: SessionOptions::default(),
                force: false,
            },
            t(4),
        )
        .unwrap();
        a.join_record(&late);
        b.join(&a);
        for replica in [&a, &b] {
            let view = replica.view(&sid()).unwrap();
            assert!(view.exists);
            assert_eq!(view.config_value("sync-jobs").as_deref(), Some("3"));
            assert_eq!(view.desired, DesiredState::Created);
        }
        assert_eq!(a, b);
    }

    #[test]
    fn concurrent_start_and_stop_resolve_identically_everywhere() {
        let mut base = Replica::default();
        apply(
            &mut base,
            SessionOp::Create {
                options: SessionOptions::default(),
                force: false,
            },
            Hlc::new(1, 0, "a"),
        )
        .unwrap();
        let start = plan(
            &base,
            &volumes(),
            &sid(),
            &SessionOp::Start { force: false },
            Hlc::new(5, 0, "a"),
            0,
        )
        .unwrap();
        // same millisecond on another node: the node id breaks the tie
        let stop = plan(
            &base,
            &volumes(),
            &sid(),
            &SessionOp::Stop { force: true },
            Hlc::new(5, 0, "b"),
            0,
        )
        .unwrap();
        let mut x = base.clone();
        x.join_record(&start);
        x.join_record(&stop);
        let mut y = base;
        y.join_record(&stop);
        y.join_record(&start);
        assert_eq!(x, y);
        assert_eq!(x.view(&sid()).unwrap().desired, DesiredState::Stopped);
    }
}
