//! A scratch setup whose clusters live on the test apiserver.

use cacertd_test_apiserver::{FakeCluster, TestApiServer};

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
