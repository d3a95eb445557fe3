//! cacertd against Kubernetes clusters over real HTTP: the test apiserver hosts three clusters
//! (two primaries, one remote) and the `cacertd` binary works on them through `kube`.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use cacertd_test_apiserver::{FakeCluster, FaultAction, Rule, TestApiServer, Value, json};
use common::kube::{CLUSTERS, setup, setup_with_tokens};
use common::{Setup, openssl, openssl_verify_cacerts};

fn decode(secret: &Value, key: &str) -> Vec<u8> {
    let b64 = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {secret}"));
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// Writes a cacerts Secret's four files to a folder, for openssl and `cacertd verify`.
fn export(s: &Setup, secret: &Value, dir: &str) -> std::path::PathBuf {
    let d = s.path(dir);
    std::fs::create_dir_all(&d).unwrap();
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        std::fs::write(d.join(f), decode(secret, f)).unwrap();
    }
    d
}

fn cacerts(c: &FakeCluster) -> Option<Value> {
    c.get("secrets", "istio-system", "cacerts")
}

#[test]
fn issue_to_two_primaries_and_a_remote_then_change_nothing() {
    let server = TestApiServer::start(&CLUSTERS);
    let s = setup(&server, "");
    let run = s.cacertd(&["issue", "--init-root"]).ok();
    assert!(
        run.stdout.contains("cluster1  issued") && run.stdout.contains("cluster2  issued"),
        "{}",
        run.stdout
    );
    assert!(
        cacerts(server.cluster("cluster3")).is_none(),
        "a remote gets no cacerts"
    );

    for name in ["cluster1", "cluster2"] {
        let secret = cacerts(server.cluster(name)).expect("cacerts written");
        assert_eq!(secret["type"], "Opaque");
        assert_eq!(
            secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "cacertd"
        );
        let serial = secret["metadata"]["annotations"]["cacertd.io/serial"]
            .as_str()
            .unwrap();
        assert_eq!(serial.len(), 32);
        let dir = export(&s, &secret, &format!("exported/{name}"));
        assert_eq!(
            openssl_verify_cacerts(&dir).ok().stdout.trim(),
            "ca-cert.pem: OK"
        );
        s.cacertd(&["verify", dir.to_str().unwrap()]).ok();
        let text = openssl(&dir, &["x509", "-in", "ca-cert.pem", "-noout", "-subject"])
            .ok()
            .stdout;
        assert!(text.contains(name), "{text}");
    }

    // Second run: nothing written, no new resourceVersion.
    let versions: Vec<Value> = ["cluster1", "cluster2"]
        .iter()
        .map(|n| cacerts(server.cluster(n)).unwrap()["metadata"]["resourceVersion"].clone())
        .collect();
    let writes: Vec<u64> = CLUSTERS
        .iter()
        .map(|n| server.cluster(n).writes())
        .collect();
    let run = s.cacertd(&["issue"]).ok();
    assert_eq!(run.stdout.matches("unchanged").count(), 2, "{}", run.stdout);
    for (i, n) in ["cluster1", "cluster2"].iter().enumerate() {
        assert_eq!(
            cacerts(server.cluster(n)).unwrap()["metadata"]["resourceVersion"],
            versions[i]
        );
    }
    assert_eq!(
        CLUSTERS
            .iter()
            .map(|n| server.cluster(n).writes())
            .collect::<Vec<_>>(),
        writes
    );

    let st = s.cacertd(&["status", "-o", "json"]).ok();
    let json: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(json["clusters"][0]["cacerts"]["state"], "valid");
    assert_eq!(json["clusters"][1]["cacerts"]["state"], "valid");
    assert_eq!(json["clusters"][2]["served_by"], "cluster1");
}

#[test]
fn a_concurrent_writer_causes_a_reread_not_a_lost_update() {
    let server = TestApiServer::start(&CLUSTERS);
    let s = setup(&server, "");
    s.cacertd(&["issue", "--init-root"]).ok();
    let c1 = server.cluster("cluster1");
    let before = cacerts(c1).unwrap();
    // Someone else annotates cacerts between cacertd's read and its replace (write 2 of
    // backup + replace).
    let mut theirs = before.clone();
    theirs["metadata"]["annotations"]["example.com/owner"] = json!("platform-team");
    c1.concurrent_update_before_write(2, theirs);

    let run = s.cacertd(&["-v", "issue", "--force", "cluster1"]).ok();
    assert!(run.stderr.contains("re-reading"), "{}", run.stderr);
    // The backup made for the write that lost the race stays, and is named.
    assert!(
        run.stderr.contains("secret istio-system/cacerts-backup-")
            && run.stderr.contains("is kept"),
        "{}",
        run.stderr
    );
    let after = cacerts(c1).unwrap();
    assert_ne!(
        decode(&after, "ca-cert.pem"),
        decode(&before, "ca-cert.pem")
    );
    assert_eq!(
        after["metadata"]["annotations"]["example.com/owner"], "platform-team",
        "their change survives"
    );
    let dir = export(&s, &after, "exported/c1");
    openssl_verify_cacerts(&dir).ok();
    // Every replaced version is recoverable: the original and the concurrently updated one.
    let backups: Vec<Value> = c1
        .list("secrets", Some("istio-system"))
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["cacertd.io/backup-of"] == "cacerts")
        .collect();
    assert_eq!(backups.len(), 2, "{backups:#?}");
    assert!(backups.iter().all(|b| b["data"] == before["data"]));
    // Both are named in cacerts, the one kept from the lost race too: [backups] sees them.
    let named = after["metadata"]["annotations"]["cacertd.io/backups"]
        .as_str()
        .unwrap()
        .to_string();
    for b in &backups {
        let name = b["metadata"]["name"].as_str().unwrap();
        assert!(named.contains(name), "{name} in {named}");
    }
}

