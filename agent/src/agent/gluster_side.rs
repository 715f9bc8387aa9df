//! What a node does for gluster's gsyncd beside running it: the volume options on a
//! primary volume before gsyncd starts (glusterd set them at geo-replication create),
//! and ending gsyncd's secondary-side processes on a secondary node when the session
//! stops or is deleted (glusterd's stop did so on every node). And, with bricks from
//! glusterd, following glusterd's volumes: a volume created, started, stopped or
//! deleted there shows up in this node's published bricks within [`GLUSTERD_POLL`].

use super::*;
use crate::config::MonitorProfile;
use crate::gluster::{leftovers, volumes};
use georep_api::types::{GlusterHookRequest, GlusterHookResponse};

/// How long a failed `gluster volume set` waits before it is tried again.
const PREPARE_RETRY: Duration = Duration::from_secs(30);

/// How often a node with bricks from glusterd lists glusterd's volumes again.
pub const GLUSTERD_POLL: Duration = Duration::from_secs(5);

/// Per session, what this node last did for gsyncd.
#[derive(Debug, Default)]
pub(super) struct GlusterSide {
    /// Primary volumes prepared, per session incarnation (or the time of a failure).
    prepared: BTreeMap<(SessionId, Option<Hlc>), Option<Instant>>,
    /// Whether each session was last seen running (secondary nodes).
    running: BTreeMap<SessionId, bool>,
}

impl Agent {
    /// With bricks from glusterd: lists glusterd's volumes every [`GLUSTERD_POLL`] until
    /// `round` ends and publishes this node's bricks when they change. A failure keeps
    /// the bricks last listed and is logged once per distinct error.
    pub async fn follow_glusterd(self: Arc<Self>, round: CancellationToken) {
        if !self.config.bricks_from_glusterd {
            return;
        }
        let mut last_error: Option<String> = None;
        loop {
            let listed = async {
                let uuid =
                    crate::gluster::glusterd_uuid(Path::new(crate::gluster::GLUSTERD_WORKDIR))?;
                volumes::local_bricks_async(&uuid).await
            };
            let listed = tokio::select! {
                _ = round.cancelled() => return,
                listed = listed => listed,
            };
            match listed {
                Ok(local) => {
                    if last_error.take().is_some() {
                        tracing::info!("glusterd answers again");
                    }
                    self.set_bricks(local);
                }
                Err(error) => {
                    let error = error.to_string();
                    if last_error.as_ref() != Some(&error) {
                        tracing::warn!(%error, "cannot list glusterd's volumes; keeping the bricks last listed");
                        last_error = Some(error);
                    }
                }
            }
            tokio::select! {
                _ = round.cancelled() => return,
                _ = tokio::time::sleep(GLUSTERD_POLL) => {}
            }
        }
    }

    /// Before the supervisor acts: sets geo-replication's volume options on the primary
    /// volumes of the existing sessions this node (`bricks`, as of this pass) runs
    /// gsyncd for (once per session incarnation; a failure is retried after
    /// [`PREPARE_RETRY`]). Awaited, so gsyncd
    /// starts on a volume that has them, as under glusterd (which set them at create):
    /// without the changelog its workers' live crawl has nothing to read.
    pub(super) async fn prepare_primaries(
        &self,
        views: &[(SessionView, Option<Hlc>)],
        bricks: &[BrickSpec],
    ) {
        if self.config.monitor != MonitorProfile::Gsyncd {
            return;
        }
        let now = Instant::now();
        let due: Vec<(SessionId, Option<Hlc>)> = {
            let Ok(mut side) = self.gluster_side.lock() else {
                return;
            };
            side.prepared
                .retain(|(id, _), _| views.iter().any(|(v, _)| v.id == *id));
            views
                .iter()
                .filter(|(view, _)| bricks.iter().any(|b| b.volume == view.id.primary_volume))
                .map(|(view, _)| (view.id.clone(), view.incarnation.clone()))
                .filter(|key| match side.prepared.get(key) {
                    None => true,
                    Some(None) => false,
                    Some(Some(failed_at)) => now.duration_since(*failed_at) >= PREPARE_RETRY,
                })
                .collect()
        };
        for key in due {
            let volume = key.0.primary_volume.clone();
            let done = tokio::task::spawn_blocking(move || volumes::prepare_primary(&volume)).await;
            let failed = match done {
                Ok(Ok(())) => false,
                Ok(Err(error)) => {
                    tracing::warn!(%error, session = %key.0, "cannot set geo-replication's volume options; gsyncd's workers fail until they are set");
                    true
                }
                Err(error) => {
                    tracing::warn!(%error, session = %key.0, "setting geo-replication's volume options did not finish");
                    true
                }
            };
            if let Ok(mut side) = self.gluster_side.lock() {
                side.prepared.insert(key, failed.then(Instant::now));
            }
        }
    }

