//! The proxies of a cluster: every running pod that holds a workload identity — a sidecar (an
//! `istio-proxy` container, also as a native-sidecar init container, or istiod's injection
//! annotation), a gateway or waypoint (an `istio-proxy` container too) and a ztunnel
//! (`app=ztunnel`). Listed once per cluster, a page at a time (docs/istio.md §11, §13).

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, ListParams};

use super::KubeTarget;
use crate::cluster::TargetError;
use crate::cluster::retry::retrying;

/// The sidecar container istiod injects (docs/istio.md §11, §13).
const PROXY_CONTAINER: &str = "istio-proxy";
/// istiod's record of an injection on the pod.
const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
/// The proxy setting that makes it take trust bundles istiod pushes (PCDS).
const PUSHED_BUNDLES: &str = "PROXY_CONFIG_XDS_AGENT";
/// Pods listed per request.
const PAGE: u32 = 500;

/// One pod that holds a workload identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The kind of the controller that owns the pod (`ReplicaSet`, `DaemonSet`, `Job`, …);
    /// `None` for a bare pod, which nothing re-creates.
    pub owner: Option<String>,
    /// A ztunnel rather than a sidecar: it never takes pushed bundles.
    pub ztunnel: bool,
    /// Its proxy takes the trust bundles istiod pushes, without a restart: the
    /// `istio-proxy` container runs with `PROXY_CONFIG_XDS_AGENT=true`. (Injection turns the
    /// mesh's and the pod's `proxyMetadata` into that environment, so a pod injected before
    /// the setting changed does not have it.)
    pub takes_pushed_bundles: bool,
}

impl Proxy {
    /// `namespace/name`, and what owns it.
    pub fn describe(&self) -> String {
        let what = match (self.ztunnel, self.owner.as_deref()) {
            (true, _) => "a ztunnel".to_string(),
            (false, None) => "a bare pod: nothing re-creates it".to_string(),
            (false, Some(kind)) => format!("owned by a {kind}"),
        };
        format!("{}/{} ({what})", self.namespace, self.name)
    }
}

impl KubeTarget {
    /// Every running or starting pod of the cluster that holds a workload identity.
    pub async fn proxies(&self) -> Result<Vec<Proxy>, TargetError> {
        let api: Api<Pod> = Api::all(self.client().clone());
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut params = ListParams::default().limit(PAGE);
            if let Some(t) = &token {
                params = params.continue_token(t);
            }
            let page = retrying(self.settings(), "list pods", || api.list(&params))
                .await
                .map_err(|e| self.error("list pods in all namespaces", e))?;
            out.extend(page.items.iter().filter_map(proxy_of));
            token = page.metadata.continue_.filter(|t| !t.is_empty());
            if token.is_none() {
                return Ok(out);
            }
        }
    }
}

/// The pod as a [`Proxy`], if it holds a workload identity and may still be running.
fn proxy_of(pod: &Pod) -> Option<Proxy> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref()?;
    let sidecar = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == PROXY_CONTAINER);
    let injected = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(SIDECAR_STATUS));
    let ztunnel = meta
        .labels
        .as_ref()
        .is_some_and(|l| l.get("app").is_some_and(|v| v == "ztunnel"));
    if sidecar.is_none() && !injected && !ztunnel {
        return None;
    }
    Some(Proxy {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        owner: meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.kind.clone()),
        ztunnel,
        takes_pushed_bundles: !ztunnel && sidecar.is_some_and(pushed_bundles_on),
    })
}

fn pushed_bundles_on(c: &Container) -> bool {
    c.env.iter().flatten().any(|e| {
        e.name == PUSHED_BUNDLES
            && e.value
                .as_deref()
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn every_kind_of_proxy_is_recognised_and_only_sidecars_take_pushed_bundles() {
        let pushed = serde_json::json!([{"name": "PROXY_CONFIG_XDS_AGENT", "value": "true"}]);
        let sidecar = pod(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "app", "uid": "u1",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "web", "uid": "r", "controller": true}]},
            "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy", "env": pushed}]},
        }));
        let p = proxy_of(&sidecar).unwrap();
        assert_eq!(p.owner.as_deref(), Some("ReplicaSet"));
        assert!(p.takes_pushed_bundles && !p.ztunnel);

        // A native sidecar: an init container, without the setting.
        let native = pod(serde_json::json!({
            "metadata": {"name": "job-1", "namespace": "app"},
            "spec": {"initContainers": [{"name": "istio-proxy", "restartPolicy": "Always"}],
                     "containers": [{"name": "app"}]},
        }));
        let p = proxy_of(&native).unwrap();
        assert!(p.owner.is_none() && !p.takes_pushed_bundles);
        assert_eq!(
            p.describe(),
            "app/job-1 (a bare pod: nothing re-creates it)"
        );

        // ztunnel never takes pushed bundles, whatever its environment says.
        let ztunnel = pod(serde_json::json!({
            "metadata": {"name": "ztunnel-a", "namespace": "istio-system", "labels": {"app": "ztunnel"}},
            "spec": {"containers": [{"name": "istio-proxy", "env": pushed}]},
        }));
        let p = proxy_of(&ztunnel).unwrap();
        assert!(p.ztunnel && !p.takes_pushed_bundles);

        // Marked by the injector only.
        let annotated = pod(serde_json::json!({
            "metadata": {"name": "a", "namespace": "app",
                         "annotations": {"sidecar.istio.io/status": "{}"}},
            "spec": {"containers": [{"name": "app"}]},
        }));
        assert!(proxy_of(&annotated).is_some());

        // No proxy; a finished pod runs none any more.
        let plain = pod(serde_json::json!({
            "metadata": {"name": "b", "namespace": "app"},
            "spec": {"containers": [{"name": "app"}]},
        }));
        assert!(proxy_of(&plain).is_none());
        let mut done = sidecar.clone();
        done.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert!(proxy_of(&done).is_none());
    }
}
