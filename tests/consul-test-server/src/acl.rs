//! A small model of Consul's ACL system: tokens with `key` / `key_prefix` rules
//! (read | write | list | deny), plus one policy each for sessions and services.
//!
//! Rule evaluation follows Consul's `acl/policy_authorizer.go`: an exact `key` rule wins
//! for that key, otherwise the longest matching `key_prefix` rule, otherwise the
//! default policy. `list` grants read (Consul's `enforce`). Recursive deletes need
//! write on the prefix and on every rule below it (`KeyWritePrefix`). With
//! `enable_key_list_policy` (Consul's `acl.enable_key_list_policy`), `?recurse` and `?keys`
//! reads also need `list` (or `write`) on the prefix they name (`KeyList`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Consul's well-known accessor ID of the anonymous token.
pub const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";

/// An access level in a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Read,
    Write,
    List,
    Deny,
}

/// The default policy (`acl.default_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    Allow,
    #[default]
    Deny,
}

impl DefaultPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::Allow => "allow",
            DefaultPolicy::Deny => "deny",
        }
    }
}

/// The rules of one token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// `key_prefix "<prefix>" { policy = ... }` rules.
    #[serde(default)]
    pub key_prefix: BTreeMap<String, Policy>,
    /// `key "<key>" { policy = ... }` (exact match) rules.
    #[serde(default)]
    pub key: BTreeMap<String, Policy>,
    /// `session_prefix "" { policy = ... }`: applies to every node's sessions.
    #[serde(default)]
    pub session: Option<Policy>,
    /// `service_prefix "" { policy = ... }`: applies to every service.
    #[serde(default)]
    pub service: Option<Policy>,
}

/// One client token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// The secret the client sends.
    pub secret: String,
    /// The public accessor ID (shown in "Permission denied" messages); random if absent.
    #[serde(default)]
    pub accessor: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(flatten)]
    pub rules: Rules,
}

/// The ACL configuration (`--acl FILE`, or [`crate::Config::acl`]).
///
/// ```json
/// { "default_policy": "deny", "management_token": "root",
///   "anonymous": { "key_prefix": { "public/": "read" } },
///   "tokens": [ { "secret": "s1", "key_prefix": { "kiln/": "read", "kiln/nodes/": "write" },
///                 "session": "write" } ] }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    #[serde(default)]
    pub default_policy: DefaultPolicy,
    /// Secret of a management token (everything allowed).
    pub management_token: String,
    /// Rules of the anonymous token (used when a request carries no token).
    #[serde(default)]
    pub anonymous: Rules,
    #[serde(default)]
    pub tokens: Vec<Token>,
    /// Consul's `acl.enable_key_list_policy`: recursive reads and key listings need `list`
    /// on their prefix (a `read` rule is not enough), else 403. Off by default, as in Consul.
    #[serde(default)]
    pub enable_key_list_policy: bool,
}

impl AclConfig {
    /// A configuration with only a management token and the given default policy.
    pub fn new(management_token: &str, default_policy: DefaultPolicy) -> AclConfig {
        AclConfig {
            default_policy,
            management_token: management_token.to_string(),
            anonymous: Rules::default(),
            tokens: Vec::new(),
            enable_key_list_policy: false,
        }
    }

    /// Turns `acl.enable_key_list_policy` on or off.
    pub fn with_key_list_policy(mut self, on: bool) -> AclConfig {
        self.enable_key_list_policy = on;
        self
    }

    /// Adds a token with the given `key_prefix` rules.
    pub fn with_token(mut self, secret: &str, key_prefix: &[(&str, Policy)]) -> AclConfig {
        self.tokens.push(Token {
            secret: secret.to_string(),
            accessor: None,
            description: String::new(),
            rules: Rules {
                key_prefix: key_prefix
                    .iter()
                    .map(|(k, p)| (k.to_string(), *p))
                    .collect(),
                ..Rules::default()
            },
        });
        self
    }

    /// Parses the JSON form; fills in missing accessor IDs.
    pub fn from_json(text: &str) -> Result<AclConfig, String> {
        let mut c: AclConfig =
            serde_json::from_str(text).map_err(|e| format!("ACL config: {e}"))?;
        c.normalize()?;
        Ok(c)
    }

    pub(crate) fn normalize(&mut self) -> Result<(), String> {
        if self.management_token.is_empty() {
            return Err("ACL config: management_token must not be empty".into());
        }
        for t in &mut self.tokens {
            if t.secret.is_empty() {
                return Err("ACL config: a token has an empty secret".into());
            }
            if t.accessor.is_none() {
                t.accessor = Some(crate::util::uuid4());
            }
        }
        Ok(())
    }
}

