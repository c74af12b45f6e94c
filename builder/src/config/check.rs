//! Small checks shared by every part of the schema: names, paths, modes, and readers that
//! turn a [`Node`] into a Rust value or say what was expected instead.

use super::diag::Sink;
use super::yaml::{Node, NodeKind};

/// `[a-z0-9][a-z0-9-]{0,62}`: hostgroup and layer names.
pub fn is_hostgroup_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// User and group names ([`kiln_signing::spec::is_account_name`]).
pub use kiln_signing::spec::is_account_name;

/// Debian package names and versions ([`kiln_signing::spec`]).
pub use kiln_signing::spec::{is_package_name, is_package_version};

/// Debian suite (or codename) names: `bookworm`, `bookworm-updates`, `bookworm-security`.
pub fn is_suite_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+.-".contains(c))
}

/// Suffixes a unit file may have.
pub const UNIT_SUFFIXES: &[&str] = &[
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
];

/// Suffixes a service (something that can be started) may have.
pub const SERVICE_SUFFIXES: &[&str] = &["service", "socket", "timer", "path", "target", "mount"];

fn unit_chars_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b":_.@-\\".contains(&c))
}

/// A unit name ([`kiln_signing::spec::is_unit_name`]) with one of `suffixes`.
fn has_unit_form(s: &str, suffixes: &[&str]) -> bool {
    kiln_signing::spec::is_unit_name(s)
        && s.rsplit_once('.')
            .is_some_and(|(_, suffix)| suffixes.contains(&suffix))
}

/// A service name: `nginx.service`, `app@1.service`, `backup.timer`...
pub fn is_service_name(s: &str) -> bool {
    has_unit_form(s, SERVICE_SUFFIXES)
}

/// A unit file name (`app.service`) or a drop-in (`ssh.service.d/10-kiln.conf`).
pub fn is_unit_key(s: &str) -> bool {
    if let Some((dir, file)) = s.split_once('/') {
        let Some(unit) = dir.strip_suffix(".d") else {
            return false;
        };
        let Some(stem) = file.strip_suffix(".conf") else {
            return false;
        };
        has_unit_form(unit, UNIT_SUFFIXES) && unit_chars_ok(stem) && !stem.starts_with('.')
    } else {
        has_unit_form(s, UNIT_SUFFIXES)
    }
}

/// Command and check names: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
pub use kiln_signing::spec::is_command_name;

/// Parameter names, usable as `params.<name>` in templates: `[a-z_][a-z0-9_]*`.
pub fn is_param_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// Why `s` is not a normalized absolute path on the target, if it is not.
pub use kiln_signing::spec::path_problem as abs_path_problem;

/// Why `s` is not a plain relative path inside a directory of the configuration, if it is not.
pub fn rel_path_problem(s: &str) -> Option<String> {
    if s.contains('\0') || s.contains('\n') || s.contains('\r') {
        return Some(format!("from: {s:?} contains a NUL or newline character"));
    }
    if s.is_empty() {
        return Some("from: is empty".into());
    }
    if s.starts_with('/') {
        return Some(format!("from: {s:?} must be relative"));
    }
    if s.ends_with('/') {
        return Some(format!("from: {s:?} ends with \"/\""));
    }
    if s.contains("//") {
        return Some(format!("from: {s:?} contains \"//\""));
    }
    if s.split('/').any(|c| c == "..") {
        return Some(format!(
            "from: {s:?} has a \"..\" component (it must stay inside its directory)"
        ));
    }
    if s.split('/').any(|c| c == ".") {
        return Some(format!("from: {s:?} has a \".\" component"));
    }
    None
}

/// A mode: a quoted string of 3 or 4 octal digits. Setuid, setgid and sticky bits can only
/// be written as the first of 4 digits, so they are never set by accident.
pub fn mode(node: &Node, d: &mut Sink) -> Option<u32> {
    match &node.kind {
        NodeKind::Str(s) => match kiln_signing::spec::parse_mode(s) {
            Ok(mode) => Some(mode),
            Err(e) => {
                d.err(&node.span, e);
                None
            }
        },
        NodeKind::Int(_) => {
            let raw = node.text();
            let message = match unquoted_mode(&raw) {
                Some(mode) => {
                    format!("mode {raw} must be a quoted string; quote it: mode: \"{mode:04o}\"")
                }
                None => format!(
                    "mode {raw} must be a quoted string of 3 or 4 octal digits, such as mode: \"0644\""
                ),
            };
            d.err(&node.span, message);
            None
        }
        _ => {
            d.err(
                &node.span,
                format!(
                    "expected a mode such as \"0644\", found {}",
                    node.describe()
                ),
            );
            None
        }
    }
}

