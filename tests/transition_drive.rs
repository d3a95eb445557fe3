//! `migrate start`, `transition status|resume|rollback|abort` against directory targets: each
//! step waits until an operator confirms its folders are applied, the phases run to Done, a
//! crash after any single step resumes to the same end, rollback restores the material byte
//! for byte, and a gate that does not hold fails with the cluster named.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{ACCEPTANCE_CONFIG, Setup};

const FILES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "root-cert.pem",
    "cert-chain.pem",
];

/// A setup whose two primaries serve cacerts under an unrelated root (another mesh's), and
/// which holds its own common root.
fn migrating(config: &str) -> Setup {
    let other = Setup::new();
    other.cacertd(&["issue", "--init-root"]).ok();
    let s = Setup::with_config(config);
    for c in ["cluster1", "cluster2"] {
        let to = s.path(&format!("out/{c}"));
        std::fs::create_dir_all(&to).unwrap();
        for f in FILES {
            std::fs::copy(other.path(&format!("out/{c}/{f}")), to.join(f)).unwrap();
        }
    }
    s.cacertd(&["root", "init"]).ok();
    s
}

fn served(s: &Setup, cluster: &str) -> Vec<Vec<u8>> {
    FILES
        .iter()
        .map(|f| s.read(&format!("out/{cluster}/{f}")))
        .collect()
}

fn count_certs(pem: &[u8]) -> usize {
    String::from_utf8_lossy(pem)
        .matches("BEGIN CERTIFICATE")
        .count()
}

fn audit_count(s: &Setup, action: &str) -> usize {
    std::fs::read_to_string(s.path("state/audit.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("\"action\":\"{action}\"")))
        .count()
}

fn assert_on_common_root(s: &Setup) {
    let root = s.read("state/root/root-cert.pem");
    for c in ["cluster1", "cluster2"] {
        assert_eq!(s.read(&format!("out/{c}/root-cert.pem")), root, "{c}");
        assert_eq!(
            s.read(&format!("out/{c}/ca-cert.pem")),
            s.read(&format!("state/transition/{c}/new/ca-cert.pem")),
            "{c} serves the intermediate saved when the transition started"
        );
        s.cacertd(&["verify", &format!("out/{c}")]).ok();
        common::openssl_verify_cacerts(&s.path(&format!("out/{c}"))).ok();
    }
}

#[test]
fn a_migration_runs_through_every_phase_to_the_common_root() {
    let s = migrating(ACCEPTANCE_CONFIG);
    let before: Vec<_> = ["cluster1", "cluster2"].map(|c| served(&s, c)).to_vec();

    // Start writes AddNewRoot's material, then waits until the folders are applied: nothing
    // moves on before an operator says so.
    let run = s
        .cacertd(&["migrate", "start", "--drain", "0s", "--approve-each-phase"])
        .ok();
    assert!(
        run.stdout
            .contains("wait until the folders of cluster1, cluster2 are applied"),
        "{}",
        run.stdout
    );
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(
        status.contains("phase AddNewRoot") && status.contains("next: wait until the folders"),
        "{status}"
    );
    // Confirmed: the gate holds, and with approval between phases it stops there.
    common::drive_folders(&s, false);
    for (i, c) in ["cluster1", "cluster2"].iter().enumerate() {
        let now = served(&s, c);
        assert_eq!(now[0], before[i][0], "{c}: still signs with its old CA");
        assert_eq!(now[1], before[i][1], "{c}: the old key is kept");
        assert!(
            now[2].starts_with(&before[i][2]),
            "{c}: old bundle bytes kept verbatim"
        );
        assert_eq!(count_certs(&now[2]), 2, "{c}: old root + common root");
    }
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(
        status.contains("migrate transition: waiting to enter phase SwitchSigner, active")
            && status.contains("next: wait for an operator's approval to enter SwitchSigner"),
        "{status}"
    );

    s.cacertd(&["transition", "resume", "--approve"]).ok();
    // SwitchSigner done: new intermediate, both roots still trusted.
    for c in ["cluster1", "cluster2"] {
        assert_eq!(
            s.read(&format!("out/{c}/ca-cert.pem")),
            s.read(&format!("state/transition/{c}/new/ca-cert.pem"))
        );
        assert_eq!(count_certs(&s.read(&format!("out/{c}/root-cert.pem"))), 2);
    }
    common::drive_folders(&s, true);
    assert_on_common_root(&s);
    let json = s
        .cacertd(&["transition", "status", "-o", "json"])
        .ok()
        .stdout;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["phase"], "done");
    // The documented shape (README, "Following a transition"), not the raw record.
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "clusters",
            "gate",
            "next",
            "phase",
            "position",
            "started_at",
            "state",
            "timeline",
            "transition"
        ]
    );
    assert_eq!(v["transition"], "migrate");
    assert!(v["started_at"].as_str().unwrap().ends_with('Z'), "{v:#}");
    let root: serde_json::Value =
        serde_json::from_str(&s.cacertd(&["root", "show", "-o", "json"]).ok().stdout).unwrap();
    for c in v["clusters"].as_array().unwrap() {
        assert_eq!(c["write"], "every phase written", "{v:#}");
        assert_eq!(
            c["to_roots"],
            serde_json::json!([root["fingerprint_sha256"]]),
            "{v:#}"
        );
        let from = c["from_roots"].as_array().unwrap();
        assert!(
            !from.is_empty() && !from.contains(&root["fingerprint_sha256"]),
            "{v:#}"
        );
    }
    let timeline: Vec<&str> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["what"].as_str().unwrap())
        .collect();
    // Each folder step was confirmed applied by an operator: said where it happened.
    assert!(
        timeline.contains(&"an operator confirmed the folders are applied"),
        "{v:#}"
    );
    let milestones: Vec<&str> = timeline
        .into_iter()
        .filter(|m| !m.starts_with("an operator"))
        .collect();
    assert_eq!(
        milestones,
        [
            "started",
            "entered phase SwitchSigner",
            "entered phase RemoveOldRoot",
            "entered phase Done"
        ],
        "{v:#}"
    );
    let done = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(
        done.contains("\ntimeline:\n") && done.contains("  entered phase SwitchSigner"),
        "{done}"
    );
    assert!(
        done.contains("phase Done, active")
            && done.contains("cluster1: every phase written")
            && !done.contains("{")
            && !done.contains("not written"),
        "{done}"
    );
    assert_eq!(audit_count(&s, "transition-issue"), 2);
    assert_eq!(audit_count(&s, "transition-write"), 6);
    // Every replaced version is kept: three writes per cluster, three backups.
    for c in ["cluster1", "cluster2"] {
        let backups = std::fs::read_dir(s.path(&format!("state/backups/{c}")))
            .unwrap()
            .count();
        assert_eq!(backups, 3, "{c}");
    }
    // A finished transition cannot be rolled back, and no key is printed anywhere.
    let run = s.cacertd(&["transition", "rollback"]).fails_with(2);
    assert!(run.stderr.contains("done"), "{}", run.stderr);
    assert!(!json.contains("PRIVATE KEY") && !status.contains("PRIVATE KEY"));
}

