//! `revoke`: a primary's intermediate is revoked and replaced (file root store, folder
//! targets confirmed by an operator). After every single step, every live generation of
//! workloads completes mTLS with every other, each checking the revocation lists its cluster
//! then serves, as Envoy does; at the end a certificate from the revoked intermediate fails,
//! with openssl as with the handshake, and the successor's pass. Killed after any step, the
//! revocation resumes to the same end.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::mtls::{handshake, workload};
use common::{ACCEPTANCE_CONFIG, Setup};

const PRIMARIES: [&str; 2] = ["cluster1", "cluster2"];

fn config() -> String {
    format!("{ACCEPTANCE_CONFIG}\n[transition]\nlist_propagation = \"0s\"\n")
}

/// A mesh with the common root and an intermediate in each primary's folder.
fn issued() -> Setup {
    let s = Setup::with_config(&config());
    s.cacertd(&["root", "init"]).ok();
    s.cacertd(&["issue"]).ok();
    s
}

/// A copy of each primary's folder as it is now, in `<scratch>/gens/<label>-<cluster>`.
fn keep(s: &Setup, label: &str) -> BTreeMap<String, PathBuf> {
    // Every primary's folder: those of PRIMARIES, and any that joined since.
    let mut primaries: Vec<String> = std::fs::read_dir(s.path("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().to_string())
        .filter(|c| s.path(&format!("out/{c}/ca-cert.pem")).exists())
        .collect();
    primaries.sort();
    primaries
        .iter()
        .map(|c| {
            let to = s.path(&format!("gens/{label}-{c}"));
            std::fs::create_dir_all(&to).unwrap();
            for entry in std::fs::read_dir(s.path(&format!("out/{c}"))).unwrap() {
                let p = entry.unwrap().path();
                if p.is_file() {
                    std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
                }
            }
            (c.to_string(), to)
        })
        .collect()
}

fn all_pairs_complete(generations: &[&Path], at: &str) {
    for a in generations {
        for b in generations {
            handshake(workload(a), workload(b))
                .unwrap_or_else(|e| panic!("{at}: {b:?} → {a:?} failed: {e}"));
        }
    }
}

fn status(s: &Setup) -> serde_json::Value {
    let out = s
        .cacertd(&["transition", "status", "-o", "json"])
        .ok()
        .stdout;
    serde_json::from_str(&out).unwrap()
}

/// `leaf` (PEM, signed by `signer`'s intermediate) verified by openssl against `dir`'s bundle
/// and revocation lists, with every CA's list required, as Envoy requires them.
fn openssl_verify(dir: &Path, signer: &Path, leaf: &Path) -> common::Run {
    let untrusted = signer.join("ca-cert.pem");
    common::openssl(
        dir,
        &[
            "verify",
            "-crl_check_all",
            "-CAfile",
            dir.join("root-cert.pem").to_str().unwrap(),
            "-untrusted",
            untrusted.to_str().unwrap(),
            "-CRLfile",
            dir.join("ca-crl.pem").to_str().unwrap(),
            leaf.to_str().unwrap(),
        ],
    )
}

/// A workload leaf signed with `cacerts`, as a PEM file in `out`.
fn leaf_of(cacerts: &Path, out: &Path) -> PathBuf {
    let key_path = out.with_extension("key");
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let csr = out.with_extension("csr");
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key_path.to_str().unwrap(),
        "-subj",
        "/O=workload",
        "-out",
        csr.to_str().unwrap(),
    ]);
    let ext = out.with_extension("ext");
    std::fs::write(
        &ext,
        "subjectAltName=URI:spiffe://cluster.local/ns/default/sa/x\n\
         extendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        cacerts.join("ca-cert.pem").to_str().unwrap(),
        "-CAkey",
        cacerts.join("ca-key.pem").to_str().unwrap(),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        out.to_str().unwrap(),
    ]);
    out.to_path_buf()
}

