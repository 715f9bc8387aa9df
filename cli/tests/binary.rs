//! The `georep` binary itself, as a user meets it without an agent.
//! (These also make `cargo test --workspace` build the binary that the real-process
//! tests in `tests/` drive.)

use std::process::Command;

fn georep(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_georep"))
        .args(args)
        .output()
        .expect("run georep")
}

#[test]
fn help_lists_every_command_of_the_contract() {
    let out = georep(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in [
        "create", "start", "stop", "pause", "resume", "config", "delete", "status", "exists",
        "running", "nodes", "inspect", "tls", "demo",
    ] {
        assert!(help.contains(command), "help lacks {command}:\n{help}");
    }
}

#[test]
fn no_agent_exits_3_and_names_the_socket() {
    let out = georep(&["--socket", "/nonexistent/dir/georepd.sock", "nodes"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dir/georepd.sock"));
}

#[test]
fn malformed_session_is_a_usage_error() {
    let out = georep(&["--socket", "/nonexistent.sock", "start", "gv0", "n4:gv1"]);
    assert_eq!(out.status.code(), Some(2));
}
