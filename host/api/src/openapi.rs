//! Completes the generated OpenAPI document with the answers every route
//! can give because of the layers in front of it (authentication, rate and
//! in-flight limits, body limits, timeouts, storage), so that a client
//! generated from the document knows every status it may see.

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
