//! The built-in monitor, `georepd monitor`: one worker per local primary brick.
//!
//! The agent starts it (see [`crate::supervise`]) in the session directory's context.
//! Each worker reports its brick's state in `<session_dir>/<escaped brick>.status`
//! (JSON, replaced atomically), Active when the agent lists the brick in
//! `<session_dir>/active_bricks` (the deterministic choice from the converged
//! membership), Passive otherwise. An Active worker syncs its brick to a secondary
//! node over the data path ([`crate::datapath::client`]) as the agent's plan
//! (`datapath.json`) says, and reports CRAWL STATUS, LAST_SYNCED and the
//! ENTRY/DATA/META/FAILURES counters from it.
//!
//! SIGTERM (or SIGINT) makes every worker write `Stopped` and the monitor exit 0;
//! SIGSTOP/SIGCONT (pause/resume) need no handling: the whole process freezes.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use georep_mesh::{SystemClock, WallClock};
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use georep_api::{CrawlStatus, WorkerStatus};

use crate::datapath::client::SyncProgress;
use crate::session_dir::{self, ACTIVE_BRICKS_FILE};

/// How often a worker re-reads `active_bricks`.
pub const ACTIVE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Arguments of `georepd monitor`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct MonitorArgs {
    /// The session directory: status files are written there.
    #[arg(long, value_name = "DIR")]
    pub session_dir: PathBuf,
    /// Local primary brick paths, comma-separated.
    #[arg(long, value_name = "B1,B2", value_delimiter = ',', required = true)]
    pub bricks: Vec<String>,
    /// This node's id.
    #[arg(long, value_name = "ID")]
    pub node: String,
    /// Session directory name, for logs.
    #[arg(long, value_name = "NAME")]
    pub session: Option<String>,
}

/// Runs the monitor until SIGTERM or SIGINT; fails if a worker cannot write its status
/// (the agent then restarts the monitor with backoff).
pub async fn run(args: MonitorArgs) -> anyhow::Result<()> {
    let bricks: Vec<String> = args
        .bricks
        .iter()
        .map(|brick| brick.trim())
        .filter(|brick| !brick.is_empty())
        .map(String::from)
        .collect();
    anyhow::ensure!(
        !bricks.is_empty(),
        "no local brick given; pass --bricks /path/b1,/path/b2"
    );
    anyhow::ensure!(
        args.session_dir.is_dir(),
        "session directory {} does not exist; the agent creates it before starting the monitor",
        args.session_dir.display()
    );
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let session = args.session.clone().unwrap_or_default();
    tracing::info!(%session, node = %args.node, ?bricks, "monitor starting");

    let shutdown = CancellationToken::new();
    let mut workers = JoinSet::new();
    for brick in bricks {
        let worker = Worker::new(args.session_dir.clone(), brick);
        workers.spawn(worker.run(shutdown.clone()));
    }
    let mut failure = None;
    tokio::select! {
        _ = terminate.recv() => tracing::info!(%session, "SIGTERM: stopping workers"),
        _ = interrupt.recv() => tracing::info!(%session, "SIGINT: stopping workers"),
        Some(ended) = workers.join_next() => failure = Some(ended),
    }
    shutdown.cancel();
    let mut errors = Vec::new();
    if let Some(ended) = failure {
        errors.extend(worker_error(ended));
    }
    while let Some(ended) = workers.join_next().await {
        errors.extend(worker_error(ended));
    }
    match errors.into_iter().next() {
        Some(error) => Err(error.context(format!("monitor of session {session} failed"))),
        None => Ok(()),
    }
}

fn worker_error(ended: Result<io::Result<()>, tokio::task::JoinError>) -> Option<anyhow::Error> {
    match ended {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(anyhow::Error::new(error)),
        Err(error) => Some(anyhow::Error::new(error).context("a worker panicked")),
    }
}

