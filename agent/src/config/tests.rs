//! Unit tests of `config`.
use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: AgentArgs,
}

fn args(argv: &[&str]) -> AgentArgs {
    Cli::try_parse_from(std::iter::once("georepd").chain(argv.iter().copied()))
        .expect("flags parse")
        .args
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("georepd.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn load_file(text: &str, extra: &[&str]) -> (Result<AgentConfig, ConfigError>, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), text);
    let mut argv = vec!["--config", path.to_str().expect("utf-8 path")];
    argv.extend_from_slice(extra);
    (AgentConfig::load(&args(&argv)), path)
}

fn err_line(text: &str, extra: &[&str]) -> String {
    let (res, path) = load_file(text, extra);
    let msg = res.expect_err("config must be refused").to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    msg.replace(&path.display().to_string(), "FILE")
}

#[test]
fn defaults_from_flags_only() {
    let cfg =
        AgentConfig::load(&args(&["--node-id", "n1", "--data-dir", "/var/lib/g"])).expect("valid");
    let d = Path::new("/var/lib/g");
    assert_eq!(cfg.cluster_id, "georep");
    assert_eq!(cfg.listen, "127.0.0.1:7400".parse().unwrap());
    assert_eq!(cfg.advertise, cfg.listen);
    assert_eq!(cfg.api_socket, Path::new(DEFAULT_API_SOCKET));
    assert_eq!(cfg.tls_ca, d.join("tls/ca.crt"));
    assert_eq!(cfg.tls_cert, d.join("tls/n1.crt"));
    assert_eq!(cfg.tls_key, d.join("tls/n1.key"));
    assert_eq!(cfg.gossip_interval_ms, 500);
    assert!(cfg.seeds.is_empty() && cfg.bricks.is_empty());
    assert_eq!(cfg.monitor_command, None);
    assert_eq!(cfg.authorized_keys, None);
}

#[test]
fn missing_required_values_are_named() {
    let e = AgentConfig::load(&args(&["--data-dir", "/d"])).unwrap_err();
    assert!(e.to_string().starts_with("node_id: required"), "{e}");
    let e = AgentConfig::load(&args(&["--node-id", "n"])).unwrap_err();
    assert!(e.to_string().starts_with("data_dir: required"), "{e}");
}

const FILE: &str = r#"
cluster_id = "prod"
node_id = "file-node"
data_dir = "/srv/georep"
listen = "0.0.0.0:7400"
advertise = "10.0.0.1:7400"
seeds = ["10.0.0.2:7400", "10.0.0.3:7400"]
gossip_interval_ms = 250
monitor_command = "/usr/bin/mon --session {session} --bricks {bricks}"
webhook_backoff_max = "30s"
inject_delay = ["10.0.0.0/24=40ms~5ms", "10.0.0.3=1s"]

[[brick]]
volume = "gv0"
path = "/bricks/b1"
replica_set = 1

[[brick]]
volume = "gv0"
path = "/bricks/b2"
"#;

/// The commented example shipped as `/etc/georep/georepd.toml`.
const EXAMPLE: &str = include_str!("../../georepd.toml");

#[test]
fn the_shipped_example_loads_and_its_commented_values_are_the_defaults() {
    let (shipped, _) = load_file(EXAMPLE, &[]);
    let shipped = shipped.expect("the example file is valid as shipped");
    let uncommented: String = EXAMPLE
        .lines()
        .map(|line| line.strip_prefix("# ").unwrap_or(line))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(uncommented.contains("\ngossip_interval_ms = 500\n"));
    let (explicit, _) = load_file(&uncommented, &[]);
    assert_eq!(
        explicit.expect("every documented key parses"),
        shipped,
        "a `# key = value` line of the example is not that key's default"
    );
    for key in [
        "cluster_id",
        "listen",
        "advertise",
        "seeds",
        "api_socket",
        "tls_ca",
        "tls_cert",
        "tls_key",
        "gossip_interval_ms",
        "monitor_command",
        "[[brick]]",
        "replica_set",
        "authorized_keys",
        "ssh_gsyncd_command",
        "metrics_listen",
        "dbus",
        "data_listen",
        "events_max_bytes",
        "monitor_log_max_bytes",
        "events_max_age",
        "ssh_tar_command",
        "monitor_restart_max",
        "webhook_backoff_max",
        "webhook_park_after",
        "inject_delay",
        "monitor = ",
        "bricks_from_glusterd",
    ] {
        assert!(EXAMPLE.contains(key), "the example does not mention {key}");
    }
}

#[test]
fn the_gsyncd_profile_and_glusterds_bricks_exclude_what_they_replace() {
    let minimal = "node_id = \"n\"\ndata_dir = \"/srv/georep\"\n";
    let (cfg, _) = load_file(
        &format!("{minimal}monitor = \"gsyncd\"\nbricks_from_glusterd = true\n"),
        &[],
    );
    let cfg = cfg.expect("valid");
    assert_eq!(cfg.monitor, MonitorProfile::Gsyncd);
    assert!(cfg.bricks_from_glusterd && cfg.bricks.is_empty());
    let msg = err_line(
        &format!("{minimal}monitor = \"gsyncd\"\nmonitor_command = \"/bin/mon\"\n"),
        &[],
    );
    assert!(
        msg.contains("exclude each other") && msg.contains("/bin/mon"),
        "{msg}"
    );
    let msg = err_line(
        &format!("{minimal}bricks_from_glusterd = true\n"),
        &["--brick", "gv0:/bricks/b1"],
    );
    assert!(
        msg.contains("bricks from glusterd and listed bricks"),
        "{msg}"
    );
    let msg = err_line(&format!("{minimal}monitor = \"gsync\"\n"), &[]);
    assert!(msg.contains("monitor"), "{msg}");
}

#[test]
fn file_values_are_read() {
    let (cfg, _) = load_file(FILE, &[]);
    let cfg = cfg.expect("valid");
    assert_eq!(cfg.cluster_id, "prod");
    assert_eq!(cfg.node_id, "file-node");
    assert_eq!(cfg.advertise, "10.0.0.1:7400".parse().unwrap());
    assert_eq!(cfg.seeds, ["10.0.0.2:7400", "10.0.0.3:7400"]);
    assert_eq!(cfg.gossip_interval_ms, 250);
    assert_eq!(
        cfg.bricks,
        [
            BrickSpec {
                volume: "gv0".into(),
                path: "/bricks/b1".into(),
                replica_set: 1
            },
            BrickSpec {
                volume: "gv0".into(),
                path: "/bricks/b2".into(),
                replica_set: 0
            },
        ]
    );
    assert_eq!(cfg.tls_cert, Path::new("/srv/georep/tls/file-node.crt"));
    assert_eq!(
        cfg.inject_delay
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.0.0.0/24=40ms~5ms", "10.0.0.3=1s"]
    );
}

#[test]
fn flags_override_file() {
    let (cfg, _) = load_file(
        FILE,
        &[
            "--node-id",
            "flag-node",
            "--seed",
            "192.168.1.1:1",
            "--brick",
            "gv9:/b/x:3",
            "--gossip-interval-ms",
            "1000",
            "--advertise",
            "10.9.9.9:7401",
            "--api-socket",
            "/run/g.sock",
        ],
    );
    let cfg = cfg.expect("valid");
    assert_eq!(cfg.node_id, "flag-node");
    assert_eq!(cfg.seeds, ["192.168.1.1:1"]);
    assert_eq!(
        cfg.bricks,
        [BrickSpec {
            volume: "gv9".into(),
            path: "/b/x".into(),
            replica_set: 3
        }]
    );
    assert_eq!(cfg.gossip_interval_ms, 1000);
    assert_eq!(cfg.advertise, "10.9.9.9:7401".parse().unwrap());
    assert_eq!(cfg.api_socket, Path::new("/run/g.sock"));
    // Not overridden: kept from the file.
    assert_eq!(cfg.webhook_backoff_max_ms, 30_000);
    assert_eq!(cfg.cluster_id, "prod");
    // Derived defaults follow the effective node id.
    assert_eq!(cfg.tls_key, Path::new("/srv/georep/tls/flag-node.key"));
}

#[test]
fn serialized_config_loads_back_identically() {
    let (cfg, _) = load_file(FILE, &[]);
    let cfg = cfg.expect("valid");
    let text = toml::to_string(&cfg).expect("serialize");
    let (again, _) = load_file(&text, &[]);
    assert_eq!(again.expect("valid"), cfg);
}

#[test]
fn missing_file_is_named() {
    let e = AgentConfig::load(&args(&["--config", "/nonexistent/georepd.toml"])).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("/nonexistent/georepd.toml: cannot read configuration file"),
        "{msg}"
    );
}

