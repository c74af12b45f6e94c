//! A YAML reader that keeps where every value came from: saphyr-parser's events turned into a
//! tree of [`Node`]s, each with its `file:line:column`. It reads the YAML 1.2 core schema and
//! refuses what Kiln does not need and what makes files hard to read or dangerous to load:
//! anchors and aliases (no alias bombs), tags, several documents, non-string or duplicate keys.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle};

use super::diag::{Diagnostic, Span};

/// Deeper nesting than this is refused (also bounds every recursive walk of a tree).
pub const MAX_DEPTH: usize = 64;

/// A YAML value and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
    /// The source text of a plain scalar read as null, a bool or a number (for hints such as
    /// `quote it: mode: "0644"`).
    pub raw: Option<Box<str>>,
}

/// The value of a [`Node`].
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys are always `Str` nodes, unique, in file order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn new(kind: NodeKind, span: Span) -> Node {
        Node {
            kind,
            span,
            raw: None,
        }
    }

    pub fn str(s: impl Into<String>, span: Span) -> Node {
        Node::new(NodeKind::Str(s.into()), span)
    }

    /// "a map", "a list", ...: for "expected X, found Y".
    pub fn describe(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "an empty value",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) => "an integer",
            NodeKind::Float(_) => "a number",
            NodeKind::Str(_) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a map",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.kind, NodeKind::Null)
    }

    /// The key's text (keys are always strings).
    pub fn key_str(&self) -> &str {
        self.as_str().unwrap_or("")
    }

    /// The value under `key` in a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.get_entry(key).map(|(_, v)| v)
    }

    /// The key node and value under `key` in a map.
    pub fn get_entry(&self, key: &str) -> Option<(&Node, &Node)> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, v)| (k, v))
    }

    /// The text the value was written as, for messages: raw scalars as written, strings as
    /// they are, collections as "a list"/"a map".
    pub fn text(&self) -> String {
        if let Some(raw) = &self.raw {
            return raw.to_string();
        }
        match &self.kind {
            NodeKind::Null => String::new(),
            NodeKind::Bool(b) => b.to_string(),
            NodeKind::Int(i) => i.to_string(),
            NodeKind::Float(f) => f.to_string(),
            NodeKind::Str(s) => s.clone(),
            NodeKind::Seq(_) | NodeKind::Map(_) => self.describe().to_string(),
        }
    }
}

/// The outcome of reading one file.
#[derive(Debug)]
pub struct Parsed {
    /// The document, `None` for an empty file or when the syntax was broken.
    pub root: Option<Node>,
    pub diags: Vec<Diagnostic>,
    /// The file could not be read as YAML at all: checks that depend on it are skipped.
    pub failed: bool,
}

enum Frame {
    Seq {
        span: Span,
        items: Vec<Node>,
    },
    Map {
        span: Span,
        entries: Vec<(Node, Node)>,
        key: PendingKey,
        seen: HashMap<String, usize>,
    },
}

enum PendingKey {
    None,
    Key(Node),
    /// The key was refused (reported): drop the value.
    Skip,
}

fn span_at(file: &Arc<Path>, m: &saphyr_parser::Marker) -> Span {
    Span::new(file.clone(), m.line().max(1), m.col() + 1)
}

/// Read `text` (the contents of `file`, relative to the configuration root).
pub fn parse(file: &Arc<Path>, text: &str) -> Parsed {
    // The parser is not known to panic (see the fuzz test), but a configuration error must
    // never become a crash: a panic inside it is reported as a problem of the file.
    match std::panic::catch_unwind(|| parse_events(file, text)) {
        Ok(parsed) => parsed,
        Err(_) => Parsed {
            root: None,
            diags: vec![Diagnostic::new(
                Span::file_start(file.clone()),
                "the YAML parser failed on this file",
            )],
            failed: true,
        },
    }
}

