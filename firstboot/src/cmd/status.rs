//! `kiln-firstboot status`: what the last apply did, from the state file, and whether an apply
//! was interrupted (a journal without a final state). Exit 0 when the last apply succeeded,
//! 21 when it failed or was interrupted, 1 when nothing was ever applied.

use anyhow::{Context, Result};
use kiln_signing::exit;
use serde_json::json;

use kiln_apply::cli::StatusArgs;
use kiln_apply::engine::journal;
use kiln_apply::fsroot::Root;
use kiln_apply::state::{Outcome, State};

pub fn run(args: StatusArgs) -> Result<i32> {
    let root = Root::open(&args.root)
        .with_context(|| format!("opening the root {}", args.root.display()))?;
    let state = State::read(&root).context("reading the state file")?;
    let pending = journal::read(&root)
        .context("reading the journal")?
        .map(|(j, _)| j);
    let code = match (&state, &pending) {
        (_, Some(_)) => exit::APPLY,
        (Some(s), None) if s.result == Outcome::Success => exit::OK,
        (Some(_), None) => exit::APPLY,
        (None, None) => exit::FAILURE,
    };
    if args.json {
        let v = json!({
            "state": state,
            "interrupted": pending.as_ref().map(|j| json!({
                "sha256": j.sha256, "hostgroup": j.hostgroup, "version": j.version, "started_at": j.started_at,
            })),
            "exit_code": code,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(code);
    }
    match &state {
        None => println!("nothing applied to {}", args.root.display()),
        Some(s) => {
            let result = match s.result {
                Outcome::Success => "applied",
                Outcome::Failure => "FAILED",
            };
            println!("{result}: {} at {}", s.describe(), s.applied_at);
            println!("source: {}", s.source);
            println!("signer: {}", s.signer);
            if let Some(e) = &s.error {
                println!("error (exit {}): {e}", s.exit_code);
            }
            for step in &s.steps {
                println!(
                    "  {:<12} {:>8.2}s  {}",
                    step.name, step.seconds, step.summary
                );
            }
            for c in &s.commands {
                println!("  command {} {} ({:.2}s)", c.name, c.status, c.seconds);
            }
            for w in &s.warnings {
                println!("  warning: {w}");
            }
        }
    }
    if let Some(j) = &pending {
        println!(
            "interrupted: {} version {} (sha256 {}) started {} did not finish; rerun the same apply to finish it",
            j.hostgroup, j.version, j.sha256, j.started_at
        );
    }
    Ok(code)
}
