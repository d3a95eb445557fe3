//! Plans: the steps of a transition as `plan`, `--dry-run` and `transition status` print them.

use serde::Serialize;
use time::OffsetDateTime;

use super::{MaterialOf, Options, Phase, Record, Step, StepOutcome, TransitionKind, next_step};
use crate::rollout::Stage;

/// One line of a plan.

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedStep {
    pub phase: Phase,
    /// The primary the step acts on; `None` for steps over the whole topology.
    pub cluster: Option<String>,
    pub action: String,
}

/// A primary cluster and the remotes its istiod serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub primary: String,
    pub remotes: Vec<String>,
}

impl Scope {
    fn clusters(&self) -> String {
        std::iter::once(self.primary.as_str())
            .chain(self.remotes.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Every step of a transition over `scopes`, in order, as `plan` prints them: the machine
/// driven with every step succeeding at once. Changes nothing and depends on nothing else, so
/// the same topology and options always give the same plan.
pub fn plan_steps(kind: TransitionKind, scopes: &[Scope], options: &Options) -> Vec<PlannedStep> {
    let record = Record::new(
        kind,
        scopes.iter().map(|s| s.primary.clone()),
        options.clone(),
    );
    remaining_steps(&record, scopes, OffsetDateTime::UNIX_EPOCH)
}

/// The steps still ahead of `record` at `now`, as [`plan_steps`] prints them, if every step
/// succeeds at once and every approval is given (`--dry-run` of `resume` and `rollback`).
/// Stops where an operator must act (a failed or held transition).
pub fn remaining_steps(record: &Record, scopes: &[Scope], now: OffsetDateTime) -> Vec<PlannedStep> {
    let mut record = record.clone();
    let kind = record.kind;
    let options = record.options.clone();
    let mut now = now;
    let scope_of = |cluster: &str| scopes.iter().find(|s| s.primary == cluster);
    let mut steps = Vec::new();
    loop {
        let step = next_step(&record, now);
        let phase = record.phase;
        let (cluster, action, outcome) = match &step {
            Step::Write { cluster, material } => (
                Some(cluster.clone()),
                format!(
                    "write cacerts: {}",
                    match material {
                        MaterialOf::Phase(p) => describe(kind, *p),
                        MaterialOf::Original =>
                            "the material it had before the transition, verbatim",
                    }
                ),
                StepOutcome::Written,
            ),
            Step::Restart { cluster, stage } => {
                let action = match (stage, scope_of(cluster)) {
                    (Stage::Istiod, _) | (_, None) => {
                        format!("restart {} and wait for the rollout", stage.name())
                    }
                    (Stage::Gateways, Some(s)) => format!(
                        "restart the gateways of {} and wait for the rollouts",
                        s.clusters()
                    ),
                    (Stage::Workloads, Some(s)) => format!(
                        "restart the workloads of every injected namespace of {}{} and wait for \
                         the rollouts",
                        s.clusters(),
                        if options.exclude_namespaces.is_empty() {
                            String::new()
                        } else {
                            format!(" except {}", options.exclude_namespaces.join(", "))
                        }
                    ),
                };
                (Some(cluster.clone()), action, StepOutcome::Restarted)
            }
            Step::CheckGate { material } => (
                None,
                format!(
                    "gate, in every cluster: {}",
                    match material {
                        MaterialOf::Phase(p) => gate(*p),
                        MaterialOf::Original => {
                            "every primary serves its material from before the transition; \
                             every istio-ca-root-cert ConfigMap holds exactly its roots"
                        }
                    }
                ),
                StepOutcome::GateHeld,
            ),
            Step::Drain { until } => {
                steps.push(PlannedStep {
                    phase,
                    cluster: None,
                    action: format!(
                        "wait the drain period ({}) so that no live workload certificate \
                         chains to the old root",
                        humantime::format_duration(std::time::Duration::from_secs(
                            options.drain_seconds
                        ))
                    ),
                });
                now = *until;
                continue;
            }
            Step::AwaitApproval { .. } => {
                steps.push(PlannedStep {
                    phase,
                    cluster: None,
                    action: "wait for an operator's approval".into(),
                });
                record.approve();
                continue;
            }
            Step::Stopped { report } => {
                steps.push(PlannedStep {
                    phase,
                    cluster: None,
                    action: format!("stopped until an operator resumes or rolls back: {report}"),
                });
                break;
            }
            Step::Held { note } => {
                steps.push(PlannedStep {
                    phase,
                    cluster: None,
                    action: format!("held until an operator resumes or rolls back: {note}"),
                });
                break;
            }
            Step::Finished => break,
        };
        steps.push(PlannedStep {
            phase,
            cluster,
            action,
        });
        record.record(&step, outcome, now);
    }
    steps
}

fn describe(kind: TransitionKind, phase: Phase) -> &'static str {
    match (kind, phase) {
        (TransitionKind::Migrate, Phase::AddNewRoot) => {
            "the current signer, verbatim (from istio-ca-secret if istiod is self-signed); \
             root-cert.pem = the current roots + the common root"
        }
        (TransitionKind::RotateRoot, Phase::AddNewRoot) => {
            "the current intermediate, verbatim; root-cert.pem = the current roots + the new root"
        }
        (_, Phase::SwitchSigner) => {
            "a new intermediate under the new root; root-cert.pem = the current roots + the new \
             root"
        }
        (_, Phase::RemoveOldRoot | Phase::Done) => {
            "the new intermediate; root-cert.pem = the new root only"
        }
    }
}

fn gate(phase: Phase) -> &'static str {
    match phase {
        Phase::AddNewRoot => {
            "every istio-ca-root-cert ConfigMap holds both roots; every restart finished"
        }
        Phase::SwitchSigner => {
            "as above, and every istiod serves its new intermediate as ca-cert.pem"
        }
        Phase::RemoveOldRoot | Phase::Done => {
            "every istio-ca-root-cert ConfigMap holds the new root only; every restart finished"
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options::for_tests()
    }

    #[test]
    fn the_plan_lists_every_step_in_order_and_is_stable() {
        let scopes = [
            Scope {
                primary: "east".into(),
                remotes: vec!["east-remote".into()],
            },
            Scope {
                primary: "west".into(),
                remotes: vec![],
            },
        ];
        let steps = plan_steps(TransitionKind::Migrate, &scopes, &opts());
        assert_eq!(steps, plan_steps(TransitionKind::Migrate, &scopes, &opts()));
        // 3 phases × 2 clusters × (1 write + 3 restarts) + 3 gates + 1 drain.
        assert_eq!(steps.len(), 3 * 2 * 4 + 3 + 1, "{steps:#?}");
        assert_eq!(steps[0].phase, Phase::AddNewRoot);
        assert_eq!(steps[0].cluster.as_deref(), Some("east"));
        assert!(steps[0].action.contains("istio-ca-secret"));
        assert!(
            steps[3].action.contains("east, east-remote"),
            "{:?}",
            steps[3]
        );
        let drain = steps
            .iter()
            .position(|s| s.action.contains("drain"))
            .unwrap();
        assert_eq!(steps[drain].phase, Phase::RemoveOldRoot);
        assert!(steps[drain].action.contains("1day"), "{:?}", steps[drain]);
        assert!(
            steps[..drain]
                .iter()
                .all(|s| s.phase < Phase::RemoveOldRoot)
        );
    }
}
