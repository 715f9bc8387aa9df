//! The local API client: the routes of `georep_agent::api_types` over the
//! agent's Unix socket, with agent errors turned into [`CommandError`]s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use georep_agent::api_types::{ErrorBody, OpRequest, OpResponse};
use georep_agent::http::{ClientError, percent_encode, request};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::output::CommandError;

/// How much longer than the agent's own wait the client waits for an answer,
/// so that a timed-out wait still comes back as a (non-converged) response.
pub const HTTP_GRACE: Duration = Duration::from_secs(10);

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

    /// `GET path_and_query`; the JSON body of a 2xx answer.
    pub async fn get(&self, path_and_query: &str) -> Result<Value, CommandError> {
        self.call("GET", path_and_query, None).await
    }

    /// `POST /v1/op`: applies `op`, waiting (unless `wait` is false) up to the
    /// client's wait timeout. Returns the typed answer and the raw JSON.
    pub async fn op(
        &self,
        primary: &str,
        secondary: &str,
        op: georep_mesh::state::SessionOp,
        wait: bool,
    ) -> Result<(OpResponse, Value), CommandError> {
        let request = OpRequest {
            primary: primary.to_owned(),
            secondary: secondary.to_owned(),
            op,
            wait,
            timeout_ms: u64::try_from(self.wait_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let body = serde_json::to_value(&request)
            .map_err(|e| CommandError::Failed(format!("cannot encode the request: {e}")))?;
        let raw = self.call("POST", "/v1/op", Some(&body)).await?;
        let typed = decode(&raw)?;
        Ok((typed, raw))
    }

    async fn call(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, CommandError> {
        let timeout = self.wait_timeout.saturating_add(HTTP_GRACE);
        let (status, value) = request(&self.socket, method, path_and_query, body, timeout)
            .await
            .map_err(|e| match e {
                ClientError::NoAgent { socket, reason } => CommandError::NoAgent { socket, reason },
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
            session: error.session,
            message: error.message,
        },
        Err(_) => CommandError::Refused {
            status,
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

/// Builds `path?k=v&...` with percent-encoded values, skipping absent ones.
pub fn with_query(path: &str, params: &[(&str, Option<&str>)]) -> String {
    let mut out = path.to_owned();
    let mut sep = '?';
    for (key, value) in params {
        if let Some(value) = value {
            out.push(sep);
            out.push_str(key);
            out.push('=');
            out.push_str(&percent_encode(value));
            sep = '&';
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::output::Exit;

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

    #[tokio::test]
    async fn missing_socket_is_no_agent() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::new(dir.path().join("none.sock"), Duration::from_secs(1));
        let err = client.get("/v1/nodes").await.unwrap_err();
        assert!(matches!(err, CommandError::NoAgent { .. }), "{err:?}");
        assert_eq!(err.exit(), Exit::NoAgent);
    }
}
