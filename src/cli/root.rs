//! `cacertd root`: create, import and show the common root.

use std::path::Path;

use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::output;
use super::{CliError, Format};
use crate::config::Config;
use crate::fsutil::{StateLock, read_pem};
use crate::pki::{
    CaCertsFiles, RootCa, TrustBundle, generate_root, import_root_with_chain, issue_intermediate,
    verify_cacerts_for_mesh,
};
use crate::root_store::{RootSource, StoreError};

pub(super) async fn root_init(config: &Config, now: OffsetDateTime) -> Result<(), CliError> {
    let store = RootSource::open(config).await?;
    root_init_in(config, &store, now).await
}

pub(super) async fn root_init_in(
    config: &Config,
    store: &RootSource,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    if let Some(existing) = store.load_cert().await? {
        return Err(StoreError::AlreadyExists {
            store: store.describe(),
            fingerprint: existing.info().fingerprint_sha256.clone(),
        }
        .into());
    }
    let policy = config.root_policy();
    policy.check_may_generate_root()?;
    let spec = policy.root_spec(&config.trust_domain);
    let cert = if let Some(pki) = store.as_vault_pki() {
        // The key is generated inside Vault and never leaves it.
        let key = crate::root_store::vault::key_type(spec.key_algorithm);
        let cert = pki
            .generate_root(
                spec.subject.organization.as_deref(),
                &spec.subject.common_name,
                key,
                spec.validity,
            )
            .await
            .map_err(|source| StoreError::Vault {
                store: store.describe(),
                source,
            })?;
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
    note_root(
        config,
        now,
        "root-init",
        "created",
        &store.describe(),
        cert.info(),
    );
    say!("created root in {}", store.describe());
    output::print_root(&mut std::io::stdout(), cert.info(), now);
    Ok(())
}

/// Notes a new common root in the audit log: the most consequential event there is.
fn note_root(
    config: &Config,
    now: OffsetDateTime,
    action: &str,
    outcome: &str,
    store: &str,
    info: &crate::pki::CertInfo,
) {
    crate::audit::Audit::new(config.daemon.audit_log.clone()).note(
        now,
        action,
        None,
        outcome,
        Some(info.serial.clone()),
        Some(format!(
            "{} in {store}, sha256 {}",
            info.subject, info.fingerprint_sha256
        )),
    );
}

pub(super) async fn root_import(
    config: &Config,
    (cert, key, chain): (&Path, &Path, Option<&Path>),
    replace: bool,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    let root = read_root(config, cert, key, chain, now)?;
    let store = RootSource::open(config).await?;
    if replace {
        return replace_signing_ca(config, &store, &root, now).await;
    }
    {
        let _lock = StateLock::acquire(&config.state_dir)?;
        store.create(&root).await?;
    }
    let info = root.cert().info();
    note_root(
        config,
        now,
        "root-import",
        "imported",
        &store.describe(),
        info,
    );
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

/// `root import --replace`: a new mesh CA under the same anchor.
async fn replace_signing_ca(
    config: &Config,
    store: &RootSource,
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
        store.replace_signing_ca(root, now).await?
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
        now,
        "root-replace",
        "replaced",
        &store.describe(),
        root.cert().info(),
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
    key: &Path,
    chain: Option<&Path>,
    now: OffsetDateTime,
) -> Result<RootCa, CliError> {
    let cert_pem = read_pem(cert)?;
    let key_pem = Zeroizing::new(read_pem(key)?);
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
    )?;
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
        Format::Json => output::print_json(&crate::status::root_certs_json(&location, &certs, now)),
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
