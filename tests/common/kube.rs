//! A scratch setup whose clusters live on the test apiserver.

use cacertd_test_apiserver::{FakeCluster, Rule, TestApiServer, Value};

use super::Setup;

pub const CLUSTERS: [&str; 3] = ["cluster1", "cluster2", "cluster3"];

/// A scratch setup whose three clusters live on `server`, with `[kubernetes]` settings.
pub fn setup(server: &TestApiServer, kubernetes: &str) -> Setup {
    setup_with_tokens(server, kubernetes, |c| c.admin_token())
}

pub fn setup_with_tokens(
    server: &TestApiServer,
    kubernetes: &str,
    token: impl Fn(&FakeCluster) -> String,
) -> Setup {
    let config = format!(
        r#"trust_domain = "cluster.local"
state_dir = "state"
policies_dir = "policies"

[kubernetes]
{kubernetes}

[[clusters]]
name = "cluster1"
role = "primary"
network = "network1"
target = {{ kind = "kube", kubeconfig = "kube/cluster1.yaml" }}

[[clusters]]
name = "cluster2"
role = "primary"
network = "network2"
target = {{ kind = "kube", kubeconfig = "kube/cluster2.yaml", context = "cluster2" }}

[[clusters]]
name = "cluster3"
role = "remote"
primary = "cluster1"
network = "network1"
target = {{ kind = "kube", kubeconfig = "kube/cluster3.yaml" }}
"#
    );
    let s = Setup::with_config(&config);
    std::fs::create_dir(s.path("kube")).unwrap();
    for name in CLUSTERS {
        let c = server.cluster(name);
        std::fs::write(
            s.path(&format!("kube/{name}.yaml")),
            c.kubeconfig(&token(c)),
        )
        .unwrap();
    }
    s
}

/// The Role and ClusterRole rules of the manifest, as the test apiserver's rules.
pub fn manifest_rules() -> Vec<Rule> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/target-cluster/rbac.yaml"
    );
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let mut rules = Vec::new();
    for item in list["items"].as_array().unwrap() {
        let namespaces = match item["kind"].as_str() {
            Some("Role") => Some(vec![
                item["metadata"]["namespace"].as_str().unwrap().to_string(),
            ]),
            Some("ClusterRole") => None,
            _ => continue,
        };
        for r in item["rules"].as_array().unwrap() {
            let names = r.get("resourceNames").map(strings);
            rules.push(Rule {
                verbs: strings(&r["verbs"]),
                resources: strings(&r["resources"]),
                namespaces: namespaces.clone(),
                names,
            });
        }
    }
    assert!(rules.len() >= 5, "{rules:?}");
    rules
}

/// The rules of the management cluster's Role (deploy/kubernetes/management/lease-rbac.yaml,
/// whose lists are written as JSON flow sequences), in the namespace kustomize gives it.
pub fn management_rules() -> Vec<Rule> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/management/lease-rbac.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let list = |v: &str| -> Vec<String> { serde_json::from_str(v.trim()).unwrap() };
    let mut rules: Vec<Rule> = Vec::new();
    let mut in_role = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("kind:") {
            in_role = t == "kind: Role";
        }
        if !in_role {
            continue;
        }
        if let Some(v) = t.strip_prefix("- apiGroups:") {
            let _ = list(v);
            rules.push(Rule {
                verbs: Vec::new(),
                resources: Vec::new(),
                namespaces: Some(vec!["cacertd".into()]),
                names: None,
            });
        } else if let Some(rule) = rules.last_mut() {
            if let Some(v) = t.strip_prefix("resources:") {
                rule.resources = list(v);
            } else if let Some(v) = t.strip_prefix("resourceNames:") {
                rule.names = Some(list(v));
            } else if let Some(v) = t.strip_prefix("verbs:") {
                rule.verbs = list(v);
            }
        }
    }
    assert!(
        rules.len() >= 3 && rules.iter().all(|r| !r.verbs.is_empty()),
        "{rules:?}"
    );
    rules
}
