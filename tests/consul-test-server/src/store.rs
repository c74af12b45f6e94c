//! The state store: KV entries, tombstones, sessions and the raft-like index.
//!
//! Semantics follow Consul's `agent/consul/state/kvs.go`, `session.go` and `txn.go`:
//! one global index, taken by every write that changes something; a write that
//! changes nothing (identical value, failed check-and-set) leaves every index alone.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::util::go_quote;

/// One KV entry (Consul's `structs.DirEntry`). An empty `value` is `null` on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Entry {
    pub key: String,
    pub flags: u64,
    pub value: Vec<u8>,
    pub session: Option<String>,
    pub lock_index: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Entry {
    /// `DirEntry.Equal`: the fields a write compares to decide it changes nothing.
    fn same_content(&self, o: &Entry) -> bool {
        self.lock_index == o.lock_index
            && self.key == o.key
            && self.flags == o.flags
            && self.value == o.value
            && self.session == o.session
    }

    pub fn new(key: &str, value: &[u8], flags: u64) -> Entry {
        Entry {
            key: key.to_string(),
            value: value.to_vec(),
            flags,
            ..Entry::default()
        }
    }
}

/// The JSON form of an entry, field order as Consul writes it.
#[derive(Serialize)]
pub struct DirEntryOut<'a> {
    #[serde(rename = "LockIndex")]
    pub lock_index: u64,
    #[serde(rename = "Key")]
    pub key: &'a str,
    #[serde(rename = "Flags")]
    pub flags: u64,
    #[serde(rename = "Value")]
    pub value: Option<String>,
    #[serde(rename = "Session", skip_serializing_if = "Option::is_none")]
    pub session: Option<&'a str>,
    #[serde(rename = "CreateIndex")]
    pub create_index: u64,
    #[serde(rename = "ModifyIndex")]
    pub modify_index: u64,
}

impl Entry {
    pub fn to_json(&self, with_value: bool) -> DirEntryOut<'_> {
        use base64::Engine;
        DirEntryOut {
            lock_index: self.lock_index,
            key: &self.key,
            flags: self.flags,
            value: if with_value && !self.value.is_empty() {
                Some(base64::engine::general_purpose::STANDARD.encode(&self.value))
            } else {
                None
            },
            session: self.session.as_deref(),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

/// What a write touched, for waking blocking queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Key(String),
    Tree(String),
}

impl Change {
    /// Would a query on the given key (exact) see this change?
    pub fn touches_key(&self, key: &str) -> bool {
        match self {
            Change::Key(k) => k == key,
            Change::Tree(t) => key.starts_with(t.as_str()),
        }
    }
    /// Would a query on the given prefix (`recurse`, `keys`) see this change?
    pub fn touches_prefix(&self, prefix: &str) -> bool {
        match self {
            Change::Key(k) => k.starts_with(prefix),
            Change::Tree(t) => t.starts_with(prefix) || prefix.starts_with(t.as_str()),
        }
    }
}

/// A session (Consul's `structs.Session`).
#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    /// Nanoseconds.
    pub lock_delay: i64,
    pub behavior: String,
    pub ttl: String,
    pub node_checks: Vec<String>,
    pub service_checks: Option<Vec<serde_json::Value>>,
    pub create_index: u64,
    pub modify_index: u64,
    /// When the TTL (times Consul's multiplier of 2) runs out without a renewal.
    pub expires: Option<Instant>,
    pub ttl_duration: Option<Duration>,
}

#[derive(Serialize)]
pub struct SessionOut<'a> {
    #[serde(rename = "ID")]
    pub id: &'a str,
    #[serde(rename = "Name")]
    pub name: &'a str,
    #[serde(rename = "Node")]
    pub node: &'a str,
    #[serde(rename = "LockDelay")]
    pub lock_delay: i64,
    #[serde(rename = "Behavior")]
    pub behavior: &'a str,
    #[serde(rename = "TTL")]
    pub ttl: &'a str,
    #[serde(rename = "NodeChecks")]
    pub node_checks: Option<&'a [String]>,
    #[serde(rename = "ServiceChecks")]
    pub service_checks: Option<&'a [serde_json::Value]>,
    #[serde(rename = "CreateIndex")]
    pub create_index: u64,
    #[serde(rename = "ModifyIndex")]
    pub modify_index: u64,
}

