//! D-Bus objects over a real bus: a private `dbus-daemon --session` (Debian `dbus`),
//! a real agent started with `--dbus session`, properties read with `busctl` and
//! signals recorded by `busctl monitor` while a session goes through its lifecycle.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use georep_tests::{Cluster, NodeSpec, Placement, TEST_MONITOR};
use serde_json::Value;

const SECONDARY: &str = "n2::gv1";
const NAME: &str = "org.georep.Agent";

/// A child process killed (and reaped) when dropped, also when the test fails.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private session bus listening on a socket under `dir`; its address.
fn session_bus(dir: &Path) -> (Reaped, String) {
    let address = format!("unix:path={}", dir.join("bus").display());
    start_bus(&["--session".to_string()], &address)
}

/// Runs `dbus-daemon` with `config` in the foreground on `address`, once it listens.
fn start_bus(config: &[String], address: &str) -> (Reaped, String) {
    let mut child = Command::new("dbus-daemon")
        .args(config)
        .args(["--nofork", "--nopidfile", "--print-address=1"])
        .arg(format!("--address={address}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon (.ci/run installs Debian's dbus)");
    // It prints its address once it listens.
    let mut line = String::new();
    let stdout = child.stdout.take().expect("dbus-daemon stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("dbus-daemon address");
    assert!(
        line.starts_with("unix:path="),
        "dbus-daemon printed {line:?}"
    );
    (Reaped(child), address.to_string())
}

fn busctl(address: &str, args: &[&str]) -> std::process::Output {
    Command::new("busctl")
        .arg(format!("--address={address}"))
        .args(args)
        .output()
        .expect("busctl (systemd)")
}

/// A property's value as busctl prints it in JSON (`{"type":..,"data":..}`).
fn property(address: &str, path: &str, interface: &str, name: &str) -> Option<Value> {
    let out = busctl(
        address,
        &["--json=short", "get-property", NAME, path, interface, name],
    );
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .map(|v| v["data"].clone())
}

fn object_paths(address: &str) -> Vec<String> {
    let out = busctl(address, &["tree", "--list", NAME]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `busctl monitor` of everything the agent emits, one JSON message per line.
fn record_signals(address: &str) -> (Reaped, Arc<Mutex<Vec<Value>>>) {
    let mut child = Command::new("busctl")
        .arg(format!("--address={address}"))
        .args(["monitor", "--json=short", NAME])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("busctl monitor");
    let stdout = child.stdout.take().expect("busctl stdout");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(message) = serde_json::from_str::<Value>(&line) {
                sink.lock().unwrap().push(message);
            }
        }
    });
    (Reaped(child), seen)
}

/// The values a property took in PropertiesChanged signals of `path`, in order.
fn changes_of(seen: &Mutex<Vec<Value>>, path: &str, name: &str) -> Vec<Value> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|m| m["member"] == "PropertiesChanged" && m["path"] == path)
        .filter_map(|m| m["payload"]["data"][1].get(name).map(|v| v["data"].clone()))
        .collect()
}

fn signals_named(seen: &Mutex<Vec<Value>>, member: &str) -> Vec<Value> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|m| m["member"] == member)
        .cloned()
        .collect()
}

