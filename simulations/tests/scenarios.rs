//! The simulator end to end at small N (fast in debug builds): scripted scenarios
//! converge with no violation, the random workload holds, and the checker fails when
//! the simulated processes misbehave.

use std::path::Path;
use std::time::Duration;

use georep_sim::Bug;
use georep_sim::check_determinism;
use georep_sim::{Scenario, SimOptions, run_batch, run_seed};

fn scenario(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name);
    Scenario::load(&path, 5, 1).expect("scenario loads")
}

fn options(scenario: Scenario) -> SimOptions {
    SimOptions {
        scenario: Some(scenario),
        ..SimOptions::random(5, Duration::from_secs(60))
    }
}

#[test]
fn five_node_partition_scenario_converges_with_no_violation() {
    let report = run_seed(&options(scenario("partition-heal.toml")), 1).unwrap();
    assert_eq!(report.violations, 0, "{:#?}", report.violation);
    assert_eq!(report.nodes, 5);
    assert!(report.checks >= 3, "{}", report.checks);
    assert_eq!(report.faults.partitions, 1);
    assert_eq!(report.ops.acknowledged, report.ops.issued);
    assert_eq!(report.convergence_ms.count, report.ops.acknowledged);
    // writes made during the partition only converge after the heal (10 s later)
    assert!(
        report.convergence_ms.max >= 9_000,
        "{:?}",
        report.convergence_ms
    );
    assert!(report.bytes_per_node_per_s > 0.0);
}

#[test]
fn every_shipped_scenario_passes() {
    for name in ["crash-restart.toml", "flaky-network.toml", "sites.toml"] {
        let report = run_seed(&options(scenario(name)), 7).unwrap();
        assert_eq!(report.violations, 0, "{name}: {:#?}", report.violation);
    }
}

#[test]
fn random_workload_holds_on_a_few_seeds() {
    let options = SimOptions::random(6, Duration::from_secs(90));
    let batch = run_batch(&options, 100, 3, 1).unwrap();
    assert_eq!(batch.runs, 3);
    assert_eq!(batch.violations, 0, "{}", batch.text());
    assert!(batch.ops.acknowledged > 10, "{:?}", batch.ops);
}

#[test]
fn a_leaked_monitor_is_caught_and_reported_with_the_seed() {
    let text = r#"
        nodes = 4
        [[step]]
        at = "10s"
        action = "create"
        node = 0
        [[step]]
        after = "1s"
        action = "start"
        node = 1
        [[step]]
        after = "5s"
        action = "stop"
        node = 2
        [[step]]
        after = "1s"
        action = "check"
    "#;
    let leaky = SimOptions {
        bug: Some(Bug::LeakMonitors),
        ..options(Scenario::parse(text, "inline", "leak", 4, 1).unwrap())
    };
    let report = run_seed(&leaky, 42).unwrap();
    assert_eq!(report.violations, 1);
    let violation = report.violation.clone().unwrap();
    assert_eq!(violation.invariant, "monitors match the converged view");
    assert!(
        violation.detail.contains("is Stopped but 1 monitor(s) run"),
        "{}",
        violation.detail
    );
    assert!(
        violation.schedule.iter().any(|l| l.contains("stop on n2")),
        "{:?}",
        violation.schedule
    );
    let batch = georep_sim::BatchReport::aggregate(vec![report], 0);
    let text = batch.text();
    assert!(text.contains("VIOLATION (seed 42"), "{text}");
    assert!(
        text.contains("rerun alone: georep-sim --seed 42 --scenario 'FILE (of scenario `leak`)'"),
        "{text}"
    );
    assert!(text.contains("stop on n2"), "{text}");
    // A batch re-runs a failing seed alone before reporting it.
    let batch = run_batch(&leaky, 42, 1, 1).unwrap();
    assert!(
        batch.text().contains("it did fail the same way alone"),
        "{}",
        batch.text()
    );
    // the same scenario with well-behaved processes passes
    let healthy = SimOptions { bug: None, ..leaky };
    assert_eq!(run_seed(&healthy, 42).unwrap().violations, 0);
}

