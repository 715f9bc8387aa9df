//! The primary side: an Active worker's sync loop.
//!
//! It connects to a live secondary (spread over them by brick, failing over to the
//! next), says which session and replica set it syncs, and receives the index of what
//! the secondary has of that replica set (saved by whichever worker was Active before:
//! a Passive taking over resumes from it, not from scratch). Then, every
//! `change-interval`: scan the brick (reusing chunk hashes of unchanged files), diff
//! against what the secondary has, send the operations in batches (the data of large
//! files only for the chunks the secondary lacks), and save the new index on the
//! secondary once it has acknowledged. What failed is counted, left out of the index
//! and retried next round; it never blocks the rest.
//!
//! Change detection: the first round after a (re)connection walks the brick (`Hybrid
//! Crawl`); after it, inotify names the directories that changed and a round re-reads
//! only those (`Changelog Crawl`); a round with nothing changed reads nothing. The
//! brick is walked again every [`FULL_SCAN_EVERY`] as a backstop, after an inotify
//! queue overflow, and every round when inotify cannot watch the brick (watch limit;
//! the crawl status then stays `Hybrid Crawl` and the log says why).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use georep_api::CrawlStatus;
use georep_datapath::index::paths_at_and_below;
use georep_datapath::journal::Touched;
use georep_datapath::proto::{Request, Response};
use georep_datapath::{Hash, Index, Op, RelPath, diff, rescan, scan};
use georep_mesh::NodeIdentity;
use tokio_util::sync::CancellationToken;

use super::watch::{BrickWatch, Changes};
use jobs::Jobs;
use send::{send_ops, walk_and_create};

mod jobs;
mod send;
use super::{WorkerPlan, read_msg, transport_config, write_msg, write_msg_and_data};

/// Largest batch of chunk data sent at once.
const BATCH_BYTES: usize = 8 << 20;
/// Most operations per batch.
const BATCH_OPS: usize = 2000;
/// A round's first batch is this many halvings of the full size (see `send_ops`).
const FIRST_BATCH_SHIFT: u32 = 3;
/// Wait before trying the secondaries again after all failed.
const RETRY: Duration = Duration::from_secs(2);
/// The first wait after a connection fails, doubled on each failure after it up to
/// [`RETRY`]: a secondary that refused only because it had not heard of this node yet
/// (an agent just started: its view is a gossip round behind) is asked again at once,
/// not a whole [`RETRY`] later.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// How often the brick is walked whole even though inotify reported nothing (what it
/// cannot see: writes through mmap, changes made while no worker ran).
pub const FULL_SCAN_EVERY: Duration = Duration::from_secs(300);

/// What the sync loop reports to the worker's status file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncProgress {
    /// Crawl status.
    pub crawl: CrawlStatus,
    /// Unix seconds of the last round that synced changes.
    pub last_synced: Option<u64>,
    /// Entry, data and metadata operations synced.
    pub entry: u64,
    /// Data operations synced.
    pub data: u64,
    /// Metadata operations synced.
    pub meta: u64,
    /// Paths that failed in the last round.
    pub failures: u64,
    /// The secondary node synced to.
    pub secondary: Option<String>,
    /// Bytes of chunk data sent.
    pub bytes_sent: u64,
    /// Why the loop cannot sync now (no secondary reachable, brick unreadable).
    pub fault: Option<String>,
    /// The checkpoint set (Unix seconds; 0: none).
    pub checkpoint: u64,
    /// When a round that started after the checkpoint finished without failures.
    pub checkpoint_completed: Option<u64>,
    /// When the worker became Active, until it first reaches a secondary (see
    /// [`SETTLING`]).
    pub starting: Option<std::time::Instant>,
}

/// How long a worker that just became Active may fail to reach a secondary and still
/// show `Initializing...` rather than Faulty: at a failover its plan may name no live
/// secondary yet, or a dead one, until the mesh has converged (seconds).
pub const SETTLING: Duration = Duration::from_secs(10);

