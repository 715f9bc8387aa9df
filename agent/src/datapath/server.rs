//! The secondary side: accepts workers' connections on the data endpoint, checks who
//! they are and what they may write, and applies their operations under this node's
//! brick of the session's secondary volume.
//!
//! A stream is accepted only when the session exists, this node hosts a brick of its
//! secondary volume, and the peer (by its certificate) hosts a brick of its primary
//! volume. Everything else about safety (no `..`, no symlinks on the way, hashes) is
//! the applier's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use georep_datapath::index::PROGRESS_DIR;
use georep_datapath::proto::{Request, Response};
use georep_datapath::{Applier, FileData, Op, journal, proto};
use georep_mesh::{NodeIdentity, SessionView};
use tokio_util::sync::CancellationToken;

use super::saved_index::SavedIndex;
use super::{read_data, read_msg, transport_config, write_msg};
use crate::agent::Agent;

/// Binds the data endpoint on `addr`.
pub fn bind(
    identity: &NodeIdentity,
    addr: std::net::SocketAddr,
) -> anyhow::Result<quinn::Endpoint> {
    use anyhow::Context;
    let crypto = identity
        .server_config_for(proto::ALPN)
        .context("data path TLS configuration")?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .context("data path TLS configuration unusable for QUIC")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config());
    super::endpoint(addr, Some(config)).with_context(|| format!("cannot listen on {addr}"))
}

/// Serves workers until `shutdown`.
pub async fn serve(endpoint: quinn::Endpoint, agent: Arc<Agent>, shutdown: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let agent = agent.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::debug!(%error, "data path handshake failed");
                    return;
                }
            };
            let peer = match georep_mesh::peer_node_id(&conn) {
                Ok(peer) => peer,
                Err(error) => {
                    tracing::warn!(%error, "data path peer without a node id refused");
                    return;
                }
            };
            loop {
                let (send, recv) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    stream = conn.accept_bi() => match stream {
                        Ok(stream) => stream,
                        Err(_) => return,
                    },
                };
                tokio::spawn(serve_stream(agent.clone(), peer.clone(), send, recv));
            }
        });
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
}

/// What a stream is allowed to touch, once its Hello is accepted.
struct Grant {
    applier: Arc<Applier>,
    /// The replica set's saved index, as this stream reads and saves it.
    saved: Arc<SavedIndex>,
    /// Where batches applied since the index was saved touched (see
    /// [`georep_datapath::journal`]).
    journal_file: PathBuf,
    /// The large file this stream is writing (`Open`, `Stage`s, then its batch).
    open: Arc<std::sync::Mutex<Option<OpenWrite>>>,
    /// The saved index as it was at Hello, while the worker reads it in parts.
    index: std::sync::Mutex<Option<Arc<Vec<u8>>>>,
    /// The primary volume and replica set the stream writes for (see [`fence`]).
    primary_volume: String,
    /// The replica set of `primary_volume` this stream's worker syncs.
    replica_set: u32,
}

/// A large file being written on a stream: chunks go straight into its temporary
/// copy beside the destination as they arrive.
enum OpenWrite {
    /// Being written.
    Writing(georep_datapath::PartialWrite),
    /// A staged chunk was refused (the file changed while it was read, or a hostile
    /// peer): the rest of its pieces are dropped and its write fails with this.
    Failed(georep_datapath::RelPath, String),
}

