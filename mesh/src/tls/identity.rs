//! A node's identity: its certificate and key loaded and checked ([`NodeIdentity`]),
//! and the node id read from a certificate.

use super::*;

/// Extracts the node id from a DER certificate's `georep://node/<id>` URI SAN.
///
/// Fails if the certificate cannot be parsed, has no such URI, has several
/// different ones, or the id is malformed.
pub fn node_id_from_cert(der: &[u8]) -> Result<String, TlsError> {
    node_id_of(der, "peer certificate")
}

pub(super) fn node_id_of(der: &[u8], what: &str) -> Result<String, TlsError> {
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

pub(super) fn ring_provider() -> Arc<CryptoProvider> {
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
        self.server_config_for(ALPN)
    }

    /// [`Self::server_config`] speaking `alpn` (the data path's own protocol).
    pub fn server_config_for(&self, alpn: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
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
        config.alpn_protocols = vec![alpn.to_vec()];
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
        self.client_config_for(ALPN)
    }

    /// [`Self::client_config`] speaking `alpn` (the data path's own protocol).
    pub fn client_config_for(&self, alpn: &[u8]) -> Result<Arc<ClientConfig>, TlsError> {
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
        config.alpn_protocols = vec![alpn.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

pub(super) fn read_bytes(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn check_validity(path: &Path, der: &[u8]) -> Result<(), TlsError> {
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
