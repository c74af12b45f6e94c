//! `kiln render`: a resolved hostgroup as YAML, in a fixed order so that two renders of the
//! same inputs are byte-identical and diff well. With `explain`, each item is followed by a
//! comment naming the definition that won and those it was merged over.

use std::fmt::Write as _;

use super::diag::Span;
use super::model::*;
use super::resolve::layer_of;

/// Content longer than this (inline, rendered or a `from:` file) is shown as its digest: a
/// screenful of configuration is worth reading, a bundled binary or data file is not.
pub const MAX_SHOWN: usize = 16 * 1024;

/// A YAML scalar for `s`: plain when that reads back as the same string, else double-quoted.
pub fn scalar(s: &str) -> String {
    let plain_char = |c: char| c.is_ascii_alphanumeric() || "_./@+=~-:".contains(c);
    let reads_as_other = {
        let file = std::sync::Arc::from(std::path::Path::new(""));
        let parsed = super::yaml::parse(&file, &format!("{s}\n"));
        !matches!(parsed.root.map(|n| n.kind), Some(super::yaml::NodeKind::Str(ref t)) if t == s)
    };
    let plain = !s.is_empty()
        && s.chars().all(plain_char)
        && !s.starts_with(['-', ':', '.'])
        && !s.ends_with(':')
        && !reads_as_other;
    if plain {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn flow_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| scalar(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn mode(m: u32) -> String {
    format!("\"{m:04o}\"")
}

/// `content: ...` lines for bytes: text of up to MAX_SHOWN bytes as it is (a literal block
/// when it has lines, else a quoted scalar), anything else as `sha256:<hex> (N bytes)`.
/// Block lines are indented two more than the key and the caller's indent.
fn content(bytes: &[u8]) -> Vec<String> {
    if bytes.len() <= MAX_SHOWN {
        if let Ok(s) = std::str::from_utf8(bytes) {
            if s.chars().all(|c| c == '\n' || c == '\t' || !c.is_control()) {
                if let Some(block) = literal_block(s) {
                    return block;
                }
                let q = scalar(s);
                // A digest line is plain; text is always quoted so the two never look alike.
                let q = if q.starts_with('"') {
                    q
                } else {
                    format!("\"{q}\"")
                };
                return vec![format!("  content: {q}")];
            }
        }
    }
    vec![format!(
        "  content: sha256:{} ({} bytes)",
        kiln_signing::sha256_hex(bytes),
        bytes.len()
    )]
}

/// `content: |` and the text's lines, when the text has lines: `|-` without a final newline,
/// `|+` with several, an indentation indicator when the text starts with a space or an empty
/// line (YAML would take its first line's indentation for the block's).
fn literal_block(s: &str) -> Option<Vec<String>> {
    if !s.trim_end_matches('\n').contains('\n') && !s.ends_with('\n') {
        return None;
    }
    let body = s.strip_suffix('\n').unwrap_or(s);
    let chomp = if !s.ends_with('\n') {
        "-"
    } else if s.ends_with("\n\n") {
        "+"
    } else {
        ""
    };
    let indicator = if s.starts_with([' ', '\n']) { "2" } else { "" };
    let mut lines = vec![format!("  content: |{indicator}{chomp}")];
    lines.extend(body.split('\n').map(|l| {
        if l.is_empty() {
            String::new()
        } else {
            format!("    {l}")
        }
    }));
    Some(lines)
}

/// Where to explain from: the spans, and where each layer was asked for.
#[derive(Clone, Copy)]
struct Explain<'a> {
    on: bool,
    uses: &'a std::collections::BTreeMap<String, Span>,
}

impl Explain<'_> {
    /// `file:line:column`, and for a layer's definition, the layer and where it was asked for.
    fn origin(&self, span: &Span) -> String {
        match layer_of(span) {
            Some(layer) => match self.uses.get(layer) {
                Some(used) => format!("{span} (layer {layer}, used at {used})"),
                None => format!("{span} (layer {layer})"),
            },
            None => span.to_string(),
        }
    }

    /// The comment after an item: the definition that won, and those it was merged over.
    fn item<T>(&self, item: &Sourced<T>) -> String {
        if !self.on {
            return String::new();
        }
        let mut s = format!("  # from {}", self.origin(&item.span));
        if !item.merged_over.is_empty() {
            let over: Vec<String> = item
                .merged_over
                .iter()
                .rev()
                .map(|sp| self.origin(sp))
                .collect();
            let _ = write!(s, ", merged over {}", over.join(", "));
        }
        s
    }
}

/// Write `entries` as `key: {a: b, ...}` on one line.
fn flow_map(entries: &[(&str, String)]) -> String {
    let inner: Vec<String> = entries.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", inner.join(", "))
}

fn json(out: &mut String, v: &serde_json::Value, indent: usize) {
    use serde_json::Value as J;
    let pad = " ".repeat(indent);
    match v {
        J::Object(m) => {
            for (k, v) in m {
                match v {
                    J::Object(inner) if !inner.is_empty() => {
                        let _ = writeln!(out, "{pad}{}:", scalar(k));
                        json(out, v, indent + 2);
                    }
                    J::Array(items) if !items.is_empty() => {
                        let _ = writeln!(out, "{pad}{}:", scalar(k));
                        json(out, v, indent + 2);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}{}: {}", scalar(k), json_scalar(v));
                    }
                }
            }
        }
        J::Array(items) => {
            for v in items {
                match v {
                    J::Object(inner) if !inner.is_empty() => {
                        // First key on the dash line, the rest indented under it.
                        let mut sub = String::new();
                        json(&mut sub, v, indent + 2);
                        let sub = sub.trim_start();
                        let _ = write!(out, "{pad}- {sub}");
                    }
                    J::Array(inner) if !inner.is_empty() => {
                        let _ = writeln!(out, "{pad}-");
                        json(out, v, indent + 2);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}- {}", json_scalar(v));
                    }
                }
            }
        }
        _ => {
            let _ = writeln!(out, "{pad}{}", json_scalar(v));
        }
    }
}