async fn serve_stream(
    agent: Arc<Agent>,
    peer: String,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut grant: Option<Grant> = None;
    // A large file's piece being stored, or a batch being applied, while the next
    // request is read (its answer goes out when done, before anything else is
    // answered): the next batch crosses the connection and is read while this one is
    // applied, not after.
    let mut storing: Option<tokio::task::JoinHandle<Response>> = None;
    loop {
        let read = {
            let read = read_request(&mut recv);
            tokio::pin!(read);
            let mut read_first = None;
            if let Some(mut pending) = storing.take() {
                let stored = tokio::select! {
                    stored = &mut pending => stored,
                    request = &mut read => {
                        read_first = Some(request);
                        pending.await
                    }
                };
                let response = stored.unwrap_or_else(|e| Response::Refused(e.to_string()));
                if let Err(error) = write_msg(&mut send, &response).await {
                    tracing::debug!(%peer, %error, "data path response not sent");
                    return;
                }
            }
            match read_first {
                Some(read) => read,
                None => read.await,
            }
        };
        let (request, data) = match read {
            Ok(Some(read)) => read,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%peer, %error, "data path stream dropped");
                return;
            }
        };
        // Every write is fenced again: a view that changed since the Hello (the peer
        // no longer the Active node here) ends the stream before anything is applied.
        if let (
            Some(granted),
            Request::Batch(_)
            | Request::SaveIndex(_)
            | Request::SaveIndexPart(_)
            | Request::SaveIndexDelta(_),
        ) = (&grant, &request)
            && let Err(reason) =
                fence(&agent, &peer, &granted.primary_volume, granted.replica_set).await
        {
            tracing::warn!(%peer, %reason, "data path write refused");
            let _ = write_msg(&mut send, &Response::Refused(reason)).await;
            return;
        }
        let request = match (&grant, request) {
            (Some(granted), request @ (Request::Stage(_) | Request::Append(_))) => {
                storing = Some(store(granted, &peer, request, data));
                continue;
            }
            (Some(granted), Request::Batch(heads)) => {
                match apply_in_background(granted, &peer, heads, data) {
                    Ok(applying) => storing = Some(applying),
                    Err(reason) => {
                        tracing::warn!(%peer, reason, "data path stream ended");
                        let _ = write_msg(&mut send, &Response::Refused(reason.into())).await;
                        return;
                    }
                }
                continue;
            }
            (_, request) => request,
        };
        let response = match (&grant, request) {
            (
                _,
                Request::Hello {
                    session,
                    replica_set,
                    index,
                },
            ) => match authorize(&agent, &peer, &session, replica_set).await {
                Ok(granted) => {
                    // A worker's first stream asks for the index; the streams of its
                    // sync jobs (large files in flight at once) do not.
                    let kind = if index { "session" } else { "sync job" };
                    tracing::info!(%peer, %session, replica_set, kind, "data path stream ready");
                    let (saved, unsaved, present) = if index {
                        let applier = granted.applier.clone();
                        let files = (granted.saved.clone(), granted.journal_file.clone());
                        tokio::task::spawn_blocking(move || saved_state(&applier, &files))
                            .await
                            .unwrap_or_default()
                    } else {
                        Default::default()
                    };
                    if !unsaved.is_empty() {
                        tracing::info!(%peer, %session, replica_set, places = unsaved.len(), present = present.len(), "batches were applied after the last saved index: what they changed is re-checked");
                    }
                    let index_len = saved.as_ref().map(|bytes| bytes.len() as u64);
                    if let Ok(mut index) = granted.index.lock() {
                        *index = saved.map(Arc::new);
                    }
                    grant = Some(granted);
                    Response::Ready {
                        index_len,
                        unsaved,
                        present,
                    }
                }
                Err(reason) => {
                    tracing::warn!(%peer, %session, %reason, "data path refused");
                    let _ = write_msg(&mut send, &Response::Refused(reason)).await;
                    let _ = send.finish();
                    return;
                }
            },
            (None, _) => {
                let _ = write_msg(&mut send, &Response::Refused("Hello first".into())).await;
                let _ = send.finish();
                return;
            }
            (Some(granted), Request::Open { write: op, known }) => {
                let applier = granted.applier.clone();
                let open = granted.open.clone();
                let journal = granted.journal_file.clone();
                let who = peer.clone();
                tokio::task::spawn_blocking(move || {
                    let Op::Write {
                        path,
                        size,
                        content,
                        chunks,
                        ..
                    } = &op
                    else {
                        return Response::Refused("Open names no file write".into());
                    };
                    if let Err(refused) = journal_write(&journal, path) {
                        return refused;
                    }
                    let (missing, have) = applier.lacking(path, chunks, known.as_ref());
                    let Ok(mut open) = open.lock() else {
                        return Response::Refused("stream state unusable".into());
                    };
                    match applier.begin_write(path, *size, content, chunks) {
                        Ok(mut write) => {
                            write.assume_current(have);
                            *open = Some(OpenWrite::Writing(write));
                            Response::Missing(missing)
                        }
                        Err(error) => {
                            // Nothing wanted: the write in the batch fails with the
                            // same error, counted and retried like any other.
                            tracing::warn!(peer = %who, %error, "data path write refused");
                            *open = None;
                            Response::Missing(Vec::new())
                        }
                    }
                })
                .await
                .unwrap_or_else(|e| Response::Refused(e.to_string()))
            }
            (Some(granted), Request::OpenNew { path }) => {
                let applier = granted.applier.clone();
                let open = granted.open.clone();
                let who = peer.clone();
                let journal = granted.journal_file.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(refused) = journal_write(&journal, &path) {
                        return refused;
                    }
                    let Ok(mut open) = open.lock() else {
                        return Response::Refused("stream state unusable".into());
                    };
                    *open = Some(match applier.begin_stream(&path) {
                        Ok(write) => OpenWrite::Writing(write),
                        Err(error) => {
                            // Its pieces are dropped; the write in the batch fails with
                            // this, counted and retried like any other.
                            tracing::warn!(peer = %who, %error, "data path write refused");
                            OpenWrite::Failed(path, error.to_string())
                        }
                    });
                    Response::Opened
                })
                .await
                .unwrap_or_else(|e| Response::Refused(e.to_string()))
            }
            // Granted streams' pieces are stored above, while the next request is read.
            // Answered in the background, above.
            (Some(_), Request::Stage(_) | Request::Append(_) | Request::Batch(_)) => {
                Response::Refused("a request out of order".into())
            }
            (Some(granted), Request::ReadIndex { offset }) => {
                let part = granted.index.lock().ok().and_then(|mut index| {
                    let bytes = index.clone()?;
                    let start = usize::try_from(offset).ok()?.min(bytes.len());
                    let end = start.saturating_add(proto::INDEX_PART).min(bytes.len());
                    if end == bytes.len() {
                        // Read to the end: not kept for the stream's life.
                        *index = None;
                    }
                    Some(bytes[start..end].to_vec())
                });
                match part {
                    Some(part) => Response::IndexPart(part.into()),
                    None => Response::Refused("no saved index to read".into()),
                }
            }
            (Some(granted), Request::SaveIndexPart(bytes)) => {
                let saved = granted.saved.clone();
                match blocking(move || saved.save_part(&bytes)).await {
                    Ok(()) => Response::Saved,
                    Err(error) => Response::Refused(format!("cannot save the index: {error}")),
                }
            }
            (Some(granted), Request::SaveIndex(bytes)) => {
                let saved = granted.saved.clone();
                index_saved(
                    granted,
                    &peer,
                    blocking(move || saved.save_whole(&bytes)).await,
                )
            }
            (Some(granted), Request::SaveIndexDelta(bytes)) => {
                let saved = granted.saved.clone();
                index_saved(
                    granted,
                    &peer,
                    blocking(move || saved.save_delta(&bytes)).await,
                )
            }
        };
        if let Err(error) = write_msg(&mut send, &response).await {
            tracing::debug!(%peer, %error, "data path response not sent");
            return;
        }
    }
}

