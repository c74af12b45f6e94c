//! Resolving one hostgroup: find its layers (with parameters, nested, cycles refused), expand
//! them, merge every source, and turn the result into a checked [`Resolved`]: `from:` files
//! found, static templates rendered, dynamic ones parsed, owners, groups, services and paths
//! checked across the whole hostgroup.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::{Environment, Value};

use super::accounts::{BASE_GROUPS, BASE_USERS};
use super::check;
use super::diag::{Diagnostic, Sink, Span};
use super::items::{self, Kind, Src, DEFAULT_TIMEOUT};
use super::load::{check_section, Config, Doc, TOP_KEYS};
use super::merge::{deep_merge, Item, Merged};
use super::model::*;
use super::template;
use super::yaml::{Node, NodeKind};

/// Largest `from:` file read into memory (templates, units).
const MAX_READ_BYTES: u64 = 16 << 20;
/// Where units are written.
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// What resolving a hostgroup gave: the result when there was no problem, every problem, and
/// every file the result depends on.
#[derive(Debug, Default)]
pub struct Outcome {
    pub resolved: Option<Resolved>,
    pub diags: Vec<Diagnostic>,
    pub inputs: BTreeSet<PathBuf>,
    pub applied: Vec<String>,
}

/// State shared by the steps of one resolution.
struct Run<'c> {
    cfg: &'c Config,
    hostgroup: String,
    env: Environment<'static>,
    d: Sink,
    inputs: BTreeSet<PathBuf>,
    /// Merge position of each source file: default.yaml, layers in order, the hostgroup.
    order_of: HashMap<Arc<Path>, usize>,
    layer_params: BTreeMap<String, Value>,
    vars_value: Value,
    /// The merged `dynamic:` section, once read (dynamic templates are checked against it).
    dynamic: Option<kiln_signing::Dynamic>,
    /// What the dynamic template just parsed reads.
    last_reads: Vec<kiln_apply::template::Read>,
    warnings: Vec<Diagnostic>,
}

/// The layer named by a span's file, when it is `layers/<name>.yaml`.
pub fn layer_of(span: &Span) -> Option<&str> {
    let s = span.file.to_str()?;
    s.strip_prefix("layers/")?.strip_suffix(".yaml")
}

