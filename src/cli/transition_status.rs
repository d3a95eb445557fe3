//! `cacertd transition status`: where the transition under way stands, in words, and as a
//! documented JSON/YAML document (README, "Following a transition").

use serde::Serialize;
use time::OffsetDateTime;

use super::{CliError, Format, output};
use crate::pki::{TrustBundle, fmt_time};
use crate::transition::record_store::RecordStore;
use crate::transition::{self, Phase, Record};

/// The document `transition status -o json|yaml` prints.
#[derive(Serialize)]
struct Status {
    /// migrate, rotate-root, remove-root or revoke.
    transition: &'static str,
    phase: Phase,
    /// `waiting to enter phase P`, `in phase P` or `phase Done`.
    position: String,
    /// active, held: …, failed: …, rolling back to …, rolled back.
    state: String,
    #[serde(with = "crate::clock::rfc3339_seconds::option")]
    started_at: Option<OffsetDateTime>,
    clusters: Vec<ClusterStatus>,
    /// The gate being waited on, if one is.
    gate: Option<Gate>,
    timeline: Vec<Moment>,
    /// What the transition does next, in words.
    next: String,
}

#[derive(Serialize)]
struct ClusterStatus {
    name: String,
    /// SHA-256 fingerprints of the roots its bundle held before the transition, and of the
    /// roots the transition leaves it with.
    from_roots: Vec<String>,
    to_roots: Vec<String>,
    /// In the current phase (or rollback): `not written`, `written`, or `every phase
    /// written` once done.
    write: &'static str,
    /// Restart stages finished since the write, in order.
    restarted: Vec<&'static str>,
}

#[derive(Serialize)]
struct Gate {
    #[serde(with = "crate::clock::rfc3339_seconds")]
    waiting_since: OffsetDateTime,
    timeout_seconds: u64,
    /// Who it waits for: clusters, namespaces, proxies.
    behind: Vec<String>,
}

#[derive(Serialize)]
struct Moment {
    #[serde(with = "crate::clock::rfc3339_seconds")]
    at: OffsetDateTime,
    what: String,
}

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The roots a saved bundle holds, by fingerprint.
fn roots(pem: &[u8]) -> Vec<String> {
    TrustBundle::from_pem_lenient(pem)
        .0
        .roots()
        .iter()
        .map(|r| r.info().fingerprint_sha256.clone())
        .collect()
}

async fn status(files: &RecordStore, record: &Record, next: String) -> Status {
    let done = record.phase == Phase::Done;
    let mut clusters = Vec::new();
    for (name, p) in &record.clusters {
        // The roots come from the saved material; a record whose material cannot be read
        // still says where it stands.
        let (from_roots, to_roots) = match files.load_material(name).await {
            Ok(m) => (roots(&m.original.root_cert), roots(&m.new.root_cert)),
            Err(_) => (Vec::new(), Vec::new()),
        };
        clusters.push(ClusterStatus {
            name: name.clone(),
            from_roots,
            to_roots,
            write: match (done, p.written) {
                (true, _) => "every phase written",
                (false, true) => "written",
                (false, false) => "not written",
            },
            restarted: p.restarted.iter().map(|s| s.name()).collect(),
        });
    }
    let waiting = matches!(
        record.state,
        transition::State::Active | transition::State::RollingBack { .. }
    );
    Status {
        transition: record.kind.name(),
        phase: record.phase,
        position: record.position(),
        state: record.state.describe(),
        started_at: record.started_at().map(at),
        clusters,
        gate: record.gate_since.filter(|_| waiting).map(|since| Gate {
            waiting_since: at(since),
            timeout_seconds: record.options.gate_timeout_seconds,
            behind: record.behind.clone(),
        }),
        timeline: record
            .timeline
            .iter()
            .map(|m| Moment {
                at: at(m.at),
                what: m.what.clone(),
            })
            .collect(),
        next,
    }
}

/// `transition status`: where the transition stands, each cluster's roots and steps, the
/// gate's wait, the timeline and what comes next (`next` puts it in words).
pub(super) async fn show(
    files: &RecordStore,
    format: Format,
    now: OffsetDateTime,
    next: &dyn Fn(&Record) -> String,
) -> Result<(), CliError> {
    let Some(record) = files.load().await? else {
        say!("no transition is under way");
        return Ok(());
    };
    let s = status(files, &record, next(&record)).await;
    if format.structured() {
        output::print_as(format, &s);
        return Ok(());
    }
    say!("{} transition: {}, {}", s.transition, s.position, s.state);
    if let Some(started) = s.started_at {
        say!("started: {}", fmt_time(started));
    }
    let short = |fps: &[String]| match fps.is_empty() {
        true => "unknown".to_string(),
        false => fps
            .iter()
            .map(|f| f.chars().take(11).collect::<String>())
            .collect::<Vec<_>>()
            .join("+"),
    };
    for c in &s.clusters {
        say!(
            "  {}: {}; restarted: {}; roots {} → {}",
            c.name,
            c.write,
            match c.restarted.is_empty() {
                true => "-".to_string(),
                false => c.restarted.join(", "),
            },
            short(&c.from_roots),
            short(&c.to_roots)
        );
    }
    if let Some(g) = &s.gate {
        say!(
            "gate: waiting for {}s (fails after {}s){}",
            (now - g.waiting_since).whole_seconds().max(0),
            g.timeout_seconds,
            match g.behind.is_empty() {
                true => String::new(),
                false => format!("; behind: {}", g.behind.join("; ")),
            }
        );
    }
    if !s.timeline.is_empty() {
        say!("timeline:");
        for m in &s.timeline {
            say!("  {}  {}", fmt_time(m.at), m.what);
        }
    }
    say!("next: {}", s.next);
    Ok(())
}
