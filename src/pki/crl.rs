//! Certificate revocation lists, as istiod and Envoy use them from `ca-crl.pem`
//! (docs/istio.md §14): signing one with a CA key, reading and checking the ones a file holds,
//! and istiod's own rule for accepting the file.

use std::fmt;

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, RevocationReason, RevokedCertParams,
    SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::{CaKey, Cert, PkiError};

/// One certificate revocation list: its DER and what cacertd reads from it.
#[derive(Clone, PartialEq, Eq)]
pub struct Crl {
    der: Vec<u8>,
    /// The issuer's name, raw DER, as certificates name their issuer.
    issuer_raw: Vec<u8>,
    issuer: String,
    this_update: OffsetDateTime,
    next_update: Option<OffsetDateTime>,
    /// Serial numbers listed, as the raw bytes certificates carry.
    revoked: Vec<Vec<u8>>,
    entries: Vec<Revoked>,
    number: Option<u64>,
}

impl fmt::Debug for Crl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crl")
            .field("issuer", &self.issuer)
            .field("revoked", &self.revoked.len())
            .finish()
    }
}

/// Why a certificate is revoked, as `revoke --reason` names it (RFC 5280 §5.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Its key leaked, or may have.
    KeyCompromise,
    /// It was replaced, and what it signed must not be accepted any more.
    Superseded,
    /// Its cluster left the mesh.
    CessationOfOperation,
    /// Any other reason (as read from a list).
    Unspecified,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::KeyCompromise => "key-compromise",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessation-of-operation",
            Reason::Unspecified => "unspecified",
        }
    }

    fn code(self) -> RevocationReason {
        match self {
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
            Reason::Unspecified => RevocationReason::Unspecified,
        }
    }
}

/// A certificate to list: its serial (raw bytes, as in the certificate), when, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revoked {
    /// The serial number in hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// Unix seconds.
    pub at: i64,
    pub reason: Reason,
}

