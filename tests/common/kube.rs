//! A scratch setup whose clusters live on the test apiserver.

use cacertd_test_apiserver::{FakeCluster, TestApiServer, Value};

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
# The test apiserver speaks plain HTTP on loopback.
danger_insecure_transport = true
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

/// The service account the shipped RBAC binds its roles to.
pub const SERVICE_ACCOUNT: (&str, &str) = ("cacertd", "cacertd");

/// A shipped manifest's text (`deploy/…`, relative to the repository).
pub fn shipped(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// A target cluster's RBAC (deploy/kubernetes/target-cluster/rbac.yaml), as shipped.
pub fn target_rbac() -> Value {
    serde_json::from_str(&shipped("deploy/kubernetes/target-cluster/rbac.yaml")).unwrap()
}

/// Applies `manifest` to `c` as it is (roles and bindings alike) and makes `token` the
/// service account's token: what cacertd may then do is exactly what the manifest grants.
pub fn grant_as_shipped(c: &FakeCluster, manifest: &str, token: &str) {
    c.apply_manifests(manifest, SERVICE_ACCOUNT.0);
    c.add_service_account_token(token, SERVICE_ACCOUNT.0, SERVICE_ACCOUNT.1);
}

/// The target-cluster RBAC as shipped, with `token` for its service account.
pub fn grant_target_rbac(c: &FakeCluster, token: &str) {
    grant_as_shipped(c, &target_rbac().to_string(), token);
}

/// The management cluster's RBAC (deploy/kubernetes/management/base/lease-rbac.yaml) as shipped,
/// in the namespace kustomize puts it in, with `token` for its service account.
pub fn grant_management_rbac(c: &FakeCluster, token: &str) {
    grant_as_shipped(
        c,
        &shipped("deploy/kubernetes/management/base/lease-rbac.yaml"),
        token,
    );
}
