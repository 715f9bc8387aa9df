//! Session configuration keys (gluster's gsyncd options), defaults and validation.
//!
//! Names accept `_` and `-` interchangeably and are stored with `-`. Values are
//! validated and normalised on set, so every replica stores the same canonical text.

use std::fmt;

/// The type of a configuration value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Integer in an inclusive range.
    Int {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// Seconds in an inclusive range.
    Seconds {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// Boolean (true/false/yes/no/on/off/1/0), stored as true/false.
    Bool,
    /// One of a fixed set of words (case-insensitive), stored as the set spells it.
    Choice(&'static [&'static str]),
    /// Unix time in seconds, or `now` (resolved by the caller).
    UnixTime,
    /// One line of text (no control characters, at most [`TEXT_MAX`] bytes), kept as
    /// given but trimmed: gsyncd's free-form options (paths, command options).
    Text,
}

/// Longest accepted [`ValueKind::Text`] value, in bytes.
pub const TEXT_MAX: usize = 1024;

impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueKind::Int { min, max } => write!(f, "an integer from {min} to {max}"),
            ValueKind::Seconds { min, max } => write!(f, "seconds from {min} to {max}"),
            ValueKind::Bool => write!(f, "a boolean (true/false/yes/no/on/off/1/0)"),
            ValueKind::Choice(choices) => write!(f, "one of {}", choices.join(", ")),
            ValueKind::UnixTime => write!(f, "a unix time in seconds, or `now`"),
            ValueKind::Text => write!(
                f,
                "one line of text of at most {TEXT_MAX} bytes without control characters"
            ),
        }
    }
}

/// One known configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigKey {
    /// Canonical name (with `-`).
    pub name: &'static str,
    /// Default value, canonical text.
    pub default: &'static str,
    /// Type and range.
    pub kind: ValueKind,
    /// Whether a running monitor picks the change up without a restart.
    pub live: bool,
}

/// Set by `delete --reset-sync-time` (to the delete's stamp), never by `config`: the
/// sync progress a secondary keeps for the session is valid only under one value of
/// it, so a session created again after such a delete starts over.
pub const SYNC_TIME_RESET: &str = "sync-time-reset";

/// Every known key, in the order `config` lists them.
pub const CONFIG_KEYS: &[ConfigKey] = &[
    ConfigKey {
        name: "sync-jobs",
        default: "3",
        kind: ValueKind::Int { min: 1, max: 100 },
        live: false,
    },
    ConfigKey {
        name: "change-interval",
        default: "5",
        kind: ValueKind::Seconds { min: 1, max: 3600 },
        live: false,
    },
    ConfigKey {
        name: "replica-failover-interval",
        default: "1",
        kind: ValueKind::Seconds { min: 1, max: 300 },
        live: false,
    },
    ConfigKey {
        name: "secondary-timeout",
        default: "120",
        kind: ValueKind::Seconds { min: 0, max: 86400 },
        live: false,
    },
    ConfigKey {
        name: "connection-timeout",
        default: "60",
        kind: ValueKind::Seconds { min: 1, max: 3600 },
        live: false,
    },
    ConfigKey {
        name: "ignore-deletes",
        default: "false",
        kind: ValueKind::Bool,
        live: false,
    },
    ConfigKey {
        name: "sync-xattrs",
        default: "true",
        kind: ValueKind::Bool,
        live: false,
    },
    ConfigKey {
        name: "log-level",
        default: "INFO",
        kind: ValueKind::Choice(&["ERROR", "WARNING", "INFO", "DEBUG"]),
        live: false,
    },
    ConfigKey {
        name: "checkpoint",
        default: "0",
        kind: ValueKind::UnixTime,
        live: true,
    },
    ConfigKey {
        name: "log-sync-performance",
        default: "false",
        kind: ValueKind::Bool,
        live: true,
    },
];

