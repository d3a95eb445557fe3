//! A migration of two self-signed Kubernetes primaries (and a remote) onto the common root,
//! against the test apiserver. A stand-in for istiod publishes each primary's bundle to the
//! `istio-ca-root-cert` ConfigMaps, as istiod does; while it lags in one cluster, the gate
//! waits, then fails naming that cluster and namespace; once it catches up, `resume` finishes.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use cacertd_test_apiserver::{FakeCluster, TestApiServer, Value, json};
use common::Setup;
use common::kube::{CLUSTERS, setup};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_default())
        .unwrap()
}

fn workload(c: &FakeCluster, ns: &str, name: &str, labels: Value) {
    c.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "example/app:1"}]}}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                   "availableReplicas": 1},
    }));
}

/// A Deployment whose pods carry an injected sidecar (`istio-proxy`), taking the bundles
/// istiod pushes when `pushed_bundles` (PROXY_CONFIG_XDS_AGENT=true).
fn injected_workload(c: &FakeCluster, ns: &str, name: &str, pushed_bundles: bool) {
    // Certificates of two seconds: a renewal, which a transition without restarts must wait
    // for in its drain, comes about a second after issuance.
    let env = match pushed_bundles {
        true => json!([{"name": "PROXY_CONFIG_XDS_AGENT", "value": "true"},
                       {"name": "SECRET_TTL", "value": "2s"}]),
        false => json!([{"name": "SECRET_TTL", "value": "2s"}]),
    };
    c.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name},
                                           "annotations": {"sidecar.istio.io/status": "{}"}},
                              "spec": {"containers": [
                                  {"name": "app", "image": "example/app:1"},
                                  {"name": "istio-proxy", "image": "istio/proxyv2", "env": env}]}}},
        "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
                   "availableReplicas": 2},
    }));
}

/// A pod with an injected sidecar that no controller owns: no rollout restarts it.
fn bare_sidecar_pod(c: &FakeCluster, ns: &str, name: &str) -> Value {
    c.put(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
                     "annotations": {"sidecar.istio.io/status": "{}"}},
        "spec": {"containers": [{"name": "app", "image": "example/debug:1"},
                                {"name": "istio-proxy", "image": "istio/proxyv2"}]},
        "status": {"phase": "Running"},
    }))
}

fn config_map(c: &FakeCluster, ns: &str, bundle: &[u8]) {
    named_config_map(c, ns, "istio-ca-root-cert", bundle);
}

/// The bundle istiod of `c` publishes: cacerts' root-cert.pem, or its self-signed certificate.
fn bundle_of(c: &FakeCluster) -> Vec<u8> {
    match c.get("secrets", "istio-system", "cacerts") {
        Some(s) => unb64(&s["data"]["root-cert.pem"]),
        None => unb64(
            &c.get("secrets", "istio-system", "istio-ca-secret").unwrap()["data"]["ca-cert.pem"],
        ),
    }
}

/// The `name=value` environment of a primary's istiod Deployment.
fn istiod_env(c: &FakeCluster, name: &str) -> Option<String> {
    let d = c.get("deployments", "istio-system", "istiod")?;
    d["spec"]["template"]["spec"]["containers"]
        .as_array()?
        .iter()
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

/// Publishes each primary's bundle where its istiod is configured to, unless paused: into the
/// ConfigMaps it labelled (`istio.io/config=true`) of its `PILOT_CA_CERT_CONFIGMAP` name, or
/// into the ClusterTrustBundle with `ENABLE_CLUSTER_TRUST_BUNDLE_API`, in the primary and the
/// remotes it serves. Like istiod, it never touches a ConfigMap it did not create. With a
/// `ca-crl.pem` in cacerts, it publishes that too, as `istio-ca-crl` beside each bundle
/// ConfigMap.
fn stand_in_istiod(server: Arc<TestApiServer>, paused: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        for (primary, clusters) in [
            ("cluster1", &["cluster1", "cluster3"][..]),
            ("cluster2", &["cluster2"][..]),
        ] {
            if primary == "cluster2" && paused.load(Ordering::SeqCst) {
                continue;
            }
            let p = server.cluster(primary);
            let bundle = bundle_of(p);
            let trust_bundle =
                istiod_env(p, "ENABLE_CLUSTER_TRUST_BUNDLE_API").as_deref() == Some("true");
            let name = istiod_env(p, "PILOT_CA_CERT_CONFIGMAP")
                .unwrap_or_else(|| "istio-ca-root-cert".to_string());
            let lists = p
                .get("secrets", "istio-system", "cacerts")
                .map(|s| unb64(&s["data"]["ca-crl.pem"]))
                .filter(|l| !l.is_empty());
            for cluster in clusters {
                let c = server.cluster(cluster);
                if let Some(lists) = &lists {
                    publish_lists(c, &name, lists);
                }
                if trust_bundle {
                    cluster_trust_bundle(c, &bundle);
                    continue;
                }
                for cm in c.list("configmaps", None) {
                    if cm["metadata"]["name"] == name.as_str()
                        && cm["metadata"]["labels"]["istio.io/config"] == "true"
                        && cm["data"]["root-cert.pem"].as_str().map(str::as_bytes)
                            != Some(&bundle[..])
                    {
                        let ns = cm["metadata"]["namespace"].as_str().unwrap();
                        named_config_map(c, ns, &name, &bundle);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `istio-ca-crl` holding `lists` in every namespace with istiod's bundle ConfigMap `bundle`.
fn publish_lists(c: &FakeCluster, bundle: &str, lists: &[u8]) {
    for cm in c.list("configmaps", None) {
        if cm["metadata"]["name"] != bundle || cm["metadata"]["labels"]["istio.io/config"] != "true"
        {
            continue;
        }
        let ns = cm["metadata"]["namespace"].as_str().unwrap();
        let current = c.get("configmaps", ns, "istio-ca-crl");
        if current
            .is_some_and(|l| l["data"]["ca-crl.pem"].as_str().map(str::as_bytes) == Some(lists))
        {
            continue;
        }
        c.put(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio-ca-crl", "namespace": ns,
                         "labels": {"istio.io/config": "true"}},
            "data": {"ca-crl.pem": String::from_utf8(lists.to_vec()).unwrap()},
        }));
    }
}

/// istiod's ClusterTrustBundle, holding `bundle`.
fn cluster_trust_bundle(c: &FakeCluster, bundle: &[u8]) {
    let current = c.get("clustertrustbundles", "", "istio.io:istiod-ca:root-cert");
    if current
        .is_some_and(|ctb| ctb["spec"]["trustBundle"].as_str().map(str::as_bytes) == Some(bundle))
    {
        return;
    }
    c.put(json!({
        "apiVersion": "certificates.k8s.io/v1beta1", "kind": "ClusterTrustBundle",
        "metadata": {"name": "istio.io:istiod-ca:root-cert"},
        "spec": {"signerName": "istio.io/istiod-ca",
                 "trustBundle": String::from_utf8(bundle.to_vec()).unwrap()},
    }));
}

/// A bundle ConfigMap as istiod creates it (labelled), under `name`.
fn named_config_map(c: &FakeCluster, ns: &str, name: &str, bundle: &[u8]) {
    c.put(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": {"istio.io/config": "true"}},
        "data": {"root-cert.pem": String::from_utf8(bundle.to_vec()).unwrap()},
    }));
}

/// Each primary runs istiod with its own self-signed CA (different roots); every cluster has
/// an injected namespace `app` with a Deployment `web`. Returns the `istio-ca-secret`s.
fn self_signed_mesh(server: &TestApiServer) -> Vec<Value> {
    let mut secrets = Vec::new();
    for name in ["cluster1", "cluster2"] {
        let other = Setup::new();
        other.cacertd(&["root", "init"]).ok();
        let cert = other.read("state/root/root-cert.pem");
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "istio-ca-secret", "namespace": "istio-system"},
            "type": "istio.io/ca-root",
            "data": {"ca-cert.pem": b64(&cert), "ca-key.pem": b64(&other.read("state/root/root-key.pem")),
                     "root-cert.pem": b64(&cert), "cert-chain.pem": ""},
        });
        let c = server.cluster(name);
        c.put(secret);
        secrets.push(c.get("secrets", "istio-system", "istio-ca-secret").unwrap());
        workload(c, "istio-system", "istiod", json!({"app": "istiod"}));
        config_map(c, "istio-system", &cert);
    }
    for name in CLUSTERS {
        let c = server.cluster(name);
        c.namespace("app", &[("istio-injection", "enabled")]);
        injected_workload(c, "app", "web", false);
        config_map(
            c,
            "app",
            &bundle_of(server.cluster(if name == "cluster2" {
                "cluster2"
            } else {
                "cluster1"
            })),
        );
    }
    secrets
}

/// The three clusters with a self-signed mesh (`self_signed_mesh`, whose `istio-ca-secret`s
/// are returned), `[transition] gate_timeout`, and the common root made.
fn self_signed_setup(gate_timeout: &str) -> (Arc<TestApiServer>, Setup, Vec<Value>) {
    let server = Arc::new(TestApiServer::start(&CLUSTERS));
    let s = setup(&server, "");
    append_config(
        &s,
        &format!("[transition]\ngate_timeout = \"{gate_timeout}\""),
    );
    s.cacertd(&["root", "init"]).ok();
    let secrets = self_signed_mesh(&server);
    (server, s, secrets)
}

