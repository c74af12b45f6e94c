//! Merging sources, in order: default.yaml, each layer, the hostgroup file. Maps merge
//! deeply and the later source wins; scalars and lists are replaced. An item with
//! `state: absent` replaces the earlier definition entirely, and a later present item replaces
//! an absent one. In files and units, `content`, `from` and `symlink` are alternatives: a later
//! definition that sets one of them replaces the earlier one's source and template (and, for a
//! symlink, its mode, owner and group), so overriding a layer's file never mixes two sources.

use std::collections::HashMap;

use super::diag::{Sink, Span};
use super::items::{self, Kind};
use super::yaml::{Node, NodeKind};

/// One merged item, with every definition that contributed to it.
#[derive(Clone, Debug)]
pub struct Item {
    /// The key of the winning (last) definition.
    pub key: Node,
    pub value: Node,
    /// Key spans of the contributing definitions, in merge order; the last is `key.span`.
    pub defs: Vec<Span>,
}

/// The merge of every source of one hostgroup.
#[derive(Debug, Default)]
pub struct Merged {
    pub base: Option<Node>,
    pub vars: Option<Node>,
    /// The `dynamic:` section, merged like `vars` (maps deeply, lists replaced).
    pub dynamic: Option<Node>,
    pub system_accounts: Vec<Node>,
    /// Per [`Kind`], items in order of first definition.
    pub items: [Vec<Item>; Kind::ALL.len()],
    index: [HashMap<String, usize>; Kind::ALL.len()],
}

const SOURCE_KEYS: [&str; 3] = ["content", "from", "symlink"];

/// Merge `b` into `a`: maps deeply (later keys win), anything else replaced.
pub fn deep_merge(a: &mut Node, b: &Node) {
    match (&mut a.kind, &b.kind) {
        (NodeKind::Map(ae), NodeKind::Map(be)) => {
            for (bk, bv) in be {
                match ae.iter_mut().find(|(ak, _)| ak.as_str() == bk.as_str()) {
                    Some((ak, av)) => {
                        *ak = bk.clone();
                        deep_merge(av, bv);
                    }
                    None => ae.push((bk.clone(), bv.clone())),
                }
            }
            a.span = b.span.clone();
        }
        _ => *a = b.clone(),
    }
}

fn as_map_node(n: &Node) -> Node {
    if n.is_null() {
        Node::new(NodeKind::Map(Vec::new()), n.span.clone())
    } else {
        n.clone()
    }
}

fn remove_keys(n: &mut Node, keys: &[&str]) {
    if let NodeKind::Map(entries) = &mut n.kind {
        entries.retain(|(k, _)| !keys.contains(&k.key_str()));
    }
}

impl Merged {
    /// Merge one source (a map of sections) over what is there.
    pub fn add(&mut self, source: &Node) {
        let Some(entries) = source.as_map() else {
            return;
        };
        for (k, v) in entries {
            match k.key_str() {
                "base" if v.as_map().is_some() => match &mut self.base {
                    Some(b) => deep_merge(b, v),
                    None => self.base = Some(v.clone()),
                },
                "vars" if v.as_map().is_some() => match &mut self.vars {
                    Some(b) => deep_merge(b, v),
                    None => self.vars = Some(v.clone()),
                },
                "dynamic" if v.as_map().is_some() => match &mut self.dynamic {
                    Some(b) => deep_merge(b, v),
                    None => self.dynamic = Some(v.clone()),
                },
                // A set: every source adds to it.
                "system_accounts" => {
                    if let NodeKind::Seq(list) = &v.kind {
                        for item in list {
                            if item.as_str().is_some()
                                && !self
                                    .system_accounts
                                    .iter()
                                    .any(|s| s.as_str() == item.as_str())
                            {
                                self.system_accounts.push(item.clone());
                            }
                        }
                    }
                }
                key => {
                    let Some(kind) = Kind::from_key(key) else {
                        continue;
                    };
                    let Some(list) = v.as_map() else { continue };
                    for (ik, iv) in list {
                        if items::check_name(kind, ik, &mut Sink::default()) {
                            self.add_item(kind, ik, iv);
                        }
                    }
                }
            }
        }
    }

