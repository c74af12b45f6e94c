//! Progress lines. The engine reports through [`Log`] so each caller decides where lines go:
//! `kiln-firstboot` writes them to stderr (`kiln-firstboot: ...`), `kiln bake` can forward them
//! to its own logger.

/// A sink for the engine's progress lines.
pub trait Log: Sync {
    /// One human-readable line (no trailing newline).
    fn info(&self, msg: &str);
    /// A warning: something was skipped or is not as it should be, but the apply goes on.
    fn warn(&self, msg: &str) {
        self.info(&format!("warning: {msg}"));
    }
}

/// Lines on stderr, prefixed with the program name.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stderr;

impl Log for Stderr {
    fn info(&self, msg: &str) {
        eprintln!("kiln-firstboot: {msg}");
    }
}

/// Discards everything (tests, and callers that only want the report).
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Log for Quiet {
    fn info(&self, _msg: &str) {}
}
