//! Gossip-state inspection: what the local agent knows about every node, every session
//! register and every raw key, why a monitor is or is not running on a node, where two
//! nodes' views differ, and a stopped agent's persisted state (see
//! [`georep_api::inspect`] for the JSON).
//!
//! The answers are built in two steps: the `Agent` methods gather a snapshot (membership,
//! replica, raw namespaces), and pure functions ([`convergence`], [`explain_reason`],
//! [`explain_text`], [`diff_frontiers`], [`decode_value`]) turn it into the answer, so
//! the logic is unit-tested without a running mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use georep_mesh::Hlc;
use georep_mesh::codec;
use georep_mesh::{Brick, Member, Membership, NodeInfo, Seen, WritePosition};
use georep_mesh::{DesiredState, SessionId, SessionRecord, SessionView, StateError};
use georep_mesh::{KEY_INSTALL_PREFIX, KEYS_PREFIX, KeyInstall, SessionKeys};
use georep_mesh::{MeshNode, NODE_KEY, SEEN_KEY, SESSION_PREFIX, WriteReceipt};
use serde_json::{Value, json};

use crate::agent::{Agent, ApiError, MONITOR_PREFIX, NodeSessionStatus};
use crate::monitor_report::{MonitorReport, MonitorState};
use georep_api::inspect::{
    Carrier, Convergence, ConvergenceCell, DiffResponse, ExplainReason, ExplainResponse, KeyRow,
    KeysResponse, LatestWrite, MemberRow, MemberStatus, MembersResponse, MonitorView, RegisterRow,
    SeenDiff, SessionInspect, SessionsResponse, WriteDiff,
};

pub use georep_api::inspect::register_values;

mod convergence;
mod explain;
mod handlers;
mod values;

pub use convergence::*;
pub use explain::*;
pub use values::*;

#[cfg(test)]
mod tests;
