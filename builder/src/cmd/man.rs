//! `kiln man` and `kiln completions`: generated from the clap definitions, so they never drift.

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};

pub fn run(args: ManArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let root = Cli::command();
    let mut written = Vec::new();
    write_page(&root, "kiln", &args.out, &mut written)?;
    for sub in root.get_subcommands() {
        let name = format!("kiln-{}", sub.get_name());
        let sub = sub.clone().name(name.clone());
        write_page(&sub, &name, &args.out, &mut written)?;
    }
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}

fn write_page(
    cmd: &clap::Command,
    name: &str,
    dir: &std::path::Path,
    written: &mut Vec<std::path::PathBuf>,
) -> Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut buf)
        .context("rendering man page")?;
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    Ok(())
}

pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut cmd = Cli::command();
    // Into a buffer, then print!: clap_complete panics on a write error, print! on a closed
    // pipe ends quietly (main's broken-pipe hook).
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "kiln", &mut buf);
    print!("{}", String::from_utf8_lossy(&buf));
    Ok(())
}
