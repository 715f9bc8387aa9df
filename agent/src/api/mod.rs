//! The local API: its routes ([`router`]: HTTP requests to [`Agent`] calls, the JSON
//! of `georep_api`) and serving them on the Unix socket ([`serve`]).

pub mod error;
pub mod metrics;
pub mod serve;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use georep_api::ErrorCode;
use georep_api::types::{ForgetRequest, OpRequest, WebhookRequest, WebhookTestRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::agent::{Agent, ApiError};
use serve::error_response;

/// Longest wait a client may ask for (10 minutes).
const MAX_WAIT_MS: u64 = 600_000;

/// Every query parameter a route reads; each route checks the ones it needs.
#[derive(Debug, Default, serde::Deserialize)]
struct Params {
    primary: Option<String>,
    secondary: Option<String>,
    key: Option<String>,
    volume: Option<String>,
    node: Option<String>,
    prefix: Option<String>,
    a: Option<String>,
    b: Option<String>,
    since: Option<String>,
    types: Option<String>,
    wait_ms: Option<u64>,
    limit: Option<usize>,
}

type Agnt = State<Arc<Agent>>;
type Q = Result<Query<Params>, QueryRejection>;

/// The routes of the local API, answering for `agent`.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/nodes", get(nodes))
        .route("/v1/config", get(config))
        .route("/v1/exists", get(exists))
        .route("/v1/gluster-hook", post(gluster_hook))
        .route("/v1/op", post(op))
        .route("/v1/nodes/forget", post(forget))
        .route("/v1/inspect/members", get(members))
        .route("/v1/inspect/sessions", get(sessions))
        .route("/v1/inspect/keys", get(keys))
        .route("/v1/inspect/explain", get(explain))
        .route("/v1/inspect/diff", get(diff))
        .route("/v1/events", get(events))
        .route("/v1/webhooks", get(webhook_list).post(webhook_write))
        .route("/v1/webhooks/test", post(webhook_test))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(agent)
}

async fn status(State(agent): Agnt, q: Q) -> Result<Response, ApiError> {
    let q = params(q)?;
    reply(
        agent
            .status(q.primary.as_deref(), q.secondary.as_deref())
            .await,
    )
}

async fn nodes(State(agent): Agnt) -> Result<Response, ApiError> {
    Ok(ok(&agent.nodes().await))
}

async fn config(State(agent): Agnt, q: Q) -> Result<Response, ApiError> {
    let q = params(q)?;
    let (Some(primary), Some(secondary)) = (&q.primary, &q.secondary) else {
        return Err(ApiError::bad_request(
            "config needs `primary` and `secondary`",
        ));
    };
    reply(agent.config_get(primary, secondary, q.key.as_deref()).await)
}

async fn exists(State(agent): Agnt, q: Q) -> Result<Response, ApiError> {
    let q = params(q)?;
    let Some(volume) = &q.volume else {
        return Err(ApiError::bad_request("exists needs `volume`"));
    };
    reply(agent.exists(volume, q.secondary.as_deref()))
}

async fn gluster_hook(State(agent): Agnt, body: Bytes) -> Result<Response, ApiError> {
    let request: georep_api::types::GlusterHookRequest = json(&body)?;
    reply(agent.gluster_hook(&request))
}

async fn op(State(agent): Agnt, body: Bytes) -> Result<Response, ApiError> {
    let mut op: OpRequest = json(&body)?;
    op.timeout_ms = op.timeout_ms.min(MAX_WAIT_MS);
    reply(agent.op(op).await)
}

async fn forget(State(agent): Agnt, body: Bytes) -> Result<Response, ApiError> {
    let mut forget: ForgetRequest = json(&body)?;
    forget.timeout_ms = forget.timeout_ms.min(MAX_WAIT_MS);
    reply(agent.forget(forget).await)
}

async fn webhook_list(State(agent): Agnt) -> Result<Response, ApiError> {
    Ok(ok(&agent.webhook_list().await))
}

async fn webhook_write(State(agent): Agnt, body: Bytes) -> Result<Response, ApiError> {
    let mut request: WebhookRequest = json(&body)?;
    request.timeout_ms = request.timeout_ms.min(MAX_WAIT_MS);
    reply(agent.webhook_write(request).await)
}

async fn webhook_test(State(agent): Agnt, body: Bytes) -> Result<Response, ApiError> {
    let request: WebhookTestRequest = json(&body)?;
    reply(agent.webhook_test(request).await)
}

async fn events(State(agent): Agnt, q: Q) -> Result<Response, ApiError> {
    let q = params(q)?;
    let session = match (q.primary, q.secondary) {
        (Some(p), Some(s)) => Some((p, s)),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "events filters a session by both `primary` and `secondary`",
            ));
        }
    };
    let types: Vec<String> = q
        .types
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    reply(
        agent
            .events(
                q.since.as_deref(),
                types,
                session,
                q.node,
                q.wait_ms.unwrap_or(0).min(MAX_EVENTS_WAIT_MS),
                q.limit.unwrap_or(1000).clamp(1, 10_000),
            )
            .await,
    )
}

/// Longest a reader of the event stream is held waiting for new events (long poll).
const MAX_EVENTS_WAIT_MS: u64 = 25_000;

async fn members(State(agent): Agnt) -> Result<Response, ApiError> {
    Ok(ok(&agent.inspect_members().await))
}

async fn sessions(State(agent): Agnt, q: Q) -> Result<Response, ApiError> {
    let q = params(q)?;
    reply(
        agent
            .inspect_sessions(q.primary.as_deref(), q.secondary.as_deref())
            .await,
    )
}

async fn keys(State(agent): Agnt, q: Q) -> Result<Response, ApiError> {
    let q = params(q)?;
    let Some(node) = &q.node else {
        return Err(ApiError::bad_request("inspect keys needs `node`"));
    };
    reply(agent.inspect_keys(node, q.prefix.as_deref()).await)
}

async fn explain(State(agent): Agnt, q: Q) -> Result<Response, ApiError> {
    let q = params(q)?;
    let (Some(primary), Some(secondary)) = (&q.primary, &q.secondary) else {
        return Err(ApiError::bad_request(
            "inspect explain needs `primary` and `secondary`",
        ));
    };
    reply(
        agent
            .inspect_explain(primary, secondary, q.node.as_deref())
            .await,
    )
}

async fn diff(State(agent): Agnt, q: Q) -> Result<Response, ApiError> {
    let q = params(q)?;
    let (Some(a), Some(b)) = (&q.a, &q.b) else {
        return Err(ApiError::bad_request("inspect diff needs `a` and `b`"));
    };
    reply(agent.inspect_diff(a, b).await)
}

async fn not_found(uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        None,
        format!("no such endpoint: {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        None,
        format!("method {method} not allowed on {}", uri.path()),
    )
}

fn params(q: Q) -> Result<Params, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
}

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
}

fn ok<T: Serialize>(value: &T) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

fn reply<T: Serialize>(result: Result<T, ApiError>) -> Result<Response, ApiError> {
    result.map(|value| ok(&value))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadRequest { code, message } => {
                error_response(StatusCode::BAD_REQUEST, code, None, message)
            }
            ApiError::Refused {
                code,
                session,
                message,
            } => error_response(StatusCode::CONFLICT, code, session, message),
        }
    }
}
