//! Reading a configuration tree: every YAML file of `hostgroups/` and `layers/`, parsed and
//! checked on its own (keys, types, names). What needs several files at once (merging, owners,
//! conflicts, `from:` files, templates) is done per hostgroup by `resolve`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::check::{self, known_keys};
use super::diag::{Diagnostic, Diagnostics, Sink, Span};
use super::items::{self, Kind};
use super::yaml::{self, Node, NodeKind};

/// Top-level keys of a hostgroup file and of default.yaml (besides layer names).
pub const TOP_KEYS: &[&str] = &[
    "base",
    "layers",
    "vars",
    "files",
    "directories",
    "users",
    "groups",
    "system_accounts",
    "packages",
    "units",
    "services",
    "commands",
    "checks",
    "dynamic",
];
/// Top-level keys of a layer file.
pub const LAYER_KEYS: &[&str] = &["description", "params", "layers", "resources"];
/// Keys of a layer's `resources`.
pub const RESOURCE_KEYS: &[&str] = &[
    "vars",
    "files",
    "directories",
    "users",
    "groups",
    "system_accounts",
    "packages",
    "units",
    "services",
    "commands",
    "checks",
];
/// Keys of `base`.
pub const BASE_KEYS: &[&str] = &[
    "name",
    "os_id",
    "version_id",
    "arch",
    "suite",
    "variant",
    "include",
    "sources",
];

/// Largest YAML file Kiln reads.
const MAX_YAML_BYTES: u64 = 8 << 20;

/// One YAML file of the tree.
#[derive(Debug)]
pub struct Doc {
    /// Relative to the configuration root.
    pub file: Arc<Path>,
    /// The top-level map (an empty map for an empty file); `None` when unusable.
    pub root: Option<Node>,
    /// The file could not be used at all (unreadable, bad YAML, not a map): checks that
    /// depend on its content are skipped rather than reported as consequences.
    pub failed: bool,
}

impl Doc {
    pub fn entries(&self) -> &[(Node, Node)] {
        self.root.as_ref().and_then(Node::as_map).unwrap_or(&[])
    }
}

/// A declared layer parameter.
#[derive(Debug)]
pub struct ParamDef {
    pub name: String,
    pub default: Option<Node>,
}

/// A layer: its file, parameters, the layers it uses and its (unexpanded) resources.
#[derive(Debug)]
pub struct Layer {
    pub name: String,
    pub doc: Doc,
    pub params: Vec<ParamDef>,
    pub deps: Vec<(String, Span)>,
    pub resources: Option<Node>,
}

/// A loaded configuration tree. See [`load`].
#[derive(Debug)]
pub struct Config {
    pub(crate) root: PathBuf,
    pub(crate) default: Doc,
    pub(crate) hostgroups: BTreeMap<String, Doc>,
    pub(crate) layers: BTreeMap<String, Layer>,
    /// Problems found in single files while loading.
    pub(crate) diags: Vec<Diagnostic>,
}

fn rel(path: &str) -> Arc<Path> {
    Arc::from(Path::new(path))
}

