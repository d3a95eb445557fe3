//! Rollouts: the workloads a restart works on (Deployments, DaemonSets, StatefulSets), how
//! each kind's progress is judged as `kubectl rollout status` judges it, and the restart
//! itself (docs/istio.md §6).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use super::{KubeTarget, NAMESPACE};

/// How ztunnel's chart labels its DaemonSet.
const ZTUNNEL_SELECTOR: &str = "app.kubernetes.io/name=ztunnel";
/// How istiod labels the waypoints it deploys.
const WAYPOINT_SELECTOR: &str = "gateway.istio.io/managed=istio.io-mesh-controller";
use crate::cluster::TargetError;
use crate::cluster::retry::retrying;
use crate::pki::fmt_time;

/// Kinds `kubectl rollout restart` works on (docs/istio.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutKind {
    Deployment,
    DaemonSet,
    StatefulSet,
    /// An Argo Rollout (`rollouts.argoproj.io`), where that CRD is installed.
    #[serde(rename = "rollout")]
    ArgoRollout,
}

impl RolloutKind {
    pub fn name(self) -> &'static str {
        match self {
            RolloutKind::Deployment => "deployment",
            RolloutKind::DaemonSet => "daemonset",
            RolloutKind::StatefulSet => "statefulset",
            RolloutKind::ArgoRollout => "rollout",
        }
    }
}

/// One restartable workload, as a listing found it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Workload {
    pub kind: RolloutKind,
    pub namespace: String,
    pub name: String,
    /// Why a restart must be refused, as the listing read it (a paused Deployment, the
    /// OnDelete strategy): checked before the restart, so no second read is needed.
    #[serde(skip)]
    refusal: Option<&'static str>,
}

/// The same workload, whatever its listing read of it.
impl PartialEq for Workload {
    fn eq(&self, other: &Self) -> bool {
        (self.kind, &self.namespace, &self.name) == (other.kind, &other.namespace, &other.name)
    }
}

impl Eq for Workload {}

impl Workload {
    fn listed<K: RolledOut>(kind: RolloutKind, item: &K) -> Self
    where
        K::DynamicType: Default,
    {
        Workload {
            kind,
            namespace: item.meta().namespace.clone().unwrap_or_default(),
            name: item.meta().name.clone().unwrap_or_default(),
            refusal: item.refusal(),
        }
    }

    /// Why a restart of it must be refused, if it must.
    pub fn refusal(&self) -> Option<&'static str> {
        self.refusal
    }

    /// An Argo Rollout: never refused (its controller re-creates pods whatever the strategy).
    pub(super) fn argo(namespace: String, name: String) -> Self {
        Workload {
            kind: RolloutKind::ArgoRollout,
            namespace,
            name,
            refusal: None,
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind.name(), self.namespace, self.name)
    }
}

mod progress;
use progress::RolledOut;
pub(super) use progress::RolloutProgress;

impl KubeTarget {
    async fn progress(&self, w: &Workload) -> Result<RolloutProgress, TargetError> {
        Ok(match w.kind {
            RolloutKind::Deployment => self.get_workload::<Deployment>(w).await?.progress(),
            RolloutKind::DaemonSet => self.get_workload::<DaemonSet>(w).await?.progress(),
            RolloutKind::StatefulSet => self.get_workload::<StatefulSet>(w).await?.progress(),
            RolloutKind::ArgoRollout => self.argo_progress(w).await?,
        })
    }

    /// Where every workload of `kind` in `ns` (every namespace with `None`) stands, from one
    /// list.
    async fn progress_listed(
        &self,
        kind: RolloutKind,
        ns: Option<&str>,
    ) -> Result<Vec<((String, String), RolloutProgress)>, TargetError> {
        Ok(match kind {
            RolloutKind::Deployment => self.list_progress::<Deployment>(kind, ns).await?,
            RolloutKind::DaemonSet => self.list_progress::<DaemonSet>(kind, ns).await?,
            RolloutKind::StatefulSet => self.list_progress::<StatefulSet>(kind, ns).await?,
            RolloutKind::ArgoRollout => self.argo_progress_listed(ns).await?,
        })
    }

    async fn list_progress<K: RolledOut>(
        &self,
        kind: RolloutKind,
        ns: Option<&str>,
    ) -> Result<Vec<((String, String), RolloutProgress)>, TargetError>
    where
        K::DynamicType: Default,
    {
        Ok(self
            .list::<K>(kind, ns, "")
            .await?
            .iter()
            .map(|item| {
                let key = (
                    item.meta().namespace.clone().unwrap_or_default(),
                    item.meta().name.clone().unwrap_or_default(),
                );
                (key, item.progress())
            })
            .collect())
    }

