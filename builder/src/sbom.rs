//! The SBOM written beside each bundle: `<hostgroup>-<version>.spdx.json`, SPDX 2.3 JSON.
//!
//! It describes the bundle (a package with the bundle file's SHA256), the base it targets (an
//! OPERATING-SYSTEM package; when the build read a real base, with every package installed in
//! it), and every Debian package the bundle carries, each with its version, architecture,
//! SHA256, download location and a `pkg:deb` package URL. Relationships: the document DESCRIBES
//! the bundle; the bundle CONTAINS each of its packages and DEPENDS_ON the base; the base
//! CONTAINS its own packages. Without a base (packages not resolved) the bundle's packages are
//! listed by name, with their pin as version when pinned.
//!
//! Deterministic: the same bundle and base give the same bytes (keys sorted, creation time from
//! the manifest, namespace from the bundle's SHA256).

use std::collections::{BTreeMap, BTreeSet};

use kiln_signing::Manifest;
use serde_json::{json, Value};

/// What the SBOM knows about the base beyond the manifest.
pub struct BaseFacts<'a> {
    /// Installed packages: name -> (version, architecture).
    pub installed: &'a BTreeMap<String, (String, String)>,
}

/// The SBOM's file name for a bundle.
pub fn file_name(hostgroup: &str, version: u64) -> String {
    format!("{hostgroup}-{version}.spdx.json")
}

/// `SPDXRef-<prefix>-<name>-<arch>`: characters outside `[A-Za-z0-9.-]` become `-XX` (hex,
/// upper case), which no Debian name (lower case) can spell, so two names never collide.
fn spdx_id(prefix: &str, name: &str, arch: Option<&str>) -> String {
    let mut id = format!("SPDXRef-{prefix}-");
    let enc = |s: &str, id: &mut String| {
        for c in s.chars() {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                id.push(c);
            } else {
                let mut b = [0u8; 4];
                for byte in c.encode_utf8(&mut b).bytes() {
                    id.push_str(&format!("-{byte:02X}"));
                }
            }
        }
    };
    enc(name, &mut id);
    if let Some(a) = arch {
        id.push_str("--");
        enc(a, &mut id);
    }
    id
}

/// Percent-encoding for package URL parts (purl spec: unreserved characters stay).
fn purl_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn purl(
    os_id: &str,
    name: &str,
    version: Option<&str>,
    arch: Option<&str>,
    distro: &str,
) -> String {
    let mut p = format!("pkg:deb/{}/{}", purl_escape(os_id), purl_escape(name));
    if let Some(v) = version {
        p.push('@');
        p.push_str(&purl_escape(v));
    }
    let mut q = Vec::new();
    if let Some(a) = arch {
        q.push(format!("arch={}", purl_escape(a)));
    }
    q.push(format!("distro={}", purl_escape(distro)));
    p.push('?');
    p.push_str(&q.join("&"));
    p
}

fn deb_package(
    id: String,
    name: &str,
    version: Option<&str>,
    arch: Option<&str>,
    m: &Manifest,
    extra: Value,
) -> Value {
    let distro = format!("{}-{}", m.base.id, m.base.version_id);
    let mut p = json!({
        "SPDXID": id,
        "name": name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": purl(&m.base.id, name, version, arch, &distro),
        }],
    });
    let o = p.as_object_mut().expect("object");
    if let Some(v) = version {
        o.insert("versionInfo".into(), json!(v));
    }
    if let Some(extra) = extra.as_object() {
        for (k, v) in extra {
            o.insert(k.clone(), v.clone());
        }
    }
    p
}

