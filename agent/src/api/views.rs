//! The answers of the read routes (`status`, `nodes`, `config`, `exists`) as pure
//! functions of the replica, the membership, write progress and the monitor statuses
//! nodes published: what `Agent` gathers, these turn into JSON rows.

use std::collections::BTreeMap;

use georep_api::WorkerStatus;
use georep_api::types::{
    ConfigResponse, ConfigRow, ExistsResponse, NodeRow, NodesResponse, SecondaryKeys,
    SessionStatus, WorkerRow,
};
use georep_mesh::KeyInstall;
use georep_mesh::Membership;
use georep_mesh::WriteProgress;
use georep_mesh::{DesiredState, Replica, SessionId, SessionOp, SessionView, StateError};

use crate::agent::{ApiError, NodeSessionStatus};
use crate::monitor::BrickStatus;
use crate::monitor_report::{MonitorReport, MonitorState};

/// One session's `status`: a worker row per primary brick of every node hosting the
/// primary volume, from the view, the membership, the write's progress and the monitor
/// statuses the nodes published.
pub fn session_status(
    view: &SessionView,
    membership: &Membership,
    progress: WriteProgress,
    statuses: &BTreeMap<String, NodeSessionStatus>,
) -> SessionStatus {
    let id = &view.id;
    let secondary_node = membership
        .live()
        .find(|m| m.hosts(&id.secondary_volume))
        .map(|m| m.node_id.clone());
    let mut workers = Vec::new();
    for member in membership.hosts_of(&id.primary_volume) {
        let Some(info) = &member.info else { continue };
        let status = statuses.get(&member.node_id);
        for brick in info.bricks_of(&id.primary_volume) {
            let file = status.and_then(|s| s.workers.iter().find(|w| w.brick == brick.path));
            let report = status.map(|s| &s.report);
            // A report published before the current desired state was merged there
            // says what the monitor did then, not now.
            let behind = report.is_some_and(|r| r.desired_stamp < view.desired_stamp);
            let state = if !member.live {
                WorkerStatus::Offline
            } else if behind {
                transition_word(view.desired)
            } else {
                worker_state(view.desired, report, file)
            };
            let file = file.cloned().unwrap_or_default();
            workers.push(WorkerRow {
                node: member.node_id.clone(),
                brick: brick.path.clone(),
                status: state,
                crawl_status: file.crawl_status,
                last_synced: file.last_synced,
                monitor_pid: report.and_then(|r| r.pid),
                secondary_node: file.secondary_node.or_else(|| secondary_node.clone()),
                entry: file.entry,
                data: file.data,
                meta: file.meta,
                failures: file.failures,
                checkpoint_time: file.checkpoint_time,
                checkpoint_completed: file.checkpoint_completed,
                checkpoint_completion_time: file.checkpoint_completion_time,
                last_heard_ms: member.last_heard_ms,
                restarts: report.map_or(0, |r| r.restarts),
                last_error: report.and_then(|r| r.last_error.clone()),
            });
        }
    }
    SessionStatus {
        primary_volume: id.primary_volume.clone(),
        secondary_user: id.secondary_user.clone(),
        secondary_host: id.secondary_host.clone(),
        secondary_volume: id.secondary_volume.clone(),
        name: id.dir_name(),
        desired_state: view.desired.to_string(),
        converged_nodes: progress.confirmed,
        lagging_nodes: progress.lagging,
        dead_nodes: progress.dead,
        config: view.config.clone(),
        workers,
        superseded_by: None,
        secondary_keys: Vec::new(),
    }
}