#[test]
fn a_failing_or_hanging_cluster_does_not_hold_up_the_others() {
    let server = TestApiServer::start(&CLUSTERS);
    let s = setup(&server, "timeout = \"1s\"\nretries = 1");
    s.cacertd(&["root", "init"]).ok();

    let c2 = server.cluster("cluster2");
    c2.inject(FaultAction::Status(500), 1000, false);
    let run = s.cacertd(&["issue"]).fails_with(1);
    assert!(run.stdout.contains("cluster1  issued"), "{}", run.stdout);
    assert!(run.stdout.contains("cluster2  FAILED"), "{}", run.stdout);
    assert!(
        run.stdout.contains("injected fault (500)"),
        "{}",
        run.stdout
    );
    assert!(cacerts(c2).is_none(), "no partial Secret");

    c2.clear_faults();
    c2.inject(FaultAction::Delay(Duration::from_secs(30)), 1000, false);
    let started = Instant::now();
    let run = s.cacertd(&["issue", "--force"]).fails_with(1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(run.stdout.contains("cluster1  issued"), "{}", run.stdout);
    assert!(run.stdout.contains("cluster2  FAILED"), "{}", run.stdout);
    assert!(cacerts(c2).is_none());

    // Fixed: the next run converges.
    c2.clear_faults();
    let run = s.cacertd(&["issue"]).ok();
    assert!(run.stdout.contains("cluster2  issued"), "{}", run.stdout);
}

#[test]
fn transient_errors_and_dropped_connections_are_retried() {
    let server = TestApiServer::start(&CLUSTERS);
    let s = setup(&server, "");
    s.cacertd(&["root", "init"]).ok();
    let c1 = server.cluster("cluster1");
    c1.inject(FaultAction::Status(503), 2, false);
    c1.inject(FaultAction::Drop, 1, true);
    s.cacertd(&["issue", "cluster1"]).ok();
    assert!(cacerts(c1).is_some());
    let reqs = c1.requests();
    assert_eq!(reqs.iter().filter(|r| r.status == 503).count(), 2);
    assert_eq!(
        reqs.iter().filter(|r| r.status == 0).count(),
        1,
        "one dropped connection"
    );

    // A 4xx other than 409/429 is never retried.
    let c2 = server.cluster("cluster2");
    c2.inject(FaultAction::Status(400), 1, false);
    s.cacertd(&["issue", "cluster2"]).fails_with(1);
    assert_eq!(c2.requests().iter().filter(|r| r.status == 400).count(), 1);
    assert_eq!(c2.requests().len(), 1, "gave up after the 400");
}

#[test]
fn missing_rbac_is_named_precisely() {
    let server = TestApiServer::start(&CLUSTERS);
    for name in CLUSTERS {
        server.cluster(name).add_token(
            "limited",
            "system:serviceaccount:cacertd:cacertd",
            vec![
                Rule::new(&["get", "update"], &["secrets"])
                    .in_namespace("istio-system")
                    .named(&["cacerts"]),
            ],
        );
    }
    let s = setup_with_tokens(&server, "", |_| "limited".to_string());
    s.cacertd(&["root", "init"]).ok();
    let run = s.cacertd(&["issue"]).fails_with(1);
    assert!(
        run.stdout.contains(
            "User \"system:serviceaccount:cacertd:cacertd\" cannot get resource \"secrets\" in API group \"\" in the namespace \"istio-system\""
        ),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("istio-ca-secret"), "{}", run.stdout);
}

#[test]
fn existing_material_is_read_and_reported() {
    let server = TestApiServer::start(&CLUSTERS);
    let s = setup(&server, "");
    s.cacertd(&["root", "init"]).ok();
    let b64 = |p: &std::path::Path| {
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap())
    };

    // cluster1: plugged in with Istio's Makefile tooling (RSA-4096 root and intermediate).
    let d = s.path("make");
    std::fs::create_dir(&d).unwrap();
    let o = |args: &[&str]| openssl(&d, args).ok();
    o(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:4096",
        "-nodes",
        "-keyout",
        "root-key.pem",
        "-out",
        "root-cert.pem",
        "-days",
        "3650",
        "-subj",
        "/O=Istio/CN=Root CA",
        "-addext",
        "basicConstraints=critical,CA:true",
        "-addext",
        "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,keyCertSign",
    ]);
    o(&[
        "req",
        "-new",
        "-newkey",
        "rsa:4096",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.csr",
        "-subj",
        "/O=Istio/CN=Intermediate CA/L=cluster1",
    ]);
    std::fs::write(d.join("ext.cnf"), "basicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,keyCertSign\nsubjectAltName=DNS:istiod.istio-system.svc\n").unwrap();
    o(&[
        "x509",
        "-req",
        "-in",
        "ca.csr",
        "-CA",
        "root-cert.pem",
        "-CAkey",
        "root-key.pem",
        "-CAcreateserial",
        "-days",
        "730",
        "-extfile",
        "ext.cnf",
        "-out",
        "ca-cert.pem",
    ]);
    let chain = [
        std::fs::read(d.join("ca-cert.pem")).unwrap(),
        std::fs::read(d.join("root-cert.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(d.join("cert-chain.pem"), chain).unwrap();
    server.cluster("cluster1").put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "cacerts", "namespace": "istio-system"},
        "type": "Opaque",
        "data": {"ca-cert.pem": b64(&d.join("ca-cert.pem")), "ca-key.pem": b64(&d.join("ca-key.pem")),
                 "root-cert.pem": b64(&d.join("root-cert.pem")), "cert-chain.pem": b64(&d.join("cert-chain.pem"))},
    }));
    // cluster2: cert-manager's istio-csr style kubernetes.io/tls Secret.
    server.cluster("cluster2").put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "cacerts", "namespace": "istio-system"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(&d.join("ca-cert.pem")), "tls.key": b64(&d.join("ca-key.pem")), "ca.crt": b64(&d.join("root-cert.pem"))},
    }));

    let st = s.cacertd(&["status", "-o", "json"]).ok();
    let json: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let serial = openssl(&d, &["x509", "-in", "ca-cert.pem", "-noout", "-serial"])
        .ok()
        .stdout;
    let serial = serial.trim().trim_start_matches("serial=").to_lowercase();
    for i in [0, 1] {
        let c = &json["clusters"][i]["cacerts"];
        assert_eq!(c["state"], "foreign-trust", "{c}");
        assert_eq!(c["intermediate"]["serial"], serial.as_str());
        assert_eq!(c["intermediate"]["key_algorithm"], "rsa-4096");
    }
    // Neither is replaced without a transition.
    let run = s.cacertd(&["issue"]).fails_with(5);
    assert_eq!(run.stdout.matches("REFUSED").count(), 2, "{}", run.stdout);
}

