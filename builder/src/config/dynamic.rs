//! The `dynamic:` section: the Consul prefixes and Vault sources a hostgroup's dynamic
//! templates may read (docs/config.md, "dynamic"). Checked as written in each file, then, once
//! merged (default.yaml, then the hostgroup; maps merge deeply, lists are replaced), turned
//! into the manifest's [`kiln_signing::Dynamic`]. Each dynamic template is then checked to
//! read only what this declares (resolve.rs).

use std::collections::BTreeSet;

use kiln_apply::template::{self as t, Read};
use kiln_signing::dynamic::{
    is_consul_prefix, is_dns_name, is_kv2_path, is_mount, is_name, is_ttl, MAX_GENERATE,
    MIN_GENERATE,
};
use kiln_signing::{Charset, ConsulSources, Dynamic, Generate, Pki, VaultSources};

use super::check::{self, known_keys};
use super::diag::Sink;
use super::yaml::{Node, NodeKind};

pub const DYNAMIC_KEYS: &[&str] = &["consul", "vault"];
pub const CONSUL_KEYS: &[&str] = &["prefixes"];
pub const VAULT_KEYS: &[&str] = &["role", "auth_mount", "role_id", "kv", "generate", "pki"];
pub const GENERATE_KEYS: &[&str] = &["path", "field", "length", "charset"];
pub const PKI_KEYS: &[&str] = &[
    "mount",
    "role",
    "common_name",
    "alt_names",
    "ip_sans",
    "ttl",
];

/// Default length of a generated value.
pub const DEFAULT_LENGTH: u32 = 32;
/// Default lifetime of the host's certificate.
pub const DEFAULT_TTL: &str = "72h";

/// Where problems go: `shape` for what is wrong in a file as written, `required` for what is
/// missing once everything is merged (only reported for the merge).
struct Sinks<'a> {
    shape: &'a mut Sink,
    required: Option<&'a mut Sink>,
}

impl Sinks<'_> {
    fn missing(&mut self, node: &Node, msg: String) {
        if let Some(d) = self.required.as_deref_mut() {
            d.err(&node.span, msg);
        }
    }
}

/// Checks the section as one file writes it.
pub fn check(node: &Node, d: &mut Sink) {
    let _ = read(
        node,
        &mut Sinks {
            shape: d,
            required: None,
        },
    );
}

/// The merged section: shape problems were reported per file already (they go to a throwaway
/// sink here); what is missing is reported to `d`.
pub fn resolve(node: &Node, d: &mut Sink) -> Option<Dynamic> {
    let mut throwaway = Sink::default();
    read(
        node,
        &mut Sinks {
            shape: &mut throwaway,
            required: Some(d),
        },
    )
}

fn string_with<'a>(
    key: &str,
    v: &'a Node,
    d: &mut Sink,
    ok: impl Fn(&str) -> bool,
    what: &str,
) -> Option<&'a str> {
    let s = check::string(key, v, d)?;
    if ok(s) {
        Some(s)
    } else {
        d.err(&v.span, format!("{key}: {s:?} is not {what}"));
        None
    }
}

fn strings_with(
    key: &str,
    v: &Node,
    d: &mut Sink,
    ok: impl Fn(&str) -> bool,
    what: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for item in check::strings(key, v, d) {
        let s = item.as_str().unwrap_or_default();
        if !ok(s) {
            d.err(&item.span, format!("{key}: {s:?} is not {what}"));
        } else if !seen.insert(s.to_string()) {
            d.err(&item.span, format!("{key}: {s:?} is listed twice"));
        } else {
            out.push(s.to_string());
        }
    }
    out.sort();
    out
}

const PREFIX: &str =
    "a Consul prefix ending in / ([A-Za-z0-9,_./-]; no leading /, no //, no . or .. segment)";
const KV2: &str = "a KV v2 path in API form, <mount>/data/<path> (e.g. secret/data/db/app)";

fn read(node: &Node, s: &mut Sinks) -> Option<Dynamic> {
    let entries = check::map(node, s.shape)?;
    known_keys(entries, DYNAMIC_KEYS, "dynamic", s.shape);
    let mut out = Dynamic {
        consul: None,
        vault: None,
    };
    for (k, v) in entries {
        match k.key_str() {
            "consul" => out.consul = read_consul(k, v, s),
            "vault" => out.vault = read_vault(k, v, s),
            _ => {}
        }
    }
    Some(out)
}

