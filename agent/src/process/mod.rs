//! Monitor processes: what the supervisor drives ([`ProcessBackend`]) and the two
//! worlds it drives them in.
//!
//! - [`backend`]: the trait, the real backend ([`RealBackend`]) and procfs identity.
//! - `fake` (feature `testing`, and the agent's own tests): [`FakeBackend`], in-memory
//!   processes for unit tests and the simulator.

pub mod backend;
#[cfg(any(test, feature = "testing"))]
pub mod fake;

pub use backend::{
    ExitNotice, MonitorSignal, ProcessBackend, ProcessIdentity, RealBackend, SpawnSpec,
    SuperviseError,
};
#[cfg(any(test, feature = "testing"))]
pub use fake::FakeBackend;
