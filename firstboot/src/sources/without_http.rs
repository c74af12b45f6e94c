//! A kiln-firstboot built without the `http` feature reads no Consul and no Vault: a bundle
//! that declares them is refused at the dynamic phase, and the report says why it was not sent.

use kiln_apply::dynamic::{
    check_consul_keys, DynamicError, DynamicSummary, Finish, Reported, Want,
};
use kiln_apply::engine::ApplyError;
use kiln_apply::fsroot::Root;
use kiln_apply::log::Log;
use kiln_apply::secret::Redactor;
use kiln_apply::state::State;
use kiln_apply::template::Values;
use kiln_apply::{DynamicConfig, Sources};

/// No sources: the host's configuration, for the report's "why not".
pub struct Hosted<'c> {
    pub config: &'c DynamicConfig,
}

impl Sources for Hosted<'_> {
    fn fetch<'a>(
        &'a self,
        want: &Want<'_, 'a>,
        values: &mut Values,
        _redactor: &mut Redactor,
        _summary: &mut DynamicSummary,
    ) -> Result<Option<Box<dyn Finish + 'a>>, ApplyError> {
        if want.declared.consul.is_some() || want.declared.vault.is_some() {
            return Err(DynamicError::Config(
                "this kiln-firstboot was built without the `http` feature: it cannot read Consul or Vault".into(),
            )
            .into());
        }
        check_consul_keys(want.needed, values)?;
        Ok(None)
    }

    fn report(&self, _root: &Root, _state: &State, _log: &dyn Log) -> Option<Reported> {
        self.config.consul_addr.as_ref()?;
        Some(Reported {
            result: Err("built without the `http` feature".into()),
            requests: 0,
        })
    }
}
