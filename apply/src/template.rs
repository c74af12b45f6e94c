//! Dynamic templates, shared by the builder and the host: the minijinja environment they are
//! rendered in (the builder's settings: strict undefined, no escaping, final newline kept), the
//! functions they may call, [`analyze`] (what a template reads, found at build time from its
//! compiled form) and [`render`] (on the host, with the values fetched from Consul and Vault).
//!
//! Functions, consul-template's under minijinja syntax; every argument is a literal, so the
//! builder can check and record exactly what each template reads:
//! `consul(key)`, `consul_or(key, default)`, `consul_tree(prefix)` (a map of the keys below
//! `prefix`, relative to it), `vault(path, field)`, `vault_or(path, field, default)` (KV v2,
//! `path` in API form `secret/data/db/app`), `pki_cert(field)` (the host's certificate:
//! `certificate`, `private_key`, `issuing_ca`, `ca_chain`, `serial_number`, `expiration`).
//! Variables: `hostname`, `hostgroup`; `vars.<key>...` (the bundle's static `vars`, the values a
//! template reads recorded in its manifest entry); `host.<fact>` (facts of the instance,
//! [`HOST_FACTS`], gathered on the host at first boot; a fact the host does not have is
//! undefined, so a template that may run without it guards it with `is defined` or `default`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use kiln_signing::dynamic::{is_consul_key, is_consul_prefix, is_kv2_path, is_name};
use minijinja::value::ValueKind;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};

use crate::secret::Secret;

/// The functions dynamic templates may call.
pub const FUNCTIONS: &[&str] = &[
    "consul",
    "consul_or",
    "consul_tree",
    "vault",
    "vault_or",
    "pki_cert",
];
/// The variables dynamic templates see.
pub const VARIABLES: &[&str] = &["hostname", "hostgroup", "vars", "host"];
/// The facts of `host.<fact>`.
pub const HOST_FACTS: &[&str] = &[
    "hostname",
    "machine_id",
    "primary_ip",
    "instance_id",
    "availability_zone",
    "region",
    "cloud_name",
];
/// Fields of `pki_cert(field)`.
pub const PKI_FIELDS: &[&str] = &[
    "certificate",
    "private_key",
    "issuing_ca",
    "ca_chain",
    "serial_number",
    "expiration",
];

/// The environment every Kiln template is rendered in: strict undefined (a typo is an error,
/// not an empty string), no HTML escaping, the final newline kept (config files end in one).
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env
}

/// minijinja's reason, without its own location (the caller says where).
pub fn reason(e: &Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// One value a template reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Read {
    /// `consul(key)` or `consul_or(key, _)`.
    ConsulKey(String),
    /// `consul_tree(prefix)`.
    ConsulTree(String),
    /// `vault(path, field)` or `vault_or(path, field, _)`.
    Vault { path: String, field: String },
    /// `pki_cert(field)`.
    Pki(String),
    /// `vars.a.b`: the path of keys (at least one) into the bundle's `vars`.
    Var(Vec<String>),
    /// `host.<fact>`, one of [`HOST_FACTS`].
    Fact(String),
}

impl Read {
    /// Whether the value is secret (Vault values, the certificate's private key): a file that
    /// reads one is 0600 unless its definition says otherwise.
    pub fn is_secret(&self) -> bool {
        match self {
            Read::Vault { .. } => true,
            Read::Pki(f) => f == "private_key",
            _ => false,
        }
    }
}

/// A call found in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub read: Read,
    /// `consul_or`/`vault_or`: a missing value is not an error. For `vars.x` and `host.x`:
    /// the value is tested with `is defined`/`is undefined` or given to `default`.
    pub has_default: bool,
    /// Line in the template, when known.
    pub line: Option<usize>,
}

/// Why a template cannot be used as a dynamic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub message: String,
    /// Line in the template, when known.
    pub line: Option<usize>,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{} (template line {l})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn err(message: impl Into<String>, line: Option<usize>) -> TemplateError {
    TemplateError {
        message: message.into(),
        line,
    }
}

