//! `georep-sim`: runs many real georep agents in one process under virtual time and
//! injected faults, and checks the invariants (see the library's documentation).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use georep_sim::ChildRun;
use georep_sim::parse_duration;
use georep_sim::{RunReport, Scenario, SimOptions};

mod entropy;

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
    /// Write summary.json and convergence and traffic plots (SVG and PNG) into this directory.
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
    /// Internal: run the one seed and print its whole report as JSON for the parent
    /// process (batches and determinism checks run each seed in a child).
    #[arg(long, hide = true)]
    child_run: bool,
    /// Internal: record every delivered frame (determinism checks).
    #[arg(long, hide = true)]
    record_frames: bool,
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
    options.record_frames = args.record_frames;
    options.on_run_thread = Some(entropy::install);
    let mut seed = args.seed.unwrap_or(1);
    if let Some(path) = &args.scenario {
        let scenario =
            Scenario::load(path, args.nodes, seed).context("cannot load the scenario")?;
        seed = args.seed.unwrap_or(scenario.seed);
        options.scenario = Some(scenario);
        options.scenario_path = Some(path.clone());
    }
    if args.child_run {
        let report = georep_sim::run_seed(&options, seed)?;
        println!("{}", serde_json::to_string(&ChildRun::from_report(report))?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.check_determinism {
        let runner = |s: u64| run_in_child(&options, s, true);
        let report = georep_sim::check_determinism_with(&runner, seed)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.text());
        }
        let violations: usize = report.runs.iter().map(|r| r.violations).sum();
        return Ok(if violations > 0 || !report.identical() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let report = if args.seeds > 1 {
        // Each seed in a fresh process: nothing one run does can reach another.
        let runner = |s: u64| run_in_child(&options, s, false);
        georep_sim::run_batch_with(&runner, seed, args.seeds, jobs)?
    } else {
        // This process is fresh: run here.
        georep_sim::run_batch(&options, seed, 1, 1)?
    };
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

/// Runs `seed` in a child `georep-sim` with the same options and reads its report.
fn run_in_child(options: &SimOptions, seed: u64, record_frames: bool) -> anyhow::Result<RunReport> {
    let exe = std::env::current_exe().context("cannot find the georep-sim executable")?;
    let mut command = std::process::Command::new(&exe);
    command.args(options.rerun_args(seed)).arg("--child-run");
    if record_frames {
        command.arg("--record-frames");
    }
    if options.verbose {
        command.arg("--verbose");
    }
    let output = command
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !output.status.success() {
        anyhow::bail!(
            "seed {seed}: the child run failed ({}); re-run it alone with: georep-sim {}",
            output.status,
            options.rerun_flags(seed)
        );
    }
    let child: ChildRun = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("seed {seed}: unreadable report from the child run"))?;
    Ok(child.into_report())
}
