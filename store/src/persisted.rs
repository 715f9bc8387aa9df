//! What an agent persists in `state.bin`.

use georep_mesh::MeshSnapshot;
use serde::{Deserialize, Serialize};

/// What the agent persists in `<data-dir>/state.bin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    /// Node id the data directory belongs to.
    pub node_id: String,
    /// Chitchat generation of the last run.
    pub generation: u64,
    /// The mesh state.
    pub mesh: MeshSnapshot,
}
