//! Events about what this node observes: its monitors (MONITOR_*, GEOREP_FAULTY), its
//! workers (GEOREP_ACTIVE/PASSIVE/CHECKPOINT_COMPLETED), membership (PEER_*) and
//! volumes (VOLUME_*), each reported once cluster-wide where several nodes see it.

use super::*;
use crate::events::volumes;

/// GEOREP_ACTIVE / GEOREP_PASSIVE / GEOREP_CHECKPOINT_COMPLETED for every local
/// worker whose status changed between two published statuses (gluster's keys).
pub(super) fn worker_changes(
    id: &SessionId,
    node: &str,
    before: Option<&NodeSessionStatus>,
    now: &NodeSessionStatus,
) -> Vec<(&'static str, BTreeMap<String, String>)> {
    use georep_api::WorkerStatus;
    let mut out = Vec::new();
    for worker in &now.workers {
        let old = before.and_then(|b| b.workers.iter().find(|w| w.brick == worker.brick));
        let mut kinds = Vec::new();
        if old.is_none_or(|o| o.status != worker.status) {
            match worker.status {
                WorkerStatus::Active => kinds.push("GEOREP_ACTIVE"),
                WorkerStatus::Passive => kinds.push("GEOREP_PASSIVE"),
                _ => {}
            }
        }
        if worker.checkpoint_completed && !old.is_some_and(|o| o.checkpoint_completed) {
            kinds.push("GEOREP_CHECKPOINT_COMPLETED");
        }
        for kind in kinds {
            let mut message: BTreeMap<String, String> = [
                ("primary", id.primary_volume.clone()),
                ("secondary", id.secondary()),
                ("primary_volume", id.primary_volume.clone()),
                ("primary_node", node.to_string()),
                ("secondary_host", id.secondary_host.clone()),
                ("secondary_volume", id.secondary_volume.clone()),
                ("brick_path", worker.brick.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            if kind == "GEOREP_CHECKPOINT_COMPLETED" {
                if let Some(t) = &worker.checkpoint_time {
                    message.insert("checkpoint_time".into(), t.clone());
                }
                if let Some(t) = &worker.checkpoint_completion_time {
                    message.insert("checkpoint_completion_time".into(), t.clone());
                }
            }
            out.push((kind, message));
        }
    }
    out
}

impl Agent {
    /// MONITOR_STARTED / MONITOR_RESTARTED / MONITOR_STOPPED / GEOREP_FAULTY for every
    /// session whose monitor changed state on this node since the last pass.
    pub(super) fn monitor_events(&self, reports: &BTreeMap<SessionId, MonitorReport>) {
        let Ok(mut last) = self.last_monitor_states.lock() else {
            return;
        };
        for (id, report) in reports {
            let before = last.insert(id.clone(), (report.state, report.restarts));
            let kind = match (before, report.state) {
                // Restarted after a crash; also while Faulty (a crash loop keeps being
                // retried: each retry is reported, flapping aggregation bounds them).
                (Some((was, r)), now)
                    if was == now
                        && report.restarts > r
                        && matches!(now, MonitorState::Started | MonitorState::Faulty) =>
                {
                    "MONITOR_RESTARTED"
                }
                (Some((was, _)), now) if was == now => continue,
                (_, MonitorState::Started) => "MONITOR_STARTED",
                (Some(_), MonitorState::Stopped) => "MONITOR_STOPPED",
                (_, MonitorState::Faulty) => "GEOREP_FAULTY",
                _ => continue,
            };
            let mut message: BTreeMap<String, String> = [
                ("primary".to_string(), id.primary_volume.clone()),
                ("secondary".to_string(), id.secondary()),
                ("primary_node".to_string(), self.config.node_id.clone()),
            ]
            .into();
            if let Some(error) = &report.last_error {
                message.insert("error".into(), error.clone());
            }
            if let Some(pid) = report.pid {
                message.insert("monitor_pid".into(), pid.to_string());
            }
            self.events.emit(&self.mesh, kind, message);
        }
        last.retain(|id, _| reports.contains_key(id));
    }

    /// PEER_CONNECT / PEER_DISCONNECT, reported once cluster-wide: by the live node with
    /// the lowest id other than the subject. During a partition each side's lowest node
    /// reports what it sees (one report per side).
    pub(super) fn peer_events(&self, membership: &Membership) {
        let live: BTreeSet<String> = membership.live().map(|m| m.node_id.clone()).collect();
        let Ok(mut last) = self.last_live.lock() else {
            return;
        };
        let Some(before) = last.replace(live.clone()) else {
            return;
        };
        let me = &self.config.node_id;
        for (kind, nodes) in [
            ("PEER_CONNECT", live.difference(&before).collect::<Vec<_>>()),
            (
                "PEER_DISCONNECT",
                before.difference(&live).collect::<Vec<_>>(),
            ),
        ] {
            for node in nodes {
                let reporter = live.iter().find(|n| *n != node);
                if reporter == Some(me) {
                    self.events.emit(
                        &self.mesh,
                        kind,
                        [("peer".to_string(), node.clone())].into(),
                    );
                }
            }
        }
    }

    /// VOLUME_ADD_BRICK / VOLUME_REMOVE_BRICK / VOLUME_STATUS, reported once
    /// cluster-wide by the live node with the lowest id (during a partition, once per
    /// side). Every node tracks the volumes, so a new reporter starts from what it saw.
    pub(super) fn volume_events(&self, membership: &Membership) {
        // A peer heard moments ago but not (yet) judged live is one this node has just
        // learnt of (it is starting up, or the peer is): until the failure detector has
        // judged it, this node cannot know whether it is the reporter nor whether the
        // peer's bricks are down. Wait (keeping the last observation, so nothing is
        // lost); a peer that really died was last heard longer ago than this.
        let settle_ms = self.config.gossip_interval_ms.saturating_mul(3);
        // Not yet walked by the mesh's tick (no last-heard figure) is unjudged too.
        let unjudged = membership.members.values().any(|m| {
            !m.live && m.info.is_some() && m.last_heard_ms.is_none_or(|ms| ms < settle_ms)
        });
        if unjudged {
            return;
        }
        let now = volumes::volumes(membership);
        let Ok(mut last) = self.last_volumes.lock() else {
            return;
        };
        let Some(before) = last.replace(now.clone()) else {
            return;
        };
        let reporter = membership.live().map(|m| m.node_id.as_str()).min();
        if reporter != Some(self.config.node_id.as_str()) {
            return;
        }
        for (kind, message) in volumes::changes(&self.config.cluster_id, &before, &now) {
            self.events.emit(&self.mesh, kind, message);
        }
    }
}
