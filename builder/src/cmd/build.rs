//! `kiln build`: resolve, plan, sign and write one bundle per hostgroup, in parallel.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_signing::{HashingWriter, SigningKey};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use std::collections::BTreeMap;

use crate::base::{self, BaseInfo, BaseSpec};
use crate::cli::{BuildArgs, Shard};
use crate::config::Config;
use crate::packages::{Request, Resolver};
use crate::plan::{self, BuildInfo, PackageSet};
use crate::sbom;

/// What `kiln build --json` prints for each bundle.
#[derive(Debug, Serialize)]
pub struct Built {
    pub hostgroup: String,
    pub version: u64,
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub entries: usize,
    pub blobs: usize,
    /// Packages in the manifest (with --base: every resolved .deb, dependencies included).
    pub packages: usize,
    /// The SPDX 2.3 SBOM written beside the bundle.
    pub sbom: PathBuf,
    /// The bundle file was already there with exactly these bytes, and was kept.
    pub unchanged: bool,
}

/// Whether a hostgroup belongs to a shard. Hashing the name (rather than cutting the sorted list)
/// keeps every other hostgroup on its shard when one is added or removed, so CI caches stay warm.
pub fn in_shard(name: &str, shard: Shard) -> bool {
    let h = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    u64::from_be_bytes(first) % u64::from(shard.count) == u64::from(shard.index - 1)
}

pub fn run(args: BuildArgs) -> Result<()> {
    let config = super::load_config(&args.config.config)?;
    let names = select(&config, &args)?;
    let key_text = std::fs::read_to_string(&args.key)
        .with_context(|| format!("reading signing key {}", args.key.display()))?;
    let key = SigningKey::from_openssh_private(&key_text)
        .with_context(|| format!("loading signing key {}", args.key.display()))?;
    let created = BuildInfo::created_from_env()?;
    let version = match args.version {
        Some(0) => bail!("--version must be a positive integer"),
        Some(v) => v,
        None => created
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
            .max(1),
    };
    let info = BuildInfo {
        version,
        created,
        expires_after: *args.expires,
        source_commit: args.source_commit.clone(),
    };
    refuse_born_expired(&info, std::time::SystemTime::now())?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let progress = if io::stderr().is_terminal() && !args.json {
        let pb = ProgressBar::new(names.len() as u64);
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    } else {
        ProgressBar::hidden()
    };

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.jobs.unwrap_or(0))
        .build()
        .context("starting build threads")?;
    // With --base: resolve every hostgroup's packages first (apt, sequentially, one update).
    let resolution = match &args.base {
        Some(spec) => Some(resolve_packages(&config, &names, spec, &args)?),
        None => None,
    };

    // Hostgroups whose packages are not carried (no --base): their package count and the
    // accounts those packages would create, for one warning after the build.
    let not_carried = std::sync::Mutex::new(BTreeMap::new());
    let results: Vec<(String, Result<Built>)> = pool.install(|| {
        names
            .par_iter()
            .map(|name| {
                let r = match &resolution {
                    None => build_one(&config, name, &info, &key, &args, None, &not_carried),
                    Some(res) => match res.per_hostgroup.get(name) {
                        Some(Ok(set)) => build_one(
                            &config,
                            name,
                            &info,
                            &key,
                            &args,
                            Some((set, res)),
                            &not_carried,
                        ),
                        Some(Err(e)) => Err(anyhow!("{e}")),
                        None => Err(anyhow!("not resolved")),
                    },
                };
                progress.inc(1);
                progress.set_message(name.clone());
                (name.clone(), r)
            })
            .collect()
    });
    progress.finish_and_clear();

    let not_carried = not_carried.into_inner().unwrap_or_default();
    if let Some(w) = not_carried_warning(&not_carried) {
        eprintln!("kiln: warning: {w}");
    }
    let mut built = Vec::new();
    let mut failed = 0;
    for (name, r) in results {
        match r {
            Ok(b) => built.push(b),
            Err(e) => {
                failed += 1;
                // Configuration problems already printed their file:line:column lines.
                eprintln!("kiln: hostgroup {name}: {e:#}");
            }
        }
    }
    if args.json {
        super::print_json(&built)?;
    } else {
        for b in &built {
            println!(
                "{}  {}  ({} bytes, {} entries{})",
                b.sha256,
                b.path.display(),
                b.size,
                b.entries,
                if b.unchanged {
                    "; already there with the same bytes: kept"
                } else {
                    ""
                }
            );
        }
    }
    if failed > 0 {
        return Err(anyhow!(crate::Exit {
            code: kiln_signing::exit::FAILURE,
            message: format!("{failed} of {} hostgroups failed to build", names.len()),
        }));
    }
    Ok(())
}

