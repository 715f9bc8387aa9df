//! `--version` of both binaries names the git commit they were built from, and every
//! agent gossips that version (what `georep nodes` compares to flag mixed versions).

use std::process::Command;
use std::time::Duration;

use georep_tests::{Cluster, NodeSpec, TEST_MONITOR, bin_dir};

fn head_commit() -> String {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git (the tests run from a checkout)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn version_names_the_commit_and_agents_gossip_it() {
    let commit = head_commit();
    let expected = format!("{} ({commit})", env!("CARGO_PKG_VERSION"));
    for (bin, name) in [("georep", "georep"), ("georepd", "georepd")] {
        let out = Command::new(bin_dir().join(bin))
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{name} {expected}")
        );
    }
    let cluster = Cluster::start(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0"]),
            NodeSpec::new("n2", &["gv1:/bricks/n2/gv1"]),
        ],
        Some(TEST_MONITOR),
    );
    cluster.wait_live(0, 2, Duration::from_secs(30));
    cluster.wait_live(1, 2, Duration::from_secs(30));
    let nodes = cluster.json(0, &["nodes"]);
    let versions: Vec<&str> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["agent_version"].as_str())
        .collect();
    assert_eq!(versions, [expected.as_str(), expected.as_str()], "{nodes}");
    assert!(!cluster.ok(1, &["nodes"]).contains("warning"));
}

#[test]
fn man_pages_and_completions_are_generated_from_the_command_lines() {
    let dir = tempfile::tempdir().unwrap();
    for bin in ["georep", "georepd"] {
        let out = Command::new(bin_dir().join(bin))
            .args(["generate", "man", "--out"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    // A page per command and subcommand, each rendered by nroff without a warning.
    for page in [
        "georep",
        "georep-create",
        "georep-webhook-add",
        "georep-inspect-explain",
        "georep-tls-cert-create",
        "georepd",
        "georepd-monitor",
    ] {
        let path = dir.path().join(format!("{page}.1"));
        let out = Command::new("nroff")
            .args(["-man", "-ww"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("nroff (groff-base): {e}"));
        // nroff emboldens by overstriking (`N\bN`): keep what is printed last.
        let mut text = String::new();
        for c in String::from_utf8_lossy(&out.stdout).chars() {
            if c == '\u{8}' {
                text.pop();
            } else {
                text.push(c);
            }
        }
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{page}: {out:?}"
        );
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{page}: {text}"
        );
    }
    let webhook_add = std::fs::read_to_string(dir.path().join("georep-webhook-add.1")).unwrap();
    assert!(webhook_add.contains("\\-\\-secret"), "{webhook_add}");

    // bash loads the completion script and completes subcommands with it.
    let script = dir.path().join("georep.bash");
    let out = Command::new(bin_dir().join("georep"))
        .args(["generate", "completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(&script, &out.stdout).unwrap();
    let probe = format!(
        "source {}; COMP_WORDS=(georep web); COMP_CWORD=1; _georep georep web georep; echo ${{COMPREPLY[@]}}",
        script.display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "webhook",
        "{out:?}"
    );
    for (bin, shell, marker) in [
        ("georep", "zsh", "#compdef georep"),
        ("georep", "fish", "complete -c georep"),
        ("georepd", "bash", "_georepd()"),
    ] {
        let out = Command::new(bin_dir().join(bin))
            .args(["generate", "completions", shell])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(marker),
            "{bin} {shell}: {out:?}"
        );
    }
    // A wrong shell is a usage error naming the choices.
    let out = Command::new(bin_dir().join("georep"))
        .args(["generate", "completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bash"),
        "{out:?}"
    );
}
