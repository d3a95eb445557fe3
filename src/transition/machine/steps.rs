//! What a transition's record calls for next ([`next_step`]): pure, from the record and a time.

use super::*;

/// What to do next. Writes go cluster by cluster; each cluster's restarts follow its write, in
/// order; the gate is checked once every cluster finished. Before a phase's first write come
/// its approval (with `approve_each_phase`) and, for RemoveOldRoot, the drain period; a
/// rollback to the original material after the new signer was used waits a drain period too.
pub fn next_step(record: &Record, now: OffsetDateTime) -> Step {
    match &record.state {
        State::Failed { report, .. } => {
            return Step::Stopped {
                report: report.clone(),
            };
        }
        State::Held { note } => return Step::Held { note: note.clone() },
        State::RolledBack => return Step::Finished,
        State::Active if record.phase == Phase::Done => return Step::Finished,
        State::Active => {
            let untouched = record.untouched();
            if untouched
                && record.options.approve_each_phase
                && record.phase != Phase::AddNewRoot
                && !record.approved
            {
                return Step::AwaitApproval {
                    phase: record.phase,
                };
            }
            if record.phase == Phase::RemoveOldRoot
                && untouched
                && let Some(switched) = record.switched_at
            {
                let until = drain_end(switched, record.options.drain_seconds);
                if now < until {
                    return Step::Drain { until };
                }
            }
        }
        State::RollingBack {
            to: MaterialOf::Original,
        } => {
            // Removing the new root again: certificates the new signer issued must expire first.
            if record.untouched()
                && let Some(retired) = record.new_signer_retired_at
            {
                let until = drain_end(retired, record.options.drain_seconds);
                if now < until {
                    return Step::Drain { until };
                }
            }
        }
        State::RollingBack { .. } => {}
    }
    let material = record.target_material();
    for (cluster, progress) in &record.clusters {
        if !progress.written {
            return Step::Write {
                cluster: cluster.clone(),
                material,
            };
        }
        if let Some(stage) = progress.next_restart(&record.restarts(cluster)) {
            return Step::Restart {
                cluster: cluster.clone(),
                stage,
            };
        }
    }
    // Folders nobody observes: an operator says when they are applied.
    let unconfirmed: Vec<String> = record
        .options
        .directories
        .iter()
        .filter(|(c, proof)| **proof == DirProof::Approval && record.clusters.contains_key(*c))
        .map(|(c, _)| c.clone())
        .collect();
    if !unconfirmed.is_empty() && !record.applied {
        return Step::AwaitApplied {
            clusters: unconfirmed,
        };
    }
    Step::CheckGate { material }
}

/// The next steps when the next one is a cluster's write or restart: the next step of each of
/// up to `record.options.max_parallel` clusters (each cluster's own write and restarts stay in
/// order; the gate still comes after every cluster). Otherwise just [`next_step`].
pub fn next_steps(record: &Record, now: OffsetDateTime, room: usize) -> Vec<Step> {
    let first = next_step(record, now);
    let max = record.options.max_parallel.min(room).max(1);
    if max == 1 || !matches!(first, Step::Write { .. } | Step::Restart { .. }) {
        return vec![first];
    }
    let material = record.target_material();
    record
        .clusters
        .iter()
        .filter_map(|(cluster, progress)| {
            if !progress.written {
                Some(Step::Write {
                    cluster: cluster.clone(),
                    material,
                })
            } else {
                progress
                    .next_restart(&record.restarts(cluster))
                    .map(|stage| Step::Restart {
                        cluster: cluster.clone(),
                        stage,
                    })
            }
        })
        .take(max)
        .collect()
}

/// `from` + `drain_seconds`, saturating at the latest representable time (never wrapping to the
/// past, which would skip the drain).
fn drain_end(from: i64, drain_seconds: u64) -> OffsetDateTime {
    let end = from.saturating_add(i64::try_from(drain_seconds).unwrap_or(i64::MAX));
    OffsetDateTime::from_unix_timestamp(end).unwrap_or_else(|_| {
        time::PrimitiveDateTime::new(time::Date::MAX, time::Time::MIDNIGHT).assume_utc()
    })
}