/// The stand-in istiod, running until `stop`; it skips cluster2 while `paused`.
struct Istiod {
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Istiod {
    fn start(server: &Arc<TestApiServer>, paused: bool) -> Self {
        let paused = Arc::new(AtomicBool::new(paused));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (server, paused, stop) = (server.clone(), paused.clone(), stop.clone());
            std::thread::spawn(move || stand_in_istiod(server, paused, stop))
        };
        Istiod {
            paused,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn append_config(s: &Setup, extra: &str) {
    let path = s.path("cacertd.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(path, format!("{config}\n{extra}\n")).unwrap();
}

/// The three clusters and a management cluster holding the transition record (`[daemon]
/// lease`), reached with the service account of the shipped management RBAC (with
/// `shipped_rbac`) or an admin token; the common root made.
fn with_management(shipped_rbac: bool) -> (Arc<TestApiServer>, Setup, Vec<&'static str>) {
    let mut names = CLUSTERS.to_vec();
    names.push("mgmt");
    let server = Arc::new(TestApiServer::start(&names));
    let s = setup(&server, "");
    let mgmt = server.cluster("mgmt");
    mgmt.namespace("cacertd", &[]);
    let token = match shipped_rbac {
        true => {
            common::kube::grant_management_rbac(mgmt, "cacertd");
            "cacertd".to_string()
        }
        false => mgmt.admin_token(),
    };
    std::fs::write(s.path("kube/mgmt.yaml"), mgmt.kubeconfig(&token)).unwrap();
    append_config(
        &s,
        "[daemon]\nlease = { kubeconfig = \"kube/mgmt.yaml\", namespace = \"cacertd\" }\n\
         [transition]\ngate_timeout = \"30s\"",
    );
    s.cacertd(&["root", "init"]).ok();
    (server, s, names)
}

#[test]
fn two_self_signed_primaries_and_a_remote_migrate_with_gates_and_restarts() {
    let (server, s, secrets) = self_signed_setup("1s");
    let istiod = Istiod::start(&server, true);

    // cluster2's istiod lags: AddNewRoot's gate fails, naming it.
    let run = s
        .cacertd(&["migrate", "start", "--drain", "0s", "--wait"])
        .fails_with(1);
    assert!(
        run.stderr.contains("cluster2/app") || run.stderr.contains("cluster2/istio-system"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("cluster1/"), "{}", run.stderr);
    // Off a terminal, the wait shows as JSON lines: the phase changes and the gate's wait.
    let events: Vec<Value> = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events.iter().any(|e| e["event"] == "gate"
            && e["phase"] == "add-new-root"
            && e["behind"][0]
                .as_str()
                .unwrap_or("")
                .starts_with("cluster2/")),
        "{}",
        run.stderr
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "phase"
                && e["state"].as_str().unwrap_or("").starts_with("failed")),
        "{}",
        run.stderr
    );
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(
        status.contains("phase AddNewRoot") && status.contains("failed: "),
        "{status}"
    );
    assert!(
        status.contains("next: stopped until an operator resumes or rolls back")
            && status.contains("cluster2/"),
        "{status}"
    );
    // Nobody signs with the new CA yet: each cacerts still holds the self-signed certificate.
    assert_no_new_signer(&server, &secrets);

    // The 1 s timeout served to fail fast; from here every gate may take as long as a loaded
    // machine needs.
    istiod.paused.store(false, Ordering::SeqCst);
    s.cacertd(&["transition", "resume", "--wait", "--gate-timeout", "60s"])
        .ok();
    let record: Value = serde_json::from_slice(&s.read("state/transition/record.json")).unwrap();
    assert_eq!(record["options"]["gate_timeout_seconds"], 60);
    drop(istiod);

    let root = s.read("state/root/root-cert.pem");
    for (i, name) in ["cluster1", "cluster2"].iter().enumerate() {
        let c = server.cluster(name);
        let cacerts = c.get("secrets", "istio-system", "cacerts").unwrap();
        assert_eq!(unb64(&cacerts["data"]["root-cert.pem"]), root, "{name}");
        assert_eq!(
            unb64(&cacerts["data"]["ca-cert.pem"]),
            s.read(&format!("state/transition/{name}/new/ca-cert.pem")),
            "{name}"
        );
        // istiod's own CA is never touched; every replaced cacerts is kept.
        assert_eq!(
            c.get("secrets", "istio-system", "istio-ca-secret").unwrap()["data"],
            secrets[i]["data"],
            "{name}"
        );
        let backups = backups_in(c);
        assert_eq!(
            backups, 2,
            "{name}: the AddNewRoot and SwitchSigner versions"
        );
    }
    // istiod and the workloads of the primary and of its remote were restarted.
    for (name, ns, w) in [
        ("cluster1", "istio-system", "istiod"),
        ("cluster2", "istio-system", "istiod"),
        ("cluster1", "app", "web"),
        ("cluster3", "app", "web"),
    ] {
        let d = server.cluster(name).get("deployments", ns, w).unwrap();
        assert!(
            d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
                .is_string(),
            "{name}/{ns}/{w}: {d}"
        );
    }
    let audit = std::fs::read_to_string(s.path("state/audit.log")).unwrap();
    assert_eq!(
        audit.matches("\"action\":\"transition-restart\"").count(),
        3 * 2 * 3,
        "3 phases × 2 primaries × (istiod, gateways, workloads)"
    );
    assert!(!audit.contains("PRIVATE KEY"));
}

/// Nobody signs with the new CA: each primary's cacerts still holds its self-signed
/// certificate (`secrets`, as `self_signed_mesh` returned them).
fn assert_no_new_signer(server: &TestApiServer, secrets: &[Value]) {
    for (i, name) in ["cluster1", "cluster2"].iter().enumerate() {
        let cacerts = server
            .cluster(name)
            .get("secrets", "istio-system", "cacerts")
            .unwrap();
        assert_eq!(
            unb64(&cacerts["data"]["ca-cert.pem"]),
            unb64(&secrets[i]["data"]["ca-cert.pem"]),
            "{name}"
        );
    }
}

/// How many `cacerts` backups a cluster keeps.
/// A whole migration with nothing but the shipped least-privilege RBAC: every cluster is
/// reached as the service account rbac.yaml binds, and the remote is reached through the
/// Istio remote secret in its primary, which remote-secrets-reader.yaml (as shipped) lets
/// cacertd read. No request is refused, and the migration completes.
#[test]
fn a_migration_needs_nothing_beyond_the_shipped_least_privilege_rbac() {
    // TLS: the remote secret's kubeconfig must reach its cluster over https.
    let server = Arc::new(TestApiServer::start_tls(&CLUSTERS));
    let token = |_: &FakeCluster| "least".to_string();
    let s = common::kube::setup_with_tokens(&server, "", token);
    for name in CLUSTERS {
        common::kube::grant_target_rbac(server.cluster(name), "least");
    }
    let c1 = server.cluster("cluster1");
    c1.apply_manifests(
        &common::kube::shipped("deploy/kubernetes/target-cluster/remote-secrets-reader.yaml"),
        "istio-system",
    );
    // cluster3 is reached through the remote secret istioctl created in cluster1, holding a
    // kubeconfig with cluster3's own least-privilege token.
    let kubeconfig = server.cluster("cluster3").kubeconfig("least");
    c1.put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "istio-remote-secret-cluster3", "namespace": "istio-system",
                     "labels": {"istio/multiCluster": "true"},
                     "annotations": {"networking.istio.io/cluster": "cluster3"}},
        "data": {"cluster3": b64(kubeconfig.as_bytes())},
    }));
    let config = std::fs::read_to_string(s.path("cacertd.toml"))
        .unwrap()
        .replace(
            "{ kind = \"kube\", kubeconfig = \"kube/cluster3.yaml\" }",
            "{ kind = \"kube\", remote_secret_from = \"cluster1\" }",
        );
    std::fs::write(s.path("cacertd.toml"), config).unwrap();
    append_config(&s, "[transition]\ngate_timeout = \"60s\"");
    s.cacertd(&["root", "init"]).ok();
    let secrets = self_signed_mesh(&server);
    let istiod = Istiod::start(&server, false);
    s.cacertd(&["migrate", "start", "--drain", "0s", "--wait"])
        .ok();
    drop(istiod);
    let root = s.read("state/root/root-cert.pem");
    for (i, name) in ["cluster1", "cluster2"].iter().enumerate() {
        assert_eq!(
            unb64(&served(&server, name)["root-cert.pem"]),
            root,
            "{name}"
        );
        assert_eq!(
            secret_data(server.cluster(name), "istio-system", "istio-ca-secret").as_ref(),
            Some(&secrets[i]["data"])
        );
    }
    // The remote's workloads were restarted through the remote secret.
    let web3 = server
        .cluster("cluster3")
        .get("deployments", "app", "web")
        .unwrap();
    assert!(
        web3["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );
    for c in server.clusters() {
        let requests = c.requests();
        assert!(!requests.is_empty(), "{} was used", c.name);
        assert!(
            requests
                .iter()
                .all(|r| r.status != 403 && r.user == "system:serviceaccount:cacertd:cacertd"),
            "{}: {requests:#?}",
            c.name
        );
    }
}

fn backups_in(c: &FakeCluster) -> usize {
    c.list("secrets", Some("istio-system"))
        .iter()
        .filter(|s| {
            s["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .starts_with("cacerts-backup-")
        })
        .count()
}

fn secret_data(c: &FakeCluster, ns: &str, name: &str) -> Option<Value> {
    c.get("secrets", ns, name).map(|s| s["data"].clone())
}

/// The four files each primary serves now.
fn served(server: &TestApiServer, name: &str) -> Value {
    secret_data(server.cluster(name), "istio-system", "cacerts").unwrap()
}

/// Another driver saves the record (with `drain_seconds` changed) just before the `nth`
/// write to the management cluster from now; returns the record it saved.
fn someone_saves_the_record(mgmt: &FakeCluster, record: &Value, drain: u64, nth: u64) -> Vec<u8> {
    let mut theirs = record.clone();
    theirs["options"]["drain_seconds"] = json!(drain);
    let theirs = serde_json::to_vec(&theirs).unwrap();
    mgmt.concurrent_update_before_write(
        nth,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "cacertd-transition", "namespace": "cacertd",
                         "labels": {"cacertd.io/transition": "cacertd-transition"}},
            "type": "Opaque",
            "data": {"record.json": b64(&theirs)},
        }),
    );
    theirs
}

#[test]
fn with_a_lease_the_record_lives_in_the_management_cluster_and_a_second_driver_is_stopped() {
    // With exactly the shipped Role of the management cluster.
    let (server, s, _) = with_management(true);
    let mgmt = server.cluster("mgmt");
    self_signed_mesh(&server);
    let _istiod = Istiod::start(&server, false);

    // Killed after its fourth step: the record and material are in the management cluster.
    let run = s
        .cacertd(&[
            "migrate",
            "start",
            "--drain",
            "0s",
            "--stop-after-steps",
            "4",
        ])
        .fails_with(1);
    assert!(
        run.stdout
            .contains("Secret cacertd/cacertd-transition in the management cluster"),
        "{}",
        run.stdout
    );
    assert!(!s.path("state/transition").exists());
    let record = secret_data(mgmt, "cacertd", "cacertd-transition").unwrap();
    let json: Value = serde_json::from_slice(&unb64(&record["record.json"])).unwrap();
    assert_eq!(json["phase"], "add-new-root", "{json}");
    for name in ["cluster1", "cluster2"] {
        let material = secret_data(mgmt, "cacertd", &format!("cacertd-transition-{name}")).unwrap();
        assert_eq!(material.as_object().unwrap().len(), 8, "{name}: {material}");
    }
    let material1 = secret_data(mgmt, "cacertd", "cacertd-transition-cluster1").unwrap();

    // Another driver advances the record between this one's read and its save: this one stops
    // and leaves the other's record as it is.
    let theirs = someone_saves_the_record(mgmt, &json, 7, 1);
    let before = server
        .cluster("cluster2")
        .get("secrets", "istio-system", "cacerts");
    let run = s.cacertd(&["transition", "resume", "--wait"]).fails_with(1);
    assert!(
        run.stderr.contains("changed by someone else"),
        "{}",
        run.stderr
    );
    assert_eq!(
        unb64(&secret_data(mgmt, "cacertd", "cacertd-transition").unwrap()["record.json"]),
        theirs
    );
    assert_eq!(
        server
            .cluster("cluster2")
            .get("secrets", "istio-system", "cacerts"),
        before,
        "nothing was written after the conflict"
    );

    // Resumed: it finishes from the shared record, with the material saved at the start.
    s.cacertd(&["transition", "resume", "--wait"]).ok();
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(status.contains("phase Done"), "{status}");
    let root = s.read("state/root/root-cert.pem");
    assert_eq!(unb64(&served(&server, "cluster1")["root-cert.pem"]), root);
    assert_eq!(
        served(&server, "cluster1")["ca-cert.pem"],
        material1["new.ca-cert.pem"]
    );

    // A refused start leaves the finished transition where it is.
    let run = s.cacertd(&["migrate", "start"]).fails_with(5);
    assert!(run.stderr.contains("nothing to migrate"), "{}", run.stderr);
    assert!(secret_data(mgmt, "cacertd", "cacertd-transition").is_some());
    // Moving it aside copies each Secret, then deletes exactly the version copied: a record
    // saved in between stops the move, and nothing is lost.
    let newer = someone_saves_the_record(mgmt, &json, 9, 6);
    let run = s.cacertd(&["transition", "abort"]).fails_with(1);
    assert!(
        run.stderr
            .contains("changed while it was being moved aside"),
        "{}",
        run.stderr
    );
    assert_eq!(
        unb64(&secret_data(mgmt, "cacertd", "cacertd-transition").unwrap()["record.json"]),
        newer
    );
    s.cacertd(&["transition", "abort"]).ok();
    assert!(secret_data(mgmt, "cacertd", "cacertd-transition").is_none());
    let archived: Vec<Value> = mgmt
        .list("secrets", Some("cacertd"))
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["cacertd.io/archived"] == "true")
        .collect();
    // Two attempts: the first copied both materials and the record, the second the newer
    // record (the materials were gone by then).
    assert_eq!(archived.len(), 4, "{archived:#?}");
    // The material is kept without its intermediate keys (each is in its cluster's cacerts or
    // backups by then).
    let mut keyless = material1.clone();
    keyless
        .as_object_mut()
        .unwrap()
        .retain(|file, _| !file.ends_with(".ca-key.pem"));
    assert_ne!(keyless, material1);
    assert!(
        archived.iter().any(|a| a["data"] == keyless),
        "{archived:#?}"
    );
    assert!(
        archived
            .iter()
            .flat_map(|a| a["data"].as_object().unwrap().keys())
            .all(|file| !file.ends_with("ca-key.pem")),
        "{archived:#?}"
    );
    assert!(
        archived
            .iter()
            .any(|a| a["data"]["record.json"] == json!(b64(&newer)))
    );
    let reqs = mgmt.requests();
    assert!(reqs.iter().all(|r| r.status != 403), "{reqs:#?}");
}

