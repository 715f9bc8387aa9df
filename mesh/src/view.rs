//! Owner-written node records and the membership view built from gossip.
//!
//! Only a node writes its own `node` key ([`NodeInfo`]: agent version, bricks). The
//! [`Membership`] is what the local agent currently believes about every node: live or
//! dead, generation, bricks, and the convergence frontier ([`Seen`]) each node published.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::state::VolumeDirectory;

/// A brick a node declares: a directory of a volume, in a replica set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Brick {
    /// Volume name.
    pub volume: String,
    /// Absolute brick path on the node.
    pub path: String,
    /// Index of the replica set the brick belongs to.
    pub replica_set: u32,
}

/// What a node measured of one of its bricks (create's verification of a secondary
/// reads it, as gluster's gverify.sh does over SSH).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickFacts {
    /// Brick path.
    pub path: String,
    /// Whether the directory exists and could be read.
    pub reachable: bool,
    /// Whether it holds nothing but gluster's and georep's metadata.
    pub empty: bool,
    /// Size of its filesystem, bytes (statvfs).
    pub size_bytes: u64,
    /// Free space on its filesystem, bytes (statvfs, for unprivileged users).
    pub free_bytes: u64,
    /// Which filesystem holds it, unique across machines (`<machine-id>:<fsid>`):
    /// bricks on one filesystem share its space and count once (gluster's
    /// shared-brick-count).
    pub filesystem: String,
}

/// What a node publishes about itself under the `node` key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `georepd` version.
    pub agent_version: String,
    /// Declared bricks.
    pub bricks: Vec<Brick>,
    /// Paths of declared bricks that do not serve, as of the node's last check: the
    /// directory does not exist (yet; a brick may be a mount that comes up later), or
    /// glusterd has not started the brick's volume.
    #[serde(default)]
    pub missing: Vec<String>,
    /// Per brick, what the node measured (see [`BrickFacts`]).
    pub facts: Vec<BrickFacts>,
    /// Local user accounts keys can be installed for (create refuses a secondary user
    /// a secondary node does not have).
    pub users: Vec<String>,
}

impl NodeInfo {
    /// Whether the node hosts a brick of `volume`.
    pub fn hosts(&self, volume: &str) -> bool {
        self.bricks.iter().any(|b| b.volume == volume)
    }

    /// The node's bricks of `volume`.
    pub fn bricks_of<'a, 'v>(
        &'a self,
        volume: &'v str,
    ) -> impl Iterator<Item = &'a Brick> + use<'a, 'v> {
        self.bricks.iter().filter(move |b| b.volume == volume)
    }
}

/// Position of a writer's history: its chitchat generation and the version within it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct WritePosition {
    /// Writer's chitchat generation.
    pub generation: u64,
    /// Chitchat version of the write's key in that generation.
    pub version: u64,
}

/// A node's convergence frontier: per origin node, the newest session write merged.
pub type Seen = BTreeMap<String, WritePosition>;

/// One node as the local agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub node_id: String,
    /// Chitchat generation (a new one on every restart).
    pub generation: u64,
    /// Gossip address.
    pub gossip_addr: SocketAddr,
    /// Live according to the failure detector (always true for the local node).
    pub live: bool,
    /// Whether chitchat scheduled the node's state for deletion.
    pub scheduled_for_deletion: bool,
    /// Heartbeat counter.
    pub heartbeat: u64,
    /// Milliseconds since its heartbeat last advanced here (0 for the local node).
    pub last_heard_ms: Option<u64>,
    /// Number of keys it holds (live ones).
    pub key_count: usize,
    /// Highest chitchat version of its state known here.
    pub max_version: u64,
    /// Its published node info, if received and decodable.
    pub info: Option<NodeInfo>,
    /// Its published frontier (shared: decoded once per version, not per view).
    pub seen: Arc<Seen>,
}

impl Member {
    /// Whether the node hosts a brick of `volume` (false if its info is unknown).
    pub fn hosts(&self, volume: &str) -> bool {
        self.info.as_ref().is_some_and(|info| info.hosts(volume))
    }

