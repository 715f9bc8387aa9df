//! `georep inspect offline`: a stopped agent's data directory decoded without an
//! agent: the persisted state (verified, or what can still be read from a corrupt
//! file, marked unverified) and the session directories with their monitor records.

use std::path::Path;

use georep_api::inspect::{
    EnvelopeHeader, OfflineRecord, OfflineResponse, SessionDirRow, register_values,
};
use georep_mesh::Hlc;
use georep_mesh::MeshSnapshot;
use georep_mesh::{Replica, SessionId, SessionRecord};
use serde::Deserialize;
use serde_json::Value;

use crate::data_dir::{DataDir, PID_FILE, STATUS_FILE};
use crate::file::{Envelope, STATE_FORMAT_VERSION, StateFile, StoreError};
use crate::persisted::PersistedState;

/// Largest session directory file read (status and pid files are a few bytes).
const MAX_SMALL_FILE: u64 = 64 * 1024;

/// `inspect offline --data-dir DIR`: decodes a stopped agent's `state.bin` and lists its
/// session directories, without an agent. A corrupt file is reported with the check
/// that failed and whatever could still be read.
pub fn offline(data_dir: &Path) -> OfflineResponse {
    let path = DataDir::new(data_dir).state_file();
    let mut out = OfflineResponse {
        ok: false,
        data_dir: data_dir.display().to_string(),
        state_file: path.display().to_string(),
        file_size: std::fs::metadata(&path).ok().map(|m| m.len()),
        error: None,
        envelope: None,
        node_id: None,
        generation: None,
        hlc_last: None,
        own_records: Vec::new(),
        replica: Vec::new(),
        session_dirs: session_dirs(data_dir),
        message: String::new(),
    };
    match StateFile::<PersistedState>::new(&path).load() {
        Ok(Some(state)) => {
            out.ok = true;
            if let Ok(bytes) = std::fs::read(&path) {
                out.envelope = envelope_header(&bytes);
            }
            out.node_id = Some(state.node_id);
            out.generation = Some(state.generation);
            out.hlc_last = state.mesh.hlc_last.map(|h| h.to_string());
            out.own_records = state
                .mesh
                .own
                .iter()
                .map(|r| offline_record(r, true))
                .collect();
            out.replica = state
                .mesh
                .replica
                .sessions
                .values()
                .map(|r| offline_record(r, false))
                .collect();
            out.message = format!(
                "state of node {} (generation {}) decoded and verified: {} own record(s), {} session(s) in the replica",
                out.node_id.as_deref().unwrap_or_default(),
                state.generation,
                out.own_records.len(),
                out.replica.len()
            );
        }
        Ok(None) => {
            let error = if data_dir.is_dir() {
                format!(
                    "{} does not exist: the agent never persisted state in this directory (is it a georepd data directory?)",
                    path.display()
                )
            } else {
                format!("{} is not a directory", data_dir.display())
            };
            out.message = error.clone();
            out.error = Some(error);
        }
        Err(StoreError::Corrupt { reason, .. }) => {
            let bytes = std::fs::read(&path).unwrap_or_default();
            out.envelope = envelope_header(&bytes);
            let salvaged = salvage(&bytes);
            out.node_id = salvaged.node_id;
            out.generation = salvaged.generation;
            out.hlc_last = salvaged.hlc_last;
            out.own_records = salvaged
                .own
                .iter()
                .map(|r| offline_record(r, true))
                .collect();
            out.replica = salvaged
                .replica
                .iter()
                .map(|r| offline_record(r, false))
                .collect();
            let mut read = Vec::new();
            if let Some(node) = &out.node_id {
                read.push(format!("node id {node}"));
            }
            if let Some(generation) = out.generation {
                read.push(format!("generation {generation}"));
            }
            if let Some(total) = salvaged.own_total {
                read.push(format!("{} of {total} own record(s)", salvaged.own.len()));
            }
            if let Some(total) = salvaged.replica_total {
                read.push(format!(
                    "{} of {total} replica session(s)",
                    salvaged.replica.len()
                ));
            }
            if out.hlc_last.is_some() {
                read.push("the HLC".into());
            }
            let size = bytes.len();
            out.message = format!(
                "state file is corrupt: {reason} (file is {size} bytes); read {} (unverified)",
                if read.is_empty() {
                    "nothing".to_string()
                } else {
                    read.join(", ")
                }
            );
            out.error = Some(format!("corrupt state file: {reason}"));
        }
        Err(error) => {
            out.message = error.to_string();
            out.error = Some(error.to_string());
        }
    }
    out
}