/// push-pem: per node hosting the secondary volume, of how many primary nodes it
/// reports the keys installed (`installs`: node -> its report).
pub fn secondary_keys(
    view: &SessionView,
    membership: &Membership,
    installs: &BTreeMap<String, KeyInstall>,
) -> Vec<SecondaryKeys> {
    if !view.options.push_pem {
        return Vec::new();
    }
    let id = &view.id;
    let primaries: Vec<&str> = membership
        .hosts_of(&id.primary_volume)
        .map(|m| m.node_id.as_str())
        .collect();
    membership
        .hosts_of(&id.secondary_volume)
        .map(|member| {
            let report = installs
                .get(&member.node_id)
                .filter(|r| Some(&r.incarnation) == view.incarnation.as_ref());
            let installed = report.map_or(0, |r| {
                r.installed
                    .iter()
                    .filter(|p| primaries.contains(&p.as_str()))
                    .count()
            });
            let mut missing: BTreeMap<String, String> =
                report.map(|r| r.missing.clone()).unwrap_or_default();
            if report.is_none() {
                let why = if member.live {
                    "this node has not reported its keys for the session yet"
                } else {
                    "this node is down"
                };
                for primary in &primaries {
                    missing.insert(primary.to_string(), why.to_string());
                }
            }
            SecondaryKeys {
                node: member.node_id.clone(),
                live: member.live,
                keys_installed: installed,
                keys_expected: primaries.len(),
                file: report.map(|r| r.file.clone()).unwrap_or_default(),
                missing,
                error: report.and_then(|r| r.error.clone()),
            }
        })
        .collect()
}

/// `nodes`: one row per member.
pub fn nodes(membership: &Membership) -> NodesResponse {
    NodesResponse {
        nodes: membership
            .members
            .values()
            .map(|m| NodeRow {
                node: m.node_id.clone(),
                address: m.gossip_addr.to_string(),
                live: m.live,
                generation: m.generation,
                agent_version: m.info.as_ref().map(|i| i.agent_version.clone()),
                last_heard_ms: m.last_heard_ms,
                bricks: m
                    .info
                    .as_ref()
                    .map(|i| i.bricks.clone())
                    .unwrap_or_default(),
                missing_bricks: m
                    .info
                    .as_ref()
                    .map(|i| i.missing.clone())
                    .unwrap_or_default(),
            })
            .collect(),
    }
}

/// `config` list (`key` absent) or get, from the replica.
pub fn config(
    replica: &Replica,
    primary: &str,
    secondary: &str,
    key: Option<&str>,
) -> Result<ConfigResponse, ApiError> {
    let id = SessionId::parse(primary, secondary)?;
    let view = replica
        .view(&id)
        .filter(|v| v.exists)
        .ok_or_else(|| ApiError::from(StateError::NotCreated(id.clone())))?;
    let wanted = match key {
        Some(key) => Some(
            georep_mesh::session_config::lookup(key)
                .map_err(|error| {
                    ApiError::from(StateError::Config {
                        session: id.clone(),
                        error,
                    })
                })?
                .name,
        ),
        None => None,
    };
    let mut keys = view.effective_config();
    // One of gsyncd's options asked for by name is shown even while unset.
    if let Some(name) = wanted
        && !keys.iter().any(|(n, ..)| *n == name)
        && let Ok(key) = georep_mesh::session_config::lookup(name)
    {
        keys.push((key.name, key.default.to_string(), key.default, false));
    }
    let keys = keys
        .into_iter()
        .filter(|(name, ..)| wanted.is_none_or(|w| w == *name))
        .map(|(name, value, default, set)| ConfigRow {
            key: name.to_string(),
            value,
            default: default.to_string(),
            set,
            live: georep_mesh::session_config::lookup(name).is_ok_and(|k| k.live),
        })
        .collect();
    Ok(ConfigResponse {
        ok: true,
        session: id.to_string(),
        keys,
    })
}

