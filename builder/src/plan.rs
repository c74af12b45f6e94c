//! Turn a resolved hostgroup into a bundle plan: the manifest and where each blob's bytes are.
//! Blobs are content addressed: a file used by several paths is stored once.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use kiln_signing::manifest as m;

use crate::config::{FileSource, Resolved};

/// Where a blob's bytes come from when the bundle is written.
#[derive(Debug, Clone)]
pub enum BlobSource {
    Bytes(std::sync::Arc<[u8]>),
    Path(PathBuf),
}

impl BlobSource {
    /// Stream the blob's bytes into `out`.
    pub fn copy_to(&self, out: &mut dyn io::Write) -> io::Result<u64> {
        match self {
            BlobSource::Bytes(b) => {
                out.write_all(b)?;
                Ok(b.len() as u64)
            }
            BlobSource::Path(p) => {
                let mut f = File::open(p)?;
                io::copy(&mut f, out)
            }
        }
    }
}

/// Inputs of a build that are not part of the configuration.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    pub version: u64,
    pub created: SystemTime,
    pub expires_after: Duration,
    pub source_commit: Option<String>,
}

impl BuildInfo {
    /// The creation time: SOURCE_DATE_EPOCH when set (reproducible builds), else now.
    pub fn created_from_env() -> Result<SystemTime> {
        match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(s) => {
                let secs: u64 = s.trim().parse().with_context(|| {
                    format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds")
                })?;
                Ok(UNIX_EPOCH + Duration::from_secs(secs))
            }
            Err(_) => {
                // Whole seconds: the manifest records RFC 3339 to the second.
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                Ok(UNIX_EPOCH + Duration::from_secs(now.as_secs()))
            }
        }
    }
}

/// A manifest ready to sign and the blob sources it refers to, by digest.
pub struct Plan {
    pub manifest: m::Manifest,
    pub blobs: BTreeMap<String, BlobSource>,
}

fn mode_string(mode: u32) -> String {
    format!("{mode:04o}")
}

/// Collects blobs by digest.
#[derive(Default)]
struct Blobs {
    map: BTreeMap<String, (BlobSource, u64)>,
}

impl Blobs {
    fn add_bytes(&mut self, bytes: &[u8]) -> (String, u64) {
        let digest = kiln_signing::sha256_hex(bytes);
        let size = bytes.len() as u64;
        self.map
            .entry(digest.clone())
            .or_insert_with(|| (BlobSource::Bytes(bytes.into()), size));
        (digest, size)
    }

    /// A file whose digest and size are already known (checked again when it is written).
    fn add_known(&mut self, digest: &str, size: u64, path: &std::path::Path) {
        self.map
            .entry(digest.to_string())
            .or_insert_with(|| (BlobSource::Path(path.to_path_buf()), size));
    }

    fn add_path(&mut self, path: &std::path::Path) -> Result<(String, u64)> {
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let (digest, size) = kiln_signing::sha256_reader(f)
            .with_context(|| format!("reading {}", path.display()))?;
        self.map
            .entry(digest.clone())
            .or_insert_with(|| (BlobSource::Path(path.to_path_buf()), size));
        Ok((digest, size))
    }
}

/// Packages resolved against a real base: the debs to carry and what the base is.
#[derive(Debug, Clone)]
pub struct PackageSet {
    /// Every deb the hostgroup needs on top of the base (dependencies included), sorted by
    /// name; those already in the base at that version are not in it.
    pub debs: Vec<crate::packages::Deb>,
    /// Each deb's file, by sha256.
    pub paths: BTreeMap<String, PathBuf>,
    /// sha256 of the base's installed package set (`name version arch` lines, sorted).
    pub packages_digest: String,
}

/// Build the manifest for a resolved hostgroup, its packages listed by name and pin only.
pub fn plan(resolved: &Resolved, info: &BuildInfo) -> Result<Plan> {
    plan_with_packages(resolved, info, None)
}

