//! The sending half of a worker's round: operations handed over one at a time
//! ([`Sender`]), small ones gathered into batches with a few in flight ([`InFlight`]),
//! large files on sync jobs' streams, and a first sync's walk that creates the tree on
//! the secondary as it reads it ([`walk_and_create`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use georep_datapath::index::{OpClass, create_op, fold_meta};
use georep_datapath::journal::Touched;
use georep_datapath::proto::{ChunkData, Response, SMALL_FILE};
use georep_datapath::scan::{Keep, ScanReport, scan_streaming};
use georep_datapath::{Entry, EntryKind, Index, Known, Op, RelPath};

use super::jobs::{Jobs, Streamed};
use super::{BATCH_BYTES, BATCH_OPS, Channel, Counts, FIRST_BATCH_SHIFT, restore_failed};

/// Batches sent and not answered yet: the next batch is built and sent while the
/// secondary applies the previous one (answers come in order on the stream).
#[derive(Default)]
struct InFlight {
    /// Per batch sent, per operation: its class, whether it also sets metadata (a
    /// write with its file's metadata folded in), and the places it changes.
    batches: std::collections::VecDeque<Vec<(OpClass, bool, Vec<Touched>)>>,
    counts: Counts,
    /// The places changed by operations the secondary refused.
    failed: Vec<Touched>,
}

/// Fewest files of a batch read on several threads.
const PARALLEL_READS: usize = 32;

/// `op` with the chunk bytes it carries: all of a small file's (each distinct chunk
/// once), nothing for other operations; the path and why if the file cannot be read.
fn with_data(
    brick: &Path,
    op: Op,
) -> Result<georep_datapath::proto::BatchItem, (RelPath, std::io::Error)> {
    let Op::Write { path, chunks, .. } = &op else {
        return Ok((op, Vec::new()));
    };
    let all: Vec<georep_datapath::Hash> = chunks.iter().map(|c| c.hash).collect();
    match read_chunks(brick, path, &unique_wanted(chunks, &all)) {
        Ok(data) => Ok((op, data)),
        Err(error) => Err((path.clone(), error)),
    }
}

/// Batches in flight at most (each up to [`BATCH_BYTES`]; the stream's receive window
/// holds two).
pub(super) const MAX_IN_FLIGHT: usize = 2;

impl InFlight {
    /// Sends `batch`, first collecting answers until fewer than [`MAX_IN_FLIGHT`] are
    /// outstanding.
    async fn send(
        &mut self,
        batch: &mut Vec<georep_datapath::proto::BatchItem>,
        call: &mut Channel,
    ) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        while self.batches.len() >= MAX_IN_FLIGHT {
            self.collect_one(call).await?;
        }
        let items = std::mem::take(batch);
        let classes = items
            .iter()
            .map(|(op, _)| {
                let places = op.touches().into_iter().map(|(p, b)| (p.clone(), b));
                let meta = matches!(op, Op::Write { meta: Some(_), .. });
                (op.class(), meta, places.collect())
            })
            .collect();
        call.batch(items).await?;
        self.batches.push_back(classes);
        Ok(())
    }

    /// Reads the small files `ops` write (off the async threads, several at once; not
    /// those whose chunks came with them) and sends them with the rest of `ops` as one
    /// batch; a file that cannot be read is left out and counted failed (retried next
    /// round). Returns the chunk bytes sent.
    async fn read_and_send(
        &mut self,
        brick: &Path,
        ops: &mut Vec<(Op, Option<Vec<ChunkData>>)>,
        call: &mut Channel,
    ) -> Result<u64, String> {
        if ops.is_empty() {
            return Ok(0);
        }
        let ops = std::mem::take(ops);
        let root = brick.to_path_buf();
        let read = tokio::task::spawn_blocking(move || {
            georep_datapath::parts::in_parts(ops, PARALLEL_READS, |part| {
                part.into_iter()
                    .map(|(op, data)| match data {
                        Some(data) => Ok((op, data)),
                        None => with_data(&root, op),
                    })
                    .collect::<Vec<_>>()
            })
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| format!("reading files failed: {e}"))?;
        let mut batch = Vec::with_capacity(read.len());
        let mut bytes = 0u64;
        for item in read {
            match item {
                Ok(item) => {
                    bytes += item.1.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
                    batch.push(item);
                }
                Err((path, error)) => {
                    tracing::warn!(%path, %error, "cannot read; retried next round");
                    self.failed.push((path, false));
                }
            }
        }
        self.send(&mut batch, call).await?;
        Ok(bytes)
    }

    /// Collects every outstanding answer (before any other request).
    async fn drain(&mut self, call: &mut Channel) -> Result<(), String> {
        while !self.batches.is_empty() {
            self.collect_one(call).await?;
        }
        Ok(())
    }

    async fn collect_one(&mut self, call: &mut Channel) -> Result<(), String> {
        let Some(classes) = self.batches.pop_front() else {
            return Ok(());
        };
        let results = match call.receive().await? {
            Response::Applied(results) => results,
            other => return Err(format!("unexpected answer to a batch: {other:?}")),
        };
        for ((class, meta, places), result) in classes.into_iter().zip(results) {
            match result {
                None => {
                    match class {
                        OpClass::Entry => self.counts.0 += 1,
                        OpClass::Data => self.counts.1 += 1,
                        OpClass::Meta => self.counts.2 += 1,
                    }
                    if meta {
                        self.counts.2 += 1;
                    }
                }
                Some(error) => {
                    if let Some((path, _)) = places.last() {
                        tracing::warn!(%path, %error, "the secondary refused; retried next round");
                    }
                    self.failed.extend(places);
                }
            }
        }
        Ok(())
    }
}

