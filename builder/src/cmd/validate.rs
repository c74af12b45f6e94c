//! `kiln validate`: check every hostgroup and layer.

use anyhow::Result;

use crate::cli::ValidateArgs;
use crate::config::Diagnostic;

fn item(d: &Diagnostic) -> serde_json::Value {
    serde_json::json!({
        "file": d.span.file.to_string_lossy(),
        "line": d.span.line,
        "column": d.span.column,
        "message": d.message,
    })
}

pub fn run(args: ValidateArgs) -> Result<()> {
    let (diags, warnings) = match crate::config::load(&args.config.config) {
        Ok(config) => (config.validate_all(), config.warnings_all()),
        Err(d) => (d, Default::default()),
    };
    // Warnings (a literal secret in a static file) go to stderr and do not fail validation,
    // unless --deny-warnings.
    for w in &warnings.0 {
        eprintln!("{}: warning: {}", w.span, w.message);
    }
    let denied = args.deny_warnings && !warnings.is_empty();
    if args.json {
        let problems: Vec<_> = diags.0.iter().map(item).collect();
        let warnings: Vec<_> = warnings.0.iter().map(item).collect();
        let ok = problems.is_empty() && !denied;
        super::print_json(&serde_json::json!({
            "ok": ok,
            "problems": problems,
            "warnings": warnings,
        }))?;
        if !ok {
            return Err(crate::Exit {
                code: 1,
                message: String::new(),
            }
            .into());
        }
        return Ok(());
    }
    if !diags.0.is_empty() {
        return Err(super::diagnostics_error(&diags));
    }
    if denied {
        let n = warnings.len();
        return Err(crate::Exit {
            code: 1,
            message: format!(
                "{n} warning{} found, and --deny-warnings makes warnings errors",
                if n == 1 { "" } else { "s" }
            ),
        }
        .into());
    }
    println!("configuration is valid");
    Ok(())
}
