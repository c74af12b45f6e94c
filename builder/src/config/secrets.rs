//! A build-time warning, not an error: a static file (inline, `from:`, rendered static
//! template, unit) that looks like it holds a literal secret. Static files go into the bundle
//! and into every image baked from it; secrets belong in Vault, read by a dynamic template.
//! Heuristics, so a warning says what it saw and where, and never repeats the value.

use super::model::FileSource;

/// `from:` files larger than this are not scanned (they are not configuration text).
const MAX_SCANNED: u64 = 1 << 20;

/// What in `source` looks like a secret, e.g. `line 3 assigns a literal value to "password"`.
pub fn scan_source(source: &FileSource) -> Option<String> {
    match source {
        FileSource::Bytes(b) => scan(b),
        FileSource::Path(p) => {
            let meta = std::fs::metadata(p).ok()?;
            if meta.len() > MAX_SCANNED {
                return None;
            }
            scan(&std::fs::read(p).ok()?)
        }
        _ => None,
    }
}

/// Key names that hold secrets (compared lowercased, without `_`, `-`, `.`).
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "secretkey",
    "privatekey",
    "accesskey",
];

/// Well-known token shapes: prefix, minimum length of the rest, what it is.
const TOKENS: &[(&str, usize, &str)] = &[
    ("AKIA", 16, "an AWS access key id"),
    ("hvs.", 20, "a Vault token"),
    ("ghp_", 30, "a GitHub token"),
    ("github_pat_", 30, "a GitHub token"),
    ("glpat-", 20, "a GitLab token"),
    ("xoxb-", 20, "a Slack token"),
    ("xoxp-", 20, "a Slack token"),
];

/// The first thing in `bytes` that looks like a literal secret.
pub fn scan(bytes: &[u8]) -> Option<String> {
    if bytes.contains(&0) {
        return None;
    }
    let text = String::from_utf8_lossy(bytes);
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.contains("-----BEGIN") && line.contains("PRIVATE KEY-----") {
            return Some(format!("line {n} starts a PEM private key"));
        }
        for (prefix, rest, what) in TOKENS {
            if let Some(at) = line.find(prefix) {
                let tail = &line[at + prefix.len()..];
                let len = tail
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
                    .count();
                if len >= *rest {
                    return Some(format!("line {n} holds what looks like {what}"));
                }
            }
        }
        if let Some(key) = literal_assignment(line) {
            return Some(format!("line {n} assigns a literal value to {key:?}"));
        }
    }
    None
}

/// `key = value`, `key: value`, `"key": "value"` where the key names a secret and the value
/// is a literal (not empty, not a reference such as `$VAR`, `{{ x }}`, `%(x)s`, a path).
fn literal_assignment(line: &str) -> Option<String> {
    let line = line.trim_start_matches(|c: char| c.is_whitespace() || c == '{' || c == ',');
    let line = line.strip_prefix("export ").unwrap_or(line);
    let unquoted = line.trim_start_matches(['"', '\'']);
    let key_len = unquoted
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b))
        .count();
    if key_len == 0 {
        return None;
    }
    let key = &unquoted[..key_len];
    let rest = unquoted[key_len..]
        .trim_start_matches(['"', '\''])
        .trim_start();
    let value = rest.strip_prefix('=').or_else(|| rest.strip_prefix(':'))?;
    let folded: String = key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    if !SECRET_KEYS.iter().any(|s| folded.ends_with(s)) {
        return None;
    }
    let value = value
        .trim()
        .trim_end_matches([',', ';'])
        .trim_matches(['"', '\''])
        .trim();
    let placeholder = value.len() < 8
        || value.contains(char::is_whitespace)
        || value.starts_with(['$', '%', '{', '<', '/', '@', '&', '*', '!', '['])
        || value.contains("{{")
        || value.contains("${")
        || [
            "true", "false", "none", "null", "required", "optional", "yes", "no",
        ]
        .contains(&value.to_ascii_lowercase().as_str())
        || {
            let mut chars: Vec<char> = value.chars().collect();
            chars.sort_unstable();
            chars.dedup();
            chars.len() < 4
        };
    (!placeholder).then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_secrets_are_seen() {
        for (text, want) in [
            (
                "[db]\npassword = hunter2hunter2\n",
                "line 2 assigns a literal value to \"password\"",
            ),
            ("DB_PASSWORD=S3cr3tValue!\n", "\"DB_PASSWORD\""),
            ("{\"api_key\": \"abcd1234efgh5678\"}\n", "\"api_key\""),
            ("client_secret: 9f8e7d6c5b4a\n", "\"client_secret\""),
            ("-----BEGIN EC PRIVATE KEY-----\nMHc\n", "PEM private key"),
            ("aws = AKIAIOSFODNN7EXAMPLE\n", "AWS access key id"),
            (
                "VAULT_TOKEN=hvs.CAESIJ0123456789abcdefghij\n",
                "Vault token",
            ),
        ] {
            let got = scan(text.as_bytes()).unwrap_or_default();
            assert!(got.contains(want), "{text:?}: {got:?}");
            assert!(!got.contains("hunter2") && !got.contains("S3cr3t"), "{got}");
        }
    }

    #[test]
    fn references_and_ordinary_settings_are_not() {
        for text in [
            "password_encryption = scram-sha-256\n",
            "PasswordAuthentication no\n",
            "password = {{ vault(\"secret/data/db/app\", \"password\") }}\n",
            "password = ${DB_PASSWORD}\n",
            "password: $DB_PASSWORD\n",
            "password_file = /etc/app/db.password\n",
            "token_ttl = 3600\n",
            "secret = \n",
            "password = ********\n",
            "password = xxxxxxxxxx\n",
            "ssl_session_tickets off;\n",
            "# Ask for a token: curl -H 'X-Vault-Token: ...'\n",
        ] {
            assert_eq!(scan(text.as_bytes()), None, "{text:?}");
        }
    }
}
