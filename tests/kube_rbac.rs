//! The RBAC in deploy/kubernetes/target-cluster/rbac.yaml is enough for everything cacertd
//! does in a target cluster — and each part of it is needed: cacertd runs here as the service
//! account the manifest binds, with the manifest's Roles, ClusterRole and bindings loaded as
//! they are, and fails precisely when a rule, a rule's API group or a binding is taken away.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cacertd_test_apiserver::{FaultAction, TestApiServer, Value, json};
use common::kube::{CLUSTERS, grant_as_shipped, grant_target_rbac, setup_with_tokens, target_rbac};

/// A root rotation's first steps: a write, then istiod's restart, which notes every pod that
/// holds a proxy.
const FIRST_ROTATION_STEPS: &[&str] = &[
    "rotate-root",
    "start",
    "--wait",
    "--drain",
    "0s",
    "--stop-after-steps",
    "3",
];

fn mesh(server: &TestApiServer) {
    let c1 = server.cluster("cluster1");
    c1.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "istiod", "namespace": "istio-system", "labels": {"app": "istiod"}},
        // cluster1's istiod publishes a ClusterTrustBundle; cluster2's (none) ConfigMaps.
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "istiod"}},
                 "template": {"metadata": {"labels": {"app": "istiod"}}, "spec": {"containers": [
            {"name": "discovery", "image": "istio/pilot",
             "env": [{"name": "ENABLE_CLUSTER_TRUST_BUNDLE_API", "value": "true"}]}]}}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    }));
    c1.namespace("app", &[("istio-injection", "enabled")]);
    c1.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "app"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "web:1"}]}}},
    }));
}

#[test]
fn the_shipped_rbac_is_sufficient() {
    let server = TestApiServer::start(&CLUSTERS);
    mesh(&server);
    for c in CLUSTERS {
        grant_target_rbac(server.cluster(c), "least");
    }
    let s = setup_with_tokens(&server, "", |_| "least".to_string());
    run_everything(&server, &s);
    for c in ["cluster1", "cluster2"] {
        let reqs = server.cluster(c).requests();
        assert!(
            reqs.iter()
                .all(|r| r.user == "system:serviceaccount:cacertd:cacertd"),
            "{reqs:#?}"
        );
    }
}

/// Everything cacertd does in a target cluster, in order: the root and first issue, a forced
/// issue (with its backup), status, a restart, a rotation's first steps; no request refused.
fn run_everything(server: &TestApiServer, s: &common::Setup) {
    s.cacertd(&["issue", "--init-root"]).ok();
    s.cacertd(&["issue", "--force"]).ok();
    s.cacertd(&["status"]).ok();
    s.cacertd(&["restart", "cluster1"]).ok();
    let run = s.cacertd(FIRST_ROTATION_STEPS);
    assert!(
        run.stderr.contains("stopped after 3 steps"),
        "{}",
        run.stderr
    );
    for c in ["cluster1", "cluster2"] {
        let reqs = server.cluster(c).requests();
        assert!(reqs.iter().all(|r| r.status != 403), "{reqs:#?}");
    }
}

/// The shipped manifest with one part broken: each rule removed, each rule moved to another
/// API group, each binding removed.
fn broken_variants(shipped: &Value) -> Vec<(String, Value)> {
    let mut variants = Vec::new();
    let items = shipped["items"].as_array().unwrap();
    for (i, item) in items.iter().enumerate() {
        let what = format!(
            "{} {}",
            item["kind"].as_str().unwrap(),
            item["metadata"]["name"].as_str().unwrap()
        );
        match item["kind"].as_str() {
            Some("Role" | "ClusterRole") => {
                for (j, rule) in item["rules"].as_array().unwrap().iter().enumerate() {
                    let mut m = shipped.clone();
                    m["items"][i]["rules"].as_array_mut().unwrap().remove(j);
                    variants.push((format!("{what} without {rule}"), m));
                    let mut m = shipped.clone();
                    m["items"][i]["rules"][j]["apiGroups"] = json!(["wrong.example.com"]);
                    variants.push((format!("{what} with {rule} in another API group"), m));
                }
            }
            Some("RoleBinding" | "ClusterRoleBinding") => {
                let mut m = shipped.clone();
                m["items"].as_array_mut().unwrap().remove(i);
                variants.push((format!("without {what}"), m));
            }
            _ => {}
        }
    }
    variants
}

