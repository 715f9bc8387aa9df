//! Benchmark of the built-in data path over real processes on loopback (a primary
//! agent whose brick is the source tree, a secondary agent whose brick is the
//! destination, all on tmpfs), side by side with `rsync -a` and a tar pipe on the same
//! trees in the same run: initial sync of 20 000 x 4 KiB files and of one 1 GiB file,
//! a 1 MiB overwrite inside the 1 GiB file, 100 renamed files, and a no-op rescan.
//!
//! Our times run from `georep start` (or the edit) until the destination shows the
//! result; they include up to one `change-interval` (1 s) of waiting for the next scan.
//! Bytes are the chunk bytes the worker sent (its status file's `bytes_sent`).
//! Run: `cargo build --release --workspace && cargo bench -p georep-tests --bench datapath`
//! Prints a table; nothing is asserted.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use georep_datapath::noise;
use georep_tests::tmpfs::Tmpfs;
use georep_tests::{Cluster, NodeSpec};

const SMALL_FILES: usize = 20_000;
const SMALL_SIZE: usize = 4096;
const BIG_SIZE: usize = 1 << 30;
const WAIT: Duration = Duration::from_secs(600);

fn small_tree(root: &Path) {
    for i in 0..SMALL_FILES {
        let dir = root.join(format!("d{:03}", i % 200));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i:05}")), noise(SMALL_SIZE, i as u64)).unwrap();
    }
}

fn big_file(root: &Path) {
    let mut file = fs::File::create(root.join("big.bin")).unwrap();
    for i in 0..(BIG_SIZE >> 24) {
        file.write_all(&noise(1 << 24, 1000 + i as u64)).unwrap();
    }
}

fn count_files(root: &Path) -> usize {
    let mut n = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file()
                && !entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".georep-tmp.")
            {
                n += 1;
            }
        }
    }
    n
}

fn timed(what: &str, mut command: Command) -> (f64, String) {
    let started = Instant::now();
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn rsync(src: &Path, dst: &Path, extra: &[&str]) -> (f64, u64) {
    let mut command = Command::new("rsync");
    command
        .args(["-a", "--stats"])
        .args(extra)
        .arg(format!("{}/", src.display()))
        .arg(dst);
    let (seconds, stats) = timed("rsync", command);
    let sent = stats
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes sent: "))
        .map(|v| v.replace(',', "").trim().parse().unwrap_or(0))
        .unwrap_or(0);
    (seconds, sent)
}

fn tar_pipe(src: &Path, dst: &Path) -> f64 {
    fs::create_dir_all(dst).unwrap();
    let mut command = Command::new("sh");
    command.arg("-c").arg(format!(
        "tar -C '{}' -cf - . | tar -C '{}' -xf -",
        src.display(),
        dst.display()
    ));
    timed("tar", command).0
}

/// The worker's `bytes_sent`, from its status file on node 0 (written every second:
/// read after the next write).
fn bytes_sent(cluster: &Cluster) -> u64 {
    std::thread::sleep(Duration::from_millis(2500));
    let root = cluster.nodes[0].data().sessions_root();
    fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|session| fs::read_dir(session.path()).into_iter().flatten().flatten())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".status"))
        .filter_map(|f| serde_json::from_slice::<serde_json::Value>(&fs::read(f.path()).ok()?).ok())
        .filter_map(|v| v["bytes_sent"].as_u64())
        .sum()
}

fn wait(what: &str, mut done: impl FnMut() -> bool) -> f64 {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed().as_secs_f64()
}

/// A primary with `src` as its brick, a secondary with `dst`; the session started.
fn ours(src: &Path, dst: &Path) -> (Cluster, Instant) {
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &[&format!("gv0:{}", src.display())]),
            NodeSpec::new("n2", &[&format!("gv1:{}", dst.display())]),
        ],
        None,
    );
    cluster.wait_live(0, 2, Duration::from_secs(30));
    cluster.ok(0, &["create", "gv0", "n2::gv1"]);
    cluster.ok(0, &["config", "gv0", "n2::gv1", "change-interval", "1"]);
    let started = Instant::now();
    cluster.ok(0, &["start", "gv0", "n2::gv1"]);
    (cluster, started)
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut file = fs::File::open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut out = vec![0; len];
    let _ = file.read_exact(&mut out);
    out
}

