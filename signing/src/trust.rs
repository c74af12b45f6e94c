//! The trust store: which keys may sign bundles, and which are revoked. A directory of `.pub`
//! files (plus an optional `revoked_keys` file), one `.pub` file, or an OpenSSH
//! `allowed_signers` file, so rotation is "add the new key, then revoke the old one".

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use thiserror::Error;

use crate::error::BundleError;
use crate::keys::{KeyError, PublicKey, KEY_TYPE};
use crate::sshsig::NAMESPACE;

/// The name of the revoked-key list inside a trust directory.
pub const REVOKED_FILE: &str = "revoked_keys";

/// Why a trust store could not be loaded.
#[derive(Debug, Error)]
pub enum TrustError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("no trusted keys in {}{detail}", path.display())]
    Empty { path: PathBuf, detail: String },
}

/// A trusted key and the window (from `allowed_signers` options) in which it is trusted.
#[derive(Debug, Clone)]
struct Trusted {
    key: PublicKey,
    valid_after: Option<SystemTime>,
    valid_before: Option<SystemTime>,
}

/// Keys trusted to sign bundles and keys revoked; a revoked key is refused even if trusted.
#[derive(Debug, Clone)]
pub struct TrustStore {
    trusted: Vec<Trusted>,
    revoked: Vec<PublicKey>,
}

impl TrustStore {
    /// Loads a trust directory (every `*.pub` file, sorted, plus `revoked_keys` if present), a
    /// file of public keys (a `.pub`, one OpenSSH key per line) or an `allowed_signers` file.
    /// A store that trusts no key for `kiln-bundle` is an error.
    pub fn load(path: &Path) -> Result<TrustStore, TrustError> {
        let io = |source| TrustError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            Self::load_dir(path)
        } else {
            let text = read_text(path)?;
            if is_public_key_list(&text) {
                let trusted: Vec<Trusted> = parse_key_lines(path, &text)?
                    .into_iter()
                    .map(|key| Trusted {
                        key,
                        valid_after: None,
                        valid_before: None,
                    })
                    .collect();
                return Ok(TrustStore {
                    trusted,
                    revoked: Vec::new(),
                });
            }
            let (trusted, excluded) = parse_allowed_signers(path, &text)?;
            if trusted.is_empty() {
                let detail = if excluded > 0 {
                    format!(" ({excluded} key(s) are limited by namespaces= to other uses)")
                } else {
                    String::new()
                };
                return Err(TrustError::Empty {
                    path: path.to_path_buf(),
                    detail,
                });
            }
            Ok(TrustStore {
                trusted,
                revoked: Vec::new(),
            })
        }
    }

    fn load_dir(dir: &Path) -> Result<TrustStore, TrustError> {
        let io = |source| TrustError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut names = Vec::new();
        let mut has_revoked = false;
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let path = entry.path();
            if name == REVOKED_FILE {
                has_revoked = true;
            } else if name.to_string_lossy().ends_with(".pub") && path.is_file() {
                names.push(path);
            }
        }
        names.sort();
        let mut trusted = Vec::new();
        for path in &names {
            let text = read_text(path)?;
            for key in parse_key_lines(path, &text)? {
                trusted.push(Trusted {
                    key,
                    valid_after: None,
                    valid_before: None,
                });
            }
        }
        if trusted.is_empty() {
            let detail = if names.is_empty() {
                " (no *.pub files)".to_string()
            } else {
                String::new()
            };
            return Err(TrustError::Empty {
                path: dir.to_path_buf(),
                detail,
            });
        }
        let store = TrustStore {
            trusted,
            revoked: Vec::new(),
        };
        if has_revoked {
            store.with_revoked_file(&dir.join(REVOKED_FILE))
        } else {
            Ok(store)
        }
    }

    /// Adds the keys of a revoked list (OpenSSH public key lines) to the store.
    pub fn with_revoked_file(mut self, path: &Path) -> Result<TrustStore, TrustError> {
        let text = read_text(path)?;
        self.revoked.extend(parse_key_lines(path, &text)?);
        Ok(self)
    }

    /// A store from keys in memory (tests, and callers that get keys from elsewhere).
    pub fn from_keys(trusted: Vec<PublicKey>, revoked: Vec<PublicKey>) -> TrustStore {
        let trusted = trusted
            .into_iter()
            .map(|key| Trusted {
                key,
                valid_after: None,
                valid_before: None,
            })
            .collect();
        TrustStore { trusted, revoked }
    }

    /// The trusted keys (revoked ones included; `check` refuses those).
    pub fn trusted(&self) -> impl Iterator<Item = &PublicKey> {
        self.trusted.iter().map(|t| &t.key)
    }

    pub fn revoked(&self) -> &[PublicKey] {
        &self.revoked
    }

    /// Whether `signer` may sign bundles now: revoked wins, then it must be trusted.
    pub fn check(&self, signer: &PublicKey) -> Result<(), BundleError> {
        self.check_at(signer, SystemTime::now())
    }

    /// [`check`](Self::check) at a given instant (for `valid-after`/`valid-before`).
    pub fn check_at(&self, signer: &PublicKey, now: SystemTime) -> Result<(), BundleError> {
        if self.revoked.contains(signer) {
            return Err(BundleError::RevokedKey {
                fingerprint: signer.fingerprint(),
            });
        }
        let valid = self.trusted.iter().any(|t| {
            t.key == *signer
                && !matches!(t.valid_after, Some(after) if now < after)
                && !matches!(t.valid_before, Some(before) if now > before)
        });
        if valid {
            Ok(())
        } else {
            Err(BundleError::UntrustedKey {
                fingerprint: signer.fingerprint(),
            })
        }
    }
}

