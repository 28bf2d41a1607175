//! The plugin runtime: manifests ([`manifest`]), one wasmtime engine with
//! the one `bindgen!` ([`runtime`]: compile once per version, a fresh
//! `Store` per call, limits, accounting), and the capabilities plugins reach
//! the world through ([`capabilities`]: grant check, audit, then the call).
//!
//! Depends only on `capstan-store`; `capstan-registry` and above use it.
//! Nothing here knows HTTP or who the caller of an API is.

pub mod capabilities;
pub mod manifest;
pub mod runtime;

pub(crate) use capstan_store as store;
