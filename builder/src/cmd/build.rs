//! `kiln build`: resolve, plan, sign and write one bundle per hostgroup, in parallel.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_signing::SigningKey;
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cli::{BuildArgs, Shard};
use crate::config::Config;
use crate::plan::{self, BuildInfo};

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
        None => created.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1).max(1),
    };
    let info = BuildInfo {
        version,
        created,
        expires_after: *args.expires,
        source_commit: args.source_commit.clone(),
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;

    let progress = if io::stderr().is_terminal() && !args.json {
        let pb = ProgressBar::new(names.len() as u64);
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
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
    let results: Vec<(String, Result<Built>)> = pool.install(|| {
        names
            .par_iter()
            .map(|name| {
                let r = build_one(&config, name, &info, &key, &args.out);
                progress.inc(1);
                progress.set_message(name.clone());
                (name.clone(), r)
            })
            .collect()
    });
    progress.finish_and_clear();

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
        println!("{}", serde_json::to_string_pretty(&built)?);
    } else {
        for b in &built {
            println!("{}  {}  ({} bytes, {} entries)", b.sha256, b.path.display(), b.size, b.entries);
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
                "unknown hostgroup {n:?}: no hostgroups/{n}.yaml in {} (known: {})",
                config.root().display(),
                known.join(", ")
            );
        }
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    Ok(names)
}

fn build_one(config: &Config, name: &str, info: &BuildInfo, key: &SigningKey, out: &Path) -> Result<Built> {
    let resolved = config.resolve(name).map_err(|d| super::diagnostics_error(&d))?;
    let plan = plan::plan(&resolved, info)?;
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
    std::fs::rename(&tmp_path, &final_path)
        .with_context(|| format!("renaming {} to {}", tmp_path.display(), final_path.display()))?;
    tracing::info!(hostgroup = name, path = %final_path.display(), "bundle written");
    Ok(Built {
        hostgroup: name.to_string(),
        version: info.version,
        path: final_path,
        sha256,
        size,
        entries: plan.manifest.entries.len() + plan.manifest.templates.len(),
        blobs: plan.manifest.blobs.len(),
    })
}

/// Write and fsync the bundle; return its sha256 and size.
fn write_plan(plan: &plan::Plan, key: &SigningKey, path: &Path) -> Result<(String, u64)> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let out = HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new(), count: 0 };
    let mut write_blob = |blob: &kiln_signing::Blob, w: &mut dyn Write| -> io::Result<()> {
        let src = plan
            .blobs
            .get(&blob.digest)
            .ok_or_else(|| io::Error::other(format!("no source for blob {}", blob.digest)))?;
        // Hash what is actually written: a source file changed since planning must not yield a
        // bundle whose manifest lies about its content.
        let mut hw = HashingWriter { inner: w, hasher: Sha256::new(), count: 0 };
        src.copy_to(&mut hw)?;
        if hex::encode(hw.hasher.finalize()) != blob.digest {
            return Err(io::Error::other(format!("{src:?} changed while the bundle was being written")));
        }
        Ok(())
    };
    let out = kiln_signing::write_bundle(out, &plan.manifest, key, &mut write_blob)
        .with_context(|| format!("writing {}", path.display()))?;
    let HashingWriter { inner, hasher, count } = out;
    let file = inner.into_inner().map_err(|e| e.into_error()).context("flushing bundle")?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok((hex::encode(hasher.finalize()), count))
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hostgroup_lands_in_exactly_one_shard() {
        let names: Vec<String> = (0..500).map(|i| format!("hg-{i}")).collect();
        for count in 1..=7 {
            for n in &names {
                let hits = (1..=count).filter(|&k| in_shard(n, Shard { index: k, count })).count();
                assert_eq!(hits, 1, "{n} in {hits} shards of {count}");
            }
        }
    }
}