fn select(config: &Config, args: &BuildArgs) -> Result<Vec<String>> {
    let known = config.hostgroup_names();
    if args.all {
        let mut names = known;
        if let Some(shard) = args.shard {
            names.retain(|n| in_shard(n, shard));
        }
        return Ok(names);
    }
    let mut names = Vec::new();
    for n in &args.hostgroups {
        if !known.contains(n) {
            bail!(
                "unknown hostgroup {n:?}: no hostgroups/{n}.yaml in {}{} (known: {})",
                config.root().display(),
                crate::config::check::did_you_mean(n, known.iter().map(String::as_str)),
                known.join(", ")
            );
        }
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    Ok(names)
}

/// Packages resolved against one base for every hostgroup of a build.
struct Resolution {
    base: BaseInfo,
    per_hostgroup: BTreeMap<String, Result<PackageSet>>,
    /// Download location of every deb, by sha256 (for the SBOM).
    uris: BTreeMap<String, String>,
    /// Held until the bundles are written: no other kiln changes the deb cache meanwhile.
    _resolver: Resolver,
}

/// Opens the base, checks each hostgroup targets it, runs `apt-get update` once, resolves each
/// hostgroup's packages and fetches the union of the debs. A hostgroup whose packages cannot
/// be resolved fails alone; a base that cannot be read or an unreachable archive fails all.
fn resolve_packages(
    config: &Config,
    names: &[String],
    spec: &str,
    args: &BuildArgs,
) -> Result<Resolution> {
    let spec = BaseSpec::parse(spec)?;
    let cache = base::cache_dir(args.cache.cache.as_deref())?;
    let progress = |m: &str| {
        if !args.json {
            eprintln!("kiln: {m}")
        }
    };
    let base = BaseInfo::open(&spec, Some(config), &cache)?;
    let mut per_hostgroup: BTreeMap<String, Result<PackageSet>> = BTreeMap::new();
    let mut requests: Vec<(String, Vec<Request>)> = Vec::new();
    for name in names {
        let resolved = match config.resolve(name) {
            Ok(r) => r,
            Err(d) => {
                per_hostgroup.insert(name.clone(), Err(super::diagnostics_error(&d)));
                continue;
            }
        };
        if let BaseSpec::Name(n) = &spec {
            if resolved.base.name != *n {
                per_hostgroup.insert(
                    name.clone(),
                    Err(anyhow!(crate::Exit {
                        code: kiln_signing::exit::FAILURE,
                        message: format!(
                            "targets base {}, not {n}: build it with --base {}",
                            resolved.base.name, resolved.base.name
                        ),
                    })),
                );
                continue;
            }
        }
        if let Err(why) = base.matches(&resolved.base) {
            per_hostgroup.insert(
                name.clone(),
                Err(anyhow!(
                    "base {} is not the base this hostgroup targets ({}): {why}",
                    base.source,
                    resolved.base.name
                )),
            );
            continue;
        }
        requests.push((name.clone(), Request::from_resolved(&resolved)));
    }
    let resolver = Resolver::new(&base, &cache, &progress)?;
    if requests.iter().any(|(_, r)| !r.is_empty()) {
        if args.no_apt_update {
            if !resolver.has_lists() {
                bail!(
                    "--no-apt-update: the cache has no package lists for base {} yet ({}); run once without it",
                    base.source,
                    cache.display()
                );
            }
        } else {
            progress(&format!("apt-get update for base {}", base.source));
            resolver.update()?;
        }
    }
    let mut all = Vec::new();
    let mut resolved_debs = BTreeMap::new();
    for (name, reqs) in &requests {
        match resolver.resolve(name, reqs) {
            Ok(debs) => {
                all.extend(debs.iter().cloned());
                resolved_debs.insert(name.clone(), debs);
            }
            Err(e) => {
                per_hostgroup.insert(name.clone(), Err(anyhow::Error::new(e)));
            }
        }
    }
    let paths = resolver.fetch(&all, &progress)?;
    let uris = all
        .iter()
        .map(|d| (d.sha256.clone(), d.uri.clone()))
        .collect();
    for (name, debs) in resolved_debs {
        let mine = debs
            .iter()
            .filter_map(|d| paths.get(&d.sha256).map(|p| (d.sha256.clone(), p.clone())))
            .collect();
        per_hostgroup.insert(
            name,
            Ok(PackageSet {
                debs,
                paths: mine,
                packages_digest: base.packages_digest.clone(),
            }),
        );
    }
    Ok(Resolution {
        base,
        per_hostgroup,
        uris,
        _resolver: resolver,
    })
}

fn build_one(
    config: &Config,
    name: &str,
    info: &BuildInfo,
    key: &SigningKey,
    args: &BuildArgs,
    packages: Option<(&PackageSet, &Resolution)>,
    not_carried: &std::sync::Mutex<NotCarried>,
) -> Result<Built> {
    let out = args.out.as_path();
    let resolved = config
        .resolve(name)
        .map_err(|d| super::diagnostics_error(&d))?;
    for w in &resolved.warnings {
        eprintln!("{}: warning: {}", w.span, w.message);
    }
    if args.deny_warnings && !resolved.warnings.is_empty() {
        let n = resolved.warnings.len();
        bail!(
            "not built: {n} warning{} above, and --deny-warnings makes warnings errors",
            if n == 1 { "" } else { "s" }
        );
    }
    if args.base.is_none() && !resolved.packages.is_empty() {
        let n = resolved.packages.len();
        if args.deny_warnings {
            bail!(
                "not built: without --base its {n} package{} would be listed by name only, not \
                 carried, and --deny-warnings makes warnings errors",
                if n == 1 { "" } else { "s" }
            );
        }
        if let Ok(mut m) = not_carried.lock() {
            m.insert(name.to_string(), (n, resolved.system_accounts.clone()));
        }
    }
    let plan = plan::plan_with_packages(&resolved, info, packages.map(|(p, _)| p))?;
    let file_name = format!("{name}-{}.kiln", info.version);
    let final_path = out.join(&file_name);
    let tmp_path = out.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = write_plan(&plan, key, &tmp_path);
    let (sha256, size) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp_path);
            return Err(e);
        }
    };
    let unchanged = place(&tmp_path, &final_path, &sha256);
    let _ = std::fs::remove_file(&tmp_path);
    let unchanged = unchanged?;
    tracing::info!(hostgroup = name, path = %final_path.display(), unchanged, "bundle written");

    let empty = BTreeMap::new();
    let (facts, uris) = match packages {
        Some((_, res)) => (
            Some(sbom::BaseFacts {
                installed: &res.base.installed,
            }),
            &res.uris,
        ),
        None => (None, &empty),
    };
    let doc = sbom::spdx(&plan.manifest, &file_name, &sha256, facts.as_ref(), uris);
    let sbom_path = out.join(sbom::file_name(name, info.version));
    base::write_atomic(&sbom_path, &sbom::to_bytes(&doc))?;
    Ok(Built {
        hostgroup: name.to_string(),
        version: info.version,
        path: final_path,
        sha256,
        size,
        entries: plan.manifest.entries.len() + plan.manifest.templates.len(),
        blobs: plan.manifest.blobs.len(),
        packages: plan.manifest.packages.len(),
        sbom: sbom_path,
        unchanged,
    })
}

