//! Deploy pipelines. The pure core: the pipeline document ([`model`]), its
//! validation ([`mod@validate`]), `${{ }}` templates and CEL conditions
//! ([`expr`]), the run state machine ([`machine`]) and the queue of one
//! environment's lock ([`locks`]); none of these touches the database, the
//! clock or plugins. The host side: the engine's tables ([`store`]) and the
//! [`engine`], which journals the [`machine::Run`] the machine returns,
//! carries out its [`machine::Action`]s and feeds back [`machine::Event`]s.
//!
//! Depends on `capstan-registry` (plugins, the approval gate), `capstan-runtime`
//! (the deploy-step call) and `capstan-store`; nothing here knows HTTP.

pub mod engine;
pub mod expr;
pub mod locks;
pub mod machine;
pub mod model;
pub mod store;
pub mod validate;
pub mod webhook;

pub use model::Pipeline;
pub use validate::{PluginCatalog, ValidationError, ValidationErrors, validate};

/// Why a pipeline file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The YAML is malformed or does not have the pipeline's shape; the
    /// message has the line, column and a snippet.
    #[error("{file}: {source}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's error.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// The pipeline parsed but is invalid; every problem is listed.
    #[error("{0}")]
    Invalid(#[from] ValidationErrors),
}

/// Parses and validates a pipeline file: what the host calls at load and
/// on every hot reload. `file` names the file in error messages.
pub fn load(file: &str, yaml: &str, catalog: &dyn PluginCatalog) -> Result<Pipeline, LoadError> {
    let pipeline = Pipeline::from_yaml(yaml).map_err(|source| LoadError::Parse {
        file: file.to_string(),
        source: Box::new(source),
    })?;
    validate(file, &pipeline, catalog)?;
    Ok(pipeline)
}