#[test]
fn a_crash_after_any_step_resumes_to_the_same_end() {
    // 3 phases × 2 primaries × a write (a folder's restarts are up to whoever applies it) + 3
    // gates.
    const STEPS: usize = 9;
    for k in 0..=STEPS {
        let s = migrating(ACCEPTANCE_CONFIG);
        let k_arg = k.to_string();
        let run = s.cacertd(&[
            "migrate",
            "start",
            "--drain",
            "0s",
            "--wait",
            "--stop-after-steps",
            &k_arg,
        ]);
        // Before its k-th step, or where it waits for the folders to be applied.
        assert!(
            (run.code == 1 && run.stderr.contains("stopped after"))
                || (run.code == 0 && run.stdout.contains("wait until the folders")),
            "k={k}: {}{}",
            run.stdout,
            run.stderr
        );
        common::drive_folders(&s, false);
        assert_on_common_root(&s);
        assert_eq!(
            audit_count(&s, "transition-issue"),
            2,
            "k={k}: one intermediate each"
        );
        assert_eq!(
            audit_count(&s, "transition-write"),
            6,
            "k={k}: no write repeated"
        );
    }
}

#[test]
fn rollback_restores_the_previous_material_byte_for_byte() {
    let s = migrating(ACCEPTANCE_CONFIG);
    let original: Vec<_> = ["cluster1", "cluster2"].map(|c| served(&s, c)).to_vec();
    s.cacertd(&["migrate", "start", "--drain", "0s", "--approve-each-phase"])
        .ok();
    common::drive_folders(&s, false);
    s.cacertd(&["transition", "resume", "--approve"]).ok();
    common::drive_folders(&s, false);
    let switched: Vec<_> = ["cluster1", "cluster2"].map(|c| served(&s, c)).to_vec();
    assert_ne!(switched, original);

    // From SwitchSigner (done, waiting to enter RemoveOldRoot): back to AddNewRoot's material.
    s.cacertd(&["transition", "rollback", "--wait"]).ok();
    for (i, c) in ["cluster1", "cluster2"].iter().enumerate() {
        let now = served(&s, c);
        assert_eq!(now[0], original[i][0], "{c}");
        assert_eq!(count_certs(&now[2]), 2, "{c}");
    }
    // A rollback's writes to folders wait for them to be applied too.
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(status.contains("next: wait until the folders"), "{status}");
    common::drive_folders(&s, false);
    // From AddNewRoot: back to exactly what each cluster had.
    s.cacertd(&["transition", "rollback", "--wait"]).ok();
    for (i, c) in ["cluster1", "cluster2"].iter().enumerate() {
        assert_eq!(served(&s, c), original[i], "{c}");
    }
    common::drive_folders(&s, false);
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(status.contains("rolled back"), "{status}");
    // A new migration may start; the old transition's files are moved aside, not deleted.
    s.cacertd(&["migrate", "start", "--drain", "0s", "--wait"])
        .ok();
    common::drive_folders(&s, false);
    assert_on_common_root(&s);
    let aside = std::fs::read_dir(s.path("state"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("transition-")
        })
        .count();
    assert_eq!(aside, 1);
}

