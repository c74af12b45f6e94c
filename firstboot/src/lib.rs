//! kiln-firstboot: the first-boot command around kiln-apply's engine.
//!
//! [`cmd`] is the `kiln-firstboot` command (its arguments are [`kiln_apply::cli`]): fetch,
//! checks, logging, exit codes; [`fetch`] gets the bundle (a path or an http(s) URL);
//! [`sources`] are the dynamic values' sources the engine asks: Consul and Vault.

pub mod cmd;
pub mod fetch;
pub mod sources;
