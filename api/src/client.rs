//! The local API's client: one HTTP/1.1 request (hyper) over the agent's Unix socket,
//! answered with a status and a JSON body.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::net::UnixStream;

/// Largest response body the client accepts.
pub const MAX_RESPONSE_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Why a [`request`] got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent listens on the socket (missing socket file or connection refused).
    #[error("no georepd is running at {} ({reason}); start it or pass the right --api-socket", socket.display())]
    NoAgent {
        /// The socket tried.
        socket: PathBuf,
        /// The connect error.
        reason: String,
    },
    /// Another I/O error (e.g. permission denied on the socket).
    #[error("{}: {source}", socket.display())]
    Io {
        /// The socket tried.
        socket: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The request could not be formed, or the answer is not valid HTTP or JSON.
    #[error("protocol error talking to georepd: {0}")]
    Protocol(String),
    /// No complete answer within the timeout.
    #[error("georepd at {} did not answer within {} ms", socket.display(), after.as_millis())]
    Timeout {
        /// The socket tried.
        socket: PathBuf,
        /// The timeout that expired.
        after: Duration,
    },
}

/// Sends one request to the agent at `socket` and returns the status and JSON body
/// (`Null` when the body is empty). The whole exchange, connect included, is bounded
/// by `timeout`.
pub async fn request(
    socket: &Path,
    method: &str,
    path_and_query: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, serde_json::Value), ClientError> {
    match tokio::time::timeout(timeout, exchange(socket, method, path_and_query, body)).await {
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
) -> Result<(u16, serde_json::Value), ClientError> {
    let protocol = |m: String| ClientError::Protocol(m);
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(protocol(format!("invalid method {method:?}")));
    }
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|e| protocol(format!("invalid method {method:?}: {e}")))?;
    let uri: Uri = path_and_query
        .parse()
        .ok()
        .filter(|_| path_and_query.starts_with('/'))
        .ok_or_else(|| protocol(format!("invalid request target {path_and_query:?}")))?;
    let payload = match body {
        Some(v) => serde_json::to_vec(v)
            .map_err(|e| protocol(format!("cannot encode the request: {e}")))?,
        None => Vec::new(),
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(HOST, "georepd");
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| protocol(format!("cannot form the request: {e}")))?;

    let stream = match UnixStream::connect(socket).await {
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
        Err(source) => {
            return Err(ClientError::Io {
                socket: socket.to_path_buf(),
                source,
            });
        }
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(format!("cannot talk HTTP to georepd: {e}")))?;
    let answer = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| protocol(format!("no valid answer: {e}")))?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| protocol(format!("cannot read the answer: {e}")))?
            .to_bytes();
        Ok((status, bytes))
    };
    // The connection future does the I/O; it must be polled until the answer is read.
    tokio::pin!(connection, answer);
    let mut connection_done = false;
    let (status, bytes) = loop {
        tokio::select! {
            result = &mut answer => break result?,
            result = &mut connection, if !connection_done => {
                connection_done = true;
                if let Err(e) = result {
                    return Err(protocol(format!("connection to georepd failed: {e}")));
                }
            }
        }
    };
    let value = if bytes.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| protocol(format!("answer body is not valid JSON: {e}")))?
    };
    Ok((status, value))
}

/// What a query value keeps literally: RFC 3986 unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes `s` for a query value (everything but unreserved characters).
pub fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, QUERY_VALUE).to_string()
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
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    const T: Duration = Duration::from_secs(5);

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
    async fn client_reads_a_json_answer_and_rejects_malformed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s");
        let listener = UnixListener::bind(&socket).unwrap();
        let replies: [&[u8]; 4] = [
            b"HTTP/1.1 409 Conflict\r\nContent-Length: 12\r\n\r\n{\"ok\":false}",
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
        let (status, value) = request(&socket, "GET", "/", None, T).await.unwrap();
        assert_eq!(status, 409);
        assert_eq!(value, serde_json::json!({"ok": false}));
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

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            with_query(
                "/v1/status",
                &[
                    ("primary", Some("gv0")),
                    ("x", None),
                    ("secondary", Some("h::gv1 é&="))
                ]
            ),
            "/v1/status?primary=gv0&secondary=h%3A%3Agv1%20%C3%A9%26%3D"
        );
    }
}
