//! `kiln schema (hostgroup|layer)` and `kiln schema --out DIR`: the JSON Schemas of the
//! configuration's files, for yaml-language-server and linters (docs/config.md).

use anyhow::{Context, Result};

use crate::cli::{SchemaArgs, SchemaKind};
use crate::config::schema;

pub fn run(args: SchemaArgs) -> Result<()> {
    let config = super::load_config(&args.config.config)?;
    let text = |kind| -> Result<String> {
        let v = match kind {
            SchemaKind::Hostgroup => schema::hostgroup(&config),
            SchemaKind::Layer => schema::layer(&config),
        };
        Ok(serde_json::to_string_pretty(&v)? + "\n")
    };
    let Some(dir) = &args.out else {
        if let Some(kind) = args.kind {
            print!("{}", text(kind)?);
        }
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (kind, name) in [
        (SchemaKind::Hostgroup, "hostgroup.schema.json"),
        (SchemaKind::Layer, "layer.schema.json"),
    ] {
        let path = dir.join(name);
        crate::base::write_atomic(&path, text(kind)?.as_bytes())?;
        println!("{}", path.display());
    }
    Ok(())
}
