//! This node's bricks as the local glusterd knows them (`gluster --xml volume info`),
//! and the volume options geo-replication needs on a primary volume.

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

/// Runs `gluster ARGS` and returns its standard output.
pub fn gluster(args: &[&str]) -> Result<String, GlusterError> {
    let failed = |why: String| GlusterError::Cli {
        args: args.join(" "),
        why,
    };
    let out = Command::new("gluster")
        .args(["--mode=script"])
        .args(args)
        .output()
        .map_err(|error| failed(error.to_string()))?;
    if !out.status.success() {
        let mut why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if why.is_empty() {
            why = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        return Err(failed(format!("{} ({why})", out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The bricks of every volume glusterd knows that are on this node (`uuid`), with the
/// replica set (subvolume) each belongs to, in glusterd's order.
pub fn local_bricks(uuid: &str) -> Result<Vec<BrickSpec>, GlusterError> {
    parse_local_bricks(&gluster(&["--xml", "volume", "info", "all"])?, uuid)
}

/// Sets [`PRIMARY_OPTIONS`] on `volume` (idempotent).
pub fn prepare_primary(volume: &str) -> Result<(), GlusterError> {
    for (key, value) in PRIMARY_OPTIONS {
        gluster(&["volume", "set", volume, key, value])?;
    }
    Ok(())
}

/// [`local_bricks`] of an answer of `gluster --xml volume info`.
pub fn parse_local_bricks(xml: &str, uuid: &str) -> Result<Vec<BrickSpec>, GlusterError> {
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
    let mut bricks = Vec::new();
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
            bricks.push(BrickSpec {
                volume: name.clone(),
                path: path.into(),
                replica_set,
            });
        }
    }
    Ok(bricks)
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
        format!(
            "<volume><name>{name}</name><id>fac7750c-21ad-447d-bc23-ac971269910f</id><status>1</status>\
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
        ]);
        let bricks = parse_local_bricks(&xml, LOCAL).unwrap();
        let seen: Vec<(&str, String, u32)> = bricks
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
            ]
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
        assert!(parse_local_bricks(&answer(&[]), LOCAL).unwrap().is_empty());
    }
}
