//! Secondary-side gsyncd processes of a session that no longer runs.
//!
//! Each primary worker's ssh starts `gsyncd.py secondary PV USER@HOST::SV ...` on a
//! secondary node (through the forced command), which mounts the secondary volume
//! (an aux-gfid mount it lazily unmounts at once). When the primary side stops, these
//! stay until `secondary-timeout` and ignore SIGTERM; SIGKILL ends them and with them
//! their mounts. The agent of a secondary node ends them when the session is stopped or
//! deleted: glusterd's `stop` does the same on every node.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long SIGTERM is given before SIGKILL (gsyncd's secondary side ignores it).
pub const GRACE: Duration = Duration::from_secs(2);

/// Whether `argv` is gsyncd's secondary side for primary volume `primary` and
/// secondary volume `secondary_volume`.
pub fn is_secondary_of(argv: &[String], primary: &str, secondary_volume: &str) -> bool {
    let Some(at) = argv
        .iter()
        .position(|a| a.ends_with("gsyncd.py") || a.ends_with("/gsyncd"))
    else {
        return false;
    };
    let rest = &argv[at + 1..];
    rest.first().is_some_and(|a| a == "secondary")
        && rest.get(1).is_some_and(|a| a == primary)
        && rest
            .get(2)
            .and_then(|s| s.rsplit_once("::"))
            .is_some_and(|(_, vol)| vol == secondary_volume)
}

/// The pids of this node's gsyncd secondary-side processes of the session.
pub fn find(primary: &str, secondary_volume: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            is_secondary_of(&argv, primary, secondary_volume)
        })
        .collect()
}

fn signal_all(pids: &[u32], sig: Signal) {
    for pid in pids {
        if let Ok(raw) = i32::try_from(*pid) {
            let _ = kill(Pid::from_raw(raw), sig);
        }
    }
}

/// SIGTERMs the session's secondary-side processes, SIGKILLs what is left after
/// [`GRACE`]; returns how many there were. Blocking (it waits).
pub fn end(primary: &str, secondary_volume: &str) -> usize {
    let pids = find(primary, secondary_volume);
    if pids.is_empty() {
        return 0;
    }
    tracing::info!(
        primary,
        secondary_volume,
        ?pids,
        "ending gsyncd's secondary-side processes of a session no longer running"
    );
    signal_all(&pids, Signal::SIGTERM);
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline && !find(primary, secondary_volume).is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    signal_all(&find(primary, secondary_volume), Signal::SIGKILL);
    pids.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &str) -> Vec<String> {
        words.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn only_the_sessions_secondary_side_matches() {
        let theirs = argv(
            "/usr/bin/python3 /usr/lib/x86_64-linux-gnu/glusterfs/python/syncdaemon/gsyncd.py \
             secondary pv root@10.99.0.2::sv --primary-node 10.99.0.1 --local-node 10.99.0.2",
        );
        assert!(is_secondary_of(&theirs, "pv", "sv"));
        assert!(!is_secondary_of(&theirs, "pv2", "sv"));
        assert!(!is_secondary_of(&theirs, "pv", "sv2"));
        let monitor = argv("python3 /x/gsyncd.py monitor pv root@h::sv -c /c");
        assert!(!is_secondary_of(&monitor, "pv", "sv"));
        let unrelated = argv("sleep secondary pv h::sv");
        assert!(!is_secondary_of(&unrelated, "pv", "sv"));
    }

    #[test]
    fn a_real_process_is_found_and_ended_even_when_it_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("gsyncd.py");
        std::fs::write(&fake, "").unwrap();
        // A shell that ignores SIGTERM, named like gsyncd's secondary side.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "trap '' TERM; while :; do sleep 0.1; done"])
            .arg(&fake)
            .args(["secondary", "pvx", "root@h::svx"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !find("pvx", "svx").contains(&pid) {
            assert!(Instant::now() < deadline, "the process is never found");
            std::thread::sleep(Duration::from_millis(20));
        }
        // (Its children between fork and exec carry its command line too.)
        assert!(end("pvx", "svx") >= 1);
        let status = child.wait().unwrap();
        assert!(!status.success(), "ended by SIGKILL");
        assert!(find("pvx", "svx").is_empty());
    }
}