/// Every value `source` reads, from its compiled form: each call of a [`FUNCTIONS`] name with
/// literal arguments. Refused: a syntax error, arguments that are not literals, a function
/// used other than by calling it (`{% set f = consul %}`), a name of [`FUNCTIONS`] reassigned,
/// `include`/`extends`, and variables other than [`VARIABLES`].
pub fn analyze(name: &str, source: &str) -> Result<Vec<Call>, TemplateError> {
    let env = environment();
    let tmpl = env
        .template_from_named_str(name, source)
        .map_err(|e| err(reason(&e), e.line()))?;
    let mut unknown: Vec<String> = tmpl
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !VARIABLES.contains(&v.as_str()) && !FUNCTIONS.contains(&v.as_str()))
        .collect();
    unknown.sort();
    if let Some(v) = unknown.first() {
        return Err(err(
            format!(
                "dynamic templates see only hostname, hostgroup, vars and host (and the functions {}), not {v:?}",
                FUNCTIONS.join(", ")
            ),
            None,
        ));
    }
    let compiled = minijinja::machinery::get_compiled_template(&tmpl);
    let mut calls = Vec::new();
    scan(&compiled.instructions, &mut calls)?;
    for block in compiled.blocks.values() {
        scan(block, &mut calls)?;
    }
    Ok(calls)
}

