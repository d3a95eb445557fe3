//! Private keys of certificate authorities, kept in memory that is wiped on drop and never printed.

use std::fmt;

use rcgen::{KeyPair, PublicKeyData, RsaKeySize, SignatureAlgorithm};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::PkiError;
use super::secret_pem;

/// The key algorithms istiod can sign with (docs/istio.md §1: RSA and ECDSA P-256/P-384;
/// Ed25519 and other curves are refused by Go's crypto/x509 as istiod uses it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl KeyAlgorithm {
    pub const ALL: [KeyAlgorithm; 5] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ];

    /// The name used in policies and output (`ecdsa-p256`, `rsa-4096`, ...).
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }

    pub fn from_rsa_bits(bits: usize) -> Option<Self> {
        match bits {
            2048 => Some(KeyAlgorithm::Rsa2048),
            3072 => Some(KeyAlgorithm::Rsa3072),
            4096 => Some(KeyAlgorithm::Rsa4096),
            _ => None,
        }
    }

    /// The signature algorithm a key of this kind signs with: SHA-256 for P-256 and RSA (what
    /// Istio's tooling uses), SHA-384 for P-384 (matching the curve's strength).
    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                &rcgen::PKCS_RSA_SHA256
            }
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyAlgorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = KeyAlgorithm::ALL.iter().map(|a| a.name()).collect();
                format!(
                    "unknown key algorithm {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// An rcgen key pair whose DER buffer is wiped on drop (rcgen only wipes on request). Every
/// `KeyPair` is put in one of these the moment it exists, error paths included. The aws-lc key
/// objects inside free through `OPENSSL_free`, which cleanses before freeing.
struct WipedKeyPair(KeyPair);

impl Drop for WipedKeyPair {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A CA private key, in memory wiped on drop. `Debug` shows the algorithm only.
pub struct CaKey {
    pair: WipedKeyPair,
    algorithm: KeyAlgorithm,
    /// The PEM label of the DER rcgen keeps: keys are written back in the form they came in
    /// (PKCS#8 for generated keys; PKCS#1 or SEC1 for imported ones), all three read by istiod.
    pem_tag: &'static str,
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaKey")
            .field("algorithm", &self.algorithm)
            .field("key", &"...")
            .finish()
    }
}

impl CaKey {
    /// Generates a fresh key from the operating system's random source.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, PkiError> {
        let alg = algorithm.signature_algorithm();
        let pair = WipedKeyPair(match algorithm {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => KeyPair::generate_for(alg)?,
            KeyAlgorithm::Rsa2048 => KeyPair::generate_rsa_for(alg, RsaKeySize::_2048)?,
            KeyAlgorithm::Rsa3072 => KeyPair::generate_rsa_for(alg, RsaKeySize::_3072)?,
            KeyAlgorithm::Rsa4096 => KeyPair::generate_rsa_for(alg, RsaKeySize::_4096)?,
        });
        Ok(CaKey {
            pair,
            algorithm,
            pem_tag: "PRIVATE KEY",
        })
    }

    /// Parses a PEM private key: PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY` or SEC1
    /// `EC PRIVATE KEY` (the three forms istiod reads, docs/istio.md §1). `what` names the input
    /// in errors; errors never include any byte of the key.
    pub fn from_pem(pem_text: &[u8], what: &str) -> Result<Self, PkiError> {
        let (tag, der) = one_key_block(pem_text, what)?;
        let (key_der, pem_tag): (PrivateKeyDer<'_>, &'static str) = match tag.as_str() {
            "PRIVATE KEY" => (
                PrivatePkcs8KeyDer::from(der.as_slice()).into(),
                "PRIVATE KEY",
            ),
            "RSA PRIVATE KEY" => (
                PrivatePkcs1KeyDer::from(der.as_slice()).into(),
                "RSA PRIVATE KEY",
            ),
            _ => (
                PrivateSec1KeyDer::from(der.as_slice()).into(),
                "EC PRIVATE KEY",
            ),
        };
        // An EC key is parsed once, on its curve: rcgen's own detection tries Ed25519 first,
        // and aws-lc checks the key pair while failing that (a point multiplication per key).
        let parsed = match ec_curve(&der) {
            Some(alg) => KeyPair::from_der_and_sign_algo(&key_der, alg.signature_algorithm())
                .or_else(|_| KeyPair::try_from(&key_der)),
            None => KeyPair::try_from(&key_der),
        };
        let pair = match parsed {
            Ok(pair) => WipedKeyPair(pair),
            Err(_) => {
                return Err(match unsupported_curve_name(&der) {
                    Some(found) => PkiError::UnsupportedKey {
                        what: what.to_string(),
                        found: found.to_string(),
                    },
                    None => PkiError::BadKey {
                        what: what.to_string(),
                        reason: format!(
                            "could not parse the {tag} block (corrupt, or an unsupported key type)"
                        ),
                    },
                });
            }
        };
        let algorithm = classify(&pair.0).map_err(|found| PkiError::UnsupportedKey {
            what: what.to_string(),
            found,
        })?;
        // rcgen assumes SHA-256 for every RSA key and picks the curve's own hash for EC; make
        // sure the pair signs with the algorithm we would have generated it for.
        let pair = if pair.0.algorithm() == algorithm.signature_algorithm() {
            pair
        } else {
            WipedKeyPair(KeyPair::from_der_and_sign_algo(
                &key_der,
                algorithm.signature_algorithm(),
            )?)
        };
        Ok(CaKey {
            pair,
            algorithm,
            pem_tag,
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The key in PEM (PKCS#8, or the PKCS#1/SEC1 form it was imported in), in a buffer wiped
    /// on drop.
    pub fn to_pem(&self) -> Zeroizing<String> {
        secret_pem::encode_block(self.pem_tag, self.pair.0.serialized_der())
    }

    /// The subjectPublicKey bytes (the BIT STRING contents of the SPKI).
    pub fn public_key_raw(&self) -> &[u8] {
        self.pair.0.public_key_raw()
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn public_key_spki(&self) -> Vec<u8> {
        self.pair.0.subject_public_key_info()
    }

    pub(crate) fn signer(&self) -> &KeyPair {
        &self.pair.0
    }
}

/// Maps a parsed key pair onto the algorithms istiod supports, or names what it is.
fn classify(pair: &KeyPair) -> Result<KeyAlgorithm, String> {
    let alg = pair.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Ok(KeyAlgorithm::EcdsaP256)
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Ok(KeyAlgorithm::EcdsaP384)
    } else if alg == &rcgen::PKCS_ED25519 {
        Err("Ed25519".to_string())
    } else if alg == &rcgen::PKCS_RSA_SHA256 {
        let spki = pair.subject_public_key_info();
        let bits = rsa_bits(&spki).ok_or_else(|| "RSA (unreadable modulus)".to_string())?;
        KeyAlgorithm::from_rsa_bits(bits).ok_or_else(|| format!("RSA-{bits}"))
    } else {
        Err("ECDSA P-521".to_string())
    }
}

fn rsa_bits(spki_der: &[u8]) -> Option<usize> {
    use x509_parser::prelude::FromDer;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der).ok()?;
    match spki.parsed().ok()? {
        x509_parser::public_key::PublicKey::RSA(rsa) => Some(rsa.key_size()),
        _ => None,
    }
}

/// Names a curve that aws-lc refused to load, so the error says why rather than "corrupt".
/// Looks for the DER-encoded OIDs of curves people commonly try.
/// The curve an EC key names (PKCS#8 or SEC1), when it is one cacertd signs with.
fn ec_curve(der: &[u8]) -> Option<KeyAlgorithm> {
    // 1.2.840.10045.3.1.7 (P-256), 1.3.132.0.34 (P-384)
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    match (has(P256), has(P384)) {
        (true, false) => Some(KeyAlgorithm::EcdsaP256),
        (false, true) => Some(KeyAlgorithm::EcdsaP384),
        _ => None,
    }
}

fn unsupported_curve_name(der: &[u8]) -> Option<&'static str> {
    const KNOWN: [(&[u8], &str); 4] = [
        // 1.3.132.0.10
        (
            &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a],
            "ECDSA secp256k1",
        ),
        // 1.3.101.112 / 1.3.101.113
        (&[0x06, 0x03, 0x2b, 0x65, 0x70], "Ed25519"),
        (&[0x06, 0x03, 0x2b, 0x65, 0x71], "Ed448"),
        // 1.2.840.10045.3.1.1 (P-192)
        (
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x01],
            "ECDSA P-192",
        ),
    ];
    KNOWN
        .iter()
        .find(|(oid, _)| der.windows(oid.len()).any(|w| w == *oid))
        .map(|(_, name)| *name)
}

