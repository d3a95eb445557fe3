//! Rollbacks resumed and withdrawn, drains at the edge, and the one-phase kinds: a root's
//! removal and a revocation.

use super::*;

/// Drives until `phase` is about to start (nothing written in it yet).
fn until_phase(r: &mut Record, phase: Phase, now: OffsetDateTime) {
    while r.phase < phase {
        let s = next_step(r, now);
        let o = match s {
            Step::Write { .. } => StepOutcome::Written,
            Step::Restart { .. } => StepOutcome::Restarted,
            Step::CheckGate { .. } => StepOutcome::GateHeld,
            Step::AwaitApproval { .. } => {
                r.approve();
                continue;
            }
            other => panic!("unexpected {other:?}"),
        };
        r.record(&s, o, now);
    }
}

#[test]
fn a_write_begun_but_not_recorded_counts_when_rolling_back() {
    let mut r = Record::new(TransitionKind::Migrate, ["a".to_string()], opts());
    until_phase(&mut r, Phase::SwitchSigner, t(0));
    // The SwitchSigner write to "a" may have landed; the process died before recording it.
    r.begin_write("a");
    r.rollback().unwrap();
    assert_eq!(
        r.state,
        State::RollingBack {
            to: MaterialOf::Phase(Phase::AddNewRoot)
        }
    );
}

#[test]
fn a_rollback_whose_gate_fails_is_resumed_as_a_rollback() {
    let mut r = Record::new(TransitionKind::Migrate, ["a".to_string()], opts());
    until_phase(&mut r, Phase::SwitchSigner, t(0));
    let w = next_step(&r, t(0));
    r.record(&w, StepOutcome::Written, t(0));
    r.rollback().unwrap();
    loop {
        let s = next_step(&r, t(0));
        if let Step::CheckGate { .. } = s {
            r.record(&s, StepOutcome::GateBehind(vec!["a/app".into()]), t(0));
            r.record(&s, StepOutcome::GateBehind(vec!["a/app".into()]), t(600));
            break;
        }
        let o = match s {
            Step::Write { .. } => StepOutcome::Written,
            _ => StepOutcome::Restarted,
        };
        r.record(&s, o, t(0));
    }
    assert!(matches!(
        r.state,
        State::Failed {
            rolling_back_to: Some(MaterialOf::Phase(Phase::AddNewRoot)),
            ..
        }
    ));
    r.resume().unwrap();
    assert_eq!(
        r.state,
        State::RollingBack {
            to: MaterialOf::Phase(Phase::AddNewRoot)
        }
    );
    assert!(matches!(next_step(&r, t(700)), Step::CheckGate { .. }));
}

#[test]
fn a_rollback_withdraws_the_approval() {
    let mut o = opts();
    o.approve_each_phase = true;
    let mut r = Record::new(TransitionKind::Migrate, ["a".to_string()], o);
    until_phase(&mut r, Phase::SwitchSigner, t(0));
    r.approve();
    let w = next_step(&r, t(0));
    assert!(matches!(w, Step::Write { .. }));
    r.record(&w, StepOutcome::Written, t(0));
    r.rollback().unwrap();
    run_rollback(&mut r);
    assert!(matches!(r.state, State::Held { .. }));
    r.resume().unwrap();
    assert_eq!(
        next_step(&r, t(1)),
        Step::AwaitApproval {
            phase: Phase::SwitchSigner
        }
    );
}

fn run_rollback(r: &mut Record) {
    while matches!(r.state, State::RollingBack { .. }) {
        let s = next_step(r, t(0));
        let o = match s {
            Step::Write { .. } => StepOutcome::Written,
            Step::Restart { .. } => StepOutcome::Restarted,
            _ => StepOutcome::GateHeld,
        };
        r.record(&s, o, t(0));
    }
}

#[test]
fn an_enormous_drain_never_wraps_into_no_drain() {
    let mut o = opts();
    o.drain_seconds = u64::MAX;
    let mut r = Record::new(TransitionKind::Migrate, ["a".to_string()], o);
    until_phase(&mut r, Phase::RemoveOldRoot, t(0));
    assert!(matches!(next_step(&r, t(10_000_000)), Step::Drain { .. }));
}

/// A root's removal is one phase: RemoveOldRoot's writes, restarts and gate, with no drain
/// (taking trust away breaks nothing anyone signs), and a rollback returns each cluster to
/// what it had — there is no earlier phase's material.
#[test]
fn a_root_removal_is_one_phase_and_rolls_back_to_the_original() {
    let names = ["a", "b"].map(String::from);
    let mut r = Record::new(TransitionKind::RemoveRoot, names.clone(), opts());
    assert_eq!(r.phase, Phase::RemoveOldRoot);
    let steps = run(&mut r, t(0));
    assert!(!steps.iter().any(|s| matches!(s, Step::Drain { .. })));
    assert_eq!(
        steps
            .iter()
            .filter(|s| matches!(s, Step::CheckGate { .. }))
            .count(),
        1
    );
    assert!(r.is_over() && !r.new_signer_used);

    let mut r = Record::new(TransitionKind::RemoveRoot, names, opts());
    let write = next_step(&r, t(0));
    r.record(&write, StepOutcome::Written, t(0));
    r.rollback().unwrap();
    assert_eq!(
        r.state,
        State::RollingBack {
            to: MaterialOf::Original
        }
    );
    let steps = run(&mut r, t(0));
    assert!(
        steps.iter().all(
            |s| !matches!(s, Step::Write { material, .. } if *material != MaterialOf::Original)
        )
    );
    assert_eq!(r.state, State::RolledBack);
}

