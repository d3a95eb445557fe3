use super::*;

impl Options {
    /// One cluster at a time, a day's drain, ten minutes for a gate, every restart.
    pub(crate) fn for_tests() -> Self {
        Options {
            exclude_namespaces: Vec::new(),
            directories: BTreeMap::new(),
            max_parallel: 1,
            renewal_wait_seconds: None,
            list_propagation_seconds: None,
            emergency: false,
            lists_only: Vec::new(),
            drain_seconds: 86_400,
            gate_timeout_seconds: 600,
            skip_workload_restarts: false,
            wait_for_renewal: false,
            approve_each_phase: false,
        }
    }
}

fn opts() -> Options {
    Options::for_tests()
}

fn t(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
}

/// Drives the record with every step succeeding; returns the steps in order.
fn run(record: &mut Record, mut now: OffsetDateTime) -> Vec<Step> {
    let mut steps = Vec::new();
    for _ in 0..1000 {
        let step = next_step(record, now);
        steps.push(step.clone());
        let outcome = match &step {
            Step::Write { .. } => StepOutcome::Written,
            Step::Restart { .. } => StepOutcome::Restarted,
            Step::CheckGate { .. } => StepOutcome::GateHeld,
            Step::Drain { until } => {
                now = *until;
                continue;
            }
            Step::AwaitApproval { .. } => {
                record.approve();
                continue;
            }
            Step::AwaitApplied { .. } => {
                record.confirm_applied();
                continue;
            }
            Step::Stopped { .. } | Step::Held { .. } | Step::Finished => return steps,
        };
        record.record(&step, outcome, now);
    }
    panic!("the transition did not finish");
}

