//! Reaching a cluster: a kubeconfig file and context, or the kubeconfig of an Istio remote
//! secret (verified TLS only, no proxy, matching what `cacertd.toml` pins), and the client
//! built from it.

use std::path::Path;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Config;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use zeroize::Zeroize;

use super::{KubeTarget, NAMESPACE};
use crate::cluster::TargetError;
use crate::cluster::retry::retrying;
use crate::config::KubeSettings;
use crate::topology::RemotePin;

/// Whether `cluster` is reached without verified TLS for the first time in this process: said
/// once, not at every connection (a transition opens each cluster many times).
fn first_time_insecure(cluster: &str) -> bool {
    static WARNED: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    WARNED
        .lock()
        .map_or(true, |mut warned| warned.insert(cluster.to_string()))
}

impl KubeTarget {
    /// Builds a client from a kubeconfig file and context, or the default loading rules
    /// (KUBECONFIG, ~/.kube/config, in-cluster), with the configured per-call timeouts.
    pub async fn connect(
        cluster: &str,
        kubeconfig: Option<&Path>,
        context: Option<&str>,
        settings: &KubeSettings,
    ) -> Result<Self, TargetError> {
        let config_err = |message: String| TargetError::KubeConfig {
            target: format!("cluster {cluster}"),
            message,
        };
        let options = KubeConfigOptions {
            context: context.map(str::to_string),
            ..Default::default()
        };
        // A kubeconfig is read here, not by the client's own loading rules, so that a file that
        // does not parse is reported by position: the parser's message quotes the text, which
        // may be a token.
        let (read, source) = match kubeconfig {
            Some(path) => (Kubeconfig::read_from(path), path.display().to_string()),
            None => (
                Kubeconfig::read(),
                "the default kubeconfig (KUBECONFIG, ~/.kube/config)".to_string(),
            ),
        };
        let config = match read {
            Ok(kc) => Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| config_err(format!("{source}: {}", kubeconfig_error(&e))))?,
            // No kubeconfig at all, and none named: inside a pod, its service account. A
            // kubeconfig that exists but cannot be read is an error, never a reason to write
            // to whatever cluster the pod runs in.
            Err(e) if kubeconfig.is_none() && context.is_none() && no_such_file(&e) => {
                Config::incluster().map_err(|in_pod| {
                    config_err(format!(
                        "{source}: {}; and not in a pod: {in_pod}",
                        kubeconfig_error(&e)
                    ))
                })?
            }
            Err(e) => return Err(config_err(format!("{source}: {}", kubeconfig_error(&e)))),
        };
        if let Some(why) = unverified_transport(&config) {
            if !settings.insecure_transport {
                return Err(config_err(format!(
                    "{why}: the intermediate key cacertd writes, and the credentials it sends, \
                     would cross the network readable and changeable by anyone on the path. Use \
                     an https:// server with its CA, or set [kubernetes] \
                     danger_insecure_transport = true if every path is protected otherwise (a \
                     loopback tunnel)"
                )));
            }
            if first_time_insecure(cluster) {
                tracing::warn!(cluster, reason = %why, "reaching the cluster without verified TLS (danger_insecure_transport)");
            }
        }
        Self::from_config(cluster, config, settings, config_err)
    }

    /// Connects to `cluster` with the kubeconfig Istio's remote secret for it holds in the
    /// cluster `via` reaches: Secret `istio-remote-secret-<cluster>` in istio-system (the name
    /// istioctl gives it), else any Secret there labelled `istio/multiCluster=true` with a key
    /// named after the cluster.
    pub async fn connect_via_remote_secret(
        cluster: &str,
        via: &KubeTarget,
        pin: &RemotePin,
        settings: &KubeSettings,
    ) -> Result<Self, TargetError> {
        let secrets = via.secrets();
        let by_name = format!("istio-remote-secret-{cluster}");
        let named = retrying(settings, "get remote secret", || secrets.get_opt(&by_name))
            .await
            .map_err(|e| via.error(format!("get secret {NAMESPACE}/{by_name}"), e))?;
        let kubeconfig = match named.and_then(|s| take_key(s, cluster)) {
            Some(found) => Some(found),
            None => vouched_remote_secret(cluster, via, settings).await?,
        };
        let config_err = |message: String| TargetError::KubeConfig {
            target: format!("cluster {cluster}"),
            message,
        };
        let Some(ByteString(mut yaml)) = kubeconfig else {
            return Err(config_err(format!(
                "no Istio remote secret for it in {} (expected {NAMESPACE}/{by_name}, or a Secret \
                 labelled istio/multiCluster=true and annotated networking.istio.io/cluster={cluster} \
                 with a key {cluster:?})",
                via.describe()
            )));
        };
        let parsed = std::str::from_utf8(&yaml)
            .map_err(|_| config_err("the remote secret's kubeconfig is not UTF-8".into()))
            .and_then(|text| {
                Kubeconfig::from_yaml(text).map_err(|e| {
                    config_err(format!(
                        "the remote secret's kubeconfig: {}",
                        kubeconfig_error(&e)
                    ))
                })
            });
        yaml.zeroize();
        let kc = parsed?;
        check_remote_kubeconfig(&kc, pin).map_err(|reason| {
            config_err(format!(
                "refusing the kubeconfig in {}'s remote secret: {reason}",
                via.describe()
            ))
        })?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| {
                config_err(format!(
                    "the remote secret's kubeconfig: {}",
                    kubeconfig_error(&e)
                ))
            })?;
        Self::from_config(cluster, config, settings, config_err)
    }
}

