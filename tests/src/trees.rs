//! Comparing directory trees in data-path tests: what a tree holds, inodes aside.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::Cluster;

/// The first brick path of node `i` (its `--brick VOL:PATH[:SET]` flag).
pub fn brick_of(cluster: &Cluster, i: usize) -> PathBuf {
    let args = cluster.agent_args(i);
    let spec = args
        .iter()
        .position(|a| a == "--brick")
        .map(|at| args[at + 1].clone())
        .expect("a brick");
    let path = spec
        .split_once(':')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    PathBuf::from(path.rsplit_once(':').map_or(path, |(p, _)| p))
}

/// Per path: kind, size, mode, mtime, content hash, xattrs (`mtime_of_dirs`: whether
/// directories' mtimes count); and which paths are hard links of each other.
pub type Shape = (BTreeMap<String, String>, BTreeSet<Vec<String>>);

/// What the tree under `root` holds, inodes aside.
pub fn shape(root: &Path, mtime_of_dirs: bool) -> Shape {
    let (index, _) = georep_datapath::scan(root, None).expect("scan");
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let shape = index
        .entries
        .iter()
        .map(|(path, e)| {
            by_ino.entry(e.ino).or_default().push(path.to_string());
            let mtime = if mtime_of_dirs || e.kind != georep_datapath::EntryKind::Dir {
                format!("{:?}", (e.mtime, e.mtime_nsec))
            } else {
                "-".to_string()
            };
            (
                path.to_string(),
                format!(
                    "{:?} size={} mode={:o} mtime={mtime} content={:?} xattrs={:?}",
                    e.kind, e.size, e.mode, e.content, e.xattrs
                ),
            )
        })
        .collect();
    (
        shape,
        by_ino.into_values().filter(|p| p.len() > 1).collect(),
    )
}

/// The union of several trees' shapes (a distributed volume: each replica set holds
/// part of the namespace; directories are on all of them).
pub fn union(shapes: &[Shape]) -> Shape {
    let mut out: Shape = Default::default();
    for (entries, links) in shapes {
        out.0.extend(entries.clone());
        out.1.extend(links.clone());
    }
    out
}

/// Waits until the tree under `secondary` equals the union of the trees under `sets`
/// (directories' mtimes compared when `dir_mtimes`), or fails with what differs and
/// the agents' logs.
pub fn wait_equal(
    cluster: &Cluster,
    sets: &[&Path],
    secondary: &Path,
    dir_mtimes: bool,
    within: std::time::Duration,
    what: &str,
) {
    let want = || -> Shape {
        let shapes: Vec<Shape> = sets.iter().map(|s| shape(s, dir_mtimes)).collect();
        union(&shapes)
    };
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if want() == shape(secondary, dir_mtimes) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    report_difference(&want(), &shape(secondary, dir_mtimes));
    cluster.wait_until(std::time::Duration::ZERO, what, || false);
}

/// Prints how `want` and `got` differ (for a failure message); whether they do.
pub fn report_difference(want: &Shape, got: &Shape) -> bool {
    let mut differ = false;
    for path in want.0.keys().chain(got.0.keys()).collect::<BTreeSet<_>>() {
        if want.0.get(path) != got.0.get(path) {
            differ = true;
            eprintln!(
                "{path}:\n  primary:   {:?}\n  secondary: {:?}",
                want.0.get(path),
                got.0.get(path)
            );
        }
    }
    if want.1 != got.1 {
        differ = true;
        eprintln!("hard links: primary {:?}, secondary {:?}", want.1, got.1);
    }
    differ
}