impl Config {
    /// Resolve `hostgroup`, whose file is `hg` (`None`: default.yaml alone). `check_layer` adds
    /// one more layer (to check a layer no hostgroup uses; its missing parameters are skipped).
    pub(crate) fn run(
        &self,
        hostgroup: &str,
        hg: Option<&Doc>,
        check_layer: Option<&str>,
    ) -> Outcome {
        let mut run = Run {
            cfg: self,
            hostgroup: hostgroup.to_string(),
            env: template::environment(),
            d: Sink::default(),
            inputs: BTreeSet::new(),
            order_of: HashMap::new(),
            layer_params: BTreeMap::new(),
            vars_value: Value::from(()),
            dynamic: None,
            last_reads: Vec::new(),
            warnings: Vec::new(),
        };
        let docs: Vec<&Doc> = std::iter::once(&self.default).chain(hg).collect();
        let mut relevant: HashSet<Arc<Path>> = docs.iter().map(|doc| doc.file.clone()).collect();
        for doc in &docs {
            run.inputs.insert(self.root.join(&doc.file));
        }

        // Which layers, in which order, with which parameters.
        let mut mentions: Vec<(String, Span)> = Vec::new();
        let mut args: HashMap<String, Node> = HashMap::new();
        for doc in &docs {
            for (k, v) in doc.entries() {
                let key = k.key_str();
                if key == "layers" {
                    if let NodeKind::Seq(list) = &v.kind {
                        for item in list {
                            if let Some(name) =
                                item.as_str().filter(|n| self.layers.contains_key(*n))
                            {
                                mentions.push((name.to_string(), item.span.clone()));
                            }
                        }
                    }
                } else if !TOP_KEYS.contains(&key) && self.layers.contains_key(key) {
                    mentions.push((key.to_string(), k.span.clone()));
                    let v = if v.is_null() {
                        Node::new(NodeKind::Map(Vec::new()), v.span.clone())
                    } else {
                        v.clone()
                    };
                    if v.as_map().is_some() {
                        match args.get_mut(key) {
                            Some(a) => deep_merge(a, &v),
                            None => {
                                args.insert(key.to_string(), v);
                            }
                        }
                    }
                }
            }
        }
        if let Some(name) = check_layer {
            if let Some(layer) = self.layers.get(name) {
                mentions.push((name.to_string(), Span::file_start(layer.doc.file.clone())));
            }
        }
        let mut order = Vec::new();
        let mut uses = BTreeMap::new();
        let mut stack = Vec::new();
        for (name, span) in &mentions {
            run.visit(name, span, &mut stack, &mut order, &mut uses);
        }
        for name in &order {
            let file = self.layers[name].doc.file.clone();
            run.inputs.insert(self.root.join(&file));
            relevant.insert(file);
        }
        let mut out = Outcome {
            applied: order.clone(),
            ..Outcome::default()
        };
        out.diags.extend(
            self.diags
                .iter()
                .filter(|d| relevant.contains(&d.span.file))
                .cloned(),
        );
        let any_failed =
            docs.iter().any(|doc| doc.failed) || order.iter().any(|n| self.layers[n].doc.failed);
        if any_failed {
            out.diags.extend(run.d.list);
            out.inputs = run.inputs;
            return out;
        }

        // Sources, in merge order.
        let mut sources: Vec<Node> = Vec::new();
        run.order_of.insert(self.default.file.clone(), 0);
        sources.extend(self.default.root.clone());
        for name in &order {
            let layer = &self.layers[name];
            run.order_of
                .insert(layer.doc.file.clone(), run.order_of.len());
            let given = args.get(name);
            let mut values = BTreeMap::new();
            let mut missing = false;
            for p in &layer.params {
                match given.and_then(|g| g.get(&p.name)).or(p.default.as_ref()) {
                    Some(v) => {
                        values.insert(p.name.clone(), template::to_value(v));
                    }
                    None => {
                        missing = true;
                        // Without a hostgroup (checking a layer no hostgroup uses) a parameter
                        // that only hostgroups set is not missing.
                        if hg.is_some() {
                            let span = &uses[name];
                            let suffix = match hg {
                                Some(doc) if doc.file != span.file => {
                                    format!(" for hostgroup {hostgroup}")
                                }
                                _ => String::new(),
                            };
                            run.d.err(
                                span,
                                format!(
                                    "layer {name}: required parameter {:?} is not set{suffix}",
                                    p.name
                                ),
                            );
                        }
                    }
                }
            }
            if missing {
                continue;
            }
            let params = Value::from(values);
            run.layer_params.insert(name.clone(), params.clone());
            if let Some(res) = &layer.resources {
                let ctx = template::map_value([
                    ("params", params),
                    ("hostgroup", Value::from(hostgroup)),
                ]);
                let expanded = run.expand_resources(res, &ctx);
                for (sk, sv) in expanded.as_map().unwrap_or(&[]) {
                    check_section(sk.key_str(), sv, &mut run.d);
                }
                sources.push(expanded);
            }
        }
        if let Some(doc) = hg {
            run.order_of.insert(doc.file.clone(), run.order_of.len());
            sources.extend(doc.root.clone());
        }

        let mut merged = Merged::default();
        for s in &sources {
            merged.add(s);
        }
        let mut resolved = run.build(&merged);
        resolved.layers = order;
        resolved.layer_uses = uses;
        resolved.warnings = std::mem::take(&mut run.warnings);
        resolved.warnings.sort();
        resolved.warnings.dedup();
        out.diags.extend(run.d.list);
        out.inputs = run.inputs;
        if out.diags.is_empty() {
            out.resolved = Some(resolved);
        }
        out
    }
}