/// Runs `first` (a `revoke`, `renew` or `rotate-root start`) one step at a time, then resumes
/// it (confirming the folders) one step at a time to the end. After each step a primary whose
/// signer, bundle or lists changed adds a generation, and every generation still `live` (given
/// the transition's status, and whether it is recent: the newest of its primary, or the one
/// the step just replaced) completes mTLS with every other that `live` puts in its group.
fn step_through(
    s: &Setup,
    first: &[&str],
    generations: &mut Vec<PathBuf>,
    live: impl Fn(&serde_json::Value, &Path, bool) -> Option<usize>,
) {
    let newest = |gens: &[PathBuf], c: &str| -> PathBuf {
        gens.iter()
            .rev()
            .find(|g| g.file_name().unwrap().to_str().unwrap().ends_with(c))
            .unwrap()
            .clone()
    };
    let mut run = s.cacertd(&[first, &["--stop-after-steps", "1"]].concat());
    let mut step = 0;
    loop {
        step += 1;
        assert!(step < 40, "{first:?} does not finish");
        assert!(
            run.code == 0 || run.stderr.contains("stopped after 1 steps"),
            "{}",
            run.stderr
        );
        let now = keep(s, &format!("{}-{step}", first[0]));
        let mut recent: Vec<PathBuf> = Vec::new();
        for (c, dir) in &now {
            let last = newest(generations, c);
            let same = ["ca-cert.pem", "root-cert.pem", "ca-crl.pem"]
                .iter()
                .all(|f| std::fs::read(last.join(f)).ok() == std::fs::read(dir.join(f)).ok());
            if !same {
                generations.push(dir.clone());
                recent.push(last);
            }
            recent.push(newest(generations, c));
        }
        let status = status(s);
        // Pairs that must complete: within each group `live` puts generations in.
        let mut groups: BTreeMap<usize, Vec<&Path>> = BTreeMap::new();
        for g in generations.iter() {
            if let Some(group) = live(&status, g, recent.contains(g)) {
                groups.entry(group).or_default().push(g);
            }
        }
        for alive in groups.values() {
            all_pairs_complete(alive, &format!("after step {step}"));
        }
        let next = status["next"].as_str().unwrap_or_default().to_string();
        if next.starts_with("nothing") {
            return;
        }
        run = s.cacertd(&[
            "transition",
            "resume",
            "--approve",
            "--stop-after-steps",
            "1",
        ]);
    }
}

