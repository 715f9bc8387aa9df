//! push-pem through the mesh, over real processes: key pairs generated on every
//! primary, managed blocks in every secondary's authorized_keys (checked line by line
//! and with Debian's `ssh-keygen`), nodes that were down at create, rotation or delete
//! catching up, logins through a real `sshd`, and create's verification of the
//! secondary on real (size-limited tmpfs) brick directories.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use georep_tests::sshd::Sshd;
use georep_tests::tmpfs::Tmpfs;
use georep_tests::{Cluster, NodeSpec, Placement, TEST_GOSSIP_MS, TEST_MONITOR, free_port};

const WAIT: Duration = Duration::from_secs(30);
const SECONDARY: &str = "n4::gv1";
const SESSION_DIR: &str = "gv0_n4_gv1";
const BEGIN: &str = "# BEGIN georep-mesh session gv0:root@n4::gv1";
const END: &str = "# END georep-mesh session gv0:root@n4::gv1";
const OUTSIDE: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 admin@laptop\n# kept as it is\n";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The key lines of the session's block in `file` (empty when there is no block).
fn block_lines(file: &Path) -> Vec<String> {
    let content = read(file);
    let Some(start) = content.find(BEGIN) else {
        return Vec::new();
    };
    let rest = &content[start..];
    let end = rest.find(END).expect("a block has its END marker");
    rest[..end]
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The public key (`ssh-ed25519 AAAA...`, comment dropped) in a `.pub` file.
fn public_key(path: &Path) -> String {
    let text = read(path);
    let mut words = text.split_whitespace();
    format!(
        "{} {}",
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default()
    )
}

fn session_dir(cluster: &Cluster, i: usize) -> PathBuf {
    cluster.nodes[i].data().sessions_root().join(SESSION_DIR)
}

/// `ssh-keygen -l -f FILE`'s fingerprint (`SHA256:...`).
fn ssh_keygen_fingerprint(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(path)
        .output()
        .expect("ssh-keygen (openssh-client) is installed: .ci/run installs it");
    assert!(
        out.status.success(),
        "ssh-keygen -l rejects {}: {}",
        path.display(),
        text(&out.stderr)
    );
    text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("ssh-keygen -l prints BITS FINGERPRINT COMMENT (TYPE)")
        .to_string()
}

/// The fingerprints node `i` published for the session, as `inspect keys` decodes them.
fn published_fingerprints(cluster: &Cluster, i: usize) -> (String, String) {
    let keys = cluster.json(0, &["inspect", "keys", &cluster.nodes[i].id, "k/"]);
    let row = keys["keys"]
        .as_array()
        .and_then(|rows| rows.iter().find(|k| k["kind"] == "keys"))
        .unwrap_or_else(|| panic!("{} published no keys: {keys}", cluster.nodes[i].id))
        .clone();
    let decoded = &row["decoded"];
    (
        decoded["secret"]["fingerprint"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        decoded["tar"]["fingerprint"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn keys_of(cluster: &Cluster, node: usize, secondary: &str) -> (u64, u64) {
    let status = cluster.json(node, &["status", "gv0", SECONDARY]);
    let rows = status["sessions"][0]["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    rows.iter()
        .find(|r| r["node"] == secondary)
        .map(|r| {
            (
                r["keys_installed"].as_u64().unwrap_or(0),
                r["keys_expected"].as_u64().unwrap_or(0),
            )
        })
        .unwrap_or((0, 0))
}

#[test]
fn every_primary_key_reaches_every_secondary_also_across_downtime_and_delete_removes_them() {
    let mut cluster = Cluster::five_nodes(Some(TEST_MONITOR));
    for i in [3, 4] {
        let file = cluster.authorized_keys(i);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, OUTSIDE).unwrap();
    }
    // A primary (n3) and a secondary (n5) are down at create.
    cluster.terminate(2);
    cluster.terminate(4);
    cluster.wait_live(0, 3, WAIT);
    let out = cluster.ok(3, &["create", "gv0", SECONDARY, "--push-pem"]);
    assert!(out.contains("successful"), "{out}");
    let n4_file = cluster.authorized_keys(3);
    cluster.wait_until(WAIT, "n4 to install n1's and n2's keys", || {
        block_lines(&n4_file).len() == 4
    });
    cluster.wait_until(WAIT, "status to count 2/3 on n4", || {
        keys_of(&cluster, 0, "n4") == (2, 3)
    });
    let detail = cluster.ok(0, &["status", "gv0", SECONDARY, "--detail"]);
    assert!(detail.contains("push-pem keys:"), "{detail}");
    assert!(
        detail.contains("n3: it is down and has not published keys"),
        "{detail}"
    );
    let explain = cluster.ok(0, &["inspect", "explain", "gv0", SECONDARY, "--node", "n4"]);
    assert!(
        explain.contains("n4 lacks n3's keys: it is down"),
        "{explain}"
    );

    // Both come back: n5 installs what exists, n3 generates and publishes its keys,
    // and both secondaries install them.
    cluster.restart(4);
    let n5_file = cluster.authorized_keys(4);
    cluster.wait_until(WAIT, "n5 to install the keys on its return", || {
        block_lines(&n5_file).len() == 4
    });
    cluster.restart(2);
    cluster.wait_until(WAIT, "n3's keys on both secondaries", || {
        block_lines(&n4_file).len() == 6 && block_lines(&n5_file).len() == 6
    });
    cluster.wait_until(WAIT, "status to count 3/3 on both", || {
        keys_of(&cluster, 1, "n4") == (3, 3) && keys_of(&cluster, 1, "n5") == (3, 3)
    });

    // Every key: 0600 files, accepted by ssh-keygen, fingerprints as inspect shows
    // them, installed restricted on both secondaries; nothing outside the block moved.
    let mut installed_keys = Vec::new();
    for i in 0..3 {
        let dir = session_dir(&cluster, i);
        let (secret_fp, tar_fp) = published_fingerprints(&cluster, i);
        for (name, fingerprint, command) in [
            (
                "secret.pem",
                &secret_fp,
                "/usr/lib/x86_64-linux-gnu/glusterfs/gsyncd",
            ),
            ("tar_ssh.pem", &tar_fp, "tar ${SSH_ORIGINAL_COMMAND#* }"),
        ] {
            let private = dir.join(name);
            let mode = std::fs::metadata(&private).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", private.display());
            let public = dir.join(format!("{name}.pub"));
            assert_eq!(
                &ssh_keygen_fingerprint(&public),
                fingerprint,
                "{}",
                public.display()
            );
            let key = public_key(&public);
            let line = format!("restrict,from=\"127.0.0.1\",command=\"{command}\" {key} ");
            for file in [&n4_file, &n5_file] {
                let lines = block_lines(file);
                assert_eq!(
                    lines.iter().filter(|l| l.starts_with(&line)).count(),
                    1,
                    "{line} in {}:\n{}",
                    file.display(),
                    read(file)
                );
            }
            installed_keys.push(key);
        }
        let conf = read(&dir.join("gsyncd.conf"));
        assert!(
            conf.contains(&format!("-i {}\n", dir.join("secret.pem").display())),
            "{conf}"
        );
    }
    for file in [&n4_file, &n5_file] {
        let content = read(file);
        assert!(content.starts_with(OUTSIDE), "{content}");
        assert_eq!(block_lines(file).len(), 6, "{content}");
    }

    // A hand edit inside the block is put back; one outside it stays.
    let edited = read(&n4_file).replacen("restrict,", "", 1) + "# added by hand\n";
    std::fs::write(&n4_file, &edited).unwrap();
    cluster.wait_until(WAIT, "the edited block to be restored", || {
        block_lines(&n4_file)
            .iter()
            .all(|l| l.starts_with("restrict,"))
    });
    assert!(read(&n4_file).ends_with("# added by hand\n"));
    let outside_now = OUTSIDE.to_string();
    assert!(read(&n4_file).starts_with(&outside_now));

    // Rotation: every key is replaced; the old ones are gone from every block.
    cluster.ok(1, &["create", "gv0", SECONDARY, "--push-pem", "--force"]);
    cluster.wait_until(WAIT, "every key to be rotated on both secondaries", || {
        [&n4_file, &n5_file].iter().all(|file| {
            let lines = block_lines(file);
            lines.len() == 6
                && installed_keys
                    .iter()
                    .all(|old| !lines.iter().any(|l| l.contains(old.as_str())))
        })
    });

    // Delete while n5 is down: n4 removes the block now, n5 when it returns.
    cluster.terminate(4);
    cluster.wait_live(0, 4, WAIT);
    cluster.ok(0, &["delete", "gv0", SECONDARY]);
    cluster.wait_until(WAIT, "n4 to remove the block", || {
        !read(&n4_file).contains(BEGIN)
    });
    assert_eq!(read(&n4_file), format!("{OUTSIDE}# added by hand\n"));
    assert!(
        read(&n5_file).contains(BEGIN),
        "n5 was down: its block is still there"
    );
    cluster.restart(4);
    cluster.wait_until(WAIT, "n5 to remove the block on its return", || {
        !read(&n5_file).contains(BEGIN)
    });
    assert_eq!(read(&n5_file), OUTSIDE);
    for i in 0..3 {
        assert!(
            !session_dir(&cluster, i).exists(),
            "the session's keys are removed with it"
        );
    }
}

#[test]
fn a_primary_key_logs_in_through_sshd_only_to_its_forced_command_and_only_from_its_address() {
    let scratch = tempfile::tempdir().unwrap();
    let recorded = scratch.path().join("recorded");
    let recorder = |name: &str| {
        let script = scratch.path().join(name);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"{name} $SSH_ORIGINAL_COMMAND\" >> {}\necho forced-{name}\n",
                recorded.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script.display().to_string()
    };
    let (gsyncd, tar) = (recorder("gsyncd"), recorder("tar"));
    let placements = vec![
        Placement {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            launcher: Vec::new(),
            extra_args: Vec::new(),
        },
        Placement {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            launcher: Vec::new(),
            extra_args: vec![
                "--ssh-gsyncd-command".into(),
                gsyncd,
                "--ssh-tar-command".into(),
                tar,
            ],
        },
    ];
    let cluster = Cluster::start_placed(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0"]),
            NodeSpec::new("n4", &["gv1:/bricks/n4/gv1"]),
        ],
        Some(TEST_MONITOR),
        TEST_GOSSIP_MS,
        placements,
    );
    cluster.wait_live(0, 2, WAIT);
    cluster.ok(0, &["create", "gv0", SECONDARY, "--push-pem"]);
    let file = cluster.authorized_keys(1);
    cluster.wait_until(WAIT, "n4 to install n1's keys", || {
        block_lines(&file).len() == 2
    });
    let sshd = Sshd::start(scratch.path(), &file);
    let dir = session_dir(&cluster, 0);
    let secret = dir.join("secret.pem");

    // The key runs the forced command, whatever was asked.
    let out = sshd.ssh(&secret, &[], &["rm", "-rf", "/tmp/x"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        read(&scratch.path().join("sshd.log"))
    );
    assert_eq!(text(&out.stdout), "forced-gsyncd\n");
    let out = sshd.ssh(&dir.join("tar_ssh.pem"), &[], &["tar", "--list"]);
    assert_eq!(text(&out.stdout), "forced-tar\n", "{}", text(&out.stderr));
    assert_eq!(read(&recorded), "gsyncd rm -rf /tmp/x\ntar tar --list\n");

    // No pty, no port forwarding.
    let out = sshd.ssh(&secret, &["-tt"], &["interactive"]);
    assert!(
        text(&out.stderr).contains("PTY allocation request failed"),
        "{}",
        text(&out.stderr)
    );
    let out = sshd.ssh(
        &secret,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "0:127.0.0.1:9",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("forwarding failed"),
        "{}",
        text(&out.stderr)
    );

    // From an address outside from=: refused. A key not in the block: refused.
    let out = sshd.ssh(&secret, &["-b", "127.0.0.2"], &["x"]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );
    let stranger = scratch.path().join("stranger");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(made.success());
    let out = sshd.ssh(&stranger, &[], &["x"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );

    // Rotation: the old key no longer logs in, the new one does.
    let old = scratch.path().join("old-secret.pem");
    std::fs::copy(&secret, &old).unwrap();
    let old_key = public_key(&dir.join("secret.pem.pub"));
    cluster.ok(0, &["create", "gv0", SECONDARY, "--push-pem", "--force"]);
    cluster.wait_until(WAIT, "the rotated keys on n4", || {
        let lines = block_lines(&file);
        lines.len() == 2 && !lines.iter().any(|l| l.contains(&old_key))
    });
    let out = sshd.ssh(&old, &[], &["x"]);
    assert_eq!(out.status.code(), Some(255), "the old key still logs in");
    let out = sshd.ssh(&secret, &[], &["after-rotation"]);
    assert_eq!(
        text(&out.stdout),
        "forced-gsyncd\n",
        "{}",
        text(&out.stderr)
    );
}

/// `georep --json create ARGS` on node 0: (exit code, code, message).
fn create(cluster: &Cluster, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["--json", "create"];
    all.extend_from_slice(args);
    let out = cluster.georep(0, &all);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (
        out.status.code(),
        value["code"].as_str().unwrap_or_default().to_string(),
        value["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn create_verifies_the_secondary_on_real_bricks_and_force_overrides_what_it_may() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    let mut mounts = Tmpfs::default();
    mounts.mount(&root.join("primary"), "64m");
    mounts.mount(&root.join("small"), "16m");
    mounts.mount(&root.join("large"), "128m");
    mounts.mount(&root.join("full"), "128m");
    std::fs::write(root.join("full/data.txt"), b"already here").unwrap();
    std::fs::create_dir(root.join("large/.glusterfs")).unwrap();
    let brick = |volume: &str, dir: &str| format!("{volume}:{}", root.join(dir).display());
    let (p, small, large, full, absent) = (
        brick("gv0", "primary"),
        brick("gv1", "small"),
        brick("gv2", "large"),
        brick("gv3", "full"),
        brick("gv4", "absent"),
    );
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &[&p, "gv5:/bricks/n1/gv5"]),
            NodeSpec::new("n2", &[&small, &large]),
            NodeSpec::new("n3", &[&full, &absent]),
        ],
        Some(TEST_MONITOR),
    );
    for i in 0..3 {
        cluster.wait_live(i, 3, WAIT);
    }
    // The facts are published a moment after start.
    cluster.wait_until(WAIT, "n1 to know n2's and n3's brick sizes", || {
        create(&cluster, &["gv0", "n2::gv1"]).1 == "secondary_too_small"
    });

    let refusals = [
        (
            vec!["gv0", "n2::gv1"],
            "secondary_too_small",
            "secondary gv1 has 16.0 MiB, primary gv0 needs 64.0 MiB",
        ),
        (
            vec!["gv0", "n3::gv3"],
            "secondary_not_empty",
            "secondary volume gv3 is not empty (n3:",
        ),
        (
            vec!["gv0", "n3::gv4"],
            "size_unknown",
            "cannot verify the size of gv4",
        ),
        (
            vec!["gv0", "nowhere::gv2"],
            "secondary_host_unknown",
            "secondary host nowhere is not a live node",
        ),
        (
            vec!["gv0", "n2::gv9"],
            "secondary_not_hosted",
            "secondary volume gv9 is not hosted by any live node",
        ),
        (
            vec!["gv0", "nobody-here@n2::gv2"],
            "secondary_user_missing",
            "user nobody-here does not exist on secondary node(s) n2",
        ),
    ];
    for (args, code, message) in &refusals {
        let (exit, got_code, got) = create(&cluster, args);
        assert_eq!(exit, Some(1), "{args:?}: {got}");
        assert_eq!(&got_code, code, "{args:?}: {got}");
        assert!(got.contains(message), "{args:?}: {got}");
        assert!(got.contains("use --force"), "{args:?}: {got}");
        // --force overrides it; the session then goes again.
        let mut forced = args.clone();
        forced.push("--force");
        let (exit, _, got) = create(&cluster, &forced);
        assert_eq!(exit, Some(0), "{forced:?}: {got}");
        cluster.ok(0, &["delete", args[0], args[1]]);
    }
    // The 128 MiB secondary holding only gluster's metadata passes every check.
    let (exit, _, got) = create(&cluster, &["gv0", "n2::gv2"]);
    assert_eq!(exit, Some(0), "{got}");

    // Refused even with --force: a second session into gv2, and a primary volume with
    // no bricks anywhere.
    let (exit, code, got) = create(&cluster, &["gv5", "n2::gv2", "--force"]);
    assert_eq!(
        (exit, code.as_str()),
        (Some(1), "secondary_volume_taken"),
        "{got}"
    );
    assert!(got.contains("--force does not override"), "{got}");
    let (exit, code, got) = create(&cluster, &["gv8", "n2::gv1", "--force"]);
    assert_eq!(
        (exit, code.as_str()),
        (Some(1), "primary_volume_unknown"),
        "{got}"
    );
    drop(cluster);
}