#[test]
fn each_part_of_the_shipped_rbac_is_needed() {
    let variants = broken_variants(&target_rbac());
    assert!(variants.len() >= 14, "{}", variants.len());
    for (what, manifest) in variants {
        let server = TestApiServer::start(&CLUSTERS);
        mesh(&server);
        for c in CLUSTERS {
            grant_as_shipped(server.cluster(c), &manifest.to_string(), "less");
        }
        let s = setup_with_tokens(&server, "", |_| "less".to_string());
        s.cacertd(&["root", "init"]).ok();
        // The last: a rotation's first steps (a write, istiod's restart, which notes every
        // pod that holds a proxy).
        let steps: [&[&str]; 4] = [
            &["issue"],
            &["issue", "--force"],
            &["restart", "cluster1"],
            FIRST_ROTATION_STEPS,
        ];
        let failed = steps.iter().any(|args| {
            let run = s.cacertd(args);
            run.code != 0 && (run.stdout.contains("forbidden") || run.stderr.contains("forbidden"))
        });
        assert!(failed, "nothing needed what is missing in: {what}");
    }
}

/// `kubectl kustomize` of an overlay of deploy/kubernetes/management: its objects, one
/// YAML document each.
fn kustomize(overlay: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(overlay)
        .output()
        .expect("kubectl is on PATH (the machine image ships it)");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        overlay.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---\n")
        .map(str::to_string)
        .collect()
}

fn object<'a>(objects: &'a [String], kind: &str) -> Option<&'a String> {
    objects
        .iter()
        .find(|o| o.lines().any(|l| l == format!("kind: {kind}")))
}

