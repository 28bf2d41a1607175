//! Capstan: an automation server that runs sandboxed WebAssembly plugins.
//! This crate is the top of the stack: the `capstan` binary, its CLI, the
//! configuration and the assembly of a server from the layers below.
//!
//! A call travels down the crates in this order, and each depends only on
//! the ones after it:
//! [`api`] (`capstan-api`: HTTP, JSON, auth) -> [`registry`] and [`trust`]
//! (`capstan-registry`: which plugin version, who may grant what) ->
//! [`runtime`] and [`capabilities`] (`capstan-runtime`: fresh instance,
//! limits, the grant check, then the real call) -> [`store`]
//! (`capstan-store`: the one schema, blobs, leases).
//! Nothing below [`api`] knows HTTP. The layers are re-exported here under
//! their module names, so `capstan::registry::Registry` and the like work.

pub use capstan_alerts as alerts;
pub use capstan_api as api;
pub use capstan_pipelines as pipelines;
pub use capstan_provisioning as provisioning;
pub use capstan_registry::{metrics, registry, sources, trust};
pub use capstan_runtime::{capabilities, manifest, runtime};
pub use capstan_store as store;
pub use capstan_store::ids;

mod alerts_wiring;
pub mod bundled;
pub mod cli;
pub mod config;
pub mod scaffold;
pub mod server;
