//! `georep`, the command-line client of `georepd` (the contract is
//! `cli.md`, "georep (the CLI)").
//!
//! - [`args`]: the command line (clap derive) and the resolved global options.
//! - [`client`]: the local API client over the agent's Unix socket.
//! - [`lifecycle`]: `create`, `start`, `stop`, `pause`, `resume`, `delete`.
//! - [`config_cmd`]: `config` (list, get, set, reset).
//! - [`status`]: `status`, `exists`, `running`.
//! - [`nodes`]: `nodes`, the cluster membership.
//! - [`inspect`]: `inspect`, gossip-state inspection (members, sessions, keys,
//!   explain, diff, watch, offline).
//! - [`tls_cmd`]: `tls ca create`, `tls cert create`.
//! - [`demo`]: `demo`, a local cluster running a session's whole lifecycle.
//! - [`output`]: reports, exit codes, tables, JSON and error rendering.
//!
//! Every command returns an [`output::Report`] rather than printing, so that
//! `demo` replays commands in-process and tests read what users would see.
#![forbid(unsafe_code)]

mod args;
mod client;
mod config_cmd;
mod demo;
mod events;
mod generate;
mod inspect;
mod lifecycle;
mod nodes;
mod output;
mod status;
mod tls_cmd;
mod webhook;

use std::process::ExitCode;

use clap::FromArgMatches as _;

use crate::args::{CaCommand, CertCommand, Cli, Command, NodeCommand, TlsCommand};
use crate::lifecycle::RunState;
use crate::output::{CommandError, Exit, Report};

fn main() -> ExitCode {
    // Parse errors exit 2 (and --help/--version 0) inside clap.
    let cli = match Cli::from_arg_matches(&args::command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("georep: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failed.code());
        }
    };
    let exit = runtime.block_on(async {
        match &cli.command {
            Command::Demo(a) => demo::run(a).await,
            _ => {
                let report = execute(&cli).await;
                report.print();
                report.exit
            }
        }
    });
    ExitCode::from(exit.code())
}

/// Runs one command and returns what it has to say. `demo` is not a command
/// here: it drives commands itself.
pub async fn execute(cli: &Cli) -> Report {
    let g = cli.globals.resolve();
    match &cli.command {
        Command::Create(a) => lifecycle::create(&g, a).await,
        Command::Start(a) => lifecycle::run_state(&g, RunState::Start, a).await,
        Command::Stop(a) => lifecycle::run_state(&g, RunState::Stop, a).await,
        Command::Pause(a) => lifecycle::run_state(&g, RunState::Pause, a).await,
        Command::Resume(a) => lifecycle::run_state(&g, RunState::Resume, a).await,
        Command::Config(a) => config_cmd::config(&g, a).await,
        Command::Delete(a) => lifecycle::delete(&g, a).await,
        Command::Status(a) => status::status(&g, a).await,
        Command::Exists(a) => status::exists(&g, a, false).await,
        Command::Running(a) => status::exists(&g, a, true).await,
        Command::GlusterHook(a) => status::gluster_hook(&g, a).await,
        Command::Nodes => nodes::nodes(&g).await,
        Command::Events(a) => events::events(&g, a).await,
        Command::Webhook { command } => webhook::webhook(&g, command).await,
        Command::Node {
            command: NodeCommand::Forget { node, no_wait },
        } => nodes::forget(&g, node, *no_wait).await,
        Command::Inspect { command } => inspect::inspect(&g, command).await,
        Command::Tls {
            command:
                TlsCommand::Ca {
                    command: CaCommand::Create { out },
                },
        } => tls_cmd::ca_create(&g, out),
        Command::Tls {
            command:
                TlsCommand::Cert {
                    command: CertCommand::Create(a),
                },
        } => tls_cmd::cert_create(&g, a),
        Command::Generate { command } => generate::generate(args::command(), command),
        Command::Demo(_) => CommandError::Usage("demo cannot run inside another command".into())
            .report(g.json, None),
    }
}