#[test]
fn the_management_overlays_render_with_the_repository_policies_and_a_valid_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mgmt = root.join("deploy/kubernetes/management");
    for p in ["default.toml", "istio-compatible.toml"] {
        assert_eq!(
            std::fs::read_to_string(mgmt.join("base/policies").join(p)).unwrap(),
            std::fs::read_to_string(root.join("policies").join(p)).unwrap(),
            "deploy/kubernetes/management/base/policies/{p} must be a copy of policies/{p}"
        );
    }
    for (overlay, store, replicas) in [("file", "file", 1), ("vault", "vault-kv", 2)] {
        let dir = mgmt.join("overlays").join(overlay);
        // The config parses as the pod mounts it: /etc/cacertd/cacertd.toml beside policies/
        // (paths are only resolved, not opened).
        let mounted = tempfile::tempdir().unwrap();
        std::fs::create_dir(mounted.path().join("policies")).unwrap();
        for p in ["default.toml", "istio-compatible.toml"] {
            std::fs::copy(
                mgmt.join("base/policies").join(p),
                mounted.path().join("policies").join(p),
            )
            .unwrap();
        }
        std::fs::copy(
            dir.join("cacertd.toml"),
            mounted.path().join("cacertd.toml"),
        )
        .unwrap();
        let config = cacertd::config::Config::load(&mounted.path().join("cacertd.toml")).unwrap();
        assert_eq!(config.topology.clusters().len(), 3, "{overlay}");
        let store_of = match &config.root {
            cacertd::config::RootStoreConfig::File { .. } => "file",
            cacertd::config::RootStoreConfig::VaultKv { .. } => "vault-kv",
            cacertd::config::RootStoreConfig::VaultPki { .. } => "vault-pki",
        };
        assert_eq!(store_of, store, "{overlay}");
        // With its Lease, the transition record is shared in the management cluster.
        assert!(
            matches!(&config.transition.record,
                cacertd::config::RecordLocation::Kubernetes { namespace, .. } if namespace == "cacertd"),
            "{overlay}: {:?}",
            config.transition.record
        );
        let objects = kustomize(&dir);
        // One ConfigMap with every key the Deployment mounts, under the name it mounts.
        let config_map = object(&objects, "ConfigMap").unwrap();
        let name = config_map
            .lines()
            .find_map(|l| l.strip_prefix("  name: cacertd-config"))
            .unwrap_or_else(|| panic!("{overlay}: {config_map}"));
        let deployment = object(&objects, "Deployment").unwrap();
        assert!(
            deployment.contains(&format!("name: cacertd-config{name}")),
            "{overlay}: {deployment}"
        );
        for key in ["cacertd.toml", "default.toml", "istio-compatible.toml"] {
            assert!(
                config_map.contains(&format!("\n  {key}: |")),
                "{overlay}: {key}"
            );
            assert!(
                deployment.contains(&format!("key: {key}")),
                "{overlay}: {key}"
            );
        }
        assert!(
            deployment.contains(&format!("\n  replicas: {replicas}\n")),
            "{overlay}: {deployment}"
        );
        assert!(
            object(&objects, "NetworkPolicy").is_some_and(|n| n.contains("port: 9090")),
            "{overlay}"
        );
        match overlay {
            // The root key's volume: one replica, replaced after the old one let go.
            "file" => {
                assert!(object(&objects, "PersistentVolumeClaim").is_some());
                assert!(deployment.contains("claimName: cacertd-state"));
                assert!(deployment.contains("type: Recreate"));
            }
            // Nothing secret in the cluster: two replicas, one evicted at a time.
            _ => {
                assert!(object(&objects, "PersistentVolumeClaim").is_none());
                assert!(deployment.contains("emptyDir:"));
                assert!(object(&objects, "PodDisruptionBudget").is_some());
            }
        }
    }
}

/// A target where cacertd may read `cacerts` but not replace it: every forced issue fails,
/// and none leaves a backup Secret (a copy of the key) behind, however often it is retried.
#[test]
fn a_write_that_is_forbidden_leaves_no_backup() {
    let server = TestApiServer::start(&CLUSTERS);
    mesh(&server);
    let mut manifest = target_rbac();
    let rules = &mut manifest["items"][3]["rules"];
    assert_eq!(rules[0]["resourceNames"], json!(["cacerts"]), "{rules}");
    rules[0]["verbs"] = json!(["get", "watch"]);
    for c in CLUSTERS {
        grant_target_rbac(server.cluster(c), "least");
    }
    let c1 = server.cluster("cluster1");
    grant_as_shipped(c1, &manifest.to_string(), "read-only");
    let s = setup_with_tokens(&server, "", |c| {
        if c.name == "cluster1" {
            "read-only"
        } else {
            "least"
        }
        .to_string()
    });
    // Creating cacerts needs no update.
    s.cacertd(&["issue", "--init-root"]).ok();
    for _ in 0..3 {
        let run = s.cacertd(&["issue", "--force", "cluster1"]);
        assert_ne!(run.code, 0);
        assert!(run.stdout.contains("forbidden"), "{}", run.stdout);
    }
    let backups: Vec<_> = c1
        .list("secrets", Some("istio-system"))
        .into_iter()
        .filter(|s| {
            s["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("cacerts-backup")
        })
        .collect();
    assert!(backups.is_empty(), "{backups:#?}");
}

/// deploy/kubernetes/target-cluster/rbac-namespaced-restarts.yaml: rbac.yaml with `patch` of
/// workloads granted only in the namespaces it binds (istio-system and `app` here). Enough
/// for everything cacertd does there; a workload elsewhere cannot be restarted.
#[test]
fn the_namespaced_restart_variant_suffices_and_confines_restarts() {
    let variant: Value = serde_json::from_str(&common::kube::shipped(
        "deploy/kubernetes/target-cluster/rbac-namespaced-restarts.yaml",
    ))
    .unwrap();
    // The same as rbac.yaml but for where `patch` of workloads is granted.
    let without_workload_patch = |manifest: &Value| -> Vec<Value> {
        let mut items = manifest["items"].as_array().unwrap().clone();
        items.retain(|i| i["metadata"]["name"] != "cacertd-restart");
        for item in &mut items {
            for rule in item["rules"].as_array_mut().into_iter().flatten() {
                if rule["apiGroups"] == json!(["apps"])
                    || rule["apiGroups"] == json!(["argoproj.io"])
                {
                    rule["verbs"] = json!(["get", "list"]);
                }
            }
        }
        items
    };
    assert_eq!(
        without_workload_patch(&variant),
        without_workload_patch(&target_rbac()),
        "the variant drifted from rbac.yaml"
    );

    let server = TestApiServer::start(&CLUSTERS);
    mesh(&server);
    for c in CLUSTERS {
        grant_as_shipped(server.cluster(c), &variant.to_string(), "narrow");
    }
    let s = setup_with_tokens(&server, "", |_| "narrow".to_string());
    run_everything(&server, &s);

    // An injected namespace the variant does not bind: its workloads cannot be restarted.
    let c1 = server.cluster("cluster1");
    c1.namespace("other", &[("istio-injection", "enabled")]);
    c1.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "other"},
        "spec": {"replicas": 1, "template": {"metadata": {}, "spec": {}}},
    }));
    let run = s.cacertd(&["restart", "cluster1"]);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert_ne!(run.code, 0, "{out}");
    assert!(out.contains("forbidden") && out.contains("other"), "{out}");
}