fn read_text(path: &Path) -> Result<String, TrustError> {
    let bytes = std::fs::read(path).map_err(|source| TrustError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| TrustError::Line {
        path: path.to_path_buf(),
        line: 0,
        reason: "not a text file (binary KRLs are not supported; list public keys)".into(),
    })
}

fn line_err(path: &Path, line: usize, reason: impl Into<String>) -> TrustError {
    TrustError::Line {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

fn key_reason(e: KeyError) -> String {
    e.to_string()
}

/// Lines that matter: (1-based line number, trimmed text), skipping blanks and `#` comments.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// Whether a trust file is a list of public keys (a `.pub` file: its first line starts with a
/// key type) rather than an allowed_signers file (whose lines start with principals).
fn is_public_key_list(text: &str) -> bool {
    content_lines(text)
        .next()
        .and_then(|(_, line)| line.split_whitespace().next())
        .is_some_and(looks_like_key_type)
}

/// A `.pub` file or revoked list: one `ssh-ed25519 AAAA… [comment]` per line.
fn parse_key_lines(path: &Path, text: &str) -> Result<Vec<PublicKey>, TrustError> {
    content_lines(text)
        .map(|(n, line)| {
            PublicKey::parse_openssh(line).map_err(|e| line_err(path, n, key_reason(e)))
        })
        .collect()
}

/// Parses an allowed_signers file; returns the keys trusted for bundles and how many keys were
/// left out because their `namespaces=` excludes `kiln-bundle`.
fn parse_allowed_signers(path: &Path, text: &str) -> Result<(Vec<Trusted>, usize), TrustError> {
    let mut trusted = Vec::new();
    let mut excluded = 0;
    for (n, line) in content_lines(text) {
        match parse_signer_line(line) {
            Ok(Some(t)) => trusted.push(t),
            Ok(None) => excluded += 1,
            Err(reason) => return Err(line_err(path, n, reason)),
        }
    }
    Ok((trusted, excluded))
}

/// One allowed_signers line: `principals [options] ssh-ed25519 BASE64 [comment]`.
/// `Ok(None)` when the key is valid but not for the `kiln-bundle` namespace.
fn parse_signer_line(line: &str) -> Result<Option<Trusted>, String> {
    let (principals, rest) = take_field(line)?;
    if principals.is_empty() {
        return Err("empty principals field".into());
    }
    let rest = rest.trim_start();
    let first = rest.split_whitespace().next().unwrap_or("");
    let (options, key_text) = if looks_like_key_type(first) {
        ("", rest)
    } else {
        let (opts, after) = take_field(rest)?;
        (opts, after.trim_start())
    };
    if key_text.is_empty() {
        return Err("missing key".into());
    }
    let key = PublicKey::parse_openssh(key_text).map_err(key_reason)?;
    let mut t = Trusted {
        key,
        valid_after: None,
        valid_before: None,
    };
    let mut namespaces: Option<String> = None;
    for opt in split_options(options)? {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(unquote(v)?)),
            None => (opt, None),
        };
        let name = name.to_ascii_lowercase();
        let need = |v: Option<String>| v.ok_or_else(|| format!("option {name} needs a value"));
        match name.as_str() {
            "cert-authority" => {
                return Err(
                    "cert-authority is not supported: kiln trusts plain ed25519 keys, \
                            list each signing key instead"
                        .into(),
                )
            }
            "namespaces" => {
                if namespaces.replace(need(value)?).is_some() {
                    return Err("namespaces given twice".into());
                }
            }
            "valid-after" => {
                if t.valid_after
                    .replace(parse_ssh_time(&need(value)?)?)
                    .is_some()
                {
                    return Err("valid-after given twice".into());
                }
            }
            "valid-before" => {
                if t.valid_before
                    .replace(parse_ssh_time(&need(value)?)?)
                    .is_some()
                {
                    return Err("valid-before given twice".into());
                }
            }
            _ => return Err(format!("unknown option {opt:?}")),
        }
    }
    match namespaces {
        Some(list) if !match_pattern_list(NAMESPACE, &list) => Ok(None),
        _ => Ok(Some(t)),
    }
}

