//! Expressions: `${{ expr }}` templates in step params and `if` conditions,
//! both CEL over four variables:
//!
//! - `trigger`: what started the run ([`TRIGGER_FIELDS`]);
//! - `params`: the run's parameters;
//! - `steps`: `steps.<id>.outputs.<name>` and `steps.<id>.status`;
//! - `run`: `run.id`, `run.pipeline`, `run.project`, `run.status` (the outcome
//!   so far, for `finally` conditions).
//!
//! A string that is exactly one `${{ }}` becomes the expression's value with
//! its JSON type (`replicas: "${{ params.replicas }}"` stays a number); any
//! other string is text with each expression's value spliced in (`null` as
//! nothing). There is no escape for a literal `${{`.

mod refs;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, Program};
use serde_json::Value;

pub use refs::references;

/// Fields of `trigger` that expressions may read. `kind` is `push`, `cron`,
/// `manual` or `alert`; git fields are empty for other kinds.
pub const TRIGGER_FIELDS: &[&str] = &[
    "kind",
    "provider",
    "repo",
    "ref",
    "branch",
    "tag",
    "sha",
    "pusher",
    "delivery",
    "started_by",
];

/// Fields of `run` that expressions may read.
pub const RUN_FIELDS: &[&str] = &["id", "pipeline", "project", "status"];

/// Fields of `steps.<id>` that expressions may read.
pub const STEP_FIELDS: &[&str] = &["outputs", "status"];

/// Why an expression could not be compiled or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    /// A `${{` with no closing `}}`.
    #[error("unclosed \"${{{{\" in {0:?}")]
    Unclosed(String),
    /// The expression is not valid CEL.
    #[error("bad expression {expr:?}: {message}")]
    Syntax {
        /// The expression text.
        expr: String,
        /// The parser's complaint.
        message: String,
    },
    /// The expression failed at run time (missing key, wrong types...).
    #[error("expression {expr:?} failed: {message}")]
    Eval {
        /// The expression text.
        expr: String,
        /// What went wrong.
        message: String,
    },
    /// An `if` condition gave something other than a bool.
    #[error("condition {expr:?} gave {got}, not true or false")]
    NotBool {
        /// The expression text.
        expr: String,
        /// The value it gave, as JSON.
        got: String,
    },
}

/// A piece of a template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal text.
    Text(String),
    /// The source of a `${{ }}` expression, trimmed.
    Expr(String),
}

/// Splits `s` into text and `${{ }}` expressions.
pub fn segments(s: &str) -> Result<Vec<Segment>, ExprError> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${{") {
        if start > 0 {
            out.push(Segment::Text(rest[..start].to_string()));
        }
        let after = &rest[start + 3..];
        let end = after
            .find("}}")
            .ok_or_else(|| ExprError::Unclosed(s.to_string()))?;
        out.push(Segment::Expr(after[..end].trim().to_string()));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Segment::Text(rest.to_string()));
    }
    Ok(out)
}

