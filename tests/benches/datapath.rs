//! Benchmark of the built-in data path over real processes on loopback (a primary
//! agent whose brick is the source tree, a secondary agent whose brick is the
//! destination, all on tmpfs), side by side with `rsync -a` and a tar pipe on the same
//! trees in the same run: initial sync of 20 000 x 4 KiB files and of one 1 GiB file,
//! a 1 MiB overwrite inside the 1 GiB file, 100 renamed files, and a no-op round;
//! `rsync -a` locally and over ssh to a loopback `sshd`, and a tar pipe.
//!
//! CPU is user + system seconds: of the tool's processes (waited-for children of this
//! process; for ssh also the sshd connection processes), and for georep of both
//! agents and their monitor processes over the same interval.
//!
//! Our times run from `georep start` (or the edit) until the destination shows the
//! result; they include up to one `change-interval` (1 s) of waiting for the next scan.
//! Bytes are the chunk bytes the worker sent (its status file's `bytes_sent`) plus the
//! index it saved on the secondary (whole on a connection's first save, then what
//! changed: its monitor log's `index_bytes`).
//! Memory: every run writes into memory the host already backs (free page reporting
//! off for the run where the VM has it, and each run's writes warmed first: see
//! [`NoPageReporting`] and [`warm`]), so no tool pays a hypervisor's first touch.
//! Run: `cargo build --release --workspace && cargo bench -p georep-tests --bench datapath`
//! (add `-- small` or `-- big` for one group of cases). Prints a table; nothing is
//! asserted.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use georep_datapath::noise;
use georep_tests::sshd::Sshd;
use georep_tests::tmpfs::Tmpfs;
use georep_tests::{Cluster, NodeSpec};

const SMALL_FILES: usize = 20_000;
const SMALL_SIZE: usize = 4096;
const BIG_SIZE: usize = 1 << 30;
/// Memory warmed (see [`warm`]) before each small-files and each 1 GiB run: what the
/// run writes, with room for temporary files.
const SMALL_WARM: usize = 256 << 20;
const BIG_WARM: usize = 3 << 29;
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

/// Writes and removes `bytes` of zeros under `root`, just before a measured run, so that
/// run's writes land in memory the hypervisor has already backed. This VM reports freed
/// memory back to its host (virtio-balloon free page reporting) and the first touch of
/// such a page costs a host fault: writing into it runs at ~0.2-0.3 GiB/s instead of
/// ~2.5 GiB/s (measured with dd), so without this whichever tool happens to get
/// recycled pages wins by seconds.
fn warm(root: &Path, bytes: usize) {
    let block = vec![0u8; 16 << 20];
    let path = root.join("warm.tmp");
    let mut file = fs::File::create(&path).unwrap();
    for _ in 0..bytes.div_ceil(block.len()) {
        file.write_all(&block).unwrap();
    }
    drop(file);
    fs::remove_file(&path).unwrap();
}

/// While alive, this VM's free page reporting is off (the kernel's
/// `page_reporting_order` above the largest order, so no free block qualifies), and
/// the old setting is put back when dropped. With it on, memory freed by one run
/// (a tool's copy removed, a warm-up file) goes back to the host within seconds, and
/// the next run's writes pay a host fault per page again: whether a tool found warm
/// pages depended on how long after the last removal it started writing (georep's
/// secondary starts writing after the file is chunked, rsync at once). Without the
/// setting (not a VM, or not root), nothing changes and [`warm`] is all there is.
struct NoPageReporting {
    old: Option<String>,
}

const PAGE_REPORTING_ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";

impl NoPageReporting {
    fn new() -> NoPageReporting {
        let old = fs::read_to_string(PAGE_REPORTING_ORDER).ok();
        let off = old.is_some() && fs::write(PAGE_REPORTING_ORDER, "11").is_ok();
        if off {
            eprintln!(
                "free page reporting off for the run (was order {})",
                old.as_deref().unwrap_or("?").trim()
            );
        }
        NoPageReporting {
            old: old.filter(|_| off),
        }
    }
}

