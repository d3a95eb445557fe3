//! `cacertd root`: create, import and show the common root.

use std::path::Path;

use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::output;
use super::{CliError, Format};
use crate::config::Config;
use crate::fsutil::{Mode, StagedFile, StateLock, read_pem};
use crate::pki::{
    CaCertsFiles, RootCa, TrustBundle, check_signing_ca, generate_root, import_root_with_chain,
    issue_intermediate, mesh_ca_request, request_public_key, verify_cacerts_for_mesh,
};
use crate::root_store::vault::VaultPki;
use crate::root_store::{PendingRequest, RootSource, StoreError};

pub(super) async fn root_init(config: &Config, now: OffsetDateTime) -> Result<(), CliError> {
    let store = RootSource::open(config).await?;
    let info = root_init_in(config, &store, now).await?;
    say!("created root in {}", store.describe());
    output::print_root(&mut std::io::stdout(), &info, now);
    Ok(())
}

/// Creates the root in `store` (refused where it holds one); returns what was created, for the
/// caller to show.
pub(super) async fn root_init_in(
    config: &Config,
    store: &RootSource,
    now: OffsetDateTime,
) -> Result<crate::pki::CertInfo, CliError> {
    if let Some(existing) = store.load_cert().await? {
        return Err(already_holds(store, &existing));
    }
    let (policy, spec) = root_to_generate(config)?;
    let cert = if let Some(pki) = store.as_vault_pki() {
        // The key is generated inside Vault and never leaves it.
        let cert = pki.generate_root(&spec).await.map_err(in_vault(store))?;
        policy.check_root(&cert)?;
        cert
    } else {
        let root = generate_root(&spec, now)?;
        policy.check_root(root.cert())?;
        prove_root(config, &root, now)?;
        let _lock = StateLock::acquire(&config.state_dir)?;
        store.create(&root).await?;
        root.cert().clone()
    };
    tracing::info!(
        serial = %cert.info().serial,
        fingerprint = %cert.info().fingerprint_sha256,
        store = %store.describe(),
        "created root"
    );
    note_root(config, store, ("root-init", "created"), cert.info(), now);
    Ok(cert.info().clone())
}

/// A Vault failure, as the failure of `store`.
fn in_vault(store: &RootSource) -> impl Fn(crate::root_store::VaultError) -> StoreError + '_ {
    |source| StoreError::Vault {
        store: store.describe(),
        source,
    }
}

/// The refusal to make or import a root where `store` already holds `existing`.
fn already_holds(store: &RootSource, existing: &crate::pki::Cert) -> CliError {
    StoreError::AlreadyExists {
        store: store.describe(),
        fingerprint: existing.info().fingerprint_sha256.clone(),
    }
    .into()
}

/// The root `root init` would generate, per the root policy — unless the policy names the
/// anchors allowed (a new root could be none of them).
fn root_to_generate(
    config: &Config,
) -> Result<(&crate::policy::Policy, crate::pki::RootSpec), CliError> {
    let policy = config.root_policy();
    policy.check_may_generate_root()?;
    Ok((policy, policy.root_spec(&config.trust_domain)))
}

/// Notes a new common root in the audit log: the most consequential event there is.
fn note_root(
    config: &Config,
    store: &RootSource,
    (action, outcome): (&str, &str),
    info: &crate::pki::CertInfo,
    now: OffsetDateTime,
) {
    crate::audit::Audit::new(config.daemon.audit_log.clone()).note(
        now,
        action,
        None,
        outcome,
        Some(info.serial.clone()),
        Some(format!(
            "{} in {}, sha256 {}",
            info.subject,
            store.describe(),
            info.fingerprint_sha256
        )),
    );
}

/// `root init --dry-run`: the root `root init` would make, and where; makes nothing.
pub(super) async fn root_init_dry_run(config: &Config) -> Result<(), CliError> {
    let store = RootSource::open(config).await?;
    if let Some(existing) = store.load_cert().await? {
        return Err(already_holds(&store, &existing));
    }
    let (policy, spec) = root_to_generate(config)?;
    say!(
        "dry run: would create a root in {}: {}, subject {}{}, valid {} (policy {}). Nothing \
         was changed.",
        store.describe(),
        spec.key_algorithm,
        spec.subject
            .organization
            .as_deref()
            .map(|o| format!("O={o}, "))
            .unwrap_or_default(),
        format_args!("CN={}", spec.subject.common_name),
        crate::clock::fmt_duration(spec.validity),
        policy.name
    );
    Ok(())
}