/// Puts the new bundle at `path` unless a file is there already: a bundle with the same name
/// (hostgroup and version) and the same bytes is kept (`Ok(true)`); one with other bytes is
/// never replaced, since hosts, caches and pinned digests may already have it. The hard link
/// makes "only if absent" atomic, even against another build writing the same name.
fn place(tmp: &Path, path: &Path, sha256: &str) -> Result<bool> {
    match std::fs::hard_link(tmp, path) {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let (existing, _) = kiln_signing::sha256_file(path)
                .with_context(|| format!("reading the existing {}", path.display()))?;
            if existing == sha256 {
                return Ok(true);
            }
            bail!(
                "{} exists with other bytes (sha256 {existing}; this build's: {sha256}): a version \
                 is built once, so it is not replaced; build with a new --version, or remove the \
                 file if it was never published",
                path.display()
            )
        }
        Err(e) => {
            Err(e).with_context(|| format!("linking {} to {}", tmp.display(), path.display()))
        }
    }
}

/// Refuses a build whose bundles would be expired the moment they are written: creation time
/// (SOURCE_DATE_EPOCH, when set) plus `--expires` already past. Every host would refuse them.
fn refuse_born_expired(info: &BuildInfo, now: std::time::SystemTime) -> Result<()> {
    let expires = info.created + info.expires_after;
    if expires > now {
        return Ok(());
    }
    let at = |t| humantime::format_rfc3339_seconds(t).to_string();
    let secs = info.expires_after.as_secs();
    let after = match secs {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        _ => humantime::format_duration(info.expires_after).to_string(),
    };
    bail!(
        "the bundles would be born expired: created {} (SOURCE_DATE_EPOCH) + --expires {after} \
         = {}, which is past (now {}); set SOURCE_DATE_EPOCH to a later time (the commit's), or \
         give a longer --expires",
        at(info.created),
        at(expires),
        at(now)
    )
}