/// A rollback that must wait a drain (the new signer was used, and the new root is about to be
/// removed again) stops there without --wait; `transition resume` continues it, and a second
/// `transition rollback` says so instead of refusing blindly.
#[test]
fn a_rollback_waiting_a_drain_is_continued_by_resume() {
    let s = migrating(ACCEPTANCE_CONFIG);
    let original: Vec<_> = ["cluster1", "cluster2"].map(|c| served(&s, c)).to_vec();
    s.cacertd(&["migrate", "start", "--drain", "2s", "--approve-each-phase"])
        .ok();
    common::drive_folders(&s, false);
    s.cacertd(&["transition", "resume", "--approve"]).ok();
    common::drive_folders(&s, false);
    s.cacertd(&["transition", "rollback", "--wait"]).ok();
    common::drive_folders(&s, false);
    // Back to the original material: that removes the new root, after a drain.
    let run = s.cacertd(&["transition", "rollback"]).ok();
    assert!(run.stdout.contains("draining until"), "{}", run.stdout);
    let again = s.cacertd(&["transition", "rollback"]).fails_with(2);
    assert!(
        again
            .stderr
            .contains("continue it with `cacertd transition resume`"),
        "{}",
        again.stderr
    );
    s.cacertd(&["transition", "resume", "--wait"]).ok();
    common::drive_folders(&s, false);
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(status.contains("rolled back"), "{status}");
    for (i, c) in ["cluster1", "cluster2"].iter().enumerate() {
        assert_eq!(served(&s, c), original[i], "{c}");
    }
}

#[test]
fn a_gate_that_does_not_hold_fails_naming_the_cluster_and_resume_completes_once_fixed() {
    let config = format!("{ACCEPTANCE_CONFIG}\n[transition]\ngate_timeout = \"1s\"\n");
    let s = migrating(&config);
    // AddNewRoot written, waiting for the folders; change cluster2 behind the transition's
    // back, then confirm them applied.
    s.cacertd(&["migrate", "start", "--drain", "0s"]).ok();
    let bundle = s.path("out/cluster2/root-cert.pem");
    let good = std::fs::read(&bundle).unwrap();
    std::fs::write(&bundle, b"not a bundle").unwrap();

    let run = s
        .cacertd(&["transition", "resume", "--approve", "--wait"])
        .fails_with(1);
    assert!(run.stderr.contains("cluster2"), "{}", run.stderr);
    assert!(!run.stderr.contains("cluster1:"), "{}", run.stderr);
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(
        status.contains("failed: ") && status.contains("cluster2"),
        "{status}"
    );

    std::fs::write(&bundle, &good).unwrap();
    s.cacertd(&["transition", "resume", "--wait"]).ok();
    common::drive_folders(&s, false);
    assert_on_common_root(&s);
}

#[test]
fn refusals_change_nothing() {
    // No transition: resume and rollback say so.
    let s = Setup::new();
    s.cacertd(&["transition", "resume"]).fails_with(2);
    let out = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(out.contains("no transition"), "{out}");

    // A second start while one is under way is refused; abort moves it aside.
    let s = migrating(ACCEPTANCE_CONFIG);
    s.cacertd(&["migrate", "start", "--approve-each-phase"])
        .ok();
    let before = s.snapshot();
    let run = s.cacertd(&["migrate", "start"]).fails_with(5);
    assert!(run.stderr.contains("already under way"), "{}", run.stderr);
    common::assert_unchanged(&before, &s.snapshot());
    s.cacertd(&["transition", "abort"]).ok();
    assert!(!Path::new(&s.path("state/transition")).exists());

    // Clusters already on the common root are not migrated.
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let run = s.cacertd(&["migrate", "start"]).fails_with(5);
    assert!(run.stderr.contains("nothing to migrate"), "{}", run.stderr);
}

