//! What this node measures about itself for the mesh: its bricks (statvfs, reachable,
//! empty) and its user accounts. create's verification of a secondary reads these
//! facts from the secondary nodes' records instead of running gluster's gverify.sh
//! over SSH. The world is injected: [`RealHostFacts`] reads this host, the simulator
//! passes [`FixedHostFacts`].

use std::fs;
use std::path::Path;

use georep_mesh::BrickFacts;

/// Brick entries that do not make a brick non-empty: gluster's own metadata.
pub const METADATA_ENTRIES: &[&str] = &[".glusterfs", ".trashcan"];

/// Free space is published in whole MiB, so writes on a brick do not republish this
/// node's record every few seconds for a byte count nobody compares.
const FREE_GRANULE: u64 = 1 << 20;

/// A source of host facts.
pub trait HostFacts: Send + Sync + 'static {
    /// What `path`, a brick directory, looks like now.
    fn brick(&self, path: &Path) -> BrickFacts;
    /// The local user accounts, by name.
    fn users(&self) -> Vec<String>;
}

/// This host: statvfs, the directory listing, `/etc/passwd`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealHostFacts;

impl HostFacts for RealHostFacts {
    fn brick(&self, path: &Path) -> BrickFacts {
        let mut facts = BrickFacts {
            path: path.display().to_string(),
            ..BrickFacts::default()
        };
        let Ok(entries) = fs::read_dir(path) else {
            return facts;
        };
        let Ok(stat) = nix::sys::statvfs::statvfs(path) else {
            return facts;
        };
        facts.reachable = true;
        facts.empty = entries.flatten().all(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| METADATA_ENTRIES.contains(&name))
        });
        let block = stat.fragment_size();
        facts.size_bytes = stat.blocks().saturating_mul(block);
        let free = stat.blocks_available().saturating_mul(block);
        facts.free_bytes = free / FREE_GRANULE * FREE_GRANULE;
        facts.filesystem = format!("{}:{:x}", machine_id(), stat.filesystem_id());
        facts
    }

    fn users(&self) -> Vec<String> {
        let text = fs::read_to_string("/etc/passwd").unwrap_or_default();
        passwd_users(&text)
    }
}

/// This machine's id (`/etc/machine-id`, else D-Bus's copy, else the boot id): with a
/// filesystem id it names a filesystem across machines, so that agents sharing one
/// machine (tests, `georep demo`) see their bricks' shared space as shared.
fn machine_id() -> String {
    [
        "/etc/machine-id",
        "/var/lib/dbus/machine-id",
        "/proc/sys/kernel/random/boot_id",
    ]
    .iter()
    .find_map(|path| {
        fs::read_to_string(path)
            .ok()
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty())
    })
    .unwrap_or_default()
}

/// The account names of a `passwd(5)` file (comments and malformed lines skipped).
pub fn passwd_users(text: &str) -> Vec<String> {
    let mut users: Vec<String> = text
        .lines()
        .filter(|line| !line.starts_with('#') && line.split(':').count() >= 7)
        .filter_map(|line| line.split(':').next())
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect();
    users.sort();
    users.dedup();
    users
}

/// The same facts for every brick (the simulator's hosts, whose bricks are not
/// directories): reachable, empty, of `size_bytes`.
#[derive(Debug, Clone)]
pub struct FixedHostFacts {
    /// Size (and free space) of every brick.
    pub size_bytes: u64,
    /// The accounts every node has.
    pub users: Vec<String>,
}

impl HostFacts for FixedHostFacts {
    fn brick(&self, path: &Path) -> BrickFacts {
        BrickFacts {
            path: path.display().to_string(),
            reachable: true,
            empty: true,
            size_bytes: self.size_bytes,
            free_bytes: self.size_bytes,
            // Every simulated brick is its own filesystem.
            filesystem: path.display().to_string(),
        }
    }

    fn users(&self) -> Vec<String> {
        self.users.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_brick_is_empty_with_only_gluster_metadata_and_unreachable_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let facts = RealHostFacts.brick(dir.path());
        assert!(facts.reachable && facts.empty, "{facts:?}");
        assert!(facts.size_bytes > 0 && facts.free_bytes <= facts.size_bytes);
        fs::create_dir(dir.path().join(".glusterfs")).unwrap();
        fs::create_dir(dir.path().join(".trashcan")).unwrap();
        assert!(RealHostFacts.brick(dir.path()).empty);
        fs::write(dir.path().join("data"), b"x").unwrap();
        assert!(!RealHostFacts.brick(dir.path()).empty);
        let gone = RealHostFacts.brick(&dir.path().join("absent"));
        assert!(!gone.reachable && !gone.empty && gone.size_bytes == 0);
    }

    #[test]
    fn passwd_names() {
        let text = "root:x:0:0:root:/root:/bin/bash\n# comment\nbad line\ngeo:x:1000:1000::/home/geo:/bin/sh\n";
        assert_eq!(passwd_users(text), vec!["geo", "root"]);
    }
}