fn scan(
    code: &minijinja::machinery::Instructions<'_>,
    calls: &mut Vec<Call>,
) -> Result<(), TemplateError> {
    use minijinja::machinery::Instruction as I;
    let mut i = 0u32;
    while let Some(ins) = code.get(i) {
        let line = code.get_line(i);
        match ins {
            I::CallFunction(f, argc) if FUNCTIONS.contains(f) => {
                let Some(n) = argc.map(usize::from) else {
                    return Err(err(format!("{f}(): arguments must be literals"), line));
                };
                let start = (i as usize).checked_sub(n);
                let mut args = Vec::with_capacity(n);
                for j in start.unwrap_or(0)..i as usize {
                    match code.get(j as u32) {
                        Some(I::LoadConst(v)) if start.is_some() => args.push(v.clone()),
                        _ => {
                            return Err(err(
                                format!("{f}(): arguments must be literals (quoted strings), so the builder can check what the template reads"),
                                line,
                            ))
                        }
                    }
                }
                calls.push(call_of(f, &args, line)?);
            }
            I::Lookup(f) if FUNCTIONS.contains(f) => {
                return Err(err(
                    format!("{f} can only be called, as {f}(...), with literal arguments"),
                    line,
                ))
            }
            I::Lookup(v) if *v == "vars" || *v == "host" => {
                let (path, next) = attr_path(code, i + 1);
                if path.is_empty() {
                    return Err(err(
                        if *v == "vars" {
                            "vars can only be read by name, as vars.key (or vars[\"key\"]), so the builder can record the values a template reads".to_string()
                        } else {
                            format!(
                                "host can only be read by fact, as host.instance_id (facts: {})",
                                HOST_FACTS.join(", ")
                            )
                        },
                        line,
                    ));
                }
                let has_default = guarded(code, next);
                let read = if *v == "vars" {
                    Read::Var(path)
                } else {
                    let fact = &path[0];
                    if !HOST_FACTS.contains(&fact.as_str()) {
                        let hint = did_you_mean(fact, HOST_FACTS)
                            .map(|s| format!("; did you mean host.{s}?"))
                            .unwrap_or_default();
                        return Err(err(
                            format!(
                                "host.{fact} is not a fact of the host{hint} (facts: {})",
                                HOST_FACTS.join(", ")
                            ),
                            line,
                        ));
                    }
                    Read::Fact(fact.clone())
                };
                calls.push(Call {
                    read,
                    has_default,
                    line,
                });
                i = next;
                continue;
            }
            I::StoreLocal(f) if FUNCTIONS.contains(f) || VARIABLES.contains(f) => {
                return Err(err(format!("{f} cannot be reassigned"), line))
            }
            I::CallBlock(_) => {}
            I::Include(_) | I::LoadBlocks => {
                return Err(err(
                    "dynamic templates cannot include or extend other templates",
                    line,
                ))
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The keys read from the value on top of the stack from instruction `i` on: `.a`, `["a"]`.
/// Returns them and the index of the first instruction after.
fn attr_path(code: &minijinja::machinery::Instructions<'_>, mut i: u32) -> (Vec<String>, u32) {
    use minijinja::machinery::Instruction as I;
    let mut path = Vec::new();
    loop {
        match code.get(i) {
            Some(I::GetAttr(a)) => {
                path.push(a.to_string());
                i += 1;
            }
            Some(I::LoadConst(c)) if matches!(code.get(i + 1), Some(I::GetItem)) => {
                match c.as_str() {
                    Some(k) => path.push(k.to_string()),
                    None => break,
                }
                i += 2;
            }
            _ => break,
        }
    }
    (path, i)
}

/// Whether the value just read (instruction `i` is the next) is tested with `is defined` or
/// `is undefined`, or given to `default` (after its literal arguments).
fn guarded(code: &minijinja::machinery::Instructions<'_>, mut i: u32) -> bool {
    use minijinja::machinery::Instruction as I;
    if let Some(I::PerformTest(t, ..)) = code.get(i) {
        return matches!(*t, "defined" | "undefined");
    }
    while let Some(I::LoadConst(_)) = code.get(i) {
        i += 1;
    }
    matches!(code.get(i), Some(I::ApplyFilter("default" | "d", ..)))
}

/// The name in `known` closest to `s`, when it is close (an edit or two away, or a prefix).
pub fn did_you_mean<'a>(s: &str, known: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let sub = prev[j] + usize::from(ca != *cb);
                cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    known
        .iter()
        .map(|k| (distance(s, k), *k))
        .filter(|(d, k)| *d <= 2.max(s.len() / 3) || k.starts_with(s) || s.starts_with(k))
        .min()
        .map(|(_, k)| k)
}

fn string_arg<'a>(
    f: &str,
    what: &str,
    v: Option<&'a Value>,
    line: Option<usize>,
) -> Result<&'a str, TemplateError> {
    v.and_then(Value::as_str)
        .ok_or_else(|| err(format!("{f}(): {what} must be a quoted string"), line))
}

fn call_of(f: &str, args: &[Value], line: Option<usize>) -> Result<Call, TemplateError> {
    let want = match f {
        "consul" | "consul_tree" | "pki_cert" => 1,
        "consul_or" | "vault" => 2,
        _ => 3,
    };
    if args.len() != want {
        let usage = match f {
            "consul" => "consul(\"kiln/apps/web/version\")",
            "consul_or" => "consul_or(\"kiln/apps/web/version\", \"1.0\")",
            "consul_tree" => "consul_tree(\"kiln/apps/web/\")",
            "vault" => "vault(\"secret/data/db/app\", \"password\")",
            "vault_or" => "vault_or(\"secret/data/db/app\", \"password\", \"\")",
            _ => "pki_cert(\"certificate\")",
        };
        return Err(err(
            format!("{f}() takes {want} argument(s), e.g. {usage}"),
            line,
        ));
    }
    let (read, has_default) = match f {
        "consul" | "consul_or" => {
            let key = string_arg(f, "the key", args.first(), line)?;
            if !is_consul_key(key) {
                return Err(err(format!("{f}(): {key:?} is not a Consul key ([A-Za-z0-9,_./-], no .., not ending in /)"), line));
            }
            (Read::ConsulKey(key.into()), f == "consul_or")
        }
        "consul_tree" => {
            let prefix = string_arg(f, "the prefix", args.first(), line)?;
            if !is_consul_prefix(prefix) {
                return Err(err(
                    format!("{f}(): {prefix:?} is not a Consul prefix ending in /"),
                    line,
                ));
            }
            (Read::ConsulTree(prefix.into()), false)
        }
        "vault" | "vault_or" => {
            let path = string_arg(f, "the path", args.first(), line)?;
            let field = string_arg(f, "the field", args.get(1), line)?;
            if !is_kv2_path(path) {
                return Err(err(
                    format!("{f}(): {path:?} is not a KV v2 path in API form, <mount>/data/<path>"),
                    line,
                ));
            }
            if !is_name(field) {
                return Err(err(format!("{f}(): {field:?} is not a field name"), line));
            }
            (
                Read::Vault {
                    path: path.into(),
                    field: field.into(),
                },
                f == "vault_or",
            )
        }
        _ => {
            let field = string_arg(f, "the field", args.first(), line)?;
            if !PKI_FIELDS.contains(&field) {
                return Err(err(
                    format!(
                        "pki_cert(): {field:?} is not one of {}",
                        PKI_FIELDS.join(", ")
                    ),
                    line,
                ));
            }
            (Read::Pki(field.into()), false)
        }
    };
    if has_default {
        let d = &args[args.len() - 1];
        if !matches!(
            d.kind(),
            ValueKind::String | ValueKind::Number | ValueKind::Bool | ValueKind::None
        ) {
            return Err(err(
                format!("{f}(): the default must be a literal string, number or boolean"),
                line,
            ));
        }
    }
    Ok(Call {
        read,
        has_default,
        line,
    })
}

/// The values a host fetched, which the template functions read.
#[derive(Debug, Default)]
pub struct Values {
    /// Consul prefixes read (a key outside them was never fetched).
    pub consul_prefixes: Vec<String>,
    /// Every key under those prefixes and its value (`None`: the key holds no value).
    pub consul: BTreeMap<String, Option<Vec<u8>>>,
    /// KV v2 paths read; a declared path that does not exist is absent from `vault`.
    pub vault_paths: BTreeSet<String>,
    pub vault: BTreeMap<String, BTreeMap<String, Secret>>,
    /// The certificate issued for the host, when the bundle asks for one.
    pub pki: Option<BTreeMap<String, Secret>>,
}

/// Why rendering failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// A value the template needs does not exist, and it gives no default. `what` names it
    /// (`consul kiln/apps/web/version`, `vault secret/data/db/app#password`).
    Missing { source_name: String, key: String },
    /// The template read something the bundle did not declare (never fetched).
    Undeclared(String),
    /// A `host.<fact>` the template reads unguarded, which this host does not have.
    Fact { fact: String, why: String },
    /// Anything else (a type error in the template, a value that is not UTF-8).
    Other(String),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::Missing { source_name, key } => {
                write!(
                    f,
                    "{source_name}: {key} does not exist (and the template gives no default)"
                )
            }
            RenderError::Fact { fact, why } => write!(
                f,
                "host.{fact} is not available on this host ({why}), and the template reads it unguarded (test it with `is defined`, or give it a `default(...)`)"
            ),
            RenderError::Undeclared(s) | RenderError::Other(s) => f.write_str(s),
        }
    }
}