fn looks_like_key_type(token: &str) -> bool {
    token == KEY_TYPE
        || token.starts_with("ssh-")
        || token.starts_with("ecdsa-")
        || token.starts_with("sk-")
        || token.ends_with("@openssh.com")
}

/// A field up to unquoted whitespace; a field may contain `"…"` quoted parts.
fn take_field(s: &str) -> Result<(&str, &str), String> {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return Ok((&s[..i], &s[i..])),
            _ => {}
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    Ok((s, ""))
}

/// Splits `a,b="x,y",c` on commas outside quotes.
fn split_options(s: &str) -> Result<Vec<&str>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    if out.iter().any(|o| o.is_empty()) {
        return Err(format!("empty option in {s:?}"));
    }
    Ok(out)
}

fn unquote(v: &str) -> Result<String, String> {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) if !inner.contains('"') => Ok(inner.to_string()),
        Some(_) => Err(format!("bad quoting in {v:?}")),
        None if v.contains('"') => Err(format!("bad quoting in {v:?}")),
        None => Ok(v.to_string()),
    }
}

/// `YYYYMMDD[HHMM[SS]]Z` (the UTC form ssh-keygen accepts). Local times are refused: the
/// trust decision must not depend on the host's time zone.
fn parse_ssh_time(v: &str) -> Result<SystemTime, String> {
    let digits = v
        .strip_suffix(['Z', 'z'])
        .ok_or_else(|| format!("time {v:?} must be UTC, ending in Z (YYYYMMDD[HHMM[SS]]Z)"))?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(format!("time {v:?} is not YYYYMMDD[HHMM[SS]]Z"));
    }
    let part = |a: usize, b: usize| digits.get(a..b).unwrap_or("00");
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        part(0, 4),
        part(4, 6),
        part(6, 8),
        part(8, 10),
        part(10, 12),
        part(12, 14)
    );
    humantime::parse_rfc3339(&rfc).map_err(|e| format!("time {v:?}: {e}"))
}

/// OpenSSH `match_pattern_list`: comma-separated `*`/`?` patterns, `!pattern` negates and wins.
fn match_pattern_list(s: &str, list: &str) -> bool {
    let mut matched = false;
    for pat in list.split(',').map(str::trim) {
        if let Some(neg) = pat.strip_prefix('!') {
            if wildcard(s.as_bytes(), neg.as_bytes()) {
                return false;
            }
        } else if wildcard(s.as_bytes(), pat.as_bytes()) {
            matched = true;
        }
    }
    matched
}

