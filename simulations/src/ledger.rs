//! Every command the simulator issued, its outcome, and what the cluster must show for
//! each acknowledged one.
//!
//! A command acknowledged by `Agent::op` wrote one register (the `created`, `deleted`
//! or `desired` register, or one config key) with the HLC stamp the response carries.
//! From then on every live replica must *reflect* it: hold that register at that stamp
//! or a later one (a later write won by LWW), or have pruned it because the session was
//! re-created after it. Reflection is monotone (replicas only grow by join), so once a
//! node reflects a write it always will, unless it loses its disk.

use std::collections::{BTreeMap, BTreeSet};

use georep_mesh::Hlc;
use georep_mesh::session_config;
use georep_mesh::{RegisterName, Replica, SessionId, SessionOp};
use serde::Serialize;

/// The register a command writes.
pub fn register_of(op: &SessionOp) -> RegisterName {
    match op {
        SessionOp::Create { .. } => RegisterName::Created,
        SessionOp::Delete { .. } => RegisterName::Deleted,
        SessionOp::Start { .. }
        | SessionOp::Stop { .. }
        | SessionOp::Pause { .. }
        | SessionOp::Resume { .. } => RegisterName::Desired,
        SessionOp::SetConfig { key, .. } | SessionOp::ResetConfig { key } => RegisterName::Config(
            session_config::lookup(key).map_or_else(|_| key.clone(), |k| k.name.to_string()),
        ),
    }
}