#[test]
fn malformed_toml_names_line_and_key() {
    let msg = err_line(
        "node_id = \"n\"\ndata_dir = \"/d\"\nlisten = \"127.0.0.1:7400\n",
        &[],
    );
    assert!(msg.starts_with("FILE:3:"), "{msg}");
    assert!(msg.contains("listen: "), "{msg}");
}

#[test]
fn unknown_key_is_named_with_line() {
    let msg = err_line(
        "node_id = \"n\"\ndata_dir = \"/d\"\n\ngosip_interval_ms = 5\n",
        &[],
    );
    assert!(
        msg.starts_with("FILE:4:1: gosip_interval_ms: unknown field"),
        "{msg}"
    );
    let msg = err_line(
        "node_id = \"n\"\ndata_dir = \"/d\"\n[[brick]]\nvolume = \"gv0\"\npth = \"/b\"\n",
        &[],
    );
    assert!(
        msg.starts_with("FILE:5:1: brick[0].pth: unknown field"),
        "{msg}"
    );
    let msg = err_line(
        "node_id = \"n\"\n[[brick]]\nvolume = \"a\"\npath = \"/a\"\n\n[[brick]]\nvolume = 7\n",
        &[],
    );
    assert!(
        msg.starts_with("FILE:7:10: brick[1].volume: invalid type"),
        "{msg}"
    );
    // A value inside an array spread over lines: the element is named.
    let msg = err_line("node_id = \"n\"\nseeds = [\n  \"a:1\",\n  5,\n]\n", &[]);
    assert!(msg.starts_with("FILE:4:3: seeds[1]: invalid type"), "{msg}");
}

