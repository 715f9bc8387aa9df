//! The systemd integration: the shipped unit passes `systemd-analyze verify`, and a
//! real agent started with `NOTIFY_SOCKET` (as systemd starts a `Type=notify`
//! service) says `READY=1` only once its API answers and it has joined its peer, and
//! `STOPPING=1` on SIGTERM.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use georep_tests::{
    Cluster, NodeSpec, Placement, TEST_GOSSIP_MS, TEST_MONITOR, bin_dir, free_port,
};

fn packaging(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file)
}

#[test]
fn the_unit_file_verifies() {
    let unit = std::fs::read_to_string(packaging("georepd.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("KillMode=process"));
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("georepd.service");
    let built = bin_dir().join("georepd");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/georepd", &built.display().to_string()),
    )
    .unwrap();
    // (--man=no: the man pages it names are installed by the package, not here.)
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze (Debian's systemd): {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("georepd.service"))
        .collect();
    assert!(out.status.success() && about_ours.is_empty(), "{out:?}");
    for file in ["georep.tmpfiles", "georep.sysusers"] {
        assert!(packaging(file).is_file(), "{file}");
    }
}

#[test]
fn the_agent_notifies_ready_after_joining_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let placement = |launcher: Vec<String>| Placement {
        addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
        launcher,
        extra_args: Vec::new(),
    };
    let started = Instant::now();
    let mut cluster = Cluster::start_placed(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0"]),
            NodeSpec::new("n2", &["gv1:/bricks/n2/gv1"]),
        ],
        Some(TEST_MONITOR),
        TEST_GOSSIP_MS,
        vec![
            placement(Vec::new()),
            placement(vec![
                "env".into(),
                format!("NOTIFY_SOCKET={}", socket_path.display()),
            ]),
        ],
    );
    let receive = |what: &str| -> String {
        let mut buf = [0u8; 512];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no {what} from n2 in 30 s");
            if let Ok(n) = socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if message.lines().any(|l| l == what) {
                    return message;
                }
            }
        }
    };
    let ready = receive("READY=1");
    assert!(ready.contains("STATUS=running"), "{ready}");
    // By then its API answers and it sees its peer live.
    let nodes = cluster.json(1, &["nodes"]);
    let live = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["live"] == true)
        .count();
    assert_eq!(live, 2, "ready before joining: {nodes}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "not the give-up path"
    );
    cluster.terminate(1);
    receive("STOPPING=1");
}

/// `dpkg --root ROOT ARGS`, maintainer scripts run outside a chroot (`DPKG_ROOT`), the
/// libc and libgcc dependencies (this host's, not the empty root's) not checked.
fn dpkg(root: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("dpkg: {e}"))
}

#[test]
fn the_debian_package_installs_into_a_throwaway_root_and_runs() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(packaging("build-deb"))
        // Debug binaries: compressing them would be most of this test's time.
        .env("GEOREP_DEB_COMPRESSION", "none")
        .arg(bin_dir())
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let listing = Command::new("dpkg-deb")
        .args(["-c", &deb])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in [
        "./usr/bin/georep",
        "./usr/bin/georepd",
        "./etc/georep/georepd.toml",
        "./lib/systemd/system/georepd.service",
        "./usr/lib/tmpfiles.d/georep.conf",
        "./usr/share/dbus-1/system.d/org.georep.Agent.conf",
        "./usr/lib/sysusers.d/georep.conf",
        "./usr/share/man/man1/georep.1.gz",
        "./usr/share/man/man1/georep-webhook-add.1.gz",
        "./usr/share/man/man1/georepd.1.gz",
        "./usr/share/bash-completion/completions/georep",
        "./usr/share/zsh/vendor-completions/_georep",
        "./usr/share/fish/vendor_completions.d/georepd.fish",
        "./var/lib/glusterd/hooks/1/stop/pre/S29georep-mesh.sh",
        "./var/lib/glusterd/hooks/1/remove-brick/pre/S29georep-mesh.sh",
        "./var/lib/glusterd/hooks/1/delete/pre/S29georep-mesh.sh",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(file)),
            "{file} not in the package:\n{listing}"
        );
    }

    // Installed into an empty root with its own dpkg database.
    let root = tempfile::tempdir().unwrap();
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    std::fs::write(root.path().join("var/lib/dpkg/status"), "").unwrap();
    let out = dpkg(root.path(), &["-i", &deb]);
    let status = dpkg(root.path(), &["-s", "georep"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("Status: install ok installed"),
        "{out:?}\n{status:?}"
    );
    for bin in ["georep", "georepd"] {
        let version = Command::new(root.path().join("usr/bin").join(bin))
            .arg("--version")
            .output()
            .unwrap();
        assert!(version.status.success(), "{version:?}");
        assert!(String::from_utf8_lossy(&version.stdout).starts_with(&format!("{bin} ")));
    }
    // The configuration is a conffile: kept on remove, gone on purge.
    let conf = root.path().join("etc/georep/georepd.toml");
    dpkg(root.path(), &["-r", "georep"]);
    assert!(!root.path().join("usr/bin/georepd").exists());
    assert!(conf.exists(), "a conffile survives remove");
    dpkg(root.path(), &["-P", "georep"]);
    assert!(!conf.exists(), "purge removes it");
}

#[test]
fn log_format_json_writes_one_object_per_line_naming_the_session() {
    let json = ["--log-format", "json"];
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0"]).with_args(&json),
            NodeSpec::new("n2", &["gv1:/bricks/n2/gv1"]).with_args(&json),
        ],
        Some(TEST_MONITOR),
    );
    cluster.wait_live(0, 2, Duration::from_secs(30));
    cluster.ok(0, &["create", "gv0", "n2::gv1"]);
    cluster.ok(0, &["start", "gv0", "n2::gv1"]);
    let log = std::fs::read_to_string(cluster.nodes[0].data_dir.join("georepd.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "spawned monitor"
                && l["fields"]["session"]
                    .as_str()
                    .is_some_and(|s| s.contains("gv0"))),
        "a line about the session names it: {log}"
    );
}
