//! georep-api: the local API of `georepd` as its clients see it: the JSON it speaks
//! and a client for its Unix socket. The CLI depends on this crate, not on the agent.
//!
//! [`types`] and [`inspect`] are public namespaces (dozens of JSON types each, named
//! after their routes); `words` and `client` are private and re-exported below.
//!
//! - [`types`]: requests and responses of the lifecycle routes (`/v1/status`,
//!   `/v1/op`, `/v1/nodes`, ...), and [`types::ErrorBody`] with its
//!   [`types::ErrorCode`].
//! - [`inspect`]: the JSON of `georep inspect` (`/v1/inspect/...`, and the offline
//!   decoding of a data directory).
//! - `words`: the closed sets of status words ([`WorkerStatus`], [`CrawlStatus`]),
//!   spelled as gluster prints them, unknown words kept.
//! - `client`: one request over the socket (hyper, HTTP/1.1), percent-encoded queries.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
pub mod inspect;
pub mod types;
mod words;

pub use client::{ClientError, percent_encode, request, with_query};
pub use types::{ErrorBody, ErrorCode};
pub use words::{CrawlStatus, WorkerStatus};

/// The version of the binaries: the crate version and the git commit they were built
/// from (`0.1.0 (1a2b3c4d5e6f)`); printed by `--version`, gossiped by every agent.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GEOREP_COMMIT"), ")");

/// Where the agent serves its local API, and where `georep` looks for it, when
/// neither is told otherwise.
pub const DEFAULT_API_SOCKET: &str = "/run/georep/georepd.sock";
