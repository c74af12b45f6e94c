//! Typed errors of the bundle format and the exit code each kind of refusal maps to.
//! `kiln verify` and `kiln-firstboot apply` share these codes; docs/reference.md lists them.

use thiserror::Error;

/// Exit codes, one per kind of refusal. Stable: scripts and cloud-init depend on them.
pub mod exit {
    pub const OK: i32 = 0;
    /// Generic failure (I/O on the operator's side, bad arguments to a subcommand).
    pub const FAILURE: i32 = 1;
    /// Usage error (clap).
    pub const USAGE: i32 = 2;
    /// Signature missing, malformed, or does not match the manifest.
    pub const BAD_SIGNATURE: i32 = 10;
    /// Signed by a key that is not in the trust store.
    pub const UNTRUSTED_KEY: i32 = 11;
    /// Signed by a key on the revoked list.
    pub const REVOKED_KEY: i32 = 12;
    /// Past its `expires`, or created in the future.
    pub const EXPIRED: i32 = 13;
    /// Built for another hostgroup.
    pub const WRONG_HOSTGROUP: i32 = 14;
    /// Built for another base image (os-release ID/VERSION_ID, architecture).
    pub const WRONG_BASE: i32 = 15;
    /// Version below the minimum the host accepts (rollback).
    pub const ROLLBACK: i32 = 16;
    /// Payload corrupt: bad zstd or tar, blob digest or size mismatch, unlisted or missing blob,
    /// a limit exceeded, a manifest that does not parse.
    pub const CORRUPT: i32 = 17;
    /// The bundle could not be fetched before the deadline.
    pub const FETCH: i32 = 18;
    /// The fetched bundle's sha256 differs from the pinned `--sha256`.
    pub const DIGEST_MISMATCH: i32 = 19;
    /// A dynamic source (Consul, Vault) stayed unreachable past the deadline or refused us.
    pub const DYNAMIC: i32 = 20;
    /// Verified, but applying it failed (the journal allows a rerun to finish or roll forward).
    pub const APPLY: i32 = 21;
    /// Verified, but the target root conflicts with it (a file or a dangling symlink where the
    /// bundle needs a directory, a second uid 0, a `.deb` that is not what the manifest says...):
    /// refused before anything changed.
    pub const CONFLICT: i32 = 22;
    /// Applied, but a health check of the bundle did not pass within its deadline (the node
    /// reports unhealthy; a rerun checks again).
    pub const UNHEALTHY: i32 = 23;

    /// Every code and its meaning, as the "Exit codes" table of docs/reference.md says (a test keeps the
    /// two equal); the man pages' EXIT STATUS sections are made from it.
    pub const MEANINGS: &[(i32, &str)] = &[
        (OK, "success"),
        (FAILURE, "failure (configuration problems, I/O, a build that failed)"),
        (USAGE, "usage error"),
        (BAD_SIGNATURE, "signature missing, malformed, or not matching the manifest"),
        (UNTRUSTED_KEY, "signed by a key that is not trusted"),
        (REVOKED_KEY, "signed by a revoked key"),
        (EXPIRED, "expired (or created in the future: check the clock)"),
        (WRONG_HOSTGROUP, "built for another hostgroup"),
        (WRONG_BASE, "built for another base image"),
        (ROLLBACK, "version below the minimum (rollback)"),
        (CORRUPT, "corrupt payload: bad zstd or tar, wrong blob, unlisted data, a limit exceeded"),
        (FETCH, "the bundle could not be fetched before the deadline"),
        (DIGEST_MISMATCH, "the bundle's sha256 differs from the pinned `--sha256`"),
        (DYNAMIC, "a dynamic source (Consul, Vault) unreachable past the deadline or refused"),
        (APPLY, "verified, but the apply failed after changing the target (rerun to recover); also an I/O error on the target before any change (disk full while staging), which changes nothing"),
        (CONFLICT, "verified, but the target conflicts with the bundle: refused before anything changed"),
        (UNHEALTHY, "applied, but a health check did not pass within its deadline (the node reports unhealthy; a rerun checks again)"),
    ];

