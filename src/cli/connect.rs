//! `cacertd check --connect`: reach every cluster and ask it, permission by permission
//! (SelfSubjectAccessReview), whether cacertd may do what it will need to; folders must be
//! writable. Names what is missing, and changes nothing.

use std::path::Path;

use super::CliError;
use crate::cluster::access::{EVERY_CLUSTER, PRIMARY, Permission, RESTART_KINDS};
use crate::cluster::{KubeTarget, Target};
use crate::config::Config;
use crate::topology::{Cluster, Role, TargetConfig};

/// What one cluster lacks.
#[derive(serde::Serialize)]
struct Findings {
    missing: Vec<String>,
    notes: Vec<String>,
    checked: usize,
}

/// One cluster, reached (or not: no target of its own).
#[derive(serde::Serialize)]
pub(super) struct Reached {
    cluster: String,
    /// `None`: a remote without a target, reached only through its primary.
    #[serde(flatten)]
    findings: Option<Findings>,
}

/// Reaches every cluster and asks each permission; changes nothing.
pub(super) async fn reach(config: &Config) -> Vec<Reached> {
    let mut out = Vec::new();
    for cluster in config.topology.clusters() {
        let findings = match &cluster.target {
            None => None,
            Some(TargetConfig::Dir { path, observe }) => {
                let mut f = folder(path);
                if let Some(o) = observe {
                    match KubeTarget::connect(
                        &cluster.name,
                        Some(&o.kubeconfig),
                        o.context.as_deref(),
                        &config.kubernetes,
                    )
                    .await
                    {
                        Ok(k) => ask(&k, &observed(), None, &mut f).await,
                        Err(e) => f.missing.push(format!("its observe kubeconfig: {e}")),
                    }
                }
                Some(f)
            }
            Some(_) => Some(match Target::open(cluster, config).await {
                Ok(Target::Kube(k)) => kube(cluster, &k).await,
                Ok(Target::Dir(_)) => unreachable_dir(),
                Err(e) => Findings {
                    missing: vec![format!("cannot connect: {e}")],
                    notes: Vec::new(),
                    checked: 0,
                },
            }),
        };
        out.push(Reached {
            cluster: cluster.name.clone(),
            findings,
        });
    }
    out
}

/// What [`reach`] found, as `check --connect` prints it.
pub(super) fn print(reached: &[Reached]) {
    for r in reached {
        let Some(found) = &r.findings else {
            say!(
                "  {}: no target (a remote reached only through its primary)",
                r.cluster
            );
            continue;
        };
        if found.missing.is_empty() {
            say!(
                "  {}: ok ({} permission(s) checked)",
                r.cluster,
                found.checked
            );
        } else {
            say!("  {}: {} missing", r.cluster, found.missing.len());
            for m in &found.missing {
                say!("      - {m}");
            }
        }
        for n in &found.notes {
            say!("      note: {n}");
        }
    }
}

/// Exit 1 naming every cluster that lacks something.
pub(super) fn verdict(reached: &[Reached]) -> Result<(), CliError> {
    let failing: Vec<&str> = reached
        .iter()
        .filter(|r| r.findings.as_ref().is_some_and(|f| !f.missing.is_empty()))
        .map(|r| r.cluster.as_str())
        .collect();
    match failing.is_empty() {
        true => Ok(()),
        false => Err(CliError::Partial {
            message: format!(
                "{} cannot do what cacertd needs: apply deploy/kubernetes/target-cluster/rbac.yaml \
                 there (and check each kubeconfig), then run `cacertd check --connect` again",
                failing.join(", ")
            ),
            code: 1,
        }),
    }
}

fn unreachable_dir() -> Findings {
    Findings {
        missing: vec!["its target is a folder".into()],
        notes: Vec::new(),
        checked: 0,
    }
}

/// A folder target: writable, or creatable (its nearest existing ancestor is a writable
/// folder).
fn folder(path: &Path) -> Findings {
    use rustix::fs::{Access, access};
    let mut f = Findings {
        missing: Vec::new(),
        notes: Vec::new(),
        checked: 1,
    };
    let writable = |p: &Path| access(p, Access::WRITE_OK | Access::EXEC_OK).is_ok();
    let nearest = path
        .ancestors()
        .find(|p| p.exists() || p.as_os_str().is_empty());
    let ok = match nearest {
        Some(p) if p.as_os_str().is_empty() => writable(Path::new(".")),
        Some(p) => p.is_dir() && writable(p),
        None => false,
    };
    if !ok {
        f.missing.push(format!(
            "{} is not a folder cacertd can write",
            path.display()
        ));
    }
    f
}

/// What an observe kubeconfig needs: read the served cacerts and the published bundles.
fn observed() -> Vec<Permission> {
    vec![PRIMARY[0], EVERY_CLUSTER[0]]
}

/// A Kubernetes cluster: everything its role needs, and restarts in every injected namespace.
async fn kube(cluster: &Cluster, k: &KubeTarget) -> Findings {
    let mut f = Findings {
        missing: Vec::new(),
        notes: Vec::new(),
        checked: 0,
    };
    let mut wanted: Vec<Permission> = Vec::new();
    if cluster.role == Role::Primary {
        wanted.extend(PRIMARY);
    }
    wanted.extend(EVERY_CLUSTER);
    ask(k, &wanted, None, &mut f).await;
    if !f.missing.iter().any(|m| m.starts_with("cannot reach")) {
        match k.injected_namespaces().await {
            Ok(namespaces) => {
                for ns in namespaces {
                    let restarts: Vec<Permission> = RESTART_KINDS
                        .iter()
                        .map(|kind| Permission {
                            verb: "patch",
                            group: "apps",
                            resource: kind,
                            namespace: None,
                            name: None,
                            why: "restart the workloads of an injected namespace",
                            optional: false,
                        })
                        .collect();
                    ask(k, &restarts, Some(&ns), &mut f).await;
                }
            }
            Err(e) => f
                .missing
                .push(format!("cannot list the injected namespaces: {e}")),
        }
    }
    f
}

async fn ask(k: &KubeTarget, wanted: &[Permission], ns: Option<&str>, f: &mut Findings) {
    for p in wanted {
        f.checked += 1;
        let what = || {
            let object = match p.name {
                Some(n) => format!("{}/{n}", p.resource),
                None => p.resource.to_string(),
            };
            let place = match ns.or(p.namespace) {
                Some(n) => format!(" in {n}"),
                None => " across the cluster".to_string(),
            };
            format!("{} {object}{place} ({})", p.verb, p.why)
        };
        match k.may(p, ns).await {
            Ok(true) => {}
            Ok(false) if p.optional => f.notes.push(format!("not allowed: {}", what())),
            Ok(false) => f.missing.push(what()),
            Err(e) => {
                f.missing.push(format!("cannot reach the cluster: {e}"));
                return;
            }
        }
    }
}
