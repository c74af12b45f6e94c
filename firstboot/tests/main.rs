//! kiln-firstboot's integration tests, one module per area, all in one test binary
//! (`cargo test -p kiln-firstboot --test integration MODULE::`).

mod common;
mod dynamic_support;

mod apply_base;
mod contain;
mod dynamic_apply;
mod dynamic_faults_consul;
mod dynamic_faults_vault;
mod dynamic_secrets;
mod fetch;
mod kill9;
mod large;
mod refusals;
mod trees;
