//! The built-in monitor replicates, over real agents and real QUIC: a replica set of
//! two primary bricks (n1, n2) and a secondary brick (n3). The secondary tree equals
//! the primary brick after the initial sync and after live edits of every kind; when
//! the Active node dies (agent and monitor killed with -9) the Passive takes over from
//! the index the secondary kept and goes on.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use georep_datapath::noise;
use georep_tests::trees::{self, brick_of};
use georep_tests::{Cluster, NodeSpec};

const SECONDARY: &str = "n3::gv1";
const WAIT: Duration = Duration::from_secs(60);

fn wait_same(cluster: &Cluster, primary: &Path, secondary: &Path, what: &str) {
    trees::wait_equal(cluster, &[primary], secondary, true, WAIT, what);
}

/// The same tree on every brick given (replicas hold the same files).
fn populate(bricks: &[&Path]) {
    for root in bricks {
        for i in 0..40 {
            let dir = root.join(format!("dir{}/sub{}", i % 4, i % 3));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(format!("f{i}.txt")), format!("small file {i}\n")).unwrap();
        }
        fs::write(root.join("large.bin"), noise(12 << 20, 1)).unwrap();
        for k in 0..4 {
            fs::write(root.join(format!("big{k}.bin")), noise(3 << 20, 10 + k)).unwrap();
        }
        fs::write(root.join("doc.txt"), b"document").unwrap();
        fs::hard_link(root.join("doc.txt"), root.join("doc.link")).unwrap();
        // A large file with two names: sent once while read, its other name a link.
        fs::hard_link(root.join("big0.bin"), root.join("big0.link")).unwrap();
        symlink("large.bin", root.join("large.lnk")).unwrap();
        fs::set_permissions(root.join("doc.txt"), fs::Permissions::from_mode(0o640)).unwrap();
        xattr::set(root.join("doc.txt"), "user.tag", b"v1").unwrap();
    }
}

