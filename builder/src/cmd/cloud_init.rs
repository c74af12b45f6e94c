//! `kiln cloud-init HOSTGROUP --bundle-url URL|--bundle-file PATH [--sha256 HEX|auto] ... --out FILE`.

use std::io::Write;

use anyhow::{anyhow, bail, Context, Result};

use crate::cli::CloudInitArgs;
use crate::cloudinit::{self, BundleSource, Spec};

/// A one-line secret or setting from a file: trailing newline and spaces dropped.
fn read_one_line(what: &str, path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} from {}", path.display()))?;
    let v = text.trim().to_string();
    if v.is_empty() || v.contains('\n') {
        bail!("{}: {what} must be one non-empty line", path.display());
    }
    Ok(v)
}

fn read_pem(what: &str, path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} from {}", path.display()))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        bail!("{}: {what} is not a PEM certificate bundle", path.display());
    }
    Ok(text)
}

pub fn run(a: CloudInitArgs) -> Result<()> {
    // The bundle here, if given: its manifest (hostgroup, version) and its sha256.
    let local = match &a.bundle_file {
        Some(p) => {
            let (m, _) = super::inspect::read_manifest(p)?;
            if m.hostgroup != a.hostgroup {
                bail!(
                    "{} is a bundle for hostgroup {:?}, not {:?}",
                    p.display(),
                    m.hostgroup,
                    a.hostgroup
                );
            }
            let (sha, _) =
                kiln_signing::sha256_file(p).with_context(|| format!("reading {}", p.display()))?;
            Some((p.clone(), m, sha))
        }
        None => None,
    };
    let sha256 = if a.sha256 == "auto" {
        match &local {
            Some((_, _, sha)) => sha.clone(),
            None => bail!("--sha256 auto needs --bundle-file PATH (a local copy of the bundle) to compute the digest; or pass --sha256 HEX"),
        }
    } else {
        let pin = a.sha256.to_ascii_lowercase();
        if let Some((p, _, sha)) = &local {
            if *sha != pin {
                bail!(
                    "--sha256 {pin} does not match {} (sha256 {sha})",
                    p.display()
                );
            }
        }
        pin
    };
    let source = match (&a.bundle_url, &local) {
        (Some(u), _) => BundleSource::Url(u.clone()),
        (None, Some((p, _, _))) => BundleSource::Seed(
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| anyhow!("{} has no file name", p.display()))?,
        ),
        (None, None) => bail!("give --bundle-url URL (hosts download it) or --bundle-file PATH (it ships on the seed disk)"),
    };
    let spec = Spec {
        hostgroup: a.hostgroup.clone(),
        version: local.as_ref().map(|(_, m, _)| m.version),
        source,
        sha256,
        via: a.via,
        consul_addr: a.consul_addr.clone(),
        consul_ca_pem: a
            .consul_ca
            .as_deref()
            .map(|p| read_pem("the Consul CA", p))
            .transpose()?,
        consul_token: a
            .consul_token_file
            .as_deref()
            .map(|p| read_one_line("the Consul token", p))
            .transpose()?,
        vault_addr: a.vault_addr.clone(),
        vault_ca_pem: a
            .vault_ca
            .as_deref()
            .map(|p| read_pem("the Vault CA", p))
            .transpose()?,
        vault_role_id: a
            .vault_role_id_file
            .as_deref()
            .map(|p| read_one_line("the AppRole role_id", p))
            .transpose()?,
        wrapped_secret_id: a
            .wrapped_secret_id_file
            .as_deref()
            .map(|p| read_one_line("the wrapped secret_id", p))
            .transpose()?,
        min_version: a.min_version,
        deadline: a.deadline.clone(),
        dynamic_deadline: a.dynamic_deadline.clone(),
        firstboot: a.firstboot_path.clone(),
    };
    if let Some((path, m, _)) = &local {
        if let Err(why) = cloudinit::check_sources(m, &spec) {
            return Err(anyhow!(crate::Exit {
                code: kiln_signing::exit::USAGE,
                message: format!("{}: {why}", path.display()),
            }));
        }
    }
    cloudinit::check(&spec).map_err(|m| {
        anyhow!(crate::Exit {
            code: kiln_signing::exit::USAGE,
            message: m
        })
    })?;
    let text = cloudinit::render(&spec);
    if text.len() > cloudinit::USER_DATA_LIMIT {
        bail!(
            "the user-data is {} bytes, over the 16 KB that AWS accepts (large CA bundles? pass fewer certificates)",
            text.len()
        );
    }
    if a.out.as_os_str() == "-" {
        // print!, so that a closed pipe ends quietly (main's broken-pipe hook).
        print!("{text}");
        return Ok(());
    }
    // It may hold a wrapped secret_id and a Consul token: 0600, written beside and renamed.
    use std::os::unix::fs::OpenOptionsExt;
    let dir = a
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        a.out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &a.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), a.out.display()))?;
    eprintln!(
        "kiln: wrote {} ({} bytes{})",
        a.out.display(),
        text.len(),
        if spec.wrapped_secret_id.is_some() || spec.consul_token.is_some() {
            ", 0600: it holds secrets"
        } else {
            ""
        }
    );
    Ok(())
}