/// What a worker reports about its brick (the `<brick>.status` file). Missing fields
/// read as their defaults, so a custom monitor may write only what it knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrickStatus {
    /// Brick path.
    pub brick: String,
    /// Initializing..., Active, Passive or Stopped (a custom monitor's own word is kept).
    pub status: WorkerStatus,
    /// Crawl status (`N/A` when there is none).
    pub crawl_status: CrawlStatus,
    /// Time of the last synced change, if any.
    pub last_synced: Option<String>,
    /// Entry operations synced.
    pub entry: u64,
    /// Data operations synced.
    pub data: u64,
    /// Metadata operations synced.
    pub meta: u64,
    /// Failed operations.
    pub failures: u64,
    /// Chunk bytes the built-in data path sent (0 for other monitors).
    pub bytes_sent: u64,
    /// Checkpoint set, if any.
    pub checkpoint_time: Option<String>,
    /// Whether the checkpoint was reached.
    pub checkpoint_completed: bool,
    /// When the checkpoint was reached.
    pub checkpoint_completion_time: Option<String>,
    /// Wall-clock milliseconds of this write.
    pub updated_ms: u64,
    /// The secondary node the worker syncs to, when it says (the built-in data path,
    /// gsyncd); `status` otherwise shows a live node hosting the secondary volume.
    pub secondary_node: Option<String>,
}

impl BrickStatus {
    fn new(brick: &str, status: WorkerStatus) -> Self {
        Self {
            brick: brick.to_string(),
            status,
            crawl_status: CrawlStatus::NotApplicable,
            last_synced: None,
            entry: 0,
            data: 0,
            meta: 0,
            failures: 0,
            bytes_sent: 0,
            checkpoint_time: None,
            checkpoint_completed: false,
            checkpoint_completion_time: None,
            updated_ms: 0,
            secondary_node: None,
        }
    }
}

/// What a brick path keeps literally in its status file name: all but `/` (not allowed
/// in a name), `%` (so that the encoding is reversible: `/a%2Fb` and `/a/b` differ) and
/// control characters.
const STATUS_NAME_ESCAPES: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b'/').add(b'%');

/// The status file name of a brick: its path percent-encoded (`/` is `%2F`, `%` is
/// `%25`), then `.status`.
pub fn status_file_name(brick: &str) -> String {
    format!(
        "{}.status",
        percent_encoding::utf8_percent_encode(brick, STATUS_NAME_ESCAPES)
    )
}

/// One brick's worker.
pub struct Worker {
    session_dir: PathBuf,
    brick: String,
    clock: Arc<dyn WallClock>,
    poll_interval: Duration,
}

impl Worker {
    /// A worker for `brick` reporting into `session_dir`, on the system clock.
    pub fn new(session_dir: PathBuf, brick: String) -> Self {
        Self {
            session_dir,
            brick,
            clock: Arc::new(SystemClock),
            poll_interval: ACTIVE_POLL_INTERVAL,
        }
    }