impl Drop for NoPageReporting {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            let _ = fs::write(PAGE_REPORTING_ORDER, old.trim());
        }
    }
}

fn count_files(root: &Path) -> usize {
    let mut n = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                // Not the sync progress the secondary keeps in the volume.
                if entry.file_name() != georep_datapath::index::PROGRESS_DIR {
                    pending.push(entry.path());
                }
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

/// User + system CPU seconds of `pid` (`own`), or of its waited-for children.
fn cpu_of(pid: u32, own: bool) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // After the name: state is field 3; utime 14, stime 15, cutime 16, cstime 17.
    let at = if own { 11 } else { 13 };
    fields.get(at..at + 2).map_or(0.0, |f| f[0] + f[1]) / 100.0
}

/// CPU seconds of this process's waited-for children so far.
fn children_cpu() -> f64 {
    cpu_of(std::process::id(), false)
}

/// CPU seconds of the cluster's agents and monitors so far.
fn cluster_cpu(cluster: &Cluster) -> f64 {
    (0..cluster.nodes.len())
        .map(|i| {
            let agent = cluster.nodes[i].pid().map_or(0.0, |pid| cpu_of(pid, true));
            let monitors: f64 = cluster
                .session_monitors(i)
                .into_iter()
                .map(|pid| cpu_of(pid, true))
                .sum();
            agent + monitors
        })
        .sum()
}

/// Runs `command`: seconds, stdout, CPU seconds.
fn timed(what: &str, mut command: Command) -> (f64, String, f64) {
    let cpu = children_cpu();
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
        children_cpu() - cpu,
    )
}

/// `rsync -a`, locally or (`ssh`) to root@127.0.0.1 through the loopback sshd: seconds,
/// bytes sent, CPU seconds.
fn rsync(src: &Path, dst: &Path, extra: &[&str], ssh: Option<&Ssh>) -> (f64, u64, f64) {
    let mut command = Command::new("rsync");
    command.args(["-a", "--stats"]).args(extra);
    let sshd_cpu = ssh.map_or(0.0, |s| cpu_of(s.sshd.pid(), false));
    match ssh {
        Some(ssh) => {
            command
                .arg("-e")
                .arg(format!("ssh {}", ssh.sshd.ssh_options(&ssh.key).join(" ")))
                .arg(format!("{}/", src.display()))
                .arg(format!("root@127.0.0.1:{}", dst.display()));
        }
        None => {
            command.arg(format!("{}/", src.display())).arg(dst);
        }
    }
    let (seconds, stats, cpu) = timed("rsync", command);
    let sent = stats
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes sent: "))
        .map(|v| v.replace(',', "").trim().parse().unwrap_or(0))
        .unwrap_or(0);
    let sshd_cpu = ssh.map_or(0.0, |s| cpu_of(s.sshd.pid(), false)) - sshd_cpu;
    (seconds, sent, cpu + sshd_cpu)
}

/// A loopback sshd that accepts `key` for root.
struct Ssh {
    sshd: Sshd,
    key: PathBuf,
}

