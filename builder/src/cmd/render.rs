//! `kiln render`: the resolved hostgroup as YAML, optionally with provenance.

use anyhow::Result;

use crate::cli::RenderArgs;

pub fn run(args: RenderArgs) -> Result<()> {
    let config = super::load_config(&args.config.config)?;
    let resolved = config
        .resolve(&args.hostgroup)
        .map_err(|d| super::diagnostics_error(&d))?;
    print!("{}", resolved.to_yaml(args.explain));
    Ok(())
}