    #[cfg(test)]
    /// Re-reads `active_bricks` every `interval` instead of every second.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    #[cfg(test)]
    /// Stamps `updated_ms` from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn WallClock>) -> Self {
        self.clock = clock;
        self
    }

    /// Where this worker's status goes.
    pub fn status_path(&self) -> PathBuf {
        self.session_dir.join(status_file_name(&self.brick))
    }

    /// Reports Initializing..., then Active or Passive as `active_bricks` says, until
    /// `shutdown`; then reports Stopped. While Active and the agent has written a data
    /// path plan (`datapath.json`), syncs the brick to the secondary. Fails only when
    /// the status cannot be written.
    pub async fn run(self, shutdown: CancellationToken) -> io::Result<()> {
        let mut status = BrickStatus::new(&self.brick, WorkerStatus::Initializing);
        self.write(&mut status)?;
        let mut active = None;
        let progress = Arc::new(std::sync::Mutex::new(SyncProgress::default()));
        let mut syncing: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
        let mut first = true;
        loop {
            // A brick the agent already lists as Active starts syncing at once (it shows
            // Initializing... until it has reached a secondary, as gluster's worker does
            // until it is connected); otherwise the list is read again every poll
            // interval. An agent that has just heard its first peer may list its own
            // brick Active for a moment before it knows the other replica's node: the
            // secondary admits only the worker its own view calls Active, so such a
            // worker is refused (and stopped at the next poll), never writes beside
            // the real one.
            let at_once = first && self.is_active() == Some(true);
            first = false;
            if !at_once {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.poll_interval) => {}
                }
            }
            active = self.is_active().or(active);
            let wanted = if active == Some(true) {
                WorkerStatus::Active
            } else {
                WorkerStatus::Passive
            };
            let plan = self.session_dir.join(crate::datapath::PLAN_FILE);
            match (&wanted, syncing.is_some()) {
                (WorkerStatus::Active, false) if plan.exists() => {
                    if let Ok(mut p) = progress.lock() {
                        p.fault = None;
                        p.starting = Some(std::time::Instant::now());
                    }
                    let cancel = shutdown.child_token();
                    let task = tokio::spawn(crate::datapath::client::run(
                        PathBuf::from(&self.brick),
                        plan,
                        progress.clone(),
                        cancel.clone(),
                    ));
                    syncing = Some((cancel, task));
                }
                (WorkerStatus::Passive, true) => {
                    if let Some((cancel, task)) = syncing.take() {
                        cancel.cancel();
                        let _ = task.await;
                    }
                    if let Ok(mut p) = progress.lock() {
                        p.crawl = CrawlStatus::NotApplicable;
                    }
                }
                _ => {}
            }
            let before = status.clone();
            status.status = wanted;
            if let Ok(p) = progress.lock() {
                p.apply_to(&mut status);
            }
            if status != before {
                if status.status != before.status {
                    tracing::info!(brick = %self.brick, from = %before.status, to = %status.status, "worker status");
                }
                self.write(&mut status)?;
            }
        }
        if let Some((cancel, task)) = syncing.take() {
            cancel.cancel();
            let _ = task.await;
        }
        status.status = WorkerStatus::Stopped;
        status.crawl_status = CrawlStatus::NotApplicable;
        self.write(&mut status)
    }

    /// Whether the agent lists this brick as Active; `None` when the list cannot be
    /// read (the previous answer stands). A missing list means nothing is Active yet.
    fn is_active(&self) -> Option<bool> {
        let path = self.session_dir.join(ACTIVE_BRICKS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(text.lines().any(|line| line.trim() == self.brick)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Some(false),
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "cannot read the active brick list");
                None
            }
        }
    }

    // Blocking file I/O on the runtime is deliberate: the files are tiny and the
    // monitor's runtime has nothing else to do.
    fn write(&self, status: &mut BrickStatus) -> io::Result<()> {
        status.updated_ms = self.clock.now_millis();
        let bytes = serde_json::to_vec(status).map_err(io::Error::other)?;
        let path = self.status_path();
        session_dir::write_atomic(&path, &bytes, false).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot write worker status {}: {error}", path.display()),
            )
        })
    }
}