impl SyncProgress {
    /// Copies what the status file shows into `status`: an Active worker shows
    /// `Initializing...` until it has first reached a secondary, and one that cannot
    /// sync (no secondary reachable, brick unreadable) shows Faulty until it can (not in
    /// its first [`SETTLING`] since it became Active).
    pub fn apply_to(&self, status: &mut crate::monitor::BrickStatus) {
        if status.status == georep_api::WorkerStatus::Active {
            let settling = self.starting.is_some_and(|at| at.elapsed() < SETTLING);
            if self.fault.is_some() && !settling {
                status.status = georep_api::WorkerStatus::Faulty;
            } else if self.starting.is_some() {
                status.status = georep_api::WorkerStatus::Initializing;
            }
        }
        status.crawl_status = self.crawl.clone();
        status.last_synced = self.last_synced.map(format_time);
        status.entry = self.entry;
        status.data = self.data;
        status.meta = self.meta;
        status.failures = self.failures;
        status.bytes_sent = self.bytes_sent;
        status.secondary_node.clone_from(&self.secondary);
        status.checkpoint_time = (self.checkpoint > 0).then(|| format_time(self.checkpoint));
        status.checkpoint_completed = self.checkpoint > 0 && self.checkpoint_completed.is_some();
        status.checkpoint_completion_time = self
            .checkpoint_completed
            .filter(|_| self.checkpoint > 0)
            .map(format_time);
    }
}

/// `2026-12-03 10:00:00`, as gsyncd shows times (UTC).
pub fn format_time(unix_s: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix_s))
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl SyncProgress {
    /// Notes the checkpoint `plan` sets, and that a round started at `round_started`
    /// ended with `failures` failures.
    fn round_done(&mut self, checkpoint: u64, round_started: u64, failures: u64) {
        if self.checkpoint != checkpoint {
            self.checkpoint = checkpoint;
            self.checkpoint_completed = None;
        }
        // A round that started a second after the checkpoint: a change made just before
        // it has had its notification delivered by then.
        if checkpoint > 0
            && self.checkpoint_completed.is_none()
            && failures == 0
            && round_started > checkpoint
        {
            self.checkpoint_completed = Some(now_s());
        }
    }
}

/// Syncs `brick` while not cancelled, reporting into `progress`.
pub async fn run(
    brick: PathBuf,
    plan_file: PathBuf,
    progress: Arc<Mutex<SyncProgress>>,
    cancel: CancellationToken,
) {
    let report = |f: &dyn Fn(&mut SyncProgress)| update(&progress, f);
    let root = brick.clone();
    // Watching a large tree (a watch per directory) takes a while: the first
    // connection, its Hello and the saved index's download go on meanwhile, and only
    // the first walk waits for it.
    let mut watch = Watch::Starting(tokio::task::spawn_blocking(move || {
        BrickWatch::start(&root)
    }));
    let mut attempt = 0usize;
    let mut backoff = FIRST_RETRY;
    while !cancel.is_cancelled() {
        let plan = match read_plan(&plan_file) {
            Ok(plan) => plan,
            Err(error) => {
                report(&|p| p.fault = Some(error.clone()));
                sleep_or_cancel(&cancel, RETRY).await;
                continue;
            }
        };
        let Some(replica_set) = plan.replica_sets.get(&brick.display().to_string()).copied() else {
            report(&|p| p.fault = Some("brick not in the plan".into()));
            sleep_or_cancel(&cancel, RETRY).await;
            continue;
        };
        if plan.secondaries.is_empty() {
            report(&|p| p.fault = Some("no live secondary node".into()));
            sleep_or_cancel(&cancel, RETRY).await;
            continue;
        }
        // Spread bricks over secondaries; on failure try the next one.
        let start = brick_hash(&brick) as usize + attempt;
        let (node, addr) = plan.secondaries[start % plan.secondaries.len()].clone();
        let began = std::time::Instant::now();
        let running = session(
            (&brick, &mut watch),
            (&plan, &plan_file),
            replica_set,
            &node,
            addr,
            &progress,
            &cancel,
        );
        tokio::pin!(running);
        // The session looks at `cancel` between rounds; a round (a first sync of a
        // large brick, a secondary that stopped answering) may take much longer than
        // the supervisor waits before its SIGKILL. It gets STOP_GRACE to end cleanly,
        // then is dropped where it is: as a lost connection, which the next start
        // recovers from (the secondary journals every batch before applying it).
        let outcome = tokio::select! {
            outcome = &mut running => outcome,
            () = cancel.cancelled() => match tokio::time::timeout(STOP_GRACE, &mut running).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    tracing::info!(brick = %brick.display(), secondary = %node, "stopped in the middle of a round; the next start goes on from what the secondary applied");
                    return;
                }
            },
        };
        match outcome {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(brick = %brick.display(), secondary = %node, %error, "sync interrupted; trying again");
                attempt += 1;
                // Faulty only once every secondary has failed in turn.
                let all_failed = attempt.is_multiple_of(plan.secondaries.len());
                report(&|p| {
                    if all_failed {
                        p.fault = Some(format!("{node}: {error}"));
                    }
                    p.crawl = CrawlStatus::NotApplicable;
                });
                if began.elapsed() > SETTLING {
                    // It ran: this failure is news, not the next of a series.
                    backoff = FIRST_RETRY;
                }
                sleep_or_cancel(&cancel, backoff).await;
                backoff = (backoff * 2).min(RETRY);
            }
        }
    }
}

