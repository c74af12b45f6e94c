//! kiln-signing: the bundle format and its trust, shared by `kiln` (which writes bundles) and
//! `kiln-firstboot` (which verifies and applies them).
//!
//! A bundle is a zstd-compressed tar stream: `kiln/manifest.json`, `kiln/manifest.json.sig`
//! (SSHSIG, namespace `kiln-bundle`), then content-addressed blobs `blobs/<sha256>`.

pub mod error;
pub mod keys;
pub mod manifest;
pub mod sshsig;
pub mod trust;
mod wire;

pub use error::{exit, BundleError};
pub use keys::*;
pub use manifest::*;
pub use sshsig::NAMESPACE;
pub use trust::*;
