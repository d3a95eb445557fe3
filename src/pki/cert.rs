//! Parsed certificates: the DER bytes plus the facts cacertd reasons about.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use yoke::{Yoke, Yokeable};

use super::{KeyAlgorithm, PkiError, fmt_time};

/// What a certificate's public key is: one istiod supports, or a description of what it is not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyDescription {
    Supported(KeyAlgorithm),
    Unsupported(String),
}

/// The facts about one certificate that status, planning and validation use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Serial number in lowercase hex, as `openssl x509 -serial` prints it (minus case).
    pub serial: String,
    pub subject: String,
    pub issuer: String,
    #[serde(with = "crate::clock::rfc3339_seconds")]
    pub not_before: OffsetDateTime,
    #[serde(with = "crate::clock::rfc3339_seconds")]
    pub not_after: OffsetDateTime,
    /// SHA-256 over the DER, colon-separated uppercase hex (`openssl x509 -fingerprint -sha256`).
    pub fingerprint_sha256: String,
    pub is_ca: bool,
    pub path_len: Option<u32>,
    pub key_algorithm: String,
}

/// An X.509 certificate that parsed cleanly. Holds its DER, its parsed form (read many times
/// per check: parsing it again each time was most of a run with nothing to do) and the facts
/// above. Clones share all of it.
#[derive(Clone)]
pub struct Cert(Arc<Parts>);

struct Parts {
    parsed: Yoke<Parsed<'static>, Vec<u8>>,
    info: CertInfo,
    key: KeyDescription,
}

/// The parsed form, borrowing from the DER it is kept with.
#[derive(Yokeable)]
struct Parsed<'a>(X509Certificate<'a>);

/// Two certificates are the same when their DER is (the rest follows from it).
impl PartialEq for Cert {
    fn eq(&self, other: &Self) -> bool {
        self.der() == other.der()
    }
}

impl Eq for Cert {}

impl fmt::Debug for Cert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cert")
            .field("subject", &self.0.info.subject)
            .field("serial", &self.0.info.serial)
            .finish()
    }
}

