//! Unit tests of `tls`.
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
    let err = NodeIdentity::from_pem(&ca.cert_pem, &future.cert_pem, &future.key_pem).unwrap_err();
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
        Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem).unwrap()).unwrap();
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
        Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem).unwrap()).unwrap();
    let mut params = CertificateParams::new(vec!["host.example".to_owned()]).unwrap();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let err = NodeIdentity::from_pem(&ca.cert_pem, &cert.pem(), &key.serialize_pem()).unwrap_err();
    assert!(matches!(err, TlsError::NoNodeId { .. }), "{err:?}");
}
