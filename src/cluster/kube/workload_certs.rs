//! How long the workload certificates a primary's istiod signs live (docs/istio.md §13): each
//! proxy asks for its agent's `SECRET_TTL`; istiod signs that lifetime up to its
//! `MAX_WORKLOAD_CERT_TTL` and refuses longer requests, and gives its
//! `DEFAULT_WORKLOAD_CERT_TTL` to a request that names none. An intermediate renewed with less
//! life left than the longest of these would be outlived by certificates it signed.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;

use super::KubeTarget;
use super::proxies::{Proxy, go_duration};
use crate::cluster::TargetError;

const DEFAULT_VAR: &str = "DEFAULT_WORKLOAD_CERT_TTL";
const MAX_VAR: &str = "MAX_WORKLOAD_CERT_TTL";
/// istiod's defaults for the two, and the agent's for `SECRET_TTL`.
const ISTIOD_DEFAULT: Duration = Duration::from_secs(24 * 3600);
const ISTIOD_MAX: Duration = Duration::from_secs(90 * 24 * 3600);
const AGENT_DEFAULT: Duration = Duration::from_secs(24 * 3600);

/// What a primary's istiod signs for workloads: the lifetime given when none is asked for, and
/// the longest it grants. With several istiod revisions, the longest of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigningLimits {
    pub default: Duration,
    pub max: Duration,
}

impl SigningLimits {
    /// From istiod's Deployments; istiod's defaults where a variable is unset or unreadable
    /// (istiod falls back to them too).
    pub(super) fn of(deployments: &[Deployment]) -> Self {
        let mut limits = SigningLimits {
            default: Duration::ZERO,
            max: Duration::ZERO,
        };
        for env in super::istiod::env_of(deployments) {
            let read = |name: &str, fallback: Duration| {
                super::istiod::value(&env, name)
                    .and_then(go_duration)
                    .filter(|d| !d.is_zero())
                    .unwrap_or(fallback)
            };
            limits.default = limits.default.max(read(DEFAULT_VAR, ISTIOD_DEFAULT));
            limits.max = limits.max.max(read(MAX_VAR, ISTIOD_MAX));
        }
        if limits.max.is_zero() {
            limits = SigningLimits {
                default: ISTIOD_DEFAULT,
                max: ISTIOD_MAX,
            };
        }
        limits
    }

    /// The lifetime of the certificate istiod signs for a request of `asked` (zero: none);
    /// `None` when it refuses the request.
    fn signs(&self, asked: Duration) -> Option<Duration> {
        match asked {
            Duration::ZERO => Some(self.default),
            asked if asked > self.max => None,
            asked => Some(asked),
        }
    }
}

/// The longest workload certificate a primary's istiod signs, and what asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LongestWorkloadCert {
    pub ttl: Duration,
    pub source: String,
}

/// The longest certificate istiod with `limits` signs for any of `proxies` (each with its
/// cluster's name), or for a new proxy with the agent's defaults.
pub fn longest_workload_cert<'a>(
    limits: SigningLimits,
    proxies: impl IntoIterator<Item = (&'a str, &'a Proxy)>,
) -> LongestWorkloadCert {
    let show = crate::clock::fmt_duration;
    let mut longest = LongestWorkloadCert {
        ttl: limits.signs(AGENT_DEFAULT).unwrap_or(limits.max),
        source: format!(
            "a proxy with the agent's default SECRET_TTL of {}",
            show(AGENT_DEFAULT)
        ),
    };
    for (cluster, proxy) in proxies {
        let Some(ttl) = limits.signs(proxy.requested_ttl) else {
            continue;
        };
        if ttl <= longest.ttl {
            continue;
        }
        let pod = format!("{cluster}: pod {}/{}", proxy.namespace, proxy.name);
        longest = LongestWorkloadCert {
            ttl,
            source: match proxy.requested_ttl.is_zero() {
                true => format!(
                    "{pod} asks for istiod's {DEFAULT_VAR}, which is {}",
                    show(ttl)
                ),
                false => format!("{pod} asks for certificates of {} (SECRET_TTL)", show(ttl)),
            },
        };
    }
    longest
}

impl KubeTarget {
    /// What this primary's istiod signs for workloads, from one list of its Deployments.
    pub async fn signing_limits(&self) -> Result<SigningLimits, TargetError> {
        Ok(SigningLimits::of(&self.istiod_deployments().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;

    fn istiod(env: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "istiod", "namespace": "istio-system"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [
                {"name": "discovery", "env": env}]}}},
        }))
        .unwrap()
    }

    fn proxy(name: &str, asked: u64) -> Proxy {
        Proxy {
            namespace: "app".into(),
            name: name.into(),
            uid: name.into(),
            owner: None,
            ztunnel: false,
            takes_pushed_bundles: false,
            renewal: Ok(Duration::ZERO),
            requested_ttl: Duration::from_secs(asked),
        }
    }

    #[test]
    fn istiods_limits_come_from_its_environment_with_its_defaults() {
        let defaults = SigningLimits::of(&[istiod(serde_json::json!([]))]);
        assert_eq!(
            defaults,
            SigningLimits {
                default: Duration::from_secs(24 * H),
                max: Duration::from_secs(90 * 24 * H)
            }
        );
        assert_eq!(SigningLimits::of(&[]), defaults);
        let set = SigningLimits::of(&[
            istiod(serde_json::json!([{"name": DEFAULT_VAR, "value": "48h"},
                                      {"name": MAX_VAR, "value": "72h"}])),
            istiod(serde_json::json!([{"name": MAX_VAR, "value": "not a duration"}])),
        ]);
        // The longest of the revisions; istiod's default where one is unreadable.
        assert_eq!(set.default, Duration::from_secs(48 * H));
        assert_eq!(set.max, Duration::from_secs(90 * 24 * H));
    }

    #[test]
    fn the_longest_certificate_is_the_longest_any_proxy_gets() {
        let limits = SigningLimits {
            default: Duration::from_secs(36 * H),
            max: Duration::from_secs(100 * H),
        };
        let (a, b, c, d) = (
            proxy("a", 24 * H),
            proxy("b", 0),
            proxy("c", 72 * H),
            proxy("d", 1000 * H),
        );
        // Nothing asks for more than the agent's default.
        let none = longest_workload_cert(limits, [("c1", &a)]);
        assert_eq!(none.ttl, Duration::from_secs(24 * H));
        assert!(
            none.source.contains("default SECRET_TTL"),
            "{}",
            none.source
        );
        // Asking for none gets istiod's default.
        let default = longest_workload_cert(limits, [("c1", &a), ("c1", &b)]);
        assert_eq!(default.ttl, Duration::from_secs(36 * H));
        assert!(
            default.source.contains("c1: pod app/b"),
            "{}",
            default.source
        );
        // A request above the maximum is refused, so gets nothing.
        let longest = longest_workload_cert(limits, [("c1", &b), ("r1", &c), ("r1", &d)]);
        assert_eq!(longest.ttl, Duration::from_secs(72 * H));
        assert_eq!(
            longest.source,
            "r1: pod app/c asks for certificates of 72h (SECRET_TTL)"
        );
    }
}
