//! The cluster PKI: generating the CA, issuing node certificates, writing them to
//! disk (keys mode 0600, never overwritten).

use super::*;

/// Generates a new cluster CA (ECDSA P-256, may sign node certificates only).
pub fn generate_ca() -> Result<PemCert, TlsError> {
    generate_ca_valid(SystemTime::now(), CA_CERT_VALIDITY)
}

pub(super) fn generate_ca_valid(now: SystemTime, validity: Duration) -> Result<PemCert, TlsError> {
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

pub(super) fn set_validity(params: &mut CertificateParams, now: SystemTime, validity: Duration) {
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

pub(super) fn issue_node_cert_valid(
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

pub(super) fn refuse_existing(files: &PemFiles) -> Result<(), TlsError> {
    for path in [&files.cert, &files.key] {
        if path.exists() {
            return Err(TlsError::Exists { path: path.clone() });
        }
    }
    Ok(())
}

pub(super) fn write_pair(dir: &Path, files: &PemFiles, pem: &PemCert) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    // The key first: if it cannot be written there is no orphan certificate.
    write_new_file(&files.key, pem.key_pem.as_bytes(), 0o600)?;
    write_new_file(&files.cert, pem.cert_pem.as_bytes(), 0o644)
}

pub(super) fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
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

pub(super) fn read_text(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn parse_cert_pem(path: &Path, pem: &[u8]) -> Result<CertificateDer<'static>, TlsError> {
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

pub(super) fn parse_key_pem(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        expected: "a private key",
        detail: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY section found".into(),
            other => other.to_string(),
        },
    })
}
