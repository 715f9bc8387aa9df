//! This node's bricks as the local glusterd knows them (`gluster --xml volume info`),
//! and the volume options geo-replication needs on a primary volume.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use crate::config::BrickSpec;

use super::GlusterError;

/// What glusterd sets on a primary volume when geo-replication starts: the changelog
/// gsyncd's live crawl reads, the marker xattrs, and accepting gsyncd's client pid.
pub const PRIMARY_OPTIONS: &[(&str, &str)] = &[
    ("geo-replication.indexing", "on"),
    ("geo-replication.ignore-pid-check", "on"),
    ("changelog.changelog", "on"),
];

/// How long one `gluster` command may wait for glusterd (the CLI's own default is 120 s).
const CLI_TIMEOUT: &str = "--timeout=30";

/// `gluster ARGS` in script mode, bounded by [`CLI_TIMEOUT`].
fn command(args: &[&str]) -> Command {
    let mut command = Command::new("gluster");
    command.args(["--mode=script", CLI_TIMEOUT]).args(args);
    command
}

/// The standard output of `gluster ARGS` that ended with `out`, or an error naming the
/// command and what it said.
fn answer(
    args: &[&str],
    out: std::io::Result<std::process::Output>,
) -> Result<String, GlusterError> {
    let failed = |why: String| GlusterError::Cli {
        args: args.join(" "),
        why,
    };
    let out = out.map_err(|error| failed(error.to_string()))?;
    if !out.status.success() {
        let mut why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if why.is_empty() {
            why = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        return Err(failed(format!("{} ({why})", out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `gluster ARGS` and returns its standard output.
pub fn gluster(args: &[&str]) -> Result<String, GlusterError> {
    answer(args, command(args).output())
}

/// This node's bricks as glusterd lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalBricks {
    /// Every brick of every volume on this node, with its replica set, in glusterd's
    /// order.
    pub bricks: Vec<BrickSpec>,
    /// Those whose volume glusterd has not started (created or stopped): not serving.
    pub not_started: BTreeSet<PathBuf>,
}

/// The volume list `local_bricks` reads.
const VOLUME_INFO: &[&str] = &["--xml", "volume", "info", "all"];

/// The bricks of every volume glusterd knows that are on this node (`uuid`), with the
/// replica set (subvolume) each belongs to, in glusterd's order.
pub fn local_bricks(uuid: &str) -> Result<LocalBricks, GlusterError> {
    parse_local_bricks(&gluster(VOLUME_INFO)?, uuid)
}

/// [`local_bricks`] without blocking the runtime; the `gluster` process is killed if
/// the future is dropped.
pub async fn local_bricks_async(uuid: &str) -> Result<LocalBricks, GlusterError> {
    let out = tokio::process::Command::from(command(VOLUME_INFO))
        .kill_on_drop(true)
        .output()
        .await;
    parse_local_bricks(&answer(VOLUME_INFO, out)?, uuid)
}

/// Sets [`PRIMARY_OPTIONS`] on `volume` (idempotent).
pub fn prepare_primary(volume: &str) -> Result<(), GlusterError> {
    for (key, value) in PRIMARY_OPTIONS {
        gluster(&["volume", "set", volume, key, value])?;
    }
    Ok(())
}

/// [`local_bricks`] of an answer of `gluster --xml volume info`.
pub fn parse_local_bricks(xml: &str, uuid: &str) -> Result<LocalBricks, GlusterError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| GlusterError::Xml(e.to_string()))?;
    let root = doc.root_element();
    let child_text = |node: roxmltree::Node, name: &str| {
        node.children()
            .find(|c| c.has_tag_name(name))
            .and_then(|c| c.text())
            .map(str::trim)
            .map(str::to_string)
    };
    if let Some(ret) = child_text(root, "opRet")
        && ret != "0"
    {
        let why = child_text(root, "opErrstr").unwrap_or_default();
        return Err(GlusterError::Xml(format!("glusterd answered {ret}: {why}")));
    }
    let mut local = LocalBricks::default();
    for volume in root.descendants().filter(|n| n.has_tag_name("volume")) {
        let Some(name) = child_text(volume, "name") else {
            continue;
        };
        let count = |tag: &str| {
            child_text(volume, tag)
                .and_then(|t| t.parse::<u32>().ok())
                .unwrap_or(0)
        };
        // gsyncd's subvolume size: the disperse count, else the replica count.
        let subvolume = match count("disperseCount") {
            0 => count("replicaCount").max(1),
            n => n,
        };
        // glusterd's GLUSTERD_STATUS_STARTED.
        let started = child_text(volume, "status").as_deref() == Some("1");
        let Some(list) = volume.children().find(|c| c.has_tag_name("bricks")) else {
            continue;
        };
        for (index, brick) in list
            .children()
            .filter(|c| c.has_tag_name("brick"))
            .enumerate()
        {
            let host_uuid = child_text(brick, "hostUuid")
                .or_else(|| brick.attribute("uuid").map(str::to_string));
            if host_uuid.as_deref() != Some(uuid) {
                continue;
            }
            let Some(path) = child_text(brick, "name").and_then(|n| brick_path(&n)) else {
                continue;
            };
            let replica_set = u32::try_from(index).unwrap_or(u32::MAX) / subvolume;
            let path = PathBuf::from(path);
            if !started {
                local.not_started.insert(path.clone());
            }
            local.bricks.push(BrickSpec {
                volume: name.clone(),
                path,
                replica_set,
            });
        }
    }
    Ok(local)
}

/// The path of a brick named `HOST:/PATH` (a host holds no `/`; an IPv6 one may hold
/// `:`).
fn brick_path(name: &str) -> Option<String> {
    let at = name.find(":/")?;
    Some(name[at + 1..].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "0721f245-2c38-41e6-a8ab-89835524b139";
    const OTHER: &str = "4f80aecb-9ff3-4459-819d-2aae0feb20cb";

    fn brick(uuid: &str, name: &str) -> String {
        format!(
            "<brick uuid=\"{uuid}\">{name}<name>{name}</name><hostUuid>{uuid}</hostUuid><isArbiter>0</isArbiter></brick>"
        )
    }

    fn volume(name: &str, replica: u32, disperse: u32, bricks: &[String]) -> String {
        volume_in(name, 1, replica, disperse, bricks)
    }

    fn volume_in(
        name: &str,
        status: u32,
        replica: u32,
        disperse: u32,
        bricks: &[String],
    ) -> String {
        format!(
            "<volume><name>{name}</name><id>fac7750c-21ad-447d-bc23-ac971269910f</id><status>{status}</status>\
             <replicaCount>{replica}</replicaCount><disperseCount>{disperse}</disperseCount>\
             <bricks>{}</bricks><options><option><name>nfs.disable</name><value>on</value></option></options></volume>",
            bricks.concat()
        )
    }

    fn answer(volumes: &[String]) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<cliOutput><opRet>0</opRet>\
             <opErrno>0</opErrno><opErrstr/><volInfo><volumes>{}<count>{}</count></volumes></volInfo></cliOutput>",
            volumes.concat(),
            volumes.len()
        )
    }

    #[test]
    fn this_nodes_bricks_come_with_their_replica_set() {
        let xml = answer(&[
            volume(
                "pv",
                2,
                0,
                &[
                    brick(LOCAL, "10.0.0.1:/bricks/b1"),
                    brick(OTHER, "10.0.0.2:/bricks/b1"),
                    brick(OTHER, "10.0.0.2:/bricks/b2"),
                    brick(LOCAL, "fe80::1:/bricks/b2"),
                ],
            ),
            volume(
                "ec",
                1,
                3,
                &[
                    brick(OTHER, "h2:/ec/0"),
                    brick(OTHER, "h3:/ec/1"),
                    brick(OTHER, "h4:/ec/2"),
                    brick(LOCAL, "h1:/ec/3"),
                ],
            ),
            volume("other", 1, 0, &[brick(OTHER, "h2:/o")]),
            volume_in("created", 0, 1, 0, &[brick(LOCAL, "h1:/c")]),
            volume_in("stopped", 2, 1, 0, &[brick(LOCAL, "h1:/s")]),
        ]);
        let local = parse_local_bricks(&xml, LOCAL).unwrap();
        let seen: Vec<(&str, String, u32)> = local
            .bricks
            .iter()
            .map(|b| {
                (
                    b.volume.as_str(),
                    b.path.display().to_string(),
                    b.replica_set,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("pv", "/bricks/b1".to_string(), 0),
                ("pv", "/bricks/b2".to_string(), 1),
                ("ec", "/ec/3".to_string(), 1),
                ("created", "/c".to_string(), 0),
                ("stopped", "/s".to_string(), 0),
            ]
        );
        // Only bricks of started volumes serve.
        assert_eq!(
            local.not_started,
            [PathBuf::from("/c"), PathBuf::from("/s")].into()
        );
    }

    #[test]
    fn an_error_answer_or_garbage_is_an_error_naming_it() {
        let refused = "<cliOutput><opRet>-1</opRet><opErrno>0</opErrno>\
                       <opErrstr>Volume nope does not exist</opErrstr></cliOutput>";
        let err = parse_local_bricks(refused, LOCAL).unwrap_err().to_string();
        assert!(err.contains("Volume nope does not exist"), "{err}");
        let err = parse_local_bricks("<cliOutput>", LOCAL)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot parse"), "{err}");
        assert_eq!(
            parse_local_bricks(&answer(&[]), LOCAL).unwrap(),
            LocalBricks::default()
        );
    }
}
