//! Istio versions and the known behaviours that decide what a trust transition may do
//! (docs/istio.md §12). Pure: a version comes from an image reference, the rules from a table.

use std::fmt;

/// An Istio release, `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IstioVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for IstioVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl IstioVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        IstioVersion {
            major,
            minor,
            patch,
        }
    }

    /// The version in an image reference's tag: `docker.io/istio/pilot:1.24.2`,
    /// `…/pilot:1.24.2-distroless`, `…:1.25.0@sha256:…`. `None` for a tag that is no release
    /// (`latest`, a commit hash, a digest alone).
    pub fn from_image(image: &str) -> Option<Self> {
        let without_digest = image.split('@').next()?;
        let (_, tag) = without_digest.rsplit_once(':')?;
        // A registry port (`host:5000/pilot`) leaves a '/' in what follows the colon.
        if tag.contains('/') {
            return None;
        }
        let release = tag.trim_start_matches('v').split('-').next()?;
        let mut parts = release.split('.').map(|p| p.parse::<u32>().ok());
        let version = IstioVersion::new(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(version)
    }
}

/// How a known behaviour bears on a trust transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bearing {
    /// A transition would break mTLS: refused.
    Refuse,
    /// Worth knowing; cacertd already works around it.
    Note,
}

/// A behaviour of some Istio versions that the transitions depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Behaviour {
    pub bearing: Bearing,
    /// The upstream issue or pull request.
    pub reference: &'static str,
    pub what: &'static str,
}

/// Which istiod versions a behaviour applies to.
struct Rule {
    applies: fn(IstioVersion) -> bool,
    behaviour: Behaviour,
}

const fn v(major: u32, minor: u32, patch: u32) -> IstioVersion {
    IstioVersion::new(major, minor, patch)
}

const RULES: [Rule; 4] = [
    Rule {
        applies: |x| x == v(1, 24, 4) || x == v(1, 25, 1),
        behaviour: Behaviour {
            bearing: Bearing::Refuse,
            reference: "istio/istio#55793",
            what: "hands proxies only the last root of a multi-root root-cert.pem: during a \
                   transition they would stop trusting the current root; upgrade to 1.24.5, \
                   1.25.2 or later first",
        },
    },
    Rule {
        applies: |x| x < v(1, 28, 7) || (x.minor == 29 && x < v(1, 29, 3)),
        behaviour: Behaviour {
            bearing: Bearing::Note,
            reference: "istio/istio#59768",
            what: "may issue workload certificates that outlive their intermediate; keep \
                   intermediates renewed well before they expire",
        },
    },
    Rule {
        applies: |x| x < v(1, 30, 0),
        behaviour: Behaviour {
            bearing: Bearing::Note,
            reference: "istio/istio#59909",
            what: "accepts a changed root-cert.pem only if one bundle's bytes contain the other's; \
                   cacertd appends the new root after the old bytes, verbatim",
        },
    },
    Rule {
        applies: |x| x >= v(1, 27, 0),
        behaviour: Behaviour {
            bearing: Bearing::Note,
            reference: "istio/istio#55696",
            what: "refuses an incomplete cacerts instead of falling back to its self-signed CA; \
                   cacertd writes all four files",
        },
    },
];

/// What ztunnel `version` does that a transition depends on: before 1.26 it trusts only one
/// root of a multi-root bundle (istio/ztunnel#1510), so mid-transition the workloads it serves
/// would refuse peers under the other root.
pub fn ztunnel_behaviours(version: IstioVersion) -> Vec<Behaviour> {
    if version >= v(1, 26, 0) {
        return Vec::new();
    }
    vec![Behaviour {
        bearing: Bearing::Refuse,
        reference: "istio/ztunnel#1510",
        what: "trusts only one root of a multi-root bundle: during a transition the workloads \
               it serves would refuse peers under the other root; upgrade ztunnel to 1.26 or \
               later first",
    }]
}

/// The known behaviours of istiod `version`, in the table's order.
pub fn behaviours(version: IstioVersion) -> Vec<Behaviour> {
    RULES
        .iter()
        .filter(|r| (r.applies)(version))
        .map(|r| r.behaviour)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_image_tags_as_helm_writes_them() {
        let cases = [
            ("docker.io/istio/pilot:1.24.2", Some(v(1, 24, 2))),
            ("docker.io/istio/pilot:1.25.1-distroless", Some(v(1, 25, 1))),
            (
                "gcr.io/istio-release/pilot:1.26.0@sha256:abcd",
                Some(v(1, 26, 0)),
            ),
            ("registry.local:5000/istio/pilot:1.27.3", Some(v(1, 27, 3))),
            ("registry.local:5000/istio/pilot", None),
            ("istio/pilot:latest", None),
            ("istio/pilot@sha256:abcd", None),
            ("istio/pilot:1.27", None),
            ("istio/pilot:1.27.1.2", None),
        ];
        for (image, want) in cases {
            assert_eq!(IstioVersion::from_image(image), want, "{image}");
        }
    }

    #[test]
    fn only_the_releases_that_drop_roots_are_refused() {
        let refused = |x| behaviours(x).iter().any(|b| b.bearing == Bearing::Refuse);
        assert!(refused(v(1, 25, 1)));
        assert!(refused(v(1, 24, 4)));
        for x in [
            v(1, 24, 3),
            v(1, 24, 5),
            v(1, 25, 0),
            v(1, 25, 2),
            v(1, 26, 0),
        ] {
            assert!(!refused(x), "{x}");
        }
        let notes = |x| -> Vec<&str> { behaviours(x).iter().map(|b| b.reference).collect() };
        assert_eq!(
            notes(v(1, 29, 2)),
            [
                "istio/istio#59768",
                "istio/istio#59909",
                "istio/istio#55696"
            ]
        );
        assert_eq!(
            notes(v(1, 29, 3)),
            ["istio/istio#59909", "istio/istio#55696"]
        );
        assert_eq!(notes(v(1, 30, 0)), ["istio/istio#55696"]);
        assert_eq!(
            notes(v(1, 26, 1)),
            ["istio/istio#59768", "istio/istio#59909"]
        );
        assert_eq!(ztunnel_behaviours(v(1, 25, 2)).len(), 1);
        assert!(ztunnel_behaviours(v(1, 26, 0)).is_empty());
    }
}
