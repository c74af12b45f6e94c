//! kiln-signing: the bundle format and its trust, shared by `kiln` (which writes bundles) and
//! `kiln-firstboot` (which verifies and applies them).
//!
//! A bundle is a zstd-compressed tar stream: `kiln/manifest.json`, `kiln/manifest.json.sig`
//! (SSHSIG, namespace `kiln-bundle`), then content-addressed blobs `blobs/<sha256>`.
//! [`write_bundle`] writes one; [`open`] verifies the signature and trust,
//! [`VerifiedBundle::for_each_blob`] streams and checks the blobs, [`check_policy`] applies the
//! host's freshness, hostgroup, base and rollback rules.

pub mod debian;
pub mod dynamic;
pub mod entries;
pub mod error;
pub mod hashing;
pub mod keys;
pub mod limits;
pub mod manifest;
pub mod policy;
pub mod reader;
pub mod spec;
pub mod sshsig;
pub mod trust;
pub mod validate;
mod wire;
pub mod writer;

#[cfg(test)]
mod testutil;

pub use entries::{EntryList, EntrySpool};
pub use error::{exit, BundleError};
pub use hashing::*;
pub use keys::*;
pub use limits::Limits;
pub use manifest::*;
pub use policy::*;
pub use reader::{
    open, open_lean, open_spooled, read_manifest_unverified, VerifiedBundle, MANIFEST_NAME,
    SIGNATURE_NAME,
};
pub use sshsig::NAMESPACE;
pub use trust::*;
pub use validate::{validate_entries, validate_manifest};
pub use writer::*;
