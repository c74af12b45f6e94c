//! `kiln diff`: what replacing hosts that run OLD with hosts that run NEW changes.
//! Compares manifests item by item (paths, users, packages, services, dynamic sources...),
//! field by field, and the content of each changed file and template: a unified diff when
//! both sides are text of a readable size, else their sizes and digests.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{Context, Result};
use kiln_signing::{EntryKind, Limits, Manifest, TrustStore};
use serde::Serialize;
use serde_json::Value;

use crate::cli::DiffArgs;

/// Files larger than this (either side) are compared by size and digest, not line by line.
pub const MAX_TEXT_DIFF: u64 = 256 * 1024;

/// One changed item: the fields that differ, old and new.
#[derive(Debug, Serialize, PartialEq)]
pub struct Changed {
    pub key: String,
    pub fields: BTreeMap<String, (Value, Value)>,
}

/// Differences of one kind of item.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Section {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<Changed>,
}

impl Section {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Everything that differs between two manifests.
#[derive(Debug, Serialize, PartialEq)]
pub struct ManifestDiff {
    pub hostgroup: (String, String),
    pub version: (u64, u64),
    /// Header fields (base, expiry, commit...) that differ.
    pub header: BTreeMap<String, (Value, Value)>,
    /// Sections by name: entries, templates, dynamic, users, groups, packages, services,
    /// commands, system_accounts.
    pub sections: BTreeMap<String, Section>,
    /// The content of each file and template whose bytes changed, by path.
    pub contents: Vec<ContentDiff>,
}

/// How the bytes of one path changed.
#[derive(Debug, Serialize, PartialEq)]
pub struct ContentDiff {
    pub path: String,
    /// `text` (with a unified diff), `binary` (not UTF-8, or a NUL byte), `large` (over
    /// MAX_TEXT_DIFF), or `unread` (a bundle whose signature does not match its manifest).
    pub kind: &'static str,
    pub old: Blob,
    pub new: Blob,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unified: Option<String>,
}

/// One side of a content change.
#[derive(Debug, Serialize, PartialEq)]
pub struct Blob {
    pub sha256: String,
    pub size: u64,
}

impl ManifestDiff {
    pub fn is_empty(&self) -> bool {
        self.hostgroup.0 == self.hostgroup.1
            && self.version.0 == self.version.1
            && self.header.is_empty()
            && self.sections.values().all(Section::is_empty)
    }
}

fn keyed<T: Serialize>(items: &[T], key: impl Fn(&T) -> String) -> BTreeMap<String, Value> {
    items
        .iter()
        .map(|i| (key(i), serde_json::to_value(i).unwrap_or(Value::Null)))
        .collect()
}

fn field_changes(old: &Value, new: &Value, skip: &[&str]) -> BTreeMap<String, (Value, Value)> {
    let mut out = BTreeMap::new();
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        if old != new {
            out.insert("value".to_string(), (old.clone(), new.clone()));
        }
        return out;
    };
    let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    for k in keys {
        if skip.contains(&k.as_str()) {
            continue;
        }
        let a = o.get(k).cloned().unwrap_or(Value::Null);
        let b = n.get(k).cloned().unwrap_or(Value::Null);
        if a != b {
            out.insert(k.clone(), (a, b));
        }
    }
    out
}

fn section(old: BTreeMap<String, Value>, new: BTreeMap<String, Value>, skip: &[&str]) -> Section {
    let mut s = Section::default();
    for (k, v) in &new {
        match old.get(k) {
            None => s.added.push(k.clone()),
            Some(o) => {
                let fields = field_changes(o, v, skip);
                if !fields.is_empty() {
                    s.changed.push(Changed {
                        key: k.clone(),
                        fields,
                    });
                }
            }
        }
    }
    s.removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    s
}

