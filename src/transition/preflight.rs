//! What is checked before a transition starts, against the mesh as it runs: the Istio
//! releases known to break a transition (docs/istio.md §12), and whether workload restarts may
//! be skipped (multi-root istiod and proxies that take pushed bundles, docs/istio.md §9, §13).

use std::time::Duration;

use super::Options;
use super::error::{DriveError, target_err};
use crate::cluster::Target;
use crate::config::Config;
use crate::istio_version::{Bearing, IstioVersion, behaviours, ztunnel_behaviours};

/// Whether a primary's istiod hot-reloads a changed `root-cert.pem` (`ISTIO_MULTIROOT_MESH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MultiRoot {
    On,
    Off,
    /// No istiod Deployment (`app=istiod` in istio-system) was found.
    NoIstiod,
    /// A directory target: nothing to look at.
    NotKubernetes,
    Unreachable(String),
}

impl std::fmt::Display for MultiRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MultiRoot::On => f.write_str("on (ISTIO_MULTIROOT_MESH=true)"),
            MultiRoot::Off => f.write_str("off (istiod lacks ISTIO_MULTIROOT_MESH=true)"),
            MultiRoot::NoIstiod => f.write_str("unknown: no istiod Deployment found"),
            MultiRoot::NotKubernetes => f.write_str("unknown: directory target"),
            MultiRoot::Unreachable(e) => write!(f, "unknown: {e}"),
        }
    }
}

/// One primary's istiod as a start reads it, once: the images it runs, with the Istio version
/// each names (`None` for a tag that names no release), and its multi-root hot reload.
#[derive(Clone, Debug)]
pub struct Istiod {
    pub cluster: String,
    pub images: Vec<(String, Option<IstioVersion>)>,
    pub multiroot: MultiRoot,
}

/// Every primary's istiod, each read once (one list of its Deployments); refused where a
/// Kubernetes primary cannot be read, since what it runs decides what is safe.
pub async fn istiods(config: &Config) -> Result<Vec<Istiod>, DriveError> {
    let mut out = Vec::new();
    for cluster in config.topology.primaries() {
        let kube = match Target::open(cluster, config).await {
            Ok(Target::Kube(kube)) => kube,
            Ok(Target::Dir(_)) => {
                out.push(Istiod {
                    cluster: cluster.name.clone(),
                    images: Vec::new(),
                    multiroot: MultiRoot::NotKubernetes,
                });
                continue;
            }
            Err(e) => return Err(target_err(&cluster.name)(e)),
        };
        let (images, multiroot) = kube
            .istiod_images_and_multiroot()
            .await
            .map_err(target_err(&cluster.name))?;
        out.push(Istiod {
            cluster: cluster.name.clone(),
            images: images
                .into_iter()
                .map(|image| {
                    let version = IstioVersion::from_image(&image);
                    (image, version)
                })
                .collect(),
            multiroot: match multiroot {
                Some(true) => MultiRoot::On,
                Some(false) => MultiRoot::Off,
                None => MultiRoot::NoIstiod,
            },
        });
    }
    Ok(out)
}

/// A transition is refused where a primary's istiod runs a release known to break it
/// (docs/istio.md §12); what the other known behaviours mean is reported by `start`.
pub(super) async fn refuse_known_breakage(
    config: &Config,
    istiods: &[Istiod],
) -> Result<(), DriveError> {
    let mut refused = Vec::new();
    for Istiod {
        cluster, images, ..
    } in istiods
    {
        for (image, version) in images {
            let Some(version) = *version else { continue };
            for b in behaviours(version) {
                if b.bearing == Bearing::Refuse {
                    refused.push(format!(
                        "{cluster}: istiod {version} ({image}) {} ({})",
                        b.what, b.reference
                    ));
                }
            }
        }
    }
    refused.extend(ztunnel_refusals(config).await?);
    if refused.is_empty() {
        return Ok(());
    }
    Err(DriveError::UnsafeForMesh(format!(
        "a trust transition would break mTLS with this Istio: {}",
        refused.join("; ")
    )))
}

/// ztunnel releases that would break a transition, in every primary and remote where it runs.
async fn ztunnel_refusals(config: &Config) -> Result<Vec<String>, DriveError> {
    let mut refused = Vec::new();
    for cluster in config.topology.clusters() {
        let kube = match Target::open(cluster, config).await {
            Ok(Target::Kube(kube)) => kube,
            Ok(Target::Dir(_)) | Err(crate::cluster::TargetError::NoTarget { .. }) => continue,
            Err(e) => return Err(target_err(&cluster.name)(e)),
        };
        for image in kube
            .ztunnel_images()
            .await
            .map_err(target_err(&cluster.name))?
        {
            let Some(version) = IstioVersion::from_image(&image) else {
                continue;
            };
            for b in ztunnel_behaviours(version) {
                refused.push(format!(
                    "{}: ztunnel {version} ({image}) {} ({})",
                    cluster.name, b.what, b.reference
                ));
            }
        }
    }
    Ok(refused)
}

