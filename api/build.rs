//! Records the git commit the binaries are built from, for `--version` and the
//! version agents gossip: `GEOREP_COMMIT` if set (package builds from a tarball),
//! else `git rev-parse --short=12 HEAD`, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=GEOREP_COMMIT");
    let commit = std::env::var("GEOREP_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    // Rebuilt when HEAD moves: HEAD itself (a checkout) and the ref it points at.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={}", absolute(&head));
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(path) = git(&["rev-parse", "--git-path", &reference])
    {
        println!("cargo:rerun-if-changed={}", absolute(&path));
    }
    println!("cargo:rustc-env=GEOREP_COMMIT={commit}");
}

/// `git rev-parse --git-path` answers relative to the manifest directory.
fn absolute(path: &str) -> String {
    let path = std::path::Path::new(path);
    if path.is_absolute() {
        path.display().to_string()
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(path)
            .display()
            .to_string()
    }
}