#[test]
fn wrong_type_is_named_with_line() {
    let msg = err_line(
        "node_id = \"n\"\ndata_dir = \"/d\"\ngossip_interval_ms = \"fast\"\n",
        &[],
    );
    assert!(msg.starts_with("FILE:3:22: gossip_interval_ms: "), "{msg}");
    let msg = err_line(
        "node_id = \"n\"\ndata_dir = \"/d\"\nlisten = \"nowhere\"\n",
        &[],
    );
    assert!(msg.starts_with("FILE:3:10: listen: "), "{msg}");
}

#[test]
fn semantic_errors_in_file_name_line_and_key() {
    let msg = err_line("node_id = \"bad id\"\ndata_dir = \"/d\"\n", &[]);
    assert!(
        msg.starts_with("FILE:1:11: node_id: character ' '"),
        "{msg}"
    );
    let msg = err_line(
        "node_id = \"n\"\ndata_dir = \"/d\"\n[[brick]]\nvolume = \"gv0\"\npath = \"/a\"\n\
         [[brick]]\nvolume = \"gv0\"\npath = \"rel\"\n",
        &[],
    );
    assert!(
        msg.starts_with("FILE:8:8: brick[1].path: path must be absolute"),
        "{msg}"
    );
    let msg = err_line(
        "node_id = \"n\"\ndata_dir = \"/d\"\ngossip_interval_ms = 5\n",
        &[],
    );
    assert!(
        msg.starts_with("FILE:3:22: gossip_interval_ms: 5 is out of range"),
        "{msg}"
    );
    let msg = err_line(
        "node_id = \"n\"\ndata_dir = \"/d\"\nwebhooks = [\"https://x\"]\n",
        &[],
    );
    assert!(
        msg.starts_with("FILE:3:12: webhooks: webhooks are cluster state now: add them with `georep webhook add URL`"),
        "{msg}"
    );
}

#[test]
fn bad_brick_flags() {
    let base = ["--node-id", "n", "--data-dir", "/d"];
    let load = |brick: &str| {
        let mut argv = base.to_vec();
        argv.extend(["--brick", brick]);
        AgentConfig::load(&args(&argv)).map_err(|e| e.to_string())
    };
    assert_eq!(
        load("gv0:rel/path").unwrap_err(),
        r#"--brick "gv0:rel/path": path must be absolute"#
    );
    assert!(
        load("gv0")
            .unwrap_err()
            .contains("expected VOL:PATH[:REPLICA_SET]")
    );
    for bad in ["g v:/b", ":/b"] {
        assert!(
            load(bad).unwrap_err().contains("not starting with '-'"),
            "{bad}"
        );
    }
    assert!(load("gv0:").unwrap_err().contains("brick path is empty"));
    let ok = load("gv0:/b:7").expect("valid");
    assert_eq!(ok.bricks[0].replica_set, 7);
    let not_a_number = |n: &str| format!("replica set {n:?} is not a number from 0 to 4294967295");
    for (bad, reason) in [
        ("gv0:/b:99999999999", not_a_number("99999999999")),
        ("gv0:/x:abc", not_a_number("abc")),
        ("gv0:/x:-1", not_a_number("-1")),
        ("gv0:/x:", not_a_number("")),
        ("gv0:/a,b", "path may not contain ','".to_owned()),
        ("gv0:/a,b:1", "path may not contain ','".to_owned()),
    ] {
        assert_eq!(load(bad).unwrap_err(), format!("--brick {bad:?}: {reason}"));
    }
    let mut argv = base.to_vec();
    argv.extend(["--brick", "gv0:/b", "--brick", "gv0:/b:2"]);
    let e = AgentConfig::load(&args(&argv)).unwrap_err().to_string();
    assert!(e.contains("listed twice"), "{e}");
}

