//! How each kind's rollout progress is judged, as `kubectl rollout status` judges it, and what
//! makes a restart of it pointless (docs/istio.md §6).

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};

/// The generation and rollout progress of a workload, as `kubectl rollout status` reads it.
pub(in crate::cluster::kube) struct RolloutProgress {
    pub(in crate::cluster::kube) generation: i64,
    /// `Err(pending)` while rolling out.
    pub(in crate::cluster::kube) done: Result<(), String>,
    /// Set when the rollout can no longer finish (a Deployment past its progress deadline).
    pub(in crate::cluster::kube) failed: Option<String>,
}

/// What differs between the kinds a restart works on: how its rollout progress reads, and
/// what makes a restart pointless or refused.
pub(super) trait RolledOut:
    kube::Resource<Scope = kube::core::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
where
    Self::DynamicType: Default,
{
    fn progress(&self) -> RolloutProgress;
    /// Why a restart must not be attempted, if it must not.
    fn refusal(&self) -> Option<&'static str>;
}

/// With the OnDelete strategy a restart annotation replaces no pod, and `kubectl rollout
/// status` refuses to watch it: say so instead of waiting for a rollout that never starts.
const ON_DELETE: &str = "it uses the OnDelete update strategy: a restart would replace no pod; \
                         delete its pods to restart them";

fn on_delete(strategy: Option<&str>) -> Option<&'static str> {
    (strategy == Some("OnDelete")).then_some(ON_DELETE)
}

impl RolledOut for Deployment {
    fn refusal(&self) -> Option<&'static str> {
        (self.spec.paused == Some(true))
            .then_some("the deployment is paused; resume it first (kubectl rollout resume)")
    }

    fn progress(&self) -> RolloutProgress {
        deployment_progress(self)
    }
}

/// DaemonSets and StatefulSets: refused only with the OnDelete strategy.
macro_rules! rolled_out_unless_on_delete {
    ($kind:ty, $done:ident) => {
        impl RolledOut for $kind {
            fn refusal(&self) -> Option<&'static str> {
                on_delete(
                    self.spec
                        .update_strategy
                        .as_ref()
                        .and_then(|u| u.type_.as_deref()),
                )
            }

            fn progress(&self) -> RolloutProgress {
                RolloutProgress {
                    generation: self.metadata.generation.unwrap_or(0),
                    done: $done(self),
                    failed: None,
                }
            }
        }
    };
}

rolled_out_unless_on_delete!(DaemonSet, daemonset_done);
rolled_out_unless_on_delete!(StatefulSet, statefulset_done);

fn deployment_progress(d: &Deployment) -> RolloutProgress {
    let generation = d.metadata.generation.unwrap_or(0);
    let want = d.spec.replicas.unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let observed = st.observed_generation.unwrap_or(0) >= generation;
    // Like `kubectl rollout status`, the condition is read only once the controller has
    // observed this generation: before that it may be left over from the previous rollout
    // (docs/istio.md §6).
    let failed = st
        .conditions
        .iter()
        .flatten()
        .filter(|_| observed)
        .find(|c| {
            c.type_.as_deref() == Some("Progressing")
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        })
        .map(|c| {
            format!(
                "progress deadline exceeded: {}",
                c.message.as_deref().unwrap_or("")
            )
        });
    let done = if !observed {
        Err("waiting for the controller to observe the new generation".to_string())
    } else if st.updated_replicas.unwrap_or(0) < want {
        Err(format!(
            "{} of {want} replicas updated",
            st.updated_replicas.unwrap_or(0)
        ))
    } else if st.replicas.unwrap_or(0) > st.updated_replicas.unwrap_or(0) {
        Err(format!(
            "{} old replicas pending termination",
            st.replicas.unwrap_or(0) - st.updated_replicas.unwrap_or(0)
        ))
    } else if st.available_replicas.unwrap_or(0) < st.updated_replicas.unwrap_or(0) {
        Err(format!(
            "{} of {} updated replicas available",
            st.available_replicas.unwrap_or(0),
            st.updated_replicas.unwrap_or(0)
        ))
    } else {
        Ok(())
    };
    RolloutProgress {
        generation,
        done,
        failed,
    }
}

/// `Err(pending)` while a DaemonSet rolls out.
fn daemonset_done(d: &DaemonSet) -> Result<(), String> {
    let generation = d.metadata.generation.unwrap_or(0);
    let st = d.status.clone().unwrap_or_default();
    if st.observed_generation.unwrap_or(0) < generation {
        Err("waiting for the controller to observe the new generation".to_string())
    } else if st.updated_number_scheduled.unwrap_or(0) < st.desired_number_scheduled {
        Err(format!(
            "{} of {} pods updated",
            st.updated_number_scheduled.unwrap_or(0),
            st.desired_number_scheduled
        ))
    } else if st.number_available.unwrap_or(0) < st.desired_number_scheduled {
        Err(format!(
            "{} of {} updated pods available",
            st.number_available.unwrap_or(0),
            st.desired_number_scheduled
        ))
    } else {
        Ok(())
    }
}

/// `Err(pending)` while a StatefulSet rolls out.
fn statefulset_done(s: &StatefulSet) -> Result<(), String> {
    let generation = s.metadata.generation.unwrap_or(0);
    let want = s.spec.replicas.unwrap_or(1);
    // With a partition, only the ordinals at or above it are updated (kubectl does the same).
    let partition = s
        .spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let st = s.status.clone().unwrap_or_default();
    if st.observed_generation.unwrap_or(0) < generation {
        Err("waiting for the controller to observe the new generation".to_string())
    } else if st.ready_replicas.unwrap_or(0) < want {
        Err(format!(
            "{} of {want} pods ready",
            st.ready_replicas.unwrap_or(0)
        ))
    } else if partition > 0 {
        let need = (want - partition).max(0);
        if st.updated_replicas.unwrap_or(0) < need {
            Err(format!(
                "{} of {need} pods above partition {partition} updated",
                st.updated_replicas.unwrap_or(0)
            ))
        } else {
            Ok(())
        }
    } else if st.updated_replicas.unwrap_or(0) < want {
        Err(format!(
            "{} of {want} pods updated",
            st.updated_replicas.unwrap_or(0)
        ))
    } else if st.update_revision.is_some() && st.current_revision != st.update_revision {
        Err("waiting for the update revision to become current".to_string())
    } else {
        Ok(())
    }
}