#[test]
fn the_daemon_drives_a_transition_under_way_and_exports_where_it_stands() {
    use cacertd::clock::SystemClock;
    use cacertd::config::Config;
    use cacertd::daemon::Daemon;
    use std::sync::Arc;

    let s = migrating(ACCEPTANCE_CONFIG);
    // Started by hand; the process dies after one step.
    s.cacertd(&[
        "migrate",
        "start",
        "--drain",
        "0s",
        "--stop-after-steps",
        "1",
    ])
    .fails_with(1);
    let config = Config::load(&s.path("cacertd.toml")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d = Daemon::new(config, Arc::new(SystemClock));
        // Reconciliation leaves the clusters the transition holds alone.
        assert!(d.try_lead().await);
        let before = [served(&s, "cluster1"), served(&s, "cluster2")];
        let reports = d.tick().await;
        assert!(reports.is_empty(), "{reports:?}");
        assert_eq!([served(&s, "cluster1"), served(&s, "cluster2")], before);
        // Leadership checked on each heartbeat, then as many steps as fit in the margin it
        // keeps: with directory targets and no drain, the rest takes a heartbeat or two.
        // An operator confirms each step's folders applied, between heartbeats; the daemon
        // never runs ahead of that.
        let files = cacertd::transition::record_store::StateFiles::new(&s.path("state"));
        let (mut heartbeats, mut confirmed, mut moved) = (0, 0, 0);
        while !files.load().unwrap().unwrap().is_over() {
            let mut record = files.load().unwrap().unwrap();
            let now = time::OffsetDateTime::now_utc();
            if let cacertd::transition::Step::AwaitApplied { .. } =
                cacertd::transition::next_step(&record, now)
            {
                record.confirm_applied();
                files.save(&record).unwrap();
                confirmed += 1;
            }
            let before = files.load().unwrap();
            assert!(d.try_lead().await);
            d.drive_transition().await;
            if files.load().unwrap() != before {
                moved += 1;
            }
            heartbeats += 1;
            assert!(heartbeats < 400, "the daemon does not get the transition done");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(confirmed, 3, "the daemon waits for the folders at every step");
        assert!(moved <= 6, "{moved}: steps are batched");
        let metrics = d.metrics().encode();
        assert!(
            metrics.contains(
                "cacertd_transition_phase{transition=\"migrate\",phase=\"Done\",state=\"active\"} 1"
            ),
            "{metrics}"
        );
        assert!(
            metrics.contains(
                "cacertd_transition_phase{transition=\"migrate\",phase=\"AddNewRoot\",state=\"active\"} 0"
            ),
            "{metrics}"
        );
        assert!(metrics.contains("cacertd_transition_gate_wait_seconds 0"), "{metrics}");
        d.step_down().await;
    });
    assert_on_common_root(&s);
    assert_eq!(audit_count(&s, "transition-issue"), 2);
}

#[test]
fn a_root_rotation_moves_every_primary_and_then_the_store_to_the_new_root() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let old_root = s.read("state/root/root-cert.pem");
    let before: Vec<_> = ["cluster1", "cluster2"].map(|c| served(&s, c)).to_vec();

    // Import a new root made elsewhere.
    let elsewhere = Setup::new();
    elsewhere.cacertd(&["root", "init"]).ok();
    let new_root = elsewhere.read("state/root/root-cert.pem");
    let (cert, key) = (
        elsewhere.path("state/root/root-cert.pem"),
        elsewhere.path("state/root/root-key.pem"),
    );
    s.cacertd(&[
        "rotate-root",
        "start",
        "--new-root-cert",
        cert.to_str().unwrap(),
        "--new-root-key",
        key.to_str().unwrap(),
        "--drain",
        "0s",
        "--approve-each-phase",
    ])
    .ok();
    // AddNewRoot: old intermediate, old root bytes + the new root; the store still on the old.
    for (i, c) in ["cluster1", "cluster2"].iter().enumerate() {
        let now = served(&s, c);
        assert_eq!(now[0], before[i][0], "{c}");
        assert!(
            now[2].starts_with(&old_root) && now[2].ends_with(&new_root),
            "{c}"
        );
    }
    assert_eq!(s.read("state/root/root-cert.pem"), old_root);

    common::drive_folders(&s, true);
    // Done: the store holds the new root; the old one is kept aside, never deleted.
    assert_eq!(s.read("state/root/root-cert.pem"), new_root);
    assert_on_common_root(&s);
    let aside: Vec<_> = std::fs::read_dir(s.path("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("root-replaced-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        s.read(&format!("state/{}/root-cert.pem", aside[0])),
        old_root
    );
    // Everything agrees afterwards: `issue` has nothing to do.
    let out = s.cacertd(&["issue"]).ok().stdout;
    assert_eq!(out.matches("unchanged").count(), 2, "{out}");
    assert_eq!(audit_count(&s, "root-rotated"), 1);
    // The store holds the only copy of the new root's key: the one that waited is destroyed.
    assert!(!s.path("state/transition/new-root").exists());
    assert_eq!(key_copies(&s, &s.read("state/root/root-key.pem")), 1);
    assert_eq!(audit_count(&s, "root-next-destroyed"), 1);

    // A second rotation generates its root per the policy.
    s.cacertd(&["rotate-root", "start", "--drain", "0s", "--wait"])
        .ok();
    common::drive_folders(&s, false);
    assert_ne!(s.read("state/root/root-cert.pem"), new_root);
    assert_on_common_root(&s);
}

