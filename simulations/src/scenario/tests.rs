//! Unit tests of `scenario`.
use super::*;

#[test]
fn same_seed_same_plan() {
    let layout = Layout::new(10, 2);
    let workload = RandomWorkload::new(10, Duration::from_secs(1), Duration::from_secs(30));
    let a = random_scenario(layout, 7, Duration::from_secs(300), &workload);
    let b = random_scenario(layout, 7, Duration::from_secs(300), &workload);
    let c = random_scenario(layout, 8, Duration::from_secs(300), &workload);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.steps.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(
        a.steps
            .iter()
            .any(|s| matches!(s.action, Action::Partition { .. }))
    );
    assert!(a.steps.iter().any(|s| s.action == Action::Check));
}

#[test]
fn layout_is_sixty_percent_primaries() {
    assert_eq!(Layout::new(5, 1).primaries, 3);
    assert_eq!(Layout::new(25, 1).primaries, 15);
    assert_eq!(Layout::new(2, 1).primaries, 1);
    assert_eq!(Layout::new(1, 1).primaries, 1);
}

#[test]
fn parses_a_scenario_and_reports_bad_steps() {
    let text = r#"
        name = "t"
        nodes = 5
        [[step]]
        at = "10s"
        action = "create"
        node = 0
        [[step]]
        after = "5s"
        action = "partition"
        groups = [[0, 1], [2, 3, 4]]
        [[step]]
        action = "wait"
        duration = "20s"
        [[step]]
        action = "heal"
        [[step]]
        action = "skew"
        node = 2
        offset = "-3s"
    "#;
    let s = Scenario::parse(text, "t.toml", "t", 3, 1).unwrap();
    assert_eq!(s.layout.nodes, 5);
    assert_eq!(s.steps.len(), 4);
    assert_eq!(s.steps[1].at, Duration::from_secs(15));
    assert_eq!(
        s.steps[2],
        Step {
            at: Duration::from_secs(35),
            action: Action::Heal
        }
    );
    assert_eq!(
        s.steps[3].action,
        Action::Skew {
            node: 2,
            offset_ms: -3000
        }
    );
    let bad = Scenario::parse(
        "[[step]]\naction = \"crash\"\nnode = 9\n",
        "b.toml",
        "b",
        3,
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("step 1 (crash): node 9 does not exist"),
        "{bad}"
    );
    let unknown = Scenario::parse("[[step]]\naction = \"explode\"\n", "b.toml", "b", 3, 1)
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("unknown action `explode`"), "{unknown}");
}
