//! kiln-apply: the offline engine that applies a verified Kiln bundle to a root filesystem,
//! crash-safely. `kiln-firstboot` runs it at a VM's first boot, `kiln bake` on an image root.
//!
//! - [`engine`]: the phases, the journal, accounts, packages, services, containment;
//! - [`dynamic`]: the dynamic phase (templates rendered from values a [`dynamic::Sources`]
//!   provides; kiln-firstboot's are Consul and Vault);
//! - [`fsroot`]: the target root, opened so that no path or symlink leads out of it;
//! - [`template`], [`facts`], [`secret`]: templates, host facts, values that must not leak;
//! - the host contract, defined once: [`cli`] (kiln-firstboot's command line), [`conf`]
//!   (`/etc/kiln/firstboot.conf`), [`host`] (what the host's files say), [`state`]
//!   (`/var/lib/kiln/state.json`), [`report`] (what a host reports to Consul, what
//!   `kiln rollout` reads);
//! - [`http`] (feature `http`): the retrying HTTP(S) client kiln-firstboot's sources and
//!   `kiln rollout` share.

pub mod cli;
pub mod conf;
pub mod engine;
pub mod facts;
pub mod fsroot;
pub mod host;
#[cfg(feature = "http")]
pub mod http;
pub mod log;
pub mod report;
pub mod retry;
pub mod secret;
pub mod state;
pub mod template;

/// The dynamic phase and the [`Sources`](dynamic::Sources) a host brings to it.
pub use engine::dynamic;

pub use dynamic::{DynamicConfig, Sources};
pub use engine::{apply, apply_with, ApplyError, ApplyFailure, ApplyOptions, ApplyReport};
