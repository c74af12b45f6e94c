//! One module per subcommand, each with its own `run()`.

mod bake;
mod base;
mod build;
mod cloud_init;
mod diff;
mod inspect;
mod keygen;
mod man;
mod render;
mod rollout;
mod schema;
mod validate;
mod verify;

pub use diff::{diff_manifests, ManifestDiff};

use anyhow::Result;

use crate::cli::Command;

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Keygen(a) => keygen::run(a),
        Command::Validate(a) => validate::run(a),
        Command::Render(a) => render::run(a),
        Command::Build(a) => build::run(a),
        Command::Base(c) => base::run(c),
        Command::Bake(a) => bake::run(a),
        Command::CloudInit(a) => cloud_init::run(a),
        Command::Rollout(c) => rollout::run(c),
        Command::Verify(a) => verify::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Schema(a) => schema::run(a),
        Command::Man(a) => man::run(a),
        Command::Completions(a) => man::completions(a),
    }
}

/// The version of the JSON kiln prints: every `--json` output carries it as `schema_version`
/// (in each object of an array). It grows when a field changes meaning or goes away; new
/// fields may appear without it changing.
pub const JSON_SCHEMA_VERSION: u64 = 1;

/// Prints `value` as pretty JSON, with `schema_version` in it (or in each of its objects when
/// it is an array).
pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut v = serde_json::to_value(value)?;
    let stamp = |o: &mut serde_json::Value| {
        if let Some(o) = o.as_object_mut() {
            o.insert("schema_version".into(), JSON_SCHEMA_VERSION.into());
        }
    };
    match &mut v {
        serde_json::Value::Array(items) => items.iter_mut().for_each(stamp),
        other => stamp(other),
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Load the configuration, turning diagnostics into a validation failure (exit 1) that prints
/// one `file:line:column: reason` line each.
pub(crate) fn load_config(dir: &std::path::Path) -> Result<crate::config::Config> {
    crate::config::load(dir).map_err(|d| diagnostics_error(&d))
}

pub(crate) fn diagnostics_error(d: &crate::config::Diagnostics) -> anyhow::Error {
    eprint!("{d}");
    if !d.to_string().ends_with('\n') {
        eprintln!();
    }
    let n = d.0.len();
    anyhow::Error::new(crate::Exit {
        code: kiln_signing::exit::FAILURE,
        message: format!(
            "{n} configuration problem{} found",
            if n == 1 { "" } else { "s" }
        ),
    })
}
