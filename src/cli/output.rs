//! Human (table) and machine (JSON, YAML) renderings of command results.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use time::OffsetDateTime;

use super::args::Format;
use crate::issuance::{ClusterReport, Outcome};
use crate::pki::{BundleProblem, CertInfo, VerifiedCaCerts, fmt_time};
use crate::status::{StatusReport, StatusRow, days_left};
use crate::topology::Role;

/// Prints `value` as `format` asks: pretty JSON, or the same document as YAML. (A table is
/// each command's own.)
pub fn print_as<T: Serialize>(format: Format, value: &T) {
    let rendered = match format {
        Format::Yaml => serde_saphyr::to_string(value).map_err(|e| e.to_string()),
        Format::Json | Format::Table => {
            serde_json::to_string_pretty(value).map_err(|e| e.to_string())
        }
    };
    match rendered {
        Ok(s) => say!("{}", s.trim_end()),
        Err(e) => eprintln!("error: cannot render {format:?} output: {e}"),
    }
}

pub fn print_root(out: &mut dyn Write, info: &CertInfo, now: OffsetDateTime) {
    let _ = writeln!(out, "  subject:     {}", info.subject);
    let _ = writeln!(out, "  serial:      {}", info.serial);
    let _ = writeln!(out, "  key:         {}", info.key_algorithm);
    let _ = writeln!(out, "  not before:  {}", fmt_time(info.not_before));
    let _ = writeln!(
        out,
        "  not after:   {} ({} days left)",
        fmt_time(info.not_after),
        days_left(info.not_after, now)
    );
    let _ = writeln!(out, "  sha256:      {}", info.fingerprint_sha256);
}

pub fn print_reports(out: &mut dyn Write, reports: &[ClusterReport]) {
    if reports.is_empty() {
        let _ = writeln!(out, "no primary clusters selected");
        return;
    }
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.cluster.clone(),
                match r.outcome {
                    Outcome::Issued => "issued",
                    Outcome::WouldIssue => "would issue",
                    Outcome::Kept => "unchanged",
                    Outcome::Refused => "REFUSED",
                    Outcome::PolicyRefused => "POLICY REFUSED",
                    Outcome::Failed => "FAILED",
                }
                .to_string(),
                r.serial.clone().unwrap_or_else(|| "-".into()),
                r.not_after.map(fmt_time).unwrap_or_else(|| "-".into()),
                r.renew_at.map(fmt_time).unwrap_or_else(|| "-".into()),
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "CLUSTER",
            "RESULT",
            "SERIAL",
            "NOT AFTER",
            "RENEW AT",
            "REASON",
        ],
        &rows,
    );
    for r in reports.iter().filter(|r| r.backup.is_some()) {
        let _ = writeln!(
            out,
            "{}: previous cacerts kept in {}",
            r.cluster,
            r.backup.as_deref().unwrap_or("")
        );
    }
    for r in reports {
        if !r.backups_removed.is_empty() {
            let _ = writeln!(
                out,
                "{}: old backups removed ([backups]): {}",
                r.cluster,
                r.backups_removed.join(", ")
            );
        }
        if let Some(why) = &r.backups_kept_because {
            let _ = writeln!(out, "{}: warning: {why}", r.cluster);
        }
    }
}

/// A trust table under `title`: per cluster, the roots its bundle holds and the root it signs
/// under, in each column (now or before, after each phase).
pub(super) fn print_trust_table(
    out: &mut dyn Write,
    title: &str,
    rows: &[crate::transition::check::TrustRow],
) {
    let Some(first) = rows.first() else { return };
    let mut header = vec!["cluster".to_string()];
    header.extend(first.columns.iter().map(|c| c.when.clone()));
    let mut lines = Vec::new();
    for row in rows {
        let name = match &row.served_by {
            Some(p) => format!("{} (remote of {p})", row.cluster),
            None => row.cluster.clone(),
        };
        let mut trusts = vec![format!("{name}: trusts")];
        let mut signs = vec!["  signs under".to_string()];
        for c in &row.columns {
            trusts.push(c.trusts.join(" + "));
            signs.push(c.signs_under.clone());
        }
        lines.push(trusts);
        lines.push(signs);
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let _ = writeln!(out, "\n{title}");
    table(out, &header, &lines);
}

/// Left-aligned columns; the last column is not padded.
fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c.to_string()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let _ = writeln!(out, "{}", line(header.to_vec()).trim_end());
    for row in rows {
        let _ = writeln!(
            out,
            "{}",
            line(row.iter().map(String::as_str).collect()).trim_end()
        );
    }
}