/// The next request on a stream, with the raw bytes that follow it (the chunks of a
/// `Stage`, an `Append` or a `Batch`; none for other requests); `Ok(None)` at a clean
/// end of stream.
async fn read_request(
    recv: &mut quinn::RecvStream,
) -> Result<Option<(Request, Vec<u8>)>, super::WireError> {
    let Some(request) = read_msg::<Request>(recv).await? else {
        return Ok(None);
    };
    let data = match &request {
        Request::Stage(heads) => {
            read_data(recv, heads.iter().map(|(_, len)| u64::from(*len)).sum()).await?
        }
        Request::Append(lens) => read_data(recv, lens.iter().copied().map(u64::from).sum()).await?,
        Request::Batch(heads) => read_data(recv, proto::batch_data_len(heads)).await?,
        _ => Vec::new(),
    };
    Ok(Some((request, data)))
}

/// Journals and applies the batch `heads` whose chunk bytes are `data` off the async
/// threads; the answer to send once applied. Chunk bytes that do not match the
/// batch's lengths: the reason, the stream to end.
fn apply_in_background(
    granted: &Grant,
    peer: &str,
    heads: Vec<proto::BatchHead>,
    data: Vec<u8>,
) -> Result<tokio::task::JoinHandle<Response>, &'static str> {
    // `data` is exactly as long as the chunk lengths add up to (read so).
    let Some(items) = proto::batch_items(heads, data.into()) else {
        return Err("a batch's chunk bytes do not match its chunk lengths");
    };
    let applier = granted.applier.clone();
    let open = granted.open.clone();
    let journal = granted.journal_file.clone();
    let who = peer.to_string();
    Ok(tokio::task::spawn_blocking(move || {
        let touched = journal::touched(items.iter().map(|(op, _)| op));
        if let Err(error) = record(&journal, &touched) {
            tracing::warn!(peer = %who, %error, "batch not applied");
            return Response::Refused(format!("cannot journal the batch: {error}"));
        }
        let open = open.lock().ok().and_then(|mut open| open.take());
        Response::Applied(apply_batch(&applier, open, &who, items))
    }))
}

