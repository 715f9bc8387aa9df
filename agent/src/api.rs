//! The local API's routes: HTTP requests to [`Agent`] calls (see [`crate::api_types`],
//! and [`crate::inspect_types`] for `/v1/inspect/...`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

use crate::agent::{Agent, ApiError};
use crate::api_types::{ErrorBody, ForgetRequest, OpRequest};
use crate::http::{Handler, Request, Response};

/// Longest wait a client may ask for (10 minutes).
const MAX_WAIT_MS: u64 = 600_000;

/// Serves the local API of one agent.
pub struct ApiHandler {
    agent: Arc<Agent>,
}

impl ApiHandler {
    /// A handler answering for `agent`.
    pub fn new(agent: Arc<Agent>) -> Self {
        Self { agent }
    }

    async fn route(&self, request: Request) -> Response {
        let query = |name: &str| request.query.get(name).map(String::as_str);
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/v1/status") => reply(
                self.agent
                    .status(query("primary"), query("secondary"))
                    .await,
            ),
            ("GET", "/v1/nodes") => Response::json(200, &self.agent.nodes().await),
            ("GET", "/v1/config") => {
                let (Some(primary), Some(secondary)) = (query("primary"), query("secondary"))
                else {
                    return bad_request("config needs `primary` and `secondary`");
                };
                reply(
                    self.agent
                        .config_get(primary, secondary, query("key"))
                        .await,
                )
            }
            ("GET", "/v1/exists") => {
                let Some(volume) = query("volume") else {
                    return bad_request("exists needs `volume`");
                };
                reply(self.agent.exists(volume, query("secondary")))
            }
            ("POST", "/v1/op") => {
                let mut op: OpRequest = match request.json() {
                    Ok(op) => op,
                    Err(response) => return response,
                };
                op.timeout_ms = op.timeout_ms.min(MAX_WAIT_MS);
                reply(self.agent.op(op).await)
            }
            ("POST", "/v1/nodes/forget") => {
                let mut forget: ForgetRequest = match request.json() {
                    Ok(forget) => forget,
                    Err(response) => return response,
                };
                forget.timeout_ms = forget.timeout_ms.min(MAX_WAIT_MS);
                reply(self.agent.forget(forget).await)
            }
            ("GET", "/v1/inspect/members") => {
                Response::json(200, &self.agent.inspect_members().await)
            }
            ("GET", "/v1/inspect/sessions") => reply(
                self.agent
                    .inspect_sessions(query("primary"), query("secondary"))
                    .await,
            ),
            ("GET", "/v1/inspect/keys") => {
                let Some(node) = query("node") else {
                    return bad_request("inspect keys needs `node`");
                };
                reply(self.agent.inspect_keys(node, query("prefix")).await)
            }
            ("GET", "/v1/inspect/explain") => {
                let (Some(primary), Some(secondary)) = (query("primary"), query("secondary"))
                else {
                    return bad_request("inspect explain needs `primary` and `secondary`");
                };
                reply(
                    self.agent
                        .inspect_explain(primary, secondary, query("node"))
                        .await,
                )
            }
            ("GET", "/v1/inspect/diff") => {
                let (Some(a), Some(b)) = (query("a"), query("b")) else {
                    return bad_request("inspect diff needs `a` and `b`");
                };
                reply(self.agent.inspect_diff(a, b).await)
            }
            (
                _,
                "/v1/inspect/members"
                | "/v1/inspect/sessions"
                | "/v1/inspect/keys"
                | "/v1/inspect/explain"
                | "/v1/inspect/diff",
            ) => error(
                405,
                None,
                format!("method {} not allowed on {}", request.method, request.path),
            ),
            (
                _,
                "/v1/status" | "/v1/nodes" | "/v1/config" | "/v1/exists" | "/v1/op"
                | "/v1/nodes/forget",
            ) => error(
                405,
                None,
                format!("method {} not allowed on {}", request.method, request.path),
            ),
            _ => error(404, None, format!("no such endpoint: {}", request.path)),
        }
    }
}

impl Handler for ApiHandler {
    fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = Response> + Send + '_>> {
        Box::pin(self.route(request))
    }
}

fn error(status: u16, session: Option<String>, message: String) -> Response {
    Response::json(
        status,
        &ErrorBody {
            ok: false,
            session,
            message,
        },
    )
}

fn bad_request(message: &str) -> Response {
    error(400, None, message.to_string())
}

fn reply<T: Serialize>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(value) => Response::json(200, &value),
        Err(ApiError::BadRequest(message)) => error(400, None, message),
        Err(ApiError::Refused { session, message }) => error(409, session, message),
    }
}