#[test]
fn a_self_signed_cluster_is_reported_and_left_alone() {
    let server = TestApiServer::start(&CLUSTERS);
    let s = setup(&server, "");
    s.cacertd(&["root", "init"]).ok();
    let other = Setup::new();
    other.cacertd(&["issue", "--init-root"]).ok();
    let b64 = |rel: &str| base64::engine::general_purpose::STANDARD.encode(other.read(rel));
    let c1 = server.cluster("cluster1");
    c1.put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "istio-ca-secret", "namespace": "istio-system"},
        "type": "istio.io/ca-root",
        "data": {"ca-cert.pem": b64("state/root/root-cert.pem"), "ca-key.pem": b64("state/root/root-key.pem"),
                 "root-cert.pem": b64("state/root/root-cert.pem"), "cert-chain.pem": ""},
    }));
    for ns in ["default", "istio-system"] {
        c1.put(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio-ca-root-cert", "namespace": ns,
                     "labels": {"istio.io/config": "true"}},
            "data": {"root-cert.pem": String::from_utf8(other.read("state/root/root-cert.pem")).unwrap()},
        }));
    }
    // One a namespace tenant made (without istiod's label) is not istiod's: not counted.
    c1.namespace("tenant", &[]);
    c1.put(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio-ca-root-cert", "namespace": "tenant"},
        "data": {"root-cert.pem": "not a bundle"},
    }));
    let st = s.cacertd(&["status", "-o", "json"]).ok();
    let json: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let c = &json["clusters"][0]["cacerts"];
    assert_eq!(c["state"], "self-signed", "{c}");
    assert_eq!(c["published"]["namespaces"], 2);
    assert_eq!(c["published"]["with_root"], 0);
    let run = s.cacertd(&["issue", "cluster1"]).fails_with(5);
    assert!(run.stdout.contains("self-signed CA"), "{}", run.stdout);
    assert!(cacerts(c1).is_none());
}

