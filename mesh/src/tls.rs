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

/// Generates a new cluster CA (ECDSA P-256, may sign node certificates only).
pub fn generate_ca() -> Result<PemCert, TlsError> {
    generate_ca_valid(SystemTime::now(), CA_CERT_VALIDITY)
}

fn generate_ca_valid(now: SystemTime, validity: Duration) -> Result<PemCert, TlsError> {
    let gen_err = |e: rcgen::Error| TlsError::Generate {
        what: "the cluster CA",
        reason: e.to_string(),
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // A distinct name per CA, so that a certificate from another cluster is
    // reported as "unknown issuer" rather than as a bad signature.
    let tag: String = key
        .public_key_raw()
        .iter()
        .skip(1)
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    dn.push(DnType::CommonName, format!("georep cluster CA {tag}"));
    dn.push(DnType::OrganizationName, "georep");
    params.distinguished_name = dn;
    // Path length 0: the CA signs node certificates, never intermediate CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now, validity);
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(PemCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn set_validity(params: &mut CertificateParams, now: SystemTime, validity: Duration) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let start = since_epoch.saturating_sub(CLOCK_SKEW_ALLOWANCE);
    params.not_before = epoch + start;
    params.not_after = epoch + since_epoch + validity;
}

/// Issues a node certificate signed by the cluster CA.
///
/// The SAN carries `georep://node/<node_id>` plus the given IP addresses and DNS
/// names; the CN is the node id; the certificate is valid for about ten years
/// for both client and server authentication.
pub fn issue_node_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    node_id: &str,
    ips: &[IpAddr],
    dns_names: &[String],
) -> Result<PemCert, TlsError> {
    issue_node_cert_valid(
        ca_cert_pem,
        ca_key_pem,
        node_id,
        ips,
        dns_names,
        SystemTime::now(),
        NODE_CERT_VALIDITY,
    )
}

fn issue_node_cert_valid(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    node_id: &str,
    ips: &[IpAddr],
    dns_names: &[String],
    now: SystemTime,
    validity: Duration,
) -> Result<PemCert, TlsError> {
    validate_node_id(node_id)?;
    let gen_err = |what: &'static str| {
        move |e: rcgen::Error| TlsError::Generate {
            what,
            reason: e.to_string(),
        }
    };
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(gen_err("a node certificate (CA key)"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)
        .map_err(gen_err("a node certificate (CA certificate)"))?;

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id);
    dn.push(DnType::OrganizationName, "georep");
    params.distinguished_name = dn;
    let uri = format!("{NODE_URI_PREFIX}{node_id}");
    let mut sans = vec![SanType::URI(
        uri.try_into()
            .map_err(gen_err("a node certificate (node URI)"))?,
    )];
    sans.extend(ips.iter().copied().map(SanType::IpAddress));
    for name in dns_names {
        let name = name
            .clone()
            .try_into()
            .map_err(gen_err("a node certificate (DNS name)"))?;
        sans.push(SanType::DnsName(name));
    }
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, validity);

    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err("a node key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(gen_err("a node certificate"))?;
    Ok(PemCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Generates a cluster CA into `dir/ca.crt` and `dir/ca.key` (0600).
///
/// Refuses to overwrite an existing CA: every node certificate depends on it.
pub fn write_ca(dir: &Path) -> Result<PemFiles, TlsError> {
    let files = PemFiles {
        cert: dir.join(CA_CERT_FILE),
        key: dir.join(CA_KEY_FILE),
    };
    refuse_existing(&files)?;
    let ca = generate_ca()?;
    write_pair(dir, &files, &ca)?;
    Ok(files)
}

/// Issues a certificate for `node_id` with the CA in `ca_dir` (`ca.crt`, `ca.key`),
/// written to `out_dir/<node_id>.crt` and `out_dir/<node_id>.key` (0600).
///
/// Refuses to overwrite an existing certificate or key for that node.
pub fn write_node_cert(
    ca_dir: &Path,
    node_id: &str,
    ips: &[IpAddr],
    dns_names: &[String],
    out_dir: &Path,
) -> Result<PemFiles, TlsError> {
    validate_node_id(node_id)?;
    for name in dns_names {
        validate_dns_name(name)?;
    }
    let files = PemFiles {
        cert: out_dir.join(format!("{node_id}.crt")),
        key: out_dir.join(format!("{node_id}.key")),
    };
    refuse_existing(&files)?;
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_cert_pem = read_text(&ca_cert_path)?;
    let ca_key_pem = read_text(&ca_key_path)?;
    // Check the CA material first, so that a bad file is named precisely.
    parse_cert_pem(&ca_cert_path, ca_cert_pem.as_bytes())?;
    parse_key_pem(&ca_key_path, ca_key_pem.as_bytes())?;
    let node = issue_node_cert(&ca_cert_pem, &ca_key_pem, node_id, ips, dns_names)?;
    write_pair(out_dir, &files, &node)?;
    Ok(files)
}

/// Checks a certificate DNS name (RFC 1123 host name, optionally `*.` wildcard).
pub fn validate_dns_name(name: &str) -> Result<(), TlsError> {
    let bad = |reason| TlsError::InvalidDnsName {
        name: name.to_owned(),
        reason,
    };
    let host = name.strip_prefix("*.").unwrap_or(name);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 253 {
        return Err(bad("it is longer than 253 characters"));
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(bad("it has an empty label"));
        }
        if label.len() > 63 {
            return Err(bad("a label is longer than 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label starts or ends with '-'"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(
                "it has a character other than letters, digits, '-' and '.'",
            ));
        }
    }
    Ok(())
}

fn refuse_existing(files: &PemFiles) -> Result<(), TlsError> {
    for path in [&files.cert, &files.key] {
        if path.exists() {
            return Err(TlsError::Exists { path: path.clone() });
        }
    }
    Ok(())
}

fn write_pair(dir: &Path, files: &PemFiles, pem: &PemCert) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    // The key first: if it cannot be written there is no orphan certificate.
    write_new_file(&files.key, pem.key_pem.as_bytes(), 0o600)?;
    write_new_file(&files.cert, pem.cert_pem.as_bytes(), 0o644)
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = options.open(path).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    result.map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => TlsError::Exists {
            path: path.to_path_buf(),
        },
        _ => TlsError::Write {
            path: path.to_path_buf(),
            source,
        },
    })
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_cert_pem(path: &Path, pem: &[u8]) -> Result<CertificateDer<'static>, TlsError> {
    let pem_err = |detail: String| TlsError::Pem {
        path: path.to_path_buf(),
        expected: "a certificate",
        detail,
    };
    let mut certs = CertificateDer::pem_slice_iter(pem);
    let cert = match certs.next() {
        Some(Ok(cert)) => cert,
        Some(Err(e)) => return Err(pem_err(e.to_string())),
        None => return Err(pem_err("no CERTIFICATE section found".into())),
    };
    X509Certificate::from_der(&cert)
        .map_err(|e| pem_err(format!("not a valid X.509 certificate: {e}")))?;
    Ok(cert)
}