/// How long a cancelled worker lets its round run on to a clean end (its index saved)
/// before dropping it mid-round: less than the supervisor's grace between SIGTERM and
/// SIGKILL (5 s by default), so that the monitor still exits by itself and reports
/// Stopped.
const STOP_GRACE: Duration = Duration::from_secs(2);
const _: () = assert!(
    STOP_GRACE.as_millis() < crate::reconcile::DEFAULT_KILL_GRACE.as_millis(),
    "a stopped monitor must end its round before the supervisor's SIGKILL"
);

/// A brick's change watch: being set up, ready, or failed to start.
enum Watch {
    Starting(tokio::task::JoinHandle<BrickWatch>),
    Ready(BrickWatch),
    Failed(String),
}

impl Watch {
    /// The watch, once its setup has finished.
    async fn ready(&mut self) -> Result<&BrickWatch, String> {
        if let Watch::Starting(setup) = self {
            *self = match setup.await {
                Ok(watch) => Watch::Ready(watch),
                Err(error) => Watch::Failed(format!("cannot start watching the brick: {error}")),
            };
        }
        match self {
            Watch::Ready(watch) => Ok(watch),
            Watch::Failed(error) => Err(error.clone()),
            Watch::Starting(_) => Err("the brick's watch is still starting".into()),
        }
    }
}

/// Applies `f` to the shared progress (a poisoned lock skips the report).
fn update(progress: &Mutex<SyncProgress>, f: &dyn Fn(&mut SyncProgress)) {
    if let Ok(mut p) = progress.lock() {
        f(&mut p);
    }
}

async fn sleep_or_cancel(cancel: &CancellationToken, wait: Duration) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(wait) => {}
    }
}

fn brick_hash(brick: &Path) -> u32 {
    crc32fast::hash(brick.as_os_str().as_encoded_bytes())
}

fn read_plan(path: &Path) -> Result<WorkerPlan, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("cannot parse {}: {e}", path.display()))
}