/// istiod publishes its bundle in every namespace: a cluster of 1,201 namespaces is read 500
/// ConfigMaps at a time, never in one answer, and every namespace counts.
#[test]
fn published_bundles_are_read_a_page_at_a_time() {
    const NAMESPACES: usize = 1_201;
    let server = TestApiServer::start(&CLUSTERS);
    let s = setup(&server, "");
    s.cacertd(&["issue", "--init-root"]).ok();
    let root = String::from_utf8(s.read("state/root/root-cert.pem")).unwrap();
    let c1 = server.cluster("cluster1");
    for i in 0..NAMESPACES {
        let ns = format!("app-{i:04}");
        c1.namespace(&ns, &[]);
        c1.put(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio-ca-root-cert", "namespace": ns,
                     "labels": {"istio.io/config": "true"}},
            "data": {"root-cert.pem": root},
        }));
    }
    let before = c1.requests().len();
    let st = s.cacertd(&["status", "-o", "json", "cluster1"]).ok();
    let json: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let c = &json["clusters"][0]["cacerts"];
    assert_eq!(c["published"]["namespaces"], NAMESPACES, "{c}");
    assert_eq!(c["published"]["with_root"], NAMESPACES, "{c}");
    let pages: Vec<_> = c1.requests()[before..]
        .iter()
        .filter(|r| r.path.ends_with("/configmaps") && r.query.contains("istio-ca-root-cert"))
        .cloned()
        .collect();
    assert_eq!(pages.len(), 3, "{pages:#?}");
    assert!(
        pages.iter().all(|r| r.query.contains("limit=500")),
        "{pages:#?}"
    );

    // A continue token that expired (410 Gone) is answered as client-go's pager does: the
    // list is read again whole, and every namespace still counts.
    c1.inject_on_query(
        "GET",
        "/api/v1/configmaps",
        "continue=",
        FaultAction::Status(410),
        1,
    );
    let before = c1.requests().len();
    let st = s.cacertd(&["status", "-o", "json", "cluster1"]).ok();
    let json: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let c = &json["clusters"][0]["cacerts"];
    assert_eq!(c["published"]["namespaces"], NAMESPACES, "{c}");
    let lists: Vec<_> = c1.requests()[before..]
        .iter()
        .filter(|r| r.path.ends_with("/configmaps") && r.query.contains("istio-ca-root-cert"))
        .map(|r| (r.query.contains("limit="), r.status))
        .collect();
    assert_eq!(lists, [(true, 200), (true, 410), (false, 200)], "{lists:?}");
}

#[test]
fn clusters_are_reached_through_istios_remote_secrets() {
    // Remote secrets must reach their clusters over verified TLS.
    let server = TestApiServer::start_tls(&CLUSTERS);
    let s = setup(&server, "");
    // cluster2 and cluster3 are reached through the remote secrets istioctl left in cluster1.
    let config = std::fs::read_to_string(s.path("cacertd.toml"))
        .unwrap()
        .replace(
            "{ kind = \"kube\", kubeconfig = \"kube/cluster2.yaml\", context = \"cluster2\" }",
            "{ kind = \"kube\", remote_secret_from = \"cluster1\" }",
        )
        .replace(
            "{ kind = \"kube\", kubeconfig = \"kube/cluster3.yaml\" }",
            "{ kind = \"kube\", remote_secret_from = \"cluster1\" }",
        );
    std::fs::write(s.path("cacertd.toml"), config).unwrap();
    let c1 = server.cluster("cluster1");
    let kc = |name: &str| {
        let c = server.cluster(name);
        base64::engine::general_purpose::STANDARD.encode(c.kubeconfig(&c.admin_token()))
    };
    c1.put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "istio-remote-secret-cluster2", "namespace": "istio-system",
                     "labels": {"istio/multiCluster": "true"}},
        "data": {"cluster2": kc("cluster2")},
    }));
    let run = s.cacertd(&["issue", "--init-root"]).ok();
    assert!(run.stdout.contains("cluster2  issued"), "{}", run.stdout);
    assert!(cacerts(server.cluster("cluster2")).is_some());

    // cluster3's secret is missing: a clear error saying where it was looked for.
    let run = s.cacertd(&["status"]).ok();
    assert!(run.stdout.contains("served by cluster1"), "{}", run.stdout);
    let run = s
        .cacertd(&["restart", "cluster1", "--only", "workloads"])
        .fails_with(1);
    assert!(
        run.stderr.contains("istio-remote-secret-cluster3"),
        "{}",
        run.stderr
    );
    // A Secret that is merely labelled is not trusted to redirect cacertd...
    c1.put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "east-remote", "namespace": "istio-system",
                     "labels": {"istio/multiCluster": "true"}},
        "data": {"cluster3": kc("cluster3")},
    }));
    s.cacertd(&["restart", "cluster1", "--only", "workloads"])
        .fails_with(1);
    // ...one that istioctl's annotation names the cluster in is.
    let mut vouched = c1.get("secrets", "istio-system", "east-remote").unwrap();
    vouched["metadata"]["annotations"] = json!({"networking.istio.io/cluster": "cluster3"});
    c1.put(vouched);
    s.cacertd(&["restart", "cluster1", "--only", "workloads"])
        .ok();

    // A kubeconfig that would run a command inside cacertd is refused.
    let pwned = s.path("pwned");
    let evil = server.cluster("cluster2").kubeconfig("x").replace(
        "    token: x\n",
        &format!(
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n      args: [\"-c\", \"touch {}\"]\n",
            pwned.display()
        ),
    );
    let mut named = c1
        .get("secrets", "istio-system", "istio-remote-secret-cluster2")
        .unwrap();
    named["data"]["cluster2"] = json!(base64::engine::general_purpose::STANDARD.encode(evil));
    c1.put(named);
    // Reported in its row; status fails, as a cluster could not be read.
    let run = s.cacertd(&["status"]).fails_with(1);
    assert!(
        run.stdout.contains("exec credential plugin"),
        "{}",
        run.stdout
    );
    assert!(!pwned.exists(), "the exec plugin ran");
}

