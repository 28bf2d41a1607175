//! Typed run parameters: declaration, type checks, and resolving the values a
//! run starts with (given values, coerced from CLI text, plus defaults).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamType {
    /// Any text.
    String,
    /// A JSON number.
    Number,
    /// `true` or `false`.
    Bool,
    /// One of `values`.
    Enum,
}

/// A declared parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// The value type.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// Used when a run does not give the parameter.
    #[serde(default)]
    pub default: Option<Value>,
    /// A run must give it (only meaningful without a default).
    #[serde(default)]
    pub required: bool,
    /// Allowed values of an `enum` parameter.
    #[serde(default)]
    pub values: Vec<String>,
    /// Shown in the UI and CLI.
    #[serde(default)]
    pub description: Option<String>,
}

impl ParamSpec {
    /// Why `v` is not a value of this parameter, if it is not.
    pub fn check_value(&self, v: &Value) -> Result<(), String> {
        let ok = match self.kind {
            ParamType::String => v.is_string(),
            ParamType::Number => v.is_number(),
            ParamType::Bool => v.is_boolean(),
            ParamType::Enum => v
                .as_str()
                .is_some_and(|s| self.values.iter().any(|x| x == s)),
        };
        if ok {
            return Ok(());
        }
        Err(match self.kind {
            ParamType::Enum => format!("{v} is not one of {:?}", self.values),
            kind => format!("{v} is not a {}", type_name(kind)),
        })
    }

    /// `v` converted to this type when it is text (as the CLI's `k=v` gives).
    fn coerce(&self, v: Value) -> Value {
        let Value::String(s) = &v else { return v };
        match self.kind {
            ParamType::Number => s
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| s.parse::<f64>().map(Value::from))
                .unwrap_or(v),
            ParamType::Bool => s.parse::<bool>().map(Value::Bool).unwrap_or(v),
            _ => v,
        }
    }
}

fn type_name(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => "string",
        ParamType::Number => "number",
        ParamType::Bool => "bool",
        ParamType::Enum => "enum",
    }
}

/// A parameter a run was started with that does not fit the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// The parameter.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "param {:?}: {}", self.name, self.message)
    }
}

/// The parameters a run starts with: `given` (text coerced to the declared
/// type) over the defaults. Reports every unknown, missing or ill-typed one.
pub fn resolve_params(
    specs: &BTreeMap<String, ParamSpec>,
    given: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, Vec<ParamError>> {
    let mut errors = Vec::new();
    let err = |name: &str, message: String| ParamError {
        name: name.to_string(),
        message,
    };
    for name in given.keys().filter(|n| !specs.contains_key(*n)) {
        errors.push(err(name, "unknown parameter".into()));
    }
    let mut out = BTreeMap::new();
    for (name, spec) in specs {
        let value = match (given.get(name), &spec.default) {
            (Some(v), _) => spec.coerce(v.clone()),
            (None, Some(d)) => d.clone(),
            (None, None) if spec.required => {
                errors.push(err(name, "required but not given".into()));
                continue;
            }
            (None, None) => continue,
        };
        match spec.check_value(&value) {
            Ok(()) => {
                out.insert(name.clone(), value);
            }
            Err(e) => errors.push(err(name, e)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}
