//! How long the backups of a cluster's `cacerts` are kept. Every backup holds an old
//! intermediate key: kept forever, they pile up as copies of keys that once signed for the
//! mesh. `[backups]` bounds them, and the rule never removes the one way back.

use time::OffsetDateTime;

pub use crate::config::Retention;

/// One backup as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupEntry {
    /// The folder's or Secret's name.
    pub name: String,
    pub taken_at: OffsetDateTime,
    /// When the intermediate it holds expires; `None` if that could not be read (then it
    /// counts as valid).
    pub not_after: Option<OffsetDateTime>,
}

impl BackupEntry {
    fn expired(&self, now: OffsetDateTime) -> bool {
        self.not_after.is_some_and(|t| t <= now)
    }
}

/// The backups to remove now, by name. A backup whose intermediate has expired goes at once:
/// it can restore nothing. Of the others, the newest `keep` stay, and none older than
/// `max_age` — except the newest one still valid, which always stays: it is the only copy of
/// the signer the cluster had before, the way back should the current one have to be undone.
/// Backups are never pruned during a trust transition (the caller passes no rule then). Of
/// backups taken at the same time, the later in `backups` counts as the newer.
pub fn to_remove(backups: &[BackupEntry], rule: &Retention, now: OffsetDateTime) -> Vec<String> {
    // Newest first; of two taken at the same time, the later in `backups` is the newer.
    let mut newest_first: Vec<(usize, &BackupEntry)> = backups.iter().enumerate().collect();
    newest_first.sort_by(|(i, a), (j, b)| b.taken_at.cmp(&a.taken_at).then(j.cmp(i)));
    let newest_first: Vec<&BackupEntry> = newest_first.into_iter().map(|(_, b)| b).collect();
    let way_back = newest_first.iter().position(|b| !b.expired(now));
    newest_first
        .iter()
        .enumerate()
        .filter(|(i, b)| {
            if Some(*i) == way_back {
                return false;
            }
            let too_old = rule.max_age.is_some_and(|max| {
                now - b.taken_at > time::Duration::try_from(max).unwrap_or(time::Duration::MAX)
            });
            b.expired(now) || *i >= rule.keep.max(1) || too_old
        })
        .map(|(_, b)| b.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(days: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap() + time::Duration::days(days)
    }

    fn backup(name: &str, taken: i64, expires: Option<i64>) -> BackupEntry {
        BackupEntry {
            name: name.into(),
            taken_at: at(taken),
            not_after: expires.map(at),
        }
    }

    #[test]
    fn keeps_the_newest_drops_the_expired_and_the_old_but_never_the_way_back() {
        let now = at(100);
        let rule = Retention {
            keep: 2,
            max_age: Some(Duration::from_secs(30 * 86_400)),
        };
        let backups = [
            backup("b1", 10, Some(200)),
            backup("b2", 20, Some(50)), // expired
            backup("b3", 80, Some(300)),
            backup("b4", 90, None),
            backup("b5", 95, Some(400)),
        ];
        let mut gone = to_remove(&backups, &rule, now);
        gone.sort();
        // b5 and b4 are the newest two; b3 is third; b1 is too old; b2 has expired.
        assert_eq!(gone, ["b1", "b2", "b3"]);

        // The newest valid backup stays, however old: here every newer one has expired.
        let backups = [
            backup("old", 1, Some(500)),
            backup("dead1", 90, Some(99)),
            backup("dead2", 95, Some(99)),
        ];
        let mut gone = to_remove(&backups, &rule, now);
        gone.sort();
        assert_eq!(gone, ["dead1", "dead2"]);

        // No rule beyond the count: nothing within it goes.
        let rule = Retention {
            keep: 10,
            max_age: None,
        };
        assert!(to_remove(&backups[..1], &rule, now).is_empty());
    }
}