fn revocation(of: &str, first_lists: &[&str]) -> Revocation {
    Revocation {
        cluster: of.into(),
        subject: "O=Istio, L=a, CN=Intermediate CA".into(),
        serial: "01".into(),
        fingerprint: "AA".into(),
        reason: crate::pki::Reason::KeyCompromise,
        lists_before: String::new(),
        lists_after: String::new(),
        first_lists: first_lists.iter().map(|c| c.to_string()).collect(),
    }
}

/// A revocation restarts only where a signer changes — the revoked cluster, at the switch —
/// and, once the revocation is published, the primaries whose proxies had no lists to check;
/// it has no drain, and a rollback never takes lists away from proxies that had none before.
#[test]
fn a_revocation_restarts_where_a_signer_changes_or_lists_are_new() {
    let names = ["a", "b", "c"].map(String::from);
    let mut r = Record::new(
        TransitionKind::Revoke,
        names.clone(),
        Options {
            drain_seconds: 0,
            ..opts()
        },
    );
    r.revocation = Some(revocation("a", &["a", "b"]));
    let steps = run(&mut r, t(0));
    let restarts: Vec<(String, Stage)> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Restart { cluster, stage } => Some((cluster.clone(), *stage)),
            _ => None,
        })
        .collect();
    assert_eq!(
        restarts,
        vec![
            ("a".to_string(), Stage::Istiod),
            ("a".to_string(), Stage::Gateways),
            ("a".to_string(), Stage::Workloads),
            ("b".to_string(), Stage::Gateways),
            ("b".to_string(), Stage::Workloads),
        ],
        "{steps:#?}"
    );
    assert!(!steps.iter().any(|s| matches!(s, Step::Drain { .. })));
    assert!(r.is_over());

    // Rolled back from the switch, the revoked cluster restarts on its old signer again.
    let mut r = Record::new(TransitionKind::Revoke, names.clone(), opts());
    r.revocation = Some(revocation("a", &[]));
    for _ in 0..3 {
        let step = next_step(&r, t(0));
        r.record(&step, StepOutcome::Written, t(0));
    }
    let gate = next_step(&r, t(0));
    r.record(&gate, StepOutcome::GateHeld, t(0));
    let write = next_step(&r, t(0));
    r.record(&write, StepOutcome::Written, t(0));
    r.rollback().unwrap();
    assert_eq!(r.restarts("a"), Stage::ALL.to_vec());
    assert_eq!(r.restarts("b"), vec![]);

    // Back to before the lists, where proxies had none: refused once any was written.
    let mut r = Record::new(TransitionKind::Revoke, names, opts());
    r.revocation = Some(revocation("a", &["b"]));
    let write = next_step(&r, t(0));
    r.record(&write, StepOutcome::Written, t(0));
    let err = r.rollback().unwrap_err();
    assert!(err.contains("b had no revocation lists before"), "{err}");
}

/// A renewal where lists are served restarts nothing (istiod takes a new intermediate by
/// itself) and ends once the renewed cluster switched: there is no revocation to publish.
#[test]
fn a_renewal_restarts_nothing_and_ends_at_the_switch() {
    let names = ["a", "b"].map(String::from);
    let mut r = Record::new(TransitionKind::Renew, names, opts());
    r.revocation = Some(revocation("a", &["b"]));
    let steps = run(&mut r, t(0));
    assert!(
        !steps.iter().any(|s| matches!(s, Step::Restart { .. })),
        "{steps:#?}"
    );
    let written: Vec<Phase> = r
        .timeline
        .iter()
        .filter_map(|m| {
            Phase::ALL
                .into_iter()
                .find(|p| m.what == format!("entered phase {p}"))
        })
        .collect();
    assert_eq!(written, vec![Phase::SwitchSigner, Phase::Done]);
    let writes = steps
        .iter()
        .filter(|s| matches!(s, Step::Write { .. }))
        .count();
    assert_eq!(
        writes, 4,
        "AddNewRoot and SwitchSigner, each cluster: {steps:#?}"
    );
    assert!(r.is_over());
    let err = r.rollback().unwrap_err();
    assert!(err.contains("is done"), "{err}");
}

/// A migration where the clusters serve lists: a primary already on the common root that
/// only gets the newcomers' lists restarts nothing; the newcomer restarts as in any migration.
#[test]
fn a_primary_that_only_gets_lists_restarts_nothing() {
    let names = ["mesh", "newcomer"].map(String::from);
    let mut r = Record::new(
        TransitionKind::Migrate,
        names,
        Options {
            lists_only: vec!["mesh".into()],
            drain_seconds: 0,
            ..opts()
        },
    );
    let steps = run(&mut r, t(0));
    let restarted: Vec<&str> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Restart { cluster, .. } => Some(cluster.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        !restarted.is_empty() && restarted.iter().all(|c| *c == "newcomer"),
        "{steps:#?}"
    );
    assert!(r.is_over());
}
