//! Plans: the steps of a transition as `plan`, `--dry-run` and `transition status` print them.

use serde::Serialize;
use time::OffsetDateTime;

use super::{
    DirProof, MaterialOf, Options, Phase, Record, Step, StepOutcome, TransitionKind, next_step,
};
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
    /// Every primary of `config`'s topology with the remotes its istiod serves.
    pub fn all(config: &crate::config::Config) -> Vec<Scope> {
        config
            .topology
            .primaries()
            .map(|p| Scope {
                primary: p.name.clone(),
                remotes: config
                    .topology
                    .remotes_of(&p.name)
                    .map(|r| r.name.clone())
                    .collect(),
            })
            .collect()
    }

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
    steps_ahead(record, scopes, now)
        .into_iter()
        .filter_map(|(_, line)| line)
        .collect()
}

/// The machine's steps still ahead of `record`, as [`remaining_steps`] walks them, each with
/// its plan line (`None`: a step a plan does not print).
pub fn steps_ahead(
    record: &Record,
    scopes: &[Scope],
    now: OffsetDateTime,
) -> Vec<(Step, Option<PlannedStep>)> {
    let mut record = record.clone();
    let mut now = now;
    let mut steps = Vec::new();
    loop {
        let step = next_step(&record, now);
        let phase = record.phase;
        let (cluster, action, then) = line(&step, &record, scopes);
        steps.push((
            step.clone(),
            action.map(|action| PlannedStep {
                phase,
                cluster,
                action,
            }),
        ));
        match (then, &step) {
            (Then::Record(outcome), _) => record.record(&step, outcome, now),
            (Then::Pass, Step::Drain { until }) => now = *until,
            (Then::Pass, Step::AwaitApplied { .. }) => record.confirm_applied(),
            (Then::Pass, _) => record.approve(),
            (Then::End, _) => break,
        }
    }
    steps
}

/// How a dry run goes on after a step.
enum Then {
    /// As if the step succeeded.
    Record(StepOutcome),
    /// Past a wait: the drain's end, or an operator's approval.
    Pass,
    /// Where an operator must act, or the end.
    End,
}

/// One step as a plan line: the cluster it acts on, what it does (`None`: no line), and how
/// the dry run goes on.
fn line(step: &Step, record: &Record, scopes: &[Scope]) -> (Option<String>, Option<String>, Then) {
    let (kind, options) = (record.kind, &record.options);
    match step {
        Step::Write { cluster, material } => (
            Some(cluster.clone()),
            Some(write_action(record, cluster, *material)),
            Then::Record(StepOutcome::Written),
        ),
        Step::AwaitApplied { clusters } => (
            None,
            Some(format!(
                "wait until the folders of {} are applied to their clusters{}, confirmed with \
                 `cacertd transition resume --approve`",
                clusters.join(", "),
                match kind {
                    TransitionKind::Renew => "",
                    _ => " (and their restarts done)",
                }
            )),
            Then::Pass,
        ),
        Step::Restart { cluster, stage } => {
            let scope = scopes.iter().find(|s| &s.primary == cluster);
            (
                Some(cluster.clone()),
                Some(restart_action(*stage, scope, options)),
                Then::Record(StepOutcome::Restarted),
            )
        }
        Step::CheckGate { material } => (
            None,
            Some(gate_line(record, *material)),
            Then::Record(StepOutcome::GateHeld),
        ),
        Step::Drain { .. } => (
            None,
            Some(format!(
                "wait the drain period ({}) so that no live workload certificate chains to the \
                 old root",
                crate::clock::fmt_duration(std::time::Duration::from_secs(options.drain_seconds))
            )),
            Then::Pass,
        ),
        Step::AwaitApproval { .. } => (
            None,
            Some("wait for an operator's approval".into()),
            Then::Pass,
        ),
        Step::Stopped { report } => (
            None,
            Some(format!(
                "stopped until an operator resumes or rolls back: {report}"
            )),
            Then::End,
        ),
        Step::Held { note } => (
            None,
            Some(format!(
                "held until an operator resumes or rolls back: {note}"
            )),
            Then::End,
        ),
        Step::Finished => (None, None, Then::End),
    }
}

