//! georep-store: an agent's data directory on disk, readable without an agent.
//!
//! - [`data_dir`]: the layout ([`DataDir`]: which file is where), one place for every
//!   path the agent, `inspect offline`, the simulator and the tests use.
//! - [`file`](mod@file): durable files: atomic replacement ([`write_atomic`]) and the checked
//!   envelope of `state.bin` ([`StateFile`], [`Envelope`]).
//! - [`persisted`]: what `state.bin` holds ([`PersistedState`]).
//! - [`offline`](mod@offline): `georep inspect offline`, the data directory decoded for people.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod data_dir;
pub mod file;
pub mod offline;
pub mod persisted;

pub use data_dir::DataDir;
pub use file::{Envelope, StateFile, StoreError, quarantine, write_atomic, write_atomic_unsynced};
pub use offline::offline;
pub use persisted::PersistedState;