/// One connection's life: until cancelled (`Ok`) or the connection fails (`Err`).
async fn session(
    (brick, watch): (&Path, &mut Watch),
    (plan, plan_file): (&WorkerPlan, &Path),
    replica_set: u32,
    node: &str,
    addr: SocketAddr,
    progress: &Arc<Mutex<SyncProgress>>,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let [ca, cert, key] = &plan.tls;
    let identity = NodeIdentity::load(ca, cert, key).map_err(|e| e.to_string())?;
    let crypto = identity
        .client_config_for(georep_datapath::proto::ALPN)
        .map_err(|e| e.to_string())?;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config());
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = super::endpoint(bind, None).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(addr, "georep")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut call = Channel { send, recv };
    let hello = Request::Hello {
        session: plan.session.clone(),
        replica_set,
        index: true,
    };
    let (index_len, unsaved, present) = match call.call(&hello).await? {
        Response::Ready {
            index_len,
            unsaved,
            present,
        } => (index_len, unsaved, present),
        other => return Err(format!("unexpected answer to hello: {other:?}")),
    };
    let (mut synced, read_whole): (Index, bool) = match index_len {
        Some(len) => {
            let bytes = read_index(&mut call, len).await?;
            match postcard::from_bytes(&bytes) {
                Ok(index) => (index, true),
                Err(_) => (Index::default(), false),
            }
        }
        None => (Index::default(), false),
    };
    // A round's save sends only what changed when `synced` is exactly the saved index
    // (see `save_index`); the first save after anything forgotten here is whole.
    let mut saved_is_synced = read_whole && unsaved.is_empty();
    // What a worker before us applied without saving the index: whatever is there now
    // is sent again or removed, never assumed.
    synced.forget(&unsaved, &present);
    let watch = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        watch = watch.ready() => watch?,
    };
    tracing::info!(brick = %brick.display(), secondary = %node, entries = synced.entries.len(), unsaved = unsaved.len(), "syncing");
    let mut jobs = Jobs::new(
        conn.clone(),
        plan.session.clone(),
        replica_set,
        brick.to_path_buf(),
    );
    let set = |f: &dyn Fn(&mut SyncProgress)| update(progress, f);
    set(&|p| {
        p.secondary = Some(node.to_string());
        p.fault = None;
        p.starting = None;
        p.crawl = CrawlStatus::Hybrid;
    });
    let mut first = true;
    let mut live = plan.clone();
    let mut cache: Option<Index> = None;
    let mut last_full = std::time::Instant::now();
    // Directories to read again next round: where something failed.
    let mut retry: std::collections::BTreeSet<PathBuf> = Default::default();
    while !cancel.is_cancelled() {
        if let Some(reason) = conn.close_reason() {
            return Err(format!("connection lost: {reason}"));
        }
        // Live settings (ignore-deletes, change-interval, checkpoint) apply from the
        // next round on; an unreadable plan file keeps the last one read.
        if let Ok(read) = read_plan(plan_file) {
            live = read;
        }
        let plan = &live;
        let round_started = now_s();
        let round_clock = std::time::Instant::now();
        let changes = watch.take();
        let read = match (cache.take(), changes) {
            (own, Changes::Full(why)) => Read::Walk(own, Some(why)),
            (own, _) if first => Read::Walk(own, Some("first round".into())),
            (Some(own), _) if last_full.elapsed() >= FULL_SCAN_EVERY => Read::Walk(Some(own), None),
            (Some(own), Changes::None) if retry.is_empty() => Read::Nothing(own),
            (Some(own), Changes::None) => Read::Dirs(own, std::mem::take(&mut retry)),
            (Some(own), Changes::Dirs(mut dirs)) => {
                dirs.append(&mut retry);
                Read::Dirs(own, dirs)
            }
            (None, _) => Read::Walk(None, None),
        };
        if let Read::Walk(_, Some(why)) = &read {
            tracing::debug!(brick = %brick.display(), %why, "walking the brick");
            set(&|p| p.crawl = CrawlStatus::Hybrid);
        }
        let is_walk = matches!(read, Read::Walk(..));
        // Nothing changed and the last round left nothing to retry: the secondary has
        // what the brick has, no diff needed.
        let idle = matches!(read, Read::Nothing(_));
        let root = brick.to_path_buf();
        // A walk without a scan of ours reuses hashes from what the secondary has
        // (copied only then: most rounds read nothing or a few directories).
        let base = matches!(read, Read::Walk(None, _)).then(|| synced.clone());
        jobs.max = plan.sync_jobs;
        // The first walk of a brick the secondary has nothing of creates the tree there
        // as it goes; then, what that sent and the secondary applied (counts, chunk
        // bytes, the entries as they are there now).
        let mut created: Option<(Counts, u64, Index)> = None;
        let scanned = if first && synced.entries.is_empty() && matches!(read, Read::Walk(None, _)) {
            let (walked, counts, bytes, there) =
                walk_and_create(brick, &mut call, &mut jobs).await?;
            created = Some((counts, bytes, there));
            walked
        } else {
            tokio::task::spawn_blocking(move || match read {
                Read::Nothing(own) => Ok((own, Default::default())),
                Read::Dirs(own, dirs) => rescan(&root, own, &dirs),
                Read::Walk(own, _) => scan(&root, own.as_ref().or(base.as_ref())),
            })
            .await
            .map_err(|e| e.to_string())?
        };
        let scanned_after = round_clock.elapsed();
        let (mut now, report) = match scanned {
            Ok(scanned) => scanned,
            Err(error) => {
                set(&|p| p.fault = Some(format!("brick unreadable: {error}")));
                sleep_or_cancel(cancel, RETRY).await;
                continue;
            }
        };
        if is_walk {
            last_full = std::time::Instant::now();
        }
        // What could not be read is as the secondary has it (not removed there).
        keep_unreadable(&mut now, &synced, &report.failures);
        if first {
            // The index may come from another replica's worker: its inodes are not
            // ours. Same path, same kind and content: the same entry. The saved index
            // then differs from `synced` in more than the round changes: saved whole.
            if adopt_inodes(&mut synced, &now) {
                saved_is_synced = false;
            }
        }
        let mut ops = match &created {
            _ if idle => Vec::new(),
            Some((_, _, there)) => diff(there, &now),
            None => diff(&synced, &now),
        };
        if !idle {
            tracing::debug!(
                ops = ops.len(),
                walk = is_walk,
                hashed = report.files_hashed,
                "round"
            );
        }
        if plan.ignore_deletes {
            ops.retain(|op| !matches!(op, Op::Remove { .. }));
        }
        let mut failed: BTreeSet<RelPath> =
            report.failures.iter().map(|(p, _)| p.clone()).collect();
        if !ops.is_empty() || created.is_some() {
            let (mut counts, mut bytes, op_failures) =
                send_ops((brick, &synced), &ops, &mut call, &mut jobs).await?;
            if let Some(((entry, data, meta), sent, _)) = &created {
                counts.0 += entry;
                counts.1 += data;
                counts.2 += meta;
                bytes += sent;
            }
            let sent_after = round_clock.elapsed();
            // The secondary now has `now`, except where something failed: there, what
            // it had (a failed rename: at and below both its source and destination).
            let mut next = now.clone();
            let unread = failed.iter().map(|path| (path.clone(), false));
            restore_failed(
                &mut next,
                &synced,
                unread.chain(op_failures.iter().cloned()),
            );
            failed.extend(op_failures.into_iter().map(|(path, _)| path));
            if plan.ignore_deletes {
                for (path, entry) in &synced.entries {
                    next.entries
                        .entry(path.clone())
                        .or_insert_with(|| entry.clone());
                }
            }
            let index_bytes =
                save_index(&mut call, saved_is_synced.then_some(&synced), &next).await?;
            saved_is_synced = true;
            synced = next;
            // What a round cost (seconds in all, and when the scan and the sending
            // had ended) and how the connection carries it (datagram size found by MTU
            // discovery, packets lost so far): what to look at when a brick syncs
            // slowly.
            let path = conn.stats().path;
            tracing::info!(
                created = created
                    .as_ref()
                    .map_or(0, |(_, _, there)| there.entries.len()),
                ops = ops.len(),
                bytes,
                index_bytes,
                hashed = report.files_hashed,
                seconds = round_clock.elapsed().as_secs_f64(),
                scanned_after = scanned_after.as_secs_f64(),
                applied_after = sent_after.as_secs_f64(),
                datagram = path.current_mtu,
                lost = path.lost_packets,
                "round synced"
            );
            let now_s = now_s();
            set(&|p| {
                p.entry += counts.0;
                p.data += counts.1;
                p.meta += counts.2;
                p.bytes_sent += bytes;
                p.last_synced = Some(now_s);
            });
        }
        let failures = failed.len() as u64;
        retry.extend(
            failed
                .iter()
                .map(|path| brick.join(path.as_path()))
                .filter_map(|path| path.parent().map(Path::to_path_buf)),
        );
        let live = watch.off().is_none();
        set(&|p| {
            p.round_done(plan.checkpoint, round_started, failures);
            p.failures = failures;
            p.crawl = if live {
                CrawlStatus::Changelog
            } else {
                CrawlStatus::Hybrid
            };
            p.fault = None;
        });
        cache = Some(now);
        first = false;
        sleep_or_cancel(cancel, Duration::from_secs(plan.change_interval_s.max(1))).await;
    }
    let _ = call.send.finish();
    conn.close(quinn::VarInt::from_u32(0), b"done");
    endpoint.wait_idle().await;
    Ok(())
}

