//! The bundle manifest: the signed description of everything a bundle may change on a host.
//! Target paths live only here, never in tar headers. Serialized as canonical JSON (sorted keys,
//! no insignificant whitespace) so that the same inputs give the same bytes.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::error::BundleError;

/// The manifest format this code writes and the only one it accepts.
pub const FORMAT_VERSION: u32 = 1;

/// Everything a bundle carries, in the order a host applies it.
///
/// `E` is how the entries are held: in memory (the default), or
/// [`Streamed`](crate::entries::Streamed) while a reader parses them into a spool file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest<E = Vec<Entry>> {
    /// Always [`FORMAT_VERSION`].
    pub format: u32,
    /// The hostgroup this bundle configures (a host refuses a bundle for another group).
    pub hostgroup: String,
    /// Monotonic bundle version; hosts refuse versions below their minimum (rollback defence).
    pub version: u64,
    /// Build time, RFC 3339 UTC, from SOURCE_DATE_EPOCH when set.
    pub created: String,
    /// After this instant (RFC 3339 UTC) the bundle is refused (freeze defence).
    pub expires: String,
    /// VCS commit of the configuration, when known.
    pub source_commit: Option<String>,
    /// `"kiln <version>"` of the builder that wrote the bundle.
    pub builder: String,
    /// The base image the bundle targets (wrong-software defence).
    pub base: Base,
    /// Every path the bundle creates, changes or removes, sorted by path (byte order).
    pub entries: E,
    /// Groups to create, sorted by name.
    pub groups: Vec<Group>,
    /// Users to create, sorted by name.
    pub users: Vec<User>,
    /// Packages to install, sorted by name.
    pub packages: Vec<Package>,
    /// Accounts the packages create (`system_accounts` in the configuration), sorted: entries
    /// and templates may be owned by them although the base lacks them. The applier checks
    /// that they exist once the packages phase is done; users and groups, created before
    /// packages, may not name them. Absent when empty (older manifests keep their bytes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub system_accounts: Vec<String>,
    /// Services and the state they must reach, sorted by name.
    pub services: Vec<Service>,
    /// Commands run once at first boot, in this order, after packages, files and units.
    pub commands: Vec<Command>,
    /// Templates rendered on the host from dynamic sources (Consul, Vault).
    pub templates: Vec<Template>,
    /// Health checks run on a live host once its services have started, sorted by name: the
    /// node reports healthy only when every one passed within its deadline. Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
    /// The dynamic sources the host reads for [`templates`](Self::templates): Consul prefixes,
    /// the Vault AppRole, KV v2 paths, secrets to generate if absent, a PKI certificate.
    /// Absent from bundles without any (and from bundles built before it existed, which keep
    /// their exact canonical bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<Dynamic>,
    /// Every payload blob in the archive, in archive order (sorted by digest), each once.
    pub blobs: Vec<Blob>,
}

/// The base image a bundle was built for, as its `/etc/os-release` and dpkg see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// Name of the base in the configuration, e.g. `debian-12`.
    pub name: String,
    /// os-release `ID`, e.g. `debian`.
    pub id: String,
    /// os-release `VERSION_ID`, e.g. `12`.
    pub version_id: String,
    /// dpkg architecture, e.g. `amd64`.
    pub arch: String,
    /// sha256 of the base's sorted installed package set (`name version arch` lines), when known.
    pub packages_digest: Option<String>,
}

/// One path on the target.
// No `deny_unknown_fields` here: serde does not support it together with `flatten` (it
// refused every file entry). `EntryKind` denies unknown fields, and the reader refuses any
// manifest that is not its own canonical re-serialization, so nothing unknown gets through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Absolute, normalized target path (no `.`, `..`, `//` or trailing `/`).
    pub path: String,
    #[serde(flatten)]
    pub kind: EntryKind,
}

