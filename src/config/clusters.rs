//! `[[clusters]]`: names, roles, targets and policies, and what refers to what.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::raw::*;
use super::sections::Sections;
use super::*;
use crate::topology::RemotePin;

impl Sections<'_> {
    /// `[[clusters]]`: names, roles, targets and policies, then what refers to what.
    /// `apart` names the places no directory target may overlap (`state_dir`, the root
    /// store's folder, the audit log).
    pub(super) fn clusters(
        &self,
        raw: &[RawCluster],
        policies: &PolicySet,
        default_policy: &str,
        apart: &[Apart],
    ) -> Result<Vec<Cluster>, ConfigError> {
        let apart: Vec<(PathBuf, &Apart)> = apart.iter().map(|a| (resolved(&a.path), a)).collect();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut dir_targets = DirTargets::default();
        let mut clusters = Vec::new();
        for (i, rc) in raw.iter().enumerate() {
            let cluster = self.cluster(
                i,
                rc,
                (policies, default_policy),
                &apart,
                (&mut seen, &mut dir_targets),
            )?;
            clusters.push(cluster);
        }
        self.check_references(raw, &clusters)?;
        Ok(clusters)
    }

    /// One `[[clusters]]` entry; `seen` holds the names so far and `dir_targets` the
    /// directories already written to.
    fn cluster(
        &self,
        i: usize,
        rc: &RawCluster,
        (policies, default_policy): (&PolicySet, &str),
        apart: &[(PathBuf, &Apart)],
        (seen, dir_targets): (&mut HashMap<String, usize>, &mut DirTargets),
    ) -> Result<Cluster, ConfigError> {
        let field = |f: &str| format!("clusters[{i}].{f}");
        let name = rc.name.get_ref().clone();
        if !valid_cluster_name(&name) {
            return Err(self.invalid(
                rc.name.span(),
                field("name"),
                format!(
                    "{name:?} is not a valid cluster name (letters, digits, '-', '_' and '.', starting with a letter or digit, at most 63 characters)"
                ),
            ));
        }
        if let Some(first) = seen.insert(name.clone(), i) {
            return Err(self.invalid(
                rc.name.span(),
                field("name"),
                format!("duplicate cluster name {name:?} (already used by clusters[{first}])"),
            ));
        }
        let role = match rc.role.get_ref() {
            RawRole::Primary => Role::Primary,
            RawRole::Remote => Role::Remote,
        };
        let target = self.cluster_target(i, rc)?;
        self.check_role(i, rc, role, &name, target.is_some())?;
        if let (Some(TargetConfig::Dir { path, .. }), Some(t)) = (&target, &rc.target) {
            let key = self.dir_target_key(i, t.span(), &name, path, apart, dir_targets)?;
            dir_targets.insert(&key, &name);
        }
        let policy = match &rc.policy {
            Some(p) => {
                policies
                    .get(p.get_ref())
                    .map_err(|e| self.invalid(p.span(), field("policy"), e.to_string()))?;
                p.get_ref().clone()
            }
            None => default_policy.to_string(),
        };
        Ok(Cluster {
            name,
            role,
            network: rc.network.clone(),
            primary: rc.primary.as_ref().map(|p| p.get_ref().clone()),
            target,
            policy,
        })
    }

    /// Where a cluster's `cacerts` goes: a directory, a kubeconfig (and context), or the
    /// kubeconfig of an Istio remote secret.
    fn cluster_target(
        &self,
        i: usize,
        rc: &RawCluster,
    ) -> Result<Option<TargetConfig>, ConfigError> {
        let field = |f: &str| format!("clusters[{i}].{f}");
        let Some(t) = &rc.target else {
            return Ok(None);
        };
        let refuse = |what: &str| Err(self.invalid(t.span(), field("target"), what.into()));
        let target = match t.get_ref() {
            RawTarget::Dir {
                path,
                observe,
                observe_context,
            } => {
                if observe.is_none() && observe_context.is_some() {
                    return refuse("observe_context needs observe (the kubeconfig it names)");
                }
                TargetConfig::Dir {
                    path: self.resolve(path),
                    observe: observe.as_deref().map(|k| crate::topology::Observe {
                        kubeconfig: self.resolve(k),
                        context: observe_context.clone(),
                    }),
                }
            }
            RawTarget::Kube {
                kubeconfig,
                context,
                remote_secret_from: Some(source),
                server,
                ca_file,
            } => {
                if kubeconfig.is_some() || context.is_some() {
                    return refuse(
                        "remote_secret_from takes the kubeconfig from Istio's remote secret; \
                         do not also give kubeconfig or context",
                    );
                }
                if server
                    .as_deref()
                    .is_some_and(|s| !s.starts_with("https://"))
                {
                    return refuse("server must be an https:// URL");
                }
                TargetConfig::KubeRemoteSecret {
                    source: source.clone(),
                    pin: RemotePin {
                        server: server.clone(),
                        ca_file: ca_file.as_deref().map(|p| self.resolve(p)),
                    },
                }
            }
            RawTarget::Kube {
                kubeconfig,
                context,
                server,
                ca_file,
                ..
            } => {
                if server.is_some() || ca_file.is_some() {
                    return refuse(
                        "server and ca_file pin what a remote secret's kubeconfig says; with a \
                         local kubeconfig, put them in that file",
                    );
                }
                TargetConfig::Kube {
                    kubeconfig: kubeconfig.as_deref().map(|p| self.resolve(p)),
                    context: context.clone(),
                }
            }
        };
        Ok(Some(target))
    }

    /// A primary has a target and names no primary; a remote names its primary.
    fn check_role(
        &self,
        i: usize,
        rc: &RawCluster,
        role: Role,
        name: &str,
        has_target: bool,
    ) -> Result<(), ConfigError> {
        let field = |f: &str| format!("clusters[{i}].{f}");
        match role {
            Role::Primary => {
                if let Some(p) = &rc.primary {
                    return Err(self.invalid(
                        p.span(),
                        field("primary"),
                        format!("{name} is a primary; only remote clusters name a primary"),
                    ));
                }
                if !has_target {
                    return Err(self.invalid(
                        rc.name.span(),
                        field("target"),
                        format!(
                            "primary {name} needs a target, e.g. target = {{ kind = \"dir\", path = \"out/{name}\" }}"
                        ),
                    ));
                }
            }
            Role::Remote => {
                if rc.primary.is_none() {
                    return Err(self.invalid(
                        rc.name.span(),
                        field("primary"),
                        format!(
                            "remote {name} must name the primary cluster whose istiod serves it"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A directory target, in the form it is compared in (symlinks resolved as far as the
    /// path exists, then in normal form): it must live apart from `apart` and from every other
    /// cluster's.
    fn dir_target_key(
        &self,
        i: usize,
        span: std::ops::Range<usize>,
        name: &str,
        path: &Path,
        apart: &[(PathBuf, &Apart)],
        dir_targets: &mut DirTargets,
    ) -> Result<PathBuf, ConfigError> {
        let field = |f: &str| format!("clusters[{i}].{f}");
        let key = dir_targets.resolve(path);
        if let Some((_, place)) = apart.iter().find(|(p, _)| overlaps(&key, p)) {
            let through = if key != normalize(path) {
                format!(" (it resolves to {})", key.display())
            } else {
                String::new()
            };
            return Err(self.invalid(
                span,
                field("target.path"),
                format!(
                    "{}{through} overlaps {} {}; cacerts and {} must live apart",
                    path.display(),
                    place.what,
                    place.path.display(),
                    place.why
                ),
            ));
        }
        if let Some(other) = dir_targets.nested(&key) {
            return Err(self.invalid(
                span,
                field("target.path"),
                format!("{name} and {other} write to the same or nested directories"),
            ));
        }
        Ok(key)
    }

    /// What clusters refer to: remote-secret sources and the primaries of remotes must be
    /// clusters of this file of the right kind.
    fn check_references(
        &self,
        raw: &[RawCluster],
        clusters: &[Cluster],
    ) -> Result<(), ConfigError> {
        // Remote-secret targets must name a cluster reached directly with a kubeconfig.
        for (i, rc) in raw.iter().enumerate() {
            let Some(t) = &rc.target else { continue };
            let RawTarget::Kube {
                remote_secret_from: Some(source),
                ..
            } = t.get_ref()
            else {
                continue;
            };
            let ok = clusters
                .iter()
                .find(|c| c.name == *source)
                .is_some_and(|c| matches!(c.target, Some(TargetConfig::Kube { .. })));
            if !ok || source == rc.name.get_ref() {
                return Err(self.invalid(
                    t.span(),
                    format!("clusters[{i}].target.remote_secret_from"),
                    format!(
                        "{source:?} must be another cluster of this file with a kube target given by kubeconfig/context"
                    ),
                ));
            }
        }
        // Second pass: remotes must point at a primary defined in this file.
        for (i, rc) in raw.iter().enumerate() {
            let Some(p) = &rc.primary else { continue };
            let target = clusters.iter().find(|c| c.name == *p.get_ref());
            let problem = match target {
                None => Some("is not defined in this file"),
                Some(c) if c.role != Role::Primary => Some("is not a primary"),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                return Err(self.invalid(
                    p.span(),
                    format!("clusters[{i}].primary"),
                    format!(
                        "remote {} names primary {:?}, which {problem}",
                        rc.name.get_ref(),
                        p.get_ref()
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Lexical normal form (`a/./b/../c` → `a/c`), for comparing configured folders.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// A place no directory target may overlap, and why.
pub(super) struct Apart {
    pub what: &'static str,
    pub path: PathBuf,
    pub why: &'static str,
}

/// `p` with symlinks resolved as far as it exists (what is not created yet kept as written),
/// in normal form: a target reached through a symlink into `state_dir` is inside `state_dir`.
fn resolved(p: &Path) -> PathBuf {
    let p = normalize(p);
    let mut existing = p.as_path();
    let mut rest = Vec::new();
    loop {
        let here = if existing.as_os_str().is_empty() {
            Path::new(".")
        } else {
            existing
        };
        if let Ok(real) = std::fs::canonicalize(here) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return normalize(&out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return p,
        }
    }
}

/// Whether one folder is the other or inside it.
fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The directory targets of the clusters read so far, to find two that nest, checked in
/// O(n log n) for a large mesh, not O(n²).
#[derive(Default)]
struct DirTargets {
    /// Each folder's resolved path as bytes with a `/` after it, to the cluster writing
    /// there: in byte order, the folders inside one follow it, and it is a prefix of them.
    by_path: BTreeMap<Vec<u8>, String>,
    /// Parent folders already resolved: the targets of a mesh share a few.
    parents: HashMap<PathBuf, PathBuf>,
}

impl DirTargets {
    /// [`resolved`], with each parent folder resolved once.
    fn resolve(&mut self, path: &Path) -> PathBuf {
        let path = normalize(path);
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return resolved(&path);
        };
        // A symlink is resolved whole, whatever its parent resolved to.
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return resolved(&path);
        }
        let parent = self
            .parents
            .entry(parent.to_path_buf())
            .or_insert_with(|| resolved(parent));
        normalize(&parent.join(name))
    }

    fn key(path: &Path) -> Vec<u8> {
        let mut key = path.as_os_str().as_bytes().to_vec();
        key.push(b'/');
        key
    }

    fn insert(&mut self, path: &Path, cluster: &str) {
        self.by_path.insert(Self::key(path), cluster.to_string());
    }

    /// The cluster whose folder is `path`, contains it or lies inside it, if any.
    fn nested(&self, path: &Path) -> Option<&String> {
        let containing = path
            .ancestors()
            .find_map(|a| self.by_path.get(&Self::key(a)));
        let key = Self::key(path);
        containing.or_else(|| {
            self.by_path
                .range(key.clone()..)
                .next()
                .filter(|(p, _)| p.starts_with(&key))
                .map(|(_, name)| name)
        })
    }
}