fn parse_key_pem(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        expected: "a private key",
        detail: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY section found".into(),
            other => other.to_string(),
        },
    })
}

/// Extracts the node id from a DER certificate's `georep://node/<id>` URI SAN.
///
/// Fails if the certificate cannot be parsed, has no such URI, has several
/// different ones, or the id is malformed.
pub fn node_id_from_cert(der: &[u8]) -> Result<String, TlsError> {
    node_id_of(der, "peer certificate")
}

fn node_id_of(der: &[u8], what: &str) -> Result<String, TlsError> {
    let no_id = |reason: String| TlsError::NoNodeId {
        cert: what.to_owned(),
        reason,
    };
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| no_id(format!("not a valid X.509 certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| no_id(format!("malformed subjectAltName: {e}")))?
        .ok_or_else(|| no_id("no subjectAltName extension".into()))?;
    let mut found: Option<&str> = None;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name
            && let Some(id) = uri.strip_prefix(NODE_URI_PREFIX)
        {
            match found {
                Some(previous) if previous != id => {
                    return Err(no_id(format!("several node ids ({previous}, {id})")));
                }
                _ => found = Some(id),
            }
        }
    }
    let id = found.ok_or_else(|| no_id(format!("no {NODE_URI_PREFIX} URI")))?;
    validate_node_id(id).map_err(|e| no_id(e.to_string()))?;
    Ok(id.to_owned())
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's proven identity: the cluster CA, its certificate and key, checked
/// against each other. Builds the mutual-TLS configurations of the mesh.
pub struct NodeIdentity {
    node_id: String,
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            node_id: self.node_id.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            provider: self.provider.clone(),
        }
    }
}