#[cfg(test)]
/// Reads a brick status file (for tests and tools).
pub fn read_status(session_dir: &std::path::Path, brick: &str) -> io::Result<BrickStatus> {
    let bytes = std::fs::read(session_dir.join(status_file_name(brick)))?;
    serde_json::from_slice(&bytes).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use georep_mesh::ManualClock;
    use std::path::Path;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        monitor: MonitorArgs,
    }

    #[test]
    fn arguments_parse_as_the_agent_passes_them() {
        let cli = Cli::try_parse_from([
            "monitor",
            "--session-dir",
            "/var/lib/georep/geo-replication/gv0_n4_gv1",
            "--bricks",
            "/data/b1,/data/b2",
            "--node",
            "n1",
            "--session",
            "gv0_n4_gv1",
        ])
        .unwrap();
        assert_eq!(cli.monitor.bricks, vec!["/data/b1", "/data/b2"]);
        assert_eq!(cli.monitor.session.as_deref(), Some("gv0_n4_gv1"));
        assert!(Cli::try_parse_from(["monitor", "--session-dir", "/x", "--node", "n1"]).is_err());
    }

    #[test]
    fn status_file_names_of_different_bricks_differ() {
        assert_ne!(status_file_name("/a%2Fb"), status_file_name("/a/b"));
        assert_eq!(status_file_name("/a%2Fb"), "%2Fa%252Fb.status");
    }

    #[test]
    fn status_file_names_escape_slashes() {
        assert_eq!(
            status_file_name("/data/gv0/b1"),
            "%2Fdata%2Fgv0%2Fb1.status"
        );
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn status_of(dir: &Path, brick: &str) -> Option<String> {
        read_status(dir, brick).ok().map(|s| s.status.to_string())
    }

    #[tokio::test]
    async fn workers_follow_the_active_brick_list_and_report_stopped_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let session_dir = dir.path().to_path_buf();
        let clock = ManualClock::new(1_700_000_000_000);
        let shutdown = CancellationToken::new();
        let mut handles = Vec::new();
        for brick in ["/data/b1", "/data/b2"] {
            let worker = Worker::new(session_dir.clone(), brick.into())
                .with_poll_interval(Duration::from_millis(100))
                .with_clock(Arc::new(clock.clone()));
            handles.push(tokio::spawn(worker.run(shutdown.clone())));
        }
        // On this single-threaded runtime the workers run only while the test awaits:
        // yielding (no time passes for their timers) lets each write its first status,
        // which is then read before they can run again.
        for _ in 0..1000 {
            if status_of(&session_dir, "/data/b1").is_some()
                && status_of(&session_dir, "/data/b2").is_some()
            {
                break;
            }
            tokio::task::yield_now().await;
        }
        let first = read_status(&session_dir, "/data/b1").unwrap();
        assert_eq!(first.status, WorkerStatus::Initializing);
        assert_eq!(first.crawl_status, CrawlStatus::NotApplicable);
        assert_eq!(first.last_synced, None);
        assert_eq!(first.updated_ms, 1_700_000_000_000);
        let raw: serde_json::Value = serde_json::from_slice(
            &std::fs::read(session_dir.join("%2Fdata%2Fb1.status")).unwrap(),
        )
        .unwrap();
        for key in [
            "brick",
            "status",
            "crawl_status",
            "last_synced",
            "entry",
            "data",
            "meta",
            "failures",
            "checkpoint_time",
            "checkpoint_completed",
            "checkpoint_completion_time",
            "updated_ms",
        ] {
            assert!(raw.get(key).is_some(), "{key} missing in {raw}");
        }

        // no list yet: nothing is Active
        eventually("Passive", || {
            status_of(&session_dir, "/data/b1").as_deref() == Some("Passive")
        })
        .await;
        clock.advance(5);
        std::fs::write(session_dir.join(ACTIVE_BRICKS_FILE), "/data/b1\n").unwrap();
        eventually("b1 Active", || {
            status_of(&session_dir, "/data/b1").as_deref() == Some("Active")
        })
        .await;
        assert_eq!(
            status_of(&session_dir, "/data/b2").as_deref(),
            Some("Passive")
        );
        assert_eq!(
            read_status(&session_dir, "/data/b1").unwrap().updated_ms,
            1_700_000_000_005
        );
        std::fs::write(session_dir.join(ACTIVE_BRICKS_FILE), "/data/b2\n").unwrap();
        eventually("failover", || {
            status_of(&session_dir, "/data/b1").as_deref() == Some("Passive")
                && status_of(&session_dir, "/data/b2").as_deref() == Some("Active")
        })
        .await;

        shutdown.cancel();
        for handle in handles {
            handle.await.unwrap().unwrap();
        }
        assert_eq!(
            status_of(&session_dir, "/data/b1").as_deref(),
            Some("Stopped")
        );
        assert_eq!(
            status_of(&session_dir, "/data/b2").as_deref(),
            Some("Stopped")
        );
        let leftovers: Vec<_> = std::fs::read_dir(&session_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn worker_fails_when_its_status_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::new(dir.path().join("missing"), "/data/b1".into());
        let error = worker.run(CancellationToken::new()).await.unwrap_err();
        assert!(
            error.to_string().contains("cannot write worker status"),
            "{error}"
        );
    }
}