/// The intermediate key travels to a remote through the kubeconfig of its remote secret, which
/// anyone who can write Secrets in the source cluster could replace: it must reach the cluster
/// over verified TLS, through no proxy, and match what cacertd.toml pins (server, CA). A local
/// kubeconfig without TLS is refused unless [kubernetes] danger_insecure_transport says so.
#[test]
fn kubeconfigs_must_use_verified_tls_and_remote_secrets_match_their_pins() {
    let server = TestApiServer::start_tls(&CLUSTERS);
    let s = setup(&server, "");
    let remote_config = |extra: &str| {
        let config = std::fs::read_to_string(s.path("cacertd.toml")).unwrap();
        let kube2 =
            "{ kind = \"kube\", kubeconfig = \"kube/cluster2.yaml\", context = \"cluster2\" }";
        let start = config
            .find("{ kind = \"kube\", remote_secret_from")
            .unwrap_or(0);
        let config = if start > 0 {
            let end = start + config[start..].find('}').unwrap() + 1;
            format!("{}{}{}", &config[..start], kube2, &config[end..])
        } else {
            config
        };
        let pinned = format!("{{ kind = \"kube\", remote_secret_from = \"cluster1\"{extra} }}");
        std::fs::write(s.path("cacertd.toml"), config.replace(kube2, &pinned)).unwrap();
    };
    let c1 = server.cluster("cluster1");
    let good = server
        .cluster("cluster2")
        .kubeconfig(&server.cluster("cluster2").admin_token());
    let url = good
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_string();
    let ca_pem = base64::engine::general_purpose::STANDARD
        .decode(
            good.lines()
                .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
                .unwrap(),
        )
        .unwrap();
    let remote_secret = |kubeconfig: &str| {
        c1.put(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "istio-remote-secret-cluster2", "namespace": "istio-system"},
            "data": {"cluster2": base64::engine::general_purpose::STANDARD.encode(kubeconfig)},
        }));
    };
    s.cacertd(&["root", "init"]).ok();
    remote_config("");
    let refused = |why: &str| {
        let run = s.cacertd(&["issue"]).fails_with(1);
        let out = format!("{}{}", run.stdout, run.stderr);
        assert!(out.contains(why), "{why}: {out}");
        assert!(cacerts(server.cluster("cluster2")).is_none(), "{why}");
    };
    remote_secret(&good.replace("server: https://", "server: http://"));
    refused("not over https");
    // Credentials written into the URL are never shown.
    remote_secret(&good.replace("server: https://", "server: http://admin:hunter2@"));
    refused("not over https");
    let run = s.cacertd(&["status"]).fails_with(1);
    assert!(!format!("{}{}", run.stdout, run.stderr).contains("hunter2"));
    remote_secret(&good.replace(
        &format!("server: {url}\n"),
        &format!("server: {url}\n    proxy-url: http://127.0.0.1:9\n"),
    ));
    refused("proxy-url");
    // Malformed: where, never what (the parser's own message quotes the text).
    remote_secret("apiVersion: v1\nkind: Config\nclusters: token-hunter3\n");
    refused("not a valid kubeconfig: malformed YAML at line 3");
    let run = s.cacertd(&["status"]).fails_with(1);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(
        out.contains("malformed YAML") && !out.contains("hunter3"),
        "{out}"
    );

    // Pinned: the server and the CA must be the ones cacertd.toml names.
    remote_secret(&good);
    remote_config(", server = \"https://127.0.0.1:1\"");
    refused("not at https://127.0.0.1:1 as cacertd.toml pins it");
    // Another server's CA (each test apiserver makes its own).
    let elsewhere = TestApiServer::start_tls(&["x"]);
    let ca_of = |kubeconfig: &str| {
        let data = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
            .unwrap()
            .to_string();
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap()
    };
    let other_ca = ca_of(&elsewhere.cluster("x").kubeconfig("x"));
    assert_ne!(other_ca, ca_pem);
    std::fs::write(s.path("other-ca.pem"), &other_ca).unwrap();
    std::fs::write(s.path("cluster2-ca.pem"), &ca_pem).unwrap();
    remote_config(&format!(", server = \"{url}\", ca_file = \"other-ca.pem\""));
    refused("its CA is not the one cacertd.toml pins");
    remote_config(&format!(
        ", server = \"{url}\", ca_file = \"cluster2-ca.pem\""
    ));
    let run = s.cacertd(&["issue"]).ok();
    assert!(run.stdout.contains("cluster2  issued"), "{}", run.stdout);

    // A local kubeconfig over plain HTTP: refused unless the danger option is set.
    let plain = TestApiServer::start(&CLUSTERS);
    let p = setup(&plain, "");
    let config = std::fs::read_to_string(p.path("cacertd.toml")).unwrap();
    std::fs::write(
        p.path("cacertd.toml"),
        config.replace("danger_insecure_transport = true", ""),
    )
    .unwrap();
    let run = p.cacertd(&["issue", "--init-root"]).fails_with(1);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(
        out.contains("is not reached over TLS") && out.contains("danger_insecure_transport"),
        "{out}"
    );
    assert!(cacerts(plain.cluster("cluster1")).is_none());

    // A local kubeconfig over TLS that is not verified: refused alike.
    let unverified = TestApiServer::start_tls(&CLUSTERS);
    let u = setup(&unverified, "");
    let config = std::fs::read_to_string(u.path("cacertd.toml")).unwrap();
    std::fs::write(
        u.path("cacertd.toml"),
        config.replace("danger_insecure_transport = true", ""),
    )
    .unwrap();
    let kubeconfig = std::fs::read_to_string(u.path("kube/cluster1.yaml")).unwrap();
    let skipping: String = kubeconfig
        .lines()
        .map(|l| match l.find("certificate-authority-data:") {
            Some(at) => format!("{}insecure-skip-tls-verify: true", &l[..at]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(skipping, kubeconfig);
    std::fs::write(u.path("kube/cluster1.yaml"), skipping).unwrap();
    let run = u.cacertd(&["issue", "--init-root"]).fails_with(1);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(
        out.contains("insecure-skip-tls-verify") && out.contains("danger_insecure_transport"),
        "{out}"
    );
    assert!(cacerts(unverified.cluster("cluster1")).is_none());
}

#[test]
fn a_write_whose_answer_is_lost_is_recognised_as_done() {
    let server = TestApiServer::start(&CLUSTERS);
    let s = setup(&server, "");
    s.cacertd(&["issue", "--init-root"]).ok();
    let c1 = server.cluster("cluster1");
    // The replace (the third write, after its dry run and the backup) is stored, but its
    // answer is a 504.
    c1.inject_after(2, FaultAction::StatusAfterCommit(504), 1, true);
    let run = s.cacertd(&["issue", "--force", "cluster1"]).ok();
    assert!(run.stdout.contains("cluster1  issued"), "{}", run.stdout);
    assert!(
        run.stdout.contains("confirmed by re-reading"),
        "{}",
        run.stdout
    );
    let secret = cacerts(c1).unwrap();
    let serial = secret["metadata"]["annotations"]["cacertd.io/serial"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(run.stdout.contains(&serial), "{}", run.stdout);
    let backups = c1
        .list("secrets", Some("istio-system"))
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["cacertd.io/backup-of"] == "cacerts")
        .count();
    assert_eq!(backups, 1);
}

/// A replacement that lands unseen (its answer lost) and whose retry is then refused ends in an
/// error, but the backup made for it stays: what it holds is no longer in place. Only a
/// replacement that left `cacerts` as it was gives its backup up.
#[test]
fn a_refusal_after_a_write_that_landed_unseen_keeps_the_backup() {
    let server = TestApiServer::start(&CLUSTERS);
    let s = setup(&server, "");
    s.cacertd(&["issue", "--init-root"]).ok();
    let c1 = server.cluster("cluster1");
    let before = cacerts(c1).unwrap();
    let path = "/api/v1/namespaces/istio-system/secrets/cacerts";
    c1.inject_on("PUT", path, FaultAction::StatusAfterCommit(504), 1);
    c1.inject_on("PUT", path, FaultAction::Status(403), 1);
    let run = s.cacertd(&["issue", "--force", "cluster1"]);
    let backups: Vec<Value> = c1
        .list("secrets", Some("istio-system"))
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["cacertd.io/backup-of"] == "cacerts")
        .collect();
    assert_ne!(cacerts(c1).unwrap()["data"], before["data"], "it landed");
    assert_eq!(backups.len(), 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(backups[0]["data"], before["data"]);

    // Refused with cacerts untouched: the backup made for it goes.
    let before = cacerts(c1).unwrap();
    c1.inject_on("PUT", path, FaultAction::Status(403), 1);
    let run = s.cacertd(&["issue", "--force", "cluster1"]).fails_with(1);
    assert!(
        run.stdout.contains("injected fault (403)"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("is kept"), "{}", run.stdout);
    assert_eq!(cacerts(c1).unwrap(), before);
    let count = c1
        .list("secrets", Some("istio-system"))
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["cacertd.io/backup-of"] == "cacerts")
        .count();
    assert_eq!(count, 1);
}

#[test]
fn kubectls_last_applied_copy_of_the_old_key_does_not_survive() {
    let server = TestApiServer::start(&CLUSTERS);
    let s = setup(&server, "");
    s.cacertd(&["issue", "--init-root"]).ok();
    let c1 = server.cluster("cluster1");
    // As if cacerts.yaml had been `kubectl apply`-ed: the whole object, old key included.
    let mut applied = cacerts(c1).unwrap();
    let copy = applied.to_string();
    applied["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
        json!(copy);
    c1.put(applied);
    s.cacertd(&["issue", "--force", "cluster1"]).ok();
    for secret in c1.list("secrets", Some("istio-system")) {
        let annotations = &secret["metadata"]["annotations"];
        assert!(
            annotations
                .get("kubectl.kubernetes.io/last-applied-configuration")
                .is_none(),
            "{}",
            secret["metadata"]["name"]
        );
    }
}

#[test]
fn the_write_path_retries_429s_replans_conflicts_three_times_and_leaves_cert_managers_secret() {
    let server = TestApiServer::start(&CLUSTERS);
    let s = setup(&server, "");
    s.cacertd(&["root", "init"]).ok();
    let (c1, c2) = (server.cluster("cluster1"), server.cluster("cluster2"));

    // Throttled twice: the write is retried, not given up.
    c1.inject(FaultAction::Status(429), 2, true);
    // Every write to cluster2 conflicts: re-read and re-planned, three attempts in all.
    c2.inject(FaultAction::Status(409), 1000, true);
    let run = s.cacertd(&["issue"]).fails_with(1);
    assert!(run.stdout.contains("cluster1  issued"), "{}", run.stdout);
    assert!(cacerts(c1).is_some());
    assert_eq!(c1.requests().iter().filter(|r| r.status == 429).count(), 2);
    assert!(run.stdout.contains("cluster2  FAILED"), "{}", run.stdout);
    let c2_requests = c2.requests();
    let conflicts: Vec<_> = c2_requests.iter().filter(|r| r.status == 409).collect();
    assert_eq!(conflicts.len(), 3, "{c2_requests:#?}");
    // Each attempt read cacerts again before writing.
    let mut after = None;
    for w in &conflicts {
        assert!(
            c2_requests.iter().any(|r| r.method == "GET"
                && r.path.ends_with("/secrets/cacerts")
                && after.is_none_or(|a| r.seq > a)
                && r.seq < w.seq),
            "a write without a fresh read before it: {c2_requests:#?}"
        );
        after = Some(w.seq);
    }
    assert!(cacerts(c2).is_none());
    c2.clear_faults();

    // cert-manager's kubernetes.io/tls Secret is never written over, even when asked to
    // replace the trust bundle: nothing is written to the cluster, not even a backup.
    let other = Setup::new();
    other.cacertd(&["issue", "--init-root"]).ok();
    let b64 = |rel: &str| base64::engine::general_purpose::STANDARD.encode(other.read(rel));
    let managed = c2.put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "cacerts", "namespace": "istio-system"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64("out/cluster2/ca-cert.pem"), "tls.key": b64("out/cluster2/ca-key.pem"),
                 "ca.crt": b64("out/cluster2/root-cert.pem")},
    }));
    let writes = c2.writes();
    let run = s
        .cacertd(&["issue", "cluster2", "--danger-replace-trust-bundle"])
        .fails_with(1);
    assert!(
        run.stdout.contains("cluster2  FAILED") && run.stdout.contains("cert-manager"),
        "{}",
        run.stdout
    );
    assert_eq!(c2.writes(), writes, "nothing written");
    assert_eq!(cacerts(c2).unwrap(), managed);
}

