//! kiln-firstboot: the apply engine (reused by `kiln bake`) and the first-boot command.
//!
//! [`apply::apply`] applies a verified bundle to a root filesystem, crash-safely; [`cli`] and
//! [`cmd`] are the `kiln-firstboot` command around it: fetch, checks, logging, exit codes.

pub mod apply;
pub mod cli;
pub mod cmd;
pub mod conf;
pub mod dynamic;
pub mod fetch;
pub mod host;
pub mod log;
pub mod secret;
pub mod state;
pub mod template;

pub use apply::{apply, apply_with, ApplyError, ApplyFailure, ApplyOptions, ApplyReport};
pub use dynamic::DynamicConfig;
