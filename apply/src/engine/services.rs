//! Services: enable/disable with `systemctl` (offline with `--root` unless the root is the
//! running system), and on a live system only: daemon-reload, start/stop per declared state,
//! restart/reload of services whose files changed content.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use kiln_signing::{EntryKind, ServiceState};

use super::process::Program;
use super::{ApplyError, Ctx};

const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Whether `root` is the running system under systemd (then units are started and restarted).
pub fn is_live(root: &Path) -> bool {
    root == Path::new("/") && Path::new("/run/systemd/system").is_dir()
}

fn systemctl(ctx: &Ctx, args: &[&str]) -> Program {
    let mut argv = vec!["systemctl".to_string()];
    if !ctx.live {
        argv.push("--root".into());
        argv.push(ctx.root.path().display().to_string());
    }
    argv.extend(args.iter().map(|a| a.to_string()));
    Program::new(&argv, SYSTEMCTL_TIMEOUT)
}

fn run(ctx: &Ctx, step: &'static str, args: &[&str]) -> Result<(), ApplyError> {
    let mut owned: Vec<&str> = Vec::with_capacity(args.len() + 1);
    if ctx.no_block && step == "runtime" && args.first() != Some(&"daemon-reload") {
        owned.push("--no-block");
    }
    owned.extend_from_slice(args);
    let args = &owned[..];
    let program = systemctl(ctx, args);
    ctx.log.info(&format!("  {}", program.display()));
    let done = program.run().map_err(|e| {
        ApplyError::step(step, &program.display(), format!("running systemctl: {e}"))
    })?;
    if !done.success() {
        return Err(ApplyError::Tool {
            step,
            what: program.display(),
            status: done.describe(SYSTEMCTL_TIMEOUT),
            output: done.output,
        });
    }
    Ok(())
}

/// `systemctl is-enabled NAME`: its one-word answer ("enabled", "disabled", "static", ...),
/// or "not-found".
pub fn enablement(ctx: &Ctx, name: &str) -> Result<String, ApplyError> {
    let program = systemctl(ctx, &["is-enabled", "--", name]);
    let done = program
        .run()
        .map_err(|e| ApplyError::step("services", name, format!("running systemctl: {e}")))?;
    let word = done
        .output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    if word.contains("No such file") || word.contains("not found") || word.is_empty() {
        return Ok("not-found".into());
    }
    Ok(word)
}

/// Enables or disables each declared service; already right: nothing runs.
pub fn apply_enablement(ctx: &Ctx) -> Result<String, ApplyError> {
    let (mut changed, mut unchanged) = (0, 0);
    for s in &ctx.manifest.services {
        let now = enablement(ctx, &s.name)?;
        if s.enabled {
            match now.as_str() {
                "enabled" | "enabled-runtime" | "static" | "indirect" | "generated" | "alias"
                | "transient" => unchanged += 1,
                "masked" | "masked-runtime" => {
                    return Err(ApplyError::step(
                        "services",
                        &s.name,
                        "is masked; the bundle wants it enabled",
                    ))
                }
                "not-found" => {
                    return Err(ApplyError::step(
                        "services",
                        &s.name,
                        "no such unit in the root (ship its unit file or its package)",
                    ))
                }
                _ => {
                    run(ctx, "services", &["enable", "--", &s.name])?;
                    changed += 1;
                }
            }
        } else {
            match now.as_str() {
                "disabled" | "not-found" | "static" | "masked" | "masked-runtime" | "indirect"
                | "generated" | "transient" => unchanged += 1,
                _ => {
                    run(ctx, "services", &["disable", "--", &s.name])?;
                    changed += 1;
                }
            }
        }
    }
    Ok(format!(
        "{changed} changed, {unchanged} unchanged{}",
        if ctx.live {
            ""
        } else {
            " (offline, systemctl --root)"
        }
    ))
}

/// Services to restart and to reload because a file or rendered template naming them changed
/// content (in this run or, per the journal, in an interrupted earlier one).
pub fn hooks(
    ctx: &Ctx,
    changed: &BTreeSet<String>,
) -> Result<(BTreeSet<String>, BTreeSet<String>), ApplyError> {
    let mut restart = BTreeSet::new();
    let mut reload = BTreeSet::new();
    for e in ctx.entries() {
        let e = e?;
        if let EntryKind::File {
            restart: r,
            reload: l,
            ..
        } = &e.kind
        {
            if changed.contains(&e.path) {
                restart.extend(r.iter().cloned());
                reload.extend(l.iter().cloned());
            }
        }
    }
    // Rendered dynamic templates are journaled the same way when their content changes.
    for t in &ctx.manifest.templates {
        if changed.contains(&t.path) {
            restart.extend(t.restart.iter().cloned());
            reload.extend(t.reload.iter().cloned());
        }
    }
    let reload = reload.difference(&restart).cloned().collect();
    Ok((restart, reload))
}

/// On a live system: daemon-reload, then each declared service to its state (a running one that
/// must restart is restarted), then the other restarts and reloads of changed files (only for
/// services that are running: try-restart, try-reload-or-restart).
pub fn apply_runtime(ctx: &Ctx, changed: &BTreeSet<String>) -> Result<String, ApplyError> {
    let (restart, reload) = hooks(ctx, changed)?;
    run(ctx, "runtime", &["daemon-reload"])?;
    let mut done = Vec::new();
    let mut handled = BTreeSet::new();
    for s in &ctx.manifest.services {
        handled.insert(s.name.clone());
        match s.state {
            ServiceState::Dead => {
                run(ctx, "runtime", &["stop", "--", &s.name])?;
                done.push(format!("stopped {}", s.name));
            }
            ServiceState::Running if restart.contains(&s.name) => {
                run(ctx, "runtime", &["restart", "--", &s.name])?;
                done.push(format!("restarted {}", s.name));
            }
            ServiceState::Running => {
                run(ctx, "runtime", &["start", "--", &s.name])?;
                if reload.contains(&s.name) {
                    run(ctx, "runtime", &["try-reload-or-restart", "--", &s.name])?;
                }
                done.push(format!("started {}", s.name));
            }
        }
    }
    for name in restart.iter().filter(|n| !handled.contains(*n)) {
        run(ctx, "runtime", &["try-restart", "--", name])?;
        done.push(format!("try-restarted {name}"));
    }
    for name in reload.iter().filter(|n| !handled.contains(*n)) {
        run(ctx, "runtime", &["try-reload-or-restart", "--", name])?;
        done.push(format!("reloaded {name}"));
    }
    Ok(if done.is_empty() {
        "nothing to do".into()
    } else {
        done.join(", ")
    })
}