impl NodeIdentity {
    /// Loads and checks a node's TLS material: the PEM files parse, the key matches
    /// the certificate, the certificate chains to the CA (as a handshake would check
    /// it), is currently valid, and carries a node id.
    pub fn load(ca_path: &Path, cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let ca = read_bytes(ca_path)?;
        let cert = read_bytes(cert_path)?;
        let key = read_bytes(key_path)?;
        Self::from_pem_labelled((ca_path, &ca), (cert_path, &cert), (key_path, &key))
    }

    /// Like [`NodeIdentity::load`], from PEM text held in memory (tests, simulations).
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Self::from_pem_labelled(
            (Path::new("<ca certificate>"), ca_pem.as_bytes()),
            (Path::new("<node certificate>"), cert_pem.as_bytes()),
            (Path::new("<node key>"), key_pem.as_bytes()),
        )
    }

    fn from_pem_labelled(
        (ca_path, ca_pem): (&Path, &[u8]),
        (cert_path, cert_pem): (&Path, &[u8]),
        (key_path, key_pem): (&Path, &[u8]),
    ) -> Result<Self, TlsError> {
        let ca = parse_cert_pem(ca_path, ca_pem)?;
        let cert = parse_cert_pem(cert_path, cert_pem)?;
        let key = parse_key_pem(key_path, key_pem)?;
        let provider = ring_provider();

        let signing_key = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| TlsError::Pem {
                path: key_path.to_path_buf(),
                expected: "a private key usable with ECDSA or Ed25519",
                detail: e.to_string(),
            })?;
        let parsed =
            rustls::server::ParsedCertificate::try_from(&cert).map_err(|e| TlsError::Pem {
                path: cert_path.to_path_buf(),
                expected: "a certificate",
                detail: e.to_string(),
            })?;
        match signing_key.public_key() {
            Some(spki) if spki == parsed.subject_public_key_info() => {}
            _ => {
                return Err(TlsError::KeyMismatch {
                    cert: cert_path.to_path_buf(),
                    key: key_path.to_path_buf(),
                });
            }
        }

        check_validity(cert_path, &cert)?;

        let not_signed = |reason: String| TlsError::NotSignedByCa {
            cert: cert_path.to_path_buf(),
            ca: ca_path.to_path_buf(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).map_err(|e| TlsError::Pem {
            path: ca_path.to_path_buf(),
            expected: "a CA certificate usable as a trust anchor",
            detail: e.to_string(),
        })?;
        let roots = Arc::new(roots);
        let now = UnixTime::now();
        // Check both uses, exactly as the two sides of a handshake will.
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &[],
            now,
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| not_signed(e.to_string()))?;
        client_verifier(&roots, &provider)?
            .verify_client_cert(&cert, &[], now)
            .map_err(|e| not_signed(e.to_string()))?;

        let node_id = node_id_of(&cert, &cert_path.display().to_string())?;
        Ok(Self {
            node_id,
            ca,
            cert,
            key,
            roots,
            provider,
        })
    }

    /// The node id carried by this node's certificate.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The cluster CA certificate, DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// TLS 1.3 server configuration: presents this node's certificate and requires
    /// a client certificate chaining to the cluster CA and carrying a node id.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let config_err = |e: rustls::Error| TlsError::Config {
            what: "server",
            reason: e.to_string(),
        };
        let verifier = Arc::new(NodeClientVerifier {
            inner: client_verifier(&self.roots, &self.provider)?,
        });
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(config_err)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        // No resumption: every connection's peer identity comes from a certificate
        // verified in that very handshake. Connections are long-lived, so it is cheap.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// TLS 1.3 client configuration: presents this node's certificate and accepts
    /// a server certificate chaining to the cluster CA and carrying a node id,
    /// whatever server name was dialled.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let config_err = |e: rustls::Error| TlsError::Config {
            what: "client",
            reason: e.to_string(),
        };
        let verifier = Arc::new(ClusterServerVerifier {
            roots: self.roots.clone(),
            algorithms: self.provider.signature_verification_algorithms,
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(config_err)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn check_validity(path: &Path, der: &[u8]) -> Result<(), TlsError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        expected: "a certificate",
        detail: e.to_string(),
    })?;
    let validity = cert.validity();
    let now = ASN1Time::now();
    if validity.is_valid_at(now) {
        return Ok(());
    }
    Err(TlsError::Validity {
        cert: path.to_path_buf(),
        not_before: validity.not_before.to_string(),
        not_after: validity.not_after.to_string(),
        now: now.to_string(),
    })
}

