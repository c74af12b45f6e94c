//! `kiln inspect`: what a bundle contains, read from its manifest.

use std::fs::File;
use std::io::BufReader;

use anyhow::{Context, Result};
use kiln_signing::{EntryKind, Limits, Manifest};

use crate::cli::InspectArgs;

/// Read a bundle's manifest without checking trust (the signature is still parsed).
pub(crate) fn read_manifest(path: &std::path::Path) -> Result<(Manifest, Option<String>)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (manifest, manifest_bytes, sig) =
        kiln_signing::read_manifest_unverified(BufReader::new(file), &Limits::default())
            .with_context(|| format!("reading {}", path.display()))?;
    let signer =
        kiln_signing::sshsig::verify(&sig, kiln_signing::sshsig::NAMESPACE, &manifest_bytes)
            .ok()
            .map(|k| k.fingerprint());
    Ok((manifest, signer))
}

pub fn run(args: InspectArgs) -> Result<()> {
    let (m, signer) = read_manifest(&args.bundle)?;
    if args.json {
        let mut v = serde_json::to_value(&m)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("signer".into(), serde_json::json!(signer));
        }
        super::print_json(&v)?;
        return Ok(());
    }
    println!("hostgroup  {}", m.hostgroup);
    println!("version    {}", m.version);
    println!("created    {}", m.created);
    println!("expires    {}", m.expires);
    println!(
        "base       {} {} {} ({})",
        m.base.id, m.base.version_id, m.base.arch, m.base.name
    );
    println!("builder    {}", m.builder);
    println!("commit     {}", m.source_commit.as_deref().unwrap_or("-"));
    match &signer {
        Some(fp) => {
            println!("signed by  {fp} (signature matches; trust not checked: use kiln verify)")
        }
        None => println!("signed by  ? (signature does not match the manifest)"),
    }
    let payload: u64 = m.blobs.iter().map(|b| b.size).sum();
    println!("payload    {} blobs, {} bytes", m.blobs.len(), payload);
    println!();
    println!("entries ({}):", m.entries.len());
    for e in &m.entries {
        match &e.kind {
            EntryKind::File {
                mode,
                owner,
                group,
                size,
                restart,
                reload,
                ..
            } => {
                let mut hooks = String::new();
                if !restart.is_empty() {
                    hooks.push_str(&format!("  restart: {}", restart.join(",")));
                }
                if !reload.is_empty() {
                    hooks.push_str(&format!("  reload: {}", reload.join(",")));
                }
                println!(
                    "  file     {mode} {:<17} {size:>9}  {}{hooks}",
                    format!("{owner}:{group}"),
                    e.path
                );
            }
            EntryKind::Directory { mode, owner, group } => {
                println!(
                    "  dir      {mode} {:<17} {:>9}  {}",
                    format!("{owner}:{group}"),
                    "",
                    e.path
                )
            }
            EntryKind::Symlink { target } => {
                println!("  symlink  {:<32}  {} -> {target}", "", e.path)
            }
            EntryKind::Absent => println!("  absent   {:<32}  {}", "", e.path),
        }
    }
    if !m.templates.is_empty() {
        println!("dynamic templates ({}):", m.templates.len());
        for t in &m.templates {
            let reads: Vec<String> = t
                .consul
                .iter()
                .map(|k| format!("consul {k}"))
                .chain(t.vault.iter().map(|v| format!("vault {v}")))
                .chain(t.vars.keys().map(|k| format!("vars.{k}")))
                .collect();
            println!(
                "  {} {}:{}  {}  reads {}",
                t.mode,
                t.owner,
                t.group,
                t.path,
                if reads.is_empty() {
                    "nothing".into()
                } else {
                    reads.join(", ")
                }
            );
        }
    }
    if let Some(d) = &m.dynamic {
        if let Some(c) = &d.consul {
            println!("dynamic consul prefixes: {}", c.prefixes.join(", "));
        }
        if let Some(v) = &d.vault {
            let mut what = vec![format!("AppRole {} (auth/{})", v.role, v.auth_mount)];
            what.extend(v.kv.iter().map(|p| format!("kv {p}")));
            what.extend(v.generate.iter().map(|g| {
                format!(
                    "generate {}#{} ({} {})",
                    g.path,
                    g.field,
                    g.length,
                    g.charset.as_str()
                )
            }));
            if let Some(p) = &v.pki {
                what.push(format!(
                    "pki {}/issue/{} for {:?}, ttl {}",
                    p.mount, p.role, p.common_name, p.ttl
                ));
            }
            println!("dynamic vault: {}", what.join("; "));
        }
    }
    if !m.groups.is_empty() {
        println!(
            "groups: {}",
            m.groups
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !m.users.is_empty() {
        println!(
            "users: {}",
            m.users
                .iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !m.packages.is_empty() {
        let pk: Vec<String> = m
            .packages
            .iter()
            .map(|p| match &p.version {
                Some(v) => format!("{}={v}", p.name),
                None => p.name.clone(),
            })
            .collect();
        println!("packages: {}", pk.join(", "));
    }
    if !m.system_accounts.is_empty() {
        println!(
            "system accounts (made by the packages): {}",
            m.system_accounts.join(", ")
        );
    }
    if !m.services.is_empty() {
        println!("services:");
        for s in &m.services {
            let state = serde_json::to_value(s.state)?;
            println!(
                "  {} {} ({})",
                s.name,
                state.as_str().unwrap_or("?"),
                if s.enabled { "enabled" } else { "disabled" }
            );
        }
    }
    if !m.commands.is_empty() {
        println!("commands (in order):");
        for c in &m.commands {
            println!(
                "  {}: {} (timeout {}s)",
                c.name,
                c.argv.join(" "),
                c.timeout_secs
            );
        }
    }
    Ok(())
}