/// Compare two manifests.
pub fn diff_manifests(old: &Manifest, new: &Manifest) -> ManifestDiff {
    let mut header = BTreeMap::new();
    let ov = serde_json::to_value(old).unwrap_or(Value::Null);
    let nv = serde_json::to_value(new).unwrap_or(Value::Null);
    for k in [
        "base",
        "created",
        "expires",
        "source_commit",
        "builder",
        "format",
    ] {
        let (a, b) = (
            ov.get(k).cloned().unwrap_or(Value::Null),
            nv.get(k).cloned().unwrap_or(Value::Null),
        );
        if a != b {
            header.insert(k.to_string(), (a, b));
        }
    }
    let mut sections = BTreeMap::new();
    sections.insert(
        "entries".into(),
        section(
            keyed(&old.entries, |e| e.path.clone()),
            keyed(&new.entries, |e| e.path.clone()),
            &["path"],
        ),
    );
    sections.insert(
        "templates".into(),
        section(
            keyed(&old.templates, |t| t.path.clone()),
            keyed(&new.templates, |t| t.path.clone()),
            &["path"],
        ),
    );
    sections.insert(
        "users".into(),
        section(
            keyed(&old.users, |u| u.name.clone()),
            keyed(&new.users, |u| u.name.clone()),
            &["name"],
        ),
    );
    sections.insert(
        "groups".into(),
        section(
            keyed(&old.groups, |g| g.name.clone()),
            keyed(&new.groups, |g| g.name.clone()),
            &["name"],
        ),
    );
    sections.insert(
        "packages".into(),
        section(
            keyed(&old.packages, |p| p.name.clone()),
            keyed(&new.packages, |p| p.name.clone()),
            &["name"],
        ),
    );
    sections.insert(
        "services".into(),
        section(
            keyed(&old.services, |s| s.name.clone()),
            keyed(&new.services, |s| s.name.clone()),
            &["name"],
        ),
    );
    // Commands run in order: a reordering is a change, so key them by position and name.
    let cmd_key = |list: &[kiln_signing::Command]| -> BTreeMap<String, Value> {
        list.iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    format!("{:02} {}", i + 1, c.name),
                    serde_json::to_value(c).unwrap_or(Value::Null),
                )
            })
            .collect()
    };
    sections.insert(
        "commands".into(),
        section(cmd_key(&old.commands), cmd_key(&new.commands), &[]),
    );
    sections.insert(
        "dynamic".into(),
        section(dynamic_items(old), dynamic_items(new), &[]),
    );
    let accounts = |m: &Manifest| -> BTreeMap<String, Value> {
        m.system_accounts
            .iter()
            .map(|a| (a.clone(), Value::Bool(true)))
            .collect()
    };
    sections.insert(
        "system_accounts".into(),
        section(accounts(old), accounts(new), &[]),
    );
    ManifestDiff {
        hostgroup: (old.hostgroup.clone(), new.hostgroup.clone()),
        version: (old.version, new.version),
        header,
        sections,
        contents: Vec::new(),
    }
}

/// What a bundle reads from Consul and Vault, one item each: a prefix, the AppRole login, a KV
/// path, a generated value, the certificate.
fn dynamic_items(m: &Manifest) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let Some(d) = &m.dynamic else {
        return out;
    };
    if let Some(c) = &d.consul {
        for p in &c.prefixes {
            out.insert(format!("consul prefix {p}"), Value::Bool(true));
        }
    }
    if let Some(v) = &d.vault {
        out.insert(
            "vault approle".into(),
            serde_json::json!({"role": v.role, "auth_mount": v.auth_mount, "role_id": v.role_id}),
        );
        for p in &v.kv {
            out.insert(format!("vault kv {p}"), Value::Bool(true));
        }
        for g in &v.generate {
            out.insert(
                format!("vault generate {}#{}", g.path, g.field),
                serde_json::to_value(g).unwrap_or(Value::Null),
            );
        }
        if let Some(p) = &v.pki {
            out.insert(
                "vault pki".into(),
                serde_json::to_value(p).unwrap_or(Value::Null),
            );
        }
    }
    out
}

/// Paths whose bytes differ: (path, old blob, new blob), for files that are files on both
/// sides and for dynamic templates (their template text).
fn changed_blobs(old: &Manifest, new: &Manifest) -> Vec<(String, Blob, Blob)> {
    fn files(m: &Manifest) -> BTreeMap<&str, Blob> {
        let mut out = BTreeMap::new();
        for e in &m.entries {
            if let EntryKind::File { digest, size, .. } = &e.kind {
                let blob = Blob {
                    sha256: digest.clone(),
                    size: *size,
                };
                out.insert(e.path.as_str(), blob);
            }
        }
        for t in &m.templates {
            let size = m
                .blobs
                .iter()
                .find(|b| b.digest == t.digest)
                .map_or(0, |b| b.size);
            let blob = Blob {
                sha256: t.digest.clone(),
                size,
            };
            out.insert(t.path.as_str(), blob);
        }
        out
    }
    let (mut a, b) = (files(old), files(new));
    let mut out = Vec::new();
    for (path, nb) in b {
        if let Some(ob) = a.remove(path) {
            if ob.sha256 != nb.sha256 {
                out.push((path.to_string(), ob, nb));
            }
        }
    }
    out
}

/// The bytes of the blobs `wanted` of a bundle, each checked against its digest as the whole
/// bundle is read. `None` when its signature does not match its manifest (nothing in it can
/// be told apart from damage then). Who signed it is not checked: that is `kiln verify`.
fn read_blobs(path: &Path, wanted: &BTreeSet<String>) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let open = || File::open(path).with_context(|| format!("opening {}", path.display()));
    let (_, manifest_bytes, sig) =
        kiln_signing::read_manifest_unverified(BufReader::new(open()?), &Limits::default())
            .with_context(|| format!("reading {}", path.display()))?;
    let Ok(signer) =
        kiln_signing::sshsig::verify(&sig, kiln_signing::sshsig::NAMESPACE, &manifest_bytes)
    else {
        return Ok(None);
    };
    let bundle = kiln_signing::open(
        BufReader::new(open()?),
        &TrustStore::from_keys(vec![signer], vec![]),
        &Limits::default(),
    )
    .with_context(|| format!("reading {}", path.display()))?;
    let mut out = BTreeMap::new();
    bundle
        .for_each_blob(|blob, r| {
            if wanted.contains(&blob.digest) {
                let mut bytes = Vec::with_capacity(blob.size as usize);
                r.read_to_end(&mut bytes)?;
                out.insert(blob.digest.clone(), bytes);
            }
            Ok::<(), kiln_signing::BundleError>(())
        })
        .with_context(|| format!("reading the blobs of {}", path.display()))?;
    Ok(Some(out))
}

