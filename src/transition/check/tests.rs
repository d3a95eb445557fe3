use super::*;
use crate::transition::Options;

fn primary(name: &str, root: &str, pinned: Vec<Pinned>) -> Primary {
    Primary {
        name: name.into(),
        bundle: [root.to_string()].into(),
        signer: root.into(),
        multiroot: false,
        directory: false,
        pinned,
    }
}

fn scopes(names: &[&str]) -> Vec<Scope> {
    names
        .iter()
        .map(|n| Scope {
            primary: n.to_string(),
            remotes: vec![],
        })
        .collect()
}

fn rotation(primaries: &[Primary], options: Options) -> Vec<CheckedStep> {
    rotation_checked(primaries, options).steps
}

fn rotation_checked(primaries: &[Primary], options: Options) -> Checked {
    let record = Record::new(
        TransitionKind::RotateRoot,
        primaries.iter().map(|p| p.name.clone()),
        options,
    );
    let names: Vec<&str> = primaries.iter().map(|p| p.name.as_str()).collect();
    let roots = Roots {
        new: "the new root".into(),
        removed: None,
    };
    check(
        &record,
        &scopes(&names),
        primaries,
        &roots,
        OffsetDateTime::UNIX_EPOCH,
    )
}

/// The trust table: what each cluster (a remote as its primary) trusts and signs under,
/// now and after each phase; a primary already on the new root does not move.
#[test]
fn the_trust_table_shows_each_cluster_now_and_after_each_phase() {
    let mesh = [primary("a", "old", vec![]), primary("b", "new", vec![])];
    let record = Record::new(
        TransitionKind::RotateRoot,
        ["a".to_string()],
        Options::for_tests(),
    );
    let mut scopes = scopes(&["a", "b"]);
    scopes[0].remotes.push("r".into());
    let roots = Roots {
        new: "new".into(),
        removed: None,
    };
    let table = check(&record, &scopes, &mesh, &roots, OffsetDateTime::UNIX_EPOCH).trust;
    let cells = |row: &TrustRow| -> Vec<(String, Vec<String>, String)> {
        row.columns
            .iter()
            .map(|c| (c.when.clone(), c.trusts.clone(), c.signs_under.clone()))
            .collect()
    };
    let of = |when: &str, trusts: &[&str], signer: &str| {
        (
            when.to_string(),
            trusts.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            signer.to_string(),
        )
    };
    let names: Vec<&str> = table.iter().map(|r| r.cluster.as_str()).collect();
    assert_eq!(names, ["a", "r", "b"]);
    assert_eq!(table[1].served_by.as_deref(), Some("a"));
    assert_eq!(
        cells(&table[0]),
        [
            of("now", &["old"], "old"),
            of("after AddNewRoot", &["new", "old"], "old"),
            of("after SwitchSigner", &["new", "old"], "new"),
            of("after RemoveOldRoot", &["new"], "new"),
        ]
    );
    assert_eq!(cells(&table[1]), cells(&table[0]));
    assert!(
        cells(&table[2])
            .iter()
            .all(|(_, trusts, signer)| trusts == &["new"] && signer == "new")
    );
    // The plan's table, reading nothing, says the same in words.
    let planned = planned_trust(TransitionKind::Migrate, &scopes, Options::for_tests());
    assert_eq!(planned.len(), 3);
    assert_eq!(
        cells(&planned[2]).last().unwrap(),
        &of(
            "after RemoveOldRoot",
            &["the common root"],
            "the common root"
        )
    );
}

#[test]
fn a_plain_rotation_breaks_no_pair_at_any_step() {
    let mesh = [primary("a", "old", vec![]), primary("b", "old", vec![])];
    let steps = rotation(&mesh, Options::for_tests());
    assert!(!steps.is_empty());
    for s in &steps {
        assert!(s.breaks.is_empty(), "{s:#?}");
    }
}

/// A bare pod keeps the bundle it started with: once a cluster signs under the new root,
/// its pairs with that cluster's workloads break — flagged at the write's istiod restart,
/// with the AddNewRoot gate's note that it waits for the pod to be re-created.
#[test]
fn a_bare_pod_is_flagged_where_the_new_signer_reaches_it() {
    let pod = Pinned {
        name: "b/app/debug (a bare pod)".into(),
        pushed: false,
    };
    let mesh = [primary("a", "old", vec![]), primary("b", "old", vec![pod])];
    let steps = rotation(&mesh, Options::for_tests());
    let first = steps
        .iter()
        .position(|s| !s.breaks.is_empty())
        .expect("a step breaks the bare pod");
    let s = &steps[first];
    assert_eq!(s.step.phase, Phase::SwitchSigner, "{s:#?}");
    assert!(s.step.action.contains("restart istiod"), "{s:#?}");
    assert!(
        s.breaks
            .iter()
            .any(|b| b.contains("b/app/debug (a bare pod) does not trust the new root")),
        "{s:#?}"
    );
    assert!(
        steps
            .iter()
            .any(|s| s.notes.iter().any(|n| n.contains("re-created"))),
        "the AddNewRoot gate says it waits"
    );
    // Taking pushed bundles from a multi-root istiod, it follows: nothing breaks.
    let mut mesh = mesh;
    mesh[1].multiroot = true;
    mesh[1].pinned[0].pushed = true;
    assert!(
        rotation(&mesh, Options::for_tests())
            .iter()
            .all(|s| s.breaks.is_empty())
    );
}

/// Without workload restarts, certificates of the old signer live until they expire: the
/// drain is what makes RemoveOldRoot safe. With none, the removal is flagged.
#[test]
fn removing_the_old_root_before_its_certificates_expire_is_flagged() {
    let mesh = [primary("a", "old", vec![]), primary("b", "old", vec![])];
    let mut o = Options::for_tests();
    o.skip_workload_restarts = true;
    assert!(
        rotation(&mesh, o.clone())
            .iter()
            .all(|s| s.breaks.is_empty())
    );
    o.drain_seconds = 0;
    let steps = rotation(&mesh, o);
    let flagged: Vec<_> = steps.iter().filter(|s| !s.breaks.is_empty()).collect();
    assert!(!flagged.is_empty(), "{steps:#?}");
    assert!(
        flagged.iter().all(|s| s.step.phase == Phase::RemoveOldRoot),
        "{flagged:#?}"
    );
    assert!(
        flagged[0].breaks[0].contains("chain to old"),
        "{flagged:#?}"
    );
}
