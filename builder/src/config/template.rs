//! minijinja, set up the way Kiln renders every template: strict undefined (a typo is an
//! error, not an empty string), no HTML escaping, and the trailing newline kept (config files
//! end in one). Also the conversions between YAML nodes and template values.

use std::collections::BTreeMap;

use minijinja::value::ValueKind;
use minijinja::{Environment, Value};

use super::diag::Span;
use super::yaml::{Node, NodeKind, MAX_DEPTH};

/// The environment every static template and layer parameter is rendered in: the host's own
/// ([`kiln_apply::template::environment`], which dynamic templates are rendered in, plus the
/// Consul/Vault functions there), with debug info on.
pub fn environment() -> Environment<'static> {
    let mut env = kiln_apply::template::environment();
    // Debug info names the undefined variable in errors ("`params.nope` is undefined"); minijinja
    // turns it on only in debug builds, and operators run release builds.
    env.set_debug(true);
    env
}

/// minijinja's reason, without its own location (the caller says where).
pub use kiln_apply::template::reason;

/// A map value from pairs.
pub fn map_value<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::from(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<String, Value>>(),
    )
}

/// A YAML node as a template value.
pub fn to_value(node: &Node) -> Value {
    to_value_at(node, 0)
}

fn to_value_at(node: &Node, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::from(());
    }
    match &node.kind {
        NodeKind::Null => Value::from(()),
        NodeKind::Bool(b) => Value::from(*b),
        NodeKind::Int(i) => Value::from(*i),
        NodeKind::Float(f) => Value::from(*f),
        NodeKind::Str(s) => Value::from(s.as_str()),
        NodeKind::Seq(items) => Value::from(
            items
                .iter()
                .map(|n| to_value_at(n, depth + 1))
                .collect::<Vec<_>>(),
        ),
        NodeKind::Map(entries) => Value::from(
            entries
                .iter()
                .map(|(k, v)| (k.key_str().to_string(), to_value_at(v, depth + 1)))
                .collect::<BTreeMap<String, Value>>(),
        ),
    }
}

/// A template value back as a YAML node placed at `span`; `None` (with a reason) for values
/// YAML cannot hold (undefined, functions, bytes).
pub fn from_value(v: &Value, span: &Span) -> Result<Node, String> {
    from_value_at(v, span, 0)
}

fn from_value_at(v: &Value, span: &Span, depth: usize) -> Result<Node, String> {
    if depth > MAX_DEPTH {
        return Err(format!("value nested deeper than {MAX_DEPTH} levels"));
    }
    let kind = match v.kind() {
        ValueKind::None => NodeKind::Null,
        ValueKind::Bool => NodeKind::Bool(v.is_true()),
        ValueKind::Number => match v.as_i64() {
            Some(i) if v.is_integer() => NodeKind::Int(i),
            _ => match f64::try_from(v.clone()) {
                Ok(f) => NodeKind::Float(f),
                Err(_) => return Err("number out of range".into()),
            },
        },
        ValueKind::String => NodeKind::Str(v.as_str().unwrap_or_default().to_string()),
        ValueKind::Seq | ValueKind::Iterable => {
            let iter = v.try_iter().map_err(|e| reason(&e))?;
            let mut items = Vec::new();
            for item in iter {
                items.push(from_value_at(&item, span, depth + 1)?);
            }
            NodeKind::Seq(items)
        }
        ValueKind::Map => {
            let iter = v.try_iter().map_err(|e| reason(&e))?;
            let mut entries = Vec::new();
            for key in iter {
                let Some(k) = key.as_str() else {
                    return Err(format!("map key {key} is not a string"));
                };
                let val = v.get_item(&key).map_err(|e| reason(&e))?;
                entries.push((
                    Node::str(k, span.clone()),
                    from_value_at(&val, span, depth + 1)?,
                ));
            }
            NodeKind::Map(entries)
        }
        ValueKind::Undefined => return Err("undefined value".into()),
        other => return Err(format!("a {other} cannot be a configuration value")),
    };
    Ok(Node::new(kind, span.clone()))
}

/// Whether a string holds template syntax at all.
pub fn has_template_syntax(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// The expression inside a string that is exactly one `{{ ... }}`, if it is.
pub fn sole_expression(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") || inner.contains("{#")
    {
        return None;
    }
    let t = inner.trim();
    // `{{- x -}}` is whitespace control, not an expression of its own.
    if t.is_empty() || inner.starts_with(['-', '+']) || inner.ends_with(['-', '+']) {
        return None;
    }
    Some(t)
}

/// Render `s` with `ctx`. A string that is exactly one expression keeps the expression's type.
pub fn expand(
    env: &Environment<'static>,
    s: &str,
    ctx: &Value,
    span: &Span,
) -> Result<Node, String> {
    if let Some(expr) = sole_expression(s) {
        let compiled = env.compile_expression(expr).map_err(|e| reason(&e))?;
        // An expression evaluates to undefined without complaint; rendering it says which
        // name is undefined.
        let value = compiled.eval(ctx.clone()).map_err(|e| reason(&e))?;
        if value.is_undefined() {
            return Err(match env.render_str(s, ctx.clone()) {
                Err(e) => reason(&e),
                Ok(_) => "undefined value".into(),
            });
        }
        return from_value(&value, span);
    }
    let text = env.render_str(s, ctx.clone()).map_err(|e| reason(&e))?;
    Ok(Node::str(text, span.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    fn span() -> Span {
        Span::new(Arc::from(Path::new("l.yaml")), 1, 1)
    }

    #[test]
    fn sole_expression_keeps_type() {
        let env = environment();
        let ctx = map_value([(
            "params",
            map_value([("on", Value::from(true)), ("n", Value::from(3))]),
        )]);
        assert_eq!(
            expand(&env, "{{ params.on }}", &ctx, &span()).unwrap().kind,
            NodeKind::Bool(true)
        );
        assert_eq!(
            expand(&env, "{{params.n}}", &ctx, &span()).unwrap().kind,
            NodeKind::Int(3)
        );
        assert_eq!(
            expand(&env, "x{{ params.n }}", &ctx, &span()).unwrap().kind,
            NodeKind::Str("x3".into())
        );
        assert_eq!(
            expand(&env, "{{ params.n }}{{ params.n }}", &ctx, &span())
                .unwrap()
                .kind,
            NodeKind::Str("33".into())
        );
        assert!(expand(&env, "{{ params.nope }}", &ctx, &span())
            .unwrap_err()
            .contains("undefined"));
        assert!(expand(&env, "a {{ params.nope }}", &ctx, &span())
            .unwrap_err()
            .contains("undefined"));
    }

    #[test]
    fn trailing_newline_is_kept() {
        let env = environment();
        assert_eq!(
            env.render_str("a <b>{{ x }}\n", map_value([("x", Value::from("&"))]))
                .unwrap(),
            "a <b>&\n"
        );
    }
}