fn parse_events(file: &Arc<Path>, text: &str) -> Parsed {
    let mut diags = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    let mut failed = false;
    let mut parser = Parser::new_from_str(text);

    loop {
        let (event, span) = match parser.next_event() {
            None => break,
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                let span = span_at(file, e.marker());
                let hint = if e.info().contains("tabs") {
                    "; indent with spaces"
                } else {
                    ""
                };
                diags.push(Diagnostic::new(
                    span,
                    format!("YAML syntax error: {}{hint}", e.info()),
                ));
                failed = true;
                break;
            }
        };
        let here = span_at(file, &span.start);
        let node = match event {
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => continue,
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    diags.push(Diagnostic::new(
                        here,
                        "multiple YAML documents in one file are not supported",
                    ));
                    failed = true;
                    break;
                }
                continue;
            }
            Event::Alias(_) => {
                diags.push(Diagnostic::new(
                    here.clone(),
                    "anchors and aliases are not supported",
                ));
                Node::new(NodeKind::Null, here)
            }
            Event::Scalar(value, style, anchor, tag) => {
                if anchor != 0 {
                    diags.push(Diagnostic::new(
                        here.clone(),
                        "anchors and aliases are not supported",
                    ));
                }
                if let Some(tag) = tag {
                    diags.push(Diagnostic::new(
                        here.clone(),
                        format!("tags are not supported (found {})", tag_text(&tag)),
                    ));
                }
                scalar(&value, style, here)
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                if anchor != 0 {
                    diags.push(Diagnostic::new(
                        here.clone(),
                        "anchors and aliases are not supported",
                    ));
                }
                if let Some(tag) = tag {
                    diags.push(Diagnostic::new(
                        here.clone(),
                        format!("tags are not supported (found {})", tag_text(tag)),
                    ));
                }
                if stack.len() >= MAX_DEPTH {
                    diags.push(Diagnostic::new(
                        here,
                        format!("nested deeper than {MAX_DEPTH} levels"),
                    ));
                    failed = true;
                    break;
                }
                if matches!(event, Event::SequenceStart(..)) {
                    stack.push(Frame::Seq {
                        span: here,
                        items: Vec::new(),
                    });
                } else {
                    stack.push(Frame::Map {
                        span: here,
                        entries: Vec::new(),
                        key: PendingKey::None,
                        seen: HashMap::new(),
                    });
                }
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq { span, items }) => Node::new(NodeKind::Seq(items), span),
                _ => continue,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map { span, entries, .. }) => Node::new(NodeKind::Map(entries), span),
                _ => continue,
            },
        };
        push(&mut stack, &mut root, node, &mut diags);
    }
    if failed {
        root = None;
    }
    Parsed {
        root,
        diags,
        failed,
    }
}

fn tag_text(tag: &saphyr_parser::Tag) -> String {
    if tag.is_yaml_core_schema() {
        format!("!!{}", tag.suffix)
    } else {
        tag.to_string()
    }
}

/// Attach a finished node to the collection being read, or make it the document.
fn push(stack: &mut [Frame], root: &mut Option<Node>, node: Node, diags: &mut Vec<Diagnostic>) {
    let Some(top) = stack.last_mut() else {
        *root = Some(node);
        return;
    };
    match top {
        Frame::Seq { items, .. } => items.push(node),
        Frame::Map {
            entries, key, seen, ..
        } => match std::mem::replace(key, PendingKey::None) {
            PendingKey::Key(k) => entries.push((k, node)),
            PendingKey::Skip => {}
            PendingKey::None => {
                let NodeKind::Str(name) = &node.kind else {
                    let what = match node.kind {
                        NodeKind::Seq(_) | NodeKind::Map(_) => node.describe().to_string(),
                        _ => format!("{} ({})", node.describe(), node.text()),
                    };
                    diags.push(Diagnostic::new(
                        node.span.clone(),
                        format!("mapping keys must be strings, found {what}; quote it"),
                    ));
                    *key = PendingKey::Skip;
                    return;
                };
                if let Some(first) = seen.get(name) {
                    diags.push(Diagnostic::new(
                        node.span.clone(),
                        format!("duplicate key \"{name}\" (first defined at line {first})"),
                    ));
                    *key = PendingKey::Skip;
                    return;
                }
                seen.insert(name.clone(), node.span.line);
                *key = PendingKey::Key(node);
            }
        },
    }
}

