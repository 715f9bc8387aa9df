//! Volume status as the converged membership shows it, and the events its changes
//! make: `VOLUME_ADD_BRICK` / `VOLUME_REMOVE_BRICK` (a node publishing a brick, or no
//! longer), `VOLUME_STATUS` (`online`: every brick up; `degraded`: some; `offline`:
//! none), each with the seed's volume keys `name`, `id`, `status`, `brick_count`.
//!
//! A brick is up when its node is live and the directory reachable. Gluster volumes
//! have a UUID; these have none, so `id` is a hash of the cluster id and the name
//! (stable, the same on every node).

use std::collections::{BTreeMap, BTreeSet};

use georep_mesh::Membership;

/// One volume: its bricks (`node:path`) and those up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeState {
    /// Every brick published for it.
    pub bricks: BTreeSet<String>,
    /// Bricks whose node is live and whose directory is reachable.
    pub up: BTreeSet<String>,
}

impl VolumeState {
    /// `online`, `degraded` or `offline`.
    pub fn status(&self) -> &'static str {
        if self.up.is_empty() {
            "offline"
        } else if self.up.len() == self.bricks.len() {
            "online"
        } else {
            "degraded"
        }
    }
}

/// Every volume the membership knows of.
pub fn volumes(membership: &Membership) -> BTreeMap<String, VolumeState> {
    let mut out: BTreeMap<String, VolumeState> = BTreeMap::new();
    for member in membership.members.values() {
        let Some(info) = &member.info else { continue };
        for brick in &info.bricks {
            let name = format!("{}:{}", member.node_id, brick.path);
            let volume = out.entry(brick.volume.clone()).or_default();
            if member.live && !info.missing.contains(&brick.path) {
                volume.up.insert(name.clone());
            }
            volume.bricks.insert(name);
        }
    }
    out
}

/// The volume's stable id.
pub fn volume_id(cluster_id: &str, name: &str) -> String {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(cluster_id.as_bytes());
    hasher.update(b"/");
    hasher.update(name.as_bytes());
    format!("{:08x}", hasher.finalize())
}

/// The events between two observations.
pub fn changes(
    cluster_id: &str,
    before: &BTreeMap<String, VolumeState>,
    now: &BTreeMap<String, VolumeState>,
) -> Vec<(&'static str, BTreeMap<String, String>)> {
    let empty = VolumeState::default();
    let mut out = Vec::new();
    let names: BTreeSet<&String> = before.keys().chain(now.keys()).collect();
    for name in names {
        let was = before.get(name).unwrap_or(&empty);
        let is = now.get(name).unwrap_or(&empty);
        let message = |extra: Option<(&str, &String)>| {
            let mut m: BTreeMap<String, String> = [
                ("name".to_string(), name.clone()),
                ("volume".to_string(), name.clone()),
                ("id".to_string(), volume_id(cluster_id, name)),
                ("status".to_string(), is.status().to_string()),
                ("brick_count".to_string(), is.bricks.len().to_string()),
                ("bricks_up".to_string(), is.up.len().to_string()),
            ]
            .into();
            if let Some((k, v)) = extra {
                m.insert(k.to_string(), v.clone());
            }
            m
        };
        for brick in is.bricks.difference(&was.bricks) {
            out.push(("VOLUME_ADD_BRICK", message(Some(("brick", brick)))));
        }
        for brick in was.bricks.difference(&is.bricks) {
            out.push(("VOLUME_REMOVE_BRICK", message(Some(("brick", brick)))));
        }
        if !was.bricks.is_empty() && !is.bricks.is_empty() && was.status() != is.status() {
            out.push(("VOLUME_STATUS", message(None)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(bricks: &[&str], up: &[&str]) -> VolumeState {
        VolumeState {
            bricks: bricks.iter().map(|b| b.to_string()).collect(),
            up: up.iter().map(|b| b.to_string()).collect(),
        }
    }

    #[test]
    fn bricks_joining_and_going_down_make_volume_events() {
        let before: BTreeMap<String, VolumeState> = [(
            "gv0".to_string(),
            state(&["n1:/b", "n2:/b"], &["n1:/b", "n2:/b"]),
        )]
        .into();
        let degraded: BTreeMap<String, VolumeState> =
            [("gv0".to_string(), state(&["n1:/b", "n2:/b"], &["n1:/b"]))].into();
        let events = changes("c", &before, &degraded);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, "VOLUME_STATUS");
        assert_eq!(events[0].1["status"], "degraded");
        assert_eq!(events[0].1["brick_count"], "2");
        assert_eq!(events[0].1["id"], volume_id("c", "gv0"));
        let grown: BTreeMap<String, VolumeState> = [(
            "gv0".to_string(),
            state(&["n1:/b", "n2:/b", "n3:/b"], &["n1:/b", "n2:/b", "n3:/b"]),
        )]
        .into();
        let kinds: Vec<&str> = changes("c", &degraded, &grown)
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(kinds, ["VOLUME_ADD_BRICK", "VOLUME_STATUS"]);
        assert!(changes("c", &grown, &grown).is_empty());
        let gone = changes("c", &grown, &BTreeMap::new());
        assert_eq!(gone.len(), 3);
        assert!(gone.iter().all(|e| e.0 == "VOLUME_REMOVE_BRICK"));
        assert_ne!(volume_id("c", "gv0"), volume_id("d", "gv0"));
    }
}
