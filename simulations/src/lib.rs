//! georep-sim: many real georep agents in one process, under virtual time, a
//! simulated network and simulated monitor processes, with invariants checked after
//! every heal.
//!
//! The modules are private; the binary and the tests use what is re-exported below the
//! map.
//!
//! - `duration`: `90s` / `5m` / `-2s` durations as the command line and scenarios
//!   write them.
//! - `clock`: a wall clock that reads tokio's (paused) virtual time plus a per-node
//!   skew.
//! - `backend`: the simulated process backend (the agent's `FakeBackend` plus a
//!   pid -> session index, monitor crash/hang faults and an injectable bug).
//! - `scenario`: the plan of a run: scripted TOML scenarios and the seeded random
//!   workload, both resolved to a timeline of `scenario::Step`s.
//! - `cluster`: the simulated cluster: real `Agent`s on `MemHub` links behind one
//!   seeded `Faults`, crash and restart with or without their data directory.
//! - `ledger`: acknowledged commands and what the cluster must show for them.
//! - `checks`: the invariants.
//! - `metrics`: percentiles and traffic series.
//! - `driver`: runs a plan against a cluster (one seed, a batch, a determinism check).
//! - `report`: the JSON and text summaries, and the report directory.
//! - `plot`: the report's plots (plotters), as SVG and PNG.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backend;
mod checks;
mod clock;
mod cluster;
mod driver;
mod duration;
mod ledger;
mod metrics;
mod plot;
mod receiver;
mod report;
mod scenario;

pub use backend::Bug;
pub use driver::{
    Runner, SimOptions, check_determinism, check_determinism_with, run_batch, run_batch_with,
    run_seed,
};
pub use duration::parse_duration;
pub use report::{
    BatchReport, ChildRun, DeterminismReport, FaultCounts, OpCounts, PartComparison, RunLine,
    RunReport, Trace, ViolationReport,
};
pub use scenario::Scenario;
