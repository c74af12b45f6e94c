//! Values that must never be printed: Vault secrets, tokens, private keys, and the rendered
//! text of templates that hold them. [`Secret`] has no `Display` and no `Serialize`, and its
//! `Debug` shows only a length, so a secret cannot reach a log line, an error, the state file
//! or the Consul report by accident; its bytes are overwritten when it is dropped.
//! [`Redactor`] scrubs known secret values out of text that came from elsewhere (a server's
//! error body, a template engine's message) before it is shown.

use std::fmt;

/// Bytes that are never printed. Read them with [`expose`](Secret::expose) only where they are
/// sent (an HTTP body, a file being written).
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// The bytes. The name is the reminder: nothing that logs may receive them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as text (secrets Kiln handles are text: tokens, passwords, PEM).
    pub fn expose_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Clone for Secret {
    fn clone(&self) -> Self {
        Secret(self.0.clone())
    }
}

impl PartialEq for Secret {
    /// Constant-time in the content (not the length): comparing a secret must not time it.
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted, {} bytes>)", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Volatile writes: the compiler may not drop them as dead stores.
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference into the vector.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

/// What replaces a secret value in scrubbed text.
pub const REDACTED: &str = "<redacted>";

/// Known secret values, to scrub out of any text shown to a person.
#[derive(Default, Clone)]
pub struct Redactor {
    values: Vec<Secret>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} values)", self.values.len())
    }
}

impl Redactor {
    /// Remembers a value to scrub. Values under 4 bytes are not scrubbed (they would mangle
    /// ordinary text and are no secret anyway); multi-line values are scrubbed line by line
    /// too (a PEM key quoted in part).
    pub fn add(&mut self, s: &Secret) {
        if s.len() >= 4 && !self.values.iter().any(|v| v == s) {
            self.values.push(s.clone());
            let text = s.expose_str();
            if text.contains('\n') {
                for line in text.lines().filter(|l| l.len() >= 16) {
                    self.values.push(Secret::new(line.as_bytes().to_vec()));
                }
            }
        }
    }

    /// `text` with every known secret replaced by [`REDACTED`].
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        // Longest first, so a value that contains another is replaced whole.
        let mut values: Vec<&Secret> = self.values.iter().collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        for v in values {
            let needle = v.expose_str();
            if !needle.is_empty() && out.contains(needle) {
                out = out.replace(needle, REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_does_not_print() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(<redacted, 19 bytes>)");
        assert_eq!(
            format!("{:?}", Some(s.clone())),
            "Some(Secret(<redacted, 19 bytes>))"
        );
        assert_eq!(s.expose_str(), "hunter2-very-secret");
    }

    #[test]
    fn redactor_scrubs_known_values() {
        let mut r = Redactor::default();
        r.add(&Secret::new("s3cr3t-pass"));
        r.add(&Secret::new(
            "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIAbcdefghijklmnop\n-----END EC PRIVATE KEY-----\n",
        ));
        r.add(&Secret::new("ab"));
        assert_eq!(
            r.scrub("error near \"s3cr3t-pass\" in ab"),
            "error near \"<redacted>\" in ab"
        );
        assert_eq!(r.scrub("line MHcCAQEEIAbcdefghijklmnop"), "line <redacted>");
    }
}
