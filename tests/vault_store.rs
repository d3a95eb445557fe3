//! The Vault root stores against the test Vault: vault-kv (Vault holds the root) and vault-pki
//! (Vault signs; its key never leaves it), with token, AppRole and Kubernetes logins, token
//! renewal and re-login, and the failures a security team must be told about clearly.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use cacertd_test_apiserver::json;
use cacertd_test_apiserver::vault::{PathRule, TestVault};
use common::{Setup, assert_issued_and_trusted, assert_unchanged, openssl_verify_cacerts};

fn config(vault: &TestVault, root: &str, auth: &str) -> String {
    common::vault_config(&vault.url(), "2s", root, auth)
}

const KV: &str = "store = \"vault-kv\"\nmount = \"secret\"\npath = \"cacertd/root\"";
const PKI: &str = "store = \"vault-pki\"\nmount = \"pki\"";
const TOKEN_AUTH: &str = "{ method = \"token\", token_file = \"vault-token\" }";

fn setup(vault: &TestVault, root: &str, token: &str) -> Setup {
    let s = Setup::with_config(&config(vault, root, TOKEN_AUTH));
    std::fs::write(s.path("vault-token"), token).unwrap();
    s
}

#[test]
fn vault_kv_holds_the_root_and_never_gives_it_up_twice() {
    let vault = TestVault::start();
    let s = setup(&vault, KV, "root-token");
    s.cacertd(&["root", "init"]).ok();
    let versions = vault.kv_versions("secret", "cacertd/root");
    assert_eq!(versions.len(), 1);
    assert!(
        versions[0]["private_key"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );
    assert!(
        !s.path("state/root").exists(),
        "the root is not cached on disk"
    );

    s.cacertd(&["issue"]).ok();
    assert_issued_and_trusted(&s);
    let root_in_vault = versions[0]["certificate"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read_to_string(s.path("out/cluster1/root-cert.pem")).unwrap(),
        root_in_vault
    );

    let show = s.cacertd(&["root", "show"]).ok().stdout;
    assert!(
        show.contains("vault-kv secret/cacertd/root") && show.contains("(version 1)"),
        "{show}"
    );
    let run = s.cacertd(&["root", "init"]).fails_with(5);
    assert!(
        run.stderr.contains("already holds a root"),
        "{}",
        run.stderr
    );
    assert_eq!(
        vault.kv_versions("secret", "cacertd/root").len(),
        1,
        "no second version written"
    );
}

#[test]
fn two_concurrent_root_inits_leave_exactly_one_root() {
    let vault = TestVault::start();
    // Both runs see "no root" before either writes: each write waits for the other.
    vault.hold_kv_writes_until(2);
    let a = setup(&vault, KV, "root-token");
    let b = setup(&vault, KV, "root-token");
    let (ra, rb) = std::thread::scope(|scope| {
        let ta = scope.spawn(|| a.cacertd(&["root", "init"]));
        let tb = scope.spawn(|| b.cacertd(&["root", "init"]));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let mut codes = [ra.code, rb.code];
    codes.sort();
    assert_eq!(
        codes,
        [0, 5],
        "one wins, one is refused:\n{}\n{}",
        ra.stderr,
        rb.stderr
    );
    assert_eq!(vault.kv_versions("secret", "cacertd/root").len(), 1);
    // Both passed the existence check; Vault's check-and-set is what refused the loser.
    let answers = vault.answers();
    let count = |method: &str, path: &str, status: u16| {
        answers
            .iter()
            .filter(|(m, p, s)| m == method && p == path && *s == status)
            .count()
    };
    assert_eq!(
        count("GET", "secret/metadata/cacertd/root", 404),
        2,
        "{answers:?}"
    );
    let data = "secret/data/cacertd/root";
    assert_eq!(
        (count("POST", data, 200), count("POST", data, 400)),
        (1, 1),
        "{answers:?}"
    );
    let loser = if ra.code == 5 { &ra } else { &rb };
    assert!(
        loser.stderr.contains("already holds a root"),
        "{}",
        loser.stderr
    );
}

#[test]
fn vault_pki_signs_and_its_key_never_leaves_vault() {
    let vault = TestVault::start();
    let s = setup(&vault, PKI, "root-token");
    s.cacertd(&["root", "init"]).ok();
    s.cacertd(&["issue"]).ok();
    assert_issued_and_trusted(&s);
    let issuer = vault.pki_issuers("pki").remove(0);
    assert_eq!(
        std::fs::read_to_string(s.path("out/cluster2/root-cert.pem")).unwrap(),
        issuer
    );
    let requests = vault.requests();
    assert!(
        requests
            .iter()
            .any(|(_, p)| p == "pki/root/generate/internal")
    );
    assert_eq!(
        requests
            .iter()
            .filter(|(_, p)| p == "pki/root/sign-intermediate")
            .count(),
        2
    );
    assert!(
        requests
            .iter()
            .all(|(_, p)| !p.contains("exported") && !p.contains("keys")),
        "cacertd must never ask Vault for the root key: {requests:?}"
    );
    assert!(!s.path("state/root").exists());
    // The intermediates are what the policy asks for, whatever Vault's defaults.
    let text = common::openssl(
        &s.path("out/cluster1"),
        &["x509", "-in", "ca-cert.pem", "-noout", "-text"],
    )
    .ok()
    .stdout;
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    // OpenSSL 3 prints `L = cluster1`, OpenSSL 1.1 `L=cluster1`.
    assert!(
        text.contains("L = cluster1") || text.contains("L=cluster1"),
        "{text}"
    );
    // import makes no sense when Vault keeps the key.
    let other = Setup::new();
    other.cacertd(&["root", "init"]).ok();
    let cert = other.path("state/root/root-cert.pem");
    let key = other.path("state/root/root-key.pem");
    let run = s
        .cacertd(&[
            "root",
            "import",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ])
        .fails_with(2);
    assert!(run.stderr.contains("inside Vault"), "{}", run.stderr);
}

#[test]
fn a_named_issuer_is_signed_with_through_its_own_path() {
    let vault = TestVault::start();
    let s = setup(&vault, PKI, "root-token");
    s.cacertd(&["root", "init"]).ok();
    // A second issuer appears in the mount (a Vault-side root rotation); cacertd is pointed at
    // the first one by its id.
    let id = vault.pki_issuer_ids("pki").remove(0);
    let config = std::fs::read_to_string(s.path("cacertd.toml"))
        .unwrap()
        .replace(PKI, &format!("{PKI}\nissuer = \"{id}\""));
    std::fs::write(s.path("cacertd.toml"), config).unwrap();
    s.cacertd(&["issue", "cluster1"]).ok();
    assert!(
        vault
            .requests()
            .iter()
            .any(|(_, p)| p == &format!("pki/issuer/{id}/sign-intermediate"))
    );
    openssl_verify_cacerts(&s.path("out/cluster1")).ok();
}

#[test]
fn approle_tokens_are_renewed_and_logins_repeated_when_renewal_is_refused() {
    let vault = TestVault::start();
    let rules = vec![
        PathRule::new("secret/*", &["create", "read", "update"]),
        PathRule::new("sys/internal/ui/mounts/*", &["read"]),
        PathRule::new("auth/token/*", &["read", "update"]),
    ];
    vault.add_approle("role-1", "secret-1", rules.clone(), Duration::from_secs(6));
    let s = Setup::with_config(&config(
        &vault,
        KV,
        "{ method = \"approle\", role_id = \"role-1\", secret_id_file = \"secret-id\" }",
    ));
    std::fs::write(s.path("secret-id"), "secret-1\n").unwrap();
    s.cacertd(&["root", "init"]).ok();
    // Every call now takes 0.8 s: the 6 s token needs renewing during the run. It is not
    // refused once its TTL has passed, so however slow this machine is, what decides the count
    // of logins is whether cacertd renewed, not how fast it ran.
    vault.set_delay(Some(Duration::from_millis(800)));
    vault.keep_tokens_alive(true);
    let logins = |v: &TestVault| {
        v.requests()
            .iter()
            .filter(|(_, p)| p == "auth/approle/login")
            .count()
    };
    let before = logins(&vault);
    s.cacertd(&["issue"]).ok();
    openssl_verify_cacerts(&s.path("out/cluster1")).ok();
    assert_eq!(
        logins(&vault) - before,
        1,
        "renewal succeeded, so no second login was needed"
    );
    assert!(
        vault
            .requests()
            .iter()
            .any(|(_, p)| p == "auth/token/renew-self"),
        "{:?}",
        vault.requests()
    );

    // Renewal refused (max TTL reached): log in again instead.
    vault.keep_tokens_alive(false);
    vault.set_login_tokens_renewable(false);
    let logins_before = vault
        .requests()
        .iter()
        .filter(|(_, p)| p == "auth/approle/login")
        .count();
    s.cacertd(&["issue", "--force"]).ok();
    let logins = vault
        .requests()
        .iter()
        .filter(|(_, p)| p == "auth/approle/login")
        .count()
        - logins_before;
    assert!(
        logins >= 2,
        "logged in again after renewal was refused ({logins} logins)"
    );
}

#[test]
fn kubernetes_auth_logs_in_with_the_service_account_token() {
    let vault = TestVault::start();
    let rules = vec![
        PathRule::new("pki/*", &["create", "read", "update"]),
        PathRule::new("sys/internal/ui/mounts/*", &["read"]),
    ];
    vault.add_kubernetes_role("cacertd", "jwt-abc", rules, Duration::from_secs(600));
    let s = Setup::with_config(&config(
        &vault,
        PKI,
        "{ method = \"kubernetes\", role = \"cacertd\", jwt_file = \"sa-token\" }",
    ));
    std::fs::write(s.path("sa-token"), "jwt-abc").unwrap();
    s.cacertd(&["root", "init"]).ok();
    s.cacertd(&["issue"]).ok();
    assert!(
        vault
            .requests()
            .iter()
            .any(|(_, p)| p == "auth/kubernetes/login")
    );
    std::fs::write(s.path("sa-token"), "someone-else").unwrap();
    let run = s.cacertd(&["issue", "--force"]).fails_with(1);
    assert!(
        run.stderr.contains("Vault login (kubernetes) failed"),
        "{}",
        run.stderr
    );
}

#[test]
fn vault_failures_are_explained_and_touch_no_cluster() {
    let vault = TestVault::start();
    let s = setup(&vault, KV, "root-token");
    s.cacertd(&["issue", "--init-root"]).ok();
    std::fs::remove_dir_all(s.path("out/cluster2")).unwrap();
    let before = s.snapshot();

    vault.seal(true);
    let run = s.cacertd(&["issue"]).fails_with(1);
    assert!(run.stderr.contains("sealed"), "{}", run.stderr);
    assert_unchanged(&before, &s.snapshot());
    vault.seal(false);

    vault.add_token(
        "reader",
        vec![
            PathRule::new("sys/internal/ui/mounts/*", &["read"]),
            PathRule::new("auth/token/*", &["read"]),
        ],
        Duration::from_secs(600),
    );
    std::fs::write(s.path("vault-token"), "reader").unwrap();
    let before = s.snapshot();
    let run = s.cacertd(&["issue"]).fails_with(1);
    assert!(
        run.stderr.contains("permission denied")
            && run.stderr.contains("secret/metadata/cacertd/root"),
        "{}",
        run.stderr
    );
    assert_unchanged(&before, &s.snapshot());
    std::fs::write(s.path("vault-token"), "root-token").unwrap();

    let before = s.snapshot();
    vault.set_delay(Some(Duration::from_secs(5)));
    let run = s.cacertd(&["issue"]).fails_with(1);
    assert!(
        run.stderr.contains("unreachable") && run.stderr.contains("timed out"),
        "{}",
        run.stderr
    );
    assert_unchanged(&before, &s.snapshot());
    // Nothing listening: said so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = std::fs::read_to_string(s.path("cacertd.toml")).unwrap();
    std::fs::write(
        s.path("cacertd.toml"),
        config.replace(&vault.url(), &format!("http://127.0.0.1:{closed}")),
    )
    .unwrap();
    let before = s.snapshot();
    let run = s.cacertd(&["issue"]).fails_with(1);
    assert!(run.stderr.contains("connection refused"), "{}", run.stderr);
    assert_unchanged(&before, &s.snapshot());
    std::fs::write(s.path("cacertd.toml"), config).unwrap();
    vault.set_delay(None);

    // Fixed: the next run converges.
    s.cacertd(&["issue"]).ok();
    assert!(s.path("out/cluster2/ca-cert.pem").exists());
}

#[test]
fn wrong_mounts_and_malformed_secrets_are_named() {
    let vault = TestVault::start();
    let s = setup(&vault, &KV.replace("\"secret\"", "\"kv1\""), "root-token");
    let run = s.cacertd(&["root", "init"]).fails_with(1);
    assert!(run.stderr.contains("KV version 2"), "{}", run.stderr);
    let s = setup(&vault, &KV.replace("\"secret\"", "\"nope\""), "root-token");
    let run = s.cacertd(&["root", "init"]).fails_with(1);
    assert!(run.stderr.contains("no such mount"), "{}", run.stderr);

    vault.kv_put("secret", "cacertd/root", json!({"certificate": "garbage", "private_key": "-----BEGIN PRIVATE KEY-----\nU0VDUkVU\n-----END PRIVATE KEY-----\n"}));
    let s = setup(&vault, KV, "root-token");
    let run = s.cacertd(&["issue"]).fails_with(1);
    assert!(
        run.stderr.contains("malformed") && run.stderr.contains("secret/data/cacertd/root"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("U0VDUkVU"),
        "key bytes must not be echoed"
    );
    assert!(!s.path("out").exists());
}

#[test]
fn vault_over_tls_with_a_configured_ca_and_the_vault_environment() {
    let vault = TestVault::start_tls();
    // Address, CA bundle, token and namespace from VAULT_* only; no [vault] address here.
    let s = Setup::with_config(
        &config(&vault, KV, "{ method = \"token\" }")
            .replace(&format!("address = \"{}\"\n", vault.url()), ""),
    );
    std::fs::write(s.path("vault-ca.pem"), vault.ca_pem.clone().unwrap()).unwrap();
    let ca = s.path("vault-ca.pem");
    let env = [
        ("VAULT_ADDR", vault.url()),
        ("VAULT_CACERT", ca.display().to_string()),
        ("VAULT_TOKEN", "root-token".to_string()),
        ("VAULT_NAMESPACE", "team-mesh".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    s.cacertd_env(&["issue", "--init-root"], &env).ok();
    openssl_verify_cacerts(&s.path("out/cluster1")).ok();
    assert!(
        vault
            .namespaces()
            .iter()
            .all(|n| n.as_deref() == Some("team-mesh"))
    );

    // The configured CA is the only one trusted: with the server's CA among the system's
    // roots (SSL_CERT_FILE) but another configured, the server is refused.
    let elsewhere = TestVault::start_tls();
    std::fs::write(s.path("other-ca.pem"), elsewhere.ca_pem.clone().unwrap()).unwrap();
    let other = s.path("other-ca.pem").display().to_string();
    let ca_path = ca.display().to_string();
    let mut pinned_elsewhere: Vec<(&str, &str)> = env
        .iter()
        .filter(|(k, _)| *k != "VAULT_CACERT")
        .copied()
        .collect();
    pinned_elsewhere.extend([
        ("VAULT_CACERT", other.as_str()),
        ("SSL_CERT_FILE", &ca_path),
    ]);
    let run = s
        .cacertd_env(&["root", "show"], &pinned_elsewhere)
        .fails_with(1);
    assert!(
        run.stderr.contains("unreachable") && run.stderr.contains("TLS handshake failed"),
        "{}",
        run.stderr
    );
    // The system's roots alone are enough when no CA is configured.
    let system_only: Vec<(&str, &str)> = pinned_elsewhere
        .iter()
        .filter(|(k, _)| *k != "VAULT_CACERT")
        .copied()
        .collect();
    s.cacertd_env(&["root", "show"], &system_only).ok();

    // Without the CA, the server is not trusted, whatever VAULT_SKIP_VERIFY says.
    let mut untrusting: Vec<(&str, &str)> = env
        .iter()
        .filter(|(k, _)| *k != "VAULT_CACERT")
        .copied()
        .collect();
    untrusting.push(("VAULT_SKIP_VERIFY", "true"));
    let run = s.cacertd_env(&["root", "show"], &untrusting).fails_with(1);
    assert!(
        run.stderr.contains("unreachable") && run.stderr.contains("TLS handshake failed"),
        "{}",
        run.stderr
    );
}

#[test]
fn vault_shortening_or_misnaming_is_caught() {
    let vault = TestVault::start();
    // Real Vault silently caps TTLs at the mount's max lease TTL (768 h by default).
    vault.set_pki_max_ttl(Some(Duration::from_secs(768 * 3600)));
    let s = setup(&vault, PKI, "root-token");
    let run = s.cacertd(&["root", "init"]).fails_with(1);
    assert!(
        run.stderr.contains("max lease TTL") && run.stderr.contains("vault secrets tune"),
        "{}",
        run.stderr
    );

    // (The short root stays in that Vault, as cacertd cannot and should not delete it.)
    let vault = TestVault::start();
    let s = setup(&vault, PKI, "root-token");
    let named = setup(
        &vault,
        &format!("{PKI}\nissuer = \"mesh-root\""),
        "root-token",
    );
    let run = named.cacertd(&["root", "init"]).fails_with(1);
    assert!(
        run.stderr.contains("issuer \"mesh-root\" does not exist"),
        "{}",
        run.stderr
    );
    s.cacertd(&["root", "init"]).ok();
    let run = named.cacertd(&["issue"]).fails_with(1);
    assert!(
        run.stderr.contains("issuer \"mesh-root\" does not exist"),
        "{}",
        run.stderr
    );

    // Plain HTTP only on loopback: anything else would send the token in cleartext.
    let remote = Setup::with_config(
        &config(&vault, KV, TOKEN_AUTH).replace(&vault.url(), "http://vault.example:8200"),
    );
    std::fs::write(remote.path("vault-token"), "root-token").unwrap();
    // Refused when the config is loaded, naming the field.
    let run = remote.cacertd(&["root", "show"]).fails_with(2);
    assert!(
        run.stderr.contains("vault.address") && run.stderr.contains("plain HTTP"),
        "{}",
        run.stderr
    );
}

/// The rules of the policies in deploy/vault/ named `files`, as the test Vault's rules, plus
/// what Vault's built-in "default" policy and the mounts lookup give every token.
fn shipped_policies(files: &[&str]) -> Vec<PathRule> {
    let mut rules = vec![
        PathRule::new("auth/token/*", &["read", "update"]),
        PathRule::new("sys/internal/ui/mounts/*", &["read"]),
    ];
    for file in files {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/vault")
            .join(file);
        let text = std::fs::read_to_string(path).unwrap();
        let mut current: Option<String> = None;
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            if let Some(rest) = line.strip_prefix("path \"") {
                current = Some(rest.split('"').next().unwrap().to_string());
            } else if let Some(caps) = line.strip_prefix("capabilities = ") {
                let caps: Vec<String> = serde_json::from_str(caps).unwrap();
                let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
                rules.push(PathRule::new(current.as_deref().unwrap(), &caps));
            }
        }
    }
    assert!(rules.len() > 2 + files.len(), "{rules:?}");
    rules
}

#[test]
fn a_root_rotation_on_vault_kv_keeps_the_old_root_as_the_previous_version() {
    let vault = TestVault::start();
    vault.add_token(
        "day-to-day",
        shipped_policies(&["cacertd-kv.hcl"]),
        Duration::from_secs(3600),
    );
    vault.add_token(
        "rotation",
        shipped_policies(&["cacertd-kv.hcl", "cacertd-kv-rotate.hcl"]),
        Duration::from_secs(3600),
    );
    let s = setup(&vault, KV, "day-to-day");
    s.cacertd(&["issue", "--init-root"]).ok();
    let first = vault.kv_versions("secret", "cacertd/root");
    assert_eq!(first.len(), 1);
    // The day-to-day policy cannot rotate: refused before any cluster is touched.
    let before = s.snapshot();
    let run = s
        .through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
        .fails_with(5);
    assert!(run.stderr.contains("cacertd/root-next"), "{}", run.stderr);
    assert_unchanged(&before, &s.snapshot());

    std::fs::write(s.path("vault-token"), "rotation").unwrap();
    for round in 2..=3 {
        let run = s
            .through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
            .ok();
        assert!(!run.stdout.contains("PRIVATE KEY"), "{}", run.stdout);
        let versions = vault.kv_versions("secret", "cacertd/root");
        assert_eq!(versions.len(), round, "one new version per rotation");
        assert_eq!(versions[0], first[0], "the first root is kept as version 1");
        // The waiting copy of the new root's key is gone: every version destroyed, then the
        // metadata (the test Vault forgets the secret).
        assert!(
            vault.kv_versions("secret", "cacertd/root-next").is_empty(),
            "cacertd/root-next still holds the new root"
        );
        let destroyed = vault
            .requests()
            .iter()
            .any(|(m, p)| m == "POST" && p == "secret/destroy/cacertd/root-next");
        assert!(destroyed, "its versions were destroyed, not only deleted");
        let root = versions[round - 1]["certificate"].as_str().unwrap();
        assert_ne!(versions[round - 2]["certificate"], root);
        for c in ["cluster1", "cluster2"] {
            assert_eq!(
                String::from_utf8(s.read(&format!("out/{c}/root-cert.pem"))).unwrap(),
                root,
                "{c}"
            );
        }
        assert_issued_and_trusted(&s);
    }
    let audit = std::fs::read_to_string(s.path("state/audit.log")).unwrap();
    assert!(
        audit.contains("the previous root is kept: version 1 of secret/cacertd/root")
            && audit.contains("version 2 of secret/cacertd/root"),
        "{audit}"
    );
    assert!(!audit.contains("PRIVATE KEY"));
}

#[test]
fn a_root_rotation_on_vault_pki_adds_an_issuer_and_keeps_the_old_one() {
    let vault = TestVault::start();
    vault.add_token(
        "rotation",
        shipped_policies(&["cacertd-pki.hcl", "cacertd-pki-rotate.hcl"]),
        Duration::from_secs(3600),
    );
    let s = setup(&vault, PKI, "rotation");
    s.cacertd(&["root", "init"]).ok();
    s.cacertd(&["issue"]).ok();
    let first = vault.pki_issuers("pki");
    // The key stays in Vault: no root may be brought in.
    let other = Setup::new();
    other.cacertd(&["root", "init"]).ok();
    let (cert, key) = (
        other.path("state/root/root-cert.pem"),
        other.path("state/root/root-key.pem"),
    );
    let run = s
        .cacertd(&[
            "rotate-root",
            "start",
            "--new-root-cert",
            cert.to_str().unwrap(),
            "--new-root-key",
            key.to_str().unwrap(),
        ])
        .fails_with(5);
    assert!(run.stderr.contains("inside Vault"), "{}", run.stderr);
    assert_eq!(vault.pki_issuers("pki"), first);
    // A mount that makes every new issuer its default would sign with the new root at once.
    vault.set_pki_default_follows_latest(true);
    let run = s
        .cacertd(&["rotate-root", "start", "--drain", "0s"])
        .fails_with(5);
    assert!(
        run.stderr.contains("default_follows_latest_issuer"),
        "{}",
        run.stderr
    );
    assert_eq!(vault.pki_issuers("pki"), first);
    vault.set_pki_default_follows_latest(false);

    for round in 2..=3 {
        // An issuer setting that a rename must not reset.
        vault.pki_set_leaf_behavior("pki", 0, "truncate");
        s.through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
            .ok();
        let issuers = vault.pki_issuers("pki");
        assert_eq!(
            issuers.len(),
            round,
            "one issuer more per rotation, none removed"
        );
        assert!(issuers.contains(&first[0]));
        // The new issuer is the default: what the store now calls its root.
        for c in ["cluster1", "cluster2"] {
            assert_eq!(
                std::fs::read_to_string(s.path(&format!("out/{c}/root-cert.pem"))).unwrap(),
                issuers[0],
                "{c}"
            );
        }
        assert_issued_and_trusted(&s);
        let run = s.cacertd(&["issue"]).ok();
        assert!(
            !run.stdout.contains("issued"),
            "already up to date: {}",
            run.stdout
        );
    }
    let names = vault.pki_issuer_names("pki");
    assert_eq!(names[0], "cacertd-root-next", "{names:?}");
    // The second rotation renamed the first one's issuer out of the way, settings intact.
    let renamed = names
        .iter()
        .position(|n| n.starts_with("cacertd-root-1"))
        .unwrap_or_else(|| panic!("{names:?}"));
    assert_eq!(vault.pki_leaf_behaviors("pki")[renamed], "truncate");
    let requests = vault.requests();
    assert!(
        requests
            .iter()
            .all(|(_, p)| !p.contains("exported") && !p.contains("keys")),
        "{requests:?}"
    );
}

#[test]
fn a_named_vault_pki_issuer_hands_its_name_to_the_new_root() {
    let vault = TestVault::start();
    let s = setup(&vault, PKI, "root-token");
    s.cacertd(&["root", "init"]).ok();
    let id = vault.pki_issuer_ids("pki").remove(0);
    let old = vault.pki_issuers("pki").remove(0);
    let point_at = |reference: &str| {
        let config = std::fs::read_to_string(s.path("cacertd.toml")).unwrap();
        let config = match config.find("\nissuer = ") {
            Some(at) => {
                let end = config[at + 1..].find('\n').unwrap() + at + 1;
                format!(
                    "{}\nissuer = \"{reference}\"{}",
                    &config[..at],
                    &config[end..]
                )
            }
            None => config.replace(PKI, &format!("{PKI}\nissuer = \"{reference}\"")),
        };
        std::fs::write(s.path("cacertd.toml"), config).unwrap();
    };
    // By id: the name could not follow the root, so it is refused.
    point_at(&id);
    s.cacertd(&["issue"]).ok();
    let run = s
        .cacertd(&["rotate-root", "start", "--drain", "0s"])
        .fails_with(5);
    assert!(
        run.stderr.contains("not the name of an issuer"),
        "{}",
        run.stderr
    );
    assert_eq!(vault.pki_issuers("pki").len(), 1);

    vault.pki_name_issuer("pki", &id, "mesh-root");
    vault.pki_set_leaf_behavior("pki", 0, "truncate");
    point_at("mesh-root");
    s.through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
        .ok();
    let names = vault.pki_issuer_names("pki");
    let issuers = vault.pki_issuers("pki");
    let at = |name: &str| names.iter().position(|n| n == name);
    let new = &issuers[at("mesh-root").expect("the name moved to the new issuer")];
    assert_ne!(new, &old);
    let replaced = names
        .iter()
        .position(|n| n.starts_with("mesh-root-replaced-"))
        .unwrap();
    assert_eq!(issuers[replaced], old, "the old issuer stays, renamed");
    assert_eq!(
        vault.pki_leaf_behaviors("pki")[replaced],
        "truncate",
        "its settings untouched"
    );
    assert!(at("mesh-root-next").is_none());
    assert_eq!(
        &std::fs::read_to_string(s.path("out/cluster1/root-cert.pem")).unwrap(),
        new
    );
    assert_issued_and_trusted(&s);
}

/// A vault-pki setup logging in with AppRole (tokens of `ttl`), its root made.
fn approle_pki(vault: &TestVault, ttl: Duration) -> Setup {
    let rules = vec![
        PathRule::new("pki/*", &["create", "read", "update"]),
        PathRule::new("sys/internal/ui/mounts/*", &["read"]),
        PathRule::new("auth/token/*", &["read", "update"]),
    ];
    vault.add_approle("role-1", "secret-1", rules, ttl);
    let s = Setup::with_config(&config(
        vault,
        PKI,
        "{ method = \"approle\", role_id = \"role-1\", secret_id_file = \"secret-id\" }",
    ));
    std::fs::write(s.path("secret-id"), "secret-1\n").unwrap();
    s.cacertd(&["root", "init"]).ok();
    s
}

/// The Vault client as a long-running daemon needs it: transient errors retried, a dead token
/// replaced by a fresh login, a policy denial reported without a login, and one renewal at a
/// time however many calls are under way.
#[test]
fn the_vault_client_retries_transient_errors_and_logs_in_again_only_for_a_dead_token() {
    let vault = TestVault::start();
    let s = approle_pki(&vault, Duration::from_secs(600));
    let count = |path: &str, status: u16| {
        vault
            .answers()
            .iter()
            .filter(|(_, p, s)| p == path && *s == status)
            .count()
    };
    let logins = || count("auth/approle/login", 200);

    // A rate limit on the login, Vault's own 500s on a read: each retried.
    vault.fail_next(429, 1);
    vault.fail_path("GET", "pki/cert/ca", 500, 2);
    s.cacertd(&["issue", "cluster1"]).ok();
    assert_eq!(count("auth/approle/login", 429), 1);
    assert_eq!(count("pki/cert/ca", 500), 2, "{:?}", vault.answers());
    assert_eq!(count("pki/root/sign-intermediate", 200), 1);
    // A write whose answer leaves open whether it was carried out is not sent again: a
    // second signature (or a second root, a second check-and-set write) would be a second
    // act, not a retry.
    let before = s.snapshot();
    vault.fail_path("POST", "pki/root/sign-intermediate", 502, 1);
    let run = s.cacertd(&["issue", "--force", "cluster1"]).fails_with(1);
    assert!(run.stdout.contains("502"), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(count("pki/root/sign-intermediate", 502), 1);
    assert_eq!(
        count("pki/root/sign-intermediate", 200),
        1,
        "not signed again"
    );
    assert_unchanged(&before, &s.snapshot());
    // More than the retries of a login: three attempts, then a clear failure.
    vault.fail_next(502, 10);
    let run = s.cacertd(&["issue", "--force", "cluster1"]).fails_with(1);
    assert!(run.stderr.contains("502"), "{}", run.stderr);
    assert_eq!(count("auth/approle/login", 502), 3);
    assert_unchanged(&before, &s.snapshot());
    vault.clear_faults();

    // The token dies under a running cacertd: one fresh login, and the run succeeds.
    let logins_before = logins();
    vault.revoke_tokens_after(1);
    s.cacertd(&["issue", "--force", "cluster1"]).ok();
    assert_eq!(
        logins() - logins_before,
        2,
        "the first login and one after the revocation"
    );
    assert!(count("auth/token/lookup-self", 403) >= 1);

    // A policy denial with a live token: reported, no second login.
    let logins_before = logins();
    let config = std::fs::read_to_string(s.path("cacertd.toml"))
        .unwrap()
        .replace(PKI, "store = \"vault-pki\"\nmount = \"pki-other\"");
    std::fs::write(s.path("cacertd.toml"), config).unwrap();
    let run = s.cacertd(&["issue", "--force", "cluster1"]).fails_with(1);
    // The mount's type is looked up first; the denial there names the mount.
    assert!(
        run.stderr.contains("Vault mount \"pki-other\"") && run.stderr.contains("no access to it"),
        "{}",
        run.stderr
    );
    assert_eq!(logins() - logins_before, 1, "a denial is not a dead token");

    // Sealed is no transient error: reported at once, not retried.
    vault.seal(true);
    let before = vault.answers().len();
    let run = s.cacertd(&["issue", "--force", "cluster1"]).fails_with(1);
    assert!(run.stderr.contains("sealed"), "{}", run.stderr);
    let sealed: Vec<_> = vault.answers()[before..].to_vec();
    assert_eq!(sealed.len(), 1, "{sealed:?}");
}

#[test]
fn one_renewal_at_a_time_however_many_calls_are_under_way() {
    let vault = TestVault::start();
    // A 3 s token is due for renewal after 2 s; every call takes 1.2 s, so the two signatures,
    // made concurrently after two reads, both find it due.
    let s = approle_pki(&vault, Duration::from_secs(3));
    vault.keep_tokens_alive(true);
    vault.set_delay(Some(Duration::from_millis(1200)));
    s.cacertd(&["issue"]).ok();
    assert!(
        vault.max_in_flight("pki/root/sign-intermediate") == 2,
        "the two signatures ran concurrently: {:?}",
        vault.answers()
    );
    let renewals = vault
        .answers()
        .iter()
        .filter(|(_, p, _)| p == "auth/token/renew-self")
        .count();
    assert!(renewals >= 1, "{:?}", vault.answers());
    assert_eq!(vault.max_in_flight("auth/token/renew-self"), 1);
}

/// The certificate of the last KV v2 version at `path` of mount `secret`.
fn last_root(vault: &TestVault, path: &str) -> String {
    vault
        .kv_versions("secret", path)
        .last()
        .and_then(|v| v["certificate"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no version at secret/{path}"))
}

/// A vault-kv rotation that was aborted, and one that was rolled back: the new root each left
/// in `<path>-next` is never used again, and the next rotation ends on a root of its own.
#[test]
fn a_vault_kv_rotation_aborted_or_rolled_back_never_reuses_its_new_root() {
    let vault = TestVault::start();
    let s = setup(&vault, KV, "root-token");
    s.cacertd(&["issue", "--init-root"]).ok();
    let first = last_root(&vault, "cacertd/root");

    // Aborted after its first step.
    s.cacertd(&[
        "rotate-root",
        "start",
        "--drain",
        "0s",
        "--stop-after-steps",
        "1",
    ])
    .fails_with(1);
    let aborted = last_root(&vault, "cacertd/root-next");
    assert_ne!(aborted, first);
    let run = s.cacertd(&["transition", "abort"]).ok();
    // Nothing was signed under it: its waiting key is destroyed, and abort says so.
    assert!(
        run.stdout
            .contains("destroyed vault-kv secret/cacertd/root-next"),
        "{}",
        run.stdout
    );
    assert!(vault.kv_versions("secret", "cacertd/root-next").is_empty());
    assert_eq!(
        last_root(&vault, "cacertd/root"),
        first,
        "abort swaps nothing"
    );

    // Rolled back from SwitchSigner, after the new root had signed: AddNewRoot's writes, the
    // folders confirmed applied, its gate, then SwitchSigner's first write.
    s.cacertd(&["rotate-root", "start", "--drain", "0s"]).ok();
    s.cacertd(&[
        "transition",
        "resume",
        "--approve",
        "--stop-after-steps",
        "2",
    ])
    .fails_with(1);
    let rolled_back = last_root(&vault, "cacertd/root-next");
    assert_ne!(rolled_back, aborted, "the aborted root was not reused");
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(
        status.contains("phase SwitchSigner") && status.contains("cluster1: written"),
        "{status}"
    );
    // Back to AddNewRoot's material, then to what the clusters had before this rotation
    // (cluster1 still carries the aborted rotation's root, which abort leaves in place).
    let before_rotation = std::fs::read_to_string(s.path("out/cluster1/root-cert.pem"))
        .unwrap()
        .replace(&rolled_back, "");
    s.through_folders(&["transition", "rollback", "--wait"])
        .ok();
    s.through_folders(&["transition", "rollback", "--wait"])
        .ok();
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(status.contains("rolled back"), "{status}");
    assert_eq!(last_root(&vault, "cacertd/root"), first, "nothing swapped");
    assert_eq!(
        std::fs::read_to_string(s.path("out/cluster1/root-cert.pem")).unwrap(),
        before_rotation
    );
    assert_eq!(
        std::fs::read_to_string(s.path("out/cluster2/root-cert.pem")).unwrap(),
        first,
        "cluster2 is back on the first root alone"
    );

    // The next rotation makes a root of its own and ends on it.
    s.through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
        .ok();
    let root = last_root(&vault, "cacertd/root");
    assert!(
        root != first && root != aborted && root != rolled_back,
        "a fresh root"
    );
    assert_eq!(vault.kv_versions("secret", "cacertd/root").len(), 2);
    for c in ["cluster1", "cluster2"] {
        assert_eq!(
            std::fs::read_to_string(s.path(&format!("out/{c}/root-cert.pem"))).unwrap(),
            root,
            "{c}"
        );
    }
    assert_issued_and_trusted(&s);
}

/// vault-pki with a named issuer: the swap at the end of a rotation renames the old issuer
/// aside, then gives its name to the new one. Interrupted between the two renames (the name
/// is then on neither issuer), `resume` finishes the swap: the name ends on the new issuer,
/// the old one is kept with its settings, nothing is renamed twice.
#[test]
fn a_vault_pki_swap_interrupted_between_its_renames_is_finished_by_resume() {
    let vault = TestVault::start();
    let s = setup(&vault, PKI, "root-token");
    s.cacertd(&["root", "init"]).ok();
    let id = vault.pki_issuer_ids("pki").remove(0);
    let old = vault.pki_issuers("pki").remove(0);
    vault.pki_name_issuer("pki", &id, "mesh-root");
    vault.pki_set_leaf_behavior("pki", 0, "truncate");
    let config = std::fs::read_to_string(s.path("cacertd.toml"))
        .unwrap()
        .replace(PKI, &format!("{PKI}\nissuer = \"mesh-root\""));
    std::fs::write(s.path("cacertd.toml"), config).unwrap();
    s.cacertd(&["issue"]).ok();

    // The second rename (mesh-root-next → mesh-root) fails, with a status no retry covers.
    vault.fail_path("POST", "pki/issuer/mesh-root-next", 400, 1);
    let run = s
        .through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
        .fails_with(1);
    assert!(run.stderr.contains("root swap"), "{}", run.stderr);
    let names = vault.pki_issuer_names("pki");
    assert!(
        !names.iter().any(|n| n == "mesh-root"),
        "interrupted between the renames: {names:?}"
    );
    assert!(names.iter().any(|n| n == "mesh-root-next"), "{names:?}");

    s.through_folders(&["transition", "resume", "--wait"]).ok();
    let names = vault.pki_issuer_names("pki");
    let issuers = vault.pki_issuers("pki");
    assert_eq!(issuers.len(), 2, "{names:?}");
    let at = |name: &str| names.iter().position(|n| n == name);
    let new = &issuers[at("mesh-root").expect("the name is on the new issuer")];
    assert_ne!(new, &old);
    let aside = names
        .iter()
        .position(|n| n.starts_with("mesh-root-replaced-"))
        .unwrap_or_else(|| panic!("{names:?}"));
    assert_eq!(issuers[aside], old);
    assert_eq!(vault.pki_leaf_behaviors("pki")[aside], "truncate");
    assert_eq!(
        &std::fs::read_to_string(s.path("out/cluster2/root-cert.pem")).unwrap(),
        new
    );
    assert_issued_and_trusted(&s);
}