/// `exists` / `running`, from the replica.
pub fn exists(
    replica: &Replica,
    volume: &str,
    secondary: Option<&str>,
) -> Result<ExistsResponse, ApiError> {
    let only = match secondary {
        Some(s) => Some(SessionId::parse(volume, s)?),
        None => None,
    };
    let matching: Vec<SessionView> = replica
        .existing()
        .filter(|v| match &only {
            Some(id) => v.id == *id,
            None => v.id.primary_volume == volume || v.id.secondary_volume == volume,
        })
        .collect();
    let session = only
        .as_ref()
        .map_or_else(|| volume.to_owned(), ToString::to_string);
    let message = if matching.is_empty() {
        match &only {
            Some(id) => format!("no session {id}"),
            None => format!("no session with {volume} as primary or secondary volume"),
        }
    } else {
        let listed: Vec<String> = matching
            .iter()
            .map(|v| format!("{} ({})", v.id, v.desired))
            .collect();
        format!("session exists: {}", listed.join(", "))
    };
    Ok(ExistsResponse {
        ok: true,
        exists: !matching.is_empty(),
        running: matching.iter().any(|v| v.desired.is_running()),
        sessions: matching.iter().map(|v| v.id.to_string()).collect(),
        session,
        message,
    })
}

/// A worker row's status while its node's monitor has not acted on the current
/// desired state yet.
fn transition_word(desired: DesiredState) -> WorkerStatus {
    match desired {
        DesiredState::Created => WorkerStatus::Created,
        DesiredState::Started => WorkerStatus::Initializing,
        DesiredState::Paused => WorkerStatus::Pausing,
        DesiredState::Stopped => WorkerStatus::Stopping,
    }
}

/// A worker row's status from its node's monitor report and the worker's own file.
fn worker_state(
    desired: DesiredState,
    report: Option<&MonitorReport>,
    file: Option<&BrickStatus>,
) -> WorkerStatus {
    match report.map(|r| r.state) {
        Some(MonitorState::Faulty) => WorkerStatus::Faulty,
        Some(MonitorState::Paused) => WorkerStatus::Paused,
        // The worker's own word, unless it is a leftover of a stopped run.
        Some(MonitorState::Started) => file
            .map(|f| f.status.clone())
            .filter(|s| *s != WorkerStatus::Stopped)
            .unwrap_or(WorkerStatus::Initializing),
        Some(MonitorState::Starting) => WorkerStatus::Initializing,
        _ => match desired {
            DesiredState::Created => WorkerStatus::Created,
            DesiredState::Started => WorkerStatus::Initializing,
            DesiredState::Paused => WorkerStatus::Paused,
            DesiredState::Stopped => WorkerStatus::Stopped,
        },
    }
}