impl Run<'_> {
    /// Depth-first: a layer's own layers come before it; each layer once; cycles reported.
    fn visit(
        &mut self,
        name: &str,
        via: &Span,
        stack: &mut Vec<String>,
        order: &mut Vec<String>,
        uses: &mut BTreeMap<String, Span>,
    ) {
        if order.iter().any(|n| n == name) {
            return;
        }
        if let Some(pos) = stack.iter().position(|n| n == name) {
            self.report_cycle(&stack[pos..]);
            return;
        }
        let Some(layer) = self.cfg.layers.get(name) else {
            return;
        };
        uses.entry(name.to_string()).or_insert_with(|| via.clone());
        stack.push(name.to_string());
        for (dep, span) in &layer.deps {
            self.visit(dep, span, stack, order, uses);
        }
        stack.pop();
        order.push(name.to_string());
    }

    /// Report a cycle the same way whichever layer it was entered from: starting at its
    /// smallest name, at that layer's `layers:` entry that leads on.
    fn report_cycle(&mut self, cycle: &[String]) {
        let Some(start) = cycle
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| n.as_str())
            .map(|(i, _)| i)
        else {
            return;
        };
        let mut names: Vec<&str> = cycle[start..]
            .iter()
            .chain(&cycle[..start])
            .map(String::as_str)
            .collect();
        let next = names.get(1).copied().unwrap_or(names[0]);
        let first = &self.cfg.layers[names[0]];
        let span = first
            .deps
            .iter()
            .find(|(n, _)| n == next)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| Span::file_start(first.doc.file.clone()));
        names.push(names[0]);
        self.d
            .err(&span, format!("layer cycle: {}", names.join(" -> ")));
    }

    /// A layer's resources with `{{ ... }}` in keys and values rendered. The `content` of files
    /// and units is left alone: it is a template only when `template:` says so, and then it
    /// is rendered later, with `vars` and `hostgroup` as well. What fails to expand is reported
    /// and left out, so that it is not reported again as a bad value.
    fn expand_resources(&mut self, res: &Node, ctx: &Value) -> Node {
        let mut out = Vec::new();
        for (sk, sv) in res.as_map().unwrap_or(&[]) {
            let v = match (Kind::from_key(sk.key_str()), &sv.kind) {
                (Some(kind), NodeKind::Map(items)) => {
                    let mut expanded = Vec::new();
                    for (ik, iv) in items {
                        // An item with a part that failed to expand is left out whole.
                        let before = self.d.list.len();
                        let key = self.expand_key(ik, ctx);
                        let value = match (&iv.kind, kind) {
                            (NodeKind::Map(fields), Kind::Files | Kind::Units) => {
                                let mut f = Vec::new();
                                for (fk, fv) in fields {
                                    let value = if fk.key_str() == "content" {
                                        Some(fv.clone())
                                    } else {
                                        self.expand(fv, ctx)
                                    };
                                    if let (Some(key), Some(value)) =
                                        (self.expand_key(fk, ctx), value)
                                    {
                                        self.push_unique(&mut f, key, value);
                                    }
                                }
                                Some(Node::new(NodeKind::Map(f), iv.span.clone()))
                            }
                            _ => self.expand(iv, ctx),
                        };
                        if let (Some(key), Some(value), true) =
                            (key, value, self.d.list.len() == before)
                        {
                            self.push_unique(&mut expanded, key, value);
                        }
                    }
                    Some(Node::new(NodeKind::Map(expanded), sv.span.clone()))
                }
                _ => self.expand(sv, ctx),
            };
            if let Some(v) = v {
                out.push((sk.clone(), v));
            }
        }
        Node::new(NodeKind::Map(out), res.span.clone())
    }

    fn push_unique(&mut self, entries: &mut Vec<(Node, Node)>, key: Node, value: Node) {
        if let Some((first, _)) = entries.iter().find(|(k, _)| k.as_str() == key.as_str()) {
            let msg = format!(
                "duplicate key {:?} after expanding parameters (first at line {})",
                key.key_str(),
                first.span.line
            );
            self.d.err(&key.span, msg);
            return;
        }
        entries.push((key, value));
    }

    fn expand_key(&mut self, key: &Node, ctx: &Value) -> Option<Node> {
        let text = key.key_str();
        if !template::has_template_syntax(text) {
            return Some(key.clone());
        }
        match self.env.render_str(text, ctx.clone()) {
            Ok(s) => Some(Node::str(s, key.span.clone())),
            Err(e) => {
                self.d.err(
                    &key.span,
                    format!("cannot expand {text:?}: {}", template::reason(&e)),
                );
                None
            }
        }
    }

    fn expand(&mut self, node: &Node, ctx: &Value) -> Option<Node> {
        Some(match &node.kind {
            NodeKind::Str(s) if template::has_template_syntax(s) => {
                match template::expand(&self.env, s, ctx, &node.span) {
                    Ok(n) => n,
                    Err(e) => {
                        self.d.err(&node.span, format!("cannot expand {s:?}: {e}"));
                        return None;
                    }
                }
            }
            NodeKind::Seq(items) => Node::new(
                NodeKind::Seq(items.iter().filter_map(|n| self.expand(n, ctx)).collect()),
                node.span.clone(),
            ),
            NodeKind::Map(entries) => {
                let mut out = Vec::new();
                for (k, v) in entries {
                    if let (Some(key), Some(value)) = (self.expand_key(k, ctx), self.expand(v, ctx))
                    {
                        self.push_unique(&mut out, key, value);
                    }
                }
                Node::new(NodeKind::Map(out), node.span.clone())
            }
            _ => node.clone(),
        })
    }

    /// Merge position of a definition: source, then line and column within it.
    fn order(&self, span: &Span) -> (usize, usize, usize) {
        (
            self.order_of.get(&span.file).copied().unwrap_or(usize::MAX),
            span.line,
            span.column,
        )
    }

    /// `from:` relative to `files/` (hostgroups) or `layers/<name>/` (layers): it must exist,
    /// be a regular file, and stay inside the configuration tree once symlinks are followed.
    /// Returns the absolute path and the path relative to the configuration root.
    fn resolve_from(&mut self, rel: &str, span: &Span) -> Option<(PathBuf, PathBuf)> {
        let base = match layer_of(span) {
            Some(layer) => PathBuf::from("layers").join(layer),
            None => PathBuf::from("files"),
        };
        let relpath = base.join(rel);
        let abs = self.cfg.root.join(&relpath);
        self.inputs.insert(abs.clone());
        if std::fs::symlink_metadata(&abs).is_err() {
            self.d
                .err(span, format!("from: {} does not exist", relpath.display()));
            return None;
        }
        let real = match std::fs::canonicalize(&abs) {
            Ok(r) => r,
            Err(e) => {
                self.d.err(
                    span,
                    format!("from: {} cannot be followed: {e}", relpath.display()),
                );
                return None;
            }
        };
        if !real.starts_with(&self.cfg.root) {
            self.d.err(
                span,
                format!(
                    "from: {} resolves to {}, outside the configuration tree",
                    relpath.display(),
                    real.display()
                ),
            );
            return None;
        }
        self.inputs.insert(real.clone());
        match std::fs::metadata(&real) {
            Ok(m) if m.is_file() => Some((abs, relpath)),
            _ => {
                self.d.err(
                    span,
                    format!("from: {} is not a regular file", relpath.display()),
                );
                None
            }
        }
    }

    fn read_text(&mut self, abs: &Path, relpath: &Path, span: &Span) -> Option<String> {
        let bytes = self.read_bytes(abs, relpath, span)?;
        match String::from_utf8(bytes) {
            Ok(t) => Some(t),
            Err(_) => {
                self.d.err(
                    span,
                    format!("template {} is not valid UTF-8", relpath.display()),
                );
                None
            }
        }
    }

    fn read_bytes(&mut self, abs: &Path, relpath: &Path, span: &Span) -> Option<Vec<u8>> {
        match std::fs::metadata(abs) {
            Ok(m) if m.len() > MAX_READ_BYTES => {
                self.d.err(
                    span,
                    format!(
                        "{} is larger than {} MiB",
                        relpath.display(),
                        MAX_READ_BYTES >> 20
                    ),
                );
                return None;
            }
            _ => {}
        }
        match std::fs::read(abs) {
            Ok(b) => Some(b),
            Err(e) => {
                self.d
                    .err(span, format!("cannot read {}: {e}", relpath.display()));
                None
            }
        }
    }

    /// Render a static template: `hostgroup`, `vars`, and `params` when a layer defined it.
    fn render_static(&mut self, name: &str, text: &str, span: &Span) -> Option<Vec<u8>> {
        let mut ctx = vec![
            ("hostgroup", Value::from(self.hostgroup.as_str())),
            ("vars", self.vars_value.clone()),
        ];
        if let Some(params) = layer_of(span).and_then(|l| self.layer_params.get(l)) {
            ctx.push(("params", params.clone()));
        }
        let ctx = template::map_value(ctx);
        let result = self
            .env
            .template_from_named_str(name, text)
            .and_then(|t| t.render(ctx));
        match result {
            Ok(s) => Some(s.into_bytes()),
            Err(e) => {
                let line = e
                    .line()
                    .map(|l| format!(" (template line {l})"))
                    .unwrap_or_default();
                self.d.err(
                    span,
                    format!(
                        "cannot render static template {name}: {}{line}",
                        template::reason(&e)
                    ),
                );
                None
            }
        }
    }

    /// Check a dynamic template (it is rendered on the host): its syntax, that every call
    /// has literal arguments, and that it reads only what `dynamic:` declares. What it reads
    /// is left in `last_reads`.
    fn parse_dynamic(&mut self, name: &str, text: &str, span: &Span) -> bool {
        self.last_reads.clear();
        let calls = match kiln_apply::template::analyze(name, text) {
            Ok(calls) => calls,
            Err(e) => {
                self.d.err(span, format!("dynamic template {name}: {e}"));
                return false;
            }
        };
        let mut ok = true;
        // `{% if vars.x is defined %}{{ vars.x }}{% endif %}`: a path the template tests (or
        // gives a default) may be missing, wherever it reads it.
        let guarded: Vec<&[String]> = calls
            .iter()
            .filter(|c| c.has_default)
            .filter_map(|c| match &c.read {
                kiln_apply::template::Read::Var(p) => Some(p.as_slice()),
                _ => None,
            })
            .collect();
        let mut missing = Vec::new();
        for c in &calls {
            if let (kiln_apply::template::Read::Var(path), false) = (&c.read, c.has_default) {
                if guarded.iter().any(|g| path.starts_with(g)) {
                    continue;
                }
                if let Some(why) = self.missing_var(path) {
                    missing.push((path.join("."), c.line, why));
                }
            }
        }
        for (path, line, why) in missing {
            let line = line
                .map(|l| format!(" (template line {l})"))
                .unwrap_or_default();
            self.d.err(
                span,
                format!("dynamic template {name} reads vars.{path}{line}, {why}"),
            );
            ok = false;
        }
        for c in calls {
            if let Some(why) = super::dynamic::undeclared(&c.read, self.dynamic.as_ref()) {
                let line = c
                    .line
                    .map(|l| format!(" (template line {l})"))
                    .unwrap_or_default();
                self.d
                    .err(span, format!("dynamic template {name} {why}{line}"));
                ok = false;
            }
            if !self.last_reads.contains(&c.read) {
                self.last_reads.push(c.read);
            }
        }
        ok
    }

    /// Why `vars.<path>` has no value, if it has none: the first key missing, and the keys
    /// there are at that level (the closest first, when one is close).
    fn missing_var(&self, path: &[String]) -> Option<String> {
        let mut v = self.vars_value.clone();
        for (i, k) in path.iter().enumerate() {
            let next = v.get_attr(k).ok().filter(|x| !x.is_undefined());
            match next {
                Some(n) => v = n,
                None => {
                    let at = if i == 0 {
                        "vars".to_string()
                    } else {
                        format!("vars.{}", path[..i].join("."))
                    };
                    let keys: Vec<String> = v
                        .try_iter()
                        .map(|it| it.filter_map(|k| k.as_str().map(str::to_string)).collect())
                        .unwrap_or_default();
                    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                    let hint = kiln_apply::template::did_you_mean(k, &refs)
                        .map(|s| format!("; did you mean {at}.{s}?"))
                        .unwrap_or_default();
                    let has = if v.kind() == minijinja::value::ValueKind::Map {
                        if keys.is_empty() {
                            " (it is empty)".to_string()
                        } else {
                            format!(" (it has {})", keys.join(", "))
                        }
                    } else {
                        " (it is not a map)".to_string()
                    };
                    return Some(format!("but {at} has no key {k:?}{has}{hint}"));
                }
            }
        }
        None
    }

    /// The bytes (or path, or template) of a file or unit.
    fn file_source(
        &mut self,
        src: &Src,
        span: &Span,
        template: TemplateKind,
        unit: bool,
    ) -> Option<(FileSource, Option<PathBuf>)> {
        Some(match src {
            Src::Content(s) => match template {
                TemplateKind::None => (FileSource::Bytes(s.clone().into_bytes()), None),
                TemplateKind::Static => (
                    FileSource::Bytes(self.render_static("content", s, span)?),
                    None,
                ),
                TemplateKind::Dynamic => {
                    if !self.parse_dynamic("content", s, span) {
                        return None;
                    }
                    (
                        FileSource::Dynamic {
                            template: s.clone(),
                        },
                        None,
                    )
                }
            },
            Src::From(rel) => {
                let (abs, relpath) = self.resolve_from(rel, span)?;
                let name = relpath.display().to_string();
                let source = match template {
                    TemplateKind::None if unit => {
                        FileSource::Bytes(self.read_bytes(&abs, &relpath, span)?)
                    }
                    TemplateKind::None => FileSource::Path(abs),
                    TemplateKind::Static => {
                        let text = self.read_text(&abs, &relpath, span)?;
                        FileSource::Bytes(self.render_static(&name, &text, span)?)
                    }
                    TemplateKind::Dynamic => {
                        let text = self.read_text(&abs, &relpath, span)?;
                        if !self.parse_dynamic(&name, &text, span) {
                            return None;
                        }
                        FileSource::Dynamic { template: text }
                    }
                };
                (source, Some(relpath))
            }
            Src::Symlink(t) => (FileSource::Symlink(t.clone()), None),
            Src::Absent => (FileSource::Absent, None),
        })
    }

    /// Everything after the merge.
    fn build(&mut self, m: &Merged) -> Resolved {
        let mut r = Resolved {
            hostgroup: self.hostgroup.clone(),
            base: ResolvedBase::default(),
            layers: Vec::new(),
            vars: serde_json::Value::Object(serde_json::Map::new()),
            vars_spans: BTreeMap::new(),
            files: BTreeMap::new(),
            directories: BTreeMap::new(),
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            packages: BTreeMap::new(),
            units: Vec::new(),
            services: BTreeMap::new(),
            commands: Vec::new(),
            checks: BTreeMap::new(),
            system_accounts: BTreeSet::new(),
            layer_uses: BTreeMap::new(),
            dynamic: None,
            dynamic_span: None,
            template_reads: BTreeMap::new(),
            warnings: Vec::new(),
        };
        if let Some(dynamic) = &m.dynamic {
            r.dynamic = super::dynamic::resolve(dynamic, &mut self.d);
            r.dynamic_span = Some(dynamic.span.clone());
            self.dynamic = r.dynamic.clone();
        }
        if let Some(base) = &m.base {
            self.build_base(base, &mut r.base);
        }
        if let Some(vars) = &m.vars {
            r.vars = to_json(vars, &mut self.d, 0);
            for (k, _) in vars.as_map().unwrap_or(&[]) {
                r.vars_spans.insert(k.key_str().to_string(), k.span.clone());
            }
            self.vars_value = template::to_value(vars);
        } else {
            self.vars_value = template::map_value([]);
        }
        for n in &m.system_accounts {
            let name = n.key_str();
            if check::is_account_name(name) {
                r.system_accounts.insert(name.to_string());
            }
        }

        let mut paths: Vec<PathEntry> = Vec::new();
        let mut owners: Vec<(String, Span)> = Vec::new();
        let mut group_refs: Vec<(String, Span)> = Vec::new();
        let mut service_refs: Vec<(String, Span)> = Vec::new();

        for item in &m.items[Kind::Files.index()] {
            let spec = items::file(Kind::Files, &item.key, &item.value, true, &mut self.d);
            let Some((src, src_span)) = &spec.src else {
                continue;
            };
            let path = item.key.key_str().to_string();
            let what = match src {
                Src::Symlink(_) => "symlink",
                _ => "file",
            };
            paths.push(PathEntry::new(
                &path,
                what,
                !matches!(src, Src::Absent),
                item,
                self,
            ));
            let Some((source, from)) = self.file_source(src, src_span, spec.template, false) else {
                continue;
            };
            // A dynamic template that reads a secret is 0600 unless its definition says otherwise.
            let mut default_mode = 0o644;
            if let FileSource::Dynamic { .. } = &source {
                let reads = std::mem::take(&mut self.last_reads);
                if reads.iter().any(|r| r.is_secret()) {
                    default_mode = 0o600;
                }
                r.template_reads.insert(path.clone(), reads);
            } else if let Some(what) = super::secrets::scan_source(&source) {
                self.warnings.push(Diagnostic::new(
                    src_span.clone(),
                    format!(
                        "{path}: {what}; a literal secret ends up in the bundle and in every image: keep it in Vault and read it with a dynamic template (vault(...))"
                    ),
                ));
            }
            let has_meta = !matches!(src, Src::Symlink(_) | Src::Absent);
            if has_meta {
                owners.extend(spec.owner.clone());
                group_refs.extend(spec.group.clone());
            }
            service_refs.extend(spec.restart.iter().cloned());
            service_refs.extend(spec.reload.iter().cloned());
            let file = ResolvedFile {
                source,
                mode: if matches!(src, Src::Symlink(_)) {
                    0o777
                } else {
                    spec.mode.unwrap_or(default_mode)
                },
                owner: spec
                    .owner
                    .as_ref()
                    .filter(|_| has_meta)
                    .map_or("root".into(), |o| o.0.clone()),
                group: spec
                    .group
                    .as_ref()
                    .filter(|_| has_meta)
                    .map_or("root".into(), |g| g.0.clone()),
                restart: spec.restart.iter().map(|s| s.0.clone()).collect(),
                reload: spec.reload.iter().map(|s| s.0.clone()).collect(),
                from,
                template: spec.template,
            };
            r.files.insert(path, sourced(file, item));
        }
        for item in &m.items[Kind::Units.index()] {
            let spec = items::file(Kind::Units, &item.key, &item.value, true, &mut self.d);
            let Some((src, src_span)) = &spec.src else {
                continue;
            };
            let name = item.key.key_str().to_string();
            let path = format!("{UNIT_DIR}/{name}");
            let present = !matches!(src, Src::Absent);
            paths.push(PathEntry::new(&path, "unit", present, item, self));
            let Some((source, from)) = self.file_source(src, src_span, spec.template, true) else {
                continue;
            };
            if let Some(what) = super::secrets::scan_source(&source) {
                self.warnings.push(Diagnostic::new(
                    src_span.clone(),
                    format!(
                        "unit {name}: {what}; a literal secret ends up in the bundle and in every image: keep it in Vault and read it with a dynamic template (vault(...))"
                    ),
                ));
            }
            if present {
                r.units.push(name);
            }
            let file = ResolvedFile {
                source,
                mode: 0o644,
                owner: "root".into(),
                group: "root".into(),
                restart: Vec::new(),
                reload: Vec::new(),
                from,
                template: spec.template,
            };
            r.files.entry(path).or_insert_with(|| sourced(file, item));
        }
        for item in &m.items[Kind::Directories.index()] {
            let spec = items::directory(&item.key, &item.value, &mut self.d);
            let path = item.key.key_str().to_string();
            paths.push(PathEntry::new(&path, "directory", !spec.absent, item, self));
            if !spec.absent {
                owners.extend(spec.owner.clone());
                group_refs.extend(spec.group.clone());
            }
            let dir = ResolvedDir {
                absent: spec.absent,
                mode: spec.mode.unwrap_or(0o755),
                owner: spec.owner.map_or("root".into(), |o| o.0),
                group: spec.group.map_or("root".into(), |g| g.0),
            };
            r.directories.insert(path, sourced(dir, item));
        }
        let mut ids: Vec<(&'static str, u32, String, Span)> = Vec::new();
        let mut private_groups = Vec::new();
        // Groups users are put in: created before packages, so not a package's own.
        let mut user_group_refs: Vec<(String, Span)> = Vec::new();
        for item in &m.items[Kind::Users.index()] {
            let spec = items::user(&item.key, &item.value, &mut self.d);
            if spec.absent {
                continue;
            }
            let name = item.key.key_str().to_string();
            if let Some((uid, span)) = &spec.uid {
                ids.push(("uid", *uid, name.clone(), span.clone()));
            }
            match &spec.group {
                Some(g) => user_group_refs.push(g.clone()),
                None => private_groups.push(name.clone()),
            }
            user_group_refs.extend(spec.groups.iter().cloned());
            let user = ResolvedUser {
                uid: spec.uid.map(|u| u.0),
                group: spec.group.map(|g| g.0),
                groups: spec.groups.into_iter().map(|g| g.0).collect(),
                home: spec
                    .home
                    .or_else(|| (!spec.system).then(|| format!("/home/{name}"))),
                shell: Some(spec.shell.unwrap_or_else(|| {
                    if spec.system {
                        "/usr/sbin/nologin".into()
                    } else {
                        "/bin/bash".into()
                    }
                })),
                comment: spec.comment,
                system: spec.system,
                create_home: spec.create_home.unwrap_or(!spec.system),
                authorized_keys: spec.authorized_keys,
            };
            r.users.insert(name, sourced(user, item));
        }
        for item in &m.items[Kind::Groups.index()] {
            let spec = items::group(&item.key, &item.value, &mut self.d);
            if spec.absent {
                continue;
            }
            let name = item.key.key_str().to_string();
            if let Some((gid, span)) = &spec.gid {
                ids.push(("gid", *gid, name.clone(), span.clone()));
            }
            let group = ResolvedGroup {
                gid: spec.gid.map(|g| g.0),
                system: spec.system,
            };
            r.groups.insert(name, sourced(group, item));
        }
        for item in &m.items[Kind::Packages.index()] {
            let spec = items::package(&item.key, &item.value, &mut self.d);
            if !spec.absent {
                r.packages.insert(
                    item.key.key_str().into(),
                    sourced(
                        ResolvedPackage {
                            version: spec.version,
                        },
                        item,
                    ),
                );
            }
        }
        for item in &m.items[Kind::Services.index()] {
            let spec = items::service(&item.key, &item.value, true, &mut self.d);
            if spec.absent {
                continue;
            }
            let Some(state) = spec.state else { continue };
            let enabled = spec.enabled.unwrap_or(state == ServiceState::Running);
            r.services.insert(
                item.key.key_str().into(),
                sourced(ResolvedService { state, enabled }, item),
            );
        }
        for item in &m.items[Kind::Commands.index()] {
            let spec = items::command(&item.key, &item.value, true, &mut self.d);
            if spec.absent {
                continue;
            }
            let Some(argv) = spec.run else { continue };
            let cmd = ResolvedCommand {
                name: item.key.key_str().into(),
                argv,
                timeout: spec.timeout.unwrap_or(DEFAULT_TIMEOUT),
                creates: spec.creates,
            };
            r.commands.push(sourced(cmd, item));
        }
        for item in &m.items[Kind::Checks.index()] {
            let spec = items::health_check(&item.key, &item.value, true, &mut self.d);
            if spec.absent {
                continue;
            }
            let Some(probe) = spec.probe else { continue };
            let name = item.key.key_str().to_string();
            let check = ResolvedCheck {
                name: name.clone(),
                probe,
                deadline: spec.deadline.unwrap_or(items::DEFAULT_DEADLINE),
            };
            r.checks.insert(name, sourced(check, item));
        }

        // Checks across the hostgroup.
        self.check_paths(&paths);
        let users: HashSet<&str> = BASE_USERS
            .iter()
            .copied()
            .chain(r.system_accounts.iter().map(String::as_str))
            .chain(r.users.keys().map(String::as_str))
            .collect();
        let groups: HashSet<&str> = BASE_GROUPS
            .iter()
            .copied()
            .chain(r.system_accounts.iter().map(String::as_str))
            .chain(r.groups.keys().map(String::as_str))
            .chain(private_groups.iter().map(String::as_str))
            .collect();
        for (name, span) in &owners {
            if !users.contains(name.as_str()) {
                self.d.err(span, format!("owner {name:?} is not a user of the base image, nor declared in users or system_accounts"));
            }
        }
        for (name, span) in &user_group_refs {
            let declared = BASE_GROUPS.contains(&name.as_str())
                || r.groups.contains_key(name)
                || private_groups.contains(name);
            if !declared && r.system_accounts.contains(name) {
                self.d.err(
                    span,
                    format!(
                        "group {name:?} is created by a package (system_accounts), but users are created before packages are installed; add the user to it in a command (usermod -a -G), which runs after packages"
                    ),
                );
            }
        }
        for (name, span) in group_refs.iter().chain(&user_group_refs) {
            if !groups.contains(name.as_str()) {
                self.d.err(span, format!("group {name:?} is not a group of the base image, nor declared in groups or system_accounts"));
            }
        }
        for (name, span) in &service_refs {
            if !r.services.contains_key(name) {
                self.d.err(
                    span,
                    format!("service {name:?} is not declared in services"),
                );
            }
        }
        ids.sort_by_key(|(kind, id, _, span)| (*kind, *id, self.order(span)));
        for pair in ids.windows(2) {
            let ((k1, id1, n1, s1), (k2, id2, _, s2)) = (&pair[0], &pair[1]);
            if k1 == k2 && id1 == id2 {
                let owner = if *k1 == "uid" { "user" } else { "group" };
                self.d.err(
                    s2,
                    format!("{k1} {id1} is already the {k1} of {owner} {n1} at {s1}"),
                );
            }
        }
        r
    }

    fn build_base(&mut self, base: &Node, out: &mut ResolvedBase) {
        for (k, v) in base.as_map().unwrap_or(&[]) {
            let key = k.key_str();
            if key == "include" {
                let mut sink = Sink::default();
                out.include = check::strings("include", v, &mut sink)
                    .into_iter()
                    .filter_map(|n| {
                        n.as_str()
                            .filter(|s| check::is_package_name(s))
                            .map(str::to_string)
                    })
                    .collect();
                continue;
            }
            if key == "sources" {
                let mut sink = Sink::default();
                out.sources = check::strings("sources", v, &mut sink)
                    .into_iter()
                    .filter_map(|n| {
                        n.as_str()
                            .filter(|s| check::is_suite_name(s))
                            .map(str::to_string)
                    })
                    .collect();
                continue;
            }
            let Some(s) = v
                .as_str()
                .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
            else {
                continue;
            };
            let slot = match key {
                "name" => &mut out.name,
                "os_id" => &mut out.os_id,
                "version_id" => &mut out.version_id,
                "arch" => &mut out.arch,
                "suite" => &mut out.suite,
                "variant" => &mut out.variant,
                _ => continue,
            };
            *slot = s.to_string();
        }
    }

    /// The same path both a file and a directory (or a unit); anything under a file or a
    /// symlink; anything under a directory being removed. Reported at the later definition,
    /// naming the earlier one.
    fn check_paths(&mut self, entries: &[PathEntry]) {
        let mut by_path: BTreeMap<&str, &PathEntry> = BTreeMap::new();
        let mut sorted: Vec<&PathEntry> = entries.iter().collect();
        sorted.sort_by_key(|e| e.order);
        for e in &sorted {
            match by_path.get(e.path.as_str()) {
                Some(first) => {
                    let msg = format!(
                        "{} {} is also declared as a {} at {}",
                        e.what, e.path, first.what, first.span
                    );
                    self.d.err(&e.span, msg);
                }
                None => {
                    by_path.insert(&e.path, e);
                }
            }
        }
        for e in &sorted {
            if !e.present {
                continue;
            }
            let mut anc = e.path.as_str();
            while let Some((parent, _)) = anc.rsplit_once('/') {
                anc = parent;
                if anc.is_empty() {
                    break;
                }
                let Some(a) = by_path.get(anc) else { continue };
                let blocks =
                    (a.present && a.what != "directory") || (!a.present && a.what == "directory");
                if !blocks {
                    continue;
                }
                let how = if a.present {
                    format!("a {}", a.what)
                } else {
                    "a directory to remove (state: absent)".into()
                };
                if e.order > a.order {
                    let msg = format!(
                        "{} {} is under {}, which is declared as {how} at {}",
                        e.what, e.path, a.path, a.span
                    );
                    self.d.err(&e.span, msg);
                } else {
                    let msg = format!(
                        "{} is declared as {how}, but {} {} is declared under it at {}",
                        a.path, e.what, e.path, e.span
                    );
                    self.d.err(&a.span, msg);
                }
            }
        }
    }
}

