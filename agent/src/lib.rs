//! `georepd`, the georep agent, as a library (the binary is a thin `main`).
//!
//! The modules are private; what the binary, the simulator and the tests use is
//! re-exported below the map.
//!
//! - `agent`: the running agent tying mesh, supervisor, session dirs, keys and API
//!   together: start, loop, persist; `agent/answers.rs`: commands (apply, then wait for
//!   the mesh, the monitors and the keys) and what the read routes answer.
//! - `api`: the local API: routes (axum) in `api/mod.rs`, serving them on the Unix
//!   socket with our limits in `api/serve.rs` (hyper), and the read routes' answers as
//!   pure functions in `api/views.rs`. Its JSON is the `georep-api` crate's.
//! - `daemon`: the `georepd` process: real link, API server, incarnation loop.
//! - `data_dir_lock`: the exclusive lock an agent holds on its data directory (the
//!   layout itself is `georep-store`'s `DataDir`).
//! - `config`: flags (`config/flags.rs`) and TOML file (`config/load.rs`) resolved
//!   into one validated `AgentConfig`; the test-only delay rules in `config/delay.rs`.
//! - `events`: the cluster-wide event stream: per-origin journals on disk, their
//!   replication over the mesh (application frames), the merged stream.
//! - `gluster`: real Gluster: gluster's gsyncd as the monitor (`--monitor gsyncd`:
//!   command, `gsyncd.conf` lines, its brick status files), bricks from glusterd
//!   (`--bricks-from-glusterd`), the primary volume's options, and gsyncd's
//!   secondary-side leftovers; `agent/gluster_side.rs` runs them and answers glusterd's
//!   pre-hook (`POST /v1/gluster-hook`).
//! - `host_facts`: what a node measures about itself for create's verification:
//!   its bricks (statvfs, reachable, empty) and user accounts.
//! - `inspect`: gossip-state inspection: the agent side (`inspect/handlers.rs`) and
//!   pure pieces: convergence, explain, raw values. Offline decoding is in
//!   `georep-store`.
//! - `keys`: push-pem: a primary's session key pairs, published; a secondary's
//!   managed authorized_keys blocks, installed and reported.
//! - `monitor`: the built-in monitor (`georepd monitor`): one worker per local primary brick.
//! - `monitor_command`: the `--monitor-command` template, parsed once, rendered per session.
//! - `monitor_report`: a session's monitor state on this node, as gossiped.
//! - `process`: monitor processes: the backend trait, the real one (procfs identity),
//!   and the in-memory one for tests and the simulator (feature `testing`).
//! - `reconcile`: the pure decision of what to do to local monitors.
//! - `session_dir`: the per-session directory on disk.
//! - `supervise`: the supervisor: spawn, signal, adopt, back off.
//! - `webhooks`: the replicated webhook list (`webhooks/state.rs`), delivery bodies
//!   and signatures (`webhooks/sign.rs`), the HTTP(S) client behind the `Transport`
//!   seam (`webhooks/http.rs`), and at-least-once delivery rounds with gossiped
//!   cursors (`webhooks/mod.rs`).
#![deny(unsafe_code)] // one audited exception: `process::backend::in_new_session`
#![deny(missing_docs)]

mod agent;
mod api;
mod config;
mod daemon;
mod data_dir_lock;
mod datapath;
mod dbus;
mod events;
mod gluster;
mod host_facts;
mod inspect;
mod keys;
mod monitor;
mod monitor_command;
mod monitor_log;
mod monitor_report;
mod process;
mod reconcile;
mod session_dir;
mod supervise;
mod webhooks;

pub use agent::{Agent, MONITOR_PREFIX, NodeSessionStatus};
pub use config::{AgentArgs, AgentConfig, BrickSpec};
pub use daemon::run;
pub use host_facts::{FixedHostFacts, HostFacts, RealHostFacts};
pub use monitor::{MonitorArgs, run as run_monitor};
pub use monitor_command::MonitorCommand;
pub use monitor_report::MonitorState;
#[cfg(any(test, feature = "testing"))]
pub use process::FakeBackend;
pub use process::{
    ExitNotice, MonitorSignal, ProcessBackend, ProcessIdentity, RealBackend, SpawnSpec,
    SuperviseError,
};
pub use reconcile::SessionPlan;
pub use session_dir::LOG_FILE;
pub use supervise::{SupervisePolicy, Supervisor};
pub use webhooks::{
    Answer as WebhookAnswer, Delivery as WebhookDelivery, Transport as WebhookTransport,
};