/// A root planted in one cluster's root-cert.pem — by anyone who once could write it — is
/// flagged by `status`, never carried forward by `issue` without a decision, and accepted once
/// configured as an extra anchor.
#[test]
fn a_planted_root_is_flagged_and_never_carried_forward_silently() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let elsewhere = Setup::new();
    elsewhere.cacertd(&["root", "init"]).ok();
    let planted = elsewhere.read("state/root/root-cert.pem");
    let fp = elsewhere
        .cacertd(&["root", "show", "-o", "json"])
        .ok()
        .stdout;
    let fp: serde_json::Value = serde_json::from_str(&fp).unwrap();
    let fp = fp["fingerprint_sha256"].as_str().unwrap().to_string();
    let bundle = s.path("out/cluster1/root-cert.pem");
    let mut trusted = std::fs::read(&bundle).unwrap();
    trusted.extend_from_slice(&planted);
    std::fs::write(&bundle, &trusted).unwrap();

    let status = s.cacertd(&["status"]).ok().stdout;
    assert!(status.contains("unknown-roots"), "{status}");
    assert!(
        status.contains(&format!("cluster1: sha256 {fp}")),
        "{status}"
    );
    // Not carried forward: `issue` keeps a valid set, `--force` is refused for cluster1.
    let before = s.snapshot();
    let run = s.cacertd(&["issue", "--force", "cluster1"]).fails_with(5);
    assert!(
        run.stdout.contains(&fp) && run.stdout.contains("--keep-unknown-roots"),
        "{}",
        run.stdout
    );
    common::assert_unchanged(&before, &s.snapshot());
    // Carried forward knowingly...
    s.cacertd(&["issue", "--force", "--keep-unknown-roots", "cluster1"])
        .ok();
    assert_eq!(std::fs::read(&bundle).unwrap(), trusted);
    // ...or, configured as an extra anchor, not flagged at all.
    std::fs::write(s.path("federation-root.pem"), &planted).unwrap();
    let config = std::fs::read_to_string(s.path("cacertd.toml")).unwrap();
    std::fs::write(
        s.path("cacertd.toml"),
        format!("extra_trusted_roots = [\"federation-root.pem\"]\n{config}"),
    )
    .unwrap();
    let status = s.cacertd(&["status"]).ok().stdout;
    assert!(!status.contains("unknown-roots"), "{status}");
    s.cacertd(&["issue", "--force", "cluster1"]).ok();
    assert!(s.read("out/cluster1/root-cert.pem").ends_with(&planted));
}

/// How many files under the setup hold exactly `key`.
fn key_copies(s: &Setup, key: &[u8]) -> usize {
    s.snapshot()
        .values()
        .filter(|b| b.as_slice() == key)
        .count()
}

/// A root rotation that stops before each phase after the first, for an approval.
const ROTATE_APPROVING_EACH_PHASE: &[&str] = &[
    "rotate-root",
    "start",
    "--drain",
    "0s",
    "--approve-each-phase",
];

/// A rotation aborted before any cluster signed under its new root leaves no copy of that
/// root's key; one aborted after keeps it, and says why.
#[test]
fn an_aborted_rotation_destroys_its_unused_new_root_key_and_says_what_it_kept() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    // An archive as earlier versions left it, keys included.
    let old = s.path("state/transition-20250101T000000Z/cluster1/new");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("ca-key.pem"), "an old key").unwrap();
    std::fs::write(old.join("ca-cert.pem"), "an old certificate").unwrap();
    s.cacertd(ROTATE_APPROVING_EACH_PHASE).ok();
    let key = s.read("state/transition/new-root/root-key.pem");
    let run = s.cacertd(&["transition", "abort"]).ok();
    assert!(
        run.stdout.contains("destroyed the new root's key file in")
            && run
                .stdout
                .contains("nothing was ever signed under the new root"),
        "{}",
        run.stdout
    );
    assert_eq!(key_copies(&s, &key), 0, "no copy of the unused key is left");
    // The clusters still trust the abandoned root: abort says so, and status flags it.
    for c in ["cluster1", "cluster2"] {
        assert!(
            run.stdout.contains(&format!("{c} still trusts root")),
            "{}",
            run.stdout
        );
    }
    let status = s.cacertd(&["status"]).ok().stdout;
    assert!(status.contains("unknown-roots"), "{status}");

    // After SwitchSigner's writes the key is kept (moved aside with the transition).
    s.cacertd(ROTATE_APPROVING_EACH_PHASE).ok();
    let key = s.read("state/transition/new-root/root-key.pem");
    common::drive_folders(&s, false);
    s.cacertd(&["transition", "resume", "--approve", "--wait"])
        .ok();
    common::drive_folders(&s, false);
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(status.contains("phase RemoveOldRoot"), "{status}");
    let run = s.cacertd(&["transition", "abort"]).ok();
    assert!(
        run.stdout
            .contains("is kept: clusters were given intermediates under it"),
        "{}",
        run.stdout
    );
    assert_eq!(key_copies(&s, &key), 1);
    // Both transitions were moved aside with their material, but without its intermediate
    // keys: each is in its cluster's folder or backups (or was never written).
    let archived: Vec<String> = s
        .snapshot()
        .keys()
        .filter_map(|p| p.strip_prefix(s.path("state")).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.starts_with("transition-") && !p.starts_with("transition-2025"))
        .collect();
    assert!(
        archived
            .iter()
            .filter(|p| p.ends_with("/ca-cert.pem"))
            .count()
            >= 2,
        "{archived:#?}"
    );
    assert!(
        !archived.iter().any(|p| p.ends_with("/ca-key.pem")),
        "{archived:#?}"
    );
    // The older archive lost its key too, and kept the rest.
    assert!(!old.join("ca-key.pem").exists());
    assert!(old.join("ca-cert.pem").exists());
}

