//! Packages: the bundle's `.deb` blobs installed offline in one `dpkg -i` call inside the root
//! (dpkg orders them itself), with a policy-rc.d that exits 101 so no maintainer script starts a
//! service (the services phase decides that). Packages already installed at the bundle's version
//! are skipped, so a rerun after a crash installs only what is left.
//!
//! dpkg runs with `--force-unsafe-io`: it does not fsync each unpacked file before its rename
//! (most of its time on a fresh root); one `syncfs` per filesystem at the end of the phase makes
//! everything durable instead. The journal marks the window in between ([`Record::Unsynced`]):
//! a rerun after a crash inside it reinstalls every package of the bundle, since dpkg's own
//! database (which it still syncs) may call installed a package whose files a power loss emptied.
//!
//! [`Record::Unsynced`]: super::journal::Record::Unsynced

use std::collections::BTreeMap;
use std::time::Duration;

use kiln_signing::Package;

use super::journal::Journal;
use super::process::Program;
use super::{ApplyError, Ctx};
use crate::fsroot::Kind;

/// Where packages write: each of these that exists in the root gets a `syncfs` (once per
/// filesystem) at the end of the phase.
const PACKAGE_TREES: &[&str] = &["/", "/usr", "/etc", "/var", "/opt", "/boot", "/srv"];

const DPKG_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Passes of `dpkg -i` over what is still missing (each must make progress).
const MAX_PASSES: usize = 8;
const STATUS_LIMIT: u64 = 256 << 20;
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
/// Where an existing policy-rc.d waits while ours is in place.
const POLICY_SAVED: &str = "/usr/sbin/policy-rc.d.kiln-saved";
const POLICY_SCRIPT: &[u8] =
    b"#!/bin/sh\n# kiln-firstboot: no service starts while packages install\nexit 101\n";

/// Installed packages of the root: name -> (version, architecture), from dpkg's status file.
pub fn installed(ctx: &Ctx) -> Result<BTreeMap<String, (String, String)>, ApplyError> {
    let text = ctx
        .root
        .read_text("/var/lib/dpkg/status", STATUS_LIMIT)
        .map_err(|e| ApplyError::step("packages", "/var/lib/dpkg/status", e))?
        .unwrap_or_default();
    Ok(parse_status(&text))
}

/// Whether dpkg left a package half-way (unpacked, half-installed, half-configured, triggers).
fn interrupted(ctx: &Ctx) -> Result<bool, ApplyError> {
    let text = ctx
        .root
        .read_text("/var/lib/dpkg/status", STATUS_LIMIT)
        .map_err(|e| ApplyError::step("packages", "/var/lib/dpkg/status", e))?
        .unwrap_or_default();
    Ok(text.lines().any(|l| {
        l.strip_prefix("Status:").is_some_and(|s| {
            let state = s.split_whitespace().last().unwrap_or("");
            matches!(
                state,
                "half-installed"
                    | "unpacked"
                    | "half-configured"
                    | "triggers-awaited"
                    | "triggers-pending"
            )
        })
    }))
}

pub use kiln_signing::debian::parse_dpkg_status as parse_status;

/// The packages still to install (resolved and not installed at their version).
pub fn todo<'m>(
    have: &BTreeMap<String, (String, String)>,
    packages: &'m [Package],
) -> Vec<&'m Package> {
    packages
        .iter()
        .filter(|p| p.digest.is_some())
        .filter(|p| match (have.get(&p.name), &p.version) {
            (None, _) => true,
            (Some((v, _)), Some(want)) => v != want,
            (Some(_), None) => false,
        })
        .collect()
}

