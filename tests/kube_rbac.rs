//! The RBAC in deploy/kubernetes/target-cluster/rbac.yaml is enough for everything cacertd
//! does in a target cluster — and each rule is needed: cacertd runs here with exactly those
//! rules (read from the manifest itself), and fails precisely when one is taken away.

mod common;

use cacertd_test_apiserver::{TestApiServer, json};
use common::kube::{CLUSTERS, manifest_rules, setup_with_tokens};

fn mesh(server: &TestApiServer) {
    let c1 = server.cluster("cluster1");
    c1.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "istiod", "namespace": "istio-system", "labels": {"app": "istiod"}},
        "spec": {"replicas": 1, "template": {"metadata": {}, "spec": {}}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    }));
    c1.namespace("app", &[("istio-injection", "enabled")]);
    c1.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "app"},
        "spec": {"replicas": 1, "template": {"metadata": {}, "spec": {}}},
    }));
}

#[test]
fn the_shipped_rbac_is_sufficient() {
    let server = TestApiServer::start(&CLUSTERS);
    mesh(&server);
    for c in CLUSTERS {
        server.cluster(c).add_token(
            "least",
            "system:serviceaccount:cacertd:cacertd",
            manifest_rules(),
        );
    }
    let s = setup_with_tokens(&server, "", |_| "least".to_string());
    s.cacertd(&["issue", "--init-root"]).ok();
    s.cacertd(&["issue", "--force"]).ok();
    s.cacertd(&["status"]).ok();
    s.cacertd(&["restart", "cluster1"]).ok();
    for c in ["cluster1", "cluster2"] {
        let reqs = server.cluster(c).requests();
        assert!(reqs.iter().all(|r| r.status != 403), "{reqs:#?}");
    }
}

#[test]
fn each_rule_of_the_shipped_rbac_is_needed() {
    let all = manifest_rules();
    for i in 0..all.len() {
        let server = TestApiServer::start(&CLUSTERS);
        mesh(&server);
        let mut rules = all.clone();
        let removed = rules.remove(i);
        for c in CLUSTERS {
            server.cluster(c).add_token(
                "less",
                "system:serviceaccount:cacertd:cacertd",
                rules.clone(),
            );
        }
        let s = setup_with_tokens(&server, "", |_| "less".to_string());
        s.cacertd(&["root", "init"]).ok();
        let steps: [&[&str]; 3] = [&["issue"], &["issue", "--force"], &["restart", "cluster1"]];
        let failed = steps.iter().any(|args| {
            let run = s.cacertd(args);
            run.code != 0 && (run.stdout.contains("forbidden") || run.stderr.contains("forbidden"))
        });
        assert!(failed, "nothing needed {removed:?}");
    }
}

#[test]
fn the_management_manifests_carry_the_repository_policies_and_a_valid_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mgmt = root.join("deploy/kubernetes/management");
    for p in ["default.toml", "istio-compatible.toml"] {
        assert_eq!(
            std::fs::read(mgmt.join("policies").join(p)).unwrap(),
            std::fs::read(root.join("policies").join(p)).unwrap(),
            "deploy/kubernetes/management/policies/{p} must be a copy of policies/{p}"
        );
    }
    // The config the CronJob mounts parses (paths are only resolved, not opened).
    let config = cacertd::config::Config::load(&mgmt.join("cacertd.toml")).unwrap();
    assert_eq!(config.topology.clusters().len(), 3);
    // With its Lease, the transition record is shared in the management cluster.
    assert!(
        matches!(&config.transition.record,
            cacertd::config::RecordLocation::Kubernetes { namespace, .. } if namespace == "cacertd"),
        "{:?}",
        config.transition.record
    );
    // Every ConfigMap key the CronJob mounts is one the generator makes.
    let kustomization = std::fs::read_to_string(mgmt.join("kustomization.yaml")).unwrap();
    let deployment = std::fs::read_to_string(mgmt.join("deployment.yaml")).unwrap();
    for key in ["cacertd.toml", "default.toml", "istio-compatible.toml"] {
        assert!(
            deployment.contains(&format!("{{key: {key},")),
            "the deployment mounts {key}"
        );
        assert!(
            kustomization
                .lines()
                .any(|l| l.trim() == format!("- {key}")
                    || l.trim().starts_with(&format!("- {key}="))),
            "kustomization generates {key}"
        );
    }
}