    fn add_item(&mut self, kind: Kind, key: &Node, value: &Node) {
        let i = kind.index();
        let value = as_map_node(value);
        let name = key.key_str().to_string();
        let Some(&at) = self.index[i].get(&name) else {
            self.index[i].insert(name, self.items[i].len());
            self.items[i].push(Item {
                key: key.clone(),
                value,
                defs: vec![key.span.clone()],
            });
            return;
        };
        let item = &mut self.items[i][at];
        let replace = items::is_absent(&value)
            || items::is_absent(&item.value)
            || value.as_map().is_none()
            || item.value.as_map().is_none();
        if replace {
            *item = Item {
                key: key.clone(),
                value,
                defs: vec![key.span.clone()],
            };
            return;
        }
        if matches!(kind, Kind::Files | Kind::Units)
            && SOURCE_KEYS.iter().any(|s| value.get(s).is_some())
        {
            remove_keys(&mut item.value, &["content", "from", "symlink", "template"]);
            if value.get("symlink").is_some() {
                remove_keys(&mut item.value, &["mode", "owner", "group"]);
            }
        }
        deep_merge(&mut item.value, &value);
        item.key = key.clone();
        item.defs.push(key.span.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::parse;
    use std::path::Path;
    use std::sync::Arc;

    fn doc(name: &str, text: &str) -> Node {
        parse(&Arc::from(Path::new(name)), text).root.unwrap()
    }

    fn merged(sources: &[(&str, &str)]) -> Merged {
        let mut m = Merged::default();
        for (name, text) in sources {
            m.add(&doc(name, text));
        }
        m
    }

    #[test]
    fn maps_merge_deeply_and_later_wins() {
        let m = merged(&[
            ("d.yaml", "vars: {a: {x: 1, y: [1, 2]}, b: keep}\n"),
            ("h.yaml", "vars: {a: {y: [3], z: true}}\n"),
        ]);
        let vars = m.vars.unwrap();
        let a = vars.get("a").unwrap();
        assert_eq!(a.get("x").unwrap().kind, NodeKind::Int(1));
        // Lists are replaced, not appended.
        let NodeKind::Seq(y) = &a.get("y").unwrap().kind else {
            panic!("y is not a list")
        };
        assert_eq!(
            y.iter().map(|n| n.kind.clone()).collect::<Vec<_>>(),
            [NodeKind::Int(3)]
        );
        assert_eq!(a.get("z").unwrap().kind, NodeKind::Bool(true));
        assert_eq!(vars.get("b").unwrap().as_str(), Some("keep"));
    }

    #[test]
    fn provenance_of_an_overridden_value_is_the_overriding_file() {
        let m = merged(&[
            (
                "hostgroups/default.yaml",
                "files:\n  /etc/motd:\n    content: hi\n    mode: \"0644\"\n",
            ),
            (
                "hostgroups/web.yaml",
                "files:\n  /etc/motd: {mode: \"0600\"}\n",
            ),
        ]);
        let item = &m.items[Kind::Files.index()][0];
        assert_eq!(item.key.span.to_string(), "hostgroups/web.yaml:2:3");
        assert_eq!(
            item.value.get("mode").unwrap().span.to_string(),
            "hostgroups/web.yaml:2:21"
        );
        assert_eq!(item.value.get("mode").unwrap().as_str(), Some("0600"));
        assert_eq!(
            item.value.get("content").unwrap().span.to_string(),
            "hostgroups/default.yaml:3:14"
        );
        assert_eq!(
            item.defs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ["hostgroups/default.yaml:2:3", "hostgroups/web.yaml:2:3"]
        );
    }

    #[test]
    fn absent_replaces_entirely_both_ways() {
        let m = merged(&[
            ("a.yaml", "packages: {nginx: {version: \"1.0\"}}\nusers: {deploy: {uid: 2000, shell: /bin/sh}}\n"),
            ("b.yaml", "packages: {nginx: {state: absent}}\nusers: {deploy: {state: absent}}\n"),
            ("c.yaml", "users: {deploy: {uid: 2001}}\n"),
        ]);
        let nginx = &m.items[Kind::Packages.index()][0];
        assert!(items::is_absent(&nginx.value));
        assert!(nginx.value.get("version").is_none());
        let deploy = &m.items[Kind::Users.index()][0];
        assert!(deploy.value.get("shell").is_none() && deploy.value.get("state").is_none());
        assert_eq!(deploy.value.get("uid").unwrap().kind, NodeKind::Int(2001));
        assert_eq!(deploy.defs.len(), 1);
    }

    #[test]
    fn a_later_source_replaces_the_earlier_source_of_a_file() {
        let m = merged(&[
            (
                "layers/httpd.yaml",
                "files: {/etc/a.conf: {from: a.conf, template: static, reload: [x.service]}}\n",
            ),
            (
                "hostgroups/web.yaml",
                "files: {/etc/a.conf: {content: \"x\\n\"}}\n",
            ),
        ]);
        let f = &m.items[Kind::Files.index()][0].value;
        assert!(f.get("from").is_none() && f.get("template").is_none());
        assert!(f.get("reload").is_some() && f.get("content").is_some());
    }

    #[test]
    fn commands_keep_the_position_of_their_first_definition() {
        let m = merged(&[
            ("a.yaml", "commands: {one: {run: a}, two: {run: b}}\n"),
            ("b.yaml", "commands: {three: {run: c}, one: {run: z}}\n"),
        ]);
        let names: Vec<_> = m.items[Kind::Commands.index()]
            .iter()
            .map(|i| i.key.key_str().to_string())
            .collect();
        assert_eq!(names, ["one", "two", "three"]);
    }

    #[test]
    fn system_accounts_accumulate() {
        let m = merged(&[
            ("a.yaml", "system_accounts: [_chrony]\n"),
            ("b.yaml", "system_accounts: [_chrony, postgres]\n"),
        ]);
        assert_eq!(
            m.system_accounts
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect::<Vec<_>>(),
            ["_chrony", "postgres"]
        );
    }
}
