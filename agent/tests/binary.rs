//! The `georepd` binary itself: flags, version and refusals, as a user meets them.
//! (These also make `cargo test --workspace` build the binary that the real-process
//! tests in `tests/` start.)

use std::process::Command;

fn georepd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_georepd"))
        .args(args)
        .output()
        .expect("run georepd")
}

#[test]
fn version_and_help_describe_the_agent() {
    let out = georepd(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = georepd(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--node-id",
        "--data-dir",
        "--brick",
        "--monitor-command",
        "--tls-ca",
    ] {
        assert!(help.contains(flag), "help lacks {flag}:\n{help}");
    }
}

#[test]
fn missing_node_id_is_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = georepd(&["--data-dir", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = georepd(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}
