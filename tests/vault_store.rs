//! The Vault root stores against the test Vault (tests/apiserver/src/vault.rs), for what a
//! real Vault cannot be made to do on demand; everything else is checked against OpenBao in
//! tests/openbao.rs. Here: two root inits held between their existence check and their write,
//! a Vault that hangs or nothing listening, rate limits and 5xx answers (retried, except for a
//! write whose outcome is unknown), a sealed Vault asked exactly once, one token renewal at a
//! time under concurrent calls, and a vault-pki root swap interrupted between its two renames.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use cacertd_test_apiserver::vault::{PathRule, TestVault};
use common::{Setup, assert_issued_and_trusted, assert_unchanged};

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

/// Two root inits that both find no root, then both write: Vault's check-and-set refuses the
/// second write, so exactly one root is kept and the loser says a root is already held. Needs
/// a Vault that holds each write until both runs have sent theirs.
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

/// A Vault that does not answer within the timeout, and an address where nothing listens:
/// each named as unreachable, with the cause, and no cluster touched; once Vault answers
/// again, the next run converges. Needs a Vault that hangs.
#[test]
fn an_unreachable_vault_is_explained_and_touches_no_cluster() {
    let vault = TestVault::start();
    let s = setup(&vault, KV, "root-token");
    s.cacertd(&["issue", "--init-root"]).ok();
    std::fs::remove_dir_all(s.path("out/cluster2")).unwrap();

    let before = s.snapshot();
    vault.set_delay(Some(Duration::from_secs(5)));
    let run = s.cacertd(&["issue"]).fails_with(1);
    assert!(
        run.stderr.contains("unreachable") && run.stderr.contains("timed out"),
        "{}",
        run.stderr
    );
    assert_unchanged(&before, &s.snapshot());
    vault.set_delay(None);
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

    // Fixed: the next run converges.
    s.cacertd(&["issue"]).ok();
    assert!(s.path("out/cluster2/ca-cert.pem").exists());
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

/// Transient errors are retried: a rate-limited login, Vault's own 500s on a read. A write
/// whose answer leaves open whether it was carried out is not sent again; a login failing past
/// its retries, and a sealed Vault (no transient error), are reported. Needs injected 429,
/// 500 and 502 answers, and the exact count of requests a sealed Vault received.
#[test]
fn the_vault_client_retries_transient_errors_but_no_write_of_unknown_outcome() {
    let vault = TestVault::start();
    let s = approle_pki(&vault, Duration::from_secs(600));
    let count = |path: &str, status: u16| {
        vault
            .answers()
            .iter()
            .filter(|(_, p, s)| p == path && *s == status)
            .count()
    };

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

    // Sealed is no transient error: reported at once, not retried.
    vault.seal(true);
    let before = vault.answers().len();
    let run = s.cacertd(&["issue", "--force", "cluster1"]).fails_with(1);
    assert!(run.stderr.contains("sealed"), "{}", run.stderr);
    let sealed: Vec<_> = vault.answers()[before..].to_vec();
    assert_eq!(sealed.len(), 1, "{sealed:?}");
}

/// A token due for renewal while several calls are under way is renewed once, not once per
/// call. Needs a Vault whose every answer is slowed down and whose requests in flight are
/// counted.
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

/// vault-pki with a named issuer: the swap at the end of a rotation renames the old issuer
/// aside, then gives its name to the new one. Interrupted between the two renames (the name
/// is then on neither issuer), `resume` finishes the swap: the name ends on the new issuer,
/// the old one is kept with its settings, nothing is renamed twice. Needs a Vault that fails
/// the second rename.
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
