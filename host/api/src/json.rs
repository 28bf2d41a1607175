//! [`Body`]: a JSON request body that must be an object. axum's `Json`
//! (through serde's derive) also accepts an array for a struct, field by
//! position: `[]` would pass as a struct whose fields all have defaults.

use axum::Json;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON object body deserialized into `T`; anything else is refused with
/// the JSON error shape (415 wrong content type, 400 bad syntax, 422 wrong shape).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<serde_json::Value>::from_request(req, state).await?;
        Body::from_value(value, |e| e.to_string())
    }
}

impl<T: DeserializeOwned> Body<T> {
    /// Checks `value` is an object and deserializes it; `describe` turns a
    /// shape error into the message (so that a secret is never echoed).
    pub fn from_value(
        value: serde_json::Value,
        describe: impl Fn(&serde_json::Error) -> String,
    ) -> Result<Body<T>, ApiError> {
        if !value.is_object() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_request",
                "the body must be a JSON object",
            ));
        }
        serde_json::from_value(value).map(Body).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_request",
                describe(&e),
            )
        })
    }
}