/// The kubeconfig for `cluster` in a Secret labelled `istio/multiCluster=true` of `via` that
/// istioctl's cluster annotation vouches for: other names count only then, so a Secret
/// someone merely labelled cannot redirect cacertd. Every other kubeconfig read is wiped.
async fn vouched_remote_secret(
    cluster: &str,
    via: &KubeTarget,
    settings: &KubeSettings,
) -> Result<Option<ByteString>, TargetError> {
    let secrets = via.secrets();
    let params = ListParams::default().labels("istio/multiCluster=true");
    let list = match retrying(settings, "list remote secrets", || secrets.list(&params)).await {
        Ok(list) => list,
        // With only the named Secret granted, "not found" is the useful answer.
        Err(kube::Error::Api(s)) if s.code == 403 => return Ok(None),
        Err(e) => {
            return Err(via.error(
                format!("list secrets labelled istio/multiCluster=true in {NAMESPACE}"),
                e,
            ));
        }
    };
    let mut kubeconfig = None;
    for s in list.items {
        let vouched = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("networking.istio.io/cluster"))
            .is_some_and(|c| c == cluster);
        let found = take_key(s, cluster);
        if vouched && kubeconfig.is_none() {
            kubeconfig = found;
        } else if let Some(mut other) = found {
            other.0.zeroize();
        }
    }
    Ok(kubeconfig)
}

/// Why a kubeconfig could not be used, saying where and never quoting it: the YAML parser's
/// own message shows the text around the fault, which may be a bearer token or a client key,
/// and would reach the terminal, the logs, the audit log and `/status`.
fn kubeconfig_error(e: &KubeconfigError) -> String {
    match e {
        KubeconfigError::Parse(parse) => match parse.location() {
            Some(at) => format!(
                "not a valid kubeconfig: malformed YAML at line {}, column {}",
                at.line(),
                at.column()
            ),
            None => "not a valid kubeconfig: malformed YAML".into(),
        },
        other => other.to_string(),
    }
}

