//! `kiln man` and `kiln completions`: generated from the clap definitions, so they never drift.
//! kiln-firstboot's pages and completions are made here too, from its own definition: the
//! static binary that ships in every image stays free of the generators.

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;
use kiln_signing::exit;

use crate::cli::{Cli, CompletionsArgs, ManArgs, Program};

pub fn run(args: ManArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut written = Vec::new();
    for program in [Program::Kiln, Program::KilnFirstboot] {
        let root = program.command();
        let name = root.get_name().to_string();
        write_page(&root, &name, program, &args.out, &mut written)?;
        for sub in root.get_subcommands() {
            let sub_name = format!("{name}-{}", sub.get_name());
            let sub = sub.clone().name(sub_name.clone());
            write_page(&sub, &sub_name, program, &args.out, &mut written)?;
        }
    }
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}

/// A page as clap_mangen lays it out, with an EXIT STATUS section before VERSION.
fn write_page(
    cmd: &clap::Command,
    name: &str,
    program: Program,
    dir: &std::path::Path,
    written: &mut Vec<std::path::PathBuf>,
) -> Result<()> {
    let path = dir.join(format!("{name}.1"));
    let man = Man::new(cmd.clone());
    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut buf)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut buf)?;
    }
    if cmd.get_after_help().is_some() || cmd.get_after_long_help().is_some() {
        man.render_extra_section(&mut buf)?;
    }
    exit_status(program).to_writer(&mut buf)?;
    if cmd.get_version().is_some() {
        man.render_version_section(&mut buf)?;
    }
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    Ok(())
}

/// The exit codes (docs/reference.md's table, `kiln_signing::exit::MEANINGS`).
fn exit_status(program: Program) -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["EXIT STATUS"]);
    let who = match program {
        Program::Kiln => {
            "kiln verify and kiln bake refuse a bundle with the codes of kiln-firstboot apply \
             (10 to 17); other failures exit 1, usage errors 2, and kiln rollout wait has 3 and \
             4 of its own (below)."
        }
        Program::KilnFirstboot => {
            "kiln-firstboot apply refuses a bundle with its own code for each kind of \
             refusal, the same as kiln verify."
        }
    };
    r.text([roman(who)]);
    for (code, meaning) in exit::MEANINGS {
        r.control("TP", []);
        r.text([bold(code.to_string())]);
        r.text([roman(meaning.replace('`', ""))]);
    }
    if program == Program::Kiln {
        r.text([roman(
            "kiln rollout wait exits 3 as soon as a node of the version reports failure, and 4 \
             when the timeout passes first.",
        )]);
    }
    r
}

pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut cmd = args.program.command();
    let name = cmd.get_name().to_string();
    // Into a buffer, then print!: clap_complete panics on a write error, print! on a closed
    // pipe ends quietly (main's broken-pipe hook).
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, name, &mut buf);
    print!("{}", String::from_utf8_lossy(&buf));
    Ok(())
}

impl Program {
    fn command(self) -> clap::Command {
        match self {
            Program::Kiln => Cli::command(),
            Program::KilnFirstboot => kiln_apply::cli::Cli::command(),
        }
    }
}
