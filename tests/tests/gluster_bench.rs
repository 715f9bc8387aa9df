//! Benchmark, run by hand (`cargo build --workspace && cargo test -p georep-tests
//! --test gluster_bench -- --ignored --nocapture`, as root, Gluster installed): on
//! the same two real Gluster clusters (`a1` primary, `b1` secondary, as in
//! `tests/gluster.rs`), the time from start to the first files on the secondary and
//! from a write to its arrival, once with `georep` managing gsyncd (volumes `pv1` ->
//! `sv1`) and once with gluster's own `gluster volume geo-replication` (`pv2` ->
//! `sv2`: `gsec_create`, root ssh from a1 to b1, `create push-pem`). Both with the
//! same gsyncd settings: `sync-method tarssh`, `change-interval 1`,
//! `changelog.rollover-time 1`, the default changelog crawl. Prints one line per
//! measurement; BENCHMARKS.md records them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use georep_tests::gluster::{self, GlusterHost};

/// How long one arrival may take before the run reports it as stalled.
const DEADLINE: Duration = Duration::from_secs(60);
/// Live writes measured per data path.
const SAMPLES: usize = 5;

/// Seconds until `arrived`, polled every 50 ms; `None` after [`DEADLINE`].
fn time_until(mut arrived: impl FnMut() -> bool) -> Option<f64> {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if arrived() {
            return Some(start.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn shown(t: Option<f64>) -> String {
    t.map_or_else(
        || format!("stalled (> {DEADLINE:?})"),
        |t| format!("{t:.2} s"),
    )
}

/// Writes the files present before start into `primary` (a mount seen from outside).
fn write_initial(primary: &Path) -> Vec<u8> {
    std::fs::create_dir_all(primary.join("d1/d2")).expect("mkdir");
    std::fs::write(primary.join("d1/d2/small"), b"hello gsyncd\n").expect("write");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(primary.join("big"), &big).expect("write");
    big
}

/// Measures start -> the initial files on `secondary` (panics with `diagnose()` when
/// they never arrive), then [`SAMPLES`] live writes (a stalled one is reported with
/// `diagnose()` once, and the rest still measured).
fn measure(
    label: &str,
    start: impl FnOnce(),
    primary: &Path,
    secondary: &Path,
    diagnose: impl Fn() -> String,
) {
    let big = write_initial(primary);
    let started = Instant::now();
    start();
    let first = time_until(|| {
        std::fs::read(secondary.join("d1/d2/small")).is_ok_and(|c| c == b"hello gsyncd\n")
            && std::fs::read(secondary.join("big")).is_ok_and(|c| c == big)
    })
    .map(|_| started.elapsed().as_secs_f64());
    println!(
        "{label}: start -> first files on the secondary: {}",
        shown(first)
    );
    let mut diagnosed = false;
    for k in 0..SAMPLES {
        let name = format!("live-{k}");
        let body = format!("written live {k}\n");
        std::fs::write(primary.join(&name), &body).expect("write");
        let visible =
            time_until(|| std::fs::read(secondary.join(&name)).is_ok_and(|c| c == body.as_bytes()));
        println!("{label}: write -> visible #{k}: {}", shown(visible));
        if visible.is_none() && !diagnosed {
            println!("{label} stalled:\n{}", diagnose());
            diagnosed = true;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
}

#[test]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
fn start_and_write_to_visible_georep_beside_glusters_own_geo_replication() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sites, mut a1, mut b1) = gluster::primary_and_secondary(dir.path());
    for volume in ["pv1", "pv2"] {
        a1.create_volume(volume, 1, &[("changelog.rollover-time", "1")]);
    }
    for volume in ["sv1", "sv2"] {
        b1.create_volume(volume, 1, &[]);
    }

    // georep: one agent per host, bricks from glusterd, gsyncd as the monitor.
    let cluster = gluster::start_agents(&a1, &b1);
    cluster.wait_live(0, 2, Duration::from_secs(60));
    // One sshd on b1 for both: the mesh's keys and root's own (AuthorizedKeysFile
    // takes several files; gluster's push-pem writes root's).
    let keys = format!(
        "{} /root/.ssh/authorized_keys",
        cluster.authorized_keys(1).display()
    );
    b1.start_sshd(Path::new(&keys));

    let (pv1, sv1) = (a1.mount("pv1"), b1.mount("sv1"));
    let (pv2, sv2) = (a1.mount("pv2"), b1.mount("sv2"));
    let outside = |host: &GlusterHost, p: &PathBuf| host.path(p);

    let secondary = "b1::sv1";
    // GEOREP_BENCH_ONLY=gluster measures gluster's own alone.
    let georep_too = std::env::var("GEOREP_BENCH_ONLY").as_deref() != Ok("gluster");
    if georep_too {
        cluster.ok(0, &["create", "pv1", secondary, "--push-pem"]);
        for (key, value) in [("sync-method", "tarssh"), ("change-interval", "1")] {
            cluster.ok(0, &["config", "pv1", secondary, key, value]);
        }
        let installed = time_until(|| {
            std::fs::read_to_string(cluster.authorized_keys(1)).is_ok_and(|k| k.contains("gsyncd"))
        });
        assert!(
            installed.is_some(),
            "the mesh never installed the keys on b1"
        );
        measure(
            "georep + gsyncd",
            || {
                cluster.ok(0, &["start", "pv1", secondary]);
            },
            &outside(&a1, &pv1),
            &outside(&b1, &sv1),
            || cluster.ok(0, &["status", "pv1", secondary, "--detail"]),
        );
        cluster.ok(0, &["stop", "pv1", secondary]);
    }

    // gluster's own: root ssh from a1 to b1, glusterd's hooks (the package's, into
    // each host's private /var/lib/glusterd), gsec_create, create push-pem.
    for host in [&a1, &b1] {
        let hooks = host.path(Path::new("/var/lib/glusterd/hooks"));
        let copied = std::process::Command::new("cp")
            .args(["-a", "/var/lib/glusterd/hooks/."])
            .arg(&hooks)
            .status()
            .expect("cp");
        assert!(copied.success(), "cannot copy glusterd's hooks");
        std::fs::create_dir_all(host.path(Path::new("/root/.ssh"))).expect("mkdir .ssh");
    }
    a1.must(&[
        "ssh-keygen",
        "-q",
        "-t",
        "rsa",
        "-N",
        "",
        "-f",
        "/root/.ssh/id_rsa",
    ]);
    let root_key = a1.must(&["cat", "/root/.ssh/id_rsa.pub"]);
    std::fs::write(b1.path(Path::new("/root/.ssh/authorized_keys")), root_key)
        .expect("root's key on b1");
    let keys = a1.gluster(&["system::", "execute", "gsec_create"]);
    println!("gsec_create: {}", keys.trim());
    let georep = |args: &[&str]| {
        let mut all = vec!["volume", "geo-replication", "pv2", "b1::sv2"];
        all.extend_from_slice(args);
        a1.gluster(&all)
    };
    georep(&["create", "push-pem", "force"]);
    for (key, value) in [("sync-method", "tarssh"), ("change-interval", "1")] {
        georep(&["config", key, value]);
    }
    measure(
        "gluster's own geo-replication",
        || {
            georep(&["start"]);
        },
        &outside(&a1, &pv2),
        &outside(&b1, &sv2),
        || {
            let status = georep(&["status", "detail"]);
            let logs = a1.sh(
                "tail -n 40 /var/log/glusterfs/geo-replication/*/gsyncd.log; \
                 grep -i -e hook -e gsec -e push /var/log/glusterfs/glusterd.log | tail -n 20; \
                 ls -la /var/lib/glusterd/geo-replication/ /var/lib/glusterd/hooks/1/gsync-create/post",
            );
            let remote = b1.sh("tail -n 20 /var/log/glusterfs/geo-replication-secondaries/*/gsyncd.log /var/log/glusterfs/geo-replication-slaves/*/gsyncd.log 2>&1; tail -n 5 /root/.ssh/authorized_keys; ls -la /var/lib/glusterd/geo-replication/");
            let sshd = std::fs::read_to_string(b1.dir.join("sshd/sshd.log")).unwrap_or_default();
            format!(
                "{status}\n--- a1 gsyncd.log ---\n{}{}\n--- b1 ---\n{}{}\n--- b1 sshd ---\n{sshd}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr),
                String::from_utf8_lossy(&remote.stdout),
                String::from_utf8_lossy(&remote.stderr)
            )
        },
    );
    georep(&["stop", "force"]);
    georep(&["delete"]);
    drop(cluster);
    drop(a1);
    drop(b1);
    drop(sites);
}
