//! Bad input of every kind: a clear error naming what is wrong, a documented non-zero exit
//! code, and not one byte changed on disk.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ACCEPTANCE_CONFIG, Setup, openssl};

/// Runs cacertd expecting failure with `code`, asserts stderr mentions every `needle`, and
/// that nothing on disk changed.
fn refused(s: &Setup, args: &[&str], code: i32, needles: &[&str]) -> String {
    let before = s.snapshot();
    let run = s.cacertd(args).fails_with(code);
    for n in needles {
        assert!(
            run.stderr.contains(n),
            "expected {n:?} in stderr:\n{}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    common::assert_unchanged(&before, &s.snapshot());
    run.stderr
}

fn openssl_root(s: &Setup, keygen: &[&str], ext: &str) {
    let d = s.dir.path();
    openssl(d, keygen).ok();
    let mut args = vec![
        "req",
        "-x509",
        "-new",
        "-key",
        "k.pem",
        "-days",
        "30",
        "-subj",
        "/CN=Bad Root",
        "-out",
        "c.pem",
    ];
    for e in ext.split('|').filter(|e| !e.is_empty()) {
        args.push("-addext");
        args.push(e);
    }
    openssl(d, &args).ok();
}

/// An ECDSA P-256 root made by OpenSSL, as `k.pem` and `c.pem`, with `ext` extensions
/// (separated by `|`).
fn p256_root(s: &Setup, ext: &str) {
    let keygen = [
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "k.pem",
    ];
    openssl_root(s, &keygen, ext);
}

#[test]
fn garbage_and_truncated_pem_are_refused() {
    let s = Setup::new();
    std::fs::write(s.path("c.pem"), "this is not PEM at all\n").unwrap();
    std::fs::write(s.path("k.pem"), "nor is this\n").unwrap();
    refused(
        &s,
        &["root", "import", "--cert", "c.pem", "--key", "k.pem"],
        3,
        &["c.pem", "no PEM block"],
    );

    p256_root(&s, "basicConstraints=critical,CA:TRUE");
    let cert = std::fs::read_to_string(s.path("c.pem")).unwrap();
    std::fs::write(s.path("t.pem"), &cert[..cert.len() / 2]).unwrap();
    refused(
        &s,
        &["root", "import", "--cert", "t.pem", "--key", "k.pem"],
        3,
        &["t.pem"],
    );

    let key = std::fs::read_to_string(s.path("k.pem")).unwrap();
    std::fs::write(s.path("tk.pem"), &key[..key.len() - 40]).unwrap();
    let err = refused(
        &s,
        &["root", "import", "--cert", "c.pem", "--key", "tk.pem"],
        3,
        &["tk.pem"],
    );
    let body = key.lines().nth(1).unwrap();
    assert!(
        !err.contains(body),
        "key material must never be echoed:\n{err}"
    );
}

#[test]
fn a_key_that_does_not_match_is_refused() {
    let s = Setup::new();
    p256_root(&s, "basicConstraints=critical,CA:TRUE");
    openssl(
        s.dir.path(),
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "other.pem",
        ],
    )
    .ok();
    refused(
        &s,
        &["root", "import", "--cert", "c.pem", "--key", "other.pem"],
        3,
        &["does not match"],
    );
}

#[test]
fn a_non_ca_certificate_is_refused_as_root() {
    let s = Setup::new();
    p256_root(&s, "basicConstraints=critical,CA:FALSE");
    refused(
        &s,
        &["root", "import", "--cert", "c.pem", "--key", "k.pem"],
        3,
        &["c.pem", "not a CA"],
    );
}

#[test]
fn an_expired_root_is_refused() {
    let s = Setup::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = p.self_signed(&key).unwrap();
    std::fs::write(s.path("c.pem"), cert.pem()).unwrap();
    std::fs::write(s.path("k.pem"), key.serialize_pem()).unwrap();
    refused(
        &s,
        &["root", "import", "--cert", "c.pem", "--key", "k.pem"],
        3,
        &["c.pem", "expired at 2021-01-01"],
    );
}

#[test]
fn secp256k1_and_ed25519_roots_are_refused_by_name() {
    let s = Setup::new();
    openssl_root(
        &s,
        &[
            "ecparam",
            "-name",
            "secp256k1",
            "-genkey",
            "-noout",
            "-out",
            "k.pem",
        ],
        "basicConstraints=critical,CA:TRUE",
    );
    refused(
        &s,
        &["root", "import", "--cert", "c.pem", "--key", "k.pem"],
        3,
        &["secp256k1", "istiod"],
    );

    let s = Setup::new();
    openssl_root(
        &s,
        &["genpkey", "-algorithm", "ed25519", "-out", "k.pem"],
        "basicConstraints=critical,CA:TRUE",
    );
    refused(
        &s,
        &["root", "import", "--cert", "c.pem", "--key", "k.pem"],
        3,
        &["Ed25519"],
    );
}

#[test]
fn config_errors_exit_2_and_name_the_place() {
    let cases = [
        (
            ACCEPTANCE_CONFIG.replace("primary = \"cluster1\"", "primary = \"cluster9\""),
            vec!["cacertd.toml:25", "clusters[2].primary", "cluster9"],
        ),
        (
            ACCEPTANCE_CONFIG.replace("name = \"cluster2\"", "name = \"cluster1\""),
            vec!["cacertd.toml:17", "duplicate cluster name"],
        ),
        (
            ACCEPTANCE_CONFIG.replace("role = \"remote\"", "role = \"remote"),
            vec!["cacertd.toml", "line 24"],
        ),
        (
            ACCEPTANCE_CONFIG.replace("policy = \"default\"", "policy = \"missing\""),
            vec!["policy", "missing"],
        ),
        (
            ACCEPTANCE_CONFIG.replace(
                "path = \"out/cluster1\"",
                "path = \"out/cluster1\", observe_context = \"c1\"",
            ),
            vec!["clusters[0].target", "observe_context needs observe"],
        ),
    ];
    for (config, needles) in cases {
        let s = Setup::with_config(&config);
        refused(&s, &["root", "init"], 2, &needles);
        refused(&s, &["issue", "--init-root"], 2, &needles);
    }
}

#[test]
fn a_second_root_is_never_written_over_the_first() {
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    refused(&s, &["root", "init"], 5, &["already holds a root"]);
    p256_root(&s, "basicConstraints=critical,CA:TRUE");
    refused(
        &s,
        &["root", "import", "--cert", "c.pem", "--key", "k.pem"],
        5,
        &["already holds a root"],
    );
}

#[test]
fn clusters_that_get_no_cacerts_are_refused_by_name() {
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    refused(
        &s,
        &["issue", "cluster3"],
        2,
        &["cluster3 is a remote", "cluster1"],
    );
    refused(
        &s,
        &["issue", "cluster7"],
        2,
        &[
            "unknown cluster \"cluster7\"",
            "cluster1, cluster2, cluster3",
        ],
    );
}

#[test]
fn issue_without_a_root_says_how_to_make_one() {
    let s = Setup::new();
    refused(&s, &["issue"], 1, &["no root", "cacertd root init"]);
}

#[test]
fn a_cluster_on_another_root_is_not_silently_moved() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    // Another mesh's material lands in cluster2's folder.
    let other = Setup::new();
    other.cacertd(&["issue", "--init-root"]).ok();
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
        "cacerts.yaml",
    ] {
        std::fs::copy(
            other.path(&format!("out/cluster2/{f}")),
            s.path(&format!("out/cluster2/{f}")),
        )
        .unwrap();
    }
    let before = s.snapshot();
    let run = s.cacertd(&["issue"]).fails_with(5);
    assert!(
        run.stdout.contains("REFUSED") && run.stdout.contains("break"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("cluster1  unchanged"), "{}", run.stdout);
    common::assert_unchanged(&before, &s.snapshot());

    let audit = std::fs::read_to_string(s.path("state/audit.log")).unwrap();
    assert!(
        audit.lines().any(
            |l| l.contains("\"cluster\":\"cluster2\"") && l.contains("\"outcome\":\"refused\"")
        ),
        "the refusal is audited:\n{audit}"
    );
    s.cacertd(&["issue", "--danger-replace-trust-bundle"]).ok();
    assert_eq!(
        s.read("out/cluster2/root-cert.pem"),
        s.read("state/root/root-cert.pem")
    );
    // The other mesh's material is still recoverable.
    let backups: Vec<_> = std::fs::read_dir(s.path("state/backups/cluster2"))
        .unwrap()
        .collect();
    let b = backups.last().unwrap().as_ref().unwrap().path();
    assert_eq!(
        std::fs::read(b.join("ca-key.pem")).unwrap(),
        other.read("out/cluster2/ca-key.pem")
    );
}