#[test]
fn an_unreachable_cluster_fails_the_gate_by_name_and_resume_completes_once_it_is_back() {
    let server = Arc::new(TestApiServer::start(&CLUSTERS));
    let s = setup(&server, "retries = 0\ntimeout = \"2s\"");
    append_config(&s, "[transition]\ngate_timeout = \"1s\"");
    s.cacertd(&["root", "init"]).ok();
    self_signed_mesh(&server);
    let _istiod = Istiod::start(&server, false);

    // Both primaries written and restarted; the next step is AddNewRoot's gate.
    s.cacertd(&[
        "migrate",
        "start",
        "--drain",
        "0s",
        "--stop-after-steps",
        "8",
    ])
    .fails_with(1);
    // A primary and a remote (whose bundles count in cluster1's gate) are unreachable.
    for name in ["cluster2", "cluster3"] {
        server.cluster(name).inject(
            cacertd_test_apiserver::FaultAction::Status(503),
            1_000_000,
            false,
        );
    }
    let run = s.cacertd(&["transition", "resume", "--wait"]).fails_with(1);
    for name in ["cluster2", "cluster3"] {
        assert!(
            run.stderr.contains(&format!("{name}: unreachable")),
            "{}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("cluster1:"), "{}", run.stderr);
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(
        status.contains("phase AddNewRoot") && status.contains("failed: "),
        "{status}"
    );

    for name in ["cluster2", "cluster3"] {
        server.cluster(name).clear_faults();
    }
    s.cacertd(&["transition", "resume", "--wait"]).ok();
    let root = s.read("state/root/root-cert.pem");
    for name in ["cluster1", "cluster2"] {
        assert_eq!(
            unb64(&served(&server, name)["root-cert.pem"]),
            root,
            "{name}"
        );
    }
}

#[test]
fn rollback_from_every_phase_restores_each_previous_material_on_kubernetes() {
    let server = Arc::new(TestApiServer::start(&CLUSTERS));
    let s = setup(&server, "");
    append_config(
        &s,
        "[transition]\ngate_timeout = \"30s\"\nexclude_namespaces = [\"legacy\"]",
    );
    s.cacertd(&["root", "init"]).ok();
    let secrets = self_signed_mesh(&server);
    // Workloads in an excluded namespace are left to their owners.
    let c1 = server.cluster("cluster1");
    c1.namespace("legacy", &[("istio-injection", "enabled")]);
    workload(c1, "legacy", "db", json!({}));
    config_map(c1, "legacy", &bundle_of(c1));
    let plan = s.cacertd(&["migrate", "plan"]).ok().stdout;
    assert!(plan.contains("cluster1, cluster3 except legacy"), "{plan}");
    let _istiod = Istiod::start(&server, false);
    let primaries = ["cluster1", "cluster2"];
    let snapshot = || primaries.map(|c| served(&server, c));

    s.cacertd(&["migrate", "start", "--drain", "0s", "--approve-each-phase"])
        .ok();
    let added = snapshot();
    s.cacertd(&["transition", "resume", "--approve"]).ok();
    let switched = snapshot();
    assert_ne!(added, switched);
    // Into RemoveOldRoot: cluster1 written and partly restarted, then the process stops.
    s.cacertd(&[
        "transition",
        "resume",
        "--approve",
        "--stop-after-steps",
        "3",
    ])
    .fails_with(1);
    assert_ne!(served(&server, "cluster1"), switched[0]);

    for (expected, phase) in [(&switched, "SwitchSigner"), (&added, "AddNewRoot")] {
        s.cacertd(&["transition", "rollback", "--wait"]).ok();
        assert_eq!(&snapshot(), expected, "back to {phase}'s material");
    }
    // From AddNewRoot: back to what istiod had, its own CA as a plugged-in cacerts, byte for
    // byte; istio-ca-secret itself is untouched.
    s.cacertd(&["transition", "rollback", "--wait"]).ok();
    for (i, name) in primaries.iter().enumerate() {
        let ss = &secrets[i]["data"];
        let now = served(&server, name);
        assert_eq!(now["ca-cert.pem"], ss["ca-cert.pem"], "{name}");
        assert_eq!(now["ca-key.pem"], ss["ca-key.pem"], "{name}");
        assert_eq!(now["root-cert.pem"], ss["ca-cert.pem"], "{name}");
        assert_eq!(
            secret_data(server.cluster(name), "istio-system", "istio-ca-secret").as_ref(),
            Some(ss),
            "{name}"
        );
    }
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(status.contains("rolled back"), "{status}");
    let restarted = |ns: &str, name: &str| {
        c1.get("deployments", ns, name).unwrap()["spec"]["template"]["metadata"]["annotations"]
            ["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    };
    assert!(restarted("app", "web") && !restarted("legacy", "db"));
    // Every cacerts that was replaced is kept: cluster1 went through five replacements
    // (SwitchSigner, RemoveOldRoot, and three rollbacks), cluster2 through three.
    for (name, replaced) in [("cluster1", 5), ("cluster2", 3)] {
        let backups = backups_in(server.cluster(name));
        assert_eq!(backups, replaced, "{name}");
    }
}

#[test]
fn skipping_workload_restarts_needs_multi_root_istiod_everywhere() {
    let (server, s, _) = self_signed_setup("30s");
    let _istiod = Istiod::start(&server, false);

    let run = s
        .cacertd(&[
            "migrate",
            "start",
            "--skip-workload-restarts",
            "--drain",
            "2s",
        ])
        .fails_with(5);
    for name in ["cluster1", "cluster2"] {
        assert!(
            run.stderr.contains(&format!(
                "{name}: off (istiod lacks ISTIO_MULTIROOT_MESH=true)"
            )),
            "{}",
            run.stderr
        );
        assert!(
            server
                .cluster(name)
                .get("secrets", "istio-system", "cacerts")
                .is_none()
        );
    }
    assert!(!s.path("state/transition").exists());

    for name in CLUSTERS {
        let c = server.cluster(name);
        if name != "cluster3" {
            multiroot_istiod(c);
        }
        // Proxies that take the bundles istiod pushes (PCDS).
        c.delete("deployments", "app", "web");
        injected_workload(c, "app", "web", true);
    }
    let run = s
        .cacertd(&[
            "migrate",
            "start",
            "--skip-workload-restarts",
            "--drain",
            "2s",
            "--max-parallel",
            "2",
            "--wait",
        ])
        .ok();
    // Two clusters at once: both written before either restarts, in every phase.
    let audit = std::fs::read_to_string(s.path("state/audit.log")).unwrap();
    let actions: Vec<&str> = audit
        .lines()
        .filter_map(|l| {
            ["transition-write", "transition-restart"]
                .into_iter()
                .find(|a| l.contains(&format!("\"action\":\"{a}\"")))
        })
        .collect();
    assert_eq!(
        actions[..3],
        ["transition-write", "transition-write", "transition-restart"],
        "{audit}"
    );
    assert!(
        run.stdout
            .contains("cluster1: istiod multi-root hot reload on (ISTIO_MULTIROOT_MESH=true)"),
        "{}",
        run.stdout
    );
    let annotations = |name: &str, ns: &str, w: &str| {
        server.cluster(name).get("deployments", ns, w).unwrap()["spec"]["template"]["metadata"]
            ["annotations"]
            .clone()
    };
    for name in ["cluster1", "cluster2"] {
        assert!(
            annotations(name, "istio-system", "istiod")["kubectl.kubernetes.io/restartedAt"]
                .is_string()
        );
        assert!(
            annotations(name, "app", "web")["kubectl.kubernetes.io/restartedAt"].is_null(),
            "{name}: workloads are left to the hot reload"
        );
    }
}

/// istiod with multi-root hot reload on (ISTIO_MULTIROOT_MESH=true).
fn multiroot_istiod(c: &FakeCluster) {
    istiod_with_env(
        c,
        json!([{"name": "ISTIO_MULTIROOT_MESH", "value": "true"}]),
    );
}

/// istiod's Deployment, its container running with `env`.
fn istiod_with_env(c: &FakeCluster, env: Value) {
    c.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "istiod", "namespace": "istio-system", "labels": {"app": "istiod"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "istiod"}},
                 "template": {"metadata": {"labels": {"app": "istiod"}},
                              "spec": {"containers": [{"name": "discovery", "image": "istio/pilot",
                                       "env": env}]}}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                   "readyReplicas": 1, "availableReplicas": 1},
    }));
}

/// A self-signed mesh whose migration, recorded in the management cluster, took one step
/// before its process died; the stand-in istiod running.
fn migration_started_with_management() -> (Arc<TestApiServer>, Setup, Vec<Value>, Istiod) {
    let (server, s, _) = with_management(false);
    let secrets = self_signed_mesh(&server);
    let istiod = Istiod::start(&server, false);
    s.cacertd(&[
        "migrate",
        "start",
        "--drain",
        "0s",
        "--stop-after-steps",
        "1",
    ])
    .fails_with(1);
    (server, s, secrets, istiod)
}

#[test]
fn killed_after_every_single_step_it_converges_with_one_write_per_phase() {
    // Every process takes one step and dies; the next one picks up from the shared record.
    let (server, s, secrets, _istiod) = migration_started_with_management();
    let mut runs = 1;
    loop {
        let run = s.cacertd(&["transition", "resume", "--stop-after-steps", "1"]);
        runs += 1;
        if run.code == 0 {
            assert!(run.stdout.contains("transition finished"), "{}", run.stdout);
            break;
        }
        assert!(
            run.stderr.contains("stopped after 1 steps"),
            "{}",
            run.stderr
        );
        assert!(runs < 60, "no end in sight: {}", run.stderr);
    }
    assert!(
        runs >= 27,
        "3 phases × (2 × (write + 3 restarts) + gate): {runs}"
    );
    assert_migrated(&server, &s, &secrets);
    for name in ["cluster1", "cluster2"] {
        // One write per phase: created in AddNewRoot, replaced twice (each backed up once).
        assert_eq!(backups_in(server.cluster(name)), 2, "{name}");
    }
    let audit = std::fs::read_to_string(s.path("state/audit.log")).unwrap();
    assert_eq!(audit.matches("\"action\":\"transition-write\"").count(), 6);
}

/// The end of a migration started with [`migration_started_with_management`]: each primary
/// serves the new material of the record (the common root alone as its bundle), the record
/// says it is done, istiod's own CA is untouched, one intermediate was issued per primary.
fn assert_migrated(server: &TestApiServer, s: &Setup, secrets: &[Value]) {
    let mgmt = server.cluster("mgmt");
    let root = s.read("state/root/root-cert.pem");
    for (i, name) in ["cluster1", "cluster2"].iter().enumerate() {
        let c = server.cluster(name);
        let served = secret_data(c, "istio-system", "cacerts").unwrap();
        let material = secret_data(mgmt, "cacertd", &format!("cacertd-transition-{name}")).unwrap();
        for f in [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
        ] {
            assert_eq!(served[f], material[format!("new.{f}")], "{name}: {f}");
        }
        assert_eq!(unb64(&served["root-cert.pem"]), root, "{name}");
        assert_eq!(
            secret_data(c, "istio-system", "istio-ca-secret").as_ref(),
            Some(&secrets[i]["data"])
        );
    }
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(status.contains("Done"), "{status}");
    let audit = std::fs::read_to_string(s.path("state/audit.log")).unwrap();
    assert_eq!(audit.matches("\"action\":\"transition-issue\"").count(), 2);
}

