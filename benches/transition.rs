//! Benchmark (`cargo bench --bench transition`): a whole migration — 50 self-signed Kubernetes
//! primaries with 20 injected namespaces each (a Deployment of 5 pods with sidecars in each:
//! the proxies the gates count), on the test apiserver, rollouts completing at
//! once and a stand-in istiod publishing each cluster's bundle to its ConfigMaps — from
//! `migrate start` to Done with no drain. Prints the wall time (orchestration overhead: nothing
//! is waited for but the stand-in istiod) and the API requests per cluster and per namespace.
//! `-- --max-parallel N` drives N clusters at once within each phase (default 1); `-- --breakdown`
//! also counts the requests by method and resource.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use cacertd::config::Config;
use cacertd::transition::driver::{self, DriveOptions};
use cacertd::transition::{Options, Step};
use cacertd_test_apiserver::{FakeCluster, TestApiServer, json};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn deployment(c: &FakeCluster, ns: &str, name: &str, labels: serde_json::Value) {
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

/// A Deployment of 5 pods, each with an injected sidecar (the proxies the gates count).
fn injected_deployment(c: &FakeCluster, ns: &str, name: &str) {
    c.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 5, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name},
                                           "annotations": {"sidecar.istio.io/status": "{}"}},
                              "spec": {"containers": [{"name": "app", "image": "example/app:1"},
                                                      {"name": "istio-proxy", "image": "istio/proxyv2"}]}}},
        "status": {"observedGeneration": 1, "replicas": 5, "updatedReplicas": 5, "readyReplicas": 5,
                   "availableReplicas": 5},
    }));
}

fn config_map(c: &FakeCluster, ns: &str, bundle: &str) {
    c.put(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio-ca-root-cert", "namespace": ns,
                     "labels": {"istio.io/config": "true"}},
        "data": {"root-cert.pem": bundle},
    }));
}

/// Publishes each cluster's bundle (cacerts' root-cert.pem, else its self-signed certificate).
fn stand_in_istiod(server: &TestApiServer) {
    let decode = |v: &serde_json::Value| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .unwrap(),
        )
        .unwrap()
    };
    for c in server.clusters() {
        let bundle = match c.get("secrets", "istio-system", "cacerts") {
            Some(s) => decode(&s["data"]["root-cert.pem"]),
            None => decode(
                &c.get("secrets", "istio-system", "istio-ca-secret").unwrap()["data"]["ca-cert.pem"],
            ),
        };
        for cm in c.list("configmaps", None) {
            if cm["data"]["root-cert.pem"].as_str() != Some(bundle.as_str()) {
                config_map(c, cm["metadata"]["namespace"].as_str().unwrap(), &bundle);
            }
        }
    }
}