/// The sentence a successful command answers with, as gluster words it.
pub fn success_message(op: &SessionOp, id: &SessionId, value: Option<&str>) -> String {
    let between = format!("{} & {}", id.primary_volume, id.secondary());
    match op {
        SessionOp::Create { .. } => {
            format!("Creating geo-replication session between {between} has been successful")
        }
        SessionOp::Start { .. } => {
            format!("Starting geo-replication session between {between} has been successful")
        }
        SessionOp::Stop { .. } => {
            format!("Stopping geo-replication session between {between} has been successful")
        }
        SessionOp::Pause { .. } => {
            format!("Pausing geo-replication session between {between} has been successful")
        }
        SessionOp::Resume { .. } => {
            format!("Resuming geo-replication session between {between} has been successful")
        }
        SessionOp::SetConfig { key, .. } => {
            let key = georep_mesh::session_config::lookup(key).map_or(key.as_str(), |k| k.name);
            let value = value.unwrap_or("?");
            format!(
                "geo-replication config-set of {key} = {value} for {between} has been successful"
            )
        }
        SessionOp::ResetConfig { key } => {
            format!("geo-replication config-reset of {key} for {between} has been successful")
        }
        SessionOp::Delete { .. } => {
            format!("Deleting geo-replication session between {between} has been successful")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use georep_mesh::Hlc;
    use georep_mesh::{Brick, Member, NodeInfo};
    use georep_mesh::{Reg, SessionOptions, SessionRecord};

    use georep_api::CrawlStatus;

    use super::*;

    fn sid() -> SessionId {
        SessionId::parse("gv0", "n4::gv1").unwrap()
    }

    fn replica(desired: DesiredState, desired_at: u64) -> Replica {
        let mut record = SessionRecord::empty(sid());
        record.created = Some(Reg {
            val: SessionOptions::default(),
            marker: Hlc::new(100, 0, "n1"),
        });
        record.desired = Some(Reg {
            val: desired,
            marker: Hlc::new(desired_at, 0, "n1"),
        });
        record.config.insert(
            "sync-jobs".into(),
            Reg {
                val: Some("7".into()),
                marker: Hlc::new(150, 0, "n2"),
            },
        );
        let mut replica = Replica::default();
        replica.join_record(&record);
        replica
    }

    fn member(id: &str, live: bool, bricks: &[(&str, &str)]) -> Member {
        Member {
            node_id: id.into(),
            generation: 1,
            gossip_addr: "127.0.0.1:7000".parse().unwrap(),
            live,
            scheduled_for_deletion: false,
            heartbeat: 1,
            last_heard_ms: Some(10),
            key_count: 0,
            max_version: 0,
            info: Some(NodeInfo {
                agent_version: "0.1.0".into(),
                bricks: bricks
                    .iter()
                    .map(|(volume, path)| Brick {
                        volume: (*volume).into(),
                        path: (*path).into(),
                        replica_set: 0,
                    })
                    .collect(),
                missing: Vec::new(),
                facts: Vec::new(),
                users: Vec::new(),
            }),
            seen: Arc::default(),
        }
    }

    fn membership() -> Membership {
        let members = [
            member("n1", true, &[("gv0", "/b1")]),
            member("n2", true, &[("gv0", "/b2")]),
            member("n3", false, &[("gv0", "/b3")]),
            member("n4", true, &[("gv1", "/s1")]),
        ];
        Membership {
            self_id: "n1".into(),
            members: members
                .into_iter()
                .map(|m| (m.node_id.clone(), m))
                .collect(),
        }
    }

    fn published(
        state: MonitorState,
        desired_at: u64,
        brick: &str,
        word: &str,
    ) -> NodeSessionStatus {
        NodeSessionStatus {
            report: MonitorReport {
                state,
                pid: Some(42),
                restarts: 0,
                last_error: None,
                desired_stamp: Some(Hlc::new(desired_at, 0, "n1")),
                restart_stamp: None,
                since_ms: 0,
                backoff_remaining_ms: None,
                last_decision: String::new(),
            },
            workers: vec![BrickStatus {
                brick: brick.into(),
                status: WorkerStatus::from(word),
                ..BrickStatus::default()
            }],
            published_at_ms: 0,
        }
    }

    #[test]
    fn status_rows_say_what_each_node_did_with_the_current_desired_state() {
        let replica = replica(DesiredState::Started, 200);
        let view = replica.view(&sid()).unwrap();
        let statuses = BTreeMap::from([
            // n1 acted on the current desired state: its worker's own word.
            (
                "n1".to_string(),
                published(MonitorState::Started, 200, "/b1", "Active"),
            ),
            // n2 last reported on an older desired state: in transition.
            (
                "n2".to_string(),
                published(MonitorState::Started, 150, "/b2", "Passive"),
            ),
        ]);
        let progress = WriteProgress {
            confirmed: vec!["n1".into(), "n2".into()],
            lagging: vec!["n4".into()],
            dead: vec!["n3".into()],
        };
        let status = session_status(&view, &membership(), progress, &statuses);
        let rows: Vec<(&str, &str, &str)> = status
            .workers
            .iter()
            .map(|w| (w.node.as_str(), w.brick.as_str(), w.status.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                ("n1", "/b1", "Active"),
                ("n2", "/b2", "Initializing..."),
                ("n3", "/b3", "Offline"),
            ]
        );
        assert_eq!(status.workers[0].crawl_status, CrawlStatus::NotApplicable);
        assert_eq!(status.workers[0].monitor_pid, Some(42));
        assert_eq!(status.workers[0].secondary_node.as_deref(), Some("n4"));
        // A worker that says which secondary it syncs to is shown with that one.
        let mut told = statuses.clone();
        if let Some(n1) = told.get_mut("n1") {
            n1.workers[0].secondary_node = Some("n5".into());
        }
        let progress = WriteProgress {
            confirmed: vec![],
            lagging: vec![],
            dead: vec![],
        };
        let shown = session_status(&view, &membership(), progress, &told);
        assert_eq!(shown.workers[0].secondary_node.as_deref(), Some("n5"));
        assert_eq!(status.desired_state, "Started");
        assert_eq!(status.converged_nodes, ["n1", "n2"]);
        assert_eq!(status.lagging_nodes, ["n4"]);
        assert_eq!(status.dead_nodes, ["n3"]);
        // Nothing published yet by a live node: the desired state's starting word.
        let status = session_status(
            &view,
            &membership(),
            WriteProgress::default(),
            &BTreeMap::new(),
        );
        assert_eq!(status.workers[0].status.as_str(), "Initializing...");
        // A stop not yet acted on reads Stopping..., never the old Active.
        let stopped = super::tests::replica(DesiredState::Stopped, 300);
        let view = stopped.view(&sid()).unwrap();
        let status = session_status(&view, &membership(), WriteProgress::default(), &statuses);
        assert_eq!(status.workers[0].status.as_str(), "Stopping...");
    }

    #[test]
    fn nodes_lists_every_member_with_its_bricks() {
        let rows = nodes(&membership()).nodes;
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[2].node, "n3");
        assert!(!rows[2].live);
        assert_eq!(rows[3].bricks[0].volume, "gv1");
    }

    #[test]
    fn config_lists_gets_and_refuses_with_codes() {
        let replica = replica(DesiredState::Started, 200);
        let all = config(&replica, "gv0", "n4::gv1", None).unwrap();
        assert!(all.keys.len() > 5);
        let one = config(&replica, "gv0", "n4::gv1", Some("sync_jobs")).unwrap();
        assert_eq!(one.keys.len(), 1);
        assert_eq!((one.keys[0].value.as_str(), one.keys[0].set), ("7", true));
        let code = |result: Result<ConfigResponse, ApiError>| match result {
            Err(ApiError::Refused { code, .. } | ApiError::BadRequest { code, .. }) => code,
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(
            code(config(&replica, "gv0", "n4::gv1", Some("nope"))),
            georep_api::ErrorCode::UnknownKey
        );
        assert_eq!(
            code(config(&replica, "gv9", "n4::gv1", None)),
            georep_api::ErrorCode::SessionNotFound
        );
        assert_eq!(
            code(config(&replica, "-x", "n4::gv1", None)),
            georep_api::ErrorCode::BadSessionName
        );
    }

    #[test]
    fn exists_matches_either_volume_and_says_whether_it_runs() {
        let started = replica(DesiredState::Started, 200);
        let by_primary = exists(&started, "gv0", None).unwrap();
        assert!(by_primary.exists && by_primary.running);
        assert_eq!(by_primary.sessions, ["gv0 -> n4::gv1"]);
        assert!(exists(&started, "gv1", None).unwrap().exists);
        let none = exists(&started, "gv7", None).unwrap();
        assert!(!none.exists);
        assert!(
            none.message.contains("no session with gv7"),
            "{}",
            none.message
        );
        // `running` as cli.md has it: Started or Paused.
        let paused = replica(DesiredState::Paused, 200);
        let one = exists(&paused, "gv0", Some("n4::gv1")).unwrap();
        assert!(one.exists && one.running);
        let stopped = replica(DesiredState::Stopped, 200);
        let one = exists(&stopped, "gv0", Some("n4::gv1")).unwrap();
        assert!(one.exists && !one.running);
    }
}
