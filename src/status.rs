//! What `cacertd status` and the daemon's `/status` report: the root and, for every cluster,
//! what it serves and how that stands (an assessment at `now`).

use serde::Serialize;
use time::OffsetDateTime;

use crate::cluster::Target;
use crate::config::Config;
use crate::pki::{Cert, CertInfo};
use crate::plan::{Assessment, Snapshot, assess};
use crate::root_store::RootCerts;
use crate::topology::{Cluster, Role};

pub(crate) fn days_left(not_after: OffsetDateTime, now: OffsetDateTime) -> i64 {
    (not_after - now).whole_days()
}

#[derive(Serialize)]
pub struct RootJson {
    pub store: String,
    #[serde(flatten)]
    pub certificate: CertInfo,
    pub days_left: i64,
    /// For a mesh CA below the anchor: the mesh CA, then the certificates above it, the
    /// anchor (above) excluded. Any of them expiring is as fatal as the anchor expiring.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signing_chain: Vec<ChainCertJson>,
}

#[derive(Serialize)]
pub struct ChainCertJson {
    #[serde(flatten)]
    pub certificate: CertInfo,
    pub days_left: i64,
}

pub fn root_json(store: &str, info: &CertInfo, now: OffsetDateTime) -> RootJson {
    RootJson {
        store: store.to_string(),
        certificate: info.clone(),
        days_left: days_left(info.not_after, now),
        signing_chain: Vec::new(),
    }
}

/// [`root_json`] of the anchor, with the mesh CA and the certificates above it.
pub fn root_certs_json(store: &str, certs: &RootCerts, now: OffsetDateTime) -> RootJson {
    RootJson {
        signing_chain: certs
            .between
            .iter()
            .map(|c| ChainCertJson {
                certificate: c.info().clone(),
                days_left: days_left(c.info().not_after, now),
            })
            .collect(),
        ..root_json(store, certs.anchor.info(), now)
    }
}

#[derive(Serialize)]
pub struct StatusReport {
    pub root: Option<RootJson>,
    pub clusters: Vec<StatusRow>,
    /// Every root some primary's bundle holds, with the primaries that trust it: after a
    /// root's key leaked, how many clusters still trust it.
    pub trust: Vec<RootTrust>,
    /// The transition under way, if any: until it is over, it owns its clusters' cacerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transition: Option<TransitionNow>,
}

/// A transition under way, in the words `transition status` uses.
#[derive(Serialize)]
pub struct TransitionNow {
    pub kind: &'static str,
    pub position: String,
    pub state: String,
    pub clusters: Vec<String>,
    /// Each moving primary (and its remotes): what it trusted and signed under before the
    /// transition, and after each phase still ahead; roots by the first bytes of their
    /// SHA-256 fingerprint, or "the common root".
    pub trust: Vec<crate::transition::check::TrustRow>,
}

impl TransitionNow {
    fn of(
        config: &Config,
        in_flight: &crate::transition::InFlight,
        common: Option<&str>,
        now: OffsetDateTime,
    ) -> Option<Self> {
        use crate::transition::check::{Primary, Roots, trust_ahead};
        let record = in_flight.record.as_ref()?;
        let name = |c: &crate::pki::Cert| {
            let fp = &c.info().fingerprint_sha256;
            match Some(fp.as_str()) == common {
                true => "the common root".to_string(),
                false => format!("root {}", &fp[..fp.len().min(11)]),
            }
        };
        let unknown = || "an unknown root".to_string();
        let primaries: Vec<Primary> = in_flight
            .moving
            .iter()
            .map(|m| Primary {
                name: m.cluster.clone(),
                bundle: m.bundle_before.iter().map(name).collect(),
                signer: m.signer_before.as_ref().map_or_else(unknown, name),
                multiroot: false,
                directory: false,
                pinned: Vec::new(),
            })
            .collect();
        let roots = Roots {
            new: in_flight
                .moving
                .iter()
                .find_map(|m| m.signer_after.as_ref())
                .map_or_else(unknown, name),
            removed: None,
        };
        let scopes = crate::transition::Scope::all(config);
        Some(TransitionNow {
            kind: record.kind.name(),
            position: record.position(),
            state: record.state.describe(),
            clusters: record.clusters.keys().cloned().collect(),
            trust: match record.kind {
                // A removal's and a revocation's roots are not a move between two.
                crate::transition::TransitionKind::RemoveRoot
                | crate::transition::TransitionKind::Revoke
                | crate::transition::TransitionKind::Renew => Vec::new(),
                _ => trust_ahead(record, &scopes, &primaries, &roots, now),
            },
        })
    }
}