/// Whether `replica` holds `register` of `session` at `stamp` or later (or pruned it for
/// a later incarnation).
pub fn reflects(
    replica: &Replica,
    session: &SessionId,
    register: &RegisterName,
    stamp: &Hlc,
) -> bool {
    let Some(record) = replica.sessions.get(session) else {
        return false;
    };
    if record.stamp_of(register).is_some_and(|s| s >= stamp) {
        return true;
    }
    match register {
        // Overtaken by a later incarnation or delete: pruned everywhere.
        RegisterName::Desired | RegisterName::Rotated | RegisterName::Config(_) => {
            record.floor().is_some_and(|(_, floor)| floor > stamp)
        }
        RegisterName::Created | RegisterName::Deleted => false,
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Outcome {
    /// Still running (a `--wait` command).
    InFlight,
    /// Applied and acknowledged.
    Acknowledged {
        /// The stamp of the written register.
        stamp: Hlc,
        /// Virtual ms of the acknowledgement.
        acked_ms: u64,
        /// What the response claimed (`converged`).
        converged: bool,
        /// Nodes the response said confirmed.
        confirmed: Vec<String>,
    },
    /// Refused by validation (nothing written).
    Refused(String),
    /// The agent died before answering.
    Aborted,
}

/// One issued command.
#[derive(Debug, Clone, Serialize)]
pub struct OpRecord {
    /// Node index it was issued on.
    pub node: usize,
    /// Session.
    pub session: SessionId,
    /// The command.
    pub op: SessionOp,
    /// The register it writes.
    #[serde(serialize_with = "display")]
    pub register: RegisterName,
    /// `--wait`.
    pub wait: bool,
    /// Virtual ms when issued.
    pub issued_ms: u64,
    /// Whether a partition was in force when it was issued.
    pub partitioned: bool,
    /// Its outcome.
    pub outcome: Outcome,
}

fn display<S: serde::Serializer>(value: &RegisterName, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

impl OpRecord {
    /// The stamp, once acknowledged.
    pub fn stamp(&self) -> Option<&Hlc> {
        match &self.outcome {
            Outcome::Acknowledged { stamp, .. } => Some(stamp),
            _ => None,
        }
    }

    /// One line for traces and failure reports.
    pub fn line(&self) -> String {
        let outcome = match &self.outcome {
            Outcome::InFlight => "in flight".to_string(),
            Outcome::Acknowledged {
                stamp, converged, ..
            } => format!("ok {stamp}{}", if *converged { " converged" } else { "" }),
            Outcome::Refused(message) => format!("refused: {message}"),
            Outcome::Aborted => "aborted (agent died)".into(),
        };
        format!(
            "t={:>9.3}s n{} {} {} -> {outcome}",
            self.issued_ms as f64 / 1000.0,
            self.node,
            self.op.name(),
            self.register
        )
    }
}

/// Everything issued in one run, and the measurements that hang on it.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every command, in issue order.
    pub ops: Vec<OpRecord>,
    /// Commands issued and not answered yet.
    pub in_flight: BTreeSet<usize>,
    /// Acknowledged commands not yet reflected by every live replica.
    pub unconverged: BTreeSet<usize>,
    /// Acknowledged run-state commands whose monitors have not matched yet everywhere.
    pub unreacted: BTreeSet<usize>,
    /// Acknowledged commands whose only copies were lost with their nodes' disks.
    pub lost_with_disk: BTreeSet<usize>,
    /// Write -> every live replica reflects it, virtual ms (with whether a partition
    /// was in force at issue).
    pub convergence: Vec<(u64, bool)>,
    /// Desired-state change -> every live node's monitors match, virtual ms.
    pub reaction: Vec<u64>,
    /// Broken promises found when a command returned (a confirmed node lacking it).
    pub violations: Vec<String>,
    /// Per node id: how often its data directory was lost so far (read by commands in
    /// flight, which outlive the borrow of the cluster).
    pub disk_losses: BTreeMap<String, u32>,
}

impl Ledger {
    /// Records an issued command; returns its index.
    pub fn issue(&mut self, record: OpRecord) -> usize {
        self.ops.push(record);
        self.in_flight.insert(self.ops.len() - 1);
        self.ops.len() - 1
    }

    /// Records a command's outcome.
    pub fn finish(&mut self, index: usize, outcome: Outcome) {
        let Some(record) = self.ops.get_mut(index) else {
            return;
        };
        self.in_flight.remove(&index);
        if matches!(outcome, Outcome::Acknowledged { .. }) {
            self.unconverged.insert(index);
            if matches!(
                record.register,
                RegisterName::Desired | RegisterName::Created | RegisterName::Deleted
            ) {
                self.unreacted.insert(index);
            }
        }
        record.outcome = outcome;
    }

    /// Counts: (issued, acknowledged, refused, aborted, in flight).
    pub fn counts(&self) -> (usize, usize, usize, usize, usize) {
        let mut counts = (self.ops.len(), 0, 0, 0, 0);
        for op in &self.ops {
            match op.outcome {
                Outcome::Acknowledged { .. } => counts.1 += 1,
                Outcome::Refused(_) => counts.2 += 1,
                Outcome::Aborted => counts.3 += 1,
                Outcome::InFlight => counts.4 += 1,
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use georep_mesh::{SessionOptions, SessionRecord};

    use super::*;

    #[test]
    fn reflection_accepts_later_writes_and_newer_incarnations() {
        let id = SessionId::parse("gv0", "h::gv1").unwrap();
        let mut record = SessionRecord::empty(id.clone());
        record.created = Some(georep_mesh::Reg {
            val: SessionOptions::default(),
            marker: Hlc::new(10, 0, "a"),
        });
        let mut replica = Replica::default();
        replica.join_record(&record);
        let desired = RegisterName::Desired;
        assert!(!reflects(&replica, &id, &desired, &Hlc::new(20, 0, "b")));
        // a desired write older than the incarnation was pruned: superseded
        assert!(reflects(&replica, &id, &desired, &Hlc::new(5, 0, "b")));
        assert!(reflects(
            &replica,
            &id,
            &RegisterName::Created,
            &Hlc::new(10, 0, "a")
        ));
        assert!(!reflects(
            &replica,
            &id,
            &RegisterName::Created,
            &Hlc::new(10, 1, "a")
        ));
        assert!(!reflects(
            &Replica::default(),
            &id,
            &desired,
            &Hlc::new(1, 0, "a")
        ));
        assert_eq!(
            register_of(&SessionOp::SetConfig {
                key: "sync_jobs".into(),
                value: "3".into()
            }),
            RegisterName::Config("sync-jobs".into())
        );
    }
}