/// Read and parse one YAML file; problems go to `d`.
fn read_doc(root: &Path, relpath: &str, d: &mut Sink) -> Doc {
    let file = rel(relpath);
    let failed = |d: &mut Sink, msg: String| {
        d.err(&Span::file_start(file.clone()), msg);
        Doc {
            file: file.clone(),
            root: None,
            failed: true,
        }
    };
    let bytes = match std::fs::metadata(root.join(relpath)) {
        Ok(m) if m.len() > MAX_YAML_BYTES => {
            return failed(
                d,
                format!("file is larger than {} MiB", MAX_YAML_BYTES >> 20),
            );
        }
        _ => match std::fs::read(root.join(relpath)) {
            Ok(b) => b,
            Err(e) => return failed(d, format!("cannot read file: {e}")),
        },
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = good.iter().filter(|&&c| c == b'\n').count() + 1;
            let col = good.iter().rev().take_while(|&&c| c != b'\n').count() + 1;
            d.err(
                &Span::new(file.clone(), line, col),
                "file is not valid UTF-8",
            );
            return Doc {
                file,
                root: None,
                failed: true,
            };
        }
    };
    let parsed = yaml::parse(&file, &text);
    d.extend(parsed.diags);
    if parsed.failed {
        return Doc {
            file,
            root: None,
            failed: true,
        };
    }
    match parsed.root {
        None => {
            let span = Span::file_start(file.clone());
            Doc {
                file,
                root: Some(Node::new(NodeKind::Map(Vec::new()), span)),
                failed: false,
            }
        }
        Some(n) if n.as_map().is_some() => Doc {
            file,
            root: Some(n),
            failed: false,
        },
        Some(n) if n.is_null() => {
            let span = n.span.clone();
            Doc {
                file,
                root: Some(Node::new(NodeKind::Map(Vec::new()), span)),
                failed: false,
            }
        }
        Some(n) => {
            d.err(
                &n.span,
                format!(
                    "expected a map at the top of the file, found {}",
                    n.describe()
                ),
            );
            Doc {
                file,
                root: None,
                failed: true,
            }
        }
    }
}

/// The `*.yaml` files of a directory, sorted, as (stem, file name); other problems to `d`.
fn yaml_files(root: &Path, dir: &str, d: &mut Sink) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
        return out;
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = std::fs::metadata(entry.path())
            .map(|m| m.is_file())
            .unwrap_or(false);
        if !is_file {
            continue;
        }
        if let Some(stem) = name.strip_suffix(".yaml") {
            out.push((stem.to_string(), name));
        } else if name.ends_with(".yml") {
            d.err(
                &Span::file_start(rel(&format!("{dir}/{name}"))),
                "configuration files end in .yaml, not .yml",
            );
        }
    }
    out.sort();
    out
}

/// Load the configuration tree at `root`: parse every YAML file of `hostgroups/` and
/// `layers/` and check each on its own.
///
/// Fails only when the tree is not a configuration at all (no `hostgroups/default.yaml`).
/// Problems inside files are kept and reported by [`Config::validate_all`] and, for the files a
/// hostgroup uses, by [`Config::resolve`], so that every problem comes out in one run.
pub fn load(root: &Path) -> Result<Config, Diagnostics> {
    let mut d = Sink::default();
    let root = match std::fs::canonicalize(root) {
        Ok(r) => r,
        Err(e) => {
            d.err(
                &Span::file_start(rel("hostgroups/default.yaml")),
                format!(
                    "cannot open configuration directory {}: {e}",
                    root.display()
                ),
            );
            return Err(Diagnostics::new(d.list));
        }
    };

    let mut layers = BTreeMap::new();
    for (name, file) in yaml_files(&root, "layers", &mut d) {
        let doc = read_doc(&root, &format!("layers/{file}"), &mut d);
        if !check::is_hostgroup_name(&name) {
            d.err(
                &Span::file_start(doc.file.clone()),
                format!("layer name {name:?} does not match [a-z0-9][a-z0-9-]{{0,62}}"),
            );
            continue;
        }
        if TOP_KEYS.contains(&name.as_str()) {
            d.err(
                &Span::file_start(doc.file.clone()),
                format!("layer name {name:?} is a reserved top-level key"),
            );
            continue;
        }
        layers.insert(
            name.clone(),
            Layer {
                name,
                doc,
                params: Vec::new(),
                deps: Vec::new(),
                resources: None,
            },
        );
    }

    let default_path = root.join("hostgroups/default.yaml");
    let default_missing = !default_path.is_file();
    let default = if default_missing {
        d.err(
            &Span::file_start(rel("hostgroups/default.yaml")),
            "missing: every configuration needs hostgroups/default.yaml (is this the configuration directory?)",
        );
        Doc {
            file: rel("hostgroups/default.yaml"),
            root: None,
            failed: true,
        }
    } else {
        read_doc(&root, "hostgroups/default.yaml", &mut d)
    };

    let mut hostgroups = BTreeMap::new();
    for (name, file) in yaml_files(&root, "hostgroups", &mut d) {
        if name == "default" {
            continue;
        }
        if !check::is_hostgroup_name(&name) {
            d.err(
                &Span::file_start(rel(&format!("hostgroups/{file}"))),
                format!("hostgroup file name {name:?} does not match [a-z0-9][a-z0-9-]{{0,62}}"),
            );
            continue;
        }
        let doc = read_doc(&root, &format!("hostgroups/{file}"), &mut d);
        hostgroups.insert(name, doc);
    }

    // Layers first: hostgroup files are checked against their parameters.
    let names: Vec<String> = layers.keys().cloned().collect();
    for layer in layers.values_mut() {
        read_layer(layer, &names, &mut d);
    }
    check_host_doc(&default, &layers, &mut d);
    for doc in hostgroups.values() {
        check_host_doc(doc, &layers, &mut d);
    }

    let config = Config {
        root,
        default,
        hostgroups,
        layers,
        diags: d.list,
    };
    if default_missing {
        return Err(Diagnostics::new(config.diags));
    }
    Ok(config)
}

