//! The binary on the acceptance config, with its output checked by the real `openssl` CLI.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    CompanyPki, Setup, assert_issued_and_trusted, import_mesh_ca, mtls, openssl,
    openssl_verify_cacerts,
};

#[test]
fn issued_material_passes_openssl_and_is_shaped_like_istio_wants() {
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    let run = s.cacertd(&["issue"]).ok();
    assert!(
        run.stdout.contains("cluster1") && run.stdout.contains("cluster2"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("cluster3"),
        "a remote gets no intermediate:\n{}",
        run.stdout
    );
    assert!(!s.path("out/cluster3").exists());

    for cluster in ["cluster1", "cluster2"] {
        let dir = s.path(&format!("out/{cluster}"));
        let v = openssl_verify_cacerts(&dir).ok();
        assert_eq!(v.stdout.trim(), "ca-cert.pem: OK");

        let text = openssl(&dir, &["x509", "-in", "ca-cert.pem", "-noout", "-text"])
            .ok()
            .stdout;
        assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
        assert!(text.contains("DNS:istiod.istio-system.svc"), "{text}");
        assert!(text.contains("Authority Key Identifier"), "{text}");
        assert!(
            !text.contains("Extended Key Usage"),
            "CAs carry no EKU:\n{text}"
        );
        assert!(
            text.contains(&format!("L={cluster}")) || text.contains(&format!("L = {cluster}")),
            "{text}"
        );
        assert!(text.contains("ASN1 OID: prime256v1"), "{text}");

        let root = openssl(&dir, &["x509", "-in", "root-cert.pem", "-noout", "-text"])
            .ok()
            .stdout;
        let bc = root
            .split("X509v3 Basic Constraints: critical")
            .nth(1)
            .expect("critical basicConstraints");
        assert!(bc.trim_start().starts_with("CA:TRUE"), "{root}");
        assert!(root.contains("X509v3 Key Usage: critical"), "{root}");
        assert!(root.contains("Subject Key Identifier"), "{root}");

        // The key belongs to the certificate.
        let from_cert = openssl(&dir, &["x509", "-in", "ca-cert.pem", "-noout", "-pubkey"])
            .ok()
            .stdout;
        let from_key = openssl(&dir, &["pkey", "-in", "ca-key.pem", "-pubout"])
            .ok()
            .stdout;
        assert_eq!(from_cert, from_key);

        // cert-chain.pem is the intermediate then the root.
        let chain = std::fs::read_to_string(dir.join("cert-chain.pem")).unwrap();
        let ca = std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap();
        let rootpem = std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
        assert_eq!(chain, format!("{ca}{rootpem}"));

        s.cacertd(&["verify", dir.to_str().unwrap()]).ok();
    }
    // Both clusters hang off the same root, with different intermediates and keys.
    let r1 = s.read("out/cluster1/root-cert.pem");
    let r2 = s.read("out/cluster2/root-cert.pem");
    assert_eq!(r1, r2);
    assert_eq!(r1, s.read("state/root/root-cert.pem"));
    assert_ne!(
        s.read("out/cluster1/ca-key.pem"),
        s.read("out/cluster2/ca-key.pem")
    );
}

#[test]
fn the_secret_manifest_carries_the_four_files() {
    use base64::Engine;
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let yaml = std::fs::read_to_string(s.path("out/cluster1/cacerts.yaml")).unwrap();
    assert!(yaml.contains("kind: Secret\n") && yaml.contains("  name: cacerts\n"));
    assert!(yaml.contains("  namespace: istio-system\n") && yaml.contains("type: Opaque\n"));
    for file in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        let line = yaml
            .lines()
            .find(|l| l.starts_with(&format!("  {file}: ")))
            .unwrap_or_else(|| panic!("{file} missing from manifest"));
        let b64 = line.split(": ").nth(1).unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(
            decoded,
            std::fs::read(s.path(&format!("out/cluster1/{file}"))).unwrap(),
            "{file}"
        );
    }
    let serial = openssl(
        &s.path("out/cluster1"),
        &["x509", "-in", "ca-cert.pem", "-noout", "-serial"],
    )
    .ok()
    .stdout;
    let serial = serial.trim().trim_start_matches("serial=").to_lowercase();
    assert!(
        yaml.contains(&format!("cacertd.io/serial: \"{serial}\"")),
        "{yaml}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.path("out/cluster1/cacerts.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_second_run_changes_nothing_and_force_keeps_a_backup() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let before = s.snapshot();
    let run = s.cacertd(&["issue"]).ok();
    assert!(
        run.stdout.matches("unchanged").count() == 2,
        "{}",
        run.stdout
    );
    common::assert_unchanged(&before, &s.snapshot());

    let old_key = s.read("out/cluster1/ca-key.pem");
    let old_bundle = s.read("out/cluster1/root-cert.pem");
    let run = s.cacertd(&["issue", "--force", "cluster1"]).ok();
    assert!(
        run.stdout.contains("previous cacerts kept in"),
        "{}",
        run.stdout
    );
    assert_ne!(s.read("out/cluster1/ca-key.pem"), old_key);
    assert_eq!(s.read("out/cluster1/root-cert.pem"), old_bundle);
    // cluster2 untouched.
    assert_eq!(
        s.read("out/cluster2/ca-key.pem"),
        before[&s.path("out/cluster2/ca-key.pem")]
    );
    let backups: Vec<_> = std::fs::read_dir(s.path("state/backups/cluster1"))
        .unwrap()
        .collect();
    assert_eq!(backups.len(), 1);
    let b = backups[0].as_ref().unwrap().path();
    assert_eq!(std::fs::read(b.join("ca-key.pem")).unwrap(), old_key);
}

/// A forced issue to many folders at once under the usual limit of 1,024 open files: each
/// write holds up to a dozen temporary files open while it waits to be made durable, so the
/// writes held at once are bounded (150 unbounded would need ~1,800 descriptors).
#[test]
fn a_forced_issue_to_many_folders_stays_within_the_usual_open_file_limit() {
    let mut config = String::from("trust_domain = \"cluster.local\"\nstate_dir = \"state\"\n");
    for i in 0..150 {
        config.push_str(&format!(
            "\n[[clusters]]\nname = \"c{i}\"\nrole = \"primary\"\n\
             target = {{ kind = \"dir\", path = \"out/c{i}\" }}\n"
        ));
    }
    let s = Setup::with_config(&config);
    s.cacertd(&["issue", "--init-root"]).ok();
    let before = s.read("out/c149/ca-key.pem");
    let mut cmd = std::process::Command::new("bash");
    cmd.current_dir(s.dir.path())
        .args(["-c", "ulimit -Sn 1024 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_cacertd"))
        .args(["-c", "cacertd.toml", "issue", "--force"]);
    let out = common::output_within(cmd, common::RUN_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches("previous cacerts kept in").count(),
        150,
        "{stdout}"
    );
    assert_ne!(s.read("out/c149/ca-key.pem"), before);
}

/// `[backups] keep = 2`: old intermediate keys do not pile up. After five forced issues the
/// two newest backups are left, the others are removed (said in the output and the audit
/// log), and the newest holds the key that was replaced last.
#[test]
fn backups_beyond_the_retention_are_removed() {
    let s = Setup::new();
    let config = s.read("cacertd.toml");
    let config = String::from_utf8(config).unwrap();
    std::fs::write(
        s.path("cacertd.toml"),
        format!("{config}\n[backups]\nkeep = 2\n"),
    )
    .unwrap();
    s.cacertd(&["issue", "--init-root"]).ok();
    let mut last_key = s.read("out/cluster1/ca-key.pem");
    let mut removed = 0;
    for _ in 0..5 {
        last_key = s.read("out/cluster1/ca-key.pem");
        let run = s.cacertd(&["issue", "--force", "cluster1"]).ok();
        removed += run.stdout.matches("old backups removed").count();
    }
    assert_eq!(removed, 3);
    let mut backups: Vec<_> = std::fs::read_dir(s.path("state/backups/cluster1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    backups.sort();
    assert_eq!(backups.len(), 2, "{backups:?}");
    let newest = backups
        .iter()
        .find(|b| std::fs::read(b.join("ca-key.pem")).unwrap() == last_key);
    assert!(newest.is_some(), "the way back is kept: {backups:?}");
    let audit = String::from_utf8(s.read("state/audit.log")).unwrap();
    assert_eq!(
        audit.matches("\"action\":\"backups-removed\"").count(),
        3,
        "{audit}"
    );
    // While a trust transition is under way, every copy is kept.
    s.cacertd(&[
        "rotate-root",
        "start",
        "--drain",
        "0s",
        "--stop-after-steps",
        "1",
    ])
    .fails_with(1);
    for _ in 0..2 {
        let run = s.cacertd(&["issue", "--force", "cluster1"]).ok();
        assert!(
            !run.stdout.contains("old backups removed"),
            "{}",
            run.stdout
        );
    }
    let count = std::fs::read_dir(s.path("state/backups/cluster1"))
        .unwrap()
        .count();
    assert!(count > 2, "{count}");
    // A keep of 0 would leave no way back: refused at load.
    std::fs::write(
        s.path("cacertd.toml"),
        format!("{config}\n[backups]\nkeep = 0\n"),
    )
    .unwrap();
    let run = s.cacertd(&["issue"]).fails_with(2);
    assert!(run.stderr.contains("backups.keep"), "{}", run.stderr);
}

#[test]
fn tampering_is_detected_reported_and_repaired() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    // Swap cluster1's key for cluster2's.
    std::fs::copy(
        s.path("out/cluster2/ca-key.pem"),
        s.path("out/cluster1/ca-key.pem"),
    )
    .unwrap();
    let v = s.cacertd(&["verify", "out/cluster1"]).fails_with(3);
    assert!(
        v.stdout
            .contains("ca-key.pem: does not match the public key of ca-cert.pem"),
        "{}",
        v.stdout
    );
    let st = s.cacertd(&["status", "-o", "json"]).ok();
    let json: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(json["clusters"][0]["cacerts"]["state"], "invalid");
    assert_eq!(json["clusters"][1]["cacerts"]["state"], "valid");
    let run = s.cacertd(&["issue"]).ok();
    assert!(
        run.stdout.contains("current cacerts invalid"),
        "{}",
        run.stdout
    );
    s.cacertd(&["verify", "out/cluster1"]).ok();
    openssl_verify_cacerts(&s.path("out/cluster1")).ok();
}

#[test]
fn status_reports_every_cluster_as_json() {
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    let st = s.cacertd(&["status", "-o", "json"]).ok();
    let json: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(json["clusters"][0]["cacerts"]["state"], "missing");
    s.cacertd(&["issue"]).ok();
    let st = s.cacertd(&["status", "-o", "json"]).ok();
    let json: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let root_fp = json["root"]["fingerprint_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let c1 = &json["clusters"][0];
    assert_eq!(c1["name"], "cluster1");
    assert_eq!(c1["role"], "primary");
    assert_eq!(c1["cacerts"]["state"], "valid");
    assert_eq!(c1["renewal_due"], false);
    assert!(c1["days_left"].as_i64().unwrap() >= 364);
    assert_eq!(c1["cacerts"]["trust_bundle"][0], root_fp.as_str());
    assert_eq!(
        c1["cacerts"]["intermediate"]["serial"]
            .as_str()
            .unwrap()
            .len(),
        32
    );
    let c3 = &json["clusters"][2];
    assert_eq!(c3["role"], "remote");
    assert_eq!(c3["served_by"], "cluster1");
    let table = s.cacertd(&["status"]).ok().stdout;
    assert!(table.contains("served by cluster1"), "{table}");
}

#[test]
fn an_openssl_made_root_imports_and_chains() {
    let s = Setup::new();
    let d = s.dir.path();
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.key",
        ],
    )
    .ok();
    assert!(
        std::fs::read_to_string(d.join("sec1.key"))
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY")
    );
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "sec1.key",
            "-days",
            "3650",
            "-subj",
            "/O=Example Corp/OU=Mesh/CN=Mesh Root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "root.pem",
        ],
    )
    .ok();
    s.cacertd(&["root", "import", "--cert", "root.pem", "--key", "sec1.key"])
        .ok();
    s.cacertd(&["issue"]).ok();
    let v = openssl_verify_cacerts(&s.path("out/cluster1")).ok();
    assert_eq!(v.stdout.trim(), "ca-cert.pem: OK");
    let show = s.cacertd(&["root", "show"]).ok().stdout;
    assert!(show.contains("CN=Mesh Root"), "{show}");
}

