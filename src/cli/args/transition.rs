//! The arguments of `migrate`, `rotate-root`, `transition`, `revoke` and `crl`: the phased
//! transitions and the revocation lists.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Subcommand, ValueEnum};

use super::OutputArgs;

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Print every step, per cluster, in order. Changes nothing and reads nothing but the
    /// configuration (with --check, the clusters too).
    Plan(PlanCmdArgs),

    /// Start the migration: read every primary (its cacerts, or istiod's istio-ca-secret),
    /// save that material and a new intermediate under the common root ([transition] record:
    /// <state_dir>/transition/, or Secrets in the management cluster with a Lease), record the
    /// transition, then drive it. Primaries already signing under the common root are left
    /// out. Refused while another transition is under way.
    Start(StartArgs),
}

#[derive(Debug, Subcommand)]
pub enum RotateRootCommand {
    /// Print every step, per cluster, in order. Changes nothing and reads nothing but the
    /// configuration (with --check, the clusters too).
    Plan(PlanCmdArgs),

    /// Start the rotation: the new root — imported with --new-root-cert and --new-root-key, or
    /// generated per the root policy (by Vault, for vault-pki) — is kept apart
    /// (<state_dir>/transition/new-root/, the Vault secret <path>-next, or the PKI issuer
    /// <issuer>-next) with a new intermediate per primary; when the rotation is done it
    /// replaces the root in the store (the old one is kept: moved aside, the previous KV
    /// version, or the old issuer). Every primary must be on the current root.
    Start(RotateStartArgs),
}

#[derive(Debug, ClapArgs)]
pub struct RotateStartArgs {
    /// The new root's certificate (PEM); with --new-root-key.
    #[arg(long, value_name = "FILE", requires = "new_root_key")]
    pub new_root_cert: Option<PathBuf>,

    /// The new root's private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[arg(long, value_name = "FILE", requires = "new_root_cert")]
    pub new_root_key: Option<PathBuf>,

    /// The current root's key leaked: the shortest safe drain. No drain period; instead
    /// SwitchSigner's gate waits, in every primary and remote, until no proxy that started
    /// before its istiod switched signer is left (a bare pod, a Job's pod, a namespace
    /// excluded from restarts: delete or restart it), so that no certificate under the
    /// compromised root is in use when every bundle drops it. Not with --drain or
    /// --skip-workload-restarts.
    #[arg(long, conflicts_with_all = ["drain", "skip_workload_restarts"])]
    pub emergency: bool,

    #[command(flatten)]
    pub plan: TransitionPlanArgs,

    #[command(flatten)]
    pub drive: DriveArgs,
}

#[derive(Debug, Subcommand)]
pub enum TransitionCommand {
    /// Phase, state, per-cluster progress and what the transition waits for.
    Status(OutputArgs),

    /// Continue the transition: after a failed gate (once fixed), after the drain period, or
    /// with --approve into the next phase.
    Resume(ResumeArgs),

    /// Return every cluster to the previous phase's material (from AddNewRoot: to what it had
    /// before). Backups of everything replaced are kept.
    Rollback(RollbackArgs),

    /// Forget the transition without touching any cluster; its record and material are moved
    /// aside (to <state_dir>/transition-<time>/, or to Secrets suffixed with the time in the
    /// management cluster), not deleted. Clusters keep whatever they serve now.
    Abort(AbortArgs),

    /// Remove a root from every primary's trust bundle (one that `status` shows as an unknown
    /// root, planted or left by an aborted transition): a one-phase transition. Each primary
    /// that trusts it keeps its intermediate and gets its bundle without that root; istiod,
    /// the gateways and the workloads there restart, and the gate waits until every published
    /// bundle holds exactly the roots kept. Refused for the common root, for a root any
    /// primary signs under, and for a root no primary trusts.
    RemoveRoot(RemoveRootArgs),
}

#[derive(Debug, ClapArgs)]
pub struct PlanCmdArgs {
    #[command(flatten)]
    pub plan: TransitionPlanArgs,

    /// Also read the clusters and play every step out on the trust graph: after each step,
    /// which pairs of proxies (each primary's workloads, and each proxy no rollout restarts)
    /// that complete mTLS today would not. Changes nothing; exits 5 if a step would break one.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, ClapArgs)]
pub struct RevokeArgs {
    /// The primary whose intermediate is revoked.
    #[arg(value_name = "CLUSTER")]
    pub cluster: String,

    /// Why, as the mesh CA's list will say.
    #[arg(long, value_enum)]
    pub reason: RevokeReason,

    /// A revocation list (PEM) of a CA above the mesh CA — a corporate root or intermediate —
    /// which cacertd cannot sign; needed for each such CA unless the clusters carry a current
    /// one already, or it is published where the chain's certificates say (their http:// CRL
    /// distribution points). Repeatable.
    #[arg(long = "chain-crl", value_name = "FILE")]
    pub chain_crl: Vec<PathBuf>,

    #[command(flatten)]
    pub run: FixedRunArgs,
}

#[derive(Debug, ClapArgs)]
pub struct RenewArgs {
    /// The primary whose intermediate is renewed.
    #[arg(value_name = "CLUSTER")]
    pub cluster: String,

    #[command(flatten)]
    pub run: FixedRunArgs,
}

/// How a transition whose phases are fixed (a revocation, a renewal) runs.
#[derive(Debug, ClapArgs)]
pub struct FixedRunArgs {
    /// How many clusters are written (and restarted) at once (default: [transition]
    /// max_parallel, 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_parallel: Option<u16>,