/// The mode a user meant by an unquoted `mode: 640` or `mode: 0o640` (YAML reads both as
/// integers, the first as decimal): its digits read as octal, if they are octal digits and
/// make a mode (at most 0o7777).
fn unquoted_mode(raw: &str) -> Option<u32> {
    let digits = raw.strip_prefix("0o").unwrap_or(raw);
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|c| (b'0'..=b'7').contains(&c))
    {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

/// The entries of a map (`null` counts as an empty map).
pub fn map<'a>(node: &'a Node, d: &mut Sink) -> Option<&'a [(Node, Node)]> {
    match &node.kind {
        NodeKind::Map(m) => Some(m),
        NodeKind::Null => Some(&[]),
        _ => {
            d.err(
                &node.span,
                format!("expected a map, found {}", node.describe()),
            );
            None
        }
    }
}

/// The items of a list (`null` counts as an empty list).
pub fn list<'a>(node: &'a Node, d: &mut Sink) -> Option<&'a [Node]> {
    match &node.kind {
        NodeKind::Seq(s) => Some(s),
        NodeKind::Null => Some(&[]),
        _ => {
            d.err(
                &node.span,
                format!("expected a list, found {}", node.describe()),
            );
            None
        }
    }
}

/// A string; a plain scalar that YAML read as a number or a bool gets a hint to quote it.
pub fn string<'a>(key: &str, node: &'a Node, d: &mut Sink) -> Option<&'a str> {
    match &node.kind {
        NodeKind::Str(s) => Some(s),
        NodeKind::Int(_) | NodeKind::Float(_) | NodeKind::Bool(_) if node.raw.is_some() => {
            d.err(
                &node.span,
                format!(
                    "expected a string, found {}; quote it: {key}: \"{}\"",
                    node.describe(),
                    node.text()
                ),
            );
            None
        }
        _ => {
            d.err(
                &node.span,
                format!("expected a string, found {}", node.describe()),
            );
            None
        }
    }
}

/// A list of strings (entries that are not strings are reported and skipped).
pub fn strings<'a>(key: &str, node: &'a Node, d: &mut Sink) -> Vec<&'a Node> {
    let mut out = Vec::new();
    for item in list(node, d).unwrap_or(&[]) {
        if string(key, item, d).is_some() {
            out.push(item);
        }
    }
    out
}

pub fn boolean(node: &Node, d: &mut Sink) -> Option<bool> {
    match node.kind {
        NodeKind::Bool(b) => Some(b),
        NodeKind::Str(ref s)
            if matches!(s.to_ascii_lowercase().as_str(), "yes" | "no" | "on" | "off") =>
        {
            d.err(&node.span, format!("expected true or false, found the string {s:?} (YAML 1.2 has no yes/no booleans)"));
            None
        }
        _ => {
            d.err(
                &node.span,
                format!("expected true or false, found {}", node.describe()),
            );
            None
        }
    }
}

/// An integer in `lo..=hi`.
pub fn int_in(what: &str, node: &Node, lo: i64, hi: i64, d: &mut Sink) -> Option<i64> {
    match node.kind {
        NodeKind::Int(i) if (lo..=hi).contains(&i) => Some(i),
        NodeKind::Int(_) => {
            d.err(
                &node.span,
                format!("{what} {} is out of range ({lo}-{hi})", node.text()),
            );
            None
        }
        _ => {
            d.err(
                &node.span,
                format!("expected an integer {what}, found {}", node.describe()),
            );
            None
        }
    }
}

/// Report keys of `entries` that are not in `allowed`.
pub fn known_keys(entries: &[(Node, Node)], allowed: &[&str], what: &str, d: &mut Sink) {
    for (k, _) in entries {
        let name = k.key_str();
        if !allowed.contains(&name) {
            d.err(
                &k.span,
                format!(
                    "unknown key {name:?} in {what}{} (expected one of: {})",
                    did_you_mean(name, allowed.iter().copied()),
                    allowed.join(", ")
                ),
            );
        }
    }
}

/// `: did you mean "mode"?` when one of `known` is a likely typo of `name` (a letter or two
/// wrong, missing, extra or swapped, or another case); else nothing.
pub fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    match closest(name, known) {
        Some(k) => format!(": did you mean {k:?}?"),
        None => String::new(),
    }
}

