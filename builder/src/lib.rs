//! kiln-builder: everything `kiln` does, as a library; `main.rs` is a thin shim.

pub mod config;
