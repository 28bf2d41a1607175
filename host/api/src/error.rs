//! The one error type at the HTTP edge: a JSON body and an explicit status
//! for every error the layers below can return.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::auth::AuthError;
use crate::capabilities::secrets::SecretError;
use crate::registry::RegistryError;
use crate::runtime::InvokeError;

/// An error answer: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable reason.
    pub message: String,
    /// Extra structured information.
    pub details: Option<serde_json::Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

/// The JSON error body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorInfo,
}

/// The inside of the JSON error body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorInfo {
    /// Stable machine-readable code, e.g. `not_found`, `deadline_exceeded`.
    pub code: String,
    /// Human-readable reason.
    pub message: String,
    /// Extra structured information, when there is any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// 400 with code `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 with code `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 401 with code `unauthorized` (the auth layer adds `WWW-Authenticate`).
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 with code `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 409 with code `conflict`.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 500 with code `internal_error`.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// Adds structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.details = Some(details);
        self
    }

    /// Adds a `Retry-After` header of `secs` seconds.
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorInfo {
                code: self.code.into(),
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A storage failure as an answer: a busy database is 503 (retry), a full
/// disk 507, anything else 500; the message always says why.
pub fn storage_error(message: String, class: StorageClass) -> ApiError {
    match class {
        StorageClass::Busy => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_busy",
            format!("{message}; retry shortly"),
        )
        .retry_after(1),
        StorageClass::Full => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            format!("{message}; nothing was changed: free space on the data directory's disk"),
        ),
        StorageClass::Other => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", message)
        }
    }
}

/// What kind of storage failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageClass {
    /// The database is locked by another writer.
    Busy,
    /// The disk is full.
    Full,
    /// Anything else.
    Other,
}

impl StorageClass {
    /// Classifies a database error (SQLite or PostgreSQL).
    pub fn of_db(e: &crate::store::sql::DbError) -> StorageClass {
        use crate::store::sql::ErrorKind;
        match e.kind() {
            ErrorKind::Busy => StorageClass::Busy,
            ErrorKind::Full => StorageClass::Full,
            _ => StorageClass::Other,
        }
    }

    /// Classifies a filesystem error.
    pub fn of_io(e: &std::io::Error) -> StorageClass {
        if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
            StorageClass::Full
        } else {
            StorageClass::Other
        }
    }

    /// Classifies a store error.
    pub fn of_store(e: &crate::store::StoreError) -> StorageClass {
        match e {
            crate::store::StoreError::Db(e) => StorageClass::of_db(e),
            crate::store::StoreError::Io { source, .. } => StorageClass::of_io(source),
            _ => StorageClass::Other,
        }
    }

    /// Classifies an error known only by its text (the SQLite and OS messages).
    pub fn of_text(text: &str) -> StorageClass {
        if text.contains("database is locked") || text.contains("database is busy") {
            StorageClass::Busy
        } else if text.contains("disk is full") || text.contains("No space left") {
            StorageClass::Full
        } else {
            StorageClass::Other
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        match e {
            RegistryError::NotFound(_) => ApiError::not_found(message),
            RegistryError::Manifest(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_manifest",
                message,
            ),
            RegistryError::Load { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_component",
                message,
            ),
            RegistryError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            RegistryError::Store(e) => storage_error(message, StorageClass::of_store(&e)),
            RegistryError::Invoke(e) => e.into(),
            RegistryError::Forbidden(_) => ApiError::forbidden(message),
            RegistryError::Held(_) => {
                ApiError::new(StatusCode::CONFLICT, "approval_required", message)
            }
        }
    }
}

impl From<InvokeError> for ApiError {
    fn from(e: InvokeError) -> Self {
        let code = e.kind();
        let message = e.to_string();
        let status = match &e {
            InvokeError::Deadline { .. } => StatusCode::GATEWAY_TIMEOUT,
            InvokeError::WrongCall(_) => StatusCode::BAD_REQUEST,
            InvokeError::Overloaded { scope, limit } => {
                let details =
                    serde_json::json!({ "limit": scope.as_str(), "max_concurrent": limit });
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
                    .with_details(details)
                    .retry_after(1);
            }
            InvokeError::Plugin(p) => {
                let details = serde_json::json!({ "kind": p.kind, "message": p.message });
                let status = match p.kind {
                    "invalid-input" => StatusCode::UNPROCESSABLE_ENTITY,
                    "denied" => StatusCode::FORBIDDEN,
                    "not-found" => StatusCode::NOT_FOUND,
                    "retryable" => {
                        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
                            .with_details(details)
                            .retry_after(5);
                    }
                    _ => StatusCode::BAD_GATEWAY,
                };
                return ApiError::new(status, code, message).with_details(details);
            }
            InvokeError::Memory { .. }
            | InvokeError::Fuel { .. }
            | InvokeError::StackOverflow
            | InvokeError::Trap { .. }
            | InvokeError::ResultTooLarge { .. }
            | InvokeError::Host(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, code, message)
    }
}

impl From<SecretError> for ApiError {
    fn from(e: SecretError) -> Self {
        let message = e.to_string();
        match e {
            SecretError::NotFound(_) => ApiError::not_found(message),
            SecretError::Invalid(_) => ApiError::bad_request(message),
            SecretError::Storage(_) => {
                let class = StorageClass::of_text(&message);
                storage_error(message, class)
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let message = e.to_string();
        match e {
            AuthError::Invalid(_) => ApiError::bad_request(message),
            AuthError::NotFound(_) => ApiError::not_found(message),
            AuthError::Conflict(_) => ApiError::conflict(message),
            AuthError::Storage(e) => storage_error(message, StorageClass::of_db(&e)),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::new(e.status(), "bad_request", e.body_text())
    }
}
