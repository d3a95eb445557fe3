//! Argo Rollouts (`rollouts.argoproj.io`), where their CRD is installed: a Rollout's pods are
//! re-created by setting `spec.restartAt` (what `kubectl argo rollouts restart` does): the
//! controller evicts every pod created before that time, within its PodDisruptionBudgets, and
//! records `status.restartedAt` when done (docs/istio.md §6).

use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;

use super::rollouts::RolloutProgress;
use super::{KubeTarget, Workload};
use crate::cluster::TargetError;
use crate::cluster::retry::retrying;

fn resource() -> ApiResource {
    ApiResource {
        group: "argoproj.io".into(),
        version: "v1alpha1".into(),
        api_version: "argoproj.io/v1alpha1".into(),
        kind: "Rollout".into(),
        plural: "rollouts".into(),
    }
}

impl KubeTarget {
    fn argo_api(&self, ns: Option<&str>) -> Api<DynamicObject> {
        match ns {
            Some(ns) => Api::namespaced_with(self.client().clone(), ns, &resource()),
            None => Api::all_with(self.client().clone(), &resource()),
        }
    }

    /// The Rollouts in `ns` (every namespace with `None`) matching `selector`; none where
    /// Argo Rollouts is not installed (the API answers 404).
    pub(super) async fn argo_rollouts(
        &self,
        ns: Option<&str>,
        selector: &str,
    ) -> Result<Vec<Workload>, TargetError> {
        let api = self.argo_api(ns);
        let params = ListParams::default().labels(selector);
        let scope = ns.map_or("all namespaces".to_string(), |n| format!("namespace {n}"));
        match retrying(self.settings(), "list rollouts", || api.list(&params)).await {
            Ok(list) => Ok(list
                .items
                .into_iter()
                .map(|r| {
                    Workload::argo(
                        r.metadata.namespace.unwrap_or_default(),
                        r.metadata.name.unwrap_or_default(),
                    )
                })
                .collect()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
            Err(e) => Err(self.error(format!("list rollouts.argoproj.io in {scope}"), e)),
        }
    }

    /// Sets the Rollout's `spec.restartAt` to `at`, rounded up to the second the API keeps:
    /// every pod created before it is re-created.
    pub(super) async fn restart_argo(
        &self,
        w: &Workload,
        at: time::OffsetDateTime,
    ) -> Result<(), TargetError> {
        let api = self.argo_api(Some(&w.namespace));
        let at = at.to_offset(time::UtcOffset::UTC);
        let second = at.replace_nanosecond(0).unwrap_or(at)
            + time::Duration::seconds(i64::from(at.nanosecond() > 0));
        let stamp = second
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let body = json!({"spec": {"restartAt": stamp}});
        let patch = Patch::Merge(&body);
        let params = PatchParams::default();
        retrying(self.settings(), "patch rollout", || {
            api.patch(&w.name, &params, &patch)
        })
        .await
        .map(|_| ())
        .map_err(|e| self.error(format!("restart {w}"), e))
    }

    /// Where workload `w`, a Rollout, stands.
    pub(super) async fn argo_progress(&self, w: &Workload) -> Result<RolloutProgress, TargetError> {
        let api = self.argo_api(Some(&w.namespace));
        let r = retrying(self.settings(), "get rollout", || api.get(&w.name))
            .await
            .map_err(|e| self.error(format!("get {w}"), e))?;
        Ok(progress(&r))
    }

    /// Where every Rollout in `ns` (every namespace with `None`) stands, by namespace and name:
    /// one list however many are waited for.
    pub(super) async fn argo_progress_listed(
        &self,
        ns: Option<&str>,
    ) -> Result<Vec<((String, String), RolloutProgress)>, TargetError> {
        let api = self.argo_api(ns);
        let scope = ns.map_or("all namespaces".to_string(), |n| format!("namespace {n}"));
        let params = ListParams::default();
        let list = retrying(self.settings(), "list rollouts", || api.list(&params))
            .await
            .map_err(|e| self.error(format!("list rollouts.argoproj.io in {scope}"), e))?;
        Ok(list
            .items
            .iter()
            .map(|r| {
                let key = (
                    r.metadata.namespace.clone().unwrap_or_default(),
                    r.metadata.name.clone().unwrap_or_default(),
                );
                (key, progress(r))
            })
            .collect())
    }
}

/// Done once the controller reports a restart at or after the one asked for.
fn progress(r: &DynamicObject) -> RolloutProgress {
    let when = |v: &serde_json::Value| {
        v.as_str().and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    let asked = when(&r.data["spec"]["restartAt"]);
    let done = when(&r.data["status"]["restartedAt"]);
    RolloutProgress {
        generation: r.metadata.generation.unwrap_or(0),
        done: match (asked, done) {
            (Some(asked), Some(done)) if done >= asked => Ok(()),
            (None, _) => Ok(()),
            (Some(asked), _) => Err(format!(
                "waiting for Argo Rollouts to re-create the pods created before {asked}"
            )),
        },
        failed: None,
    }
}