/// A response cacertd cannot parse (a proxy's page, a truncated object) is reported, but its
/// body, which may hold a key, is never logged: kube's client logs such bodies at WARN.
#[test]
fn unparseable_answers_are_never_logged() {
    let server = TestApiServer::start(&CLUSTERS);
    let s = setup(&server, "");
    s.cacertd(&["issue", "--init-root"]).ok();
    for verbosity in [None, Some("-vv")] {
        let c1 = server.cluster("cluster1");
        c1.inject(
            FaultAction::Garbage("{\"data\": {\"ca-key.pem\": \"a2V5LWh1bnRlcjQ=\"".into()),
            10,
            false,
        );
        let args: Vec<&str> = verbosity.into_iter().chain(["status"]).collect();
        let run = s.cacertd(&args).fails_with(1);
        c1.clear_faults();
        let out = format!("{}{}", run.stdout, run.stderr);
        assert!(out.contains("cluster1"), "{out}");
        assert!(!out.contains("a2V5LWh1bnRlcjQ"), "{verbosity:?}: {out}");
    }
}

/// A kubeconfig found by the default loading rules (KUBECONFIG, with or without a context)
/// that does not parse is reported by position, never by its text.
#[test]
fn a_default_kubeconfig_that_does_not_parse_is_never_quoted() {
    let server = TestApiServer::start(&CLUSTERS);
    let s = setup(&server, "");
    let config = String::from_utf8(s.read("cacertd.toml")).unwrap();
    std::fs::write(
        s.path("bad-kubeconfig.yaml"),
        "apiVersion: v1\nkind: Config\nusers: token-hunter5\n",
    )
    .unwrap();
    let kubeconfig = s.path("bad-kubeconfig.yaml");
    for target in [
        r#"{ kind = "kube" }"#,
        r#"{ kind = "kube", context = "cluster1" }"#,
    ] {
        let edited = config.replace(
            r#"{ kind = "kube", kubeconfig = "kube/cluster1.yaml" }"#,
            target,
        );
        assert_ne!(edited, config);
        std::fs::write(s.path("cacertd.toml"), edited).unwrap();
        let run = s
            .cacertd_env(
                &["status", "cluster1"],
                &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
            )
            .fails_with(1);
        let out = format!("{}{}", run.stdout, run.stderr);
        assert!(
            out.contains("the default kubeconfig") && out.contains("malformed YAML at line 3"),
            "{target}: {out}"
        );
        assert!(!out.contains("hunter5"), "{target}: {out}");
    }
    // One that cannot be read is an error too, not a reason to fall back to a pod's account.
    let bare = config.replace(
        r#"{ kind = "kube", kubeconfig = "kube/cluster1.yaml" }"#,
        r#"{ kind = "kube" }"#,
    );
    std::fs::write(s.path("cacertd.toml"), bare).unwrap();
    let run = s
        .cacertd_env(
            &["status", "cluster1"],
            &[("KUBECONFIG", s.path("kube").to_str().unwrap())],
        )
        .fails_with(1);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(
        out.contains("failed to read kubeconfig") && !out.contains("not in a pod"),
        "{out}"
    );
}

