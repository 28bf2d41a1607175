//! The Wasm runtime: one engine, one epoch ticker, a compiled `InstancePre`
//! per plugin version, and a fresh `Store` per invocation with its limits.

mod admission;
pub mod bindings;
mod engine;
mod error;
mod invoke;
pub mod limits;
mod load;
pub mod state;

pub use admission::{LimitScope, PluginConcurrency, PluginPermit};
pub use engine::{Runtime, RuntimeConfig, default_share};
pub use error::{InvokeError, LoadError};
pub use invoke::{Accounting, Call, Outcome, Output};
pub use load::Prepared;