/// Sends `ops` in batches on the main stream, large files on `jobs`' streams; returns
/// counts by class, chunk bytes sent, and the places changed by operations that
/// failed.
pub(super) async fn send_ops(
    (brick, synced): (&Path, &Index),
    ops: &[Op],
    call: &mut Channel,
    jobs: &mut Jobs,
) -> Result<(Counts, u64, Vec<Touched>), String> {
    let mut sender = Sender::new(brick, synced);
    for op in fold_meta(ops, SMALL_FILE) {
        sender.push(op, call, jobs).await?;
    }
    sender.finish(call, jobs).await
}

/// Operations on their way to the secondary, handed over one at a time: small ones
/// gathered into batches (the next read and sent while the secondary applies the
/// last), large files on `jobs`' streams.
///
/// Order: a large file is handed to a job only once everything before it is applied
/// (its directory exists), and an operation naming a path a job is still writing, or a
/// directory above one, waits until the jobs are done (a link to it, its metadata,
/// its directory's metadata).
struct Sender<'a> {
    brick: &'a Path,
    /// What the secondary has, for a large file's job to know which chunks it has.
    synced: &'a Index,
    flight: InFlight,
    bytes_sent: u64,
    /// The next batch's operations, with their files' chunks where the caller had them
    /// (the others are read when the batch is sent), and those files' sizes.
    batch: Vec<(Op, Option<Vec<ChunkData>>)>,
    batch_bytes: u64,
    /// The first batches are small and each twice the last, up to the full size: the
    /// secondary starts applying while the next is read and sent, instead of waiting
    /// for a whole first batch to cross a connection still in slow start.
    scale: u32,
}

impl<'a> Sender<'a> {
    fn new(brick: &'a Path, synced: &'a Index) -> Sender<'a> {
        Sender {
            brick,
            synced,
            flight: InFlight::default(),
            bytes_sent: 0,
            batch: Vec::new(),
            batch_bytes: 0,
            scale: FIRST_BATCH_SHIFT,
        }
    }

    /// Hands `op` over: into the next batch (sent once full), or to a job.
    async fn push(&mut self, op: Op, call: &mut Channel, jobs: &mut Jobs) -> Result<(), String> {
        self.push_with(op, None, call, jobs).await
    }

    /// [`Sender::push`], with the chunks a small file's write carries when the caller
    /// has them (`data`: then the file is not read again).
    async fn push_with(
        &mut self,
        op: Op,
        data: Option<Vec<ChunkData>>,
        call: &mut Channel,
        jobs: &mut Jobs,
    ) -> Result<(), String> {
        if jobs.touches(&op) {
            jobs.join_all().await?;
        }
        if let Op::Write { path, size, .. } = &op {
            if *size > SMALL_FILE {
                let known = known(self.synced, path);
                self.settle(call).await?;
                return jobs.start(op, known).await;
            }
            self.batch_bytes += size;
        }
        self.batch.push((op, data));
        if self.batch.len() >= BATCH_OPS >> self.scale
            || self.batch_bytes >= (BATCH_BYTES >> self.scale) as u64
        {
            self.batch_bytes = 0;
            self.scale = self.scale.saturating_sub(1);
            self.bytes_sent += self
                .flight
                .read_and_send(self.brick, &mut self.batch, call)
                .await?;
        }
        Ok(())
    }

    /// Hands the new large file at `path` (listed unread) to a job that sends it while
    /// reading it, once everything before it is applied (its directory exists).
    async fn push_new(
        &mut self,
        path: RelPath,
        call: &mut Channel,
        jobs: &mut Jobs,
    ) -> Result<(), String> {
        self.settle(call).await?;
        jobs.start_new(path).await
    }

    /// Sends what is gathered and waits until the secondary has applied everything
    /// sent (before a large file's job starts: its directory must exist).
    async fn settle(&mut self, call: &mut Channel) -> Result<(), String> {
        self.batch_bytes = 0;
        self.bytes_sent += self
            .flight
            .read_and_send(self.brick, &mut self.batch, call)
            .await?;
        self.flight.drain(call).await
    }

    /// Sends what is gathered and waits for every answer and job: counts by class,
    /// chunk bytes sent, and the places changed by operations that failed.
    async fn finish(
        mut self,
        call: &mut Channel,
        jobs: &mut Jobs,
    ) -> Result<(Counts, u64, Vec<Touched>), String> {
        self.settle(call).await?;
        jobs.join_all().await?;
        let mut failed = self.flight.failed;
        failed.extend(jobs.failed.drain(..).map(|path| (path, false)));
        self.flight.counts.1 += std::mem::take(&mut jobs.written);
        self.bytes_sent += std::mem::take(&mut jobs.bytes_sent);
        Ok((self.flight.counts, self.bytes_sent, failed))
    }
}