fn ssh_setup(dir: &Path) -> Ssh {
    fs::create_dir_all(dir).unwrap();
    let key = dir.join("client_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success());
    let authorized = dir.join("authorized_keys");
    fs::copy(key.with_extension("pub"), &authorized).unwrap();
    Ssh {
        sshd: Sshd::start(dir, &authorized),
        key,
    }
}

fn tar_pipe(src: &Path, dst: &Path) -> (f64, f64) {
    fs::create_dir_all(dst).unwrap();
    let mut command = Command::new("sh");
    command.arg("-c").arg(format!(
        "tar -C '{}' -cf - . | tar -C '{}' -xf -",
        src.display(),
        dst.display()
    ));
    let (seconds, _, cpu) = timed("tar", command);
    (seconds, cpu)
}

/// The worker's `bytes_sent`, from its status file on node 0 (written every second:
/// read after the next write), plus the index bytes its rounds saved on the secondary.
fn bytes_sent(cluster: &Cluster) -> u64 {
    std::thread::sleep(Duration::from_millis(2500));
    cluster.worker_bytes_sent(&[0]) + cluster.worker_index_saves(0).iter().sum::<u64>()
}

/// Polls `done` every 5 ms until true; returns when the poll that saw it done began,
/// as an instant and as seconds since the wait began (what the check itself takes,
/// such as counting 20 000 files, is not the sync's time).
fn wait(what: &str, mut done: impl FnMut() -> bool) -> (Instant, f64) {
    let started = Instant::now();
    loop {
        let polled = Instant::now();
        if done() {
            return (polled, (polled - started).as_secs_f64());
        }
        assert!(started.elapsed() < WAIT, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A primary with `src` as its brick, a secondary with `dst`; the session started
/// (when, and the cluster's CPU seconds then).
fn ours(src: &Path, dst: &Path, warm_bytes: usize) -> (Cluster, Instant, f64) {
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
    // Agents that have just booted act on their peers once a gossip round has shown
    // them live: let that pass, so the clock times a sync, not an agent's start (as
    // rsync's does not include sshd's).
    std::thread::sleep(Duration::from_secs(2));
    warm(dst.parent().unwrap_or(dst), warm_bytes);
    let cpu = cluster_cpu(&cluster);
    let started = Instant::now();
    // `--no-wait`: the clock times the sync, not the command's wait for every node to
    // confirm the start (about a second, which the sync of 20k files fits inside).
    cluster.ok(0, &["start", "gv0", "n2::gv1", "--no-wait"]);
    (cluster, started, cpu)
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut file = fs::File::open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut out = vec![0; len];
    let _ = file.read_exact(&mut out);
    out
}

fn row(what: &str, tool: &str, seconds: f64, bytes: Option<u64>, per_s: &str, cpu: f64) {
    let bytes = bytes.map_or("-".to_string(), |b| {
        format!("{:.1} MiB", b as f64 / 1048576.0)
    });
    println!("| {what} | {tool} | {seconds:.2} s | {per_s} | {bytes} | {cpu:.2} s |");
}

/// Whether the cases of `group` (`small`: the 20 000 files; `big`: the 1 GiB file)
/// run: all unless the command line names groups (`cargo bench ... -- big`).
fn wants(group: &str) -> bool {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    named.is_empty() || named.iter().any(|n| n == group)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut mounts = Tmpfs::default();
    let root = dir.path().join("t");
    mounts.mount(&root, "8g");
    let p = |name: &str| -> PathBuf { root.join(name) };
    let ssh = ssh_setup(&dir.path().join("ssh"));
    // Memory warm for the whole run: reporting off, then as much touched as the runs
    // will hold at once.
    let _no_reporting = NoPageReporting::new();
    warm(&root, 6 << 30);
    println!("| case | tool | time | rate | bytes sent | CPU |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let files_per_s = |t: f64| format!("{:.0} files/s", SMALL_FILES as f64 / t);

    if wants("small") {
        // 20 000 small files.
        small_tree(&p("small"));
        warm(&root, SMALL_WARM);
        let (t, sent, cpu) = rsync(&p("small"), &p("small-rsync"), &[], None);
        row(
            "20k x 4 KiB initial",
            "rsync -a",
            t,
            Some(sent),
            &files_per_s(t),
            cpu,
        );
        warm(&root, SMALL_WARM);
        let (t, sent, cpu) = rsync(&p("small"), &p("small-ssh"), &[], Some(&ssh));
        row(
            "20k x 4 KiB initial",
            "rsync -a over ssh",
            t,
            Some(sent),
            &files_per_s(t),
            cpu,
        );
        warm(&root, SMALL_WARM);
        let (t, cpu) = tar_pipe(&p("small"), &p("small-tar"));
        row(
            "20k x 4 KiB initial",
            "tar pipe",
            t,
            None,
            &files_per_s(t),
            cpu,
        );
        fs::create_dir_all(p("small-ours")).unwrap();
        {
            let (cluster, started, cpu) = ours(&p("small"), &p("small-ours"), SMALL_WARM);
            // Counting 20 000 files every poll would take CPU from the agents: the
            // count runs once the last file of the tree (in the order the worker
            // sends) is there.
            let last = p(&format!("small-ours/d199/f{:05}", SMALL_FILES - 1));
            let (done, _) = wait("small files", || {
                last.exists() && count_files(&p("small-ours")) == SMALL_FILES
            });
            let t = (done - started).as_secs_f64();
            let cpu = cluster_cpu(&cluster) - cpu;
            row(
                "20k x 4 KiB initial",
                "georep",
                t,
                Some(bytes_sent(&cluster)),
                &files_per_s(t),
                cpu,
            );
            // No-op: with inotify a round with nothing changed reads nothing; measured as
            // the CPU of 10 idle seconds (10 rounds at change-interval 1).
            let cpu = cluster_cpu(&cluster);
            std::thread::sleep(Duration::from_secs(10));
            let cpu = cluster_cpu(&cluster) - cpu;
            row(
                "20k x 4 KiB no-op",
                "georep (10 idle rounds, inotify)",
                10.0,
                None,
                "-",
                cpu,
            );
            // What the backstop walk (every 5 min, or when inotify cannot watch) costs.
            let (index, _) = georep_datapath::scan(&p("small"), None).unwrap();
            let started = Instant::now();
            let (again, _) = georep_datapath::scan(&p("small"), Some(&index)).unwrap();
            assert!(georep_datapath::diff(&index, &again).is_empty());
            let t = started.elapsed().as_secs_f64();
            row(
                "20k x 4 KiB no-op",
                "georep (one full walk)",
                t,
                None,
                "-",
                t,
            );
            let (t, sent, cpu) = rsync(&p("small"), &p("small-rsync"), &[], None);
            row("20k x 4 KiB no-op", "rsync -a", t, Some(sent), "-", cpu);
            let (t, sent, cpu) = rsync(&p("small"), &p("small-ssh"), &[], Some(&ssh));
            row(
                "20k x 4 KiB no-op",
                "rsync -a over ssh",
                t,
                Some(sent),
                "-",
                cpu,
            );
            // 100 renamed files.
            let before = bytes_sent(&cluster);
            let cpu = cluster_cpu(&cluster);
            for i in 0..100 {
                let dir = p("small").join(format!("d{:03}", i % 200));
                fs::rename(
                    dir.join(format!("f{i:05}")),
                    dir.join(format!("renamed{i:05}")),
                )
                .unwrap();
            }
            let (_, t) = wait("renames", || {
                p("small-ours/d099/renamed00099").exists() && !p("small-ours/d099/f00099").exists()
            });
            let cpu = cluster_cpu(&cluster) - cpu;
            row(
                "100 renames",
                "georep",
                t,
                Some(bytes_sent(&cluster) - before),
                "-",
                cpu,
            );
            let (t, sent, cpu) = rsync(&p("small"), &p("small-rsync"), &["--delete"], None);
            row("100 renames", "rsync -a --delete", t, Some(sent), "-", cpu);
            let (t, sent, cpu) = rsync(&p("small"), &p("small-ssh"), &["--delete"], Some(&ssh));
            row(
                "100 renames",
                "rsync -a --delete over ssh",
                t,
                Some(sent),
                "-",
                cpu,
            );
            drop(cluster);
        }
        for name in [
            "small",
            "small-rsync",
            "small-ssh",
            "small-tar",
            "small-ours",
        ] {
            let _ = fs::remove_dir_all(p(name));
        }
    }

    if wants("big") {
        // One 1 GiB file.
        fs::create_dir_all(p("big")).unwrap();
        big_file(&p("big"));
        let mib = BIG_SIZE as f64 / 1048576.0;
        let mib_per_s = |t: f64| format!("{:.0} MiB/s", mib / t);
        warm(&root, BIG_WARM);
        let (t, sent, cpu) = rsync(&p("big"), &p("big-rsync"), &[], None);
        row(
            "1 GiB initial",
            "rsync -a",
            t,
            Some(sent),
            &mib_per_s(t),
            cpu,
        );
        warm(&root, BIG_WARM);
        let (t, sent, cpu) = rsync(&p("big"), &p("big-ssh"), &[], Some(&ssh));
        row(
            "1 GiB initial",
            "rsync -a over ssh",
            t,
            Some(sent),
            &mib_per_s(t),
            cpu,
        );
        warm(&root, BIG_WARM);
        let (t, cpu) = tar_pipe(&p("big"), &p("big-tar"));
        row("1 GiB initial", "tar pipe", t, None, &mib_per_s(t), cpu);
        let _ = fs::remove_dir_all(p("big-tar"));
        fs::create_dir_all(p("big-ours")).unwrap();
        let (cluster, started, cpu) = ours(&p("big"), &p("big-ours"), BIG_WARM);
        let target = p("big-ours/big.bin");
        let (done, _) = wait("the big file", || {
            fs::metadata(&target).is_ok_and(|m| m.len() == BIG_SIZE as u64)
        });
        let t = (done - started).as_secs_f64();
        let cpu = cluster_cpu(&cluster) - cpu;
        row(
            "1 GiB initial",
            "georep",
            t,
            Some(bytes_sent(&cluster)),
            &mib_per_s(t),
            cpu,
        );
        // 1 MiB overwritten in the middle.
        let patch = noise(1 << 20, 77);
        let offset = (BIG_SIZE / 2) as u64;
        let before = bytes_sent(&cluster);
        warm(&root, BIG_WARM);
        let cpu = cluster_cpu(&cluster);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .open(p("big/big.bin"))
            .unwrap();
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.write_all(&patch).unwrap();
        drop(file);
        let (_, t) = wait("the 1 MiB change", || {
            read_at(&target, offset, patch.len()) == patch
        });
        let cpu = cluster_cpu(&cluster) - cpu;
        row(
            "1 MiB change in 1 GiB",
            "georep",
            t,
            Some(bytes_sent(&cluster) - before),
            "-",
            cpu,
        );
        warm(&root, BIG_WARM);
        let (t, sent, cpu) = rsync(&p("big"), &p("big-rsync"), &[], None);
        row(
            "1 MiB change in 1 GiB",
            "rsync -a (local: whole file)",
            t,
            Some(sent),
            "-",
            cpu,
        );
        warm(&root, BIG_WARM);
        let (t, sent, cpu) = rsync(&p("big"), &p("big-ssh"), &[], Some(&ssh));
        row(
            "1 MiB change in 1 GiB",
            "rsync -a over ssh (delta)",
            t,
            Some(sent),
            "-",
            cpu,
        );
        let mut file = fs::OpenOptions::new()
            .write(true)
            .open(p("big/big.bin"))
            .unwrap();
        file.seek(SeekFrom::Start(offset / 2)).unwrap();
        file.write_all(&noise(1 << 20, 78)).unwrap();
        drop(file);
        warm(&root, BIG_WARM);
        let (t, sent, cpu) = rsync(&p("big"), &p("big-rsync"), &["--no-whole-file"], None);
        row(
            "1 MiB change in 1 GiB",
            "rsync -a --no-whole-file",
            t,
            Some(sent),
            "-",
            cpu,
        );
        drop(cluster);
    }
    drop(mounts);
}