#[test]
fn a_rotation_refuses_clusters_not_on_the_current_root() {
    let s = migrating(ACCEPTANCE_CONFIG);
    let before = s.snapshot();
    let run = s.cacertd(&["rotate-root", "start"]).fails_with(5);
    assert!(run.stderr.contains("migrate it first"), "{}", run.stderr);
    common::assert_unchanged(&before, &s.snapshot());
}

#[test]
fn every_command_has_a_dry_run_that_changes_nothing() {
    let s = migrating(ACCEPTANCE_CONFIG);
    let before = s.snapshot();
    let run = s
        .cacertd(&["migrate", "start", "--drain", "0s", "--dry-run"])
        .ok();
    assert!(
        run.stdout.contains("would cover cluster1, cluster2")
            && run.stdout.contains("AddNewRoot:")
            && run.stdout.contains("RemoveOldRoot:"),
        "{}",
        run.stdout
    );
    common::assert_unchanged(&before, &s.snapshot());
    assert!(!s.path("state/transition").exists());
    let run = s
        .cacertd(&["rotate-root", "start", "--dry-run"])
        .fails_with(5);
    assert!(run.stderr.contains("migrate it first"), "{}", run.stderr);
    common::assert_unchanged(&before, &s.snapshot());

    // Under way and waiting for approval into SwitchSigner.
    s.cacertd(&["migrate", "start", "--drain", "0s", "--approve-each-phase"])
        .ok();
    common::drive_folders(&s, false);
    let before = s.snapshot();
    let run = s
        .cacertd(&["transition", "resume", "--approve", "--dry-run"])
        .ok();
    assert!(
        run.stdout.contains("SwitchSigner:")
            && run
                .stdout
                .contains("cluster2: write cacerts into its folder: a new intermediate")
            && run.stdout.contains("wait for an operator's approval"),
        "{}",
        run.stdout
    );
    let run = s.cacertd(&["transition", "rollback", "--dry-run"]).ok();
    assert!(
        run.stdout
            .contains("rolling back to the material from before the transition:")
            && run
                .stdout
                .contains("cluster1: write cacerts into its folder: the material it had before")
            && !run.stdout.contains("new intermediate"),
        "{}",
        run.stdout
    );
    let run = s.cacertd(&["transition", "abort", "--dry-run"]).ok();
    assert!(run.stdout.contains("would move"), "{}", run.stdout);
    common::assert_unchanged(&before, &s.snapshot());
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(
        status.contains("next: wait for an operator's approval to enter SwitchSigner"),
        "{status}"
    );
    // A dry run and a real flag that would act are not accepted together.
    s.cacertd(&["transition", "resume", "--dry-run", "--wait"])
        .fails_with(2);
}

