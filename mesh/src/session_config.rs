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
    /// One of a fixed set of words (case-insensitive), stored upper-case.
    Choice(&'static [&'static str]),
    /// Unix time in seconds, or `now` (resolved by the caller).
    UnixTime,
}

impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueKind::Int { min, max } => write!(f, "an integer from {min} to {max}"),
            ValueKind::Seconds { min, max } => write!(f, "seconds from {min} to {max}"),
            ValueKind::Bool => write!(f, "a boolean (true/false/yes/no/on/off/1/0)"),
            ValueKind::Choice(choices) => write!(f, "one of {}", choices.join(", ")),
            ValueKind::UnixTime => write!(f, "a unix time in seconds, or `now`"),
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

/// Why a key or value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigKeyError {
    /// The key is not one of [`CONFIG_KEYS`].
    #[error("unknown config key `{key}`; valid keys: {}", valid_key_names().join(", "))]
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

/// Looks a key up by any spelling (`_` or `-`, any case).
pub fn lookup(key: &str) -> Result<&'static ConfigKey, ConfigKeyError> {
    let canonical = key.trim().to_ascii_lowercase().replace('_', "-");
    CONFIG_KEYS
        .iter()
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
        ValueKind::Choice(choices) => {
            let upper = trimmed.to_ascii_uppercase();
            choices
                .iter()
                .find(|c| **c == upper)
                .map(|c| c.to_string())
                .ok_or_else(invalid)
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
    fn defaults_are_valid_values() {
        for key in CONFIG_KEYS {
            assert_eq!(normalise(key, key.default, 0).unwrap(), key.default);
        }
    }
}