/// Reads the saved index, `len` bytes, in parts.
async fn read_index(call: &mut Channel, len: u64) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    while (bytes.len() as u64) < len {
        let offset = bytes.len() as u64;
        match call.call(&Request::ReadIndex { offset }).await? {
            Response::IndexPart(part) if !part.is_empty() => bytes.extend_from_slice(&part),
            other => return Err(format!("unexpected answer to read index: {other:?}")),
        }
    }
    Ok(bytes)
}

/// Saves `index` on the secondary, in parts when it is large: only what changed since
/// `saved` when that is the index saved there, else whole. Returns the bytes sent.
async fn save_index(
    call: &mut Channel,
    saved: Option<&Index>,
    index: &Index,
) -> Result<u64, String> {
    use georep_datapath::index_log::IndexDelta;
    use georep_datapath::proto::INDEX_PART;
    let bytes = match saved {
        Some(saved) => postcard::to_stdvec(&IndexDelta::between(saved, index)),
        None => postcard::to_stdvec(index),
    }
    .map_err(|e| e.to_string())?;
    // Never empty (postcard writes a map's length), so there is a last part: an empty
    // delta is sent too, which tells the secondary that what it applied is saved.
    let mut parts = bytes.chunks(INDEX_PART).peekable();
    while let Some(part) = parts.next() {
        let request = match (parts.peek().is_some(), saved.is_some()) {
            (true, _) => Request::SaveIndexPart(part.to_vec().into()),
            (false, true) => Request::SaveIndexDelta(part.to_vec().into()),
            (false, false) => Request::SaveIndex(part.to_vec().into()),
        };
        match call.call(&request).await? {
            Response::Saved => {}
            other => return Err(format!("unexpected answer to save: {other:?}")),
        }
    }
    Ok(bytes.len() as u64)
}

