//! `kiln diff`: what replacing hosts that run OLD with hosts that run NEW changes.
//! Compares manifests item by item (paths, users, packages, services...), field by field.

use std::collections::BTreeMap;

use anyhow::Result;
use kiln_signing::Manifest;
use serde::Serialize;
use serde_json::Value;

use crate::cli::DiffArgs;

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
    /// Sections by name: entries, templates, users, groups, packages, services, commands.
    pub sections: BTreeMap<String, Section>,
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
    ManifestDiff {
        hostgroup: (old.hostgroup.clone(), new.hostgroup.clone()),
        version: (old.version, new.version),
        header,
        sections,
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            s[..12].to_string()
        }
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

pub fn run(args: DiffArgs) -> Result<()> {
    let (old, _) = super::inspect::read_manifest(&args.old)?;
    let (new, _) = super::inspect::read_manifest(&args.new)?;
    let d = diff_manifests(&old, &new);
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