/// A directory target is never restarted by cacertd (whoever applies its folder does), and
/// after each step's writes nothing moves on until an operator confirms that the folders nobody
/// observes are applied — not the gate, not the next phase's writes. An observed folder needs no
/// confirmation: its gate reads the cluster.
#[test]
fn folders_are_not_restarted_and_each_step_waits_for_their_application() {
    let mut o = opts();
    o.drain_seconds = 0;
    o.directories = [
        ("dir".to_string(), DirProof::Approval),
        ("seen".to_string(), DirProof::Observed),
    ]
    .into();
    let names = ["dir", "kube", "seen"].map(String::from);
    let mut r = Record::new(TransitionKind::RotateRoot, names, o.clone());
    let steps = run(&mut r, t(0));
    let restarted: std::collections::BTreeSet<&str> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Restart { cluster, .. } => Some(cluster.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(restarted, ["kube"].into());
    let waits = steps
        .iter()
        .filter(|s| matches!(s, Step::AwaitApplied { clusters } if clusters == &["dir"]))
        .count();
    assert_eq!(waits, 3, "one per phase: {steps:#?}");
    // Each wait comes after every write of its phase and before its gate.
    for (i, s) in steps.iter().enumerate() {
        if matches!(s, Step::AwaitApplied { .. }) {
            assert!(matches!(steps[i + 1], Step::CheckGate { .. }), "{steps:#?}");
            assert!(matches!(
                steps[i - 1],
                Step::Write { .. } | Step::Restart { .. }
            ));
        }
    }
    // Unconfirmed, the record stays there: a gate never runs, however much time passes.
    let mut r = Record::new(TransitionKind::RotateRoot, ["dir".to_string()], o.clone());
    let write = next_step(&r, t(0));
    r.record(&write, StepOutcome::Written, t(0));
    for later in [t(0), t(86_400 * 365)] {
        assert_eq!(
            next_step(&r, later),
            Step::AwaitApplied {
                clusters: vec!["dir".into()]
            }
        );
    }
    r.confirm_applied();
    assert!(matches!(next_step(&r, t(0)), Step::CheckGate { .. }));
    r.record(&next_step(&r, t(0)), StepOutcome::GateHeld, t(0));
    assert_eq!(r.phase, Phase::SwitchSigner);
    assert!(!r.applied, "a confirmation covers one step");
}

#[test]
fn several_clusters_at_once_keep_each_clusters_order_and_the_gate_last() {
    let mut o = opts();
    o.max_parallel = 2;
    let names = ["a", "b", "c"].map(String::from);
    let mut r = Record::new(TransitionKind::Migrate, names, o);
    let write = |c: &str| Step::Write {
        cluster: c.into(),
        material: MaterialOf::Phase(Phase::AddNewRoot),
    };
    let restart = |c: &str, stage| Step::Restart {
        cluster: c.into(),
        stage,
    };
    assert_eq!(next_steps(&r, t(0), usize::MAX), [write("a"), write("b")]);
    assert_eq!(
        next_steps(&r, t(0), 1),
        [write("a")],
        "no more than the room left"
    );
    r.record(&write("a"), StepOutcome::Written, t(0));
    assert_eq!(
        next_steps(&r, t(0), usize::MAX),
        [restart("a", Stage::Istiod), write("b")]
    );
    // Run everything in batches: the gate comes only once all three clusters are done.
    let mut seen = Vec::new();
    loop {
        let batch = next_steps(&r, t(0), usize::MAX);
        if matches!(batch[0], Step::CheckGate { .. }) {
            break;
        }
        assert!(batch.len() <= 2);
        for s in batch {
            let outcome = match s {
                Step::Write { .. } => StepOutcome::Written,
                _ => StepOutcome::Restarted,
            };
            r.record(&s, outcome, t(0));
            seen.push(s);
        }
    }
    assert_eq!(
        seen.len(),
        3 * 4 - 1,
        "a's write was recorded before the loop"
    );
    assert!(
        r.clusters
            .values()
            .all(|p| p.written && p.restarted.len() == 3)
    );
}

#[test]
fn no_cluster_switches_signer_before_every_cluster_trusts_the_new_root() {
    let mut r = Record::new(
        TransitionKind::Migrate,
        ["east".to_string(), "west".to_string()],
        opts(),
    );
    let steps = run(&mut r, t(0));
    assert_eq!(r.phase, Phase::Done);
    let first_switch = steps
        .iter()
        .position(|s| {
            matches!(
                s,
                Step::Write {
                    material: MaterialOf::Phase(Phase::SwitchSigner),
                    ..
                }
            )
        })
        .unwrap();
    let add_writes: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            matches!(
                s,
                Step::Write {
                    material: MaterialOf::Phase(Phase::AddNewRoot),
                    ..
                }
            )
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(add_writes.len(), 2);
    let gate = steps
        .iter()
        .position(|s| matches!(s, Step::CheckGate { .. }))
        .unwrap();
    assert!(add_writes.iter().all(|i| *i < gate) && gate < first_switch);
    // Each cluster restarts istiod, then gateways, then workloads, after its write.
    let east: Vec<&Step> = steps
        .iter()
        .filter(|s| matches!(s, Step::Write { cluster, .. } | Step::Restart { cluster, .. } if cluster == "east"))
        .take(4)
        .collect();
    assert!(matches!(east[0], Step::Write { .. }));
    assert!(matches!(
        east[1],
        Step::Restart {
            stage: Stage::Istiod,
            ..
        }
    ));
    assert!(matches!(
        east[2],
        Step::Restart {
            stage: Stage::Gateways,
            ..
        }
    ));
    assert!(matches!(
        east[3],
        Step::Restart {
            stage: Stage::Workloads,
            ..
        }
    ));
}

#[test]
fn the_old_root_stays_until_the_drain_period_has_passed() {
    let mut r = Record::new(TransitionKind::RotateRoot, ["a".to_string()], opts());
    let mut now = t(0);
    while r.phase != Phase::RemoveOldRoot {
        let step = next_step(&r, now);
        let outcome = match step {
            Step::Write { .. } => StepOutcome::Written,
            Step::Restart { .. } => StepOutcome::Restarted,
            Step::CheckGate { .. } => StepOutcome::GateHeld,
            other => panic!("unexpected {other:?}"),
        };
        r.record(&step, outcome, now);
        now += time::Duration::seconds(1);
    }
    let switched = r.switched_at.unwrap();
    let until = OffsetDateTime::from_unix_timestamp(switched + 86_400).unwrap();
    assert_eq!(next_step(&r, now), Step::Drain { until });
    assert_eq!(
        next_step(&r, until - time::Duration::seconds(1)),
        Step::Drain { until }
    );
    assert!(matches!(next_step(&r, until), Step::Write { .. }));
}

#[test]
fn a_gate_that_does_not_hold_in_time_fails_with_who_is_behind_and_resume_continues() {
    let mut r = Record::new(TransitionKind::Migrate, ["a".to_string()], opts());
    let write = Step::Write {
        cluster: "a".into(),
        material: MaterialOf::Phase(Phase::AddNewRoot),
    };
    r.record(&write, StepOutcome::Written, t(0));
    for stage in Stage::ALL {
        r.record(
            &Step::Restart {
                cluster: "a".into(),
                stage,
            },
            StepOutcome::Restarted,
            t(0),
        );
    }
    let gate = next_step(&r, t(0));
    assert!(matches!(gate, Step::CheckGate { .. }));
    let behind = vec!["a/bookinfo: istio-ca-root-cert lacks the new root".to_string()];
    r.record(&gate, StepOutcome::GateBehind(behind.clone()), t(0));
    assert_eq!(r.state, State::Active, "still within the gate timeout");
    assert_eq!(r.behind, behind, "kept for `transition status`");
    r.record(&gate, StepOutcome::GateBehind(behind), t(600));
    let Step::Stopped { report } = next_step(&r, t(600)) else {
        panic!("expected a stop")
    };
    let failed = r.timeline.last().unwrap();
    assert_eq!(
        (failed.at, failed.what.as_str()),
        (
            t(600).unix_timestamp(),
            "failed: the gate of phase AddNewRoot did not hold"
        )
    );
    assert!(
        report.contains("a/bookinfo") && report.contains("AddNewRoot"),
        "{report}"
    );
    r.resume().unwrap();
    assert_eq!(
        next_step(&r, t(700)),
        gate,
        "resume re-checks the gate, nothing redone"
    );
    r.record(&gate, StepOutcome::GateHeld, t(700));
    assert!(r.behind.is_empty(), "cleared once the gate held");
    assert_eq!(r.phase, Phase::SwitchSigner);
}

#[test]
fn rollback_returns_every_cluster_to_the_previous_phases_material() {
    let mut r = Record::new(
        TransitionKind::Migrate,
        ["a".to_string(), "b".to_string()],
        opts(),
    );
    // Finish AddNewRoot, write SwitchSigner to "a" only.
    while r.phase == Phase::AddNewRoot {
        let s = next_step(&r, t(0));
        let o = match s {
            Step::Write { .. } => StepOutcome::Written,
            Step::Restart { .. } => StepOutcome::Restarted,
            _ => StepOutcome::GateHeld,
        };
        r.record(&s, o, t(0));
    }
    let s = next_step(&r, t(0));
    r.record(&s, StepOutcome::Written, t(0));
    r.rollback().unwrap();
    let steps = run(&mut r, t(1));
    let writes: Vec<_> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Write { cluster, material } => Some((cluster.as_str(), *material)),
            _ => None,
        })
        .collect();
    assert_eq!(
        writes,
        [
            ("a", MaterialOf::Phase(Phase::AddNewRoot)),
            ("b", MaterialOf::Phase(Phase::AddNewRoot))
        ]
    );
    assert_eq!(r.phase, Phase::SwitchSigner);
    assert!(matches!(r.state, State::Held { .. }));
    // A second rollback returns to the original material and ends the transition — after
    // a drain, since "a" signed with the new CA and its certificates still live.
    r.rollback().unwrap();
    let steps = run(&mut r, t(2));
    assert!(
        matches!(steps[0], Step::Drain { until } if until == t(1) + time::Duration::days(1)),
        "{steps:?}"
    );
    assert!(steps.iter().any(|s| matches!(
        s,
        Step::Write {
            material: MaterialOf::Original,
            ..
        }
    )));
    assert_eq!(r.state, State::RolledBack);
    assert_eq!(next_step(&r, t(3)), Step::Finished);
    // The timeline says when each phase was entered and each rollback ended.
    let timeline: Vec<&str> = r.timeline.iter().map(|m| m.what.as_str()).collect();
    assert_eq!(
        timeline,
        [
            "entered phase SwitchSigner",
            "rolled back to the material of phase AddNewRoot",
            "rolled back to the original material"
        ]
    );
}

