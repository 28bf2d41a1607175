//! Normalisation and diff: what kubectl diff, Flux and Argo CD's server-side
//! diff converged on. Server bookkeeping (managedFields, resourceVersion,
//! uid, generation, creationTimestamp, selfLink, status, the
//! last-applied annotation) is removed from both sides; Secret `data` and
//! `stringData` values are masked the way `kubectl diff` does (`***`,
//! `*** (before)`, `*** (after)`). The diff is unified, over a YAML
//! rendering of each side.

use serde_json::{Map, Value};

const NOISE: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "uid",
    "generation",
    "creationTimestamp",
    "selfLink",
];
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The object without server bookkeeping.
pub fn normalize(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in NOISE {
                meta.remove(*k);
            }
            if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove(LAST_APPLIED);
            }
            for k in ["annotations", "labels"] {
                if meta
                    .get(k)
                    .and_then(Value::as_object)
                    .is_some_and(Map::is_empty)
                {
                    meta.remove(k);
                }
            }
        }
    }
    v
}

/// Masks Secret values on both sides: equal values become `***`,
/// different ones `*** (before)` / `*** (after)`.
pub fn mask_secrets(live: &mut Value, merged: &mut Value) {
    let is_secret = |v: &Value| v.get("kind").and_then(Value::as_str) == Some("Secret");
    if !is_secret(live) && !is_secret(merged) {
        return;
    }
    for field in ["data", "stringData"] {
        let before = live.get(field).cloned();
        let after = merged.get(field).cloned();
        let keys: Vec<String> = [&before, &after]
            .iter()
            .filter_map(|m| m.as_ref().and_then(Value::as_object))
            .flat_map(|m| m.keys().cloned())
            .collect();
        for key in keys {
            let b = before.as_ref().and_then(|m| m.get(&key));
            let a = after.as_ref().and_then(|m| m.get(&key));
            let (bm, am) = if b == a {
                ("***", "***")
            } else {
                ("*** (before)", "*** (after)")
            };
            if b.is_some()
                && let Some(m) = live.get_mut(field).and_then(Value::as_object_mut)
            {
                m.insert(key.clone(), Value::String(bm.into()));
            }
            if a.is_some()
                && let Some(m) = merged.get_mut(field).and_then(Value::as_object_mut)
            {
                m.insert(key.clone(), Value::String(am.into()));
            }
        }
    }
}

/// The normalized, masked live and merged objects and their unified diff
/// (empty when they are the same). `None` stands for an absent object.
pub fn diff(name: &str, live: Option<&Value>, merged: Option<&Value>) -> (bool, String) {
    let mut l = live.map(normalize).unwrap_or(Value::Null);
    let mut m = merged.map(normalize).unwrap_or(Value::Null);
    let same = l == m;
    mask_secrets(&mut l, &mut m);
    if same {
        return (true, String::new());
    }
    let text = |v: &Value| {
        if v.is_null() {
            String::new()
        } else {
            to_yaml(v)
        }
    };
    let (a, b) = (text(&l), text(&m));
    let out = similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header(&format!("live/{name}"), &format!("merged/{name}"))
        .to_string();
    (false, out)
}

/// A YAML rendering of a JSON value (block style, keys in order).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let plain = !s.is_empty()
                && !s.contains([
                    ':', '#', '\n', '"', '\'', '{', '}', '[', ']', ',', '&', '*', '!', '|', '>',
                    '%', '@', '`',
                ])
                && !s.starts_with([' ', '-', '?'])
                && !s.ends_with(' ')
                && s.parse::<f64>().is_err()
                && !matches!(s.as_str(), "true" | "false" | "null" | "yes" | "no" | "~");
            if plain {
                s.clone()
            } else {
                Value::String(s.clone()).to_string()
            }
        }
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty()) || matches!(v, Value::Array(a) if !a.is_empty())
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, val) in m {
                if is_block(val) {
                    out.push_str(&format!("{pad}{}:\n", scalar(&Value::String(k.clone()))));
                    let child = if val.is_array() { indent } else { indent + 2 };
                    emit(val, child, out);
                } else {
                    out.push_str(&format!(
                        "{pad}{}: {}\n",
                        scalar(&Value::String(k.clone())),
                        scalar(val)
                    ));
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                if is_block(item) {
                    let mut inner = String::new();
                    emit(item, indent + 2, &mut inner);
                    let trimmed = inner.trim_start_matches(' ');
                    out.push_str(&format!("{pad}- {trimmed}"));
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(item)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bookkeeping_is_not_a_difference() {
        let live = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "resourceVersion": "7", "uid": "u", "managedFields": [{}],
                "creationTimestamp": "t", "annotations": {}}, "data": {"x": "1"}});
        let merged = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "resourceVersion": "8"}, "data": {"x": "1"}});
        assert_eq!(diff("a", Some(&live), Some(&merged)), (true, String::new()));
        let changed = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a"}, "data": {"x": "2"}});
        let (same, text) = diff("a", Some(&live), Some(&changed));
        assert!(!same);
        assert!(text.contains("-  x: \"1\"\n+  x: \"2\""), "{text}");
    }

    #[test]
    fn secret_values_are_masked() {
        let live = json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "c2VjcmV0", "b": "eA=="}});
        let merged = json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "c2VjcmV0", "b": "eQ=="}});
        let (same, text) = diff("s", Some(&live), Some(&merged));
        assert!(!same);
        assert!(
            !text.contains("c2VjcmV0") && !text.contains("eA==") && !text.contains("eQ=="),
            "{text}"
        );
        assert!(
            text.contains("a: \"***\"")
                && text.contains("*** (before)")
                && text.contains("*** (after)"),
            "{text}"
        );
        let (_, created) = diff("s", None, Some(&merged));
        assert!(
            !created.contains("eQ==") && created.contains("+data:"),
            "{created}"
        );
    }

    #[test]
    fn yaml_rendering() {
        let v = json!({"a": {"b": [1, {"c": "d", "e": "x:y"}], "f": []}, "g": "true"});
        assert_eq!(
            to_yaml(&v),
            "a:\n  b:\n  - 1\n  - c: d\n    e: \"x:y\"\n  f: []\ng: \"true\"\n"
        );
    }
}