/// Compiles one CEL expression.
pub fn compile(expr: &str) -> Result<Program, ExprError> {
    Program::compile(expr).map_err(|e| ExprError::Syntax {
        expr: expr.to_string(),
        message: e
            .errors
            .iter()
            .map(|p| format!("{} (column {})", p.msg, p.pos.1 + 1))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// The source of an `if`: the text itself, or what one `${{ }}` wraps.
pub fn condition_source(cond: &str) -> Result<String, ExprError> {
    match segments(cond.trim())?.as_slice() {
        [Segment::Expr(e)] => Ok(e.clone()),
        _ => Ok(cond.trim().to_string()),
    }
}

/// What one step looks like to expressions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepView {
    /// `pending`, `running`, `succeeded`, `failed`, `skipped`, ...
    pub status: String,
    /// The outputs it returned (empty unless it succeeded).
    pub outputs: BTreeMap<String, Value>,
}

/// The variables expressions see.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    /// What started the run.
    pub trigger: Value,
    /// The run's parameters.
    pub params: BTreeMap<String, Value>,
    /// Steps by id.
    pub steps: BTreeMap<String, StepView>,
    /// `{id, pipeline, project, status}` of the run.
    pub run: Value,
}

impl Scope {
    fn cel_context(&self) -> Context<'static> {
        let mut ctx = Context::default();
        ctx.add_variable_from_value("trigger", to_cel(&self.trigger));
        ctx.add_variable_from_value("params", map_to_cel(&self.params));
        let steps: HashMap<Key, cel::Value> = self
            .steps
            .iter()
            .map(|(id, v)| {
                let view = HashMap::from([
                    (
                        key("status"),
                        cel::Value::String(Arc::new(v.status.clone())),
                    ),
                    (key("outputs"), map_to_cel(&v.outputs)),
                ]);
                (key(id), cel_map(view))
            })
            .collect();
        ctx.add_variable_from_value("steps", cel_map(steps));
        ctx.add_variable_from_value("run", to_cel(&self.run));
        ctx
    }

    /// Evaluates one expression to JSON.
    pub fn eval(&self, expr: &str) -> Result<Value, ExprError> {
        let program = compile(expr)?;
        let fail = |message: String| ExprError::Eval {
            expr: expr.to_string(),
            message,
        };
        let value = program
            .execute(&self.cel_context())
            .map_err(|e| fail(e.to_string()))?;
        value.json().map_err(|e| fail(e.to_string()))
    }

    /// Evaluates an `if` condition, which must give a bool.
    pub fn condition(&self, cond: &str) -> Result<bool, ExprError> {
        let expr = condition_source(cond)?;
        match self.eval(&expr)? {
            Value::Bool(b) => Ok(b),
            other => Err(ExprError::NotBool {
                expr,
                got: other.to_string(),
            }),
        }
    }

    /// Renders one template string.
    pub fn render_str(&self, s: &str) -> Result<Value, ExprError> {
        let segs = segments(s)?;
        if let [Segment::Expr(e)] = segs.as_slice() {
            return self.eval(e);
        }
        let mut out = String::new();
        for seg in segs {
            match seg {
                Segment::Text(t) => out.push_str(&t),
                Segment::Expr(e) => match self.eval(&e)? {
                    Value::String(v) => out.push_str(&v),
                    Value::Null => {}
                    v => out.push_str(&v.to_string()),
                },
            }
        }
        Ok(Value::String(out))
    }

    /// Renders every string inside `v` (object keys are left as written).
    pub fn render(&self, v: &Value) -> Result<Value, ExprError> {
        Ok(match v {
            Value::String(s) => self.render_str(s)?,
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.render(i))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.render(v)?)))
                    .collect::<Result<_, ExprError>>()?,
            ),
            other => other.clone(),
        })
    }
}

fn key(s: &str) -> Key {
    Key::String(Arc::new(s.to_string()))
}

fn cel_map(map: HashMap<Key, cel::Value>) -> cel::Value {
    cel::Value::Map(Map { map: Arc::new(map) })
}

fn map_to_cel(map: &BTreeMap<String, Value>) -> cel::Value {
    cel_map(map.iter().map(|(k, v)| (key(k), to_cel(v))).collect())
}

/// JSON to CEL. Integers become CEL `int` when they fit, so that
/// `params.replicas + 1` works (CEL has no int/uint arithmetic).
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => cel_map(map.iter().map(|(k, v)| (key(k), to_cel(v))).collect()),
    }
}

/// Size limits on a step's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Largest single output, as JSON text, in bytes.
    pub per_output: usize,
    /// Largest sum over all outputs of a step.
    pub total: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        Self {
            per_output: 64 * 1024,
            total: 256 * 1024,
        }
    }
}

/// Checks a step's outputs: each declared name present, none oversize.
/// The message says which output and by how much, never truncating silently.
pub fn check_outputs(
    outputs: &BTreeMap<String, Value>,
    declared: &[&str],
    limits: OutputLimits,
) -> Result<(), String> {
    if let Some(missing) = declared.iter().find(|d| !outputs.contains_key(**d)) {
        return Err(format!("declared output {missing:?} was not returned"));
    }
    let mut total = 0;
    for (name, v) in outputs {
        let size = v.to_string().len();
        if size > limits.per_output {
            return Err(format!(
                "output {name:?} is {size} bytes, over the {}-byte cap for one output; \
                 store large data elsewhere and pass a reference",
                limits.per_output
            ));
        }
        total += size;
    }
    if total > limits.total {
        return Err(format!(
            "outputs total {total} bytes, over the {}-byte cap for one step",
            limits.total
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