#[test]
fn objects_and_signals_follow_a_session_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, address) = session_bus(dir.path());
    let (_monitor, seen) = record_signals(&address);
    let placement = |launcher: Vec<String>| Placement {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], georep_tests::free_port())),
        launcher,
        extra_args: Vec::new(),
    };
    let mut cluster = Cluster::start_placed(
        &[
            NodeSpec::new("n1", &["gv0:/bricks/n1/gv0"]).with_args(&["--dbus", "session"]),
            NodeSpec::new("n2", &["gv1:/bricks/n2/gv1"]),
        ],
        Some(TEST_MONITOR),
        georep_tests::TEST_GOSSIP_MS,
        vec![
            placement(vec![
                "/usr/bin/env".into(),
                format!("DBUS_SESSION_BUS_ADDRESS={address}"),
            ]),
            placement(Vec::new()),
        ],
    );
    cluster.wait_live(0, 2, Duration::from_secs(30));
    let root = "/org/georep/Agent";
    wait_for("the agent object", Duration::from_secs(20), || {
        property(&address, root, "org.georep.Agent1", "MembersLive") == Some(Value::from(2))
    });
    assert_eq!(
        property(&address, root, "org.georep.Agent1", "NodeId"),
        Some(Value::from("n1"))
    );
    assert_eq!(
        property(&address, root, "org.georep.Agent1", "ActiveState"),
        Some(Value::from("active"))
    );
    let version = property(&address, root, "org.georep.Agent1", "Version").unwrap();
    assert!(version.as_str().unwrap().starts_with("0.1.0"), "{version}");

    // The local volume and brick, with the seed's volume keys.
    let volume = format!("{root}/volumes/gv0");
    assert_eq!(
        property(&address, &volume, "org.georep.Volume1", "Name"),
        Some(Value::from("gv0"))
    );
    assert_eq!(
        property(&address, &volume, "org.georep.Volume1", "Status"),
        Some(Value::from("online"))
    );
    assert_eq!(
        property(&address, &volume, "org.georep.Volume1", "Brickcount"),
        Some(Value::from(1))
    );
    let args = cluster.agent_args(0);
    let brick_path = args
        .iter()
        .position(|a| a == "--brick")
        .and_then(|i| args[i + 1].strip_prefix("gv0:"))
        .expect("n1's brick")
        .to_string();
    let brick_object = object_paths(&address)
        .into_iter()
        .find(|p| p.starts_with(&format!("{root}/bricks/")))
        .expect("a brick object");
    assert_eq!(
        property(&address, &brick_object, "org.georep.Brick1", "Path"),
        Some(Value::from(brick_path.as_str()))
    );
    assert_eq!(
        property(&address, &brick_object, "org.georep.Brick1", "Reachable"),
        Some(Value::from(true))
    );
    let free = property(&address, &brick_object, "org.georep.Brick1", "FreeBytes").unwrap();
    assert!(free.as_u64().unwrap() > 0, "{free}");
    // n2's volume is not local to n1: no object for it.
    assert!(!object_paths(&address).iter().any(|p| p.ends_with("/gv1")));

    // A session through its lifecycle: the object appears, its properties change with
    // PropertiesChanged, and it goes away on delete.
    cluster.ok(1, &["create", "gv0", SECONDARY]);
    let session = format!("{root}/sessions/gv0_5fn2_5fgv1");
    wait_for("the session object", Duration::from_secs(20), || {
        property(&address, &session, "org.georep.Session1", "DesiredState")
            == Some(Value::from("Created"))
    });
    assert_eq!(
        property(&address, &session, "org.georep.Session1", "Secondary"),
        Some(Value::from(SECONDARY))
    );
    for (command, desired, monitor) in [
        ("start", "Started", "Started"),
        ("pause", "Paused", "Paused"),
        ("resume", "Started", "Started"),
        ("stop", "Stopped", "Stopped"),
    ] {
        cluster.ok(1, &[command, "gv0", SECONDARY]);
        wait_for(
            &format!("MonitorState {monitor} after {command}"),
            Duration::from_secs(20),
            || {
                property(&address, &session, "org.georep.Session1", "MonitorState")
                    == Some(Value::from(monitor))
                    && property(&address, &session, "org.georep.Session1", "DesiredState")
                        == Some(Value::from(desired))
            },
        );
    }
    wait_for(
        "PropertiesChanged of every step",
        Duration::from_secs(10),
        || {
            changes_of(&seen, &session, "DesiredState")
                == ["Started", "Paused", "Started", "Stopped"].map(Value::from)
        },
    );
    let monitor_states = changes_of(&seen, &session, "MonitorState");
    assert!(
        monitor_states.contains(&Value::from("Paused")),
        "{monitor_states:?}"
    );
    cluster.ok(1, &["delete", "gv0", SECONDARY]);
    wait_for(
        "the session object removed",
        Duration::from_secs(20),
        || !object_paths(&address).contains(&session),
    );
    // The object manager announced the session's coming and going.
    let announced = |member: &str| {
        signals_named(&seen, member)
            .iter()
            .any(|m| m["payload"]["data"][0] == session.as_str())
    };
    wait_for("InterfacesAdded/Removed", Duration::from_secs(10), || {
        announced("InterfacesAdded") && announced("InterfacesRemoved")
    });

    // The volume degrades when the other... n1's own brick going away makes it offline.
    std::fs::rename(&brick_path, format!("{brick_path}.moved")).unwrap();
    wait_for("the brick unreachable", Duration::from_secs(60), || {
        property(&address, &brick_object, "org.georep.Brick1", "Reachable")
            == Some(Value::from(false))
    });
    wait_for("Reachable announced", Duration::from_secs(10), || {
        changes_of(&seen, &brick_object, "Reachable").contains(&Value::from(false))
    });
    std::fs::rename(format!("{brick_path}.moved"), &brick_path).unwrap();

    // Stopping the agent: ActiveState deactivating, then the name is gone.
    cluster.terminate(0);
    wait_for("ActiveState deactivating", Duration::from_secs(10), || {
        changes_of(&seen, root, "ActiveState").contains(&Value::from("deactivating"))
    });
    assert!(property(&address, root, "org.georep.Agent1", "NodeId").is_none());
}

