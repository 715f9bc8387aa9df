//! `georepd`: the georep agent. Thin: parses flags, then runs the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use georep_agent::config::{AgentArgs, AgentConfig};
use tokio_util::sync::CancellationToken;

/// georepd: geo-replication session agent (one per primary and secondary node).
#[derive(Debug, Parser)]
#[command(
    name = "georepd",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The built-in monitor (started by the agent, one per session on primary nodes).
    Monitor(georep_agent::monitor::MonitorArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("georepd: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::Monitor(args)) => georep_agent::monitor::run(args).await,
            None => run_agent(cli.agent).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("georepd: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let config = AgentConfig::load(&args)?;
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping: persisting state; monitors keep running for re-adoption");
        signals.cancel();
    });
    georep_agent::agent::run(config, shutdown).await
}