/// Killed with SIGKILL at arbitrary moments (between a write landing and the record being
/// saved, in the middle of a restart or a gate check), and with writes whose answers are lost
/// (stored, then the connection dropped or a 5xx returned), in the clusters and in the
/// management cluster, a migration still ends exactly where an undisturbed one does.
#[test]
fn killed_at_random_moments_and_losing_answers_it_ends_where_an_undisturbed_run_does() {
    for seed in [
        0x2545_f491_4f6c_dd1d,
        0x9e37_79b9_7f4a_7c15,
        0xd1b5_4a32_d192_ed03,
    ] {
        killed_at_random_moments(seed);
    }
}

/// One migration driven by processes SIGKILLed after pseudo-random lifetimes drawn from
/// `seed` (fixed, so that a failure can be replayed).
fn killed_at_random_moments(mut seed: u64) {
    let (server, s, secrets, _istiod) = migration_started_with_management();
    use cacertd_test_apiserver::FaultAction::{DropAfterCommit, StatusAfterCommit};
    server
        .cluster("cluster1")
        .inject_after(1, DropAfterCommit, 1, true);
    server
        .cluster("cluster2")
        .inject_after(3, StatusAfterCommit(503), 1, true);
    let mgmt = server.cluster("mgmt");
    mgmt.inject_after(2, DropAfterCommit, 1, true);
    mgmt.inject_after(7, StatusAfterCommit(500), 1, true);
    let (mut kills, mut runs) = (0, 0);
    loop {
        runs += 1;
        assert!(
            runs < 500,
            "seed {seed:#x}: no end in sight after {kills} kills"
        );
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let lifetime = Duration::from_millis(10 + seed % 150);
        let mut child = resume_in_background(&s);
        let killed_at = std::time::Instant::now() + lifetime;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() >= killed_at {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        // A run that ends on its own may also have stopped on a lost answer (it cannot tell
        // its own save from another driver's); the next one carries on.
        if status.is_some_and(|s| s.success()) {
            break;
        }
    }
    assert!(
        kills >= 10,
        "seed {seed:#x}: killed only {kills} times in {runs} runs"
    );
    assert_migrated(&server, &s, &secrets);
    // One write per phase, as undisturbed: the versions replaced (and backed up) are the
    // AddNewRoot and SwitchSigner ones. A process killed between a backup and its write backs
    // the same version up again, so only distinct versions are counted.
    for name in ["cluster1", "cluster2"] {
        let replaced: std::collections::BTreeSet<String> = server
            .cluster(name)
            .list("secrets", Some("istio-system"))
            .iter()
            .filter_map(|b| {
                b["metadata"]["annotations"]["cacertd.io/replaced-resource-version"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(replaced.len(), 2, "seed {seed:#x}: {name}: {replaced:?}");
    }
    for c in [server.cluster("cluster1"), server.cluster("cluster2"), mgmt] {
        assert!(
            c.requests()
                .iter()
                .any(|r| r.status == 0 || r.status >= 500),
            "{}: a lost answer was injected and met",
            c.name
        );
    }
}

/// Killed while each single write of the migration is in flight — every write to the
/// clusters, every third save of the record — the next run ends where an undisturbed one does.
/// The held write is let through shortly after the kill, as a request already sent may be.
#[test]
fn killed_while_any_write_is_in_flight_the_next_run_ends_where_an_undisturbed_one_does() {
    // How many writes an undisturbed run makes to each cluster.
    let (server, s, _, _istiod) = migration_started_with_management();
    let names = ["cluster1", "cluster2", "cluster3", "mgmt"];
    let before: Vec<u64> = names.iter().map(|n| server.cluster(n).writes()).collect();
    s.cacertd(&["transition", "resume", "--wait"]).ok();
    let counts: Vec<u64> = names
        .iter()
        .zip(before)
        .map(|(n, b)| server.cluster(n).writes() - b)
        .collect();
    drop((server, s));
    let mut points = 0;
    for (name, count) in names.iter().zip(counts) {
        let step = if *name == "mgmt" { 3 } else { 1 };
        for k in (0..count).step_by(step) {
            killed_during_write(name, k);
            points += 1;
        }
    }
    assert!(points >= 20, "{points} crash points");
}

fn killed_during_write(cluster: &str, k: u64) {
    let (server, s, secrets, _istiod) = migration_started_with_management();
    let c = server.cluster(cluster);
    let held = Duration::from_millis(300);
    c.inject_after(
        usize::try_from(k).unwrap(),
        cacertd_test_apiserver::FaultAction::Delay(held),
        1,
        true,
    );
    let mut child = resume_in_background(&s);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while c.pending_faults() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{cluster}: write {k} never came"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{cluster}: finished ({status}) before write {k}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(held);
    let run = s.cacertd(&["transition", "resume", "--wait"]);
    assert_eq!(
        run.code, 0,
        "{cluster}, write {k}:\n{}\n{}",
        run.stdout, run.stderr
    );
    assert_migrated(&server, &s, &secrets);
}

/// `transition resume --wait` as a child process, for a test to kill.
fn resume_in_background(s: &Setup) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_cacertd"))
        .current_dir(s.dir.path())
        .args(["-c", "cacertd.toml", "transition", "resume", "--wait"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Every object of every cluster on `server` with its resourceVersion.
fn versions(server: &TestApiServer, names: &[&str]) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for name in names {
        let c = server.cluster(name);
        for plural in [
            "namespaces",
            "secrets",
            "configmaps",
            "deployments",
            "daemonsets",
            "statefulsets",
            "leases",
        ] {
            for o in c.list(plural, None) {
                let m = &o["metadata"];
                out.push((
                    format!("{name}/{plural}"),
                    m["namespace"].as_str().unwrap_or("").to_string(),
                    m["name"].as_str().unwrap_or("").to_string(),
                    m["resourceVersion"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn plan_and_every_dry_run_change_no_resource_version_anywhere() {
    let (server, s, names) = with_management(false);
    self_signed_mesh(&server);

    let before = versions(&server, &names);
    let plan = s.cacertd(&["migrate", "plan"]).ok().stdout;
    assert_eq!(plan, s.cacertd(&["migrate", "plan"]).ok().stdout, "stable");
    // Reads of istiod's Deployments beyond those that come with each read of the cluster's
    // material (a get of `cacerts` and one list of istiod, which says where it publishes).
    let istiod_reads = |c: &str| {
        let requests = server.cluster(c).requests();
        let count = |pred: &dyn Fn(&&cacertd_test_apiserver::Request) -> bool| {
            requests.iter().filter(pred).count()
        };
        count(&|r| {
            r.path == "/apis/apps/v1/namespaces/istio-system/deployments"
                && r.query.contains("istiod")
        }) - count(&|r| r.method == "GET" && r.path.ends_with("/secrets/cacerts"))
    };
    let reads_before = [istiod_reads("cluster1"), istiod_reads("cluster2")];
    let run = s
        .cacertd(&["migrate", "start", "--drain", "0s", "--dry-run"])
        .ok();
    assert!(
        run.stdout.contains("would cover cluster1, cluster2"),
        "{}",
        run.stdout
    );
    // What istiod runs (its releases, multi-root) is read once per primary, and what is
    // printed is what was checked.
    assert_eq!(
        [istiod_reads("cluster1"), istiod_reads("cluster2")],
        [reads_before[0] + 1, reads_before[1] + 1]
    );
    assert!(
        run.stdout
            .contains("cluster1: istiod multi-root hot reload"),
        "{}",
        run.stdout
    );
    assert_eq!(versions(&server, &names), before);
    assert!(
        s.cacertd(&["transition", "status"])
            .ok()
            .stdout
            .contains("no transition")
    );

    // Under way, waiting for approval into SwitchSigner.
    {
        let _istiod = Istiod::start(&server, false);
        s.cacertd(&["migrate", "start", "--drain", "0s", "--approve-each-phase"])
            .ok();
    }
    let before = versions(&server, &names);
    for args in [
        &["transition", "resume", "--approve", "--dry-run"][..],
        &["transition", "rollback", "--dry-run"],
        &["transition", "abort", "--dry-run"],
        &["transition", "status"],
        &["migrate", "plan"],
    ] {
        let run = s.cacertd(args).ok();
        assert!(!run.stdout.contains("PRIVATE KEY"), "{args:?}");
        assert_eq!(versions(&server, &names), before, "{args:?}");
    }
}

#[test]
fn the_leader_carries_on_a_transition_started_elsewhere_from_the_shared_record() {
    use cacertd::clock::SystemClock;
    use cacertd::config::Config;
    use cacertd::daemon::Daemon;

    // Started from a workstation: recorded, one step taken, and left to the daemon.
    let (server, s, _, _istiod) = migration_started_with_management();
    let mgmt = server.cluster("mgmt");
    let record = || -> Value {
        let data = secret_data(mgmt, "cacertd", "cacertd-transition").unwrap();
        serde_json::from_slice(&unb64(&data["record.json"])).unwrap()
    };
    assert_eq!(record()["phase"], "add-new-root");

    let config = Config::load(&s.path("cacertd.toml")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d = Daemon::new(config, Arc::new(SystemClock));
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while record()["phase"] != "done" {
            assert!(
                std::time::Instant::now() < deadline,
                "the leader did not finish the transition: {}",
                record()
            );
            if d.try_lead().await {
                d.drive_transition().await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let metrics = d.metrics().encode();
        assert!(
            metrics.contains(
                "cacertd_transition_phase{transition=\"migrate\",phase=\"Done\",state=\"active\"} 1"
            ),
            "{metrics}"
        );
        d.step_down().await;
    });
    let root = s.read("state/root/root-cert.pem");
    for name in ["cluster1", "cluster2"] {
        assert_eq!(
            unb64(&served(&server, name)["root-cert.pem"]),
            root,
            "{name}"
        );
    }
    // Nothing of the transition was kept on the daemon's disk.
    assert!(!s.path("state/transition").exists());
    let audit = std::fs::read_to_string(s.path("state/audit.log")).unwrap();
    assert_eq!(audit.matches("\"action\":\"transition-write\"").count(), 6);
}

/// A bare pod with a sidecar in one primary: nothing restarts it, so its proxy keeps only the
/// roots it started with. The AddNewRoot gate names it and holds until it is re-created;
/// meanwhile no cluster signs under the new root (which that proxy would refuse). Once it is
/// re-created, the migration completes.
#[test]
fn a_proxy_no_rollout_restarts_holds_the_gate_until_it_is_re_created() {
    let (server, s, secrets) = self_signed_setup("2s");
    let c2 = server.cluster("cluster2");
    let bare = bare_sidecar_pod(c2, "app", "debug");
    let istiod = Istiod::start(&server, false);

    let run = s
        .cacertd(&["migrate", "start", "--drain", "0s", "--wait"])
        .fails_with(1);
    assert!(
        run.stderr.contains(
            "cluster2/app/debug (a bare pod: nothing re-creates it): its proxy started before \
             istiod served the new root"
        ),
        "{}",
        run.stderr
    );
    // The restarted workloads' proxies are not named: they started after istiod.
    assert!(!run.stderr.contains("app/web-"), "{}", run.stderr);
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(
        status.contains("phase AddNewRoot") && status.contains("cluster2/app/debug"),
        "{status}"
    );
    // No cluster signs under the new root while that proxy may not trust it.
    assert_no_new_signer(&server, &secrets);

    // Re-created (a new pod, a new uid), it starts with istiod's current bundle.
    c2.delete("pods", "app", "debug");
    let again = bare_sidecar_pod(c2, "app", "debug");
    assert_ne!(again["metadata"]["uid"], bare["metadata"]["uid"]);
    s.cacertd(&["transition", "resume", "--wait", "--gate-timeout", "60s"])
        .ok();
    drop(istiod);
    let root = s.read("state/root/root-cert.pem");
    for name in ["cluster1", "cluster2"] {
        let cacerts = server
            .cluster(name)
            .get("secrets", "istio-system", "cacerts")
            .unwrap();
        assert_eq!(unb64(&cacerts["data"]["root-cert.pem"]), root, "{name}");
    }
}

/// Every live proxy of a mesh on the test apiserver, each holding what its cluster's istiod
/// served when the proxy started: a certificate signed with that cluster's material and the
/// bundle as trust (a remote's proxies get their primary's). A pod is taken to start when it
/// is first seen: the checks run after every step, and pods are only re-created by steps.
struct Proxies {
    dir: tempfile::TempDir,
    /// Cluster and pod uid → (cluster, pod, the material its proxy holds).
    seen: std::collections::BTreeMap<String, (String, String, std::path::PathBuf)>,
}

impl Proxies {
    fn new() -> Self {
        Proxies {
            dir: tempfile::tempdir().unwrap(),
            seen: Default::default(),
        }
    }

    /// What `primary`'s istiod signs with now: `cacerts`, or its self-signed CA, as files.
    fn material_now(&self, server: &TestApiServer, primary: &str) -> std::path::PathBuf {
        let c = server.cluster(primary);
        let data = secret_data(c, "istio-system", "cacerts")
            .or_else(|| secret_data(c, "istio-system", "istio-ca-secret"))
            .unwrap();
        let dir = self
            .dir
            .path()
            .join(format!("{primary}-{}", self.seen.len()));
        std::fs::create_dir_all(&dir).unwrap();
        for file in [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
            "ca-crl.pem",
        ] {
            if data.get(file).is_some() {
                std::fs::write(dir.join(file), unb64(&data[file])).unwrap();
            }
        }
        dir
    }

    /// Takes in the pods with a proxy that started since the last look, and forgets those gone.
    fn look(&mut self, server: &TestApiServer) {
        let mut live = std::collections::BTreeSet::new();
        for name in CLUSTERS {
            let primary = if name == "cluster3" { "cluster1" } else { name };
            for pod in server.cluster(name).list("pods", None) {
                let proxy = pod["metadata"]["annotations"]["sidecar.istio.io/status"].is_string()
                    || pod["spec"]["containers"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["name"] == "istio-proxy"));
                if !proxy {
                    continue;
                }
                // uids are unique within a cluster.
                let uid = format!("{name}/{}", pod["metadata"]["uid"].as_str().unwrap());
                live.insert(uid.clone());
                if !self.seen.contains_key(&uid) {
                    let material = self.material_now(server, primary);
                    let pod = format!(
                        "{name}/{}/{}",
                        pod["metadata"]["namespace"].as_str().unwrap(),
                        pod["metadata"]["name"].as_str().unwrap()
                    );
                    self.seen.insert(uid, (name.to_string(), pod, material));
                }
            }
        }
        self.seen.retain(|uid, _| live.contains(uid));
    }

    /// Every ordered pair of live proxies whose clusters trusted each other before (each
    /// primary with its remotes; with `all`, every pair) completes mTLS; the failures otherwise.
    fn failures(&self, all: bool) -> Vec<String> {
        let mesh_of = |c: &str| if c == "cluster3" { "cluster1" } else { c }.to_string();
        let mut failed = Vec::new();
        for (a_cluster, a, a_material) in self.seen.values() {
            for (b_cluster, b, b_material) in self.seen.values() {
                if a == b || (!all && mesh_of(a_cluster) != mesh_of(b_cluster)) {
                    continue;
                }
                let (server, client) = (
                    common::mtls::workload(a_material),
                    common::mtls::workload(b_material),
                );
                if let Err(e) = common::mtls::handshake(server, client) {
                    failed.push(format!("{b} → {a}: {e}"));
                }
            }
        }
        failed
    }
}

/// A bare pod with a sidecar in one primary: a migration driven one step at a time breaks no
/// handshake between any two live proxies at any moment — the gate holds before the new signer
/// while the pod still trusts only the old root, and once it is re-created the migration ends
/// with every proxy of every cluster talking to every other.
#[test]
fn with_a_bare_pod_no_handshake_between_live_proxies_ever_fails_during_a_migration() {
    let (server, s, _secrets) = self_signed_setup("1s");
    let c2 = server.cluster("cluster2");
    bare_sidecar_pod(c2, "app", "debug");
    let istiod = Istiod::start(&server, false);
    let mut proxies = Proxies::new();
    // Two pods of `web` in each cluster, once their controllers made them, and the bare pod.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while proxies.seen.len() < 7 {
        assert!(
            std::time::Instant::now() < until,
            "{:?}",
            proxies.seen.values()
        );
        std::thread::sleep(Duration::from_millis(20));
        proxies.look(&server);
    }
    assert_eq!(proxies.failures(false), Vec::<String>::new(), "before");

    let mut held = false;
    let mut steps = 0;
    let mut args = vec![
        "migrate",
        "start",
        "--drain",
        "0s",
        "--stop-after-steps",
        "1",
    ];
    loop {
        let run = s.cacertd(&args);
        args = vec!["transition", "resume", "--stop-after-steps", "1"];
        steps += 1;
        // The plain-HTTP warning comes once per cluster, however often a step reaches it.
        for c in CLUSTERS {
            let warned = format!("cluster=\"{c}\" reason=the server");
            assert!(run.stderr.matches(&warned).count() <= 1, "{}", run.stderr);
        }
        proxies.look(&server);
        let failed = proxies.failures(false);
        assert!(
            failed.is_empty(),
            "after step {steps}: {failed:#?}\n{}",
            run.stderr
        );
        if run.stdout.contains("transition finished") {
            break;
        }
        if run.stdout.contains("the gate does not hold yet") {
            let status = s.cacertd(&["transition", "status"]).ok().stdout;
            if status.contains("cluster2/app/debug") {
                // The gate names the bare pod. Re-created, it starts with what istiod serves
                // now.
                held = true;
                c2.delete("pods", "app", "debug");
                bare_sidecar_pod(c2, "app", "debug");
                proxies.look(&server);
            }
        } else {
            assert!(
                run.stderr.contains("stopped after 1 steps"),
                "{}",
                run.stderr
            );
        }
        assert!(steps < 80, "no end in sight: {}", run.stderr);
    }
    drop(istiod);
    assert!(held, "the gate never named the bare pod");
    assert!(
        s.cacertd(&["transition", "status"])
            .ok()
            .stdout
            .contains("Done")
    );
    // The pod re-created under the transition's bundle, and every restarted proxy, now talk
    // across every cluster.
    assert_eq!(proxies.failures(true), Vec::<String>::new(), "after");
}

/// On a terminal, `--wait` draws a bar of the steps with what is under way beside it — the
/// gate's list of who is behind while it waits; off a terminal (every other test) there is no
/// bar, only JSON lines.
#[test]
fn on_a_terminal_a_waiting_run_shows_a_bar_and_who_the_gate_waits_for() {
    let (server, s, _) = self_signed_setup("4s");
    // cluster2's istiod publishes nothing: the first gate never holds.
    let _istiod = Istiod::start(&server, true);
    let command = format!(
        "{} -c cacertd.toml migrate start --drain 0s --wait",
        env!("CARGO_BIN_EXE_cacertd")
    );
    // `script` runs the command on a pseudo-terminal and copies what it draws to stdout.
    let out = std::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .current_dir(s.dir.path())
        .env_remove("RUST_LOG")
        .env_remove("CACERTD_LOG_FORMAT")
        .output()
        .expect("script (util-linux) runs a command on a pseudo-terminal");
    let drawn = String::from_utf8_lossy(&out.stdout);
    assert!(drawn.contains(" steps "), "{drawn}");
    assert!(
        drawn.contains("gate: 1 behind: cluster2") || drawn.contains("behind: cluster2"),
        "{drawn}"
    );
    assert!(
        drawn.contains("\u{1b}["),
        "the bar is redrawn in place: {drawn}"
    );
    assert!(drawn.contains("did not hold"), "{drawn}");
    // Off a terminal: JSON lines, no bar.
    let run = s.cacertd(&["transition", "resume", "--wait"]);
    assert!(!run.stderr.contains(" steps "), "{}", run.stderr);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with('{') && l.contains("\"event\":\"gate\"")),
        "{}",
        run.stderr
    );
}

/// With `--skip-workload-restarts` every proxy must take the bundles istiod pushes (PCDS):
/// multi-root istiod alone is not enough. Refused, naming a proxy, until the workloads run
/// with PROXY_CONFIG_XDS_AGENT=true; then the migration completes without restarting them.
#[test]
fn skipping_workload_restarts_needs_every_proxy_to_take_pushed_bundles() {
    let (server, s, _) = self_signed_setup("30s");
    for name in ["cluster1", "cluster2"] {
        multiroot_istiod(server.cluster(name));
    }
    let _istiod = Istiod::start(&server, false);
    let skip = [
        "migrate",
        "start",
        "--skip-workload-restarts",
        "--drain",
        "2s",
        "--wait",
    ];

    let run = s.cacertd(&skip).fails_with(5);
    assert!(
        run.stderr.contains("PROXY_CONFIG_XDS_AGENT")
            && run.stderr.contains("cluster1: 2 proxies, e.g. app/web-"),
        "{}",
        run.stderr
    );
    assert!(!s.path("state/transition").exists());
    for name in ["cluster1", "cluster2"] {
        assert!(
            server
                .cluster(name)
                .get("secrets", "istio-system", "cacerts")
                .is_none()
        );
    }

    // The workloads restarted once with the setting: their proxies take pushed bundles.
    for name in CLUSTERS {
        let c = server.cluster(name);
        c.delete("deployments", "app", "web");
        injected_workload(c, "app", "web", true);
    }
    // Without restarts a proxy keeps its certificate of the old signer until it renews: the
    // drain must cover that.
    let mut no_drain = skip;
    no_drain[4] = "0s";
    let run = s.cacertd(&no_drain).fails_with(5);
    assert!(
        run.stderr.contains("--drain must be at least 2s"),
        "{}",
        run.stderr
    );
    assert!(!s.path("state/transition").exists());
    s.cacertd(&skip).ok();
    for name in CLUSTERS {
        let web = server
            .cluster(name)
            .get("deployments", "app", "web")
            .unwrap();
        assert!(
            web["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
                .is_null(),
            "{name}: workloads are left to the pushed bundles"
        );
    }
}

/// Proxies that take no pushed bundles learn the new root at their next certificate renewal:
/// with `--wait-for-renewal` a migration without workload restarts waits for that after each
/// istiod restart — a bare pod included, never deleted — instead of being refused.
#[test]
fn skipping_workload_restarts_can_wait_one_renewal_instead() {
    let (server, s, _) = self_signed_setup("30s");
    for name in CLUSTERS {
        let c = server.cluster(name);
        if name != "cluster3" {
            multiroot_istiod(c);
        }
        c.delete("deployments", "app", "web");
        injected_workload(c, "app", "web", false);
    }
    // A bare pod whose certificates last six seconds: renewed some three seconds in.
    let c1 = server.cluster("cluster1");
    let mut pod = bare_sidecar_pod(c1, "app", "debug");
    pod["spec"]["containers"][1]["env"] = json!([{"name": "SECRET_TTL", "value": "6s"}]);
    let pod = c1.put(pod);
    let _istiod = Istiod::start(&server, false);

    let mut start = vec![
        "migrate",
        "start",
        "--skip-workload-restarts",
        "--drain",
        "4s",
    ];
    let run = s.cacertd(&start).fails_with(5);
    assert!(
        run.stderr.contains("--wait-for-renewal") && run.stderr.contains("PCDS"),
        "{}",
        run.stderr
    );
    start.push("--wait-for-renewal");
    s.cacertd(&start).ok();
    // Up to AddNewRoot's gate: istiod restarted, no workload; the gate waits for renewals.
    s.cacertd(&["transition", "resume"]).ok();
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(
        status.contains("cluster1: 3 proxies started before istiod served the new root and learn it at their next certificate renewal"),
        "{status}"
    );
    assert!(
        server
            .cluster("cluster2")
            .get("secrets", "istio-system", "cacerts")
            .is_some()
            && !status.contains("phase SwitchSigner"),
        "{status}"
    );
    s.cacertd(&["transition", "resume", "--wait"]).ok();
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(status.contains("Done"), "{status}");
    let still = c1.get("pods", "app", "debug").unwrap();
    assert_eq!(
        still["metadata"]["uid"], pod["metadata"]["uid"],
        "the bare pod was left alone"
    );
    for name in CLUSTERS {
        let web = server
            .cluster(name)
            .get("deployments", "app", "web")
            .unwrap();
        assert!(
            web["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
                .is_null(),
            "{name}: workloads were not restarted"
        );
    }
}

/// Gates read the bundles where each istiod writes them: cluster1's istiod publishes under
/// another ConfigMap name (PILOT_CA_CERT_CONFIGMAP), leaving its old ConfigMaps behind as
/// istiod does; cluster2's writes a ClusterTrustBundle. Neither the stale ConfigMaps nor a
/// namespace tenant's own ConfigMap of istiod's name (without istiod's label) block a gate; the ClusterTrustBundle, while
/// cluster2's istiod lags, does.
#[test]
fn gates_read_the_bundle_objects_istiod_writes_and_nothing_else() {
    let (server, s, _) = self_signed_setup("2s");
    let (c1, c2, c3) = (
        server.cluster("cluster1"),
        server.cluster("cluster2"),
        server.cluster("cluster3"),
    );
    istiod_with_env(
        c1,
        json!([{"name": "PILOT_CA_CERT_CONFIGMAP", "value": "mesh-roots"}]),
    );
    named_config_map(c1, "istio-system", "mesh-roots", &bundle_of(c1));
    for c in [c1, c3] {
        named_config_map(c, "app", "mesh-roots", &bundle_of(c1));
    }
    istiod_with_env(
        c2,
        json!([{"name": "ENABLE_CLUSTER_TRUST_BUNDLE_API", "value": "true"}]),
    );
    cluster_trust_bundle(c2, &bundle_of(c2));
    // A namespace istiod does not manage, whose tenant keeps a ConfigMap of the same name.
    c1.namespace("tenant", &[]);
    c1.put(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "mesh-roots", "namespace": "tenant"},
        "data": {"root-cert.pem": "whatever a tenant keeps here"},
    }));
    let istiod = Istiod::start(&server, true);

    let run = s
        .cacertd(&["migrate", "start", "--drain", "0s", "--wait"])
        .fails_with(1);
    assert!(
        run.stderr.contains(
            "cluster2/ClusterTrustBundle istio.io:istiod-ca:root-cert: holds 1 root(s), not the 2 expected"
        ),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("cluster1/"), "{}", run.stderr);
    assert!(!run.stderr.contains("cluster3/"), "{}", run.stderr);

    istiod.paused.store(false, Ordering::SeqCst);
    s.cacertd(&["transition", "resume", "--wait", "--gate-timeout", "60s"])
        .ok();
    drop(istiod);
    let root = s.read("state/root/root-cert.pem");
    for c in [c1, c3] {
        let cm = c.get("configmaps", "app", "mesh-roots").unwrap();
        assert_eq!(
            cm["data"]["root-cert.pem"].as_str().unwrap().as_bytes(),
            &root[..]
        );
    }
    let ctb = c2
        .get("clustertrustbundles", "", "istio.io:istiod-ca:root-cert")
        .unwrap();
    assert_eq!(
        ctb["spec"]["trustBundle"].as_str().unwrap().as_bytes(),
        &root[..]
    );
}

/// istiod's and ztunnel's versions, read from their images: a release known to hand proxies
/// only one root of a multi-root bundle (or, for ztunnel, to trust only one) refuses the
/// transition before anything is written; another is reported at start with the behaviours
/// that matter.
#[test]
fn istiod_releases_that_would_break_a_transition_refuse_it() {
    let server = Arc::new(TestApiServer::start(&CLUSTERS));
    let s = setup(&server, "");
    s.cacertd(&["root", "init"]).ok();
    self_signed_mesh(&server);
    let istiod = |c: &FakeCluster, image: &str| {
        c.put(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "istiod", "namespace": "istio-system", "labels": {"app": "istiod"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "istiod"}},
                     "template": {"metadata": {"labels": {"app": "istiod"}},
                                  "spec": {"containers": [{"name": "discovery", "image": image}]}}},
        }));
    };
    istiod(
        server.cluster("cluster1"),
        "docker.io/istio/pilot:1.26.2-distroless",
    );
    istiod(server.cluster("cluster2"), "docker.io/istio/pilot:1.25.1");

    // `plan` and `status` name each istiod's release and what is known of it.
    let plan = s.cacertd(&["migrate", "plan"]).ok().stdout;
    assert!(
        plan.contains("cluster1: istiod 1.26.2 (docker.io/istio/pilot:1.26.2-distroless)")
            && plan.contains("cluster2: istiod 1.25.1 (docker.io/istio/pilot:1.25.1)")
            && plan.contains("start refuses: istio/istio#55793"),
        "{plan}"
    );
    let status = s.cacertd(&["status"]).ok().stdout;
    assert!(
        status.contains("istiod:\n")
            && status.contains("  cluster2: 1.25.1 (docker.io/istio/pilot:1.25.1)")
            && status.contains("refused: "),
        "{status}"
    );
    let json: Value =
        serde_json::from_str(&s.cacertd(&["status", "-o", "json"]).ok().stdout).unwrap();
    let cluster1 = json["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cluster1")
        .unwrap();
    assert_eq!(cluster1["istiod"][0]["version"], "1.26.2", "{cluster1}");

    let run = s.cacertd(&["migrate", "start"]).fails_with(5);
    assert!(
        run.stderr.contains(
            "cluster2: istiod 1.25.1 (docker.io/istio/pilot:1.25.1) hands proxies only the last \
             root of a multi-root root-cert.pem"
        ) && run.stderr.contains("(istio/istio#55793)"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("cluster1:"), "{}", run.stderr);
    assert!(!s.path("state/transition").exists());
    for name in ["cluster1", "cluster2"] {
        assert!(
            server
                .cluster(name)
                .get("secrets", "istio-system", "cacerts")
                .is_none()
        );
    }

    istiod(server.cluster("cluster2"), "docker.io/istio/pilot:1.25.2");
    // ztunnel before 1.26 trusts one root of a bundle: wherever it runs (here, the remote).
    let ztunnel = |image: &str| {
        server.cluster("cluster3").put(json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "ztunnel", "namespace": "istio-system",
                         "labels": {"app.kubernetes.io/name": "ztunnel"}},
            "spec": {"selector": {"matchLabels": {"app": "ztunnel"}},
                     "template": {"metadata": {"labels": {"app": "ztunnel"}},
                                  "spec": {"containers": [{"name": "istio-proxy", "image": image}]}}},
        }));
    };
    ztunnel("docker.io/istio/ztunnel:1.25.2-distroless");
    let run = s.cacertd(&["migrate", "start"]).fails_with(5);
    assert!(
        run.stderr.contains(
            "cluster3: ztunnel 1.25.2 (docker.io/istio/ztunnel:1.25.2-distroless) trusts only one root"
        ) && run.stderr.contains("(istio/ztunnel#1510)"),
        "{}",
        run.stderr
    );
    assert!(!s.path("state/transition").exists());
    ztunnel("docker.io/istio/ztunnel:1.26.0-distroless");
    let run = s.cacertd(&["migrate", "start"]).ok();
    assert!(
        run.stdout
            .contains("cluster1: istiod 1.26.2 (docker.io/istio/pilot:1.26.2-distroless)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("cluster2: istiod 1.25.2")
            && run
                .stdout
                .contains("  istio/istio#59768: may issue workload certificates"),
        "{}",
        run.stdout
    );
}

/// An ambient mesh: ztunnel (a DaemonSet whose pods hold the workloads' identities) and a
/// waypoint are restarted with the gateways — after istiod, before the workloads — in every
/// phase, and the migration completes with every proxy re-created.
#[test]
fn ambient_ztunnel_and_waypoints_restart_after_istiod_and_before_workloads() {
    let (server, s, _) = self_signed_setup("60s");
    let c1 = server.cluster("cluster1");
    c1.put(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "ztunnel", "namespace": "istio-system",
                     "labels": {"app.kubernetes.io/name": "ztunnel"}},
        "spec": {"selector": {"matchLabels": {"app": "ztunnel"}},
                 "template": {"metadata": {"labels": {"app": "ztunnel"}},
                              "spec": {"containers": [{"name": "istio-proxy", "image": "istio/ztunnel:1.26.1"}]}}},
        "status": {"observedGeneration": 1, "desiredNumberScheduled": 2, "updatedNumberScheduled": 2,
                   "numberAvailable": 2},
    }));
    c1.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "waypoint", "namespace": "app",
                     "labels": {"gateway.istio.io/managed": "istio.io-mesh-controller"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
                 "template": {"metadata": {"labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
                              "spec": {"containers": [{"name": "istio-proxy", "image": "istio/proxyv2"}]}}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    }));
    assert_eq!(
        c1.list("pods", Some("istio-system"))
            .iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "ztunnel")
            .count(),
        2
    );
    let _istiod = Istiod::start(&server, false);
    // Never without restarts: ztunnel takes no pushed bundles and one root only.
    let skip = [
        "migrate",
        "start",
        "--skip-workload-restarts",
        "--wait-for-renewal",
        "--drain",
        "1d",
    ];
    let run = s.cacertd(&skip).fails_with(5);
    assert!(
        run.stderr.contains("cannot be used with ambient mode")
            && run.stderr.contains("istio-system/ztunnel-"),
        "{}",
        run.stderr
    );

    s.cacertd(&["migrate", "start", "--drain", "0s", "--wait"])
        .ok();
    // In cluster1, per phase: istiod, then ztunnel and the waypoint, then the workloads.
    let patches: Vec<String> = c1
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.path)
        .collect();
    let position = |what: &str, nth: usize| {
        patches
            .iter()
            .enumerate()
            .filter(|(_, p)| p.ends_with(what))
            .nth(nth)
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("no {what} #{nth} in {patches:#?}"))
    };
    for phase in 0..3 {
        let istiod = position("/deployments/istiod", phase);
        let ztunnel = position("/daemonsets/ztunnel", phase);
        let waypoint = position("/deployments/waypoint", phase);
        let web = position("/deployments/web", phase);
        assert!(
            istiod < ztunnel && ztunnel < web,
            "phase {phase}: {patches:#?}"
        );
        assert!(
            istiod < waypoint && waypoint < web,
            "phase {phase}: {patches:#?}"
        );
    }
    let root = s.read("state/root/root-cert.pem");
    let cacerts = c1.get("secrets", "istio-system", "cacerts").unwrap();
    assert_eq!(unb64(&cacerts["data"]["root-cert.pem"]), root);
}

