//! Capstan: an automation server that runs sandboxed WebAssembly plugins.
//!
//! A call travels down the modules in this order:
//! [`api`] (HTTP, JSON, auth) -> [`registry`] (which plugin version) ->
//! [`runtime`] (fresh instance, limits, accounting) -> [`capabilities`]
//! (grant check, then the real call) -> typed result -> JSON.
//! Nothing below [`api`] knows HTTP.

pub mod api;
pub mod bundled;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod ids;
pub mod manifest;
pub mod metrics;
pub mod registry;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod store;
pub mod trust;