pub fn print_restarts(out: &mut dyn Write, done: &[crate::rollout::Restarted]) {
    if done.is_empty() {
        let _ = writeln!(out, "nothing to restart");
        return;
    }
    let rows: Vec<Vec<String>> = done
        .iter()
        .map(|r| {
            vec![
                r.stage.name().to_string(),
                r.cluster.clone(),
                r.workload.to_string(),
                match (r.dry_run, r.waited) {
                    (true, _) => "would restart",
                    (false, true) => "rolled out",
                    (false, false) => "restarted",
                }
                .to_string(),
            ]
        })
        .collect();
    table(out, &["STAGE", "CLUSTER", "WORKLOAD", "RESULT"], &rows);
}

fn short_fp(fp: &str) -> String {
    fp.chars().take(11).collect()
}

/// One cluster's row of the `status` table.
/// One cluster's row; the common root's fingerprint (`common`) is labelled in its bundle.
fn status_row(c: &StatusRow, common: Option<&str>) -> Vec<String> {
    let dash = || "-".to_string();
    let mut row = vec![
        c.name.clone(),
        match c.role {
            Role::Primary => "primary".into(),
            Role::Remote => "remote".into(),
        },
        c.network.clone().unwrap_or_else(dash),
    ];
    match (&c.cacerts, &c.error, c.role) {
        (_, _, Role::Remote) => {
            row.push(format!(
                "served by {}",
                c.served_by.as_deref().unwrap_or("?")
            ));
            row.extend(std::iter::repeat_with(dash).take(6));
        }
        (_, Some(e), _) => {
            row.push("unreadable".into());
            row.extend(std::iter::repeat_with(dash).take(5));
            row.push(e.clone());
        }
        (Some(a), None, _) => {
            let i = a.intermediate.as_ref();
            row.push(a.state.name().to_string());
            row.push(i.map(|i| i.serial.clone()).unwrap_or_else(dash));
            row.push(i.map(|i| fmt_time(i.not_before)).unwrap_or_else(dash));
            row.push(i.map(|i| fmt_time(i.not_after)).unwrap_or_else(dash));
            row.push(c.days_left.map(|d| d.to_string()).unwrap_or_else(dash));
            row.push(
                a.renew_at
                    .map(|r| {
                        let due = if c.renewal_due == Some(true) {
                            " (due)"
                        } else {
                            ""
                        };
                        format!("{}{due}", fmt_time(r))
                    })
                    .unwrap_or_else(dash),
            );
            let trust: Vec<String> = a
                .trust_bundle
                .iter()
                .map(|f| match Some(f.as_str()) == common {
                    true => format!("{} (common)", short_fp(f)),
                    false => short_fp(f),
                })
                .collect();
            let mut last = if trust.is_empty() {
                dash()
            } else {
                trust.join(",")
            };
            if let Some(p) = a.problems.first().or(a.warnings.first()) {
                last = format!("{last}  ! {p}");
            }
            row.push(last);
        }
        (None, None, _) => row.extend(std::iter::repeat_with(dash).take(7)),
    }
    row
}

pub fn print_status(out: &mut dyn Write, store: &str, report: &StatusReport) {
    match &report.root {
        Some(r) => {
            let _ = writeln!(
                out,
                "root: {} serial {} expires {} ({} days) sha256 {} [{}]",
                r.certificate.subject,
                r.certificate.serial,
                fmt_time(r.certificate.not_after),
                r.days_left,
                short_fp(&r.certificate.fingerprint_sha256),
                store
            );
            for (i, c) in r.signing_chain.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  {}: {} serial {} expires {} ({} days)",
                    if i == 0 { "mesh CA" } else { "between" },
                    c.certificate.subject,
                    c.certificate.serial,
                    fmt_time(c.certificate.not_after),
                    c.days_left
                );
            }
        }
        None => {
            let _ = writeln!(out, "root: none in {store} (run `cacertd root init`)");
        }
    }
    let _ = writeln!(out);
    let common = report
        .trust
        .iter()
        .find(|t| t.common)
        .map(|t| t.fingerprint_sha256.as_str());
    let rows: Vec<Vec<String>> = report
        .clusters
        .iter()
        .map(|c| status_row(c, common))
        .collect();
    table(
        out,
        &[
            "CLUSTER",
            "ROLE",
            "NETWORK",
            "STATE",
            "SERIAL",
            "NOT BEFORE",
            "NOT AFTER",
            "DAYS LEFT",
            "RENEW AT",
            "TRUST BUNDLE (sha256)",
        ],
        &rows,
    );
    if let Some(t) = &report.transition {
        let _ = writeln!(
            out,
            "\na {} transition is under way over {}: {}, {} (`cacertd transition status`)",
            t.kind,
            t.clusters.join(", "),
            t.position,
            t.state
        );
        print_trust_table(
            out,
            "its clusters' trust, before it and after each phase ahead:",
            &t.trust,
        );
    }
    print_trust(out, report);
    print_unknown_roots(out, report);
    print_istiod_releases(out, report);
}