/// Live edits of every kind, the same on every brick given.
fn edit(bricks: &[&Path]) {
    for root in bricks {
        let mut large = fs::OpenOptions::new()
            .write(true)
            .open(root.join("large.bin"))
            .unwrap();
        large.seek(SeekFrom::Start(6 << 20)).unwrap();
        large.write_all(&noise(500_000, 2)).unwrap();
        drop(large);
        fs::OpenOptions::new()
            .append(true)
            .open(root.join("dir0/sub0/f0.txt"))
            .unwrap()
            .write_all(b"appended\n")
            .unwrap();
        fs::rename(root.join("dir1"), root.join("dir1-renamed")).unwrap();
        fs::rename(root.join("dir2/sub2/f2.txt"), root.join("dir0/sub0/f0.txt")).unwrap();
        fs::remove_file(root.join("dir3/sub0/f3.txt")).unwrap();
        fs::set_permissions(root.join("doc.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        xattr::set(root.join("doc.txt"), "user.tag", b"v2").unwrap();
        fs::create_dir(root.join("fresh")).unwrap();
        fs::write(root.join("fresh/new.txt"), b"new").unwrap();
    }
}

/// Connects to n3's data endpoint with node `i`'s certificate, opens one stream and
/// sends each of `steps` (a message body, postcard-encoded, and the raw bytes that
/// follow it) in turn, reading one answer after each: the answers, as far as the
/// stream went (an error, as text, ends it).
fn data_exchange(
    cluster: &Cluster,
    i: usize,
    steps: Vec<(Vec<u8>, Vec<u8>)>,
) -> Vec<Result<georep_datapath::proto::Response, String>> {
    use georep_datapath::proto::{ALPN, Response};
    let keys = cluster.json(0, &["inspect", "keys", "n3", "data"]);
    let addr: std::net::SocketAddr = keys["keys"][0]["raw"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("n3's data endpoint in {keys}"));
    let args = cluster.agent_args(i);
    let flag = |name: &str| {
        let at = args.iter().position(|a| a == name).expect(name);
        PathBuf::from(&args[at + 1])
    };
    let identity =
        georep_mesh::NodeIdentity::load(&flag("--tls-ca"), &flag("--tls-cert"), &flag("--tls-key"))
            .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let crypto = identity.client_config_for(ALPN).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
        let mut endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
        let conn = endpoint.connect(addr, "georep").unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut answers = Vec::new();
        for (body, data) in steps {
            let exchange = async {
                send.write_all(&(body.len() as u32).to_le_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                send.write_all(&body).await.map_err(|e| e.to_string())?;
                send.write_all(&data).await.map_err(|e| e.to_string())?;
                let mut len = [0u8; 4];
                recv.read_exact(&mut len).await.map_err(|e| e.to_string())?;
                let mut answer = vec![0; u32::from_le_bytes(len) as usize];
                recv.read_exact(&mut answer)
                    .await
                    .map_err(|e| e.to_string())?;
                postcard::from_bytes::<Response>(&answer).map_err(|e| e.to_string())
            };
            let answer = tokio::time::timeout(Duration::from_secs(20), exchange)
                .await
                .unwrap_or_else(|_| Err("no answer within 20 s".to_string()));
            let ended = answer.is_err();
            answers.push(answer);
            if ended {
                break;
            }
        }
        conn.close(0u32.into(), b"");
        answers
    })
}

/// A Hello for `session` (replica set 0), encoded.
fn hello(session: &str, index: bool) -> (Vec<u8>, Vec<u8>) {
    let request = georep_datapath::proto::Request::Hello {
        session: session.to_string(),
        replica_set: 0,
        index,
    };
    (postcard::to_stdvec(&request).unwrap(), Vec::new())
}

/// Connects to n3's data endpoint with node `i`'s certificate and says Hello for
/// `session`; the answer, as text.
fn hello_as(cluster: &Cluster, i: usize, session: &str) -> String {
    format!(
        "{:?}",
        data_exchange(cluster, i, vec![hello(session, true)])
    )
}

/// Where the secondary journals batches of replica set 0 (next to its saved index).
fn lost_round_journal(secondary: &Path) -> PathBuf {
    let dir = secondary.join(".georep/gv0_n3_gv1/initial");
    let index = dir.join("replica-set-0.index");
    assert!(index.exists(), "no saved index at {}", index.display());
    dir.join("replica-set-0.journal")
}

fn active_node(cluster: &Cluster, at: usize) -> Option<String> {
    cluster.json(at, &["status", "gv0", SECONDARY])["sessions"][0]["workers"]
        .as_array()?
        .iter()
        .find(|w| w["status"] == "Active" && w["crawl_status"] == "Changelog Crawl")
        .and_then(|w| w["node"].as_str().map(String::from))
}

#[test]
fn a_replica_set_replicates_live_edits_and_survives_losing_its_active_node() {
    let metrics: Vec<std::net::SocketAddr> = (0..2)
        .map(|_| std::net::SocketAddr::from(([127, 0, 0, 1], georep_tests::free_port())))
        .collect();
    let mut cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0:0"])
                .with_args(&["--metrics-listen", &metrics[0].to_string()]),
            NodeSpec::new("n2", &["gv0:/bricks/n2/gv0:0"])
                .with_args(&["--metrics-listen", &metrics[1].to_string()]),
            NodeSpec::new("n3", &["gv1:/bricks/n3/gv1"]),
        ],
        None,
    );
    cluster.wait_live(0, 3, WAIT);
    let bricks = [brick_of(&cluster, 0), brick_of(&cluster, 1)];
    let secondary = brick_of(&cluster, 2);
    populate(&[&bricks[0], &bricks[1]]);
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.ok(0, &["config", "gv0", SECONDARY, "change-interval", "1"]);
    cluster.ok(0, &["start", "gv0", SECONDARY]);
    wait_same(&cluster, &bricks[0], &secondary, "the initial sync");
    // Large files were sent while read, each once, also the one with two names.
    for i in 0..2 {
        let dir = cluster.nodes[i].data().sessions_root().join("gv0_n3_gv1");
        let log = fs::read_to_string(dir.join("monitor.log")).unwrap_or_default();
        assert!(
            !log.contains("not sent while read"),
            "n{}: {}",
            i + 1,
            cluster.logs_tail()
        );
    }
    // The large files were in flight together: the Active worker opened more than one
    // sync-job stream (a new one opens only while every open one is busy).
    let log = fs::read_to_string(cluster.nodes[2].data_dir.join("georepd.log")).unwrap();
    let jobs = log
        .lines()
        .filter(|l| l.contains("data path stream ready") && l.contains("sync job"))
        .count();
    assert!(
        jobs >= 2,
        "{jobs} sync-job streams:\n{}",
        cluster.logs_tail()
    );
    // Both workers may start at once; one that started on a view not yet converged
    // shows Active (Initializing...) and is refused by the secondary until, at the
    // next poll, it turns Passive.
    cluster.wait_until(
        WAIT,
        "an Active worker in Changelog Crawl and a Passive one",
        || {
            let status = cluster.json(2, &["status", "gv0", SECONDARY]);
            let workers = status["sessions"][0]["workers"].as_array().cloned();
            active_node(&cluster, 2).is_some()
                && workers
                    .is_some_and(|w| w.iter().filter(|w| w["status"] == "Passive").count() == 1)
        },
    );
    let status = cluster.json(2, &["status", "gv0", SECONDARY]);
    let workers = status["sessions"][0]["workers"].as_array().unwrap().clone();
    let active = workers.iter().find(|w| w["status"] == "Active").unwrap();
    assert!(active["last_synced"].is_string(), "{active}");
    assert!(active["data"].as_u64().unwrap() >= 40, "{active}");
    assert_eq!(active["secondary_node"], "n3");
    assert_eq!(
        workers.iter().filter(|w| w["status"] == "Passive").count(),
        1,
        "{workers:?}"
    );

    // A node that hosts no brick of the primary volume may not write: n3 itself, with
    // its own valid certificate, is refused.
    let answer = hello_as(&cluster, 2, "gv0_n3_gv1");
    assert!(
        answer.contains("n3 hosts no brick of the primary volume gv0"),
        "{answer}"
    );
    // The Passive node is a primary of the session, but the secondary admits only the
    // worker its own view calls Active: two workers never write one replica set.
    let active = active_node(&cluster, 2).unwrap();
    let passive_i = if active == "n1" { 1 } else { 0 };
    let answer = hello_as(&cluster, passive_i, "gv0_n3_gv1");
    assert!(
        answer.contains(&format!(
            "is not the Active node of replica set 0 of gv0 as this node sees it ({active} is)"
        )),
        "{answer}"
    );
    // An unknown session is refused too (n1 is a primary, but of no such session).
    let answer = hello_as(&cluster, 0, "gv7_n3_gv1");
    assert!(answer.contains("no session gv7_n3_gv1"), "{answer}");

    // The Active node's metrics show the data path's work.
    let scraped = |name: &str| -> f64 {
        metrics
            .iter()
            .map(|addr| georep_tests::http_get(*addr, "/metrics").1)
            .flat_map(|body| {
                body.lines()
                    .filter(|l| l.starts_with(name))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .collect::<Vec<f64>>()
            })
            .sum()
    };
    cluster.wait_until(WAIT, "data path metrics", || {
        scraped("georep_worker_sent_bytes_total{") >= f64::from(12u32 << 20)
            && scraped("georep_worker_files_synced_total{") >= 40.0
    });

    edit(&[&bricks[0], &bricks[1]]);
    wait_same(&cluster, &bricks[0], &secondary, "the live edits");

    // A round that changes one file saves what changed in the index, not all of it
    // (a million-file brick's index is ~200 MiB): its index bytes are a small part of
    // the first save's, which was whole.
    for brick in &bricks {
        fs::write(brick.join("fresh/one-more.txt"), b"one more").unwrap();
    }
    wait_same(&cluster, &bricks[0], &secondary, "one more file");
    let active_i = if active_node(&cluster, 2).as_deref() == Some("n1") {
        0
    } else {
        1
    };
    let saves = cluster.worker_index_saves(active_i);
    let (first, last) = (saves.first().copied(), saves.last().copied());
    assert!(
        saves.len() >= 2 && first.zip(last).is_some_and(|(f, l)| l * 20 < f),
        "index bytes saved per round: {saves:?}"
    );

    // A checkpoint completes once a round that began after it synced everything.
    cluster.ok(0, &["config", "gv0", SECONDARY, "checkpoint", "now"]);
    cluster.wait_until(WAIT, "the checkpoint completed", || {
        cluster.json(2, &["status", "gv0", SECONDARY])["sessions"][0]["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|w| {
                w["status"] == "Active"
                    && w["checkpoint_completed"] == true
                    && w["checkpoint_completion_time"].is_string()
            })
    });

    // The Active node dies: its agent and its monitor.
    let dead = active_node(&cluster, 2).unwrap();
    let (dead_i, alive_i) = if dead == "n1" { (0, 1) } else { (1, 0) };
    cluster.kill9_node(dead_i);
    // Meanwhile the volume changes (on the surviving replica).
    let survivor = &bricks[alive_i];
    fs::write(
        survivor.join("fresh/after-failover.txt"),
        b"still replicated",
    )
    .unwrap();
    fs::remove_file(survivor.join("doc.link")).unwrap();
    let survivor_id = if alive_i == 0 { "n1" } else { "n2" };
    cluster.wait_until(WAIT, "the Passive taking over", || {
        active_node(&cluster, 2).as_deref() == Some(survivor_id)
    });
    wait_same(&cluster, survivor, &secondary, "the sync after failover");

    // Its only secondary gone, the worker is Faulty; back, it recovers by itself.
    cluster.terminate(2);
    let worker_status = |cluster: &Cluster| {
        cluster.json(alive_i, &["status", "gv0", SECONDARY])["sessions"][0]["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["node"] == survivor_id)
            .map(|w| w["status"].as_str().unwrap_or_default().to_string())
    };
    cluster.wait_until(WAIT, "Faulty without a secondary", || {
        worker_status(&cluster).as_deref() == Some("Faulty")
    });
    fs::write(survivor.join("fresh/while-away.txt"), b"queued").unwrap();
    // What a worker cut off between applying a batch and saving the index leaves: an
    // entry the saved index does not know of, named in the secondary's journal. The
    // primary does not have it: the worker reconnecting removes it.
    fs::write(
        secondary.join("fresh/lost-round.txt"),
        b"applied, never saved",
    )
    .unwrap();
    let journal = lost_round_journal(&secondary);
    let frame = georep_datapath::journal::frame(&[(
        georep_datapath::RelPath::new("fresh/lost-round.txt").unwrap(),
        false,
    )])
    .unwrap();
    fs::write(&journal, frame).unwrap();
    // And what a secondary agent killed mid-write leaves beside it: a temporary file
    // named for a process that has ended. One of a running process stays.
    let mut ended = std::process::Command::new("true").spawn().unwrap();
    let dead = ended.id();
    ended.wait().unwrap();
    let partial = secondary.join(format!("fresh/.georep-tmp.lost.{dead}"));
    fs::write(&partial, b"half a file").unwrap();
    let in_use = secondary.join(format!("fresh/.georep-tmp.busy.{}", std::process::id()));
    fs::write(&in_use, b"being written").unwrap();
    cluster.restart(2);
    wait_same(
        &cluster,
        survivor,
        &secondary,
        "the sync after the secondary returned",
    );
    // The round's last batch is applied (and compares equal) a moment before the
    // index that describes it is saved and the journal removed.
    cluster.wait_until(
        WAIT,
        "the journal removed once the next index is saved",
        || !journal.exists(),
    );
    assert!(!partial.exists(), "a dead writer's temporary file was left");
    assert!(
        in_use.exists(),
        "a running writer's temporary file was removed"
    );
    fs::remove_file(&in_use).unwrap();
    cluster.wait_until(WAIT, "Active again", || {
        worker_status(&cluster).as_deref() == Some("Active")
    });

    // Deleted and created again, the session resumes from what the secondary has;
    // after `delete --reset-sync-time` it starts over.
    let data_synced_after_recreate = |cluster: &Cluster, reset: bool| -> u64 {
        cluster.ok(alive_i, &["stop", "gv0", SECONDARY]);
        let mut delete = vec!["delete", "gv0", SECONDARY];
        if reset {
            delete.push("--reset-sync-time");
        }
        cluster.ok(alive_i, &delete);
        // The secondary volume is not empty: gluster asks for --force then too.
        cluster.ok(alive_i, &["create", "gv0", SECONDARY, "--force"]);
        cluster.ok(alive_i, &["start", "gv0", SECONDARY]);
        cluster.wait_until(WAIT, "Active in Changelog Crawl after re-creation", || {
            active_node(cluster, 2).is_some()
        });
        std::thread::sleep(Duration::from_secs(2));
        let status = cluster.json(2, &["status", "gv0", SECONDARY]);
        status["sessions"][0]["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["node"] == survivor_id)
            .filter_map(|w| w["data"].as_u64())
            .sum()
    };
    let resumed = data_synced_after_recreate(&cluster, false);
    assert_eq!(resumed, 0, "files sent again after delete and create");
    let restarted = data_synced_after_recreate(&cluster, true);
    assert!(
        restarted >= 40,
        "only {restarted} files sent after delete --reset-sync-time"
    );
    wait_same(&cluster, survivor, &secondary, "the sync after the reset");
}

/// SIGCONTs a frozen agent however the test ends.
struct Thaw(nix::unistd::Pid);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// A stop in the middle of a round (a first sync whose secondary stopped answering, so
/// the round cannot end) still ends the monitor by itself before the supervisor's
/// SIGKILL: the worker drops the round and reports Stopped. The next start finishes.
#[test]
fn a_stop_in_the_middle_of_a_round_ends_the_monitor_cleanly_and_the_next_start_finishes() {
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0:0"]),
            NodeSpec::new("n2", &["gv1:/bricks/n2/gv1"]),
        ],
        None,
    );
    cluster.wait_live(0, 2, WAIT);
    let primary = brick_of(&cluster, 0);
    let secondary = brick_of(&cluster, 1);
    // Large enough that its sync takes a while even on a quiet machine (128 MiB took
    // 0.5 s): the secondary is frozen as soon as the file's stream opens.
    fs::write(primary.join("big.bin"), noise(512 << 20, 7)).unwrap();
    fs::write(primary.join("small.txt"), b"small").unwrap();
    let session = "n2::gv1";
    cluster.ok(0, &["create", "gv0", session]);
    // `--no-wait`: the watch below begins at once, not after the confirmation.
    cluster.ok(0, &["start", "gv0", session, "--no-wait"]);
    let n2_log = cluster.nodes[1].data_dir.join("georepd.log");
    let deadline = std::time::Instant::now() + WAIT;
    while !fs::read_to_string(&n2_log)
        .unwrap_or_default()
        .contains("kind=\"sync job\"")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the large file's stream never opened:\n{}",
            cluster.logs_tail()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let n2 = nix::unistd::Pid::from_raw(cluster.nodes[1].pid().expect("n2 running") as i32);
    nix::sys::signal::kill(n2, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let thaw = Thaw(n2);
    assert!(
        !secondary.join("big.bin").exists(),
        "the first sync ended before the secondary was frozen: the test needs a larger file"
    );

    // `--no-wait`: the frozen n2 cannot confirm; what counts is how the monitor ends.
    cluster.ok(0, &["stop", "gv0", session, "--no-wait"]);
    let log =
        || fs::read_to_string(cluster.nodes[0].data_dir.join("georepd.log")).unwrap_or_default();
    cluster.wait_until(WAIT, "the monitor to end", || {
        let log = log();
        log.contains("monitor exited") || log.contains("monitor killed")
    });
    assert!(
        log().contains("monitor exited with status 0"),
        "the monitor did not end by itself after SIGTERM:\n{}",
        cluster.logs_tail()
    );
    let dir = cluster.nodes[0].data().sessions_root().join("gv0_n2_gv1");
    let statuses: Vec<serde_json::Value> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            // a brick's status file is its path escaped (`%2F...`), beside monitor.status
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with('%') && name.ends_with(".status")
        })
        .map(|e| {
            let bytes = fs::read(e.path()).unwrap();
            serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                panic!(
                    "{}: {error}: {:?}",
                    e.path().display(),
                    String::from_utf8_lossy(&bytes)
                )
            })
        })
        .collect();
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    assert_eq!(statuses[0]["status"], "Stopped", "{statuses:?}");

    drop(thaw);
    cluster.wait_live(0, 2, WAIT);
    cluster.ok(0, &["start", "gv0", session]);
    wait_same(&cluster, &primary, &secondary, "the sync after the restart");
}