/// What a path becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum EntryKind {
    /// A regular file whose bytes are the blob `digest`.
    File {
        /// Octal permission bits as a string, e.g. `0644`. setuid/setgid only when written here.
        mode: String,
        owner: String,
        group: String,
        /// sha256 hex of the content; the blob `blobs/<digest>`.
        digest: String,
        size: u64,
        /// Services restarted when this file changes.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        restart: Vec<String>,
        /// Services reloaded when this file changes.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reload: Vec<String>,
    },
    Directory {
        mode: String,
        owner: String,
        group: String,
    },
    Symlink {
        target: String,
    },
    /// The path must not exist after apply.
    Absent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub gid: Option<u32>,
    pub system: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub uid: Option<u32>,
    /// Primary group; `None` lets useradd pick (a group of the user's name).
    pub group: Option<String>,
    /// Supplementary groups, sorted.
    pub groups: Vec<String>,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub comment: Option<String>,
    pub system: bool,
    pub create_home: bool,
    /// OpenSSH public keys written to `~/.ssh/authorized_keys`.
    pub authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    /// Exact version: the pin from the configuration, or what resolution chose.
    pub version: Option<String>,
    pub arch: Option<String>,
    /// sha256 of the `.deb` blob, once packages are resolved against a base.
    pub digest: Option<String>,
    pub size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Full unit name, e.g. `nginx.service`.
    pub name: String,
    pub state: ServiceState,
    pub enabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Running,
    Dead,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Identifier from the configuration, used in logs and the state file.
    pub name: String,
    /// argv; run without a shell unless `argv[0]` is a shell the user named.
    pub argv: Vec<String>,
    pub timeout_secs: u64,
    /// Skip the command when this path already exists (idempotence on re-runs).
    pub creates: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Target path; the template text is the blob `digest`.
    pub path: String,
    pub digest: String,
    pub mode: String,
    pub owner: String,
    pub group: String,
    /// Consul keys the template reads (`kiln/apps/web/version`), and prefixes it reads whole
    /// with `consul_tree` (ending in `/`). Sorted.
    pub consul: Vec<String>,
    /// Vault values the template reads, `<kv v2 path>#<field>` (`secret/data/db/app#password`)
    /// and `<pki mount>/issue/<role>#<field>` for the certificate. Sorted.
    pub vault: Vec<String>,
    /// The values of the hostgroup's `vars` the template reads (`{{ vars.nginx.port }}`), by
    /// top-level key: only those, so other vars stay out of the manifest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reload: Vec<String>,
}

/// The dynamic sources of a bundle, as declared by its hostgroup's `dynamic:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dynamic {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul: Option<ConsulSources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultSources>,
}

/// What the host reads from Consul: one recursive read per prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulSources {
    /// Key prefixes, each ending in `/`, sorted.
    pub prefixes: Vec<String>,
}

/// What the host reads from (and writes to) Vault or OpenBao.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSources {
    /// The AppRole role the host logs in as; a wrapped secret_id must have been created for it
    /// (its wrapping token's creation path is `auth/<auth_mount>/role/<role>/secret-id`).
    pub role: String,
    /// Where the AppRole auth method is mounted (`approle`).
    pub auth_mount: String,
    /// The role's role_id, when the bundle carries it (else the host has it in a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_id: Option<String>,
    /// KV v2 paths read, API form (`secret/data/db/app`), sorted.
    pub kv: Vec<String>,
    /// Values created once, if absent, with check-and-set; sorted by path and field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generate: Vec<Generate>,
    /// A certificate issued for the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki: Option<Pki>,
}

/// A random value stored at `path` (KV v2) under `field` by the first host that needs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generate {
    pub path: String,
    pub field: String,
    /// Characters in the value.
    pub length: u32,
    pub charset: Charset,
}

/// The alphabet of a generated value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Charset {
    /// `A-Z a-z 0-9`.
    Alnum,
    /// `0-9 a-f`.
    Hex,
    /// `A-Z a-z 0-9 - _`.
    Base64url,
}

impl Charset {
    /// The characters of the alphabet.
    pub fn alphabet(self) -> &'static [u8] {
        match self {
            Charset::Alnum => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            Charset::Hex => b"0123456789abcdef",
            Charset::Base64url => {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Charset::Alnum => "alnum",
            Charset::Hex => "hex",
            Charset::Base64url => "base64url",
        }
    }
}

