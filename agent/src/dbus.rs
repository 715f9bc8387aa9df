//! D-Bus objects for local consumers (`--dbus system|session`, off by default): the
//! eventing seed's local model. Under the name `org.georep.Agent`:
//!
//! - `/org/georep/Agent` (`org.georep.Agent1`): the agent (NodeId, Cluster, Version,
//!   LoadState, ActiveState as systemd words, MembersLive, MembersDead), and an
//!   `org.freedesktop.DBus.ObjectManager` announcing the objects below as they come
//!   and go;
//! - `.../volumes/<name>` (`org.georep.Volume1`): each volume this node has a brick of
//!   (Name, Id, Status, Brickcount: the seed's keys, as the `VOLUME_*` events);
//! - `.../bricks/<volume:path>` (`org.georep.Brick1`): each local brick (Volume, Path,
//!   Reachable, SizeBytes, FreeBytes in MiB granules as gossiped, Device: the block
//!   device of its filesystem when it has one);
//! - `.../sessions/<session>` (`org.georep.Session1`): each session this node takes
//!   part in (Primary, Secondary, DesiredState, MonitorState, Workers: brick, status,
//!   crawl status).
//!
//! Objects are refreshed every second and on every mesh change; a property that changed
//! is announced with `org.freedesktop.DBus.Properties.PropertiesChanged`. Object path
//! elements are escaped as systemd does (`_` + two hex digits for every byte outside
//! `[A-Za-z0-9]`), written here: a few lines, no crate does only this.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zbus::fdo::{ObjectManager, Properties};
use zbus::object_server::{Interface, SignalEmitter};
use zbus::{Connection, Variant, interface};

use crate::agent::Agent;
use crate::config::DbusBus;

/// The well-known name the agent owns.
pub const BUS_NAME: &str = "org.georep.Agent";
/// The agent's object; the others live below it.
pub const ROOT_PATH: &str = "/org/georep/Agent";
/// How often objects are refreshed without a mesh change (brick facts, monitor state).
const REFRESH: Duration = Duration::from_secs(1);
/// After a mesh change, how long to wait for more before refreshing.
const CHANGE_COALESCE: Duration = Duration::from_millis(100);

/// What an exported object's properties are, for announcing changes.
trait Exported: Interface + Clone + PartialEq {
    /// Every property: its D-Bus name and value.
    fn entries(&self) -> Vec<(&'static str, Variant<'static>)>;
}

macro_rules! exported {
    ($(#[$doc:meta])* $ty:ident, $iface:literal, { $($field:ident: $fty:ty => $prop:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct $ty { $(pub $field: $fty),* }

        #[interface(name = $iface)]
        impl $ty {
            $(
                #[zbus(property, name = $prop)]
                fn $field(&self) -> $fty {
                    self.$field.clone()
                }
            )*
        }

        impl Exported for $ty {
            fn entries(&self) -> Vec<(&'static str, Variant<'static>)> {
                vec![$(($prop, Variant::from(self.$field.clone()))),*]
            }
        }
    };
}

exported!(
    /// The agent itself.
    AgentObject, "org.georep.Agent1", {
        node_id: String => "NodeId",
        cluster: String => "Cluster",
        version: String => "Version",
        load_state: String => "LoadState",
        active_state: String => "ActiveState",
        members_live: u32 => "MembersLive",
        members_dead: u32 => "MembersDead",
    }
);

exported!(
    /// A volume this node has a brick of.
    VolumeObject, "org.georep.Volume1", {
        name: String => "Name",
        id: String => "Id",
        status: String => "Status",
        brickcount: u32 => "Brickcount",
    }
);

exported!(
    /// A brick of this node.
    BrickObject, "org.georep.Brick1", {
        volume: String => "Volume",
        path: String => "Path",
        reachable: bool => "Reachable",
        size_bytes: u64 => "SizeBytes",
        free_bytes: u64 => "FreeBytes",
        device: String => "Device",
    }
);

exported!(
    /// A session this node takes part in.
    SessionObject, "org.georep.Session1", {
        primary: String => "Primary",
        secondary: String => "Secondary",
        desired_state: String => "DesiredState",
        monitor_state: String => "MonitorState",
        workers: Vec<(String, String, String)> => "Workers",
    }
);

/// Every object this node exports, by path.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Objects {
    /// The agent object.
    pub agent: AgentObject,
    /// Volumes by object path.
    pub volumes: BTreeMap<String, VolumeObject>,
    /// Bricks by object path.
    pub bricks: BTreeMap<String, BrickObject>,
    /// Sessions by object path.
    pub sessions: BTreeMap<String, SessionObject>,
}

/// `name` as one object path element (systemd's escaping; never empty).
pub fn path_element(name: &str) -> String {
    if name.is_empty() {
        return "_".to_string();
    }
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("_{byte:02x}"));
        }
    }
    out
}

