//! The daemon's Prometheus metrics, shaped like the ones users already alert on (istiod's
//! `citadel_server_*_expiry_timestamp`, cert-manager's `certmanager_certificate_*`): unix-second
//! gauges labelled by cluster, kind and serial. No label ever carries key material or PEM.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::pki::CertInfo;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub struct Metrics {
    registry: Registry,
    expiration: Family<Labels, Gauge>,
    not_before: Family<Labels, Gauge>,
    renewal: Family<Labels, Gauge>,
    lists_expire: Family<Labels, Gauge>,
    ready: Family<Labels, Gauge>,
    unknown_roots: Family<Labels, Gauge>,
    trusted_root: Family<Labels, Gauge>,
    root_expiration: Family<Labels, Gauge>,
    reconciles: Family<Labels, Counter>,
    duration: Histogram,
    last_success: Family<Labels, Gauge>,
    root_errors: Family<Labels, Counter>,
    leader: Gauge,
    transition_phase: Family<Labels, Gauge>,
    transition_cluster_steps: Family<Labels, Gauge>,
    transition_gate_wait: Gauge,
    transition_gate_behind: Gauge,
    transition_errors: Family<Labels, Counter>,
    /// The certificate series exported per (cluster, kind), to drop them when replaced.
    current: Mutex<HashMap<(String, &'static str), Labels>>,
    /// The trusted-root series exported per cluster, to drop a root that left its bundle.
    trusted: Mutex<HashMap<String, Vec<Labels>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers every metric under its name and help; the registry keeps a handle sharing the
/// field's value.
/// Registers each `(name, help, metric)` in `registry`.
macro_rules! register {
    ($registry:expr, $(($name:literal, $help:literal, $metric:expr),)*) => {
        $($registry.register($name, $help, $metric.clone());)*
    };
}

fn register_all(registry: &mut Registry, m: &Metrics) {
    register_certificates(registry, m);
    register_passes(registry, m);
    let info = prometheus_client::metrics::info::Info::new(vec![(
        "version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    )]);
    registry.register("build", "cacertd build information", info);
}

/// What each cluster serves: certificates, lists, bundles, readiness.
fn register_certificates(registry: &mut Registry, m: &Metrics) {
    register!(
        registry,
        (
            "certificate_expiration_timestamp_seconds",
            "Unix time the certificate expires (notAfter)",
            m.expiration
        ),
        (
            "certificate_not_before_timestamp_seconds",
            "Unix time the certificate becomes valid (notBefore)",
            m.not_before
        ),
        (
            "certificate_renewal_timestamp_seconds",
            "Unix time the intermediate is due for renewal under its policy",
            m.renewal
        ),
        (
            "revocation_list_expiration_timestamp_seconds",
            "Unix time the first revocation list of the cluster's ca-crl.pem expires (nextUpdate); Envoy then rejects every chain it covers",
            m.lists_expire
        ),
        (
            "cluster_trusted_root",
            "1 for each root (SHA-256 fingerprint) the cluster's trust bundle holds: count by (root) says how many clusters still trust a root",
            m.trusted_root
        ),
        (
            "trust_bundle_root_expiration_timestamp_seconds",
            "When each root of the cluster's trust bundle expires (every root: istiod's own metric reports only the first)",
            m.root_expiration
        ),
        (
            "cluster_ready",
            "1 when the cluster's served cacerts verifies and matches what cacertd intends",
            m.ready
        ),
        (
            "cluster_unknown_roots",
            "Roots the cluster's trust bundle holds that are neither the common root nor a configured extra anchor (nor a transition's)",
            m.unknown_roots
        ),
    );
}

/// What the daemon did: passes, the root store, leadership, the transition under way.
fn register_passes(registry: &mut Registry, m: &Metrics) {
    register!(
        registry,
        (
            "reconcile",
            "Reconciliations by cluster and result",
            m.reconciles
        ),
        (
            "reconcile_duration_seconds",
            "Time one cluster's reconciliation took",
            m.duration
        ),
        (
            "last_success_timestamp_seconds",
            "Unix time of the cluster's last successful reconciliation",
            m.last_success
        ),
        (
            "root_source_errors",
            "Failures to obtain the root, by store and reason",
            m.root_errors
        ),
        ("leader", "1 while this replica is the leader", m.leader),
        (
            "transition_phase",
            "1 for the phase (and state) the trust transition under way is in, 0 for the others",
            m.transition_phase
        ),
        (
            "transition_cluster_steps",
            "Steps a primary has finished in the current phase (write, then each restart stage)",
            m.transition_cluster_steps
        ),
        (
            "transition_gate_wait_seconds",
            "How long the current phase's gate has been waiting for every cluster",
            m.transition_gate_wait
        ),
        (
            "transition_gate_behind",
            "What the current phase's gate last found behind: bundles, unreachable clusters, proxies not yet re-created (named by `cacertd transition status`)",
            m.transition_gate_behind
        ),
        (
            "transition_errors",
            "Times driving the trust transition stopped or was refused, by reason",
            m.transition_errors
        ),
    );
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cacertd");
        let m = Metrics {
            expiration: Family::default(),
            not_before: Family::default(),
            renewal: Family::default(),
            lists_expire: Family::default(),
            trusted_root: Family::default(),
            root_expiration: Family::default(),
            ready: Family::default(),
            unknown_roots: Family::default(),
            reconciles: Family::default(),
            duration: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            last_success: Family::default(),
            root_errors: Family::default(),
            leader: Gauge::default(),
            transition_phase: Family::default(),
            transition_cluster_steps: Family::default(),
            transition_gate_wait: Gauge::default(),
            transition_gate_behind: Gauge::default(),
            transition_errors: Family::default(),
            current: Mutex::new(HashMap::new()),
            trusted: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        register_all(&mut registry, &m);
        Metrics { registry, ..m }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Exports a certificate's dates; a previous serial of the same (cluster, kind) is dropped.
    pub fn certificate(&self, cluster: &str, kind: &'static str, info: &CertInfo) {
        let l = labels(&[
            ("cluster", cluster),
            ("kind", kind),
            ("serial", &info.serial),
        ]);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = current.insert((cluster.to_string(), kind), l.clone())
            && old != l
        {
            self.expiration.remove(&old);
            self.not_before.remove(&old);
        }
        self.set_validity(&l, info);
    }

    /// The expiration and not-before series of one certificate.
    fn set_validity(&self, l: &Labels, info: &CertInfo) {
        self.expiration
            .get_or_create(l)
            .set(info.not_after.unix_timestamp());
        self.not_before
            .get_or_create(l)
            .set(info.not_before.unix_timestamp());
    }

    /// The mesh CA (`kind="mesh-ca"`) and the certificates between it and the anchor
    /// (`kind="chain"`), `cluster="all"`: the series of a previous chain are dropped.
    pub fn signing_chain(&self, chain: &[CertInfo]) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let old: Vec<(String, &'static str)> = current
            .keys()
            .filter(|(key, _)| key.starts_with("chain:"))
            .cloned()
            .collect();
        for key in old {
            if let Some(l) = current.remove(&key) {
                self.expiration.remove(&l);
                self.not_before.remove(&l);
            }
        }
        for (i, info) in chain.iter().enumerate() {
            let kind = if i == 0 { "mesh-ca" } else { "chain" };
            let l = labels(&[("cluster", "all"), ("kind", kind), ("serial", &info.serial)]);
            self.set_validity(&l, info);
            current.insert((format!("chain:{i}"), kind), l);
        }
    }

    pub fn renewal_at(&self, cluster: &str, at: Option<time::OffsetDateTime>) {
        let l = labels(&[("cluster", cluster)]);
        match at {
            Some(t) => {
                self.renewal.get_or_create(&l).set(t.unix_timestamp());
            }
            None => {
                self.renewal.remove(&l);
            }
        }
    }

    pub fn revocation_lists_expire(&self, cluster: &str, at: Option<time::OffsetDateTime>) {
        let l = labels(&[("cluster", cluster)]);
        match at {
            Some(t) => {
                self.lists_expire.get_or_create(&l).set(t.unix_timestamp());
            }
            None => {
                self.lists_expire.remove(&l);
            }
        }
    }

    /// The roots `cluster`'s bundle holds now, by fingerprint, with when each expires; series
    /// of roots it no longer holds are dropped.
    pub fn trusted_roots(
        &self,
        cluster: &str,
        fingerprints: &[String],
        expiries: &[time::OffsetDateTime],
    ) {
        let mut trusted = self.trusted.lock().unwrap_or_else(|p| p.into_inner());
        for old in trusted.remove(cluster).unwrap_or_default() {
            self.trusted_root.remove(&old);
            if let [(_, c), (_, fp)] = old.as_slice() {
                self.root_expiration
                    .remove(&labels(&[("cluster", c), ("root_sha256", fp)]));
            }
        }
        let mut now: Vec<Labels> = Vec::new();
        for (i, fp) in fingerprints.iter().enumerate() {
            let l = labels(&[("cluster", cluster), ("root", fp)]);
            self.trusted_root.get_or_create(&l).set(1);
            if let Some(at) = expiries.get(i) {
                self.root_expiration
                    .get_or_create(&labels(&[("cluster", cluster), ("root_sha256", fp)]))
                    .set(at.unix_timestamp());
            }
            now.push(l);
        }
        trusted.insert(cluster.to_string(), now);
    }

    pub fn unknown_roots(&self, cluster: &str, count: usize) {
        self.unknown_roots
            .get_or_create(&labels(&[("cluster", cluster)]))
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn ready(&self, cluster: &str, ready: bool) {
        self.ready
            .get_or_create(&labels(&[("cluster", cluster)]))
            .set(i64::from(ready));
    }

    pub fn reconciled(&self, cluster: &str, result: &str, seconds: f64, at: time::OffsetDateTime) {
        self.reconciles
            .get_or_create(&labels(&[("cluster", cluster), ("result", result)]))
            .inc();
        self.duration.observe(seconds);
        if result != "failure" {
            self.last_success
                .get_or_create(&labels(&[("cluster", cluster)]))
                .set(at.unix_timestamp());
        }
    }

    pub fn root_error(&self, store: &str, reason: &str) {
        self.root_errors
            .get_or_create(&labels(&[("store", store), ("reason", reason)]))
            .inc();
    }

    /// Counts a drive of the trust transition that stopped or was refused, by its reason.
    pub fn transition_error(&self, reason: &str) {
        self.transition_errors
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    /// Exports where a transition stands (`None`: no transition under way).
    pub fn transition(
        &self,
        record: Option<&crate::transition::Record>,
        now: time::OffsetDateTime,
    ) {
        use crate::transition::{Phase, State};
        self.transition_phase.clear();
        self.transition_cluster_steps.clear();
        self.transition_gate_wait.set(0);
        self.transition_gate_behind.set(0);
        let Some(r) = record else {
            return;
        };
        let kind = r.kind.name();
        let state = match r.state {
            State::Active => "active",
            State::Failed { .. } => "failed",
            State::RollingBack { .. } => "rolling-back",
            State::Held { .. } => "held",
            State::RolledBack => "rolled-back",
        };
        for p in Phase::ALL {
            self.transition_phase
                .get_or_create(&labels(&[
                    ("transition", kind),
                    ("phase", p.name()),
                    ("state", state),
                ]))
                .set(i64::from(p == r.phase));
        }
        for (cluster, progress) in &r.clusters {
            let steps = usize::from(progress.written) + progress.restarted.len();
            self.transition_cluster_steps
                .get_or_create(&labels(&[("cluster", cluster)]))
                .set(i64::try_from(steps).unwrap_or(i64::MAX));
        }
        // Only a gate still being waited on: once the transition failed or is held, nothing
        // waits any more (that has alerts of its own).
        if let Some(since) = r.gate_since
            && matches!(r.state, State::Active | State::RollingBack { .. })
        {
            self.transition_gate_wait
                .set((now.unix_timestamp() - since).max(0));
        }
        // What the gate names as behind (bundles, clusters, proxies still to be re-created),
        // until the transition moves on; `transition status` names each.
        if r.gate_since.is_some() {
            self.transition_gate_behind
                .set(i64::try_from(r.behind.len()).unwrap_or(i64::MAX));
        }
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Drops every series that describes the clusters or a transition as this replica last
    /// saw them (counters stay: they only ever count what this replica did).
    pub fn forget_cluster_state(&self) {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.expiration.clear();
        self.not_before.clear();
        self.renewal.clear();
        self.lists_expire.clear();
        self.ready.clear();
        self.unknown_roots.clear();
        self.trusted_root.clear();
        self.root_expiration.clear();
        self.trusted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.last_success.clear();
        self.transition(None, time::OffsetDateTime::UNIX_EPOCH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transition::{Options, Record, State, TransitionKind};

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit_once(' '))
            .map(|(_, v)| v.to_string())
    }

    #[test]
    fn a_root_that_leaves_a_bundle_leaves_the_trusted_root_series() {
        let m = Metrics::new();
        let series =
            |root: &str| format!("cacertd_cluster_trusted_root{{cluster=\"c1\",root=\"{root}\"}}");
        let expiry = |root: &str| {
            format!(
                "cacertd_trust_bundle_root_expiration_timestamp_seconds{{cluster=\"c1\",root_sha256=\"{root}\"}}"
            )
        };
        let at = |s: i64| time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s);
        m.trusted_roots("c1", &["AA".into(), "BB".into()], &[at(100), at(200)]);
        assert_eq!(value(&m.encode(), &series("AA")).as_deref(), Some("1"));
        assert_eq!(value(&m.encode(), &expiry("AA")).as_deref(), Some("100"));
        assert_eq!(value(&m.encode(), &expiry("BB")).as_deref(), Some("200"));
        m.trusted_roots("c1", &["BB".into()], &[at(200)]);
        assert_eq!(value(&m.encode(), &series("AA")), None);
        assert_eq!(value(&m.encode(), &expiry("AA")), None);
        assert_eq!(value(&m.encode(), &series("BB")).as_deref(), Some("1"));
        assert_eq!(value(&m.encode(), &expiry("BB")).as_deref(), Some("200"));
    }

    #[test]
    fn a_revocation_list_expiry_is_exported_while_the_cluster_serves_lists() {
        let m = Metrics::new();
        let series = "cacertd_revocation_list_expiration_timestamp_seconds{cluster=\"c1\"}";
        let at = time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(5_000);
        m.revocation_lists_expire("c1", Some(at));
        assert_eq!(value(&m.encode(), series).as_deref(), Some("5000"));
        m.revocation_lists_expire("c1", None);
        assert_eq!(value(&m.encode(), series), None);
    }

    #[test]
    fn a_gate_is_waited_on_only_while_the_transition_is_active() {
        let m = Metrics::new();
        let options = Options {
            drain_seconds: 0,
            gate_timeout_seconds: 60,
            ..Options::for_tests()
        };
        let mut r = Record::new(TransitionKind::Migrate, ["c1".to_string()], options);
        let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_000);
        r.gate_since = Some(100);
        r.behind = vec!["c1/app/debug (a bare pod: nothing re-creates it): …".into()];
        m.transition(Some(&r), now);
        let wait = "cacertd_transition_gate_wait_seconds";
        assert_eq!(value(&m.encode(), wait).as_deref(), Some("900"));
        let behind = "cacertd_transition_gate_behind";
        assert_eq!(value(&m.encode(), behind).as_deref(), Some("1"));
        r.state = State::Failed {
            report: "the gate did not hold".into(),
            rolling_back_to: None,
        };
        m.transition(Some(&r), now);
        assert_eq!(value(&m.encode(), wait).as_deref(), Some("0"));
    }

    #[test]
    fn forgetting_cluster_state_drops_every_per_cluster_and_transition_series() {
        let m = Metrics::new();
        let at = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        let info = CertInfo {
            serial: "1a".into(),
            subject: String::new(),
            issuer: String::new(),
            not_before: at,
            not_after: at,
            fingerprint_sha256: String::new(),
            is_ca: true,
            path_len: Some(0),
            key_algorithm: String::new(),
        };
        m.certificate("c1", "intermediate", &info);
        m.renewal_at("c1", Some(at));
        m.ready("c1", false);
        m.reconciled("c1", "issued", 0.1, at);
        m.set_leader(true);
        let before = m.encode();
        assert!(before.contains("cluster=\"c1\""), "{before}");
        m.forget_cluster_state();
        m.set_leader(false);
        let after = m.encode();
        for series in [
            "cacertd_certificate_expiration_timestamp_seconds{",
            "cacertd_certificate_not_before_timestamp_seconds{",
            "cacertd_certificate_renewal_timestamp_seconds{",
            "cacertd_cluster_ready{",
            "cacertd_last_success_timestamp_seconds{",
            "cacertd_transition_phase{",
        ] {
            assert!(!after.contains(series), "{series} in:\n{after}");
        }
        // What this replica did stays counted.
        assert!(after.contains("cacertd_reconcile_total{"), "{after}");
        assert_eq!(value(&after, "cacertd_leader").as_deref(), Some("0"));
    }

    #[test]
    fn a_stopped_drive_is_counted_under_its_variants_reason() {
        use crate::transition::error::DriveError;
        let m = Metrics::new();
        let errors = [
            DriveError::NoTransition,
            DriveError::UnknownCluster {
                cluster: "c9".into(),
            },
            DriveError::UnknownCluster {
                cluster: "c8".into(),
            },
        ];
        for e in &errors {
            m.transition_error(e.reason());
        }
        let text = m.encode();
        assert_eq!(
            value(
                &text,
                "cacertd_transition_errors_total{reason=\"unknown-cluster\"}"
            )
            .as_deref(),
            Some("2"),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "cacertd_transition_errors_total{reason=\"no-transition\"}"
            )
            .as_deref(),
            Some("1")
        );
        // The cluster's name is in the message, never in a label.
        assert!(!text.contains("c9"));
    }
}
