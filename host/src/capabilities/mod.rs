//! Host capabilities: everything a plugin can reach outside its sandbox.
//!
//! Each capability lives in its own module and follows the same shape:
//! its grant is validated once when a plugin version loads, per-invocation
//! state is prepared for each call, and every host function checks the grant
//! (deny first) before it acts. Nothing here knows HTTP-the-API.

pub mod config;
pub mod log;

/// Schema migrations of capability tables, run after the core ones.
pub const MIGRATIONS: &[&str] = &[];

use serde::{Deserialize, Serialize};

/// Everything a manifest grants. The default grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grants {}

impl Grants {
    /// Checks the grants' own consistency (patterns parse, paths are absolute...).
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