/// The block device holding `path`, from `/proc/self/mountinfo`'s text: the source of
/// the longest mount point containing it when that is a `/dev/` node, else empty.
pub fn block_device(mountinfo: &str, path: &std::path::Path) -> String {
    let unescape = |s: &str| {
        // mountinfo writes space, tab, newline and backslash as \ooo.
        let mut out = String::new();
        let mut rest = s;
        while let Some(at) = rest.find('\\') {
            out.push_str(&rest[..at]);
            let code = rest
                .get(at + 1..at + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok());
            match code {
                Some(byte) => {
                    out.push(char::from(byte));
                    rest = &rest[at + 4..];
                }
                None => {
                    out.push('\\');
                    rest = &rest[at + 1..];
                }
            }
        }
        out.push_str(rest);
        out
    };
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(mount_point) = fields.get(4).map(|m| unescape(m)) else {
            continue;
        };
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let Some(source) = fields.get(dash + 2).map(|s| unescape(s)) else {
            continue;
        };
        if path.starts_with(&mount_point)
            && best
                .as_ref()
                .is_none_or(|(len, _)| mount_point.len() >= *len)
        {
            best = Some((mount_point.len(), source));
        }
    }
    best.map(|(_, source)| source)
        .filter(|s| s.starts_with("/dev/"))
        .unwrap_or_default()
}

/// Connects to `bus` and takes [`BUS_NAME`], serving the object manager at
/// [`ROOT_PATH`]. Fails when the bus cannot be reached or the name is taken.
pub async fn connect(bus: DbusBus) -> zbus::Result<Connection> {
    let builder = match bus {
        DbusBus::System => zbus::connection::Builder::system(),
        DbusBus::Session => zbus::connection::Builder::session(),
    };
    builder
        .name(BUS_NAME)
        .serve_at(ROOT_PATH, ObjectManager)
        .build()
        .await
}

/// Keeps `connection`'s objects in step with `agent` until `shutdown`, then marks the
/// agent `deactivating` and removes the objects.
pub async fn serve(connection: Connection, agent: Arc<Agent>, shutdown: CancellationToken) {
    let mut shown = Objects::default();
    let mut changes = agent.mesh().subscribe_view();
    let mut first = true;
    loop {
        let mut wanted = agent.dbus_objects().await;
        if shutdown.is_cancelled() {
            wanted.agent.active_state = "deactivating".to_string();
        }
        if first || wanted != shown {
            if let Err(error) = apply(&connection, &shown, &wanted, first).await {
                tracing::warn!(%error, "D-Bus objects not updated");
            }
            shown = wanted;
            first = false;
        }
        if shutdown.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(REFRESH) => {}
            _ = changes.changed() => {
                // Coalesce bursts of mesh changes.
                tokio::time::sleep(CHANGE_COALESCE).await;
            }
        }
    }
    let empty = Objects {
        agent: shown.agent.clone(),
        ..Objects::default()
    };
    if let Err(error) = apply(&connection, &shown, &empty, false).await {
        tracing::debug!(%error, "D-Bus objects not removed");
    }
}

async fn apply(
    connection: &Connection,
    shown: &Objects,
    wanted: &Objects,
    first: bool,
) -> zbus::Result<()> {
    if first {
        connection
            .object_server()
            .at(ROOT_PATH, wanted.agent.clone())
            .await?;
    } else {
        update(connection, ROOT_PATH, &shown.agent, &wanted.agent).await?;
    }
    sync_map(connection, &shown.volumes, &wanted.volumes).await?;
    sync_map(connection, &shown.bricks, &wanted.bricks).await?;
    sync_map(connection, &shown.sessions, &wanted.sessions).await?;
    Ok(())
}

async fn sync_map<T: Exported>(
    connection: &Connection,
    shown: &BTreeMap<String, T>,
    wanted: &BTreeMap<String, T>,
) -> zbus::Result<()> {
    let server = connection.object_server();
    let paths: BTreeSet<&String> = shown.keys().chain(wanted.keys()).collect();
    for path in paths {
        match (shown.get(path), wanted.get(path)) {
            (None, Some(new)) => {
                server.at(path.as_str(), new.clone()).await?;
            }
            (Some(_), None) => {
                server.remove::<T, _>(path.as_str()).await?;
            }
            (Some(old), Some(new)) if old != new => update(connection, path, old, new).await?,
            _ => {}
        }
    }
    Ok(())
}

/// Replaces the object at `path` by `new` and announces the properties that changed.
async fn update<T: Exported>(
    connection: &Connection,
    path: &str,
    old: &T,
    new: &T,
) -> zbus::Result<()> {
    let iface = connection.object_server().interface::<_, T>(path).await?;
    *iface.get_mut().await = new.clone();
    let before: HashMap<&str, Variant<'static>> = old.entries().into_iter().collect();
    let changed: HashMap<&str, Variant<'static>> = new
        .entries()
        .into_iter()
        .filter(|(name, value)| before.get(name) != Some(value))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let emitter = SignalEmitter::new(connection, path)?;
    Properties::properties_changed(
        &emitter,
        T::name(),
        changed,
        std::borrow::Cow::Borrowed(&[]),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_elements_are_escaped_like_systemd() {
        assert_eq!(path_element("gv0"), "gv0");
        assert_eq!(path_element("/bricks/b1"), "_2fbricks_2fb1");
        assert_eq!(path_element("a_b"), "a_5fb");
        assert_eq!(path_element(""), "_");
    }

    #[test]
    fn the_block_device_is_the_longest_mount_containing_the_path() {
        let mountinfo = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /srv rw,relatime shared:2 - tmpfs tmpfs rw
41 22 8:17 / /srv/my\\040disk rw,relatime shared:3 - xfs /dev/sdb1 rw
";
        let device = |p: &str| block_device(mountinfo, std::path::Path::new(p));
        assert_eq!(device("/var/bricks/b1"), "/dev/sda1");
        assert_eq!(device("/srv/b1"), "");
        assert_eq!(device("/srv/my disk/b1"), "/dev/sdb1");
        assert_eq!(device("/srv/my diskette"), "");
    }
}
