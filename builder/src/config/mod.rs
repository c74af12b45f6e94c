//! The configuration model: load, merge and validate hostgroups and layers.
//!
//! [`load`] reads a configuration tree (the format is docs/config.md), [`Config::resolve`]
//! merges one hostgroup into a [`Resolved`] ready to become a bundle, and
//! [`Config::validate_all`] checks everything. Problems are [`Diagnostics`], each
//! `file:line:column: reason`, all of them at once.

mod accounts;
pub(crate) mod check;
mod diag;
mod dynamic;
mod items;
mod load;
mod merge;
mod model;
mod render;
mod resolve;
pub mod schema;
mod secrets;
pub mod template;
pub mod yaml;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub use accounts::{BASE_GROUPS, BASE_USERS};
pub use diag::{Diagnostic, Diagnostics, Span};
pub use dynamic::manifest_read;
pub use load::{load, Config};
pub use model::*;
pub use resolve::UNIT_DIR;

impl Config {
    /// The configuration root (absolute, symlinks resolved).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every hostgroup, sorted, without `default`.
    pub fn hostgroup_names(&self) -> Vec<String> {
        self.hostgroups.keys().cloned().collect()
    }

    /// Every layer, sorted.
    pub fn layer_names(&self) -> Vec<String> {
        self.layers.keys().cloned().collect()
    }

    fn unknown_hostgroup(&self, hostgroup: &str) -> Diagnostics {
        let span = Span::file_start(std::sync::Arc::from(Path::new(&format!(
            "hostgroups/{hostgroup}.yaml"
        ))));
        let known = self.hostgroup_names();
        let message = if hostgroup == "default" {
            "default is not a hostgroup: hostgroups/default.yaml applies to every hostgroup"
                .to_string()
        } else if known.is_empty() {
            format!("unknown hostgroup {hostgroup:?} (there are none)")
        } else {
            format!(
                "unknown hostgroup {hostgroup:?}{} (known: {})",
                check::did_you_mean(hostgroup, known.iter().map(String::as_str)),
                known.join(", ")
            )
        };
        Diagnostics(vec![Diagnostic::new(span, message)])
    }

    /// Merge and check one hostgroup. The problems include those of every file it uses.
    pub fn resolve(&self, hostgroup: &str) -> Result<Resolved, Diagnostics> {
        let Some(doc) = self.hostgroups.get(hostgroup) else {
            return Err(self.unknown_hostgroup(hostgroup));
        };
        let out = self.run(hostgroup, Some(doc), None);
        match out.resolved {
            Some(r) if out.diags.is_empty() => Ok(r),
            _ => Err(Diagnostics::new(out.diags)),
        }
    }

    /// Check everything: every file, every hostgroup, and every layer even if no hostgroup
    /// uses it (expanded with its defaults when it has a default for every parameter).
    /// Empty when the configuration is valid.
    pub fn validate_all(&self) -> Diagnostics {
        let mut all = self.diags.clone();
        let mut used = BTreeSet::new();
        for (name, doc) in &self.hostgroups {
            let out = self.run(name, Some(doc), None);
            all.extend(out.diags);
            used.extend(out.applied);
        }
        if self.hostgroups.is_empty() {
            let out = self.run("default", None, None);
            all.extend(out.diags);
            used.extend(out.applied);
        }
        // A layer no hostgroup uses is resolved on top of default.yaml alone; only what it is
        // to blame for (problems in its own files) counts, as default.yaml may rely on things
        // every hostgroup adds.
        let unused: BTreeSet<&String> = self.layers.keys().filter(|n| !used.contains(*n)).collect();
        for name in &unused {
            let out = self.run("default", None, Some(name));
            all.extend(out.diags.into_iter().filter(|d| {
                resolve::layer_of(&d.span).is_some_and(|l| unused.contains(&l.to_string()))
            }));
        }
        Diagnostics::new(all)
    }

    /// Warnings of every hostgroup that resolves (a literal secret in a static file), sorted,
    /// each once. `kiln validate` prints them and still succeeds.
    pub fn warnings_all(&self) -> Diagnostics {
        let mut all = Vec::new();
        for (name, doc) in &self.hostgroups {
            if let Some(r) = self.run(name, Some(doc), None).resolved {
                all.extend(r.warnings);
            }
        }
        Diagnostics::new(all)
    }

    /// Every file a hostgroup's result depends on (its YAML files, the layers it uses, `from:`
    /// files and templates, and where their symlinks lead), absolute and sorted: a cache key.
    pub fn hostgroup_inputs(&self, hostgroup: &str) -> Vec<PathBuf> {
        match self.hostgroups.get(hostgroup) {
            Some(doc) => self
                .run(hostgroup, Some(doc), None)
                .inputs
                .into_iter()
                .collect(),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
