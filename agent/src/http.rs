//! A minimal HTTP/1.1 for the local JSON API on a Unix socket: the server
//! ([`serve`], [`bind_socket`]) and the client the CLI uses ([`request`]).
//!
//! Deliberately small: one request per connection (`Connection: close`),
//! `Content-Length` bodies only, hard caps on header size, body size,
//! per-request time and concurrent connections, so a slow or hostile local
//! client cannot hold the agent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Largest accepted request header section (request line and headers).
pub const MAX_REQUEST_HEADER_BYTES: usize = 16 * 1024;
/// Largest accepted request body.
pub const MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;
/// Largest response body the client accepts.
pub const MAX_RESPONSE_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Time a client has to send its whole request (and, separately, to take
/// the whole response). The CLI sends its request at once; a connection that
/// says nothing for this long is idle and is closed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections open at once. When all are taken, a new connection closes the
/// oldest one that has not finished sending its request (idle connections never
/// lock out requests); when every one is being served, the new one gets 503.
pub const MAX_CONNECTIONS: usize = 64;

/// Largest response header section the client accepts.
const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method as sent (`GET`, `POST`, ...).
    pub method: String,
    /// Path of the request target, *not* percent-decoded (so an encoded `/`
    /// stays distinguishable); decode segments with [`percent_decode`].
    pub path: String,
    /// Query parameters, percent-decoded (`+` is a space); a repeated key
    /// keeps its last value, a key without `=` has an empty value.
    pub query: BTreeMap<String, String>,
    /// Body (empty without `Content-Length`).
    pub body: Vec<u8>,
}

impl Request {
    /// Parses the body as JSON; on failure, the 400 response to send.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Response> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Response::error(400, format!("request body is not valid JSON: {e}")))
    }
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type` header value.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response; a value that cannot be serialized becomes a 500
    /// error response saying so.
    pub fn json(status: u16, value: &impl Serialize) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response {
                status,
                content_type: "application/json".to_owned(),
                body,
            },
            Err(e) => Response::error(500, format!("cannot encode response: {e}")),
        }
    }

    /// The API's error shape: `{"ok":false,"message":...}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        let message: String = message.into();
        Response::json(
            status,
            &serde_json::json!({ "ok": false, "message": message }),
        )
    }
}

/// Answers requests. Implemented for any `Fn(Request) -> impl Future<Output
/// = Response>`; implement it directly for a router holding state.
pub trait Handler: Send + Sync + 'static {
    /// Produces the response to `req`. The future is dropped if the server
    /// shuts down, so it must be cancel-safe.
    fn handle(&self, req: Request) -> Pin<Box<dyn Future<Output = Response> + Send + '_>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    fn handle(&self, req: Request) -> Pin<Box<dyn Future<Output = Response> + Send + '_>> {
        Box::pin(self(req))
    }
}

/// Server limits; [`Limits::default`] uses the `MAX_*`/`REQUEST_TIMEOUT`
/// constants. Tests shrink them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request header section.
    pub header_bytes: usize,
    /// Largest request body.
    pub body_bytes: usize,
    /// Time to receive a request, and separately to send its response.
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

/// Serves `listener` with the default [`Limits`] until `shutdown` is
/// cancelled; see [`serve_with`].
pub async fn serve(listener: UnixListener, handler: Arc<dyn Handler>, shutdown: CancellationToken) {
    serve_with(listener, handler, shutdown, Limits::default()).await;
}

/// Serves `listener` until `shutdown` is cancelled, then drops in-flight
/// connections (their handler futures included) and returns once every
/// connection task has ended.
pub async fn serve_with(
    listener: UnixListener,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
    limits: Limits,
) {
    let idle = Arc::new(std::sync::Mutex::new(IdleConnections::default()));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let mut stream = tokio::select! {
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
            let evicted = lock_idle(&idle).evict_oldest();
            if evicted {
                // Its task ends at once; reap it so the count stays exact.
                let _ = tasks.join_next().await;
            } else {
                let busy = Response::error(
                    503,
                    format!(
                        "georepd is serving {} requests already; retry in a moment",
                        tasks.len()
                    ),
                );
                let bytes = encode_response(&busy);
                let _ =
                    tokio::time::timeout(limits.request_timeout, stream.write_all(&bytes)).await;
                continue;
            }
        }
        let handler = Arc::clone(&handler);
        let shutdown = shutdown.clone();
        let (id, evict) = lock_idle(&idle).add();
        let idle = Arc::clone(&idle);
        tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = evict.cancelled() => {}
                _ = serve_connection(stream, handler.as_ref(), limits, || lock_idle(&idle).busy(id)) => {}
            }
            lock_idle(&idle).busy(id);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Connections that have not yet sent a whole request, oldest first, each with the
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