/// A write of `material` to `cluster`, as a plan line: where it goes, what it holds, and
/// what applying a folder takes.
fn write_action(record: &Record, cluster: &str, material: MaterialOf) -> String {
    let (kind, options) = (record.kind, &record.options);
    let folder = options.directories.get(cluster);
    let lists_only = record.only_lists(cluster);
    format!(
        "write cacerts{}: {}{}",
        match folder {
            Some(_) => " into its folder",
            None => "",
        },
        match (material, &record.revocation) {
            (MaterialOf::Phase(_), None) if lists_only => {
                "its current intermediate and roots, verbatim; ca-crl.pem = the lists it serves \
                 and one from each migrating cluster's new intermediate, published before any \
                 of them signs"
                    .to_string()
            }
            (MaterialOf::Phase(p), Some(r)) => describe_revocation(r, kind, cluster, p),
            (MaterialOf::Phase(p), None) => describe(kind, p).to_string(),
            (MaterialOf::Original, _) => {
                "the material it had before the transition, verbatim".to_string()
            }
        },
        match (folder, options.skip_workload_restarts) {
            (Some(_), _) if kind == TransitionKind::Renew || lists_only => {
                "; applying the folder is enough: istiod takes it without a restart"
            }
            (Some(_), false) => {
                "; whoever applies the folder then restarts istiod, the gateways and the \
                 workloads there, in that order"
            }
            (Some(_), true) => {
                "; whoever applies the folder then restarts istiod and the gateways there"
            }
            (None, _) => "",
        }
    )
}

/// What a restart stage does, in the scope (the primary and its remotes) it covers.
fn restart_action(stage: Stage, scope: Option<&Scope>, options: &Options) -> String {
    match (stage, scope) {
        (Stage::Istiod, _) | (_, None) => {
            format!("restart {} and wait for the rollout", stage.name())
        }
        (Stage::Gateways, Some(s)) => format!(
            "restart the gateways of {} and wait for the rollouts",
            s.clusters()
        ),
        (Stage::Workloads, Some(s)) => format!(
            "restart the workloads of every injected namespace of {}{} and wait for the rollouts",
            s.clusters(),
            if options.exclude_namespaces.is_empty() {
                String::new()
            } else {
                format!(" except {}", options.exclude_namespaces.join(", "))
            }
        ),
    }
}

/// A revocation's (or a renewal's) write, which differs between the revoked (renewed)
/// cluster and the others.
fn describe_revocation(
    r: &super::Revocation,
    kind: TransitionKind,
    cluster: &str,
    phase: Phase,
) -> String {
    let revoked = r.cluster == cluster;
    let renewal = kind == TransitionKind::Renew;
    match phase {
        Phase::AddNewRoot => format!(
            "its current intermediate and roots, verbatim; ca-crl.pem = a list from every \
             intermediate in use{}, the mesh CA and every CA above it. Published before the \
             successor signs anything: a proxy that checks lists rejects a chain through a CA \
             without one",
            if revoked {
                " and from its successor"
            } else {
                ", the successor of "
            }
            .to_string()
                + if revoked { "" } else { &r.cluster }
        ),
        Phase::SwitchSigner if revoked => format!(
            "its new intermediate (the successor of {} serial {}); the same roots and lists{}",
            r.subject,
            r.serial,
            match renewal {
                true => " (the predecessor's stays while what it signed lives; nothing is revoked)",
                false => "",
            }
        ),
        Phase::SwitchSigner => "unchanged (its signer stays; the same lists)".into(),
        Phase::RemoveOldRoot | Phase::Done => format!(
            "ca-crl.pem = the same lists, the mesh CA's now naming {} serial {} ({}): no proxy \
             accepts a certificate it signed. Only now: before {}'s workloads re-certified under \
             the successor, this would have cut them off",
            r.subject,
            r.serial,
            r.reason.name(),
            r.cluster
        ),
    }
}

