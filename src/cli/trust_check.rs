//! `plan --check` (and `transition remove-root --check`): every step of a transition played
//! out on the trust graph read from the clusters (`transition::check`), each step printed with
//! the pairs of proxies it would break.

use time::OffsetDateTime;

use super::{CliError, Format, output};
use crate::config::Config;
use crate::transition::{self, TransitionKind};

/// `plan --check`: reads every primary and plays the transition's steps out on the trust
/// graph (see `transition::check`), printing each step with the pairs it would break.
pub(super) async fn check_trust_graph(
    config: &Config,
    kind: TransitionKind,
    options: transition::Options,
    removed: Option<&str>,
    format: Format,
) -> Result<(), CliError> {
    use transition::check;
    // As `plan` does: the steps from a record started at the epoch, every wait passed in order.
    let now = OffsetDateTime::UNIX_EPOCH;
    let store = crate::root_store::RootSource::open(config).await?;
    let anchor = store.load_cert().await?;
    let name = |c: &crate::pki::Cert| match Some(c) == anchor.as_ref() {
        true => "the common root".to_string(),
        false => label(&c.info().fingerprint_sha256),
    };
    let primaries = check::read(config, &options.exclude_namespaces, &name).await?;
    let Some((moving, roots)) = moving_and_roots(kind, &primaries, anchor.as_ref(), removed)
        .map_err(|()| crate::root_store::StoreError::NoRoot {
            store: store.describe(),
        })?
    else {
        say!("check: a revocation changes no cluster's trust bundle; nothing to check");
        return Ok(());
    };
    if moving.is_empty() {
        say!("check: no primary would move; nothing to check");
        return Ok(());
    }
    let record = transition::Record::new(kind, moving, options);
    let checked = check::check(
        &record,
        &transition::Scope::all(config),
        &primaries,
        &roots,
        now,
    );
    let flagged = checked.flagged();
    if format.structured() {
        output::print_as(format, &checked);
    } else {
        print_checked(kind, &primaries, &record, &checked);
    }
    match flagged {
        0 => Ok(()),
        n => Err(CliError::Refused(format!(
            "check: {n} step(s) would break pairs of proxies that complete mTLS today (marked \
             BREAKS)"
        ))),
    }
}

/// A root other than the common one, by the start of its fingerprint.
fn label(fingerprint: &str) -> String {
    format!("root {}", &fingerprint[..fingerprint.len().min(17)])
}

/// The primaries a transition of `kind` would move, and the roots it names: `None` for a
/// revocation (no bundle changes); `Err` for a migration without a common root yet.
fn moving_and_roots(
    kind: TransitionKind,
    primaries: &[transition::check::Primary],
    anchor: Option<&crate::pki::Cert>,
    removed: Option<&str>,
) -> Result<Option<(Vec<String>, transition::check::Roots)>, ()> {
    use transition::check::Roots;
    Ok(Some(match kind {
        TransitionKind::Migrate => {
            if anchor.is_none() {
                return Err(());
            }
            let moving = primaries
                .iter()
                .filter(|p| p.signer != "the common root")
                .map(|p| p.name.clone())
                .collect();
            let roots = Roots {
                new: "the common root".into(),
                removed: None,
            };
            (moving, roots)
        }
        TransitionKind::RotateRoot => (
            primaries.iter().map(|p| p.name.clone()).collect(),
            Roots {
                new: "the new root".into(),
                removed: None,
            },
        ),
        TransitionKind::Revoke | TransitionKind::Renew => return Ok(None),
        TransitionKind::RemoveRoot => {
            let removed = match removed.map(|fp| (fp, anchor)) {
                Some((fp, Some(a))) if a.info().fingerprint_sha256 == fp => {
                    "the common root".to_string()
                }
                Some((fp, _)) => label(fp),
                None => String::new(),
            };
            let moving = primaries
                .iter()
                .filter(|p| p.bundle.contains(&removed))
                .map(|p| p.name.clone())
                .collect();
            let roots = Roots {
                new: String::new(),
                removed: Some(removed),
            };
            (moving, roots)
        }
    }))
}

/// The check in words: the trust table, then every step with what it breaks.
fn print_checked(
    kind: TransitionKind,
    primaries: &[transition::check::Primary],
    record: &transition::Record,
    checked: &transition::check::Checked,
) {
    let flagged = checked.flagged();
    let pinned: Vec<&str> = primaries
        .iter()
        .flat_map(|p| p.pinned.iter().map(|x| x.name.as_str()))
        .collect();
    say!(
        "{} on the trust graph: {} primaries read ({} moving); proxies no rollout \
         restarts: {}. This check changes nothing.",
        kind.name(),
        primaries.len(),
        record.clusters.len(),
        if pinned.is_empty() {
            "none".to_string()
        } else {
            pinned.join(", ")
        }
    );
    print_trust_table(&checked.trust);
    say!("\ntrusting each other now: {}", checked.before.join(", "));
    let mut phase = None;
    let mut trusting = &checked.before;
    for (i, s) in checked.steps.iter().enumerate() {
        if phase != Some(s.step.phase) {
            say!("\n{}:", s.step.phase);
            phase = Some(s.step.phase);
        }
        let mark = if s.breaks.is_empty() {
            "safe"
        } else {
            "BREAKS"
        };
        match &s.step.cluster {
            Some(c) => say!("  {:>3}. [{mark}] {c}: {}", i + 1, s.step.action),
            None => say!("  {:>3}. [{mark}] {}", i + 1, s.step.action),
        }
        for b in &s.breaks {
            say!("         - {b}");
        }
        for n in &s.notes {
            say!("         note: {n}");
        }
        // Who completes mTLS with whom, whenever that changes.
        if &s.trusting != trusting {
            say!(
                "         trusting each other from here: {}",
                match s.trusting.is_empty() {
                    true => "no pair".to_string(),
                    false => s.trusting.join(", "),
                }
            );
            trusting = &s.trusting;
        }
    }
    if flagged == 0 {
        say!("\ncheck: every step keeps every pair of proxies that completes mTLS today");
    }
}

/// Each cluster's trust, now and after each phase.
pub(super) fn print_trust_table(rows: &[transition::check::TrustRow]) {
    output::print_trust_table(
        &mut std::io::stdout(),
        "trust, now and after each phase:",
        rows,
    );
}
