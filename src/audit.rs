//! The audit log: one JSON line per issuance, write, refusal and failure — who, what, when,
//! which cluster, which serial — appended to a file that survives restarts, and to tracing.
//! Never any key material: events are built from certificate facts only.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use time::OffsetDateTime;

use crate::pki::fmt_time;

/// One line of the audit log.
#[derive(Debug, Serialize)]
pub struct AuditEvent {
    pub time: String,
    pub actor: String,
    pub action: String,
    pub cluster: Option<String>,
    pub outcome: String,
    pub serial: Option<String>,
    pub reason: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Audit {
    path: PathBuf,
    actor: String,
}

impl Audit {
    pub fn new(path: PathBuf) -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown-host".into());
        Audit {
            path,
            actor: format!("cacertd@{host} pid {}", std::process::id()),
        }
    }

    /// Appends one event (and logs it). A failure to write the audit log is logged loudly but
    /// does not undo what already happened.
    pub fn record(&self, event: &AuditEvent) {
        tracing::info!(
            target: "cacertd::audit",
            action = %event.action,
            cluster = event.cluster.as_deref().unwrap_or(""),
            outcome = %event.outcome,
            serial = event.serial.as_deref().unwrap_or(""),
            "audit"
        );
        let line = match serde_json::to_string(event) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot render an audit event");
                return;
            }
        };
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| {
                f.write_all(format!("{line}\n").as_bytes())?;
                f.sync_data()
            });
        if let Err(e) = written {
            tracing::error!(path = %self.path.display(), error = %e, "cannot append to the audit log");
        }
    }

    /// Records one event by this process.
    pub fn note(
        &self,
        at: OffsetDateTime,
        action: &str,
        cluster: Option<&str>,
        outcome: &str,
        serial: Option<String>,
        reason: Option<String>,
    ) {
        self.record(&AuditEvent {
            time: fmt_time(at),
            actor: self.actor.clone(),
            action: action.into(),
            cluster: cluster.map(str::to_string),
            outcome: outcome.into(),
            serial,
            reason,
        });
    }
}
