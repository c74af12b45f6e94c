//! kiln's integration tests, one module per area, all in one test binary
//! (`cargo test -p kiln-builder --test integration MODULE::`).

#[path = "../../firstboot/tests/dynamic_support/bao.rs"]
mod bao;
mod support;

mod bad_configs;
mod bake;
mod base_build;
mod cli_bundle;
mod cloud_init;
mod config_good;
mod dynamic_example;
mod dynamic_vars;
mod example_apply;
mod layering;
mod packages;
mod rollout;
mod sbom;
mod schema;
mod vm_boot;