/// A certificate issued for the host by a PKI secrets engine (`<mount>/issue/<role>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pki {
    pub mount: String,
    pub role: String,
    /// A template of its own, rendered on the host with `hostname` and `hostgroup`
    /// (`{{ hostname }}.web.example.internal`).
    pub common_name: String,
    pub alt_names: Vec<String>,
    pub ip_sans: Vec<String>,
    /// Vault duration, e.g. `72h`.
    pub ttl: String,
}

/// A health check: one probe, retried until it passes or its deadline passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Identifier from the configuration, used in logs, the state file and the report.
    pub name: String,
    pub probe: Probe,
    /// Seconds from the start of the health step after which a check that has not passed fails.
    pub deadline_secs: u64,
}

/// What a health check looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Probe {
    /// The systemd unit is active (`systemctl is-active`).
    Unit { unit: String },
    /// `host:port` accepts a TCP connection.
    Tcp { address: String },
    /// An `http://` URL answers a GET with this status.
    Http { url: String, status: u16 },
    /// The program exits 0 (argv; a string in the configuration runs with /bin/sh -c).
    Command {
        argv: Vec<String>,
        timeout_secs: u64,
    },
}

/// A payload blob: content addressed, stored once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blob {
    /// sha256 hex (64 lowercase hex digits); the archive member is `blobs/<digest>`.
    pub digest: String,
    pub size: u64,
}

impl Manifest {
    /// Canonical JSON: keys sorted, compact. Signed and written as `kiln/manifest.json`.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_canonical_json(&mut out)
            .expect("writing to a Vec does not fail");
        out
    }

    /// SHA-512 of [`to_canonical_json`](Self::to_canonical_json), hashed as it is produced:
    /// compared with the hash of signed bytes read in pieces, it says whether they were
    /// exactly the canonical form without the bytes being whole in memory.
    pub fn canonical_json_sha512(&self) -> [u8; 64] {
        self.canonical_sha512_with(&mut self.entries.iter().map(|e| Ok(Cow::Borrowed(e))))
            .expect("hashing does not fail")
    }

    /// Writes the canonical JSON (keys sorted, compact, a final newline).
    pub fn write_canonical_json(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        self.write_canonical_json_with(out, &mut self.entries.iter().map(|e| Ok(Cow::Borrowed(e))))
    }
}

/// A bundle error carried through `io::Write` code (reading the entries' spool back).
fn io_error(e: BundleError) -> std::io::Error {
    match e {
        BundleError::Io(e) => e,
        other => std::io::Error::other(other),
    }
}