/// A root planted in cluster1's bundle is removed by a one-phase transition: only the
/// primaries that trust it are written, each keeping its intermediate, and nothing moves on
/// before their folders are applied. Workloads — from before and after the write, in both
/// clusters — complete mTLS throughout. The common root, a root a cluster signs under and a
/// root nobody trusts are refused, changing nothing.
#[test]
fn a_planted_root_is_removed_in_one_phase_keeping_every_signer() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let elsewhere = Setup::new();
    elsewhere.cacertd(&["root", "init"]).ok();
    let planted = elsewhere.read("state/root/root-cert.pem");
    let fingerprint = |setup: &Setup| {
        let shown = setup.cacertd(&["root", "show", "-o", "json"]).ok().stdout;
        let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
        shown["fingerprint_sha256"].as_str().unwrap().to_string()
    };
    let fp = fingerprint(&elsewhere);
    let bundle = s.path("out/cluster1/root-cert.pem");
    let clean = std::fs::read(&bundle).unwrap();
    let mut trusted = clean.clone();
    trusted.extend_from_slice(&planted);
    std::fs::write(&bundle, &trusted).unwrap();
    let before_write = s.path("before-cluster1");
    std::fs::create_dir(&before_write).unwrap();
    for f in FILES {
        std::fs::copy(s.path(&format!("out/cluster1/{f}")), before_write.join(f)).unwrap();
    }

    // Refused, changing nothing: the common root, a malformed fingerprint, a root nobody trusts.
    let before = s.snapshot();
    let run = s
        .cacertd(&["transition", "remove-root", &fingerprint(&s)])
        .fails_with(5);
    assert!(run.stderr.contains("is the common root"), "{}", run.stderr);
    let run = s
        .cacertd(&["transition", "remove-root", "not-a-fingerprint"])
        .fails_with(2);
    assert!(run.stderr.contains("FINGERPRINT"), "{}", run.stderr);
    let run = s
        .cacertd(&["transition", "remove-root", &"AB".repeat(32)])
        .fails_with(5);
    assert!(
        run.stderr.contains("no primary's bundle trusts"),
        "{}",
        run.stderr
    );
    common::assert_unchanged(&before, &s.snapshot());
    // A primary that cannot be read might trust the root: refused, not skipped.
    std::fs::rename(s.path("out/cluster2"), s.path("cluster2-aside")).unwrap();
    std::fs::write(s.path("out/cluster2"), b"not a folder").unwrap();
    let run = s.cacertd(&["transition", "remove-root", &fp]).fails_with(1);
    assert!(run.stderr.contains("cluster2"), "{}", run.stderr);
    std::fs::remove_file(s.path("out/cluster2")).unwrap();
    std::fs::rename(s.path("cluster2-aside"), s.path("out/cluster2")).unwrap();
    common::assert_unchanged(&before, &s.snapshot());

    // The plan: cluster1 alone, in one phase, its folder waited for.
    let lower = fp.replace(':', "").to_lowercase();
    let plan = s
        .cacertd(&["transition", "remove-root", &lower, "--dry-run"])
        .ok()
        .stdout;
    assert!(
        plan.contains("would cover cluster1 ")
            && plan.contains("root-cert.pem = its roots without the one removed")
            && plan.contains("wait until the folders of cluster1")
            && !plan.contains("cluster2"),
        "{plan}"
    );
    let checked = s
        .cacertd(&["transition", "remove-root", &lower, "--check"])
        .ok()
        .stdout;
    assert!(
        checked.contains("(1 moving)") && checked.contains("every step keeps every pair"),
        "{checked}"
    );
    common::assert_unchanged(&before, &s.snapshot());

    let signer = s.read("out/cluster1/ca-cert.pem");
    let cluster2 = served(&s, "cluster2");
    let run = s
        .cacertd(&["transition", "remove-root", &lower, "--wait"])
        .ok();
    assert!(
        run.stdout.contains("wait until the folders"),
        "{}",
        run.stdout
    );
    assert_eq!(
        s.read("out/cluster1/root-cert.pem"),
        clean,
        "the planted root is gone"
    );
    assert_eq!(
        s.read("out/cluster1/ca-cert.pem"),
        signer,
        "the signer is kept"
    );
    assert_eq!(
        served(&s, "cluster2"),
        cluster2,
        "cluster2 never trusted it"
    );
    // Every pair, old and new, completes mTLS after the write.
    let dirs = [
        before_write.clone(),
        s.path("out/cluster1"),
        s.path("out/cluster2"),
    ];
    for a in &dirs {
        for b in &dirs {
            common::mtls::handshake(common::mtls::workload(a), common::mtls::workload(b))
                .unwrap_or_else(|e| panic!("{} → {}: {e}", a.display(), b.display()));
        }
    }
    common::drive_folders(&s, false);
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(
        status.contains("remove-root transition: phase Done"),
        "{status}"
    );
    let status = s.cacertd(&["status"]).ok().stdout;
    assert!(!status.contains("unknown-roots"), "{status}");
    assert_eq!(audit_count(&s, "transition-write"), 1);
    assert_eq!(
        audit_count(&s, "transition-issue"),
        0,
        "no intermediate issued"
    );

    // A root a cluster signs under is refused: cluster2 on another mesh's CA, trusting ours too.
    let other = Setup::new();
    other.cacertd(&["issue", "--init-root"]).ok();
    for f in ["ca-cert.pem", "ca-key.pem", "cert-chain.pem"] {
        std::fs::copy(
            other.path(&format!("out/cluster2/{f}")),
            s.path(&format!("out/cluster2/{f}")),
        )
        .unwrap();
    }
    let mut both = other.read("out/cluster2/root-cert.pem");
    both.extend_from_slice(&clean);
    std::fs::write(s.path("out/cluster2/root-cert.pem"), both).unwrap();
    let before = s.snapshot();
    let run = s
        .cacertd(&["transition", "remove-root", &fingerprint(&other)])
        .fails_with(5);
    assert!(
        run.stderr.contains("cluster2 signs under"),
        "{}",
        run.stderr
    );
    common::assert_unchanged(&before, &s.snapshot());
}