/// gsyncd's own configurable options that are not ours too, as gluster 10.3's
/// template (`/etc/glusterfs/gsyncd.conf`) has them (name, default, validation where it
/// declares one; free-form ones are one line of text). Settable like ours; `config`
/// lists them once set; only gsyncd reads them.
pub const GSYNCD_KEYS: &[ConfigKey] = &[
    ConfigKey {
        name: "glusterd-workdir",
        default: "/var/lib/glusterd",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "gluster-logdir",
        default: "/var/log/glusterfs",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "gluster-rundir",
        default: "/var/run/gluster",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "gsyncd-miscdir",
        default: "/var/lib/misc/gluster/gsyncd",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "stime-xattr-prefix",
        default: "",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "gluster-cli-options",
        default: "",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "access-mount",
        default: "false",
        kind: ValueKind::Bool,
        live: false,
    },
    ConfigKey {
        name: "secondary-access-mount",
        default: "false",
        kind: ValueKind::Bool,
        live: false,
    },
    ConfigKey {
        name: "isolated-secondarys",
        default: "",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "changelog-batch-size",
        default: "727040",
        kind: ValueKind::Int {
            min: 1,
            max: 1 << 32,
        },
        live: false,
    },
    ConfigKey {
        name: "changelog-archive-format",
        default: "%Y%m",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "use-meta-volume",
        default: "false",
        kind: ValueKind::Bool,
        live: false,
    },
    ConfigKey {
        name: "meta-volume-mnt",
        default: "/run/gluster/shared_storage",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "allow-network",
        default: "",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "sync-method",
        default: "rsync",
        kind: ValueKind::Choice(&["rsync", "tarssh"]),
        live: false,
    },
    ConfigKey {
        name: "remote-gsyncd",
        default: "",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "gluster-command-dir",
        default: "/usr/sbin",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "secondary-gluster-command-dir",
        default: "/usr/sbin",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "gluster-params",
        default: "aux-gfid-mount acl",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "secondary-gluster-params",
        default: "aux-gfid-mount acl",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "special-sync-mode",
        default: "",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "gfid-conflict-resolution",
        default: "true",
        kind: ValueKind::Bool,
        live: false,
    },
    ConfigKey {
        name: "change-detector",
        default: "changelog",
        kind: ValueKind::Choice(&["changelog", "xsync"]),
        live: false,
    },
    ConfigKey {
        name: "cli-log-level",
        default: "INFO",
        kind: ValueKind::Choice(&["ERROR", "WARNING", "INFO", "DEBUG"]),
        live: false,
    },
    ConfigKey {
        name: "gluster-log-level",
        default: "INFO",
        kind: ValueKind::Choice(&["ERROR", "WARNING", "INFO", "DEBUG"]),
        live: false,
    },
    ConfigKey {
        name: "changelog-log-level",
        default: "INFO",
        kind: ValueKind::Choice(&["ERROR", "WARNING", "INFO", "DEBUG"]),
        live: false,
    },
    ConfigKey {
        name: "secondary-log-level",
        default: "INFO",
        kind: ValueKind::Choice(&["ERROR", "WARNING", "INFO", "DEBUG"]),
        live: false,
    },
    ConfigKey {
        name: "secondary-gluster-log-level",
        default: "INFO",
        kind: ValueKind::Choice(&["ERROR", "WARNING", "INFO", "DEBUG"]),
        live: false,
    },
    ConfigKey {
        name: "ssh-port",
        default: "22",
        kind: ValueKind::Int { min: 1, max: 65535 },
        live: false,
    },
    ConfigKey {
        name: "ssh-command",
        default: "ssh",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "tar-command",
        default: "tar",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "ssh-options",
        default: "-oPasswordAuthentication=no -oStrictHostKeyChecking=no -i ${glusterd_workdir}/geo-replication/secret.pem",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "ssh-options-tar",
        default: "-oPasswordAuthentication=no -oStrictHostKeyChecking=no -i ${glusterd_workdir}/geo-replication/tar_ssh.pem",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "gluster-command",
        default: "gluster",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "rsync-command",
        default: "rsync",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "rsync-options",
        default: "",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "rsync-ssh-options",
        default: "",
        kind: ValueKind::Text,
        live: false,
    },
    ConfigKey {
        name: "rsync-opt-ignore-missing-args",
        default: "true",
        kind: ValueKind::Bool,
        live: false,
    },
    ConfigKey {
        name: "rsync-opt-existing",
        default: "true",
        kind: ValueKind::Bool,
        live: false,
    },
    ConfigKey {
        name: "log-rsync-performance",
        default: "false",
        kind: ValueKind::Bool,
        live: false,
    },
    ConfigKey {
        name: "use-rsync-xattrs",
        default: "false",
        kind: ValueKind::Bool,
        live: false,
    },
    ConfigKey {
        name: "sync-acls",
        default: "true",
        kind: ValueKind::Bool,
        live: false,
    },
    ConfigKey {
        name: "max-rsync-retries",
        default: "10",
        kind: ValueKind::Int { min: 0, max: 1000 },
        live: false,
    },
];

/// Why a key or value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigKeyError {
    /// The key is not one of [`CONFIG_KEYS`] or [`GSYNCD_KEYS`].
    #[error(
        "unknown config key `{key}`; valid keys: {}; and gsyncd's own options: {}",
        valid_key_names().join(", "),
        GSYNCD_KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
    )]
    UnknownKey {
        /// The key as given.
        key: String,
    },
    /// The value does not fit the key's type or range.
    #[error("invalid value `{value}` for `{key}`: expected {expected}")]
    InvalidValue {
        /// Canonical key name.
        key: String,
        /// The value as given.
        value: String,
        /// What is accepted.
        expected: String,
    },
}

/// The canonical names of every key.
pub fn valid_key_names() -> Vec<&'static str> {
    CONFIG_KEYS.iter().map(|k| k.name).collect()
}

