//! Large files in flight, each on a QUIC stream of its own (`sync-jobs`): a job opens
//! the file's write on the secondary (which answers what chunks it lacks), sends those
//! in pieces and has the file written, while the worker's main stream goes on. A file
//! the secondary has nothing of (a first sync's) is sent while it is read and chunked
//! instead ([`Jobs::start_new`]).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use georep_datapath::index::paths_at_and_below;
use georep_datapath::proto::{Request, Response};
use georep_datapath::{ChunkRef, Hash, Known, Op, RelPath};

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
    /// Files sent while read ([`Jobs::start_new`]) and written, with what they were
    /// found to be: chunks, content identity, size.
    pub(super) streamed: Vec<(RelPath, Streamed)>,
}

/// What a file sent while it was read turned out to be: its chunks, content identity
/// and size.
pub(super) type Streamed = (Vec<ChunkRef>, Hash, u64);

/// A finished job: its stream (to use again), its file, and its outcome (chunk bytes
/// sent and `Some(why)` if the file was not written; an error if the stream failed).
struct JobDone {
    channel: Channel,
    path: RelPath,
    outcome: Result<(u64, Option<String>), String>,
    /// A file sent while read: what it was.
    streamed: Option<Streamed>,
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
            streamed: Vec::new(),
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
        let mut channel = self.channel().await?;
        let path = op.path().clone();
        self.pending.insert(path.clone(), ());
        let brick = self.brick.clone();
        self.running.spawn(async move {
            let outcome = write_large(&brick, (&op, known), &mut channel).await;
            JobDone {
                channel,
                path,
                outcome,
                streamed: None,
            }
        });
        Ok(())
    }

    /// Starts sending the file at `path`, which the secondary has nothing of, while
    /// reading and chunking it (one pass over it instead of two), once fewer than
    /// `max` jobs run. What it was found to be is in `streamed` once written.
    pub(super) async fn start_new(&mut self, path: RelPath) -> Result<(), String> {
        let mut channel = self.channel().await?;
        self.pending.insert(path.clone(), ());
        let brick = self.brick.clone();
        self.running.spawn(async move {
            let (outcome, streamed) = match stream_new(&brick, &path, &mut channel).await {
                Ok((sent, Ok(streamed))) => (Ok((sent, None)), Some(streamed)),
                Ok((sent, Err(why))) => (Ok((sent, Some(why))), None),
                Err(error) => (Err(error), None),
            };
            JobDone {
                channel,
                path,
                outcome,
                streamed,
            }
        });
        Ok(())
    }

    /// A stream for the next job, once fewer than `max` run.
    async fn channel(&mut self) -> Result<Channel, String> {
        while self.running.len() >= self.max.max(1) {
            self.join_one().await?;
        }
        Ok(match self.idle.pop() {
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
        })
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
            None => {
                self.written += 1;
                if let Some(streamed) = done.streamed {
                    self.streamed.push((done.path.clone(), streamed));
                }
            }
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
    call.batch(vec![(op.clone(), data)]).await?;
    match call.receive().await? {
        Response::Applied(results) => Ok((sent, results.into_iter().next().flatten())),
        other => Err(format!("unexpected answer to a batch: {other:?}")),
    }
}

/// Sends the file `path` under `brick`, new to the secondary, while reading it: opens
/// its write (`OpenNew`), hands its chunks over as the chunker finds them (`Append`,
/// [`MAX_IN_FLIGHT`] pieces unanswered; the secondary hashes them as it writes them
/// and answers the hashes), and has the file written with the chunk list so found.
/// Chunk bytes sent, and what the file was (or why it was not written).
async fn stream_new(
    brick: &Path,
    path: &RelPath,
    call: &mut Channel,
) -> Result<(u64, Result<Streamed, String>), String> {
    match call.call(&Request::OpenNew { path: path.clone() }).await? {
        Response::Opened => {}
        other => return Err(format!("unexpected answer to open: {other:?}")),
    }
    let file = match georep_datapath::chunk::open_nofollow(&brick.join(path.as_path())) {
        Ok(file) => file,
        // Nothing appended: the write fails on the secondary, as it would here.
        Err(error) => return Ok((0, Err(format!("cannot read: {error}")))),
    };
    let (pieces, mut found) = tokio::sync::mpsc::channel::<Vec<(u64, Bytes)>>(1);
    let chunker = tokio::task::spawn_blocking(move || {
        georep_datapath::chunk::cut_pieces(file, BATCH_BYTES, |piece| {
            pieces.blocking_send(piece).is_ok()
        })
    });
    let mut sent = 0u64;
    // Where the chunks of each piece not answered yet are, oldest first.
    let mut unanswered: std::collections::VecDeque<Vec<(u64, u32)>> = Default::default();
    let mut chunks = Vec::new();
    let mut wire = Ok(());
    while let Some(piece) = found.recv().await {
        if unanswered.len() >= MAX_IN_FLIGHT
            && let Err(error) = appended(call, &mut unanswered, &mut chunks).await
        {
            wire = Err(error);
            break;
        }
        // A chunk is at most MAX_CHUNK: fits in u32.
        let places = piece.iter().map(|(at, b)| (*at, b.len() as u32)).collect();
        sent += piece.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        if let Err(error) = call.append(piece).await {
            wire = Err(error);
            break;
        }
        unanswered.push_back(places);
    }
    // The chunker stops at its next piece once this end is gone.
    drop(found);
    let cut = chunker.await.map_err(|e| e.to_string())?;
    wire?;
    while !unanswered.is_empty() {
        appended(call, &mut unanswered, &mut chunks).await?;
    }
    let size = match cut {
        Ok(Some(size)) => size,
        Ok(None) => return Err("the chunker stopped".into()),
        // What was appended is dropped with the open write (the next one replaces it).
        Err(error) => return Ok((sent, Err(format!("cannot read: {error}")))),
    };
    // If the secondary dropped the write, `chunks` falls short and the write below
    // fails with why.
    let content = georep_datapath::chunk::content_id(&chunks);
    let op = Op::Write {
        path: path.clone(),
        size,
        content,
        chunks: chunks.clone(),
        meta: None,
    };
    call.batch(vec![(op, Vec::new())]).await?;
    match call.receive().await? {
        Response::Applied(results) => Ok((
            sent,
            match results.into_iter().next().flatten() {
                None => Ok((chunks, content, size)),
                Some(why) => Err(why),
            },
        )),
        other => Err(format!("unexpected answer to a batch: {other:?}")),
    }
}

/// The answer to the oldest `Append` unanswered: its chunks, with the hashes the
/// secondary found, join `chunks` (none when it dropped the write).
async fn appended(
    call: &mut Channel,
    unanswered: &mut std::collections::VecDeque<Vec<(u64, u32)>>,
    chunks: &mut Vec<ChunkRef>,
) -> Result<(), String> {
    let hashes = match call.receive().await? {
        Response::Appended(hashes) => hashes,
        other => return Err(format!("unexpected answer to append: {other:?}")),
    };
    let places = unanswered.pop_front().unwrap_or_default();
    if hashes.len() == places.len() {
        chunks.extend(
            places
                .into_iter()
                .zip(hashes)
                .map(|((offset, len), hash)| ChunkRef { offset, len, hash }),
        );
    }
    Ok(())
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
    let mut piece: Vec<(Hash, Bytes)> = Vec::new();
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
            call.stage(std::mem::take(&mut piece))
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