fn load_delays(delays: &[&str]) -> Result<AgentConfig, String> {
    let mut argv = vec!["--node-id", "n", "--data-dir", "/d"];
    for d in delays {
        argv.extend(["--inject-delay", d]);
    }
    AgentConfig::load(&args(&argv)).map_err(|e| e.to_string())
}

#[test]
fn inject_delay_flags_parse() {
    let cfg = load_delays(&[
        "10.77.2.0/24=40ms~5ms",
        "10.213.0.21=80ms",
        "fd00::/64=250us",
    ])
    .expect("valid");
    assert_eq!(
        cfg.inject_delay,
        [
            DelayRule {
                network: "10.77.2.0/24".parse().unwrap(),
                delay: Duration::from_millis(40),
                jitter: Duration::from_millis(5),
            },
            DelayRule {
                network: "10.213.0.21/32".parse().unwrap(),
                delay: Duration::from_millis(80),
                jitter: Duration::ZERO,
            },
            DelayRule {
                network: "fd00::/64".parse().unwrap(),
                delay: Duration::from_micros(250),
                jitter: Duration::ZERO,
            },
        ]
    );
    // Canonical spelling: the largest whole unit.
    let cfg = load_delays(&["10.0.0.1=1000ms~1500us", "10.0.0.2=0s~60s"]).expect("valid");
    let shown: Vec<String> = cfg.inject_delay.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["10.0.0.1=1s~1500us", "10.0.0.2=0ms~60s"]);
    assert!(load_delays(&[]).expect("valid").inject_delay.is_empty());
}

#[test]
fn bad_inject_delay_flags_say_what_is_wrong() {
    let err = |d: &str| {
        let e = load_delays(&[d]).expect_err("must be refused");
        assert!(!e.contains('\n'), "one line: {e}");
        e
    };
    assert_eq!(
        err("10.77.2.0/24"),
        r#"--inject-delay "10.77.2.0/24": expected NETWORK=DELAY[~JITTER], e.g. 10.77.2.0/24=40ms~5ms"#
    );
    assert_eq!(
        err("10.77.2.5/24=40ms"),
        r#"--inject-delay "10.77.2.5/24=40ms": network: 10.77.2.5/24 has host bits set (did you mean 10.77.2.0/24?)"#
    );
    assert_eq!(
        err("site-b=40ms"),
        r#"--inject-delay "site-b=40ms": network: "site-b" is not an IP address (expected ADDR or ADDR/PREFIX, e.g. 10.77.2.0/24)"#
    );
    assert!(err("10.0.0.0/40=1ms").contains("network: prefix \"40\" is not a number from 0 to 32"));
    assert_eq!(
        err("10.0.0.1=40"),
        r#"--inject-delay "10.0.0.1=40": delay: "40" is not a duration with a unit (e.g. 40ms, 250us): time unit needed, for example 40sec or 40ms"#
    );
    assert!(err("10.0.0.1=").contains("delay: \"\" is not a duration"));
    assert!(err("10.0.0.1=ms").contains("delay: \"ms\" is not a duration"));
    assert!(err("10.0.0.1=-5ms").contains("delay: \"-5ms\""));
    assert!(err("10.0.0.1=40ms~").contains("jitter: \"\" is not a duration"));
    assert_eq!(
        err("10.0.0.1=40ms~61s"),
        r#"--inject-delay "10.0.0.1=40ms~61s": jitter: 61s is longer than 60s"#
    );
    assert!(err("10.0.0.1=99999999999999999999s").contains("too large"));
    let e = load_delays(&["10.0.0.0/8=1ms", "10.0.0.0/8=2ms"]).unwrap_err();
    assert_eq!(
        e,
        r#"--inject-delay "10.0.0.0/8=2ms": network 10.0.0.0/8 is listed twice"#
    );
    // The same address written two ways is the same network.
    let e = load_delays(&["10.0.0.1=1ms", "10.0.0.1/32=2ms"]).unwrap_err();
    assert!(e.contains("listed twice"), "{e}");
}