/// Stores a piece of the stream's open write, a `Stage` or an `Append` (`request`)
/// whose chunk bytes are `data` one after the other, off the async threads; the
/// answer to send once stored.
fn store(
    granted: &Grant,
    peer: &str,
    request: Request,
    data: Vec<u8>,
) -> tokio::task::JoinHandle<Response> {
    let open = granted.open.clone();
    let who = peer.to_string();
    tokio::task::spawn_blocking(move || {
        let (lens, hashes): (Vec<u32>, Option<Vec<georep_datapath::Hash>>) = match request {
            Request::Stage(heads) => {
                let (hashes, lens) = heads.into_iter().unzip();
                (lens, Some(hashes))
            }
            Request::Append(lens) => (lens, None),
            _ => return Response::Refused("not a piece of a file".into()),
        };
        // `data` is as long as `lens` add up to (read so): checked, not assumed.
        let Some(pieces) = proto::split_data(lens, &data.into()) else {
            return Response::Refused("a piece's bytes do not match its chunk lengths".into());
        };
        let dropped = if hashes.is_some() {
            Response::Staged
        } else {
            Response::Appended(Vec::new())
        };
        let Ok(mut open) = open.lock() else {
            return Response::Refused("stream state unusable".into());
        };
        let stored = match open.as_mut() {
            None => return Response::Refused("a piece without an open write".into()),
            Some(OpenWrite::Failed(..)) => return dropped,
            Some(OpenWrite::Writing(write)) => match hashes {
                Some(hashes) => {
                    let chunks: Vec<_> = hashes.into_iter().zip(pieces).collect();
                    write.put_all(&chunks).map(|()| Response::Staged)
                }
                None => write.append(&pieces).map(Response::Appended),
            }
            .map_err(|error| (write.path().clone(), error)),
        };
        stored.unwrap_or_else(|(path, error)| {
            tracing::warn!(peer = %who, %error, "data path chunk refused");
            *open = Some(OpenWrite::Failed(path, error.to_string()));
            dropped
        })
    })
}

/// Most entries a Hello answers as possibly changed since the index was saved (a
/// directory renamed in an interrupted round is listed whole; beyond this the answer
/// would not fit in a message).
const MAX_UNSAVED: usize = 400_000;

/// What a Hello answers: the saved index, the places batches applied after it changed
/// (from the journal), and what is now at and below them.
type SavedState = (
    Option<Vec<u8>>,
    Vec<journal::Touched>,
    Vec<(georep_datapath::RelPath, bool)>,
);

/// The saved index of a replica set, the places the journal says batches applied
/// after it changed, and what is now there.
fn saved_state(
    applier: &Applier,
    (saved, journal_file): &(Arc<SavedIndex>, PathBuf),
) -> SavedState {
    let index = saved.load();
    let places = std::fs::read(journal_file)
        .map(|bytes| journal::read(&bytes))
        .unwrap_or_default();
    // What a writer that died mid-write left: nothing else removes it.
    let swept = applier.sweep_temporaries(&places);
    if swept > 0 {
        tracing::info!(journal = %journal_file.display(), swept, "removed temporary files of interrupted writes");
    }
    let mut present = Vec::new();
    for (path, below) in &places {
        applier.present(path, *below, MAX_UNSAVED, &mut present);
    }
    if present.len() >= MAX_UNSAVED {
        tracing::warn!(
            journal = %journal_file.display(),
            limit = MAX_UNSAVED,
            "more entries changed after the last saved index than a worker can be told of: the rest may stay on the secondary until the primary changes them"
        );
    }
    present.sort();
    present.dedup();
    (index, places, present)
}