#[test]
fn a_pkcs1_rsa_root_imports_under_the_istio_compatible_policy() {
    let config =
        common::ACCEPTANCE_CONFIG.replace("policy = \"default\"", "policy = \"istio-compatible\"");
    let s = Setup::with_config(&config);
    let d = s.dir.path();
    openssl(d, &["genrsa", "-traditional", "-out", "rsa.key", "2048"]).ok();
    assert!(
        std::fs::read_to_string(d.join("rsa.key"))
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "rsa.key",
            "-days",
            "3650",
            "-subj",
            "/O=Istio/CN=Root CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "root.pem",
        ],
    )
    .ok();
    s.cacertd(&["root", "import", "--cert", "root.pem", "--key", "rsa.key"])
        .ok();
    s.cacertd(&["issue", "cluster2"]).ok();
    let dir = s.path("out/cluster2");
    openssl_verify_cacerts(&dir).ok();
    let text = openssl(&dir, &["x509", "-in", "ca-cert.pem", "-noout", "-text"])
        .ok()
        .stdout;
    assert!(
        text.contains("Public-Key: (4096 bit)"),
        "istio-compatible intermediates are RSA-4096:\n{text}"
    );
    assert!(
        !s.path("out/cluster1").exists(),
        "only the named cluster is issued"
    );
}

