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
