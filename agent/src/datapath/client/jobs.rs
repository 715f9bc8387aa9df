//! Large files in flight, each on a QUIC stream of its own (`sync-jobs`): a job opens
//! the file's write on the secondary (which answers what chunks it lacks), sends those
//! in pieces and has the file written, while the worker's main stream goes on.

use std::path::{Path, PathBuf};

use georep_datapath::index::paths_at_and_below;
use georep_datapath::proto::{Request, Response};
use georep_datapath::{Known, Op, RelPath};

use super::send::{MAX_IN_FLIGHT, read_chunks, unique_wanted};
use super::{BATCH_BYTES, Channel};

/// Large files in flight, each on a stream of its own (up to `sync-jobs` of them, the
/// streams kept for the connection's life): a job asks the secondary which chunks of
/// one file it lacks, sends them and has the file written, while the main stream goes
/// on with entries and small files and other jobs with other files.
pub(super) struct Jobs {
    conn: quinn::Connection,
    session: String,
    replica_set: u32,
    brick: PathBuf,
    /// Most jobs at once.
    pub(super) max: usize,
    /// Streams opened and not busy.
    idle: Vec<Channel>,
    running: tokio::task::JoinSet<JobDone>,
    /// Paths being written (a set: the values are unused).
    pending: std::collections::BTreeMap<RelPath, ()>,
    /// Files written, their chunk bytes sent, and the paths that failed, since taken.
    pub(super) written: u64,
    pub(super) bytes_sent: u64,
    pub(super) failed: Vec<RelPath>,
}

/// A finished job: its stream (to use again), its file, and its outcome (chunk bytes
/// sent and `Some(why)` if the file was not written; an error if the stream failed).
struct JobDone {
    channel: Channel,
    path: RelPath,
    outcome: Result<(u64, Option<String>), String>,
}

impl Jobs {
    pub(super) fn new(
        conn: quinn::Connection,
        session: String,
        replica_set: u32,
        brick: PathBuf,
    ) -> Self {
        Jobs {
            conn,
            session,
            replica_set,
            brick,
            max: 1,
            idle: Vec::new(),
            running: tokio::task::JoinSet::new(),
            pending: Default::default(),
            written: 0,
            bytes_sent: 0,
            failed: Vec::new(),
        }
    }

    /// Whether `op` names a path being written or a directory above one.
    pub(super) fn touches(&self, op: &Op) -> bool {
        let mut named = vec![op.path()];
        match op {
            Op::Rename { from, .. } => named.push(from),
            Op::Link { existing, .. } => named.push(existing),
            _ => {}
        }
        !self.pending.is_empty()
            && named
                .into_iter()
                .any(|path| !paths_at_and_below(&self.pending, path).is_empty())
    }

