//! A migration of two self-signed Kubernetes primaries (and a remote) onto the common root,
//! against the test apiserver. A stand-in for istiod publishes each primary's bundle to the
//! `istio-ca-root-cert` ConfigMaps, as istiod does; while it lags in one cluster, the gate
//! waits, then fails naming that cluster and namespace; once it catches up, `resume` finishes.

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

fn config_map(c: &FakeCluster, ns: &str, bundle: &[u8]) {
    c.put(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio-ca-root-cert", "namespace": ns},
        "data": {"root-cert.pem": String::from_utf8(bundle.to_vec()).unwrap()},
    }));
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

/// Copies each primary's bundle to the ConfigMaps of its clusters, unless paused.
fn stand_in_istiod(server: Arc<TestApiServer>, paused: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        for (primary, clusters) in [
            ("cluster1", &["cluster1", "cluster3"][..]),
            ("cluster2", &["cluster2"][..]),
        ] {
            if primary == "cluster2" && paused.load(Ordering::SeqCst) {
                continue;
            }
            let bundle = bundle_of(server.cluster(primary));
            for name in clusters {
                let c = server.cluster(name);
                for cm in c.list("configmaps", None) {
                    if cm["metadata"]["name"] == "istio-ca-root-cert"
                        && cm["data"]["root-cert.pem"].as_str().map(str::as_bytes)
                            != Some(&bundle[..])
                    {
                        config_map(c, cm["metadata"]["namespace"].as_str().unwrap(), &bundle);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_self_signed_primaries_and_a_remote_migrate_with_gates_and_restarts() {
    let server = Arc::new(TestApiServer::start(&CLUSTERS));
    let s = setup(&server, "");
    std::fs::write(
        s.path("cacertd.toml"),
        format!(
            "{}\n[transition]\ngate_timeout = \"1s\"\n",
            std::fs::read_to_string(s.path("cacertd.toml")).unwrap()
        ),
    )
    .unwrap();
    s.cacertd(&["root", "init"]).ok();

    // Each primary runs istiod with its own self-signed CA (different roots).
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
        workload(c, "app", "web", json!({}));
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

    let paused = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let istiod = {
        let (server, paused, stop) = (server.clone(), paused.clone(), stop.clone());
        std::thread::spawn(move || stand_in_istiod(server, paused, stop))
    };

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
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(
        status.contains("phase AddNewRoot") && status.contains("Failed"),
        "{status}"
    );
    // Nobody signs with the new CA yet: each cacerts still holds the self-signed certificate.
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

    paused.store(false, Ordering::SeqCst);
    s.cacertd(&["transition", "resume", "--wait"]).ok();
    stop.store(true, Ordering::SeqCst);
    istiod.join().unwrap();

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
        let backups = c
            .list("secrets", Some("istio-system"))
            .iter()
            .filter(|s| {
                s["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("cacerts-backup-")
            })
            .count();
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
