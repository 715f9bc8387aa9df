//! The local API's answers: a command applied locally, then waited on until the mesh
//! (and, for run-state changes, the monitors; for push-pem, the keys) follows; `node
//! forget`; and the read routes (status, nodes, config, exists).

use super::*;
use crate::events::{Cursor, Filter, format_cursor, parse_cursor};
use georep_api::types::EventsResponse;

impl Agent {
    /// The event streams this node holds, each (floor, high).
    pub fn event_ranges(&self) -> BTreeMap<String, (u64, u64)> {
        self.events.ranges()
    }

    /// The whole merged stream this node holds (the simulator compares nodes' streams).
    pub fn event_stream(&self) -> Vec<georep_api::types::StreamItem> {
        self.events
            .read(&Cursor::new(), &Filter::default(), usize::MAX)
            .0
    }

    /// `events`: the merged stream after `since` (a cursor `n1:5,n2:7`, an HLC
    /// `millis.counter@node`, or a duration back from now such as `10m`; nothing: from
    /// the start), filtered; waits up to `wait_ms` for something new when there is
    /// nothing yet (a long poll: `--follow`).
    pub async fn events(
        &self,
        since: Option<&str>,
        types: Vec<String>,
        session: Option<(String, String)>,
        node: Option<String>,
        wait_ms: u64,
        limit: usize,
    ) -> Result<EventsResponse, ApiError> {
        let mut filter = Filter {
            types,
            session,
            node,
            after: None,
        };
        let mut cursor = Cursor::new();
        match since.map(str::trim).filter(|s| !s.is_empty()) {
            None => {}
            Some(text) => {
                if let Some(parsed) = parse_cursor(text).filter(|_| text.contains(':')) {
                    cursor = parsed;
                } else if let Some(hlc) = Hlc::parse(text) {
                    filter.after = Some(hlc);
                } else if let Ok(back) = humantime::parse_duration(text) {
                    let millis = self
                        .wall
                        .now_millis()
                        .saturating_sub(back.as_millis() as u64);
                    filter.after = Some(Hlc::new(millis, 0, ""));
                } else {
                    return Err(ApiError::bad_request(format!(
                        "`{text}` is neither a cursor (n1@1796..:5,...), an HLC stamp (millis.counter@node) nor a duration (10m)"
                    )));
                }
            }
        }
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let mut changes = self.events.subscribe();
        loop {
            let (items, next) = self.events.read(&cursor, &filter, limit);
            if !items.is_empty() || Instant::now() >= deadline {
                return Ok(EventsResponse {
                    items,
                    cursor: format_cursor(&next),
                });
            }
            // Nothing admitted yet: skip what was read (filtered out) and wait.
            cursor = next;
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Applies an operation locally and (optionally) waits for the mesh to follow.
    pub async fn op(&self, request: OpRequest) -> Result<OpResponse, ApiError> {
        let id = SessionId::parse(&request.primary, &request.secondary).map_err(ApiError::from)?;
        let receipt = self.mesh.apply(&id, &request.op).await?;
        self.wake.notify_one();
        self.events.emit(
            &self.mesh,
            op_event(&request.op),
            op_message(&id, &request.op),
        );
        self.persist().await;
        let ((progress, pending), converged) = self
            .wait_for(request.wait, request.timeout_ms, || async {
                let progress = self.mesh.progress(&receipt).await;
                let pending = self
                    .pending_monitors(&id, &request.op, &receipt.stamp)
                    .await;
                let keys = self.pending_keys(&id, &request.op).await;
                let done = progress.complete() && pending.is_empty() && keys.is_empty();
                ((progress, (pending, keys)), done)
            })
            .await;
        let (pending, pending_keys) = pending;
        let value = match &request.op {
            SessionOp::SetConfig { key, .. } => georep_mesh::session_config::lookup(key)
                .ok()
                .and_then(|key| {
                    self.mesh
                        .replica()
                        .view(&id)
                        .and_then(|view| view.config.get(key.name).cloned())
                }),
            _ => None,
        };
        let message = views::success_message(&request.op, &id, value.as_deref());
        Ok(OpResponse {
            ok: true,
            session: id.to_string(),
            message,
            confirmed_nodes: progress.confirmed,
            dead_nodes: progress.dead,
            lagging_nodes: progress.lagging,
            pending_monitors: pending,
            pending_keys,
            converged,
            waited: request.wait,
            stamp: Some(receipt.stamp.to_string()),
            value,
        })
    }

    /// Evaluates `probe` (what it found, and whether that is everything waited for)
    /// until it is done, or at once without `wait`, or until `timeout_ms` passed.
    /// Returns the last finding and whether the wait ended done (never without `wait`).
    async fn wait_for<T, F: Future<Output = (T, bool)>>(
        &self,
        wait: bool,
        timeout_ms: u64,
        mut probe: impl FnMut() -> F,
    ) -> (T, bool) {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let mut changes = self.mesh.subscribe();
        loop {
            let (found, done) = probe().await;
            if done || !wait || Instant::now() >= deadline {
                return (found, done && wait);
            }
            // Acknowledgements and gossip wake us; the poll bounds the wait if a
            // change slipped between the check and the subscription.
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(WAIT_POLL) => {}
            }
        }
    }

    /// `node forget`: drops a dead node from every node's membership and (optionally)
    /// waits until every live node merged that.
    pub async fn forget(&self, request: ForgetRequest) -> Result<ForgetResponse, ApiError> {
        georep_mesh::validate_node_id(&request.node)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let (generation, position) = self.mesh.forget(&request.node).await?;
        self.wake.notify_one();
        let (progress, converged) = self
            .wait_for(request.wait, request.timeout_ms, || async {
                let progress = self.mesh.position_progress(position).await;
                let done = progress.complete();
                (progress, done)
            })
            .await;
        Ok(ForgetResponse {
            ok: true,
            session: None,
            message: format!(
                "Forgetting node {} (generation {generation}): it no longer shows in status or nodes, and is accepted as a new node if it returns",
                request.node
            ),
            node: request.node,
            generation,
            confirmed_nodes: progress.confirmed,
            dead_nodes: progress.dead,
            lagging_nodes: progress.lagging,
            converged,
            waited: request.wait,
        })
    }

    /// `create --push-pem` (and rotation): live secondary nodes that have not yet
    /// reported every live primary's current keys installed.
    async fn pending_keys(&self, id: &SessionId, op: &SessionOp) -> Vec<String> {
        let SessionOp::Create { options, .. } = op else {
            return Vec::new();
        };
        let Some(view) = self.mesh.replica().view(id).filter(|v| v.exists) else {
            return Vec::new();
        };
        if !options.push_pem || !view.options.push_pem {
            return Vec::new();
        }
        let membership = self.mesh.topology().await;
        let installs = self.key_installs(id).await;
        keys_pending(&membership, &installs, &view)
    }

    /// Live primary nodes whose monitor does not yet match what `op` asked for.
    async fn pending_monitors(&self, id: &SessionId, op: &SessionOp, stamp: &Hlc) -> Vec<String> {
        let wanted = match op {
            SessionOp::Delete { .. } => None,
            other => match other.target_state() {
                Some(state) => Some(state),
                None => return Vec::new(),
            },
        };
        let membership = self.mesh.topology().await;
        let statuses = self.node_statuses(id).await;
        membership
            .live()
            .filter(|m| m.may_host(&id.primary_volume))
            .filter(|m| {
                let status = statuses.get(&m.node_id);
                let matches = match (wanted, status) {
                    (None, None) => true,
                    (None, Some(s)) => s.report.pid.is_none(),
                    (Some(_), None) => false,
                    (Some(state), Some(s)) => {
                        s.report
                            .desired_stamp
                            .as_ref()
                            .is_some_and(|acted| acted >= stamp)
                            && report_matches(&s.report, state)
                    }
                };
                !matches
            })
            .map(|m| m.node_id.clone())
            .collect()
    }

    async fn node_statuses(&self, id: &SessionId) -> BTreeMap<String, NodeSessionStatus> {
        self.published(&monitor_key(id)).await
    }

    /// Every node's value of the owner-written `key`, decoded (undecodable ones are
    /// skipped, with a warning).
    pub(crate) async fn published<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> BTreeMap<String, T> {
        self.mesh
            .owned_values(key)
            .await
            .into_iter()
            .filter_map(|(node, values)| {
                let value = values.get(key)?;
                match codec::decode::<T>(value) {
                    Ok(decoded) => Some((node, decoded)),
                    Err(error) => {
                        tracing::warn!(%node, key, %error, "undecodable published value ignored");
                        None
                    }
                }
            })
            .collect()
    }

    /// `status`, for all sessions, one primary volume, or one session.
    pub async fn status(
        &self,
        primary: Option<&str>,
        secondary: Option<&str>,
    ) -> Result<StatusResponse, ApiError> {
        let replica = self.mesh.replica();
        let membership = self.mesh.membership().await;
        let only = match (primary, secondary) {
            (Some(p), Some(s)) => {
                let id = SessionId::parse(p, s)?;
                if !replica.view(&id).is_some_and(|v| v.exists) {
                    return Err(StateError::NotCreated(id).into());
                }
                Some(id)
            }
            _ => None,
        };
        let superseded = replica.superseded();
        let mut sessions = Vec::new();
        for view in replica.existing() {
            if only.as_ref().is_some_and(|id| *id != view.id)
                || primary.is_some_and(|p| p != view.id.primary_volume)
            {
                continue;
            }
            let mut status = self.session_status(&view, &membership).await;
            status.superseded_by = superseded.get(&view.id).map(ToString::to_string);
            sessions.push(status);
        }
        Ok(StatusResponse { sessions })
    }

    async fn session_status(&self, view: &SessionView, membership: &Membership) -> SessionStatus {
        let progress = self
            .mesh
            .session_progress(&view.id)
            .await
            .unwrap_or_default();
        let statuses = self.node_statuses(&view.id).await;
        let mut status = views::session_status(view, membership, progress, &statuses);
        if view.options.push_pem {
            let installs = self.key_installs(&view.id).await;
            status.secondary_keys = views::secondary_keys(view, membership, &installs);
        }
        status
    }

    /// Every secondary node's key installation report for `id`.
    pub(crate) async fn key_installs(&self, id: &SessionId) -> BTreeMap<String, KeyInstall> {
        self.published(&crate::keys::install_key(id)).await
    }

    /// `nodes`.
    pub async fn nodes(&self) -> NodesResponse {
        views::nodes(&self.mesh.membership().await)
    }

    /// `config` list or get.
    pub async fn config_get(
        &self,
        primary: &str,
        secondary: &str,
        key: Option<&str>,
    ) -> Result<ConfigResponse, ApiError> {
        views::config(&self.mesh.replica(), primary, secondary, key)
    }

    /// `exists` / `running`: answered from the local replica, no network round-trip.
    pub fn exists(
        &self,
        volume: &str,
        secondary: Option<&str>,
    ) -> Result<ExistsResponse, ApiError> {
        views::exists(&self.mesh.replica(), volume, secondary)
    }
}

fn report_matches(report: &MonitorReport, state: DesiredState) -> bool {
    match state {
        DesiredState::Started => {
            report.state == MonitorState::Started && report.since_ms >= START_GRACE_MS
        }
        DesiredState::Paused => report.state == MonitorState::Paused,
        DesiredState::Stopped | DesiredState::Created => report.pid.is_none(),
    }
}

/// gluster's eventsapi name of a command's event.
fn op_event(op: &SessionOp) -> &'static str {
    match op {
        SessionOp::Create { .. } => "GEOREP_CREATE",
        SessionOp::Start { .. } => "GEOREP_START",
        SessionOp::Stop { .. } => "GEOREP_STOP",
        SessionOp::Pause { .. } => "GEOREP_PAUSE",
        SessionOp::Resume { .. } => "GEOREP_RESUME",
        SessionOp::SetConfig { .. } => "GEOREP_CONFIG_SET",
        SessionOp::ResetConfig { .. } => "GEOREP_CONFIG_RESET",
        SessionOp::Delete { .. } => "GEOREP_DELETE",
    }
}

