//! Dynamic values, step 5 of the design: Consul KV prefixes and Vault secrets read at first
//! boot and rendered into the manifest's dynamic templates. Not implemented yet: this module is
//! the seam. Each source (Consul, Vault) will be one module implementing [`DynamicSource`],
//! afterburn-style, with its own mock tests; the engine will call them after the commands and
//! before services start. Until then the engine logs the templates it leaves for this step.

use std::collections::BTreeMap;
use std::time::Instant;

use thiserror::Error;

use crate::state::State;

/// Why a dynamic source failed; every variant exits with `exit::DYNAMIC`.
#[derive(Debug, Error)]
pub enum DynamicError {
    /// Still unreachable when the deadline passed.
    #[error("{source_name} unreachable until the deadline: {detail}")]
    Unreachable { source_name: String, detail: String },
    /// Reachable, but refused us (authentication, permission).
    #[error("{source_name} refused: {detail}")]
    Refused { source_name: String, detail: String },
    /// A key a template needs does not exist and the template gives no default.
    #[error("{source_name}: missing {key}")]
    Missing { source_name: String, key: String },
}

impl DynamicError {
    pub fn exit_code(&self) -> i32 {
        kiln_signing::exit::DYNAMIC
    }
}

/// A source of values for dynamic templates. Every method has a no-op default so a source
/// implements only what it offers.
pub trait DynamicSource {
    /// Short name for logs and errors: `consul`, `vault`.
    fn name(&self) -> &str;

    /// Connect and authenticate (e.g. Vault AppRole login with the wrapped secret_id), retrying
    /// until `deadline`.
    fn connect(&mut self, _deadline: Instant) -> Result<(), DynamicError> {
        Ok(())
    }

    /// Values of the keys (Consul keys or prefixes, Vault paths) one template reads. A value
    /// is never logged.
    fn fetch(
        &mut self,
        _keys: &[String],
        _deadline: Instant,
    ) -> Result<BTreeMap<String, String>, DynamicError> {
        Ok(BTreeMap::new())
    }

    /// After the apply: publish the result (Consul `kiln/nodes/<hostgroup>/<hostname>`).
    fn report(&mut self, _state: &State) -> Result<(), DynamicError> {
        Ok(())
    }
}