type Failure = Arc<Mutex<Option<RenderError>>>;

fn fail(failure: &Failure, e: RenderError) -> Error {
    let text = e.to_string();
    if let Ok(mut slot) = failure.lock() {
        if slot.is_none() {
            *slot = Some(e);
        }
    }
    Error::new(ErrorKind::InvalidOperation, text)
}

fn consul_value(values: &Values, failure: &Failure, key: &str) -> Result<Option<String>, Error> {
    if !values
        .consul_prefixes
        .iter()
        .any(|p| key.starts_with(p.as_str()))
    {
        return Err(fail(
            failure,
            RenderError::Undeclared(format!(
                "consul key {key:?} is not under a prefix the bundle declares"
            )),
        ));
    }
    match values.consul.get(key) {
        None => Ok(None),
        Some(None) => Ok(Some(String::new())),
        Some(Some(bytes)) => match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Some(s.to_string())),
            Err(_) => Err(fail(
                failure,
                RenderError::Other(format!("consul key {key} does not hold UTF-8 text")),
            )),
        },
    }
}

fn vault_value(
    values: &Values,
    failure: &Failure,
    path: &str,
    field: &str,
) -> Result<Option<String>, Error> {
    if !values.vault_paths.contains(path) {
        return Err(fail(
            failure,
            RenderError::Undeclared(format!(
                "vault path {path:?} is not a kv or generate path the bundle declares"
            )),
        ));
    }
    Ok(values
        .vault
        .get(path)
        .and_then(|m| m.get(field))
        .map(|s| s.expose_str().to_string()))
}

