//! # capstan-sdk: write Capstan plugins in plain Rust
//!
//! A plugin is a `cdylib` crate compiled to `wasm32-wasip2`. Pick the role,
//! implement its trait with ordinary Rust functions, and export the type with
//! the role's macro:
//!
//! ```no_run
//! use capstan_sdk::deploy_step::{Context, DeployStep, Outcome, StepResult};
//! use capstan_sdk::{Error, log};
//!
//! struct Hello;
//!
//! impl DeployStep for Hello {
//!     fn run(ctx: Context, params: String) -> Result<StepResult, Error> {
//!         let p: serde_json::Value = capstan_sdk::parse_json(&params)?;
//!         log::info(&format!("hello from {} in {}", ctx.step, ctx.environment));
//!         Ok(StepResult {
//!             outcome: Outcome::Succeeded,
//!             message: format!("greeted {}", p["name"]),
//!             outputs: vec![],
//!         })
//!     }
//!
//!     fn rollback(_ctx: Context, _params: String) -> Result<StepResult, Error> {
//!         Ok(StepResult { outcome: Outcome::Succeeded, message: "nothing to undo".into(), outputs: vec![] })
//!     }
//! }
//!
//! capstan_sdk::export_deploy_step!(Hello);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release` and hand the
//! `.wasm` plus a `capstan.toml` manifest to the server.
#![deny(missing_docs)]

// Lets generated code name this crate the same way from inside and outside.
extern crate self as capstan_sdk;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

#[doc(hidden)]
pub mod __host {
    wit_bindgen::generate!({
        path: "../wit",
        world: "host",
        runtime_path: "::capstan_sdk::__wit_bindgen::rt",
        generate_all,
    });
}

#[doc(hidden)]
pub mod __provisioner {
    wit_bindgen::generate!({
        path: "../wit",
        world: "provisioner-plugin",
        runtime_path: "::capstan_sdk::__wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "export_provisioner",
        default_bindings_module: "::capstan_sdk::__provisioner",
        with: {
            "capstan:plugin/types@0.1.0": crate::__host::capstan::plugin::types,
            "capstan:plugin/log@0.1.0": crate::__host::capstan::plugin::log,
            "capstan:plugin/config@0.1.0": crate::__host::capstan::plugin::config,
            "capstan:plugin/kv@0.1.0": crate::__host::capstan::plugin::kv,
            "capstan:plugin/secrets@0.1.0": crate::__host::capstan::plugin::secrets,
            "capstan:plugin/fs@0.1.0": crate::__host::capstan::plugin::fs,
            "capstan:plugin/kube@0.1.0": crate::__host::capstan::plugin::kube,
        },
    });
}

#[doc(hidden)]
pub mod __deploy_step {
    wit_bindgen::generate!({
        path: "../wit",
        world: "deploy-step-plugin",
        runtime_path: "::capstan_sdk::__wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "export_deploy_step",
        default_bindings_module: "::capstan_sdk::__deploy_step",
        with: {
            "capstan:plugin/types@0.1.0": crate::__host::capstan::plugin::types,
            "capstan:plugin/log@0.1.0": crate::__host::capstan::plugin::log,
            "capstan:plugin/config@0.1.0": crate::__host::capstan::plugin::config,
            "capstan:plugin/kv@0.1.0": crate::__host::capstan::plugin::kv,
            "capstan:plugin/secrets@0.1.0": crate::__host::capstan::plugin::secrets,
            "capstan:plugin/fs@0.1.0": crate::__host::capstan::plugin::fs,
            "capstan:plugin/kube@0.1.0": crate::__host::capstan::plugin::kube,
        },
    });
}

#[doc(hidden)]
pub mod __metrics_source {
    wit_bindgen::generate!({
        path: "../wit",
        world: "metrics-source-plugin",
        runtime_path: "::capstan_sdk::__wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "export_metrics_source",
        default_bindings_module: "::capstan_sdk::__metrics_source",
        with: {
            "capstan:plugin/types@0.1.0": crate::__host::capstan::plugin::types,
            "capstan:plugin/log@0.1.0": crate::__host::capstan::plugin::log,
            "capstan:plugin/config@0.1.0": crate::__host::capstan::plugin::config,
            "capstan:plugin/kv@0.1.0": crate::__host::capstan::plugin::kv,
            "capstan:plugin/secrets@0.1.0": crate::__host::capstan::plugin::secrets,
            "capstan:plugin/fs@0.1.0": crate::__host::capstan::plugin::fs,
            "capstan:plugin/kube@0.1.0": crate::__host::capstan::plugin::kube,
        },
    });
}

#[doc(hidden)]
pub mod __alert_handler {
    wit_bindgen::generate!({
        path: "../wit",
        world: "alert-handler-plugin",
        runtime_path: "::capstan_sdk::__wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "export_alert_handler",
        default_bindings_module: "::capstan_sdk::__alert_handler",
        with: {
            "capstan:plugin/types@0.1.0": crate::__host::capstan::plugin::types,
            "capstan:plugin/log@0.1.0": crate::__host::capstan::plugin::log,
            "capstan:plugin/config@0.1.0": crate::__host::capstan::plugin::config,
            "capstan:plugin/kv@0.1.0": crate::__host::capstan::plugin::kv,
            "capstan:plugin/secrets@0.1.0": crate::__host::capstan::plugin::secrets,
            "capstan:plugin/fs@0.1.0": crate::__host::capstan::plugin::fs,
            "capstan:plugin/kube@0.1.0": crate::__host::capstan::plugin::kube,
        },
    });
}

pub use __host::capstan::plugin::types::Error;

