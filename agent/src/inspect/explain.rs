//! `inspect explain`: why a session's monitor is or is not running on a node, as a
//! reason and sentences. Pure functions.

use super::*;

pub(crate) fn monitor_view(
    report: &MonitorReport,
    published_at_ms: Option<u64>,
    age_ms: Option<u64>,
) -> MonitorView {
    MonitorView {
        state: report.state.to_string(),
        pid: report.pid,
        restarts: report.restarts,
        last_error: report.last_error.clone(),
        desired_stamp: report.desired_stamp.as_ref().map(ToString::to_string),
        restart_stamp: report.restart_stamp.as_ref().map(ToString::to_string),
        since_ms: report.since_ms,
        backoff_remaining_ms: report.backoff_remaining_ms,
        last_decision: report.last_decision.clone(),
        published_at_ms,
        age_ms,
    }
}

/// Everything `explain` decides from, gathered from the local agent's view.
#[derive(Debug, Clone)]
pub struct ExplainFacts<'a> {
    /// The node explained.
    pub node: &'a str,
    /// Whether it is the node answering.
    pub is_self: bool,
    /// The converged view of the session.
    pub view: &'a SessionView,
    /// Whether the node is live.
    pub live: bool,
    /// Milliseconds since its heartbeat last advanced.
    pub last_heard_ms: Option<u64>,
    /// Its bricks of the primary volume.
    pub primary_bricks: &'a [Brick],
    /// Whether it hosts a brick of the secondary volume.
    pub hosts_secondary: bool,
    /// Its published monitor report for the session.
    pub report: Option<&'a MonitorReport>,
    /// How old that report is (its relative times are as of publication).
    pub report_age_ms: Option<u64>,
    /// The session's newest write.
    pub latest_write: Option<&'a LatestWrite>,
    /// The node's published frontier.
    pub seen: Seen,
    /// Whether the node acknowledged the latest write's eager push (known only to its
    /// writer).
    pub acked: bool,
}

impl ExplainFacts<'_> {
    /// Milliseconds the monitor has been in its reported state, as of now.
    pub fn state_for_ms(&self) -> Option<u64> {
        self.report
            .map(|r| r.since_ms.saturating_add(self.report_age_ms.unwrap_or(0)))
    }

    /// Milliseconds until the reported retry, as of now (0: due).
    pub fn retry_in_ms(&self) -> Option<u64> {
        self.report
            .and_then(|r| r.backoff_remaining_ms)
            .map(|ms| ms.saturating_sub(self.report_age_ms.unwrap_or(0)))
    }

    /// Whether the node has merged the latest write (true when none is known).
    pub fn merged(&self) -> bool {
        self.latest_write
            .is_none_or(|w| has_merged(self.node, &self.seen, w, self.acked))
    }

    /// The node's `seen` entry for the latest write's (reported) origin.
    pub fn node_seen(&self) -> Option<WritePosition> {
        let origin = &self.latest_write?.origin;
        self.seen.get(origin).copied()
    }
}

/// The reason code, by precedence: a dead node's state is unknown; a node without
/// primary bricks never runs a monitor; a lagging node acts on older state; then the
/// session's state, then the node's monitor report.
pub fn explain_reason(facts: &ExplainFacts<'_>) -> ExplainReason {
    if !facts.live {
        return ExplainReason::NodeDead;
    }
    if facts.primary_bricks.is_empty() {
        return ExplainReason::NotPrimary;
    }
    if !facts.merged() {
        return ExplainReason::Lagging;
    }
    if !facts.view.exists {
        return ExplainReason::Deleted;
    }
    match facts.view.desired {
        DesiredState::Created | DesiredState::Stopped => ExplainReason::DesiredStopped,
        DesiredState::Paused => ExplainReason::DesiredPaused,
        DesiredState::Started => match facts.report.map(|r| r.state) {
            Some(MonitorState::Faulty) => ExplainReason::Faulty,
            Some(MonitorState::Started) => ExplainReason::Running,
            _ => ExplainReason::Starting,
        },
    }
}