/// `root init --csr FILE`: a key for the mesh CA, kept where it was made, and a request for
/// the company's CA to sign.
pub(super) async fn root_request(
    config: &Config,
    out: &Path,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    let store = RootSource::open(config).await?;
    // With a root in the store already, the request is for its replacement (file and vault-kv:
    // `root import --replace`); vault-pki replaces its issuer in Vault.
    let existing = store.load_cert().await?;
    if let Some(existing) = existing.as_ref().filter(|_| store.key_is_remote()) {
        return Err(already_holds(&store, existing));
    }
    if out.exists() {
        return Err(CliError::Refused(format!(
            "{} exists; name a new file for the request",
            out.display()
        )));
    }
    let spec = config.root_policy().root_spec(&config.trust_domain);
    let (request, kept) = if let Some(pki) = store.as_vault_pki() {
        let request = pki
            .generate_request(&spec)
            .await
            .map_err(in_vault(&store))?;
        // Only the request: the signed certificate is checked against it before Vault sees it.
        PendingRequest::new(&config.state_dir).save_request(&request)?;
        (request, format!("inside Vault ({})", store.describe()))
    } else {
        let pending = PendingRequest::new(&config.state_dir);
        let _lock = StateLock::acquire(&config.state_dir)?;
        if pending.exists() {
            return Err(CliError::Refused(format!(
                "a key already waits for its signed certificate in {} (its request: {}); import \
                 the certificate with `cacertd root import --cert signed.pem --chain chain.pem`, \
                 or remove that folder to start over",
                pending.key_path().display(),
                pending.request_path().display()
            )));
        }
        let (key, request) = mesh_ca_request(&spec)?;
        pending.save(&key, &request)?;
        (request, pending.key_path().display().to_string())
    };
    StagedFile::new(out, request.as_bytes(), Mode::Public)?.commit_new()?;
    crate::audit::Audit::new(config.daemon.audit_log.clone()).note(
        now,
        "root-request",
        None,
        "requested",
        None,
        Some(format!(
            "{} in {}, key kept {kept}",
            spec.subject.common_name,
            store.describe()
        )),
    );
    say!(
        "wrote a certificate signing request for the mesh CA to {}; its key is kept {kept}",
        out.display()
    );
    say!(
        "Have the company's CA sign it as a CA (basicConstraints CA:TRUE with a path length of \
         at least 1, or none: the clusters' intermediates sit below it; keyUsage keyCertSign, \
         cRLSign), then: cacertd root import --cert signed.pem --chain chain.pem{} (the \
         certificates above it, up to the company's root)",
        if existing.is_some() { " --replace" } else { "" }
    );
    Ok(())
}

