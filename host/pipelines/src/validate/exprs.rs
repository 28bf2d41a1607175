//! Checks on every `${{ }}` template in step params and every `if`: the CEL
//! must parse, and each variable path it reads must exist: a declared
//! parameter, a known trigger or run field, or an output declared by a step
//! this one (transitively) needs.

use std::collections::BTreeSet;

use serde_json::Value;

use super::Report;
use super::graph::ancestors;
use super::steps::list;
use crate::expr::{self, RUN_FIELDS, STEP_FIELDS, Segment, TRIGGER_FIELDS};
use crate::model::{Pipeline, Step};

/// What expressions in one step may read.
struct Visible<'a> {
    pipeline: &'a Pipeline,
    /// Steps whose `steps.<id>` this step may read.
    readable: BTreeSet<String>,
}

pub(super) fn check_expressions(r: &mut Report<'_>, p: &Pipeline) {
    for step in p.all_steps() {
        let mut readable = ancestors(p, &step.id);
        if p.is_finally(&step.id) {
            readable.extend(p.steps.iter().map(|s| s.id.clone()));
        }
        let visible = Visible {
            pipeline: p,
            readable,
        };
        for (name, value) in &step.params {
            check_value(r, &visible, step, &format!("params.{name}"), value);
        }
        if let Some(message) = step.approval.as_ref().and_then(|a| a.message.as_ref()) {
            let text = Value::String(message.clone());
            check_value(r, &visible, step, "approval.message", &text);
        }
        if let Some(cond) = &step.condition {
            match expr::condition_source(cond) {
                Ok(src) => check_expr(r, &visible, step, "if", &src),
                Err(e) => r.add(Some(&step.id), "if", e.to_string()),
            }
        }
    }
}

fn check_value(r: &mut Report<'_>, v: &Visible<'_>, step: &Step, field: &str, value: &Value) {
    match value {
        Value::String(s) => match expr::segments(s) {
            Ok(segs) => {
                for seg in segs {
                    if let Segment::Expr(e) = seg {
                        check_expr(r, v, step, field, &e);
                    }
                }
            }
            Err(e) => r.add(Some(&step.id), field, e.to_string()),
        },
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_value(r, v, step, &format!("{field}[{i}]"), item);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                check_value(r, v, step, &format!("{field}.{k}"), item);
            }
        }
        _ => {}
    }
}

fn check_expr(r: &mut Report<'_>, v: &Visible<'_>, step: &Step, field: &str, src: &str) {
    let program = match expr::compile(src) {
        Ok(p) => p,
        Err(e) => return r.add(Some(&step.id), field, e.to_string()),
    };
    for path in expr::references(&program) {
        if let Err(msg) = check_path(v, &path) {
            r.add(Some(&step.id), field, format!("{}: {msg}", path.join(".")));
        }
    }
}

fn check_path(v: &Visible<'_>, path: &[String]) -> Result<(), String> {
    let field = |i: usize| path.get(i).map(String::as_str);
    match (path[0].as_str(), field(1)) {
        (_, None) => Ok(()),
        ("params", Some(name)) => {
            if v.pipeline.params.contains_key(name) {
                Ok(())
            } else {
                let declared: Vec<&str> = v.pipeline.params.keys().map(String::as_str).collect();
                Err(format!(
                    "unknown parameter {name:?} (declared: {})",
                    list(&declared)
                ))
            }
        }
        ("trigger", Some(f)) => known(f, TRIGGER_FIELDS, "trigger"),
        ("run", Some(f)) => known(f, RUN_FIELDS, "run"),
        ("steps", Some(id)) => check_step_path(v, id, field(2), field(3)),
        (root, _) => Err(format!(
            "unknown variable {root:?} (expressions see trigger, params, steps and run)"
        )),
    }
}

fn known(f: &str, fields: &[&str], what: &str) -> Result<(), String> {
    if fields.contains(&f) {
        Ok(())
    } else {
        Err(format!(
            "{what} has no field {f:?} (it has {})",
            fields.join(", ")
        ))
    }
}

fn check_step_path(
    v: &Visible<'_>,
    id: &str,
    field: Option<&str>,
    output: Option<&str>,
) -> Result<(), String> {
    let Some(target) = v.pipeline.step(id) else {
        return Err(format!("unknown step {id:?}"));
    };
    if !v.readable.contains(id) {
        return Err(format!(
            "step {id:?} is not among this step's needs (direct or indirect), so it may not have run yet"
        ));
    }
    match (field, output) {
        (None, _) | (Some("outputs"), None) => Ok(()),
        (Some("outputs"), Some(out)) => {
            let declared = target.output_names();
            if declared.contains(&out) {
                Ok(())
            } else {
                Err(format!(
                    "step {id:?} declares no output {out:?} (it declares: {})",
                    list(&declared)
                ))
            }
        }
        (Some(f), _) => known(f, STEP_FIELDS, &format!("steps.{id}")),
    }
}