/// The uids of the Rollout `checkout`'s pods.
fn checkout_pods(c: &FakeCluster) -> Vec<Value> {
    c.list("pods", Some("app"))
        .into_iter()
        .filter(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("checkout-")
        })
        .map(|p| p["metadata"]["uid"].clone())
        .collect()
}

/// An Argo Rollout's pods are re-created through `spec.restartAt`, as `kubectl argo rollouts
/// restart` does: its proxies then start after istiod, and the gate holds.
#[test]
fn argo_rollouts_are_restarted_through_restart_at() {
    let (server, s, _) = self_signed_setup("60s");
    let c1 = server.cluster("cluster1");
    c1.put(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "checkout", "namespace": "app"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "checkout"}},
                 "template": {"metadata": {"labels": {"app": "checkout"},
                                           "annotations": {"sidecar.istio.io/status": "{}"}},
                              "spec": {"containers": [{"name": "app", "image": "example/checkout:1"},
                                                      {"name": "istio-proxy", "image": "istio/proxyv2"}]}}},
    }));
    let before = checkout_pods(c1);
    assert_eq!(before.len(), 2);
    let _istiod = Istiod::start(&server, false);

    s.cacertd(&["migrate", "start", "--drain", "0s", "--wait"])
        .ok();
    let rollout = c1.get("rollouts", "app", "checkout").unwrap();
    assert!(rollout["spec"]["restartAt"].is_string(), "{rollout}");
    assert_eq!(
        rollout["status"]["restartedAt"],
        rollout["spec"]["restartAt"]
    );
    let after = checkout_pods(c1);
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|uid| !before.contains(uid)));
    let patches = c1
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/rollouts/checkout"))
        .count();
    assert_eq!(patches, 3, "one restart per phase");
}