#[test]
fn a_paused_session_whose_monitor_crashed_does_not_spin() {
    // Regression: a crash retry that fell due while the session was paused made the
    // agent's loop wake for it forever (virtual time stood still; in production a
    // busy loop).
    let text = r#"
        nodes = 3
        [[step]]
        at = "10s"
        action = "create"
        node = 0
        [[step]]
        after = "1s"
        action = "start"
        node = 0
        [[step]]
        after = "3s"
        action = "monitor-crash"
        node = 0
        [[step]]
        after = "10ms"
        action = "pause"
        node = 0
        [[step]]
        after = "10s"
        action = "check"
        [[step]]
        after = "1s"
        action = "resume"
        node = 1
        [[step]]
        after = "5s"
        action = "check"
    "#;
    let report = run_seed(
        &options(Scenario::parse(text, "inline", "pause", 3, 1).unwrap()),
        3,
    )
    .unwrap();
    assert_eq!(report.violations, 0, "{:#?}", report.violation);
    assert!(report.virtual_s >= 30.0);
}

/// Through the binary, whose runs are seeded (in-process runs draw chitchat's
/// randomness from the OS: their message timing, and so when a check passes and the
/// next step starts, may differ).
#[test]
fn the_schedule_is_a_function_of_the_seed() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/flaky-network.toml");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_georep-sim"))
        .arg("--scenario")
        .arg(&path)
        .args(["--seed", "5", "--check-determinism", "--json"])
        .output()
        .expect("georep-sim runs");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    let parts = report["parts"].as_array().expect("parts");
    let schedule = &parts[0];
    assert_eq!(schedule["part"], "fault and command schedule");
    for part in parts {
        assert_eq!(part["identical"], true, "{part}");
    }
    assert!(output.status.success(), "{report}");
}

#[test]
fn without_seeded_entropy_the_check_sees_the_message_traces_differ() {
    // In this test binary nothing seeds the run threads' entropy (the georep-sim
    // binary does): chitchat's peer choice is random, and the check must notice.
    let report = check_determinism(&options(scenario("flaky-network.toml")), 5).unwrap();
    let frames = report
        .parts
        .iter()
        .find(|p| p.part == "delivered frames")
        .expect("the frame-level part");
    assert!(frames.lines.0 > 100, "{:?}", frames.lines);
    assert!(!frames.identical, "random peer choice replayed identically");
    assert!(!report.identical());
}

#[test]
fn a_replaced_host_with_its_clock_behind_is_seen_live_again() {
    // Found by this simulator: a host replaced with its disk lost while its clock ran
    // behind its previous start used to get a lower generation than the one its peers
    // remembered, and stayed dead to them. It now asks its seeds first.
    let report = run_seed(&options(scenario("lost-disk-clock-behind.toml")), 1).unwrap();
    assert_eq!(report.violations, 0, "{:#?}", report.violation);
}

#[test]
fn the_checker_sees_nodes_disagree_on_membership() {
    // A check while a partition still stands: each side sees the other dead.
    let text = r#"
        nodes = 4
        [[step]]
        at = "5s"
        action = "partition"
        groups = [[0, 1], [2, 3]]
        [[step]]
        after = "20s"
        action = "check"
    "#;
    let report = run_seed(
        &options(Scenario::parse(text, "inline", "split", 4, 1).unwrap()),
        1,
    )
    .unwrap();
    let violation = report.violation.expect("a standing partition is detected");
    assert_eq!(violation.invariant, "membership agrees");
    assert!(violation.detail.contains(" dead"), "{}", violation.detail);
}

/// The harsher profile of the harsher-chaos issue.
fn harsh() -> SimOptions {
    SimOptions {
        sessions: 4,
        command_rate: 3.0,
        fault_rate: 0.4,
        ..SimOptions::random(8, Duration::from_secs(150))
    }
}

#[test]
fn a_rerun_line_carries_every_option_that_differs_from_the_defaults() {
    assert_eq!(
        harsh().rerun_flags(10227),
        "--seed 10227 --nodes 8 --duration 150000ms --sessions 4 --command-rate 3 --fault-rate 0.4"
    );
}