/// One ValidatingAdmissionPolicy of deploy/kubernetes/target-cluster/admission-policy.yaml.
struct Policy {
    name: String,
    operations: Vec<String>,
    resources: Vec<String>,
    conditions: Vec<String>,
    variables: Vec<(String, String)>,
    validations: Vec<(String, String)>,
}

/// The shipped admission policies, as written.
fn shipped_policies() -> Vec<Policy> {
    let text = common::kube::shipped("deploy/kubernetes/target-cluster/admission-policy.yaml");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let pairs = |v: &Value, a: &str, b: &str| -> Vec<(String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let b = e[b].as_str().unwrap_or("").to_string();
                (e[a].as_str().unwrap().to_string(), b)
            })
            .collect()
    };
    text.split("\n---\n")
        .map(|doc| serde_saphyr::from_str::<Value>(doc).unwrap())
        .filter(|doc| doc["kind"] == "ValidatingAdmissionPolicy")
        .map(|doc| {
            let spec = &doc["spec"];
            let rules = spec["matchConstraints"]["resourceRules"]
                .as_array()
                .unwrap();
            assert_eq!(spec["failurePolicy"], "Fail");
            Policy {
                name: doc["metadata"]["name"].as_str().unwrap().to_string(),
                operations: rules
                    .iter()
                    .flat_map(|r| strings(&r["operations"]))
                    .collect(),
                resources: rules
                    .iter()
                    .flat_map(|r| strings(&r["resources"]))
                    .collect(),
                conditions: pairs(&spec["matchConditions"], "expression", "name")
                    .into_iter()
                    .map(|(e, _)| e)
                    .collect(),
                variables: pairs(&spec["variables"], "name", "expression"),
                validations: pairs(&spec["validations"], "expression", "message"),
            }
        })
        .collect()
}

/// A request as the admission policies see it.
struct Admission<'a> {
    operation: &'a str,
    resource: &'a str,
    namespace: &'a str,
    user: &'a str,
    object: Value,
    old: Value,
}

