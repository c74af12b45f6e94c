//! `kiln validate`: check every hostgroup and layer.

use anyhow::Result;

use crate::cli::ValidateArgs;

pub fn run(args: ValidateArgs) -> Result<()> {
    let (diags, warnings) = match crate::config::load(&args.config.config) {
        Ok(config) => (config.validate_all(), config.warnings_all()),
        Err(d) => (d, Default::default()),
    };
    // Warnings (a literal secret in a static file) go to stderr and do not fail validation.
    for w in &warnings.0 {
        eprintln!("{}: warning: {}", w.span, w.message);
    }
    if args.json {
        let items: Vec<_> = diags
            .0
            .iter()
            .map(|d| {
                serde_json::json!({
                    "file": d.span.file.to_string_lossy(),
                    "line": d.span.line,
                    "column": d.span.column,
                    "message": d.message,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "ok": items.is_empty(), "problems": items })
            )?
        );
        if !items.is_empty() {
            return Err(crate::Exit {
                code: 1,
                message: String::new(),
            }
            .into());
        }
        return Ok(());
    }
    if diags.0.is_empty() {
        println!("configuration is valid");
        return Ok(());
    }
    Err(super::diagnostics_error(&diags))
}