/// Read a layer's parameters, dependencies and resources, checking their shape.
fn read_layer(layer: &mut Layer, names: &[String], d: &mut Sink) {
    let entries: Vec<(Node, Node)> = layer.doc.entries().to_vec();
    known_keys(&entries, LAYER_KEYS, &format!("layer {}", layer.name), d);
    for (k, v) in &entries {
        match k.key_str() {
            "description" => {
                check::string("description", v, d);
            }
            "params" => {
                for (pk, pv) in check::map(v, d).unwrap_or(&[]) {
                    let name = pk.key_str();
                    if !check::is_param_name(name) {
                        d.err(
                            &pk.span,
                            format!("parameter name {name:?} does not match [a-z_][a-z0-9_]*"),
                        );
                        continue;
                    }
                    let Some(fields) = check::map(pv, d) else {
                        continue;
                    };
                    known_keys(
                        fields,
                        &["default", "description"],
                        &format!("parameter {name}"),
                        d,
                    );
                    if let Some(desc) = pv.get("description") {
                        check::string("description", desc, d);
                    }
                    layer.params.push(ParamDef {
                        name: name.to_string(),
                        default: pv.get("default").cloned(),
                    });
                }
            }
            "layers" => {
                for item in check::strings("layers", v, d) {
                    let name = item.as_str().unwrap_or_default();
                    if names.iter().any(|n| n == name) {
                        layer.deps.push((name.to_string(), item.span.clone()));
                    } else {
                        d.err(&item.span, unknown_layer(name, names));
                    }
                }
            }
            "resources" => {
                let Some(sections) = check::map(v, d) else {
                    continue;
                };
                known_keys(sections, RESOURCE_KEYS, "resources", d);
                for (sk, sv) in sections {
                    if sk.key_str() == "system_accounts" {
                        check::list(sv, d);
                    } else if RESOURCE_KEYS.contains(&sk.key_str()) {
                        check::map(sv, d);
                    }
                }
                layer.resources = Some(v.clone());
            }
            _ => {}
        }
    }
}

pub fn unknown_layer(name: &str, names: &[String]) -> String {
    if names.is_empty() {
        format!("unknown layer {name:?} (there are no layers)")
    } else {
        format!(
            "unknown layer {name:?}{} (known layers: {})",
            check::did_you_mean(name, names.iter().map(String::as_str)),
            names.join(", ")
        )
    }
}

