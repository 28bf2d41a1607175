//! The pipeline document as written in YAML: name, project, triggers, typed
//! parameters, environments, steps and `finally` steps.
//!
//! Parsing is strict (`deny_unknown_fields`) and only checks shapes; what needs
//! the whole document (unknown `needs`, cycles, expressions, plugin roles) is
//! checked by [`mod@crate::validate`], which reports every error at once.

mod params;
mod step;
mod trigger;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use params::{ParamError, ParamSpec, ParamType, resolve_params};
pub use step::{
    ApprovalSpec, Approvers, Backoff, DurationText, ErrorKind, OnFailure, PluginRef, Retries, Step,
};
pub use trigger::{CronTrigger, Provider, PushEvent, PushTrigger, Trigger};

/// A deploy pipeline, as parsed from one YAML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Unique name of the pipeline within its project.
    pub name: String,
    /// The owning project; `default` when omitted.
    #[serde(default = "default_project")]
    pub project: String,
    /// What starts a run: git pushes, cron schedules, manual starts.
    #[serde(default)]
    pub triggers: Vec<Trigger>,
    /// Typed run parameters, by name.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// Environments steps deploy into, by name; each has a lock policy.
    #[serde(default)]
    pub environments: BTreeMap<String, Environment>,
    /// Maximum runs of this pipeline in flight at once (`None`: no limit).
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// The steps, a DAG through their `needs`.
    pub steps: Vec<Step>,
    /// Steps that always run once the main steps (and any rollback) are done.
    #[serde(default)]
    pub finally: Vec<Step>,
}

fn default_project() -> String {
    "default".into()
}

/// An environment a step deploys into; one run at a time holds its lock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// What happens to runs waiting for the lock.
    #[serde(default)]
    pub lock: LockPolicy,
}

/// How runs waiting for an environment's lock are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockPolicy {
    /// Waiting runs get the lock oldest first; none is dropped.
    #[default]
    Queue,
    /// A newer waiting run supersedes older waiting ones, which end as
    /// superseded (with the reason recorded), never silently.
    Supersede,
}

impl Pipeline {
    /// Parses a pipeline from YAML text. Shape errors (unknown fields, wrong
    /// types, duplicate keys) come back with their line and column; call
    /// [`crate::validate::validate`] afterwards, or use [`crate::load`].
    pub fn from_yaml(text: &str) -> Result<Self, serde_saphyr::Error> {
        serde_saphyr::from_str(text)
    }

    /// A main or `finally` step by id.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.all_steps().find(|s| s.id == id)
    }

    /// Main steps, then `finally` steps.
    pub fn all_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().chain(self.finally.iter())
    }

    /// Whether `id` names a `finally` step.
    pub fn is_finally(&self, id: &str) -> bool {
        self.finally.iter().any(|s| s.id == id)
    }
}

#[cfg(test)]
mod tests;