fn row(what: &str, tool: &str, seconds: f64, bytes: Option<u64>, per_s: &str) {
    let bytes = bytes.map_or("-".to_string(), |b| {
        format!("{:.1} MiB", b as f64 / 1048576.0)
    });
    println!("| {what} | {tool} | {seconds:.2} s | {per_s} | {bytes} |");
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut mounts = Tmpfs::default();
    let root = dir.path().join("t");
    mounts.mount(&root, "7g");
    let p = |name: &str| -> PathBuf { root.join(name) };
    println!("| case | tool | time | rate | bytes sent |");
    println!("| --- | --- | --- | --- | --- |");

    // 20 000 small files.
    small_tree(&p("small"));
    let mb = (SMALL_FILES * SMALL_SIZE) as f64 / 1048576.0;
    let (t, sent) = rsync(&p("small"), &p("small-rsync"), &[]);
    row(
        "20k x 4 KiB initial",
        "rsync -a",
        t,
        Some(sent),
        &format!("{:.0} files/s", SMALL_FILES as f64 / t),
    );
    let t = tar_pipe(&p("small"), &p("small-tar"));
    row(
        "20k x 4 KiB initial",
        "tar pipe",
        t,
        None,
        &format!("{:.0} files/s", SMALL_FILES as f64 / t),
    );
    fs::create_dir_all(p("small-ours")).unwrap();
    {
        let (cluster, started) = ours(&p("small"), &p("small-ours"));
        wait("small files", || {
            count_files(&p("small-ours")) == SMALL_FILES
        });
        let t = started.elapsed().as_secs_f64();
        row(
            "20k x 4 KiB initial",
            "georep",
            t,
            Some(bytes_sent(&cluster)),
            &format!("{:.0} files/s", SMALL_FILES as f64 / t),
        );
        // No-op: what one round costs with nothing changed (scan against the index).
        let (index, _) = georep_datapath::scan(&p("small"), None).unwrap();
        let started = Instant::now();
        let (again, _) = georep_datapath::scan(&p("small"), Some(&index)).unwrap();
        assert!(georep_datapath::diff(&index, &again).is_empty());
        row(
            "20k x 4 KiB no-op rescan",
            "georep (one round)",
            started.elapsed().as_secs_f64(),
            None,
            "-",
        );
        let (t, sent) = rsync(&p("small"), &p("small-rsync"), &[]);
        row("20k x 4 KiB no-op rescan", "rsync -a", t, Some(sent), "-");
        // 100 renamed files.
        let before = bytes_sent(&cluster);
        for i in 0..100 {
            let dir = p("small").join(format!("d{:03}", i % 200));
            fs::rename(
                dir.join(format!("f{i:05}")),
                dir.join(format!("renamed{i:05}")),
            )
            .unwrap();
        }
        let t = wait("renames", || {
            p("small-ours/d099/renamed00099").exists() && !p("small-ours/d099/f00099").exists()
        });
        row(
            "100 renames",
            "georep",
            t,
            Some(bytes_sent(&cluster) - before),
            "-",
        );
        let (t, sent) = rsync(&p("small"), &p("small-rsync"), &["--delete"]);
        row("100 renames", "rsync -a --delete", t, Some(sent), "-");
        drop(cluster);
    }
    for name in ["small", "small-rsync", "small-tar", "small-ours"] {
        let _ = fs::remove_dir_all(p(name));
    }

    // One 1 GiB file.
    fs::create_dir_all(p("big")).unwrap();
    big_file(&p("big"));
    let mib = BIG_SIZE as f64 / 1048576.0;
    let (t, sent) = rsync(&p("big"), &p("big-rsync"), &[]);
    row(
        "1 GiB initial",
        "rsync -a",
        t,
        Some(sent),
        &format!("{:.0} MiB/s", mib / t),
    );
    let t = tar_pipe(&p("big"), &p("big-tar"));
    row(
        "1 GiB initial",
        "tar pipe",
        t,
        None,
        &format!("{:.0} MiB/s", mib / t),
    );
    let _ = fs::remove_dir_all(p("big-tar"));
    fs::create_dir_all(p("big-ours")).unwrap();
    let (cluster, started) = ours(&p("big"), &p("big-ours"));
    let target = p("big-ours/big.bin");
    wait("the big file", || {
        fs::metadata(&target).is_ok_and(|m| m.len() == BIG_SIZE as u64)
    });
    let t = started.elapsed().as_secs_f64();
    row(
        "1 GiB initial",
        "georep",
        t,
        Some(bytes_sent(&cluster)),
        &format!("{:.0} MiB/s", mib / t),
    );
    // 1 MiB overwritten in the middle.
    let patch = noise(1 << 20, 77);
    let offset = (BIG_SIZE / 2) as u64;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(p("big/big.bin"))
        .unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(&patch).unwrap();
    drop(file);
    let before = bytes_sent(&cluster);
    let t = wait("the 1 MiB change", || {
        read_at(&target, offset, patch.len()) == patch
    });
    row(
        "1 MiB change in 1 GiB",
        "georep",
        t,
        Some(bytes_sent(&cluster) - before),
        "-",
    );
    let (t, sent) = rsync(&p("big"), &p("big-rsync"), &[]);
    row(
        "1 MiB change in 1 GiB",
        "rsync -a (local: whole file)",
        t,
        Some(sent),
        "-",
    );
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(p("big/big.bin"))
        .unwrap();
    file.seek(SeekFrom::Start(offset / 2)).unwrap();
    file.write_all(&noise(1 << 20, 78)).unwrap();
    drop(file);
    let (t, sent) = rsync(&p("big"), &p("big-rsync"), &["--no-whole-file"]);
    row(
        "1 MiB change in 1 GiB",
        "rsync -a --no-whole-file",
        t,
        Some(sent),
        "-",
    );
    drop(cluster);
    drop(mounts);
    let _ = mb;
}
