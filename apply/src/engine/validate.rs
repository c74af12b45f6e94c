//! Checks of a verified manifest that the engine makes itself before anything changes, even if
//! the signing reader made them already: a signed manifest is trusted to be what the builder
//! meant, not to be well-formed. Every name that reaches a command line is checked here, so
//! nothing from the manifest can be taken for an option.

use std::collections::{BTreeMap, BTreeSet};

use kiln_signing::{EntryKind, Manifest};

use crate::state::STATE_DIR;

/// Parses an octal mode string such as `0644` or `4755` (at most 0o7777).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("mode {s:?} is not an octal mode like \"0644\""));
    }
    let m = u32::from_str_radix(s, 8).map_err(|_| format!("mode {s:?} is not octal"))?;
    if m > 0o7777 {
        return Err(format!("mode {s:?} has bits beyond 07777"));
    }
    Ok(m)
}

/// An absolute, normalized path: `/` then non-empty components, none `.` or `..`, no NUL.
pub fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') || p == "/" {
        return Err(format!("path {p:?} is not an absolute path below /"));
    }
    if p.len() > 4096 || p.contains('\0') {
        return Err(format!("path {p:?} is too long or contains NUL"));
    }
    for c in p[1..].split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!(
                "path {p:?} is not normalized (empty, `.` or `..` component)"
            ));
        }
        if c.len() > 255 {
            return Err(format!("path {p:?} has a component longer than 255 bytes"));
        }
    }
    Ok(())
}

fn is_under(p: &str, dir: &str) -> bool {
    p == dir || (p.starts_with(dir) && p.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// User and group names as shadow accepts them (and never starting with `-`).
fn check_account_name(what: &str, n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 32
        && n.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && n.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b == b'_'
                || b == b'-'
                || (b == b'$' && i == n.len() - 1)
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{what} name {n:?} is not a valid account name"))
    }
}

/// Owner fields of entries: an account name or a number.
fn check_owner(what: &str, n: &str) -> Result<(), String> {
    if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
        return n
            .parse::<u32>()
            .map(|_| ())
            .map_err(|_| format!("{what} {n:?} is out of range"));
    }
    check_account_name(what, n)
}

/// systemd unit names: `name.type`, from the unit-name alphabet, not an option.
pub fn check_unit_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 255
        && !n.starts_with(['-', '.'])
        && n.contains('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.@\\".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("service name {n:?} is not a systemd unit name"))
    }
}

/// Debian package names.
fn check_package_name(n: &str) -> Result<(), String> {
    let ok = n.len() >= 2
        && n.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("package name {n:?} is not a Debian package name"))
    }
}

fn check_digest(what: &str, d: &str) -> Result<(), String> {
    if d.len() == 64
        && d.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "{what} digest {d:?} is not 64 lowercase hex digits"
        ))
    }
}

/// A passwd field (comment, home, shell): no `:` or newline, which would corrupt /etc/passwd.
fn check_passwd_field(what: &str, v: &str) -> Result<(), String> {
    if v.contains([':', '\n', '\0']) || v.starts_with('-') {
        return Err(format!(
            "{what} {v:?} contains ':', a newline or NUL, or starts with '-'"
        ));
    }
    Ok(())
}

fn kind_name(k: &EntryKind) -> &'static str {
    match k {
        EntryKind::File { .. } => "a file",
        EntryKind::Symlink { .. } => "a symlink",
        EntryKind::Directory { .. } => "a directory",
        EntryKind::Absent => "absent",
    }
}

/// A health check: a usable name, a probe whose target cannot be taken for an option, a
/// deadline of at most an hour.
fn check_health_check(c: &kiln_signing::Check) -> Result<(), String> {
    use kiln_signing::Probe;
    let name_ok = !c.name.is_empty()
        && c.name.len() <= 64
        && c.name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && c.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !name_ok {
        return Err(format!(
            "check name {:?} is not [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}",
            c.name
        ));
    }
    if c.deadline_secs == 0 || c.deadline_secs > 3600 {
        return Err(format!(
            "check {}: deadline_secs must be between 1 and 3600",
            c.name
        ));
    }
    let bad = |what: &str| Err(format!("check {}: {what}", c.name));
    match &c.probe {
        Probe::Unit { unit } => check_unit_name(unit).map_err(|x| format!("check {}: {x}", c.name)),
        Probe::Tcp { address } => match address.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty()
                    && !host.starts_with('-')
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b))
                    && port.parse::<u16>().is_ok_and(|p| p > 0) =>
            {
                Ok(())
            }
            _ => bad(&format!("tcp address {address:?} is not host:port")),
        },
        Probe::Http { url, status } => {
            if !url.starts_with("http://") || url.len() > 2048 || url.contains(char::is_whitespace)
            {
                return bad(&format!("http URL {url:?} is not an http:// URL"));
            }
            if !(100..=599).contains(status) {
                return bad(&format!("http status {status} is not between 100 and 599"));
            }
            Ok(())
        }
        Probe::Command { argv, timeout_secs } => {
            if argv.first().is_none_or(|a| a.is_empty()) || argv.iter().any(|a| a.contains('\0')) {
                return bad("empty argv or NUL in it");
            }
            if *timeout_secs == 0 || *timeout_secs > 3600 {
                return bad("timeout_secs must be between 1 and 3600");
            }
            Ok(())
        }
    }
}

