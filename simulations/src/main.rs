//! `georep-sim`: runs many real georep agents in one process under virtual time and
//! injected faults, and checks the invariants (see the library's documentation).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use georep_sim::duration::parse_duration;
use georep_sim::{Scenario, SimOptions};

/// Chaos simulation of a georep mesh: real agents, simulated network and processes.
#[derive(Debug, Parser)]
#[command(name = "georep-sim", version)]
struct Args {
    /// Nodes (random mode, and scenarios that do not say).
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Seed of the fault schedule, the workload and the network's decisions.
    #[arg(long)]
    seed: Option<u64>,
    /// Virtual duration of a random run (e.g. 90s, 5m).
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    duration: std::time::Duration,
    /// A scenario file (TOML) instead of the random workload.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Write summary.json, convergence.svg and traffic.svg into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Run the seed twice and compare the traces.
    #[arg(long)]
    check_determinism: bool,
    /// Run seeds S..S+K-1 and aggregate.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Runs in parallel during a batch (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Sessions (random mode).
    #[arg(long, default_value_t = 3)]
    sessions: usize,
    /// Gossip interval of every agent (virtual).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    gossip_interval: std::time::Duration,
    /// After a heal the invariants must hold within this window (virtual).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    quiet: std::time::Duration,
    /// Commands per virtual second (random mode).
    #[arg(long, default_value_t = 1.0)]
    command_rate: f64,
    /// Faults per virtual second (random mode).
    #[arg(long, default_value_t = 0.15)]
    fault_rate: f64,
    /// Print every step to stderr as it runs.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("georep-sim: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut options = SimOptions::random(args.nodes, args.duration);
    options.sessions = args.sessions;
    options.gossip_interval = args.gossip_interval;
    options.quiet = args.quiet;
    options.command_rate = args.command_rate;
    options.fault_rate = args.fault_rate;
    options.verbose = args.verbose;
    let mut seed = args.seed.unwrap_or(1);
    if let Some(path) = &args.scenario {
        let scenario =
            Scenario::load(path, args.nodes, seed).context("cannot load the scenario")?;
        seed = args.seed.unwrap_or(scenario.seed);
        options.scenario = Some(scenario);
    }
    if args.check_determinism {
        let report = georep_sim::driver::check_determinism(&options, seed)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.text());
        }
        let violations: usize = report.runs.iter().map(|r| r.violations).sum();
        return Ok(if violations > 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let report = georep_sim::run_batch(&options, seed, args.seeds.max(1), jobs)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if let Some(dir) = &args.report {
        report.write_dir(dir)?;
        if !args.json {
            println!("report written to {}", dir.display());
        }
    }
    Ok(if report.violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