fn wildcard(s: &[u8], p: &[u8]) -> bool {
    // Iterative glob with backtracking to the last `*`: linear memory, no recursion.
    let (mut si, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                si += 1;
                pi += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use std::time::{Duration, UNIX_EPOCH};

    fn key(n: u8) -> PublicKey {
        SigningKey::from_seed(&[n; 32], &format!("key{n}")).public()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn directory_of_pub_files_with_revoked_list() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "a.pub",
            &format!(
                "# old and new\n{}\n\n{}\n",
                key(1).to_openssh(),
                key(2).to_openssh()
            ),
        );
        write(d, "b.pub", &format!("{}\n", key(3).to_openssh()));
        write(d, "notes.txt", "ignored: not a .pub\n");
        std::fs::create_dir(d.join("sub.pub")).unwrap();
        write(d, REVOKED_FILE, &format!("{}\n", key(2).to_openssh()));
        let store = TrustStore::load(d).unwrap();
        assert_eq!(store.trusted().count(), 3);
        assert!(store.check(&key(1)).is_ok());
        assert!(store.check(&key(3)).is_ok());
        match store.check(&key(2)) {
            Err(BundleError::RevokedKey { fingerprint }) => {
                assert_eq!(fingerprint, key(2).fingerprint())
            }
            other => panic!("{other:?}"),
        }
        match store.check(&key(4)) {
            Err(BundleError::UntrustedKey { fingerprint }) => {
                assert_eq!(fingerprint, key(4).fingerprint())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_or_malformed_directories_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = TrustStore::load(dir.path()).unwrap_err();
        assert!(matches!(err, TrustError::Empty { .. }));
        assert!(err
            .to_string()
            .starts_with(&format!("no trusted keys in {}", dir.path().display())));

        write(dir.path(), "only-comments.pub", "# nothing\n\n");
        assert!(matches!(
            TrustStore::load(dir.path()),
            Err(TrustError::Empty { .. })
        ));

        let bad = write(
            dir.path(),
            "bad.pub",
            &format!("{}\nssh-ed25519 AAAA garbage\n", key(1).to_openssh()),
        );
        let err = TrustStore::load(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string().split(": ").next().unwrap(),
            format!("{}:2", bad.display())
        );
        assert!(matches!(err, TrustError::Line { line: 2, .. }));
    }

    /// `--trust signing/keys/dev.pub` was read as an allowed_signers file, whose first field is
    /// a principal, and failed with `unsupported key type "kiln-signing"` (the key's comment).
    #[test]
    fn a_pub_file_is_a_list_of_trusted_keys() {
        let dir = tempfile::tempdir().unwrap();
        let signer = SigningKey::from_seed(&[7; 32], "kiln-signing").public();
        let one = write(dir.path(), "dev.pub", &format!("{}\n", signer.to_openssh()));
        assert!(signer.to_openssh().ends_with(" kiln-signing"));
        let store = TrustStore::load(&one).unwrap();
        assert_eq!(store.trusted().count(), 1);
        assert!(store.check(&signer).is_ok());
        assert!(matches!(
            store.check(&key(1)),
            Err(BundleError::UntrustedKey { .. })
        ));

        // Comments and several keys, whatever the file is called; a bad line is named.
        let two = write(
            dir.path(),
            "keys",
            &format!(
                "# ci keys\n\n{}\n{}\n",
                key(1).to_openssh(),
                key(2).to_openssh()
            ),
        );
        let store = TrustStore::load(&two).unwrap();
        assert!(store.check(&key(1)).is_ok() && store.check(&key(2)).is_ok());
        let bad = write(
            dir.path(),
            "bad.pub",
            &format!("{}\nssh-ed25519 AAAA garbage\n", key(1).to_openssh()),
        );
        let err = TrustStore::load(&bad).unwrap_err();
        assert!(matches!(err, TrustError::Line { line: 2, .. }), "{err}");
    }

    #[test]
    fn with_revoked_file_and_from_keys() {
        let dir = tempfile::tempdir().unwrap();
        let revoked = write(
            dir.path(),
            "revoked",
            &format!("# rotated out\n{}\n", key(1).to_openssh()),
        );
        let store = TrustStore::from_keys(vec![key(1), key(2)], vec![]);
        assert!(store.check(&key(1)).is_ok());
        let store = store.with_revoked_file(&revoked).unwrap();
        assert!(matches!(
            store.check(&key(1)),
            Err(BundleError::RevokedKey { .. })
        ));
        assert!(store.check(&key(2)).is_ok());
        let store = TrustStore::from_keys(vec![key(1)], vec![key(1)]);
        assert!(matches!(
            store.check(&key(1)),
            Err(BundleError::RevokedKey { .. })
        ));
        let missing =
            TrustStore::from_keys(vec![], vec![]).with_revoked_file(&dir.path().join("nope"));
        assert!(matches!(missing, Err(TrustError::Io { .. })));
    }

    #[test]
    fn allowed_signers_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "# allowed signers\n\
             ci@example.com {k1}\n\
             \"quoted principal\",other namespaces=\"git,kiln-*\" {k2}\n\
             git-only namespaces=\"git\" {k3}\n\
             not-kiln namespaces=\"*,!kiln-bundle\" {k4}\n\
             windowed valid-after=\"20200101Z\",valid-before=\"203001011200Z\" {k5}\n",
            k1 = key(1).to_openssh(),
            k2 = key(2).to_openssh(),
            k3 = key(3).to_openssh(),
            k4 = key(4).to_openssh(),
            k5 = key(5).to_openssh(),
        );
        let path = write(dir.path(), "allowed_signers", &text);
        let store = TrustStore::load(&path).unwrap();
        assert!(store.check(&key(1)).is_ok());
        assert!(store.check(&key(2)).is_ok());
        assert!(matches!(
            store.check(&key(3)),
            Err(BundleError::UntrustedKey { .. })
        ));
        assert!(matches!(
            store.check(&key(4)),
            Err(BundleError::UntrustedKey { .. })
        ));
        let t = |s: &str| humantime::parse_rfc3339(s).unwrap();
        assert!(store.check_at(&key(5), t("2025-06-01T00:00:00Z")).is_ok());
        assert!(store.check_at(&key(5), t("2019-12-31T23:59:59Z")).is_err());
        assert!(store.check_at(&key(5), t("2030-01-01T12:00:01Z")).is_err());
        assert!(store.check_at(&key(5), t("2030-01-01T12:00:00Z")).is_ok());
    }

    #[test]
    fn allowed_signers_refusals_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(1).to_openssh();
        let cases = [
            (
                format!("ca cert-authority {k}"),
                "cert-authority is not supported",
            ),
            (format!("p valid-after=\"20200101\" {k}"), "must be UTC"),
            (format!("p valid-after=\"2020\" {k}"), "YYYYMMDD"),
            (format!("p bogus {k}"), "unknown option"),
            (format!("p namespaces=\"a\",namespaces=\"b\" {k}"), "twice"),
            ("p".to_string(), "missing key"),
            ("p namespaces=\"kiln-bundle\"".to_string(), "missing key"),
            (format!("p \"unterminated {k}"), "unterminated quote"),
            (
                "p ssh-rsa AAAAB3NzaC1yc2E=".to_string(),
                "ssh-ed25519 keys only",
            ),
            ("p ssh-ed25519 AAAA".to_string(), "malformed"),
        ];
        for (line, want) in cases {
            let path = write(dir.path(), "allowed", &format!("# header\n{line}\n"));
            let err = TrustStore::load(&path).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, TrustError::Line { line: 2, .. }),
                "{line}: {msg}"
            );
            assert!(msg.starts_with(&format!("{}:2: ", path.display())), "{msg}");
            assert!(msg.contains(want), "{line}: {msg} lacks {want}");
        }
        let path = write(
            dir.path(),
            "allowed",
            &format!("git namespaces=\"git\" {k}\n"),
        );
        let err = TrustStore::load(&path).unwrap_err();
        assert!(matches!(err, TrustError::Empty { .. }));
        assert!(err.to_string().contains("namespaces="), "{err}");
        let empty = write(dir.path(), "empty", "");
        assert!(matches!(
            TrustStore::load(&empty),
            Err(TrustError::Empty { .. })
        ));
    }

    #[test]
    fn patterns() {
        assert!(match_pattern_list("kiln-bundle", "kiln-bundle"));
        assert!(match_pattern_list("kiln-bundle", "git,kiln-*"));
        assert!(match_pattern_list("kiln-bundle", "k?ln-bundl?"));
        assert!(!match_pattern_list("kiln-bundle", "git,file"));
        assert!(!match_pattern_list("kiln-bundle", "*,!kiln*"));
        assert!(!match_pattern_list("kiln-bundle", ""));
        assert!(wildcard(b"abc", b"*"));
        assert!(wildcard(b"", b"**"));
        assert!(!wildcard(b"abc", b"a*d"));
        assert!(wildcard(b"aXbXc", b"a*b*c"));
    }

    #[test]
    fn ssh_times() {
        let t = parse_ssh_time("20240229123456Z").unwrap();
        assert_eq!(t, humantime::parse_rfc3339("2024-02-29T12:34:56Z").unwrap());
        assert!(parse_ssh_time("20230229Z").is_err());
        assert!(parse_ssh_time("2024022Z").is_err());
        assert!(parse_ssh_time("20240229").is_err());
        assert_eq!(
            parse_ssh_time("20240101Z").unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_704_067_200)
        );
    }
}
