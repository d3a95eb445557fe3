//! How a foreground transition shows where it stands: a progress bar with human lines above
//! it on a terminal, JSON lines otherwise.

use std::time::Duration;

use time::OffsetDateTime;

use super::Record;
use crate::pki::fmt_time;

/// How a foreground driver shows where it stands while it works and waits (a gate, the
/// drain) and when the phase changes, on stderr: on a terminal, a bar of the steps done with
/// the step under way (or who the gate waits for) beside it and human lines above it; JSON
/// lines otherwise (for CI logs and log collectors). The daemon exports metrics instead.
#[derive(Clone, Debug)]
pub enum Progress {
    Off,
    /// Human lines, no bar.
    Lines,
    Json,
    /// Human lines above a bar of the steps.
    Bar(indicatif::ProgressBar),
}

impl Progress {
    /// A bar on a terminal, JSON lines otherwise.
    pub fn for_stderr() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Progress::Bar(bar())
        } else {
            Progress::Json
        }
    }

    pub(super) fn show(&self, event: Event<'_>) {
        match (self.line(event), self) {
            (Some(line), Progress::Bar(bar)) => bar.println(line),
            (Some(line), _) => eprintln!("{line}"),
            (None, _) => {}
        }
    }

    /// `done` steps taken of `done + ahead`.
    pub(super) fn steps(&self, done: usize, ahead: usize) {
        if let Progress::Bar(bar) = self {
            bar.set_length(u64::try_from(done + ahead).unwrap_or(u64::MAX));
            bar.set_position(u64::try_from(done).unwrap_or(u64::MAX));
        }
    }

    /// What is under way (beside the bar).
    pub(super) fn doing(&self, what: String) {
        if let Progress::Bar(bar) = self {
            bar.set_message(what);
        }
    }

    /// The run is over: the bar goes, the lines above it stay.
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }

    fn line(&self, e: Event<'_>) -> Option<String> {
        let Event {
            at,
            event,
            record,
            detail,
            fields,
        } = e;
        let time = fmt_time(at);
        match self {
            Progress::Off => None,
            Progress::Lines | Progress::Bar(_) => Some(format!(
                "[{time}] {} {} — {detail}",
                record.kind.name(),
                record.phase
            )),
            Progress::Json => {
                let mut line = serde_json::json!({
                    "time": time,
                    "event": event,
                    "transition": record.kind,
                    "phase": record.phase,
                    "detail": detail,
                });
                if let (Some(line), serde_json::Value::Object(more)) =
                    (line.as_object_mut(), fields)
                {
                    line.extend(more);
                }
                Some(line.to_string())
            }
        }
    }
}

/// The bar: steps done of all, the time taken, and what is under way.
fn bar() -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} steps  {wide_msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar = indicatif::ProgressBar::new(0).with_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Shows a wait at most every 10 s (and its first time at once).
#[derive(Default)]
pub(super) struct Throttle(Option<std::time::Instant>);

impl Throttle {
    pub(super) fn due(&mut self, now: std::time::Instant) -> bool {
        if self
            .0
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(10))
        {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

/// One line of progress: what happened (`event`: phase, gate, drain) in which transition,
/// in words (`detail`) and as JSON fields of its own.
pub(super) struct Event<'a> {
    pub(super) at: OffsetDateTime,
    pub(super) event: &'a str,
    pub(super) record: &'a Record,
    pub(super) detail: String,
    pub(super) fields: serde_json::Value,
}

/// Shows how long the old root stays trusted.
pub(super) fn show_drain(
    progress: &Progress,
    record: &Record,
    until: OffsetDateTime,
    left: std::time::Duration,
    now: OffsetDateTime,
) {
    let left_text = crate::clock::fmt_duration(left);
    progress.show(Event {
        at: now,
        event: "drain",
        record,
        detail: format!(
            "draining: the old root stays trusted until {} ({left_text} left)",
            fmt_time(until)
        ),
        fields: serde_json::json!({"until": fmt_time(until), "left_seconds": left.as_secs()}),
    });
}

/// Shows who a gate still waits for, and for how long it has.
pub(super) fn show_gate_wait(
    progress: &Progress,
    record: &Record,
    who: &[String],
    now: OffsetDateTime,
) {
    let waited = record
        .gate_since
        .map_or(0, |s| now.unix_timestamp().saturating_sub(s));
    progress.show(Event {
        at: now,
        event: "gate",
        record,
        detail: format!(
            "waiting for the gate: {} behind ({}{}); waited {waited}s of {}s",
            who.len(),
            who.iter().take(3).cloned().collect::<Vec<_>>().join("; "),
            if who.len() > 3 { "; …" } else { "" },
            record.options.gate_timeout_seconds
        ),
        fields: serde_json::json!({"behind": who, "waited_seconds": waited}),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transition::{Options, TransitionKind};

    fn record() -> Record {
        Record::new(
            TransitionKind::Migrate,
            ["a".to_string()],
            Options {
                drain_seconds: 0,
                gate_timeout_seconds: 60,
                ..Options::for_tests()
            },
        )
    }

    #[test]
    fn progress_is_a_line_on_a_terminal_and_json_otherwise() {
        let r = record();
        let event = || Event {
            at: OffsetDateTime::UNIX_EPOCH,
            event: "gate",
            record: &r,
            detail: "waiting for the gate".into(),
            fields: serde_json::json!({"behind": ["a/app: 1 root(s), not the 2 expected"]}),
        };
        let line = Progress::Lines.line(event()).unwrap();
        assert!(
            line.contains("] migrate AddNewRoot — waiting for the gate"),
            "{line}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&Progress::Json.line(event()).unwrap()).unwrap();
        assert_eq!(json["event"], "gate");
        assert_eq!(json["phase"], "add-new-root");
        assert_eq!(json["transition"], "migrate");
        assert_eq!(json["behind"][0], "a/app: 1 root(s), not the 2 expected");
        assert!(Progress::Off.line(event()).is_none());
    }

    #[test]
    fn waits_are_shown_at_once_then_at_most_every_ten_seconds() {
        let start = std::time::Instant::now();
        let mut t = Throttle(None);
        assert!(t.due(start));
        assert!(!t.due(start));
        assert!(!t.due(start + Duration::from_millis(9_999)));
        assert!(t.due(start + Duration::from_secs(10)));
        // The ten seconds count from the last line shown, not from the first.
        assert!(!t.due(start + Duration::from_secs(19)));
        assert!(t.due(start + Duration::from_secs(20)));
    }
}
