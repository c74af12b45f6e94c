//! The syntax of what a bundle's dynamic section names: Consul keys and prefixes, Vault paths,
//! fields, roles, mounts, TTLs. These names end up in URLs the host requests, so the builder,
//! the bundle reader and the applier all check them with these same functions.

use crate::manifest::{Dynamic, Manifest};

/// Longest Consul key or Vault path accepted.
pub const MAX_KEY: usize = 512;
/// Longest generated value.
pub const MAX_GENERATE: u32 = 1024;
/// Shortest generated value (less is no secret).
pub const MIN_GENERATE: u32 = 8;

/// No empty segment (`//`, a leading `/`), no `..` anywhere and no `.` segment: URL parsers
/// resolve `.` and `..` segments away (`kiln/./web/` would be requested as `kiln/web/`, whose
/// keys then match no declared prefix), and Consul refuses `..`.
fn segments_ok(s: &str, allowed: impl Fn(u8) -> bool) -> bool {
    !s.is_empty()
        && s.len() <= MAX_KEY
        && s.bytes().all(allowed)
        && !s.starts_with('/')
        && !s.contains("//")
        && !s.contains("..")
        && !s.split('/').any(|seg| seg == ".")
}

/// A Consul key as the reference allows it: `[A-Za-z0-9,_./-]`, never `..`, not starting with
/// `/`, no empty or `.` segment, not ending in `/`.
pub fn is_consul_key(s: &str) -> bool {
    segments_ok(s, |b| b.is_ascii_alphanumeric() || b",_./-".contains(&b)) && !s.ends_with('/')
}

/// A Consul prefix read recursively: a key ending in `/` (so `web/` never matches `webby`).
pub fn is_consul_prefix(s: &str) -> bool {
    s.len() >= 2 && s.ends_with('/') && is_consul_key(&s[..s.len() - 1])
}

/// A Vault API path: `[A-Za-z0-9_.-]` segments separated by single `/`, no `..`.
pub fn is_vault_path(s: &str) -> bool {
    segments_ok(s, |b| b.is_ascii_alphanumeric() || b"_./-".contains(&b)) && !s.ends_with('/')
}

/// A KV v2 path in API form: `<mount>/data/<path>`, both parts non-empty.
pub fn is_kv2_path(s: &str) -> bool {
    is_vault_path(s)
        && s.split_once("/data/")
            .is_some_and(|(m, p)| !m.is_empty() && !p.is_empty())
}

/// A mount, role or field name: `[A-Za-z0-9_.-]{1,128}`, not `.`/`..`.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A Vault mount: one or more names separated by `/`.
pub fn is_mount(s: &str) -> bool {
    is_vault_path(s) && s.split('/').all(is_name)
}

/// A Vault duration as Kiln accepts it: digits then `s`, `m` or `h` (`72h`).
pub fn is_ttl(s: &str) -> bool {
    let Some(num) = s.strip_suffix(['s', 'm', 'h']) else {
        return false;
    };
    !num.is_empty() && num.len() <= 9 && num.bytes().all(|b| b.is_ascii_digit())
}