/// One root and the primaries whose `root-cert.pem` holds it.
#[derive(Serialize)]
pub struct RootTrust {
    pub fingerprint_sha256: String,
    /// Whether it is the store's root (the common root).
    pub common: bool,
    pub trusted_by: Vec<String>,
    /// How many primaries were read (a root's count is out of these).
    pub primaries_read: usize,
}

/// Each root of the primaries' bundles in `rows`, first seen first.
fn root_trust(rows: &[StatusRow], common: Option<&str>) -> Vec<RootTrust> {
    let read: Vec<&StatusRow> = rows.iter().filter(|r| r.cacerts.is_some()).collect();
    let mut out: Vec<RootTrust> = Vec::new();
    for row in &read {
        for fp in row.cacerts.iter().flat_map(|a| &a.trust_bundle) {
            match out.iter_mut().find(|t| &t.fingerprint_sha256 == fp) {
                Some(t) => t.trusted_by.push(row.name.clone()),
                None => out.push(RootTrust {
                    fingerprint_sha256: fp.clone(),
                    common: Some(fp.as_str()) == common,
                    trusted_by: vec![row.name.clone()],
                    primaries_read: read.len(),
                }),
            }
        }
    }
    out
}

#[derive(Serialize)]
pub struct StatusRow {
    pub name: String,
    pub role: Role,
    pub network: Option<String>,
    /// For a remote: the primary that serves it.
    pub served_by: Option<String>,
    pub target: Option<String>,
    pub policy: String,
    /// For a primary: the assessment of its cacerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cacerts: Option<Assessment>,
    pub days_left: Option<i64>,
    pub renewal_due: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For a Kubernetes primary: the istiod it runs, and what is known of that release.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub istiod: Vec<IstiodRelease>,
}

/// An istiod Deployment's image, the release it names and the known behaviours of that release
/// a transition depends on (docs/istio.md §12).
#[derive(Serialize)]
pub struct IstiodRelease {
    pub image: String,
    /// `None`: the tag names no release (`latest`, a digest).
    pub version: Option<String>,
    /// Each known behaviour: `refuse` (a transition would break mTLS, and is refused) or
    /// `note`, with its upstream reference.
    pub behaviours: Vec<KnownBehaviour>,
}

#[derive(Serialize)]
pub struct KnownBehaviour {
    pub bearing: &'static str,
    pub reference: &'static str,
    pub what: &'static str,
}

impl IstiodRelease {
    pub fn of(image: &str) -> Self {
        use crate::istio_version::{Bearing, IstioVersion, behaviours};
        let version = IstioVersion::from_image(image);
        IstiodRelease {
            image: image.to_string(),
            version: version.map(|v| v.to_string()),
            behaviours: version
                .map(behaviours)
                .unwrap_or_default()
                .into_iter()
                .map(|b| KnownBehaviour {
                    bearing: match b.bearing {
                        Bearing::Refuse => "refuse",
                        Bearing::Note => "note",
                    },
                    reference: b.reference,
                    what: b.what,
                })
                .collect(),
        }
    }
}

/// What is known of a cluster for its status row.
pub enum Known {
    /// A remote: nothing of its own to read.
    Remote,
    /// Read now, or why it could not be.
    Read(Result<Snapshot, String>),
    /// Judged by the daemon's last pass, which left it unchanged.
    Seen(crate::issuance::Seen),
}

