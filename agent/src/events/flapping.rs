//! Kubernetes-style aggregation of a flapping source: the first [`BURST`] events of one
//! kind about one subject within [`WINDOW_MS`] are recorded as they come; past that,
//! one `EVENTS_SUPPRESSED` record says suppression started, further ones are counted,
//! and when the window ends one `EVENTS_SUPPRESSED` record carries the count. Nothing
//! is dropped without a record saying how many.
//!
//! Commands (`GEOREP_CREATE` ... `GEOREP_CONFIG_RESET`) are never aggregated: one
//! event per command is the contract.

use std::collections::BTreeMap;

/// Events of one kind about one subject recorded individually per window.
pub const BURST: u32 = 5;
/// The aggregation window.
pub const WINDOW_MS: u64 = 5 * 60 * 1000;
/// The kind of the records aggregation writes.
pub const SUPPRESSED: &str = "EVENTS_SUPPRESSED";
/// Message keys that name an event's subject (the rest, such as an error text or a
/// pid, varies between occurrences of one flapping source).
const SUBJECT_KEYS: &[&str] = &[
    "primary",
    "secondary",
    "primary_node",
    "peer",
    "volume",
    "brick",
    "brick_path",
];

/// An event to record: kind and message.
pub type Record = (String, BTreeMap<String, String>);

#[derive(Debug, Clone)]
struct Source {
    subject: BTreeMap<String, String>,
    window_start_ms: u64,
    seen: u32,
    suppressed: u64,
    first_suppressed_ms: u64,
    last_suppressed_ms: u64,
}

/// Per (kind, subject): occurrences in the current window.
#[derive(Debug, Default)]
pub struct Flapping {
    sources: BTreeMap<(String, BTreeMap<String, String>), Source>,
}

fn is_command(kind: &str) -> bool {
    matches!(
        kind,
        "GEOREP_CREATE"
            | "GEOREP_START"
            | "GEOREP_STOP"
            | "GEOREP_PAUSE"
            | "GEOREP_RESUME"
            | "GEOREP_DELETE"
            | "GEOREP_CONFIG_SET"
            | "GEOREP_CONFIG_RESET"
    ) || kind == SUPPRESSED
}

fn summary(kind: &str, source: &Source, count: u64, state: &str) -> Record {
    let mut message = source.subject.clone();
    message.insert("event".into(), kind.to_string());
    message.insert("suppressed".into(), count.to_string());
    message.insert("state".into(), state.to_string());
    message.insert("window_s".into(), (WINDOW_MS / 1000).to_string());
    if count > 0 {
        message.insert("first_ms".into(), source.first_suppressed_ms.to_string());
        message.insert("last_ms".into(), source.last_suppressed_ms.to_string());
    }
    (SUPPRESSED.to_string(), message)
}

impl Flapping {
    /// What to record for an event of `kind` with `message` at `now_ms`: the event
    /// itself, a suppression notice, the summary of a window that ended, or nothing
    /// (counted).
    pub fn admit(
        &mut self,
        kind: &str,
        message: BTreeMap<String, String>,
        now_ms: u64,
    ) -> Vec<Record> {
        if is_command(kind) {
            return vec![(kind.to_string(), message)];
        }
        let subject: BTreeMap<String, String> = message
            .iter()
            .filter(|(k, _)| SUBJECT_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = Vec::new();
        let key = (kind.to_string(), subject.clone());
        let source = self.sources.entry(key).or_insert(Source {
            subject,
            window_start_ms: now_ms,
            seen: 0,
            suppressed: 0,
            first_suppressed_ms: 0,
            last_suppressed_ms: 0,
        });
        if now_ms.saturating_sub(source.window_start_ms) >= WINDOW_MS {
            if source.suppressed > 0 {
                out.push(summary(kind, source, source.suppressed, "ended"));
            }
            source.window_start_ms = now_ms;
            source.seen = 0;
            source.suppressed = 0;
        }
        source.seen += 1;
        if source.seen <= BURST {
            out.push((kind.to_string(), message));
        } else {
            if source.suppressed == 0 {
                source.first_suppressed_ms = now_ms;
                out.push(summary(kind, source, 0, "started"));
            }
            source.suppressed += 1;
            source.last_suppressed_ms = now_ms;
        }
        out
    }

    /// Summaries of windows that ended by `now_ms` with events suppressed (and
    /// forgets sources quiet for a whole window).
    pub fn flush(&mut self, now_ms: u64) -> Vec<Record> {
        let mut out = Vec::new();
        self.sources.retain(|(kind, _), source| {
            if now_ms.saturating_sub(source.window_start_ms) < WINDOW_MS {
                return true;
            }
            if source.suppressed > 0 {
                out.push(summary(kind, source, source.suppressed, "ended"));
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restart(session: &str, pid: u32) -> BTreeMap<String, String> {
        [
            ("primary".to_string(), session.to_string()),
            ("secondary".to_string(), "n4::gv1".to_string()),
            ("monitor_pid".to_string(), pid.to_string()),
        ]
        .into()
    }

    #[test]
    fn a_crash_loop_is_recorded_five_times_then_counted_and_summarised() {
        let mut flapping = Flapping::default();
        let mut recorded = Vec::new();
        for i in 0..40u32 {
            recorded.extend(flapping.admit(
                "MONITOR_RESTARTED",
                restart("gv0", i),
                u64::from(i) * 1000,
            ));
        }
        // Another session's restarts are their own source.
        recorded.extend(flapping.admit("MONITOR_RESTARTED", restart("gv9", 1), 40_000));
        let kinds: Vec<&str> = recorded.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "MONITOR_RESTARTED",
                "MONITOR_RESTARTED",
                "MONITOR_RESTARTED",
                "MONITOR_RESTARTED",
                "MONITOR_RESTARTED",
                SUPPRESSED,
                "MONITOR_RESTARTED"
            ]
        );
        assert_eq!(recorded[5].1["state"], "started");
        assert_eq!(recorded[5].1["event"], "MONITOR_RESTARTED");
        assert_eq!(recorded[6].1["primary"], "gv9");
        // Nothing before the window ends; then one summary with the count.
        assert!(flapping.flush(WINDOW_MS - 1).is_empty());
        let summary = flapping.flush(WINDOW_MS);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].1["suppressed"], "35");
        assert_eq!(summary[0].1["state"], "ended");
        assert_eq!(summary[0].1["primary"], "gv0");
        assert_eq!(summary[0].1["first_ms"], "5000");
        assert_eq!(summary[0].1["last_ms"], "39000");
        // A new window records again.
        let again = flapping.admit("MONITOR_RESTARTED", restart("gv0", 99), WINDOW_MS + 1);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0, "MONITOR_RESTARTED");
    }

    #[test]
    fn commands_are_never_aggregated() {
        let mut flapping = Flapping::default();
        for i in 0..20 {
            let out = flapping.admit("GEOREP_CONFIG_SET", restart("gv0", 1), i);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, "GEOREP_CONFIG_SET");
        }
    }
}