    /// Whether the node hosts a brick of `volume` or may (its info has not arrived:
    /// a just-restarted incarnation starts from nothing at its peers). For waits.
    pub fn may_host(&self, volume: &str) -> bool {
        self.info.as_ref().is_none_or(|info| info.hosts(volume))
    }

    /// Whether a write by `origin` at `position` is merged on this node.
    pub fn has_seen(&self, origin: &str, position: WritePosition) -> bool {
        self.seen.get(origin).is_some_and(|mine| *mine >= position)
    }
}

/// Every node the local agent knows, latest generation per node id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    /// The local node's id.
    pub self_id: String,
    /// Members by node id.
    pub members: BTreeMap<String, Member>,
}

impl Membership {
    /// Live members.
    pub fn live(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| m.live)
    }

    /// Dead members.
    pub fn dead(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| !m.live)
    }

    /// The local member.
    pub fn local(&self) -> Option<&Member> {
        self.members.get(&self.self_id)
    }

    /// Members (live or not) hosting bricks of `volume`.
    pub fn hosts_of<'a>(&'a self, volume: &'a str) -> impl Iterator<Item = &'a Member> + 'a {
        self.members.values().filter(move |m| m.hosts(volume))
    }

    /// The Active brick of every replica set of `volume`: among live nodes' bricks of the
    /// set, the lowest (node id, path). Every node computes the same answer from the same
    /// converged membership, so exactly one worker per replica set is Active.
    pub fn active_bricks(&self, volume: &str) -> BTreeSet<(String, String)> {
        self.active_by_set(volume)
            .into_values()
            .map(|(node, path)| (node.to_string(), path.to_string()))
            .collect()
    }

    /// The node whose brick is the Active one of `volume`'s replica set `replica_set`
    /// (as [`Self::active_bricks`] chooses), if a live node hosts one.
    pub fn active_node<'a>(&'a self, volume: &str, replica_set: u32) -> Option<&'a str> {
        self.active_by_set(volume)
            .remove(&replica_set)
            .map(|(node, _)| node)
    }

    /// Per replica set of `volume`, the lowest (node id, path) among live nodes' bricks.
    fn active_by_set<'a>(&'a self, volume: &str) -> BTreeMap<u32, (&'a str, &'a str)> {
        // Borrowed while choosing (this runs over every live node on every reconcile).
        let mut best: BTreeMap<u32, (&str, &str)> = BTreeMap::new();
        for member in self.live() {
            let Some(info) = &member.info else { continue };
            for brick in info.bricks_of(volume) {
                let candidate = (member.node_id.as_str(), brick.path.as_str());
                best.entry(brick.replica_set)
                    .and_modify(|current| {
                        if candidate < *current {
                            *current = candidate;
                        }
                    })
                    .or_insert(candidate);
            }
        }
        best
    }
}

impl VolumeDirectory for Membership {
    fn has_bricks(&self, volume: &str) -> bool {
        self.hosts_of(volume).next().is_some()
    }

    fn hosted_by_live_node(&self, volume: &str) -> bool {
        self.live().any(|m| m.hosts(volume))
    }

    fn is_live_host(&self, host: &str) -> bool {
        self.live()
            .any(|m| m.node_id == host || m.gossip_addr.ip().to_string() == host)
    }