/// push-pem sentences about `node` for a session: as a primary, whether it published
/// current keys and which secondaries have not installed them, and why; as a
/// secondary, which primaries' keys it lacks, and why. `installs` are the secondary
/// nodes' reports, `published` what `node` published, if anything.
pub fn key_sentences(
    node: &str,
    view: &SessionView,
    primary: bool,
    secondary: bool,
    published: Option<&SessionKeys>,
    installs: &BTreeMap<String, KeyInstall>,
) -> Vec<String> {
    let mut out = Vec::new();
    if !view.options.push_pem {
        return out;
    }
    let current = |r: &&KeyInstall| Some(&r.incarnation) == view.incarnation.as_ref();
    if primary {
        match (published, &view.incarnation) {
            (Some(keys), Some(inc)) if keys.current(inc, view.key_rotation.as_ref()) => {
                out.push(format!(
                    "push-pem: {node} published its session keys (gsyncd {}, tar {}).",
                    keys.secret.fingerprint, keys.tar.fingerprint
                ));
            }
            (Some(_), _) => out.push(format!(
                "push-pem: {node}'s published keys are older than the session's latest create or rotation; it regenerates them on its next pass."
            )),
            (None, _) => out.push(format!("push-pem: {node} has not published keys for this session.")),
        }
        for (secondary_node, report) in installs.iter().filter(|(_, r)| current(r)) {
            if let Some(why) = report.missing.get(node) {
                out.push(format!(
                    "push-pem: {secondary_node} has not installed {node}'s keys: {why}."
                ));
            } else if let Some(error) = &report.error {
                out.push(format!(
                    "push-pem: {secondary_node} cannot install keys: {error}."
                ));
            }
        }
    }
    if secondary {
        match installs.get(node).filter(current) {
            None => out.push(format!(
                "push-pem: {node} has not reported installing this session's keys yet."
            )),
            Some(report) => {
                if let Some(error) = &report.error {
                    out.push(format!("push-pem: {node} cannot install keys: {error}."));
                } else {
                    out.push(format!(
                        "push-pem: {node} holds the keys of {} primary node(s) in {}.",
                        report.installed.len(),
                        report.file
                    ));
                }
                for (missing, why) in &report.missing {
                    out.push(format!("push-pem: {node} lacks {missing}'s keys: {why}."));
                }
            }
        }
    }
    out
}

/// `has v3 of n2, needs v5` (generations named when they differ).
pub fn lag_text(origin: &str, has: Option<WritePosition>, needs: WritePosition) -> String {
    match has {
        None => format!("has no write of {origin}, needs v{}", needs.version),
        Some(has) if has.generation == needs.generation => {
            format!("has v{} of {origin}, needs v{}", has.version, needs.version)
        }
        Some(has) => format!(
            "has v{} of {origin}'s generation {}, needs v{} of generation {}",
            has.version, has.generation, needs.version, needs.generation
        ),
    }
}

/// A time for people: milliseconds under a second, else whole seconds rounded up
/// (`350ms`, `3s`, `1m 5s`).
fn duration_text(ms: u64) -> String {
    let shown = if ms < 1000 {
        std::time::Duration::from_millis(ms)
    } else {
        std::time::Duration::from_secs(ms.div_ceil(1000))
    };
    humantime::format_duration(shown).to_string()
}

