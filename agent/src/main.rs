//! `georepd`: the georep agent. Thin: parses flags, then runs the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use georep_agent::{AgentArgs, AgentConfig};
use tokio_util::sync::CancellationToken;

/// georepd: geo-replication session agent (one per primary and secondary node).
#[derive(Debug, Parser)]
#[command(
    name = "georepd",
    version = georep_api::VERSION,
    about,
    args_conflicts_with_subcommands = true,
    after_help = "Configuration file (--config): every key, with its default, is described in the commented example georepd.toml (installed as /etc/georep/georepd.toml; agent/georepd.toml in the source tree). Flags override the file."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log lines as `text` (human) or `json` (one object per line, for journald
    /// or a log shipper); RUST_LOG filters either way.
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The built-in monitor (started by the agent, one per session on primary nodes).
    Monitor(georep_agent::MonitorArgs),
    /// Man pages and shell completions, generated from this command line (packaging).
    Generate {
        /// What to generate.
        #[command(subcommand)]
        what: Generate,
    },
}

#[derive(Debug, Subcommand)]
enum Generate {
    /// Write georepd.1 and georepd-monitor.1 into DIR.
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

/// `georepd generate ...` (as `georep generate`, for the agent's own command line).
fn generate(what: Generate) -> anyhow::Result<()> {
    let mut command = <Cli as clap::CommandFactory>::command();
    match what {
        Generate::Completions { shell } => {
            clap_complete::generate(shell, &mut command, "georepd", &mut std::io::stdout());
        }
        Generate::Man { out } => {
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            command.build();
            let pages = std::iter::once(&command)
                .chain(command.get_subcommands().filter(|s| s.get_name() != "help"));
            for page in pages {
                let name = page.get_display_name().unwrap_or(page.get_name());
                let path = out.join(format!("{name}.1"));
                let mut text = Vec::new();
                clap_mangen::Man::new(page.clone()).render(&mut text)?;
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        // Colour only for a terminal: a file or a journal gets plain text.
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    if let Some(Command::Generate { what }) = cli.command {
        return match generate(what) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("georepd: {}", one_line(&error));
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("georepd: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::Monitor(args)) => georep_agent::run_monitor(args).await,
            Some(Command::Generate { .. }) => Ok(()),
            None => run_agent(cli.agent).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("georepd: {}", one_line(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause said once: several of our error
/// types already print their source in their own message.
fn one_line(error: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last_len = 0;
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        // A cause that repeats the context around it and adds to it replaces it.
        if last_len > 0 && text.starts_with(&out[out.len() - last_len..]) {
            out.truncate(out.len() - last_len);
        } else if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        last_len = text.len();
    }
    out
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
    georep_agent::run(config, shutdown).await
}
