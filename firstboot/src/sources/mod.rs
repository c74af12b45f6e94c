//! Where kiln-firstboot's dynamic values come from: the engine's dynamic phase asks a
//! [`kiln_apply::Sources`]; this is kiln-firstboot's, Consul and Vault ([`Hosted`]).

#[cfg(feature = "http")]
pub mod consul;
#[cfg(feature = "http")]
mod hosted;
#[cfg(feature = "http")]
pub mod vault;
#[cfg(not(feature = "http"))]
mod without_http;

#[cfg(feature = "http")]
pub use hosted::Hosted;
#[cfg(not(feature = "http"))]
pub use without_http::Hosted;

#[cfg(feature = "http")]
use std::time::Instant;

#[cfg(feature = "http")]
use kiln_apply::dynamic::DynamicError;
#[cfg(feature = "http")]
use kiln_apply::log::Log;
#[cfg(feature = "http")]
use kiln_apply::secret::Redactor;
#[cfg(feature = "http")]
use kiln_apply::template::Values;

#[cfg(feature = "http")]
/// A source of values for dynamic templates. Every method has a no-op default so a source
/// implements only what it offers.
pub trait DynamicSource {
    /// Short name for logs and errors: `consul`, `vault`.
    fn name(&self) -> &'static str;

    /// Connect and authenticate (Vault: AppRole login with the wrapped secret_id), retrying
    /// until `deadline`.
    fn connect(&mut self, _deadline: Instant, _log: &dyn Log) -> Result<(), DynamicError> {
        Ok(())
    }

    /// Read everything the bundle declares from this source into `values`; every secret read
    /// is added to `redactor`. A value is never logged.
    fn fetch(
        &mut self,
        _values: &mut Values,
        _redactor: &mut Redactor,
        _deadline: Instant,
        _log: &dyn Log,
    ) -> Result<(), DynamicError> {
        Ok(())
    }

    /// After the templates are in place: give up credentials (Vault: revoke the token).
    fn finish(&mut self, _deadline: Instant, _log: &dyn Log) -> Result<(), DynamicError> {
        Ok(())
    }

    /// Publish the apply's result as `body` at `key` (Consul).
    fn report(
        &mut self,
        _key: &str,
        _body: &[u8],
        _deadline: Instant,
        _log: &dyn Log,
    ) -> Result<(), DynamicError> {
        Ok(())
    }

    /// HTTP requests made so far (each attempt counts).
    fn requests(&self) -> u32 {
        0
    }
}