/// Text that a unified diff can show: UTF-8 without NUL bytes.
fn as_text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.contains('\0'))
}

/// The content diffs of the changed paths, reading the blobs of both bundles.
fn content_diffs(
    old_path: &Path,
    new_path: &Path,
    changed: Vec<(String, Blob, Blob)>,
) -> Result<Vec<ContentDiff>> {
    let small = |b: &Blob| b.size <= MAX_TEXT_DIFF;
    let want = |side: fn(&(String, Blob, Blob)) -> &Blob| -> BTreeSet<String> {
        changed
            .iter()
            .filter(|c| small(&c.1) && small(&c.2))
            .map(|c| side(c).sha256.clone())
            .collect()
    };
    let (old_want, new_want) = (want(|c| &c.1), want(|c| &c.2));
    let old_blobs = if old_want.is_empty() {
        Some(BTreeMap::new())
    } else {
        read_blobs(old_path, &old_want)?
    };
    let new_blobs = if new_want.is_empty() {
        Some(BTreeMap::new())
    } else {
        read_blobs(new_path, &new_want)?
    };
    let mut out = Vec::new();
    for (path, old, new) in changed {
        let (kind, unified) = if !small(&old) || !small(&new) {
            ("large", None)
        } else {
            let texts = match (&old_blobs, &new_blobs) {
                (Some(a), Some(b)) => Some((
                    a.get(&old.sha256).map(Vec::as_slice).and_then(as_text),
                    b.get(&new.sha256).map(Vec::as_slice).and_then(as_text),
                )),
                _ => None,
            };
            match texts {
                None => ("unread", None),
                Some((Some(a), Some(b))) => ("text", Some(unified_diff(&path, a, b))),
                Some(_) => ("binary", None),
            }
        };
        out.push(ContentDiff {
            path,
            kind,
            old,
            new,
            unified,
        });
    }
    Ok(out)
}

/// `--- a/etc/motd` / `+++ b/etc/motd` and hunks with three lines of context, as `diff -u`.
fn unified_diff(path: &str, old: &str, new: &str) -> String {
    let diff = similar::TextDiff::configure()
        .timeout(std::time::Duration::from_secs(2))
        .diff_lines(old, new);
    let rel = path.trim_start_matches('/');
    diff.unified_diff()
        .context_radius(3)
        .header(&format!("a/{rel}"), &format!("b/{rel}"))
        .to_string()
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) if kiln_signing::spec::is_sha256_hex(s) => s[..12].to_string(),
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

pub fn run(args: DiffArgs) -> Result<()> {
    let (old, _) = super::inspect::read_manifest(&args.old)?;
    let (new, _) = super::inspect::read_manifest(&args.new)?;
    let mut d = diff_manifests(&old, &new);
    d.contents = content_diffs(&args.old, &args.new, changed_blobs(&old, &new))?;
    if args.json {
        super::print_json(&d)?;
    } else {
        if d.hostgroup.0 != d.hostgroup.1 {
            println!("hostgroup {} -> {}", d.hostgroup.0, d.hostgroup.1);
        }
        println!(
            "{}: version {} -> {}",
            d.hostgroup.1, d.version.0, d.version.1
        );
        for (k, (a, b)) in &d.header {
            if k == "created" || k == "expires" {
                continue;
            }
            println!("{k}: {} -> {}", short(a), short(b));
        }
        for (name, s) in &d.sections {
            if s.is_empty() {
                continue;
            }
            println!("{name}:");
            for k in &s.added {
                println!("  + {k}");
            }
            for k in &s.removed {
                println!("  - {k}");
            }
            for c in &s.changed {
                let fields: Vec<String> = c
                    .fields
                    .iter()
                    .map(|(f, (a, b))| format!("{f} {} -> {}", short(a), short(b)))
                    .collect();
                println!("  ~ {}  {}", c.key, fields.join(", "));
            }
        }
        for c in &d.contents {
            match &c.unified {
                Some(u) => print!("{u}"),
                None => println!(
                    "{} {}: {} bytes (sha256 {}) -> {} bytes (sha256 {}){}",
                    c.kind,
                    c.path,
                    c.old.size,
                    &c.old.sha256[..12.min(c.old.sha256.len())],
                    c.new.size,
                    &c.new.sha256[..12.min(c.new.sha256.len())],
                    match c.kind {
                        "large" => format!(", over {MAX_TEXT_DIFF} bytes: not shown"),
                        "unread" => ": a signature does not match its manifest, contents not read"
                            .to_string(),
                        _ => String::new(),
                    }
                ),
            }
        }
        if d.sections.values().all(Section::is_empty) {
            println!("no changes to files, users, packages, services or commands");
        }
    }
    if args.exit_code && !d.is_empty() {
        return Err(crate::Exit {
            code: 1,
            message: String::new(),
        }
        .into());
    }
    Ok(())
}
