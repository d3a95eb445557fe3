//! What a primary's istiod is configured to do, read from its Deployment's environment:
//! multi-root hot reload (docs/istio.md §9), and where it publishes its trust bundle
//! (docs/istio.md §10) — which the gates then read, as istiod wrote it.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};

use super::{KubeTarget, NAMESPACE, ROOT_CERT_CONFIGMAP};
use crate::cluster::TargetError;
use crate::cluster::retry::retrying;

/// The label istiod puts on the bundle ConfigMaps it creates.
const ISTIOD_LABEL: &str = "istio.io/config=true";
/// The ConfigMap istiod publishes `ca-crl.pem` in (`PILOT_CRL_CONFIGMAP`'s default), and its key.
const CRL_CONFIGMAP: &str = "istio-ca-crl";
const CRL_KEY: &str = "ca-crl.pem";
/// The ClusterTrustBundle istiod writes instead, when told to.
pub const CLUSTER_TRUST_BUNDLE: &str = "istio.io:istiod-ca:root-cert";

/// Where a primary's istiod publishes its bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BundleObjects {
    /// One ConfigMap per namespace istiod manages, named `PILOT_CA_CERT_CONFIGMAP` (by default
    /// `istio-ca-root-cert`; several names when istiod revisions differ), labelled
    /// `istio.io/config=true` as istiod labels the ones it creates: a ConfigMap a namespace
    /// tenant made is not istiod's and neither blocks a gate nor is parsed.
    ConfigMaps(Vec<String>),
    /// The ClusterTrustBundle `istio.io:istiod-ca:root-cert` (`ENABLE_CLUSTER_TRUST_BUNDLE_API`;
    /// istiod then writes no ConfigMaps).
    ClusterTrustBundle,
}

/// The environment of each istiod Deployment, every container's variables together.
pub(super) fn env_of(deployments: &[Deployment]) -> Vec<Vec<(String, String)>> {
    deployments
        .iter()
        .map(|d| {
            d.spec
                .template
                .spec
                .as_ref()
                .into_iter()
                .flat_map(|pod| pod.containers.iter())
                .flat_map(|c| c.env.iter().flatten())
                .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                .collect()
        })
        .collect()
}

/// The image of each istiod Deployment's `discovery` container (its first container when none
/// is named so).
pub(super) fn images_of(deployments: &[Deployment]) -> Vec<String> {
    deployments
        .iter()
        .filter_map(|d| image_of(d.spec.template.spec.as_ref()?, "discovery"))
        .collect()
}

/// Whether every one of `deployments` runs with `ISTIO_MULTIROOT_MESH=true`; `None` for none.
fn multiroot_of(deployments: &[Deployment]) -> Option<bool> {
    let envs = env_of(deployments);
    (!envs.is_empty()).then(|| envs.iter().all(|env| is_true(env, "ISTIO_MULTIROOT_MESH")))
}

/// Where istiod publishes its bundle, from its Deployments; the default where there is none.
pub(super) fn bundle_objects_of(deployments: &[Deployment]) -> BundleObjects {
    let envs = env_of(deployments);
    if envs
        .iter()
        .any(|env| is_true(env, "ENABLE_CLUSTER_TRUST_BUNDLE_API"))
    {
        return BundleObjects::ClusterTrustBundle;
    }
    let mut names: Vec<String> = envs
        .iter()
        .map(|env| {
            value(env, "PILOT_CA_CERT_CONFIGMAP")
                .filter(|v| !v.is_empty())
                .unwrap_or(ROOT_CERT_CONFIGMAP)
                .to_string()
        })
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        names.push(ROOT_CERT_CONFIGMAP.to_string());
    }
    BundleObjects::ConfigMaps(names)
}

impl KubeTarget {
    /// istiod's Deployments (`app=istiod` in istio-system): one list, whatever is read of them.
    pub(super) async fn istiod_deployments(&self) -> Result<Vec<Deployment>, TargetError> {
        let api: Api<Deployment> = Api::namespaced(self.client().clone(), NAMESPACE);
        let params = ListParams::default().labels("app=istiod");
        let list = retrying(self.settings(), "list istiod", || api.list(&params))
            .await
            .map_err(|e| self.error(format!("list deployments app=istiod in {NAMESPACE}"), e))?;
        Ok(list.items)
    }

    /// Whether every istiod Deployment runs with `ISTIO_MULTIROOT_MESH=true` (multi-root hot
    /// reload of `root-cert.pem`): `None` when there is no istiod Deployment to look at.
    pub async fn istiod_multiroot(&self) -> Result<Option<bool>, TargetError> {
        Ok(multiroot_of(&self.istiod_deployments().await?))
    }

