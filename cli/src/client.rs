//! The local API client: the routes of `georep_api::types` over the agent's Unix
//! socket (`georep_api::client`), with agent errors turned into [`CommandError`]s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use georep_api::types::{ErrorBody, ForgetRequest, ForgetResponse, OpRequest, OpResponse};
pub use georep_api::with_query;
use georep_api::{ClientError, request};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::output::CommandError;

/// How much longer than the agent's own wait the client waits for an answer,
/// so that a timed-out wait still comes back as a (non-converged) response.
pub const HTTP_GRACE: Duration = Duration::from_secs(10);

/// How long a read (status, config, nodes, inspect...) waits for the agent to answer:
/// an agent that is alive answers reads from memory at once.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    socket: PathBuf,
    wait_timeout: Duration,
}

impl Client {
    /// A client of the agent at `socket`; mutating commands ask the agent to
    /// wait up to `wait_timeout`.
    pub fn new(socket: PathBuf, wait_timeout: Duration) -> Self {
        Client {
            socket,
            wait_timeout,
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path_and_query` with a long poll of up to `wait` on the agent's side.
    pub async fn get_waiting(
        &self,
        path_and_query: &str,
        wait: Duration,
    ) -> Result<Value, CommandError> {
        self.call("GET", path_and_query, None, wait.saturating_add(HTTP_GRACE))
            .await
    }

    /// `GET path_and_query`; the JSON body of a 2xx answer.
    pub async fn get(&self, path_and_query: &str) -> Result<Value, CommandError> {
        self.call("GET", path_and_query, None, READ_TIMEOUT).await
    }

    /// `POST /v1/op`: applies `op`, waiting (unless `wait` is false) up to the
    /// client's wait timeout. Returns the typed answer and the raw JSON.
    pub async fn op(
        &self,
        primary: &str,
        secondary: &str,
        op: georep_mesh::SessionOp,
        wait: bool,
    ) -> Result<(OpResponse, Value), CommandError> {
        let request = OpRequest {
            primary: primary.to_owned(),
            secondary: secondary.to_owned(),
            op,
            wait,
            timeout_ms: self.wait_timeout_ms(),
        };
        self.post_waiting("/v1/op", &request).await
    }

    /// `POST /v1/nodes/forget`, waiting (unless `wait` is false) up to the client's wait
    /// timeout. Returns the typed answer and the raw JSON.
    pub async fn forget(
        &self,
        node: &str,
        wait: bool,
    ) -> Result<(ForgetResponse, Value), CommandError> {
        let request = ForgetRequest {
            node: node.to_owned(),
            wait,
            timeout_ms: self.wait_timeout_ms(),
        };
        self.post_waiting("/v1/nodes/forget", &request).await
    }

    /// The wait timeout as the API takes it.
    pub fn wait_timeout_ms(&self) -> u64 {
        u64::try_from(self.wait_timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// `POST path` with a change that may wait for confirmation: the HTTP timeout is the
    /// wait timeout plus a grace. Returns the typed answer and the raw JSON.
    pub async fn post_waiting<Q: serde::Serialize, A: DeserializeOwned>(
        &self,
        path: &str,
        request: &Q,
    ) -> Result<(A, Value), CommandError> {
        let body = serde_json::to_value(request)
            .map_err(|e| CommandError::Failed(format!("cannot encode the request: {e}")))?;
        let timeout = self.wait_timeout.saturating_add(HTTP_GRACE);
        let raw = self.call("POST", path, Some(&body), timeout).await?;
        let typed = decode(&raw)?;
        Ok((typed, raw))
    }

    async fn call(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, CommandError> {
        let (status, value) = request(&self.socket, method, path_and_query, body, timeout)
            .await
            .map_err(|e| match e {
                ClientError::NoAgent { socket, reason } => CommandError::NoAgent { socket, reason },
                ClientError::Timeout { socket, after } => {
                    CommandError::Unresponsive { socket, after }
                }
                other => CommandError::Failed(other.to_string()),
            })?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(refusal(status, value))
        }
    }
}

/// The error an agent's non-2xx answer stands for.
pub fn refusal(status: u16, body: Value) -> CommandError {
    match serde_json::from_value::<ErrorBody>(body.clone()) {
        Ok(error) => CommandError::Refused {
            status,
            code: error.code,
            session: error.session,
            message: error.message,
        },
        Err(_) => CommandError::Refused {
            status,
            code: georep_api::ErrorCode::Unknown,
            session: None,
            message: match body.get("message").and_then(Value::as_str) {
                Some(message) => message.to_owned(),
                None => format!("georepd answered HTTP {status} without an explanation"),
            },
        },
    }
}

/// Decodes an answer into its API type.
pub fn decode<T: DeserializeOwned>(value: &Value) -> Result<T, CommandError> {
    T::deserialize(value).map_err(|e| {
        CommandError::Failed(format!(
            "unexpected answer from georepd ({e}); are georep and georepd the same version?"
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use clap::Parser;
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper_util::rt::TokioIo;
    use serde_json::json;

    use super::*;
    use crate::args::Cli;
    use crate::output::{Exit, Report};

    #[test]
    fn query_is_encoded() {
        assert_eq!(
            with_query(
                "/v1/status",
                &[("primary", Some("gv0")), ("secondary", Some("geo@n4::gv1"))]
            ),
            "/v1/status?primary=gv0&secondary=geo%40n4%3A%3Agv1"
        );
        assert_eq!(with_query("/v1/status", &[("primary", None)]), "/v1/status");
    }

    #[test]
    fn error_bodies_become_refusals() {
        let err = refusal(
            409,
            json!({"ok": false, "session": "gv0 -> n4::gv1", "message": "already exists"}),
        );
        assert_eq!(
            err,
            CommandError::Refused {
                status: 409,
                code: georep_api::ErrorCode::Unknown,
                session: Some("gv0 -> n4::gv1".into()),
                message: "already exists".into()
            }
        );
        let err = refusal(400, json!({"ok": false, "message": "bad"}));
        assert_eq!(err.message(), "bad");
        let err = refusal(500, Value::Null);
        assert!(err.message().contains("500"));
        assert_eq!(err.exit(), Exit::Failed);
    }

    type Answer = hyper::Response<Full<Bytes>>;

    fn answer(status: u16, value: &impl serde::Serialize) -> Answer {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(value).unwrap())))
            .unwrap()
    }

    /// A stand-in agent: `primary` of an op picks the answer.
    async fn fake_agent(req: hyper::Request<Incoming>) -> Result<Answer, Infallible> {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Ok(match (method.as_str(), path.as_str()) {
            ("POST", "/v1/op") => {
                let op: OpRequest = serde_json::from_slice(&body).unwrap();
                assert_eq!(op.timeout_ms, 7_000);
                if op.primary == "dup" {
                    return Ok(answer(
                        409,
                        &json!({"ok": false, "code": "already_exists", "session": "dup -> n4::gv1", "message": "Session dup -> n4::gv1 already exists."}),
                    ));
                }
                let converged = op.primary != "lag" && op.wait;
                answer(
                    200,
                    &OpResponse {
                        ok: true,
                        session: format!("{} -> {}", op.primary, op.secondary),
                        message: "done".into(),
                        confirmed_nodes: vec!["n1".into()],
                        dead_nodes: vec![],
                        lagging_nodes: if converged || !op.wait {
                            vec![]
                        } else {
                            vec!["n2".into()]
                        },
                        pending_monitors: vec![],
                        pending_keys: Vec::new(),
                        converged,
                        waited: op.wait,
                        stamp: None,
                        value: None,
                    },
                )
            }
            ("GET", "/v1/exists") => {
                let exists = query.split('&').any(|kv| kv == "volume=gv0");
                answer(
                    200,
                    &json!({"ok": true, "exists": exists, "running": false, "sessions": [],
                            "session": "gv0", "message": "m"}),
                )
            }
            ("GET", "/v1/status") => answer(200, &json!({"sessions": [], "extra": 1})),
            _ => answer(
                404,
                &json!({"ok": false, "code": "not_found", "message": format!("no such endpoint: {path}")}),
            ),
        })
    }

    /// Serves [`fake_agent`] on `socket` until the task is aborted.
    fn serve_fake_agent(socket: &std::path::Path) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn(fake_agent),
                ));
            }
        })
    }

    #[tokio::test]
    async fn round_trips_through_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("georepd.sock");
        let server = serve_fake_agent(&socket);
        let run = |args: &[&str]| {
            let argv: Vec<String> = [
                "georep",
                "--timeout",
                "7",
                "--socket",
                socket.to_str().unwrap(),
            ]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect();
            async move { crate::execute(&Cli::try_parse_from(argv).unwrap()).await }
        };

        let report = run(&["start", "gv0", "n4::gv1"]).await;
        assert_eq!(report.exit, Exit::Done, "{report:?}");
        assert!(report.stdout.starts_with(
            "Starting geo-replication session between gv0 & n4::gv1 has been successful\n"
        ));
        let report = run(&["start", "lag", "n4::gv1"]).await;
        assert_eq!(report.exit, Exit::NotConverged, "{report:?}");
        assert!(
            report.stderr.contains("lagging nodes: n2"),
            "{}",
            report.stderr
        );
        let report = run(&["pause", "lag", "n4::gv1", "--no-wait"]).await;
        assert_eq!(report.exit, Exit::Done, "{report:?}");
        let report = run(&["create", "dup", "n4::gv1", "--json"]).await;
        assert_eq!(report.exit, Exit::Failed);
        assert_eq!(report.stderr, "Session dup -> n4::gv1 already exists.\n");
        let v: Value = serde_json::from_str(report.stdout.trim()).unwrap();
        assert_eq!(
            (v["ok"].as_bool(), v["session"].as_str()),
            (Some(false), Some("dup -> n4::gv1"))
        );
        assert_eq!(v["code"], "already_exists");

        assert_eq!(run(&["exists", "gv0"]).await, Report::new(Exit::Done));
        assert_eq!(run(&["exists", "gv9"]).await, Report::new(Exit::Failed));
        assert_eq!(run(&["running", "gv0", "n4::gv1"]).await.exit, Exit::Failed);
        let report = run(&["exists", "gv0", "--json"]).await;
        assert_eq!(
            report.stdout,
            "{\"ok\":true,\"exists\":true,\"running\":false,\"sessions\":[],\"session\":\"gv0\",\"message\":\"m\"}\n"
        );

        // Status JSON is passed through as the agent sent it, new fields included.
        let report = run(&["status", "--json"]).await;
        let v: Value = serde_json::from_str(report.stdout.trim()).unwrap();
        assert_eq!(v, json!({"sessions": [], "extra": 1}));
        assert_eq!(
            run(&["status"]).await.stdout,
            "No active geo-replication sessions\n"
        );
        // A session asked for by name that the agent does not list: exit 1.
        let report = run(&["status", "gv0", "n4::gv1"]).await;
        assert_eq!(report.exit, Exit::Failed);
        assert!(
            report.stderr.contains("has not been created"),
            "{}",
            report.stderr
        );
        // An agent error with no session: exit 1, its message on stderr.
        let report = run(&["nodes"]).await;
        assert_eq!(report.exit, Exit::Failed);
        assert_eq!(report.stderr, "no such endpoint: /v1/nodes\n");

        server.abort();
    }

    #[tokio::test]
    async fn missing_socket_is_no_agent() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::new(dir.path().join("none.sock"), Duration::from_secs(1));
        let err = client.get("/v1/nodes").await.unwrap_err();
        assert!(matches!(err, CommandError::NoAgent { .. }), "{err:?}");
        assert_eq!(err.exit(), Exit::NoAgent);
    }
}