pub fn apply_packages(ctx: &Ctx, journal: &mut Journal) -> Result<String, ApplyError> {
    let unresolved: Vec<&str> = ctx
        .manifest
        .packages
        .iter()
        .filter(|p| p.digest.is_none())
        .map(|p| p.name.as_str())
        .collect();
    for name in &unresolved {
        ctx.warn(&format!(
            "package {name} was not resolved at build time (no .deb in the bundle): skipped"
        ));
    }
    let have = installed(ctx)?;
    let resolved = ctx.manifest.packages.len() - unresolved.len();
    let todo = if journal.left_unsynced("packages") {
        ctx.warn(
            "an earlier run was interrupted before the packages it installed were synced: reinstalling all of them",
        );
        ctx.manifest
            .packages
            .iter()
            .filter(|p| p.digest.is_some())
            .collect()
    } else {
        todo(&have, &ctx.manifest.packages)
    };
    if todo.is_empty() {
        // A crash after dpkg finished but before our policy-rc.d went: put things back.
        restore_policy_rc_d(ctx)?;
        return Ok(format!(
            "{resolved} already installed, {} unresolved",
            unresolved.len()
        ));
    }
    install_policy_rc_d(ctx)?;
    journal.unsynced("packages").map_err(ApplyError::journal)?;
    let result = install(ctx, &todo);
    // Durable before the journal says so (also after a failure: what dpkg did stays done).
    let synced = sync_package_trees(ctx);
    let restored = restore_policy_rc_d(ctx);
    let last_failure = result?;
    synced?;
    journal.synced("packages").map_err(ApplyError::journal)?;
    let after = installed(ctx)?;
    let missing: Vec<&str> = self::todo(&after, &ctx.manifest.packages)
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(match last_failure {
            Some(done) => ApplyError::Tool {
                step: "packages",
                what: format!("dpkg -i (not installed: {})", missing.join(" ")),
                status: done.describe(DPKG_TIMEOUT),
                output: done.output,
            },
            None => ApplyError::step(
                "packages",
                "dpkg -i",
                format!("not installed afterwards: {}", missing.join(" ")),
            ),
        });
    }
    restored?;
    Ok(format!(
        "{} installed, {} already there, {} unresolved",
        todo.len(),
        resolved - todo.len(),
        unresolved.len()
    ))
}

/// `syncfs` of every filesystem packages wrote to, each once.
fn sync_package_trees(ctx: &Ctx) -> Result<(), ApplyError> {
    let mut seen: Vec<u64> = Vec::new();
    for dir in PACKAGE_TREES {
        let fd = match ctx.root.open_dir(dir) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ApplyError::step("packages", dir, e)),
        };
        let dev = nix::sys::stat::fstat(&fd)
            .map_err(|e| ApplyError::step("packages", dir, e))?
            .st_dev;
        if seen.contains(&dev) {
            continue;
        }
        seen.push(dev);
        nix::unistd::syncfs(&fd).map_err(|e| ApplyError::step("packages", dir, e))?;
    }
    Ok(())
}

/// dpkg over `todo`, in passes; the last failure of dpkg, if any (the caller checks what got
/// installed).
fn install(ctx: &Ctx, todo: &[&Package]) -> Result<Option<super::process::Finished>, ApplyError> {
    if interrupted(ctx)? {
        // dpkg itself was killed mid-way (a crash of ours takes it down too): let it finish
        // what it had unpacked before installing again.
        ctx.warn("dpkg was interrupted in an earlier run: dpkg --configure -a");
        let done = configure_pending(ctx).run();
        if let Ok(done) = &done {
            if !done.success() {
                return Err(ApplyError::Tool {
                    step: "packages",
                    what: "dpkg --configure -a".into(),
                    status: done.describe(DPKG_TIMEOUT),
                    output: done.output.clone(),
                });
            }
        }
        done.map_err(|e| ApplyError::step("packages", "dpkg --configure -a", e))?;
    }
    // One `dpkg -i` cannot install a package whose Pre-Depends is in the same set: the
    // dependency is only unpacked when dpkg gets to it (seen: cron pre-depends on
    // cron-daemon-common). So install in passes, each over what is still missing, while a pass
    // makes progress, then let dpkg configure whatever it left unpacked.
    let mut remaining = todo.to_vec();
    let mut last_failure = None;
    for pass in 1..=MAX_PASSES {
        let done = dpkg_install(ctx, &remaining, pass)?;
        let after = installed(ctx)?;
        let still = self::todo(&after, &ctx.manifest.packages);
        if done.success() && still.is_empty() {
            last_failure = None;
            break;
        }
        if !done.success() {
            last_failure = Some(done);
        }
        if still.is_empty() || still.len() >= remaining.len() {
            break;
        }
        remaining = still;
    }
    if interrupted(ctx)? {
        let done = configure_pending(ctx).run();
        if let Ok(d) = done {
            if !d.success() {
                last_failure = Some(d);
            }
        }
    }
    Ok(last_failure)
}