/// A cluster fed from a folder (GitOps), observed through a kubeconfig: a rotation writes each
/// phase into the folders, then waits until the observed clusters serve it and istiod has
/// published it — however often it is resumed, it never runs ahead of what they hold — and
/// writes nothing to them itself.
#[test]
fn observed_folders_hold_each_phase_until_their_clusters_serve_it() {
    let server = Arc::new(TestApiServer::start(&CLUSTERS));
    let s = setup(&server, "");
    let mut config = String::from(
        "trust_domain = \"cluster.local\"\nstate_dir = \"state\"\npolicies_dir = \"policies\"\n\
         [kubernetes]\ndanger_insecure_transport = true\n[transition]\ngate_timeout = \"10m\"\n",
    );
    for (name, network) in [("cluster1", "network1"), ("cluster2", "network2")] {
        config.push_str(&format!(
            "[[clusters]]\nname = \"{name}\"\nrole = \"primary\"\nnetwork = \"{network}\"\n\
             target = {{ kind = \"dir\", path = \"out/{name}\", observe = \"kube/{name}.yaml\" }}\n"
        ));
    }
    std::fs::write(s.path("cacertd.toml"), config).unwrap();
    s.cacertd(&["issue", "--init-root"]).ok();
    // What a GitOps tool does with a folder: the cluster's cacerts Secret takes its files.
    let applied = std::cell::Cell::new(0);
    let apply = |name: &str| {
        let file = |f: &str| b64(&s.read(&format!("out/{name}/{f}")));
        server.cluster(name).put(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "cacerts", "namespace": "istio-system"},
            "data": {"ca-cert.pem": file("ca-cert.pem"), "ca-key.pem": file("ca-key.pem"),
                     "root-cert.pem": file("root-cert.pem"),
                     "cert-chain.pem": file("cert-chain.pem")},
        }));
        applied.set(applied.get() + 1);
    };
    for name in ["cluster1", "cluster2"] {
        apply(name);
        let c = server.cluster(name);
        workload(c, "istio-system", "istiod", json!({"app": "istiod"}));
        c.namespace("app", &[("istio-injection", "enabled")]);
        config_map(c, "app", &bundle_of(c));
    }
    let _istiod = Istiod::start(&server, false);
    let status = || s.cacertd(&["transition", "status"]).ok().stdout;
    let roots = |name: &str| count_roots(&s.read(&format!("out/{name}/root-cert.pem")));

    s.cacertd(&["rotate-root", "start", "--drain", "0s"]).ok();
    assert_eq!((roots("cluster1"), roots("cluster2")), (2, 2));
    let signer = s.read("out/cluster1/ca-cert.pem");
    for _ in 0..3 {
        s.cacertd(&["transition", "resume"]).ok();
        let now = status();
        assert!(
            now.contains("phase AddNewRoot")
                && now.contains("cluster1: cacerts is not the material of this step")
                && now.contains("cluster2: cacerts is not the material of this step"),
            "{now}"
        );
        assert_eq!(
            s.read("out/cluster1/ca-cert.pem"),
            signer,
            "no new signer yet"
        );
    }
    // Applied in cluster1 only: the gate still waits for cluster2.
    apply("cluster1");
    wait_until("istiod publishes cluster1's bundle", || {
        count_roots(&bundle_of(server.cluster("cluster1"))) == 2
            && configmap_roots(server.cluster("cluster1")) == 2
    });
    s.cacertd(&["transition", "resume"]).ok();
    let now = status();
    assert!(
        now.contains("phase AddNewRoot")
            && !now.contains("cluster1: cacerts is not")
            && now.contains("cluster2: cacerts is not"),
        "{now}"
    );
    // Each phase goes on once both folders are applied and published.
    for phase in ["SwitchSigner", "RemoveOldRoot", "Done"] {
        apply("cluster1");
        apply("cluster2");
        wait_until(&format!("the gate before {phase} holds"), || {
            s.cacertd(&["transition", "resume"]).ok();
            status().contains(&format!("phase {phase}"))
        });
    }
    assert_eq!((roots("cluster1"), roots("cluster2")), (1, 1));
    // cacertd only read the clusters: every version of their cacerts is one the test applied.
    let versions: usize = ["cluster1", "cluster2"]
        .iter()
        .map(|c| {
            server
                .cluster(c)
                .history("secrets", "istio-system", "cacerts")
                .len()
        })
        .sum();
    assert_eq!(versions, applied.get());
}