/// A cluster that cannot be reached is reported with the reason: nothing listening, a name
/// that does not resolve, a certificate from a CA not trusted, no answer in time.
#[test]
fn connection_failures_say_why() {
    let server = TestApiServer::start_tls(&CLUSTERS);
    let s = setup(&server, "timeout = \"1s\"\nretries = 0");
    let good = std::fs::read_to_string(s.path("kube/cluster1.yaml")).unwrap();
    let url = good
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_string();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Accepts, then never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            held.push(conn);
        }
    });
    let elsewhere = TestApiServer::start_tls(&["x"]);
    let other_ca = elsewhere
        .cluster("x")
        .kubeconfig("x")
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .unwrap()
        .to_string();
    let ca = good
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .unwrap()
        .to_string();
    let cases = [
        (
            good.replace(&url, &format!("https://127.0.0.1:{closed}")),
            "connection refused",
        ),
        (
            good.replace(&url, "https://cacertd-test.invalid:6443"),
            "does not resolve (DNS)",
        ),
        (
            good.replace(&ca, &other_ca),
            "TLS handshake failed: the server's certificate is not signed by the CA",
        ),
        (
            good.replace(&url, &format!("https://127.0.0.1:{silent_port}")),
            "timed out",
        ),
    ];
    for (kubeconfig, why) in cases {
        std::fs::write(s.path("kube/cluster1.yaml"), kubeconfig).unwrap();
        let run = s.cacertd(&["status"]).fails_with(1);
        let out = format!("{}{}", run.stdout, run.stderr);
        assert!(out.contains(why), "{why}: {out}");
    }
}

