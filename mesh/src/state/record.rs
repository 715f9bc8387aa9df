//! The replicated state of a session: its registers ([`SessionRecord`]), the view
//! they resolve to ([`SessionView`]) and the replica of every session ([`Replica`]).

use super::*;

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
    /// The `keys-rotated` register (`create --push-pem --force` on an existing session).
    Rotated,
    /// One configuration key.
    Config(String),
}

impl fmt::Display for RegisterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterName::Created => f.write_str("created"),
            RegisterName::Deleted => f.write_str("deleted"),
            RegisterName::Desired => f.write_str("desired"),
            RegisterName::Rotated => f.write_str("keys-rotated"),
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
    /// Latest key rotation stamp (push-pem sessions): primaries regenerate their keys
    /// when it is newer than the keys they published.
    pub rotated: Option<Hlc>,
}

pub(super) fn join_reg<V: PartialEq + Clone>(mine: &mut Option<Reg<V>>, theirs: &Option<Reg<V>>) {
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
            rotated: None,
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
        if other.rotated > self.rotated {
            self.rotated.clone_from(&other.rotated);
        }
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
    pub(super) fn prune(&mut self) {
        let Some((_, floor)) = self.floor() else {
            return;
        };
        let floor = floor.clone();
        if self.desired.as_ref().is_some_and(|reg| reg.marker < floor) {
            self.desired = None;
        }
        // The sync-time reset outlives the delete that set it (it is about the next
        // incarnation): one register, kept by every replica alike.
        self.config
            .retain(|key, reg| reg.marker > floor || key == crate::session_config::SYNC_TIME_RESET);
        if self.rotated.as_ref().is_some_and(|stamp| *stamp < floor) {
            self.rotated = None;
        }
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
        if let Some(stamp) = &self.rotated {
            out.push((RegisterName::Rotated, stamp.clone()));
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
            RegisterName::Rotated => self.rotated.as_ref(),
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
                RegisterName::Rotated => out.rotated.clone_from(&self.rotated),
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
            key_rotation: self.rotated.clone(),
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
    /// Stamp of the latest key rotation in this incarnation, if any.
    pub key_rotation: Option<Hlc>,
}

impl SessionView {
    /// The effective value of every key of ours, and of gsyncd's that are set:
    /// (name, value, default, whether set).
    pub fn effective_config(&self) -> Vec<(&'static str, String, &'static str, bool)> {
        let gsyncd_set = session_config::GSYNCD_KEYS
            .iter()
            .filter(|key| self.config.contains_key(key.name));
        session_config::CONFIG_KEYS
            .iter()
            .chain(gsyncd_set)
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
    /// config keys, the key rotation and the incarnation (live keys excluded).
    pub fn restart_stamp(&self, record: &SessionRecord) -> Option<Hlc> {
        let mut stamp = self.incarnation.clone();
        for (key, reg) in &record.config {
            let live = session_config::lookup(key).is_ok_and(|k| k.live);
            if !live && Some(&reg.marker) > stamp.as_ref() {
                stamp = Some(reg.marker.clone());
            }
        }
        // New keys: the monitor must reconnect with them.
        if record.rotated.as_ref() > stamp.as_ref() {
            stamp.clone_from(&record.rotated);
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