fn count_roots(pem: &[u8]) -> usize {
    String::from_utf8_lossy(pem)
        .matches("BEGIN CERTIFICATE")
        .count()
}

/// How many roots the `app` namespace's published bundle of `c` holds.
fn configmap_roots(c: &FakeCluster) -> usize {
    c.get("configmaps", "app", "istio-ca-root-cert")
        .and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(count_roots_str))
        .unwrap_or(0)
}

fn count_roots_str(pem: &str) -> usize {
    count_roots(pem.as_bytes())
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < until, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A root planted in cluster1's cacerts leaves it through `transition remove-root`: cluster1
/// keeps its intermediate, istiod, the gateways and the workloads of cluster1 and its remote
/// restart, and the gate waits until every published bundle there holds the common root
/// alone. cluster2, which never trusted it, is not touched.
#[test]
fn remove_root_restarts_the_clusters_that_trusted_it_and_gates_on_their_bundles() {
    let server = Arc::new(TestApiServer::start(&CLUSTERS));
    let s = setup(&server, "");
    for name in CLUSTERS {
        let c = server.cluster(name);
        if name != "cluster3" {
            workload(c, "istio-system", "istiod", json!({"app": "istiod"}));
        }
        c.namespace("app", &[("istio-injection", "enabled")]);
        injected_workload(c, "app", "web", false);
    }
    s.cacertd(&["issue", "--init-root"]).ok();
    for name in CLUSTERS {
        let c = server.cluster(name);
        let primary = if name == "cluster2" {
            "cluster2"
        } else {
            "cluster1"
        };
        config_map(c, "app", &bundle_of(server.cluster(primary)));
    }
    let _istiod = Istiod::start(&server, false);
    let common = bundle_of(server.cluster("cluster1"));
    // Someone who could write cluster1's cacerts plants a root of their own.
    let elsewhere = Setup::new();
    elsewhere.cacertd(&["root", "init"]).ok();
    let shown = elsewhere
        .cacertd(&["root", "show", "-o", "json"])
        .ok()
        .stdout;
    let shown: Value = serde_json::from_str(&shown).unwrap();
    let fp = shown["fingerprint_sha256"].as_str().unwrap().to_string();
    let c1 = server.cluster("cluster1");
    let mut secret = c1.get("secrets", "istio-system", "cacerts").unwrap();
    let mut planted = common.clone();
    planted.extend_from_slice(&elsewhere.read("state/root/root-cert.pem"));
    secret["data"]["root-cert.pem"] = json!(b64(&planted));
    c1.put(secret);
    wait_until("istiod publishes the planted root", || {
        configmap_roots(c1) == 2 && configmap_roots(server.cluster("cluster3")) == 2
    });
    let signer =
        c1.get("secrets", "istio-system", "cacerts").unwrap()["data"]["ca-cert.pem"].clone();

    s.cacertd(&["transition", "remove-root", &fp, "--wait"])
        .ok();
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(status.contains("phase Done"), "{status}");
    let served = c1.get("secrets", "istio-system", "cacerts").unwrap();
    assert_eq!(unb64(&served["data"]["root-cert.pem"]), common);
    assert_eq!(
        served["data"]["ca-cert.pem"], signer,
        "cluster1 keeps its intermediate"
    );
    for name in ["cluster1", "cluster3"] {
        assert_eq!(configmap_roots(server.cluster(name)), 1, "{name}");
    }
    let restarted = |name: &str, ns: &str, d: &str| {
        !server.cluster(name).get("deployments", ns, d).unwrap()["spec"]["template"]["metadata"]
            ["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_null()
    };
    assert!(restarted("cluster1", "istio-system", "istiod"));
    assert!(restarted("cluster1", "app", "web") && restarted("cluster3", "app", "web"));
    assert!(!restarted("cluster2", "istio-system", "istiod"));
    assert!(!restarted("cluster2", "app", "web"));
    assert!(
        server
            .cluster("cluster2")
            .history("secrets", "istio-system", "cacerts")
            .len()
            == 1,
        "cluster2 was not written"
    );
}

/// `migrate plan --check` reads the clusters and plays the migration out on the trust graph:
/// on a plain mesh every step is safe; with a bare sidecar pod and workload restarts skipped
/// (no renewal waited for), it flags the step where that pod would stop trusting its peers,
/// notes that the AddNewRoot gate waits for it, and exits 5. It changes nothing.
#[test]
fn plan_check_flags_the_step_that_would_break_a_bare_pod() {
    let (server, s, _) = self_signed_setup("10m");
    let before = versions(&server, &CLUSTERS);
    let run = s.cacertd(&["migrate", "plan", "--check"]).ok();
    assert!(
        run.stdout.contains("2 primaries read (2 moving)")
            && run.stdout.contains("every step keeps every pair")
            && !run.stdout.contains("BREAKS"),
        "{}",
        run.stdout
    );
    // The trust table names the roots read: each primary's own self-signed root now, the
    // common root alone at the end; the remote as its primary.
    let json = s
        .cacertd(&["migrate", "plan", "--check", "-o", "json"])
        .ok()
        .stdout;
    let checked: Value = serde_json::from_str(&json).unwrap();
    let rows = checked["trust"].as_array().unwrap();
    let row = |c: &str| rows.iter().find(|r| r["cluster"] == c).unwrap();
    let now = |c: &str| row(c)["columns"][0]["trusts"].clone();
    assert_ne!(now("cluster1"), now("cluster2"), "{checked:#}");
    assert_eq!(now("cluster3"), now("cluster1"));
    assert_eq!(row("cluster3")["served_by"], "cluster1");
    for c in CLUSTERS {
        assert_eq!(
            row(c)["columns"][3],
            json!({"when": "after RemoveOldRoot", "trusts": ["the common root"],
                   "signs_under": "the common root"}),
            "{c}"
        );
    }
    assert!(
        run.stdout.contains("cluster3 (remote of cluster1): trusts"),
        "{}",
        run.stdout
    );
    assert_eq!(
        versions(&server, &CLUSTERS),
        before,
        "the check changes nothing"
    );

    bare_sidecar_pod(server.cluster("cluster3"), "app", "debug");
    let before = versions(&server, &CLUSTERS);
    let run = s
        .cacertd(&["migrate", "plan", "--check", "--skip-workload-restarts"])
        .fails_with(5);
    assert!(
        run.stdout
            .contains("proxies no rollout restarts: cluster3/app/debug"),
        "{}",
        run.stdout
    );
    let flagged: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains("[BREAKS]"))
        .collect();
    assert!(!flagged.is_empty(), "{}", run.stdout);
    assert!(
        flagged.iter().all(|l| !l.contains("AddNewRoot")),
        "nothing breaks before a signer changes: {}",
        run.stdout
    );
    let switch = run.stdout.find("SwitchSigner:").unwrap();
    assert!(run.stdout[switch..].contains("[BREAKS]"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("cluster3/app/debug (a bare pod: nothing re-creates it) does not trust"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("holds only once cluster3/app/debug"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("would break"), "{}", run.stderr);
    // As JSON too, and the same with a renewal waited for: the pod learns the root.
    let json = s
        .cacertd(&[
            "migrate",
            "plan",
            "--check",
            "--skip-workload-restarts",
            "-o",
            "json",
        ])
        .fails_with(5)
        .stdout;
    let checked: Value = serde_json::from_str(&json).unwrap();
    assert!(
        checked["before"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("cluster3/app/debug"))
    );
    let steps = checked["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| !s["breaks"].as_array().unwrap().is_empty())
    );
    let run = s
        .cacertd(&[
            "migrate",
            "plan",
            "--check",
            "--skip-workload-restarts",
            "--wait-for-renewal",
        ])
        .ok();
    assert!(!run.stdout.contains("[BREAKS]"), "{}", run.stdout);
    assert_eq!(
        versions(&server, &CLUSTERS),
        before,
        "the check changes nothing"
    );
}

/// `revoke` on Kubernetes: the successor's list reaches every published ConfigMap before the
/// successor signs; only the revoked cluster (and its remote) restarts when it switches, and a
/// proxy there that no rollout restarts holds the gate, since it may still present a
/// certificate from the revoked intermediate; the revocation goes out only after it is gone,
/// and the primary whose proxies never had lists restarts its workloads then.
#[test]
fn a_revocation_on_kubernetes_waits_for_the_lists_and_for_every_proxy_of_the_revoked_cluster() {
    let server = Arc::new(TestApiServer::start(&CLUSTERS));
    let s = setup(&server, "");
    append_config(
        &s,
        "[transition]\ngate_timeout = \"3s\"\nlist_propagation = \"1s\"",
    );
    s.cacertd(&["root", "init"]).ok();
    self_signed_mesh(&server);
    let istiod = Istiod::start(&server, false);
    s.cacertd(&["migrate", "start", "--drain", "0s", "--wait"])
        .ok();
    let (c1, c2) = (server.cluster("cluster1"), server.cluster("cluster2"));
    let restarted = |c: &FakeCluster, ns: &str, w: &str| {
        c.get("deployments", ns, w).unwrap()["spec"]["template"]["metadata"]["annotations"]
            ["kubectl.kubernetes.io/restartedAt"]
            .clone()
    };
    let before: Vec<Value> = [
        (c1, "app", "web"),
        (server.cluster("cluster3"), "app", "web"),
        (c2, "app", "web"),
        (c2, "istio-system", "istiod"),
    ]
    .iter()
    .map(|(c, ns, w)| restarted(c, ns, w))
    .collect();
    let signer = |c: &FakeCluster| {
        unb64(&c.get("secrets", "istio-system", "cacerts").unwrap()["data"]["ca-cert.pem"])
    };
    let old_signer = signer(c1);
    let bare = bare_sidecar_pod(c1, "app", "debug");

    // While cluster2's istiod has not published the lists, the successor does not sign.
    istiod.paused.store(true, Ordering::SeqCst);
    let run = s
        .cacertd(&["revoke", "cluster1", "--reason", "key-compromise", "--wait"])
        .fails_with(1);
    assert!(
        run.stderr
            .contains("cluster2: istiod has not published its revocation lists"),
        "{}",
        run.stderr
    );
    assert_eq!(signer(c1), old_signer);
    istiod.paused.store(false, Ordering::SeqCst);
    let run = s.cacertd(&["transition", "resume", "--wait"]).fails_with(1);
    assert!(
        run.stderr.contains(
            "cluster1/app/debug (a bare pod: nothing re-creates it): its proxy \
             started before istiod signed with the new intermediate"
        ),
        "{}",
        run.stderr
    );
    // cluster1 signs with its successor; the lists went everywhere first; cluster2 did not
    // restart, cluster1 and its remote did.
    assert_ne!(signer(c1), old_signer);
    let lists = |c: &FakeCluster| {
        unb64(&c.get("secrets", "istio-system", "cacerts").unwrap()["data"]["ca-crl.pem"])
    };
    let phase1 = lists(c2);
    assert!(!phase1.is_empty());
    for (name, ns) in [
        ("cluster2", "app"),
        ("cluster2", "istio-system"),
        ("cluster3", "app"),
    ] {
        let published = server
            .cluster(name)
            .get("configmaps", ns, "istio-ca-crl")
            .unwrap();
        assert!(
            !published["data"]["ca-crl.pem"].as_str().unwrap().is_empty(),
            "{name}/{ns}"
        );
    }
    let now: Vec<Value> = [
        (c1, "app", "web"),
        (server.cluster("cluster3"), "app", "web"),
        (c2, "app", "web"),
        (c2, "istio-system", "istiod"),
    ]
    .iter()
    .map(|(c, ns, w)| restarted(c, ns, w))
    .collect();
    assert_ne!(now[0], before[0], "cluster1's workloads restarted");
    assert_ne!(now[1], before[1], "its remote's too");
    assert_eq!(now[2], before[2], "cluster2's workloads did not");
    assert_eq!(now[3], before[3], "nor its istiod");
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(
        status.contains("in phase SwitchSigner") && status.contains("cluster1/app/debug"),
        "{status}"
    );

    // Re-created, it holds a certificate from the successor: the revocation goes out.
    c1.delete("pods", "app", "debug");
    let again = bare_sidecar_pod(c1, "app", "debug");
    assert_ne!(again["metadata"]["uid"], bare["metadata"]["uid"]);
    s.cacertd(&["transition", "resume", "--wait", "--gate-timeout", "60s"])
        .ok();
    let last = lists(c1);
    assert_ne!(last, phase1, "the lists now name the revoked intermediate");
    assert_eq!(lists(c2), last);
    for (name, ns) in [
        ("cluster1", "app"),
        ("cluster2", "app"),
        ("cluster2", "istio-system"),
        ("cluster3", "app"),
    ] {
        let published = server
            .cluster(name)
            .get("configmaps", ns, "istio-ca-crl")
            .unwrap();
        assert_eq!(
            published["data"]["ca-crl.pem"].as_str().unwrap().as_bytes(),
            last,
            "{name}/{ns}"
        );
    }
    // cluster2's proxies never had lists: its workloads restarted once the revocation was out.
    assert_ne!(restarted(c2, "app", "web"), before[2]);
    assert_eq!(restarted(c2, "istio-system", "istiod"), before[3]);

    // A renewal restarts nothing, and its successor signs only once every istiod published
    // the successor's list.
    let workloads = [
        (c1, "app", "web"),
        (c1, "istio-system", "istiod"),
        (c2, "app", "web"),
        (server.cluster("cluster3"), "app", "web"),
    ];
    let before: Vec<Value> = workloads
        .iter()
        .map(|(c, ns, w)| restarted(c, ns, w))
        .collect();
    let renewed_from = signer(c1);
    istiod.paused.store(true, Ordering::SeqCst);
    let run = s.cacertd(&["renew", "cluster1", "--wait"]).fails_with(1);
    assert!(
        run.stderr
            .contains("does not hold the revocation lists of this step yet"),
        "{}",
        run.stderr
    );
    assert_eq!(signer(c1), renewed_from);
    istiod.paused.store(false, Ordering::SeqCst);
    s.cacertd(&["transition", "resume", "--wait"]).ok();
    assert_ne!(signer(c1), renewed_from);
    let after: Vec<Value> = workloads
        .iter()
        .map(|(c, ns, w)| restarted(c, ns, w))
        .collect();
    assert_eq!(after, before, "nothing restarted");

    // A root rotation carries the lists: in the end every primary and every ConfigMap istiod
    // published holds the new root's list and each new intermediate's, and nothing else.
    c1.delete("pods", "app", "debug");
    s.cacertd(&["rotate-root", "start", "--drain", "0s", "--wait"])
        .ok();
    let last = lists(c1);
    assert_eq!(lists(c2), last);
    assert_eq!(
        String::from_utf8_lossy(&last)
            .matches("BEGIN X509 CRL")
            .count(),
        3
    );
    for (name, ns) in [("cluster2", "app"), ("cluster3", "app")] {
        let published = server
            .cluster(name)
            .get("configmaps", ns, "istio-ca-crl")
            .unwrap();
        assert_eq!(
            published["data"]["ca-crl.pem"].as_str().unwrap().as_bytes(),
            last,
            "{name}/{ns}"
        );
    }
}

/// `rotate-root start --emergency` (the root's key leaked): no drain; instead SwitchSigner's
/// gate waits until no proxy that started before its istiod switched signer is left — here a
/// bare pod — and `status` counts the primaries that still trust the compromised root.
#[test]
fn an_emergency_rotation_waits_for_every_old_certificate_instead_of_a_drain() {
    let server = Arc::new(TestApiServer::start(&CLUSTERS));
    let s = setup(&server, "");
    append_config(&s, "[transition]\ngate_timeout = \"3s\"\ndrain = \"24h\"");
    s.cacertd(&["root", "init"]).ok();
    self_signed_mesh(&server);
    let _istiod = Istiod::start(&server, false);
    s.cacertd(&["migrate", "start", "--drain", "0s", "--wait"])
        .ok();
    let old_root = s.read("state/root/root-cert.pem");
    let c2 = server.cluster("cluster2");
    bare_sidecar_pod(c2, "app", "debug");

    s.cacertd(&["rotate-root", "start", "--emergency", "--drain", "1h"])
        .fails_with(2);
    // Before AddNewRoot's gate holds it is re-created, as in any rotation; then it is again a
    // proxy that started before istiod switched signer.
    let run = s
        .cacertd(&["rotate-root", "start", "--emergency", "--wait"])
        .fails_with(1);
    assert!(run.stderr.contains("AddNewRoot"), "{}", run.stderr);
    c2.delete("pods", "app", "debug");
    bare_sidecar_pod(c2, "app", "debug");
    let run = s.cacertd(&["transition", "resume", "--wait"]).fails_with(1);
    assert!(
        run.stderr.contains(
            "cluster2/app/debug (a bare pod: nothing re-creates it): its proxy started before \
             istiod signed under the new root"
        ),
        "{}",
        run.stderr
    );
    let status = s.cacertd(&["status"]).ok().stdout;
    assert!(
        status.contains("(common root): trusted by 2 of 2 primaries (cluster1, cluster2)"),
        "{status}"
    );
    let json: Value =
        serde_json::from_str(&s.cacertd(&["status", "-o", "json"]).ok().stdout).unwrap();
    assert_eq!(json["trust"].as_array().unwrap().len(), 2, "{json}");

    c2.delete("pods", "app", "debug");
    bare_sidecar_pod(c2, "app", "debug");
    // No drain: done as soon as the gate holds.
    s.cacertd(&["transition", "resume", "--wait", "--gate-timeout", "60s"])
        .ok();
    let new_root = s.read("state/root/root-cert.pem");
    assert_ne!(new_root, old_root);
    for name in ["cluster1", "cluster2"] {
        let cacerts = server
            .cluster(name)
            .get("secrets", "istio-system", "cacerts")
            .unwrap();
        assert_eq!(unb64(&cacerts["data"]["root-cert.pem"]), new_root, "{name}");
    }
    let status = s.cacertd(&["status"]).ok().stdout;
    assert!(!status.contains("trust:"), "{status}");
}