/// With more than one root in the primaries' bundles (a rotation under way, a root left
/// behind), how many primaries trust each: after a key leaked, how far its root still reaches.
fn print_trust(out: &mut dyn Write, report: &StatusReport) {
    if report.trust.len() < 2 {
        return;
    }
    let _ = writeln!(
        out,
        "
trust:"
    );
    for t in &report.trust {
        let _ = writeln!(
            out,
            "  sha256 {}{}: trusted by {} of {} primaries ({})",
            short_fp(&t.fingerprint_sha256),
            if t.common { " (common root)" } else { "" },
            t.trusted_by.len(),
            t.primaries_read,
            t.trusted_by.join(", ")
        );
    }
}

/// The roots each cluster trusts that nobody configured.
fn print_unknown_roots(out: &mut dyn Write, report: &StatusReport) {
    let flagged: Vec<_> = report
        .clusters
        .iter()
        .filter_map(|c| Some((&c.name, c.cacerts.as_ref()?)))
        .filter(|(_, a)| !a.unknown_roots.is_empty())
        .collect();
    if flagged.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nroots trusted that are neither the common root nor in extra_trusted_roots:"
    );
    for (name, a) in flagged {
        for fp in &a.unknown_roots {
            let _ = writeln!(out, "  {name}: sha256 {fp}");
        }
    }
}

/// Each Kubernetes primary's istiod release, with what is known of it.
fn print_istiod_releases(out: &mut dyn Write, report: &StatusReport) {
    let with_istiod: Vec<_> = report
        .clusters
        .iter()
        .filter(|c| !c.istiod.is_empty())
        .collect();
    if with_istiod.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nistiod:");
    for c in with_istiod {
        for r in &c.istiod {
            let version = r.version.as_deref().unwrap_or("unknown release");
            let _ = writeln!(out, "  {}: {version} ({})", c.name, r.image);
            for b in &r.behaviours {
                let mark = if b.bearing == "refuse" {
                    "refused: "
                } else {
                    ""
                };
                let _ = writeln!(out, "    {mark}{} ({})", b.what, b.reference);
            }
        }
    }
}

#[derive(Serialize)]
pub struct VerifyJson {
    pub dir: String,
    pub valid: bool,
    #[serde(with = "crate::clock::rfc3339_seconds")]
    pub at: OffsetDateTime,
    pub problems: Vec<BundleProblem>,
    pub warnings: Vec<BundleProblem>,
    pub ca_cert: Option<CertInfo>,
    pub chain: Vec<CertInfo>,
    pub trust_bundle: Vec<String>,
}

pub fn verify_json(
    dir: &Path,
    result: &Result<VerifiedCaCerts, Vec<BundleProblem>>,
    at: OffsetDateTime,
) -> VerifyJson {
    let mut j = VerifyJson {
        dir: dir.display().to_string(),
        valid: result.is_ok(),
        at,
        problems: Vec::new(),
        warnings: Vec::new(),
        ca_cert: None,
        chain: Vec::new(),
        trust_bundle: Vec::new(),
    };
    match result {
        Ok(v) => {
            j.warnings = v.warnings().to_vec();
            j.ca_cert = Some(v.signing_cert().info().clone());
            j.chain = v.path().iter().map(|c| c.info().clone()).collect();
            j.trust_bundle = v.trust_bundle().fingerprints();
        }
        Err(p) => j.problems = p.clone(),
    }
    j
}

pub fn print_verified(out: &mut dyn Write, dir: &Path, v: &VerifiedCaCerts, at: OffsetDateTime) {
    let _ = writeln!(
        out,
        "{}: OK — istiod would accept this cacerts at {}",
        dir.display(),
        fmt_time(at)
    );
    let s = v.signing_cert().info();
    let _ = writeln!(
        out,
        "  ca-cert:  {} serial {} ({})",
        s.subject, s.serial, s.key_algorithm
    );
    let _ = writeln!(
        out,
        "            valid {} to {} ({} days left)",
        fmt_time(s.not_before),
        fmt_time(s.not_after),
        days_left(s.not_after, at)
    );
    for c in &v.path()[1..] {
        let _ = writeln!(
            out,
            "  chain:    {} ({})",
            c.info().subject,
            short_fp(&c.info().fingerprint_sha256)
        );
    }
    for (i, r) in v.trust_bundle().roots().iter().enumerate() {
        let _ = writeln!(
            out,
            "  root #{}: {} expires {} sha256 {}",
            i + 1,
            r.info().subject,
            fmt_time(r.info().not_after),
            r.info().fingerprint_sha256
        );
    }
    for w in v.warnings() {
        let _ = writeln!(out, "  warning: {w}");
    }
}
