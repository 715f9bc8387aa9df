//! What every command hands back ([`Report`]: stdout text, stderr text and an
//! [`Exit`] code), aligned tables in gluster's style, JSON printing, and the
//! rendering of errors with the exit codes of cli.md.
//!
//! Commands return a [`Report`] instead of printing so that `demo` can replay
//! them in-process and tests can read what a user would see.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;

/// How `georep` exits (cli.md "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Done,
    /// 1: refused or failed.
    Failed,
    /// 2: usage error.
    Usage,
    /// 3: no agent at the socket.
    NoAgent,
    /// 4: applied locally but not confirmed by every live node in time.
    NotConverged,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::NoAgent => 3,
            Exit::NotConverged => 4,
        }
    }
}

/// The outcome of one command: what to print and how to exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// How to exit.
    pub exit: Exit,
    /// Text for stdout.
    pub stdout: String,
    /// Text for stderr.
    pub stderr: String,
}

impl Report {
    /// An empty report exiting with `exit`.
    pub fn new(exit: Exit) -> Self {
        Report {
            exit,
            stdout: String::new(),
            stderr: String::new(),
        }
    }

    /// Appends `text` and a newline to stdout.
    pub fn out(&mut self, text: impl AsRef<str>) {
        self.stdout.push_str(text.as_ref());
        self.stdout.push('\n');
    }

    /// Appends `text` and a newline to stderr.
    pub fn err(&mut self, text: impl AsRef<str>) {
        self.stderr.push_str(text.as_ref());
        self.stderr.push('\n');
    }

    /// A report whose stdout is `value` as one line of JSON.
    pub fn json(exit: Exit, value: &impl Serialize) -> Self {
        let mut report = Report::new(exit);
        report.out(json_line(value));
        report
    }

    /// Writes stdout and stderr to the process's streams.
    pub fn print(&self) {
        use std::io::Write as _;
        // A closed pipe (`georep status | head`) is not worth a panic.
        let _ = std::io::stdout().write_all(self.stdout.as_bytes());
        let _ = std::io::stderr().write_all(self.stderr.as_bytes());
    }
}

/// `value` as one line of JSON (never fails: an unencodable value becomes an
/// error object).
pub fn json_line(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        json!({"ok": false, "session": null, "message": format!("cannot encode output: {e}")})
            .to_string()
    })
}

/// Why a command did not succeed, with the exit code each reason maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Nothing listens at the socket (exit 3).
    NoAgent {
        /// The socket tried.
        socket: PathBuf,
        /// The connect error.
        reason: String,
    },
    /// The agent answered with an error (exit 1).
    Refused {
        /// HTTP status.
        status: u16,
        /// The agent's machine-readable kind of error.
        code: georep_api::ErrorCode,
        /// The session the agent named, if any.
        session: Option<String>,
        /// The agent's message (it names the session and the reason).
        message: String,
    },
    /// An agent accepted the connection but did not answer in time: it is hung or
    /// overloaded (exit 3, like no agent at all).
    Unresponsive {
        /// The socket tried.
        socket: PathBuf,
        /// How long the client waited.
        after: std::time::Duration,
    },
    /// Anything else that went wrong (exit 1).
    Failed(String),
    /// The command line is wrong in a way clap cannot see (exit 2).
    Usage(String),
}

impl CommandError {
    /// The exit code.
    pub fn exit(&self) -> Exit {
        match self {
            CommandError::NoAgent { .. } | CommandError::Unresponsive { .. } => Exit::NoAgent,
            CommandError::Refused { .. } | CommandError::Failed(_) => Exit::Failed,
            CommandError::Usage(_) => Exit::Usage,
        }
    }

    /// The one-line message for a human.
    pub fn message(&self) -> String {
        match self {
            CommandError::NoAgent { socket, reason } => format!(
                "no agent at {}: {reason}. Is georepd running? (set --socket or GEOREP_SOCKET)",
                socket.display()
            ),
            CommandError::Unresponsive { socket, after } => format!(
                "agent at {} does not answer (nothing within {} s); it may be hung or overloaded",
                socket.display(),
                after.as_secs_f64()
            ),
            CommandError::Refused { message, .. } => message.clone(),
            CommandError::Failed(message) | CommandError::Usage(message) => message.clone(),
        }
    }