#[test]
fn the_policy_refuses_what_it_does_not_allow() {
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    let p = s.path("policies/default.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("clusters = [\"*\"]", "clusters = [\"cluster1\"]");
    std::fs::write(&p, text).unwrap();
    let before = s.snapshot();
    let run = s.cacertd(&["issue"]).fails_with(4);
    assert!(
        run.stdout.contains("POLICY REFUSED") && run.stdout.contains("clusters"),
        "{}",
        run.stdout
    );
    let after = s.snapshot();
    assert!(!s.path("out/cluster2").exists());
    assert!(
        s.path("out/cluster1/ca-cert.pem").exists(),
        "the allowed cluster is still issued"
    );
    assert!(after.len() > before.len());

    // An ECDSA root under the RSA-only Istio-compatible policy.
    let config = ACCEPTANCE_CONFIG.replace("policy = \"default\"", "policy = \"istio-compatible\"");
    let s = Setup::with_config(&config);
    p256_root(&s, "basicConstraints=critical,CA:TRUE");
    refused(
        &s,
        &["root", "import", "--cert", "c.pem", "--key", "k.pem"],
        4,
        &["root.allowed_key_algorithms", "ecdsa-p256"],
    );
}

#[test]
fn verify_names_each_broken_file() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    std::fs::write(s.path("out/cluster1/root-cert.pem"), "garbage").unwrap();
    std::fs::remove_file(s.path("out/cluster1/cert-chain.pem")).unwrap();
    let run = s.cacertd(&["verify", "out/cluster1"]).fails_with(3);
    assert!(
        run.stdout.contains("cert-chain.pem: missing"),
        "{}",
        run.stdout
    );
    let json = s
        .cacertd(&["verify", "out/cluster1", "-o", "json"])
        .fails_with(3);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let run = s.cacertd(&["verify", "out/nowhere"]).fails_with(2);
    assert!(run.stderr.contains("not a directory"), "{}", run.stderr);
    // Valid now, but not in two years.
    let ok = s.cacertd(&["verify", "out/cluster2"]).ok();
    assert!(ok.stdout.contains("OK"));
    let later = s
        .cacertd(&["verify", "out/cluster2", "--at", "2040-01-01T00:00:00Z"])
        .fails_with(3);
    assert!(
        later.stdout.contains("ca-cert.pem: expired"),
        "{}",
        later.stdout
    );
    // A date is midnight UTC; anything else is named.
    let day = s
        .cacertd(&["verify", "out/cluster2", "--at", "2040-01-01"])
        .fails_with(3);
    assert_eq!(day.stdout, later.stdout);
    let run = s
        .cacertd(&["verify", "out/cluster2", "--at", "next year"])
        .fails_with(2);
    assert!(
        run.stderr.contains("--at \"next year\": not a date"),
        "{}",
        run.stderr
    );
}

