//! The audit log: one JSON line per issuance, write, refusal and failure — who, what, when,
//! which cluster, which serial — appended to a file that survives restarts, and to tracing.
//! Never any key material: events are built from certificate facts only.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
    /// Each event is made durable (fdatasync) before `record` returns; otherwise by
    /// [`Audit::sync`].
    sync_each: bool,
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
            sync_each: true,
        }
    }

    /// The same log, its events appended at once but made durable together by
    /// [`Audit::sync`]: for a run that notes hundreds of events (an issuance over many
    /// clusters), where one fdatasync per line would cost more than the run's work. An
    /// appended line survives the process dying; only a crash of the machine before the sync
    /// can lose it.
    pub fn syncing_later(&self) -> Audit {
        Audit {
            sync_each: false,
            ..self.clone()
        }
    }

    /// Makes every event appended so far durable.
    pub fn sync(&self) {
        let synced = match std::fs::File::open(&self.path) {
            Ok(f) => f.sync_data(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = synced {
            tracing::error!(path = %self.path.display(), error = %e, "cannot fsync the audit log");
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
        // Its folder (state_dir, by default) may not exist yet: a vault-pki `root init` is
        // the first thing that writes there.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
            && let Err(e) = crate::fsutil::create_private_dir(dir)
        {
            tracing::error!(path = %dir.display(), error = %e, "cannot create the audit log's folder");
        }
        // 0600 from creation, whatever the umask: it names every cluster and serial.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .and_then(|mut f| {
                f.write_all(format!("{line}\n").as_bytes())?;
                match self.sync_each {
                    true => f.sync_data(),
                    false => Ok(()),
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_noted_for_a_later_sync_are_in_the_log_at_once_and_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("audit.log");
        let audit = Audit::new(path.clone()).syncing_later();
        audit.sync(); // nothing written yet: no file, no error
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        for c in ["c1", "c2", "c3"] {
            audit.note(at, "cacerts-write", Some(c), "written", None, None);
        }
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let clusters: Vec<&str> = lines
            .iter()
            .map(|l| l["cluster"].as_str().unwrap())
            .collect();
        assert_eq!(clusters, ["c1", "c2", "c3"]);
        audit.sync();
    }
}