fn json_scalar(v: &serde_json::Value) -> String {
    use serde_json::Value as J;
    match v {
        J::Null => "null".into(),
        J::Bool(b) => b.to_string(),
        J::Number(n) => n.to_string(),
        J::String(s) => scalar(s),
        J::Array(_) => "[]".into(),
        J::Object(_) => "{}".into(),
    }
}

impl Resolved {
    /// The resolved hostgroup as YAML (`kiln render`); with `explain`, where each item came from.
    pub fn to_yaml(&self, explain_on: bool) -> String {
        let ex = Explain {
            on: explain_on,
            uses: &self.layer_uses,
        };
        let mut o = String::new();
        let _ = writeln!(o, "hostgroup: {}", scalar(&self.hostgroup));
        let b = &self.base;
        let _ = writeln!(o, "base:");
        for (k, v) in [
            ("name", &b.name),
            ("os_id", &b.os_id),
            ("version_id", &b.version_id),
            ("arch", &b.arch),
            ("suite", &b.suite),
            ("variant", &b.variant),
        ] {
            let _ = writeln!(o, "  {k}: {}", scalar(v));
        }
        let _ = writeln!(o, "  include: {}", flow_list(&b.include));
        if !b.sources.is_empty() {
            let _ = writeln!(o, "  sources: {}", flow_list(&b.sources));
        }

        if self.layers.is_empty() {
            let _ = writeln!(o, "layers: []");
        } else {
            let _ = writeln!(o, "layers:");
            for l in &self.layers {
                let why = match (explain_on, self.layer_uses.get(l)) {
                    (true, Some(span)) => format!("  # used at {}", ex.origin(span)),
                    _ => String::new(),
                };
                let _ = writeln!(o, "  - {}{why}", scalar(l));
            }
        }

        match &self.vars {
            serde_json::Value::Object(m) if !m.is_empty() => {
                let _ = writeln!(o, "vars:");
                for (k, v) in m {
                    let mut one = serde_json::Map::new();
                    one.insert(k.clone(), v.clone());
                    let mut text = String::new();
                    json(&mut text, &serde_json::Value::Object(one), 2);
                    if let (true, Some(span)) = (explain_on, self.vars_spans.get(k)) {
                        // The comment goes on the key's line.
                        let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
                        let _ = writeln!(o, "{first}  # from {}", ex.origin(span));
                        o.push_str(rest);
                    } else {
                        o.push_str(&text);
                    }
                }
            }
            _ => {
                let _ = writeln!(o, "vars: {{}}");
            }
        }

        if let Some(d) = &self.dynamic {
            let why = match (explain_on, &self.dynamic_span) {
                (true, Some(span)) => format!("  # from {}", ex.origin(span)),
                _ => String::new(),
            };
            let _ = writeln!(o, "dynamic:{why}");
            if let Ok(v) = serde_json::to_value(d) {
                json(&mut o, &v, 2);
            }
        }

        let accounts: Vec<String> = self.system_accounts.iter().cloned().collect();
        let _ = writeln!(o, "system_accounts: {}", flow_list(&accounts));

        section(&mut o, "groups", self.groups.iter(), |name, g| {
            let mut e = Vec::new();
            if let Some(gid) = g.value.gid {
                e.push(("gid", gid.to_string()));
            }
            e.push(("system", g.value.system.to_string()));
            vec![format!("{}: {}{}", scalar(name), flow_map(&e), ex.item(g))]
        });

        section(&mut o, "users", self.users.iter(), |name, u| {
            let v = &u.value;
            let mut lines = vec![format!("{}:{}", scalar(name), ex.item(u))];
            if let Some(uid) = v.uid {
                lines.push(format!("  uid: {uid}"));
            }
            if let Some(g) = &v.group {
                lines.push(format!("  group: {}", scalar(g)));
            }
            lines.push(format!("  groups: {}", flow_list(&v.groups)));
            if let Some(h) = &v.home {
                lines.push(format!("  home: {}", scalar(h)));
            }
            if let Some(s) = &v.shell {
                lines.push(format!("  shell: {}", scalar(s)));
            }
            if let Some(c) = &v.comment {
                lines.push(format!("  comment: {}", scalar(c)));
            }
            lines.push(format!("  system: {}", v.system));
            lines.push(format!("  create_home: {}", v.create_home));
            lines.push(format!(
                "  authorized_keys: {}",
                flow_list(&v.authorized_keys)
            ));
            lines
        });

        section(&mut o, "packages", self.packages.iter(), |name, p| {
            let e: Vec<(&str, String)> = p
                .value
                .version
                .iter()
                .map(|v| ("version", scalar(v)))
                .collect();
            vec![format!("{}: {}{}", scalar(name), flow_map(&e), ex.item(p))]
        });

        section(
            &mut o,
            "directories",
            self.directories.iter(),
            |path, dsrc| {
                let d = &dsrc.value;
                let e = if d.absent {
                    vec![("state", "absent".to_string())]
                } else {
                    vec![
                        ("mode", mode(d.mode)),
                        ("owner", scalar(&d.owner)),
                        ("group", scalar(&d.group)),
                    ]
                };
                vec![format!(
                    "{}: {}{}",
                    scalar(path),
                    flow_map(&e),
                    ex.item(dsrc)
                )]
            },
        );

        section(&mut o, "files", self.files.iter(), |path, fsrc| {
            let f = &fsrc.value;
            let mut lines = vec![format!("{}:{}", scalar(path), ex.item(fsrc))];
            let from = f.from.as_ref().map(|p| scalar(&p.to_string_lossy()));
            match &f.source {
                FileSource::Bytes(bytes) => lines.extend(content(bytes)),
                // A file that cannot be read now was checked at load; its digest is in the
                // bundle. Only what fits is read.
                FileSource::Path(p) => match std::fs::metadata(p) {
                    Ok(m) if m.len() <= MAX_SHOWN as u64 => {
                        if let Ok(bytes) = std::fs::read(p) {
                            lines.extend(content(&bytes));
                        }
                    }
                    Ok(_) => {
                        if let Ok((sha, size)) = kiln_signing::sha256_file(p) {
                            lines.push(format!("  content: sha256:{sha} ({size} bytes)"));
                        }
                    }
                    Err(_) => {}
                },
                FileSource::Symlink(t) => lines.push(format!("  symlink: {}", scalar(t))),
                FileSource::Absent => lines.push("  state: absent".into()),
                FileSource::Dynamic { template } => lines.extend(content(template.as_bytes())),
            }
            if let Some(from) = from {
                lines.push(format!("  from: {from}"));
            }
            if f.template != TemplateKind::None {
                lines.push(format!("  template: {}", f.template.as_str()));
            }
            if let Some(reads) = self.template_reads.get(path) {
                let reads: Vec<String> = reads
                    .iter()
                    .map(|r| {
                        let (c, v) = super::dynamic::manifest_read(r, self.dynamic.as_ref());
                        match (c, v, r) {
                            (Some(k), _, _) => format!("consul {k}"),
                            (_, Some(v), _) => format!("vault {v}"),
                            (_, _, kiln_apply::template::Read::Var(p)) => {
                                format!("vars.{}", p.join("."))
                            }
                            (_, _, kiln_apply::template::Read::Fact(f)) => format!("host.{f}"),
                            _ => String::new(),
                        }
                    })
                    .collect();
                lines.push(format!("  reads: {}", flow_list(&reads)));
            }
            if !matches!(f.source, FileSource::Symlink(_) | FileSource::Absent) {
                lines.push(format!("  mode: {}", mode(f.mode)));
                lines.push(format!("  owner: {}", scalar(&f.owner)));
                lines.push(format!("  group: {}", scalar(&f.group)));
            }
            if !f.restart.is_empty() {
                lines.push(format!("  restart: {}", flow_list(&f.restart)));
            }
            if !f.reload.is_empty() {
                lines.push(format!("  reload: {}", flow_list(&f.reload)));
            }
            lines
        });

        let _ = writeln!(o, "units: {}", flow_list(&self.units));

        section(&mut o, "services", self.services.iter(), |name, s| {
            let e = vec![
                ("state", s.value.state.as_str().to_string()),
                ("enabled", s.value.enabled.to_string()),
            ];
            vec![format!("{}: {}{}", scalar(name), flow_map(&e), ex.item(s))]
        });

        if !self.checks.is_empty() {
            section(&mut o, "checks", self.checks.iter(), |name, c| {
                let v = &c.value;
                let probe = match &v.probe {
                    kiln_signing::Probe::Unit { unit } => vec![("unit", scalar(unit))],
                    kiln_signing::Probe::Tcp { address } => vec![("tcp", scalar(address))],
                    kiln_signing::Probe::Http { url, status } => {
                        vec![("http", scalar(url)), ("status", status.to_string())]
                    }
                    kiln_signing::Probe::Command { argv, timeout_secs } => vec![
                        ("run", flow_list(argv)),
                        ("timeout", format!("{timeout_secs}s")),
                    ],
                };
                let mut e = probe;
                e.push((
                    "deadline",
                    humantime::format_duration(v.deadline).to_string(),
                ));
                vec![format!("{}: {}{}", scalar(name), flow_map(&e), ex.item(c))]
            });
        }

        section(
            &mut o,
            "commands",
            self.commands.iter().map(|c| (&c.value.name, c)),
            |name, c| {
                let v = &c.value;
                let mut lines = vec![format!("{}:{}", scalar(name), ex.item(c))];
                lines.push(format!("  run: {}", flow_list(&v.argv)));
                lines.push(format!(
                    "  timeout: {}",
                    humantime::format_duration(v.timeout)
                ));
                if let Some(p) = &v.creates {
                    lines.push(format!("  creates: {}", scalar(p)));
                }
                lines
            },
        );
        o
    }
}

