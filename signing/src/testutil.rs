//! Fixtures shared by the unit tests: a small manifest with real blobs, keys, and a way to
//! write a tar by hand (members kiln's writer would never produce).

use std::collections::BTreeMap;
use std::io::Write;

use crate::hashing::sha256_hex;
use crate::keys::SigningKey;
use crate::manifest::*;
use crate::sshsig::{self, NAMESPACE};

pub(crate) fn signer() -> SigningKey {
    SigningKey::from_seed(&[0x5a; 32], "release@kiln")
}

pub(crate) fn other_key() -> SigningKey {
    SigningKey::from_seed(&[0x77; 32], "stranger")
}

/// Deterministic pseudo-random bytes (xorshift), so blobs do not compress to nothing.
pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The blobs of [`sample_manifest`], by digest.
pub(crate) fn sample_blobs() -> BTreeMap<String, Vec<u8>> {
    [
        b"Welcome to a kiln-built host.\n".to_vec(),
        noise(1, 700),
        b"listen {{ consul \"web/port\" }}\n".to_vec(),
        noise(2, 300),
        Vec::new(),
    ]
    .into_iter()
    .map(|b| (sha256_hex(&b), b))
    .collect()
}

pub(crate) fn sample_manifest() -> Manifest {
    manifest_for(&[
        b"Welcome to a kiln-built host.\n".to_vec(),
        noise(1, 700),
        b"listen {{ consul \"web/port\" }}\n".to_vec(),
        noise(2, 300),
        Vec::new(),
    ])
}

/// A manifest using `blobs[0]` for /etc/motd, `[1]` for a binary, `[2]` as a template,
/// `[3]` as a package and any further ones as files under /srv.
pub(crate) fn manifest_for(blobs: &[Vec<u8>]) -> Manifest {
    let file = |path: &str, data: &[u8], mode: &str| Entry {
        path: path.into(),
        kind: EntryKind::File {
            mode: mode.into(),
            owner: "root".into(),
            group: "root".into(),
            digest: sha256_hex(data),
            size: data.len() as u64,
            restart: vec![],
            reload: vec![],
        },
    };
    let mut entries = vec![
        Entry {
            path: "/etc".into(),
            kind: EntryKind::Directory {
                mode: "0755".into(),
                owner: "root".into(),
                group: "root".into(),
            },
        },
        file("/etc/motd", &blobs[0], "0644"),
        Entry {
            path: "/etc/old.conf".into(),
            kind: EntryKind::Absent,
        },
        Entry {
            path: "/etc/web".into(),
            kind: EntryKind::Symlink {
                target: "/srv/web".into(),
            },
        },
        file("/usr/local/bin/tool", &blobs[1], "0755"),
    ];
    for (i, b) in blobs.iter().enumerate().skip(4) {
        entries.push(file(&format!("/srv/file{i}"), b, "0600"));
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut list: Vec<Blob> = blobs
        .iter()
        .map(|b| Blob {
            digest: sha256_hex(b),
            size: b.len() as u64,
        })
        .collect();
    list.sort();
    list.dedup();
    Manifest {
        format: FORMAT_VERSION,
        hostgroup: "web".into(),
        version: 7,
        created: "2024-01-01T00:00:00Z".into(),
        expires: "2030-01-01T00:00:00Z".into(),
        source_commit: Some("0123abcd".into()),
        builder: "kiln 0.1.0".into(),
        base: Base {
            name: "debian-12".into(),
            id: "debian".into(),
            version_id: "12".into(),
            arch: "amd64".into(),
            packages_digest: None,
        },
        entries,
        groups: vec![Group {
            name: "web".into(),
            gid: None,
            system: true,
        }],
        users: vec![],
        packages: vec![Package {
            name: "hello".into(),
            version: Some("2.10-3".into()),
            arch: Some("amd64".into()),
            digest: Some(sha256_hex(&blobs[3])),
            size: Some(blobs[3].len() as u64),
        }],
        system_accounts: vec![],
        services: vec![Service {
            name: "nginx.service".into(),
            state: ServiceState::Running,
            enabled: true,
        }],
        commands: vec![],
        checks: vec![],
        templates: vec![Template {
            path: "/etc/app.conf".into(),
            digest: sha256_hex(&blobs[2]),
            mode: "0640".into(),
            owner: "root".into(),
            group: "web".into(),
            consul: vec!["web/port".into()],
            vault: vec![],
            vars: Default::default(),
            restart: vec!["nginx.service".into()],
            reload: vec![],
        }],
        dynamic: Some(Dynamic {
            consul: Some(ConsulSources {
                prefixes: vec!["web/".into()],
            }),
            vault: None,
        }),
        blobs: list,
    }
}

/// Writes a bundle of `m` whose blobs come from `blobs`.
pub(crate) fn bundle_of(
    m: &Manifest,
    blobs: &BTreeMap<String, Vec<u8>>,
    key: &SigningKey,
) -> Vec<u8> {
    crate::writer::write_bundle(Vec::new(), m, key, &mut |b, w| {
        w.write_all(&blobs[&b.digest])
    })
    .expect("write bundle")
}

pub(crate) fn sample_bundle() -> Vec<u8> {
    bundle_of(&sample_manifest(), &sample_blobs(), &signer())
}

/// A hand-written tar stream, for members the writer never produces.
#[derive(Default)]
pub(crate) struct RawTar {
    pub(crate) out: Vec<u8>,
}

impl RawTar {
    /// A member with any type, name and declared size; `data` is written as given, then
    /// padded to a block.
    pub(crate) fn member(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        size: u64,
        data: &[u8],
        link: Option<&str>,
    ) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        // set_path refuses `..`; write the name field directly.
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(kind);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        if kind == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - self.out.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0, pad));
        self
    }

    pub(crate) fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.member(
            name.as_bytes(),
            tar::EntryType::Regular,
            data.len() as u64,
            data,
            None,
        )
    }

    /// Manifest and a valid signature of it by `key`.
    pub(crate) fn head(&mut self, m: &Manifest, key: &SigningKey) -> &mut Self {
        let json = m.to_canonical_json();
        self.head_bytes(&json, key)
    }

    pub(crate) fn head_bytes(&mut self, json: &[u8], key: &SigningKey) -> &mut Self {
        let sig = sshsig::sign(key, NAMESPACE, json);
        self.file("kiln/manifest.json", json)
            .file("kiln/manifest.json.sig", sig.as_bytes())
    }

    pub(crate) fn blob(&mut self, data: &[u8]) -> &mut Self {
        self.file(&format!("blobs/{}", sha256_hex(data)), data)
    }

    /// End-of-archive marker, then zstd with a checksum.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        self.out.extend_from_slice(&[0; 1024]);
        compress(&self.out, 3, 19, false)
    }
}

pub(crate) fn compress(data: &[u8], level: i32, window_log: u32, ldm: bool) -> Vec<u8> {
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), level).unwrap();
    z.include_checksum(true).unwrap();
    z.window_log(window_log).unwrap();
    z.long_distance_matching(ldm).unwrap();
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

pub(crate) fn decompress(data: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(data).unwrap()
}