/// Looks a key up by any spelling (`_` or `-`, any case), ours first, then gsyncd's.
pub fn lookup(key: &str) -> Result<&'static ConfigKey, ConfigKeyError> {
    let canonical = key.trim().to_ascii_lowercase().replace('_', "-");
    CONFIG_KEYS
        .iter()
        .chain(GSYNCD_KEYS)
        .find(|k| k.name == canonical)
        .ok_or_else(|| ConfigKeyError::UnknownKey {
            key: key.to_string(),
        })
}

/// Validates and normalises `value` for `key`; `now_secs` resolves `checkpoint now`.
pub fn normalise(key: &ConfigKey, value: &str, now_secs: u64) -> Result<String, ConfigKeyError> {
    let invalid = || ConfigKeyError::InvalidValue {
        key: key.name.to_string(),
        value: value.to_string(),
        expected: key.kind.to_string(),
    };
    let trimmed = value.trim();
    match key.kind {
        ValueKind::Int { min, max } | ValueKind::Seconds { min, max } => {
            let n: u64 = trimmed.parse().map_err(|_| invalid())?;
            if (min..=max).contains(&n) {
                Ok(n.to_string())
            } else {
                Err(invalid())
            }
        }
        ValueKind::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok("true".into()),
            "false" | "no" | "off" | "0" => Ok("false".into()),
            _ => Err(invalid()),
        },
        ValueKind::Choice(choices) => choices
            .iter()
            .find(|c| c.eq_ignore_ascii_case(trimmed))
            .map(|c| c.to_string())
            .ok_or_else(invalid),
        ValueKind::Text => {
            if trimmed.len() > TEXT_MAX || trimmed.chars().any(char::is_control) {
                Err(invalid())
            } else {
                Ok(trimmed.to_string())
            }
        }
        ValueKind::UnixTime => {
            if trimmed.eq_ignore_ascii_case("now") {
                Ok(now_secs.to_string())
            } else {
                trimmed
                    .parse::<u64>()
                    .map(|n| n.to_string())
                    .map_err(|_| invalid())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_accept_either_separator() {
        assert_eq!(lookup("sync_jobs").unwrap().name, "sync-jobs");
        assert_eq!(lookup("Log-Level").unwrap().name, "log-level");
    }

    #[test]
    fn unknown_key_lists_valid_keys() {
        let err = lookup("sync-job").unwrap_err().to_string();
        assert!(err.contains("sync-job"), "{err}");
        assert!(err.contains("change-interval"), "{err}");
        assert!(err.contains("log-sync-performance"), "{err}");
    }

    #[test]
    fn values_are_normalised_or_refused_with_the_range() {
        let jobs = lookup("sync-jobs").unwrap();
        assert_eq!(normalise(jobs, " 7 ", 0).unwrap(), "7");
        let err = normalise(jobs, "101", 0).unwrap_err().to_string();
        assert!(err.contains("from 1 to 100"), "{err}");
        let deletes = lookup("ignore-deletes").unwrap();
        assert_eq!(normalise(deletes, "YES", 0).unwrap(), "true");
        assert_eq!(normalise(deletes, "0", 0).unwrap(), "false");
        assert!(normalise(deletes, "maybe", 0).is_err());
        let level = lookup("log-level").unwrap();
        assert_eq!(normalise(level, "debug", 0).unwrap(), "DEBUG");
        let err = normalise(level, "LOUD", 0).unwrap_err().to_string();
        assert!(err.contains("ERROR, WARNING, INFO, DEBUG"), "{err}");
        let checkpoint = lookup("checkpoint").unwrap();
        assert_eq!(normalise(checkpoint, "now", 1234).unwrap(), "1234");
        assert!(normalise(checkpoint, "-1", 0).is_err());
    }

    #[test]
    fn gsyncd_options_are_validated_as_its_template_says() {
        let method = lookup("sync_method").unwrap();
        assert_eq!(normalise(method, "TarSSH", 0).unwrap(), "tarssh");
        let err = normalise(method, "scp", 0).unwrap_err().to_string();
        assert!(err.contains("rsync, tarssh"), "{err}");
        let port = lookup("ssh-port").unwrap();
        assert!(normalise(port, "0", 0).is_err());
        let options = lookup("ssh-options").unwrap();
        assert_eq!(normalise(options, " -p 2222 ", 0).unwrap(), "-p 2222");
        let err = normalise(options, "-p 1\nremote-gsyncd = /bin/sh", 0).unwrap_err();
        assert!(
            err.to_string().contains("without control characters"),
            "{err}"
        );
        let err = lookup("sync-methods").unwrap_err().to_string();
        assert!(err.contains("sync-method"), "{err}");
        // Ours come first: a name both know is ours.
        assert!(
            GSYNCD_KEYS
                .iter()
                .all(|g| CONFIG_KEYS.iter().all(|k| k.name != g.name))
        );
    }

    #[test]
    fn defaults_are_valid_values() {
        for key in CONFIG_KEYS.iter().chain(GSYNCD_KEYS) {
            assert_eq!(normalise(key, key.default, 0).unwrap(), key.default);
        }
    }
}
