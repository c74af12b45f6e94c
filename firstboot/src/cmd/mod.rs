//! One module per subcommand, each with its own `run()`, and the mapping from errors to exit
//! codes.

pub mod apply;
pub mod status;

use clap::Parser;
use kiln_signing::{exit, BundleError};

use crate::fetch::FetchError;
use kiln_apply::cli::{Cli, Command};
use kiln_apply::log::Stderr;
use kiln_apply::{ApplyError, ApplyFailure};

/// A refusal that carries its own exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

/// Parses arguments, runs the command, prints errors with every cause, returns the exit code.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
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
    let result = match cli.command {
        Command::Apply(a) => apply::run(*a, &Stderr),
        Command::Status(a) => status::run(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            let code = exit_code_of(&err);
            eprintln!("kiln-firstboot: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            code
        }
    }
}

/// The exit code for an error: the first typed refusal in its chain decides; anything else
/// (I/O on the operator's side, a bad trust store) is 1.
pub fn exit_code_of(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Exit>() {
            return e.code;
        }
        if let Some(e) = cause.downcast_ref::<ApplyFailure>() {
            return e.exit_code();
        }
        if let Some(e) = cause.downcast_ref::<ApplyError>() {
            return e.exit_code();
        }
        if let Some(e) = cause.downcast_ref::<BundleError>() {
            return e.exit_code();
        }
        if let Some(e) = cause.downcast_ref::<FetchError>() {
            return e.exit_code();
        }
    }
    exit::FAILURE
}