/// The SPDX 2.3 document for a bundle written as `bundle_file` with SHA256 `bundle_sha256`.
/// `uris` gives each carried deb's download location by SHA256.
pub fn spdx(
    m: &Manifest,
    bundle_file: &str,
    bundle_sha256: &str,
    base: Option<&BaseFacts>,
    uris: &BTreeMap<String, String>,
) -> Value {
    let builder_tool = m.builder.replace(' ', "-");
    let bundle_id = "SPDXRef-Bundle".to_string();
    let base_id = "SPDXRef-Base".to_string();
    let mut packages = Vec::new();
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": bundle_id,
    })];

    packages.push(json!({
        "SPDXID": bundle_id,
        "name": m.hostgroup,
        "versionInfo": m.version.to_string(),
        "packageFileName": bundle_file,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "checksums": [{"algorithm": "SHA256", "checksumValue": bundle_sha256}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "INSTALL",
        "supplier": "NOASSERTION",
        "comment": format!("Kiln bundle for hostgroup {}, built by {}, expires {}", m.hostgroup, m.builder, m.expires),
    }));

    let mut base_pkg = json!({
        "SPDXID": base_id,
        "name": m.base.name,
        "versionInfo": m.base.version_id,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "comment": format!("base image: os-release ID={} VERSION_ID={}, architecture {}", m.base.id, m.base.version_id, m.base.arch),
    });
    if let Some(d) = &m.base.packages_digest {
        base_pkg["comment"] = json!(format!(
            "{}; sha256 of its installed package set (sorted `name version arch` lines): {d}",
            base_pkg["comment"].as_str().unwrap_or_default()
        ));
    }
    packages.push(base_pkg);
    relationships.push(json!({
        "spdxElementId": bundle_id,
        "relationshipType": "DEPENDS_ON",
        "relatedSpdxElement": base_id,
    }));

    let mut ids = BTreeSet::new();
    for p in &m.packages {
        let id = spdx_id("deb", &p.name, p.arch.as_deref());
        if !ids.insert(id.clone()) {
            continue;
        }
        let mut extra = serde_json::Map::new();
        if let Some(d) = &p.digest {
            extra.insert(
                "checksums".into(),
                json!([{"algorithm": "SHA256", "checksumValue": d}]),
            );
            if let Some(u) = uris.get(d) {
                extra.insert("downloadLocation".into(), json!(u));
            }
        } else {
            extra.insert(
                "comment".into(),
                json!(if p.version.is_some() {
                    "declared with this exact version; not resolved against a base at build time"
                } else {
                    "declared without a version; not resolved against a base at build time"
                }),
            );
        }
        packages.push(deb_package(
            id.clone(),
            &p.name,
            p.version.as_deref(),
            p.arch.as_deref(),
            m,
            Value::Object(extra),
        ));
        relationships.push(json!({
            "spdxElementId": bundle_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }

    if let Some(b) = base {
        for (name, (version, arch)) in b.installed {
            let id = spdx_id("base-deb", name, Some(arch));
            if !ids.insert(id.clone()) {
                continue;
            }
            packages.push(deb_package(
                id.clone(),
                name,
                Some(version),
                Some(arch),
                m,
                json!({"comment": "installed in the base image"}),
            ));
            relationships.push(json!({
                "spdxElementId": base_id,
                "relationshipType": "CONTAINS",
                "relatedSpdxElement": id,
            }));
        }
    }

    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}-{}", m.hostgroup, m.version),
        "documentNamespace": format!("https://kiln.invalid/spdx/{}-{}-{bundle_sha256}", m.hostgroup, m.version),
        "creationInfo": {
            "created": m.created,
            "creators": [format!("Tool: {builder_tool}")],
        },
        "comment": "Kiln bundle SBOM: the bundle, the base image it targets and every Debian package in them.",
        "packages": packages,
        "relationships": relationships,
    })
}

/// The document's bytes: pretty JSON (keys sorted), ending in a newline.
pub fn to_bytes(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).expect("SBOM serializes");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_purls_are_well_formed() {
        assert_eq!(
            spdx_id("deb", "libstdc++6", Some("amd64")),
            "SPDXRef-deb-libstdc-2B-2B6--amd64"
        );
        assert_ne!(spdx_id("deb", "a+b", None), spdx_id("deb", "a-b", None));
        assert_eq!(
            purl(
                "debian",
                "libbpf1",
                Some("1:1.1.2-0+deb12u1"),
                Some("amd64"),
                "debian-12"
            ),
            "pkg:deb/debian/libbpf1@1%3A1.1.2-0%2Bdeb12u1?arch=amd64&distro=debian-12"
        );
    }
}
