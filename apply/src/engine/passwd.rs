//! The accounts a root has, as its `/etc/passwd` and `/etc/group` list them: read by the
//! accounts phases to decide what to add, and by every phase that resolves an owner or group
//! name to its number.

use std::io;

use crate::fsroot::Root;

/// /etc/passwd and /etc/group larger than this are refused rather than read.
pub(crate) const DB_LIMIT: u64 = 16 << 20;

/// A line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub comment: String,
    pub home: String,
    pub shell: String,
}

/// A line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The accounts of a root, as its files list them.
#[derive(Debug, Default, Clone)]
pub struct Accounts {
    pub users: Vec<PasswdEntry>,
    pub groups: Vec<GroupEntry>,
}

impl Accounts {
    /// Reads `/etc/passwd` and `/etc/group` of the root (missing files are empty).
    pub fn load(root: &Root) -> io::Result<Accounts> {
        let passwd = root.read_text("/etc/passwd", DB_LIMIT)?.unwrap_or_default();
        let group = root.read_text("/etc/group", DB_LIMIT)?.unwrap_or_default();
        Ok(Accounts {
            users: parse_passwd(&passwd),
            groups: parse_group(&group),
        })
    }

    pub fn user(&self, name: &str) -> Option<&PasswdEntry> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&GroupEntry> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// A uid for an owner field: a user name of the root, or a number.
    pub fn uid(&self, owner: &str) -> Option<u32> {
        self.user(owner).map(|u| u.uid).or_else(|| numeric(owner))
    }

    /// A gid for a group field: a group name of the root, or a number.
    pub fn gid(&self, group: &str) -> Option<u32> {
        self.group(group).map(|g| g.gid).or_else(|| numeric(group))
    }

    /// Supplementary groups `user` is listed in.
    pub fn memberships(&self, user: &str) -> Vec<&str> {
        self.groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == user))
            .map(|g| g.name.as_str())
            .collect()
    }
}

fn numeric(s: &str) -> Option<u32> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Parses passwd lines; malformed lines (and NIS `+` lines) are skipped, as libc does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() != 7 || f[0].is_empty() || f[0].starts_with(['+', '-']) {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                comment: f[4].to_string(),
                home: f[5].to_string(),
                shell: f[6].to_string(),
            })
        })
        .collect()
}

pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() != 4 || f[0].is_empty() || f[0].starts_with(['+', '-']) {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_and_group() {
        let p = parse_passwd("root:x:0:0:root:/root:/bin/bash\nbad line\n+nis::::::\nweb:x:1000:1000:Web,,,:/srv/web:/bin/sh\n");
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].comment, "Web,,,");
        let g = parse_group("adm:x:4:syslog,web\nweb:x:1000:\n");
        let a = Accounts {
            users: p,
            groups: g,
        };
        assert_eq!(a.memberships("web"), vec!["adm"]);
        assert_eq!(a.uid("web"), Some(1000));
        assert_eq!(a.uid("1234"), Some(1234));
        assert_eq!(a.uid("nobody"), None);
        assert_eq!(a.gid("adm"), Some(4));
    }
}