/// Hostgroup -> (packages, accounts they create), for those built without their packages.
type NotCarried = BTreeMap<String, (usize, std::collections::BTreeSet<String>)>;

/// The one warning of a build without `--base` whose hostgroups have packages: the bundles
/// list them by name only, so nothing installs them at first boot.
fn not_carried_warning(not_carried: &NotCarried) -> Option<String> {
    if not_carried.is_empty() {
        return None;
    }
    let counts: Vec<String> = not_carried
        .iter()
        .map(|(name, (n, _))| format!("{name}: {n}"))
        .collect();
    let accounts: std::collections::BTreeSet<&String> =
        not_carried.values().flat_map(|(_, a)| a).collect();
    let accounts = if accounts.is_empty() {
        String::new()
    } else {
        format!(
            ", and the accounts packages create ({}) will be missing",
            accounts.into_iter().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    Some(format!(
        "no --base: packages are listed by name only, not carried ({}); kiln-firstboot cannot \
         install them: hosts have only what their image has{accounts}; --base NAME|DIR|TAR \
         carries the .debs",
        counts.join(", ")
    ))
}

/// Write and fsync the bundle; return its sha256 and size.
fn write_plan(plan: &plan::Plan, key: &SigningKey, path: &Path) -> Result<(String, u64)> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let mut write_blob = |blob: &kiln_signing::Blob, w: &mut dyn Write| -> io::Result<()> {
        let src = plan
            .blobs
            .get(&blob.digest)
            .ok_or_else(|| io::Error::other(format!("no source for blob {}", blob.digest)))?;
        // Hash what is actually written: a source file changed since planning must not yield a
        // bundle whose manifest lies about its content.
        let mut hw = HashingWriter::new(w);
        src.copy_to(&mut hw)?;
        if hw.finish().0 != blob.digest {
            return Err(io::Error::other(format!(
                "{src:?} changed while the bundle was being written"
            )));
        }
        Ok(())
    };
    let out = kiln_signing::write_bundle(out, &plan.manifest, key, &mut write_blob)
        .with_context(|| format!("writing {}", path.display()))?;
    let count = out.count();
    let (sha256, inner) = out.finish();
    let file = inner
        .into_inner()
        .map_err(|e| e.into_error())
        .context("flushing bundle")?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok((sha256, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hostgroup_lands_in_exactly_one_shard() {
        let names: Vec<String> = (0..500).map(|i| format!("hg-{i}")).collect();
        for count in 1..=7 {
            for n in &names {
                let hits = (1..=count)
                    .filter(|&k| in_shard(n, Shard { index: k, count }))
                    .count();
                assert_eq!(hits, 1, "{n} in {hits} shards of {count}");
            }
        }
    }
}