fn read_consul(key: &Node, v: &Node, s: &mut Sinks) -> Option<ConsulSources> {
    let entries = check::map(v, s.shape)?;
    known_keys(entries, CONSUL_KEYS, "dynamic.consul", s.shape);
    let prefixes = match v.get("prefixes") {
        Some(p) => strings_with("prefixes", p, s.shape, is_consul_prefix, PREFIX),
        None => Vec::new(),
    };
    let written =
        matches!(v.get("prefixes").map(|p| &p.kind), Some(NodeKind::Seq(l)) if !l.is_empty());
    if prefixes.is_empty() && !written {
        s.missing(
            key,
            "dynamic.consul: prefixes is missing or empty (the Consul prefixes templates read, e.g. [kiln/apps/web/])".into(),
        );
    }
    if prefixes.is_empty() {
        return None;
    }
    Some(ConsulSources { prefixes })
}

fn read_vault(key: &Node, v: &Node, s: &mut Sinks) -> Option<VaultSources> {
    let entries = check::map(v, s.shape)?;
    known_keys(entries, VAULT_KEYS, "dynamic.vault", s.shape);
    let d = &mut *s.shape;
    let role = v.get("role").and_then(|r| {
        string_with(
            "role",
            r,
            d,
            is_name,
            "an AppRole role name ([A-Za-z0-9_.-])",
        )
    });
    let auth_mount = match v.get("auth_mount") {
        Some(m) => string_with("auth_mount", m, d, is_mount, "a mount path such as approle")
            .map(str::to_string),
        None => Some("approle".to_string()),
    };
    let role_id = v.get("role_id").and_then(|r| {
        string_with("role_id", r, d, is_name, "an AppRole role_id").map(str::to_string)
    });
    let kv = match v.get("kv") {
        Some(list) => strings_with("kv", list, d, is_kv2_path, KV2),
        None => Vec::new(),
    };
    let mut generate: Vec<Generate> = Vec::new();
    if let Some(list) = v.get("generate") {
        for item in check::list(list, d).unwrap_or(&[]) {
            if let Some(g) = read_generate(item, d) {
                if generate
                    .iter()
                    .any(|o| o.path == g.path && o.field == g.field)
                {
                    d.err(
                        &item.span,
                        format!("generate: {}#{} is listed twice", g.path, g.field),
                    );
                } else {
                    generate.push(g);
                }
            }
        }
    }
    generate.sort();
    let pki = v.get("pki").and_then(|p| read_pki(p, s));
    let Some(role) = role else {
        if v.get("role").is_none() {
            s.missing(
                key,
                "dynamic.vault: role is missing (the AppRole role hosts of this hostgroup log in as)"
                    .into(),
            );
        }
        return None;
    };
    Some(VaultSources {
        role: role.to_string(),
        auth_mount: auth_mount?,
        role_id,
        kv,
        generate,
        pki,
    })
}

fn read_generate(item: &Node, d: &mut Sink) -> Option<Generate> {
    let entries = check::map(item, d)?;
    known_keys(entries, GENERATE_KEYS, "generate", d);
    let mut ok = true;
    let path = match item.get("path") {
        Some(p) => string_with("path", p, d, is_kv2_path, KV2),
        None => {
            d.err(&item.span, "generate: path is required");
            None
        }
    };
    let field = match item.get("field") {
        Some(f) => string_with("field", f, d, is_name, "a field name ([A-Za-z0-9_.-])"),
        None => {
            d.err(&item.span, "generate: field is required");
            None
        }
    };
    let length = match item.get("length") {
        None => DEFAULT_LENGTH,
        Some(n) => match &n.kind {
            NodeKind::Int(i) if (MIN_GENERATE as i64..=MAX_GENERATE as i64).contains(i) => {
                *i as u32
            }
            _ => {
                d.err(
                    &n.span,
                    format!(
                        "generate: length must be an integer from {MIN_GENERATE} to {MAX_GENERATE}, found {}",
                        if matches!(n.kind, NodeKind::Int(_)) { n.text() } else { n.describe().to_string() }
                    ),
                );
                ok = false;
                0
            }
        },
    };
    let charset = match item.get("charset") {
        None => Charset::Alnum,
        Some(c) => match check::string("charset", c, d) {
            Some("alnum") => Charset::Alnum,
            Some("hex") => Charset::Hex,
            Some("base64url") => Charset::Base64url,
            Some(other) => {
                d.err(
                    &c.span,
                    format!("generate: charset {other:?} is not one of: alnum, hex, base64url"),
                );
                ok = false;
                Charset::Alnum
            }
            None => {
                ok = false;
                Charset::Alnum
            }
        },
    };
    if !ok {
        return None;
    }
    Some(Generate {
        path: path?.to_string(),
        field: field?.to_string(),
        length,
        charset,
    })
}