/// A DNS name for a certificate's alt_names (a leading `*.` is allowed).
pub fn is_dns_name(s: &str) -> bool {
    let rest = s.strip_prefix("*.").unwrap_or(s);
    !rest.is_empty()
        && s.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The `(path, field)` of a template's Vault read `path#field`.
pub fn split_vault_read(s: &str) -> Option<(&str, &str)> {
    s.split_once('#')
}

/// Checks a manifest's dynamic section and that every template reads only what it declares.
/// Errors name the offending value.
pub fn check(m: &Manifest) -> Result<(), String> {
    let empty = Dynamic {
        consul: None,
        vault: None,
    };
    let d = m.dynamic.as_ref().unwrap_or(&empty);
    if let Some(c) = &d.consul {
        if c.prefixes.is_empty() {
            return Err("dynamic.consul: no prefixes".into());
        }
        for p in &c.prefixes {
            if !is_consul_prefix(p) {
                return Err(format!(
                    "dynamic.consul: {p:?} is not a Consul prefix ending in /"
                ));
            }
        }
    }
    if let Some(v) = &d.vault {
        if !is_name(&v.role) {
            return Err(format!("dynamic.vault: role {:?} is not a name", v.role));
        }
        if !is_mount(&v.auth_mount) {
            return Err(format!(
                "dynamic.vault: auth_mount {:?} is not a mount path",
                v.auth_mount
            ));
        }
        if let Some(id) = &v.role_id {
            if !is_name(id) {
                return Err("dynamic.vault: role_id is not a role_id".into());
            }
        }
        for p in &v.kv {
            if !is_kv2_path(p) {
                return Err(format!(
                    "dynamic.vault: kv path {p:?} is not a KV v2 path <mount>/data/<path>"
                ));
            }
        }
        for g in &v.generate {
            if !is_kv2_path(&g.path) || !is_name(&g.field) {
                return Err(format!(
                    "dynamic.vault: generate {:?} field {:?}: not a KV v2 path and field",
                    g.path, g.field
                ));
            }
            if !(MIN_GENERATE..=MAX_GENERATE).contains(&g.length) {
                return Err(format!(
                    "dynamic.vault: generate {}#{}: length {} is not in {MIN_GENERATE}..={MAX_GENERATE}",
                    g.path, g.field, g.length
                ));
            }
        }
        if let Some(p) = &v.pki {
            if !is_mount(&p.mount) || !is_name(&p.role) || !is_ttl(&p.ttl) {
                return Err(format!(
                    "dynamic.vault.pki: mount {:?}, role {:?} or ttl {:?} is malformed",
                    p.mount, p.role, p.ttl
                ));
            }
            if p.common_name.is_empty()
                || p.common_name.len() > 255
                || p.common_name.chars().any(char::is_control)
            {
                return Err(
                    "dynamic.vault.pki: common_name is empty, too long or has control characters"
                        .into(),
                );
            }
            for n in &p.alt_names {
                if !is_dns_name(n) {
                    return Err(format!(
                        "dynamic.vault.pki: alt name {n:?} is not a DNS name"
                    ));
                }
            }
            for ip in &p.ip_sans {
                if ip.parse::<std::net::IpAddr>().is_err() {
                    return Err(format!("dynamic.vault.pki: {ip:?} is not an IP address"));
                }
            }
        }
    }
    for t in &m.templates {
        for k in &t.consul {
            let declared = d
                .consul
                .as_ref()
                .is_some_and(|c| c.prefixes.iter().any(|p| k.starts_with(p.as_str())));
            if !(is_consul_key(k) || is_consul_prefix(k)) || !declared {
                return Err(format!(
                    "template {}: Consul key {k:?} is not under a declared prefix",
                    t.path
                ));
            }
        }
        for r in &t.vault {
            let ok = match (split_vault_read(r), &d.vault) {
                (Some((path, field)), Some(v)) => {
                    is_name(field)
                        && (v.kv.iter().any(|p| p == path)
                            || v.generate.iter().any(|g| g.path == path)
                            || v.pki
                                .as_ref()
                                .is_some_and(|p| path == format!("{}/issue/{}", p.mount, p.role)))
                }
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "template {}: Vault read {r:?} is not a declared kv, generate or pki source",
                    t.path
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_consul_key("kiln/apps/web/version"));
        assert!(is_consul_prefix("kiln/apps/web/"));
        for bad in [
            "", "/a", "a//b", "a/../b", "a/", "a b", "a?b", "a%2f", "a/./b", "./a", "a/.",
        ] {
            assert!(!is_consul_key(bad), "{bad:?}");
        }
        assert!(is_consul_key("a/.b/c.") && is_consul_key("v1.2"));
        assert!(!is_consul_prefix("kiln/apps/web"));
        assert!(!is_consul_prefix("/"));
        for bad in [
            "kiln/./web/",
            "./kiln/",
            "kiln/./",
            "/kiln/",
            "kiln//web/",
            "kiln/x/../y/",
        ] {
            assert!(!is_consul_prefix(bad), "{bad:?}");
        }
        assert!(is_kv2_path("secret/data/db/app"));
        for bad in [
            "secret/db/app",
            "secret/data/",
            "/secret/data/x",
            "secret/data/../x",
            "data/x",
        ] {
            assert!(!is_kv2_path(bad), "{bad:?}");
        }
        assert!(is_ttl("72h") && is_ttl("30m") && !is_ttl("1d") && !is_ttl("h") && !is_ttl("1.5h"));
        assert!(is_dns_name("www.example.invalid") && is_dns_name("*.example.invalid"));
        assert!(!is_dns_name("a..b") && !is_dns_name("-a.b") && !is_dns_name("a b"));
        assert!(is_mount("pki") && is_mount("team/pki") && !is_mount("pki/") && !is_mount("../x"));
    }
}

#[cfg(test)]
mod canonical {
    use crate::testutil::sample_manifest;
    use crate::Manifest;

    /// Bundles built before the dynamic section existed keep their exact bytes: a manifest
    /// without one serializes without the key, and parses back to the same value.
    #[test]
    fn a_manifest_without_dynamic_sources_has_no_dynamic_key() {
        let mut m = sample_manifest();
        m.dynamic = None;
        m.templates.clear();
        let json = m.to_canonical_json();
        assert!(!String::from_utf8_lossy(&json).contains("\"dynamic\""));
        let back: Manifest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_canonical_json(), json);
        // And with one, it round-trips too.
        let m = sample_manifest();
        let json = m.to_canonical_json();
        let back: Manifest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.to_canonical_json(), json);
        assert!(super::check(&m).is_ok());
    }

    #[test]
    fn undeclared_reads_are_refused() {
        let mut m = sample_manifest();
        m.templates[0].consul = vec!["other/port".into()];
        assert!(super::check(&m).unwrap_err().contains("other/port"));
        let mut m = sample_manifest();
        m.templates[0].vault = vec!["secret/data/x#y".into()];
        assert!(super::check(&m).is_err());
    }
}