#[test]
fn an_intermediate_that_workload_certificates_would_outlive_is_refused_naming_who_asks() {
    let server = TestApiServer::start(&CLUSTERS);
    let s = setup(&server, "");
    let (c1, c3) = (server.cluster("cluster1"), server.cluster("cluster3"));
    let istiod = |max: Option<&str>| {
        let env = match max {
            Some(v) => json!([{"name": "MAX_WORKLOAD_CERT_TTL", "value": v}]),
            None => json!([]),
        };
        c1.put(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "istiod", "namespace": "istio-system", "labels": {"app": "istiod"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "istiod"}},
                     "template": {"metadata": {"labels": {"app": "istiod"}},
                                  "spec": {"containers": [{"name": "discovery",
                                                           "image": "docker.io/istio/pilot:1.28.7",
                                                           "env": env}]}}},
        }));
    };
    // A pod of the remote asks for 125-day certificates, and istiod grants up to 4000 h: one
    // signed just before a renewal (one-year intermediates renewed with a third of their life
    // left, about 122 days) would outlive its intermediate.
    istiod(Some("4000h"));
    c3.put(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "legacy", "namespace": "app",
                     "annotations": {"sidecar.istio.io/status": "{}"}},
        "spec": {"containers": [{"name": "istio-proxy", "image": "istio/proxyv2",
                                 "env": [{"name": "SECRET_TTL", "value": "3000h"}]}]},
        "status": {"phase": "Running"},
    }));
    let run = s.cacertd(&["issue", "--init-root"]);
    assert_eq!(run.code, 4, "{}{}", run.stdout, run.stderr);
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(
        text.contains("cluster3: pod app/legacy asks for certificates of 125d (SECRET_TTL)")
            && text.contains("istio/istio#59768"),
        "{text}"
    );
    assert!(cacerts(c1).is_none(), "nothing written for cluster1");
    assert!(cacerts(server.cluster("cluster2")).is_some());

    // With istiod's own maximum (90 days) it refuses that request, so no certificate outlives
    // the intermediate.
    istiod(None);
    let run = s.cacertd(&["issue"]).ok();
    assert!(run.stdout.contains("cluster1  issued"), "{}", run.stdout);
}