    fn capacity(&self, volume: &str) -> Result<u64, String> {
        // Per replica set, the smallest reachable brick on a live node; then the sum
        // over the distinct filesystems those bricks live on.
        let mut sets: BTreeMap<u32, Option<(u64, &str)>> = BTreeMap::new();
        let mut unreachable: Vec<String> = Vec::new();
        for member in self.live() {
            let Some(info) = &member.info else { continue };
            for brick in info.bricks_of(volume) {
                let facts = info.facts.iter().find(|f| f.path == brick.path);
                let size = facts
                    .filter(|f| f.reachable)
                    .map(|f| (f.size_bytes, f.filesystem.as_str()));
                if size.is_none() {
                    unreachable.push(format!("{}:{}", member.node_id, brick.path));
                }
                let slot = sets.entry(brick.replica_set).or_insert(None);
                if let Some(size) = size {
                    *slot = Some(slot.map_or(size, |s| s.min(size)));
                }
            }
        }
        let blind: Vec<String> = sets
            .iter()
            .filter(|(_, size)| size.is_none())
            .map(|(set, _)| set.to_string())
            .collect();
        if sets.is_empty() || !blind.is_empty() {
            return Err(format!(
                "no reachable brick on a live node in replica set {} (unreachable: {})",
                if blind.is_empty() {
                    "any".to_string()
                } else {
                    blind.join(", ")
                },
                if unreachable.is_empty() {
                    "none known".to_string()
                } else {
                    unreachable.join(", ")
                }
            ));
        }
        let filesystems: BTreeMap<&str, u64> = sets
            .values()
            .flatten()
            .map(|(size, filesystem)| (*filesystem, *size))
            .collect();
        Ok(filesystems.values().sum())
    }

    fn non_empty_bricks(&self, volume: &str) -> Vec<String> {
        let mut out = Vec::new();
        for member in self.live() {
            let Some(info) = &member.info else { continue };
            for brick in info.bricks_of(volume) {
                if info
                    .facts
                    .iter()
                    .any(|f| f.path == brick.path && f.reachable && !f.empty)
                {
                    out.push(format!("{}:{}", member.node_id, brick.path));
                }
            }
        }
        out
    }

    fn live_hosts_without_user(&self, volume: &str, user: &str) -> Vec<String> {
        self.live()
            .filter(|m| m.hosts(volume))
            .filter(|m| {
                m.info
                    .as_ref()
                    .is_some_and(|i| !i.users.iter().any(|u| u == user))
            })
            .map(|m| m.node_id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, live: bool, bricks: &[(&str, &str, u32)]) -> Member {
        Member {
            node_id: id.into(),
            generation: 1,
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            live,
            scheduled_for_deletion: false,
            heartbeat: 1,
            last_heard_ms: Some(0),
            key_count: 0,
            max_version: 0,
            info: Some(NodeInfo {
                agent_version: "0.1.0".into(),
                bricks: bricks
                    .iter()
                    .map(|(v, p, r)| Brick {
                        volume: v.to_string(),
                        path: p.to_string(),
                        replica_set: *r,
                    })
                    .collect(),
                missing: Vec::new(),
                facts: Vec::new(),
                users: Vec::new(),
            }),
            seen: Arc::default(),
        }
    }

    #[test]
    fn one_active_brick_per_replica_set_and_failover_to_live_nodes() {
        let mut view = Membership {
            self_id: "n1".into(),
            members: BTreeMap::new(),
        };
        for m in [
            member("n1", true, &[("gv0", "/b1", 0)]),
            member("n2", true, &[("gv0", "/b2", 0), ("gv0", "/b3", 1)]),
            member("n3", true, &[("gv0", "/b4", 1)]),
            member("n4", true, &[("gv1", "/s1", 0)]),
        ] {
            view.members.insert(m.node_id.clone(), m);
        }
        let active = view.active_bricks("gv0");
        assert_eq!(
            active,
            [("n1".into(), "/b1".into()), ("n2".into(), "/b3".into())].into()
        );
        assert_eq!(view.active_node("gv0", 0), Some("n1"));
        assert_eq!(view.active_node("gv0", 1), Some("n2"));
        assert_eq!(view.active_node("gv0", 2), None);
        view.members.get_mut("n1").unwrap().live = false;
        let active = view.active_bricks("gv0");
        assert!(active.contains(&("n2".into(), "/b2".into())));
        assert_eq!(view.active_node("gv0", 0), Some("n2"));
        assert!(view.has_bricks("gv0"));
        assert!(view.hosted_by_live_node("gv1"));
        view.members.get_mut("n4").unwrap().live = false;
        assert!(!view.hosted_by_live_node("gv1"));
        assert!(view.has_bricks("gv1"));
    }
}