impl Session {
    pub fn to_json(&self) -> SessionOut<'_> {
        SessionOut {
            id: &self.id,
            name: &self.name,
            node: &self.node,
            lock_delay: self.lock_delay,
            behavior: &self.behavior,
            ttl: &self.ttl,
            node_checks: if self.node_checks.is_empty() {
                None
            } else {
                Some(&self.node_checks)
            },
            service_checks: self.service_checks.as_deref(),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

/// Consul's `structs.MaxLockDelay`.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// Consul's `structs.SessionTTLMultiplier`.
pub const SESSION_TTL_MULTIPLIER: u32 = 2;
const CHANGE_LOG_LEN: usize = 4096;

/// The whole state.
#[derive(Clone, Debug)]
pub struct Store {
    /// The raft index of the last write that changed something.
    pub raft_index: u64,
    kv: BTreeMap<String, Entry>,
    tombstones: BTreeMap<String, u64>,
    /// Max index of the `kvs` and `tombstones` tables.
    kv_index: u64,
    sessions: BTreeMap<String, Session>,
    sessions_index: u64,
    lock_delay: HashMap<String, Instant>,
    log: VecDeque<(u64, Vec<Change>)>,
    log_floor: u64,
    pending: Vec<Change>,
    dirty: bool,
}

/// A snapshot of the KV part, for rolling back a failed transaction.
pub struct KvSnapshot {
    kv: BTreeMap<String, Entry>,
    tombstones: BTreeMap<String, u64>,
    kv_index: u64,
    pending: Vec<Change>,
    dirty: bool,
}

impl Store {
    pub fn new(initial_index: u64) -> Store {
        Store {
            raft_index: initial_index,
            kv: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            kv_index: 0,
            sessions: BTreeMap::new(),
            sessions_index: 0,
            lock_delay: HashMap::new(),
            log: VecDeque::new(),
            log_floor: initial_index,
            pending: Vec::new(),
            dirty: false,
        }
    }

    /// The index the next write will take.
    pub fn next_index(&self) -> u64 {
        self.raft_index + 1
    }

    /// Ends a write: if anything changed, the index moves to `idx`. Returns whether it did.
    pub fn finish(&mut self, idx: u64) -> bool {
        let changed = self.dirty || !self.pending.is_empty();
        if changed {
            self.raft_index = idx;
            let ch = std::mem::take(&mut self.pending);
            self.log.push_back((idx, ch));
            while self.log.len() > CHANGE_LOG_LEN {
                if let Some((i, _)) = self.log.pop_front() {
                    self.log_floor = i;
                }
            }
        }
        self.pending.clear();
        self.dirty = false;
        changed
    }

    /// Did a write after index `seen` touch something `relevant` says matters?
    pub fn changed_since(&self, seen: u64, relevant: &dyn Fn(&Change) -> bool) -> bool {
        if seen < self.log_floor {
            return true;
        }
        self.log
            .iter()
            .filter(|(i, _)| *i > seen)
            .any(|(_, ch)| ch.iter().any(relevant))
    }

    pub fn kv_snapshot(&self) -> KvSnapshot {
        KvSnapshot {
            kv: self.kv.clone(),
            tombstones: self.tombstones.clone(),
            kv_index: self.kv_index,
            pending: self.pending.clone(),
            dirty: self.dirty,
        }
    }

    pub fn kv_restore(&mut self, s: KvSnapshot) {
        self.kv = s.kv;
        self.tombstones = s.tombstones;
        self.kv_index = s.kv_index;
        self.pending = s.pending;
        self.dirty = s.dirty;
    }

    // ---------------------------------------------------------------- KV reads

    /// `kvsMaxIndex`: the index of the `kvs` and `tombstones` tables.
    pub fn kv_table_index(&self) -> u64 {
        self.kv_index
    }

    /// `KVSGet`: the table index and the entry.
    pub fn kvs_get(&self, key: &str) -> (u64, Option<&Entry>) {
        (self.kv_index, self.kv.get(key))
    }

    /// `KVSList`: entries under `prefix` sorted by key, and the index Consul reports:
    /// the highest ModifyIndex under the prefix or of a tombstone under it, else the
    /// table index.
    pub fn kvs_list(&self, prefix: &str) -> (u64, Vec<&Entry>) {
        let entries: Vec<&Entry> = self
            .kv
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e)
            .collect();
        let mut lindex = entries.iter().map(|e| e.modify_index).max().unwrap_or(0);
        if !prefix.is_empty() {
            let gindex = self
                .tombstones
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, i)| *i)
                .max()
                .unwrap_or(0);
            lindex = lindex.max(gindex);
        } else {
            lindex = self.kv_index;
        }
        let idx = if lindex != 0 { lindex } else { self.kv_index };
        (idx, entries)
    }

    pub fn all_entries(&self) -> Vec<Entry> {
        self.kv.values().cloned().collect()
    }

    // ---------------------------------------------------------------- KV writes

    fn insert(&mut self, idx: u64, e: Entry) {
        self.pending.push(Change::Key(e.key.clone()));
        self.kv.insert(e.key.clone(), e);
        self.kv_index = self.kv_index.max(idx);
    }

    /// `kvsSetTxn`. Returns the entry as stored (or as it stays, for a no-op write).
    pub fn kvs_set(&mut self, idx: u64, mut entry: Entry, update_session: bool) -> Entry {
        let existing = self.kv.get(&entry.key);
        entry.create_index = existing.map_or(idx, |e| e.create_index);
        if !update_session {
            entry.session = existing.and_then(|e| e.session.clone());
        }
        if let Some(e) = existing {
            if e.same_content(&entry) {
                entry.modify_index = e.modify_index;
                return entry;
            }
        }
        entry.modify_index = idx;
        self.insert(idx, entry.clone());
        entry
    }

    /// `kvsSetCASTxn`: `cas` 0 creates only if absent; otherwise ModifyIndex must match.
    pub fn kvs_set_cas(&mut self, idx: u64, entry: Entry, cas: u64) -> Option<Entry> {
        let existing = self.kv.get(&entry.key);
        match (cas, existing) {
            (0, Some(_)) => return None,
            (c, None) if c != 0 => return None,
            (c, Some(e)) if c != 0 && e.modify_index != c => return None,
            _ => {}
        }
        Some(self.kvs_set(idx, entry, false))
    }

    /// `kvsLockTxn`. `Err` is an FSM error (Consul answers 500 with it).
    pub fn kvs_lock(&mut self, idx: u64, mut entry: Entry) -> Result<Option<Entry>, String> {
        let sess = entry.session.clone().unwrap_or_default();
        if sess.is_empty() {
            return Err("missing session".into());
        }
        if !self.sessions.contains_key(&sess) {
            return Err(format!("invalid session {}", go_quote(&sess)));
        }
        match self.kv.get(&entry.key) {
            Some(e) => {
                if e.session.as_deref() == Some(sess.as_str()) {
                    entry.create_index = e.create_index;
                    entry.lock_index = e.lock_index;
                } else if e.session.is_some() {
                    return Ok(None);
                } else {
                    entry.create_index = e.create_index;
                    entry.lock_index = e.lock_index + 1;
                }
            }
            None => {
                entry.create_index = idx;
                entry.lock_index = 1;
            }
        }
        entry.modify_index = idx;
        Ok(Some(self.kvs_set(idx, entry, true)))
    }

    /// `kvsUnlockTxn`.
    pub fn kvs_unlock(&mut self, idx: u64, mut entry: Entry) -> Result<Option<Entry>, String> {
        let sess = entry.session.clone().unwrap_or_default();
        if sess.is_empty() {
            return Err("missing session".into());
        }
        let Some(e) = self.kv.get(&entry.key) else {
            return Ok(None);
        };
        if e.session.as_deref() != Some(sess.as_str()) {
            return Ok(None);
        }
        entry.session = None;
        entry.lock_index = e.lock_index;
        entry.create_index = e.create_index;
        entry.modify_index = idx;
        Ok(Some(self.kvs_set(idx, entry, true)))
    }

    /// `kvsDeleteTxn`: a delete of a missing key changes nothing.
    pub fn kvs_delete(&mut self, idx: u64, key: &str) {
        if self.kv.remove(key).is_some() {
            self.tombstones.insert(key.to_string(), idx);
            self.kv_index = self.kv_index.max(idx);
            self.pending.push(Change::Key(key.to_string()));
        }
    }

    /// `kvsDeleteCASTxn`: true when deleted, or when there was nothing to delete.
    pub fn kvs_delete_cas(&mut self, idx: u64, cas: u64, key: &str) -> bool {
        match self.kv.get(key) {
            None => true,
            Some(e) if e.modify_index != cas => false,
            Some(_) => {
                self.kvs_delete(idx, key);
                true
            }
        }
    }

    /// `kvsDeleteTreeTxn`: one tombstone for the prefix, if anything was deleted.
    pub fn kvs_delete_tree(&mut self, idx: u64, prefix: &str) {
        let keys: Vec<String> = self
            .kv
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        for k in &keys {
            self.kv.remove(k);
        }
        if !prefix.is_empty() {
            self.tombstones.insert(prefix.to_string(), idx);
        }
        self.kv_index = self.kv_index.max(idx);
        self.pending.push(Change::Tree(prefix.to_string()));
    }

    /// `kvsCheckSessionTxn`.
    pub fn kvs_check_session(&self, key: &str, session: &str) -> Result<Entry, String> {
        let Some(e) = self.kv.get(key) else {
            return Err(format!(
                "failed to check session, key {} doesn't exist",
                go_quote(key)
            ));
        };
        if e.session.as_deref().unwrap_or("") != session {
            return Err(format!(
                "failed session check for key {}, current session {} != {}",
                go_quote(key),
                go_quote(e.session.as_deref().unwrap_or("")),
                go_quote(session)
            ));
        }
        Ok(e.clone())
    }

    /// `kvsCheckIndexTxn`.
    pub fn kvs_check_index(&self, key: &str, cidx: u64) -> Result<Entry, String> {
        let Some(e) = self.kv.get(key) else {
            return Err(format!(
                "failed to check index, key {} doesn't exist",
                go_quote(key)
            ));
        };
        if e.modify_index != cidx {
            return Err(format!(
                "failed index check for key {}, current modify index {} != {}",
                go_quote(key),
                e.modify_index,
                cidx
            ));
        }
        Ok(e.clone())
    }

    /// When a lock-delay set by an invalidated session on `key` runs out, if it has not.
    pub fn lock_delay_until(&self, key: &str, now: Instant) -> Option<Instant> {
        self.lock_delay.get(key).copied().filter(|t| *t > now)
    }

    // ---------------------------------------------------------------- sessions

    pub fn sessions_index(&self) -> u64 {
        self.sessions_index
    }

    pub fn session(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id)
    }

    pub fn sessions(&self) -> Vec<Session> {
        self.sessions.values().cloned().collect()
    }

    pub fn session_create(&mut self, idx: u64, mut s: Session) {
        s.create_index = idx;
        s.modify_index = idx;
        self.sessions.insert(s.id.clone(), s);
        self.sessions_index = idx;
        self.dirty = true;
    }

    /// Resets a TTL session's timer. Not a raft write in Consul: no index moves.
    pub fn session_renew(&mut self, id: &str, now: Instant) -> Option<Session> {
        let s = self.sessions.get_mut(id)?;
        if let Some(ttl) = s.ttl_duration {
            s.expires = Some(now + ttl * SESSION_TTL_MULTIPLIER);
        }
        Some(s.clone())
    }

    /// `deleteSessionTxn`: removes the session and releases or deletes what it held,
    /// setting the session's lock-delay on those keys.
    pub fn session_destroy(&mut self, idx: u64, id: &str, now: Instant) {
        let Some(sess) = self.sessions.remove(id) else {
            return;
        };
        self.sessions_index = idx;
        self.dirty = true;
        let delay = Duration::from_nanos(sess.lock_delay.max(0) as u64).min(MAX_LOCK_DELAY);
        let held: Vec<Entry> = self
            .kv
            .values()
            .filter(|e| e.session.as_deref() == Some(id))
            .cloned()
            .collect();
        for mut e in held {
            let key = e.key.clone();
            if sess.behavior == "delete" {
                self.kvs_delete(idx, &key);
            } else {
                e.session = None;
                self.kvs_set(idx, e, true);
            }
            if !delay.is_zero() {
                self.lock_delay.insert(key, now + delay);
            }
        }
    }

    /// IDs of TTL sessions whose time ran out.
    pub fn expired_sessions(&self, now: Instant) -> Vec<String> {
        self.sessions
            .values()
            .filter(|s| s.expires.is_some_and(|t| t <= now))
            .map(|s| s.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &mut Store, k: &str, v: &str) -> u64 {
        let idx = s.next_index();
        s.kvs_set(idx, Entry::new(k, v.as_bytes(), 0), false);
        s.finish(idx);
        s.raft_index
    }

    #[test]
    fn identical_put_does_not_move_index() {
        let mut s = Store::new(1);
        let i = put(&mut s, "a", "x");
        assert_eq!(i, 2);
        assert_eq!(put(&mut s, "a", "x"), 2);
        assert_eq!(put(&mut s, "a", "y"), 3);
        assert_eq!(s.kvs_get("a").1.unwrap().create_index, 2);
    }

    #[test]
    fn list_index_uses_tombstones() {
        let mut s = Store::new(1);
        put(&mut s, "foo/bar", "1");
        put(&mut s, "foo/baz", "2");
        let idx = s.next_index();
        s.kvs_delete(idx, "foo/baz");
        s.finish(idx);
        put(&mut s, "other", "3");
        assert_eq!(s.kvs_list("foo/").0, 4);
        assert_eq!(s.kvs_list("foo/baz").0, 4);
        assert_eq!(s.kvs_list("nothing").0, 5);
        assert_eq!(s.kvs_list("").0, 5);
    }
}