#[test]
fn a_revocation_keeps_every_pair_working_at_every_step_and_cuts_off_the_revoked_signer() {
    let s = issued();
    let original = keep(&s, "0");
    let before_snapshot = s.snapshot();

    // The dry run says what it would do, in order, and changes nothing.
    let dry = s
        .cacertd(&[
            "revoke",
            "cluster1",
            "--reason",
            "key-compromise",
            "--dry-run",
        ])
        .ok()
        .stdout;
    assert!(dry.contains("cluster1, cluster2"), "{dry}");
    let publish = dry.find("from its successor").expect(&dry);
    let switch = dry.find("its new intermediate").expect(&dry);
    let revoke = dry.find("cut them off").expect(&dry);
    assert!(publish < switch && switch < revoke, "{dry}");
    common::assert_unchanged(&before_snapshot, &s.snapshot());

    // One step at a time; after each, every generation alive must talk to every other.
    // Every generation is live until SwitchSigner's gate held: from then on, nothing of
    // cluster1 presents a certificate from the revoked intermediate any more.
    let old_ca = std::fs::read(original["cluster1"].join("ca-cert.pem")).unwrap();
    let mut generations: Vec<PathBuf> = original.values().cloned().collect();
    step_through(
        &s,
        &["revoke", "cluster1", "--reason", "key-compromise"],
        &mut generations,
        |status, g, _| {
            let switched = ["remove-old-root", "done"].contains(&status["phase"].as_str().unwrap());
            (!switched || std::fs::read(g.join("ca-cert.pem")).unwrap() != old_ca).then_some(0)
        },
    );

    // Done: cluster1 signs with its successor; both serve the same lists.
    let done = keep(&s, "done");
    assert_ne!(
        std::fs::read(done["cluster1"].join("ca-cert.pem")).unwrap(),
        old_ca
    );
    let lists = std::fs::read(done["cluster1"].join("ca-crl.pem")).unwrap();
    assert_eq!(
        std::fs::read(done["cluster2"].join("ca-crl.pem")).unwrap(),
        lists
    );
    for c in PRIMARIES {
        assert_eq!(
            std::fs::read(done[c].join("root-cert.pem")).unwrap(),
            std::fs::read(original[c].join("root-cert.pem")).unwrap(),
            "{c}: trust unchanged"
        );
    }

    // A workload certificate from the revoked intermediate: refused by every peer, and by
    // openssl with the published lists; the successor's and cluster2's pass.
    for peer in PRIMARIES {
        let err = handshake(workload(&done[peer]), workload(&original["cluster1"]))
            .expect_err("a certificate from the revoked intermediate");
        assert!(err.contains("Revoked"), "{peer}: {err}");
    }
    all_pairs_complete(
        &[done["cluster1"].as_path(), done["cluster2"].as_path()],
        "done",
    );
    let leaves = s.path("leaves");
    std::fs::create_dir_all(&leaves).unwrap();
    let old_leaf = leaf_of(&original["cluster1"], &leaves.join("old.pem"));
    let run = openssl_verify(&done["cluster2"], &original["cluster1"], &old_leaf);
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(
        format!("{}{}", run.stdout, run.stderr).contains("revoked"),
        "{} {}",
        run.stdout,
        run.stderr
    );
    for c in PRIMARIES {
        let leaf = leaf_of(&done[c], &leaves.join(format!("{c}.pem")));
        let run = openssl_verify(&done["cluster2"], &done[c], &leaf);
        assert_eq!(run.code, 0, "{c}: {} {}", run.stdout, run.stderr);
    }

    // Audited; nothing of a key in the record or the status.
    let audit = String::from_utf8(s.read("state/audit.log")).unwrap();
    assert!(
        audit.contains("revoke") && audit.contains("key-compromise"),
        "{audit}"
    );
    let record = String::from_utf8(s.read("state/transition/record.json")).unwrap();
    assert!(!record.contains("PRIVATE KEY"));

    // A list no CA above the mesh CA signed (here the root is the mesh CA): refused, nothing
    // changed.
    let before = s.snapshot();
    let run = s
        .cacertd(&[
            "revoke",
            "cluster2",
            "--reason",
            "superseded",
            "--chain-crl",
            "out/cluster1/ca-crl.pem",
        ])
        .fails_with(5);
    assert!(
        run.stderr.contains("signed by none of the CAs above"),
        "{}",
        run.stderr
    );
    common::assert_unchanged(&before, &s.snapshot());

    // A second revocation keeps the first: both old intermediates stay revoked.
    let run = s.through_folders(&["revoke", "cluster2", "--reason", "superseded"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(common::drive_folders(&s, false).starts_with("nothing"));
    let old2 = leaf_of(&original["cluster2"], &leaves.join("old2.pem"));
    let end = keep(&s, "end");
    for (leaf, signer) in [(&old_leaf, "cluster1"), (&old2, "cluster2")] {
        let run = openssl_verify(&end["cluster1"], &original[signer], leaf);
        assert!(run.stdout.contains("revoked") || run.stderr.contains("revoked"));
        assert_ne!(run.code, 0, "{leaf:?}: {}", run.stdout);
    }
    all_pairs_complete(
        &[end["cluster1"].as_path(), end["cluster2"].as_path()],
        "end",
    );
}

/// Whether the lists `dir` serves hold `list` (a PEM file).
fn serves_list(dir: &Path, list: &Path) -> bool {
    let read = |p: &Path, what: &str| {
        cacertd::pki::Crl::all_from_pem(&std::fs::read(p).unwrap(), what).unwrap()
    };
    let wanted = read(list, "the list");
    read(&dir.join("ca-crl.pem"), "ca-crl.pem")
        .iter()
        .any(|l| l.der() == wanted[0].der())
}

/// Below a company's CAs whose certificates name where their issuers publish their lists,
/// `revoke` and `crl refresh` without --chain-crl, and `serve` by itself, fetch them there: each newer
/// one goes in place in every primary; one its CA did not sign is refused and changes nothing.
#[test]
fn the_companys_lists_are_fetched_where_the_chain_says_they_are_published() {
    let s = Setup::with_config(&config());
    let base = common::serve_files(s.path(""));
    common::CompanyPki::usual().make_published(&s.path(""), Some(&base));
    s.cacertd(&common::import_mesh_ca("chain.pem")).ok();
    s.cacertd(&["issue"]).ok();
    // `revoke` fetches them too, when it is given none.
    let corp = company_list(s.dir.path(), "corp0");
    company_list(s.dir.path(), "anchor");
    let run = s.through_folders(&["revoke", "cluster1", "--reason", "key-compromise"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(common::drive_folders(&s, false).starts_with("nothing"));
    assert!(serves_list(&s.path("out/cluster2"), &corp));

    // Nothing newer is published: nothing changes.
    let run = s.cacertd(&["crl", "refresh"]).ok();
    assert!(run.stdout.contains("cluster1: unchanged"), "{}", run.stdout);

    // The company publishes a newer list: fetched, put in place everywhere.
    let newer = company_list_at(s.dir.path(), "corp0", "corp0", time::Duration::minutes(-1));
    let run = s.cacertd(&["crl", "refresh"]).ok();
    assert!(
        run.stdout.contains("cluster1: refreshed") && run.stdout.contains("cluster2: refreshed"),
        "{}",
        run.stdout
    );
    for c in PRIMARIES {
        assert!(serves_list(&s.path(&format!("out/{c}")), &newer), "{c}");
    }
    let done = keep(&s, "refreshed");
    all_pairs_complete(
        &[done["cluster1"].as_path(), done["cluster2"].as_path()],
        "refreshed",
    );

    // `serve` fetches them by itself.
    let newest = company_list_at(s.dir.path(), "corp0", "corp0", time::Duration::seconds(-10));
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let config = cacertd::config::Config::load(&s.path("cacertd.toml")).unwrap();
        let clock = std::sync::Arc::new(cacertd::clock::FixedClock::new(
            time::OffsetDateTime::now_utc(),
        ));
        let daemon = cacertd::daemon::Daemon::new(config, clock);
        assert!(daemon.try_lead().await);
        daemon.tick().await;
        daemon.refresh_lists().await;
        daemon.step_down().await;
    });
    for c in PRIMARIES {
        assert!(serves_list(&s.path(&format!("out/{c}")), &newest), "{c}");
    }

    // A list under the anchor's name that the anchor did not sign: refused, nothing changed.
    impostor_anchor(s.dir.path());
    company_list_at(s.dir.path(), "impostor", "anchor", time::Duration::ZERO);
    let before = s.snapshot();
    let run = s.cacertd(&["crl", "refresh"]).fails_with(1);
    assert!(
        run.stderr.contains("/anchor.crl") && run.stderr.contains("not a list"),
        "{}",
        run.stderr
    );
    common::assert_unchanged(&before, &s.snapshot());
}

#[test]
fn where_lists_are_served_a_renewal_publishes_the_successors_list_first_and_breaks_no_pair() {
    let s = issued();
    let original = keep(&s, "0");
    let run = s.through_folders(&["revoke", "cluster1", "--reason", "key-compromise"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(common::drive_folders(&s, false).starts_with("nothing"));
    let revoked = keep(&s, "revoked");

    // One write cannot renew a cluster whose proxies check lists: `issue` refuses, names the
    // way, and changes nothing.
    let before = s.snapshot();
    let run = s.cacertd(&["issue", "--force", "cluster2"]).fails_with(5);
    assert!(
        run.stdout.contains("cacertd renew cluster2"),
        "{}",
        run.stdout
    );
    common::assert_unchanged(&before, &s.snapshot());

    // The dry run: the successor's list everywhere first, then the switch; nothing revoked,
    // nothing restarted; nothing changed.
    let dry = s.cacertd(&["renew", "cluster2", "--dry-run"]).ok().stdout;
    let publish = dry.find("and from its successor").expect(&dry);
    let switch = dry.find("its new intermediate").expect(&dry);
    assert!(publish < switch, "{dry}");
    assert!(dry.contains("nothing is revoked"), "{dry}");
    assert!(
        !dry.contains("RemoveOldRoot") && !dry.contains("restarts"),
        "{dry}"
    );
    common::assert_unchanged(&before, &s.snapshot());

    // Step by step, every generation talks to every other — but cluster1's revoked one, and,
    // once AddNewRoot's gate held (kubelet put the new lists in every pod), those holding
    // the lists from before.
    let revoked_ca = std::fs::read(original["cluster1"].join("ca-cert.pem")).unwrap();
    let mut generations: Vec<PathBuf> = revoked.values().cloned().collect();
    step_through(
        &s,
        &["renew", "cluster2"],
        &mut generations,
        |status, g, _| {
            let name = g.file_name().unwrap().to_str().unwrap();
            let cluster = PRIMARIES.iter().find(|c| name.ends_with(*c)).unwrap();
            let lists = |d: &Path| std::fs::read(d.join("ca-crl.pem")).unwrap();
            let propagated = status["phase"] != "add-new-root";
            (std::fs::read(g.join("ca-cert.pem")).unwrap() != revoked_ca
                && (!propagated || lists(g) == lists(&s.path(&format!("out/{cluster}")))))
            .then_some(0)
        },
    );

    // cluster2 signs with its successor, cluster1 as before; both serve the same lists, one
    // more than before (the successor's).
    let done = keep(&s, "renewed");
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert_ne!(
        read(&done["cluster2"], "ca-cert.pem"),
        read(&revoked["cluster2"], "ca-cert.pem")
    );
    assert_eq!(
        read(&done["cluster1"], "ca-cert.pem"),
        read(&revoked["cluster1"], "ca-cert.pem")
    );
    let lists = read(&done["cluster1"], "ca-crl.pem");
    assert_eq!(read(&done["cluster2"], "ca-crl.pem"), lists);
    let count = |pem: &[u8]| {
        String::from_utf8_lossy(pem)
            .matches("BEGIN X509 CRL")
            .count()
    };
    assert_eq!(
        count(&lists),
        count(&read(&revoked["cluster1"], "ca-crl.pem")) + 1
    );

    // What the predecessor signed is still trusted, the successor's too; the revoked
    // intermediate's is not.
    let leaves = s.path("leaves");
    std::fs::create_dir_all(&leaves).unwrap();
    for (signer, trusted) in [
        (&revoked["cluster2"], true),
        (&done["cluster2"], true),
        (&original["cluster1"], false),
    ] {
        let leaf = leaf_of(
            signer,
            &leaves.join(format!("{trusted}-{}.pem", count(&lists))),
        );
        let run = openssl_verify(&done["cluster1"], signer, &leaf);
        assert_eq!(
            run.code == 0,
            trusted,
            "{signer:?}: {} {}",
            run.stdout,
            run.stderr
        );
    }
    let err = handshake(workload(&done["cluster2"]), workload(&original["cluster1"]))
        .expect_err("a certificate from the revoked intermediate");
    assert!(err.contains("Revoked"), "{err}");

    // Nothing is due any more; the renewal is audited.
    s.cacertd(&["issue"]).ok();
    let audit = String::from_utf8(s.read("state/audit.log")).unwrap();
    assert!(audit.contains("renewing cluster2"), "{audit}");
}

#[test]
fn where_lists_are_served_a_root_rotation_carries_them_and_breaks_no_pair() {
    let s = issued();
    let original = keep(&s, "0");
    let run = s.through_folders(&["revoke", "cluster1", "--reason", "key-compromise"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(common::drive_folders(&s, false).starts_with("nothing"));
    let revoked = keep(&s, "revoked");
    let cert = |d: &Path, f: &str| {
        cacertd::pki::Cert::one_from_pem(&std::fs::read(d.join(f)).unwrap(), f).unwrap()
    };
    let old_root = cert(&revoked["cluster1"], "root-cert.pem");

    // Step by step: after each, the newest generation of each primary and the one the step
    // just replaced complete mTLS with each other, each checking the lists it holds.
    let mut generations: Vec<PathBuf> = revoked.values().cloned().collect();
    step_through(
        &s,
        &["rotate-root", "start", "--drain", "0s"],
        &mut generations,
        |_, _, recent| recent.then_some(0),
    );

    // Every primary trusts and signs under the new root, named apart from the old one, and
    // serves the lists of the new CAs alone: the new root's and each new intermediate's.
    let done = keep(&s, "rotated");
    let new_root = cert(&done["cluster1"], "root-cert.pem");
    assert_ne!(new_root, old_root);
    assert_ne!(new_root.info().subject, old_root.info().subject);
    let lists = std::fs::read(done["cluster1"].join("ca-crl.pem")).unwrap();
    assert_eq!(
        std::fs::read(done["cluster2"].join("ca-crl.pem")).unwrap(),
        lists
    );
    let lists = cacertd::pki::Crl::all_from_pem(&lists, "ca-crl.pem").unwrap();
    assert_eq!(lists.len(), 3, "{lists:?}");
    for c in PRIMARIES {
        let ica = cert(&done[c], "ca-cert.pem");
        assert_ne!(
            ica.info().subject,
            cert(&revoked[c], "ca-cert.pem").info().subject
        );
        assert!(lists.iter().any(|l| l.signed_by(&ica)), "{c}");
    }
    assert!(lists.iter().any(|l| l.signed_by(&new_root)));
    all_pairs_complete(
        &[done["cluster1"].as_path(), done["cluster2"].as_path()],
        "rotated",
    );
    let err = handshake(workload(&done["cluster2"]), workload(&original["cluster1"]))
        .expect_err("a certificate from the revoked intermediate, under the old root");
    assert!(!err.is_empty());

    // Renewals and revocations go on under the new root.
    let run = s.through_folders(&["renew", "cluster2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(common::drive_folders(&s, false).starts_with("nothing"));
    let renewed = keep(&s, "renewed");
    assert_ne!(
        cert(&renewed["cluster2"], "ca-cert.pem"),
        cert(&done["cluster2"], "ca-cert.pem")
    );
    // The predecessor's workloads, holding the lists kubelet brought them, are still trusted.
    let predecessor = s.path("gens/predecessor-cluster2");
    common::copy_cacerts(&done["cluster2"], &predecessor);
    std::fs::copy(
        renewed["cluster2"].join("ca-crl.pem"),
        predecessor.join("ca-crl.pem"),
    )
    .unwrap();
    all_pairs_complete(
        &[
            renewed["cluster1"].as_path(),
            renewed["cluster2"].as_path(),
            &predecessor,
        ],
        "renewed",
    );
}

/// Where the clusters serve lists, a primary of another root joins: `migrate` gives the
/// primaries on the common root a list from its new intermediate first (nothing else
/// changes or restarts there), and the newcomer the lists once it trusts the common root
/// alone. Every pair that worked before works after every step, and all of them at the end.
#[test]
fn where_lists_are_served_a_newcomer_migrates_with_them_and_breaks_no_pair() {
    let s = issued();
    let run = s.through_folders(&["revoke", "cluster1", "--reason", "key-compromise"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(common::drive_folders(&s, false).starts_with("nothing"));
    let other = Setup::new();
    other.cacertd(&["issue", "--init-root"]).ok();
    common::copy_cacerts(&other.path("out/cluster1"), &s.path("out/cluster4"));
    let mut config = std::fs::read_to_string(s.path("cacertd.toml")).unwrap();
    config.push_str(
        "\n[[clusters]]\nname = \"cluster4\"\nrole = \"primary\"\nnetwork = \"network4\"\n\
         target = { kind = \"dir\", path = \"out/cluster4\" }\n",
    );
    std::fs::write(s.path("cacertd.toml"), config).unwrap();
    let before = keep(&s, "before");

    // The plan: the mesh's folders get the newcomer's list, and nothing more.
    let dry = s
        .cacertd(&["migrate", "start", "--drain", "0s", "--dry-run"])
        .ok()
        .stdout;
    let mesh_line = dry
        .lines()
        .find(|l| l.contains("cluster1: write"))
        .expect(&dry);
    assert!(
        mesh_line.contains("one from each migrating cluster's new intermediate")
            && mesh_line.contains("applying the folder is enough"),
        "{dry}"
    );

    // Step by step: the pairs of the mesh, and the newcomer's own pairs, keep working.
    let mut generations: Vec<PathBuf> = before.values().cloned().collect();
    step_through(
        &s,
        &["migrate", "start", "--drain", "0s"],
        &mut generations,
        |_, g, recent| {
            let newcomer = g
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("cluster4");
            recent.then_some(usize::from(newcomer))
        },
    );

    // The mesh kept its signers and bundles and gained the newcomer's list; the newcomer
    // signs under the common root and serves the same lists; everyone talks to everyone.
    let done = keep(&s, "migrated");
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    for c in PRIMARIES {
        for f in ["ca-cert.pem", "root-cert.pem"] {
            assert_eq!(read(&done[c], f), read(&before[c], f), "{c} {f}");
        }
        assert_eq!(
            read(&done[c], "ca-crl.pem"),
            read(&done["cluster4"], "ca-crl.pem")
        );
    }
    assert_eq!(
        read(&done["cluster4"], "root-cert.pem"),
        read(&done["cluster1"], "root-cert.pem")
    );
    let gens: Vec<&Path> = done.values().map(PathBuf::as_path).collect();
    all_pairs_complete(&gens, "migrated");
}

#[test]
fn killed_after_any_step_a_revocation_resumes_to_the_same_end() {
    // 3 steps × 2 primaries × a write + 3 confirmations of the folders + 3 gates.
    const STEPS: usize = 12;
    let mut ends = Vec::new();
    for k in 0..=STEPS {
        let s = issued();
        let k_arg = k.to_string();
        let run = s.cacertd(&[
            "revoke",
            "cluster1",
            "--reason",
            "key-compromise",
            "--stop-after-steps",
            &k_arg,
        ]);
        assert!(
            run.code == 0 || run.stderr.contains("stopped after"),
            "k={k}: {}",
            run.stderr
        );
        let next = common::drive_folders(&s, false);
        assert!(next.starts_with("nothing"), "k={k}: {next}");
        let saved = s.read("state/transition/cluster1/new/ca-cert.pem");
        assert_eq!(s.read("out/cluster1/ca-cert.pem"), saved, "k={k}");
        let lists = s.read("out/cluster1/ca-crl.pem");
        assert_eq!(s.read("out/cluster2/ca-crl.pem"), lists, "k={k}");
        let record: serde_json::Value =
            serde_json::from_slice(&s.read("state/transition/record.json")).unwrap();
        assert_eq!(
            record["revocation"]["lists_after"]
                .as_str()
                .unwrap()
                .as_bytes(),
            lists.as_slice(),
            "k={k}"
        );
        ends.push(k);
    }
    assert_eq!(ends.len(), STEPS + 1);
}

#[test]
fn bad_revocations_are_refused_and_change_nothing() {
    let s = issued();
    std::fs::write(
        s.path("junk.pem"),
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let before = s.snapshot();
    // Not a primary.
    let run = s
        .cacertd(&["revoke", "cluster3", "--reason", "key-compromise"])
        .fails_with(5);
    assert!(run.stderr.contains("cluster3"), "{}", run.stderr);
    // A --chain-crl that is no list.
    let run = s
        .cacertd(&[
            "revoke",
            "cluster1",
            "--reason",
            "key-compromise",
            "--chain-crl",
            "junk.pem",
        ])
        .fails_with(3);
    assert!(run.stderr.contains("junk.pem"), "{}", run.stderr);
    common::assert_unchanged(&before, &s.snapshot());
}

/// A list for `name` (`<name>.pem`, `<name>.key` in `dir`), as a company's PKI publishes one.
fn company_list(dir: &Path, name: &str) -> PathBuf {
    company_list_at(dir, name, name, time::Duration::minutes(-5))
}

/// `impostor.pem`/`.key` in `dir`: a CA with the company anchor's name and another key.
fn impostor_anchor(dir: &Path) {
    common::self_signed_ca(dir, "impostor", "/O=Corp/CN=Offline Root", 30);
}

/// A list for `name` published `at` from now, written to `<file>.crl`.
fn company_list_at(dir: &Path, name: &str, file: &str, at: time::Duration) -> PathBuf {
    let key = std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap();
    let cert = std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&cert, rcgen::KeyPair::from_pem(&key).unwrap()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now + at,
        next_update: now + time::Duration::days(30),
        crl_number: rcgen::SerialNumber::from(7u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let out = dir.join(format!("{file}.crl"));
    std::fs::write(&out, params.signed_by(&issuer).unwrap().pem().unwrap()).unwrap();
    out
}

/// A mesh CA below a corporate CA below the company's offline root: their lists come from the
/// company (--chain-crl), each checked against the chain; with them the revocation works as
/// with a self-signed root, every CA of every chain covered.
#[test]
fn below_a_company_root_the_chains_lists_come_from_the_company() {
    let s = Setup::with_config(&config());
    common::CompanyPki::usual().import_into(&s).ok();
    s.cacertd(&["issue"]).ok();
    let original = keep(&s, "0");
    let before = s.snapshot();

    let run = s
        .cacertd(&["revoke", "cluster1", "--reason", "key-compromise"])
        .fails_with(5);
    assert!(
        run.stderr.contains("CN=Corporate CA 0") && run.stderr.contains("--chain-crl"),
        "{}",
        run.stderr
    );
    // A list signed by a key none of the chain holds, under the anchor's name.
    impostor_anchor(s.dir.path());
    let impostor = company_list(s.dir.path(), "impostor");
    let corp = company_list(s.dir.path(), "corp0");
    let anchor = company_list(s.dir.path(), "anchor");
    let before = {
        let mut b = before;
        for f in [
            "impostor.key",
            "impostor.pem",
            "impostor.crl",
            "corp0.crl",
            "anchor.crl",
        ] {
            b.insert(s.path(f), s.read(f));
        }
        b
    };
    let run = s
        .cacertd(&[
            "revoke",
            "cluster1",
            "--reason",
            "key-compromise",
            "--chain-crl",
            corp.to_str().unwrap(),
            "--chain-crl",
            impostor.to_str().unwrap(),
        ])
        .fails_with(5);
    assert!(
        run.stderr
            .contains("signed by none of the CAs above the mesh CA"),
        "{}",
        run.stderr
    );
    common::assert_unchanged(&before, &s.snapshot());

    let run = s.through_folders(&[
        "revoke",
        "cluster1",
        "--reason",
        "key-compromise",
        "--chain-crl",
        corp.to_str().unwrap(),
        "--chain-crl",
        anchor.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let done = keep(&s, "done");
    // Every CA of every chain has its list: anchor, corporate CA, mesh CA, both intermediates.
    let lists = String::from_utf8(s.read("out/cluster2/ca-crl.pem")).unwrap();
    assert_eq!(lists.matches("BEGIN X509 CRL").count(), 5 + 1, "{lists}");
    all_pairs_complete(
        &[done["cluster1"].as_path(), done["cluster2"].as_path()],
        "done",
    );
    let err = handshake(workload(&done["cluster2"]), workload(&original["cluster1"]))
        .expect_err("a certificate from the revoked intermediate");
    assert!(err.contains("Revoked"), "{err}");

    // The company publishes newer lists before these expire: `crl refresh` puts them in place
    // of the old ones in every primary, and nothing else changes.
    let corp2 = company_list_at(s.dir.path(), "corp0", "corp0-next", time::Duration::ZERO);
    let anchor2 = company_list_at(s.dir.path(), "anchor", "anchor-next", time::Duration::ZERO);
    let before = s.snapshot();
    let refresh = |extra: &[&str]| {
        let mut args = vec![
            "crl",
            "refresh",
            "--chain-crl",
            corp2.to_str().unwrap(),
            "--chain-crl",
            anchor2.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        s.cacertd(&args)
    };
    let dry = refresh(&["--dry-run"]).ok();
    assert_eq!(
        dry.stdout
            .matches("would refresh: 2 list(s) replaced")
            .count(),
        2,
        "{}",
        dry.stdout
    );
    common::assert_unchanged(&before, &s.snapshot());
    let run = s
        .cacertd(&["crl", "refresh", "--chain-crl", impostor.to_str().unwrap()])
        .fails_with(5);
    assert!(
        run.stderr.contains("signed by none of the CAs above"),
        "{}",
        run.stderr
    );
    common::assert_unchanged(&before, &s.snapshot());
    let run = refresh(&[]).ok();
    assert_eq!(
        run.stdout.matches("refreshed: 2 list(s) replaced").count(),
        2,
        "{}",
        run.stdout
    );
    let pem = |p: &Path| String::from_utf8(std::fs::read(p).unwrap()).unwrap();
    for c in PRIMARIES {
        let lists = String::from_utf8(s.read(&format!("out/{c}/ca-crl.pem"))).unwrap();
        assert_eq!(lists.matches("BEGIN X509 CRL").count(), 6, "{c}");
        assert!(
            lists.contains(pem(&corp2).trim()) && lists.contains(pem(&anchor2).trim()),
            "{c}"
        );
        assert!(
            !lists.contains(pem(&corp).trim()) && !lists.contains(pem(&anchor).trim()),
            "{c}"
        );
        assert_eq!(
            s.read(&format!("out/{c}/ca-cert.pem")),
            std::fs::read(done[c].join("ca-cert.pem")).unwrap(),
            "{c}: its signer is unchanged"
        );
    }
    let now = keep(&s, "refreshed");
    all_pairs_complete(
        &[now["cluster1"].as_path(), now["cluster2"].as_path()],
        "refreshed",
    );
    let again = refresh(&[]).ok();
    assert_eq!(
        again.stdout.matches("unchanged").count(),
        2,
        "{}",
        again.stdout
    );
}
