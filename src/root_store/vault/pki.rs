//! vault-pki: the root key stays in Vault's PKI engine; Vault signs, cacertd checks.

use std::time::Duration;

use vaultrs::client::VaultClient;

use super::{RawRequest, VaultError, VaultSession};
use crate::pki::{CaKey, Cert, IntermediateCa, IntermediateSpec, PkiError, RootSpec};

mod revocation;

/// The `key_type` and `key_bits` Vault's PKI engine takes for a key algorithm.
fn key_type(alg: crate::pki::KeyAlgorithm) -> (&'static str, u64) {
    use crate::pki::KeyAlgorithm;
    match alg {
        KeyAlgorithm::EcdsaP256 => ("ec", 256),
        KeyAlgorithm::EcdsaP384 => ("ec", 384),
        KeyAlgorithm::Rsa2048 => ("rsa", 2048),
        KeyAlgorithm::Rsa3072 => ("rsa", 3072),
        KeyAlgorithm::Rsa4096 => ("rsa", 4096),
    }
}

/// vault-pki: the root key stays in Vault's PKI engine.
#[derive(Clone)]
pub struct VaultPki {
    pub session: std::sync::Arc<VaultSession>,
    pub mount: String,
    /// An issuer name or id; `None` signs with the mount's default issuer.
    pub issuer: Option<String>,
}

impl VaultPki {
    pub fn describe(&self) -> String {
        match &self.issuer {
            Some(i) => format!(
                "vault-pki {} issuer {i} at {}",
                self.mount,
                self.session.address()
            ),
            None => format!("vault-pki {} at {}", self.mount, self.session.address()),
        }
    }

    /// The mount must be a PKI secrets engine: anything else answers the PKI paths with 404s
    /// that would read as "no root yet".
    async fn check_mount(&self) -> Result<(), VaultError> {
        let info = self.session.mount_info(&self.mount).await?;
        if info.kind != "pki" {
            return Err(VaultError::Mount {
                mount: self.mount.clone(),
                problem: format!(
                    "is {}; the vault-pki store needs a PKI secrets engine (vault secrets enable \
                     -path={} pki)",
                    info.kind, self.mount
                ),
            });
        }
        Ok(())
    }

    /// The trust anchor: the issuer's own certificate when it is a root, else the
    /// self-signed certificate its `ca_chain` leads to. `None` if the mount has no issuer yet.
    pub async fn root_cert(&self) -> Result<Option<Cert>, VaultError> {
        Ok(self.path().await?.and_then(|mut path| path.pop()))
    }

    /// The issuer's certificate, then those above it up to and including the anchor, from the
    /// issuer's `ca_chain` as Vault returns it (a "pki_int" mount whose issuer a root mount,
    /// or an offline root, signed). It must lead to a self-signed anchor: that is what every
    /// cluster will trust.
    pub async fn path(&self) -> Result<Option<Vec<Cert>>, VaultError> {
        let Some(signing) = self.signing_cert().await? else {
            return Ok(None);
        };
        if signing.is_self_issued() {
            return Ok(Some(vec![signing]));
        }
        let reference = self.issuer.as_deref().unwrap_or("default");
        let chain = self
            .read_issuer(reference)
            .await?
            .map(|r| r.ca_chain)
            .unwrap_or_default();
        let what = format!("{} issuer's ca_chain", self.describe());
        let malformed = |reason: String| VaultError::Malformed {
            what: what.clone(),
            reason,
        };
        let mut above = Vec::new();
        for pem in &chain {
            for cert in
                Cert::all_from_pem(pem.as_bytes(), &what).map_err(|e| malformed(e.to_string()))?
            {
                if cert != signing && !above.contains(&cert) {
                    above.push(cert);
                }
            }
        }
        crate::pki::RootCa::check_chain_structure(&signing, &above).map_err(|reason| {
            malformed(format!(
                "{reason}; set the issuer's certificate with its whole chain up to the root \
                 ({}/intermediate/set-signed)",
                self.mount
            ))
        })?;
        if above.is_empty() {
            return Err(malformed(
                "the issuer is not self-signed and Vault gives no chain above it; set it with its \
                 whole chain up to the root"
                    .into(),
            ));
        }
        let mut certs = vec![signing];
        certs.extend(above);
        Ok(Some(certs))
    }

