//! `kiln verify`: the same checks a host makes before applying, minus the target root.

use std::fs::File;
use std::io::BufReader;
use std::time::SystemTime;

use anyhow::{Context, Result};
use kiln_signing::{BundleError, Limits, Policy, TrustStore};

use crate::cli::{TrustArgs, VerifyArgs};

/// Load the trust store named by `--trust` and `--revoked`.
pub(crate) fn load_trust(args: &TrustArgs) -> Result<TrustStore> {
    let mut trust = TrustStore::load(&args.trust)
        .with_context(|| format!("loading trusted keys from {}", args.trust.display()))?;
    if let Some(revoked) = &args.revoked {
        trust = trust
            .with_revoked_file(revoked)
            .with_context(|| format!("loading revoked keys from {}", revoked.display()))?;
    }
    Ok(trust)
}

struct Verified {
    manifest: kiln_signing::Manifest,
    /// How many entries the manifest has (they are in the spool, not in `manifest`).
    entries: usize,
    signer: String,
}

fn verify(args: &VerifyArgs, trust: &TrustStore) -> Result<Verified, BundleError> {
    let file = File::open(&args.bundle)?;
    let bundle = kiln_signing::open_spooled(
        BufReader::with_capacity(1 << 20, file),
        trust,
        &Limits::default(),
        tempfile::tempfile()?,
    )?;
    let policy = Policy {
        now: SystemTime::now(),
        hostgroup: args.hostgroup.clone(),
        min_version: args.min_version,
        base: None,
    };
    kiln_signing::check_policy(&bundle.manifest, &policy)?;
    let manifest = bundle.manifest.clone();
    let entries = bundle.spooled_entries.as_ref().map_or(0, |s| s.len()) + manifest.entries.len();
    let signer = bundle.signer.fingerprint();
    bundle.verify_blobs()?;
    Ok(Verified {
        manifest,
        entries,
        signer,
    })
}

pub fn run(args: VerifyArgs) -> Result<()> {
    let trust = load_trust(&args.trust)?;
    let shown = args.bundle.display().to_string();
    match verify(&args, &trust) {
        Ok(v) => {
            let m = &v.manifest;
            if args.json {
                let out = serde_json::json!({
                    "ok": true,
                    "bundle": shown,
                    "hostgroup": m.hostgroup,
                    "version": m.version,
                    "signer": v.signer,
                    "created": m.created,
                    "expires": m.expires,
                    "entries": v.entries + m.templates.len(),
                    "blobs": m.blobs.len(),
                });
                super::print_json(&out)?;
            } else {
                println!(
                    "OK {shown}: hostgroup {} version {}, signed by {}, {} entries and {} blobs checked, expires {}",
                    m.hostgroup,
                    m.version,
                    v.signer,
                    v.entries + m.templates.len(),
                    m.blobs.len(),
                    m.expires
                );
            }
            Ok(())
        }
        Err(e) => {
            if args.json {
                let out = serde_json::json!({
                    "ok": false,
                    "bundle": shown,
                    "error": e.to_string(),
                    "exit_code": e.exit_code(),
                });
                super::print_json(&out)?;
            }
            Err(anyhow::Error::new(e).context(format!("refusing {shown}")))
        }
    }
}