/// Under the loosest umask, what cacertd creates beside the keys is private too, and a new
/// root — the most consequential event there is — is in the audit log.
#[test]
fn the_audit_log_and_the_lock_are_private_whatever_the_umask_and_root_init_is_audited() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let out = std::process::Command::new("sh")
        .current_dir(s.dir.path())
        .args([
            "-c",
            "umask 000; exec \"$0\" -c cacertd.toml issue --init-root",
        ])
        .arg(env!("CARGO_BIN_EXE_cacertd"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["state/audit.log", "state/.lock", "state/root/root-key.pem"] {
        let mode = std::fs::metadata(s.path(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let audit = std::fs::read_to_string(s.path("state/audit.log")).unwrap();
    let init = audit
        .lines()
        .find(|l| l.contains("\"action\":\"root-init\""))
        .unwrap_or_else(|| panic!("no root-init event: {audit}"));
    assert!(
        init.contains("\"outcome\":\"created\"") && init.contains("sha256"),
        "{init}"
    );
    assert!(!audit.contains("PRIVATE KEY"));
}

/// A mesh CA that is an intermediate of the company's offline root, three and four levels
/// deep (anchor → [corporate CA →] mesh CA → each cluster's intermediate), the anchor signing
/// with ECDSA-with-SHA512: imported with its chain, each cluster's cacerts carries the whole
/// chain and trusts only the anchor; openssl verifies it, workloads of two clusters complete
/// an mTLS handshake, and a second run changes nothing.
#[test]
fn a_mesh_ca_below_the_companys_offline_root() {
    for corporate in [0, 1] {
        let s = Setup::new();
        CompanyPki {
            corporate,
            corporate_pathlen: None,
            mesh_pathlen: Some(1),
            anchor_digest: "sha512",
        }
        .make(s.path("").as_path());
        let run = s.cacertd(&import_mesh_ca("chain.pem")).ok();
        assert!(
            run.stdout
                .contains("below the anchor O=Corp, CN=Offline Root"),
            "{}",
            run.stdout
        );
        // The import is audited, with the mesh CA it stored, never its key.
        let audit = std::fs::read_to_string(s.path("state/audit.log")).unwrap();
        let import = audit
            .lines()
            .find(|l| l.contains("\"action\":\"root-import\""))
            .unwrap_or_else(|| panic!("no root-import event: {audit}"));
        assert!(
            import.contains("\"outcome\":\"imported\"") && import.contains("sha256"),
            "{import}"
        );
        assert!(!audit.contains("PRIVATE KEY"), "{audit}");
        s.cacertd(&["issue"]).ok();
        assert_issued_and_trusted(&s);
        let anchor = s.read("anchor.pem");
        for c in ["cluster1", "cluster2"] {
            let dir = s.path(&format!("out/{c}"));
            assert_eq!(
                String::from_utf8(s.read(&format!("out/{c}/root-cert.pem")))
                    .unwrap()
                    .trim(),
                String::from_utf8(anchor.clone()).unwrap().trim()
            );
            let chain = String::from_utf8(s.read(&format!("out/{c}/cert-chain.pem"))).unwrap();
            assert_eq!(
                chain.matches("BEGIN CERTIFICATE").count(),
                3 + corporate,
                "{chain}"
            );
            // openssl with the anchor alone as trusted, the rest as untrusted intermediates.
            let v = openssl(
                &dir,
                &[
                    "verify",
                    "-CAfile",
                    "root-cert.pem",
                    "-untrusted",
                    "cert-chain.pem",
                    "-x509_strict",
                    "ca-cert.pem",
                ],
            )
            .ok();
            assert_eq!(v.stdout.trim(), "ca-cert.pem: OK");
        }
        common::assert_reissue_changes_nothing(&s);
        let show = s.cacertd(&["root", "show"]).ok();
        assert!(
            show.stdout.contains("O=Corp, CN=Mesh CA"),
            "{}",
            show.stdout
        );
        let status = s.cacertd(&["status"]).ok();
        assert!(
            status.stdout.contains("O=Corp, CN=Offline Root"),
            "{}",
            status.stdout
        );
    }
    // From a mesh CA to a root of cacertd's own: a phased rotation away from the anchor.
    let s = Setup::new();
    let pki = CompanyPki::usual();
    pki.make(s.path("").as_path());
    s.cacertd(&import_mesh_ca("chain.pem")).ok();
    s.cacertd(&["issue"]).ok();
    s.through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
        .ok();
    assert_issued_and_trusted(&s);
    let bundle = String::from_utf8(s.read("out/cluster1/root-cert.pem")).unwrap();
    assert!(!bundle.contains(String::from_utf8(s.read("anchor.pem")).unwrap().trim()));
}

/// A new mesh CA under the same anchor (`root import --replace`): no trust changes, so no
/// transition. The previous CA is kept, `plan` says why each cluster is re-issued, and every
/// pair of workloads — on old intermediates or re-issued ones — completes mTLS after each
/// write. Another anchor is refused and changes nothing.
#[test]
fn a_mesh_ca_replaced_under_the_same_anchor_reissues_without_a_transition() {
    let s = Setup::new();
    let pki = CompanyPki::usual();
    pki.import_into(&s).ok();
    s.cacertd(&["issue"]).ok();
    let bundle = s.read("out/cluster1/root-cert.pem");
    for c in ["cluster1", "cluster2"] {
        copy_dir(&s.path(&format!("out/{c}")), &s.path(&format!("old-{c}")));
    }
    pki.sign_mesh_ca(s.path("").as_path(), "mesh2");
    let run = s
        .cacertd(&[
            "root",
            "import",
            "--cert",
            "mesh2.pem",
            "--key",
            "mesh2.key",
            "--chain",
            "chain.pem",
            "--replace",
        ])
        .ok();
    assert!(
        run.stdout.contains("no transition is needed"),
        "{}",
        run.stdout
    );
    let kept: Vec<_> = std::fs::read_dir(s.path("state"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("root-replaced-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "the previous mesh CA is kept");
    assert_eq!(
        std::fs::read(kept[0].path().join("root-cert.pem")).unwrap(),
        s.read("mesh.pem")
    );
    let plan = s.cacertd(&["plan"]).ok();
    assert_eq!(
        plan.stdout.matches("mesh CA replaced").count(),
        2,
        "{}",
        plan.stdout
    );
    let handshake = |a: &str, b: &str| {
        mtls::handshake(mtls::workload(&s.path(a)), mtls::workload(&s.path(b)))
            .unwrap_or_else(|e| panic!("{a} with {b}: {e}"))
    };
    for (written, others) in [
        ("cluster1", ["old-cluster1", "old-cluster2", "out/cluster2"]),
        ("cluster2", ["old-cluster1", "old-cluster2", "out/cluster1"]),
    ] {
        s.cacertd(&["issue", written]).ok();
        let dir = format!("out/{written}");
        assert_eq!(s.read(&format!("{dir}/root-cert.pem")), bundle);
        let chain = String::from_utf8(s.read(&format!("{dir}/cert-chain.pem"))).unwrap();
        assert!(chain.contains(String::from_utf8(s.read("mesh2.pem")).unwrap().trim()));
        for other in others {
            handshake(&dir, other);
            handshake(other, &dir);
        }
    }
    assert_issued_and_trusted(&s);
    let again = s.cacertd(&["plan"]).ok();
    assert!(
        !again.stdout.contains("mesh CA replaced"),
        "{}",
        again.stdout
    );

    // Another company's anchor is a rotation, not a replacement.
    let elsewhere = s.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    CompanyPki::usual().make(&elsewhere);
    let store_before = s.read("state/root/root-cert.pem");
    let run = s
        .cacertd(&[
            "root",
            "import",
            "--cert",
            "elsewhere/mesh.pem",
            "--key",
            "elsewhere/mesh.key",
            "--chain",
            "elsewhere/chain.pem",
            "--replace",
        ])
        .fails_with(5);
    assert!(run.stderr.contains("rotate-root"), "{}", run.stderr);
    assert_eq!(s.read("state/root/root-cert.pem"), store_before);
}

/// A policy that names the anchors allowed (`[root] anchors`): a mesh CA under another anchor
/// is refused at import, a root cannot be generated, and once the stored anchor is no longer
/// listed nothing is issued under it. Each refusal names the rule and changes nothing.
#[test]
fn a_policy_names_the_anchors_a_mesh_ca_may_chain_to() {
    let s = Setup::new();
    let pki = CompanyPki::usual();
    pki.make(s.path("").as_path());
    let fingerprint = openssl(
        s.path("").as_path(),
        &[
            "x509",
            "-in",
            "anchor.pem",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    )
    .ok()
    .stdout;
    let fingerprint = fingerprint.trim().rsplit('=').next().unwrap().to_string();
    let policy = std::fs::read_to_string(s.path("policies/default.toml")).unwrap();
    let pin = |anchors: &str| {
        let pinned = policy.replacen("[root]\n", &format!("[root]\nanchors = [{anchors}]\n"), 1);
        assert_ne!(pinned, policy);
        std::fs::write(s.path("policies/default.toml"), pinned).unwrap();
    };
    let elsewhere = format!("\"{}\"", "ab".repeat(32));
    pin(&elsewhere);
    let run = s.cacertd(&import_mesh_ca("chain.pem")).fails_with(4);
    assert!(
        run.stderr.contains("root.anchors") && run.stderr.contains("O=Corp, CN=Offline Root"),
        "{}",
        run.stderr
    );
    assert!(!s.path("state/root").exists());
    let run = s.cacertd(&["root", "init"]).fails_with(4);
    assert!(run.stderr.contains("root.anchors"), "{}", run.stderr);
    assert!(!s.path("state/root").exists());

    // Listed as `openssl` prints it, in lower case, without the colons: the same anchor.
    pin(&format!(
        "{elsewhere}, \"sha256:{}\"",
        fingerprint.replace(':', "").to_lowercase()
    ));
    s.cacertd(&import_mesh_ca("chain.pem")).ok();
    s.cacertd(&["issue"]).ok();
    assert_issued_and_trusted(&s);

    pin(&elsewhere);
    let before = s.read("out/cluster1/ca-cert.pem");
    let run = s.cacertd(&["issue", "--force"]).fails_with(4);
    assert!(run.stdout.contains("root.anchors"), "{}", run.stdout);
    assert_eq!(s.read("out/cluster1/ca-cert.pem"), before);

    pin("\"not-a-fingerprint\"");
    let run = s.cacertd(&["check"]).fails_with(2);
    assert!(
        run.stderr.contains("root.anchors") && run.stderr.contains("not a SHA-256 fingerprint"),
        "{}",
        run.stderr
    );
}

/// `root init --csr`: the mesh CA's key is made here and waits, 0600, for the company CA's
/// signature; `root import` without --key stores it with the signed certificate and removes
/// the waiting copy. A certificate for another key is refused and the key keeps waiting; a
/// second request while one waits is refused. With a root in the store, the request is for
/// its replacement under the same anchor.
#[test]
fn a_mesh_ca_request_signed_offline_is_imported_with_the_key_made_here() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let pki = CompanyPki::usual();
    pki.make(s.path("").as_path());
    let run = s.cacertd(&[
        "root",
        "import",
        "--cert",
        "mesh.pem",
        "--chain",
        "chain.pem",
    ]);
    let run = run.fails_with(2);
    assert!(run.stderr.contains("root init --csr"), "{}", run.stderr);

    let run = s.cacertd(&["root", "init", "--csr", "request.csr"]).ok();
    assert!(
        run.stdout.contains("root import --cert signed.pem"),
        "{}",
        run.stdout
    );
    assert!(
        !s.path("state/root").exists(),
        "no root before the signature"
    );
    let key = s.path("state/root-request/mesh-ca-key.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = openssl(
        s.path("").as_path(),
        &["req", "-in", "request.csr", "-verify", "-noout", "-text"],
    )
    .ok();
    assert!(
        text.stdout.contains("CN=Root CA") || text.stdout.contains("CN = Root CA"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("CA:TRUE"), "{}", text.stdout);
    let again = s
        .cacertd(&["root", "init", "--csr", "again.csr"])
        .fails_with(5);
    assert!(again.stderr.contains("already waits"), "{}", again.stderr);
    assert!(!s.path("again.csr").exists());

    // A certificate for another key (the mesh CA `make` wrote) is not this request's.
    let run = s
        .cacertd(&[
            "root",
            "import",
            "--cert",
            "mesh.pem",
            "--chain",
            "chain.pem",
        ])
        .fails_with(3);
    assert!(run.stderr.contains("mesh-ca-key.pem"), "{}", run.stderr);
    assert!(key.exists() && !s.path("state/root").exists());

    std::fs::copy(s.path("request.csr"), s.path("signed.csr")).unwrap();
    pki.sign_mesh_request(s.path("").as_path(), "signed");
    s.cacertd(&[
        "root",
        "import",
        "--cert",
        "signed.pem",
        "--chain",
        "chain.pem",
    ])
    .ok();
    assert!(
        !s.path("state/root-request").exists(),
        "no second copy of the key"
    );
    s.cacertd(&["issue"]).ok();
    assert_issued_and_trusted(&s);
    let chain = String::from_utf8(s.read("out/cluster1/cert-chain.pem")).unwrap();
    assert!(chain.contains(String::from_utf8(s.read("signed.pem")).unwrap().trim()));

    // The next mesh CA, by request too: a replacement under the same anchor.
    let run = s.cacertd(&["root", "init", "--csr", "next.csr"]).ok();
    assert!(run.stdout.contains("--replace"), "{}", run.stdout);
    pki.sign_mesh_request(s.path("").as_path(), "next");
    s.cacertd(&[
        "root",
        "import",
        "--cert",
        "next.pem",
        "--chain",
        "chain.pem",
        "--replace",
    ])
    .ok();
    assert!(!s.path("state/root-request").exists());
    s.cacertd(&["issue"]).ok();
    assert_issued_and_trusted(&s);
    let chain = String::from_utf8(s.read("out/cluster2/cert-chain.pem")).unwrap();
    assert!(chain.contains(String::from_utf8(s.read("next.pem")).unwrap().trim()));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// What cannot carry a mesh: a chain that does not reach the anchor, a mesh CA with pathlen:0,
/// a corporate CA whose pathlen leaves no room for the clusters' intermediates, a self-signed
/// root given a chain, a mesh CA without one. Each is named, and no root is stored.
#[test]
fn a_chain_that_cannot_carry_a_mesh_is_refused() {
    let cases: [(CompanyPki, &str, &str); 3] = [
        (
            CompanyPki {
                corporate: 1,
                corporate_pathlen: None,
                mesh_pathlen: Some(0),
                anchor_digest: "sha256",
            },
            "chain.pem",
            "pathlen:0 leaves no room",
        ),
        (
            CompanyPki {
                corporate: 1,
                corporate_pathlen: Some(1),
                mesh_pathlen: Some(1),
                anchor_digest: "sha256",
            },
            "chain.pem",
            "has pathlen:1 but 2 CA certificate(s) sit below it",
        ),
        (
            CompanyPki::usual(),
            "anchor.pem",
            "does not lead from O=Corp, CN=Mesh CA to its anchor",
        ),
    ];
    for (pki, chain, expected) in cases {
        let s = Setup::new();
        pki.make(s.path("").as_path());
        let run = s.cacertd(&import_mesh_ca(chain)).fails_with(3);
        assert!(run.stderr.contains(expected), "{expected}: {}", run.stderr);
        assert!(!s.path("state/root/root-cert.pem").exists());
    }
    let s = Setup::new();
    CompanyPki::usual().make(s.path("").as_path());
    // The mesh CA alone is no chain.
    let run = s.cacertd(&import_mesh_ca("mesh.pem")).fails_with(3);
    assert!(
        run.stderr.contains("no certificate above the mesh CA"),
        "{}",
        run.stderr
    );
    // The corporate CA alone is not an anchor.
    let run = s.cacertd(&import_mesh_ca("corp0.pem")).fails_with(3);
    assert!(
        run.stderr.contains("does not lead to a self-signed anchor"),
        "{}",
        run.stderr
    );
    let run = s
        .cacertd(&["root", "import", "--cert", "mesh.pem", "--key", "mesh.key"])
        .fails_with(3);
    assert!(
        run.stderr.contains("give the certificates above it"),
        "{}",
        run.stderr
    );
    let run = s
        .cacertd(&[
            "root",
            "import",
            "--cert",
            "anchor.pem",
            "--key",
            "anchor.key",
            "--chain",
            "chain.pem",
        ])
        .fails_with(3);
    assert!(
        run.stderr.contains("--chain is for a mesh CA below one"),
        "{}",
        run.stderr
    );
    assert!(!s.path("state/root/root-cert.pem").exists());
}