impl Cert {
    pub fn from_der(der: Vec<u8>, what: &str) -> Result<Self, PkiError> {
        if let Some(known) = parsed::known(&der) {
            return Ok(known);
        }
        let parsed = Yoke::<Parsed<'static>, Vec<u8>>::try_attach_to_cart(der, |der| {
            match X509Certificate::from_der(der) {
                Ok((rest, _)) if !rest.is_empty() => Err(format!(
                    "{} trailing bytes after the certificate",
                    rest.len()
                )),
                Ok((_, x509)) => Ok(Parsed(x509)),
                Err(e) => Err(e.to_string()),
            }
        })
        .map_err(|reason| PkiError::BadCert {
            what: what.to_string(),
            reason,
        })?;
        let (info, key) = describe(&parsed.get().0, parsed.backing_cart(), what)?;
        let cert = Cert(Arc::new(Parts { parsed, info, key }));
        parsed::remember(&cert);
        Ok(cert)
    }

    /// Parses every `CERTIFICATE` block of a PEM text, in order. Any other block, or none, is
    /// an error naming `what`.
    pub fn all_from_pem(pem_text: &[u8], what: &str) -> Result<Vec<Self>, PkiError> {
        let blocks = pem::parse_many(pem_text).map_err(|e| PkiError::BadPem {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
        if blocks.is_empty() {
            return Err(PkiError::NoPem {
                what: what.to_string(),
                expected: "CERTIFICATE",
            });
        }
        blocks
            .into_iter()
            .enumerate()
            .map(|(i, block)| {
                let what = if i == 0 {
                    what.to_string()
                } else {
                    format!("{what} (certificate #{})", i + 1)
                };
                if block.tag() != "CERTIFICATE" {
                    return Err(PkiError::BadPem {
                        what,
                        reason: format!("unexpected {:?} block; expected CERTIFICATE", block.tag()),
                    });
                }
                Cert::from_der(block.into_contents(), &what)
            })
            .collect()
    }

    /// Reads certificates the way Go's `CertPool.AppendCertsFromPEM` does (istiod reads
    /// `root-cert.pem` and `cert-chain.pem` so): blocks other than CERTIFICATE, and certificates
    /// Go cannot parse, are skipped. Returns the certificates and a note per skipped block.
    pub fn lenient_from_pem(pem_text: &[u8], what: &str) -> (Vec<Self>, Vec<String>) {
        let (blocks, mut skipped) = super::secret_pem::parse_blocks_lenient(pem_text);
        let mut certs = Vec::new();
        for (i, block) in blocks.into_iter().enumerate() {
            let n = i + 1;
            if block.tag != "CERTIFICATE" {
                skipped.push(format!(
                    "block #{n} is {:?}, not a certificate: ignored",
                    block.tag
                ));
                continue;
            }
            match Cert::from_der(block.der.to_vec(), what) {
                Ok(c) if super::constraints::has_negative_serial(&c) => skipped.push(format!(
                    "certificate #{n} ({}) has a negative serial; Go 1.23+ cannot parse it: ignored",
                    c.info().subject
                )),
                Ok(c) => certs.push(c),
                Err(e) => skipped.push(format!("block #{n}: {e}: ignored")),
            }
        }
        (certs, skipped)
    }

    /// Parses a PEM text that must hold exactly one certificate.
    pub fn one_from_pem(pem_text: &[u8], what: &str) -> Result<Self, PkiError> {
        let mut certs = Cert::all_from_pem(pem_text, what)?;
        if certs.len() != 1 {
            return Err(PkiError::BadPem {
                what: what.to_string(),
                reason: format!("{} certificates found; expected exactly one", certs.len()),
            });
        }
        Ok(certs.remove(0))
    }

    pub fn der(&self) -> &[u8] {
        self.0.parsed.backing_cart()
    }

    pub fn info(&self) -> &CertInfo {
        &self.0.info
    }

    pub fn key(&self) -> &KeyDescription {
        &self.0.key
    }

    /// PEM with LF line endings (the `pem` crate defaults to CRLF).
    pub fn to_pem(&self) -> String {
        pem::encode_config(
            &pem::Pem::new("CERTIFICATE", self.der().to_vec()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// The parsed form.
    pub fn x509(&self) -> &X509Certificate<'_> {
        &self.0.parsed.get().0
    }

    /// The URIs of its CRL distribution points (RFC 5280 §4.2.1.13): where its issuer
    /// publishes the revocation list that covers it.
    pub fn crl_distribution_points(&self) -> Vec<String> {
        use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
        let mut uris = Vec::new();
        for ext in self.x509().extensions() {
            let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() else {
                continue;
            };
            for point in points.iter() {
                if let Some(DistributionPointName::FullName(names)) = &point.distribution_point {
                    for name in names {
                        if let GeneralName::URI(uri) = name {
                            uris.push((*uri).to_string());
                        }
                    }
                }
            }
        }
        uris
    }

    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.0.info.not_before <= now && now <= self.0.info.not_after
    }

    /// The subjectPublicKey bytes, for comparing with a private key's public half.
    pub fn public_key_raw(&self) -> Vec<u8> {
        self.x509().public_key().subject_public_key.data.to_vec()
    }

    pub fn is_self_issued(&self) -> bool {
        let c = self.x509();
        c.subject().as_raw() == c.issuer().as_raw()
    }

    /// Checks the expiry window at `now`, naming `what` on failure.
    pub fn check_valid_at(&self, now: OffsetDateTime, what: &str) -> Result<(), PkiError> {
        if now < self.0.info.not_before {
            return Err(PkiError::NotYetValid {
                what: what.to_string(),
                not_before: fmt_time(self.0.info.not_before),
            });
        }
        if now > self.0.info.not_after {
            return Err(PkiError::Expired {
                what: what.to_string(),
                not_after: fmt_time(self.0.info.not_after),
            });
        }
        Ok(())
    }

    /// Checks the key algorithm is one istiod supports and returns it.
    pub fn supported_key(&self, what: &str) -> Result<KeyAlgorithm, PkiError> {
        match &self.0.key {
            KeyDescription::Supported(a) => Ok(*a),
            KeyDescription::Unsupported(found) => Err(PkiError::UnsupportedKey {
                what: what.to_string(),
                found: found.clone(),
            }),
        }
    }
}

fn describe(
    x509: &X509Certificate<'_>,
    der: &[u8],
    what: &str,
) -> Result<(CertInfo, KeyDescription), PkiError> {
    let bad = |reason: String| PkiError::BadCert {
        what: what.to_string(),
        reason,
    };
    let basic = x509
        .basic_constraints()
        .map_err(|e| bad(format!("basicConstraints: {e}")))?;
    let (is_ca, path_len) = match basic {
        Some(b) => (b.value.ca, b.value.path_len_constraint),
        None => (false, None),
    };
    let key = key_description(x509);
    let key_algorithm = match &key {
        KeyDescription::Supported(a) => a.name().to_string(),
        KeyDescription::Unsupported(s) => s.clone(),
    };
    let info = CertInfo {
        serial: hex(x509.raw_serial()),
        subject: x509.subject().to_string(),
        issuer: x509.issuer().to_string(),
        not_before: x509.validity().not_before.to_datetime(),
        not_after: x509.validity().not_after.to_datetime(),
        fingerprint_sha256: fingerprint_sha256(der),
        is_ca,
        path_len,
        key_algorithm,
    };
    Ok((info, key))
}

fn key_description(x509: &X509Certificate<'_>) -> KeyDescription {
    let spki = x509.public_key();
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_PKCS1_RSAENCRYPTION {
        return match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                let bits = rsa.key_size();
                KeyAlgorithm::from_rsa_bits(bits)
                    .map(KeyDescription::Supported)
                    .unwrap_or_else(|| KeyDescription::Unsupported(format!("RSA-{bits}")))
            }
            _ => KeyDescription::Unsupported("RSA (unreadable modulus)".to_string()),
        };
    }
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => KeyDescription::Supported(KeyAlgorithm::EcdsaP256),
            Some(c) if c == OID_NIST_EC_P384 => KeyDescription::Supported(KeyAlgorithm::EcdsaP384),
            Some(c) if c.to_id_string() == "1.3.132.0.10" => {
                KeyDescription::Unsupported("ECDSA secp256k1".to_string())
            }
            Some(c) => KeyDescription::Unsupported(format!("ECDSA curve {}", c.to_id_string())),
            None => KeyDescription::Unsupported("ECDSA with explicit curve parameters".to_string()),
        };
    }
    if *oid == OID_SIG_ED25519 {
        return KeyDescription::Unsupported("Ed25519".to_string());
    }
    KeyDescription::Unsupported(format!("public key algorithm {}", oid.to_id_string()))
}