fn lock_idle(
    idle: &std::sync::Mutex<IdleConnections>,
) -> std::sync::MutexGuard<'_, IdleConnections> {
    // The map stays consistent even if a holder panicked mid-way.
    idle.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn serve_connection(
    mut stream: UnixStream,
    handler: &dyn Handler,
    limits: Limits,
    request_read: impl FnOnce(),
) {
    let read =
        tokio::time::timeout(limits.request_timeout, read_request(&mut stream, &limits)).await;
    request_read();
    let response = match read {
        Err(_) => Response::error(
            408,
            format!(
                "request not received within {} ms",
                limits.request_timeout.as_millis()
            ),
        ),
        // The peer connected and left without a word (e.g. a liveness probe).
        Ok(Ok(None)) => return,
        Ok(Ok(Some(req))) => handler.handle(req).await,
        Ok(Err(HttpError { status, message })) => Response::error(status, message),
    };
    let bytes = encode_response(&response);
    let sent = tokio::time::timeout(limits.request_timeout, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "local API: client left before the response"),
        Err(_) => tracing::debug!("local API: client did not take the response in time"),
    }
}

/// A request that cannot be served, with the status to answer.
struct HttpError {
    status: u16,
    message: String,
}

fn bad(status: u16, message: impl Into<String>) -> HttpError {
    HttpError {
        status,
        message: message.into(),
    }
}

/// Reads one request. `Ok(None)`: the peer closed without sending anything.
async fn read_request(
    stream: &mut UnixStream,
    limits: &Limits,
) -> Result<Option<Request>, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let header_end = loop {
        if let Some(end) = find_header_end(&buf) {
            break end;
        }
        if buf.len() >= limits.header_bytes {
            return Err(bad(
                431,
                format!(
                    "request header section exceeds {} bytes",
                    limits.header_bytes
                ),
            ));
        }
        let room = limits.header_bytes - buf.len();
        let n = read_some(stream, &mut buf, room.min(8192))
            .await
            .map_err(|e| bad(400, format!("cannot read request: {e}")))?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(bad(
                400,
                "connection closed in the middle of the request header",
            ));
        }
    };
    if header_end > limits.header_bytes {
        return Err(bad(
            431,
            format!(
                "request header section exceeds {} bytes",
                limits.header_bytes
            ),
        ));
    }
    let head = std::str::from_utf8(&buf[..header_end - 4])
        .map_err(|_| bad(400, "request header is not valid UTF-8"))?;
    let parsed = parse_head(head, limits)?;

    if parsed.expect_continue && parsed.content_length > buf.len() - header_end {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|e| bad(400, format!("cannot write 100 Continue: {e}")))?;
    }
    let mut body = buf.split_off(header_end);
    body.truncate(parsed.content_length);
    while body.len() < parsed.content_length {
        let want = parsed.content_length - body.len();
        let n = read_some(stream, &mut body, want.min(64 * 1024))
            .await
            .map_err(|e| bad(400, format!("cannot read request body: {e}")))?;
        if n == 0 {
            return Err(bad(
                400,
                format!(
                    "connection closed after {} of {} body bytes",
                    body.len(),
                    parsed.content_length
                ),
            ));
        }
    }
    Ok(Some(Request {
        method: parsed.method,
        path: parsed.path,
        query: parsed.query,
        body,
    }))
}

/// Appends at most `max` bytes read from `stream` to `buf`.
async fn read_some<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    let start = buf.len();
    buf.resize(start + max, 0);
    let result = stream.read(&mut buf[start..]).await;
    let n = *result.as_ref().unwrap_or(&0);
    buf.truncate(start + n);
    result
}

/// Offset just past the blank line ending the header section.
fn find_header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