/// Directory listings the walk of [`walk_and_create`] may be ahead of the sending by.
const LISTINGS_QUEUED: usize = 256;

/// Bytes of small files' content the walk of [`walk_and_create`] holds for sending at
/// once (beyond that, files are read again when sent).
const KEPT_BYTES: u64 = 32 << 20;

/// The distinct chunks of a file whose content is `bytes` (each hash once, in file
/// order), as a write carries them.
fn chunk_data(chunks: &[georep_datapath::ChunkRef], bytes: Vec<u8>) -> Vec<ChunkData> {
    let bytes = bytes::Bytes::from(bytes);
    if let [only] = chunks
        && only.offset == 0
        && only.len as usize == bytes.len()
    {
        return vec![(only.hash, bytes)];
    }
    let all: Vec<georep_datapath::Hash> = chunks.iter().map(|c| c.hash).collect();
    unique_wanted(chunks, &all)
        .into_iter()
        .filter_map(|c| {
            let at = usize::try_from(c.offset).ok()?;
            let end = at.checked_add(c.len as usize)?;
            bytes.get(at..end).map(|_| (c.hash, bytes.slice(at..end)))
        })
        .collect()
}

/// The first round of a worker whose secondary has nothing synced from this brick:
/// walks the brick and, directory by directory as the walk reads them, creates what is
/// there on the secondary (directories, files, symlinks, hard links; large files are
/// listed unread and sent by jobs while they read them, one pass each), so the secondary
/// applies while the rest of the brick is still being read and hashed, instead of
/// waiting for the whole walk (on a brick of millions of files, minutes before the
/// first byte). Returns the walk, what was sent (counts by class, chunk bytes), and
/// what the secondary has now: the entries created, their metadata unset where it was
/// not sent with them (directories, symlinks, large files), so the round's diff
/// against it sends only what is left. An entry whose creation failed is left out
/// (and so sent again by that diff).
pub(super) async fn walk_and_create(
    brick: &Path,
    call: &mut Channel,
    jobs: &mut Jobs,
) -> Result<(std::io::Result<(Index, ScanReport)>, Counts, u64, Index), String> {
    type Listing = (Vec<(RelPath, Entry)>, Vec<Option<Vec<u8>>>);
    let (listings, mut listed) = tokio::sync::mpsc::channel::<Listing>(LISTINGS_QUEUED);
    let root = brick.to_path_buf();
    // Small files' content read by the walk is sent from memory, not read again.
    // Large files are listed unread: each is read once, by the job that sends it.
    let keep = Arc::new(Keep::new(SMALL_FILE, KEPT_BYTES).deferring_above(SMALL_FILE));
    let kept_by_walk = keep.clone();
    let walk = tokio::task::spawn_blocking(move || {
        scan_streaming(&root, None, Some(&kept_by_walk), &mut |entries, kept| {
            // The receiver gone (the sending failed): the walk still ends, unsent.
            let _ = listings.blocking_send((entries.to_vec(), kept));
        })
    });
    let nothing = Index::default();
    let mut sender = Sender::new(brick, &nothing);
    let mut created = Index::default();
    // The first name of each file created: a second name is a link to it.
    let mut names: std::collections::HashMap<u64, RelPath> = Default::default();
    while let Some((entries, kept)) = listed.recv().await {
        for ((path, entry), kept) in entries.into_iter().zip(kept) {
            let linked = match entry.kind {
                EntryKind::File => match names.entry(entry.ino) {
                    std::collections::hash_map::Entry::Occupied(first) => Some(first.get().clone()),
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(path.clone());
                        None
                    }
                },
                _ => None,
            };
            if linked.is_none() && entry.kind == EntryKind::File && entry.content.is_none() {
                // Listed unread: what it is comes back from its job.
                sender.push_new(path.clone(), call, jobs).await?;
                created.entries.insert(path, entry.unset_meta());
                continue;
            }
            let (op, there) = create_op(&path, &entry, linked.as_ref(), SMALL_FILE);
            let data = kept.and_then(|bytes| {
                keep.give_back(bytes.len() as u64);
                matches!(op, Op::Write { .. }).then(|| chunk_data(&entry.chunks, bytes))
            });
            sender.push_with(op, data, call, jobs).await?;
            created.entries.insert(path, there);
        }
    }
    let mut walked = walk.await.map_err(|e| e.to_string())?;
    let (counts, bytes, failed) = sender.finish(call, jobs).await?;
    restore_failed(&mut created, &nothing, failed);
    // Files sent while read: as they were read, in the walk and on the secondary (with
    // their other names, hard links to them).
    let mut found: std::collections::HashMap<u64, Streamed> = Default::default();
    for (path, streamed) in jobs.streamed.drain(..) {
        if let Some(ino) = created.entries.get(&path).map(|e| e.ino) {
            if let Ok((_, report)) = &mut walked {
                report.files_hashed += 1;
                report.bytes_hashed += streamed.2;
            }
            found.insert(ino, streamed);
        }
    }
    let unread = |e: &Entry| e.kind == EntryKind::File && e.content.is_none();
    let index = walked.as_mut().ok().map(|(index, _)| index);
    for entry in index
        .into_iter()
        .chain([&mut created])
        .flat_map(|index| index.entries.values_mut())
    {
        if unread(entry)
            && let Some((chunks, content, size)) = found.get(&entry.ino)
        {
            entry.chunks.clone_from(chunks);
            entry.content = Some(*content);
            entry.size = *size;
        }
    }
    // Those not written stay unread: left out of the walk (and counted as not read)
    // so the next round reads their directories again and sends them then.
    if let Ok((index, report)) = &mut walked {
        let unread: Vec<RelPath> = index
            .entries
            .iter()
            .filter(|(_, e)| unread(e))
            .map(|(path, _)| path.clone())
            .collect();
        for path in unread {
            tracing::warn!(%path, "not sent while read; read again next round");
            index.entries.remove(&path);
            created.entries.remove(&path);
            report
                .failures
                .push((path, "not sent while read; read again".into()));
        }
    }
    Ok((walked, counts, bytes, created))
}

