//! push-pem as gossiped records: the public keys a primary node generated for a
//! session ([`SessionKeys`], under `k/<session>` in the primary's own namespace) and
//! what a secondary node installed from them ([`KeyInstall`], under `ki/<session>` in
//! the secondary's). Only their owner writes them; no CRDT needed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;

/// Owner-written key prefix of a primary node's session public keys.
pub const KEYS_PREFIX: &str = "k/";
/// Owner-written key prefix of a secondary node's key installation report.
pub const KEY_INSTALL_PREFIX: &str = "ki/";

/// One OpenSSH public key as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyInfo {
    /// `ssh-ed25519 AAAA... comment`, as in a `.pub` file.
    pub openssh: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

/// The public halves of a primary node's key pairs for one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionKeys {
    /// The session incarnation the keys were generated for.
    pub incarnation: Hlc,
    /// The rotation (`create --push-pem --force`) they were generated after, if any.
    pub rotation: Option<Hlc>,
    /// `secret.pem.pub`: the monitor's control and data channel (gsyncd).
    pub secret: PublicKeyInfo,
    /// `tar_ssh.pem.pub`: tar mode.
    pub tar: PublicKeyInfo,
    /// Addresses the node connects from (the `from=` of its lines).
    pub addresses: Vec<String>,
}

impl SessionKeys {
    /// Whether these keys belong to the session's current incarnation and rotation.
    pub fn current(&self, incarnation: &Hlc, rotation: Option<&Hlc>) -> bool {
        self.incarnation == *incarnation && self.rotation.as_ref() == rotation
    }
}

/// What a secondary node installed for one session, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInstall {
    /// The session incarnation this report is about.
    pub incarnation: Hlc,
    /// The key rotation the installed keys belong to, if any.
    pub rotation: Option<Hlc>,
    /// The secondary user whose file holds the block.
    pub user: String,
    /// The authorized_keys file.
    pub file: String,
    /// Primary nodes whose current keys are in the block.
    pub installed: Vec<String>,
    /// Primary nodes whose keys are not, and why.
    pub missing: BTreeMap<String, String>,
    /// Why nothing could be installed (the user does not exist, the file cannot be
    /// written), if so.
    pub error: Option<String>,
}