/// `--skip-workload-restarts` leaves proxies to learn the new root from istiod's multi-root
/// hot reload: pushed to them over PCDS, or — with `--wait-for-renewal` — at their next
/// certificate renewal, which `AddNewRoot`'s gate then waits for. Refused unless every
/// Kubernetes primary's istiod has multi-root on, every proxy there and in its remotes takes
/// pushed bundles or the wait is accepted, no ztunnel runs (ambient proxies take one root
/// and no pushes), and the drain covers a renewal of every proxy: without restarts, a proxy
/// presents a certificate of the old signer until it renews, and the old root must stay
/// trusted that long (docs/istio.md §9, §13). Sets the renewal wait in `options`.
pub(super) async fn check_skipped_restarts(
    config: &Config,
    istiods: &[Istiod],
    options: &mut Options,
) -> Result<(), DriveError> {
    if !options.skip_workload_restarts {
        return Ok(());
    }
    let proxies = served_proxies(config, &options.exclude_namespaces).await?;
    if let Some((cluster, z)) = proxies.iter().find(|(_, p)| p.ztunnel) {
        return Err(DriveError::UnsafeForMesh(format!(
            "--skip-workload-restarts cannot be used with ambient mode: ztunnel takes no pushed \
             bundles and trusts only one root ({cluster}: {}); restart workloads",
            z.describe()
        )));
    }
    refuse_without_multiroot(istiods)?;
    let mut renewal = Duration::ZERO;
    for (cluster, p) in &proxies {
        match &p.renewal {
            Ok(r) => renewal = renewal.max(*r),
            Err(e) => {
                return Err(DriveError::UnsafeForMesh(format!(
                    "--skip-workload-restarts: when {cluster}/{} renews its certificate is \
                     unknown: {e}",
                    p.describe()
                )));
            }
        }
    }
    let lacking = without_pushed_bundles(&proxies);
    if !lacking.is_empty() {
        if !options.wait_for_renewal {
            return Err(DriveError::UnsafeForMesh(format!(
                "--skip-workload-restarts needs every proxy to take the trust bundles istiod \
                 pushes (PCDS), but some do not ({}); they would learn the new root only at \
                 their next certificate renewal. Set PROXY_CONFIG_XDS_AGENT: \"true\" in the \
                 mesh config's defaultConfig.proxyMetadata (or the pods' \
                 proxy.istio.io/config annotation) and restart those workloads once, accept a \
                 wait of one renewal ({}) before the new root signs with --wait-for-renewal, \
                 or start without --skip-workload-restarts",
                lacking.join("; "),
                crate::clock::fmt_duration(whole_seconds(renewal))
            )));
        }
        let wait = whole_seconds(renewal).as_secs().max(1);
        options.renewal_wait_seconds = Some(wait);
        // The gate waits that long by design; its timeout counts from there.
        options.gate_timeout_seconds = options.gate_timeout_seconds.saturating_add(wait);
    }
    if Duration::from_secs(options.drain_seconds) < renewal {
        return Err(DriveError::UnsafeForMesh(format!(
            "--skip-workload-restarts: without restarts a proxy presents a certificate of the \
             old signer until it renews, so the old root must stay trusted that long: --drain \
             must be at least {} (the longest renewal among the proxies)",
            crate::clock::fmt_duration(whole_seconds(renewal) + Duration::from_secs(1))
        )));
    }
    Ok(())
}

fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// Multi-root hot reload on every Kubernetes primary's istiod.
fn refuse_without_multiroot(istiods: &[Istiod]) -> Result<(), DriveError> {
    let lacking: Vec<String> = istiods
        .iter()
        .filter(|i| !matches!(i.multiroot, MultiRoot::On | MultiRoot::NotKubernetes))
        .map(|i| format!("{}: {}", i.cluster, i.multiroot))
        .collect();
    if lacking.is_empty() {
        return Ok(());
    }
    Err(DriveError::UnsafeForMesh(format!(
        "--skip-workload-restarts relies on istiod's multi-root hot reload, which is not on \
         everywhere ({}); without it proxies learn the new root only when their certificate is \
         next renewed. Set ISTIO_MULTIROOT_MESH=true on istiod (and PROXY_CONFIG_XDS_AGENT=true \
         for proxies), or restart workloads",
        lacking.join("; ")
    )))
}

/// Every proxy of every Kubernetes primary and the remotes it serves, outside the excluded
/// namespaces, with the cluster it runs in.
async fn served_proxies(
    config: &Config,
    exclude: &[String],
) -> Result<Vec<(String, crate::cluster::Proxy)>, DriveError> {
    let mut out = Vec::new();
    for cluster in config.topology.primaries() {
        let served = std::iter::once(cluster).chain(config.topology.remotes_of(&cluster.name));
        for c in served {
            let kube = match Target::open(c, config).await {
                Ok(Target::Kube(kube)) => kube,
                Ok(Target::Dir(_)) | Err(crate::cluster::TargetError::NoTarget { .. }) => continue,
                Err(e) => return Err(target_err(&c.name)(e)),
            };
            let proxies = kube.proxies().await.map_err(target_err(&c.name))?;
            out.extend(
                proxies
                    .into_iter()
                    .filter(|p| !exclude.contains(&p.namespace))
                    .map(|p| (c.name.clone(), p)),
            );
        }
    }
    Ok(out)
}

/// Per cluster, how many proxies take no pushed bundles, with one named.
fn without_pushed_bundles(proxies: &[(String, crate::cluster::Proxy)]) -> Vec<String> {
    let mut by_cluster: Vec<(&str, usize, &crate::cluster::Proxy)> = Vec::new();
    for (cluster, p) in proxies.iter().filter(|(_, p)| !p.takes_pushed_bundles) {
        match by_cluster.iter_mut().find(|(c, ..)| c == cluster) {
            Some(entry) => entry.1 += 1,
            None => by_cluster.push((cluster, 1, p)),
        }
    }
    by_cluster
        .into_iter()
        .map(|(c, n, first)| format!("{c}: {n} proxies, e.g. {}", first.describe()))
        .collect()
}