/// A path declared by a file, symlink, unit or directory.
struct PathEntry {
    path: String,
    what: &'static str,
    present: bool,
    span: Span,
    order: (usize, usize, usize),
}

impl PathEntry {
    fn new(path: &str, what: &'static str, present: bool, item: &Item, run: &Run<'_>) -> PathEntry {
        PathEntry {
            path: path.to_string(),
            what,
            present,
            span: item.key.span.clone(),
            order: run.order(&item.key.span),
        }
    }
}

fn sourced<T>(value: T, item: &Item) -> Sourced<T> {
    let n = item.defs.len().saturating_sub(1);
    Sourced {
        value,
        span: item.key.span.clone(),
        merged_over: item.defs[..n].to_vec(),
    }
}

/// `vars` as JSON (NaN and infinities cannot be written).
fn to_json(node: &Node, d: &mut Sink, depth: usize) -> serde_json::Value {
    use serde_json::Value as J;
    if depth > super::yaml::MAX_DEPTH {
        return J::Null;
    }
    match &node.kind {
        NodeKind::Null => J::Null,
        NodeKind::Bool(b) => J::Bool(*b),
        NodeKind::Int(i) => J::from(*i),
        NodeKind::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => J::Number(n),
            None => {
                d.err(&node.span, "vars cannot hold .nan or .inf");
                J::Null
            }
        },
        NodeKind::Str(s) => J::String(s.clone()),
        NodeKind::Seq(items) => J::Array(items.iter().map(|n| to_json(n, d, depth + 1)).collect()),
        NodeKind::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| (k.key_str().to_string(), to_json(v, d, depth + 1)))
                .collect(),
        ),
    }
}