/// SHA-256 fingerprint of DER bytes, formatted like OpenSSL prints it.
/// Certificates parsed lately, by their exact DER: a mesh's root sits in every cluster's
/// `root-cert.pem` and `cert-chain.pem`, and each intermediate in two files, so one pass parses
/// the same bytes thousands of times. Successes only; what failed is parsed again, to name
/// where it was found.
mod parsed {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use super::Cert;

    /// Bounds the memory (a few KiB per certificate): cleared when full.
    const REMEMBERED: usize = 256;

    fn cache() -> &'static Mutex<HashMap<Vec<u8>, Cert>> {
        static PARSED: OnceLock<Mutex<HashMap<Vec<u8>, Cert>>> = OnceLock::new();
        PARSED.get_or_init(Mutex::default)
    }

    pub(super) fn known(der: &[u8]) -> Option<Cert> {
        cache().lock().ok()?.get(der).cloned()
    }

    pub(super) fn remember(cert: &Cert) {
        if let Ok(mut m) = cache().lock() {
            if m.len() >= REMEMBERED {
                m.clear();
            }
            m.insert(cert.der().to_vec(), cert.clone());
        }
    }
}

pub fn fingerprint_sha256(der: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = String::with_capacity(digest.as_ref().len() * 3);
    for (i, b) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// A SHA-256 fingerprint as `status` prints it (upper-case hex pairs joined by `:`), from
/// any case, with or without the colons.
pub fn normalize_fingerprint(text: &str) -> Result<String, String> {
    let hex: String = text
        .trim()
        .strip_prefix("sha256:")
        .unwrap_or(text.trim())
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed, as `cacertd \
             root show` prints it)"
        ));
    }
    let upper = hex.to_ascii_uppercase();
    Ok(upper
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect::<Vec<_>>()
        .join(":"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_pem_is_named() {
        let err = Cert::all_from_pem(b"not a pem", "root.pem")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("root.pem") && err.contains("no PEM block"),
            "{err}"
        );

        let bogus = pem::encode(&pem::Pem::new("CERTIFICATE", vec![0x30, 0x03, 1, 2, 3]));
        let err = Cert::all_from_pem(bogus.as_bytes(), "root.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid X.509"), "{err}");

        let other = pem::encode(&pem::Pem::new("PUBLIC KEY", vec![1]));
        let err = Cert::all_from_pem(other.as_bytes(), "x.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("PUBLIC KEY"), "{err}");
    }

    #[test]
    fn fingerprint_is_openssl_shaped() {
        let fp = fingerprint_sha256(b"abc");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.starts_with("BA:78:16:BF"));
    }
}
