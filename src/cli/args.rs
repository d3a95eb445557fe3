//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

mod transition;
pub use transition::{
    CrlCommand, CrlRefreshArgs, DriveArgs, FixedRunArgs, MigrateCommand, RemoveRootArgs, RenewArgs,
    ResumeArgs, RevokeArgs, RevokeReason, RotateRootCommand, RotateStartArgs, TransitionCommand,
    TransitionPlanArgs,
};

const EXIT_CODES: &str = "\
Exit codes:
  0  success (nothing needed doing, or everything was done)
  1  an operation failed (I/O, unreadable target, a cluster could not be updated)
  2  usage or configuration error (bad flag, invalid config or policy file, unknown cluster)
  3  invalid certificate or key material (bad PEM, key/cert mismatch, bundle fails validation)
  4  refused by the issuance policy
  5  refused as unsafe (a root already exists; a cluster trusts another root)

Environment:
  CACERTD_CONFIG  config file used when -c is not given (default: cacertd.toml)
  RUST_LOG        log filter, e.g. RUST_LOG=cacertd=debug (logs go to stderr)";

/// cacertd owns the common trust root of an Istio multicluster mesh: it keeps the root, issues
/// one intermediate CA per primary cluster, and writes each cluster's `cacerts` (the plug-in CA
/// Secret istiod reads from istio-system).
///
/// Quick start (local file root store, directory targets):
///   cacertd -c cacertd.toml root init      # create the common root
///   cacertd -c cacertd.toml issue          # intermediates for every primary
///   cacertd -c cacertd.toml status         # what every cluster holds
///   kubectl --context cluster1 apply -f out/cluster1/cacerts.yaml
#[derive(Debug, Parser)]
#[command(name = "cacertd", version, after_long_help = EXIT_CODES, verbatim_doc_comment)]
pub struct Args {
    /// Configuration file (TOML). Relative paths inside it are relative to the file.
    #[arg(
        short,
        long,
        global = true,
        env = "CACERTD_CONFIG",
        default_value = "cacertd.toml"
    )]
    pub config: PathBuf,

    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log lines as text (coloured only when stderr is a terminal and NO_COLOR is unset) or
    /// as one JSON object per line, for log collectors.
    /// Without it (or CACERTD_LOG_FORMAT): the config's [daemon] log_format, else text.
    #[arg(long, global = true, value_enum, env = "CACERTD_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, import or inspect the common root.
    #[command(subcommand)]
    Root(RootCommand),

    /// Issue intermediates for primary clusters and write their cacerts.
    ///
    /// Idempotent: a cluster whose intermediate is valid, chains to the root and is not yet due
    /// for renewal (per its policy) is left alone. A missing, invalid or tampered cacerts is
    /// re-issued; the trust bundle (root-cert.pem) is kept byte-for-byte when it contains the
    /// root. A cluster that trusts another root is refused: moving it needs a trust transition.
    /// Everything replaced is first copied to <state_dir>/backups/<cluster>/<time>/.
    #[command(verbatim_doc_comment)]
    Issue(IssueArgs),

    /// Show what `issue` would do, changing nothing.
    Plan(PlanArgs),

    /// Per cluster: intermediate serial, validity, days left, renewal time, trust bundle.
    Status(StatusArgs),

    /// Validate a cacerts directory the way istiod does (and stricter).
    ///
    /// Reads ca-cert.pem, ca-key.pem, root-cert.pem and cert-chain.pem (or the cert-manager
    /// form tls.crt, tls.key, ca.crt) and checks: all present; the key parses, is a supported
    /// algorithm and matches ca-cert.pem; ca-cert.pem is a CA allowed to sign; it chains to a
    /// root in root-cert.pem through cert-chain.pem with valid signatures, dates, CA flags,
    /// path lengths and key usages. Needs no config file.
    #[command(verbatim_doc_comment)]
    Verify(VerifyArgs),

    /// Restart Istio in a primary's mesh: istiod, then gateways, then workloads.
    ///
    /// Works like `kubectl rollout restart` followed by `kubectl rollout status`, in the order
    /// Istio needs: istiod of the primary first; then the gateways of the primary and of every
    /// remote it serves; then every Deployment, DaemonSet and StatefulSet in namespaces with
    /// sidecar injection (istio-injection=enabled or an istio.io/rev label). Each stage waits
    /// for its rollouts before the next starts; a stage that does not finish within
    /// [kubernetes] rollout_timeout stops the run. Paused Deployments are refused.
    #[command(verbatim_doc_comment)]
    Restart(RestartArgs),

    /// Run as a daemon: reconcile every primary on a schedule, serve metrics and health.
    ///
    /// Every [daemon] interval (with jitter), and sooner when an intermediate's renewal falls
    /// due, each primary is reconciled exactly as `issue` would: renewed when due, re-issued
    /// when missing, invalid or tampered, left alone otherwise. A failing cluster is retried
    /// with backoff (10 s doubling up to [daemon] backoff_max) without holding up the others.
    /// Serves /metrics (Prometheus), /healthz, /readyz and /status on [daemon] listen; appends
    /// every issuance, refusal and failure to [daemon] audit_log. Only the holder of the lock
    /// on state_dir acts; a second process on the same machine stands by and takes over when
    /// the first stops. SIGTERM or Ctrl-C: the current pass finishes, the lock is released.
    #[command(verbatim_doc_comment)]
    Serve {
        /// Listen on this address (host:port) instead of [daemon] listen.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },

    /// Move clusters from istiod's self-signed CA (or an unrelated root) onto the common root.
    ///
    /// A trust transition in three phases, each gated on every cluster of the topology:
    ///   AddNewRoot     every primary keeps its signer (copied verbatim from istio-ca-secret
    ///                  when istiod is self-signed) and trusts its current roots + the common
    ///                  root, appended after the current bundle's bytes;
    ///   SwitchSigner   every primary signs with its intermediate under the common root,
    ///                  still trusting both;
    ///   RemoveOldRoot  after the drain period, only the common root is trusted.
    /// After each cluster's write, istiod restarts, then the gateways, then the workloads of
    /// every injected namespace of the primary and its remotes. No cluster signs with the new
    /// CA before every cluster trusts it, so no mTLS connection breaks.
    /// Primaries with a directory target are not restarted by cacertd; after each step's
    /// writes the transition waits until their clusters serve it (read through the target's
    /// `observe` kubeconfig) or an operator confirms the folders applied with
    /// `transition resume --approve`.
    /// Where the primaries on the common root serve revocation lists (after a `revoke`),
    /// they join only to serve a list from each migrating cluster's new intermediate from the
    /// first step (no restart there); the migrating clusters get the lists at RemoveOldRoot.
    /// `start` records the transition and drives it as far as it can without waiting;
    /// `transition resume` continues it (`--wait`: through gates and the drain period).
    #[command(subcommand, verbatim_doc_comment)]
    Migrate(MigrateCommand),

    /// Replace the common root with a new one, in the same three phases as `migrate`. Where
    /// the primaries serve revocation lists, the new root's and new intermediates' lists are
    /// served from the first step, both roots' while both are trusted, the new ones' alone at
    /// the end.
    #[command(subcommand)]
    RotateRoot(RotateRootCommand),

    /// The trust transition under way: status, resume, rollback, abort.
    #[command(subcommand)]
    Transition(TransitionCommand),

    /// Revoke a primary's intermediate (its key leaked, or may have) and replace it, without
    /// breaking any mTLS connection.
    ///
    /// A transition of its own, with gates, restarts, a crash-resumable record, `transition
    /// status|resume|rollback`, and Istio 1.27+ everywhere (istiod reads ca-crl.pem, with
    /// PILOT_ENABLE_CA_CRL, on by default):
    ///   AddNewRoot     every primary gets ca-crl.pem: a list from every intermediate in use,
    ///                  the successor's included, and from the mesh CA and every CA above it.
    ///                  A proxy that checks lists rejects a chain through a CA without one, so
    ///                  this precedes the successor's first signature;
    ///   SwitchSigner   CLUSTER signs with the successor; its istiod, gateways and workloads
    ///                  (and its remotes') restart; the gate waits until no proxy there
    ///                  started before, as one may present a certificate from the revoked CA;
    ///   RemoveOldRoot  every primary gets the lists in which the mesh CA names the revoked
    ///                  intermediate; where a primary had no lists before, its gateways and
    ///                  workloads restart so that their proxies check them.
    /// Each step waits for istiod to publish the lists (ConfigMap istio-ca-crl) and for
    /// kubelet to update them in the pods. Trust bundles do not change. With the vault-pki
    /// store, Vault revokes the intermediate and signs the mesh CA's list.
    #[command(verbatim_doc_comment)]
    Revoke(RevokeArgs),

    /// Renew a primary's intermediate where the clusters serve revocation lists (after a
    /// `revoke`), without breaking any mTLS connection. `issue` refuses there, since a proxy
    /// that checks lists rejects a chain through a CA without one; `serve` starts this by
    /// itself when the intermediate is due.
    ///
    /// A transition of its own, like `revoke` without the revocation and the restarts:
    ///   AddNewRoot     every primary gets ca-crl.pem with a list from the successor too;
    ///                  the gate waits for istiod to publish it (ConfigMap istio-ca-crl) and
    ///                  for kubelet to update it in the pods;
    ///   SwitchSigner   CLUSTER signs with the successor (istiod takes it without a restart);
    ///                  then it is done: nothing is revoked, and the predecessor's list stays
    ///                  while what it signed lives.
    #[command(verbatim_doc_comment)]
    Renew(RenewArgs),

    /// The revocation lists every primary serves (ca-crl.pem).
    #[command(subcommand)]
    Crl(CrlCommand),

    /// Check the configuration and policies, and print the topology. With --connect, also
    /// reach every cluster and ask it whether cacertd may do each thing it will need
    /// (SelfSubjectAccessReview), and check that every folder target is writable.
    Check {
        /// Reach every cluster and check every permission; exit 1 naming what is missing.
        #[arg(long)]
        connect: bool,

        #[command(flatten)]
        output: OutputArgs,
    },

    /// Print cacertd's version, the commit it was built from, the Rust compiler that built
    /// it and its TLS crypto provider.
    Version(OutputArgs),

    /// Print a shell completion script (bash, zsh or fish) to stdout, e.g.
    /// `cacertd completion bash > /etc/bash_completion.d/cacertd`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, ClapArgs)]
pub struct StatusArgs {
    /// Clusters to show (default: every cluster).
    #[arg(value_name = "CLUSTER")]
    pub clusters: Vec<String>,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, ClapArgs)]