/// Build the manifest for a resolved hostgroup; with a [`PackageSet`], its packages are the
/// resolved debs, each a blob, and the base's package digest is recorded.
pub fn plan_with_packages(
    resolved: &Resolved,
    info: &BuildInfo,
    package_set: Option<&PackageSet>,
) -> Result<Plan> {
    let mut blobs = Blobs::default();
    let mut entries = Vec::new();
    let mut templates = Vec::new();

    for (path, file) in &resolved.files {
        let f = &file.value;
        let kind = match &f.source {
            FileSource::Bytes(bytes) => {
                let (digest, size) = blobs.add_bytes(bytes);
                file_entry(f, digest, size)
            }
            FileSource::Path(p) => {
                let (digest, size) = blobs.add_path(p)?;
                file_entry(f, digest, size)
            }
            FileSource::Symlink(target) => m::EntryKind::Symlink {
                target: target.clone(),
            },
            FileSource::Absent => m::EntryKind::Absent,
            FileSource::Dynamic { template } => {
                let (digest, _) = blobs.add_bytes(template.as_bytes());
                let (consul, vault) = template_reads(resolved, path);
                let vars = template_vars(resolved, path);
                templates.push(m::Template {
                    path: path.clone(),
                    digest,
                    mode: mode_string(f.mode),
                    owner: f.owner.clone(),
                    group: f.group.clone(),
                    consul,
                    vault,
                    vars,
                    restart: f.restart.clone(),
                    reload: f.reload.clone(),
                });
                continue;
            }
        };
        entries.push(m::Entry {
            path: path.clone(),
            kind,
        });
    }
    for (path, dir) in &resolved.directories {
        let d = &dir.value;
        let kind = if d.absent {
            m::EntryKind::Absent
        } else {
            m::EntryKind::Directory {
                mode: mode_string(d.mode),
                owner: d.owner.clone(),
                group: d.group.clone(),
            }
        };
        entries.push(m::Entry {
            path: path.clone(),
            kind,
        });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));

    let groups = resolved
        .groups
        .iter()
        .map(|(name, g)| m::Group {
            name: name.clone(),
            gid: g.value.gid,
            system: g.value.system,
        })
        .collect();
    let users = resolved
        .users
        .iter()
        .map(|(name, u)| {
            let u = &u.value;
            let mut groups = u.groups.clone();
            groups.sort();
            groups.dedup();
            m::User {
                name: name.clone(),
                uid: u.uid,
                group: u.group.clone(),
                groups,
                home: u.home.clone(),
                shell: u.shell.clone(),
                comment: u.comment.clone(),
                system: u.system,
                create_home: u.create_home,
                authorized_keys: u.authorized_keys.clone(),
            }
        })
        .collect();
    let packages = match package_set {
        None => resolved
            .packages
            .iter()
            .map(|(name, p)| m::Package {
                name: name.clone(),
                version: p.value.version.clone(),
                arch: None,
                digest: None,
                size: None,
            })
            .collect(),
        Some(set) => {
            let mut out = Vec::new();
            for d in &set.debs {
                let path = set
                    .paths
                    .get(&d.sha256)
                    .with_context(|| format!("no file for package {} {}", d.name, d.version))?;
                blobs.add_known(&d.sha256, d.size, path);
                out.push(m::Package {
                    name: d.name.clone(),
                    version: Some(d.version.clone()),
                    arch: Some(d.arch.clone()),
                    digest: Some(d.sha256.clone()),
                    size: Some(d.size),
                });
            }
            out.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
            out
        }
    };
    let services = resolved
        .services
        .iter()
        .map(|(name, s)| m::Service {
            name: name.clone(),
            state: match s.value.state {
                crate::config::ServiceState::Running => m::ServiceState::Running,
                crate::config::ServiceState::Dead => m::ServiceState::Dead,
            },
            enabled: s.value.enabled,
        })
        .collect();
    let commands = resolved
        .commands
        .iter()
        .map(|c| m::Command {
            name: c.value.name.clone(),
            argv: c.value.argv.clone(),
            timeout_secs: c.value.timeout.as_secs(),
            creates: c.value.creates.clone(),
        })
        .collect();

    let base = &resolved.base;
    let manifest = m::Manifest {
        format: m::FORMAT_VERSION,
        hostgroup: resolved.hostgroup.clone(),
        version: info.version,
        created: humantime::format_rfc3339_seconds(info.created).to_string(),
        expires: humantime::format_rfc3339_seconds(info.created + info.expires_after).to_string(),
        source_commit: info.source_commit.clone(),
        builder: format!("kiln {}", env!("CARGO_PKG_VERSION")),
        base: m::Base {
            name: base.name.clone(),
            id: base.os_id.clone(),
            version_id: base.version_id.clone(),
            arch: base.arch.clone(),
            packages_digest: package_set.map(|p| p.packages_digest.clone()),
        },
        entries,
        groups,
        users,
        packages,
        system_accounts: resolved.system_accounts.iter().cloned().collect(),
        services,
        commands,
        templates,
        checks: resolved
            .checks
            .values()
            .map(|c| m::Check {
                name: c.value.name.clone(),
                probe: c.value.probe.clone(),
                deadline_secs: c.value.deadline.as_secs(),
            })
            .collect(),
        dynamic: resolved.dynamic.clone(),
        blobs: blobs
            .map
            .iter()
            .map(|(d, (_, size))| m::Blob {
                digest: d.clone(),
                size: *size,
            })
            .collect(),
    };
    let blobs = blobs
        .map
        .into_iter()
        .map(|(d, (src, _))| (d, src))
        .collect();
    Ok(Plan { manifest, blobs })
}

/// The Consul keys and Vault reads of a dynamic template, sorted, as the manifest records them.
fn template_reads(resolved: &Resolved, path: &str) -> (Vec<String>, Vec<String>) {
    let mut consul = std::collections::BTreeSet::new();
    let mut vault = std::collections::BTreeSet::new();
    for read in resolved.template_reads.get(path).into_iter().flatten() {
        let (c, v) = crate::config::manifest_read(read, resolved.dynamic.as_ref());
        consul.extend(c);
        vault.extend(v);
    }
    (consul.into_iter().collect(), vault.into_iter().collect())
}

/// The values of the top-level `vars` keys a dynamic template reads (a key it only tests with
/// `is defined` or `default` and that does not exist is left out).
fn template_vars(
    resolved: &Resolved,
    path: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut out = std::collections::BTreeMap::new();
    for read in resolved.template_reads.get(path).into_iter().flatten() {
        if let kiln_apply::template::Read::Var(p) = read {
            if let Some(v) = p.first().and_then(|k| resolved.vars.get(k)) {
                out.insert(p[0].clone(), v.clone());
            }
        }
    }
    out
}

fn file_entry(f: &crate::config::ResolvedFile, digest: String, size: u64) -> m::EntryKind {
    m::EntryKind::File {
        mode: mode_string(f.mode),
        owner: f.owner.clone(),
        group: f.group.clone(),
        digest,
        size,
        restart: f.restart.clone(),
        reload: f.reload.clone(),
    }
}