fn read_pki(p: &Node, s: &mut Sinks) -> Option<Pki> {
    let entries = check::map(p, s.shape)?;
    known_keys(entries, PKI_KEYS, "dynamic.vault.pki", s.shape);
    let d = &mut *s.shape;
    let mount = match p.get("mount") {
        Some(m) => string_with("mount", m, d, is_mount, "a mount path such as pki")?.to_string(),
        None => "pki".into(),
    };
    let role = p
        .get("role")
        .and_then(|r| string_with("role", r, d, is_name, "a PKI role name ([A-Za-z0-9_.-])"));
    let common_name = p.get("common_name").and_then(|c| {
        let text = check::string("common_name", c, d)?;
        match common_name_problem(text) {
            None => Some(text),
            Some(why) => {
                d.err(&c.span, format!("common_name: {why}"));
                None
            }
        }
    });
    let alt_names = match p.get("alt_names") {
        Some(l) => strings_with("alt_names", l, d, is_dns_name, "a DNS name"),
        None => Vec::new(),
    };
    let ip_sans = match p.get("ip_sans") {
        Some(l) => strings_with(
            "ip_sans",
            l,
            d,
            |s| s.parse::<std::net::IpAddr>().is_ok(),
            "an IP address",
        ),
        None => Vec::new(),
    };
    let ttl = match p.get("ttl") {
        Some(t) => {
            string_with("ttl", t, d, is_ttl, "a duration such as 72h (s, m or h)")?.to_string()
        }
        None => DEFAULT_TTL.into(),
    };
    if p.get("role").is_none() {
        s.missing(
            p,
            "dynamic.vault.pki: role is missing (the PKI role that issues the host's certificate)"
                .into(),
        );
    }
    if p.get("common_name").is_none() {
        s.missing(p, "dynamic.vault.pki: common_name is missing (e.g. \"{{ hostname }}.web.example.internal\")".into());
    }
    Some(Pki {
        mount,
        role: role?.to_string(),
        common_name: common_name?.to_string(),
        alt_names,
        ip_sans,
        ttl,
    })
}

/// The common name is a template of its own, seeing `hostname` and `hostgroup`: it must
/// render (with sample values) to a DNS name.
fn common_name_problem(text: &str) -> Option<String> {
    let env = t::environment();
    let ctx = minijinja::Value::from(std::collections::BTreeMap::from([
        ("hostname".to_string(), minijinja::Value::from("host-1")),
        ("hostgroup".to_string(), minijinja::Value::from("group")),
    ]));
    match env.render_str(text, ctx) {
        Err(e) => Some(format!(
            "{} (it sees only hostname and hostgroup)",
            t::reason(&e)
        )),
        Ok(cn) if !is_dns_name(cn.trim()) => Some(format!(
            "{text:?} does not render to a DNS name (with hostname host-1: {cn:?})"
        )),
        Ok(_) => None,
    }
}

/// Why a read of a dynamic template is not among the declared sources, if it is not.
pub fn undeclared(read: &Read, dynamic: Option<&Dynamic>) -> Option<String> {
    let consul = dynamic.and_then(|d| d.consul.as_ref());
    let vault = dynamic.and_then(|d| d.vault.as_ref());
    match read {
        Read::ConsulKey(k) | Read::ConsulTree(k) => {
            let declared =
                consul.is_some_and(|c| c.prefixes.iter().any(|p| k.starts_with(p.as_str())));
            (!declared).then(|| {
                format!(
                    "reads Consul {k:?}, which is under no prefix of dynamic.consul.prefixes ({})",
                    consul
                        .map(|c| c.prefixes.join(", "))
                        .unwrap_or_else(|| "none declared".into())
                )
            })
        }
        Read::Vault { path, field } => {
            let declared = vault.is_some_and(|v| {
                v.kv.iter().any(|p| p == path) || v.generate.iter().any(|g| &g.path == path)
            });
            (!declared).then(|| {
                format!("reads Vault {path}#{field}, but {path} is not in dynamic.vault.kv or dynamic.vault.generate")
            })
        }
        Read::Pki(field) => vault.is_none_or(|v| v.pki.is_none()).then(|| {
            format!("reads pki_cert({field:?}), but dynamic.vault.pki declares no certificate")
        }),
        // Checked against vars by the resolver; facts are the host's.
        Read::Var(_) | Read::Fact(_) => None,
    }
}

/// How the manifest records a read: Consul keys and prefixes as they are, Vault reads as
/// `path#field`, the certificate as `<mount>/issue/<role>#field`.
pub fn manifest_read(read: &Read, dynamic: Option<&Dynamic>) -> (Option<String>, Option<String>) {
    match read {
        Read::ConsulKey(k) | Read::ConsulTree(k) => (Some(k.clone()), None),
        Read::Vault { path, field } => (None, Some(format!("{path}#{field}"))),
        Read::Pki(field) => {
            let issue = dynamic
                .and_then(|d| d.vault.as_ref())
                .and_then(|v| v.pki.as_ref())
                .map(|p| format!("{}/issue/{}", p.mount, p.role))
                .unwrap_or_else(|| "pki/issue/?".into());
            (None, Some(format!("{issue}#{field}")))
        }
        Read::Var(_) | Read::Fact(_) => (None, None),
    }
}