/// The secondary refuses, over the wire, what a hostile or broken primary could send
/// (issue 13's hostile-input item, beyond the Hello checks above): a large file begun
/// through a symlink that leads out of the volume, its pieces, a batch writing
/// through that symlink, a chunk whose bytes do not match its hash, and a path with
/// `..` that no honest encoder can produce. Each is refused and logged, nothing lands
/// outside the volume or under the wrong name, and the session goes on replicating.
/// Real agents, the Active node's own certificate, real QUIC.
#[test]
fn hostile_writes_over_the_wire_are_refused_logged_and_land_nowhere() {
    use georep_datapath::proto::{Request, Response, batch_request};
    use georep_datapath::{Op, RelPath};
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0:0"]),
            NodeSpec::new("n2", &["gv0:/bricks/n2/gv0:0"]),
            NodeSpec::new("n3", &["gv1:/bricks/n3/gv1"]),
        ],
        None,
    );
    cluster.wait_live(0, 3, WAIT);
    let bricks = [brick_of(&cluster, 0), brick_of(&cluster, 1)];
    let secondary = brick_of(&cluster, 2);
    for brick in &bricks {
        fs::write(brick.join("a.txt"), b"honest\n").unwrap();
    }
    cluster.ok(0, &["create", "gv0", SECONDARY]);
    cluster.ok(0, &["config", "gv0", SECONDARY, "change-interval", "1"]);
    cluster.ok(0, &["start", "gv0", SECONDARY]);
    wait_same(&cluster, &bricks[0], &secondary, "the initial sync");
    let mut active = None;
    cluster.wait_until(WAIT, "an Active worker in Changelog Crawl", || {
        active = active_node(&cluster, 2);
        active.is_some()
    });
    let active_i = if active.as_deref() == Some("n1") {
        0
    } else {
        1
    };

    let outside = tempfile::tempdir().unwrap();
    symlink(outside.path(), secondary.join("escape")).unwrap();
    let encode = |request: &Request| postcard::to_stdvec(request).unwrap();
    let path = |p: &str| RelPath::new(p).unwrap();
    let stolen = b"stolen".to_vec();
    let (chunks, content) = georep_datapath::chunk_bytes(&stolen);
    let write = |p: &str| Op::Write {
        path: path(p),
        size: stolen.len() as u64,
        content,
        chunks: chunks.clone(),
        meta: None,
    };
    let batch = |op: Op, bytes: &[u8]| {
        let (request, data) =
            batch_request(vec![(op, vec![(chunks[0].hash, bytes.to_vec().into())])]);
        (encode(&request), data.concat())
    };
    // One stream of a sync job, as the Active worker opens for a large file.
    let answers = data_exchange(
        &cluster,
        active_i,
        vec![
            hello("gv0_n3_gv1", false),
            (
                encode(&Request::OpenNew {
                    path: path("escape/owned"),
                }),
                Vec::new(),
            ),
            (
                encode(&Request::Append(vec![stolen.len() as u32])),
                stolen.clone(),
            ),
            batch(write("escape/batched"), &stolen),
            // the same length, other bytes: they do not match the hash
            batch(write("mismatch.txt"), b"forged"),
        ],
    );
    let shown = format!("{answers:?}");
    assert_eq!(answers.len(), 5, "{shown}");
    assert!(matches!(answers[0], Ok(Response::Ready { .. })), "{shown}");
    assert!(matches!(answers[1], Ok(Response::Opened)), "{shown}");
    // the pieces of a refused file are dropped, no hashes answered
    assert!(
        matches!(&answers[2], Ok(Response::Appended(h)) if h.is_empty()),
        "{shown}"
    );
    for (i, why) in [(3, "leaves the volume"), (4, "does not match its hash")] {
        let refused = match &answers[i] {
            Ok(Response::Applied(outcomes)) if outcomes.len() == 1 => outcomes[0].as_deref(),
            _ => None,
        };
        assert!(
            refused.is_some_and(|error| error.contains(why)),
            "answer {i} is not a refusal saying {why:?}: {shown}"
        );
    }
    // `..` cannot be expressed with RelPath: the bytes are forged.
    let mut dotdot = encode(&Request::OpenNew {
        path: path("xx/owned"),
    });
    let at = dotdot.windows(2).position(|w| w == b"xx").unwrap();
    dotdot[at..at + 2].copy_from_slice(b"..");
    let answers = data_exchange(
        &cluster,
        active_i,
        vec![hello("gv0_n3_gv1", false), (dotdot, Vec::new())],
    );
    let shown = format!("{answers:?}");
    assert!(matches!(answers[0], Ok(Response::Ready { .. })), "{shown}");
    // not decodable: the stream ends unanswered
    assert!(
        answers.get(1).is_some_and(|answer| answer.is_err()),
        "a path with .. was answered: {shown}"
    );

    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "something was written outside the volume"
    );
    assert!(!secondary.join("mismatch.txt").exists());
    assert!(!secondary.parent().unwrap().join("owned").exists());
    let log = fs::read_to_string(cluster.nodes[2].data_dir.join("georepd.log")).unwrap();
    for said in [
        "data path write refused",
        "data path operation refused",
        "data path stream dropped",
    ] {
        assert!(
            log.contains(said),
            "n3's log does not say {said:?}:\n{}",
            cluster.logs_tail()
        );
    }

    // The session goes on.
    fs::remove_file(secondary.join("escape")).unwrap();
    for brick in &bricks {
        fs::write(brick.join("b.txt"), b"after\n").unwrap();
    }
    wait_same(
        &cluster,
        &bricks[0],
        &secondary,
        "a file written after the hostile streams",
    );
}
