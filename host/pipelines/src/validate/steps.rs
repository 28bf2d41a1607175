//! Checks on each step alone: ids, plugin or approval, plugin role,
//! durations, retries, environment, failure policy and declared outputs.

use std::collections::BTreeSet;

use super::{DEPLOY_STEP_ROLE, PluginCatalog, Report, is_identifier};
use crate::model::{ApprovalSpec, OnFailure, Pipeline, Retries, Step};

/// Largest retry count accepted; more is almost surely a mistake.
const MAX_RETRIES: u32 = 100;

pub(super) fn check_steps(r: &mut Report<'_>, p: &Pipeline, catalog: &dyn PluginCatalog) {
    let mut seen = BTreeSet::new();
    for (step, is_finally) in p
        .steps
        .iter()
        .map(|s| (s, false))
        .chain(p.finally.iter().map(|s| (s, true)))
    {
        let id = Some(step.id.as_str());
        if !is_identifier(&step.id) {
            r.add(
                id,
                "id",
                "step ids are letters, digits and '_' (expressions read steps.<id>)",
            );
        }
        if !seen.insert(step.id.as_str()) {
            r.add(id, "id", "duplicate step id");
        }
        match (&step.plugin, &step.approval) {
            (None, None) => r.add(id, "plugin", "a step needs either `plugin` or `approval`"),
            (Some(_), Some(_)) => r.add(
                id,
                "approval",
                "a step has `plugin` or `approval`, not both",
            ),
            (Some(plugin), None) => {
                match catalog.kind_of(&plugin.name, plugin.version.as_deref()) {
                    None => r.add(
                        id,
                        "plugin",
                        format!("unknown plugin {:?}", plugin.to_string()),
                    ),
                    Some(kind) if kind != DEPLOY_STEP_ROLE => r.add(
                        id,
                        "plugin",
                        format!(
                            "plugin {:?} is a {kind}, not a {DEPLOY_STEP_ROLE}",
                            plugin.name
                        ),
                    ),
                    Some(_) => {}
                }
            }
            (None, Some(approval)) => check_approval(r, step, approval),
        }
        if let Some(Err(e)) = step.timeout.as_ref().map(|t| t.ms()) {
            r.add(id, "timeout", e);
        }
        if let Some(retries) = &step.retries {
            check_retries(r, step, retries);
        }
        if let Some(env) = &step.environment
            && !p.environments.contains_key(env)
        {
            let declared: Vec<&str> = p.environments.keys().map(String::as_str).collect();
            r.add(
                id,
                "environment",
                format!(
                    "unknown environment {env:?} (declared: {})",
                    list(&declared)
                ),
            );
        }
        if is_finally && step.on_failure == OnFailure::Rollback {
            r.add(
                id,
                "on_failure",
                "a finally step cannot roll back (use stop or continue)",
            );
        }
        let mut outs = BTreeSet::new();
        for out in &step.outputs {
            if !is_identifier(out) {
                r.add(
                    id,
                    "outputs",
                    format!("{out:?}: output names are letters, digits and '_'"),
                );
            }
            if !outs.insert(out) {
                r.add(id, "outputs", format!("{out:?} declared twice"));
            }
        }
    }
}

fn check_approval(r: &mut Report<'_>, step: &Step, a: &ApprovalSpec) {
    let id = Some(step.id.as_str());
    if a.required == 0 {
        r.add(id, "approval.required", "must be at least 1");
    }
    if a.approvers.role.trim().is_empty() {
        r.add(id, "approval.approvers.role", "must name a role");
    }
    if let Some(Err(e)) = a.timeout.as_ref().map(|t| t.ms()) {
        r.add(id, "approval.timeout", e);
    }
    let not_for_approval = [
        ("params", !step.params.is_empty()),
        ("retries", step.retries.is_some()),
        ("environment", step.environment.is_some()),
        ("outputs", !step.outputs.is_empty()),
        ("timeout", step.timeout.is_some()),
    ];
    for (field, set) in not_for_approval {
        if set {
            r.add(
                id,
                field,
                "not used by an approval step (its timeout is approval.timeout)",
            );
        }
    }
}

fn check_retries(r: &mut Report<'_>, step: &Step, retries: &Retries) {
    let id = Some(step.id.as_str());
    if retries.count > MAX_RETRIES {
        r.add(
            id,
            "retries.count",
            format!("{} is more than {MAX_RETRIES}", retries.count),
        );
    }
    let b = &retries.backoff;
    if let Err(e) = b.initial.ms() {
        r.add(id, "retries.backoff.initial", e);
    }
    match (b.max.ms(), b.initial.ms()) {
        (Err(e), _) => r.add(id, "retries.backoff.max", e),
        (Ok(max), Ok(initial)) if max < initial => {
            r.add(
                id,
                "retries.backoff.max",
                "is shorter than retries.backoff.initial",
            );
        }
        _ => {}
    }
    if !(b.factor.is_finite() && (1.0..=100.0).contains(&b.factor)) {
        r.add(
            id,
            "retries.backoff.factor",
            format!("{} is not between 1 and 100", b.factor),
        );
    }
    if retries.on.is_empty() {
        r.add(
            id,
            "retries.on",
            "names no error kind, so nothing would be retried",
        );
    }
}

pub(super) fn list(items: &[&str]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