    /// Starts writing the large file `op` writes, once fewer than `max` jobs run.
    pub(super) async fn start(&mut self, op: Op, known: Option<Known>) -> Result<(), String> {
        while self.running.len() >= self.max.max(1) {
            self.join_one().await?;
        }
        let mut channel = match self.idle.pop() {
            Some(channel) => channel,
            None => {
                let (send, recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
                let mut channel = Channel { send, recv };
                let hello = Request::Hello {
                    session: self.session.clone(),
                    replica_set: self.replica_set,
                    index: false,
                };
                match channel.call(&hello).await? {
                    Response::Ready { .. } => {}
                    other => return Err(format!("unexpected answer to hello: {other:?}")),
                }
                channel
            }
        };
        let path = op.path().clone();
        self.pending.insert(path.clone(), ());
        let brick = self.brick.clone();
        self.running.spawn(async move {
            let outcome = write_large(&brick, (&op, known), &mut channel).await;
            JobDone {
                channel,
                path,
                outcome,
            }
        });
        Ok(())
    }

    /// Waits for one job to finish.
    async fn join_one(&mut self) -> Result<(), String> {
        let Some(done) = self.running.join_next().await else {
            return Ok(());
        };
        let done = done.map_err(|e| format!("a sync job failed: {e}"))?;
        self.pending.remove(&done.path);
        let (sent, refused) = done.outcome?;
        self.bytes_sent += sent;
        match refused {
            None => self.written += 1,
            Some(error) => {
                tracing::warn!(path = %done.path, %error, "not written; retried next round");
                self.failed.push(done.path);
            }
        }
        self.idle.push(done.channel);
        Ok(())
    }

    /// Waits for every job to finish.
    pub(super) async fn join_all(&mut self) -> Result<(), String> {
        while !self.running.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }
}

/// Writes the large file `op` writes through `call`: asks which chunks the secondary
/// lacks, sends those (staged in pieces when they do not fit one message) and has the
/// file written. Chunk bytes sent, and why the file was not written if it was not.
async fn write_large(
    brick: &Path,
    (op, known): (&Op, Option<Known>),
    call: &mut Channel,
) -> Result<(u64, Option<String>), String> {
    let Op::Write { path, chunks, .. } = op else {
        return Ok((0, Some("not a write".into())));
    };
    let open = Request::Open {
        write: op.clone(),
        known,
    };
    let wanted = match call.call(&open).await? {
        Response::Missing(hashes) => hashes,
        other => return Err(format!("unexpected answer to open: {other:?}")),
    };
    let to_send = unique_wanted(chunks, &wanted);
    let wanted_bytes: u64 = to_send.iter().map(|c| u64::from(c.len)).sum();
    let (sent, data) = if wanted_bytes > (BATCH_BYTES / 2) as u64 {
        // Too large for one message: sent ahead of the batch, in pieces.
        match stage_chunks(brick, path, &to_send, call).await {
            Ok(sent) => (sent, Vec::new()),
            Err(StageError::Read(error)) => return Ok((0, Some(format!("cannot read: {error}")))),
            Err(StageError::Wire(error)) => return Err(error),
        }
    } else {
        match read_chunks(brick, path, &to_send) {
            Ok(data) => (wanted_bytes, data),
            Err(error) => return Ok((0, Some(format!("cannot read: {error}")))),
        }
    };
    match call.call(&Request::Batch(vec![(op.clone(), data)])).await? {
        Response::Applied(results) => Ok((sent, results.into_iter().next().flatten())),
        other => Err(format!("unexpected answer to a batch: {other:?}")),
    }
}

/// Why staging a large file's chunks stopped.
enum StageError {
    /// The file could not be read (counted as a failure, retried next round).
    Read(std::io::Error),
    /// The secondary could not be reached (the connection is retried).
    Wire(String),
}

/// Sends `to_send`, chunks of the file `path` under `brick`, as `Stage` messages of
/// at most [`BATCH_BYTES`], reading as it goes, up to [`MAX_IN_FLIGHT`] unanswered
/// (the secondary stores one while the next is read and sent); returns the bytes
/// sent once every piece is acknowledged.
async fn stage_chunks(
    brick: &Path,
    path: &RelPath,
    to_send: &[&georep_datapath::ChunkRef],
    call: &mut Channel,
) -> Result<u64, StageError> {
    use std::os::unix::fs::FileExt;
    let file = georep_datapath::chunk::open_nofollow(&brick.join(path.as_path()))
        .map_err(StageError::Read)?;
    let mut piece: Vec<georep_datapath::proto::ChunkData> = Vec::new();
    let mut piece_bytes = 0usize;
    let mut sent = 0u64;
    let mut unanswered = 0usize;
    for (i, chunk) in to_send.iter().enumerate() {
        let mut bytes = vec![0; chunk.len as usize];
        if let Err(error) = file.read_exact_at(&mut bytes, chunk.offset) {
            // What was sent is answered before the caller goes on with other requests.
            for _ in 0..unanswered {
                staged(call).await?;
            }
            return Err(StageError::Read(error));
        }
        piece_bytes += bytes.len();
        piece.push((chunk.hash, bytes.into()));
        if piece_bytes >= BATCH_BYTES || i + 1 == to_send.len() {
            if unanswered >= MAX_IN_FLIGHT {
                staged(call).await?;
                unanswered -= 1;
            }
            sent += piece_bytes as u64;
            call.send(&Request::Stage(std::mem::take(&mut piece)))
                .await
                .map_err(StageError::Wire)?;
            unanswered += 1;
            piece_bytes = 0;
        }
    }
    for _ in 0..unanswered {
        staged(call).await?;
    }
    Ok(sent)
}

/// The answer to one `Stage`.
async fn staged(call: &mut Channel) -> Result<(), StageError> {
    match call.receive().await {
        Ok(Response::Staged) => Ok(()),
        Ok(other) => Err(StageError::Wire(format!(
            "unexpected answer to stage: {other:?}"
        ))),
        Err(error) => Err(StageError::Wire(error)),
    }
}
