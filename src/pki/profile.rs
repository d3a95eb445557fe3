//! What every certificate cacertd makes has in common, whoever signs it: a subject with
//! concrete values, and a random serial.

use rcgen::{DistinguishedName, DnType, SerialNumber};
use serde::{Deserialize, Serialize};

/// A certificate subject. In a policy file its values may hold `{cluster}` and
/// `{trust_domain}`, filled in by [`Subject::render`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    pub organization: Option<String>,
    pub organizational_unit: Option<String>,
    pub common_name: String,
    pub locality: Option<String>,
    pub country: Option<String>,
    /// The DN's serialNumber attribute, which only a revoked intermediate's successor carries:
    /// its name must differ from its predecessor's, since Envoy and most verifiers pick a
    /// certificate's revocation list by its issuer's name (docs/istio.md §14). Never set by a
    /// policy, and never judged as drift.
    #[serde(skip)]
    pub serial_number: Option<String>,
}

impl Subject {
    /// This subject with `{cluster}` and `{trust_domain}` replaced in every value.
    pub fn render(&self, cluster: &str, trust_domain: &str) -> Subject {
        let r = |s: &str| {
            s.replace("{cluster}", cluster)
                .replace("{trust_domain}", trust_domain)
        };
        Subject {
            organization: self.organization.as_deref().map(r),
            organizational_unit: self.organizational_unit.as_deref().map(r),
            common_name: r(&self.common_name),
            locality: self.locality.as_deref().map(r),
            country: self.country.as_deref().map(r),
            serial_number: self.serial_number.clone(),
        }
    }

    /// O=Istio, CN=Root CA — the subject of Istio's reference root (tools/certs).
    pub fn istio_root() -> Self {
        Subject {
            organization: Some("Istio".to_string()),
            organizational_unit: None,
            common_name: "Root CA".to_string(),
            locality: None,
            country: None,
            serial_number: None,
        }
    }

    /// O=Istio, CN=Intermediate CA, L=<cluster> — Istio's reference intermediate.
    pub fn istio_intermediate(cluster: &str) -> Self {
        Subject {
            organization: Some("Istio".to_string()),
            organizational_unit: None,
            common_name: "Intermediate CA".to_string(),
            locality: Some(cluster.to_string()),
            country: None,
            serial_number: None,
        }
    }

    pub(crate) fn to_distinguished_name(&self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        if let Some(c) = &self.country {
            dn.push(DnType::CountryName, c.as_str());
        }
        if let Some(o) = &self.organization {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        if let Some(ou) = &self.organizational_unit {
            dn.push(DnType::OrganizationalUnitName, ou.as_str());
        }
        if let Some(l) = &self.locality {
            dn.push(DnType::LocalityName, l.as_str());
        }
        dn.push(DnType::CommonName, self.common_name.as_str());
        if let Some(serial) = &self.serial_number {
            // X.520: a PrintableString.
            if let Ok(value) = rcgen::string::PrintableString::try_from(serial.as_str()) {
                dn.push(
                    DnType::CustomDnType(vec![2, 5, 4, 5]),
                    rcgen::DnValue::PrintableString(value),
                );
            }
        }
        dn
    }
}

/// A value for a DN's serialNumber attribute that names a CA apart from its predecessor
/// ([`Subject::serial_number`]): its issuance time in unix seconds, and four random bytes, so
/// that two issued in the same second still differ.
pub fn generation(now: time::OffsetDateTime) -> String {
    let mut bytes = [0u8; 4];
    // The OS random source failing is not recoverable and says nothing secret.
    #[allow(clippy::expect_used)]
    aws_lc_rs::rand::fill(&mut bytes).expect("operating system random source");
    format!("{}-{:08x}", now.unix_timestamp(), u32::from_be_bytes(bytes))
}

/// A random positive 128-bit serial. rcgen would otherwise derive the serial from the public
/// key (docs/istio.md §2). The top bit is cleared so DER needs no sign byte, and the first byte
/// is kept non-zero so the encoding is always exactly 16 bytes (127 bits of entropy).
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // The OS random source failing is not recoverable and says nothing secret.
    #[allow(clippy::expect_used)]
    aws_lc_rs::rand::fill(&mut bytes).expect("operating system random source");
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 0x01;
    }
    SerialNumber::from_slice(&bytes)
}
