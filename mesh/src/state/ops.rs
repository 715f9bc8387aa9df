//! Operations on sessions: what a command asks ([`SessionOp`]), why it may be refused
//! ([`StateError`]) and [`plan`], which validates it against the converged view and
//! returns the registers to write.

use super::*;

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
        /// `--reset-sync-time`: a session created again later syncs from scratch (the
        /// secondary forgets what it has of this one).
        #[serde(default)]
        reset_sync_time: bool,
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
    /// Whether `host` names a live node: its node id or the address it advertises.
    fn is_live_host(&self, host: &str) -> bool;
    /// The volume's usable size in bytes: over its replica sets, the sum of the
    /// smallest reachable brick of each (live nodes' published facts); or why it
    /// cannot be told.
    fn capacity(&self, volume: &str) -> Result<u64, String>;
    /// Bricks (`node:path`) of `volume` on live nodes that hold data.
    fn non_empty_bricks(&self, volume: &str) -> Vec<String>;
    /// Live nodes hosting `volume` that have no local account `user`.
    fn live_hosts_without_user(&self, volume: &str, user: &str) -> Vec<String>;
}

/// `10737418240` -> `10.0 GiB`: sizes in refusals, as `df -h` people read them.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
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
    /// Create of a session to a secondary volume another session already writes to.
    #[error(
        "Cannot create session {session}: secondary volume {volume} is already the secondary of {existing}. Two sessions writing one volume would overwrite each other; --force does not override this."
    )]
    SecondaryVolumeTaken {
        /// Session.
        session: SessionId,
        /// The secondary volume.
        volume: String,
        /// The session that already writes to it.
        existing: SessionId,
    },
    /// Create naming a secondary host that is not a live node.
    #[error(
        "Cannot create session {session}: secondary host {host} is not a live node of the mesh (by node id or advertised address). Check the name and the secondary agent, or use --force."
    )]
    SecondaryHostUnknown {
        /// Session.
        session: SessionId,
        /// The host as given.
        host: String,
    },
    /// Create for a secondary user some secondary node does not have.
    #[error(
        "Cannot create session {session}: user {user} does not exist on secondary node(s) {}. Create the account there, or use --force.",
        nodes.join(", ")
    )]
    SecondaryUserMissing {
        /// Session.
        session: SessionId,
        /// The secondary user.
        user: String,
        /// Secondary nodes without it.
        nodes: Vec<String>,
    },
    /// Create with a secondary volume smaller than the primary volume.
    #[error(
        "Cannot create session {session}: secondary {secondary_volume} has {}, primary {primary_volume} needs {}. Grow the secondary volume, or use --force.",
        human_bytes(*secondary_bytes),
        human_bytes(*primary_bytes)
    )]
    SecondaryTooSmall {
        /// Session.
        session: SessionId,
        /// The primary volume.
        primary_volume: String,
        /// Its size.
        primary_bytes: u64,
        /// The secondary volume.
        secondary_volume: String,
        /// Its size.
        secondary_bytes: u64,
    },
    /// Create when a volume's size cannot be told.
    #[error(
        "Cannot create session {session}: cannot verify the size of {volume}: {reason}. Check its bricks, or use --force."
    )]
    SizeUnknown {
        /// Session.
        session: SessionId,
        /// The volume.
        volume: String,
        /// Why.
        reason: String,
    },
    /// Create with a secondary volume that holds data.
    #[error(
        "Cannot create session {session}: secondary volume {volume} is not empty ({}). Empty it, or use --force.",
        bricks.join(", ")
    )]
    SecondaryNotEmpty {
        /// Session.
        session: SessionId,
        /// The secondary volume.
        volume: String,
        /// Its bricks that hold data (`node:path`).
        bricks: Vec<String>,
    },
    /// `create --push-pem --force` on a session created without push-pem.
    #[error(
        "Session {0} was created without --push-pem, so it has no keys to rotate. Delete it and create it again with --push-pem."
    )]
    NoKeysToRotate(SessionId),
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
        if let Some(existing) = replica
            .existing()
            .find(|other| other.id != *id && other.id.secondary_volume == id.secondary_volume)
        {
            return Err(StateError::SecondaryVolumeTaken {
                session: id.clone(),
                volume: id.secondary_volume.clone(),
                existing: existing.id,
            });
        }
        if !volumes.has_bricks(&id.primary_volume) {
            return Err(StateError::PrimaryVolumeUnknown {
                session: id.clone(),
                volume: id.primary_volume.clone(),
            });
        }
        if !force {
            verify_secondary(volumes, id)?;
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
        SessionOp::Create { options, force } => {
            // gluster's `create push-pem force` on an existing session: new keys.
            if !(options.push_pem && *force) {
                return Err(StateError::AlreadyExists(id.clone()));
            }
            if !view.options.push_pem {
                return Err(StateError::NoKeysToRotate(id.clone()));
            }
            delta.rotated = Some(stamp);
            return Ok(delta);
        }
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
        SessionOp::Delete {
            force,
            reset_sync_time,
        } => {
            if current.is_running() && !force {
                return Err(wrong(
                    current,
                    format!(
                        "geo-replication session is {current}. Please stop the session and retry, or use --force."
                    ),
                ));
            }
            if *reset_sync_time {
                // Kept with the record past the delete (pruning spares it), invisible
                // to `config` (not a key of CONFIG_KEYS): the data path's sync
                // progress is only valid under the same reset value.
                delta.config.insert(
                    session_config::SYNC_TIME_RESET.to_string(),
                    reassert_or(
                        replica,
                        id,
                        session_config::SYNC_TIME_RESET,
                        Some(stamp.to_string()),
                        stamp.clone(),
                    ),
                );
            }
            delta.deleted = Some(stamp);
        }
    }
    Ok(delta)
}

