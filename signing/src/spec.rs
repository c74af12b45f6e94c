//! The rules of the spec, defined once: what a path, a mode, an account, package or unit name,
//! a package version and a digest may be. The builder checks a configuration with them (and
//! points at the line), the writer and the reader check a manifest with them
//! ([`validate_manifest`](crate::validate_manifest)), and the applier checks the manifest it is
//! given with the same function, so the three cannot disagree.
//!
//! The messages are the ones a user sees: the builder puts `file:line:column: ` before them,
//! the reader and the applier the item they belong to.

/// Where kiln keeps its journal, staging area and state on a host: no entry or template may
/// touch it.
pub const STATE_DIR: &str = "/var/lib/kiln";

/// Longest target path accepted (Linux PATH_MAX, less the NUL).
pub const MAX_PATH: usize = 4095;
/// Longest path component accepted (Linux NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Longest account name (shadow's LOGIN_NAME_MAX less the NUL, as `useradd` enforces).
pub const MAX_ACCOUNT_NAME: usize = 32;

/// Why `p` is not an absolute, normalized path on the target, if it is not: it starts with
/// `/`, is not `/` itself, has no empty, `.` or `..` component, no NUL, newline or carriage
/// return (a path is one line in every listing and log), at most [`MAX_PATH`] bytes and
/// [`MAX_NAME`] bytes a component.
pub fn path_problem(p: &str) -> Option<String> {
    if p.contains(['\0', '\n', '\r']) {
        return Some(format!("path {p:?} contains a NUL or newline character"));
    }
    if !p.starts_with('/') {
        return Some(format!("path {p:?} is not absolute"));
    }
    if p == "/" {
        return Some("path \"/\" is the root directory itself".into());
    }
    if p.ends_with('/') {
        return Some(format!("path {p:?} ends with \"/\""));
    }
    if p.contains("//") {
        return Some(format!("path {p:?} contains \"//\""));
    }
    if p.split('/').any(|c| c == "." || c == "..") {
        return Some(format!("path {p:?} has a \".\" or \"..\" component"));
    }
    if p.len() > MAX_PATH {
        return Some(format!("path is longer than {MAX_PATH} bytes"));
    }
    if p.split('/').any(|c| c.len() > MAX_NAME) {
        return Some(format!(
            "path {p:?} has a component longer than {MAX_NAME} bytes"
        ));
    }
    None
}

/// [`path_problem`] as a `Result`.
pub fn check_path(p: &str) -> Result<(), String> {
    path_problem(p).map_or(Ok(()), Err)
}

/// Whether `p` is `dir` or below it (both normalized paths).
pub fn is_under(p: &str, dir: &str) -> bool {
    p == dir || (p.starts_with(dir) && p.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// A mode: 3 or 4 octal digits (`644`, `0755`, `4755`), so at most `07777`. Five digits
/// (`04755`) are refused everywhere: the builder never writes them and `chmod` reads the
/// leading digit as the special bits, which a reader would not expect.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    if (3..=4).contains(&s.len()) && s.bytes().all(|c| (b'0'..=b'7').contains(&c)) {
        u32::from_str_radix(s, 8).map_err(|_| mode_message(s))
    } else {
        Err(mode_message(s))
    }
}

fn mode_message(s: &str) -> String {
    format!("mode {s:?} is not an octal mode such as \"0644\" (3 or 4 digits 0-7)")
}

/// The pattern of [`is_account_name`], for messages.
pub const ACCOUNT_NAME_PATTERN: &str = "[a-z_][a-z0-9_-]*[$]? (at most 32 characters)";

/// User and group names by shadow's own rule (upstream `useradd`'s default):
/// `[a-z_][a-z0-9_-]*[$]?`, at most [`MAX_ACCOUNT_NAME`] characters. Debian's `useradd` is
/// looser (it also takes `a$b`, checked on the debootstrapped bookworm base), so every name
/// kiln accepts is one the target's tools take. The trailing `$` is for Samba machine
/// accounts; a name never starts with `-`, so it cannot be taken for an option.
pub fn is_account_name(s: &str) -> bool {
    let b = s.as_bytes();
    let body = b.strip_suffix(b"$").unwrap_or(b);
    !body.is_empty()
        && b.len() <= MAX_ACCOUNT_NAME
        && (body[0].is_ascii_lowercase() || body[0] == b'_')
        && body
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// An owner or group field: an account name or a number (a uid or gid).
pub fn is_owner(s: &str) -> bool {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u32>().is_ok();
    }
    is_account_name(s)
}

/// Debian package names: `[a-z0-9][a-z0-9+.-]+` (Debian policy 5.6.1).
pub fn is_package_name(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+.-".contains(c))
}

/// Debian version strings: `[epoch:]upstream[-revision]` from `[A-Za-z0-9.+~:-]`, the
/// upstream part starting with a digit (Debian policy 5.6.12), at most 128 characters.
pub fn is_package_version(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b".+~:-".contains(c))
        && {
            let upstream = s.split_once(':').map_or(s, |(epoch, rest)| {
                if epoch.bytes().all(|c| c.is_ascii_digit()) && !epoch.is_empty() {
                    rest
                } else {
                    "!"
                }
            });
            upstream.as_bytes().first().is_some_and(u8::is_ascii_digit)
        }
}

/// systemd unit names: `name.type` from systemd's alphabet (`[A-Za-z0-9:_.@\-]`), at most 255
/// bytes, not starting with `-` or `.` (never an option).
pub fn is_unit_name(s: &str) -> bool {
    s.len() <= 255
        && !s.starts_with(['-', '.'])
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b":_.@-\\".contains(&c))
        && s.rsplit_once('.')
            .is_some_and(|(stem, suffix)| !stem.is_empty() && !suffix.is_empty())
}