    /// Wait for an operator's `transition resume --approve` before each step after the first.
    #[arg(long)]
    pub approve_each_phase: bool,

    #[command(flatten)]
    pub drive: DriveArgs,
}

#[derive(Debug, Subcommand)]
pub enum CrlCommand {
    /// Put newer revocation lists in place of the ones every primary serves, before those
    /// expire: Envoy rejects every chain an expired list covers. The lists of the CAs above
    /// the mesh CA (a corporate root or intermediate) come from your PKI (--chain-crl, or
    /// fetched from the CRL distribution points of the chain; `serve` fetches them hourly); with
    /// the vault-pki store, the mesh CA's list is Vault's, rebuilt now (`serve` also does this
    /// by itself once the served list is due: half its life gone, or ten days left). Lists of
    /// other CAs stay as they are, but for lapsed ones of CAs no longer in use, left out; a
    /// list no CA above the mesh CA signed is refused. One write per primary whose lists
    /// change, checked as istiod will; no restart (istiod and kubelet pass the file on).
    /// Refused while a transition is under way.
    Refresh(CrlRefreshArgs),
}

#[derive(Debug, ClapArgs)]
pub struct CrlRefreshArgs {
    /// A revocation list (PEM) of a CA above the mesh CA. Repeatable. Without it, the lists of
    /// the CAs above the mesh CA are fetched from the http:// CRL distribution points their
    /// certificates name (each must be signed by its CA).
    #[arg(long = "chain-crl", value_name = "FILE")]
    pub chain_crl: Vec<PathBuf>,

    /// Say what would change, and write nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// `revoke --reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RevokeReason {
    /// Its key leaked, or may have.
    KeyCompromise,
    /// Replaced: what it signed must not be accepted any more.
    Superseded,
    /// Its cluster left the mesh.
    CessationOfOperation,
}

#[derive(Debug, ClapArgs)]
pub struct RemoveRootArgs {
    /// The root's SHA-256 fingerprint, as `cacertd status` prints it (case and colons
    /// optional).
    #[arg(value_name = "FINGERPRINT")]
    pub fingerprint: String,

    /// How many clusters are written and restarted at once (default: [transition]
    /// max_parallel, 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_parallel: Option<u16>,

    /// Change nothing: print the steps, read the clusters and play every step out on the
    /// trust graph, as `migrate plan --check` does. Exits 5 if a step would break a pair.
    #[arg(long, conflicts_with_all = ["wait", "stop_after_steps"])]
    pub check: bool,

    #[command(flatten)]
    pub drive: DriveArgs,
}

#[derive(Debug, ClapArgs)]
pub struct StartArgs {
    #[command(flatten)]
    pub plan: TransitionPlanArgs,

    #[command(flatten)]
    pub drive: DriveArgs,
}

#[derive(Debug, ClapArgs)]
pub struct ResumeArgs {
    /// Approve entering the next phase (with --approve-each-phase).
    #[arg(long)]
    pub approve: bool,

    /// Give every gate from now on this long to hold (e.g. 30m), replacing the timeout the
    /// transition started with: for a gate that failed only because it was too short.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub gate_timeout: Option<std::time::Duration>,

    #[command(flatten)]
    pub drive: DriveArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, ClapArgs)]
pub struct DriveArgs {
    /// Drive in the foreground until Done (or Failed: non-zero exit), sleeping through gates
    /// that do not hold yet and through the drain period.
    #[arg(long)]
    pub wait: bool,

    /// Stop after this many steps, as if the process had died (for crash testing).
    #[arg(long, hide = true, value_name = "N")]
    pub stop_after_steps: Option<usize>,

    /// Print what would be done — the clusters it would move and every step still ahead —
    /// and change nothing (no record, no material, no intermediate issued, no cluster written).
    #[arg(long, conflicts_with_all = ["wait", "stop_after_steps"])]
    pub dry_run: bool,
}

#[derive(Debug, ClapArgs)]
pub struct AbortArgs {
    /// Print what would be moved aside and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, ClapArgs)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub drive: DriveArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, ClapArgs)]
pub struct TransitionPlanArgs {
    /// How long the old root stays trusted after every primary switched signer (default:
    /// [transition] drain, 24h). At least the longest workload certificate lifetime.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub drain: Option<std::time::Duration>,

    /// Do not restart workloads; rely on istiod's multi-root hot reload
    /// (ISTIO_MULTIROOT_MESH=true) to hand proxies the new bundle. `start` refuses unless
    /// every primary's istiod runs with it, every proxy takes the bundles istiod pushes
    /// (PROXY_CONFIG_XDS_AGENT=true) or --wait-for-renewal is given, no ztunnel runs, and
    /// --drain covers a certificate renewal of every proxy.
    #[arg(long)]
    pub skip_workload_restarts: bool,

    /// With --skip-workload-restarts, for proxies that do not take pushed bundles: wait, after
    /// each primary's istiod restart, until every such proxy has renewed its certificate (and
    /// learned the new root with it) before any cluster signs under the new root — about
    /// 12 h with Istio's default 24 h certificates, computed from each proxy's SECRET_TTL.
    #[arg(long, requires = "skip_workload_restarts")]
    pub wait_for_renewal: bool,

    /// Wait for an operator's approval before each phase after the first.
    #[arg(long)]
    pub approve_each_phase: bool,

    /// How many clusters are written and restarted at once within a phase (default:
    /// [transition] max_parallel, 1). Each cluster's own steps stay in order, and every gate
    /// still waits for all clusters.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_parallel: Option<u16>,

    #[command(flatten)]
    pub output: OutputArgs,
}