impl Revoked {
    pub fn of(cert: &Cert, at: OffsetDateTime, reason: Reason) -> Self {
        Revoked {
            serial: hex(cert.x509().raw_serial()),
            at: at.unix_timestamp(),
            reason,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Crl {
    pub fn from_der(der: Vec<u8>, what: &str) -> Result<Self, PkiError> {
        let bad = |reason: String| PkiError::Invalid {
            what: what.to_string(),
            reason: format!("not a valid certificate revocation list: {reason}"),
        };
        let (rest, crl) =
            CertificateRevocationList::from_der(&der).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes after it".into()));
        }
        let issuer_raw = crl.issuer().as_raw().to_vec();
        let issuer = crl.issuer().to_string();
        let this_update = crl.last_update().to_datetime();
        let next_update = crl.next_update().map(|t| t.to_datetime());
        let revoked = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect();
        let entries = crl
            .iter_revoked_certificates()
            .map(|r| Revoked {
                serial: hex(r.raw_serial()),
                at: r.revocation_date.timestamp(),
                reason: match r.reason_code().map(|(_, c)| c.0) {
                    Some(1) => Reason::KeyCompromise,
                    Some(4) => Reason::Superseded,
                    Some(5) => Reason::CessationOfOperation,
                    _ => Reason::Unspecified,
                },
            })
            .collect();
        let number = crl.crl_number().and_then(|n| u64::try_from(n.clone()).ok());
        Ok(Crl {
            der,
            issuer_raw,
            issuer,
            this_update,
            next_update,
            revoked,
            entries,
            number,
        })
    }

    /// Every `X509 CRL` block of `pem_text`; any other block is an error naming it.
    pub fn all_from_pem(pem_text: &[u8], what: &str) -> Result<Vec<Self>, PkiError> {
        let blocks = pem::parse_many(pem_text).map_err(|e| PkiError::BadPem {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
        blocks
            .into_iter()
            .enumerate()
            .map(|(i, block)| {
                let what = format!("{what} (block #{})", i + 1);
                if block.tag() != "X509 CRL" {
                    return Err(PkiError::BadPem {
                        what,
                        reason: format!("unexpected {:?} block; expected X509 CRL", block.tag()),
                    });
                }
                Crl::from_der(block.into_contents(), &what)
            })
            .collect()
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn to_pem(&self) -> String {
        let block = pem::Pem::new("X509 CRL", self.der.clone());
        pem::encode_config(
            &block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// The issuer's name, as `openssl crl -issuer` prints it.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn this_update(&self) -> OffsetDateTime {
        self.this_update
    }

    /// Past this time Envoy rejects every chain the list covers (docs/istio.md §14).
    pub fn next_update(&self) -> Option<OffsetDateTime> {
        self.next_update
    }

    /// Whether `ca` signed this list: its subject is the list's issuer and its key verifies the
    /// signature.
    pub fn signed_by(&self, ca: &Cert) -> bool {
        let x = ca.x509();
        if x.subject().as_raw() != self.issuer_raw.as_slice() {
            return false;
        }
        let Ok((_, crl)) = CertificateRevocationList::from_der(&self.der) else {
            return false;
        };
        crl.verify_signature(x.public_key()).is_ok()
    }

    /// Whether this list revokes `cert`: it names `cert`'s issuer and lists its serial.
    pub fn lists(&self, cert: &Cert) -> bool {
        let x = cert.x509();
        x.issuer().as_raw() == self.issuer_raw.as_slice()
            && self.revoked.iter().any(|s| s.as_slice() == x.raw_serial())
    }

    /// What it lists.
    pub fn entries(&self) -> &[Revoked] {
        &self.entries
    }

    /// Its CRL number, when it has one that fits.
    pub fn number(&self) -> Option<u64> {
        self.number
    }

    /// How many certificates it lists.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }
}

/// Signs a list of `revoked` certificates with `ca`'s key, valid from `now` until
/// `next_update`. `number` is the list's CRL number, which must grow with each list a CA signs.
pub fn sign_crl(
    ca: &Cert,
    key: &CaKey,
    revoked: &[Revoked],
    number: u64,
    now: OffsetDateTime,
    next_update: OffsetDateTime,
) -> Result<Crl, PkiError> {
    let what = format!("the revocation list of {}", ca.info().subject);
    let invalid = |reason: String| PkiError::Invalid {
        what: what.clone(),
        reason,
    };
    if next_update <= now {
        return Err(invalid("its next update must lie in the future".into()));
    }
    let revoked_certs = revoked
        .iter()
        .map(|r| {
            let serial = unhex(&r.serial)
                .ok_or_else(|| invalid(format!("serial {:?} is not hex", r.serial)))?;
            let at = OffsetDateTime::from_unix_timestamp(r.at)
                .map_err(|_| invalid(format!("revocation time {} is out of range", r.at)))?;
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: at,
                reason_code: Some(r.reason.code()),
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, PkiError>>()?;
    let params = CertificateRevocationListParams {
        this_update: now - super::BACKDATE,
        next_update,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let issuer = Issuer::from_ca_cert_der(&ca.der().into(), key.signer())?;
    let crl = params.signed_by(&issuer)?;
    let crl = Crl::from_der(crl.der().to_vec(), &what)?;
    if !crl.signed_by(ca) {
        return Err(invalid(
            "it does not verify with the CA's certificate".into(),
        ));
    }
    Ok(crl)
}

/// istiod's rule for `ca-crl.pem` (docs/istio.md §14): every certificate of `cert-chain.pem`
/// must have a list in the file signed by it. Returns the certificates without one.
pub fn uncovered<'a>(chain: &'a [Cert], crls: &[Crl]) -> Vec<&'a Cert> {
    chain
        .iter()
        .filter(|c| !crls.iter().any(|l| l.signed_by(c)))
        .collect()
}

/// `lists` without those past their next update (at `now`) that no certificate of `chain`
/// signed. Such a list is of a CA outside the set's own chain — another cluster's
/// predecessor, a revoked intermediate — and runs until that CA's `notAfter`, after which
/// nothing it covers verifies anyway: it is left out wherever the lists are rewritten.
pub fn without_lapsed(lists: &[Crl], chain: &[Cert], now: OffsetDateTime) -> Vec<Crl> {
    lists
        .iter()
        .filter(|l| chain.iter().any(|c| l.signed_by(c)) || l.next_update().is_none_or(|n| n > now))
        .cloned()
        .collect()
}

/// The lists of `files` that its own chain's certificates signed (`cert-chain.pem`): those
/// that, once expired, make Envoy reject the cluster's own chains.
pub fn own_lists(files: &super::CaCertsFiles) -> Vec<Crl> {
    if !files.has_lists() {
        return Vec::new();
    }
    let Ok(lists) = Crl::all_from_pem(&files.ca_crl, super::CaCertsFiles::CA_CRL) else {
        return Vec::new();
    };
    let (chain, _) = Cert::lenient_from_pem(&files.cert_chain, super::CaCertsFiles::CERT_CHAIN);
    lists
        .into_iter()
        .filter(|l| chain.iter().any(|c| l.signed_by(c)))
        .collect()
}

/// Checks a set's `ca-crl.pem` as istiod and Envoy will use it (docs/istio.md §14): every list
/// parses; every certificate of `cert-chain.pem` has a list signed by it (istiod refuses the
/// set otherwise); none of those lists is past its next update (Envoy would then reject every
/// chain it covers — a lapsed list of a CA outside the chain covers nothing alive, see
/// [`without_lapsed`]); and no certificate of the chain is revoked by the file (the cluster
/// would cut itself off). Returns the lists; a set without the file passes with none.
pub fn verify_ca_crl(files: &super::CaCertsFiles, now: OffsetDateTime) -> Result<Vec<Crl>, String> {
    if !files.has_lists() {
        return Ok(Vec::new());
    }
    let what = super::CaCertsFiles::CA_CRL;
    let crls = Crl::all_from_pem(&files.ca_crl, what).map_err(|e| e.to_string())?;
    let (chain, _) = Cert::lenient_from_pem(&files.cert_chain, super::CaCertsFiles::CERT_CHAIN);
    let missing = uncovered(&chain, &crls);
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|c| c.info().subject.as_str()).collect();
        return Err(format!(
            "{what}: no revocation list signed by {} (istiod requires one for every \
             certificate of cert-chain.pem)",
            names.join(", ")
        ));
    }
    for crl in &crls {
        if let Some(next) = crl.next_update()
            && next <= now
            && chain.iter().any(|c| crl.signed_by(c))
        {
            return Err(format!(
                "{what}: the list of {} expired at {} (Envoy would reject every chain it covers)",
                crl.issuer(),
                super::fmt_time(next)
            ));
        }
    }
    for cert in &chain {
        if let Some(crl) = crls.iter().find(|l| l.lists(cert)) {
            return Err(format!(
                "{what}: the list of {} revokes {} of cert-chain.pem (serial {}): the cluster \
                 would cut itself off",
                crl.issuer(),
                cert.info().subject,
                hex(cert.x509().raw_serial())
            ));
        }
    }
    Ok(crls)
}

/// `current` with each list of `fresh` in place of the one its signer (one of `signers`)
/// published before, when it is newer (a later thisUpdate); lists of other signers are kept
/// as they are. Returns the lists and how many were replaced. A list of `fresh` that none of
/// `signers` signed is an error naming it.
pub fn refreshed(
    current: &[Crl],
    fresh: &[Crl],
    signers: &[Cert],
) -> Result<(Vec<Crl>, usize), String> {
    let mut out = current.to_vec();
    let mut replaced = 0;
    for list in fresh {
        let Some(signer) = signers.iter().find(|c| list.signed_by(c)) else {
            return Err(format!(
                "the list of {} is signed by none of the CAs above the mesh CA",
                list.issuer()
            ));
        };
        match out.iter_mut().find(|l| l.signed_by(signer)) {
            Some(old) if old.this_update() < list.this_update() => {
                *old = list.clone();
                replaced += 1;
            }
            Some(_) => {}
            None => {
                out.push(list.clone());
                replaced += 1;
            }
        }
    }
    Ok((out, replaced))
}

/// The lists as one `ca-crl.pem`, in order, without duplicates.
pub fn crls_pem(crls: &[Crl]) -> Vec<u8> {
    let mut out = String::new();
    let mut seen: Vec<&[u8]> = Vec::new();
    for crl in crls {
        if !seen.contains(&crl.der()) {
            seen.push(crl.der());
            out.push_str(&crl.to_pem());
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::fixtures;

    fn now() -> OffsetDateTime {
        fixtures::now()
    }

    #[test]
    fn a_signed_list_names_its_issuer_verifies_and_lists_what_it_revokes() {
        let root = fixtures::root();
        let a = fixtures::intermediate(&root, "a");
        let b = fixtures::intermediate(&root, "b");
        let crl = sign_crl(
            root.cert(),
            root.key(),
            &[Revoked::of(&a.cert, now(), Reason::KeyCompromise)],
            2,
            now(),
            now() + time::Duration::days(30),
        )
        .unwrap();
        assert!(crl.signed_by(root.cert()));
        assert!(
            !crl.signed_by(&a.cert),
            "a list is signed by its issuer only"
        );
        assert!(crl.lists(&a.cert));
        assert!(!crl.lists(&b.cert));
        assert_eq!(crl.revoked_count(), 1);
        assert_eq!(crl.number(), Some(2));
        assert_eq!(
            crl.entries()[0].serial,
            Revoked::of(&a.cert, now(), Reason::KeyCompromise).serial
        );
        assert_eq!(crl.entries()[0].reason, Reason::KeyCompromise);
        let back = Crl::all_from_pem(&crls_pem(&[crl.clone(), crl.clone()]), "f").unwrap();
        assert_eq!(back, vec![crl], "duplicates are written once");
    }

    #[test]
    fn a_list_signed_by_another_key_with_the_same_name_does_not_verify() {
        let root = fixtures::root();
        let other = fixtures::root(); // same subject, another key
        let crl = sign_crl(
            other.cert(),
            other.key(),
            &[],
            1,
            now(),
            now() + time::Duration::days(1),
        )
        .unwrap();
        assert_eq!(root.cert().info().subject, other.cert().info().subject);
        assert!(!crl.signed_by(root.cert()));
    }

    #[test]
    fn istiods_rule_names_each_certificate_of_the_chain_without_its_own_list() {
        let root = fixtures::root();
        let a = fixtures::intermediate(&root, "a");
        let later = now() + time::Duration::days(1);
        let by_root = sign_crl(root.cert(), root.key(), &[], 1, now(), later).unwrap();
        let by_a = sign_crl(&a.cert, &a.key, &[], 1, now(), later).unwrap();
        let chain = [a.cert.clone(), root.cert().clone()];
        assert!(uncovered(&chain, &[by_root.clone(), by_a.clone()]).is_empty());
        assert_eq!(uncovered(&chain, &[by_root]), vec![&a.cert]);
        assert_eq!(uncovered(&chain, &[by_a]), vec![root.cert()]);
    }

    #[test]
    fn a_sets_lists_must_cover_its_chain_be_current_and_spare_its_own_chain() {
        let root = fixtures::root();
        let mut files = fixtures::cacerts_under(&root);
        let own = Cert::one_from_pem(&files.ca_cert, "ca-cert.pem").unwrap();
        let key = CaKey::from_pem(&files.ca_key, "ca-key.pem").unwrap();
        let later = now() + time::Duration::days(30);
        let by_root = sign_crl(root.cert(), root.key(), &[], 1, now(), later).unwrap();
        let by_own = sign_crl(&own, &key, &[], 1, now(), later).unwrap();
        assert_eq!(
            verify_ca_crl(&files, now()).unwrap(),
            vec![],
            "no file, nothing to check"
        );

        files.ca_crl = crls_pem(std::slice::from_ref(&by_root));
        let err = verify_ca_crl(&files, now()).unwrap_err();
        assert!(
            err.contains("no revocation list signed by") && err.contains("c1"),
            "{err}"
        );

        files.ca_crl = crls_pem(&[by_root, by_own.clone()]);
        assert_eq!(verify_ca_crl(&files, now()).unwrap().len(), 2);
        let err = verify_ca_crl(&files, later).unwrap_err();
        assert!(err.contains("expired"), "{err}");

        let revoking = Revoked::of(&own, now(), Reason::KeyCompromise);
        let by_root = sign_crl(root.cert(), root.key(), &[revoking], 2, now(), later).unwrap();
        files.ca_crl = crls_pem(&[by_root, by_own]);
        let err = verify_ca_crl(&files, now()).unwrap_err();
        assert!(err.contains("cut itself off"), "{err}");
    }

    /// A list of a CA outside the set's chain (a predecessor's) lapses at that CA's end,
    /// harmlessly: it is not refused, not counted as the set's expiry, and left out when the
    /// lists are rewritten; a lapsed list of the chain's own CA still is refused.
    #[test]
    fn a_lapsed_list_of_a_ca_outside_the_chain_is_harmless_and_left_out() {
        let root = fixtures::root();
        let mut files = fixtures::cacerts_under(&root);
        let own = Cert::one_from_pem(&files.ca_cert, "ca-cert.pem").unwrap();
        let key = CaKey::from_pem(&files.ca_key, "ca-key.pem").unwrap();
        let predecessor = fixtures::intermediate(&root, "old");
        let soon = now() + time::Duration::days(3);
        let later = now() + time::Duration::days(30);
        let by_root = sign_crl(root.cert(), root.key(), &[], 1, now(), later).unwrap();
        let by_own = sign_crl(&own, &key, &[], 1, now(), later).unwrap();
        let by_old = sign_crl(&predecessor.cert, &predecessor.key, &[], 1, now(), soon).unwrap();
        files.ca_crl = crls_pem(&[by_root.clone(), by_own.clone(), by_old]);
        let after = soon + time::Duration::days(1);

        assert_eq!(verify_ca_crl(&files, after).unwrap().len(), 3);
        let own_expiries: Vec<_> = own_lists(&files)
            .iter()
            .filter_map(Crl::next_update)
            .collect();
        assert_eq!(own_expiries, vec![later, later]);
        let (chain, _) = Cert::lenient_from_pem(&files.cert_chain, "cert-chain.pem");
        let all = Crl::all_from_pem(&files.ca_crl, "ca-crl.pem").unwrap();
        assert_eq!(without_lapsed(&all, &chain, now()).len(), 3);
        assert_eq!(
            without_lapsed(&all, &chain, after),
            vec![by_root.clone(), by_own.clone()]
        );

        // The chain's own list lapsing is another matter.
        let own_soon = sign_crl(&own, &key, &[], 2, now(), soon).unwrap();
        files.ca_crl = crls_pem(&[by_root, own_soon]);
        let err = verify_ca_crl(&files, after).unwrap_err();
        assert!(err.contains("expired"), "{err}");
        assert_eq!(without_lapsed(&all[..1], &chain, after).len(), 1);
    }

    #[test]
    fn a_newer_list_of_the_same_signer_replaces_the_old_one_and_no_other() {
        let root = fixtures::root();
        let a = fixtures::intermediate(&root, "a");
        let later = now() + time::Duration::days(30);
        let old = sign_crl(root.cert(), root.key(), &[], 1, now(), later).unwrap();
        let own = sign_crl(&a.cert, &a.key, &[], 1, now(), later).unwrap();
        let newer = sign_crl(
            root.cert(),
            root.key(),
            &[],
            2,
            now() + time::Duration::days(1),
            later,
        )
        .unwrap();
        let signers = [root.cert().clone()];
        let (lists, n) = refreshed(
            &[own.clone(), old.clone()],
            std::slice::from_ref(&newer),
            &signers,
        )
        .unwrap();
        assert_eq!((lists, n), (vec![own.clone(), newer.clone()], 1));
        // An older one changes nothing.
        let (lists, n) = refreshed(&[own.clone(), newer.clone()], &[old], &signers).unwrap();
        assert_eq!((lists, n), (vec![own.clone(), newer], 0));
        // One signed by a CA that is not above the mesh CA: named.
        let err = refreshed(&[], &[own], &signers).unwrap_err();
        assert!(err.contains("signed by none"), "{err}");
    }

    #[test]
    fn bad_input_is_named() {
        let err = Crl::all_from_pem(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "ca-crl.pem",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ca-crl.pem (block #1)") && err.contains("X509 CRL"),
            "{err}"
        );
        let err = Crl::all_from_pem(
            b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
            "ca-crl.pem",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("not a valid certificate revocation list"),
            "{err}"
        );
        let root = fixtures::root();
        assert!(sign_crl(root.cert(), root.key(), &[], 1, now(), now()).is_err());
    }
}