    /// The machine-readable kind: the agent's code for a refusal (`session_not_found`,
    /// `wrong_state`, ...), else `no_agent`, `unresponsive`, `failed` or `usage`.
    pub fn code(&self) -> String {
        match self {
            CommandError::Refused { code, .. } => serde_json::to_value(code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".to_owned()),
            CommandError::NoAgent { .. } => "no_agent".to_owned(),
            CommandError::Unresponsive { .. } => "unresponsive".to_owned(),
            CommandError::Failed(_) => "failed".to_owned(),
            CommandError::Usage(_) => "usage".to_owned(),
        }
    }

    /// The report: the message on stderr (prefixed `georep:` unless it is the
    /// agent's own) and, with `--json`,
    /// `{"ok":false,"code":..,"session":..,"message":..}` on stdout; `session` is used
    /// when the agent named none.
    pub fn report(&self, json: bool, session: Option<&str>) -> Report {
        let mut report = Report::new(self.exit());
        let message = self.message();
        match self {
            CommandError::Refused { .. } => report.err(&message),
            _ => report.err(format!("georep: {message}")),
        }
        if json {
            let session = match self {
                CommandError::Refused {
                    session: Some(named),
                    ..
                } => Some(named.as_str()),
                _ => session,
            };
            report.out(json_line(
                &json!({"ok": false, "code": self.code(), "session": session, "message": message}),
            ));
        }
        report
    }
}

/// Columns separated by this many spaces.
const COLUMN_GAP: usize = 4;

/// Text for a missing value, as gluster prints it.
pub const NA: &str = "N/A";

/// An aligned table with a dashed rule under its header, as gluster prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<S: AsRef<str>>(headers: &[S]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.as_ref().to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells print empty, extra cells are dropped).
    pub fn push(&mut self, mut row: Vec<String>) {
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// Renders header, rule and rows, each line ending in a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let total = widths.iter().sum::<usize>() + COLUMN_GAP * widths.len().saturating_sub(1);
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let mut text = String::new();
            for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str(&" ".repeat(COLUMN_GAP));
                }
                let _ = write!(text, "{cell:<width$}");
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut out, &self.headers);
        out.push_str(&"-".repeat(total));
        out.push('\n');
        for row in &self.rows {
            line(&mut out, row);
        }
        out
    }
}

/// A duration in milliseconds, compact: `350ms`, `42s`, `3m 5s`, `2h 7m`, `1d 4h`.
pub fn compact_duration(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        1..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// `a, b, c`, or `none` for an empty list.
pub fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_match_cli_md() {
        let codes: Vec<u8> = [
            Exit::Done,
            Exit::Failed,
            Exit::Usage,
            Exit::NoAgent,
            Exit::NotConverged,
        ]
        .into_iter()
        .map(Exit::code)
        .collect();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn no_agent_maps_to_3_with_the_hint() {
        let err = CommandError::NoAgent {
            socket: PathBuf::from("/x.sock"),
            reason: "No such file or directory".into(),
        };
        let report = err.report(false, Some("gv0 -> n4::gv1"));
        assert_eq!(report.exit, Exit::NoAgent);
        assert_eq!(
            report.stderr,
            "georep: no agent at /x.sock: No such file or directory. Is georepd running? (set --socket or GEOREP_SOCKET)\n"
        );
        assert!(report.stdout.is_empty());
    }

    #[test]
    fn refusal_in_json_names_the_session() {
        let err = CommandError::Refused {
            status: 409,
            code: georep_api::ErrorCode::SessionNotFound,
            session: None,
            message: "Session gv0 -> n4::gv1 has not been created.".into(),
        };
        let report = err.report(true, Some("gv0 -> n4::gv1"));
        assert_eq!(report.exit, Exit::Failed);
        let v: serde_json::Value = serde_json::from_str(report.stdout.trim()).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["code"], "session_not_found");
        assert_eq!(v["session"], "gv0 -> n4::gv1");
        assert_eq!(v["message"], "Session gv0 -> n4::gv1 has not been created.");
        assert_eq!(
            report.stderr,
            "Session gv0 -> n4::gv1 has not been created.\n"
        );
        assert_eq!(CommandError::Usage("x".into()).exit(), Exit::Usage);
    }

    #[test]
    fn table_aligns_and_rules() {
        let mut t = Table::new(&["A", "LONG HEADER", "C"]);
        t.push(vec!["wide cell".into(), "x".into(), String::new()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "A            LONG HEADER    C");
        assert_eq!(lines[1], "-".repeat(9 + 4 + 11 + 4 + 1));
        assert_eq!(lines[2], "wide cell    x");
    }

    #[test]
    fn durations_are_compact() {
        assert_eq!(compact_duration(120), "120ms");
        assert_eq!(compact_duration(42_000), "42s");
        assert_eq!(compact_duration(185_000), "3m 5s");
        assert_eq!(compact_duration(7_620_000), "2h 7m");
        assert_eq!(compact_duration(100_800_000), "1d 4h");
    }
}