    /// The images istiod runs and whether multi-root hot reload is on everywhere, from one
    /// read of its Deployments.
    pub async fn istiod_images_and_multiroot(
        &self,
    ) -> Result<(Vec<String>, Option<bool>), TargetError> {
        let deployments = self.istiod_deployments().await?;
        Ok((images_of(&deployments), multiroot_of(&deployments)))
    }

    /// Where this primary's istiod publishes its bundle; the default where no istiod
    /// Deployment is found.
    pub async fn bundle_objects(&self) -> Result<BundleObjects, TargetError> {
        Ok(bundle_objects_of(&self.istiod_deployments().await?))
    }

    /// The bundles published in this cluster (a primary, or a remote its istiod serves) as
    /// `objects` says, each with where it is: `<namespace>/<ConfigMap name>`, or
    /// `ClusterTrustBundle <name>` (empty when istiod has not written it yet).
    pub async fn published_bundles(
        &self,
        objects: &BundleObjects,
    ) -> Result<Vec<(String, Vec<u8>)>, TargetError> {
        match objects {
            BundleObjects::ConfigMaps(names) => {
                let mut out = Vec::new();
                for name in names {
                    out.extend(self.bundle_config_maps(name).await?);
                }
                Ok(out)
            }
            BundleObjects::ClusterTrustBundle => {
                let pem = self.cluster_trust_bundle().await?;
                Ok(vec![(
                    format!("ClusterTrustBundle {CLUSTER_TRUST_BUNDLE}"),
                    pem.into_bytes(),
                )])
            }
        }
    }

    /// The revocation lists istiod published from `cacerts`' `ca-crl.pem` in this cluster (a
    /// primary, or a remote its istiod serves): `ca-crl.pem` of each ConfigMap named
    /// `PILOT_CRL_CONFIGMAP` (by default `istio-ca-crl`), with where it is (docs/istio.md §14).
    /// (A ClusterTrustBundle replaces only the root ConfigMaps; the lists still go to these.)
    pub async fn published_lists(&self) -> Result<Vec<(String, Vec<u8>)>, TargetError> {
        self.config_maps(CRL_CONFIGMAP, CRL_KEY).await
    }

    async fn bundle_config_maps(&self, name: &str) -> Result<Vec<(String, Vec<u8>)>, TargetError> {
        self.config_maps(name, "root-cert.pem").await
    }

    /// `key` of every ConfigMap named `name` that istiod labelled, with `<namespace>/<name>`.
    async fn config_maps(
        &self,
        name: &str,
        key: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, TargetError> {
        let configmaps: Api<ConfigMap> = Api::all(self.client().clone());
        let params = ListParams::default()
            .fields(&format!("metadata.name={name}"))
            .labels(ISTIOD_LABEL);
        self.list_paged(
            &configmaps,
            params,
            &format!("list configmaps {name} ({ISTIOD_LABEL}) in all namespaces"),
            |cm| {
                let ns = cm.metadata.namespace.unwrap_or_default();
                let pem = cm.data.and_then(|mut d| d.remove(key)).unwrap_or_default();
                Some((format!("{ns}/{name}"), pem.into_bytes()))
            },
        )
        .await
    }

    /// `spec.trustBundle` of istiod's ClusterTrustBundle (v1beta1 since Istio 1.27, v1alpha1
    /// in 1.26); empty when it does not exist. (A version the apiserver does not serve answers
    /// 404 like a missing object, so both are asked.)
    async fn cluster_trust_bundle(&self) -> Result<String, TargetError> {
        for version in ["v1beta1", "v1alpha1"] {
            let resource = ApiResource {
                group: "certificates.k8s.io".into(),
                version: version.into(),
                api_version: format!("certificates.k8s.io/{version}"),
                kind: "ClusterTrustBundle".into(),
                plural: "clustertrustbundles".into(),
            };
            let api: Api<DynamicObject> = Api::all_with(self.client().clone(), &resource);
            let got = retrying(self.settings(), "get clustertrustbundle", || {
                api.get_opt(CLUSTER_TRUST_BUNDLE)
            })
            .await
            .map_err(|e| {
                self.error(
                    format!("get clustertrustbundle {CLUSTER_TRUST_BUNDLE} ({version})"),
                    e,
                )
            })?;
            if let Some(ctb) = got {
                return Ok(ctb.data["spec"]["trustBundle"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string());
            }
        }
        Ok(String::new())
    }
}

/// The image of the container named `name` in a pod template, else of its first container.
pub(super) fn image_of(pod: &k8s_openapi::api::core::v1::PodSpec, name: &str) -> Option<String> {
    pod.containers
        .iter()
        .find(|c| c.name == name)
        .or(pod.containers.first())?
        .image
        .clone()
}

pub(super) fn value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn is_true(env: &[(String, String)], name: &str) -> bool {
    value(env, name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}
