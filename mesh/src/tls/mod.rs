//! Cluster CA, node certificates and mutual-TLS configuration.
//!
//! One cluster CA (ECDSA P-256) signs every node certificate. A node certificate
//! names its node id twice: as the URI SAN `georep://node/<id>` (what peers trust)
//! and as the subject CN (for humans). Both TLS sides require a certificate that
//! chains to the cluster CA; the client does not check a DNS name because a dialler
//! only knows its peer's gossip address. Who the peer *is* comes from the node id in
//! its certificate, read after the handshake with [`node_id_from_cert`].
//!
//! Every config is built with the ring provider explicitly, never the process-wide
//! default (see DESIGN "Known pitfalls").

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName as TlsDn,
    RootCertStore, ServerConfig, SignatureScheme,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::time::ASN1Time;

/// ALPN protocol id spoken on every mesh connection.
pub const ALPN: &[u8] = b"georep/1";

/// Prefix of the URI SAN that carries a node id: `georep://node/<node-id>`.
pub const NODE_URI_PREFIX: &str = "georep://node/";

/// File name of the cluster CA certificate written by [`write_ca`].
pub const CA_CERT_FILE: &str = "ca.crt";

/// File name of the cluster CA private key written by [`write_ca`].
pub const CA_KEY_FILE: &str = "ca.key";

/// Longest accepted node id.
pub const MAX_NODE_ID_LEN: usize = 64;

/// Validity of a node certificate.
const NODE_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Validity of the cluster CA; longer than a node certificate so that a node
/// certificate issued late in the CA's life still chains for its whole validity.
const CA_CERT_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// Certificates start being valid a little in the past, so that a peer whose
/// clock lags ours still accepts a freshly issued certificate.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(3600);

/// Errors of TLS material handling. None of them changes anything on disk except
/// where a write error says so (a partially written file may be left behind).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (missing, permissions, ...).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file involved.
        path: PathBuf,
        /// Underlying I/O error.
        source: io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file involved.
        path: PathBuf,
        /// Underlying I/O error.
        source: io::Error,
    },
    /// Refused to overwrite existing TLS material.
    #[error("{path} already exists; move it away first if you really mean to replace it")]
    Exists {
        /// The file that already exists.
        path: PathBuf,
    },
    /// A file is not PEM, or holds something other than what was expected.
    #[error("{path} does not hold {expected} in PEM form ({detail})")]
    Pem {
        /// The file involved.
        path: PathBuf,
        /// What the file should contain ("a certificate", "a private key").
        expected: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The private key does not belong to the certificate.
    #[error("private key {key} does not match certificate {cert}; use the key issued with it")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate does not chain to the cluster CA (or webpki rejects it).
    #[error(
        "certificate {cert} is not accepted by the cluster CA {ca}: {reason}; issue a node certificate with this cluster's CA"
    )]
    NotSignedByCa {
        /// The certificate file.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// Why webpki refused it.
        reason: String,
    },
    /// The certificate is outside its validity period.
    #[error(
        "certificate {cert} is valid from {not_before} to {not_after}, not now ({now}); issue a new node certificate"
    )]
    Validity {
        /// The certificate file.
        cert: PathBuf,
        /// Start of validity.
        not_before: String,
        /// End of validity.
        not_after: String,
        /// The current time as seen by this node.
        now: String,
    },
    /// The certificate carries no (or an unusable) georep node id.
    #[error(
        "{cert} carries no usable georep node id (expected one SAN URI {NODE_URI_PREFIX}<node-id>): {reason}"
    )]
    NoNodeId {
        /// The certificate involved (a path, or "peer certificate").
        cert: String,
        /// What was wrong.
        reason: String,
    },
    /// A node id is malformed.
    #[error(
        "invalid node id {id:?}: {reason} (1 to {MAX_NODE_ID_LEN} characters of A-Z a-z 0-9 . _ -)"
    )]
    InvalidNodeId {
        /// The rejected id.
        id: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// A `--dns` name that is not a valid DNS name; nothing was written.
    #[error(
        "{name:?} is not a valid DNS name: {reason} (labels of letters, digits and '-', 1-63 characters each, not starting or ending with '-', 253 characters in all; '*.' may lead)"
    )]
    InvalidDnsName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Key or certificate generation failed.
    #[error("cannot generate {what}: {reason}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// Underlying reason.
        reason: String,
    },
    /// A rustls configuration could not be built from otherwise valid material.
    #[error("cannot build the {what} TLS configuration: {reason}")]
    Config {
        /// Which configuration.
        what: &'static str,
        /// Underlying reason.
        reason: String,
    },
}

/// A certificate and its private key, both PEM-encoded.
#[derive(Clone)]
pub struct PemCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM. Secret.
    pub key_pem: String,
}

impl fmt::Debug for PemCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// Paths of a certificate and key pair written to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemFiles {
    /// The certificate file.
    pub cert: PathBuf,
    /// The private key file (mode 0600).
    pub key: PathBuf,
}

/// Checks that `id` is 1..=64 characters of `[A-Za-z0-9._-]`.
pub fn validate_node_id(id: &str) -> Result<(), TlsError> {
    let invalid = |reason| {
        Err(TlsError::InvalidNodeId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() {
        return invalid("empty");
    }
    if id.len() > MAX_NODE_ID_LEN {
        return invalid("too long");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("forbidden character");
    }
    if id.starts_with('-') {
        // It reaches monitors as `{node}`: it must never read as an option.
        return invalid("may not start with '-'");
    }
    Ok(())
}

mod identity;
mod pki;
mod verify;

pub use identity::*;
pub use pki::*;
use verify::*;

#[cfg(test)]
mod tests;