/// Check a source's section (a resource kind, `vars`, `system_accounts`, `base`) as written.
pub fn check_section(key: &str, value: &Node, d: &mut Sink) {
    match key {
        "base" => {
            let Some(entries) = check::map(value, d) else {
                return;
            };
            known_keys(entries, BASE_KEYS, "base", d);
            for (k, v) in entries {
                if k.key_str() == "include" {
                    for item in check::strings("include", v, d) {
                        let name = item.as_str().unwrap_or_default();
                        if !check::is_package_name(name) {
                            d.err(&item.span, format!("package name {name:?} does not match Debian's [a-z0-9][a-z0-9+.-]+"));
                        }
                    }
                } else if k.key_str() == "sources" {
                    for item in check::strings("sources", v, d) {
                        let suite = item.as_str().unwrap_or_default();
                        if !check::is_suite_name(suite) {
                            d.err(&item.span, format!("base sources: {suite:?} is not a suite name such as bookworm-updates or bookworm-security ([a-z0-9][a-z0-9.+-]*)"));
                        }
                    }
                } else if BASE_KEYS.contains(&k.key_str()) {
                    if let Some(s) = check::string(k.key_str(), v, d) {
                        if s.is_empty() || s.contains(char::is_whitespace) {
                            d.err(
                                &v.span,
                                format!(
                                    "base {}: expected a non-empty word, found {s:?}",
                                    k.key_str()
                                ),
                            );
                        }
                    }
                }
            }
        }
        "vars" => {
            check::map(value, d);
        }
        "dynamic" => super::dynamic::check(value, d),
        "system_accounts" => {
            for item in check::strings("system_accounts", value, d) {
                let name = item.as_str().unwrap_or_default();
                if !check::is_account_name(name) {
                    d.err(
                        &item.span,
                        format!(
                            "system account {name:?} does not match {}",
                            kiln_signing::spec::ACCOUNT_NAME_PATTERN
                        ),
                    );
                }
            }
        }
        _ => {
            let Some(kind) = Kind::from_key(key) else {
                return;
            };
            for (ik, iv) in check::map(value, d).unwrap_or(&[]) {
                if items::check_name(kind, ik, d) {
                    items::check_definition(kind, ik, iv, d);
                }
            }
        }
    }
}

/// Check a hostgroup file (or default.yaml) on its own.
fn check_host_doc(doc: &Doc, layers: &BTreeMap<String, Layer>, d: &mut Sink) {
    let names: Vec<String> = layers.keys().cloned().collect();
    for (k, v) in doc.entries() {
        let key = k.key_str();
        if key == "layers" {
            for item in check::strings("layers", v, d) {
                let name = item.as_str().unwrap_or_default();
                if !layers.contains_key(name) {
                    d.err(&item.span, unknown_layer(name, &names));
                }
            }
        } else if TOP_KEYS.contains(&key) {
            check_section(key, v, d);
        } else if let Some(layer) = layers.get(key) {
            check_layer_args(layer, v, d);
        } else {
            let layers_hint = if names.is_empty() {
                String::new()
            } else {
                format!(", or a layer: {}", names.join(", "))
            };
            let hint = check::did_you_mean(
                key,
                TOP_KEYS
                    .iter()
                    .copied()
                    .chain(names.iter().map(String::as_str)),
            );
            d.err(
                &k.span,
                format!(
                    "unknown key or layer {key:?}{hint} (expected one of: {}{layers_hint})",
                    TOP_KEYS.join(", ")
                ),
            );
        }
    }
}

/// Check the parameters a hostgroup passes to a layer (`httpd: {state: running}`).
pub fn check_layer_args(layer: &Layer, args: &Node, d: &mut Sink) {
    for (pk, _) in check::map(args, d).unwrap_or(&[]) {
        let name = pk.key_str();
        if !layer.params.iter().any(|p| p.name == name) {
            let hint = check::did_you_mean(name, layer.params.iter().map(|p| p.name.as_str()));
            let expected = if layer.params.is_empty() {
                "it has none".to_string()
            } else {
                format!(
                    "expected one of: {}",
                    layer
                        .params
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            d.err(
                &pk.span,
                format!(
                    "unknown parameter {name:?} for layer {}{hint} ({expected})",
                    layer.name
                ),
            );
        }
    }
}