/// A record of the converged replica (`partial`: of the node's own namespace).
fn offline_record(record: &SessionRecord, partial: bool) -> OfflineRecord {
    let view = record.view();
    OfflineRecord {
        session: record.id.to_string(),
        exists: (!partial).then_some(view.exists),
        desired_state: (!partial).then(|| view.desired.to_string()),
        registers: register_values(record),
    }
}

/// The envelope header as it is on disk, valid or not.
fn envelope_header(bytes: &[u8]) -> Option<EnvelopeHeader> {
    let envelope = Envelope::read(bytes)?;
    Some(EnvelopeHeader {
        magic: envelope.magic.iter().map(|b| format!("{b:02x}")).collect(),
        magic_ok: envelope.magic_ok(),
        format_version: envelope.version,
        payload_len: envelope.claimed_len as u64,
        payload_held: envelope.held_len as u64,
    })
}

/// What could be read from a corrupt state file's payload, field by field.
#[derive(Debug, Default)]
struct Salvaged {
    node_id: Option<String>,
    generation: Option<u64>,
    own_total: Option<u64>,
    own: Vec<SessionRecord>,
    replica_total: Option<u64>,
    replica: Vec<SessionRecord>,
    hlc_last: Option<String>,
}

/// Decodes the [`PersistedState`] payload front to back (postcard writes fields in
/// order, sequences as a varint length then the elements) and keeps everything that
/// decodes before the first failure. The order is [`PersistedState`]'s, spelled out by
/// [`persisted_fields`], which stops compiling when a field is added or removed; a test
/// checks that salvaging an intact file gives exactly what the decoder gives.
fn salvage(bytes: &[u8]) -> Salvaged {
    let mut out = Salvaged::default();
    let Some(envelope) = Envelope::read(bytes) else {
        return out;
    };
    if !envelope.magic_ok() || envelope.version != STATE_FORMAT_VERSION {
        return out;
    }
    let mut rest = envelope.payload;

    fn take<T: for<'de> Deserialize<'de>>(rest: &mut &[u8]) -> Option<T> {
        let (value, tail) = postcard::take_from_bytes::<T>(rest).ok()?;
        *rest = tail;
        Some(value)
    }

    let Some(node_id) = take::<String>(&mut rest) else {
        return out;
    };
    out.node_id = Some(node_id);
    let Some(generation) = take::<u64>(&mut rest) else {
        return out;
    };
    out.generation = Some(generation);
    let Some(own_total) = take::<u64>(&mut rest) else {
        return out;
    };
    out.own_total = Some(own_total);
    for _ in 0..own_total {
        let Some(record) = take::<SessionRecord>(&mut rest) else {
            return out;
        };
        out.own.push(record);
    }
    let Some(replica_total) = take::<u64>(&mut rest) else {
        return out;
    };
    out.replica_total = Some(replica_total);
    for _ in 0..replica_total {
        let Some((_, record)) = take::<(SessionId, SessionRecord)>(&mut rest) else {
            return out;
        };
        out.replica.push(record);
    }
    if let Some(Some(hlc)) = take::<Option<Hlc>>(&mut rest) {
        out.hlc_last = Some(hlc.to_string());
    }
    out
}