/// The facts of `host.<fact>`: each one's value, or why this host does not have it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts(pub BTreeMap<String, Result<String, String>>);

/// What a template sees besides the functions.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub hostname: &'a str,
    pub hostgroup: &'a str,
    /// The top-level keys of `vars` the template reads, as its manifest entry records them.
    pub vars: &'a BTreeMap<String, serde_json::Value>,
    pub facts: &'a Facts,
}

/// A JSON value (from the manifest) as a template value.
pub fn json_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (_, Some(u), _) => Value::from(u),
            (_, _, Some(f)) => Value::from(f),
            _ => Value::from(n.to_string()),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => Value::from(a.iter().map(json_value).collect::<Vec<_>>()),
        serde_json::Value::Object(o) => Value::from(
            o.iter()
                .map(|(k, v)| (k.clone(), json_value(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

/// Why a strict-undefined error happened, when it is a `host.<fact>` (or `vars` path) the
/// template reads unguarded and does not have: the read on the error's line first.
fn undefined_read(source: &str, line: Option<usize>, c: &Context<'_>) -> Option<RenderError> {
    let calls = analyze("t", source).ok()?;
    let missing = |call: &Call| -> Option<RenderError> {
        if call.has_default {
            return None;
        }
        match &call.read {
            Read::Fact(f) => match c.facts.0.get(f) {
                Some(Ok(_)) => None,
                Some(Err(why)) => Some(RenderError::Fact {
                    fact: f.clone(),
                    why: why.clone(),
                }),
                None => Some(RenderError::Fact {
                    fact: f.clone(),
                    why: "not gathered".into(),
                }),
            },
            Read::Var(path) => {
                let mut v = c.vars.get(&path[0]);
                for k in &path[1..] {
                    v = v.and_then(|v| v.get(k));
                }
                v.is_none().then(|| {
                    RenderError::Other(format!(
                        "vars.{} is not in the values the bundle recorded for this template",
                        path.join(".")
                    ))
                })
            }
            _ => None,
        }
    };
    calls
        .iter()
        .filter(|call| line.is_some() && call.line == line)
        .find_map(missing)
        .or_else(|| calls.iter().find_map(missing))
}

/// Renders a dynamic template with the fetched values. The result holds secrets as soon as the
/// template reads Vault, so it is a [`Secret`].
pub fn render(
    values: Arc<Values>,
    name: &str,
    source: &str,
    c: &Context<'_>,
) -> Result<Secret, RenderError> {
    let failure: Failure = Arc::new(Mutex::new(None));
    let mut env = environment();
    {
        let (v, f) = (values.clone(), failure.clone());
        env.add_function("consul", move |key: &str| -> Result<Value, Error> {
            match consul_value(&v, &f, key)? {
                Some(s) => Ok(Value::from(s)),
                None => Err(fail(
                    &f,
                    RenderError::Missing {
                        source_name: "consul".into(),
                        key: key.into(),
                    },
                )),
            }
        });
    }
    {
        let (v, f) = (values.clone(), failure.clone());
        env.add_function(
            "consul_or",
            move |key: &str, default: Value| -> Result<Value, Error> {
                Ok(match consul_value(&v, &f, key)? {
                    Some(s) => Value::from(s),
                    None => default,
                })
            },
        );
    }
    {
        let (v, f) = (values.clone(), failure.clone());
        env.add_function("consul_tree", move |prefix: &str| -> Result<Value, Error> {
            if !v
                .consul_prefixes
                .iter()
                .any(|p| prefix.starts_with(p.as_str()))
            {
                return Err(fail(
                    &f,
                    RenderError::Undeclared(format!(
                        "consul prefix {prefix:?} is not under a prefix the bundle declares"
                    )),
                ));
            }
            let mut out = BTreeMap::new();
            for (k, val) in v.consul.range(prefix.to_string()..) {
                let Some(rel) = k.strip_prefix(prefix) else {
                    break;
                };
                if rel.is_empty() || rel.ends_with('/') {
                    continue;
                }
                let text = match val {
                    None => String::new(),
                    Some(b) => match std::str::from_utf8(b) {
                        Ok(s) => s.to_string(),
                        Err(_) => {
                            return Err(fail(
                                &f,
                                RenderError::Other(format!(
                                    "consul key {k} does not hold UTF-8 text"
                                )),
                            ))
                        }
                    },
                };
                out.insert(rel.to_string(), Value::from(text));
            }
            Ok(Value::from(out))
        });
    }
    {
        let (v, f) = (values.clone(), failure.clone());
        env.add_function(
            "vault",
            move |path: &str, field: &str| -> Result<Value, Error> {
                match vault_value(&v, &f, path, field)? {
                    Some(s) => Ok(Value::from(s)),
                    None => Err(fail(
                        &f,
                        RenderError::Missing {
                            source_name: "vault".into(),
                            key: format!("{path}#{field}"),
                        },
                    )),
                }
            },
        );
    }
    {
        let (v, f) = (values.clone(), failure.clone());
        env.add_function(
            "vault_or",
            move |path: &str, field: &str, default: Value| -> Result<Value, Error> {
                Ok(match vault_value(&v, &f, path, field)? {
                    Some(s) => Value::from(s),
                    None => default,
                })
            },
        );
    }
    {
        let (v, f) = (values.clone(), failure.clone());
        env.add_function("pki_cert", move |field: &str| -> Result<Value, Error> {
            let Some(pki) = &v.pki else {
                return Err(fail(
                    &f,
                    RenderError::Undeclared(
                        "pki_cert(): the bundle declares no PKI certificate".into(),
                    ),
                ));
            };
            match pki.get(field) {
                Some(s) => Ok(Value::from(s.expose_str())),
                None => Err(fail(
                    &f,
                    RenderError::Missing {
                        source_name: "vault pki".into(),
                        key: field.into(),
                    },
                )),
            }
        });
    }
    let host: BTreeMap<String, Value> = c
        .facts
        .0
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), Value::from(v.as_ref().ok()?.as_str()))))
        .collect();
    let vars: BTreeMap<String, Value> = c
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), json_value(v)))
        .collect();
    let ctx = Value::from(BTreeMap::from([
        ("hostname".to_string(), Value::from(c.hostname)),
        ("hostgroup".to_string(), Value::from(c.hostgroup)),
        ("vars".to_string(), Value::from(vars)),
        ("host".to_string(), Value::from(host)),
    ]));
    let result = env
        .template_from_named_str(name, source)
        .and_then(|t| t.render(ctx));
    match result {
        Ok(text) => Ok(Secret::new(text.into_bytes())),
        Err(e) => {
            if let Some(f) = failure.lock().ok().and_then(|mut s| s.take()) {
                return Err(f);
            }
            if e.kind() == ErrorKind::UndefinedError {
                if let Some(r) = undefined_read(source, e.line(), c) {
                    return Err(r);
                }
            }
            let line = e
                .line()
                .map(|l| format!(" (template line {l})"))
                .unwrap_or_default();
            Err(RenderError::Other(format!("{}{line}", reason(&e))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(src: &str) -> Vec<Read> {
        analyze("t", src)
            .unwrap()
            .into_iter()
            .map(|c| c.read)
            .collect()
    }

    #[test]
    fn finds_every_read_in_every_branch() {
        let src = "v={{ consul(\"kiln/apps/web/version\") }}\n{% if hostname == \"x\" %}{{ vault(\"secret/data/db/app\", \"password\") }}{% else %}{{ consul_or(\"kiln/apps/web/port\", 80) }}{% endif %}\n{% for k, v in consul_tree(\"kiln/apps/web/env/\")|items %}{{ k }}={{ v }}\n{% endfor %}{{ pki_cert(\"private_key\") }}{% macro m() %}{{ vault_or(\"secret/data/x/y\", \"z\", \"\") }}{% endmacro %}\n";
        assert_eq!(
            reads(src),
            [
                Read::ConsulKey("kiln/apps/web/version".into()),
                Read::Vault {
                    path: "secret/data/db/app".into(),
                    field: "password".into()
                },
                Read::ConsulKey("kiln/apps/web/port".into()),
                Read::ConsulTree("kiln/apps/web/env/".into()),
                Read::Pki("private_key".into()),
                Read::Vault {
                    path: "secret/data/x/y".into(),
                    field: "z".into()
                },
            ]
        );
        let calls = analyze("t", src).unwrap();
        assert_eq!(calls[0].line, Some(1));
        assert!(calls[2].has_default && !calls[0].has_default);
    }

    #[test]
    fn refuses_what_it_cannot_check() {
        for (src, want) in [
            ("{{ consul(hostname) }}", "literals"),
            ("{{ consul(\"a/\" ~ hostname) }}", "literals"),
            ("{% set f = consul %}{{ f(\"a/b\") }}", "only be called"),
            ("{% set consul = 1 %}", "reassigned"),
            ("{{ consul(\"a/../b\") }}", "not a Consul key"),
            ("{{ consul_tree(\"a/b\") }}", "ending in /"),
            ("{{ vault(\"secret/db\", \"x\") }}", "KV v2"),
            ("{{ vault(\"secret/data/db\") }}", "takes 2"),
            ("{{ pki_cert(\"key\") }}", "not one of"),
            ("{{ varz.x }}", "not \"varz\""),
            ("{{ vars }}", "vars can only be read by name"),
            (
                "{% for k in vars %}{% endfor %}",
                "vars can only be read by name",
            ),
            ("{{ vars[hostname] }}", "vars can only be read by name"),
            ("{% set v = vars %}", "vars can only be read by name"),
            ("{% set vars = 1 %}", "reassigned"),
            ("{{ host }}", "host can only be read by fact"),
            ("{{ host.instance }}", "did you mean host.instance_id?"),
            ("{{ host.zone }}", "not a fact of the host"),
            ("{% include \"x\" %}", "include"),
            ("{{ consul_or(\"a/b\", [1]) }}", "default"),
            ("{{ consul(", "syntax error"),
        ] {
            let e = analyze("t", src).unwrap_err();
            assert!(e.message.contains(want), "{src}: {e}");
        }
    }

    fn ctx<'a>(hostname: &'a str, hostgroup: &'a str) -> Context<'a> {
        Context {
            hostname,
            hostgroup,
            vars: Box::leak(Box::new({
                BTreeMap::from([(
                    "nginx".to_string(),
                    serde_json::json!({"server_name": "www.example.org", "ports": [80, 443]}),
                )])
            })),
            facts: Box::leak(Box::new({
                Facts(BTreeMap::from([
                    ("hostname".to_string(), Ok(hostname.to_string())),
                    ("instance_id".to_string(), Ok("i-0abc".to_string())),
                    (
                        "availability_zone".to_string(),
                        Err(
                            "/run/cloud-init/instance-data.json has no v1.availability_zone"
                                .to_string(),
                        ),
                    ),
                ]))
            })),
        }
    }

    fn values() -> Arc<Values> {
        let mut v = Values {
            consul_prefixes: vec!["kiln/apps/web/".into()],
            ..Values::default()
        };
        v.consul
            .insert("kiln/apps/web/version".into(), Some(b"1.2.3".to_vec()));
        v.consul
            .insert("kiln/apps/web/env/A".into(), Some(b"1".to_vec()));
        v.consul.insert("kiln/apps/web/env/B".into(), None);
        v.vault_paths.insert("secret/data/db/app".into());
        v.vault.insert(
            "secret/data/db/app".into(),
            BTreeMap::from([("password".to_string(), Secret::new("pw-123456"))]),
        );
        Arc::new(v)
    }

    #[test]
    fn renders_with_values_and_defaults() {
        let out = render(
            values(),
            "/etc/x",
            "{{ hostname }} {{ consul(\"kiln/apps/web/version\") }} {{ consul_or(\"kiln/apps/web/nope\", \"d\") }} {{ vault(\"secret/data/db/app\", \"password\") }}{% for k, v in consul_tree(\"kiln/apps/web/env/\")|items %} {{ k }}={{ v }}{% endfor %}\n",
            &ctx("h1", "web"),
        )
        .unwrap();
        assert_eq!(out.expose_str(), "h1 1.2.3 d pw-123456 A=1 B=\n");
    }

    #[test]
    fn a_missing_key_names_the_key_and_never_a_value() {
        let e = render(
            values(),
            "/etc/x",
            "{{ vault(\"secret/data/db/app\", \"password\") }}{{ consul(\"kiln/apps/web/missing\") }}",
            &ctx("h", "web"),
        )
        .unwrap_err();
        assert_eq!(
            e,
            RenderError::Missing {
                source_name: "consul".into(),
                key: "kiln/apps/web/missing".into()
            }
        );
        let e = render(
            values(),
            "/x",
            "{{ vault(\"secret/data/db/app\", \"user\") }}",
            &ctx("h", "w"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("secret/data/db/app#user"));
        let e = render(values(), "/x", "{{ consul(\"other/k\") }}", &ctx("h", "w")).unwrap_err();
        assert!(matches!(e, RenderError::Undeclared(_)));
        let e = render(
            values(),
            "/x",
            "{{ vault(\"secret/data/db/app\", \"password\") + 1 }}",
            &ctx("h", "w"),
        )
        .unwrap_err();
        assert!(matches!(e, RenderError::Other(_)));
        assert!(!e.to_string().contains("pw-123456"), "{e}");
    }

    #[test]
    fn finds_vars_and_facts_and_their_guards() {
        let calls = analyze(
            "t",
            "{{ vars.nginx.server_name }}\n{{ vars[\"a\"] }} {{ host.instance_id | default(\"none\") }}\n{% if host.region is defined %}{{ host.region }}{% endif %}{{ vars.b.c|d }}",
        )
        .unwrap();
        let got: Vec<(Read, bool, Option<usize>)> = calls
            .into_iter()
            .map(|c| (c.read, c.has_default, c.line))
            .collect();
        let var = |p: &[&str]| Read::Var(p.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            got,
            [
                (var(&["nginx", "server_name"]), false, Some(1)),
                (var(&["a"]), false, Some(2)),
                (Read::Fact("instance_id".into()), true, Some(2)),
                (Read::Fact("region".into()), true, Some(3)),
                (Read::Fact("region".into()), false, Some(3)),
                (var(&["b", "c"]), true, Some(3)),
            ]
        );
    }

    #[test]
    fn renders_vars_and_facts() {
        let out = render(
            values(),
            "/etc/x",
            "{{ vars.nginx.server_name }} {{ vars.nginx.ports | join(\",\") }} {{ host.instance_id }} {{ host.hostname }} {{ host.availability_zone | default(\"no-zone\") }}{% if host.region is defined %} {{ host.region }}{% endif %}\n",
            &ctx("h1", "web"),
        )
        .unwrap();
        assert_eq!(
            out.expose_str(),
            "www.example.org 80,443 i-0abc h1 no-zone\n"
        );
    }

    #[test]
    fn an_unguarded_missing_fact_names_the_fact_and_why() {
        let e = render(
            values(),
            "/etc/x",
            "{{ host.instance_id }}\n{{ host.availability_zone }}\n",
            &ctx("h1", "web"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "host.availability_zone is not available on this host (/run/cloud-init/instance-data.json has no v1.availability_zone), and the template reads it unguarded (test it with `is defined`, or give it a `default(...)`)"
        );
    }

    #[test]
    fn did_you_mean_finds_close_names() {
        assert_eq!(did_you_mean("instance", HOST_FACTS), Some("instance_id"));
        assert_eq!(did_you_mean("primaryip", HOST_FACTS), Some("primary_ip"));
        assert_eq!(did_you_mean("zone", HOST_FACTS), None);
    }
}