/// The conclusion for `reason` and every fact behind it, as plain sentences.
pub fn explain_text(facts: &ExplainFacts<'_>, reason: ExplainReason) -> (String, Vec<String>) {
    let node = facts.node;
    let view = facts.view;
    let id = &view.id;
    let heard = facts
        .last_heard_ms
        .map(|ms| format!("{} ago", duration_text(ms)))
        .unwrap_or_else(|| "never".into());
    let pid = facts.report.and_then(|r| r.pid);
    let mut sentences = Vec::new();

    let mut session = match (&view.incarnation, view.exists) {
        (Some(created), true) => format!("Session {id} exists (created at {created})"),
        (_, false) => format!(
            "Session {id} is deleted (delete at {})",
            view.deleted
                .as_ref()
                .map_or_else(|| "unknown".into(), ToString::to_string)
        ),
        (None, true) => format!("Session {id} exists"),
    };
    match &view.desired_stamp {
        Some(stamp) => {
            let _ = write!(session, "; desired state {} set at {stamp}.", view.desired);
        }
        None => {
            let _ = write!(
                session,
                "; desired state {} (never set since creation).",
                view.desired
            );
        }
    }
    sentences.push(session);

    sentences.push(if facts.is_self {
        format!("{node} is the node answering, live.")
    } else if facts.live {
        format!("{node} is live (heartbeat last advanced {heard}).")
    } else {
        format!(
            "{node} is dead in this agent's view (heartbeat last advanced {heard}); what it runs now is unknown here."
        )
    });

    if facts.primary_bricks.is_empty() {
        sentences.push(format!(
            "{node} is not a primary node: it hosts no brick of {}, so no monitor runs there.",
            id.primary_volume
        ));
    } else {
        let bricks: Vec<String> = facts
            .primary_bricks
            .iter()
            .map(|b| format!("{} (replica set {})", b.path, b.replica_set))
            .collect();
        sentences.push(format!(
            "{node} hosts primary bricks of {}: {}.",
            id.primary_volume,
            bricks.join(", ")
        ));
    }
    if facts.hosts_secondary {
        sentences.push(format!(
            "{node} hosts the secondary volume {}: no SSH key management is implemented yet; nothing is installed.",
            id.secondary_volume
        ));
    }

    match facts.latest_write {
        Some(write) if facts.merged() => sentences.push(format!(
            "{node} has merged the session's latest write ({}, v{} of {}).",
            write.stamp, write.version, write.origin
        )),
        Some(write) => sentences.push(format!(
            "{node} is lagging behind the latest write ({}): it {}.",
            write.stamp,
            lag_text(&write.origin, facts.node_seen(), write.position())
        )),
        None => sentences.push(
            "No namespace gossiped here carries a write of this session yet (it may have arrived by push only)."
                .to_string(),
        ),
    }

    match facts.report {
        Some(report) => {
            let mut line = format!("Its published monitor report: {}", report.state);
            if let Some(pid) = report.pid {
                let _ = write!(line, ", pid {pid}");
            }
            let _ = write!(
                line,
                ", {} restart{}, in this state for {}",
                report.restarts,
                if report.restarts == 1 { "" } else { "s" },
                duration_text(facts.state_for_ms().unwrap_or(report.since_ms))
            );
            match facts.report_age_ms {
                Some(age) => {
                    let _ = write!(line, " (published {} ago).", duration_text(age));
                }
                None => line.push_str(" (as of publication)."),
            }
            sentences.push(line);
            if let Some(error) = &report.last_error {
                sentences.push(format!("Last error: {error}."));
            }
            if let Some(ms) = facts.retry_in_ms() {
                let prefix = if report.state == MonitorState::Faulty {
                    "Faulty: r"
                } else {
                    "R"
                };
                sentences.push(format!("{prefix}etrying in {}.", duration_text(ms)));
            }
            if !report.last_decision.is_empty() {
                sentences.push(format!("Last decision: {}.", report.last_decision));
            }
            match (&report.desired_stamp, &view.desired_stamp) {
                (acted, current) if acted == current => {
                    if current.is_some() {
                        sentences.push("It has acted on the current desired stamp.".into());
                    }
                }
                (Some(acted), Some(current)) => sentences.push(format!(
                    "It last acted on desired stamp {acted}; the current one is {current}."
                )),
                (None, Some(current)) => sentences.push(format!(
                    "It has not acted on the current desired stamp {current} yet."
                )),
                (Some(acted), None) => sentences.push(format!(
                    "It last acted on desired stamp {acted}, which this incarnation no longer has."
                )),
                (None, None) => {}
            }
        }
        None if !facts.primary_bricks.is_empty() => sentences.push(format!(
            "{node} has published no monitor status for this session."
        )),
        None => {}
    }

    let stopping = |base: String| match pid {
        Some(pid) => format!("{base} (its monitor, pid {pid}, is still being stopped)."),
        None => format!("{base}."),
    };
    let message = match reason {
        ExplainReason::NodeDead => format!(
            "{node} is dead in this agent's view: whatever it runs is unknown here; it will act on the converged state when it returns."
        ),
        ExplainReason::NotPrimary => format!(
            "{node} is not a primary node: it hosts no brick of {}, so no monitor runs there.",
            id.primary_volume
        ),
        ExplainReason::Lagging => {
            let needs = facts
                .latest_write
                .map(|w| lag_text(&w.origin, facts.node_seen(), w.position()))
                .unwrap_or_default();
            format!(
                "{node} is lagging behind the latest write ({needs}): it acts on older state until it merges it."
            )
        }
        ExplainReason::Deleted => {
            stopping(format!("The session is deleted: no monitor runs on {node}"))
        }
        ExplainReason::DesiredStopped => stopping(format!(
            "Desired state is {}: no monitor runs on {node}",
            view.desired
        )),
        ExplainReason::DesiredPaused => format!(
            "Desired state is Paused: the monitor on {node} is kept frozen (SIGSTOP to its process group)."
        ),
        ExplainReason::Faulty => {
            let report = facts.report;
            let retry = facts
                .retry_in_ms()
                .map(|ms| format!("retrying in {}", duration_text(ms)))
                .unwrap_or_else(|| "no retry pending".into());
            format!(
                "The monitor on {node} is Faulty: it keeps exiting ({} restarts, last error: {}); {retry}.",
                report.map_or(0, |r| r.restarts),
                report
                    .and_then(|r| r.last_error.as_deref())
                    .unwrap_or("none recorded")
            )
        }
        ExplainReason::Running => format!(
            "The monitor is running on {node}{} as desired.",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        ),
        ExplainReason::Starting => format!(
            "Desired state is Started; the monitor on {node} is not running yet ({}).",
            facts
                .report
                .map(|r| format!("state {}", r.state))
                .unwrap_or_else(|| "no status published".into())
        ),
    };
    (message, sentences)
}
