//! Hard caps on a bundle, kept by the writer and the reader alike.

/// Hard caps on what a bundle may make the reader do (endless data, decompression bombs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest `kiln/manifest.json` read into memory (16 MiB): [`open`](crate::open), [`open_lean`](crate::open_lean),
    /// [`read_manifest_unverified`](crate::read_manifest_unverified).
    pub max_manifest_bytes: u64,
    /// Largest `kiln/manifest.json` read into a spool file by [`open_spooled`](crate::open_spooled) (1 GiB), and
    /// largest the writer writes: a host applies through the spool, so a bundle of up to
    /// [`max_entries`](Self::max_entries) entries fits.
    pub max_spooled_manifest_bytes: u64,
    /// Largest `kiln/manifest.json.sig` (8 KiB).
    pub max_signature_bytes: u64,
    /// Most entries plus templates, and most blobs (1 000 000).
    pub max_entries: usize,
    /// Largest single blob (4 GiB).
    pub max_blob_bytes: u64,
    /// Largest sum of blob sizes (64 GiB).
    pub max_total_bytes: u64,
    /// Largest zstd window, as a power of two (23 = 8 MiB).
    pub window_log_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 16 << 20,
            max_spooled_manifest_bytes: 1 << 30,
            max_signature_bytes: 8 << 10,
            max_entries: 1_000_000,
            max_blob_bytes: 4 << 30,
            max_total_bytes: 64 << 30,
            window_log_max: 23,
        }
    }
}
