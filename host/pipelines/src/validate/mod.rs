//! Validation of a parsed pipeline at load time. It reports every problem at
//! once, each naming the file, the step and the field, e.g.
//! `pipelines/deploy.yaml: step "prod": needs: unknown step "tset"`.
//!
//! Plugin existence and roles come from a [`PluginCatalog`] the host passes
//! in (the registry, later); tests use a fake.

mod exprs;
mod graph;
mod steps;

use std::fmt;

use crate::model::{Pipeline, Trigger};

pub use graph::{ancestors, cycles, descendants};

/// The role a plugin must have to be called by a step.
pub const DEPLOY_STEP_ROLE: &str = "deploy-step";

/// Where plugins are looked up.
pub trait PluginCatalog {
    /// The role (`deploy-step`, `metrics-source`, ...) of plugin `name` at
    /// `version` (`None`: the active version), or `None` if there is none.
    fn kind_of(&self, name: &str, version: Option<&str>) -> Option<String>;
}

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// The file, as the host names it (e.g. `pipelines/deploy.yaml`).
    pub file: String,
    /// The step id, when the problem is in a step.
    pub step: Option<String>,
    /// The field, e.g. `needs`, `params.image`, `triggers[0].push.branches`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        if let Some(step) = &self.step {
            write!(f, "step {step:?}: ")?;
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in one file, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

/// Collects errors for one file.
pub(crate) struct Report<'a> {
    file: &'a str,
    errors: Vec<ValidationError>,
}

impl Report<'_> {
    pub(crate) fn add(&mut self, step: Option<&str>, field: &str, message: impl Into<String>) {
        self.errors.push(ValidationError {
            file: self.file.to_string(),
            step: step.map(str::to_string),
            field: field.to_string(),
            message: message.into(),
        });
    }
}

/// Whether `s` can be read in expressions as `x.s`: a CEL identifier.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks `pipeline` (parsed from `file`) and returns every problem found.
pub fn validate(
    file: &str,
    pipeline: &Pipeline,
    catalog: &dyn PluginCatalog,
) -> Result<(), ValidationErrors> {
    let mut r = Report {
        file,
        errors: Vec::new(),
    };
    check_header(&mut r, pipeline);
    steps::check_steps(&mut r, pipeline, catalog);
    graph::check_graph(&mut r, pipeline);
    exprs::check_expressions(&mut r, pipeline);
    if r.errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(r.errors))
    }
}

fn check_header(r: &mut Report<'_>, p: &Pipeline) {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !name_ok(&p.name) {
        r.add(
            None,
            "name",
            format!("{:?} must be letters, digits, '-', '_' or '.'", p.name),
        );
    }
    if !name_ok(&p.project) {
        r.add(
            None,
            "project",
            format!("{:?} is not a project name", p.project),
        );
    }
    if p.concurrency == Some(0) {
        r.add(
            None,
            "concurrency",
            "must be at least 1 (omit it for no limit)",
        );
    }
    if p.steps.is_empty() {
        r.add(None, "steps", "a pipeline needs at least one step");
    }
    for (i, t) in p.triggers.iter().enumerate() {
        let (kind, problems) = match t {
            Trigger::Push(t) => ("push", t.check()),
            Trigger::Cron(t) => ("cron", t.check()),
            Trigger::Manual => continue,
        };
        for (field, msg) in problems {
            r.add(None, &format!("triggers[{i}].{kind}.{field}"), msg);
        }
    }
    for (name, spec) in &p.params {
        let field = format!("params.{name}");
        if !is_identifier(name) {
            r.add(
                None,
                &field,
                "parameter names are letters, digits and '_' (expressions read params.<name>)",
            );
        }
        let is_enum = spec.kind == crate::model::ParamType::Enum;
        if is_enum && spec.values.is_empty() {
            r.add(
                None,
                &format!("{field}.values"),
                "an enum parameter needs its values",
            );
        }
        if !is_enum && !spec.values.is_empty() {
            r.add(
                None,
                &format!("{field}.values"),
                "only enum parameters have values",
            );
        }
        if let Some(Err(e)) = spec.default.as_ref().map(|d| spec.check_value(d)) {
            r.add(None, &format!("{field}.default"), e);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
