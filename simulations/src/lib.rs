//! georep-sim: many real georep agents in one process, under virtual time, a
//! simulated network and simulated monitor processes, with invariants checked after
//! every heal.
//!
//! - [`duration`]: `90s` / `5m` / `-2s` durations as the command line and scenarios
//!   write them.
//! - [`clock`]: a wall clock that reads tokio's (paused) virtual time plus a per-node
//!   skew.
//! - [`backend`]: the simulated process backend (the agent's `FakeBackend` plus a
//!   pid -> session index, monitor crash/hang faults and an injectable bug).
//! - [`scenario`]: the plan of a run: scripted TOML scenarios and the seeded random
//!   workload, both resolved to a timeline of [`scenario::Step`]s.
//! - [`cluster`]: the simulated cluster: real `Agent`s on `MemHub` links behind one
//!   seeded `Faults`, crash and restart with or without their data directory.
//! - [`ledger`]: acknowledged commands and what the cluster must show for them.
//! - [`checks`]: the invariants.
//! - [`metrics`]: percentiles and traffic series.
//! - [`driver`]: runs a plan against a cluster (one seed, a batch, a determinism check).
//! - [`report`]: the JSON and text summaries, and the report directory.
//! - [`svg`]: hand-written SVG plots.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backend;
pub mod checks;
pub mod clock;
pub mod cluster;
pub mod driver;
pub mod duration;
pub mod ledger;
pub mod metrics;
pub mod report;
pub mod scenario;
pub mod svg;

pub use driver::{SimOptions, run_batch, run_seed};
pub use report::{BatchReport, RunReport};
pub use scenario::Scenario;
