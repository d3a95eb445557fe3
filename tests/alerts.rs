//! The shipped alert rules (deploy/monitoring/prometheusrule.yaml), evaluated by Prometheus's own
//! `promtool`: `check rules`, then the unit tests of tests/alerts/cacertd_test.yaml.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

/// The rules file the unit tests name in `rule_files` (promtool resolves it next to them).
const RULES_FILE: &str = "cacertd.rules.yaml";

/// The rule groups of a PrometheusRule resource, as the rules file promtool reads: the body of
/// its `spec:`, dedented by the two spaces it is indented by in the resource.
fn rule_groups(resource: &str) -> String {
    let mut lines = resource.lines();
    // Skip the envelope (apiVersion, kind, metadata) up to the top-level `spec:` line.
    assert!(
        lines.any(|l| l.trim_end() == "spec:"),
        "no top-level `spec:` line in the PrometheusRule"
    );
    // `spec:` must be the last top-level key: every line after it is indented by two spaces.
    let mut groups = String::new();
    for line in lines {
        if !line.trim().is_empty() {
            let body = line.strip_prefix("  ").unwrap_or_else(|| {
                panic!("a line after `spec:` is not indented by two spaces: {line:?}")
            });
            groups.push_str(body);
        }
        groups.push('\n');
    }
    assert!(
        groups.lines().any(|l| l == "groups:"),
        "no `groups:` directly under `spec:`:\n{groups}"
    );
    groups
}

/// Runs `promtool <subcommand> rules <file>` and asserts it succeeds.
fn promtool(subcommand: &str, file: &Path) {
    let result = Command::new("promtool")
        .args([subcommand, "rules"])
        .arg(file)
        .output();
    let out = match result {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not on PATH: install Debian's `prometheus` package \
             (apt-get install prometheus), which ships it"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool {subcommand} rules {} failed ({}):\n{}{}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_shipped_alert_rules_pass_promtool_check_and_unit_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let resource = std::fs::read_to_string(root.join("deploy/monitoring/prometheusrule.yaml"))
        .expect("read deploy/monitoring/prometheusrule.yaml");
    let tests = std::fs::read_to_string(root.join("tests/alerts/cacertd_test.yaml"))
        .expect("read tests/alerts/cacertd_test.yaml");
    let groups = rule_groups(&resource);

    // Every alert has unit tests.
    let alerts: Vec<&str> = groups
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 9, "{alerts:?}");
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no test in tests/alerts/cacertd_test.yaml"
        );
    }

    // The rules next to a copy of the unit tests, which name them in `rule_files`.
    assert!(
        tests.contains(RULES_FILE),
        "the unit tests do not load {RULES_FILE}"
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rules = dir.path().join(RULES_FILE);
    let unit_tests = dir.path().join("cacertd_test.yaml");
    std::fs::write(&rules, groups).expect("write the rules");
    std::fs::write(&unit_tests, tests).expect("write the unit tests");

    promtool("check", &rules);
    promtool("test", &unit_tests);
}

#[test]
#[should_panic(expected = "no top-level `spec:` line")]
fn a_resource_without_spec_is_refused() {
    rule_groups("apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n");
}
