//! Size-limited tmpfs mounts for tests (bricks of a known size, bricks that fill up),
//! unmounted (lazily, even when busy) on drop, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The mounts a test made.
#[derive(Debug, Default)]
pub struct Tmpfs(Vec<PathBuf>);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`16m`) on `dir` (created); panics if it cannot (the
    /// tests run as root).
    pub fn mount(&mut self, dir: &Path, size: &str) {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "georep-test-brick",
            ])
            .arg(dir)
            .output()
            .expect("mount (util-linux)");
        assert!(
            out.status.success(),
            "mount tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.0.push(dir.to_path_buf());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(dir).status();
        }
    }
}
