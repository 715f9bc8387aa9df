//! Adoption after an agent restart: the monitors recorded in pid files that are still
//! the same processes (pid, start time, session leader) are kept; stale records go.

use super::*;

impl Supervisor {
    /// Takes over monitors left running by an earlier agent, from their pid files.
    ///
    /// A pid file is honoured only if it names the session whose directory holds it
    /// (and, if a known session lives there, that one) and its process is alive with the
    /// recorded start time, leading its own session; otherwise (or if unreadable) it is
    /// removed and nothing is signalled. An adopted monitor no plan requires is stopped
    /// by the next [`Self::reconcile`].
    pub fn adopt(&mut self, known: &[SessionId]) {
        let entries = match fs::read_dir(&self.sessions_root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return,
            Err(error) => {
                tracing::warn!(dir = %self.sessions_root.display(), %error, "cannot list session directories; no monitor adopted");
                return;
            }
        };
        for entry in entries.flatten() {
            let Some(dir_name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let pid_path = entry.path().join(PID_FILE);
            let text = match fs::read_to_string(&pid_path) {
                Ok(text) => text,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => {
                    tracing::warn!(file = %pid_path.display(), %error, "cannot read pid file");
                    continue;
                }
            };
            match self.check_pid_record(&dir_name, &text, known) {
                Ok((id, record)) => {
                    tracing::info!(session = %id, pid = record.pid, "adopted running monitor");
                    let mut monitor = Monitor::new(self.now);
                    monitor.last_decision = format!(
                        "adopted monitor pid {} left running by an earlier agent",
                        record.pid
                    );
                    monitor.phase = Phase::Running {
                        process: Process {
                            pid: record.pid,
                            identity: record.identity(),
                            adopted: true,
                            restart_stamp: record.restart_stamp,
                            started: self.now,
                        },
                        sigstopped: None,
                        frozen: false,
                        looks: 0,
                    };
                    self.monitors.insert(id, monitor);
                }
                Err(Skip::AlreadySupervised) => {}
                Err(Skip::Stale(why)) => {
                    tracing::info!(file = %pid_path.display(), "removing stale pid file: {why}");
                    remove_pid_file(&pid_path);
                }
            }
        }
    }

    pub(super) fn check_pid_record(
        &self,
        dir_name: &str,
        text: &str,
        known: &[SessionId],
    ) -> Result<(SessionId, PidRecord), Skip> {
        let record: PidRecord = serde_json::from_str(text)
            .map_err(|error| Skip::Stale(format!("unreadable: {error}")))?;
        if record.session.dir_name() != dir_name {
            return Err(Skip::Stale(format!(
                "it names session {} whose directory is {}, not {dir_name}",
                record.session,
                record.session.dir_name()
            )));
        }
        if let Some(other) = known
            .iter()
            .find(|id| id.dir_name() == dir_name && **id != record.session)
        {
            return Err(Skip::Stale(format!(
                "it names session {} but {dir_name} belongs to {other}",
                record.session
            )));
        }
        let id = record.session.clone();
        if self
            .monitors
            .get(&id)
            .is_some_and(|m| m.process().is_some())
        {
            return Err(Skip::AlreadySupervised);
        }
        if record.pid <= 1 || record.start_ticks == 0 {
            return Err(Skip::Stale(format!(
                "pid {} (start tick {}) is not a monitor",
                record.pid, record.start_ticks
            )));
        }
        let recorded = record.identity();
        match self.backend.identity(record.pid) {
            None => Err(Skip::Stale(format!("pid {} is not running", record.pid))),
            Some(found) if found != recorded => Err(Skip::Stale(format!(
                "pid {} is now another process (started at tick {} in session {}; recorded: tick {}, leading its own session)",
                record.pid, found.start_ticks, found.process_session, recorded.start_ticks
            ))),
            Some(_) => Ok((id, record)),
        }
    }
}