/// What a round reads of the brick.
enum Read {
    /// Nothing changed: the last scan stands.
    Nothing(Index),
    /// Only these directories changed (the last scan, and the directories).
    Dirs(Index, std::collections::BTreeSet<PathBuf>),
    /// Walk the whole brick (reusing hashes of the last scan if there is one; why, when
    /// it is not the routine backstop).
    Walk(Option<Index>, Option<String>),
}

/// Puts back into `now`, for every path that could not be read (and what is below it),
/// what `synced` has there: an unreadable file or directory is not a deleted one.
fn keep_unreadable(now: &mut Index, synced: &Index, failures: &[(RelPath, String)]) {
    for (path, _) in failures {
        for p in paths_at_and_below(&synced.entries, path) {
            if let Some(entry) = synced.entries.get(&p) {
                now.entries.insert(p, entry.clone());
            }
        }
    }
}

/// Takes `now`'s inodes for entries of `synced` at the same path with the same kind
/// and content; whether any differed.
fn adopt_inodes(synced: &mut Index, now: &Index) -> bool {
    let mut changed = false;
    for (path, entry) in synced.entries.iter_mut() {
        if let Some(current) = now.entries.get(path).filter(|c| c.same_content(entry))
            && entry.ino != current.ino
        {
            entry.ino = current.ino;
            changed = true;
        }
    }
    changed
}

type Counts = (u64, u64, u64);

