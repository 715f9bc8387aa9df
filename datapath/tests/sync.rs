//! The data path on real files: a primary tree scanned, diffed and applied onto a
//! secondary directory equals it afterwards, first from nothing, then after edits of
//! every kind; bytes sent are what changed; hostile operations are refused without a
//! write outside the secondary.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use georep_datapath::{
    Applier, ApplyError, FileData, Hash, Index, Op, RelPath, diff, journal, noise, scan,
};

/// Reads the chunks `wanted` of the primary file at `path`.
fn chunk_data(root: &Path, path: &RelPath, op: &Op, wanted: &[Hash]) -> FileData {
    let Op::Write { chunks, .. } = op else {
        return FileData::new();
    };
    let mut file = fs::File::open(root.join(path.as_path())).unwrap();
    let mut out = FileData::new();
    for chunk in chunks.iter().filter(|c| wanted.contains(&c.hash)) {
        let mut bytes = vec![0; chunk.len as usize];
        file.seek(SeekFrom::Start(chunk.offset)).unwrap();
        file.read_exact(&mut bytes).unwrap();
        out.insert(chunk.hash, bytes.into());
    }
    out
}

/// One round: scan, diff against what the secondary has, apply. Returns the new index
/// and the chunk bytes sent.
fn sync(primary: &Path, applier: &Applier, old: &Index, ignore_deletes: bool) -> (Index, u64) {
    let (new, report) = scan(primary, Some(old)).unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let mut ops = diff(old, &new);
    if ignore_deletes {
        ops.retain(|op| !matches!(op, Op::Remove { .. }));
    }
    // As a worker sends them: small files' metadata folded into their writes.
    let ops = georep_datapath::index::fold_meta(&ops, georep_datapath::proto::SMALL_FILE);
    (new, apply_all(primary, applier, &ops))
}

/// Applies `ops` with the chunk data the secondary lacks; returns the bytes sent.
fn apply_all(primary: &Path, applier: &Applier, ops: &[Op]) -> u64 {
    let mut sent = 0;
    for op in ops {
        let data = match op {
            Op::Write { path, chunks, .. } => {
                let hashes: Vec<Hash> = chunks.iter().map(|c| c.hash).collect();
                let missing = applier.missing_chunks(path, &hashes);
                chunk_data(primary, path, op, &missing)
            }
            _ => FileData::new(),
        };
        sent += data.values().map(|b| b.len() as u64).sum::<u64>();
        applier
            .apply(op, &data)
            .unwrap_or_else(|e| panic!("{op:?}: {e}"));
    }
    sent
}

type Shape = BTreeMap<String, String>;

/// What a tree looks like, inodes aside: per path its kind, size, mode, mtime,
/// content, xattrs; and which paths share an inode.
fn shape(root: &Path) -> (Shape, BTreeSet<Vec<String>>) {
    let (index, _) = scan(root, None).unwrap();
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let shape = index
        .entries
        .iter()
        .map(|(path, e)| {
            by_ino.entry(e.ino).or_default().push(path.to_string());
            (
                path.to_string(),
                format!(
                    "{:?} size={} mode={:o} mtime={}.{} content={:?} xattrs={:?}",
                    e.kind, e.size, e.mode, e.mtime, e.mtime_nsec, e.content, e.xattrs
                ),
            )
        })
        .collect();
    let links = by_ino
        .into_values()
        .filter(|paths| paths.len() > 1)
        .collect();
    (shape, links)
}

fn assert_same(primary: &Path, secondary: &Path) {
    let (p, p_links) = shape(primary);
    let (s, s_links) = shape(secondary);
    for (path, what) in &p {
        assert_eq!(s.get(path), Some(what), "{path} differs");
    }
    let extra: Vec<&String> = s.keys().filter(|k| !p.contains_key(*k)).collect();
    assert!(extra.is_empty(), "extra on the secondary: {extra:?}");
    assert_eq!(p_links, s_links, "hard links differ");
}