#[test]
fn a_finished_transition_cannot_be_rolled_back() {
    let mut r = Record::new(TransitionKind::RotateRoot, ["a".to_string()], opts());
    run(&mut r, t(0));
    assert!(r.rollback().unwrap_err().contains("done"));
}

#[test]
fn skipping_workload_restarts_and_approval_between_phases() {
    let mut o = opts();
    o.skip_workload_restarts = true;
    o.approve_each_phase = true;
    o.drain_seconds = 0;
    let mut r = Record::new(TransitionKind::Migrate, ["a".to_string()], o);
    let steps = run(&mut r, t(0));
    assert!(!steps.iter().any(|s| matches!(
        s,
        Step::Restart {
            stage: Stage::Workloads,
            ..
        }
    )));
    let approvals: Vec<Phase> = steps
        .iter()
        .filter_map(|s| match s {
            Step::AwaitApproval { phase } => Some(*phase),
            _ => None,
        })
        .collect();
    assert_eq!(approvals, [Phase::SwitchSigner, Phase::RemoveOldRoot]);
}

#[test]
fn the_record_survives_a_json_round_trip() {
    let mut r = Record::new(TransitionKind::Migrate, ["a".to_string()], opts());
    let s = next_step(&r, t(0));
    r.record(&s, StepOutcome::Written, t(0));
    r.rollback().unwrap();
    let json = serde_json::to_string(&r).unwrap();
    let back: Record = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
}

mod rollbacks_and_kinds;
