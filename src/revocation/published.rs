//! The revocation lists of the CAs above the mesh CA (a company's intermediates and offline
//! root), fetched where the company publishes them: each certificate names, in its CRL
//! distribution points (RFC 5280 §4.2.1.13), where its issuer's list is. Plain HTTP, as RFC
//! 5280 and most PKIs publish them: a list is signed, and one its issuer did not sign is
//! refused, so the transport needs no trust of its own (and HTTPS would make fetching a list
//! depend on the revocation of the server's own certificate).

use std::time::Duration;

use crate::pki::{Cert, Crl};

/// How long one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a published list may weigh.
pub const MAX_LIST_BYTES: usize = 16 << 20;

/// The list of each CA above the mesh CA, from where the certificate below it says its
/// issuer publishes: `chain` is the mesh CA, then the CAs above it up to the anchor. Each
/// list must be signed by the CA it is for. Errors name the certificate, the address and
/// what went wrong.
pub async fn fetch_published(chain: &[Cert]) -> Result<Vec<Crl>, String> {
    let client = reqwest::ClientBuilder::new()
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .map_err(|e| format!("cannot build the HTTP client for revocation lists: {e}"))?;
    let mut lists = Vec::new();
    for pair in chain.windows(2) {
        let (cert, issuer) = (&pair[0], &pair[1]);
        let subject = &cert.info().subject;
        let uris: Vec<String> = cert
            .crl_distribution_points()
            .into_iter()
            .filter(|u| u.starts_with("http://"))
            .collect();
        if uris.is_empty() {
            return Err(format!(
                "{subject} names no http:// CRL distribution point, so the list of {} cannot be \
                 fetched: pass it with --chain-crl FILE",
                issuer.info().subject
            ));
        }
        let mut errors = Vec::new();
        let mut found = None;
        for uri in &uris {
            match fetch_one(&client, uri, issuer).await {
                Ok(list) => {
                    found = Some(list);
                    break;
                }
                Err(e) => errors.push(format!("{uri}: {e}")),
            }
        }
        match found {
            Some(list) => lists.push(list),
            None => {
                return Err(format!(
                    "the list of {} (named in {subject}): {}",
                    issuer.info().subject,
                    errors.join("; ")
                ));
            }
        }
    }
    Ok(lists)
}

/// One list from `uri`, DER or PEM, which `issuer` must have signed.
async fn fetch_one(client: &reqwest::Client, uri: &str, issuer: &Cert) -> Result<Crl, String> {
    let mut response = client
        .get(uri)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if body.len() + chunk.len() > MAX_LIST_BYTES {
            return Err(format!("larger than {} MiB", MAX_LIST_BYTES >> 20));
        }
        body.extend_from_slice(&chunk);
    }
    let lists = match body.starts_with(b"-----BEGIN") {
        true => Crl::all_from_pem(&body, uri).map_err(|e| e.to_string())?,
        false => vec![Crl::from_der(body, uri).map_err(|e| e.to_string())?],
    };
    lists
        .into_iter()
        .find(|l| l.signed_by(issuer))
        .ok_or_else(|| format!("not a list {} signed", issuer.info().subject))
}
