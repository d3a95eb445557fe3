//! `cacertd serve` as a library, driven by an injected clock: renewal exactly when due, repair
//! of tampered material, per-cluster backoff, metrics scraped over HTTP, the audit log, the
//! leader lock — and no key material in anything it serves or logs.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use cacertd::clock::{Clock, FixedClock};
use cacertd::config::Config;
use cacertd::daemon::Daemon;
use cacertd::issuance::Outcome;
use common::{ACCEPTANCE_CONFIG, Setup};
use time::OffsetDateTime;

fn t0() -> OffsetDateTime {
    OffsetDateTime::now_utc().replace_nanosecond(0).unwrap()
}

fn daemon(s: &Setup, clock: &Arc<FixedClock>) -> Arc<Daemon> {
    let config = Config::load(&s.path("cacertd.toml")).unwrap();
    Daemon::new(config, clock.clone())
}

/// Serves the daemon's endpoints on an ephemeral port; returns the address.
async fn serve(d: &Arc<Daemon>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = d.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A plain HTTP GET; returns (status line, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    })
    .await
    .unwrap()
}

/// The value of the metric line with this name and these label pairs.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| l.starts_with(name)).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        labels
            .iter()
            .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}

fn serial(s: &Setup, cluster: &str) -> String {
    let pem = s.read(&format!("out/{cluster}/ca-cert.pem"));
    let out = common::openssl(
        &s.path(&format!("out/{cluster}")),
        &["x509", "-in", "ca-cert.pem", "-noout", "-serial"],
    )
    .ok()
    .stdout;
    assert!(!pem.is_empty());
    out.trim().trim_start_matches("serial=").to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_exactly_when_due_and_metrics_follow() {
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    let clock = Arc::new(FixedClock::new(t0()));
    let d = daemon(&s, &clock);
    assert!(d.try_lead().await);
    let addr = serve(&d).await;

    let first = d.tick().await;
    assert_eq!(
        first
            .iter()
            .filter(|r| r.outcome == Outcome::Issued)
            .count(),
        2
    );
    let renew_at = first[0].renew_at.unwrap();
    let not_after = first[0].not_after.unwrap();
    let serial1 = serial(&s, "cluster1");

    let (status, text) = get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let expiry = metric(
        &text,
        "cacertd_certificate_expiration_timestamp_seconds",
        &[
            ("cluster", "cluster1"),
            ("kind", "intermediate"),
            ("serial", &serial1),
        ],
    );
    assert_eq!(expiry, Some(not_after.unix_timestamp() as f64), "{text}");
    assert_eq!(
        metric(
            &text,
            "cacertd_certificate_renewal_timestamp_seconds",
            &[("cluster", "cluster1")]
        ),
        Some(renew_at.unix_timestamp() as f64)
    );
    assert_eq!(
        metric(&text, "cacertd_cluster_ready", &[("cluster", "cluster1")]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "cacertd_reconcile_total",
            &[("cluster", "cluster1"), ("result", "issued")]
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &text,
            "cacertd_certificate_expiration_timestamp_seconds",
            &[("kind", "root")]
        )
        .is_some()
    );
    assert_eq!(metric(&text, "cacertd_leader", &[]), Some(1.0));
    assert!(!text.contains("PRIVATE KEY"));

    // One second before the renewal point: nothing is renewed.
    clock.set(renew_at - time::Duration::seconds(1));
    let before = d.tick().await;
    assert!(
        before.iter().all(|r| r.outcome == Outcome::Kept),
        "{before:?}"
    );
    assert_eq!(serial(&s, "cluster1"), serial1);
    // At the renewal point: renewed, and the metrics move to the new serial.
    clock.set(renew_at);
    let due = d.tick().await;
    assert!(due.iter().all(|r| r.outcome == Outcome::Issued), "{due:?}");
    let serial2 = serial(&s, "cluster1");
    assert_ne!(serial1, serial2);
    let (_, text) = get(addr, "/metrics").await;
    assert!(
        metric(
            &text,
            "cacertd_certificate_expiration_timestamp_seconds",
            &[("serial", &serial2)]
        )
        .is_some()
    );
    assert!(
        metric(
            &text,
            "cacertd_certificate_expiration_timestamp_seconds",
            &[("serial", &serial1)]
        )
        .is_none(),
        "old series dropped"
    );
    assert_eq!(
        metric(
            &text,
            "cacertd_reconcile_total",
            &[("cluster", "cluster1"), ("result", "issued")]
        ),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_tomorrow_is_renewed_on_the_next_tick() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let serial1 = serial(&s, "cluster2");
    let st: serde_json::Value =
        serde_json::from_str(&s.cacertd(&["status", "-o", "json"]).ok().stdout).unwrap();
    let not_after = OffsetDateTime::parse(
        st["clusters"][1]["cacerts"]["intermediate"]["not_after"]
            .as_str()
            .unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let clock = Arc::new(FixedClock::new(not_after - time::Duration::days(1)));
    let d = daemon(&s, &clock);
    assert!(d.try_lead().await);
    let reports = d.tick().await;
    assert!(
        reports.iter().all(|r| r.outcome == Outcome::Issued),
        "{reports:?}"
    );
    assert_ne!(serial(&s, "cluster2"), serial1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_repaired_and_audited_and_nothing_leaks() {
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    let clock = Arc::new(FixedClock::new(t0()));
    let d = daemon(&s, &clock);
    assert!(d.try_lead().await);
    d.tick().await;
    let key2 = s.read("out/cluster2/ca-key.pem");
    std::fs::write(s.path("out/cluster1/ca-key.pem"), &key2).unwrap();
    // The next scheduled look (after the interval plus jitter).
    clock.advance(time::Duration::minutes(12));
    let reports = d.tick().await;
    let c1 = reports.iter().find(|r| r.cluster == "cluster1").unwrap();
    assert_eq!(c1.outcome, Outcome::Issued);
    assert!(c1.reason.as_deref().unwrap().contains("invalid"), "{c1:?}");
    let at = clock
        .now()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    s.cacertd(&["verify", "out/cluster1", "--at", &at]).ok();

    let audit = std::fs::read_to_string(s.path("state/audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["cluster"] == "cluster1"
        && l["outcome"] == "issued"
        && l["reason"].as_str().unwrap().contains("invalid")));
    assert!(
        lines
            .iter()
            .all(|l| l["actor"].as_str().unwrap().starts_with("cacertd@"))
    );

    let addr = serve(&d).await;
    let (status, body) = get(addr, "/status").await;
    assert!(status.contains("200"), "{status} {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["clusters"][0]["cacerts"]["state"], "valid");
    // No private key anywhere we serve or log: neither PEM nor its base64 body.
    let key_body: String = String::from_utf8(key2)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let (_, metrics) = get(addr, "/metrics").await;
    for text in [&body, &audit, &metrics] {
        assert!(!text.contains("PRIVATE KEY"));
        assert!(!text.contains(&key_body[..40]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cluster_backs_off_without_holding_up_the_others() {
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    // cluster2's target is a file where a folder should be: every write fails.
    std::fs::create_dir_all(s.path("out")).unwrap();
    std::fs::write(s.path("out/cluster2"), "not a directory").unwrap();
    let config = std::fs::read_to_string(s.path("cacertd.toml")).unwrap()
        + "\n[daemon]\nbackoff_max = \"60s\"\n";
    std::fs::write(s.path("cacertd.toml"), config).unwrap();
    let start = t0();
    let clock = Arc::new(FixedClock::new(start));
    let d = daemon(&s, &clock);
    assert!(d.try_lead().await);
    // Tick every second for six minutes and note when cluster2 is tried.
    let mut tried = Vec::new();
    for second in 0..360 {
        clock.set(start + time::Duration::seconds(second));
        let reports = d.tick().await;
        if reports.iter().any(|r| r.cluster == "cluster2") {
            tried.push(second);
        }
    }
    // Backoff starts at 10 s and doubles per failure, capped by backoff_max (60 s).
    let waits: Vec<i64> = tried.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(waits, [10, 20, 40, 60, 60, 60, 60], "tried at {tried:?}");
    let attempts = tried.len();
    common::openssl_verify_cacerts(&s.path("out/cluster1")).ok();
    let text = d.metrics().encode();
    assert_eq!(
        metric(
            &text,
            "cacertd_reconcile_total",
            &[("cluster", "cluster2"), ("result", "failure")]
        ),
        Some(attempts as f64)
    );
    assert_eq!(
        metric(&text, "cacertd_cluster_ready", &[("cluster", "cluster2")]),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "cacertd_cluster_ready", &[("cluster", "cluster1")]),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lock_holder_acts_and_a_standby_takes_over() {
    let s = Setup::with_config(ACCEPTANCE_CONFIG);
    s.cacertd(&["root", "init"]).ok();
    let clock = Arc::new(FixedClock::new(t0()));
    let (a, b) = (daemon(&s, &clock), daemon(&s, &clock));
    assert!(a.try_lead().await);
    assert!(!b.try_lead().await, "one leader at a time");
    assert!(b.tick().await.is_empty(), "a standby writes nothing");
    assert_eq!(a.tick().await.len(), 2);
    let addr = serve(&b).await;
    assert_eq!(get(addr, "/readyz").await.1.trim(), "standby");
    let (_, text) = get(addr, "/metrics").await;
    assert_eq!(metric(&text, "cacertd_leader", &[]), Some(0.0));
    a.step_down().await;
    assert!(!a.is_leader());
    assert!(
        a.tick().await.is_empty(),
        "a stepped-down leader writes nothing"
    );
    assert!(
        b.try_lead().await,
        "the standby takes over once the leader lets go"
    );
    // The new leader looks at every cluster at once and finds them as the old one left them.
    let reports = b.tick().await;
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert!(
        reports.iter().all(|r| r.outcome == Outcome::Kept),
        "{reports:?}"
    );
    assert!(get(addr, "/readyz").await.0.contains("200"));
    // The former leader no longer speaks for the clusters: no per-cluster series are left to
    // fire alerts, or to keep them quiet, on what it last saw.
    let old = a.metrics().encode();
    for series in [
        "cacertd_certificate_expiration_timestamp_seconds{",
        "cacertd_cluster_ready{",
        "cacertd_last_success_timestamp_seconds{",
    ] {
        assert!(!old.contains(series), "{series}:\n{old}");
    }
    assert_eq!(metric(&old, "cacertd_leader", &[]), Some(0.0));
    // Leading again, it looks at every cluster at once (their next look was not due yet) and
    // exports them afresh.
    b.step_down().await;
    assert!(a.try_lead().await);
    assert_eq!(a.tick().await.len(), 2);
    let text = a.metrics().encode();
    assert_eq!(
        metric(&text, "cacertd_cluster_ready", &[("cluster", "cluster2")]),
        Some(1.0)
    );
}

/// `serve` as it runs: it answers, can dump no core, bounds the connections it holds, stops on
/// SIGTERM with each issuance logged once, and frees the lock.
#[test]
fn serve_stops_cleanly_on_sigterm_and_releases_the_lock() {
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    // Port 0: the daemon binds a free port itself and logs the address it bound.
    let config = std::fs::read_to_string(s.path("cacertd.toml")).unwrap()
        + "\n[daemon]\nlisten = \"127.0.0.1:0\"\n";
    std::fs::write(s.path("cacertd.toml"), config).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cacertd"))
        .current_dir(s.dir.path())
        .args(["-c", "cacertd.toml", "-v", "serve"])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let addr = loop {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("serve logs the address it listens on");
        if let Some(addr) = listen_address(&line) {
            break addr;
        }
    };
    // Wait for the first pass to write both clusters.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !(s.path("out/cluster2/cacerts.yaml").exists()) {
        assert!(std::time::Instant::now() < deadline, "no first pass");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(s.path("out/cluster1/ca-cert.pem").exists());
    let healthz = || {
        let mut health = std::net::TcpStream::connect(addr).unwrap();
        write!(
            health,
            "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        health.read_to_string(&mut out).unwrap();
        out
    };
    let out = healthz();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("ok\n"),
        "{out}"
    );
    // The daemon holds keys in memory: it can dump no core.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    // At most 64 connections at once: 64 held open without a request leave no room for one
    // more, which is closed at once; each of them is closed when no headers come within 10 s,
    // and the endpoints answer again.
    let idle: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let closed = |mut c: &std::net::TcpStream, within: u64| {
        c.set_read_timeout(Some(std::time::Duration::from_secs(within)))
            .unwrap();
        let mut byte = [0u8; 1];
        matches!(c.read(&mut byte), Ok(0))
    };
    let extra = std::net::TcpStream::connect(addr).unwrap();
    assert!(closed(&extra, 20), "one more than 64 is closed");
    assert!(
        idle.iter().all(|c| closed(c, 30)),
        "silent connections are closed"
    );
    drop(idle);
    let out = healthz();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = common::wait_within(&mut child, std::time::Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    reader.join().unwrap();
    // Its log is its report: each issuance said once.
    let logged: Vec<String> = lines.try_iter().collect();
    for c in ["cluster1", "cluster2"] {
        let said = logged
            .iter()
            .filter(|l| l.contains("issued intermediate") && l.contains(&format!("cluster={c}")))
            .count();
        assert_eq!(said, 1, "{c}: {logged:#?}");
    }
    // The lock is free again: a CLI run that needs it succeeds.
    s.cacertd(&["issue", "--force"]).ok();
}

/// The address in serve's "serving …" log line (`listen=127.0.0.1:PORT`), colours or not.
fn listen_address(line: &str) -> Option<std::net::SocketAddr> {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An ANSI escape: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let rest = &plain[plain.find("listen=")? + "listen=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Every `cacertd_*` series the alerts and dashboard query is one the daemon exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_query_metrics_that_exist() {
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    // One failing cluster, so that failure and error series exist too.
    std::fs::create_dir_all(s.path("out")).unwrap();
    std::fs::write(s.path("out/cluster2"), "not a directory").unwrap();
    let clock = Arc::new(FixedClock::new(t0()));
    let d = daemon(&s, &clock);
    assert!(d.try_lead().await);
    d.tick().await;
    // And a daemon with no root yet, for the root-store error series.
    let empty = Setup::new();
    let d2 = daemon(&empty, &clock);
    assert!(d2.try_lead().await);
    d2.tick().await;
    // And a transition under way, for its series.
    let record = cacertd::transition::Record::new(
        cacertd::transition::TransitionKind::Migrate,
        ["cluster1".to_string()],
        cacertd::transition::Options {
            drain_seconds: 0,
            gate_timeout_seconds: 60,
            skip_workload_restarts: false,
            wait_for_renewal: false,
            approve_each_phase: false,
            exclude_namespaces: Vec::new(),
            max_parallel: 1,
            renewal_wait_seconds: None,
            list_propagation_seconds: None,
            emergency: false,
            lists_only: Vec::new(),
            directories: Default::default(),
        },
    );
    d2.metrics().transition(Some(&record), t0());
    // And a cluster serving revocation lists (when they expire comes from its assessment).
    d2.metrics()
        .revocation_lists_expire("cluster1", Some(time::OffsetDateTime::UNIX_EPOCH));
    let exported = d.metrics().encode() + &d2.metrics().encode();
    let exported_names: std::collections::BTreeSet<&str> = exported
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring");
    let mut queried = std::collections::BTreeSet::new();
    for file in ["prometheusrule.yaml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("cacertd_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            queried.insert(name);
        }
    }
    assert!(queried.len() >= 6, "{queried:?}");
    for name in &queried {
        assert!(
            exported_names.contains(name.as_str()),
            "{name} is queried but not exported:\n{exported}"
        );
    }
    // The dashboard is valid JSON.
    let _: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_target_folder_is_reconciled_without_waiting_for_the_interval() {
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    let clock = Arc::new(FixedClock::new(t0()));
    let d = daemon(&s, &clock);
    assert!(d.try_lead().await);
    assert_eq!(d.tick().await.len(), 2);
    // Nothing changed, the interval has not passed: nothing to do.
    d.notice_dir_changes().await;
    assert!(d.tick().await.is_empty());
    std::fs::write(
        s.path("out/cluster1/ca-key.pem"),
        s.read("out/cluster2/ca-key.pem"),
    )
    .unwrap();
    d.notice_dir_changes().await;
    let reports = d.tick().await;
    assert_eq!(reports.len(), 1, "only the changed cluster: {reports:?}");
    assert_eq!(reports[0].cluster, "cluster1");
    assert_eq!(reports[0].outcome, Outcome::Issued);
}

/// With the root store sealed, `serve` touches no cluster, says so on /readyz and in
/// `cacertd_root_source_errors_total{reason="sealed"}`, and retries with the same backoff as a
/// failing cluster — then issues once Vault is unsealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_root_store_touches_no_cluster_and_backs_off() {
    use cacertd_test_apiserver::TestApiServer;
    use cacertd_test_apiserver::vault::TestVault;
    // The Vault client needs the process's one crypto provider, as `main` installs it.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let vault = TestVault::start();
    let server = TestApiServer::start(&common::kube::CLUSTERS);
    let s = common::kube::setup(&server, "");
    let config = std::fs::read_to_string(s.path("cacertd.toml"))
        .unwrap()
        .replace(
            "policies_dir = \"policies\"\n",
            &format!(
                "policies_dir = \"policies\"\n\n[root]\nstore = \"vault-kv\"\nmount = \"secret\"\n\
             path = \"cacertd/root\"\n\n[vault]\naddress = \"{}\"\ntimeout = \"2s\"\n\
             auth = {{ method = \"token\", token_file = \"vault-token\" }}\n",
                vault.url()
            ),
        );
    std::fs::write(s.path("cacertd.toml"), config).unwrap();
    std::fs::write(s.path("vault-token"), "root-token").unwrap();
    s.cacertd(&["root", "init"]).ok();
    vault.seal(true);

    let start = t0();
    let clock = Arc::new(FixedClock::new(start));
    let d = daemon(&s, &clock);
    assert!(d.try_lead().await);
    let addr = serve(&d).await;
    let sealed = |text: &str| {
        metric(
            text,
            "cacertd_root_source_errors_total",
            &[("store", "vault-kv"), ("reason", "sealed")],
        )
    };
    // The root is asked for at 0 s, then after 10, 20 and 40 s more.
    let mut asked = Vec::new();
    for second in 0..=70 {
        clock.set(start + time::Duration::seconds(second));
        let before = vault.requests().len();
        assert!(d.tick().await.is_empty(), "nothing reconciled while sealed");
        if vault.requests().len() > before {
            asked.push(second);
        }
    }
    assert_eq!(asked, [0, 10, 30, 70]);
    let (status, body) = get(addr, "/readyz").await;
    assert!(status.contains("503"), "{status} {body}");
    assert_eq!(body.trim(), "root store not reachable yet");
    let (_, text) = get(addr, "/metrics").await;
    assert_eq!(sealed(&text), Some(4.0), "{text}");
    for c in server.clusters() {
        assert!(c.requests().is_empty(), "{}: {:?}", c.name, c.requests());
    }

    // Unsealed: the next attempt (80 s later) issues both primaries.
    vault.seal(false);
    clock.set(start + time::Duration::seconds(149));
    assert!(d.tick().await.is_empty(), "still backing off");
    clock.set(start + time::Duration::seconds(150));
    let reports = d.tick().await;
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert!(
        reports.iter().all(|r| r.outcome == Outcome::Issued),
        "{reports:?}"
    );
    assert!(get(addr, "/readyz").await.0.contains("200"));
    assert_eq!(sealed(&get(addr, "/metrics").await.1), Some(4.0));
}

/// A change seen while a pass is under way (the watch marks the cluster due) may have come
/// after the pass read that cluster: the cluster is looked at again at once, not after the
/// interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_seen_during_a_pass_is_looked_at_again_at_once() {
    use cacertd_test_apiserver::{FaultAction, TestApiServer};
    let server = TestApiServer::start(&common::kube::CLUSTERS);
    let s = common::kube::setup(&server, "");
    s.cacertd(&["root", "init"]).ok();
    let clock = Arc::new(FixedClock::new(t0()));
    let d = daemon(&s, &clock);
    assert!(d.try_lead().await);
    // cluster1's first request is held, so the pass is surely under way when the mark comes.
    let c1 = server.cluster("cluster1");
    c1.inject(
        FaultAction::Delay(std::time::Duration::from_secs(1)),
        1,
        false,
    );
    let mark = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while c1.arrivals() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the pass never reached cluster1"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        d.mark_due("cluster1").await;
    };
    let (reports, ()) = tokio::join!(d.tick(), mark);
    assert_eq!(reports.len(), 2, "{reports:?}");
    // Same instant, long before the interval: only the marked cluster is looked at again.
    let again = d.tick().await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].cluster, "cluster1");
    assert_eq!(again[0].outcome, Outcome::Kept);
    assert!(d.tick().await.is_empty(), "one look answers the mark");
}

/// `/status` reads the root store and every cluster: however many requests come at once, one
/// read serves them all, and its answer is served (with its `Age`) until it is 15 s old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_read_once_for_many_requests_and_again_once_it_is_old() {
    let server = cacertd_test_apiserver::TestApiServer::start(&common::kube::CLUSTERS);
    let s = common::kube::setup(&server, "");
    s.cacertd(&["issue", "--init-root"]).ok();
    let clock = Arc::new(FixedClock::new(t0()));
    let d = daemon(&s, &clock);
    let addr = serve(&d).await;
    let c1 = server.cluster("cluster1");
    let cacerts_reads = || {
        c1.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/secrets/cacerts"))
            .count()
    };
    let before = cacerts_reads();
    let answers = futures::future::join_all((0..20).map(|_| get(addr, "/status"))).await;
    assert!(answers.iter().all(|(status, _)| status.contains("200")));
    assert!(answers.iter().all(|(_, body)| body == &answers[0].1));
    assert_eq!(cacerts_reads() - before, 1, "one read for twenty requests");

    // Within its age the answer stands, even though cluster1 changed meanwhile.
    c1.delete("secrets", "istio-system", "cacerts");
    clock.advance(time::Duration::seconds(14));
    assert_eq!(get(addr, "/status").await.1, answers[0].1);
    assert_eq!(cacerts_reads() - before, 1);
    clock.advance(time::Duration::seconds(2));
    let (_, body) = get(addr, "/status").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let row = json["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cluster1")
        .unwrap();
    assert_eq!(row["cacerts"]["state"], "missing", "{row}");
    assert_eq!(cacerts_reads() - before, 2);
}

/// A root nobody configured in a cluster's bundle is exported per cluster, for the alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_nobody_configured_is_exported_for_the_alert() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let elsewhere = Setup::new();
    elsewhere.cacertd(&["root", "init"]).ok();
    let mut bundle = s.read("out/cluster2/root-cert.pem");
    bundle.extend_from_slice(&elsewhere.read("state/root/root-cert.pem"));
    std::fs::write(s.path("out/cluster2/root-cert.pem"), bundle).unwrap();
    let clock = Arc::new(FixedClock::new(t0()));
    let d = daemon(&s, &clock);
    assert!(d.try_lead().await);
    d.tick().await;
    let text = d.metrics().encode();
    let unknown = |c: &str| metric(&text, "cacertd_cluster_unknown_roots", &[("cluster", c)]);
    assert_eq!(unknown("cluster2"), Some(1.0), "{text}");
    assert_eq!(unknown("cluster1"), Some(0.0), "{text}");
}

/// One Vault session for the daemon's life: however many passes and `/status` reads, one
/// AppRole login; `/status` does not fetch the root secret (its key) again while its version
/// is the same; and the token is revoked when the daemon stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_vault_session_for_the_daemons_life() {
    use cacertd_test_apiserver::vault::{PathRule, TestVault};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let vault = TestVault::start();
    let rules = vec![
        PathRule::new("secret/*", &["create", "read", "update"]),
        PathRule::new("sys/internal/ui/mounts/*", &["read"]),
        PathRule::new("auth/token/*", &["read", "update"]),
    ];
    vault.add_approle(
        "role-1",
        "secret-1",
        rules,
        std::time::Duration::from_secs(600),
    );
    let s = Setup::with_config(&common::vault_config(
        &vault.url(),
        "2s",
        "store = \"vault-kv\"\nmount = \"secret\"\npath = \"cacertd/root\"",
        "{ method = \"approle\", role_id = \"role-1\", secret_id_file = \"secret-id\" }",
    ));
    std::fs::write(s.path("secret-id"), "secret-1\n").unwrap();
    s.cacertd(&["root", "init"]).ok();
    let count = |path: &str| vault.requests().iter().filter(|(_, p)| p == path).count();
    let logins = count("auth/approle/login");

    let start = t0();
    let clock = Arc::new(FixedClock::new(start));
    let d = daemon(&s, &clock);
    assert!(d.try_lead().await);
    let addr = serve(&d).await;
    for day in 0..3 {
        clock.set(start + time::Duration::days(day));
        assert_eq!(d.tick().await.len(), 2, "both primaries looked at");
    }
    let root_reads = count("secret/data/cacertd/root");
    for n in 1..=3 {
        clock.set(start + time::Duration::days(3) + time::Duration::seconds(20 * n));
        let (status, body) = get(addr, "/status").await;
        assert!(status.contains("200"), "{status} {body}");
        assert!(body.contains("\"cluster1\""), "{body}");
    }
    assert_eq!(
        count("secret/data/cacertd/root"),
        root_reads,
        "no key fetched for /status"
    );
    assert_eq!(
        count("auth/approle/login") - logins,
        1,
        "{:?}",
        vault.requests()
    );

    d.close_root_source().await;
    assert_eq!(count("auth/token/revoke-self"), 1);
}

/// A mesh CA below the company's anchor: the root series is the anchor's, and the mesh CA
/// and the corporate CA between them have series of their own, which the
/// CacertdSigningChainExpiringSoon alert watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_certificate_of_the_signing_chain_is_exported() {
    let s = Setup::new();
    common::CompanyPki::usual().import_into(&s).ok();
    let clock = Arc::new(FixedClock::new(t0()));
    let d = daemon(&s, &clock);
    assert!(d.try_lead().await);
    let addr = serve(&d).await;
    assert_eq!(d.tick().await.len(), 2);
    let (_, text) = get(addr, "/metrics").await;
    let not_after = |file: &str| {
        let run = common::openssl(
            s.path("").as_path(),
            &[
                "x509", "-in", file, "-noout", "-enddate", "-dateopt", "iso_8601",
            ],
        )
        .ok();
        let date = run
            .stdout
            .trim()
            .trim_start_matches("notAfter=")
            .to_string();
        OffsetDateTime::parse(
            &date.replace(' ', "T"),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or_else(|e| panic!("{date}: {e}"))
        .unix_timestamp() as f64
    };
    let series = |kind: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("cacertd_certificate_expiration_timestamp_seconds{")
                    && l.contains(&format!("kind=\"{kind}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(series("root"), [not_after("anchor.pem")], "{text}");
    assert_eq!(series("mesh-ca"), [not_after("mesh.pem")], "{text}");
    assert_eq!(series("chain"), [not_after("corp0.pem")], "{text}");
}

/// `/status` is served from the last pass: a cluster the daemon looked at and left unchanged is
/// not read again for it. One that changes since (a watch marks it) is read afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_served_from_the_last_pass() {
    use cacertd_test_apiserver::TestApiServer;
    let server = TestApiServer::start(&common::kube::CLUSTERS);
    let s = common::kube::setup(&server, "");
    s.cacertd(&["issue", "--init-root"]).ok();
    let start = t0();
    let clock = Arc::new(FixedClock::new(start));
    let d = daemon(&s, &clock);
    assert!(d.try_lead().await);
    let addr = serve(&d).await;
    let reports = d.tick().await;
    assert!(
        reports.iter().all(|r| r.outcome == Outcome::Kept),
        "{reports:?}"
    );
    let reads = |c: &str| {
        server
            .cluster(c)
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/secrets/cacerts"))
            .count()
    };
    let before = (reads("cluster1"), reads("cluster2"));
    for n in 1..=3 {
        clock.set(start + time::Duration::seconds(20 * n));
        let (status, body) = get(addr, "/status").await;
        assert!(status.contains("200"), "{status} {body}");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        let state = |i: usize| report["clusters"][i]["cacerts"]["state"].clone();
        assert_eq!(
            (state(0), state(1)),
            ("valid".into(), "valid".into()),
            "{body}"
        );
    }
    assert_eq!(
        (reads("cluster1"), reads("cluster2")),
        before,
        "no cluster read for /status"
    );

    // A change to cluster1: /status reads it again, and only it.
    d.mark_due("cluster1").await;
    clock.set(start + time::Duration::seconds(100));
    let (status, _) = get(addr, "/status").await;
    assert!(status.contains("200"));
    assert_eq!(
        (reads("cluster1"), reads("cluster2")),
        (before.0 + 1, before.1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_lists_are_served_a_due_renewal_runs_as_a_transition_of_its_own() {
    use cacertd::transition::record_store::RecordStore;
    let s = Setup::with_config(&format!(
        "{ACCEPTANCE_CONFIG}\n[transition]\nlist_propagation = \"0s\"\n"
    ));
    s.cacertd(&["root", "init"]).ok();
    s.cacertd(&["issue"]).ok();
    let run = s.through_folders(&["revoke", "cluster1", "--reason", "key-compromise"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(common::drive_folders(&s, false).starts_with("nothing"));
    let lists = String::from_utf8(s.read("out/cluster2/ca-crl.pem")).unwrap();

    let clock = Arc::new(FixedClock::new(t0()));
    let d = daemon(&s, &clock);
    assert!(d.try_lead().await);
    let first = d.tick().await;
    assert!(
        first.iter().all(|r| r.outcome == Outcome::Kept),
        "{first:?}"
    );
    let renew_at = first.iter().filter_map(|r| r.renew_at).max().unwrap();

    // Both are due: each pass refuses the single write, and the leader renews one cluster at
    // a time, as a transition of its own that holds the clusters until it is over.
    clock.set(renew_at);
    let config = Config::load(&s.path("cacertd.toml")).unwrap();
    let store = RecordStore::open(&config).await.unwrap();
    renew_one_at_a_time(&s, &d, &store, &clock).await;
    let after = String::from_utf8(s.read("out/cluster1/ca-crl.pem")).unwrap();
    assert_eq!(
        after.matches("BEGIN X509 CRL").count(),
        lists.matches("BEGIN X509 CRL").count() + 2,
        "both successors' lists"
    );
    assert_eq!(s.read("out/cluster2/ca-crl.pem"), after.as_bytes());
    // Renewed: the next pass (a day on, when both are looked at again) finds nothing to do.
    clock.advance(time::Duration::days(1));
    let next = d.tick().await;
    assert_eq!(next.len(), 2);
    assert!(next.iter().all(|r| r.outcome == Outcome::Kept), "{next:?}");

    // At the next renewal the first intermediates (the revoked one too) have lapsed: their
    // lists are left out, and the renewals go through as before.
    clock.set(next.iter().filter_map(|r| r.renew_at).max().unwrap());
    renew_one_at_a_time(&s, &d, &store, &clock).await;
    let after = String::from_utf8(s.read("out/cluster1/ca-crl.pem")).unwrap();
    assert_eq!(
        after.matches("BEGIN X509 CRL").count(),
        5,
        "two intermediates in use, their predecessors, the mesh CA: {after}"
    );
    clock.advance(time::Duration::days(1));
    let next = d.tick().await;
    assert_eq!(next.len(), 2);
    assert!(next.iter().all(|r| r.outcome == Outcome::Kept), "{next:?}");
}

/// Both primaries are due: the passes renew one at a time, each as a transition the leader
/// drives to its end.
async fn renew_one_at_a_time(
    s: &Setup,
    d: &Daemon,
    store: &cacertd::transition::record_store::RecordStore,
    clock: &FixedClock,
) {
    use cacertd::transition::TransitionKind;
    let serials = [serial(s, "cluster1"), serial(s, "cluster2")];
    for (i, cluster) in ["cluster1", "cluster2"].into_iter().enumerate() {
        // A cluster whose renewal waits is looked at again a minute later.
        clock.advance(time::Duration::minutes(i as i64));
        let due = d.tick().await;
        let report = due.iter().find(|r| r.cluster == cluster).unwrap();
        assert_eq!(report.outcome, Outcome::Refused, "{report:?}");
        assert!(report.renew_by_transition);
        assert_eq!(
            serial(s, cluster),
            serials[i],
            "nothing written by the pass"
        );
        let record = store.load().await.unwrap().unwrap();
        assert_eq!(record.kind, TransitionKind::Renew);
        assert_eq!(record.revocation.as_ref().unwrap().cluster, cluster);
        assert!(d.tick().await.is_empty(), "the clusters are left to it");
        drive_to_the_end(d, store, clock).await;
        assert_ne!(serial(s, cluster), serials[i]);
    }
}

/// Lets the leader drive the transition under way to its end, confirming each step's
/// folders applied as an operator would (`transition resume --approve`).
async fn drive_to_the_end(
    d: &Daemon,
    store: &cacertd::transition::record_store::RecordStore,
    clock: &FixedClock,
) {
    use cacertd::transition::{Step, next_step};
    for _ in 0..30 {
        d.drive_transition().await;
        let mut record = store.load().await.unwrap().unwrap();
        if record.is_over() {
            return;
        }
        if let Step::AwaitApplied { .. } = next_step(&record, clock.now()) {
            record.confirm_applied();
            store.save(&record).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    }
    panic!("the transition does not finish");
}