pub fn status_row(
    config: &Config,
    cluster: &Cluster,
    (certs, known_roots): (Option<&RootCerts>, &[Cert]),
    known: Known,
    now: OffsetDateTime,
) -> StatusRow {
    let mut row = StatusRow {
        name: cluster.name.clone(),
        role: cluster.role,
        network: cluster.network.clone(),
        served_by: cluster.primary.clone(),
        target: cluster.target.as_ref().map(ToString::to_string),
        policy: cluster.policy.clone(),
        cacerts: None,
        days_left: None,
        renewal_due: None,
        error: None,
        istiod: Vec::new(),
    };
    let (a, images) = match known {
        Known::Remote => return row,
        Known::Read(Err(e)) => {
            row.error = Some(e);
            return row;
        }
        Known::Read(Ok(snapshot)) => {
            let expected = crate::plan::Expected {
                known_roots,
                ..config.expected(
                    cluster,
                    (certs.map(|c| &c.anchor), certs.map(RootCerts::signing_ca)),
                )
            };
            let a = assess(&snapshot, &expected, now);
            (a, snapshot.istiod_images.unwrap_or_default())
        }
        Known::Seen(seen) => (seen.assessment, seen.istiod_images),
    };
    row.istiod = images.iter().map(|i| IstiodRelease::of(i)).collect();
    row.days_left = a.intermediate.as_ref().map(|i| days_left(i.not_after, now));
    row.renewal_due = a.renew_at.map(|r| now >= r && !a.capped_by_root);
    row.cacerts = Some(a);
    row
}

/// What `status -o json` prints (and the daemon serves on /status), with the store's name.
/// `certs` are the store's, as read by the caller (`None`: the store holds no root). The
/// clusters in `seen` (the daemon's last pass left them unchanged) are not read again. With
/// `only`, just those clusters are read and shown.
pub async fn status_report(
    config: &Config,
    store: &str,
    certs: Option<&RootCerts>,
    (seen, only): (
        &std::collections::HashMap<String, crate::issuance::Seen>,
        Option<&[String]>,
    ),
    now: OffsetDateTime,
) -> StatusReport {
    let shown: Vec<&Cluster> = config
        .topology
        .clusters()
        .iter()
        .filter(|c| only.is_none_or(|o| o.contains(&c.name)))
        .collect();
    let reads: Vec<_> = shown
        .iter()
        .map(|cluster| async move {
            match seen.get(&cluster.name) {
                Some(s) => Known::Seen(s.clone()),
                None => read_snapshot(config, cluster).await,
            }
        })
        .collect();
    let reads = futures::future::join_all(reads).await;
    // One read of the transition record: the roots it moves between, and where it stands
    // (none when no transition is under way, or when its record cannot be read:
    // `transition status` says why).
    let in_flight = crate::transition::in_flight(config).await;
    let known_roots = crate::issuance::known_roots(config, &in_flight);
    let rows: Vec<StatusRow> = shown
        .iter()
        .zip(reads)
        .map(|(cluster, known)| status_row(config, cluster, (certs, &known_roots), known, now))
        .collect();
    let root = certs.map(|c| root_certs_json(store, c, now));
    let common = certs.map(|c| c.anchor.info().fingerprint_sha256.as_str());
    StatusReport {
        root,
        transition: TransitionNow::of(config, &in_flight, common, now),
        trust: root_trust(&rows, common),
        clusters: rows,
    }
}

/// A primary's snapshot for `status` (remotes have none), or why it could not be read.
async fn read_snapshot(config: &Config, cluster: &Cluster) -> Known {
    if cluster.role == Role::Remote {
        return Known::Remote;
    }
    Known::Read(match Target::open(cluster, config).await {
        Ok(t) => t
            .read()
            .await
            .map(|o| o.snapshot)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    })
}
