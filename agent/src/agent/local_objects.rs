//! What this node exports as D-Bus objects (see `dbus.rs`): itself, its volumes and
//! bricks, and the sessions it takes part in, from the converged view and its own
//! monitors.

use super::*;
use crate::dbus::{
    AgentObject, BrickObject, Objects, ROOT_PATH, SessionObject, VolumeObject, block_device,
    path_element,
};
use crate::events::volumes::{volume_id, volumes};

impl Agent {
    /// This node's D-Bus objects as of now.
    pub async fn dbus_objects(&self) -> Objects {
        let membership = self.mesh.membership().await;
        let bricks = self.bricks();
        let local_volumes: BTreeSet<&str> = bricks.iter().map(|b| b.volume.as_str()).collect();
        let all_volumes = volumes(&membership);
        let mut objects = Objects {
            agent: AgentObject {
                node_id: self.config.node_id.clone(),
                cluster: self.config.cluster_id.clone(),
                version: AGENT_VERSION.to_string(),
                load_state: "loaded".to_string(),
                active_state: "active".to_string(),
                members_live: u32::try_from(membership.live().count()).unwrap_or(u32::MAX),
                members_dead: u32::try_from(membership.dead().count()).unwrap_or(u32::MAX),
            },
            ..Objects::default()
        };
        for name in &local_volumes {
            let state = all_volumes.get(*name).cloned().unwrap_or_default();
            objects.volumes.insert(
                format!("{ROOT_PATH}/volumes/{}", path_element(name)),
                VolumeObject {
                    name: name.to_string(),
                    id: volume_id(&self.config.cluster_id, name),
                    status: state.status().to_string(),
                    brickcount: u32::try_from(state.bricks.len()).unwrap_or(u32::MAX),
                },
            );
        }
        let facts = membership
            .local()
            .and_then(|m| m.info.as_ref())
            .map(|info| info.facts.clone())
            .unwrap_or_default();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for brick in &bricks {
            let path = brick.path.display().to_string();
            let measured = facts.iter().find(|f| f.path == path);
            objects.bricks.insert(
                format!(
                    "{ROOT_PATH}/bricks/{}",
                    path_element(&format!("{}:{path}", brick.volume))
                ),
                BrickObject {
                    volume: brick.volume.clone(),
                    path: path.clone(),
                    reachable: measured.is_some_and(|f| f.reachable),
                    size_bytes: measured.map_or(0, |f| f.size_bytes),
                    free_bytes: measured.map_or(0, |f| f.free_bytes),
                    device: block_device(&mountinfo, &brick.path),
                },
            );
        }
        let reports = self.supervisor.lock().await.reports();
        let published = self.published.lock().map(|p| p.clone()).unwrap_or_default();
        for record in self.mesh.replica().sessions.values() {
            let view = record.view();
            let id = &view.id;
            let involved = local_volumes.contains(id.primary_volume.as_str())
                || local_volumes.contains(id.secondary_volume.as_str());
            if !view.exists || !involved {
                continue;
            }
            let monitor_state = reports
                .get(id)
                .filter(|_| local_volumes.contains(id.primary_volume.as_str()))
                .map_or_else(|| view.desired.to_string(), |r| r.status_word(view.desired));
            let workers = published
                .get(id)
                .map(|status| {
                    status
                        .workers
                        .iter()
                        .map(|w| {
                            (
                                w.brick.clone(),
                                w.status.as_str().to_string(),
                                w.crawl_status.as_str().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            objects.sessions.insert(
                format!("{ROOT_PATH}/sessions/{}", path_element(&id.dir_name())),
                SessionObject {
                    primary: id.primary_volume.clone(),
                    secondary: id.secondary(),
                    desired_state: view.desired.to_string(),
                    monitor_state,
                    workers,
                },
            );
        }
        objects
    }
}