/// Puts back in `index` what `was` has at the places `failed` names (and below those
/// flagged so), dropping what `index` has there: where an operation failed, the
/// secondary still has what it had.
fn restore_failed(index: &mut Index, was: &Index, failed: impl IntoIterator<Item = Touched>) {
    for (path, below) in failed {
        let (had, has) = if below {
            let has = paths_at_and_below(&index.entries, &path);
            (paths_at_and_below(&was.entries, &path), has)
        } else {
            (vec![path.clone()], vec![path])
        };
        for p in has {
            index.entries.remove(&p);
        }
        for p in had {
            if let Some(old) = was.entries.get(&p) {
                index.entries.insert(p, old.clone());
            }
        }
    }
}

/// The worker's stream to the secondary: one request, one response.
struct Channel {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Channel {
    async fn call(&mut self, request: &Request) -> Result<Response, String> {
        self.send(request).await?;
        self.receive().await
    }

    /// Sends a request without waiting for its answer (answers come in order).
    async fn send(&mut self, request: &Request) -> Result<(), String> {
        write_msg(&mut self.send, request)
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends a `Stage` of `chunks` without waiting for its answer.
    async fn stage(&mut self, chunks: Vec<(Hash, bytes::Bytes)>) -> Result<(), String> {
        let (heads, data): (Vec<(Hash, u32)>, Vec<bytes::Bytes>) = chunks
            .into_iter()
            // A chunk is at most MAX_CHUNK: fits in u32.
            .map(|(hash, bytes)| ((hash, bytes.len() as u32), bytes))
            .unzip();
        write_msg_and_data(&mut self.send, &Request::Stage(heads), data)
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends a `Batch` of `items` (their chunk bytes raw after it) without waiting for
    /// its answer.
    async fn batch(&mut self, items: Vec<georep_datapath::proto::BatchItem>) -> Result<(), String> {
        let (request, data) = georep_datapath::proto::batch_request(items);
        write_msg_and_data(&mut self.send, &request, data)
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends an `Append` of `chunks` (offset, bytes) without waiting for its answer.
    async fn append(&mut self, chunks: Vec<(u64, bytes::Bytes)>) -> Result<(), String> {
        let (lens, data): (Vec<u32>, Vec<bytes::Bytes>) = chunks
            .into_iter()
            // A chunk is at most MAX_CHUNK: fits in u32.
            .map(|(_, bytes)| (bytes.len() as u32, bytes))
            .unzip();
        write_msg_and_data(&mut self.send, &Request::Append(lens), data)
            .await
            .map_err(|e| e.to_string())
    }

    /// The answer to the oldest request not answered yet.
    async fn receive(&mut self) -> Result<Response, String> {
        match read_msg::<Response>(&mut self.recv)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(Response::Refused(reason)) => Err(format!("refused: {reason}")),
            Some(response) => Ok(response),
            None => Err("the secondary closed the stream".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use georep_api::WorkerStatus;

    fn shown(progress: &SyncProgress) -> WorkerStatus {
        let mut status = crate::monitor::BrickStatus {
            status: WorkerStatus::Active,
            ..Default::default()
        };
        progress.apply_to(&mut status);
        status.status
    }

    #[test]
    fn an_active_worker_initializes_until_connected_and_shows_faults_after_settling() {
        let mut progress = SyncProgress::default();
        assert_eq!(shown(&progress), WorkerStatus::Active);
        progress.fault = Some("no live secondary node".into());
        assert_eq!(shown(&progress), WorkerStatus::Faulty);
        progress.starting = Some(std::time::Instant::now());
        assert_eq!(shown(&progress), WorkerStatus::Initializing);
        progress.starting =
            std::time::Instant::now().checked_sub(SETTLING + Duration::from_secs(1));
        assert_eq!(shown(&progress), WorkerStatus::Faulty);
        // Not connected yet, nothing wrong: Initializing, however long it takes.
        progress.fault = None;
        assert_eq!(shown(&progress), WorkerStatus::Initializing);
        progress.starting = Some(std::time::Instant::now());
        assert_eq!(shown(&progress), WorkerStatus::Initializing);
        // Connected.
        progress.starting = None;
        assert_eq!(shown(&progress), WorkerStatus::Active);
    }
}
