//! The closed sets of words gluster's status shows, as enums whose JSON is the word
//! itself (byte-compatible with the strings they replace). A word outside the set (a
//! custom monitor's, a newer gsyncd's) is kept as it was written, not lost.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Defines an enum of fixed words plus `Other(String)`, spelled as its word in JSON.
macro_rules! words {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $word:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
            /// A word outside the set, kept as written.
            Other(String),
        }

        impl $name {
            /// The word as gluster prints it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $word,)+
                    Self::Other(word) => word,
                }
            }
        }

        impl From<&str> for $name {
            /// The word's variant; no word at all (a monitor that wrote an empty one)
            /// is the type's default.
            fn from(word: &str) -> Self {
                match word {
                    "" => Self::default(),
                    $($word => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl From<String> for $name {
            fn from(word: String) -> Self {
                Self::from(word.as_str())
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.as_str().to_owned()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

    };
}

words! {
    /// A worker's status (STATUS column of `status`, and a `<brick>.status` file).
    WorkerStatus {
        /// The session exists and was never started.
        Created => "Created",
        /// Starting, or not reporting yet.
        Initializing => "Initializing...",
        /// Syncing its replica set.
        Active => "Active",
        /// Standing by: another brick of its replica set is Active.
        Passive => "Passive",
        /// Crashed repeatedly; retried with backoff.
        Faulty => "Faulty",
        /// Not running, as desired.
        Stopped => "Stopped",
        /// Frozen, as desired.
        Paused => "Paused",
        /// Its node is dead.
        Offline => "Offline",
        /// Desired Paused; the node has not acted on it yet.
        Pausing => "Pausing...",
        /// Desired Stopped; the node has not acted on it yet.
        Stopping => "Stopping...",
    }
}

words! {
    /// A worker's crawl (CRAWL STATUS column of `status`).
    CrawlStatus {
        /// No crawl (not Active, or no data transfer).
        NotApplicable => "N/A",
        /// Reading the changelog.
        Changelog => "Changelog Crawl",
        /// Replaying changelog history after a restart.
        History => "History Crawl",
        /// Walking the file system (first sync, or changelog unavailable).
        Hybrid => "Hybrid Crawl",
    }
}

impl Default for WorkerStatus {
    /// What a worker that wrote nothing yet is.
    fn default() -> Self {
        Self::Initializing
    }
}

impl Default for CrawlStatus {
    /// No crawl.
    fn default() -> Self {
        Self::NotApplicable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_json_and_unknown_words_are_kept() {
        for word in ["Initializing...", "Active", "Stopping...", "Offline"] {
            let status = WorkerStatus::from(word);
            assert!(!matches!(status, WorkerStatus::Other(_)), "{word}");
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{word}\""));
            assert_eq!(serde_json::from_str::<WorkerStatus>(&json).unwrap(), status);
        }
        let custom: WorkerStatus = serde_json::from_str("\"Syncing (42%)\"").unwrap();
        assert_eq!(custom, WorkerStatus::Other("Syncing (42%)".into()));
        assert_eq!(serde_json::to_string(&custom).unwrap(), "\"Syncing (42%)\"");
        assert_eq!(CrawlStatus::from("Changelog Crawl"), CrawlStatus::Changelog);
        assert_eq!(CrawlStatus::default().to_string(), "N/A");
        assert_eq!(
            serde_json::from_str::<CrawlStatus>("\"\"").unwrap(),
            CrawlStatus::NotApplicable
        );
        assert_eq!(
            serde_json::from_str::<WorkerStatus>("\"\"").unwrap(),
            WorkerStatus::Initializing
        );
    }
}