fn client_verifier(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Config {
            what: "client certificate verifier",
            reason: e.to_string(),
        })
}

fn require_node_id(end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    node_id_from_cert(end_entity).map(|_| ()).map_err(|_| {
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    })
}

/// Server-side check of a client: webpki chain to the cluster CA, plus a node id.
#[derive(Debug)]
struct NodeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for NodeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[TlsDn] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        require_node_id(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client-side check of a server: webpki chain to the cluster CA and a node id,
/// but no server-name check (a dialler knows only an address; identity is bound
/// from the certificate's node id after the handshake).
#[derive(Debug)]
struct ClusterServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        require_node_id(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_are_checked() {
        for good in [
            "n1",
            "n1.example.org",
            "*.example.org",
            "a-b.c",
            "example.org.",
        ] {
            assert!(validate_dns_name(good).is_ok(), "{good}");
        }
        for bad in [
            "bad dns!",
            "",
            "-a.b",
            "a-.b",
            "a..b",
            "*.",
            "a_b",
            &"x".repeat(64),
        ] {
            let error = validate_dns_name(bad).unwrap_err().to_string();
            assert!(error.contains("is not a valid DNS name"), "{bad}: {error}");
        }
    }

    struct Cluster {
        dir: tempfile::TempDir,
    }

    impl Cluster {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            write_ca(dir.path()).unwrap();
            Self { dir }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn ca(&self) -> PathBuf {
            self.path().join(CA_CERT_FILE)
        }

        fn node(&self, id: &str) -> PemFiles {
            write_node_cert(self.path(), id, &[], &[], self.path()).unwrap()
        }
    }

    #[test]
    fn node_id_validation() {
        for ok in ["a", "node-1", "n1.dc_2", &"x".repeat(64)] {
            validate_node_id(ok).unwrap();
        }
        for bad in ["", &"x".repeat(65), "a b", "a/b", "é", "n:1"] {
            assert!(
                matches!(validate_node_id(bad), Err(TlsError::InvalidNodeId { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn generated_material_loads_and_builds_configs() {
        let cluster = Cluster::new();
        let files = write_node_cert(
            cluster.path(),
            "node-1",
            &["127.0.0.1".parse().unwrap()],
            &["node1.example".to_owned()],
            cluster.path(),
        )
        .unwrap();
        assert_eq!(files.cert, cluster.path().join("node-1.crt"));
        let identity = NodeIdentity::load(&cluster.ca(), &files.cert, &files.key).unwrap();
        assert_eq!(identity.node_id(), "node-1");
        let server = identity.server_config().unwrap();
        let client = identity.client_config().unwrap();
        assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(node_id_from_cert(identity.cert_der()).unwrap(), "node-1");
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let cluster = Cluster::new();
        let files = cluster.node("n1");
        for key in [cluster.path().join(CA_KEY_FILE), files.key] {
            let mode = fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
    }

    #[test]
    fn refuses_to_overwrite() {
        let cluster = Cluster::new();
        assert!(matches!(
            write_ca(cluster.path()),
            Err(TlsError::Exists { .. })
        ));
        cluster.node("n1");
        let again = write_node_cert(cluster.path(), "n1", &[], &[], cluster.path());
        assert!(matches!(again, Err(TlsError::Exists { .. })));
    }

    #[test]
    fn write_node_cert_rejects_bad_id() {
        let cluster = Cluster::new();
        let result = write_node_cert(cluster.path(), "../evil", &[], &[], cluster.path());
        assert!(matches!(result, Err(TlsError::InvalidNodeId { .. })));
    }

    #[test]
    fn missing_file_is_named() {
        let cluster = Cluster::new();
        let files = cluster.node("n1");
        let missing = cluster.path().join("nope.crt");
        let err = NodeIdentity::load(&cluster.ca(), &missing, &files.key).unwrap_err();
        match &err {
            TlsError::Read { path, .. } => assert_eq!(path, &missing),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("nope.crt"));
        let empty_ca = tempfile::tempdir().unwrap();
        let err = write_node_cert(empty_ca.path(), "n2", &[], &[], empty_ca.path()).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
    }

    #[test]
    fn garbage_pem_is_rejected() {
        let cluster = Cluster::new();
        let files = cluster.node("n1");
        let garbage = cluster.path().join("garbage.crt");
        fs::write(&garbage, b"\x00\x01 this is not pem").unwrap();
        let err = NodeIdentity::load(&cluster.ca(), &garbage, &files.key).unwrap_err();
        assert!(
            matches!(&err, TlsError::Pem { path, expected: "a certificate", .. } if path == &garbage),
            "{err:?}"
        );
        // A key where a certificate is expected, and the reverse.
        let err = NodeIdentity::load(&cluster.ca(), &files.key, &files.key).unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
        let err = NodeIdentity::load(&cluster.ca(), &files.cert, &files.cert).unwrap_err();
        assert!(
            matches!(
                &err,
                TlsError::Pem {
                    expected: "a private key",
                    ..
                }
            ),
            "{err:?}"
        );
        // A PEM envelope around bytes that are not a certificate.
        let fake = cluster.path().join("fake.crt");
        fs::write(
            &fake,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = NodeIdentity::load(&cluster.ca(), &fake, &files.key).unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
    }

    #[test]
    fn key_of_another_cert_is_rejected() {
        let cluster = Cluster::new();
        let one = cluster.node("n1");
        let two = cluster.node("n2");
        let err = NodeIdentity::load(&cluster.ca(), &one.cert, &two.key).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn cert_from_another_ca_is_rejected() {
        let ours = Cluster::new();
        let theirs = Cluster::new();
        let foreign = theirs.node("n1");
        let err = NodeIdentity::load(&ours.ca(), &foreign.cert, &foreign.key).unwrap_err();
        assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err:?}");
        // The CA certificate itself is not a node certificate.
        let err =
            NodeIdentity::load(&ours.ca(), &ours.ca(), &ours.path().join(CA_KEY_FILE)).unwrap_err();
        assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err:?}");
    }

    #[test]
    fn expired_and_future_certs_are_rejected() {
        let ca = generate_ca().unwrap();
        let day = Duration::from_secs(24 * 3600);
        let expired = issue_node_cert_valid(
            &ca.cert_pem,
            &ca.key_pem,
            "old",
            &[],
            &[],
            SystemTime::now() - 30 * day,
            day,
        )
        .unwrap();
        let err =
            NodeIdentity::from_pem(&ca.cert_pem, &expired.cert_pem, &expired.key_pem).unwrap_err();
        match &err {
            TlsError::Validity { not_after, .. } => assert!(!not_after.is_empty()),
            other => panic!("unexpected {other:?}"),
        }
        let future = issue_node_cert_valid(
            &ca.cert_pem,
            &ca.key_pem,
            "new",
            &[],
            &[],
            SystemTime::now() + 30 * day,
            day,
        )
        .unwrap();
        let err =
            NodeIdentity::from_pem(&ca.cert_pem, &future.cert_pem, &future.key_pem).unwrap_err();
        assert!(matches!(err, TlsError::Validity { .. }), "{err:?}");
    }

    #[test]
    fn node_id_extraction() {
        let ca = generate_ca().unwrap();
        let node = issue_node_cert(
            &ca.cert_pem,
            &ca.key_pem,
            "dc1.node_7",
            &["10.0.0.7".parse().unwrap()],
            &["n7.example".into()],
        )
        .unwrap();
        let der = CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).unwrap();
        assert_eq!(node_id_from_cert(&der).unwrap(), "dc1.node_7");

        // A certificate without the georep URI (the CA) and plain garbage.
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        assert!(matches!(
            node_id_from_cert(&ca_der),
            Err(TlsError::NoNodeId { .. })
        ));
        assert!(matches!(
            node_id_from_cert(b"garbage"),
            Err(TlsError::NoNodeId { .. })
        ));

        // A certificate signed by the CA whose only SAN is a DNS name.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer =
            Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem).unwrap())
                .unwrap();
        let params = CertificateParams::new(vec!["host.example".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        assert!(matches!(
            node_id_from_cert(cert.der()),
            Err(TlsError::NoNodeId { .. })
        ));
    }

    #[test]
    fn cert_without_node_id_is_rejected_on_load() {
        let ca = generate_ca().unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer =
            Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem).unwrap())
                .unwrap();
        let mut params = CertificateParams::new(vec!["host.example".to_owned()]).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let err =
            NodeIdentity::from_pem(&ca.cert_pem, &cert.pem(), &key.serialize_pem()).unwrap_err();
        assert!(matches!(err, TlsError::NoNodeId { .. }), "{err:?}");
    }
}