#[test]
fn an_unreachable_bus_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(
        &[NodeSpec::new("n1", &["gv0:/bricks/n1/gv0"])],
        Some(TEST_MONITOR),
    );
    cluster.terminate(0);
    let out = cluster
        .agent_command(0)
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            format!("unix:path={}", dir.path().join("nobus").display()),
        )
        .args(["--dbus", "session"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot export D-Bus objects as org.georep.Agent on the session bus"),
        "{stderr}"
    );
}

/// A system bus configured as Debian's (`/usr/share/dbus-1/system.conf`: default deny),
/// with or without the package's policy for our name; its address.
fn system_bus(dir: &Path, with_policy: bool) -> (Reaped, String) {
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/org.georep.Agent.conf");
    let include = if with_policy {
        format!("<include>{}</include>", policy.display())
    } else {
        String::new()
    };
    let config = dir.join("system.conf");
    std::fs::write(
        &config,
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
             <busconfig><include>/usr/share/dbus-1/system.conf</include>{include}</busconfig>\n"
        ),
    )
    .unwrap();
    // The bus drops to its own user: it must reach its socket's directory.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let address = format!("unix:path={}", dir.join("system_bus_socket").display());
    start_bus(&[format!("--config-file={}", config.display())], &address)
}

#[test]
fn the_packaged_policy_lets_the_agent_own_its_name_on_the_system_bus() {
    // Without the policy, Debian's default-deny system bus refuses the name: the
    // agent says so and exits.
    let dir = tempfile::tempdir().unwrap();
    let (_bus, address) = system_bus(dir.path(), false);
    let mut cluster = Cluster::start(
        &[NodeSpec::new("n1", &["gv0:/bricks/n1/gv0"])],
        Some(TEST_MONITOR),
    );
    cluster.terminate(0);
    let out = cluster
        .agent_command(0)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
        .args(["--dbus", "system"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("on the system bus"), "{stderr}");
    drop(_bus);

    // With it: root's agent owns the name and an unprivileged user reads its objects.
    let dir = tempfile::tempdir().unwrap();
    let (_bus, address) = system_bus(dir.path(), true);
    let mut agent = Reaped(
        cluster
            .agent_command(0)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .args(["--dbus", "system"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let read_as_nobody = || {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"])
            .arg(format!("--address={address}"))
            .args([
                "--json=short",
                "get-property",
                NAME,
                "/org/georep/Agent",
                "org.georep.Agent1",
                "NodeId",
            ])
            .output()
            .expect("setpriv (util-linux)")
    };
    wait_for(
        "the name owned and readable",
        Duration::from_secs(20),
        || {
            assert!(
                agent.0.try_wait().unwrap().is_none(),
                "the agent exited: see its log"
            );
            let out = read_as_nobody();
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"n1\"")
        },
    );
}