/// Whether `policies` admit `req`, evaluated as the apiserver does: a policy applies to the
/// operations and resources it names when every match condition holds; its variables are
/// worked out in order; every validation must hold, and one that cannot be evaluated denies
/// (failurePolicy Fail). The denial is the message of the first validation that fails.
fn admit(policies: &[Policy], req: &Admission) -> Result<(), String> {
    use cel_interpreter::{Context, Program, Value as Cel};
    let eval = |expr: &str, ctx: &Context| -> Result<Cel, String> {
        let program = Program::compile(expr).map_err(|e| format!("{expr}: {e}"))?;
        program.execute(ctx).map_err(|e| format!("{expr}: {e}"))
    };
    for policy in policies {
        if !policy.operations.iter().any(|o| o == req.operation)
            || !policy.resources.iter().any(|r| r == req.resource)
        {
            continue;
        }
        let mut ctx = Context::default();
        ctx.add_variable("object", &req.object).unwrap();
        ctx.add_variable("oldObject", &req.old).unwrap();
        ctx.add_variable(
            "request",
            json!({"operation": req.operation, "namespace": req.namespace,
                   "userInfo": {"username": req.user}}),
        )
        .unwrap();
        let mut applies = true;
        for condition in &policy.conditions {
            applies &= matches!(eval(condition, &ctx)?, Cel::Bool(true));
        }
        if !applies {
            continue;
        }
        let mut variables = std::collections::HashMap::<String, Cel>::new();
        for (name, expr) in &policy.variables {
            let value = eval(expr, &ctx)?;
            variables.insert(name.clone(), value);
            ctx.add_variable_from_value("variables", Cel::from(variables.clone()));
        }
        for (expr, message) in &policy.validations {
            match eval(expr, &ctx) {
                Ok(Cel::Bool(true)) => {}
                Ok(other) => return Err(format!("{}: {message} ({other:?})", policy.name)),
                Err(e) => return Err(format!("{}: {message} ({e})", policy.name)),
            }
        }
    }
    Ok(())
}