/// Runs `save` on tokio's blocking pool; a panic there is an error like any other.
async fn blocking(
    save: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    tokio::task::spawn_blocking(save)
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

/// The answer to saving the index (whole or a delta): once saved, it describes
/// everything applied, so the journal is done.
fn index_saved(granted: &Grant, peer: &str, saved: Result<(), String>) -> Response {
    if let Err(error) = saved {
        return Response::Refused(format!("cannot save the index: {error}"));
    }
    match std::fs::remove_file(&granted.journal_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(%peer, %error, "cannot empty the data path journal"),
    }
    Response::Saved
}

/// Journals the file `path` before its temporary file is created (an `Open` or
/// `OpenNew`): if this agent dies mid-write, the next worker's Hello removes what it
/// left (see `saved_state`). `Err`: the refusal to answer with.
fn journal_write(journal: &Path, path: &georep_datapath::RelPath) -> Result<(), Response> {
    record(journal, &[(path.clone(), false)])
        .map_err(|error| Response::Refused(format!("cannot journal the write: {error}")))
}

/// Appends `touched` to the journal at `path`, durably, before their batch is applied
/// (nothing to record: nothing written).
fn record(path: &Path, touched: &[journal::Touched]) -> Result<(), String> {
    use std::io::Write;
    if touched.is_empty() {
        return Ok(());
    }
    let frame = journal::frame(touched).map_err(|e| e.to_string())?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(&frame)
        .and_then(|()| file.sync_data())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Applies `items` in order; the write of the file `open` (a large file whose chunks
/// came in `Stage`s) is completed from it. Per item: `None` applied, else why not.
///
/// A run of [`PARALLEL_RUN`] or more consecutive operations that each stand alone
/// (see [`stands_alone`]) on distinct paths (a batch of small files: their
/// directories came earlier in the batch or in an earlier one) is applied on several
/// threads: each is a temporary file, a write, an fsync and a rename, or a file's
/// metadata, independent of the others, and one thread doing them in turn left the
/// other cores idle while the worker waited. Everything else keeps its order: an entry
/// operation or a directory's metadata is applied after everything before it and
/// before everything after it.
fn apply_batch(
    applier: &Applier,
    mut open: Option<OpenWrite>,
    peer: &str,
    items: Vec<georep_datapath::proto::BatchItem>,
) -> Vec<Option<String>> {
    let mut results = Vec::with_capacity(items.len());
    let mut items = items.into_iter().peekable();
    while let Some((op, data)) = items.next() {
        if stands_alone(&op, open.as_ref()) {
            let mut run = vec![(op, data)];
            let mut paths: std::collections::HashSet<georep_datapath::RelPath> =
                std::iter::once(run[0].0.path().clone()).collect();
            while let Some((next, _)) = items.peek() {
                if !stands_alone(next, open.as_ref()) || paths.contains(next.path()) {
                    break;
                }
                if let Some(item) = items.next() {
                    paths.insert(item.0.path().clone());
                    run.push(item);
                }
            }
            results.extend(apply_writes(applier, peer, run));
            continue;
        }
        let data: FileData = data.into_iter().collect();
        let outcome = match open.take() {
            Some(OpenWrite::Writing(mut write)) if write.is_for(&op) => {
                if let Op::Write { meta, .. } = &op {
                    write.set_meta(meta.clone());
                }
                write.finish(applier, &data).map_err(|e| e.to_string())
            }
            Some(OpenWrite::Failed(path, error)) if *op.path() == path => Err(error),
            other => {
                open = other;
                applier.apply(&op, &data).map_err(|e| e.to_string())
            }
        };
        results.push(refused(peer, outcome));
    }
    results
}

/// Whether `op` changes one file and nothing else: a small file's write (not the
/// large one `open` completes) or a non-directory's metadata (a directory's mtime must
/// be set after what is written inside it).
fn stands_alone(op: &Op, open: Option<&OpenWrite>) -> bool {
    match op {
        Op::Write { .. } => match open {
            Some(OpenWrite::Writing(write)) => !write.is_for(op),
            Some(OpenWrite::Failed(path, _)) => path != op.path(),
            None => true,
        },
        Op::Meta { entry, .. } => entry.kind != georep_datapath::index::EntryKind::Dir,
        _ => false,
    }
}

/// Fewest consecutive operations that stand alone applied on several threads (fewer
/// are not worth a thread's start).
const PARALLEL_RUN: usize = 16;

/// Applies `run`, operations on distinct files that stand alone, on up to as many
/// threads as there are cores (4 at most); the outcomes in `run`'s order.
fn apply_writes(
    applier: &Applier,
    peer: &str,
    run: Vec<georep_datapath::proto::BatchItem>,
) -> Vec<Option<String>> {
    georep_datapath::parts::in_parts(run, PARALLEL_RUN, |part| {
        // A run has no entry operation: its files' directories stay where they are.
        let mut parents = georep_datapath::Parents::default();
        part.into_iter()
            .map(|(op, data)| {
                let data: FileData = data.into_iter().collect();
                let applied = applier.apply_in_run(&op, &data, &mut parents);
                refused(peer, applied.map_err(|e| e.to_string()))
            })
            .collect::<Vec<_>>()
    })
    .concat()
}

/// `None` for an operation applied; why not (logged) for one refused.
fn refused(peer: &str, outcome: Result<(), String>) -> Option<String> {
    match outcome {
        Ok(()) => None,
        Err(error) => {
            tracing::warn!(%peer, %error, "data path operation refused");
            Some(error)
        }
    }
}

/// Where the secondary keeps what it has of `session` (an index per replica set): in
/// the secondary volume itself, `<volume>/.georep/<session>/<epoch>/`, so that every
/// node serving the volume (they share its mount) resumes a worker from the same
/// point, whichever of them it reaches; the epoch changes with each `delete
/// --reset-sync-time` and older epochs are removed (a session created again after such
/// a delete starts from nothing). Directories on the way are created, never followed
/// if they are symlinks.
fn progress_dir(volume: &Path, session: &str, view: &SessionView) -> Result<PathBuf, String> {
    let root = volume.join(PROGRESS_DIR).join(session);
    let epoch = match view
        .config
        .get(georep_mesh::session_config::SYNC_TIME_RESET)
    {
        None => "initial".to_string(),
        Some(reset) => format!("reset-{:08x}", crc32fast::hash(reset.as_bytes())),
    };
    let dir = root.join(&epoch);
    for step in [volume.join(PROGRESS_DIR), root.clone(), dir.clone()] {
        real_dir(&step)?;
    }
    for old in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let is_dir = old.file_type().is_ok_and(|t| t.is_dir());
        if old.file_name().to_string_lossy() != epoch && is_dir {
            tracing::info!(session, dir = %old.path().display(), "sync time reset: forgetting what was synced");
            if let Err(error) = std::fs::remove_dir_all(old.path()) {
                tracing::warn!(session, %error, "cannot remove the old sync progress");
            }
        }
    }
    Ok(dir)
}

/// Creates the directory `path` if missing; an error if it is anything but a
/// directory (a symlink is not followed).
fn real_dir(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => Ok(()),
                _ => Err(format!(
                    "{} is not a directory (refusing to follow it)",
                    path.display()
                )),
            }
        }
        Err(error) => Err(format!("cannot create {}: {error}", path.display())),
    }
}

