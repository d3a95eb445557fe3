//! What cacertd may do in a cluster, asked of the cluster itself (SelfSubjectAccessReview):
//! `check --connect` names every permission that is missing before anything needs it. The
//! lists mirror `deploy/kubernetes/target-cluster/rbac.yaml` (a test keeps them in step).

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::KubeTarget;
use crate::cluster::TargetError;

/// One thing cacertd does in a cluster, and why.
#[derive(Clone, Copy, Debug)]
pub struct Permission {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    /// `None`: across the cluster.
    pub namespace: Option<&'static str>,
    pub name: Option<&'static str>,
    pub why: &'static str,
    /// Needed only where a feature is in use (a ClusterTrustBundle, Argo Rollouts).
    pub optional: bool,
}

const fn p(
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    namespace: Option<&'static str>,
    name: Option<&'static str>,
    why: &'static str,
) -> Permission {
    Permission {
        verb,
        group,
        resource,
        namespace,
        name,
        why,
        optional: false,
    }
}

const IS: Option<&str> = Some("istio-system");

/// What a primary's `cacerts` needs: read, write (with a backup first) and watch it, and read
/// istiod's self-signed CA.
pub const PRIMARY: [Permission; 5] = [
    p("get", "", "secrets", IS, Some("cacerts"), "read cacerts"),
    p(
        "update",
        "",
        "secrets",
        IS,
        Some("cacerts"),
        "write cacerts",
    ),
    p(
        "watch",
        "",
        "secrets",
        IS,
        Some("cacerts"),
        "notice a changed cacerts at once",
    ),
    p(
        "create",
        "",
        "secrets",
        IS,
        None,
        "keep a backup before each write",
    ),
    p(
        "get",
        "",
        "secrets",
        IS,
        Some("istio-ca-secret"),
        "read istiod's self-signed CA",
    ),
];

/// What every cluster (primary or remote) needs for trust transitions and `restart`: the
/// published bundles, the injected namespaces, the proxies, and the workloads to restart.
pub const EVERY_CLUSTER: [Permission; 10] = [
    p(
        "list",
        "",
        "configmaps",
        None,
        None,
        "read the bundles istiod published",
    ),
    p(
        "list",
        "",
        "namespaces",
        None,
        None,
        "find the injected namespaces",
    ),
    p("list", "", "pods", None, None, "find every proxy"),
    p(
        "get",
        "apps",
        "deployments",
        IS,
        None,
        "find istiod and the gateways",
    ),
    p(
        "list",
        "apps",
        "deployments",
        None,
        None,
        "find the workloads to restart",
    ),
    p(
        "list",
        "apps",
        "daemonsets",
        None,
        None,
        "find the workloads to restart",
    ),
    p(
        "list",
        "apps",
        "statefulsets",
        None,
        None,
        "find the workloads to restart",
    ),
    p(
        "patch",
        "apps",
        "deployments",
        IS,
        None,
        "restart istiod and the gateways",
    ),
    Permission {
        optional: true,
        ..p(
            "get",
            "certificates.k8s.io",
            "clustertrustbundles",
            None,
            Some("istio.io:istiod-ca:root-cert"),
            "read istiod's ClusterTrustBundle (ENABLE_CLUSTER_TRUST_BUNDLE_API only)",
        )
    },
    Permission {
        optional: true,
        ..p(
            "patch",
            "argoproj.io",
            "rollouts",
            None,
            None,
            "restart Argo Rollouts (where their CRD is installed)",
        )
    },
];

/// Restarting workloads: patch in every injected namespace (cluster-wide, or per namespace
/// with `rbac-namespaced-restarts.yaml`).
pub const RESTART_KINDS: [&str; 3] = ["deployments", "daemonsets", "statefulsets"];

impl KubeTarget {
    /// Whether this cluster lets cacertd do `p` (in `namespace`, overriding `p`'s).
    pub async fn may(&self, p: &Permission, namespace: Option<&str>) -> Result<bool, TargetError> {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(p.verb.into()),
                    group: Some(p.group.into()),
                    resource: Some(p.resource.into()),
                    namespace: namespace.or(p.namespace).map(str::to_string),
                    name: p.name.map(str::to_string),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| self.error("ask whether an action is allowed", e))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}
