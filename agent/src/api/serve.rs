//! Serving the local API on its Unix socket: the accept loop with its limits (hyper
//! for HTTP/1.1, the routes an axum [`Router`]), and binding the socket.
//!
//! One request per connection. Limits, so a slow or hostile local client cannot hold
//! the agent: the request head must arrive within [`Limits::request_timeout`] (hyper
//! closes the connection otherwise) and be at most [`Limits::header_bytes`] (431);
//! the body must arrive within the same time (408) and be at most
//! [`Limits::body_bytes`] (413). At most [`Limits::max_connections`] connections
//! are open; a new one closes the oldest that has not sent its request yet, so idle
//! connections never lock out a request, and gets 503 when every one is busy (at most
//! as many 503s in flight as connections; beyond, a connection is closed unanswered).
//! Errors the agent writes are [`ErrorBody`] JSON with a [`ErrorCode`]; a request
//! hyper cannot parse gets hyper's bare 400 or 431.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use georep_api::{ErrorBody, ErrorCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Largest accepted request head (request line and headers).
pub const MAX_REQUEST_HEADER_BYTES: usize = 16 * 1024;
/// Largest accepted request body.
pub const MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;
/// Time a client has to send its request head, and again its body. The CLI sends its
/// request at once; a connection that says nothing for this long is idle.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections open at once (see the module documentation for what happens beyond).
pub const MAX_CONNECTIONS: usize = 64;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not
/// spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Server limits; [`Limits::default`] uses the `MAX_*`/`REQUEST_TIMEOUT` constants.
/// Tests shrink them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (hyper's minimum is 8 KiB).
    pub header_bytes: usize,
    /// Largest request body.
    pub body_bytes: usize,
    /// Time to receive the request head, and again its body.
    pub request_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_bytes: MAX_REQUEST_HEADER_BYTES,
            body_bytes: MAX_REQUEST_BODY_BYTES,
            request_timeout: REQUEST_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// An error answer: `status` with an [`ErrorBody`].
pub fn error_response(
    status: StatusCode,
    code: ErrorCode,
    session: Option<String>,
    message: impl Into<String>,
) -> Response {
    let body = ErrorBody {
        ok: false,
        code,
        session,
        message: message.into(),
    };
    (status, axum::Json(body)).into_response()
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then drops in-flight
/// connections (their handlers included) and returns once every connection task has
/// ended.
pub async fn serve(
    listener: UnixListener,
    router: Router,
    shutdown: CancellationToken,
    limits: Limits,
) {
    let idle = Arc::new(Mutex::new(IdleConnections::default()));
    let mut tasks = JoinSet::new();
    // 503 answers, apart from the served connections and as bounded.
    let mut refusals = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        while refusals.try_join_next().is_some() {}
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "local API: accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            },
        };
        if tasks.len() >= limits.max_connections.max(1) {
            if lock(&idle).evict_oldest() {
                // Its task ends at once; reap it so the count stays exact.
                let _ = tasks.join_next().await;
            } else {
                // Beyond as many 503s in flight as connections, the connection is just
                // closed: a flood of connects must not grow the task set.
                if refusals.len() < limits.max_connections.max(1) {
                    refusals.spawn(answer_busy(stream, tasks.len(), limits));
                }
                continue;
            }
        }
        let router = router.clone();
        let shutdown = shutdown.clone();
        let (id, evict) = lock(&idle).add();
        let idle = Arc::clone(&idle);
        tasks.spawn(async move {
            let received = {
                let idle = Arc::clone(&idle);
                move || lock(&idle).busy(id)
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = evict.cancelled() => {}
                _ = serve_connection(stream, router, limits, received) => {}
            }
            lock(&idle).busy(id);
        });
    }
    refusals.abort_all();
    while refusals.join_next().await.is_some() {}
    while tasks.join_next().await.is_some() {}
}

