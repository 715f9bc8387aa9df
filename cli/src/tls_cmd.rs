//! `tls ca create` and `tls cert create`: the cluster CA and node
//! certificates, written by `georep_mesh::tls` (keys mode 0600, never
//! overwritten).

use georep_mesh::{PemFiles, TlsError, validate_node_id, write_ca, write_node_cert};
use serde_json::json;

use crate::args::{CertCreateArgs, Globals};
use crate::output::{CommandError, Exit, Report};

/// `tls ca create --out DIR`.
pub fn ca_create(g: &Globals, out: &std::path::Path) -> Report {
    match write_ca(out) {
        Ok(files) => written(g, "cluster CA", &files),
        Err(e) => failed(g, &e),
    }
}

/// `tls cert create --ca DIR --node ID [--ip ADDR]... [--dns NAME]... --out DIR`.
pub fn cert_create(g: &Globals, a: &CertCreateArgs) -> Report {
    if let Err(e) = validate_node_id(&a.node) {
        return CommandError::Usage(e.to_string()).report(g.json, None);
    }
    match write_node_cert(&a.ca, &a.node, &a.ips, &a.dns, &a.out) {
        Ok(files) => written(g, &format!("certificate of node {}", a.node), &files),
        Err(e) => failed(g, &e),
    }
}

fn written(g: &Globals, what: &str, files: &PemFiles) -> Report {
    let cert = files.cert.display().to_string();
    let key = files.key.display().to_string();
    if g.json {
        return Report::json(
            Exit::Done,
            &json!({
                "ok": true,
                "session": null,
                "message": format!("wrote the {what}"),
                "files": [cert, key],
            }),
        );
    }
    let mut report = Report::new(Exit::Done);
    report.out(format!("wrote the {what}:"));
    report.out(format!("  {cert}"));
    report.out(format!("  {key} (mode 0600; keep it secret)"));
    report
}

fn failed(g: &Globals, e: &TlsError) -> Report {
    // Every TlsError names the file or directory involved.
    CommandError::Failed(e.to_string()).report(g.json, None)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use clap::Parser;

    use super::*;
    use crate::args::Cli;

    async fn run(args: &[&str]) -> Report {
        let cli =
            Cli::try_parse_from(std::iter::once("georep").chain(args.iter().copied())).unwrap();
        crate::execute(&cli).await
    }

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn ca_and_cert_are_written_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let out = dir.path().join("nodes");
        let (ca_s, out_s) = (ca.to_str().unwrap(), out.to_str().unwrap());

        let report = run(&["tls", "ca", "create", "--out", ca_s]).await;
        assert_eq!(report.exit, Exit::Done, "{report:?}");
        assert!(
            report
                .stdout
                .contains(&ca.join("ca.crt").display().to_string())
        );
        assert_eq!(mode(&ca.join("ca.key")), 0o600);
        assert!(ca.join("ca.crt").is_file());

        let report = run(&[
            "tls",
            "cert",
            "create",
            "--ca",
            ca_s,
            "--node",
            "n1",
            "--ip",
            "127.0.0.1",
            "--dns",
            "n1.example",
            "--out",
            out_s,
            "--json",
        ])
        .await;
        assert_eq!(report.exit, Exit::Done, "{report:?}");
        let v: serde_json::Value = serde_json::from_str(report.stdout.trim()).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["files"][1], out.join("n1.key").display().to_string());
        assert_eq!(mode(&out.join("n1.key")), 0o600);
        georep_mesh::NodeIdentity::load(
            &ca.join("ca.crt"),
            &out.join("n1.crt"),
            &out.join("n1.key"),
        )
        .unwrap();

        // Never overwritten: exit 1 naming the file.
        let report = run(&["tls", "ca", "create", "--out", ca_s]).await;
        assert_eq!(report.exit, Exit::Failed);
        assert!(report.stderr.contains("ca.crt"), "{}", report.stderr);
        let report = run(&[
            "tls", "cert", "create", "--ca", ca_s, "--node", "n1", "--out", out_s,
        ])
        .await;
        assert_eq!(report.exit, Exit::Failed);
        assert!(report.stderr.contains("n1.crt"), "{}", report.stderr);
    }

    #[tokio::test]
    async fn cert_errors_name_the_file_or_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let report = run(&[
            "tls", "cert", "create", "--ca", d, "--node", "n1", "--out", d,
        ])
        .await;
        assert_eq!(report.exit, Exit::Failed);
        assert!(report.stderr.contains("ca.crt"), "{}", report.stderr);
        let report = run(&[
            "tls", "cert", "create", "--ca", d, "--node", "../evil", "--out", d,
        ])
        .await;
        assert_eq!(report.exit, Exit::Usage);
        assert!(
            report.stderr.contains("invalid node id"),
            "{}",
            report.stderr
        );
    }
}