/// What a resolved token may do.
#[derive(Clone, Debug)]
pub enum Authz {
    /// ACLs are disabled: everything is allowed.
    Disabled,
    Management {
        accessor: String,
    },
    Rules {
        accessor: String,
        anonymous: bool,
        rules: Rules,
        default: DefaultPolicy,
    },
}

/// Why a token resolution failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclError {
    /// Consul's `acl.ErrNotFound`.
    NotFound,
}

/// A denied permission, formatted like Consul's `acl.PermissionDeniedError`.
#[derive(Debug, Clone)]
pub struct Denied {
    pub accessor: String,
    pub anonymous: bool,
    pub resource: &'static str,
    pub level: &'static str,
    pub name: String,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permission denied: ")?;
        if self.anonymous {
            write!(f, "anonymous token")?;
        } else {
            write!(f, "token with AccessorID '{}'", self.accessor)?;
        }
        write!(f, " lacks permission '{}:{}'", self.resource, self.level)?;
        if !self.name.is_empty() {
            write!(f, " on {}", crate::util::go_quote(&self.name))?;
        }
        Ok(())
    }
}

/// Resolves a request's token (already chosen by precedence; "" means none).
pub fn resolve(config: Option<&AclConfig>, secret: &str) -> Result<Authz, AclError> {
    let Some(c) = config else {
        return Ok(Authz::Disabled);
    };
    if secret.is_empty() {
        return Ok(Authz::Rules {
            accessor: ANONYMOUS_ACCESSOR.to_string(),
            anonymous: true,
            rules: c.anonymous.clone(),
            default: c.default_policy,
        });
    }
    if secret == c.management_token {
        return Ok(Authz::Management {
            accessor: accessor_for(&c.management_token),
        });
    }
    match c.tokens.iter().find(|t| t.secret == secret) {
        Some(t) => Ok(Authz::Rules {
            accessor: t
                .accessor
                .clone()
                .unwrap_or_else(|| accessor_for(&t.secret)),
            anonymous: false,
            rules: t.rules.clone(),
            default: c.default_policy,
        }),
        None => Err(AclError::NotFound),
    }
}

/// A stable accessor for a secret that has none configured.
fn accessor_for(secret: &str) -> String {
    // FNV-1a, spread over 16 bytes: stable across runs, not a secret.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in secret.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    let h2 = h.rotate_left(29) ^ 0x9e3779b97f4a7c15;
    let x = format!("{h:016x}{h2:016x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &x[0..8],
        &x[8..12],
        &x[13..16],
        &x[17..20],
        &x[20..32]
    )
}

fn allows_read(p: Policy) -> bool {
    matches!(p, Policy::Read | Policy::Write | Policy::List)
}

impl Authz {
    pub fn is_anonymous(&self) -> bool {
        matches!(
            self,
            Authz::Rules {
                anonymous: true,
                ..
            }
        )
    }

    fn denied(&self, resource: &'static str, level: &'static str, name: &str) -> Denied {
        let (accessor, anonymous) = match self {
            Authz::Disabled => (String::new(), false),
            Authz::Management { accessor } => (accessor.clone(), false),
            Authz::Rules {
                accessor,
                anonymous,
                ..
            } => (accessor.clone(), *anonymous),
        };
        Denied {
            accessor,
            anonymous,
            resource,
            level,
            name: name.to_string(),
        }
    }

    /// The rule that applies to `key`: an exact `key` rule, else the longest `key_prefix`.
    fn key_rule(rules: &Rules, key: &str) -> Option<Policy> {
        if let Some(p) = rules.key.get(key) {
            return Some(*p);
        }
        rules
            .key_prefix
            .iter()
            .filter(|(pfx, _)| key.starts_with(pfx.as_str()))
            .max_by_key(|(pfx, _)| pfx.len())
            .map(|(_, p)| *p)
    }

    pub fn key_read(&self, key: &str) -> bool {
        match self {
            Authz::Disabled | Authz::Management { .. } => true,
            Authz::Rules { rules, default, .. } => match Self::key_rule(rules, key) {
                Some(p) => allows_read(p),
                None => *default == DefaultPolicy::Allow,
            },
        }
    }

    pub fn key_write(&self, key: &str) -> bool {
        match self {
            Authz::Disabled | Authz::Management { .. } => true,
            Authz::Rules { rules, default, .. } => match Self::key_rule(rules, key) {
                Some(p) => p == Policy::Write,
                None => *default == DefaultPolicy::Allow,
            },
        }
    }