    /// Where each of `ws` (all of one kind) stands: a read of the one workload, or one list
    /// (of its namespace when they share one) for several; a workload the list lacks is read
    /// on its own, so that its absence is reported as a read reports it.
    async fn progress_of(
        &self,
        kind: RolloutKind,
        ws: &[&Workload],
    ) -> Result<Vec<RolloutProgress>, TargetError> {
        if let [w] = ws {
            return Ok(vec![self.progress(w).await?]);
        }
        let ns = ws.first().map(|w| w.namespace.as_str());
        let scope = ns.filter(|n| ws.iter().all(|w| w.namespace == *n));
        let mut listed: std::collections::HashMap<_, _> = self
            .progress_listed(kind, scope)
            .await?
            .into_iter()
            .collect();
        let mut out = Vec::with_capacity(ws.len());
        for w in ws {
            out.push(
                match listed.remove(&(w.namespace.clone(), w.name.clone())) {
                    Some(p) => p,
                    None => self.progress(w).await?,
                },
            );
        }
        Ok(out)
    }

    /// Reads a workload as the type its kind names.
    async fn get_workload<K: RolledOut>(&self, w: &Workload) -> Result<K, TargetError>
    where
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &w.namespace);
        retrying(&self.settings, &format!("get {}", w.kind.name()), || {
            api.get(&w.name)
        })
        .await
        .map_err(|e| self.error(format!("get {w}"), e))
    }

    /// Restarts a workload the way `kubectl rollout restart` does: a strategic merge patch of
    /// `spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"]`. Refused, as
    /// kubectl refuses them, for paused Deployments and the OnDelete strategy (as the listing
    /// that found `w` read it).
    pub async fn restart(&self, w: &Workload, at: time::OffsetDateTime) -> Result<(), TargetError> {
        if w.refusal.is_some() {
            return Err(self.refused(w));
        }
        let action = format!("restart {w}");
        // Unlike kubectl's whole seconds, the time keeps its fraction: a second restart within
        // the same second (two phases in quick succession) must still change the template, or
        // it would replace no pod while its rollout status reads "done".
        let at = at.to_offset(time::UtcOffset::UTC);
        let stamp = at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| fmt_time(at));
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": stamp
        }}}}});
        match w.kind {
            RolloutKind::Deployment => self.patch::<Deployment>(w, &action, &patch).await,
            RolloutKind::DaemonSet => self.patch::<DaemonSet>(w, &action, &patch).await,
            RolloutKind::StatefulSet => self.patch::<StatefulSet>(w, &action, &patch).await,
            RolloutKind::ArgoRollout => self.restart_argo(w, at).await,
        }
    }

    /// The refusal of a restart of `w`, as kubectl refuses it (a paused Deployment, the
    /// OnDelete strategy).
    pub fn refused(&self, w: &Workload) -> TargetError {
        TargetError::Refused {
            target: self.describe(),
            action: format!("restart {w}"),
            reason: w.refusal.unwrap_or("refused").into(),
        }
    }

    /// Applies `patch` (strategic merge) to workload `w`.
    async fn patch<K: RolledOut>(
        &self,
        w: &Workload,
        action: &str,
        patch: &serde_json::Value,
    ) -> Result<(), TargetError>
    where
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &w.namespace);
        let params = PatchParams::default();
        let patch = Patch::Strategic(patch);
        retrying(&self.settings, &format!("patch {}", w.kind.name()), || {
            api.patch(&w.name, &params, &patch)
        })
        .await
        .map(|_| ())
        .map_err(|e| self.error(action, e))
    }

    /// Waits until the rollouts of `ws` are complete, as `kubectl rollout status` judges each.
    /// Each poll reads every kind still rolling out once (a list where several are), so the
    /// API calls do not grow with the number of workloads. The first rollout the controller
    /// gives up on ends the wait.
    pub async fn wait_rollouts(
        &self,
        ws: &[Workload],
        timeout: Duration,
    ) -> Result<(), TargetError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Quick rollouts are seen quickly; long ones are polled once a second.
        let mut pause = Duration::from_millis(10);
        let mut pending: Vec<&Workload> = ws.iter().collect();
        loop {
            let mut still = Vec::new();
            for kind in [
                RolloutKind::Deployment,
                RolloutKind::DaemonSet,
                RolloutKind::StatefulSet,
                RolloutKind::ArgoRollout,
            ] {
                let of_kind: Vec<&Workload> =
                    pending.iter().copied().filter(|w| w.kind == kind).collect();
                if of_kind.is_empty() {
                    continue;
                }
                for (w, p) in of_kind.iter().zip(self.progress_of(kind, &of_kind).await?) {
                    if let Some(reason) = p.failed {
                        return Err(TargetError::Refused {
                            target: self.describe(),
                            action: format!("wait for {w}"),
                            reason,
                        });
                    }
                    if let Err(why) = p.done {
                        still.push((*w, p.generation, why));
                    }
                }
            }
            let Some((first, generation, why)) = still.first() else {
                return Ok(());
            };
            if tokio::time::Instant::now() >= deadline {
                let others = match still.len() - 1 {
                    0 => String::new(),
                    n => format!(" and {n} more"),
                };
                return Err(TargetError::RolloutTimeout {
                    target: self.describe(),
                    workload: format!("{first} (generation {generation}){others}"),
                    timeout: humantime::format_duration(timeout).to_string(),
                    pending: why.clone(),
                });
            }
            pending = still.iter().map(|(w, _, _)| *w).collect();
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// istiod: Deployments in istio-system labelled `app=istiod`.
    pub async fn istiod(&self) -> Result<Vec<Workload>, TargetError> {
        self.listed::<Deployment>(RolloutKind::Deployment, Some(NAMESPACE), "app=istiod")
            .await
    }

    /// What ambient mode runs beside the workloads, restarted with the gateways (after
    /// istiod, before the workloads; docs/istio.md §11): ztunnel (a DaemonSet labelled
    /// `app.kubernetes.io/name=ztunnel`, in istio-system or kube-system) and the waypoints
    /// (Deployments labelled `gateway.istio.io/managed=istio.io-mesh-controller`).
    pub async fn ambient_infrastructure(&self) -> Result<Vec<Workload>, TargetError> {
        let mut out = self
            .listed::<DaemonSet>(RolloutKind::DaemonSet, None, ZTUNNEL_SELECTOR)
            .await?;
        out.extend(
            self.listed::<Deployment>(RolloutKind::Deployment, None, WAYPOINT_SELECTOR)
                .await?,
        );
        Ok(out)
    }

    /// The image of each ztunnel DaemonSet (its `istio-proxy` container, else its first).
    pub async fn ztunnel_images(&self) -> Result<Vec<String>, TargetError> {
        Ok(self
            .list::<DaemonSet>(RolloutKind::DaemonSet, None, ZTUNNEL_SELECTOR)
            .await?
            .iter()
            .filter_map(|d| super::istiod::image_of(d.spec.template.spec.as_ref()?, "istio-proxy"))
            .collect())
    }

    /// Gateways (east-west, ingress, egress) selected by `selector` in every namespace.
    pub async fn gateways(&self, selector: &str) -> Result<Vec<Workload>, TargetError> {
        self.workloads(None, selector).await
    }

    /// Every Deployment, DaemonSet and StatefulSet of the namespaces with sidecar injection
    /// (`istio-injection=enabled` or an `istio.io/rev` label), except those in `exclude`.
    pub async fn injected_workloads(
        &self,
        exclude_selector: Option<&str>,
    ) -> Result<Vec<Workload>, TargetError> {
        let namespaces = self.injected_namespaces().await?;
        if namespaces.is_empty() {
            return Ok(Vec::new());
        }
        // One list per kind across the cluster, not one per namespace: the API calls stay
        // the same however many namespaces are injected.
        let selector = exclude_selector
            .map(|s| format!("!{s}"))
            .unwrap_or_default();
        let mut out = self.workloads(None, &selector).await?;
        out.retain(|w| namespaces.contains(&w.namespace));
        out.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        Ok(out)
    }

    /// The namespaces with sidecar injection (`istio-injection=enabled` or an `istio.io/rev`
    /// label), from one list of namespaces.
    pub async fn injected_namespaces(&self) -> Result<Vec<String>, TargetError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        self.list_paged(&api, ListParams::default(), "list namespaces", |ns| {
            let labels = ns.metadata.labels.as_ref();
            let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
            let injected =
                label("istio-injection") == Some("enabled") || label("istio.io/rev").is_some();
            if injected { ns.metadata.name } else { None }
        })
        .await
    }

    /// The workloads of every kind in `ns` (every namespace with `None`) that `selector`
    /// selects.
    async fn workloads(
        &self,
        ns: Option<&str>,
        selector: &str,
    ) -> Result<Vec<Workload>, TargetError> {
        let mut out = self
            .listed::<Deployment>(RolloutKind::Deployment, ns, selector)
            .await?;
        out.extend(
            self.listed::<DaemonSet>(RolloutKind::DaemonSet, ns, selector)
                .await?,
        );
        out.extend(
            self.listed::<StatefulSet>(RolloutKind::StatefulSet, ns, selector)
                .await?,
        );
        out.extend(self.argo_rollouts(ns, selector).await?);
        Ok(out)
    }

    /// The workloads of one kind in `ns` (every namespace with `None`) that `selector` selects.
    async fn listed<K: RolledOut>(
        &self,
        kind: RolloutKind,
        ns: Option<&str>,
        selector: &str,
    ) -> Result<Vec<Workload>, TargetError>
    where
        K::DynamicType: Default,
    {
        Ok(self
            .list::<K>(kind, ns, selector)
            .await?
            .iter()
            .map(|item| Workload::listed(kind, item))
            .collect())
    }

    /// One list of `kind` in `ns` (every namespace with `None`), selected by `selector`.
    async fn list<K: RolledOut>(
        &self,
        kind: RolloutKind,
        ns: Option<&str>,
        selector: &str,
    ) -> Result<Vec<K>, TargetError>
    where
        K::DynamicType: Default,
    {
        let api: Api<K> = match ns {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let params = ListParams::default().labels(selector);
        let plural = format!("{}s", kind.name());
        let scope = ns.map_or("all namespaces".to_string(), |n| format!("namespace {n}"));
        let what = match selector {
            "" => String::new(),
            s => format!(" labelled {s}"),
        };
        self.list_paged(
            &api,
            params,
            &format!("list {plural}{what} in {scope}"),
            Some,
        )
        .await
    }
}