/// A scalar read with the YAML 1.2 core schema: quoted and block scalars are strings; plain
/// scalars may be null, booleans, integers or floats.
fn scalar(value: &str, style: ScalarStyle, span: Span) -> Node {
    if style != ScalarStyle::Plain {
        return Node::str(value, span);
    }
    let kind = match value {
        "" | "~" | "null" | "Null" | "NULL" => NodeKind::Null,
        "true" | "True" | "TRUE" => NodeKind::Bool(true),
        "false" | "False" | "FALSE" => NodeKind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => NodeKind::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => NodeKind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => NodeKind::Float(f64::NAN),
        _ => match core_number(value) {
            Some(kind) => kind,
            None => return Node::str(value, span),
        },
    };
    Node {
        kind,
        span,
        raw: Some(value.into()),
    }
}

/// Integers (decimal, 0o octal, 0x hex) and floats of the core schema. Integers too large for
/// i64 saturate: they are still integers, and every range check refuses them.
fn core_number(v: &str) -> Option<NodeKind> {
    let b = v.as_bytes();
    let digits = |s: &[u8], ok: fn(&u8) -> bool| !s.is_empty() && s.iter().all(ok);
    if let Some(hex) = v.strip_prefix("0x") {
        if digits(hex.as_bytes(), u8::is_ascii_hexdigit) {
            return Some(NodeKind::Int(
                i64::from_str_radix(hex, 16).unwrap_or(i64::MAX),
            ));
        }
        return None;
    }
    if let Some(oct) = v.strip_prefix("0o") {
        if digits(oct.as_bytes(), |c| (b'0'..=b'7').contains(c)) {
            return Some(NodeKind::Int(
                i64::from_str_radix(oct, 8).unwrap_or(i64::MAX),
            ));
        }
        return None;
    }
    let (neg, rest) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    if digits(rest, u8::is_ascii_digit) {
        let sat = if neg { i64::MIN } else { i64::MAX };
        return Some(NodeKind::Int(v.parse::<i64>().unwrap_or(sat)));
    }
    // [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let mut i = 0;
    let int_digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    i += int_digits;
    let mut frac_digits = 0;
    if rest.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = rest[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        i += frac_digits;
    }
    if int_digits == 0 && frac_digits == 0 {
        return None;
    }
    if matches!(rest.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(rest.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let exp = rest[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exp == 0 {
            return None;
        }
        i += exp;
    }
    if i != rest.len() {
        return None;
    }
    v.parse::<f64>().ok().map(NodeKind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Parsed {
        parse(&Arc::from(Path::new("t.yaml")), text)
    }

    fn msgs(text: &str) -> Vec<String> {
        p(text).diags.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn spans_are_one_based() {
        let r = p("a:\n  b: 1\n  c: [x, \"y\"]\n").root.unwrap();
        let (k, v) = r.get_entry("a").unwrap();
        assert_eq!((k.span.line, k.span.column), (1, 1));
        let (bk, bv) = v.get_entry("b").unwrap();
        assert_eq!((bk.span.line, bk.span.column), (2, 3));
        assert_eq!((bv.span.line, bv.span.column), (2, 6));
        assert_eq!(bv.kind, NodeKind::Int(1));
        let c = v.get("c").unwrap();
        eprintln!("{:?} {:?}", v.span, c.span);
        let NodeKind::Seq(items) = &c.kind else {
            panic!()
        };
        assert_eq!((items[1].span.line, items[1].span.column), (3, 10));
        assert_eq!(items[1].kind, NodeKind::Str("y".into()));
    }

    #[test]
    fn core_schema() {
        let r = p("a: 0644\nb: '0644'\nc: true\nd: ~\ne: 1.5\nf: 0x1F\ng: 0o17\nh: yes\ni: 1e3\nj: .5\nk: 1.2.3\nl: -3\n").root.unwrap();
        assert_eq!(r.get("a").unwrap().kind, NodeKind::Int(644));
        assert_eq!(r.get("a").unwrap().text(), "0644");
        assert_eq!(r.get("b").unwrap().kind, NodeKind::Str("0644".into()));
        assert_eq!(r.get("c").unwrap().kind, NodeKind::Bool(true));
        assert_eq!(r.get("d").unwrap().kind, NodeKind::Null);
        assert_eq!(r.get("e").unwrap().kind, NodeKind::Float(1.5));
        assert_eq!(r.get("f").unwrap().kind, NodeKind::Int(31));
        assert_eq!(r.get("g").unwrap().kind, NodeKind::Int(15));
        assert_eq!(r.get("h").unwrap().kind, NodeKind::Str("yes".into()));
        assert_eq!(r.get("i").unwrap().kind, NodeKind::Float(1000.0));
        assert_eq!(r.get("j").unwrap().kind, NodeKind::Float(0.5));
        assert_eq!(r.get("k").unwrap().kind, NodeKind::Str("1.2.3".into()));
        assert_eq!(r.get("l").unwrap().kind, NodeKind::Int(-3));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            msgs("a: 1\nb: 2\na: 3\n"),
            ["t.yaml:3:1: duplicate key \"a\" (first defined at line 1)"]
        );
        assert_eq!(
            msgs("a: &x 1\nb: *x\n"),
            [
                "t.yaml:1:4: anchors and aliases are not supported",
                "t.yaml:2:4: anchors and aliases are not supported"
            ]
        );
        assert_eq!(
            msgs("a: !!str 1\n"),
            ["t.yaml:1:4: tags are not supported (found !!str)"]
        );
        assert_eq!(
            msgs("a: 1\n---\nb: 2\n"),
            ["t.yaml:2:1: multiple YAML documents in one file are not supported"]
        );
        assert_eq!(
            msgs("1: x\n"),
            ["t.yaml:1:1: mapping keys must be strings, found an integer (1); quote it"]
        );
        assert_eq!(
            msgs("a:\n\tb: 1\n"),
            ["t.yaml:2:2: YAML syntax error: tabs disallowed within this context (block indentation); indent with spaces"]
        );
        assert_eq!(
            msgs("a: [1, 2\n"),
            ["t.yaml:2:1: YAML syntax error: while parsing a flow sequence, expected ',' or ']'"]
        );
        assert!(msgs("---\na: 1\n...\n").is_empty());
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let text = "[".repeat(100_000);
        let r = p(&text);
        assert!(r.failed);
        assert_eq!(r.diags.len(), 1, "{:?}", r.diags);
    }

    #[test]
    fn empty_file_is_no_document() {
        let r = p("");
        assert!(r.root.is_none() && r.diags.is_empty());
        let r = p("# only a comment\n");
        assert!(r.root.is_none() && r.diags.is_empty());
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;

    /// Random YAML-ish text never panics the reader (a regression net for parser edge cases).
    #[test]
    fn random_input_never_panics() {
        let alphabet: &[&str] = &[
            "a",
            "b:",
            " ",
            "  ",
            "\n",
            "\t",
            "-",
            "- ",
            ":",
            ": ",
            "[",
            "]",
            "{",
            "}",
            ",",
            "\"",
            "'",
            "&x",
            "*x",
            "!!str ",
            "!t ",
            "|",
            ">",
            "#",
            "---",
            "...",
            "?",
            "%YAML 1.2",
            "0644",
            "~",
            "null",
            "1e3",
            "\\",
            "é",
            "\u{feff}",
            "\r",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let file: Arc<Path> = Arc::from(Path::new("f.yaml"));
        for _ in 0..20_000 {
            let mut s = String::new();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 58) as usize;
            for _ in 0..len {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push_str(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            let _ = parse(&file, &s);
        }
    }
}
