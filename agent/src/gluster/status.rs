//! gsyncd's per-brick status files, read into the worker reports `status` shows.
//!
//! gsyncd's workers keep `<georep-session-working-dir>/brick_<quote_plus(path)>.status`,
//! JSON with `worker_status`, `crawl_status`, `last_synced` (Unix seconds, 0 for never),
//! `entry`/`data`/`meta`/`failures`, `checkpoint_time` (Unix seconds, 0 for none),
//! `checkpoint_completed` (`Yes`/`No`/`N/A`) and `checkpoint_completion_time`. As
//! `gluster volume geo-replication status` does (gsyncdstatus.py `get_status`), a
//! worker that is not Active shows no crawl, counters or sync time.

use serde::Deserialize;

use georep_api::{CrawlStatus, WorkerStatus};

use crate::monitor::BrickStatus;

/// The prefix of gsyncd's per-brick status file names.
const PREFIX: &str = "brick_";

/// A value gsyncd writes as a number or, for "none", as `N/A` or a word.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NumberOrWord {
    Number(u64),
    Word(#[allow(dead_code)] String),
}

impl NumberOrWord {
    fn number(&self) -> u64 {
        match self {
            NumberOrWord::Number(n) => *n,
            NumberOrWord::Word(_) => 0,
        }
    }
}

impl Default for NumberOrWord {
    fn default() -> Self {
        NumberOrWord::Number(0)
    }
}

/// The fields of a gsyncd brick status file this agent shows.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GsyncdFile {
    worker_status: String,
    crawl_status: String,
    last_synced: NumberOrWord,
    entry: NumberOrWord,
    data: NumberOrWord,
    meta: NumberOrWord,
    failures: NumberOrWord,
    checkpoint_time: NumberOrWord,
    checkpoint_completed: String,
    checkpoint_completion_time: NumberOrWord,
    #[serde(alias = "slave_node")]
    secondary_node: String,
}

/// The brick path a gsyncd status file is named for (`brick_%2Fdata%2Fb1.status` is
/// `/data/b1`), or `None` for any other file.
pub fn brick_of(file_name: &str) -> Option<String> {
    let quoted = file_name.strip_prefix(PREFIX)?.strip_suffix(".status")?;
    // quote_plus: `+` is a space, `%XX` a byte.
    let spaced = quoted.replace('+', " ");
    let path = percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()?
        .into_owned();
    path.starts_with('/').then_some(path)
}

/// One gsyncd status file as a worker report; `None` if it is not one.
pub fn read(file_name: &str, bytes: &[u8]) -> Option<BrickStatus> {
    let brick = brick_of(file_name)?;
    let file: GsyncdFile = serde_json::from_slice(bytes).ok()?;
    let status = WorkerStatus::from(file.worker_status.as_str());
    let active = file.worker_status == "Active";
    let time = |n: &NumberOrWord| {
        let n = n.number();
        (n > 0).then(|| crate::datapath::client::format_time(n))
    };
    let mut report = BrickStatus {
        brick,
        status,
        ..BrickStatus::default()
    };
    if active {
        report.crawl_status = CrawlStatus::from(file.crawl_status.as_str());
        report.last_synced = time(&file.last_synced);
        report.entry = file.entry.number();
        report.data = file.data.number();
        report.meta = file.meta.number();
        report.failures = file.failures.number();
        report.checkpoint_time = time(&file.checkpoint_time);
        report.checkpoint_completed = file.checkpoint_completed == "Yes";
        report.checkpoint_completion_time = time(&file.checkpoint_completion_time);
        // gsyncd's host part of the secondary it connected to (`root@b1` or `b1`).
        let node = file.secondary_node.rsplit('@').next().unwrap_or_default();
        report.secondary_node = (!node.is_empty()).then(|| node.to_string());
    } else {
        report.crawl_status = CrawlStatus::NotApplicable;
    }
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_decode_to_brick_paths() {
        assert_eq!(
            brick_of("brick_%2Fdata%2Fgv0+b1.status").as_deref(),
            Some("/data/gv0 b1")
        );
        assert_eq!(brick_of("brick_%2Fa%2Bb.status").as_deref(), Some("/a+b"));
        assert_eq!(
            brick_of("%2Fdata%2Fb1.status"),
            None,
            "the built-in's names"
        );
        assert_eq!(brick_of("brick_relative.status"), None);
        assert_eq!(brick_of("monitor.status"), None);
    }

    #[test]
    fn an_active_worker_shows_what_gluster_shows() {
        let bytes =
            br#"{"secondary_node": "b1", "worker_status": "Active", "last_synced": 1796313527,
            "last_synced_entry": 0, "crawl_status": "Changelog Crawl", "entry": 2, "data": 5,
            "meta": 1, "failures": 0, "checkpoint_completed": "Yes", "checkpoint_time": 1796313500,
            "checkpoint_completion_time": 1796313527}"#;
        let report = read("brick_%2Fbricks%2Fb1.status", bytes).unwrap();
        assert_eq!(report.brick, "/bricks/b1");
        assert_eq!(report.status.as_str(), "Active");
        assert_eq!(report.crawl_status, CrawlStatus::Changelog);
        assert_eq!(report.last_synced.as_deref(), Some("2026-12-03 15:58:47"));
        assert_eq!((report.entry, report.data, report.meta), (2, 5, 1));
        assert_eq!(report.secondary_node.as_deref(), Some("b1"));
        assert!(report.checkpoint_completed);
        assert_eq!(
            report.checkpoint_completion_time.as_deref(),
            Some("2026-12-03 15:58:47")
        );
    }

    #[test]
    fn a_passive_or_new_worker_shows_no_progress_and_garbage_is_skipped() {
        let passive = br#"{"worker_status": "Passive", "last_synced": 1796313527,
            "crawl_status": "Changelog Crawl", "entry": 2, "checkpoint_time": "N/A"}"#;
        let report = read("brick_%2Fb2.status", passive).unwrap();
        assert_eq!(report.status.as_str(), "Passive");
        assert_eq!(report.crawl_status, CrawlStatus::NotApplicable);
        assert_eq!((report.last_synced, report.entry), (None, 0));
        let fresh = br#"{"worker_status": "Initializing...", "last_synced": 0}"#;
        assert_eq!(
            read("brick_%2Fb2.status", fresh).unwrap().status.as_str(),
            "Initializing..."
        );
        assert!(read("brick_%2Fb2.status", b"{not json").is_none());
        assert!(read("brick_%2Fb2.status", b"[1, 2]").is_none());
    }
}