pub struct RestartArgs {
    /// Primary clusters whose meshes to restart (required; remotes follow their primary).
    #[arg(value_name = "PRIMARY", required = true)]
    pub clusters: Vec<String>,

    /// Restart only these stages (default: all three, in order).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<StageArg>,

    /// Do not wait for rollouts to finish between stages.
    #[arg(long)]
    pub no_wait: bool,

    /// List what each stage would restart, in order, and restart nothing.
    #[arg(long, conflicts_with = "no_wait")]
    pub dry_run: bool,

    /// Label selector of the gateways to restart.
    #[arg(long, default_value = crate::rollout::DEFAULT_GATEWAY_SELECTOR)]
    pub gateway_selector: String,

    /// Leave the workloads of this namespace alone (repeatable); istiod and gateways are
    /// still restarted. Trust transitions take theirs from [transition] exclude_namespaces.
    #[arg(long, value_name = "NAMESPACE")]
    pub exclude_namespace: Vec<String>,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StageArg {
    Istiod,
    Gateways,
    Workloads,
}

#[derive(Debug, Subcommand)]
pub enum RootCommand {
    /// Generate a new root in the configured store, per the config's policy. Refuses if a root
    /// already exists.
    Init {
        /// Instead of a root: make the mesh CA's key and write a certificate signing request
        /// to FILE, for the company's CA to sign offline. The key stays where it was made:
        /// <state_dir>/root-request/ (0600; file and vault-kv stores) or inside Vault
        /// (vault-pki, intermediate/generate/internal). Then `root import --cert signed.pem
        /// --chain chain.pem`, without --key, stores it with its certificate. With a root in
        /// the store (file, vault-kv), the request is for a new mesh CA under the same anchor:
        /// import it with --replace.
        #[arg(long, value_name = "FILE")]
        csr: Option<PathBuf>,

        /// Print the root that would be made (key algorithm, subject, lifetime, store) and
        /// make nothing.
        #[arg(long, conflicts_with = "csr")]
        dry_run: bool,
    },
    /// Import an existing root certificate and key (PEM; PKCS#8, PKCS#1 RSA or SEC1 EC key),
    /// or a mesh CA below the company's root with --chain. Refuses if a root already exists
    /// (unless --replace), or if the CA is unusable for istiod.
    Import {
        /// Root certificate, or the mesh CA's (PEM).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Its private key (PEM, unencrypted). Without it: the key made by `root init --csr`
        /// (kept in <state_dir>/root-request/, or inside Vault for vault-pki).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// For a mesh CA that is an intermediate of another root (the company's, kept
        /// offline): the certificates above it, up to and including that self-signed root,
        /// which becomes every cluster's trust anchor. Each cluster's cert-chain.pem then
        /// carries the whole chain.
        #[arg(long, value_name = "FILE")]
        chain: Option<PathBuf>,
        /// Replace the CA that signs intermediates (the mesh CA) with this one, under the same
        /// anchor. No cluster's trust changes, so no phased transition is needed: `issue` (or
        /// the daemon) then re-issues every cluster's intermediate under it. The previous one
        /// is kept (the old folder moved aside, or the previous KV version: vault-kv needs
        /// `update` on the root's path, as deploy/vault/cacertd-kv-rotate.hcl grants). A
        /// different anchor is refused: that is `rotate-root`. vault-pki: make the new CA the
        /// mount's default issuer in Vault instead; cacertd re-issues under it the same way.
        #[arg(long)]
        replace: bool,
    },
    /// Show the root certificate held in the store.
    Show(OutputArgs),
}

#[derive(Debug, ClapArgs)]
pub struct IssueArgs {
    /// Clusters to issue for (default: every primary).
    #[arg(value_name = "CLUSTER")]
    pub clusters: Vec<String>,