/// Where the key of a root to import comes from.
pub(super) enum Key<'a> {
    /// A PEM file the operator gives.
    File(&'a Path),
    /// The key `root init --csr` made and keeps in `<state_dir>/root-request/`.
    Pending(&'a PendingRequest),
}

pub(super) async fn root_import(
    config: &Config,
    (cert, key, chain): (&Path, Option<&Path>, Option<&Path>),
    replace: bool,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    let store = RootSource::open(config).await?;
    let pending = PendingRequest::new(&config.state_dir);
    let key = match key {
        Some(k) => Key::File(k),
        None if !replace && let Some(pki) = store.as_vault_pki() => {
            return import_signed_into_vault(config, (&store, pki), cert, chain, now).await;
        }
        None if pending.exists() => Key::Pending(&pending),
        None => {
            return Err(CliError::Usage(format!(
                "no --key given, and no key waits for a signature in {} (`cacertd root init \
                 --csr`)",
                pending.key_path().display()
            )));
        }
    };
    let from_request = matches!(key, Key::Pending(_));
    let root = read_root(config, cert, key, chain, now)?;
    let made_here = from_request.then_some(&pending);
    if replace {
        return replace_signing_ca(config, (&store, made_here), &root, now).await;
    }
    {
        let _lock = StateLock::acquire(&config.state_dir)?;
        store.create(&root).await?;
        if let Some(pending) = made_here {
            // The store holds the key now: no second copy outlives the import.
            pending.remove()?;
        }
    }
    let info = root.cert().info();
    note_root(config, &store, ("root-import", "imported"), info, now);
    if root.chain().is_empty() {
        say!("imported root into {}", store.describe());
    } else {
        say!(
            "imported mesh CA into {}, below the anchor {} (every cluster's trust bundle)",
            store.describe(),
            root.anchor().info().subject
        );
    }
    output::print_root(&mut std::io::stdout(), root.cert().info(), now);
    for above in root.chain() {
        say!("");
        output::print_root(&mut std::io::stdout(), above.info(), now);
    }
    Ok(())
}

/// `root import` without `--key` into vault-pki: the signed certificate of the request Vault
/// made (`root init --csr`), checked like any mesh CA, handed to Vault with its chain.
async fn import_signed_into_vault(
    config: &Config,
    (store, pki): (&RootSource, &VaultPki),
    cert: &Path,
    chain: Option<&Path>,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    if let Some(existing) = store.load_cert().await? {
        return Err(already_holds(store, &existing));
    }
    let cert_pem = read_pem(cert)?;
    let chain_pem = chain.map(read_pem).transpose()?;
    let chain_what = chain.map(|c| c.display().to_string()).unwrap_or_default();
    let (signing, above) = check_signing_ca(
        &cert_pem,
        chain_pem.as_deref(),
        now,
        (&cert.display().to_string(), &chain_what),
    )?;
    let policy = config.root_policy();
    policy.check_root(&signing)?;
    policy.check_anchor(above.last().unwrap_or(&signing))?;
    // Vault would take any certificate, as keyless issuers: only the request's goes to it.
    let pending = PendingRequest::new(&config.state_dir);
    let request = pending.request_pem()?.ok_or_else(|| {
        CliError::Usage(format!(
            "no request kept in {} (`cacertd root init --csr`); a certificate for a key Vault \
             holds otherwise: set it in Vault (intermediate/set-signed)",
            pending.request_path().display()
        ))
    })?;
    let wanted = request_public_key(&request, &pending.request_path().display().to_string())?;
    if signing.x509().public_key().raw != wanted.as_slice() {
        return Err(crate::pki::PkiError::Invalid {
            what: cert.display().to_string(),
            reason: format!(
                "it was not issued for the request in {} (the key Vault made for it): sign \
                 that request",
                pending.request_path().display()
            ),
        }
        .into());
    }
    let id = pki
        .set_signed(&signing, &above)
        .await
        .map_err(in_vault(store))?;
    pending.remove()?;
    note_root(
        config,
        store,
        ("root-import", "imported"),
        signing.info(),
        now,
    );
    say!(
        "Vault paired the signed mesh CA with the key it made (issuer {id}, now the default \
         issuer of {})",
        store.describe()
    );
    output::print_root(&mut std::io::stdout(), signing.info(), now);
    for c in &above {
        say!("");
        output::print_root(&mut std::io::stdout(), c.info(), now);
    }
    Ok(())
}

/// `root import --replace`: a new mesh CA under the same anchor.
async fn replace_signing_ca(
    config: &Config,
    (store, made_here): (&RootSource, Option<&PendingRequest>),
    root: &RootCa,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    if !crate::transition::in_flight(config).await.quiet {
        return Err(CliError::Refused(
            "a trust transition is under way (or its record cannot be read); finish or abort it \
             before replacing the mesh CA"
                .into(),
        ));
    }
    let kept = {
        let _lock = StateLock::acquire(&config.state_dir)?;
        let kept = store.replace_signing_ca(root, now).await?;
        if let Some(pending) = made_here {
            pending.remove()?;
        }
        kept
    };
    let Some(kept) = kept else {
        say!(
            "{} already signs with this CA; nothing changed",
            store.describe()
        );
        return Ok(());
    };
    note_root(
        config,
        store,
        ("root-replace", "replaced"),
        root.cert().info(),
        now,
    );
    say!(
        "replaced the CA that signs intermediates in {}; the previous one is kept: {kept}",
        store.describe()
    );
    say!(
        "the anchor {} is unchanged, so no cluster's trust changes and no transition is needed; \
         `cacertd issue` (or the daemon's next pass) re-issues every intermediate under the new CA",
        root.anchor().info().subject
    );
    output::print_root(&mut std::io::stdout(), root.cert().info(), now);
    Ok(())
}

/// Reads a root to import (certificate and key files) and refuses anything istiod could not use
/// or the root policy does not allow.
pub(super) fn read_root(
    config: &Config,
    cert: &Path,
    key: Key<'_>,
    chain: Option<&Path>,
    now: OffsetDateTime,
) -> Result<RootCa, CliError> {
    let cert_pem = read_pem(cert)?;
    let from_request = matches!(key, Key::Pending(_));
    let (key_pem, key) = match key {
        Key::File(path) => (Zeroizing::new(read_pem(path)?), path.to_path_buf()),
        Key::Pending(pending) => (pending.key_pem()?.unwrap_or_default(), pending.key_path()),
    };
    let chain_pem = chain.map(read_pem).transpose()?;
    let chain_what = chain.map(|c| c.display().to_string()).unwrap_or_default();
    let root = import_root_with_chain(
        &cert_pem,
        &key_pem,
        chain_pem.as_deref(),
        now,
        (
            &cert.display().to_string(),
            &key.display().to_string(),
            &chain_what,
        ),
    )
    .map_err(|e| match e {
        crate::pki::PkiError::KeyMismatch { what } if from_request => {
            CliError::Material(crate::pki::PkiError::Invalid {
                what,
                reason: format!(
                    "it was not issued for the key that waits in {} (`root init --csr`): sign \
                     that request",
                    key.display()
                ),
            })
        }
        other => other.into(),
    })?;
    let policy = config.root_policy();
    policy.check_root(root.cert())?;
    policy.check_anchor(root.anchor())?;
    prove_root(config, &root, now)?;
    Ok(root)
}

/// Before a root is stored: issue a throw-away intermediate with it under the policy and
/// validate the result as istiod would, name constraints included. A root that cannot sign
/// usable intermediates is refused now rather than discovered at the first `issue`.
fn prove_root(config: &Config, root: &RootCa, now: OffsetDateTime) -> Result<(), CliError> {
    let policy = config.root_policy();
    let cluster = config
        .topology
        .primaries()
        .next()
        .map_or("trial", |c| c.name.as_str());
    let spec = policy.intermediate_spec(cluster, &config.trust_domain);
    let trial = issue_intermediate(root, &spec, now)?;
    let files = CaCertsFiles::for_intermediate(
        &trial,
        &root.between(),
        root.anchor(),
        &TrustBundle::single(root.anchor()),
    );
    verify_cacerts_for_mesh(&files, now, Some(&config.trust_domain)).map_err(|problems| {
        CliError::InvalidBundle(format!(
            "this root cannot sign intermediates istiod would accept: {}",
            crate::pki::BundleProblem::join(&problems)
        ))
    })?;
    Ok(())
}

pub(super) async fn root_show(
    config: &Config,
    format: Format,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    let store = RootSource::open(config).await?;
    let certs = store
        .load_certs()
        .await?
        .ok_or_else(|| StoreError::NoRoot {
            store: store.describe(),
        })?;
    let location = store.location().await?;
    match format {
        Format::Json | Format::Yaml => output::print_as(
            format,
            &crate::status::root_certs_json(&location, &certs, now),
        ),
        Format::Table => {
            say!("store: {location}");
            output::print_root(&mut std::io::stdout(), certs.anchor.info(), now);
            // A mesh CA below the anchor: it, then what is above it.
            for c in &certs.between {
                say!("");
                output::print_root(&mut std::io::stdout(), c.info(), now);
            }
        }
    }
    Ok(())
}