fn build_tree(root: &Path) {
    for d in ["a/b/c", "docs", "empty"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for i in 0..200 {
        fs::write(
            root.join(format!("a/b/c/small-{i}.txt")),
            format!("file {i}\n"),
        )
        .unwrap();
    }
    fs::write(root.join("big.bin"), noise(6 << 20, 1)).unwrap();
    fs::write(root.join("docs/readme"), b"hello").unwrap();
    fs::hard_link(root.join("docs/readme"), root.join("docs/readme.link")).unwrap();
    symlink("../big.bin", root.join("docs/big")).unwrap();
    symlink("/etc/passwd", root.join("docs/absolute")).unwrap();
    fs::set_permissions(root.join("docs/readme"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(root.join("x.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("x.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    xattr::set(root.join("docs/readme"), "user.origin", b"primary").unwrap();
    xattr::set(root.join("a"), "user.dir", b"yes").unwrap();
}

#[test]
fn a_tree_and_every_kind_of_edit_arrive_exactly() {
    every_kind_of_edit(false);
}

/// The same where files cannot be created unnamed (no `O_TMPFILE`, as on a FUSE
/// mount): written to named temporary files, renamed into place.
#[test]
fn a_tree_and_every_kind_of_edit_arrive_exactly_through_named_temporary_files() {
    every_kind_of_edit(true);
}

fn every_kind_of_edit(named: bool) {
    let primary = tempfile::tempdir().unwrap();
    let secondary = tempfile::tempdir().unwrap();
    build_tree(primary.path());
    let mut applier = Applier::open(secondary.path()).unwrap();
    if named {
        applier = applier.with_named_temporaries();
    }
    let (index, sent) = sync(primary.path(), &applier, &Index::default(), false);
    assert_same(primary.path(), secondary.path());
    assert!(sent >= 6 << 20, "{sent}");

    // Nothing changed: nothing to do, nothing sent.
    let (again, _) = scan(primary.path(), Some(&index)).unwrap();
    assert!(
        diff(&index, &again).is_empty(),
        "{:?}",
        diff(&index, &again)
    );

    // Edits of every kind.
    let p = primary.path();
    let mut big = fs::OpenOptions::new()
        .write(true)
        .open(p.join("big.bin"))
        .unwrap();
    big.seek(SeekFrom::Start(3 << 20)).unwrap();
    big.write_all(&noise(100_000, 9)).unwrap(); // overwrite in the middle
    drop(big);
    fs::OpenOptions::new()
        .append(true)
        .open(p.join("x.sh"))
        .unwrap()
        .write_all(b"echo hi\n")
        .unwrap();
    fs::rename(p.join("a/b"), p.join("moved")).unwrap(); // a directory with 200 files
    fs::write(p.join("victim"), b"to be replaced").unwrap();
    let (index, _) = sync(p, &applier, &index, false);
    fs::rename(p.join("x.sh"), p.join("victim")).unwrap(); // rename onto an existing file
    fs::remove_file(p.join("moved/c/small-7.txt")).unwrap();
    fs::remove_dir(p.join("empty")).unwrap();
    fs::set_permissions(p.join("docs/readme"), fs::Permissions::from_mode(0o600)).unwrap();
    xattr::set(p.join("docs/readme"), "user.origin", b"changed").unwrap();
    xattr::set(p.join("docs/readme"), "user.more", b"1").unwrap();
    fs::create_dir(p.join("docs/big.d")).unwrap();
    fs::remove_file(p.join("docs/big")).unwrap();
    fs::rename(p.join("docs/big.d"), p.join("docs/big")).unwrap(); // symlink -> directory
    let (index, sent) = sync(p, &applier, &index, false);
    assert_same(p, secondary.path());
    assert!(
        sent < 1 << 20,
        "{sent} bytes sent for a rename and small edits"
    );

    // The 1 MiB... here 100 kB overwrite inside 6 MiB cost about what changed.
    let mut big = fs::OpenOptions::new()
        .write(true)
        .open(p.join("big.bin"))
        .unwrap();
    big.seek(SeekFrom::Start(1 << 20)).unwrap();
    big.write_all(&noise(100_000, 10)).unwrap();
    drop(big);
    let (index, sent) = sync(p, &applier, &index, false);
    assert_same(p, secondary.path());
    assert!(sent < 700_000, "{sent} bytes sent for a 100 kB overwrite");

    // A big file renamed, then renamed onto an existing file: renames, nothing resent.
    fs::rename(p.join("big.bin"), p.join("moved/big.bin")).unwrap();
    let (index, sent) = sync(p, &applier, &index, false);
    assert_eq!(sent, 0, "a rename resent content");
    fs::rename(p.join("moved/big.bin"), p.join("victim")).unwrap();
    let (old, _) = (index.clone(), ());
    let (new, _) = scan(p, Some(&old)).unwrap();
    let ops = diff(&old, &new);
    assert!(
        ops.iter()
            .any(|op| matches!(op, Op::Rename { to, .. } if to.to_string() == "victim")),
        "{ops:?}"
    );
    let (index, sent) = sync(p, &applier, &index, false);
    assert_eq!(sent, 0, "a rename onto an existing file resent content");
    assert_same(p, secondary.path());

    // Content rewritten in place in a subdirectory: the primary's directory mtime does
    // not move; the secondary's must not either (its write renames a temporary file).
    fs::write(p.join("moved/c/small-8.txt"), b"rewritten in place").unwrap();
    let (index, _) = sync(p, &applier, &index, false);
    assert_same(p, secondary.path());

    // A file with two names rewritten in place: still one file with two names there,
    // its content sent once.
    fs::write(p.join("docs/readme"), noise(300_000, 11)).unwrap();
    let (index, sent) = sync(p, &applier, &index, false);
    assert_same(p, secondary.path());
    assert!(
        sent < 400_000,
        "{sent} bytes sent for one 300 kB file with two names"
    );

    // ignore-deletes keeps what the primary deleted.
    fs::remove_file(p.join("docs/readme.link")).unwrap();
    let _ = sync(p, &applier, &index, true);
    assert!(secondary.path().join("docs/readme.link").exists());
}

/// A file removed and another created in the same round, the new one given the old
/// one's inode number (ext4 does that at once): another file, not a rename. With
/// ignore-deletes the removed one stays on the secondary, and the new one arrives.
#[test]
fn a_reused_inode_number_is_another_file() {
    use std::os::unix::fs::MetadataExt;
    let primary = tempfile::tempdir().unwrap();
    let secondary = tempfile::tempdir().unwrap();
    let p = primary.path();
    fs::create_dir_all(p.join("a")).unwrap();
    fs::create_dir_all(p.join("b")).unwrap();
    let applier = Applier::open(secondary.path()).unwrap();
    let mut index = Index::default();
    let mut reused = 0;
    for round in 0..20 {
        let old = p.join(format!("a/old-{round}"));
        fs::write(&old, format!("old {round}")).unwrap();
        index = sync(p, &applier, &index, true).0;
        let ino = fs::metadata(&old).unwrap().ino();
        fs::remove_file(&old).unwrap();
        let new = p.join(format!("b/new-{round}"));
        fs::write(&new, format!("new {round}")).unwrap();
        if fs::metadata(&new).unwrap().ino() == ino {
            reused += 1;
        }
        let (now, report) = scan(p, Some(&index)).unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let ops = diff(&index, &now);
        assert!(
            !ops.iter().any(|op| matches!(op, Op::Rename { .. })),
            "round {round}: {ops:?}"
        );
        index = sync(p, &applier, &index, true).0;
        let kept = secondary.path().join(format!("a/old-{round}"));
        assert_eq!(fs::read_to_string(&kept).unwrap(), format!("old {round}"));
        let arrived = secondary.path().join(format!("b/new-{round}"));
        assert_eq!(
            fs::read_to_string(&arrived).unwrap(),
            format!("new {round}")
        );
    }
    // Shows nothing where numbers are never reused; ext4 (the temp directory here)
    // reuses them every time.
    assert!(reused > 0, "no inode number was reused in 20 rounds");
}

/// A round applied on the secondary but cut off before its index was saved (the
/// worker killed), then the primary changed again: the next worker, starting from the
/// saved index with the journal's places forgotten, leaves the secondary equal to the
/// primary: what the lost round created and the primary then removed does not stay.
#[test]
fn a_round_applied_but_never_saved_leaves_nothing_extra() {
    let primary = tempfile::tempdir().unwrap();
    let secondary = tempfile::tempdir().unwrap();
    build_tree(primary.path());
    let applier = Applier::open(secondary.path()).unwrap();
    let (saved, _) = sync(primary.path(), &applier, &Index::default(), false);

    // The round that is lost: new entries, a directory renamed, a file rewritten.
    let p = primary.path();
    fs::write(p.join("new-1"), b"created, then removed").unwrap();
    fs::create_dir_all(p.join("newdir/deeper")).unwrap();
    fs::write(p.join("newdir/deeper/f"), b"inside").unwrap();
    fs::rename(p.join("a/b"), p.join("a/moved")).unwrap();
    fs::write(p.join("docs/readme"), b"rewritten").unwrap();
    let (lost, _) = scan(p, Some(&saved)).unwrap();
    let ops = diff(&saved, &lost);
    let mut journal_file = journal::frame(&journal::touched(&ops)).unwrap();
    apply_all(p, &applier, &ops);
    // A batch journaled but cut off before it was applied counts too (harmlessly).
    journal_file.extend(
        journal::frame(&journal::touched(&[Op::Mkdir {
            path: RelPath::new("never").unwrap(),
        }]))
        .unwrap(),
    );

    // Meanwhile on the primary: the new entries go, the renamed directory moves on.
    fs::remove_file(p.join("new-1")).unwrap();
    fs::remove_dir_all(p.join("newdir")).unwrap();
    fs::rename(p.join("a/moved"), p.join("elsewhere")).unwrap();

    // Without the journal the next worker would not know what the lost round made.
    let (now, _) = scan(p, Some(&saved)).unwrap();
    let blind = diff(&saved, &now);
    assert!(
        !blind
            .iter()
            .any(|op| matches!(op, Op::Remove { path, .. } if path.to_string() == "new-1")),
        "the saved index alone cannot know new-1: {blind:?}"
    );

    let places = journal::read(&journal_file);
    let mut present = Vec::new();
    for (path, below) in &places {
        applier.present(path, *below, usize::MAX, &mut present);
    }
    let names: BTreeSet<String> = present.iter().map(|(p, _)| p.to_string()).collect();
    for expected in [
        "new-1",
        "newdir",
        "newdir/deeper/f",
        "a/moved",
        "a/moved/c/small-7.txt",
        "docs/readme",
    ] {
        assert!(
            names.contains(expected),
            "{expected} not found present: {names:?}"
        );
    }
    assert!(!names.contains("never"), "nothing was made at never");
    assert!(!names.contains("a/b"), "a/b was renamed away");
    let mut resumed = saved.clone();
    resumed.forget(&places, &present);
    sync(p, &applier, &resumed, false);
    assert_same(p, secondary.path());
}

#[test]
fn hostile_operations_are_refused_and_write_nothing_outside() {
    let secondary = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    symlink(outside.path(), secondary.path().join("escape")).unwrap();
    fs::write(secondary.path().join("file"), b"x").unwrap();
    let applier = Applier::open(secondary.path()).unwrap();
    let path = |p: &str| RelPath::new(p).unwrap();
    let data = b"stolen".to_vec();
    let chunks = georep_datapath::chunk_bytes(&data);
    let write = |p: &str| Op::Write {
        path: path(p),
        size: data.len() as u64,
        content: chunks.1,
        chunks: chunks.0.clone(),
        meta: None,
    };
    let sent: FileData = [(chunks.0[0].hash, data.clone().into())].into();
    // Through a symlink, through a file: refused.
    for op in [
        write("escape/owned"),
        Op::Mkdir {
            path: path("escape/dir"),
        },
        Op::Symlink {
            path: path("escape/l"),
            target: b"/".to_vec(),
        },
        Op::Rename {
            from: path("file"),
            to: path("escape/file"),
        },
        write("file/under"),
    ] {
        assert!(
            matches!(applier.apply(&op, &sent), Err(ApplyError::Escapes { .. })),
            "{op:?} was not refused"
        );
    }
    // A file begun in pieces (a first sync's `OpenNew`, or `Open`) likewise.
    for p in ["escape/owned", "file/under"] {
        assert!(
            matches!(
                applier.begin_stream(&path(p)),
                Err(ApplyError::Escapes { .. })
            ),
            "begin_stream({p}) was not refused"
        );
        assert!(
            matches!(
                applier.begin_write(&path(p), data.len() as u64, &chunks.1, &chunks.0),
                Err(ApplyError::Escapes { .. })
            ),
            "begin_write({p}) was not refused"
        );
    }
    assert!(matches!(
        applier.begin_stream(&path(".georep/gv0_s1_gv1/x")),
        Err(ApplyError::Reserved { .. })
    ));
    // `..` cannot even be expressed.
    assert!(RelPath::new("../x").is_err());
    // The sync progress kept in the volume (and gluster's own trees) are not volume
    // content: no operation reaches them, also not as a rename's source.
    for op in [
        write(".georep/gv0_s1_gv1/initial/replica-set-0.index"),
        Op::Remove {
            path: path(".georep"),
            dir: true,
        },
        Op::Rename {
            from: path(".georep"),
            to: path("taken"),
        },
        Op::Mkdir {
            path: path(".glusterfs"),
        },
    ] {
        assert!(
            matches!(applier.apply(&op, &sent), Err(ApplyError::Reserved { .. })),
            "{op:?} was not refused"
        );
    }
    // A chunk that does not match its hash.
    let forged: FileData = [(chunks.0[0].hash, b"forged".to_vec().into())].into();
    assert!(matches!(
        applier.apply(&write("new"), &forged),
        Err(ApplyError::HashMismatch { .. })
    ));
    // A chunk not sent and not here.
    assert!(matches!(
        applier.apply(&write("new"), &FileData::new()),
        Err(ApplyError::MissingChunk { .. })
    ));
    assert!(
        fs::read_dir(outside.path()).unwrap().next().is_none(),
        "something was written outside"
    );
    // No temporary files left behind, nothing at "new".
    let names: BTreeSet<String> = fs::read_dir(secondary.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["escape", "file"].map(String::from).into());
    // A symlink at the destination itself is replaced, not followed.
    applier.apply(&write("escape"), &sent).unwrap();
    assert!(
        fs::symlink_metadata(secondary.path().join("escape"))
            .unwrap()
            .is_file()
    );
    assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
}

/// A large file written chunk by chunk as its pieces arrive: a chunk that does not
/// match its hash, or that the file does not have, is refused; a write dropped
/// unfinished leaves nothing behind; finished, the file is exactly the content and
/// chunks put twice or repeated in the file are written everywhere they belong.
#[test]
fn a_file_written_in_pieces_is_checked_piece_by_piece() {
    let secondary = tempfile::tempdir().unwrap();
    let applier = Applier::open(secondary.path()).unwrap();
    let block = noise(3 << 20, 9);
    let mut content = block.clone();
    content.extend_from_slice(&block); // the same chunks twice
    let (chunks, id) = georep_datapath::chunk_bytes(&content);
    assert!(chunks.len() > 4, "{} chunks", chunks.len());
    let path = RelPath::new("big.bin").unwrap();
    let size = content.len() as u64;
    let bytes_of = |c: &georep_datapath::ChunkRef| {
        content[c.offset as usize..(c.offset + u64::from(c.len)) as usize].to_vec()
    };
    let listing = || -> Vec<String> {
        fs::read_dir(secondary.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };

    // A wrong chunk list is refused before anything is created.
    let mut wrong = chunks.clone();
    wrong.swap(0, 1);
    assert!(matches!(
        applier.begin_write(&path, size, &id, &wrong),
        Err(ApplyError::ContentMismatch { .. })
    ));
    let mut write = applier.begin_write(&path, size, &id, &chunks).unwrap();
    let first = chunks[0];
    let mut bad = bytes_of(&first);
    bad[0] ^= 1;
    assert!(matches!(
        write.put(&first.hash, &bad),
        Err(ApplyError::HashMismatch { .. })
    ));
    assert!(matches!(
        write.put(&Hash::of(b"elsewhere"), b"elsewhere"),
        Err(ApplyError::MissingChunk { .. })
    ));
    drop(write);
    assert!(listing().is_empty(), "left behind: {:?}", listing());

    // A piece (checked on several threads) with one forged chunk among good ones.
    let mut write = applier.begin_write(&path, size, &id, &chunks).unwrap();
    let mut piece: Vec<(Hash, Vec<u8>)> = chunks.iter().map(|c| (c.hash, bytes_of(c))).collect();
    assert!(piece.len() >= 8, "a piece checked on one thread only");
    let forged = piece.len() - 3;
    piece[forged].1[0] ^= 1;
    assert!(matches!(
        write.put_all(&piece),
        Err(ApplyError::HashMismatch { .. })
    ));
    drop(write);
    assert!(listing().is_empty(), "left behind: {:?}", listing());

    // Put in pieces, in any order; the file has no name until it is complete (a
    // writer killed now leaves nothing behind).
    let mut write = applier.begin_write(&path, size, &id, &chunks).unwrap();
    for chunk in chunks.iter().rev().take(2) {
        write.put(&chunk.hash, &bytes_of(chunk)).unwrap();
    }
    assert!(listing().is_empty(), "named while written: {:?}", listing());
    let rest: Vec<(Hash, Vec<u8>)> = chunks
        .iter()
        .rev()
        .skip(2)
        .map(|c| (c.hash, bytes_of(c)))
        .collect();
    write.put_all(&rest).unwrap();
    write.finish(&applier, &FileData::new()).unwrap();
    assert_eq!(fs::read(secondary.path().join("big.bin")).unwrap(), content);
    assert_eq!(listing(), vec!["big.bin".to_string()]);

    // Half the chunks put, the rest come from the current file.
    let mut changed = content.clone();
    changed.truncate(content.len() - 1000);
    let (chunks2, id2) = georep_datapath::chunk_bytes(&changed);
    let mut write = applier
        .begin_write(&path, changed.len() as u64, &id2, &chunks2)
        .unwrap();
    let last = chunks2[chunks2.len() - 1];
    let tail = changed[last.offset as usize..].to_vec();
    write.put(&last.hash, &tail).unwrap();
    write.finish(&applier, &FileData::new()).unwrap();
    assert_eq!(fs::read(secondary.path().join("big.bin")).unwrap(), changed);
}

/// A new file sent while it is read (no chunk list up front): chunks are appended in
/// order and hashed on the secondary, the hashes answered are theirs; what cannot be
/// a chunk is refused whole; the write that completes it must name exactly the chunks
/// appended, with their size and content identity; dropped unfinished it leaves
/// nothing behind.
#[test]
fn a_file_streamed_without_a_chunk_list_is_exactly_what_was_appended() {
    let secondary = tempfile::tempdir().unwrap();
    let applier = Applier::open(secondary.path()).unwrap();
    let content = noise(5 << 20, 31);
    let (chunks, id) = georep_datapath::chunk_bytes(&content);
    let path = RelPath::new("streamed.bin").unwrap();
    let size = content.len() as u64;
    let piece = |from: usize, to: usize| -> Vec<&[u8]> {
        chunks[from..to]
            .iter()
            .map(|c| &content[c.offset as usize..][..c.len as usize])
            .collect()
    };
    let write_op = |chunks: Vec<georep_datapath::ChunkRef>, size: u64, content: Hash| Op::Write {
        path: path.clone(),
        size,
        content,
        chunks,
        meta: None,
    };
    let half = chunks.len() / 2;
    let listing = || fs::read_dir(secondary.path()).unwrap().count();

    // Something that cannot be one chunk is refused, and nothing of it is appended:
    // empty, or larger than any chunk.
    let mut write = applier.begin_stream(&path).unwrap();
    let too_large = vec![7u8; georep_datapath::chunk::MAX_CHUNK + 1];
    for odd in [&[][..], &too_large[..]] {
        let mut pieces = piece(0, 2);
        pieces.push(odd);
        assert!(matches!(
            write.append(&pieces),
            Err(ApplyError::NotAChunk { offset: 0, .. })
        ));
    }
    // A chunk it was not sent cannot be put into it by hash.
    assert!(matches!(
        write.put_all(&[(chunks[0].hash, piece(0, 1)[0])]),
        Err(ApplyError::MissingChunk { .. })
    ));
    drop(write);
    assert_eq!(listing(), 0);
    // A write begun with a chunk list is not appended to.
    let mut listed = applier.begin_write(&path, size, &id, &chunks).unwrap();
    assert!(matches!(
        listed.append(&piece(0, 1)),
        Err(ApplyError::NotAChunk { .. })
    ));
    drop(listed);
    assert_eq!(listing(), 0);

    // The hashes answered are the chunks' own, and the completing write must agree
    // with what was appended.
    let mut write = applier.begin_stream(&path).unwrap();
    let mut hashes = write.append(&piece(0, half)).unwrap();
    hashes.extend(write.append(&piece(half, chunks.len())).unwrap());
    assert_eq!(hashes, chunks.iter().map(|c| c.hash).collect::<Vec<_>>());
    assert!(!write.is_for(&write_op(chunks[..half].to_vec(), size, id)));
    assert!(!write.is_for(&write_op(chunks.clone(), size - 1, id)));
    assert!(!write.is_for(&write_op(chunks.clone(), size, Hash::of(b"other"))));
    assert!(write.is_for(&write_op(chunks.clone(), size, id)));
    write.finish(&applier, &FileData::new()).unwrap();
    assert_eq!(
        fs::read(secondary.path().join("streamed.bin")).unwrap(),
        content
    );
    assert_eq!(listing(), 1);
}

/// Which chunks a file lacks, taken from what the sender's index says it is when its
/// size and mtime still match (nothing read); a wrong claim with the right size and
/// mtime is caught by the chunk hashes when copying, the write fails, and the next
/// attempt chunks the file instead of trusting the claim again.
#[test]
fn chunks_known_from_the_index_are_trusted_only_while_they_hold() {
    use std::os::unix::fs::MetadataExt;
    let secondary = tempfile::tempdir().unwrap();
    let applier = Applier::open(secondary.path()).unwrap();
    let path = RelPath::new("f.bin").unwrap();
    let file = secondary.path().join("f.bin");
    let old = noise(2 << 20, 21);
    let mut new = old.clone();
    new[1 << 20..(1 << 20) + 4096].copy_from_slice(&noise(4096, 22));
    let (old_chunks, _) = georep_datapath::chunk_bytes(&old);
    let (new_chunks, new_id) = georep_datapath::chunk_bytes(&new);
    let bytes_of = |c: &Hash| {
        let c = new_chunks.iter().find(|r| r.hash == *c).unwrap();
        new[c.offset as usize..(c.offset + u64::from(c.len)) as usize].to_vec()
    };
    let stamp = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let place = |content: &[u8]| -> georep_datapath::Known {
        fs::write(&file, content).unwrap();
        let f = fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(stamp).unwrap();
        let meta = fs::metadata(&file).unwrap();
        georep_datapath::Known {
            size: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
            chunks: old_chunks.clone(),
        }
    };
    let write = |missing: &[Hash], have: Option<Vec<georep_datapath::ChunkRef>>| {
        let mut w = applier
            .begin_write(&path, new.len() as u64, &new_id, &new_chunks)
            .unwrap();
        w.assume_current(have);
        for hash in missing {
            w.put(hash, &bytes_of(hash)).unwrap();
        }
        w.finish(&applier, &FileData::new())
    };

    // True claim: only the changed chunks are lacking.
    let known = place(&old);
    let (missing, have) = applier.lacking(&path, &new_chunks, Some(&known));
    assert!(have.is_some(), "the claim holds: trusted");
    assert!(missing.len() <= 3, "{} chunks lacking", missing.len());
    write(&missing, have).unwrap();
    assert_eq!(fs::read(&file).unwrap(), new);

    // The mtime moved: not trusted, the file is chunked.
    let mut known = place(&old);
    known.mtime += 1;
    let (_, have) = applier.lacking(&path, &new_chunks, Some(&known));
    assert!(have.is_none(), "a stale claim is not trusted");

    // Same size and mtime, other bytes: the claim is wrong.
    let known = place(&noise(old.len(), 23));
    let (missing, have) = applier.lacking(&path, &new_chunks, Some(&known));
    assert!(have.is_some());
    assert!(
        write(&missing, have).is_err(),
        "copied chunks that do not match their hash"
    );
    let (missing, have) = applier.lacking(&path, &new_chunks, Some(&known));
    assert!(have.is_none(), "caught once, not trusted again");
    assert!(missing.len() >= new_chunks.len() - 1);
    write(&missing, have).unwrap();
    assert_eq!(fs::read(&file).unwrap(), new);
    // Written, it is trusted again.
    let (_, have) = applier.lacking(&path, &new_chunks, Some(&place(&old)));
    assert!(have.is_some());
}

#[test]
fn a_run_of_writes_that_keeps_its_directories_open_lands_each_file_in_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, secondary) = (dir.path().join("p"), dir.path().join("s"));
    for sub in ["a", "b", "b/c"] {
        fs::create_dir_all(primary.join(sub)).unwrap();
    }
    // Files alternating between directories (and the top), as a run may hold them.
    let names = ["a/1", "b/1", "a/2", "top", "b/c/1", "b/2", "a/3", "top2"];
    for (i, name) in names.iter().enumerate() {
        fs::write(primary.join(name), format!("{name} {i}")).unwrap();
    }
    fs::create_dir_all(&secondary).unwrap();
    let applier = Applier::open(&secondary).unwrap();
    let (new, _) = scan(&primary, None).unwrap();
    let ops = georep_datapath::index::fold_meta(
        &diff(&Index::default(), &new),
        georep_datapath::proto::SMALL_FILE,
    );
    let (writes, others): (Vec<Op>, Vec<Op>) = ops
        .into_iter()
        .partition(|op| matches!(op, Op::Write { .. }));
    let mut by_name: BTreeMap<String, Op> = writes
        .into_iter()
        .map(|op| (op.path().to_string(), op))
        .collect();
    for op in others.iter().filter(|op| !matches!(op, Op::Meta { .. })) {
        applier.apply(op, &FileData::new()).unwrap();
    }
    let sample = by_name["top"].clone();
    let mut parents = georep_datapath::Parents::default();
    for name in names {
        let op = by_name.remove(name).unwrap();
        let hashes: Vec<Hash> = match &op {
            Op::Write { chunks, .. } => chunks.iter().map(|c| c.hash).collect(),
            _ => unreachable!(),
        };
        let data = chunk_data(&primary, op.path(), &op, &hashes);
        applier.apply_in_run(&op, &data, &mut parents).unwrap();
    }
    for op in others.iter().filter(|op| matches!(op, Op::Meta { .. })) {
        applier.apply(op, &FileData::new()).unwrap();
    }
    assert_same(&primary, &secondary);
    // A reserved path is refused in a run as anywhere.
    let Op::Write {
        size,
        content,
        chunks,
        ..
    } = sample
    else {
        unreachable!()
    };
    let reserved = Op::Write {
        path: RelPath::new(".georep/x").unwrap(),
        size,
        content,
        chunks,
        meta: None,
    };
    assert!(matches!(
        applier.apply_in_run(&reserved, &FileData::new(), &mut parents),
        Err(ApplyError::Reserved { .. })
    ));
}

#[test]
fn a_new_file_gets_exactly_its_mode_and_owner_whatever_it_was_created_with() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (primary, secondary) = (dir.path().join("p"), dir.path().join("s"));
    fs::create_dir_all(&primary).unwrap();
    fs::create_dir_all(&secondary).unwrap();
    let root = nix::unistd::geteuid().is_root();
    // Modes the umask would change at creation, set-id and sticky bits (set only after
    // the owner), and the mode a file is created with when nothing else is known.
    let modes = [
        0o644, 0o666, 0o600, 0o400, 0o4755, 0o2750, 0o1777, 0o000, 0o777,
    ];
    // As root, owners other than the one creating: a chown must come before the mode
    // (it clears set-id bits).
    let owners: &[(u32, u32)] = if root {
        &[(0, 0), (1234, 5678), (0, 5678), (1234, 0)]
    } else {
        &[(u32::MAX, u32::MAX)]
    };
    let mut wanted = BTreeMap::new();
    for (i, mode) in modes.iter().enumerate() {
        for (j, owner) in owners.iter().enumerate() {
            let name = format!("f{i}-{j}");
            let path = primary.join(&name);
            fs::write(&path, format!("{name} content")).unwrap();
            if *owner != (u32::MAX, u32::MAX) {
                std::os::unix::fs::chown(&path, Some(owner.0), Some(owner.1)).unwrap();
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
            let meta = fs::metadata(&path).unwrap();
            wanted.insert(name, (meta.mode() & 0o7777, meta.uid(), meta.gid()));
        }
    }
    let applier = Applier::open(&secondary).unwrap();
    sync(&primary, &applier, &Index::default(), false);
    for (name, want) in &wanted {
        let meta = fs::metadata(secondary.join(name)).unwrap();
        let got = (meta.mode() & 0o7777, meta.uid(), meta.gid());
        assert_eq!(got, *want, "{name}: mode and owner (mode {:o})", want.0);
    }
    assert_same(&primary, &secondary);
}

#[test]
fn temporary_files_of_a_writer_that_died_are_swept_and_a_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let secondary = dir.path();
    fs::create_dir_all(secondary.join("a/b")).unwrap();
    // A process that has ended, and one that runs (besides this one).
    let mut ended = std::process::Command::new("true").spawn().unwrap();
    let dead = ended.id();
    ended.wait().unwrap();
    let mut live = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let temp = |dir: &str, file: &str, pid: u32| {
        let path = secondary
            .join(dir)
            .join(format!(".georep-tmp.{file}.{pid}"));
        fs::write(&path, b"partial").unwrap();
        path
    };
    // Another host's (several secondary agents can share one mounted volume): its
    // pids mean nothing here, only how long the file has gone unwritten counts.
    let abandoned = temp("a/b", "u.hotherhost", live.id());
    fs::File::options()
        .write(true)
        .open(&abandoned)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600))
        .unwrap();
    let stale = [temp("a/b", "x", dead), temp("", "y", dead), abandoned];
    let kept = [
        temp("a/b", "z", std::process::id()),
        temp("a/b", "w", live.id()),
        // Not in a directory the journal names.
        temp("a", "v", dead),
        // Another host's, being written: its pid is no process here.
        temp("a/b", "t.hotherhost", dead),
    ];
    fs::write(secondary.join("a/b/.georep-tmp.not-a-pid"), b"other").unwrap();
    fs::write(secondary.join("a/b/plain.42"), b"volume data").unwrap();
    let applier = Applier::open(secondary).unwrap();
    let places = [
        (RelPath::new("a/b/f").unwrap(), false),
        (RelPath::new("a/b/g").unwrap(), false),
        (RelPath::new("top").unwrap(), false),
        (RelPath::new("gone/h").unwrap(), false),
    ];
    let swept = applier.sweep_temporaries(&places);
    let _ = live.kill();
    let _ = live.wait();
    assert_eq!(swept, 3);
    for path in &stale {
        assert!(!path.exists(), "{} left", path.display());
    }
    for path in &kept {
        assert!(path.exists(), "{} removed", path.display());
    }
    assert!(secondary.join("a/b/.georep-tmp.not-a-pid").exists());
    assert!(secondary.join("a/b/plain.42").exists());
}