/// One `dpkg -i` over `packages` in the root.
fn dpkg_install(
    ctx: &Ctx,
    packages: &[&Package],
    pass: usize,
) -> Result<super::process::Finished, ApplyError> {
    let mut argv = vec![
        "dpkg".to_string(),
        "--force-unsafe-io".into(),
        "--force-confdef".into(),
        "--force-confold".into(),
        "-i".into(),
    ];
    argv.extend(
        packages
            .iter()
            .filter_map(|p| p.digest.as_deref())
            .map(|d| ctx.staged_blob(d)),
    );
    ctx.log.info(&format!(
        "  dpkg -i {} packages, pass {pass} ({})",
        packages.len(),
        packages
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let done = Program::new(&argv, DPKG_TIMEOUT)
        .in_root(ctx.root.path())
        .run()
        .map_err(|e| ApplyError::step("packages", "dpkg -i", format!("running dpkg: {e}")))?;
    if done.left_running > 0 {
        ctx.warn(&format!(
            "dpkg -i (maintainer scripts) left {} process(es) running: killed",
            done.left_running
        ));
    }
    Ok(done)
}

fn install_policy_rc_d(ctx: &Ctx) -> Result<(), ApplyError> {
    let err = |e: std::io::Error| ApplyError::step("packages", POLICY_RC_D, e);
    let parent = ctx
        .root
        .parent(POLICY_RC_D, true)
        .map_err(err)?
        .ok_or_else(|| err(std::io::Error::other("no /usr/sbin")))?;
    if let Some(m) = parent.lstat().map_err(err)? {
        let ours = m.kind == Kind::File
            && ctx
                .root
                .read_text(POLICY_RC_D, 4096)
                .ok()
                .flatten()
                .is_some_and(|t| t.as_bytes() == POLICY_SCRIPT);
        let saved = ctx.root.parent(POLICY_SAVED, false).map_err(err)?;
        let saved_exists = match &saved {
            Some(p) => p.lstat().map_err(err)?.is_some(),
            None => false,
        };
        if !ours && !saved_exists {
            nix::fcntl::renameat(
                &parent.dir,
                parent.name.as_str(),
                &parent.dir,
                "policy-rc.d.kiln-saved",
            )
            .map_err(|e| err(e.into()))?;
        }
    }
    super::entries::write_bytes(&parent, POLICY_SCRIPT, 0o755, 0, 0).map_err(err)?;
    Ok(())
}

fn restore_policy_rc_d(ctx: &Ctx) -> Result<(), ApplyError> {
    let err = |e: std::io::Error| ApplyError::step("packages", POLICY_RC_D, e);
    let parent = ctx
        .root
        .parent(POLICY_RC_D, false)
        .map_err(err)?
        .ok_or_else(|| err(std::io::Error::other("no /usr/sbin")))?;
    let saved = parent.lstat_name("policy-rc.d.kiln-saved").map_err(err)?;
    if saved.is_some() {
        nix::fcntl::renameat(
            &parent.dir,
            "policy-rc.d.kiln-saved",
            &parent.dir,
            parent.name.as_str(),
        )
        .map_err(|e| err(e.into()))?;
        nix::unistd::fsync(&parent.dir).map_err(|e| err(e.into()))?;
    } else if is_ours(ctx, &parent).map_err(err)? {
        parent.remove(Kind::File).map_err(err)?;
    }
    Ok(())
}

/// Whether the policy-rc.d in place is the one this engine writes.
fn is_ours(ctx: &Ctx, parent: &crate::fsroot::Parent) -> std::io::Result<bool> {
    Ok(match parent.lstat()? {
        Some(m) if m.kind == Kind::File => ctx
            .root
            .read_text(POLICY_RC_D, 4096)
            .ok()
            .flatten()
            .is_some_and(|t| t.as_bytes() == POLICY_SCRIPT),
        _ => false,
    })
}

/// `dpkg --configure -a` in the root: finishes what an interrupted dpkg had unpacked.
fn configure_pending(ctx: &Ctx) -> Program {
    Program::new(
        &[
            "dpkg",
            "--force-unsafe-io",
            "--force-confdef",
            "--force-confold",
            "--configure",
            "-a",
        ],
        DPKG_TIMEOUT,
    )
    .in_root(ctx.root.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_todo() {
        let text =
            "Package: a\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\n\n\
                    Package: b\nStatus: deinstall ok config-files\nVersion: 2\n\n\
                    Package: c\nStatus: install ok installed\nVersion: 3\nArchitecture: all\n";
        let have = parse_status(text);
        assert_eq!(have.len(), 2);
        let pkg = |name: &str, version: Option<&str>, digest: bool| Package {
            name: name.into(),
            version: version.map(Into::into),
            arch: None,
            digest: digest.then(|| "0".repeat(64)),
            size: None,
        };
        let ps = [
            pkg("a", Some("1.0"), true),
            pkg("b", None, true),
            pkg("c", Some("4"), true),
            pkg("d", None, false),
        ];
        let names: Vec<&str> = todo(&have, &ps).iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
    }
}
