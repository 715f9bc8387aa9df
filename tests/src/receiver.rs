//! A real HTTP webhook receiver for tests and benchmarks: `receivers/webhook_receiver.py`
//! (Python's http.server), which verifies tokens, JWTs and Standard Webhooks signatures
//! with Python's own hmac and records every delivery.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::free_port;

/// One `webhook_receiver.py`, killed on drop.
pub struct Receiver {
    port: u16,
    dir: tempfile::TempDir,
    options: Vec<String>,
    child: Option<Child>,
}

impl Receiver {
    pub fn start(options: &[&str]) -> Receiver {
        let mut receiver = Receiver {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            options: options.iter().map(|o| o.to_string()).collect(),
            child: None,
        };
        receiver.up();
        receiver
    }

    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("receivers/webhook_receiver.py")
    }

    /// Starts (again) the receiver process and waits until it listens.
    pub fn up(&mut self) {
        let child = Command::new("/usr/bin/python3")
            .arg(Self::script())
            .arg(self.port.to_string())
            .arg(self.dir.path().join("received.jsonl"))
            .arg(self.dir.path().join("control"))
            .args(&self.options)
            .stdout(Stdio::null())
            .spawn()
            .expect("run /usr/bin/python3 (the test receiver)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the receiver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the receiver process.
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sets how it answers: `ok`, `slow` or an HTTP status.
    pub fn set(&self, mode: &str) {
        std::fs::write(self.dir.path().join("control"), mode).unwrap();
    }

    /// Its URL (`https` when started with `--tls-cert`).
    pub fn url(&self) -> String {
        let scheme = if self.options.iter().any(|o| o == "--tls-cert") {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}/hook", self.port)
    }

    /// Every request it answered: (Unix seconds, HTTP status, delivery id), in order.
    pub fn attempts(&self) -> Vec<(f64, u16, String)> {
        std::fs::read_to_string(self.dir.path().join("received.jsonl.attempts"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|a| {
                let status = u16::try_from(a["status"].as_u64()?).ok()?;
                let id = a["id"].as_str().unwrap_or_default().to_string();
                Some((a["at"].as_f64()?, status, id))
            })
            .collect()
    }

    /// Every delivery it recorded.
    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("received.jsonl"))
            .unwrap_or_default()
            .lines()
            // A line being written right now is not complete yet: skipped.
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The ids of what it recorded.
    pub fn ids(&self) -> BTreeSet<String> {
        self.received()
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect()
    }

    /// Every delivery verified, and every duplicate identical to the first.
    pub fn assert_authentic(&self) {
        let mut by_id: BTreeMap<String, String> = BTreeMap::new();
        for record in self.received() {
            assert_eq!(record["verified"], true, "{record}");
            assert_eq!(
                record["keys"],
                serde_json::json!(["event", "id", "message", "nodeid", "ts"]),
                "gluster's keys plus id: {record}"
            );
            let id = record["id"].as_str().unwrap().to_string();
            let body = record["body"].as_str().unwrap().to_string();
            let first = by_id.entry(id.clone()).or_insert(body.clone());
            assert_eq!(*first, body, "a duplicate of {id} differs");
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}