#[test]
fn roots_that_cannot_sign_usable_intermediates_are_refused_at_import() {
    let cases = [
        (
            "basicConstraints=critical,CA:TRUE|nameConstraints=critical,permitted;DNS:.example.com",
            "permits only",
        ),
        (
            "basicConstraints=critical,CA:TRUE|nameConstraints=critical,excluded;URI:cluster.local",
            "excludes",
        ),
        (
            "basicConstraints=critical,CA:TRUE|1.2.3.4.5.6.7=critical,ASN1:NULL",
            "1.2.3.4.5.6.7",
        ),
        ("basicConstraints=critical,CA:TRUE,pathlen:0", "pathlen:0"),
        (
            "basicConstraints=critical,CA:TRUE|extendedKeyUsage=clientAuth",
            "serverAuth",
        ),
    ];
    for (ext, needle) in cases {
        let s = Setup::new();
        p256_root(&s, ext);
        refused(
            &s,
            &["root", "import", "--cert", "c.pem", "--key", "k.pem"],
            3,
            &[needle],
        );
    }
}

#[test]
fn blocks_go_skips_in_a_bundle_are_warnings_not_failures() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let p = s.path("out/cluster1/root-cert.pem");
    let mut bundle = std::fs::read(&p).unwrap();
    bundle.extend_from_slice(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n");
    std::fs::write(&p, bundle).unwrap();
    let run = s.cacertd(&["verify", "out/cluster1"]).ok();
    assert!(
        run.stdout
            .contains("warning: root-cert.pem: block #2 is \"X509 CRL\""),
        "{}",
        run.stdout
    );
}

