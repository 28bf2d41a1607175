//! The plugin registry ([`registry`]: which version of each plugin is
//! active, hot swap, the plugins directory), the trust model ([`trust`]:
//! projects, grant ceilings, the approval gate) and the server's metrics
//! ([`metrics`]). The engines (pipelines, alerts, provisioning) will sit
//! beside this crate and use it.
//!
//! Depends on `capstan-runtime` and `capstan-store`; nothing here knows HTTP.

pub mod metrics;
pub mod registry;
pub mod sources;
pub mod trust;

pub(crate) use capstan_runtime::{capabilities, manifest, runtime};
pub(crate) use capstan_store as store;
pub(crate) use capstan_store::ids;