struct Head {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_length: usize,
    expect_continue: bool,
}

fn parse_head(head: &str, limits: &Limits) -> Result<Head, HttpError> {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let malformed = || {
        bad(
            400,
            format!(
                "malformed request line {:?}",
                request_line.chars().take(100).collect::<String>()
            ),
        )
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(malformed());
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(malformed());
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(malformed());
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, parse_query(q)?),
        None => (target, BTreeMap::new()),
    };

    let mut content_length: Option<usize> = None;
    let mut expect_continue = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(400, format!("malformed header line {line:?}")));
        };
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad(400, format!("malformed header name {name:?}")));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(400, format!("invalid Content-Length {value:?}")));
            }
            // Too many digits to fit is certainly too large.
            let n = value.parse::<usize>().unwrap_or(usize::MAX);
            if content_length.is_some_and(|old| old != n) {
                return Err(bad(400, "conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad(
                400,
                "Transfer-Encoding is not supported; send a Content-Length body",
            ));
        } else if name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case("100-continue")
        {
            expect_continue = true;
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > limits.body_bytes {
        return Err(bad(
            413,
            format!(
                "request body of {content_length} bytes exceeds the {}-byte limit",
                limits.body_bytes
            ),
        ));
    }
    Ok(Head {
        method: method.to_owned(),
        path: path.to_owned(),
        query,
        content_length,
        expect_continue,
    })
}

fn parse_query(query: &str) -> Result<BTreeMap<String, String>, HttpError> {
    let mut out = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode(&s.replace('+', " "))
                .ok_or_else(|| bad(400, format!("invalid percent-encoding in query {pair:?}")))
        };
        out.insert(decode(k)?, decode(v)?);
    }
    Ok(out)
}

/// Decodes `%XX` escapes; `None` if an escape is malformed or the result is
/// not UTF-8. `+` is left as is.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for
/// building paths and query strings.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn encode_response(response: &Response) -> Vec<u8> {
    // A content type with a line break would split the header.
    let content_type = if response.content_type.bytes().any(|b| b.is_ascii_control()) {
        "application/octet-stream"
    } else {
        response.content_type.as_str()
    };
    let status = if (100..=999).contains(&response.status) {
        response.status
    } else {
        500
    };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason_phrase(status),
        response.body.len()
    )
    .into_bytes();
    out.extend_from_slice(&response.body);
    out
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

/// Why a [`request`] got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent listens on the socket (missing socket file or connection
    /// refused).
    #[error("no georepd is running at {} ({reason}); start it or pass the right --api-socket", socket.display())]
    NoAgent {
        /// The socket tried.
        socket: PathBuf,
        /// The connect error.
        reason: String,
    },
    /// Another I/O error (e.g. permission denied on the socket, or the
    /// connection was reset).
    #[error("{}: {source}", socket.display())]
    Io {
        /// The socket tried.
        socket: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The request could not be formed or the response is not valid
    /// HTTP/JSON.
    #[error("protocol error talking to georepd: {0}")]
    Protocol(String),
    /// No complete response within the timeout.
    #[error("georepd at {} did not answer within {} ms", socket.display(), after.as_millis())]
    Timeout {
        /// The socket tried.
        socket: PathBuf,
        /// The timeout that expired.
        after: Duration,
    },
}

/// Sends one request to the agent at `socket` and returns the status and
/// JSON body (`Null` when the body is empty). The whole exchange, connect
/// included, is bounded by `timeout`.
pub async fn request(
    socket: &Path,
    method: &str,
    path_and_query: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, serde_json::Value), ClientError> {
    match tokio::time::timeout(
        timeout,
        exchange(
            socket,
            method,
            path_and_query,
            body,
            MAX_RESPONSE_BODY_BYTES,
        ),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            socket: socket.to_path_buf(),
            after: timeout,
        }),
    }
}

