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

mod ops;
mod record;

pub use ops::*;
pub use record::*;

#[cfg(test)]
mod tests;
