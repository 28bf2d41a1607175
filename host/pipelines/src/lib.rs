//! Deploy pipelines, the pure core: the pipeline document ([`model`]), its
//! validation ([`validate`]), `${{ }}` templates and CEL conditions
//! ([`expr`]) and the run state machine ([`machine`]).
//!
//! Nothing here touches the database, the clock or plugins: the host journals
//! the [`machine::Run`] the machine returns, carries out its
//! [`machine::Action`]s and feeds back [`machine::Event`]s with the current
//! time.

pub mod expr;
pub mod model;

pub use model::Pipeline;