/// deploy/kubernetes/target-cluster/admission-policy.yaml (a ValidatingAdmissionPolicy, for
/// Kubernetes 1.30 and later; the apiservers of these tests are older) evaluated with a CEL
/// interpreter as the apiserver would: the changes cacertd makes — each workload restart the
/// test apiserver recorded from cacertd's own requests, each Secret it created, and the
/// deletion of one of its backups — are admitted; the same requests changing anything else,
/// aimed at another Secret, or in another namespace are denied; other users are not its
/// business.
#[test]
fn the_admission_policy_admits_exactly_what_cacertd_does() {
    let policies = shipped_policies();
    assert_eq!(policies.len(), 4);
    let (sa_ns, sa_name) = common::kube::SERVICE_ACCOUNT;
    let user = format!("system:serviceaccount:{sa_ns}:{sa_name}");

    let server = TestApiServer::start(&CLUSTERS);
    mesh(&server);
    for c in CLUSTERS {
        grant_target_rbac(server.cluster(c), "least");
    }
    let s = setup_with_tokens(&server, "", |_| "least".to_string());
    std::fs::write(
        s.path("cacertd.toml"),
        format!(
            "{}\n[backups]\nkeep = 1\n",
            String::from_utf8(s.read("cacertd.toml")).unwrap()
        ),
    )
    .unwrap();
    grant_as_shipped(
        server.cluster("cluster1"),
        &common::kube::shipped("deploy/kubernetes/target-cluster/rbac-backup-retention.yaml"),
        "least",
    );
    s.cacertd(&["issue", "--init-root"]).ok();
    for _ in 0..3 {
        s.cacertd(&["issue", "--force", "cluster1"]).ok();
    }
    s.cacertd(&["restart", "cluster1"]).ok();
    let c1 = server.cluster("cluster1");
    assert!(c1.requests().iter().all(|r| r.user == user));
    let as_cacertd = |operation, resource, namespace, object: Value, old: Value| Admission {
        operation,
        resource,
        namespace,
        user: &user,
        object,
        old,
    };

    // Workloads: each restart cacertd made is admitted; anything more is not.
    for (ns, name) in [("istio-system", "istiod"), ("app", "web")] {
        let history = c1.history("deployments", ns, name);
        assert!(history.len() >= 2, "{ns}/{name} restarted");
        for pair in history.windows(2) {
            let (old, new) = (pair[0].clone(), pair[1].clone());
            let restart = as_cacertd("UPDATE", "deployments", ns, new.clone(), old.clone());
            admit(&policies, &restart).unwrap();
            let mut changed = new.clone();
            changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil:latest");
            let denied = admit(
                &policies,
                &Admission {
                    object: changed.clone(),
                    ..restart
                },
            );
            assert!(denied.unwrap_err().contains("not change its pods"));
            // The same change by anyone else is not this policy's business.
            let theirs = Admission {
                user: "system:serviceaccount:ci:deployer",
                ..as_cacertd("UPDATE", "deployments", ns, changed, old.clone())
            };
            admit(&policies, &theirs).unwrap();
            let mut annotated = new.clone();
            annotated["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] =
                json!("false");
            let req = as_cacertd("UPDATE", "deployments", ns, annotated, old.clone());
            assert!(
                admit(&policies, &req)
                    .unwrap_err()
                    .contains("restartedAt annotation")
            );
            let mut labelled = new.clone();
            labelled["spec"]["template"]["metadata"]["labels"]["version"] = json!("v9");
            let req = as_cacertd("UPDATE", "deployments", ns, labelled, old.clone());
            assert!(admit(&policies, &req).unwrap_err().contains("pod labels"));
            let mut scaled = new.clone();
            scaled["spec"]["replicas"] = json!(0);
            let req = as_cacertd("UPDATE", "deployments", ns, scaled, old);
            assert!(
                admit(&policies, &req)
                    .unwrap_err()
                    .contains("selector or replicas")
            );
        }
    }

    // Secrets: every one cacertd made is admitted, as is deleting a backup; nothing else.
    let secrets = c1.list("secrets", Some("istio-system"));
    let made: Vec<&Value> = secrets
        .iter()
        .filter(|s| {
            let name = s["metadata"]["name"].as_str().unwrap();
            name == "cacerts" || name.starts_with("cacerts-backup-")
        })
        .collect();
    assert!(made.len() >= 2, "{made:#?}");
    for secret in &made {
        let create = as_cacertd(
            "CREATE",
            "secrets",
            "istio-system",
            (*secret).clone(),
            Value::Null,
        );
        admit(&policies, &create).unwrap();
        let elsewhere = Admission {
            namespace: "default",
            ..create
        };
        assert!(
            admit(&policies, &elsewhere)
                .unwrap_err()
                .contains("only cacerts")
        );
    }
    let backups_left = made
        .iter()
        .filter(|s| s["metadata"]["name"] != "cacerts")
        .count();
    assert_eq!(
        backups_left, 1,
        "[backups] removed the older ones: {made:#?}"
    );
    let backup = made
        .iter()
        .find(|s| s["metadata"]["name"] != "cacerts")
        .unwrap();
    admit(
        &policies,
        &as_cacertd(
            "DELETE",
            "secrets",
            "istio-system",
            Value::Null,
            (*backup).clone(),
        ),
    )
    .unwrap();
    let mut unlabelled = (*backup).clone();
    unlabelled["metadata"]["labels"] = json!({});
    let mut others: Vec<Value> = ["istio-ca-secret", "istio-remote-secret-cluster2", "cacerts"]
        .iter()
        .map(|n| json!({"metadata": {"name": n, "namespace": "istio-system"}}))
        .collect();
    others.push(unlabelled);
    for other in others {
        let name = other["metadata"]["name"].clone();
        let create = as_cacertd(
            "CREATE",
            "secrets",
            "istio-system",
            other.clone(),
            Value::Null,
        );
        if name != "cacerts" && !name.as_str().unwrap().starts_with("cacerts-backup-") {
            assert!(admit(&policies, &create).is_err(), "create {name}");
        }
        let delete = as_cacertd("DELETE", "secrets", "istio-system", Value::Null, other);
        assert!(
            admit(&policies, &delete)
                .unwrap_err()
                .contains("only the backups of cacerts"),
            "delete {name}"
        );
    }

    // Argo Rollouts: setting spec.restartAt is admitted; a template change is not.
    let rollout = json!({"spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}},
                     "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}});
    let mut restarted = rollout.clone();
    restarted["spec"]["restartAt"] = json!("2026-12-01T10:00:00Z");
    let restart = as_cacertd(
        "UPDATE",
        "rollouts",
        "app",
        restarted.clone(),
        rollout.clone(),
    );
    admit(&policies, &restart).unwrap();
    restarted["spec"]["template"]["spec"]["containers"][0]["image"] = json!("web:2");
    let changed = Admission {
        object: restarted,
        ..restart
    };
    assert!(
        admit(&policies, &changed)
            .unwrap_err()
            .contains("spec.restartAt")
    );
}

/// `[backups]` on a Kubernetes target: without deploy/kubernetes/target-cluster/
/// rbac-backup-retention.yaml the backups due for removal are kept, and each write names them
/// with the command that deletes them; with it, they are deleted once the new `cacerts` is in
/// place, which names the backups that remain (and those just deleted, until the next write
/// finds them gone). A replacement that fails removes none.
#[test]
fn kubernetes_backups_beyond_the_retention_are_removed_where_granted() {
    let server = TestApiServer::start(&CLUSTERS);
    mesh(&server);
    for c in CLUSTERS {
        grant_target_rbac(server.cluster(c), "least");
    }
    let s = setup_with_tokens(&server, "", |_| "least".to_string());
    let config = String::from_utf8(s.read("cacertd.toml")).unwrap();
    std::fs::write(
        s.path("cacertd.toml"),
        format!("{config}\n[backups]\nkeep = 1\n"),
    )
    .unwrap();
    s.cacertd(&["issue", "--init-root"]).ok();
    let c1 = server.cluster("cluster1");
    let backups = || -> Vec<String> {
        let mut names: Vec<String> = c1
            .list("secrets", Some("istio-system"))
            .iter()
            .map(|s| s["metadata"]["name"].as_str().unwrap().to_string())
            .filter(|n| n.starts_with("cacerts-backup-"))
            .collect();
        names.sort();
        names
    };
    let tracked = || -> Vec<String> {
        let cacerts = c1.get("secrets", "istio-system", "cacerts").unwrap();
        let text = cacerts["metadata"]["annotations"]["cacertd.io/backups"]
            .as_str()
            .unwrap_or("[]")
            .to_string();
        let list: Vec<Value> = serde_json::from_str(&text).unwrap();
        let mut names: Vec<String> = list
            .iter()
            .map(|b| b["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    for n in 1..=3 {
        let run = s.cacertd(&["issue", "--force", "cluster1"]).ok();
        if n > 1 {
            assert!(
                run.stdout.contains("warning:")
                    && run
                        .stdout
                        .contains("kubectl -n istio-system delete secret cacerts-backup-"),
                "{}",
                run.stdout
            );
        }
        assert_eq!(backups().len(), n);
        assert_eq!(tracked(), backups());
    }

    grant_as_shipped(
        c1,
        &common::kube::shipped("deploy/kubernetes/target-cluster/rbac-backup-retention.yaml"),
        "least",
    );
    let before = backups();
    // A replacement refused after its dry run passed (an injected 403 on the real write) removes
    // no old backup, and the one made for it goes: what it copies is still in place.
    c1.inject_on(
        "PUT",
        "/api/v1/namespaces/istio-system/secrets/cacerts",
        FaultAction::Status(403),
        1,
    );
    let run = s.cacertd(&["issue", "--force", "cluster1"]).fails_with(1);
    assert!(run.stdout.contains("cluster1  FAILED"), "{}", run.stdout);
    assert!(!run.stdout.contains("is kept"), "{}", run.stdout);
    c1.clear_faults();
    assert_eq!(backups(), before);
    assert_eq!(tracked(), before);
    let run = s.cacertd(&["issue", "--force", "cluster1"]).ok();
    assert_eq!(
        run.stdout
            .matches("secret istio-system/cacerts-backup-")
            .count(),
        4,
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("warning:"), "{}", run.stdout);
    let after = backups();
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(
        !before.contains(&after[0]),
        "the newest, the way back, stays"
    );
    // cacerts names what remains, and what was just removed until a later write finds it
    // gone: a deletion that did not happen is never lost track of.
    let named = tracked();
    assert!(after.iter().all(|b| named.contains(b)), "{named:?}");
    assert!(
        named
            .iter()
            .all(|n| after.contains(n) || before.contains(n)),
        "{named:?}"
    );
    s.cacertd(&["issue", "--force", "cluster1"]).ok();
    let (now, named) = (backups(), tracked());
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(named.contains(&now[0]), "{named:?}");
    assert!(
        named.iter().all(|n| !before.contains(n)),
        "the names removed before are forgotten: {named:?}"
    );
}

/// `check --connect` asks each cluster, permission by permission, whether cacertd may do what
/// it will need: with the shipped RBAC everything is granted; with any part of it broken the
/// check fails naming what is missing (or, for a rule only some meshes need, notes it); a
/// kubeconfig that is missing is named. It writes nothing.
#[test]
fn check_connect_names_every_permission_the_shipped_rbac_grants_and_nothing_else() {
    let server = TestApiServer::start(&CLUSTERS);
    mesh(&server);
    for c in CLUSTERS {
        grant_target_rbac(server.cluster(c), "least");
    }
    let s = setup_with_tokens(&server, "", |_| "least".to_string());
    let run = s.cacertd(&["check", "--connect"]).ok();
    for c in CLUSTERS {
        assert!(run.stdout.contains(&format!("{c}: ok (")), "{}", run.stdout);
    }
    for c in CLUSTERS {
        let reqs = server.cluster(c).requests();
        assert!(
            reqs.iter()
                .all(|r| r.method == "GET" || r.path.ends_with("/selfsubjectaccessreviews")),
            "{c}: {reqs:#?}"
        );
    }

    for (what, manifest) in broken_variants(&target_rbac()) {
        let server = TestApiServer::start(&CLUSTERS);
        mesh(&server);
        for c in CLUSTERS {
            grant_as_shipped(server.cluster(c), &manifest.to_string(), "less");
        }
        let s = setup_with_tokens(&server, "", |_| "less".to_string());
        let run = s.cacertd(&["check", "--connect"]);
        let optional = what.contains("clustertrustbundles") || what.contains("rollouts");
        if optional {
            assert!(
                run.stdout.contains("note: not allowed"),
                "{what}: {}",
                run.stdout
            );
        } else {
            assert_eq!(run.code, 1, "{what}: {}{}", run.stdout, run.stderr);
            assert!(
                run.stdout.contains("missing") && run.stderr.contains("rbac.yaml"),
                "{what}: {}{}",
                run.stdout,
                run.stderr
            );
        }
    }

    // A kubeconfig that is not there.
    std::fs::remove_file(s.path("kube/cluster2.yaml")).unwrap();
    let run = s.cacertd(&["check", "--connect"]).fails_with(1);
    assert!(
        run.stdout.contains("cluster2: 1 missing") && run.stdout.contains("cannot connect"),
        "{}",
        run.stdout
    );
}
