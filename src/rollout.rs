//! Restarts in the order Istio needs (docs/istio.md §5): istiod first, then the gateways (with
//! ambient mode's ztunnel and waypoints), then the workloads — of the primary and of every remote it serves — waiting for each stage to
//! finish rolling out before the next begins. Restarting gateways before istiod serves the new
//! material leaves them with "unknown authority".

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cluster::{KubeTarget, Target, TargetError, Workload};
use crate::config::Config;
use crate::topology::{Cluster, Role};

/// The three stages of a restart, in the order they must happen (docs/istio.md §5). Also
/// what a transition records of each cluster's restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Istiod,
    Gateways,
    Workloads,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Istiod, Stage::Gateways, Stage::Workloads];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Istiod => "istiod",
            Stage::Gateways => "gateways",
            Stage::Workloads => "workloads",
        }
    }
}

/// One restarted workload.
#[derive(Clone, Debug, Serialize)]
pub struct Restarted {
    pub stage: Stage,
    pub cluster: String,
    pub workload: Workload,
    pub waited: bool,
    /// Only found, not restarted (`restart --dry-run`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// What to restart and how.
#[derive(Clone, Debug)]
pub struct RestartOptions {
    pub stages: Vec<Stage>,
    /// Wait for each stage's rollouts to finish (`kubectl rollout status`) before the next.
    pub wait: bool,
    /// Label selector for gateways.
    pub gateway_selector: String,
    /// Namespaces whose workloads are left alone (istiod and gateways are still restarted).
    pub exclude_namespaces: Vec<String>,
    /// Find what each stage would restart, and restart nothing.
    pub dry_run: bool,
}

impl Default for RestartOptions {
    fn default() -> Self {
        RestartOptions {
            stages: Stage::ALL.to_vec(),
            wait: true,
            gateway_selector: DEFAULT_GATEWAY_SELECTOR.to_string(),
            exclude_namespaces: Vec::new(),
            dry_run: false,
        }
    }
}

/// The labels Istio's gateway charts put on ingress, east-west and egress gateways.
pub const DEFAULT_GATEWAY_SELECTOR: &str =
    "istio in (ingressgateway,eastwestgateway,egressgateway)";

/// Restarts the mesh served by `primary`: its istiod, then gateways and workloads of the
/// primary and of its remotes. Stops at the first failure (nothing later is restarted).
pub async fn restart_primary(
    config: &Config,
    primary: &Cluster,
    opts: &RestartOptions,
    now: OffsetDateTime,
) -> Result<Vec<Restarted>, TargetError> {
    let members = members(config, primary).await?;
    let mut done = Vec::new();
    let mut gateways_seen: Vec<(String, Workload)> = Vec::new();
    for stage in Stage::ALL.into_iter().filter(|s| opts.stages.contains(s)) {
        // Which workloads, per cluster, this stage restarts.
        let mut batch: Vec<(&str, &KubeTarget, Vec<Workload>)> = Vec::new();
        for (cluster, target) in &members {
            let workloads = match stage {
                Stage::Istiod if cluster.role == Role::Primary => target.istiod().await?,
                Stage::Istiod => Vec::new(),
                Stage::Gateways => {
                    let g = gateway_stage(target, opts).await?;
                    gateways_seen.extend(g.iter().map(|w| (cluster.name.clone(), w.clone())));
                    g
                }
                Stage::Workloads => {
                    // Restarted with the gateways, whether in this call or an earlier one.
                    let infrastructure = match gateways_seen.iter().any(|(c, _)| c == &cluster.name)
                    {
                        true => Vec::new(),
                        false => gateway_stage(target, opts).await?,
                    };
                    let mut w = target.injected_workloads(None).await?;
                    w.retain(|w| {
                        !gateways_seen.contains(&(cluster.name.clone(), w.clone()))
                            && !infrastructure.contains(w)
                            && !opts.exclude_namespaces.contains(&w.namespace)
                    });
                    w
                }
            };
            batch.push((&cluster.name, target, workloads));
        }
        // A restart kubectl would refuse stops the stage before anything in it restarts.
        for (_, target, workloads) in batch.iter().filter(|_| !opts.dry_run) {
            if let Some(w) = workloads.iter().find(|w| w.refusal().is_some()) {
                return Err(target.refused(w));
            }
        }
        for (cluster, target, workloads) in batch.iter().filter(|_| !opts.dry_run) {
            for w in workloads {
                tracing::info!(cluster = %cluster, stage = stage.name(), workload = %w, "restarting");
                target.restart(w, now).await?;
            }
        }
        if opts.wait && !opts.dry_run {
            let timeout = config.kubernetes.rollout_timeout;
            // Every cluster at once, each polling its own rollouts; the first failure ends
            // the stage: no point waiting out the others' timeouts.
            futures::future::try_join_all(
                batch
                    .iter()
                    .filter(|(_, _, workloads)| !workloads.is_empty())
                    .map(|(_, target, workloads)| target.wait_rollouts(workloads, timeout)),
            )
            .await?;
        }
        for (cluster, _, workloads) in batch {
            done.extend(workloads.into_iter().map(|workload| Restarted {
                stage,
                cluster: cluster.to_string(),
                workload,
                waited: opts.wait && !opts.dry_run,
                dry_run: opts.dry_run,
            }));
        }
    }
    Ok(done)
}

/// What the gateways stage restarts in one cluster: the gateways `opts` selects, ztunnel and
/// the waypoints.
async fn gateway_stage(
    target: &KubeTarget,
    opts: &RestartOptions,
) -> Result<Vec<Workload>, TargetError> {
    let mut g = target.gateways(&opts.gateway_selector).await?;
    for w in target.ambient_infrastructure().await? {
        if !g.contains(&w) {
            g.push(w);
        }
    }
    Ok(g)
}

/// The clusters a primary's restart reaches: the primary (a Kubernetes target, or refused) and
/// its remotes with a Kubernetes target (the others are skipped with a warning).
async fn members<'a>(
    config: &'a Config,
    primary: &'a Cluster,
) -> Result<Vec<(&'a Cluster, KubeTarget)>, TargetError> {
    let mut members: Vec<(&Cluster, KubeTarget)> = Vec::new();
    for cluster in std::iter::once(primary).chain(config.topology.remotes_of(&primary.name)) {
        let opened = match Target::open(cluster, config).await {
            Ok(t) => t,
            Err(TargetError::NoTarget { .. }) if cluster.role == Role::Remote => {
                tracing::warn!(cluster = %cluster.name, "remote has no target; its workloads are not restarted");
                continue;
            }
            Err(e) => return Err(e),
        };
        match opened {
            Target::Kube(k) => members.push((cluster, k)),
            Target::Dir(_) => {
                if cluster.role == Role::Primary {
                    return Err(TargetError::Refused {
                        target: format!("cluster {}", cluster.name),
                        action: "restart".into(),
                        reason: "its target is a directory; restarts need a Kubernetes target"
                            .into(),
                    });
                }
                tracing::warn!(cluster = %cluster.name, "remote has no Kubernetes target; its workloads are not restarted");
            }
        }
    }
    Ok(members)
}