/// `transition resume`, `rollback` and `abort` answer in JSON with `-o json`: where the
/// transition rests and what comes next, in the words `transition status` uses.
#[test]
fn resume_rollback_and_abort_answer_in_json_on_request() {
    let s = migrating(ACCEPTANCE_CONFIG);
    s.cacertd(&["migrate", "start", "--drain", "0s"]).ok();
    let json = |run: common::Run| -> serde_json::Value {
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
    };
    // `status` says a transition is under way, and where.
    let status = s.cacertd(&["status"]).ok().stdout;
    assert!(
        status.contains(
            "a migrate transition is under way over cluster1, cluster2: in phase AddNewRoot"
        ),
        "{status}"
    );
    let v = json(s.cacertd(&["status", "-o", "json"]).ok());
    assert_eq!(v["transition"]["kind"], "migrate", "{v}");
    let v = json(
        s.cacertd(&["transition", "resume", "--approve", "-o", "json"])
            .ok(),
    );
    assert_eq!(v["transition"], "migrate", "{v}");
    assert_eq!(v["state"], "active", "{v}");
    assert!(
        v["rests"]
            .as_str()
            .unwrap()
            .starts_with("wait until the folders"),
        "{v}"
    );
    assert_eq!(
        v["next"],
        json(s.cacertd(&["transition", "status", "-o", "json"]).ok())["next"]
    );
    let v = json(s.cacertd(&["transition", "rollback", "-o", "json"]).ok());
    assert!(
        v["state"].as_str().unwrap().starts_with("rolling back"),
        "{v}"
    );
    let v = json(s.cacertd(&["transition", "abort", "-o", "json"]).ok());
    assert_eq!(v["transition"], "migrate", "{v}");
    assert!(v["still_trusted"].is_array(), "{v}");
    assert!(!s.path("state/transition/record.json").exists());
    let status = s.cacertd(&["status"]).ok().stdout;
    assert!(!status.contains("transition is under way"), "{status}");
    assert!(json(s.cacertd(&["status", "-o", "json"]).ok())["transition"].is_null());
}

/// While a transition is under way, `status` shows its clusters' trust before it and after
/// each phase still ahead: the other root before, both once the signer switched, the common
/// root alone at the end.
#[test]
fn status_shows_the_trust_ahead_of_a_transition_under_way() {
    let s = migrating(ACCEPTANCE_CONFIG);
    s.cacertd(&["migrate", "start", "--drain", "0s"]).ok();
    let v: serde_json::Value =
        serde_json::from_str(&s.cacertd(&["status", "-o", "json"]).ok().stdout).unwrap();
    let rows = v["transition"]["trust"].as_array().unwrap();
    let row = rows.iter().find(|r| r["cluster"] == "cluster1").unwrap();
    let cols = row["columns"].as_array().unwrap();
    let whens: Vec<&str> = cols.iter().map(|c| c["when"].as_str().unwrap()).collect();
    // AddNewRoot is written (the folders wait to be applied): the phases ahead follow it.
    assert_eq!(
        whens,
        ["before", "after SwitchSigner", "after RemoveOldRoot"],
        "{v:#}"
    );
    let other = cols[0]["signs_under"].as_str().unwrap();
    assert!(other.starts_with("root "), "{v:#}");
    assert_eq!(cols[0]["trusts"], serde_json::json!([other]));
    assert_eq!(
        cols[1]["trusts"],
        serde_json::json!([other, "the common root"]),
        "{v:#}"
    );
    assert_eq!(cols[1]["signs_under"], "the common root");
    assert_eq!(cols[2]["trusts"], serde_json::json!(["the common root"]));
    let text = s.cacertd(&["status"]).ok().stdout;
    assert!(
        text.contains("its clusters' trust, before it and after each phase ahead:")
            && text.contains("cluster1: trusts"),
        "{text}"
    );
    // The bundles hold two roots now: the common one is labelled.
    let common = v["root"]["fingerprint_sha256"].as_str().unwrap();
    let label = format!("{} (common)", &common[..11]);
    let row = text.lines().find(|l| l.starts_with("cluster1 ")).unwrap();
    assert!(row.contains(&label) && row.contains(','), "{text}");
}
