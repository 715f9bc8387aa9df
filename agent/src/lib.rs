//! `georepd`, the georep agent, as a library (the binary is a thin `main`).
//!
//! - [`agent`]: the running agent tying mesh, supervisor, session dirs and API together:
//!   start, loop, persist, op; it gathers what the read routes answer.
//! - [`api`]: the local API: routes (axum) in `api/mod.rs`, serving them on the Unix
//!   socket with our limits in `api/serve.rs` (hyper), and the read routes' answers as
//!   pure functions in `api/views.rs`. Its JSON is the `georep-api` crate's.
//! - [`daemon`]: the `georepd` process: real link, API server, incarnation loop.
//! - [`data_dir_lock`]: the exclusive lock an agent holds on its data directory (the
//!   layout itself is `georep-store`'s `DataDir`).
//! - [`config`]: flags (`config/flags.rs`) and TOML file (`config/load.rs`) resolved
//!   into one validated `AgentConfig`; the test-only delay rules in `config/delay.rs`.
//! - [`inspect`]: gossip-state inspection: the agent side (`inspect/handlers.rs`) and
//!   pure pieces: convergence, explain, raw values. Offline decoding is in
//!   `georep-store`.
//! - [`monitor`]: the built-in monitor (`georepd monitor`): one worker per local primary brick.
//! - [`monitor_command`]: the `--monitor-command` template, parsed once, rendered per session.
//! - [`monitor_report`]: a session's monitor state on this node, as gossiped.
//! - [`process`]: monitor processes: the backend trait, the real one (procfs identity),
//!   and the in-memory one for tests and the simulator (feature `testing`).
//! - [`reconcile`]: the pure decision of what to do to local monitors.
//! - [`session_dir`]: the per-session directory on disk.
//! - [`supervise`]: the supervisor: spawn, signal, adopt, back off.
#![deny(unsafe_code)] // one audited exception: `process::backend::in_new_session`
#![deny(missing_docs)]

pub mod agent;
pub mod api;
pub mod config;
pub mod daemon;
pub mod data_dir_lock;
pub mod inspect;
pub mod monitor;
pub mod monitor_command;
pub mod monitor_report;
pub mod process;
pub mod reconcile;
pub mod session_dir;
pub mod supervise;
