//! Reading one small key of every node repeatedly, cloning only what changed.

use std::collections::BTreeMap;

use super::MeshNode;

/// One key's value on every node, as last read by [`MeshNode::track_owned_value`].
#[derive(Debug, Default, Clone)]
pub struct OwnedValues {
    /// Per node id: (generation, version) of the value, and the value.
    values: BTreeMap<String, ((u64, u64), String)>,
}

impl OwnedValues {
    /// Every node's value, by node id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values
            .iter()
            .map(|(node, (_, value))| (node.as_str(), value.as_str()))
    }

    /// Every node's value with its stamp (generation, version), by node id: a value
    /// whose stamp did not change is the same value, without comparing it.
    pub fn iter_stamped(&self) -> impl Iterator<Item = (&str, (u64, u64), &str)> {
        self.values
            .iter()
            .map(|(node, (stamp, value))| (node.as_str(), *stamp, value.as_str()))
    }

    /// `node`'s value.
    pub fn get(&self, node: &str) -> Option<&str> {
        self.values.get(node).map(|(_, value)| value.as_str())
    }
}

impl MeshNode {
    /// Brings `seen` up to date with every node's live value under exactly `key`
    /// (latest generation), cloning only what changed since the last call; returns
    /// whether anything did. For loops that read one small key of every node every
    /// interval: at hundreds of nodes cloning all of them each time is what costs.
    pub async fn track_owned_value(&self, key: &str, seen: &mut OwnedValues) -> bool {
        let chitchat = self.shared.chitchat.lock().await;
        let mut changed = false;
        let mut present = 0usize;
        let mut states = chitchat.node_states().iter().peekable();
        while let Some((id, state)) = states.next() {
            // Ordered by (node id, generation): the last of a node id is its latest.
            if states
                .peek()
                .is_some_and(|(next, _)| next.node_id == id.node_id)
            {
                continue;
            }
            let Some(value) = state.get_versioned(key).filter(|v| !v.is_deleted()) else {
                changed |= seen.values.remove(&*id.node_id).is_some();
                continue;
            };
            present += 1;
            let stamp = (id.generation_id, value.version);
            match seen.values.get_mut(&*id.node_id) {
                Some(known) if known.0 == stamp => {}
                Some(known) => {
                    *known = (stamp, value.value.clone());
                    changed = true;
                }
                None => {
                    seen.values
                        .insert(id.node_id.to_string(), (stamp, value.value.clone()));
                    changed = true;
                }
            }
        }
        if seen.values.len() != present {
            // Nodes no longer in the state at all.
            let live: std::collections::BTreeSet<&str> = chitchat
                .node_states()
                .keys()
                .map(|id| &*id.node_id)
                .collect();
            seen.values.retain(|node, _| live.contains(node.as_str()));
            changed = true;
        }
        changed
    }
}