/// Everything the engine relies on about a manifest. Errors name the offending item.
pub fn check_manifest(m: &Manifest) -> Result<(), String> {
    let blobs: BTreeMap<&str, u64> = m
        .blobs
        .iter()
        .map(|b| (b.digest.as_str(), b.size))
        .collect();
    if blobs.len() != m.blobs.len() {
        return Err("a blob is listed twice".into());
    }
    for b in &m.blobs {
        check_digest("blob", &b.digest)?;
    }
    let blob_size = |what: &str, digest: &str, size: Option<u64>| -> Result<(), String> {
        check_digest(what, digest)?;
        match blobs.get(digest) {
            None => Err(format!("{what}: blob {digest} is not in the bundle")),
            Some(have) if size.is_some_and(|s| s != *have) => Err(format!(
                "{what}: size {} differs from its blob's size {have}",
                size.unwrap_or_default()
            )),
            Some(_) => Ok(()),
        }
    };

    let mut paths: BTreeMap<&str, &EntryKind> = BTreeMap::new();
    for e in &m.entries {
        check_path(&e.path)?;
        if is_under(&e.path, STATE_DIR) {
            return Err(format!(
                "{}: {STATE_DIR} is kiln's own state, not bundle content",
                e.path
            ));
        }
        if paths.insert(e.path.as_str(), &e.kind).is_some() {
            return Err(format!("{}: listed twice", e.path));
        }
        match &e.kind {
            EntryKind::File {
                mode,
                owner,
                group,
                digest,
                size,
                restart,
                reload,
            } => {
                parse_mode(mode).map_err(|x| format!("{}: {x}", e.path))?;
                check_owner("owner", owner).map_err(|x| format!("{}: {x}", e.path))?;
                check_owner("group", group).map_err(|x| format!("{}: {x}", e.path))?;
                blob_size(&e.path, digest, Some(*size))?;
                for s in restart.iter().chain(reload) {
                    check_unit_name(s).map_err(|x| format!("{}: {x}", e.path))?;
                }
            }
            EntryKind::Directory { mode, owner, group } => {
                parse_mode(mode).map_err(|x| format!("{}: {x}", e.path))?;
                check_owner("owner", owner).map_err(|x| format!("{}: {x}", e.path))?;
                check_owner("group", group).map_err(|x| format!("{}: {x}", e.path))?;
            }
            EntryKind::Symlink { target } => {
                if target.is_empty() || target.len() > 4095 || target.contains('\0') {
                    return Err(format!("{}: bad symlink target {target:?}", e.path));
                }
            }
            EntryKind::Absent => {}
        }
    }
    // Nothing may live below a path that is a file, a symlink or absent: below a symlink it would
    // be written through the bundle's own link (a pivot); below a file or absent it cannot exist.
    for p in paths.keys() {
        let mut dir = *p;
        while let Some(i) = dir.rfind('/') {
            dir = &dir[..i];
            if dir.is_empty() {
                break;
            }
            match paths.get(dir) {
                Some(EntryKind::Directory { .. }) | None => {}
                Some(EntryKind::Absent) if matches!(paths.get(p), Some(EntryKind::Absent)) => {}
                Some(k) => {
                    return Err(format!(
                        "{p}: its parent {dir} is {} in the same bundle",
                        kind_name(k)
                    ));
                }
            }
        }
    }

    for t in &m.templates {
        check_path(&t.path)?;
        if paths.contains_key(t.path.as_str()) {
            return Err(format!("{}: both an entry and a dynamic template", t.path));
        }
        // Likewise a template (often a secret) below the bundle's own symlink, file or absent.
        let mut dir = t.path.as_str();
        while let Some(i) = dir.rfind('/') {
            dir = &dir[..i];
            match paths.get(dir) {
                Some(EntryKind::Directory { .. }) | None => {}
                Some(k) => {
                    return Err(format!(
                        "{}: its parent {dir} is {} in the same bundle",
                        t.path,
                        kind_name(k)
                    ))
                }
            }
        }
        if is_under(&t.path, STATE_DIR) {
            return Err(format!("{}: {STATE_DIR} is kiln's own state", t.path));
        }
        parse_mode(&t.mode).map_err(|x| format!("{}: {x}", t.path))?;
        blob_size(&t.path, &t.digest, None)?;
        check_owner("owner", &t.owner).map_err(|x| format!("{}: {x}", t.path))?;
        check_owner("group", &t.group).map_err(|x| format!("{}: {x}", t.path))?;
        for s in t.restart.iter().chain(&t.reload) {
            check_unit_name(s).map_err(|x| format!("{}: {x}", t.path))?;
        }
    }
    // Its names become URLs the host requests: checked here too, whatever the reader did.
    kiln_signing::dynamic::check(m)?;

    let mut names = BTreeSet::new();
    for g in &m.groups {
        check_account_name("group", &g.name)?;
        if !names.insert(g.name.as_str()) {
            return Err(format!("group {} listed twice", g.name));
        }
    }
    let mut names = BTreeSet::new();
    for u in &m.users {
        check_account_name("user", &u.name)?;
        if !names.insert(u.name.as_str()) {
            return Err(format!("user {} listed twice", u.name));
        }
        if let Some(g) = &u.group {
            check_owner("primary group of", g).map_err(|x| format!("user {}: {x}", u.name))?;
        }
        for g in &u.groups {
            check_account_name("group", g).map_err(|x| format!("user {}: {x}", u.name))?;
        }
        for (what, v) in [
            ("home", &u.home),
            ("shell", &u.shell),
            ("comment", &u.comment),
        ] {
            if let Some(v) = v {
                check_passwd_field(what, v).map_err(|x| format!("user {}: {x}", u.name))?;
                if what != "comment" {
                    check_path(v).map_err(|x| format!("user {} {what}: {x}", u.name))?;
                }
            }
        }
        for k in &u.authorized_keys {
            if k.contains(['\n', '\r', '\0']) {
                return Err(format!("user {}: an authorized key spans lines", u.name));
            }
        }
    }
    let mut names = BTreeSet::new();
    for p in &m.packages {
        check_package_name(&p.name)?;
        if !names.insert(p.name.as_str()) {
            return Err(format!("package {} listed twice", p.name));
        }
        if let Some(d) = &p.digest {
            blob_size(&format!("package {}", p.name), d, p.size)?;
        }
    }
    let mut names = BTreeSet::new();
    for a in &m.system_accounts {
        check_account_name("system account", a)?;
        if !names.insert(a.as_str()) {
            return Err(format!("system account {a} listed twice"));
        }
    }
    let mut names = BTreeSet::new();
    for s in &m.services {
        check_unit_name(&s.name)?;
        if !names.insert(s.name.as_str()) {
            return Err(format!("service {} listed twice", s.name));
        }
    }
    let mut names = BTreeSet::new();
    for c in &m.checks {
        check_health_check(c)?;
        if !names.insert(c.name.as_str()) {
            return Err(format!("check {} listed twice", c.name));
        }
    }
    let mut names = BTreeSet::new();
    for c in &m.commands {
        if !names.insert(c.name.as_str()) {
            return Err(format!("command {} listed twice", c.name));
        }
        if c.argv.first().is_none_or(|a| a.is_empty()) {
            return Err(format!("command {}: empty argv", c.name));
        }
        if c.argv.iter().any(|a| a.contains('\0')) {
            return Err(format!("command {}: NUL in argv", c.name));
        }
        if c.timeout_secs == 0 || c.timeout_secs > 24 * 3600 {
            return Err(format!(
                "command {}: timeout_secs must be between 1 and 86400",
                c.name
            ));
        }
        if let Some(p) = &c.creates {
            check_path(p).map_err(|x| format!("command {} creates: {x}", c.name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("4755"), Ok(0o4755));
        assert_eq!(parse_mode("755"), Ok(0o755));
        for bad in ["", "0648", "+644", "17777", "0o644", "-1", "000000"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert!(check_path("/etc/x").is_ok());
        for bad in [
            "",
            "/",
            "etc",
            "/etc/",
            "/etc//x",
            "/etc/../x",
            "/./x",
            "/a\0b",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(is_under("/var/lib/kiln/x", STATE_DIR));
        assert!(is_under("/var/lib/kiln", STATE_DIR));
        assert!(!is_under("/var/lib/kilnx", STATE_DIR));
    }

    #[test]
    fn names_cannot_be_options() {
        assert!(check_account_name("user", "web").is_ok());
        assert!(check_account_name("user", "--root").is_err());
        assert!(check_account_name("user", "Web").is_err());
        assert!(check_unit_name("nginx.service").is_ok());
        assert!(check_unit_name("getty@tty1.service").is_ok());
        assert!(check_unit_name("--now").is_err());
        assert!(check_unit_name("nginx").is_err());
        assert!(check_package_name("libc6").is_ok());
        assert!(check_package_name("-x").is_err());
        assert!(check_owner("owner", "0").is_ok());
        assert!(check_owner("owner", "99999999999").is_err());
    }
}
