//! `kiln schema`: JSON Schemas (draft 2020-12) of hostgroup and layer files, for editors
//! (yaml-language-server) and CI linters. Made from the same key lists the loader checks
//! against, and from the configuration's own layers, so a hostgroup's `nginx:` completes with
//! that layer's parameters. The loader stays the judge: the schemas catch unknown keys and
//! wrong shapes as one types, not every rule (owners, conflicts, templates).

use serde_json::{json, Map, Value};

use super::dynamic::{CONSUL_KEYS, DYNAMIC_KEYS, GENERATE_KEYS, PKI_KEYS, VAULT_KEYS};
use super::items::Kind;
use super::load::{Config, BASE_KEYS, LAYER_KEYS, RESOURCE_KEYS, TOP_KEYS};

/// Where the schemas say they come from (`$id`); editors only need the file.
const ID_BASE: &str = "https://kiln.invalid/schema";

/// In a layer, any value may be a template of the layer's parameters (`"{{ params.state }}"`).
fn value(schema: Value, layer: bool) -> Value {
    if layer {
        json!({"anyOf": [schema, {"type": "string", "pattern": "\\{\\{"}]})
    } else {
        schema
    }
}

fn string() -> Value {
    json!({"type": "string"})
}

fn strings() -> Value {
    json!({"type": ["array", "null"], "items": {"type": "string"}})
}

/// An object of exactly `keys` (null counts as empty, as the loader reads it).
fn object(keys: &[&str], schema_of: impl Fn(&str) -> Value) -> Value {
    let props: Map<String, Value> = keys.iter().map(|k| (k.to_string(), schema_of(k))).collect();
    json!({"type": ["object", "null"], "properties": props, "additionalProperties": false})
}

/// One item of a resource section (a file, a user...).
fn item(kind: Kind, layer: bool) -> Value {
    let state = |states: &[&str]| value(json!({"enum": states}), layer);
    let schema_of = |key: &str| -> Value {
        match (kind, key) {
            (Kind::Services, "state") => state(&["running", "dead", "absent"]),
            (_, "state") => state(&["present", "absent"]),
            (_, "mode") => value(
                json!({
                    "type": "string",
                    "pattern": "^[0-7]{3,4}$",
                    "description": "octal, quoted: \"0644\""
                }),
                layer,
            ),
            (_, "template") => value(json!({"enum": ["none", "static", "dynamic"]}), layer),
            (_, "restart" | "reload" | "groups" | "authorized_keys") => strings(),
            (_, "uid" | "gid") => value(json!({"type": "integer", "minimum": 0}), layer),
            (_, "system" | "create_home" | "enabled") => value(json!({"type": "boolean"}), layer),
            (Kind::Checks, "status") => value(
                json!({"type": "integer", "minimum": 100, "maximum": 599}),
                layer,
            ),
            (Kind::Commands | Kind::Checks, "run") => json!({
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                "description": "a string runs with /bin/sh -c; a list runs without a shell"
            }),
            _ => string(),
        }
    };
    object(kind.allowed(), schema_of)
}

/// The resource sections (`files`, `users`, ...) and `vars`, `system_accounts`.
fn resources(layer: bool) -> Map<String, Value> {
    let mut out = Map::new();
    for kind in Kind::ALL {
        let items = item(kind, layer);
        let section = match kind {
            // Paths are absolute.
            Kind::Files | Kind::Directories => json!({
                "type": ["object", "null"],
                "patternProperties": {"^/": items},
                "additionalProperties": false
            }),
            _ => json!({"type": ["object", "null"], "additionalProperties": items}),
        };
        out.insert(kind.key().to_string(), section);
    }
    out.insert("vars".into(), json!({"type": ["object", "null"]}));
    out.insert("system_accounts".into(), strings());
    out
}

fn dynamic() -> Value {
    let generate = object(GENERATE_KEYS, |k| match k {
        "length" => json!({"type": "integer", "minimum": 1}),
        _ => string(),
    });
    let pki = object(PKI_KEYS, |k| match k {
        "alt_names" | "ip_sans" => strings(),
        _ => string(),
    });
    let vault = object(VAULT_KEYS, |k| match k {
        "kv" => strings(),
        "generate" => json!({"type": ["array", "null"], "items": generate}),
        "pki" => pki.clone(),
        _ => string(),
    });
    let consul = object(CONSUL_KEYS, |_| strings());
    object(DYNAMIC_KEYS, |k| match k {
        "consul" => consul.clone(),
        _ => vault.clone(),
    })
}

fn base() -> Value {
    object(BASE_KEYS, |k| match k {
        "include" | "sources" => strings(),
        _ => string(),
    })
}

/// The schema of `hostgroups/*.yaml` (default.yaml too) for this configuration: its layers
/// are the top-level keys besides the sections, each with its parameters.
pub fn hostgroup(config: &Config) -> Value {
    let layer_names: Vec<String> = config.layers.keys().cloned().collect();
    let mut props = resources(false);
    props.insert("base".into(), base());
    props.insert("dynamic".into(), dynamic());
    props.insert(
        "layers".into(),
        json!({"type": ["array", "null"], "items": {"enum": layer_names}}),
    );
    for (name, layer) in &config.layers {
        let params: Vec<&str> = layer.params.iter().map(|p| p.name.as_str()).collect();
        let mut schema = object(&params, |_| json!({}));
        if let Some(d) = layer.doc.root.as_ref().and_then(|r| r.get("description")) {
            if let Some(d) = d.as_str() {
                schema["description"] = json!(format!("layer {name}: {d}"));
            }
        }
        props.insert(name.clone(), schema);
    }
    debug_assert!(TOP_KEYS.iter().all(|k| props.contains_key(*k)));
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("{ID_BASE}/hostgroup.schema.json"),
        "title": "Kiln hostgroup (hostgroups/*.yaml)",
        "type": ["object", "null"],
        "properties": props,
        "additionalProperties": false
    })
}

/// The schema of `layers/*.yaml`.
pub fn layer(config: &Config) -> Value {
    let layer_names: Vec<String> = config.layers.keys().cloned().collect();
    let mut resource_props = resources(true);
    resource_props.retain(|k, _| RESOURCE_KEYS.contains(&k.as_str()));
    let param = object(&["default", "description"], |k| match k {
        "description" => string(),
        _ => json!({}),
    });
    let mut props = Map::new();
    for key in LAYER_KEYS {
        let schema = match *key {
            "description" => string(),
            "params" => json!({
                "type": ["object", "null"],
                "propertyNames": {"pattern": "^[a-z_][a-z0-9_]*$"},
                "additionalProperties": param
            }),
            "layers" => json!({"type": ["array", "null"], "items": {"enum": layer_names}}),
            _ => json!({
                "type": ["object", "null"],
                "properties": resource_props,
                "additionalProperties": false
            }),
        };
        props.insert(key.to_string(), schema);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("{ID_BASE}/layer.schema.json"),
        "title": "Kiln layer (layers/*.yaml)",
        "type": ["object", "null"],
        "properties": props,
        "additionalProperties": false
    })
}