#[test]
fn a_second_concurrent_run_is_turned_away() {
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    let held = std::fs::File::open(s.path("state/.lock")).unwrap();
    held.try_lock().unwrap();
    refused(&s, &["issue"], 1, &["another cacertd run holds the lock"]);
    drop(held);
    s.cacertd(&["issue"]).ok();
}

#[test]
fn a_cert_manager_managed_folder_is_read_but_not_written_over() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    // cluster1 becomes cert-manager's: tls.* from an unrelated mesh, next to our files.
    let other = Setup::new();
    other.cacertd(&["issue", "--init-root"]).ok();
    let src = other.path("out/cluster1");
    let dst = s.path("out/cluster1");
    std::fs::copy(src.join("ca-cert.pem"), dst.join("tls.crt")).unwrap();
    std::fs::copy(src.join("ca-key.pem"), dst.join("tls.key")).unwrap();
    std::fs::copy(src.join("root-cert.pem"), dst.join("ca.crt")).unwrap();
    // istiod would use tls.*, so that is what cacertd judges.
    let st = s.cacertd(&["status", "-o", "json"]).ok();
    let json: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(json["clusters"][0]["cacerts"]["state"], "foreign-trust");
    s.cacertd(&["verify", "out/cluster1"]).ok();
    let run = s
        .cacertd(&["issue", "--danger-replace-trust-bundle"])
        .fails_with(1);
    assert!(run.stdout.contains("cert-manager"), "{}", run.stdout);
}

/// Output to a pipe that is already closed (`cacertd … | head -2`) is lost, not the command:
/// no panic, the exit code of the command itself.
#[test]
fn a_closed_stdout_loses_the_output_not_the_command() {
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    for args in [
        &["rotate-root", "plan"][..],
        &["status"][..],
        &["issue"][..],
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cacertd"))
            .current_dir(s.dir.path())
            .args(["-c", "cacertd.toml"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
    // The issue above did its work although nobody read what it printed.
    assert!(s.path("out/cluster1/ca-cert.pem").exists());
}

/// `status` prints every cluster, and fails (exit 1) when one could not be read: a monitoring
/// script must not read "ok" from a mesh it could not see.
#[test]
fn status_fails_when_a_cluster_cannot_be_read() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    std::fs::remove_dir_all(s.path("out/cluster2")).unwrap();
    std::fs::write(s.path("out/cluster2"), "a file where the folder was").unwrap();
    let run = s.cacertd(&["status"]).fails_with(1);
    assert!(run.stdout.contains("cluster1"), "{}", run.stdout);
    assert!(
        run.stderr.contains("1 cluster(s) could not be read"),
        "{}",
        run.stderr
    );
}
