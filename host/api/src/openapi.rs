//! Completes the generated OpenAPI document with the answers every route
//! can give because of the layers in front of it (authentication, rate and
//! in-flight limits, body limits, timeouts, storage), so that a client
//! generated from the document knows every status it may see, and merges
//! the schemas of flattened views into one object, so that a view of a
//! closed type (`deny_unknown_fields`) validates.

use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

/// Adds the common error answers to every operation that lacks them.
pub struct CommonResponses;

fn error(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| error(description));
}

fn complete(op: &mut Operation, path: &str, method: &str) {
    let public = op
        .security
        .as_ref()
        .is_some_and(|s| s.iter().all(|r| *r == Default::default()));
    if !public {
        add(op, "401", "No valid bearer token (`unauthorized`)");
        add(op, "403", "The token's role is too low here (`forbidden`)");
        add(
            op,
            "429",
            "The token's request rate is over its limit (`rate_limited`, `Retry-After`)",
        );
    }
    if path.contains('{') {
        add(op, "404", "No such resource (`not_found`)");
    }
    let has_query = op.parameters.as_ref().is_some_and(|p| {
        p.iter()
            .any(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Query)
    });
    if op.request_body.is_some() || has_query {
        add(op, "400", "Malformed request (`bad_request`)");
    }
    if op.request_body.is_some() {
        add(
            op,
            "413",
            "The body is over the limit (`payload_too_large`)",
        );
        add(
            op,
            "415",
            "The body is not of the documented content type (`bad_request`)",
        );
        add(
            op,
            "422",
            "The body does not have the documented shape (`bad_request`)",
        );
    }
    add(
        op,
        "503",
        "Too many requests in flight, or the database is locked (`overloaded`, `storage_busy`; `Retry-After`)",
    );
    let uploads_or_invokes =
        path == "/v1/plugins/{name}/invoke" || (path == "/v1/plugins" && method == "post");
    if !uploads_or_invokes {
        add(
            op,
            "408",
            "The request took longer than `request_timeout` (`request_timeout`)",
        );
    }
    if method != "get" {
        add(
            op,
            "507",
            "The data directory's disk is full; nothing changed (`insufficient_storage`)",
        );
    }
}

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops = [
                ("get", item.get.as_mut()),
                ("put", item.put.as_mut()),
                ("post", item.post.as_mut()),
                ("delete", item.delete.as_mut()),
                ("patch", item.patch.as_mut()),
            ];
            for (method, op) in ops {
                if let Some(op) = op {
                    complete(op, path, method);
                }
            }
        }
    }
}

/// The served document: the generated one with [`merge_flattened`] applied.
pub fn document() -> serde_json::Value {
    let mut doc =
        serde_json::to_value(<crate::ApiDoc as utoipa::OpenApi>::openapi()).unwrap_or_default();
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(serde_json::Value::as_object_mut)
    {
        merge_flattened(schemas);
    }
    doc
}

/// Merges `allOf` schemas that extend a closed object (`additionalProperties:
/// false`, from `deny_unknown_fields`) into one closed object. utoipa
/// documents a `#[serde(flatten)]`ed closed type that way, and no value can
/// satisfy it: the closed part forbids the view's own fields. (On JSON: utoipa's
/// schema types do not read back what they write.)
pub fn merge_flattened(schemas: &mut serde_json::Map<String, serde_json::Value>) {
    let names: Vec<String> = schemas.keys().cloned().collect();
    for name in names {
        if let Some(merged) = merged(schemas, &schemas[&name]) {
            schemas.insert(name, merged);
        }
    }
}

/// The object `schema` stands for, if it is an `allOf` of objects of which
/// one (by reference) is closed; the result is closed too.
fn merged(
    schemas: &serde_json::Map<String, serde_json::Value>,
    schema: &serde_json::Value,
) -> Option<serde_json::Value> {
    use serde_json::{Value, json};
    let items = schema.get("allOf")?.as_array()?;
    let mut parts = Vec::new();
    let mut closed = false;
    for item in items {
        let part = match item.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let target = schemas.get(r.strip_prefix("#/components/schemas/")?)?;
                closed |= target.get("additionalProperties") == Some(&Value::Bool(false));
                target
            }
            None => item,
        };
        if part.get("type") != Some(&json!("object")) {
            return None;
        }
        parts.push(part);
    }
    if !closed {
        return None;
    }
    let mut properties = serde_json::Map::new();
    let mut required: Vec<Value> = Vec::new();
    for part in parts {
        for (k, v) in part.get("properties").and_then(Value::as_object)? {
            properties.insert(k.clone(), v.clone());
        }
        for r in part
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !required.contains(r) {
                required.push(r.clone());
            }
        }
    }
    let mut out =
        json!({"type": "object", "properties": properties, "additionalProperties": false});
    if !required.is_empty() {
        out["required"] = Value::Array(required);
    }
    if let Some(d) = schema.get("description") {
        out["description"] = d.clone();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    fn schemas() -> serde_json::Map<String, Value> {
        super::document()["components"]["schemas"]
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn no_schema_extends_a_closed_object() {
        let schemas = schemas();
        for (name, schema) in &schemas {
            for item in schema["allOf"].as_array().into_iter().flatten() {
                let Some(r) = item["$ref"].as_str() else {
                    continue;
                };
                let target = &schemas[r.trim_start_matches("#/components/schemas/")];
                assert_ne!(
                    target["additionalProperties"],
                    json!(false),
                    "{name} extends the closed {r}: no value can match it"
                );
            }
        }
    }

    #[test]
    fn a_route_view_is_the_route_and_its_source_and_nothing_else() {
        let view = &schemas()["RouteView"];
        assert_eq!(view["additionalProperties"], json!(false), "{view}");
        for field in ["name", "project", "handlers", "matchers", "source"] {
            assert!(view["properties"].get(field).is_some(), "{field}: {view}");
        }
        let required = view["required"].as_array().unwrap();
        assert!(required.contains(&json!("source")), "{view}");
        assert!(required.contains(&json!("handlers")), "{view}");
    }

    #[test]
    fn a_followed_log_documents_each_event() {
        let doc = super::document();
        let stream = &doc["paths"]["/v1/runs/{id}/log"]["get"]["responses"]["200"]["content"]["text/event-stream"]
            ["schema"];
        let name = stream["$ref"].as_str().unwrap_or_default();
        let event = &doc["components"]["schemas"][name.trim_start_matches("#/components/schemas/")];
        assert!(event["properties"]["data"].is_object(), "{event}");
        let kinds = &doc["components"]["schemas"]["LogEventKind"]["enum"];
        assert_eq!(kinds, &json!(["line", "end", "error"]), "{event}");
    }

    #[test]
    fn a_decision_body_is_optional() {
        let doc = super::document();
        for verb in ["approve", "reject"] {
            let body = &doc["paths"][format!("/v1/approvals/{{id}}/{verb}")]["post"]["requestBody"];
            assert_ne!(body["required"], json!(true), "{verb}: {body}");
        }
    }
}
