//! The bundle's commands, in order, each with its timeout, inside the root (contained unless
//! the root is `/`: see [`super::contain`]). `creates` skips a command whose product exists;
//! the journal skips one that finished in an interrupted earlier run. A failure or timeout
//! fails the apply, with the last 64 KiB of the command's output kept for the state file. What
//! a command leaves running is killed when it ends, and named in a warning.

use std::time::Duration;

use super::journal::{secs, Journal, Record};
use super::process::Program;
use super::{ApplyError, Ctx};
use crate::state::CommandResult;

fn result_of(r: &Record) -> Option<CommandResult> {
    match r {
        Record::Command {
            name,
            status,
            exit_code,
            seconds,
            output,
            truncated,
        } => Some(CommandResult {
            name: name.clone(),
            status: status.clone(),
            exit_code: *exit_code,
            seconds: *seconds,
            output: output.clone(),
            truncated: *truncated,
        }),
        _ => None,
    }
}

fn record_of(c: &CommandResult) -> Record {
    Record::Command {
        name: c.name.clone(),
        status: c.status.clone(),
        exit_code: c.exit_code,
        seconds: c.seconds,
        output: c.output.clone(),
        truncated: c.truncated,
    }
}

/// Runs the commands; every result (including the failing one) is pushed to `results`.
pub fn apply_commands(
    ctx: &Ctx,
    journal: &mut Journal,
    results: &mut Vec<CommandResult>,
) -> Result<String, ApplyError> {
    let (mut ran, mut skipped) = (0, 0);
    for c in &ctx.manifest.commands {
        if let Some(done) = journal.command_result(&c.name).and_then(result_of) {
            ctx.log.info(&format!(
                "  {}: done in an earlier run ({})",
                c.name, done.status
            ));
            results.push(done);
            skipped += 1;
            continue;
        }
        if let Some(path) = &c.creates {
            let exists = ctx
                .root
                .exists(path)
                .map_err(|e| ApplyError::step("commands", &c.name, e))?;
            if exists {
                ctx.log
                    .info(&format!("  {}: skipped, {path} exists", c.name));
                let r = CommandResult {
                    name: c.name.clone(),
                    status: "skipped".into(),
                    exit_code: None,
                    seconds: 0.0,
                    output: String::new(),
                    truncated: false,
                };
                journal
                    .command_done(record_of(&r))
                    .map_err(ApplyError::journal)?;
                results.push(r);
                skipped += 1;
                continue;
            }
        }
        if journal.command_interrupted(&c.name) {
            ctx.warn(&format!("command {} did not finish in an earlier run (failed or interrupted): running it again", c.name));
        }
        journal
            .command_started(&c.name)
            .map_err(ApplyError::journal)?;
        let timeout = Duration::from_secs(c.timeout_secs);
        let program = Program::new(&c.argv, timeout)
            .in_root(ctx.root.path())
            .env("KILN_HOSTGROUP", &ctx.manifest.hostgroup)
            .env("KILN_VERSION", &ctx.manifest.version.to_string());
        ctx.log.info(&format!(
            "  {}: {} (timeout {}s)",
            c.name,
            program.display(),
            c.timeout_secs
        ));
        let done = program.run().map_err(|e| {
            ApplyError::step(
                "commands",
                &c.name,
                format!("cannot run {}: {e}", c.argv[0]),
            )
        })?;
        if let Some(why) = &done.untracked {
            ctx.log.info(&format!(
                "  {}: only its process group was tracked (no cgroup: {why})",
                c.name
            ));
        }
        if done.left_running > 0 {
            ctx.warn(&format!(
                "command {} left {} process(es) running when it ended: killed",
                c.name, done.left_running
            ));
        }
        let status = if done.timed_out {
            "timed_out"
        } else if done.success() {
            "ok"
        } else {
            "failed"
        };
        let r = CommandResult {
            name: c.name.clone(),
            status: status.into(),
            exit_code: done.code,
            seconds: secs(done.duration),
            output: done.output.clone(),
            truncated: done.truncated,
        };
        results.push(r.clone());
        if !done.success() {
            return Err(ApplyError::Tool {
                step: "commands",
                what: format!("command {}", c.name),
                status: done.describe(timeout),
                output: done.output,
            });
        }
        journal
            .command_done(record_of(&r))
            .map_err(ApplyError::journal)?;
        ran += 1;
    }
    Ok(format!("{ran} ran, {skipped} skipped"))
}