async fn exchange(
    socket: &Path,
    method: &str,
    path_and_query: &str,
    body: Option<&serde_json::Value>,
    max_body: usize,
) -> Result<(u16, serde_json::Value), ClientError> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ClientError::Protocol(format!("invalid method {method:?}")));
    }
    if !path_and_query.starts_with('/')
        || path_and_query
            .bytes()
            .any(|b| b == b' ' || b.is_ascii_control())
    {
        return Err(ClientError::Protocol(format!(
            "invalid request target {path_and_query:?}"
        )));
    }
    let io_err = |source: io::Error| ClientError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    let mut stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NoAgent {
                socket: socket.to_path_buf(),
                reason: e.to_string(),
            });
        }
        Err(e) => return Err(io_err(e)),
    };

    let payload = match body {
        Some(v) => serde_json::to_vec(v)
            .map_err(|e| ClientError::Protocol(format!("cannot encode request: {e}")))?,
        None => Vec::new(),
    };
    let mut out = format!("{method} {path_and_query} HTTP/1.1\r\nHost: georepd\r\n");
    if body.is_some() {
        out.push_str("Content-Type: application/json\r\n");
    }
    let _ = write!(
        out,
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    );
    let mut out = out.into_bytes();
    out.extend_from_slice(&payload);
    // The server may answer (413, 400) and close before taking the whole
    // request; its answer is still readable, so a failed write is only
    // reported if no response follows.
    let write_error = stream.write_all(&out).await.err();

    match read_response(&mut stream, max_body).await {
        Ok(Some(resp)) => Ok(resp),
        Ok(None) => Err(match write_error {
            Some(e) => io_err(e),
            None => ClientError::Protocol("connection closed without a response".to_owned()),
        }),
        Err(e) => Err(match (write_error, e) {
            (Some(w), _) => io_err(w),
            (None, ReadError::Io(e)) => io_err(e),
            (None, ReadError::Protocol(m)) => ClientError::Protocol(m),
        }),
    }
}

enum ReadError {
    Io(io::Error),
    Protocol(String),
}