fn describe(kind: TransitionKind, phase: Phase) -> &'static str {
    match (kind, phase) {
        (TransitionKind::Revoke, _) => "the revocation's material",
        (TransitionKind::Renew, _) => "the renewal's material",
        (TransitionKind::Migrate, Phase::AddNewRoot) => {
            "the current signer, verbatim (from istio-ca-secret if istiod is self-signed); \
             root-cert.pem = the current roots + the common root"
        }
        (TransitionKind::RotateRoot, Phase::AddNewRoot) => {
            "the current intermediate, verbatim; root-cert.pem = the current roots + the new root"
        }
        (TransitionKind::RemoveRoot, _) => {
            "its current intermediate, verbatim; root-cert.pem = its roots without the one \
             removed"
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

/// What a gate checks: in clusters cacertd reads (Kubernetes targets, observed folders), what
/// they serve and publish; in folders confirmed by an operator, that they hold the material.
fn gate_line(record: &Record, material: MaterialOf) -> String {
    let confirmed = |c: &String| record.options.directories.get(c) == Some(&DirProof::Approval);
    let folders: Vec<&str> = record
        .clusters
        .keys()
        .filter(|c| confirmed(c))
        .map(String::as_str)
        .collect();
    if folders.len() == record.clusters.len() {
        return "gate: every folder holds the material of this step".into();
    }
    let owned;
    let read = match material {
        MaterialOf::Phase(p) if record.revocation.is_some() => {
            owned = revocation_gate(record, p);
            owned.as_str()
        }
        MaterialOf::Phase(_) if record.kind == TransitionKind::RemoveRoot => {
            "every istio-ca-root-cert ConfigMap holds exactly the roots it keeps; every restart \
             finished"
        }
        MaterialOf::Phase(Phase::SwitchSigner) if record.options.emergency => {
            owned = format!(
                "{}; in every cluster no proxy is left that started before its istiod switched \
                 signer (emergency: the compromised root leaves every bundle without a drain)",
                gate(Phase::SwitchSigner)
            );
            owned.as_str()
        }
        MaterialOf::Phase(p) => gate(p),
        MaterialOf::Original => {
            "every primary serves its material from before the transition; every \
             istio-ca-root-cert ConfigMap holds exactly its roots"
        }
    };
    // A trust transition that carries revocation lists waits for them like a revocation.
    let with_lists;
    let read = match record.options.list_propagation_seconds {
        Some(wait) if record.revocation.is_none() && material != MaterialOf::Original => {
            with_lists = format!(
                "{read}; every istio-ca-crl ConfigMap istiod published holds the step's \
                 ca-crl.pem, then {} for kubelet to update the mounted file in every pod",
                crate::clock::fmt_duration(std::time::Duration::from_secs(wait))
            );
            with_lists.as_str()
        }
        _ => read,
    };
    match folders.is_empty() {
        true => format!("gate, in every cluster: {read}"),
        false => format!(
            "gate, in every cluster but {} (whose folders hold the material): {read}",
            folders.join(", ")
        ),
    }
}

/// A revocation's gate: the lists published everywhere and given time to reach every pod;
/// after the switch, nothing in the revoked cluster still presenting the revoked signer's
/// certificates.
fn revocation_gate(record: &Record, phase: Phase) -> String {
    let lists = format!(
        "every primary serves the step's ca-crl.pem and every istio-ca-crl ConfigMap istiod \
         published holds it, then {} for kubelet to update the mounted file in every pod",
        crate::clock::fmt_duration(std::time::Duration::from_secs(
            record.options.list_propagation_seconds.unwrap_or(0)
        ))
    );
    match (phase, &record.revocation) {
        (Phase::SwitchSigner, Some(r)) if record.kind == TransitionKind::Revoke => format!(
            "{lists}; every restart finished and no proxy of {} or its remotes started before its \
             istiod signed with the successor",
            r.cluster
        ),
        _ => format!("{lists}; every restart finished"),
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
        assert!(steps[drain].action.contains("(24h)"), "{:?}", steps[drain]);
        assert!(
            steps[..drain]
                .iter()
                .all(|s| s.phase < Phase::RemoveOldRoot)
        );
    }
}
