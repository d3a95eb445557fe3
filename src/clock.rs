//! Time as a dependency: production code asks a [`Clock`], tests set one.

use std::sync::Mutex;

use time::OffsetDateTime;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> OffsetDateTime;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that stands still until moved; for tests.
#[derive(Debug)]
pub struct FixedClock(Mutex<OffsetDateTime>);

impl FixedClock {
    pub fn new(at: OffsetDateTime) -> Self {
        FixedClock(Mutex::new(at))
    }

    pub fn set(&self, at: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    pub fn advance(&self, by: time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A duration as people write it: `24h`, `90m`, `1h 30m`, `45s`; a week and more in days,
/// to the hour (`365d`, `121d 21h`). Sub-second parts are dropped.
pub fn fmt_duration(d: std::time::Duration) -> String {
    const DAY: u64 = 86_400;
    let secs = d.as_secs();
    if secs >= 7 * DAY {
        return match secs % DAY / 3600 {
            0 => format!("{}d", secs / DAY),
            h => format!("{}d {h}h", secs / DAY),
        };
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let parts: Vec<String> = [(h, "h"), (m, "m"), (s, "s")]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    match parts.is_empty() {
        true => "0s".into(),
        false => parts.join(" "),
    }
}

#[cfg(test)]
mod duration_tests {
    use super::fmt_duration;
    use std::time::Duration;

    #[test]
    fn durations_read_as_people_write_them() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (90 * 60, "1h 30m"),
            (86_400, "24h"),
            (12 * 3600 + 29 * 60, "12h 29m"),
            (3 * 86_400 + 1, "72h 1s"),
            (365 * 86_400, "365d"),
            (121 * 86_400 + 21 * 3600 + 35 * 60, "121d 21h"),
        ];
        for (secs, text) in cases {
            assert_eq!(fmt_duration(Duration::from_secs(secs)), text, "{secs}");
        }
    }
}

/// RFC 3339 to the second in JSON (`2026-11-30T16:25:46Z`), read back in any RFC 3339 form:
/// `#[serde(with = "crate::clock::rfc3339_seconds")]`.
pub mod rfc3339_seconds {
    use serde::{Deserializer, Serializer};
    use time::OffsetDateTime;

    fn whole(t: OffsetDateTime) -> OffsetDateTime {
        t.replace_nanosecond(0).unwrap_or(t)
    }

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        time::serde::rfc3339::serialize(&whole(*t), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        time::serde::rfc3339::deserialize(d)
    }

    /// The same for an `Option`.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            t: &Option<OffsetDateTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            time::serde::rfc3339::option::serialize(&t.map(whole), s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<OffsetDateTime>, D::Error> {
            time::serde::rfc3339::option::deserialize(d)
        }
    }
}