/// Exports a type implementing [`alert_handler::AlertHandler`] as the plugin.
pub use __alert_handler::export_alert_handler;
/// Exports a type implementing [`deploy_step::DeployStep`] as the plugin.
pub use __deploy_step::export_deploy_step;
/// Exports a type implementing [`metrics_source::MetricsSource`] as the plugin.
pub use __metrics_source::export_metrics_source;
/// Exports a type implementing [`provisioner::Provisioner`] as the plugin.
pub use __provisioner::export_provisioner;

/// Key/value pairs as WIT carries them (labels, outputs, fields).
pub type KeyValues = Vec<(String, String)>;

/// The provisioner role: `plan`, `apply`, `destroy`. Export with [`export_provisioner!`].
pub mod provisioner {
    pub use crate::__provisioner::exports::capstan::plugin::provisioner::{
        DesiredObject, DesiredState as Plan, Guest as Provisioner, ObjectRef, Report,
    };
}

/// The deploy-step role: `run`, `rollback`. Export with [`export_deploy_step!`].
pub mod deploy_step {
    pub use crate::__deploy_step::exports::capstan::plugin::deploy_step::{
        Context, Guest as DeployStep, Outcome, StepResult,
    };
}

/// The metrics-source role: `collect`. Export with [`export_metrics_source!`].
pub mod metrics_source {
    pub use crate::__metrics_source::exports::capstan::plugin::metrics_source::{
        Guest as MetricsSource, MetricFamily, MetricType, Sample,
    };
}

/// The alert-handler role: `handle`. Export with [`export_alert_handler!`].
pub mod alert_handler {
    pub use crate::__alert_handler::exports::capstan::plugin::alert_handler::{
        Action, Alert, AlertGroup, Guest as AlertHandler, KubeOperation, Notification,
        PipelineRequest, Silence,
    };
}

/// Structured logging, attributed by the host to this plugin and invocation.
pub mod log {
    use crate::__host::capstan::plugin::log as host;
    pub use host::Level;

    /// Logs `message` at `level` with structured `fields`.
    pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        host::log(level, message, &fields);
    }

    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message, &[]);
    }

    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message, &[]);
    }

    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message, &[]);
    }

    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message, &[]);
    }
}

/// The plugin's settings from the `[settings]` table of its manifest.
pub mod config {
    use crate::__host::capstan::plugin::config as host;

    /// The setting `key`, if present.
    pub fn get(key: &str) -> Option<String> {
        host::get(key)
    }

    /// The setting `key`, or `default`.
    pub fn get_or(key: &str, default: &str) -> String {
        host::get(key).unwrap_or_else(|| default.to_string())
    }

    /// Every setting, sorted by key.
    pub fn all() -> Vec<(String, String)> {
        host::all()
    }
}

pub mod http;
pub mod tcp;

/// Key-value state private to this plugin (needs `[grants.kv]`).
pub mod kv {
    pub use crate::__host::capstan::plugin::kv::{delete, get, list_keys, set, set_if_absent};
}

/// Named secrets (needs `[grants.secrets]`).
pub mod secrets {
    pub use crate::__host::capstan::plugin::secrets::get;
}

/// Files under granted mounts (needs `[[grants.fs]]`).
pub mod fs {
    pub use crate::__host::capstan::plugin::fs::{list_dir, read_file, remove_file, write_file};
}

/// Kubernetes within the plugin's `[[grants.kube]]` scopes.
///
/// [`apply`] is server-side apply, forced only if the grant has `force = true`.
/// [`apply_checked`] returns a field-manager conflict typed, to tell which
/// manager owns which field:
///
/// ```no_run
/// use capstan_sdk::kube::{self, ApplyError};
///
/// let manifest = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"team-a"},"data":{"k":"v"}}"#;
/// match kube::apply_checked("test", manifest, false) {
///     Ok(object) => capstan_sdk::log::info(&object),
///     Err(ApplyError::Conflict(owned)) => {
///         for c in owned {
///             capstan_sdk::log::warn(&format!("{} owns {}", c.manager, c.field));
///         }
///     }
///     Err(ApplyError::Error(e)) => capstan_sdk::log::error(&format!("{e:?}")),
/// }
/// ```
pub mod kube {
    pub use crate::__host::capstan::plugin::kube::{
        ApplyError, FieldConflict, ObjectRef, Rollout, apply, apply_checked, delete, get, list,
        patch, rollout_status,
    };

    /// Lets `?` turn an [`ApplyError`] into the plugin's [`crate::Error`]: a
    /// conflict becomes `failed`, naming each manager and field.
    impl From<ApplyError> for crate::Error {
        fn from(e: ApplyError) -> crate::Error {
            match e {
                ApplyError::Error(e) => e,
                ApplyError::Conflict(owned) => {
                    let owned: Vec<String> = owned
                        .iter()
                        .map(|c| format!("{} owns {}", c.manager, c.field))
                        .collect();
                    crate::Error::Failed(format!("field manager conflict: {}", owned.join(", ")))
                }
            }
        }
    }
}

/// Parses JSON text (params, specs) into `T`, mapping failures to
/// [`Error::InvalidInput`] with serde's message.
pub fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Error> {
    let text = if text.trim().is_empty() { "null" } else { text };
    serde_json::from_str(text).map_err(|e| Error::InvalidInput(e.to_string()))
}

/// Whether `s` is a valid Kubernetes name (DNS-1123 label): 1-63 characters
/// of `a-z`, `0-9` and `-`, starting and ending with an alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Looks up `key` in a key/value list.
pub fn lookup<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}