#[test]
fn inject_delay_in_the_file_and_flags_replacing_it() {
    let msg = err_line(
        "node_id = \"n\"\ndata_dir = \"/d\"\ninject_delay = [\"10.0.0.0/24=5ms\", \"10.0.0.1=5\"]\n",
        &[],
    );
    assert!(
        msg.starts_with("FILE:3:36: inject_delay[1]: delay: \"5\" is not a duration"),
        "{msg}"
    );
    let (cfg, _) = load_file(FILE, &["--inject-delay", "10.9.0.0/16=7ms"]);
    let cfg = cfg.expect("valid");
    assert_eq!(cfg.inject_delay.len(), 1);
    assert_eq!(cfg.inject_delay[0].to_string(), "10.9.0.0/16=7ms");
}

#[test]
fn fault_injection_delays_only_the_listed_networks() {
    let cfg = load_delays(&[]).expect("valid");
    assert!(cfg.fault_injection().is_none());
    let cfg = load_delays(&["10.77.2.0/24=80ms", "10.77.2.9=0ms"]).expect("valid");
    let faults = cfg.fault_injection().expect("asked for");
    let from: SocketAddr = "10.77.1.1:7400".parse().unwrap();
    let delay = |to: &str| faults.faults_for(from, to.parse().unwrap()).delay;
    assert_eq!(delay("10.77.2.1:7400"), Duration::from_millis(80));
    assert_eq!(delay("10.77.2.9:7400"), Duration::ZERO);
    assert_eq!(delay("10.77.1.2:7400"), Duration::ZERO);
}

#[test]
fn advertise_is_required_with_unspecified_listen() {
    let e = AgentConfig::load(&args(&[
        "--node-id",
        "n",
        "--data-dir",
        "/d",
        "--listen",
        "0.0.0.0:7400",
    ]))
    .unwrap_err();
    assert!(e.to_string().starts_with("advertise: required"), "{e}");
    let e = AgentConfig::load(&args(&[
        "--node-id",
        "n",
        "--data-dir",
        "/d",
        "--advertise",
        "0.0.0.0:7400",
    ]))
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("--advertise \"0.0.0.0:7400\": must be"),
        "{e}"
    );
}

#[test]
fn bad_seed_and_ids() {
    let e = AgentConfig::load(&args(&[
        "--node-id",
        "n",
        "--data-dir",
        "/d",
        "--seed",
        "host-without-port",
    ]))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"--seed "host-without-port": not an ADDR:PORT socket address"#
    );
    let long = "x".repeat(65);
    let e = AgentConfig::load(&args(&["--node-id", &long, "--data-dir", "/d"])).unwrap_err();
    assert!(e.to_string().contains("1 to 64 characters"), "{e}");
}

#[test]
fn bad_placeholder_is_refused() {
    let base = ["--node-id", "n", "--data-dir", "/d", "--monitor-command"];
    let load = |cmd: &str| {
        let mut argv = base.to_vec();
        argv.push(cmd);
        AgentConfig::load(&args(&argv)).map_err(|e| e.to_string())
    };
    let e = load("mon {sesion}").unwrap_err();
    assert!(
        e.starts_with(r#"--monitor-command "mon {sesion}": unknown placeholder {sesion}"#),
        "{e}"
    );
    assert!(load("mon {session").unwrap_err().contains("unmatched '{'"));
    assert!(
        load("mon 'unterminated")
            .unwrap_err()
            .contains("missing closing quote")
    );
    assert!(load("   ").unwrap_err().contains("is empty"));
    assert!(load("awk '{{print}}' {session_dir}").is_ok());
}

#[test]
fn forced_commands_default_to_glusters_and_refuse_quotes() {
    let cfg = AgentConfig::load(&args(&["--node-id", "n1", "--data-dir", "/d"])).unwrap();
    assert_eq!(cfg.ssh_gsyncd_command, DEFAULT_GSYNCD_COMMAND);
    assert_eq!(cfg.ssh_tar_command, "tar ${SSH_ORIGINAL_COMMAND#* }");
    let e = AgentConfig::load(&args(&[
        "--node-id",
        "n1",
        "--data-dir",
        "/d",
        "--ssh-tar-command",
        "x\" y",
    ]))
    .unwrap_err();
    assert!(e.to_string().contains("--ssh-tar-command"), "{e}");
    assert!(e.to_string().contains("double quotes"), "{e}");
}