/// The register that sets `key` to `value`: the current one when it already holds that
/// value (so the write changes no stamp and restarts no monitor), else a new one
/// stamped `stamp`.
pub(super) fn reassert_or(
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

/// gluster's gverify.sh, from the facts nodes publish: the secondary host is a live
/// node, the secondary volume is hosted, its user exists, it is at least as large as
/// the primary volume, and it is empty. Every check here is one `--force` skips.
#[allow(clippy::result_large_err)] // as `plan`
fn verify_secondary(volumes: &dyn VolumeDirectory, id: &SessionId) -> Result<(), StateError> {
    let session = || id.clone();
    if !volumes.hosted_by_live_node(&id.secondary_volume) {
        return Err(StateError::SecondaryNotHosted {
            session: session(),
            volume: id.secondary_volume.clone(),
        });
    }
    if !volumes.is_live_host(&id.secondary_host) {
        return Err(StateError::SecondaryHostUnknown {
            session: session(),
            host: id.secondary_host.clone(),
        });
    }
    let nodes = volumes.live_hosts_without_user(&id.secondary_volume, &id.secondary_user);
    if !nodes.is_empty() {
        return Err(StateError::SecondaryUserMissing {
            session: session(),
            user: id.secondary_user.clone(),
            nodes,
        });
    }
    let size = |volume: &str| {
        volumes
            .capacity(volume)
            .map_err(|reason| StateError::SizeUnknown {
                session: session(),
                volume: volume.to_string(),
                reason,
            })
    };
    let primary_bytes = size(&id.primary_volume)?;
    let secondary_bytes = size(&id.secondary_volume)?;
    if secondary_bytes < primary_bytes {
        return Err(StateError::SecondaryTooSmall {
            session: session(),
            primary_volume: id.primary_volume.clone(),
            primary_bytes,
            secondary_volume: id.secondary_volume.clone(),
            secondary_bytes,
        });
    }
    let bricks = volumes.non_empty_bricks(&id.secondary_volume);
    if !bricks.is_empty() {
        return Err(StateError::SecondaryNotEmpty {
            session: session(),
            volume: id.secondary_volume.clone(),
            bricks,
        });
    }
    Ok(())
}