impl<E> Manifest<E> {
    /// [`Manifest::canonical_json_sha512`] of this manifest with `entries` as its entries
    /// (its own, whatever they are, are not looked at).
    pub fn canonical_sha512_with<'a>(
        &self,
        entries: &mut dyn Iterator<Item = Result<Cow<'a, Entry>, BundleError>>,
    ) -> Result<[u8; 64], BundleError> {
        use sha2::Digest;
        struct Hasher(sha2::Sha512);
        impl std::io::Write for Hasher {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.update(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut h = Hasher(sha2::Sha512::new());
        self.write_canonical_json_with(&mut h, &mut entries.map(|e| e.map_err(io_error)))
            .map_err(BundleError::Io)?;
        Ok(h.0.finalize().into())
    }

    /// [`Manifest::write_canonical_json`] with `entries` as the entries.
    pub fn write_canonical_json_with<'a>(
        &self,
        out: &mut dyn std::io::Write,
        entries: &mut dyn Iterator<Item = std::io::Result<Cow<'a, Entry>>>,
    ) -> std::io::Result<()> {
        // serde_json::Value keeps object keys in a BTreeMap (no preserve_order feature in this
        // workspace), so going through Value sorts every object's keys. The two long arrays go
        // through it one element at a time: a Value of the whole manifest takes ~2.5 KB per
        // entry, which made it the largest allocation of an apply (80 MB for 20,000 files).
        let shell = self.head();
        let serde_json::Value::Object(top) =
            serde_json::to_value(&shell).expect("manifest serializes")
        else {
            unreachable!("a manifest serializes to an object")
        };
        fn each<T: Serialize, B: std::borrow::Borrow<T>>(
            out: &mut dyn std::io::Write,
            items: &mut dyn Iterator<Item = std::io::Result<B>>,
        ) -> std::io::Result<()> {
            out.write_all(b"[")?;
            for (i, item) in items.enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                let v = serde_json::to_value(item?.borrow()).expect("manifest serializes");
                serde_json::to_writer(&mut *out, &v).map_err(std::io::Error::other)?;
            }
            out.write_all(b"]")
        }
        let mut entries = Some(entries);
        out.write_all(b"{")?;
        for (i, (key, value)) in top.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut *out, key).map_err(std::io::Error::other)?;
            out.write_all(b":")?;
            match key.as_str() {
                "entries" => {
                    if let Some(entries) = entries.take() {
                        each::<Entry, _>(out, entries)?
                    }
                }
                "blobs" => each::<Blob, _>(out, &mut self.blobs.iter().map(Ok))?,
                _ => serde_json::to_writer(&mut *out, value).map_err(std::io::Error::other)?,
            }
        }
        out.write_all(b"}\n")
    }

    /// Everything but the entries (and the blobs, moved): a manifest whose entries are held
    /// elsewhere.
    pub fn with_entries<F>(self, entries: F) -> Manifest<F> {
        Manifest {
            format: self.format,
            hostgroup: self.hostgroup,
            version: self.version,
            created: self.created,
            expires: self.expires,
            source_commit: self.source_commit,
            builder: self.builder,
            base: self.base,
            entries,
            groups: self.groups,
            users: self.users,
            packages: self.packages,
            system_accounts: self.system_accounts,
            services: self.services,
            commands: self.commands,
            templates: self.templates,
            checks: self.checks,
            dynamic: self.dynamic,
            blobs: self.blobs,
        }
    }

    /// A copy of everything but the entries and the blobs (left empty).
    pub fn head(&self) -> Manifest {
        Manifest {
            format: self.format,
            hostgroup: self.hostgroup.clone(),
            version: self.version,
            created: self.created.clone(),
            expires: self.expires.clone(),
            source_commit: self.source_commit.clone(),
            builder: self.builder.clone(),
            base: self.base.clone(),
            entries: Vec::new(),
            groups: self.groups.clone(),
            users: self.users.clone(),
            packages: self.packages.clone(),
            system_accounts: self.system_accounts.clone(),
            services: self.services.clone(),
            commands: self.commands.clone(),
            templates: self.templates.clone(),
            checks: self.checks.clone(),
            dynamic: self.dynamic.clone(),
            blobs: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{noise, sample_manifest};

    /// The whole manifest through serde_json::Value: the canonical form by definition.
    fn reference(m: &super::Manifest) -> Vec<u8> {
        let mut out = serde_json::to_vec(&serde_json::to_value(m).unwrap()).unwrap();
        out.push(b'\n');
        out
    }

    #[test]
    fn canonical_json_streamed_by_element_is_the_value_form() {
        let mut m = sample_manifest();
        assert_eq!(m.to_canonical_json(), reference(&m));
        m.dynamic = None;
        m.source_commit = None;
        assert_eq!(m.to_canonical_json(), reference(&m));
        m.entries.clear();
        m.blobs.clear();
        assert_eq!(m.to_canonical_json(), reference(&m));
        let many =
            crate::testutil::manifest_for(&(0..50).map(|i| noise(i, 10)).collect::<Vec<_>>());
        assert_eq!(many.to_canonical_json(), reference(&many));
        let bytes = reference(&many);
        let sha512 = |b: &[u8]| -> [u8; 64] {
            use sha2::Digest;
            sha2::Sha512::digest(b).into()
        };
        assert_eq!(many.canonical_json_sha512(), sha512(&bytes));
        assert_ne!(
            many.canonical_json_sha512(),
            sha512(&bytes[..bytes.len() - 1])
        );
        let mut longer = bytes.clone();
        longer.push(b'\n');
        assert_ne!(many.canonical_json_sha512(), sha512(&longer));
        let mut flipped = bytes;
        flipped[40] ^= 1;
        assert_ne!(many.canonical_json_sha512(), sha512(&flipped));
    }
}