/// A command event's payload, with gluster's keys.
fn op_message(id: &SessionId, op: &SessionOp) -> BTreeMap<String, String> {
    let mut message: BTreeMap<String, String> = [
        ("primary".to_string(), id.primary_volume.clone()),
        ("secondary".to_string(), id.secondary()),
    ]
    .into();
    let mut put = |key: &str, value: String| {
        message.insert(key.to_string(), value);
    };
    match op {
        SessionOp::Create { options, force } => {
            put("push_pem", options.push_pem.to_string());
            put("force", force.to_string());
        }
        SessionOp::Start { force }
        | SessionOp::Stop { force }
        | SessionOp::Pause { force }
        | SessionOp::Resume { force } => put("force", force.to_string()),
        SessionOp::Delete {
            force,
            reset_sync_time,
        } => {
            put("force", force.to_string());
            put("reset_sync_time", reset_sync_time.to_string());
        }
        SessionOp::SetConfig { key, value } => {
            put("option", key.clone());
            put("value", value.clone());
        }
        SessionOp::ResetConfig { key } => put("option", key.clone()),
    }
    message
}

/// Live secondary nodes of `view`'s session that have not reported every live
/// primary's current keys installed. A live node whose info has not arrived yet may
/// host either volume, so it is waited for as both, as monitors are waited for: its
/// installs, and its keys at every secondary (until its info says otherwise).
fn keys_pending(
    membership: &Membership,
    installs: &BTreeMap<String, KeyInstall>,
    view: &SessionView,
) -> Vec<String> {
    let id = &view.id;
    let primaries: Vec<&str> = membership
        .live()
        .filter(|m| m.may_host(&id.primary_volume))
        .map(|m| m.node_id.as_str())
        .collect();
    membership
        .live()
        .filter(|m| m.may_host(&id.secondary_volume))
        .filter(|m| {
            !installs.get(&m.node_id).is_some_and(|r| {
                Some(&r.incarnation) == view.incarnation.as_ref()
                    && r.rotation == view.key_rotation
                    && r.error.is_none()
                    && primaries.iter().all(|p| r.installed.iter().any(|i| i == p))
            })
        })
        .map(|m| m.node_id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use georep_mesh::{Member, SessionOptions};

    /// n1 and n2 host the primary volume gv0, n3 the secondary gv1; `unknown` nodes
    /// are live but their info has not arrived.
    fn membership(unknown: &[&str]) -> Membership {
        let member = |id: &str, volume: Option<&str>| Member {
            node_id: id.to_string(),
            generation: 1,
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            live: true,
            scheduled_for_deletion: false,
            heartbeat: 1,
            last_heard_ms: Some(0),
            key_count: 0,
            max_version: 0,
            info: volume.map(|volume| NodeInfo {
                bricks: vec![Brick {
                    volume: volume.to_string(),
                    path: format!("/bricks/{id}"),
                    replica_set: 0,
                }],
                ..NodeInfo::default()
            }),
            seen: Default::default(),
        };
        let known = [("n1", "gv0"), ("n2", "gv0"), ("n3", "gv1")];
        Membership {
            self_id: "n1".to_string(),
            members: known
                .iter()
                .map(|(id, volume)| (id.to_string(), member(id, Some(volume))))
                .chain(unknown.iter().map(|id| (id.to_string(), member(id, None))))
                .collect(),
        }
    }

    fn view() -> SessionView {
        SessionView {
            id: SessionId::parse("gv0", "n3::gv1").unwrap(),
            exists: true,
            incarnation: Some(Hlc::new(5, 1, "n1")),
            deleted: None,
            desired: DesiredState::Created,
            desired_stamp: None,
            options: SessionOptions::default(),
            config: BTreeMap::new(),
            key_rotation: None,
        }
    }

    fn installed(primaries: &[&str]) -> KeyInstall {
        KeyInstall {
            incarnation: Hlc::new(5, 1, "n1"),
            rotation: None,
            user: "root".to_string(),
            file: "/root/.ssh/authorized_keys".to_string(),
            installed: primaries.iter().map(ToString::to_string).collect(),
            missing: BTreeMap::new(),
            error: None,
        }
    }

    /// `create --push-pem` confirms once every secondary installed every primary's
    /// keys; a live node whose info has not arrived may be either, so the wait covers
    /// it as a primary (its keys not installed yet) and as a secondary (no report).
    #[test]
    fn push_pem_waits_for_a_live_node_whose_info_has_not_arrived() {
        let (view, empty) = (view(), BTreeMap::new());
        let all = BTreeMap::from([("n3".to_string(), installed(&["n1", "n2"]))]);
        assert_eq!(keys_pending(&membership(&[]), &empty, &view), ["n3"]);
        assert!(keys_pending(&membership(&[]), &all, &view).is_empty());
        assert_eq!(
            keys_pending(&membership(&["n5"]), &all, &view),
            ["n3", "n5"]
        );
        let mut with_n5 = BTreeMap::from([("n3".to_string(), installed(&["n1", "n2", "n5"]))]);
        assert_eq!(keys_pending(&membership(&["n5"]), &with_n5, &view), ["n5"]);
        with_n5.insert("n5".to_string(), installed(&["n1", "n2", "n5"]));
        assert!(keys_pending(&membership(&["n5"]), &with_n5, &view).is_empty());
        // Another incarnation's installs do not count.
        let mut old = installed(&["n1", "n2"]);
        old.incarnation = Hlc::new(4, 0, "n1");
        let stale = BTreeMap::from([("n3".to_string(), old)]);
        assert_eq!(keys_pending(&membership(&[]), &stale, &view), ["n3"]);
    }
}