    /// Re-issue even intermediates that are valid and not yet due for renewal.
    #[arg(long)]
    pub force: bool,

    /// Create the root first if the store holds none (never replaces an existing root).
    #[arg(long)]
    pub init_root: bool,

    /// Show what would be done without signing or writing anything.
    #[arg(long)]
    pub dry_run: bool,

    /// DANGER: replace a trust bundle that does not contain the current root. Workloads still
    /// on the old CA lose mTLS with this cluster until they restart. Prefer a trust transition.
    #[arg(long)]
    pub danger_replace_trust_bundle: bool,

    /// Carry forward, into the re-issued set, roots a cluster's bundle trusts that are neither
    /// the current root nor in extra_trusted_roots (refused without it: every workload there
    /// would go on trusting an anchor nobody configured).
    #[arg(long)]
    pub keep_unknown_roots: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, ClapArgs)]
pub struct PlanArgs {
    /// Clusters to plan for (default: every primary).
    #[arg(value_name = "CLUSTER")]
    pub clusters: Vec<String>,

    /// Plan as if --force were given.
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, ClapArgs)]
pub struct VerifyArgs {
    /// Directory holding the cacerts files.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// Judge validity at this instant instead of now: a date (2027-01-01, midnight UTC) or an
    /// RFC 3339 time (2027-01-01T12:00:00Z). "Will this still be accepted then?"
    #[arg(long, value_name = "DATE|TIME")]
    pub at: Option<String>,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Copy, ClapArgs)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

impl Format {
    /// JSON or YAML: the same document, for machines.
    pub fn structured(self) -> bool {
        self != Format::Table
    }
}