/// One connection: one request through `router`. `received` is called once the
/// request head has arrived (from then on the connection is not idle).
async fn serve_connection(
    stream: UnixStream,
    router: Router,
    limits: Limits,
    received: impl Fn() + Clone + Send + Sync + 'static,
) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        received();
        let router = router.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = Limited::new(body, limits.body_bytes).collect();
            let bytes = match tokio::time::timeout(limits.request_timeout, body).await {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return Ok::<_, Infallible>(error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        ErrorCode::PayloadTooLarge,
                        None,
                        format!("request body exceeds {} bytes", limits.body_bytes),
                    ));
                }
                Ok(Err(e)) => {
                    return Ok(error_response(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::BadRequest,
                        None,
                        format!("cannot read the request body: {e}"),
                    ));
                }
                Err(_) => {
                    return Ok(error_response(
                        StatusCode::REQUEST_TIMEOUT,
                        ErrorCode::RequestTimeout,
                        None,
                        format!(
                            "request body not received within {} ms",
                            limits.request_timeout.as_millis()
                        ),
                    ));
                }
            };
            let request = Request::from_parts(parts, Body::from(bytes));
            Ok(router.oneshot(request).await.into_response())
        }
    });
    let connection = http1()
        .header_read_timeout(limits.request_timeout)
        .max_buf_size(limits.header_bytes.max(8192))
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "local API: connection ended with an error");
    }
}

/// Answers 503 on a connection when every slot is serving a request.
async fn answer_busy(stream: UnixStream, serving: usize, limits: Limits) {
    let service = hyper::service::service_fn(move |_request: Request<Incoming>| async move {
        Ok::<_, Infallible>(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Busy,
            None,
            format!("georepd is serving {serving} requests already; retry in a moment"),
        ))
    });
    let connection = http1()
        .header_read_timeout(limits.request_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(limits.request_timeout * 2, connection).await;
}

fn http1() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(false);
    builder
}

/// Connections that have not yet sent a request head, oldest first, each with the
/// token that closes it.
#[derive(Default)]
struct IdleConnections {
    next_id: u64,
    waiting: BTreeMap<u64, CancellationToken>,
}

impl IdleConnections {
    fn add(&mut self) -> (u64, CancellationToken) {
        let id = self.next_id;
        self.next_id += 1;
        let token = CancellationToken::new();
        self.waiting.insert(id, token.clone());
        (id, token)
    }

    /// The connection sent its request (or ended): it can no longer be evicted.
    fn busy(&mut self, id: u64) {
        self.waiting.remove(&id);
    }

