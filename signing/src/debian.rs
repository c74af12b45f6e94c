//! What a Debian root says about itself, read one way by every part of Kiln: the builder
//! (`kiln base show`, package resolution, the manifest's base), the reader's base policy and
//! kiln-firstboot (the base check, the packages phase). Parsers only: each caller reads the
//! file its own way (the builder from a directory or a tar, kiln-firstboot through its
//! confined root).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// `ID` and `VERSION_ID` of an os-release file, quotes removed. A missing `ID` is `linux` and a
/// missing `VERSION_ID` is empty, as os-release(5) says (Debian testing has no `VERSION_ID`).
pub fn parse_os_release(text: &str) -> (String, String) {
    let mut id = None;
    let mut version_id = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("ID=") {
            id = Some(unquote(v));
        } else if let Some(v) = line.strip_prefix("VERSION_ID=") {
            version_id = Some(unquote(v));
        }
    }
    (
        id.unwrap_or_else(|| "linux".into()),
        version_id.unwrap_or_default(),
    )
}

/// os-release values are shell-quoted: strip one level of `"…"` or `'…'` and `\` escapes.
fn unquote(v: &str) -> String {
    let v = v.trim();
    if let Some(inner) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        return inner.to_string();
    }
    let inner = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Installed packages of a dpkg status file, name -> (version, architecture): those whose
/// `Status` has `installed` as its third word (dpkg's `db:Status-Status`), whatever the wanted
/// state: `install ok installed` and a held `hold ok installed` alike, not `deinstall ok
/// config-files` nor a package dpkg left half-way.
pub fn parse_dpkg_status(text: &str) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let mut package = None;
        let mut status = None;
        let mut version = String::new();
        let mut arch = String::new();
        for line in stanza.lines() {
            // Continuation lines (a description, conffiles) start with a space or a tab.
            if line.starts_with([' ', '\t']) {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                let v = v.trim();
                match k {
                    "Package" => package = Some(v.to_string()),
                    "Status" => status = Some(v.to_string()),
                    "Version" => version = v.to_string(),
                    "Architecture" => arch = v.to_string(),
                    _ => {}
                }
            }
        }
        if let (Some(p), Some(s)) = (package, status) {
            if s.split_whitespace().nth(2) == Some("installed") {
                out.insert(p, (version, arch));
            }
        }
    }
    out
}

/// sha256 of the installed package set: one `name version arch` line per package, sorted
/// bytewise, each ending in a newline. The same as
/// `dpkg-query --admindir=ROOT/var/lib/dpkg -W -f='${db:Status-Status} ${Package} ${Version} ${Architecture}\n'
///  | awk '$1 == "installed" { print $2, $3, $4 }' | LC_ALL=C sort | sha256sum`.
pub fn packages_digest(installed: &BTreeMap<String, (String, String)>) -> String {
    let mut lines: Vec<String> = installed
        .iter()
        .map(|(n, (v, a))| format!("{n} {v} {a}\n"))
        .collect();
    lines.sort();
    let mut h = Sha256::new();
    for l in &lines {
        h.update(l.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_fields_unquoted_with_os_release5_defaults() {
        let (id, v) = parse_os_release("NAME=\"Debian GNU/Linux\"\nID=debian\nVERSION_ID=\"12\"\n");
        assert_eq!((id.as_str(), v.as_str()), ("debian", "12"));
        let (id, v) = parse_os_release("ID='ubuntu'\n  VERSION_ID=24.04 \nNAME=\"a \\\"b\\\"\"\n");
        assert_eq!((id.as_str(), v.as_str()), ("ubuntu", "24.04"));
        let (id, v) = parse_os_release("PRETTY_NAME=x\n");
        assert_eq!((id.as_str(), v.as_str()), ("linux", ""));
    }

    #[test]
    fn dpkg_status_counts_installed_held_packages_and_nothing_half_done() {
        let text = "\
Package: a
Status: install ok installed
Architecture: amd64
Version: 1.0
Description: first line
 Version: 9.9 (a continuation line, not a field)

Package: held
Status: hold ok installed
Version: 2.0-1
Architecture: all

Package: removed
Status: deinstall ok config-files
Version: 3

Package: half
Status: install reinstreq half-installed
Version: 4
";
        let s = parse_dpkg_status(text);
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            [
                ("a".to_string(), ("1.0".to_string(), "amd64".to_string())),
                ("held".to_string(), ("2.0-1".to_string(), "all".to_string())),
            ]
        );
    }
}
