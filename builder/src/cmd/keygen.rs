//! `kiln keygen`: write an OpenSSH ed25519 key pair for signing bundles.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_signing::SigningKey;

use crate::cli::KeygenArgs;

pub fn run(args: KeygenArgs) -> Result<()> {
    let secret_path = &args.out;
    let public_path = {
        let mut p = secret_path.as_os_str().to_owned();
        p.push(".pub");
        std::path::PathBuf::from(p)
    };
    if !args.force {
        for p in [secret_path, &public_path] {
            if p.exists() {
                bail!("{} already exists (use --force to overwrite)", p.display());
            }
        }
    }
    if let Some(parent) = secret_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let key = SigningKey::generate(&args.comment).context("generating key")?;
    write_file(
        secret_path,
        key.to_openssh_private().as_bytes(),
        0o600,
        args.force,
    )?;
    let public = key.public();
    write_file(
        &public_path,
        format!("{}\n", public.to_openssh()).as_bytes(),
        0o644,
        args.force,
    )?;
    if args.json {
        let v = serde_json::json!({
            "secret_key": secret_path,
            "public_key": public_path,
            "fingerprint": public.fingerprint(),
        });
        super::print_json(&v)?;
    } else {
        println!(
            "wrote {} (secret, 0600) and {}",
            secret_path.display(),
            public_path.display()
        );
        println!("fingerprint {}", public.fingerprint());
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).mode(mode);
    if overwrite {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // The mode given to open() is masked by the umask and ignored for existing files: set it.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode of {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}
