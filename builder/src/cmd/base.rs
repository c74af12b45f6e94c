//! `kiln base build NAME` and `kiln base show NAME|DIR|TAR`.

use anyhow::Result;
use serde_json::json;

use crate::base::{self, BaseInfo, BaseSpec, BuildOptions, Mirrors};
use crate::cli::{BaseBuildArgs, BaseCommand, BaseShowArgs};

pub fn run(c: BaseCommand) -> Result<()> {
    match c {
        BaseCommand::Build(a) => build(a),
        BaseCommand::Show(a) => show(a),
    }
}

fn build(a: BaseBuildArgs) -> Result<()> {
    let config = super::load_config(&a.config.config)?;
    let def = base::find_definition(&config, &a.name)?;
    let cache = base::cache_dir(a.cache.cache.as_deref())?;
    let progress = |m: &str| eprintln!("kiln: {m}");
    let opts = BuildOptions {
        mirrors: Mirrors::new(a.mirror.as_deref(), a.security_mirror.as_deref()),
        rebuild: a.rebuild,
        progress: &progress,
    };
    let (root, built) = base::build(&cache, &def, &opts)?;
    if a.json {
        let info = BaseInfo::open_dir(&root)?;
        super::print_json(&json!({
            "name": def.name,
            "key": base::definition_digest(&def),
            "rootfs": root,
            "built": built,
            "id": info.id,
            "version_id": info.version_id,
            "arch": info.arch,
            "packages": info.installed.len(),
            "packages_digest": info.packages_digest,
        }))?;
    } else {
        if !built {
            eprintln!("kiln: base {} is in the cache", def.name);
        }
        println!("{}", root.display());
    }
    Ok(())
}

fn show(a: BaseShowArgs) -> Result<()> {
    let spec = BaseSpec::parse(&a.base)?;
    let config = match &spec {
        BaseSpec::Name(_) => Some(super::load_config(&a.config.config)?),
        _ => None,
    };
    let cache = base::cache_dir(a.cache.cache.as_deref())?;
    let info = BaseInfo::open(&spec, config.as_ref(), &cache)?;
    if a.json {
        let packages: Vec<_> = info
            .installed
            .iter()
            .map(|(n, (v, arch))| json!({"name": n, "version": v, "arch": arch}))
            .collect();
        super::print_json(&json!({
            "source": info.source,
            "id": info.id,
            "version_id": info.version_id,
            "arch": info.arch,
            "foreign_archs": info.foreign_archs,
            "packages_digest": info.packages_digest,
            "packages": packages,
        }))?;
        return Ok(());
    }
    println!("base             {}", info.source);
    println!(
        "os-release       ID={} VERSION_ID={}",
        info.id, info.version_id
    );
    println!("architecture     {}", info.arch);
    println!("packages         {} installed", info.installed.len());
    println!("packages digest  {}", info.packages_digest);
    if a.packages {
        for (n, (v, arch)) in &info.installed {
            println!("  {n} {v} {arch}");
        }
    }
    Ok(())
}