/// Whether `e` says only that there is no kubeconfig where the default rules look.
fn no_such_file(e: &KubeconfigError) -> bool {
    match e {
        KubeconfigError::FindPath => true,
        KubeconfigError::ReadConfig(io, _) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Removes one key from a Secret's data, wiping every other value.
fn take_key(secret: Secret, key: &str) -> Option<ByteString> {
    let mut data = secret.data?;
    let found = data.remove(key);
    for v in data.values_mut() {
        v.0.zeroize();
    }
    found
}

/// A kubeconfig taken from a Secret in a cluster is data, not configuration to obey: it may
/// not run commands (exec, auth-provider plugins) or read local files (token, certificate and
/// key paths) inside the process that holds the root key. Only inline credentials and
/// certificates are accepted.
/// Why a loaded client configuration would not verify who it talks to, if it would not.
fn unverified_transport(config: &Config) -> Option<String> {
    let shown = crate::config::url_for_messages(&config.cluster_url.to_string());
    if config.cluster_url.scheme_str() != Some("https") {
        return Some(format!("the server {} is not reached over TLS", shown));
    }
    if config.accept_invalid_certs {
        return Some(format!(
            "TLS verification of {} is turned off (insecure-skip-tls-verify)",
            shown
        ));
    }
    None
}

fn check_remote_kubeconfig(kc: &Kubeconfig, pin: &RemotePin) -> Result<(), String> {
    for c in &kc.clusters {
        if let Some(cluster) = &c.cluster {
            let raw = cluster.server.as_deref().unwrap_or("");
            let server = crate::config::url_for_messages(raw);
            if !raw.starts_with("https://") {
                return Err(format!(
                    "cluster {:?} is reached at {server:?}, not over https: the intermediate key \
                     and the token would cross the network in clear text",
                    c.name
                ));
            }
            if cluster.proxy_url.is_some() {
                return Err(format!(
                    "cluster {:?} goes through a proxy (proxy-url), which would see its traffic",
                    c.name
                ));
            }
            if let Some(pinned) = &pin.server
                && pinned.trim_end_matches('/') != raw.trim_end_matches('/')
            {
                return Err(format!(
                    "cluster {:?} is reached at {server}, not at {pinned} as cacertd.toml pins it",
                    c.name
                ));
            }
            if let Some(file) = &pin.ca_file {
                check_pinned_ca(cluster.certificate_authority_data.as_deref(), file)
                    .map_err(|e| format!("cluster {:?}: {e}", c.name))?;
            }
            if cluster.certificate_authority.is_some() {
                return Err(format!(
                    "cluster {:?} names a CA file (certificate-authority)",
                    c.name
                ));
            }
            if cluster.insecure_skip_tls_verify == Some(true) {
                return Err(format!("cluster {:?} disables TLS verification", c.name));
            }
        }
    }
    for u in &kc.auth_infos {
        if let Some(a) = &u.auth_info {
            let forbidden = [
                (a.exec.is_some(), "an exec credential plugin"),
                (a.auth_provider.is_some(), "an auth-provider plugin"),
                (a.token_file.is_some(), "a token file"),
                (a.client_certificate.is_some(), "a client certificate file"),
                (a.client_key.is_some(), "a client key file"),
            ];
            if let Some((_, what)) = forbidden.iter().find(|(present, _)| *present) {
                return Err(format!("user {:?} uses {what}", u.name));
            }
        }
    }
    Ok(())
}

/// The CA a remote secret's kubeconfig carries (`certificate-authority-data`) must be exactly
/// the certificates of the pinned PEM file.
fn check_pinned_ca(data: Option<&str>, file: &Path) -> Result<(), String> {
    use base64::Engine;
    let ders = |pem: &[u8], what: &str| -> Result<Vec<Vec<u8>>, String> {
        let mut ders: Vec<Vec<u8>> = crate::pki::Cert::all_from_pem(pem, what)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|c| c.der().to_vec())
            .collect();
        ders.sort();
        Ok(ders)
    };
    let pinned_pem =
        crate::fsutil::read_pem(file).map_err(|e| format!("the pinned CA file: {e}"))?;
    let pinned = ders(&pinned_pem, &file.display().to_string())?;
    let Some(data) = data else {
        return Err(format!(
            "it carries no certificate-authority-data, but cacertd.toml pins the CA in {}",
            file.display()
        ));
    };
    let carried = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("its certificate-authority-data is not base64: {e}"))?;
    if ders(&carried, "certificate-authority-data")? != pinned {
        return Err(format!(
            "its CA is not the one cacertd.toml pins in {}",
            file.display()
        ));
    }
    Ok(())
}