/// Command and health check names: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
pub fn is_command_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// A SHA-256 digest as the manifest writes it: 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A SHA-256 digest as a user or a tool may write it (`--sha256`, apt's `SHA256:` hashes):
/// 64 hex digits of either case, in the form the manifest writes (lowercase).
pub fn sha256_hex_any_case(s: &str) -> Option<String> {
    let lower = s.to_ascii_lowercase();
    is_sha256_hex(&lower).then_some(lower)
}

/// [`is_sha256_hex`], with the message naming `what`.
pub fn check_digest(what: &str, digest: &str) -> Result<(), String> {
    if is_sha256_hex(digest) {
        Ok(())
    } else {
        Err(format!(
            "{what} digest {digest:?} is not 64 lowercase hex digits"
        ))
    }
}

/// A symlink's target: not empty, no NUL, at most [`MAX_PATH`] bytes (relative or absolute;
/// the applier keeps it inside the root whatever it says).
pub fn symlink_target_problem(target: &str) -> Option<String> {
    if target.is_empty() || target.len() > MAX_PATH || target.contains('\0') {
        Some(format!(
            "bad symlink target {target:?} (empty, NUL or too long)"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_at_the_edges() {
        for ok in ["/etc/motd", "/a", "/etc/.hidden", "/x/..y/z.", "/ünï"] {
            assert_eq!(path_problem(ok), None, "{ok}");
        }
        let long_name = format!("/etc/{}", "n".repeat(MAX_NAME));
        assert_eq!(path_problem(&long_name), None);
        for (bad, why) in [
            ("etc/motd", "is not absolute"),
            ("", "is not absolute"),
            ("/", "root directory itself"),
            ("/etc/", "ends with"),
            ("/etc//motd", "contains \"//\""),
            ("/etc/../shadow", "\"..\" component"),
            ("/etc/./motd", "\"..\" component"),
            ("/etc/mo\ntd", "newline"),
            ("/etc/mo\0td", "NUL"),
        ] {
            let got = path_problem(bad).unwrap_or_default();
            assert!(got.contains(why), "{bad:?}: {got}");
        }
        let too_long_name = format!("/etc/{}", "n".repeat(MAX_NAME + 1));
        assert!(path_problem(&too_long_name)
            .unwrap()
            .contains("component longer"));
        let too_long = format!("/{}", ["d"; 2048].join("/"));
        assert!(too_long.len() > MAX_PATH);
        assert!(path_problem(&too_long)
            .unwrap()
            .contains("longer than 4095"));
        assert!(is_under("/var/lib/kiln/x", "/var/lib/kiln"));
        assert!(is_under("/var/lib/kiln", "/var/lib/kiln"));
        assert!(!is_under("/var/lib/kilnx", "/var/lib/kiln"));
    }

    #[test]
    fn modes_are_three_or_four_octal_digits() {
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert_eq!(parse_mode("4755"), Ok(0o4755));
        assert_eq!(parse_mode("7777"), Ok(0o7777));
        for bad in [
            "", "7", "64", "04755", "00644", "0x644", "0648", "-644", " 644",
        ] {
            let e = parse_mode(bad).unwrap_err();
            assert!(e.contains("3 or 4 digits 0-7"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn account_names_as_useradd_takes_them() {
        for ok in [
            "root",
            "_apt",
            "www-data",
            "systemd-network",
            "web1",
            "host$",
            "a",
        ] {
            assert!(is_account_name(ok), "{ok}");
        }
        assert!(is_account_name(&"a".repeat(32)));
        assert!(is_account_name(&format!("{}$", "a".repeat(31))));
        for bad in [
            "", "$", "Deploy", "-rf", "1web", "we b", "a$b", "web$$", "wéb", "a:b", "a.b",
        ] {
            assert!(!is_account_name(bad), "{bad:?}");
        }
        assert!(!is_account_name(&"a".repeat(33)));
        assert!(!is_account_name(&format!("{}$", "a".repeat(32))));
        assert!(is_owner("0") && is_owner("4294967295") && is_owner("www-data"));
        assert!(!is_owner("4294967296") && !is_owner("") && !is_owner("-1"));
    }

    #[test]
    fn package_names_versions_units_commands_digests() {
        assert!(is_package_name("nginx") && is_package_name("g++") && is_package_name("0ad"));
        assert!(!is_package_name("n") && !is_package_name("-x") && !is_package_name("Nginx"));
        for ok in ["1.22.1-9", "1:2.3~rc1-1+deb12u1", "0", "2:1.0"] {
            assert!(is_package_version(ok), "{ok}");
        }
        for bad in ["", "a1.0", "x:1.0", ":1", "1 0", "1_0"] {
            assert!(!is_package_version(bad), "{bad:?}");
        }
        for ok in ["nginx.service", "app@1.service", "a-b:c.timer", "x.mount"] {
            assert!(is_unit_name(ok), "{ok}");
        }
        for bad in ["nginx", "-x.service", ".service", "x.", "a b.service", ""] {
            assert!(!is_unit_name(bad), "{bad:?}");
        }
        assert!(is_command_name("db-role.1") && !is_command_name("-x") && !is_command_name(""));
        let d = "a".repeat(64);
        assert!(is_sha256_hex(&d));
        assert!(!is_sha256_hex(&"A".repeat(64)) && !is_sha256_hex(&"a".repeat(63)));
        assert!(check_digest("blob", "xyz")
            .unwrap_err()
            .contains("64 lowercase hex"));
        assert!(symlink_target_problem("../x").is_none());
        assert!(symlink_target_problem("").is_some());
        assert!(symlink_target_problem(&"x".repeat(4096)).is_some());
    }
}
