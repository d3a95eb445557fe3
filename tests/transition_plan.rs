//! `migrate plan` and `rotate-root plan`: every step, per cluster, in order; stable; changing
//! nothing; settings from `[transition]` and flags, bad values refused with the field named.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ACCEPTANCE_CONFIG, Setup, assert_unchanged};

#[test]
fn the_migration_plan_lists_every_step_and_changes_nothing() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let before = s.snapshot();

    let first = s.cacertd(&["migrate", "plan"]).ok().stdout;
    let again = s.cacertd(&["migrate", "plan"]).ok().stdout;
    assert_eq!(first, again, "the plan is stable");
    assert_unchanged(&before, &s.snapshot());

    // The acceptance topology: primaries cluster1 (serving remote cluster3) and cluster2, both
    // written to folders nobody observes: no restart (whoever applies a folder restarts) and no
    // ConfigMap gate (nothing reads the clusters), but a wait for the folders to be applied
    // after every step's writes.
    let numbered: Vec<&str> = first
        .lines()
        .filter(|l| {
            l.trim_start()
                .split('.')
                .next()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .collect();
    // 3 phases × (2 writes + the wait for the folders + a gate) + the drain.
    assert_eq!(numbered.len(), 13, "{first}");
    assert!(!first.contains("restart the"), "{first}");
    assert!(!first.contains("ConfigMap"), "{first}");
    assert!(first.contains("drain 24h"), "{first}");
    // A numbered line, matched from its start ("  9." is not " 19.").
    let pos = |n: usize, rest: &str| {
        let needle = format!("\n  {n:>3}. {rest}");
        first
            .find(&needle)
            .unwrap_or_else(|| panic!("{needle:?} not in:\n{first}"))
    };
    let phase = |p: &str| first.find(&format!("\n{p}:\n")).unwrap();
    assert!(
        phase("AddNewRoot") < phase("SwitchSigner")
            && phase("SwitchSigner") < phase("RemoveOldRoot")
    );
    assert!(
        pos(1, "cluster1: write cacerts into its folder")
            < pos(2, "cluster2: write cacerts into its folder")
    );
    assert!(first.contains(
        "whoever applies the folder then restarts istiod, the gateways and the workloads there"
    ));
    assert!(
        pos(
            3,
            "wait until the folders of cluster1, cluster2 are applied to their clusters"
        ) < pos(4, "gate: every folder holds the material of this step")
    );
    assert!(phase("SwitchSigner") < pos(5, "cluster1: write cacerts into its folder: a new"));
    pos(7, "wait until the folders");
    assert!(
        pos(9, "wait the drain period (24h)")
            < pos(
                10,
                "cluster1: write cacerts into its folder: the new intermediate; root-cert.pem = \
                 the new root only"
            )
    );
    pos(12, "wait until the folders");
    pos(13, "gate: every folder holds the material of this step");
}

#[test]
fn flags_and_config_shape_the_plan() {
    let config =
        format!("{ACCEPTANCE_CONFIG}\n[transition]\ndrain = \"2h\"\ngate_timeout = \"5m\"\n");
    let s = Setup::with_config(&config);
    let out = s.cacertd(&["rotate-root", "plan"]).ok().stdout;
    assert!(out.contains("drain 2h; each gate may wait 5m"), "{out}");
    assert!(out.contains("wait the drain period (2h)"), "{out}");
    // The trust table: each cluster, now and after each phase.
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("trust, now and after each phase"))
        .collect();
    assert!(
        table
            .get(1)
            .is_some_and(|h| h.contains("after SwitchSigner")),
        "{out}"
    );
    assert!(
        table.iter().any(|l| l.starts_with("cluster1: trusts")
            && l.contains("its current root + the new root")
            && l.trim_end().ends_with("the new root")),
        "{out}"
    );
    assert!(
        out.contains("To replace only the mesh CA under the same anchor")
            && out.contains("--replace"),
        "{out}"
    );

    let json = s
        .cacertd(&[
            "rotate-root",
            "plan",
            "--drain",
            "0s",
            "--skip-workload-restarts",
            "--approve-each-phase",
            "-o",
            "json",
        ])
        .ok()
        .stdout;
    let steps: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let actions: Vec<&str> = steps
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert!(
        !actions.iter().any(|a| a.contains("workloads")),
        "{actions:#?}"
    );
    assert!(!actions.iter().any(|a| a.contains("drain")), "{actions:#?}");
    assert_eq!(actions.iter().filter(|a| a.contains("approval")).count(), 2);
    // 3 phases × (2 folders written + their application confirmed + a gate) + 2 approvals.
    assert_eq!(steps.len(), 3 * (2 + 1 + 1) + 2);
    assert_eq!(steps[0]["phase"], "add-new-root");
    assert_eq!(steps[0]["cluster"], "cluster1");
    assert_eq!(steps.last().unwrap()["phase"], "remove-old-root");
    assert!(steps.last().unwrap()["cluster"].is_null());
}

#[test]
fn a_bad_drain_is_refused_with_the_field_named() {
    let s = Setup::with_config(&format!(
        "{ACCEPTANCE_CONFIG}\n[transition]\ndrain = \"soon\"\n"
    ));
    let run = s.cacertd(&["migrate", "plan"]).fails_with(2);
    assert!(run.stderr.contains("transition.drain"), "{}", run.stderr);
    assert!(run.stderr.contains("soon"), "{}", run.stderr);

    let s = Setup::new();
    let run = s
        .cacertd(&["migrate", "plan", "--drain", "forever"])
        .fails_with(2);
    assert!(run.stderr.contains("--drain"), "{}", run.stderr);
}