    /// After the session directories: ends gsyncd's secondary-side processes of the
    /// sessions of a volume this node hosts (`bricks`, as of this pass) that stopped or
    /// went (see the module doc).
    pub(super) fn end_leftovers(&self, views: &[(SessionView, Option<Hlc>)], bricks: &[BrickSpec]) {
        let Ok(mut side) = self.gluster_side.lock() else {
            return;
        };
        // Secondary side: sessions of a volume this node hosts.
        let hosted = |id: &SessionId| bricks.iter().any(|b| b.volume == id.secondary_volume);
        // Per hosted session its desired state; a deleted one has none (not running).
        let mut desired: BTreeMap<SessionId, Option<DesiredState>> = views
            .iter()
            .filter(|(view, _)| hosted(&view.id))
            .map(|(view, _)| (view.id.clone(), Some(view.desired)))
            .collect();
        for id in side.running.keys() {
            desired.entry(id.clone()).or_insert(None);
        }
        for (id, state) in &desired {
            // Running before, or unknown (this agent just started) and Stopped: end
            // what may be left (a Created session never ran).
            let was = side
                .running
                .get(id)
                .copied()
                .unwrap_or(*state == Some(DesiredState::Stopped));
            if was && !state.is_some_and(DesiredState::is_running) {
                let (primary, secondary) = (id.primary_volume.clone(), id.secondary_volume.clone());
                tokio::task::spawn_blocking(move || leftovers::end(&primary, &secondary));
            }
        }
        side.running = desired
            .into_iter()
            .filter_map(|(id, state)| Some((id, state?.is_running())))
            .collect();
    }

    /// `POST /v1/gluster-hook`: glusterd's pre-hook asks before `stop`, `remove-brick`
    /// or `delete` of a volume. A running session (an existing one, for `delete`) is a
    /// conflict gluster would have refused; glusterd ignores a pre-hook's exit status,
    /// so the operation goes ahead: the conflict is recorded as a warning event
    /// (`GLUSTER_OP_WITH_GEOREP`) and answered so the hook can say so.
    pub fn gluster_hook(
        &self,
        request: &GlusterHookRequest,
    ) -> Result<GlusterHookResponse, ApiError> {
        let op = request.op.as_str();
        if !["stop", "remove-brick", "delete"].contains(&op) {
            return Err(ApiError::bad_request(format!(
                "unknown gluster operation `{op}`: expected stop, remove-brick or delete"
            )));
        }
        let found = self.exists(&request.volume, None)?;
        let conflict = if op == "delete" {
            found.exists
        } else {
            found.running
        };
        let sessions = found.sessions.join(", ");
        let message = if !conflict {
            format!(
                "no geo-replication session stands in the way of volume {op} {}",
                request.volume
            )
        } else if op == "delete" {
            format!(
                "geo-replication session {sessions} exists for volume {}: delete it first (georep delete)",
                request.volume
            )
        } else {
            format!(
                "geo-replication session {sessions} is running for volume {}: stop it first (georep stop)",
                request.volume
            )
        };
        if conflict {
            self.events.emit(
                &self.mesh,
                "GLUSTER_OP_WITH_GEOREP",
                [
                    ("op".to_string(), op.to_string()),
                    ("volume".to_string(), request.volume.clone()),
                    ("sessions".to_string(), sessions),
                    ("peer".to_string(), self.config.node_id.clone()),
                ]
                .into(),
            );
        }
        Ok(GlusterHookResponse {
            ok: true,
            conflict,
            sessions: found.sessions,
            message,
        })
    }
}
