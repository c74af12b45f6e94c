//! The Consul test server's tests against Consul's documented behaviour, one module per area,
//! in one test binary.

mod common;

mod acl;
mod agent_status;
mod blocking;
mod faults;
mod kv_read;
mod kv_write;
mod sessions;
mod tls;
mod txn;