    /// Consul's `KeyList`: may the token list the keys under `prefix`? The rule that applies
    /// to the prefix itself decides: `list` and `write` allow it, `read` and `deny` do not.
    pub fn key_list(&self, prefix: &str) -> bool {
        match self {
            Authz::Disabled | Authz::Management { .. } => true,
            Authz::Rules { rules, default, .. } => match Self::key_rule(rules, prefix) {
                Some(p) => matches!(p, Policy::List | Policy::Write),
                None => *default == DefaultPolicy::Allow,
            },
        }
    }

    /// Consul's `KeyWritePrefix`: write on the prefix and on every rule below it.
    pub fn key_write_prefix(&self, prefix: &str) -> bool {
        match self {
            Authz::Disabled | Authz::Management { .. } => true,
            Authz::Rules { rules, default, .. } => {
                let parent = rules
                    .key_prefix
                    .iter()
                    .filter(|(pfx, _)| prefix.starts_with(pfx.as_str()))
                    .max_by_key(|(pfx, _)| pfx.len())
                    .map(|(_, p)| *p);
                if let Some(p) = parent {
                    if p != Policy::Write {
                        return false;
                    }
                }
                let below_denies = rules
                    .key_prefix
                    .iter()
                    .chain(rules.key.iter())
                    .any(|(k, p)| k.starts_with(prefix) && *p != Policy::Write);
                if below_denies {
                    return false;
                }
                match parent {
                    Some(_) => true,
                    None => *default == DefaultPolicy::Allow,
                }
            }
        }
    }

    fn simple(&self, pick: fn(&Rules) -> Option<Policy>, write: bool) -> bool {
        match self {
            Authz::Disabled | Authz::Management { .. } => true,
            Authz::Rules { rules, default, .. } => match pick(rules) {
                Some(p) if write => p == Policy::Write,
                Some(p) => allows_read(p),
                None => *default == DefaultPolicy::Allow,
            },
        }
    }

    pub fn session_write(&self) -> bool {
        self.simple(|r| r.session, true)
    }
    pub fn session_read(&self) -> bool {
        self.simple(|r| r.session, false)
    }
    pub fn service_write(&self) -> bool {
        self.simple(|r| r.service, true)
    }

    pub fn deny_key(&self, level: &'static str, key: &str) -> Denied {
        self.denied("key", level, key)
    }
    pub fn deny_session(&self, level: &'static str, node: &str) -> Denied {
        self.denied("session", level, node)
    }
    pub fn deny_service(&self, level: &'static str, name: &str) -> Denied {
        self.denied("service", level, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_and_exact() {
        let c = AclConfig::from_json(
            r#"{"management_token":"root","tokens":[{"secret":"t",
                "key_prefix":{"":"read","a/":"write","a/b/":"deny"},"key":{"a/b/c":"read"}}]}"#,
        )
        .unwrap();
        let a = resolve(Some(&c), "t").unwrap();
        assert!(a.key_read("x"));
        assert!(!a.key_write("x"));
        assert!(a.key_write("a/x"));
        assert!(!a.key_read("a/b/x"));
        assert!(a.key_read("a/b/c"));
        assert!(!a.key_write("a/b/c"));
        assert!(!a.key_write_prefix("a/"));
        assert!(a.key_write_prefix("a/c"));
        assert!(matches!(resolve(Some(&c), "nope"), Err(AclError::NotFound)));
        let anon = resolve(Some(&c), "").unwrap();
        assert!(anon.is_anonymous());
        assert!(!anon.key_read("x"));
        assert!(resolve(Some(&c), "root").unwrap().key_write_prefix(""));
    }

    #[test]
    fn list_needs_a_list_or_write_rule_on_the_prefix() {
        let c = AclConfig::from_json(
            r#"{"management_token":"root","enable_key_list_policy":true,"tokens":[{"secret":"t",
                "key_prefix":{"a/":"read","a/l/":"list","a/w/":"write","a/d/":"deny"}}]}"#,
        )
        .unwrap();
        assert!(c.enable_key_list_policy);
        let a = resolve(Some(&c), "t").unwrap();
        assert!(!a.key_list("a/"));
        assert!(a.key_list("a/l/") && a.key_list("a/l/x/"));
        assert!(a.key_list("a/w/"));
        assert!(!a.key_list("a/d/"));
        assert!(!a.key_list("b/"), "default deny");
        // `list` grants read too.
        assert!(a.key_read("a/l/k") && !a.key_write("a/l/k"));
        assert!(resolve(Some(&c), "root").unwrap().key_list(""));
    }

    #[test]
    fn denied_message() {
        let c = AclConfig::new("root", DefaultPolicy::Deny);
        let anon = resolve(Some(&c), "").unwrap();
        assert_eq!(
            anon.deny_key("read", "a/b").to_string(),
            "Permission denied: anonymous token lacks permission 'key:read' on \"a/b\""
        );
    }
}