    /// The certificate Vault signs with (the configured issuer, or the mount's default), `None`
    /// if the mount has no issuer yet.
    async fn signing_cert(&self) -> Result<Option<Cert>, VaultError> {
        self.check_mount().await?;
        let pem = match &self.issuer {
            Some(issuer) => {
                let path = format!("{}/issuer/{issuer}/json", self.mount);
                match self
                    .session
                    .call("read issuer", &path, async |c: &VaultClient| {
                        vaultrs::pki::issuer::read(c, &self.mount, Some(issuer.as_str())).await
                    })
                    .await
                {
                    Ok(r) => r.certificate,
                    Err(VaultError::NotFound { .. }) => return Ok(None),
                    Err(VaultError::Api { message, .. })
                        if message.contains("unable to find PKI issuer") =>
                    {
                        return Err(VaultError::Config(format!(
                            "[root] issuer {issuer:?} does not exist in mount {} (vault list {}/issuers)",
                            self.mount, self.mount
                        )));
                    }
                    Err(e) => return Err(e),
                }
            }
            None => {
                let path = format!("{}/cert/ca", self.mount);
                match self
                    .session
                    .call("read CA certificate", &path, async |c: &VaultClient| {
                        vaultrs::pki::cert::read(c, &self.mount, "ca").await
                    })
                    .await
                {
                    Ok(r) if !r.certificate.trim().is_empty() => r.certificate,
                    Ok(_) | Err(VaultError::NotFound { .. }) => return Ok(None),
                    Err(VaultError::Api { code: 400, .. }) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
        };
        let what = format!("{} root certificate", self.describe());
        Cert::one_from_pem(pem.as_bytes(), &what)
            .map(Some)
            .map_err(|e| VaultError::Malformed {
                what,
                reason: e.to_string(),
            })
    }

    async fn raw(
        &self,
        action: &str,
        path: String,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VaultError> {
        let endpoint = RawRequest {
            path: path.clone(),
            body,
        };
        let call =
            async |c: &VaultClient| vaultrs::api::exec_with_result(c, endpoint.clone()).await;
        match endpoint.body {
            Some(_) => self.session.call_write(action, &path, call).await,
            None => self.session.call(action, &path, call).await,
        }
    }

    /// The issuer named (or with the id) `reference`; `None` if there is no such issuer.
    async fn read_issuer(
        &self,
        reference: &str,
    ) -> Result<Option<vaultrs::api::pki::responses::ReadIssuerCertificateResponse>, VaultError>
    {
        let path = format!("{}/issuer/{reference}/json", self.mount);
        match self
            .session
            .call("read issuer", &path, async |c: &VaultClient| {
                vaultrs::pki::issuer::read(c, &self.mount, Some(reference)).await
            })
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(VaultError::NotFound { .. }) => Ok(None),
            Err(VaultError::Api { message, .. })
                if message.contains("unable to find PKI issuer") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The name of the issuer `reference` names (by name or id), if it exists.
    pub async fn issuer_name(&self, reference: &str) -> Result<Option<String>, VaultError> {
        Ok(self.read_issuer(reference).await?.map(|r| r.issuer_name))
    }

    /// The certificate of the issuer named (or with the id) `reference`; `None` if there is
    /// no such issuer.
    pub async fn issuer_cert(&self, reference: &str) -> Result<Option<Cert>, VaultError> {
        let Some(pem) = self.read_issuer(reference).await?.map(|r| r.certificate) else {
            return Ok(None);
        };
        let what = format!("{} issuer {reference}", self.describe());
        Cert::one_from_pem(pem.as_bytes(), &what)
            .map(Some)
            .map_err(|e| VaultError::Malformed {
                what,
                reason: e.to_string(),
            })
    }

    /// Has Vault generate a further root inside the PKI engine as issuer `name` (the key is
    /// never returned), with `serial_number` in its subject if given; the mount's default
    /// issuer is left as it is.
    pub async fn generate_issuer(
        &self,
        name: &str,
        spec: &RootSpec,
        serial_number: Option<&str>,
    ) -> Result<Cert, VaultError> {
        let (organization, common_name) = (
            spec.subject.organization.as_deref(),
            &spec.subject.common_name,
        );
        let (key, ttl) = (key_type(spec.key_algorithm), spec.validity);
        let path = format!("{}/root/generate/internal", self.mount);
        let mut body = serde_json::json!({
            "common_name": common_name,
            "key_type": key.0,
            "key_bits": key.1,
            "ttl": format!("{}s", ttl.as_secs()),
            "issuer_name": name,
        });
        if let Some(o) = organization {
            body["organization"] = serde_json::json!([o]);
        }
        if let Some(serial) = serial_number {
            body["serial_number"] = serde_json::json!(serial);
        }
        let data = self.raw("generate root", path.clone(), Some(body)).await?;
        let what = format!("{} generated root {name}", self.describe());
        let pem = data["certificate"]
            .as_str()
            .ok_or_else(|| VaultError::Malformed {
                what: path.clone(),
                reason: "no certificate in the response".into(),
            })?;
        let cert =
            Cert::one_from_pem(pem.as_bytes(), &what).map_err(|e| VaultError::Malformed {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        check_lifetime(&cert, ttl, &self.mount, &what)?;
        Ok(cert)
    }

    /// Renames issuer `reference` to `name`. Vault's issuer update (POST) resets every field
    /// it is not given, so the issuer's settings are read first and sent back unchanged.
    pub async fn rename_issuer(&self, reference: &str, name: &str) -> Result<(), VaultError> {
        const KEPT: [&str; 9] = [
            "leaf_not_after_behavior",
            "manual_chain",
            "usage",
            "revocation_signature_algorithm",
            "issuing_certificates",
            "crl_distribution_points",
            "delta_crl_distribution_points",
            "ocsp_servers",
            "enable_aia_url_templating",
        ];
        let path = format!("{}/issuer/{reference}", self.mount);
        let current = self.raw("read issuer", path.clone(), None).await?;
        let mut body = serde_json::Map::new();
        for key in KEPT {
            if let Some(v) = current.get(key).filter(|v| !v.is_null()) {
                body.insert(key.to_string(), v.clone());
            }
        }
        body.insert("issuer_name".into(), serde_json::Value::from(name));
        self.raw("rename issuer", path, Some(serde_json::Value::Object(body)))
            .await
            .map(drop)
    }

    /// Makes issuer `reference` the mount's default issuer.
    pub async fn set_default_issuer(&self, reference: &str) -> Result<(), VaultError> {
        let path = format!("{}/config/issuers", self.mount);
        self.raw(
            "set the default issuer",
            path,
            Some(serde_json::json!({ "default": reference })),
        )
        .await
        .map(drop)
    }

    /// Whether the mount makes every newly generated issuer its default at once
    /// (`default_follows_latest_issuer`).
    pub async fn default_follows_latest_issuer(&self) -> Result<bool, VaultError> {
        let path = format!("{}/config/issuers", self.mount);
        let data = self
            .raw("read the issuers configuration", path, None)
            .await?;
        Ok(data["default_follows_latest_issuer"]
            .as_bool()
            .unwrap_or(false))
    }

    /// Asks Vault for a mesh CA key and a request for the company CA to sign
    /// (`intermediate/generate/internal`: the key stays inside the PKI engine). Returns the
    /// request (PEM).
    pub async fn generate_request(&self, spec: &RootSpec) -> Result<String, VaultError> {
        let (organization, common_name) = (
            spec.subject.organization.as_deref(),
            &spec.subject.common_name,
        );
        let key = key_type(spec.key_algorithm);
        self.check_mount().await?;
        if let Some(issuer) = &self.issuer {
            return Err(VaultError::Config(format!(
                "root init --csr with [root] issuer = {issuer:?}: Vault names issuers itself; \
                 run it without `issuer`, then name the issuer Vault created if you need a \
                 specific one"
            )));
        }
        let path = format!("{}/intermediate/generate/internal", self.mount);
        let mut body = serde_json::json!({
            "common_name": common_name,
            "key_type": key.0,
            "key_bits": key.1,
        });
        if let Some(o) = organization {
            body["organization"] = serde_json::Value::from(o);
        }
        let data = self
            .raw("generate a key and request", path.clone(), Some(body))
            .await?;
        data["csr"]
            .as_str()
            .filter(|c| c.contains("CERTIFICATE REQUEST"))
            .map(str::to_string)
            .ok_or_else(|| VaultError::Malformed {
                what: path,
                reason: "the answer holds no certificate request".into(),
            })
    }

    /// Hands Vault the signed mesh CA with the certificates above it
    /// (`intermediate/set-signed`), pairs it with the key its request was made with, and makes
    /// it the mount's default issuer. Returns the issuer's id.
    pub async fn set_signed(&self, cert: &Cert, above: &[Cert]) -> Result<String, VaultError> {
        self.check_mount().await?;
        let path = format!("{}/intermediate/set-signed", self.mount);
        let bundle: String = std::iter::once(cert)
            .chain(above)
            .map(Cert::to_pem)
            .collect();
        let data = self
            .raw(
                "set the signed certificate",
                path.clone(),
                Some(serde_json::json!({ "certificate": bundle })),
            )
            .await?;
        // The issuer Vault made for the signed certificate is the one paired with a key.
        let id = data["mapping"]
            .as_object()
            .and_then(|m| {
                m.iter()
                    .find(|(_, key)| key.as_str().is_some_and(|k| !k.is_empty()))
                    .map(|(issuer, _)| issuer.clone())
            })
            .ok_or_else(|| VaultError::Malformed {
                what: path,
                reason: "Vault paired no imported certificate with a key it holds: was the \
                         request made by this mount (root init --csr)?"
                    .into(),
            })?;
        self.set_default_issuer(&id).await?;
        Ok(id)
    }

    /// Asks Vault to generate the root inside the PKI engine (`root/generate/internal`: the
    /// key is never returned).
    pub async fn generate_root(&self, spec: &RootSpec) -> Result<Cert, VaultError> {
        let (organization, common_name) = (
            spec.subject.organization.as_deref(),
            &spec.subject.common_name,
        );
        let (key, ttl) = (key_type(spec.key_algorithm), spec.validity);
        self.check_mount().await?;
        if let Some(issuer) = &self.issuer {
            return Err(VaultError::Config(format!(
                "root init with [root] issuer = {issuer:?}: Vault names issuers itself; run \
                 `root init` without `issuer`, then name the issuer Vault created (vault \
                 list {}/issuers) if you need a specific one",
                self.mount
            )));
        }
        let path = format!("{}/root/generate/internal", self.mount);
        let ttl_asked = ttl;
        let ttl = format!("{}s", ttl.as_secs());
        let resp = self
            .session
            .call_write("generate root", &path, async |c: &VaultClient| {
                let mut opts = vaultrs::api::pki::requests::GenerateRootRequest::builder();
                opts.common_name(common_name)
                    .key_type(key.0)
                    .key_bits(key.1)
                    .ttl(ttl.clone());
                if let Some(o) = organization {
                    opts.organization(vec![o.to_string()]);
                }
                vaultrs::pki::cert::ca::generate(c, &self.mount, "internal", Some(&mut opts)).await
            })
            .await?
            .ok_or_else(|| VaultError::Malformed {
                what: path.clone(),
                reason: "empty response".into(),
            })?;
        let what = format!("{} generated root", self.describe());
        let cert = Cert::one_from_pem(resp.certificate.as_bytes(), &what).map_err(|e| {
            VaultError::Malformed {
                what: what.clone(),
                reason: e.to_string(),
            }
        })?;
        check_lifetime(&cert, ttl_asked, &self.mount, &what)?;
        // Two concurrent `root init`s each make an issuer; only the default one is the root.
        if let Some(default) = self.root_cert().await?
            && default != cert
        {
            return Err(VaultError::Config(format!(
                "another run generated a root in {} at the same time; its default issuer is {} \
                 — use that one",
                self.mount,
                default.info().fingerprint_sha256
            )));
        }
        Ok(cert)
    }

    /// Has Vault sign an intermediate for a key made here. The CSR carries the subject and
    /// SANs (`use_csr_values`); the CA flag, path length and TTL are set by the request.
    /// `path` is the issuer's certificate, then those above it up to the anchor.
    pub async fn sign_intermediate(
        &self,
        spec: &IntermediateSpec,
        path: &[Cert],
    ) -> Result<IntermediateCa, SignError> {
        let Some(root) = path.first() else {
            return Err(SignError::Vault(VaultError::Config(
                "no issuer to sign with".into(),
            )));
        };
        let ends = path
            .iter()
            .map(|c| c.info().not_after)
            .fold(root.info().not_after, time::OffsetDateTime::min);
        let key = CaKey::generate(spec.key_algorithm)?;
        let params = crate::pki::intermediate_params_for_csr(spec)?;
        let csr = params
            .serialize_request(key.signer())
            .map_err(PkiError::from)?
            .pem()
            .map_err(PkiError::from)?;
        // Like the local signer: never ask for more than the root has left. Vault signs at its
        // own present, so this is measured on the wall clock, not the injected one.
        let left: Duration = (ends - time::OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(Duration::ZERO);
        let validity = spec
            .validity
            .min(left.saturating_sub(Duration::from_secs(60)));
        let ttl = format!("{}s", validity.as_secs());
        let certificate = self.signed_certificate(spec, &csr, ttl).await?;
        let what = format!("certificate signed by {}", self.describe());
        let cert = Cert::one_from_pem(certificate.as_bytes(), &what)?;
        crate::pki::check_signed_intermediate(&cert, &key, root, spec, &what)?;
        check_lifetime(&cert, validity, &self.mount, &what)?;
        Ok(IntermediateCa { cert, key })
    }
}

impl VaultPki {
    /// Has the configured issuer (or the mount's default) sign `csr` as a CA for `ttl`, with
    /// the CSR's own subject and SANs; returns the certificate's PEM.
    async fn signed_certificate(
        &self,
        spec: &IntermediateSpec,
        csr: &str,
        ttl: String,
    ) -> Result<String, SignError> {
        let cn = spec.subject.common_name.clone();
        let path = match &self.issuer {
            Some(i) => format!("{}/issuer/{i}/sign-intermediate", self.mount),
            None => format!("{}/root/sign-intermediate", self.mount),
        };
        Ok(match &self.issuer {
            Some(issuer) => {
                self.session
                    .call_write("sign intermediate", &path, async |c: &VaultClient| {
                        let mut opts =
                            vaultrs::api::pki::requests::SignIntermediateIssuerRequest::builder();
                        opts.max_path_length(i32::from(spec.path_len))
                            .ttl(ttl.clone())
                            .use_csr_values(true)
                            .format("pem");
                        vaultrs::pki::issuer::sign_intermediate(
                            c,
                            &self.mount,
                            csr,
                            &cn,
                            Some(issuer),
                            Some(&mut opts),
                        )
                        .await
                    })
                    .await?
                    .certificate
            }
            None => {
                self.session
                    .call_write("sign intermediate", &path, async |c: &VaultClient| {
                        let mut opts =
                            vaultrs::api::pki::requests::SignIntermediateRequest::builder();
                        opts.max_path_length(i32::from(spec.path_len))
                            .ttl(ttl.clone())
                            .use_csr_values(true)
                            .format("pem");
                        vaultrs::pki::cert::ca::sign_intermediate(
                            c,
                            &self.mount,
                            csr,
                            &cn,
                            Some(&mut opts),
                        )
                        .await
                    })
                    .await?
                    .certificate
            }
        })
    }
}

/// Vault silently shortens certificates to the mount's max lease TTL (768 h by default): a
/// "10-year" root that lives a month must not go unnoticed.
fn check_lifetime(cert: &Cert, asked: Duration, mount: &str, what: &str) -> Result<(), VaultError> {
    let info = cert.info();
    let got: Duration = (info.not_after - info.not_before)
        .try_into()
        .unwrap_or(Duration::ZERO);
    if got + Duration::from_secs(3600) < asked.mul_f64(0.95) {
        return Err(VaultError::Malformed {
            what: what.to_string(),
            reason: format!(
                "valid for {} but {} was asked for: the mount's max lease TTL is shorter. Raise it \
                 (vault secrets tune -max-lease-ttl={}h {mount}); a root Vault generated this \
                 short stays in the mount until you delete it (vault delete {mount}/root)",
                humantime::format_duration(Duration::from_secs(got.as_secs())),
                humantime::format_duration(asked),
                asked.as_secs().div_ceil(3600)
            ),
        });
    }
    Ok(())
}

/// Signing through Vault fails either at Vault or in the check of what it returned.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Pki(#[from] PkiError),
}