/// The candidate nearest to `name` (the first of the nearest), if near enough to be a typo:
/// one edit for names of up to five characters, two up to eight, three for longer ones
/// (`directory` for `directories`).
pub fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let limit = match name.chars().count() {
        0..=5 => 1,
        6..=8 => 2,
        _ => 3,
    };
    let mut best: Option<(usize, &str)> = None;
    for k in known {
        if k == name {
            continue;
        }
        let d = edit_distance(&lower, &k.to_lowercase());
        let nearer = match best {
            Some((b, _)) => d < b,
            None => true,
        };
        if d <= limit && nearer {
            best = Some((d, k));
        }
    }
    best.map(|(_, k)| k)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// adjacent characters each count one (so "mdoe" is one edit from "mode").
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: two back (for swaps), previous, current.
    let mut two_back = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(two_back[j - 2] + 1);
            }
        }
        std::mem::swap(&mut two_back, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(
            is_hostgroup_name("web-1") && !is_hostgroup_name("Web") && !is_hostgroup_name("-a")
        );
        assert!(is_hostgroup_name(&"a".repeat(63)) && !is_hostgroup_name(&"a".repeat(64)));
        assert!(
            is_account_name("_chrony") && is_account_name("www-data") && !is_account_name("1x")
        );
        assert!(!is_account_name("Deploy") && !is_account_name(&"a".repeat(33)));
        assert!(is_package_name("libc6") && is_package_name("g++") && !is_package_name("a"));
        assert!(!is_package_name("Nginx") && !is_package_name("-x") && !is_package_name("a_b"));
        assert!(is_package_version("1.22.1-9+deb12u1") && is_package_version("1:2.3~rc1"));
        assert!(
            !is_package_version("1.0 beta")
                && !is_package_version("")
                && !is_package_version("x:1")
        );
        assert!(is_service_name("nginx.service") && is_service_name("app@1.service"));
        assert!(
            !is_service_name("nginx")
                && !is_service_name(".service")
                && !is_service_name("a.slice")
        );
        assert!(is_unit_key("app.service") && is_unit_key("ssh.service.d/10-kiln.conf"));
        assert!(
            !is_unit_key("ssh.service.d/10-kiln")
                && !is_unit_key("a/b.service")
                && !is_unit_key("x.d/y.conf")
        );
    }

    #[test]
    fn the_mode_hint_is_the_mode_written() {
        assert_eq!(unquoted_mode("0644"), Some(0o644));
        assert_eq!(unquoted_mode("640"), Some(0o640));
        assert_eq!(unquoted_mode("0o640"), Some(0o640));
        assert_eq!(unquoted_mode("4755"), Some(0o4755));
        assert_eq!(unquoted_mode("00600"), Some(0o600));
        assert_eq!(unquoted_mode("888"), None);
        assert_eq!(unquoted_mode("0x1a4"), None);
        assert_eq!(unquoted_mode("17777"), None);
        assert_eq!(unquoted_mode("0o"), None);
    }

    #[test]
    fn suggestions_for_typos() {
        assert_eq!(edit_distance("mdoe", "mode"), 1);
        assert_eq!(edit_distance("ownr", "owner"), 1);
        assert_eq!(edit_distance("prefix", "prefixes"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let keys = ["content", "from", "mode", "owner", "group"];
        assert_eq!(closest("mdoe", keys), Some("mode"));
        assert_eq!(closest("Owner", keys), Some("owner"));
        assert_eq!(closest("grop", keys), Some("group"));
        assert_eq!(closest("contnet", keys), Some("content"));
        assert_eq!(closest("mode", keys), None);
        assert_eq!(closest("size", keys), None);
        assert_eq!(closest("ntpd", ["chrony", "nginx"]), None);
        assert_eq!(closest("ngnix", ["chrony", "nginx"]), Some("nginx"));
        assert_eq!(
            closest("directory", ["directories", "dynamic"]),
            Some("directories")
        );
        assert_eq!(closest("Groups", ["group", "groups"]), Some("groups"));
        assert_eq!(
            did_you_mean("wbe", ["db", "web"]),
            ": did you mean \"web\"?"
        );
        assert_eq!(did_you_mean("x", ["db", "web"]), "");
    }

    #[test]
    fn paths() {
        assert_eq!(abs_path_problem("/etc/motd"), None);
        assert!(abs_path_problem("etc/motd")
            .unwrap()
            .contains("not absolute"));
        assert!(abs_path_problem("/etc/../x").unwrap().contains("component"));
        assert!(abs_path_problem("/etc/./x").unwrap().contains("component"));
        assert!(abs_path_problem("/etc//x").unwrap().contains("//"));
        assert!(abs_path_problem("/etc/x/").unwrap().contains("ends with"));
        assert!(abs_path_problem("/etc/x\n").unwrap().contains("NUL"));
        assert!(abs_path_problem("/").is_some());
        assert_eq!(rel_path_problem("a/b.conf"), None);
        assert!(rel_path_problem("../x").is_some() && rel_path_problem("/x").is_some());
        assert!(rel_path_problem("a/../../x").is_some() && rel_path_problem("").is_some());
    }
}
