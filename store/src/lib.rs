//! georep-store: an agent's data directory on disk, readable without an agent.
//!
//! The modules are private except [`data_dir`], a namespace for the layout's file
//! names (`data_dir::LOCK_FILE`); the rest is re-exported below the map.
//!
//! - [`data_dir`]: the layout ([`DataDir`]: which file is where), one place for every
//!   path the agent, `inspect offline`, the simulator and the tests use.
//! - `file`: durable files: atomic replacement ([`write_atomic`]) and the checked
//!   envelope of `state.bin` ([`StateFile`], [`Envelope`]).
//! - `persisted`: what `state.bin` holds ([`PersistedState`]).
//! - `offline`: `georep inspect offline`, the data directory decoded for people.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod data_dir;
mod file;
mod offline;
mod persisted;

pub use data_dir::DataDir;
pub use file::{Envelope, StateFile, StoreError, quarantine, write_atomic, write_atomic_unsynced};
pub use offline::offline;
pub use persisted::PersistedState;