/// What `synced` says the secondary's file at `path` is (its size, mtime and chunks),
/// for the secondary to know which chunks it has without reading the file when it
/// still matches.
fn known(synced: &Index, path: &RelPath) -> Option<Known> {
    synced
        .entries
        .get(path)
        .filter(|e| e.kind == georep_datapath::EntryKind::File && !e.chunks.is_empty())
        .map(|e| Known {
            size: e.size,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            chunks: e.chunks.clone(),
        })
}

/// The chunks of `chunks` whose hash is in `wanted`, each hash once, in file order.
pub(super) fn unique_wanted<'a>(
    chunks: &'a [georep_datapath::ChunkRef],
    wanted: &[georep_datapath::Hash],
) -> Vec<&'a georep_datapath::ChunkRef> {
    let wanted: std::collections::HashSet<&georep_datapath::Hash> = wanted.iter().collect();
    let mut seen = BTreeSet::new();
    chunks
        .iter()
        .filter(|c| wanted.contains(&c.hash) && seen.insert(c.hash))
        .collect()
}

/// The bytes of `to_send`, chunks of the file `path` under `brick`.
pub(super) fn read_chunks(
    brick: &Path,
    path: &RelPath,
    to_send: &[&georep_datapath::ChunkRef],
) -> std::io::Result<Vec<georep_datapath::proto::ChunkData>> {
    use std::os::unix::fs::FileExt;
    let file = georep_datapath::chunk::open_nofollow(&brick.join(path.as_path()))?;
    to_send
        .iter()
        .map(|chunk| {
            let mut bytes = vec![0; chunk.len as usize];
            file.read_exact_at(&mut bytes, chunk.offset)?;
            Ok((chunk.hash, bytes::Bytes::from(bytes)))
        })
        .collect()
}
