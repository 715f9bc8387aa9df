//! Sending a delivery: the [`Transport`] seam (HTTP for `georepd`, an in-memory
//! receiver in the simulator) and [`HttpTransport`], one HTTP/1.1 POST per delivery
//! with hyper over TCP, or over rustls (ring provider) for `https://`.
//!
//! hyper speaks the protocol; this file only opens the connection (TCP, TLS with the
//! system's roots plus a webhook's private CA) and reads the status. Redirects are
//! not followed (a 3xx is a failure), certificates are always verified.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

use super::sign::Delivery;

/// How long one delivery may take, connection included.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error response's body is kept for `webhook list`.
const ERROR_BODY_BYTES: usize = 200;

/// What a receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, if the receiver sent one.
    pub retry_after: Option<Duration>,
    /// The start of the body (for error reports).
    pub body: String,
}

/// Sends deliveries somewhere.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// POSTs `delivery` to `url`; `Err` when no answer came (connection, TLS, timeout).
    async fn post(
        &self,
        url: &str,
        ca_pem: Option<&str>,
        delivery: &Delivery,
    ) -> Result<Answer, String>;
}

/// Checks that `url` is something [`HttpTransport`] can deliver to.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); write http://HOST[:PORT]/PATH or https://..."))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with http:// or https://".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if url.chars().any(char::is_whitespace) {
        return Err("may not contain white space".into());
    }
    Ok(())
}

/// Checks that `pem` holds at least one certificate.
pub fn check_ca(pem: &str) -> Result<(), String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(())
}

/// The machine's trusted roots, loaded once.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::warn!(%error, "cannot load a system root certificate");
        }
        loaded.certs
    })
}

fn tls_config(ca_pem: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
    if ignored > 0 {
        tracing::debug!(ignored, "system root certificates rustls cannot use");
    }
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("webhook CA: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("webhook CA certificate refused: {e}"))?;
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Deliveries over HTTP(S).
#[derive(Debug, Default)]
pub struct HttpTransport;

fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

impl HttpTransport {
    async fn send(url: &str, ca_pem: Option<&str>, delivery: &Delivery) -> Result<Answer, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or("the URL has no host")?;
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri.authority().map_or(host, |a| a.as_str()).to_string();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let tcp = tokio::net::TcpStream::connect((bare_host, port))
            .await
            .map_err(|e| format!("cannot connect to {bare_host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if https {
            let config = tls_config(ca_pem)?;
            let name = ServerName::try_from(bare_host.to_string())
                .map_err(|e| format!("{bare_host}: not a TLS server name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {bare_host}:{port}: {e}"))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let driver = tokio::spawn(connection);
        let mut request = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("georepd/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &delivery.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request
            .body(Full::new(Bytes::from(delivery.body.clone())))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("no HTTP answer: {e}"))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after);
        let body = if (200..300).contains(&status) {
            String::new()
        } else {
            let collected = Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&collected);
            text.chars().take(ERROR_BODY_BYTES).collect()
        };
        drop(sender);
        driver.abort();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }
}

#[async_trait::async_trait]
impl Transport for HttpTransport {
    async fn post(
        &self,
        url: &str,
        ca_pem: Option<&str>,
        delivery: &Delivery,
    ) -> Result<Answer, String> {
        match tokio::time::timeout(DELIVERY_TIMEOUT, Self::send(url, ca_pem, delivery)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {}s", DELIVERY_TIMEOUT.as_secs())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(check_url("https://hooks.example/x?y=1").is_ok());
        assert!(check_url("ftp://x/").unwrap_err().contains("http://"));
        assert!(check_url("http:///x").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let parsed = retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        assert_eq!(retry_after("soon"), None);
    }
}