    /// Closes the oldest idle connection; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        match self.waiting.pop_first() {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

fn lock(idle: &Mutex<IdleConnections>) -> MutexGuard<'_, IdleConnections> {
    // The map stays consistent even if a holder panicked mid-way.
    idle.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Binds the local API socket at `path` with mode 0600, creating its parent
/// directory (mode 0700) if needed. A leftover socket file is replaced only
/// if nothing answers on it; a live one gives `AddrInUse` ("another georepd
/// is serving ..."), and a non-socket file at `path` is never removed. Must
/// be called within a Tokio runtime.
pub fn bind_socket(path: &Path) -> io::Result<UnixListener> {
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another georepd is serving {}", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(with_path(e)),
                }
            }
            Err(e) => return Err(with_path(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(with_path(e)),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", parent.display())))?;
    }
    let listener = UnixListener::bind(path).map_err(with_path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(with_path)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use axum::routing::any;
    use georep_api::{percent_encode, request};
    use serde_json::{Value, json};
    use std::path::PathBuf;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const T: Duration = Duration::from_secs(5);

    async fn echo(
        method: axum::http::Method,
        uri: axum::http::Uri,
        query: axum::extract::Query<BTreeMap<String, String>>,
        body: axum::body::Bytes,
    ) -> Response {
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::BadRequest,
                        None,
                        format!("request body is not valid JSON: {e}"),
                    );
                }
            }
        };
        axum::Json(json!({
            "ok": true,
            "method": method.as_str(),
            "path": uri.path(),
            "query": query.0,
            "body": body,
        }))
        .into_response()
    }

    struct Server {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(T, self.task)
                .await
                .expect("serve returns after shutdown")
                .unwrap();
        }
    }

    fn start(limits: Limits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run").join("georepd.sock");
        let listener = bind_socket(&socket).unwrap();
        let shutdown = CancellationToken::new();
        let router = Router::new()
            .route("/", any(echo))
            .route("/{*rest}", any(echo));
        let task = tokio::spawn(serve(listener, router, shutdown.clone(), limits));
        Server {
            _dir: dir,
            socket,
            shutdown,
            task,
        }
    }

    /// Sends raw bytes and returns everything the server answers.
    async fn raw(socket: &Path, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(socket).await.unwrap();
        let _ = s.write_all(bytes).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn get_and_post_json_roundtrip() {
        let srv = start(Limits::default());
        let (status, v) = request(&srv.socket, "GET", "/v1/status", None, T)
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/v1/status");
        assert_eq!(v["body"], Value::Null);

        let sent =
            json!({"session": "gv0_h_gv1", "keys": {"sync_jobs": 3}, "list": [1, "two", null]});
        let (status, v) = request(&srv.socket, "POST", "/v1/sessions", Some(&sent), T)
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(v["method"], "POST");
        assert_eq!(v["body"], sent);
        srv.stop().await;
    }

    #[tokio::test]
    async fn query_is_percent_decoded() {
        let srv = start(Limits::default());
        let target = format!(
            "/v1/x?name={}&plus=a+b&empty&flag=",
            percent_encode("gv0 h::gv1/é&=")
        );
        let (_, v) = request(&srv.socket, "GET", &target, None, T).await.unwrap();
        assert_eq!(
            v["query"],
            json!({"name": "gv0 h::gv1/é&=", "plus": "a b", "empty": "", "flag": ""})
        );
        srv.stop().await;
    }

    #[tokio::test]
    async fn oversize_body_gets_413_with_its_code() {
        let srv = start(Limits::default());
        let big = json!({ "blob": "x".repeat(MAX_REQUEST_BODY_BYTES) });
        let (status, v) = request(&srv.socket, "POST", "/v1/big", Some(&big), T)
            .await
            .unwrap();
        assert_eq!(status, 413);
        assert_eq!(v["ok"], false);
        assert_eq!(v["code"], "payload_too_large");
        assert!(v["message"].as_str().unwrap().contains("exceeds"), "{v}");
        srv.stop().await;
    }

    #[tokio::test]
    async fn oversize_header_gets_431() {
        let srv = start(Limits::default());
        let mut req = b"GET / HTTP/1.1\r\nX-Fill: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', MAX_REQUEST_HEADER_BYTES));
        req.extend_from_slice(b"\r\n\r\n");
        let resp = raw(&srv.socket, &req).await;
        assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
        srv.stop().await;
    }

    #[tokio::test]
    async fn garbage_gets_400_and_the_server_carries_on() {
        let srv = start(Limits::default());
        for garbage in [
            &b"\x16\x03\x01garbage\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"GET / HTTP/1.1\r\nno-colon\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
            b"POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            let resp = raw(&srv.socket, garbage).await;
            assert!(resp.starts_with("HTTP/1.1 400 "), "{garbage:?} -> {resp}");
        }
        // A well-formed request with a body that is not JSON: our 400, with a code.
        let resp = raw(
            &srv.socket,
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n{bad}",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
        let body = resp.split("\r\n\r\n").nth(1).unwrap();
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], "bad_request");
        let (status, _) = request(&srv.socket, "GET", "/", None, T).await.unwrap();
        assert_eq!(status, 200);
        srv.stop().await;
    }

    #[tokio::test]
    async fn a_slow_head_is_closed_and_a_slow_body_gets_408_without_blocking_others() {
        let srv = start(Limits {
            request_timeout: Duration::from_millis(300),
            max_connections: 3,
            ..Limits::default()
        });
        let mut slow_head = UnixStream::connect(&srv.socket).await.unwrap();
        slow_head.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut slow_body = UnixStream::connect(&srv.socket).await.unwrap();
        slow_body
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
            .await
            .unwrap();
        let (status, _) = request(&srv.socket, "GET", "/", None, T).await.unwrap();
        assert_eq!(status, 200);
        let mut out = Vec::new();
        tokio::time::timeout(T, slow_head.read_to_end(&mut out))
            .await
            .expect("a silent head is closed in time")
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(T, slow_body.read_to_end(&mut out))
            .await
            .expect("a silent body is answered in time")
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        assert!(out.contains("\"code\":\"request_timeout\""), "{out}");
        srv.stop().await;
    }

    #[tokio::test]
    async fn idle_connections_never_lock_out_a_request() {
        let srv = start(Limits {
            max_connections: 3,
            ..Limits::default()
        });
        let mut idle = Vec::new();
        for _ in 0..10 {
            let mut stream = UnixStream::connect(&srv.socket).await.unwrap();
            stream.write_all(b"GET / HT").await.unwrap();
            idle.push(stream);
        }
        // Well within REQUEST_TIMEOUT: the idle ones are evicted, not waited out.
        let (status, _) = request(&srv.socket, "GET", "/", None, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let mut out = Vec::new();
        let n = tokio::time::timeout(T, idle[0].read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(
            n, 0,
            "the oldest idle connection was closed without an answer"
        );
        srv.stop().await;
    }

    #[tokio::test]
    async fn every_slot_busy_gets_503_with_its_code() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("georepd.sock");
        let listener = bind_socket(&socket).unwrap();
        let shutdown = CancellationToken::new();
        let release = Arc::new(tokio::sync::Notify::new());
        let held = release.clone();
        let router = Router::new().route(
            "/hold",
            any(move || {
                let held = held.clone();
                async move {
                    held.notified().await;
                    "done"
                }
            }),
        );
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let task = tokio::spawn(serve(listener, router, shutdown.clone(), limits));
        let holder = {
            let socket = socket.clone();
            tokio::spawn(async move { raw(&socket, b"GET /hold HTTP/1.1\r\n\r\n").await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, v) = request(&socket, "GET", "/hold", None, T).await.unwrap();
        assert_eq!(status, 503);
        assert_eq!(v["code"], "busy");
        release.notify_one();
        assert!(holder.await.unwrap().starts_with("HTTP/1.1 200 "));
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_ends_idle_connections() {
        let srv = start(Limits::default());
        let mut idle = UnixStream::connect(&srv.socket).await.unwrap();
        idle.write_all(b"GET / HT").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        srv.stop().await;
        let mut out = Vec::new();
        let n = tokio::time::timeout(T, idle.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn socket_mode_is_0600() {
        let srv = start(Limits::default());
        let meta = std::fs::metadata(&srv.socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let parent = std::fs::metadata(srv.socket.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o700);
        srv.stop().await;
    }

    #[tokio::test]
    async fn second_bind_on_live_socket_is_refused() {
        let srv = start(Limits::default());
        let err = bind_socket(&srv.socket).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(
            err.to_string().contains("another georepd is serving"),
            "{err}"
        );
        // The live server is undisturbed.
        let (status, _) = request(&srv.socket, "GET", "/", None, T).await.unwrap();
        assert_eq!(status, 200);
        srv.stop().await;
    }

    #[tokio::test]
    async fn stale_socket_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("georepd.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        assert!(socket.exists());
        let listener = bind_socket(&socket).unwrap();
        let shutdown = CancellationToken::new();
        let router = Router::new().route("/", any(echo));
        let task = tokio::spawn(serve(listener, router, shutdown.clone(), Limits::default()));
        let (status, _) = request(&socket, "GET", "/", None, T).await.unwrap();
        assert_eq!(status, 200);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn non_socket_file_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("georepd.sock");
        std::fs::write(&path, b"precious").unwrap();
        let err = bind_socket(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn expect_continue_is_honoured() {
        let srv = start(Limits::default());
        let mut s = UnixStream::connect(&srv.socket).await.unwrap();
        s.write_all(b"POST /c HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .await
            .unwrap();
        let mut interim = [0u8; 25];
        s.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(b"{}").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        srv.stop().await;
    }
}
