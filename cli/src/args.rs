//! The command line of `georep` (cli.md "georep (the CLI)"), as clap derive
//! types, and the resolved global options every command receives.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::Client;

/// Environment variable naming the agent's socket when `--socket` is absent.
pub const SOCKET_ENV: &str = "GEOREP_SOCKET";
/// Agent socket when neither `--socket` nor [`SOCKET_ENV`] is given: where `georepd`
/// serves by default.
pub const DEFAULT_SOCKET: &str = georep_api::DEFAULT_API_SOCKET;
/// Default `--timeout`, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// Largest accepted `--timeout`: the agent caps any wait at 10 minutes.
const MAX_TIMEOUT_SECS: u64 = 600;

/// `georep`: manage geo-replication sessions through the local georepd.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(name = "georep", version = georep_api::VERSION, about, propagate_version = true)]
pub struct Cli {
    /// Options accepted before or after the subcommand.
    #[command(flatten)]
    pub globals: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--timeout` help for commands that change something.
const TIMEOUT_CHANGE: &str = "Seconds to wait for every live node to confirm the change (and, for start, stop, pause, resume and delete, every live primary's monitor); exit 4 if they do not in time";
/// `--timeout` help for `config`, which reads or changes.
const TIMEOUT_CONFIG: &str = "Setting or resetting: seconds to wait for every live node to confirm (exit 4 if they do not in time). Listing and getting: unused (an agent that does not answer within 5 s is exit 3)";
/// `--timeout` help for commands that only read.
const TIMEOUT_READ: &str = "Unused: a read waits at most 5 s for the agent (exit 3 if it does not answer); accepted so scripts may pass it everywhere";

/// The `georep` command line, its `--timeout` help written for each subcommand (a
/// global option's help is otherwise the same everywhere).
///
/// Each subcommand gets its own copy of the global `--timeout` with its own help. clap
/// propagates a global option only into subcommands that lack one of that id, and hands
/// the value up to the top level whichever copy parsed it, so `--timeout` still works
/// before or after the subcommand; a copy is itself global, so nested subcommands
/// (`inspect members`, `tls ca create`) inherit their parent's.
pub fn command() -> clap::Command {
    let mut cli = <Cli as clap::CommandFactory>::command();
    let Some(timeout) = cli
        .get_arguments()
        .find(|arg| arg.get_id() == "timeout")
        .cloned()
    else {
        return cli;
    };
    let names: Vec<String> = cli
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    for name in names {
        let copy = match name.as_str() {
            "create" | "start" | "stop" | "pause" | "resume" | "delete" | "node" | "webhook" => {
                timeout.clone().help(TIMEOUT_CHANGE)
            }
            "config" => timeout.clone().help(TIMEOUT_CONFIG),
            "status" | "exists" | "running" | "nodes" | "inspect" => {
                timeout.clone().help(TIMEOUT_READ)
            }
            // tls and demo talk to no agent.
            _ => timeout.clone().hide(true),
        };
        cli = cli.mut_subcommand(&name, |sub| with_timeout(sub, copy));
    }
    cli
}

/// `sub` and every subcommand under it with `timeout` as their `--timeout`.
fn with_timeout(sub: clap::Command, timeout: clap::Arg) -> clap::Command {
    let names: Vec<String> = sub
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    let mut sub = sub.arg(timeout.clone());
    for name in names {
        sub = sub.mut_subcommand(&name, |inner| with_timeout(inner, timeout.clone()));
    }
    sub
}

/// Options accepted before or after the subcommand.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct GlobalArgs {
    /// The agent's local API socket [default: $GEOREP_SOCKET, else /run/georep/georepd.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Machine-readable output (one JSON object) on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds a change waits for every live node to confirm it (each subcommand's
    /// --help says what it means there).
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        default_value_t = DEFAULT_TIMEOUT_SECS,
        value_parser = parse_timeout
    )]
    pub timeout: u64,
}

/// `--timeout`: whole seconds (`30`) or a duration (`30s`, `2m`), 1 s to 10 min.
fn parse_timeout(text: &str) -> Result<u64, String> {
    let secs = match text.parse::<u64>() {
        Ok(secs) => secs,
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("{e} (seconds, or a duration such as 30s or 2m)"))?
            .as_secs(),
    };
    if !(1..=MAX_TIMEOUT_SECS).contains(&secs) {
        return Err(format!("must be 1 to {MAX_TIMEOUT_SECS} seconds"));
    }
    Ok(secs)
}

impl GlobalArgs {
    /// Resolves the options against the process environment.
    pub fn resolve(&self) -> Globals {
        self.resolve_with(std::env::var_os(SOCKET_ENV))
    }

    /// Resolves the options, `env_socket` standing for `$GEOREP_SOCKET`.
    pub fn resolve_with(&self, env_socket: Option<OsString>) -> Globals {
        let socket = self
            .socket
            .clone()
            .or_else(|| env_socket.filter(|s| !s.is_empty()).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Globals {
            socket,
            json: self.json,
            timeout: Duration::from_secs(self.timeout),
        }
    }
}

/// The global options, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Globals {
    /// The agent's local API socket.
    pub socket: PathBuf,
    /// Machine output.
    pub json: bool,
    /// How long a mutating command waits for confirmation.
    pub timeout: Duration,
}

impl Globals {
    /// A client for the agent at [`Globals::socket`].
    pub fn client(&self) -> Client {
        Client::new(self.socket.clone(), self.timeout)
    }
}

/// The subcommands.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Create a session (validated against the local converged view).
    Create(CreateArgs),
    /// Start a session's monitors on every primary node.
    Start(RunStateArgs),
    /// Stop a session's monitors.
    Stop(RunStateArgs),
    /// Pause a session's monitors.
    Pause(RunStateArgs),
    /// Resume a paused session.
    Resume(RunStateArgs),
    /// List, get, set or reset session configuration keys.
    Config(ConfigArgs),
    /// Delete a session.
    Delete(DeleteArgs),
    /// Show sessions, one row per primary brick.
    Status(StatusArgs),
    /// Exit 0 if a session exists with VOL as primary (or secondary) volume, else 1.
    Exists(ExistsArgs),
    /// Exit 0 if such a session is Started or Paused, else 1.
    Running(ExistsArgs),
    /// Run by glusterd's pre-hooks (stop, remove-brick, delete): exit 1 and say so when
    /// a geo-replication session of the volume stands in the way (glusterd 10.3 goes
    /// ahead anyway; the agent records a GLUSTER_OP_WITH_GEOREP event); exit 0 otherwise,
    /// also when no agent answers.
    #[command(name = "gluster-hook")]
    GlusterHook(GlusterHookArgs),
    /// Show cluster membership.
    Nodes,
    /// Manage members: forget a node that is gone for good.
    Node {
        /// What to do.
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Gossip-state inspection: what every node knows, and why a node does what it does.
    Inspect {
        /// What to inspect.
        #[command(subcommand)]
        command: InspectCommand,
    },
    /// Create the cluster CA and node certificates.
    Tls {
        /// Which TLS material.
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Start a local cluster on loopback and show a session's whole lifecycle.
    Demo(DemoArgs),
    /// The merged cluster-wide event stream, oldest first (every node's events).
    Events(EventsArgs),
    /// Webhooks receiving the event stream (cluster state: managed from any node).
    Webhook {
        /// What to do.
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// Man pages and shell completions, generated from this command line (packaging).
    Generate {
        /// What to generate.
        #[command(subcommand)]
        command: GenerateCommand,
    },
}

/// `generate ...`.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum GenerateCommand {
    /// Write georep.1 and a page per subcommand (georep-create.1, ...) into DIR.
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

/// How a webhook authenticates and formats its deliveries.
#[derive(Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct WebhookOptions {
    /// Sent as `Authorization: Bearer TOKEN` ('' removes it on mod).
    #[arg(long, value_name = "TOKEN", conflicts_with = "secret")]
    pub token: Option<String>,
    /// gluster format: HS256 JWT secret (as glustereventsd); standard format: the
    /// `whsec_...` signing secret ('' removes it on mod).
    #[arg(long, value_name = "SECRET")]
    pub secret: Option<String>,
    /// `gluster` (glustereventsd's body, the default) or `standard` (Standard Webhooks).
    #[arg(long, value_name = "FORMAT", value_parser = ["gluster", "standard"])]
    pub format: Option<String>,
    /// PEM file of a private CA the receiver's HTTPS certificate is checked against
    /// (its content is stored with the webhook: every node may deliver).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
}

/// `webhook` subcommands.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum WebhookCommand {
    /// Add a webhook: events recorded from now on are delivered to it at least once.
    Add {
        /// The receiver (http:// or https://).
        url: String,
        /// Authentication and format.
        #[command(flatten)]
        options: WebhookOptions,
        /// Return right after the local apply.
        #[arg(long)]
        no_wait: bool,
    },
    /// Change a webhook's options (what is not given is kept); re-activates a parked
    /// or disabled webhook.
    Mod {
        /// The webhook's URL.
        url: String,
        /// Authentication and format.
        #[command(flatten)]
        options: WebhookOptions,
        /// Return right after the local apply.
        #[arg(long)]
        no_wait: bool,
    },
    /// Delete a webhook.
    Del {
        /// The webhook's URL.
        url: String,
        /// Return right after the local apply.
        #[arg(long)]
        no_wait: bool,
    },
    /// Per webhook: format, state, delivering nodes, cursor, pending, failing since,
    /// last error.
    List,
    /// One test delivery from this node now (the webhook's own options, or those
    /// given); prints the receiver's answer.
    Test {
        /// The receiver.
        url: String,
        /// Authentication and format.
        #[command(flatten)]
        options: WebhookOptions,
    },
}

/// `events`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct EventsArgs {
    /// Keep printing new events as they happen (resumes across agent restarts).
    #[arg(long)]
    pub follow: bool,
    /// Start after a cursor (`n1:5,n2:7`, printed with every event), at an HLC stamp
    /// (`millis.counter@node`), or this long ago (`10m`, `2h`).
    #[arg(long, value_name = "HLC|DURATION|CURSOR")]
    pub since: Option<String>,
    /// Only events of this type (repeatable), e.g. GEOREP_START.
    #[arg(long = "type", value_name = "T")]
    pub types: Vec<String>,
    /// Only events of this session.
    #[arg(long, num_args = 2, value_names = ["PRIMARYVOL", "SECONDARY"])]
    pub session: Option<Vec<String>>,
    /// Only events recorded by this node.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
}

/// `PRIMARYVOL SECONDARY`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct SessionArgs {
    /// Primary volume.
    #[arg(value_name = "PRIMARYVOL")]
    pub primary: String,
    /// Secondary, `[USER@]HOST::SECONDARYVOL`.
    #[arg(value_name = "SECONDARY")]
    pub secondary: String,
}

/// `create`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct CreateArgs {
    /// The session.
    #[command(flatten)]
    pub session: SessionArgs,
    /// Install the primary nodes' public keys on the secondary.
    #[arg(long)]
    pub push_pem: bool,
    /// Skip the secondary checks (never the duplicate check).
    #[arg(long)]
    pub force: bool,
    /// Return right after the local apply.
    #[arg(long)]
    pub no_wait: bool,
}

/// `node` subcommands.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum NodeCommand {
    /// Forget a dead node for good (gluster's `peer detach`, Consul's `force-leave`):
    /// every node drops it from status, nodes and "dead nodes" lists. Refused while the
    /// node is live; if it comes back later it joins again as a new node.
    Forget {
        /// The node id.
        node: String,
        /// Return right after the local apply.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `start`, `stop`, `pause`, `resume`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct RunStateArgs {
    /// The session.
    #[command(flatten)]
    pub session: SessionArgs,
    /// Skip the state check.
    #[arg(long)]
    pub force: bool,
    /// Return right after the local apply.
    #[arg(long)]
    pub no_wait: bool,
}

/// `config`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ConfigArgs {
    /// The session.
    #[command(flatten)]
    pub session: SessionArgs,
    /// Key to print or set; `'!KEY'` resets it.
    #[arg(value_name = "KEY")]
    pub key: Option<String>,
    /// Value to set.
    #[arg(value_name = "VALUE", allow_negative_numbers = true)]
    pub value: Option<String>,
    /// Reset KEY to its default.
    #[arg(long, value_name = "KEY")]
    pub reset: Option<String>,
    /// Return right after the local apply.
    #[arg(long)]
    pub no_wait: bool,
}

/// `delete`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct DeleteArgs {
    /// The session.
    #[command(flatten)]
    pub session: SessionArgs,
    /// Forget what the secondary has synced: a session created again later starts over
    /// (without it, it resumes where this one stopped).
    #[arg(long)]
    pub reset_sync_time: bool,
    /// Delete even a Started or Paused session.
    #[arg(long)]
    pub force: bool,
    /// Return right after the local apply.
    #[arg(long)]
    pub no_wait: bool,
}

/// `status`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct StatusArgs {
    /// Only sessions of this primary volume.
    #[arg(value_name = "PRIMARYVOL")]
    pub primary: Option<String>,
    /// Only the session with this secondary.
    #[arg(value_name = "SECONDARY")]
    pub secondary: Option<String>,
    /// Add ENTRY, DATA, META, FAILURES and checkpoint columns.
    #[arg(long)]
    pub detail: bool,
}

/// `exists` and `running`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ExistsArgs {
    /// Volume (primary, or without SECONDARY also secondary).
    #[arg(value_name = "VOL")]
    pub volume: String,
    /// Secondary, `[USER@]HOST::SECONDARYVOL`.
    #[arg(value_name = "SECONDARY")]
    pub secondary: Option<String>,
}

/// `gluster-hook OP ARGS...`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct GlusterHookArgs {
    /// glusterd's operation: its hook directory's name (stop, remove-brick, delete).
    #[arg(value_name = "OP")]
    pub op: String,
    /// The hook's own arguments, as glusterd passes them (`--volname=VOL` among them).
    #[arg(
        value_name = "HOOK_ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

/// `inspect ...`.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum InspectCommand {
    /// Every node the local agent knows: liveness, generation, heartbeat, keys, frontier.
    Members,
    /// Every register of each session, and which nodes merged its latest write.
    Sessions(InspectSessionsArgs),
    /// A node's raw chitchat keys as the local agent holds them, decoded.
    Keys(InspectKeysArgs),
    /// Why a session's monitor is or is not running on a node.
    Explain(InspectExplainArgs),
    /// The session writes and frontier entries on which two nodes' views differ.
    Diff(InspectDiffArgs),
    /// A live, refreshing view of members and sessions.
    Watch(InspectWatchArgs),
    /// Decode a stopped agent's data directory (no agent needed).
    Offline(InspectOfflineArgs),
}

/// `inspect sessions`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct InspectSessionsArgs {
    /// Only sessions of this primary volume.
    #[arg(value_name = "PRIMARYVOL")]
    pub primary: Option<String>,
    /// Only the session with this secondary.
    #[arg(value_name = "SECONDARY")]
    pub secondary: Option<String>,
}

/// `inspect keys`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct InspectKeysArgs {
    /// Node whose namespace to show.
    #[arg(value_name = "NODE")]
    pub node: String,
    /// Only keys starting with this (`s/`, `m/`, `node`, `seen`).
    #[arg(value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// Print the stored (undecoded) values.
    #[arg(long)]
    pub raw: bool,
}

/// `inspect explain`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct InspectExplainArgs {
    /// The session.
    #[command(flatten)]
    pub session: SessionArgs,
    /// The node to explain [default: the local node].
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
}

/// `inspect diff`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct InspectDiffArgs {
    /// One node.
    #[arg(value_name = "NODE_A")]
    pub a: String,
    /// The other node.
    #[arg(value_name = "NODE_B")]
    pub b: String,
}

/// `inspect watch`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct InspectWatchArgs {
    /// Milliseconds between refreshes.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(50..=3_600_000)
    )]
    pub interval: u64,
    /// Stop after this many refreshes [default: run until interrupted].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

/// `inspect offline`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct InspectOfflineArgs {
    /// The stopped agent's data directory (holding `state.bin`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
}

/// `tls ...`.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum TlsCommand {
    /// The cluster CA.
    Ca {
        /// What to do with it.
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Node certificates.
    Cert {
        /// What to do with them.
        #[command(subcommand)]
        command: CertCommand,
    },
}

/// `tls ca ...`.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum CaCommand {
    /// Write DIR/ca.crt and DIR/ca.key (0600).
    Create {
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// `tls cert ...`.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum CertCommand {
    /// Write DIR/ID.crt and DIR/ID.key (0600), signed by the CA.
    Create(CertCreateArgs),
}

/// `tls cert create`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct CertCreateArgs {
    /// Directory holding ca.crt and ca.key.
    #[arg(long, value_name = "DIR")]
    pub ca: PathBuf,
    /// Node id the certificate names.
    #[arg(long, value_name = "ID")]
    pub node: String,
    /// IP address SAN (repeatable).
    #[arg(long = "ip", value_name = "ADDR")]
    pub ips: Vec<IpAddr>,
    /// DNS name SAN (repeatable).
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// `demo`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct DemoArgs {
    /// Number of agents (about 60% primaries, the rest secondaries).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u8).range(2..=32))]
    pub nodes: u8,
    /// Keep the cluster's files here instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses as `georep` does: through [`command`].
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let matches = command()
            .try_get_matches_from(std::iter::once("georep").chain(args.iter().copied()))?;
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    fn help_of(path: &[&str]) -> String {
        let mut cmd = command();
        cmd.build();
        let mut sub = &mut cmd;
        for name in path {
            sub = sub.find_subcommand_mut(name).unwrap();
        }
        sub.render_long_help().to_string()
    }

    #[test]
    fn timeout_help_is_written_for_each_command() {
        for change in [["create"], ["start"], ["delete"]] {
            let help = help_of(&change);
            assert!(help.contains("confirm the change"), "{change:?}: {help}");
        }
        assert!(help_of(&["config"]).contains("Setting or resetting"));
        for read in [
            &["status"][..],
            &["nodes"],
            &["exists"],
            &["inspect", "members"],
        ] {
            let help = help_of(read);
            assert!(
                help.contains("a read waits at most 5 s"),
                "{read:?}: {help}"
            );
            assert!(!help.contains("confirm"), "{read:?}: {help}");
        }
        for unused in [&["tls", "ca", "create"][..], &["demo"]] {
            assert!(!help_of(unused).contains("--timeout"), "{unused:?}");
        }
        // Each copy still sets the one global value, before or after the subcommand.
        assert_eq!(
            parse(&["inspect", "members", "--timeout", "9"])
                .unwrap()
                .globals
                .timeout,
            9
        );
        assert_eq!(
            parse(&["--timeout", "8", "create", "gv0", "n4::gv1"])
                .unwrap()
                .globals
                .timeout,
            8
        );
        assert_eq!(
            parse(&["create", "gv0", "n4::gv1", "--timeout", "7"])
                .unwrap()
                .globals
                .timeout,
            7
        );
    }

    #[test]
    fn globals_before_and_after_the_subcommand() {
        let before = parse(&["--socket", "/s", "--json", "--timeout", "5", "nodes"]).unwrap();
        let after = parse(&["nodes", "--socket", "/s", "--json", "--timeout", "5"]).unwrap();
        assert_eq!(before, after);
        let g = after.globals.resolve_with(None);
        assert_eq!(g.socket, PathBuf::from("/s"));
        assert!(g.json);
        assert_eq!(g.timeout, Duration::from_secs(5));

        let mixed = parse(&[
            "--json",
            "start",
            "gv0",
            "n4::gv1",
            "--timeout",
            "7",
            "--no-wait",
        ])
        .unwrap();
        assert!(mixed.globals.json);
        assert_eq!(mixed.globals.timeout, 7);
        match mixed.command {
            Command::Start(a) => {
                assert!(a.no_wait && !a.force);
                assert_eq!(a.session.secondary, "n4::gv1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn socket_defaults_to_env_then_run_dir() {
        let cli = parse(&["nodes"]).unwrap();
        assert_eq!(cli.globals.timeout, DEFAULT_TIMEOUT_SECS);
        assert_eq!(
            cli.globals.resolve_with(None).socket,
            PathBuf::from(DEFAULT_SOCKET)
        );
        assert_eq!(
            cli.globals.resolve_with(Some("/e.sock".into())).socket,
            PathBuf::from("/e.sock")
        );
        let cli = parse(&["nodes", "--socket", "/flag.sock"]).unwrap();
        assert_eq!(
            cli.globals.resolve_with(Some("/e.sock".into())).socket,
            PathBuf::from("/flag.sock")
        );
    }

    #[test]
    fn exists_and_running_arity() {
        for cmd in ["exists", "running"] {
            assert!(parse(&[cmd]).is_err(), "{cmd} with no VOL");
            assert!(parse(&[cmd, "gv0"]).is_ok());
            assert!(parse(&[cmd, "gv0", "n4::gv1"]).is_ok());
            let err = parse(&[cmd, "gv0", "n4::gv1", "extra"]).unwrap_err();
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn config_forms_parse() {
        let cli = parse(&["config", "gv0", "n4::gv1", "!sync-jobs"]).unwrap();
        match cli.command {
            Command::Config(a) => assert_eq!(a.key.as_deref(), Some("!sync-jobs")),
            other => panic!("{other:?}"),
        }
        let cli = parse(&[
            "config",
            "gv0",
            "n4::gv1",
            "--reset",
            "sync-jobs",
            "--no-wait",
        ])
        .unwrap();
        match cli.command {
            Command::Config(a) => {
                assert_eq!(a.reset.as_deref(), Some("sync-jobs"));
                assert!(a.no_wait && a.key.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["config", "gv0", "n4::gv1", "k", "v", "extra"]).is_err());
    }

    #[test]
    fn tls_and_demo_parse() {
        let cli = parse(&[
            "tls",
            "cert",
            "create",
            "--ca",
            "/ca",
            "--node",
            "n1",
            "--ip",
            "127.0.0.1",
            "--ip",
            "::1",
            "--dns",
            "n1.example",
            "--out",
            "/o",
        ])
        .unwrap();
        match cli.command {
            Command::Tls {
                command:
                    TlsCommand::Cert {
                        command: CertCommand::Create(a),
                    },
            } => {
                assert_eq!(a.ips.len(), 2);
                assert_eq!(a.dns, vec!["n1.example".to_owned()]);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            parse(&[
                "tls", "cert", "create", "--ca", "/ca", "--node", "n1", "--ip", "nope", "--out",
                "/o"
            ])
            .is_err()
        );
        match parse(&["demo"]).unwrap().command {
            Command::Demo(a) => assert_eq!((a.nodes, a.dir), (5, None)),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["demo", "--nodes", "1"]).is_err());
    }

    #[test]
    fn inspect_forms_parse() {
        let cli = parse(&[
            "inspect", "explain", "gv0", "n4::gv1", "--node", "n3", "--json",
        ])
        .unwrap();
        assert!(cli.globals.json);
        match cli.command {
            Command::Inspect {
                command: InspectCommand::Explain(a),
            } => {
                assert_eq!(a.node.as_deref(), Some("n3"));
                assert_eq!(a.session.primary, "gv0");
            }
            other => panic!("{other:?}"),
        }
        match parse(&["inspect", "keys", "n2", "s/", "--raw"])
            .unwrap()
            .command
        {
            Command::Inspect {
                command: InspectCommand::Keys(a),
            } => assert_eq!(
                (a.node.as_str(), a.prefix.as_deref(), a.raw),
                ("n2", Some("s/"), true)
            ),
            other => panic!("{other:?}"),
        }
        match parse(&["inspect", "watch"]).unwrap().command {
            Command::Inspect {
                command: InspectCommand::Watch(a),
            } => assert_eq!((a.interval, a.count), (1000, None)),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["inspect", "watch", "--count", "0"]).is_err());
        assert!(parse(&["inspect", "watch", "--interval", "1"]).is_err());
        assert!(parse(&["inspect", "diff", "n1"]).is_err());
        assert!(
            parse(&["inspect", "offline"]).is_err(),
            "--data-dir is required"
        );
        assert!(parse(&["inspect", "sessions", "gv0", "n4::gv1"]).is_ok());
        assert!(parse(&["inspect", "members"]).is_ok());
    }

    #[test]
    fn timeout_must_be_positive() {
        assert_eq!(
            parse(&["nodes", "--timeout", "0"]).unwrap_err().exit_code(),
            2
        );
        assert_eq!(
            parse(&["nodes", "--timeout", "x"]).unwrap_err().exit_code(),
            2
        );
        assert_eq!(
            parse(&["nodes", "--timeout", "2m"])
                .unwrap()
                .globals
                .timeout,
            120
        );
        assert_eq!(
            parse(&["nodes", "--timeout", "11m"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }
}
