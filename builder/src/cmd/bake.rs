//! `kiln bake BUNDLE --base NAME|DIR|TAR --out FILE [--format tar|raw|qcow2] [--size SIZE]`.

use anyhow::{anyhow, Result};

use crate::bake::{self, BakeOptions};
use crate::base::{self, BaseSpec};
use crate::cli::BakeArgs;

pub fn run(a: BakeArgs) -> Result<()> {
    let spec = BaseSpec::parse(&a.base)?;
    let config = match &spec {
        BaseSpec::Name(_) => Some(super::load_config(&a.config.config)?),
        _ => None,
    };
    let cache = base::cache_dir(a.cache.cache.as_deref())?;
    let trust = super::verify::load_trust(&a.trust)?;
    let firstboot = match &a.firstboot {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("kiln-firstboot"))
            .filter(|p| p.is_file())
            .or_else(|| base::which("kiln-firstboot"))
            .ok_or_else(|| {
                anyhow!("no kiln-firstboot beside kiln or on PATH: pass --firstboot PATH")
            })?,
    };
    let json = a.json;
    let progress = move |m: &str| {
        if !json {
            eprintln!("kiln: {m}")
        }
    };
    let baked = bake::bake(&BakeOptions {
        bundle: &a.bundle,
        base: &spec,
        config: config.as_ref(),
        cache: &cache,
        trust_path: &a.trust.trust,
        trust: &trust,
        out: &a.out,
        format: a.format,
        size: a.size,
        firstboot: &firstboot,
        keep_workdir: a.keep_workdir,
        progress: &progress,
    })?;
    if a.json {
        super::print_json(&baked)?;
    } else {
        println!(
            "{}  ({} bytes; copy {:.1}s, apply {:.1}s, write {:.1}s, total {:.1}s)",
            baked.out.display(),
            baked.bytes,
            baked.copy_seconds,
            baked.apply_seconds,
            baked.write_seconds,
            baked.total_seconds
        );
    }
    Ok(())
}
