//! The policies a configuration may name: the built-in copies of `policies/`, or every
//! `*.toml` of `policies_dir`.

use std::collections::BTreeMap;
use std::path::Path;

use super::{EMBEDDED, Policy, PolicyError};

/// All policies available to a configuration.
#[derive(Clone, Debug)]
pub struct PolicySet {
    policies: BTreeMap<String, Policy>,
    source_desc: String,
}

impl PolicySet {
    /// The policies compiled into cacertd (copies of `policies/`).
    pub fn embedded() -> Result<Self, PolicyError> {
        let mut policies = BTreeMap::new();
        for (name, text) in EMBEDDED {
            let file = format!("(built-in) policies/{name}.toml");
            policies.insert(name.to_string(), Policy::parse(name, text, &file)?);
        }
        Ok(PolicySet {
            policies,
            source_desc: "the built-in policies".to_string(),
        })
    }

    /// Every `*.toml` in `dir`; the policy's name is the file stem.
    pub fn load_dir(dir: &Path) -> Result<Self, PolicyError> {
        let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut policies = BTreeMap::new();
        for entry in entries {
            let path = entry
                .map_err(|source| PolicyError::ReadDir {
                    dir: dir.to_path_buf(),
                    source,
                })?
                .path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read {
                file: path.clone(),
                source,
            })?;
            let policy = Policy::parse(name, &text, &path.display().to_string())?;
            policies.insert(name.to_string(), policy);
        }
        Ok(PolicySet {
            policies,
            source_desc: dir.display().to_string(),
        })
    }

    pub fn get(&self, name: &str) -> Result<&Policy, PolicyError> {
        self.policies
            .get(name)
            .ok_or_else(|| PolicyError::NotFound {
                name: name.to_string(),
                source_desc: self.source_desc.clone(),
                available: if self.policies.is_empty() {
                    "none".to_string()
                } else {
                    self.policies.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }
}