    /// Makes a write to a closed pipe end the program quietly with [`OK`]: `kiln inspect --json
    /// b.kiln | head -1` stops when `head` has read its line, as a program killed by SIGPIPE
    /// would, instead of panicking in `println!`. Both binaries call it first thing in `main`.
    ///
    /// Rust ignores SIGPIPE, so such a write fails with EPIPE and `print!` panics; the panic
    /// hook recognises that panic (on stdout or stderr) and exits. Any other panic goes to the
    /// previous hook. Works with `panic = "abort"` too: the hook runs before the abort.
    pub fn quiet_on_broken_pipe() {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied());
            if message.is_some_and(is_print_to_broken_pipe) {
                std::process::exit(OK);
            }
            previous(info);
        }));
    }

    /// Whether a panic message is std's `print!` failing on a closed pipe.
    fn is_print_to_broken_pipe(message: &str) -> bool {
        // EPIPE is 32 on Linux: "Broken pipe (os error 32)".
        let epipe = std::io::Error::from_raw_os_error(32).to_string();
        (message.starts_with("failed printing to stdout: ")
            || message.starts_with("failed printing to stderr: "))
            && message.ends_with(&epipe)
    }

    #[cfg(test)]
    mod tests {
        /// docs/reference.md's table is the source of truth; MEANINGS must say the same, row by row.
        #[test]
        fn meanings_are_the_reference_exit_codes_table() {
            let readme = std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../docs/reference.md"
            ))
            .unwrap();
            let table = readme
                .split("\n## Exit codes\n")
                .nth(1)
                .expect("docs/reference.md has an Exit codes section");
            let rows: Vec<(i32, String)> = table
                .lines()
                .skip_while(|l| !l.starts_with("| code |"))
                .skip(2)
                .take_while(|l| l.starts_with('|'))
                .map(|l| {
                    let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
                    (
                        cells[0].trim().parse().unwrap(),
                        cells[1].trim().to_string(),
                    )
                })
                .collect();
            let ours: Vec<(i32, String)> = super::MEANINGS
                .iter()
                .map(|(c, m)| (*c, m.to_string()))
                .collect();
            assert_eq!(ours, rows);
        }

        #[test]
        fn only_print_panics_on_a_closed_pipe_are_quiet() {
            let epipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
            let raw = std::io::Error::from_raw_os_error(32);
            assert_eq!(raw.kind(), epipe.kind());
            assert!(super::is_print_to_broken_pipe(&format!(
                "failed printing to stdout: {raw}"
            )));
            assert!(super::is_print_to_broken_pipe(&format!(
                "failed printing to stderr: {raw}"
            )));
            let enospc = std::io::Error::from_raw_os_error(28);
            assert!(!super::is_print_to_broken_pipe(&format!(
                "failed printing to stdout: {enospc}"
            )));
            assert!(!super::is_print_to_broken_pipe(&format!(
                "writing x: {raw}"
            )));
        }
    }
}

/// Why a bundle was refused.
#[derive(Debug, Error)]
pub enum BundleError {
    #[error("signature invalid: {0}")]
    BadSignature(String),
    #[error("signed by untrusted key {fingerprint}")]
    UntrustedKey { fingerprint: String },
    #[error("signed by revoked key {fingerprint}")]
    RevokedKey { fingerprint: String },
    #[error("bundle expired at {expires} (now {now})")]
    Expired { expires: String, now: String },
    #[error("bundle created in the future ({created}, now {now}): check the host clock")]
    NotYetValid { created: String, now: String },
    #[error("bundle is for hostgroup {found:?}, expected {expected:?}")]
    WrongHostgroup { expected: String, found: String },
    #[error("bundle targets base {bundle}, this root is {root}")]
    WrongBase { bundle: String, root: String },
    #[error("bundle version {version} is below the minimum {minimum}")]
    Rollback { version: u64, minimum: u64 },
    #[error("corrupt bundle: {0}")]
    Corrupt(String),
    #[error("limit exceeded: {0}")]
    Limit(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl BundleError {
    /// The process exit code for this refusal.
    pub fn exit_code(&self) -> i32 {
        match self {
            BundleError::BadSignature(_) => exit::BAD_SIGNATURE,
            BundleError::UntrustedKey { .. } => exit::UNTRUSTED_KEY,
            BundleError::RevokedKey { .. } => exit::REVOKED_KEY,
            BundleError::Expired { .. } | BundleError::NotYetValid { .. } => exit::EXPIRED,
            BundleError::WrongHostgroup { .. } => exit::WRONG_HOSTGROUP,
            BundleError::WrongBase { .. } => exit::WRONG_BASE,
            BundleError::Rollback { .. } => exit::ROLLBACK,
            BundleError::Corrupt(_) | BundleError::Limit(_) => exit::CORRUPT,
            BundleError::Io(_) => exit::FAILURE,
        }
    }
}