/// The one private-key block of a PEM text (an `EC PARAMETERS` block beside it is allowed),
/// its DER in a wiped buffer. Errors never include any byte of the key.
fn one_key_block(
    pem_text: &[u8],
    what: &str,
) -> Result<(String, zeroize::Zeroizing<Vec<u8>>), PkiError> {
    let blocks = secret_pem::parse_blocks(pem_text).map_err(|reason| PkiError::BadKey {
        what: what.to_string(),
        reason,
    })?;
    let mut keys = Vec::new();
    for block in blocks {
        let (tag, der) = (block.tag, block.der);
        match tag.as_str() {
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => keys.push((tag, der)),
            // `openssl ecparam -genkey` writes the curve first; the key block names it again.
            "EC PARAMETERS" => {}
            "ENCRYPTED PRIVATE KEY" => {
                return Err(PkiError::BadKey {
                    what: what.to_string(),
                    reason:
                        "the key is encrypted; decrypt it first (openssl pkey -in F -out F.plain)"
                            .to_string(),
                });
            }
            other => {
                return Err(PkiError::BadKey {
                    what: what.to_string(),
                    reason: format!("unexpected PEM block {other:?}; expected a private key"),
                });
            }
        }
    }
    match keys.len() {
        0 => Err(PkiError::NoPem {
            what: what.to_string(),
            expected: "PRIVATE KEY",
        }),
        1 => Ok(keys.remove(0)),
        n => Err(PkiError::BadKey {
            what: what.to_string(),
            reason: format!("{n} private keys found; expected exactly one"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_pem() {
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa2048,
        ] {
            let key = CaKey::generate(alg).unwrap();
            let pem = key.to_pem();
            let begin = secret_pem::armour("PRIVATE KEY", "", None);
            assert!(pem.starts_with(begin.lines().next().unwrap()));
            let back = CaKey::from_pem(pem.as_bytes(), "test key").unwrap();
            assert_eq!(back.algorithm(), alg);
            assert_eq!(back.public_key_raw(), key.public_key_raw());
        }
    }

    #[test]
    fn imported_sec1_keys_are_written_back_in_their_own_form() {
        // PKCS#1 RSA keys take the same path; tests/issue_openssl.rs imports one made by openssl.
        use rustls::pki_types::pem::PemObject;
        let (alg, tag) = (KeyAlgorithm::EcdsaP256, "EC PRIVATE KEY");
        let key = CaKey::generate(alg).unwrap();
        let pkcs8 = key.pair.0.serialize_der();
        let kp = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &pkcs8,
        )
        .unwrap();
        let inner =
            aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::EcPrivateKeyRfc5915Der<'_>>::as_der(
                &kp.private_key(),
            )
            .unwrap()
            .as_ref()
            .to_vec();
        let pem_in = secret_pem::encode_block(tag, &inner);
        let imported = CaKey::from_pem(pem_in.as_bytes(), "k").unwrap();
        assert_eq!(imported.algorithm(), alg);
        let out = imported.to_pem();
        assert!(out.starts_with(&format!("-----BEGIN {tag}-----")), "{tag}");
        let again = CaKey::from_pem(out.as_bytes(), "k").unwrap();
        assert_eq!(again.public_key_raw(), key.public_key_raw());
        assert!(rustls::pki_types::PrivateKeyDer::from_pem_slice(out.as_bytes()).is_ok());
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = CaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let dbg = format!("{key:?}");
        assert!(dbg.contains("EcdsaP256"));
        let pem = key.to_pem();
        let body: String = pem.lines().nth(1).unwrap().chars().take(20).collect();
        assert!(!dbg.contains(&body));
        assert!(!dbg.contains("PRIVATE"));
    }

    #[test]
    fn garbage_and_truncated_keys_are_refused_without_echoing_them() {
        let err = CaKey::from_pem(b"hello", "k.pem").unwrap_err().to_string();
        assert!(
            err.contains("k.pem") && err.contains("no PEM block"),
            "{err}"
        );

        let key = CaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let pem = key.to_pem();
        let truncated = &pem[..pem.len() / 2];
        let err = CaKey::from_pem(truncated.as_bytes(), "k.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("k.pem"), "{err}");
        let body_line = pem.lines().nth(1).unwrap();
        assert!(!err.contains(body_line));

        let mangled = pem.replace('A', "B");
        assert!(CaKey::from_pem(mangled.as_bytes(), "k.pem").is_err());
    }

    #[test]
    fn ed25519_is_refused_by_name() {
        let pair = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let err = CaKey::from_pem(pair.serialize_pem().as_bytes(), "ed.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Ed25519"), "{err}");
    }

    #[test]
    fn encrypted_keys_get_a_hint() {
        let pem = secret_pem::encode_block("ENCRYPTED PRIVATE KEY", &[1, 2, 3]);
        let err = CaKey::from_pem(pem.as_bytes(), "enc.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("encrypted"), "{err}");
    }

    #[test]
    fn algorithm_names_parse_back() {
        for a in KeyAlgorithm::ALL {
            assert_eq!(a.name().parse::<KeyAlgorithm>().unwrap(), a);
        }
        assert!("ed25519".parse::<KeyAlgorithm>().is_err());
    }
}