/// A section: `name: {}` when empty, else each item's lines indented by two.
fn section<'a, T: 'a>(
    o: &mut String,
    name: &str,
    items: impl Iterator<Item = (&'a String, &'a Sourced<T>)>,
    mut lines: impl FnMut(&str, &Sourced<T>) -> Vec<String>,
) {
    let mut body = String::new();
    for (k, v) in items {
        for line in lines(k, v) {
            if line.is_empty() {
                body.push('\n');
            } else {
                let _ = writeln!(body, "  {line}");
            }
        }
    }
    if body.is_empty() {
        let _ = writeln!(o, "{name}: {{}}");
    } else {
        let _ = writeln!(o, "{name}:");
        o.push_str(&body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_read_back_as_themselves() {
        assert_eq!(scalar("/etc/motd"), "/etc/motd");
        assert_eq!(scalar("12"), "\"12\"");
        assert_eq!(scalar("true"), "\"true\"");
        assert_eq!(scalar("null"), "\"null\"");
        assert_eq!(scalar(""), "\"\"");
        assert_eq!(scalar("a: b"), "\"a: b\"");
        assert_eq!(scalar("x\n\"y\"\u{1}"), "\"x\\n\\\"y\\\"\\x01\"");
        assert_eq!(scalar("1.22.1-9+deb12u1"), "1.22.1-9+deb12u1");
        assert_eq!(scalar("0644"), "\"0644\"");
        assert_eq!(content(b"12"), ["  content: \"12\""]);
        assert_eq!(content(b"hi"), ["  content: \"hi\""]);
        assert!(content(&[0xff, 0])[0].starts_with("  content: sha256:"));
        assert_eq!(content(b"a\n\tb\n"), ["  content: |", "    a", "    \tb"]);
        assert_eq!(content(b"a\n\nb"), ["  content: |-", "    a", "", "    b"]);
        assert_eq!(content(b"a\n\n"), ["  content: |+", "    a", ""]);
        assert_eq!(content(b"  a\nb\n"), ["  content: |2", "      a", "    b"]);
        assert!(content(b"x\r\ny\n")[0].starts_with("  content: sha256:"));
        // Each form reads back, through the YAML parser, as the very text.
        for text in [
            "a\n",
            "a\nb",
            "a\n\n",
            "a\n\n\n",
            "  indented\nx\n",
            "\nafter a blank\n",
            "tab\tin\n\tleading tab\n",
            "# not a comment\n- not a list\n",
            "key: value\n",
            "trailing spaces   \n   \nend\n",
            "ünïcode ✓\n",
        ] {
            let doc = format!("/x:\n{}\n", content(text.as_bytes()).join("\n"));
            let file = std::sync::Arc::from(std::path::Path::new("t.yaml"));
            let parsed = super::super::yaml::parse(&file, &doc);
            assert!(
                parsed.diags.is_empty(),
                "{text:?}: {:?}\n{doc}",
                parsed.diags
            );
            let root = parsed.root.unwrap();
            let got = root
                .get("/x")
                .and_then(|x| x.get("content"))
                .and_then(|c| c.as_str());
            assert_eq!(got, Some(text), "{doc}");
        }
        let big = "line\n".repeat(MAX_SHOWN / 5 + 1);
        assert!(content(big.as_bytes())[0].starts_with("  content: sha256:"));
    }
}
