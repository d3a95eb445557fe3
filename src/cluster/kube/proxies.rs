//! The proxies of a cluster: every running pod that holds a workload identity — a sidecar (an
//! `istio-proxy` container, also as a native-sidecar init container, or istiod's injection
//! annotation), a gateway or waypoint (an `istio-proxy` container too) and a ztunnel
//! (`app=ztunnel`). Listed once per cluster, a page at a time (docs/istio.md §11, §13).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, ListParams};

use super::KubeTarget;
use crate::cluster::TargetError;

/// The sidecar container istiod injects (docs/istio.md §11, §13).
const PROXY_CONTAINER: &str = "istio-proxy";
/// istiod's record of an injection on the pod.
const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
/// The proxy setting that makes it take trust bundles istiod pushes (PCDS).
const PUSHED_BUNDLES: &str = "PROXY_CONFIG_XDS_AGENT";

/// The agent's settings for its certificate (docs/istio.md §13): the lifetime it asks for, and
/// the fraction of that lifetime left (± a random jitter) when it renews.
const SECRET_TTL: &str = "SECRET_TTL";
const GRACE_RATIO: &str = "SECRET_GRACE_PERIOD_RATIO";
const GRACE_JITTER: &str = "SECRET_GRACE_PERIOD_RATIO_JITTER";
/// The agent's defaults for the three.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_GRACE_RATIO: f64 = 0.5;
const DEFAULT_GRACE_JITTER: f64 = 0.01;
/// Added to the computed renewal time: the agent's own retries and clock skew.
const RENEWAL_MARGIN: f64 = 0.02;

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
    /// The longest its proxy waits after a certificate is issued before renewing it — and
    /// with the renewal learning istiod's current bundle — from the agent's settings in the
    /// `istio-proxy` container's environment (`SECRET_TTL`, `SECRET_GRACE_PERIOD_RATIO` and its
    /// jitter; Istio's defaults where unset: 24 h and half, so about 12 h). `Err`: a setting
    /// that cannot be read, named.
    pub renewal: Result<Duration, String>,
    /// The lifetime its agent asks for its certificate (`SECRET_TTL`; 24 h where unset or
    /// unreadable, as the agent falls back; zero asks for istiod's default).
    pub requested_ttl: Duration,
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
        self.list_paged(
            &api,
            ListParams::default(),
            "list pods in all namespaces",
            |pod| proxy_of(&pod),
        )
        .await
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
    let asked = requested_ttl(sidecar);
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
        renewal: asked.clone().and_then(|ttl| renewal(sidecar, ttl)),
        requested_ttl: asked.unwrap_or(DEFAULT_TTL),
    })
}

/// The lifetime the agent asks for (`SECRET_TTL`, its default where unset); `Err` names a
/// value that is no duration (the agent then falls back to the default).
fn requested_ttl(sidecar: Option<&Container>) -> Result<Duration, String> {
    match env_of(sidecar, SECRET_TTL) {
        None => Ok(DEFAULT_TTL),
        Some(v) => go_duration(v).ok_or_else(|| format!("{SECRET_TTL}={v:?} is not a duration")),
    }
}

fn env_of<'a>(c: Option<&'a Container>, name: &str) -> Option<&'a str> {
    c?.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// When the agent renews: `TTL × (1 − ratio + jitter)` after issuance at the latest
/// (docs/istio.md §13), plus a small margin.
fn renewal(sidecar: Option<&Container>, ttl: Duration) -> Result<Duration, String> {
    let fraction = |name: &str, default: f64| match env_of(sidecar, name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| (0.0..=1.0).contains(f))
            .ok_or_else(|| format!("{name}={v:?} is not a fraction between 0 and 1")),
    };
    let ratio = fraction(GRACE_RATIO, DEFAULT_GRACE_RATIO)?;
    let jitter = fraction(GRACE_JITTER, DEFAULT_GRACE_JITTER)?;
    let latest = (1.0 - ratio + jitter).clamp(0.0, 1.0) * (1.0 + RENEWAL_MARGIN);
    Ok(ttl.mul_f64(latest))
}

/// A Go duration as the agent and istiod parse it (`24h`, `12h0m0s`, `90m`, `1.5h`, `500ms`).
pub(super) fn go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
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

    #[test]
    fn the_renewal_time_comes_from_the_agents_settings() {
        let with_env = |env: serde_json::Value| {
            let p = pod(serde_json::json!({
                "metadata": {"name": "w", "namespace": "app"},
                "spec": {"containers": [{"name": "istio-proxy", "env": env}]},
            }));
            proxy_of(&p).unwrap().renewal
        };
        // Istio's defaults: 24 h, renewed with half (± 1 %) left; 2 % margin.
        let default = with_env(serde_json::json!([])).unwrap();
        assert_eq!(default.as_secs(), (24.0 * 3600.0 * 0.51 * 1.02) as u64);
        let short = with_env(serde_json::json!([{"name": "SECRET_TTL", "value": "1h30m"},
                                                {"name": "SECRET_GRACE_PERIOD_RATIO", "value": "0.2"}]));
        assert_eq!(short.unwrap().as_secs(), (5400.0 * 0.81 * 1.02) as u64);
        let bad = with_env(serde_json::json!([{"name": "SECRET_TTL", "value": "a day"}]));
        assert!(bad.unwrap_err().contains("SECRET_TTL"));
        for (env, asked) in [
            (serde_json::json!([]), 86400),
            (
                serde_json::json!([{"name": "SECRET_TTL", "value": "a day"}]),
                86400,
            ),
            (
                serde_json::json!([{"name": "SECRET_TTL", "value": "48h"}]),
                2 * 86400,
            ),
            (serde_json::json!([{"name": "SECRET_TTL", "value": "0"}]), 0),
        ] {
            let p = pod(serde_json::json!({
                "metadata": {"name": "w", "namespace": "app"},
                "spec": {"containers": [{"name": "istio-proxy", "env": env}]},
            }));
            assert_eq!(
                proxy_of(&p).unwrap().requested_ttl.as_secs(),
                asked,
                "{env}"
            );
        }
        for (text, secs) in [
            ("24h", 86400.0),
            ("12h0m0s", 43200.0),
            ("1.5h", 5400.0),
            ("500ms", 0.5),
        ] {
            assert_eq!(
                go_duration(text),
                Some(Duration::from_secs_f64(secs)),
                "{text}"
            );
        }
        for text in ["", "10", "1d", "h", "-1h"] {
            assert_eq!(go_duration(text), None, "{text}");
        }
    }
}