/// [`PersistedState`]'s fields in the order postcard writes them (the order
/// [`salvage`] reads). Exhaustive on purpose: a new field breaks the build here.
#[allow(dead_code)]
fn persisted_fields(
    state: PersistedState,
) -> (String, u64, Vec<SessionRecord>, Replica, Option<Hlc>) {
    let PersistedState {
        node_id,
        generation,
        mesh: MeshSnapshot {
            own,
            replica,
            hlc_last,
        },
    } = state;
    let Replica { sessions } = &replica;
    let _: &std::collections::BTreeMap<SessionId, SessionRecord> = sessions;
    (node_id, generation, own, replica, hlc_last)
}

/// The session directories under `<data-dir>/geo-replication`, with their monitor status
/// and pid file (a pid is checked against this machine's `/proc`).
fn session_dirs(data_dir: &Path) -> Vec<SessionDirRow> {
    let Ok(entries) = std::fs::read_dir(DataDir::new(data_dir).sessions_root()) else {
        return Vec::new();
    };
    let mut rows: Vec<SessionDirRow> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|entry| {
            let dir = entry.path();
            let monitor_status =
                read_small(&dir.join(STATUS_FILE)).map(|text| text.trim().to_string());
            let (monitor_pid, pid_file_error) = match read_small(&dir.join(PID_FILE)) {
                None => (None, None),
                Some(text) => match serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.get("pid").and_then(Value::as_u64))
                    .and_then(|pid| u32::try_from(pid).ok())
                {
                    Some(pid) => (Some(pid), None),
                    None => (
                        None,
                        Some(format!(
                            "{PID_FILE} holds no pid record: {:?}",
                            text.chars().take(80).collect::<String>()
                        )),
                    ),
                },
            };
            SessionDirRow {
                name: entry.file_name().to_string_lossy().into_owned(),
                monitor_status,
                pid_running: monitor_pid.map(|pid| Path::new(&format!("/proc/{pid}")).exists()),
                monitor_pid,
                pid_file_error,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}

fn read_small(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > MAX_SMALL_FILE {
        return Some(format!("<{} bytes, not read>", meta.len()));
    }
    std::fs::read(path)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use georep_mesh::{DesiredState, Reg, SessionOptions};

    use super::*;
    use crate::data_dir::STATE_FILE;

    fn sid() -> SessionId {
        SessionId::parse("gv0", "n4::gv1").unwrap()
    }

    fn record() -> SessionRecord {
        let mut record = SessionRecord::empty(sid());
        record.created = Some(Reg {
            val: SessionOptions::default(),
            marker: Hlc::new(100, 0, "n1"),
        });
        record.desired = Some(Reg {
            val: DesiredState::Started,
            marker: Hlc::new(200, 1, "n2"),
        });
        record.config.insert(
            "sync-jobs".into(),
            Reg {
                val: Some("7".into()),
                marker: Hlc::new(300, 0, "n3"),
            },
        );
        record
    }

    fn persisted() -> PersistedState {
        let mut replica = Replica::default();
        replica.join_record(&record());
        let mut other = SessionRecord::empty(SessionId::parse("gv2", "n4::gv3").unwrap());
        other.created = Some(Reg {
            val: SessionOptions::default(),
            marker: Hlc::new(500, 0, "n2"),
        });
        replica.join_record(&other);
        PersistedState {
            node_id: "n1".into(),
            generation: 77,
            mesh: MeshSnapshot {
                own: vec![record()],
                replica,
                hlc_last: Some(Hlc::new(900, 2, "n1")),
            },
        }
    }

    #[test]
    fn salvaging_an_intact_file_reads_exactly_what_the_decoder_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let state = persisted();
        StateFile::new(&path).save(&state).unwrap();
        let salvaged = salvage(&std::fs::read(&path).unwrap());
        let (node_id, generation, own, replica, hlc_last) = persisted_fields(state);
        assert_eq!(salvaged.node_id, Some(node_id));
        assert_eq!(salvaged.generation, Some(generation));
        assert_eq!(salvaged.own, own);
        assert_eq!(salvaged.own_total, Some(own.len() as u64));
        assert_eq!(
            salvaged.replica,
            replica.sessions.values().cloned().collect::<Vec<_>>()
        );
        assert_eq!(salvaged.hlc_last, hlc_last.map(|h| h.to_string()));
    }

    #[test]
    fn offline_decodes_a_data_dir_and_salvages_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        StateFile::new(&path).save(&persisted()).unwrap();
        let session = dir.path().join("geo-replication").join("gv0_n4_gv1");
        std::fs::create_dir_all(&session).unwrap();
        std::fs::write(session.join(STATUS_FILE), "Started\n").unwrap();
        std::fs::write(
            session.join(PID_FILE),
            format!("{{\"pid\": {}, \"other\": 1}}", std::process::id()),
        )
        .unwrap();

        let out = offline(dir.path());
        assert!(out.ok, "{out:?}");
        assert_eq!(out.node_id.as_deref(), Some("n1"));
        assert_eq!(out.generation, Some(77));
        assert_eq!(out.hlc_last.as_deref(), Some("900.2@n1"));
        assert_eq!(out.own_records.len(), 1);
        assert_eq!(out.replica.len(), 2);
        assert_eq!(out.replica[0].desired_state.as_deref(), Some("Started"));
        assert_eq!(out.own_records[0].exists, None, "own records are partial");
        assert_eq!(out.session_dirs.len(), 1);
        let row = &out.session_dirs[0];
        assert_eq!(row.monitor_status.as_deref(), Some("Started"));
        assert_eq!(row.monitor_pid, Some(std::process::id()));
        assert_eq!(row.pid_running, Some(true));

        let good = std::fs::read(&path).unwrap();
        // a flipped checksum byte: everything still decodes, flagged unverified
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        let out = offline(dir.path());
        assert!(!out.ok);
        assert!(
            out.error.as_deref().unwrap().contains("checksum mismatch"),
            "{out:?}"
        );
        assert_eq!(out.replica.len(), 2, "{out:?}");
        assert_eq!(out.hlc_last.as_deref(), Some("900.2@n1"));
        assert!(out.message.contains("unverified"), "{}", out.message);

        // truncated inside the second replica session: the head and the first survive
        let cut = good.len() - 30;
        std::fs::write(&path, &good[..cut]).unwrap();
        let out = offline(dir.path());
        assert!(!out.ok);
        assert!(
            out.error.as_deref().unwrap().contains("length field"),
            "{out:?}"
        );
        assert_eq!(out.file_size, Some(cut as u64));
        assert_eq!(out.node_id.as_deref(), Some("n1"));
        assert_eq!(out.generation, Some(77));
        assert_eq!(out.own_records.len(), 1);
        assert!(out.replica.len() < 2, "{out:?}");
        assert!(
            out.message.contains(&format!("file is {cut} bytes")),
            "{}",
            out.message
        );
        let header = out.envelope.unwrap();
        assert!(header.magic_ok);
        assert!(header.payload_len > header.payload_held);

        // bad magic: nothing is read, and the header says why
        let mut bad = good.clone();
        bad[0] = b'X';
        std::fs::write(&path, &bad).unwrap();
        let out = offline(dir.path());
        assert!(
            out.error.as_deref().unwrap().contains("bad magic"),
            "{out:?}"
        );
        assert_eq!(out.node_id, None);
        assert!(!out.envelope.unwrap().magic_ok);
        assert!(out.message.contains("read nothing"), "{}", out.message);

        std::fs::remove_file(&path).unwrap();
        let out = offline(dir.path());
        assert!(!out.ok);
        assert!(out.error.as_deref().unwrap().contains("does not exist"));
        assert_eq!(
            out.session_dirs.len(),
            1,
            "session dirs listed without a state file"
        );
    }
}