/// Reads one response; `Ok(None)` if the connection closed before any byte.
async fn read_response(
    stream: &mut UnixStream,
    max_body: usize,
) -> Result<Option<(u16, serde_json::Value)>, ReadError> {
    let protocol = |m: String| ReadError::Protocol(m);
    let mut buf = Vec::with_capacity(4096);
    let header_end = loop {
        if let Some(end) = find_header_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_RESPONSE_HEADER_BYTES {
            return Err(protocol(format!(
                "response header exceeds {MAX_RESPONSE_HEADER_BYTES} bytes"
            )));
        }
        let room = MAX_RESPONSE_HEADER_BYTES - buf.len();
        let n = read_some(stream, &mut buf, room.min(8192))
            .await
            .map_err(ReadError::Io)?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(protocol(
                "connection closed inside the response header".into(),
            ));
        }
    };
    let head = std::str::from_utf8(&buf[..header_end - 4])
        .map_err(|_| protocol("response header is not valid UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && code.len() == 3 => {
            code.parse::<u16>().ok()
        }
        _ => None,
    }
    .ok_or_else(|| protocol(format!("malformed status line {status_line:?}")))?;

    let mut content_length: Option<usize> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(protocol(format!("malformed response header {line:?}")));
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            let n = value
                .trim()
                .parse::<usize>()
                .map_err(|_| protocol(format!("invalid Content-Length {:?}", value.trim())))?;
            content_length = Some(n);
        }
    }
    if content_length.is_some_and(|n| n > max_body) {
        return Err(protocol(format!("response body exceeds {max_body} bytes")));
    }

    let mut body = buf.split_off(header_end);
    match content_length {
        Some(len) => {
            while body.len() < len {
                let want = len - body.len();
                let n = read_some(stream, &mut body, want.min(64 * 1024))
                    .await
                    .map_err(ReadError::Io)?;
                if n == 0 {
                    return Err(protocol(format!(
                        "response truncated after {} of {len} body bytes",
                        body.len()
                    )));
                }
            }
            body.truncate(len);
        }
        None => loop {
            if body.len() > max_body {
                return Err(protocol(format!("response body exceeds {max_body} bytes")));
            }
            let room = max_body + 1 - body.len();
            let n = read_some(stream, &mut body, room.min(64 * 1024))
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                break;
            }
        },
    }
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| protocol(format!("response body is not valid JSON: {e}")))?
    };
    Ok(Some((status, value)))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const T: Duration = Duration::from_secs(5);

    async fn echo(req: Request) -> Response {
        let body: Value = if req.body.is_empty() {
            Value::Null
        } else {
            match req.json() {
                Ok(v) => v,
                Err(resp) => return resp,
            }
        };
        Response::json(
            200,
            &json!({
                "ok": true,
                "method": req.method,
                "path": req.path,
                "query": req.query,
                "body": body,
            }),
        )
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
        let task = tokio::spawn(serve_with(
            listener,
            Arc::new(echo),
            shutdown.clone(),
            limits,
        ));
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
            "/v1/x%2Fy?name={}&plus=a+b&empty&flag=&dup=1&dup=2",
            percent_encode("gv0 h::gv1/é&=")
        );
        let (_, v) = request(&srv.socket, "GET", &target, None, T).await.unwrap();
        assert_eq!(v["path"], "/v1/x%2Fy");
        assert_eq!(
            v["query"],
            json!({"name": "gv0 h::gv1/é&=", "plus": "a b", "empty": "", "flag": "", "dup": "2"})
        );
        let resp = raw(&srv.socket, b"GET /x?a=%zz HTTP/1.1\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
        srv.stop().await;
    }

    #[tokio::test]
    async fn oversize_body_gets_413() {
        let srv = start(Limits::default());
        let big = json!({ "blob": "x".repeat(MAX_REQUEST_BODY_BYTES) });
        let (status, v) = request(&srv.socket, "POST", "/v1/big", Some(&big), T)
            .await
            .unwrap();
        assert_eq!(status, 413);
        assert_eq!(v["ok"], false);
        assert!(v["message"].as_str().unwrap().contains("exceeds"), "{v}");

        let resp = raw(
            &srv.socket,
            b"POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 413 "), "{resp}");
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
    async fn garbage_request_line_gets_400() {
        let srv = start(Limits::default());
        for garbage in [
            &b"\x16\x03\x01garbage\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET noslash HTTP/1.1\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"GET / HTTP/1.1\r\nno-colon\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n{bad}",
        ] {
            let resp = raw(&srv.socket, garbage).await;
            assert!(
                resp.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{garbage:?} -> {resp}"
            );
            let body = resp.split("\r\n\r\n").nth(1).unwrap();
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["ok"], false);
            assert!(v["message"].is_string());
        }
        srv.stop().await;
    }

    #[tokio::test]
    async fn slow_client_gets_408_and_does_not_block_others() {
        let srv = start(Limits {
            request_timeout: Duration::from_millis(300),
            max_connections: 2,
            ..Limits::default()
        });
        let mut slow = UnixStream::connect(&srv.socket).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (status, _) = request(&srv.socket, "GET", "/", None, T).await.unwrap();
        assert_eq!(status, 200);
        let mut out = Vec::new();
        tokio::time::timeout(T, slow.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
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
    async fn missing_socket_is_no_agent() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("georepd.sock");
        let err = request(&socket, "GET", "/", None, T).await.unwrap_err();
        assert!(matches!(err, ClientError::NoAgent { .. }), "{err:?}");
        assert!(err.to_string().contains("no georepd is running"), "{err}");

        // A socket file nobody listens on: refused, also NoAgent.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let err = request(&socket, "GET", "/", None, T).await.unwrap_err();
        assert!(matches!(err, ClientError::NoAgent { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn client_times_out_on_a_silent_server() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s");
        let _listener = UnixListener::bind(&socket).unwrap();
        let err = request(&socket, "GET", "/", None, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn client_rejects_malformed_responses() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s");
        let listener = UnixListener::bind(&socket).unwrap();
        let replies: [&[u8]; 3] = [
            b"NOPE\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{x}",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
        ];
        let server = tokio::spawn(async move {
            for reply in replies {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                s.write_all(reply).await.unwrap();
            }
        });
        for _ in 0..3 {
            let err = request(&socket, "GET", "/", None, T).await.unwrap_err();
            assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        }
        server.await.unwrap();
        let err = request(&socket, "GET", "no slash", None, T)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
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
        let task = tokio::spawn(serve(listener, Arc::new(echo), shutdown.clone()));
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

    #[test]
    fn percent_codec_roundtrips() {
        for s in ["", "plain", "a b/c?d&e=f%", "é∂🙂"] {
            assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
    }
}