/// A request as "METHOD resource" with "(one)" for a named object and "(namespace)" for a
/// namespaced collection, for `--breakdown`.
fn request_kind(method: &str, path: &str) -> String {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/v1/... or /apis/GROUP/VERSION/...
    let rest = match parts.first() {
        Some(&"api") => &parts[2.min(parts.len())..],
        _ => &parts[3.min(parts.len())..],
    };
    let (scope, rest) = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => ("namespace ", tail),
        _ => ("", rest),
    };
    match rest {
        [resource] => format!("{method} {resource} ({scope}list)"),
        [resource, _, ..] => format!("{method} {resource} (one)"),
        _ => format!("{method} {path}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let max_parallel: usize = args
        .iter()
        .position(|a| a == "--max-parallel")
        .and_then(|i| args.get(i + 1))
        .map_or(1, |v| v.parse().expect("--max-parallel N"));
    let (n, namespaces) = if quick { (5, 4) } else { (50, 20) };
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let server = Arc::new(TestApiServer::start(&refs));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("kube")).unwrap();
    let mut config = String::from(
        "trust_domain = \"cluster.local\"\nstate_dir = \"state\"\n\n[transition]\ngate_timeout = \"10m\"\n\n[kubernetes]\ndanger_insecure_transport = true\n",
    );
    // One self-signed CA serves every cluster's istio-ca-secret here: generating 50 is not
    // what is measured.
    let self_signed = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "cluster.local");
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    for c in server.clusters() {
        std::fs::write(
            dir.path().join(format!("kube/{}.yaml", c.name)),
            c.kubeconfig(&c.admin_token()),
        )
        .unwrap();
        config.push_str(&format!(
            "\n[[clusters]]\nname = \"{0}\"\nrole = \"primary\"\ntarget = {{ kind = \"kube\", kubeconfig = \"kube/{0}.yaml\" }}\n",
            c.name
        ));
        c.put(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "istio-ca-secret", "namespace": "istio-system"},
            "type": "istio.io/ca-root",
            "data": {"ca-cert.pem": b64(self_signed.0.as_bytes()), "ca-key.pem": b64(self_signed.1.as_bytes()),
                     "root-cert.pem": b64(self_signed.0.as_bytes()), "cert-chain.pem": ""},
        }));
        c.set_rollout_delay(Duration::ZERO);
        deployment(c, "istio-system", "istiod", json!({"app": "istiod"}));
        config_map(c, "istio-system", &self_signed.0);
        for i in 0..namespaces {
            let ns = format!("app{i}");
            c.namespace(&ns, &[("istio-injection", "enabled")]);
            injected_deployment(c, &ns, "web");
            config_map(c, &ns, &self_signed.0);
        }
    }
    std::fs::write(dir.path().join("cacertd.toml"), config).unwrap();
    let config = Config::load(&dir.path().join("cacertd.toml")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let istiod = {
        let (server, stop) = (server.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                stand_in_istiod(&server);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let before: usize = server.clusters().iter().map(|c| c.requests().len()).sum();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let started = Instant::now();
    let end = rt.block_on(async {
        cacertd::root_store::RootSource::open(&config)
            .await
            .unwrap()
            .create(
                &cacertd::pki::generate_root(
                    &config.root_policy().root_spec(&config.trust_domain),
                    now,
                )
                .unwrap(),
            )
            .await
            .unwrap();
        let root_created = started.elapsed();
        let options = Options {
            drain_seconds: 0,
            gate_timeout_seconds: 600,
            skip_workload_restarts: false,
            wait_for_renewal: false,
            approve_each_phase: false,
            exclude_namespaces: Vec::new(),
            max_parallel,
            renewal_wait_seconds: None,
            list_propagation_seconds: None,
            emergency: false,
            lists_only: Vec::new(),
            directories: Default::default(),
        };
        let store = cacertd::transition::record_store::RecordStore::open(&config)
            .await
            .unwrap();
        let istiods = cacertd::transition::start::istiods(&config).await.unwrap();
        cacertd::transition::start::start_migrate(&config, &store, &istiods, options, now, false)
            .await
            .unwrap();
        let step = driver::drive(
            &config,
            &store,
            DriveOptions {
                clock: std::sync::Arc::new(cacertd::clock::SystemClock),
                wait: true,
                poll: Duration::from_millis(20),
                stop_after: None,
                max_steps: None,
                budget: None,
                progress: cacertd::transition::progress::Progress::Off,
            },
        )
        .await
        .unwrap();
        (step, root_created)
    });
    let total = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    istiod.join().unwrap();
    assert_eq!(end.0, Step::Finished);
    let requests: usize = server
        .clusters()
        .iter()
        .map(|c| c.requests().len())
        .sum::<usize>()
        - before;
    if args.iter().any(|a| a == "--breakdown") {
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        for c in server.clusters() {
            for r in c.requests() {
                *kinds.entry(request_kind(&r.method, &r.path)).or_default() += 1;
            }
        }
        for (kind, count) in kinds {
            println!("  {count:>7}  {kind}");
        }
        println!();
    }
    println!(
        "migrate, {n} self-signed Kubernetes primaries × {namespaces} injected namespaces, \
         up to {max_parallel} at once, test apiserver on loopback\n"
    );
    println!(
        "  start → Done (3 phases, {} writes, {} restart stages, 3 gates)   {:>7.2} s",
        3 * n,
        9 * n,
        (total - end.1).as_secs_f64()
    );
    println!(
        "  API requests: {requests} in all, {:.1} per cluster, {:.2} per cluster-namespace",
        requests as f64 / n as f64,
        requests as f64 / (n * (namespaces + 1)) as f64
    );
}
