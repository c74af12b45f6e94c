//! kiln-builder: everything `kiln` does, as a library; `main.rs` is a thin shim.

pub mod bake;
pub mod base;
pub mod cli;
pub mod cloudinit;
pub mod cmd;
pub mod config;
pub mod packages;
pub mod plan;
pub mod rollout;
pub mod sbom;

use clap::Parser;
use kiln_signing::{exit, BundleError};

/// A refusal that carries its own exit code (validation errors, a diff with --exit-code).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

/// Parse arguments, run the command, print errors with every cause, return the exit code.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    init_logging(cli.verbose);
    match cmd::run(cli.command) {
        Ok(()) => exit::OK,
        Err(err) => {
            let code = exit_code_of(&err);
            // An Exit with an empty message has already printed what it had to say.
            if !(matches!(err.downcast_ref::<Exit>(), Some(e) if e.message.is_empty())) {
                eprintln!("kiln: error: {err}");
                for cause in err.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
            }
            code
        }
    }
}

/// The exit code for an error: the first typed refusal found in its chain decides.
pub fn exit_code_of(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Exit>() {
            return e.code;
        }
        if let Some(e) = cause.downcast_ref::<BundleError>() {
            return e.exit_code();
        }
    }
    exit::FAILURE
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