async fn authorize(
    agent: &Agent,
    peer: &str,
    session: &str,
    replica_set: u32,
) -> Result<Grant, String> {
    let replica = agent.mesh().replica();
    let view = replica
        .sessions
        .values()
        .map(|record| record.view())
        .find(|view| view.exists && view.id.dir_name() == session)
        .ok_or_else(|| format!("no session {session}"))?;
    let brick = agent
        .bricks()
        .into_iter()
        .find(|b| b.volume == view.id.secondary_volume)
        .ok_or_else(|| format!("this node hosts no brick of {}", view.id.secondary_volume))?;
    let membership = agent.mesh().membership().await;
    let primary = membership
        .members
        .values()
        .any(|m| m.node_id == peer && m.hosts(&view.id.primary_volume));
    if !primary {
        return Err(format!(
            "{peer} hosts no brick of the primary volume {}",
            view.id.primary_volume
        ));
    }
    // This node's view may be a gossip round behind the worker's (an agent just
    // started, a session just started): give it that long to agree before refusing.
    let deadline = tokio::time::Instant::now() + FENCE_PATIENCE;
    while let Err(reason) = fence(agent, peer, &view.id.primary_volume, replica_set).await {
        if tokio::time::Instant::now() >= deadline {
            return Err(reason);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let applier = Applier::open(&brick.path)
        .map_err(|e| format!("cannot open {}: {e}", brick.path.display()))?;
    let dir = progress_dir(&brick.path, session, &view)?;
    Ok(Grant {
        applier: Arc::new(applier),
        saved: Arc::new(SavedIndex::at(
            dir.join(format!("replica-set-{replica_set}.index")),
        )),
        journal_file: dir.join(format!("replica-set-{replica_set}.journal")),
        open: Arc::new(std::sync::Mutex::new(None)),
        index: std::sync::Mutex::new(None),
        primary_volume: view.id.primary_volume.clone(),
        replica_set,
    })
}

/// How long a Hello the fence refuses waits for this node's view to change its mind
/// (three gossip rounds at the default interval) before it is refused.
const FENCE_PATIENCE: Duration = Duration::from_millis(1500);

/// Admits only the worker this node's own view calls Active for `replica_set` of
/// `volume`. Primaries choose their Active worker from their own views, which can
/// disagree for a moment (an agent that has just started and not yet heard of the
/// other replica's node) or for as long as a partition separates them; two workers
/// writing one replica set's files and index at once leave the secondary with a mix of
/// both replicas. The secondary is the arbiter they both reach (as gluster's meta
/// volume lock is): the other worker is refused and tries again, and stops once its
/// own view agrees.
async fn fence(agent: &Agent, peer: &str, volume: &str, replica_set: u32) -> Result<(), String> {
    let topology = agent.mesh().topology().await;
    match topology.active_node(volume, replica_set) {
        Some(node) if node == peer => Ok(()),
        Some(node) => Err(format!(
            "{peer} is not the Active node of replica set {replica_set} of {volume} as this node sees it ({node} is)"
        )),
        None => Err(format!(
            "this node knows no live node hosting replica set {replica_set} of {volume}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use georep_datapath::proto::BatchItem;
    use georep_datapath::{RelPath, chunk_bytes};

    fn write(path: &str, bytes: &[u8]) -> BatchItem {
        let (chunks, content) = chunk_bytes(bytes);
        let data = chunks
            .iter()
            .map(|c| {
                let piece = &bytes[c.offset as usize..][..c.len as usize];
                (c.hash, bytes::Bytes::copy_from_slice(piece))
            })
            .collect();
        let op = Op::Write {
            path: RelPath::new(path).unwrap(),
            size: bytes.len() as u64,
            content,
            chunks,
            meta: None,
        };
        (op, data)
    }

    #[test]
    fn a_batch_applied_on_several_threads_answers_each_item_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let applier = Applier::open(dir.path()).unwrap();
        let mut items: Vec<BatchItem> = vec![(
            Op::Mkdir {
                path: RelPath::new("d").unwrap(),
            },
            Vec::new(),
        )];
        for i in 0..3 * PARALLEL_RUN {
            items.push(write(&format!("d/f{i:03}"), format!("file {i}").as_bytes()));
        }
        // A write whose data does not match its chunks, in the middle of the run, and
        // one into a directory that does not exist, after it.
        let (op, _) = write("d/bad", b"what the chunks say");
        let (_, wrong) = write("d/other", b"other bytes entirely");
        items.insert(10, (op, wrong));
        items.push(write("missing/f", b"no parent"));
        let results = apply_batch(&applier, None, "n1", items);
        assert_eq!(results.len(), 3 * PARALLEL_RUN + 3);
        for (i, result) in results.iter().enumerate() {
            let expect_refused = i == 10 || i == results.len() - 1;
            assert_eq!(result.is_some(), expect_refused, "item {i}: {result:?}");
        }
        for i in 0..3 * PARALLEL_RUN {
            let written = std::fs::read(dir.path().join(format!("d/f{i:03}"))).unwrap();
            assert_eq!(written, format!("file {i}").as_bytes());
        }
        assert!(!dir.path().join("d/bad").exists());
    }
}
